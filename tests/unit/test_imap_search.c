/* test_imap_search.c: SEARCH programs: parsing from the real command parser's tree
 * (errors included), evaluation truth tables, the search.json expectations of
 * ../shared/mime-corpus (Dovecot's replies over the 25 corpus messages), and the
 * SEARCH / ESEARCH reply formats. */
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/buf.h"
#include "protocols/imap_parse.h"
#include "protocols/imap_search.h"
#include "protocols/mime.h"
#include "store/store.h"
#include "tests/unit/corpus.h"

/* ------------------------------------------------------------ helpers */

/* Parses one whole command (literals included, every "+ Ready" implied). */
static void parse_line(struct imap_parser *p, const char *in)
{
	struct imap_parse_limits lim;
	imap_parse_limits_default(&lim);
	imap_parser_init(p, &lim);
	size_t len = strlen(in), i = 0;
	enum imap_parse_status st = IMAP_PARSE_MORE;
	while (i < len) {
		size_t used = 0;
		st = imap_parser_feed(p, in + i, len - i, &used);
		i += used;
		if (st != IMAP_PARSE_CONTINUE && st != IMAP_PARSE_MORE)
			break;
	}
	if (st != IMAP_PARSE_DONE)
		fail_msg("command not parsed: %s (%s)", in, imap_parse_strerror(imap_parser_error(p)));
}

struct prog {
	struct imap_parser p;
	struct imap_search *s;
	struct imap_search_opts o;
	const char *err;
	int r;
};

/* "a SEARCH <args>\r\n" parsed into pr; returns imap_search_parse's result. */
static int prog_parse(struct prog *pr, const char *args)
{
	char line[8192];
	snprintf(line, sizeof(line), "a SEARCH%s%s\r\n", args[0] != '\0' ? " " : "", args);
	parse_line(&pr->p, line);
	memset(&pr->o, 0, sizeof(pr->o));
	pr->r = imap_search_parse(&pr->p, imap_arg_first(&pr->p), &pr->s, &pr->o, &pr->err);
	imap_parser_free(&pr->p);      /* the program must not point into the parser */
	if (pr->r != IMAP_SEARCH_OK)
		assert_null(pr->s);
	return pr->r;
}

static void expect_error(const char *args, int code, const char *msg)
{
	struct prog pr;
	assert_int_equal(prog_parse(&pr, args), code);
	assert_non_null(pr.err);
	if (msg != NULL)
		assert_string_equal(pr.err, msg);
}

/* ------------------------------------------------------------ a small folder */

#define DAY 86400
/* 2026-03-02 00:00:00 UTC */
#define T0 ((time_t)1772409600)

static const char *const kwnames[] = { "$Forwarded", "Work", "$Junk" };

static const char msg_a[] =
    "From: Alice <alice@example.org>\r\n"
    "To: Bob <bob@example.net>, carol@example.net\r\n"
    "Subject: =?UTF-8?Q?=C3=9Cber_caf=C3=A9?=\r\n"
    "Date: Tue, 03 Mar 2026 23:30:00 -0800\r\n"
    "X-Empty:\r\n"
    "Content-Type: text/plain; charset=iso-8859-1\r\n"
    "Content-Transfer-Encoding: quoted-printable\r\n"
    "\r\n"
    "Stra=DFe und =C4pfel, zebra=\r\n"
    "finch.\r\n";

static const char msg_b[] =
    "From: =?ISO-8859-1?Q?J=FCrgen?= <j@example.de>\r\n"
    "Subject: report\r\n"
    "Date: 4 Mar 26 08:00 GMT\r\n"
    "Content-Type: multipart/mixed; boundary=XX\r\n"
    "\r\n"
    "--XX\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "Content-Transfer-Encoding: base64\r\n"
    "\r\n"
    "zpHOu8+GzrEgTU9TQ09X\r\n"              /* "Αλφα MOSCOW" */
    "--XX\r\n"
    "Content-Type: application/octet-stream\r\n"
    "\r\n"
    "hiddenword\r\n"
    "--XX\r\n"
    "Content-Type: message/rfc822\r\n"
    "\r\n"
    "Subject: inner subject\r\n"
    "\r\n"
    "inner body text\r\n"
    "--XX--\r\n";

static const char msg_c[] =
    "Subject: no date, no from\r\n"
    "\r\n"
    "plain\r\n";

struct folder {
	struct imap_search_msg m[3];
	struct mime_message *mime[3];
	struct imap_search_ctx ctx;
	uint32_t saved[2];
};

static void folder_init(struct folder *f)
{
	memset(f, 0, sizeof(*f));
	const char *data[3] = { msg_a, msg_b, msg_c };
	for (int i = 0; i < 3; i++) {
		f->m[i].seq = (uint32_t)i + 1;
		f->m[i].data = data[i];
		f->m[i].len = strlen(data[i]);
		f->m[i].size = f->m[i].len;
		f->mime[i] = mime_parse(data[i], f->m[i].len, NULL);
		f->m[i].mime = i == 2 ? NULL : f->mime[i];   /* c: parsed by match itself */
	}
	f->m[0].uid = 10;
	f->m[1].uid = 20;
	f->m[2].uid = 35;
	f->m[0].flags = MF_SEEN | MF_REPLIED;
	f->m[1].flags = MF_FLAGGED | MF_TRASHED;
	f->m[2].flags = MF_DRAFT;
	f->m[1].recent = f->m[2].recent = true;
	f->m[0].keywords = 1u << 1;                     /* Work */
	f->m[1].keywords = (1u << 0) | (1u << 1);       /* $Forwarded Work */
	f->m[0].internal_date = T0 + 3 * DAY + 23 * 3600 + 59 * 60;   /* 5 Mar 23:59 UTC */
	f->m[1].internal_date = T0 + 4 * DAY;                         /* 6 Mar 00:00 UTC */
	f->m[2].internal_date = T0 + 10 * DAY;                        /* 12 Mar */
	f->ctx.max_seq = 3;
	f->ctx.max_uid = 35;
	f->ctx.kwnames = kwnames;
	f->ctx.nkw = 3;
	f->saved[0] = 10;
	f->saved[1] = 35;
	f->ctx.saved = f->saved;
	f->ctx.nsaved = 2;
}

static void folder_free(struct folder *f)
{
	for (int i = 0; i < 3; i++)
		mime_message_free(&f->mime[i]);
}

/* Matching sequence numbers of SEARCH args as "1 3" ("" for none). */
static void expect_match(struct folder *f, const char *args, const char *want)
{
	struct prog pr;
	if (prog_parse(&pr, args) != IMAP_SEARCH_OK)
		fail_msg("SEARCH %s: %s", args, pr.err);
	char got[64] = "";
	for (int i = 0; i < 3; i++) {
		if (imap_search_match(pr.s, &f->ctx, &f->m[i]))
			snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%u",
			    got[0] != '\0' ? " " : "", (unsigned)f->m[i].seq);
	}
	if (strcmp(got, want) != 0)
		fail_msg("SEARCH %s: got \"%s\", want \"%s\"", args, got, want);
	imap_search_free(&pr.s);
	assert_null(pr.s);
}

/* ------------------------------------------------------------ truth tables */

static void test_flags(void **state)
{
	struct folder f;
	folder_init(&f);
	expect_match(&f, "ALL", "1 2 3");
	expect_match(&f, "SEEN", "1");
	expect_match(&f, "UNSEEN", "2 3");
	expect_match(&f, "ANSWERED", "1");
	expect_match(&f, "UNANSWERED", "2 3");
	expect_match(&f, "FLAGGED", "2");
	expect_match(&f, "UNFLAGGED", "1 3");
	expect_match(&f, "DELETED", "2");
	expect_match(&f, "UNDELETED", "1 3");
	expect_match(&f, "DRAFT", "3");
	expect_match(&f, "UNDRAFT", "1 2");
	expect_match(&f, "RECENT", "2 3");
	expect_match(&f, "OLD", "1");
	expect_match(&f, "NEW", "2 3");
	f.m[2].flags |= MF_SEEN;
	expect_match(&f, "NEW", "2");     /* RECENT and UNSEEN */
	expect_match(&f, "seen unflagged", "1 3");
	expect_match(&f, "KEYWORD Work", "1 2");
	expect_match(&f, "KEYWORD $forwarded", "2");   /* flag names are case-insensitive */
	expect_match(&f, "UNKEYWORD Work", "3");
	expect_match(&f, "KEYWORD $Junk", "");
	expect_match(&f, "KEYWORD Unknown", "");
	expect_match(&f, "UNKEYWORD Unknown", "1 2 3");
	folder_free(&f);
}

static void test_boolean(void **state)
{
	struct folder f;
	folder_init(&f);
	expect_match(&f, "OR SEEN DRAFT", "1 3");
	expect_match(&f, "NOT SEEN", "2 3");
	expect_match(&f, "NOT NOT SEEN", "1");
	expect_match(&f, "OR (SEEN ANSWERED) (FLAGGED DELETED)", "1 2");
	expect_match(&f, "(SEEN FLAGGED)", "");
	expect_match(&f, "OR OR SEEN FLAGGED DRAFT", "1 2 3");
	expect_match(&f, "NOT (OR SEEN DRAFT)", "2");
	expect_match(&f, "ALL NOT DELETED", "1 3");
	expect_match(&f, "((((SEEN))))", "1");
	folder_free(&f);
}

static void test_sets(void **state)
{
	struct folder f;
	folder_init(&f);
	expect_match(&f, "1", "1");
	expect_match(&f, "2:*", "2 3");
	expect_match(&f, "*", "3");
	expect_match(&f, "*:2", "2 3");
	expect_match(&f, "1,3", "1 3");
	expect_match(&f, "4:10", "");
	expect_match(&f, "3:4294967295", "3");
	expect_match(&f, "UID 10", "1");
	expect_match(&f, "UID 11:20", "2");
	expect_match(&f, "UID *", "3");
	expect_match(&f, "UID 30:*", "3");
	expect_match(&f, "UID 36:*", "3");   /* n:* with n past the highest: * to n (RFC 9051 §9) */
	expect_match(&f, "UID 1:9", "");
	expect_match(&f, "$", "1 3");        /* the saved result (UIDs 10, 35) */
	expect_match(&f, "UID $", "1 3");
	expect_match(&f, "NOT $", "2");
	f.ctx.saved = NULL;
	f.ctx.nsaved = 0;
	expect_match(&f, "$", "");           /* nothing saved: the empty set (RFC 5182) */
	/* "*" in an empty mailbox matches nothing */
	f.ctx.max_seq = 0;
	f.ctx.max_uid = 0;
	expect_match(&f, "1:4294967295,*:1", "");
	folder_free(&f);
}

static void test_sizes_and_dates(void **state)
{
	struct folder f;
	folder_init(&f);
	char args[64];
	snprintf(args, sizeof(args), "LARGER %zu", f.m[2].len);
	expect_match(&f, args, "1 2");
	snprintf(args, sizeof(args), "SMALLER %zu", f.m[2].len);
	expect_match(&f, args, "");
	snprintf(args, sizeof(args), "SMALLER %zu", f.m[2].len + 1);
	expect_match(&f, args, "3");
	expect_match(&f, "LARGER 0", "1 2 3");
	/* internal dates: the day in UTC, time disregarded */
	expect_match(&f, "ON 5-Mar-2026", "1");
	expect_match(&f, "ON 06-mar-2026", "2");
	expect_match(&f, "BEFORE 6-Mar-2026", "1");
	expect_match(&f, "SINCE 6-Mar-2026", "2 3");
	expect_match(&f, "SINCE \"12-Mar-2026\"", "3");   /* date may be quoted */
	expect_match(&f, "BEFORE 1-Jan-2026", "");
	expect_match(&f, "SINCE 1-Jan-1970", "1 2 3");
	/* Date: header: the day as written, its zone disregarded; c has none */
	expect_match(&f, "SENTON 3-Mar-2026", "1");
	expect_match(&f, "SENTON 4-Mar-2026", "2");       /* "4 Mar 26": two-digit year */
	expect_match(&f, "SENTBEFORE 4-Mar-2026", "1");
	expect_match(&f, "SENTSINCE 4-Mar-2026", "2");
	expect_match(&f, "NOT SENTSINCE 1-Jan-2000", "3");
	folder_free(&f);
}

static void test_strings(void **state)
{
	struct folder f;
	folder_init(&f);
	expect_match(&f, "FROM alice", "1");
	expect_match(&f, "FROM ALICE@EXAMPLE", "1");
	expect_match(&f, "FROM \"J\xc3\xbcrgen\"", "2");          /* RFC 2047 decoded */
	expect_match(&f, "FROM \"J\xc3\x9cRGEN\"", "2");          /* Ü folds to ü */
	expect_match(&f, "TO carol", "1");
	expect_match(&f, "CC carol", "");
	expect_match(&f, "BCC x", "");
	expect_match(&f, "SUBJECT \"\xc3\xbc" "ber CAF\xc3\x89\"", "1");
	expect_match(&f, "SUBJECT \"inner\"", "");                /* attached message: not the header */
	expect_match(&f, "SUBJECT {6}\r\nreport", "2");           /* a literal argument */
	expect_match(&f, "HEADER X-Empty \"\"", "1");             /* empty string: field present */
	expect_match(&f, "HEADER subject \"\"", "1 2 3");
	expect_match(&f, "HEADER Content-Type MULTIPART", "2");
	expect_match(&f, "HEADER X-Missing \"\"", "");
	expect_match(&f, "FROM \"\"", "1 2");
	/* bodies: transfer-decoded, converted to UTF-8, only text parts */
	expect_match(&f, "BODY \"stra\xc3\x9f" "e\"", "1");       /* QP + ISO-8859-1 */
	expect_match(&f, "BODY \"\xc3\xa4pfel\"", "1");           /* Ä folds to ä */
	expect_match(&f, "BODY zebrafinch", "1");                 /* soft line break */
	expect_match(&f, "BODY \"\xce\xb1\xce\xbb\xcf\x86\xce\xb1 moscow\"", "2");   /* base64, Greek */
	expect_match(&f, "BODY hiddenword", "");                  /* application/octet-stream */
	expect_match(&f, "BODY \"inner body\"", "2");             /* text inside message/rfc822 */
	expect_match(&f, "BODY alice", "");                       /* BODY is not the header */
	expect_match(&f, "TEXT alice", "1");                      /* TEXT is */
	expect_match(&f, "TEXT \"inner subject\"", "2");          /* and attached headers */
	expect_match(&f, "TEXT plain", "1 3");                    /* a's Content-Type: text/plain */
	expect_match(&f, "BODY plain", "3");
	expect_match(&f, "BODY \"\"", "1 2 3");
	expect_match(&f, "OR BODY zebrafinch FROM \"J\xc3\xbcrgen\"", "1 2");
	/* without text the keys cannot match */
	f.m[0].data = NULL;
	f.m[0].mime = NULL;
	expect_match(&f, "FROM alice", "");
	folder_free(&f);
}

/* ------------------------------------------------------------ parsing */

static void test_parse_options(void **state)
{
	struct prog pr;
	assert_int_equal(prog_parse(&pr, "ALL"), IMAP_SEARCH_OK);
	assert_false(pr.o.esearch);
	assert_false(pr.o.ret_given);
	assert_int_equal(pr.o.ret, IMAP_SEARCH_RET_ALL);
	assert_int_equal(imap_search_needs(pr.s), 0);
	imap_search_free(&pr.s);
	assert_int_equal(prog_parse(&pr, "RETURN (MIN max Count) CHARSET utf-8 FROM x"), IMAP_SEARCH_OK);
	assert_true(pr.o.esearch && pr.o.ret_given && pr.o.charset_utf8);
	assert_int_equal(pr.o.ret, IMAP_SEARCH_RET_MIN | IMAP_SEARCH_RET_MAX | IMAP_SEARCH_RET_COUNT);
	assert_int_equal(imap_search_needs(pr.s), IMAP_SEARCH_NEED_HEADER);
	imap_search_free(&pr.s);
	assert_int_equal(prog_parse(&pr, "RETURN () 1:*"), IMAP_SEARCH_OK);
	assert_int_equal(pr.o.ret, IMAP_SEARCH_RET_ALL);
	imap_search_free(&pr.s);
	assert_int_equal(prog_parse(&pr, "RETURN (SAVE) CHARSET US-ASCII BODY x UID $"), IMAP_SEARCH_OK);
	assert_int_equal(pr.o.ret, IMAP_SEARCH_RET_SAVE);
	assert_int_equal(imap_search_needs(pr.s),
	    IMAP_SEARCH_NEED_HEADER | IMAP_SEARCH_NEED_BODY | IMAP_SEARCH_USES_SAVED);
	imap_search_free(&pr.s);
	assert_int_equal(prog_parse(&pr, "SENTON 1-Jan-2020"), IMAP_SEARCH_OK);
	assert_int_equal(imap_search_needs(pr.s), IMAP_SEARCH_NEED_HEADER);
	imap_search_free(&pr.s);
	imap_search_free(&pr.s);       /* NULL: harmless */
}

static void test_parse_errors(void **state)
{
	expect_error("CHARSET ISO-8859-1 FROM x", IMAP_SEARCH_BADCHARSET, NULL);
	expect_error("CHARSET", IMAP_SEARCH_BAD, "CHARSET needs a name");
	expect_error("", IMAP_SEARCH_BAD, "Missing search key");
	expect_error("CHARSET UTF-8", IMAP_SEARCH_BAD, "Missing search key");
	expect_error("FOO", IMAP_SEARCH_BAD, "Unknown search key");
	expect_error("MODSEQ 5", IMAP_SEARCH_BAD, "Unknown search key");
	expect_error("SEEN BOGUS", IMAP_SEARCH_BAD, "Unknown search key");
	expect_error("FROM", IMAP_SEARCH_BAD, "Missing string argument");
	expect_error("FROM (x)", IMAP_SEARCH_BAD, "Missing string argument");
	expect_error("HEADER Subject", IMAP_SEARCH_BAD, "HEADER needs a field name and a string");
	expect_error("HEADER", IMAP_SEARCH_BAD, "HEADER needs a field name and a string");
	expect_error("BEFORE 32-Jan-2020", IMAP_SEARCH_BAD, "Bad date (expected d-Mon-yyyy)");
	expect_error("BEFORE 1-Foo-2020", IMAP_SEARCH_BAD, "Bad date (expected d-Mon-yyyy)");
	expect_error("ON 2020-01-01", IMAP_SEARCH_BAD, "Bad date (expected d-Mon-yyyy)");
	expect_error("SINCE 1-Jan-20", IMAP_SEARCH_BAD, "Bad date (expected d-Mon-yyyy)");
	expect_error("SENTON", IMAP_SEARCH_BAD, "Bad date (expected d-Mon-yyyy)");
	expect_error("LARGER x", IMAP_SEARCH_BAD, "LARGER and SMALLER need a number");
	expect_error("SMALLER", IMAP_SEARCH_BAD, "LARGER and SMALLER need a number");
	expect_error("KEYWORD \\Seen", IMAP_SEARCH_BAD, "Bad keyword");
	expect_error("UID", IMAP_SEARCH_BAD, "UID needs a set");
	expect_error("UID 0:3", IMAP_SEARCH_BAD, "Bad sequence set");
	expect_error("1:2:3", IMAP_SEARCH_BAD, "Bad sequence set");
	expect_error("$,1", IMAP_SEARCH_BAD, "Bad sequence set");
	expect_error("NOT", IMAP_SEARCH_BAD, "Missing search key");
	expect_error("OR SEEN", IMAP_SEARCH_BAD, "Missing search key");
	expect_error("()", IMAP_SEARCH_BAD, "Empty search key list");
	expect_error("(SEEN FOO)", IMAP_SEARCH_BAD, "Unknown search key");
	expect_error("\"SEEN\"", IMAP_SEARCH_BAD, "Search key expected");
	expect_error("RETURN (MIN FOO) ALL", IMAP_SEARCH_BAD, "Unknown RETURN option");
	expect_error("RETURN MIN ALL", IMAP_SEARCH_BAD, "RETURN needs a list of options");
	expect_error("CHARSET UTF-8 RETURN (MIN) ALL", IMAP_SEARCH_BAD, "Unknown search key");
	/* NOT chains are bounded by the program depth, not by the C stack */
	char args[1024] = "";
	for (int i = 0; i < IMAP_SEARCH_MAX_DEPTH; i++)
		strcat(args, "NOT ");
	strcat(args, "SEEN");
	expect_error(args, IMAP_SEARCH_BAD, "Search program nested too deeply");
	struct prog pr;
	assert_int_equal(prog_parse(&pr, args + 4), IMAP_SEARCH_OK);    /* one less is fine */
	imap_search_free(&pr.s);
}

/* The "10,000 nested parentheses": the command parser refuses them first. */
static void test_deep_parens_refused_by_parser(void **state)
{
	size_t n = 10000;
	char *line = malloc(2 * n + 32);
	strcpy(line, "a SEARCH ");
	size_t o = strlen(line);
	memset(line + o, '(', n);
	memcpy(line + o + n, "SEEN", 4);
	memset(line + o + n + 4, ')', n);
	memcpy(line + o + 2 * n + 4, "\r\n", 3);
	struct imap_parser p;
	struct imap_parse_limits lim;
	imap_parse_limits_default(&lim);
	imap_parser_init(&p, &lim);
	size_t used;
	assert_int_equal(imap_parser_feed(&p, line, strlen(line), &used), IMAP_PARSE_ERROR);
	assert_int_equal(imap_parser_error(&p), IMAP_PE_TOO_DEEP);
	imap_parser_free(&p);
	free(line);
	/* within the parser's depth, lists evaluate */
	struct folder f;
	folder_init(&f);
	char args[256] = "";
	for (int i = 0; i < IMAP_MAX_DEPTH - 1; i++)
		strcat(args, "(");
	strcat(args, "DRAFT");
	for (int i = 0; i < IMAP_MAX_DEPTH - 1; i++)
		strcat(args, ")");
	expect_match(&f, args, "3");
	folder_free(&f);
}

/* ------------------------------------------------------------ replies */

static void expect_format(bool esearch, unsigned ret, bool uid, const uint32_t *res, size_t n,
    const char *want)
{
	struct imap_search_opts o = { .esearch = esearch, .ret = ret };
	struct buf out;
	buf_init(&out, 4096);
	assert_int_equal(imap_search_format(&out, "a1", uid, &o, res, n), 0);
	assert_string_equal(out.len > 0 ? out.data : "", want);
	buf_free(&out);
}

static void test_format(void **state)
{
	static const uint32_t r[] = { 1, 2, 3, 5, 9, 10 };
	const unsigned all = IMAP_SEARCH_RET_MIN | IMAP_SEARCH_RET_MAX | IMAP_SEARCH_RET_COUNT |
	    IMAP_SEARCH_RET_ALL;
	expect_format(false, IMAP_SEARCH_RET_ALL, false, r, 6, "* SEARCH 1 2 3 5 9 10\r\n");
	expect_format(false, IMAP_SEARCH_RET_ALL, true, r, 0, "* SEARCH\r\n");
	expect_format(true, all, false, r, 6,
	    "* ESEARCH (TAG \"a1\") MIN 1 MAX 10 COUNT 6 ALL 1:3,5,9:10\r\n");
	expect_format(true, all, true, r, 6,
	    "* ESEARCH (TAG \"a1\") UID MIN 1 MAX 10 COUNT 6 ALL 1:3,5,9:10\r\n");
	/* RFC 4731 §3.1: nothing matched, MIN/MAX/ALL left out, COUNT 0 kept */
	expect_format(true, all, true, r, 0, "* ESEARCH (TAG \"a1\") UID COUNT 0\r\n");
	expect_format(true, IMAP_SEARCH_RET_ALL, false, r, 0, "* ESEARCH (TAG \"a1\")\r\n");
	expect_format(true, IMAP_SEARCH_RET_COUNT, false, r, 1, "* ESEARCH (TAG \"a1\") COUNT 1\r\n");
	expect_format(true, IMAP_SEARCH_RET_MAX | IMAP_SEARCH_RET_SAVE, false, r, 6,
	    "* ESEARCH (TAG \"a1\") MAX 10\r\n");
	/* RFC 5182 §2.4: SAVE alone sends no ESEARCH */
	expect_format(true, IMAP_SEARCH_RET_SAVE, false, r, 6, "");
	/* tags with quoted-specials cannot occur (ASTRING-CHAR), but stay quoted */
	struct imap_search_opts o = { .esearch = true, .ret = IMAP_SEARCH_RET_COUNT };
	struct buf out;
	buf_init(&out, 4096);
	assert_int_equal(imap_search_format(&out, "a\"b\\", false, &o, r, 0), 0);
	assert_string_equal(out.data, "* ESEARCH (TAG \"a\\\"b\\\\\") COUNT 0\r\n");
	buf_free(&out);
	/* refusal leaves nothing behind */
	buf_init(&out, 20);
	assert_int_equal(buf_appends(&out, "x"), 0);
	o.ret = all;
	assert_int_equal(imap_search_format(&out, "a1", false, &o, r, 6), -1);
	assert_int_equal(out.len, 1);
	buf_free(&out);
}

static void test_set_format_and_save(void **state)
{
	static const uint32_t v[] = { 4, 4, 5, 7, 8, 9, 4294967295u };
	struct buf out;
	buf_init(&out, 4096);
	assert_int_equal(imap_search_set_format(&out, v, 7), 0);
	assert_string_equal(out.data, "4:5,7:9,4294967295");
	buf_reset(&out);
	assert_int_equal(imap_search_set_format(&out, v, 0), 0);
	assert_int_equal(out.len, 0);
	buf_free(&out);

	uint32_t r[4] = { 3, 5, 8, 13 };
	struct imap_search_opts o = { .ret = IMAP_SEARCH_RET_SAVE };
	assert_int_equal(imap_search_save_filter(&o, r, 4), 4);
	o.ret = IMAP_SEARCH_RET_SAVE | IMAP_SEARCH_RET_MIN | IMAP_SEARCH_RET_COUNT;
	assert_int_equal(imap_search_save_filter(&o, r, 4), 4);
	o.ret = IMAP_SEARCH_RET_SAVE | IMAP_SEARCH_RET_MAX;
	assert_int_equal(imap_search_save_filter(&o, r, 4), 1);
	assert_int_equal(r[0], 13);
	uint32_t r2[4] = { 3, 5, 8, 13 };
	o.ret = IMAP_SEARCH_RET_SAVE | IMAP_SEARCH_RET_MIN | IMAP_SEARCH_RET_MAX;
	assert_int_equal(imap_search_save_filter(&o, r2, 4), 2);
	assert_true(r2[0] == 3 && r2[1] == 13);
	uint32_t one[1] = { 7 };
	assert_int_equal(imap_search_save_filter(&o, one, 1), 1);
	assert_int_equal(imap_search_save_filter(&o, one, 0), 0);
}


static const char *const corpus_files[] = {
	"01-plain-ascii.eml", "02-utf8-8bit-no-mime.eml", "03-ew-b-multicharset.eml",
	"04-ew-q-adjacent.eml", "05-rfc2231-params.eml", "06-mixed-attachments.eml",
	"07-alternative.eml", "08-alt-mixed-related-depth4.eml", "09-rfc822-with-multipart.eml",
	"10-empty-body.eml", "11-ctype-case-space-comments.eml",
	"12-boundary-in-preamble-epilogue.eml", "13-part-without-headers.eml",
	"14-qp-odd-lines.eml", "15-content-headers-all.eml", "16-group-undisclosed.eml",
	"17-addresses-comments-quoted.eml", "18-long-folded-headers.eml", "19-two-megabytes.eml",
	"20-bare-lf.eml", "21-message-global.eml", "22-html-only.eml", "23-pdf-name-filename.eml",
	"24-nested-boundary-prefix.eml", "25-duplicate-headers.eml",
};
#define NCORPUS (sizeof(corpus_files) / sizeof(corpus_files[0]))

struct corpus {
	char *data[NCORPUS];
	struct mime_message *mime[NCORPUS];
	struct imap_search_msg m[NCORPUS];
	char *json;
};

/* The mailbox of the README: the files in name order, \Seen on every third one, stored
 * with CRLF line ends (so RFC822.SIZE of 20-bare-lf is 352). */
static int corpus_setup(void **state)
{
	struct corpus *c = calloc(1, sizeof(*c));
	size_t jl;
	c->json = corpus_slurp("search.json", &jl);
	for (size_t i = 0; i < NCORPUS && c->json != NULL; i++) {
		size_t len, n = 0;
		char *raw = corpus_slurp(corpus_files[i], &len);
		if (raw == NULL)
			break;
		char *o = malloc(2 * len + 1);
		for (size_t k = 0; k < len; k++) {
			if (raw[k] == '\n' && (k == 0 || raw[k - 1] != '\r'))
				o[n++] = '\r';
			o[n++] = raw[k];
		}
		free(raw);
		c->data[i] = o;
		c->mime[i] = mime_parse(o, n, NULL);
		c->m[i] = (struct imap_search_msg){
			.seq = (uint32_t)i + 1, .uid = (uint32_t)i + 101,
			.flags = i % 3 == 2 ? MF_SEEN : 0, .size = n,
			.internal_date = T0, .data = o, .len = n, .mime = c->mime[i],
		};
	}
	*state = c;
	return 0;
}

static int corpus_teardown(void **state)
{
	struct corpus *c = *state;
	for (size_t i = 0; i < NCORPUS; i++) {
		mime_message_free(&c->mime[i]);
		free(c->data[i]);
	}
	free(c->json);
	free(c);
	return 0;
}

/* "raw" of results.<name> in search.json, JSON escapes \r \n decoded. */
static char *expected_raw(const char *json, const char *name)
{
	char pat[128];
	snprintf(pat, sizeof(pat), "\"%s\": {", name);
	const char *p = strstr(json, pat);
	if (p == NULL || (p = strstr(p, "\"raw\": \"")) == NULL)
		return NULL;
	char *out = malloc(strlen(p) + 1), *o = out;
	for (p += 8; *p != '"' && *p != '\0'; p++) {
		if (*p == '\\') {
			p++;
			*o++ = *p == 'r' ? '\r' : *p == 'n' ? '\n' : *p;
		} else {
			*o++ = *p;
		}
	}
	*o = '\0';
	return out;
}

static void corpus_query(void **state, const char *name, const char *args)
{
	struct corpus *c = *state;
	if (c->json == NULL || c->data[NCORPUS - 1] == NULL)
		skip();  /* CI has ../shared beside the clone; a bare checkout does not */
	struct prog pr;
	if (prog_parse(&pr, args) != IMAP_SEARCH_OK)
		fail_msg("%s: %s", name, pr.err);
	struct imap_search_ctx ctx = { .max_seq = NCORPUS, .max_uid = 100 + NCORPUS };
	uint32_t res[NCORPUS];
	size_t n = 0;
	for (size_t i = 0; i < NCORPUS; i++)
		if (imap_search_match(pr.s, &ctx, &c->m[i]))
			res[n++] = c->m[i].seq;
	struct buf out;
	buf_init(&out, 4096);
	assert_int_equal(imap_search_format(&out, "a", false, &pr.o, res, n), 0);
	char *want = name[0] == '=' ? strdup(name + 1) : expected_raw(c->json, name);
	assert_non_null(want);
	if (strcmp(out.data, want) != 0)
		fail_msg("%s: got %s want %s", name, out.data, want);
	free(want);
	buf_free(&out);
	imap_search_free(&pr.s);
}

#define QUERY(fn, name, args) \
	static void fn(void **state) { corpus_query(state, name, args); }
QUERY(corpus_subject_decoded, "subject-decoded-nonascii",
    "CHARSET UTF-8 SUBJECT {7}\r\nGr\xc3\xbc\xc3\x9f" "e")
QUERY(corpus_from_name, "from-name", "FROM \"Smith\"")
QUERY(corpus_from_decoded, "from-decoded-name", "CHARSET UTF-8 FROM {7}\r\nM\xc3\xbcller")
QUERY(corpus_body_base64, "body-in-base64", "BODY quokkaberry")
QUERY(corpus_body_qp, "body-in-qp", "BODY zebrafinch")
QUERY(corpus_header_ctype, "header-ctype-multipart", "HEADER Content-Type multipart")
QUERY(corpus_larger, "larger-100000", "LARGER 100000")
QUERY(corpus_text_word, "text-word", "TEXT marmalade")
QUERY(corpus_not_seen, "not-seen", "NOT SEEN")
QUERY(corpus_body_decoded, "body-decoded-nonascii", "CHARSET UTF-8 BODY {5}\r\ncaf\xc3\xa9")
/* beyond search.json: the Date: headers of the corpus (first Date: of 09 is the outer one) */
QUERY(corpus_senton, "=* SEARCH 5\r\n", "SENTON 7-Mar-2026")
QUERY(corpus_sentbefore, "=* SEARCH 1 2\r\n", "SENTBEFORE 4-Mar-2026")
QUERY(corpus_sent_range, "=* SEARCH 8 9\r\n", "SENTSINCE 10-Mar-2026 SENTBEFORE 12-Mar-2026")

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_flags),
		cmocka_unit_test(test_boolean),
		cmocka_unit_test(test_sets),
		cmocka_unit_test(test_sizes_and_dates),
		cmocka_unit_test(test_strings),
		cmocka_unit_test(test_parse_options),
		cmocka_unit_test(test_parse_errors),
		cmocka_unit_test(test_deep_parens_refused_by_parser),
		cmocka_unit_test(test_format),
		cmocka_unit_test(test_set_format_and_save),
		cmocka_unit_test(corpus_subject_decoded),
		cmocka_unit_test(corpus_from_name),
		cmocka_unit_test(corpus_from_decoded),
		cmocka_unit_test(corpus_body_base64),
		cmocka_unit_test(corpus_body_qp),
		cmocka_unit_test(corpus_header_ctype),
		cmocka_unit_test(corpus_larger),
		cmocka_unit_test(corpus_text_word),
		cmocka_unit_test(corpus_not_seen),
		cmocka_unit_test(corpus_body_decoded),
		cmocka_unit_test(corpus_senton),
		cmocka_unit_test(corpus_sentbefore),
		cmocka_unit_test(corpus_sent_range),
	};
	/* the group state is the corpus mailbox; the other tests ignore it */
	return cmocka_run_group_tests(tests, corpus_setup, corpus_teardown);
}
