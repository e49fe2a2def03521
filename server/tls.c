/* tls.c: certificates and SSL_CTX set-up (design §2: TLS 1.2+, Mozilla
 * "intermediate" ciphers, no compression, no renegotiation, SNI selection).
 * A struct tls is immutable and refcounted: a SIGHUP reload builds a new one
 * and connections keep the one they started with. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "server/server.h"

/* Mozilla "intermediate" (v5.7) TLS 1.2 cipher list; TLS 1.3 suites are OpenSSL's defaults */
#define TLS12_CIPHERS "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:" \
	"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:" \
	"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:" \
	"DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305"

struct tls {
	int refs;
	SSL_CTX **ctxs;              /* [0] is the default */
	size_t nctxs;
};

static void tls_err(char *err, size_t errlen, const char *what, const char *path)
{
	unsigned long e = ERR_get_error();
	snprintf(err, errlen, "%s '%s': %s", what, path,
	    e ? ERR_reason_error_string(e) : strerror(errno));
	ERR_clear_error();
}

static int sni_cb(SSL *ssl, int *alert, void *arg)
{
	struct tls *t = arg;
	const char *name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
	(void)alert;
	if (name == NULL)
		return SSL_TLSEXT_ERR_OK;
	for (size_t i = 1; i < t->nctxs; i++) {
		X509 *x = SSL_CTX_get0_certificate(t->ctxs[i]);
		if (x != NULL && X509_check_host(x, name, 0, 0, NULL) == 1) {
			SSL_set_SSL_CTX(ssl, t->ctxs[i]);
			break;
		}
	}
	return SSL_TLSEXT_ERR_OK;
}

static SSL_CTX *ctx_new(const char *cert, const char *key, int min_version, char *err, size_t errlen)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
	if (ctx == NULL) {
		snprintf(err, errlen, "SSL_CTX_new failed");
		return NULL;
	}
	SSL_CTX_set_min_proto_version(ctx, min_version == 13 ? TLS1_3_VERSION : TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
	    SSL_OP_CIPHER_SERVER_PREFERENCE);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);   /* idle connections cost less memory */
	SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER);
	SSL_CTX_set_session_id_context(ctx, (const unsigned char *)"postling", 8);
	if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
		tls_err(err, errlen, "cannot load certificate", cert);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
		tls_err(err, errlen, "cannot load private key", key);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		snprintf(err, errlen, "private key '%s' does not match certificate '%s'", key, cert);
		goto fail;
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static int tls_add(struct tls *t, const char *cert, const char *key, int minv, char *err, size_t errlen)
{
	SSL_CTX *ctx = ctx_new(cert, key, minv, err, errlen);
	if (ctx == NULL)
		return -1;
	t->ctxs = xreallocarray(t->ctxs, t->nctxs + 1, sizeof(*t->ctxs));
	t->ctxs[t->nctxs++] = ctx;
	return 0;
}

struct tls *tls_new(const struct config *cfg, char *err, size_t errlen)
{
	struct tls *t = xcalloc(1, sizeof(*t));
	t->refs = 1;
	for (size_t i = 0; i < cfg->tls.ncertificates; i++)
		if (tls_add(t, cfg->tls.certificates[i].cert, cfg->tls.certificates[i].key,
		    cfg->tls.min_version, err, errlen) == -1)
			goto fail;
	if (t->nctxs == 0 && cfg->tls.self_signed) {
		char *cert, *key;
		if (tls_make_self_signed(cfg->server.data_dir, cfg->server.hostname, &cert, &key,
		    err, errlen) == -1)
			goto fail;
		int r = tls_add(t, cert, key, cfg->tls.min_version, err, errlen);
		free(cert);
		free(key);
		if (r == -1)
			goto fail;
	}
	if (t->nctxs == 0) {
		free(t);
		return NULL;       /* no TLS configured: not an error by itself */
	}
	SSL_CTX_set_tlsext_servername_callback(t->ctxs[0], sni_cb);
	SSL_CTX_set_tlsext_servername_arg(t->ctxs[0], t);
	err[0] = '\0';
	return t;
fail:
	t->refs = 1;
	tls_unref(&t);
	return NULL;
}

void tls_ref(struct tls *t)
{
	t->refs++;
}

void tls_unref(struct tls **t_r)
{
	struct tls *t = *t_r;
	*t_r = NULL;
	if (t == NULL || --t->refs > 0)
		return;
	for (size_t i = 0; i < t->nctxs; i++)
		SSL_CTX_free(t->ctxs[i]);
	free(t->ctxs);
	free(t);
}

SSL *tls_new_ssl(struct tls *t)
{
	return SSL_new(t->ctxs[0]);
}

static X509 *make_cert(EVP_PKEY *pkey, const char *hostname)
{
	X509 *x = X509_new();
	X509_set_version(x, 2);
	uint64_t serial;
	RAND_bytes((unsigned char *)&serial, sizeof(serial));
	ASN1_INTEGER_set_uint64(X509_get_serialNumber(x), serial >> 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -3600);
	X509_gmtime_adj(X509_getm_notAfter(x), 3650L * 86400);
	X509_set_pubkey(x, pkey);
	X509_NAME *name = X509_get_subject_name(x);
	X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"Postling self-signed", -1, -1, 0);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)hostname, -1, -1, 0);
	X509_set_issuer_name(x, name);
	char *san = xasprintf("DNS:%s", hostname);
	X509V3_CTX v3;
	X509V3_set_ctx_nodb(&v3);
	X509V3_set_ctx(&v3, x, x, NULL, NULL, 0);
	X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, NID_subject_alt_name, san);
	free(san);
	if (ext != NULL) {
		X509_add_ext(x, ext, -1);
		X509_EXTENSION_free(ext);
	}
	if (X509_sign(x, pkey, EVP_sha256()) == 0) {
		X509_free(x);
		return NULL;
	}
	return x;
}

static int write_pem(const char *path, EVP_PKEY *pkey, X509 *x)
{
	char *tmp = xasprintf("%s.tmp", path);
	int r = -1;
	FILE *f = fopen(tmp, "w");
	if (f == NULL)
		goto out;
	fchmod(fileno(f), 0600);
	int ok = pkey ? PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL) : PEM_write_X509(f, x);
	if (fflush(f) != 0 || fsync(fileno(f)) != 0)
		ok = 0;
	fclose(f);
	if (ok && rename(tmp, path) == 0)
		r = 0;
	else
		unlink(tmp);
out:
	free(tmp);
	return r;
}

int tls_make_self_signed(const char *data_dir, const char *hostname, char **cert_r, char **key_r,
    char *err, size_t errlen)
{
	char *dir = xasprintf("%s/tls", data_dir);
	char *cert = xasprintf("%s/selfsigned.crt", dir), *key = xasprintf("%s/selfsigned.key", dir);
	EVP_PKEY *pkey = NULL;
	X509 *x = NULL;
	int r = -1;
	if (access(cert, R_OK) == 0 && access(key, R_OK) == 0)
		goto done;
	mkdir(data_dir, 0755);
	if (mkdir(dir, 0700) == -1 && errno != EEXIST) {
		snprintf(err, errlen, "cannot create '%s': %s", dir, strerror(errno));
		goto out;
	}
	pkey = EVP_RSA_gen(2048);
	x = pkey ? make_cert(pkey, hostname) : NULL;
	if (x == NULL || write_pem(key, pkey, NULL) == -1 || write_pem(cert, NULL, x) == -1) {
		snprintf(err, errlen, "cannot make a self-signed certificate in '%s': %s", dir, strerror(errno));
		goto out;
	}
	log_msg(LL_INFO, "tls.selfsigned", "made a self-signed certificate %s for %s", cert, hostname);
done:
	*cert_r = cert;
	*key_r = key;
	cert = key = NULL;
	r = 0;
out:
	X509_free(x);
	EVP_PKEY_free(pkey);
	free(cert);
	free(key);
	free(dir);
	return r;
}
