/* folder.c: IMAP folder names and the folder-level operations (list, create,
 * delete, rename, subscriptions, status, usage) over the user's Maildir++.
 *
 * A name is UTF-8 with '/' as the hierarchy delimiter; on disk a folder is
 * "<user>/.<c1>.<c2>..." with each component in modified UTF-7 (Dovecot's
 * layout), INBOX being the user directory itself. Names are checked before
 * any path is built, so no name can reach outside the user's directory: no
 * component is empty, "." or "..", holds '.' (the on-disk separator) or '/',
 * and modified UTF-7 only produces printable ASCII without '/' or '.'.
 *
 * Jobs that change the set of folders (and LIST, which reads it) run in a
 * per-user queue ("<user_path>/"), and also in the queues of the folders they
 * change, so they never overlap a message job on those folders. */
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/mutf7.h"
#include "common/util.h"
#include "common/xmalloc.h"

#define DIRNAME_MAX 255              /* NAME_MAX of the ".<c1>.<c2>" directory */
#define SUBS_MAX_BYTES (1024 * 1024) /* subscriptions file */
#define RM_FDS 16                    /* nftw descriptors: a folder is 2 levels deep */

static const struct {
	const char *name, *attr;
} special_use[] = {
	{ "Sent", "\\Sent" }, { "Drafts", "\\Drafts" }, { "Trash", "\\Trash" },
	{ "Junk", "\\Junk" }, { "Archive", "\\Archive" },
};

/* ------------------------------------------------------------ names */

/* Strict UTF-8 (RFC 3629): no overlongs, surrogates or values past U+10FFFF. */
static bool utf8_valid(const unsigned char *p, size_t len)
{
	for (size_t i = 0; i < len;) {
		unsigned char c = p[i];
		size_t n = c < 0x80 ? 0 : (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : 4;
		if (n == 4 || i + n >= len + (n == 0))
			return false;
		uint32_t cp = n == 0 ? c : c & (0x3f >> n);
		for (size_t k = 1; k <= n; k++) {
			if ((p[i + k] & 0xc0) != 0x80)
				return false;
			cp = cp << 6 | (p[i + k] & 0x3f);
		}
		static const uint32_t min[] = { 0, 0x80, 0x800, 0x10000 };
		if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			return false;
		i += n + 1;
	}
	return true;
}

static bool component_ok(const char *c, size_t len)
{
	return len > 0 && c[0] != '~' && memchr(c, '.', len) == NULL;   /* also refuses "." and ".." */
}

/* The on-disk directory name ".<c1>.<c2>..." of name (without the user
 * path) appended to b: 0, or -1 when a component does not encode. */
static int encode_dirname(const char *name, struct buf *b)
{
	buf_appendc(b, '.');
	for (const char *c = name;;) {
		size_t len = strcspn(c, "/");
		if (mutf7_encode(c, len, b) == -1)
			return -1;
		if (c[len] == '\0')
			return 0;
		buf_appendc(b, '.');
		c += len + 1;
	}
}

int store_name_check(const char *name)
{
	size_t len = name != NULL ? strlen(name) : 0, levels = 1;
	if (len == 0 || len > STORE_MAX_NAME || !utf8_valid((const unsigned char *)name, len))
		return -1;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)name[i];
		if (c < 0x20 || c == 0x7f)
			return -1;
		levels += c == '/';
	}
	if (levels > STORE_MAX_LEVELS)
		return -1;
	for (const char *c = name;;) {
		size_t clen = strcspn(c, "/");
		if (!component_ok(c, clen))
			return -1;
		if (c[clen] == '\0')
			break;
		c += clen + 1;
	}
	/* modified UTF-7 can double a name: the directory must still be a name */
	struct buf b;
	buf_init(&b, DIRNAME_MAX);
	int rc = encode_dirname(name, &b);
	buf_free(&b);
	return rc;
}

char *store_name_normalize(const char *name)
{
	size_t len = strcspn(name, "/");
	if (len == 5 && strncasecmp(name, "INBOX", 5) == 0)
		return xasprintf("INBOX%s", name + 5);
	return xstrdup(name);
}

static bool is_inbox(const char *name)
{
	return strcmp(name, "INBOX") == 0;
}

char *store_folder_path(const char *user_path, const char *name)
{
	if (is_inbox(name))
		return xstrdup(user_path);
	struct buf b;
	buf_init(&b, DIRNAME_MAX);
	char *path = NULL;
	if (encode_dirname(name, &b) == 0)
		path = xasprintf("%s/%s", user_path, b.data);
	buf_free(&b);
	return path;
}

/* A user directory entry ".<c1>.<c2>" back to its name: malloc'ed, or NULL
 * when it is not a name we would have made (another program's directory,
 * a folder being deleted, a name differing from its normal form). */
static char *decode_dirname(const char *d)
{
	struct buf b;
	char *name = NULL;
	if (d[0] != '.' || d[1] == '\0')
		return NULL;
	buf_init(&b, STORE_MAX_NAME);
	for (const char *c = d + 1;;) {
		size_t len = strcspn(c, ".");
		if (len == 0 || mutf7_decode(c, len, &b) == -1)
			goto out;
		if (c[len] == '\0')
			break;
		if (buf_appendc(&b, '/') == -1)
			goto out;
		c += len + 1;
	}
	if (b.len > 0 && store_name_check(b.data) == 0) {
		char *norm = store_name_normalize(b.data);
		if (strcmp(norm, b.data) == 0 && !is_inbox(norm))
			name = xstrdup(b.data);
		free(norm);
	}
out:
	buf_free(&b);
	return name;
}

const char *store_special_use(const char *name)
{
	for (size_t i = 0; i < sizeof(special_use) / sizeof(special_use[0]); i++)
		if (strcmp(name, special_use[i].name) == 0)
			return special_use[i].attr;
	return NULL;
}

/* ------------------------------------------------------------ jobs */

struct fjob {
	struct store *s;
	char *user, *user_path, *key;        /* owned; key: the per-user queue */
	char *name, *name2, *path, *path2;   /* owned, normalised names and their dirs */
	bool subscribe;
	int error;
	struct store_folder_info *list;      /* LIST result, owned until handed over */
	size_t nlist;
	struct store_status st;
	bool have_st;                        /* st known at submit (open mailbox) */
	struct store_index ix;               /* STATUS / INBOX rename: path's new index */
	bool have_ix;
	uint64_t bytes, messages;
	union {
		store_done_cb done;
		store_list_cb list;
		store_status_cb status;
		store_usage_cb usage;
	} cb;
};

static void fjob_release(void *job)
{
	struct fjob *j = job;
	store_folder_list_free(j->list, j->nlist);
	index_free(&j->ix);
	free(j->user);
	free(j->user_path);
	free(j->key);
	free(j->name);
	free(j->name2);
	free(j->path);
	free(j->path2);
	free(j);
}

/* name NULL: no folder. A bad user or name leaves error set (bad_name_error). */
static struct fjob *fjob_new(struct store *s, const char *user, const char *name, int bad_name_error)
{
	struct fjob *j = xcalloc(1, sizeof(*j));
	j->s = s;
	j->user = xstrdup(user);
	j->user_path = maildir_user_path(store_data_dir(s), user);
	if (j->user_path == NULL) {
		j->error = EINVAL;
		return j;
	}
	j->key = xasprintf("%s/", j->user_path);
	if (name == NULL)
		return j;
	if (store_name_check(name) == 0) {
		j->name = store_name_normalize(name);
		j->path = store_folder_path(j->user_path, j->name);
	}
	if (j->path == NULL)
		j->error = bad_name_error;
	return j;
}

static struct store_req *fjob_start(struct fjob *j, const struct store_job_ops *ops, void *arg, bool user_queue)
{
	const char *queues[3] = { user_queue ? j->key : NULL, j->path, j->path2 };
	if (j->error != 0)
		queues[0] = queues[1] = queues[2] = NULL;
	return store_job_start(j->s, ops, j, arg, queues, 3);
}

static void fdone_complete(void *job, void *arg)
{
	struct fjob *j = job;
	j->cb.done(arg, j->error);
}

static int ensure_user(const char *user_path)
{
	return store_folder_exists(user_path) ? 0 : maildir_create(user_path);
}

/* ------------------------------------------------------------ subscriptions */

struct names {
	char **v;
	size_t n, cap;
};

static void names_add(struct names *ns, char *owned)
{
	if (ns->n == ns->cap) {
		ns->cap = ns->cap ? ns->cap * 2 : 16;
		ns->v = xreallocarray(ns->v, ns->cap, sizeof(*ns->v));
	}
	ns->v[ns->n++] = owned;
}

static void names_free(struct names *ns)
{
	for (size_t i = 0; i < ns->n; i++)
		free(ns->v[i]);
	free(ns->v);
	memset(ns, 0, sizeof(*ns));
}

/* Valid names, normalised; lines that are not (hand edits, other tools) are
 * skipped. A missing file is an empty list. */
static int subs_read(const char *user_path, struct names *ns)
{
	char *path = xasprintf("%s/%s", user_path, MAILDIR_SUBSCRIPTIONS);
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	free(path);
	if (fd == -1)
		return errno == ENOENT ? 0 : -1;
	char *data = xmalloc(SUBS_MAX_BYTES + 1);
	size_t len = 0;
	ssize_t n;
	while (len < SUBS_MAX_BYTES && (n = read(fd, data + len, SUBS_MAX_BYTES - len)) != 0) {
		if (n == -1 && errno != EINTR)
			break;
		len += n > 0 ? (size_t)n : 0;
	}
	close(fd);
	data[len] = '\0';
	for (char *line = data, *nl; line < data + len; line = nl + 1) {
		nl = memchr(line, '\n', (size_t)(data + len - line));
		if (nl == NULL)
			break;               /* a cut last line is not a name */
		*nl = '\0';
		if (store_name_check(line) == 0)
			names_add(ns, store_name_normalize(line));
	}
	free(data);
	return 0;
}

static int subs_write(const char *user_path, const struct names *ns)
{
	struct buf b;
	buf_init(&b, SUBS_MAX_BYTES);
	int rc = 0;
	for (size_t i = 0; i < ns->n && rc == 0; i++)
		rc = buf_printf(&b, "%s\n", ns->v[i]);
	if (rc == -1)
		errno = ENOSPC;
	const struct maildir_file f = { .data = b.data != NULL ? b.data : "", .len = b.len };
	if (rc == 0)
		rc = maildir_replace_file(user_path, MAILDIR_SUBSCRIPTIONS, &f);
	buf_free(&b);
	return rc;
}

static void subscribe_work(void *job)
{
	struct fjob *j = job;
	struct names ns = { 0 };
	if (j->error != 0)
		return;
	if (ensure_user(j->user_path) == -1 || subs_read(j->user_path, &ns) == -1) {
		j->error = errno;
		names_free(&ns);
		return;
	}
	size_t out = 0;
	bool had = false;
	for (size_t i = 0; i < ns.n; i++) {
		if (strcmp(ns.v[i], j->name) == 0) {
			had = true;
			free(ns.v[i]);
		} else {
			ns.v[out++] = ns.v[i];
		}
	}
	ns.n = out;
	if (j->subscribe)
		names_add(&ns, xstrdup(j->name));
	if ((had || j->subscribe) && subs_write(j->user_path, &ns) == -1)
		j->error = errno;
	names_free(&ns);
}

static const struct store_job_ops subscribe_ops = { subscribe_work, NULL, fdone_complete, fjob_release };

struct store_req *store_folder_subscribe(struct store *s, const char *user, const char *name,
    bool subscribe, store_done_cb cb, void *arg)
{
	struct fjob *j = fjob_new(s, user, name, EINVAL);
	j->cb.done = cb;
	j->subscribe = subscribe;
	free(j->path);               /* the folder itself is not touched */
	j->path = NULL;
	return fjob_start(j, &subscribe_ops, arg, true);
}

/* ------------------------------------------------------------ list */

/* Hierarchy order: '/' sorts before every other byte, so a folder's children
 * come right after it; INBOX and its children first. */
static bool in_inbox_tree(const char *name)
{
	return strncmp(name, "INBOX", 5) == 0 && (name[5] == '\0' || name[5] == '/');
}

static int name_cmp(const char *a, const char *b)
{
	if (in_inbox_tree(a) != in_inbox_tree(b))
		return in_inbox_tree(a) ? -1 : 1;
	for (;; a++, b++) {
		unsigned char x = *a == '/' ? 1 : (unsigned char)*a, y = *b == '/' ? 1 : (unsigned char)*b;
		if (x != y || x == '\0')
			return (x > y) - (x < y);
	}
}

static int info_cmp(const void *pa, const void *pb)
{
	const struct store_folder_info *a = pa, *b = pb;
	return name_cmp(a->name, b->name);
}

struct infos {
	struct store_folder_info *v;
	size_t n, cap;
};

static void infos_add(struct infos *is, char *owned, bool exists, bool subscribed)
{
	if (is->n == is->cap) {
		is->cap = is->cap ? is->cap * 2 : 16;
		is->v = xreallocarray(is->v, is->cap, sizeof(*is->v));
	}
	is->v[is->n++] = (struct store_folder_info){ .name = owned, .exists = exists, .subscribed = subscribed };
}

/* Existing folders, and their missing parents as non-existent entries. */
static int list_scan(const char *user_path, struct infos *is)
{
	DIR *dir = opendir(user_path);
	if (dir == NULL)
		return -1;
	struct dirent *de;
	while ((de = readdir(dir)) != NULL) {
		char *name = decode_dirname(de->d_name);
		if (name == NULL)
			continue;
		char *full = xasprintf("%s/%s", user_path, de->d_name);
		bool ok = store_folder_exists(full);
		free(full);
		if (!ok) {
			free(name);
			continue;
		}
		for (char *sl = strchr(name, '/'); sl != NULL; sl = strchr(sl + 1, '/'))
			infos_add(is, xstrndup(name, (size_t)(sl - name)), false, false);
		infos_add(is, name, true, false);
	}
	closedir(dir);
	return 0;
}

/* Sorted; entries of one name merged; children and special use known. */
static void list_finish(struct infos *is)
{
	size_t out = 0;
	if (is->n > 1)
		qsort(is->v, is->n, sizeof(*is->v), info_cmp);
	for (size_t i = 0; i < is->n; i++) {
		struct store_folder_info *prev = out > 0 ? &is->v[out - 1] : NULL;
		if (prev != NULL && strcmp(prev->name, is->v[i].name) == 0) {
			prev->exists |= is->v[i].exists;
			prev->subscribed |= is->v[i].subscribed;
			free(is->v[i].name);
			continue;
		}
		is->v[out++] = is->v[i];
	}
	is->n = out;
	for (size_t i = 0; i < is->n; i++) {
		struct store_folder_info *f = &is->v[i];
		size_t len = strlen(f->name);
		for (size_t k = i + 1; k < is->n && !f->has_children; k++) {
			if (strncmp(is->v[k].name, f->name, len) != 0 || is->v[k].name[len] != '/')
				break;           /* past the subtree (hierarchy order) */
			f->has_children = is->v[k].exists;
		}
		f->special_use = f->exists ? store_special_use(f->name) : NULL;
	}
}

static void list_work(void *job)
{
	struct fjob *j = job;
	struct infos is = { 0 };
	struct names subs = { 0 };
	if (j->error != 0)
		return;
	if (ensure_user(j->user_path) == -1 || list_scan(j->user_path, &is) == -1 ||
	    subs_read(j->user_path, &subs) == -1) {
		j->error = errno;
		store_folder_list_free(is.v, is.n);
		names_free(&subs);
		return;
	}
	infos_add(&is, xstrdup("INBOX"), true, false);
	for (size_t i = 0; i < subs.n; i++) {
		infos_add(&is, subs.v[i], false, true);
		subs.v[i] = NULL;
	}
	names_free(&subs);
	list_finish(&is);
	j->list = is.v;
	j->nlist = is.n;
}

static void list_complete(void *job, void *arg)
{
	struct fjob *j = job;
	struct store_folder_info *v = j->list;
	size_t n = j->nlist;
	j->list = NULL;              /* the callback owns it */
	j->nlist = 0;
	j->cb.list(arg, j->error, v, n);
}

static const struct store_job_ops list_ops = { list_work, NULL, list_complete, fjob_release };

struct store_req *store_folder_list(struct store *s, const char *user, store_list_cb cb, void *arg)
{
	struct fjob *j = fjob_new(s, user, NULL, EINVAL);
	j->cb.list = cb;
	return fjob_start(j, &list_ops, arg, true);
}

void store_folder_list_free(struct store_folder_info *v, size_t n)
{
	for (size_t i = 0; i < n; i++)
		free(v[i].name);
	free(v);
}

/* ------------------------------------------------------------ create */

/* The folder and any missing parent ("a/b" makes "a" first). */
static int create_with_parents(const char *user_path, const char *name)
{
	char *buf = xstrdup(name);
	int rc = 0;
	for (char *sl = buf; rc == 0 && sl != NULL;) {
		sl = strchr(sl, '/');
		if (sl != NULL)
			*sl = '\0';
		char *path = store_folder_path(user_path, buf);
		if (path == NULL) {
			errno = EINVAL;
			rc = -1;
		} else if (!store_folder_exists(path)) {
			rc = maildir_create_folder(path);
		}
		free(path);
		if (sl != NULL)
			*sl++ = '/';
	}
	free(buf);
	return rc;
}

/* Only the missing parents of name ("a/b/c" makes "a" and "a/b"). */
static int create_parents(const char *user_path, const char *name)
{
	const char *sl = strrchr(name, '/');
	if (sl == NULL)
		return 0;
	char *parent = xstrndup(name, (size_t)(sl - name));
	int rc = create_with_parents(user_path, parent);
	free(parent);
	return rc;
}

static void create_work(void *job)
{
	struct fjob *j = job;
	if (j->error != 0)
		return;
	if (ensure_user(j->user_path) == -1)
		j->error = errno;
	else if (store_folder_exists(j->path))
		j->error = EEXIST;
	else if (create_with_parents(j->user_path, j->name) == -1)
		j->error = errno;
}

static const struct store_job_ops create_ops = { create_work, NULL, fdone_complete, fjob_release };

struct store_req *store_folder_create(struct store *s, const char *user, const char *name,
    store_done_cb cb, void *arg)
{
	struct fjob *j = fjob_new(s, user, name, EINVAL);
	j->cb.done = cb;
	if (j->error == 0 && is_inbox(j->name))
		j->error = EEXIST;
	return fjob_start(j, &create_ops, arg, true);
}

/* ------------------------------------------------------------ delete */

/* The user-dir entries below folder dir name d (".<d>.<rest>"), as names. */
static int children_of(const char *user_path, const char *d, struct names *ns)
{
	size_t dlen = strlen(d);
	DIR *dir = opendir(user_path);
	if (dir == NULL)
		return -1;
	struct dirent *de;
	while ((de = readdir(dir)) != NULL)
		if (strncmp(de->d_name, d, dlen) == 0 && de->d_name[dlen] == '.')
			names_add(ns, xstrdup(de->d_name));
	closedir(dir);
	return 0;
}

static int rm_entry(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	return (type == FTW_DP ? rmdir(path) : unlink(path)) == -1 && errno != ENOENT ? -1 : 0;
}

/* Out of sight first (a name no listing shows, '~' being refused in names),
 * so a crash half-way leaves no half-deleted folder behind; then removed. */
static int remove_folder(const char *user_path, const char *path, const char *host)
{
	char *uniq = maildir_unique_name(host);
	char *gone = xasprintf("%s/.~deleted-%s", user_path, uniq);
	int rc = rename(path, gone) == -1 || maildir_fsync_dir(user_path) == -1 ? -1 : 0;
	if (rc == 0)
		rc = nftw(gone, rm_entry, RM_FDS, FTW_DEPTH | FTW_PHYS);
	free(uniq);
	free(gone);
	return rc;
}

static void delete_work(void *job)
{
	struct fjob *j = job;
	struct names kids = { 0 };
	if (j->error != 0)
		return;
	const char *d = strrchr(j->path, '/') + 1;
	if (!store_folder_exists(j->path))
		j->error = ENOENT;
	else if (children_of(j->user_path, d, &kids) == -1)
		j->error = errno;
	else if (kids.n > 0)
		j->error = ENOTEMPTY;
	else if (remove_folder(j->user_path, j->path, store_hostname(j->s)) == -1)
		j->error = errno;
	names_free(&kids);
}

static void delete_apply(void *job, bool ran)
{
	struct fjob *j = job;
	if (ran && j->error == 0)
		store_mailbox_gone(j->s, j->user, j->name);
}

static const struct store_job_ops delete_ops = { delete_work, delete_apply, fdone_complete, fjob_release };

struct store_req *store_folder_delete(struct store *s, const char *user, const char *name,
    store_done_cb cb, void *arg)
{
	struct fjob *j = fjob_new(s, user, name, ENOENT);
	j->cb.done = cb;
	if (j->error == 0 && is_inbox(j->name))
		j->error = EPERM;
	return fjob_start(j, &delete_ops, arg, true);
}

/* ------------------------------------------------------------ rename */

/* Never over an existing directory (rename(2) would replace an empty one). */
static int rename_noreplace(const char *from, const char *to)
{
	int rc = renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE);
	if (rc == -1 && (errno == EINVAL || errno == ENOSYS)) {
		struct stat st;
		if (lstat(to, &st) == 0) {
			errno = EEXIST;
			return -1;
		}
		rc = rename(from, to);
	}
	return rc;
}

/* Folder from and its children (".<from>.x" -> ".<to>.x"); undone on error. */
static int rename_tree(const struct fjob *j)
{
	const char *dfrom = strrchr(j->path, '/') + 1, *dto = strrchr(j->path2, '/') + 1;
	struct names kids = { 0 };
	size_t done = 0;
	if (children_of(j->user_path, dfrom, &kids) == -1)
		return -1;
	names_add(&kids, xstrdup(dfrom));
	char **to = xcalloc(kids.n, sizeof(*to));
	int rc = 0;
	for (size_t i = 0; i < kids.n; i++)
		to[i] = xasprintf("%s/%s%s", j->user_path, dto, kids.v[i] + strlen(dfrom));
	for (; done < kids.n && rc == 0; done++) {
		char *from = xasprintf("%s/%s", j->user_path, kids.v[done]);
		if ((rc = rename_noreplace(from, to[done])) == -1) {
			free(from);
			break;
		}
		free(from);
	}
	int saved = errno;
	while (rc == -1 && done-- > 0) {
		char *back = xasprintf("%s/%s", j->user_path, kids.v[done]);
		rename(to[done], back);
		free(back);
	}
	if (maildir_fsync_dir(j->user_path) == -1 && rc == 0) {
		rc = -1;
		saved = errno;
	}
	for (size_t i = 0; i < kids.n; i++)
		free(to[i]);
	free(to);
	names_free(&kids);
	errno = saved;
	return rc;
}

/* both ends of an INBOX rename: the names left one directory for the other */
static int fsync_dirs(const struct fjob *j)
{
	return maildir_fsync_subdir(j->user_path, "cur") == -1 || maildir_fsync_subdir(j->user_path, "new") == -1 ||
	    maildir_fsync_subdir(j->path2, "cur") == -1 || maildir_fsync_subdir(j->path2, "new") == -1 ? -1 : 0;
}

static int move_file(const char *from_dir, const char *to_dir, const char *sub, const char *name)
{
	char *a = xasprintf("%s/%s/%s", from_dir, sub, name), *b = xasprintf("%s/%s/%s", to_dir, sub, name);
	int rc = rename(a, b);
	free(a);
	free(b);
	return rc == -1 && errno == ENOENT ? 0 : rc;   /* expunged meanwhile: nothing to move */
}

/* RFC 9051 §6.3.6: renaming INBOX moves its messages into a new folder and
 * leaves INBOX empty; its children stay. The new folder gets a fresh index
 * (new UIDVALIDITY), messages numbered in their INBOX order, flags and
 * keywords kept. */
static int rename_inbox(struct fjob *j)
{
	struct store_index *in = &j->ix, out = { 0 };
	int rc = -1;
	if (store_index_load(j->user_path, in, true) == -1 || create_with_parents(j->user_path, j->name2) == -1)
		goto out;
	out.uidvalidity = (uint32_t)time(NULL) != 0 ? (uint32_t)time(NULL) : 1;
	out.uidnext = 1;
	out.msgs = xreallocarray(NULL, in->count ? in->count : 1, sizeof(*out.msgs));
	for (size_t i = 0; i < in->nkeywords; i++)
		out.keywords[out.nkeywords++] = xstrdup(in->keywords[i]);
	for (size_t i = 0; i < in->count; i++) {
		struct store_msg *m = &in->msgs[i];
		char *rel = index_msg_path(j->user_path, m);
		if (rel == NULL)
			continue;            /* gone */
		char *slash = strchr(rel, '/');
		*slash = '\0';
		int mrc = move_file(j->user_path, j->path2, rel, slash + 1);
		free(rel);
		if (mrc == -1)
			goto out;            /* moved ones are in the new folder: a rescan numbers them */
		struct store_msg *n = &out.msgs[out.count++];
		*n = *m;
		n->base = xstrdup(m->base);
		n->uid = out.uidnext++;
		n->modseq = ++out.highestmodseq;
	}
	if (fsync_dirs(j) == -1 || index_write(j->path2, &out) == -1)
		goto out;
	for (size_t i = 0; i < in->count; i++)
		free(in->msgs[i].base);
	in->count = 0;
	in->highestmodseq++;
	rc = index_write(j->user_path, in);
	j->have_ix = true;
out:
	index_free(&out);
	return rc;
}

static void rename_work(void *job)
{
	struct fjob *j = job;
	if (j->error != 0)
		return;
	if (is_inbox(j->name2) || store_folder_exists(j->path2))
		j->error = EEXIST;
	else if (is_inbox(j->name)) {
		if (rename_inbox(j) == -1)
			j->error = errno;
	} else if (!store_folder_exists(j->path))
		j->error = ENOENT;
	else if (create_parents(j->user_path, j->name2) == -1 || rename_tree(j) == -1)
		j->error = errno;
}

/* INBOX stays (emptied: its new index); other folders are gone under the old name. */
static void rename_apply(void *job, bool ran)
{
	struct fjob *j = job;
	if (!ran)
		return;
	if (j->have_ix)
		store_mailbox_install(j->s, j->path, &j->ix);
	else if (j->error == 0)
		store_mailbox_gone(j->s, j->user, j->name);
}

static const struct store_job_ops rename_ops = { rename_work, rename_apply, fdone_complete, fjob_release };

struct store_req *store_folder_rename(struct store *s, const char *user, const char *from,
    const char *to, store_done_cb cb, void *arg)
{
	struct fjob *j = fjob_new(s, user, from, ENOENT);
	j->cb.done = cb;
	if (j->error == 0 && store_name_check(to) == 0) {
		j->name2 = store_name_normalize(to);
		j->path2 = store_folder_path(j->user_path, j->name2);
	}
	if (j->error == 0 && j->path2 == NULL)
		j->error = EINVAL;
	/* into its own subtree: the folder would have to contain itself */
	size_t len = j->error == 0 ? strlen(j->name) : 0;
	if (j->error == 0 && !is_inbox(j->name) && strncmp(j->name2, j->name, len) == 0 &&
	    (j->name2[len] == '\0' || j->name2[len] == '/'))
		j->error = strcmp(j->name, j->name2) == 0 ? EEXIST : EINVAL;
	return fjob_start(j, &rename_ops, arg, true);
}

/* ------------------------------------------------------------ status and usage */

static void status_of(const struct store_index *ix, struct store_status *st)
{
	memset(st, 0, sizeof(*st));
	for (size_t i = 0; i < ix->count; i++) {
		const struct store_msg *m = &ix->msgs[i];
		st->messages++;
		st->unseen += (m->flags & MF_SEEN) == 0;
		st->deleted += (m->flags & MF_TRASHED) != 0;
		st->size += m->size;
	}
	st->recent = st->messages;   /* no session claimed them (store.h: in memory only) */
	st->uidnext = ix->uidnext;
	st->uidvalidity = ix->uidvalidity;
	st->highestmodseq = ix->highestmodseq;
}

static void status_work(void *job)
{
	struct fjob *j = job;
	if (j->error != 0 || j->have_st)
		return;
	if (!store_folder_exists(j->path))
		j->error = ENOENT;
	else if (store_index_load(j->path, &j->ix, true) == -1)
		j->error = errno;
	else {
		status_of(&j->ix, &j->st);
		j->have_ix = true;
	}
}

/* opened meanwhile: the shared mailbox takes the fresher index */
static void status_apply(void *job, bool ran)
{
	struct fjob *j = job;
	if (ran && j->have_ix)
		store_mailbox_install(j->s, j->path, &j->ix);
}

static void status_complete(void *job, void *arg)
{
	struct fjob *j = job;
	j->cb.status(arg, j->error, j->error == 0 ? &j->st : NULL);
}

static const struct store_job_ops status_ops = { status_work, status_apply, status_complete, fjob_release };

struct store_req *store_folder_status(struct store *s, const char *user, const char *name,
    store_status_cb cb, void *arg)
{
	struct fjob *j = fjob_new(s, user, name, ENOENT);
	j->cb.status = cb;
	struct store_mailbox *mb = j->error == 0 ? store_mailbox_lookup(s, j->path) : NULL;
	if (mb != NULL) {
		store_mailbox_status(mb, &j->st);   /* no I/O: the answer is known now */
		j->have_st = true;
		free(j->path);
		j->path = NULL;          /* nor any queue to wait in */
	}
	return fjob_start(j, &status_ops, arg, false);
}

/* One folder's totals from its index, or from a scan when it has none (no
 * write: usage runs outside the folder queues). */
static void usage_add(const char *path, struct fjob *j)
{
	struct store_index ix;
	if (index_read(path, &ix) == -1) {
		memset(&ix, 0, sizeof(ix));
		if (index_sync(path, &ix, NULL) == -1) {
			index_free(&ix);
			return;
		}
	}
	for (size_t i = 0; i < ix.count; i++)
		j->bytes += ix.msgs[i].size;
	j->messages += ix.count;
	index_free(&ix);
}

static void usage_work(void *job)
{
	struct fjob *j = job;
	if (j->error != 0 || !store_folder_exists(j->user_path))
		return;                  /* no Maildir yet: nothing used */
	DIR *dir = opendir(j->user_path);
	if (dir == NULL) {
		j->error = errno;
		return;
	}
	usage_add(j->user_path, j);
	struct dirent *de;
	while ((de = readdir(dir)) != NULL) {
		char *name = decode_dirname(de->d_name);
		if (name == NULL)
			continue;
		char *full = xasprintf("%s/%s", j->user_path, de->d_name);
		if (store_folder_exists(full))
			usage_add(full, j);
		free(full);
		free(name);
	}
	closedir(dir);
}

static void usage_complete(void *job, void *arg)
{
	struct fjob *j = job;
	j->cb.usage(arg, j->error, j->bytes, j->messages);
}

static const struct store_job_ops usage_ops = { usage_work, NULL, usage_complete, fjob_release };

struct store_req *store_user_usage(struct store *s, const char *user, store_usage_cb cb, void *arg)
{
	struct fjob *j = fjob_new(s, user, NULL, EINVAL);
	j->cb.usage = cb;
	return fjob_start(j, &usage_ops, arg, false);
}
