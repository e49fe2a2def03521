/* mta_reply.c: the pure pieces of the outbound SMTP client (rules in relay.h):
 * the resumable reader of one SMTP reply (RFC 5321 §4.2) and the dot-stuffer
 * for the message sent after DATA (RFC 5321 §4.5.2). No I/O, no event loop:
 * mta.c feeds them, and so do the unit tests. */
#include "relay/relay.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/xmalloc.h"

/* ------------------------------------------------------------ replies */

void mta_reply_init(struct mta_reply *r)
{
	memset(r, 0, sizeof(*r));
}

void mta_reply_reset(struct mta_reply *r)
{
	char *text = r->text;
	size_t cap = r->text_cap;
	memset(r, 0, sizeof(*r));
	r->text = text;
	r->text_cap = cap;
	if (text != NULL)
		text[0] = '\0';
}

void mta_reply_free(struct mta_reply *r)
{
	free(r->text);
	memset(r, 0, sizeof(*r));
}

/* Never past MTA_REPLY_MAX + 1: text holds at most the octets on the wire. */
static void text_add(struct mta_reply *r, char c)
{
	if (r->text_len + 2 > r->text_cap) {
		size_t cap = r->text_cap ? r->text_cap * 2 : 256;
		if (cap > MTA_REPLY_MAX + 1)
			cap = MTA_REPLY_MAX + 1;
		if (r->text_len + 2 > cap)
			return;   /* cannot happen: wire > text_len */
		r->text = xreallocarray(r->text, cap, 1);
		r->text_cap = cap;
	}
	r->text[r->text_len++] = c;
	r->text[r->text_len] = '\0';
}

/* RFC 3463 §2: class "." subject "." detail, 1-3 digits each, the class
 * that of the reply, then a space or the end of the line. */
static void parse_enhanced(struct mta_reply *r)
{
	const char *p = r->text + 4;
	size_t n = 0;
	r->enhanced[0] = '\0';
	if (r->text_len < 9 || p[0] != '0' + r->code / 100 || p[1] != '.')
		return;
	for (int part = 0, digits = 0; ; n++) {
		char c = p[2 + n];
		if (c >= '0' && c <= '9' && digits < 3) {
			digits++;
		} else if (c == '.' && part == 0 && digits > 0) {
			part = 1;
			digits = 0;
		} else if ((c == ' ' || c == '\n' || c == '\0') && part == 1 && digits > 0) {
			break;
		} else {
			return;
		}
	}
	snprintf(r->enhanced, sizeof(r->enhanced), "%.*s", (int)(n + 2), p);
}

static int end_line(struct mta_reply *r)
{
	const char *l = r->text + r->line_start;
	size_t n = r->line_len < MTA_REPLY_LINE_MAX ? r->line_len : MTA_REPLY_LINE_MAX;
	if (n < 3 || l[0] < '2' || l[0] > '5' || l[1] < '0' || l[1] > '5' || l[2] < '0' || l[2] > '9'
	    || (n > 3 && l[3] != ' ' && l[3] != '-')) {
		r->error = MTA_REPLY_E_SYNTAX;
		return -1;
	}
	int code = (l[0] - '0') * 100 + (l[1] - '0') * 10 + (l[2] - '0');
	if (r->nlines > 0 && code != r->code) {
		r->error = MTA_REPLY_E_CODE_MISMATCH;
		return -1;
	}
	r->code = code;
	r->nlines++;
	if (n == 3 || l[3] == ' ') {
		r->done = true;
		parse_enhanced(r);
		return 1;
	}
	text_add(r, '\n');
	r->line_start = r->text_len;
	r->line_len = 0;
	return 0;
}

int mta_reply_feed(struct mta_reply *r, const char *p, size_t len, size_t *consumed_r)
{
	*consumed_r = 0;
	if (r->done)
		return 1;
	if (r->error != MTA_REPLY_E_NONE)
		return -1;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];
		*consumed_r = i + 1;
		if (++r->wire > MTA_REPLY_MAX) {
			r->error = MTA_REPLY_E_TOO_LONG;
			return -1;
		}
		if (r->cr) {
			if (c != '\n') {
				r->error = MTA_REPLY_E_BARE_EOL;
				return -1;
			}
			r->cr = false;
			int e = end_line(r);
			if (e != 0)
				return e;
		} else if (c == '\r') {
			r->cr = true;
		} else if (c == '\n') {
			r->error = MTA_REPLY_E_BARE_EOL;
			return -1;
		} else if (r->line_len++ < MTA_REPLY_LINE_MAX) {
			text_add(r, c < 0x20 || c == 0x7f ? ' ' : (char)c);
		}
	}
	return 0;
}

const char *mta_reply_strerror(enum mta_reply_error e)
{
	switch (e) {
	case MTA_REPLY_E_NONE: return "no error";
	case MTA_REPLY_E_SYNTAX: return "malformed reply line";
	case MTA_REPLY_E_CODE_MISMATCH: return "reply lines with different codes";
	case MTA_REPLY_E_BARE_EOL: return "bare CR or LF in reply";
	case MTA_REPLY_E_TOO_LONG: return "reply too long";
	}
	return "unknown error";
}

/* ------------------------------------------------------- dot-stuffing */

size_t mta_stuff(struct mta_stuff *st, const char *in, size_t len, char *out)
{
	size_t o = 0;
	for (size_t i = 0; i < len; i++) {
		char c = in[i];
		if (st->cr) {
			st->cr = false;
			out[o++] = '\r';
			out[o++] = '\n';
			st->mid_line = false;
			if (c == '\n')
				continue;   /* a CRLF pair */
		}
		if (c == '\r') {
			st->cr = true;
		} else if (c == '\n') {
			out[o++] = '\r';
			out[o++] = '\n';
			st->mid_line = false;
		} else {
			if (!st->mid_line && c == '.')
				out[o++] = '.';
			out[o++] = c;
			st->mid_line = true;
		}
	}
	return o;
}

size_t mta_stuff_end(struct mta_stuff *st, char *out)
{
	size_t o = 0;
	if (st->cr || st->mid_line) {
		out[o++] = '\r';
		out[o++] = '\n';
	}
	memcpy(out + o, ".\r\n", 3);
	st->cr = st->mid_line = false;
	return o + 3;
}
