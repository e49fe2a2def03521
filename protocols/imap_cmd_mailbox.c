/* imap_cmd_mailbox.c: IMAP commands on mailboxes: SELECT, EXAMINE, UNSELECT
 * (RFC 3691), CREATE, DELETE, RENAME, SUBSCRIBE, UNSUBSCRIBE, LIST (RFC 5258
 * LIST-EXTENDED, RFC 5819 LIST-STATUS, RFC 6154 SPECIAL-USE, RFC 3348 CHILDREN),
 * LSUB, NAMESPACE (RFC 2342) and STATUS, plus mailbox name coding: modified
 * UTF-7 for rev1 clients, UTF-8 after ENABLE IMAP4rev2 / UTF8=ACCEPT. APPEND and
 * the QUOTA commands are in imap_cmd_append.c. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/mutf7.h"
#include "common/xmalloc.h"
#include "protocols/imap.h"
#include "protocols/mime.h"
#include "server/server.h"
#include "store/store.h"

#define LIST_MAX_PATTERNS 32
#define LIST_MAX_PATTERN 1024       /* octets; encoded names are far shorter */
#define STATUS_OUT_MAX (64 * 1024)

/* ---------------------------------------------------------------- names */

char *imap_mailbox_arg(struct imap_session *s, const struct imap_arg *a)
{
	size_t len;
	const char *v = imap_arg_astring(&s->parser, a, &len);
	if (v == NULL || len == 0 || memchr(v, '\0', len) != NULL)
		return NULL;
	struct buf b;
	buf_init(&b, 4 * STORE_MAX_NAME);
	if (s->utf8) {
		if (buf_append(&b, v, len) == -1) {
			buf_free(&b);
			return NULL;
		}
	} else if (mutf7_decode(v, len, &b) == -1) {
		buf_free(&b);
		return NULL;
	}
	char *name = store_name_normalize(b.data);
	buf_free(&b);
	return name;
}

/* The name as the client sees it: UTF-8, or modified UTF-7 for rev1 clients. */
static int name_encoded(struct imap_session *s, const char *name, struct buf *out)
{
	if (s->utf8)
		return buf_appends(out, name);
	return mutf7_encode(name, strlen(name), out);
}

/* ASTRING-CHAR (RFC 9051 §9): an atom character or "]" */
static bool astring_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != '{' && c != '%' && c != '*' &&
	    c != '"' && c != '\\';
}

void imap_mailbox_out(struct imap_session *s, struct buf *out, const char *name)
{
	struct buf b;
	buf_init(&b, 8 * STORE_MAX_NAME);
	if (name_encoded(s, name, &b) == -1)
		buf_appends(&b, name);
	const char *v = b.data ? b.data : "";
	/* an atom where one will do (as Dovecot answers), else a string; NIL as an
	 * atom would read as the absent value */
	bool atom = b.len > 0 && strcasecmp(v, "NIL") != 0;
	for (size_t i = 0; i < b.len && atom; i++)
		atom = astring_char((unsigned char)v[i]);
	/* UTF-8 goes into quoted strings after ENABLE (RFC 9051 §4.3, RFC 6855 §3) */
	bool quoted = !atom;
	for (size_t i = 0; i < b.len && quoted; i++)
		quoted = (unsigned char)v[i] >= 0x20 && v[i] != 0x7f && (s->utf8 || (unsigned char)v[i] < 0x80);
	if (atom) {
		buf_append(out, v, b.len);
	} else if (quoted) {
		buf_appendc(out, '"');
		for (size_t i = 0; i < b.len; i++) {
			if (v[i] == '"' || v[i] == '\\')
				buf_appendc(out, '\\');
			buf_appendc(out, v[i]);
		}
		buf_appendc(out, '"');
	} else {
		mime_imap_nstring(out, v, b.len, false);
	}
	buf_free(&b);
}

/* A mailbox argument for a command; answers NO [CANNOT] itself when unusable. */
static char *name_arg(struct imap_session *s, const struct imap_arg *a)
{
	char *name = imap_mailbox_arg(s, a);
	if (name == NULL || store_name_check(name) == -1) {
		free(name);
		imap_tagged(s, "NO", "[CANNOT] Invalid mailbox name");
		return NULL;
	}
	return name;
}

static bool one_arg(struct imap_session *s, const struct imap_arg *args, const char *what)
{
	if (args != NULL && imap_arg_next(&s->parser, args) == NULL)
		return true;
	imap_bad(s, "%s needs one mailbox name", what);
	return false;
}

/* ---------------------------------------------------------------- SELECT */

void imap_unselect(struct imap_session *s)
{
	store_mailbox_unwatch(&s->watch);
	store_mailbox_close(&s->mb);
	imap_cache_free(s);
	free(s->msgs);
	s->msgs = NULL;
	s->nmsgs = s->msgs_cap = 0;
	free(s->mbox_name);
	s->mbox_name = NULL;
	/* RFC 5182 §2.1: the saved result does not survive the mailbox */
	free(s->saved);
	s->saved = NULL;
	s->nsaved = 0;
	if (s->state == IMAP_ST_SELECTED)
		s->state = IMAP_ST_AUTH;
}

static void select_data(struct imap_session *s)
{
	const struct store_mbox_state *st = store_mailbox_state(s->mb);
	imap_send_flag_lists(s);
	imap_printf(s, "* %zu EXISTS\r\n", s->nmsgs);
	if (!s->rev2) {
		size_t recent = 0, unseen = 0;
		for (size_t i = 0; i < s->nmsgs; i++) {
			if (s->msgs[i].flags & IMAP_F_RECENT)
				recent++;
			if (unseen == 0 && !(s->msgs[i].flags & MF_SEEN))
				unseen = i + 1;
		}
		imap_printf(s, "* %zu RECENT\r\n", recent);
		if (unseen)
			imap_printf(s, "* OK [UNSEEN %zu] First unseen\r\n", unseen);
	}
	imap_printf(s, "* OK [UIDVALIDITY %u] UIDs valid\r\n", st->uidvalidity);
	imap_printf(s, "* OK [UIDNEXT %u] Predicted next UID\r\n", st->uidnext);
	if (s->rev2) {
		/* RFC 9051 §6.3.2: the mailbox name, as the server spells it */
		struct buf b;
		buf_init(&b, 4096);
		buf_appends(&b, "* LIST () \"/\" ");
		imap_mailbox_out(s, &b, s->mbox_name);
		buf_appends(&b, "\r\n");
		imap_write(s, b.data, b.len);
		buf_free(&b);
	}
}

static void select_done(void *arg, int error, struct store_mailbox *mb)
{
	struct imap_session *s = arg;
	s->req = NULL;
	if (error != 0) {
		free(s->mbox_name);
		s->mbox_name = NULL;
		if (error == ENOENT)
			imap_tagged(s, "NO", "[NONEXISTENT] Mailbox doesn't exist");
		else if (error == EINVAL)
			imap_tagged(s, "NO", "[CANNOT] Invalid mailbox name");
		else {
			log_msg(LL_ERROR, "imap.select_failed", "user %s: %s", s->user, strerror(error));
			imap_tagged(s, "NO", "[SERVERBUG] Cannot open the mailbox");
		}
		return;
	}
	s->mb = mb;
	s->watch = store_mailbox_watch(mb, imap_mailbox_changed, s);
	imap_map_load(s);
	select_data(s);
	s->state = IMAP_ST_SELECTED;
	imap_tagged(s, "OK", "[%s] %s completed", s->readonly ? "READ-ONLY" : "READ-WRITE",
	    s->readonly ? "EXAMINE" : "SELECT");
}

static void select_common(struct imap_session *s, const struct imap_arg *args, bool readonly)
{
	const struct imap_parser *p = &s->parser;
	const struct imap_arg *params = imap_arg_next(p, args);
	if (args == NULL || (params != NULL && (params->type != IMAP_ARG_LIST ||
	    imap_arg_next(p, params) != NULL))) {
		imap_bad(s, "%s needs a mailbox name", readonly ? "EXAMINE" : "SELECT");
		return;
	}
	if (params != NULL && params->count > 0) {
		imap_bad(s, "No SELECT parameters are supported");
		return;
	}
	bool was_selected = s->mb != NULL;
	/* RFC 9051 §6.3.2: a failing SELECT leaves no mailbox selected either */
	imap_unselect(s);
	if (was_selected)
		imap_printf(s, "* OK [CLOSED] Previous mailbox closed\r\n");
	char *name = imap_mailbox_arg(s, args);
	if (name == NULL || store_name_check(name) == -1) {
		free(name);
		imap_tagged(s, "NO", "[CANNOT] Invalid mailbox name");
		return;
	}
	s->mbox_name = name;
	s->readonly = readonly;
	imap_set_busy(s, true);
	s->req = store_mailbox_open(server->store, s->user, name, select_done, s);
}

void imap_cmd_select(struct imap_session *s, const struct imap_arg *args)
{
	select_common(s, args, false);
}

void imap_cmd_examine(struct imap_session *s, const struct imap_arg *args)
{
	select_common(s, args, true);
}

void imap_cmd_unselect(struct imap_session *s, const struct imap_arg *args)
{
	if (args != NULL) {
		imap_bad(s, "UNSELECT takes no arguments");
		return;
	}
	imap_unselect(s);
	imap_tagged(s, "OK", "UNSELECT completed");
}

/* ---------------------------------------------------------------- CREATE ... */

static void folder_done(void *arg, int error)
{
	struct imap_session *s = arg;
	s->req = NULL;
	const char *what = s->cmd != NULL ? s->cmd->name : "Command";
	switch (error) {
	case 0:
		imap_tagged(s, "OK", "%s completed", what);
		return;
	case EEXIST:
		imap_tagged(s, "NO", "[ALREADYEXISTS] Mailbox already exists");
		return;
	case ENOENT:
		imap_tagged(s, "NO", "[NONEXISTENT] Mailbox doesn't exist");
		return;
	case EINVAL:
		imap_tagged(s, "NO", "[CANNOT] Invalid mailbox name");
		return;
	case EPERM:
		imap_tagged(s, "NO", "[CANNOT] INBOX cannot be deleted");
		return;
	case ENOTEMPTY:
		imap_tagged(s, "NO", "[INUSE] Delete the mailboxes below it first");
		return;
	}
	log_msg(LL_ERROR, "imap.folder_failed", "user %s: %s: %s", s->user, what, strerror(error));
	imap_tagged(s, "NO", "[SERVERBUG] %s failed", what);
}

/* Leaving a mailbox that is about to be deleted or renamed away, quietly. */
static void leave_if_selected(struct imap_session *s, const char *name)
{
	if (s->mbox_name != NULL && strcmp(s->mbox_name, name) == 0) {
		imap_unselect(s);
		imap_printf(s, "* OK [CLOSED] Mailbox closed\r\n");
	}
}

void imap_cmd_create(struct imap_session *s, const struct imap_arg *args)
{
	if (!one_arg(s, args, "CREATE"))
		return;
	char *name = imap_mailbox_arg(s, args);
	/* RFC 9051 §6.3.4: a trailing delimiter only says children will follow */
	size_t n = name ? strlen(name) : 0;
	if (n > 1 && name[n - 1] == '/')
		name[n - 1] = '\0';
	if (name != NULL && strcmp(name, "INBOX") == 0) {
		free(name);
		imap_tagged(s, "NO", "[ALREADYEXISTS] INBOX always exists");
		return;
	}
	if (name == NULL || store_name_check(name) == -1) {
		free(name);
		imap_tagged(s, "NO", "[CANNOT] Invalid mailbox name");
		return;
	}
	imap_set_busy(s, true);
	s->req = store_folder_create(server->store, s->user, name, folder_done, s);
	free(name);
}

void imap_cmd_delete(struct imap_session *s, const struct imap_arg *args)
{
	if (!one_arg(s, args, "DELETE"))
		return;
	char *name = name_arg(s, args);
	if (name == NULL)
		return;
	if (strcmp(name, "INBOX") == 0) {
		free(name);
		imap_tagged(s, "NO", "[CANNOT] INBOX cannot be deleted");
		return;
	}
	leave_if_selected(s, name);
	imap_set_busy(s, true);
	s->req = store_folder_delete(server->store, s->user, name, folder_done, s);
	free(name);
}

void imap_cmd_rename(struct imap_session *s, const struct imap_arg *args)
{
	const struct imap_arg *a2 = imap_arg_next(&s->parser, args);
	if (a2 == NULL || imap_arg_next(&s->parser, a2) != NULL) {
		imap_bad(s, "RENAME needs two mailbox names");
		return;
	}
	char *from = name_arg(s, args);
	if (from == NULL)
		return;
	char *to = name_arg(s, a2);
	if (to == NULL) {
		free(from);
		return;
	}
	if (strcmp(to, "INBOX") == 0) {
		free(from);
		free(to);
		imap_tagged(s, "NO", "[ALREADYEXISTS] INBOX always exists");
		return;
	}
	leave_if_selected(s, from);
	imap_set_busy(s, true);
	s->req = store_folder_rename(server->store, s->user, from, to, folder_done, s);
	free(from);
	free(to);
}

static void subscribe(struct imap_session *s, const struct imap_arg *args, bool on)
{
	if (!one_arg(s, args, on ? "SUBSCRIBE" : "UNSUBSCRIBE"))
		return;
	char *name = name_arg(s, args);
	if (name == NULL)
		return;
	imap_set_busy(s, true);
	s->req = store_folder_subscribe(server->store, s->user, name, on, folder_done, s);
	free(name);
}

void imap_cmd_subscribe(struct imap_session *s, const struct imap_arg *args)
{
	subscribe(s, args, true);
}

void imap_cmd_unsubscribe(struct imap_session *s, const struct imap_arg *args)
{
	subscribe(s, args, false);
}

void imap_cmd_namespace(struct imap_session *s, const struct imap_arg *args)
{
	(void)args;
	imap_printf(s, "* NAMESPACE ((\"\" \"/\")) NIL NIL\r\n");
	imap_tagged(s, "OK", "NAMESPACE completed");
}

/* ---------------------------------------------------------------- STATUS */

#define ST_MESSAGES 0x01u
#define ST_UIDNEXT 0x02u
#define ST_UIDVALIDITY 0x04u
#define ST_UNSEEN 0x08u
#define ST_DELETED 0x10u
#define ST_SIZE 0x20u
#define ST_RECENT 0x40u

static const struct { const char *name; unsigned bit; } status_items[] = {
	{ "MESSAGES", ST_MESSAGES }, { "UIDNEXT", ST_UIDNEXT }, { "UIDVALIDITY", ST_UIDVALIDITY },
	{ "UNSEEN", ST_UNSEEN }, { "DELETED", ST_DELETED }, { "SIZE", ST_SIZE },
	{ "RECENT", ST_RECENT },
};

/* "(MESSAGES UNSEEN ...)" -> bits; 0 on an unknown item or an empty list */
static unsigned status_parse(struct imap_session *s, const struct imap_arg *list)
{
	unsigned bits = 0;
	if (list == NULL || list->type != IMAP_ARG_LIST)
		return 0;
	for (const struct imap_arg *a = imap_arg_child(&s->parser, list); a != NULL;
	    a = imap_arg_next(&s->parser, a)) {
		const char *v = imap_arg_is_atom(a) ? imap_arg_value(&s->parser, a, NULL) : "";
		unsigned bit = 0;
		for (size_t i = 0; i < sizeof(status_items) / sizeof(status_items[0]); i++)
			if (strcasecmp(v, status_items[i].name) == 0)
				bit = status_items[i].bit;
		if (bit == 0)
			return 0;
		bits |= bit;
	}
	return bits;
}

static void status_line(struct imap_session *s, const char *name, unsigned bits,
    const struct store_status *st)
{
	struct buf b;
	buf_init(&b, STATUS_OUT_MAX);
	buf_appends(&b, "* STATUS ");
	imap_mailbox_out(s, &b, name);
	buf_appends(&b, " (");
	const char *sp = "";
#define ITEM(bit, fmt, val) \
	if (bits & (bit)) { buf_printf(&b, "%s" fmt, sp, val); sp = " "; }
	ITEM(ST_MESSAGES, "MESSAGES %u", st->messages);
	ITEM(ST_UIDNEXT, "UIDNEXT %u", st->uidnext);
	ITEM(ST_UIDVALIDITY, "UIDVALIDITY %u", st->uidvalidity);
	ITEM(ST_UNSEEN, "UNSEEN %u", st->unseen);
	ITEM(ST_DELETED, "DELETED %u", st->deleted);
	ITEM(ST_SIZE, "SIZE %llu", (unsigned long long)st->size);
	ITEM(ST_RECENT, "RECENT %u", st->recent);
#undef ITEM
	buf_appends(&b, ")\r\n");
	imap_write(s, b.data, b.len);
	buf_free(&b);
}

struct status_ctx {
	char *name;
	unsigned bits;
};

static void status_ctx_free(void *p)
{
	struct status_ctx *c = p;
	free(c->name);
	free(c);
}

static void status_done(void *arg, int error, const struct store_status *st)
{
	struct imap_session *s = arg;
	struct status_ctx *c = s->cmd_ctx;
	s->req = NULL;
	if (error == ENOENT) {
		imap_tagged(s, "NO", "[NONEXISTENT] Mailbox doesn't exist");
		return;
	}
	if (error != 0) {
		imap_tagged(s, "NO", error == EINVAL ? "[CANNOT] Invalid mailbox name" :
		    "[SERVERBUG] STATUS failed");
		return;
	}
	status_line(s, c->name, c->bits, st);
	imap_tagged(s, "OK", "STATUS completed");
}

void imap_cmd_status(struct imap_session *s, const struct imap_arg *args)
{
	const struct imap_arg *items = imap_arg_next(&s->parser, args);
	unsigned bits = status_parse(s, items);
	if (args == NULL || bits == 0 || imap_arg_next(&s->parser, items) != NULL) {
		imap_bad(s, "STATUS needs a mailbox and a list of known items");
		return;
	}
	char *name = name_arg(s, args);
	if (name == NULL)
		return;
	struct status_ctx *c = xcalloc(1, sizeof(*c));
	c->name = name;
	c->bits = bits;
	imap_set_ctx(s, c, status_ctx_free);
	imap_set_busy(s, true);
	s->req = store_folder_status(server->store, s->user, name, status_done, s);
}

/* ---------------------------------------------------------------- LIST, LSUB */

#define LS_SUBSCRIBED 0x01u      /* selection: subscribed ones only */
#define LS_RET_SUBSCRIBED 0x02u
#define LS_RECURSIVE 0x04u
#define LS_LSUB 0x08u
#define LS_SPECIAL_ONLY 0x10u    /* selection SPECIAL-USE */

struct list_ctx {
	char *patterns[LIST_MAX_PATTERNS];   /* reference + pattern, client encoding */
	size_t npatterns;
	unsigned opts;
	unsigned status_bits;        /* LIST-STATUS items, 0 = none */
	struct store_folder_info *folders;
	size_t nfolders;
	size_t next;                 /* the folder to look at next */
};

static void list_ctx_free(void *p)
{
	struct list_ctx *c = p;
	for (size_t i = 0; i < c->npatterns; i++)
		free(c->patterns[i]);
	store_folder_list_free(c->folders, c->nfolders);
	free(c);
}

/* RFC 9051 §6.3.9: "*" matches anything, "%" anything but the delimiter "/".
 * Dynamic programming over the name (no backtracking, so a pattern full of
 * wildcards costs O(pattern x name), never exponential time on the reactor):
 * row[j] tells whether the pattern so far matches the first j octets. */
static bool wild_match(const char *pat, const char *name)
{
	size_t n = strlen(name), plen = strlen(pat);
	if (plen > LIST_MAX_PATTERN)
		return false;
	bool *row = xcalloc(n + 1, sizeof(bool)), *next = xcalloc(n + 1, sizeof(bool));
	row[0] = true;
	for (const char *p = pat; *p; p++) {
		next[0] = (*p == '*' || *p == '%') && row[0];
		for (size_t j = 1; j <= n; j++) {
			if (*p == '*')
				next[j] = row[j] || next[j - 1];
			else if (*p == '%')
				next[j] = row[j] || (next[j - 1] && name[j - 1] != '/');
			else
				next[j] = row[j - 1] && name[j - 1] == *p;
		}
		bool *t = row;
		row = next;
		next = t;
	}
	bool ok = row[n];
	free(row);
	free(next);
	return ok;
}

static bool list_matches(struct imap_session *s, struct list_ctx *c, const char *name)
{
	struct buf b;
	buf_init(&b, 8 * STORE_MAX_NAME);
	if (name_encoded(s, name, &b) == -1) {
		buf_free(&b);
		return false;
	}
	bool ok = false;
	for (size_t i = 0; i < c->npatterns && !ok; i++)
		ok = wild_match(c->patterns[i], b.data ? b.data : "");
	buf_free(&b);
	return ok;
}

/* RFC 5258 §3.5 (RECURSIVEMATCH): does some mailbox below f match the selection
 * (SUBSCRIBED, the only selection option it applies to here)? */
static bool subscribed_child(const struct list_ctx *c, const struct store_folder_info *f)
{
	size_t n = strlen(f->name);
	for (size_t i = 0; i < c->nfolders; i++) {
		const struct store_folder_info *k = &c->folders[i];
		if (k->subscribed && strncmp(k->name, f->name, n) == 0 && k->name[n] == '/')
			return true;
	}
	return false;
}

static void list_line(struct imap_session *s, struct list_ctx *c, const struct store_folder_info *f,
    bool childinfo)
{
	struct buf b;
	buf_init(&b, STATUS_OUT_MAX);
	buf_appends(&b, (c->opts & LS_LSUB) ? "* LSUB (" : "* LIST (");
	size_t mark = b.len;
#define ATTR(s_) buf_printf(&b, "%s%s", b.len > mark ? " " : "", s_)
	if (!f->exists)
		ATTR((c->opts & LS_LSUB) ? "\\Noselect" : "\\NonExistent");
	if (!(c->opts & LS_LSUB) && f->exists)
		ATTR(f->has_children ? "\\HasChildren" : "\\HasNoChildren");
	if (f->subscribed && (c->opts & (LS_RET_SUBSCRIBED | LS_SUBSCRIBED)) && !(c->opts & LS_LSUB))
		ATTR("\\Subscribed");
	if (f->special_use != NULL && !(c->opts & LS_LSUB))
		ATTR(f->special_use);
#undef ATTR
	buf_appends(&b, ") \"/\" ");
	imap_mailbox_out(s, &b, f->name);
	if (childinfo)
		buf_appends(&b, " (\"CHILDINFO\" (\"SUBSCRIBED\"))");
	buf_appends(&b, "\r\n");
	imap_write(s, b.data, b.len);
	buf_free(&b);
}

static void list_next(struct imap_session *s);

static void list_status_done(void *arg, int error, const struct store_status *st)
{
	struct imap_session *s = arg;
	struct list_ctx *c = s->cmd_ctx;
	s->req = NULL;
	if (error == 0)
		status_line(s, c->folders[c->next].name, c->status_bits, st);
	c->next++;
	list_next(s);
}

static bool list_selected(struct imap_session *s, struct list_ctx *c, const struct store_folder_info *f,
    bool childinfo)
{
	if ((c->opts & LS_SUBSCRIBED) && !f->subscribed && !childinfo)
		return false;
	if (!(c->opts & LS_SUBSCRIBED) && !f->exists)
		return false;
	if ((c->opts & LS_SPECIAL_ONLY) && f->special_use == NULL)
		return false;
	return list_matches(s, c, f->name);
}

/* One LIST line after the other; with LIST-STATUS (RFC 5819 §2) each selectable
 * mailbox's STATUS follows its LIST line at once, fetched one at a time. */
static void list_next(struct imap_session *s)
{
	struct list_ctx *c = s->cmd_ctx;
	for (; c->next < c->nfolders && !s->closed; c->next++) {
		const struct store_folder_info *f = &c->folders[c->next];
		bool childinfo = (c->opts & LS_RECURSIVE) && subscribed_child(c, f);
		if (!list_selected(s, c, f, childinfo))
			continue;
		list_line(s, c, f, childinfo);
		if (c->status_bits != 0 && f->exists) {
			imap_set_busy(s, true);
			s->req = store_folder_status(server->store, s->user, f->name, list_status_done, s);
			return;
		}
	}
	imap_tagged(s, "OK", "%s completed", (c->opts & LS_LSUB) ? "LSUB" : "LIST");
}

static void list_done(void *arg, int error, struct store_folder_info *v, size_t n)
{
	struct imap_session *s = arg;
	struct list_ctx *c = s->cmd_ctx;
	s->req = NULL;
	if (error != 0) {
		log_msg(LL_ERROR, "imap.list_failed", "user %s: %s", s->user, strerror(error));
		imap_tagged(s, "NO", "[SERVERBUG] Cannot list the mailboxes");
		return;
	}
	c->folders = v;
	c->nfolders = n;
	c->next = 0;
	list_next(s);
}

/* pattern: reference + mailbox pattern (RFC 9051 §6.3.9), INBOX case-folded */
static int add_pattern(struct imap_session *s, struct list_ctx *c, const char *ref, size_t reflen,
    const struct imap_arg *a)
{
	size_t len;
	const char *v = imap_arg_value(&s->parser, a, &len);
	if (v == NULL || a->type == IMAP_ARG_LIST || c->npatterns == LIST_MAX_PATTERNS)
		return -1;
	char *pat = xasprintf("%.*s%s", (int)reflen, ref, v);
	if (strncasecmp(pat, "INBOX", 5) == 0 && (pat[5] == '\0' || pat[5] == '/'))
		memcpy(pat, "INBOX", 5);
	c->patterns[c->npatterns++] = pat;
	return 0;
}

static int list_options(struct imap_session *s, struct list_ctx *c, const struct imap_arg *sel)
{
	for (const struct imap_arg *a = imap_arg_child(&s->parser, sel); a != NULL;
	    a = imap_arg_next(&s->parser, a)) {
		const char *v = imap_arg_is_atom(a) ? imap_arg_value(&s->parser, a, NULL) : "";
		if (strcasecmp(v, "SUBSCRIBED") == 0)
			c->opts |= LS_SUBSCRIBED | LS_RET_SUBSCRIBED;
		else if (strcasecmp(v, "RECURSIVEMATCH") == 0)
			c->opts |= LS_RECURSIVE;
		else if (strcasecmp(v, "SPECIAL-USE") == 0)
			c->opts |= LS_SPECIAL_ONLY;
		else if (strcasecmp(v, "REMOTE") != 0)
			return -1;
	}
	/* RFC 5258 §3.1: RECURSIVEMATCH alone is an error */
	return (c->opts & LS_RECURSIVE) && !(c->opts & LS_SUBSCRIBED) ? -1 : 0;
}

static int list_return(struct imap_session *s, struct list_ctx *c, const struct imap_arg *ret)
{
	for (const struct imap_arg *a = imap_arg_child(&s->parser, ret); a != NULL;
	    a = imap_arg_next(&s->parser, a)) {
		const char *v = imap_arg_is_atom(a) ? imap_arg_value(&s->parser, a, NULL) : "";
		if (strcasecmp(v, "SUBSCRIBED") == 0)
			c->opts |= LS_RET_SUBSCRIBED;
		else if (strcasecmp(v, "STATUS") == 0) {
			a = imap_arg_next(&s->parser, a);
			c->status_bits = status_parse(s, a);
			if (c->status_bits == 0)
				return -1;
		} else if (strcasecmp(v, "CHILDREN") != 0 && strcasecmp(v, "SPECIAL-USE") != 0)
			return -1;
	}
	return 0;
}

/* LIST [(sel)] ref (pat | (pats)) [RETURN (opts)] */
static int list_parse(struct imap_session *s, struct list_ctx *c, const struct imap_arg *a)
{
	const struct imap_parser *p = &s->parser;
	if (a != NULL && a->type == IMAP_ARG_LIST) {
		if (list_options(s, c, a) == -1)
			return -1;
		a = imap_arg_next(p, a);
	}
	size_t reflen;
	const char *ref = imap_arg_astring(p, a, &reflen);
	const struct imap_arg *pat = imap_arg_next(p, a);
	if (ref == NULL || pat == NULL)
		return -1;
	if (pat->type == IMAP_ARG_LIST) {
		for (const struct imap_arg *k = imap_arg_child(p, pat); k != NULL; k = imap_arg_next(p, k))
			if (add_pattern(s, c, ref, reflen, k) == -1)
				return -1;
	} else if (add_pattern(s, c, ref, reflen, pat) == -1) {
		return -1;
	}
	const struct imap_arg *r = imap_arg_next(p, pat);
	if (r == NULL)
		return 0;
	const char *rv = imap_arg_is_atom(r) ? imap_arg_value(p, r, NULL) : "";
	const struct imap_arg *ro = imap_arg_next(p, r);
	if (strcasecmp(rv, "RETURN") != 0 || ro == NULL || ro->type != IMAP_ARG_LIST ||
	    imap_arg_next(p, ro) != NULL)
		return -1;
	return list_return(s, c, ro);
}

static void list_start(struct imap_session *s, const struct imap_arg *args, bool lsub)
{
	struct list_ctx *c = xcalloc(1, sizeof(*c));
	if (lsub)
		c->opts = LS_LSUB | LS_SUBSCRIBED;
	if (list_parse(s, c, args) == -1 || (lsub && c->status_bits)) {
		list_ctx_free(c);
		imap_bad(s, "Invalid %s arguments", lsub ? "LSUB" : "LIST");
		return;
	}
	/* RFC 9051 §6.3.9: an empty pattern asks for the delimiter */
	if (c->npatterns == 1 && c->patterns[0][0] == '\0') {
		list_ctx_free(c);
		imap_printf(s, "* %s (\\Noselect) \"/\" \"\"\r\n", lsub ? "LSUB" : "LIST");
		imap_tagged(s, "OK", "%s completed", lsub ? "LSUB" : "LIST");
		return;
	}
	imap_set_ctx(s, c, list_ctx_free);
	imap_set_busy(s, true);
	s->req = store_folder_list(server->store, s->user, list_done, s);
}

void imap_cmd_list(struct imap_session *s, const struct imap_arg *args)
{
	list_start(s, args, false);
}

void imap_cmd_lsub(struct imap_session *s, const struct imap_arg *args)
{
	list_start(s, args, true);
}
