/* dns.c: MX, address and TLSA lookups for delivery over libunbound (design
 * §6, DANE: RFC 7672); the API and its rules are in relay.h.
 *
 * libunbound's event API (ub_resolve_event) hands the callback the raw answer
 * message, not a parsed ub_result, and unbound compresses the names in it. So
 * the messages are parsed here (RFC 1035 §4.1, compression §4.1.4) by pure
 * functions that check every offset against the message length and accept
 * only backward compression pointers.
 *
 * Ownership: struct dns owns the ub_ctx and every pending request (a list, so
 * dns_free can cancel them). A request owns its event (timeout, and
 * event_active on completion, so callbacks never run inside ub_resolve_event,
 * which answers local zones and cached data synchronously) and its partial
 * results until they are handed to the callback. libunbound keeps a pointer
 * to a request's sub-query until it answers or ub_cancel is called; after
 * ub_cancel it never calls back (libworker_event_done_cb checks the flag), so
 * every sub-query in flight is cancelled before its request is freed, and
 * before ub_ctx_delete (whose mesh clean-up would call back with no
 * message). Everything runs on the reactor thread. */
#include "relay/relay.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <unbound-event.h>
#include <unbound.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"

/* RFC 1035 §3.2.2-3.2.4, RFC 3596 §2.1 */
#define T_A 1
#define T_CNAME 5
#define T_MX 15
#define T_AAAA 28
#define T_TLSA 52                 /* RFC 6698 §7.1 */
#define C_IN 1
#define RCODE_NOERROR 0
#define RCODE_SERVFAIL 2
#define RCODE_NXDOMAIN 3
#define HDR_LEN 12                /* RFC 1035 §4.1.1 */
#define RR_FIXED 10               /* TYPE, CLASS, TTL, RDLENGTH (§4.1.3) */
#define WIRE_NAME_MAX 255         /* §2.3.4, length octets included */
#define LABEL_MAX 63
#define NAME_BUF 256              /* text of a wire name: at most 253 + NUL */
#define CNAME_MAX 16              /* chain links followed inside one answer */
#define TLSA_FIXED 3              /* usage, selector, matching type (RFC 6698 §2.1) */
#define SEC_BOGUS 1               /* ub_resolve_event's sec argument */
#define SEC_SECURE 2

/* ------------------------------------------------------------ names */

/* Letters, digits, '-' (RFC 1123 §2.1) and '_' (service labels, seen in the
 * wild): the only bytes our text form carries, so no '.', '\\' or control
 * byte inside a label can change what a name means when printed or handed to
 * ub_resolve_event (which parses escapes). */
static bool label_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	    c == '-' || c == '_';
}

static char lower(unsigned char c)
{
	return (char)(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c);
}

/* A name from the caller into out: lowercase (RFC 4343), one final '.'
 * dropped; -1 unless 1..253 characters of labels of 1..63 label_char bytes. */
static int name_norm(const char *in, char out[NAME_BUF])
{
	size_t len = strnlen(in, NAME_BUF);
	size_t lab = 0;
	if (len > 0 && in[len - 1] == '.')
		len--;
	if (len == 0 || len > DNS_NAME_MAX)
		return -1;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)in[i];
		if (c == '.') {
			if (lab == 0)
				return -1;
			lab = 0;
		} else if (!label_char(c) || ++lab > LABEL_MAX) {
			return -1;
		}
		out[i] = lower(c);
	}
	out[len] = '\0';
	return lab == 0 ? -1 : 0;
}

/* ------------------------------------------------------------ messages */

static uint16_t get16(const uint8_t *p)
{
	return (uint16_t)(p[0] << 8 | p[1]);
}

/* The name at *off in msg[0..len) (RFC 1035 §3.1, §4.1.4) as lowercase dotted
 * text in out ("" for the root); *off moves past the bytes the name takes at
 * *off. A compression pointer must point into the body and before the start
 * of the piece it ends, so pointers strictly go back and cannot loop; labels
 * of type 01/10 (RFC 6891 §5) are refused; the expanded name stays within 255
 * octets. 0: ok; 1: well formed, but a label holds a byte outside label_char
 * (out has '?' there: the record is unusable); -1: malformed. */
static int read_name(const uint8_t *msg, size_t len, size_t *off, char out[NAME_BUF])
{
	size_t pos = *off, piece = *off, wire = 1, n = 0;
	bool jumped = false, odd = false;
	for (;;) {
		if (pos >= len)
			return -1;
		uint8_t c = msg[pos];
		if ((c & 0xc0) == 0xc0) {
			if (len - pos < 2)
				return -1;
			size_t to = (size_t)(c & 0x3f) << 8 | msg[pos + 1];
			if (to < HDR_LEN || to >= piece)
				return -1;
			if (!jumped)
				*off = pos + 2;
			jumped = true;
			pos = piece = to;
			continue;
		}
		if (c & 0xc0)
			return -1;
		if (c == 0)
			break;
		wire += 1u + c;
		if (wire > WIRE_NAME_MAX || len - pos - 1 < c)
			return -1;
		if (n > 0)
			out[n++] = '.';
		for (size_t i = 1; i <= c; i++) {
			odd |= !label_char(msg[pos + i]);
			out[n++] = label_char(msg[pos + i]) ? lower(msg[pos + i]) : '?';
		}
		pos += 1u + c;
	}
	if (!jumped)
		*off = pos + 1;
	out[n] = '\0';
	return odd ? 1 : 0;
}

struct msg {
	const uint8_t *p;
	size_t len;
	int rcode;
	size_t ancount;
	size_t an_off;                /* first answer RR */
};

struct rr {
	char owner[NAME_BUF];
	uint16_t type, class;
	size_t rdoff, rdlen;
};

/* Header and question (RFC 1035 §4.1.1-2): 0 when pkt is a response to the
 * one question <qname, qtype, IN>, else -1. */
static int msg_open(struct msg *m, const void *pkt, size_t len, const char *qname, uint16_t qtype)
{
	char name[NAME_BUF];
	size_t off = HDR_LEN;
	m->p = pkt;
	m->len = len;
	if (pkt == NULL || len < HDR_LEN || !(m->p[2] & 0x80) || get16(m->p + 4) != 1)
		return -1;
	m->rcode = m->p[3] & 0x0f;
	m->ancount = get16(m->p + 6);
	if (read_name(m->p, len, &off, name) != 0 || len - off < 4)
		return -1;
	if (strcmp(name, qname) != 0 || get16(m->p + off) != qtype || get16(m->p + off + 2) != C_IN)
		return -1;
	m->an_off = off + 4;
	return 0;
}

/* fn(m, rr, ctx) returns 0, or -1 for malformed RDATA */
typedef int (*rr_fn)(const struct msg *m, const struct rr *rr, void *ctx);

/* Calls fn on each answer RR of class IN whose owner is a usable name; -1
 * when the answer section or fn says the message is malformed. */
static int msg_answers(const struct msg *m, rr_fn fn, void *ctx)
{
	size_t off = m->an_off;
	for (size_t i = 0; i < m->ancount; i++) {
		struct rr rr;
		int rc = read_name(m->p, m->len, &off, rr.owner);
		if (rc < 0 || m->len - off < RR_FIXED)
			return -1;
		rr.type = get16(m->p + off);
		rr.class = get16(m->p + off + 2);
		rr.rdlen = get16(m->p + off + 8);
		rr.rdoff = off + RR_FIXED;
		if (m->len - rr.rdoff < rr.rdlen)
			return -1;
		off = rr.rdoff + rr.rdlen;
		if (rc == 0 && rr.class == C_IN && fn(m, &rr, ctx) < 0)
			return -1;
	}
	return 0;
}

/* A name filling RDATA from skip octets on exactly (RFC 1035 §3.3.1, §3.3.9):
 * read_name's result, -1 also when it does not end where the RDATA does. */
static int rdata_name(const struct msg *m, const struct rr *rr, size_t skip, char out[NAME_BUF])
{
	size_t off = rr->rdoff + skip;
	if (rr->rdlen <= skip)
		return -1;
	int rc = read_name(m->p, m->len, &off, out);
	return off == rr->rdoff + rr->rdlen ? rc : -1;
}

struct cname_ctx {
	const char *from;
	char to[NAME_BUF];
	bool found;
};

static int cname_rr(const struct msg *m, const struct rr *rr, void *ctx)
{
	struct cname_ctx *c = ctx;
	if (rr->type != T_CNAME || c->found || strcmp(rr->owner, c->from) != 0)
		return 0;
	c->found = true;
	return rdata_name(m, rr, 0, c->to) == 0 ? 0 : -1;
}

/* Into owner: the name the records answering qname are owned by: qname, or
 * the end of its CNAME chain in the answer (RFC 1034 §3.6.2, §4.3.2 step 3a;
 * the resolver follows it). -1 when malformed, looping or over CNAME_MAX. */
static int msg_owner(const struct msg *m, const char *qname, char owner[NAME_BUF])
{
	snprintf(owner, NAME_BUF, "%s", qname);
	for (int i = 0; i <= CNAME_MAX; i++) {
		struct cname_ctx c = { .from = owner };
		if (msg_answers(m, cname_rr, &c) < 0)
			return -1;
		if (!c.found)
			return 0;
		memcpy(owner, c.to, NAME_BUF);
	}
	return -1;
}

/* Opens pkt for <name, qtype> and sorts out the RCODE: DNS_OK with the owner
 * of the answer records set, or the final status. */
static enum dns_status msg_start(struct msg *m, const void *pkt, size_t len, const char *name,
    uint16_t qtype, char qname[NAME_BUF], char owner[NAME_BUF])
{
	if (name_norm(name, qname) < 0)
		return DNS_BADNAME;
	if (msg_open(m, pkt, len, qname, qtype) < 0)
		return DNS_TEMPFAIL;
	if (m->rcode == RCODE_NXDOMAIN)
		return DNS_NXDOMAIN;
	if (m->rcode != RCODE_NOERROR || msg_owner(m, qname, owner) < 0)
		return DNS_TEMPFAIL;
	return DNS_OK;
}

/* ------------------------------------------------------------ MX */

struct mx_ctx {
	const char *owner;
	struct dns_mx mx[DNS_MX_MAX];
	size_t n, nnull, nbad;
};

static int mx_rr(const struct msg *m, const struct rr *rr, void *ctx)
{
	struct mx_ctx *x = ctx;
	char name[NAME_BUF];
	if (rr->type != T_MX || strcmp(rr->owner, x->owner) != 0)
		return 0;
	int rc = rdata_name(m, rr, 2, name);
	if (rc < 0)
		return -1;
	if (rc > 0)
		x->nbad++;
	else if (name[0] == '\0')
		x->nnull++;             /* "." (RFC 7505 §3) */
	else if (x->n < DNS_MX_MAX) {
		x->mx[x->n].name = xstrdup(name);
		x->mx[x->n++].pref = get16(m->p + rr->rdoff);
	}
	return 0;
}

static void mx_swap(struct dns_mx *a, struct dns_mx *b)
{
	struct dns_mx t = *a;
	*a = *b;
	*b = t;
}

/* RFC 5321 §5.1: ascending preference, equal ones in random order (a uniform
 * shuffle, then a stable sort); a name listed twice keeps its best entry. */
static size_t mx_order(struct dns_mx *mx, size_t n)
{
	size_t kept = 0;
	for (size_t i = n; i > 1; i--)
		mx_swap(&mx[i - 1], &mx[util_random64() % i]);
	for (size_t i = 1; i < n; i++)
		for (size_t j = i; j > 0 && mx[j - 1].pref > mx[j].pref; j--)
			mx_swap(&mx[j - 1], &mx[j]);
	for (size_t i = 0; i < n; i++) {
		bool dup = false;
		for (size_t j = 0; j < kept && !dup; j++)
			dup = strcmp(mx[j].name, mx[i].name) == 0;
		if (dup)
			free(mx[i].name);
		else
			mx[kept++] = mx[i];
	}
	return kept;
}

static struct dns_mx_list *mx_list(const struct dns_mx *mx, size_t n, bool implicit)
{
	struct dns_mx_list *l = xcalloc(1, sizeof(*l));
	l->mx = xreallocarray(NULL, n, sizeof(*l->mx));
	memcpy(l->mx, mx, n * sizeof(*mx));
	l->n = n;
	l->implicit = implicit;
	return l;
}

/* RFC 5321 §5.1 and RFC 7505 §3-4 from what the answer held. MX records whose
 * exchange is no usable name make the set unusable unless others are fine:
 * "reported as an error" (§5.1), temporary, as the zone may be mended. */
static enum dns_status mx_result(struct mx_ctx *x, const char *qname, struct dns_mx_list **list_r)
{
	if (x->n > 0) {
		*list_r = mx_list(x->mx, mx_order(x->mx, x->n), false);
		return DNS_OK;
	}
	if (x->nbad > 0)
		return DNS_TEMPFAIL;
	if (x->nnull > 0)
		return DNS_NULL_MX;
	struct dns_mx self = { .name = xstrdup(qname), .pref = 0 };
	*list_r = mx_list(&self, 1, true);
	return DNS_OK;
}

enum dns_status dns_mx_parse(const void *pkt, size_t len, const char *domain,
    struct dns_mx_list **list_r)
{
	char qname[NAME_BUF], owner[NAME_BUF];
	struct msg m;
	*list_r = NULL;
	enum dns_status st = msg_start(&m, pkt, len, domain, T_MX, qname, owner);
	if (st != DNS_OK)
		return st;
	struct mx_ctx x = { .owner = owner };
	if (msg_answers(&m, mx_rr, &x) < 0) {
		for (size_t i = 0; i < x.n; i++)
			free(x.mx[i].name);
		return DNS_TEMPFAIL;
	}
	return mx_result(&x, qname, list_r);
}

void dns_mx_list_free(struct dns_mx_list **l_r)
{
	struct dns_mx_list *l = *l_r;
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->n; i++)
		free(l->mx[i].name);
	free(l->mx);
	free(l);
	*l_r = NULL;
}

/* ------------------------------------------------------------ A, AAAA */

struct addr_ctx {
	char owner[NAME_BUF];
	uint16_t qtype;
	struct sockaddr_storage a[DNS_ADDR_MAX];
	size_t n;
};

/* RFC 1035 §3.4.1 (4 octets), RFC 3596 §2.2 (16 octets) */
static int addr_rr(const struct msg *m, const struct rr *rr, void *ctx)
{
	struct addr_ctx *x = ctx;
	if (rr->type != x->qtype || strcmp(rr->owner, x->owner) != 0)
		return 0;
	if (rr->rdlen != (x->qtype == T_A ? 4u : 16u))
		return -1;
	if (x->n == DNS_ADDR_MAX)
		return 0;
	struct sockaddr_storage *ss = &x->a[x->n++];
	memset(ss, 0, sizeof(*ss));
	if (x->qtype == T_A) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		sin->sin_family = AF_INET;
		memcpy(&sin->sin_addr, m->p + rr->rdoff, 4);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		sin6->sin6_family = AF_INET6;
		memcpy(&sin6->sin6_addr, m->p + rr->rdoff, 16);
	}
	return 0;
}

static void addr_append(struct dns_addr_list **list_r, const struct sockaddr_storage *a, size_t n,
    const char *canon)
{
	struct dns_addr_list *l = *list_r;
	if (l == NULL)
		l = *list_r = xcalloc(1, sizeof(*l));
	l->addrs = xreallocarray(l->addrs, l->n + n, sizeof(*l->addrs));
	memcpy(l->addrs + l->n, a, n * sizeof(*a));
	l->n += n;
	if (l->canon == NULL)
		l->canon = xstrdup(canon);
}

enum dns_status dns_addr_parse(const void *pkt, size_t len, const char *host, int qtype,
    struct dns_addr_list **list_r)
{
	char qname[NAME_BUF];
	struct msg m;
	struct addr_ctx *x;
	if (qtype != T_A && qtype != T_AAAA)
		return DNS_TEMPFAIL;
	x = xcalloc(1, sizeof(*x));   /* 4 KiB of addresses: not on the stack */
	x->qtype = (uint16_t)qtype;
	enum dns_status st = msg_start(&m, pkt, len, host, x->qtype, qname, x->owner);
	if (st == DNS_OK && msg_answers(&m, addr_rr, x) < 0)
		st = DNS_TEMPFAIL;
	if (st == DNS_OK && x->n == 0)
		st = DNS_NOADDR;
	if (st == DNS_OK)
		addr_append(list_r, x->a, x->n, x->owner);
	free(x);
	return st;
}

void dns_addr_list_free(struct dns_addr_list **l_r)
{
	struct dns_addr_list *l = *l_r;
	if (l == NULL)
		return;
	free(l->addrs);
	free(l->canon);
	free(l);
	*l_r = NULL;
}

/* ------------------------------------------------------------ TLSA */

struct tlsa_ctx {
	const char *owner;
	struct dns_tlsa rr[DNS_TLSA_MAX];
	size_t n;
};

/* RFC 6698 §2.1: one octet each for usage, selector and matching type, then
 * the association data (at least one octet: an empty one matches nothing). */
static int tlsa_rr(const struct msg *m, const struct rr *rr, void *ctx)
{
	struct tlsa_ctx *x = ctx;
	if (rr->type != T_TLSA || strcmp(rr->owner, x->owner) != 0)
		return 0;
	if (rr->rdlen <= TLSA_FIXED)
		return -1;
	if (x->n == DNS_TLSA_MAX)
		return 0;
	const uint8_t *p = m->p + rr->rdoff;
	struct dns_tlsa *t = &x->rr[x->n++];
	t->usage = p[0];
	t->selector = p[1];
	t->mtype = p[2];
	t->len = rr->rdlen - TLSA_FIXED;
	t->data = xmalloc(t->len);
	memcpy(t->data, p + TLSA_FIXED, t->len);
	return 0;
}

enum dns_status dns_tlsa_parse(const void *pkt, size_t len, const char *name,
    struct dns_tlsa_list **list_r)
{
	char qname[NAME_BUF], owner[NAME_BUF];
	struct msg m;
	*list_r = NULL;
	enum dns_status st = msg_start(&m, pkt, len, name, T_TLSA, qname, owner);
	if (st != DNS_OK)
		return st;
	struct tlsa_ctx *x = xcalloc(1, sizeof(*x));
	x->owner = owner;
	if (msg_answers(&m, tlsa_rr, x) < 0)
		st = DNS_TEMPFAIL;
	else if (x->n == 0)
		st = DNS_NOADDR;
	if (st == DNS_OK) {
		struct dns_tlsa_list *l = xcalloc(1, sizeof(*l));
		l->rr = xreallocarray(NULL, x->n, sizeof(*l->rr));
		memcpy(l->rr, x->rr, x->n * sizeof(*l->rr));
		l->n = x->n;
		*list_r = l;
	} else {
		for (size_t i = 0; i < x->n; i++)
			free(x->rr[i].data);
	}
	free(x);
	return st;
}

void dns_tlsa_list_free(struct dns_tlsa_list **l_r)
{
	struct dns_tlsa_list *l = *l_r;
	if (l == NULL)
		return;
	for (size_t i = 0; i < l->n; i++)
		free(l->rr[i].data);
	free(l->rr);
	free(l);
	*l_r = NULL;
}

bool dns_tlsa_usable(const struct dns_tlsa *t)
{
	if (t->usage != DNS_TLSA_USAGE_DANE_TA && t->usage != DNS_TLSA_USAGE_DANE_EE)
		return false;
	if (t->selector > 1)
		return false;
	switch (t->mtype) {
	case 0: return t->len > 0;
	case 1: return t->len == 32;
	case 2: return t->len == 64;
	default: return false;
	}
}

const char *dns_strerror(enum dns_status status)
{
	switch (status) {
	case DNS_OK: return "ok";
	case DNS_NOADDR: return "host has no address records";
	case DNS_NULL_MX: return "domain does not accept mail (null MX)";
	case DNS_NXDOMAIN: return "domain does not exist";
	case DNS_BADNAME: return "invalid domain name";
	case DNS_TEMPFAIL: return "temporary DNS failure";
	case DNS_BOGUS: return "DNSSEC validation failed (bogus answer)";
	}
	return "unknown DNS status";
}

/* ------------------------------------------------------------ context */

struct dns_sub {
	struct dns_req *req;
	uint16_t qtype;
	int async_id;                 /* libunbound's id for ub_cancel */
	bool running;
	bool secure;
	enum dns_status status;
	struct dns_addr_list *addrs;  /* owned: this family's addresses */
};

enum req_kind { REQ_MX, REQ_ADDR, REQ_TLSA };

struct dns_req {
	LIST_ENTRY(dns_req) link;     /* in d->reqs until the callback starts */
	struct dns *d;
	struct event *ev;             /* owned: timeout; event_active when answered */
	enum req_kind kind;
	char name[NAME_BUF];
	bool badname;
	struct dns_sub sub[2];        /* MX: [0]; addresses: [0] AAAA, [1] A */
	size_t nsub, running;
	struct dns_mx_list *mx;       /* owned until handed to mx_cb */
	struct dns_tlsa_list *tlsa;   /* owned until handed to tlsa_cb */
	dns_mx_cb mx_cb;
	dns_addr_cb addr_cb;
	dns_tlsa_cb tlsa_cb;
	void *arg;
	bool in_cb;
};

struct dns {
	struct event_base *base;
	struct ub_ctx *ctx;           /* owned */
	unsigned timeout_ms;
	bool validating;              /* a trust anchor was added */
	LIST_HEAD(, dns_req) reqs;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;
	if (err == NULL || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* "IP" or "IP@PORT" -> libunbound's "IP@PORT" forwarder (port: default). */
static int add_server(struct dns *d, const char *s, int port, char *err, size_t errlen)
{
	char ip[INET6_ADDRSTRLEN + 1], fwd[INET6_ADDRSTRLEN + 8];
	unsigned char bin[sizeof(struct in6_addr)];
	const char *at = strchr(s, '@');
	size_t iplen = at != NULL ? (size_t)(at - s) : strlen(s);
	long p = port;
	if (iplen == 0 || iplen >= sizeof(ip))
		goto bad;
	memcpy(ip, s, iplen);
	ip[iplen] = '\0';
	if (inet_pton(AF_INET, ip, bin) != 1 && inet_pton(AF_INET6, ip, bin) != 1)
		goto bad;
	if (at != NULL) {
		char *end;
		p = strtol(at + 1, &end, 10);
		if (at[1] < '1' || at[1] > '9' || *end != '\0' || p > 65535)
			goto bad;
	}
	snprintf(fwd, sizeof(fwd), "%s@%ld", ip, p > 0 ? p : 53);
	int rc = ub_ctx_set_fwd(d->ctx, fwd);
	if (rc == 0)
		return 0;
	set_err(err, errlen, "dns server %s: %s", s, ub_strerror(rc));
	return -1;
bad:
	set_err(err, errlen, "dns server \"%s\": not IP or IP@PORT", s);
	return -1;
}

struct dns *dns_new(struct event_base *base, const char *const *servers, size_t nservers,
    int port, char *err, size_t errlen)
{
	struct dns *d = xcalloc(1, sizeof(*d));
	d->base = base;
	d->timeout_ms = DNS_TIMEOUT_MS_DEFAULT;
	LIST_INIT(&d->reqs);
	if (port < 0 || port > 65535) {
		set_err(err, errlen, "dns port %d out of range", port);
		goto fail;
	}
	d->ctx = ub_ctx_create_event(base);
	if (d->ctx == NULL) {
		set_err(err, errlen, "ub_ctx_create_event failed");
		goto fail;
	}
	for (size_t i = 0; i < nservers; i++)
		if (add_server(d, servers[i], port, err, errlen) < 0)
			goto fail;
	int rc = nservers == 0 ? ub_ctx_resolvconf(d->ctx, NULL) : 0;
	if (rc != 0) {
		set_err(err, errlen, "/etc/resolv.conf: %s", ub_strerror(rc));
		goto fail;
	}
	return d;
fail:
	if (d->ctx != NULL)
		ub_ctx_delete(d->ctx);
	free(d);
	return NULL;
}

int dns_set_trust_anchor_file(struct dns *d, const char *path, char *err, size_t errlen)
{
	/* libunbound reads the file only at the first query: check it now */
	if (access(path, R_OK) != 0) {
		set_err(err, errlen, "trust anchor %s: not readable", path);
		return -1;
	}
	int rc = ub_ctx_add_ta_file(d->ctx, path);
	if (rc != 0) {
		set_err(err, errlen, "trust anchor %s: %s", path, ub_strerror(rc));
		return -1;
	}
	d->validating = true;
	return 0;
}

bool dns_validating(const struct dns *d)
{
	return d->validating;
}

void dns_set_timeout(struct dns *d, unsigned ms)
{
	d->timeout_ms = ms > 0 ? ms : DNS_TIMEOUT_MS_DEFAULT;
}

/* ------------------------------------------------------------ requests */

static const char *qtype_name(uint16_t qtype)
{
	return qtype == T_MX ? "MX" : qtype == T_A ? "A" : qtype == T_TLSA ? "TLSA" : "AAAA";
}

static void log_tempfail(const struct dns_req *r, uint16_t qtype, const char *why)
{
	struct logline *l = log_begin(LL_INFO, "dns.tempfail");
	log_str(l, "name", r->name);
	log_str(l, "type", qtype_name(qtype));
	log_str(l, "reason", why);
	log_end(l);
}

static void log_bogus(const struct dns_req *r, uint16_t qtype, const char *why)
{
	struct logline *l = log_begin(LL_WARN, "dns.bogus");
	log_str(l, "name", r->name);
	log_str(l, "type", qtype_name(qtype));
	log_str(l, "reason", why);
	log_end(l);
}

static void sub_done(struct dns_sub *s, enum dns_status st, const char *why)
{
	struct dns_req *r = s->req;
	if (st == DNS_TEMPFAIL && why != NULL)
		log_tempfail(r, s->qtype, why);
	else if (st == DNS_BOGUS)
		log_bogus(r, s->qtype, why != NULL ? why : "DNSSEC bogus");
	s->status = st;
	s->running = false;
	if (--r->running == 0)
		event_active(r->ev, 0, 0);
}

/* Why a message the parser turned down failed: its RCODE (RFC 1035 §4.1.1)
 * when that is the reason, for the log. */
static const char *answer_why(const uint8_t *pkt, size_t len)
{
	static const char *const rcodes[] = { "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN",
		"NOTIMP", "REFUSED" };
	unsigned rc = len >= HDR_LEN ? pkt[3] & 0x0fu : 0;
	if (rc != RCODE_NOERROR && rc != RCODE_NXDOMAIN)
		return rc < sizeof(rcodes) / sizeof(rcodes[0]) ? rcodes[rc] : "error RCODE";
	return "malformed or unusable answer";
}

/* libunbound's callback (ub_event_callback_type). rcode is SERVFAIL and the
 * like when no answer came; an NXDOMAIN answer comes as a message. */
static void sub_answer(void *arg, int rcode, void *pkt, int len, int sec, char *why_bogus,
    int ratelimited)
{
	struct dns_sub *s = arg;
	struct dns_req *r = s->req;
	(void)ratelimited;
	if (rcode == RCODE_NXDOMAIN) {
		sub_done(s, DNS_NXDOMAIN, NULL);
	} else if (rcode != RCODE_NOERROR || pkt == NULL || len < 0) {
		sub_done(s, DNS_TEMPFAIL, rcode == RCODE_SERVFAIL ? "SERVFAIL" : "resolver error");
	} else if (sec == SEC_BOGUS) {   /* RFC 4035 §5.5: bogus data is never used */
		sub_done(s, DNS_BOGUS, why_bogus);
	} else {
		s->secure = sec == SEC_SECURE;
		enum dns_status st = r->kind == REQ_MX ?
		    dns_mx_parse(pkt, (size_t)len, r->name, &r->mx) : r->kind == REQ_TLSA ?
		    dns_tlsa_parse(pkt, (size_t)len, r->name, &r->tlsa) :
		    dns_addr_parse(pkt, (size_t)len, r->name, s->qtype, &s->addrs);
		sub_done(s, st, answer_why(pkt, (size_t)len));
	}
}

/* Every sub-query is counted running before any starts: one answered inside
 * ub_resolve_event must not look like the last. */
static void sub_start(struct dns_req *r, struct dns_sub *s)
{
	int rc = ub_resolve_event(r->d->ctx, r->name, s->qtype, C_IN, s, sub_answer, &s->async_id);
	if (rc != 0)   /* then libunbound never calls back */
		sub_done(s, rc == UB_SYNTAX ? DNS_BADNAME : DNS_TEMPFAIL, ub_strerror(rc));
}

static void sub_cancel(struct dns_sub *s)
{
	if (s->running && s->async_id != 0)
		ub_cancel(s->req->d->ctx, s->async_id);
	s->running = false;
}

static void req_stop(struct dns_req *r)
{
	for (size_t i = 0; i < r->nsub; i++)
		sub_cancel(&r->sub[i]);
	r->running = 0;
}

static void req_free(struct dns_req *r)
{
	event_free(r->ev);
	dns_mx_list_free(&r->mx);
	dns_tlsa_list_free(&r->tlsa);
	for (size_t i = 0; i < r->nsub; i++)
		dns_addr_list_free(&r->sub[i].addrs);
	free(r);
}

/* Both families merged, IPv6 first; see dns_resolve_addrs for the status. */
static enum dns_status addr_status(struct dns_req *r, struct dns_addr_list **list_r)
{
	struct dns_sub *v6 = &r->sub[0], *v4 = &r->sub[1];
	struct dns_addr_list *l = NULL;
	if (v6->addrs != NULL)
		addr_append(&l, v6->addrs->addrs, v6->addrs->n, v6->addrs->canon);
	if (v4->addrs != NULL)
		addr_append(&l, v4->addrs->addrs, v4->addrs->n, v4->addrs->canon);
	/* RFC 7672 §2.2: a host whose addresses fail validation is not used,
	 * even when the other family validated */
	if (v6->status == DNS_BOGUS || v4->status == DNS_BOGUS) {
		dns_addr_list_free(&l);
		return DNS_BOGUS;
	}
	if (l != NULL) {
		l->secure = v6->secure && v4->secure;
		*list_r = l;
		return DNS_OK;
	}
	if (v6->status == DNS_TEMPFAIL || v4->status == DNS_TEMPFAIL)
		return DNS_TEMPFAIL;
	if (v6->status == DNS_NXDOMAIN && v4->status == DNS_NXDOMAIN)
		return DNS_NXDOMAIN;
	if (v6->status == DNS_BADNAME || v4->status == DNS_BADNAME)
		return DNS_BADNAME;
	return DNS_NOADDR;
}

static void req_deliver(struct dns_req *r)
{
	if (r->kind == REQ_MX) {
		enum dns_status st = r->badname ? DNS_BADNAME : r->sub[0].status;
		struct dns_mx_list *l = st == DNS_OK ? r->mx : NULL;
		if (l != NULL)
			l->secure = r->sub[0].secure;
		r->mx = NULL;
		r->mx_cb(r->arg, st, l);
	} else if (r->kind == REQ_TLSA) {
		enum dns_status st = r->badname ? DNS_BADNAME : r->sub[0].status;
		struct dns_tlsa_list *l = st == DNS_OK ? r->tlsa : NULL;
		if (l != NULL)
			l->secure = r->sub[0].secure;
		r->tlsa = NULL;
		r->tlsa_cb(r->arg, st, l);
	} else {
		struct dns_addr_list *l = NULL;
		enum dns_status st = r->badname ? DNS_BADNAME : addr_status(r, &l);
		r->addr_cb(r->arg, st, l);
	}
}

/* The request's event: all sub-queries answered, or the timeout. */
static void req_event(evutil_socket_t fd, short what, void *arg)
{
	struct dns_req *r = arg;
	(void)fd;
	(void)what;
	for (size_t i = 0; i < r->nsub; i++) {
		if (r->sub[i].running) {
			log_tempfail(r, r->sub[i].qtype, "timeout");
			sub_cancel(&r->sub[i]);
			r->sub[i].status = DNS_TEMPFAIL;
		}
	}
	r->running = 0;
	LIST_REMOVE(r, link);
	r->in_cb = true;
	req_deliver(r);
	req_free(r);
}

static struct dns_req *req_new(struct dns *d, enum req_kind kind, void *arg)
{
	struct dns_req *r = xcalloc(1, sizeof(*r));
	struct timeval tv = { .tv_sec = d->timeout_ms / 1000,
		.tv_usec = (suseconds_t)(d->timeout_ms % 1000) * 1000 };
	r->d = d;
	r->kind = kind;
	r->arg = arg;
	r->ev = event_new(d->base, -1, 0, req_event, r);
	if (r->ev == NULL || event_add(r->ev, &tv) != 0)
		fatalx("dns: event_new/event_add failed");
	LIST_INSERT_HEAD(&d->reqs, r, link);
	return r;
}

static struct dns_req *req_start(struct dns_req *r, const char *name, const uint16_t *qtypes,
    size_t nsub)
{
	if (name_norm(name, r->name) < 0) {
		snprintf(r->name, sizeof(r->name), "%s", "?");
		r->badname = true;
		event_active(r->ev, 0, 0);
		return r;
	}
	r->nsub = r->running = nsub;
	for (size_t i = 0; i < nsub; i++)
		r->sub[i] = (struct dns_sub){ .req = r, .qtype = qtypes[i], .running = true };
	for (size_t i = 0; i < nsub; i++)
		sub_start(r, &r->sub[i]);
	return r;
}

struct dns_req *dns_resolve_mx(struct dns *d, const char *domain, dns_mx_cb cb, void *arg)
{
	static const uint16_t qtypes[] = { T_MX };
	struct dns_req *r = req_new(d, REQ_MX, arg);
	r->mx_cb = cb;
	return req_start(r, domain, qtypes, 1);
}

/* AAAA first: the merged list puts IPv6 first (design §6). */
struct dns_req *dns_resolve_addrs(struct dns *d, const char *host, dns_addr_cb cb, void *arg)
{
	static const uint16_t qtypes[] = { T_AAAA, T_A };
	struct dns_req *r = req_new(d, REQ_ADDR, arg);
	r->addr_cb = cb;
	return req_start(r, host, qtypes, 2);
}

struct dns_req *dns_resolve_tlsa(struct dns *d, const char *host, int port, dns_tlsa_cb cb,
    void *arg)
{
	static const uint16_t qtypes[] = { T_TLSA };
	char name[NAME_BUF + 16];
	struct dns_req *r = req_new(d, REQ_TLSA, arg);
	r->tlsa_cb = cb;
	/* RFC 6698 §3: _<port>._tcp.<base domain>. A bad port gives "", a host
	 * too long a name over 253 octets even when cut at the buffer's end:
	 * both are refused by req_start (DNS_BADNAME). */
	if (port < 1 || port > 65535)
		snprintf(name, sizeof(name), "%s", "");
	else
		snprintf(name, sizeof(name), "_%d._tcp.%s", port, host);
	return req_start(r, name, qtypes, 1);
}

void dns_cancel(struct dns_req **r_r)
{
	struct dns_req *r = *r_r;
	*r_r = NULL;
	if (r == NULL || r->in_cb)
		return;
	req_stop(r);
	LIST_REMOVE(r, link);
	req_free(r);
}

void dns_free(struct dns **d_r)
{
	struct dns *d = *d_r;
	struct dns_req *r;
	if (d == NULL)
		return;
	while ((r = LIST_FIRST(&d->reqs)) != NULL) {
		req_stop(r);
		LIST_REMOVE(r, link);
		req_free(r);
	}
	ub_ctx_delete(d->ctx);
	free(d);
	*d_r = NULL;
}
