/* recipient.c: local domains, recipients and envelope senders (design §4, §6).
 *
 * Where mail for local@domain goes (exact address or alias, +tag, catch-all)
 * and which envelope senders an account may use are decided here and nowhere
 * else, over one immutable auth snapshot (auth.c): its accounts, its name
 * index (auth_find_parts) and the local domains built here when the snapshot
 * is made (recipient_domains, stored in the snapshot). Like the rest of the
 * snapshot, nothing here changes after auth_new(): any thread may ask. */
#include "server/server.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/log.h"
#include "common/xmalloc.h"

/* ---------------------------------------------------------------- local domains */

static int strp_cmp(const void *x, const void *y)
{
	return strcasecmp(*(char *const *)x, *(char *const *)y);
}

/* The domain of an address or alias of the snapshot: auth.c accepted only
 * names with exactly one '@' and a non-empty domain after it. */
static const char *domain_of(const char *name)
{
	return strchr(name, '@') + 1;
}

static void add_domain(char **v, size_t *n, const char *d)
{
	char *s = xstrdup(d);
	for (char *p = s; *p != '\0'; p++)
		*p = (char)tolower((unsigned char)*p);
	v[(*n)++] = s;
}

static void sort_domains(char **v, size_t *n)
{
	size_t k = 0;
	if (*n > 0)
		qsort(v, *n, sizeof(*v), strp_cmp);
	for (size_t i = 0; i < *n; i++) {
		if (k > 0 && strcmp(v[k - 1], v[i]) == 0)
			free(v[i]);
		else
			v[k++] = v[i];
	}
	*n = k;
	v[k] = NULL;
}

/* Addresses and aliases of all accounts: the names of the snapshot's index. */
static size_t count_names(const struct auth *a)
{
	size_t n = 0;
	for (size_t i = 0; i < auth_count(a); i++) {
		n++;
		for (char **al = auth_account_at(a, i)->aliases; *al != NULL; al++)
			n++;
	}
	return n;
}

/* Local domains: `domains:` plus the domain of every address and alias. */
char **recipient_domains(const struct auth *a, const struct config *cfg, size_t *n_r)
{
	size_t n = 0, nnames = count_names(a), k = 0;
	char **v;
	while (cfg->domains != NULL && cfg->domains[n] != NULL)
		n++;
	if (n > SIZE_MAX - 1 - nnames)
		fatalx("auth: domain count overflow");
	v = xreallocarray(NULL, n + nnames + 1, sizeof(*v));
	for (size_t i = 0; i < n; i++)
		if (cfg->domains[i][0] != '\0' && cfg->domains[i][0] != '[')
			add_domain(v, &k, cfg->domains[i]);
	for (size_t i = 0; i < auth_count(a); i++) {
		const struct account *acct = auth_account_at(a, i);
		add_domain(v, &k, domain_of(acct->address));
		for (char **al = acct->aliases; *al != NULL; al++)
			add_domain(v, &k, domain_of(*al));
	}
	sort_domains(v, &k);
	*n_r = k;
	return v;
}

bool auth_is_local_domain(const struct auth *a, const char *domain)
{
	size_t n;
	char *const *v = auth_local_domains(a, &n);
	/* domain literals are never local: the only local domains are names */
	if (domain == NULL || domain[0] == '\0' || domain[0] == '[' || n == 0)
		return false;
	return bsearch(&domain, v, n, sizeof(*v), strp_cmp) != NULL;
}

/* ---------------------------------------------------------------- recipients */

/* Sub-addressing "local+tag": our convention (RFC 5321 §2.3.11 leaves the
 * local part to the destination host). The first '+' splits; a local part
 * starting or ending with '+' has no tag. The base length, or 0. */
static size_t tag_base_len(const char *local)
{
	const char *plus = strchr(local, '+');
	size_t n = strlen(local);
	if (plus == NULL || plus == local || local[n - 1] == '+')
		return 0;
	return (size_t)(plus - local);
}

/* Design §4, in this order: the exact address or alias, the +tag base (exact
 * or alias), the domain's catch-all "@domain". RFC 5321 §2.4 lets a host treat
 * local parts case-sensitively; like most servers we do not. The local part is
 * taken literally (RFC 5321 §2.3.11: only the destination host interprets it):
 * no '%' or '!' routing, which would make us a relay (§3.6.1, §4.1.1.3 let a
 * server decline that), and a '@' the parser unquoted is just a character, so
 * "u@remote"@local names no remote mailbox. An empty (quoted "") local part
 * meets the catch-all at the first step: the same answer as the last. */
static const struct account *resolve(const struct auth *a, const char *local, const char *domain)
{
	size_t base = tag_base_len(local);
	const struct account *acct = auth_find_parts(a, local, strlen(local), domain);
	if (acct == NULL && base > 0)
		acct = auth_find_parts(a, local, base, domain);
	if (acct == NULL)
		acct = auth_find_parts(a, "", 0, domain);
	return acct;
}

/* RFC 5321 §4.5.1: postmaster@<each domain we accept mail for> must be
 * deliverable. We do not invent a route (sending abuse reports to whichever
 * account comes first in the users file would surprise operators): each
 * snapshot build (start, SIGHUP, check-config) warns for domains lacking one,
 * and the operator adds an alias or a catch-all. */
void recipient_warn_no_postmaster(const struct auth *a)
{
	size_t n;
	char *const *v = auth_local_domains(a, &n);
	for (size_t i = 0; i < n; i++) {
		if (resolve(a, "postmaster", v[i]) != NULL)
			continue;
		struct logline *l = log_begin(LL_WARN, "auth.no_postmaster");
		log_str(l, "domain", v[i]);
		log_str(l, "msg", "postmaster at this domain reaches no account: add an alias "
		    "or a catch-all (RFC 5321 §4.5.1)");
		log_end(l);
	}
}

/* RCPT TO (RFC 5321 §4.1.1.3): the session answers UNKNOWN with 550 5.1.1
 * (RFC 3463 X.1.1) and REMOTE by relaying or refusing, as its port allows. */
enum auth_rcpt auth_lookup_recipient(const struct auth *a, const char *local, const char *domain,
    const struct account **acct_r)
{
	const struct account *acct;
	if (acct_r != NULL)
		*acct_r = NULL;
	if (!auth_is_local_domain(a, domain))
		return AUTH_RCPT_REMOTE;
	acct = local != NULL ? resolve(a, local, domain) : NULL;
	if (acct == NULL)
		return AUTH_RCPT_UNKNOWN;
	if (acct_r != NULL)
		*acct_r = acct;
	return AUTH_RCPT_LOCAL;
}

/* ---------------------------------------------------------------- senders */

/* Design §6: an account may send as any address that would be delivered to
 * it (its address, aliases, their +tag forms, what its catch-all receives)
 * but never as an address another account receives, catch-all or not. */
bool auth_sender_allowed(const struct auth *a, const char *user, const char *local,
    const char *domain)
{
	const struct account *me = auth_find(a, user);
	if (me == NULL)
		return false;
	if (local == NULL)
		return true;     /* "<>" (RFC 5321 §4.5.5): bounces, receipts */
	return auth_is_local_domain(a, domain) && resolve(a, local, domain) == me;
}
