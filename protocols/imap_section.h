/* imap_section.h: pure FETCH body sections: the octets of BODY[section] (RFC 9051
 * §6.4.5, RFC 3501 §6.4.5), the decoded content of BINARY[section] and its size
 * (RFC 3516 §4.2), the partial <origin.length> window, and the item name echoed in
 * the FETCH response. No I/O, no globals, no logging; unit-tested in
 * tests/unit/test_imap_section.c against ../shared/mime-corpus.
 *
 * Part numbering (RFC 9051 §6.4.5): the parts of a multipart are its children; a
 * message that is not multipart has one part, 1, which is its body (so 1.MIME of a
 * single-part message is the message header, as Dovecot answers); the parts of a
 * message/rfc822 (or message/global) part are those of the attached message. A leaf
 * part has no sub-parts: BODY[1.1] of a single-part message does not exist.
 * HEADER, HEADER.FIELDS(.NOT) and TEXT after part numbers require a message/rfc822
 * part and then concern the attached message.
 *
 * Partial fetches are applied by the session with imap_section_partial(), so a big
 * BODY[] can be streamed from the file without going through these functions.
 */
#ifndef POSTLING_IMAP_SECTION_H
#define POSTLING_IMAP_SECTION_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "protocols/imap_parse.h"
#include "protocols/mime.h"

enum imap_section_status {
	IMAP_SECTION_ERR = -1,       /* out refused the octets (its hard max) */
	IMAP_SECTION_OK = 0,
	/* The part does not exist (or HEADER/TEXT asked of a part that is not a
	 * message/rfc822). BODY: the session answers NIL (Dovecot) or "". BINARY: NIL. */
	IMAP_SECTION_ABSENT = 1,
	/* BINARY only: a Content-Transfer-Encoding other than 7bit, 8bit, binary, base64 or
	 * quoted-printable: NO [UNKNOWN-CTE] (RFC 3516 §4.3). */
	IMAP_SECTION_UNKNOWN_CTE = 2,
};

/* The part a section's numbers designate (sec->parts[0..nparts)): the root for
 * nparts == 0; NULL when absent. For a single-part message, part 1 is the root. */
const struct mime_part *imap_section_part(const struct mime_message *m,
    const struct imap_fetch_section *sec);

/* Appends the raw octets of BODY[section] (sec as parsed by imap_fetch_section_parse
 * from `atom`, whose field names sec->fields point into):
 *  - BODY[] the whole message; BODY[HEADER] / BODY[n.HEADER] the header including its
 *    terminating blank line; BODY[TEXT] / BODY[n.TEXT] the body after it;
 *  - HEADER.FIELDS (names) / HEADER.FIELDS.NOT (names): the matching (or other) fields
 *    in their original order with their folding kept, then CRLF (always, even when no
 *    field matched, RFC 9051 §6.4.5);
 *  - BODY[n] the body of part n (for a message/rfc822 part: the whole attached message);
 *  - BODY[n.MIME] the MIME header of part n, blank line included.
 * Ignores sec->partial (see imap_section_partial). Returns an imap_section_status:
 * OK, ABSENT (nothing appended), or ERR. */
int imap_section_fetch(const struct mime_message *m, const struct imap_fetch_section *sec,
    const char *atom, struct buf *out);

/* Appends the content of BINARY[section] (also used for BINARY.PEEK), decoded from its
 * Content-Transfer-Encoding: base64 and quoted-printable decoded (see
 * mime_decode_transfer), 7bit/8bit/binary as is. BINARY[] (no part number) is the
 * whole message unchanged: a message as a whole has no transfer encoding. Multipart
 * and message/rfc822 parts may only have identity encodings (RFC 2045 §6.4): their
 * body comes as it is (as Dovecot does). Returns OK, ABSENT, UNKNOWN_CTE or ERR. */
int imap_section_binary(const struct mime_message *m, const struct imap_fetch_section *sec,
    struct buf *out);

/* BINARY.SIZE[section]: the decoded size, computed without keeping the octets (works
 * on bounded chunks). Same results as imap_section_binary. */
int imap_section_binary_size(const struct mime_message *m, const struct imap_fetch_section *sec,
    uint64_t *size_r);

/* Applies <origin.length> to a section of `len` octets: *off_r and *len_r give the
 * window to send (an origin past the end gives an empty string, RFC 9051 §6.4.5).
 * Without sec->partial: the whole range. */
void imap_section_partial(const struct imap_fetch_section *sec, uint64_t len, uint64_t *off_r,
    uint64_t *len_r);

/* Appends the item name of the response, e.g. "BODY[1.HEADER.FIELDS (From To)]<0>",
 * "BINARY[2]", "BINARY.SIZE[1]": .PEEK is dropped, field names are echoed as the client
 * wrote them (astrings: quoted when not atoms), and a partial shows its origin only
 * (RFC 9051 §7.5.2). Returns 0, or -1 when out refuses. */
int imap_section_name(const struct imap_fetch_section *sec, const char *atom, struct buf *out);

#endif
