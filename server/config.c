/* config.c: the YAML configuration and the users file -> typed structs (design §7, §8);
 * the users file itself is read and written by users_file.c.
 *
 * libyaml's document API loads the whole file into a node tree whose nodes carry
 * line:column marks. `-o key.path=value` overrides (config_override.c) edit that
 * tree before it is mapped, so an overridden value is typed and validated exactly
 * like one from the file. Mapping is table driven: one flat `struct key` table
 * per mapping level says where each key's value goes and which handler parses
 * it. Every problem ends the load with "FILE:LINE:COLUMN: message" (or "-o PATH: message" for a
 * value that came from an override). */
#include "server/server.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "relay/relay.h"

#define CFG_MAX_FILE   (16u * 1024 * 1024)   /* config and users files */

struct ctx {
	const char *name;            /* file name used in messages */
	yaml_document_t *doc;        /* the tree being mapped */
	char *const *ovr;            /* the -o strings, to name the origin of nodes they made */
	char *err;
	size_t errlen;
};

struct key;
/* Parses node v into the field `k->off` bytes into base. */
typedef int key_fn(struct ctx *c, yaml_node_t *v, void *base, const struct key *k);
/* Validates a string; may rewrite it in place (lowercase) or replace *s_r. */
typedef int check_fn(struct ctx *c, yaml_node_t *v, char **s_r);

/* A list of mappings that become an array of structs (listeners, certificates, users). */
struct objlist {
	size_t size;                 /* element size */
	const struct key *keys;      /* keys of one element */
	int (*post)(struct ctx *c, yaml_node_t *n, void *elem);   /* after each element, or NULL */
	int (*done)(struct ctx *c, yaml_node_t *seq, void *arr, size_t n);  /* after all, or NULL */
};

struct key {
	const char *name;
	key_fn *fn;
	size_t off;                  /* value's offset in the base struct */
	size_t noff;                 /* element count's offset, for lists */
	long long min, max;          /* range of integers and durations */
	const struct key *sub;       /* key_map: the nested mapping's keys */
	const struct objlist *list;  /* key_objs */
	check_fn *check;             /* applied to each string value */
	unsigned flags;
};
#define KF_REQUIRED     0x1u
#define KF_SCALAR_LIST  0x2u     /* a single string counts as a one-element list */

static const char *const proto_names[PROTO__COUNT] = {
	[PROTO_SMTP] = "smtp", [PROTO_SUBMISSION] = "submission", [PROTO_SUBMISSIONS] = "submissions",
	[PROTO_IMAP] = "imap", [PROTO_IMAPS] = "imaps", [PROTO_POP3] = "pop3", [PROTO_POP3S] = "pop3s",
};

static const char *const valid_mechs[] = {
	"PLAIN", "LOGIN", "CRAM-MD5", "DIGEST-MD5", "SCRAM-SHA-1", "SCRAM-SHA-1-PLUS",
	"SCRAM-SHA-256", "SCRAM-SHA-256-PLUS", NULL
};

/* ------------------------------------------------------------------ messages */

/* "name:line:col: msg", or "-o path: msg" for a node an override made. */
__attribute__((format(printf, 3, 4)))
static int fail_at(struct ctx *c, const yaml_mark_t *m, const char *fmt, ...)
{
	char msg[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (m->index == CFG_OVR_MARK) {
		const char *o = c->ovr[m->line];
		snprintf(c->err, c->errlen, "-o %.*s: %s", (int)strcspn(o, "="), o, msg);
	} else {
		snprintf(c->err, c->errlen, "%s:%zu:%zu: %s", c->name, m->line + 1, m->column + 1, msg);
	}
	return -1;
}

static const yaml_mark_t *node_mark(const yaml_node_t *n)
{
	static const yaml_mark_t top = { 0, 0, 0 };
	return n != NULL ? &n->start_mark : &top;
}

/* at node n (NULL: the top of the file) */
#define fail(c, n, ...) fail_at((c), node_mark(n), __VA_ARGS__)

/* ------------------------------------------------------------------ nodes */

static yaml_node_t *node(struct ctx *c, int id)
{
	return yaml_document_get_node(c->doc, id);
}

static const char *scalar(const yaml_node_t *n)
{
	return (const char *)n->data.scalar.value;
}

/* A plain empty, "~" or "null" scalar: an absent value (YAML 1.2 core schema). */
bool cfg_node_is_null(const yaml_node_t *n)
{
	if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return false;
	const char *s = scalar(n);
	return *s == '\0' || strcmp(s, "~") == 0 || strcmp(s, "null") == 0 ||
	    strcmp(s, "Null") == 0 || strcmp(s, "NULL") == 0;
}

static int type_err(struct ctx *c, const yaml_node_t *n, const char *name, const char *expected)
{
	if (n->type == YAML_SCALAR_NODE && cfg_node_is_null(n))
		return fail(c, n, "%s: expected %s, found an empty value", name, expected);
	if (n->type == YAML_SCALAR_NODE)
		return fail(c, n, "%s: expected %s, found '%.60s'", name, expected, scalar(n));
	return fail(c, n, "%s: expected %s, found %s", name, expected,
	    n->type == YAML_MAPPING_NODE ? "a mapping" : "a list");
}

/* Value node of `key` in mapping m, or NULL. */
static yaml_node_t *map_get(struct ctx *c, yaml_node_t *m, const char *key)
{
	if (m == NULL || m->type != YAML_MAPPING_NODE)
		return NULL;
	for (yaml_node_pair_t *p = m->data.mapping.pairs.start; p < m->data.mapping.pairs.top; p++) {
		yaml_node_t *k = node(c, p->key);
		if (k->type == YAML_SCALAR_NODE && strcmp(scalar(k), key) == 0)
			return node(c, p->value);
	}
	return NULL;
}

static yaml_node_t *seq_item(struct ctx *c, yaml_node_t *s, size_t i)
{
	if (s == NULL || s->type != YAML_SEQUENCE_NODE)
		return NULL;
	if (i >= (size_t)(s->data.sequence.items.top - s->data.sequence.items.start))
		return NULL;
	return node(c, s->data.sequence.items.start[i]);
}

/* ------------------------------------------------------------------ did you mean */

/* Optimal string alignment distance (Damerau-Levenshtein with adjacent swaps). */
static size_t edit_distance(const char *a, const char *b)
{
	enum { MAXLEN = 40 };
	size_t d[MAXLEN + 1][MAXLEN + 1];
	size_t la = strlen(a), lb = strlen(b);
	if (la > MAXLEN || lb > MAXLEN)
		return SIZE_MAX;
	for (size_t i = 0; i <= la; i++)
		d[i][0] = i;
	for (size_t j = 0; j <= lb; j++)
		d[0][j] = j;
	for (size_t i = 1; i <= la; i++) {
		for (size_t j = 1; j <= lb; j++) {
			size_t cost = tolower((unsigned char)a[i - 1]) != tolower((unsigned char)b[j - 1]);
			size_t v = d[i - 1][j - 1] + cost;
			if (d[i - 1][j] + 1 < v)
				v = d[i - 1][j] + 1;
			if (d[i][j - 1] + 1 < v)
				v = d[i][j - 1] + 1;
			if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < v)
				v = d[i - 2][j - 2] + 1;
			d[i][j] = v;
		}
	}
	return d[la][lb];
}

static int unknown_key(struct ctx *c, yaml_node_t *kn, const char *name, const struct key *keys)
{
	const char *best = NULL;
	size_t bestd = 3;   /* suggest only within distance 2 */
	for (const struct key *k = keys; k->name != NULL; k++) {
		size_t d = edit_distance(name, k->name);
		if (d < bestd) {
			bestd = d;
			best = k->name;
		}
	}
	if (best != NULL)
		return fail(c, kn, "unknown key '%.60s', did you mean '%s'?", name, best);
	char valid[512] = "";
	for (const struct key *k = keys; k->name != NULL; k++) {
		size_t l = strlen(valid);
		snprintf(valid + l, sizeof(valid) - l, "%s%s", l ? ", " : "", k->name);
	}
	return fail(c, kn, "unknown key '%.60s' (valid here: %s)", name, valid);
}

/* ------------------------------------------------------------------ mapping */

static const struct key *find_key(const struct key *keys, const char *name)
{
	for (const struct key *k = keys; k->name != NULL; k++)
		if (strcmp(k->name, name) == 0)
			return k;
	return NULL;
}

static int map_pair(struct ctx *c, const yaml_node_pair_t *p, const struct key *keys, void *base,
    uint32_t *seen)
{
	yaml_node_t *kn = node(c, p->key);
	if (kn->type != YAML_SCALAR_NODE)
		return fail(c, kn, "expected a key name, found %s",
		    kn->type == YAML_MAPPING_NODE ? "a mapping" : "a list");
	const struct key *k = find_key(keys, scalar(kn));
	if (k == NULL)
		return unknown_key(c, kn, scalar(kn), keys);
	uint32_t bit = 1u << (k - keys);
	if (*seen & bit)
		return fail(c, kn, "duplicate key '%s'", k->name);
	*seen |= bit;
	return k->fn(c, node(c, p->value), base, k);
}

/* Map mapping n (NULL or null: empty) through the key table into base. */
static int map_mapping(struct ctx *c, yaml_node_t *n, const struct key *keys, void *base,
    const char *what)
{
	uint32_t seen = 0;
	if (n != NULL && !cfg_node_is_null(n)) {
		if (n->type != YAML_MAPPING_NODE)
			return type_err(c, n, what, "a mapping");
		for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++)
			if (map_pair(c, p, keys, base, &seen) == -1)
				return -1;
	}
	for (size_t i = 0; keys[i].name != NULL; i++)
		if ((keys[i].flags & KF_REQUIRED) && !(seen & (1u << i)))
			return fail(c, n, "missing required key '%s'", keys[i].name);
	return 0;
}

static void *field(void *base, size_t off)
{
	return (char *)base + off;
}

static int get_str(struct ctx *c, yaml_node_t *v, const struct key *k, char **s_r)
{
	if (v->type != YAML_SCALAR_NODE)
		return type_err(c, v, k->name, "a string");
	if (strlen(scalar(v)) != v->data.scalar.length)
		return fail(c, v, "%s: contains a NUL character", k->name);
	char *s = xstrdup(cfg_node_is_null(v) ? "" : scalar(v));
	if (k->check != NULL && k->check(c, v, &s) == -1) {
		free(s);
		return -1;
	}
	*s_r = s;
	return 0;
}

static int key_str(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	char *s, **dst = field(base, k->off);
	if (get_str(c, v, k, &s) == -1)
		return -1;
	free(*dst);
	*dst = s;
	return 0;
}

/* A list of strings (NULL-terminated, with count); null is the empty list. */
static int key_strlist(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	char ***dst = field(base, k->off);
	size_t *np = field(base, k->noff), n = 0;
	bool single = v->type == YAML_SCALAR_NODE && !cfg_node_is_null(v) && (k->flags & KF_SCALAR_LIST);
	if (v->type == YAML_SEQUENCE_NODE)
		n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	else if (single)
		n = 1;
	else if (!cfg_node_is_null(v))
		return type_err(c, v, k->name, "a list");
	xfree_strv(dst);
	*dst = xcalloc(n + 1, sizeof(char *));
	*np = 0;
	for (size_t i = 0; i < n; i++) {
		yaml_node_t *it = single ? v : node(c, v->data.sequence.items.start[i]);
		if (get_str(c, it, k, &(*dst)[i]) == -1)
			return -1;
		(*np)++;
	}
	return 0;
}

static bool parse_ll(const char *s, long long *r)
{
	const char *p = (*s == '-' || *s == '+') ? s + 1 : s;
	if (!isdigit((unsigned char)*p))
		return false;
	for (const char *q = p; *q != '\0'; q++)
		if (!isdigit((unsigned char)*q))
			return false;
	errno = 0;
	*r = strtoll(s, NULL, 10);
	return errno == 0;
}

static int key_int(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	long long n;
	if (v->type != YAML_SCALAR_NODE || !parse_ll(scalar(v), &n))
		return type_err(c, v, k->name, "an integer");
	if (n < k->min || n > k->max)
		return fail(c, v, "%s %lld out of range %lld..%lld", k->name, n, k->min, k->max);
	*(int *)field(base, k->off) = (int)n;
	return 0;
}

static int get_duration(struct ctx *c, yaml_node_t *v, const struct key *k, uint64_t *r)
{
	if (v->type != YAML_SCALAR_NODE)
		return type_err(c, v, k->name, "a duration");
	if (util_parse_duration(scalar(v), r) == -1)
		return fail(c, v, "%s: bad duration '%.60s' (use e.g. 90, 30s, 5m, 4h, 5d)", k->name, scalar(v));
	if (*r < (uint64_t)k->min || *r > (uint64_t)k->max)
		return fail(c, v, "%s %s out of range %lld..%lld seconds", k->name, scalar(v), k->min, k->max);
	return 0;
}

static int key_dur_int(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	uint64_t d;
	if (get_duration(c, v, k, &d) == -1)
		return -1;
	*(int *)field(base, k->off) = (int)d;   /* k->max keeps it within int */
	return 0;
}

static int key_dur64(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	return get_duration(c, v, k, field(base, k->off));
}

static int key_size(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	if (v->type != YAML_SCALAR_NODE)
		return type_err(c, v, k->name, "a size");
	if (util_parse_size(scalar(v), field(base, k->off)) == -1)
		return fail(c, v, "%s: bad size '%.60s' (use e.g. 0, 512M, 1G)", k->name, scalar(v));
	return 0;
}

static int parse_bool(const char *s)
{
	static const char *const yes[] = { "true", "yes", "on" }, *const no[] = { "false", "no", "off" };
	for (size_t i = 0; i < 3; i++) {
		if (strcasecmp(s, yes[i]) == 0)
			return 1;
		if (strcasecmp(s, no[i]) == 0)
			return 0;
	}
	return -1;
}

static int key_bool(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	int b = v->type == YAML_SCALAR_NODE ? parse_bool(scalar(v)) : -1;
	if (b == -1)
		return type_err(c, v, k->name, "a boolean (true or false)");
	*(bool *)field(base, k->off) = b;
	return 0;
}

/* listeners.N.proxy_protocol: reserved, only false is accepted for now */
static int key_reserved_false(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	if (key_bool(c, v, base, k) == -1)
		return -1;
	if (*(bool *)field(base, k->off))
		return fail(c, v, "%s: not supported yet (must be false)", k->name);
	return 0;
}

static int key_map(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	return map_mapping(c, v, k->sub, base, k->name);
}

/* Strings "" and lists empty: no string or list field is ever NULL. */
static void walk_init(const struct key *keys, void *base)
{
	for (const struct key *k = keys; k->name != NULL; k++) {
		if (k->fn == key_str)
			*(char **)field(base, k->off) = xstrdup("");
		else if (k->fn == key_strlist)
			*(char ***)field(base, k->off) = xcalloc(1, sizeof(char *));
		else if (k->fn == key_map)
			walk_init(k->sub, base);
	}
}

/* A list of mappings -> array of k->list->size structs. The array and count are
 * stored before the elements are mapped, so cfg_free can release a partial one. */
static int key_objs(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	const struct objlist *ol = k->list;
	size_t *np = field(base, k->noff), n = 0;
	if (v->type == YAML_SEQUENCE_NODE)
		n = (size_t)(v->data.sequence.items.top - v->data.sequence.items.start);
	else if (!cfg_node_is_null(v))
		return type_err(c, v, k->name, "a list");
	char *arr = xcalloc(n + 1, ol->size);
	memcpy(field(base, k->off), &arr, sizeof(arr));   /* typed pointer slot, written bytewise */
	for (size_t i = 0; i < n; i++) {
		yaml_node_t *it = node(c, v->data.sequence.items.start[i]);
		void *elem = arr + i * ol->size;
		walk_init(ol->keys, elem);
		(*np)++;
		if (map_mapping(c, it, ol->keys, elem, k->name) == -1)
			return -1;
		if (ol->post != NULL && ol->post(c, it, elem) == -1)
			return -1;
	}
	return ol->done != NULL ? ol->done(c, v, arr, n) : 0;
}

static void walk_free(const struct key *keys, void *base)
{
	for (const struct key *k = keys; k->name != NULL; k++) {
		if (k->fn == key_str) {
			free(*(char **)field(base, k->off));
		} else if (k->fn == key_strlist) {
			xfree_strv(field(base, k->off));
		} else if (k->fn == key_map) {
			walk_free(k->sub, base);
		} else if (k->fn == key_objs) {
			char *arr;
			size_t n = *(size_t *)field(base, k->noff);
			memcpy(&arr, field(base, k->off), sizeof(arr));
			for (size_t i = 0; i < n; i++)
				walk_free(k->list->keys, arr + i * k->list->size);
			free(arr);
		}
	}
}

static int key_proto(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	if (v->type != YAML_SCALAR_NODE)
		return type_err(c, v, k->name, "a protocol name");
	for (int p = 0; p < PROTO__COUNT; p++) {
		if (strcasecmp(scalar(v), proto_names[p]) != 0)
			continue;
		*(enum cfg_proto *)field(base, k->off) = (enum cfg_proto)p;
		return 0;
	}
	return fail(c, v, "unknown protocol '%.60s' (valid: smtp, submission, submissions, imap, imaps, "
	    "pop3, pop3s)", scalar(v));
}

static int key_level(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	int l = v->type == YAML_SCALAR_NODE ? log_level_parse(scalar(v)) : -1;
	if (l == -1 && (v->type != YAML_SCALAR_NODE || cfg_node_is_null(v)))
		return type_err(c, v, k->name, "a log level");
	if (l == -1)
		return fail(c, v, "unknown log level '%.60s' (valid: debug, info, warn, error)", scalar(v));
	*(int *)field(base, k->off) = l;
	return 0;
}

static int key_tls_version(struct ctx *c, yaml_node_t *v, void *base, const struct key *k)
{
	if (v->type != YAML_SCALAR_NODE)
		return type_err(c, v, k->name, "\"1.2\" or \"1.3\"");
	if (strcmp(scalar(v), "1.2") != 0 && strcmp(scalar(v), "1.3") != 0)
		return fail(c, v, "%s: expected \"1.2\" or \"1.3\", found '%.60s'", k->name, scalar(v));
	*(int *)field(base, k->off) = scalar(v)[2] == '2' ? 12 : 13;
	return 0;
}

/* ------------------------------------------------------------------ value checks */

static void setcase(char *s, int (*conv)(int))
{
	for (; *s != '\0'; s++)
		*s = (char)conv((unsigned char)*s);
}

/* Why a domain or local part is unsafe as a path component (design §5), or NULL. */
static const char *part_problem(const char *s, size_t len)
{
	if (len == 0)
		return "empty local part or domain";
	if (s[0] == '.')
		return "starts with '.'";
	for (size_t i = 0; i < len; i++) {
		unsigned char ch = (unsigned char)s[i];
		if (ch < 0x20 || ch == 0x7f)
			return "contains a control character";
		if (ch == '/' || ch == '\\')
			return "contains a slash";
		if (ch == ' ')
			return "contains a space";
		if (ch == '.' && i + 1 < len && s[i + 1] == '.')
			return "contains '..'";
	}
	return NULL;
}

static const char *address_problem(const char *s)
{
	const char *at = strchr(s, '@');
	if (at == NULL || strchr(at + 1, '@') != NULL)
		return "expected local@domain";
	const char *why = part_problem(s, (size_t)(at - s));
	return why != NULL ? why : part_problem(at + 1, strlen(at + 1));
}

static int check_address(struct ctx *c, yaml_node_t *v, char **s_r)
{
	setcase(*s_r, tolower);
	const char *why = address_problem(*s_r);
	if (why != NULL)
		return fail(c, v, "bad address '%.60s': %s", *s_r, why);
	return 0;
}

static const char *domain_problem(const char *s)
{
	return strchr(s, '@') != NULL ? "contains '@'" : part_problem(s, strlen(s));
}

static int check_domain(struct ctx *c, yaml_node_t *v, char **s_r)
{
	setcase(*s_r, tolower);
	const char *why = domain_problem(*s_r);
	if (why != NULL)
		return fail(c, v, "bad domain '%.60s': %s", *s_r, why);
	return 0;
}

/* An alias is an address, or "@domain": that domain's catch-all (design §4),
 * whose domain is checked like those of `domains:`. */
static int check_alias(struct ctx *c, yaml_node_t *v, char **s_r)
{
	if (**s_r != '@')
		return check_address(c, v, s_r);
	setcase(*s_r, tolower);
	const char *why = domain_problem(*s_r + 1);
	if (why != NULL)
		return fail(c, v, "bad catch-all alias '%.60s': %s", *s_r, why);
	return 0;
}

static int check_mech(struct ctx *c, yaml_node_t *v, char **s_r)
{
	setcase(*s_r, toupper);
	for (size_t i = 0; valid_mechs[i] != NULL; i++)
		if (strcmp(*s_r, valid_mechs[i]) == 0)
			return 0;
	return fail(c, v, "unknown mechanism '%.60s' (valid: PLAIN, LOGIN, CRAM-MD5, DIGEST-MD5, "
	    "SCRAM-SHA-1, SCRAM-SHA-1-PLUS, SCRAM-SHA-256, SCRAM-SHA-256-PLUS)", *s_r);
}

static int check_ip(struct ctx *c, yaml_node_t *v, char **s_r)
{
	unsigned char a[sizeof(struct in6_addr)];
	if (inet_pton(AF_INET, *s_r, a) == 1 || inet_pton(AF_INET6, *s_r, a) == 1)
		return 0;
	return fail(c, v, "'%.60s' is not an IPv4 or IPv6 address", *s_r);
}

static int check_nonempty(struct ctx *c, yaml_node_t *v, char **s_r)
{
	return **s_r == '\0' ? fail(c, v, "value must not be empty") : 0;
}

static int check_hostname(struct ctx *c, yaml_node_t *v, char **s_r)
{
	for (const char *p = *s_r; *p != '\0'; p++)
		if ((unsigned char)*p <= ' ' || *p == '/' || *p == 0x7f)
			return fail(c, v, "bad hostname '%.60s'", *s_r);
	return strlen(*s_r) > 253 ? fail(c, v, "hostname longer than 253 characters") : 0;
}

/* RFC 2449 §6.7: EXPIRE is NEVER or a number of days */
static int check_expire(struct ctx *c, yaml_node_t *v, char **s_r)
{
	long long days;
	setcase(*s_r, toupper);
	if (strcmp(*s_r, "NEVER") == 0 || (parse_ll(*s_r, &days) && days >= 0 && **s_r != '+'))
		return 0;
	return fail(c, v, "expire: expected NEVER or a number of days, found '%.60s'", *s_r);
}

static int check_relay_tls(struct ctx *c, yaml_node_t *v, char **s_r)
{
	setcase(*s_r, tolower);
	if (strcmp(*s_r, "opportunistic") == 0 || strcmp(*s_r, "require") == 0)
		return 0;
	return fail(c, v, "relay.tls: expected opportunistic or require, found '%.60s'", *s_r);
}

static int check_smarthost_tls(struct ctx *c, yaml_node_t *v, char **s_r)
{
	setcase(*s_r, tolower);
	if (strcmp(*s_r, "starttls") == 0 || strcmp(*s_r, "implicit") == 0)
		return 0;
	return fail(c, v, "relay.smarthost_tls: expected starttls or implicit, found '%.60s'", *s_r);
}

/* "<iter>:<salt b64>:<StoredKey b64>:<ServerKey b64>" (RFC 5802 §5) */
static int check_scram(struct ctx *c, yaml_node_t *v, char **s_r)
{
	const char *s = *s_r;
	if (*s == '\0')
		return 0;
	size_t colons = 0;
	for (const char *p = s; *p != '\0'; p++)
		colons += *p == ':';
	if (colons == 3 && isdigit((unsigned char)s[0]) && strspn(s, "0123456789") == strcspn(s, ":"))
		return 0;
	return fail(c, v, "expected '<iterations>:<salt>:<StoredKey>:<ServerKey>'");
}

static int check_readable(struct ctx *c, yaml_node_t *v, const char *s, const char *what)
{
	int fd = open(s, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	struct stat st;
	if (fd == -1)
		return fail(c, v, "cannot read %s file '%.200s': %s", what, s, strerror(errno));
	bool reg = fstat(fd, &st) == 0 && S_ISREG(st.st_mode);
	close(fd);
	return reg ? 0 : fail(c, v, "cannot read %s file '%.200s': not a regular file", what, s);
}

static int check_cert_file(struct ctx *c, yaml_node_t *v, char **s_r)
{
	return check_readable(c, v, *s_r, "certificate");
}

static int check_key_file(struct ctx *c, yaml_node_t *v, char **s_r)
{
	return check_readable(c, v, *s_r, "key");
}

/* relay.dns.trust_anchor: "" (no DNSSEC validation, no DANE) or a readable
 * file of DS or DNSKEY records, e.g. /usr/share/dns/root.key (dns-root-data). */
static int check_trust_anchor(struct ctx *c, yaml_node_t *v, char **s_r)
{
	return **s_r == '\0' ? 0 : check_readable(c, v, *s_r, "trust anchor");
}

/* A users file that does not exist yet counts as empty (`postling user add`
 * creates it); one that exists must be readable. */
static int check_users_file(struct ctx *c, yaml_node_t *v, char **s_r)
{
	if (**s_r == '\0' || (access(*s_r, F_OK) == -1 && errno == ENOENT))
		return 0;
	return check_readable(c, v, *s_r, "users");
}

/* A DKIM selector (RFC 6376 §3.1): a DNS label sequence under _domainkey. */
static int check_selector(struct ctx *c, yaml_node_t *v, char **s_r)
{
	setcase(*s_r, tolower);
	return dkim_name_valid(*s_r) ? 0 : fail(c, v, "'%.60s' is not a DKIM selector (letters, digits, "
	    "'-', '_' and dots)", *s_r);
}

/* The key file of a `dkim:` entry: a regular file that no other user may read
 * or write (whoever has the key can sign as the domain), at most
 * DKIM_KEY_MAX_PEM octets, holding an RSA (>= 1024 bits) or Ed25519 key. The
 * checks run on the open descriptor, so they apply to the file that is read. */
static int dkim_post(struct ctx *c, yaml_node_t *n, void *elem)
{
	struct cfg_dkim *d = elem;
	yaml_node_t *kn = map_get(c, n, "key");
	struct stat st;
	int fd = open(d->key, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd == -1)
		return fail(c, kn, "cannot read DKIM key file '%.200s': %s", d->key, strerror(errno));
	if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode) || st.st_size > (off_t)DKIM_KEY_MAX_PEM) {
		close(fd);
		return fail(c, kn, "DKIM key file '%.200s': not a regular file of at most %u octets", d->key,
		    DKIM_KEY_MAX_PEM);
	}
	if (st.st_mode & (S_IRWXO | S_IWGRP | S_IXGRP)) {
		close(fd);
		return fail(c, kn, "DKIM key file '%.200s' is accessible by other users (mode %04o): "
		    "chmod 600 it", d->key, (unsigned)(st.st_mode & 07777));
	}
	char *pem = xmalloc((size_t)st.st_size + 1);
	size_t len = 0;
	ssize_t r = 0;
	while (len < (size_t)st.st_size && (r = read(fd, pem + len, (size_t)st.st_size - len)) > 0)
		len += (size_t)r;
	int saved = errno;
	close(fd);
	char why[256];
	if (r == -1) {
		free(pem);
		return fail(c, kn, "cannot read DKIM key file '%.200s': %s", d->key, strerror(saved));
	}
	d->pkey = dkim_key_parse(pem, len, why, sizeof(why));
	explicit_bzero(pem, len);
	free(pem);
	return d->pkey != NULL ? 0 : fail(c, kn, "DKIM key file '%.200s': %s", d->key, why);
}

/* One key per (domain, selector): two would publish two records at one name. */
static int dkim_done(struct ctx *c, yaml_node_t *seq, void *arr, size_t n)
{
	struct cfg_dkim *d = arr;
	for (size_t i = 0; i < n; i++)
		for (size_t j = 0; j < i; j++)
			if (strcmp(d[i].domain, d[j].domain) == 0 && strcmp(d[i].selector, d[j].selector) == 0)
				return fail(c, seq_item(c, seq, i), "duplicate DKIM selector '%.60s' for domain "
				    "'%.60s'", d[i].selector, d[i].domain);
	return 0;
}

/* ------------------------------------------------------------------ key tables */

static char **strv_dup(const char *const *src, size_t *n_r)
{
	size_t n = 0;
	while (src[n] != NULL)
		n++;
	char **v = xcalloc(n + 1, sizeof(*v));
	for (size_t i = 0; i < n; i++)
		v[i] = xstrdup(src[i]);
	*n_r = n;
	return v;
}

static int listener_post(struct ctx *c, yaml_node_t *n, void *elem)
{
	static const char *const any[] = { "0.0.0.0", "::", NULL };
	struct cfg_listener *l = elem;
	l->line = (int)n->start_mark.line + 1;
	if (l->naddresses == 0) {
		xfree_strv(&l->addresses);
		l->addresses = strv_dup(any, &l->naddresses);
	}
	return 0;
}

static int users_done(struct ctx *c, yaml_node_t *seq, void *arr, size_t n);

/* one table entry: name, handler, offset, then designated extras */
#define K(name_, fn_, off_, ...) { .name = name_, .fn = fn_, .off = off_, __VA_ARGS__ }

#define LOFF(f) offsetof(struct cfg_listener, f)
static const struct key listener_keys[] = {
	K("protocol", key_proto, LOFF(proto), .flags = KF_REQUIRED),
	K("address", key_strlist, LOFF(addresses), .noff = LOFF(naddresses), .check = check_ip,
	  .flags = KF_SCALAR_LIST),
	K("port", key_int, LOFF(port), .min = 1, .max = 65535, .flags = KF_REQUIRED),
	K("proxy_protocol", key_reserved_false, LOFF(proxy_protocol)),
	{ .name = NULL },
};
static const struct objlist listener_list = {
	sizeof(struct cfg_listener), listener_keys, listener_post, NULL
};

#define CEOFF(f) offsetof(struct cfg_cert, f)
static const struct key cert_keys[] = {
	K("cert", key_str, CEOFF(cert), .check = check_cert_file, .flags = KF_REQUIRED),
	K("key", key_str, CEOFF(key), .check = check_key_file, .flags = KF_REQUIRED),
	{ .name = NULL },
};
static const struct objlist cert_list = { sizeof(struct cfg_cert), cert_keys, NULL, NULL };

#define DOFF(f) offsetof(struct cfg_dkim, f)
static const struct key dkim_keys[] = {
	K("domain", key_str, DOFF(domain), .check = check_domain, .flags = KF_REQUIRED),
	K("selector", key_str, DOFF(selector), .check = check_selector, .flags = KF_REQUIRED),
	K("key", key_str, DOFF(key), .check = check_nonempty, .flags = KF_REQUIRED),
	{ .name = NULL },
};
static const struct objlist dkim_list = { sizeof(struct cfg_dkim), dkim_keys, dkim_post, dkim_done };

#define UOFF(f) offsetof(struct cfg_user, f)
static const struct key user_keys[] = {
	K("address", key_str, UOFF(address), .check = check_address, .flags = KF_REQUIRED),
	K("password", key_str, UOFF(password)),
	K("secret", key_str, UOFF(secret)),
	K("scram_sha1", key_str, UOFF(scram_sha1), .check = check_scram),
	K("scram_sha256", key_str, UOFF(scram_sha256), .check = check_scram),
	K("aliases", key_strlist, UOFF(aliases), .noff = UOFF(naliases), .check = check_alias),
	K("quota", key_size, UOFF(quota)),
	{ .name = NULL },
};
static const struct objlist user_list = { sizeof(struct cfg_user), user_keys, NULL, users_done };

#define OFF(f) offsetof(struct config, f)
#define DAYS(n) ((long long)(n) * 86400)
static const struct key server_keys[] = {
	K("hostname", key_str, OFF(server.hostname), .check = check_hostname),
	K("data_dir", key_str, OFF(server.data_dir), .check = check_nonempty),
	K("user", key_str, OFF(server.user)),
	K("max_connections", key_int, OFF(server.max_connections), .min = 1, .max = 1000000),
	K("max_connections_per_ip", key_int, OFF(server.max_connections_per_ip), .min = 1, .max = 1000000),
	K("max_connection_rate_per_ip", key_int, OFF(server.max_connection_rate_per_ip), .min = 0, .max = 1000000),
	K("shutdown_timeout", key_dur_int, OFF(server.shutdown_timeout), .min = 0, .max = 3600),
	{ .name = NULL },
};
static const struct key log_keys[] = {
	K("level", key_level, OFF(log.level)),
	K("file", key_str, OFF(log.file)),
	{ .name = NULL },
};
static const struct key tls_keys[] = {
	K("certificates", key_objs, OFF(tls.certificates), .noff = OFF(tls.ncertificates), .list = &cert_list),
	K("self_signed", key_bool, OFF(tls.self_signed)),
	K("min_version", key_tls_version, OFF(tls.min_version)),
	{ .name = NULL },
};
static const struct key auth_keys[] = {
	K("mechanisms", key_strlist, OFF(auth.mechanisms), .noff = OFF(auth.nmechanisms), .check = check_mech),
	K("allow_plaintext", key_bool, OFF(auth.allow_plaintext)),
	K("loopback_is_local", key_bool, OFF(auth.loopback_is_local)),
	K("max_failures", key_int, OFF(auth.max_failures), .min = 1, .max = 1000000),
	K("fail_window", key_dur_int, OFF(auth.fail_window), .min = 1, .max = DAYS(1)),
	{ .name = NULL },
};
static const struct key pop3_keys[] = {
	K("timeout", key_dur_int, OFF(pop3.timeout), .min = 30, .max = DAYS(1)),
	K("login_delay", key_dur_int, OFF(pop3.login_delay), .min = 0, .max = DAYS(1)),
	K("expire", key_str, OFF(pop3.expire), .check = check_expire),
	{ .name = NULL },
};
static const struct key imap_keys[] = {
	K("timeout", key_dur_int, OFF(imap.timeout), .min = 60, .max = DAYS(1)),
	K("login_timeout", key_dur_int, OFF(imap.login_timeout), .min = 5, .max = 3600),
	K("max_sessions_per_user", key_int, OFF(imap.max_sessions_per_user), .min = 1, .max = 1000),
	K("max_append_size", key_size, OFF(imap.max_append_size)),
	K("max_errors", key_int, OFF(imap.max_errors), .min = 1, .max = 1000),
	{ .name = NULL },
};
static const struct key smtp_keys[] = {
	K("max_message_size", key_size, OFF(smtp.max_message_size)),
	K("max_recipients", key_int, OFF(smtp.max_recipients), .min = 1, .max = 100000),
	K("max_errors", key_int, OFF(smtp.max_errors), .min = 1, .max = 1000),
	K("timeout", key_dur_int, OFF(smtp.timeout), .min = 10, .max = DAYS(1)),
	K("data_timeout", key_dur_int, OFF(smtp.data_timeout), .min = 10, .max = DAYS(1)),
	K("greeting_delay_ms", key_int, OFF(smtp.greeting_delay_ms), .min = 0, .max = 60000),
	K("vrfy", key_bool, OFF(smtp.vrfy)),
	{ .name = NULL },
};
static const struct key dns_keys[] = {
	K("servers", key_strlist, OFF(relay.dns_servers), .noff = OFF(relay.ndns_servers), .check = check_ip),
	K("port", key_int, OFF(relay.dns_port), .min = 1, .max = 65535),
	K("trust_anchor", key_str, OFF(relay.dns_trust_anchor), .check = check_trust_anchor),
	{ .name = NULL },
};
static const struct key relay_keys[] = {
	K("smarthost", key_str, OFF(relay.smarthost)),
	K("dns", key_map, 0, .sub = dns_keys),
	K("port", key_int, OFF(relay.port), .min = 1, .max = 65535),
	K("retry_initial", key_dur64, OFF(relay.retry_initial), .min = 1, .max = DAYS(30)),
	K("retry_max", key_dur64, OFF(relay.retry_max), .min = 1, .max = DAYS(30)),
	K("warn_after", key_dur64, OFF(relay.warn_after), .min = 0, .max = DAYS(365)),
	K("max_queue_time", key_dur64, OFF(relay.max_queue_time), .min = 1, .max = DAYS(365)),
	K("hold", key_bool, OFF(relay.hold)),
	K("connect_timeout", key_dur_int, OFF(relay.connect_timeout), .min = 1, .max = 3600),
	K("command_timeout", key_dur_int, OFF(relay.command_timeout), .min = 1, .max = 3600),
	K("data_timeout", key_dur_int, OFF(relay.data_timeout), .min = 1, .max = 3600),
	K("final_timeout", key_dur_int, OFF(relay.final_timeout), .min = 1, .max = 3600),
	K("max_connections", key_int, OFF(relay.max_connections), .min = 1, .max = 10000),
	K("max_connections_per_domain", key_int, OFF(relay.max_connections_per_domain), .min = 1, .max = 10000),
	K("tls", key_str, OFF(relay.tls), .check = check_relay_tls),
	K("smarthost_tls", key_str, OFF(relay.smarthost_tls), .check = check_smarthost_tls),
	K("smarthost_user", key_str, OFF(relay.smarthost_user)),
	K("smarthost_password", key_str, OFF(relay.smarthost_password)),
	{ .name = NULL },
};
static const struct key root_keys[] = {
	K("server", key_map, 0, .sub = server_keys),
	K("log", key_map, 0, .sub = log_keys),
	K("tls", key_map, 0, .sub = tls_keys),
	K("listeners", key_objs, OFF(listeners), .noff = OFF(nlisteners), .list = &listener_list),
	K("domains", key_strlist, OFF(domains), .noff = OFF(ndomains), .check = check_domain),
	K("auth", key_map, 0, .sub = auth_keys),
	K("pop3", key_map, 0, .sub = pop3_keys),
	K("imap", key_map, 0, .sub = imap_keys),
	K("smtp", key_map, 0, .sub = smtp_keys),
	K("users_file", key_str, OFF(users_file), .check = check_users_file),
	K("users", key_objs, OFF(users), .noff = OFF(nusers), .list = &user_list),
	K("relay", key_map, 0, .sub = relay_keys),
	K("dkim", key_objs, OFF(dkim), .noff = OFF(ndkim), .list = &dkim_list),
	{ .name = NULL },
};

/* the users file: a top-level `users:` list */
struct users_doc {
	struct cfg_user *users;
	size_t n;
};
static const struct key users_doc_keys[] = {
	K("users", key_objs, offsetof(struct users_doc, users), .noff = offsetof(struct users_doc, n),
	  .list = &user_list),
	{ .name = NULL },
};

/* ------------------------------------------------------------------ whole-config checks */

/* One entry per address and alias, to find duplicates by sorting. */
struct addr_ref {
	const char *s;
	size_t user;
	size_t alias;                /* SIZE_MAX: the account address itself */
};

static int addr_ref_cmp(const void *a, const void *b)
{
	const struct addr_ref *x = a, *y = b;
	int r = strcmp(x->s, y->s);
	if (r != 0)
		return r;
	if (x->user != y->user)
		return x->user < y->user ? -1 : 1;
	return x->alias == y->alias ? 0 : (x->alias + 1 < y->alias + 1 ? -1 : 1);
}

static yaml_node_t *addr_ref_node(struct ctx *c, yaml_node_t *seq, const struct addr_ref *r)
{
	yaml_node_t *u = seq_item(c, seq, r->user);
	if (r->alias == SIZE_MAX)
		return map_get(c, u, "address");
	yaml_node_t *al = map_get(c, u, "aliases");
	return al != NULL && al->type == YAML_SEQUENCE_NODE ? seq_item(c, al, r->alias) : al;
}

/* An address or alias may name one account only. */
static int users_done(struct ctx *c, yaml_node_t *seq, void *arr, size_t n)
{
	struct cfg_user *u = arr;
	size_t total = 0, k = 0;
	for (size_t i = 0; i < n; i++)
		total += 1 + u[i].naliases;
	struct addr_ref *refs = xreallocarray(NULL, total + 1, sizeof(*refs));
	for (size_t i = 0; i < n; i++) {
		refs[k++] = (struct addr_ref){ u[i].address, i, SIZE_MAX };
		for (size_t j = 0; j < u[i].naliases; j++)
			refs[k++] = (struct addr_ref){ u[i].aliases[j], i, j };
	}
	qsort(refs, total, sizeof(*refs), addr_ref_cmp);
	int r = 0;
	for (k = 1; k < total && r == 0; k++)
		if (strcmp(refs[k - 1].s, refs[k].s) == 0)
			r = fail(c, addr_ref_node(c, seq, &refs[k]), "duplicate address '%.60s' (already used by "
			    "user '%.60s')", refs[k].s, u[refs[k - 1].user].address);
	free(refs);
	return r;
}

/* Listeners that cannot work without a certificate: implicit TLS, and submission
 * while plaintext AUTH is off (design §6: STARTTLS before AUTH on 587). */
static int check_listeners(struct ctx *c, const struct config *cfg, yaml_node_t *root)
{
	yaml_node_t *seq = map_get(c, root, "listeners");
	if (cfg->nlisteners == 0)
		return fail(c, seq != NULL ? seq : root, "at least one listener is required");
	if (cfg->tls.ncertificates > 0 || cfg->tls.self_signed)
		return 0;
	for (size_t i = 0; i < cfg->nlisteners; i++) {
		enum cfg_proto p = cfg->listeners[i].proto;
		yaml_node_t *n = seq_item(c, seq, i);
		if (cfg_proto_implicit_tls(p))
			return fail(c, n, "listener %s needs TLS: set tls.certificates or tls.self_signed: true",
			    proto_names[p]);
		if (p == PROTO_SUBMISSION && !cfg->auth.allow_plaintext)
			return fail(c, n, "listener submission needs TLS for AUTH: set tls.certificates or "
			    "tls.self_signed: true (or auth.allow_plaintext: true)");
	}
	return 0;
}

/* Smarthost credentials go together, and only with a smarthost. */
static int check_relay(struct ctx *c, const struct config *cfg, yaml_node_t *root)
{
	yaml_node_t *relay = map_get(c, root, "relay");
	yaml_node_t *n = relay != NULL ? relay : root;
	bool user = cfg->relay.smarthost_user[0] != '\0', pass = cfg->relay.smarthost_password[0] != '\0';
	if (user != pass)
		return fail(c, n, "relay.smarthost_user and relay.smarthost_password go together");
	if ((user || strcmp(cfg->relay.smarthost_tls, "implicit") == 0) && cfg->relay.smarthost[0] == '\0')
		return fail(c, n, "relay.smarthost_user/smarthost_tls need relay.smarthost");
	return 0;
}

static int config_finish(struct ctx *c, yaml_node_t *root, void *base)
{
	struct config *cfg = base;
	if (cfg->server.hostname[0] == '\0') {
		char host[256];
		free(cfg->server.hostname);
		if (gethostname(host, sizeof(host)) == -1 || host[0] == '\0')
			snprintf(host, sizeof(host), "localhost");
		host[sizeof(host) - 1] = '\0';
		cfg->server.hostname = xstrdup(host);
	}
	if (check_listeners(c, cfg, root) == -1 || check_relay(c, cfg, root) == -1)
		return -1;
	if (cfg->users_file[0] != '\0') {
		/* parse-check only: the server loads it (and reloads it on SIGHUP) itself */
		struct cfg_user *users = NULL;
		size_t n = 0;
		if (cfg_load_users_file(cfg->users_file, &users, &n, c->err, c->errlen) == -1)
			return -1;
		cfg_users_free(&users, n);
	}
	return 0;
}

/* ------------------------------------------------------------------ YAML parsing */

static void offset_to_mark(const char *text, size_t off, yaml_mark_t *m)
{
	m->index = off;
	m->line = m->column = 0;
	for (size_t i = 0; i < off; i++) {
		if (text[i] == '\n') {
			m->line++;
			m->column = 0;
		} else {
			m->column++;
		}
	}
}

/* Is the problem inside a line's leading whitespace that holds a tab? libyaml
 * reports those as "found character that cannot start any token" or so. */
static bool tab_indent(const char *text, size_t len, const yaml_mark_t *m, size_t *col_r)
{
	size_t i = 0;
	bool tab = false;
	for (size_t line = 0; line < m->line && i < len; i++)
		if (text[i] == '\n')
			line++;
	for (size_t col = 0; col <= m->column && i + col < len; col++) {
		if (text[i + col] == '\t' && !tab) {
			*col_r = col;
			tab = true;
		} else if (text[i + col] != ' ' && text[i + col] != '\t') {
			return false;
		}
	}
	return tab;
}

/* The byte at mark m (line, column counted in characters), or -1 past the line. */
static int char_at(const char *text, size_t len, const yaml_mark_t *m)
{
	size_t i = 0, col = 0;
	for (size_t line = 0; line < m->line && i < len; i++)
		if (text[i] == '\n')
			line++;
	for (; i < len && text[i] != '\n'; i++) {
		if (((unsigned char)text[i] & 0xc0) == 0x80)
			continue;          /* a UTF-8 continuation byte */
		if (col++ == m->column)
			return (unsigned char)text[i];
	}
	return -1;
}

static int parser_error(struct ctx *c, const yaml_parser_t *p, const char *text, size_t len)
{
	yaml_mark_t m = p->problem_mark;
	const char *problem = p->problem != NULL ? p->problem : "YAML syntax error";
	size_t col = 0;
	if (p->error == YAML_MEMORY_ERROR)
		fatalx("config: out of memory parsing YAML");
	if (p->error == YAML_READER_ERROR) {
		offset_to_mark(text, p->problem_offset < len ? p->problem_offset : len, &m);
		return fail_at(c, &m, "%s (the file must be UTF-8)", problem);
	}
	if (tab_indent(text, len, &m, &col)) {
		m.column = col;
		return fail_at(c, &m, "found a tab character where indentation is expected "
		    "(YAML forbids tabs for indentation)");
	}
	/* YAML reserves '@' and '`' (1.2 §5.3): a catch-all alias "@domain" needs quotes */
	int ch = char_at(text, len, &m);
	if (ch == '@' || ch == '`')
		return fail_at(c, &m, "a value starting with '%c' must be quoted (YAML reserves '@' and '`'), "
		    "e.g. \"@example.org\"", ch);
	if (p->context != NULL)
		return fail_at(c, &m, "%s (%s at line %zu, column %zu)", problem, p->context,
		    p->context_mark.line + 1, p->context_mark.column + 1);
	return fail_at(c, &m, "%s", problem);
}

static int parse_yaml(struct ctx *c, const char *text, size_t len, yaml_document_t *doc)
{
	yaml_parser_t p;
	yaml_document_t extra;
	int r = 0;
	yaml_parser_initialize(&p);
	yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
	if (!yaml_parser_load(&p, doc)) {
		r = parser_error(c, &p, text, len);
	} else if (!yaml_parser_load(&p, &extra)) {
		r = parser_error(c, &p, text, len);
		yaml_document_delete(doc);
	} else {
		yaml_node_t *root = yaml_document_get_root_node(&extra);
		if (root != NULL) {
			r = fail(c, root, "only one YAML document is allowed");
			yaml_document_delete(doc);
		}
		yaml_document_delete(&extra);
	}
	yaml_parser_delete(&p);
	return r;
}

/* ------------------------------------------------------------------ loading */

typedef int finish_fn(struct ctx *c, yaml_node_t *root, void *base);

static int load_doc(struct ctx *c, const char *text, size_t len, size_t novr, const struct key *keys,
    void *base, finish_fn *finish)
{
	yaml_document_t doc;
	if (parse_yaml(c, text, len, &doc) == -1)
		return -1;
	c->doc = &doc;
	int r = cfg_apply_overrides(&doc, c->ovr, novr, c->err, c->errlen);
	yaml_node_t *root = yaml_document_get_root_node(&doc);
	if (r == 0)
		r = map_mapping(c, root, keys, base, "top level");
	if (r == 0 && finish != NULL)
		r = finish(c, root, base);
	yaml_document_delete(&doc);
	c->doc = NULL;
	return r;
}

int cfg_read_file(const char *path, struct buf *b, char *err, size_t errlen)
{
	char chunk[8192];
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
	if (fd == -1) {
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return -1;
	}
	buf_init(b, CFG_MAX_FILE);
	for (;;) {
		ssize_t r = read(fd, chunk, sizeof(chunk));
		if (r == 0)
			break;
		if (r == -1 && errno == EINTR)
			continue;
		if (r == -1 || buf_append(b, chunk, (size_t)r) == -1) {
			snprintf(err, errlen, "%s: cannot read: %s", path, r == -1 ? strerror(errno) : "file too large");
			close(fd);
			buf_free(b);
			return -1;
		}
	}
	close(fd);
	return 0;
}

/* Defaults (design §8), mapped through the same tables before the file itself. */
static const char defaults_yaml[] =
	"server: { data_dir: /var/lib/postling, user: postling, max_connections: 2000,\n"
	"  max_connections_per_ip: 20, shutdown_timeout: 30 }\n"
	"log: { level: info }\n"
	"tls: { min_version: \"1.2\" }\n"
	"auth: { mechanisms: [PLAIN, LOGIN, SCRAM-SHA-256, SCRAM-SHA-1, CRAM-MD5], max_failures: 10,\n"
	"  fail_window: 15m, loopback_is_local: true }\n"
	"pop3: { timeout: 10m, expire: NEVER }\n"
	"imap: { timeout: 30m, login_timeout: 60s, max_sessions_per_user: 8, max_append_size: 0,\n"
	"  max_errors: 20 }\n"
	"smtp: { max_message_size: 50M, max_recipients: 100, max_errors: 10, timeout: 5m,\n"
	"  data_timeout: 3m, greeting_delay_ms: 0, vrfy: false }\n"
	"relay: { dns: { port: 53 }, port: 25, retry_initial: 5m, retry_max: 1h, warn_after: 4h,\n"
	"  max_queue_time: 5d, connect_timeout: 30s, command_timeout: 5m, data_timeout: 3m,\n"
	"  final_timeout: 10m, tls: opportunistic, smarthost_tls: starttls, max_connections: 20,\n"
	"  max_connections_per_domain: 10 }\n";

static void cfg_defaults(struct config *cfg, const char *path)
{
	char err[256];
	struct ctx c = { "<defaults>", NULL, NULL, err, sizeof(err) };
	cfg->path = xstrdup(path);
	walk_init(root_keys, cfg);
	if (load_doc(&c, defaults_yaml, sizeof(defaults_yaml) - 1, 0, root_keys, cfg, NULL) == -1)
		fatalx("config defaults: %s", err);
}

struct config *cfg_load_string(const char *name, const char *text, size_t len,
    char *const *overrides, size_t noverrides, char *err, size_t errlen)
{
	struct ctx c = { name, NULL, overrides, err, errlen };
	struct config *cfg = xcalloc(1, sizeof(*cfg));
	cfg_defaults(cfg, name);
	if (load_doc(&c, text != NULL ? text : "", len, noverrides, root_keys, cfg, config_finish) == -1)
		cfg_free(&cfg);
	return cfg;
}

struct config *cfg_load(const char *path, char *const *overrides, size_t noverrides,
    char *err, size_t errlen)
{
	struct buf b;
	if (cfg_read_file(path, &b, err, errlen) == -1)
		return NULL;
	struct config *cfg = cfg_load_string(path, b.data, b.len, overrides, noverrides, err, errlen);
	buf_free(&b);
	return cfg;
}

void cfg_users_free(struct cfg_user **users_r, size_t n)
{
	struct users_doc d = { *users_r, n };
	walk_free(users_doc_keys, &d);
	*users_r = NULL;
}

void cfg_free(struct config **cfg_r)
{
	if (*cfg_r == NULL)
		return;
	for (size_t i = 0; i < (*cfg_r)->ndkim; i++)
		dkim_key_unref(&(*cfg_r)->dkim[i].pkey);
	walk_free(root_keys, *cfg_r);
	free((*cfg_r)->path);
	free(*cfg_r);
	*cfg_r = NULL;
}

/* ------------------------------------------------------------------ users file text */

int cfg_load_users_text(const char *name, const char *text, size_t len, struct cfg_user **users_r,
    size_t *nusers_r, char *err, size_t errlen)
{
	struct ctx c = { name, NULL, NULL, err, errlen };
	struct users_doc d = { NULL, 0 };
	if (load_doc(&c, text, len, 0, users_doc_keys, &d, NULL) == -1) {
		cfg_users_free(&d.users, d.n);
		return -1;
	}
	*users_r = d.users != NULL ? d.users : xcalloc(1, sizeof(*d.users));
	*nusers_r = d.n;
	return 0;
}

/* users_file.c writes the keys of an entry in the order of this table. */
const char *cfg_user_key(size_t i, enum cfg_user_field *field_r, size_t *off_r)
{
	if (i >= sizeof(user_keys) / sizeof(user_keys[0]) || user_keys[i].name == NULL)
		return NULL;
	const struct key *k = &user_keys[i];
	*field_r = k->fn == key_str ? CFG_USER_STR : k->fn == key_strlist ? CFG_USER_LIST
	    : k->fn == key_size ? CFG_USER_SIZE : CFG_USER_OTHER;
	*off_r = k->off;
	return k->name;
}

/* ------------------------------------------------------------------ protocols, demo */

const char *cfg_proto_name(enum cfg_proto p)
{
	return (unsigned)p < PROTO__COUNT ? proto_names[p] : "?";
}

bool cfg_proto_implicit_tls(enum cfg_proto p)
{
	return p == PROTO_SUBMISSIONS || p == PROTO_IMAPS || p == PROTO_POP3S;
}

/* `postling serve --demo`: loopback ports above 1024, data under ./var, a
 * self-signed certificate, one account demo@example.org with password "demo". */
const char cfg_demo_yaml[] =
	"# Postling demo configuration (postling serve --demo)\n"
	"server:\n"
	"  hostname: localhost\n"
	"  data_dir: ./var\n"
	"  user: \"\"                        # do not drop privileges\n"
	"log:\n"
	"  level: info\n"
	"tls:\n"
	"  self_signed: true                # made under ./var/tls on first start\n"
	"listeners:\n"
	"  - { protocol: pop3, address: 127.0.0.1, port: 2110 }\n"
	"  - { protocol: pop3s, address: 127.0.0.1, port: 2995 }\n"
	"  - { protocol: smtp, address: 127.0.0.1, port: 2525 }\n"
	"  - { protocol: submission, address: 127.0.0.1, port: 2587 }\n"
	"  - { protocol: submissions, address: 127.0.0.1, port: 2465 }\n"
	"  - { protocol: imap, address: 127.0.0.1, port: 2143 }\n"
	"  - { protocol: imaps, address: 127.0.0.1, port: 2993 }\n"
	"domains: [example.org]\n"
	"auth:\n"
	"  allow_plaintext: false           # loopback may log in without TLS anyway\n"
	"users:\n"
	"  - address: demo@example.org\n"
	"    password: \"$y$j9T$pZTxwzaTdgXAXBEP1SQi51$rrzmdGG8y5zeBWDKlT6TwgDxfSyWj.87na68fP/GUD8\"  # demo\n"
	"    secret: demo                   # for APOP, CRAM-MD5, DIGEST-MD5, SCRAM\n";
