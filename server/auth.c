/* auth.c: the account database and authentication (design §4).
 *
 * A struct auth is an immutable, refcounted snapshot built from the config's
 * `users:` plus the users file: accounts, a sorted name index (addresses and
 * aliases) for bsearch, the local domains, the offered SASL mechanisms and one
 * Gsasl context. Recipients (exact, alias, +tag, catch-all) and envelope
 * senders are resolved over it by recipient.c (design §4, §6), which also
 * builds the local domains kept here.
 * Nothing in it changes after auth_new(), so password checks (password.c)
 * and SASL steps may run on worker threads concurrently; each SASL exchange
 * owns its own Gsasl_session and the gsasl callback only reads the snapshot.
 *
 * Nothing here logs credentials or SASL payloads; the caller logs
 * auth.ok / auth.fail with the remote address (for fail2ban). */
#include "server/server.h"

#include <ctype.h>
#include <gsasl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"

#define SCRAM_ITER_DIGITS 9          /* sanity bound on stored iteration counts */
#define SALT_KEY_LEN 32

/* Spent on unknown users and empty hashes so that the answer time does not
 * reveal which accounts exist (used when no account has a hash to borrow). */
static const char dummy_hash_default[] =
	"$y$j9T$bjRP.L7Qu8iuJWgIoIAec0$Vs/sic8kT5HYUKVe.vIVadXIPgLpcihDBjUXC/yNOl3";

/* ---------------------------------------------------------------- types */

/* One parsed "<iter>:<salt b64>:<StoredKey b64>:<ServerKey b64>" (RFC 5802 §5.1
 * names). Kept as text: gsasl 2.2 takes GSASL_SCRAM_ITER as decimal and salt and
 * both keys as base64 (its gsasl.h says "hex-encoded" for the keys; the code in
 * lib/scram/server.c base64-decodes them). All NULL when the account has none. */
struct scram_cred {
	char *iter;
	char *salt;
	char *stored_key;
	char *server_key;
};

struct entry {
	struct account acct;         /* first member: what auth_find() hands out */
	struct scram_cred scram[2];  /* [0] SCRAM-SHA-1, [1] SCRAM-SHA-256 */
};

struct name_ref {
	const char *name;            /* an address or alias, owned by *e */
	struct entry *e;
};

#define M_CLIENT_FIRST 0x01  /* client sends first (RFC 4422 §3.3): empty initial response is malformed */
#define M_SIMPLE       0x02  /* gsasl asks GSASL_VALIDATE_SIMPLE (we check crypt hashes) */
#define M_SECRET       0x04  /* needs the recoverable secret as GSASL_PASSWORD */
#define M_SCRAM        0x08  /* secret, or stored keys (RFC 5802 §5.1) */
#define M_SHA256       0x10
#define M_PLUS         0x20  /* channel binding (RFC 5802 §6, RFC 9266 tls-exporter) */
#define M_LOGIN        0x40

struct mech {
	const char *name;
	unsigned flags;
	const char *plus;            /* the -PLUS sibling, for the 'y' downgrade check */
};

/* The mechanisms we validate; anything else in auth.mechanisms is skipped. */
static const struct mech mech_table[] = {
	{ "PLAIN", M_CLIENT_FIRST | M_SIMPLE, NULL },
	{ "LOGIN", M_SIMPLE | M_LOGIN, NULL },
	{ "CRAM-MD5", M_SECRET, NULL },
	{ "DIGEST-MD5", M_SECRET, NULL },
	{ "SCRAM-SHA-1", M_CLIENT_FIRST | M_SCRAM, "SCRAM-SHA-1-PLUS" },
	{ "SCRAM-SHA-1-PLUS", M_CLIENT_FIRST | M_SCRAM | M_PLUS, NULL },
	{ "SCRAM-SHA-256", M_CLIENT_FIRST | M_SCRAM | M_SHA256, "SCRAM-SHA-256-PLUS" },
	{ "SCRAM-SHA-256-PLUS", M_CLIENT_FIRST | M_SCRAM | M_SHA256 | M_PLUS, NULL },
};
#define NMECH (sizeof(mech_table) / sizeof(mech_table[0]))

struct auth {
	atomic_uint refs;
	struct entry *entries;
	size_t nentries;
	struct name_ref *names;      /* sorted case-insensitively, no duplicates */
	size_t nnames;
	char **domains;              /* local domains: lowercased, sorted, unique, NULL-terminated */
	size_t ndomains;
	const struct mech *mechs[NMECH];  /* configured and supported, config order */
	size_t nmechs;
	const char *offer_none[1];   /* the three answers of auth_mechanisms() */
	const char *offer_plain[NMECH + 1];
	const char *offer_plus[NMECH + 1];
	bool allow_plaintext;
	Gsasl *gsasl;
	const char *dummy_hash;      /* points into an entry or dummy_hash_default */
	unsigned char salt_key[SALT_KEY_LEN]; /* keys the SCRAM salts we make up */
};

struct auth_sasl {
	struct auth *a;              /* reference held until auth_sasl_free */
	const struct mech *mech;
	Gsasl_session *gs;
	const struct entry *bound;   /* account whose credentials were checked/handed out */
	const char *user;            /* bound->acct.address after AUTH_OK */
	unsigned steps;
	bool finished;
};

/* ---------------------------------------------------------------- accounts */

static char *dup_or_empty(const char *s)
{
	return xstrdup(s != NULL ? s : "");
}

static bool b64_len_ok(const char *s, size_t len, size_t want)
{
	unsigned char *bin;
	size_t binlen;
	if (util_b64_decode(s, len, &bin, &binlen) == -1)
		return false;
	OPENSSL_cleanse(bin, binlen);
	free(bin);
	return want == 0 ? binlen > 0 : binlen == want;
}

/* Splits "<iter>:<salt>:<stored>:<server>" in place into f[4]. */
static int split4(char *s, char *f[4])
{
	for (int i = 0; i < 4; i++) {
		f[i] = s;
		s = strchr(s, ':');
		if ((s == NULL) != (i == 3))
			return -1;
		if (s != NULL)
			*s++ = '\0';
	}
	return 0;
}

static bool iter_ok(const char *s)
{
	size_t n = strspn(s, "0123456789");
	return n > 0 && n <= SCRAM_ITER_DIGITS && s[n] == '\0' && strtoul(s, NULL, 10) > 0;
}

static int scram_parse(const char *s, bool sha256, struct scram_cred *c)
{
	size_t keylen = sha256 ? 32 : 20;
	char *copy, *f[4];
	if (s == NULL || *s == '\0')
		return 0;
	copy = xstrdup(s);
	if (split4(copy, f) == -1 || !iter_ok(f[0]) || !b64_len_ok(f[1], strlen(f[1]), 0) ||
	    !b64_len_ok(f[2], strlen(f[2]), keylen) || !b64_len_ok(f[3], strlen(f[3]), keylen)) {
		free(copy);
		return -1;
	}
	c->iter = xstrdup(f[0]);
	c->salt = xstrdup(f[1]);
	c->stored_key = xstrdup(f[2]);
	c->server_key = xstrdup(f[3]);
	free(copy);
	return 0;
}

static void scram_free(struct scram_cred *c)
{
	free(c->iter);
	free(c->salt);
	free(c->stored_key);
	free(c->server_key);
}

static char **copy_aliases(char *const *v)
{
	size_t n = 0;
	while (v != NULL && v[n] != NULL)
		n++;
	char **r = xreallocarray(NULL, n + 1, sizeof(*r));
	for (size_t i = 0; i < n; i++)
		r[i] = xstrdup(v[i]);
	r[n] = NULL;
	return r;
}

/* The domain of a configured name: NULL unless it has exactly one '@' and a
 * non-empty domain after it. The local part is empty for "@domain". */
static const char *name_domain(const char *name)
{
	const char *at = strchr(name, '@');
	if (at == NULL || at[1] == '\0' || strchr(at + 1, '@') != NULL)
		return NULL;
	return at + 1;
}

/* An address is local@domain; an alias is that or "@domain", the domain's
 * catch-all. Domain literals (RFC 5321 §4.1.3) are never local domains here. */
static const char *name_problem(const char *name, bool alias)
{
	const char *d = name_domain(name);
	if (d == NULL || (!alias && d == name + 1))
		return alias ? "expected local@domain or @domain" : "expected local@domain";
	if (d[0] == '[')
		return "a domain literal is never a local domain";
	return NULL;
}

static int check_names(const struct cfg_user *u, char *err, size_t errlen)
{
	const char *why = name_problem(u->address, false);
	if (why != NULL) {
		snprintf(err, errlen, "bad address '%s': %s", u->address, why);
		return -1;
	}
	for (char *const *al = u->aliases; al != NULL && *al != NULL; al++) {
		if ((why = name_problem(*al, true)) != NULL) {
			snprintf(err, errlen, "%s: bad alias '%s': %s", u->address, *al, why);
			return -1;
		}
	}
	return 0;
}

static int entry_init(struct entry *e, const struct cfg_user *u, char *err, size_t errlen)
{
	if (u->address == NULL || *u->address == '\0') {
		snprintf(err, errlen, "user without address");
		return -1;
	}
	if (check_names(u, err, errlen) == -1)
		return -1;
	e->acct.address = xstrdup(u->address);
	e->acct.password = dup_or_empty(u->password);
	e->acct.secret = dup_or_empty(u->secret);
	e->acct.scram_sha1 = dup_or_empty(u->scram_sha1);
	e->acct.scram_sha256 = dup_or_empty(u->scram_sha256);
	e->acct.aliases = copy_aliases(u->aliases);
	e->acct.quota = u->quota;
	for (int i = 0; i < 2; i++) {
		const char *s = i ? e->acct.scram_sha256 : e->acct.scram_sha1;
		if (scram_parse(s, i == 1, &e->scram[i]) == -1) {
			snprintf(err, errlen, "%s: bad %s: want <iter>:<salt>:<StoredKey>:<ServerKey> in base64",
			    u->address, i ? "scram_sha256" : "scram_sha1");
			return -1;
		}
	}
	return 0;
}

static void entry_free(struct entry *e)
{
	if (e->acct.password != NULL)
		OPENSSL_cleanse(e->acct.password, strlen(e->acct.password));
	if (e->acct.secret != NULL)
		OPENSSL_cleanse(e->acct.secret, strlen(e->acct.secret));
	free(e->acct.address);
	free(e->acct.password);
	free(e->acct.secret);
	free(e->acct.scram_sha1);
	free(e->acct.scram_sha256);
	xfree_strv(&e->acct.aliases);
	scram_free(&e->scram[0]);
	scram_free(&e->scram[1]);
}

static int add_users(struct auth *a, const struct cfg_user *u, size_t n, char *err, size_t errlen)
{
	for (size_t i = 0; i < n; i++)
		if (entry_init(&a->entries[a->nentries++], &u[i], err, errlen) == -1)
			return -1;
	return 0;
}

static int load_accounts(struct auth *a, const struct config *cfg, char *err, size_t errlen)
{
	struct cfg_user *fu = NULL;
	size_t fn = 0;
	int rc;
	if (cfg->users_file != NULL && *cfg->users_file != '\0' &&
	    cfg_load_users_file(cfg->users_file, &fu, &fn, err, errlen) == -1)
		return -1;              /* err already says file:line:column: message */
	if (cfg->nusers > SIZE_MAX - fn)
		fatalx("auth: user count overflow");
	a->entries = xcalloc(cfg->nusers + fn, sizeof(*a->entries));
	rc = add_users(a, cfg->users, cfg->nusers, err, errlen);
	if (rc == 0)
		rc = add_users(a, fu, fn, err, errlen);
	if (fu != NULL)
		cfg_users_free(&fu, fn);
	return rc;
}

static int name_cmp(const void *x, const void *y)
{
	const struct name_ref *p = x, *q = y;
	return strcasecmp(p->name, q->name);
}

static void add_name(struct auth *a, const char *name, struct entry *e)
{
	a->names[a->nnames].name = name;
	a->names[a->nnames++].e = e;
}

/* Addresses and aliases share one namespace: a name must lead to one account. */
static int index_names(struct auth *a, char *err, size_t errlen)
{
	size_t n = a->nentries;
	for (size_t i = 0; i < a->nentries; i++)
		for (char **al = a->entries[i].acct.aliases; *al != NULL; al++)
			n++;
	a->names = xreallocarray(NULL, n + 1, sizeof(*a->names));
	for (size_t i = 0; i < a->nentries; i++) {
		add_name(a, a->entries[i].acct.address, &a->entries[i]);
		for (char **al = a->entries[i].acct.aliases; *al != NULL; al++)
			add_name(a, *al, &a->entries[i]);
	}
	if (a->nnames > 0)
		qsort(a->names, a->nnames, sizeof(*a->names), name_cmp);
	for (size_t i = 1; i < a->nnames; i++) {
		if (name_cmp(&a->names[i - 1], &a->names[i]) != 0)
			continue;
		if (a->names[i].name[0] == '@')
			snprintf(err, errlen, "duplicate catch-all for domain %s", a->names[i].name + 1);
		else
			snprintf(err, errlen, "duplicate address or alias: %s", a->names[i].name);
		return -1;
	}
	return 0;
}

/* An address or alias (logins, authzids, auth_find). A catch-all "@domain"
 * is no name to log in with: it is reached only through auth_find_parts(). */
static struct entry *lookup(const struct auth *a, const char *name)
{
	struct name_ref key = { name, NULL }, *r;
	if (name == NULL || name[0] == '@' || a->nnames == 0)
		return NULL;
	r = bsearch(&key, a->names, a->nnames, sizeof(*a->names), name_cmp);
	return r != NULL ? r->e : NULL;
}

/* A name given in pieces (local part, "@", domain), compared the way
 * name_cmp (strcasecmp) orders the index: no buffer sized by client input. */
struct name_key {
	const char *s[3];
	size_t len[3];
};

static int key_cmp(const void *k, const void *elem)
{
	const struct name_key *key = k;
	const unsigned char *n = (const unsigned char *)((const struct name_ref *)elem)->name;
	for (int i = 0; i < 3; i++) {
		for (size_t j = 0; j < key->len[i]; j++, n++) {
			int d = tolower((unsigned char)key->s[i][j]) - tolower(*n);
			if (d != 0)
				return d;      /* also when the name ends first (*n == 0) */
		}
	}
	return *n == '\0' ? 0 : -1;
}

/* For recipient.c's resolution: unlike lookup(), llen 0 finds the catch-all. */
const struct account *auth_find_parts(const struct auth *a, const char *local, size_t llen,
    const char *domain)
{
	struct name_key key = { { local, "@", domain }, { llen, 1, strlen(domain) } };
	struct name_ref *r;
	if (a->nnames == 0)
		return NULL;
	r = bsearch(&key, a->names, a->nnames, sizeof(*a->names), key_cmp);
	return r != NULL ? &r->e->acct : NULL;
}

/* ---------------------------------------------------------------- mechanisms */

static const struct mech *mech_by_name(const char *name)
{
	for (size_t i = 0; i < NMECH; i++)
		if (strcasecmp(mech_table[i].name, name) == 0)
			return &mech_table[i];
	return NULL;
}

static const struct mech *mech_configured(const struct auth *a, const char *name)
{
	for (size_t i = 0; name != NULL && i < a->nmechs; i++)
		if (strcasecmp(a->mechs[i]->name, name) == 0)
			return a->mechs[i];
	return NULL;
}

/* Design §4: CRAM-MD5 and DIGEST-MD5 work only for accounts that carry a
 * recoverable secret, SCRAM for those with a secret or stored keys for its
 * hash. Offering a mechanism no account of the snapshot can use only makes
 * clients fail: Python's smtplib, for one, picks CRAM-MD5 first when it is
 * offered, and each failure counts against the login throttle. */
static bool mech_has_credentials(const struct auth *a, const struct mech *m)
{
	if (!(m->flags & (M_SECRET | M_SCRAM)))
		return true;
	for (size_t i = 0; i < a->nentries; i++) {
		const struct entry *e = &a->entries[i];
		if (e->acct.secret[0] != '\0')
			return true;
		if ((m->flags & M_SCRAM) && e->scram[(m->flags & M_SHA256) ? 1 : 0].salt != NULL)
			return true;
	}
	return false;
}

static void add_mech(struct auth *a, const char *name)
{
	const struct mech *m = mech_by_name(name);
	if (m != NULL && mech_configured(a, m->name) != NULL)
		return;
	if (m == NULL || !gsasl_server_support_p(a->gsasl, m->name)) {
		log_msg(LL_WARN, "auth.mech_unsupported", "SASL mechanism %s is not supported; not offered", name);
		return;
	}
	if (!mech_has_credentials(a, m)) {
		log_msg(LL_INFO, "auth.mech_unused", "SASL mechanism %s: no account has %s; not offered",
		    m->name, (m->flags & M_SECRET) ? "a secret" : (m->flags & M_SHA256)
		    ? "a secret or scram_sha256 keys" : "a secret or scram_sha1 keys");
		return;
	}
	a->mechs[a->nmechs++] = m;
}

static void setup_mechs(struct auth *a, const struct config *cfg)
{
	size_t np = 0, nq = 0;
	for (size_t i = 0; cfg->auth.mechanisms != NULL && cfg->auth.mechanisms[i] != NULL; i++)
		add_mech(a, cfg->auth.mechanisms[i]);
	for (size_t i = 0; i < a->nmechs; i++) {
		a->offer_plus[nq++] = a->mechs[i]->name;
		if (!(a->mechs[i]->flags & M_PLUS))
			a->offer_plain[np++] = a->mechs[i]->name;
	}
	a->offer_plain[np] = NULL;
	a->offer_plus[nq] = NULL;
	a->offer_none[0] = NULL;
}

static bool has_cb(const struct auth_conn_info *ci)
{
	return (ci->cb_tls_exporter != NULL && ci->cb_tls_exporter_len > 0) ||
	    (ci->cb_tls_unique != NULL && ci->cb_tls_unique_len > 0);
}

/* Design §4: no authentication before TLS, except from loopback or when the
 * operator allows plaintext. -PLUS needs a TLS channel to bind to. */
static bool mech_usable(const struct auth *a, const struct mech *m, const struct auth_conn_info *ci)
{
	if (!ci->tls && !ci->loopback && !a->allow_plaintext)
		return false;
	if (m->flags & M_PLUS)
		return ci->tls && has_cb(ci);
	return true;
}

const char *const *auth_mechanisms(const struct auth *a, const struct auth_conn_info *ci)
{
	if (!ci->tls && !ci->loopback && !a->allow_plaintext)
		return a->offer_none;
	return ci->tls && has_cb(ci) ? a->offer_plus : a->offer_plain;
}

bool auth_mech_allowed(const struct auth *a, const char *mech, const struct auth_conn_info *ci)
{
	const struct mech *m = mech_configured(a, mech);
	return m != NULL && mech_usable(a, m, ci);
}

/* ---------------------------------------------------------------- snapshot */

static int sasl_callback(Gsasl *ctx, Gsasl_session *gs, Gsasl_property prop);

static void pick_dummy_hash(struct auth *a)
{
	/* Borrowing a real hash makes the decoy cost what real checks cost here. */
	a->dummy_hash = dummy_hash_default;
	for (size_t i = 0; i < a->nentries; i++) {
		if (a->entries[i].acct.password[0] != '\0') {
			a->dummy_hash = a->entries[i].acct.password;
			return;
		}
	}
}

static void auth_free(struct auth *a)
{
	for (size_t i = 0; i < a->nentries; i++)
		entry_free(&a->entries[i]);
	free(a->entries);
	free(a->names);
	xfree_strv(&a->domains);
	if (a->gsasl != NULL)
		gsasl_done(a->gsasl);
	OPENSSL_cleanse(a->salt_key, sizeof(a->salt_key));
	free(a);
}

static int init_gsasl(struct auth *a, char *err, size_t errlen)
{
	int rc = gsasl_init(&a->gsasl);
	if (rc != GSASL_OK) {
		a->gsasl = NULL;
		snprintf(err, errlen, "gsasl_init: %s", gsasl_strerror(rc));
		return -1;
	}
	gsasl_callback_set(a->gsasl, sasl_callback);
	return 0;
}

struct auth *auth_new(const struct config *cfg, char *err, size_t errlen)
{
	struct auth *a = xcalloc(1, sizeof(*a));
	atomic_init(&a->refs, 1);
	if (load_accounts(a, cfg, err, errlen) == -1 || index_names(a, err, errlen) == -1 ||
	    init_gsasl(a, err, errlen) == -1)
		goto fail;
	if (RAND_bytes(a->salt_key, sizeof(a->salt_key)) != 1) {
		snprintf(err, errlen, "auth: no random bytes for SCRAM salts");
		goto fail;
	}
	a->allow_plaintext = cfg->auth.allow_plaintext;
	setup_mechs(a, cfg);
	pick_dummy_hash(a);
	a->domains = recipient_domains(a, cfg, &a->ndomains);
	recipient_warn_no_postmaster(a);
	return a;
fail:
	auth_free(a);
	return NULL;
}

void auth_ref(struct auth *a)
{
	if (a != NULL)
		atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed);
}

void auth_unref(struct auth **a_r)
{
	struct auth *a = *a_r;
	*a_r = NULL;
	if (a != NULL && atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) == 1)
		auth_free(a);
}

size_t auth_count(const struct auth *a)
{
	return a->nentries;
}

const struct account *auth_find(const struct auth *a, const char *address)
{
	struct entry *e = lookup(a, address);
	return e != NULL ? &e->acct : NULL;
}

const struct account *auth_account_at(const struct auth *a, size_t i)
{
	if (i >= a->nentries)
		fatalx("auth_account_at: %zu of %zu", i, a->nentries);
	return &a->entries[i].acct;
}

char *const *auth_local_domains(const struct auth *a, size_t *n_r)
{
	*n_r = a->ndomains;
	return a->domains;
}

const char *auth_dummy_hash(const struct auth *a)
{
	return a->dummy_hash;
}

/* ---------------------------------------------------------------- gsasl callback */

static const struct entry *session_entry(const struct auth_sasl *s)
{
	return lookup(s->a, gsasl_property_fast(s->gs, GSASL_AUTHID));
}

/* RFC 4616 §2: the authzid, when given, must name the authenticated account
 * (its address or one of its aliases); no proxy authorization here. */
static bool authzid_ok(const struct auth_sasl *s, const struct entry *e)
{
	const char *z = gsasl_property_fast(s->gs, GSASL_AUTHZID);
	return z == NULL || *z == '\0' || lookup(s->a, z) == e;
}

/* PLAIN and LOGIN. Never answers GSASL_NO_CALLBACK: gsasl would then fall back
 * to comparing GSASL_PASSWORD itself. */
static int cb_validate_simple(struct auth_sasl *s)
{
	const char *authid = gsasl_property_fast(s->gs, GSASL_AUTHID);
	const char *pass = gsasl_property_fast(s->gs, GSASL_PASSWORD);
	const struct account *acct;
	if (!(s->mech->flags & M_SIMPLE))
		return GSASL_AUTHENTICATION_ERROR;
	if (auth_check_password(s->a, authid, pass, &acct) != AUTH_OK)
		return GSASL_AUTHENTICATION_ERROR;
	const struct entry *e = (const struct entry *)acct;   /* acct is the first member */
	if (!authzid_ok(s, e))
		return GSASL_AUTHENTICATION_ERROR;
	s->bound = e;
	return GSASL_OK;
}

/* CRAM-MD5, DIGEST-MD5 and SCRAM for accounts with a recoverable secret.
 * Without one the property stays unset and gsasl fails with GSASL_NO_PASSWORD. */
static int cb_password(struct auth_sasl *s)
{
	const struct entry *e;
	if (!(s->mech->flags & (M_SECRET | M_SCRAM)))
		return GSASL_NO_CALLBACK;
	e = session_entry(s);
	if (e == NULL || e->acct.secret[0] == '\0')
		return GSASL_NO_CALLBACK;
	if (gsasl_property_set(s->gs, GSASL_PASSWORD, e->acct.secret) != GSASL_OK)
		return GSASL_MALLOC_ERROR;
	s->bound = e;
	return GSASL_OK;
}

/* The stored keys SCRAM uses for this account: only when it has no secret
 * (a secret lets gsasl derive keys itself) and has keys for this hash. */
static const struct scram_cred *scram_cred_for(const struct auth_sasl *s, const struct entry *e)
{
	const struct scram_cred *c;
	if (e == NULL || e->acct.secret[0] != '\0')
		return NULL;
	c = &e->scram[(s->mech->flags & M_SHA256) ? 1 : 0];
	return c->salt != NULL ? c : NULL;
}

/* A salt for names without stored keys (unknown users, secret-only accounts):
 * stable per name and snapshot, so a salt that changes between attempts does
 * not tell an attacker that the name has no stored keys. */
static char *made_up_salt(const struct auth_sasl *s, const char *authid)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;
	/* keyed by hash, not mechanism: -PLUS must show the same salt as plain SCRAM */
	char *lower = xasprintf("%s\n%s", (s->mech->flags & M_SHA256) ? "sha256" : "sha1",
	    authid != NULL ? authid : "");
	for (char *p = lower; *p != '\0'; p++)
		*p = (char)tolower((unsigned char)*p);
	if (HMAC(EVP_sha256(), s->a->salt_key, SALT_KEY_LEN, (const unsigned char *)lower,
	    strlen(lower), md, &mdlen) == NULL)
		mdlen = 0;
	free(lower);
	return mdlen >= AUTH_SCRAM_SALT_LEN ? util_b64_encode(md, AUTH_SCRAM_SALT_LEN) : NULL;
}

static int cb_scram_salt(struct auth_sasl *s, Gsasl_property prop)
{
	const char *authid = gsasl_property_fast(s->gs, GSASL_AUTHID);
	const struct scram_cred *c;
	char *made = NULL;
	int rc;
	if (!(s->mech->flags & M_SCRAM))
		return GSASL_NO_CALLBACK;
	c = scram_cred_for(s, lookup(s->a, authid));
	if (prop == GSASL_SCRAM_ITER)
		return gsasl_property_set(s->gs, prop, c != NULL ? c->iter : "4096");
	if (c == NULL && (made = made_up_salt(s, authid)) == NULL)
		return GSASL_CRYPTO_ERROR;
	rc = gsasl_property_set(s->gs, prop, c != NULL ? c->salt : made);
	free(made);
	return rc;
}

static int cb_scram_keys(struct auth_sasl *s)
{
	const struct entry *e = session_entry(s);
	const struct scram_cred *c = scram_cred_for(s, e);
	if (!(s->mech->flags & M_SCRAM) || c == NULL)
		return GSASL_NO_CALLBACK;
	if (gsasl_property_set(s->gs, GSASL_SCRAM_SERVERKEY, c->server_key) != GSASL_OK ||
	    gsasl_property_set(s->gs, GSASL_SCRAM_STOREDKEY, c->stored_key) != GSASL_OK)
		return GSASL_MALLOC_ERROR;
	s->bound = e;
	return GSASL_OK;
}

/* Runs on whatever thread runs the step; reads only the immutable snapshot and
 * the exchange's own session. */
static int sasl_callback(Gsasl *ctx, Gsasl_session *gs, Gsasl_property prop)
{
	struct auth_sasl *s = gs != NULL ? gsasl_session_hook_get(gs) : NULL;
	(void)ctx;
	if (s == NULL)
		return GSASL_NO_CALLBACK;
	switch (prop) {
	case GSASL_VALIDATE_SIMPLE:
		return cb_validate_simple(s);
	case GSASL_PASSWORD:
		return cb_password(s);
	case GSASL_SCRAM_ITER:
	case GSASL_SCRAM_SALT:
		return cb_scram_salt(s, prop);
	case GSASL_SCRAM_SERVERKEY:
	case GSASL_SCRAM_STOREDKEY:
		return cb_scram_keys(s);
	default:
		return GSASL_NO_CALLBACK;
	}
}

/* ---------------------------------------------------------------- SASL exchange */

static int set_b64_prop(Gsasl_session *gs, Gsasl_property prop, const unsigned char *p, size_t n)
{
	if (p == NULL || n == 0)
		return GSASL_OK;
	char *b64 = util_b64_encode(p, n);
	int rc = gsasl_property_set(gs, prop, b64);
	free(b64);
	return rc;
}

/* Channel-binding data goes to gsasl when this connection offers -PLUS: for
 * a -PLUS exchange, and for plain SCRAM so that gsasl refuses a client "y"
 * flag (RFC 5802 §6: the client thinks we do not support binding — a downgrade). */
static bool offers_cb(const struct auth *a, const struct mech *m, const struct auth_conn_info *ci)
{
	return (m->flags & M_PLUS) || (m->plus != NULL && auth_mech_allowed(a, m->plus, ci));
}

static int set_session_props(struct auth_sasl *s, const struct auth_conn_info *ci)
{
	int rc = GSASL_OK;
	if (ci->service != NULL)
		rc = gsasl_property_set(s->gs, GSASL_SERVICE, ci->service);
	if (rc == GSASL_OK && ci->hostname != NULL)
		rc = gsasl_property_set(s->gs, GSASL_HOSTNAME, ci->hostname);
	/* DIGEST-MD5 offers this realm in its challenge (RFC 2831 §2.1.1) */
	if (rc == GSASL_OK && ci->hostname != NULL && strcmp(s->mech->name, "DIGEST-MD5") == 0)
		rc = gsasl_property_set(s->gs, GSASL_REALM, ci->hostname);
	if (rc == GSASL_OK && offers_cb(s->a, s->mech, ci)) {
		rc = set_b64_prop(s->gs, GSASL_CB_TLS_EXPORTER, ci->cb_tls_exporter, ci->cb_tls_exporter_len);
		if (rc == GSASL_OK)
			rc = set_b64_prop(s->gs, GSASL_CB_TLS_UNIQUE, ci->cb_tls_unique, ci->cb_tls_unique_len);
	}
	return rc;
}

struct auth_sasl *auth_sasl_start(struct auth *a, const char *mech, const struct auth_conn_info *ci,
    enum auth_result *res_r)
{
	const struct mech *m = mech_configured(a, mech);
	struct auth_sasl *s;
	*res_r = AUTH_BADPROTO;
	if (m == NULL || !mech_usable(a, m, ci))
		return NULL;
	s = xcalloc(1, sizeof(*s));
	s->mech = m;
	auth_ref(a);
	s->a = a;
	if (gsasl_server_start(a->gsasl, m->name, &s->gs) != GSASL_OK) {
		s->gs = NULL;
		goto fail;
	}
	gsasl_session_hook_set(s->gs, s);
	if (set_session_props(s, ci) != GSASL_OK)
		goto fail;
	*res_r = AUTH_CONTINUE;
	return s;
fail:
	*res_r = AUTH_TEMPFAIL;
	auth_sasl_free(&s);
	return NULL;
}

/* Decodes the client's response. RFC 4954 §4: on the first step NULL means
 * "no initial response" and "=" an empty one. Client-first mechanisms cannot
 * start with an empty message (gsasl would treat it as "no data yet" and loop);
 * server-first ones (LOGIN, CRAM-MD5, DIGEST-MD5) treat it as none. After a
 * challenge no mechanism here takes an empty response. */
static enum auth_result decode_input(const struct auth_sasl *s, const char *in_b64,
    unsigned char **in_r, size_t *len_r)
{
	*in_r = NULL;
	*len_r = 0;
	if (s->steps == 0 && in_b64 == NULL)
		return AUTH_CONTINUE;
	if (s->steps == 0 && (strcmp(in_b64, "=") == 0 || *in_b64 == '\0'))
		return (s->mech->flags & M_CLIENT_FIRST) ? AUTH_BADPROTO : AUTH_CONTINUE;
	if (in_b64 == NULL || *in_b64 == '\0')
		return AUTH_BADPROTO;
	if (util_b64_decode(in_b64, strlen(in_b64), in_r, len_r) == -1)
		return AUTH_BADPROTO;
	return AUTH_CONTINUE;
}

/* GSASL_OK only means the exchange was consistent: it is success only when
 * our callback checked or handed out the credentials of the account the
 * exchange names, and the authzid names that account too. */
static enum auth_result finish_ok(struct auth_sasl *s)
{
	const struct entry *e = session_entry(s);
	if (s->bound == NULL || e != s->bound || !authzid_ok(s, e))
		return AUTH_FAIL;
	s->user = e->acct.address;     /* an alias logs in as its account */
	return AUTH_OK;
}

static enum auth_result map_rc(struct auth_sasl *s, int rc)
{
	switch (rc) {
	case GSASL_NEEDS_MORE:
		return AUTH_CONTINUE;
	case GSASL_OK:
		return finish_ok(s);
	case GSASL_AUTHENTICATION_ERROR:
	case GSASL_NO_PASSWORD:          /* unknown user, or no secret/keys for it */
	case GSASL_NO_AUTHID:
	case GSASL_NO_AUTHZID:
	case GSASL_NO_CB_TLS_UNIQUE:     /* client binds to a type we have no data for */
	case GSASL_NO_CB_TLS_EXPORTER:
		return AUTH_FAIL;
	case GSASL_MECHANISM_PARSE_ERROR:
	case GSASL_BASE64_ERROR:
	case GSASL_SASLPREP_ERROR:
	case GSASL_MECHANISM_CALLED_TOO_MANY_TIMES:
		return AUTH_BADPROTO;
	default:
		return AUTH_TEMPFAIL;
	}
}

/* gsasl_step with our own base64 (strict, and so that a bad encoding is
 * AUTH_BADPROTO whatever gsasl would call it). */
static enum auth_result step_raw(struct auth_sasl *s, const unsigned char *in, size_t inlen,
    char **out_b64_r)
{
	char *out = NULL;
	size_t outlen = 0;
	int rc = gsasl_step(s->gs, (const char *)in, inlen, &out, &outlen);
	enum auth_result r = map_rc(s, rc);
	if ((r == AUTH_OK || r == AUTH_CONTINUE) && (rc == GSASL_OK || rc == GSASL_NEEDS_MORE))
		*out_b64_r = util_b64_encode(out != NULL ? out : "", out != NULL ? outlen : 0);
	if (rc == GSASL_OK || rc == GSASL_NEEDS_MORE)
		gsasl_free(out);       /* on errors gsasl leaves it unspecified */
	return r;
}

/* LOGIN (draft-murchison-sasl-login §2) lets the client send the user name as
 * initial response; gsasl's LOGIN ignores input on its first step, so that
 * step ("User Name") runs silently and the name goes to the second. */
static enum auth_result login_skip_prompt(struct auth_sasl *s)
{
	char *prompt = NULL;
	enum auth_result r = step_raw(s, NULL, 0, &prompt);
	free(prompt);
	return r;
}

static enum auth_result first_step_checks(struct auth_sasl *s, size_t inlen)
{
	if (inlen == 0 || (s->mech->flags & M_CLIENT_FIRST))
		return AUTH_CONTINUE;
	if (s->mech->flags & M_LOGIN)
		return login_skip_prompt(s);
	return AUTH_BADPROTO;   /* CRAM-MD5, DIGEST-MD5: the server speaks first */
}

enum auth_result auth_sasl_step(struct auth_sasl *s, const char *in_b64, char **out_b64_r)
{
	unsigned char *in = NULL;
	size_t inlen = 0;
	enum auth_result r;
	*out_b64_r = NULL;
	if (s->finished)
		return AUTH_BADPROTO;
	r = decode_input(s, in_b64, &in, &inlen);
	if (r == AUTH_CONTINUE && s->steps == 0)
		r = first_step_checks(s, inlen);
	if (r == AUTH_CONTINUE)
		r = step_raw(s, in, inlen, out_b64_r);
	if (in != NULL) {
		OPENSSL_cleanse(in, inlen);
		free(in);
	}
	s->steps++;
	s->finished = r != AUTH_CONTINUE;
	return r;
}

const char *auth_sasl_user(const struct auth_sasl *s)
{
	return s->user;
}

const char *auth_sasl_mech(const struct auth_sasl *s)
{
	return s->mech->name;
}

void auth_sasl_free(struct auth_sasl **s_r)
{
	struct auth_sasl *s = *s_r;
	*s_r = NULL;
	if (s == NULL)
		return;
	if (s->gs != NULL)
		gsasl_finish(s->gs);
	auth_unref(&s->a);
	free(s);
}
