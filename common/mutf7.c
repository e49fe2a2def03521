/* mutf7.c: modified UTF-7 mailbox name codec (RFC 3501 §5.1.3). See
 * common/mutf7.h for the contract. */
#include "common/mutf7.h"

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* ---- modified UTF-7 (RFC 3501 §5.1.3) ---- */

static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+,";

static int b64_value(char c)
{
	const char *q = c != '\0' ? strchr(b64, c) : NULL;
	return q == NULL ? -1 : (int)(q - b64);
}

/* Strict UTF-8 (RFC 3629): no overlongs, surrogates or values past U+10FFFF */
static int utf8_decode(const unsigned char *s, size_t len, size_t *i, uint32_t *cp_r)
{
	unsigned char c = s[*i];
	size_t n;
	uint32_t cp, min;
	if (c < 0x80) {
		*cp_r = c;
		(*i)++;
		return 0;
	} else if ((c & 0xe0) == 0xc0) {
		n = 1; cp = c & 0x1f; min = 0x80;
	} else if ((c & 0xf0) == 0xe0) {
		n = 2; cp = c & 0x0f; min = 0x800;
	} else if ((c & 0xf8) == 0xf0) {
		n = 3; cp = c & 0x07; min = 0x10000;
	} else {
		return -1;
	}
	if (len - *i <= n)
		return -1;
	for (size_t k = 1; k <= n; k++) {
		if ((s[*i + k] & 0xc0) != 0x80)
			return -1;
		cp = (cp << 6) | (s[*i + k] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return -1;
	*i += n + 1;
	*cp_r = cp;
	return 0;
}

static int put_utf8(struct buf *out, uint32_t cp)
{
	char u[4];
	size_t n;
	if (cp < 0x80) {
		u[0] = (char)cp; n = 1;
	} else if (cp < 0x800) {
		u[0] = (char)(0xc0 | (cp >> 6)); u[1] = (char)(0x80 | (cp & 0x3f)); n = 2;
	} else if (cp < 0x10000) {
		u[0] = (char)(0xe0 | (cp >> 12)); u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
		u[2] = (char)(0x80 | (cp & 0x3f)); n = 3;
	} else {
		u[0] = (char)(0xf0 | (cp >> 18)); u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
		u[2] = (char)(0x80 | ((cp >> 6) & 0x3f)); u[3] = (char)(0x80 | (cp & 0x3f));
		n = 4;
	}
	return buf_append(out, u, n);
}

/* One shifted run s[*i..] after "&" up to and including "-" */
static int mutf7_shift(const char *s, size_t len, size_t *i, struct buf *out)
{
	uint32_t bits = 0, high = 0;
	unsigned nbits = 0, units = 0;
	for (; *i < len && s[*i] != '-'; (*i)++) {
		int v = b64_value(s[*i]);
		if (v < 0)
			return -1;
		bits = (bits << 6) | (uint32_t)v;
		nbits += 6;
		if (nbits < 16)
			continue;
		nbits -= 16;
		uint32_t u = (bits >> nbits) & 0xffff;
		bits &= (1u << nbits) - 1;
		units++;
		if (u >= 0xd800 && u <= 0xdbff) {
			if (high != 0)
				return -1;
			high = u;
			continue;
		}
		uint32_t cp = u;
		if (u >= 0xdc00 && u <= 0xdfff) {
			if (high == 0)
				return -1;
			cp = 0x10000 + ((high - 0xd800) << 10) + (u - 0xdc00);
			high = 0;
		} else if (high != 0) {
			return -1;
		}
		/* printable US-ASCII must represent itself; U+0000 never */
		if (cp == 0 || (cp >= 0x20 && cp <= 0x7e) || put_utf8(out, cp) == -1)
			return -1;
	}
	/* unterminated, empty, dangling high surrogate, >= 6 or non-zero pad bits */
	if (*i >= len || units == 0 || high != 0 || nbits >= 6 || bits != 0)
		return -1;
	(*i)++;
	return 0;
}

static int mutf7_decode_raw(const char *s, size_t len, struct buf *out)
{
	size_t i = 0;
	while (i < len) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c > 0x7e)
			return -1;
		if (c != '&') {
			if (buf_appendc(out, (char)c) == -1)
				return -1;
			i++;
		} else if (i + 1 < len && s[i + 1] == '-') {
			if (buf_appendc(out, '&') == -1)
				return -1;
			i += 2;
		} else {
			i++;
			if (mutf7_shift(s, len, &i, out) == -1)
				return -1;
			/* "&...-&...-" must have been one shift */
			if (i + 1 < len && s[i] == '&' && s[i + 1] != '-')
				return -1;
		}
	}
	return 0;
}

int mutf7_decode(const char *s, size_t len, struct buf *out)
{
	size_t base = out->len;
	if (mutf7_decode_raw(s, len, out) == -1) {
		out->len = base;
		if (out->data != NULL)
			out->data[base] = '\0';
		return -1;
	}
	return 0;
}

static int flush_bits(struct buf *out, uint32_t *bits, unsigned *nbits)
{
	if (*nbits > 0 && buf_appendc(out, b64[(*bits << (6 - *nbits)) & 0x3f]) == -1)
		return -1;
	*bits = 0;
	*nbits = 0;
	return buf_appendc(out, '-');
}

static int push_unit(struct buf *out, uint32_t u, uint32_t *bits, unsigned *nbits)
{
	*bits = (*bits << 16) | u;
	*nbits += 16;
	while (*nbits >= 6) {
		*nbits -= 6;
		if (buf_appendc(out, b64[(*bits >> *nbits) & 0x3f]) == -1)
			return -1;
	}
	*bits &= (1u << *nbits) - 1;
	return 0;
}

static int mutf7_encode_raw(const char *s, size_t len, struct buf *out)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0;
	uint32_t bits = 0;
	unsigned nbits = 0;
	bool shifted = false;
	while (i < len) {
		uint32_t cp;
		if (utf8_decode(u, len, &i, &cp) == -1 || cp == 0)
			return -1;
		if (cp >= 0x20 && cp <= 0x7e) {
			if (shifted && flush_bits(out, &bits, &nbits) == -1)
				return -1;
			shifted = false;
			if (buf_append(out, cp == '&' ? "&-" : (const char *)&u[i - 1],
			    cp == '&' ? 2 : 1) == -1)
				return -1;
			continue;
		}
		if (!shifted && buf_appendc(out, '&') == -1)
			return -1;
		shifted = true;
		if (cp >= 0x10000) {
			cp -= 0x10000;
			if (push_unit(out, 0xd800 + (cp >> 10), &bits, &nbits) == -1 ||
			    push_unit(out, 0xdc00 + (cp & 0x3ff), &bits, &nbits) == -1)
				return -1;
		} else if (push_unit(out, cp, &bits, &nbits) == -1) {
			return -1;
		}
	}
	return shifted ? flush_bits(out, &bits, &nbits) : 0;
}

int mutf7_encode(const char *s, size_t len, struct buf *out)
{
	size_t base = out->len;
	if (mutf7_encode_raw(s, len, out) == -1) {
		out->len = base;
		if (out->data != NULL)
			out->data[base] = '\0';
		return -1;
	}
	return 0;
}
