/* control.c: the administration socket <data_dir>/control.sock, through which
 * `postling queue flush|delete ID|bounce ID` reach the running server (issue 6,
 * Ops). A local stream socket, mode 0600, owned by the user the server runs as:
 * only root and that user can connect. One request line per connection, one
 * reply line ("ok ..." or "error ..."), then the server closes it.
 *
 * Requests act on the relay's in-memory queue (relay/scheduler.c), which then
 * writes its files with the usual atomic protocol: the CLI never edits queue
 * files under a running server's feet. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "relay/relay.h"
#include "server/server.h"

#define CONTROL_LINE_MAX 256
#define CONTROL_TIMEOUT 10           /* seconds for the request line */

struct control {
	struct evconnlistener *lev;
	char *path;
};

char *control_path(const char *data_dir)
{
	return xasprintf("%s/control.sock", data_dir);
}

static void reply_and_close(struct bufferevent *bev, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void on_flushed(struct bufferevent *bev, void *arg)
{
	(void)arg;
	if (evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		bufferevent_free(bev);
}

static void reply_and_close(struct bufferevent *bev, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	evbuffer_add_vprintf(bufferevent_get_output(bev), fmt, ap);
	va_end(ap);
	evbuffer_add(bufferevent_get_output(bev), "\n", 1);
	bufferevent_disable(bev, EV_READ);
	bufferevent_setcb(bev, NULL, on_flushed, NULL, NULL);
}

static void run(struct bufferevent *bev, char *line)
{
	char *arg = strchr(line, ' ');
	if (arg != NULL)
		*arg++ = '\0';
	struct logline *l = log_begin(LL_INFO, "control.request");
	log_str(l, "command", line);
	log_str(l, "arg", arg);
	log_end(l);
	if (server->relay == NULL) {
		reply_and_close(bev, "error the relay is not running (see relay.start_failed in the log)");
		return;
	}
	if (strcmp(line, "flush") == 0 && arg == NULL) {
		size_t n = relay_flush(server->relay);
		reply_and_close(bev, "ok %zu deferred entries scheduled now (%zu queued)", n,
		    relay_queued(server->relay));
		return;
	}
	bool del = strcmp(line, "delete") == 0, bounce = strcmp(line, "bounce") == 0;
	if (!(del || bounce) || arg == NULL || !queue_id_valid(arg)) {
		reply_and_close(bev, "error usage: flush | delete ID | bounce ID");
		return;
	}
	int e = del ? relay_delete(server->relay, arg) : relay_bounce(server->relay, arg);
	if (e == 0)
		reply_and_close(bev, "ok %s %s", arg, del ? "deleted" : "bounced to its sender");
	else if (e == ENOENT)
		reply_and_close(bev, "error no queue entry %s", arg);
	else
		reply_and_close(bev, "error %s is being delivered right now; try again in a moment", arg);
}

static void on_read(struct bufferevent *bev, void *arg)
{
	(void)arg;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t n;
	char *line = evbuffer_readln(in, &n, EVBUFFER_EOL_CRLF);
	if (line == NULL) {
		if (evbuffer_get_length(in) > CONTROL_LINE_MAX)
			reply_and_close(bev, "error request too long");
		return;
	}
	if (n > CONTROL_LINE_MAX || strlen(line) != n)
		reply_and_close(bev, "error bad request");
	else
		run(bev, line);
	free(line);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	(void)what;
	(void)arg;
	bufferevent_free(bev);       /* EOF, error or timeout before a request */
}

static void on_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa, int salen,
    void *arg)
{
	(void)lev;
	(void)sa;
	(void)salen;
	(void)arg;
	struct bufferevent *bev = bufferevent_socket_new(server->base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		close(fd);
		return;
	}
	struct timeval tv = { CONTROL_TIMEOUT, 0 };
	bufferevent_set_timeouts(bev, &tv, &tv);
	bufferevent_setcb(bev, on_read, NULL, on_event, NULL);
	bufferevent_enable(bev, EV_READ);
}

/* Is a server already answering on path? (then its socket is not ours to replace) */
static bool socket_alive(const struct sockaddr_un *sun)
{
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return false;
	bool alive = connect(fd, (const struct sockaddr *)sun, sizeof(*sun)) == 0;
	close(fd);
	return alive;
}

struct control *control_open(const char *data_dir)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char *path = control_path(data_dir);
	if (strlen(path) >= sizeof(sun.sun_path)) {
		log_msg(LL_WARN, "control.unavailable", "%s: path too long for a socket; `postling queue "
		    "flush|delete|bounce` will not reach this server", path);
		free(path);
		return NULL;
	}
	memcpy(sun.sun_path, path, strlen(path) + 1);
	if (socket_alive(&sun)) {
		log_msg(LL_WARN, "control.unavailable", "%s: another server answers there (same data_dir?)",
		    path);
		free(path);
		return NULL;
	}
	unlink(path);                /* a stale socket of a server that crashed */
	mode_t old = umask(0177);    /* 0600 from the start: no window where others may connect */
	struct evconnlistener *lev = evconnlistener_new_bind(server->base, on_accept, NULL,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16, (struct sockaddr *)&sun, sizeof(sun));
	umask(old);
	if (lev == NULL) {
		log_msg(LL_WARN, "control.unavailable", "%s: %s", path, strerror(errno));
		free(path);
		return NULL;
	}
	struct control *c = xcalloc(1, sizeof(*c));
	c->lev = lev;
	c->path = path;
	return c;
}

void control_close(struct control **c_r)
{
	struct control *c = *c_r;
	if (c == NULL)
		return;
	*c_r = NULL;
	evconnlistener_free(c->lev);
	unlink(c->path);
	free(c->path);
	free(c);
}

/* The CLI side: one request, the reply line into reply (without newline).
 * 0, or -1 with errno (ENOENT / ECONNREFUSED: no server running there). */
int control_request(const char *data_dir, const char *request, char *reply, size_t replylen)
{
	struct sockaddr_un sun = { .sun_family = AF_UNIX };
	char *path = control_path(data_dir);
	size_t plen = strlen(path);
	if (plen >= sizeof(sun.sun_path)) {
		free(path);
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(sun.sun_path, path, plen + 1);
	free(path);
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd == -1)
		return -1;
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) == -1) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	struct timeval tv = { CONTROL_TIMEOUT, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	size_t rlen = strlen(request);
	char *msg = xasprintf("%s\n", request);
	ssize_t w = write(fd, msg, rlen + 1);
	free(msg);
	size_t got = 0;
	while (w == (ssize_t)rlen + 1 && got + 1 < replylen) {
		ssize_t n = read(fd, reply + got, replylen - 1 - got);
		if (n <= 0)
			break;
		got += (size_t)n;
		if (memchr(reply, '\n', got) != NULL)
			break;
	}
	int e = errno;
	close(fd);
	reply[got] = '\0';
	char *nl = strchr(reply, '\n');
	if (nl != NULL)
		*nl = '\0';
	if (got == 0) {
		errno = w == -1 ? e : EPROTO;
		return -1;
	}
	return 0;
}
