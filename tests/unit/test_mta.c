/* test_mta.c: relay/mta.c, the outbound SMTP client. The pure parts (reply
 * reader, dot-stuffing) are fed whole and one byte at a time; the client
 * itself runs on a real event_base against tests/data/mta/sink.py, a
 * scripted SMTP server on 127.0.0.1 started per test (its argv is the
 * script), whose log and received messages are then checked. Timeouts are
 * a few seconds at most; the whole file runs in a few seconds. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/ssl.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "relay/relay.h"
#include "store/store.h"
#include "tests/unit/files.h"

/* ------------------------------------------------------------ helpers */

static char g_dir[64];           /* per-run temp dir: cert, key */
static char g_sink[PATH_MAX];

static bool file_exists(const char *p)
{
	return access(p, R_OK) == 0;
}

/* tests/data/mta/sink.py next to this file; __FILE__ is relative to the
 * build root, which is this binary's directory or one of its parents. */
static bool find_sink(void)
{
	const char *env = getenv("MTA_SINK");
	if (env != NULL) {
		snprintf(g_sink, sizeof(g_sink), "%s", env);
		return file_exists(g_sink);
	}
	char dir[1024], exe[PATH_MAX];
	const char *src = __FILE__;
	snprintf(dir, sizeof(dir), "%.*s", (int)(strrchr(src, '/') - src), src);
	if (src[0] == '/') {
		snprintf(g_sink, sizeof(g_sink), "%s/../data/mta/sink.py", dir);
		return file_exists(g_sink);
	}
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n <= 0)
		return false;
	exe[n] = '\0';
	for (int up = 0; up < 3; up++) {
		char *slash = strrchr(exe, '/');
		if (slash == NULL)
			break;
		*slash = '\0';
		snprintf(g_sink, sizeof(g_sink), "%.2048s/%.1024s/../data/mta/sink.py", exe, dir);
		if (file_exists(g_sink))
			return true;
	}
	snprintf(g_sink, sizeof(g_sink), "%s/../data/mta/sink.py", dir);
	return file_exists(g_sink);
}

static char *read_file(const char *path, size_t *len_r)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	struct buf_t { char *p; size_t n, cap; } b = { NULL, 0, 0 };
	for (;;) {
		if (b.n + 4096 + 1 > b.cap) {
			b.cap = (b.n + 4096 + 1) * 2;
			b.p = xreallocarray(b.p, b.cap, 1);
		}
		size_t r = fread(b.p + b.n, 1, 4096, f);
		b.n += r;
		if (r == 0)
			break;
	}
	fclose(f);
	b.p[b.n] = '\0';
	if (len_r != NULL)
		*len_r = b.n;
	return b.p;
}

/* a port on 127.0.0.1 where nothing listens: connecting is refused */
static int closed_port(void)
{
	struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t sl = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
	close(fd);
	return ntohs(sin.sin_port);
}

static struct sockaddr_storage loopback(int port)
{
	struct sockaddr_storage ss;
	memset(&ss, 0, sizeof(ss));
	struct sockaddr_in *in = (struct sockaddr_in *)&ss;
	in->sin_family = AF_INET;
	in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	in->sin_port = htons((uint16_t)port);
	return ss;
}

/* ------------------------------------------------------------ fixture */

struct fx {
	char dir[64];
	pid_t sink;
	int port;
	struct event_base *base;
	struct aio *aio;
	SSL_CTX *tls;
	struct sockaddr_storage addrs[4];
	const char *rcpts[8];
	unsigned notify[8];
	const char *orcpt[8];
	char msg_path[128];
	struct mta_params p;
	/* the run */
	struct mta_req *req;
	struct mta_result *res;
	int calls;
	bool returned, cancel_in_cb;
	char *log;
};

static int fx_setup(void **state)
{
	struct fx *fx = xcalloc(1, sizeof(*fx));
	snprintf(fx->dir, sizeof(fx->dir), "/tmp/test_mta.XXXXXX");
	if (mkdtemp(fx->dir) == NULL)
		return -1;
	fx->base = event_base_new();
	fx->aio = aio_new(fx->base, 2);
	fx->tls = SSL_CTX_new(TLS_client_method());
	SSL_CTX_set_verify(fx->tls, SSL_VERIFY_NONE, NULL);
	snprintf(fx->msg_path, sizeof(fx->msg_path), "%s/msg", fx->dir);
	const char *msg = "Subject: t\r\n\r\nhello\r\n";
	write_file(fx->msg_path, msg, strlen(msg));

	fx->addrs[0] = loopback(0);
	fx->rcpts[0] = "b@dest.example";
	struct mta_params *p = &fx->p;
	p->addrs = fx->addrs;
	p->naddrs = 1;
	p->mx_name = "mx.dest.example";
	p->helo = "client.example";
	p->sender = "a@client.example";
	p->rcpts = fx->rcpts;
	p->nrcpts = 1;
	p->msg_path = fx->msg_path;
	p->msg_size = strlen(msg);
	p->aio = fx->aio;
	p->connect_timeout = p->cmd_timeout = p->data_timeout = p->final_timeout = 2;
	*state = fx;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *fx = *state;
	mta_cancel(&fx->req);
	mta_result_free(&fx->res);
	if (fx->sink > 0) {
		kill(fx->sink, SIGTERM);
		waitpid(fx->sink, NULL, 0);
	}
	aio_free(&fx->aio);
	event_base_free(fx->base);
	SSL_CTX_free(fx->tls);
	free(fx->log);
	rm_tree(fx->dir);
	free(fx);
	return 0;
}

static void set_msg(struct fx *fx, const char *data, size_t len)
{
	write_file(fx->msg_path, data, len);
	fx->p.msg_size = len;
}

/* Starts sink.py with the script given as NULL-terminated arguments and
 * points the first address at it. */
static void sink_start(struct fx *fx, ...)
{
	const char *argv[48];
	size_t n = 0;
	const char *py = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
	argv[n++] = py;
	argv[n++] = g_sink;
	argv[n++] = "--dir";
	argv[n++] = fx->dir;
	va_list ap;
	va_start(ap, fx);
	for (const char *a; (a = va_arg(ap, const char *)) != NULL && n < 46; )
		argv[n++] = a;
	va_end(ap);
	argv[n] = NULL;

	int pfd[2];
	assert_int_equal(pipe2(pfd, O_CLOEXEC), 0);
	fx->sink = fork();
	assert_true(fx->sink >= 0);
	if (fx->sink == 0) {
		char errf[96];
		prctl(PR_SET_PDEATHSIG, SIGTERM);   /* never outlive a crashed test */
		dup2(pfd[1], 1);
		snprintf(errf, sizeof(errf), "%s/sink.err", fx->dir);
		int e = open(errf, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		if (e >= 0)
			dup2(e, 2);
		execvp(py, (char *const *)argv);
		_exit(127);
	}
	close(pfd[1]);
	char line[64] = "";
	size_t got = 0;
	struct pollfd pf = { .fd = pfd[0], .events = POLLIN };
	while (got < sizeof(line) - 1 && strchr(line, '\n') == NULL && poll(&pf, 1, 5000) == 1) {
		ssize_t r = read(pfd[0], line + got, sizeof(line) - 1 - got);
		if (r <= 0)
			break;
		got += (size_t)r;
		line[got] = '\0';
	}
	close(pfd[0]);
	if (sscanf(line, "PORT %d", &fx->port) != 1)
		fail_msg("sink.py did not start (see %s/sink.err)", fx->dir);
	fx->addrs[0] = loopback(fx->port);
}

static void done_cb(void *arg, struct mta_result *res)
{
	struct fx *fx = arg;
	assert_true(fx->returned);   /* never from inside mta_deliver */
	fx->calls++;
	fx->res = res;
	if (fx->cancel_in_cb)
		mta_cancel(&fx->req);   /* allowed: only NULLs the handle */
	fx->req = NULL;
	event_base_loopbreak(fx->base);
}

static void watchdog_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	event_base_loopbreak(arg);
}

static void loop_for(struct fx *fx, int ms)
{
	struct event *w = evtimer_new(fx->base, watchdog_cb, fx->base);
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	evtimer_add(w, &tv);
	event_base_dispatch(fx->base);
	event_free(w);
}

/* One delivery to the end; the sink's log is loaded into fx->log. */
static void run(struct fx *fx)
{
	fx->returned = false;
	fx->req = mta_deliver(fx->base, &fx->p, done_cb, fx);
	assert_non_null(fx->req);
	fx->returned = true;
	loop_for(fx, 8000);
	assert_int_equal(fx->calls, 1);
	assert_non_null(fx->res);
	char path[128];
	snprintf(path, sizeof(path), "%s/log", fx->dir);
	free(fx->log);
	fx->log = read_file(path, NULL);
	if (fx->log == NULL)
		fx->log = xstrdup("");
}

static void assert_rcpt(const struct fx *fx, size_t i, enum mta_status st, int code,
    const char *enh, const char *reply)
{
	const struct mta_rcpt_result *r = &fx->res->rcpts[i];
	if (r->status != st || r->code != code || strcmp(r->enhanced, enh) != 0
	    || strstr(r->reply, reply) == NULL)
		fail_msg("rcpt %zu: got %s %d %s \"%s\", want %s %d %s \"%s\"", i,
		    mta_status_name(r->status), r->code, r->enhanced, r->reply,
		    mta_status_name(st), code, enh, reply);
}

static void assert_log_has(const struct fx *fx, const char *s)
{
	if (strstr(fx->log, s) == NULL)
		fail_msg("sink log lacks \"%s\":\n%s", s, fx->log);
}

static void assert_log_lacks(const struct fx *fx, const char *s)
{
	if (strstr(fx->log, s) != NULL)
		fail_msg("sink log has \"%s\":\n%s", s, fx->log);
}

static char *sink_data(const struct fx *fx, const char *name, size_t *len_r)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/%s", fx->dir, name);
	char *d = read_file(path, len_r);
	if (d == NULL)
		fail_msg("no %s from the sink:\n%s", name, fx->log);
	return d;
}

/* RFC 5321 §4.5.2 the other way: the message the receiver stores */
static char *unstuff(const char *w, size_t n, size_t *len_r)
{
	char *out = xmalloc(n + 1);
	size_t o = 0;
	assert_true(n >= 3 && memcmp(w + n - 3, ".\r\n", 3) == 0);
	n -= 3;
	for (size_t i = 0; i < n; ) {
		if (w[i] == '.')
			i++;
		while (i < n) {
			out[o++] = w[i];
			if (w[i++] == '\n')
				break;
		}
	}
	*len_r = o;
	return out;
}

/* ------------------------------------------------------ reply reader */

static int feed_all(struct mta_reply *r, const char *s, size_t len, bool bytewise, size_t *used_r)
{
	size_t used = 0, n;
	int res = 0;
	while (used < len) {
		size_t chunk = bytewise ? 1 : len - used;
		res = mta_reply_feed(r, s + used, chunk, &n);
		used += n;
		if (res != 0)
			break;
	}
	*used_r = used;
	return res;
}

static void test_reply_multiline_whole_and_bytewise(void **state)
{
	(void)state;
	const char *in = "250-mx.example hello\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"
	    "550 5.1.1 <x@y>: no such user\r\n";
	for (int bw = 0; bw < 2; bw++) {
		struct mta_reply r;
		size_t used;
		mta_reply_init(&r);
		assert_int_equal(feed_all(&r, in, strlen(in), bw, &used), 1);
		assert_int_equal(used, strlen("250-mx.example hello\r\n250-PIPELINING\r\n250 SIZE 1000\r\n"));
		assert_int_equal(r.code, 250);
		assert_int_equal(r.nlines, 3);
		assert_string_equal(r.text, "250-mx.example hello\n250-PIPELINING\n250 SIZE 1000");
		assert_string_equal(r.enhanced, "");
		mta_reply_reset(&r);
		size_t used2;
		assert_int_equal(feed_all(&r, in + used, strlen(in) - used, bw, &used2), 1);
		assert_int_equal(used + used2, strlen(in));
		assert_int_equal(r.code, 550);
		assert_string_equal(r.enhanced, "5.1.1");
		assert_string_equal(r.text, "550 5.1.1 <x@y>: no such user");
		mta_reply_free(&r);
	}
}

static void test_reply_forms(void **state)
{
	(void)state;
	static const struct { const char *in; int code; const char *enh, *text; } ok[] = {
		{ "220\r\n", 220, "", "220" },
		{ "250 2.0.0\r\n", 250, "2.0.0", "250 2.0.0" },
		{ "250 2.0.0x ok\r\n", 250, "", "250 2.0.0x ok" },
		{ "550 4.1.1 class differs\r\n", 550, "", "550 4.1.1 class differs" },
		{ "452 4.5.3 too many\r\n", 452, "4.5.3", "452 4.5.3 too many" },
		{ "550 5.1234.1 x\r\n", 550, "", "550 5.1234.1 x" },
		{ "421-\r\n421 4.3.2 bye\r\n", 421, "", "421-\n421 4.3.2 bye" },
		{ "250 a\tb\x01" "c\r\n", 250, "", "250 a b c" },
		{ "250 caf\xc3\xa9\r\n", 250, "", "250 caf\xc3\xa9" },
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		struct mta_reply r;
		size_t used;
		mta_reply_init(&r);
		assert_int_equal(feed_all(&r, ok[i].in, strlen(ok[i].in), true, &used), 1);
		assert_int_equal(r.code, ok[i].code);
		assert_string_equal(r.enhanced, ok[i].enh);
		assert_string_equal(r.text, ok[i].text);
		mta_reply_free(&r);
	}
}

static void test_reply_errors(void **state)
{
	(void)state;
	static const struct { const char *in; enum mta_reply_error e; size_t at; } bad[] = {
		{ "25 x\r\n", MTA_REPLY_E_SYNTAX, 6 },
		{ "250x\r\n", MTA_REPLY_E_SYNTAX, 6 },
		{ "199 x\r\n", MTA_REPLY_E_SYNTAX, 7 },
		{ "260 x\r\n", MTA_REPLY_E_SYNTAX, 7 },
		{ "\r\n", MTA_REPLY_E_SYNTAX, 2 },
		{ "250-a\r\n251 b\r\n", MTA_REPLY_E_CODE_MISMATCH, 14 },
		{ "250 a\n", MTA_REPLY_E_BARE_EOL, 6 },
		{ "250 a\rb\r\n", MTA_REPLY_E_BARE_EOL, 7 },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		for (int bw = 0; bw < 2; bw++) {
			struct mta_reply r;
			size_t used;
			mta_reply_init(&r);
			assert_int_equal(feed_all(&r, bad[i].in, strlen(bad[i].in), bw, &used), -1);
			assert_int_equal(r.error, bad[i].e);
			assert_int_equal(used, bad[i].at);
			mta_reply_free(&r);
		}
	}
}

/* A 100 KiB line: refused at octet MTA_REPLY_MAX + 1, only 512 octets kept. */
static void test_reply_too_long_is_bounded(void **state)
{
	(void)state;
	size_t n = 100 * 1024;
	char *line = xmalloc(n + 3);
	memcpy(line, "250 ", 4);
	memset(line + 4, 'x', n - 4);
	memcpy(line + n, "\r\n", 3);
	struct mta_reply r;
	size_t used;
	mta_reply_init(&r);
	assert_int_equal(feed_all(&r, line, n + 2, false, &used), -1);
	assert_int_equal(r.error, MTA_REPLY_E_TOO_LONG);
	assert_int_equal(used, MTA_REPLY_MAX + 1);
	assert_int_equal(r.text_len, MTA_REPLY_LINE_MAX);
	assert_true(r.text_cap <= MTA_REPLY_LINE_MAX * 2);
	mta_reply_free(&r);

	/* a 1000-octet line is kept cut, not refused */
	memcpy(line + 1000, "\r\n", 3);
	mta_reply_init(&r);
	assert_int_equal(feed_all(&r, line, 1002, true, &used), 1);
	assert_int_equal(r.text_len, MTA_REPLY_LINE_MAX);
	mta_reply_free(&r);
	free(line);
}

/* ------------------------------------------------------ dot-stuffing */

static char *stuff_all(const char *in, size_t len, size_t step, size_t *out_len)
{
	struct mta_stuff st = { false, false };
	char *out = xmalloc(2 * len + 2 + MTA_STUFF_END_MAX + 1);
	size_t o = 0;
	for (size_t i = 0; i < len; i += step) {
		size_t n = len - i < step ? len - i : step;
		size_t w = mta_stuff(&st, in + i, n, out + o);
		assert_true(w <= 2 * n + 2);
		o += w;
	}
	o += mta_stuff_end(&st, out + o);
	out[o] = '\0';
	*out_len = o;
	return out;
}

static void test_stuff(void **state)
{
	(void)state;
	static const struct { const char *in, *out; } cases[] = {
		{ "", ".\r\n" },
		{ "a\r\n", "a\r\n.\r\n" },
		{ "a", "a\r\n.\r\n" },
		{ ".\r\n", "..\r\n.\r\n" },
		{ "a\r\n.b\r\n..c\r\nd.e\r\n", "a\r\n..b\r\n...c\r\nd.e\r\n.\r\n" },
		{ "x\n.y\n", "x\r\n..y\r\n.\r\n" },                 /* bare LF */
		{ "x\r.y\r\n", "x\r\n..y\r\n.\r\n" },               /* bare CR */
		{ "x\r\r\n", "x\r\n\r\n.\r\n" },
		{ "x\r", "x\r\n.\r\n" },
		{ "\r\n.\r\n", "\r\n..\r\n.\r\n" },                 /* would end the data */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (size_t step = 1; step <= 3; step++) {
			size_t n;
			char *o = stuff_all(cases[i].in, strlen(cases[i].in), step, &n);
			assert_string_equal(o, cases[i].out);
			free(o);
		}
		size_t n;
		char *o = stuff_all(cases[i].in, strlen(cases[i].in), 4096, &n);
		assert_string_equal(o, cases[i].out);
		free(o);
	}
}

/* --------------------------------------------------- whole deliveries */

static void test_deliver_ok_dot_stuffed(void **state)
{
	struct fx *fx = *state;
	const char *msg = "Subject: t\r\n\r\n.leading dot\r\nmid . dot\r\n..two\r\n.\r\nend\r\n";
	set_msg(fx, msg, strlen(msg));
	fx->rcpts[1] = "c@dest.example";
	fx->rcpts[2] = "d@dest.example";
	fx->p.nrcpts = 3;
	sink_start(fx, NULL);
	run(fx);
	assert_int_equal(fx->res->conn_status, MTA_OK);
	assert_false(fx->res->host_failed);
	assert_null(fx->res->error);
	for (size_t i = 0; i < 3; i++)
		assert_rcpt(fx, i, MTA_OK, 250, "2.0.0", "250 2.0.0 queued as 42");
	assert_string_equal(fx->res->remote_host, "mx.dest.example");
	assert_string_equal(fx->res->remote_ip, "127.0.0.1");
	assert_false(fx->res->tls);
	assert_null(fx->res->tls_version);
	/* PIPELINING: MAIL and the RCPTs in one write, DATA after their replies */
	char mail[128];
	snprintf(mail, sizeof(mail), "C+ MAIL FROM:<a@client.example> SIZE=%zu\n", strlen(msg));
	assert_log_has(fx, "C EHLO client.example\n");
	assert_log_has(fx, mail);
	assert_log_has(fx, "C+ RCPT TO:<b@dest.example>\nC+ RCPT TO:<c@dest.example>\n"
	    "C RCPT TO:<d@dest.example>\nC DATA\n");
	assert_log_has(fx, "C QUIT\n");
	size_t n;
	char *d = sink_data(fx, "data.1.1", &n);
	const char *wire = "Subject: t\r\n\r\n..leading dot\r\nmid . dot\r\n...two\r\n..\r\nend\r\n.\r\n";
	assert_int_equal(n, strlen(wire));
	assert_memory_equal(d, wire, n);
	size_t un;
	char *u = unstuff(d, n, &un);
	assert_int_equal(un, strlen(msg));
	assert_memory_equal(u, msg, un);
	free(u);
	free(d);
}

/* Many 64 KiB reads, lines of every length, dots everywhere. */
static void test_deliver_large_message(void **state)
{
	struct fx *fx = *state;
	size_t cap = 600 * 1024, len = 0;
	char *msg = xmalloc(cap);
	for (unsigned i = 0; len + 1100 < cap; i++) {
		size_t ll = (i * 37) % 990;
		if (i % 7 == 0)
			msg[len++] = '.';
		for (size_t k = 0; k < ll; k++)
			msg[len++] = (char)('a' + (i + k) % 26);
		msg[len++] = '\r';
		msg[len++] = '\n';
	}
	set_msg(fx, msg, len);
	sink_start(fx, NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	size_t n, un;
	char *d = sink_data(fx, "data.1.1", &n);
	char *u = unstuff(d, n, &un);
	assert_int_equal(un, len);
	assert_memory_equal(u, msg, len);
	free(u);
	free(d);
	free(msg);
}

static void test_greeting_421_tempfails(void **state)
{
	struct fx *fx = *state;
	sink_start(fx, "--greeting", "421 4.3.2 busy, try later", NULL);
	run(fx);
	assert_int_equal(fx->res->conn_status, MTA_TEMPFAIL);
	assert_true(fx->res->host_failed);
	assert_string_equal(fx->res->error, "421 4.3.2 busy, try later");
	assert_rcpt(fx, 0, MTA_TEMPFAIL, 421, "4.3.2", "421 4.3.2 busy, try later");
	assert_log_lacks(fx, "EHLO");
	assert_log_has(fx, "C QUIT\n");
}

static void test_greeting_554_permfails(void **state)
{
	struct fx *fx = *state;
	sink_start(fx, "--greeting", "554 5.7.1 no service|554 go away", NULL);
	run(fx);
	assert_int_equal(fx->res->conn_status, MTA_PERMFAIL);
	assert_true(fx->res->host_failed);
	assert_rcpt(fx, 0, MTA_PERMFAIL, 554, "5.7.1", "554-5.7.1 no service\n554 go away");
}

/* Permanent only when every address said 5xx: one that could not be
 * reached might have taken the mail. */
static void test_554_then_refused_tempfails(void **state)
{
	struct fx *fx = *state;
	sink_start(fx, "--greeting", "554 5.7.1 no service", NULL);
	fx->addrs[1] = loopback(closed_port());
	fx->p.naddrs = 2;
	run(fx);
	assert_int_equal(fx->res->conn_status, MTA_TEMPFAIL);
	assert_true(fx->res->host_failed);
	assert_rcpt(fx, 0, MTA_TEMPFAIL, 0, "4.4.1", "Connection refused");
}

static void test_rcpt_partial_452(void **state)
{
	struct fx *fx = *state;
	fx->rcpts[1] = "busy@dest.example";
	fx->rcpts[2] = "c@dest.example";
	fx->p.nrcpts = 3;
	sink_start(fx, "--rcpt", "busy@dest.example=452 4.2.2 mailbox full", NULL);
	run(fx);
	assert_int_equal(fx->res->conn_status, MTA_OK);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_rcpt(fx, 1, MTA_TEMPFAIL, 452, "4.2.2", "452 4.2.2 mailbox full");
	assert_rcpt(fx, 2, MTA_OK, 250, "2.0.0", "queued");
	assert_log_has(fx, "DATA data.1.1");
}

static void test_rcpt_all_550_no_data(void **state)
{
	struct fx *fx = *state;
	fx->rcpts[1] = "c@dest.example";
	fx->p.nrcpts = 2;
	sink_start(fx, "--rcpt", "b@dest.example=550 5.1.1 no such user",
	    "--rcpt", "c@dest.example=550 no", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_PERMFAIL, 550, "5.1.1", "550 5.1.1 no such user");
	assert_rcpt(fx, 1, MTA_PERMFAIL, 550, "5.0.0", "550 no");
	assert_log_lacks(fx, "C DATA");
	assert_log_has(fx, "C QUIT\n");
}

static void test_mail_refused_applies_to_all(void **state)
{
	struct fx *fx = *state;
	fx->rcpts[1] = "c@dest.example";
	fx->p.nrcpts = 2;
	sink_start(fx, "--mail-reply", "451 4.3.0 try later", NULL);
	run(fx);
	assert_int_equal(fx->res->conn_status, MTA_TEMPFAIL);
	assert_false(fx->res->host_failed);
	assert_rcpt(fx, 0, MTA_TEMPFAIL, 451, "4.3.0", "451 4.3.0 try later");
	assert_rcpt(fx, 1, MTA_TEMPFAIL, 451, "4.3.0", "451 4.3.0 try later");
	assert_log_lacks(fx, "C DATA");
}

static void test_final_552_permfails_accepted(void **state)
{
	struct fx *fx = *state;
	sink_start(fx, "--final-reply", "552 5.3.4 message too big", NULL);
	run(fx);
	assert_int_equal(fx->res->conn_status, MTA_PERMFAIL);
	assert_rcpt(fx, 0, MTA_PERMFAIL, 552, "5.3.4", "552 5.3.4 message too big");
}

static void test_data_refused(void **state)
{
	struct fx *fx = *state;
	sink_start(fx, "--data-reply", "451 4.3.0 not now", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_TEMPFAIL, 451, "4.3.0", "451 4.3.0 not now");
	assert_log_lacks(fx, "DATA data");
}

static void test_never_answers_times_out(void **state)
{
	struct fx *fx = *state;
	fx->p.cmd_timeout = 1;
	sink_start(fx, "--hang", NULL);
	double t0 = util_now();
	run(fx);
	assert_true(util_now() - t0 < 2.5);
	assert_int_equal(fx->res->conn_status, MTA_TEMPFAIL);
	assert_rcpt(fx, 0, MTA_TEMPFAIL, 0, "4.4.2", "timeout with mx.dest.example[127.0.0.1] in state greeting");
}

static void test_drop_mid_data_not_delivered(void **state)
{
	struct fx *fx = *state;
	size_t len = 512 * 1024;
	char *msg = xmalloc(len);
	for (size_t i = 0; i < len; i++)
		msg[i] = (i % 80 == 78) ? '\r' : (i % 80 == 79) ? '\n' : 'x';
	set_msg(fx, msg, len);
	free(msg);
	fx->rcpts[1] = "c@dest.example";
	fx->p.nrcpts = 2;
	sink_start(fx, "--drop-after", "1000", NULL);
	run(fx);
	assert_log_has(fx, "DROP");
	assert_int_equal(fx->res->conn_status, MTA_TEMPFAIL);
	for (size_t i = 0; i < 2; i++) {
		assert_int_equal(fx->res->rcpts[i].status, MTA_TEMPFAIL);
		assert_string_equal(fx->res->rcpts[i].enhanced, "4.4.2");
	}
}

static void test_replies_split_bytewise(void **state)
{
	struct fx *fx = *state;
	sink_start(fx, "--bytewise", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_log_has(fx, "C+ MAIL FROM:");   /* PIPELINING seen in a split EHLO reply */
}

static void test_reply_line_100k_tempfails(void **state)
{
	struct fx *fx = *state;
	sink_start(fx, "--long-ehlo", "102400", NULL);
	run(fx);
	assert_int_equal(fx->res->conn_status, MTA_TEMPFAIL);
	assert_rcpt(fx, 0, MTA_TEMPFAIL, 0, "4.5.0", "protocol error (reply too long)");
	assert_log_lacks(fx, "MAIL");
}

static void test_no_pipelining_lock_step(void **state)
{
	struct fx *fx = *state;
	fx->rcpts[1] = "c@dest.example";
	fx->p.nrcpts = 2;
	sink_start(fx, "--ehlo", "8BITMIME,SIZE", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_rcpt(fx, 1, MTA_OK, 250, "2.0.0", "queued");
	assert_log_has(fx, "C MAIL FROM:<a@client.example> SIZE=");
	assert_log_has(fx, "C RCPT TO:<b@dest.example>\nC RCPT TO:<c@dest.example>\nC DATA\n");
	assert_log_lacks(fx, "C+");
}

static void test_size_too_small_permfails(void **state)
{
	struct fx *fx = *state;
	char msg[2000];
	memset(msg, 'x', sizeof(msg));
	set_msg(fx, msg, sizeof(msg));
	sink_start(fx, "--ehlo", "PIPELINING,SIZE 1000", NULL);
	run(fx);
	assert_int_equal(fx->res->conn_status, MTA_PERMFAIL);
	assert_false(fx->res->host_failed);   /* the message's fault, not the host's */
	assert_rcpt(fx, 0, MTA_PERMFAIL, 0, "5.3.4", "message size 2000 exceeds the limit of 1000");
	assert_log_lacks(fx, "MAIL");
	assert_log_has(fx, "C QUIT");
}

static void test_smtputf8_needed_not_offered(void **state)
{
	struct fx *fx = *state;
	fx->rcpts[0] = "j\xc3\xb6rg@dest.example";   /* implies SMTPUTF8 */
	sink_start(fx, "--ehlo", "PIPELINING,8BITMIME", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_PERMFAIL, 0, "5.6.7", "SMTPUTF8 is needed");
	assert_log_lacks(fx, "MAIL");
}

static void test_smtputf8_offered(void **state)
{
	struct fx *fx = *state;
	fx->p.smtputf8 = true;
	fx->p.body_8bit = true;
	sink_start(fx, NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_log_has(fx, " BODY=8BITMIME SMTPUTF8\n");
}

static void test_8bit_not_offered(void **state)
{
	struct fx *fx = *state;
	fx->p.body_8bit = true;
	sink_start(fx, "--ehlo", "PIPELINING", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_PERMFAIL, 0, "5.6.3", "8BITMIME is needed");
}

static void test_second_address_after_refusal(void **state)
{
	struct fx *fx = *state;
	sink_start(fx, NULL);
	fx->addrs[1] = fx->addrs[0];
	fx->addrs[0] = loopback(closed_port());
	fx->p.naddrs = 2;
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_string_equal(fx->res->remote_ip, "127.0.0.1");
	assert_log_has(fx, "CONN 1\n");
	assert_log_lacks(fx, "CONN 2\n");
}

/* IPv6 first, as DNS orders them: ::1 refuses (the sink is on 127.0.0.1). */
static void test_ipv6_refused_then_ipv4(void **state)
{
	struct fx *fx = *state;
	sink_start(fx, NULL);
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&fx->addrs[0];
	fx->addrs[1] = fx->addrs[0];
	memset(&fx->addrs[0], 0, sizeof(fx->addrs[0]));
	in6->sin6_family = AF_INET6;
	in6->sin6_addr = in6addr_loopback;
	fx->addrs[1].ss_family = AF_INET;
	((struct sockaddr_in *)&fx->addrs[1])->sin_port = 0;
	fx->p.port = fx->port;
	fx->p.naddrs = 2;
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_string_equal(fx->res->remote_ip, "127.0.0.1");
}

/* The port comes from p->port when the address has none (DNS results). */
static void test_all_refused_tempfails(void **state)
{
	struct fx *fx = *state;
	fx->addrs[0] = loopback(0);
	fx->addrs[1] = loopback(0);
	fx->p.port = closed_port();
	fx->p.naddrs = 2;
	run(fx);
	assert_int_equal(fx->res->conn_status, MTA_TEMPFAIL);
	char want[128];
	snprintf(want, sizeof(want), "connect to mx.dest.example[127.0.0.1]:%d: Connection refused",
	    fx->p.port);
	assert_rcpt(fx, 0, MTA_TEMPFAIL, 0, "4.4.1", want);
}

static void test_ehlo_refused_falls_back_to_helo(void **state)
{
	struct fx *fx = *state;
	sink_start(fx, "--ehlo-reply", "502 5.5.1 what is EHLO", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_log_has(fx, "C HELO client.example\nC MAIL FROM:<a@client.example>\n");
}

static void test_dsn_parameters(void **state)
{
	struct fx *fx = *state;
	fx->p.ret = QUEUE_RET_HDRS;
	fx->p.envid = "id 1+2=3";
	fx->rcpts[1] = "c@dest.example";
	fx->rcpts[2] = "d@dest.example";
	fx->p.nrcpts = 3;
	fx->notify[0] = QUEUE_NOTIFY_SUCCESS | QUEUE_NOTIFY_DELAY;
	fx->notify[1] = QUEUE_NOTIFY_NEVER;
	fx->orcpt[0] = "rfc822;b+x@dest.example";
	fx->orcpt[1] = "";
	fx->orcpt[2] = "utf-8;j\xc3\xb6rg=1@dest.example";
	fx->p.notify = fx->notify;
	fx->p.orcpt = fx->orcpt;
	sink_start(fx, NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_log_has(fx, " RET=HDRS ENVID=id+201+2B2+3D3\n");
	assert_log_has(fx, "RCPT TO:<b@dest.example> NOTIFY=SUCCESS,DELAY ORCPT=rfc822;b+2Bx@dest.example\n");
	assert_log_has(fx, "RCPT TO:<c@dest.example> NOTIFY=NEVER\n");
	/* not under SMTPUTF8: utf-8-addr-xtext (RFC 6533 §3) */
	assert_log_has(fx, "RCPT TO:<d@dest.example> ORCPT=utf-8;j\\x{F6}rg\\x{3D}1@dest.example\n");
}

static void test_dsn_not_offered(void **state)
{
	struct fx *fx = *state;
	fx->p.ret = QUEUE_RET_FULL;
	fx->p.envid = "x";
	fx->notify[0] = QUEUE_NOTIFY_FAILURE;
	fx->orcpt[0] = "rfc822;b@dest.example";
	fx->p.notify = fx->notify;
	fx->p.orcpt = fx->orcpt;
	sink_start(fx, "--ehlo", "PIPELINING", NULL);
	run(fx);
	assert_log_has(fx, "C+ MAIL FROM:<a@client.example>\nC RCPT TO:<b@dest.example>\n");
}

static void test_null_sender(void **state)
{
	struct fx *fx = *state;
	fx->p.sender = "";
	sink_start(fx, NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_log_has(fx, "MAIL FROM:<> SIZE=");
}

/* -------------------------------------------------------------- TLS */

static char g_cert[96], g_key[96];

static void test_starttls(void **state)
{
	struct fx *fx = *state;
	fx->p.tls = fx->tls;
	sink_start(fx, "--tls", g_cert, g_key, NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_true(fx->res->tls);
	assert_non_null(fx->res->tls_version);
	assert_true(strncmp(fx->res->tls_version, "TLSv1.", 6) == 0);
	assert_log_has(fx, "C EHLO client.example\nC STARTTLS\nTLS TLSv1.");
	assert_log_has(fx, "\nC EHLO client.example\nC+ MAIL FROM:");   /* EHLO again */
}

static void test_starttls_not_used_without_ctx(void **state)
{
	struct fx *fx = *state;
	sink_start(fx, "--tls", g_cert, g_key, NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_false(fx->res->tls);
	assert_log_lacks(fx, "STARTTLS");
}

/* Opportunistic: a broken handshake is retried once in clear. */
static void test_starttls_broken_retries_in_clear(void **state)
{
	struct fx *fx = *state;
	fx->p.tls = fx->tls;
	sink_start(fx, "--tls", g_cert, g_key, "--tls-break-once", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_false(fx->res->tls);
	assert_log_has(fx, "CONN 2\n");
	assert_log_has(fx, "C EHLO client.example\nC+ MAIL FROM:");
}

static void test_starttls_broken_required_tempfails(void **state)
{
	struct fx *fx = *state;
	fx->p.tls = fx->tls;
	fx->p.tls_required = true;
	sink_start(fx, "--tls", g_cert, g_key, "--tls-break", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_TEMPFAIL, 0, "4.7.5", "TLS handshake with mx.dest.example[127.0.0.1] failed");
	assert_log_lacks(fx, "CONN 2");
}

/* RFC 3207 §4: a reply in clear right behind the 220 is never read as if
 * it came under TLS. */
static void test_starttls_injection_refused(void **state)
{
	struct fx *fx = *state;
	fx->p.tls = fx->tls;
	fx->p.tls_required = true;
	sink_start(fx, "--tls", g_cert, g_key, "--tls-inject", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_TEMPFAIL, 0, "4.7.5",
	    "TLS handshake with mx.dest.example[127.0.0.1] failed: data after the STARTTLS reply");
	assert_log_lacks(fx, "MAIL");
}

static void test_starttls_refused_goes_on_in_clear(void **state)
{
	struct fx *fx = *state;
	fx->p.tls = fx->tls;
	sink_start(fx, "--tls", g_cert, g_key, "--starttls-reply", "454 4.7.0 TLS not available", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_false(fx->res->tls);
}

static void test_tls_required_not_offered(void **state)
{
	struct fx *fx = *state;
	fx->p.tls = fx->tls;
	fx->p.tls_required = true;
	sink_start(fx, NULL);
	run(fx);
	assert_int_equal(fx->res->conn_status, MTA_TEMPFAIL);
	assert_rcpt(fx, 0, MTA_TEMPFAIL, 0, "4.7.10", "TLS is required");
	assert_log_lacks(fx, "MAIL");
}

static void test_auth_plain_loopback_clear(void **state)
{
	struct fx *fx = *state;
	fx->p.auth_user = "user";
	fx->p.auth_pass = "s3cret";
	sink_start(fx, "--auth", "user:s3cret", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_log_has(fx, "C AUTH PLAIN AHVzZXIAczNjcmV0\nAUTH ok\n");
}

static void test_auth_login_over_tls(void **state)
{
	struct fx *fx = *state;
	fx->p.tls = fx->tls;
	fx->p.tls_required = true;
	fx->p.auth_user = "user";
	fx->p.auth_pass = "s3cret";
	sink_start(fx, "--tls", g_cert, g_key, "--auth", "user:s3cret", "--auth-mechs", "LOGIN", NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
	assert_true(fx->res->tls);
	assert_log_has(fx, "C AUTH LOGIN\nC dXNlcg==\nC czNjcmV0\nAUTH ok\n");
}

static void test_auth_refused_tempfails(void **state)
{
	struct fx *fx = *state;
	fx->p.auth_user = "user";
	fx->p.auth_pass = "wrong";
	sink_start(fx, "--auth", "user:s3cret", NULL);
	run(fx);
	/* 535 is a configuration problem: never a bounce */
	assert_rcpt(fx, 0, MTA_TEMPFAIL, 535, "4.7.8", "535 5.7.8 bad credentials");
	assert_log_lacks(fx, "MAIL");
}

/* --------------------------------------------------------- lifecycle */

static void test_cancel_never_calls_back(void **state)
{
	struct fx *fx = *state;
	sink_start(fx, "--hang", NULL);
	fx->req = mta_deliver(fx->base, &fx->p, done_cb, fx);
	assert_non_null(fx->req);
	fx->returned = true;
	loop_for(fx, 300);
	mta_cancel(&fx->req);
	assert_null(fx->req);
	loop_for(fx, 300);
	assert_int_equal(fx->calls, 0);
}

/* Cancelled while the message streams: the read in flight is dropped. */
static void test_cancel_during_body(void **state)
{
	struct fx *fx = *state;
	size_t len = 4 * 1024 * 1024;
	char *msg = xmalloc(len);
	memset(msg, 'y', len);
	set_msg(fx, msg, len);
	free(msg);
	sink_start(fx, "--drop-after", "100000000", NULL);
	fx->req = mta_deliver(fx->base, &fx->p, done_cb, fx);
	fx->returned = true;
	for (int i = 0; i < 100; i++) {
		loop_for(fx, 20);
		char path[128];
		snprintf(path, sizeof(path), "%s/log", fx->dir);
		free(fx->log);
		fx->log = read_file(path, NULL);
		if (fx->log != NULL && strstr(fx->log, "C DATA") != NULL)
			break;
	}
	assert_log_has(fx, "C DATA");
	mta_cancel(&fx->req);
	loop_for(fx, 200);
	assert_int_equal(fx->calls, 0);
}

static void test_cancel_inside_callback(void **state)
{
	struct fx *fx = *state;
	fx->cancel_in_cb = true;
	sink_start(fx, NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_OK, 250, "2.0.0", "queued");
}

static void test_missing_file_tempfails(void **state)
{
	struct fx *fx = *state;
	snprintf(fx->msg_path, sizeof(fx->msg_path), "%s/nonexistent", fx->dir);
	sink_start(fx, NULL);
	run(fx);
	assert_rcpt(fx, 0, MTA_TEMPFAIL, 0, "4.3.0", "cannot read the message: No such file");
	assert_log_lacks(fx, "DATA data");   /* the "." never sent */
}

static void test_invalid_params(void **state)
{
	struct fx *fx = *state;
	struct mta_params p = fx->p;
	const char *bad_rcpt[] = { "b@x\r\nRSET" };
	p.rcpts = bad_rcpt;
	errno = 0;
	assert_null(mta_deliver(fx->base, &p, done_cb, fx));
	assert_int_equal(errno, EINVAL);
	p = fx->p;
	p.sender = "a@b\nx";
	assert_null(mta_deliver(fx->base, &p, done_cb, fx));
	p = fx->p;
	p.helo = "a b";
	assert_null(mta_deliver(fx->base, &p, done_cb, fx));
	p = fx->p;
	p.nrcpts = 0;
	assert_null(mta_deliver(fx->base, &p, done_cb, fx));
	p = fx->p;
	p.naddrs = 0;
	assert_null(mta_deliver(fx->base, &p, done_cb, fx));
	p = fx->p;
	p.tls_required = true;
	assert_null(mta_deliver(fx->base, &p, done_cb, fx));
	p = fx->p;
	p.auth_user = "u";
	assert_null(mta_deliver(fx->base, &p, done_cb, fx));
	p = fx->p;
	p.aio = NULL;
	assert_null(mta_deliver(fx->base, &p, done_cb, fx));
}

/* ------------------------------------------------------------- main */

static int group_setup(void **state)
{
	(void)state;
	log_set_level(getenv("MTA_DEBUG") != NULL ? LL_DEBUG : LL_WARN);
	signal(SIGPIPE, SIG_IGN);
	if (!find_sink()) {
		fprintf(stderr, "# tests/data/mta/sink.py not found (set MTA_SINK)\n");
		return -1;
	}
	snprintf(g_dir, sizeof(g_dir), "/tmp/test_mta_tls.XXXXXX");
	if (mkdtemp(g_dir) == NULL)
		return -1;
	snprintf(g_cert, sizeof(g_cert), "%s/cert.pem", g_dir);
	snprintf(g_key, sizeof(g_key), "%s/key.pem", g_dir);
	char cmd[512];
	snprintf(cmd, sizeof(cmd), "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
	    "-nodes -keyout %s -out %s -days 2 -subj /CN=mx.dest.example >/dev/null 2>&1",
	    g_key, g_cert);
	if (system(cmd) != 0) {
		fprintf(stderr, "# openssl req failed\n");
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	rm_tree(g_dir);
	return 0;
}

#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reply_multiline_whole_and_bytewise),
		cmocka_unit_test(test_reply_forms),
		cmocka_unit_test(test_reply_errors),
		cmocka_unit_test(test_reply_too_long_is_bounded),
		cmocka_unit_test(test_stuff),
		T(test_deliver_ok_dot_stuffed),
		T(test_deliver_large_message),
		T(test_greeting_421_tempfails),
		T(test_greeting_554_permfails),
		T(test_554_then_refused_tempfails),
		T(test_rcpt_partial_452),
		T(test_rcpt_all_550_no_data),
		T(test_mail_refused_applies_to_all),
		T(test_final_552_permfails_accepted),
		T(test_data_refused),
		T(test_never_answers_times_out),
		T(test_drop_mid_data_not_delivered),
		T(test_replies_split_bytewise),
		T(test_reply_line_100k_tempfails),
		T(test_no_pipelining_lock_step),
		T(test_size_too_small_permfails),
		T(test_smtputf8_needed_not_offered),
		T(test_smtputf8_offered),
		T(test_8bit_not_offered),
		T(test_second_address_after_refusal),
		T(test_ipv6_refused_then_ipv4),
		T(test_all_refused_tempfails),
		T(test_ehlo_refused_falls_back_to_helo),
		T(test_dsn_parameters),
		T(test_dsn_not_offered),
		T(test_null_sender),
		T(test_starttls),
		T(test_starttls_not_used_without_ctx),
		T(test_starttls_broken_retries_in_clear),
		T(test_starttls_broken_required_tempfails),
		T(test_starttls_injection_refused),
		T(test_starttls_refused_goes_on_in_clear),
		T(test_tls_required_not_offered),
		T(test_auth_plain_loopback_clear),
		T(test_auth_login_over_tls),
		T(test_auth_refused_tempfails),
		T(test_cancel_never_calls_back),
		T(test_cancel_during_body),
		T(test_cancel_inside_callback),
		T(test_missing_file_tempfails),
		T(test_invalid_params),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
