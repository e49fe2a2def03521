/* test_common.c: common/ buf, base64, size/duration parsing, ids, record fields. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/buf.h"
#include "common/record.h"
#include "common/util.h"

static void buf_append_stops_at_max(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 10);
	assert_int_equal(buf_append(&b, "0123456789", 10), 0);
	assert_int_equal(buf_appendc(&b, 'x'), -1);
	assert_int_equal(b.len, 10);
	assert_string_equal(b.data, "0123456789");
	assert_int_equal(buf_printf(&b, "%s", ""), 0);
	buf_consume(&b, 4);
	assert_string_equal(b.data, "456789");
	assert_int_equal(buf_printf(&b, "%d", 1234), 0);
	assert_string_equal(b.data, "4567891234");
	assert_int_equal(buf_printf(&b, "%d", 5), -1);
	buf_free(&b);
}

static void buf_getline_crlf_strict(void **state)
{
	(void)state;
	size_t len, used;
	assert_int_equal(buf_getline_crlf("abc", 3, &len, &used), 0);
	assert_int_equal(buf_getline_crlf("abc\r\nx", 6, &len, &used), 1);
	assert_int_equal(len, 3);
	assert_int_equal(used, 5);
	assert_int_equal(buf_getline_crlf("ab\nc", 4, &len, &used), -1);
	assert_int_equal(len, 2);
	assert_int_equal(used, 3);
	assert_int_equal(buf_getline_crlf("a\rb\r\n", 5, &len, &used), 1);
	assert_int_equal(len, 3);
	/* fed one byte at a time: no line until the LF arrives */
	const char *in = "USER x\r\n";
	for (size_t i = 1; i < strlen(in); i++)
		assert_int_equal(buf_getline_crlf(in, i, &len, &used), 0);
	assert_int_equal(buf_getline_crlf(in, strlen(in), &len, &used), 1);
}

static void b64_round_trip_and_rejects(void **state)
{
	(void)state;
	const char *vec[][2] = { { "", "" }, { "f", "Zg==" }, { "fo", "Zm8=" }, { "foo", "Zm9v" },
	    { "foob", "Zm9vYg==" }, { "fooba", "Zm9vYmE=" }, { "foobar", "Zm9vYmFy" } };
	for (size_t i = 0; i < sizeof(vec) / sizeof(vec[0]); i++) {
		char *e = util_b64_encode(vec[i][0], strlen(vec[i][0]));
		assert_string_equal(e, vec[i][1]);
		free(e);
		unsigned char *d;
		size_t dlen;
		assert_int_equal(util_b64_decode(vec[i][1], strlen(vec[i][1]), &d, &dlen), 0);
		assert_int_equal(dlen, strlen(vec[i][0]));
		assert_memory_equal(d, vec[i][0], dlen);
		free(d);
	}
	const char *bad[] = { "Zg=", "Z===", "Zm9v!A==", "=Zm9", "Zg==Zg==", "Zm 9v" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		unsigned char *d;
		size_t dlen;
		assert_int_equal(util_b64_decode(bad[i], strlen(bad[i]), &d, &dlen), -1);
	}
}

static void size_and_duration_parsing(void **state)
{
	(void)state;
	uint64_t v;
	assert_int_equal(util_parse_size("1G", &v), 0);
	assert_true(v == 1073741824ULL);
	assert_int_equal(util_parse_size("512k", &v), 0);
	assert_true(v == 524288);
	assert_int_equal(util_parse_size("0", &v), 0);
	assert_true(v == 0);
	assert_int_equal(util_parse_size("12X", &v), -1);
	assert_int_equal(util_parse_size("-1", &v), -1);
	assert_int_equal(util_parse_size("99999999999999999999", &v), -1);
	assert_int_equal(util_parse_size("20000000000T", &v), -1);
	assert_int_equal(util_parse_duration("5m", &v), 0);
	assert_true(v == 300);
	assert_int_equal(util_parse_duration("5d", &v), 0);
	assert_true(v == 432000);
	assert_int_equal(util_parse_duration("90", &v), 0);
	assert_true(v == 90);
	assert_int_equal(util_parse_duration("1mm", &v), -1);
	assert_int_equal(util_parse_duration("", &v), -1);
}

static void id_base32_is_13_chars(void **state)
{
	(void)state;
	char out[14];
	util_id_base32(0, out);
	assert_string_equal(out, "aaaaaaaaaaaaa");
	util_id_base32(UINT64_MAX, out);
	assert_string_equal(out, "p777777777777");
	util_id_base32(31, out);
	assert_string_equal(out, "aaaaaaaaaaaa7");
}

/* ------------------------------------------------------------ record.h */

static void record_split_on_single_spaces(void **state)
{
	(void)state;
	struct record_fields fs;
	/* bounded by len, not by a NUL: "tail" is past the line */
	const char line[] = "rcpt a%20b - 12tail";
	assert_true(record_split(line, strlen(line) - 4, &fs));
	assert_int_equal(fs.n, 4);
	assert_int_equal(fs.len[0], 4);
	assert_ptr_equal(fs.p[0], line);
	assert_memory_equal(fs.p[1], "a%20b", 5);
	assert_int_equal(fs.len[2], 1);
	assert_int_equal(fs.len[3], 2);
	assert_memory_equal(fs.p[3], "12", 2);
	assert_true(record_split("x", 1, &fs));
	assert_int_equal(fs.n, 1);
	/* an empty field anywhere, or none at all */
	const char *bad[] = { "", " a", "a ", "a  b", " ", "a b  c" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_false(record_split(bad[i], strlen(bad[i]), &fs));
	/* a tab or CR is not a separator: it stays inside the field */
	assert_true(record_split("a\tb\r", 4, &fs));
	assert_int_equal(fs.n, 1);
}

static void record_split_caps_the_field_count(void **state)
{
	(void)state;
	struct record_fields fs;
	char line[2 * RECORD_FIELDS_MAX + 2];
	size_t n = 0;
	for (size_t i = 0; i < RECORD_FIELDS_MAX; i++) {
		line[n++] = (char)('a' + i);
		line[n++] = ' ';
	}
	assert_true(record_split(line, n - 1, &fs));
	assert_int_equal(fs.n, RECORD_FIELDS_MAX);
	assert_memory_equal(fs.p[RECORD_FIELDS_MAX - 1], "p", 1);
	line[n++] = 'z';
	assert_false(record_split(line, n, &fs));
}

static void record_num_strict_decimal_in_range(void **state)
{
	(void)state;
	uint64_t v;
	assert_true(record_num("0", 1, 0, 10, &v));
	assert_true(v == 0);
	assert_true(record_num("4294967295", 10, 0, UINT32_MAX, &v));
	assert_true(v == UINT32_MAX);
	assert_true(record_num("18446744073709551615", 20, 0, UINT64_MAX, &v));
	assert_true(v == UINT64_MAX);
	assert_true(record_num("123", 2, 0, 100, &v));            /* len bounds it */
	assert_true(v == 12);
	assert_true(record_num("5", 1, 5, 5, &v));
	assert_true(v == 5);

	/* not the one canonical spelling, or out of range: false, *r untouched */
	const struct { const char *s; uint64_t min, max; } bad[] = {
		{ "", 0, 10 }, { "00", 0, 10 }, { "01", 0, 10 }, { "-1", 0, 10 }, { "+1", 0, 10 },
		{ " 1", 0, 10 }, { "1 ", 0, 10 }, { "1a", 0, 10 }, { "0x1", 0, 10 }, { "1.0", 0, 10 },
		{ "4", 5, 10 }, { "11", 5, 10 }, { "0", 1, UINT32_MAX }, { "4294967296", 0, UINT32_MAX },
		{ "18446744073709551616", 0, UINT64_MAX },          /* UINT64_MAX + 1: no wrap to 0 */
		{ "99999999999999999999", 0, UINT64_MAX },
		{ "100000000000000000000", 0, UINT64_MAX },          /* 21 digits */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = 77;
		if (record_num(bad[i].s, strlen(bad[i].s), bad[i].min, bad[i].max, &v))
			fail_msg("accepted \"%s\"", bad[i].s);
		assert_true(v == 77);
	}
}

static char *escaped(const char *s, unsigned flags)
{
	struct buf b;
	buf_init(&b, 4096);
	assert_int_equal(record_escape(&b, s, flags), 0);
	return buf_steal(&b, NULL);
}

static void assert_escapes_to(const char *s, unsigned flags, const char *want)
{
	char *e = escaped(s, flags);
	assert_string_equal(e, want);
	char *back = record_unescape(e, strlen(e), flags);
	assert_non_null(back);
	assert_string_equal(back, s != NULL ? s : "");
	free(back);
	free(e);
}

static void record_escape_exact_forms(void **state)
{
	(void)state;
	/* '%', <= 0x20, 0x7f, >= 0x80 escaped, uppercase; all else as is */
	assert_escapes_to("a b%\r\n\t\x01\x7f\xc3\xa9-~!:/", 0, "a%20b%25%0D%0A%09%01%7F%C3%A9-~!:/");
	assert_escapes_to("plain", 0, "plain");
	assert_escapes_to("", 0, "");
	assert_escapes_to(NULL, 0, "");
	assert_escapes_to("-", 0, "-");
	/* RECORD_ESC_DASH: "" is "-", "-" is "%2D", other dashes stay */
	assert_escapes_to("", RECORD_ESC_DASH, "-");
	assert_escapes_to(NULL, RECORD_ESC_DASH, "-");
	assert_escapes_to("-", RECORD_ESC_DASH, "%2D");
	assert_escapes_to("--", RECORD_ESC_DASH, "--");
	assert_escapes_to("a-", RECORD_ESC_DASH, "a-");
	assert_escapes_to("%2D", RECORD_ESC_DASH, "%252D");
	assert_escapes_to(" ", RECORD_ESC_DASH, "%20");
}

static void record_escape_round_trips_every_byte(void **state)
{
	(void)state;
	static const unsigned flags[] = { 0, RECORD_ESC_DASH, RECORD_ESC_LENIENT };
	char all[256];
	for (int i = 1; i < 256; i++)
		all[i - 1] = (char)i;
	all[255] = '\0';
	for (size_t k = 0; k < sizeof(flags) / sizeof(flags[0]); k++) {
		char *e = escaped(all, flags[k]);
		struct record_fields fs;
		assert_true(record_split(e, strlen(e), &fs));     /* one field, no line break */
		assert_int_equal(fs.n, 1);
		assert_null(strchr(e, '\n'));
		char *back = record_unescape(e, strlen(e), flags[k]);
		assert_non_null(back);
		assert_string_equal(back, all);
		free(back);
		free(e);
	}
}

static void assert_unescape_rejects(const char *f, unsigned flags)
{
	char *out = record_unescape(f, strlen(f), flags);
	if (out != NULL)
		fail_msg("accepted \"%s\" (flags %u) as \"%s\"", f, flags, out);
}

static void record_unescape_rejects_non_canonical(void **state)
{
	(void)state;
	/* under every flag: bytes that must be escaped, bad or cut %XX, %00 */
	static const char *const always[] = {
		"a b", "a\tb", "a\rb", "\x7f", "\xc3\xa9", "%", "a%", "%2", "a%2", "%G0", "%0G",
		"%0a", "%c3%a9", "%2d", "%00", "a%00b", "%%41",
	};
	static const unsigned flags[] = { 0, RECORD_ESC_DASH, RECORD_ESC_LENIENT };
	for (size_t k = 0; k < sizeof(flags) / sizeof(flags[0]); k++)
		for (size_t i = 0; i < sizeof(always) / sizeof(always[0]); i++)
			assert_unescape_rejects(always[i], flags[k]);
	/* strict (no RECORD_ESC_LENIENT): an escape of a byte written as itself */
	static const char *const strict[] = { "%41", "a%2Fb", "%7E", "%21", "a%2D", "%2Da", "%2D%2D" };
	for (size_t i = 0; i < sizeof(strict) / sizeof(strict[0]); i++) {
		assert_unescape_rejects(strict[i], 0);
		assert_unescape_rejects(strict[i], RECORD_ESC_DASH);
	}
	assert_unescape_rejects("%2D", 0);                  /* "-" is written "-" */
	assert_unescape_rejects("", RECORD_ESC_DASH);       /* "" is written "-" */
}

static void assert_unescapes_to(const char *f, unsigned flags, const char *want)
{
	char *out = record_unescape(f, strlen(f), flags);
	assert_non_null(out);
	assert_string_equal(out, want);
	free(out);
}

static void record_unescape_dash_and_lenient_forms(void **state)
{
	(void)state;
	assert_unescapes_to("-", RECORD_ESC_DASH, "");
	assert_unescapes_to("%2D", RECORD_ESC_DASH, "-");
	assert_unescapes_to("-", 0, "-");
	assert_unescapes_to("", 0, "");
	/* the folder index's reading: any %XX but %00 */
	assert_unescapes_to("%41", RECORD_ESC_LENIENT, "A");
	assert_unescapes_to("a%2Fb%2D", RECORD_ESC_LENIENT, "a/b-");
	assert_unescapes_to("-", RECORD_ESC_LENIENT, "-");
	assert_unescapes_to("%25%20", RECORD_ESC_LENIENT, "% ");
}

/* Every cut of an escaped field: accepted exactly when no %XX is split. */
static void record_unescape_every_cut(void **state)
{
	(void)state;
	const char *f = "a%20b%C3%A9%25";
	size_t len = strlen(f);
	for (size_t cut = 0; cut <= len; cut++) {
		bool whole = true;
		for (size_t i = 0; i < cut; i++)
			if (f[i] == '%') {
				whole = i + 3 <= cut;
				i += 2;
			}
		char *out = record_unescape(f, cut, 0);
		if (whole != (out != NULL))
			fail_msg("cut at %zu: %s", cut, out != NULL ? "accepted" : "rejected");
		free(out);
	}
}

static void record_escape_stops_at_buf_max(void **state)
{
	(void)state;
	struct buf b;
	buf_init(&b, 4);
	assert_int_equal(record_escape(&b, "ab", 0), 0);
	assert_int_equal(record_escape(&b, " ", 0), -1);    /* "%20" does not fit */
	assert_string_equal(b.data, "ab");
	assert_int_equal(record_escape(&b, "cde", 0), -1);
	buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(buf_append_stops_at_max),
		cmocka_unit_test(buf_getline_crlf_strict),
		cmocka_unit_test(b64_round_trip_and_rejects),
		cmocka_unit_test(size_and_duration_parsing),
		cmocka_unit_test(id_base32_is_13_chars),
		cmocka_unit_test(record_split_on_single_spaces),
		cmocka_unit_test(record_split_caps_the_field_count),
		cmocka_unit_test(record_num_strict_decimal_in_range),
		cmocka_unit_test(record_escape_exact_forms),
		cmocka_unit_test(record_escape_round_trips_every_byte),
		cmocka_unit_test(record_unescape_rejects_non_canonical),
		cmocka_unit_test(record_unescape_dash_and_lenient_forms),
		cmocka_unit_test(record_unescape_every_cut),
		cmocka_unit_test(record_escape_stops_at_buf_max),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
