/* password.c: the credential checks that need no SASL exchange, and making
 * new credentials (design §4): crypt(3) password hashes (auth_check_password,
 * auth_hash_password), APOP (RFC 1939 §7) and SCRAM stored keys (RFC 5802).
 * Accounts come from the immutable auth.c snapshot (auth_find), so every
 * function here may run on a worker thread. Unknown users cost the same work
 * as known ones. Nothing here logs credentials. */
#include "server/server.h"

#include <crypt.h>
#include <ctype.h>
#include <gsasl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "common/xmalloc.h"

#define SCRAM_ITER_DEFAULT 4096      /* RFC 7677 §4: at least 4096 */

/* ---------------------------------------------------------------- passwords */

/* crypt_rn with its ~32 KiB state on the heap (too big for worker stacks);
 * crypt_rn rather than crypt_r because ASan's crypt_r interceptor crashes
 * with libxcrypt.
 * NULL when the setting is not a hash libxcrypt knows ("*", "!", garbage). */
static char *crypt_dup(const char *pass, const char *setting)
{
	struct crypt_data *cd = xcalloc(1, sizeof(*cd));
	const char *h = crypt_rn(pass, setting, cd, (int)sizeof(*cd));
	char *r = h != NULL && h[0] != '*' ? xstrdup(h) : NULL;
	OPENSSL_cleanse(cd, sizeof(*cd));
	free(cd);
	return r;
}

static bool crypt_matches(const char *pass, const char *hash)
{
	char *h = crypt_dup(pass, hash);
	size_t n = strlen(hash);
	bool ok = h != NULL && strlen(h) == n && CRYPTO_memcmp(h, hash, n) == 0;
	free(h);
	return ok;
}

enum auth_result auth_check_password(const struct auth *a, const char *user, const char *pass,
    const struct account **acct_r)
{
	const struct account *acct = auth_find(a, user);
	if (acct_r != NULL)
		*acct_r = NULL;
	if (pass == NULL)
		pass = "";
	if (acct == NULL || acct->password[0] == '\0') {
		(void)crypt_matches(pass, auth_dummy_hash(a));   /* same cost as a real check */
		return AUTH_FAIL;
	}
	if (!crypt_matches(pass, acct->password))
		return AUTH_FAIL;
	if (acct_r != NULL)
		*acct_r = acct;
	return AUTH_OK;
}

char *auth_hash_password(const char *pass)
{
	/* yescrypt is libxcrypt's default; SHA-512-crypt where it is compiled out */
	static const char *const prefixes[] = { "$y$", "$6$" };
	char setting[CRYPT_GENSALT_OUTPUT_SIZE];
	for (size_t i = 0; i < sizeof(prefixes) / sizeof(prefixes[0]); i++) {
		if (crypt_gensalt_rn(prefixes[i], 0, NULL, 0, setting, sizeof(setting)) == NULL)
			continue;
		char *h = crypt_dup(pass, setting);
		if (h != NULL)
			return h;
	}
	return NULL;
}

/* ---------------------------------------------------------------- APOP */

static void hex_encode(const unsigned char *p, size_t n, char *out)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[p[i] >> 4];
		out[2 * i + 1] = hex[p[i] & 15];
	}
	out[2 * n] = '\0';
}

/* RFC 1939 §7: digest = MD5(timestamp || secret), 32 lowercase hex digits */
static int apop_digest(const char *timestamp, const char *secret, char out[33])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	int ok = c != NULL && EVP_DigestInit_ex(c, EVP_md5(), NULL) == 1 &&
	    EVP_DigestUpdate(c, timestamp, strlen(timestamp)) == 1 &&
	    EVP_DigestUpdate(c, secret, strlen(secret)) == 1 &&
	    EVP_DigestFinal_ex(c, md, &mdlen) == 1 && mdlen == 16;
	EVP_MD_CTX_free(c);
	if (!ok)
		return -1;
	hex_encode(md, 16, out);
	return 0;
}

/* The client may send upper-case hex; compare its lower-case form. */
static bool hex_lower32(const char *s, char out[33])
{
	if (s == NULL || strlen(s) != 32)
		return false;
	for (int i = 0; i < 32; i++) {
		if (!isxdigit((unsigned char)s[i]))
			return false;
		out[i] = (char)tolower((unsigned char)s[i]);
	}
	out[32] = '\0';
	return true;
}

enum auth_result auth_check_apop(const struct auth *a, const char *user, const char *timestamp,
    const char *digest_hex, const struct account **acct_r)
{
	const struct account *acct = auth_find(a, user);
	const char *secret = acct != NULL ? acct->secret : "";
	char want[33], got[33];
	if (acct_r != NULL)
		*acct_r = NULL;
	/* digest computed for unknown users too: the same work either way */
	if (apop_digest(timestamp != NULL ? timestamp : "", secret, want) == -1)
		return AUTH_TEMPFAIL;
	bool match = hex_lower32(digest_hex, got) && CRYPTO_memcmp(want, got, 32) == 0;
	if (!match || acct == NULL || secret[0] == '\0')
		return AUTH_FAIL;
	if (acct_r != NULL)
		*acct_r = acct;
	return AUTH_OK;
}

/* ---------------------------------------------------------------- SCRAM keys */

/* RFC 5802 §3: SaltedPassword := Hi(password, salt, i) (= PBKDF2 with HMAC-H),
 * ClientKey := HMAC(SaltedPassword, "Client Key"), StoredKey := H(ClientKey),
 * ServerKey := HMAC(SaltedPassword, "Server Key"). */
static int scram_derive(const char *pass, const unsigned char *salt, size_t saltlen, int iter,
    const EVP_MD *md, unsigned char *storedkey, unsigned char *serverkey)
{
	unsigned char salted[EVP_MAX_MD_SIZE], client[EVP_MAX_MD_SIZE];
	int hlen = EVP_MD_get_size(md);
	unsigned int n;
	int ok = PKCS5_PBKDF2_HMAC(pass, (int)strlen(pass), salt, (int)saltlen, iter, md, hlen, salted) == 1 &&
	    HMAC(md, salted, hlen, (const unsigned char *)"Client Key", 10, client, &n) != NULL &&
	    EVP_Digest(client, (size_t)hlen, storedkey, &n, md, NULL) == 1 &&
	    HMAC(md, salted, hlen, (const unsigned char *)"Server Key", 10, serverkey, &n) != NULL;
	OPENSSL_cleanse(salted, sizeof(salted));
	OPENSSL_cleanse(client, sizeof(client));
	return ok ? 0 : -1;
}

static char *scram_format(const unsigned char *salt, const unsigned char *storedkey,
    const unsigned char *serverkey, size_t hlen)
{
	char *s = util_b64_encode(salt, AUTH_SCRAM_SALT_LEN);
	char *k1 = util_b64_encode(storedkey, hlen);
	char *k2 = util_b64_encode(serverkey, hlen);
	char *r = xasprintf("%d:%s:%s:%s", SCRAM_ITER_DEFAULT, s, k1, k2);
	free(s);
	free(k1);
	free(k2);
	return r;
}

char *auth_scram_keys(const char *pass, bool sha256)
{
	const EVP_MD *md = sha256 ? EVP_sha256() : EVP_sha1();
	unsigned char salt[AUTH_SCRAM_SALT_LEN], storedkey[EVP_MAX_MD_SIZE], serverkey[EVP_MAX_MD_SIZE];
	char *prep = NULL, *r = NULL;
	/* Normalize() of RFC 5802 §2.2 is SASLprep, as the gsasl client applies it */
	if (gsasl_saslprep(pass, GSASL_ALLOW_UNASSIGNED, &prep, NULL) != GSASL_OK)
		return NULL;
	if (RAND_bytes(salt, sizeof(salt)) == 1 &&
	    scram_derive(prep, salt, sizeof(salt), SCRAM_ITER_DEFAULT, md, storedkey, serverkey) == 0)
		r = scram_format(salt, storedkey, serverkey, (size_t)EVP_MD_get_size(md));
	OPENSSL_cleanse(prep, strlen(prep));
	gsasl_free(prep);
	return r;
}
