/* imap_cmd_message.c: the selected state's message map and its untagged updates
 * (RFC 9051 §7.5.1), sequence sets, flags, and the commands on messages: STORE,
 * EXPUNGE / UID EXPUNGE (RFC 4315), COPY / MOVE (RFC 6851, COPYUID), SEARCH
 * (ESEARCH RFC 4731, SAVE RFC 5182; programs from protocols/imap_search.h).
 *
 * The map is what this session told its client: one entry per sequence number
 * with the uid and the flags it last reported. The shared mailbox
 * (store_mailbox_state) is the truth; imap_updates() reports the differences.
 * A message expunged by another session stays in the map as a ghost until an
 * EXPUNGE response may be sent, so sequence numbers never move under a client
 * that is still using them. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "protocols/imap.h"
#include "protocols/imap_search.h"
#include "server/server.h"
#include "store/store.h"

#define MF_MASK IMAP_MF_MASK
_Static_assert(IMAP_MF_MASK == (MF_DRAFT | MF_FLAGGED | MF_PASSED | MF_REPLIED | MF_SEEN | MF_TRASHED),
    "IMAP_MF_MASK covers the Maildir flags");

/* ---------------------------------------------------------------- flags */

static const struct { const char *name; uint32_t bit; } flag_names[] = {
	{ "\\Answered", MF_REPLIED }, { "\\Flagged", MF_FLAGGED }, { "\\Deleted", MF_TRASHED },
	{ "\\Seen", MF_SEEN }, { "\\Draft", MF_DRAFT },
	/* Maildir's P ("passed") is what clients call $Forwarded (RFC 5788 registry) */
	{ "$Forwarded", MF_PASSED },
};

int imap_flag_parse(const char *name, uint32_t *flag_r, bool *kw_r)
{
	*flag_r = 0;
	*kw_r = false;
	for (size_t i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]); i++)
		if (strcasecmp(name, flag_names[i].name) == 0) {
			*flag_r = flag_names[i].bit;
			return 0;
		}
	if (name[0] == '\\' || name[0] == '\0')
		return -1;                   /* \Recent, \* and unknown system flags */
	for (const char *p = name; *p; p++)
		if ((unsigned char)*p <= 0x20 || *p == '(' || *p == ')' || *p == '{' || *p == '%' ||
		    *p == '*' || *p == '"' || *p == '\\' || *p == ']' || (unsigned char)*p >= 0x7f)
			return -1;
	*kw_r = true;
	return 0;
}

void imap_flags_out(struct imap_session *s, struct buf *out, uint32_t flags, uint64_t keywords)
{
	size_t start = out->len;
	for (size_t i = 0; i < sizeof(flag_names) / sizeof(flag_names[0]); i++)
		if (flags & flag_names[i].bit)
			buf_printf(out, "%s%s", out->len > start ? " " : "", flag_names[i].name);
	if ((flags & IMAP_F_RECENT) && !s->rev2)
		buf_printf(out, "%s\\Recent", out->len > start ? " " : "");
	if (s->mb == NULL)
		return;
	const struct store_mbox_state *st = store_mailbox_state(s->mb);
	for (size_t i = 0; i < st->nkeywords && i < 64; i++)
		if (keywords & ((uint64_t)1 << i))
			buf_printf(out, "%s%s", out->len > start ? " " : "", st->keywords[i]);
}

/* "* FLAGS (...)" and "* OK [PERMANENTFLAGS (...)]" for the folder's keywords */
void imap_send_flag_lists(struct imap_session *s)
{
	const struct store_mbox_state *st = store_mailbox_state(s->mb);
	struct buf b;
	buf_init(&b, 64 * 1024);
	buf_appends(&b, "* FLAGS (");
	imap_flags_out(s, &b, MF_MASK, st->nkeywords >= 64 ? UINT64_MAX : (((uint64_t)1 << st->nkeywords) - 1));
	buf_appends(&b, ")\r\n* OK [PERMANENTFLAGS (");
	if (!s->readonly) {
		size_t mark = b.len;
		imap_flags_out(s, &b, MF_MASK, st->nkeywords >= 64 ? UINT64_MAX :
		    (((uint64_t)1 << st->nkeywords) - 1));
		if (st->nkeywords < STORE_MAX_KEYWORDS)
			buf_appends(&b, b.len > mark ? " \\*" : "\\*");
	}
	buf_appends(&b, s->readonly ? ")] No permanent flags permitted\r\n" : ")] Flags permitted\r\n");
	imap_write(s, b.data, b.len);
	buf_free(&b);
	s->nkeywords_sent = st->nkeywords;
}

/* ---------------------------------------------------------------- the map */

static void map_push(struct imap_session *s, const struct store_msg *m, bool recent)
{
	if (s->nmsgs == s->msgs_cap) {
		s->msgs_cap = s->msgs_cap ? s->msgs_cap * 2 : 64;
		s->msgs = xreallocarray(s->msgs, s->msgs_cap, sizeof(*s->msgs));
	}
	struct imap_msg *e = &s->msgs[s->nmsgs++];
	e->uid = m->uid;
	e->flags = (m->flags & MF_MASK) | (recent ? IMAP_F_RECENT : 0);
	e->keywords = m->keywords;
	e->expunged = false;
}

static size_t count_recent(const struct imap_session *s)
{
	size_t n = 0;
	for (size_t i = 0; i < s->nmsgs; i++)
		if (s->msgs[i].flags & IMAP_F_RECENT)
			n++;
	return n;
}

void imap_map_load(struct imap_session *s)
{
	const struct store_mbox_state *st = store_mailbox_state(s->mb);
	uint32_t recent_from = store_mailbox_claim_recent(s->mb);
	s->nmsgs = 0;
	for (size_t i = 0; i < st->count; i++)
		map_push(s, &st->msgs[i], st->msgs[i].uid >= recent_from);
	s->nkeywords_sent = st->nkeywords;
}

/* map index of uid, or -1 (binary search: the map is in uid order) */
static ssize_t map_find(const struct imap_session *s, uint32_t uid)
{
	size_t lo = 0, hi = s->nmsgs;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (s->msgs[mid].uid == uid)
			return (ssize_t)mid;
		if (s->msgs[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return -1;
}

static void send_fetch_flags(struct imap_session *s, size_t idx, bool with_uid)
{
	struct buf b;
	buf_init(&b, 64 * 1024);
	const struct imap_msg *e = &s->msgs[idx];
	buf_printf(&b, "* %zu FETCH (", idx + 1);
	if (with_uid)
		buf_printf(&b, "UID %u ", e->uid);
	buf_appends(&b, "FLAGS (");
	imap_flags_out(s, &b, e->flags, e->keywords);
	buf_appends(&b, "))\r\n");
	imap_write(s, b.data, b.len);
	buf_free(&b);
}

/* Marks ghosts and reports flag changes of messages still present. */
static void compare_flags(struct imap_session *s, const struct store_mbox_state *st)
{
	size_t j = 0;
	for (size_t i = 0; i < s->nmsgs; i++) {
		struct imap_msg *e = &s->msgs[i];
		while (j < st->count && st->msgs[j].uid < e->uid)
			j++;
		if (j >= st->count || st->msgs[j].uid != e->uid) {
			e->expunged = true;
			continue;
		}
		uint32_t f = (st->msgs[j].flags & MF_MASK) | (e->flags & IMAP_F_RECENT);
		if (e->expunged || (f == e->flags && st->msgs[j].keywords == e->keywords))
			continue;
		e->flags = f;
		e->keywords = st->msgs[j].keywords;
		send_fetch_flags(s, i, s->uid_cmd);
	}
}

static void send_expunges(struct imap_session *s)
{
	size_t w = 0;
	for (size_t i = s->nmsgs; i-- > 0;)
		if (s->msgs[i].expunged)
			imap_printf(s, "* %zu EXPUNGE\r\n", i + 1);   /* descending: lower seqs stay valid */
	for (size_t i = 0; i < s->nmsgs; i++)
		if (!s->msgs[i].expunged)
			s->msgs[w++] = s->msgs[i];
	s->nmsgs = w;
}

void imap_updates(struct imap_session *s, bool allow_expunge)
{
	if (s->mb == NULL || s->closed)
		return;
	const struct store_mbox_state *st = store_mailbox_state(s->mb);
	if (st->deleted) {
		imap_printf(s, "* BYE Selected mailbox was deleted or renamed, reconnect please\r\n");
		imap_end(s, "mailbox deleted");
		return;
	}
	if (st->nkeywords != s->nkeywords_sent)
		imap_send_flag_lists(s);
	compare_flags(s, st);
	if (allow_expunge)
		send_expunges(s);
	uint32_t last = s->nmsgs ? s->msgs[s->nmsgs - 1].uid : 0;
	size_t before = s->nmsgs;
	size_t k = st->count;
	while (k > 0 && st->msgs[k - 1].uid > last)
		k--;
	if (k < st->count) {
		uint32_t recent_from = store_mailbox_claim_recent(s->mb);
		for (; k < st->count; k++)
			map_push(s, &st->msgs[k], st->msgs[k].uid >= recent_from);
	}
	if (s->nmsgs != before) {
		imap_printf(s, "* %zu EXISTS\r\n", s->nmsgs);
		if (!s->rev2)
			imap_printf(s, "* %zu RECENT\r\n", count_recent(s));
	}
}

void imap_mailbox_changed(void *arg)
{
	struct imap_session *s = arg;
	/* otherwise the next command's reply reports the change; RFC 2177: while idling, changes go out at once */
	if (s->idling && !s->closed)
		imap_updates(s, true);
}

/* ---------------------------------------------------------------- sequence sets */

static int add_index(size_t **v, size_t *n, size_t *cap, size_t idx)
{
	if (*n == *cap) {
		*cap = *cap ? *cap * 2 : 64;
		*v = xreallocarray(*v, *cap, sizeof(**v));
	}
	(*v)[(*n)++] = idx;
	return 0;
}

int imap_seqset_indexes(struct imap_session *s, const struct imap_arg *a, bool uid,
    size_t **idx_r, size_t *n_r)
{
	*idx_r = NULL;
	*n_r = 0;
	size_t len;
	const char *v = imap_arg_is_atom(a) ? imap_arg_value(&s->parser, a, &len) : NULL;
	struct imap_seqset *set = xmalloc(sizeof(*set));
	if (v == NULL || imap_seqset_parse(v, len, set) == -1) {
		free(set);
		return -1;
	}
	size_t cap = 0;
	if (set->dollar) {
		/* RFC 5182 §2.1: "$" is the saved result, kept as uids */
		for (size_t i = 0; i < s->nsaved; i++) {
			ssize_t k = map_find(s, s->saved[i]);
			if (k >= 0 && !s->msgs[k].expunged)
				add_index(idx_r, n_r, &cap, (size_t)k);
		}
		free(set);
		return 0;
	}
	if (!uid) {
		/* RFC 9051 §9: a number past the last message (or "*" in an empty
		 * mailbox) is an error */
		for (size_t i = 0; i < set->n; i++) {
			const struct imap_seqrange *r = &set->r[i];
			if ((r->lo == IMAP_SEQ_STAR || r->hi == IMAP_SEQ_STAR) && s->nmsgs == 0) {
				free(set);
				return -2;
			}
			if (r->lo > s->nmsgs || r->hi > s->nmsgs) {
				free(set);
				return -2;
			}
		}
	}
	uint32_t max = uid ? (s->nmsgs ? s->msgs[s->nmsgs - 1].uid : 0) : (uint32_t)s->nmsgs;
	for (size_t i = 0; i < s->nmsgs; i++) {
		uint32_t key = uid ? s->msgs[i].uid : (uint32_t)(i + 1);
		if (!s->msgs[i].expunged && imap_seqset_contains(set, key, max))
			add_index(idx_r, n_r, &cap, i);
	}
	free(set);
	return 0;
}

/* Sequence set argument to indexes; answers BAD itself on failure. */
static bool get_set(struct imap_session *s, const struct imap_arg *a, size_t **idx_r, size_t *n_r)
{
	int r = imap_seqset_indexes(s, a, s->uid_cmd, idx_r, n_r);
	if (r == -1)
		imap_bad(s, "Invalid sequence set");
	else if (r == -2)
		imap_bad(s, "Message sequence number out of range");
	return r == 0;
}

static uint32_t *uids_of(struct imap_session *s, const size_t *idx, size_t n)
{
	uint32_t *u = xcalloc(n ? n : 1, sizeof(*u));
	for (size_t i = 0; i < n; i++)
		u[i] = s->msgs[idx[i]].uid;
	return u;
}

/* ---------------------------------------------------------------- STORE */

struct store_ctx {
	uint32_t *uids;
	size_t n;
	bool silent;
};

static void store_ctx_free(void *p)
{
	struct store_ctx *c = p;
	free(c->uids);
	free(c);
}

static void store_done(void *arg, int error)
{
	struct imap_session *s = arg;
	struct store_ctx *c = s->cmd_ctx;
	s->req = NULL;
	if (error == ENOSPC) {
		imap_tagged(s, "NO", "[LIMIT] Too many keywords in this mailbox");
		return;
	}
	if (error != 0) {
		log_msg(LL_ERROR, "imap.store_failed", "user %s: %s", s->user, strerror(error));
		imap_tagged(s, "NO", "[SERVERBUG] Cannot change the flags");
		return;
	}
	const struct store_mbox_state *st = store_mailbox_state(s->mb);
	if (st->nkeywords != s->nkeywords_sent)
		imap_send_flag_lists(s);
	for (size_t i = 0; i < c->n; i++) {
		ssize_t k = map_find(s, c->uids[i]);
		const struct store_msg *m = store_mailbox_find(s->mb, c->uids[i]);
		if (k < 0 || m == NULL || s->msgs[k].expunged)
			continue;
		s->msgs[k].flags = (m->flags & MF_MASK) | (s->msgs[k].flags & IMAP_F_RECENT);
		s->msgs[k].keywords = m->keywords;
		if (!c->silent)
			send_fetch_flags(s, (size_t)k, s->uid_cmd);
	}
	imap_tagged(s, "OK", "STORE completed");
}

/* flags: "(f1 f2)" or "f1 f2" (RFC 3501 §6.4.6 allows both) */
static int parse_flag_args(struct imap_session *s, const struct imap_arg *a, uint32_t *flags_r,
    const char ***kw_r, size_t *nkw_r)
{
	const struct imap_parser *p = &s->parser;
	const struct imap_arg *f = a;
	bool list = a != NULL && a->type == IMAP_ARG_LIST;
	if (list) {
		if (imap_arg_next(p, a) != NULL)
			return -1;
		f = imap_arg_child(p, a);
	}
	*flags_r = 0;
	*nkw_r = 0;
	*kw_r = xcalloc(IMAP_MAX_ARGS, sizeof(char *));
	for (; f != NULL; f = imap_arg_next(p, f)) {
		if (f->type != IMAP_ARG_ATOM)
			return -1;
		const char *name = imap_arg_value(p, f, NULL);
		uint32_t bit;
		bool kw;
		if (imap_flag_parse(name, &bit, &kw) == -1)
			return -1;
		if (kw)
			(*kw_r)[(*nkw_r)++] = name;
		*flags_r |= bit;
	}
	return 0;
}

void imap_cmd_store(struct imap_session *s, const struct imap_arg *args)
{
	const struct imap_parser *p = &s->parser;
	const struct imap_arg *item = imap_arg_next(p, args);
	const char *it = imap_arg_is_atom(item) ? imap_arg_value(p, item, NULL) : NULL;
	if (it == NULL || imap_arg_next(p, item) == NULL) {
		imap_bad(s, "STORE needs a sequence set, an item and flags");
		return;
	}
	enum store_flag_op op = STORE_FLAGS_REPLACE;
	if (*it == '+' || *it == '-')
		op = *it++ == '+' ? STORE_FLAGS_ADD : STORE_FLAGS_REMOVE;
	bool silent = strcasecmp(it, "FLAGS.SILENT") == 0;
	if (!silent && strcasecmp(it, "FLAGS") != 0) {
		imap_bad(s, "STORE item must be FLAGS, +FLAGS or -FLAGS (.SILENT)");
		return;
	}
	uint32_t flags;
	const char **kws = NULL;
	size_t nkw;
	if (parse_flag_args(s, imap_arg_next(p, item), &flags, &kws, &nkw) == -1) {
		free(kws);
		imap_bad(s, "Invalid flag list");
		return;
	}
	size_t *idx, n;
	if (!get_set(s, args, &idx, &n)) {
		free(kws);
		return;
	}
	if (s->readonly) {
		free(kws);
		free(idx);
		imap_tagged(s, "NO", "[READ-ONLY] Mailbox is read-only");
		return;
	}
	if (n == 0) {
		free(kws);
		free(idx);
		imap_tagged(s, "OK", "STORE completed");
		return;
	}
	struct store_ctx *c = xcalloc(1, sizeof(*c));
	c->uids = uids_of(s, idx, n);
	c->n = n;
	c->silent = silent;
	free(idx);
	imap_set_ctx(s, c, store_ctx_free);
	imap_set_busy(s, true);
	s->req = store_mailbox_store(s->mb, c->uids, n, op, flags, kws, nkw, store_done, s);
	free(kws);
}

/* ---------------------------------------------------------------- EXPUNGE */

static void expunge_done(void *arg, int error)
{
	struct imap_session *s = arg;
	s->req = NULL;
	if (error != 0) {
		log_msg(LL_ERROR, "imap.expunge_failed", "user %s: %s", s->user, strerror(error));
		imap_tagged(s, "NO", "[SERVERBUG] Some messages could not be expunged");
		return;
	}
	imap_tagged(s, "OK", "EXPUNGE completed");
}

/* uids with \Deleted now (as the store knows them), limited to idx when given */
static uint32_t *deleted_uids(struct imap_session *s, const size_t *idx, size_t nidx,
    bool all, size_t *n_r)
{
	size_t total = all ? s->nmsgs : nidx;
	uint32_t *u = xcalloc(total ? total : 1, sizeof(*u));
	size_t n = 0;
	for (size_t i = 0; i < total; i++) {
		const struct imap_msg *e = &s->msgs[all ? i : idx[i]];
		const struct store_msg *m = e->expunged ? NULL : store_mailbox_find(s->mb, e->uid);
		if (m != NULL && (m->flags & MF_TRASHED))
			u[n++] = e->uid;
	}
	*n_r = n;
	return u;
}

void imap_cmd_expunge(struct imap_session *s, const struct imap_arg *args)
{
	size_t *idx = NULL, nidx = 0;
	if (s->uid_cmd) {
		/* UID EXPUNGE (RFC 4315 §2.1): only \Deleted messages of the set */
		if (args == NULL || imap_arg_next(&s->parser, args) != NULL) {
			imap_bad(s, "UID EXPUNGE needs a UID set");
			return;
		}
		if (!get_set(s, args, &idx, &nidx))
			return;
	} else if (args != NULL) {
		imap_bad(s, "EXPUNGE takes no arguments");
		return;
	}
	if (s->readonly) {
		free(idx);
		imap_tagged(s, "NO", "[READ-ONLY] Mailbox is read-only");
		return;
	}
	size_t n;
	uint32_t *u = deleted_uids(s, idx, nidx, !s->uid_cmd, &n);
	free(idx);
	if (n == 0) {
		free(u);
		imap_tagged(s, "OK", "EXPUNGE completed");
		return;
	}
	imap_set_busy(s, true);
	s->req = store_mailbox_expunge(s->mb, u, n, expunge_done, s);
	free(u);
}

/* CLOSE (RFC 9051 §6.4.1): silent expunge, then leave the mailbox. */
static void close_done(void *arg, int error)
{
	struct imap_session *s = arg;
	s->req = NULL;
	if (error != 0)
		log_msg(LL_ERROR, "imap.expunge_failed", "user %s: %s", s->user, strerror(error));
	imap_unselect(s);
	imap_tagged(s, "OK", "CLOSE completed");
}

void imap_cmd_close(struct imap_session *s, const struct imap_arg *args)
{
	(void)args;
	size_t n = 0;
	uint32_t *u = s->readonly ? NULL : deleted_uids(s, NULL, 0, true, &n);
	if (n == 0) {
		free(u);
		imap_unselect(s);
		imap_tagged(s, "OK", "CLOSE completed");
		return;
	}
	imap_set_busy(s, true);
	s->req = store_mailbox_expunge(s->mb, u, n, close_done, s);
	free(u);
}

/* ---------------------------------------------------------------- COPY, MOVE */

static void copy_done(void *arg, int error, uint32_t dst_uidvalidity, const uint32_t *src,
    const uint32_t *dst, size_t n)
{
	struct imap_session *s = arg;
	bool move = s->cmd_ctx != NULL;
	s->req = NULL;
	if (error == ENOENT) {
		imap_tagged(s, "NO", "[TRYCREATE] No such mailbox");
		return;
	}
	if (error == EINVAL) {
		imap_tagged(s, "NO", "[CANNOT] Invalid mailbox name");
		return;
	}
	if (error != 0) {
		log_msg(LL_ERROR, "imap.copy_failed", "user %s: %s", s->user, strerror(error));
		imap_tagged(s, "NO", error == EDQUOT || error == ENOSPC ? "[OVERQUOTA] Not enough space" :
		    "[SERVERBUG] Copy failed");
		return;
	}
	struct buf b;
	buf_init(&b, 1024 * 1024);
	if (n > 0) {
		buf_printf(&b, "[COPYUID %u ", dst_uidvalidity);
		/* the pairs come in uid order, so both lists compress alike */
		imap_search_set_format(&b, src, n);
		buf_appendc(&b, ' ');
		imap_search_set_format(&b, dst, n);
		buf_appends(&b, "] ");
	}
	if (move) {
		/* RFC 6851 §4.3: COPYUID goes out untagged, before the EXPUNGEs */
		if (b.len > 0) {
			b.data[b.len - 1] = '\0';      /* the space after "]" */
			imap_printf(s, "* OK %s Moved\r\n", b.data);
		}
		buf_free(&b);
		imap_tagged(s, "OK", "MOVE completed");
		return;
	}
	imap_tagged(s, "OK", "%sCOPY completed", b.len ? b.data : "");
	buf_free(&b);
}

static void copy_or_move(struct imap_session *s, const struct imap_arg *args, bool move)
{
	const struct imap_parser *p = &s->parser;
	const struct imap_arg *mbox = imap_arg_next(p, args);
	if (mbox == NULL || imap_arg_next(p, mbox) != NULL) {
		imap_bad(s, "%s needs a sequence set and a mailbox", move ? "MOVE" : "COPY");
		return;
	}
	size_t *idx, n;
	if (!get_set(s, args, &idx, &n))
		return;
	char *to = imap_mailbox_arg(s, mbox);
	if (to == NULL || store_name_check(to) == -1) {
		free(idx);
		free(to);
		imap_tagged(s, "NO", "[CANNOT] Invalid mailbox name");
		return;
	}
	if (move && s->readonly) {
		free(idx);
		free(to);
		imap_tagged(s, "NO", "[READ-ONLY] Mailbox is read-only");
		return;
	}
	if (n == 0) {
		free(idx);
		free(to);
		imap_tagged(s, "OK", "%s completed", move ? "MOVE" : "COPY");
		return;
	}
	uint32_t *u = uids_of(s, idx, n);
	free(idx);
	if (move)
		imap_set_ctx(s, xstrdup("move"), free);
	imap_set_busy(s, true);
	s->req = store_mailbox_copy(s->mb, u, n, to, move, copy_done, s);
	free(u);
	free(to);
}

void imap_cmd_copy(struct imap_session *s, const struct imap_arg *args)
{
	copy_or_move(s, args, false);
}

void imap_cmd_move(struct imap_session *s, const struct imap_arg *args)
{
	copy_or_move(s, args, true);
}

/* ---------------------------------------------------------------- SEARCH */

/* Messages whose text a SEARCH needs are read SEARCH_BATCH at a time in one
 * worker job (store_mailbox_read_many: one hand-off per batch, not per message);
 * bigger ones are loaded whole the ordinary way. Results stay in message order. */
#define SEARCH_BATCH 64

struct search_ctx {
	struct imap_session *s;
	struct store_req *breq;      /* the batch being read */
	struct store_blob *blobs;    /* the batch read: map indices bidx[k] */
	size_t *bidx;
	size_t nblobs, bpos;         /* next blob to match */
	struct imap_search *prog;
	struct imap_search_opts opts;
	unsigned needs;
	uint32_t *saved_copy;        /* "$" as it was when the command started */
	size_t nsaved;
	uint32_t *res;
	size_t nres;
	size_t next;                 /* map index to look at next */
	uint32_t max_uid;
	size_t max_seq;
};

static void search_ctx_free(void *p)
{
	struct search_ctx *c = p;
	store_cancel(&c->breq);
	store_blobs_free(c->blobs, c->nblobs);
	free(c->bidx);
	imap_search_free(&c->prog);
	free(c->saved_copy);
	free(c->res);
	free(c);
}

static void search_run(struct imap_session *s);

static void search_eval(struct imap_session *s, size_t i, const char *data, size_t len,
    const struct mime_message *mime)
{
	struct search_ctx *c = s->cmd_ctx;
	const struct store_mbox_state *st = store_mailbox_state(s->mb);
	const struct imap_msg *e = &s->msgs[i];
	const struct store_msg *m = store_mailbox_find(s->mb, e->uid);
	if (m == NULL)
		return;
	struct imap_search_ctx sc = {
		.max_seq = (uint32_t)c->max_seq, .max_uid = c->max_uid,
		.saved = c->saved_copy, .nsaved = c->nsaved,
		.kwnames = st->keywords, .nkw = st->nkeywords,
	};
	struct imap_search_msg sm = {
		.seq = (uint32_t)(i + 1), .uid = e->uid, .flags = m->flags & MF_MASK,
		.recent = (e->flags & IMAP_F_RECENT) != 0, .keywords = m->keywords, .size = m->size,
		.internal_date = m->internal_date, .data = data, .len = len, .mime = mime,
	};
	if (imap_search_match(c->prog, &sc, &sm))
		c->res[c->nres++] = s->uid_cmd ? e->uid : (uint32_t)(i + 1);
}

static void search_loaded(struct imap_session *s, int error, const char *data, size_t len,
    const struct mime_message *mime)
{
	struct search_ctx *c = s->cmd_ctx;
	if (error == 0)
		search_eval(s, c->next, data, len, mime);
	c->next++;
	search_run(s);
}

static void search_finish(struct imap_session *s)
{
	struct search_ctx *c = s->cmd_ctx;
	struct buf b;
	buf_init(&b, 64 * 1024 * 1024);
	if (imap_search_format(&b, s->tag, s->uid_cmd, &c->opts, c->res, c->nres) == 0)
		imap_write(s, b.data, b.len);
	buf_free(&b);
	if (c->opts.ret & IMAP_SEARCH_RET_SAVE) {
		size_t n = imap_search_save_filter(&c->opts, c->res, c->nres);
		free(s->saved);
		s->saved = xcalloc(n ? n : 1, sizeof(uint32_t));
		for (size_t i = 0; i < n; i++)
			s->saved[i] = s->uid_cmd ? c->res[i] : s->msgs[c->res[i] - 1].uid;
		s->nsaved = n;
	}
	imap_tagged(s, "OK", "SEARCH completed");
}

static void batch_read(void *arg, struct store_blob *blobs, size_t n)
{
	struct search_ctx *c = arg;
	c->breq = NULL;
	c->blobs = blobs;
	c->nblobs = n;
	c->bpos = 0;
	search_run(c->s);
}

/* Matches the batch read, then reads the next; false when it must wait. */
static bool search_content(struct imap_session *s, struct search_ctx *c)
{
	for (;;) {
		while (c->blobs != NULL && c->bpos < c->nblobs) {
			struct store_blob *b = &c->blobs[c->bpos];
			size_t i = c->bidx[c->bpos];
			if (b->error == EFBIG && c->next <= i) {
				/* too big for a batch: read it whole, then go on (search_loaded) */
				c->next = i;
				const char *d;
				size_t len;
				const struct mime_message *mime;
				if (imap_msg_load(s, s->msgs[i].uid, true, search_loaded, &d, &len, &mime) == 0) {
					imap_set_busy(s, true);
					return false;
				}
				search_eval(s, i, d, len, mime);
			} else if (b->error == 0) {
				struct mime_message *mime = mime_parse(b->data, b->len, NULL);
				search_eval(s, i, b->data, b->len, mime);
				mime_message_free(&mime);
			}
			c->bpos++;
			c->next = i + 1;
		}
		store_blobs_free(c->blobs, c->nblobs);
		c->blobs = NULL;
		c->nblobs = c->bpos = 0;
		/* the next batch: the messages still in the folder from c->next on */
		const struct store_msg *ms[SEARCH_BATCH];
		size_t n = 0;
		if (c->bidx == NULL)
			c->bidx = xcalloc(SEARCH_BATCH, sizeof(*c->bidx));
		for (; c->next < s->nmsgs && n < SEARCH_BATCH; c->next++) {
			const struct store_msg *m = s->msgs[c->next].expunged ? NULL
			    : store_mailbox_find(s->mb, s->msgs[c->next].uid);
			if (m != NULL) {
				c->bidx[n] = c->next;
				ms[n++] = m;
			}
		}
		if (n == 0)
			return true;
		c->next = c->bidx[0];    /* advanced again as the batch is matched */
		c->breq = store_mailbox_read_many(s->mb, ms, n, batch_read, c);
		imap_set_busy(s, true);
		return false;
	}
}

static void search_run(struct imap_session *s)
{
	struct search_ctx *c = s->cmd_ctx;
	bool content = c->needs & (IMAP_SEARCH_NEED_HEADER | IMAP_SEARCH_NEED_BODY);
	if (content) {
		if (!s->closed && search_content(s, c))
			search_finish(s);
		return;
	}
	while (c->next < s->nmsgs && !s->closed) {
		size_t i = c->next;
		if (s->msgs[i].expunged) {
			c->next++;
			continue;
		}
		if (!content) {
			search_eval(s, i, NULL, 0, NULL);
			c->next++;
			continue;
		}
		const char *data;
		size_t len;
		const struct mime_message *mime;
		if (imap_msg_load(s, s->msgs[i].uid, true, search_loaded, &data, &len, &mime) == 0) {
			imap_set_busy(s, true);
			return;
		}
		search_eval(s, i, data, len, mime);
		c->next++;
	}
	if (!s->closed)
		search_finish(s);
}

void imap_cmd_search(struct imap_session *s, const struct imap_arg *args)
{
	struct search_ctx *c = xcalloc(1, sizeof(*c));
	const char *err = NULL;
	int r = imap_search_parse(&s->parser, args, &c->prog, &c->opts, &err);
	if (r != IMAP_SEARCH_OK) {
		search_ctx_free(c);
		if (r == IMAP_SEARCH_BADCHARSET)
			imap_tagged(s, "NO", "[BADCHARSET (UTF-8)] Unsupported charset");
		else
			imap_bad(s, "%s", err ? err : "Invalid search program");
		return;
	}
	if (s->rev2)
		c->opts.esearch = true;       /* RFC 9051 §7.3.4 */
	c->needs = imap_search_needs(c->prog);
	if (s->nsaved > 0) {
		c->saved_copy = xcalloc(s->nsaved, sizeof(uint32_t));
		memcpy(c->saved_copy, s->saved, s->nsaved * sizeof(uint32_t));
		c->nsaved = s->nsaved;
	}
	c->res = xcalloc(s->nmsgs ? s->nmsgs : 1, sizeof(uint32_t));
	c->s = s;
	c->max_seq = s->nmsgs;
	c->max_uid = s->nmsgs ? s->msgs[s->nmsgs - 1].uid : 0;
	imap_set_ctx(s, c, search_ctx_free);
	search_run(s);
}
