/* bounce.c: delivery status notifications (design §6, RFC 3464 inside an
 * RFC 6522 multipart/report); the rules and the output are in relay.h.
 *
 * Pure: no I/O, no globals. The three part bodies are built first, then a
 * boundary that occurs in none of them is drawn and the message assembled.
 * Every string from the envelope or from a remote server is cleaned before
 * use (controls become spaces, invalid or unwanted 8-bit octets '?'), and
 * every line that holds one goes through put_wrapped, which alone breaks
 * lines: so no input can end a line early, make one longer than 998 octets
 * (RFC 5322 §2.1.1) or put a bare CR or LF into the result. */
#include "relay/relay.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/util.h"
#include "common/xmalloc.h"

#define LINE_OCTETS_MAX 998          /* RFC 5322 §2.1.1, CRLF not counted */
#define FOLD_WIDTH 78                /* RFC 5322 §2.1.1 SHOULD */
#define TEXT_WIDTH 76
#define DIAG_MAX 2000                /* octets of a remote reply kept */
#define NAME_MAX_OCTETS 255          /* host names, RFC 5321 §4.5.3.1.2 */
#define DATE_SIZE 64
#define BOUNDARY_SIZE 72             /* RFC 2046 §5.1.1: at most 70 characters */
#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

enum orig_mode { ORIG_NONE = 0, ORIG_HEADERS, ORIG_FULL };

/* One DSN being built. The part bodies are owned; the rest is borrowed. */
struct dsn {
	const struct bounce_params *p;
	const struct queue_env *env;
	size_t *sel;                 /* indices of the reported recipients */
	size_t nsel;
	bool global;                 /* RFC 6533 message/global-delivery-status */
	struct buf text;             /* part 1 body */
	struct buf status;           /* part 2 body */
	enum orig_mode orig;         /* part 3: p->msg[0..orig_len) */
	size_t orig_len;
	bool orig_8bit, orig_hdr_8bit;
	bool full_refused;           /* RET=FULL asked, only headers (or nothing) fit */
};

static const char *const subjects[] = {
	"Undelivered Mail Returned to Sender",
	"Delayed Mail (still being retried)",
	"Successful Mail Delivery Report",
};

/* ------------------------------------------------------------ octets */

static bool has_8bit(const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)p[i] >= 0x80)
			return true;
	return false;
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Length of the valid UTF-8 sequence at p, 0 when there is none (RFC 3629
 * §4: no overlong forms, surrogates or code points past U+10FFFF). A NUL
 * fails the continuation test, so p may be any NUL-terminated string. */
static size_t utf8_len(const unsigned char *p, uint32_t *cp_r)
{
	/* by lead octet: 110xxxxx, 1110xxxx, 11110xxx */
	static const struct { unsigned char mask, lead, bits; size_t n; uint32_t min; } forms[] = {
		{ 0xe0, 0xc0, 0x1f, 2, 0x80 },
		{ 0xf0, 0xe0, 0x0f, 3, 0x800 },
		{ 0xf8, 0xf0, 0x07, 4, 0x10000 },
	};
	if (p[0] < 0x80) {
		*cp_r = p[0];
		return 1;
	}
	for (size_t f = 0; f < NELEM(forms); f++) {
		if ((p[0] & forms[f].mask) != forms[f].lead)
			continue;
		uint32_t cp = p[0] & forms[f].bits;
		for (size_t i = 1; i < forms[f].n; i++) {
			if ((p[i] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (p[i] & 0x3fu);
		}
		if (cp < forms[f].min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		*cp_r = cp;
		return forms[f].n;
	}
	return 0;
}

static bool utf8_valid(const char *s)
{
	uint32_t cp;
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0';) {
		size_t n = utf8_len(p, &cp);
		if (n == 0)
			return false;
		p += n;
	}
	return true;
}

static bool has_control(const char *s)
{
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
		if (*p < 0x20 || *p == 0x7f)
			return true;
	return false;
}

/* A copy of s fit for one (wrapped) line: controls, CR, LF and TAB become
 * spaces; a valid UTF-8 sequence stays when utf8 (RFC 6532 §3.2), any other
 * octet >= 0x80 becomes '?'. */
static char *clean(const char *s, bool utf8)
{
	char *out = xstrdup(s);
	unsigned char *o = (unsigned char *)out;
	uint32_t cp;
	for (size_t i = 0; o[i] != '\0';) {
		size_t n = o[i] >= 0x80 && utf8 ? utf8_len(o + i, &cp) : 1;
		if (o[i] < 0x20 || o[i] == 0x7f) {
			o[i] = ' ';
		} else if (o[i] >= 0x80 && n <= 1) {
			o[i] = '?';
			n = 1;
		}
		i += n;
	}
	return out;
}

/* Host names and the postmaster address go out unquoted: letters, digits
 * and a few marks only (extra: the ones allowed besides ".-_"). */
static bool token_ok(const char *s, const char *extra)
{
	if (s == NULL || *s == '\0' || strlen(s) > NAME_MAX_OCTETS)
		return false;
	for (const char *c = s; *c != '\0'; c++) {
		bool alnum = is_digit(*c) || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z');
		if (!alnum && strchr(".-_", *c) == NULL && strchr(extra, *c) == NULL)
			return false;
	}
	return true;
}

/* ------------------------------------------------------------ lines */

/* Appends prefix and the words of v (split on spaces, runs collapsed),
 * breaking lines where a space allows before width, and inside a word only
 * at LINE_OCTETS_MAX (never inside a UTF-8 sequence). Continuation lines
 * start with cont: " " folds a header field (RFC 5322 §2.2.3), "    "
 * indents text. The last line gets its CRLF. v holds no controls. */
static void put_wrapped(struct buf *b, const char *prefix, const char *v, const char *cont,
    size_t width)
{
	size_t col = strlen(prefix), contlen = strlen(cont);
	bool fresh = true;           /* nothing after the prefix on this line yet */
	buf_appends(b, prefix);
	for (const char *w = v;;) {
		while (*w == ' ')
			w++;
		if (*w == '\0')
			break;
		size_t wl = strcspn(w, " ");
		if (!fresh && col + 1 + wl > width) {
			buf_printf(b, "\r\n%s", cont);
			col = contlen;
			fresh = true;
		}
		if (!fresh) {
			buf_appendc(b, ' ');
			col++;
		}
		while (col + wl > LINE_OCTETS_MAX) {
			size_t n = LINE_OCTETS_MAX - col;
			while (n > 0 && ((unsigned char)w[n] & 0xc0) == 0x80)
				n--;
			if (n == 0 && col == contlen)    /* not UTF-8 after all: cut anyway */
				n = LINE_OCTETS_MAX - col;
			buf_append(b, w, n);
			buf_printf(b, "\r\n%s", cont);
			col = contlen;
			w += n;
			wl -= n;
		}
		buf_append(b, w, wl);
		col += wl;
		w += wl;
		fresh = false;
	}
	buf_appends(b, "\r\n");
}

static void put_field(struct buf *b, const char *name, const char *value)
{
	char *prefix = xasprintf("%s: ", name);
	put_wrapped(b, prefix, value, " ", FOLD_WIDTH);
	free(prefix);
}

/* RFC 5322 §3.3 date-time, always in UTC; names not from the locale. */
static void fmt_date(time_t t, char out[DATE_SIZE])
{
	static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
	static const char *const months[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul",
		"Aug", "Sep", "Oct", "Nov", "Dec" };
	struct tm tm;
	if (gmtime_r(&t, &tm) == NULL || tm.tm_year > 9999 - 1900 || tm.tm_year < 0) {
		time_t epoch = 0;        /* out of RFC 5322's range: never a broken field */
		gmtime_r(&epoch, &tm);
	}
	snprintf(out, DATE_SIZE, "%s, %d %s %04d %02d:%02d:%02d +0000", days[tm.tm_wday % 7],
	    tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
	    tm.tm_sec);
}

/* ------------------------------------------------------------ replies */

/* RFC 5321 §4.2: three digits, then a space, '-' or the end. */
static bool has_code(const char *s)
{
	return is_digit(s[0]) && is_digit(s[1]) && is_digit(s[2]) &&
	    (s[3] == ' ' || s[3] == '-' || s[3] == '\0');
}

/* Length of "class.subject.detail" at s (RFC 3463 §2: class 2, 4 or 5,
 * subject and detail 1 to 3 digits) followed by a space or the end; else 0. */
static size_t enh_len(const char *s)
{
	if ((s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.')
		return 0;
	size_t i = 2;
	for (int part = 0; part < 2; part++) {
		size_t d = 0;
		while (d < 3 && is_digit(s[i + d]))
			d++;
		if (d == 0)
			return 0;
		i += d;
		if (part == 0 && s[i++] != '.')
			return 0;
	}
	return s[i] == ' ' || s[i] == '\0' ? i : 0;
}

/* One line of a reply after its code: the code must equal code, and an
 * enhanced code equal to enh (RFC 2034 §4: repeated on every line) is
 * skipped too. NULL when the line has another code (kept whole). */
static const char *continuation_text(const char *line, const char *code, const char *enh)
{
	if (code[0] == '\0' || !has_code(line) || memcmp(line, code, 3) != 0)
		return NULL;
	const char *t = line + (line[3] != '\0' ? 4 : 3);
	size_t n = enh_len(t);
	if (n > 0 && n == strlen(enh) && memcmp(t, enh, n) == 0)
		t += n;
	return t;
}

/* A reply as stored (lines separated by CRLF or LF) as one line: the first
 * line with "NNN-" made "NNN ", then the text of the others, joined by
 * spaces; capped at DIAG_MAX octets. Postfix and Exim render them so. */
static char *join_reply(const char *reply)
{
	struct buf b;
	char code[4] = "", enh[16] = "";
	buf_init(&b, SIZE_MAX / 2);
	for (const char *p = reply; *p != '\0';) {
		size_t n = strcspn(p, "\r\n");
		char *line = xstrndup(p, n);
		p += n;
		p += strspn(p, "\r\n");
		const char *t = b.len == 0 ? NULL : continuation_text(line, code, enh);
		if (b.len == 0 && has_code(line)) {
			memcpy(code, line, 3);
			const char *e = line + (line[3] != '\0' ? 4 : 3);
			size_t en = enh_len(e);
			if (en > 0 && en < sizeof(enh)) {
				memcpy(enh, e, en);
				enh[en] = '\0';
			}
			buf_printf(&b, "%s %s", code, e);
		} else if (line[0] != '\0') {
			buf_printf(&b, "%s%s", b.len > 0 ? " " : "", t != NULL ? t : line);
		}
		free(line);
	}
	if (b.len > DIAG_MAX) {
		size_t n = DIAG_MAX;
		while (n > 0 && ((unsigned char)b.data[n] & 0xc0) == 0x80)
			n--;
		b.len = n;
		buf_appends(&b, "...");
	}
	return buf_steal(&b, NULL);
}

bool bounce_reply_enhanced(const char *reply, char out[16])
{
	const char *s = reply;
	if (has_code(s))
		s += s[3] != '\0' ? 4 : 3;
	size_t n = enh_len(s);
	if (n == 0 || n >= 16)
		return false;
	memcpy(out, s, n);
	out[n] = '\0';
	return true;
}

/* RFC 3463 status for a recipient whose (joined) reply is r; see relay.h. */
static void rcpt_status(const char *r, enum bounce_kind kind, char out[16])
{
	static const char *const allowed[] = { "54", "4", "2" };
	const char *ok = allowed[kind], *s = r;
	char basic = '\0';
	if (has_code(s)) {
		basic = s[0];
		s += s[3] != '\0' ? 4 : 3;
	}
	size_t n = enh_len(s);
	if (n > 0 && strchr(ok, s[0]) != NULL) {
		memcpy(out, s, n);
		out[n] = '\0';
	} else if (basic != '\0' && strchr(ok, basic) != NULL) {
		/* RFC 3463 §3.5 X.4.7: delivery time expired (a failure after 4xx) */
		snprintf(out, 16, "%c.%s", basic, kind == BOUNCE_FAILURE && basic == '4' ? "4.7" : "0.0");
	} else {
		snprintf(out, 16, "%c.0.0", ok[0]);
	}
}

/* ------------------------------------------------------------ addresses */

/* RFC 6533 §3 utf-8-addr-xtext (unitext false) or utf-8-addr-unitext: QCHAR
 * (printable ASCII but '+', '=', '\') as is, UTF-8 as is in unitext, the
 * rest as \x{HEX} of its code point (of the octet, if not valid UTF-8). */
static void put_utf8_addr(struct buf *b, const char *s, bool unitext)
{
	const unsigned char *p = (const unsigned char *)s;
	uint32_t cp;
	while (*p != '\0') {
		size_t n = utf8_len(p, &cp);
		if (n == 0) {             /* not UTF-8: the octet stands for itself */
			n = 1;
			cp = *p;
		}
		if (cp > 0x20 && cp < 0x7f && cp != '+' && cp != '=' && cp != '\\')
			buf_appendc(b, (char)cp);
		else if (cp >= 0x80 && unitext && n > 1)
			buf_append(b, p, n);
		else
			buf_printf(b, "\\x{%02lX}", (unsigned long)cp);
		p += n;
	}
}

/* "rfc822; addr" for a printable ASCII address (RFC 3464 §2.3.2), else
 * "utf-8; " and the RFC 6533 form for the part (unitext when global). */
static char *final_recipient(const char *addr, bool global)
{
	struct buf b;
	buf_init(&b, SIZE_MAX / 2);
	if (!has_8bit(addr, strlen(addr)) && !has_control(addr)) {
		buf_printf(&b, "rfc822; %s", addr);
	} else {
		buf_appends(&b, "utf-8; ");
		put_utf8_addr(&b, addr, global && utf8_valid(addr));
	}
	return buf_steal(&b, NULL);
}

/* ORCPT as queued ("type;address", RFC 3461 §4.2) passed through when it
 * is printable ASCII (RFC 3464 §2.3.1); a non-ASCII or control-bearing
 * address as "utf-8;" and the RFC 6533 form; NULL when there is none or its
 * type is not an atom. */
static char *original_recipient(const char *orcpt, bool global)
{
	const char *semi = strchr(orcpt, ';');
	if (semi == NULL || semi == orcpt || semi[1] == '\0')
		return NULL;
	for (const char *c = orcpt; c < semi; c++)
		if (!is_digit(*c) && !((*c | 0x20) >= 'a' && (*c | 0x20) <= 'z') && *c != '-')
			return NULL;
	const char *addr = semi + 1;
	if (!has_8bit(addr, strlen(addr)) && !has_control(addr))
		return xstrdup(orcpt);
	struct buf b;
	buf_init(&b, SIZE_MAX / 2);
	buf_appends(&b, "utf-8;");
	put_utf8_addr(&b, addr, global && utf8_valid(addr));
	return buf_steal(&b, NULL);
}

/* ENVID as queued (xtext-decoded, RFC 3461 §4.4: printable ASCII); any
 * other octet xtext-encoded again ("+XX", RFC 3461 §4) rather than sent raw. */
static char *envelope_id(const char *envid)
{
	struct buf b;
	buf_init(&b, SIZE_MAX / 2);
	for (const unsigned char *c = (const unsigned char *)envid; *c != '\0'; c++) {
		if (*c >= 0x20 && *c < 0x7f)
			buf_appendc(&b, (char)*c);
		else
			buf_printf(&b, "+%02X", *c);
	}
	return buf_steal(&b, NULL);
}

/* ------------------------------------------------------------ policy */

bool bounce_wanted(const struct queue_env *env, const struct queue_rcpt *r, enum bounce_kind kind)
{
	static const unsigned bits[] = { QUEUE_NOTIFY_FAILURE, QUEUE_NOTIFY_DELAY,
		QUEUE_NOTIFY_SUCCESS };
	if (env->sender == NULL || env->sender[0] == '\0' || (unsigned)kind >= NELEM(bits))
		return false;
	if (r->notify == 0)          /* RFC 3461 §4.1: no NOTIFY = FAILURE (and DELAY: ours) */
		return kind != BOUNCE_SUCCESS;
	return (r->notify & QUEUE_NOTIFY_NEVER) == 0 && (r->notify & bits[kind]) != 0;
}

bool bounce_reportable(const struct queue_env *env, const struct queue_rcpt *r,
    enum bounce_kind kind)
{
	bool state;
	switch (kind) {
	case BOUNCE_FAILURE: state = r->state == Q_FAILED; break;
	case BOUNCE_DELAY: state = r->state == Q_DEFERRED || r->state == Q_PENDING; break;
	case BOUNCE_SUCCESS: state = r->state == Q_DELIVERED; break;
	default: return false;
	}
	return state && bounce_wanted(env, r, kind);
}

enum queue_body bounce_body_type(const char *dsn, size_t len)
{
	return has_8bit(dsn, len) ? QUEUE_BODY_8BITMIME : QUEUE_BODY_7BIT;
}

bool bounce_smtputf8(const struct queue_env *env)
{
	return env->sender != NULL && has_8bit(env->sender, strlen(env->sender));
}

/* ------------------------------------------------------------ selection */

static bool params_ok(const struct bounce_params *p)
{
	const struct queue_env *env = p->env;
	if (env == NULL || env->rcpts == NULL || (unsigned)p->kind > BOUNCE_SUCCESS)
		return false;
	if (!token_ok(p->hostname, "") || (p->from != NULL && !token_ok(p->from, "@+=")))
		return false;
	if (p->msgid_domain != NULL && !token_ok(p->msgid_domain, ""))
		return false;
	/* the sender becomes the To: field: no controls, UTF-8 only with SMTPUTF8 */
	const char *s = env->sender;
	if (s == NULL || s[0] == '\0' || has_control(s))
		return false;
	return env->smtputf8 ? utf8_valid(s) : !has_8bit(s, strlen(s));
}

static int select_rcpts(struct dsn *d)
{
	const struct bounce_params *p = d->p;
	const struct queue_env *env = d->env;
	if (p->rcpts != NULL) {
		if (p->nrcpts == 0)
			goto invalid;
		for (size_t i = 0; i < p->nrcpts; i++)
			if (p->rcpts[i] >= env->nrcpts)
				goto invalid;
		d->sel = xreallocarray(NULL, p->nrcpts, sizeof(*d->sel));
		memcpy(d->sel, p->rcpts, p->nrcpts * sizeof(*d->sel));
		d->nsel = p->nrcpts;
		return 0;
	}
	d->sel = xreallocarray(NULL, env->nrcpts > 0 ? env->nrcpts : 1, sizeof(*d->sel));
	for (size_t i = 0; i < env->nrcpts; i++)
		if (bounce_reportable(env, &env->rcpts[i], p->kind))
			d->sel[d->nsel++] = i;
	if (d->nsel > 0)
		return 0;
	errno = ENOENT;
	return -1;
invalid:
	errno = EINVAL;
	return -1;
}

/* RFC 6533: global types when SMTPUTF8 mail has a non-ASCII address to report. */
static bool wants_global(const struct dsn *d)
{
	const struct queue_env *env = d->env;
	if (!env->smtputf8)
		return false;
	if (has_8bit(env->sender, strlen(env->sender)))
		return true;
	for (size_t i = 0; i < d->nsel; i++) {
		const struct queue_rcpt *r = &env->rcpts[d->sel[i]];
		if (has_8bit(r->addr, strlen(r->addr)) ||
		    (r->orcpt != NULL && has_8bit(r->orcpt, strlen(r->orcpt))))
			return true;
	}
	return false;
}

/* ------------------------------------------------------------ the original */

/* p[0..len) is CRLF lines of at most 998 octets, no NUL, no bare CR or LF,
 * ending in CRLF: what a message/rfc822 or text/rfc822-headers part may
 * carry as 7bit or 8bit (RFC 2045 §2.7, §2.8). */
static bool lines_ok(const char *p, size_t len)
{
	size_t col = 0;
	for (size_t i = 0; i < len; i++) {
		if (p[i] == '\0' || (p[i] == '\n' && (i == 0 || p[i - 1] != '\r')))
			return false;
		if (p[i] == '\r' && (i + 1 == len || p[i + 1] != '\n'))
			return false;
		if (p[i] == '\r' || p[i] == '\n') {
			col = 0;
			continue;
		}
		if (++col > LINE_OCTETS_MAX)
			return false;
	}
	return len >= 2 && p[len - 2] == '\r' && p[len - 1] == '\n';
}

/* Length of the header section with its last CRLF, without the empty line
 * (RFC 5322 §2.1); the whole message when it has no body. */
static size_t header_len(const char *p, size_t len)
{
	if (len >= 2 && p[0] == '\r' && p[1] == '\n')
		return 0;
	for (size_t i = 0; i + 3 < len; i++)
		if (p[i] == '\r' && p[i + 1] == '\n' && p[i + 2] == '\r' && p[i + 3] == '\n')
			return i + 2;
	return len;
}

/* RFC 3461 §4.3: the whole message only for a failure DSN with RET=FULL;
 * else (and when it does not fit) the header section. */
static void choose_original(struct dsn *d)
{
	const struct bounce_params *p = d->p;
	size_t cap = p->max_original != 0 ? p->max_original : BOUNCE_MAX_ORIGINAL_DEFAULT;
	bool full = p->kind == BOUNCE_FAILURE && d->env->ret == QUEUE_RET_FULL;
	if (p->msg == NULL || p->msg_len == 0)
		return;
	size_t hlen = header_len(p->msg, p->msg_len);
	if (full && p->msg_len <= cap && lines_ok(p->msg, p->msg_len)) {
		d->orig = ORIG_FULL;
		d->orig_len = p->msg_len;
	} else if (hlen > 0 && hlen <= cap && lines_ok(p->msg, hlen)) {
		d->orig = ORIG_HEADERS;
		d->orig_len = hlen;
	}
	d->full_refused = full && d->orig != ORIG_FULL;
	d->orig_8bit = has_8bit(p->msg, d->orig_len);
	d->orig_hdr_8bit = has_8bit(p->msg, hlen < d->orig_len ? hlen : d->orig_len);
}

/* ------------------------------------------------------------ part 1 */

static const char *const intros[] = {
	"Your message could not be delivered to one or more of its recipients. "
	"The mail system has given up on the recipients listed below.",
	"Your message has not been delivered yet to the recipients listed below. "
	"The mail system is still trying; you do not need to send it again.",
	"Your message was delivered to the recipients listed below.",
};

static void put_text_rcpt(struct dsn *d, const struct queue_rcpt *r)
{
	char *addr = clean(r->addr, d->global);
	char *reply = r->last_reply != NULL && r->last_reply[0] != '\0' ?
	    join_reply(r->last_reply) : NULL;
	char *line;
	if (reply != NULL && r->remote_mta != NULL && r->remote_mta[0] != '\0')
		line = xasprintf("<%s>: host %s said: %s", addr, r->remote_mta, reply);
	else if (reply != NULL)
		line = xasprintf("<%s>: %s", addr, reply);
	else
		line = xasprintf("<%s>", addr);
	char *cl = clean(line, d->global);
	put_wrapped(&d->text, "", cl, "    ", TEXT_WIDTH);
	buf_appends(&d->text, "\r\n");
	free(cl);
	free(line);
	free(reply);
	free(addr);
}

static void put_text(struct dsn *d)
{
	const struct bounce_params *p = d->p;
	struct buf *b = &d->text;
	char date[DATE_SIZE];
	buf_printf(b, "This is the mail system at host %s.\r\n\r\n", p->hostname);
	if (p->kind == BOUNCE_SUCCESS && p->relayed)
		put_wrapped(b, "", "Your message was passed on to the recipients listed below. "
		    "The next mail system does not report delivery status, so no further "
		    "notice may come.", "", TEXT_WIDTH);
	else
		put_wrapped(b, "", intros[p->kind], "", TEXT_WIDTH);
	if (p->kind == BOUNCE_DELAY && p->retry_until != 0) {
		fmt_date(p->retry_until, date);
		char *s = xasprintf("It will give up after %s.", date);
		put_wrapped(b, "", s, "", TEXT_WIDTH);
		free(s);
	}
	buf_appends(b, "\r\n");
	for (size_t i = 0; i < d->nsel; i++)
		put_text_rcpt(d, &d->env->rcpts[d->sel[i]]);
	if (d->orig == ORIG_FULL)
		buf_appends(b, "The original message is attached.\r\n");
	else if (d->full_refused && d->orig == ORIG_HEADERS)
		buf_appends(b, "The original message is too large or not in a form that can be\r\n"
		    "returned; its headers are attached.\r\n");
	else if (d->orig == ORIG_HEADERS)
		buf_appends(b, "The headers of the original message are attached.\r\n");
	else if (p->msg != NULL && p->msg_len > 0)
		buf_appends(b, "The original message is too large or not in a form that can be\r\n"
		    "returned; it is not attached.\r\n");
}

/* ------------------------------------------------------------ part 2 */

static void put_status_rcpt(struct dsn *d, const struct queue_rcpt *r)
{
	const struct bounce_params *p = d->p;
	struct buf *b = &d->status;
	char date[DATE_SIZE], status[16], *v;
	char *reply = join_reply(r->last_reply != NULL ? r->last_reply : "");
	buf_appends(b, "\r\n");
	if (r->orcpt != NULL && (v = original_recipient(r->orcpt, d->global)) != NULL) {
		put_field(b, "Original-Recipient", v);
		free(v);
	}
	v = final_recipient(r->addr, d->global);
	put_field(b, "Final-Recipient", v);
	free(v);
	buf_printf(b, "Action: %s\r\n", p->kind == BOUNCE_FAILURE ? "failed" :
	    p->kind == BOUNCE_DELAY ? "delayed" : p->relayed ? "relayed" : "delivered");
	rcpt_status(reply, p->kind, status);
	buf_printf(b, "Status: %s\r\n", status);
	if (r->remote_mta != NULL && token_ok(r->remote_mta, "[]:")) {
		v = xasprintf("dns; %s", r->remote_mta);
		put_field(b, "Remote-MTA", v);
		free(v);
	}
	if (reply[0] != '\0') {
		/* RFC 3464 §2.3.6: "smtp" for a server's reply; X- for our own words */
		v = xasprintf("%s; %s", has_code(reply) ? "smtp" : "X-Postling", reply);
		char *cl = clean(v, d->global);
		put_field(b, "Diagnostic-Code", cl);
		free(cl);
		free(v);
	}
	/* only for a recipient tried at least once (RFC 3464 §2.3.7) */
	time_t last = r->updated != 0 ? r->updated : d->env->last_attempt;
	if (last != 0 && r->attempts != 0) {
		fmt_date(last, date);
		buf_printf(b, "Last-Attempt-Date: %s\r\n", date);
	}
	if (p->kind == BOUNCE_DELAY && p->retry_until != 0) {
		fmt_date(p->retry_until, date);
		buf_printf(b, "Will-Retry-Until: %s\r\n", date);
	}
	free(reply);
}

/* RFC 3464 §2.1: per-message fields, then each recipient's after an empty line. */
static void put_status(struct dsn *d)
{
	const struct bounce_params *p = d->p;
	struct buf *b = &d->status;
	char date[DATE_SIZE];
	if (d->env->envid != NULL && d->env->envid[0] != '\0') {
		char *v = envelope_id(d->env->envid);
		put_field(b, "Original-Envelope-Id", v);
		free(v);
	}
	buf_printf(b, "Reporting-MTA: dns; %s\r\n", p->hostname);
	time_t arrival = p->arrival != 0 ? p->arrival : d->env->created;
	if (arrival != 0) {
		fmt_date(arrival, date);
		buf_printf(b, "Arrival-Date: %s\r\n", date);
	}
	for (size_t i = 0; i < d->nsel; i++)
		put_status_rcpt(d, &d->env->rcpts[d->sel[i]]);
}

/* ------------------------------------------------------------ assembly */

static uint64_t draw(const struct bounce_params *p)
{
	return p->rand_fn != NULL ? p->rand_fn(p->rand_arg) : util_random64();
}

static bool occurs(const char *hay, size_t len, const char *needle)
{
	return len > 0 && memmem(hay, len, needle, strlen(needle)) != NULL;
}

/* RFC 2046 §5.1.1: the boundary must occur in no part. "=_" cannot occur
 * in quoted-printable or base64, and the draw is repeated (with a counter,
 * so even a constant rand_fn ends) while it occurs anywhere in the parts. */
static void pick_boundary(const struct dsn *d, char out[BOUNDARY_SIZE])
{
	for (unsigned n = 0;; n++) {
		unsigned long long v = draw(d->p);
		if (n == 0)
			snprintf(out, BOUNDARY_SIZE, "=_postling_%016llx", v);
		else
			snprintf(out, BOUNDARY_SIZE, "=_postling_%016llx.%u", v, n);
		if (!occurs(d->text.data, d->text.len, out) &&
		    !occurs(d->status.data, d->status.len, out) &&
		    !occurs(d->p->msg, d->orig_len, out))
			return;
	}
}

static void put_part(struct buf *b, const char *boundary, const char *desc, const char *type,
    const char *body, size_t len)
{
	buf_printf(b, "\r\n--%s\r\nContent-Description: %s\r\nContent-Type: %s\r\n", boundary,
	    desc, type);
	if (has_8bit(body, len))
		buf_appends(b, "Content-Transfer-Encoding: 8bit\r\n");
	buf_appends(b, "\r\n");
	buf_append(b, body, len);
}

static void put_headers(const struct dsn *d, struct buf *b, const char *boundary)
{
	const struct bounce_params *p = d->p;
	char date[DATE_SIZE];
	char *from = p->from != NULL ? xstrdup(p->from) : xasprintf("MAILER-DAEMON@%s", p->hostname);
	char *to = xasprintf("<%s>", d->env->sender);
	buf_printf(b, "From: Mail Delivery System <%s>\r\n", from);
	put_field(b, "To", to);
	buf_printf(b, "Subject: %s\r\n", subjects[p->kind]);
	fmt_date(p->now != 0 ? p->now : time(NULL), date);
	buf_printf(b, "Date: %s\r\n", date);
	buf_printf(b, "Message-ID: <%016llx.%s@%s>\r\n", (unsigned long long)draw(p),
	    queue_id_valid(d->env->id) ? d->env->id : "dsn",
	    p->msgid_domain != NULL ? p->msgid_domain : p->hostname);
	buf_appends(b, "MIME-Version: 1.0\r\n");
	buf_appends(b, "Auto-Submitted: auto-replied\r\n");     /* RFC 3834 §5 */
	buf_printf(b, "Content-Type: multipart/report; report-type=delivery-status;\r\n"
	    "\tboundary=\"%s\"\r\n", boundary);
	/* RFC 2045 §6.4: a multipart holding 8bit parts is itself 8bit */
	if (has_8bit(d->text.data, d->text.len) || has_8bit(d->status.data, d->status.len) ||
	    d->orig_8bit)
		buf_appends(b, "Content-Transfer-Encoding: 8bit\r\n");
	free(to);
	free(from);
}

static char *assemble(const struct dsn *d, size_t *len_r)
{
	const struct bounce_params *p = d->p;
	char boundary[BOUNDARY_SIZE];
	struct buf b;
	buf_init(&b, SIZE_MAX / 2);
	pick_boundary(d, boundary);
	put_headers(d, &b, boundary);
	buf_appends(&b, "\r\nThis is a MIME-encapsulated message.\r\n");
	put_part(&b, boundary, "Notification", d->global ? "text/plain; charset=utf-8" :
	    "text/plain; charset=us-ascii", d->text.data, d->text.len);
	put_part(&b, boundary, "Delivery report", d->global ? "message/global-delivery-status" :
	    "message/delivery-status", d->status.data, d->status.len);
	if (d->orig == ORIG_FULL)
		put_part(&b, boundary, "Undelivered Message", d->orig_hdr_8bit ? "message/global" :
		    "message/rfc822", p->msg, d->orig_len);
	else if (d->orig == ORIG_HEADERS)
		put_part(&b, boundary, "Message Headers", d->orig_hdr_8bit ?
		    "message/global-headers" : "text/rfc822-headers", p->msg, d->orig_len);
	buf_printf(&b, "\r\n--%s--\r\n", boundary);
	return buf_steal(&b, len_r);
}

char *bounce_build(const struct bounce_params *p, size_t *len_r)
{
	struct dsn d;
	if (p == NULL || !params_ok(p)) {
		errno = EINVAL;
		return NULL;
	}
	memset(&d, 0, sizeof(d));
	d.p = p;
	d.env = p->env;
	if (select_rcpts(&d) == -1) {
		free(d.sel);
		return NULL;
	}
	d.global = wants_global(&d);
	buf_init(&d.text, SIZE_MAX / 2);
	buf_init(&d.status, SIZE_MAX / 2);
	choose_original(&d);
	put_text(&d);
	put_status(&d);
	char *out = assemble(&d, len_r);
	buf_free(&d.text);
	buf_free(&d.status);
	free(d.sel);
	return out;
}
