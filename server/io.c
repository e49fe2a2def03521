/* io.c: connections over libevent bufferevents, plain or TLS (design §2).
 *
 * Ownership: the server owns every struct conn (a list in struct server). A
 * protocol session owns its own state and sets itself as the conn's callback.
 * A conn is never freed inside one of its callbacks: io_close() and errors mark
 * it, and a reaper event frees it at the end of the loop pass (Redis' rule).
 * Every session hears IO_DISCONNECTED exactly once, from the reaper, and frees
 * itself then; after io_close() it hears nothing else.
 *
 * TLS: implicit TLS wraps the socket at accept. STARTTLS stops reading, throws
 * away buffered input (command injection defence), lets the plain reply flush,
 * then replaces the plain bufferevent by an OpenSSL one on the same fd; bytes
 * the client sends after the reply (its ClientHello) wait in the kernel. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>

#ifndef TAILQ_FOREACH_SAFE
#define TAILQ_FOREACH_SAFE(var, head, field, tvar) \
	for ((var) = TAILQ_FIRST(head); (var) && ((tvar) = TAILQ_NEXT(var, field), 1); (var) = (tvar))
#endif
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "server/server.h"

#define IO_READ_HIGHWAT (256 * 1024)     /* stop reading while this much input waits */
#define IO_CLOSE_DEADLINE 10             /* seconds to flush output at close */
#define IO_HANDSHAKE_TIMEOUT 30

enum conn_state { CS_OPEN, CS_STARTTLS_FLUSH, CS_CLOSING, CS_DEAD };

struct conn {
	TAILQ_ENTRY(conn) entry;
	LIST_ENTRY(conn) hentry;     /* in the id hash */
	uint64_t id;
	char sid[14];
	int fd;
	struct bufferevent *bev;
	SSL *ssl;                    /* owned by bev when set (BEV_OPT_CLOSE_ON_FREE) */
	struct tls *tls;             /* certificate set ref, NULL if none */
	enum cfg_proto proto;
	enum conn_state state;
	bool paused;
	bool discarding;             /* inside an overlong line */
	bool handshaking;
	bool started;                /* protocol start() called */
	io_cb cb;
	void *arg;
	struct buf line;
	struct event *timer;
	struct event *kick;          /* deferred IO_DATAIN after io_resume / STARTTLS switch */
	int timeout;
	char remote[INET6_ADDRSTRLEN];
	bool loopback;
	char tls_version[16];
	char tls_cipher[64];
	const char *close_reason;
	uint64_t bytes_in, bytes_out;
	double started_at;
};

TAILQ_HEAD(conn_list, conn);

/* id -> conn, so async completions find their session or learn it is gone */
#define CONN_HASH 4096
static LIST_HEAD(, conn) conn_hash[CONN_HASH];

struct conn *conn_lookup(uint64_t id)
{
	struct conn *c;
	LIST_FOREACH(c, &conn_hash[id % CONN_HASH], hentry)
		if (c->id == id)
			return (c->state == CS_OPEN || c->state == CS_STARTTLS_FLUSH) ? c : NULL;
	return NULL;
}

static void conn_readcb(struct bufferevent *bev, void *arg);
static void conn_writecb(struct bufferevent *bev, void *arg);
static void conn_eventcb(struct bufferevent *bev, short what, void *arg);

static struct conn_list *conn_list(struct server *srv)
{
	if (srv->conns == NULL) {
		srv->conns = xmalloc(sizeof(*srv->conns));
		TAILQ_INIT(srv->conns);
	}
	return srv->conns;
}

/* Events reach the session only while the conn is open; the one exception is
 * the final IO_DISCONNECTED from conn_finish. */
static void conn_emit(struct conn *c, enum io_event ev)
{
	if (c->cb != NULL && (c->state == CS_OPEN || c->state == CS_STARTTLS_FLUSH))
		c->cb(c, ev, c->arg);
}

/* ---- freeing: mark now, free from the reaper event ---- */

static void conn_destroy(struct conn *c)
{
	struct logline *l = log_begin(LL_INFO, "conn.close");
	io_log_fields(l, c);
	log_str(l, "reason", c->close_reason ? c->close_reason : "closed");
	log_uint(l, "bytes_in", c->bytes_in);
	log_uint(l, "bytes_out", c->bytes_out);
	log_int(l, "duration_ms", (long long)((util_now() - c->started_at) * 1000));
	log_end(l);

	if (c->bev != NULL)
		bufferevent_free(c->bev);       /* frees the SSL and fd when TLS (CLOSE_ON_FREE) */
	if (c->ssl == NULL && c->fd != -1)
		close(c->fd);
	if (c->timer != NULL)
		event_free(c->timer);
	if (c->kick != NULL)
		event_free(c->kick);
	if (c->tls != NULL)
		tls_unref(&c->tls);
	server_conn_count(c->remote, -1);
	buf_free(&c->line);
	free(c);
}

static void conn_reap(struct conn *c, const char *reason)
{
	if (c->state == CS_DEAD)
		return;
	if (reason != NULL && c->close_reason == NULL)
		c->close_reason = reason;
	c->state = CS_DEAD;
	if (c->bev != NULL)
		bufferevent_disable(c->bev, EV_READ | EV_WRITE);
	event_active(c->kick, EV_TIMEOUT, 0);   /* kick_cb frees it in the next pass */
}

static void conn_finish(struct conn *c)
{
	if (c->cb != NULL) {
		io_cb cb = c->cb;
		c->cb = NULL;
		cb(c, IO_DISCONNECTED, c->arg);     /* the session frees itself */
	}
	TAILQ_REMOVE(conn_list(server), c, entry);
	LIST_REMOVE(c, hentry);
	server->nconns--;
	conn_destroy(c);
}

/* ---- creation ---- */

static void set_remote(struct conn *c, const struct sockaddr *sa)
{
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, c->remote, sizeof(c->remote));
		c->loopback = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
			inet_ntop(AF_INET, &in6->sin6_addr.s6_addr[12], c->remote, sizeof(c->remote));
			c->loopback = in6->sin6_addr.s6_addr[12] == 127;
		} else {
			inet_ntop(AF_INET6, &in6->sin6_addr, c->remote, sizeof(c->remote));
			c->loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr);
		}
	} else {
		snprintf(c->remote, sizeof(c->remote), "unknown");
	}
}

static void kick_cb(evutil_socket_t fd, short what, void *arg);
static void timer_cb(evutil_socket_t fd, short what, void *arg);
static void conn_start(struct conn *c);

static void bev_setup(struct conn *c)
{
	bufferevent_setcb(c->bev, conn_readcb, conn_writecb, conn_eventcb, c);
	bufferevent_setwatermark(c->bev, EV_READ, 0, IO_READ_HIGHWAT);
	bufferevent_setwatermark(c->bev, EV_WRITE, IO_OUTPUT_LOWAT, 0);
	io_set_timeout(c, c->timeout);
	bufferevent_enable(c->bev, c->paused ? EV_WRITE : EV_READ | EV_WRITE);
}

static int bev_make_tls(struct conn *c)
{
	c->ssl = tls_new_ssl(c->tls);
	if (c->ssl == NULL)
		return -1;
	c->bev = bufferevent_openssl_socket_new(server->base, c->fd, c->ssl,
	    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE | BEV_OPT_DEFER_CALLBACKS);
	if (c->bev == NULL) {
		SSL_free(c->ssl);
		c->ssl = NULL;
		return -1;
	}
	bufferevent_openssl_set_allow_dirty_shutdown(c->bev, 1);
	c->handshaking = true;
	bev_setup(c);
	/* the handshake needs reading even while the session is paused; input
	 * that follows it is only handed over once the session resumes */
	bufferevent_enable(c->bev, EV_READ | EV_WRITE);
	struct timeval hs = { IO_HANDSHAKE_TIMEOUT, 0 };
	bufferevent_set_timeouts(c->bev, &hs, &hs);
	return 0;
}

static void conn_log_open(struct conn *c, int port)
{
	struct logline *l = log_begin(LL_INFO, "conn.open");
	io_log_fields(l, c);
	log_int(l, "port", port);
	log_end(l);
}

struct conn *conn_new(struct server *srv, int fd, const struct sockaddr *sa, socklen_t salen,
    enum cfg_proto proto, struct tls *tls)
{
	struct conn *c = xcalloc(1, sizeof(*c));
	c->id = ++srv->next_id ^ (util_random64() & 0xffffffff00000000ULL);
	util_id_base32(c->id, c->sid);
	c->fd = fd;
	c->proto = proto;
	c->timeout = 300;
	c->started_at = util_now();
	buf_init(&c->line, 1024 * 1024);
	set_remote(c, sa);
	if (tls != NULL) {
		tls_ref(tls);
		c->tls = tls;
	}
	c->kick = event_new(srv->base, -1, 0, kick_cb, c);
	c->timer = evtimer_new(srv->base, timer_cb, c);
	TAILQ_INSERT_TAIL(conn_list(srv), c, entry);
	LIST_INSERT_HEAD(&conn_hash[c->id % CONN_HASH], c, hentry);
	srv->nconns++;
	server_conn_count(c->remote, 1);

	struct sockaddr_storage local;
	socklen_t llen = sizeof(local);
	int port = 0;
	if (getsockname(fd, (struct sockaddr *)&local, &llen) == 0)
		port = ntohs(local.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&local)->sin6_port
		    : ((struct sockaddr_in *)&local)->sin_port);
	(void)salen;
	conn_log_open(c, port);

	if (cfg_proto_implicit_tls(proto)) {
		if (c->tls == NULL || bev_make_tls(c) == -1) {
			conn_reap(c, "tls setup failed");
			return NULL;
		}
		return c;
	}
	c->bev = bufferevent_socket_new(srv->base, fd, BEV_OPT_DEFER_CALLBACKS);
	bev_setup(c);
	conn_start(c);
	return c;
}

/* ---- the protocol start, once the transport is ready ---- */

static void conn_start(struct conn *c)
{
	const struct proto_ops *ops = server_proto_ops(c->proto);
	c->started = true;
	c->timeout = 300;
	io_set_timeout(c, c->timeout);
	ops->start(c);
}

static void kick_cb(evutil_socket_t fd, short what, void *arg)
{
	struct conn *c = arg;
	(void)fd;
	(void)what;
	if (c->state == CS_DEAD) {
		conn_finish(c);
		return;
	}
	if (c->state == CS_STARTTLS_FLUSH) {
		/* the plain reply is out: switch the fd to TLS */
		bufferevent_free(c->bev);
		c->bev = NULL;
		c->state = CS_OPEN;
		if (bev_make_tls(c) == -1)
			conn_reap(c, "tls setup failed");
		return;
	}
	if (!c->paused && c->state == CS_OPEN && io_input_len(c) > 0)
		conn_emit(c, IO_DATAIN);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	conn_emit(arg, IO_TIMER);
}

/* ---- bufferevent callbacks ---- */

static void conn_readcb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	(void)bev;
	if (c->state != CS_OPEN) {
		/* closing or switching to TLS: input is not wanted */
		evbuffer_drain(bufferevent_get_input(c->bev), io_input_len(c));
		return;
	}
	if (!c->paused)
		conn_emit(c, IO_DATAIN);
}

static void conn_writecb(struct bufferevent *bev, void *arg)
{
	struct conn *c = arg;
	(void)bev;
	size_t queued = io_queued(c);
	if (c->state == CS_STARTTLS_FLUSH && queued == 0) {
		event_active(c->kick, EV_TIMEOUT, 0);
		return;
	}
	if (c->state == CS_CLOSING && queued == 0) {
		conn_reap(c, NULL);
		return;
	}
	if (c->state == CS_OPEN)
		conn_emit(c, IO_LOWAT);
}

static void tls_ready(struct conn *c)
{
	c->handshaking = false;
	snprintf(c->tls_version, sizeof(c->tls_version), "%s", SSL_get_version(c->ssl));
	snprintf(c->tls_cipher, sizeof(c->tls_cipher), "%s", SSL_get_cipher_name(c->ssl));
	struct logline *l = log_begin(LL_INFO, "tls.established");
	io_log_fields(l, c);
	log_str(l, "version", c->tls_version);
	log_str(l, "cipher", c->tls_cipher);
	log_end(l);
	if (!c->started)
		conn_start(c);
	else {
		io_set_timeout(c, c->timeout);
		conn_emit(c, IO_TLSREADY);
	}
}

static const char *tls_error_reason(struct conn *c)
{
	unsigned long e = bufferevent_get_openssl_error(c->bev);
	static char reason[160];
	if (e == 0)
		return c->handshaking ? "tls handshake failed" : "tls error";
	snprintf(reason, sizeof(reason), "tls: %s", ERR_reason_error_string(e) ?
	    ERR_reason_error_string(e) : "error");
	return reason;
}

static void conn_eventcb(struct bufferevent *bev, short what, void *arg)
{
	struct conn *c = arg;
	(void)bev;
	if (c->state == CS_DEAD)
		return;
	if (what & BEV_EVENT_CONNECTED) {
		tls_ready(c);
		return;
	}
	if (what & BEV_EVENT_TIMEOUT) {
		if (c->handshaking || c->state != CS_OPEN || (what & BEV_EVENT_WRITING)) {
			conn_reap(c, c->handshaking ? "tls handshake timeout" :
			    (what & BEV_EVENT_WRITING) ? "write timeout (client not reading)" : "close timeout");
			return;
		}
		conn_emit(c, IO_TIMEOUT);
		return;
	}
	const char *reason = (what & BEV_EVENT_EOF) ? "disconnected" : NULL;
	if (reason == NULL)
		reason = c->ssl != NULL ? tls_error_reason(c) : "i/o error";
	if (c->handshaking && c->ssl != NULL && (what & BEV_EVENT_ERROR))
		reason = tls_error_reason(c);
	conn_reap(c, reason);      /* the session hears IO_DISCONNECTED from conn_finish */
}

/* ---- the API protocols use ---- */

void io_set_callback(struct conn *c, io_cb cb, void *arg)
{
	c->cb = cb;
	c->arg = arg;
}

size_t io_input_len(const struct conn *c)
{
	return c->bev ? evbuffer_get_length(bufferevent_get_input(c->bev)) : 0;
}

/* Skip the rest of an overlong line; true when its line end was found. */
static bool discard_to_eol(struct conn *c, struct evbuffer *in)
{
	size_t eol_len;
	struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
	if (p.pos == -1) {
		evbuffer_drain(in, evbuffer_get_length(in));
		return false;
	}
	evbuffer_drain(in, (size_t)p.pos + eol_len);
	c->discarding = false;
	return true;
}

int io_getline(struct conn *c, size_t max, char **line_r, size_t *len_r)
{
	if (c->bev == NULL || c->state != CS_OPEN)
		return IO_LINE_MORE;
	struct evbuffer *in = bufferevent_get_input(c->bev);
	if (c->discarding && !discard_to_eol(c, in))
		return IO_LINE_MORE;
	size_t eol_len;
	struct evbuffer_ptr p = evbuffer_search_eol(in, NULL, &eol_len, EVBUFFER_EOL_LF);
	if (p.pos == -1) {
		if (evbuffer_get_length(in) < max)
			return IO_LINE_MORE;
		c->discarding = true;
		discard_to_eol(c, in);
		return IO_LINE_TOOLONG;
	}
	size_t n = (size_t)p.pos;
	if (n + eol_len > max) {
		evbuffer_drain(in, n + eol_len);
		return IO_LINE_TOOLONG;
	}
	buf_reset(&c->line);
	if (buf_append(&c->line, evbuffer_pullup(in, (ssize_t)n), n) == -1)
		return IO_LINE_TOOLONG;
	evbuffer_drain(in, n + eol_len);
	c->bytes_in += n + eol_len;
	if (c->line.len > 0 && c->line.data[c->line.len - 1] == '\r')
		c->line.data[--c->line.len] = '\0';
	*line_r = c->line.data ? c->line.data : (char *)"";
	*len_r = c->line.len;
	return IO_LINE_OK;
}

size_t io_peek(struct conn *c, const char **p_r)
{
	if (c->bev == NULL || c->state != CS_OPEN)
		return 0;
	struct evbuffer_iovec v;
	if (evbuffer_peek(bufferevent_get_input(c->bev), -1, NULL, &v, 1) < 1)
		return 0;
	*p_r = v.iov_base;
	return v.iov_len;
}

void io_consume(struct conn *c, size_t n)
{
	if (c->bev == NULL)
		return;
	evbuffer_drain(bufferevent_get_input(c->bev), n);
	c->bytes_in += n;
}

void io_pause(struct conn *c)
{
	c->paused = true;
	if (c->bev != NULL && c->state == CS_OPEN)
		bufferevent_disable(c->bev, EV_READ);
}

void io_resume(struct conn *c)
{
	c->paused = false;
	if (c->bev == NULL || c->state != CS_OPEN)
		return;
	bufferevent_enable(c->bev, EV_READ);
	if (io_input_len(c) > 0)
		event_active(c->kick, EV_TIMEOUT, 0);
}

int io_write(struct conn *c, const void *p, size_t len)
{
	if (c->bev == NULL || c->state == CS_DEAD)
		return -1;
	if (io_queued(c) + len > IO_OUTPUT_HARDCAP) {
		conn_reap(c, "output limit exceeded (client not reading)");
		return -1;
	}
	c->bytes_out += len;
	return bufferevent_write(c->bev, p, len);
}

int io_printf(struct conn *c, const char *fmt, ...)
{
	char small[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0)
		return -1;
	if ((size_t)n < sizeof(small))
		return io_write(c, small, (size_t)n);
	char *big = xmalloc((size_t)n + 1);
	va_start(ap, fmt);
	vsnprintf(big, (size_t)n + 1, fmt, ap);
	va_end(ap);
	int r = io_write(c, big, (size_t)n);
	free(big);
	return r;
}

size_t io_queued(const struct conn *c)
{
	return c->bev ? evbuffer_get_length(bufferevent_get_output(c->bev)) : 0;
}

void io_set_timeout(struct conn *c, int secs)
{
	c->timeout = secs;
	if (c->bev == NULL)
		return;
	struct timeval rt = { secs, 0 }, wt = { IO_CLOSE_DEADLINE * 6, 0 };
	bufferevent_set_timeouts(c->bev, secs > 0 ? &rt : NULL, &wt);
}

void io_set_timer(struct conn *c, int ms)
{
	evtimer_del(c->timer);
	if (ms < 0)
		return;
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_add(c->timer, &tv);
}

int io_starttls(struct conn *c)
{
	if (c->tls == NULL || c->ssl != NULL || c->state != CS_OPEN)
		return -1;
	bufferevent_disable(c->bev, EV_READ);
	evbuffer_drain(bufferevent_get_input(c->bev), io_input_len(c));
	c->discarding = false;
	c->state = CS_STARTTLS_FLUSH;
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	if (io_queued(c) == 0)
		event_active(c->kick, EV_TIMEOUT, 0);
	return 0;
}

bool io_tls_available(const struct conn *c)
{
	return c->tls != NULL;
}

bool io_is_tls(const struct conn *c)
{
	return c->ssl != NULL && !c->handshaking;
}

const char *io_tls_version(const struct conn *c)
{
	return io_is_tls(c) ? c->tls_version : NULL;
}

const char *io_tls_cipher(const struct conn *c)
{
	return io_is_tls(c) ? c->tls_cipher : NULL;
}

int io_tls_exporter(struct conn *c, unsigned char out[32])
{
	/* RFC 9266: label "EXPORTER-Channel-Binding", empty context, 32 bytes */
	static const char label[] = "EXPORTER-Channel-Binding";
	if (!io_is_tls(c))
		return -1;
	return SSL_export_keying_material(c->ssl, out, 32, label, sizeof(label) - 1, NULL, 0, 0) == 1
	    ? 0 : -1;
}

int io_tls_unique(struct conn *c, unsigned char *out, size_t max, size_t *len_r)
{
	/* RFC 5929 §3.1: the first Finished message of the handshake; for a server
	 * without resumption that is the peer's (client's). Undefined for TLS 1.3. */
	if (!io_is_tls(c) || SSL_version(c->ssl) >= TLS1_3_VERSION)
		return -1;
	size_t n = SSL_session_reused(c->ssl) ? SSL_get_finished(c->ssl, out, max)
	    : SSL_get_peer_finished(c->ssl, out, max);
	if (n == 0 || n > max)
		return -1;
	*len_r = n;
	return 0;
}

const char *io_remote(const struct conn *c)
{
	return c->remote;
}

bool io_remote_loopback(const struct conn *c)
{
	return c->loopback;
}

const char *io_sid(const struct conn *c)
{
	return c->sid;
}

uint64_t io_id(const struct conn *c)
{
	return c->id;
}

enum cfg_proto io_proto(const struct conn *c)
{
	return c->proto;
}

void io_close(struct conn *c, const char *reason)
{
	if (c->state == CS_DEAD || c->state == CS_CLOSING)
		return;
	if (c->close_reason == NULL)
		c->close_reason = reason;
	io_set_timer(c, -1);
	if (c->bev == NULL || io_queued(c) == 0) {
		conn_reap(c, reason);
		return;
	}
	c->state = CS_CLOSING;
	bufferevent_disable(c->bev, EV_READ);
	bufferevent_setwatermark(c->bev, EV_WRITE, 0, 0);
	struct timeval wt = { IO_CLOSE_DEADLINE, 0 };
	bufferevent_set_timeouts(c->bev, NULL, &wt);
}

bool io_closing(const struct conn *c)
{
	return c->state != CS_OPEN && c->state != CS_STARTTLS_FLUSH;
}

void io_log_fields(struct logline *l, const struct conn *c)
{
	log_str(l, "sid", c->sid);
	log_str(l, "proto", cfg_proto_name(c->proto));
	log_str(l, "remote", c->remote);
}

void conn_drain_all(struct server *srv)
{
	struct conn *c, *next;
	TAILQ_FOREACH_SAFE(c, conn_list(srv), entry, next) {
		if (c->state != CS_OPEN && c->state != CS_STARTTLS_FLUSH)
			continue;
		if (c->started && c->cb != NULL)
			conn_emit(c, IO_SHUTDOWN);
		else
			conn_reap(c, "server shutdown");
	}
}

void conn_free_all(struct server *srv)
{
	struct conn *c;
	while ((c = TAILQ_FIRST(conn_list(srv))) != NULL) {
		if (c->close_reason == NULL)
			c->close_reason = "server shutdown";
		c->state = CS_DEAD;
		conn_finish(c);
	}
	free(srv->conns);
	srv->conns = NULL;
}
