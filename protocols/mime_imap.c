/* mime_imap.c: IMAP ENVELOPE, BODY and BODYSTRUCTURE items and nstrings built from
 * a parsed MIME message (see mime.h). */
#include "protocols/mime.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/xmalloc.h"

/* ---------------------------------------------------------------- IMAP output */

int mime_imap_nstring(struct buf *out, const char *s, size_t len, bool force_literal)
{
	if (s == NULL)
		return buf_appends(out, "NIL");
	bool lit = force_literal;
	for (size_t i = 0; i < len && !lit; i++)
		lit = s[i] == '\r' || s[i] == '\n' || s[i] == '\0' || (unsigned char)s[i] >= 0x80;
	if (lit)
		return buf_printf(out, "{%zu}\r\n", len) == -1 ? -1 : buf_append(out, s, len);
	if (buf_appendc(out, '"') == -1)
		return -1;
	for (size_t i = 0; i < len; i++)
		if (((s[i] == '"' || s[i] == '\\') && buf_appendc(out, '\\') == -1) ||
		    buf_appendc(out, s[i]) == -1)
			return -1;
	return buf_appendc(out, '"');
}

static int nstr(struct buf *out, const char *s)
{
	return mime_imap_nstring(out, s, s != NULL ? strlen(s) : 0, false);
}

/* RFC 5322 §3.4 address tokens */
enum atok { AT_END, AT_WORD, AT_QUOTED, AT_SPECIAL, AT_LITERAL };

struct alex {
	const char *s;
	size_t len, i;
	enum atok t;
	char *text;                /* owned, current token */
	char c;                    /* AT_SPECIAL */
	bool space_before;
};

static void alex_next(struct alex *a)
{
	free(a->text);
	a->text = NULL;
	size_t st = a->i;
	mime_skip_cfws(a->s, a->len, &a->i);
	a->space_before = a->i > st;
	if (a->i >= a->len) {
		a->t = AT_END;
		return;
	}
	char ch = a->s[a->i];
	if (ch == '"') {
		a->t = AT_QUOTED;
		a->text = mime_quoted(a->s, a->len, &a->i);
	} else if (ch == '[') {
		size_t s = a->i;
		while (a->i < a->len && a->s[a->i] != ']')
			a->i++;
		if (a->i < a->len)
			a->i++;
		a->t = AT_LITERAL;
		a->text = xstrndup(a->s + s, a->i - s);
	} else if (strchr("()<>:;@,.\\]", ch) != NULL) {
		a->t = AT_SPECIAL;
		a->c = ch;
		a->i++;
	} else {
		size_t s = a->i;
		while (a->i < a->len && strchr("()<>[]:;@,.\\\" \t\r\n", a->s[a->i]) == NULL)
			a->i++;
		a->t = AT_WORD;
		a->text = xstrndup(a->s + s, a->i - s);
	}
}

static bool alex_is(const struct alex *a, char c)
{
	return a->t == AT_SPECIAL && a->c == c;
}

/* words and dots up to a special other than '.', joined; phrase mode keeps single
 * spaces where the header had whitespace or comments. */
static void alex_words(struct alex *a, struct buf *b, bool phrase)
{
	bool first = true;
	while (a->t == AT_WORD || a->t == AT_QUOTED || alex_is(a, '.')) {
		if (phrase && !first && a->space_before)
			(void)buf_appendc(b, ' ');
		(void)buf_appends(b, a->t == AT_SPECIAL ? "." : a->text);
		first = false;
		alex_next(a);
	}
}

static char *buf_str(struct buf *b)
{
	if (b->len == 0) {
		buf_free(b);
		return NULL;
	}
	(void)buf_appendc(b, '\0');
	return buf_steal(b, NULL);
}

static int addr_out(struct buf *out, const char *name, const char *adl, const char *mbox,
    const char *host)
{
	if (buf_appendc(out, '(') == -1 || nstr(out, name) == -1 || buf_appendc(out, ' ') == -1 ||
	    nstr(out, adl) == -1 || buf_appendc(out, ' ') == -1 || nstr(out, mbox) == -1 ||
	    buf_appendc(out, ' ') == -1 || nstr(out, host) == -1)
		return -1;
	return buf_appendc(out, ')');
}

/* One mailbox, after its leading phrase/local words were read into w. */
static int mailbox(struct alex *a, struct buf *w, struct buf *out)
{
	struct buf adl, local, dom;
	buf_init(&adl, SIZE_MAX / 2);
	buf_init(&local, SIZE_MAX / 2);
	buf_init(&dom, SIZE_MAX / 2);
	char *name = NULL;
	if (alex_is(a, '<')) {  /* name-addr: phrase <[route:]addr-spec> */
		name = buf_str(w);
		alex_next(a);
		while (alex_is(a, '@') || alex_is(a, ',')) {  /* obs-route, RFC 5322 §4.4 */
			if (alex_is(a, '@') && adl.len > 0)
				(void)buf_appendc(&adl, ',');
			if (alex_is(a, '@'))
				(void)buf_appendc(&adl, '@');
			alex_next(a);
			if (adl.len > 0 && (a->t == AT_WORD || alex_is(a, '.') || a->t == AT_LITERAL))
				alex_words(a, &adl, false);
			if (a->t == AT_LITERAL) {
				(void)buf_appends(&adl, a->text);
				alex_next(a);
			}
		}
		if (alex_is(a, ':'))
			alex_next(a);
		alex_words(a, &local, false);
	} else {
		(void)buf_append(&local, w->data, w->len);
		buf_free(w);
	}
	if (alex_is(a, '@')) {
		alex_next(a);
		while (a->t == AT_WORD || a->t == AT_LITERAL || alex_is(a, '.')) {
			(void)buf_appends(&dom, a->t == AT_SPECIAL ? "." : a->text);
			alex_next(a);
		}
	}
	if (alex_is(a, '>'))
		alex_next(a);
	char *ad = buf_str(&adl), *lp = buf_str(&local), *dm = buf_str(&dom);
	/* a missing domain is "" not NIL: NIL host means group syntax (RFC 3501 §7.4.2) */
	int r = lp == NULL && dm == NULL && name == NULL ? 0
	    : addr_out(out, name, ad, lp != NULL ? lp : "", dm != NULL ? dm : "");
	free(name);
	free(ad);
	free(lp);
	free(dm);
	return r;
}

/* address-list (RFC 5322 §3.4) written as IMAP addresses, groups included. */
static int address_list(const char *v, struct buf *out)
{
	struct alex a = { v, strlen(v), 0, AT_END, NULL, 0, false };
	bool in_group = false;
	alex_next(&a);
	while (a.t != AT_END) {
		struct buf w;
		buf_init(&w, SIZE_MAX / 2);
		alex_words(&a, &w, true);
		if (alex_is(&a, ':') && !in_group) {
			char *g = buf_str(&w);
			if (addr_out(out, NULL, NULL, g != NULL ? g : "", NULL) == -1) {
				free(g);
				return -1;
			}
			free(g);
			in_group = true;
			alex_next(&a);
			continue;
		}
		if (alex_is(&a, ';') && in_group) {
			buf_free(&w);
			in_group = false;
			alex_next(&a);
			if (addr_out(out, NULL, NULL, NULL, NULL) == -1)
				return -1;
			continue;
		}
		if ((w.len > 0 || alex_is(&a, '<')) && mailbox(&a, &w, out) == -1) {
			free(a.text);
			return -1;
		}
		buf_free(&w);
		/* skip to the next separator */
		while (a.t != AT_END && !alex_is(&a, ',') && !(in_group && alex_is(&a, ';')))
			alex_next(&a);
		if (alex_is(&a, ','))
			alex_next(&a);
	}
	free(a.text);
	if (in_group)
		return addr_out(out, NULL, NULL, NULL, NULL);
	return 0;
}

/* Every field called name, joined (RFC 5322 allows one; duplicates are merged). */
static int env_addresses(const struct mime_message *m, const struct mime_part *p,
    const char *name, struct buf *out)
{
	struct buf list;
	buf_init(&list, out->max);
	char *v;
	for (int i = 0; (v = mime_header_dup(m, p, name, i, NULL)) != NULL; i++) {
		int r = address_list(v, &list);
		free(v);
		if (r == -1) {
			buf_free(&list);
			return -1;
		}
	}
	int r = list.len == 0 ? buf_appends(out, "NIL")
	    : (buf_appendc(out, '(') == -1 || buf_append(out, list.data, list.len) == -1)
	    ? -1 : buf_appendc(out, ')');
	buf_free(&list);
	return r;
}

/* Unstructured envelope field: the last one, raw (RFC 3501 §7.4.2 does not decode
 * RFC 2047). A value that was folded goes out as a literal, like Dovecot. */
static int env_string(const struct mime_message *m, const struct mime_part *p, const char *name,
    struct buf *out)
{
	bool folded = false;
	char *v = mime_header_dup(m, p, name, -1, &folded);
	int r = mime_imap_nstring(out, v, v != NULL ? strlen(v) : 0, folded);
	free(v);
	return r;
}

int mime_envelope(const struct mime_message *m, const struct mime_part *p, struct buf *out)
{
	const char *from = "From";
	if (buf_appendc(out, '(') == -1 || env_string(m, p, "Date", out) == -1 ||
	    buf_appendc(out, ' ') == -1 || env_string(m, p, "Subject", out) == -1 ||
	    buf_appendc(out, ' ') == -1 || env_addresses(m, p, from, out) == -1)
		return -1;
	/* Sender and Reply-To default to From (RFC 3501 §7.4.2) */
	static const char *const hs[] = { "Sender", "Reply-To", "To", "Cc", "Bcc" };
	for (size_t i = 0; i < 5; i++) {
		struct buf tmp;
		buf_init(&tmp, 1);
		bool have = i >= 2 || mime_header_get(m, p, hs[i], 0, &tmp, NULL) != 0;
		buf_free(&tmp);
		if (have) {
			size_t before = out->len;
			if (buf_appendc(out, ' ') == -1 || env_addresses(m, p, hs[i], out) == -1)
				return -1;
			if (i < 2 && strcmp(out->data + before, " NIL") == 0)
				have = false, out->len = before;
		}
		if (!have && (buf_appendc(out, ' ') == -1 || env_addresses(m, p, from, out) == -1))
			return -1;
	}
	if (buf_appendc(out, ' ') == -1 || env_string(m, p, "In-Reply-To", out) == -1 ||
	    buf_appendc(out, ' ') == -1 || env_string(m, p, "Message-ID", out) == -1)
		return -1;
	return buf_appendc(out, ')');
}

/* ("name" "value" ...) or NIL */
static int params_out(struct buf *out, const struct mime_param *ps, size_t n)
{
	if (n == 0)
		return buf_appends(out, "NIL");
	if (buf_appendc(out, '(') == -1)
		return -1;
	for (size_t i = 0; i < n; i++)
		if ((i > 0 && buf_appendc(out, ' ') == -1) || nstr(out, ps[i].name) == -1 ||
		    buf_appendc(out, ' ') == -1 || nstr(out, ps[i].value) == -1)
			return -1;
	return buf_appendc(out, ')');
}

/* body-fld-param: RFC 2231 pieces merged but not decoded (as Dovecot does), and
 * text parts get charset=us-ascii when it has none (RFC 2045 §5.2). */
static int ctype_params_out(struct buf *out, const struct mime_ctype *ct, bool text)
{
	struct mime_param *ps;
	size_t n;
	mime_params_2231(ct, false, &ps, &n);
	bool has_cs = false;
	for (size_t i = 0; i < n; i++)
		has_cs |= strcasecmp(ps[i].name, "charset") == 0;
	if (text && !has_cs) {
		ps[n].name = xstrdup("charset");
		ps[n++].value = xstrdup("us-ascii");
	}
	int r = params_out(out, ps, n);
	mime_params_free(&ps, n);
	return r;
}

static int hdr_nstring(const struct mime_message *m, const struct mime_part *p, const char *name,
    struct buf *out)
{
	char *v = mime_header_dup(m, p, name, 0, NULL);
	int r = nstr(out, v);
	free(v);
	return r;
}

/* body-ext-*: disposition, language, location (RFC 3501 §9). */
static int ext_out(const struct mime_message *m, const struct mime_part *p, struct buf *out)
{
	char *v = mime_header_dup(m, p, "Content-Disposition", 0, NULL);
	struct mime_ctype d;
	int r = 0;
	if (v != NULL && mime_ctype_parse(v, strlen(v), false, &d) == 0) {
		r = buf_appends(out, " (") == -1 || nstr(out, d.type) == -1 ||
		    buf_appendc(out, ' ') == -1 || ctype_params_out(out, &d, false) == -1 ||
		    buf_appendc(out, ')') == -1 ? -1 : 0;
		mime_ctype_clear(&d);
	} else {
		if (v != NULL)
			mime_ctype_clear(&d);
		r = buf_appends(out, " NIL");
	}
	free(v);
	if (r == -1)
		return -1;
	/* Content-Language (RFC 3282): a list of tags */
	v = mime_header_dup(m, p, "Content-Language", 0, NULL);
	size_t i = 0, len = v != NULL ? strlen(v) : 0, n = 0;
	while (v != NULL && i < len && r == 0) {
		mime_skip_cfws(v, len, &i);
		char *t = mime_token(v, len, &i);
		if (t != NULL)
			r = buf_appends(out, n++ == 0 ? " (" : " ") == -1 || nstr(out, t) == -1 ? -1 : 0;
		free(t);
		mime_skip_cfws(v, len, &i);
		if (i < len)
			i++;  /* ',' or junk */
	}
	free(v);
	if (r == -1 || buf_appends(out, n > 0 ? ")" : " NIL") == -1)
		return -1;
	return buf_appendc(out, ' ') == -1 ? -1 : hdr_nstring(m, p, "Content-Location", out);
}

static int bs_part(const struct mime_message *m, const struct mime_part *p, unsigned flags,
    struct buf *out);

static int bs_multipart(const struct mime_message *m, const struct mime_part *p,
    const struct mime_ctype *ct, unsigned flags, struct buf *out)
{
	if (buf_appendc(out, '(') == -1)
		return -1;
	for (const struct mime_part *ch = p->children; ch != NULL; ch = ch->next)
		if (bs_part(m, ch, flags, out) == -1)
			return -1;
	if (buf_appendc(out, ' ') == -1 || nstr(out, ct->subtype) == -1)
		return -1;
	if (flags & MIME_BS_EXTENDED) {
		if (buf_appendc(out, ' ') == -1 || ctype_params_out(out, ct, false) == -1 ||
		    ext_out(m, p, out) == -1)
			return -1;
	}
	return buf_appendc(out, ')');
}

static int bs_leaf(const struct mime_message *m, const struct mime_part *p,
    const struct mime_ctype *ct, unsigned flags, struct buf *out)
{
	bool text = strcasecmp(ct->type, "text") == 0;
	bool msg = p->kind == MIME_KIND_MESSAGE &&
	    ((flags & MIME_BS_REV2) || strcasecmp(ct->subtype, "rfc822") == 0);
	char *cte = mime_header_dup(m, p, "Content-Transfer-Encoding", 0, NULL);
	struct mime_ctype e = { 0 };
	if (cte != NULL)
		(void)mime_ctype_parse(cte, strlen(cte), false, &e);
	int r = buf_appendc(out, '(') == -1 || nstr(out, ct->type) == -1 ||
	    buf_appendc(out, ' ') == -1 || nstr(out, ct->subtype) == -1 ||
	    buf_appendc(out, ' ') == -1 || ctype_params_out(out, ct, text) == -1 ||
	    buf_appendc(out, ' ') == -1 || hdr_nstring(m, p, "Content-ID", out) == -1 ||
	    buf_appendc(out, ' ') == -1 || hdr_nstring(m, p, "Content-Description", out) == -1 ||
	    buf_appendc(out, ' ') == -1 || nstr(out, e.type != NULL ? e.type : "7bit") == -1 ||
	    buf_printf(out, " %zu", p->body_len) == -1 ? -1 : 0;
	mime_ctype_clear(&e);
	free(cte);
	if (r == -1)
		return -1;
	if (msg) {
		if (buf_appendc(out, ' ') == -1 || mime_envelope(m, p->children, out) == -1 ||
		    buf_appendc(out, ' ') == -1 || bs_part(m, p->children, flags, out) == -1 ||
		    buf_printf(out, " %zu", p->lines) == -1)
			return -1;
	} else if (text && buf_printf(out, " %zu", p->lines) == -1) {
		return -1;
	}
	if (flags & MIME_BS_EXTENDED) {
		if (buf_appendc(out, ' ') == -1 || hdr_nstring(m, p, "Content-MD5", out) == -1 ||
		    ext_out(m, p, out) == -1)
			return -1;
	}
	return buf_appendc(out, ')');
}

static int bs_part(const struct mime_message *m, const struct mime_part *p, unsigned flags,
    struct buf *out)
{
	struct mime_ctype ct;
	bool digest_child = false;
	if (p->parent != NULL && p->parent->kind == MIME_KIND_MULTIPART) {
		mime_part_ctype(m, p->parent, false, &ct);
		digest_child = strcasecmp(ct.subtype, "digest") == 0;
		mime_ctype_clear(&ct);
	}
	mime_part_ctype(m, p, digest_child && !p->fake, &ct);
	int r = p->kind == MIME_KIND_MULTIPART ? bs_multipart(m, p, &ct, flags, out)
	    : bs_leaf(m, p, &ct, flags, out);
	mime_ctype_clear(&ct);
	return r;
}

int mime_bodystructure(const struct mime_message *m, const struct mime_part *p,
    unsigned flags, struct buf *out)
{
	return bs_part(m, p, flags, out);
}
