/* test_dkim.c: relay/dkim.c: relaxed canonicalisation (RFC 6376 §3.4.2,
 * §3.4.4, the examples of §3.4.5) fed whole, byte by byte and split at every
 * point; the From domain; key checks; signatures checked with OpenSSL
 * against canonical data written out by hand here (§3.7, RFC 8463 §3). The
 * signatures are also verified by dkimpy in tests/integration/test_dkim.py. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "common/buf.h"
#include "common/util.h"
#include "relay/relay.h"

/* ------------------------------------------------------------ helpers */

static void collect(void *arg, const char *p, size_t n)
{
	assert_int_equal(buf_append(arg, p, n), 0);
}

/* The relaxed canonical body of in, fed in pieces of `step` octets (0: whole). */
static char *canon_body(const char *in, size_t len, size_t step)
{
	struct buf out;
	struct dkim_body b;
	buf_init(&out, 1 << 20);
	dkim_body_init(&b, collect, &out);
	if (step == 0)
		step = len ? len : 1;
	for (size_t i = 0; i < len; i += step)
		dkim_body_feed(&b, in + i, len - i < step ? len - i : step);
	dkim_body_end(&b);
	return buf_steal(&out, NULL);
}

static void check_body(const char *in, const char *want)
{
	size_t len = strlen(in);
	for (size_t step = 0; step <= 1; step++) {
		char *got = canon_body(in, len, step);
		assert_string_equal(got, want);
		free(got);
	}
	/* two pieces, split at every point (a CR at the end of a piece, its LF in the next) */
	for (size_t cut = 0; cut <= len; cut++) {
		struct buf out;
		struct dkim_body b;
		buf_init(&out, 1 << 20);
		dkim_body_init(&b, collect, &out);
		dkim_body_feed(&b, in, cut);
		dkim_body_feed(&b, in + cut, len - cut);
		dkim_body_end(&b);
		char *got = buf_steal(&out, NULL);
		assert_string_equal(got, want);
		free(got);
	}
}

static char *canon_header(const char *field)
{
	struct buf out;
	buf_init(&out, 1 << 16);
	assert_int_equal(dkim_canon_header(field, strlen(field), &out), 0);
	return buf_steal(&out, NULL);
}

static char *pem_of(EVP_PKEY *pk, const EVP_CIPHER *enc)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data;
	assert_int_equal(PEM_write_bio_PrivateKey(bio, pk, enc, NULL, 0, NULL, (void *)"secret"), 1);
	long n = BIO_get_mem_data(bio, &data);
	char *r = malloc((size_t)n + 1);           /* not strndup: data is not NUL-terminated */
	memcpy(r, data, (size_t)n);
	r[n] = '\0';
	BIO_free(bio);
	return r;
}

/* ------------------------------------------------------------ canonicalisation */

static void test_header_rfc6376_example(void **state)
{
	(void)state;
	/* §3.4.5: "A: X" and "B : Y<HTAB><CRLF><HTAB>Z<SP><SP>" */
	char *a = canon_header("A: X");
	char *b = canon_header("B : Y\t\r\n\tZ  ");
	assert_string_equal(a, "a:X\r\n");
	assert_string_equal(b, "b:Y Z\r\n");
	free(a);
	free(b);
}

static void test_header_more(void **state)
{
	(void)state;
	static const char *const cases[][2] = {
		{ "Subject:", "subject:\r\n" },
		{ "SUBJECT:\t  \r\n  ", "subject:\r\n" },
		{ "To: a@b.example,\r\n   c@d.example ", "to:a@b.example, c@d.example\r\n" },
		{ "X-Mixed:\ta \t b\r\n\t\tc", "x-mixed:a b c\r\n" },
		{ "Content-Type: text/plain;\n charset=utf-8", "content-type:text/plain; charset=utf-8\r\n" },
		{ "K:  v:w  ", "k:v:w\r\n" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char *got = canon_header(cases[i][0]);
		assert_string_equal(got, cases[i][1]);
		free(got);
	}
	struct buf out;
	buf_init(&out, 64);
	assert_int_equal(dkim_canon_header("no colon", 8, &out), -1);
	buf_free(&out);
}

static void test_body_rfc6376_example(void **state)
{
	(void)state;
	/* §3.4.5: " C <CRLF>D <HTAB> E<CRLF><CRLF><CRLF>" -> " C<CRLF>D E<CRLF>" */
	check_body(" C \r\nD \t E\r\n\r\n\r\n", " C\r\nD E\r\n");
}

static void test_body_edges(void **state)
{
	(void)state;
	check_body("", "");                                     /* empty body: nothing (erratum 3192) */
	check_body("\r\n", "");
	check_body("\r\n\r\n\r\n", "");
	check_body(" \t \r\n\t\r\n", "");                       /* WSP-only lines are empty lines */
	check_body("abc", "abc\r\n");                           /* a final CRLF is added */
	check_body("abc   ", "abc\r\n");
	check_body("\r\n\r\nx\r\n", "\r\n\r\nx\r\n");           /* leading empty lines stay */
	check_body("  \r\n x", "\r\n x\r\n");                   /* leading WSP -> one SP */
	check_body("a \t\r\n\r\n b \r\n\r\n", "a\r\n\r\n b\r\n");
	check_body("a\tb  c\t \td", "a b c d\r\n");
	/* bare CR and LF end lines, as the relay sends them (mta_stuff) */
	check_body("a\nb\rc\r\n", "a\r\nb\r\nc\r\n");
	check_body("a\r\r\nb", "a\r\n\r\nb\r\n");
	check_body("a\n\n\n", "a\r\n");
}

/* ------------------------------------------------------------ From domain */

static void test_from_domain(void **state)
{
	(void)state;
	static const char *const ok[][2] = {
		{ "From: alice@Example.ORG\r\n\r\nbody", "example.org" },
		{ "Subject: x\r\nfrom :  Alice <alice@a.example>\r\n\r\n", "a.example" },
		{ "From: \"Smith, J <j@evil.example>\" <j@good.example>\r\n\r\n", "good.example" },
		{ "From: j@c.example (Jo <x@y.example>)\r\n\r\n", "c.example" },
		{ "From: a@one.example, b@two.example\r\n\r\n", "one.example" },
		{ "From: Alice\r\n <alice@folded.example>\r\n\r\n", "folded.example" },
		{ "To: x@to.example\nFrom: a@lf.example\n\nbody", "lf.example" },
		{ "From: first@first.example\r\nFrom: second@second.example\r\n\r\n", "first.example" },
	};
	char d[256];
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		assert_true(dkim_from_domain(ok[i][0], strlen(ok[i][0]), d, sizeof(d)));
		assert_string_equal(d, ok[i][1]);
	}
	static const char *const bad[] = {
		"To: a@b.example\r\n\r\n",                      /* no From */
		"From: undisclosed\r\n\r\n",                    /* no address */
		"From: a@[192.0.2.1]\r\n\r\n",                  /* domain literal */
		"From: group: a@b.example;\r\n\r\n",            /* group syntax */
		"From: <a@b.example\r\n\r\n",                   /* unclosed */
		"Subject: x\r\n\r\nFrom: a@body.example\r\n",   /* in the body */
		"From: a@bad_domain!.example\r\n\r\n",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_false(dkim_from_domain(bad[i], strlen(bad[i]), d, sizeof(d)));
	assert_false(dkim_from_domain(ok[0][0], strlen(ok[0][0]), d, 5));   /* too long for out */
}

/* ------------------------------------------------------------ keys */

static void test_key_checks(void **state)
{
	(void)state;
	char err[256];
	assert_null(dkim_key_parse("junk", 4, err, sizeof(err)));
	assert_non_null(strstr(err, "not a usable PEM private key"));

	EVP_PKEY *ec = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	char *pem = pem_of(ec, NULL);
	assert_null(dkim_key_parse(pem, strlen(pem), err, sizeof(err)));
	assert_string_equal(err, "unsupported key type EC (DKIM signs with RSA or Ed25519)");
	free(pem);
	EVP_PKEY_free(ec);

	EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)768);
	pem = pem_of(small, NULL);
	assert_null(dkim_key_parse(pem, strlen(pem), err, sizeof(err)));
	assert_non_null(strstr(err, "RSA key of 768 bits is too small"));
	free(pem);

	/* encrypted: refused, never a passphrase prompt */
	EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
	pem = pem_of(rsa, EVP_aes_128_cbc());
	assert_null(dkim_key_parse(pem, strlen(pem), err, sizeof(err)));
	free(pem);
	pem = pem_of(rsa, NULL);
	struct dkim_key *k = dkim_key_parse(pem, strlen(pem), err, sizeof(err));
	assert_non_null(k);
	assert_int_equal(dkim_key_alg(k), DKIM_RSA_SHA256);
	assert_int_equal(dkim_key_bits(k), 1024);
	dkim_key_unref(&k);
	assert_null(k);
	free(pem);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(small);

	assert_null(dkim_key_generate(DKIM_RSA_SHA256, 512, err, sizeof(err)));
}

static void test_dns_txt_ed25519_is_the_raw_key(void **state)
{
	(void)state;
	char err[256];
	struct dkim_key *k = dkim_key_generate(DKIM_ED25519_SHA256, 0, err, sizeof(err));
	assert_non_null(k);
	size_t len;
	char *pem = dkim_key_pem(k, &len);
	struct dkim_key *k2 = dkim_key_parse(pem, len, err, sizeof(err));   /* round trip */
	assert_non_null(k2);
	char *txt = dkim_dns_txt(k), *txt2 = dkim_dns_txt(k2);
	assert_string_equal(txt, txt2);
	assert_memory_equal(txt, "v=DKIM1; k=ed25519; p=", 22);
	unsigned char *raw;
	size_t rawlen;
	assert_int_equal(util_b64_decode(txt + 22, strlen(txt + 22), &raw, &rawlen), 0);
	assert_int_equal(rawlen, 32);                 /* RFC 8463 §4: not a SubjectPublicKeyInfo */
	free(raw);
	free(txt);
	free(txt2);
	free(pem);
	dkim_key_unref(&k);
	dkim_key_unref(&k2);
}

/* ------------------------------------------------------------ signatures */

static const char test_msg[] =
	"Received: from x (not signed)\r\n"
	"From: Alice <alice@example.org>\r\n"
	"To: bob@remote.example\r\n"
	"Subject:  Hello\r\n\t world \r\n"
	"X-Other: not signed\r\n"
	"Date: Mon, 01 Jan 2024 00:00:00 +0000\r\n"
	"\r\n"
	"Hi  Bob, \r\n"
	"\r\n"
	"\r\n";

/* What §3.7 hashes before the DKIM-Signature field: h=from:from:to:subject:subject:date,
 * each listed field canonicalised, bottom-up, nothing for the oversigned names. */
static const char test_canon_headers[] =
	"from:Alice <alice@example.org>\r\n"
	"to:bob@remote.example\r\n"
	"subject:Hello world\r\n"
	"date:Mon, 01 Jan 2024 00:00:00 +0000\r\n";
static const char test_canon_body[] = "Hi Bob,\r\n";

/* The value of tag `t` in the field, whitespace removed (malloc'ed). */
static char *tag_value(const char *field, const char *t)
{
	char pat[16];
	snprintf(pat, sizeof(pat), " %s=", t);
	const char *p = strstr(field, pat);
	if (p == NULL) {
		snprintf(pat, sizeof(pat), "\t%s=", t);
		p = strstr(field, pat);
	}
	assert_non_null(p);
	p += strlen(pat);
	char *r = calloc(1, strlen(p) + 1);
	size_t n = 0;
	for (; *p != '\0' && *p != ';'; p++)
		if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n')
			r[n++] = *p;
	return r;
}

static void sha256(const void *p, size_t len, unsigned char out[32])
{
	unsigned int n = 0;
	assert_int_equal(EVP_Digest(p, len, out, &n, EVP_sha256(), NULL), 1);
	assert_int_equal(n, 32);
}

/* Checks one field made by dkim_sign against the hand-made canonical data. */
static void verify_field(const char *field, size_t flen, EVP_PKEY *pk, enum dkim_alg alg)
{
	char *f = strndup(field, flen);
	/* lines of at most 78 columns */
	for (const char *l = f; *l != '\0';) {
		const char *e = strstr(l, "\r\n");
		assert_non_null(e);
		assert_true(e - l <= 78);
		l = e + 2;
	}
	char *h = tag_value(f, "h"), *bh = tag_value(f, "bh"), *b = tag_value(f, "b");
	assert_string_equal(h, "from:from:to:subject:subject:date");
	unsigned char digest[32];
	sha256(test_canon_body, strlen(test_canon_body), digest);
	char *want_bh = util_b64_encode(digest, 32);
	assert_string_equal(bh, want_bh);
	/* the field with b= emptied: its last "b=" is the signature's */
	char *bpos = strstr(f, " b=") ? strstr(f, " b=") : strstr(f, "\tb=");
	assert_non_null(bpos);
	bpos[3] = '\0';
	struct buf data;
	buf_init(&data, 1 << 16);
	buf_appends(&data, test_canon_headers);
	assert_int_equal(dkim_canon_header(f, strlen(f), &data), 0);
	data.len -= 2;                                /* no final CRLF (§3.7) */
	sha256(data.data, data.len, digest);
	unsigned char *sig;
	size_t siglen;
	assert_int_equal(util_b64_decode(b, strlen(b), &sig, &siglen), 0);
	if (alg == DKIM_RSA_SHA256) {
		EVP_PKEY_CTX *pc = EVP_PKEY_CTX_new_from_pkey(NULL, pk, NULL);
		assert_int_equal(EVP_PKEY_verify_init(pc), 1);
		assert_int_equal(EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING), 1);
		assert_int_equal(EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()), 1);
		assert_int_equal(EVP_PKEY_verify(pc, sig, siglen, digest, 32), 1);
		EVP_PKEY_CTX_free(pc);
	} else {
		/* RFC 8463 §3: Ed25519 over the 32-octet hash */
		EVP_MD_CTX *md = EVP_MD_CTX_new();
		assert_int_equal(EVP_DigestVerifyInit_ex(md, NULL, NULL, NULL, NULL, pk, NULL), 1);
		assert_int_equal(EVP_DigestVerify(md, sig, siglen, digest, 32), 1);
		EVP_MD_CTX_free(md);
	}
	free(sig);
	buf_free(&data);
	free(want_bh);
	free(h);
	free(bh);
	free(b);
	free(f);
}

static void test_sign_rsa_and_ed25519(void **state)
{
	(void)state;
	char err[256];
	EVP_PKEY *rsa = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048);
	EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	char *p1 = pem_of(ed, NULL), *p2 = pem_of(rsa, NULL);
	struct dkim_key *k1 = dkim_key_parse(p1, strlen(p1), err, sizeof(err));
	struct dkim_key *k2 = dkim_key_parse(p2, strlen(p2), err, sizeof(err));
	assert_non_null(k1);
	assert_non_null(k2);
	struct dkim_signer sg[2] = {
		{ "example.org", "ed2026", k1 },
		{ "example.org", "a-very-long-selector-name-to-force-folding-of-the-header", k2 },
	};
	size_t len;
	char *out = dkim_sign(sg, 2, 1700000000, test_msg, strlen(test_msg), &len, err, sizeof(err));
	assert_non_null(out);
	assert_int_equal(strlen(out), len);
	static const char start[] = "DKIM-Signature: v=1; a=ed25519-sha256; c=relaxed/relaxed; d=example.org;";
	assert_memory_equal(out, start, sizeof(start) - 1);
	char *second = strstr(out, "\r\nDKIM-Signature: v=1; a=rsa-sha256;");
	assert_non_null(second);
	second += 2;
	assert_non_null(strstr(out, " t=1700000000;"));
	verify_field(out, (size_t)(second - out), ed, DKIM_ED25519_SHA256);
	verify_field(second, len - (size_t)(second - out), rsa, DKIM_RSA_SHA256);
	free(out);

	/* the same message with LF line ends signs to the same hashes (the relay sends CRLF) */
	char *lf = strdup(test_msg);
	size_t n = 0;
	for (const char *p = test_msg; *p != '\0'; p++)
		if (*p != '\r')
			lf[n++] = *p;
	lf[n] = '\0';
	out = dkim_sign(sg, 1, 1700000000, lf, n, &len, err, sizeof(err));
	assert_non_null(out);
	verify_field(out, len, ed, DKIM_ED25519_SHA256);
	free(out);
	free(lf);

	dkim_key_unref(&k1);
	dkim_key_unref(&k2);
	free(p1);
	free(p2);
	EVP_PKEY_free(rsa);
	EVP_PKEY_free(ed);
}

static void test_sign_refusals_and_limits(void **state)
{
	(void)state;
	char err[256];
	struct dkim_key *k = dkim_key_generate(DKIM_ED25519_SHA256, 0, err, sizeof(err));
	struct dkim_signer sg = { "example.org", "s1", k };
	size_t len;
	const char *nofrom = "To: a@b.example\r\n\r\nbody\r\n";
	assert_null(dkim_sign(&sg, 1, 0, nofrom, strlen(nofrom), &len, err, sizeof(err)));
	assert_string_equal(err, "no From field");
	struct dkim_signer bad = { "example.org", "s 1", k };
	assert_null(dkim_sign(&bad, 1, 0, test_msg, strlen(test_msg), &len, err, sizeof(err)));
	assert_null(dkim_sign(&sg, 0, 0, test_msg, strlen(test_msg), &len, err, sizeof(err)));

	/* 20 To: fields: the bottom DKIM_MAX_INSTANCES are signed; h= lists "to" that often */
	struct buf m;
	buf_init(&m, 1 << 16);
	buf_appends(&m, "From: a@example.org\r\n");
	for (int i = 0; i < 20; i++)
		buf_printf(&m, "To: r%d@remote.example\r\n", i);
	buf_appends(&m, "\r\nbody\r\n");
	char *out = dkim_sign(&sg, 1, 0, m.data, m.len, &len, err, sizeof(err));
	assert_non_null(out);
	char *h = tag_value(out, "h");
	assert_string_equal(h, "from:from:to:to:to:to:to:to:to:to:subject");
	free(h);
	free(out);
	/* a header-only message (no empty line): the empty body hash */
	const char *headonly = "From: a@example.org\r\nSubject: x\r\n";
	out = dkim_sign(&sg, 1, 0, headonly, strlen(headonly), &len, err, sizeof(err));
	assert_non_null(out);
	char *bh = tag_value(out, "bh");
	assert_string_equal(bh, "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");   /* SHA-256("") */
	free(bh);
	free(out);
	buf_free(&m);
	dkim_key_unref(&k);
}

static void test_name_valid(void **state)
{
	(void)state;
	assert_true(dkim_name_valid("s2026"));
	assert_true(dkim_name_valid("a_b.c-d"));
	assert_false(dkim_name_valid(""));
	assert_false(dkim_name_valid("a..b"));
	assert_false(dkim_name_valid("a."));
	assert_false(dkim_name_valid("a b"));
	assert_false(dkim_name_valid("a;b"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_header_rfc6376_example),
		cmocka_unit_test(test_header_more),
		cmocka_unit_test(test_body_rfc6376_example),
		cmocka_unit_test(test_body_edges),
		cmocka_unit_test(test_from_domain),
		cmocka_unit_test(test_key_checks),
		cmocka_unit_test(test_dns_txt_ed25519_is_the_raw_key),
		cmocka_unit_test(test_sign_rsa_and_ed25519),
		cmocka_unit_test(test_sign_refusals_and_limits),
		cmocka_unit_test(test_name_valid),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
