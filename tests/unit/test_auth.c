/* test_auth.c: accounts, password and APOP checks, SASL exchanges run in
 * process against a libgsasl client, mechanism offering rules, recipient and
 * envelope-sender resolution, and the failed-login throttle (server/auth.c,
 * server/recipient.c, server/throttle.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <crypt.h>
#include <gsasl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "server/server.h"

/* `openssl passwd -6 -salt Xq3pQk9Lr2Tn sha-pass` */
#define SHA512_HASH "$6$Xq3pQk9Lr2Tn$9WyRZiV5btCjECro7zigcZ1JiBA8/e/oSO6xSDX3NTNaPXvh6c8saRUqPzaEPkof.0v0PNSDdefR3hfDjOvWW1"
/* RFC 1939 §7 example */
#define APOP_TS "<1896.697170952@dbc.mtview.ca.us>"
#define APOP_DIGEST "c4c9334bac560ecc979e58001b3e22fb"

static int client_cb(Gsasl *ctx, Gsasl_session *s, Gsasl_property prop);

static struct auth *A;             /* the fixture snapshot, built once */
static struct auth *R;             /* the recipient fixture: domains, aliases, catch-all */
static Gsasl *C;                   /* client side of the SASL round trips */
static char *yes_hash, *keys_sha1, *keys_sha256;

/* ---------------------------------------------------------------- fixture */

static char *mechs_all[] = { "PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1",
	"SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", "XOAUTH2", NULL };
static char *aliases_yes[] = { "postmaster@example.org", NULL };
static char *no_aliases[] = { NULL };

static void user_set(struct cfg_user *u, char *address, char *password, char *secret,
    char *s1, char *s256, char **aliases)
{
	memset(u, 0, sizeof(*u));
	u->address = address;
	u->password = password;
	u->secret = secret;
	u->scram_sha1 = s1;
	u->scram_sha256 = s256;
	u->aliases = aliases;
	while (aliases[u->naliases] != NULL)
		u->naliases++;
}

static struct auth *new_auth_domains(struct cfg_user *users, size_t n, char **domains,
    char *err, size_t errlen)
{
	struct config cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.auth.mechanisms = mechs_all;
	cfg.auth.nmechanisms = 9;
	cfg.users = users;
	cfg.nusers = n;
	cfg.users_file = "";
	cfg.domains = domains;
	while (domains != NULL && domains[cfg.ndomains] != NULL)
		cfg.ndomains++;
	return auth_new(&cfg, err, errlen);
}

static struct auth *new_auth(struct cfg_user *users, size_t n, bool plaintext, char *users_file,
    char *err, size_t errlen)
{
	struct config cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.auth.mechanisms = mechs_all;
	cfg.auth.nmechanisms = 9;
	cfg.auth.allow_plaintext = plaintext;
	cfg.users = users;
	cfg.nusers = n;
	cfg.users_file = users_file != NULL ? users_file : "";
	return auth_new(&cfg, err, errlen);
}

/* R: example.org and alias.example come from accounts, catch.example from
 * alice's catch-all (and bob), empty.example from `domains:` only (written in
 * upper case: the snapshot lowercases), and the literal there is ignored. */
static char *r_domains[] = { "Empty.Example", "[192.0.2.1]", NULL };
static char *aliases_alice[] = { "sales@example.org", "@catch.example", "postmaster@example.org", NULL };
static char *aliases_carol[] = { "info@alias.example", NULL };

static struct auth *new_rcpt_fixture(char *err, size_t errlen)
{
	struct cfg_user u[4];
	user_set(&u[0], "alice@example.org", "", "", "", "", aliases_alice);
	user_set(&u[1], "bob@catch.example", "", "", "", "", no_aliases);
	user_set(&u[2], "carol@example.org", "", "", "", "", aliases_carol);
	user_set(&u[3], "carol+work@example.org", "", "", "", "", no_aliases);
	return new_auth_domains(u, 4, r_domains, err, errlen);
}

static int group_setup(void **state)
{
	struct cfg_user u[4];
	char err[512] = "";
	yes_hash = auth_hash_password("yes-pass");
	keys_sha1 = auth_scram_keys("keys-pass", false);
	keys_sha256 = auth_scram_keys("keys-pass", true);
	if (yes_hash == NULL || keys_sha1 == NULL || keys_sha256 == NULL)
		return -1;
	user_set(&u[0], "yes@example.org", yes_hash, "", "", "", aliases_yes);
	user_set(&u[1], "sha@example.org", SHA512_HASH, "", "", "", no_aliases);
	user_set(&u[2], "mrose@example.org", "", "tanstaaf", "", "", no_aliases);
	user_set(&u[3], "keys@example.org", "", "", keys_sha1, keys_sha256, no_aliases);
	A = new_auth(u, 4, false, NULL, err, sizeof(err));
	if (A == NULL || (R = new_rcpt_fixture(err, sizeof(err))) == NULL) {
		fprintf(stderr, "auth_new: %s\n", err);
		return -1;
	}
	if (gsasl_init(&C) != GSASL_OK)
		return -1;
	gsasl_callback_set(C, client_cb);
	return 0;
}

static int group_teardown(void **state)
{
	auth_unref(&A);
	auth_unref(&R);
	gsasl_done(C);
	free(yes_hash);
	free(keys_sha1);
	free(keys_sha256);
	return 0;
}

static const struct auth_conn_info ci_tls = { .tls = true, .remote = "192.0.2.1",
	.hostname = "mail.example.org", .service = "smtp" };
static const struct auth_conn_info ci_plain = { .remote = "192.0.2.1",
	.hostname = "mail.example.org", .service = "smtp" };
static const struct auth_conn_info ci_loop = { .loopback = true, .remote = "127.0.0.1",
	.hostname = "mail.example.org", .service = "smtp" };
static const unsigned char exporter[32] = "tls-exporter bytes of this conn";
static const unsigned char exporter_other[32] = "tls-exporter bytes of other conn";
static const unsigned char unique[12] = "tls-unique..";

static struct auth_conn_info ci_cb(const unsigned char *exp, size_t explen,
    const unsigned char *uniq, size_t uniqlen)
{
	struct auth_conn_info ci = ci_tls;
	ci.cb_tls_exporter = exp;
	ci.cb_tls_exporter_len = explen;
	ci.cb_tls_unique = uniq;
	ci.cb_tls_unique_len = uniqlen;
	return ci;
}

/* ---------------------------------------------------------------- SASL client */

struct creds {
	const char *authid, *authzid, *password;
	const unsigned char *cb_exporter, *cb_unique;   /* 32 and 12 bytes */
};

static int set_b64(Gsasl_session *s, Gsasl_property p, const unsigned char *d, size_t n)
{
	if (d == NULL)
		return GSASL_NO_CALLBACK;
	char *b = util_b64_encode(d, n);
	int rc = gsasl_property_set(s, p, b);
	free(b);
	return rc;
}

static int client_cb(Gsasl *ctx, Gsasl_session *s, Gsasl_property prop)
{
	const struct creds *cr = gsasl_session_hook_get(s);
	const char *v = NULL;
	switch (prop) {
	case GSASL_AUTHID: v = cr->authid; break;
	case GSASL_AUTHZID: v = cr->authzid; break;
	case GSASL_PASSWORD: v = cr->password; break;
	case GSASL_SERVICE: v = "smtp"; break;
	case GSASL_HOSTNAME: v = "mail.example.org"; break;
	case GSASL_CB_TLS_EXPORTER: return set_b64(s, prop, cr->cb_exporter, 32);
	case GSASL_CB_TLS_UNIQUE: return set_b64(s, prop, cr->cb_unique, 12);
	default: break;
	}
	return v != NULL ? gsasl_property_set(s, prop, v) : GSASL_NO_CALLBACK;
}

struct xres {
	enum auth_result r;
	char user[64];                 /* auth_sasl_user() after AUTH_OK */
	char first[64];                /* the server's first challenge (base64) */
	char second[64];
	int client_final;              /* client's verdict on the server's final data, or -1 */
};

static bool client_step(Gsasl_session *cs, const char *challenge, char **resp_r)
{
	int rc = gsasl_step64(cs, challenge, resp_r);
	return rc == GSASL_OK || rc == GSASL_NEEDS_MORE;
}

static void record(struct xres *x, int i, const char *out)
{
	if (i < 2 && out != NULL)
		snprintf(i == 0 ? x->first : x->second, sizeof(x->first), "%s", out);
}

/* Runs one exchange; `ir`: the client sends an initial response (RFC 4954). */
static struct xres run_sasl(struct auth *a, const char *mech, const struct auth_conn_info *ci,
    const struct creds *cr, bool ir)
{
	struct xres x = { .client_final = -1 };
	enum auth_result r;
	struct auth_sasl *s = auth_sasl_start(a, mech, ci, &r);
	Gsasl_session *cs = NULL;
	char *in = NULL, *out = NULL;
	if (s == NULL || gsasl_client_start(C, mech, &cs) != GSASL_OK) {
		x.r = s == NULL ? r : AUTH_TEMPFAIL;
		auth_sasl_free(&s);
		return x;
	}
	gsasl_session_hook_set(cs, (void *)cr);
	if (ir && client_step(cs, "", &in) && *in == '\0') {
		free(in);
		in = strdup("=");
	}
	for (int i = 0; i < 8; i++) {
		x.r = auth_sasl_step(s, in, &out);
		free(in);
		in = NULL;
		if (x.r != AUTH_CONTINUE)
			break;
		record(&x, i, out);
		if (!client_step(cs, out, &in))
			in = strdup("Kg==");   /* "*" as data: the client gave up */
		free(out);
		out = NULL;
	}
	if (x.r == AUTH_OK) {
		snprintf(x.user, sizeof(x.user), "%s", auth_sasl_user(s));
		if (out != NULL && *out != '\0') {
			char *dummy = NULL;
			x.client_final = gsasl_step64(cs, out, &dummy);
			free(dummy);
		}
	}
	free(out);
	gsasl_finish(cs);
	auth_sasl_free(&s);
	return x;
}

static const struct creds c_yes = { "yes@example.org", NULL, "yes-pass", NULL, NULL };
static const struct creds c_yes_bad = { "yes@example.org", NULL, "wrong", NULL, NULL };
static const struct creds c_alias = { "Postmaster@Example.org", NULL, "yes-pass", NULL, NULL };
static const struct creds c_sha = { "sha@example.org", NULL, "sha-pass", NULL, NULL };
static const struct creds c_nobody = { "nobody@example.org", NULL, "yes-pass", NULL, NULL };
static const struct creds c_mrose = { "mrose@example.org", NULL, "tanstaaf", NULL, NULL };
static const struct creds c_mrose_bad = { "mrose@example.org", NULL, "tanstaa", NULL, NULL };
static const struct creds c_keys = { "keys@example.org", NULL, "keys-pass", NULL, NULL };
static const struct creds c_keys_bad = { "keys@example.org", NULL, "keys-pas", NULL, NULL };

/* ---------------------------------------------------------------- accounts, passwords */

static void test_lookup_is_case_insensitive_and_knows_aliases(void **state)
{
	assert_int_equal(auth_count(A), 4);
	assert_string_equal(auth_find(A, "YES@example.ORG")->address, "yes@example.org");
	assert_string_equal(auth_find(A, "postmaster@example.org")->address, "yes@example.org");
	assert_string_equal(auth_find(A, "keys@example.org")->address, "keys@example.org");
	assert_null(auth_find(A, "nobody@example.org"));
	assert_null(auth_find(A, "yes@example.or"));
}

static void test_hash_password_makes_yescrypt(void **state)
{
	assert_memory_equal(yes_hash, "$y$", 3);
	const struct account *acct = NULL;
	assert_int_equal(auth_check_password(A, "yes@example.org", "yes-pass", &acct), AUTH_OK);
	assert_string_equal(acct->address, "yes@example.org");
}

static void test_password_sha512_ok(void **state)
{
	const struct account *acct = NULL;
	assert_int_equal(auth_check_password(A, "sha@example.org", "sha-pass", &acct), AUTH_OK);
	assert_string_equal(acct->address, "sha@example.org");
}

static void test_password_bad_fails(void **state)
{
	const struct account *acct = (const struct account *)1;
	assert_int_equal(auth_check_password(A, "yes@example.org", "yes-pas", &acct), AUTH_FAIL);
	assert_null(acct);
	assert_int_equal(auth_check_password(A, "sha@example.org", "yes-pass", NULL), AUTH_FAIL);
	assert_int_equal(auth_check_password(A, "sha@example.org", "", NULL), AUTH_FAIL);
}

static void test_password_unknown_user_fails(void **state)
{
	const struct account *acct = (const struct account *)1;
	assert_int_equal(auth_check_password(A, "nobody@example.org", "yes-pass", &acct), AUTH_FAIL);
	assert_null(acct);
}

static void test_password_empty_hash_never_matches(void **state)
{
	/* keys@ and mrose@ have no crypt hash: no password login at all */
	assert_int_equal(auth_check_password(A, "keys@example.org", "", NULL), AUTH_FAIL);
	assert_int_equal(auth_check_password(A, "mrose@example.org", "tanstaaf", NULL), AUTH_FAIL);
}

static void test_password_alias_logs_in_as_account(void **state)
{
	const struct account *acct = NULL;
	assert_int_equal(auth_check_password(A, "Postmaster@Example.org", "yes-pass", &acct), AUTH_OK);
	assert_string_equal(acct->address, "yes@example.org");
}

/* ---------------------------------------------------------------- APOP */

static void test_apop_rfc1939_example_ok(void **state)
{
	const struct account *acct = NULL;
	assert_int_equal(auth_check_apop(A, "mrose@example.org", APOP_TS, APOP_DIGEST, &acct), AUTH_OK);
	assert_string_equal(acct->address, "mrose@example.org");
	assert_int_equal(auth_check_apop(A, "mrose@example.org", APOP_TS,
	    "C4C9334BAC560ECC979E58001B3E22FB", NULL), AUTH_OK);
}

static void test_apop_bad_digest_fails(void **state)
{
	const struct account *acct = (const struct account *)1;
	assert_int_equal(auth_check_apop(A, "mrose@example.org", APOP_TS,
	    "c4c9334bac560ecc979e58001b3e22fc", &acct), AUTH_FAIL);
	assert_null(acct);
	assert_int_equal(auth_check_apop(A, "mrose@example.org", APOP_TS,
	    "c4c9334bac560ecc979e58001b3e22f", NULL), AUTH_FAIL);
	assert_int_equal(auth_check_apop(A, "mrose@example.org", APOP_TS,
	    "c4c9334bac560ecc979e58001b3e22fbb", NULL), AUTH_FAIL);
	assert_int_equal(auth_check_apop(A, "mrose@example.org", "<other@host>", APOP_DIGEST, NULL), AUTH_FAIL);
	assert_int_equal(auth_check_apop(A, "nobody@example.org", APOP_TS, APOP_DIGEST, NULL), AUTH_FAIL);
}

static void test_apop_account_without_secret_fails(void **state)
{
	/* the digest an empty secret would give must not open the account */
	unsigned char md[16];
	char hex[33];
	unsigned int n;
	assert_int_equal(EVP_Digest(APOP_TS, strlen(APOP_TS), md, &n, EVP_md5(), NULL), 1);
	for (int i = 0; i < 16; i++)
		snprintf(hex + 2 * i, 3, "%02x", md[i]);
	assert_int_equal(auth_check_apop(A, "yes@example.org", APOP_TS, hex, NULL), AUTH_FAIL);
	assert_int_equal(auth_check_apop(A, "yes@example.org", APOP_TS, APOP_DIGEST, NULL), AUTH_FAIL);
}

/* ---------------------------------------------------------------- SCRAM keys */

static void check_scram_keys(const char *keys, Gsasl_hash hash, size_t hlen, const char *pass)
{
	char *copy = strdup(keys), *f[4], *p = copy;
	unsigned char *salt, *stored, *server_key;
	size_t saltlen, storedlen, serverlen;
	char salted[32], client[32], want_server[32], want_stored[32];
	for (int i = 0; i < 4; i++) {
		f[i] = p;
		p = strchr(p, ':');
		assert_true((p == NULL) == (i == 3));
		if (p != NULL)
			*p++ = '\0';
	}
	assert_string_equal(f[0], "4096");
	assert_int_equal(util_b64_decode(f[1], strlen(f[1]), &salt, &saltlen), 0);
	assert_int_equal(saltlen, 16);
	assert_int_equal(util_b64_decode(f[2], strlen(f[2]), &stored, &storedlen), 0);
	assert_int_equal(util_b64_decode(f[3], strlen(f[3]), &server_key, &serverlen), 0);
	assert_int_equal(storedlen, hlen);
	assert_int_equal(serverlen, hlen);
	/* gsasl's own RFC 5802 derivation must agree byte for byte */
	assert_int_equal(gsasl_scram_secrets_from_password(hash, pass, 4096, (char *)salt, saltlen,
	    salted, client, want_server, want_stored), GSASL_OK);
	assert_memory_equal(stored, want_stored, hlen);
	assert_memory_equal(server_key, want_server, hlen);
	free(salt);
	free(stored);
	free(server_key);
	free(copy);
}

static void test_scram_keys_match_gsasl_derivation(void **state)
{
	check_scram_keys(keys_sha1, GSASL_HASH_SHA1, 20, "keys-pass");
	check_scram_keys(keys_sha256, GSASL_HASH_SHA256, 32, "keys-pass");
	char *again = auth_scram_keys("keys-pass", true);
	assert_string_not_equal(again, keys_sha256);   /* fresh salt each time */
	free(again);
}

/* ---------------------------------------------------------------- SASL */

static void test_plain_with_initial_response_ok(void **state)
{
	struct xres x = run_sasl(A, "PLAIN", &ci_tls, &c_yes, true);
	assert_int_equal(x.r, AUTH_OK);
	assert_string_equal(x.user, "yes@example.org");
	assert_string_equal(x.first, "");
}

static void test_plain_without_initial_response_gets_empty_challenge(void **state)
{
	struct xres x = run_sasl(A, "PLAIN", &ci_tls, &c_sha, false);
	assert_int_equal(x.r, AUTH_OK);
	assert_string_equal(x.first, "");         /* RFC 4954 §4: "334 " then the response */
	assert_string_equal(x.user, "sha@example.org");
}

static void test_plain_alias_logs_in_as_account(void **state)
{
	struct xres x = run_sasl(A, "PLAIN", &ci_tls, &c_alias, true);
	assert_int_equal(x.r, AUTH_OK);
	assert_string_equal(x.user, "yes@example.org");
}

static void test_plain_bad_password_or_unknown_user_fails(void **state)
{
	assert_int_equal(run_sasl(A, "PLAIN", &ci_tls, &c_yes_bad, true).r, AUTH_FAIL);
	assert_int_equal(run_sasl(A, "PLAIN", &ci_tls, &c_nobody, true).r, AUTH_FAIL);
	/* an account with only a secret has no PLAIN password */
	assert_int_equal(run_sasl(A, "PLAIN", &ci_tls, &c_mrose, true).r, AUTH_FAIL);
}

static void test_plain_authzid_must_name_the_account(void **state)
{
	struct creds other = c_yes, same = c_yes, alias = c_yes;
	other.authzid = "sha@example.org";
	same.authzid = "yes@example.org";
	alias.authzid = "postmaster@example.org";
	assert_int_equal(run_sasl(A, "PLAIN", &ci_tls, &other, true).r, AUTH_FAIL);
	assert_int_equal(run_sasl(A, "PLAIN", &ci_tls, &same, true).r, AUTH_OK);
	assert_int_equal(run_sasl(A, "PLAIN", &ci_tls, &alias, true).r, AUTH_OK);
}

static void test_plain_empty_initial_response_is_badproto(void **state)
{
	enum auth_result r;
	char *out = (char *)1;
	struct auth_sasl *s = auth_sasl_start(A, "PLAIN", &ci_tls, &r);
	assert_non_null(s);
	assert_int_equal(auth_sasl_step(s, "=", &out), AUTH_BADPROTO);
	assert_null(out);
	assert_int_equal(auth_sasl_step(s, "AHllc0BleGFtcGxlLm9yZwB5ZXMtcGFzcw==", &out), AUTH_BADPROTO);
	auth_sasl_free(&s);
	assert_null(s);
}

static void test_plain_empty_response_after_challenge_is_badproto(void **state)
{
	enum auth_result r;
	char *out = NULL;
	struct auth_sasl *s = auth_sasl_start(A, "PLAIN", &ci_tls, &r);
	assert_int_equal(auth_sasl_step(s, NULL, &out), AUTH_CONTINUE);
	assert_string_equal(out, "");
	free(out);
	assert_int_equal(auth_sasl_step(s, "", &out), AUTH_BADPROTO);
	auth_sasl_free(&s);
}

static void test_bad_base64_is_badproto(void **state)
{
	static const char *const bad[] = { "!!!!", "abc", "AHllcw=", "AH=s", "AHl lcw==", "=" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		enum auth_result r;
		char *out = NULL;
		struct auth_sasl *s = auth_sasl_start(A, "PLAIN", &ci_tls, &r);
		assert_int_equal(auth_sasl_step(s, NULL, &out), AUTH_CONTINUE);
		free(out);
		assert_int_equal(auth_sasl_step(s, bad[i], &out), AUTH_BADPROTO);
		assert_null(out);
		auth_sasl_free(&s);
	}
	/* malformed PLAIN message (no NUL separators) */
	enum auth_result r;
	char *out = NULL;
	struct auth_sasl *s = auth_sasl_start(A, "PLAIN", &ci_tls, &r);
	assert_int_equal(auth_sasl_step(s, "eWVz", &out), AUTH_BADPROTO);
	auth_sasl_free(&s);
}

static void test_login_ok_with_exact_prompts(void **state)
{
	struct xres x = run_sasl(A, "LOGIN", &ci_tls, &c_yes, false);
	assert_int_equal(x.r, AUTH_OK);
	assert_string_equal(x.first, "VXNlciBOYW1l");     /* "User Name" */
	assert_string_equal(x.second, "UGFzc3dvcmQ=");    /* "Password" */
	assert_string_equal(x.user, "yes@example.org");
}

static void test_login_user_name_as_initial_response(void **state)
{
	struct xres x = run_sasl(A, "LOGIN", &ci_tls, &c_sha, true);
	assert_int_equal(x.r, AUTH_OK);
	assert_string_equal(x.first, "UGFzc3dvcmQ=");
	assert_string_equal(x.user, "sha@example.org");
	assert_int_equal(run_sasl(A, "LOGIN", &ci_tls, &c_yes_bad, false).r, AUTH_FAIL);
}

static void test_cram_md5_with_secret_ok(void **state)
{
	struct xres x = run_sasl(A, "CRAM-MD5", &ci_tls, &c_mrose, false);
	assert_int_equal(x.r, AUTH_OK);
	assert_string_equal(x.user, "mrose@example.org");
	assert_int_equal(run_sasl(A, "CRAM-MD5", &ci_tls, &c_mrose_bad, false).r, AUTH_FAIL);
}

static void test_cram_md5_without_secret_fails(void **state)
{
	assert_int_equal(run_sasl(A, "CRAM-MD5", &ci_tls, &c_yes, false).r, AUTH_FAIL);
	assert_int_equal(run_sasl(A, "CRAM-MD5", &ci_tls, &c_nobody, false).r, AUTH_FAIL);
}

static void test_cram_md5_initial_response_is_badproto(void **state)
{
	enum auth_result r;
	char *out = NULL;
	struct auth_sasl *s = auth_sasl_start(A, "CRAM-MD5", &ci_tls, &r);
	assert_int_equal(auth_sasl_step(s, "eWVz", &out), AUTH_BADPROTO);
	auth_sasl_free(&s);
}

static void test_digest_md5_with_secret_ok(void **state)
{
#if defined(__SANITIZE_ADDRESS__)
	/* libgsasl 2.2.0's DIGEST-MD5 *client* (the test's peer, not our server)
	 * reads past a buffer in its challenge parser; the server side is covered
	 * under ASan by the integration tests' own DIGEST-MD5 client. */
	skip();
#endif
	struct xres x = run_sasl(A, "DIGEST-MD5", &ci_tls, &c_mrose, false);
	assert_int_equal(x.r, AUTH_OK);
	assert_string_equal(x.user, "mrose@example.org");
	assert_int_equal(x.client_final, GSASL_OK);   /* rspauth verified by the client */
	assert_int_equal(run_sasl(A, "DIGEST-MD5", &ci_tls, &c_mrose_bad, false).r, AUTH_FAIL);
	assert_int_equal(run_sasl(A, "DIGEST-MD5", &ci_tls, &c_yes, false).r, AUTH_FAIL);
}

static void check_scram(const char *mech, const struct creds *cr, const char *user)
{
	struct xres x = run_sasl(A, mech, &ci_tls, cr, true);
	assert_int_equal(x.r, AUTH_OK);
	assert_string_equal(x.user, user);
	assert_int_equal(x.client_final, GSASL_OK);   /* server signature verified */
	x = run_sasl(A, mech, &ci_tls, cr, false);  /* empty challenge first */
	assert_int_equal(x.r, AUTH_OK);
	assert_string_equal(x.first, "");
}

static void test_scram_via_secret_ok(void **state)
{
	check_scram("SCRAM-SHA-1", &c_mrose, "mrose@example.org");
	check_scram("SCRAM-SHA-256", &c_mrose, "mrose@example.org");
	assert_int_equal(run_sasl(A, "SCRAM-SHA-256", &ci_tls, &c_mrose_bad, true).r, AUTH_FAIL);
}

static void test_scram_via_stored_keys_ok(void **state)
{
	check_scram("SCRAM-SHA-1", &c_keys, "keys@example.org");
	check_scram("SCRAM-SHA-256", &c_keys, "keys@example.org");
	assert_int_equal(run_sasl(A, "SCRAM-SHA-1", &ci_tls, &c_keys_bad, true).r, AUTH_FAIL);
	assert_int_equal(run_sasl(A, "SCRAM-SHA-256", &ci_tls, &c_keys_bad, true).r, AUTH_FAIL);
}

static void test_scram_without_credentials_fails(void **state)
{
	/* yes@ has only a crypt hash; nobody@ does not exist */
	assert_int_equal(run_sasl(A, "SCRAM-SHA-256", &ci_tls, &c_yes, true).r, AUTH_FAIL);
	assert_int_equal(run_sasl(A, "SCRAM-SHA-256", &ci_tls, &c_nobody, true).r, AUTH_FAIL);
}

static void test_scram_authzid_mismatch_fails(void **state)
{
	struct creds cr = c_keys;
	cr.authzid = "yes@example.org";
	assert_int_equal(run_sasl(A, "SCRAM-SHA-256", &ci_tls, &cr, true).r, AUTH_FAIL);
}

static void test_scram_plus_tls_exporter(void **state)
{
	struct auth_conn_info ci = ci_cb(exporter, 32, NULL, 0);
	struct creds same = c_keys, other = c_keys;
	same.cb_exporter = exporter;
	other.cb_exporter = exporter_other;
	struct xres x = run_sasl(A, "SCRAM-SHA-256-PLUS", &ci, &same, true);
	assert_int_equal(x.r, AUTH_OK);
	assert_string_equal(x.user, "keys@example.org");
	assert_int_equal(run_sasl(A, "SCRAM-SHA-256-PLUS", &ci, &other, true).r, AUTH_FAIL);
	same.authid = "mrose@example.org";
	same.password = "tanstaaf";
	assert_int_equal(run_sasl(A, "SCRAM-SHA-1-PLUS", &ci, &same, true).r, AUTH_OK);
}

static void test_scram_plus_tls_unique(void **state)
{
	struct auth_conn_info ci = ci_cb(NULL, 0, unique, 12);
	struct creds cr = c_keys;
	cr.cb_unique = unique;
	assert_int_equal(run_sasl(A, "SCRAM-SHA-256-PLUS", &ci, &cr, true).r, AUTH_OK);
	/* a client binding to tls-exporter where we only have tls-unique */
	cr.cb_unique = NULL;
	cr.cb_exporter = exporter;
	assert_int_equal(run_sasl(A, "SCRAM-SHA-256-PLUS", &ci, &cr, true).r, AUTH_FAIL);
}

static enum auth_result scram_first(const struct auth_conn_info *ci, const char *msg)
{
	enum auth_result r;
	char *in = util_b64_encode(msg, strlen(msg)), *out = NULL;
	struct auth_sasl *s = auth_sasl_start(A, "SCRAM-SHA-256", ci, &r);
	r = auth_sasl_step(s, in, &out);
	free(in);
	free(out);
	auth_sasl_free(&s);
	return r;
}

/* The salt and iteration count ("s=...,i=...") of the server-first message */
static void scram_salt_of(const struct auth_conn_info *ci, const char *mech, const char *user,
    char *salt, size_t len)
{
	enum auth_result r;
	char *first = xasprintf("%s,,n=%s,r=fyko+d2lbbFgONRv9qkxdawL",
	    strstr(mech, "PLUS") ? "p=tls-exporter" : "n", user);
	char *in = util_b64_encode(first, strlen(first)), *out = NULL;
	unsigned char *dec;
	size_t declen;
	struct auth_sasl *s = auth_sasl_start(A, mech, ci, &r);
	assert_int_equal(auth_sasl_step(s, in, &out), AUTH_CONTINUE);
	assert_int_equal(util_b64_decode(out, strlen(out), &dec, &declen), 0);
	assert_non_null(strstr((char *)dec, ",s="));
	snprintf(salt, len, "%s", strstr((char *)dec, ",s=") + 1);
	free(dec);
	free(out);
	free(in);
	free(first);
	auth_sasl_free(&s);
}

static void test_scram_salts_do_not_reveal_accounts(void **state)
{
	/* unknown names get a made-up salt that stays the same, like stored keys do */
	struct auth_conn_info ci = ci_cb(exporter, 32, NULL, 0);
	char s1[128], s2[128], s3[128], k1[128], k2[128];
	scram_salt_of(&ci_tls, "SCRAM-SHA-256", "nobody@example.org", s1, sizeof(s1));
	scram_salt_of(&ci_tls, "SCRAM-SHA-256", "nobody@example.org", s2, sizeof(s2));
	scram_salt_of(&ci, "SCRAM-SHA-256-PLUS", "nobody@example.org", s3, sizeof(s3));
	assert_string_equal(s1, s2);
	assert_string_equal(s1, s3);
	assert_int_equal(strlen(s1), strlen("s=") + 24 + strlen(",i=4096"));
	assert_string_equal(s1 + strlen(s1) - 7, ",i=4096");
	scram_salt_of(&ci_tls, "SCRAM-SHA-256", "keys@example.org", k1, sizeof(k1));
	scram_salt_of(&ci, "SCRAM-SHA-256-PLUS", "keys@example.org", k2, sizeof(k2));
	assert_string_equal(k1, k2);
	char *want = xasprintf("s=%.24s,i=4096", strchr(keys_sha256, ':') + 1);
	assert_string_equal(k1, want);
	free(want);
}

static void test_scram_y_flag_refused_when_plus_offered(void **state)
{
	/* RFC 5802 §6: "y" says the client could bind but believes the server
	 * cannot; when this connection offers -PLUS that is a downgrade. (gsasl's
	 * own client refuses to send "y", hence the hand-made message.) */
	struct auth_conn_info with_cb = ci_cb(exporter, 32, NULL, 0);
	const char *y = "y,,n=keys@example.org,r=fyko+d2lbbFgONRv9qkxdawL";
	assert_int_equal(scram_first(&with_cb, y), AUTH_FAIL);
	assert_int_equal(scram_first(&ci_tls, y), AUTH_CONTINUE);
	assert_int_equal(scram_first(&with_cb, "n,,n=keys@example.org,r=fyko+d2lbbFgONRv9qkxdawL"),
	    AUTH_CONTINUE);
	assert_int_equal(scram_first(&ci_tls, "n,,n=keys@example.org"), AUTH_BADPROTO);
}

static void test_step_after_end_is_badproto(void **state)
{
	enum auth_result r;
	char *out = NULL;
	struct auth_sasl *s = auth_sasl_start(A, "PLAIN", &ci_tls, &r);
	assert_int_equal(r, AUTH_CONTINUE);
	assert_string_equal(auth_sasl_mech(s), "PLAIN");
	assert_int_equal(auth_sasl_step(s, "AHllc0BleGFtcGxlLm9yZwB5ZXMtcGFzcw==", &out), AUTH_OK);
	assert_string_equal(out, "");
	assert_string_equal(auth_sasl_user(s), "yes@example.org");
	free(out);
	assert_int_equal(auth_sasl_step(s, "AHllc0BleGFtcGxlLm9yZwB5ZXMtcGFzcw==", &out), AUTH_BADPROTO);
	assert_null(out);
	auth_sasl_free(&s);
}

/* ---------------------------------------------------------------- offering rules */

static void assert_mechs(const char *const *got, const char *const *want)
{
	size_t i = 0;
	for (; want[i] != NULL; i++) {
		assert_non_null(got[i]);
		assert_string_equal(got[i], want[i]);
	}
	assert_null(got[i]);
}

static const char *const m_none[] = { NULL };
static const char *const m_noplus[] = { "PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1",
	"SCRAM-SHA-256", NULL };
static const char *const m_plus[] = { "PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1",
	"SCRAM-SHA-1-PLUS", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", NULL };
static const char *const m_simple[] = { "PLAIN", "LOGIN", NULL };

static void test_no_mechanisms_without_tls(void **state)
{
	enum auth_result r = AUTH_OK;
	assert_mechs(auth_mechanisms(A, &ci_plain), m_none);
	assert_false(auth_mech_allowed(A, "PLAIN", &ci_plain));
	assert_false(auth_mech_allowed(A, "SCRAM-SHA-256", &ci_plain));
	assert_null(auth_sasl_start(A, "PLAIN", &ci_plain, &r));
	assert_int_equal(r, AUTH_BADPROTO);
}

static void test_mechanisms_on_tls_loopback_and_plaintext(void **state)
{
	struct auth_conn_info loop_cb = ci_loop;
	loop_cb.cb_tls_exporter = exporter;
	loop_cb.cb_tls_exporter_len = 32;
	struct auth_conn_info tls_cb = ci_cb(exporter, 32, NULL, 0);
	/* XOAUTH2 is configured but not supported: never offered */
	assert_mechs(auth_mechanisms(A, &ci_tls), m_noplus);
	assert_mechs(auth_mechanisms(A, &ci_loop), m_noplus);
	assert_mechs(auth_mechanisms(A, &loop_cb), m_noplus);   /* binding data without TLS */
	assert_mechs(auth_mechanisms(A, &tls_cb), m_plus);
	assert_true(auth_mech_allowed(A, "plain", &ci_loop));
	assert_false(auth_mech_allowed(A, "XOAUTH2", &ci_tls));
	assert_false(auth_mech_allowed(A, "SCRAM-SHA-256-PLUS", &ci_tls));
	assert_true(auth_mech_allowed(A, "SCRAM-SHA-256-PLUS", &tls_cb));
	enum auth_result r = AUTH_OK;
	assert_null(auth_sasl_start(A, "SCRAM-SHA-256-PLUS", &ci_tls, &r));
	assert_int_equal(r, AUTH_BADPROTO);
	assert_null(auth_sasl_start(A, "GSSAPI", &ci_tls, &r));
	assert_int_equal(r, AUTH_BADPROTO);
}

static void test_allow_plaintext_offers_without_tls(void **state)
{
	struct cfg_user u;
	char err[256] = "";
	user_set(&u, "yes@example.org", yes_hash, "", "", "", no_aliases);
	struct auth *a = new_auth(&u, 1, true, NULL, err, sizeof(err));
	assert_non_null(a);
	assert_mechs(auth_mechanisms(a, &ci_plain), m_simple);    /* no secret, no keys: see below */
	struct xres x = run_sasl(a, "PLAIN", &ci_plain, &c_yes, true);
	assert_int_equal(x.r, AUTH_OK);
	auth_unref(&a);
	assert_null(a);
}

/* Design §4: a mechanism is offered (and allowed) only when some account of
 * the snapshot has the credentials it needs. */
static struct auth *one_account(char *secret, char *s1, char *s256)
{
	struct cfg_user u[2];
	char err[256] = "";
	user_set(&u[0], "yes@example.org", yes_hash, "", "", "", no_aliases);
	user_set(&u[1], "other@example.org", "", secret, s1, s256, no_aliases);
	struct auth *a = new_auth(u, 2, false, NULL, err, sizeof(err));
	if (a == NULL)
		fail_msg("%s", err);
	return a;
}

static void assert_offers(struct auth *a, const char *const *noplus, const char *const *plus)
{
	struct auth_conn_info tls_cb = ci_cb(exporter, 32, NULL, 0);
	assert_mechs(auth_mechanisms(a, &ci_tls), noplus);
	assert_mechs(auth_mechanisms(a, &tls_cb), plus);
	for (size_t i = 0; mechs_all[i] != NULL; i++) {
		bool offered = false;
		for (size_t j = 0; plus[j] != NULL; j++)
			offered |= strcmp(plus[j], mechs_all[i]) == 0;
		assert_int_equal(auth_mech_allowed(a, mechs_all[i], &tls_cb), offered);
		enum auth_result r = AUTH_OK;
		struct auth_sasl *s = auth_sasl_start(a, mechs_all[i], &tls_cb, &r);
		assert_int_equal(s != NULL, offered);
		assert_int_equal(r, offered ? AUTH_CONTINUE : AUTH_BADPROTO);
		auth_sasl_free(&s);
	}
	auth_unref(&a);
}

static void test_no_secret_no_keys_offers_plain_and_login_only(void **state)
{
	assert_offers(one_account("", "", ""), m_simple, m_simple);
}

static void test_no_accounts_offers_plain_and_login_only(void **state)
{
	char err[256] = "";
	struct auth *a = new_auth(NULL, 0, false, NULL, err, sizeof(err));
	assert_non_null(a);
	assert_offers(a, m_simple, m_simple);
}

static void test_one_secret_offers_cram_digest_and_scram(void **state)
{
	assert_offers(one_account("s3cret", "", ""), m_noplus, m_plus);
}

static void test_sha256_keys_offer_scram_sha256_only(void **state)
{
	static const char *const noplus[] = { "PLAIN", "LOGIN", "SCRAM-SHA-256", NULL };
	static const char *const plus[] = { "PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", NULL };
	assert_offers(one_account("", "", keys_sha256), noplus, plus);
}

static void test_sha1_keys_offer_scram_sha1_only(void **state)
{
	static const char *const noplus[] = { "PLAIN", "LOGIN", "SCRAM-SHA-1", NULL };
	static const char *const plus[] = { "PLAIN", "LOGIN", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS", NULL };
	assert_offers(one_account("", keys_sha1, ""), noplus, plus);
}

/* the rule looks at every account of the snapshot, the users file's too */
static void test_secret_in_users_file_counts(void **state)
{
	char path[] = "/tmp/test_auth_mechsXXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char *yaml = "users:\n  - { address: file@example.org, secret: s3cret }\n";
	assert_int_equal(util_write_all(fd, yaml, strlen(yaml)), 0);
	close(fd);
	struct cfg_user u;
	char err[256] = "";
	user_set(&u, "yes@example.org", yes_hash, "", "", "", no_aliases);
	struct auth *a = new_auth(&u, 1, false, path, err, sizeof(err));
	unlink(path);
	assert_non_null(a);
	assert_offers(a, m_noplus, m_plus);
}

/* ---------------------------------------------------------------- snapshot building */

static void test_duplicate_address_or_alias_rejected(void **state)
{
	struct cfg_user u[2];
	char err[256] = "";
	user_set(&u[0], "yes@example.org", yes_hash, "", "", "", aliases_yes);
	user_set(&u[1], "postmaster@example.org", SHA512_HASH, "", "", "", no_aliases);
	assert_null(new_auth(u, 2, false, NULL, err, sizeof(err)));
	assert_string_equal(err, "duplicate address or alias: postmaster@example.org");
}

static void test_bad_scram_keys_rejected(void **state)
{
	struct cfg_user u;
	char err[256] = "";
	user_set(&u, "bad@example.org", "", "", "", "4096:c2FsdA==:c2hvcnQ=:c2hvcnQ=", no_aliases);
	assert_null(new_auth(&u, 1, false, NULL, err, sizeof(err)));
	assert_string_equal(err,
	    "bad@example.org: bad scram_sha256: want <iter>:<salt>:<StoredKey>:<ServerKey> in base64");
	user_set(&u, "bad@example.org", "", "", keys_sha256, "", no_aliases);   /* 32-byte keys as SHA-1 */
	assert_null(new_auth(&u, 1, false, NULL, err, sizeof(err)));
	assert_string_equal(err,
	    "bad@example.org: bad scram_sha1: want <iter>:<salt>:<StoredKey>:<ServerKey> in base64");
}

static void test_users_file_adds_accounts(void **state)
{
	char path[] = "/tmp/test_auth_usersXXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char *yaml = "users:\n  - address: file@example.org\n    password: \"" SHA512_HASH "\"\n";
	assert_int_equal(util_write_all(fd, yaml, strlen(yaml)), 0);
	close(fd);
	struct cfg_user u;
	char err[256] = "";
	user_set(&u, "yes@example.org", yes_hash, "", "", "", no_aliases);
	struct auth *a = new_auth(&u, 1, false, path, err, sizeof(err));
	unlink(path);
	assert_non_null(a);
	assert_int_equal(auth_count(a), 2);
	assert_int_equal(auth_check_password(a, "file@example.org", "sha-pass", NULL), AUTH_OK);
	auth_unref(&a);
}

static void test_users_file_error_passed_through(void **state)
{
	struct cfg_user u;
	char err[256] = "";
	char path[] = "/tmp/test_auth_users_XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	const char bad[] = "users:\n  - adress: a@example.org\n";
	assert_int_equal(write(fd, bad, sizeof(bad) - 1), (ssize_t)(sizeof(bad) - 1));
	close(fd);
	user_set(&u, "yes@example.org", yes_hash, "", "", "", no_aliases);
	assert_null(new_auth(&u, 1, false, path, err, sizeof(err)));
	assert_non_null(strstr(err, path));
	assert_non_null(strstr(err, "unknown key 'adress'"));
	unlink(path);
}

static void test_sasl_session_keeps_snapshot_alive(void **state)
{
	struct cfg_user u;
	char err[256] = "";
	enum auth_result r;
	char *out = NULL;
	user_set(&u, "yes@example.org", yes_hash, "", "", "", no_aliases);
	struct auth *a = new_auth(&u, 1, false, NULL, err, sizeof(err));
	struct auth_sasl *s = auth_sasl_start(a, "PLAIN", &ci_tls, &r);
	auth_unref(&a);     /* a reload dropped it; the exchange still holds it */
	assert_int_equal(auth_sasl_step(s, "AHllc0BleGFtcGxlLm9yZwB5ZXMtcGFzcw==", &out), AUTH_OK);
	assert_string_equal(auth_sasl_user(s), "yes@example.org");
	free(out);
	auth_sasl_free(&s);
}

/* ---------------------------------------------------------------- recipients */

/* auth_lookup_recipient on R: checks the result code, returns the account's
 * address (NULL, and checked NULL, for anything but AUTH_RCPT_LOCAL) */
static const char *rcpt(const char *local, const char *domain, enum auth_rcpt want)
{
	const struct account *acct = (const struct account *)1;
	assert_int_equal(auth_lookup_recipient(R, local, domain, &acct), want);
	if (want != AUTH_RCPT_LOCAL) {
		assert_null(acct);
		return NULL;
	}
	assert_non_null(acct);
	return acct->address;
}

static void test_local_domains_are_config_and_account_domains(void **state)
{
	assert_true(auth_is_local_domain(R, "example.org"));     /* an account address */
	assert_true(auth_is_local_domain(R, "alias.example"));   /* an alias only */
	assert_true(auth_is_local_domain(R, "catch.example"));
	assert_true(auth_is_local_domain(R, "empty.example"));   /* domains: only */
	assert_true(auth_is_local_domain(R, "EXAMPLE.Org"));
	assert_true(auth_is_local_domain(R, "EMPTY.example"));
	assert_false(auth_is_local_domain(R, "remote.example"));
	assert_false(auth_is_local_domain(R, "sub.example.org"));
	assert_false(auth_is_local_domain(R, "org"));
	assert_false(auth_is_local_domain(R, ""));
	assert_false(auth_is_local_domain(R, NULL));
}

static void test_domain_literal_never_local(void **state)
{
	/* even when `domains:` lists it */
	assert_false(auth_is_local_domain(R, "[192.0.2.1]"));
	assert_null(rcpt("alice", "[192.0.2.1]", AUTH_RCPT_REMOTE));
	assert_null(rcpt("alice", "[IPv6:2001:db8::1]", AUTH_RCPT_REMOTE));
}

static void test_rcpt_exact_address(void **state)
{
	assert_string_equal(rcpt("alice", "example.org", AUTH_RCPT_LOCAL), "alice@example.org");
	assert_string_equal(rcpt("bob", "catch.example", AUTH_RCPT_LOCAL), "bob@catch.example");
	assert_string_equal(rcpt("carol", "example.org", AUTH_RCPT_LOCAL), "carol@example.org");
}

static void test_rcpt_local_part_and_domain_case_insensitive(void **state)
{
	assert_string_equal(rcpt("ALICE", "example.org", AUTH_RCPT_LOCAL), "alice@example.org");
	assert_string_equal(rcpt("alice", "Example.ORG", AUTH_RCPT_LOCAL), "alice@example.org");
	assert_string_equal(rcpt("PostMaster", "EXAMPLE.ORG", AUTH_RCPT_LOCAL), "alice@example.org");
}

static void test_rcpt_alias_delivers_to_account(void **state)
{
	assert_string_equal(rcpt("sales", "example.org", AUTH_RCPT_LOCAL), "alice@example.org");
	assert_string_equal(rcpt("info", "alias.example", AUTH_RCPT_LOCAL), "carol@example.org");
}

static void test_rcpt_plus_tag_on_address(void **state)
{
	assert_string_equal(rcpt("alice+news", "example.org", AUTH_RCPT_LOCAL), "alice@example.org");
	assert_string_equal(rcpt("Alice+News", "EXAMPLE.org", AUTH_RCPT_LOCAL), "alice@example.org");
	/* the first '+' splits: the tag is "a+b" */
	assert_string_equal(rcpt("alice+a+b", "example.org", AUTH_RCPT_LOCAL), "alice@example.org");
}

static void test_rcpt_plus_tag_on_alias(void **state)
{
	assert_string_equal(rcpt("sales+q3", "example.org", AUTH_RCPT_LOCAL), "alice@example.org");
	assert_string_equal(rcpt("info+web", "alias.example", AUTH_RCPT_LOCAL), "carol@example.org");
}

static void test_rcpt_exact_name_with_plus_beats_tag(void **state)
{
	assert_string_equal(rcpt("carol+work", "example.org", AUTH_RCPT_LOCAL), "carol+work@example.org");
	assert_string_equal(rcpt("carol+home", "example.org", AUTH_RCPT_LOCAL), "carol@example.org");
}

static void test_rcpt_plus_at_start_or_end_is_no_tag(void **state)
{
	assert_null(rcpt("+alice", "example.org", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("alice+", "example.org", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("alice+x+", "example.org", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("+", "example.org", AUTH_RCPT_UNKNOWN));
}

static void test_rcpt_catch_all_takes_rest_of_its_domain(void **state)
{
	assert_string_equal(rcpt("anyone", "catch.example", AUTH_RCPT_LOCAL), "alice@example.org");
	assert_string_equal(rcpt("x+y", "CATCH.example", AUTH_RCPT_LOCAL), "alice@example.org");
	assert_string_equal(rcpt("+", "catch.example", AUTH_RCPT_LOCAL), "alice@example.org");
}

static void test_rcpt_exact_and_tag_beat_catch_all(void **state)
{
	assert_string_equal(rcpt("BOB", "catch.example", AUTH_RCPT_LOCAL), "bob@catch.example");
	assert_string_equal(rcpt("bob+x", "catch.example", AUTH_RCPT_LOCAL), "bob@catch.example");
}

static void test_catch_all_does_not_capture_other_domains(void **state)
{
	/* alice's catch-all is for catch.example only */
	assert_null(rcpt("nobody", "example.org", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("nobody", "alias.example", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("nobody", "sub.catch.example", AUTH_RCPT_REMOTE));
}

static void test_rcpt_unknown_local_user(void **state)
{
	assert_null(rcpt("nobody", "example.org", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("alic", "example.org", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("alice", "alias.example", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("postmaster", "empty.example", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("", "example.org", AUTH_RCPT_UNKNOWN));        /* quoted "" */
	assert_null(rcpt(NULL, "example.org", AUTH_RCPT_UNKNOWN));
	assert_int_equal(auth_lookup_recipient(R, "nobody", "example.org", NULL), AUTH_RCPT_UNKNOWN);
}

static void test_rcpt_remote_domain(void **state)
{
	assert_null(rcpt("alice", "remote.example", AUTH_RCPT_REMOTE));
	assert_null(rcpt("alice", "example.org.remote.example", AUTH_RCPT_REMOTE));
	assert_null(rcpt("alice", "", AUTH_RCPT_REMOTE));              /* <Postmaster> has no domain */
	assert_null(rcpt("alice", NULL, AUTH_RCPT_REMOTE));
}

static void test_rcpt_percent_and_bang_are_plain_characters(void **state)
{
	/* no '%' hack or UUCP path: looked up literally, never relayed */
	assert_null(rcpt("alice%remote.example", "example.org", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("user%remote.example", "example.org", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("remote.example!alice", "example.org", AUTH_RCPT_UNKNOWN));
	assert_string_equal(rcpt("bob%remote.example", "catch.example", AUTH_RCPT_LOCAL),
	    "alice@example.org");
}

static void test_rcpt_quoted_at_sign_is_a_plain_character(void **state)
{
	/* "user@remote.example"@example.org: the parser unquoted the local part */
	assert_null(rcpt("user@remote.example", "example.org", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("alice@example.org", "example.org", AUTH_RCPT_UNKNOWN));
	assert_null(rcpt("alice@", "example.org", AUTH_RCPT_UNKNOWN));
}

static void test_catch_all_is_no_login_name(void **state)
{
	assert_null(auth_find(R, "@catch.example"));
	assert_string_equal(auth_find(R, "SALES@example.org")->address, "alice@example.org");
}

/* ---------------------------------------------------------------- envelope senders */

static void test_sender_own_address_and_aliases(void **state)
{
	assert_true(auth_sender_allowed(R, "alice@example.org", "alice", "example.org"));
	assert_true(auth_sender_allowed(R, "alice@example.org", "Alice", "EXAMPLE.org"));
	assert_true(auth_sender_allowed(R, "alice@example.org", "sales", "example.org"));
	assert_true(auth_sender_allowed(R, "alice@example.org", "postmaster", "example.org"));
	assert_true(auth_sender_allowed(R, "carol@example.org", "info", "alias.example"));
}

static void test_sender_plus_tag_of_address_and_alias(void **state)
{
	assert_true(auth_sender_allowed(R, "alice@example.org", "alice+lists", "example.org"));
	assert_true(auth_sender_allowed(R, "alice@example.org", "sales+q3", "example.org"));
	assert_false(auth_sender_allowed(R, "alice@example.org", "+alice", "example.org"));
}

static void test_sender_catch_all_domain(void **state)
{
	assert_true(auth_sender_allowed(R, "alice@example.org", "anything", "catch.example"));
	assert_false(auth_sender_allowed(R, "carol@example.org", "anything", "catch.example"));
}

static void test_sender_someone_elses_address_refused(void **state)
{
	/* bob receives bob@catch.example: alice's catch-all does not cover it */
	assert_false(auth_sender_allowed(R, "alice@example.org", "bob", "catch.example"));
	assert_false(auth_sender_allowed(R, "alice@example.org", "bob+x", "catch.example"));
	assert_false(auth_sender_allowed(R, "alice@example.org", "carol", "example.org"));
	assert_false(auth_sender_allowed(R, "alice@example.org", "carol+work", "example.org"));
	assert_false(auth_sender_allowed(R, "carol+work@example.org", "carol", "example.org"));
	assert_false(auth_sender_allowed(R, "alice@example.org", "nobody", "example.org"));
	assert_false(auth_sender_allowed(R, "alice@example.org", "alice", "remote.example"));
	assert_false(auth_sender_allowed(R, "alice@example.org", "alice", "[192.0.2.1]"));
}

static void test_sender_null_reverse_path_allowed(void **state)
{
	assert_true(auth_sender_allowed(R, "alice@example.org", NULL, NULL));
	assert_true(auth_sender_allowed(R, "bob@catch.example", NULL, ""));
	/* but only for an account of this snapshot */
	assert_false(auth_sender_allowed(R, "nobody@example.org", NULL, NULL));
	assert_false(auth_sender_allowed(R, "nobody@example.org", "nobody", "example.org"));
}

/* ---------------------------------------------------------------- names at snapshot build */

static void test_duplicate_catch_all_rejected(void **state)
{
	static char *c1[] = { "@dup.example", NULL }, *c2[] = { "@Dup.Example", NULL };
	struct cfg_user u[2];
	char err[256] = "";
	user_set(&u[0], "a@example.org", "", "", "", "", c1);
	user_set(&u[1], "b@example.org", "", "", "", "", c1);
	assert_null(new_auth(u, 2, false, NULL, err, sizeof(err)));
	assert_string_equal(err, "duplicate catch-all for domain dup.example");
	/* case-insensitive; which spelling the message shows is unspecified */
	user_set(&u[1], "b@example.org", "", "", "", "", c2);
	assert_null(new_auth(u, 2, false, NULL, err, sizeof(err)));
	assert_int_equal(strcasecmp(err, "duplicate catch-all for domain dup.example"), 0);
}

static void check_bad_alias(char *alias, const char *want_err)
{
	char *al[] = { alias, NULL };
	struct cfg_user u;
	char err[256] = "";
	user_set(&u, "a@example.org", "", "", "", "", al);
	assert_null(new_auth(&u, 1, false, NULL, err, sizeof(err)));
	assert_string_equal(err, want_err);
}

static void test_alias_must_be_address_or_catch_all(void **state)
{
	check_bad_alias("nodomain", "a@example.org: bad alias 'nodomain': expected local@domain or @domain");
	check_bad_alias("a@", "a@example.org: bad alias 'a@': expected local@domain or @domain");
	check_bad_alias("@", "a@example.org: bad alias '@': expected local@domain or @domain");
	check_bad_alias("a@b@example.org",
	    "a@example.org: bad alias 'a@b@example.org': expected local@domain or @domain");
	check_bad_alias("a@[192.0.2.1]",
	    "a@example.org: bad alias 'a@[192.0.2.1]': a domain literal is never a local domain");
}

static void test_address_must_be_local_at_domain(void **state)
{
	struct cfg_user u;
	char err[256] = "";
	user_set(&u, "@example.org", "", "", "", "", no_aliases);
	assert_null(new_auth(&u, 1, false, NULL, err, sizeof(err)));
	assert_string_equal(err, "bad address '@example.org': expected local@domain");
	user_set(&u, "alice", "", "", "", "", no_aliases);
	assert_null(new_auth(&u, 1, false, NULL, err, sizeof(err)));
	assert_string_equal(err, "bad address 'alice': expected local@domain");
}

static void test_missing_postmaster_is_a_warning(void **state)
{
	/* RFC 5321 §4.5.1: logged per local domain that postmaster does not reach */
	static char *domains[] = { "empty.example", NULL };
	static char *pm[] = { "postmaster@other.example", NULL };
	char logf[] = "/tmp/test_auth_logXXXXXX", err[256] = "", text[2048] = "";
	struct cfg_user u[2];
	int fd = mkstemp(logf);
	assert_true(fd >= 0);
	user_set(&u[0], "yes@example.org", "", "", "", "", no_aliases);
	user_set(&u[1], "p@other.example", "", "", "", "", pm);
	assert_int_equal(log_open(LL_WARN, logf), 0);
	struct auth *a = new_auth_domains(u, 2, domains, err, sizeof(err));
	log_open(LL_INFO, NULL);
	assert_non_null(a);      /* a warning, not an error */
	assert_true(read(fd, text, sizeof(text) - 1) > 0);
	close(fd);
	unlink(logf);
	assert_non_null(strstr(text, "\"level\":\"warn\",\"event\":\"auth.no_postmaster\",\"domain\":\"empty.example\""));
	assert_non_null(strstr(text, "\"event\":\"auth.no_postmaster\",\"domain\":\"example.org\""));
	assert_null(strstr(text, "\"domain\":\"other.example\""));
	assert_int_equal(auth_lookup_recipient(a, "postmaster", "example.org", NULL), AUTH_RCPT_UNKNOWN);
	auth_unref(&a);
}

/* ---------------------------------------------------------------- threads */

static void *thread_main(void *arg)
{
	intptr_t ok = 0;
	for (int i = 0; i < 3; i++) {
		ok += run_sasl(A, "SCRAM-SHA-256", &ci_tls, &c_keys, true).r == AUTH_OK;
		ok += run_sasl(A, "SCRAM-SHA-1", &ci_tls, &c_mrose, true).r == AUTH_OK;
		ok += run_sasl(A, "PLAIN", &ci_tls, &c_sha, true).r == AUTH_OK;
		ok += run_sasl(A, "PLAIN", &ci_tls, &c_yes_bad, true).r == AUTH_FAIL;
	}
	return (void *)ok;
}

static void test_concurrent_exchanges_on_threads(void **state)
{
	pthread_t t[4];
	for (int i = 0; i < 4; i++)
		assert_int_equal(pthread_create(&t[i], NULL, thread_main, NULL), 0);
	for (int i = 0; i < 4; i++) {
		void *ok;
		assert_int_equal(pthread_join(t[i], &ok), 0);
		assert_int_equal((intptr_t)ok, 12);
	}
}

/* ---------------------------------------------------------------- throttle */

static void test_throttle_delays_double_to_8s_then_refuse(void **state)
{
	static const int want[] = { 0, 250, 500, 1000, 2000, 4000, 8000, 8000, 8000, 8000, -1 };
	struct throttle *t = throttle_new(10, 900);
	for (int i = 0; i < 11; i++) {
		assert_int_equal(throttle_check(t, "192.0.2.7", 1000 + i), want[i]);
		if (i < 10)
			throttle_fail(t, "192.0.2.7", 1000 + i);
	}
	assert_int_equal(throttle_check(t, "192.0.2.8", 1011), 0);
	throttle_free(&t);
	assert_null(t);
}

static void test_throttle_refusal_lasts_window_after_last_failure(void **state)
{
	struct throttle *t = throttle_new(3, 900);
	throttle_fail(t, "192.0.2.7", 1000);
	throttle_fail(t, "192.0.2.7", 1100);
	throttle_fail(t, "192.0.2.7", 1200);
	assert_int_equal(throttle_check(t, "192.0.2.7", 1200), -1);
	assert_int_equal(throttle_check(t, "192.0.2.7", 2099), -1);
	assert_int_equal(throttle_check(t, "192.0.2.7", 2100), 0);
	assert_int_equal(throttle_size(t), 0);
	throttle_free(&t);
}

static void test_throttle_expires_after_window(void **state)
{
	struct throttle *t = throttle_new(10, 60);
	throttle_fail(t, "192.0.2.7", 1000);
	throttle_fail(t, "192.0.2.7", 1010);
	throttle_fail(t, "192.0.2.9", 1030);
	assert_int_equal(throttle_check(t, "192.0.2.7", 1069), 500);
	assert_int_equal(throttle_size(t), 2);
	assert_int_equal(throttle_check(t, "192.0.2.7", 1070), 0);
	assert_int_equal(throttle_size(t), 1);
	assert_int_equal(throttle_check(t, "192.0.2.9", 1089), 250);
	throttle_fail(t, "192.0.2.7", 1070);            /* a new streak starts at one */
	assert_int_equal(throttle_check(t, "192.0.2.7", 1071), 250);
	throttle_free(&t);
}

static void test_throttle_success_clears(void **state)
{
	struct throttle *t = throttle_new(10, 900);
	throttle_fail(t, "192.0.2.7", 1000);
	throttle_fail(t, "192.0.2.7", 1001);
	throttle_fail(t, "192.0.2.8", 1001);
	throttle_success(t, "192.0.2.7");
	assert_int_equal(throttle_check(t, "192.0.2.7", 1002), 0);
	assert_int_equal(throttle_check(t, "192.0.2.8", 1002), 250);
	assert_int_equal(throttle_size(t), 1);
	throttle_success(t, "192.0.2.99");              /* unknown: no effect */
	assert_int_equal(throttle_size(t), 1);
	throttle_free(&t);
}

static void test_throttle_bounded_at_10000(void **state)
{
	struct throttle *t = throttle_new(10, 900);
	char ip[32];
	for (int i = 0; i < 20000; i++) {
		snprintf(ip, sizeof(ip), "10.%d.%d.%d", i >> 16, (i >> 8) & 255, i & 255);
		throttle_fail(t, ip, 1000 + i / 100);
	}
	assert_int_equal(throttle_size(t), 10000);
	/* the oldest half was evicted, the newest half is remembered */
	assert_int_equal(throttle_check(t, "10.0.0.0", 1200), 0);
	assert_int_equal(throttle_check(t, "10.0.39.15", 1200), 0);       /* #9999 */
	assert_int_equal(throttle_check(t, "10.0.39.16", 1200), 250);     /* #10000 */
	assert_int_equal(throttle_check(t, "10.0.78.31", 1200), 250);     /* #19999 */
	assert_int_equal(throttle_size(t), 10000);
	throttle_free(&t);
}

static void test_throttle_ipv6_by_64_and_mapped_ipv4(void **state)
{
	struct throttle *t = throttle_new(10, 900);
	throttle_fail(t, "2001:db8:1:2::1", 1000);
	assert_int_equal(throttle_check(t, "2001:db8:1:2:ffff::9", 1001), 250);
	assert_int_equal(throttle_check(t, "2001:db8:1:3::1", 1001), 0);
	throttle_fail(t, "::ffff:192.0.2.1", 1000);
	assert_int_equal(throttle_check(t, "192.0.2.1", 1001), 250);
	assert_int_equal(throttle_size(t), 2);
	throttle_free(&t);
}

static void test_throttle_configure_applies_new_limit(void **state)
{
	struct throttle *t = throttle_new(10, 900);
	for (int i = 0; i < 3; i++)
		throttle_fail(t, "192.0.2.7", 1000);
	assert_int_equal(throttle_check(t, "192.0.2.7", 1000), 1000);
	throttle_configure(t, 3, 900);
	assert_int_equal(throttle_check(t, "192.0.2.7", 1000), -1);
	throttle_configure(t, 0, 900);                   /* 0: delay only, never refuse */
	assert_int_equal(throttle_check(t, "192.0.2.7", 1000), 1000);
	throttle_free(&t);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lookup_is_case_insensitive_and_knows_aliases),
		cmocka_unit_test(test_hash_password_makes_yescrypt),
		cmocka_unit_test(test_password_sha512_ok),
		cmocka_unit_test(test_password_bad_fails),
		cmocka_unit_test(test_password_unknown_user_fails),
		cmocka_unit_test(test_password_empty_hash_never_matches),
		cmocka_unit_test(test_password_alias_logs_in_as_account),
		cmocka_unit_test(test_apop_rfc1939_example_ok),
		cmocka_unit_test(test_apop_bad_digest_fails),
		cmocka_unit_test(test_apop_account_without_secret_fails),
		cmocka_unit_test(test_scram_keys_match_gsasl_derivation),
		cmocka_unit_test(test_plain_with_initial_response_ok),
		cmocka_unit_test(test_plain_without_initial_response_gets_empty_challenge),
		cmocka_unit_test(test_plain_alias_logs_in_as_account),
		cmocka_unit_test(test_plain_bad_password_or_unknown_user_fails),
		cmocka_unit_test(test_plain_authzid_must_name_the_account),
		cmocka_unit_test(test_plain_empty_initial_response_is_badproto),
		cmocka_unit_test(test_plain_empty_response_after_challenge_is_badproto),
		cmocka_unit_test(test_bad_base64_is_badproto),
		cmocka_unit_test(test_login_ok_with_exact_prompts),
		cmocka_unit_test(test_login_user_name_as_initial_response),
		cmocka_unit_test(test_cram_md5_with_secret_ok),
		cmocka_unit_test(test_cram_md5_without_secret_fails),
		cmocka_unit_test(test_cram_md5_initial_response_is_badproto),
		cmocka_unit_test(test_digest_md5_with_secret_ok),
		cmocka_unit_test(test_scram_via_secret_ok),
		cmocka_unit_test(test_scram_via_stored_keys_ok),
		cmocka_unit_test(test_scram_without_credentials_fails),
		cmocka_unit_test(test_scram_authzid_mismatch_fails),
		cmocka_unit_test(test_scram_plus_tls_exporter),
		cmocka_unit_test(test_scram_plus_tls_unique),
		cmocka_unit_test(test_scram_salts_do_not_reveal_accounts),
		cmocka_unit_test(test_scram_y_flag_refused_when_plus_offered),
		cmocka_unit_test(test_step_after_end_is_badproto),
		cmocka_unit_test(test_no_mechanisms_without_tls),
		cmocka_unit_test(test_mechanisms_on_tls_loopback_and_plaintext),
		cmocka_unit_test(test_allow_plaintext_offers_without_tls),
		cmocka_unit_test(test_no_secret_no_keys_offers_plain_and_login_only),
		cmocka_unit_test(test_no_accounts_offers_plain_and_login_only),
		cmocka_unit_test(test_one_secret_offers_cram_digest_and_scram),
		cmocka_unit_test(test_sha256_keys_offer_scram_sha256_only),
		cmocka_unit_test(test_sha1_keys_offer_scram_sha1_only),
		cmocka_unit_test(test_secret_in_users_file_counts),
		cmocka_unit_test(test_duplicate_address_or_alias_rejected),
		cmocka_unit_test(test_bad_scram_keys_rejected),
		cmocka_unit_test(test_users_file_adds_accounts),
		cmocka_unit_test(test_users_file_error_passed_through),
		cmocka_unit_test(test_sasl_session_keeps_snapshot_alive),
		cmocka_unit_test(test_local_domains_are_config_and_account_domains),
		cmocka_unit_test(test_domain_literal_never_local),
		cmocka_unit_test(test_rcpt_exact_address),
		cmocka_unit_test(test_rcpt_local_part_and_domain_case_insensitive),
		cmocka_unit_test(test_rcpt_alias_delivers_to_account),
		cmocka_unit_test(test_rcpt_plus_tag_on_address),
		cmocka_unit_test(test_rcpt_plus_tag_on_alias),
		cmocka_unit_test(test_rcpt_exact_name_with_plus_beats_tag),
		cmocka_unit_test(test_rcpt_plus_at_start_or_end_is_no_tag),
		cmocka_unit_test(test_rcpt_catch_all_takes_rest_of_its_domain),
		cmocka_unit_test(test_rcpt_exact_and_tag_beat_catch_all),
		cmocka_unit_test(test_catch_all_does_not_capture_other_domains),
		cmocka_unit_test(test_rcpt_unknown_local_user),
		cmocka_unit_test(test_rcpt_remote_domain),
		cmocka_unit_test(test_rcpt_percent_and_bang_are_plain_characters),
		cmocka_unit_test(test_rcpt_quoted_at_sign_is_a_plain_character),
		cmocka_unit_test(test_catch_all_is_no_login_name),
		cmocka_unit_test(test_sender_own_address_and_aliases),
		cmocka_unit_test(test_sender_plus_tag_of_address_and_alias),
		cmocka_unit_test(test_sender_catch_all_domain),
		cmocka_unit_test(test_sender_someone_elses_address_refused),
		cmocka_unit_test(test_sender_null_reverse_path_allowed),
		cmocka_unit_test(test_duplicate_catch_all_rejected),
		cmocka_unit_test(test_alias_must_be_address_or_catch_all),
		cmocka_unit_test(test_address_must_be_local_at_domain),
		cmocka_unit_test(test_missing_postmaster_is_a_warning),
		cmocka_unit_test(test_concurrent_exchanges_on_threads),
		cmocka_unit_test(test_throttle_delays_double_to_8s_then_refuse),
		cmocka_unit_test(test_throttle_refusal_lasts_window_after_last_failure),
		cmocka_unit_test(test_throttle_expires_after_window),
		cmocka_unit_test(test_throttle_success_clears),
		cmocka_unit_test(test_throttle_bounded_at_10000),
		cmocka_unit_test(test_throttle_ipv6_by_64_and_mapped_ipv4),
		cmocka_unit_test(test_throttle_configure_applies_new_limit),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
