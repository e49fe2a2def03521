/* record.c: fields, numbers and %XX-escaped strings of one-line records
 * (format and rules in record.h). */
#include "common/record.h"

#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/xmalloc.h"

bool record_split(const char *p, size_t len, struct record_fields *fs)
{
	const char *end = p + len;
	fs->n = 0;
	for (;;) {
		const char *sp = memchr(p, ' ', (size_t)(end - p));
		const char *fe = sp != NULL ? sp : end;
		if (fe == p || fs->n == RECORD_FIELDS_MAX)
			return false;
		fs->p[fs->n] = p;
		fs->len[fs->n++] = (size_t)(fe - p);
		if (sp == NULL)
			return true;
		p = sp + 1;
	}
}

bool record_field_is(const char *f, size_t len, const char *s)
{
	return len == strlen(s) && memcmp(f, s, len) == 0;
}

bool record_num(const char *f, size_t len, uint64_t min, uint64_t max, uint64_t *r)
{
	uint64_t v = 0;
	if (len == 0 || len > 20 || (len > 1 && f[0] == '0'))
		return false;
	for (size_t i = 0; i < len; i++) {
		if (f[i] < '0' || f[i] > '9')
			return false;
		unsigned d = (unsigned)(f[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return false;
		v = v * 10 + d;
	}
	if (v < min || v > max)
		return false;
	*r = v;
	return true;
}

/* ------------------------------------------------------------ strings */

static bool needs_escape(unsigned char c)
{
	return c == '%' || c <= 0x20 || c >= 0x7f;
}

int record_escape(struct buf *b, const char *s, unsigned flags)
{
	static const char hex[] = "0123456789ABCDEF";
	const unsigned char *c = (const unsigned char *)(s != NULL ? s : "");

	if ((flags & RECORD_ESC_DASH) && (c[0] == '\0' || (c[0] == '-' && c[1] == '\0')))
		return buf_appends(b, c[0] == '\0' ? "-" : "%2D");
	while (*c != '\0') {
		size_t run = 0;
		while (c[run] != '\0' && !needs_escape(c[run]))
			run++;
		if (run > 0 && buf_append(b, c, run) == -1)
			return -1;
		c += run;
		if (*c == '\0')
			break;
		char esc[3] = { '%', hex[*c >> 4], hex[*c & 0xf] };
		if (buf_append(b, esc, sizeof(esc)) == -1)
			return -1;
		c++;
	}
	return 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;   /* record_escape writes uppercase only */
}

/* The byte of the %XX at f (left bytes from there on, in a field of flen), or
 * -1 when it is cut, not uppercase hex, %00, or not an escape record_escape
 * would have written (see record_unescape). */
static int unescape_one(const char *f, size_t left, size_t flen, unsigned flags)
{
	if (left < 3)
		return -1;
	int hi = hexval(f[1]), lo = hexval(f[2]);
	if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
		return -1;
	int v = hi << 4 | lo;
	if (needs_escape((unsigned char)v) || (flags & RECORD_ESC_LENIENT))
		return v;
	return (flags & RECORD_ESC_DASH) && v == '-' && flen == 3 ? v : -1;
}

char *record_unescape(const char *f, size_t len, unsigned flags)
{
	if ((flags & RECORD_ESC_DASH) && len == 0)
		return NULL;
	if ((flags & RECORD_ESC_DASH) && len == 1 && f[0] == '-')
		return xstrdup("");
	char *out = xmalloc(len + 1);
	size_t n = 0;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)f[i];
		int v = c == '%' ? unescape_one(f + i, len - i, len, flags) : needs_escape(c) ? -1 : c;
		if (v < 0) {
			free(out);
			return NULL;
		}
		out[n++] = (char)v;
		i += c == '%' ? 2 : 0;
	}
	out[n] = '\0';
	return out;
}
