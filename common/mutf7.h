/* mutf7.h: modified UTF-7 mailbox names (RFC 3501 §5.1.3). Pure; used by the IMAP
 * session (rev1 clients) and by the store (Maildir++ folder directories are named
 * in modified UTF-7, as Dovecot names them). Tested in tests/unit/test_imap_parse.c. */
#ifndef POSTLING_MUTF7_H
#define POSTLING_MUTF7_H
#include <stddef.h>

#include "common/buf.h"

/* Decodes to UTF-8 appended to out: 0, or -1 (out unchanged) on any invalid or
 * non-canonical form: bytes outside 0x20-0x7e, "&" unterminated, bad base64, a
 * shift holding printable ASCII ("&AGE-"), non-zero or excess pad bits, broken
 * surrogates, U+0000, two adjacent shifts, or when out refuses the bytes. */
int mutf7_decode(const char *s, size_t len, struct buf *out);
/* Encodes valid UTF-8 (no overlongs, surrogates or NUL) as modified UTF-7 appended
 * to out: 0, or -1 (out unchanged). */
int mutf7_encode(const char *s, size_t len, struct buf *out);

#endif
