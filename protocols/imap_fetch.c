/* imap_fetch.c: FETCH and UID FETCH (RFC 9051 §6.4.5, RFC 3501 §6.4.5, RFC 3516
 * BINARY), and the session's one-message cache that FETCH and SEARCH read message
 * files through.
 *
 * Metadata items (FLAGS, UID, INTERNALDATE, RFC822.SIZE) come from the store's
 * index without I/O. Everything else reads the whole message file (in 1 MiB
 * pieces on the store's workers) and parses it with mime_parse; the last message
 * read stays cached, because clients often fetch BODYSTRUCTURE and then a part.
 * Responses are written one message at a time; when the connection's output
 * queue passes IO_OUTPUT_LOWAT the loop waits for IO_LOWAT, so FETCH 1:* of a
 * large folder never holds more than a message plus the socket's backlog.
 * Non-PEEK body fetches set \Seen first (one store call) and report FLAGS. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/xmalloc.h"
#include "protocols/imap.h"
#include "protocols/imap_section.h"
#include "protocols/mime.h"
#include "server/server.h"
#include "store/store.h"

#define FETCH_READ_CHUNK (1024 * 1024)
#define FETCH_MAX_ITEMS 64
#define FETCH_STREAM_MIN (256 * 1024)    /* whole messages this big are streamed */
#define FETCH_STREAM_CHUNK (256 * 1024)

/* ---------------------------------------------------------------- the cache */

struct imap_cache {
	struct store_mailbox *mb;    /* not a reference: only compared */
	uint32_t uid;                /* 0 = empty */
	struct buf data;
	struct mime_message *mime;
	/* a read in progress */
	uint32_t load_uid;
	bool want_mime;
	imap_load_cb cb;
	struct store_file *file;
	uint64_t off, size;
};

void imap_cache_free(struct imap_session *s)
{
	struct imap_cache *c = s->cache;
	if (c == NULL)
		return;
	store_file_close(&c->file);
	mime_message_free(&c->mime);
	buf_free(&c->data);
	free(c);
	s->cache = NULL;
}

static void load_finish(struct imap_session *s, int error)
{
	struct imap_cache *c = s->cache;
	store_file_close(&c->file);
	if (error != 0) {
		buf_free(&c->data);
		c->uid = 0;
		c->cb(s, error, NULL, 0, NULL);
		return;
	}
	c->uid = c->load_uid;
	if (c->want_mime)
		c->mime = mime_parse(c->data.data ? c->data.data : "", c->data.len, NULL);
	c->cb(s, 0, c->data.data ? c->data.data : "", c->data.len, c->mime);
}

static void load_next(struct imap_session *s);

static void load_read(void *arg, int error, const char *data, size_t len)
{
	struct imap_session *s = arg;
	struct imap_cache *c = s->cache;
	s->req = NULL;
	if (error != 0 || (len == 0 && c->off < c->size)) {
		load_finish(s, error ? error : EIO);
		return;
	}
	if (buf_append(&c->data, data, len) == -1) {
		load_finish(s, EFBIG);
		return;
	}
	c->off += len;
	load_next(s);
}

static void load_next(struct imap_session *s)
{
	struct imap_cache *c = s->cache;
	if (c->off >= c->size) {
		load_finish(s, 0);
		return;
	}
	s->req = store_file_read(server->store, c->file, c->off, FETCH_READ_CHUNK, load_read, s);
}

static void load_opened(void *arg, int error, struct store_file *f)
{
	struct imap_session *s = arg;
	struct imap_cache *c = s->cache;
	s->req = NULL;
	if (error != 0) {
		load_finish(s, error);
		return;
	}
	c->file = f;
	c->size = store_file_size(f);
	c->off = 0;
	buf_init(&c->data, c->size + 1);
	size_t len;
	const char *whole = store_file_contents(f, &len);
	if (whole != NULL) {         /* a small message came with the open */
		if (buf_append(&c->data, whole, len) == -1) {
			load_finish(s, EFBIG);
			return;
		}
		c->off = len;
	}
	load_next(s);
}

int imap_msg_load(struct imap_session *s, uint32_t uid, bool want_mime, imap_load_cb cb,
    const char **data_r, size_t *len_r, const struct mime_message **mime_r)
{
	if (s->cache == NULL)
		s->cache = xcalloc(1, sizeof(*s->cache));
	struct imap_cache *c = s->cache;
	if (c->uid == uid && c->mb == s->mb && c->uid != 0) {
		if (want_mime && c->mime == NULL)
			c->mime = mime_parse(c->data.data ? c->data.data : "", c->data.len, NULL);
		*data_r = c->data.data ? c->data.data : "";
		*len_r = c->data.len;
		*mime_r = c->mime;
		return 1;
	}
	const struct store_msg *m = store_mailbox_find(s->mb, uid);
	if (m == NULL)
		return -1;
	mime_message_free(&c->mime);
	buf_free(&c->data);
	c->uid = 0;
	c->mb = s->mb;
	c->load_uid = uid;
	c->want_mime = want_mime;
	c->cb = cb;
	s->req = store_mailbox_file_open(s->mb, m, load_opened, s);
	return 0;
}

/* ---------------------------------------------------------------- items */

enum fitem_kind {
	FI_FLAGS, FI_UID, FI_INTERNALDATE, FI_SIZE, FI_ENVELOPE, FI_BODYSTRUCTURE, FI_BODY,
	FI_SECTION, FI_BINARY_SIZE,
};

struct fitem {
	enum fitem_kind kind;
	struct imap_fetch_section sec;
	char *atom;                  /* the section atom, field names point into it */
	const char *alias;           /* RFC822, RFC822.HEADER, RFC822.TEXT: the name echoed */
};

struct imap_fetch_job {
	struct fitem *items;         /* grown as items are added (a section spec is ~1 KiB:
	                              * a fixed FETCH_MAX_ITEMS array was cleared per FETCH) */
	size_t nitems, cap;
	size_t *idx;
	size_t n, next;
	bool content;                /* some item needs the message file */
	bool set_seen;
	bool has_flags;
	bool wait_lowat;
	bool failed;                 /* some message could not be read */
	/* streaming one whole message from its file */
	bool streaming;
	struct store_file *sfile;
	uint64_t soff, sleft;
	bool unknown_cte;
};

void imap_fetch_free(struct imap_fetch_job **f_r)
{
	struct imap_fetch_job *f = *f_r;
	if (f == NULL)
		return;
	for (size_t i = 0; i < f->nitems; i++)
		free(f->items[i].atom);
	free(f->items);
	store_file_close(&f->sfile);
	free(f->idx);
	free(f);
	*f_r = NULL;
}

/* Room for one more item: 0, or -1 past FETCH_MAX_ITEMS. */
static int item_room(struct imap_fetch_job *f)
{
	if (f->nitems == FETCH_MAX_ITEMS)
		return -1;
	if (f->nitems == f->cap) {
		f->cap = f->cap ? f->cap * 2 : 4;
		f->items = xreallocarray(f->items, f->cap, sizeof(*f->items));
	}
	memset(&f->items[f->nitems], 0, sizeof(f->items[0]));
	return 0;
}

static int add_item(struct imap_fetch_job *f, enum fitem_kind k)
{
	if (item_room(f) == -1)
		return -1;
	f->items[f->nitems].kind = k;
	f->items[f->nitems].atom = NULL;
	f->items[f->nitems].alias = NULL;
	f->nitems++;
	if (k == FI_FLAGS)
		f->has_flags = true;
	if (k >= FI_ENVELOPE)
		f->content = true;
	return 0;
}

static int add_section(struct imap_fetch_job *f, const char *atom, size_t len, const char *alias)
{
	if (item_room(f) == -1)
		return -1;
	struct fitem *it = &f->items[f->nitems];
	memset(it, 0, sizeof(*it));
	it->atom = xstrndup(atom, len);
	if (imap_fetch_section_parse(it->atom, len, &it->sec) == -1) {
		free(it->atom);
		return -1;
	}
	it->kind = it->sec.item == IMAP_FETCH_BINARY_SIZE ? FI_BINARY_SIZE : FI_SECTION;
	it->alias = alias;
	f->nitems++;
	f->content = true;
	if (it->sec.item == IMAP_FETCH_BODY || it->sec.item == IMAP_FETCH_BINARY)
		f->set_seen = true;
	return 0;
}

static int parse_item(struct imap_fetch_job *f, const char *v, size_t len)
{
	static const struct { const char *name; enum fitem_kind k; } simple[] = {
		{ "FLAGS", FI_FLAGS }, { "UID", FI_UID }, { "INTERNALDATE", FI_INTERNALDATE },
		{ "RFC822.SIZE", FI_SIZE }, { "ENVELOPE", FI_ENVELOPE },
		{ "BODYSTRUCTURE", FI_BODYSTRUCTURE }, { "BODY", FI_BODY },
	};
	for (size_t i = 0; i < sizeof(simple) / sizeof(simple[0]); i++)
		if (strcasecmp(v, simple[i].name) == 0)
			return add_item(f, simple[i].k);
	/* RFC 3501 §6.4.5: RFC822 = BODY[], RFC822.HEADER = BODY.PEEK[HEADER],
	 * RFC822.TEXT = BODY[TEXT], each answered under its own name */
	if (strcasecmp(v, "RFC822") == 0)
		return add_section(f, "BODY[]", 6, "RFC822");
	if (strcasecmp(v, "RFC822.HEADER") == 0)
		return add_section(f, "BODY.PEEK[HEADER]", 17, "RFC822.HEADER");
	if (strcasecmp(v, "RFC822.TEXT") == 0)
		return add_section(f, "BODY[TEXT]", 10, "RFC822.TEXT");
	if (memchr(v, '[', len) != NULL)
		return add_section(f, v, len, NULL);
	return -1;
}

static int parse_items(struct imap_session *s, struct imap_fetch_job *f, const struct imap_arg *a)
{
	const struct imap_parser *p = &s->parser;
	if (a == NULL || imap_arg_next(p, a) != NULL)
		return -1;
	if (imap_arg_is_atom(a)) {
		const char *v = imap_arg_value(p, a, NULL);
		/* macros (RFC 9051 §6.4.5) */
		if (strcasecmp(v, "ALL") == 0 || strcasecmp(v, "FAST") == 0 || strcasecmp(v, "FULL") == 0) {
			add_item(f, FI_FLAGS);
			add_item(f, FI_INTERNALDATE);
			add_item(f, FI_SIZE);
			if (strcasecmp(v, "FAST") != 0)
				add_item(f, FI_ENVELOPE);
			if (strcasecmp(v, "FULL") == 0)
				add_item(f, FI_BODY);
			return 0;
		}
		return parse_item(f, v, a->len);
	}
	if (a->type != IMAP_ARG_LIST || a->count == 0)
		return -1;
	for (const struct imap_arg *k = imap_arg_child(p, a); k != NULL; k = imap_arg_next(p, k)) {
		if (k->type != IMAP_ARG_ATOM)
			return -1;
		if (parse_item(f, imap_arg_value(p, k, NULL), k->len) == -1)
			return -1;
	}
	return 0;
}

/* ---------------------------------------------------------------- responses */

static void internaldate(struct buf *b, time_t t)
{
	struct tm tm;
	gmtime_r(&t, &tm);
	char d[40];
	strftime(d, sizeof(d), "%d-%b-%Y %H:%M:%S +0000", &tm);
	buf_printf(b, "INTERNALDATE \"%s\"", d);
}

static void literal_out(struct buf *b, const char *p, size_t len, bool binary)
{
	bool lit8 = binary && memchr(p, '\0', len) != NULL;
	buf_printf(b, "%s{%zu}\r\n", lit8 ? "~" : "", len);
	buf_append(b, p, len);
}

/* One section item; false when the whole FETCH must fail (UNKNOWN-CTE). */
static bool section_out(struct imap_session *s, struct imap_fetch_job *f, const struct fitem *it,
    const struct mime_message *m, struct buf *b)
{
	if (it->alias != NULL)
		buf_appends(b, it->alias);
	else
		imap_section_name(&it->sec, it->atom, b);
	buf_appendc(b, ' ');
	if (it->kind == FI_BINARY_SIZE) {
		uint64_t size = 0;
		int r = imap_section_binary_size(m, &it->sec, &size);
		if (r == IMAP_SECTION_UNKNOWN_CTE) {
			f->unknown_cte = true;
			return false;
		}
		if (r == IMAP_SECTION_OK)
			buf_printf(b, "%llu", (unsigned long long)size);
		else
			buf_appends(b, "NIL");
		return true;
	}
	bool binary = it->sec.item == IMAP_FETCH_BINARY || it->sec.item == IMAP_FETCH_BINARY_PEEK;
	struct buf t;
	buf_init(&t, m->len + 1);
	int r = binary ? imap_section_binary(m, &it->sec, &t) : imap_section_fetch(m, &it->sec, it->atom, &t);
	if (r == IMAP_SECTION_UNKNOWN_CTE) {
		buf_free(&t);
		f->unknown_cte = true;
		return false;
	}
	if (r != IMAP_SECTION_OK) {
		buf_appends(b, "NIL");
		buf_free(&t);
		return true;
	}
	uint64_t off, len;
	imap_section_partial(&it->sec, t.len, &off, &len);
	literal_out(b, t.data ? t.data + off : "", (size_t)len, binary);
	buf_free(&t);
	(void)s;
	return true;
}

/* The items of one message into b, in the order asked, after "* n FETCH (" and
 * UID; FLAGS go last (fetch_tail). m may be NULL when no item needs the content;
 * skip_section leaves out the section being streamed. false on UNKNOWN-CTE. */
static bool fetch_items(struct imap_session *s, size_t i, const struct mime_message *m,
    const struct store_msg *sm, struct buf *b, const struct fitem *skip)
{
	struct imap_fetch_job *f = s->fetch;
	const struct imap_msg *e = &s->msgs[i];
	size_t mark = b->len;
	bool uid_done = s->uid_cmd;
	if (s->uid_cmd)
		buf_printf(b, "UID %u", e->uid);
	for (size_t k = 0; k < f->nitems; k++) {
		const struct fitem *it = &f->items[k];
		if (it->kind == FI_FLAGS || it == skip || (it->kind == FI_UID && uid_done))
			continue;
		if (b->len > mark)
			buf_appendc(b, ' ');
		switch (it->kind) {
		case FI_UID:
			buf_printf(b, "UID %u", e->uid);
			uid_done = true;
			break;
		case FI_INTERNALDATE:
			internaldate(b, sm->internal_date);
			break;
		case FI_SIZE:
			buf_printf(b, "RFC822.SIZE %llu", (unsigned long long)sm->size);
			break;
		case FI_ENVELOPE:
			buf_appends(b, "ENVELOPE ");
			mime_envelope(m, m->root, b);
			break;
		case FI_BODYSTRUCTURE:
		case FI_BODY:
			buf_appends(b, it->kind == FI_BODY ? "BODY " : "BODYSTRUCTURE ");
			mime_bodystructure(m, m->root, (it->kind == FI_BODYSTRUCTURE ? MIME_BS_EXTENDED : 0) |
			    (s->rev2 ? MIME_BS_REV2 : 0), b);
			break;
		case FI_SECTION:
		case FI_BINARY_SIZE:
			if (!section_out(s, f, it, m, b))
				return false;
			break;
		case FI_FLAGS:
			break;
		}
	}
	return true;
}

/* FLAGS when asked for or changed (\Seen set by this FETCH, or others' changes,
 * which the map then no longer reports again), and the closing ")". */
static void fetch_tail(struct imap_session *s, size_t i, struct buf *b, bool first)
{
	struct imap_msg *e = &s->msgs[i];
	const struct store_msg *sm = store_mailbox_find(s->mb, e->uid);
	if (sm != NULL) {
		uint32_t now = (sm->flags & IMAP_MF_MASK) | (e->flags & IMAP_F_RECENT);
		bool flags = s->fetch->has_flags || now != e->flags || sm->keywords != e->keywords;
		e->flags = now;
		e->keywords = sm->keywords;
		if (flags) {
			if (!first)
				buf_appendc(b, ' ');
			buf_appends(b, "FLAGS (");
			imap_flags_out(s, b, e->flags, e->keywords);
			buf_appendc(b, ')');
		}
	}
	buf_appends(b, ")\r\n");
}

static void fetch_one(struct imap_session *s, size_t i, const struct mime_message *m)
{
	const struct store_msg *sm = store_mailbox_find(s->mb, s->msgs[i].uid);
	if (sm == NULL)
		return;
	struct buf b;
	buf_init(&b, SIZE_MAX / 2);
	buf_printf(&b, "* %zu FETCH (", i + 1);
	size_t mark = b.len;
	if (fetch_items(s, i, m, sm, &b, NULL)) {
		fetch_tail(s, i, &b, b.len == mark);
		imap_write(s, b.data, b.len);
	}
	buf_free(&b);
}

/* ---- streaming a whole message (BODY[], RFC822, BINARY[]) from its file ---- */

static void fetch_run(struct imap_session *s);

/* The one whole-message item when it is the only one needing the content, so a
 * big message goes from the file to the socket in chunks, never whole in memory. */
static const struct fitem *stream_item(const struct imap_fetch_job *f)
{
	const struct fitem *found = NULL;
	for (size_t k = 0; k < f->nitems; k++) {
		const struct fitem *it = &f->items[k];
		if (it->kind < FI_ENVELOPE)
			continue;
		if (found != NULL || it->kind != FI_SECTION || it->sec.nparts != 0 ||
		    it->sec.text != IMAP_SECTION_ALL)
			return NULL;
		found = it;
	}
	return found;
}

static void stream_next(struct imap_session *s);

static void stream_end(struct imap_session *s)
{
	struct imap_fetch_job *f = s->fetch;
	store_file_close(&f->sfile);
	struct buf b;
	buf_init(&b, 64 * 1024);
	fetch_tail(s, f->idx[f->next], &b, false);
	imap_write(s, b.data, b.len);
	buf_free(&b);
	f->streaming = false;
	f->next++;
	fetch_run(s);
}

static void stream_read(void *arg, int error, const char *data, size_t len)
{
	struct imap_session *s = arg;
	struct imap_fetch_job *f = s->fetch;
	s->req = NULL;
	if (error != 0 || len == 0) {
		/* inside a literal: the response cannot be completed */
		log_msg(LL_ERROR, "imap.read_failed", "user %s: %s", s->user,
		    error ? strerror(error) : "file shrank");
		imap_end(s, "message read error");
		return;
	}
	if ((uint64_t)len > f->sleft)
		len = (size_t)f->sleft;
	imap_write(s, data, len);
	f->soff += len;
	f->sleft -= len;
	stream_next(s);
}

static void stream_next(struct imap_session *s)
{
	struct imap_fetch_job *f = s->fetch;
	if (s->closed)
		return;
	if (f->sleft == 0) {
		stream_end(s);
		return;
	}
	if (io_queued(s->c) >= IO_OUTPUT_LOWAT) {
		f->wait_lowat = true;            /* resumed by IO_LOWAT */
		return;
	}
	size_t n = f->sleft > FETCH_STREAM_CHUNK ? FETCH_STREAM_CHUNK : (size_t)f->sleft;
	s->req = store_file_read(server->store, f->sfile, f->soff, n, stream_read, s);
}

static void stream_opened(void *arg, int error, struct store_file *file)
{
	struct imap_session *s = arg;
	struct imap_fetch_job *f = s->fetch;
	s->req = NULL;
	size_t i = f->idx[f->next];
	const struct store_msg *sm = store_mailbox_find(s->mb, s->msgs[i].uid);
	if (error != 0 || sm == NULL) {
		store_file_close(&file);
		f->failed = true;
		f->streaming = false;
		f->next++;
		fetch_run(s);
		return;
	}
	f->sfile = file;
	const struct fitem *it = stream_item(f);
	uint64_t off, len;
	imap_section_partial(&it->sec, store_file_size(file), &off, &len);
	f->soff = off;
	f->sleft = len;
	struct buf b;
	buf_init(&b, 64 * 1024);
	buf_printf(&b, "* %zu FETCH (", i + 1);
	size_t mark = b.len;
	fetch_items(s, i, NULL, sm, &b, it);
	if (b.len > mark)
		buf_appendc(&b, ' ');
	if (it->alias != NULL)
		buf_appends(&b, it->alias);
	else
		imap_section_name(&it->sec, it->atom, &b);
	/* a whole message is never transfer-decoded, so BINARY[] is the same octets;
	 * a literal8 only because NULs might be inside */
	bool binary = it->sec.item == IMAP_FETCH_BINARY || it->sec.item == IMAP_FETCH_BINARY_PEEK;
	buf_printf(&b, " %s{%llu}\r\n", binary ? "~" : "", (unsigned long long)len);
	imap_write(s, b.data, b.len);
	buf_free(&b);
	stream_next(s);
}

static void fetch_finish(struct imap_session *s)
{
	struct imap_fetch_job *f = s->fetch;
	if (f->unknown_cte)
		imap_tagged(s, "NO", "[UNKNOWN-CTE] Cannot decode the content transfer encoding");
	else if (f->failed)
		imap_tagged(s, "NO", "Some messages could not be read (expunged?)");
	else
		imap_tagged(s, "OK", "FETCH completed");
}

static void fetch_loaded(struct imap_session *s, int error, const char *data, size_t len,
    const struct mime_message *mime)
{
	struct imap_fetch_job *f = s->fetch;
	(void)data;
	(void)len;
	if (error != 0)
		f->failed = true;
	else
		fetch_one(s, f->idx[f->next], mime);
	f->next++;
	fetch_run(s);
}

static void fetch_run(struct imap_session *s)
{
	struct imap_fetch_job *f = s->fetch;
	while (f->next < f->n && !s->closed && !f->unknown_cte) {
		if (io_queued(s->c) >= IO_OUTPUT_LOWAT) {
			f->wait_lowat = true;       /* resumed by IO_LOWAT */
			imap_set_busy(s, true);
			return;
		}
		size_t i = f->idx[f->next];
		if (!f->content) {
			fetch_one(s, i, NULL);
			f->next++;
			continue;
		}
		const struct store_msg *sm = store_mailbox_find(s->mb, s->msgs[i].uid);
		if (sm != NULL && sm->size >= FETCH_STREAM_MIN && stream_item(f) != NULL &&
		    !(s->cache != NULL && s->cache->uid == sm->uid)) {
			f->streaming = true;
			imap_set_busy(s, true);
			s->req = store_mailbox_file_open(s->mb, sm, stream_opened, s);
			return;
		}
		const char *data;
		size_t len;
		const struct mime_message *mime;
		int r = imap_msg_load(s, s->msgs[i].uid, true, fetch_loaded, &data, &len, &mime);
		if (r == 0) {
			imap_set_busy(s, true);
			return;
		}
		if (r == 1)
			fetch_one(s, i, mime);
		else
			f->failed = true;
		f->next++;
	}
	if (!s->closed)
		fetch_finish(s);
}

void imap_fetch_lowat(struct imap_session *s)
{
	if (s->fetch != NULL && s->fetch->wait_lowat && s->req == NULL) {
		s->fetch->wait_lowat = false;
		if (s->fetch->streaming)
			stream_next(s);
		else
			fetch_run(s);
	}
}

static void seen_done(void *arg, int error)
{
	struct imap_session *s = arg;
	s->req = NULL;
	if (error != 0)
		log_msg(LL_ERROR, "imap.seen_failed", "user %s: %s", s->user, strerror(error));
	fetch_run(s);
}

void imap_cmd_fetch(struct imap_session *s, const struct imap_arg *args)
{
	struct imap_fetch_job *f = xcalloc(1, sizeof(*f));
	s->fetch = f;
	if (args == NULL || parse_items(s, f, imap_arg_next(&s->parser, args)) == -1) {
		imap_bad(s, "Invalid FETCH items");
		return;
	}
	int r = imap_seqset_indexes(s, args, s->uid_cmd, &f->idx, &f->n);
	if (r != 0) {
		imap_bad(s, r == -2 ? "Message sequence number out of range" : "Invalid sequence set");
		return;
	}
	if (!f->set_seen || s->readonly) {
		fetch_run(s);
		return;
	}
	/* \Seen first (RFC 9051 §6.4.5), for the messages that lack it */
	uint32_t *u = xcalloc(f->n ? f->n : 1, sizeof(*u));
	size_t n = 0;
	for (size_t i = 0; i < f->n; i++) {
		const struct store_msg *m = store_mailbox_find(s->mb, s->msgs[f->idx[i]].uid);
		if (m != NULL && !(m->flags & MF_SEEN))
			u[n++] = m->uid;
	}
	if (n == 0) {
		free(u);
		fetch_run(s);
		return;
	}
	imap_set_busy(s, true);
	s->req = store_mailbox_store(s->mb, u, n, STORE_FLAGS_ADD, MF_SEEN, NULL, 0, seen_done, s);
	free(u);
}
