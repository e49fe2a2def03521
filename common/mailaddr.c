/* mailaddr.c: RFC 5321 §4.1.2 Path / Mailbox parsing, RFC 6531 §3.3 UTF-8 extension.
 *
 * Parsing is a single left-to-right cursor over the caller's bytes; nothing is
 * allocated. The grammar implemented (RFC 5321 §4.1.2, §4.1.3, RFC 6531 §3.3):
 *   Path        = "<" [ A-d-l ":" ] Mailbox ">"
 *   A-d-l       = At-domain *( "," At-domain ) ; At-domain = "@" Domain
 *   Mailbox     = Local-part "@" ( Domain / address-literal )
 *   Local-part  = Dot-string / Quoted-string
 *   atext, qtextSMTP and sub-domain also admit UTF8-non-ascii (RFC 6531).
 */
#include "common/mailaddr.h"

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>

struct cursor {
	const unsigned char *p;
	size_t len;
	size_t pos;
	unsigned flags;
	struct mailaddr *out;
};

static bool is_ctl(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

static bool is_alnum(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

static unsigned char lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

static bool ascii_ncaseeq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return false;
	return true;
}

/* RFC 5322 §3.2.3 atext (the ASCII part) */
static bool is_atext(unsigned char c)
{
	return is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* RFC 3629 §4 strict UTF-8: no overlongs, no surrogates, nothing above U+10FFFF.
 * Returns the sequence length, 0 when invalid or truncated. */
static size_t utf8_decode(const unsigned char *p, size_t avail, uint32_t *cp_r)
{
	unsigned char c = p[0], lo = 0x80, hi = 0xbf;
	size_t n;
	uint32_t cp;
	if (c >= 0xc2 && c <= 0xdf) {
		n = 2, cp = c & 0x1fu;
	} else if (c >= 0xe0 && c <= 0xef) {
		n = 3, cp = c & 0x0fu;
		lo = c == 0xe0 ? 0xa0 : 0x80;       /* overlong */
		hi = c == 0xed ? 0x9f : 0xbf;       /* surrogates U+D800..U+DFFF */
	} else if (c >= 0xf0 && c <= 0xf4) {
		n = 4, cp = c & 0x07u;
		lo = c == 0xf0 ? 0x90 : 0x80;       /* overlong */
		hi = c == 0xf4 ? 0x8f : 0xbf;       /* > U+10FFFF */
	} else {
		return 0;
	}
	if (avail < n)
		return 0;
	for (size_t i = 1; i < n; i++) {
		if (p[i] < lo || p[i] > hi)
			return 0;
		lo = 0x80, hi = 0xbf;
		cp = (cp << 6) | (p[i] & 0x3fu);
	}
	*cp_r = cp;
	return n;
}

/* One UTF8-non-ascii character at p (RFC 6531 §3.3); its length in *n_r. */
static enum mailaddr_result check_utf8(const unsigned char *p, size_t avail, unsigned flags,
    size_t *n_r)
{
	uint32_t cp;
	size_t n = utf8_decode(p, avail, &cp);
	if (n == 0)
		return MAILADDR_E_BAD_UTF8;
	if (cp <= 0x9f)                       /* C1 controls U+0080..U+009F */
		return MAILADDR_E_CONTROL;
	if (!(flags & MAILADDR_ALLOW_UTF8))
		return MAILADDR_E_UTF8_NOT_ALLOWED;
	*n_r = n;
	return MAILADDR_OK;
}

static enum mailaddr_result take_utf8(struct cursor *c)
{
	size_t n;
	enum mailaddr_result r = check_utf8(c->p + c->pos, c->len - c->pos, c->flags, &n);
	if (r != MAILADDR_OK)
		return r;
	c->out->utf8 = true;
	c->pos += n;
	return MAILADDR_OK;
}

static int peek(const struct cursor *c)
{
	return c->pos < c->len ? c->p[c->pos] : -1;
}

/* Controls are refused wherever they appear, before any grammar (so "a\r\nb" says
 * "control", not "syntax"). */
static bool has_control(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (is_ctl((unsigned char)s[i]))
			return true;
	return false;
}

/* Dot-string = Atom *("." Atom); Atom = 1*atext */
static enum mailaddr_result parse_dot_string(struct cursor *c)
{
	bool need_atom = true;
	int ch;
	while ((ch = peek(c)) != -1) {
		if (ch == '.') {
			if (need_atom)
				return MAILADDR_E_SYNTAX;
			need_atom = true;
			c->pos++;
			continue;
		}
		if (ch >= 0x80) {
			enum mailaddr_result r = take_utf8(c);
			if (r != MAILADDR_OK)
				return r;
		} else if (is_atext((unsigned char)ch)) {
			c->pos++;
		} else {
			break;
		}
		need_atom = false;
	}
	return need_atom ? MAILADDR_E_SYNTAX : MAILADDR_OK;
}

/* Quoted-string = DQUOTE *QcontentSMTP DQUOTE; quoted-pairSMTP = "\" %d32-126;
 * qtextSMTP = %d32-33 / %d35-91 / %d93-126 / UTF8-non-ascii */
static enum mailaddr_result parse_quoted(struct cursor *c)
{
	int ch;
	c->pos++;
	while ((ch = peek(c)) != -1) {
		if (ch == '"') {
			c->pos++;
			return MAILADDR_OK;
		}
		if (ch == '\\') {
			if (c->pos + 1 >= c->len || c->p[c->pos + 1] < 32 || c->p[c->pos + 1] > 126)
				return MAILADDR_E_SYNTAX;
			c->pos += 2;
		} else if (ch >= 0x80) {
			enum mailaddr_result r = take_utf8(c);
			if (r != MAILADDR_OK)
				return r;
		} else {
			c->pos++;
		}
	}
	return MAILADDR_E_SYNTAX;
}

/* Stores the canonical local part: quotes dropped, quoted-pairs unescaped. */
static void store_local(char *dst, const unsigned char *raw, size_t n, bool quoted)
{
	size_t o = 0;
	if (!quoted) {
		memcpy(dst, raw, n);
		o = n;
	} else {
		for (size_t i = 1; i + 1 < n; i++) {
			if (raw[i] == '\\')
				i++;
			dst[o++] = (char)raw[i];
		}
	}
	dst[o] = '\0';
}

static enum mailaddr_result parse_local(struct cursor *c)
{
	size_t start = c->pos;
	bool quoted = peek(c) == '"';
	enum mailaddr_result r = quoted ? parse_quoted(c) : parse_dot_string(c);
	if (r != MAILADDR_OK)
		return r;
	size_t n = c->pos - start;
	if (n > MAILADDR_LOCAL_MAX)           /* RFC 5321 §4.5.3.1.1 */
		return MAILADDR_E_LOCAL_TOO_LONG;
	c->out->quoted = quoted;
	store_local(c->out->local, c->p + start, n, quoted);
	return MAILADDR_OK;
}

/* sub-domain = Let-dig [Ldh-str] (RFC 5321 §4.1.2), or a U-label (RFC 6531 §3.3;
 * IDNA2008 validity is not checked here). ASCII labels are limited to 63 octets
 * (RFC 1035 §2.3.4). */
static enum mailaddr_result check_label(const unsigned char *s, size_t n, unsigned flags,
    bool *utf8_r)
{
	bool ascii = true;
	if (n == 0 || s[0] == '-' || s[n - 1] == '-')
		return MAILADDR_E_BAD_DOMAIN;
	for (size_t i = 0; i < n;) {
		size_t step = 1;
		if (s[i] >= 0x80) {
			enum mailaddr_result r = check_utf8(s + i, n - i, flags, &step);
			if (r != MAILADDR_OK)
				return r;
			ascii = false;
		} else if (!is_alnum(s[i]) && s[i] != '-') {
			return MAILADDR_E_BAD_DOMAIN;
		}
		i += step;
	}
	if (ascii && n > 63)
		return MAILADDR_E_BAD_DOMAIN;
	if (!ascii)
		*utf8_r = true;
	return MAILADDR_OK;
}

/* Domain = sub-domain *("." sub-domain); stored lowercased when dst != NULL. */
static enum mailaddr_result check_domain(const unsigned char *s, size_t n, unsigned flags,
    char *dst, bool *utf8_r)
{
	if (n == 0)
		return MAILADDR_E_NO_DOMAIN;
	if (n > MAILADDR_DOMAIN_MAX)          /* RFC 5321 §4.5.3.1.2 */
		return MAILADDR_E_DOMAIN_TOO_LONG;
	size_t start = 0;
	for (size_t i = 0; i <= n; i++) {
		if (i < n && s[i] != '.')
			continue;
		enum mailaddr_result r = check_label(s + start, i - start, flags, utf8_r);
		if (r != MAILADDR_OK)
			return r;
		start = i + 1;
	}
	if (dst != NULL) {
		for (size_t i = 0; i < n; i++)
			dst[i] = (char)lower(s[i]);
		dst[n] = '\0';
	}
	return MAILADDR_OK;
}

/* address-literal = "[" ( IPv4-address-literal / IPv6-address-literal ) "]"
 * (RFC 5321 §4.1.3); General-address-literal is refused: nothing we could route to. */
static enum mailaddr_result parse_literal(struct cursor *c, struct mailaddr *out)
{
	const unsigned char *s = c->p + c->pos + 1;
	const unsigned char *end = memchr(s, ']', c->len - c->pos - 1);
	char tmp[64], txt[INET6_ADDRSTRLEN];
	if (end == NULL || end == s || (size_t)(end - s) >= sizeof(tmp))
		return MAILADDR_E_BAD_LITERAL;
	size_t n = (size_t)(end - s);
	memcpy(tmp, s, n);
	tmp[n] = '\0';
	bool v6 = n > 5 && ascii_ncaseeq(tmp, "IPv6:", 5);
	int af = v6 ? AF_INET6 : AF_INET;
	if (inet_pton(af, v6 ? tmp + 5 : tmp, out->literal_addr) != 1)
		return MAILADDR_E_BAD_LITERAL;
	inet_ntop(af, out->literal_addr, txt, sizeof(txt));
	out->domain[0] = '\0';
	strcat(strcat(strcat(out->domain, v6 ? "[IPv6:" : "["), txt), "]");
	out->domain_literal = true;
	out->literal_af = af;
	c->pos += n + 2;
	return MAILADDR_OK;
}

/* A domain token runs to the next byte that cannot be in a domain but can follow one. */
static bool ends_domain(unsigned char ch)
{
	return ch == '>' || ch == ',' || ch == ':' || ch == '@' || ch == ' ';
}

static enum mailaddr_result parse_domain_part(struct cursor *c, bool store)
{
	if (peek(c) == '[') {
		if (!store)                   /* At-domain takes a Domain only */
			return MAILADDR_E_SYNTAX;
		return parse_literal(c, c->out);
	}
	size_t start = c->pos;
	while (c->pos < c->len && !ends_domain(c->p[c->pos]))
		c->pos++;
	bool utf8 = false;
	enum mailaddr_result r = check_domain(c->p + start, c->pos - start, c->flags,
	    store ? c->out->domain : NULL, &utf8);
	if (store && utf8)
		c->out->utf8 = true;
	return r;
}

/* A-d-l ":" — parsed for syntax, then discarded (RFC 5321 §3.3, §4.1.2) */
static enum mailaddr_result parse_route(struct cursor *c)
{
	for (;;) {
		if (peek(c) != '@')
			return MAILADDR_E_SYNTAX;
		c->pos++;
		enum mailaddr_result r = parse_domain_part(c, false);
		if (r != MAILADDR_OK)
			return r == MAILADDR_E_NO_DOMAIN ? MAILADDR_E_SYNTAX : r;
		int ch = peek(c);
		c->pos++;
		if (ch == ':') {
			c->out->had_route = true;
			return MAILADDR_OK;
		}
		if (ch != ',')
			return MAILADDR_E_SYNTAX;
	}
}

static enum mailaddr_result parse_mailbox(struct cursor *c)
{
	if (peek(c) == '@') {
		enum mailaddr_result r = parse_route(c);
		if (r != MAILADDR_OK)
			return r;
	}
	enum mailaddr_result r = parse_local(c);
	if (r != MAILADDR_OK)
		return r;
	int ch = peek(c);
	if (ch == -1 || ch == '>')
		return MAILADDR_E_NO_DOMAIN;
	if (ch != '@')
		return MAILADDR_E_SYNTAX;
	c->pos++;
	return parse_domain_part(c, true);
}

static enum mailaddr_result finish(enum mailaddr_result r, struct mailaddr *out)
{
	if (r != MAILADDR_OK)
		memset(out, 0, sizeof(*out));
	return r;
}

enum mailaddr_result mailaddr_parse(const char *s, size_t len, unsigned flags, struct mailaddr *out)
{
	struct cursor c = { (const unsigned char *)s, len, 0, flags, out };
	memset(out, 0, sizeof(*out));
	if (has_control(s, len))
		return MAILADDR_E_CONTROL;
	enum mailaddr_result r = parse_mailbox(&c);
	if (r == MAILADDR_OK && c.pos != len)
		r = MAILADDR_E_SYNTAX;
	return finish(r, out);
}

/* "<Postmaster>", case-insensitive (RFC 5321 §4.1.1.3, §4.5.1) */
static bool is_bare_postmaster(const char *s, size_t len)
{
	return len >= 12 && ascii_ncaseeq(s, "<postmaster>", 12);
}

static enum mailaddr_result parse_special(const char *s, size_t len, unsigned flags,
    struct mailaddr *out, size_t *consumed_r)
{
	if (s[1] == '>') {                    /* RFC 5321 §4.1.1.2 null reverse-path */
		if (!(flags & MAILADDR_ALLOW_NULL))
			return MAILADDR_E_NULL_NOT_ALLOWED;
		out->null_path = true;
		*consumed_r = 2;
	} else {
		strcpy(out->local, "Postmaster");
		out->postmaster = true;
		*consumed_r = 12;
	}
	return MAILADDR_OK;
}

enum mailaddr_result mailaddr_parse_path(const char *s, size_t len, unsigned flags,
    struct mailaddr *out, size_t *consumed_r)
{
	struct cursor c = { (const unsigned char *)s, len, 1, flags, out };
	memset(out, 0, sizeof(*out));
	*consumed_r = 0;
	if (has_control(s, len))
		return MAILADDR_E_CONTROL;
	if (len == 0 || s[0] != '<')
		return MAILADDR_E_BRACKETS;
	if ((len >= 2 && s[1] == '>') ||
	    ((flags & MAILADDR_ALLOW_POSTMASTER) && is_bare_postmaster(s, len)))
		return parse_special(s, len, flags, out, consumed_r);
	enum mailaddr_result r = parse_mailbox(&c);
	if (r == MAILADDR_OK && c.pos == len)
		r = MAILADDR_E_BRACKETS;
	else if (r == MAILADDR_OK && s[c.pos] != '>')
		r = MAILADDR_E_SYNTAX;
	else if (r == MAILADDR_OK && c.pos + 1 > MAILADDR_PATH_MAX)
		r = MAILADDR_E_PATH_TOO_LONG;     /* RFC 5321 §4.5.3.1.3 */
	if (r == MAILADDR_OK)
		*consumed_r = c.pos + 1;
	return finish(r, out);
}

enum mailaddr_result mailaddr_parse_domain(const char *s, size_t len, unsigned flags,
    struct mailaddr *out)
{
	struct cursor c = { (const unsigned char *)s, len, 0, flags, out };
	memset(out, 0, sizeof(*out));
	if (has_control(s, len))
		return MAILADDR_E_CONTROL;
	enum mailaddr_result r = parse_domain_part(&c, true);
	if (r == MAILADDR_OK && c.pos != len)
		r = out->domain_literal ? MAILADDR_E_BAD_LITERAL : MAILADDR_E_BAD_DOMAIN;
	return finish(r, out);
}

/* Can the canonical local part go out as a Dot-string? (RFC 5321 §4.1.2: a local
 * part that can be a Dot-string SHOULD be sent as one.) Non-ASCII octets were
 * validated on the way in. */
static bool local_is_dot_string(const char *s)
{
	bool need_atom = true;
	for (; *s != '\0'; s++) {
		unsigned char ch = (unsigned char)*s;
		if (ch == '.') {
			if (need_atom)
				return false;
			need_atom = true;
		} else if (ch >= 0x80 || is_atext(ch)) {
			need_atom = false;
		} else {
			return false;
		}
	}
	return !need_atom;
}

static int put(char *buf, size_t size, size_t *pos, const char *s, size_t n)
{
	if (n >= size - *pos) {
		buf[0] = '\0';
		return -1;
	}
	memcpy(buf + *pos, s, n);
	*pos += n;
	buf[*pos] = '\0';
	return 0;
}

static int put_local(const struct mailaddr *a, char *buf, size_t size, size_t *pos)
{
	if (local_is_dot_string(a->local))
		return put(buf, size, pos, a->local, strlen(a->local));
	if (put(buf, size, pos, "\"", 1) == -1)
		return -1;
	for (const char *s = a->local; *s != '\0'; s++) {
		if ((*s == '"' || *s == '\\') && put(buf, size, pos, "\\", 1) == -1)
			return -1;
		if (put(buf, size, pos, s, 1) == -1)
			return -1;
	}
	return put(buf, size, pos, "\"", 1);
}

int mailaddr_local_to_string(const struct mailaddr *a, char *buf, size_t size)
{
	size_t pos = 0;
	if (size == 0)
		return -1;
	buf[0] = '\0';
	return put_local(a, buf, size, &pos);
}

int mailaddr_to_string(const struct mailaddr *a, char *buf, size_t size)
{
	size_t pos = 0;
	if (size == 0)
		return -1;
	buf[0] = '\0';
	if (a->null_path)
		return 0;
	if (a->postmaster)
		return put(buf, size, &pos, a->local, strlen(a->local));
	if (put_local(a, buf, size, &pos) == -1 || put(buf, size, &pos, "@", 1) == -1)
		return -1;
	return put(buf, size, &pos, a->domain, strlen(a->domain));
}

bool mailaddr_domain_is(const struct mailaddr *a, const char *domain)
{
	size_t n = strlen(domain);
	if (a->domain[0] == '\0' || strlen(a->domain) != n)
		return false;
	return ascii_ncaseeq(a->domain, domain, n);
}

const char *mailaddr_strerror(enum mailaddr_result r)
{
	switch (r) {
	case MAILADDR_OK: return "ok";
	case MAILADDR_E_SYNTAX: return "Malformed address";
	case MAILADDR_E_BRACKETS: return "Address must be enclosed in <>";
	case MAILADDR_E_LOCAL_TOO_LONG: return "Local part longer than 64 octets";
	case MAILADDR_E_DOMAIN_TOO_LONG: return "Domain longer than 255 octets";
	case MAILADDR_E_PATH_TOO_LONG: return "Path longer than 256 octets";
	case MAILADDR_E_NO_DOMAIN: return "Address has no domain";
	case MAILADDR_E_BAD_DOMAIN: return "Malformed domain";
	case MAILADDR_E_BAD_LITERAL: return "Malformed address literal";
	case MAILADDR_E_UTF8_NOT_ALLOWED: return "Non-ASCII address without SMTPUTF8";
	case MAILADDR_E_BAD_UTF8: return "Invalid UTF-8 in address";
	case MAILADDR_E_CONTROL: return "Control characters in address";
	case MAILADDR_E_NULL_NOT_ALLOWED: return "Null address not allowed here";
	}
	return "error";
}
