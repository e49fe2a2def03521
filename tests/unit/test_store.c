/* test_store.c: store/ (aio pool, Maildir, index, async store API).
 * Every test runs in its own mkdtemp directory with a real event_base. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "store/store.h"
#include "tests/unit/files.h"

#define HOST "mx.example.org"

/* ------------------------------------------------------------ fixture */

struct fx {
	char *dir;                   /* per-test temp dir, removed in teardown */
	struct event_base *base;
	struct event *tick;          /* wakes EVLOOP_ONCE so run loops can time out */
};

static void noop_cb(evutil_socket_t fd, short what, void *arg)
{
}

static int fx_setup(void **state)
{
	struct fx *fx = xcalloc(1, sizeof(*fx));
	char tmpl[] = "/tmp/postling-store-XXXXXX";
	if (mkdtemp(tmpl) == NULL)
		return -1;
	fx->dir = xstrdup(tmpl);
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
	rm_tree(fx->dir);
	event_free(fx->tick);
	event_base_free(fx->base);
	free(fx->dir);
	free(fx);
	return 0;
}

/* Run the reactor until *flag, failing the test after 10 s. */
static void run_until(struct fx *fx, const bool *flag)
{
	double end = util_now() + 10;
	while (!*flag) {
		assert_true(util_now() < end);
		event_base_loop(fx->base, EVLOOP_ONCE);
	}
}

/* Run until the pool has nothing left, then a few more passes. */
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

static char *path_join(const char *a, const char *b)
{
	return xasprintf("%s/%s", a, b);
}

/* Entries of dir not starting with '.'; *name_r = the last one seen (malloc'ed). */
static size_t count_dir(const char *dir, char **name_r)
{
	DIR *d = opendir(dir);
	size_t n = 0;
	struct dirent *de;
	assert_non_null(d);
	if (name_r != NULL)
		*name_r = NULL;
	while ((de = readdir(d)) != NULL) {
		if (de->d_name[0] == '.')
			continue;
		n++;
		if (name_r != NULL) {
			free(*name_r);
			*name_r = xstrdup(de->d_name);
		}
	}
	closedir(d);
	return n;
}

static size_t count_sub(const char *folder, const char *sub)
{
	char *d = path_join(folder, sub);
	size_t n = count_dir(d, NULL);
	free(d);
	return n;
}

static bool has_prefix_entry(const char *dir, const char *prefix)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	bool found = false;
	while (d != NULL && (de = readdir(d)) != NULL)
		found |= strncmp(de->d_name, prefix, strlen(prefix)) == 0;
	if (d != NULL)
		closedir(d);
	return found;
}

static mode_t mode_of(const char *path)
{
	struct stat st;
	assert_int_equal(lstat(path, &st), 0);
	return st.st_mode & 07777;
}

static void set_mtime(const char *path, time_t t)
{
	struct timespec ts[2] = { { t, 0 }, { t, 0 } };
	assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

/* A Maildir for alice under fx->dir, returned malloc'ed. */
static char *make_box(struct fx *fx)
{
	char *up = maildir_user_path(fx->dir, "alice@example.org");
	assert_non_null(up);
	assert_int_equal(maildir_create(up), 0);
	return up;
}

static void deliver(const char *folder, const char *text)
{
	uint64_t size;
	assert_int_equal(maildir_deliver_buf(folder, HOST, text, strlen(text), &size), 0);
}

/* ------------------------------------------------------------ maildir: paths */

static void user_path_accepts_and_lowercases(void **state)
{
	static const struct { const char *addr, *rel; } ok[] = {
		{ "alice@example.org", "mail/example.org/alice" },
		{ "Alice@Example.ORG", "mail/example.org/alice" },
		{ "bob+tag@example.org", "mail/example.org/bob+tag" },
		{ "first.last@sub.example.org", "mail/sub.example.org/first.last" },
		{ "o'neil@example.org", "mail/example.org/o'neil" },
		{ "J\xc3\xb6rg@example.de", "mail/example.de/j\xc3\xb6rg" },
	};
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		char *p = maildir_user_path("/data", ok[i].addr);
		char *want = xasprintf("/data/%s", ok[i].rel);
		assert_non_null(p);
		assert_string_equal(p, want);
		free(p);
		free(want);
	}
}

static void user_path_rejects_unsafe(void **state)
{
	static const char *const bad[] = {
		"", "@", "alice", "alice@", "@example.org", "a@b@example.org",
		"../alice@example.org", "..@example.org", ".alice@example.org", "alice@.example.org",
		"alice@..", "al/ice@example.org", "alice@exa/mple.org", "al\\ice@example.org",
		"alice@example\\org", "a..b@example.org", "alice@example..org", "al\nice@example.org",
		"alice@example.org\r", "al\x7f" "ice@example.org", "al\tice@example.org",
		"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.org", /* 65 */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *p = maildir_user_path("/data", bad[i]);
		if (p != NULL)
			fail_msg("accepted unsafe address #%zu -> %s", i, p);
	}
	assert_null(maildir_user_path("/data", NULL));
	assert_null(maildir_user_path(NULL, "alice@example.org"));
}

static void folder_path_maps_maildirpp(void **state)
{
	char *p = maildir_folder_path("/u", "INBOX");
	assert_string_equal(p, "/u");
	free(p);
	p = maildir_folder_path("/u", "inbox");
	assert_string_equal(p, "/u");
	free(p);
	p = maildir_folder_path("/u", "Sent");
	assert_string_equal(p, "/u/.Sent");
	free(p);
	p = maildir_folder_path("/u", "Archive.2024");
	assert_string_equal(p, "/u/.Archive.2024");
	free(p);
	static const char *const bad[] = { "", ".Sent", "a/b", "a..b", "Sent.", "a\nb", "a\\b", ".." };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_null(maildir_folder_path("/u", bad[i]));
}

/* ------------------------------------------------------------ maildir: layout */

static void create_makes_maildirpp_layout(void **state)
{
	struct fx *fx = *state;
	char *up = make_box(fx);
	static const char *const dirs[] = { "", "/.Sent", "/.Drafts", "/.Trash", "/.Junk", "/.Archive" };

	for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
		char *d = xasprintf("%s%s", up, dirs[i]);
		assert_int_equal(mode_of(d), 0700);
		for (const char *const *sub = (const char *const[]){ "cur", "new", "tmp", NULL }; *sub; sub++) {
			char *s = path_join(d, *sub);
			assert_int_equal(mode_of(s), 0700);
			free(s);
		}
		char *marker = path_join(d, "maildirfolder");
		if (i == 0)
			assert_int_equal(access(marker, F_OK), -1);   /* INBOX is not a subfolder */
		else
			assert_int_equal(mode_of(marker), 0600);
		free(marker);
		free(d);
	}
	assert_int_equal(maildir_create(up), 0);   /* idempotent */
	free(up);
}

/* ------------------------------------------------------------ maildir: delivery */

static void deliver_buf_normalises_to_crlf(void **state)
{
	struct fx *fx = *state;
	char *up = make_box(fx);
	const char in[] = "a\nb\r\nc\rd\n\nend";
	const char want[] = "a\r\nb\r\nc\rd\r\n\r\nend";
	uint64_t size = 0;
	char *path = NULL;

	assert_int_equal(maildir_deliver_buf_path(up, HOST, in, strlen(in), 0, &size, &path), 0);
	assert_int_equal(size, strlen(want));

	char *name, *newdir = path_join(up, "new");
	assert_int_equal(count_dir(newdir, &name), 1);
	char *suffix = xasprintf(",S=%zu", strlen(want));
	assert_true(strlen(name) > strlen(suffix));
	assert_string_equal(name + strlen(name) - strlen(suffix), suffix);
	char *expect_path = path_join(newdir, name);
	assert_string_equal(path, expect_path);
	assert_int_equal(mode_of(path), 0600);
	assert_int_equal(count_sub(up, "tmp"), 0);

	size_t len;
	char *got = slurp(path, &len);
	assert_int_equal(len, strlen(want));
	assert_memory_equal(got, want, len);
	free(got), free(expect_path), free(suffix), free(name), free(newdir), free(path), free(up);
}

/* A CR ending one 64 KiB read and the LF starting the next are one CRLF. */
static void deliver_fd_keeps_crlf_across_chunks(void **state)
{
	struct fx *fx = *state;
	char *up = make_box(fx);
	size_t n = 65536 + 10000;
	char *in = xmalloc(n);
	memset(in, 'x', n);
	in[65535] = '\r';
	in[65536] = '\n';
	in[70000] = '\n';            /* bare LF: gains a CR */
	char *src = path_join(fx->dir, "src.eml");
	write_file(src, in, n);

	int fd = open(src, O_RDONLY);
	uint64_t size = 0;
	assert_int_equal(maildir_deliver_fd(up, HOST, fd, 0, &size), 0);
	close(fd);
	assert_int_equal(size, n + 1);

	char *name, *newdir = path_join(up, "new");
	assert_int_equal(count_dir(newdir, &name), 1);
	char *stored = path_join(newdir, name);
	size_t len;
	char *got = slurp(stored, &len);
	assert_int_equal(len, n + 1);
	assert_memory_equal(got, in, 70000);
	assert_memory_equal(got + 70000, "\r\n", 2);
	assert_memory_equal(got + 70002, in + 70001, n - 70001);
	free(got), free(stored), free(name), free(newdir), free(src), free(in), free(up);
}

static void deliver_efbig_counts_stored_size_and_leaves_nothing(void **state)
{
	struct fx *fx = *state;
	char *up = make_box(fx);
	const char msg[] = "12345678\n";   /* 9 octets in, 10 stored */
	uint64_t size;

	errno = 0;
	assert_int_equal(maildir_deliver_buf_path(up, HOST, msg, 9, 9, &size, NULL), -1);
	assert_int_equal(errno, EFBIG);
	assert_int_equal(count_sub(up, "tmp"), 0);
	assert_int_equal(count_sub(up, "new"), 0);

	char *src = path_join(fx->dir, "big.eml");
	write_file(src, msg, 9);
	int fd = open(src, O_RDONLY);
	errno = 0;
	assert_int_equal(maildir_deliver_fd(up, HOST, fd, 9, &size), -1);
	assert_int_equal(errno, EFBIG);
	close(fd);
	assert_int_equal(count_sub(up, "tmp"), 0);
	assert_int_equal(count_sub(up, "new"), 0);

	assert_int_equal(maildir_deliver_buf_path(up, HOST, msg, 9, 10, &size, NULL), 0);
	assert_int_equal(size, 10);
	free(src);
	free(up);
}

static void deliver_fails_cleanly_without_tmp(void **state)
{
	struct fx *fx = *state;
	char *nowhere = path_join(fx->dir, "missing");
	uint64_t size;
	errno = 0;
	assert_int_equal(maildir_deliver_buf(nowhere, HOST, "x\n", 2, &size), -1);
	assert_int_equal(errno, ENOENT);
	free(nowhere);
}

static void unique_name_format_and_escapes(void **state)
{
	char *a = maildir_unique_name("host/with:odd,chars");
	char *b = maildir_unique_name("host/with:odd,chars");
	char *pid = xasprintf("P%ldQ", (long)getpid());

	assert_string_not_equal(a, b);                 /* the Q sequence differs */
	assert_non_null(strstr(a, ".M"));
	assert_non_null(strstr(a, pid));
	assert_non_null(strstr(a, ".host\\057with\\072odd\\054chars"));
	assert_null(strchr(a, '/'));
	assert_null(strchr(a, ':'));
	free(a), free(b), free(pid);
}

static void parse_flags_reads_info(void **state)
{
	assert_int_equal(maildir_parse_flags("123.M1P2Q3.h:2,FRS"), MF_FLAGGED | MF_REPLIED | MF_SEEN);
	assert_int_equal(maildir_parse_flags("123.M1P2Q3.h:2,DPT"), MF_DRAFT | MF_PASSED | MF_TRASHED);
	assert_int_equal(maildir_parse_flags("123.M1P2Q3.h:2,Sab"), MF_SEEN);   /* keywords ignored */
	assert_int_equal(maildir_parse_flags("123.M1P2Q3.h:2,"), 0);
	assert_int_equal(maildir_parse_flags("123.M1P2Q3.h"), 0);
	assert_int_equal(maildir_parse_flags("123.M1P2Q3.h:1,S"), 0);
}

static void clean_tmp_removes_only_old_files(void **state)
{
	struct fx *fx = *state;
	char *up = make_box(fx);
	char *old = xasprintf("%s/tmp/old", up), *fresh = xasprintf("%s/tmp/fresh", up);
	write_file(old, "x", 1);
	write_file(fresh, "x", 1);
	set_mtime(old, time(NULL) - 37 * 3600);
	set_mtime(fresh, time(NULL) - 35 * 3600);

	assert_int_equal(maildir_clean_tmp(up), 0);
	assert_int_equal(access(old, F_OK), -1);
	assert_int_equal(access(fresh, F_OK), 0);
	free(old), free(fresh), free(up);
}

/* ------------------------------------------------------------ index: format */

static void index_roundtrip_keeps_odd_names(void **state)
{
	struct fx *fx = *state;
	static const char *const bases[] = { "plain", "with space", "100%", "new\nline", "t\xc3\xbc", "tab\there" };
	struct store_index ix = { .uidvalidity = 1700000000, .uidnext = 40, .highestmodseq = 99 };
	ix.count = sizeof(bases) / sizeof(bases[0]);
	ix.msgs = xcalloc(ix.count, sizeof(*ix.msgs));
	for (size_t i = 0; i < ix.count; i++) {
		ix.msgs[i] = (struct store_msg){ .uid = (uint32_t)(3 * i + 1), .modseq = 90 + i,
			.flags = (uint32_t)i * 7 & 0x3f, .size = 1000 * i, .internal_date = 1600000000 + (time_t)i,
			.base = xstrdup(bases[i]), .in_new = i % 2 == 0 };
	}
	assert_int_equal(index_write(fx->dir, &ix), 0);

	char *file = path_join(fx->dir, "postling.index");
	size_t len;
	char *text = slurp(file, &len);
	assert_non_null(strstr(text, "POSTLING-INDEX 2 1700000000 40 99 0\n"));
	assert_non_null(strstr(text, " with%20space\n"));
	assert_non_null(strstr(text, " 100%25\n"));
	assert_non_null(strstr(text, " new%0Aline\n"));
	assert_non_null(strstr(text, " t%C3%BC\n"));
	size_t lines = 0;
	for (size_t i = 0; i < len; i++)
		lines += text[i] == '\n';
	assert_int_equal(lines, ix.count + 1);         /* no name broke a record */

	struct store_index rd;
	assert_int_equal(index_read(fx->dir, &rd), 0);
	assert_int_equal(rd.uidvalidity, 1700000000);
	assert_int_equal(rd.uidnext, 40);
	assert_int_equal(rd.highestmodseq, 99);
	assert_int_equal(rd.count, ix.count);
	for (size_t i = 0; i < ix.count; i++) {
		assert_int_equal(rd.msgs[i].uid, ix.msgs[i].uid);
		assert_int_equal(rd.msgs[i].modseq, ix.msgs[i].modseq);
		assert_int_equal(rd.msgs[i].flags, ix.msgs[i].flags);
		assert_int_equal(rd.msgs[i].size, ix.msgs[i].size);
		assert_int_equal(rd.msgs[i].internal_date, ix.msgs[i].internal_date);
		assert_int_equal(rd.msgs[i].in_new, ix.msgs[i].in_new);
		assert_string_equal(rd.msgs[i].base, ix.msgs[i].base);
	}
	assert_int_equal(count_dir(fx->dir, NULL), 1);  /* postling.index.tmp renamed away */
	index_free(&rd);
	index_free(&ix);
	free(text), free(file);
}

static void index_read_rejects_corruption(void **state)
{
	struct fx *fx = *state;
	static const char *const bad[] = {
		"",
		"garbage\n",
		"POSTLING-INDEX 3 5 10 3 0\n",                                /* unknown version */
		"POSTLING-INDEX 2 5 10 3\n",                                  /* v2 without nkeywords */
		"POSTLING-INDEX 1 5 10 3 0\n",                                /* v1 with nkeywords */
		"POSTLING-INDEX 2 5 10 3 65\n",                               /* past STORE_MAX_KEYWORDS */
		"POSTLING-INDEX 2 5 10 3 1\n",                                /* K line missing */
		"POSTLING-INDEX 2 5 10 3 1\nK work",                          /* K line torn */
		"POSTLING-INDEX 2 5 10 3 1\nX work\n",
		"POSTLING-INDEX 2 5 10 3 1\nK \\Seen\n",                     /* system flag */
		"POSTLING-INDEX 2 5 10 3 1\nK a(b\n",                         /* atom-special */
		"POSTLING-INDEX 2 5 10 3 1\nK a]b\n",
		"POSTLING-INDEX 2 5 10 3 1\nK a%b\n",
		"POSTLING-INDEX 2 5 10 3 1\nK \xc3\xbc\n",                    /* non-ASCII */
		"POSTLING-INDEX 2 5 10 3 2\nK Work\nK work\n",                /* duplicate, any case */
		"POSTLING-INDEX 2 5 10 3 1\nK a b\n",
		"POSTLING-INDEX 2 5 10 3 1\nK a\n1 1 - 2 5 0 n a\n",          /* bit 1 of 1 keyword */
		"POSTLING-INDEX 2 5 10 3 0\n1 1 - 5 0 n a\n",                 /* v2 record without mask */
		"POSTLING-INDEX 2 5 10 3 0\n1 1 - 0 5 0 n a\nK b\n",          /* K after records */
		"POSTLING-INDEX 1 0 10 3\n",                                  /* uidvalidity 0 */
		"POSTLING-INDEX 1 5 10 3",                                    /* no newline */
		"POSTLING-INDEX 1 5 10 3 x\n",
		"POSTLING-INDEX 1 5 10 3\n2 1 - 5 0 n a\n1 1 - 5 0 n b\n",     /* uids not increasing */
		"POSTLING-INDEX 1 5 10 3\n2 1 - 5 0 n a\n2 1 - 5 0 n b\n",     /* duplicate uid */
		"POSTLING-INDEX 1 5 10 3\n10 1 - 5 0 n a\n",                  /* uid >= uidnext */
		"POSTLING-INDEX 1 5 10 3\n0 1 - 5 0 n a\n",                   /* uid 0 */
		"POSTLING-INDEX 1 5 10 3\n1 4 - 5 0 n a\n",                   /* modseq > highest */
		"POSTLING-INDEX 1 5 10 3\n1 1 SF 5 0 n a\n",                  /* flags out of order */
		"POSTLING-INDEX 1 5 10 3\n1 1 X 5 0 n a\n",
		"POSTLING-INDEX 1 5 10 3\n1 1 - 5 0 x a\n",
		"POSTLING-INDEX 1 5 10 3\n1 1 - -5 0 n a\n",
		"POSTLING-INDEX 1 5 10 3\n1 1 - 05 0 n a\n",
		"POSTLING-INDEX 1 5 10 3\n1 1 - 99999999999999999999 0 n a\n",
		"POSTLING-INDEX 1 5 10 3\n1 1 -  5 0 n a\n",                  /* empty field */
		"POSTLING-INDEX 1 5 10 3\n1 1 - 5 0 n a b\n",                 /* extra field */
		"POSTLING-INDEX 1 5 10 3\n1 1 - 5 0 n a\n2 1 - 5",            /* truncated record */
		"POSTLING-INDEX 1 5 10 3\n1 1 - 5 0 n %2Fetc\n",              /* '/' in base */
		"POSTLING-INDEX 1 5 10 3\n1 1 - 5 0 n %00\n",
		"POSTLING-INDEX 1 5 10 3\n1 1 - 5 0 n %2E%2E\n",              /* ".." */
		"POSTLING-INDEX 1 5 10 3\n1 1 - 5 0 n a%2\n",
		"POSTLING-INDEX 1 5 10 3\n1 1 - 5 0 n \xc3\xbc\n",            /* raw non-ASCII */
		/* appended flag changes ("F" records) */
		"POSTLING-INDEX 2 5 10 3 0\n1 1 - 0 5 0 n a\nF 2 4 S 0 c\n",   /* unknown uid */
		"POSTLING-INDEX 2 5 10 3 0\n1 1 - 0 5 0 n a\nF 1 3 S 0 c\n",   /* modseq not rising */
		"POSTLING-INDEX 2 5 10 3 0\n1 1 - 0 5 0 n a\nF 1 5 S 0 c\nF 1 5 - 0 c\n",
		"POSTLING-INDEX 2 5 10 3 0\n1 1 - 0 5 0 n a\nF 1 4 S 1 c\n",   /* keyword bit unknown */
		"POSTLING-INDEX 2 5 10 3 0\n1 1 - 0 5 0 n a\nF 1 4 Q 0 c\n",
		"POSTLING-INDEX 2 5 10 3 0\n1 1 - 0 5 0 n a\nF 1 4 S 0 x\n",
		"POSTLING-INDEX 2 5 10 3 0\n1 1 - 0 5 0 n a\nF 1 4 S 0\n",     /* field missing */
		"POSTLING-INDEX 2 5 10 3 0\nF 1 4 S 0 c\n1 1 - 0 5 0 n a\n",   /* before its record */
		"POSTLING-INDEX 2 5 10 3 0\n1 1 - 0 5 0 n a\nF 1 4 S 0 c\n2 1 - 0 5 0 n b\n",
	};
	char *file = path_join(fx->dir, "postling.index");
	struct store_index ix;

	errno = 0;
	assert_int_equal(index_read(fx->dir, &ix), -1);
	assert_int_equal(errno, ENOENT);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		write_file(file, bad[i], strlen(bad[i]));
		errno = 0;
		if (index_read(fx->dir, &ix) != -1)
			fail_msg("accepted corrupt index #%zu", i);
		assert_int_equal(errno, EBADMSG);
		assert_int_equal(ix.count, 0);
		assert_null(ix.msgs);
	}
	free(file);
}

/* Flag changes appended as "F" records are read back over the messages; a
 * last record cut by a crash is dropped, not taken as corruption. */
static void index_append_updates_read_back_and_torn_tail(void **state)
{
	struct fx *fx = *state;
	struct store_index ix = { .uidvalidity = 9, .uidnext = 5, .highestmodseq = 7 };
	assert_int_equal(index_keyword_add(&ix, "Work"), 0);
	ix.count = 2;
	ix.msgs = xcalloc(2, sizeof(*ix.msgs));
	ix.msgs[0] = (struct store_msg){ .uid = 1, .modseq = 3, .size = 10, .base = xstrdup("a"), .in_new = true };
	ix.msgs[1] = (struct store_msg){ .uid = 4, .modseq = 7, .size = 20, .base = xstrdup("b") };
	assert_int_equal(index_write(fx->dir, &ix), 0);
	ix.msgs[0].flags = MF_SEEN | MF_FLAGGED;
	ix.msgs[0].keywords = 1;
	ix.msgs[0].in_new = false;
	ix.msgs[0].modseq = ++ix.highestmodseq;
	ix.msgs[1].flags = MF_TRASHED;
	ix.msgs[1].modseq = ++ix.highestmodseq;
	const uint32_t uids[] = { 1, 4 };
	assert_int_equal(index_append_updates(fx->dir, &ix, uids, 2), 0);

	struct store_index rd;
	assert_int_equal(index_read(fx->dir, &rd), 0);
	assert_int_equal(rd.nupdates, 2);
	assert_int_equal(rd.highestmodseq, 9);
	assert_int_equal(rd.msgs[0].flags, MF_SEEN | MF_FLAGGED);
	assert_int_equal(rd.msgs[0].keywords, 1);
	assert_false(rd.msgs[0].in_new);
	assert_int_equal(rd.msgs[0].modseq, 8);
	assert_int_equal(rd.msgs[1].flags, MF_TRASHED);
	assert_int_equal(rd.msgs[1].modseq, 9);
	index_free(&rd);

	/* a crash in the middle of the next append: the cut record is lost alone */
	char *file = path_join(fx->dir, "postling.index");
	size_t len;
	char *text = slurp(file, &len);
	const char torn[] = "F 1 10 - 0 c";
	char *more = xmalloc(len + sizeof(torn));
	memcpy(more, text, len);
	memcpy(more + len, torn, sizeof(torn) - 1);
	write_file(file, more, len + sizeof(torn) - 1);
	assert_int_equal(index_read(fx->dir, &rd), 0);
	assert_int_equal(rd.msgs[0].flags, MF_SEEN | MF_FLAGGED);
	assert_int_equal(rd.highestmodseq, 9);
	index_free(&rd);

	/* uids whose modseqs do not rise in the given order are refused unwritten */
	const uint32_t backwards[] = { 4, 1 };
	errno = 0;
	assert_int_equal(index_append_updates(fx->dir, &ix, backwards, 2), -1);
	assert_int_equal(errno, EINVAL);
	/* a rewrite compacts: no "F" record left, same state */
	assert_int_equal(index_write(fx->dir, &ix), 0);
	assert_int_equal(index_read(fx->dir, &rd), 0);
	assert_int_equal(rd.nupdates, 0);
	assert_int_equal(rd.msgs[1].flags, MF_TRASHED);
	index_free(&rd);
	index_free(&ix);
	free(more), free(text), free(file);
}

/* Version 2 keeps the keyword table (bit order) and each message's mask. */
static void index_v2_roundtrips_keywords(void **state)
{
	struct fx *fx = *state;
	struct store_index ix = { .uidvalidity = 9, .uidnext = 5, .highestmodseq = 7 };
	assert_int_equal(index_keyword_add(&ix, "$Forwarded"), 0);
	assert_int_equal(index_keyword_add(&ix, "Work"), 1);
	assert_int_equal(index_keyword_add(&ix, "work"), 1);          /* case-insensitive */
	assert_int_equal(index_keyword_add(&ix, "\\Seen"), -1);
	assert_int_equal(errno, EINVAL);
	ix.count = 2;
	ix.msgs = xcalloc(2, sizeof(*ix.msgs));
	ix.msgs[0] = (struct store_msg){ .uid = 1, .modseq = 3, .keywords = 2, .size = 10, .base = xstrdup("a") };
	ix.msgs[1] = (struct store_msg){ .uid = 4, .modseq = 7, .flags = MF_SEEN, .keywords = 3, .size = 20,
		.base = xstrdup("b"), .in_new = true };
	assert_int_equal(index_write(fx->dir, &ix), 0);

	char *file = path_join(fx->dir, "postling.index");
	char *text = slurp(file, NULL);
	assert_string_equal(text, "POSTLING-INDEX 2 9 5 7 2\nK $Forwarded\nK Work\n"
	    "1 3 - 2 10 0 c a\n4 7 S 3 20 0 n b\n");
	struct store_index rd;
	assert_int_equal(index_read(fx->dir, &rd), 0);
	assert_int_equal(rd.nkeywords, 2);
	assert_string_equal(rd.keywords[0], "$Forwarded");
	assert_string_equal(rd.keywords[1], "Work");
	assert_int_equal(rd.count, 2);
	assert_int_equal(rd.msgs[0].keywords, 2);
	assert_int_equal(rd.msgs[1].keywords, 3);
	assert_int_equal(rd.msgs[1].flags, MF_SEEN);

	/* a mask naming no keyword is never written */
	ix.msgs[0].keywords = 4;
	assert_int_equal(index_write(fx->dir, &ix), -1);
	assert_int_equal(errno, EINVAL);
	index_free(&rd);
	index_free(&ix);
	free(text), free(file);
}

/* Version 1 files (before keywords) still read, with no keywords; the next
 * write is version 2. */
static void index_reads_v1_without_keywords(void **state)
{
	struct fx *fx = *state;
	const char v1[] = "POSTLING-INDEX 1 777 50 9\n2 1 S 5 100 n a\n7 9 - 6 200 c b\n";
	char *file = path_join(fx->dir, "postling.index");
	struct store_index ix;
	write_file(file, v1, strlen(v1));
	assert_int_equal(index_read(fx->dir, &ix), 0);
	assert_int_equal(ix.uidvalidity, 777);
	assert_int_equal(ix.nkeywords, 0);
	assert_int_equal(ix.count, 2);
	assert_int_equal(ix.msgs[0].keywords, 0);
	assert_int_equal(ix.msgs[1].uid, 7);
	assert_int_equal(ix.msgs[1].size, 6);
	assert_int_equal(ix.msgs[1].internal_date, 200);
	assert_int_equal(index_write(fx->dir, &ix), 0);
	char *text = slurp(file, NULL);
	assert_string_equal(text, "POSTLING-INDEX 2 777 50 9 0\n2 1 S 0 5 100 n a\n7 9 - 0 6 200 c b\n");
	index_free(&ix);
	free(text), free(file);
}

/* 64 names fill the table; the 65th is ENOSPC and leaves it as it was. */
static void index_keyword_table_full_is_enospc(void **state)
{
	struct store_index ix = { 0 };
	char name[16];
	for (int i = 0; i < STORE_MAX_KEYWORDS; i++) {
		snprintf(name, sizeof(name), "k%d", i);
		assert_int_equal(index_keyword_add(&ix, name), i);
	}
	errno = 0;
	assert_int_equal(index_keyword_add(&ix, "one-more"), -1);
	assert_int_equal(errno, ENOSPC);
	assert_int_equal(index_keyword_add(&ix, "K63"), 63);         /* known names still resolve */
	assert_int_equal(ix.nkeywords, STORE_MAX_KEYWORDS);
	index_free(&ix);
}

/* A valid first line survives: the rebuild keeps UIDVALIDITY and UIDNEXT. */
static void index_read_corrupt_records_keep_header(void **state)
{
	struct fx *fx = *state;
	const char text[] = "POSTLING-INDEX 1 777 50 9\n2 1 - 5 0 n a\n1 1 - 5 0 n b\n";
	char *file = path_join(fx->dir, "postling.index");
	struct store_index ix;
	write_file(file, text, strlen(text));
	assert_int_equal(index_read(fx->dir, &ix), -1);
	assert_int_equal(errno, EBADMSG);
	assert_int_equal(ix.uidvalidity, 777);
	assert_int_equal(ix.uidnext, 50);
	assert_int_equal(ix.highestmodseq, 9);
	free(file);
}

/* ------------------------------------------------------------ index: sync */

static void sync_numbers_new_files_and_keeps_old_uids(void **state)
{
	struct fx *fx = *state;
	char *up = make_box(fx);
	struct store_index ix = { 0 };
	bool changed;

	deliver(up, "one\r\n");
	deliver(up, "two\r\n");
	assert_int_equal(index_sync(up, &ix, &changed), 0);
	assert_true(changed);
	assert_int_not_equal(ix.uidvalidity, 0);
	assert_int_equal(ix.count, 2);
	assert_int_equal(ix.msgs[0].uid, 1);
	assert_int_equal(ix.msgs[1].uid, 2);
	assert_int_equal(ix.uidnext, 3);
	char *b1 = xstrdup(ix.msgs[0].base), *b2 = xstrdup(ix.msgs[1].base);
	uint32_t uv = ix.uidvalidity;

	/* another program cp's two files into new/: the older mtime gets the lower uid */
	char *late = xasprintf("%s/new/aaa.cp", up), *early = xasprintf("%s/new/zzz.cp", up);
	write_file(late, "late\n", 5);
	write_file(early, "early\n", 6);
	time_t t0 = time(NULL);
	set_mtime(late, t0 + 10);
	set_mtime(early, t0 + 5);
	assert_int_equal(index_sync(up, &ix, &changed), 0);
	assert_true(changed);
	assert_int_equal(ix.uidvalidity, uv);
	assert_int_equal(ix.count, 4);
	assert_string_equal(ix.msgs[0].base, b1);
	assert_int_equal(ix.msgs[0].uid, 1);
	assert_string_equal(ix.msgs[1].base, b2);
	assert_int_equal(ix.msgs[1].uid, 2);
	assert_string_equal(ix.msgs[2].base, "zzz.cp");
	assert_int_equal(ix.msgs[2].uid, 3);
	assert_int_equal(ix.msgs[2].size, 6);          /* no ,S=: size from stat */
	assert_int_equal(ix.msgs[2].internal_date, t0 + 5);   /* internal date = mtime */
	assert_string_equal(ix.msgs[3].base, "aaa.cp");
	assert_int_equal(ix.msgs[3].uid, 4);
	assert_int_equal(ix.uidnext, 5);

	assert_int_equal(index_sync(up, &ix, &changed), 0);
	assert_false(changed);                         /* nothing new: no rewrite */
	index_free(&ix);
	free(late), free(early), free(b1), free(b2), free(up);
}

static void sync_takes_flags_when_moved_to_cur(void **state)
{
	struct fx *fx = *state;
	char *up = make_box(fx);
	struct store_index ix = { 0 };
	bool changed;

	deliver(up, "hello\r\n");
	assert_int_equal(index_sync(up, &ix, &changed), 0);
	assert_true(ix.msgs[0].in_new);
	uint64_t hms = ix.highestmodseq;
	char *from = xasprintf("%s/new/%s", up, ix.msgs[0].base);
	char *to = xasprintf("%s/cur/%s:2,RS", up, ix.msgs[0].base);
	assert_int_equal(rename(from, to), 0);

	assert_int_equal(index_sync(up, &ix, &changed), 0);
	assert_true(changed);
	assert_int_equal(ix.count, 1);
	assert_int_equal(ix.msgs[0].uid, 1);
	assert_int_equal(ix.msgs[0].flags, MF_REPLIED | MF_SEEN);
	assert_false(ix.msgs[0].in_new);
	assert_true(ix.msgs[0].modseq > hms);
	assert_int_equal(ix.highestmodseq, ix.msgs[0].modseq);

	char *rel = index_msg_path(up, &ix.msgs[0]);
	char *want = xasprintf("cur/%s:2,RS", ix.msgs[0].base);
	assert_string_equal(rel, want);
	free(rel);

	/* the index still says cur/ with R,S but a client set F: found by readdir */
	char *to2 = xasprintf("%s/cur/%s:2,FRS", up, ix.msgs[0].base);
	assert_int_equal(rename(to, to2), 0);
	rel = index_msg_path(up, &ix.msgs[0]);
	free(want);
	want = xasprintf("cur/%s:2,FRS", ix.msgs[0].base);
	assert_string_equal(rel, want);
	free(rel);

	assert_int_equal(unlink(to2), 0);
	errno = 0;
	assert_null(index_msg_path(up, &ix.msgs[0]));
	assert_int_equal(errno, ENOENT);
	index_free(&ix);
	free(from), free(to), free(to2), free(want), free(up);
}

static void sync_drops_vanished_and_bumps_modseq(void **state)
{
	struct fx *fx = *state;
	char *up = make_box(fx);
	struct store_index ix = { 0 };
	bool changed;

	deliver(up, "a\r\n");
	deliver(up, "b\r\n");
	assert_int_equal(index_sync(up, &ix, &changed), 0);
	uint64_t hms = ix.highestmodseq;
	char *gone = xasprintf("%s/new/%s", up, ix.msgs[0].base);
	assert_int_equal(unlink(gone), 0);

	assert_int_equal(index_sync(up, &ix, &changed), 0);
	assert_true(changed);
	assert_int_equal(ix.count, 1);
	assert_int_equal(ix.msgs[0].uid, 2);
	assert_true(ix.highestmodseq > hms);
	assert_int_equal(ix.uidnext, 3);               /* uid 1 is never reused */
	index_free(&ix);
	free(gone), free(up);
}

static void sync_skips_hidden_dirs_and_links_and_trusts_S(void **state)
{
	struct fx *fx = *state;
	char *up = make_box(fx);
	struct store_index ix = { 0 };
	bool changed;

	char *hidden = xasprintf("%s/new/.hidden", up), *sub = xasprintf("%s/new/subdir", up);
	char *link = xasprintf("%s/new/link", up), *sized = xasprintf("%s/cur/m1,S=100:2,S", up);
	write_file(hidden, "x", 1);
	assert_int_equal(mkdir(sub, 0700), 0);
	assert_int_equal(symlink("/etc/passwd", link), 0);
	write_file(sized, "seven\r\n", 7);

	assert_int_equal(index_sync(up, &ix, &changed), 0);
	assert_int_equal(ix.count, 1);
	assert_string_equal(ix.msgs[0].base, "m1,S=100");
	assert_int_equal(ix.msgs[0].size, 100);        /* ,S= wins over stat (Maildir++) */
	assert_int_equal(ix.msgs[0].flags, MF_SEEN);
	index_free(&ix);
	free(hidden), free(sub), free(link), free(sized), free(up);
}

/* Whatever index_sync records, index_read must accept (else: rebuild loop). */
static void sync_result_always_reads_back(void **state)
{
	struct fx *fx = *state;
	char *up = make_box(fx);
	struct store_index ix = { 0 }, rd;
	bool changed;
	char *old = xasprintf("%s/new/1960 odd%%name", up);
	write_file(old, "x\r\n", 3);
	set_mtime(old, -300000000);                    /* 1960: negative time_t */

	assert_int_equal(index_sync(up, &ix, &changed), 0);
	assert_int_equal(ix.msgs[0].internal_date, 0);
	assert_int_equal(index_write(up, &ix), 0);
	assert_int_equal(index_read(up, &rd), 0);
	assert_int_equal(rd.count, 1);
	assert_string_equal(rd.msgs[0].base, "1960 odd%name");
	index_free(&rd);
	index_free(&ix);
	free(old), free(up);
}

/* ------------------------------------------------------------ async store */

struct res {
	bool called;
	int ncalls;
	int error;
	struct store_view *view;
	struct store_file *file;
};

static void view_cb(void *arg, int error, struct store_view *view)
{
	struct res *r = arg;
	r->called = true;
	r->ncalls++;
	r->error = error;
	r->view = view;
}

static void done_cb(void *arg, int error)
{
	struct res *r = arg;
	r->called = true;
	r->ncalls++;
	r->error = error;
}

static void file_cb(void *arg, int error, struct store_file *f)
{
	struct res *r = arg;
	r->called = true;
	r->ncalls++;
	r->error = error;
	r->file = f;
}

static struct store_view *open_sync(struct fx *fx, struct store *s, const char *user, const char *folder)
{
	struct res r = { 0 };
	struct store_req *req = store_open_folder(s, user, folder, view_cb, &r);
	assert_non_null(req);
	assert_false(r.called);                        /* never called synchronously */
	run_until(fx, &r.called);
	assert_int_equal(r.error, 0);
	assert_non_null(r.view);
	return r.view;
}

static void open_folder_creates_box_and_returns_view(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 2);
	struct store_view *v = open_sync(fx, s, "Alice@Example.org", "INBOX");
	char *up = xasprintf("%s/mail/example.org/alice", fx->dir);

	assert_string_equal(v->path, up);
	assert_string_equal(v->user, "Alice@Example.org");
	assert_string_equal(v->folder, "INBOX");
	assert_int_equal(v->count, 0);
	assert_int_not_equal(v->uidvalidity, 0);
	assert_int_equal(v->uidnext, 1);
	assert_int_equal(mode_of(up), 0700);
	uint32_t uv = v->uidvalidity;
	store_view_free(&v);
	assert_null(v);

	deliver(up, "one\n");
	deliver(up, "two two\n");
	v = open_sync(fx, s, "alice@example.org", "inbox");
	assert_int_equal(v->count, 2);
	assert_int_equal(v->uidvalidity, uv);
	assert_int_equal(v->msgs[0].uid, 1);
	assert_int_equal(v->msgs[1].uid, 2);
	assert_int_equal(v->total_size, 5 + 9);
	store_view_free(&v);

	v = open_sync(fx, s, "alice@example.org", "Sent");
	assert_int_equal(v->count, 0);
	store_view_free(&v);
	store_free(&s);
	assert_null(s);
	free(up);
}

static void open_folder_unsafe_or_missing_is_async_error(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 2);
	struct res r = { 0 };

	store_open_folder(s, "../evil@example.org", "INBOX", view_cb, &r);
	assert_false(r.called);
	run_until(fx, &r.called);
	assert_int_equal(r.error, EINVAL);
	assert_null(r.view);

	memset(&r, 0, sizeof(r));
	store_open_folder(s, "alice@example.org", "NoSuchFolder", view_cb, &r);
	run_until(fx, &r.called);
	assert_int_equal(r.error, ENOENT);
	assert_null(r.view);
	store_free(&s);
}

static void uidvalidity_and_uids_stable_across_store_reopen(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 2);
	char *up = make_box(fx);
	deliver(up, "a\n");
	deliver(up, "b\n");
	struct store_view *v1 = open_sync(fx, s, "alice@example.org", "INBOX");
	store_free(&s);

	s = store_new(fx->base, fx->dir, HOST, 3);
	deliver(up, "c\n");
	struct store_view *v2 = open_sync(fx, s, "alice@example.org", "INBOX");
	assert_int_equal(v2->uidvalidity, v1->uidvalidity);
	assert_int_equal(v2->count, 3);
	for (size_t i = 0; i < 2; i++) {
		assert_int_equal(v2->msgs[i].uid, v1->msgs[i].uid);
		assert_string_equal(v2->msgs[i].base, v1->msgs[i].base);
	}
	assert_int_equal(v2->msgs[2].uid, 3);
	store_view_free(&v1);
	store_view_free(&v2);
	store_free(&s);
	free(up);
}

/* kind 0: garbage, 1: uids not increasing (header valid), 2: truncated record */
static void corrupt_index_is_set_aside_and_rebuilt(struct fx *fx, int kind)
{
	struct store *s = store_new(fx->base, fx->dir, HOST, 2);
	char *up = make_box(fx);
	char *file = path_join(up, "postling.index");
	char *logf = path_join(fx->dir, "log.json");
	deliver(up, "a\n");
	deliver(up, "b\n");
	struct store_view *v = open_sync(fx, s, "alice@example.org", "INBOX");
	uint32_t uv = v->uidvalidity;
	store_view_free(&v);

	size_t len;
	char *text = slurp(file, &len);
	char *bad = kind == 0 ? xstrdup("\x01\x02 not an index\n")
	    : kind == 1 ? xasprintf("POSTLING-INDEX 1 %u 3 2\n2 1 - 3 0 n x\n1 1 - 3 0 n y\n", uv)
	    : xstrndup(text, len - 5);
	write_file(file, bad, strlen(bad));

	assert_int_equal(log_open(LL_WARN, logf), 0);
	v = open_sync(fx, s, "alice@example.org", "INBOX");
	log_open(LL_INFO, NULL);
	assert_int_equal(v->count, 2);                 /* files kept */
	if (kind == 1) {
		assert_int_equal(v->uidvalidity, uv);      /* header was valid: kept ... */
		assert_int_equal(v->msgs[0].uid, 3);       /* ... and no uid reused */
		assert_int_equal(v->msgs[1].uid, 4);
	}
	assert_true(has_prefix_entry(up, "postling.index.corrupt-"));
	struct store_index ix;
	assert_int_equal(index_read(up, &ix), 0);      /* a valid index was written */
	assert_int_equal(ix.count, 2);
	index_free(&ix);
	char *log = slurp(logf, &len);
	assert_non_null(strstr(log, "\"level\":\"warn\",\"event\":\"store.index.rebuild\""));
	assert_non_null(strstr(log, "postling.index.corrupt-"));

	store_view_free(&v);
	store_free(&s);
	free(log), free(text), free(bad), free(logf), free(file), free(up);
}

static void corrupt_index_garbage(void **state)
{
	corrupt_index_is_set_aside_and_rebuilt(*state, 0);
}

static void corrupt_index_uids_not_increasing(void **state)
{
	corrupt_index_is_set_aside_and_rebuilt(*state, 1);
}

static void corrupt_index_truncated(void **state)
{
	corrupt_index_is_set_aside_and_rebuilt(*state, 2);
}

struct reader {
	struct store *s;
	struct store_file *f;
	struct buf out;
	uint64_t off;
	int reads;
	bool done;
	int error;
};

/* Reads the next chunk from inside the callback, as a streaming session would. */
static void read_cb(void *arg, int error, const char *data, size_t len)
{
	struct reader *rd = arg;
	if (error != 0 || len == 0) {
		rd->error = error;
		rd->done = true;
		return;
	}
	buf_append(&rd->out, data, len);
	rd->off += len;
	rd->reads++;
	store_file_read(rd->s, rd->f, rd->off, 7000, read_cb, rd);
}

static void file_read_in_chunks_reproduces_message(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 4);
	char *up = make_box(fx);
	size_t n = 200000;
	char *msg = xmalloc(n + 1);
	for (size_t i = 0; i < n; i++)
		msg[i] = (i % 80 == 78) ? '\r' : (i % 80 == 79) ? '\n' : (char)('a' + i % 26);
	msg[n] = '\0';
	deliver(up, msg);
	struct store_view *v = open_sync(fx, s, "alice@example.org", "INBOX");
	assert_int_equal(v->count, 1);
	assert_int_equal(v->msgs[0].size, n);

	struct res r = { 0 };
	store_file_open(s, v, &v->msgs[0], file_cb, &r);
	assert_false(r.called);
	run_until(fx, &r.called);
	assert_int_equal(r.error, 0);
	assert_int_equal(store_file_size(r.file), n);

	struct reader rd = { .s = s, .f = r.file };
	buf_init(&rd.out, SIZE_MAX / 2);
	store_file_read(s, rd.f, 0, 7000, read_cb, &rd);
	run_until(fx, &rd.done);
	assert_int_equal(rd.error, 0);
	assert_int_equal(rd.reads, (n + 6999) / 7000);
	assert_int_equal(rd.out.len, n);
	assert_memory_equal(rd.out.data, msg, n);

	buf_free(&rd.out);
	store_file_close(&rd.f);
	assert_null(rd.f);
	store_view_free(&v);
	store_free(&s);
	free(msg), free(up);
}

static void file_open_of_expunged_message_is_enoent(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 2);
	char *up = make_box(fx);
	deliver(up, "x\n");
	struct store_view *v = open_sync(fx, s, "alice@example.org", "INBOX");
	char *rel = index_msg_path(up, &v->msgs[0]);
	char *full = path_join(up, rel);
	assert_int_equal(unlink(full), 0);

	struct res r = { 0 };
	store_file_open(s, v, &v->msgs[0], file_cb, &r);
	run_until(fx, &r.called);
	assert_int_equal(r.error, ENOENT);
	assert_null(r.file);
	store_view_free(&v);
	store_free(&s);
	free(rel), free(full), free(up);
}

static void expunge_removes_files_and_index_entries(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 2);
	char *up = make_box(fx);
	deliver(up, "one\n");
	deliver(up, "two\n");
	deliver(up, "three\n");
	struct store_view *v = open_sync(fx, s, "alice@example.org", "INBOX");
	assert_int_equal(v->count, 3);
	char *keep = xstrdup(v->msgs[1].base);

	/* uid 1 moved to cur/ with flags by another client: still found */
	char *from = xasprintf("%s/new/%s", up, v->msgs[0].base);
	char *to = xasprintf("%s/cur/%s:2,S", up, v->msgs[0].base);
	assert_int_equal(rename(from, to), 0);

	const uint32_t uids[] = { 1, 3, 999 };          /* 999: unknown, ignored */
	struct res r = { 0 };
	store_expunge(s, v, uids, 3, done_cb, &r);
	assert_false(r.called);
	run_until(fx, &r.called);
	assert_int_equal(r.error, 0);
	assert_int_equal(count_sub(up, "new") + count_sub(up, "cur"), 1);

	struct store_index ix;
	assert_int_equal(index_read(up, &ix), 0);      /* index written by the expunge itself */
	assert_int_equal(ix.count, 1);
	assert_int_equal(ix.msgs[0].uid, 2);
	index_free(&ix);

	store_view_free(&v);
	v = open_sync(fx, s, "alice@example.org", "INBOX");
	assert_int_equal(v->count, 1);
	assert_int_equal(v->msgs[0].uid, 2);
	assert_string_equal(v->msgs[0].base, keep);
	assert_int_equal(v->uidnext, 4);
	store_view_free(&v);
	store_free(&s);
	free(keep), free(from), free(to), free(up);
}

static void deliver_to_two_users(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 2);
	char *users[] = { "alice@example.org", "Bob@Example.org" };
	char *msg = xstrdup("Subject: hi\n\nbody\n");
	struct res r = { 0 };

	store_deliver(s, users, NULL, 2, msg, strlen(msg), done_cb, &r);
	memset(msg, 'X', strlen(msg));                 /* the store copied it */
	assert_false(r.called);
	run_until(fx, &r.called);
	assert_int_equal(r.error, 0);
	assert_int_equal(r.ncalls, 1);

	static const char *const locals[] = { "alice", "bob" };
	for (size_t i = 0; i < 2; i++) {
		char *nd = xasprintf("%s/mail/example.org/%s/new", fx->dir, locals[i]), *name;
		assert_int_equal(count_dir(nd, &name), 1);
		char *p = path_join(nd, name);
		size_t len;
		char *got = slurp(p, &len);
		assert_string_equal(got, "Subject: hi\r\n\r\nbody\r\n");
		free(got), free(p), free(name), free(nd);
	}
	store_free(&s);
	free(msg);
}

/* Each user's copy starts with its own prefix (Return-Path/Delivered-To). */
static void deliver_with_per_user_prefixes(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 2);
	char *users[] = { "alice@example.org", "bob@example.org" };
	const char *prefixes[] = { "Delivered-To: alice@example.org\r\n", "Delivered-To: bob@example.org\r\n" };
	struct res r = { 0 };

	const char *msg = "Subject: hi\r\n\r\nbody\r\n";
	store_deliver(s, users, prefixes, 2, msg, strlen(msg), done_cb, &r);
	run_until(fx, &r.called);
	assert_int_equal(r.error, 0);
	static const char *const locals[] = { "alice", "bob" };
	for (size_t i = 0; i < 2; i++) {
		char *nd = xasprintf("%s/mail/example.org/%s/new", fx->dir, locals[i]), *name;
		assert_int_equal(count_dir(nd, &name), 1);
		char *p = path_join(nd, name);
		size_t len;
		char *got = slurp(p, &len);
		char *want = xasprintf("%sSubject: hi\r\n\r\nbody\r\n", prefixes[i]);
		assert_string_equal(got, want);
		char *sz = xasprintf(",S=%zu", strlen(want));
		assert_non_null(strstr(name, sz));
		free(sz), free(want), free(got), free(p), free(name), free(nd);
	}
	store_free(&s);
}

/* One bad recipient: the copy already made for the first is taken back. */
static void deliver_failure_removes_copies_made(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 2);
	char *users[] = { "alice@example.org", "bob@example.org", "../evil@example.org" };
	struct res r = { 0 };

	store_deliver(s, users, NULL, 3, "m\n", 2, done_cb, &r);
	run_until(fx, &r.called);
	assert_int_equal(r.error, EINVAL);
	for (size_t i = 0; i < 2; i++) {
		char *up = xasprintf("%s/mail/example.org/%s", fx->dir, i == 0 ? "alice" : "bob");
		assert_int_equal(count_sub(up, "new"), 0);
		assert_int_equal(count_sub(up, "tmp"), 0);
		free(up);
	}
	store_free(&s);
}

static void cancel_means_no_callback(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 2);
	struct res a = { 0 }, b = { 0 }, c = { 0 };

	/* a runs, b waits behind it on the same folder, c is a delivery */
	struct store_req *ra = store_open_folder(s, "alice@example.org", "INBOX", view_cb, &a);
	struct store_req *rb = store_open_folder(s, "alice@example.org", "INBOX", view_cb, &b);
	char *users[] = { "carol@example.org" };
	struct store_req *rc = store_deliver(s, users, NULL, 1, "x\n", 2, done_cb, &c);
	store_cancel(&rb);
	store_cancel(&rc);
	assert_null(rb);
	assert_null(rc);
	store_cancel(&rb);                             /* NULL handle: no-op */

	run_idle(fx, store_aio(s));
	assert_int_equal(a.ncalls, 1);
	assert_int_equal(b.ncalls, 0);
	assert_int_equal(c.ncalls, 0);
	(void)ra;
	store_view_free(&a.view);

	ra = store_open_folder(s, "alice@example.org", "INBOX", view_cb, &a);
	store_cancel(&ra);
	run_idle(fx, store_aio(s));
	assert_int_equal(a.ncalls, 1);
	store_free(&s);
}

/* A callback that cancels its own request (a session freeing itself). */
struct selfcancel {
	struct store_req *req;
	int ncalls;
	bool called;
};

static void selfcancel_cb(void *arg, int error, struct store_view *view)
{
	struct selfcancel *sc = arg;
	sc->ncalls++;
	sc->called = true;
	store_cancel(&sc->req);
	store_view_free(&view);
}

static void cancel_inside_own_callback_is_safe(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 2);
	struct selfcancel sc = { 0 };
	sc.req = store_open_folder(s, "alice@example.org", "INBOX", selfcancel_cb, &sc);
	run_until(fx, &sc.called);
	run_idle(fx, store_aio(s));
	assert_int_equal(sc.ncalls, 1);
	assert_null(sc.req);
	store_free(&s);
}

static void same_folder_jobs_complete_in_order(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 4);
	enum { N = 24 };
	struct res r[N] = { { 0 } };
	int order[N], done = 0;

	for (int i = 0; i < N; i++)
		store_open_folder(s, "alice@example.org", "INBOX", view_cb, &r[i]);
	double end = util_now() + 10;
	while (done < N) {
		assert_true(util_now() < end);
		event_base_loop(fx->base, EVLOOP_ONCE);
		for (int i = 0; i < N; i++) {
			if (r[i].called && r[i].view != NULL) {
				order[done++] = i;
				assert_int_equal(r[i].error, 0);
				store_view_free(&r[i].view);
			}
		}
	}
	for (int i = 0; i < N; i++)
		assert_int_equal(order[i], i);
	store_free(&s);
}

static void store_free_with_jobs_in_flight_calls_nothing(void **state)
{
	struct fx *fx = *state;
	struct store *s = store_new(fx->base, fx->dir, HOST, 2);
	struct res r[8] = { { 0 } };
	char *users[] = { "dave@example.org" };

	for (int i = 0; i < 4; i++)
		store_open_folder(s, "alice@example.org", "INBOX", view_cb, &r[i]);
	for (int i = 4; i < 8; i++)
		store_deliver(s, users, NULL, 1, "x\n", 2, done_cb, &r[i]);
	store_free(&s);
	for (int i = 0; i < 3; i++)
		event_base_loop(fx->base, EVLOOP_ONCE);
	for (int i = 0; i < 8; i++)
		assert_int_equal(r[i].ncalls, 0);
}

/* ------------------------------------------------------------ aio */

struct jobrec {
	atomic_int worked;
	int done_calls;
	bool cancelled;
};

static void job_work(void *arg)
{
	struct jobrec *j = arg;
	atomic_fetch_add(&j->worked, 1);
}

static void job_done(void *arg, bool cancelled)
{
	struct jobrec *j = arg;
	j->done_calls++;
	j->cancelled = cancelled;
}

static void aio_thousand_jobs_done_once_each(void **state)
{
	struct fx *fx = *state;
	struct aio *a = aio_new(fx->base, 4);
	enum { N = 1000 };
	struct jobrec *j = xcalloc(N, sizeof(*j));

	for (int i = 0; i < N; i++)
		assert_non_null(aio_submit(a, job_work, job_done, &j[i]));
	assert_int_equal(aio_pending(a), N);
	run_idle(fx, a);
	for (int i = 0; i < N; i++) {
		assert_int_equal(atomic_load(&j[i].worked), 1);
		assert_int_equal(j[i].done_calls, 1);
		assert_false(j[i].cancelled);
	}
	assert_int_equal(aio_pending(a), 0);
	aio_free(&a);
	assert_null(a);
	free(j);
}

/* A job whose work waits until the test opens the gate. */
struct gate {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool open, entered;
	struct jobrec rec;
};

static void gate_work(void *arg)
{
	struct gate *g = arg;
	pthread_mutex_lock(&g->mu);
	g->entered = true;
	pthread_cond_broadcast(&g->cv);
	while (!g->open)
		pthread_cond_wait(&g->cv, &g->mu);
	pthread_mutex_unlock(&g->mu);
	atomic_fetch_add(&g->rec.worked, 1);
}

static void gate_done(void *arg, bool cancelled)
{
	struct gate *g = arg;
	job_done(&g->rec, cancelled);
}

static void gate_init(struct gate *g)
{
	memset(g, 0, sizeof(*g));
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cv, NULL);
}

static void gate_wait_entered(struct gate *g)
{
	pthread_mutex_lock(&g->mu);
	while (!g->entered)
		pthread_cond_wait(&g->cv, &g->mu);
	pthread_mutex_unlock(&g->mu);
}

static void gate_open(struct gate *g)
{
	pthread_mutex_lock(&g->mu);
	g->open = true;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
}

static void aio_cancel_before_start_never_runs(void **state)
{
	struct fx *fx = *state;
	struct aio *a = aio_new(fx->base, 1);
	struct gate g;
	struct jobrec queued = { 0 };
	gate_init(&g);

	aio_submit(a, gate_work, gate_done, &g);
	gate_wait_entered(&g);                         /* the only worker is busy */
	struct aio_job *j = aio_submit(a, job_work, job_done, &queued);
	aio_cancel(j);
	assert_int_equal(queued.done_calls, 0);        /* done comes later, from the reactor */
	gate_open(&g);
	run_idle(fx, a);

	assert_int_equal(atomic_load(&queued.worked), 0);
	assert_int_equal(queued.done_calls, 1);
	assert_true(queued.cancelled);
	assert_int_equal(atomic_load(&g.rec.worked), 1);
	assert_int_equal(g.rec.done_calls, 1);
	assert_false(g.rec.cancelled);
	aio_free(&a);
}

static void aio_cancel_while_running_reports_cancelled(void **state)
{
	struct fx *fx = *state;
	struct aio *a = aio_new(fx->base, 2);
	struct gate g;
	gate_init(&g);

	struct aio_job *j = aio_submit(a, gate_work, gate_done, &g);
	gate_wait_entered(&g);
	aio_cancel(j);
	gate_open(&g);
	run_idle(fx, a);
	assert_int_equal(atomic_load(&g.rec.worked), 1);   /* work already started: finishes */
	assert_int_equal(g.rec.done_calls, 1);
	assert_true(g.rec.cancelled);
	aio_free(&a);
}

static void aio_free_calls_remaining_done_as_cancelled(void **state)
{
	struct fx *fx = *state;
	struct aio *a = aio_new(fx->base, 1);
	struct gate g;
	struct jobrec rest[5] = { { 0 } };
	gate_init(&g);

	aio_submit(a, gate_work, gate_done, &g);
	gate_wait_entered(&g);
	for (int i = 0; i < 5; i++)
		aio_submit(a, job_work, job_done, &rest[i]);
	gate_open(&g);
	aio_free(&a);                                  /* the reactor never ran */
	assert_int_equal(g.rec.done_calls, 1);
	assert_true(g.rec.cancelled);
	for (int i = 0; i < 5; i++) {
		assert_int_equal(rest[i].done_calls, 1);
		assert_true(rest[i].cancelled);
	}
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, fx_setup, fx_teardown)
	const struct CMUnitTest tests[] = {
		T(user_path_accepts_and_lowercases),
		T(user_path_rejects_unsafe),
		T(folder_path_maps_maildirpp),
		T(create_makes_maildirpp_layout),
		T(deliver_buf_normalises_to_crlf),
		T(deliver_fd_keeps_crlf_across_chunks),
		T(deliver_efbig_counts_stored_size_and_leaves_nothing),
		T(deliver_fails_cleanly_without_tmp),
		T(unique_name_format_and_escapes),
		T(parse_flags_reads_info),
		T(clean_tmp_removes_only_old_files),
		T(index_roundtrip_keeps_odd_names),
		T(index_read_rejects_corruption),
		T(index_read_corrupt_records_keep_header),
		T(index_v2_roundtrips_keywords),
		T(index_append_updates_read_back_and_torn_tail),
		T(index_reads_v1_without_keywords),
		T(index_keyword_table_full_is_enospc),
		T(sync_numbers_new_files_and_keeps_old_uids),
		T(sync_takes_flags_when_moved_to_cur),
		T(sync_drops_vanished_and_bumps_modseq),
		T(sync_skips_hidden_dirs_and_links_and_trusts_S),
		T(sync_result_always_reads_back),
		T(open_folder_creates_box_and_returns_view),
		T(open_folder_unsafe_or_missing_is_async_error),
		T(uidvalidity_and_uids_stable_across_store_reopen),
		T(corrupt_index_garbage),
		T(corrupt_index_uids_not_increasing),
		T(corrupt_index_truncated),
		T(file_read_in_chunks_reproduces_message),
		T(file_open_of_expunged_message_is_enoent),
		T(expunge_removes_files_and_index_entries),
		T(deliver_to_two_users),
		T(deliver_with_per_user_prefixes),
		T(deliver_failure_removes_copies_made),
		T(cancel_means_no_callback),
		T(cancel_inside_own_callback_is_safe),
		T(same_folder_jobs_complete_in_order),
		T(store_free_with_jobs_in_flight_calls_nothing),
		T(aio_thousand_jobs_done_once_each),
		T(aio_cancel_before_start_never_runs),
		T(aio_cancel_while_running_reports_cancelled),
		T(aio_free_calls_remaining_done_as_cancelled),
	};
#undef T
	return cmocka_run_group_tests(tests, NULL, NULL);
}
