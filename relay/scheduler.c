/* scheduler.c: drains the relay queue (design §6). A reactor timer looks at
 * the entries loaded from <data_dir>/queue; an entry whose next attempt is due
 * is delivered domain by domain: MX lookup (dns.c), addresses of each MX in
 * preference order, one SMTP client connection (mta.c) carrying all of that
 * domain's recipients. With a trust anchor, an MX host whose addresses
 * validated gets a TLSA lookup first (DANE, RFC 7672 §2.2). Results update
 * the envelope atomically (queue.c); 4xx
 * are retried with exponential backoff, 5xx and expiry are bounced (bounce.c)
 * to the sender; a delay notice goes out once after warn_after. Everything
 * blocking (reading and writing queue files, local delivery of bounces) runs
 * on the aio pool.
 *
 * Ownership: struct relay owns the entries; an entry being delivered has
 * `busy` set and is never freed until its attempt completes (relay_free
 * cancels the DNS and SMTP requests first). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/event.h>
#include <openssl/ssl.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "relay/relay.h"
#include "store/store.h"

#define RELAY_TICK_SECONDS 5
#define RELAY_MAX_ACTIVE_DEFAULT 20  /* entries being delivered at once */
#define RELAY_MAX_PER_DOMAIN_DEFAULT 10

struct rentry;

/* One delivery attempt: the recipients of one domain of one entry. */
struct attempt {
	struct rentry *e;
	char *domain;
	size_t *idx;                 /* indices into e->env.rcpts */
	size_t n;
	struct dns_mx_list *mx;
	size_t mx_next;              /* next MX to try */
	char *last_error;            /* why the last MX failed (for deferral text) */
	char *last_mx, *last_ip;     /* the host that failed last, for the logs */
	struct dns_addr_list *addrs; /* owned: the current MX's addresses while its TLSA
	                                lookup runs */
	struct dns_req *dreq;
	struct mta_req *mreq;
};

struct rentry {
	struct rentry *prev, *next;
	struct relay *r;
	struct queue_env env;
	bool busy;
	bool held;                   /* its domains count against the per-domain limit */
	bool dead;                   /* removed from disk: freed when not busy */
	char **domains;              /* domains still to try in this round */
	size_t ndomains, domain_next;
	struct attempt *cur;
};

struct relay {
	struct relay_params p;       /* owned copies */
	struct event_base *base;
	struct aio *aio;
	struct dns *dns;
	SSL_CTX *tls;
	struct event *timer;
	struct event *kick;          /* a scheduling pass soon, from the event loop */
	struct rentry *head;
	size_t nentries;
	size_t active;
	struct domcount *domcounts;  /* rounds in progress per destination domain */
};

/* Rounds in progress towards one domain (relay.max_connections_per_domain). A
 * round holds every domain it will visit from its start to its end: a slight
 * over-count for multi-domain entries, never an excess connection. */
struct domcount {
	struct domcount *next;
	char *domain;
	size_t n;
};

static void schedule(struct relay *r);
static void next_domain(struct rentry *e);
static void domains_hold(struct relay *r, struct rentry *e, bool hold);

/* ---------------------------------------------------------------- logging */

/* The RFC 3463 status of a recipient: the enhanced code in its last reply
 * ("550 5.1.1 ...", "4.4.3 DNS ..."), else the class of its state. */
static void dsn_code(const struct queue_rcpt *q, char out[16])
{
	if (!bounce_reply_enhanced(q->last_reply, out))
		snprintf(out, 16, "%s", q->state == Q_DELIVERED ? "2.0.0" : q->state == Q_FAILED ? "5.0.0" : "4.0.0");
}

static void log_rcpt(const struct rentry *e, const struct queue_rcpt *q, const char *event,
    const char *mx, const char *ip, bool tls, bool dane)
{
	char dsn[16];
	dsn_code(q, dsn);
	struct logline *l = log_begin(strcmp(event, "relay.delivered") == 0 ? LL_INFO : LL_WARN, event);
	log_str(l, "msgid", e->env.id);
	log_str(l, "from", e->env.sender);
	log_str(l, "rcpt", q->addr);
	log_str(l, "mx", mx);
	log_str(l, "ip", ip);
	log_bool(l, "tls", tls);
	log_bool(l, "dane", dane);   /* the MX was authenticated by its TLSA records */
	log_uint(l, "attempts", q->attempts);
	log_str(l, "dsn", dsn);
	log_str(l, "reply", q->last_reply);
	log_end(l);
}

/* ---------------------------------------------------------------- entries */

static void entry_free(struct rentry *e)
{
	queue_env_free(&e->env);
	xfree_strv(&e->domains);
	free(e);
}

static void entry_unlink(struct rentry *e)
{
	struct relay *r = e->r;
	if (e->prev)
		e->prev->next = e->next;
	else
		r->head = e->next;
	if (e->next)
		e->next->prev = e->prev;
	r->nentries--;
}

static void entry_add(struct relay *r, struct queue_env *env)
{
	for (struct rentry *x = r->head; x != NULL; x = x->next)
		if (strcmp(x->env.id, env->id) == 0) {
			queue_env_free(env);            /* already known */
			return;
		}
	struct rentry *e = xcalloc(1, sizeof(*e));
	e->r = r;
	e->env = *env;
	e->next = r->head;
	if (r->head)
		r->head->prev = e;
	r->head = e;
	r->nentries++;
}

static bool rcpt_open(const struct queue_rcpt *q)
{
	return q->state == Q_PENDING || q->state == Q_DEFERRED;
}

/* ---------------------------------------------------------------- blocking jobs */

struct load_job {
	struct relay *r;
	char *dir;
	char *id;                    /* one entry, or NULL: all */
	struct queue_env *envs;
	size_t n;
};

static void load_one(struct load_job *j, const char *id)
{
	struct queue_env env;
	if (queue_read_env(j->dir, id, &env) == -1)
		return;
	j->envs = xreallocarray(j->envs, j->n + 1, sizeof(*j->envs));
	j->envs[j->n++] = env;
}

static void load_work(void *arg)
{
	struct load_job *j = arg;
	if (j->id != NULL) {
		load_one(j, j->id);
		return;
	}
	char **ids = NULL;
	size_t n = 0;
	/* crash leftovers were removed by the server before it listened
	 * (queue_clean must not race with sessions writing new entries) */
	if (queue_list(j->dir, &ids, &n) == -1)
		return;
	for (size_t i = 0; i < n; i++)
		load_one(j, ids[i]);
	xfree_strv(&ids);
}

static void load_done(void *arg, bool cancelled)
{
	struct load_job *j = arg;
	for (size_t i = 0; i < j->n; i++) {
		if (cancelled)
			queue_env_free(&j->envs[i]);
		else
			entry_add(j->r, &j->envs[i]);
	}
	if (!cancelled)
		schedule(j->r);
	free(j->envs);
	free(j->dir);
	free(j->id);
	free(j);
}

static void load(struct relay *r, const char *id)
{
	struct load_job *j = xcalloc(1, sizeof(*j));
	j->r = r;
	j->dir = xstrdup(r->p.queue_dir);
	j->id = id ? xstrdup(id) : NULL;
	aio_submit(r->aio, load_work, load_done, j);
}

/* Write the envelope back, or remove the entry when nothing is left to do. */
struct save_job {
	char *dir;
	struct queue_env env;        /* copy */
	bool remove;
	int error;
};

static void save_work(void *arg)
{
	struct save_job *j = arg;
	int rc = j->remove ? queue_remove(j->dir, j->env.id) : queue_update_env(j->dir, &j->env);
	j->error = rc == -1 ? errno : 0;
}

static void save_done(void *arg, bool cancelled)
{
	struct save_job *j = arg;
	(void)cancelled;
	if (j->error != 0)
		log_msg(LL_ERROR, "relay.queue_write_failed", "%s: %s", j->env.id, strerror(j->error));
	queue_env_free(&j->env);
	free(j->dir);
	free(j);
}

static void save(struct rentry *e, bool remove)
{
	struct save_job *j = xcalloc(1, sizeof(*j));
	j->dir = xstrdup(e->r->p.queue_dir);
	queue_env_copy(&j->env, &e->env);
	j->remove = remove;
	aio_submit(e->r->aio, save_work, save_done, j);
}

/* ---------------------------------------------------------------- bounces */

/* A DSN is built and written on a worker: reading the original message (for
 * part 3) is disk I/O, which the reactor never does. The job owns a copy of
 * the envelope as it was when the round ended. */
struct bounce_job {
	struct relay *r;
	char *dir, *hostname, *data_dir;
	enum bounce_kind kind;
	time_t retry_until;
	struct queue_env orig;       /* the bounced entry (copy) */
	char *account;               /* local sender's account, or NULL: queue the DSN */
	struct queue_env env;        /* the DSN's own envelope when queued */
	bool built;                  /* false: nothing reportable (NOTIFY, null sender) */
	bool remove_after;           /* the entry is finished: remove it once the DSN is out
	                              * (not before: part 3 is read from its .msg) */
	int error;
};

static char *read_original(const char *dir, const char *id, size_t *len_r)
{
	char *path = queue_msg_path(dir, id);
	FILE *f = fopen(path, "rb");
	free(path);
	*len_r = 0;
	if (f == NULL)
		return NULL;
	char *buf = xmalloc(BOUNCE_MAX_ORIGINAL_DEFAULT + 1);
	*len_r = fread(buf, 1, BOUNCE_MAX_ORIGINAL_DEFAULT + 1, f);   /* past the cap: headers only */
	fclose(f);
	return buf;
}

static void dsn_envelope(struct bounce_job *j, const char *dsn, size_t len)
{
	struct queue_env *e = &j->env;
	queue_new_id(e->id);
	e->sender = xstrdup("");
	e->envid = xstrdup("");
	e->auth_user = xstrdup("");
	e->client_ip = xstrdup("");
	e->helo = xstrdup(j->hostname);
	e->smtputf8 = bounce_smtputf8(&j->orig);
	e->body = bounce_body_type(dsn, len);
	e->created = e->next_attempt = time(NULL);
	e->rcpts = xcalloc(1, sizeof(*e->rcpts));
	e->nrcpts = 1;
	e->rcpts[0].addr = xstrdup(j->orig.sender);
	e->rcpts[0].orcpt = xstrdup("");
	e->rcpts[0].notify = QUEUE_NOTIFY_NEVER;     /* never bounce a bounce */
	e->rcpts[0].last_reply = xstrdup("");
	e->rcpts[0].remote_mta = xstrdup("");
}

static int dsn_deliver_local(const struct bounce_job *j, const char *dsn, size_t len)
{
	char *user = maildir_user_path(j->data_dir, j->account);
	char *prefix = xasprintf("Return-Path: <>\r\nDelivered-To: %s\r\n", j->account);
	struct iovec parts[2] = { { prefix, strlen(prefix) }, { (void *)dsn, len } };
	int rc = user == NULL ? -1 : maildir_create(user);
	if (rc == 0)
		rc = maildir_deliver_iov(user, j->hostname, parts, 2, 0, NULL, NULL);
	int saved = errno;
	free(prefix);
	free(user);
	errno = saved;
	return rc;
}

static void bounce_work(void *arg)
{
	struct bounce_job *j = arg;
	size_t olen;
	char *orig = read_original(j->dir, j->orig.id, &olen);
	struct bounce_params bp = {
		.hostname = j->hostname, .env = &j->orig, .kind = j->kind, .msg = orig, .msg_len = olen,
		.retry_until = j->retry_until,
	};
	size_t len;
	char *dsn = bounce_build(&bp, &len);
	free(orig);
	if (dsn == NULL) {
		if (j->remove_after)
			queue_remove(j->dir, j->orig.id);
		return;
	}
	j->built = true;
	int rc;
	if (j->account != NULL) {
		rc = dsn_deliver_local(j, dsn, len);
	} else {
		dsn_envelope(j, dsn, len);
		rc = queue_write(j->dir, &j->env, dsn, len);
	}
	j->error = rc == -1 ? errno : 0;
	free(dsn);
	if (j->remove_after && j->error == 0)
		queue_remove(j->dir, j->orig.id);   /* a failed DSN write keeps the entry on disk */
}

static void bounce_done(void *arg, bool cancelled)
{
	struct bounce_job *j = arg;
	if (!cancelled && j->built) {
		struct logline *l = log_begin(j->error ? LL_ERROR : LL_INFO,
		    j->error ? "relay.dsn_failed" : "relay.dsn");
		log_str(l, "msgid", j->orig.id);
		log_str(l, "kind", j->kind == BOUNCE_FAILURE ? "failure" : j->kind == BOUNCE_DELAY ? "delay" : "success");
		log_str(l, "to", j->orig.sender);
		log_bool(l, "local", j->account != NULL);
		if (j->error)
			log_str(l, "error", strerror(j->error));
		log_end(l);
		if (j->error == 0 && j->account == NULL)
			load(j->r, j->env.id);       /* the DSN is a queue entry of its own */
	}
	queue_env_free(&j->orig);
	queue_env_free(&j->env);
	free(j->account);
	free(j->dir);
	free(j->hostname);
	free(j->data_dir);
	free(j);
}

static bool anything_reportable(const struct queue_env *env, enum bounce_kind kind)
{
	for (size_t i = 0; i < env->nrcpts; i++)
		if (bounce_reportable(env, &env->rcpts[i], kind))
			return true;
	return false;
}

/* Starts a DSN job; false when there is nothing to report (NOTIFY, null
 * sender, already reported). remove: the job also removes the finished entry. */
static bool send_dsn(struct rentry *e, enum bounce_kind kind, bool remove)
{
	struct relay *r = e->r;
	if (!anything_reportable(&e->env, kind))
		return false;
	struct bounce_job *j = xcalloc(1, sizeof(*j));
	j->r = r;
	j->dir = xstrdup(r->p.queue_dir);
	j->hostname = xstrdup(r->p.hostname);
	j->data_dir = xstrdup(r->p.data_dir);
	j->kind = kind;
	j->retry_until = kind == BOUNCE_DELAY ? e->env.created + (time_t)r->p.max_queue_time : 0;
	queue_env_copy(&j->orig, &e->env);
	/* the auth lookup is reactor-side state: decided here */
	j->account = r->p.local_account ? r->p.local_account(r->p.hook_arg, e->env.sender) : NULL;
	j->remove_after = remove;
	aio_submit(r->aio, bounce_work, bounce_done, j);
	return true;
}

/* ---------------------------------------------------------------- one round */

static time_t backoff(const struct relay *r, uint32_t attempts)
{
	uint64_t d = r->p.retry_initial;
	for (uint32_t i = 1; i < attempts && d < r->p.retry_max; i++)
		d *= 2;
	return (time_t)(d < r->p.retry_max ? d : r->p.retry_max);
}

static void set_rcpt(struct queue_rcpt *q, enum queue_rcpt_state st, const char *reply, const char *mx)
{
	/* copies first: reply or mx may be q's own strings (expiry, queue bounce) */
	char *r = xstrdup(reply ? reply : ""), *m = xstrdup(mx ? mx : "");
	q->state = st;
	q->updated = time(NULL);
	free(q->last_reply);
	q->last_reply = r;
	free(q->remote_mta);
	q->remote_mta = m;
}

/* All domains of this round tried: bounce what failed, decide what is next. */
static void round_done(struct rentry *e)
{
	struct relay *r = e->r;
	time_t now = time(NULL);
	bool open = false, failed = false;
	e->env.attempts++;
	e->env.last_attempt = now;
	bool expired = now - e->env.created >= (time_t)r->p.max_queue_time;
	for (size_t i = 0; i < e->env.nrcpts; i++) {
		struct queue_rcpt *q = &e->env.rcpts[i];
		if (rcpt_open(q) && expired) {
			char *why = xasprintf("%s (gave up after %llu s in the queue)",
			    q->last_reply[0] ? q->last_reply : "4.4.7 delivery time expired",
			    (unsigned long long)r->p.max_queue_time);
			set_rcpt(q, Q_FAILED, why, q->remote_mta);
			free(why);
			log_rcpt(e, q, "relay.bounced", q->remote_mta, NULL, false, false);
		}
		open |= rcpt_open(q);
		failed |= q->state == Q_FAILED;
	}
	/* a finished entry is removed by its failure DSN's job, after the DSN
	 * has read the original; otherwise by save() below */
	bool removed_by_dsn = failed && send_dsn(e, BOUNCE_FAILURE, !open);
	if (open && !e->env.warned && r->p.warn_after > 0 && now - e->env.created >= (time_t)r->p.warn_after) {
		send_dsn(e, BOUNCE_DELAY, false);
		e->env.warned = true;
	}
	/* a failed recipient is reported once: NOTIFY=NEVER from now on keeps it
	 * out of later DSNs of this entry (its state stays Q_FAILED) */
	for (size_t i = 0; i < e->env.nrcpts; i++)
		if (e->env.rcpts[i].state == Q_FAILED)
			e->env.rcpts[i].notify = QUEUE_NOTIFY_NEVER;
	e->env.next_attempt = now + backoff(r, e->env.attempts);
	e->busy = false;
	r->active--;
	domains_hold(r, e, false);
	if (!removed_by_dsn)
		save(e, !open);
	if (!open) {
		entry_unlink(e);
		entry_free(e);
	}
	/* a round can end synchronously inside schedule()'s loop (loop bounce,
	 * nothing open): the next scheduling pass runs from the event loop */
	event_active(r->kick, EV_TIMEOUT, 0);
}

static void attempt_free(struct attempt **a_r)
{
	struct attempt *a = *a_r;
	if (a == NULL)
		return;
	dns_cancel(&a->dreq);
	mta_cancel(&a->mreq);
	dns_mx_list_free(&a->mx);
	dns_addr_list_free(&a->addrs);
	free(a->domain);
	free(a->idx);
	free(a->last_error);
	free(a->last_mx);
	free(a->last_ip);
	free(a);
	*a_r = NULL;
}

/* The whole domain ends one way (DNS failure, every MX unreachable). */
static void domain_all(struct attempt *a, enum queue_rcpt_state st, const char *reply)
{
	for (size_t i = 0; i < a->n; i++) {
		struct queue_rcpt *q = &a->e->env.rcpts[a->idx[i]];
		q->attempts++;
		set_rcpt(q, st, reply, a->last_mx);
		log_rcpt(a->e, q, st == Q_FAILED ? "relay.bounced" : "relay.deferred", a->last_mx, a->last_ip,
		    false, false);
	}
	struct rentry *e = a->e;
	attempt_free(&e->cur);
	next_domain(e);
}

static void try_mx(struct attempt *a);

static void mta_done(void *arg, struct mta_result *res)
{
	struct attempt *a = arg;
	a->mreq = NULL;
	if (res->host_failed) {
		free(a->last_error);
		/* keep the client's status (e.g. 4.4.1 for a refused connection) in front
		 * of its text, so logs and DSNs carry it (RFC 3463) */
		const char *enh = res->nrcpts > 0 ? res->rcpts[0].enhanced : "";
		const char *txt = res->error ? res->error : "connection failed";
		a->last_error = enh[0] != '\0' && strncmp(txt, enh, strlen(enh)) != 0 &&
		    !(txt[0] >= '2' && txt[0] <= '5' && txt[1] >= '0' && txt[1] <= '9')
		    ? xasprintf("%s %s", enh, txt) : xstrdup(txt);
		free(a->last_mx);
		a->last_mx = xstrdup(res->remote_host ? res->remote_host : "");
		free(a->last_ip);
		a->last_ip = xstrdup(res->remote_ip ? res->remote_ip : "");
		mta_result_free(&res);
		try_mx(a);                      /* RFC 5321 §5.1: next MX */
		return;
	}
	for (size_t i = 0; i < a->n && i < res->nrcpts; i++) {
		struct queue_rcpt *q = &a->e->env.rcpts[a->idx[i]];
		const struct mta_rcpt_result *rr = &res->rcpts[i];
		enum queue_rcpt_state st = rr->status == MTA_OK ? Q_DELIVERED
		    : rr->status == MTA_PERMFAIL ? Q_FAILED : Q_DEFERRED;
		q->attempts++;
		set_rcpt(q, st, rr->reply, res->remote_host);
		log_rcpt(a->e, q, st == Q_DELIVERED ? "relay.delivered" : st == Q_FAILED ? "relay.bounced"
		    : "relay.deferred", res->remote_host, res->remote_ip, res->tls, res->dane);
	}
	mta_result_free(&res);
	struct rentry *e = a->e;
	attempt_free(&e->cur);
	next_domain(e);
}

/* Why this MX is skipped (the deferral text if no other MX does better). */
static void mx_skip(struct attempt *a, char *why)
{
	free(a->last_error);
	a->last_error = why;
	free(a->last_mx);
	a->last_mx = xstrdup(a->mx->mx[a->mx_next - 1].name);
	try_mx(a);
}

/* One SMTP client connection to the current MX host. tlsa: NULL, or its
 * validated TLSA RRset (DANE; its records may all be unusable). Takes list. */
static void deliver(struct attempt *a, struct dns_addr_list *list, const struct dns_tlsa_list *tlsa)
{
	struct relay *r = a->e->r;
	const char **rcpts = xcalloc(a->n, sizeof(char *));
	const char **orcpt = xcalloc(a->n, sizeof(char *));
	unsigned *notify = xcalloc(a->n, sizeof(unsigned));
	for (size_t i = 0; i < a->n; i++) {
		const struct queue_rcpt *q = &a->e->env.rcpts[a->idx[i]];
		rcpts[i] = q->addr;
		orcpt[i] = q->orcpt;
		notify[i] = q->notify;
	}
	struct mta_params mp = {
		.addrs = list->addrs, .naddrs = list->n, .port = r->p.port,
		.mx_name = a->mx->mx[a->mx_next - 1].name, .helo = r->p.hostname, .tls = r->tls,
		.sender = a->e->env.sender, .smtputf8 = a->e->env.smtputf8,
		.body_8bit = a->e->env.body != QUEUE_BODY_7BIT, .envid = a->e->env.envid,
		.ret = (int)a->e->env.ret, .rcpts = rcpts, .notify = notify, .orcpt = orcpt, .nrcpts = a->n,
		.aio = r->aio, .connect_timeout = r->p.connect_timeout, .cmd_timeout = r->p.cmd_timeout,
		.data_timeout = r->p.data_timeout, .final_timeout = r->p.final_timeout,
		.tls_required = r->p.tls_require, .reuse = true,
		.dane = tlsa != NULL, .tlsa = tlsa != NULL ? tlsa->rr : NULL,
		.ntlsa = tlsa != NULL ? tlsa->n : 0,
	};
	if (r->p.smarthost[0] != '\0') {
		/* relay.smarthost_tls / smarthost_user (RFC 8314 §3.3, RFC 4954) */
		mp.implicit_tls = r->p.smarthost_implicit;
		mp.tls_required = mp.tls_required || r->p.smarthost_implicit;
		if (r->p.smarthost_user[0] != '\0') {
			mp.auth_user = r->p.smarthost_user;
			mp.auth_pass = r->p.smarthost_password;
		}
	}
	char *path = queue_msg_path(r->p.queue_dir, a->e->env.id);
	struct stat sb;
	mp.msg_path = path;
	mp.msg_size = stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0;   /* for SIZE= (RFC 1870) */
	a->mreq = mta_deliver(r->base, &mp, mta_done, a);
	free(path);
	free(rcpts);
	free(orcpt);
	free(notify);
	dns_addr_list_free(&list);
}

static void log_tlsa(const struct attempt *a, enum dns_status st, const struct dns_tlsa_list *l)
{
	size_t usable = 0;
	for (size_t i = 0; l != NULL && i < l->n; i++)
		usable += dns_tlsa_usable(&l->rr[i]);
	struct logline *ll = log_begin(LL_DEBUG, "relay.tlsa");
	log_str(ll, "msgid", a->e->env.id);
	log_str(ll, "mx", a->mx->mx[a->mx_next - 1].name);
	log_str(ll, "status", st == DNS_OK ? "ok" : st == DNS_NOADDR || st == DNS_NXDOMAIN ? "none"
	    : st == DNS_BOGUS ? "bogus" : dns_strerror(st));
	log_bool(ll, "secure", l != NULL && l->secure);
	log_uint(ll, "records", l != NULL ? l->n : 0);
	log_uint(ll, "usable", usable);
	log_end(ll);
}

/* RFC 7672 §2.2: a secure TLSA RRset means DANE; an insecure one or none
 * (NODATA, NXDOMAIN) the usual opportunistic TLS; anything else (bogus,
 * SERVFAIL, timeout) leaves it unknown whether DANE applies, so this host
 * is not used: the next MX, or a deferral. */
static void tlsa_done(void *arg, enum dns_status st, struct dns_tlsa_list *list)
{
	struct attempt *a = arg;
	struct dns_addr_list *addrs = a->addrs;
	const char *host = a->mx->mx[a->mx_next - 1].name;
	a->dreq = NULL;
	a->addrs = NULL;
	log_tlsa(a, st, list);
	if (st == DNS_OK || st == DNS_NOADDR || st == DNS_NXDOMAIN || st == DNS_BADNAME) {
		deliver(a, addrs, list != NULL && list->secure ? list : NULL);
		dns_tlsa_list_free(&list);
		return;
	}
	dns_addr_list_free(&addrs);
	mx_skip(a, xasprintf("4.7.5 %s: the TLSA lookup for DANE failed (%s): not delivering without "
	    "knowing whether DANE applies (RFC 7672 §2.2)", host, dns_strerror(st)));
}

static void addrs_done(void *arg, enum dns_status st, struct dns_addr_list *list)
{
	struct attempt *a = arg;
	struct relay *r = a->e->r;
	const char *host = a->mx->mx[a->mx_next - 1].name;
	a->dreq = NULL;
	if (st == DNS_BOGUS) {
		mx_skip(a, xasprintf("4.7.5 %s: its address records fail DNSSEC validation", host));
		return;
	}
	if (st != DNS_OK) {
		free(a->last_error);
		a->last_error = xasprintf("4.4.4 %s: %s", host, dns_strerror(st));
		try_mx(a);
		return;
	}
	/* RFC 7672 §2.2.2: TLSA only for a host whose addresses validated (the
	 * MX RRset itself may be insecure, §2.2.1); the smarthost is not an MX */
	if (list->secure && dns_validating(r->dns) && r->p.smarthost[0] == '\0') {
		a->addrs = list;
		a->dreq = dns_resolve_tlsa(r->dns, host, r->p.port, tlsa_done, a);
		return;
	}
	deliver(a, list, NULL);
}

/* A smarthost written as an address (RFC 5321 §4.1.3 literal, or bare) */
static struct dns_addr_list *ip_literal(const char *host)
{
	char buf[64];
	size_t n = strlen(host);
	if (n >= 2 && host[0] == '[' && host[n - 1] == ']') {
		host++;
		n -= 2;
	}
	if (n >= sizeof(buf))
		return NULL;
	memcpy(buf, host, n);
	buf[n] = '\0';
	const char *ip = strncasecmp(buf, "IPv6:", 5) == 0 ? buf + 5 : buf;
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	if (inet_pton(AF_INET, ip, &in4->sin_addr) == 1)
		in4->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, ip, &in6->sin6_addr) == 1)
		in6->sin6_family = AF_INET6;
	else
		return NULL;
	struct dns_addr_list *l = xcalloc(1, sizeof(*l));
	l->addrs = xmalloc(sizeof(ss));
	l->addrs[0] = ss;
	l->n = 1;
	l->canon = xstrdup(ip);
	return l;
}

static void try_mx(struct attempt *a)
{
	if (a->mx_next >= a->mx->n) {
		domain_all(a, Q_DEFERRED, a->last_error ? a->last_error : "4.4.1 no MX host answered");
		return;
	}
	const char *host = a->mx->mx[a->mx_next++].name;
	if (strcasecmp(host, a->e->r->p.hostname) == 0) {
		/* RFC 5321 §5.1: never deliver to ourselves through an MX loop */
		domain_all(a, Q_FAILED, "5.4.6 mail for this domain loops back to myself");
		return;
	}
	struct dns_addr_list *lit = ip_literal(host);
	if (lit != NULL) {
		deliver(a, lit, NULL);           /* "[192.0.2.1]" or a bare IP: no lookup */
		return;
	}
	a->dreq = dns_resolve_addrs(a->e->r->dns, host, addrs_done, a);
}

static void mx_done(void *arg, enum dns_status st, struct dns_mx_list *list)
{
	struct attempt *a = arg;
	a->dreq = NULL;
	switch (st) {
	case DNS_OK:
		a->mx = list;
		try_mx(a);
		return;
	case DNS_NULL_MX:
		domain_all(a, Q_FAILED, "5.1.10 recipient domain does not accept mail (null MX, RFC 7505)");
		return;
	case DNS_NXDOMAIN:
	case DNS_BADNAME:
		domain_all(a, Q_FAILED, "5.1.2 recipient domain does not exist (NXDOMAIN)");
		return;
	default:
		domain_all(a, Q_DEFERRED, "4.4.3 DNS lookup of the recipient domain failed temporarily");
		return;
	}
}

static void smarthost_mx(struct attempt *a)
{
	/* relay.smarthost "host:port": a one-entry MX list, no MX lookup */
	a->mx = xcalloc(1, sizeof(*a->mx));
	a->mx->mx = xcalloc(1, sizeof(*a->mx->mx));
	a->mx->n = 1;
	a->mx->mx[0].name = xstrdup(a->e->r->p.smarthost);
	try_mx(a);
}

static const char *rcpt_domain(const char *addr)
{
	const char *at = strrchr(addr, '@');
	return at ? at + 1 : "";
}

static void next_domain(struct rentry *e)
{
	if (e->domain_next >= e->ndomains) {
		round_done(e);
		return;
	}
	struct attempt *a = xcalloc(1, sizeof(*a));
	a->e = e;
	a->domain = xstrdup(e->domains[e->domain_next++]);
	a->idx = xcalloc(e->env.nrcpts, sizeof(size_t));
	for (size_t i = 0; i < e->env.nrcpts; i++)
		if (rcpt_open(&e->env.rcpts[i]) && strcasecmp(rcpt_domain(e->env.rcpts[i].addr), a->domain) == 0)
			a->idx[a->n++] = i;
	e->cur = a;
	if (e->r->p.smarthost[0] != '\0')
		smarthost_mx(a);
	else
		a->dreq = dns_resolve_mx(e->r->dns, a->domain, mx_done, a);
}

/* The distinct domains of e's open recipients into e->domains. */
static void collect_domains(struct rentry *e)
{
	xfree_strv(&e->domains);
	e->domains = xcalloc(e->env.nrcpts + 1, sizeof(char *));
	e->ndomains = e->domain_next = 0;
	for (size_t i = 0; i < e->env.nrcpts; i++) {
		if (!rcpt_open(&e->env.rcpts[i]))
			continue;
		const char *d = rcpt_domain(e->env.rcpts[i].addr);
		bool seen = false;
		for (size_t k = 0; k < e->ndomains && !seen; k++)
			seen = strcasecmp(e->domains[k], d) == 0;
		if (!seen)
			e->domains[e->ndomains++] = xstrdup(d);
	}
}

static struct domcount *domcount_get(struct relay *r, const char *domain, bool create)
{
	for (struct domcount *d = r->domcounts; d != NULL; d = d->next)
		if (strcasecmp(d->domain, domain) == 0)
			return d;
	if (!create)
		return NULL;
	struct domcount *d = xcalloc(1, sizeof(*d));
	d->domain = xstrdup(domain);
	d->next = r->domcounts;
	r->domcounts = d;
	return d;
}

/* With a smarthost every round goes to one host: the domain limit is its limit. */
static const char *limit_key(const struct relay *r, const char *domain)
{
	return r->p.smarthost[0] != '\0' ? r->p.smarthost : domain;
}

static bool domains_fit(struct relay *r, const struct rentry *e)
{
	for (size_t i = 0; i < e->ndomains; i++) {
		const struct domcount *d = domcount_get(r, limit_key(r, e->domains[i]), false);
		if (d != NULL && d->n >= (size_t)r->p.max_per_domain)
			return false;
	}
	return true;
}

static void domains_hold(struct relay *r, struct rentry *e, bool hold)
{
	if (e->held == hold)
		return;
	e->held = hold;
	for (size_t i = 0; i < e->ndomains; i++) {
		const char *key = limit_key(r, e->domains[i]);
		struct domcount *d = domcount_get(r, key, hold);
		if (hold) {
			d->n++;
		} else if (d != NULL && --d->n == 0) {
			for (struct domcount **pp = &r->domcounts; *pp != NULL; pp = &(*pp)->next) {
				if (*pp == d) {
					*pp = d->next;
					break;
				}
			}
			free(d->domain);
			free(d);
		}
	}
}

static void start_round(struct rentry *e)
{
	domains_hold(e->r, e, true);
	e->busy = true;
	e->r->active++;
	next_domain(e);
}

/* ---------------------------------------------------------------- the timer */

static void schedule(struct relay *r)
{
	if (r->p.hold)
		return;
	time_t now = time(NULL);
	for (struct rentry *e = r->head, *next; e != NULL && r->active < (size_t)r->p.max_active; e = next) {
		next = e->next;
		if (e->busy || e->env.next_attempt > now)
			continue;
		collect_domains(e);
		if (domains_fit(r, e))
			start_round(e);  /* else it waits for a round towards its domain to end */
	}
}

static void tick(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	schedule(arg);
}

/* ---------------------------------------------------------------- administration */

static struct rentry *entry_find(struct relay *r, const char *id)
{
	for (struct rentry *e = r->head; e != NULL; e = e->next)
		if (strcmp(e->env.id, id) == 0)
			return e;
	return NULL;
}

size_t relay_flush(struct relay *r)
{
	size_t n = 0;
	time_t now = time(NULL);
	for (struct rentry *e = r->head; e != NULL; e = e->next) {
		if (!e->busy && e->env.next_attempt > now) {
			e->env.next_attempt = now;
			n++;
		}
	}
	log_msg(LL_INFO, "relay.flush", "%zu entries made due", n);
	event_active(r->kick, EV_TIMEOUT, 0);
	return n;
}

int relay_delete(struct relay *r, const char *id)
{
	struct rentry *e = entry_find(r, id);
	if (e == NULL)
		return ENOENT;
	if (e->busy)
		return EBUSY;            /* its recipients may be half delivered: wait */
	struct logline *l = log_begin(LL_WARN, "relay.deleted");
	log_str(l, "msgid", e->env.id);
	log_str(l, "from", e->env.sender);
	log_end(l);
	save(e, true);
	entry_unlink(e);
	entry_free(e);
	return 0;
}

int relay_bounce(struct relay *r, const char *id)
{
	struct rentry *e = entry_find(r, id);
	if (e == NULL)
		return ENOENT;
	if (e->busy)
		return EBUSY;
	for (size_t i = 0; i < e->env.nrcpts; i++) {
		struct queue_rcpt *q = &e->env.rcpts[i];
		if (!rcpt_open(q))
			continue;
		set_rcpt(q, Q_FAILED, "5.0.0 delivery cancelled by the postmaster (postling queue bounce)",
		    q->remote_mta);
		log_rcpt(e, q, "relay.bounced", q->remote_mta, NULL, false, false);
	}
	/* the end of a round sends the failure DSN and removes the entry */
	e->busy = true;
	r->active++;
	round_done(e);
	return 0;
}

/* ---------------------------------------------------------------- API */

static bool dns_params_equal(const struct relay_params *a, const struct relay_params *b)
{
	if (a->dns_port != b->dns_port || a->ndns_servers != b->ndns_servers
	    || strcmp(a->dns_trust_anchor, b->dns_trust_anchor != NULL ? b->dns_trust_anchor : "") != 0)
		return false;
	for (size_t i = 0; i < a->ndns_servers; i++)
		if (strcmp(a->dns_servers[i], b->dns_servers[i]) != 0)
			return false;
	return true;
}

static void params_free(struct relay_params *p);
static void params_copy(struct relay_params *dst, const struct relay_params *src);

bool relay_reconfigure(struct relay *r, const struct relay_params *p)
{
	bool dns_same = dns_params_equal(&r->p, p);
	struct relay_params old = r->p;
	params_copy(&r->p, p);
	/* the resolver and the queue's place stay as they started: swap them back
	 * (old then frees the new copies) */
	char **servers = r->p.dns_servers, *qdir = r->p.queue_dir, *ddir = r->p.data_dir;
	size_t nservers = r->p.ndns_servers;
	r->p.dns_servers = old.dns_servers;
	r->p.ndns_servers = old.ndns_servers;
	r->p.dns_port = old.dns_port;
	free(r->p.dns_trust_anchor);
	r->p.dns_trust_anchor = xstrdup(old.dns_trust_anchor);
	r->p.queue_dir = old.queue_dir;
	r->p.data_dir = old.data_dir;
	old.dns_servers = servers;
	old.ndns_servers = nservers;
	old.queue_dir = qdir;
	old.data_dir = ddir;
	params_free(&old);
	/* parked connections were opened with the old settings (credentials, TLS) */
	mta_cache_clear(r->base);
	event_active(r->kick, EV_TIMEOUT, 0);
	return dns_same;
}

static void params_copy(struct relay_params *dst, const struct relay_params *src)
{
	*dst = *src;
	dst->queue_dir = xstrdup(src->queue_dir);
	dst->data_dir = xstrdup(src->data_dir);
	dst->hostname = xstrdup(src->hostname);
	dst->smarthost = xstrdup(src->smarthost ? src->smarthost : "");
	dst->dns_trust_anchor = xstrdup(src->dns_trust_anchor ? src->dns_trust_anchor : "");
	if (dst->max_active <= 0)
		dst->max_active = RELAY_MAX_ACTIVE_DEFAULT;
	if (dst->max_per_domain <= 0)
		dst->max_per_domain = RELAY_MAX_PER_DOMAIN_DEFAULT;
	dst->smarthost_user = xstrdup(src->smarthost_user ? src->smarthost_user : "");
	/* owned: the server's config (which lent them) is replaced on SIGHUP */
	dst->dns_servers = xcalloc(src->ndns_servers + 1, sizeof(char *));
	for (size_t i = 0; i < src->ndns_servers; i++)
		dst->dns_servers[i] = xstrdup(src->dns_servers[i]);
	dst->smarthost_password = xstrdup(src->smarthost_password ? src->smarthost_password : "");
}

static void params_free(struct relay_params *p)
{
	free(p->queue_dir);
	free(p->data_dir);
	free(p->hostname);
	free(p->smarthost);
	free(p->dns_trust_anchor);
	free(p->smarthost_user);
	for (size_t i = 0; p->dns_servers != NULL && i < p->ndns_servers; i++)
		free(p->dns_servers[i]);
	free(p->dns_servers);
	if (p->smarthost_password != NULL)
		explicit_bzero(p->smarthost_password, strlen(p->smarthost_password));
	free(p->smarthost_password);
}

struct relay *relay_new(struct event_base *base, struct aio *aio, const struct relay_params *p,
    char *err, size_t errlen)
{
	struct relay *r = xcalloc(1, sizeof(*r));
	params_copy(&r->p, p);
	r->base = base;
	r->aio = aio;
	r->dns = dns_new(base, (const char *const *)p->dns_servers, p->ndns_servers, p->dns_port, err, errlen);
	if (r->dns != NULL && r->p.dns_trust_anchor[0] != '\0'
	    && dns_set_trust_anchor_file(r->dns, r->p.dns_trust_anchor, err, errlen) < 0)
		dns_free(&r->dns);
	if (r->dns == NULL) {
		params_free(&r->p);
		free(r);
		return NULL;
	}
	r->tls = SSL_CTX_new(TLS_client_method());
	/* opportunistic TLS (RFC 3207 §4.1, RFC 7435): no verification without DANE */
	SSL_CTX_set_verify(r->tls, SSL_VERIFY_NONE, NULL);
	SSL_CTX_set_min_proto_version(r->tls, TLS1_2_VERSION);
	r->timer = event_new(base, -1, EV_PERSIST, tick, r);
	r->kick = event_new(base, -1, 0, tick, r);
	struct timeval tv = { RELAY_TICK_SECONDS, 0 };
	event_add(r->timer, &tv);
	/* at start-up, before the loop serves anyone: no later submission can be
	 * delivered and removed before this load adds it back */
	struct load_job j = { .r = r, .dir = r->p.queue_dir };
	load_work(&j);
	for (size_t i = 0; i < j.n; i++)
		entry_add(r, &j.envs[i]);
	free(j.envs);
	log_msg(LL_INFO, "relay.loaded", "%zu queued messages", r->nentries);
	event_active(r->kick, EV_TIMEOUT, 0);
	return r;
}

void relay_submitted(struct relay *r, const char *id)
{
	if (id != NULL)
		load(r, id);
}

void relay_free(struct relay **r_r)
{
	struct relay *r = *r_r;
	if (r == NULL)
		return;
	*r_r = NULL;
	event_free(r->timer);
	event_free(r->kick);
	while (r->head != NULL) {
		struct rentry *e = r->head;
		attempt_free(&e->cur);
		entry_unlink(e);
		entry_free(e);
	}
	while (r->domcounts != NULL) {
		struct domcount *d = r->domcounts;
		r->domcounts = d->next;
		free(d->domain);
		free(d);
	}
	mta_cache_clear(r->base);
	dns_free(&r->dns);
	SSL_CTX_free(r->tls);
	params_free(&r->p);
	free(r);
}

size_t relay_queued(const struct relay *r)
{
	return r->nentries;
}
