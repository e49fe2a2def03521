/* throttle.c: failed-login throttling per remote address (design §2, Limits).
 *
 * Each record counts the failures of one address; it lives while failures keep
 * coming and expires `window` seconds after the latest one. After n failures
 * the next attempt waits 250 ms << (n - 1), at most 8 s; at `max_failures` the
 * address is refused until the record expires. A success drops the record.
 *
 * Memory is bounded: at most THROTTLE_MAX_ENTRIES records, in a hash table
 * (seeded, so a flood of chosen addresses cannot pile into one chain) plus a
 * list ordered by latest failure, whose head is both the next to expire and
 * the one evicted when the table is full. Reactor thread only; no I/O: the
 * time is passed in. */
#include "server/server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"

#define THROTTLE_MAX_ENTRIES 10000
#define THROTTLE_BUCKETS 16384       /* power of two, > THROTTLE_MAX_ENTRIES */
#define THROTTLE_KEY_MAX 64          /* longer non-IP strings are truncated */
#define DELAY_FIRST_MS 250
#define DELAY_MAX_MS 8000
#define FAILURES_CAP 1000000         /* keeps the counter far from overflow */

struct tentry {
	char key[THROTTLE_KEY_MAX];
	int failures;
	time_t last;                     /* time of the latest failure */
	struct tentry *hnext;            /* hash chain */
	struct tentry *prev, *next;      /* age list, oldest first */
};

struct throttle {
	int max_failures;                /* <= 0: never refuse, only delay */
	int window;                      /* seconds */
	uint64_t seed;
	struct tentry *oldest, *newest;
	size_t n;
	struct tentry *buckets[THROTTLE_BUCKETS];
};

/* IPv6 clients usually hold a whole /64, so one record covers the prefix;
 * IPv4-mapped IPv6 counts as its IPv4 address. Other strings are taken as is. */
static void make_key(const char *ip, char key[THROTTLE_KEY_MAX])
{
	struct in6_addr a6;
	char text[INET6_ADDRSTRLEN];
	if (inet_pton(AF_INET6, ip, &a6) != 1) {
		snprintf(key, THROTTLE_KEY_MAX, "%s", ip);
		return;
	}
	if (IN6_IS_ADDR_V4MAPPED(&a6)) {
		inet_ntop(AF_INET, &a6.s6_addr[12], key, THROTTLE_KEY_MAX);
		return;
	}
	memset(&a6.s6_addr[8], 0, 8);
	inet_ntop(AF_INET6, &a6, text, sizeof(text));
	snprintf(key, THROTTLE_KEY_MAX, "%s/64", text);
}

/* FNV-1a, seeded per table */
static size_t bucket_of(const struct throttle *t, const char *key)
{
	uint64_t h = t->seed ^ 14695981039346656037ULL;
	for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++) {
		h ^= *p;
		h *= 1099511628211ULL;
	}
	return (size_t)(h ^ (h >> 32)) & (THROTTLE_BUCKETS - 1);
}

static struct tentry **find_slot(struct throttle *t, const char *key)
{
	struct tentry **pp = &t->buckets[bucket_of(t, key)];
	while (*pp != NULL && strcmp((*pp)->key, key) != 0)
		pp = &(*pp)->hnext;
	return pp;
}

static void list_unlink(struct throttle *t, struct tentry *e)
{
	if (e->prev != NULL)
		e->prev->next = e->next;
	else
		t->oldest = e->next;
	if (e->next != NULL)
		e->next->prev = e->prev;
	else
		t->newest = e->prev;
	e->prev = e->next = NULL;
}

static void list_append(struct throttle *t, struct tentry *e)
{
	e->prev = t->newest;
	e->next = NULL;
	if (t->newest != NULL)
		t->newest->next = e;
	else
		t->oldest = e;
	t->newest = e;
}

static void entry_remove(struct throttle *t, struct tentry *e)
{
	struct tentry **pp = find_slot(t, e->key);
	if (*pp != e)
		fatalx("throttle: record %s not in its chain", e->key);
	*pp = e->hnext;
	list_unlink(t, e);
	free(e);
	t->n--;
}

static bool expired(const struct throttle *t, const struct tentry *e, time_t now)
{
	return now - e->last >= (time_t)t->window;
}

/* The list is ordered by latest failure, so expired records sit at its head. */
static void expire(struct throttle *t, time_t now)
{
	while (t->oldest != NULL && expired(t, t->oldest, now))
		entry_remove(t, t->oldest);
}

static struct tentry *entry_add(struct throttle *t, const char *key)
{
	if (t->n >= THROTTLE_MAX_ENTRIES)
		entry_remove(t, t->oldest);
	struct tentry *e = xcalloc(1, sizeof(*e));
	struct tentry **pp = find_slot(t, key);
	memcpy(e->key, key, sizeof(e->key));
	*pp = e;
	list_append(t, e);
	t->n++;
	return e;
}

static int delay_ms(int failures)
{
	if (failures <= 0)
		return 0;
	if (failures - 1 >= 5)           /* 250 << 5 == 8000 */
		return DELAY_MAX_MS;
	return DELAY_FIRST_MS << (failures - 1);
}

struct throttle *throttle_new(int max_failures, int window)
{
	struct throttle *t = xcalloc(1, sizeof(*t));
	t->seed = util_random64();
	throttle_configure(t, max_failures, window);
	return t;
}

void throttle_free(struct throttle **t_r)
{
	struct throttle *t = *t_r;
	*t_r = NULL;
	if (t == NULL)
		return;
	while (t->oldest != NULL) {
		struct tentry *e = t->oldest;
		t->oldest = e->next;
		free(e);
	}
	free(t);
}

/* On a config reload; existing records keep their counts. */
void throttle_configure(struct throttle *t, int max_failures, int window)
{
	t->max_failures = max_failures;
	t->window = window > 0 ? window : 0;
}

int throttle_check(struct throttle *t, const char *ip, time_t now)
{
	char key[THROTTLE_KEY_MAX];
	struct tentry *e;
	expire(t, now);
	make_key(ip, key);
	e = *find_slot(t, key);
	if (e == NULL)
		return 0;
	if (t->max_failures > 0 && e->failures >= t->max_failures)
		return -1;
	return delay_ms(e->failures);
}

void throttle_fail(struct throttle *t, const char *ip, time_t now)
{
	char key[THROTTLE_KEY_MAX];
	struct tentry *e;
	expire(t, now);
	make_key(ip, key);
	e = *find_slot(t, key);
	if (e == NULL)
		e = entry_add(t, key);
	else {
		list_unlink(t, e);
		list_append(t, e);
	}
	if (e->failures < FAILURES_CAP)
		e->failures++;
	e->last = now;
}

void throttle_success(struct throttle *t, const char *ip)
{
	char key[THROTTLE_KEY_MAX];
	struct tentry *e;
	make_key(ip, key);
	e = *find_slot(t, key);
	if (e != NULL)
		entry_remove(t, e);
}

size_t throttle_size(const struct throttle *t)
{
	return t->n;
}
