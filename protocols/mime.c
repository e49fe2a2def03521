/* mime.c: pure MIME parser (see mime.h); the IMAP items built from it are in mime_imap.c. */
#include "protocols/mime.h"

#include <ctype.h>
#include <iconv.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/xmalloc.h"

/* ---------------------------------------------------------------- lines */

/* End of the line at p (index just past its LF, or end). */
static size_t line_end(const char *d, size_t p, size_t end)
{
	const char *lf = memchr(d + p, '\n', end - p);
	return lf == NULL ? end : (size_t)(lf - d) + 1;
}

static bool line_blank(const char *d, size_t p, size_t le)
{
	return (le - p == 1 && d[p] == '\n') || (le - p == 2 && d[p] == '\r' && d[p + 1] == '\n');
}

static size_t count_lf(const char *d, size_t len)
{
	size_t n = 0;
	const char *p = d, *e = d + len;
	while (p < e && (p = memchr(p, '\n', (size_t)(e - p))) != NULL) {
		n++;
		p++;
	}
	return n;
}

/* ---------------------------------------------------------------- header fields */

struct field {
	size_t name, name_len;     /* offsets into data */
	size_t value, value_end;   /* raw value, folds included, final EOL excluded */
};

/* Next field of the header block [*pos, end): returns 1 with f set, 0 at the end.
 * Lines that are not "name:" (RFC 5322 §3.6.8 ftext) are skipped. */
static int field_next(const char *d, size_t *pos, size_t end, struct field *f)
{
	while (*pos < end) {
		size_t p = *pos, le = line_end(d, p, end);
		if (line_blank(d, p, le))
			return 0;
		size_t q = p;
		while (q < le && d[q] > 32 && d[q] < 127 && d[q] != ':')
			q++;
		size_t nlen = q - p;
		while (q < le && (d[q] == ' ' || d[q] == '\t'))  /* obs-optional */
			q++;
		/* continuation lines belong to this field */
		size_t fe = le;
		while (fe < end && (d[fe] == ' ' || d[fe] == '\t'))
			fe = line_end(d, fe, end);
		*pos = fe;
		if (nlen == 0 || q >= le || d[q] != ':')
			continue;
		f->name = p;
		f->name_len = nlen;
		f->value = q + 1;
		f->value_end = fe;
		while (f->value_end > f->value && (d[f->value_end - 1] == '\n' || d[f->value_end - 1] == '\r'))
			f->value_end--;
		return 1;
	}
	return 0;
}

/* Unfolds [s, e) into out (CR and LF dropped, RFC 5322 §2.2.3), trimmed. */
static int unfold(const char *d, size_t s, size_t e, struct buf *out, bool *folded_r)
{
	bool folded = false;
	while (s < e && (d[s] == ' ' || d[s] == '\t' || d[s] == '\r' || d[s] == '\n'))
		s++;
	while (e > s && (d[e - 1] == ' ' || d[e - 1] == '\t' || d[e - 1] == '\r' || d[e - 1] == '\n'))
		e--;
	for (size_t i = s; i < e; i++) {
		if (d[i] == '\r' || d[i] == '\n') {
			folded = true;
			continue;
		}
		if (buf_appendc(out, d[i]) == -1)
			return -1;
	}
	if (folded_r != NULL)
		*folded_r = folded;
	return 0;
}

int mime_header_get(const struct mime_message *m, const struct mime_part *p,
    const char *name, int nth, struct buf *out, bool *folded_r)
{
	size_t pos = p->hdr_start, end = p->hdr_start + p->hdr_len, nl = strlen(name);
	struct field f, found;
	int n = 0, have = 0;
	while (field_next(m->data, &pos, end, &f)) {
		if (f.name_len != nl || strncasecmp(m->data + f.name, name, nl) != 0)
			continue;
		if (nth < 0 || n == nth) {
			found = f;
			have = 1;
			if (nth >= 0)
				break;
		}
		n++;
	}
	if (!have)
		return 0;
	return unfold(m->data, found.value, found.value_end, out, folded_r) == -1 ? -1 : 1;
}

int mime_field_next(const struct mime_message *m, const struct mime_part *p, size_t *pos,
    struct mime_field *f)
{
	struct field fl;
	if (!field_next(m->data, pos, p->hdr_start + p->hdr_len, &fl))
		return 0;
	f->start = fl.name;
	f->name_len = fl.name_len;
	f->value = fl.value;
	f->value_end = fl.value_end;
	f->end = *pos;
	return 1;
}

/* Unfolded value as a fresh string, or NULL when absent. */
char *mime_header_dup(const struct mime_message *m, const struct mime_part *p,
    const char *name, int nth, bool *folded_r)
{
	struct buf b;
	buf_init(&b, m->len + 1);
	if (mime_header_get(m, p, name, nth, &b, folded_r) != 1) {
		buf_free(&b);
		return NULL;
	}
	if (buf_appendc(&b, '\0') == -1) {  /* make sure data != NULL for "" */
		buf_free(&b);
		return NULL;
	}
	return buf_steal(&b, NULL);
}

/* ---------------------------------------------------------------- RFC 2045 tokens */

/* Skips whitespace and (nested) comments, RFC 5322 §3.2.2. */
void mime_skip_cfws(const char *s, size_t len, size_t *i)
{
	int depth = 0;
	while (*i < len) {
		char c = s[*i];
		if (depth > 0 && c == '\\' && *i + 1 < len) {
			*i += 2;
			continue;
		}
		if (c == '(')
			depth++;
		else if (c == ')' && depth > 0)
			depth--;
		else if (depth == 0 && c != ' ' && c != '\t' && c != '\r' && c != '\n')
			return;
		(*i)++;
	}
}

static bool is_tspecial(char c)
{
	return strchr("()<>@,;:\\\"/[]?=", c) != NULL;
}

/* RFC 2045 §5.1 token, or NULL when none. */
char *mime_token(const char *s, size_t len, size_t *i)
{
	size_t st = *i;
	while (*i < len && (unsigned char)s[*i] > 32 && s[*i] != 127 && !is_tspecial(s[*i]))
		(*i)++;
	return *i > st ? xstrndup(s + st, *i - st) : NULL;
}

/* quoted-string at s[*i] == '"' (unterminated runs to the end), unescaped. */
char *mime_quoted(const char *s, size_t len, size_t *i)
{
	char *v = xmalloc(len - *i + 1);
	size_t n = 0;
	for ((*i)++; *i < len && s[*i] != '"'; (*i)++) {
		if (s[*i] == '\\' && *i + 1 < len)
			(*i)++;
		v[n++] = s[*i];
	}
	if (*i < len)
		(*i)++;
	v[n] = '\0';
	return v;
}

static void add_param(struct mime_ctype *ct, char *name, char *value)
{
	if (ct->nparams >= MIME_MAX_PARAMS) {
		free(name);
		free(value);
		return;
	}
	ct->params = xreallocarray(ct->params, ct->nparams + 1, sizeof(*ct->params));
	ct->params[ct->nparams++] = (struct mime_param){ name, value, NULL, NULL };
}

int mime_ctype_parse(const char *v, size_t len, bool with_subtype, struct mime_ctype *ct)
{
	size_t i = 0;
	memset(ct, 0, sizeof(*ct));
	mime_skip_cfws(v, len, &i);
	ct->type = mime_token(v, len, &i);
	mime_skip_cfws(v, len, &i);
	if (with_subtype && ct->type != NULL && i < len && v[i] == '/') {
		i++;
		mime_skip_cfws(v, len, &i);
		ct->subtype = mime_token(v, len, &i);
	}
	int ret = ct->type != NULL && (!with_subtype || ct->subtype != NULL) ? 0 : -1;
	/* parameters: ; attribute = value (RFC 2045 §5.1); junk skipped to the next ';' */
	while (i < len) {
		mime_skip_cfws(v, len, &i);
		if (i < len && v[i] != ';') {
			while (i < len && v[i] != ';')
				i++;
		}
		if (i >= len)
			break;
		i++;
		mime_skip_cfws(v, len, &i);
		char *name = mime_token(v, len, &i), *val = NULL;
		mime_skip_cfws(v, len, &i);
		if (name == NULL || i >= len || v[i] != '=') {
			free(name);
			continue;
		}
		i++;
		mime_skip_cfws(v, len, &i);
		if (i < len && v[i] == '"') {
			val = mime_quoted(v, len, &i);
		} else {
			size_t st = i;  /* lenient: anything up to ';' or whitespace */
			while (i < len && v[i] != ';' && v[i] != ' ' && v[i] != '\t' && v[i] != '(')
				i++;
			val = xstrndup(v + st, i - st);
		}
		add_param(ct, name, val);
	}
	if (ret == -1) {
		free(ct->type);
		free(ct->subtype);
		ct->type = ct->subtype = NULL;
	}
	return ret;
}

void mime_params_free(struct mime_param **p_r, size_t n)
{
	struct mime_param *p = *p_r;
	if (p == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		free(p[i].name);
		free(p[i].value);
		free(p[i].charset);
		free(p[i].language);
	}
	free(p);
	*p_r = NULL;
}

void mime_ctype_clear(struct mime_ctype *ct)
{
	free(ct->type);
	free(ct->subtype);
	mime_params_free(&ct->params, ct->nparams);
	memset(ct, 0, sizeof(*ct));
}

const char *mime_param_get(const struct mime_ctype *ct, const char *name)
{
	for (size_t i = 0; i < ct->nparams; i++)
		if (strcasecmp(ct->params[i].name, name) == 0)
			return ct->params[i].value;
	return NULL;
}

/* ---------------------------------------------------------------- RFC 2231 */

/* Splits "name*N*" into base length, section (-1 none) and extended flag. */
static void split_2231(const char *n, size_t *base_r, long *sect_r, bool *ext_r)
{
	size_t len = strlen(n);
	*ext_r = false;
	*sect_r = -1;
	if (len > 0 && n[len - 1] == '*') {
		*ext_r = true;
		len--;
	}
	const char *star = memchr(n, '*', len);
	*base_r = star != NULL ? (size_t)(star - n) : len;
	if (star != NULL && star + 1 < n + len) {
		char *endp;
		long s = strtol(star + 1, &endp, 10);
		if (endp == n + len && s >= 0 && s < 1000 && isdigit((unsigned char)star[1]))
			*sect_r = s;
		else
			*base_r = len;  /* not a section number: an odd name, kept whole */
	} else if (star != NULL) {
		*base_r = len;
	}
}

struct p2231 {
	size_t idx;                /* into ct->params */
	size_t base;
	long sect;
	bool ext;
};

static int cmp_2231(const void *a, const void *b, void *ctp)
{
	const struct p2231 *x = a, *y = b;
	const struct mime_ctype *ct = ctp;
	size_t n = x->base < y->base ? x->base : y->base;
	int c = strncasecmp(ct->params[x->idx].name, ct->params[y->idx].name, n);
	if (c != 0)
		return c;
	if (x->base != y->base)
		return x->base < y->base ? -1 : 1;
	if (x->sect != y->sect)
		return x->sect < y->sect ? -1 : 1;
	return x->idx < y->idx ? -1 : (x->idx > y->idx);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c = (char)tolower((unsigned char)c);
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* %XX decoding of an extended-value piece into out. */
static void pct_decode(const char *s, struct buf *out)
{
	for (; *s != '\0'; s++) {
		int h, l;
		if (*s == '%' && (h = hexval(s[1])) >= 0 && (l = hexval(s[2])) >= 0) {
			(void)buf_appendc(out, (char)(h * 16 + l));
			s += 2;
		} else {
			(void)buf_appendc(out, *s);
		}
	}
}

/*
 * Groups the parameters RFC 2231 style. Non-'*' parameters come first in header
 * order, then the '*' ones sorted by name and section. A run numbered 0..n
 * without gaps is merged into one (named "name*" when any piece is extended);
 * others are kept one by one. `decode` selects %-decoding and charset conversion
 * (API) over Dovecot-compatible raw merging (BODYSTRUCTURE).
 */
void mime_params_2231(const struct mime_ctype *ct, bool decode, struct mime_param **out_r,
    size_t *n_r)
{
	struct mime_param *out = xcalloc(ct->nparams + 1, sizeof(*out));
	struct p2231 *st = xcalloc(ct->nparams + 1, sizeof(*st));
	size_t n = 0, ns = 0;
	for (size_t i = 0; i < ct->nparams; i++) {
		if (strchr(ct->params[i].name, '*') == NULL) {
			out[n].name = xstrdup(ct->params[i].name);
			out[n++].value = xstrdup(ct->params[i].value);
			continue;
		}
		st[ns].idx = i;
		split_2231(ct->params[i].name, &st[ns].base, &st[ns].sect, &st[ns].ext);
		ns++;
	}
	qsort_r(st, ns, sizeof(*st), cmp_2231, (void *)ct);
	for (size_t i = 0; i < ns;) {
		size_t j = i + 1;
		bool contiguous = st[i].sect == 0 || (st[i].sect == -1);
		while (j < ns && st[j].base == st[i].base &&
		    strncasecmp(ct->params[st[j].idx].name, ct->params[st[i].idx].name, st[i].base) == 0) {
			if (st[j].sect != st[j - 1].sect + 1)
				contiguous = false;
			j++;
		}
		if (st[i].sect == -1 && j > i + 1)
			contiguous = false;
		if (!contiguous) {
			for (; i < j; i++) {
				out[n].name = xstrdup(ct->params[st[i].idx].name);
				out[n++].value = xstrdup(ct->params[st[i].idx].value);
			}
			continue;
		}
		bool ext = false;
		struct buf v;
		buf_init(&v, SIZE_MAX / 2);
		for (size_t k = i; k < j; k++) {
			const char *pv = ct->params[st[k].idx].value;
			ext |= st[k].ext;
			if (decode && st[k].ext && k == i) {
				const char *q1 = strchr(pv, '\''), *q2 = q1 ? strchr(q1 + 1, '\'') : NULL;
				if (q2 != NULL) {
					out[n].charset = xstrndup(pv, (size_t)(q1 - pv));
					out[n].language = xstrndup(q1 + 1, (size_t)(q2 - q1 - 1));
					pv = q2 + 1;
				}
			}
			if (decode && st[k].ext)
				pct_decode(pv, &v);
			else
				(void)buf_appends(&v, pv);
		}
		(void)buf_appendc(&v, '\0');
		char *raw = buf_steal(&v, NULL);
		const char *base = ct->params[st[i].idx].name;
		if (decode) {
			out[n].name = xstrndup(base, st[i].base);
			buf_init(&v, SIZE_MAX / 2);
			(void)mime_charset_to_utf8(out[n].charset, raw, strlen(raw), &v);
			(void)buf_appendc(&v, '\0');
			out[n++].value = buf_steal(&v, NULL);
			free(raw);
		} else {
			out[n].name = xasprintf("%.*s%s", (int)st[i].base, base, ext ? "*" : "");
			out[n++].value = raw;
		}
		i = j;
	}
	free(st);
	*out_r = out;
	*n_r = n;
}

void mime_params_decode(const struct mime_ctype *ct, struct mime_param **out_r, size_t *n_r)
{
	mime_params_2231(ct, true, out_r, n_r);
}

/* ---------------------------------------------------------------- charsets, RFC 2047 */

int mime_charset_to_utf8(const char *cs, const char *src, size_t len, struct buf *out)
{
	if (cs == NULL || *cs == '\0' || strcasecmp(cs, "utf-8") == 0 || strcasecmp(cs, "us-ascii") == 0)
		return buf_append(out, src, len);
	iconv_t cd = iconv_open("UTF-8", cs);
	if (cd == (iconv_t)-1) {
		for (size_t i = 0; i < len; i++)
			if (((unsigned char)src[i] < 0x80 ? buf_appendc(out, src[i])
			    : buf_appends(out, "\xef\xbf\xbd")) == -1)
				return -1;
		return 0;
	}
	char tmp[256];
	char *in = (char *)src;
	size_t inleft = len;
	int ret = 0;
	while (inleft > 0 && ret == 0) {
		char *o = tmp;
		size_t oleft = sizeof(tmp);
		size_t r = iconv(cd, &in, &inleft, &o, &oleft);
		if (buf_append(out, tmp, (size_t)(o - tmp)) == -1)
			ret = -1;
		else if (r == (size_t)-1 && oleft == sizeof(tmp) - (size_t)(o - tmp) && o - tmp < 16) {
			/* invalid or incomplete input: replace one byte and go on */
			if (buf_appends(out, "\xef\xbf\xbd") == -1)
				ret = -1;
			in++;
			inleft--;
		}
	}
	iconv_close(cd);
	return ret;
}

static int b64val(char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Decodes one encoded word at s (RFC 2047 §2) into out; returns its length or 0. */
static size_t encoded_word(const char *s, size_t len, struct buf *out)
{
	if (len < 8 || s[0] != '=' || s[1] != '?')
		return 0;
	size_t i = 2, cs = 2;
	while (i < len && s[i] != '?' && s[i] > 32 && s[i] < 127)
		i++;
	if (i + 3 >= len || s[i] != '?' || s[i + 2] != '?' || i == cs)
		return 0;
	char enc = (char)toupper((unsigned char)s[i + 1]);
	size_t ts = i + 3, te = ts;
	while (te + 1 < len && !(s[te] == '?' && s[te + 1] == '=') && s[te] != ' ' && s[te] != '\t')
		te++;
	if (te + 1 >= len || s[te] != '?' || (enc != 'B' && enc != 'Q'))
		return 0;
	char charset[64];
	size_t cl = i - cs;
	const char *star = memchr(s + cs, '*', cl);  /* RFC 2231 §5 language suffix */
	if (star != NULL)
		cl = (size_t)(star - (s + cs));
	if (cl >= sizeof(charset))
		return 0;
	memcpy(charset, s + cs, cl);
	charset[cl] = '\0';
	char *raw = xmalloc(te - ts + 1);
	size_t n = 0;
	unsigned acc = 0;
	int bits = 0;
	for (size_t k = ts; k < te; k++) {
		int h, l;
		if (enc == 'B') {
			int v = b64val(s[k]);
			if (v < 0)
				continue;
			acc = (acc << 6) | (unsigned)v;
			if ((bits += 6) >= 8) {
				bits -= 8;
				raw[n++] = (char)((acc >> bits) & 0xff);
			}
		} else if (s[k] == '_') {
			raw[n++] = ' ';
		} else if (s[k] == '=' && k + 2 < te && (h = hexval(s[k + 1])) >= 0 && (l = hexval(s[k + 2])) >= 0) {
			raw[n++] = (char)(h * 16 + l);
			k += 2;
		} else {
			raw[n++] = s[k];
		}
	}
	int r = mime_charset_to_utf8(charset, raw, n, out);
	free(raw);
	return r == -1 ? 0 : te + 2;
}

int mime_decode_words(const char *in, size_t len, struct buf *out)
{
	size_t i = 0, pending_ws = 0, ws_at = 0;
	bool last_was_word = false;
	while (i < len) {
		if (in[i] == ' ' || in[i] == '\t') {
			if (pending_ws == 0)
				ws_at = i;
			pending_ws++;
			i++;
			continue;
		}
		size_t save = out->len;
		size_t wl = 0;
		if (in[i] == '=' && (i == 0 || pending_ws > 0 || last_was_word)) {
			/* whitespace between two encoded words is dropped (§6.2) */
			if (pending_ws > 0 && !last_was_word && buf_append(out, in + ws_at, pending_ws) == -1)
				return -1;
			save = out->len;
			wl = encoded_word(in + i, len - i, out);
			if (wl == 0) {
				out->len = save;
				if (pending_ws > 0 && last_was_word && buf_append(out, in + ws_at, pending_ws) == -1)
					return -1;
			}
		} else if (pending_ws > 0 && buf_append(out, in + ws_at, pending_ws) == -1) {
			return -1;
		}
		pending_ws = 0;
		if (wl > 0) {
			i += wl;
			last_was_word = true;
			continue;
		}
		last_was_word = false;
		size_t st = i;
		while (i < len && in[i] != ' ' && in[i] != '\t')
			i++;
		if (buf_append(out, in + st, i - st) == -1)
			return -1;
	}
	if (pending_ws > 0 && buf_append(out, in + ws_at, pending_ws) == -1)
		return -1;
	return 0;
}

/* ---------------------------------------------------------------- structure */

struct pctx {
	struct mime_message *m;
	unsigned max_depth, max_parts;
};

static struct mime_part *part_new(struct pctx *c, struct mime_part *parent, size_t s, size_t e)
{
	struct mime_part *p = xcalloc(1, sizeof(*p));
	p->parent = parent;
	p->depth = parent != NULL ? parent->depth + 1 : 0;
	p->hdr_start = s;
	/* header: up to and including the first blank line, else the whole range */
	size_t pos = s;
	p->hdr_len = e - s;
	while (pos < e) {
		size_t le = line_end(c->m->data, pos, e);
		if (le > pos && c->m->data[le - 1] == '\n' && (le - pos < 2 || c->m->data[le - 2] != '\r'))
			c->m->flags |= MIME_F_BARE_LF;
		if (line_blank(c->m->data, pos, le)) {
			p->hdr_len = le - s;
			break;
		}
		pos = le;
	}
	p->body_start = s + p->hdr_len;
	p->body_len = e - p->body_start;
	p->lines = count_lf(c->m->data + p->body_start, p->body_len);
	c->m->nparts++;
	return p;
}

static void add_child(struct mime_part *p, struct mime_part *ch)
{
	struct mime_part **tail = &p->children;
	while (*tail != NULL)
		tail = &(*tail)->next;
	*tail = ch;
	p->nchildren++;
}

/* "--boundary" [ "--" ] *WSP EOL at line [p, le) (RFC 2046 §5.1.1). */
static bool is_delim(const char *d, size_t p, size_t le, const char *b, size_t bl, bool *close_r)
{
	if (le - p < 2 + bl || d[p] != '-' || d[p + 1] != '-' || memcmp(d + p + 2, b, bl) != 0)
		return false;
	size_t q = p + 2 + bl;
	*close_r = q + 1 < le && d[q] == '-' && d[q + 1] == '-';
	if (*close_r)
		q += 2;
	while (q < le && (d[q] == ' ' || d[q] == '\t'))
		q++;
	return q == le || (d[q] == '\n') || (d[q] == '\r' && q + 1 < le && d[q + 1] == '\n');
}

static void parse_entity(struct pctx *c, struct mime_part *p, bool digest_child);

static void split_multipart(struct pctx *c, struct mime_part *p, const char *b, bool digest)
{
	const char *d = c->m->data;
	size_t bl = strlen(b), pos = p->body_start, end = p->body_start + p->body_len, start = 0;
	bool have = false, closed = false;
	while (pos < end) {
		size_t le = line_end(d, pos, end);
		bool cl;
		if (bl > 0 && is_delim(d, pos, le, b, bl, &cl)) {
			if (have) {
				size_t pe = pos;  /* the CRLF before the delimiter is part of it */
				if (pe > start && d[pe - 1] == '\n')
					pe--;
				if (pe > start && d[pe - 1] == '\r')
					pe--;
				if (c->m->nparts >= c->max_parts) {
					c->m->flags |= MIME_F_TOO_MANY_PARTS;
					return;
				}
				struct mime_part *ch = part_new(c, p, start, pe);
				add_child(p, ch);
				parse_entity(c, ch, digest);
			}
			if (cl) {
				closed = true;
				break;
			}
			have = true;
			start = le;
		}
		pos = le;
	}
	if (!closed) {
		c->m->flags |= MIME_F_NO_CLOSE_DELIM;
		if (have && c->m->nparts < c->max_parts) {
			struct mime_part *ch = part_new(c, p, start, end);
			add_child(p, ch);
			parse_entity(c, ch, digest);
		}
	}
}

static bool identity_cte(const struct mime_message *m, const struct mime_part *p)
{
	char *cte = mime_header_dup(m, p, "Content-Transfer-Encoding", 0, NULL);
	struct mime_ctype ct;
	bool id = true;
	if (cte != NULL && mime_ctype_parse(cte, strlen(cte), false, &ct) == 0) {
		id = strcasecmp(ct.type, "7bit") == 0 || strcasecmp(ct.type, "8bit") == 0 ||
		    strcasecmp(ct.type, "binary") == 0;
		mime_ctype_clear(&ct);
	}
	free(cte);
	return id;
}

/* Content-Type of p, defaults applied (RFC 2045 §5.2, RFC 2046 §5.1.5 digest). */
void mime_part_ctype(const struct mime_message *m, const struct mime_part *p, bool digest_child,
    struct mime_ctype *ct)
{
	char *v = mime_header_dup(m, p, "Content-Type", 0, NULL);
	if (v == NULL || mime_ctype_parse(v, strlen(v), true, ct) == -1) {
		if (v != NULL)
			mime_ctype_clear(ct);
		memset(ct, 0, sizeof(*ct));
		ct->type = xstrdup(digest_child ? "message" : "text");
		ct->subtype = xstrdup(digest_child ? "rfc822" : "plain");
		if (!digest_child)
			add_param(ct, xstrdup("charset"), xstrdup("us-ascii"));
	}
	free(v);
}

static void parse_entity(struct pctx *c, struct mime_part *p, bool digest_child)
{
	struct mime_ctype ct;
	mime_part_ctype(c->m, p, digest_child, &ct);
	bool multi = strcasecmp(ct.type, "multipart") == 0;
	bool msg = strcasecmp(ct.type, "message") == 0 && (strcasecmp(ct.subtype, "rfc822") == 0 ||
	    strcasecmp(ct.subtype, "global") == 0) && identity_cte(c->m, p);
	if ((multi || msg) && p->depth >= c->max_depth) {
		c->m->flags |= MIME_F_TOO_DEEP;
		multi = msg = false;
	}
	if (multi) {
		p->kind = MIME_KIND_MULTIPART;
		const char *b = mime_param_get(&ct, "boundary");
		split_multipart(c, p, b != NULL ? b : "", strcasecmp(ct.subtype, "digest") == 0);
		if (p->nchildren == 0) {
			/* the IMAP grammar needs 1*body: an empty text/plain stands in */
			struct mime_part *ch = part_new(c, p, p->body_start + p->body_len,
			    p->body_start + p->body_len);
			ch->fake = true;
			add_child(p, ch);
		}
	} else if (msg && c->m->nparts < c->max_parts) {
		p->kind = MIME_KIND_MESSAGE;
		struct mime_part *ch = part_new(c, p, p->body_start, p->body_start + p->body_len);
		add_child(p, ch);
		parse_entity(c, ch, false);
	}
	mime_ctype_clear(&ct);
}

struct mime_message *mime_parse(const char *data, size_t len, const struct mime_limits *lim)
{
	if (len > SIZE_MAX / 2)
		return NULL;
	struct mime_message *m = xcalloc(1, sizeof(*m));
	struct pctx c = { m, MIME_MAX_DEPTH, MIME_MAX_PARTS };
	if (lim != NULL && lim->max_depth > 0)
		c.max_depth = lim->max_depth;
	if (lim != NULL && lim->max_parts > 0)
		c.max_parts = lim->max_parts;
	m->data = data;
	m->len = len;
	m->root = part_new(&c, NULL, 0, len);
	parse_entity(&c, m->root, false);
	return m;
}

static void part_free(struct mime_part *p)
{
	while (p != NULL) {
		struct mime_part *next = p->next;
		part_free(p->children);  /* recursion bounded by max_depth */
		free(p);
		p = next;
	}
}

void mime_message_free(struct mime_message **msg_r)
{
	if (*msg_r == NULL)
		return;
	part_free((*msg_r)->root);
	free(*msg_r);
	*msg_r = NULL;
}

const struct mime_part *mime_part_find(const struct mime_message *m, const unsigned *sect, size_t n)
{
	const struct mime_part *p = m->root;
	for (size_t i = 0; i < n && p != NULL; i++) {
		if (p->kind == MIME_KIND_MESSAGE && p != m->root)
			p = p->children;
		if (p->kind != MIME_KIND_MULTIPART) {
			if (sect[i] != 1)
				return NULL;
			continue;
		}
		const struct mime_part *ch = p->children;
		for (unsigned k = 1; ch != NULL && k < sect[i]; k++)
			ch = ch->next;
		if (sect[i] == 0)
			return NULL;
		p = ch;
	}
	return p;
}

/* ---------------------------------------------------------------- transfer decoding */

enum mime_cte mime_cte_parse(const char *v, size_t len)
{
	static const struct { const char *name; enum mime_cte cte; } names[] = {
		{ "7bit", MIME_CTE_7BIT }, { "8bit", MIME_CTE_8BIT }, { "binary", MIME_CTE_BINARY },
		{ "base64", MIME_CTE_BASE64 }, { "quoted-printable", MIME_CTE_QP },
	};
	if (v == NULL)
		return MIME_CTE_7BIT;
	size_t i = 0;
	mime_skip_cfws(v, len, &i);
	size_t st = i;
	while (i < len && (unsigned char)v[i] > 32 && v[i] != 127 && !is_tspecial(v[i]))
		i++;
	size_t tl = i - st;
	if (tl == 0)
		return MIME_CTE_7BIT;
	mime_skip_cfws(v, len, &i);
	if (i < len)    /* "base64 x" is not an encoding we know */
		return MIME_CTE_UNKNOWN;
	for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++)
		if (strlen(names[k].name) == tl && strncasecmp(v + st, names[k].name, tl) == 0)
			return names[k].cte;
	return MIME_CTE_UNKNOWN;
}

enum mime_cte mime_part_cte(const struct mime_message *m, const struct mime_part *p)
{
	char *v = mime_header_dup(m, p, "Content-Transfer-Encoding", 0, NULL);
	enum mime_cte cte = v != NULL ? mime_cte_parse(v, strlen(v)) : MIME_CTE_7BIT;
	free(v);
	return cte;
}

/* Decoded octets go to a buffer, or are only counted (BINARY.SIZE of a big part). */
struct dsink {
	struct buf *out;
	size_t n;
};

static int dsink_put(struct dsink *s, const char *p, size_t n)
{
	if (s->out != NULL && buf_append(s->out, p, n) == -1)
		return -1;
	s->n += n;
	return 0;
}

/* RFC 2045 §6.8: characters outside the alphabet (line breaks, garbage) are ignored;
 * "=" ends the data; a final incomplete quantum yields the whole octets it holds. */
static int decode_base64(const char *in, size_t len, struct dsink *s)
{
	char chunk[768];
	size_t cn = 0;
	uint32_t acc = 0;
	int bits = 0;
	for (size_t i = 0; i < len && in[i] != '='; i++) {
		int v = b64val(in[i]);
		if (v < 0)
			continue;
		acc = (acc << 6) | (uint32_t)v;
		if ((bits += 6) < 8)
			continue;
		bits -= 8;
		chunk[cn++] = (char)((acc >> bits) & 0xff);
		if (cn == sizeof(chunk)) {
			if (dsink_put(s, chunk, cn) == -1)
				return -1;
			cn = 0;
		}
	}
	return dsink_put(s, chunk, cn);
}

/* One line of quoted-printable, [p, e) without its line break. */
static int decode_qp_line(const char *in, size_t p, size_t e, struct dsink *s, bool *soft_r)
{
	char chunk[256];
	size_t cn = 0;
	/* §6.7 rule 3: trailing whitespace was possibly added in transport: drop it */
	while (e > p && (in[e - 1] == ' ' || in[e - 1] == '\t'))
		e--;
	*soft_r = e > p && in[e - 1] == '=';     /* rule 5: soft line break */
	if (*soft_r)
		e--;
	for (size_t i = p; i < e; i++) {
		int h, l;
		char c = in[i];
		if (c == '=' && i + 2 < e && (h = hexval(in[i + 1])) >= 0 &&
		    (l = hexval(in[i + 2])) >= 0) {
			c = (char)(h * 16 + l);
			i += 2;
		}
		chunk[cn++] = c;
		if (cn == sizeof(chunk)) {
			if (dsink_put(s, chunk, cn) == -1)
				return -1;
			cn = 0;
		}
	}
	return dsink_put(s, chunk, cn);
}

static int decode_qp(const char *in, size_t len, struct dsink *s)
{
	size_t p = 0;
	while (p < len) {
		size_t le = line_end(in, p, len);   /* past the LF, or len */
		size_t e = le;
		if (e > p && in[e - 1] == '\n')
			e--;
		if (e > p && in[e - 1] == '\r')
			e--;
		bool soft;
		if (decode_qp_line(in, p, e, s, &soft) == -1)
			return -1;
		/* a hard line break is kept as written (CRLF, or a bare LF) */
		if (!soft && dsink_put(s, in + e, le - e) == -1)
			return -1;
		p = le;
	}
	return 0;
}

int mime_decode_cte(enum mime_cte cte, const char *in, size_t len, struct buf *out, size_t *n_r)
{
	struct dsink s = { out, 0 };
	size_t save = out != NULL ? out->len : 0;
	int r;
	switch (cte) {
	case MIME_CTE_7BIT:
	case MIME_CTE_8BIT:
	case MIME_CTE_BINARY:
		r = dsink_put(&s, in, len);
		break;
	case MIME_CTE_BASE64:
		r = decode_base64(in, len, &s);
		break;
	case MIME_CTE_QP:
		r = decode_qp(in, len, &s);
		break;
	default:
		return -2;
	}
	if (r == -1) {
		out->len = save;         /* all or nothing, like the buf_* calls */
		if (out->data != NULL)
			out->data[save] = '\0';
		return -1;
	}
	if (n_r != NULL)
		*n_r = s.n;
	return 0;
}

int mime_decode_transfer(const char *cte, const char *in, size_t len, struct buf *out)
{
	return mime_decode_cte(mime_cte_parse(cte, cte != NULL ? strlen(cte) : 0), in, len, out, NULL);
}
