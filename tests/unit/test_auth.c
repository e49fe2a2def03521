/* test_auth.c: accounts, password and APOP checks, SASL exchanges run in
 * process against a libgsasl client, mechanism offering rules, and the
 * failed-login throttle (server/auth.c, server/throttle.c). */
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
#include <unistd.h>

#include "common/util.h"
#include "server/server.h"

/* `openssl passwd -6 -salt Xq3pQk9Lr2Tn sha-pass` */
#define SHA512_HASH "$6$Xq3pQk9Lr2Tn$9WyRZiV5btCjECro7zigcZ1JiBA8/e/oSO6xSDX3NTNaPXvh6c8saRUqPzaEPkof.0v0PNSDdefR3hfDjOvWW1"
/* RFC 1939 §7 example */
#define APOP_TS "<1896.697170952@dbc.mtview.ca.us>"
#define APOP_DIGEST "c4c9334bac560ecc979e58001b3e22fb"

static struct auth *A;             /* the fixture snapshot, built once */
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
	if (A == NULL) {
		fprintf(stderr, "auth_new: %s\n", err);
		return -1;
	}
	return gsasl_init(&C) == GSASL_OK ? 0 : -1;
}

static int group_teardown(void **state)
{
	auth_unref(&A);
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

