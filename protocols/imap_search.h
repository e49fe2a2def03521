/* imap_search.h: pure IMAP SEARCH programs: parsing "[RETURN (...)] [CHARSET x] key..."
 * from the parser's argument tree (RFC 9051 §6.4.4, RFC 3501 §6.4.4, ESEARCH result
 * options RFC 4731, SAVE and "$" RFC 5182), evaluating a program against one message,
 * and formatting the "* SEARCH" / "* ESEARCH" reply. No I/O, no globals, no logging;
 * unit-tested in tests/unit/test_imap_search.c (with the search.json expectations of
 * ../shared/mime-corpus).
 *
 * Semantics worth knowing:
 *  - String keys (FROM, TO, CC, BCC, SUBJECT, HEADER, BODY, TEXT) are case-insensitive
 *    substring matches on UTF-8: ASCII plus simple case folding of Latin-1, Latin
 *    Extended-A, Greek and Cyrillic letters. An empty string matches every message
 *    that has the field (HEADER x "" matches messages with a field x, RFC 9051).
 *  - Header keys look at the message's top-level header only, on values unfolded and
 *    RFC 2047-decoded to UTF-8 (FROM/TO/CC/BCC/SUBJECT/HEADER). With several fields of
 *    a name, any of them may match.
 *  - BODY searches the text/... leaf parts (also inside attached messages), transfer-
 *    decoded (base64, quoted-printable) and converted from their charset to UTF-8;
 *    other parts (images, application/...) are never searched. TEXT searches the
 *    top-level header (decoded), the header of every attached message, and what BODY
 *    searches.
 *  - BEFORE/ON/SINCE compare the date part of the internal date taken in UTC.
 *    SENTBEFORE/SENTON/SENTSINCE compare the date written in the Date: header (its day,
 *    month and year as sent, "disregarding time and timezone", RFC 9051 §6.4.4); a
 *    message without a parsable Date: matches none of them.
 *  - Sequence numbers: "*" is ctx->max_seq; UID sets: "*" is ctx->max_uid. "$" (and
 *    "UID $") is the saved result ctx->saved, kept by the session as UIDs (RFC 5182 §2.1:
 *    an empty or failed saved result is the empty set).
 *  - KEYWORD names unknown to the folder match nothing; UNKEYWORD of them matches all.
 *  - MODSEQ (CONDSTORE) is not supported: it is an unknown key (BAD).
 */
#ifndef POSTLING_IMAP_SEARCH_H
#define POSTLING_IMAP_SEARCH_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "common/buf.h"
#include "protocols/imap_parse.h"
#include "protocols/mime.h"

/* Nesting of NOT / OR / parenthesised keys in one program. Lists are already bounded
 * by the parser (IMAP_MAX_DEPTH); this bounds "NOT NOT NOT ..." and "OR OR OR ..."
 * chains, which the evaluator walks recursively. */
#define IMAP_SEARCH_MAX_DEPTH 64

/* imap_search_parse() results */
#define IMAP_SEARCH_OK 0
#define IMAP_SEARCH_BAD (-1)          /* syntax error: tagged BAD with *err_r */
#define IMAP_SEARCH_BADCHARSET (-2)   /* CHARSET we do not know: NO [BADCHARSET (UTF-8)] */

/* RETURN options (RFC 4731 §3.1, RFC 5182 §2) */
#define IMAP_SEARCH_RET_MIN   0x01u
#define IMAP_SEARCH_RET_MAX   0x02u
#define IMAP_SEARCH_RET_COUNT 0x04u
#define IMAP_SEARCH_RET_ALL   0x08u
#define IMAP_SEARCH_RET_SAVE  0x10u

struct imap_search_opts {
	/* Set to true by imap_search_parse() when a RETURN (...) was given, so the reply
	 * must be ESEARCH; never cleared by it. The session sets it itself for an IMAP4rev2
	 * client (rev2 answers SEARCH with ESEARCH only, RFC 9051 §7.3.4). */
	bool esearch;
	/* IMAP_SEARCH_RET_* as requested. No RETURN at all, or RETURN (), means ALL
	 * (RFC 4731 §3.1, RFC 9051 §6.4.4); RETURN (SAVE) stays SAVE alone. */
	unsigned ret;
	bool ret_given;              /* a RETURN list was present (even empty) */
	bool charset_utf8;           /* CHARSET UTF-8 or US-ASCII was given */
};

/* A parsed program; opaque, owned by the caller, freed with imap_search_free(). */
struct imap_search;

/* Parses the SEARCH arguments starting at `first` (the first argument after SEARCH, or
 * after UID SEARCH), through the end of the command. *opts is filled. Returns
 * IMAP_SEARCH_OK with *out set; IMAP_SEARCH_BAD with *err_r a static message
 * ("Unknown search key", "Bad date", "Missing argument for FROM", ...), *out NULL;
 * IMAP_SEARCH_BADCHARSET for any charset other than UTF-8 and US-ASCII (any case).
 * The parsed program copies what it needs: the parser may be reset afterwards. */
int imap_search_parse(const struct imap_parser *p, const struct imap_arg *first,
    struct imap_search **out, struct imap_search_opts *opts, const char **err_r);
void imap_search_free(struct imap_search **s);

/* What evaluation needs beyond the index metadata, so the session reads and parses
 * message files only when required. */
#define IMAP_SEARCH_NEED_HEADER 0x1u  /* FROM TO CC BCC SUBJECT HEADER SENT*: header */
#define IMAP_SEARCH_NEED_BODY   0x2u  /* BODY TEXT: the whole message */
#define IMAP_SEARCH_USES_SAVED  0x4u  /* "$" appears: ctx->saved is consulted */
unsigned imap_search_needs(const struct imap_search *s);

/* One message as the session knows it. */
struct imap_search_msg {
	uint32_t seq, uid;
	uint32_t flags;              /* MF_* of store/store.h (MF_TRASHED is \Deleted) */
	bool recent;                 /* \Recent in this session (IMAP4rev1) */
	uint64_t keywords;           /* bit i = ctx->kwnames[i] */
	uint64_t size;               /* RFC822.SIZE, for LARGER/SMALLER */
	time_t internal_date;
	/* The whole message (CRLF), or NULL when imap_search_needs() has neither NEED_
	 * bit. With NEED_HEADER only, data may hold just the header (through its blank
	 * line). Not owned. */
	const char *data;
	size_t len;
	/* data parsed by mime_parse(), or NULL: then imap_search_match() parses data
	 * itself for the duration of the call (pass it when cached, to save the work). */
	const struct mime_message *mime;
};

/* The folder as the session sees it during one SEARCH. */
struct imap_search_ctx {
	uint32_t max_seq;            /* messages in the session's view ("*" in seq sets) */
	uint32_t max_uid;            /* highest UID in the view ("*" in UID sets) */
	const uint32_t *saved;       /* RFC 5182 saved result as UIDs, ascending; or NULL */
	size_t nsaved;
	const char *const *kwnames;  /* the folder's keyword names by bit */
	size_t nkw;
};

/* Does m match s? Pure; allocates only temporary buffers (bounded by the message
 * size). A key whose text is needed but absent (data NULL) does not match. */
bool imap_search_match(const struct imap_search *s, const struct imap_search_ctx *c,
    const struct imap_search_msg *m);

/* Appends the untagged reply for the ascending results res[0..n) (sequence numbers,
 * or UIDs when uid), CRLF included:
 *  - o->esearch false: "* SEARCH 2 5 9\r\n" ("* SEARCH\r\n" when none);
 *  - o->esearch true: "* ESEARCH (TAG \"a1\") UID MIN 2 MAX 9 COUNT 3 ALL 2,5,9\r\n"
 *    with the requested options in that order, MIN/MAX/ALL left out when nothing
 *    matched (COUNT 0 stays, RFC 4731 §3.1), ALL as a compressed sequence set;
 *    nothing at all when SAVE is the only option requested (RFC 5182 §2.4).
 * Returns 0, or -1 when out refuses. */
int imap_search_format(struct buf *out, const char *tag, bool uid,
    const struct imap_search_opts *o, const uint32_t *res, size_t n);

/* What SAVE keeps (RFC 5182 §2.4): with MIN and/or MAX but neither ALL nor COUNT, only
 * the lowest and/or highest result; otherwise all. Compacts res in place (call after
 * imap_search_format) and returns the new count. res may hold seqs or UIDs; the
 * session converts to UIDs for ctx->saved. */
size_t imap_search_save_filter(const struct imap_search_opts *o, uint32_t *res, size_t n);

/* Appends ascending numbers as a compact sequence set ("1:3,7,9:10"); duplicates are
 * folded. Nothing is appended for n == 0. For ESEARCH ALL, COPYUID, APPENDUID.
 * Returns 0, or -1 when out refuses. */
int imap_search_set_format(struct buf *out, const uint32_t *v, size_t n);

#endif
