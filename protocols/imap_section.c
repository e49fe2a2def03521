/* imap_section.c: FETCH body sections and BINARY decoding (see imap_section.h). */
#include "protocols/imap_section.h"

#include <string.h>
#include <strings.h>

/* ---------------------------------------------------------------- part lookup */

const struct mime_part *imap_section_part(const struct mime_message *m,
    const struct imap_fetch_section *sec)
{
	const struct mime_part *cur = m->root;
	/* "msg" marks a node standing for a whole message (the root, or the message inside
	 * a message/rfc822 part): if it is not multipart its only part, 1, is itself. */
	bool msg = true;
	for (size_t i = 0; i < sec->nparts && cur != NULL; i++) {
		uint32_t k = sec->parts[i];
		if (cur->kind == MIME_KIND_MESSAGE && !msg) {
			cur = cur->children;       /* parts of a message/rfc822 part: RFC 9051 §6.4.5 */
			msg = true;
			if (cur == NULL)
				return NULL;
		}
		if (k == 0)
			return NULL;
		if (cur->kind == MIME_KIND_MULTIPART) {
			const struct mime_part *ch = cur->children;
			for (uint32_t n = 1; ch != NULL && n < k; n++)
				ch = ch->next;
			cur = ch;
		} else if (!msg || k != 1) {
			return NULL;               /* a leaf part has no sub-parts */
		}
		msg = false;
	}
	return cur;
}

/* The message a HEADER/TEXT specifier talks about: the root without part numbers,
 * else the message inside the message/rfc822 part p (NULL when p is not one). */
static const struct mime_part *section_message(const struct mime_message *m,
    const struct imap_fetch_section *sec, const struct mime_part *p)
{
	if (sec->nparts == 0)
		return m->root;
	return p->kind == MIME_KIND_MESSAGE ? p->children : NULL;
}

/* ---------------------------------------------------------------- HEADER.FIELDS */

/* Is the field name n[0..nl) in the list? The names sit in the atom, quoted ones with
 * their backslash escapes still in place (imap_parse.h), compared case-insensitively. */
static bool field_listed(const struct imap_fetch_section *sec, const char *atom, const char *n,
    size_t nl)
{
	for (size_t f = 0; f < sec->nfields; f++) {
		const char *s = atom + sec->fields[f].off;
		size_t sl = sec->fields[f].len, i = 0, j = 0;
		for (; i < sl && j < nl; i++, j++) {
			if (s[i] == '\\' && i + 1 < sl)
				i++;
			if (strncasecmp(s + i, n + j, 1) != 0)
				break;
		}
		if (i == sl && j == nl)
			return true;
	}
	return false;
}

static size_t next_line(const char *d, size_t p, size_t end)
{
	const char *lf = memchr(d + p, '\n', end - p);
	return lf == NULL ? end : (size_t)(lf - d) + 1;
}

/* Copies the fields of hdr (in order, folding and line ends as they are) that are
 * listed (or, with `not`, unlisted), then the CRLF that ends a header. Lines that are
 * not "name:" are not fields and are left out either way. */
static int header_fields(const struct mime_message *m, const struct mime_part *hdr,
    const struct imap_fetch_section *sec, const char *atom, bool not, struct buf *out)
{
	const char *d = m->data;
	size_t p = hdr->hdr_start, end = hdr->hdr_start + hdr->hdr_len;
	while (p < end) {
		size_t le = next_line(d, p, end);
		if (d[p] == '\r' || d[p] == '\n')
			break;                     /* the blank line: end of the header */
		size_t fe = le;
		while (fe < end && (d[fe] == ' ' || d[fe] == '\t'))
			fe = next_line(d, fe, end);
		size_t q = p;
		while (q < le && (unsigned char)d[q] > 32 && d[q] < 127 && d[q] != ':')
			q++;
		size_t nl = q - p;
		while (q < le && (d[q] == ' ' || d[q] == '\t'))
			q++;
		if (nl > 0 && q < le && d[q] == ':' && field_listed(sec, atom, d + p, nl) != not) {
			if (buf_append(out, d + p, fe - p) == -1)
				return -1;
			/* a header that ends without a line break (no body) still gets one */
			if (d[fe - 1] != '\n' && buf_append(out, "\r\n", 2) == -1)
				return -1;
		}
		p = fe;
	}
	return buf_append(out, "\r\n", 2);
}

/* ---------------------------------------------------------------- BODY[...] */

int imap_section_fetch(const struct mime_message *m, const struct imap_fetch_section *sec,
    const char *atom, struct buf *out)
{
	const struct mime_part *p = imap_section_part(m, sec);
	if (p == NULL)
		return IMAP_SECTION_ABSENT;
	const char *d = m->data;
	const struct mime_part *msg;
	int r;
	switch (sec->text) {
	case IMAP_SECTION_ALL:
		if (sec->nparts == 0)
			r = buf_append(out, d, m->len);
		else
			r = buf_append(out, d + p->body_start, p->body_len);
		break;
	case IMAP_SECTION_MIME:
		if (sec->nparts == 0)          /* the grammar forbids a bare MIME */
			return IMAP_SECTION_ABSENT;
		r = buf_append(out, d + p->hdr_start, p->hdr_len);
		break;
	case IMAP_SECTION_HEADER:
	case IMAP_SECTION_TEXT:
	case IMAP_SECTION_HEADER_FIELDS:
	case IMAP_SECTION_HEADER_FIELDS_NOT:
		if ((msg = section_message(m, sec, p)) == NULL)
			return IMAP_SECTION_ABSENT;
		if (sec->text == IMAP_SECTION_HEADER)
			r = buf_append(out, d + msg->hdr_start, msg->hdr_len);
		else if (sec->text == IMAP_SECTION_TEXT)
			r = buf_append(out, d + msg->body_start, msg->body_len);
		else
			r = header_fields(m, msg, sec, atom, sec->text == IMAP_SECTION_HEADER_FIELDS_NOT, out);
		break;
	default:
		return IMAP_SECTION_ABSENT;
	}
	return r == -1 ? IMAP_SECTION_ERR : IMAP_SECTION_OK;
}

/* ---------------------------------------------------------------- BINARY[...] */

/* Shared by BINARY and BINARY.SIZE: out NULL only counts. */
static int binary(const struct mime_message *m, const struct imap_fetch_section *sec,
    struct buf *out, uint64_t *size_r)
{
	const struct mime_part *p = imap_section_part(m, sec);
	if (p == NULL || sec->text != IMAP_SECTION_ALL)
		return IMAP_SECTION_ABSENT;
	if (sec->nparts == 0) {
		/* a message as a whole carries no transfer encoding of its own */
		if (out != NULL && buf_append(out, m->data, m->len) == -1)
			return IMAP_SECTION_ERR;
		*size_r = m->len;
		return IMAP_SECTION_OK;
	}
	/* A multipart or message/rfc822 part is decoded by its own encoding like a leaf:
	 * RFC 2045 §6.4 allows them only identity ones, so their octets come as they are
	 * (Dovecot answers BINARY.SIZE of a multipart the same way). */
	size_t n = 0;
	int r = mime_decode_cte(mime_part_cte(m, p), m->data + p->body_start, p->body_len, out, &n);
	if (r == -2)
		return IMAP_SECTION_UNKNOWN_CTE;
	if (r == -1)
		return IMAP_SECTION_ERR;
	*size_r = n;
	return IMAP_SECTION_OK;
}

int imap_section_binary(const struct mime_message *m, const struct imap_fetch_section *sec,
    struct buf *out)
{
	uint64_t n;
	return binary(m, sec, out, &n);
}

int imap_section_binary_size(const struct mime_message *m, const struct imap_fetch_section *sec,
    uint64_t *size_r)
{
	*size_r = 0;
	return binary(m, sec, NULL, size_r);
}

/* ---------------------------------------------------------------- partial, names */

void imap_section_partial(const struct imap_fetch_section *sec, uint64_t len, uint64_t *off_r,
    uint64_t *len_r)
{
	if (!sec->partial) {
		*off_r = 0;
		*len_r = len;
		return;
	}
	uint64_t off = sec->partial_off;
	if (off >= len) {                  /* RFC 9051 §6.4.5: empty string past the end */
		*off_r = len;
		*len_r = 0;
		return;
	}
	*off_r = off;
	*len_r = len - off < sec->partial_len ? len - off : sec->partial_len;
}

static const char *const section_text_names[] = {
	[IMAP_SECTION_ALL] = "", [IMAP_SECTION_HEADER] = "HEADER",
	[IMAP_SECTION_HEADER_FIELDS] = "HEADER.FIELDS", [IMAP_SECTION_HEADER_FIELDS_NOT] = "HEADER.FIELDS.NOT",
	[IMAP_SECTION_TEXT] = "TEXT", [IMAP_SECTION_MIME] = "MIME",
};

static int field_names(const struct imap_fetch_section *sec, const char *atom, struct buf *out)
{
	if (buf_appends(out, " (") == -1)
		return -1;
	for (size_t f = 0; f < sec->nfields; f++) {
		size_t off = sec->fields[f].off, len = sec->fields[f].len;
		/* a quoted name is echoed with its quotes, escapes as the client sent them */
		bool quoted = off > 0 && atom[off - 1] == '"';
		if ((f > 0 && buf_appendc(out, ' ') == -1) ||
		    (quoted && buf_appendc(out, '"') == -1) ||
		    buf_append(out, atom + off, len) == -1 ||
		    (quoted && buf_appendc(out, '"') == -1))
			return -1;
	}
	return buf_appendc(out, ')');
}

int imap_section_name(const struct imap_fetch_section *sec, const char *atom, struct buf *out)
{
	const char *item = sec->item == IMAP_FETCH_BINARY_SIZE ? "BINARY.SIZE[" :
	    sec->item == IMAP_FETCH_BINARY || sec->item == IMAP_FETCH_BINARY_PEEK ? "BINARY[" : "BODY[";
	if (buf_appends(out, item) == -1)
		return -1;
	for (size_t i = 0; i < sec->nparts; i++)
		if (buf_printf(out, i > 0 ? ".%u" : "%u", (unsigned)sec->parts[i]) == -1)
			return -1;
	if ((unsigned)sec->text < sizeof(section_text_names) / sizeof(section_text_names[0]) &&
	    sec->text != IMAP_SECTION_ALL) {
		if ((sec->nparts > 0 && buf_appendc(out, '.') == -1) ||
		    buf_appends(out, section_text_names[sec->text]) == -1)
			return -1;
		if ((sec->text == IMAP_SECTION_HEADER_FIELDS || sec->text == IMAP_SECTION_HEADER_FIELDS_NOT) &&
		    field_names(sec, atom, out) == -1)
			return -1;
	}
	if (buf_appendc(out, ']') == -1)
		return -1;
	if (sec->partial && buf_printf(out, "<%u>", (unsigned)sec->partial_off) == -1)
		return -1;
	return 0;
}
