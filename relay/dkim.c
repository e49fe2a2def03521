/* dkim.c: DKIM signatures for outbound mail (RFC 6376, RFC 8463; rules in
 * relay.h). Pure: the message, the keys and the time come in, the
 * DKIM-Signature fields go out. OpenSSL 3 does the hashing and the RSA and
 * Ed25519 signatures.
 *
 * Both algorithms sign the same thing (RFC 8463 §3): the SHA-256 hash of the
 * canonical signed header fields followed by the canonical DKIM-Signature
 * field with an empty b= and no final CRLF (RFC 6376 §3.7). RSA signs that
 * hash with PKCS#1 v1.5 (RFC 8017 §8.2, the DigestInfo added by OpenSSL);
 * Ed25519 signs the 32 hash octets themselves with PureEdDSA. The body hash
 * is computed once for all signers: every signature here uses relaxed body
 * canonicalisation and SHA-256. */
#include "relay/relay.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>

#include "common/buf.h"
#include "common/util.h"
#include "common/xmalloc.h"

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))
#define FOLD_COLUMNS 78              /* RFC 5322 §2.1.1: SHOULD NOT exceed 78 */
#define SIG_HEADER_MAX (64u * 1024)  /* one DKIM-Signature field; real ones are < 1 KiB */

struct dkim_key {
	EVP_PKEY *pk;
	enum dkim_alg alg;
	int bits;
	unsigned refs;
};

/* ------------------------------------------------------------ errors */

/* "what: OpenSSL's reason" into err; empties this thread's error queue. */
static void ssl_fail(char *err, size_t errlen, const char *what)
{
	unsigned long e = ERR_peek_last_error();
	char reason[256] = "";
	if (e != 0)
		ERR_error_string_n(e, reason, sizeof(reason));
	ERR_clear_error();
	snprintf(err, errlen, "%s%s%s", what, reason[0] ? ": " : "", reason);
}

/* ------------------------------------------------------------ keys */

/* Never ask for a passphrase (the default would prompt on the terminal). */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;
}

static struct dkim_key *key_wrap(EVP_PKEY *pk, char *err, size_t errlen)
{
	enum dkim_alg alg;
	int bits = EVP_PKEY_get_bits(pk);
	if (EVP_PKEY_is_a(pk, "RSA")) {
		alg = DKIM_RSA_SHA256;
		if (bits > DKIM_RSA_MAX_BITS) {
			snprintf(err, errlen, "RSA key of %d bits is larger than DKIM needs (at most %d)",
			    bits, DKIM_RSA_MAX_BITS);
			EVP_PKEY_free(pk);
			return NULL;
		}
		if (bits < DKIM_RSA_MIN_BITS) {
			snprintf(err, errlen, "RSA key of %d bits is too small for DKIM (at least %d, "
			    "%d recommended; RFC 8301 §3.2)", bits, DKIM_RSA_MIN_BITS, DKIM_RSA_DEFAULT_BITS);
			EVP_PKEY_free(pk);
			return NULL;
		}
	} else if (EVP_PKEY_is_a(pk, "ED25519")) {
		alg = DKIM_ED25519_SHA256;
	} else {
		snprintf(err, errlen, "unsupported key type %s (DKIM signs with RSA or Ed25519)",
		    EVP_PKEY_get0_type_name(pk) ? EVP_PKEY_get0_type_name(pk) : "?");
		EVP_PKEY_free(pk);
		return NULL;
	}
	struct dkim_key *k = xcalloc(1, sizeof(*k));
	k->pk = pk;
	k->alg = alg;
	k->bits = bits;
	k->refs = 1;
	return k;
}

struct dkim_key *dkim_key_parse(const char *pem, size_t len, char *err, size_t errlen)
{
	if (len > DKIM_KEY_MAX_PEM || len > INT32_MAX) {
		snprintf(err, errlen, "not a PEM private key (larger than %u octets)", DKIM_KEY_MAX_PEM);
		return NULL;
	}
	BIO *bio = BIO_new_mem_buf(pem, (int)len);
	EVP_PKEY *pk = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
	BIO_free(bio);
	if (pk == NULL) {
		ssl_fail(err, errlen, "not a usable PEM private key (unencrypted PKCS#8 or RSA)");
		return NULL;
	}
	ERR_clear_error();
	return key_wrap(pk, err, errlen);
}

struct dkim_key *dkim_key_generate(enum dkim_alg alg, int bits, char *err, size_t errlen)
{
	EVP_PKEY *pk;
	if (alg == DKIM_RSA_SHA256) {
		if (bits < DKIM_RSA_MIN_BITS || bits > DKIM_RSA_MAX_BITS) {
			snprintf(err, errlen, "RSA key size must be %d to %d bits", DKIM_RSA_MIN_BITS,
			    DKIM_RSA_MAX_BITS);
			return NULL;
		}
		pk = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)bits);
	} else {
		pk = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
	}
	if (pk == NULL) {
		ssl_fail(err, errlen, "key generation failed");
		return NULL;
	}
	return key_wrap(pk, err, errlen);
}

char *dkim_key_pem(const struct dkim_key *k, size_t *len_r)
{
	BIO *bio = BIO_new(BIO_s_mem());
	char *data = NULL, *r = NULL;
	if (bio != NULL && PEM_write_bio_PrivateKey(bio, k->pk, NULL, NULL, 0, NULL, NULL) == 1) {
		long n = BIO_get_mem_data(bio, &data);
		if (n > 0) {
			r = xmalloc((size_t)n + 1);
			memcpy(r, data, (size_t)n);
			r[n] = '\0';
			*len_r = (size_t)n;
		}
	}
	BIO_free(bio);
	ERR_clear_error();
	return r;
}

enum dkim_alg dkim_key_alg(const struct dkim_key *k)
{
	return k->alg;
}

int dkim_key_bits(const struct dkim_key *k)
{
	return k->bits;
}

const char *dkim_alg_name(enum dkim_alg a)
{
	return a == DKIM_ED25519_SHA256 ? "ed25519-sha256" : "rsa-sha256";
}

const char *dkim_key_type_name(enum dkim_alg a)
{
	return a == DKIM_ED25519_SHA256 ? "ed25519" : "rsa";
}

char *dkim_dns_txt(const struct dkim_key *k)
{
	unsigned char raw[64], *der = NULL;
	char *b64 = NULL;
	if (k->alg == DKIM_ED25519_SHA256) {
		size_t n = sizeof(raw);            /* RFC 8463 §4: the bare 32-octet key */
		if (EVP_PKEY_get_raw_public_key(k->pk, raw, &n) == 1)
			b64 = util_b64_encode(raw, n);
	} else {
		int n = i2d_PUBKEY(k->pk, &der);   /* SubjectPublicKeyInfo, as verifiers expect */
		if (n > 0)
			b64 = util_b64_encode(der, (size_t)n);
		OPENSSL_free(der);
	}
	ERR_clear_error();
	if (b64 == NULL)
		return NULL;
	char *txt = xasprintf("v=DKIM1; k=%s; p=%s", dkim_key_type_name(k->alg), b64);
	free(b64);
	return txt;
}

struct dkim_key *dkim_key_ref(struct dkim_key *k)
{
	k->refs++;
	return k;
}

void dkim_key_unref(struct dkim_key **k_r)
{
	struct dkim_key *k = *k_r;
	*k_r = NULL;
	if (k == NULL || --k->refs > 0)
		return;
	EVP_PKEY_free(k->pk);
	free(k);
}

/* ------------------------------------------------------------ lines */

static bool is_wsp(char c)
{
	return c == ' ' || c == '\t';
}

/* The line starting at pos ends at the return value (its terminator or len);
 * *next_r is where the next one starts: CRLF, CR or LF is one line end. */
static size_t line_end(const char *p, size_t len, size_t pos, size_t *next_r)
{
	size_t i = pos;
	while (i < len && p[i] != '\r' && p[i] != '\n')
		i++;
	size_t next = i;
	if (next < len)
		next += (p[next] == '\r' && next + 1 < len && p[next + 1] == '\n') ? 2 : 1;
	*next_r = next;
	return i;
}

/* Walks the header one field at a time: field [start, end) without its last
 * line end (folded lines inside); false at the empty line or the end, with
 * *body_r where the body starts (len when there is none). Lines that are
 * neither a field nor a continuation (no colon) are skipped. */
struct hdr_iter {
	const char *p;
	size_t len, pos;
};

static bool next_field(struct hdr_iter *it, size_t *start_r, size_t *end_r, size_t *body_r)
{
	for (;;) {
		size_t next, end = line_end(it->p, it->len, it->pos, &next);
		if (end == it->pos) {              /* empty line (or the end): the body follows */
			*body_r = next;
			it->pos = it->len;
			return false;
		}
		size_t start = it->pos;
		it->pos = next;
		/* continuation lines (RFC 5322 §2.2.3) belong to this field */
		while (it->pos < it->len && is_wsp(it->p[it->pos]))
			end = line_end(it->p, it->len, it->pos, &it->pos);
		if (!is_wsp(it->p[start]) && memchr(it->p + start, ':', end - start) != NULL) {
			*start_r = start;
			*end_r = end;
			return true;
		}
	}
}

/* The field's name is `name` (case-insensitive; WSP before the colon allowed). */
static bool field_is(const char *f, size_t flen, const char *name)
{
	size_t n = strlen(name);
	if (flen <= n || strncasecmp(f, name, n) != 0)
		return false;
	size_t i = n;
	while (i < flen && is_wsp(f[i]))
		i++;
	return i < flen && f[i] == ':';
}

/* ------------------------------------------------------------ canonicalisation */

int dkim_canon_header(const char *field, size_t len, struct buf *out)
{
	const char *colon = memchr(field, ':', len);
	if (colon == NULL)
		return -1;
	size_t nlen = (size_t)(colon - field);
	while (nlen > 0 && (is_wsp(field[nlen - 1]) || field[nlen - 1] == '\r' || field[nlen - 1] == '\n'))
		nlen--;                            /* WSP before the colon goes */
	char lower[256];
	for (size_t i = 0; i < nlen; i += sizeof(lower)) {
		size_t n = nlen - i < sizeof(lower) ? nlen - i : sizeof(lower);
		for (size_t j = 0; j < n; j++)
			lower[j] = (char)tolower((unsigned char)field[i + j]);
		if (buf_append(out, lower, n) == -1)
			return -1;
	}
	if (buf_appendc(out, ':') == -1)
		return -1;
	/* unfold (drop the line ends, keep the WSP), WSP runs -> one SP, none
	 * after the colon or at the end */
	bool space = false, started = false;
	const char *p = colon + 1, *end = field + len;
	while (p < end) {
		if (*p == '\r' || *p == '\n') {
			p++;
			continue;
		}
		if (is_wsp(*p)) {
			space = true;
			p++;
			continue;
		}
		const char *run = p;
		while (p < end && !is_wsp(*p) && *p != '\r' && *p != '\n')
			p++;
		if ((space && started && buf_appendc(out, ' ') == -1) ||
		    buf_append(out, run, (size_t)(p - run)) == -1)
			return -1;
		space = false;
		started = true;
	}
	return buf_append(out, "\r\n", 2);
}

void dkim_body_init(struct dkim_body *b, dkim_out_fn out, void *arg)
{
	memset(b, 0, sizeof(*b));
	b->out = out;
	b->arg = arg;
}

/* A line with content ends now; an empty one waits: it counts only when a
 * line with content follows (§3.4.4: empty lines at the end are ignored). */
static void body_line_end(struct dkim_body *b)
{
	if (b->line_started)
		b->out(b->arg, "\r\n", 2);
	else
		b->empty_lines++;
	b->line_started = false;
	b->space = false;
}

/* The first non-WSP octet of a run: the empty lines held back and a single
 * SP for the WSP before it (§3.4.4: WSP runs become one SP; WSP at the end
 * of a line is dropped by never being written). */
static void body_before_text(struct dkim_body *b)
{
	if (!b->line_started) {
		for (; b->empty_lines > 0; b->empty_lines--)
			b->out(b->arg, "\r\n", 2);
		b->line_started = true;
	}
	if (b->space)
		b->out(b->arg, " ", 1);
	b->space = false;
}

void dkim_body_feed(struct dkim_body *b, const char *p, size_t len)
{
	size_t i = 0;
	while (i < len) {
		char c = p[i];
		if (c == '\n' && b->skip_lf) {     /* the LF of a CRLF */
			b->skip_lf = false;
			i++;
			continue;
		}
		b->skip_lf = false;
		if (c == '\r' || c == '\n') {
			body_line_end(b);
			b->skip_lf = c == '\r';
			i++;
			continue;
		}
		if (is_wsp(c)) {
			b->space = true;
			i++;
			continue;
		}
		size_t run = i;
		while (i < len && !is_wsp(p[i]) && p[i] != '\r' && p[i] != '\n')
			i++;
		body_before_text(b);
		b->out(b->arg, p + run, i - run);
	}
}

void dkim_body_end(struct dkim_body *b)
{
	/* a last line without its line end gets one; trailing empty lines
	 * (and an empty body) give nothing */
	if (b->line_started)
		b->out(b->arg, "\r\n", 2);
	b->line_started = false;
	b->empty_lines = 0;
	b->space = false;
}

/* ------------------------------------------------------------ From domain */

/* Skip a quoted string (RFC 5322 §3.2.4) or a comment (§3.2.2, nested)
 * starting at p[i]; returns the index after it. */
static size_t skip_quoted(const char *p, size_t len, size_t i)
{
	if (p[i] == '"') {
		for (i++; i < len && p[i] != '"'; i++)
			if (p[i] == '\\')
				i++;
		return i < len ? i + 1 : len;
	}
	int depth = 0;
	for (; i < len; i++) {
		if (p[i] == '\\')
			i++;
		else if (p[i] == '(')
			depth++;
		else if (p[i] == ')' && --depth == 0)
			return i + 1;
	}
	return len;
}

/* The addr-spec of the first mailbox in a From value: the part in angle
 * brackets when there is one, else the text up to a comma, comments and
 * quoted strings skipped. [*s_r, *e_r). */
static bool first_addr(const char *v, size_t len, size_t *s_r, size_t *e_r)
{
	size_t i = 0, start = SIZE_MAX, bare_end = len;
	bool bare_end_set = false;
	while (i < len) {
		char c = v[i];
		if (c == '"' || c == '(') {
			i = skip_quoted(v, len, i);
			continue;
		}
		if (c == '<' && start == SIZE_MAX) {
			start = i + 1;
		} else if (c == '>' && start != SIZE_MAX) {
			*s_r = start;
			*e_r = i;
			return true;
		} else if ((c == ',' || c == ';' || c == ':') && start == SIZE_MAX && !bare_end_set) {
			/* a list or a group (":"): the bare address ends here */
			if (c == ':')
				return false;
			bare_end = i;
			bare_end_set = true;
		}
		i++;
	}
	if (start != SIZE_MAX)
		return false;                      /* '<' without '>' */
	*s_r = 0;
	*e_r = bare_end;
	return true;
}

bool dkim_name_valid(const char *s)
{
	size_t len = strlen(s), label = 0;
	if (len == 0 || len > 253)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (label == 0)
				return false;
			label = 0;
		} else if (isalnum(c) || c == '-' || c == '_') {
			if (++label > 63)
				return false;
		} else {
			return false;
		}
	}
	return label > 0;
}

bool dkim_from_domain(const char *msg, size_t len, char *out, size_t outsize)
{
	struct hdr_iter it = { msg, len, 0 };
	size_t fs, fe, body;
	while (next_field(&it, &fs, &fe, &body)) {
		if (!field_is(msg + fs, fe - fs, "From"))
			continue;
		const char *v = memchr(msg + fs, ':', fe - fs) + 1;
		size_t vlen = (size_t)(msg + fe - v), as, ae;
		if (!first_addr(v, vlen, &as, &ae))
			return false;
		/* the domain: after the last '@' outside quotes and comments, WSP
		 * and a comment after it dropped */
		const char *at = NULL;
		for (size_t i = as; i < ae;) {
			if (v[i] == '"' || v[i] == '(') {
				i = skip_quoted(v, ae, i);
				continue;
			}
			if (v[i] == '@')
				at = v + i;
			i++;
		}
		if (at == NULL)
			return false;
		size_t n = 0;
		for (const char *p = at + 1; p < v + ae; p++) {
			if (*p == '(')
				break;
			if (is_wsp(*p) || *p == '\r' || *p == '\n')
				continue;
			if (n + 1 >= outsize)
				return false;
			out[n++] = (char)tolower((unsigned char)*p);
		}
		out[n] = '\0';
		return dkim_name_valid(out);       /* a domain literal or junk: false */
	}
	return false;
}

/* ------------------------------------------------------------ signing */

/* Header names signed (relay.h); lowercase, as they appear in h=. */
static const char *const sign_names[] = {
	"from", "to", "cc", "subject", "date", "message-id", "reply-to", "in-reply-to",
	"references", "mime-version", "content-type", "content-transfer-encoding",
	"list-id", "list-help", "list-unsubscribe", "list-unsubscribe-post", "list-subscribe",
	"list-post", "list-owner", "list-archive",
};
#define NSIGN NELEM(sign_names)

static bool oversigned(size_t i)
{
	return strcmp(sign_names[i], "from") == 0 || strcmp(sign_names[i], "subject") == 0;
}

/* The signed fields found in one pass: per name, the last DKIM_MAX_INSTANCES
 * spans in a ring (the bottom-most are the ones h= selects first). */
struct span {
	size_t start, end;
};
struct found {
	size_t count[NSIGN];
	struct span ring[NSIGN][DKIM_MAX_INSTANCES];
	size_t body;                       /* where the body starts */
};

static void find_fields(const char *msg, size_t len, struct found *f)
{
	struct hdr_iter it = { msg, len, 0 };
	size_t s, e;
	memset(f, 0, sizeof(*f));
	f->body = len;
	while (next_field(&it, &s, &e, &f->body)) {
		for (size_t i = 0; i < NSIGN; i++) {
			if (!field_is(msg + s, e - s, sign_names[i]))
				continue;
			f->ring[i][f->count[i] % DKIM_MAX_INSTANCES] = (struct span){ s, e };
			f->count[i]++;
			break;
		}
	}
}

/* Bottom-up (§5.4.2): the k-th instance listed is the k-th from the bottom. */
static const struct span *instance(const struct found *f, size_t i, size_t k)
{
	return &f->ring[i][(f->count[i] - 1 - k) % DKIM_MAX_INSTANCES];
}

struct sha_out {
	EVP_MD_CTX *md;
	bool failed;
};

static void sha_update(void *arg, const char *p, size_t n)
{
	struct sha_out *o = arg;
	if (!o->failed && EVP_DigestUpdate(o->md, p, n) != 1)
		o->failed = true;
}

/* Base64 of the SHA-256 of the relaxed canonical body (bh=). */
static char *body_hash(const char *body, size_t len, char *err, size_t errlen)
{
	unsigned char h[EVP_MAX_MD_SIZE];
	unsigned hlen = 0;
	struct sha_out o = { EVP_MD_CTX_new(), false };
	struct dkim_body b;
	if (o.md == NULL || EVP_DigestInit_ex(o.md, EVP_sha256(), NULL) != 1)
		o.failed = true;
	dkim_body_init(&b, sha_update, &o);
	dkim_body_feed(&b, body, len);
	dkim_body_end(&b);
	if (!o.failed && EVP_DigestFinal_ex(o.md, h, &hlen) != 1)
		o.failed = true;
	EVP_MD_CTX_free(o.md);
	if (o.failed) {
		ssl_fail(err, errlen, "SHA-256 failed");
		return NULL;
	}
	return util_b64_encode(h, hlen);
}

/* The canonical signed fields in h= order, and h= itself ("from:from:to"). */
static int signed_headers(const char *msg, const struct found *f, struct buf *canon, struct buf *h)
{
	for (size_t i = 0; i < NSIGN; i++) {
		size_t n = f->count[i] < DKIM_MAX_INSTANCES ? f->count[i] : DKIM_MAX_INSTANCES;
		for (size_t k = 0; k < n; k++) {
			const struct span *sp = instance(f, i, k);
			if (dkim_canon_header(msg + sp->start, sp->end - sp->start, canon) == -1)
				return -1;
			buf_printf(h, "%s%s", h->len ? ":" : "", sign_names[i]);
		}
		/* one more than present: a field added later breaks the signature
		 * (§8.15); only when every instance is signed, else it would name
		 * an unsigned one */
		if (oversigned(i) && f->count[i] <= DKIM_MAX_INSTANCES)
			buf_printf(h, "%s%s", h->len ? ":" : "", sign_names[i]);
	}
	return 0;
}

/* The DKIM-Signature field being written, folded at FOLD_COLUMNS. */
struct sighdr {
	struct buf b;
	size_t col;
};

/* A token, after a space unless it starts a line; folds first if it would
 * pass the margin. */
static void put(struct sighdr *s, const char *tok, size_t n)
{
	if (s->col + 1 + n > FOLD_COLUMNS && s->col > 1) {
		buf_appends(&s->b, "\r\n\t");
		s->col = 1;
	} else {
		buf_appendc(&s->b, ' ');
		s->col++;
	}
	buf_append(&s->b, tok, n);
	s->col += n;
}

static void put_str(struct sighdr *s, const char *tok)
{
	put(s, tok, strlen(tok));
}

/* h=: folded before a ':' when needed (FWS is allowed there, §3.5). */
static void put_h(struct sighdr *s, const char *names)
{
	const char *p = names;
	bool first = true;
	while (*p != '\0') {
		size_t n = strcspn(p + 1, ":") + 1;
		char tok[64];
		bool last = p[n] == '\0';
		snprintf(tok, sizeof(tok), "%s%.*s%s", first ? "h=" : "", (int)n, p, last ? ";" : "");
		size_t tn = strlen(tok);
		if (first) {
			put(s, tok, tn);
		} else if (s->col + tn > FOLD_COLUMNS) {
			buf_appends(&s->b, "\r\n\t");
			buf_append(&s->b, tok, tn);
			s->col = 1 + tn;
		} else {
			buf_append(&s->b, tok, tn);
			s->col += tn;
		}
		first = false;
		p += n;
	}
}

/* "tag=", then a base64 value with put_b64, FWS inside it where needed
 * (§3.5 allows FWS anywhere in base64). The tag starts a new line unless
 * `room` value octets fit after it (bh= then stays on one line), and b=
 * always has room for some, so it is never left alone at the end of a line:
 * the field hashed with an empty b= is exactly the final one with its value
 * removed. */
static void put_tag(struct sighdr *s, const char *tag, size_t room)
{
	size_t tlen = strlen(tag);
	if (s->col + 1 + tlen + room > FOLD_COLUMNS) {
		buf_appends(&s->b, "\r\n\t");
		s->col = 1;
	} else {
		buf_appendc(&s->b, ' ');
		s->col++;
	}
	buf_append(&s->b, tag, tlen);
	s->col += tlen;
}

static void put_b64(struct sighdr *s, const char *val)
{
	size_t vlen = strlen(val), i = 0;
	while (i < vlen) {
		if (s->col >= FOLD_COLUMNS) {
			buf_appends(&s->b, "\r\n\t");
			s->col = 1;
		}
		size_t n = FOLD_COLUMNS - s->col;
		if (n > vlen - i)
			n = vlen - i;
		buf_append(&s->b, val + i, n);
		s->col += n;
		i += n;
	}
}

/* Signs the hash of canon_headers + the canonical field without b=. */
static int make_signature(const struct dkim_key *key, EVP_MD_CTX *headers, const struct buf *field,
    unsigned char *sig, size_t *siglen, char *err, size_t errlen)
{
	unsigned char h[EVP_MAX_MD_SIZE];
	unsigned hlen = 0;
	struct buf c;
	buf_init(&c, SIG_HEADER_MAX);
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	EVP_PKEY_CTX *pc = NULL;
	EVP_MD_CTX *ed = NULL;
	int ok = dkim_canon_header(field->data, field->len, &c) == 0 && md != NULL &&
	    EVP_MD_CTX_copy_ex(md, headers) == 1 &&
	    EVP_DigestUpdate(md, c.data, c.len - 2) == 1 &&    /* no final CRLF (§3.7) */
	    EVP_DigestFinal_ex(md, h, &hlen) == 1;
	if (ok && key->alg == DKIM_RSA_SHA256) {
		pc = EVP_PKEY_CTX_new_from_pkey(NULL, key->pk, NULL);
		ok = pc != NULL && EVP_PKEY_sign_init(pc) == 1 &&
		    EVP_PKEY_CTX_set_rsa_padding(pc, RSA_PKCS1_PADDING) == 1 &&
		    EVP_PKEY_CTX_set_signature_md(pc, EVP_sha256()) == 1 &&
		    EVP_PKEY_sign(pc, sig, siglen, h, hlen) == 1;
	} else if (ok) {
		/* RFC 8463 §3: PureEdDSA over the SHA-256 hash, not over the data */
		ed = EVP_MD_CTX_new();
		ok = ed != NULL && EVP_DigestSignInit_ex(ed, NULL, NULL, NULL, NULL, key->pk, NULL) == 1 &&
		    EVP_DigestSign(ed, sig, siglen, h, hlen) == 1;
	}
	if (!ok)
		ssl_fail(err, errlen, "signing failed");
	EVP_MD_CTX_free(ed);
	EVP_PKEY_CTX_free(pc);
	EVP_MD_CTX_free(md);
	buf_free(&c);
	return ok ? 0 : -1;
}

/* One DKIM-Signature field (CRLF-terminated) appended to out. */
static int sign_one(const struct dkim_signer *sg, time_t now, const char *hlist, const char *bh,
    EVP_MD_CTX *headers, struct buf *out, char *err, size_t errlen)
{
	struct sighdr s;
	char tok[320];
	buf_init(&s.b, SIG_HEADER_MAX);
	buf_appends(&s.b, "DKIM-Signature:");
	s.col = s.b.len;
	put_str(&s, "v=1;");
	snprintf(tok, sizeof(tok), "a=%s;", dkim_alg_name(sg->key->alg));
	put_str(&s, tok);
	put_str(&s, "c=relaxed/relaxed;");
	snprintf(tok, sizeof(tok), "d=%s;", sg->domain);
	put_str(&s, tok);
	snprintf(tok, sizeof(tok), "s=%s;", sg->selector);
	put_str(&s, tok);
	snprintf(tok, sizeof(tok), "t=%lld;", (long long)now);
	put_str(&s, tok);
	put_h(&s, hlist);
	put_tag(&s, "bh=", strlen(bh) + 1);
	put_b64(&s, bh);
	buf_appendc(&s.b, ';');
	s.col++;
	put_tag(&s, "b=", 8);              /* hashed as it is now, b= empty (§3.7) */

	unsigned char sig[DKIM_RSA_MAX_BITS / 8 + 64];
	size_t siglen = sizeof(sig);
	int rc = make_signature(sg->key, headers, &s.b, sig, &siglen, err, errlen);
	if (rc == 0) {
		char *b64 = util_b64_encode(sig, siglen);
		put_b64(&s, b64);
		free(b64);
		buf_appends(&s.b, "\r\n");
		rc = buf_append(out, s.b.data, s.b.len);
		if (rc == -1)
			snprintf(err, errlen, "signature fields too large");
	}
	buf_free(&s.b);
	return rc;
}

char *dkim_sign(const struct dkim_signer *signers, size_t n, time_t now, const char *msg, size_t len,
    size_t *len_r, char *err, size_t errlen)
{
	if (n == 0) {
		snprintf(err, errlen, "no signer");
		return NULL;
	}
	for (size_t i = 0; i < n; i++) {
		if (!dkim_name_valid(signers[i].domain) || !dkim_name_valid(signers[i].selector)) {
			snprintf(err, errlen, "d=%.100s s=%.100s: not a DNS name", signers[i].domain,
			    signers[i].selector);
			return NULL;
		}
	}
	struct found *f = xmalloc(sizeof(*f));
	find_fields(msg, len, f);
	if (f->count[0] == 0) {            /* sign_names[0] is "from": required (§5.4) */
		snprintf(err, errlen, "no From field");
		free(f);
		return NULL;
	}
	struct buf canon, h, out;
	buf_init(&canon, len + 64 * DKIM_MAX_INSTANCES * NSIGN);  /* canonical is never longer, but CRLFs */
	buf_init(&h, 64 * 1024);
	buf_init(&out, (size_t)SIG_HEADER_MAX * (n + 1));
	char *bh = NULL;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	int rc = -1;
	if (signed_headers(msg, f, &canon, &h) == -1) {
		snprintf(err, errlen, "signed header fields too large");
		goto done;
	}
	if ((bh = body_hash(msg + f->body, len - f->body, err, errlen)) == NULL)
		goto done;
	if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1 ||
	    EVP_DigestUpdate(md, canon.data, canon.len) != 1) {
		ssl_fail(err, errlen, "SHA-256 failed");
		goto done;
	}
	rc = 0;
	for (size_t i = 0; i < n && rc == 0; i++)
		rc = sign_one(&signers[i], now, h.data, bh, md, &out, err, errlen);
done:
	EVP_MD_CTX_free(md);
	free(bh);
	buf_free(&h);
	buf_free(&canon);
	free(f);
	if (rc == -1) {
		buf_free(&out);
		return NULL;
	}
	return buf_steal(&out, len_r);
}
