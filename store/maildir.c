/* maildir.c: Maildir++ layout, safe address -> path mapping, durable delivery,
 * and the same durability protocol (tmp file, fsync, rename or link, fsync the
 * directory) for whole files: the folder index and the relay queue's entries.
 *
 * Everything here blocks (mkdir, write, fsync, rename): call it from an aio
 * worker or from the CLI, never from the reactor. No state is shared except
 * the process-wide delivery sequence number (atomic). Strings returned are
 * malloc'ed and owned by the caller. */
#include "store/store.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/util.h"
#include "common/xmalloc.h"

#define LOCAL_MAX 64                 /* RFC 5321 §4.5.3.1.1 */
#define DOMAIN_MAX 255               /* RFC 5321 §4.5.3.1.2 */
#define FOLDER_MAX 200               /* keeps ".<name>" + "/tmp/<unique>" under PATH_MAX parts */
#define CHUNK (64 * 1024)
#define TMP_MAX_AGE (36 * 3600)      /* Maildir convention: tmp/ files older than 36 h are junk */

static const char *const special_folders[] = { "Sent", "Drafts", "Trash", "Junk", "Archive" };
static const char *const subdirs[] = { "cur", "new", "tmp" };

/* One path component an attacker may have chosen (local part, domain,
 * folder name): nothing that walks the tree, hides a file or breaks a log. */
static bool component_safe(const char *p, size_t len, size_t max)
{
	if (len == 0 || len > max || p[0] == '.')
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)p[i];
		if (c < 0x20 || c == 0x7f || c == '/' || c == '\\')
			return false;
		if (c == '.' && i + 1 < len && p[i + 1] == '.')
			return false;
	}
	return true;
}

static char *lower_dup(const char *p, size_t len)
{
	char *s = xstrndup(p, len);
	for (char *c = s; *c != '\0'; c++)
		*c = (char)tolower((unsigned char)*c);
	return s;
}

char *maildir_user_path(const char *data_dir, const char *address)
{
	if (data_dir == NULL || address == NULL)
		return NULL;
	const char *at = strchr(address, '@');
	if (at == NULL || strchr(at + 1, '@') != NULL)
		return NULL;
	size_t llen = (size_t)(at - address);
	const char *dom = at + 1;
	if (!component_safe(address, llen, LOCAL_MAX) || !component_safe(dom, strlen(dom), DOMAIN_MAX))
		return NULL;

	char *local = lower_dup(address, llen);
	char *domain = lower_dup(dom, strlen(dom));
	char *path = xasprintf("%s/mail/%s/%s", data_dir, domain, local);
	free(local);
	free(domain);
	return path;
}

/* "INBOX" is case-insensitive (RFC 3501 §5.1); other names become Maildir++
 * ".<name>" directories, '.' being the Maildir++ hierarchy separator. */
char *maildir_folder_path(const char *user_path, const char *folder)
{
	if (user_path == NULL || folder == NULL)
		return NULL;
	if (util_strcaseeq(folder, "INBOX"))
		return xstrdup(user_path);
	size_t len = strlen(folder);
	if (!component_safe(folder, len, FOLDER_MAX) || folder[len - 1] == '.')
		return NULL;
	return xasprintf("%s/.%s", user_path, folder);
}

int maildir_fsync_dir(const char *path)
{
	int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd == -1)
		return -1;
	int rc = fsync(fd);
	int saved = errno;
	close(fd);
	errno = saved;
	return rc;
}

/* mkdir one directory; a fresh one is made durable by syncing its parent. */
static int mkdir_durable(char *path)
{
	if (mkdir(path, 0700) == -1)
		return errno == EEXIST ? 0 : -1;
	char *slash = strrchr(path, '/');
	if (slash == NULL || slash == path)
		return 0;
	*slash = '\0';
	int rc = maildir_fsync_dir(path);
	*slash = '/';
	return rc;
}

/* mkdir -p; path is modified in place while walking and restored. */
static int mkdir_p(char *path)
{
	for (char *p = path + 1; *p != '\0'; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		int rc = mkdir_durable(path);
		*p = '/';
		if (rc == -1)
			return -1;
	}
	return mkdir_durable(path);
}

static int create_file(const char *dir, const char *name)
{
	char *path = xasprintf("%s/%s", dir, name);
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
	free(path);
	if (fd == -1)
		return -1;
	return close(fd);
}

/* dir itself plus cur/ new/ tmp/; subfolders also get the "maildirfolder"
 * marker file that Maildir++ readers (Dovecot, Courier) expect. */
static int make_maildir(const char *dir, bool subfolder)
{
	char *path = xstrdup(dir);
	int rc = mkdir_p(path);
	free(path);
	for (size_t i = 0; rc == 0 && i < sizeof(subdirs) / sizeof(subdirs[0]); i++) {
		path = xasprintf("%s/%s", dir, subdirs[i]);
		rc = mkdir_durable(path);
		free(path);
	}
	if (rc == 0 && subfolder)
		rc = create_file(dir, "maildirfolder");
	return rc;
}

int maildir_create_folder(const char *folder_path)
{
	return make_maildir(folder_path, true);
}

/* IMAP clients show only subscribed folders by default: a new account starts
 * with INBOX and the special-use folders subscribed. The file is made only
 * when missing, so an account whose user unsubscribed keeps that choice. */
static int write_default_subscriptions(const char *user_path)
{
	struct buf b;
	buf_init(&b, 4096);
	buf_appends(&b, "INBOX\n");
	for (size_t i = 0; i < sizeof(special_folders) / sizeof(special_folders[0]); i++)
		buf_printf(&b, "%s\n", special_folders[i]);
	const struct maildir_file f = { .data = b.data, .len = b.len };
	int rc = maildir_create_file(user_path, MAILDIR_SUBSCRIPTIONS, &f);
	buf_free(&b);
	return rc == -1 && errno == EEXIST ? 0 : rc;
}

int maildir_create(const char *user_path)
{
	struct stat st;
	char *tmp = xasprintf("%s/tmp", user_path);
	bool fresh = stat(tmp, &st) == -1;   /* tmp/ is made last: no account yet */
	free(tmp);
	if (make_maildir(user_path, false) == -1)
		return -1;
	for (size_t i = 0; i < sizeof(special_folders) / sizeof(special_folders[0]); i++) {
		char *dir = xasprintf("%s/.%s", user_path, special_folders[i]);
		int rc = make_maildir(dir, true);
		free(dir);
		if (rc == -1)
			return -1;
	}
	return fresh ? write_default_subscriptions(user_path) : 0;
}

/* '/' and ':' as the Maildir spec says; ',' too, so that a hostname can
 * never fake the ",S=<size>" field that index_sync trusts. */
static void append_host(struct buf *b, const char *host)
{
	for (const char *c = host; *c != '\0'; c++) {
		if (*c == '/' || *c == ':' || *c == ',')
			buf_printf(b, "\\%03o", (unsigned)(unsigned char)*c);
		else
			buf_appendc(b, *c);
	}
}

char *maildir_unique_name(const char *hostname)
{
	static atomic_uint_fast64_t seq;   /* process-wide: names stay unique across threads */
	struct timeval tv;
	struct buf b;

	gettimeofday(&tv, NULL);
	uint64_t q = atomic_fetch_add(&seq, 1);
	buf_init(&b, 4096);
	buf_printf(&b, "%lld.M%ldP%ldQ%llu.", (long long)tv.tv_sec, (long)tv.tv_usec,
	    (long)getpid(), (unsigned long long)q);
	append_host(&b, hostname != NULL && *hostname != '\0' ? hostname : "localhost");
	return buf_steal(&b, NULL);
}

void maildir_flags_string(uint32_t flags, char out[8])
{
	static const char letters[] = "DFPRST";   /* bit i of MF_* is letter i, ASCII order */
	size_t n = 0;
	for (size_t i = 0; letters[i] != '\0'; i++)
		if (flags & (1u << i))
			out[n++] = letters[i];
	out[n] = '\0';
}

int maildir_parse_flags(const char *filename)
{
	const char *info = strchr(filename, ':');
	int flags = 0;

	if (info == NULL || strncmp(info, ":2,", 3) != 0)
		return 0;
	for (const char *c = info + 3; *c != '\0'; c++) {
		switch (*c) {
		case 'D': flags |= MF_DRAFT; break;
		case 'F': flags |= MF_FLAGGED; break;
		case 'P': flags |= MF_PASSED; break;
		case 'R': flags |= MF_REPLIED; break;
		case 'S': flags |= MF_SEEN; break;
		case 'T': flags |= MF_TRASHED; break;
		default: break;   /* lowercase keywords and unknown letters: not ours */
		}
	}
	return flags;
}

/* ------------------------------------------------------------ delivery */

/* One delivery in progress: the tmp/ file and the CRLF normaliser feeding it. */
struct delivery {
	const char *folder;          /* borrowed */
	char *unique;                /* owned */
	char *tmp_path;              /* owned; NULL once renamed away */
	int fd;
	uint64_t size, max;          /* stored octets so far; 0 = unlimited */
	bool prev_cr;                /* last byte written was CR */
	char *out;                   /* owned, CHUNK bytes */
	size_t outlen;
};

static int delivery_flush(struct delivery *d)
{
	if (d->outlen > 0 && util_write_all(d->fd, d->out, d->outlen) == -1) {
		if (errno == 0)
			errno = EIO;
		return -1;
	}
	d->outlen = 0;
	return 0;
}

/* Append n stored bytes, enforcing max on the stored (normalised) size. */
static int delivery_put(struct delivery *d, const char *p, size_t n)
{
	if (d->max != 0 && (n > d->max || d->size > d->max - n)) {
		errno = EFBIG;
		return -1;
	}
	d->size += n;
	if (n > 0)
		d->prev_cr = p[n - 1] == '\r';
	while (n > 0) {
		if (d->outlen == CHUNK && delivery_flush(d) == -1)
			return -1;
		size_t take = CHUNK - d->outlen < n ? CHUNK - d->outlen : n;
		memcpy(d->out + d->outlen, p, take);
		d->outlen += take;
		p += take;
		n -= take;
	}
	return 0;
}

/* Bare LF -> CRLF; CRLF and a CR before anything else are kept as they are.
 * prev_cr carries a CR at the end of one chunk over to an LF in the next. */
static int delivery_feed(struct delivery *d, const char *p, size_t len)
{
	while (len > 0) {
		const char *lf = memchr(p, '\n', len);
		size_t run = lf != NULL ? (size_t)(lf - p) : len;
		if (delivery_put(d, p, run) == -1)
			return -1;
		if (lf == NULL)
			break;
		if (delivery_put(d, d->prev_cr ? "\n" : "\r\n", d->prev_cr ? 1 : 2) == -1)
			return -1;
		p += run + 1;
		len -= run + 1;
	}
	return 0;
}

static int delivery_begin(struct delivery *d, const char *folder, const char *host, uint64_t max)
{
	memset(d, 0, sizeof(*d));
	d->folder = folder;
	d->max = max;
	d->unique = maildir_unique_name(host);
	d->tmp_path = xasprintf("%s/tmp/%s", folder, d->unique);
	d->out = xmalloc(CHUNK);
	d->fd = open(d->tmp_path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (d->fd == -1) {
		/* not ours (EEXIST) or never made: delivery_end must not unlink it */
		free(d->tmp_path);
		d->tmp_path = NULL;
		return -1;
	}
	return 0;
}

/* Frees everything and removes the tmp/ file if still there; keeps errno. */
static void delivery_end(struct delivery *d)
{
	int saved = errno;
	if (d->fd != -1)
		close(d->fd);
	if (d->tmp_path != NULL)
		unlink(d->tmp_path);
	free(d->tmp_path);
	free(d->unique);
	free(d->out);
	errno = saved;
}

/* fsync the data, rename into new/ (atomic visibility), fsync new/ (durable
 * name). Only after all three may the caller acknowledge the message. */
static int delivery_commit(struct delivery *d, uint64_t *size_r, char **path_r)
{
	if (delivery_flush(d) == -1 || fsync(d->fd) == -1)
		return -1;
	int rc = close(d->fd);
	d->fd = -1;
	if (rc == -1)
		return -1;
	char *new_path = xasprintf("%s/new/%s,S=%llu", d->folder, d->unique, (unsigned long long)d->size);
	char *new_dir = xasprintf("%s/new", d->folder);
	rc = rename(d->tmp_path, new_path);
	if (rc == 0) {
		free(d->tmp_path);
		d->tmp_path = NULL;
		if ((rc = maildir_fsync_dir(new_dir)) == -1)
			d->tmp_path = new_path;   /* not durable: delivery_end removes it */
	}
	free(new_dir);
	if (rc == -1) {
		if (d->tmp_path != new_path)
			free(new_path);
		return -1;
	}
	if (size_r != NULL)
		*size_r = d->size;
	if (path_r != NULL)
		*path_r = new_path;
	else
		free(new_path);
	return 0;
}

static ssize_t read_retry(int fd, char *p, size_t len)
{
	ssize_t n;
	do
		n = read(fd, p, len);
	while (n == -1 && errno == EINTR);
	return n;
}

int maildir_deliver_fd_path(const char *folder_path, const char *hostname, int in_fd, uint64_t max_size,
    uint64_t *size_r, char **path_r)
{
	struct delivery d;
	int rc = delivery_begin(&d, folder_path, hostname, max_size);
	char *in = xmalloc(CHUNK);

	while (rc == 0) {
		ssize_t n = read_retry(in_fd, in, CHUNK);
		if (n <= 0) {
			rc = n == 0 ? delivery_commit(&d, size_r, path_r) : -1;
			break;
		}
		rc = delivery_feed(&d, in, (size_t)n);
	}
	free(in);
	delivery_end(&d);
	return rc;
}

int maildir_deliver_fd(const char *folder_path, const char *hostname, int in_fd, uint64_t max_size,
    uint64_t *size_r)
{
	return maildir_deliver_fd_path(folder_path, hostname, in_fd, max_size, size_r, NULL);
}

int maildir_deliver_iov(const char *folder_path, const char *hostname, const struct iovec *parts,
    size_t nparts, uint64_t max_size, uint64_t *size_r, char **path_r)
{
	struct delivery d;
	int rc = delivery_begin(&d, folder_path, hostname, max_size);
	for (size_t i = 0; rc == 0 && i < nparts; i++)
		rc = delivery_feed(&d, parts[i].iov_base, parts[i].iov_len);
	if (rc == 0)
		rc = delivery_commit(&d, size_r, path_r);
	delivery_end(&d);
	return rc;
}

int maildir_deliver_buf_path(const char *folder_path, const char *hostname, const char *data, size_t len,
    uint64_t max_size, uint64_t *size_r, char **path_r)
{
	struct iovec one = { (void *)data, len };
	return maildir_deliver_iov(folder_path, hostname, &one, 1, max_size, size_r, path_r);
}

int maildir_deliver_buf(const char *folder_path, const char *hostname, const char *data, size_t len,
    uint64_t *size_r)
{
	return maildir_deliver_buf_path(folder_path, hostname, data, len, 0, size_r, NULL);
}

/* ------------------------------------------------------------ whole files */

static int file_step(const struct maildir_file *f, const char *what)
{
	return f->step != NULL ? f->step(what, f->step_arg) : 0;
}

static void unlink_keep_errno(const char *path)
{
	int saved = errno;
	unlink(path);
	errno = saved;
}

/* tmp (oflags: O_TRUNC or O_EXCL) with the content, fsync'ed and closed. On
 * failure tmp is removed and errno kept. */
static int file_write_tmp(const char *tmp, int oflags, const struct maildir_file *f)
{
	int fd = open(tmp, O_WRONLY | O_CREAT | O_CLOEXEC | oflags, 0600);
	if (fd == -1)
		return -1;
	errno = 0;
	int rc = file_step(f, "write");
	if (rc == 0)
		rc = f->fill != NULL ? f->fill(fd, f->fill_arg) : util_write_all(fd, f->data, f->len);
	if (rc == -1 && errno == 0)
		errno = EIO;                 /* write(2) returned 0 */
	if (rc == 0 && (rc = file_step(f, "fsync")) == 0)
		rc = fsync(fd);
	int saved = errno;
	if (close(fd) == -1 && rc == 0) {
		rc = -1;
		saved = errno;
	}
	if (rc == -1)
		unlink(tmp);
	errno = saved;
	return rc;
}

int maildir_replace_file(const char *dir, const char *name, const struct maildir_file *f)
{
	char *tmp = xasprintf("%s/%s.tmp", dir, name);
	char *dst = xasprintf("%s/%s", dir, name);
	int rc = file_write_tmp(tmp, O_TRUNC, f);
	if (rc == 0 && ((rc = file_step(f, "rename")) == -1 || (rc = rename(tmp, dst)) == -1))
		unlink_keep_errno(tmp);
	if (rc == 0 && !f->lazy_rename && (rc = file_step(f, "fsync-dir")) == 0)
		rc = maildir_fsync_dir(dir);
	free(tmp);
	free(dst);
	return rc;
}

/* link + unlink rather than rename, so that an existing name is never
 * clobbered (EEXIST). */
int maildir_create_file(const char *dir, const char *name, const struct maildir_file *f)
{
	char *tmp = xasprintf("%s/%s.tmp", dir, name);
	char *dst = xasprintf("%s/%s", dir, name);
	int rc = file_write_tmp(tmp, O_EXCL, f);
	if (rc == 0) {
		if ((rc = file_step(f, "link")) == 0)
			rc = link(tmp, dst);
		unlink_keep_errno(tmp);
	}
	if (rc == 0 && ((rc = file_step(f, "fsync-dir")) == -1 || (rc = maildir_fsync_dir(dir)) == -1)) {
		/* made, but maybe not durable: take it back so -1 leaves nothing */
		int saved = errno;
		unlink(dst);
		maildir_fsync_dir(dir);
		errno = saved;
	}
	free(tmp);
	free(dst);
	return rc;
}

/* ------------------------------------------------------------ tmp/ cleanup */

static int clean_entry(int dfd, const char *name, time_t now)
{
	struct stat st;
	if (name[0] == '.')
		return 0;
	if (fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == -1)
		return errno == ENOENT ? 0 : -1;
	if (!S_ISREG(st.st_mode) || now - st.st_mtime <= TMP_MAX_AGE)
		return 0;
	if (unlinkat(dfd, name, 0) == -1 && errno != ENOENT)
		return -1;
	return 0;
}

int maildir_clean_tmp(const char *folder_path)
{
	char *path = xasprintf("%s/tmp", folder_path);
	DIR *dir = opendir(path);
	free(path);
	if (dir == NULL)
		return -1;

	time_t now = time(NULL);
	int rc = 0, saved = 0;
	struct dirent *de;
	while ((de = readdir(dir)) != NULL) {
		if (clean_entry(dirfd(dir), de->d_name, now) == -1) {
			rc = -1;
			saved = errno;
		}
	}
	closedir(dir);
	errno = saved;
	return rc;
}

int maildir_fsync_subdir(const char *folder_path, const char *sub)
{
	char *dir = xasprintf("%s/%s", folder_path, sub);
	int rc = maildir_fsync_dir(dir);
	free(dir);
	return rc;
}
