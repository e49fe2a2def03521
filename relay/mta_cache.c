/* mta_cache.c: idle outbound SMTP connections kept for the next message to the
 * same host (design §6: one connection carries a destination's mail). When a
 * transaction ends well, mta.c parks its connection here instead of sending
 * QUIT; the next mta_deliver to the same address, port, name, HELO and
 * credentials takes it back, checks it with RSET and sends MAIL at once: no
 * TCP connect, TLS handshake, EHLO or AUTH per message. The model is Postfix's
 * scache(8) with smtp_connection_cache_on_demand.
 *
 * A parked connection is dropped when the server says anything or closes (a
 * 421 on idle), after MTA_CACHE_IDLE seconds (QUIT first, politely), or when
 * the cache is full (the oldest goes). Reactor thread only; one list per
 * process, each entry tied to its event_base (mta_cache_clear at shutdown). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "common/xmalloc.h"
#include "relay/relay.h"

#define MTA_CACHE_MAX 32             /* parked connections at most */
#define MTA_CACHE_IDLE 5             /* seconds a parked connection waits */
#define MTA_CACHE_QUIT_WAIT 2        /* seconds for the QUIT to go out */

struct cached {
	struct cached *next;
	struct event_base *base;
	char *key;
	struct mta_conn c;
	struct event *timer;
	bool quitting;
};

static struct cached *cache;
static size_t ncache;

static void unlink_entry(struct cached *e)
{
	for (struct cached **pp = &cache; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == e) {
			*pp = e->next;
			ncache--;
			return;
		}
	}
}

static void conn_free(struct mta_conn *c)
{
	if (c->bev != NULL) {
		bufferevent_disable(c->bev, EV_READ | EV_WRITE);
		bufferevent_free(c->bev);    /* a TLS bev frees its SSL and closes its fd */
	}
	if (c->fd != -1)
		close(c->fd);
	free(c->tls_version);
	memset(c, 0, sizeof(*c));
	c->fd = -1;
}

static void entry_free(struct cached *e)
{
	unlink_entry(e);
	conn_free(&e->c);
	event_free(e->timer);
	free(e->key);
	free(e);
}

/* The server spoke (a 421) or closed: the connection is no use any more. */
static void on_read(struct bufferevent *bev, void *arg)
{
	(void)bev;
	entry_free(arg);
}

static void on_write(struct bufferevent *bev, void *arg)
{
	struct cached *e = arg;
	if (e->quitting && evbuffer_get_length(bufferevent_get_output(bev)) == 0)
		entry_free(e);
}

static void on_event(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	(void)what;
	entry_free(arg);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct cached *e = arg;
	if (e->quitting) {           /* the QUIT did not go out in time */
		entry_free(e);
		return;
	}
	/* idle too long: QUIT (RFC 5321 §4.1.1.10), close once it is written */
	e->quitting = true;
	bufferevent_write(e->c.bev, "QUIT\r\n", 6);
	struct timeval tv = { MTA_CACHE_QUIT_WAIT, 0 };
	evtimer_add(e->timer, &tv);
}

void mta_cache_put(struct event_base *base, const char *key, struct mta_conn *c)
{
	if (ncache >= MTA_CACHE_MAX) {   /* the oldest is last in the list */
		struct cached *last = cache;
		while (last->next != NULL)
			last = last->next;
		entry_free(last);
	}
	struct cached *e = xcalloc(1, sizeof(*e));
	e->base = base;
	e->key = xstrdup(key);
	e->c = *c;
	memset(c, 0, sizeof(*c));
	c->fd = -1;
	e->timer = evtimer_new(base, on_timer, e);
	e->next = cache;
	cache = e;
	ncache++;
	bufferevent_setcb(e->c.bev, on_read, on_write, on_event, e);
	bufferevent_enable(e->c.bev, EV_READ);
	struct timeval tv = { MTA_CACHE_IDLE, 0 };
	evtimer_add(e->timer, &tv);
	if (evbuffer_get_length(bufferevent_get_input(e->c.bev)) > 0)
		entry_free(e);               /* something arrived with the last reply */
}

bool mta_cache_take(struct event_base *base, const char *key, struct mta_conn *out)
{
	for (struct cached *e = cache; e != NULL; e = e->next) {
		if (e->base != base || e->quitting || strcmp(e->key, key) != 0)
			continue;
		unlink_entry(e);
		*out = e->c;
		bufferevent_setcb(out->bev, NULL, NULL, NULL, NULL);
		event_free(e->timer);
		free(e->key);
		free(e);
		return true;
	}
	return false;
}

void mta_cache_clear(struct event_base *base)
{
	for (struct cached *e = cache, *next; e != NULL; e = next) {
		next = e->next;
		if (base == NULL || e->base == base)
			entry_free(e);
	}
}

size_t mta_cache_count(void)
{
	return ncache;
}
