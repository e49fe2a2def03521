/* mime.h: pure MIME parsing of a whole message held in memory (RFC 5322 header
 * fields, RFC 2045/2046 entities, RFC 2047 encoded words, RFC 2231 parameters) and
 * the IMAP ENVELOPE / BODY / BODYSTRUCTURE items built from it (RFC 3501 §7.4.2,
 * RFC 9051 §7.5.2). No I/O, no globals, no logging; unit-tested in
 * tests/unit/test_mime.c against Dovecot's output for ../shared/mime-corpus.
 *
 * The message is not copied: every part records byte offsets into the caller's
 * buffer, which must outlive the struct mime_message. CRLF is expected; bare LF is
 * tolerated as a line end (offsets and line counts are then those of the raw bytes;
 * the store normalises to CRLF before anything is served). */
#ifndef POSTLING_MIME_H
#define POSTLING_MIME_H
#include <stdbool.h>
#include <stddef.h>

#include "common/buf.h"

#define MIME_MAX_DEPTH 50           /* multipart + message/rfc822 nesting */
#define MIME_MAX_PARTS 10000        /* parts per message, root included */

struct mime_limits {
	unsigned max_depth;        /* 0 = MIME_MAX_DEPTH */
	unsigned max_parts;        /* 0 = MIME_MAX_PARTS */
};

enum mime_kind {
	MIME_KIND_LEAF = 0,        /* any non-multipart, non-message part */
	MIME_KIND_MULTIPART,       /* children are the body parts */
	MIME_KIND_MESSAGE,         /* message/rfc822 or message/global: one child */
};

/* message-wide flags (struct mime_message.flags) */
#define MIME_F_TOO_DEEP       0x1u  /* a part below max_depth was kept as a leaf */
#define MIME_F_TOO_MANY_PARTS 0x2u  /* parts past max_parts were not split */
#define MIME_F_BARE_LF        0x4u  /* some line ended in LF alone */
#define MIME_F_NO_CLOSE_DELIM 0x8u  /* a multipart lacked its close delimiter */

struct mime_part {
	size_t hdr_start, hdr_len;   /* header incl. the blank line that ends it */
	size_t body_start, body_len; /* body_start == hdr_start + hdr_len */
	size_t lines;                /* LFs in the body */
	enum mime_kind kind;
	bool fake;                   /* empty multipart: stand-in text/plain child */
	unsigned depth;              /* root = 0 */
	struct mime_part *parent;
	struct mime_part *children;  /* first child; owned */
	struct mime_part *next;      /* next sibling */
	size_t nchildren;
};

struct mime_message {
	const char *data;            /* the caller's buffer, not owned */
	size_t len;
	struct mime_part *root;      /* owned */
	size_t nparts;
	unsigned flags;              /* MIME_F_* */
};

/* Parses data[0..len) into a part tree. Never fails on malformed input (the
 * limits degrade to leaves and set flags); returns NULL only for len over SIZE_MAX/2.
 * lim may be NULL for the defaults. */
struct mime_message *mime_parse(const char *data, size_t len, const struct mime_limits *lim);
void mime_message_free(struct mime_message **msg_r);
/* Part by IMAP section numbers ("1.2" → {1, 2}); n == 0 gives the root. The
 * RFC 3501 §6.4.5 rule applies: the parts of a message/rfc822 are those of its
 * body; a non-multipart message has a part 1 (itself). NULL when absent. */
const struct mime_part *mime_part_find(const struct mime_message *m, const unsigned *sect,
    size_t n);

/* Header field access. The value of the nth (0-based; -1 = last) field called
 * `name` (case-insensitive) in p's header, unfolded (CRLF before WSP removed,
 * RFC 5322 §2.2.3) and trimmed, appended to out. Returns 1 found, 0 absent, -1 when
 * out refuses it. *folded_r (may be NULL) tells whether the raw value had a fold. */
int mime_header_get(const struct mime_message *m, const struct mime_part *p,
    const char *name, int nth, struct buf *out, bool *folded_r);

/* Iteration over the fields of p's header in order. Set *pos to p->hdr_start first;
 * each call returns 1 with *f filled (offsets into m->data) and *pos past the field,
 * or 0 at the end of the header. Lines that are not "name:" are skipped. */
struct mime_field {
	size_t start;                /* first octet of the field (its name) */
	size_t name_len;
	size_t value, value_end;     /* raw value after ':', folds kept, final EOL excluded */
	size_t end;                  /* past the field's last line break */
};
int mime_field_next(const struct mime_message *m, const struct mime_part *p, size_t *pos,
    struct mime_field *f);

/* One parameter as written, or after RFC 2231 processing (see mime_params_*). */
struct mime_param {
	char *name;                /* owned */
	char *value;               /* owned */
	char *charset;             /* owned, RFC 2231 decoding only, else NULL */
	char *language;            /* owned, RFC 2231 decoding only, else NULL */
};

/* Content-Type / Content-Disposition (RFC 2045 §5.1, RFC 2183 §2), comments and
 * whitespace dropped, case kept as written. subtype is NULL for a disposition. */
struct mime_ctype {
	char *type;                /* owned; NULL when unparsable */
	char *subtype;             /* owned */
	struct mime_param *params; /* owned, raw: quotes removed, in header order */
	size_t nparams;
};

#define MIME_MAX_PARAMS 64          /* further parameters are ignored */

/* Parses a Content-Type (with_subtype) or Content-Disposition value. Returns 0, or
 * -1 when the type (or type/subtype) is missing; params are kept either way. */
int mime_ctype_parse(const char *v, size_t len, bool with_subtype, struct mime_ctype *ct);
void mime_ctype_clear(struct mime_ctype *ct);
/* Raw value of the first parameter called name (case-insensitive), or NULL. */
const char *mime_param_get(const struct mime_ctype *ct, const char *name);
/* RFC 2231 decoding: continuations (name*0, name*1*, ...) merged when numbered
 * 0..n without gaps, %XX decoded, the value converted from its charset to UTF-8,
 * charset and language recorded. *out_r is a fresh array the caller frees with
 * mime_params_free(). */
void mime_params_decode(const struct mime_ctype *ct, struct mime_param **out_r, size_t *n_r);
void mime_params_free(struct mime_param **p_r, size_t n);

/* RFC 2047 decoding of an unstructured value to UTF-8: encoded words (B and Q)
 * decoded and converted, whitespace between adjacent encoded words dropped
 * (§6.2), malformed words kept as they are. Returns 0, -1 when out refuses. */
int mime_decode_words(const char *in, size_t len, struct buf *out);
/* Appends src (of charset cs) to out as UTF-8; unknown charsets and invalid
 * bytes become U+FFFD. Returns 0 or -1 when out refuses. */
int mime_charset_to_utf8(const char *cs, const char *src, size_t len, struct buf *out);

/* Content-Transfer-Encoding (RFC 2045 §6), for BINARY (RFC 3516) and SEARCH. */
enum mime_cte {
	MIME_CTE_7BIT = 0,         /* also the default when the field is absent (§6.1) */
	MIME_CTE_8BIT,
	MIME_CTE_BINARY,
	MIME_CTE_BASE64,
	MIME_CTE_QP,               /* quoted-printable */
	MIME_CTE_UNKNOWN,          /* anything else (x-uuencode, typos, ...) */
};
/* The mechanism named by a field value (comments and whitespace allowed around the
 * token, case-insensitive); NULL or an empty value give MIME_CTE_7BIT. */
enum mime_cte mime_cte_parse(const char *v, size_t len);
/* The encoding of part p, from its own header (first Content-Transfer-Encoding). */
enum mime_cte mime_part_cte(const struct mime_message *m, const struct mime_part *p);
/* Decodes in[0..len) of encoding cte and appends the octets to out, or, with out NULL,
 * only counts them into *n_r (which may be NULL otherwise). Decoding is lenient, as
 * RFC 2045 asks of readers: base64 ignores characters outside the alphabet and line
 * breaks (§6.8), stops at "=" padding, and drops an incomplete final quantum;
 * quoted-printable removes soft line breaks and trailing whitespace (§6.7 rules 3, 5),
 * keeps a "=" not followed by two hex digits as it is (§6.7 note 2; Dovecot answers
 * NO [PARSE] instead), and keeps line breaks as written. Identity encodings are copied.
 * Returns 0, -1 when out refuses, -2 for MIME_CTE_UNKNOWN (nothing appended). */
int mime_decode_cte(enum mime_cte cte, const char *in, size_t len, struct buf *out,
    size_t *n_r);
/* The same with the encoding given by its name (a Content-Transfer-Encoding value,
 * may be NULL): 0, -1 when out refuses, -2 when the encoding is unknown. */
int mime_decode_transfer(const char *cte, const char *in, size_t len, struct buf *out);

/* mime_imap.c */
/* IMAP items. Each appends to out and returns 0, or -1 when out refuses. */
#define MIME_BS_EXTENDED 0x1u  /* BODYSTRUCTURE (extension data) rather than BODY */
#define MIME_BS_REV2     0x2u  /* RFC 9051: message/global is a body-type-msg too */
/* ENVELOPE of a message part (the root or the child of a MESSAGE part). */
int mime_envelope(const struct mime_message *m, const struct mime_part *p, struct buf *out);
int mime_bodystructure(const struct mime_message *m, const struct mime_part *p,
    unsigned flags, struct buf *out);
/* nstring per RFC 3501 §9: NIL for NULL, a quoted string when the text allows,
 * else (CR, LF, NUL, 8-bit, or force_literal) a literal. */
int mime_imap_nstring(struct buf *out, const char *s, size_t len, bool force_literal);

/* Internal to mime.c and mime_imap.c (defined in mime.c), not API. */
/* Skips whitespace and (nested) comments at s[*i], RFC 5322 §3.2.2. */
void mime_skip_cfws(const char *s, size_t len, size_t *i);
/* RFC 2045 §5.1 token at s[*i] as a fresh string, or NULL when none. */
char *mime_token(const char *s, size_t len, size_t *i);
/* quoted-string at s[*i] == '"' (unterminated runs to the end), unescaped, fresh. */
char *mime_quoted(const char *s, size_t len, size_t *i);
/* Unfolded value (see mime_header_get) as a fresh string, or NULL when absent. */
char *mime_header_dup(const struct mime_message *m, const struct mime_part *p,
    const char *name, int nth, bool *folded_r);
/* RFC 2231 grouping of ct's parameters into a fresh array of nparams + 1 slots;
 * decode selects %-decoding and charset conversion over raw merging. */
void mime_params_2231(const struct mime_ctype *ct, bool decode, struct mime_param **out_r,
    size_t *n_r);
/* Content-Type of p, defaults applied (RFC 2045 §5.2, RFC 2046 §5.1.5 digest). */
void mime_part_ctype(const struct mime_message *m, const struct mime_part *p, bool digest_child,
    struct mime_ctype *ct);

#endif
