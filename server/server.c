/* server.c: start-up, the reactor loop, signals (drain, reload), privilege drop,
 * and the small shared tables (connections per IP, per-user locks). */
#include <errno.h>
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "protocols/protocols.h"
#include "server/server.h"
#include "relay/relay.h"
#include "store/store.h"

struct server *server;

/* ---- a string -> count table (connections per IP, user locks) ---- */

#define STRMAP_SIZE 1024

struct strmap_ent {
	LIST_ENTRY(strmap_ent) entry;
	int count;
	char key[];
};
LIST_HEAD(strmap_bucket, strmap_ent);
struct ip_count { struct strmap_bucket b[STRMAP_SIZE]; };
struct user_lock { struct strmap_bucket b[STRMAP_SIZE]; };

static unsigned strmap_hash(const char *s)
{
	unsigned h = 5381;
	while (*s)
		h = h * 33 + (unsigned char)*s++;
	return h % STRMAP_SIZE;
}

static struct strmap_ent *strmap_find(struct strmap_bucket *b, const char *key, bool create)
{
	struct strmap_ent *e;
	LIST_FOREACH(e, &b[strmap_hash(key)], entry)
		if (strcmp(e->key, key) == 0)
			return e;
	if (!create)
		return NULL;
	size_t n = strlen(key) + 1;
	e = xcalloc(1, sizeof(*e) + n);
	memcpy(e->key, key, n);
	LIST_INSERT_HEAD(&b[strmap_hash(key)], e, entry);
	return e;
}

static void strmap_add(struct strmap_bucket *b, const char *key, int delta)
{
	struct strmap_ent *e = strmap_find(b, key, true);
	e->count += delta;
	if (e->count <= 0) {
		LIST_REMOVE(e, entry);
		free(e);
	}
}

static void strmap_clear(struct strmap_bucket *b)
{
	for (size_t i = 0; i < STRMAP_SIZE; i++) {
		struct strmap_ent *e;
		while ((e = LIST_FIRST(&b[i])) != NULL) {
			LIST_REMOVE(e, entry);
			free(e);
		}
	}
}

void server_conn_count(const char *ip, int delta)
{
	strmap_add(server->ipcounts->b, ip, delta);
}

int server_conn_count_get(const char *ip)
{
	struct strmap_ent *e = strmap_find(server->ipcounts->b, ip, false);
	return e ? e->count : 0;
}

bool server_conn_rate_ok(const char *ip)
{
	int max = server->cfg->server.max_connection_rate_per_ip;
	if (max <= 0)
		return true;
	/* one fixed window for all addresses: memory is bounded by the addresses
	 * seen in one minute, and a sweep is just clearing the table */
	time_t now = time(NULL);
	if (now - server->rate_window >= 60) {
		strmap_clear(server->rates->b);
		server->rate_window = now;
	}
	struct strmap_ent *e = strmap_find(server->rates->b, ip, true);
	return ++e->count <= max;
}

bool session_lock_user(const char *proto, const char *user)
{
	char *key = xasprintf("%s:%s", proto, user);
	bool ok = strmap_find(server->locks->b, key, false) == NULL;
	if (ok)
		strmap_add(server->locks->b, key, 1);
	free(key);
	return ok;
}

void session_unlock_user(const char *proto, const char *user)
{
	char *key = xasprintf("%s:%s", proto, user);
	strmap_add(server->locks->b, key, -1);
	free(key);
}

/* ---- protocols ---- */

const struct proto_ops *server_proto_ops(enum cfg_proto p)
{
	switch (p) {
	case PROTO_POP3:
	case PROTO_POP3S:
		return &pop3_ops;
	case PROTO_IMAP:
	case PROTO_IMAPS:
		return &imap_ops;
	case PROTO_SMTP:
	case PROTO_SUBMISSION:
	case PROTO_SUBMISSIONS:
		return &smtp_ops;
	default:
		fatalx("no session for protocol %s (the config check refuses such listeners)", cfg_proto_name(p));
	}
}

/* ---- reload (SIGHUP) ---- */

struct run_state {
	char *const *overrides;
	size_t noverrides;
	bool demo;
	struct event *sigterm, *sigint, *sighup, *drain_timer;
	double drain_deadline;
};

static struct config *load_again(struct run_state *rs, char *err, size_t errlen)
{
	if (rs->demo)
		return cfg_load_string("<demo>", cfg_demo_yaml, strlen(cfg_demo_yaml), rs->overrides,
		    rs->noverrides, err, errlen);
	return cfg_load(server->cfg->path, rs->overrides, rs->noverrides, err, errlen);
}

static void relay_start(const struct config *cfg, bool reconfigure);

static void reload(struct run_state *rs)
{
	char err[1024] = "";
	struct config *cfg = load_again(rs, err, sizeof(err));
	struct auth *auth = cfg ? auth_new(cfg, err, sizeof(err)) : NULL;
	struct tls *tls = auth ? tls_new(cfg, err, sizeof(err)) : NULL;
	if (cfg == NULL || auth == NULL || (tls == NULL && err[0] != '\0')) {
		log_msg(LL_ERROR, "config.reload_failed", "%s (keeping the running configuration)", err);
		auth_unref(&auth);
		cfg_free(&cfg);
		return;
	}
	auth_unref(&server->auth);
	server->auth = auth;
	tls_unref(&server->tls);
	server->tls = tls;
	cfg_free(&server->cfg);
	server->cfg = cfg;
	if (log_open(cfg->log.level, cfg->log.file) == -1)
		log_msg(LL_ERROR, "config.reload", "cannot open log file '%s': %s (logging to the old one)",
		    cfg->log.file, strerror(errno));
	throttle_configure(server->throttle, cfg->auth.max_failures, cfg->auth.fail_window);
	relay_start(cfg, true);
	struct logline *l = log_begin(LL_INFO, "config.reload");
	log_uint(l, "users", auth_count(auth));
	log_end(l);
}

/* ---- drain (SIGTERM/SIGINT) ---- */

static void drain_check(evutil_socket_t fd, short what, void *arg)
{
	struct run_state *rs = arg;
	(void)fd;
	(void)what;
	if (server->nconns == 0 || util_now() >= rs->drain_deadline) {
		event_base_loopexit(server->base, NULL);
		return;
	}
	struct timeval tv = { 0, 100 * 1000 };
	evtimer_add(rs->drain_timer, &tv);
}

static void start_drain(struct run_state *rs)
{
	if (server->draining)
		return;
	server->draining = true;
	log_msg(LL_INFO, "server.draining", "stopping: %zu connections open", server->nconns);
	listener_close_all(server);
	conn_drain_all(server);
	rs->drain_deadline = util_now() + server->cfg->server.shutdown_timeout;
	rs->drain_timer = evtimer_new(server->base, drain_check, rs);
	drain_check(-1, 0, rs);
}

static void signal_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)what;
	if (sig == SIGHUP)
		reload(arg);
	else
		start_drain(arg);
}

/* ---- start-up ---- */

int server_drop_privileges(const struct config *cfg)
{
	if (geteuid() != 0 || cfg->server.user[0] == '\0')
		return 0;
	struct passwd *pw = getpwnam(cfg->server.user);
	if (pw == NULL) {
		log_msg(LL_ERROR, "server.privdrop", "unknown user '%s' (server.user)", cfg->server.user);
		return -1;
	}
	/* the data dir and the self-signed certificate must stay usable after the drop */
	const char *const owned[] = { "", "/tls", "/tls/selfsigned.crt", "/tls/selfsigned.key", "/mail" };
	for (size_t i = 0; i < sizeof(owned) / sizeof(owned[0]); i++) {
		char *p = xasprintf("%s%s", cfg->server.data_dir, owned[i]);
		if (chown(p, pw->pw_uid, pw->pw_gid) == -1 && errno != ENOENT)
			log_msg(LL_WARN, "server.privdrop", "chown %s: %s", p, strerror(errno));
		free(p);
	}
	if (initgroups(pw->pw_name, pw->pw_gid) == -1 || setgid(pw->pw_gid) == -1 ||
	    setuid(pw->pw_uid) == -1) {
		log_msg(LL_ERROR, "server.privdrop", "cannot become '%s': %s", cfg->server.user,
		    strerror(errno));
		return -1;
	}
	return 0;
}

/* For the relay's DSNs: the local account of addr, or NULL (relay/ cannot see auth) */
static char *local_account(void *arg, const char *addr)
{
	(void)arg;
	char *a = xstrdup(addr), *at = strrchr(a, '@');
	const struct account *acct = NULL;
	char *r = NULL;
	if (at != NULL) {
		*at = '\0';
		if (auth_lookup_recipient(server->auth, a, at + 1, &acct) == AUTH_RCPT_LOCAL)
			r = xstrdup(acct->address);
	}
	free(a);
	return r;
}

/* The relay is not essential to receiving mail: if it cannot start (e.g. a
 * bad resolver setting) the server runs and logs why; queued mail waits. On
 * SIGHUP (reconfigure) the running relay takes the new settings. */
static void relay_start(const struct config *cfg, bool reconfigure)
{
	char err[512] = "";
	char *qdir = queue_dir_path(cfg->server.data_dir);
	char *smarthost = xstrdup(cfg->relay.smarthost);
	int port = cfg->relay.port;
	char *colon = strrchr(smarthost, ':');
	if (colon != NULL && strchr(colon, ']') == NULL) {   /* "host:port" */
		*colon = '\0';
		port = atoi(colon + 1);
	}
	struct relay_params p = {
		.queue_dir = qdir, .data_dir = cfg->server.data_dir, .hostname = cfg->server.hostname,
		.smarthost = smarthost, .dns_servers = cfg->relay.dns_servers,
		.ndns_servers = cfg->relay.ndns_servers, .dns_port = cfg->relay.dns_port,
		.dns_trust_anchor = cfg->relay.dns_trust_anchor,
		.port = port, .retry_initial = cfg->relay.retry_initial,
		.retry_max = cfg->relay.retry_max, .warn_after = cfg->relay.warn_after,
		.max_queue_time = cfg->relay.max_queue_time, .hold = cfg->relay.hold,
		.connect_timeout = cfg->relay.connect_timeout, .cmd_timeout = cfg->relay.command_timeout,
		.data_timeout = cfg->relay.data_timeout, .final_timeout = cfg->relay.final_timeout,
		.max_active = cfg->relay.max_connections,
		.max_per_domain = cfg->relay.max_connections_per_domain,
		.tls_require = strcmp(cfg->relay.tls, "require") == 0,
		.smarthost_implicit = strcmp(cfg->relay.smarthost_tls, "implicit") == 0,
		.smarthost_user = cfg->relay.smarthost_user, .smarthost_password = cfg->relay.smarthost_password,
		.local_account = local_account,
	};
	if (reconfigure && server->relay != NULL) {
		if (!relay_reconfigure(server->relay, &p))
			log_msg(LL_WARN, "config.reload", "relay.dns changes take effect at the next restart");
	} else if (!reconfigure) {
		server->relay = relay_new(server->base, store_aio(server->store), &p, err, sizeof(err));
		if (server->relay == NULL)
			log_msg(LL_ERROR, "relay.start_failed", "%s (queued mail is kept, not sent)", err);
	}
	free(smarthost);
	free(qdir);
}

static int server_init(struct config *cfg, char *err, size_t errlen)
{
	server->cfg = cfg;
	server->ipcounts = xcalloc(1, sizeof(*server->ipcounts));
	server->locks = xcalloc(1, sizeof(*server->locks));
	server->rates = xcalloc(1, sizeof(*server->rates));
	if (mkdir(cfg->server.data_dir, 0755) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "cannot create data_dir '%s': %s", cfg->server.data_dir, strerror(errno));
		return -1;
	}
	err[0] = '\0';
	server->tls = tls_new(cfg, err, errlen);
	if (server->tls == NULL && err[0] != '\0')
		return -1;
	server->auth = auth_new(cfg, err, errlen);
	if (server->auth == NULL)
		return -1;
	/* what a crash left in the queue (a .msg without its .env, *.tmp) goes
	 * before any session can be writing a new entry (design §6) */
	char *qdir = queue_dir_path(cfg->server.data_dir);
	queue_clean(qdir);
	free(qdir);
	server->throttle = throttle_new(cfg->auth.max_failures, cfg->auth.fail_window);
	server->base = event_base_new();
	if (listener_open_all(server, err, errlen) == -1)
		return -1;
	if (server_drop_privileges(cfg) == -1) {
		snprintf(err, errlen, "cannot drop privileges to '%s'", cfg->server.user);
		return -1;
	}
	server->store = store_new(server->base, cfg->server.data_dir, cfg->server.hostname, 8);
	relay_start(cfg, false);
	server->control = control_open(cfg->server.data_dir);
	return 0;
}

static void server_cleanup(struct run_state *rs)
{
	conn_free_all(server);
	listener_close_all(server);
	control_close(&server->control);
	relay_free(&server->relay);
	store_free(&server->store);
	struct event *evs[] = { rs->sigterm, rs->sigint, rs->sighup, rs->drain_timer };
	for (size_t i = 0; i < sizeof(evs) / sizeof(evs[0]); i++)
		if (evs[i] != NULL)
			event_free(evs[i]);
	auth_unref(&server->auth);
	tls_unref(&server->tls);
	throttle_free(&server->throttle);
	strmap_clear(server->ipcounts->b);
	strmap_clear(server->locks->b);
	strmap_clear(server->rates->b);
	free(server->rates);
	free(server->ipcounts);
	free(server->locks);
	if (server->base != NULL)
		event_base_free(server->base);
	cfg_free(&server->cfg);
	free(server);
	server = NULL;
}

int server_run(struct config *cfg, char *const *overrides, size_t noverrides, bool demo)
{
	struct run_state rs = { .overrides = overrides, .noverrides = noverrides, .demo = demo };
	char err[1024];
	server = xcalloc(1, sizeof(*server));
	signal(SIGPIPE, SIG_IGN);
	if (server_init(cfg, err, sizeof(err)) == -1) {
		log_msg(LL_ERROR, "server.start_failed", "%s", err);
		server_cleanup(&rs);
		return 1;
	}
	rs.sigterm = evsignal_new(server->base, SIGTERM, signal_cb, &rs);
	rs.sigint = evsignal_new(server->base, SIGINT, signal_cb, &rs);
	rs.sighup = evsignal_new(server->base, SIGHUP, signal_cb, &rs);
	event_add(rs.sigterm, NULL);
	event_add(rs.sigint, NULL);
	event_add(rs.sighup, NULL);

	struct logline *l = log_begin(LL_INFO, "server.ready");
	log_str(l, "version", "0.1.0");
	log_int(l, "pid", getpid());
	log_str(l, "hostname", cfg->server.hostname);
	log_str(l, "data_dir", cfg->server.data_dir);
	log_uint(l, "users", auth_count(server->auth));
	log_bool(l, "tls", server->tls != NULL);
	listener_log_ready(server, l);
	log_end(l);

	event_base_dispatch(server->base);
	log_msg(LL_INFO, "server.stopped", "%zu connections left", server->nconns);
	server_cleanup(&rs);
	return 0;
}
