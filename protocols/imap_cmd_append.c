/* imap_cmd_append.c: APPEND (RFC 9051 §6.3.12, RFC 7889 APPENDLIMIT, RFC 4315
 * APPENDUID) of the message imap_session.c streamed into an unlinked temp file,
 * and the storage accounting it checks: GETQUOTA / GETQUOTAROOT (RFC 9208,
 * QUOTA=RES-STORAGE) over the account's quota from the config. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "protocols/imap.h"
#include "server/server.h"
#include "store/store.h"

/* ---------------------------------------------------------------- quota */

struct quota_ctx {
	char *name;                  /* GETQUOTAROOT's mailbox, NULL for GETQUOTA */
};

static void quota_ctx_free(void *p)
{
	struct quota_ctx *c = p;
	free(c->name);
	free(c);
}

static uint64_t user_quota(struct imap_session *s)
{
	const struct account *a = auth_find(server->auth, s->user);
	return a != NULL ? a->quota : 0;
}

static void quota_done(void *arg, int error, uint64_t bytes, uint64_t messages)
{
	struct imap_session *s = arg;
	struct quota_ctx *c = s->cmd_ctx;
	(void)messages;
	s->req = NULL;
	if (error != 0) {
		imap_tagged(s, "NO", "[SERVERBUG] Cannot compute the usage");
		return;
	}
	uint64_t q = user_quota(s);
	if (c->name != NULL) {
		struct buf b;
		buf_init(&b, 4096);
		buf_appends(&b, "* QUOTAROOT ");
		imap_mailbox_out(s, &b, c->name);
		buf_appends(&b, q ? " \"\"\r\n" : "\r\n");
		imap_write(s, b.data, b.len);
		buf_free(&b);
	}
	/* RFC 9208 §5.1: STORAGE in units of 1024 octets */
	if (q)
		imap_printf(s, "* QUOTA \"\" (STORAGE %llu %llu)\r\n",
		    (unsigned long long)((bytes + 1023) / 1024), (unsigned long long)(q / 1024));
	imap_tagged(s, "OK", "%s completed", c->name ? "GETQUOTAROOT" : "GETQUOTA");
}

void imap_cmd_getquota(struct imap_session *s, const struct imap_arg *args)
{
	size_t len;
	const char *root = imap_arg_astring(&s->parser, args, &len);
	if (root == NULL || imap_arg_next(&s->parser, args) != NULL) {
		imap_bad(s, "GETQUOTA needs a quota root");
		return;
	}
	if (len != 0 || user_quota(s) == 0) {
		imap_tagged(s, "NO", "[NONEXISTENT] No such quota root");
		return;
	}
	imap_set_ctx(s, xcalloc(1, sizeof(struct quota_ctx)), quota_ctx_free);
	imap_set_busy(s, true);
	s->req = store_user_usage(server->store, s->user, quota_done, s);
}

void imap_cmd_getquotaroot(struct imap_session *s, const struct imap_arg *args)
{
	if (args == NULL || imap_arg_next(&s->parser, args) != NULL) {
		imap_bad(s, "GETQUOTAROOT needs one mailbox name");
		return;
	}
	char *name = imap_mailbox_arg(s, args);
	if (name == NULL || store_name_check(name) == -1) {
		free(name);
		imap_tagged(s, "NO", "[CANNOT] Invalid mailbox name");
		return;
	}
	struct quota_ctx *c = xcalloc(1, sizeof(*c));
	c->name = name;
	imap_set_ctx(s, c, quota_ctx_free);
	imap_set_busy(s, true);
	s->req = store_user_usage(server->store, s->user, quota_done, s);
}

/* ---------------------------------------------------------------- APPEND */

struct append_ctx {
	char *name;
	uint32_t flags;
	const char **kws;            /* point into the parser's data, valid until the reply */
	size_t nkw;
	time_t date;
	uint64_t size;
};

static void append_ctx_free(void *p)
{
	struct append_ctx *c = p;
	free(c->name);
	free(c->kws);
	free(c);
}

/* date-time (RFC 9051 §9): "dd-Mon-yyyy hh:mm:ss +zzzz", day may be space-padded */
static int parse_date_time(const char *v, time_t *t_r)
{
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	char mon[4];
	int d, y, hh, mm, ss, zone;
	char sign;
	char tail;
	if (sscanf(v, "%2d-%3c-%4d %2d:%2d:%2d %c%4d%c", &d, mon, &y, &hh, &mm, &ss, &sign, &zone,
	    &tail) != 8 || (sign != '+' && sign != '-'))
		return -1;
	mon[3] = '\0';
	const char *m = strstr(months, mon);
	if (m == NULL || (m - months) % 3 != 0 || d < 1 || d > 31 || hh > 23 || mm > 59 ||
	    ss > 60 || y < 1970 || zone % 100 > 59)
		return -1;
	struct tm tm = { .tm_mday = d, .tm_mon = (int)(m - months) / 3, .tm_year = y - 1900,
	    .tm_hour = hh, .tm_min = mm, .tm_sec = ss };
	time_t t = timegm(&tm);
	int off = (zone / 100) * 3600 + (zone % 100) * 60;
	*t_r = sign == '+' ? t - off : t + off;
	return 0;
}

static void append_stored(void *arg, int error, uint32_t uidvalidity, uint32_t uid)
{
	struct imap_session *s = arg;
	s->req = NULL;
	switch (error) {
	case 0:
		imap_tagged(s, "OK", "[APPENDUID %u %u] APPEND completed", uidvalidity, uid);
		return;
	case ENOENT:
		imap_tagged(s, "NO", "[TRYCREATE] No such mailbox");
		return;
	case EINVAL:
		imap_tagged(s, "NO", "[CANNOT] Invalid mailbox name");
		return;
	case ENOSPC:
		imap_tagged(s, "NO", "[LIMIT] Too many keywords in this mailbox");
		return;
	case EFBIG:
		imap_tagged(s, "NO", "[TOOBIG] Message larger than APPENDLIMIT");
		return;
	}
	log_msg(LL_ERROR, "imap.append_failed", "user %s: %s", s->user, strerror(error));
	imap_tagged(s, "NO", "[SERVERBUG] APPEND failed");
}

static void append_store(struct imap_session *s)
{
	struct append_ctx *c = s->cmd_ctx;
	int fd = s->lit.fd;
	s->lit.fd = -1;                  /* the store takes it */
	imap_set_busy(s, true);
	s->req = store_append(server->store, s->user, c->name, fd, imap_append_limit(), c->flags,
	    c->kws, c->nkw, c->date, append_stored, s);
}

static void append_usage(void *arg, int error, uint64_t bytes, uint64_t messages)
{
	struct imap_session *s = arg;
	struct append_ctx *c = s->cmd_ctx;
	(void)messages;
	s->req = NULL;
	uint64_t q = user_quota(s);
	if (error == 0 && q != 0 && bytes + c->size > q) {
		imap_tagged(s, "NO", "[OVERQUOTA] Quota exceeded");
		return;
	}
	append_store(s);
}

/* The message came through the parser (a literal the session did not take for
 * a message, e.g. written inside a list): it goes to a temp file all the same. */
static int literal_to_file(struct imap_session *s, const struct imap_arg *lit)
{
	size_t len;
	const char *v = imap_arg_value(&s->parser, lit, &len);
	int fd = imap_tmpfile();
	if (fd == -1)
		return -1;
	if (util_write_all(fd, v, len) == -1) {
		close(fd);
		return -1;
	}
	s->lit.fd = fd;
	s->lit.size = len;
	return 0;
}

static int append_parse(struct imap_session *s, const struct imap_arg *a, struct append_ctx *c,
    const struct imap_arg **lit_r)
{
	const struct imap_parser *p = &s->parser;
	const struct imap_arg *k = imap_arg_next(p, a);
	if (k != NULL && k->type == IMAP_ARG_LIST) {
		c->kws = xcalloc(k->count ? k->count : 1, sizeof(char *));
		for (const struct imap_arg *f = imap_arg_child(p, k); f != NULL; f = imap_arg_next(p, f)) {
			uint32_t bit;
			bool kw;
			const char *name = f->type == IMAP_ARG_ATOM ? imap_arg_value(p, f, NULL) : NULL;
			if (name == NULL || imap_flag_parse(name, &bit, &kw) == -1)
				return -1;
			c->flags |= bit;
			if (kw)
				c->kws[c->nkw++] = name;
		}
		k = imap_arg_next(p, k);
	}
	if (k != NULL && k->type == IMAP_ARG_QUOTED) {
		if (parse_date_time(imap_arg_value(p, k, NULL), &c->date) == -1)
			return -1;
		k = imap_arg_next(p, k);
	}
	if (k != NULL && imap_arg_is_atom(k) && s->utf8 &&
	    strcasecmp(imap_arg_value(p, k, NULL), "UTF8") == 0) {
		/* RFC 6855 §4: "UTF8 (~{n}...)" carries a message with UTF-8 headers */
		k = imap_arg_next(p, k);
		if (k == NULL || k->type != IMAP_ARG_LIST || k->count != 1)
			return -1;
		k = imap_arg_child(p, k);
	}
	if (k == NULL || k->type != IMAP_ARG_LITERAL || imap_arg_next(p, k) != NULL)
		return -1;
	*lit_r = k;
	return 0;
}

void imap_cmd_append(struct imap_session *s, const struct imap_arg *args)
{
	struct append_ctx *c = xcalloc(1, sizeof(*c));
	imap_set_ctx(s, c, append_ctx_free);
	const struct imap_arg *lit = NULL;
	if (args == NULL || append_parse(s, args, c, &lit) == -1) {
		imap_bad(s, "APPEND needs a mailbox, optional flags and date, and a message literal");
		return;
	}
	if (s->lit.too_big) {
		imap_tagged(s, "NO", "[TOOBIG] Message larger than APPENDLIMIT %llu",
		    (unsigned long long)imap_append_limit());
		return;
	}
	if (s->lit.fd == -1 && !s->lit.failed && literal_to_file(s, lit) == -1)
		s->lit.failed = true;
	if (s->lit.failed) {
		imap_tagged(s, "NO", "[SERVERBUG] Cannot store the message");
		return;
	}
	c->size = s->lit.size;
	if (c->size == 0) {
		imap_tagged(s, "NO", "Empty message");
		return;
	}
	c->name = imap_mailbox_arg(s, args);
	if (c->name == NULL || store_name_check(c->name) == -1) {
		imap_tagged(s, "NO", "[CANNOT] Invalid mailbox name");
		return;
	}
	imap_set_busy(s, true);
	if (user_quota(s) != 0)
		s->req = store_user_usage(server->store, s->user, append_usage, s);
	else
		append_store(s);
}
