/* session.c: what every protocol session shares: blocking auth work on the
 * worker pool, connection facts for SASL, auth logging and throttling. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "server/server.h"
#include "store/store.h"

/* A job owns copies of its inputs; it learns on completion whether its
 * session still exists by looking the connection up by id. */
struct auth_job {
	uint64_t conn_id;
	struct auth *auth;           /* ref held for the job's life */
	struct auth_sasl *sasl;      /* owned while the job runs */
	char *in;                    /* base64 input or user name */
	char *pass;                  /* password (wiped when done) */
	enum auth_result result;
	char *out;
	char *user;                  /* authenticated address */
	session_auth_cb cb;
	void *arg;
};

static void job_free(struct auth_job *j)
{
	if (j->pass != NULL) {
		explicit_bzero(j->pass, strlen(j->pass));
		free(j->pass);
	}
	if (j->in != NULL) {
		explicit_bzero(j->in, strlen(j->in));
		free(j->in);
	}
	auth_sasl_free(&j->sasl);
	auth_unref(&j->auth);
	free(j->out);
	free(j->user);
	free(j);
}

static void sasl_work(void *arg)
{
	struct auth_job *j = arg;
	j->result = auth_sasl_step(j->sasl, j->in, &j->out);
	if (j->result == AUTH_OK && auth_sasl_user(j->sasl) != NULL)
		j->user = xstrdup(auth_sasl_user(j->sasl));
}

static void password_work(void *arg)
{
	struct auth_job *j = arg;
	const struct account *acct = NULL;
	j->result = auth_check_password(j->auth, j->in, j->pass, &acct);
	if (j->result == AUTH_OK && acct != NULL)
		j->user = xstrdup(acct->address);
}

static void job_done(void *arg, bool cancelled)
{
	struct auth_job *j = arg;
	struct conn *c = cancelled ? NULL : conn_lookup(j->conn_id);
	if (c != NULL) {
		struct auth_sasl *sasl = j->sasl;
		j->sasl = NULL;          /* handed back to the session */
		j->cb(c, j->result, sasl, j->out, j->user, j->arg);
	}
	job_free(j);
}

static struct auth_job *job_new(struct conn *c, session_auth_cb cb, void *arg)
{
	struct auth_job *j = xcalloc(1, sizeof(*j));
	j->conn_id = io_id(c);
	j->auth = server->auth;
	auth_ref(j->auth);
	j->cb = cb;
	j->arg = arg;
	return j;
}

void session_sasl_step(struct conn *c, struct auth_sasl *sasl, const char *in_b64,
    session_auth_cb cb, void *arg)
{
	struct auth_job *j = job_new(c, cb, arg);
	j->sasl = sasl;
	j->in = in_b64 ? xstrdup(in_b64) : NULL;
	aio_submit(store_aio(server->store), sasl_work, job_done, j);
}

void session_check_password(struct conn *c, const char *user, const char *pass,
    session_auth_cb cb, void *arg)
{
	struct auth_job *j = job_new(c, cb, arg);
	j->in = xstrdup(user);
	j->pass = xstrdup(pass);
	aio_submit(store_aio(server->store), password_work, job_done, j);
}

void session_auth_refresh(struct conn *c, struct session_auth *sa, const char *service)
{
	struct auth_conn_info *ci = &sa->ci;
	size_t n;
	memset(ci, 0, sizeof(*ci));
	ci->tls = io_is_tls(c);
	ci->loopback = io_remote_loopback(c) && server->cfg->auth.loopback_is_local;
	ci->remote = io_remote(c);
	ci->hostname = server->cfg->server.hostname;
	ci->service = service;
	if (io_tls_exporter(c, sa->cb_exporter) == 0) {
		ci->cb_tls_exporter = sa->cb_exporter;
		ci->cb_tls_exporter_len = sizeof(sa->cb_exporter);
	}
	if (io_tls_unique(c, sa->cb_unique, sizeof(sa->cb_unique), &n) == 0) {
		ci->cb_tls_unique = sa->cb_unique;
		ci->cb_tls_unique_len = n;
	}
}

void session_log_auth(struct conn *c, bool ok, const char *mech, const char *user)
{
	struct logline *l = log_begin(ok ? LL_INFO : LL_WARN, ok ? "auth.ok" : "auth.fail");
	io_log_fields(l, c);
	log_str(l, "user", user);
	log_str(l, "mech", mech);
	log_end(l);
	if (ok)
		throttle_success(server->throttle, io_remote(c));
	else
		throttle_fail(server->throttle, io_remote(c), time(NULL));
}
