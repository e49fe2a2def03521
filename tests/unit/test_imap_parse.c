/* test_imap_parse.c: IMAP command parser (protocols/imap_parse), fed whole and one
 * byte at a time; sequence sets; FETCH sections; modified UTF-7. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/mutf7.h"
#include "protocols/imap_parse.h"

/* Renders the tree: atoms bare, NUMBER as #n, NIL as NIL, quoted as "..",
 * literals as {n}/{n+}/~{n}:value, lists in parentheses. */
static void render(const struct imap_parser *p, const struct imap_arg *a, char *out, size_t cap)
{
	for (; a != NULL; a = imap_arg_next(p, a)) {
		size_t len = 0;
		const char *v = imap_arg_value(p, a, &len);
		size_t o = strlen(out);
		switch (a->type) {
		case IMAP_ARG_ATOM: snprintf(out + o, cap - o, "%s", v); break;
		case IMAP_ARG_NUMBER:
			snprintf(out + o, cap - o, "#%llu", (unsigned long long)a->num); break;
		case IMAP_ARG_NIL: snprintf(out + o, cap - o, "NIL"); break;
		case IMAP_ARG_QUOTED: snprintf(out + o, cap - o, "\"%s\"", v); break;
		case IMAP_ARG_LITERAL:
			snprintf(out + o, cap - o, "%s{%zu%s}:%.*s", a->literal8 ? "~" : "", len,
			    a->nonsync ? "+" : "", (int)len, v);
			break;
		case IMAP_ARG_LIST:
			snprintf(out + o, cap - o, "(");
			render(p, imap_arg_child(p, a), out, cap);
			o = strlen(out);
			snprintf(out + o, cap - o, ")");
			break;
		}
		if (a->next != IMAP_ARG_NONE) {
			o = strlen(out);
			snprintf(out + o, cap - o, " ");
		}
	}
}

struct run {
	enum imap_parse_status st;
	enum imap_parse_error err;
	int conts;          /* CONTINUE results */
	size_t used;        /* octets consumed in total */
	char tree[4096];
};

/* Feeds in[0..len) in chunks of `chunk` octets (0 = whole) until DONE or ERROR */
static void run_chunked(struct imap_parser *p, const char *in, size_t len, size_t chunk,
    struct run *r)
{
	memset(r, 0, sizeof(*r));
	r->st = IMAP_PARSE_MORE;
	size_t i = 0;
	while (i < len) {
		size_t n = chunk == 0 || len - i < chunk ? len - i : chunk, used = 0;
		r->st = imap_parser_feed(p, in + i, n, &used);
		assert_true(used <= n);
		i += used;
		if (r->st == IMAP_PARSE_CONTINUE) {
			r->conts++;
			continue;
		}
		if (r->st != IMAP_PARSE_MORE)
			break;
		assert_int_equal(used, n);
	}
	r->used = i;
	r->err = imap_parser_error(p);
	if (r->st == IMAP_PARSE_DONE) {
		snprintf(r->tree, sizeof(r->tree), "%s %s", imap_parser_tag(p),
		    imap_parser_command(p));
		if (imap_arg_first(p) != NULL) {
			size_t o = strlen(r->tree);
			snprintf(r->tree + o, sizeof(r->tree) - o, " ");
			render(p, imap_arg_first(p), r->tree, sizeof(r->tree));
		}
	}
}

/* Parses whole and byte by byte with default limits; both must agree exactly. */
static void parse_both(const char *in, size_t len, const struct imap_parse_limits *lim,
    struct run *r)
{
	struct imap_parser p;
	struct run b;
	imap_parser_init(&p, lim);
	run_chunked(&p, in, len, 0, r);
	imap_parser_free(&p);
	imap_parser_init(&p, lim);
	run_chunked(&p, in, len, 1, &b);
	imap_parser_free(&p);
	assert_int_equal(r->st, b.st);
	assert_int_equal(r->err, b.err);
	assert_int_equal(r->used, b.used);
	assert_string_equal(r->tree, b.tree);
	/* the whole feed stops at a CONTINUE too, so both see the same count */
	assert_int_equal(r->conts, b.conts);
}

static void expect_tree(const char *in, const char *tree)
{
	struct run r;
	parse_both(in, strlen(in), NULL, &r);
	assert_int_equal(r.err, IMAP_PE_NONE);
	assert_int_equal(r.st, IMAP_PARSE_DONE);
	assert_int_equal(r.used, strlen(in));
	assert_string_equal(r.tree, tree);
}

static void expect_error(const char *in, size_t len, const struct imap_parse_limits *lim,
    enum imap_parse_error e)
{
	struct run r;
	parse_both(in, len, lim, &r);
	assert_int_equal(r.st, IMAP_PARSE_ERROR);
	assert_int_equal(r.err, e);
}

static void atoms_numbers_nil_and_case(void **state)
{
	(void)state;
	expect_tree("a1 noop\r\n", "a1 NOOP");
	expect_tree("A.2 select INBOX\r\n", "A.2 SELECT INBOX");
	expect_tree("t uid fetch 1:* (FLAGS)\r\n", "t UID fetch 1:* (FLAGS)");   /* args keep case */
	expect_tree("t STORE 4 +FLAGS.SILENT (\\Seen \\Deleted $Junk)\r\n",
	    "t STORE #4 +FLAGS.SILENT (\\Seen \\Deleted $Junk)");
	expect_tree("t LIST \"\" %/*\r\n", "t LIST \"\" %/*");
	expect_tree("t APPEND box nil 18446744073709551615 9223372036854775807\r\n",
	    "t APPEND box NIL 18446744073709551615 #9223372036854775807");
	expect_tree("t] X ~a\r\n", "t] X ~a");
}

static void quoted_strings_unescape(void **state)
{
	(void)state;
	expect_tree("t LOGIN \"us er\" \"p\\\"w\\\\d\"\r\n", "t LOGIN \"us er\" \"p\"w\\d\"");
	expect_tree("t X \"\"\r\n", "t X \"\"");
	expect_tree("t X \"caf\xc3\xa9\"\r\n", "t X \"caf\xc3\xa9\"");
}

static void nested_lists_build_a_tree(void **state)
{
	(void)state;
	expect_tree("t X (a (b (c)) () \"d\")\r\n", "t X (a (b (c)) () \"d\")");
	struct imap_parser p;
	size_t used;
	const char in[] = "t X (1 (2 3)) NIL\r\n";
	imap_parser_init(&p, NULL);
	assert_int_equal(imap_parser_feed(&p, in, strlen(in), &used), IMAP_PARSE_DONE);
	const struct imap_arg *l = imap_arg_first(&p);
	assert_int_equal(l->type, IMAP_ARG_LIST);
	assert_int_equal(l->count, 2);
	assert_int_equal(imap_arg_count(&p), 2);
	const struct imap_arg *inner = imap_arg_next(&p, imap_arg_child(&p, l));
	assert_int_equal(inner->type, IMAP_ARG_LIST);
	assert_int_equal(imap_arg_child(&p, inner)->num, 2);
	assert_ptr_equal(&p.args[inner->parent], l);
	assert_int_equal(imap_arg_next(&p, l)->type, IMAP_ARG_NIL);
	imap_parser_free(&p);
}

static void fetch_atoms_keep_sections_whole(void **state)
{
	(void)state;
	expect_tree("t FETCH 1 (BODY.PEEK[HEADER.FIELDS (From To)]<0.100> UID)\r\n",
	    "t FETCH #1 (BODY.PEEK[HEADER.FIELDS (From To)]<0.100> UID)");
	expect_tree("t FETCH 1 BODY[HEADER.FIELDS (\"Sub ject\" \"a)\\\"b\")]\r\n",
	    "t FETCH #1 BODY[HEADER.FIELDS (\"Sub ject\" \"a)\\\"b\")]");
	expect_tree("t FETCH 1 (BODY[] BINARY[1.2]<5.10>)\r\n",
	    "t FETCH #1 (BODY[] BINARY[1.2]<5.10>)");
}

static void literals_of_every_flavour(void **state)
{
	(void)state;
	struct run r;
	const char sync[] = "t LOGIN {4}\r\nuser {2}\r\npw\r\n";
	parse_both(sync, strlen(sync), NULL, &r);
	assert_int_equal(r.st, IMAP_PARSE_DONE);
	assert_int_equal(r.conts, 2);
	assert_string_equal(r.tree, "t LOGIN {4}:user {2}:pw");
	const char plus[] = "t LOGIN {4+}\r\nuser {2+}\r\npw\r\n";
	parse_both(plus, strlen(plus), NULL, &r);
	assert_int_equal(r.st, IMAP_PARSE_DONE);
	assert_int_equal(r.conts, 0);
	assert_string_equal(r.tree, "t LOGIN {4+}:user {2+}:pw");
	const char lit8[] = "t APPEND box ~{3}\r\na\0b\r\n";
	parse_both(lit8, sizeof(lit8) - 1, NULL, &r);
	assert_int_equal(r.st, IMAP_PARSE_DONE);
	assert_int_equal(r.conts, 1);
	assert_memory_equal(r.tree, "t APPEND box ~{3}:a", 20);
	const char empty[] = "t X {0}\r\n {0+}\r\n\r\n";
	parse_both(empty, strlen(empty), NULL, &r);
	assert_int_equal(r.st, IMAP_PARSE_DONE);
	assert_int_equal(r.conts, 1);   /* RFC 9051 §4.3: {0} still synchronizes */
	assert_string_equal(r.tree, "t X {0}: {0+}:");
	const char inlist[] = "t X ({3}\r\na)b)\r\n";
	parse_both(inlist, strlen(inlist), NULL, &r);
	assert_string_equal(r.tree, "t X ({3}:a)b)");
	/* a literal's CRLF-looking content does not end the command */
	const char crlf[] = "t X {4}\r\n\r\n\r\n\r\n";
	parse_both(crlf, strlen(crlf), NULL, &r);
	assert_int_equal(r.st, IMAP_PARSE_DONE);
	assert_int_equal(r.used, strlen(crlf));
}

static void literal_split_across_feeds_and_continue(void **state)
{
	(void)state;
	struct imap_parser p;
	size_t used;
	imap_parser_init(&p, NULL);
	const char a[] = "t APPEND box {11}\r\nhel";
	/* stops right after the header: nothing of the literal is consumed yet */
	assert_int_equal(imap_parser_feed(&p, a, strlen(a), &used), IMAP_PARSE_CONTINUE);
	assert_int_equal(used, strlen(a) - 3);
	assert_int_equal(imap_parser_feed(&p, "hel", 3, &used), IMAP_PARSE_MORE);
	assert_int_equal(imap_parser_feed(&p, "lo wo", 5, &used), IMAP_PARSE_MORE);
	const char c[] = "rld\r\nb NOOP\r\n";
	assert_int_equal(imap_parser_feed(&p, c, strlen(c), &used), IMAP_PARSE_DONE);
	assert_int_equal(used, 5);   /* the pipelined command stays with the caller */
	size_t len;
	const struct imap_arg *lit = imap_arg_next(&p, imap_arg_first(&p));
	assert_string_equal(imap_arg_value(&p, lit, &len), "hello world");
	assert_int_equal(len, 11);
	imap_parser_reset(&p);
	assert_int_equal(imap_parser_feed(&p, c + 5, strlen(c) - 5, &used), IMAP_PARSE_DONE);
	assert_string_equal(imap_parser_command(&p), "NOOP");
	imap_parser_free(&p);
}

static void literal_then_disconnect_leaves_need_more(void **state)
{
	(void)state;
	struct imap_parser p;
	size_t used;
	imap_parser_init(&p, NULL);
	const char in[] = "t APPEND box {10}\r\n";
	assert_int_equal(imap_parser_feed(&p, in, strlen(in), &used), IMAP_PARSE_CONTINUE);
	assert_int_equal(imap_parser_feed(&p, "abc", 3, &used), IMAP_PARSE_MORE);
	/* the session frees on IO_DISCONNECTED: nothing else to release (ASan) */
	imap_parser_free(&p);
	imap_parser_free(&p);   /* idempotent */
}

static void literal_sizes_are_checked_before_reading(void **state)
{
	(void)state;
	const char big[] = "t APPEND box {4294967296}\r\n";
	expect_error(big, strlen(big), NULL, IMAP_PE_LITERAL_TOO_BIG);
	assert_string_equal(imap_parse_resp_code(IMAP_PE_LITERAL_TOO_BIG), "TOOBIG");
	const char huge[] = "t APPEND box {99999999999999999999999}\r\n";
	expect_error(huge, strlen(huge), NULL, IMAP_PE_LITERAL_TOO_BIG);
	struct imap_parser p;
	size_t used;
	imap_parser_init(&p, NULL);
	assert_int_equal(imap_parser_feed(&p, big, strlen(big), &used), IMAP_PARSE_ERROR);
	assert_int_equal(used, strlen("t APPEND box {4294967296"));
	assert_false(imap_parser_fatal(&p));
	assert_string_equal(imap_parser_tag(&p), "t");
	/* reset skips the rest of the refused line, then the next command parses */
	imap_parser_reset(&p);
	const char rest[] = "}\r\nu NOOP\r\n";
	assert_int_equal(imap_parser_feed(&p, rest, strlen(rest), &used), IMAP_PARSE_DONE);
	assert_string_equal(imap_parser_tag(&p), "u");
	imap_parser_free(&p);
	/* LITERAL-: a non-sync literal over 4096 cannot be refused cleanly: fatal */
	struct imap_parse_limits lim;
	imap_parse_limits_default(&lim);
	lim.max_nonsync = IMAP_LITERAL_MINUS_MAX;
	const char minus[] = "t APPEND box {4097+}\r\n";
	expect_error(minus, strlen(minus), &lim, IMAP_PE_NONSYNC_TOO_BIG);
	imap_parser_init(&p, &lim);
	assert_int_equal(imap_parser_feed(&p, minus, strlen(minus), &used), IMAP_PARSE_ERROR);
	assert_true(imap_parser_fatal(&p));
	imap_parser_free(&p);
	const char ok[] = "t X {4096+}\r\n";
	struct run r;
	parse_both(ok, strlen(ok), &lim, &r);
	assert_int_equal(r.st, IMAP_PARSE_MORE);
}

static void malformed_literals(void **state)
{
	(void)state;
	expect_error("t X {}\r\n", 8, NULL, IMAP_PE_BAD_LITERAL);
	expect_error("t X {3-}\r\n", 10, NULL, IMAP_PE_BAD_LITERAL);   /* not RFC 7888 syntax */
	expect_error("t X {3}x\r\n", 10, NULL, IMAP_PE_BAD_LITERAL);
	expect_error("t X {3}\n", 8, NULL, IMAP_PE_BAD_LITERAL);
	expect_error("t X {3}\rx", 9, NULL, IMAP_PE_BARE_EOL);
	expect_error("t X {3+}\r\na\0c\r\n", 15, NULL, IMAP_PE_NUL);   /* CHAR8 has no NUL */
}

static void unterminated_quoted_string(void **state)
{
	(void)state;
	expect_error("t LOGIN \"abc\r\n", 14, NULL, IMAP_PE_BAD_QUOTED);
	expect_error("t LOGIN \"a\\nb\"\r\n", 16, NULL, IMAP_PE_BAD_QUOTED);
	expect_error("t LOGIN \"a\0b\"\r\n", 15, NULL, IMAP_PE_NUL);
	/* after the error, reset() resyncs at the CRLF */
	struct imap_parser p;
	size_t used;
	imap_parser_init(&p, NULL);
	const char in[] = "t LOGIN \"abc\r\nu NOOP\r\n";
	assert_int_equal(imap_parser_feed(&p, in, strlen(in), &used), IMAP_PARSE_ERROR);
	assert_int_equal(imap_parser_error(&p), IMAP_PE_BAD_QUOTED);
	imap_parser_reset(&p);
	assert_int_equal(imap_parser_feed(&p, in + used, strlen(in) - used, &used),
	    IMAP_PARSE_DONE);
	assert_string_equal(imap_parser_command(&p), "NOOP");
	imap_parser_free(&p);
}

static void ten_thousand_nested_parentheses(void **state)
{
	(void)state;
	size_t n = 10000;
	char *in = malloc(n * 2 + 16);
	assert_non_null(in);
	memcpy(in, "t X ", 4);
	memset(in + 4, '(', n);
	memset(in + 4 + n, ')', n);
	memcpy(in + 4 + 2 * n, "\r\n", 2);
	expect_error(in, 2 * n + 6, NULL, IMAP_PE_TOO_DEEP);
	free(in);
	/* exactly the limit is fine */
	char ok[128] = "t X ";
	memset(ok + 4, '(', IMAP_MAX_DEPTH);
	memset(ok + 4 + IMAP_MAX_DEPTH, ')', IMAP_MAX_DEPTH);
	memcpy(ok + 4 + 2 * IMAP_MAX_DEPTH, "\r\n", 3);
	struct run r;
	parse_both(ok, strlen(ok), NULL, &r);
	assert_int_equal(r.st, IMAP_PARSE_DONE);
}

static void syntax_errors_get_exact_codes(void **state)
{
	(void)state;
	expect_error("\r\n", 2, NULL, IMAP_PE_EMPTY);
	expect_error("t\r\n", 3, NULL, IMAP_PE_BAD_COMMAND);
	expect_error("t \r\n", 4, NULL, IMAP_PE_BAD_COMMAND);
	expect_error("+ NOOP\r\n", 8, NULL, IMAP_PE_BAD_TAG);
	expect_error("* NOOP\r\n", 8, NULL, IMAP_PE_BAD_TAG);
	expect_error("t NO\"OP\r\n", 9, NULL, IMAP_PE_BAD_COMMAND);
	expect_error("t NOOP \r\n", 9, NULL, IMAP_PE_SYNTAX);
	expect_error("t X  a\r\n", 8, NULL, IMAP_PE_SYNTAX);
	expect_error("t X a)\r\n", 8, NULL, IMAP_PE_SYNTAX);
	expect_error("t X (a \r\n", 9, NULL, IMAP_PE_SYNTAX);
	expect_error("t X (a\r\n", 8, NULL, IMAP_PE_UNCLOSED_LIST);
	expect_error("t X (\r\n", 7, NULL, IMAP_PE_UNCLOSED_LIST);
	expect_error("t NOOP\n", 7, NULL, IMAP_PE_BARE_EOL);
	expect_error("t NOOP\rx\r\n", 10, NULL, IMAP_PE_BARE_EOL);
	expect_error("t X a\"b\r\n", 9, NULL, IMAP_PE_SYNTAX);
	expect_error("t X caf\xc3\xa9\r\n", 11, NULL, IMAP_PE_SYNTAX);   /* atoms are 7-bit */
	expect_error("t X a\0b\r\n", 9, NULL, IMAP_PE_NUL);
	expect_error("t X BODY[1\r\n", 12, NULL, IMAP_PE_SYNTAX);
}

static void line_and_argument_limits(void **state)
{
	(void)state;
	size_t n = IMAP_MAX_LINE + 10;
	char *in = malloc(n);
	assert_non_null(in);
	memcpy(in, "t X ", 4);
	memset(in + 4, 'a', n - 6);
	memcpy(in + n - 2, "\r\n", 2);
	expect_error(in, n, NULL, IMAP_PE_LINE_TOO_LONG);
	free(in);
	struct imap_parse_limits lim;
	imap_parse_limits_default(&lim);
	lim.max_args = 3;
	expect_error("t X a b c d\r\n", 13, &lim, IMAP_PE_TOO_MANY_ARGS);
	struct run r;
	parse_both("t X a b c\r\n", 11, &lim, &r);
	assert_int_equal(r.st, IMAP_PARSE_DONE);
	lim = (struct imap_parse_limits){ 0 };
	imap_parse_limits_default(&lim);
	lim.max_data = 64;
	const char lit[] = "t X {100}\r\n";
	expect_error(lit, strlen(lit), &lim, IMAP_PE_TOO_MUCH_DATA);
	/* literal octets do not count towards the line limit */
	lim.max_data = 1 << 20;
	lim.max_literal = 1 << 20;
	lim.max_line = 32;
	size_t big = 100000;
	char *msg = malloc(big + 32);
	assert_non_null(msg);
	int off = snprintf(msg, 32, "t APPEND b {%zu+}\r\n", big);
	memset(msg + off, 'x', big);
	memcpy(msg + off + big, "\r\n", 2);
	parse_both(msg, (size_t)off + big + 2, &lim, &r);
	assert_int_equal(r.st, IMAP_PARSE_DONE);
	free(msg);
}

static void every_prefix_needs_more(void **state)
{
	(void)state;
	const char in[] = "t1 FETCH 1:3,5 (FLAGS BODY.PEEK[HEADER.FIELDS (A)]<0.9> "
	    "\"q\\\"\" {2+}\r\nxy NIL)\r\n";
	size_t len = strlen(in);
	for (size_t k = 0; k < len; k++) {
		struct imap_parser p;
		size_t used;
		imap_parser_init(&p, NULL);
		assert_int_equal(imap_parser_feed(&p, in, k, &used), IMAP_PARSE_MORE);
		assert_int_equal(used, k);
		assert_int_equal(imap_parser_feed(&p, in + k, len - k, &used), IMAP_PARSE_DONE);
		assert_int_equal(used, len - k);
		imap_parser_free(&p);
	}
}

static void astring_helper(void **state)
{
	(void)state;
	struct imap_parser p;
	size_t used, len;
	const char in[] = "t X foo NIL \"q\" {1+}\r\nl \\Seen (a)\r\n";
	imap_parser_init(&p, NULL);
	assert_int_equal(imap_parser_feed(&p, in, strlen(in), &used), IMAP_PARSE_DONE);
	const struct imap_arg *a = imap_arg_first(&p);
	assert_string_equal(imap_arg_astring(&p, a, &len), "foo");
	a = imap_arg_next(&p, a);
	assert_string_equal(imap_arg_astring(&p, a, &len), "NIL");   /* a mailbox "NIL" */
	a = imap_arg_next(&p, a);
	assert_string_equal(imap_arg_astring(&p, a, &len), "q");
	a = imap_arg_next(&p, a);
	assert_string_equal(imap_arg_astring(&p, a, &len), "l");
	a = imap_arg_next(&p, a);
	assert_null(imap_arg_astring(&p, a, &len));   /* "\" is not an ASTRING-CHAR */
	assert_null(imap_arg_astring(&p, imap_arg_next(&p, a), &len));
	imap_parser_free(&p);
}

/* ---- sequence sets ---- */

static void seqset_parses_ranges_and_star(void **state)
{
	(void)state;
	struct imap_seqset s;
	assert_int_equal(imap_seqset_parse("1:3,5,7:*", 9, &s), 0);
	assert_int_equal(s.n, 3);
	assert_true(imap_seqset_contains(&s, 2, 10));
	assert_false(imap_seqset_contains(&s, 4, 10));
	assert_true(imap_seqset_contains(&s, 9, 10));
	assert_false(imap_seqset_contains(&s, 11, 10));
	assert_int_equal(imap_seqset_highest(&s, 10), 10);
	assert_int_equal(imap_seqset_parse("9:2", 3, &s), 0);   /* either order */
	assert_int_equal(s.r[0].lo, 2);
	assert_int_equal(s.r[0].hi, 9);
	assert_int_equal(imap_seqset_parse("*:4", 3, &s), 0);
	assert_int_equal(s.r[0].lo, 4);
	assert_int_equal(s.r[0].hi, IMAP_SEQ_STAR);
	/* RFC 9051 §6.4.9: n:* with n past the top still includes the top */
	assert_true(imap_seqset_contains(&s, 3, 3));
	assert_int_equal(imap_seqset_parse("$", 1, &s), 0);
	assert_true(s.dollar);
	assert_false(imap_seqset_contains(&s, 1, 10));
	assert_int_equal(imap_seqset_parse("4294967295", 10, &s), 0);
	assert_int_equal(s.r[0].lo, UINT32_MAX);
}

static void seqset_empty_mailbox_matches_nothing(void **state)
{
	(void)state;
	struct imap_seqset s;
	const char in[] = "1:4294967295,*:1";
	assert_int_equal(imap_seqset_parse(in, strlen(in), &s), 0);
	assert_false(imap_seqset_contains(&s, 1, 0));
	assert_false(imap_seqset_contains(&s, 0, 0));
	assert_false(imap_seqset_contains(&s, UINT32_MAX, 0));
	assert_int_equal(imap_seqset_highest(&s, 0), 0);
	assert_true(imap_seqset_contains(&s, UINT32_MAX, UINT32_MAX));
	assert_int_equal(imap_seqset_highest(&s, 5), 5);
}

static void seqset_rejects_bad_syntax(void **state)
{
	(void)state;
	static const char *bad[] = {
		"", "0", "1:0", "01", "4294967296", "1,", ",1", "1::2", "1:", ":1", "a", "1 2",
		"$,1", "1,$", "$$", "*:", "-1", "1:*:2",
	};
	struct imap_seqset s;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(imap_seqset_parse(bad[i], strlen(bad[i]), &s), -1);
	/* bounded: one range more than the maximum is refused */
	size_t n = IMAP_SEQSET_MAX_RANGES + 1;
	char *in = malloc(n * 2);
	assert_non_null(in);
	for (size_t i = 0; i < n; i++) {
		in[2 * i] = '1';
		in[2 * i + 1] = ',';
	}
	assert_int_equal(imap_seqset_parse(in, n * 2 - 1, &s), -1);
	assert_int_equal(imap_seqset_parse(in, n * 2 - 3, &s), 0);
	free(in);
}

/* ---- FETCH sections ---- */

static void fetch_sections_parse(void **state)
{
	(void)state;
	struct imap_fetch_section f;
	const char *s = "BODY.PEEK[HEADER.FIELDS (From \"To\")]<0.100>";
	assert_int_equal(imap_fetch_section_parse(s, strlen(s), &f), 0);
	assert_int_equal(f.item, IMAP_FETCH_BODY_PEEK);
	assert_int_equal(f.text, IMAP_SECTION_HEADER_FIELDS);
	assert_int_equal(f.nfields, 2);
	assert_memory_equal(s + f.fields[0].off, "From", 4);
	assert_memory_equal(s + f.fields[1].off, "To", f.fields[1].len);
	assert_true(f.partial);
	assert_int_equal(f.partial_off, 0);
	assert_int_equal(f.partial_len, 100);
	s = "BODY[1.2.3.4.5.6.7.8.9.1.1]";
	assert_int_equal(imap_fetch_section_parse(s, strlen(s), &f), 0);
	assert_int_equal(f.nparts, 11);
	assert_int_equal(f.parts[10], 1);
	s = "body[2.MIME]";
	assert_int_equal(imap_fetch_section_parse(s, strlen(s), &f), 0);
	assert_int_equal(f.text, IMAP_SECTION_MIME);
	s = "BODY[]";
	assert_int_equal(imap_fetch_section_parse(s, strlen(s), &f), 0);
	assert_int_equal(f.text, IMAP_SECTION_ALL);
	s = "BINARY.SIZE[1]";
	assert_int_equal(imap_fetch_section_parse(s, strlen(s), &f), 0);
	assert_int_equal(f.item, IMAP_FETCH_BINARY_SIZE);
	s = "BODY[3.HEADER.FIELDS.NOT (X-A)]";
	assert_int_equal(imap_fetch_section_parse(s, strlen(s), &f), 0);
	assert_int_equal(f.text, IMAP_SECTION_HEADER_FIELDS_NOT);
	assert_int_equal(f.parts[0], 3);
	static const char *bad[] = {
		"BODY[MIME]", "BODY[0]", "BODY[1.]", "BODY[1", "BODY[]<1>", "BODY[]<0.0>",
		"BINARY[TEXT]", "BINARY.SIZE[1]<0.1>", "BODY[HEADER.FIELDS ()]",
		"BODY[HEADER.FIELDS]", "BODY[TEXT]x", "BODYX[]", "BODY[01]",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(imap_fetch_section_parse(bad[i], strlen(bad[i]), &f), -1);
}

/* ---- modified UTF-7 ---- */

static void mutf7_round_trips(void **state)
{
	(void)state;
	static const struct { const char *utf8, *mutf7; } v[] = {
		{ "INBOX", "INBOX" },
		{ "~peter/mail/\xe5\x8f\xb0\xe5\x8c\x97/\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e",
		  "~peter/mail/&U,BTFw-/&ZeVnLIqe-" },   /* RFC 3501 §5.1.3 example */
		{ "A&B", "A&-B" },
		{ "Entw\xc3\xbc" "rfe", "Entw&APw-rfe" },
		{ "\xf0\x9f\x93\xa7", "&2D3c5w-" },   /* U+1F4E7, a surrogate pair */
		{ "\xc3\xa9&", "&AOk-&-" },
	};
	for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
		struct buf b;
		buf_init(&b, 1024);
		assert_int_equal(mutf7_encode(v[i].utf8, strlen(v[i].utf8), &b), 0);
		assert_string_equal(b.data, v[i].mutf7);
		buf_reset(&b);
		assert_int_equal(mutf7_decode(v[i].mutf7, strlen(v[i].mutf7), &b), 0);
		assert_string_equal(b.data, v[i].utf8);
		buf_free(&b);
	}
}

static void mutf7_rejects_invalid_and_non_canonical(void **state)
{
	(void)state;
	static const char *bad[] = {
		"&AGE-",        /* "a" shifted: printable ASCII must be itself */
		"&U,BTFw",      /* unterminated shift */
		"&",            /* lone ampersand */
		"&-&",
		"&A-",          /* no complete UTF-16 unit */
		"&AOl-",        /* non-zero pad bits */
		"&AOkA-",       /* 6+ pad bits */
		"&AOk-&AOk-",   /* adjacent shifts must be one */
		"&2D0-",        /* high surrogate alone */
		"&3OcA-",       /* low surrogate alone */
		"&AAA-",        /* U+0000 */
		"a\x01",        /* control byte outside a shift */
		"caf\xc3\xa9",  /* raw 8-bit */
		"&A*8-",        /* not modified base64 */
		"&AOk/-",       /* "/" is "," in modified base64 */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct buf b;
		buf_init(&b, 1024);
		assert_int_equal(buf_appends(&b, "x"), 0);
		assert_int_equal(mutf7_decode(bad[i], strlen(bad[i]), &b), -1);
		assert_int_equal(b.len, 1);   /* unchanged on failure */
		buf_free(&b);
	}
	static const char *bad_utf8[] = { "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80", "\xc3",
	    "\xff", "a\0b" };
	static const size_t lens[] = { 2, 3, 4, 1, 1, 3 };
	for (size_t i = 0; i < sizeof(bad_utf8) / sizeof(bad_utf8[0]); i++) {
		struct buf b;
		buf_init(&b, 1024);
		assert_int_equal(mutf7_encode(bad_utf8[i], lens[i], &b), -1);
		assert_int_equal(b.len, 0);
		buf_free(&b);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(atoms_numbers_nil_and_case),
		cmocka_unit_test(quoted_strings_unescape),
		cmocka_unit_test(nested_lists_build_a_tree),
		cmocka_unit_test(fetch_atoms_keep_sections_whole),
		cmocka_unit_test(literals_of_every_flavour),
		cmocka_unit_test(literal_split_across_feeds_and_continue),
		cmocka_unit_test(literal_then_disconnect_leaves_need_more),
		cmocka_unit_test(literal_sizes_are_checked_before_reading),
		cmocka_unit_test(malformed_literals),
		cmocka_unit_test(unterminated_quoted_string),
		cmocka_unit_test(ten_thousand_nested_parentheses),
		cmocka_unit_test(syntax_errors_get_exact_codes),
		cmocka_unit_test(line_and_argument_limits),
		cmocka_unit_test(every_prefix_needs_more),
		cmocka_unit_test(astring_helper),
		cmocka_unit_test(seqset_parses_ranges_and_star),
		cmocka_unit_test(seqset_empty_mailbox_matches_nothing),
		cmocka_unit_test(seqset_rejects_bad_syntax),
		cmocka_unit_test(fetch_sections_parse),
		cmocka_unit_test(mutf7_round_trips),
		cmocka_unit_test(mutf7_rejects_invalid_and_non_canonical),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
