/* record.h: fields of the one-line text records in postling's own files (the
 * folder index, store/index.c; the relay queue's envelopes, relay/queue.c).
 *
 * A record is a line of fields separated by single spaces. Numbers are plain
 * decimal; strings are %XX-escaped so that no byte an attacker chose (a file
 * name, an envelope address, a remote reply) can end a field or a line. The
 * readers are strict: they accept only what the writers produce, so a
 * damaged or hand-forged file is noticed rather than half-understood.
 *
 * Pure: no I/O, no state. Field pointers point into the caller's line and
 * are not NUL-terminated. */
#ifndef POSTLING_RECORD_H
#define POSTLING_RECORD_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf;

#define RECORD_FIELDS_MAX 16

struct record_fields {
	const char *p[RECORD_FIELDS_MAX];   /* into the split line */
	size_t len[RECORD_FIELDS_MAX];      /* each >= 1 */
	size_t n;
};

/* Split p[0..len) on single spaces. false when a field would be empty (len 0,
 * a leading, trailing or doubled space) or there are more than
 * RECORD_FIELDS_MAX fields; callers then check fs->n for their record type. */
bool record_split(const char *p, size_t len, struct record_fields *fs);

/* f[0..len) is exactly the string s. */
bool record_field_is(const char *f, size_t len, const char *s);

/* f[0..len) is a decimal number without sign, spaces or leading zeros ("0"
 * itself is fine) and within [min, max]: true with *r set; else false and *r
 * untouched. Overflow past UINT64_MAX is out of range, never wrapped. */
bool record_num(const char *f, size_t len, uint64_t min, uint64_t max, uint64_t *r);

/* The escaped form of a string: '%', bytes <= 0x20 (space, CR, LF, controls),
 * 0x7f and bytes >= 0x80 are written %XX with uppercase hex digits; every
 * other byte stands for itself. Strings never hold NUL (%00 is refused).
 * Flags choose a file's variant; a file must read with the flags it was
 * written with. */
enum {
	/* "" (or NULL) is written "-" and the one-byte string "-" is written
	 * "%2D", so an empty string is still a field (relay queue). */
	RECORD_ESC_DASH = 1 << 0,
	/* Reading only: accept %XX of a byte that is normally written as itself
	 * ("%41" for "A"). The folder index has always read such escapes; every
	 * other reader refuses them: one string, one encoding. */
	RECORD_ESC_LENIENT = 1 << 1,
};

/* Append the escaped form of s to b. 0, or -1 when b's max was reached (b then
 * holds part of the field). */
int record_escape(struct buf *b, const char *s, unsigned flags);
/* The string whose escaped form (under flags) is f[0..len): malloc'ed and
 * NUL-terminated, or NULL when f is not that form: a byte that should have
 * been escaped, a cut or lowercase %XX, %00, an escape of a byte that needs
 * none (but "%2D" as the whole field under RECORD_ESC_DASH, and any under
 * RECORD_ESC_LENIENT), or an empty field under RECORD_ESC_DASH. */
char *record_unescape(const char *f, size_t len, unsigned flags);

#endif
