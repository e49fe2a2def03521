/* imap_search.c: SEARCH programs: parsing, evaluation, replies (see imap_search.h). */
#include "protocols/imap_search.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/xmalloc.h"
#include "store/store.h"

enum skey_type {
	SK_AND = 0,        /* list: every child */
	SK_OR,             /* a or b */
	SK_NOT,            /* not a */
	SK_ALL,
	SK_SEQ,            /* sequence set or "$" */
	SK_UID,            /* UID set or "UID $" */
	SK_FLAG,           /* MF_* bit set (or clear with neg) */
	SK_RECENT,         /* \Recent (neg: OLD) */
	SK_NEW,            /* RECENT UNSEEN */
	SK_KEYWORD,        /* keyword set (neg: UNKEYWORD) */
	SK_LARGER, SK_SMALLER,
	SK_BEFORE, SK_ON, SK_SINCE,                /* internal date, days */
	SK_SENTBEFORE, SK_SENTON, SK_SENTSINCE,    /* Date: header, days */
	SK_HEADER,         /* name, value: header field contains */
	SK_BODY, SK_TEXT,
};

struct skey {
	enum skey_type type;
	bool neg;                    /* FLAG, RECENT, KEYWORD: the UN- / OLD form */
	struct skey *a, *b;          /* AND: first child (siblings via next); OR; NOT */
	struct skey *next;
	uint32_t flag;               /* FLAG: MF_* */
	int64_t num;                 /* LARGER/SMALLER octets; dates as days since 1970 */
	char *name;                  /* HEADER field name; KEYWORD name (owned) */
	char *value;                 /* string keys: the case-folded needle (owned) */
	size_t vlen;
	bool dollar;                 /* SEQ/UID: "$" */
	struct imap_seqrange *r;     /* SEQ/UID ranges (owned) */
	size_t nr;
};

struct imap_search {
	struct skey *root;
	unsigned needs;
};

/* ---------------------------------------------------------------- case folding */

/* Simple case folding of the letters a search is likely to meet (ASCII, Latin-1,
 * Latin Extended-A, Greek, Cyrillic). Never makes a UTF-8 sequence longer. */
static uint32_t fold_cp(uint32_t c)
{
	if (c < 0x80)
		return c >= 'A' && c <= 'Z' ? c + 32 : c;
	if (c >= 0xC0 && c <= 0xDE && c != 0xD7)
		return c + 32;
	if (c == 0x130)
		return 'i';
	if (c == 0x17F)
		return 's';
	if (c == 0x178)
		return 0xFF;
	if ((c >= 0x100 && c <= 0x137) || (c >= 0x14A && c <= 0x177))
		return c | 1;
	if ((c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E))
		return (c & 1) ? c + 1 : c;
	if ((c >= 0x391 && c <= 0x3A9 && c != 0x3A2) || (c >= 0x410 && c <= 0x42F))
		return c + 32;
	if (c == 0x3C2)                    /* final sigma */
		return 0x3C3;
	if (c >= 0x400 && c <= 0x40F)
		return c + 80;
	if (c == 0x1E9E)                   /* capital sharp s */
		return 0xDF;
	return c;
}

/* Length of the valid UTF-8 sequence at s (2..4) with its code point, or 0. */
static size_t utf8_seq(const unsigned char *s, size_t len, uint32_t *cp_r)
{
	size_t n = s[0] >= 0xF5 ? 0 : s[0] >= 0xF0 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC2 ? 2 : 0;
	if (n == 0 || n > len)
		return 0;
	uint32_t cp = s[0] & (0x7F >> n);
	for (size_t i = 1; i < n; i++) {
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		cp = (cp << 6) | (s[i] & 0x3F);
	}
	if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)))
		return 0;
	*cp_r = cp;
	return n;
}

static int put_utf8(struct buf *out, uint32_t cp)
{
	char t[3];
	if (cp < 0x80)
		return buf_appendc(out, (char)cp);
	if (cp < 0x800) {
		t[0] = (char)(0xC0 | (cp >> 6));
		t[1] = (char)(0x80 | (cp & 0x3F));
		return buf_append(out, t, 2);
	}
	t[0] = (char)(0xE0 | (cp >> 12));
	t[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
	t[2] = (char)(0x80 | (cp & 0x3F));
	return buf_append(out, t, 3);
}

/* Appends s folded; bytes that are not valid UTF-8 are copied as they are. */
static int fold_append(struct buf *out, const char *s, size_t len)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;
	while (i < len) {
		size_t st = i;
		while (i < len && u[i] < 0x80 && !(u[i] >= 'A' && u[i] <= 'Z'))
			i++;
		if (i > st && buf_append(out, s + st, i - st) == -1)
			return -1;
		if (i >= len)
			break;
		uint32_t cp;
		size_t n = u[i] < 0x80 ? 1 : utf8_seq(u + i, len - i, &cp);
		if (u[i] < 0x80)
			cp = u[i];
		uint32_t f = n > 0 ? fold_cp(cp) : 0;
		if (n == 0 || n == 4 || f == cp) {
			size_t k = n == 0 ? 1 : n;
			if (buf_append(out, s + i, k) == -1)
				return -1;
			i += k;
			continue;
		}
		if (put_utf8(out, f) == -1)
			return -1;
		i += n;
	}
	return 0;
}

static bool contains(const char *hay, size_t hl, const struct skey *k)
{
	return k->vlen == 0 || memmem(hay, hl, k->value, k->vlen) != NULL;
}

/* ---------------------------------------------------------------- dates */

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	unsigned yoe = (unsigned)(y - era * 400);
	unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + (int64_t)doe - 719468;
}

static int month_index(const char *s)
{
	static const char months[] = "janfebmaraprmayjunjulaugsepoctnovdec";
	for (int i = 0; i < 12; i++)
		if (strncasecmp(s, months + 3 * i, 3) == 0)
			return i + 1;
	return 0;
}

/* RFC 9051 date-text "d-MMM-yyyy" (1 or 2 day digits), days since 1970 in *d_r. */
static int parse_search_date(const char *s, size_t len, int64_t *d_r)
{
	size_t i = 0;
	unsigned day = 0;
	while (i < len && i < 2 && s[i] >= '0' && s[i] <= '9')
		day = day * 10 + (unsigned)(s[i++] - '0');
	if (i == 0 || i + 9 != len || s[i] != '-' || s[i + 4] != '-')
		return -1;
	int mon = month_index(s + i + 1);
	unsigned year = 0;
	for (size_t k = i + 5; k < len; k++) {
		if (s[k] < '0' || s[k] > '9')
			return -1;
		year = year * 10 + (unsigned)(s[k] - '0');
	}
	if (mon == 0 || day < 1 || day > 31)
		return -1;
	*d_r = days_from_civil(year, (unsigned)mon, day);
	return 0;
}

/* Day, month and year of an RFC 5322 date-time (obsolete forms included: two-digit
 * years, comments, any case). The time and zone are disregarded (RFC 9051 §6.4.4). */
static int parse_header_date(const char *s, size_t len, int64_t *d_r)
{
	size_t i = 0;
	mime_skip_cfws(s, len, &i);
	if (i + 3 < len && ((s[i] | 32) >= 'a' && (s[i] | 32) <= 'z')) {     /* day-of-week */
		while (i < len && s[i] != ',')
			i++;
		if (i++ >= len)
			return -1;
		mime_skip_cfws(s, len, &i);
	}
	unsigned day = 0, year = 0;
	size_t st = i;
	while (i < len && i - st < 2 && s[i] >= '0' && s[i] <= '9')
		day = day * 10 + (unsigned)(s[i++] - '0');
	if (i == st)
		return -1;
	mime_skip_cfws(s, len, &i);
	if (i + 3 > len)
		return -1;
	int mon = month_index(s + i);
	i += 3;
	mime_skip_cfws(s, len, &i);
	st = i;
	while (i < len && i - st < 4 && s[i] >= '0' && s[i] <= '9')
		year = year * 10 + (unsigned)(s[i++] - '0');
	if (mon == 0 || day < 1 || day > 31 || i - st < 2)
		return -1;
	if (i - st == 2)                   /* RFC 5322 §4.3 */
		year += year < 50 ? 2000 : 1900;
	else if (i - st == 3)
		year += 1900;
	*d_r = days_from_civil(year, (unsigned)mon, day);
	return 0;
}

/* ---------------------------------------------------------------- parsing */

struct pstate {
	const struct imap_parser *p;
	const struct imap_arg *cur;        /* next argument to read, NULL at the end */
	const char *err;
	unsigned needs;
	struct imap_seqset *set;           /* scratch for imap_seqset_parse (16 KiB) */
};

static void skey_free(struct skey *k)
{
	while (k != NULL) {
		struct skey *next = k->next;
		skey_free(k->a);
		skey_free(k->b);
		free(k->name);
		free(k->value);
		free(k->r);
		free(k);
		k = next;
	}
}

/* Next argument as an atom (NUL-terminated), or NULL when absent or not an atom. */
static const char *take_atom(struct pstate *ps, size_t *len_r)
{
	const struct imap_arg *a = ps->cur;
	if (a == NULL || !imap_arg_is_atom(a))
		return NULL;
	ps->cur = imap_arg_next(ps->p, a);
	return imap_arg_value(ps->p, a, len_r);
}

static const char *take_astring(struct pstate *ps, size_t *len_r)
{
	const struct imap_arg *a = ps->cur;
	const char *v = a != NULL ? imap_arg_astring(ps->p, a, len_r) : NULL;
	if (v != NULL)
		ps->cur = imap_arg_next(ps->p, a);
	return v;
}

static int set_string(struct skey *k, const char *v, size_t len)
{
	struct buf b;
	buf_init(&b, len + 1);     /* folding never grows the text */
	if (fold_append(&b, v, len) == -1 || buf_appendc(&b, '\0') == -1) {
		buf_free(&b);
		return -1;
	}
	k->value = buf_steal(&b, &k->vlen);
	k->vlen--;
	return 0;
}

static int parse_set(struct pstate *ps, struct skey *k, const char *v, size_t len)
{
	if (imap_seqset_parse(v, len, ps->set) == -1) {
		ps->err = "Bad sequence set";
		return -1;
	}
	k->dollar = ps->set->dollar;
	k->nr = ps->set->n;
	if (k->nr > 0) {
		k->r = xcalloc(k->nr, sizeof(*k->r));
		memcpy(k->r, ps->set->r, k->nr * sizeof(*k->r));
	}
	if (k->dollar)
		ps->needs |= IMAP_SEARCH_USES_SAVED;
	return 0;
}

static const struct {
	const char *name;
	enum skey_type type;
	uint32_t flag;
	bool neg;
} simple_keys[] = {
	{ "ALL", SK_ALL, 0, false },
	{ "ANSWERED", SK_FLAG, MF_REPLIED, false }, { "UNANSWERED", SK_FLAG, MF_REPLIED, true },
	{ "DELETED", SK_FLAG, MF_TRASHED, false }, { "UNDELETED", SK_FLAG, MF_TRASHED, true },
	{ "DRAFT", SK_FLAG, MF_DRAFT, false }, { "UNDRAFT", SK_FLAG, MF_DRAFT, true },
	{ "FLAGGED", SK_FLAG, MF_FLAGGED, false }, { "UNFLAGGED", SK_FLAG, MF_FLAGGED, true },
	{ "SEEN", SK_FLAG, MF_SEEN, false }, { "UNSEEN", SK_FLAG, MF_SEEN, true },
	{ "RECENT", SK_RECENT, 0, false }, { "OLD", SK_RECENT, 0, true },
	{ "NEW", SK_NEW, 0, false },
};

/* Keys with one argument: string, date, number or keyword. */
static const struct {
	const char *name;
	enum skey_type type;
	const char *header;        /* SK_HEADER: the field */
} arg_keys[] = {
	{ "FROM", SK_HEADER, "From" }, { "TO", SK_HEADER, "To" }, { "CC", SK_HEADER, "Cc" },
	{ "BCC", SK_HEADER, "Bcc" }, { "SUBJECT", SK_HEADER, "Subject" },
	{ "BODY", SK_BODY, NULL }, { "TEXT", SK_TEXT, NULL },
	{ "BEFORE", SK_BEFORE, NULL }, { "ON", SK_ON, NULL }, { "SINCE", SK_SINCE, NULL },
	{ "SENTBEFORE", SK_SENTBEFORE, NULL }, { "SENTON", SK_SENTON, NULL },
	{ "SENTSINCE", SK_SENTSINCE, NULL },
	{ "LARGER", SK_LARGER, NULL }, { "SMALLER", SK_SMALLER, NULL },
	{ "KEYWORD", SK_KEYWORD, NULL }, { "UNKEYWORD", SK_KEYWORD, NULL },
};

/* The argument of an arg_keys[] entry into k. */
static int parse_key_arg(struct pstate *ps, struct skey *k, const char *kname)
{
	const struct imap_arg *a = ps->cur;
	size_t len;
	const char *v;
	switch (k->type) {
	case SK_LARGER:
	case SK_SMALLER:
		if (a == NULL || a->type != IMAP_ARG_NUMBER) {
			ps->err = "LARGER and SMALLER need a number";
			return -1;
		}
		k->num = (int64_t)a->num;
		ps->cur = imap_arg_next(ps->p, a);
		return 0;
	case SK_BEFORE: case SK_ON: case SK_SINCE:
	case SK_SENTBEFORE: case SK_SENTON: case SK_SENTSINCE:
		if ((v = take_astring(ps, &len)) == NULL || parse_search_date(v, len, &k->num) == -1) {
			ps->err = "Bad date (expected d-Mon-yyyy)";
			return -1;
		}
		if (k->type >= SK_SENTBEFORE)
			ps->needs |= IMAP_SEARCH_NEED_HEADER;
		return 0;
	case SK_KEYWORD:
		/* flag-keyword is an atom; system flags ("\Seen") are not keywords */
		if ((v = take_atom(ps, &len)) == NULL || len == 0 || v[0] == '\\') {
			ps->err = "Bad keyword";
			return -1;
		}
		k->name = xstrndup(v, len);
		k->neg = strcasecmp(kname, "UNKEYWORD") == 0;
		return 0;
	default:
		if ((v = take_astring(ps, &len)) == NULL) {
			ps->err = "Missing string argument";
			return -1;
		}
		ps->needs |= k->type == SK_HEADER ? IMAP_SEARCH_NEED_HEADER :
		    IMAP_SEARCH_NEED_HEADER | IMAP_SEARCH_NEED_BODY;
		return set_string(k, v, len);
	}
}

static struct skey *parse_key(struct pstate *ps, unsigned depth);

/* "(" key *(SP key) ")" as an AND node */
static struct skey *parse_list(struct pstate *ps, const struct imap_arg *list, unsigned depth)
{
	struct skey *k = xcalloc(1, sizeof(*k)), **tail = &k->a;
	k->type = SK_AND;
	const struct imap_arg *after = imap_arg_next(ps->p, list);
	ps->cur = imap_arg_child(ps->p, list);
	if (ps->cur == NULL)
		ps->err = "Empty search key list";
	while (ps->cur != NULL) {
		if ((*tail = parse_key(ps, depth + 1)) == NULL)
			break;
		tail = &(*tail)->next;
	}
	if (ps->err != NULL) {
		skey_free(k);
		return NULL;
	}
	ps->cur = after;
	return k;
}

static struct skey *parse_key(struct pstate *ps, unsigned depth)
{
	const struct imap_arg *a = ps->cur;
	if (a == NULL) {
		ps->err = "Missing search key";
		return NULL;
	}
	if (depth >= IMAP_SEARCH_MAX_DEPTH) {
		ps->err = "Search program nested too deeply";
		return NULL;
	}
	if (a->type == IMAP_ARG_LIST)
		return parse_list(ps, a, depth);
	size_t len;
	const char *name = take_atom(ps, &len);
	if (name == NULL) {
		ps->err = "Search key expected";
		return NULL;
	}
	struct skey *k = xcalloc(1, sizeof(*k));
	if (name[0] == '$' || name[0] == '*' || (name[0] >= '0' && name[0] <= '9')) {
		k->type = SK_SEQ;
		if (parse_set(ps, k, name, len) == -1)
			goto fail;
		return k;
	}
	for (size_t i = 0; i < sizeof(simple_keys) / sizeof(simple_keys[0]); i++) {
		if (strcasecmp(name, simple_keys[i].name) == 0) {
			k->type = simple_keys[i].type;
			k->flag = simple_keys[i].flag;
			k->neg = simple_keys[i].neg;
			return k;
		}
	}
	for (size_t i = 0; i < sizeof(arg_keys) / sizeof(arg_keys[0]); i++) {
		if (strcasecmp(name, arg_keys[i].name) == 0) {
			k->type = arg_keys[i].type;
			if (arg_keys[i].header != NULL)
				k->name = xstrdup(arg_keys[i].header);
			if (parse_key_arg(ps, k, name) == -1)
				goto fail;
			return k;
		}
	}
	if (strcasecmp(name, "UID") == 0) {
		const char *v = take_atom(ps, &len);
		k->type = SK_UID;
		if (v == NULL) {
			ps->err = "UID needs a set";
			goto fail;
		}
		if (parse_set(ps, k, v, len) == -1)
			goto fail;
	} else if (strcasecmp(name, "HEADER") == 0) {
		const char *field = take_astring(ps, &len), *v;
		size_t vlen;
		k->type = SK_HEADER;
		if (field == NULL || memchr(field, ':', len) != NULL ||
		    (v = take_astring(ps, &vlen)) == NULL) {
			ps->err = "HEADER needs a field name and a string";
			goto fail;
		}
		k->name = xstrndup(field, len);
		ps->needs |= IMAP_SEARCH_NEED_HEADER;
		if (set_string(k, v, vlen) == -1)
			goto fail;
	} else if (strcasecmp(name, "NOT") == 0) {
		k->type = SK_NOT;
		if ((k->a = parse_key(ps, depth + 1)) == NULL)
			goto fail;
	} else if (strcasecmp(name, "OR") == 0) {
		k->type = SK_OR;
		if ((k->a = parse_key(ps, depth + 1)) == NULL || (k->b = parse_key(ps, depth + 1)) == NULL)
			goto fail;
	} else {
		ps->err = "Unknown search key";
		goto fail;
	}
	return k;
fail:
	if (ps->err == NULL)
		ps->err = "Bad search key";
	skey_free(k);
	return NULL;
}

/* "RETURN (" [opt *(SP opt)] ")" (RFC 4731 §3.1) */
static int parse_return(struct pstate *ps, struct imap_search_opts *opts)
{
	static const struct { const char *name; unsigned bit; } rets[] = {
		{ "MIN", IMAP_SEARCH_RET_MIN }, { "MAX", IMAP_SEARCH_RET_MAX },
		{ "COUNT", IMAP_SEARCH_RET_COUNT }, { "ALL", IMAP_SEARCH_RET_ALL },
		{ "SAVE", IMAP_SEARCH_RET_SAVE },
	};
	const struct imap_arg *l = ps->cur;
	if (l == NULL || l->type != IMAP_ARG_LIST) {
		ps->err = "RETURN needs a list of options";
		return -1;
	}
	for (const struct imap_arg *o = imap_arg_child(ps->p, l); o != NULL; o = imap_arg_next(ps->p, o)) {
		const char *v = imap_arg_is_atom(o) ? imap_arg_value(ps->p, o, NULL) : "";
		size_t i = 0;
		while (i < sizeof(rets) / sizeof(rets[0]) && strcasecmp(v, rets[i].name) != 0)
			i++;
		if (i == sizeof(rets) / sizeof(rets[0])) {
			ps->err = "Unknown RETURN option";
			return -1;
		}
		opts->ret |= rets[i].bit;
	}
	if (opts->ret == 0)
		opts->ret = IMAP_SEARCH_RET_ALL;     /* RETURN () */
	opts->ret_given = true;
	opts->esearch = true;
	ps->cur = imap_arg_next(ps->p, l);
	return 0;
}

static bool is_keyword(const struct imap_parser *p, const struct imap_arg *a, const char *word)
{
	return a != NULL && a->type == IMAP_ARG_ATOM &&
	    strcasecmp(imap_arg_value(p, a, NULL), word) == 0;
}

int imap_search_parse(const struct imap_parser *p, const struct imap_arg *first,
    struct imap_search **out, struct imap_search_opts *opts, const char **err_r)
{
	struct pstate ps = { .p = p, .cur = first };
	*out = NULL;
	*err_r = NULL;
	opts->ret = 0;
	opts->ret_given = false;
	opts->charset_utf8 = false;
	/* RETURN comes first, then CHARSET (RFC 4466 §2.6 search-program) */
	if (is_keyword(p, ps.cur, "RETURN")) {
		ps.cur = imap_arg_next(p, ps.cur);
		if (parse_return(&ps, opts) == -1) {
			*err_r = ps.err;
			return IMAP_SEARCH_BAD;
		}
	}
	if (opts->ret == 0)
		opts->ret = IMAP_SEARCH_RET_ALL;
	if (is_keyword(p, ps.cur, "CHARSET")) {
		ps.cur = imap_arg_next(p, ps.cur);
		size_t len;
		const char *cs = take_astring(&ps, &len);
		if (cs == NULL) {
			*err_r = "CHARSET needs a name";
			return IMAP_SEARCH_BAD;
		}
		if (strcasecmp(cs, "UTF-8") != 0 && strcasecmp(cs, "US-ASCII") != 0) {
			*err_r = "Unsupported charset";
			return IMAP_SEARCH_BADCHARSET;
		}
		opts->charset_utf8 = true;
	}
	if (ps.cur == NULL) {
		*err_r = "Missing search key";
		return IMAP_SEARCH_BAD;
	}
	ps.set = xmalloc(sizeof(*ps.set));
	struct skey *root = xcalloc(1, sizeof(*root)), **tail = &root->a;
	root->type = SK_AND;
	while (ps.cur != NULL && ps.err == NULL) {
		if ((*tail = parse_key(&ps, 0)) != NULL)
			tail = &(*tail)->next;
	}
	free(ps.set);
	if (ps.err != NULL) {
		skey_free(root);
		*err_r = ps.err;
		return IMAP_SEARCH_BAD;
	}
	*out = xcalloc(1, sizeof(**out));
	(*out)->root = root;
	(*out)->needs = ps.needs;
	return IMAP_SEARCH_OK;
}

void imap_search_free(struct imap_search **s)
{
	if (*s == NULL)
		return;
	skey_free((*s)->root);
	free(*s);
	*s = NULL;
}

unsigned imap_search_needs(const struct imap_search *s)
{
	return s->needs;
}

/* ---------------------------------------------------------------- evaluation */

/* One evaluation: the texts are built on first use and shared by all keys. */
struct eval {
	const struct imap_search_ctx *c;
	const struct imap_search_msg *m;
	const struct mime_message *mime;   /* m->mime or parsed here (owned then) */
	struct mime_message *own;
	size_t max;                        /* cap for the buffers below */
	bool body_done, hdrs_done, date_done;
	struct buf body;                   /* folded text parts, NUL between parts */
	struct buf hdrs;                   /* folded decoded headers, for TEXT */
	bool date_ok;
	int64_t date;
};

static const struct mime_message *eval_mime(struct eval *e)
{
	if (e->mime == NULL && e->m->data != NULL) {
		e->own = mime_parse(e->m->data, e->m->len, NULL);
		e->mime = e->own;
	}
	return e->mime;
}

/* Unfolded, RFC 2047-decoded, case-folded value of field f into out (reset first). */
static int field_text(const struct mime_message *mm, const struct mime_field *f, struct buf *tmp,
    struct buf *out)
{
	buf_reset(tmp);
	for (size_t i = f->value; i < f->value_end; i++)
		if (mm->data[i] != '\r' && mm->data[i] != '\n' && buf_appendc(tmp, mm->data[i]) == -1)
			return -1;
	size_t s = 0, n = tmp->len;
	while (s < n && (tmp->data[s] == ' ' || tmp->data[s] == '\t'))
		s++;
	while (n > s && (tmp->data[n - 1] == ' ' || tmp->data[n - 1] == '\t'))
		n--;
	struct buf dec;
	buf_init(&dec, tmp->max);
	int r = mime_decode_words(tmp->data != NULL ? tmp->data + s : "", n - s, &dec);
	if (r == 0)
		r = fold_append(out, dec.data != NULL ? dec.data : "", dec.len);
	buf_free(&dec);
	return r;
}

static bool match_header(struct eval *e, const struct skey *k)
{
	const struct mime_message *mm = eval_mime(e);
	if (mm == NULL)
		return false;
	const struct mime_part *root = mm->root;
	size_t pos = root->hdr_start, nl = strlen(k->name);
	struct mime_field f;
	struct buf tmp, val;
	bool hit = false;
	buf_init(&tmp, e->max);
	buf_init(&val, e->max);
	while (!hit && mime_field_next(mm, root, &pos, &f)) {
		if (f.name_len != nl || strncasecmp(mm->data + f.start, k->name, nl) != 0)
			continue;
		buf_reset(&val);
		if (field_text(mm, &f, &tmp, &val) == 0)
			hit = contains(val.data != NULL ? val.data : "", val.len, k);
	}
	buf_free(&tmp);
	buf_free(&val);
	return hit;
}

/* Header of part p (a message), every field as "name: decoded value\n", folded. */
static int add_header_text(struct eval *e, const struct mime_part *p)
{
	const struct mime_message *mm = e->mime;
	size_t pos = p->hdr_start;
	struct mime_field f;
	struct buf tmp;
	int r = 0;
	buf_init(&tmp, e->max);
	while (r == 0 && mime_field_next(mm, p, &pos, &f)) {
		r = fold_append(&e->hdrs, mm->data + f.start, f.name_len);
		if (r == 0)
			r = buf_appends(&e->hdrs, ": ");
		if (r == 0)
			r = field_text(mm, &f, &tmp, &e->hdrs);
		if (r == 0)
			r = buf_appendc(&e->hdrs, '\n');
	}
	buf_free(&tmp);
	return r;
}

/* A text/... leaf: transfer-decoded, converted to UTF-8, folded, into e->body. */
static int add_text_part(struct eval *e, const struct mime_part *p)
{
	const struct mime_message *mm = e->mime;
	struct mime_ctype ct;
	mime_part_ctype(mm, p, false, &ct);
	int r = 0;
	if (ct.type != NULL && strcasecmp(ct.type, "text") == 0) {
		struct buf raw, utf;
		buf_init(&raw, e->max);
		buf_init(&utf, e->max);
		const char *body = mm->data + p->body_start;
		int d = mime_decode_cte(mime_part_cte(mm, p), body, p->body_len, &raw, NULL);
		if (d == -2)           /* unknown encoding: search the octets as they are */
			d = buf_append(&raw, body, p->body_len);
		r = d == -1 ? -1 : mime_charset_to_utf8(mime_param_get(&ct, "charset"),
		    raw.data != NULL ? raw.data : "", raw.len, &utf);
		if (r == 0)
			r = fold_append(&e->body, utf.data != NULL ? utf.data : "", utf.len);
		if (r == 0)
			r = buf_appendc(&e->body, '\0');
		buf_free(&raw);
		buf_free(&utf);
	}
	mime_ctype_clear(&ct);
	return r;
}

/* Walks the tree without recursion (depth is bounded, but the walk need not be). */
static int build_texts(struct eval *e)
{
	const struct mime_part *p = e->mime->root;
	if (add_header_text(e, p) == -1)
		return -1;
	while (p != NULL) {
		if (p->kind == MIME_KIND_LEAF && !p->fake && add_text_part(e, p) == -1)
			return -1;
		if (p->kind == MIME_KIND_MESSAGE && p->children != NULL &&
		    add_header_text(e, p->children) == -1)
			return -1;
		if (p->children != NULL) {
			p = p->children;
			continue;
		}
		while (p != NULL && p->next == NULL)
			p = p->parent;
		if (p != NULL)
			p = p->next;
	}
	return 0;
}

static bool match_text(struct eval *e, const struct skey *k)
{
	if (!e->body_done) {
		e->body_done = e->hdrs_done = true;
		if (eval_mime(e) == NULL || build_texts(e) == -1)
			return false;       /* over the cap: treated as no match */
	}
	if (k->type == SK_TEXT && contains(e->hdrs.data != NULL ? e->hdrs.data : "", e->hdrs.len, k))
		return true;
	return contains(e->body.data != NULL ? e->body.data : "", e->body.len, k);
}

static bool sent_date(struct eval *e, int64_t *d_r)
{
	if (!e->date_done) {
		e->date_done = true;
		const struct mime_message *mm = eval_mime(e);
		char *v = mm != NULL ? mime_header_dup(mm, mm->root, "Date", 0, NULL) : NULL;
		e->date_ok = v != NULL && parse_header_date(v, strlen(v), &e->date) == 0;
		free(v);
	}
	*d_r = e->date;
	return e->date_ok;
}

static bool in_ranges(const struct skey *k, uint32_t n, uint32_t max)
{
	for (size_t i = 0; i < k->nr; i++) {
		uint32_t a = k->r[i].lo == IMAP_SEQ_STAR ? max : k->r[i].lo;
		uint32_t b = k->r[i].hi == IMAP_SEQ_STAR ? max : k->r[i].hi;
		if (a > b) {
			uint32_t t = a;
			a = b;
			b = t;
		}
		if (n >= a && n <= b && n != 0)
			return true;
	}
	return false;
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return x < y ? -1 : x > y;
}

static bool match_set(struct eval *e, const struct skey *k)
{
	const struct imap_search_ctx *c = e->c;
	if (k->dollar)
		return c->saved != NULL && c->nsaved > 0 &&
		    bsearch(&e->m->uid, c->saved, c->nsaved, sizeof(uint32_t), cmp_u32) != NULL;
	if (k->type == SK_UID)
		return in_ranges(k, e->m->uid, c->max_uid);
	return e->m->seq <= c->max_seq && in_ranges(k, e->m->seq, c->max_seq);
}

static bool match_keyword(struct eval *e, const struct skey *k)
{
	for (size_t i = 0; i < e->c->nkw && i < 64; i++)
		if (e->c->kwnames[i] != NULL && strcasecmp(e->c->kwnames[i], k->name) == 0)
			return (e->m->keywords & ((uint64_t)1 << i)) != 0;
	return false;
}

static int64_t internal_day(const struct imap_search_msg *m)
{
	struct tm tm;
	if (gmtime_r(&m->internal_date, &tm) == NULL)
		return 0;
	return days_from_civil((int64_t)tm.tm_year + 1900, (unsigned)tm.tm_mon + 1, (unsigned)tm.tm_mday);
}

static bool eval_key(struct eval *e, const struct skey *k);

static bool eval_dates(struct eval *e, const struct skey *k)
{
	int64_t d;
	if (k->type >= SK_SENTBEFORE) {
		if (!sent_date(e, &d))
			return false;
	} else {
		d = internal_day(e->m);
	}
	switch (k->type) {
	case SK_BEFORE: case SK_SENTBEFORE:
		return d < k->num;
	case SK_ON: case SK_SENTON:
		return d == k->num;
	default:
		return d >= k->num;
	}
}

static bool eval_key(struct eval *e, const struct skey *k)
{
	const struct imap_search_msg *m = e->m;
	switch (k->type) {
	case SK_AND:
		for (const struct skey *c = k->a; c != NULL; c = c->next)
			if (!eval_key(e, c))
				return false;
		return true;
	case SK_OR:
		return eval_key(e, k->a) || eval_key(e, k->b);
	case SK_NOT:
		return !eval_key(e, k->a);
	case SK_ALL:
		return true;
	case SK_SEQ:
	case SK_UID:
		return match_set(e, k);
	case SK_FLAG:
		return ((m->flags & k->flag) != 0) != k->neg;
	case SK_RECENT:
		return m->recent != k->neg;
	case SK_NEW:
		return m->recent && (m->flags & MF_SEEN) == 0;
	case SK_KEYWORD:
		return match_keyword(e, k) != k->neg;
	case SK_LARGER:
		return m->size > (uint64_t)k->num;
	case SK_SMALLER:
		return m->size < (uint64_t)k->num;
	case SK_BEFORE: case SK_ON: case SK_SINCE:
	case SK_SENTBEFORE: case SK_SENTON: case SK_SENTSINCE:
		return eval_dates(e, k);
	case SK_HEADER:
		return match_header(e, k);
	case SK_BODY:
	case SK_TEXT:
		return match_text(e, k);
	}
	return false;
}

bool imap_search_match(const struct imap_search *s, const struct imap_search_ctx *c,
    const struct imap_search_msg *m)
{
	struct eval e = { .c = c, .m = m, .mime = m->mime };
	/* decoded text: base64 shrinks, QP shrinks, a charset conversion at most triples
	 * (U+FFFD for a byte), folding never grows; plus the headers of attached messages */
	e.max = m->len <= SIZE_MAX / 8 ? 4 * m->len + 4096 : SIZE_MAX / 2;
	buf_init(&e.body, e.max);
	buf_init(&e.hdrs, e.max);
	bool r = eval_key(&e, s->root);
	buf_free(&e.body);
	buf_free(&e.hdrs);
	mime_message_free(&e.own);
	return r;
}

/* ---------------------------------------------------------------- replies */

int imap_search_set_format(struct buf *out, const uint32_t *v, size_t n)
{
	size_t i = 0;
	bool first = true;
	while (i < n) {
		uint32_t lo = v[i], hi = v[i];
		while (i + 1 < n && (v[i + 1] == hi || v[i + 1] == hi + 1))
			hi = v[++i];
		i++;
		int r = lo == hi ? buf_printf(out, "%s%u", first ? "" : ",", (unsigned)lo) :
		    buf_printf(out, "%s%u:%u", first ? "" : ",", (unsigned)lo, (unsigned)hi);
		if (r == -1)
			return -1;
		first = false;
	}
	return 0;
}

static int format_esearch(struct buf *out, const char *tag, bool uid,
    const struct imap_search_opts *o, const uint32_t *res, size_t n)
{
	if (buf_appends(out, "* ESEARCH (TAG \"") == -1)
		return -1;
	for (const char *t = tag; *t != '\0'; t++)
		if (((*t == '"' || *t == '\\') && buf_appendc(out, '\\') == -1) || buf_appendc(out, *t) == -1)
			return -1;
	if (buf_appendc(out, '"') == -1 || buf_appendc(out, ')') == -1 ||
	    (uid && buf_appends(out, " UID") == -1))
		return -1;
	if (n > 0 && (o->ret & IMAP_SEARCH_RET_MIN) && buf_printf(out, " MIN %u", (unsigned)res[0]) == -1)
		return -1;
	if (n > 0 && (o->ret & IMAP_SEARCH_RET_MAX) && buf_printf(out, " MAX %u", (unsigned)res[n - 1]) == -1)
		return -1;
	if ((o->ret & IMAP_SEARCH_RET_COUNT) && buf_printf(out, " COUNT %zu", n) == -1)
		return -1;
	if (n > 0 && (o->ret & IMAP_SEARCH_RET_ALL) &&
	    (buf_appends(out, " ALL ") == -1 || imap_search_set_format(out, res, n) == -1))
		return -1;
	return buf_appends(out, "\r\n");
}

int imap_search_format(struct buf *out, const char *tag, bool uid,
    const struct imap_search_opts *o, const uint32_t *res, size_t n)
{
	size_t save = out->len;
	int r;
	if (o->esearch) {
		if (o->ret == IMAP_SEARCH_RET_SAVE)
			return 0;                  /* RFC 5182 §2.4: SAVE alone, no ESEARCH */
		r = format_esearch(out, tag, uid, o, res, n);
	} else {
		r = buf_appends(out, "* SEARCH");
		for (size_t i = 0; i < n && r == 0; i++)
			r = buf_printf(out, " %u", (unsigned)res[i]);
		if (r == 0)
			r = buf_appends(out, "\r\n");
	}
	if (r == -1) {
		out->len = save;               /* no half reply */
		if (out->data != NULL)
			out->data[save] = '\0';
	}
	return r;
}

size_t imap_search_save_filter(const struct imap_search_opts *o, uint32_t *res, size_t n)
{
	unsigned mm = o->ret & (IMAP_SEARCH_RET_MIN | IMAP_SEARCH_RET_MAX);
	if (n == 0 || mm == 0 || (o->ret & (IMAP_SEARCH_RET_ALL | IMAP_SEARCH_RET_COUNT)) != 0)
		return n;
	uint32_t lo = res[0], hi = res[n - 1];
	size_t k = 0;
	if (mm & IMAP_SEARCH_RET_MIN)
		res[k++] = lo;
	if ((mm & IMAP_SEARCH_RET_MAX) && !(k == 1 && hi == lo))
		res[k++] = hi;
	return k;
}
