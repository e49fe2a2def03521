/* test_queue.c: relay/queue.c (envelope format, durable writes, crash
 * leftovers, async submit/cancel on the aio pool). Every test runs in its own
 * mkdtemp directory; the queue is <dir>/queue. Failures are injected through
 * queue_set_fault_hook (the tests run as root, so read-only dirs prove nothing)
 * and RLIMIT_FSIZE for a real short write. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "relay/relay.h"
#include "store/store.h"
#include "tests/unit/files.h"

#define ID_A "0000000a00000001"
#define ID_B "0000000b00000002"
#define ID_C "0000000c00000003"
#define MSG "Received: from x\r\nSubject: hi\r\n\r\nbody\r\n"

/* ------------------------------------------------------------ fixture */

struct fx {
	char *dir;                   /* per-test temp dir */
	char *q;                     /* <dir>/queue */
	struct event_base *base;
	struct event *tick;          /* wakes EVLOOP_ONCE so run loops can time out */
	struct queue_req *req;       /* for cancel-inside-callback */
	int calls, error;
	bool cancel_in_cb;
};

static void noop_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
}

static int fx_setup(void **state)
{
	struct fx *fx = xcalloc(1, sizeof(*fx));
	char tmpl[] = "/tmp/postling-queue-XXXXXX";
	if (mkdtemp(tmpl) == NULL)
		return -1;
	fx->dir = xstrdup(tmpl);
	fx->q = xasprintf("%s/queue", tmpl);
	fx->base = event_base_new();
	fx->tick = event_new(fx->base, -1, EV_PERSIST, noop_cb, NULL);
	struct timeval tv = { 0, 10000 };
	event_add(fx->tick, &tv);
	*state = fx;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *fx = *state;
	queue_set_fault_hook(NULL);
	rm_tree(fx->dir);
	event_free(fx->tick);
	event_base_free(fx->base);
	free(fx->dir);
	free(fx->q);
	free(fx);
	return 0;
}

static void run_until_calls(struct fx *fx, int n)
{
	double end = util_now() + 10;
	while (fx->calls < n) {
		assert_true(util_now() < end);
		event_base_loop(fx->base, EVLOOP_ONCE);
	}
}

static void run_idle(struct fx *fx, struct aio *a)
{
	double end = util_now() + 10;
	while (aio_pending(a) > 0) {
		assert_true(util_now() < end);
		event_base_loop(fx->base, EVLOOP_ONCE);
	}
	for (int i = 0; i < 3; i++)
		event_base_loop(fx->base, EVLOOP_ONCE);
}

/* ------------------------------------------------------------ file helpers */

static int name_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The names in dir, sorted, space-separated ("" when empty or missing). */
static char *ls(const char *dir)
{
	char *names[64];
	size_t n = 0;
	DIR *d = opendir(dir);
	struct dirent *de;
	while (d != NULL && (de = readdir(d)) != NULL)
		if (de->d_name[0] != '.' && n < 64)
			names[n++] = xstrdup(de->d_name);
	if (d != NULL)
		closedir(d);
	qsort(names, n, sizeof(*names), name_cmp);
	struct buf b;
	buf_init(&b, SIZE_MAX / 2);
	for (size_t i = 0; i < n; i++) {
		buf_printf(&b, "%s%s", i > 0 ? " " : "", names[i]);
		free(names[i]);
	}
	return buf_steal(&b, NULL);
}

static void assert_ls(const char *dir, const char *want)
{
	char *got = ls(dir);
	assert_string_equal(got, want);
	free(got);
}

static char *qpath(struct fx *fx, const char *name)
{
	return xasprintf("%s/%s", fx->q, name);
}

/* ------------------------------------------------------------ envelopes */

/* Every string field an attacker or a remote server can influence: line and
 * field separators, '%', the "-" marker, controls, DEL, UTF-8 and raw 8-bit,
 * and text shaped like records of the format itself. */
static const char *const hostile[] = {
	"a b\r\nc",
	"%",
	"-",
	"%2D",
	" lead and trail ",
	"\x01\x1f\x7f\x80\xff",
	"j\xc3\xbcrgen@b\xc3\xbc" "cher.example",
	"x\nend 1\nrcpt a - - pending 0 0 - -",
	"tab\there\tand%25percent",
	"250-first line\r\n250 second line",
};
#define NHOSTILE (sizeof(hostile) / sizeof(hostile[0]))

static void env_simple(struct queue_env *env, const char *id)
{
	memset(env, 0, sizeof(*env));
	memcpy(env->id, id, QUEUE_ID_LEN + 1);
	env->sender = xstrdup("a@b.example");
	env->envid = xstrdup("");
	env->auth_user = xstrdup("");
	env->client_ip = xstrdup("192.0.2.1");
	env->helo = xstrdup("client.example");
	env->created = 1700000000;
	env->next_attempt = 1700000000;
	env->nrcpts = 1;
	env->rcpts = xcalloc(1, sizeof(*env->rcpts));
	env->rcpts[0].addr = xstrdup("c@d.example");
	env->rcpts[0].orcpt = xstrdup("");
	env->rcpts[0].last_reply = xstrdup("");
	env->rcpts[0].remote_mta = xstrdup("");
}

static void replace_str(char **p, const char *s)
{
	free(*p);
	*p = xstrdup(s);
}

/* Hostile strings in every string field (offset k rotates them); values at
 * their limits in the others. */
static void env_hostile(struct queue_env *env, const char *id, size_t k)
{
	env_simple(env, id);
	replace_str(&env->sender, hostile[k % NHOSTILE]);
	replace_str(&env->envid, hostile[(k + 1) % NHOSTILE]);
	replace_str(&env->auth_user, hostile[(k + 2) % NHOSTILE]);
	replace_str(&env->client_ip, hostile[(k + 3) % NHOSTILE]);
	replace_str(&env->helo, hostile[(k + 4) % NHOSTILE]);
	env->ret = QUEUE_RET_HDRS;
	env->body = QUEUE_BODY_BINARYMIME;
	env->smtputf8 = env->warned = true;
	env->attempts = UINT32_MAX;
	env->last_attempt = 253402300799;
	env->created = 0;
	env->rcpts = xreallocarray(env->rcpts, 2, sizeof(*env->rcpts));
	env->nrcpts = 2;
	struct queue_rcpt *r = &env->rcpts[1];
	r->addr = xstrdup(hostile[(k + 5) % NHOSTILE]);
	r->orcpt = xstrdup(hostile[(k + 6) % NHOSTILE]);
	r->last_reply = xstrdup(hostile[(k + 7) % NHOSTILE]);
	r->remote_mta = xstrdup(hostile[(k + 8) % NHOSTILE]);
	r->notify = QUEUE_NOTIFY_SUCCESS | QUEUE_NOTIFY_FAILURE | QUEUE_NOTIFY_DELAY;
	r->state = Q_FAILED;
	r->attempts = 7;
	r->updated = 1700000123;
	env->rcpts[0].notify = QUEUE_NOTIFY_NEVER;
	env->rcpts[0].state = Q_DEFERRED;
}

static void assert_rcpt_equal(const struct queue_rcpt *a, const struct queue_rcpt *b)
{
	assert_string_equal(a->addr, b->addr);
	assert_string_equal(a->orcpt, b->orcpt);
	assert_int_equal(a->notify, b->notify);
	assert_int_equal(a->state, b->state);
	assert_int_equal(a->attempts, b->attempts);
	assert_string_equal(a->last_reply, b->last_reply);
	assert_string_equal(a->remote_mta, b->remote_mta);
	assert_int_equal(a->updated, b->updated);
}

static void assert_env_equal(const struct queue_env *a, const struct queue_env *b)
{
	assert_string_equal(a->id, b->id);
	assert_string_equal(a->sender, b->sender);
	assert_int_equal(a->ret, b->ret);
	assert_string_equal(a->envid, b->envid);
	assert_int_equal(a->smtputf8, b->smtputf8);
	assert_int_equal(a->body, b->body);
	assert_string_equal(a->auth_user, b->auth_user);
	assert_string_equal(a->client_ip, b->client_ip);
	assert_string_equal(a->helo, b->helo);
	assert_int_equal(a->created, b->created);
	assert_int_equal(a->attempts, b->attempts);
	assert_int_equal(a->next_attempt, b->next_attempt);
	assert_int_equal(a->last_attempt, b->last_attempt);
	assert_int_equal(a->warned, b->warned);
	assert_int_equal(a->nrcpts, b->nrcpts);
	for (size_t i = 0; i < a->nrcpts; i++)
		assert_rcpt_equal(&a->rcpts[i], &b->rcpts[i]);
}

static void write_simple(struct fx *fx, const char *id, const char *msg)
{
	struct queue_env env;
	env_simple(&env, id);
	assert_int_equal(queue_write(fx->q, &env, msg, strlen(msg)), 0);
	queue_env_free(&env);
}

/* The text env_simple(ID_A) formats to: the format of relay.h, line by line. */
static const char simple_text[] =
	"POSTLING-QUEUE 1\n"                 /* 1 */
	"id " ID_A "\n"                      /* 2 */
	"sender a@b.example\n"               /* 3 */
	"ret -\n"                            /* 4 */
	"envid -\n"                          /* 5 */
	"smtputf8 0\n"                       /* 6 */
	"body 7BIT\n"                        /* 7 */
	"auth-user -\n"                      /* 8 */
	"client-ip 192.0.2.1\n"              /* 9 */
	"helo client.example\n"              /* 10 */
	"created 1700000000\n"               /* 11 */
	"attempts 0\n"                       /* 12 */
	"next-attempt 1700000000\n"          /* 13 */
	"last-attempt 0\n"                   /* 14 */
	"warned 0\n"                         /* 15 */
	"rcpt c@d.example - - pending 0 0 - -\n"   /* 16 */
	"end 1\n";                           /* 17 */

/* base with the first occurrence of from replaced by to[0..tolen) (malloc'ed) */
static char *mutate_in(const char *base, const char *from, const char *to, size_t tolen)
{
	const char *at = strstr(base, from);
	assert_non_null(at);
	struct buf b;
	buf_init(&b, SIZE_MAX / 2);
	buf_append(&b, base, (size_t)(at - base));
	buf_append(&b, to, tolen);
	buf_appends(&b, at + strlen(from));
	return buf_steal(&b, NULL);
}

static char *mutate(const char *from, const char *to, size_t tolen)
{
	return mutate_in(simple_text, from, to, tolen);
}

/* ------------------------------------------------------------ ids */

static void new_id_is_base32hex_time_then_random(void **state)
{
	(void)state;
	char a[QUEUE_ID_LEN + 1], b[QUEUE_ID_LEN + 1];
	time_t before = time(NULL);
	queue_new_id(a);
	queue_new_id(b);
	time_t after = time(NULL);
	assert_int_equal(strlen(a), QUEUE_ID_LEN);
	assert_true(queue_id_valid(a));
	assert_string_not_equal(a, b);
	uint64_t secs = 0;
	for (int i = 0; i < 8; i++)
		secs = secs << 5 | (uint64_t)(strchr("0123456789abcdefghijklmnopqrstuv", a[i]) -
		    "0123456789abcdefghijklmnopqrstuv");
	assert_true(secs >= (uint64_t)before && secs <= (uint64_t)after);
	/* base32hex sorts like numbers: later seconds sort later */
	assert_true(strcmp("0000000v00000000", "0000001000000000") < 0);
}

static void id_valid_rejects_paths_and_other_alphabets(void **state)
{
	(void)state;
	static const char *const bad[] = {
		"", "0000000a0000000", "0000000a000000011", "../../etc/passwd", "0000000A00000001",
		"0000000w00000001", "0000000a0000000/", "0000000a 0000001",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_false(queue_id_valid(bad[i]));
	assert_false(queue_id_valid(NULL));
	assert_true(queue_id_valid("0123456789abcdef"));
	assert_true(queue_id_valid("ghijklmnopqrstuv"));
}

/* ------------------------------------------------------------ format / parse */

static void format_writes_exact_documented_text(void **state)
{
	(void)state;
	struct queue_env env;
	size_t len;
	env_simple(&env, ID_A);
	char *text = queue_env_format(&env, &len);
	assert_string_equal(text, simple_text);
	assert_int_equal(len, strlen(simple_text));
	free(text);
	queue_env_free(&env);
}

static void format_escapes_every_unsafe_byte(void **state)
{
	(void)state;
	struct queue_env env;
	size_t len;
	env_simple(&env, ID_A);
	replace_str(&env.sender, "a b\r\n%\x7f\xc3\xa9-");
	replace_str(&env.helo, "-");
	env.rcpts[0].notify = QUEUE_NOTIFY_FAILURE | QUEUE_NOTIFY_DELAY;
	char *text = queue_env_format(&env, &len);
	assert_non_null(strstr(text, "\nsender a%20b%0D%0A%25%7F%C3%A9-\n"));
	assert_non_null(strstr(text, "\nhelo %2D\n"));
	assert_non_null(strstr(text, "\nrcpt c@d.example - FAILURE,DELAY pending "));
	free(text);
	queue_env_free(&env);
}

static void roundtrip_keeps_hostile_strings_in_every_field(void **state)
{
	struct fx *fx = *state;
	/* message bytes are kept exactly, NUL and bare CR included */
	static const char msg[] = "Received: x\r\n\r\n\0bin\xff\r";
	for (size_t k = 0; k < NHOSTILE; k++) {
		struct queue_env env, back;
		char id[QUEUE_ID_LEN + 1];
		queue_new_id(id);
		env_hostile(&env, id, k);
		assert_int_equal(queue_write(fx->q, &env, msg, sizeof(msg) - 1), 0);
		assert_int_equal(queue_read_env(fx->q, id, &back), 0);
		assert_env_equal(&env, &back);

		/* the file is printable ASCII lines: 1 magic + 14 fields + 2 rcpt + end */
		char *name = xasprintf("%s.env", id), *path = qpath(fx, name);
		size_t len, lines = 0;
		char *text = slurp(path, &len);
		for (size_t i = 0; i < len; i++) {
			unsigned char c = (unsigned char)text[i];
			assert_true(c == '\n' || (c >= 0x20 && c < 0x7f));
			lines += c == '\n';
		}
		assert_int_equal(lines, 18);
		free(text);
		free(path);
		free(name);

		char *mp = queue_msg_path(fx->q, id);
		text = slurp(mp, &len);
		assert_int_equal(len, sizeof(msg) - 1);
		assert_memory_equal(text, msg, len);
		free(text);
		free(mp);
		queue_env_free(&env);
		queue_env_free(&back);
	}
}

static void empty_and_dash_strings_stay_distinct(void **state)
{
	(void)state;
	struct queue_env env, back;
	size_t len;
	env_simple(&env, ID_A);
	replace_str(&env.sender, "");
	replace_str(&env.envid, "-");
	replace_str(&env.helo, "--");
	char *text = queue_env_format(&env, &len);
	assert_int_equal(queue_env_parse(text, len, &back, NULL), 0);
	assert_string_equal(back.sender, "");
	assert_string_equal(back.envid, "-");
	assert_string_equal(back.helo, "--");
	free(text);
	queue_env_free(&env);
	queue_env_free(&back);
}

struct bad_case {
	const char *from, *to;
	size_t line;                 /* expected *line_r */
};

static void parse_rejects_corruption_at_exact_line(void **state)
{
	(void)state;
	static const struct bad_case cases[] = {
		{ "QUEUE 1\n", "QUEUE 2\n", 1 },                      /* unknown version */
		{ "QUEUE 1\n", "QUEUE 1\r\n", 1 },                    /* CRLF */
		{ "id 0000000a", "id 0000000A", 2 },                  /* not base32hex */
		{ "id 0000000a00000001", "id 0000000a0000001", 2 },   /* short id */
		{ "sender a@b.example", "sender a%40b.example", 3 },  /* non-canonical escape */
		{ "sender a@b.example", "sender a%0ab", 3 },          /* lowercase hex */
		{ "sender a@b.example", "sender a%00b", 3 },          /* NUL */
		{ "sender a@b.example", "sender a%2", 3 },            /* cut escape */
		{ "sender a@b.example", "sender a\xc3\xa9", 3 },      /* raw 8-bit */
		{ "sender a@b.example", "sender a\x01", 3 },          /* raw control */
		{ "sender a@b.example", "sender a@b.example ", 3 },   /* empty field */
		{ "sender a@b.example", "sender  a@b.example", 3 },   /* double space */
		{ "sender a@b.example", "sender a b", 3 },            /* extra field */
		{ "sender a@b.example", "sender", 3 },                /* no value */
		{ "ret -", "ret full", 4 },                           /* names are exact */
		{ "smtputf8 0", "smtputf8 2", 6 },
		{ "body 7BIT", "body 9BIT", 7 },
		{ "auth-user -", "auth-user -\nauth-user -", 9 },     /* duplicate */
		{ "created 1700000000", "created -1", 11 },
		{ "created 1700000000", "created 253402300800", 11 }, /* after 9999 */
		{ "attempts 0", "attempts 00", 12 },                  /* leading zero */
		{ "attempts 0", "attempts 4294967296", 12 },          /* > UINT32_MAX */
		{ "attempts 0", "attempts 99999999999999999999999", 12 },
		{ "attempts 0", "attempts +1", 12 },
		{ "warned 0\n", "warned 0\ncolor red\n", 16 },         /* unknown field */
		{ "warned 0\n", "warned 0\n\n", 16 },                  /* empty line */
		{ "pending 0 0 - -", "pending 0 0 -", 16 },           /* rcpt: 8 fields */
		{ "pending 0 0 - -", "pending 0 0 - - -", 16 },       /* rcpt: 10 fields */
		{ "pending", "sent", 16 },
		{ "rcpt c@d.example", "rcpt -", 16 },                 /* empty addr */
		{ "- - pending", "- NEVER,SUCCESS pending", 16 },
		{ "- - pending", "- FAILURE,SUCCESS pending", 16 },   /* not canonical order */
		{ "- - pending", "- SUCCESS,SUCCESS pending", 16 },
		{ "- - pending", "- SUCCESS, pending", 16 },
		{ "- - pending", "- success pending", 16 },
		{ "pending 0 0", "pending 0 253402300800", 16 },
		{ "end 1\n", "end 2\n", 17 },                         /* count mismatch */
		{ "end 1\n", "end 1\nwarned 0\n", 18 },               /* after end */
		{ "end 1\n", "end 1\nx-late 1\n", 18 },
		{ "end 1\n", "end 1", 17 },                           /* torn last line */
		{ "end 1\n", "", 0 },                                 /* no end */
		{ "warned 0\n", "", 0 },                              /* missing field */
		{ "rcpt c@d.example - - pending 0 0 - -\nend 1\n", "end 0\n", 0 },   /* no rcpt */
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct queue_env env;
		size_t line = 999;
		char *text = mutate(cases[i].from, cases[i].to, strlen(cases[i].to));
		errno = 0;
		int rc = queue_env_parse(text, strlen(text), &env, &line);
		if (rc != -1 || line != cases[i].line)
			fail_msg("case %zu (%s -> %s): rc %d line %zu", i, cases[i].from, cases[i].to, rc, line);
		assert_int_equal(errno, EBADMSG);
		assert_null(env.rcpts);
		assert_null(env.sender);
		free(text);
	}
}

static void parse_rejects_nul_and_empty_input(void **state)
{
	(void)state;
	struct queue_env env;
	size_t line;
	assert_int_equal(queue_env_parse("", 0, &env, &line), -1);
	assert_int_equal(line, 1);
	char *text = mutate("helo client", "helo cl\0ient", 12);
	assert_int_equal(queue_env_parse(text, strlen(simple_text) + 1, &env, &line), -1);
	assert_int_equal(line, 10);
	free(text);
}

/* A torn file is never taken for a complete one, whatever its length. */
static void parse_rejects_every_proper_prefix(void **state)
{
	(void)state;
	struct queue_env env;
	size_t len;
	env_hostile(&env, ID_A, 3);
	char *text = queue_env_format(&env, &len);
	queue_env_free(&env);
	for (size_t n = 0; n < len; n++) {
		char *cut = xmalloc(n > 0 ? n : 1);   /* no NUL after: ASan sees over-reads */
		memcpy(cut, text, n);
		errno = 0;
		assert_int_equal(queue_env_parse(cut, n, &env, NULL), -1);
		assert_int_equal(errno, EBADMSG);
		free(cut);
	}
	assert_int_equal(queue_env_parse(text, len, &env, NULL), 0);
	queue_env_free(&env);
	free(text);
}

static void parse_ignores_x_fields_and_takes_any_field_order(void **state)
{
	(void)state;
	struct queue_env env, want;
	/* id moved after warned; x- lines with anything (even bad escapes) in them */
	static const char x[] = "x-future %zz  anything\n";
	static const char moved_id[] = "warned 0\nx-\nid " ID_A "\n";
	char *moved = mutate("id " ID_A "\n", x, strlen(x));
	char *text = mutate_in(moved, "warned 0\n", moved_id, strlen(moved_id));
	assert_int_equal(queue_env_parse(text, strlen(text), &env, NULL), 0);
	env_simple(&want, ID_A);
	assert_env_equal(&env, &want);
	queue_env_free(&env);
	queue_env_free(&want);
	free(text);
	free(moved);
}

/* ------------------------------------------------------------ write */

static void write_makes_dir_0700_and_both_files(void **state)
{
	struct fx *fx = *state;
	write_simple(fx, ID_A, MSG);
	struct stat st;
	assert_int_equal(stat(fx->q, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0700);
	assert_ls(fx->q, ID_A ".env " ID_A ".msg");
	char *p = qpath(fx, ID_A ".env");
	size_t len;
	char *text = slurp(p, &len);
	assert_string_equal(text, simple_text);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 07777, 0600);
	free(text);
	free(p);
}

static void write_rejects_invalid_env_and_creates_nothing(void **state)
{
	struct fx *fx = *state;
	struct queue_env env;
	for (int k = 0; k < 8; k++) {
		env_simple(&env, ID_A);
		switch (k) {
		case 0: env.nrcpts = 0; break;
		case 1: memcpy(env.id, "../x/0000000000000", QUEUE_ID_LEN); break;
		case 2: replace_str(&env.rcpts[0].addr, ""); break;
		case 3: env.rcpts[0].notify = QUEUE_NOTIFY_NEVER | QUEUE_NOTIFY_DELAY; break;
		case 4: env.rcpts[0].notify = 0x10; break;
		case 5: env.created = -1; break;
		case 6: env.rcpts[0].state = (enum queue_rcpt_state)4; break;
		case 7: env.ret = (enum queue_ret)3; break;
		}
		errno = 0;
		assert_int_equal(queue_write(fx->q, &env, MSG, strlen(MSG)), -1);
		assert_int_equal(errno, EINVAL);
		env.nrcpts = 1;
		queue_env_free(&env);
	}
	assert_int_equal(access(fx->q, F_OK), -1);
}

static void write_never_replaces_an_existing_entry(void **state)
{
	struct fx *fx = *state;
	struct queue_env env;
	write_simple(fx, ID_A, MSG);
	env_hostile(&env, ID_A, 0);
	errno = 0;
	assert_int_equal(queue_write(fx->q, &env, "other", 5), -1);
	assert_int_equal(errno, EEXIST);
	queue_env_free(&env);

	assert_ls(fx->q, ID_A ".env " ID_A ".msg");
	assert_int_equal(queue_read_env(fx->q, ID_A, &env), 0);
	assert_string_equal(env.sender, "a@b.example");
	queue_env_free(&env);
	char *p = queue_msg_path(fx->q, ID_A);
	char *text = slurp(p, NULL);
	assert_string_equal(text, MSG);
	free(text);
	free(p);
}

/* Fail the fail_at-th hook call (1-based); count them all. */
static int fault_at, fault_calls, fault_errno;
static char fault_seen[256];

static int fail_nth(const char *file, const char *step)
{
	fault_calls++;
	size_t n = strlen(fault_seen);
	snprintf(fault_seen + n, sizeof(fault_seen) - n, "%s%s.%s", n > 0 ? " " : "", file, step);
	return fault_calls == fault_at ? fault_errno : 0;
}

static void fault_arm(int at, int err)
{
	fault_at = at;
	fault_calls = 0;
	fault_errno = err;
	fault_seen[0] = '\0';
	queue_set_fault_hook(fail_nth);
}

static void write_failing_at_each_step_leaves_nothing(void **state)
{
	struct fx *fx = *state;
	write_simple(fx, ID_B, MSG);                   /* a neighbour that must survive */
	for (int at = 1; at <= 8; at++) {
		struct queue_env env;
		env_simple(&env, ID_A);
		fault_arm(at, at % 2 ? ENOSPC : EIO);
		errno = 0;
		assert_int_equal(queue_write(fx->q, &env, MSG, strlen(MSG)), -1);
		assert_int_equal(errno, at % 2 ? ENOSPC : EIO);
		assert_ls(fx->q, ID_B ".env " ID_B ".msg");
		queue_env_free(&env);
	}
	/* the .msg is durable (dir fsync) before the .env is begun */
	assert_string_equal(fault_seen, "msg.write msg.fsync msg.link dir.fsync env.write env.fsync env.link "
	    "dir.fsync");
	char **ids;
	size_t n;
	assert_int_equal(queue_list(fx->q, &ids, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(ids[0], ID_B);
	xfree_strv(&ids);
	fault_arm(9, EIO);
	write_simple(fx, ID_A, MSG);
	assert_int_equal(fault_calls, 8);
}

/* A real short write: RLIMIT_FSIZE makes write(2) fail with EFBIG (SIGXFSZ
 * ignored) half-way through the message. */
static void write_efbig_midway_leaves_nothing(void **state)
{
	struct fx *fx = *state;
	struct rlimit old, lim;
	struct queue_env env;
	size_t len = 1024 * 1024;
	char *big = xmalloc(len);
	memset(big, 'x', len);
	env_simple(&env, ID_A);
	assert_int_equal(getrlimit(RLIMIT_FSIZE, &old), 0);
	void (*oldsig)(int) = signal(SIGXFSZ, SIG_IGN);
	lim = old;
	lim.rlim_cur = 64 * 1024;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &lim), 0);
	errno = 0;
	int rc = queue_write(fx->q, &env, big, len);
	int err = errno;
	assert_int_equal(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, oldsig);
	assert_int_equal(rc, -1);
	assert_int_equal(err, EFBIG);
	assert_ls(fx->q, "");
	assert_int_equal(queue_write(fx->q, &env, big, len), 0);   /* and fine without the limit */
	queue_env_free(&env);
	free(big);
}

/* ------------------------------------------------------------ crash leftovers */

static void msg_without_env_is_ignored_then_cleaned(void **state)
{
	struct fx *fx = *state;
	char **ids;
	size_t n;
	write_simple(fx, ID_A, MSG);
	/* a crash between the .msg and the .env, and torn tmp files */
	static const char *const junk[] = { ID_B ".msg", ID_C ".msg.tmp", ID_A ".env.tmp", ID_C ".env.tmp" };
	for (size_t i = 0; i < 4; i++) {
		char *p = qpath(fx, junk[i]);
		write_file(p, "x", 1);
		free(p);
	}
	char *p = qpath(fx, "README");                 /* not ours: left alone */
	write_file(p, "x", 1);
	free(p);
	assert_int_equal(queue_list(fx->q, &ids, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(ids[0], ID_A);
	assert_null(ids[1]);
	xfree_strv(&ids);

	char *logf = xasprintf("%s/log", fx->dir);
	assert_int_equal(log_open(LL_INFO, logf), 0);
	assert_int_equal(queue_clean(fx->q), 0);
	log_open(LL_INFO, NULL);
	assert_ls(fx->q, ID_A ".env " ID_A ".msg README");
	char *log = slurp(logf, NULL);
	size_t lines = 0;
	for (const char *c = log; (c = strchr(c, '\n')) != NULL; c++)
		lines++;
	assert_int_equal(lines, 4);                    /* one warning per file removed */
	assert_non_null(strstr(log, "\"level\":\"warn\",\"event\":\"queue.clean\",\"dir\":\""));
	assert_non_null(strstr(log, "\"removed\":\"" ID_B ".msg\"}\n"));
	assert_non_null(strstr(log, "\"removed\":\"" ID_C ".env.tmp\"}\n"));
	assert_null(strstr(log, "README"));
	free(log);
	free(logf);
	struct queue_env env;
	assert_int_equal(queue_read_env(fx->q, ID_A, &env), 0);
	queue_env_free(&env);
}

static void clean_and_list_of_missing_dir_are_empty(void **state)
{
	struct fx *fx = *state;
	char **ids;
	size_t n = 9;
	assert_int_equal(queue_clean(fx->q), 0);
	assert_int_equal(queue_list(fx->q, &ids, &n), 0);
	assert_int_equal(n, 0);
	assert_null(ids[0]);
	xfree_strv(&ids);
}

/* ------------------------------------------------------------ update */

static void update_env_replaces_content(void **state)
{
	struct fx *fx = *state;
	struct queue_env env, back;
	write_simple(fx, ID_A, MSG);
	env_hostile(&env, ID_A, 4);
	assert_int_equal(queue_update_env(fx->q, &env), 0);
	assert_int_equal(queue_read_env(fx->q, ID_A, &back), 0);
	assert_env_equal(&env, &back);
	assert_ls(fx->q, ID_A ".env " ID_A ".msg");
	queue_env_free(&env);
	queue_env_free(&back);
}

static void update_env_failure_keeps_old_file_intact(void **state)
{
	struct fx *fx = *state;
	struct queue_env env, back;
	write_simple(fx, ID_A, MSG);
	env_hostile(&env, ID_A, 1);
	/* env.write, env.fsync, env.rename: all before the old file is replaced */
	for (int at = 1; at <= 3; at++) {
		fault_arm(at, ENOSPC);
		errno = 0;
		assert_int_equal(queue_update_env(fx->q, &env), -1);
		assert_int_equal(errno, ENOSPC);
		assert_ls(fx->q, ID_A ".env " ID_A ".msg");
		char *p = qpath(fx, ID_A ".env");
		char *text = slurp(p, NULL);
		assert_string_equal(text, simple_text);
		free(text);
		free(p);
	}
	assert_string_equal(fault_seen, "env.write env.fsync env.rename");
	/* a failing dir fsync comes after the rename: reported, new content visible */
	fault_arm(4, EIO);
	errno = 0;
	assert_int_equal(queue_update_env(fx->q, &env), -1);
	assert_int_equal(errno, EIO);
	assert_int_equal(queue_read_env(fx->q, ID_A, &back), 0);
	assert_env_equal(&env, &back);
	queue_env_free(&env);
	queue_env_free(&back);
}

static void update_env_never_recreates_a_removed_entry(void **state)
{
	struct fx *fx = *state;
	struct queue_env env;
	write_simple(fx, ID_A, MSG);
	assert_int_equal(queue_remove(fx->q, ID_A), 0);
	env_simple(&env, ID_A);
	errno = 0;
	assert_int_equal(queue_update_env(fx->q, &env), -1);
	assert_int_equal(errno, ENOENT);
	assert_ls(fx->q, "");
	queue_env_free(&env);
}

/* ------------------------------------------------------------ read, remove, list */

static void read_env_checks_id_name_and_size(void **state)
{
	struct fx *fx = *state;
	struct queue_env env;
	write_simple(fx, ID_A, MSG);
	errno = 0;
	assert_int_equal(queue_read_env(fx->q, "../queue/" ID_A, &env), -1);
	assert_int_equal(errno, EINVAL);
	assert_int_equal(queue_read_env(fx->q, ID_B, &env), -1);
	assert_int_equal(errno, ENOENT);

	/* a file copied under another id names the wrong entry */
	char *b = qpath(fx, ID_B ".env");
	write_file(b, simple_text, strlen(simple_text));
	errno = 0;
	assert_int_equal(queue_read_env(fx->q, ID_B, &env), -1);
	assert_int_equal(errno, EBADMSG);
	assert_null(env.sender);

	/* oversized: refused without parsing */
	size_t big = QUEUE_ENV_MAX_BYTES + 1;
	char *data = xmalloc(big);
	memset(data, '\n', big);
	write_file(b, data, big);
	errno = 0;
	assert_int_equal(queue_read_env(fx->q, ID_B, &env), -1);
	assert_int_equal(errno, EBADMSG);
	free(data);
	free(b);
}

static void remove_unlinks_both_then_reports_enoent(void **state)
{
	struct fx *fx = *state;
	write_simple(fx, ID_A, MSG);
	write_simple(fx, ID_B, MSG);
	assert_int_equal(queue_remove(fx->q, ID_A), 0);
	assert_ls(fx->q, ID_B ".env " ID_B ".msg");
	errno = 0;
	assert_int_equal(queue_remove(fx->q, ID_A), -1);
	assert_int_equal(errno, ENOENT);
	errno = 0;
	assert_int_equal(queue_remove(fx->q, "../" ID_B), -1);
	assert_int_equal(errno, EINVAL);
	/* an orphan .msg alone is removed too */
	char *p = qpath(fx, ID_C ".msg");
	write_file(p, "x", 1);
	free(p);
	assert_int_equal(queue_remove(fx->q, ID_C), 0);
	assert_ls(fx->q, ID_B ".env " ID_B ".msg");
}

static void list_is_sorted_and_only_regular_env_files(void **state)
{
	struct fx *fx = *state;
	static const char *const ids_in[] = {
		"0000000c00000009", ID_A, "00000010aaaaaaaa", ID_B, "0000000b00000001",
	};
	for (size_t i = 0; i < 5; i++)
		write_simple(fx, ids_in[i], MSG);
	char *d = qpath(fx, "0000000d00000000.env");       /* a directory */
	assert_int_equal(mkdir(d, 0700), 0);
	free(d);
	char *target = qpath(fx, ID_A ".env"), *link_path = qpath(fx, "0000000e00000000.env");
	assert_int_equal(symlink(target, link_path), 0);   /* a symlink */
	free(target);
	free(link_path);
	char *upper = qpath(fx, "0000000F00000000.env");   /* not an id */
	write_file(upper, "x", 1);
	free(upper);

	char **ids;
	size_t n;
	assert_int_equal(queue_list(fx->q, &ids, &n), 0);
	assert_int_equal(n, 5);
	assert_string_equal(ids[0], ID_A);
	assert_string_equal(ids[1], "0000000b00000001");
	assert_string_equal(ids[2], ID_B);
	assert_string_equal(ids[3], "0000000c00000009");
	assert_string_equal(ids[4], "00000010aaaaaaaa");
	assert_null(ids[5]);
	xfree_strv(&ids);
}

static void msg_path_and_deep_copy(void **state)
{
	(void)state;
	char *p = queue_msg_path("/var/q", ID_A);
	assert_string_equal(p, "/var/q/" ID_A ".msg");
	free(p);
	assert_null(queue_msg_path("/var/q", "../../etc/passwd"));

	struct queue_env env, copy;
	env_hostile(&env, ID_A, 2);
	free(env.helo);
	env.helo = NULL;                                   /* NULL copies as "" */
	queue_env_copy(&copy, &env);
	assert_string_equal(copy.helo, "");
	replace_str(&env.helo, "");
	assert_env_equal(&env, &copy);
	assert_ptr_not_equal(copy.sender, env.sender);
	assert_ptr_not_equal(copy.rcpts, env.rcpts);
	assert_ptr_not_equal(copy.rcpts[1].last_reply, env.rcpts[1].last_reply);
	queue_env_free(&env);
	assert_int_equal(copy.nrcpts, 2);                  /* the copy outlives the original */
	queue_env_free(&copy);
	assert_null(copy.rcpts);
}

/* ------------------------------------------------------------ async */

static void on_done(void *arg, int error)
{
	struct fx *fx = arg;
	fx->calls++;
	fx->error = error;
	if (fx->cancel_in_cb)
		queue_cancel(&fx->req);
}

static void on_done_must_not_run(void *arg, int error)
{
	(void)arg;
	fail_msg("callback after cancel (error %d)", error);
}

static void submit_calls_back_once_after_durable_write(void **state)
{
	struct fx *fx = *state;
	struct aio *a = aio_new(fx->base, 2);
	struct queue_env *env = xmalloc(sizeof(*env));
	char *msg = xstrdup(MSG);
	env_hostile(env, ID_A, 5);
	struct queue_env want;
	queue_env_copy(&want, env);

	struct queue_req *r = queue_submit(a, fx->q, env, msg, strlen(msg), on_done, fx);
	assert_non_null(r);
	assert_int_equal(fx->calls, 0);                    /* never synchronous */
	queue_env_free(env);                               /* the request has copies */
	free(env);
	memset(msg, 'X', strlen(msg));
	free(msg);
	run_until_calls(fx, 1);
	assert_int_equal(fx->error, 0);
	run_idle(fx, a);
	assert_int_equal(fx->calls, 1);

	struct queue_env back;
	assert_int_equal(queue_read_env(fx->q, ID_A, &back), 0);
	assert_env_equal(&want, &back);
	char *p = queue_msg_path(fx->q, ID_A), *text = slurp(p, NULL);
	assert_string_equal(text, MSG);
	free(text);
	free(p);
	queue_env_free(&back);
	queue_env_free(&want);
	aio_free(&a);
}

static void submit_error_arrives_on_the_reactor(void **state)
{
	struct fx *fx = *state;
	struct aio *a = aio_new(fx->base, 1);
	struct queue_env env;
	env_simple(&env, ID_A);
	env.rcpts[0].notify = 0x3;                         /* NEVER with SUCCESS */
	queue_submit(a, fx->q, &env, MSG, strlen(MSG), on_done, fx);
	assert_int_equal(fx->calls, 0);
	run_until_calls(fx, 1);
	assert_int_equal(fx->error, EINVAL);
	run_idle(fx, a);
	assert_int_equal(fx->calls, 1);
	queue_env_free(&env);
	aio_free(&a);
}

/* A hook that holds the first "msg.write" until the test opens the gate. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool armed, entered, open;
} gate = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false, false };

static int gate_hook(const char *file, const char *step)
{
	if (strcmp(file, "msg") != 0 || strcmp(step, "write") != 0)
		return 0;
	pthread_mutex_lock(&gate.mu);
	if (gate.armed) {
		gate.armed = false;
		gate.entered = true;
		pthread_cond_broadcast(&gate.cv);
		while (!gate.open)
			pthread_cond_wait(&gate.cv, &gate.mu);
	}
	pthread_mutex_unlock(&gate.mu);
	return 0;
}

static void gate_arm(void)
{
	pthread_mutex_lock(&gate.mu);
	gate.armed = true;
	gate.entered = gate.open = false;
	pthread_mutex_unlock(&gate.mu);
	queue_set_fault_hook(gate_hook);
}

static void gate_wait_entered(void)
{
	pthread_mutex_lock(&gate.mu);
	while (!gate.entered)
		pthread_cond_wait(&gate.cv, &gate.mu);
	pthread_mutex_unlock(&gate.mu);
}

static void gate_open(void)
{
	pthread_mutex_lock(&gate.mu);
	gate.open = true;
	pthread_cond_broadcast(&gate.cv);
	pthread_mutex_unlock(&gate.mu);
}

static void submit_id(struct aio *a, const char *q, const char *id, queue_done_cb cb, void *arg,
    struct queue_req **r_r)
{
	struct queue_env env;
	env_simple(&env, id);
	*r_r = queue_submit(a, q, &env, MSG, strlen(MSG), cb, arg);
	queue_env_free(&env);
}

/* Cancelled while queued: never runs. Cancelled while writing: the write
 * completes and stays queued. Neither calls back. */
static void cancel_means_no_callback_and_no_half_entry(void **state)
{
	struct fx *fx = *state;
	struct aio *a = aio_new(fx->base, 1);
	struct queue_req *ra, *rb;
	gate_arm();
	submit_id(a, fx->q, ID_A, on_done_must_not_run, fx, &ra);
	gate_wait_entered();                               /* the only worker is in A's write */
	submit_id(a, fx->q, ID_B, on_done_must_not_run, fx, &rb);
	queue_cancel(&rb);
	queue_cancel(&ra);
	assert_null(ra);
	assert_null(rb);
	queue_cancel(&ra);                                 /* NULL: nothing */
	gate_open();
	run_idle(fx, a);

	char **ids;
	size_t n;
	assert_int_equal(queue_list(fx->q, &ids, &n), 0);
	assert_int_equal(n, 1);
	assert_string_equal(ids[0], ID_A);
	xfree_strv(&ids);
	assert_ls(fx->q, ID_A ".env " ID_A ".msg");
	struct queue_env env;
	assert_int_equal(queue_read_env(fx->q, ID_A, &env), 0);
	queue_env_free(&env);
	aio_free(&a);
}

static void cancel_inside_own_callback_is_safe(void **state)
{
	struct fx *fx = *state;
	struct aio *a = aio_new(fx->base, 1);
	fx->cancel_in_cb = true;
	submit_id(a, fx->q, ID_A, on_done, fx, &fx->req);
	run_until_calls(fx, 1);
	assert_null(fx->req);
	run_idle(fx, a);
	assert_int_equal(fx->calls, 1);
	assert_int_equal(fx->error, 0);
	aio_free(&a);
}

struct counter {
	int calls, error;
};

static void count_done(void *arg, int error)
{
	struct counter *c = arg;
	c->calls++;
	c->error = error;
}

static void many_submits_each_call_back_once(void **state)
{
	struct fx *fx = *state;
	struct aio *a = aio_new(fx->base, 4);
	struct counter c[40] = { { 0, 0 } };
	char ids[40][QUEUE_ID_LEN + 1];
	struct queue_req *r;
	for (int i = 0; i < 40; i++) {
		queue_new_id(ids[i]);
		submit_id(a, fx->q, ids[i], count_done, &c[i], &r);
	}
	run_idle(fx, a);
	for (int i = 0; i < 40; i++) {
		assert_int_equal(c[i].calls, 1);
		assert_int_equal(c[i].error, 0);
	}
	char **list;
	size_t n;
	assert_int_equal(queue_list(fx->q, &list, &n), 0);
	assert_int_equal(n, 40);
	for (size_t i = 1; i < n; i++)
		assert_true(strcmp(list[i - 1], list[i]) < 0);
	xfree_strv(&list);
	aio_free(&a);
}

static void *open_gate_later(void *arg)
{
	(void)arg;
	usleep(100 * 1000);
	gate_open();
	return NULL;
}

/* aio_free with a write in progress and one still queued: the first one
 * finishes and reports 0, the other never runs and reports ECANCELED. */
static void pool_freed_first_reports_ecanceled_for_unstarted(void **state)
{
	struct fx *fx = *state;
	struct aio *a = aio_new(fx->base, 1);
	struct counter ca = { 0, -1 }, cb = { 0, -1 };
	struct queue_req *r;
	pthread_t t;
	gate_arm();
	submit_id(a, fx->q, ID_A, count_done, &ca, &r);
	gate_wait_entered();
	submit_id(a, fx->q, ID_B, count_done, &cb, &r);
	assert_int_equal(pthread_create(&t, NULL, open_gate_later, NULL), 0);
	aio_free(&a);                                      /* joins the worker, then completes */
	pthread_join(t, NULL);
	assert_int_equal(ca.calls, 1);
	assert_int_equal(ca.error, 0);
	assert_int_equal(cb.calls, 1);
	/* ECANCELED unless the worker won the race for B: then B is complete */
	if (cb.error == ECANCELED)
		assert_ls(fx->q, ID_A ".env " ID_A ".msg");
	else
		assert_int_equal(cb.error, 0);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)
	const struct CMUnitTest tests[] = {
		T(new_id_is_base32hex_time_then_random),
		T(id_valid_rejects_paths_and_other_alphabets),
		T(format_writes_exact_documented_text),
		T(format_escapes_every_unsafe_byte),
		T(roundtrip_keeps_hostile_strings_in_every_field),
		T(empty_and_dash_strings_stay_distinct),
		T(parse_rejects_corruption_at_exact_line),
		T(parse_rejects_nul_and_empty_input),
		T(parse_rejects_every_proper_prefix),
		T(parse_ignores_x_fields_and_takes_any_field_order),
		T(write_makes_dir_0700_and_both_files),
		T(write_rejects_invalid_env_and_creates_nothing),
		T(write_never_replaces_an_existing_entry),
		T(write_failing_at_each_step_leaves_nothing),
		T(write_efbig_midway_leaves_nothing),
		T(msg_without_env_is_ignored_then_cleaned),
		T(clean_and_list_of_missing_dir_are_empty),
		T(update_env_replaces_content),
		T(update_env_failure_keeps_old_file_intact),
		T(update_env_never_recreates_a_removed_entry),
		T(read_env_checks_id_name_and_size),
		T(remove_unlinks_both_then_reports_enoent),
		T(list_is_sorted_and_only_regular_env_files),
		T(msg_path_and_deep_copy),
		T(submit_calls_back_once_after_durable_write),
		T(submit_error_arrives_on_the_reactor),
		T(cancel_means_no_callback_and_no_half_entry),
		T(cancel_inside_own_callback_is_safe),
		T(many_submits_each_call_back_once),
		T(pool_freed_first_reports_ecanceled_for_unstarted),
	};
#undef T
	return cmocka_run_group_tests(tests, NULL, NULL);
}
