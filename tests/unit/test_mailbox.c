/* test_mailbox.c: store/mailbox.c and store/folder.c: the shared open folder,
 * its watchers, flags/keywords, expunge, copy/move, append, and the folder
 * operations (names, list, create, delete, rename, subscriptions, status).
 * Every test runs in its own mkdtemp data dir with a real event_base. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/buf.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "store/store.h"
#include "tests/unit/files.h"

#define HOST "mx.example.org"
#define USER "bob@example.org"

/* ------------------------------------------------------------ fixture */

struct fx {
	char *dir, *user_path;
	struct event_base *base;
	struct event *tick;          /* wakes EVLOOP_ONCE so run loops can time out */
	struct store *s;
};

static void noop_cb(evutil_socket_t fd, short what, void *arg)
{
}

static int fx_setup(void **state)
{
	struct fx *fx = xcalloc(1, sizeof(*fx));
	char tmpl[] = "/tmp/postling-mbox-XXXXXX";
	if (mkdtemp(tmpl) == NULL)
		return -1;
	fx->dir = xstrdup(tmpl);
	fx->user_path = xasprintf("%s/mail/example.org/bob", fx->dir);
	fx->base = event_base_new();
	fx->tick = event_new(fx->base, -1, EV_PERSIST, noop_cb, NULL);
	struct timeval tv = { 0, 10000 };
	event_add(fx->tick, &tv);
	fx->s = store_new(fx->base, fx->dir, HOST, 2);
	*state = fx;
	return 0;
}

static int fx_teardown(void **state)
{
	struct fx *fx = *state;
	store_free(&fx->s);
	rm_tree(fx->dir);
	event_free(fx->tick);
	event_base_free(fx->base);
	free(fx->user_path);
	free(fx->dir);
	free(fx);
	return 0;
}

static void run_until(struct fx *fx, const bool *flag)
{
	double end = util_now() + 10;
	while (!*flag) {
		assert_true(util_now() < end);
		event_base_loop(fx->base, EVLOOP_ONCE);
	}
}

/* Let pending events (watch notifications) run. */
static void run_a_bit(struct fx *fx)
{
	for (int i = 0; i < 5; i++)
		event_base_loop(fx->base, EVLOOP_NONBLOCK);
}

/* ------------------------------------------------------------ callbacks */

struct res {
	bool done;
	int error;
	struct store_mailbox *mb;
	uint32_t uidvalidity, uid;
	uint32_t src[16], dst[16];
	size_t n;
	struct store_status st;
	struct store_folder_info *list;
	size_t nlist;
	uint64_t bytes, messages;
};

static void done_cb(void *arg, int error)
{
	struct res *r = arg;
	r->done = true;
	r->error = error;
}

static void mbox_cb(void *arg, int error, struct store_mailbox *mb)
{
	struct res *r = arg;
	r->done = true;
	r->error = error;
	r->mb = mb;
}

static void append_cb(void *arg, int error, uint32_t uidvalidity, uint32_t uid)
{
	struct res *r = arg;
	r->done = true;
	r->error = error;
	r->uidvalidity = uidvalidity;
	r->uid = uid;
}

static void copy_cb(void *arg, int error, uint32_t uidvalidity, const uint32_t *src, const uint32_t *dst,
    size_t n)
{
	struct res *r = arg;
	r->done = true;
	r->error = error;
	r->uidvalidity = uidvalidity;
	r->n = n;
	assert_true(n <= 16);
	if (n > 0) {
		memcpy(r->src, src, n * sizeof(*src));
		memcpy(r->dst, dst, n * sizeof(*dst));
	}
}

static void status_cb(void *arg, int error, const struct store_status *st)
{
	struct res *r = arg;
	r->done = true;
	r->error = error;
	if (st != NULL)
		r->st = *st;
}

static void list_cb(void *arg, int error, struct store_folder_info *v, size_t n)
{
	struct res *r = arg;
	r->done = true;
	r->error = error;
	r->list = v;
	r->nlist = n;
}

static void usage_cb(void *arg, int error, uint64_t bytes, uint64_t messages)
{
	struct res *r = arg;
	r->done = true;
	r->error = error;
	r->bytes = bytes;
	r->messages = messages;
}

struct watcher {
	int calls;
	struct store_watch *w;
};

static void watch_cb(void *arg)
{
	struct watcher *w = arg;
	w->calls++;
}

/* ------------------------------------------------------------ helpers */

static struct store_mailbox *open_mb(struct fx *fx, const char *name)
{
	struct res r = { 0 };
	store_mailbox_open(fx->s, USER, name, mbox_cb, &r);
	run_until(fx, &r.done);
	assert_int_equal(r.error, 0);
	assert_non_null(r.mb);
	return r.mb;
}

static int do_done(struct fx *fx, struct store_req *req, struct res *r)
{
	assert_non_null(req);
	run_until(fx, &r->done);
	return r->error;
}

static int create(struct fx *fx, const char *name)
{
	struct res r = { 0 };
	return do_done(fx, store_folder_create(fx->s, USER, name, done_cb, &r), &r);
}

/* A message fd as IMAP APPEND hands it over (bare LFs, to be normalised). */
static int msg_fd(const char *text)
{
	char tmpl[] = "/tmp/postling-append-XXXXXX";
	int fd = mkstemp(tmpl);
	assert_true(fd != -1);
	unlink(tmpl);
	assert_int_equal(util_write_all(fd, text, strlen(text)), 0);
	return fd;
}

static uint32_t append(struct fx *fx, const char *folder, const char *text, uint32_t flags,
    const char *const *kws, size_t nkws, time_t date, int *error_r)
{
	struct res r = { 0 };
	store_append(fx->s, USER, folder, msg_fd(text), 0, flags, kws, nkws, date, append_cb, &r);
	run_until(fx, &r.done);
	if (error_r != NULL)
		*error_r = r.error;
	else
		assert_int_equal(r.error, 0);
	return r.uid;
}

static int set_flags(struct fx *fx, struct store_mailbox *mb, uint32_t uid, enum store_flag_op op, uint32_t flags,
    const char *const *kws, size_t nkws)
{
	struct res r = { 0 };
	return do_done(fx, store_mailbox_store(mb, &uid, 1, op, flags, kws, nkws, done_cb, &r), &r);
}

static char *folder_dir(struct fx *fx, const char *d)
{
	return d[0] == '\0' ? xstrdup(fx->user_path) : xasprintf("%s/%s", fx->user_path, d);
}

/* The one file in <folder>/<sub> (NULL if none), malloc'ed name. */
static char *only_file(const char *folder, const char *sub, size_t *n_r)
{
	char *path = xasprintf("%s/%s", folder, sub);
	DIR *d = opendir(path);
	free(path);
	assert_non_null(d);
	char *name = NULL;
	size_t n = 0;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		n++;
		free(name);
		name = xstrdup(de->d_name);
	}
	closedir(d);
	if (n_r != NULL)
		*n_r = n;
	return name;
}

static bool is_dir(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ------------------------------------------------------------ names */

static void names_refused_and_accepted(void **state)
{
	static const char *const bad[] = {
		"", "../x", "a/../b", "a//b", "/a", "a/", ".x", "a/.b", "a.b", "~x", "a/~b", ".", "..",
		"a\x01" "b", "a\x7f", "tab\there", "bad\xc3", "\xc0\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		if (store_name_check(bad[i]) != -1)
			fail_msg("accepted bad name #%zu", i);
	char longname[STORE_MAX_NAME + 2];
	memset(longname, 'a', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	assert_int_equal(store_name_check(longname), -1);
	/* 255 octets would make a 256-octet ".<name>" directory: 254 is the most */
	longname[STORE_MAX_NAME] = '\0';
	assert_int_equal(store_name_check(longname), -1);
	longname[STORE_MAX_NAME - 1] = '\0';
	assert_int_equal(store_name_check(longname), 0);
	/* 17 levels is one too many */
	assert_int_equal(store_name_check("a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p"), 0);
	assert_int_equal(store_name_check("a/b/c/d/e/f/g/h/i/j/k/l/m/n/o/p/q"), -1);
	/* short in UTF-8 but too long a directory once in modified UTF-7 */
	struct buf b;
	buf_init(&b, 1024);
	for (int i = 0; i < 60; i++)
		buf_appends(&b, "\xc3\xa9x");  /* "éx": 3 octets, 6 in modified UTF-7 */
	assert_true(b.len <= STORE_MAX_NAME);
	assert_int_equal(store_name_check(b.data), -1);
	buf_free(&b);
	static const char *const good[] = { "INBOX", "inbox/Sub", "Archive/2024/Z\xc3\xbcrich", "a&b", "x y", "\\odd" };
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		if (store_name_check(good[i]) != 0)
			fail_msg("refused good name #%zu", i);
	char *n = store_name_normalize("iNbOx/Sub");
	assert_string_equal(n, "INBOX/Sub");
	free(n);
	n = store_name_normalize("INBOXes");
	assert_string_equal(n, "INBOXes");
	free(n);
	assert_string_equal(store_special_use("Sent"), "\\Sent");
	assert_string_equal(store_special_use("Archive"), "\\Archive");
	assert_null(store_special_use("sent"));
	assert_null(store_special_use("Sent/x"));
}

static void folder_path_is_mutf7_maildirpp(void **state)
{
	char *p = store_folder_path("/u", "Archive/2024/Z\xc3\xbcrich");
	assert_string_equal(p, "/u/.Archive.2024.Z&APw-rich");
	free(p);
	p = store_folder_path("/u", "INBOX");
	assert_string_equal(p, "/u");
	free(p);
	p = store_folder_path("/u", "a&b");
	assert_string_equal(p, "/u/.a&-b");
	free(p);
}

/* ------------------------------------------------------------ open, share, watch */

/* What an append callback saw: the shared state, and the watcher not yet called. */
struct cb_check {
	struct store_mailbox *mb;
	struct watcher *w;
	bool done;
	uint32_t uid;
	size_t count_in_cb;
	int calls_in_cb;
};

static void check_append_cb(void *arg, int error, uint32_t uidvalidity, uint32_t uid)
{
	struct cb_check *c = arg;
	assert_int_equal(error, 0);
	c->done = true;
	c->uid = uid;
	c->count_in_cb = store_mailbox_state(c->mb)->count;
	c->calls_in_cb = c->w->calls;
}

static void open_shares_one_object_and_bad_names_fail(void **state)
{
	struct fx *fx = *state;
	struct store_mailbox *a = open_mb(fx, "INBOX");
	struct store_mailbox *b = open_mb(fx, "inbox");
	assert_ptr_equal(a, b);
	assert_string_equal(store_mailbox_name(a), "INBOX");
	const struct store_mbox_state *st = store_mailbox_state(a);
	assert_true(st->uidvalidity != 0);
	assert_int_equal(st->uidnext, 1);
	assert_int_equal(st->count, 0);
	assert_false(st->deleted);
	store_mailbox_close(&a);
	assert_null(a);
	store_mailbox_close(&b);

	struct res r = { 0 };
	store_mailbox_open(fx->s, USER, "../../etc", mbox_cb, &r);
	assert_false(r.done);                      /* errors come from the callback too */
	run_until(fx, &r.done);
	assert_int_equal(r.error, EINVAL);
	assert_null(r.mb);
	memset(&r, 0, sizeof(r));
	store_mailbox_open(fx->s, USER, "Nope", mbox_cb, &r);
	run_until(fx, &r.done);
	assert_int_equal(r.error, ENOENT);
}

static void two_watchers_see_append_store_expunge(void **state)
{
	struct fx *fx = *state;
	struct store_mailbox *mb = open_mb(fx, "INBOX");
	struct watcher w1 = { 0 }, w2 = { 0 };
	w1.w = store_mailbox_watch(mb, watch_cb, &w1);
	w2.w = store_mailbox_watch(mb, watch_cb, &w2);

	struct cb_check chk = { .mb = mb, .w = &w1 };
	store_append(fx->s, USER, "INBOX", msg_fd("Subject: a\n\nhello\n"), 0, 0, NULL, 0, 0, check_append_cb, &chk);
	run_until(fx, &chk.done);
	uint32_t uid = chk.uid;
	/* the state was there when the callback ran, the watchers not yet called */
	assert_int_equal(chk.count_in_cb, 1);
	assert_int_equal(chk.calls_in_cb, 0);
	run_a_bit(fx);
	assert_int_equal(w1.calls, 1);
	assert_int_equal(w2.calls, 1);

	uint64_t ms = store_mailbox_state(mb)->highestmodseq;
	assert_int_equal(set_flags(fx, mb, uid, STORE_FLAGS_ADD, MF_SEEN, NULL, 0), 0);
	run_a_bit(fx);
	assert_int_equal(w1.calls, 2);
	assert_int_equal(w2.calls, 2);
	const struct store_msg *m = store_mailbox_find(mb, uid);
	assert_non_null(m);
	assert_int_equal(m->flags, MF_SEEN);
	assert_true(m->modseq > ms);
	assert_int_equal(store_mailbox_state(mb)->highestmodseq, m->modseq);

	/* a change that changes nothing tells nobody */
	assert_int_equal(set_flags(fx, mb, uid, STORE_FLAGS_ADD, MF_SEEN, NULL, 0), 0);
	run_a_bit(fx);
	assert_int_equal(w1.calls, 2);

	store_mailbox_unwatch(&w2.w);
	struct res r = { 0 };
	assert_int_equal(do_done(fx, store_mailbox_expunge(mb, &uid, 1, done_cb, &r), &r), 0);
	run_a_bit(fx);
	assert_int_equal(w1.calls, 3);
	assert_int_equal(w2.calls, 2);
	assert_int_equal(store_mailbox_state(mb)->count, 0);
	size_t n;
	char *dir = folder_dir(fx, "");
	free(only_file(dir, "cur", &n));
	assert_int_equal(n, 0);
	free(dir);
	store_mailbox_unwatch(&w1.w);
	store_mailbox_close(&mb);
}

static void deliver_to_inbox_wakes_watcher(void **state)
{
	struct fx *fx = *state;
	struct store_mailbox *mb = open_mb(fx, "INBOX");
	struct watcher w = { 0 };
	w.w = store_mailbox_watch(mb, watch_cb, &w);
	char *users[] = { USER };
	struct res r = { 0 };
	const char msg[] = "Subject: hi\r\n\r\nbody\r\n";
	store_deliver(fx->s, users, NULL, 1, msg, strlen(msg), done_cb, &r);
	double start = util_now();
	run_until(fx, &r.done);
	assert_int_equal(r.error, 0);
	while (w.calls == 0 && util_now() < start + 1)
		event_base_loop(fx->base, EVLOOP_ONCE);
	assert_int_equal(w.calls, 1);              /* within a second, no poll needed */
	assert_int_equal(store_mailbox_state(mb)->count, 1);
	assert_int_equal(store_mailbox_state(mb)->msgs[0].uid, 1);
	store_mailbox_unwatch(&w.w);
	store_mailbox_close(&mb);
}

/* A watcher that unwatches the other and closes the mailbox from its callback. */
struct closer {
	struct store_mailbox *mb;
	struct watcher *other;
	struct store_watch *self;
	int calls;
};

static void closer_cb(void *arg)
{
	struct closer *c = arg;
	c->calls++;
	store_mailbox_unwatch(&c->other->w);
	store_mailbox_unwatch(&c->self);
	store_mailbox_close(&c->mb);
}

static void watcher_may_unwatch_and_close_from_its_callback(void **state)
{
	struct fx *fx = *state;
	struct store_mailbox *mb = open_mb(fx, "INBOX");
	struct store_mailbox *keep = open_mb(fx, "INBOX");
	struct watcher other = { 0 };
	struct closer c = { .mb = mb, .other = &other };
	other.w = store_mailbox_watch(mb, watch_cb, &other);
	c.self = store_mailbox_watch(mb, closer_cb, &c);   /* head: called first */
	append(fx, "INBOX", "x\n", 0, NULL, 0, 0, NULL);
	run_a_bit(fx);
	assert_int_equal(c.calls, 1);
	assert_int_equal(other.calls, 0);
	assert_null(c.mb);
	append(fx, "INBOX", "y\n", 0, NULL, 0, 0, NULL);
	run_a_bit(fx);
	assert_int_equal(c.calls, 1);
	assert_int_equal(store_mailbox_state(keep)->count, 2);
	store_mailbox_close(&keep);
}

/* ------------------------------------------------------------ flags and keywords */

static void flags_rename_file_and_survive_reopen(void **state)
{
	struct fx *fx = *state;
	struct store_mailbox *mb = open_mb(fx, "INBOX");
	uint32_t uid = append(fx, "INBOX", "Subject: f\n\nx\n", 0, NULL, 0, 0, NULL);
	const char *kws[] = { "$Forwarded", "Work" };
	assert_int_equal(set_flags(fx, mb, uid, STORE_FLAGS_ADD, MF_SEEN | MF_FLAGGED, kws, 2), 0);
	assert_int_equal(set_flags(fx, mb, uid, STORE_FLAGS_REMOVE, 0, kws, 1), 0);
	const struct store_mbox_state *st = store_mailbox_state(mb);
	assert_int_equal(st->nkeywords, 2);
	assert_string_equal(st->keywords[1], "Work");
	assert_int_equal(st->msgs[0].keywords, 2);
	size_t n;
	char *dir = folder_dir(fx, "");
	char *name = only_file(dir, "cur", &n);
	assert_int_equal(n, 1);
	assert_non_null(strstr(name, ":2,FS"));
	assert_int_equal(name[strlen(name) - 1], 'S');
	free(name);
	free(only_file(dir, "new", &n));
	assert_int_equal(n, 0);
	uint32_t uv = st->uidvalidity;
	store_mailbox_close(&mb);

	/* a new store reads it all back from disk */
	store_free(&fx->s);
	fx->s = store_new(fx->base, fx->dir, HOST, 2);
	mb = open_mb(fx, "INBOX");
	st = store_mailbox_state(mb);
	assert_int_equal(st->uidvalidity, uv);
	assert_int_equal(st->uidnext, uid + 1);
	assert_int_equal(st->count, 1);
	assert_int_equal(st->msgs[0].flags, MF_SEEN | MF_FLAGGED);
	assert_int_equal(st->msgs[0].keywords, 2);
	assert_string_equal(st->keywords[1], "Work");
	/* REPLACE drops what is not named */
	assert_int_equal(set_flags(fx, mb, uid, STORE_FLAGS_REPLACE, MF_DRAFT, NULL, 0), 0);
	assert_int_equal(store_mailbox_find(mb, uid)->flags, MF_DRAFT);
	assert_int_equal(store_mailbox_find(mb, uid)->keywords, 0);
	name = only_file(dir, "cur", &n);
	assert_non_null(strstr(name, ":2,D"));
	assert_int_equal(name[strlen(name) - 1], 'D');
	free(name);
	free(dir);
	store_mailbox_close(&mb);
}

static void keywords_up_to_the_limit_then_enospc(void **state)
{
	struct fx *fx = *state;
	struct store_mailbox *mb = open_mb(fx, "INBOX");
	uint32_t uid = append(fx, "INBOX", "k\n", 0, NULL, 0, 0, NULL);
	char names[STORE_MAX_KEYWORDS + 1][16];
	const char *kws[STORE_MAX_KEYWORDS + 1];
	for (int i = 0; i <= STORE_MAX_KEYWORDS; i++) {
		snprintf(names[i], sizeof(names[i]), "kw%d", i);
		kws[i] = names[i];
	}
	assert_int_equal(set_flags(fx, mb, uid, STORE_FLAGS_ADD, 0, kws, STORE_MAX_KEYWORDS), 0);
	assert_int_equal(store_mailbox_state(mb)->nkeywords, STORE_MAX_KEYWORDS);
	assert_int_equal(store_mailbox_find(mb, uid)->keywords, UINT64_MAX);
	uint64_t ms = store_mailbox_state(mb)->highestmodseq;
	assert_int_equal(set_flags(fx, mb, uid, STORE_FLAGS_ADD, MF_SEEN, &kws[STORE_MAX_KEYWORDS], 1), ENOSPC);
	assert_int_equal(store_mailbox_state(mb)->highestmodseq, ms);   /* nothing changed */
	assert_int_equal(store_mailbox_find(mb, uid)->flags, 0);
	const char *bad = "a(b";
	assert_int_equal(set_flags(fx, mb, uid, STORE_FLAGS_ADD, 0, &bad, 1), EINVAL);
	/* and the append path refuses too */
	int err;
	append(fx, "INBOX", "k2\n", 0, &kws[STORE_MAX_KEYWORDS], 1, 0, &err);
	assert_int_equal(err, ENOSPC);
	assert_int_equal(store_mailbox_state(mb)->count, 1);
	store_mailbox_close(&mb);
}

/* ------------------------------------------------------------ copy, move, append */

static void copy_and_move_report_uid_pairs(void **state)
{
	struct fx *fx = *state;
	struct store_mailbox *mb = open_mb(fx, "INBOX");
	const char *kw = "Work";
	uint32_t u1 = append(fx, "INBOX", "one\n", MF_SEEN, &kw, 1, 1600000000, NULL);
	uint32_t u2 = append(fx, "INBOX", "two\n", 0, NULL, 0, 0, NULL);
	uint32_t u3 = append(fx, "INBOX", "three\n", MF_FLAGGED, NULL, 0, 0, NULL);
	struct store_mailbox *trash = open_mb(fx, "Trash");
	struct watcher w = { 0 };
	w.w = store_mailbox_watch(trash, watch_cb, &w);

	uint32_t uids[] = { u3, u1, 999 };          /* unsorted, one absent */
	struct res r = { 0 };
	store_mailbox_copy(mb, uids, 3, "Trash", false, copy_cb, &r);
	run_until(fx, &r.done);
	assert_int_equal(r.error, 0);
	assert_int_equal(r.n, 2);
	assert_int_equal(r.src[0], u1);
	assert_int_equal(r.src[1], u3);
	assert_int_equal(r.dst[0], 1);
	assert_int_equal(r.dst[1], 2);
	assert_int_equal(r.uidvalidity, store_mailbox_state(trash)->uidvalidity);
	/* the target's shared object learnt of them before the callback */
	const struct store_mbox_state *ts = store_mailbox_state(trash);
	assert_int_equal(ts->count, 2);
	assert_int_equal(ts->msgs[0].flags, MF_SEEN);
	assert_int_equal(ts->msgs[0].internal_date, 1600000000);
	assert_int_equal(ts->nkeywords, 1);
	assert_string_equal(ts->keywords[0], "Work");
	assert_int_equal(ts->msgs[0].keywords, 1);
	assert_int_equal(ts->msgs[1].flags, MF_FLAGGED);
	assert_int_equal(store_mailbox_state(mb)->count, 3);
	run_a_bit(fx);
	assert_int_equal(w.calls, 1);

	memset(&r, 0, sizeof(r));
	store_mailbox_copy(mb, &u2, 1, "Trash", true, copy_cb, &r);
	run_until(fx, &r.done);
	assert_int_equal(r.error, 0);
	assert_int_equal(r.n, 1);
	assert_int_equal(r.src[0], u2);
	assert_int_equal(r.dst[0], 3);
	assert_int_equal(store_mailbox_state(mb)->count, 2);
	assert_null(store_mailbox_find(mb, u2));
	assert_int_equal(store_mailbox_state(trash)->count, 3);

	memset(&r, 0, sizeof(r));
	store_mailbox_copy(mb, &u1, 1, "NoSuch", false, copy_cb, &r);
	run_until(fx, &r.done);
	assert_int_equal(r.error, ENOENT);          /* TRYCREATE */
	store_mailbox_unwatch(&w.w);
	store_mailbox_close(&trash);
	store_mailbox_close(&mb);
}

static void append_sets_flags_date_and_crlf(void **state)
{
	struct fx *fx = *state;
	assert_int_equal(create(fx, "Drafts/Old"), 0);
	struct res r = { 0 };
	const char *kw = "$MDNSent";
	store_append(fx->s, USER, "Drafts/Old", msg_fd("Subject: d\n\nbody\n"), 0, MF_DRAFT | MF_SEEN, &kw, 1,
	    1500000000, append_cb, &r);
	run_until(fx, &r.done);
	assert_int_equal(r.error, 0);
	assert_int_equal(r.uid, 1);
	char *dir = folder_dir(fx, ".Drafts.Old");
	size_t n;
	char *name = only_file(dir, "cur", &n);
	assert_int_equal(n, 1);
	assert_non_null(strstr(name, ",S=20:2,DS"));
	char *full = xasprintf("%s/cur/%s", dir, name);
	struct stat st;
	assert_int_equal(stat(full, &st), 0);
	assert_int_equal(st.st_size, 20);           /* "Subject: d\r\n\r\nbody\r\n" */
	assert_int_equal(st.st_mtime, 1500000000);
	struct store_mailbox *mb = open_mb(fx, "Drafts/Old");
	assert_int_equal(store_mailbox_state(mb)->uidvalidity, r.uidvalidity);
	const struct store_msg *m = store_mailbox_find(mb, 1);
	assert_int_equal(m->internal_date, 1500000000);
	assert_int_equal(m->flags, MF_DRAFT | MF_SEEN);
	assert_int_equal(m->size, 20);
	assert_int_equal(m->keywords, 1);
	store_mailbox_close(&mb);

	memset(&r, 0, sizeof(r));
	store_append(fx->s, USER, "Drafts/Old", msg_fd("0123456789\n"), 5, 0, NULL, 0, 0, append_cb, &r);
	run_until(fx, &r.done);
	assert_int_equal(r.error, EFBIG);
	int err;
	append(fx, "Nope", "x\n", 0, NULL, 0, 0, &err);
	assert_int_equal(err, ENOENT);
	append(fx, "a//b", "x\n", 0, NULL, 0, 0, &err);
	assert_int_equal(err, EINVAL);
	free(only_file(dir, "cur", &n));
	assert_int_equal(n, 1);                     /* the failures left nothing */
	free(only_file(dir, "tmp", &n));
	assert_int_equal(n, 0);
	free(full), free(name), free(dir);
}

/* ------------------------------------------------------------ status, usage, uid stability */

static void status_counts_open_and_closed(void **state)
{
	struct fx *fx = *state;
	append(fx, "INBOX", "a\n", MF_SEEN, NULL, 0, 0, NULL);
	append(fx, "INBOX", "bb\n", MF_TRASHED, NULL, 0, 0, NULL);
	append(fx, "INBOX", "ccc\n", 0, NULL, 0, 0, NULL);
	struct res r = { 0 };
	store_folder_status(fx->s, USER, "INBOX", status_cb, &r);
	run_until(fx, &r.done);
	assert_int_equal(r.error, 0);
	assert_int_equal(r.st.messages, 3);
	assert_int_equal(r.st.unseen, 2);
	assert_int_equal(r.st.deleted, 1);
	assert_int_equal(r.st.recent, 3);
	assert_int_equal(r.st.uidnext, 4);
	assert_int_equal(r.st.size, 3 + 4 + 5);
	struct store_status closed = r.st;

	struct store_mailbox *mb = open_mb(fx, "INBOX");
	assert_int_equal(store_mailbox_claim_recent(mb), 1);
	assert_int_equal(store_mailbox_claim_recent(mb), 4);   /* nothing recent now */
	memset(&r, 0, sizeof(r));
	store_folder_status(fx->s, USER, "inbox", status_cb, &r);
	assert_false(r.done);
	run_until(fx, &r.done);
	assert_int_equal(r.st.messages, 3);
	assert_int_equal(r.st.recent, 0);
	assert_int_equal(r.st.uidvalidity, closed.uidvalidity);
	assert_int_equal(r.st.highestmodseq, closed.highestmodseq);
	append(fx, "INBOX", "d\n", 0, NULL, 0, 0, NULL);
	assert_int_equal(store_mailbox_claim_recent(mb), 4);
	store_mailbox_close(&mb);

	memset(&r, 0, sizeof(r));
	store_folder_status(fx->s, USER, "Nope", status_cb, &r);
	run_until(fx, &r.done);
	assert_int_equal(r.error, ENOENT);
	memset(&r, 0, sizeof(r));
	store_user_usage(fx->s, USER, usage_cb, &r);
	run_until(fx, &r.done);
	assert_int_equal(r.error, 0);
	assert_int_equal(r.messages, 4);
	assert_int_equal(r.bytes, 3 + 4 + 5 + 3);
}

static void uidvalidity_and_uidnext_stable_across_reopen(void **state)
{
	struct fx *fx = *state;
	struct store_mailbox *mb = open_mb(fx, "Junk");
	uint32_t uv = store_mailbox_state(mb)->uidvalidity;
	append(fx, "Junk", "1\n", 0, NULL, 0, 0, NULL);
	uint32_t u2 = append(fx, "Junk", "2\n", 0, NULL, 0, 0, NULL);
	struct res r = { 0 };
	assert_int_equal(do_done(fx, store_mailbox_expunge(mb, &u2, 1, done_cb, &r), &r), 0);
	store_mailbox_close(&mb);
	store_free(&fx->s);
	fx->s = store_new(fx->base, fx->dir, HOST, 2);
	mb = open_mb(fx, "Junk");
	assert_int_equal(store_mailbox_state(mb)->uidvalidity, uv);
	assert_int_equal(store_mailbox_state(mb)->uidnext, 3);   /* the expunged UID is never reused */
	assert_int_equal(append(fx, "Junk", "3\n", 0, NULL, 0, 0, NULL), 3);
	store_mailbox_close(&mb);
}

/* ------------------------------------------------------------ folders */

static struct store_folder_info *list(struct fx *fx, size_t *n_r)
{
	struct res r = { 0 };
	store_folder_list(fx->s, USER, list_cb, &r);
	run_until(fx, &r.done);
	assert_int_equal(r.error, 0);
	*n_r = r.nlist;
	return r.list;
}

static const struct store_folder_info *find_info(const struct store_folder_info *v, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i].name, name) == 0)
			return &v[i];
	return NULL;
}

static void new_account_lists_default_folders_subscribed(void **state)
{
	struct fx *fx = *state;
	size_t n;
	struct store_folder_info *v = list(fx, &n);
	static const char *const want[] = { "INBOX", "Archive", "Drafts", "Junk", "Sent", "Trash" };
	assert_int_equal(n, 6);
	for (size_t i = 0; i < n; i++) {
		assert_string_equal(v[i].name, want[i]);
		assert_true(v[i].exists);
		assert_true(v[i].subscribed);
		assert_false(v[i].has_children);
	}
	assert_null(v[0].special_use);
	assert_string_equal(v[4].special_use, "\\Sent");
	store_folder_list_free(v, n);
	char *subs = xasprintf("%s/subscriptions", fx->user_path);
	assert_true(access(subs, F_OK) == 0);
	free(subs);
}

static void create_delete_with_children_and_mutf7(void **state)
{
	struct fx *fx = *state;
	assert_int_equal(create(fx, "Archive/2024/Z\xc3\xbcrich"), 0);
	char *d = folder_dir(fx, ".Archive.2024.Z&APw-rich");
	assert_true(is_dir(d));
	char *marker = xasprintf("%s/maildirfolder", d);
	assert_true(access(marker, F_OK) == 0);
	free(marker), free(d);
	d = folder_dir(fx, ".Archive.2024");
	assert_true(is_dir(d));                     /* parent made */
	free(d);
	assert_int_equal(create(fx, "Archive/2024/Z\xc3\xbcrich"), EEXIST);
	assert_int_equal(create(fx, "INBOX"), EEXIST);
	assert_int_equal(create(fx, "a/../b"), EINVAL);
	assert_int_equal(create(fx, "inbox/Sub"), 0);
	d = folder_dir(fx, ".INBOX.Sub");
	assert_true(is_dir(d));
	free(d);

	size_t n;
	struct store_folder_info *v = list(fx, &n);
	assert_string_equal(v[0].name, "INBOX");
	assert_true(v[0].has_children);
	const struct store_folder_info *a = find_info(v, n, "Archive");
	assert_true(a->has_children);
	assert_true(a[1].exists);
	assert_string_equal(a[1].name, "Archive/2024");   /* children right after their parent */
	assert_string_equal(a[2].name, "Archive/2024/Z\xc3\xbcrich");
	assert_false(a[2].has_children);
	store_folder_list_free(v, n);

	struct res r = { 0 };
	assert_int_equal(do_done(fx, store_folder_delete(fx->s, USER, "Archive/2024", done_cb, &r), &r), ENOTEMPTY);
	memset(&r, 0, sizeof(r));
	assert_int_equal(do_done(fx, store_folder_delete(fx->s, USER, "INBOX", done_cb, &r), &r), EPERM);
	memset(&r, 0, sizeof(r));
	assert_int_equal(do_done(fx, store_folder_delete(fx->s, USER, "Nope", done_cb, &r), &r), ENOENT);

	/* an open shared mailbox of a deleted folder is marked and its watchers told */
	append(fx, "Archive/2024/Z\xc3\xbcrich", "x\n", 0, NULL, 0, 0, NULL);
	struct store_mailbox *mb = open_mb(fx, "Archive/2024/Z\xc3\xbcrich");
	struct watcher w = { 0 };
	w.w = store_mailbox_watch(mb, watch_cb, &w);
	memset(&r, 0, sizeof(r));
	assert_int_equal(do_done(fx, store_folder_delete(fx->s, USER, "Archive/2024/Z\xc3\xbcrich", done_cb, &r), &r), 0);
	assert_true(store_mailbox_state(mb)->deleted);
	run_a_bit(fx);
	assert_int_equal(w.calls, 1);
	d = folder_dir(fx, ".Archive.2024.Z&APw-rich");
	assert_false(is_dir(d));
	free(d);
	memset(&r, 0, sizeof(r));
	assert_int_equal(do_done(fx, store_folder_delete(fx->s, USER, "Archive/2024", done_cb, &r), &r), 0);
	/* nothing of the deleted folders is left, not even a hidden name */
	DIR *dir = opendir(fx->user_path);
	struct dirent *de;
	while ((de = readdir(dir)) != NULL)
		assert_null(strstr(de->d_name, "2024"));
	closedir(dir);
	/* a fresh folder of the same name is a new object */
	assert_int_equal(create(fx, "Archive/2024/Z\xc3\xbcrich"), 0);
	struct store_mailbox *mb2 = open_mb(fx, "Archive/2024/Z\xc3\xbcrich");
	assert_ptr_not_equal(mb2, mb);
	assert_int_equal(store_mailbox_state(mb2)->count, 0);
	store_mailbox_close(&mb2);
	store_mailbox_unwatch(&w.w);
	store_mailbox_close(&mb);
}

static void rename_moves_children_and_inbox_moves_messages(void **state)
{
	struct fx *fx = *state;
	assert_int_equal(create(fx, "Work/Old"), 0);
	append(fx, "Work/Old", "old\n", MF_SEEN, NULL, 0, 0, NULL);
	struct store_mailbox *old = open_mb(fx, "Work/Old");
	struct res r = { 0 };
	assert_int_equal(do_done(fx, store_folder_rename(fx->s, USER, "Work", "Jobs/Past", done_cb, &r), &r), 0);
	assert_true(store_mailbox_state(old)->deleted);
	char *d = folder_dir(fx, ".Jobs.Past.Old");
	assert_true(is_dir(d));
	free(d);
	d = folder_dir(fx, ".Work");
	assert_false(is_dir(d));
	free(d);
	struct store_mailbox *moved = open_mb(fx, "Jobs/Past/Old");
	assert_int_equal(store_mailbox_state(moved)->count, 1);
	store_mailbox_close(&moved);
	store_mailbox_close(&old);
	memset(&r, 0, sizeof(r));
	assert_int_equal(do_done(fx, store_folder_rename(fx->s, USER, "Jobs", "Sent", done_cb, &r), &r), EEXIST);
	memset(&r, 0, sizeof(r));
	assert_int_equal(do_done(fx, store_folder_rename(fx->s, USER, "Jobs", "Jobs/In", done_cb, &r), &r), EINVAL);
	memset(&r, 0, sizeof(r));
	assert_int_equal(do_done(fx, store_folder_rename(fx->s, USER, "Nope", "X", done_cb, &r), &r), ENOENT);
	memset(&r, 0, sizeof(r));
	assert_int_equal(do_done(fx, store_folder_rename(fx->s, USER, "Jobs", "x/../y", done_cb, &r), &r), EINVAL);

	/* INBOX: the messages move (new UIDs), INBOX stays, empty */
	const char *kw = "Work";
	append(fx, "INBOX", "1\n", MF_SEEN, &kw, 1, 0, NULL);
	append(fx, "INBOX", "2\n", 0, NULL, 0, 0, NULL);
	struct store_mailbox *in = open_mb(fx, "INBOX");
	struct watcher w = { 0 };
	w.w = store_mailbox_watch(in, watch_cb, &w);
	memset(&r, 0, sizeof(r));
	assert_int_equal(do_done(fx, store_folder_rename(fx->s, USER, "inbox", "Old Mail", done_cb, &r), &r), 0);
	assert_false(store_mailbox_state(in)->deleted);
	assert_int_equal(store_mailbox_state(in)->count, 0);
	assert_int_equal(store_mailbox_state(in)->uidnext, 3);
	run_a_bit(fx);
	assert_int_equal(w.calls, 1);
	struct store_mailbox *om = open_mb(fx, "Old Mail");
	const struct store_mbox_state *st = store_mailbox_state(om);
	assert_int_equal(st->count, 2);
	assert_int_equal(st->msgs[0].uid, 1);
	assert_int_equal(st->msgs[0].flags, MF_SEEN);
	assert_int_equal(st->msgs[0].keywords, 1);
	assert_string_equal(st->keywords[0], "Work");
	store_mailbox_close(&om);
	store_mailbox_unwatch(&w.w);
	store_mailbox_close(&in);
}

static void subscriptions_add_remove_and_nonexistent(void **state)
{
	struct fx *fx = *state;
	size_t n;
	struct store_folder_info *first = list(fx, &n);   /* makes the account */
	store_folder_list_free(first, n);
	struct res r = { 0 };
	assert_int_equal(do_done(fx, store_folder_subscribe(fx->s, USER, "Later/Maybe", true, done_cb, &r), &r), 0);
	memset(&r, 0, sizeof(r));
	assert_int_equal(do_done(fx, store_folder_subscribe(fx->s, USER, "Junk", false, done_cb, &r), &r), 0);
	memset(&r, 0, sizeof(r));
	assert_int_equal(do_done(fx, store_folder_subscribe(fx->s, USER, "a//b", true, done_cb, &r), &r), EINVAL);
	struct store_folder_info *v = list(fx, &n);
	const struct store_folder_info *f = find_info(v, n, "Later/Maybe");
	assert_non_null(f);
	assert_false(f->exists);
	assert_true(f->subscribed);
	assert_false(find_info(v, n, "Junk")->subscribed);
	assert_true(find_info(v, n, "Junk")->exists);
	assert_true(find_info(v, n, "Sent")->subscribed);
	store_folder_list_free(v, n);
	char *file = xasprintf("%s/subscriptions", fx->user_path);
	int fd = open(file, O_RDONLY);
	char buf[256] = { 0 };
	assert_true(read(fd, buf, sizeof(buf) - 1) > 0);
	close(fd);
	assert_string_equal(buf, "INBOX\nSent\nDrafts\nTrash\nArchive\nLater/Maybe\n");
	free(file);
}

/* ------------------------------------------------------------ cancellation and teardown */

struct self_cancel {
	struct store_req *req;
	int calls;
};

static void self_cancel_cb(void *arg, int error, uint32_t uidvalidity, uint32_t uid)
{
	struct self_cancel *c = arg;
	c->calls++;
	store_cancel(&c->req);
}

static void never_cb(void *arg, int error)
{
	fail_msg("callback after cancel");
}

static void never_mbox_cb(void *arg, int error, struct store_mailbox *mb)
{
	fail_msg("callback after cancel");
}

static void cancel_from_callback_and_in_flight(void **state)
{
	struct fx *fx = *state;
	struct self_cancel c = { 0 };
	c.req = store_append(fx->s, USER, "INBOX", msg_fd("x\n"), 0, 0, NULL, 0, 0, self_cancel_cb, &c);
	struct store_mailbox *mb = open_mb(fx, "INBOX");
	assert_int_equal(c.calls, 1);
	assert_null(c.req);

	/* queued behind one another on the folder: cancel them all; the state
	 * still follows what the jobs did */
	uint32_t uid = 1;
	struct store_req *a = store_mailbox_store(mb, &uid, 1, STORE_FLAGS_ADD, MF_SEEN, NULL, 0, never_cb, NULL);
	struct store_req *b = store_mailbox_expunge(mb, &uid, 1, never_cb, NULL);
	struct store_req *o = store_mailbox_open(fx->s, USER, "INBOX", never_mbox_cb, NULL);
	struct res r = { 0 };
	store_mailbox_sync(mb, done_cb, &r);
	store_cancel(&b);
	store_cancel(&a);
	store_cancel(&o);
	assert_null(a);
	run_until(fx, &r.done);
	assert_int_equal(r.error, 0);
	run_a_bit(fx);
	assert_int_equal(store_mailbox_state(mb)->count, 1);   /* the expunge was cancelled before it ran */
	/* close with a job in flight: the object lives until the job is done */
	struct res r2 = { 0 };
	struct store_req *s2 = store_mailbox_sync(mb, done_cb, &r2);
	store_mailbox_close(&mb);
	store_cancel(&s2);
	for (int i = 0; i < 20; i++)
		event_base_loop(fx->base, EVLOOP_ONCE);
	assert_false(r2.done);
}

static void store_free_with_open_mailbox_and_jobs(void **state)
{
	struct fx *fx = *state;
	struct store_mailbox *mb = open_mb(fx, "INBOX");
	struct store_mailbox *trash = open_mb(fx, "Trash");
	struct watcher w = { 0 };
	w.w = store_mailbox_watch(mb, watch_cb, &w);
	append(fx, "INBOX", "x\n", 0, NULL, 0, 0, NULL);
	int calls = w.calls;
	uint32_t uid = 1;
	store_mailbox_store(mb, &uid, 1, STORE_FLAGS_ADD, MF_SEEN, NULL, 0, never_cb, NULL);
	store_mailbox_copy(mb, &uid, 1, "Trash", false, NULL, NULL);
	store_folder_list(fx->s, USER, NULL, NULL);
	char *users[] = { USER };
	store_deliver(fx->s, users, NULL, 1, "y\r\n", 3, never_cb, NULL);
	store_free(&fx->s);                         /* frees mb, trash and the watch (ASan: no leak) */
	assert_null(fx->s);
	run_a_bit(fx);
	assert_int_equal(w.calls, calls);           /* nothing after the store is gone */
	(void)trash;
}

/* ------------------------------------------------------------ main */

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)
	const struct CMUnitTest tests[] = {
		T(names_refused_and_accepted),
		T(folder_path_is_mutf7_maildirpp),
		T(open_shares_one_object_and_bad_names_fail),
		T(two_watchers_see_append_store_expunge),
		T(deliver_to_inbox_wakes_watcher),
		T(watcher_may_unwatch_and_close_from_its_callback),
		T(flags_rename_file_and_survive_reopen),
		T(keywords_up_to_the_limit_then_enospc),
		T(copy_and_move_report_uid_pairs),
		T(append_sets_flags_date_and_crlf),
		T(status_counts_open_and_closed),
		T(uidvalidity_and_uidnext_stable_across_reopen),
		T(new_account_lists_default_folders_subscribed),
		T(create_delete_with_children_and_mutf7),
		T(rename_moves_children_and_inbox_moves_messages),
		T(subscriptions_add_remove_and_nonexistent),
		T(cancel_from_callback_and_in_flight),
		T(store_free_with_open_mailbox_and_jobs),
	};
#undef T
	return cmocka_run_group_tests(tests, NULL, NULL);
}
