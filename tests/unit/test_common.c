/* test_common.c: common/ buf, base64, size/duration parsing, ids. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "common/buf.h"
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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(buf_append_stops_at_max),
		cmocka_unit_test(buf_getline_crlf_strict),
		cmocka_unit_test(b64_round_trip_and_rejects),
		cmocka_unit_test(size_and_duration_parsing),
		cmocka_unit_test(id_base32_is_13_chars),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
