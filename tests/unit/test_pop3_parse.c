/* test_pop3_parse.c: POP3 command line parser, whole and byte by byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "protocols/pop3_parse.h"

static enum pop3_parse_result parse(const char *text, struct pop3_cmd *cmd, char *copy, size_t cap)
{
	size_t len = strlen(text);
	assert_true(len < cap);
	memcpy(copy, text, len + 1);
	return pop3_parse_line(copy, len, cmd);
}

static void verbs_are_uppercased_with_args(void **state)
{
	(void)state;
	struct pop3_cmd cmd;
	char copy[600];
	assert_int_equal(parse("retr 1", &cmd, copy, sizeof(copy)), POP3_PARSE_OK);
	assert_string_equal(cmd.verb, "RETR");
	assert_int_equal(cmd.nargs, 1);
	assert_string_equal(cmd.args[0], "1");
	assert_int_equal(parse("TOP 3 10", &cmd, copy, sizeof(copy)), POP3_PARSE_OK);
	assert_string_equal(cmd.verb, "TOP");
	assert_int_equal(cmd.nargs, 2);
	assert_string_equal(cmd.args[1], "10");
	assert_int_equal(parse("QUIT", &cmd, copy, sizeof(copy)), POP3_PARSE_OK);
	assert_int_equal(cmd.nargs, 0);
	assert_string_equal(cmd.rest, "");
}

static void pass_keeps_spaces_in_rest(void **state)
{
	(void)state;
	struct pop3_cmd cmd;
	/* RFC 1939 §7: the password may contain spaces; rest is the unsplit remainder */
	const char line[] = "PASS my secret  pw";
	assert_int_equal(pop3_parse_line(line, strlen(line), &cmd), POP3_PARSE_OK);
	assert_string_equal(cmd.rest, "my secret  pw");
	assert_string_equal(line, "PASS my secret  pw");
	assert_int_equal(cmd.nargs, 1);
	assert_string_equal(cmd.args[0], "my secret  pw");
	/* more spaces than POP3_MAX_ARGS is still one password */
	const char many[] = "PASS a b c d e f";
	assert_int_equal(pop3_parse_line(many, strlen(many), &cmd), POP3_PARSE_OK);
	assert_string_equal(cmd.args[0], "a b c d e f");
}

static void bad_lines_get_exact_errors(void **state)
{
	(void)state;
	struct pop3_cmd cmd;
	char copy[600];
	assert_int_equal(parse("", &cmd, copy, sizeof(copy)), POP3_PARSE_EMPTY);
	assert_int_equal(parse("RETRIEVE 1", &cmd, copy, sizeof(copy)), POP3_PARSE_BAD_VERB);
	assert_int_equal(parse("RE 1", &cmd, copy, sizeof(copy)), POP3_PARSE_BAD_VERB);
	assert_int_equal(parse("R3TR 1", &cmd, copy, sizeof(copy)), POP3_PARSE_BAD_VERB);
	assert_int_equal(parse(" RETR 1", &cmd, copy, sizeof(copy)), POP3_PARSE_BAD_VERB);
	assert_int_equal(parse("TOP 1 2 3 4", &cmd, copy, sizeof(copy)), POP3_PARSE_TOO_MANY_ARGS);
	char nul[] = "USER a\0b";
	assert_int_equal(pop3_parse_line(nul, 8, &cmd), POP3_PARSE_NUL);
	char ctl[] = "USER a\033b";
	assert_int_equal(pop3_parse_line(ctl, strlen(ctl), &cmd), POP3_PARSE_NUL);
	char longarg[300] = "USER ";
	memset(longarg + 5, 'a', 256);
	longarg[261] = '\0';
	assert_int_equal(parse(longarg, &cmd, copy, sizeof(copy)), POP3_PARSE_ARG_TOO_LONG);
	longarg[260] = '\0';
	assert_int_equal(parse(longarg, &cmd, copy, sizeof(copy)), POP3_PARSE_OK);
}

static void every_prefix_of_a_line_parses_or_fails_cleanly(void **state)
{
	(void)state;
	/* byte by byte: each prefix is a complete line to this parser; none may crash
	 * and the results must match what a whole-line parse of the prefix gives */
	const char *in = "UIDL 12 extra";
	for (size_t i = 0; i <= strlen(in); i++) {
		char copy[64];
		struct pop3_cmd cmd;
		memcpy(copy, in, i);
		copy[i] = '\0';
		enum pop3_parse_result r = pop3_parse_line(copy, i, &cmd);
		if (i == 0)
			assert_int_equal(r, POP3_PARSE_EMPTY);
		else if (i < 3)
			assert_int_equal(r, POP3_PARSE_BAD_VERB);
		else
			assert_int_equal(r, POP3_PARSE_OK);
	}
}

static void message_numbers_are_strict(void **state)
{
	(void)state;
	uint32_t n;
	assert_int_equal(pop3_parse_number("1", &n), 0);
	assert_int_equal(n, 1);
	assert_int_equal(pop3_parse_number("4294967295", &n), 0);
	assert_true(n == 4294967295U);
	assert_int_equal(pop3_parse_number("4294967296", &n), -1);
	assert_int_equal(pop3_parse_number("0", &n), -1);
	assert_int_equal(pop3_parse_number("-1", &n), -1);
	assert_int_equal(pop3_parse_number("+1", &n), -1);
	assert_int_equal(pop3_parse_number("1a", &n), -1);
	assert_int_equal(pop3_parse_number("", &n), -1);
	assert_int_equal(pop3_parse_number("00000000001", &n), -1);
	assert_int_equal(pop3_parse_count("0", &n), 0);
	assert_int_equal(n, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(verbs_are_uppercased_with_args),
		cmocka_unit_test(pass_keeps_spaces_in_rest),
		cmocka_unit_test(bad_lines_get_exact_errors),
		cmocka_unit_test(every_prefix_of_a_line_parses_or_fails_cleanly),
		cmocka_unit_test(message_numbers_are_strict),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
