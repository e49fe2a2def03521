/* pop3_parse.h: pure POP3 command-line parsing (RFC 1939 §3, RFC 2449 §4).
 * No I/O, no globals; unit-tested byte by byte in tests/unit/test_pop3_parse.c. */
#ifndef POSTLING_POP3_PARSE_H
#define POSTLING_POP3_PARSE_H
#include <stddef.h>
#include <stdint.h>

#define POP3_MAX_ARGS 3
#define POP3_MAX_ARG_LEN 255        /* RFC 2449 §4: arguments up to 255 octets */

enum pop3_parse_result {
	POP3_PARSE_OK = 0,
	POP3_PARSE_EMPTY,            /* empty line */
	POP3_PARSE_BAD_VERB,         /* keyword not 3-4 letters (RFC 1939 §3) */
	POP3_PARSE_NUL,              /* NUL or other control byte in the line */
	POP3_PARSE_TOO_MANY_ARGS,
	POP3_PARSE_ARG_TOO_LONG,
};

#define POP3_MAX_LINE 512            /* octets incl. CRLF (design §2) */

struct pop3_cmd {
	char verb[5];                /* upper-cased keyword */
	const char *args[POP3_MAX_ARGS];   /* NUL-terminated copies in argbuf */
	size_t nargs;
	const char *rest;            /* everything after "VERB ", unsplit, in the caller's line
	                              * (PASS may hold spaces, RFC 1939 §7) */
	char argbuf[POP3_MAX_LINE + 1];
};

/* Parses line[0..len); `line` must have line[len] == '\0' and is not modified.
 * Lines longer than POP3_MAX_LINE are rejected as POP3_PARSE_ARG_TOO_LONG. */
enum pop3_parse_result pop3_parse_line(const char *line, size_t len, struct pop3_cmd *cmd);
/* A message number: 1..UINT32_MAX in plain decimal digits; -1 otherwise */
int pop3_parse_number(const char *s, uint32_t *r);
/* A count (TOP lines): 0..UINT32_MAX; -1 otherwise */
int pop3_parse_count(const char *s, uint32_t *r);
const char *pop3_parse_error(enum pop3_parse_result r);

#endif
