/* listener.c: listening sockets from the config, accept, connection limits. */
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/util.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "server/server.h"

struct listener {
	struct evconnlistener *evl;
	enum cfg_proto proto;
	char *address;
	int port;
};

static int bind_one(const char *addr, int port, char *err, size_t errlen)
{
	struct addrinfo hints = { .ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV,
	    .ai_socktype = SOCK_STREAM }, *res;
	char portstr[8];
	snprintf(portstr, sizeof(portstr), "%d", port);
	int gai = getaddrinfo(addr, portstr, &hints, &res);
	if (gai != 0) {
		snprintf(err, errlen, "listener %s port %d: %s", addr, port, gai_strerror(gai));
		return -1;
	}
	int fd = socket(res->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	if (fd != -1) {
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		if (res->ai_family == AF_INET6)
			setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	}
	if (fd == -1 || bind(fd, res->ai_addr, res->ai_addrlen) == -1 || listen(fd, 511) == -1) {
		snprintf(err, errlen, "cannot listen on %s port %d: %s", addr, port, strerror(errno));
		if (fd != -1)
			close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	return fd;
}

static void refuse(int fd, enum cfg_proto proto, const char *ip, const char *why)
{
	const struct proto_ops *ops = server_proto_ops(proto);
	if (!cfg_proto_implicit_tls(proto) && ops->busy_reply != NULL)
		(void)!write(fd, ops->busy_reply, strlen(ops->busy_reply));
	close(fd);
	struct logline *l = log_begin(LL_WARN, "conn.refused");
	log_str(l, "proto", cfg_proto_name(proto));
	log_str(l, "remote", ip);
	log_str(l, "reason", why);
	log_end(l);
}

static void accept_cb(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *sa,
    int salen, void *arg)
{
	struct listener *l = arg;
	char ip[64] = "";
	(void)evl;
	if (sa->sa_family == AF_INET || sa->sa_family == AF_INET6)
		evutil_inet_ntop(sa->sa_family, sa->sa_family == AF_INET
		    ? (const void *)&((struct sockaddr_in *)sa)->sin_addr
		    : (const void *)&((struct sockaddr_in6 *)sa)->sin6_addr, ip, sizeof(ip));
	if (server->draining) {
		refuse(fd, l->proto, ip, "server shutting down");
		return;
	}
	if ((int)server->nconns >= server->cfg->server.max_connections) {
		refuse(fd, l->proto, ip, "max_connections reached");
		return;
	}
	if (server_conn_count_get(ip) >= server->cfg->server.max_connections_per_ip) {
		refuse(fd, l->proto, ip, "max_connections_per_ip reached");
		return;
	}
	if (!server_conn_rate_ok(ip)) {
		refuse(fd, l->proto, ip, "max_connection_rate_per_ip reached");
		return;
	}
	evutil_make_socket_nonblocking(fd);
	/* replies are written whole; without this a reply split over two loop
	 * passes (status line, then the body from disk) meets Nagle + delayed ACK */
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	conn_new(server, fd, sa, (socklen_t)salen, l->proto, server->tls);
}

static void accept_error_cb(struct evconnlistener *evl, void *arg)
{
	struct listener *l = arg;
	(void)evl;
	/* EMFILE and friends: log and keep listening; libevent retries on the next event */
	log_msg(LL_ERROR, "listener.error", "accept on %s port %d: %s", l->address, l->port,
	    strerror(errno));
}

int listener_open_all(struct server *srv, char *err, size_t errlen)
{
	for (size_t i = 0; i < srv->cfg->nlisteners; i++) {
		const struct cfg_listener *cl = &srv->cfg->listeners[i];
		for (size_t j = 0; j < cl->naddresses; j++) {
			int fd = bind_one(cl->addresses[j], cl->port, err, errlen);
			if (fd == -1)
				return -1;
			struct listener *l = xcalloc(1, sizeof(*l));
			l->proto = cl->proto;
			l->address = xstrdup(cl->addresses[j]);
			l->port = cl->port;
			l->evl = evconnlistener_new(srv->base, accept_cb, l,
			    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, -1, fd);
			evconnlistener_set_error_cb(l->evl, accept_error_cb);
			srv->listeners = xreallocarray(srv->listeners, srv->nlisteners + 1, sizeof(l));
			srv->listeners[srv->nlisteners++] = l;
		}
	}
	return 0;
}

void listener_log_ready(struct server *srv, struct logline *line)
{
	char *list = xstrdup("");
	for (size_t i = 0; i < srv->nlisteners; i++) {
		struct listener *l = srv->listeners[i];
		char *n = xasprintf("%s%s%s:%s:%d", list, i ? " " : "", cfg_proto_name(l->proto),
		    l->address, l->port);
		free(list);
		list = n;
	}
	log_str(line, "listeners", list);
	free(list);
}

void listener_pause_all(struct server *srv)
{
	for (size_t i = 0; i < srv->nlisteners; i++)
		evconnlistener_disable(srv->listeners[i]->evl);
}

void listener_close_all(struct server *srv)
{
	for (size_t i = 0; i < srv->nlisteners; i++) {
		evconnlistener_free(srv->listeners[i]->evl);
		free(srv->listeners[i]->address);
		free(srv->listeners[i]);
	}
	free(srv->listeners);
	srv->listeners = NULL;
	srv->nlisteners = 0;
}
