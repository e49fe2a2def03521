/* mta.c: the outbound SMTP client (design §6; the rules are in relay.h).
 *
 * One struct mta_req per delivery: the copied parameters, one connection at
 * a time (a plain bufferevent, replaced by an OpenSSL one after STARTTLS),
 * a reply reader (mta_reply.c, with the dot-stuffer), a timer and the result
 * being filled in. Every state change goes through mta_enter(), which logs
 * it at debug level (ids and state names only, never the session's payload).
 *
 * A connection ends through end_conn(): optionally QUIT first, then the
 * socket is closed and the kick event decides what follows (next address,
 * the same address without TLS, or the callback). So the callback and the
 * free never run inside a bufferevent callback, and never from inside
 * mta_deliver.
 *
 * DANE (RFC 7672, mta_params.dane): OpenSSL's own verifier matches the
 * peer's chain against the TLSA records added to each SSL (SSL_dane_*). The
 * shared client context keeps SSL_VERIFY_NONE, so the handshake completes
 * either way and tls_ready() decides, with the verifier's own reason in the
 * deferral text; nothing is sent but QUIT to a peer that did not match.
 *
 * Ownership: the message file descriptor travels with the aio read in flight
 * (struct mta_chunk); when the session lets go of a read (cancel, lost
 * connection), the read's done() closes the descriptor and frees itself. */
#include "relay/relay.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "store/store.h"

#define MTA_CHUNK (64 * 1024)          /* message read size */
#define MTA_OUT_LOWAT (64 * 1024)      /* read more of the message below this much queued */

enum mta_state {
	MTA_S_IDLE,          /* no connection; the kick event decides */
	MTA_S_CONNECT,
	MTA_S_GREETING,
	MTA_S_EHLO,
	MTA_S_HELO,
	MTA_S_STARTTLS,
	MTA_S_HANDSHAKE,
	MTA_S_AUTH_PLAIN,    /* waiting for 235 */
	MTA_S_AUTH_LOGIN,    /* waiting for 334 (user name) */
	MTA_S_AUTH_USER,     /* waiting for 334 (password) */
	MTA_S_AUTH_PASS,     /* waiting for 235 */
	MTA_S_RSET,          /* a parked connection taken back: is it alive? */
	MTA_S_MAIL,
	MTA_S_RCPT,
	MTA_S_DATA,
	MTA_S_BODY,
	MTA_S_EOM,
	MTA_S_QUIT,
	MTA_S_DONE,
};

static const char *const state_names[] = {
	"idle", "connect", "greeting", "ehlo", "helo", "starttls", "handshake", "auth-plain",
	"auth-login", "auth-user", "auth-pass", "rset", "mail", "rcpt", "data", "body", "eom", "quit", "done",
};
_Static_assert(sizeof(state_names) / sizeof(state_names[0]) == MTA_S_DONE + 1, "state_names");

enum mta_next { NEXT_START, NEXT_ADDR, NEXT_PLAIN, NEXT_FINISH };

enum {
	EXT_STARTTLS = 1 << 0, EXT_PIPELINING = 1 << 1, EXT_SIZE = 1 << 2, EXT_8BITMIME = 1 << 3,
	EXT_SMTPUTF8 = 1 << 4, EXT_DSN = 1 << 5, EXT_AUTH_PLAIN = 1 << 6, EXT_AUTH_LOGIN = 1 << 7,
};

enum rcpt_state { R_OPEN = 0, R_ACCEPTED, R_FINAL };

/* One read of the message file on the aio pool. Reactor fields: s. Worker
 * fields (set before submit, read after done): the rest. */
struct mta_chunk {
	struct mta_req *s;           /* NULL once the session let go */
	char *path;                  /* owned; used when fd is -1 */
	int fd;                      /* owned by the chunk while it is in flight */
	uint64_t off;
	char *data;                  /* owned, MTA_CHUNK octets */
	size_t len;                  /* 0: end of file */
	int error;
};

struct mta_req {
	char sid[14];
	struct event_base *base;
	enum mta_state state;
	mta_done_cb cb;
	void *arg;
	bool in_cb;

	/* parameters, owned copies */
	struct sockaddr_storage *addrs;
	size_t naddrs, addr_i;
	int port;                    /* when an address has none */
	char *mx_name, *helo, *auth_user, *auth_pass, *sender, *envid, *msg_path;
	SSL_CTX *tls_ctx;
	bool tls_required, implicit_tls, need_utf8, body_8bit;
	bool reuse;                  /* mta_params.reuse (always false with DANE) */
	bool dane;                   /* TLSA RRset validated: TLS required, 4.7.5 */
	struct dns_tlsa *tlsa;       /* owned: the usable records (dns_tlsa_usable) */
	size_t ntlsa;
	bool dane_auth;              /* this connection's SSL has records to match */
	bool no_cache;               /* a parked connection failed its RSET: connect afresh */
	unsigned uses;               /* transactions this connection carried before */
	int ret;
	char **rcpts, **orcpt;
	unsigned *notify;
	size_t nrcpts;
	uint64_t msg_size;
	struct aio *aio;
	int t_connect, t_cmd, t_data, t_final;

	/* connection */
	int fd;                      /* owned while bev is plain; -1 once a TLS bev owns it */
	struct bufferevent *bev;
	SSL *ssl;                    /* borrowed from the TLS bev */
	bool no_tls;                 /* retrying this address in clear */
	bool loopback;
	int cur_port;
	char ip[INET6_ADDRSTRLEN];
	struct event *timer, *kick;
	enum mta_next next;
	struct mta_reply reply;
	unsigned ext;
	uint64_t size_max;

	/* transaction */
	bool pipelining, mail_failed, individual;
	size_t rcpt_sent, rcpt_replied, naccepted;
	unsigned char *rst;          /* enum rcpt_state per recipient */

	/* message */
	int msg_fd;
	struct aio_job *job;
	struct mta_chunk *chunk;
	uint64_t off;
	struct mta_stuff stuff;

	/* failure of the last address tried (before MAIL) */
	bool hf_all_perm;
	int hf_code;
	char hf_enh[16];
	char *hf_text;

	struct mta_result *res;
};

static void conn_open(struct mta_req *s);
static void send_ehlo(struct mta_req *s, const char *verb);
static void bev_setup(struct mta_req *s);
static void start_txn(struct mta_req *s);

/* ------------------------------------------------------------ helpers */

const char *mta_status_name(enum mta_status st)
{
	return st == MTA_OK ? "ok" : st == MTA_TEMPFAIL ? "tempfail" : "permfail";
}

static void mta_enter(struct mta_req *s, enum mta_state st)
{
	struct logline *l = log_begin(LL_DEBUG, "mta.state");
	log_str(l, "id", s->sid);
	log_str(l, "from", state_names[s->state]);
	log_str(l, "to", state_names[st]);
	if (s->ip[0] != '\0')
		log_str(l, "ip", s->ip);
	log_end(l);
	s->state = st;
}

static void arm(struct mta_req *s, int secs)
{
	struct timeval tv = { secs, 0 };
	evtimer_add(s->timer, &tv);
}

static void send_cmd(struct mta_req *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void send_cmd(struct mta_req *s, const char *fmt, ...)
{
	struct evbuffer *o = bufferevent_get_output(s->bev);
	va_list ap;
	va_start(ap, fmt);
	evbuffer_add_vprintf(o, fmt, ap);
	va_end(ap);
	evbuffer_add(o, "\r\n", 2);
}

static enum mta_status status_of(int code)
{
	return code / 100 == 2 ? MTA_OK : code / 100 == 5 ? MTA_PERMFAIL : MTA_TEMPFAIL;
}

/* The reply's enhanced code, else "<class>.0.0" (4.5.0 for a code that has
 * no business here, e.g. 354 to RCPT). */
static void reply_enh(const struct mta_reply *r, char out[16])
{
	int cls = r->code / 100;
	if (r->enhanced[0] != '\0')
		snprintf(out, 16, "%s", r->enhanced);
	else if (cls == 2 || cls == 4 || cls == 5)
		snprintf(out, 16, "%d.0.0", cls);
	else
		snprintf(out, 16, "4.5.0");
}

static void set_rcpt(struct mta_req *s, size_t i, enum mta_status st, int code, const char *enh,
    const char *text)
{
	struct mta_rcpt_result *rr = &s->res->rcpts[i];
	rr->status = st;
	rr->code = code;
	snprintf(rr->enhanced, sizeof(rr->enhanced), "%s", enh);
	free(rr->reply);
	rr->reply = xstrdup(text);
	s->rst[i] = R_FINAL;
}

/* Every recipient not decided yet (accepted ones too) gets this outcome. */
static void fail_open(struct mta_req *s, enum mta_status st, int code, const char *enh,
    const char *text)
{
	for (size_t i = 0; i < s->nrcpts; i++)
		if (s->rst[i] != R_FINAL)
			set_rcpt(s, i, st, code, enh, text);
}

/* The outcome of a reply that means failure: its class, temporary for a 2xx
 * (a protocol error) or when force_temp; a temporary outcome never carries
 * a 5.x.x or 2.x.x enhanced code (RFC 3463 §3.1: the class is the outcome). */
static enum mta_status reply_failure(const struct mta_reply *r, bool force_temp, char enh[16])
{
	enum mta_status st = status_of(r->code);
	reply_enh(r, enh);
	if (st == MTA_OK || force_temp)
		st = MTA_TEMPFAIL;
	if (st == MTA_TEMPFAIL && enh[0] == '5')
		enh[0] = '4';
	else if (st == MTA_TEMPFAIL && enh[0] == '2')
		snprintf(enh, 16, "4.5.0");
	return st;
}

static void fail_open_reply(struct mta_req *s)
{
	char enh[16];
	enum mta_status st = reply_failure(&s->reply, false, enh);
	fail_open(s, st, s->reply.code, enh, s->reply.text);
}

/* ------------------------------------------------- message file reads */

static void chunk_free(struct mta_chunk *c)
{
	free(c->path);
	free(c->data);
	free(c);
}

static void chunk_work(void *arg)
{
	struct mta_chunk *c = arg;
	if (c->fd == -1) {
		c->fd = open(c->path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
		if (c->fd == -1) {
			c->error = errno;
			return;
		}
	}
	ssize_t n;
	do
		n = pread(c->fd, c->data, MTA_CHUNK, (off_t)c->off);
	while (n == -1 && errno == EINTR);
	if (n == -1)
		c->error = errno;
	else
		c->len = (size_t)n;
}

static void chunk_done(void *arg, bool cancelled);

static void read_next(struct mta_req *s)
{
	struct mta_chunk *c = xcalloc(1, sizeof(*c));
	c->s = s;
	c->fd = s->msg_fd;
	s->msg_fd = -1;   /* the chunk owns it while in flight */
	if (c->fd == -1)
		c->path = xstrdup(s->msg_path);
	c->off = s->off;
	c->data = xmalloc(MTA_CHUNK);
	s->chunk = c;
	s->job = aio_submit(s->aio, chunk_work, chunk_done, c);
}

/* Lets go of the read in flight (its done() closes the file) and of the file. */
static void body_detach(struct mta_req *s)
{
	if (s->chunk != NULL) {
		s->chunk->s = NULL;
		aio_cancel(s->job);
		s->chunk = NULL;
		s->job = NULL;
	}
	if (s->msg_fd != -1) {
		close(s->msg_fd);
		s->msg_fd = -1;
	}
}

/* ---------------------------------------------------- connection ends */

static void conn_close(struct mta_req *s)
{
	evtimer_del(s->timer);
	body_detach(s);
	/* Disabled first: a bev with a deferred callback queued is only
	 * finalized later, and its events must not outlive our close(fd). */
	if (s->bev != NULL) {
		bufferevent_disable(s->bev, EV_READ | EV_WRITE);
		bufferevent_free(s->bev);   /* a TLS bev frees its SSL and closes fd */
	}
	s->bev = NULL;
	s->ssl = NULL;
	if (s->fd != -1)
		close(s->fd);
	s->fd = -1;
	mta_reply_reset(&s->reply);
}

static void end_conn(struct mta_req *s, enum mta_next next, bool quit)
{
	s->next = next;
	if (quit && s->bev != NULL && s->state != MTA_S_QUIT) {
		send_cmd(s, "QUIT");
		mta_enter(s, MTA_S_QUIT);
		arm(s, s->t_cmd < MTA_QUIT_TIMEOUT ? s->t_cmd : MTA_QUIT_TIMEOUT);
		return;
	}
	conn_close(s);
	mta_enter(s, MTA_S_IDLE);
	event_active(s->kick, EV_TIMEOUT, 0);
}

/* A failure before MAIL: remembered, then the next address. */
static void host_fail(struct mta_req *s, enum mta_status st, int code, const char *enh,
    const char *text, bool quit)
{
	if (st != MTA_PERMFAIL)
		s->hf_all_perm = false;
	s->hf_code = code;
	snprintf(s->hf_enh, sizeof(s->hf_enh), "%s", enh);
	free(s->hf_text);
	s->hf_text = xstrdup(text);
	end_conn(s, NEXT_ADDR, quit);
}

static void host_fail_reply(struct mta_req *s, bool force_temp)
{
	char enh[16];
	enum mta_status st = reply_failure(&s->reply, force_temp, enh);
	host_fail(s, st, s->reply.code, enh, s->reply.text, true);
}

static void host_fail_local(struct mta_req *s, const char *enh, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void host_fail_local(struct mta_req *s, const char *enh, const char *fmt, ...)
{
	char text[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	host_fail(s, MTA_TEMPFAIL, 0, enh, text, false);
}

/* host_fail_local, with QUIT first (the server is in a sane state). */
static void host_fail_local_quit(struct mta_req *s, const char *enh, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void host_fail_local_quit(struct mta_req *s, const char *enh, const char *fmt, ...)
{
	char text[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	host_fail(s, MTA_TEMPFAIL, 0, enh, text, true);
}

/* A failure inside the transaction: final for whoever is still open. */
static void txn_fail_local(struct mta_req *s, const char *enh, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void txn_fail_local(struct mta_req *s, const char *enh, const char *fmt, ...)
{
	char text[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	fail_open(s, MTA_TEMPFAIL, 0, enh, text);
	end_conn(s, NEXT_FINISH, false);
}

static void tls_failed(struct mta_req *s, const char *why)
{
	if (s->tls_required) {
		host_fail_local(s, "4.7.5", "TLS handshake with %s[%s] failed%s: %s", s->mx_name, s->ip,
		    s->dane ? " (DANE, RFC 7672: not sent in clear)" : "", why);
		return;
	}
	end_conn(s, NEXT_PLAIN, false);   /* opportunistic: this address again, in clear */
}

/* A parked connection that did not survive its RSET: the same address again,
 * over a new connection (nothing was sent for this message yet). */
static void retry_fresh(struct mta_req *s)
{
	s->no_cache = true;
	end_conn(s, NEXT_START, false);
}

#define MTA_REUSE_MAX 100            /* transactions per connection */

static char *cache_key(const struct mta_req *s)
{
	return xasprintf("%s|%d|%s|%s|%s|%d", s->ip, s->cur_port, s->mx_name, s->helo,
	    s->auth_user != NULL ? s->auth_user : "", s->tls_required);
}

/* The transaction is over and the server in a sane state: park the connection. */
static bool park(struct mta_req *s)
{
	if (!s->reuse || s->bev == NULL || s->reply.code == 421 || s->uses + 1 >= MTA_REUSE_MAX)
		return false;
	evtimer_del(s->timer);
	body_detach(s);
	struct mta_conn c = {
		.fd = s->fd, .bev = s->bev, .ssl = s->ssl, .ext = s->ext, .size_max = s->size_max,
		.tls = s->res->tls, .loopback = s->loopback, .uses = s->uses + 1,
		.tls_version = s->res->tls_version != NULL ? xstrdup(s->res->tls_version) : NULL,
	};
	char *key = cache_key(s);
	mta_cache_put(s->base, key, &c);
	free(key);
	s->bev = NULL;
	s->ssl = NULL;
	s->fd = -1;
	mta_reply_reset(&s->reply);
	s->next = NEXT_FINISH;
	mta_enter(s, MTA_S_IDLE);
	event_active(s->kick, EV_TIMEOUT, 0);
	return true;
}

/* A parked connection to this address, if any: RSET, then the transaction. */
static bool unpark(struct mta_req *s)
{
	struct mta_conn c;
	char *key = cache_key(s);
	bool found = s->reuse && !s->no_cache && mta_cache_take(s->base, key, &c);
	free(key);
	if (!found)
		return false;
	s->fd = c.fd;
	s->bev = c.bev;
	s->ssl = c.ssl;
	s->ext = c.ext;
	s->size_max = c.size_max;
	s->uses = c.uses;
	s->res->tls = c.tls;
	s->res->tls_version = c.tls_version;
	bev_setup(s);
	send_cmd(s, "RSET");
	mta_enter(s, MTA_S_RSET);
	arm(s, s->t_cmd);
	return true;
}

/* Connection lost, refused or timed out (what says which) in any state. */
static void conn_lost(struct mta_req *s, const char *what)
{
	const char *st = state_names[s->state];
	switch (s->state) {
	case MTA_S_CONNECT:
		host_fail_local(s, "4.4.1", "connect to %s[%s]:%d: %s", s->mx_name, s->ip, s->cur_port,
		    what);
		break;
	case MTA_S_HANDSHAKE:
		tls_failed(s, what);
		break;
	case MTA_S_RSET:
		retry_fresh(s);
		break;
	case MTA_S_GREETING: case MTA_S_EHLO: case MTA_S_HELO: case MTA_S_STARTTLS:
	case MTA_S_AUTH_PLAIN: case MTA_S_AUTH_LOGIN: case MTA_S_AUTH_USER: case MTA_S_AUTH_PASS:
		host_fail_local(s, "4.4.2", "%s with %s[%s] in state %s", what, s->mx_name, s->ip, st);
		break;
	case MTA_S_MAIL: case MTA_S_RCPT: case MTA_S_DATA: case MTA_S_BODY: case MTA_S_EOM:
		txn_fail_local(s, "4.4.2", "%s with %s[%s] in state %s", what, s->mx_name, s->ip, st);
		break;
	case MTA_S_QUIT:
		end_conn(s, s->next, false);
		break;
	case MTA_S_IDLE: case MTA_S_DONE:
		break;
	}
}

static void bad_reply(struct mta_req *s)
{
	char what[96];
	snprintf(what, sizeof(what), "protocol error (%s)", mta_reply_strerror(s->reply.error));
	if (s->state >= MTA_S_MAIL && s->state <= MTA_S_EOM)
		txn_fail_local(s, "4.5.0", "%s from %s[%s] in state %s", what, s->mx_name, s->ip,
		    state_names[s->state]);
	else if (s->state == MTA_S_QUIT)
		end_conn(s, s->next, false);
	else
		host_fail_local(s, "4.5.0", "%s from %s[%s] in state %s", what, s->mx_name, s->ip,
		    state_names[s->state]);
}

/* ------------------------------------------------------- EHLO and TLS */

static bool word_is(const char *p, size_t n, const char *w)
{
	return strlen(w) == n && strncasecmp(p, w, n) == 0;
}

/* One EHLO keyword line (RFC 5321 §4.1.1.1): keyword, then parameters. */
static void ext_line(struct mta_req *s, const char *p, size_t n)
{
	size_t k = 0;
	while (k < n && p[k] != ' ' && p[k] != '=')
		k++;
	const char *arg = p + k + (k < n), *end = p + n;
	if (word_is(p, k, "STARTTLS"))
		s->ext |= EXT_STARTTLS;
	else if (word_is(p, k, "PIPELINING"))
		s->ext |= EXT_PIPELINING;
	else if (word_is(p, k, "8BITMIME"))
		s->ext |= EXT_8BITMIME;
	else if (word_is(p, k, "SMTPUTF8"))
		s->ext |= EXT_SMTPUTF8;
	else if (word_is(p, k, "DSN"))
		s->ext |= EXT_DSN;
	else if (word_is(p, k, "SIZE")) {
		uint64_t v = 0;   /* RFC 1870 §4: no number or 0 = no fixed limit */
		for (; arg < end && *arg >= '0' && *arg <= '9'; arg++)
			v = v > (UINT64_MAX - 9) / 10 ? UINT64_MAX : v * 10 + (uint64_t)(*arg - '0');
		s->ext |= EXT_SIZE;
		s->size_max = v;
	} else if (word_is(p, k, "AUTH")) {   /* also the old "AUTH=" form */
		while (arg < end) {
			const char *w = arg;
			while (arg < end && *arg != ' ')
				arg++;
			if (word_is(w, (size_t)(arg - w), "PLAIN"))
				s->ext |= EXT_AUTH_PLAIN;
			else if (word_is(w, (size_t)(arg - w), "LOGIN"))
				s->ext |= EXT_AUTH_LOGIN;
			while (arg < end && *arg == ' ')
				arg++;
		}
	}
}

static void parse_ehlo(struct mta_req *s)
{
	s->ext = 0;
	s->size_max = 0;
	for (const char *nl = strchr(s->reply.text, '\n'); nl != NULL; ) {
		const char *line = nl + 1;
		nl = strchr(line, '\n');
		size_t n = nl != NULL ? (size_t)(nl - line) : strlen(line);
		if (n > 4)
			ext_line(s, line + 4, n - 4);
	}
}

static void set_sni(struct mta_req *s, SSL *ssl)
{
	unsigned char tmp[sizeof(struct in6_addr)];
	if (s->mx_name[0] != '\0' && inet_pton(AF_INET, s->mx_name, tmp) != 1
	    && inet_pton(AF_INET6, s->mx_name, tmp) != 1)
		SSL_set_tlsext_host_name(ssl, s->mx_name);
}

static void on_read(struct bufferevent *bev, void *arg);
static void on_write(struct bufferevent *bev, void *arg);
static void on_event(struct bufferevent *bev, short what, void *arg);

static void bev_setup(struct mta_req *s)
{
	bufferevent_setcb(s->bev, on_read, on_write, on_event, s);
	/* input is drained as it is parsed; the high mark only bounds what a
	 * state that parses nothing (connect, handshake) could pile up */
	bufferevent_setwatermark(s->bev, EV_READ, 0, MTA_REPLY_MAX);
	bufferevent_setwatermark(s->bev, EV_WRITE, MTA_OUT_LOWAT, 0);
	bufferevent_enable(s->bev, EV_READ | EV_WRITE);
}

/* RFC 7672 §2.2 and §3: the TLSA records to match, if any is usable (none:
 * TLS is mandatory but unauthenticated). mx_name is the TLSA base domain and
 * the reference identifier for DANE-TA(2) (§3.2.2; the SNI is already set);
 * DANE-EE(3) checks no name (§3.1.1). SSL_CTX_dane_enable only sets up the
 * shared digest table, once: it changes nothing for non-DANE connections. */
static int dane_setup(struct mta_req *s, SSL *ssl)
{
	size_t added = 0;
	s->dane_auth = false;
	if (s->ntlsa == 0)
		return 0;
	if (SSL_CTX_dane_enable(s->tls_ctx) <= 0 || SSL_dane_enable(ssl, s->mx_name) <= 0)
		return -1;
	SSL_dane_set_flags(ssl, DANE_FLAG_NO_DANE_EE_NAMECHECKS);
	for (size_t i = 0; i < s->ntlsa; i++) {
		const struct dns_tlsa *t = &s->tlsa[i];
		/* 0 is a record OpenSSL cannot use (e.g. a Full(0) record that does
		 * not parse): skipped like any unusable one (RFC 7671 §4.1) */
		if (SSL_dane_tlsa_add(ssl, t->usage, t->selector, t->mtype, t->data, t->len) > 0)
			added++;
	}
	ERR_clear_error();
	s->dane_auth = added > 0;
	return 0;
}

/* After the handshake: the DANE verdict. OK when there is nothing to match
 * or a record matched (SSL_get0_dane_authority >= 0) with a verified chain. */
static bool dane_check(struct mta_req *s)
{
	if (!s->dane_auth)
		return true;
	long v = SSL_get_verify_result(s->ssl);
	if (v == X509_V_OK && SSL_get0_dane_authority(s->ssl, NULL, NULL) >= 0) {
		s->res->dane = true;
		return true;
	}
	host_fail_local_quit(s, "4.7.5", "DANE: the certificate of %s[%s] matches none of its %zu TLSA "
	    "record%s (%s)", s->mx_name, s->ip, s->ntlsa, s->ntlsa == 1 ? "" : "s",
	    v != X509_V_OK ? X509_verify_cert_error_string(v) : "no match");
	return false;
}

/* Nothing may follow the 220 (it would be a reply injected in clear and
 * read as if protected, cf. CVE-2011-0411): a failed STARTTLS like any
 * other. The plain bev goes, the descriptor stays. */
static void tls_wrap(struct mta_req *s)
{
	SSL *ssl = SSL_new(s->tls_ctx);
	if (ssl == NULL) {
		tls_failed(s, "SSL_new failed");
		return;
	}
	set_sni(s, ssl);
	if (s->dane && dane_setup(s, ssl) < 0) {
		SSL_free(ssl);
		tls_failed(s, "cannot enable DANE (OpenSSL)");
		return;
	}
	bufferevent_disable(s->bev, EV_READ | EV_WRITE);
	bufferevent_free(s->bev);
	s->bev = bufferevent_openssl_socket_new(s->base, s->fd, ssl, BUFFEREVENT_SSL_CONNECTING,
	    BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (s->bev == NULL) {
		SSL_free(ssl);
		tls_failed(s, "bufferevent_openssl_socket_new failed");
		return;
	}
	s->fd = -1;
	s->ssl = ssl;
	bufferevent_openssl_set_allow_dirty_shutdown(s->bev, 1);
	bev_setup(s);
	mta_enter(s, MTA_S_HANDSHAKE);
	arm(s, s->t_cmd);
}

static void start_tls(struct mta_req *s)
{
	if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0) {
		tls_failed(s, "data after the STARTTLS reply");
		return;
	}
	tls_wrap(s);
}

static void tls_ready(struct mta_req *s)
{
	free(s->res->tls_version);
	s->res->tls_version = xstrdup(SSL_get_version(s->ssl));
	s->res->tls = true;
	if (s->dane && !dane_check(s))
		return;
	if (s->implicit_tls) {   /* RFC 8314 §3.3: the greeting comes over TLS */
		mta_enter(s, MTA_S_GREETING);
		arm(s, s->t_cmd);
		if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0)
			on_read(s->bev, s);
		return;
	}
	send_ehlo(s, "EHLO");   /* RFC 3207 §4.2: forget what was learnt before */
}

/* ------------------------------------------------------ the transaction */

/* RFC 3461 §4: xtext: "!".."~" but "+" and "=" as themselves, others +XX */
static void add_xtext(struct evbuffer *o, const char *p)
{
	for (const unsigned char *c = (const unsigned char *)p; *c != '\0'; c++) {
		if (*c >= '!' && *c <= '~' && *c != '+' && *c != '=')
			evbuffer_add(o, c, 1);
		else
			evbuffer_add_printf(o, "+%02X", *c);
	}
}

/* UTF-8 sequence at p: its code point and length (a stray byte stands for itself). */
static size_t utf8_next(const unsigned char *p, unsigned *cp_r)
{
	size_t n = *p >= 0xf0 ? 4 : *p >= 0xe0 ? 3 : *p >= 0xc0 ? 2 : 1;
	unsigned cp = n == 1 ? *p : *p & (0x3fu >> (n - 1));
	for (size_t i = 1; i < n; i++) {
		if ((p[i] & 0xc0) != 0x80) {
			*cp_r = *p;
			return 1;
		}
		cp = cp << 6 | (p[i] & 0x3fu);
	}
	*cp_r = cp;
	return n;
}

/* RFC 6533 §3: utf-8-addr-unitext (raw UTF-8, under SMTPUTF8) or
 * utf-8-addr-xtext; '+', '=', '\', space and controls as \x{HEX} in both. */
static void add_utf8_addr(struct evbuffer *o, const char *p, bool raw)
{
	const unsigned char *c = (const unsigned char *)p;
	while (*c != '\0') {
		unsigned cp;
		size_t n = utf8_next(c, &cp);
		if ((cp > 0x20 && cp < 0x7f && cp != '+' && cp != '=' && cp != '\\') || (raw && cp >= 0x80))
			evbuffer_add(o, c, n);
		else
			evbuffer_add_printf(o, "\\x{%X}", cp);
		c += n;
	}
}

static bool is_ascii(const char *p)
{
	for (; *p != '\0'; p++)
		if ((unsigned char)*p >= 0x80)
			return false;
	return true;
}

static void add_orcpt(struct mta_req *s, struct evbuffer *o, const char *orcpt)
{
	const char *semi = strchr(orcpt, ';');
	if (semi == NULL || semi == orcpt || semi[1] == '\0')
		return;
	const char *addr = semi + 1;
	bool utf8type = (size_t)(semi - orcpt) == 5 && strncasecmp(orcpt, "utf-8", 5) == 0;
	if (!utf8type && is_ascii(addr)) {
		evbuffer_add_printf(o, " ORCPT=%.*s;", (int)(semi - orcpt), orcpt);
		add_xtext(o, addr);
		return;
	}
	evbuffer_add_printf(o, " ORCPT=utf-8;");
	add_utf8_addr(o, addr, s->need_utf8 && (s->ext & EXT_SMTPUTF8));
}

static void send_mail(struct mta_req *s)
{
	struct evbuffer *o = bufferevent_get_output(s->bev);
	evbuffer_add_printf(o, "MAIL FROM:<%s>", s->sender);
	if ((s->ext & EXT_SIZE) && s->msg_size > 0)
		evbuffer_add_printf(o, " SIZE=%llu", (unsigned long long)s->msg_size);
	if (s->body_8bit)
		evbuffer_add_printf(o, " BODY=8BITMIME");
	if (s->need_utf8)
		evbuffer_add_printf(o, " SMTPUTF8");
	if ((s->ext & EXT_DSN) && s->ret != QUEUE_RET_UNSET)
		evbuffer_add_printf(o, " RET=%s", s->ret == QUEUE_RET_FULL ? "FULL" : "HDRS");
	if ((s->ext & EXT_DSN) && s->envid[0] != '\0') {
		evbuffer_add_printf(o, " ENVID=");
		add_xtext(o, s->envid);
	}
	evbuffer_add(o, "\r\n", 2);
}

static void send_rcpt(struct mta_req *s, size_t i)
{
	struct evbuffer *o = bufferevent_get_output(s->bev);
	evbuffer_add_printf(o, "RCPT TO:<%s>", s->rcpts[i]);
	unsigned nt = s->notify != NULL ? s->notify[i] : 0;
	if ((s->ext & EXT_DSN) && nt != 0) {   /* RFC 3461 §4.1 */
		if (nt & QUEUE_NOTIFY_NEVER)
			evbuffer_add_printf(o, " NOTIFY=NEVER");
		else
			evbuffer_add_printf(o, " NOTIFY=%s%s%s%s%s",
			    nt & QUEUE_NOTIFY_SUCCESS ? "SUCCESS" : "",
			    (nt & QUEUE_NOTIFY_SUCCESS) && (nt & 0xcu) ? "," : "",
			    nt & QUEUE_NOTIFY_FAILURE ? "FAILURE" : "",
			    (nt & QUEUE_NOTIFY_FAILURE) && (nt & QUEUE_NOTIFY_DELAY) ? "," : "",
			    nt & QUEUE_NOTIFY_DELAY ? "DELAY" : "");
	}
	if ((s->ext & EXT_DSN) && s->orcpt != NULL && s->orcpt[i][0] != '\0')
		add_orcpt(s, o, s->orcpt[i]);
	evbuffer_add(o, "\r\n", 2);
	s->rcpt_sent++;
}

/* Message-level checks before MAIL: permanent for every recipient. */
static bool precheck(struct mta_req *s)
{
	char text[512];
	const char *enh = NULL;
	if ((s->ext & EXT_SIZE) && s->size_max > 0 && s->msg_size > s->size_max) {
		enh = "5.3.4";
		snprintf(text, sizeof(text), "message size %llu exceeds the limit of %llu of %s[%s]",
		    (unsigned long long)s->msg_size, (unsigned long long)s->size_max, s->mx_name, s->ip);
	} else if (s->need_utf8 && !(s->ext & EXT_SMTPUTF8)) {
		enh = "5.6.7";
		snprintf(text, sizeof(text), "SMTPUTF8 is needed but %s[%s] does not offer it",
		    s->mx_name, s->ip);
	} else if (s->body_8bit && !(s->ext & EXT_8BITMIME)) {
		enh = "5.6.3";
		snprintf(text, sizeof(text), "8BITMIME is needed but %s[%s] does not offer it",
		    s->mx_name, s->ip);
	}
	if (enh == NULL)
		return true;
	fail_open(s, MTA_PERMFAIL, 0, enh, text);
	end_conn(s, NEXT_FINISH, true);
	return false;
}

static void start_txn(struct mta_req *s)
{
	if (!precheck(s))
		return;
	s->pipelining = (s->ext & EXT_PIPELINING) != 0;
	s->mail_failed = false;
	s->rcpt_sent = s->rcpt_replied = s->naccepted = 0;
	send_mail(s);
	if (s->pipelining)   /* RFC 2920 §3.1: RCPTs in the same group, DATA after */
		for (size_t i = 0; i < s->nrcpts; i++)
			send_rcpt(s, i);
	mta_enter(s, MTA_S_MAIL);
	arm(s, s->t_cmd);
}

static void start_auth(struct mta_req *s)
{
	if (!s->res->tls && !(s->loopback && !s->tls_required)) {
		host_fail_local(s, "4.7.10", "no AUTH to %s[%s] without TLS", s->mx_name, s->ip);
		return;
	}
	if (s->ext & EXT_AUTH_PLAIN) {   /* RFC 4616 §2, initial response (RFC 4954 §4) */
		size_t ul = strlen(s->auth_user), pl = strlen(s->auth_pass);
		char *raw = xmalloc(ul + pl + 2);
		raw[0] = '\0';
		memcpy(raw + 1, s->auth_user, ul);
		raw[ul + 1] = '\0';
		memcpy(raw + ul + 2, s->auth_pass, pl);
		char *b64 = util_b64_encode(raw, ul + pl + 2);
		send_cmd(s, "AUTH PLAIN %s", b64);
		explicit_bzero(raw, ul + pl + 2);
		explicit_bzero(b64, strlen(b64));
		free(raw);
		free(b64);
		mta_enter(s, MTA_S_AUTH_PLAIN);
	} else if (s->ext & EXT_AUTH_LOGIN) {
		send_cmd(s, "AUTH LOGIN");
		mta_enter(s, MTA_S_AUTH_LOGIN);
	} else {
		host_fail_local(s, "4.7.0", "%s[%s] offers no AUTH PLAIN or LOGIN", s->mx_name, s->ip);
		return;
	}
	arm(s, s->t_cmd);
}

static void send_b64(struct mta_req *s, const char *secret)
{
	char *b64 = util_b64_encode(secret, strlen(secret));
	send_cmd(s, "%s", b64);
	explicit_bzero(b64, strlen(b64));
	free(b64);
	arm(s, s->t_cmd);
}

/* After EHLO/HELO: STARTTLS, then AUTH, then the transaction. */
static void after_ehlo(struct mta_req *s)
{
	if (!s->res->tls && s->tls_ctx != NULL && !s->no_tls && (s->ext & EXT_STARTTLS)) {
		send_cmd(s, "STARTTLS");
		mta_enter(s, MTA_S_STARTTLS);
		arm(s, s->t_cmd);
	} else if (!s->res->tls && s->dane) {
		host_fail_local_quit(s, "4.7.5", "%s[%s] offers no STARTTLS but has DANE TLSA records "
		    "(RFC 7672 §2.2): not sent in clear", s->mx_name, s->ip);
	} else if (!s->res->tls && s->tls_required) {
		host_fail(s, MTA_TEMPFAIL, 0, "4.7.10", "TLS is required but not available", true);
	} else if (s->auth_user != NULL) {
		start_auth(s);
	} else {
		start_txn(s);
	}
}

static void send_ehlo(struct mta_req *s, const char *verb)
{
	send_cmd(s, "%s %s", verb, s->helo);
	mta_enter(s, verb[0] == 'E' ? MTA_S_EHLO : MTA_S_HELO);
	arm(s, s->t_cmd);
}

/* ---------------------------------------------------------- the body */

static void maybe_read(struct mta_req *s)
{
	if (s->state == MTA_S_BODY && s->job == NULL
	    && evbuffer_get_length(bufferevent_get_output(s->bev)) <= MTA_OUT_LOWAT)
		read_next(s);
}

static void body_chunk(struct mta_req *s, const char *data, size_t len)
{
	struct evbuffer *o = bufferevent_get_output(s->bev);
	struct evbuffer_iovec v;
	size_t need = len > 0 ? 2 * len + 2 : MTA_STUFF_END_MAX;
	if (evbuffer_reserve_space(o, (ev_ssize_t)need, &v, 1) < 1)
		fatalx("mta: evbuffer_reserve_space failed");
	v.iov_len = len > 0 ? mta_stuff(&s->stuff, data, len, v.iov_base)
	    : mta_stuff_end(&s->stuff, v.iov_base);
	evbuffer_commit_space(o, &v, 1);
	if (len == 0) {   /* the end: the reply to "." is awaited */
		bufferevent_set_timeouts(s->bev, NULL, NULL);
		mta_enter(s, MTA_S_EOM);
		arm(s, s->t_final);
		return;
	}
	s->off += len;
	maybe_read(s);
}

static void chunk_done(void *arg, bool cancelled)
{
	struct mta_chunk *c = arg;
	struct mta_req *s = c->s;
	if (s == NULL) {   /* the session let go: the file is ours to close */
		if (c->fd != -1)
			close(c->fd);
		chunk_free(c);
		return;
	}
	s->job = NULL;
	s->chunk = NULL;
	s->msg_fd = c->fd;
	if (cancelled || c->error != 0)   /* never send "." after a failed read */
		txn_fail_local(s, "4.3.0", "cannot read the message: %s",
		    strerror(cancelled ? ECANCELED : c->error));
	else
		body_chunk(s, c->data, c->len);
	chunk_free(c);
}

static void start_body(struct mta_req *s)
{
	struct timeval tv = { s->t_data, 0 };   /* RFC 5321 §4.5.3.2.5, per write */
	evtimer_del(s->timer);
	bufferevent_set_timeouts(s->bev, NULL, &tv);
	s->off = 0;
	memset(&s->stuff, 0, sizeof(s->stuff));
	mta_enter(s, MTA_S_BODY);
	maybe_read(s);
}

/* ----------------------------------------------------- reply dispatch */

static void on_rcpt_reply(struct mta_req *s)
{
	size_t i = s->rcpt_replied++;
	if (s->mail_failed) {
		/* pipelined RCPTs after a refused MAIL: their replies mean nothing */
	} else if (s->reply.code / 100 == 2) {
		s->rst[i] = R_ACCEPTED;
		s->naccepted++;
	} else {
		char enh[16];
		enum mta_status st = reply_failure(&s->reply, false, enh);
		set_rcpt(s, i, st, s->reply.code, enh, s->reply.text);
		s->individual = true;
	}
	if (s->rcpt_replied < s->nrcpts) {
		if (!s->pipelining)
			send_rcpt(s, s->rcpt_replied);
		arm(s, s->t_cmd);
	} else if (s->mail_failed || s->naccepted == 0) {
		end_conn(s, NEXT_FINISH, true);
	} else {
		send_cmd(s, "DATA");
		mta_enter(s, MTA_S_DATA);
		arm(s, s->t_cmd);
	}
}

static void on_mail_reply(struct mta_req *s)
{
	if (s->reply.code / 100 != 2) {
		fail_open_reply(s);
		s->mail_failed = true;
		if (!s->pipelining) {
			end_conn(s, NEXT_FINISH, true);
			return;
		}
	} else if (!s->pipelining) {
		send_rcpt(s, 0);
	}
	mta_enter(s, MTA_S_RCPT);
	arm(s, s->t_cmd);
}

static void on_eom_reply(struct mta_req *s)
{
	char enh[16];
	enum mta_status st = s->reply.code / 100 == 2 ? MTA_OK : reply_failure(&s->reply, false, enh);
	if (st == MTA_OK)
		reply_enh(&s->reply, enh);
	fail_open(s, st, s->reply.code, enh, s->reply.text);
	if (!park(s))
		end_conn(s, NEXT_FINISH, true);
}

static void on_auth_reply(struct mta_req *s)
{
	int code = s->reply.code;
	if (code == 235 && (s->state == MTA_S_AUTH_PLAIN || s->state == MTA_S_AUTH_PASS)) {
		start_txn(s);
	} else if (code == 334 && s->state == MTA_S_AUTH_LOGIN) {
		send_b64(s, s->auth_user);
		mta_enter(s, MTA_S_AUTH_USER);
	} else if (code == 334 && s->state == MTA_S_AUTH_USER) {
		send_b64(s, s->auth_pass);
		mta_enter(s, MTA_S_AUTH_PASS);
	} else {
		host_fail_reply(s, true);   /* credentials are configuration: never bounce */
	}
}

static void on_reply(struct mta_req *s)
{
	int cls = s->reply.code / 100;
	switch (s->state) {
	case MTA_S_GREETING:   /* RFC 5321 §3.1: 554 greeting, still QUIT */
		if (cls == 2)
			send_ehlo(s, "EHLO");
		else
			host_fail_reply(s, false);
		break;
	case MTA_S_EHLO:
		if (cls == 2) {
			parse_ehlo(s);
			after_ehlo(s);
		} else if (cls == 5) {
			send_ehlo(s, "HELO");   /* RFC 5321 §3.2 */
		} else {
			host_fail_reply(s, false);
		}
		break;
	case MTA_S_HELO:
		if (cls == 2) {
			s->ext = 0;
			after_ehlo(s);
		} else {
			host_fail_reply(s, false);
		}
		break;
	case MTA_S_STARTTLS:
		if (s->reply.code == 220)
			start_tls(s);
		else if (s->tls_required)
			host_fail_reply(s, true);
		else {
			s->no_tls = true;   /* refused: go on in clear (RFC 3207 §4) */
			after_ehlo(s);
		}
		break;
	case MTA_S_AUTH_PLAIN: case MTA_S_AUTH_LOGIN: case MTA_S_AUTH_USER: case MTA_S_AUTH_PASS:
		on_auth_reply(s);
		break;
	case MTA_S_RSET:
		if (cls == 2)
			start_txn(s);
		else
			retry_fresh(s);
		break;
	case MTA_S_MAIL:
		on_mail_reply(s);
		break;
	case MTA_S_RCPT:
		on_rcpt_reply(s);
		break;
	case MTA_S_DATA:
		if (s->reply.code == 354) {
			start_body(s);
		} else {
			fail_open_reply(s);
			end_conn(s, NEXT_FINISH, true);
		}
		break;
	case MTA_S_BODY:   /* a reply before our "." ends the transaction, undelivered */
		fail_open_reply(s);
		end_conn(s, NEXT_FINISH, false);
		break;
	case MTA_S_EOM:
		on_eom_reply(s);
		break;
	case MTA_S_QUIT:
		end_conn(s, s->next, false);
		break;
	case MTA_S_IDLE: case MTA_S_CONNECT: case MTA_S_HANDSHAKE: case MTA_S_DONE:
		break;
	}
}

/* ----------------------------------------------------- I/O callbacks */

static bool reading(const struct mta_req *s)
{
	return s->state >= MTA_S_GREETING && s->state <= MTA_S_QUIT && s->state != MTA_S_HANDSHAKE;
}

/* Replies are parsed as they arrive and drained from the input, so a reply
 * too long is noticed with at most one read's worth buffered. */
static void on_read(struct bufferevent *bev, void *arg)
{
	struct mta_req *s = arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	while (bev == s->bev && reading(s) && evbuffer_get_length(in) > 0) {
		struct evbuffer_iovec v;
		size_t used = 0;
		if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
			break;
		int r = mta_reply_feed(&s->reply, v.iov_base, v.iov_len, &used);
		evbuffer_drain(in, used);
		if (r < 0) {
			bad_reply(s);
			return;
		}
		if (r == 1) {
			on_reply(s);   /* may close the connection or swap bev */
			mta_reply_reset(&s->reply);
		}
	}
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct mta_req *s = arg;
	if (bev == s->bev)
		maybe_read(s);
}

static void on_connected(struct mta_req *s)
{
	if (s->state == MTA_S_CONNECT && s->implicit_tls) {
		tls_wrap(s);
	} else if (s->state == MTA_S_CONNECT) {
		mta_enter(s, MTA_S_GREETING);
		arm(s, s->t_cmd);   /* RFC 5321 §4.5.3.2.1 */
		if (evbuffer_get_length(bufferevent_get_input(s->bev)) > 0)
			on_read(s->bev, s);   /* a greeting read before this event */
	} else if (s->state == MTA_S_HANDSHAKE) {
		tls_ready(s);
	}
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	struct mta_req *s = arg;
	int err = errno;
	char why[160];
	if (bev != s->bev)
		return;
	if (what & BEV_EVENT_CONNECTED) {
		on_connected(s);
		return;
	}
	unsigned long e = s->ssl != NULL ? bufferevent_get_openssl_error(bev) : 0;
	if (what & BEV_EVENT_TIMEOUT)
		snprintf(why, sizeof(why), "timeout");
	else if (e != 0)
		ERR_error_string_n(e, why, sizeof(why));
	else if (what & BEV_EVENT_EOF)
		snprintf(why, sizeof(why), "connection closed");
	else
		snprintf(why, sizeof(why), "%s", err != 0 ? strerror(err) : "connection error");
	conn_lost(s, why);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	conn_lost(arg, "timeout");
}

/* -------------------------------------------------- connect and finish */

static void conn_open(struct mta_req *s)
{
	struct sockaddr_storage ss = s->addrs[s->addr_i];
	struct sockaddr *sa = (struct sockaddr *)&ss;
	struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
	bool v4 = ss.ss_family == AF_INET;
	uint16_t *portp = v4 ? &in4->sin_port : &in6->sin6_port;

	if (*portp == 0)
		*portp = htons((uint16_t)s->port);
	s->cur_port = ntohs(*portp);
	inet_ntop(ss.ss_family, v4 ? (void *)&in4->sin_addr : (void *)&in6->sin6_addr, s->ip,
	    sizeof(s->ip));
	s->loopback = v4 ? (ntohl(in4->sin_addr.s_addr) >> 24) == 127
	    : IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
	free(s->res->remote_ip);
	s->res->remote_ip = xstrdup(s->ip);
	s->res->tls = false;
	s->res->dane = false;
	free(s->res->tls_version);
	s->res->tls_version = NULL;
	s->ext = 0;
	s->uses = 0;
	if (unpark(s))
		return;
	mta_enter(s, MTA_S_CONNECT);
	arm(s, s->t_connect);

	s->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd == -1) {
		conn_lost(s, strerror(errno));
		return;
	}
	s->bev = bufferevent_socket_new(s->base, s->fd, BEV_OPT_DEFER_CALLBACKS);
	if (s->bev == NULL) {
		conn_lost(s, "bufferevent_socket_new failed");
		return;
	}
	bev_setup(s);
	/* errors, immediate ones included, come as a (deferred) BEV_EVENT_ERROR */
	bufferevent_socket_connect(s->bev, sa, v4 ? sizeof(*in4) : sizeof(*in6));
}

static void finish(struct mta_req *s)
{
	struct mta_result *res = s->res;
	s->res = NULL;
	for (size_t i = 0; i < res->nrcpts; i++)
		if (res->rcpts[i].reply == NULL)
			res->rcpts[i].reply = xstrdup("");
	res->conn_status = s->individual ? MTA_OK : res->rcpts[0].status;
	if (res->conn_status != MTA_OK)
		res->error = xstrdup(res->rcpts[0].reply);
	mta_enter(s, MTA_S_DONE);
	s->in_cb = true;
	s->cb(s->arg, res);
	struct mta_req *tmp = s;
	s->in_cb = false;
	mta_cancel(&tmp);
}

static void on_kick(evutil_socket_t fd, short what, void *arg)
{
	struct mta_req *s = arg;
	switch (s->next) {
	case NEXT_START:
		conn_open(s);
		return;
	case NEXT_PLAIN:
		s->no_tls = true;
		conn_open(s);
		return;
	case NEXT_ADDR:
		if (s->addr_i + 1 < s->naddrs) {
			s->addr_i++;
			s->no_tls = false;
			conn_open(s);
			return;
		}
		fail_open(s, s->hf_all_perm ? MTA_PERMFAIL : MTA_TEMPFAIL, s->hf_code, s->hf_enh,
		    s->hf_text != NULL ? s->hf_text : "no address to connect to");
		s->res->host_failed = true;
		break;
	case NEXT_FINISH:
		break;
	}
	finish(s);
}

/* ------------------------------------------------------- public API */

/* No control octets (command injection); space only where allowed. */
static bool str_ok(const char *p, bool space_ok)
{
	if (p == NULL)
		return false;
	for (; *p != '\0'; p++) {
		unsigned char c = (unsigned char)*p;
		if (c < 0x20 || c == 0x7f || (c == ' ' && !space_ok))
			return false;
	}
	return true;
}

static bool params_ok(const struct event_base *base, const struct mta_params *p,
    mta_done_cb cb)
{
	if (base == NULL || p == NULL || cb == NULL || p->aio == NULL || p->naddrs == 0
	    || p->addrs == NULL || p->nrcpts == 0 || p->rcpts == NULL || p->msg_path == NULL
	    || p->port < 0 || p->port > 65535 || !str_ok(p->helo, false) || p->helo[0] == '\0'
	    || !str_ok(p->sender, true)
	    || ((p->tls_required || p->implicit_tls || p->dane) && p->tls == NULL)
	    || (p->ntlsa > 0 && p->tlsa == NULL)
	    || (p->auth_user == NULL) != (p->auth_pass == NULL)
	    || (p->envid != NULL && !str_ok(p->envid, true))
	    || (p->mx_name != NULL && !str_ok(p->mx_name, false)))
		return false;
	for (size_t i = 0; i < p->naddrs; i++)
		if (p->addrs[i].ss_family != AF_INET && p->addrs[i].ss_family != AF_INET6)
			return false;
	for (size_t i = 0; i < p->nrcpts; i++)
		if (!str_ok(p->rcpts[i], true) || p->rcpts[i][0] == '\0'
		    || (p->orcpt != NULL && !str_ok(p->orcpt[i], true)))
			return false;
	return true;
}

static void copy_tlsa(struct mta_req *s, const struct dns_tlsa *t, size_t n)
{
	s->tlsa = xcalloc(n > 0 ? n : 1, sizeof(*s->tlsa));
	for (size_t i = 0; i < n; i++) {
		if (!dns_tlsa_usable(&t[i]))
			continue;
		struct dns_tlsa *c = &s->tlsa[s->ntlsa++];
		*c = t[i];
		c->data = xmalloc(t[i].len);
		memcpy(c->data, t[i].data, t[i].len);
	}
}

static void copy_params(struct mta_req *s, const struct mta_params *p)
{
	s->addrs = xreallocarray(NULL, p->naddrs, sizeof(*s->addrs));
	memcpy(s->addrs, p->addrs, p->naddrs * sizeof(*s->addrs));
	s->naddrs = p->naddrs;
	s->port = p->port != 0 ? p->port : 25;
	s->helo = xstrdup(p->helo);
	s->sender = xstrdup(p->sender);
	s->envid = xstrdup(p->envid != NULL ? p->envid : "");
	s->msg_path = xstrdup(p->msg_path);
	if (p->auth_user != NULL) {
		s->auth_user = xstrdup(p->auth_user);
		s->auth_pass = xstrdup(p->auth_pass);
	}
	s->tls_ctx = p->tls;
	s->tls_required = p->tls_required || p->implicit_tls || p->dane;
	s->implicit_tls = p->implicit_tls;
	/* a parked connection was verified (or not) against other records */
	s->reuse = p->reuse && !p->dane;
	s->dane = p->dane;
	if (p->dane)
		copy_tlsa(s, p->tlsa, p->ntlsa);
	s->body_8bit = p->body_8bit;
	s->ret = p->ret;
	s->nrcpts = p->nrcpts;
	s->rcpts = xreallocarray(NULL, p->nrcpts, sizeof(char *));
	s->notify = xcalloc(p->nrcpts, sizeof(unsigned));
	s->orcpt = p->orcpt != NULL ? xreallocarray(NULL, p->nrcpts, sizeof(char *)) : NULL;
	s->need_utf8 = p->smtputf8 || !is_ascii(p->sender);
	for (size_t i = 0; i < p->nrcpts; i++) {
		s->rcpts[i] = xstrdup(p->rcpts[i]);
		s->need_utf8 = s->need_utf8 || !is_ascii(p->rcpts[i]);
		if (p->notify != NULL)
			s->notify[i] = p->notify[i];
		if (s->orcpt != NULL)
			s->orcpt[i] = xstrdup(p->orcpt[i]);
	}
	s->msg_size = p->msg_size;
	s->aio = p->aio;
	s->t_connect = p->connect_timeout > 0 ? p->connect_timeout : MTA_CONNECT_TIMEOUT_DEFAULT;
	s->t_cmd = p->cmd_timeout > 0 ? p->cmd_timeout : MTA_CMD_TIMEOUT_DEFAULT;
	s->t_data = p->data_timeout > 0 ? p->data_timeout : MTA_DATA_TIMEOUT_DEFAULT;
	s->t_final = p->final_timeout > 0 ? p->final_timeout : MTA_FINAL_TIMEOUT_DEFAULT;
}

struct mta_req *mta_deliver(struct event_base *base, const struct mta_params *p, mta_done_cb cb,
    void *arg)
{
	if (!params_ok(base, p, cb)) {
		errno = EINVAL;
		return NULL;
	}
	struct mta_req *s = xcalloc(1, sizeof(*s));
	util_id_base32(util_random64(), s->sid);
	s->base = base;
	s->cb = cb;
	s->arg = arg;
	s->fd = s->msg_fd = -1;
	s->hf_all_perm = true;
	copy_params(s, p);
	mta_reply_init(&s->reply);
	s->rst = xcalloc(s->nrcpts, 1);
	s->res = xcalloc(1, sizeof(*s->res));
	s->res->rcpts = xcalloc(s->nrcpts, sizeof(*s->res->rcpts));
	s->res->nrcpts = s->nrcpts;
	s->res->remote_ip = xstrdup("");
	if (p->mx_name != NULL && p->mx_name[0] != '\0') {
		s->mx_name = xstrdup(p->mx_name);
	} else {   /* the first address stands for the name */
		char ip[INET6_ADDRSTRLEN] = "";
		const struct sockaddr_storage *a = &s->addrs[0];
		inet_ntop(a->ss_family, a->ss_family == AF_INET
		    ? (const void *)&((const struct sockaddr_in *)a)->sin_addr
		    : (const void *)&((const struct sockaddr_in6 *)a)->sin6_addr, ip, sizeof(ip));
		s->mx_name = xstrdup(ip);
	}
	s->res->remote_host = xstrdup(s->mx_name);
	s->timer = evtimer_new(base, on_timer, s);
	s->kick = event_new(base, -1, 0, on_kick, s);
	/* the first connect starts from the loop, so nothing is ever reported
	 * from inside this call */
	s->next = NEXT_START;   /* state is MTA_S_IDLE (0) */
	event_active(s->kick, EV_TIMEOUT, 0);
	return s;
}

void mta_cancel(struct mta_req **r_r)
{
	struct mta_req *s = *r_r;
	*r_r = NULL;
	if (s == NULL || s->in_cb)
		return;
	conn_close(s);
	event_free(s->timer);
	event_free(s->kick);
	mta_reply_free(&s->reply);
	mta_result_free(&s->res);
	for (size_t i = 0; i < s->nrcpts; i++) {
		free(s->rcpts[i]);
		if (s->orcpt != NULL)
			free(s->orcpt[i]);
	}
	if (s->auth_pass != NULL)
		explicit_bzero(s->auth_pass, strlen(s->auth_pass));
	free(s->rcpts);
	free(s->orcpt);
	free(s->notify);
	free(s->rst);
	free(s->addrs);
	free(s->mx_name);
	free(s->helo);
	free(s->auth_user);
	free(s->auth_pass);
	free(s->sender);
	free(s->envid);
	free(s->msg_path);
	free(s->hf_text);
	for (size_t i = 0; i < s->ntlsa; i++)
		free(s->tlsa[i].data);
	free(s->tlsa);
	free(s);
}

void mta_result_free(struct mta_result **r_r)
{
	struct mta_result *r = *r_r;
	if (r == NULL)
		return;
	*r_r = NULL;
	for (size_t i = 0; i < r->nrcpts; i++)
		free(r->rcpts[i].reply);
	free(r->rcpts);
	free(r->error);
	free(r->remote_host);
	free(r->remote_ip);
	free(r->tls_version);
	free(r);
}
