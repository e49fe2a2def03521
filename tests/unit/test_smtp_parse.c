/* test_smtp_parse.c: envelope addresses (common/mailaddr), SMTP command lines and the
 * DATA stream (protocols/smtp_parse), each fed whole and one byte at a time. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <cmocka.h>

#include "common/buf.h"
#include "common/mailaddr.h"
#include "protocols/smtp_parse.h"

/* An exact-size heap copy without a NUL, so a sanitizer build catches over-reads. */
static char *dup_exact(const char *s, size_t n)
{
	char *p = malloc(n > 0 ? n : 1);
	assert_non_null(p);
	memcpy(p, s, n);
	return p;
}

/* ------------------------------------------------------------------ mailaddr */

struct addr_case {
	const char *in;            /* a Path, "<...>" */
	size_t len;                /* 0: strlen(in) */
	unsigned flags;
	enum mailaddr_result want;
	const char *canon;         /* mailaddr_to_string() when OK */
};

#define U MAILADDR_ALLOW_UTF8
#define N MAILADDR_ALLOW_NULL
#define P MAILADDR_ALLOW_POSTMASTER

static const struct addr_case addr_table[] = {
	{ "<a@b>", 0, 0, MAILADDR_OK, "a@b" },
	{ "<User.Name+tag@Mail.Example.ORG>", 0, 0, MAILADDR_OK, "User.Name+tag@mail.example.org" },
	/* brackets and extra '@' */
	{ "a@b", 0, 0, MAILADDR_E_BRACKETS, NULL },
	{ "<a@b", 0, 0, MAILADDR_E_BRACKETS, NULL },
	{ "", 0, 0, MAILADDR_E_BRACKETS, NULL },
	{ "<a@b@c>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	{ "<a@b>>", 0, 0, MAILADDR_OK, "a@b" },  /* the path ends at the first '>' */
	/* controls: NUL, C0, DEL, CRLF inside */
	{ "<a\0b@x>", 7, 0, MAILADDR_E_CONTROL, NULL },
	{ "<a\x01@x>", 0, 0, MAILADDR_E_CONTROL, NULL },
	{ "<a\x7f@x>", 0, 0, MAILADDR_E_CONTROL, NULL },
	{ "<a@b\r\n>", 0, 0, MAILADDR_E_CONTROL, NULL },
	{ "<\"a\tb\"@x>", 0, 0, MAILADDR_E_CONTROL, NULL },
	/* quoted local parts: stored unquoted, rendered quoted only when needed */
	{ "<\"john doe\"@example.org>", 0, 0, MAILADDR_OK, "\"john doe\"@example.org" },
	{ "<\"a\\\"b\"@x>", 0, 0, MAILADDR_OK, "\"a\\\"b\"@x" },
	{ "<\"john\"@x>", 0, 0, MAILADDR_OK, "john@x" },
	{ "<\"j\\ohn\"@x>", 0, 0, MAILADDR_OK, "john@x" },
	{ "<\"\"@x>", 0, 0, MAILADDR_OK, "\"\"@x" },
	{ "<\"a\\\\b\"@x>", 0, 0, MAILADDR_OK, "\"a\\\\b\"@x" },
	{ "<\"abc@x>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	{ "<\"a\"b@x>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	/* dot-string rules */
	{ "<.a@b>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	{ "<a.@b>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	{ "<a..b@c>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	{ "<a b@c>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	{ "<a(b)@c>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	/* domains */
	{ "<a>", 0, 0, MAILADDR_E_NO_DOMAIN, NULL },
	{ "<a@>", 0, 0, MAILADDR_E_NO_DOMAIN, NULL },
	{ "<a@-b.example>", 0, 0, MAILADDR_E_BAD_DOMAIN, NULL },
	{ "<a@b-.example>", 0, 0, MAILADDR_E_BAD_DOMAIN, NULL },
	{ "<a@b..example>", 0, 0, MAILADDR_E_BAD_DOMAIN, NULL },
	{ "<a@b.example.>", 0, 0, MAILADDR_E_BAD_DOMAIN, NULL },
	{ "<a@.example>", 0, 0, MAILADDR_E_BAD_DOMAIN, NULL },
	{ "<a@b_c.example>", 0, 0, MAILADDR_E_BAD_DOMAIN, NULL },
	{ "<a@xn--bcher-kva.example>", 0, 0, MAILADDR_OK, "a@xn--bcher-kva.example" },
	{ "<a@b c>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	/* address literals (RFC 5321 §4.1.3) */
	{ "<a@[192.0.2.1]>", 0, 0, MAILADDR_OK, "a@[192.0.2.1]" },
	{ "<a@[IPv6:2001:DB8:0:0::1]>", 0, 0, MAILADDR_OK, "a@[IPv6:2001:db8::1]" },
	{ "<a@[ipv6:::1]>", 0, 0, MAILADDR_OK, "a@[IPv6:::1]" },
	{ "<a@[IPv6:::1]>", 0, 0, MAILADDR_OK, "a@[IPv6:::1]" },
	{ "<a@[300.1.1.1]>", 0, 0, MAILADDR_E_BAD_LITERAL, NULL },
	{ "<a@[1.2.3]>", 0, 0, MAILADDR_E_BAD_LITERAL, NULL },
	{ "<a@[1.2.3.4>", 0, 0, MAILADDR_E_BAD_LITERAL, NULL },
	{ "<a@[]>", 0, 0, MAILADDR_E_BAD_LITERAL, NULL },
	{ "<a@[IPv6:1.2.3.4]>", 0, 0, MAILADDR_E_BAD_LITERAL, NULL },
	{ "<a@[IPv6:fe80::1%eth0]>", 0, 0, MAILADDR_E_BAD_LITERAL, NULL },
	{ "<a@[x400:c=us]>", 0, 0, MAILADDR_E_BAD_LITERAL, NULL },
	{ "<a@[1.2.3.4]x>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	/* UTF-8 (RFC 6531), with and without SMTPUTF8 */
	{ "<j\xc3\xb6" "e@example.org>", 0, 0, MAILADDR_E_UTF8_NOT_ALLOWED, NULL },
	{ "<j\xc3\xb6" "e@example.org>", 0, U, MAILADDR_OK, "j\xc3\xb6" "e@example.org" },
	{ "<a@b\xc3\xbc" "cher.example>", 0, 0, MAILADDR_E_UTF8_NOT_ALLOWED, NULL },
	{ "<a@B\xc3\xbc" "cher.Example>", 0, U, MAILADDR_OK, "a@b\xc3\xbc" "cher.example" },
	{ "<\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\xb9\xbf\xe5\x91\x8a>", 0, U,
	  MAILADDR_OK, "\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90.\xe5\xb9\xbf\xe5\x91\x8a" },
	{ "<\"j\xc3\xb6 e\"@x>", 0, U, MAILADDR_OK, "\"j\xc3\xb6 e\"@x" },
	{ "<\xc0\xaf@x>", 0, U, MAILADDR_E_BAD_UTF8, NULL },            /* overlong '/' */
	{ "<\xc0\xaf@x>", 0, 0, MAILADDR_E_BAD_UTF8, NULL },
	{ "<\xe0\x80\xaf@x>", 0, U, MAILADDR_E_BAD_UTF8, NULL },        /* overlong, 3 octets */
	{ "<\xed\xa0\x80@x>", 0, U, MAILADDR_E_BAD_UTF8, NULL },        /* surrogate U+D800 */
	{ "<\xf4\x90\x80\x80@x>", 0, U, MAILADDR_E_BAD_UTF8, NULL },    /* > U+10FFFF */
	{ "<\xe4\xbd@x>", 0, U, MAILADDR_E_BAD_UTF8, NULL },            /* truncated */
	{ "<\xff@x>", 0, U, MAILADDR_E_BAD_UTF8, NULL },
	{ "<a\xc2\x85" "b@x>", 0, U, MAILADDR_E_CONTROL, NULL },        /* C1 NEL */
	{ "<a@\xc0\xaf.example>", 0, U, MAILADDR_E_BAD_UTF8, NULL },
	/* source routes are parsed and discarded (RFC 5321 §3.3), % and ! stay */
	{ "<@local:user@remote.example>", 0, 0, MAILADDR_OK, "user@remote.example" },
	{ "<@a.example,@b.example:u@c.example>", 0, 0, MAILADDR_OK, "u@c.example" },
	{ "<@a.example:>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	{ "<@a.example,b.example:u@c>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	{ "<@[192.0.2.1]:u@c>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	{ "<@:u@c>", 0, 0, MAILADDR_E_SYNTAX, NULL },
	{ "<@-a:u@c>", 0, 0, MAILADDR_E_BAD_DOMAIN, NULL },
	{ "<user%remote.example@local>", 0, 0, MAILADDR_OK, "user%remote.example@local" },
	{ "<\"user@remote.example\"@local>", 0, 0, MAILADDR_OK, "\"user@remote.example\"@local" },
	{ "<remote.example!user@local>", 0, 0, MAILADDR_OK, "remote.example!user@local" },
	/* null path and <Postmaster> (RFC 5321 §4.1.1.2, §4.1.1.3) */
	{ "<>", 0, N, MAILADDR_OK, "" },
	{ "<>", 0, 0, MAILADDR_E_NULL_NOT_ALLOWED, NULL },
	{ "<Postmaster>", 0, P, MAILADDR_OK, "Postmaster" },
	{ "<POSTMASTER>", 0, P, MAILADDR_OK, "Postmaster" },
	{ "<Postmaster>", 0, 0, MAILADDR_E_NO_DOMAIN, NULL },
	{ "<Postmaster@Example.org>", 0, P, MAILADDR_OK, "Postmaster@example.org" },
};

/* Parses every prefix (each one byte longer: the input "arriving" byte by byte),
 * then the whole; returns the whole result in *a. */
static enum mailaddr_result parse_path_bytewise(const char *in, size_t len, unsigned flags,
    struct mailaddr *a, size_t *used_r)
{
	for (size_t i = 0; i < len; i++) {
		char *pre = dup_exact(in, i);
		size_t used;
		enum mailaddr_result r = mailaddr_parse_path(pre, i, flags, a, &used);
		assert_true(r != MAILADDR_OK || used <= i);
		free(pre);
	}
	char *copy = dup_exact(in, len);
	enum mailaddr_result r = mailaddr_parse_path(copy, len, flags, a, used_r);
	free(copy);
	return r;
}

static void address_table_gives_exact_results(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(addr_table) / sizeof(addr_table[0]); i++) {
		const struct addr_case *t = &addr_table[i];
		size_t len = t->len ? t->len : strlen(t->in), used;
		struct mailaddr a;
		enum mailaddr_result r = parse_path_bytewise(t->in, len, t->flags, &a, &used);
		if (r != t->want)
			print_error("case %zu \"%s\": got %d (%s), want %d\n", i, t->in, r,
			    mailaddr_strerror(r), t->want);
		assert_int_equal(r, t->want);
		if (r != MAILADDR_OK)
			continue;
		char s[MAILADDR_STRING_MAX];
		assert_int_equal(mailaddr_to_string(&a, s, sizeof(s)), 0);
		assert_string_equal(s, t->canon);
		assert_true(used <= len && t->in[used - 1] == '>');
	}
}

static void address_flags_are_recorded(void **state)
{
	(void)state;
	struct mailaddr a;
	size_t used;
	const char *s = "<@local:user@remote.example>";
	assert_int_equal(mailaddr_parse_path(s, strlen(s), 0, &a, &used), MAILADDR_OK);
	assert_true(a.had_route);
	assert_string_equal(a.local, "user");
	assert_string_equal(a.domain, "remote.example");
	s = "<\"user@remote.example\"@local>";
	assert_int_equal(mailaddr_parse_path(s, strlen(s), 0, &a, &used), MAILADDR_OK);
	assert_true(a.quoted);
	assert_false(a.had_route);
	assert_string_equal(a.local, "user@remote.example");
	s = "<\"a\\\"b\"@x>";
	assert_int_equal(mailaddr_parse_path(s, strlen(s), 0, &a, &used), MAILADDR_OK);
	assert_string_equal(a.local, "a\"b");
	s = "<a@[IPv6:::1]>";
	assert_int_equal(mailaddr_parse_path(s, strlen(s), 0, &a, &used), MAILADDR_OK);
	assert_true(a.domain_literal);
	assert_int_equal(a.literal_af, AF_INET6);
	assert_int_equal(a.literal_addr[15], 1);
	s = "<a@[192.0.2.1]>";
	assert_int_equal(mailaddr_parse_path(s, strlen(s), 0, &a, &used), MAILADDR_OK);
	assert_int_equal(a.literal_af, AF_INET);
	assert_memory_equal(a.literal_addr, "\xc0\x00\x02\x01", 4);
	s = "<j\xc3\xb6" "e@example.org>";
	assert_int_equal(mailaddr_parse_path(s, strlen(s), U, &a, &used), MAILADDR_OK);
	assert_true(a.utf8);
	s = "<>";
	assert_int_equal(mailaddr_parse_path(s, 2, N, &a, &used), MAILADDR_OK);
	assert_true(a.null_path);
	assert_int_equal(used, 2);
	s = "<postmaster> SIZE=1";
	assert_int_equal(mailaddr_parse_path(s, strlen(s), P, &a, &used), MAILADDR_OK);
	assert_true(a.postmaster);
	assert_int_equal(used, 12);
	/* on error the struct is cleared */
	s = "<a@b@c>";
	assert_int_equal(mailaddr_parse_path(s, strlen(s), 0, &a, &used), MAILADDR_E_SYNTAX);
	assert_string_equal(a.local, "");
	assert_int_equal(used, 0);
}

static void address_length_limits(void **state)
{
	(void)state;
	char in[700];
	struct mailaddr a;
	size_t used;
	/* 300-octet local part, then 65 and 64: RFC 5321 §4.5.3.1.1 */
	static const size_t lens[] = { 300, 65, 64 };
	for (size_t k = 0; k < 3; k++) {
		size_t n = lens[k];
		in[0] = '<';
		memset(in + 1, 'a', n);
		memcpy(in + 1 + n, "@x>", 3);
		enum mailaddr_result r = parse_path_bytewise(in, n + 4, 0, &a, &used);
		assert_int_equal(r, n > 64 ? MAILADDR_E_LOCAL_TOO_LONG : MAILADDR_OK);
	}
	/* quoted: 64 octets as received, quotes included */
	in[0] = '<';
	in[1] = '"';
	memset(in + 2, 'a', 62);
	memcpy(in + 64, "\"@x>", 4);
	assert_int_equal(parse_path_bytewise(in, 68, 0, &a, &used), MAILADDR_OK);
	assert_int_equal(strlen(a.local), 62);
	memset(in + 2, ' ', 63);
	memcpy(in + 65, "\"@x>", 4);
	assert_int_equal(parse_path_bytewise(in, 69, 0, &a, &used), MAILADDR_E_LOCAL_TOO_LONG);
	/* a 64-octet label (RFC 1035 §2.3.4) */
	memcpy(in, "<a@", 3);
	memset(in + 3, 'b', 64);
	memcpy(in + 67, ">", 1);
	assert_int_equal(parse_path_bytewise(in, 68, 0, &a, &used), MAILADDR_E_BAD_DOMAIN);
	/* 4 x 63 + 3 dots = 255 octets of domain: fine alone, too long as a path */
	char dom[300];
	for (size_t i = 0; i < 4; i++) {
		memset(dom + i * 64, 'd', 63);
		dom[i * 64 + 63] = '.';
	}
	dom[255] = '\0';
	int n = snprintf(in, sizeof(in), "a@%s", dom);
	assert_int_equal(mailaddr_parse(in, (size_t)n, 0, &a), MAILADDR_OK);
	assert_int_equal(strlen(a.domain), 255);
	n = snprintf(in, sizeof(in), "<a@%s>", dom);
	assert_int_equal(parse_path_bytewise(in, (size_t)n, 0, &a, &used), MAILADDR_E_PATH_TOO_LONG);
	n = snprintf(in, sizeof(in), "a@x%s", dom);
	assert_int_equal(mailaddr_parse(in, (size_t)n, 0, &a), MAILADDR_E_DOMAIN_TOO_LONG);
	/* "<" 64 "@" 63 "." 63 "." 61 ">" = 256 octets: the longest path; one more is too long */
	for (size_t last = 61; last <= 62; last++) {
		char *q = in;
		*q++ = '<';
		memset(q, 'a', 64), q += 64, *q++ = '@';
		memset(q, 'b', 63), q += 63, *q++ = '.';
		memset(q, 'c', 63), q += 63, *q++ = '.';
		memset(q, 'd', last), q += last, *q++ = '>';
		assert_int_equal(parse_path_bytewise(in, (size_t)(q - in), 0, &a, &used),
		    last == 61 ? MAILADDR_OK : MAILADDR_E_PATH_TOO_LONG);
	}
}

static void bare_mailbox_and_domain_parsers(void **state)
{
	(void)state;
	struct mailaddr a;
	const char *s = "Joe@Example.COM";
	assert_int_equal(mailaddr_parse(s, strlen(s), 0, &a), MAILADDR_OK);
	assert_string_equal(a.local, "Joe");
	assert_string_equal(a.domain, "example.com");
	s = "Joe@Example.COM>";
	assert_int_equal(mailaddr_parse(s, strlen(s), 0, &a), MAILADDR_E_SYNTAX);
	s = "<Joe@Example.COM>";
	assert_int_equal(mailaddr_parse(s, strlen(s), 0, &a), MAILADDR_E_SYNTAX);
	s = "@r.example:joe@x";
	assert_int_equal(mailaddr_parse(s, strlen(s), 0, &a), MAILADDR_OK);
	assert_true(a.had_route);
	/* the length bounds the input: no NUL needed, nothing read past it */
	char *p = dup_exact("joe@x.example", 13);
	assert_int_equal(mailaddr_parse(p, 13, 0, &a), MAILADDR_OK);
	assert_int_equal(mailaddr_parse(p, 5, 0, &a), MAILADDR_OK);
	assert_string_equal(a.domain, "x");
	free(p);

	s = "Mail.Example.ORG";
	assert_int_equal(mailaddr_parse_domain(s, strlen(s), 0, &a), MAILADDR_OK);
	assert_string_equal(a.domain, "mail.example.org");
	s = "[IPv6:2001:db8::5]";
	assert_int_equal(mailaddr_parse_domain(s, strlen(s), 0, &a), MAILADDR_OK);
	assert_true(a.domain_literal);
	s = "[1.2.3.4]x";
	assert_int_equal(mailaddr_parse_domain(s, strlen(s), 0, &a), MAILADDR_E_BAD_LITERAL);
	s = "my_host";
	assert_int_equal(mailaddr_parse_domain(s, strlen(s), 0, &a), MAILADDR_E_BAD_DOMAIN);
	s = "a@b";
	assert_int_equal(mailaddr_parse_domain(s, strlen(s), 0, &a), MAILADDR_E_BAD_DOMAIN);
	assert_int_equal(mailaddr_parse_domain("", 0, 0, &a), MAILADDR_E_NO_DOMAIN);
}

static void rendering_quotes_only_when_needed(void **state)
{
	(void)state;
	struct mailaddr a;
	size_t used;
	char s[MAILADDR_STRING_MAX];
	const char *in = "<\"a b\"@x.example>";
	assert_int_equal(mailaddr_parse_path(in, strlen(in), 0, &a, &used), MAILADDR_OK);
	assert_int_equal(mailaddr_local_to_string(&a, s, sizeof(s)), 0);
	assert_string_equal(s, "\"a b\"");
	assert_int_equal(mailaddr_to_string(&a, s, 12), -1);
	assert_string_equal(s, "");
	assert_int_equal(mailaddr_to_string(&a, s, 16), 0);
	assert_string_equal(s, "\"a b\"@x.example");
	assert_int_equal(mailaddr_to_string(&a, s, 15), -1);
	assert_int_equal(mailaddr_local_to_string(&a, s, 0), -1);
	/* the rendered form parses back to the same address */
	char back[MAILADDR_STRING_MAX + 2];
	int n = snprintf(back, sizeof(back), "<%s>", "\"a\\\\b\\\"c\"@x");
	struct mailaddr b;
	assert_int_equal(mailaddr_parse_path(back, (size_t)n, 0, &a, &used), MAILADDR_OK);
	assert_int_equal(mailaddr_to_string(&a, s, sizeof(s)), 0);
	n = snprintf(back, sizeof(back), "<%s>", s);
	assert_int_equal(mailaddr_parse_path(back, (size_t)n, 0, &b, &used), MAILADDR_OK);
	assert_string_equal(a.local, b.local);
	assert_string_equal(a.local, "a\\b\"c");
}

static void domain_comparison_ignores_ascii_case(void **state)
{
	(void)state;
	struct mailaddr a;
	size_t used;
	const char *in = "<Joe@Example.ORG>";
	assert_int_equal(mailaddr_parse_path(in, strlen(in), 0, &a, &used), MAILADDR_OK);
	assert_true(mailaddr_domain_is(&a, "example.org"));
	assert_true(mailaddr_domain_is(&a, "EXAMPLE.org"));
	assert_false(mailaddr_domain_is(&a, "example.or"));
	assert_false(mailaddr_domain_is(&a, "xexample.org"));
	assert_int_equal(mailaddr_parse_path("<>", 2, N, &a, &used), MAILADDR_OK);
	assert_false(mailaddr_domain_is(&a, ""));
	assert_string_equal(mailaddr_strerror(MAILADDR_E_LOCAL_TOO_LONG),
	    "Local part longer than 64 octets");
}

/* -------------------------------------------------------------- SMTP commands */

/* A one-line digest of everything the parser filled in, to compare two parses. */
static void digest(const struct smtp_cmd *c, enum smtp_parse_result r, char *out, size_t size)
{
	char addr[MAILADDR_STRING_MAX], auth[MAILADDR_STRING_MAX];
	mailaddr_to_string(&c->path, addr, sizeof(addr));
	mailaddr_to_string(&c->mail.auth, auth, sizeof(auth));
	int n = snprintf(out, size,
	    "r=%d v=%d arg=%s helo=%s path=%s/%d%d%d ae=%d ep=%s sp=%d size=%d/%llu body=%d "
	    "u=%d ret=%d envid=%s auth=%d/%d/%s notify=%u orcpt=%s;%s bdat=%llu/%d mech=%s ir=%s",
	    r, c->verb, c->arg ? c->arg : "-", c->helo.domain, addr, c->path.null_path,
	    c->path.postmaster, c->path.had_route, c->addr_err, c->err_param ? c->err_param : "-",
	    c->space_after_colon, c->mail.has_size, (unsigned long long)c->mail.size, c->mail.body,
	    c->mail.smtputf8, c->mail.ret, c->mail.envid, c->mail.has_auth, c->mail.auth_null, auth,
	    c->rcpt.notify, c->rcpt.orcpt_type, c->rcpt.orcpt_addr,
	    (unsigned long long)c->bdat_size, c->bdat_last, c->auth_mech,
	    c->auth_initial ? c->auth_initial : "-");
	for (size_t i = 0; i < c->nparams && n > 0 && (size_t)n < size; i++)
		n += snprintf(out + n, size - (size_t)n, " %s=%s", c->params[i].keyword,
		    c->params[i].value ? c->params[i].value : "-");
}

/* The line arrives one byte at a time through a CRLF-strict line buffer. */
static void parse_streamed(const char *line, size_t len, char *out, size_t size)
{
	struct buf in;
	struct smtp_cmd cmd;
	bool found = false;
	buf_init(&in, 1024);
	for (size_t i = 0; i < len + 2; i++) {
		assert_int_equal(buf_appendc(&in, i < len ? line[i] : "\r\n"[i - len]), 0);
		size_t linelen, used;
		int g = buf_getline_crlf(in.data, in.len, &linelen, &used);
		assert_int_not_equal(g, -1);
		if (g == 1) {
			digest(&cmd, smtp_parse_command(in.data, linelen, &cmd), out, size);
			buf_consume(&in, used);
			found = true;
		}
	}
	assert_true(found);
	buf_free(&in);
}

/* Parses `line` whole (exact-size copy), every prefix of it, and streamed byte by
 * byte; all must agree. */
static enum smtp_parse_result parse_len(const char *line, size_t len, struct smtp_cmd *cmd)
{
	for (size_t i = 0; i < len; i++) {
		char *pre = dup_exact(line, i);
		enum smtp_parse_result r = smtp_parse_command(pre, i, cmd);
		assert_true(r <= SMTP_E_TOO_BIG);
		free(pre);
	}
	char *copy = dup_exact(line, len);
	enum smtp_parse_result r = smtp_parse_command(copy, len, cmd);
	free(copy);
	if (memchr(line, '\n', len) == NULL && memchr(line, '\r', len) == NULL) {
		char whole[4096], streamed[4096];
		digest(cmd, r, whole, sizeof(whole));
		parse_streamed(line, len, streamed, sizeof(streamed));
		assert_string_equal(whole, streamed);
	}
	return r;
}

static enum smtp_parse_result parse(const char *line, struct smtp_cmd *cmd)
{
	return parse_len(line, strlen(line), cmd);
}

static void path_string(const struct smtp_cmd *cmd, char *s)
{
	assert_int_equal(mailaddr_to_string(&cmd->path, s, MAILADDR_STRING_MAX), 0);
}

static void verbs_are_case_insensitive(void **state)
{
	(void)state;
	static const struct { const char *line; enum smtp_verb verb; } t[] = {
		{ "ehlo mail.example", SMTP_VERB_EHLO }, { "HeLo mail.example", SMTP_VERB_HELO },
		{ "data", SMTP_VERB_DATA }, { "Rset", SMTP_VERB_RSET }, { "noop", SMTP_VERB_NOOP },
		{ "QUIT", SMTP_VERB_QUIT }, { "vrfy joe", SMTP_VERB_VRFY },
		{ "expn list", SMTP_VERB_EXPN }, { "help", SMTP_VERB_HELP },
		{ "StartTLS", SMTP_VERB_STARTTLS }, { "auth plain", SMTP_VERB_AUTH },
		{ "bdat 1", SMTP_VERB_BDAT }, { "mail from:<>", SMTP_VERB_MAIL },
		{ "rcpt to:<a@b>", SMTP_VERB_RCPT },
	};
	struct smtp_cmd cmd;
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		assert_int_equal(parse(t[i].line, &cmd), SMTP_PARSE_OK);
		assert_int_equal(cmd.verb, t[i].verb);
	}
	assert_int_equal(parse("rset", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.name, "RSET");
	assert_null(cmd.arg);
}

static void bad_lines_get_exact_errors(void **state)
{
	(void)state;
	struct smtp_cmd cmd;
	assert_int_equal(parse("", &cmd), SMTP_E_EMPTY);
	assert_int_equal(parse("   ", &cmd), SMTP_E_EMPTY);
	assert_int_equal(parse("FOO bar", &cmd), SMTP_E_UNKNOWN_COMMAND);
	assert_int_equal(parse("MAILFROM:<a@b>", &cmd), SMTP_E_UNKNOWN_COMMAND);
	assert_int_equal(parse(" MAIL FROM:<a@b>", &cmd), SMTP_E_UNKNOWN_COMMAND);
	/* a control byte in a MAIL/RCPT argument makes the address malformed
	 * (501 5.1.7 / 5.1.3); elsewhere the command line is bad (500 5.5.2) */
	assert_int_equal(parse_len("MAIL FROM:<a@b>\0", 16, &cmd), SMTP_E_BAD_SENDER);
	assert_int_equal(cmd.addr_err, MAILADDR_E_CONTROL);
	assert_int_equal(parse("NOOP \x1b[0m", &cmd), SMTP_E_CONTROL);
	assert_int_equal(parse("MA\x01L FROM:<a@b>", &cmd), SMTP_E_CONTROL);
	/* CRLF inside an argument is never a line end here */
	assert_int_equal(parse("MAIL FROM:<a@b>\r\nRCPT TO:<c@d>", &cmd), SMTP_E_BAD_SENDER);
	assert_int_equal(parse("RCPT TO:<a@b\n>", &cmd), SMTP_E_BAD_RECIPIENT);
	/* 510 octets without CRLF is the longest line (RFC 5321 §4.5.3.1.4) */
	char line[600] = "NOOP ";
	memset(line + 5, 'x', 505);
	assert_int_equal(parse_len(line, 510, &cmd), SMTP_PARSE_OK);
	assert_int_equal(parse_len(line, 511, &cmd), SMTP_E_TOO_LONG);
	/* arguments where none are allowed, or missing */
	assert_int_equal(parse("DATA now", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("QUIT please", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("STARTTLS x", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("RSET ", &cmd), SMTP_PARSE_OK);   /* trailing SP tolerated */
	assert_int_equal(parse("VRFY", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("EXPN ", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("VRFY  Joe Smith", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.arg, "Joe Smith");
	assert_int_equal(parse("NOOP", &cmd), SMTP_PARSE_OK);
	assert_int_equal(parse("HELP mail", &cmd), SMTP_PARSE_OK);
}

static void helo_takes_a_domain_or_literal(void **state)
{
	(void)state;
	struct smtp_cmd cmd;
	assert_int_equal(parse("EHLO Client.Example.ORG", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.helo.domain, "client.example.org");
	assert_string_equal(cmd.arg, "Client.Example.ORG");
	assert_int_equal(parse("EHLO [192.0.2.1]", &cmd), SMTP_PARSE_OK);
	assert_true(cmd.helo.domain_literal);
	assert_int_equal(parse("HELO [IPv6:2001:db8::1]", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.helo.domain, "[IPv6:2001:db8::1]");
	assert_int_equal(parse("EHLO", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("EHLO my_pc", &cmd), SMTP_E_BAD_HELO);
	assert_int_equal(cmd.addr_err, MAILADDR_E_BAD_DOMAIN);
	assert_int_equal(parse("EHLO a.example b", &cmd), SMTP_E_BAD_HELO);
	assert_int_equal(parse("EHLO [300.0.0.1]", &cmd), SMTP_E_BAD_HELO);
	assert_int_equal(cmd.addr_err, MAILADDR_E_BAD_LITERAL);
	assert_int_equal(parse("EHLO b\xc3\xbc" "cher.example", &cmd), SMTP_E_BAD_HELO);
}

static void mail_from_paths(void **state)
{
	(void)state;
	struct smtp_cmd cmd;
	char s[MAILADDR_STRING_MAX];
	assert_int_equal(parse("MAIL FROM:<Joe@Example.ORG>", &cmd), SMTP_PARSE_OK);
	path_string(&cmd, s);
	assert_string_equal(s, "Joe@example.org");
	assert_false(cmd.space_after_colon);
	assert_int_equal(parse("MAIL FROM: <joe@example.org>", &cmd), SMTP_PARSE_OK);
	assert_true(cmd.space_after_colon);
	assert_int_equal(parse("MAIL FROM:<>", &cmd), SMTP_PARSE_OK);
	assert_true(cmd.path.null_path);
	/* the address table's SMTP cases */
	assert_int_equal(parse("MAIL FROM:a@b", &cmd), SMTP_E_BAD_SENDER);
	assert_int_equal(cmd.addr_err, MAILADDR_E_BRACKETS);
	assert_int_equal(parse("MAIL FROM:<a@b@c>", &cmd), SMTP_E_BAD_SENDER);
	assert_int_equal(cmd.addr_err, MAILADDR_E_SYNTAX);
	assert_int_equal(parse("MAIL FROM:<a@b>x", &cmd), SMTP_E_BAD_SENDER);
	assert_int_equal(parse("MAIL FROM:", &cmd), SMTP_E_BAD_SENDER);
	assert_int_equal(parse("MAIL FROM:<@local:user@remote.example>", &cmd), SMTP_PARSE_OK);
	assert_true(cmd.path.had_route);
	assert_int_equal(parse("MAIL FROM:<user%remote.example@local>", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.path.local, "user%remote.example");
	assert_int_equal(parse("MAIL FROM:<\"user@remote.example\"@local>", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.path.local, "user@remote.example");
	assert_int_equal(parse("MAIL FROM:<remote.example!user@local>", &cmd), SMTP_PARSE_OK);
	assert_int_equal(parse("MAIL FROM:<\"john doe\"@example.org> SIZE=10", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.path.local, "john doe");
	assert_int_equal(cmd.mail.size, 10);
	assert_int_equal(parse("MAIL FROM:<a@[IPv6:::1]>", &cmd), SMTP_PARSE_OK);
	assert_int_equal(parse("MAIL FROM:<a@[300.1.1.1]>", &cmd), SMTP_E_BAD_SENDER);
	assert_int_equal(cmd.addr_err, MAILADDR_E_BAD_LITERAL);
	/* verb syntax */
	assert_int_equal(parse("MAIL", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("MAIL TO:<a@b>", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("MAIL FROM :<a@b>", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("MAIL FRO", &cmd), SMTP_E_SYNTAX);
	/* 300-octet local part in a 311-octet line */
	char line[400] = "MAIL FROM:<";
	memset(line + 11, 'a', 300);
	strcpy(line + 311, "@x>");
	assert_int_equal(parse(line, &cmd), SMTP_E_BAD_SENDER);
	assert_int_equal(cmd.addr_err, MAILADDR_E_LOCAL_TOO_LONG);
}

static void utf8_addresses_need_smtputf8(void **state)
{
	(void)state;
	struct smtp_cmd cmd;
	assert_int_equal(parse("MAIL FROM:<j\xc3\xb6" "e@example.org>", &cmd),
	    SMTP_E_UTF8_NOT_ALLOWED);
	assert_int_equal(cmd.addr_err, MAILADDR_E_UTF8_NOT_ALLOWED);
	assert_int_equal(parse("MAIL FROM:<j\xc3\xb6" "e@example.org> SMTPUTF8", &cmd),
	    SMTP_PARSE_OK);
	assert_true(cmd.path.utf8);
	assert_true(cmd.mail.smtputf8);
	assert_int_equal(parse("MAIL FROM:<\xc0\xaf@x> SMTPUTF8", &cmd), SMTP_E_BAD_SENDER);
	assert_int_equal(cmd.addr_err, MAILADDR_E_BAD_UTF8);
	assert_int_equal(parse("MAIL FROM:<a@x> SMTPUTF8=yes", &cmd), SMTP_E_PARAM_SYNTAX);
	/* RCPT: allowed by the parser, flagged for the session to check */
	assert_int_equal(parse("RCPT TO:<\xe7\x94\xa8@\xe4\xbe\x8b.example>", &cmd), SMTP_PARSE_OK);
	assert_true(cmd.path.utf8);
	assert_int_equal(parse("RCPT TO:<a\xc2\x85@x>", &cmd), SMTP_E_BAD_RECIPIENT);
	assert_int_equal(cmd.addr_err, MAILADDR_E_CONTROL);
	assert_int_equal(parse("MAIL FROM:<a@b> SMTPUTF8 AUTH=j+C3+B6e@x", &cmd), SMTP_PARSE_OK);
	assert_true(cmd.mail.auth.utf8);
	assert_int_equal(parse("MAIL FROM:<a@b> AUTH=j+C3+B6e@x", &cmd), SMTP_E_UTF8_NOT_ALLOWED);
}

static void rcpt_to_paths(void **state)
{
	(void)state;
	struct smtp_cmd cmd;
	char s[MAILADDR_STRING_MAX];
	assert_int_equal(parse("RCPT TO:<joe@example.org>", &cmd), SMTP_PARSE_OK);
	path_string(&cmd, s);
	assert_string_equal(s, "joe@example.org");
	assert_int_equal(parse("rcpt to: <joe@example.org>", &cmd), SMTP_PARSE_OK);
	assert_true(cmd.space_after_colon);
	assert_int_equal(parse("RCPT TO:<>", &cmd), SMTP_E_BAD_RECIPIENT);
	assert_int_equal(cmd.addr_err, MAILADDR_E_NULL_NOT_ALLOWED);
	assert_int_equal(parse("RCPT TO:<Postmaster>", &cmd), SMTP_PARSE_OK);
	assert_true(cmd.path.postmaster);
	path_string(&cmd, s);
	assert_string_equal(s, "Postmaster");
	assert_int_equal(parse("RCPT TO:<postmaster> NOTIFY=NEVER", &cmd), SMTP_PARSE_OK);
	assert_int_equal(parse("RCPT TO:<Postmaster@Example.org>", &cmd), SMTP_PARSE_OK);
	assert_false(cmd.path.postmaster);
	assert_int_equal(parse("RCPT TO:<joe>", &cmd), SMTP_E_BAD_RECIPIENT);
	assert_int_equal(cmd.addr_err, MAILADDR_E_NO_DOMAIN);
	assert_int_equal(parse("RCPT TO:joe@example.org", &cmd), SMTP_E_BAD_RECIPIENT);
	assert_int_equal(cmd.addr_err, MAILADDR_E_BRACKETS);
	assert_int_equal(parse("RCPT FROM:<a@b>", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("RCPT", &cmd), SMTP_E_SYNTAX);
}

static void mail_parameters_are_interpreted(void **state)
{
	(void)state;
	struct smtp_cmd cmd;
	assert_int_equal(parse("MAIL FROM:<a@b> SIZE=1000 BODY=8bitmime RET=hdrs "
	    "ENVID=QQ314159+2Bx AUTH=<>", &cmd), SMTP_PARSE_OK);
	assert_int_equal(cmd.nparams, 5);
	assert_string_equal(cmd.params[1].keyword, "BODY");
	assert_string_equal(cmd.params[1].value, "8bitmime");
	assert_true(cmd.mail.has_size);
	assert_int_equal(cmd.mail.size, 1000);
	assert_int_equal(cmd.mail.body, SMTP_BODY_8BITMIME);
	assert_int_equal(cmd.mail.ret, SMTP_RET_HDRS);
	assert_true(cmd.mail.has_envid);
	assert_string_equal(cmd.mail.envid, "QQ314159+x");
	assert_true(cmd.mail.has_auth);
	assert_true(cmd.mail.auth_null);
	assert_int_equal(parse("MAIL FROM:<a@b>  body=BINARYMIME  ret=FULL ", &cmd), SMTP_PARSE_OK);
	assert_int_equal(cmd.mail.body, SMTP_BODY_BINARYMIME);
	assert_int_equal(cmd.mail.ret, SMTP_RET_FULL);
	assert_int_equal(parse("MAIL FROM:<a@b> BODY=7BIT", &cmd), SMTP_PARSE_OK);
	assert_int_equal(cmd.mail.body, SMTP_BODY_7BIT);
	/* RFC 4954 §5 example: e=mc2@example.com */
	assert_int_equal(parse("MAIL FROM:<a@b> AUTH=e+3Dmc2@example.com", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.mail.auth.local, "e=mc2");
	assert_false(cmd.mail.auth_null);
	assert_int_equal(parse("MAIL FROM:<a@b> AUTH=nodomain", &cmd), SMTP_E_BAD_AUTH_PARAM);
	assert_string_equal(cmd.err_param, "AUTH");
	assert_int_equal(parse("MAIL FROM:<a@b> AUTH=a+00@x", &cmd), SMTP_E_BAD_AUTH_PARAM);
	assert_int_equal(parse("MAIL FROM:<a@b> BODY=9BIT", &cmd), SMTP_E_BAD_BODY);
	assert_string_equal(cmd.err_param, "BODY");
	assert_int_equal(parse("MAIL FROM:<a@b> BODY", &cmd), SMTP_E_BAD_BODY);
	assert_int_equal(parse("MAIL FROM:<a@b> RET=ALL", &cmd), SMTP_E_BAD_RET);
	assert_int_equal(parse("MAIL FROM:<a@b> ENVID=a+2", &cmd), SMTP_E_BAD_ENVID);
	assert_int_equal(parse("MAIL FROM:<a@b> ENVID=a+2b", &cmd), SMTP_E_BAD_ENVID);
	assert_int_equal(parse("MAIL FROM:<a@b> ENVID=a+0Ab", &cmd), SMTP_E_BAD_ENVID);
	char line[300] = "MAIL FROM:<a@b> ENVID=";
	memset(line + 22, 'e', 100);
	assert_int_equal(parse(line, &cmd), SMTP_PARSE_OK);
	line[122] = 'e';
	assert_int_equal(parse(line, &cmd), SMTP_E_BAD_ENVID);
}

static void size_parameter_rejects_overflow(void **state)
{
	(void)state;
	struct smtp_cmd cmd;
	assert_int_equal(parse("MAIL FROM:<a@b> SIZE=0", &cmd), SMTP_PARSE_OK);
	assert_int_equal(parse("MAIL FROM:<a@b> SIZE=18446744073709551615", &cmd), SMTP_PARSE_OK);
	assert_true(cmd.mail.size == UINT64_MAX);
	assert_int_equal(parse("MAIL FROM:<a@b> SIZE=18446744073709551616", &cmd),
	    SMTP_E_SIZE_OVERFLOW);
	assert_int_equal(parse("MAIL FROM:<a@b> SIZE=999999999999999999999", &cmd),
	    SMTP_E_SIZE_OVERFLOW);
	assert_string_equal(cmd.err_param, "SIZE");
	assert_int_equal(parse("MAIL FROM:<a@b> SIZE=12k", &cmd), SMTP_E_BAD_SIZE);
	assert_int_equal(parse("MAIL FROM:<a@b> SIZE=-1", &cmd), SMTP_E_BAD_SIZE);
	assert_int_equal(parse("MAIL FROM:<a@b> SIZE", &cmd), SMTP_E_BAD_SIZE);
	assert_int_equal(parse("MAIL FROM:<a@b> SIZE=", &cmd), SMTP_E_PARAM_SYNTAX);
	assert_int_equal(parse("RCPT TO:<a@b> SIZE=1", &cmd), SMTP_E_UNKNOWN_PARAM);
}

static void rcpt_parameters_are_interpreted(void **state)
{
	(void)state;
	struct smtp_cmd cmd;
	assert_int_equal(parse("RCPT TO:<a@b> NOTIFY=NEVER", &cmd), SMTP_PARSE_OK);
	assert_int_equal(cmd.rcpt.notify, SMTP_NOTIFY_NEVER);
	assert_int_equal(parse("RCPT TO:<a@b> NOTIFY=success,Failure,DELAY", &cmd), SMTP_PARSE_OK);
	assert_int_equal(cmd.rcpt.notify, SMTP_NOTIFY_SUCCESS | SMTP_NOTIFY_FAILURE | SMTP_NOTIFY_DELAY);
	assert_int_equal(parse("RCPT TO:<a@b> NOTIFY=DELAY", &cmd), SMTP_PARSE_OK);
	assert_int_equal(cmd.rcpt.notify, SMTP_NOTIFY_DELAY);
	assert_int_equal(parse("RCPT TO:<a@b> NOTIFY=NEVER,SUCCESS", &cmd), SMTP_E_BAD_NOTIFY);
	assert_int_equal(parse("RCPT TO:<a@b> NOTIFY=SUCCESS,NEVER", &cmd), SMTP_E_BAD_NOTIFY);
	assert_int_equal(parse("RCPT TO:<a@b> NOTIFY=SUCCESS,SUCCESS", &cmd), SMTP_E_BAD_NOTIFY);
	assert_int_equal(parse("RCPT TO:<a@b> NOTIFY=SUCCESS,,DELAY", &cmd), SMTP_E_BAD_NOTIFY);
	assert_int_equal(parse("RCPT TO:<a@b> NOTIFY=SUCCESS,", &cmd), SMTP_E_BAD_NOTIFY);
	assert_int_equal(parse("RCPT TO:<a@b> NOTIFY=ALWAYS", &cmd), SMTP_E_BAD_NOTIFY);
	assert_int_equal(parse("RCPT TO:<a@b> NOTIFY", &cmd), SMTP_E_BAD_NOTIFY);
	assert_string_equal(cmd.err_param, "NOTIFY");
	/* ORCPT xtext (RFC 3461 §4.2) */
	assert_int_equal(parse("RCPT TO:<a@b> ORCPT=rfc822;a+2Bb@x", &cmd), SMTP_PARSE_OK);
	assert_true(cmd.rcpt.has_orcpt);
	assert_string_equal(cmd.rcpt.orcpt_type, "rfc822");
	assert_string_equal(cmd.rcpt.orcpt_addr, "a+b@x");
	assert_int_equal(parse("RCPT TO:<a@b> ORCPT=rfc822;a+20b+3D@x", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.rcpt.orcpt_addr, "a b=@x");
	assert_int_equal(parse("RCPT TO:<a@b> ORCPT=rfc822;a+ZZ@x", &cmd), SMTP_E_BAD_ORCPT);
	assert_int_equal(parse("RCPT TO:<a@b> ORCPT=rfc822;a+2", &cmd), SMTP_E_BAD_ORCPT);
	assert_int_equal(parse("RCPT TO:<a@b> ORCPT=rfc822;a+0D+0A@x", &cmd), SMTP_E_BAD_ORCPT);
	assert_int_equal(parse("RCPT TO:<a@b> ORCPT=rfc822", &cmd), SMTP_E_BAD_ORCPT);
	assert_int_equal(parse("RCPT TO:<a@b> ORCPT=;a@b", &cmd), SMTP_E_BAD_ORCPT);
	assert_int_equal(parse("RCPT TO:<a@b> ORCPT=rfc822;", &cmd), SMTP_E_BAD_ORCPT);
	assert_int_equal(parse("RCPT TO:<a@b> ORCPT=rf(c;a@b", &cmd), SMTP_E_BAD_ORCPT);
	assert_int_equal(parse("RCPT TO:<a@b> ORCPT=rfc822;a@x NOTIFY=FAILURE", &cmd), SMTP_PARSE_OK);
	assert_int_equal(cmd.rcpt.notify, SMTP_NOTIFY_FAILURE);
	assert_int_equal(parse("MAIL FROM:<a@b> NOTIFY=NEVER", &cmd), SMTP_E_UNKNOWN_PARAM);
	assert_int_equal(parse("MAIL FROM:<a@b> ORCPT=rfc822;a@b", &cmd), SMTP_E_UNKNOWN_PARAM);
}

static void parameter_grammar_and_bounds(void **state)
{
	(void)state;
	struct smtp_cmd cmd;
	assert_int_equal(parse("MAIL FROM:<a@b> SIZE=1 size=2", &cmd), SMTP_E_DUPLICATE_PARAM);
	assert_string_equal(cmd.err_param, "SIZE");
	assert_int_equal(parse("RCPT TO:<a@b> NOTIFY=NEVER notify=NEVER", &cmd),
	    SMTP_E_DUPLICATE_PARAM);
	assert_int_equal(parse("MAIL FROM:<a@b> FOO=bar", &cmd), SMTP_E_UNKNOWN_PARAM);
	assert_string_equal(cmd.err_param, "FOO");
	assert_int_equal(parse("MAIL FROM:<a@b> X-PRIORITY", &cmd), SMTP_E_UNKNOWN_PARAM);
	assert_int_equal(parse("MAIL FROM:<a@b> -X=1", &cmd), SMTP_E_PARAM_SYNTAX);
	assert_int_equal(parse("MAIL FROM:<a@b> X_Y=1", &cmd), SMTP_E_PARAM_SYNTAX);
	assert_int_equal(parse("MAIL FROM:<a@b> X=a=b", &cmd), SMTP_E_PARAM_SYNTAX);
	assert_int_equal(parse("MAIL FROM:<a@b> =1", &cmd), SMTP_E_PARAM_SYNTAX);
	assert_int_equal(parse("MAIL FROM:<a@b> X=\xc3\xa9", &cmd), SMTP_E_PARAM_SYNTAX);
	/* 16 parameters fit, the 17th does not */
	char line[512] = "MAIL FROM:<a@b>";
	for (int i = 0; i < 16; i++)
		snprintf(line + strlen(line), sizeof(line) - strlen(line), " P%d=1", i);
	assert_int_equal(parse(line, &cmd), SMTP_E_UNKNOWN_PARAM);
	assert_int_equal(cmd.nparams, 16);
	strcat(line, " P16");
	assert_int_equal(parse(line, &cmd), SMTP_E_TOO_MANY_PARAMS);
}

static void bdat_sizes(void **state)
{
	(void)state;
	struct smtp_cmd cmd;
	assert_int_equal(parse("BDAT 1000", &cmd), SMTP_PARSE_OK);
	assert_int_equal(cmd.bdat_size, 1000);
	assert_false(cmd.bdat_last);
	assert_int_equal(parse("bdat 0 last", &cmd), SMTP_PARSE_OK);
	assert_int_equal(cmd.bdat_size, 0);
	assert_true(cmd.bdat_last);
	assert_int_equal(parse("BDAT 18446744073709551615 LAST", &cmd), SMTP_PARSE_OK);
	assert_true(cmd.bdat_size == UINT64_MAX);
	assert_int_equal(parse("BDAT 18446744073709551616", &cmd), SMTP_E_SIZE_OVERFLOW);
	assert_int_equal(parse("BDAT 99999999999999999999999 LAST", &cmd), SMTP_E_SIZE_OVERFLOW);
	assert_int_equal(parse("BDAT", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("BDAT -1", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("BDAT 1k", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("BDAT LAST", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("BDAT 10 FIRST", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("BDAT 10 LAST x", &cmd), SMTP_E_SYNTAX);
}

static void auth_mechanism_and_initial_response(void **state)
{
	(void)state;
	struct smtp_cmd cmd;
	assert_int_equal(parse("auth plain", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.auth_mech, "PLAIN");
	assert_null(cmd.auth_initial);
	assert_int_equal(parse("AUTH PLAIN AGpvZQBzZWNyZXQ=", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.auth_initial, "AGpvZQBzZWNyZXQ=");
	assert_int_equal(parse("AUTH EXTERNAL =", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.auth_initial, "");
	assert_int_equal(parse("AUTH SCRAM-SHA-256-PLUS", &cmd), SMTP_PARSE_OK);
	assert_string_equal(cmd.auth_mech, "SCRAM-SHA-256-PLUS");
	assert_int_equal(parse("AUTH", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("AUTH PL*IN", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("AUTH ABCDEFGHIJKLMNOPQRSTU", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("AUTH PLAIN abc", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("AUTH PLAIN ab=c", &cmd), SMTP_E_SYNTAX);
	assert_int_equal(parse("AUTH PLAIN abcd efgh", &cmd), SMTP_E_SYNTAX);
}

static void reply_hints_follow_the_rfcs(void **state)
{
	(void)state;
	static const struct { enum smtp_parse_result r; int code; const char *enh; } t[] = {
		{ SMTP_E_UNKNOWN_COMMAND, 500, "5.5.2" }, { SMTP_E_TOO_LONG, 500, "5.5.2" },
		{ SMTP_E_CONTROL, 500, "5.5.2" }, { SMTP_E_SYNTAX, 501, "5.5.4" },
		{ SMTP_E_PARAM_SYNTAX, 501, "5.5.4" }, { SMTP_E_BAD_RECIPIENT, 501, "5.1.3" },
		{ SMTP_E_BAD_SENDER, 501, "5.1.7" }, { SMTP_E_UNKNOWN_PARAM, 555, "5.5.4" },
		{ SMTP_E_SIZE_OVERFLOW, 552, "5.3.4" }, { SMTP_E_UTF8_NOT_ALLOWED, 553, "5.6.7" },
		{ SMTP_E_BAD_NOTIFY, 501, "5.5.4" }, { SMTP_E_BARE_EOL, 554, "5.6.0" },
		{ SMTP_E_LINE_TOO_LONG, 500, "5.5.2" }, { SMTP_E_TOO_BIG, 552, "5.3.4" },
	};
	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct smtp_reply_hint h = smtp_parse_reply(t[i].r);
		assert_int_equal(h.code, t[i].code);
		assert_string_equal(h.enhanced, t[i].enh);
		assert_non_null(h.text);
	}
	for (int r = SMTP_PARSE_OK; r <= SMTP_E_TOO_BIG; r++)
		assert_true(smtp_parse_reply((enum smtp_parse_result)r).code != 451);
	assert_int_equal(smtp_parse_reply((enum smtp_parse_result)999).code, 451);
	assert_string_equal(smtp_parse_strerror(SMTP_E_UNKNOWN_PARAM), "Unsupported parameter");
}

/* ----------------------------------------------------------------- DATA stream */

struct data_run {
	struct buf out;
	int done;
	size_t consumed;
	unsigned flags;
	uint64_t size, bytes_in;
	enum smtp_parse_result result;
};

static void data_finish(struct data_run *d, const struct smtp_data_parser *p)
{
	d->flags = smtp_data_flags(p);
	d->size = smtp_data_size(p);
	d->bytes_in = smtp_data_bytes_in(p);
	d->result = smtp_data_result(p);
}

/* Feeds in[0..len) in chunks cut at the given positions (ascending, < len). */
static void data_feed_cuts(const char *in, size_t len, uint64_t max, const size_t *cuts,
    size_t ncuts, struct data_run *d)
{
	struct smtp_data_parser p;
	buf_init(&d->out, 1 << 20);
	smtp_data_init(&p, &d->out, max);
	size_t pos = 0;
	d->done = 0;
	d->consumed = 0;
	for (size_t c = 0; c <= ncuts && !d->done; c++) {
		size_t end = c < ncuts ? cuts[c] : len, used;
		char *chunk = dup_exact(in + pos, end - pos);
		d->done = smtp_data_feed(&p, chunk, end - pos, &used);
		free(chunk);
		assert_true(used <= end - pos);
		assert_true(d->done || used == end - pos);
		d->consumed += used;
		pos = end;
	}
	data_finish(d, &p);
}

static void assert_same_run(const struct data_run *a, const struct data_run *b)
{
	assert_int_equal(a->done, b->done);
	assert_int_equal(a->consumed, b->consumed);
	assert_int_equal(a->flags, b->flags);
	assert_int_equal(a->size, b->size);
	assert_int_equal(a->bytes_in, b->bytes_in);
	assert_int_equal(a->result, b->result);
	assert_int_equal(a->out.len, b->out.len);
	if (a->out.len > 0)
		assert_memory_equal(a->out.data, b->out.data, a->out.len);
}

/* Whole, split at every position, and one byte at a time: identical results.
 * Returns the whole run (caller frees d->out). */
static void data_all_ways(const char *in, size_t len, uint64_t max, struct data_run *whole)
{
	data_feed_cuts(in, len, max, NULL, 0, whole);
	for (size_t k = 0; k < len; k++) {
		struct data_run split;
		data_feed_cuts(in, len, max, &k, 1, &split);
		assert_same_run(whole, &split);
		buf_free(&split.out);
	}
	size_t *cuts = malloc((len > 0 ? len : 1) * sizeof(*cuts));
	assert_non_null(cuts);
	for (size_t k = 1; k < len; k++)
		cuts[k - 1] = k;
	struct data_run bytes;
	data_feed_cuts(in, len, max, cuts, len > 0 ? len - 1 : 0, &bytes);
	assert_same_run(whole, &bytes);
	buf_free(&bytes.out);
	free(cuts);
}

/* Runs `in` all ways and checks the outcome. */
static void expect_data(const char *in, size_t len, uint64_t max, const char *msg, size_t msglen,
    enum smtp_parse_result result, size_t consumed)
{
	struct data_run d;
	data_all_ways(in, len, max, &d);
	assert_int_equal(d.done, 1);
	assert_int_equal(d.consumed, consumed);
	assert_int_equal(d.bytes_in, consumed);
	assert_int_equal(d.result, result);
	if (msg != NULL) {
		assert_int_equal(d.out.len, msglen);
		assert_memory_equal(d.out.data != NULL ? d.out.data : "", msg, msglen);
	}
	buf_free(&d.out);
}

#define S(x) x, sizeof(x) - 1

static void data_normal_message(void **state)
{
	(void)state;
	expect_data(S("Subject: hi\r\n\r\nHello\r\n.\r\n"), 1000,
	    S("Subject: hi\r\n\r\nHello\r\n"), SMTP_PARSE_OK, 25);
}

static void data_dots_are_unstuffed(void **state)
{
	(void)state;
	expect_data(S("a\r\n..b\r\n...\r\n..\r\n.x\r\n.\r\n"), 1000,
	    S("a\r\n.b\r\n..\r\n.\r\nx\r\n"), SMTP_PARSE_OK, 24);
	/* a dot inside a line is data */
	expect_data(S("a.\r\nb.c\r\n.\r\n"), 1000, S("a.\r\nb.c\r\n"), SMTP_PARSE_OK, 12);
}

static void data_empty_message(void **state)
{
	(void)state;
	expect_data(S(".\r\n"), 1000, S(""), SMTP_PARSE_OK, 3);
	expect_data(S(".\r\nQUIT\r\n"), 1000, S(""), SMTP_PARSE_OK, 3);
	expect_data(S("\r\n.\r\n"), 1000, S("\r\n"), SMTP_PARSE_OK, 5);
}

static void data_leaves_pipelined_commands(void **state)
{
	(void)state;
	const char in[] = "Hi\r\n.\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n";
	expect_data(in, sizeof(in) - 1, 1000, S("Hi\r\n"), SMTP_PARSE_OK, 7);
	/* after done, nothing more is consumed */
	struct buf out;
	struct smtp_data_parser p;
	size_t used;
	buf_init(&out, 100);
	smtp_data_init(&p, &out, 100);
	assert_int_equal(smtp_data_feed(&p, in, sizeof(in) - 1, &used), 1);
	assert_int_equal(used, 7);
	assert_int_equal(smtp_data_feed(&p, in + 7, sizeof(in) - 8, &used), 1);
	assert_int_equal(used, 0);
	assert_int_equal(smtp_data_bytes_in(&p), 7);
	buf_free(&out);
}

/* SMTP smuggling (CVE-2023-51764 class): only CRLF.CRLF ends the data. */
static void data_smuggling_sequences_are_not_the_end(void **state)
{
	(void)state;
	static const char *const seqs[] = { "\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r", "\r.\r\n",
	    "\n.\r", ".\n", "\r\n.\r\r\n" };
	for (size_t i = 0; i < sizeof(seqs) / sizeof(seqs[0]); i++) {
		char in[200];
		int n = snprintf(in, sizeof(in), "a%sMAIL FROM:<evil@x>\r\nDATA\r\n.\r\n", seqs[i]);
		struct data_run d;
		data_all_ways(in, (size_t)n, 1000, &d);
		assert_int_equal(d.done, 1);
		assert_int_equal(d.consumed, (size_t)n);    /* read to the real end */
		assert_int_equal(d.result, SMTP_E_BARE_EOL);
		assert_true(d.flags & (SMTP_DATA_F_BARE_CR | SMTP_DATA_F_BARE_LF));
		buf_free(&d.out);
		/* and alone, without a real end, they never finish the data */
		struct smtp_data_parser p;
		struct buf out;
		size_t used;
		buf_init(&out, 100);
		smtp_data_init(&p, &out, 100);
		n = snprintf(in, sizeof(in), "a%s", seqs[i]);
		assert_int_equal(smtp_data_feed(&p, in, (size_t)n, &used), 0);
		assert_int_equal(used, (size_t)n);
		buf_free(&out);
	}
	expect_data(S("a\r\n\n.\nb\r\n.\r\n"), 1000, S("a\r\n\n.\nb\r\n"), SMTP_E_BARE_EOL, 12);
	expect_data(S("a\r\n.\nb\r\n.\r\n"), 1000, S("a\r\n\nb\r\n"), SMTP_E_BARE_EOL, 11);
	struct data_run d;
	data_all_ways(S("x\ry\r\n.\r\n"), 1000, &d);
	assert_int_equal(d.flags, SMTP_DATA_F_BARE_CR);
	buf_free(&d.out);
	data_all_ways(S("x\ny\r\n.\r\n"), 1000, &d);
	assert_int_equal(d.flags, SMTP_DATA_F_BARE_LF);
	buf_free(&d.out);
}

static void data_line_length_limit(void **state)
{
	(void)state;
	/* RFC 5321 §4.5.3.1.6: 1000 octets incl. CRLF pass, 1001 do not */
	char in[1200];
	memset(in, 'x', 998);
	memcpy(in + 998, "\r\n.\r\n", 5);
	expect_data(in, 1003, 2000, in, 1000, SMTP_PARSE_OK, 1003);
	memset(in, 'x', 999);
	memcpy(in + 999, "\r\n.\r\n", 5);
	expect_data(in, 1004, 2000, in, 1001, SMTP_E_LINE_TOO_LONG, 1004);
	/* the stuffing dot does not count */
	in[0] = '.';
	in[1] = '.';
	memset(in + 2, 'x', 997);
	memcpy(in + 999, "\r\n.\r\n", 5);
	expect_data(in, 1004, 2000, in + 1, 1000, SMTP_PARSE_OK, 1004);
	/* the session carries on after a long line: the end is still found */
	memset(in, 'y', 1100);
	memcpy(in + 1100, "\r\nok\r\n.\r\nQUIT", 13);
	struct data_run d;
	data_all_ways(in, 1113, 5000, &d);
	assert_int_equal(d.consumed, 1109);
	assert_int_equal(d.flags, SMTP_DATA_F_LINE_TOO_LONG);
	buf_free(&d.out);
}

static void data_size_limit(void **state)
{
	(void)state;
	/* exactly at the limit is fine */
	expect_data(S("0123456\r\n.\r\n"), 9, S("0123456\r\n"), SMTP_PARSE_OK, 12);
	/* over it: flagged, storing stops, reading goes on to the end */
	struct data_run d;
	data_all_ways(S("0123456789\r\nabc\r\n.\r\nQUIT\r\n"), 9, &d);
	assert_int_equal(d.done, 1);
	assert_int_equal(d.consumed, 20);
	assert_int_equal(d.result, SMTP_E_TOO_BIG);
	assert_int_equal(d.flags, SMTP_DATA_F_TOO_BIG);
	assert_int_equal(d.size, 17);
	assert_int_equal(d.out.len, 0);       /* what was stored is dropped */
	buf_free(&d.out);
	/* the caller's buf refusing more counts the same */
	struct buf out;
	struct smtp_data_parser p;
	size_t used;
	buf_init(&out, 4);
	smtp_data_init(&p, &out, 1000);
	assert_int_equal(smtp_data_feed(&p, S("hello\r\n.\r\n"), &used), 1);
	assert_int_equal(smtp_data_result(&p), SMTP_E_TOO_BIG);
	buf_free(&out);
	/* precedence: bare line ends win over size, size over line length */
	data_all_ways(S("0123456789\nabc\r\n.\r\n"), 5, &d);
	assert_int_equal(d.result, SMTP_E_BARE_EOL);
	assert_int_equal(d.flags, SMTP_DATA_F_BARE_LF | SMTP_DATA_F_TOO_BIG);
	buf_free(&d.out);
}

static void data_appends_after_existing_content(void **state)
{
	(void)state;
	struct buf out;
	struct smtp_data_parser p;
	size_t used;
	buf_init(&out, 1000);
	assert_int_equal(buf_appends(&out, "Received: x\r\n"), 0);
	smtp_data_init(&p, &out, 7);       /* the limit counts message octets only */
	assert_int_equal(smtp_data_feed(&p, S("Hello\r\n.\r\n"), &used), 1);
	assert_int_equal(smtp_data_result(&p), SMTP_PARSE_OK);
	assert_string_equal(out.data, "Received: x\r\nHello\r\n");
	assert_int_equal(smtp_data_size(&p), 7);
	buf_free(&out);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(address_table_gives_exact_results),
		cmocka_unit_test(address_flags_are_recorded),
		cmocka_unit_test(address_length_limits),
		cmocka_unit_test(bare_mailbox_and_domain_parsers),
		cmocka_unit_test(rendering_quotes_only_when_needed),
		cmocka_unit_test(domain_comparison_ignores_ascii_case),
		cmocka_unit_test(verbs_are_case_insensitive),
		cmocka_unit_test(bad_lines_get_exact_errors),
		cmocka_unit_test(helo_takes_a_domain_or_literal),
		cmocka_unit_test(mail_from_paths),
		cmocka_unit_test(utf8_addresses_need_smtputf8),
		cmocka_unit_test(rcpt_to_paths),
		cmocka_unit_test(mail_parameters_are_interpreted),
		cmocka_unit_test(size_parameter_rejects_overflow),
		cmocka_unit_test(rcpt_parameters_are_interpreted),
		cmocka_unit_test(parameter_grammar_and_bounds),
		cmocka_unit_test(bdat_sizes),
		cmocka_unit_test(auth_mechanism_and_initial_response),
		cmocka_unit_test(reply_hints_follow_the_rfcs),
		cmocka_unit_test(data_normal_message),
		cmocka_unit_test(data_dots_are_unstuffed),
		cmocka_unit_test(data_empty_message),
		cmocka_unit_test(data_leaves_pipelined_commands),
		cmocka_unit_test(data_smuggling_sequences_are_not_the_end),
		cmocka_unit_test(data_line_length_limit),
		cmocka_unit_test(data_size_limit),
		cmocka_unit_test(data_appends_after_existing_content),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
