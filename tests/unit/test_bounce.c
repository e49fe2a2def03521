/* test_bounce.c: relay/bounce.c, the DSN builder (RFC 3464, RFC 6522) and
 * its NOTIFY policy (RFC 3461 §4.1). Every DSN built here goes through
 * build(), which checks the line rules (CRLF only, at most 998 octets, no
 * NUL) and parses the MIME structure: top header, boundary, exactly the
 * delimiter lines RFC 2046 §5.1.1 allows, the parts and the close. Times and
 * randomness are fixed, so outputs are compared byte for byte. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/xmalloc.h"
#include "relay/relay.h"

#define T0 ((time_t)1700000000)      /* Tue, 14 Nov 2023 22:13:20 +0000 */
#define T1 ((time_t)1700003600)      /* Tue, 14 Nov 2023 23:13:20 +0000 */
#define T2 ((time_t)1700007200)      /* Wed, 15 Nov 2023 00:13:20 +0000 */
#define T3 ((time_t)1700432000)      /* Sun, 19 Nov 2023 22:13:20 +0000 */
#define SEED 0x0123456789abcdefULL
#define BND "=_postling_0123456789abcdef"
#define HDRS "Received: from x\r\nSubject: hi\r\nMessage-ID: <m1@example.org>\r\n"
#define MSG HDRS "\r\nbody\r\n"

/* ------------------------------------------------------------ fixture */

static uint64_t fixed_rand(void *arg)
{
	return *(const uint64_t *)arg;
}

static uint64_t seed = SEED;

struct rcpt_spec {
	const char *addr, *orcpt;
	unsigned notify;
	enum queue_rcpt_state state;
	const char *remote, *reply;
};

static void env_init(struct queue_env *env, const char *sender, const struct rcpt_spec *rs,
    size_t n)
{
	memset(env, 0, sizeof(*env));
	strcpy(env->id, "0000000a00000001");
	env->sender = xstrdup(sender);
	env->envid = xstrdup("");
	env->auth_user = xstrdup("");
	env->client_ip = xstrdup("192.0.2.1");
	env->helo = xstrdup("client.example.org");
	env->created = T0;
	env->attempts = 3;
	env->last_attempt = T1;
	env->rcpts = xcalloc(n, sizeof(*env->rcpts));
	env->nrcpts = n;
	for (size_t i = 0; i < n; i++) {
		struct queue_rcpt *r = &env->rcpts[i];
		r->addr = xstrdup(rs[i].addr);
		r->orcpt = xstrdup(rs[i].orcpt != NULL ? rs[i].orcpt : "");
		r->notify = rs[i].notify;
		r->state = rs[i].state;
		r->attempts = r->state == Q_PENDING ? 0 : 3;
		r->updated = T1;
		r->remote_mta = xstrdup(rs[i].remote != NULL ? rs[i].remote : "");
		r->last_reply = xstrdup(rs[i].reply != NULL ? rs[i].reply : "");
	}
}

static void set_str(char **s, const char *v)
{
	free(*s);
	*s = xstrdup(v);
}

/* one failed recipient with ORCPT and a reply, one delivered (not reported) */
static void env_default(struct queue_env *env)
{
	static const struct rcpt_spec rs[] = {
		{ "bob@remote.example", "rfc822;bob@remote.example", QUEUE_NOTIFY_FAILURE, Q_FAILED,
		  "mx.remote.example",
		  "550 5.1.1 <bob@remote.example>: Recipient address rejected: User unknown" },
		{ "carol@remote.example", NULL, 0, Q_DELIVERED, "mx.remote.example", "250 2.0.0 Ok" },
	};
	env_init(env, "alice@example.org", rs, 2);
	set_str(&env->envid, "ENV-123");
	env->ret = QUEUE_RET_HDRS;
}

static struct bounce_params params(const struct queue_env *env, enum bounce_kind kind,
    const char *msg)
{
	struct bounce_params p = {
		.hostname = "mail.example.org", .env = env, .kind = kind, .now = T2,
		.msg = msg, .msg_len = msg != NULL ? strlen(msg) : 0,
		.rand_fn = fixed_rand, .rand_arg = &seed,
	};
	return p;
}

/* ------------------------------------------------------------ parsing */

struct part {
	char *hdr;                   /* header section, CRLF lines, without the empty line */
	const char *body;            /* into dsn.text */
	size_t body_len;
};

struct dsn {
	char *text;
	size_t len;
	char *hdr;
	char boundary[80];
	struct part parts[4];
	size_t nparts;
};

/* RFC 5322 §2.1.1 / §2.3: CRLF only, lines of at most 998 octets, no NUL */
static void check_lines(const char *s, size_t len)
{
	size_t col = 0;
	assert_true(len >= 2 && s[len - 2] == '\r' && s[len - 1] == '\n');
	for (size_t i = 0; i < len; i++) {
		assert_int_not_equal(s[i], '\0');
		if (s[i] == '\r') {
			assert_true(i + 1 < len && s[i + 1] == '\n');
			col = 0;
			i++;
			continue;
		}
		assert_int_not_equal(s[i], '\n');
		assert_true(++col <= 998);
	}
}

static bool all_7bit(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)s[i] >= 0x80)
			return false;
	return true;
}

/* Unfolded value of field name in a header section h (NULL if absent). */
static char *header_get(const char *h, const char *name)
{
	size_t nl = strlen(name);
	for (const char *l = h; *l != '\0'; l = strstr(l, "\r\n") + 2) {
		if (strncasecmp(l, name, nl) != 0 || l[nl] != ':')
			continue;
		const char *v = l + nl + 1;
		char *out = xmalloc(strlen(v) + 1);
		size_t n = 0;
		for (;;) {
			if (v[0] == '\r' && v[1] == '\n') {
				if (v[2] != ' ' && v[2] != '\t')
					break;
				v += 2;
				continue;
			}
			out[n++] = *v++;
		}
		out[n] = '\0';
		char *t = out;
		while (*t == ' ' || *t == '\t')
			t++;
		memmove(out, t, strlen(t) + 1);
		return out;
	}
	return NULL;
}

/* Splits s at its first empty line; NULL if none. */
static const char *split_header(const char *s, size_t len, char **hdr_r)
{
	const char *e = memmem(s, len, "\r\n\r\n", 4);
	assert_non_null(e);
	*hdr_r = xstrndup(s, (size_t)(e - s) + 2);
	return e + 4;
}

static void parse(struct dsn *d)
{
	const char *body = split_header(d->text, d->len, &d->hdr);
	char *ct = header_get(d->hdr, "Content-Type");
	assert_non_null(ct);
	assert_non_null(strstr(ct, "multipart/report; report-type=delivery-status;"));
	const char *b = strstr(ct, "boundary=\"");
	assert_non_null(b);
	b += strlen("boundary=\"");
	size_t bl = strcspn(b, "\"");
	assert_true(bl > 0 && bl <= 70);
	memcpy(d->boundary, b, bl);
	d->boundary[bl] = '\0';
	free(ct);
	char delim[96];
	snprintf(delim, sizeof(delim), "\r\n--%s", d->boundary);
	size_t dl = strlen(delim);
	const char *end = d->text + d->len;
	/* the preamble: up to the first delimiter */
	const char *p = memmem(body - 2, (size_t)(end - body + 2), delim, dl);
	assert_non_null(p);
	for (;;) {
		p += dl;
		if (p[0] == '-' && p[1] == '-') {
			/* close delimiter, then nothing (no epilogue) */
			assert_true(p + 4 == end && p[2] == '\r' && p[3] == '\n');
			break;
		}
		assert_true(p[0] == '\r' && p[1] == '\n');
		p += 2;
		const char *next = memmem(p, (size_t)(end - p), delim, dl);
		assert_non_null(next);
		assert_true(d->nparts < 4);
		struct part *pt = &d->parts[d->nparts++];
		pt->body = split_header(p, (size_t)(next - p), &pt->hdr);
		pt->body_len = (size_t)(next - pt->body);
		p = next;
	}
}

static void build_into(struct dsn *d, const struct bounce_params *p)
{
	memset(d, 0, sizeof(*d));
	d->text = bounce_build(p, &d->len);
	assert_non_null(d->text);
	assert_int_equal(strlen(d->text), d->len);
	check_lines(d->text, d->len);
	parse(d);
}

static void dsn_free(struct dsn *d)
{
	free(d->text);
	free(d->hdr);
	for (size_t i = 0; i < d->nparts; i++)
		free(d->parts[i].hdr);
	memset(d, 0, sizeof(*d));
}

static char *part_type(const struct dsn *d, size_t i)
{
	assert_true(i < d->nparts);
	return header_get(d->parts[i].hdr, "Content-Type");
}

static void assert_part_type(const struct dsn *d, size_t i, const char *type)
{
	char *t = part_type(d, i);
	assert_string_equal(t, type);
	free(t);
}

static char *part_body(const struct dsn *d, size_t i)
{
	return xstrndup(d->parts[i].body, d->parts[i].body_len);
}

/* The unfolded value of a field of recipient block n (0-based) of the
 * delivery-status part, or of the per-message block when n is -1. */
static char *status_field(const struct dsn *d, int n, const char *name)
{
	char *body = part_body(d, 1);
	char *blk = body;
	for (int i = -1; i < n; i++) {
		char *e = strstr(blk, "\r\n\r\n");
		assert_non_null(e);
		blk = e + 2;
	}
	char *e = strstr(blk, "\r\n\r\n");
	if (e != NULL)
		e[2] = '\0';
	char *v = header_get(blk, name);
	free(body);
	return v;
}

static void assert_status_field(const struct dsn *d, int n, const char *name, const char *want)
{
	char *v = status_field(d, n, name);
	if (want == NULL) {
		assert_null(v);
		return;
	}
	assert_non_null(v);
	assert_string_equal(v, want);
	free(v);
}

/* ------------------------------------------------------------ golden */

static const char golden[] =
	"From: Mail Delivery System <MAILER-DAEMON@mail.example.org>\r\n"
	"To: <alice@example.org>\r\n"
	"Subject: Undelivered Mail Returned to Sender\r\n"
	"Date: Wed, 15 Nov 2023 00:13:20 +0000\r\n"
	"Message-ID: <0123456789abcdef.0000000a00000001@mail.example.org>\r\n"
	"MIME-Version: 1.0\r\n"
	"Auto-Submitted: auto-replied\r\n"
	"Content-Type: multipart/report; report-type=delivery-status;\r\n"
	"\tboundary=\"" BND "\"\r\n"
	"\r\n"
	"This is a MIME-encapsulated message.\r\n"
	"\r\n"
	"--" BND "\r\n"
	"Content-Description: Notification\r\n"
	"Content-Type: text/plain; charset=us-ascii\r\n"
	"\r\n"
	"This is the mail system at host mail.example.org.\r\n"
	"\r\n"
	"Your message could not be delivered to one or more of its recipients. The\r\n"
	"mail system has given up on the recipients listed below.\r\n"
	"\r\n"
	"<bob@remote.example>: host mx.remote.example said: 550 5.1.1\r\n"
	"    <bob@remote.example>: Recipient address rejected: User unknown\r\n"
	"\r\n"
	"The headers of the original message are attached.\r\n"
	"\r\n"
	"--" BND "\r\n"
	"Content-Description: Delivery report\r\n"
	"Content-Type: message/delivery-status\r\n"
	"\r\n"
	"Original-Envelope-Id: ENV-123\r\n"
	"Reporting-MTA: dns; mail.example.org\r\n"
	"Arrival-Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
	"\r\n"
	"Original-Recipient: rfc822;bob@remote.example\r\n"
	"Final-Recipient: rfc822; bob@remote.example\r\n"
	"Action: failed\r\n"
	"Status: 5.1.1\r\n"
	"Remote-MTA: dns; mx.remote.example\r\n"
	"Diagnostic-Code: smtp; 550 5.1.1 <bob@remote.example>: Recipient address\r\n"
	" rejected: User unknown\r\n"
	"Last-Attempt-Date: Tue, 14 Nov 2023 23:13:20 +0000\r\n"
	"\r\n"
	"--" BND "\r\n"
	"Content-Description: Message Headers\r\n"
	"Content-Type: text/rfc822-headers\r\n"
	"\r\n"
	HDRS
	"\r\n"
	"--" BND "--\r\n";

static void failure_dsn_matches_golden_bytes(void **state)
{
	(void)state;
	struct queue_env env;
	env_default(&env);
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	size_t len;
	char *out = bounce_build(&p, &len);
	assert_non_null(out);
	assert_string_equal(out, golden);
	assert_int_equal(len, sizeof(golden) - 1);
	assert_int_equal(bounce_body_type(out, len), QUEUE_BODY_7BIT);
	assert_false(bounce_smtputf8(&env));
	free(out);
	queue_env_free(&env);
}

static void structure_parses_into_three_parts(void **state)
{
	(void)state;
	struct queue_env env;
	env_default(&env);
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	struct dsn d;
	build_into(&d, &p);
	assert_string_equal(d.boundary, BND);
	assert_int_equal(d.nparts, 3);
	assert_part_type(&d, 0, "text/plain; charset=us-ascii");
	assert_part_type(&d, 1, "message/delivery-status");
	assert_part_type(&d, 2, "text/rfc822-headers");
	char *v = header_get(d.hdr, "Auto-Submitted");
	assert_string_equal(v, "auto-replied");
	free(v);
	v = header_get(d.hdr, "To");
	assert_string_equal(v, "<alice@example.org>");
	free(v);
	v = header_get(d.hdr, "MIME-Version");
	assert_string_equal(v, "1.0");
	free(v);
	assert_null(header_get(d.hdr, "Content-Transfer-Encoding"));
	assert_status_field(&d, -1, "Reporting-MTA", "dns; mail.example.org");
	assert_status_field(&d, -1, "Arrival-Date", "Tue, 14 Nov 2023 22:13:20 +0000");
	assert_status_field(&d, 0, "Final-Recipient", "rfc822; bob@remote.example");
	assert_status_field(&d, 0, "Action", "failed");
	assert_status_field(&d, 0, "Status", "5.1.1");
	assert_status_field(&d, 0, "Diagnostic-Code",
	    "smtp; 550 5.1.1 <bob@remote.example>: Recipient address rejected: User unknown");
	/* carol was delivered: not in a failure DSN */
	assert_null(strstr(d.text, "carol"));
	dsn_free(&d);
	queue_env_free(&env);
}

static void output_is_deterministic_and_seeded(void **state)
{
	(void)state;
	struct queue_env env;
	env_default(&env);
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	size_t l1, l2, l3;
	char *a = bounce_build(&p, &l1), *b = bounce_build(&p, &l2);
	assert_int_equal(l1, l2);
	assert_memory_equal(a, b, l1);
	uint64_t other = 0xfedcba9876543210ULL;
	p.rand_arg = &other;
	char *c = bounce_build(&p, &l3);
	assert_int_equal(l3, l1);
	assert_memory_not_equal(a, c, l1);
	assert_non_null(strstr(c, "boundary=\"=_postling_fedcba9876543210\""));
	assert_non_null(strstr(c, "Message-ID: <fedcba9876543210.0000000a00000001@"));
	free(a);
	free(b);
	free(c);
	queue_env_free(&env);
}

/* ------------------------------------------------------------ part 3 / RET */

static void ret_full_attaches_whole_message(void **state)
{
	(void)state;
	struct queue_env env;
	env_default(&env);
	env.ret = QUEUE_RET_FULL;
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	struct dsn d;
	build_into(&d, &p);
	assert_int_equal(d.nparts, 3);
	assert_part_type(&d, 2, "message/rfc822");
	assert_int_equal(d.parts[2].body_len, strlen(MSG));
	assert_memory_equal(d.parts[2].body, MSG, strlen(MSG));
	char *t = part_body(&d, 0);
	assert_non_null(strstr(t, "The original message is attached.\r\n"));
	free(t);
	dsn_free(&d);
	queue_env_free(&env);
}

static void ret_hdrs_and_unset_attach_headers_only(void **state)
{
	(void)state;
	static const enum queue_ret rets[] = { QUEUE_RET_HDRS, QUEUE_RET_UNSET };
	for (size_t i = 0; i < 2; i++) {
		struct queue_env env;
		env_default(&env);
		env.ret = rets[i];
		struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
		struct dsn d;
		build_into(&d, &p);
		assert_int_equal(d.nparts, 3);
		assert_part_type(&d, 2, "text/rfc822-headers");
		assert_int_equal(d.parts[2].body_len, strlen(HDRS));
		assert_memory_equal(d.parts[2].body, HDRS, strlen(HDRS));
		assert_null(strstr(d.text, "\r\nbody\r\n"));
		dsn_free(&d);
		queue_env_free(&env);
	}
}

static void ret_full_over_cap_falls_back_to_headers(void **state)
{
	(void)state;
	struct queue_env env;
	env_default(&env);
	env.ret = QUEUE_RET_FULL;
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	p.max_original = strlen(MSG) - 1;
	struct dsn d;
	build_into(&d, &p);
	assert_part_type(&d, 2, "text/rfc822-headers");
	assert_int_equal(d.parts[2].body_len, strlen(HDRS));
	char *t = part_body(&d, 0);
	assert_non_null(strstr(t, "too large or not in a form that can be\r\nreturned; its headers"));
	free(t);
	dsn_free(&d);
	/* exactly at the cap: whole */
	p.max_original = strlen(MSG);
	build_into(&d, &p);
	assert_part_type(&d, 2, "message/rfc822");
	dsn_free(&d);
	/* even the header section over the cap: no third part */
	p.max_original = 10;
	build_into(&d, &p);
	assert_int_equal(d.nparts, 2);
	t = part_body(&d, 0);
	assert_non_null(strstr(t, "returned; it is not attached.\r\n"));
	free(t);
	dsn_free(&d);
	queue_env_free(&env);
}

/* BDAT or BINARYMIME content (bare LF, a 2,000-octet line, no final CRLF)
 * cannot go into a 7bit/8bit part: headers instead, or nothing. */
static void ret_full_unsafe_original_falls_back(void **state)
{
	(void)state;
	char *longline = xmalloc(2100);
	memset(longline, 'a', 2000);
	longline[2000] = '\0';
	char *bodies[] = { xstrdup(HDRS "\r\nbare\nlf\r\n"), xasprintf(HDRS "\r\n%s\r\n", longline),
		xstrdup(HDRS "\r\nno final crlf"), xstrdup(HDRS "\r\nbare\rcr\r\n") };
	for (size_t i = 0; i < 4; i++) {
		struct queue_env env;
		env_default(&env);
		env.ret = QUEUE_RET_FULL;
		struct bounce_params p = params(&env, BOUNCE_FAILURE, bodies[i]);
		struct dsn d;
		build_into(&d, &p);
		assert_int_equal(d.nparts, 3);
		assert_part_type(&d, 2, "text/rfc822-headers");
		assert_int_equal(d.parts[2].body_len, strlen(HDRS));
		dsn_free(&d);
		queue_env_free(&env);
		free(bodies[i]);
	}
	/* a header line over 998 octets: not even headers */
	char *bad = xasprintf("X-Long: %s\r\n\r\nbody\r\n", longline);
	struct queue_env env;
	env_default(&env);
	struct bounce_params p = params(&env, BOUNCE_FAILURE, bad);
	struct dsn d;
	build_into(&d, &p);
	assert_int_equal(d.nparts, 2);
	dsn_free(&d);
	queue_env_free(&env);
	free(bad);
	free(longline);
}

static void delay_and_success_attach_headers_even_with_ret_full(void **state)
{
	(void)state;
	static const struct rcpt_spec rs[] = {
		{ "d@remote.example", NULL, 0, Q_DEFERRED, "mx.remote.example", "451 4.3.0 later" },
		{ "s@remote.example", NULL, QUEUE_NOTIFY_SUCCESS, Q_DELIVERED, NULL, NULL },
	};
	for (int k = BOUNCE_DELAY; k <= BOUNCE_SUCCESS; k++) {
		struct queue_env env;
		env_init(&env, "alice@example.org", rs, 2);
		env.ret = QUEUE_RET_FULL;
		struct bounce_params p = params(&env, (enum bounce_kind)k, MSG);
		struct dsn d;
		build_into(&d, &p);
		assert_part_type(&d, 2, "text/rfc822-headers");
		dsn_free(&d);
		queue_env_free(&env);
	}
}

static void no_original_gives_two_parts(void **state)
{
	(void)state;
	struct queue_env env;
	env_default(&env);
	struct bounce_params p = params(&env, BOUNCE_FAILURE, NULL);
	struct dsn d;
	build_into(&d, &p);
	assert_int_equal(d.nparts, 2);
	char *t = part_body(&d, 0);
	assert_null(strstr(t, "attached"));
	free(t);
	dsn_free(&d);
	queue_env_free(&env);
}

static void eightbit_original_labelled(void **state)
{
	(void)state;
	/* 8BITMIME body, ASCII header: message/rfc822 with 8bit */
	const char *m8 = HDRS "\r\ncaf\xc3\xa9\r\n";
	struct queue_env env;
	env_default(&env);
	env.ret = QUEUE_RET_FULL;
	struct bounce_params p = params(&env, BOUNCE_FAILURE, m8);
	struct dsn d;
	build_into(&d, &p);
	assert_part_type(&d, 2, "message/rfc822");
	char *v = header_get(d.parts[2].hdr, "Content-Transfer-Encoding");
	assert_string_equal(v, "8bit");
	free(v);
	v = header_get(d.hdr, "Content-Transfer-Encoding");
	assert_string_equal(v, "8bit");
	free(v);
	assert_null(header_get(d.parts[0].hdr, "Content-Transfer-Encoding"));
	assert_int_equal(bounce_body_type(d.text, d.len), QUEUE_BODY_8BITMIME);
	dsn_free(&d);
	/* the same with RET=HDRS: only the ASCII header goes, all 7bit */
	env.ret = QUEUE_RET_HDRS;
	build_into(&d, &p);
	assert_part_type(&d, 2, "text/rfc822-headers");
	assert_true(all_7bit(d.text, d.len));
	assert_null(header_get(d.hdr, "Content-Transfer-Encoding"));
	dsn_free(&d);
	/* UTF-8 in the header section (RFC 6532): the global types */
	const char *mh = "Subject: caf\xc3\xa9\r\n\r\nbody\r\n";
	p = params(&env, BOUNCE_FAILURE, mh);
	build_into(&d, &p);
	assert_part_type(&d, 2, "message/global-headers");
	dsn_free(&d);
	env.ret = QUEUE_RET_FULL;
	build_into(&d, &p);
	assert_part_type(&d, 2, "message/global");
	dsn_free(&d);
	queue_env_free(&env);
}

/* ------------------------------------------------------------ fields */

static void envid_and_orcpt_pass_through(void **state)
{
	(void)state;
	struct queue_env env;
	env_default(&env);
	set_str(&env.envid, "QQ314159+x=y");
	set_str(&env.rcpts[0].orcpt, "rfc822;Bob.Original@Other.example");
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	struct dsn d;
	build_into(&d, &p);
	assert_status_field(&d, -1, "Original-Envelope-Id", "QQ314159+x=y");
	assert_status_field(&d, 0, "Original-Recipient", "rfc822;Bob.Original@Other.example");
	assert_status_field(&d, 0, "Final-Recipient", "rfc822; bob@remote.example");
	dsn_free(&d);
	/* absent when not given */
	set_str(&env.envid, "");
	set_str(&env.rcpts[0].orcpt, "");
	build_into(&d, &p);
	assert_status_field(&d, -1, "Original-Envelope-Id", NULL);
	assert_status_field(&d, 0, "Original-Recipient", NULL);
	dsn_free(&d);
	/* an ORCPT without a proper type is dropped, not passed on */
	set_str(&env.rcpts[0].orcpt, "rfc 822;x@y");
	build_into(&d, &p);
	assert_status_field(&d, 0, "Original-Recipient", NULL);
	dsn_free(&d);
	/* control octets in ENVID: xtext-encoded, never raw */
	set_str(&env.envid, "a\r\nb");
	build_into(&d, &p);
	assert_status_field(&d, -1, "Original-Envelope-Id", "a+0D+0Ab");
	dsn_free(&d);
	queue_env_free(&env);
}

static void multiline_reply_joined_into_one_field(void **state)
{
	(void)state;
	static const char *const replies[] = {
		"550-5.1.1 The email account that you tried to reach does not exist.\r\n"
		"550-5.1.1 Please try double-checking the recipient's email address\r\n"
		"550 5.1.1 for typos or unnecessary spaces.",
		"550-5.1.1 The email account that you tried to reach does not exist.\n"
		"550-5.1.1 Please try double-checking the recipient's email address\n"
		"550 5.1.1 for typos or unnecessary spaces.\n",
	};
	for (size_t i = 0; i < 2; i++) {
		struct queue_env env;
		env_default(&env);
		set_str(&env.rcpts[0].last_reply, replies[i]);
		struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
		struct dsn d;
		build_into(&d, &p);
		assert_status_field(&d, 0, "Diagnostic-Code",
		    "smtp; 550 5.1.1 The email account that you tried to reach does not exist. "
		    "Please try double-checking the recipient's email address for typos or "
		    "unnecessary spaces.");
		assert_status_field(&d, 0, "Status", "5.1.1");
		/* folded, not one long line */
		char *body = part_body(&d, 1);
		assert_non_null(strstr(body, "Diagnostic-Code: smtp; 550 5.1.1 The email account that "
		    "you tried to reach\r\n does not exist."));
		free(body);
		dsn_free(&d);
		queue_env_free(&env);
	}
}

static void long_reply_folded_and_capped(void **state)
{
	(void)state;
	/* 300 words: folded at spaces, under 80 columns */
	char *words = xmalloc(300 * 6 + 16);
	strcpy(words, "554 5.7.1");
	for (int i = 0; i < 300; i++)
		strcat(words, " abcde");
	struct queue_env env;
	env_default(&env);
	set_str(&env.rcpts[0].last_reply, words);
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	struct dsn d;
	build_into(&d, &p);
	char *body = part_body(&d, 1);
	for (char *l = body; *l != '\0'; l = strstr(l, "\r\n") + 2)
		assert_true((size_t)(strstr(l, "\r\n") - l) <= 78);
	free(body);
	char *v = status_field(&d, 0, "Diagnostic-Code");
	assert_int_equal(strlen(v), strlen("smtp; ") + strlen(words));
	assert_memory_equal(v + strlen("smtp; "), words, strlen(words));
	free(v);
	dsn_free(&d);
	/* one 5,000-octet word: capped at 2,000 octets, split under 998 */
	char *big = xmalloc(5100);
	strcpy(big, "550 ");
	memset(big + 4, 'x', 5000);
	big[5004] = '\0';
	set_str(&env.rcpts[0].last_reply, big);
	build_into(&d, &p);   /* check_lines proves the 998 limit */
	v = status_field(&d, 0, "Diagnostic-Code");
	assert_true(strlen(v) < 2100);
	assert_int_equal(strncmp(v, "smtp; 550 xxx", 13), 0);
	assert_string_equal(v + strlen(v) - 4, "x...");
	free(v);
	dsn_free(&d);
	queue_env_free(&env);
	free(big);
	free(words);
}

struct status_case {
	enum bounce_kind kind;
	enum queue_rcpt_state state;
	const char *reply, *status, *diag;
};

static void status_from_enhanced_code_or_kind(void **state)
{
	(void)state;
	static const struct status_case cases[] = {
		{ BOUNCE_FAILURE, Q_FAILED, "550 5.1.1 User unknown", "5.1.1", "smtp; 550 5.1.1 User unknown" },
		{ BOUNCE_FAILURE, Q_FAILED, "550 User unknown", "5.0.0", "smtp; 550 User unknown" },
		{ BOUNCE_FAILURE, Q_FAILED, "554 5.7.1", "5.7.1", "smtp; 554 5.7.1" },
		{ BOUNCE_FAILURE, Q_FAILED, "550 5.1.1234 odd", "5.0.0", "smtp; 550 5.1.1234 odd" },
		{ BOUNCE_FAILURE, Q_FAILED, "550 2.0.0 odd", "5.0.0", "smtp; 550 2.0.0 odd" },
		{ BOUNCE_FAILURE, Q_FAILED, "451 4.3.0 Try later", "4.3.0", "smtp; 451 4.3.0 Try later" },
		{ BOUNCE_FAILURE, Q_FAILED, "451 Try later", "4.4.7", "smtp; 451 Try later" },
		{ BOUNCE_FAILURE, Q_FAILED, "", "5.0.0", NULL },
		{ BOUNCE_FAILURE, Q_FAILED, "5.1.10 Null MX (RFC 7505)", "5.1.10",
		  "X-Postling; 5.1.10 Null MX (RFC 7505)" },
		{ BOUNCE_FAILURE, Q_FAILED, "Host not found", "5.0.0", "X-Postling; Host not found" },
		{ BOUNCE_DELAY, Q_DEFERRED, "452 4.2.2 Mailbox full", "4.2.2", "smtp; 452 4.2.2 Mailbox full" },
		{ BOUNCE_DELAY, Q_DEFERRED, "421 closing", "4.0.0", "smtp; 421 closing" },
		{ BOUNCE_DELAY, Q_PENDING, "", "4.0.0", NULL },
		{ BOUNCE_SUCCESS, Q_DELIVERED, "250 2.6.0 Queued as X", "2.6.0", "smtp; 250 2.6.0 Queued as X" },
		{ BOUNCE_SUCCESS, Q_DELIVERED, "250 Ok", "2.0.0", "smtp; 250 Ok" },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct status_case *c = &cases[i];
		struct rcpt_spec rs = { "r@remote.example", NULL,
			QUEUE_NOTIFY_SUCCESS | QUEUE_NOTIFY_FAILURE | QUEUE_NOTIFY_DELAY, c->state,
			"mx.remote.example", c->reply };
		struct queue_env env;
		env_init(&env, "alice@example.org", &rs, 1);
		struct bounce_params p = params(&env, c->kind, MSG);
		struct dsn d;
		build_into(&d, &p);
		assert_status_field(&d, 0, "Status", c->status);
		assert_status_field(&d, 0, "Diagnostic-Code", c->diag);
		dsn_free(&d);
		queue_env_free(&env);
	}
}

static void actions_subjects_and_delay_fields(void **state)
{
	(void)state;
	static const struct rcpt_spec rs[] = {
		{ "d@remote.example", NULL, 0, Q_DEFERRED, "mx.remote.example", "451 4.3.0 later" },
		{ "p@remote.example", NULL, 0, Q_PENDING, NULL, NULL },
		{ "s@remote.example", NULL, QUEUE_NOTIFY_SUCCESS, Q_DELIVERED, "mx.remote.example",
		  "250 2.0.0 Ok" },
	};
	struct queue_env env;
	env_init(&env, "alice@example.org", rs, 3);
	struct bounce_params p = params(&env, BOUNCE_DELAY, MSG);
	p.retry_until = T3;
	struct dsn d;
	build_into(&d, &p);
	char *v = header_get(d.hdr, "Subject");
	assert_string_equal(v, "Delayed Mail (still being retried)");
	free(v);
	assert_status_field(&d, 0, "Final-Recipient", "rfc822; d@remote.example");
	assert_status_field(&d, 0, "Action", "delayed");
	assert_status_field(&d, 0, "Status", "4.3.0");
	assert_status_field(&d, 0, "Will-Retry-Until", "Sun, 19 Nov 2023 22:13:20 +0000");
	assert_status_field(&d, 0, "Last-Attempt-Date", "Tue, 14 Nov 2023 23:13:20 +0000");
	/* never attempted: no Last-Attempt-Date, no Remote-MTA */
	assert_status_field(&d, 1, "Final-Recipient", "rfc822; p@remote.example");
	assert_status_field(&d, 1, "Action", "delayed");
	assert_status_field(&d, 1, "Remote-MTA", NULL);
	assert_status_field(&d, 1, "Last-Attempt-Date", NULL);
	char *t = part_body(&d, 0);
	assert_non_null(strstr(t, "It will give up after Sun, 19 Nov 2023 22:13:20 +0000."));
	free(t);
	assert_null(strstr(d.text, "s@remote.example"));
	dsn_free(&d);

	p = params(&env, BOUNCE_SUCCESS, MSG);
	build_into(&d, &p);
	v = header_get(d.hdr, "Subject");
	assert_string_equal(v, "Successful Mail Delivery Report");
	free(v);
	assert_status_field(&d, 0, "Final-Recipient", "rfc822; s@remote.example");
	assert_status_field(&d, 0, "Action", "delivered");
	assert_status_field(&d, 0, "Status", "2.0.0");
	assert_status_field(&d, 0, "Will-Retry-Until", NULL);
	dsn_free(&d);
	p.relayed = true;
	build_into(&d, &p);
	assert_status_field(&d, 0, "Action", "relayed");
	dsn_free(&d);
	queue_env_free(&env);
}

/* ------------------------------------------------------------ boundary */

static uint64_t constant_rand(void *arg)
{
	(void)arg;
	return SEED;
}

static void boundary_never_occurs_in_content(void **state)
{
	(void)state;
	/* the original and the reply hold the first two boundaries a constant
	 * rand_fn yields, at line starts and inside lines */
	const char *msg = "Subject: --" BND "\r\n\r\n--" BND "\r\n--" BND ".1--\r\nx\r\n";
	struct queue_env env;
	env_default(&env);
	env.ret = QUEUE_RET_FULL;
	set_str(&env.rcpts[0].last_reply, "550 5.0.0 see --" BND ".2");
	struct bounce_params p = params(&env, BOUNCE_FAILURE, msg);
	p.rand_fn = constant_rand;
	struct dsn d;
	build_into(&d, &p);
	assert_string_equal(d.boundary, BND ".3");
	assert_int_equal(d.nparts, 3);
	for (size_t i = 0; i < d.nparts; i++) {
		assert_null(memmem(d.parts[i].body, d.parts[i].body_len, d.boundary,
		    strlen(d.boundary)));
		assert_null(strstr(d.parts[i].hdr, d.boundary));
	}
	assert_int_equal(d.parts[2].body_len, strlen(msg));
	assert_memory_equal(d.parts[2].body, msg, strlen(msg));
	dsn_free(&d);
	queue_env_free(&env);
}

/* ------------------------------------------------------------ policy */

static void null_sender_is_never_bounced(void **state)
{
	(void)state;
	struct queue_env env;
	env_default(&env);
	set_str(&env.sender, "");
	for (int k = BOUNCE_FAILURE; k <= BOUNCE_SUCCESS; k++) {
		for (unsigned n = 0; n <= 0xe; n += 2) {
			env.rcpts[0].notify = n;
			assert_false(bounce_wanted(&env, &env.rcpts[0], (enum bounce_kind)k));
			assert_false(bounce_reportable(&env, &env.rcpts[0], (enum bounce_kind)k));
		}
	}
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	size_t len;
	errno = 0;
	assert_null(bounce_build(&p, &len));
	assert_int_equal(errno, EINVAL);
	/* not even with explicit indices */
	size_t idx = 0;
	p.rcpts = &idx;
	p.nrcpts = 1;
	errno = 0;
	assert_null(bounce_build(&p, &len));
	assert_int_equal(errno, EINVAL);
	queue_env_free(&env);
}

static void notify_rules_table(void **state)
{
	(void)state;
	enum { F = QUEUE_NOTIFY_FAILURE, D = QUEUE_NOTIFY_DELAY, S = QUEUE_NOTIFY_SUCCESS };
	static const struct {
		unsigned notify;
		bool failure, delay, success;
	} rows[] = {
		{ 0, true, true, false },              /* no NOTIFY: failure + delay warnings */
		{ QUEUE_NOTIFY_NEVER, false, false, false },
		{ F, true, false, false },
		{ D, false, true, false },
		{ S, false, false, true },
		{ F | D, true, true, false },
		{ F | S, true, false, true },
		{ D | S, false, true, true },
		{ F | D | S, true, true, true },
	};
	struct queue_env env;
	env_default(&env);
	for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
		env.rcpts[0].notify = rows[i].notify;
		assert_int_equal(bounce_wanted(&env, &env.rcpts[0], BOUNCE_FAILURE), rows[i].failure);
		assert_int_equal(bounce_wanted(&env, &env.rcpts[0], BOUNCE_DELAY), rows[i].delay);
		assert_int_equal(bounce_wanted(&env, &env.rcpts[0], BOUNCE_SUCCESS), rows[i].success);
	}
	queue_env_free(&env);
}

static void default_selection_by_state_and_notify(void **state)
{
	(void)state;
	static const struct rcpt_spec rs[] = {
		{ "f1@r.example", NULL, 0, Q_FAILED, NULL, "550 5.1.1 no" },
		{ "f2@r.example", NULL, QUEUE_NOTIFY_NEVER, Q_FAILED, NULL, "550 5.1.1 no" },
		{ "f3@r.example", NULL, QUEUE_NOTIFY_DELAY, Q_FAILED, NULL, "550 5.1.1 no" },
		{ "f4@r.example", NULL, QUEUE_NOTIFY_FAILURE, Q_FAILED, NULL, "550 5.1.2 no" },
		{ "d1@r.example", NULL, 0, Q_DEFERRED, NULL, "451 4.0.0 later" },
		{ "v1@r.example", NULL, 0, Q_DELIVERED, NULL, "250 ok" },
		{ "v2@r.example", NULL, QUEUE_NOTIFY_SUCCESS, Q_DELIVERED, NULL, "250 ok" },
	};
	struct queue_env env;
	env_init(&env, "alice@example.org", rs, 7);
	struct bounce_params p = params(&env, BOUNCE_FAILURE, NULL);
	struct dsn d;
	build_into(&d, &p);
	assert_status_field(&d, 0, "Final-Recipient", "rfc822; f1@r.example");
	assert_status_field(&d, 1, "Final-Recipient", "rfc822; f4@r.example");
	assert_null(strstr(d.text, "f2@"));
	assert_null(strstr(d.text, "f3@"));
	assert_null(strstr(d.text, "d1@"));
	dsn_free(&d);
	p.kind = BOUNCE_SUCCESS;
	build_into(&d, &p);
	assert_status_field(&d, 0, "Final-Recipient", "rfc822; v2@r.example");
	assert_null(strstr(d.text, "v1@"));
	dsn_free(&d);
	/* explicit indices: exactly those, in that order */
	size_t idx[] = { 3, 1 };
	p = params(&env, BOUNCE_FAILURE, NULL);
	p.rcpts = idx;
	p.nrcpts = 2;
	build_into(&d, &p);
	assert_status_field(&d, 0, "Final-Recipient", "rfc822; f4@r.example");
	assert_status_field(&d, 1, "Final-Recipient", "rfc822; f2@r.example");
	dsn_free(&d);
	/* nothing to report; bad index; empty list */
	size_t len;
	for (size_t i = 0; i < env.nrcpts; i++)
		env.rcpts[i].notify = QUEUE_NOTIFY_NEVER;
	p.rcpts = NULL;
	errno = 0;
	assert_null(bounce_build(&p, &len));
	assert_int_equal(errno, ENOENT);
	size_t bad = 7;
	p.rcpts = &bad;
	p.nrcpts = 1;
	errno = 0;
	assert_null(bounce_build(&p, &len));
	assert_int_equal(errno, EINVAL);
	p.nrcpts = 0;
	errno = 0;
	assert_null(bounce_build(&p, &len));
	assert_int_equal(errno, EINVAL);
	queue_env_free(&env);
}

static void bad_params_refused(void **state)
{
	(void)state;
	struct queue_env env;
	env_default(&env);
	size_t len;
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	const char *hosts[] = { NULL, "", "bad host", "evil\r\nX-Injected: 1", "a<b" };
	for (size_t i = 0; i < sizeof(hosts) / sizeof(hosts[0]); i++) {
		p.hostname = hosts[i];
		errno = 0;
		assert_null(bounce_build(&p, &len));
		assert_int_equal(errno, EINVAL);
	}
	p = params(&env, BOUNCE_FAILURE, MSG);
	p.from = "postmaster@x\r\nBcc: y@z";
	assert_null(bounce_build(&p, &len));
	p = params(&env, BOUNCE_FAILURE, MSG);
	p.kind = (enum bounce_kind)7;
	assert_null(bounce_build(&p, &len));
	p = params(&env, BOUNCE_FAILURE, MSG);
	set_str(&env.sender, "alice@example.org\r\nBcc: victim@example.net");
	errno = 0;
	assert_null(bounce_build(&p, &len));
	assert_int_equal(errno, EINVAL);
	/* UTF-8 sender without SMTPUTF8, or invalid UTF-8 with it */
	set_str(&env.sender, "jos\xc3\xa9@example.org");
	assert_null(bounce_build(&p, &len));
	env.smtputf8 = true;
	set_str(&env.sender, "jos\xc3@example.org");
	assert_null(bounce_build(&p, &len));
	p.env = NULL;
	assert_null(bounce_build(&p, &len));
	queue_env_free(&env);
}

/* ------------------------------------------------------------ hostile strings */

static void hostile_reply_and_address_stay_inside_their_lines(void **state)
{
	(void)state;
	struct queue_env env;
	env_default(&env);
	set_str(&env.rcpts[0].last_reply,
	    "550 5.1.1 a\rb\x01" "c\x7f\t\r\n\r\nSubject: injected\r\n--" BND "--\r\nd\xff\xfe");
	set_str(&env.rcpts[0].addr, "b\rob@remote.example");
	set_str(&env.rcpts[0].remote_mta, "mx.example\r\nX: y");
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	struct dsn d;
	build_into(&d, &p);
	assert_true(all_7bit(d.text, d.len));
	assert_int_equal(d.nparts, 3);
	assert_string_not_equal(d.boundary, BND);
	assert_status_field(&d, 0, "Final-Recipient", "utf-8; b\\x{0D}ob@remote.example");
	assert_status_field(&d, 0, "Remote-MTA", NULL);
	char *v = status_field(&d, 0, "Diagnostic-Code");
	assert_non_null(strstr(v, "smtp; 550 5.1.1 a b c "));
	assert_non_null(strstr(v, "Subject: injected"));
	assert_non_null(strstr(v, "d??"));
	free(v);
	/* nothing the reply said became a field of its own */
	assert_null(strstr(d.text, "\r\nSubject: injected"));
	assert_null(strstr(d.text, "\r\nX: y"));
	dsn_free(&d);
	queue_env_free(&env);
}

/* ------------------------------------------------------------ UTF-8 */

static void smtputf8_recipient_uses_global_delivery_status(void **state)
{
	(void)state;
	static const struct rcpt_spec rs[] = {
		{ "jos\xc3\xa9@ex\xc3\xa4mple.org", "utf-8;jos\\x{E9}@ex\\x{E4}mple.org", 0, Q_FAILED,
		  "mx.xn--exmple-cua.org", "550 5.1.1 unknown" },
		{ "plain@example.net", NULL, 0, Q_FAILED, NULL, "550 5.1.1 unknown" },
	};
	struct queue_env env;
	env_init(&env, "alice@example.org", rs, 2);
	env.smtputf8 = true;
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	struct dsn d;
	build_into(&d, &p);
	assert_part_type(&d, 0, "text/plain; charset=utf-8");
	assert_part_type(&d, 1, "message/global-delivery-status");
	char *v = header_get(d.parts[1].hdr, "Content-Transfer-Encoding");
	assert_string_equal(v, "8bit");
	free(v);
	assert_status_field(&d, 0, "Final-Recipient", "utf-8; jos\xc3\xa9@ex\xc3\xa4mple.org");
	assert_status_field(&d, 0, "Original-Recipient", "utf-8;jos\\x{E9}@ex\\x{E4}mple.org");
	assert_status_field(&d, 1, "Final-Recipient", "rfc822; plain@example.net");
	char *t = part_body(&d, 0);
	assert_non_null(strstr(t, "<jos\xc3\xa9@ex\xc3\xa4mple.org>: host"));
	free(t);
	assert_int_equal(bounce_body_type(d.text, d.len), QUEUE_BODY_8BITMIME);
	assert_false(bounce_smtputf8(&env));
	dsn_free(&d);
	/* a UTF-8 sender: To: carries it, and the DSN needs SMTPUTF8 */
	set_str(&env.sender, "\xc3\xa5sa@example.org");
	size_t idx = 1;
	p.rcpts = &idx;
	p.nrcpts = 1;
	build_into(&d, &p);
	assert_part_type(&d, 1, "message/global-delivery-status");
	v = header_get(d.hdr, "To");
	assert_string_equal(v, "<\xc3\xa5sa@example.org>");
	free(v);
	assert_true(bounce_smtputf8(&env));
	dsn_free(&d);
	queue_env_free(&env);
}

/* Without SMTPUTF8 (a corrupt or hand-made envelope) 8-bit addresses still
 * never go raw into the 7-bit parts: RFC 6533 utf-8-addr-xtext, '?' in text. */
static void eightbit_address_without_smtputf8_stays_7bit(void **state)
{
	(void)state;
	static const struct rcpt_spec rs[] = {
		{ "jos\xc3\xa9+x=y@example.org", "rfc822;jos\xc3\xa9@example.org", 0, Q_FAILED, NULL,
		  "550 5.1.1 jos\xc3\xa9 unknown" },
	};
	struct queue_env env;
	env_init(&env, "alice@example.org", rs, 1);
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	struct dsn d;
	build_into(&d, &p);
	assert_true(all_7bit(d.text, d.len));
	assert_part_type(&d, 1, "message/delivery-status");
	assert_status_field(&d, 0, "Final-Recipient", "utf-8; jos\\x{E9}\\x{2B}x\\x{3D}y@example.org");
	assert_status_field(&d, 0, "Original-Recipient", "utf-8;jos\\x{E9}@example.org");
	assert_status_field(&d, 0, "Diagnostic-Code", "smtp; 550 5.1.1 jos?? unknown");
	assert_int_equal(bounce_body_type(d.text, d.len), QUEUE_BODY_7BIT);
	dsn_free(&d);
	queue_env_free(&env);
}

/* Many recipients with long addresses: every line still within limits. */
static void many_recipients_all_lines_within_limits(void **state)
{
	(void)state;
	struct rcpt_spec rs[50];
	char addrs[50][80];
	for (int i = 0; i < 50; i++) {
		snprintf(addrs[i], sizeof(addrs[i]), "user%02d.with.a.rather.long.local.part@remote%02d.example", i, i);
		rs[i] = (struct rcpt_spec){ addrs[i], NULL, 0, Q_FAILED, "mx.remote.example",
			"550-5.1.1 first\r\n550 5.1.1 second" };
	}
	struct queue_env env;
	env_init(&env, "alice@example.org", rs, 50);
	struct bounce_params p = params(&env, BOUNCE_FAILURE, MSG);
	struct dsn d;
	build_into(&d, &p);
	assert_status_field(&d, 49, "Final-Recipient",
	    "rfc822; user49.with.a.rather.long.local.part@remote49.example");
	assert_status_field(&d, 49, "Diagnostic-Code", "smtp; 550 5.1.1 first second");
	dsn_free(&d);
	queue_env_free(&env);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(failure_dsn_matches_golden_bytes),
		cmocka_unit_test(structure_parses_into_three_parts),
		cmocka_unit_test(output_is_deterministic_and_seeded),
		cmocka_unit_test(ret_full_attaches_whole_message),
		cmocka_unit_test(ret_hdrs_and_unset_attach_headers_only),
		cmocka_unit_test(ret_full_over_cap_falls_back_to_headers),
		cmocka_unit_test(ret_full_unsafe_original_falls_back),
		cmocka_unit_test(delay_and_success_attach_headers_even_with_ret_full),
		cmocka_unit_test(no_original_gives_two_parts),
		cmocka_unit_test(eightbit_original_labelled),
		cmocka_unit_test(envid_and_orcpt_pass_through),
		cmocka_unit_test(multiline_reply_joined_into_one_field),
		cmocka_unit_test(long_reply_folded_and_capped),
		cmocka_unit_test(status_from_enhanced_code_or_kind),
		cmocka_unit_test(actions_subjects_and_delay_fields),
		cmocka_unit_test(boundary_never_occurs_in_content),
		cmocka_unit_test(null_sender_is_never_bounced),
		cmocka_unit_test(notify_rules_table),
		cmocka_unit_test(default_selection_by_state_and_notify),
		cmocka_unit_test(bad_params_refused),
		cmocka_unit_test(hostile_reply_and_address_stay_inside_their_lines),
		cmocka_unit_test(smtputf8_recipient_uses_global_delivery_status),
		cmocka_unit_test(eightbit_address_without_smtputf8_stays_7bit),
		cmocka_unit_test(many_recipients_all_lines_within_limits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
