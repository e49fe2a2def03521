/* imap_parse.h: pure IMAP parsing: one command (RFC 9051 §9, RFC 3501 §9) read
 * resumably into a tree of arguments, with LITERAL+/LITERAL- (RFC 7888) and literal8
 * (RFC 3516); sequence sets (RFC 9051 §9, "$" of RFC 5182); FETCH section specs
 * (RFC 9051 §6.4.5); modified UTF-7 mailbox names (RFC 3501 §5.1.3).
 * No I/O, no globals, no logging; unit-tested whole and byte by byte in
 * tests/unit/test_imap_parse.c. The session chooses the reply (BAD, or NO [TOOBIG]).
 *
 * Model: Dovecot lib-imap/imap-parser.c. Differences worth knowing:
 *  - Lists are tracked through parent indices, not recursion: nesting costs nothing
 *    on the C stack and is bounded by limits.max_depth.
 *  - An atom containing "[" runs to the matching "]" verbatim, spaces, parentheses and
 *    quoted strings included, then on through atom characters, so
 *    BODY.PEEK[HEADER.FIELDS (From To)]<0.100> is ONE atom; imap_fetch_section_parse()
 *    gives it structure. (The same rule makes "foo[a b]" one atom anywhere.)
 *  - Strict RFC syntax: exactly one SP between arguments, none after "(" or before ")",
 *    none at the end of the line; CRLF only (a bare LF or CR is an error).
 */
#ifndef POSTLING_IMAP_PARSE_H
#define POSTLING_IMAP_PARSE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"

#define IMAP_MAX_LINE (64 * 1024)     /* command octets excluding literal data (issue 5) */
#define IMAP_MAX_DEPTH 32             /* nested parentheses */
#define IMAP_MAX_ARGS 4096            /* nodes per command (lists count as nodes) */
#define IMAP_MAX_TAG 64
#define IMAP_MAX_COMMAND 32
#define IMAP_LITERAL_MINUS_MAX 4096   /* RFC 7888 §5: LITERAL- non-sync limit */
#define IMAP_ARG_NONE UINT32_MAX
#define IMAP_ARGS_INITIAL 32          /* nodes allocated at first; doubled as needed */

enum imap_parse_status {
	IMAP_PARSE_ERROR = -1,       /* see imap_parser_error(); reply BAD (or NO [TOOBIG]) */
	IMAP_PARSE_MORE = 0,         /* all input consumed, feed more */
	IMAP_PARSE_DONE = 1,         /* command complete through its CRLF */
	/* A synchronizing literal {n} (even {0}) was announced and accepted: the session
	 * sends "+ Ready" (RFC 9051 §7.5) and feeds the literal when it arrives. */
	IMAP_PARSE_CONTINUE = 2,
};

enum imap_parse_error {
	IMAP_PE_NONE = 0,
	IMAP_PE_EMPTY,               /* empty line */
	IMAP_PE_BAD_TAG,             /* tag missing or with a non ASTRING-CHAR or "+" */
	IMAP_PE_BAD_COMMAND,         /* command name missing, not an atom, or too long */
	IMAP_PE_SYNTAX,              /* misplaced space, bad character, unbalanced ")" */
	IMAP_PE_BARE_EOL,            /* CR not followed by LF, or LF without CR */
	IMAP_PE_NUL,                 /* NUL in a string or (non-literal8) literal */
	IMAP_PE_BAD_QUOTED,          /* backslash before anything but \ or ", CR/LF inside */
	IMAP_PE_BAD_LITERAL,         /* "{" not followed by digits "}" / "+}" CRLF */
	IMAP_PE_LITERAL_TOO_BIG,     /* over limits.max_literal or number64: NO [TOOBIG] */
	IMAP_PE_NONSYNC_TOO_BIG,     /* {n+} over limits.max_nonsync: BAD [TOOBIG], then
	                              * close: the client sends the n octets anyway */
	IMAP_PE_LINE_TOO_LONG,       /* over limits.max_line: BAD, close (cannot resync) */
	IMAP_PE_TOO_DEEP,            /* lists nested past limits.max_depth */
	IMAP_PE_TOO_MANY_ARGS,       /* more than limits.max_args nodes */
	IMAP_PE_UNCLOSED_LIST,       /* CRLF inside "(" ... */
	IMAP_PE_TOO_MUCH_DATA,       /* strings + literals held past limits.max_data */
};

enum imap_arg_type {
	IMAP_ARG_ATOM = 0,           /* includes fetch atoms with [section]<partial> */
	IMAP_ARG_NUMBER,             /* all digits, value <= 2^63-1 (number64); text kept */
	IMAP_ARG_NIL,                /* the atom NIL, any case; text kept */
	IMAP_ARG_QUOTED,             /* unescaped value */
	IMAP_ARG_LITERAL,            /* {n}, {n+} or ~{n} (literal8) */
	IMAP_ARG_LIST,
};

struct imap_arg {
	enum imap_arg_type type;
	uint32_t parent;             /* index of the enclosing list, IMAP_ARG_NONE at top */
	uint32_t next;               /* next sibling, IMAP_ARG_NONE when last */
	uint32_t first;              /* LIST: first child or IMAP_ARG_NONE */
	uint32_t count;              /* LIST: number of children */
	uint32_t last;               /* LIST: last child (private) */
	size_t off, len;             /* value in the parser's data buffer (NUL follows) */
	uint64_t num;                /* NUMBER */
	bool literal8;               /* LITERAL: ~{n}, NUL allowed (RFC 3516 §4.3) */
	bool nonsync;                /* LITERAL: {n+} */
};

struct imap_parse_limits {
	size_t max_line;             /* IMAP_MAX_LINE */
	uint64_t max_literal;        /* per literal, checked before "+ Ready" */
	uint64_t max_nonsync;        /* UINT64_MAX with LITERAL+, 4096 with LITERAL- */
	size_t max_data;             /* all values of one command held in memory */
	unsigned max_depth;          /* IMAP_MAX_DEPTH */
	uint32_t max_args;           /* IMAP_MAX_ARGS */
};

/* Fills defaults: 64 KiB line, 64 KiB literals, LITERAL+, 1 MiB data, 32 deep,
 * 4096 args. A session raises max_literal/max_data only for APPEND-sized needs. */
void imap_parse_limits_default(struct imap_parse_limits *l);

struct imap_parser {
	struct imap_parse_limits lim;
	int state;                   /* private to imap_parse.c */
	enum imap_parse_error err;
	bool fatal;                  /* the stream cannot be resynchronised */
	bool skip_line;              /* error before the CRLF: reset() drops the line rest */
	char tag[IMAP_MAX_TAG + 1];
	char command[IMAP_MAX_COMMAND + 1];   /* upper-cased */
	size_t taglen, cmdlen;
	size_t line_len;             /* non-literal octets so far */
	struct imap_arg *args;       /* owned, args_cap entries, grown up to limits.max_args */
	uint32_t args_cap;
	uint32_t nargs;
	uint32_t first;              /* first top-level argument or IMAP_ARG_NONE */
	uint32_t last_top;           /* private: last top-level argument */
	uint32_t cur_list;           /* open list or IMAP_ARG_NONE */
	uint32_t cur;                /* node being filled */
	unsigned depth;
	/* private scanning state */
	uint64_t lit_size, lit_left; /* literal announced / octets still to read */
	bool lit_digits, lit_plus, lit8, lit_nul;
	bool just_opened;            /* "(" seen, ")" may follow */
	bool br_quote, br_esc;       /* inside a quoted string within an atom's [...] */
	struct buf data;             /* owned: values, each NUL-terminated */
};

void imap_parser_init(struct imap_parser *p, const struct imap_parse_limits *lim);
void imap_parser_free(struct imap_parser *p);
/* Starts the next command. After a non-fatal error before the CRLF, the rest of the
 * erroneous line is first skipped (feeds return IMAP_PARSE_MORE until its CRLF). */
void imap_parser_reset(struct imap_parser *p);
/* Consumes data[0..len). *consumed_r tells how much was used: after DONE the rest
 * (pipelined commands) stays with the caller; after CONTINUE nothing more is
 * consumed; after ERROR it points at the offending octet. Feeding after DONE or
 * ERROR without reset() consumes nothing and repeats the status. */
enum imap_parse_status imap_parser_feed(struct imap_parser *p, const char *data, size_t len,
    size_t *consumed_r);
enum imap_parse_error imap_parser_error(const struct imap_parser *p);
/* True when the session must close after the BAD (line too long, refused non-sync) */
bool imap_parser_fatal(const struct imap_parser *p);
/* Tag once parsed (for the tagged BAD), else NULL ("* BAD"). */
const char *imap_parser_tag(const struct imap_parser *p);
/* Upper-cased command name once parsed, else NULL. */
const char *imap_parser_command(const struct imap_parser *p);
const char *imap_parse_strerror(enum imap_parse_error e);
/* Suggested response code: "TOOBIG" for the size errors, else NULL. */
const char *imap_parse_resp_code(enum imap_parse_error e);

/* Tree access, valid after DONE until the next reset()/free(). */
const struct imap_arg *imap_arg_first(const struct imap_parser *p);
const struct imap_arg *imap_arg_next(const struct imap_parser *p, const struct imap_arg *a);
const struct imap_arg *imap_arg_child(const struct imap_parser *p, const struct imap_arg *a);
size_t imap_arg_count(const struct imap_parser *p);     /* top-level arguments */
/* Value of any non-list argument (NUL-terminated; literal8 may hold NULs) */
const char *imap_arg_value(const struct imap_parser *p, const struct imap_arg *a,
    size_t *len_r);
/* astring (RFC 9051 §9): ATOM/NUMBER/NIL text, QUOTED or LITERAL; NULL for a list */
const char *imap_arg_astring(const struct imap_parser *p, const struct imap_arg *a,
    size_t *len_r);
bool imap_arg_is_atom(const struct imap_arg *a);        /* ATOM, NUMBER or NIL */

/* ---- sequence sets (RFC 9051 §9 sequence-set, RFC 5182 "$") ---- */
#define IMAP_SEQSET_MAX_RANGES 2048
#define IMAP_SEQ_STAR 0u            /* "*" in a range bound */

struct imap_seqrange {
	uint32_t lo, hi;            /* 1..2^32-1 or IMAP_SEQ_STAR; lo <= hi when no star */
};

struct imap_seqset {
	bool dollar;                /* "$": the saved search result (RFC 5182 §2.1) */
	size_t n;
	struct imap_seqrange r[IMAP_SEQSET_MAX_RANGES];
};

/* Parses s[0..len) (no NUL needed): 0, or -1 on bad syntax, a zero, a number past
 * 2^32-1, "$" combined with anything, or more than IMAP_SEQSET_MAX_RANGES ranges. */
int imap_seqset_parse(const char *s, size_t len, struct imap_seqset *out);
/* Is n (1-based) in the set when "*" stands for max (EXISTS, or the highest UID in
 * use)? Numbers above max never match; with max == 0 nothing matches. A "$" set
 * must be resolved by the session first: always false here. */
bool imap_seqset_contains(const struct imap_seqset *s, uint32_t n, uint32_t max);
/* Highest number of the set <= max, or 0 when none (bounds a walk over messages). */
uint32_t imap_seqset_highest(const struct imap_seqset *s, uint32_t max);

/* ---- FETCH section spec (RFC 9051 §6.4.5, RFC 3516 BINARY) ---- */
#define IMAP_SECTION_MAX_PARTS 32
#define IMAP_SECTION_MAX_FIELDS 64

enum imap_fetch_item {
	IMAP_FETCH_BODY = 0, IMAP_FETCH_BODY_PEEK, IMAP_FETCH_BINARY, IMAP_FETCH_BINARY_PEEK,
	IMAP_FETCH_BINARY_SIZE,
};
enum imap_section_text {
	IMAP_SECTION_ALL = 0,        /* BODY[] or BODY[1.2] */
	IMAP_SECTION_HEADER, IMAP_SECTION_HEADER_FIELDS, IMAP_SECTION_HEADER_FIELDS_NOT,
	IMAP_SECTION_TEXT, IMAP_SECTION_MIME,
};

struct imap_fetch_section {
	enum imap_fetch_item item;
	uint32_t parts[IMAP_SECTION_MAX_PARTS];
	size_t nparts;
	enum imap_section_text text;
	/* HEADER.FIELDS(.NOT) names: offsets into the atom given to the parser; a
	 * quoted name is reported with its quotes stripped but escapes left in place */
	struct { size_t off, len; } fields[IMAP_SECTION_MAX_FIELDS];
	size_t nfields;
	bool partial;
	uint32_t partial_off, partial_len;   /* <off.len>, len > 0 */
};

/* Parses a fetch atom "BODY[...]", "BODY.PEEK[...]<o.l>", "BINARY[1]",
 * "BINARY.SIZE[1]": 0, or -1 when malformed (BAD). Part numbers are nz-numbers;
 * whether the part exists is the session's business. */
int imap_fetch_section_parse(const char *s, size_t len, struct imap_fetch_section *out);

/* Modified UTF-7 mailbox names: common/mutf7.h */

#endif
