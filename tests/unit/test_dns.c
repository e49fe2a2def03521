/* test_dns.c: relay/dns.c.
 *
 * The message parser (dns_mx_parse, dns_addr_parse, dns_tlsa_parse) is fed crafted answers:
 * compressed names, every truncated prefix (each in an exact-size heap block,
 * so a sanitizer build sees any over-read), compression loops, bad lengths.
 *
 * The resolver runs against a real dnsmasq (Debian dnsmasq-base) that the
 * tests start on 127.0.0.1 on a free port with --local=/example/: it answers
 * the names under .example below and refuses everything else, and libunbound
 * forwards to it alone, so no query leaves the machine. Without dnsmasq those
 * tests are skipped with a message. Silent and closed resolvers are UDP
 * ports on 127.0.0.1 that the test holds or has just released. DNSSEC: with
 * a trust anchor for example. that dnsmasq (which signs nothing) cannot
 * satisfy, every answer under .example is bogus (DNS_BOGUS); without one,
 * nothing is secure. Secure answers need a signed zone: test_dane.py. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "relay/relay.h"

#define T_A 1
#define T_CNAME 5
#define T_MX 15
#define T_TXT 16
#define T_AAAA 28
#define T_TLSA 52

/* ------------------------------------------------------------ packets */

struct pkt {
	uint8_t b[8192];
	size_t n;
};

static void p8(struct pkt *p, unsigned v)
{
	assert_true(p->n < sizeof(p->b));
	p->b[p->n++] = (uint8_t)v;
}

static void p16(struct pkt *p, unsigned v)
{
	p8(p, v >> 8 & 0xff);
	p8(p, v & 0xff);
}

static void pbytes(struct pkt *p, const void *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p8(p, ((const uint8_t *)v)[i]);
}

/* labels of a dotted name, then the root label unless ptr >= 0 (then a
 * compression pointer to ptr) */
static void pname_to(struct pkt *p, const char *name, int ptr)
{
	while (*name != '\0') {
		size_t l = strcspn(name, ".");
		p8(p, (unsigned)l);
		pbytes(p, name, l);
		name += l + (name[l] == '.');
	}
	if (ptr >= 0)
		p16(p, 0xc000u | (unsigned)ptr);
	else
		p8(p, 0);
}

static void pname(struct pkt *p, const char *name)
{
	pname_to(p, name, -1);
}

/* header (QR, RD, RA, rcode) and the question; the qname sits at offset 12 */
static void pstart(struct pkt *p, unsigned rcode, unsigned ancount, const char *qname, unsigned qtype)
{
	p->n = 0;
	p16(p, 0x1234);
	p16(p, 0x8180u | rcode);
	p16(p, 1);
	p16(p, ancount);
	p16(p, 0);
	p16(p, 0);
	pname(p, qname);
	p16(p, qtype);
	p16(p, 1);
}

/* type, class IN, TTL and a RDLENGTH placeholder after the owner; returns
 * the placeholder's offset for pend */
static size_t prr(struct pkt *p, unsigned type)
{
	p16(p, type);
	p16(p, 1);
	p16(p, 0);
	p16(p, 300);
	p16(p, 0);
	return p->n - 2;
}

static void pend(struct pkt *p, size_t at)
{
	size_t len = p->n - at - 2;
	p->b[at] = (uint8_t)(len >> 8);
	p->b[at + 1] = (uint8_t)len;
}

/* MX RR owned by the qname (pointer 12) */
static void pmx(struct pkt *p, unsigned pref, const char *exchange)
{
	p16(p, 0xc00c);
	size_t at = prr(p, T_MX);
	p16(p, pref);
	pname(p, exchange);
	pend(p, at);
}

static enum dns_status mx_parse(const struct pkt *p, const char *domain, struct dns_mx_list **l)
{
	return dns_mx_parse(p->b, p->n, domain, l);
}

/* TLSA RR owned by the qname (pointer 12): usage, selector, mtype, data */
static void ptlsa(struct pkt *p, unsigned u, unsigned sel, unsigned mt, const uint8_t *data, size_t n)
{
	p16(p, 0xc00c);
	size_t at = prr(p, T_TLSA);
	p8(p, u);
	p8(p, sel);
	p8(p, mt);
	pbytes(p, data, n);
	pend(p, at);
}

/* ------------------------------------------------------------ parser */

static void test_parse_mx_sorted_with_compressed_names(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_mx_list *l = NULL;
	pstart(&p, 0, 3, "mx.example", T_MX);
	/* "a" + pointer to "example" inside the question (offset 12 + 3) */
	p16(&p, 0xc00c);
	size_t at = prr(&p, T_MX);
	p16(&p, 20);
	pname_to(&p, "a", 15);
	pend(&p, at);
	pmx(&p, 10, "B.Example");
	pmx(&p, 5, "c.example.");
	assert_int_equal(mx_parse(&p, "mx.example", &l), DNS_OK);
	assert_non_null(l);
	assert_int_equal(l->n, 3);
	assert_false(l->implicit);
	assert_string_equal(l->mx[0].name, "c.example");
	assert_int_equal(l->mx[0].pref, 5);
	assert_string_equal(l->mx[1].name, "b.example");
	assert_int_equal(l->mx[1].pref, 10);
	assert_string_equal(l->mx[2].name, "a.example");
	assert_int_equal(l->mx[2].pref, 20);
	dns_mx_list_free(&l);
	assert_null(l);
}

/* every prefix of a valid answer is malformed: DNS_TEMPFAIL, no list */
static void test_parse_every_truncation_is_tempfail(void **state)
{
	(void)state;
	struct pkt p;
	pstart(&p, 0, 2, "mx.example", T_MX);
	pmx(&p, 10, "a.example");
	p16(&p, 0xc00c);
	size_t at = prr(&p, T_MX);
	p16(&p, 20);
	pname_to(&p, "b", 15);
	pend(&p, at);
	for (size_t len = 0; len < p.n; len++) {
		uint8_t *copy = xmalloc(len + 1);
		memcpy(copy, p.b, len);
		struct dns_mx_list *l = NULL;
		assert_int_equal(dns_mx_parse(copy, len, "mx.example", &l), DNS_TEMPFAIL);
		assert_null(l);
		free(copy);
	}
	struct dns_mx_list *l = NULL;
	assert_int_equal(mx_parse(&p, "mx.example", &l), DNS_OK);
	assert_int_equal(l->n, 2);
	dns_mx_list_free(&l);
}

/* RFC 1035 §4.1.4: pointers only go back into the message body */
static void test_parse_bad_compression_pointers(void **state)
{
	(void)state;
	const unsigned targets[] = { 0 /* itself, set below */, 2 /* header */, 0x3fff /* forward */ };
	for (size_t i = 0; i < sizeof(targets) / sizeof(targets[0]); i++) {
		struct pkt p;
		struct dns_mx_list *l = NULL;
		pstart(&p, 0, 1, "mx.example", T_MX);
		size_t self = p.n;
		p16(&p, 0xc000u | (i == 0 ? (unsigned)self : targets[i]));
		size_t at = prr(&p, T_MX);
		p16(&p, 10);
		pname(&p, "a.example");
		pend(&p, at);
		assert_int_equal(mx_parse(&p, "mx.example", &l), DNS_TEMPFAIL);
		assert_null(l);
	}
	/* two pointers into each other's names: "x" -> "y" -> back to "x" */
	struct pkt p;
	struct dns_mx_list *l = NULL;
	pstart(&p, 0, 1, "mx.example", T_MX);
	p16(&p, 0xc00c);
	size_t at = prr(&p, T_MX);
	p16(&p, 10);
	size_t x = p.n;
	p8(&p, 1);
	p8(&p, 'x');
	p16(&p, 0xc000u | (unsigned)(x + 4));
	p8(&p, 1);
	p8(&p, 'y');
	p16(&p, 0xc000u | (unsigned)x);
	pend(&p, at);
	assert_int_equal(mx_parse(&p, "mx.example", &l), DNS_TEMPFAIL);
}

static void label63(char *out, char c)
{
	memset(out, c, 63);
	out[63] = '\0';
}

/* RFC 1035 §2.3.4: 255 octets accepted, 256 refused */
static void test_parse_name_length_limit(void **state)
{
	(void)state;
	char l63[64], name[300];
	label63(l63, 'h');
	for (int extra = 61; extra <= 62; extra++) {
		struct pkt p;
		struct dns_mx_list *l = NULL;
		snprintf(name, sizeof(name), "%s.%s.%s.%.*s", l63, l63, l63, extra,
		    "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk");
		pstart(&p, 0, 1, "mx.example", T_MX);
		pmx(&p, 10, name);
		enum dns_status st = mx_parse(&p, "mx.example", &l);
		if (extra == 61) {   /* 3 * 64 + 62 + 1 = 255 */
			assert_int_equal(st, DNS_OK);
			assert_int_equal(strlen(l->mx[0].name), 253);
			dns_mx_list_free(&l);
		} else {
			assert_int_equal(st, DNS_TEMPFAIL);
		}
	}
}

/* RDLENGTH must be exactly PREFERENCE + EXCHANGE (RFC 1035 §3.3.9) */
static void test_parse_rdlength_mismatch(void **state)
{
	(void)state;
	for (int delta = -1; delta <= 1; delta += 2) {
		struct pkt p;
		struct dns_mx_list *l = NULL;
		pstart(&p, 0, 1, "mx.example", T_MX);
		pmx(&p, 10, "a.example");
		p8(&p, 0);   /* room for a longer RDLENGTH */
		size_t rdl = 12 + 16 + 2 + 8;
		unsigned v = (unsigned)(p.b[rdl] << 8 | p.b[rdl + 1]);
		p.b[rdl + 1] = (uint8_t)(v + (unsigned)delta);
		assert_int_equal(mx_parse(&p, "mx.example", &l), DNS_TEMPFAIL);
	}
}

/* label types 01 and 10 (RFC 6891 §5) are not names */
static void test_parse_extended_label_type(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_mx_list *l = NULL;
	pstart(&p, 0, 1, "mx.example", T_MX);
	p16(&p, 0xc00c);
	size_t at = prr(&p, T_MX);
	p16(&p, 10);
	p8(&p, 0x41);
	p8(&p, 0);
	pend(&p, at);
	assert_int_equal(mx_parse(&p, "mx.example", &l), DNS_TEMPFAIL);
}

static void test_parse_rcodes(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_mx_list *l = NULL;
	pstart(&p, 3, 0, "nx.example", T_MX);
	assert_int_equal(mx_parse(&p, "nx.example", &l), DNS_NXDOMAIN);
	pstart(&p, 2, 0, "nx.example", T_MX);
	assert_int_equal(mx_parse(&p, "nx.example", &l), DNS_TEMPFAIL);
	pstart(&p, 5, 0, "nx.example", T_MX);
	assert_int_equal(mx_parse(&p, "nx.example", &l), DNS_TEMPFAIL);
	assert_null(l);
}

/* an answer to some other question, or a query, is not used */
static void test_parse_question_must_match(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_mx_list *l = NULL;
	pstart(&p, 0, 1, "other.example", T_MX);
	pmx(&p, 10, "a.example");
	assert_int_equal(mx_parse(&p, "mx.example", &l), DNS_TEMPFAIL);
	pstart(&p, 0, 0, "mx.example", T_A);
	assert_int_equal(mx_parse(&p, "mx.example", &l), DNS_TEMPFAIL);
	pstart(&p, 0, 0, "mx.example", T_MX);
	p.b[2] &= 0x7f;   /* QR = 0 */
	assert_int_equal(mx_parse(&p, "mx.example", &l), DNS_TEMPFAIL);
	assert_int_equal(mx_parse(&p, "bad..name", &l), DNS_BADNAME);
}

/* RFC 5321 §5.1: NODATA -> the domain itself, preference 0; names compare
 * without regard to case (RFC 4343) */
static void test_parse_nodata_is_implicit_mx(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_mx_list *l = NULL;
	pstart(&p, 0, 1, "NoMX.Example", T_MX);
	p16(&p, 0xc00c);   /* a record of another type is no MX */
	size_t at = prr(&p, T_TXT);
	p8(&p, 1);
	p8(&p, 'x');
	pend(&p, at);
	assert_int_equal(mx_parse(&p, "nomx.EXAMPLE.", &l), DNS_OK);
	assert_true(l->implicit);
	assert_int_equal(l->n, 1);
	assert_string_equal(l->mx[0].name, "nomx.example");
	assert_int_equal(l->mx[0].pref, 0);
	dns_mx_list_free(&l);
}

/* RFC 7505 §3: "." alone is a null MX; beside real exchanges it is dropped */
static void test_parse_null_mx(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_mx_list *l = NULL;
	pstart(&p, 0, 1, "nullmx.example", T_MX);
	pmx(&p, 0, "");
	assert_int_equal(mx_parse(&p, "nullmx.example", &l), DNS_NULL_MX);
	assert_null(l);
	pstart(&p, 0, 2, "nullmx.example", T_MX);
	pmx(&p, 0, "");
	pmx(&p, 10, "real.example");
	assert_int_equal(mx_parse(&p, "nullmx.example", &l), DNS_OK);
	assert_int_equal(l->n, 1);
	assert_string_equal(l->mx[0].name, "real.example");
	dns_mx_list_free(&l);
}

/* RFC 1034 §3.6.2: records are taken from the end of the CNAME chain only */
static void test_parse_cname_chain(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_mx_list *l = NULL;
	pstart(&p, 0, 4, "alias.example", T_MX);
	p16(&p, 0xc00c);
	size_t at = prr(&p, T_CNAME);
	pname(&p, "mid.example");
	pend(&p, at);
	pname(&p, "mid.example");
	at = prr(&p, T_CNAME);
	pname(&p, "mx.example");
	pend(&p, at);
	pname(&p, "decoy.example");
	at = prr(&p, T_MX);
	p16(&p, 1);
	pname(&p, "wrong.example");
	pend(&p, at);
	pname(&p, "mx.example");
	at = prr(&p, T_MX);
	p16(&p, 10);
	pname(&p, "right.example");
	pend(&p, at);
	assert_int_equal(mx_parse(&p, "alias.example", &l), DNS_OK);
	assert_int_equal(l->n, 1);
	assert_string_equal(l->mx[0].name, "right.example");
	dns_mx_list_free(&l);

	/* a -> b -> a */
	pstart(&p, 0, 2, "a.example", T_MX);
	p16(&p, 0xc00c);
	at = prr(&p, T_CNAME);
	pname(&p, "b.example");
	pend(&p, at);
	pname(&p, "b.example");
	at = prr(&p, T_CNAME);
	pname(&p, "a.example");
	pend(&p, at);
	assert_int_equal(mx_parse(&p, "a.example", &l), DNS_TEMPFAIL);
}

/* exchanges that are no hostname ("a.b" as one label, a space) are unusable:
 * alone they fail the lookup temporarily (RFC 5321 §5.1 "reported as an
 * error"), beside a good one they are skipped */
static void test_parse_unusable_exchange(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_mx_list *l = NULL;
	for (int good = 0; good <= 1; good++) {
		pstart(&p, 0, (unsigned)(2 + good), "mx.example", T_MX);
		p16(&p, 0xc00c);
		size_t at = prr(&p, T_MX);
		p16(&p, 10);
		pbytes(&p, "\x03" "a.b\x07" "example", 12);
		p8(&p, 0);
		pend(&p, at);
		pmx(&p, 10, "sp ace.example");
		if (good)
			pmx(&p, 30, "ok.example");
		enum dns_status st = mx_parse(&p, "mx.example", &l);
		assert_int_equal(st, good ? DNS_OK : DNS_TEMPFAIL);
		if (good) {
			assert_int_equal(l->n, 1);
			assert_string_equal(l->mx[0].name, "ok.example");
			dns_mx_list_free(&l);
		}
	}
}

static void test_parse_duplicates_and_cap(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_mx_list *l = NULL;
	pstart(&p, 0, 3, "mx.example", T_MX);
	pmx(&p, 20, "a.example");
	pmx(&p, 10, "A.example");
	pmx(&p, 15, "b.example");
	assert_int_equal(mx_parse(&p, "mx.example", &l), DNS_OK);
	assert_int_equal(l->n, 2);
	assert_string_equal(l->mx[0].name, "a.example");
	assert_int_equal(l->mx[0].pref, 10);
	assert_string_equal(l->mx[1].name, "b.example");
	dns_mx_list_free(&l);

	pstart(&p, 0, 100, "mx.example", T_MX);
	for (unsigned i = 0; i < 100; i++) {
		char name[32];
		snprintf(name, sizeof(name), "h%u.example", i);
		pmx(&p, 100 - i, name);
	}
	assert_int_equal(mx_parse(&p, "mx.example", &l), DNS_OK);
	assert_int_equal(l->n, DNS_MX_MAX);
	for (size_t i = 1; i < l->n; i++)
		assert_true(l->mx[i - 1].pref <= l->mx[i].pref);
	dns_mx_list_free(&l);
}

static void paddr(struct pkt *p, unsigned type, const void *a, size_t n)
{
	p16(p, 0xc00c);
	size_t at = prr(p, type);
	pbytes(p, a, n);
	pend(p, at);
}

static void test_parse_addresses(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_addr_list *l = NULL;
	const uint8_t v4[4] = { 127, 0, 0, 2 }, v6[16] = { 0x20, 0x01, 0x0d, 0xb8, [15] = 3 };
	char txt[INET6_ADDRSTRLEN];

	pstart(&p, 0, 1, "h.example", T_AAAA);
	paddr(&p, T_AAAA, v6, 16);
	assert_int_equal(dns_addr_parse(p.b, p.n, "h.example", T_AAAA, &l), DNS_OK);
	pstart(&p, 0, 2, "h.example", T_A);
	paddr(&p, T_A, v4, 4);
	paddr(&p, T_AAAA, v6, 16);   /* the wrong type in an A answer: ignored */
	assert_int_equal(dns_addr_parse(p.b, p.n, "h.example", T_A, &l), DNS_OK);
	assert_int_equal(l->n, 2);
	assert_string_equal(l->canon, "h.example");
	const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)&l->addrs[0];
	const struct sockaddr_in *s4 = (const struct sockaddr_in *)&l->addrs[1];
	assert_int_equal(s6->sin6_family, AF_INET6);
	assert_string_equal(inet_ntop(AF_INET6, &s6->sin6_addr, txt, sizeof(txt)), "2001:db8::3");
	assert_int_equal(s4->sin_family, AF_INET);
	assert_string_equal(inet_ntop(AF_INET, &s4->sin_addr, txt, sizeof(txt)), "127.0.0.2");
	assert_int_equal(s4->sin_port, 0);

	pstart(&p, 0, 0, "h.example", T_A);   /* NODATA leaves the list alone */
	assert_int_equal(dns_addr_parse(p.b, p.n, "h.example", T_A, &l), DNS_NOADDR);
	assert_int_equal(l->n, 2);
	pstart(&p, 0, 1, "h.example", T_A);   /* RFC 1035 §3.4.1: 4 octets */
	paddr(&p, T_A, v6, 5);
	assert_int_equal(dns_addr_parse(p.b, p.n, "h.example", T_A, &l), DNS_TEMPFAIL);
	assert_int_equal(dns_addr_parse(p.b, p.n, "h.example", T_MX, &l), DNS_TEMPFAIL);
	dns_addr_list_free(&l);
	assert_null(l);
}

static const uint8_t sha256_a[32] = { 0xaa, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
	17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 0xff };

static void test_parse_tlsa_records(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_tlsa_list *l = NULL;
	const uint8_t full[3] = { 0x30, 0x82, 0x01 };
	pstart(&p, 0, 3, "_25._tcp.mx.example", T_TLSA);
	ptlsa(&p, 3, 1, 1, sha256_a, sizeof(sha256_a));
	ptlsa(&p, 2, 0, 0, full, sizeof(full));
	/* another owner's record (glue-like junk) is not ours */
	pname(&p, "_25._tcp.other.example");
	size_t at = prr(&p, T_TLSA);
	p8(&p, 3);
	p8(&p, 1);
	p8(&p, 1);
	pbytes(&p, sha256_a, sizeof(sha256_a));
	pend(&p, at);
	assert_int_equal(dns_tlsa_parse(p.b, p.n, "_25._TCP.MX.example.", &l), DNS_OK);
	assert_non_null(l);
	assert_false(l->secure);   /* the parser knows nothing of DNSSEC */
	assert_int_equal(l->n, 2);
	assert_int_equal(l->rr[0].usage, 3);
	assert_int_equal(l->rr[0].selector, 1);
	assert_int_equal(l->rr[0].mtype, 1);
	assert_int_equal(l->rr[0].len, 32);
	assert_memory_equal(l->rr[0].data, sha256_a, 32);
	assert_int_equal(l->rr[1].usage, 2);
	assert_int_equal(l->rr[1].mtype, 0);
	assert_int_equal(l->rr[1].len, 3);
	assert_memory_equal(l->rr[1].data, full, 3);
	dns_tlsa_list_free(&l);
	assert_null(l);
}

/* NODATA, NXDOMAIN, an RDATA of 3 octets (no data) and every truncation */
static void test_parse_tlsa_errors(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_tlsa_list *l = NULL;
	pstart(&p, 0, 0, "_25._tcp.mx.example", T_TLSA);
	assert_int_equal(dns_tlsa_parse(p.b, p.n, "_25._tcp.mx.example", &l), DNS_NOADDR);
	assert_null(l);
	pstart(&p, 3, 0, "_25._tcp.mx.example", T_TLSA);
	assert_int_equal(dns_tlsa_parse(p.b, p.n, "_25._tcp.mx.example", &l), DNS_NXDOMAIN);
	pstart(&p, 0, 1, "_25._tcp.mx.example", T_TLSA);
	ptlsa(&p, 3, 1, 1, NULL, 0);
	assert_int_equal(dns_tlsa_parse(p.b, p.n, "_25._tcp.mx.example", &l), DNS_TEMPFAIL);
	assert_null(l);
	/* asked as MX: the question does not match */
	pstart(&p, 0, 1, "_25._tcp.mx.example", T_MX);
	assert_int_equal(dns_tlsa_parse(p.b, p.n, "_25._tcp.mx.example", &l), DNS_TEMPFAIL);
	assert_int_equal(dns_tlsa_parse(p.b, p.n, "bad name!", &l), DNS_BADNAME);

	pstart(&p, 0, 2, "_25._tcp.mx.example", T_TLSA);
	ptlsa(&p, 3, 1, 1, sha256_a, sizeof(sha256_a));
	ptlsa(&p, 3, 0, 1, sha256_a, sizeof(sha256_a));
	for (size_t len = 0; len < p.n; len++) {
		uint8_t *copy = xmalloc(len + 1);   /* exact size for the sanitizers */
		memcpy(copy, p.b, len);
		assert_int_equal(dns_tlsa_parse(copy, len, "_25._tcp.mx.example", &l), DNS_TEMPFAIL);
		assert_null(l);
		free(copy);
	}
}

/* more than DNS_TLSA_MAX records: the first DNS_TLSA_MAX are kept */
static void test_parse_tlsa_cap(void **state)
{
	(void)state;
	struct pkt p;
	struct dns_tlsa_list *l = NULL;
	pstart(&p, 0, DNS_TLSA_MAX + 5, "_25._tcp.mx.example", T_TLSA);
	for (unsigned i = 0; i < DNS_TLSA_MAX + 5; i++) {
		uint8_t d = (uint8_t)i;
		ptlsa(&p, 3, 1, 0, &d, 1);
	}
	assert_int_equal(dns_tlsa_parse(p.b, p.n, "_25._tcp.mx.example", &l), DNS_OK);
	assert_int_equal(l->n, DNS_TLSA_MAX);
	assert_int_equal(l->rr[DNS_TLSA_MAX - 1].data[0], DNS_TLSA_MAX - 1);
	dns_tlsa_list_free(&l);
}

/* RFC 7672 §3.1.3: PKIX-TA(0) and PKIX-EE(1) are unusable for SMTP; digest
 * lengths must fit the matching type */
static void test_tlsa_usable(void **state)
{
	(void)state;
	uint8_t d64[64] = { 0 };
	uint8_t d32[32] = { 0 };
	const struct {
		struct dns_tlsa t;
		bool usable;
	} cases[] = {
		{ { 3, 1, 1, d32, 32 }, true },
		{ { 3, 0, 1, d32, 32 }, true },
		{ { 2, 0, 1, d32, 32 }, true },
		{ { 2, 1, 2, d64, 64 }, true },
		{ { 3, 1, 0, d32, 1 }, true },
		{ { 0, 0, 1, d32, 32 }, false },
		{ { 1, 1, 1, d32, 32 }, false },
		{ { 4, 1, 1, d32, 32 }, false },
		{ { 3, 2, 1, d32, 32 }, false },
		{ { 3, 1, 3, d32, 32 }, false },
		{ { 3, 1, 1, d32, 31 }, false },
		{ { 3, 1, 1, d64, 64 }, false },
		{ { 3, 1, 2, d32, 32 }, false },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		assert_int_equal(dns_tlsa_usable(&cases[i].t), cases[i].usable);
}

static void test_strerror(void **state)
{
	(void)state;
	assert_string_equal(dns_strerror(DNS_OK), "ok");
	assert_string_equal(dns_strerror(DNS_NULL_MX), "domain does not accept mail (null MX)");
	assert_string_equal(dns_strerror(DNS_TEMPFAIL), "temporary DNS failure");
	assert_string_equal(dns_strerror(DNS_BOGUS), "DNSSEC validation failed (bogus answer)");
	assert_string_equal(dns_strerror((enum dns_status)99), "unknown DNS status");
}

/* ------------------------------------------------------------ dnsmasq */

static const char *const zone[] = {
	"--mx-host=mx.example,b.example,10",
	"--mx-host=mx.example,c.example,10",
	"--mx-host=mx.example,a.example,20",
	"--cname=mxalias.example,mx.example",
	"--dns-rr=nullmx.example,15,000000",           /* MX 0 . (RFC 7505) */
	"--dns-rr=badmx.example,15,000a03612e620000",  /* MX 10 "a.b" as one label */
	"--host-record=a.example,127.0.0.2",
	"--host-record=b.example,127.0.0.3,2001:db8::3",
	"--host-record=c.example,127.0.0.4,2001:db8::4",
	"--host-record=c.example,127.0.0.5,2001:db8::5",
	"--host-record=nomx.example,127.0.0.6",
	"--cname=alias.example,b.example",
	"--txt-record=txtonly.example,no addresses here",
	/* TLSA 3 1 1 <aa 01 .. 1e ff> and 0 0 1 (PKIX-TA: unusable for SMTP) */
	"--dns-rr=_25._tcp.b.example,52,030101aa0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1eff",
	"--dns-rr=_25._tcp.b.example,52,000001aa0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1eff",
};

static struct {
	pid_t pid;
	int port;
	char dir[64];
	const char *skip;             /* why the resolver tests are skipped */
} srv;

static const char *find_dnsmasq(void)
{
	static const char *const paths[] = { "/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq" };
	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
		if (access(paths[i], X_OK) == 0)
			return paths[i];
	return NULL;
}

/* A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both). The
 * UDP socket stays open when keep_r is given: a resolver that never answers. */
static int free_port(int *keep_r)
{
	for (int tries = 0; tries < 50; tries++) {
		struct sockaddr_in sin = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t sl = sizeof(sin);
		int u = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
		int t = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		assert_true(u >= 0 && t >= 0);
		assert_int_equal(bind(u, (struct sockaddr *)&sin, sizeof(sin)), 0);
		assert_int_equal(getsockname(u, (struct sockaddr *)&sin, &sl), 0);
		int ok = bind(t, (struct sockaddr *)&sin, sizeof(sin)) == 0;
		close(t);
		if (ok && keep_r != NULL)
			*keep_r = u;
		else
			close(u);
		if (ok)
			return ntohs(sin.sin_port);
	}
	fail_msg("no free port on 127.0.0.1");
	return -1;
}

static void spawn_dnsmasq(const char *bin)
{
	char port[32], pidf[96], logf[96];
	const char *argv[64];
	size_t n = 0;
	snprintf(port, sizeof(port), "--port=%d", srv.port);
	snprintf(pidf, sizeof(pidf), "--pid-file=%s/dnsmasq.pid", srv.dir);
	snprintf(logf, sizeof(logf), "%s/dnsmasq.log", srv.dir);
	const char *fixed[] = { bin, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv",
		"--no-hosts", "--no-poll", "--bind-interfaces", "--listen-address=127.0.0.1",
		"--local=/example/", "--user=root", port, pidf };
	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		argv[n++] = fixed[i];
	for (size_t i = 0; i < sizeof(zone) / sizeof(zone[0]); i++)
		argv[n++] = zone[i];
	argv[n] = NULL;
	srv.pid = fork();
	assert_true(srv.pid >= 0);
	if (srv.pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGTERM);   /* never outlive a crashed test */
		FILE *f = freopen(logf, "w", stderr);
		(void)f;
		execv(bin, (char *const *)argv);
		_exit(127);
	}
}

/* a raw A query for a.example until dnsmasq answers (5 s at most) */
static bool dnsmasq_ready(void)
{
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)srv.port),
		.sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct pkt q;
	uint8_t buf[512];
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	pstart(&q, 0, 0, "a.example", T_A);
	q.b[2] = 0x01;   /* a query: QR 0, RD 1 */
	q.b[3] = 0;
	for (int i = 0; i < 50; i++) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		if (waitpid(srv.pid, NULL, WNOHANG) == srv.pid) {
			srv.pid = 0;
			break;
		}
		sendto(fd, q.b, q.n, 0, (struct sockaddr *)&to, sizeof(to));
		if (poll(&pfd, 1, 100) == 1 && recv(fd, buf, sizeof(buf), 0) > 12) {
			close(fd);
			return true;
		}
	}
	close(fd);
	return false;
}

static int group_setup(void **state)
{
	(void)state;
	const char *bin = find_dnsmasq();
	log_set_level(LL_WARN);
	if (bin == NULL) {
		srv.skip = "dnsmasq not installed (Debian package dnsmasq-base): resolver tests skipped";
		fprintf(stderr, "# %s\n", srv.skip);
		return 0;
	}
	snprintf(srv.dir, sizeof(srv.dir), "/tmp/test_dns.XXXXXX");
	if (mkdtemp(srv.dir) == NULL)
		return -1;
	srv.port = free_port(NULL);
	spawn_dnsmasq(bin);
	if (!dnsmasq_ready()) {
		fprintf(stderr, "# dnsmasq did not answer on 127.0.0.1:%d, see %s/dnsmasq.log\n",
		    srv.port, srv.dir);
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	char path[128];
	if (srv.pid > 0) {
		kill(srv.pid, SIGTERM);
		waitpid(srv.pid, NULL, 0);
	}
	if (srv.dir[0] != '\0') {
		snprintf(path, sizeof(path), "%s/dnsmasq.log", srv.dir);
		unlink(path);
		snprintf(path, sizeof(path), "%s/dnsmasq.pid", srv.dir);
		unlink(path);
		rmdir(srv.dir);
	}
	return 0;
}

/* ------------------------------------------------------------ fixture */

struct res {
	int calls;
	enum dns_status st;
	struct dns_mx_list *mx;
	struct dns_addr_list *addrs;
	struct dns_tlsa_list *tlsa;
	struct dns_req **cancel_in_cb;    /* dns_cancel on it inside the callback */
};

struct fx {
	struct event_base *base;
	struct event *tick;           /* wakes EVLOOP_ONCE so loops can time out */
	struct dns *d;
	int hold_fd;                  /* a silent resolver's socket, or -1 */
};

static void noop_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

static struct dns *dns_at(struct fx *fx, int port)
{
	char err[256] = "";
	char server[64];
	snprintf(server, sizeof(server), "127.0.0.1@%d", port);
	const char *servers[] = { server };
	struct dns *d = dns_new(fx->base, servers, 1, 0, err, sizeof(err));
	assert_non_null(d);
	assert_string_equal(err, "");
	return d;
}

static int fx_setup(void **state)
{
	struct fx *fx = xcalloc(1, sizeof(*fx));
	struct timeval tv = { 0, 10000 };
	fx->hold_fd = -1;
	fx->base = event_base_new();
	fx->tick = event_new(fx->base, -1, EV_PERSIST, noop_cb, NULL);
	event_add(fx->tick, &tv);
	if (srv.skip == NULL)
		fx->d = dns_at(fx, srv.port);
	*state = fx;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *fx = *state;
	dns_free(&fx->d);
	if (fx->hold_fd >= 0)
		close(fx->hold_fd);
	event_free(fx->tick);
	event_base_free(fx->base);
	free(fx);
	return 0;
}

static struct fx *need_server(void **state)
{
	if (srv.skip != NULL) {
		print_message("# %s\n", srv.skip);
		skip();
	}
	return *state;
}

static void on_mx(void *arg, enum dns_status st, struct dns_mx_list *l)
{
	struct res *r = arg;
	r->calls++;
	r->st = st;
	dns_mx_list_free(&r->mx);
	r->mx = l;
	if (r->cancel_in_cb != NULL)
		dns_cancel(r->cancel_in_cb);
}

static void on_addr(void *arg, enum dns_status st, struct dns_addr_list *l)
{
	struct res *r = arg;
	r->calls++;
	r->st = st;
	dns_addr_list_free(&r->addrs);
	r->addrs = l;
}

static void on_tlsa(void *arg, enum dns_status st, struct dns_tlsa_list *l)
{
	struct res *r = arg;
	r->calls++;
	r->st = st;
	dns_tlsa_list_free(&r->tlsa);
	r->tlsa = l;
}

static void res_clear(struct res *r)
{
	dns_mx_list_free(&r->mx);
	dns_addr_list_free(&r->addrs);
	dns_tlsa_list_free(&r->tlsa);
	memset(r, 0, sizeof(*r));
}

/* runs the loop until *calls >= want or ms pass; returns the elapsed ms */
static long run_until(struct fx *fx, const int *calls, int want, long ms)
{
	double t0 = util_now();
	while (*calls < want && (util_now() - t0) * 1000 < ms)
		event_base_loop(fx->base, EVLOOP_ONCE);
	return (long)((util_now() - t0) * 1000);
}

static void run_for(struct fx *fx, long ms)
{
	int never = 0;
	run_until(fx, &never, 1, ms);
}

static void resolve_mx(struct fx *fx, const char *domain, struct res *r)
{
	res_clear(r);
	struct dns_req *q = dns_resolve_mx(fx->d, domain, on_mx, r);
	assert_non_null(q);
	assert_int_equal(r->calls, 0);   /* never from inside dns_resolve_mx */
	run_until(fx, &r->calls, 1, 5000);
	assert_int_equal(r->calls, 1);
}

static void resolve_addrs(struct fx *fx, const char *host, struct res *r)
{
	res_clear(r);
	struct dns_req *q = dns_resolve_addrs(fx->d, host, on_addr, r);
	assert_non_null(q);
	assert_int_equal(r->calls, 0);
	run_until(fx, &r->calls, 1, 5000);
	assert_int_equal(r->calls, 1);
}

static void resolve_tlsa(struct fx *fx, const char *host, int port, struct res *r)
{
	res_clear(r);
	struct dns_req *q = dns_resolve_tlsa(fx->d, host, port, on_tlsa, r);
	assert_non_null(q);
	assert_int_equal(r->calls, 0);
	run_until(fx, &r->calls, 1, 5000);
	assert_int_equal(r->calls, 1);
}

static const char *addr_str(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	const void *a = ss->ss_family == AF_INET6 ?
	    (const void *)&((const struct sockaddr_in6 *)ss)->sin6_addr :
	    (const void *)&((const struct sockaddr_in *)ss)->sin_addr;
	return inet_ntop(ss->ss_family, a, buf, (socklen_t)len);
}

/* ------------------------------------------------------------ resolver */

static void test_mx_sorted_by_preference(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	resolve_mx(fx, "mx.example", &r);
	assert_int_equal(r.st, DNS_OK);
	assert_int_equal(r.mx->n, 3);
	assert_false(r.mx->implicit);
	assert_false(r.mx->secure);
	assert_int_equal(r.mx->mx[0].pref, 10);
	assert_int_equal(r.mx->mx[1].pref, 10);
	assert_string_equal(r.mx->mx[2].name, "a.example");
	assert_int_equal(r.mx->mx[2].pref, 20);
	res_clear(&r);
}

/* RFC 5321 §5.1: b and c (both 10) come in both orders over 40 lookups */
static void test_mx_equal_preference_randomised(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	int b_first = 0, c_first = 0;
	for (int i = 0; i < 40; i++) {
		resolve_mx(fx, "MX.example.", &r);
		assert_int_equal(r.st, DNS_OK);
		assert_int_equal(r.mx->n, 3);
		const char *first = r.mx->mx[0].name, *second = r.mx->mx[1].name;
		if (strcmp(first, "b.example") == 0) {
			assert_string_equal(second, "c.example");
			b_first++;
		} else {
			assert_string_equal(first, "c.example");
			assert_string_equal(second, "b.example");
			c_first++;
		}
		assert_string_equal(r.mx->mx[2].name, "a.example");
	}
	res_clear(&r);
	assert_true(b_first > 0);
	assert_true(c_first > 0);
}

static void test_mx_through_cname(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	resolve_mx(fx, "mxalias.example", &r);
	assert_int_equal(r.st, DNS_OK);
	assert_int_equal(r.mx->n, 3);
	assert_string_equal(r.mx->mx[2].name, "a.example");
	res_clear(&r);
}

static void test_mx_absent_gives_implicit_mx(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	resolve_mx(fx, "nomx.example", &r);
	assert_int_equal(r.st, DNS_OK);
	assert_true(r.mx->implicit);
	assert_int_equal(r.mx->n, 1);
	assert_string_equal(r.mx->mx[0].name, "nomx.example");
	assert_int_equal(r.mx->mx[0].pref, 0);
	res_clear(&r);
}

static void test_mx_null_mx(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	resolve_mx(fx, "nullmx.example", &r);
	assert_int_equal(r.st, DNS_NULL_MX);
	assert_null(r.mx);
	res_clear(&r);
}

static void test_mx_nxdomain(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	resolve_mx(fx, "nx.example", &r);
	assert_int_equal(r.st, DNS_NXDOMAIN);
	assert_null(r.mx);
	res_clear(&r);
}

static void test_mx_unusable_exchange_tempfails(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	resolve_mx(fx, "badmx.example", &r);
	assert_int_equal(r.st, DNS_TEMPFAIL);
	res_clear(&r);
}

static void test_addrs_a_only(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	char txt[INET6_ADDRSTRLEN];
	resolve_addrs(fx, "a.example", &r);
	assert_int_equal(r.st, DNS_OK);
	assert_int_equal(r.addrs->n, 1);
	assert_string_equal(addr_str(&r.addrs->addrs[0], txt, sizeof(txt)), "127.0.0.2");
	assert_string_equal(r.addrs->canon, "a.example");
	res_clear(&r);
}

static void test_addrs_ipv6_first(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	char txt[INET6_ADDRSTRLEN];
	resolve_addrs(fx, "b.example", &r);
	assert_int_equal(r.st, DNS_OK);
	assert_int_equal(r.addrs->n, 2);
	assert_int_equal(r.addrs->addrs[0].ss_family, AF_INET6);
	assert_string_equal(addr_str(&r.addrs->addrs[0], txt, sizeof(txt)), "2001:db8::3");
	assert_string_equal(addr_str(&r.addrs->addrs[1], txt, sizeof(txt)), "127.0.0.3");

	resolve_addrs(fx, "c.example", &r);
	assert_int_equal(r.st, DNS_OK);
	assert_int_equal(r.addrs->n, 4);
	assert_int_equal(r.addrs->addrs[0].ss_family, AF_INET6);
	assert_int_equal(r.addrs->addrs[1].ss_family, AF_INET6);
	assert_int_equal(r.addrs->addrs[2].ss_family, AF_INET);
	assert_int_equal(r.addrs->addrs[3].ss_family, AF_INET);
	res_clear(&r);
}

static void test_addrs_through_cname(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	char txt[INET6_ADDRSTRLEN];
	resolve_addrs(fx, "alias.example", &r);
	assert_int_equal(r.st, DNS_OK);
	assert_string_equal(r.addrs->canon, "b.example");
	assert_int_equal(r.addrs->n, 2);
	assert_string_equal(addr_str(&r.addrs->addrs[1], txt, sizeof(txt)), "127.0.0.3");
	res_clear(&r);
}

static void test_addrs_none_is_noaddr(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	resolve_addrs(fx, "txtonly.example", &r);
	assert_int_equal(r.st, DNS_NOADDR);
	assert_null(r.addrs);
	res_clear(&r);
}

static void test_addrs_nxdomain(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	resolve_addrs(fx, "nx.example", &r);
	assert_int_equal(r.st, DNS_NXDOMAIN);
	assert_null(r.addrs);
	res_clear(&r);
}

/* dnsmasq REFUSEs names outside its zone: a temporary failure */
static void test_refused_is_tempfail(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	resolve_mx(fx, "refused.example.net", &r);
	assert_int_equal(r.st, DNS_TEMPFAIL);
	res_clear(&r);
}

static bool file_contains(const char *path, const char *needle)
{
	char buf[8192];
	FILE *f = fopen(path, "r");
	size_t n = f != NULL ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
	if (f != NULL)
		fclose(f);
	buf[n] = '\0';
	return strstr(buf, needle) != NULL;
}

/* a resolver that takes the query and never answers: DNS_TEMPFAIL at the
 * request timeout, logged as such */
static void test_silent_resolver_times_out(void **state)
{
	struct fx *fx = *state;
	struct res r = { 0 }, a = { 0 };
	char logf[] = "/tmp/test_dns_log.XXXXXX";
	int lfd = mkstemp(logf);
	assert_true(lfd >= 0);
	close(lfd);
	assert_int_equal(log_open(LL_INFO, logf), 0);
	dns_free(&fx->d);
	fx->d = dns_at(fx, free_port(&fx->hold_fd));
	dns_set_timeout(fx->d, 700);
	assert_non_null(dns_resolve_mx(fx->d, "mx.example", on_mx, &r));
	assert_non_null(dns_resolve_addrs(fx->d, "a.example", on_addr, &a));
	long ms = run_until(fx, &a.calls, 1, 5000);
	run_until(fx, &r.calls, 1, 5000);
	log_open(LL_WARN, NULL);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.st, DNS_TEMPFAIL);
	assert_int_equal(a.calls, 1);
	assert_int_equal(a.st, DNS_TEMPFAIL);
	assert_true(ms >= 600 && ms < 3000);
	assert_true(file_contains(logf, "\"event\":\"dns.tempfail\",\"name\":\"mx.example\","
	    "\"type\":\"MX\",\"reason\":\"timeout\""));
	assert_true(file_contains(logf, "\"name\":\"a.example\",\"type\":\"AAAA\",\"reason\":\"timeout\""));
	unlink(logf);
	run_for(fx, 50);
	assert_int_equal(r.calls, 1);
	res_clear(&r);
	res_clear(&a);
}

/* nothing listens on the port (ICMP port unreachable): DNS_TEMPFAIL, bounded */
static void test_closed_port_tempfails(void **state)
{
	struct fx *fx = *state;
	struct res r = { 0 };
	dns_free(&fx->d);
	fx->d = dns_at(fx, free_port(NULL));
	dns_set_timeout(fx->d, 1500);
	assert_non_null(dns_resolve_mx(fx->d, "mx.example", on_mx, &r));
	long ms = run_until(fx, &r.calls, 1, 5000);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.st, DNS_TEMPFAIL);
	assert_true(ms < 3000);
	res_clear(&r);
}

static void test_cancel_in_flight_never_calls_back(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 }, a = { 0 }, after = { 0 };
	struct dns_req *q = dns_resolve_mx(fx->d, "mx.example", on_mx, &r);
	struct dns_req *qa = dns_resolve_addrs(fx->d, "b.example", on_addr, &a);
	dns_cancel(&q);
	dns_cancel(&qa);
	assert_null(q);
	assert_null(qa);
	dns_cancel(&q);   /* NULL is fine */
	run_for(fx, 300);  /* the answers arrive and are dropped */
	assert_int_equal(r.calls, 0);
	assert_int_equal(a.calls, 0);
	resolve_mx(fx, "mx.example", &after);
	assert_int_equal(after.st, DNS_OK);
	res_clear(&after);
}

/* libunbound answers .invalid from its built-in local zone synchronously,
 * inside ub_resolve_event: the callback still waits for the loop */
static void test_local_zone_answer_is_deferred(void **state)
{
	struct fx *fx = *state;
	struct res r = { 0 };
	if (fx->d == NULL)
		fx->d = dns_at(fx, free_port(NULL));
	struct dns_req *q = dns_resolve_mx(fx->d, "postling.invalid", on_mx, &r);
	assert_int_equal(r.calls, 0);
	run_until(fx, &r.calls, 1, 2000);
	assert_int_equal(r.calls, 1);
	assert_int_equal(r.st, DNS_NXDOMAIN);

	q = dns_resolve_mx(fx->d, "postling.invalid", on_mx, &r);
	dns_cancel(&q);   /* answered already, callback pending: dropped */
	run_for(fx, 100);
	assert_int_equal(r.calls, 1);
	res_clear(&r);
}

static void test_cancel_inside_callback(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	struct dns_req *q = dns_resolve_mx(fx->d, "a.example", on_mx, &r);
	r.cancel_in_cb = &q;
	run_until(fx, &r.calls, 1, 5000);
	assert_int_equal(r.calls, 1);
	assert_null(q);
	assert_int_equal(r.st, DNS_OK);
	assert_true(r.mx->implicit);
	res_clear(&r);
}

#define NCONC 200

/* NCONC lookups of five kinds at once, each answered exactly once, right */
static void test_many_concurrent_lookups(void **state)
{
	struct fx *fx = need_server(state);
	static const char *const names[] = { "mx.example", "nullmx.example", "nx.example", "b.example",
		"txtonly.example" };
	static const enum dns_status want[] = { DNS_OK, DNS_NULL_MX, DNS_NXDOMAIN, DNS_OK, DNS_NOADDR };
	struct res *r = xcalloc(NCONC, sizeof(*r));
	int done = 0;
	for (int i = 0; i < NCONC; i++) {
		int k = i % 5;
		if (k == 3 || k == 4)
			assert_non_null(dns_resolve_addrs(fx->d, names[k], on_addr, &r[i]));
		else
			assert_non_null(dns_resolve_mx(fx->d, names[k], on_mx, &r[i]));
	}
	double t0 = util_now();
	while (done < NCONC && util_now() - t0 < 10) {
		event_base_loop(fx->base, EVLOOP_ONCE);
		done = 0;
		for (int i = 0; i < NCONC; i++)
			done += r[i].calls;
	}
	assert_int_equal(done, NCONC);
	for (int i = 0; i < NCONC; i++) {
		assert_int_equal(r[i].calls, 1);
		assert_int_equal(r[i].st, want[i % 5]);
		if (i % 5 == 0)
			assert_int_equal(r[i].mx->n, 3);
		if (i % 5 == 3)
			assert_int_equal(r[i].addrs->n, 2);
		res_clear(&r[i]);
	}
	free(r);
}

/* dns_free cancels what is pending: no callback, nothing leaked (ASan) */
static void test_free_with_pending_requests(void **state)
{
	struct fx *fx = *state;
	struct res r[10];
	memset(r, 0, sizeof(r));
	dns_free(&fx->d);
	fx->d = dns_at(fx, free_port(&fx->hold_fd));
	for (int i = 0; i < 10; i++) {
		if (i % 2)
			dns_resolve_mx(fx->d, "mx.example", on_mx, &r[i]);
		else
			dns_resolve_addrs(fx->d, "b.example", on_addr, &r[i]);
	}
	dns_resolve_mx(fx->d, "pending.invalid", on_mx, &r[0]);   /* answered, not delivered */
	run_for(fx, 50);
	for (int i = 0; i < 10; i++)
		assert_int_equal(r[i].calls, i == 0 ? 1 : 0);
	r[0].calls = 0;
	dns_resolve_mx(fx->d, "pending.invalid", on_mx, &r[0]);
	dns_free(&fx->d);
	assert_null(fx->d);
	run_for(fx, 100);
	for (int i = 0; i < 10; i++) {
		assert_int_equal(r[i].calls, 0);
		res_clear(&r[i]);
	}
}

static void test_bad_names(void **state)
{
	struct fx *fx = *state;
	static const char *const bad[] = { "", ".", "a..example", ".example", "[127.0.0.1]",
		"exa mple.example", "a\\.b.example", "b\xc3\xa9.example", "x.example..",
		/* label of 64 */ "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.example" };
	struct res r = { 0 };
	char longname[300];
	if (fx->d == NULL)
		fx->d = dns_at(fx, free_port(NULL));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		resolve_mx(fx, bad[i], &r);
		assert_int_equal(r.st, DNS_BADNAME);
		resolve_addrs(fx, bad[i], &r);
		assert_int_equal(r.st, DNS_BADNAME);
	}
	memset(longname, 'a', sizeof(longname));
	for (int i = 63; i < 254; i += 64)
		longname[i] = '.';
	longname[254] = '\0';   /* 254 characters */
	resolve_mx(fx, longname, &r);
	assert_int_equal(r.st, DNS_BADNAME);
	res_clear(&r);
}

static void test_new_rejects_bad_servers(void **state)
{
	struct fx *fx = *state;
	static const char *const bad[] = { "not-an-ip", "127.0.0.1@", "127.0.0.1@0", "127.0.0.1@70000",
		"127.0.0.1@53x", "@53", "127.0.0.1:53", "" };
	char err[256];
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *servers[] = { bad[i] };
		err[0] = '\0';
		assert_null(dns_new(fx->base, servers, 1, 0, err, sizeof(err)));
		assert_non_null(strstr(err, "not IP or IP@PORT"));
	}
	const char *ok[] = { "::1@5353", "127.0.0.1", "192.0.2.1@53" };
	struct dns *d = dns_new(fx->base, ok, 3, 5353, err, sizeof(err));
	assert_non_null(d);
	dns_free(&d);
	assert_null(d);
	assert_null(dns_new(fx->base, ok, 1, 70000, err, sizeof(err)));
	assert_string_equal(err, "dns port 70000 out of range");
}

static void test_trust_anchor_file_must_exist(void **state)
{
	struct fx *fx = *state;
	char err[256];
	if (fx->d == NULL)
		fx->d = dns_at(fx, free_port(NULL));
	assert_int_equal(dns_set_trust_anchor_file(fx->d, "/nonexistent/root.key", err, sizeof(err)), -1);
	assert_string_equal(err, "trust anchor /nonexistent/root.key: not readable");
}

/* _25._tcp.b.example: both records, answer order, insecure without a trust anchor */
static void test_tlsa_lookup(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	assert_false(dns_validating(fx->d));
	resolve_tlsa(fx, "B.example.", 25, &r);
	assert_int_equal(r.st, DNS_OK);
	assert_int_equal(r.tlsa->n, 2);
	assert_false(r.tlsa->secure);
	size_t usable = 0;
	for (size_t i = 0; i < r.tlsa->n; i++) {
		assert_int_equal(r.tlsa->rr[i].len, 32);
		assert_memory_equal(r.tlsa->rr[i].data, sha256_a, 32);
		usable += dns_tlsa_usable(&r.tlsa->rr[i]);
	}
	assert_int_equal(usable, 1);
	/* the name exists (dnsmasq --local: NODATA or NXDOMAIN), no TLSA: no DANE */
	resolve_tlsa(fx, "c.example", 25, &r);
	assert_true(r.st == DNS_NOADDR || r.st == DNS_NXDOMAIN);
	assert_null(r.tlsa);
	resolve_tlsa(fx, "b.example", 587, &r);
	assert_true(r.st == DNS_NOADDR || r.st == DNS_NXDOMAIN);
	/* no port, or a name that the prefix makes too long */
	resolve_tlsa(fx, "b.example", 0, &r);
	assert_int_equal(r.st, DNS_BADNAME);
	char longname[300];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	for (size_t i = 60; i < sizeof(longname) - 1; i += 61)
		longname[i] = '.';
	resolve_tlsa(fx, longname + 300 - 250, 25, &r);
	assert_int_equal(r.st, DNS_BADNAME);
	res_clear(&r);
}

/* A trust anchor for example. that nothing below satisfies (dnsmasq has no
 * DNSKEY or signatures): MX, addresses and TLSA are all DNS_BOGUS, never
 * DNS_OK (RFC 4035 §5.5: bogus data is not used). */
static void test_bogus_with_trust_anchor(void **state)
{
	struct fx *fx = need_server(state);
	struct res r = { 0 };
	char path[128], err[256] = "";
	snprintf(path, sizeof(path), "%s/example.ds", srv.dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "example. 3600 IN DS 12345 13 2 "
	    "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n");
	fclose(f);
	assert_int_equal(dns_set_trust_anchor_file(fx->d, path, err, sizeof(err)), 0);
	assert_true(dns_validating(fx->d));
	log_set_level(LL_ERROR);   /* the expected dns.bogus warnings */
	resolve_mx(fx, "mx.example", &r);
	assert_int_equal(r.st, DNS_BOGUS);
	assert_null(r.mx);
	resolve_addrs(fx, "b.example", &r);
	assert_int_equal(r.st, DNS_BOGUS);
	assert_null(r.addrs);
	resolve_tlsa(fx, "b.example", 25, &r);
	assert_int_equal(r.st, DNS_BOGUS);
	assert_null(r.tlsa);
	log_set_level(LL_WARN);
	res_clear(&r);
	unlink(path);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_mx_sorted_with_compressed_names),
		cmocka_unit_test(test_parse_every_truncation_is_tempfail),
		cmocka_unit_test(test_parse_bad_compression_pointers),
		cmocka_unit_test(test_parse_name_length_limit),
		cmocka_unit_test(test_parse_rdlength_mismatch),
		cmocka_unit_test(test_parse_extended_label_type),
		cmocka_unit_test(test_parse_rcodes),
		cmocka_unit_test(test_parse_question_must_match),
		cmocka_unit_test(test_parse_nodata_is_implicit_mx),
		cmocka_unit_test(test_parse_null_mx),
		cmocka_unit_test(test_parse_cname_chain),
		cmocka_unit_test(test_parse_unusable_exchange),
		cmocka_unit_test(test_parse_duplicates_and_cap),
		cmocka_unit_test(test_parse_addresses),
		cmocka_unit_test(test_parse_tlsa_records),
		cmocka_unit_test(test_parse_tlsa_errors),
		cmocka_unit_test(test_parse_tlsa_cap),
		cmocka_unit_test(test_tlsa_usable),
		cmocka_unit_test(test_strerror),
		T(test_mx_sorted_by_preference),
		T(test_mx_equal_preference_randomised),
		T(test_mx_through_cname),
		T(test_mx_absent_gives_implicit_mx),
		T(test_mx_null_mx),
		T(test_mx_nxdomain),
		T(test_mx_unusable_exchange_tempfails),
		T(test_addrs_a_only),
		T(test_addrs_ipv6_first),
		T(test_addrs_through_cname),
		T(test_addrs_none_is_noaddr),
		T(test_addrs_nxdomain),
		T(test_refused_is_tempfail),
		T(test_silent_resolver_times_out),
		T(test_closed_port_tempfails),
		T(test_cancel_in_flight_never_calls_back),
		T(test_local_zone_answer_is_deferred),
		T(test_cancel_inside_callback),
		T(test_many_concurrent_lookups),
		T(test_free_with_pending_requests),
		T(test_bad_names),
		T(test_new_rejects_bad_servers),
		T(test_trust_anchor_file_must_exist),
		T(test_tlsa_lookup),
		T(test_bogus_with_trust_anchor),
	};
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
