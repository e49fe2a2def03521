/* mailaddr.h: pure parsing of SMTP envelope addresses: RFC 5321 §4.1.2 Path and Mailbox,
 * with the RFC 6531 §3.3 UTF-8 extension. No I/O, no globals; unit-tested byte by byte
 * in tests/unit/test_smtp_parse.c. */
#ifndef POSTLING_MAILADDR_H
#define POSTLING_MAILADDR_H
#include <stdbool.h>
#include <stddef.h>

#define MAILADDR_LOCAL_MAX 64       /* octets, RFC 5321 §4.5.3.1.1 (measured as received) */
#define MAILADDR_DOMAIN_MAX 255     /* octets, RFC 5321 §4.5.3.1.2 */
#define MAILADDR_PATH_MAX 256       /* octets incl. "<>" and route, RFC 5321 §4.5.3.1.3 */
/* room for mailaddr_to_string(): rendered local part (never longer than the received
 * one), "@", domain, NUL */
#define MAILADDR_STRING_MAX (MAILADDR_LOCAL_MAX + 1 + MAILADDR_DOMAIN_MAX + 1)

/* flags for the parse functions */
#define MAILADDR_ALLOW_UTF8 0x1u        /* SMTPUTF8 given: UTF-8 local part, U-labels (RFC 6531) */
#define MAILADDR_ALLOW_NULL 0x2u        /* path may be "<>" (reverse-path, RFC 5321 §4.1.1.2) */
#define MAILADDR_ALLOW_POSTMASTER 0x4u  /* path may be "<Postmaster>" (RFC 5321 §4.1.1.3) */

enum mailaddr_result {
	MAILADDR_OK = 0,
	MAILADDR_E_SYNTAX,            /* not RFC 5321 §4.1.2 grammar */
	MAILADDR_E_BRACKETS,          /* path not enclosed in "<" ">" */
	MAILADDR_E_LOCAL_TOO_LONG,    /* > 64 octets */
	MAILADDR_E_DOMAIN_TOO_LONG,   /* > 255 octets */
	MAILADDR_E_PATH_TOO_LONG,     /* > 256 octets */
	MAILADDR_E_NO_DOMAIN,         /* "user" or "user@" */
	MAILADDR_E_BAD_DOMAIN,        /* bad label: empty, leading/trailing '-', > 63 octets, bad char */
	MAILADDR_E_BAD_LITERAL,       /* address literal not IPv4 / IPv6 (general literals refused) */
	MAILADDR_E_UTF8_NOT_ALLOWED,  /* valid UTF-8 but MAILADDR_ALLOW_UTF8 not given */
	MAILADDR_E_BAD_UTF8,          /* overlong, surrogate, truncated, > U+10FFFF (RFC 3629 §4) */
	MAILADDR_E_CONTROL,           /* NUL, C0, DEL or C1 control */
	MAILADDR_E_NULL_NOT_ALLOWED,  /* "<>" without MAILADDR_ALLOW_NULL */
};

struct mailaddr {
	/* Local part in canonical form: a quoted-string is stored unquoted and unescaped
	 * (it may then hold '@', SP, '"', '\'); case is preserved. NUL-terminated. */
	char local[MAILADDR_LOCAL_MAX + 1];
	/* Domain, ASCII letters lowercased; an address literal keeps its brackets in
	 * canonical inet_ntop form: "[192.0.2.1]", "[IPv6:2001:db8::1]". "" for a null path
	 * and for <Postmaster>. */
	char domain[MAILADDR_DOMAIN_MAX + 1];
	bool utf8;            /* non-ASCII in local part or domain (needs SMTPUTF8) */
	bool quoted;          /* the local part was received as a quoted-string */
	bool domain_literal;  /* domain is "[...]"; literal_af / literal_addr are set */
	bool had_route;       /* an A-d-l source route was given and discarded (RFC 5321 §3.3) */
	bool null_path;       /* "<>" */
	bool postmaster;      /* "<Postmaster>" without a domain (RFC 5321 §4.1.1.3) */
	int literal_af;       /* AF_INET or AF_INET6 when domain_literal */
	unsigned char literal_addr[16];   /* network order, 4 or 16 octets used */
};

/* `[A-d-l ":"] Mailbox` over exactly s[0..len) (no angle brackets); s need not be
 * NUL-terminated. On error *out is zeroed. */
enum mailaddr_result mailaddr_parse(const char *s, size_t len, unsigned flags, struct mailaddr *out);
/* `"<" [A-d-l ":"] Mailbox ">"` (or "<>", "<Postmaster>" per flags) at the start of
 * s[0..len); *consumed_r is set to the octets used through the ">" so the caller can
 * parse what follows. On error *out is zeroed. */
enum mailaddr_result mailaddr_parse_path(const char *s, size_t len, unsigned flags,
    struct mailaddr *out, size_t *consumed_r);
/* Domain or address literal alone (EHLO/HELO argument, RFC 5321 §4.1.1.1): fills
 * out->domain, domain_literal, literal_*, utf8. On error *out is zeroed. */
enum mailaddr_result mailaddr_parse_domain(const char *s, size_t len, unsigned flags,
    struct mailaddr *out);

/* The local part as it must be sent: as is when it is a Dot-string, else a
 * quoted-string with '"' and '\' escaped (RFC 5321 §4.1.2: Dot-string preferred).
 * 0, or -1 when it does not fit (buf then holds ""). */
int mailaddr_local_to_string(const struct mailaddr *a, char *buf, size_t size);
/* "local@domain" in canonical form; "" for the null path, "Postmaster" for <Postmaster>.
 * MAILADDR_STRING_MAX is always enough. 0, or -1 when it does not fit. */
int mailaddr_to_string(const struct mailaddr *a, char *buf, size_t size);
/* ASCII case-insensitive domain comparison; false for the null path and <Postmaster>.
 * U-labels compare octet for octet (no IDNA mapping here). */
bool mailaddr_domain_is(const struct mailaddr *a, const char *domain);
const char *mailaddr_strerror(enum mailaddr_result r);

#endif
