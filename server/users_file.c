/* users_file.c: the users file (design §4): the accounts `postling user`
 * manages, a YAML file with a top-level `users:` list and the same keys as the
 * config's `users:`. Reading goes through config.c's tables
 * (cfg_load_users_text), so both lists are checked alike; writing emits every
 * key of an entry in that table's order (cfg_user_key) and replaces the file
 * atomically, after checking that the new text loads back. */
#include "server/server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"
#include "common/xmalloc.h"

#define CFG_MAX_USERS  (256u * 1024 * 1024)  /* users file as written by cfg_save_users_file */

/* ------------------------------------------------------------------ loading */

int cfg_load_users_file(const char *path, struct cfg_user **users_r, size_t *nusers_r,
    char *err, size_t errlen)
{
	struct buf b;
	if (access(path, F_OK) == -1 && errno == ENOENT) {
		*users_r = NULL;          /* not created yet: no accounts from it */
		*nusers_r = 0;
		return 0;
	}
	if (cfg_read_file(path, &b, err, errlen) == -1)
		return -1;
	int r = cfg_load_users_text(path, b.data != NULL ? b.data : "", b.len, users_r, nusers_r,
	    err, errlen);
	buf_free(&b);
	return r;
}

/* ------------------------------------------------------------------ writing */

/* A YAML double-quoted scalar: any string survives (control bytes as \xNN). */
static int put_quoted(struct buf *b, const char *s)
{
	int r = buf_appendc(b, '"');
	for (const unsigned char *p = (const unsigned char *)(s != NULL ? s : ""); *p != '\0' && r == 0; p++) {
		if (*p == '"' || *p == '\\')
			r = buf_printf(b, "\\%c", *p);
		else if (*p < 0x20 || *p == 0x7f)
			r = buf_printf(b, "\\x%02x", *p);
		else
			r = buf_appendc(b, (char)*p);
	}
	return r == 0 ? buf_appendc(b, '"') : -1;
}

static int put_list(struct buf *b, char *const *v, size_t n)
{
	int r = buf_appendc(b, '[');
	for (size_t i = 0; i < n && r == 0; i++)
		if ((r = buf_appends(b, i ? ", " : "")) == 0)
			r = put_quoted(b, v[i]);
	return r == 0 ? buf_appendc(b, ']') : -1;
}

/* One user, keys in the order of config.c's table (its one list is aliases,
 * its one size quota). */
static int put_user(struct buf *b, const struct cfg_user *u)
{
	int r = 0;
	enum cfg_user_field field;
	size_t off;
	const char *name;
	for (size_t i = 0; (name = cfg_user_key(i, &field, &off)) != NULL && r == 0; i++) {
		r = buf_printf(b, "%s%s: ", i == 0 ? "  - " : "    ", name);
		if (r == 0 && field == CFG_USER_STR)
			r = put_quoted(b, *(char *const *)((const char *)u + off));
		else if (r == 0 && field == CFG_USER_LIST)
			r = put_list(b, u->aliases, u->naliases);
		else if (r == 0 && field == CFG_USER_SIZE)
			r = buf_printf(b, "%llu", (unsigned long long)u->quota);
		if (r == 0)
			r = buf_appendc(b, '\n');
	}
	return r;
}

static int users_yaml(struct buf *b, const struct cfg_user *users, size_t n)
{
	int r = buf_appends(b, "# Postling users file (design §4), written by postling: comments are not kept.\n");
	if (r == 0)
		r = buf_appends(b, n == 0 ? "users: []\n" : "users:\n");
	for (size_t i = 0; i < n && r == 0; i++)
		r = put_user(b, &users[i]);
	return r;
}

static int fsync_dir_of(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir = slash == NULL ? xstrdup(".") : slash == path ? xstrdup("/")
	    : xstrndup(path, (size_t)(slash - path));
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (fd == -1)
		return -1;
	int r = fsync(fd);
	close(fd);
	return r;
}

/* temp file, fsync, rename over path, fsync the directory (design §5 discipline) */
static int write_atomic(const char *path, const char *data, size_t len, char *err, size_t errlen)
{
	char *tmp = xasprintf("%s.tmp.%ld", path, (long)getpid());
	const char *step = "create";
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd == -1)
		goto fail;
	step = "write";
	if (fchmod(fd, 0600) == -1 || util_write_all(fd, data, len) == -1 || fsync(fd) == -1)
		goto fail;
	step = "close";
	int r = close(fd);
	fd = -1;
	if (r == -1)
		goto fail;
	step = "rename";
	if (rename(tmp, path) == -1)
		goto fail;
	free(tmp);
	if (fsync_dir_of(path) == -1) {
		snprintf(err, errlen, "%s: fsync of its directory failed: %s", path, strerror(errno));
		return -1;
	}
	return 0;
fail:
	snprintf(err, errlen, "%s: cannot %s: %s", tmp, step, strerror(errno));
	if (fd != -1)
		close(fd);
	unlink(tmp);
	free(tmp);
	return -1;
}

int cfg_save_users_file(const char *path, const struct cfg_user *users, size_t n,
    char *err, size_t errlen)
{
	struct buf b;
	struct cfg_user *check = NULL;
	size_t ncheck = 0;
	buf_init(&b, CFG_MAX_USERS);
	int r = users_yaml(&b, users, n);
	if (r == -1)
		snprintf(err, errlen, "%s: more than %u bytes", path, CFG_MAX_USERS);
	/* What is written must load back: the loader's checks (safe addresses,
	 * UTF-8, duplicates) run on the new text before it replaces the file. */
	if (r == 0 && (r = cfg_load_users_text(path, b.data, b.len, &check, &ncheck, err, errlen)) == 0)
		r = write_atomic(path, b.data, b.len, err, errlen);
	cfg_users_free(&check, ncheck);
	buf_free(&b);
	return r;
}
