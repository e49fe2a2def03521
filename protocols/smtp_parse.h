/* smtp_parse.h: pure SMTP parsing: command lines (RFC 5321 §4.1 with the ESMTP
 * parameters of RFC 1870, 6152, 3030, 6531, 3461, 4954) and the DATA stream
 * (RFC 5321 §4.1.1.4, §4.5.2). No I/O, no globals, no logging; unit-tested whole and
 * byte by byte in tests/unit/test_smtp_parse.c. The session chooses the reply;
 * smtp_parse_reply() only suggests one. */
#ifndef POSTLING_SMTP_PARSE_H
#define POSTLING_SMTP_PARSE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "common/mailaddr.h"

#define SMTP_MAX_LINE 512           /* command line incl. CRLF, RFC 5321 §4.5.3.1.4 */
#define SMTP_MAX_TEXT_LINE 1000     /* DATA line incl. CRLF, RFC 5321 §4.5.3.1.6 */
#define SMTP_MAX_PARAMS 16          /* ESMTP parameters per MAIL/RCPT */
#define SMTP_ENVID_MAX 100          /* RFC 3461 §4.4 */
#define SMTP_ORCPT_MAX 500          /* RFC 3461 §4.2 */
#define SMTP_ORCPT_TYPE_MAX 31      /* addr-type atom ("rfc822", "utf-8", ...) */
#define SMTP_AUTH_MECH_MAX 20       /* RFC 4422 §3.1 */

enum smtp_verb {
	SMTP_VERB_NONE = 0,
	SMTP_VERB_EHLO, SMTP_VERB_HELO, SMTP_VERB_MAIL, SMTP_VERB_RCPT, SMTP_VERB_DATA,
	SMTP_VERB_BDAT, SMTP_VERB_RSET, SMTP_VERB_NOOP, SMTP_VERB_QUIT, SMTP_VERB_VRFY,
	SMTP_VERB_EXPN, SMTP_VERB_HELP, SMTP_VERB_STARTTLS, SMTP_VERB_AUTH,
};

/* Results of both parsers; smtp_parse_reply() maps each to a suggested reply. */
enum smtp_parse_result {
	SMTP_PARSE_OK = 0,
	SMTP_E_EMPTY,              /* 500 5.5.2 */
	SMTP_E_TOO_LONG,           /* 500 5.5.2 line > 510 octets without CRLF */
	SMTP_E_CONTROL,            /* 500 5.5.2 NUL, CR, LF or other control in the line */
	SMTP_E_UNKNOWN_COMMAND,    /* 500 5.5.2 */
	SMTP_E_SYNTAX,             /* 501 5.5.4 argument missing, extra or malformed */
	SMTP_E_BAD_HELO,           /* 501 5.5.4 EHLO/HELO not a domain or address literal */
	SMTP_E_BAD_SENDER,         /* 501 5.1.7 MAIL path (detail in cmd->addr_err) */
	SMTP_E_BAD_RECIPIENT,      /* 501 5.1.3 RCPT path (detail in cmd->addr_err) */
	SMTP_E_UTF8_NOT_ALLOWED,   /* 553 5.6.7 non-ASCII address without SMTPUTF8 */
	SMTP_E_PARAM_SYNTAX,       /* 501 5.5.4 not keyword[=value] (RFC 5321 §4.1.2) */
	SMTP_E_TOO_MANY_PARAMS,    /* 501 5.5.4 more than SMTP_MAX_PARAMS */
	SMTP_E_DUPLICATE_PARAM,    /* 501 5.5.4 */
	SMTP_E_UNKNOWN_PARAM,      /* 555 5.5.4 (also a known one on the wrong command) */
	SMTP_E_BAD_SIZE,           /* 501 5.5.4 SIZE not digits */
	SMTP_E_SIZE_OVERFLOW,      /* 552 5.3.4 SIZE or BDAT size beyond 2^64-1 */
	SMTP_E_BAD_BODY,           /* 501 5.5.4 */
	SMTP_E_BAD_RET,            /* 501 5.5.4 */
	SMTP_E_BAD_ENVID,          /* 501 5.5.4 bad xtext or > 100 octets */
	SMTP_E_BAD_NOTIFY,         /* 501 5.5.4 */
	SMTP_E_BAD_ORCPT,          /* 501 5.5.4 */
	SMTP_E_BAD_AUTH_PARAM,     /* 501 5.5.4 MAIL ... AUTH=<bad> */
	/* DATA stream (smtp_data_result) */
	SMTP_E_BARE_EOL,           /* 554 5.6.0 bare CR or LF: SMTP smuggling attempt */
	SMTP_E_LINE_TOO_LONG,      /* 500 5.5.2 a line over 1000 octets incl. CRLF */
	SMTP_E_TOO_BIG,            /* 552 5.3.4 message over the size limit */
};

struct smtp_reply_hint {
	int code;                  /* 500 */
	const char *enhanced;      /* "5.5.2" (RFC 3463) */
	const char *text;          /* "Command unrecognized" */
};

enum smtp_body { SMTP_BODY_NONE = 0, SMTP_BODY_7BIT, SMTP_BODY_8BITMIME, SMTP_BODY_BINARYMIME };
enum smtp_ret { SMTP_RET_NONE = 0, SMTP_RET_FULL, SMTP_RET_HDRS };

/* NOTIFY bits (RFC 3461 §4.1); 0 = no NOTIFY parameter */
#define SMTP_NOTIFY_NEVER   0x1u
#define SMTP_NOTIFY_SUCCESS 0x2u
#define SMTP_NOTIFY_FAILURE 0x4u
#define SMTP_NOTIFY_DELAY   0x8u

/* One esmtp-param as received; keyword upper-cased. Both point into cmd->parambuf. */
struct smtp_param {
	const char *keyword;
	const char *value;         /* NULL when no "=value" */
};

/* MAIL FROM parameters, interpreted */
struct smtp_mail_params {
	bool has_size;
	uint64_t size;                     /* RFC 1870 */
	enum smtp_body body;               /* RFC 6152, RFC 3030 §3 */
	bool smtputf8;                     /* RFC 6531 §3.4 */
	enum smtp_ret ret;                 /* RFC 3461 §4.3 */
	bool has_envid;
	char envid[SMTP_ENVID_MAX + 1];    /* RFC 3461 §4.4, xtext-decoded */
	bool has_auth;                     /* RFC 4954 §5 */
	bool auth_null;                    /* AUTH=<> */
	struct mailaddr auth;              /* the decoded AUTH= mailbox unless auth_null */
};

/* RCPT TO parameters, interpreted (RFC 3461 §4.1, §4.2) */
struct smtp_rcpt_params {
	unsigned notify;                   /* SMTP_NOTIFY_* bits */
	bool has_orcpt;
	char orcpt_type[SMTP_ORCPT_TYPE_MAX + 1];  /* addr-type as received, e.g. "rfc822" */
	char orcpt_addr[SMTP_ORCPT_MAX + 1];       /* xtext-decoded, printable US-ASCII */
};

struct smtp_cmd {
	enum smtp_verb verb;
	const char *name;          /* canonical verb ("MAIL"), static storage */
	/* Everything after the verb and its spaces, trailing spaces dropped, NUL-terminated
	 * copy in argbuf; NULL when there is none. HELO/EHLO keep it for Received:. */
	const char *arg;
	struct mailaddr helo;      /* EHLO/HELO: domain fields only */
	/* MAIL/RCPT. For RCPT, path.utf8 set means the session must check the transaction
	 * has SMTPUTF8 (else SMTP_E_UTF8_NOT_ALLOWED); MAIL is checked here. */
	struct mailaddr path;
	bool space_after_colon;    /* "MAIL FROM: <a@b>": tolerated, recorded */
	struct smtp_param params[SMTP_MAX_PARAMS];
	size_t nparams;
	struct smtp_mail_params mail;
	struct smtp_rcpt_params rcpt;
	uint64_t bdat_size;        /* BDAT (RFC 3030 §2) */
	bool bdat_last;
	char auth_mech[SMTP_AUTH_MECH_MAX + 1];  /* AUTH, upper-cased (RFC 4954 §4) */
	const char *auth_initial;  /* NULL when absent, "" for "=", else base64 text */
	/* error detail */
	enum mailaddr_result addr_err;     /* for BAD_SENDER / BAD_RECIPIENT / BAD_HELO / UTF8 */
	const char *err_param;     /* keyword of the offending parameter, or NULL */
	char argbuf[SMTP_MAX_LINE];
	char parambuf[SMTP_MAX_LINE];
};

/* Parses one command line line[0..len) without its CRLF; line need not be
 * NUL-terminated and is not modified. Verbs are case-insensitive. Lines over
 * SMTP_MAX_LINE - 2 octets get SMTP_E_TOO_LONG (the caller enforces the limit on its
 * input buffer too). On error, cmd->verb is set when the verb was recognised. */
enum smtp_parse_result smtp_parse_command(const char *line, size_t len, struct smtp_cmd *cmd);
/* Suggested reply for a result (RFC 5321 §4.2.3, RFC 3463). */
struct smtp_reply_hint smtp_parse_reply(enum smtp_parse_result r);
const char *smtp_parse_strerror(enum smtp_parse_result r);

/*
 * DATA stream reader (RFC 5321 §4.1.1.4, §4.5.2), resumable: feed whatever arrived
 * after the 354 in any split. It unstuffs dots and writes the message (each line
 * with its CRLF, without the final ".CRLF") to the caller's buf. The end is ONLY
 * CRLF "." CRLF, where the opening CRLF may be the start of the data (empty message).
 * Bare CR or bare LF never end a line nor the data (SMTP smuggling,
 * CVE-2023-51764): they are flagged and reading goes on to the real end. Past
 * max_size (or when `out` refuses more), the octets stored so far are dropped (out
 * goes back to its length at init), storing stops, and reading goes on to the end.
 */
enum smtp_data_state {
	SMTP_DATA_BOL = 0,         /* at the start of a line */
	SMTP_DATA_TEXT,            /* inside a line */
	SMTP_DATA_CR,              /* inside a line, CR pending */
	SMTP_DATA_DOT,             /* "." at the start of a line */
	SMTP_DATA_DOT_CR,          /* "." CR at the start of a line */
	SMTP_DATA_DONE,
};

#define SMTP_DATA_F_BARE_CR       0x1u
#define SMTP_DATA_F_BARE_LF       0x2u
#define SMTP_DATA_F_LINE_TOO_LONG 0x4u
#define SMTP_DATA_F_TOO_BIG       0x8u

struct smtp_data_parser {
	struct buf *out;           /* caller's, not owned; may already hold a header */
	size_t base_len;           /* out->len at init: what TOO_BIG truncates back to */
	uint64_t max_size;         /* limit on the unstuffed message octets */
	enum smtp_data_state state;
	unsigned flags;            /* SMTP_DATA_F_* */
	size_t line_len;           /* octets of the current line so far, stuffing dot excluded */
	uint64_t msg_size;         /* unstuffed message octets, counted even past the limit */
	uint64_t bytes_in;         /* raw octets consumed, terminator included */
};

void smtp_data_init(struct smtp_data_parser *p, struct buf *out, uint64_t max_size);
/* Consumes p[0..len): returns 1 once the terminating CRLF.CRLF has been consumed
 * (*consumed_r octets used; the rest, e.g. pipelined commands, stays with the
 * caller), 0 when more input is needed (*consumed_r == len). After 1, further calls
 * consume nothing and return 1. */
int smtp_data_feed(struct smtp_data_parser *p, const char *data, size_t len, size_t *consumed_r);
unsigned smtp_data_flags(const struct smtp_data_parser *p);
uint64_t smtp_data_size(const struct smtp_data_parser *p);
uint64_t smtp_data_bytes_in(const struct smtp_data_parser *p);
/* After done: SMTP_PARSE_OK, or the one error to reply with, in this precedence:
 * SMTP_E_BARE_EOL (554 5.6.0), SMTP_E_TOO_BIG (552 5.3.4), SMTP_E_LINE_TOO_LONG
 * (500 5.5.2). */
enum smtp_parse_result smtp_data_result(const struct smtp_data_parser *p);

#endif
