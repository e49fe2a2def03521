/* store.c: the callback-shaped store API (design §5) over aio, maildir, index.
 *
 * Every request is a struct store_req run as one aio job. Its inputs are
 * copied in at submit time and its results are written by the worker into
 * the request itself; the reactor reads them only in req_done(), after the
 * aio hand-off (mutex) has ordered the two. Jobs that touch a folder's index
 * (open, expunge) queue per folder path and run one at a time in submission
 * order; deliveries (tmp/ + rename into new/, the Maildir way) and file reads
 * need no such order and run at once.
 *
 * Ownership: the store owns a request from submit until req_done() (or
 * store_cancel() for one still waiting) frees it. The caller's handle is valid
 * until its callback starts or it cancels. Results passed to a callback (view,
 * file) belong to the callback; results of a cancelled request are freed here. */
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "common/log.h"
#include "common/xmalloc.h"

#define READ_DEFAULT (64 * 1024)
#define READ_MAX (1024 * 1024)
#define OPEN_RETRIES 3               /* file renamed (flags) between lookup and open */
#define REQ_QUEUES 3                 /* folder queues one request may wait in (rename: user, from, to) */

struct store_req;

/* One folder's queue: a request runs when it is the head of every queue it
 * is in; the rest wait. A request joins all its queues in one step, so all
 * queues order any two requests alike (submission order): no deadlock. */
struct folderq {
	struct folderq *next;        /* in s->folders */
	char *path;                  /* owned; the key */
	struct store_req *head, *tail;
};

struct store {
	struct event_base *base;
	char *data_dir, *hostname;   /* owned */
	struct aio *aio;             /* owned */
	struct folderq *folders;     /* folders with a job running */
	struct store_req *reqs;      /* every live request, for store_free */
	struct store_mailbox *mailboxes;   /* open shared folders (mailbox.c owns them) */
	bool freeing;
};

struct store_file {
	int fd;
	uint64_t size;
	char *data;                  /* the whole file, read with the open when small, or NULL */
	size_t data_len;
	unsigned inflight;           /* reads whose worker may use fd (reactor only) */
	bool closing;                /* closed by its owner while reads were in flight */
};

struct open_job {
	char *user, *folder;         /* owned; moved into the view */
	char *user_path, *path;      /* owned */
	struct store_view *view;     /* result, owned until handed to the callback */
};

struct fopen_job {
	char *path;                  /* folder, owned */
	struct store_msg msg;        /* copy, base owned */
	struct store_file *f;        /* result */
};

struct read_job {
	struct store_file *f;        /* borrowed; kept open by f->inflight */
	uint64_t offset;
	size_t maxlen, len;
	char *data;                  /* owned, maxlen bytes */
};

struct many_job {
	char *path;                  /* folder, owned */
	struct store_msg *msgs;      /* owned copies */
	struct store_blob *blobs;    /* results, one per message */
	size_t n;
};

struct expunge_job {
	char *path;                  /* owned */
	struct store_msg *msgs;      /* owned copies of the messages to remove */
	size_t count;
};

struct deliver_job {
	char *data_dir, *hostname;   /* owned copies: a job never reads the store */
	char **users;                /* owned, nusers */
	char **prefixes;             /* owned, nusers entries ("" when none) */
	size_t nusers;
	char *data;                  /* owned copy of the message */
	size_t len;
};

/* A job of another store/ file (mailbox.c), run like store.c's own. */
struct gen_job {
	const struct store_job_ops *ops;
	void *job;                               /* owned by ops->release */
};

struct req_ops {
	aio_work_fn work;                        /* worker: fills results, r->error */
	void (*complete)(struct store_req *r);   /* reactor: the user's callback */
	void (*release)(struct store_req *r);    /* reactor: frees inputs and results left */
	/* reactor, NULL or called once the job was handed to aio (ran or not),
	 * cancelled or not: effects on shared state that must not depend on the
	 * caller still wanting the result */
	void (*apply)(struct store_req *r);
};

struct store_req {
	struct store *s;
	const struct req_ops *ops;
	struct store_req *prev, *next;           /* in s->reqs */
	struct folderq *fq[REQ_QUEUES];          /* serialised on these folders (NULL: unused) */
	struct store_req *fq_next[REQ_QUEUES];   /* next in fq[i] */
	struct aio_job *job;                     /* while submitted */
	bool submitted;                          /* handed to aio (once) */
	bool ran;                                /* work() returned (worker wrote it before the hand-off) */
	bool cancelled, in_cb;
	int error;                               /* errno for the callback; preset = no work */
	void *arg;
	union {
		store_view_cb view;
		store_file_cb file;
		store_read_cb read;
		store_done_cb done;
		store_blobs_cb blobs;
	} cb;
	union {
		struct open_job open;
		struct fopen_job fopen;
		struct read_job read;
		struct expunge_job expunge;
		struct deliver_job deliver;
		struct gen_job gen;
		struct many_job many;
	} u;
};

/* ------------------------------------------------------------ requests */

static struct store_req *req_new(struct store *s, const struct req_ops *ops, void *arg)
{
	struct store_req *r = xcalloc(1, sizeof(*r));
	r->s = s;
	r->ops = ops;
	r->arg = arg;
	r->next = s->reqs;
	if (s->reqs != NULL)
		s->reqs->prev = r;
	s->reqs = r;
	return r;
}

static void req_destroy(struct store_req *r)
{
	struct store *s = r->s;
	if (r->prev != NULL)
		r->prev->next = r->next;
	else
		s->reqs = r->next;
	if (r->next != NULL)
		r->next->prev = r->prev;
	r->ops->release(r);
	free(r);
}

static void req_done(void *arg, bool cancelled);

static void req_work(void *arg)
{
	struct store_req *r = arg;
	r->ops->work(r);
	r->ran = true;
}

static void req_submit(struct store_req *r)
{
	r->submitted = true;
	r->job = aio_submit(r->s->aio, req_work, req_done, r);
}

static struct folderq *fq_get(struct store *s, const char *path)
{
	for (struct folderq *q = s->folders; q != NULL; q = q->next)
		if (strcmp(q->path, path) == 0)
			return q;
	struct folderq *q = xcalloc(1, sizeof(*q));
	q->path = xstrdup(path);
	q->next = s->folders;
	s->folders = q;
	return q;
}

static void fq_unlink_free(struct store *s, struct folderq *q)
{
	for (struct folderq **pp = &s->folders; *pp != NULL; pp = &(*pp)->next) {
		if (*pp == q) {
			*pp = q->next;
			break;
		}
	}
	free(q->path);
	free(q);
}

/* r's slot for queue q (r is in q) */
static size_t fq_slot(const struct store_req *r, const struct folderq *q)
{
	for (size_t i = 0; i < REQ_QUEUES; i++)
		if (r->fq[i] == q)
			return i;
	fatalx("store: request not in its folder queue");
}

/* Head of every queue it is in, and not yet running: start it. */
static void fq_try_submit(struct store_req *r)
{
	if (r->submitted || r->s->freeing)
		return;
	for (size_t i = 0; i < REQ_QUEUES; i++)
		if (r->fq[i] != NULL && r->fq[i]->head != r)
			return;
	req_submit(r);
}

/* Queue behind the running jobs of each named folder (NULL or repeated
 * names are skipped), or submit now when no folder is named. */
static struct store_req *req_start_n(struct store_req *r, const char *const *folders, size_t n)
{
	size_t k = 0;
	for (size_t i = 0; i < n && k < REQ_QUEUES; i++) {
		if (folders[i] == NULL)
			continue;
		struct folderq *q = fq_get(r->s, folders[i]);
		bool dup = false;
		for (size_t j = 0; j < k; j++)
			dup |= r->fq[j] == q;
		if (dup)
			continue;
		r->fq[k++] = q;
		if (q->tail != NULL)
			q->tail->fq_next[fq_slot(q->tail, q)] = r;
		else
			q->head = r;
		q->tail = r;
	}
	if (k == 0)
		req_submit(r);
	else
		fq_try_submit(r);
	return r;
}

static struct store_req *req_start(struct store_req *r, const char *folder)
{
	return req_start_n(r, &folder, 1);
}

/* r leaves all its queues (it finished, or never ran); the requests that
 * become heads start when they are heads everywhere. */
static void fq_leave(struct store_req *r)
{
	struct store_req *next_heads[REQ_QUEUES] = { NULL };

	for (size_t i = 0; i < REQ_QUEUES; i++) {
		struct folderq *q = r->fq[i];
		if (q == NULL)
			continue;
		struct store_req *next = r->fq_next[i];
		if (q->head == r) {
			q->head = next;
			next_heads[i] = next;
		} else {
			struct store_req *prev = q->head;
			while (prev->fq_next[fq_slot(prev, q)] != r)
				prev = prev->fq_next[fq_slot(prev, q)];
			prev->fq_next[fq_slot(prev, q)] = next;
			if (q->tail == r)
				q->tail = prev;
		}
		if (q->head == NULL)
			fq_unlink_free(r->s, q);
		r->fq[i] = NULL;
		r->fq_next[i] = NULL;
	}
	for (size_t i = 0; i < REQ_QUEUES; i++)
		if (next_heads[i] != NULL)
			fq_try_submit(next_heads[i]);
}

/* aio completion, reactor thread: the one place callbacks are called from. */
static void req_done(void *arg, bool cancelled)
{
	struct store_req *r = arg;
	r->job = NULL;
	fq_leave(r);
	if (r->ops->apply != NULL)
		r->ops->apply(r);
	if (!cancelled && !r->cancelled) {
		r->in_cb = true;
		r->ops->complete(r);
		r->in_cb = false;
	}
	req_destroy(r);
}

void store_cancel(struct store_req **r_r)
{
	struct store_req *r = *r_r;
	if (r == NULL)
		return;
	*r_r = NULL;
	if (r->cancelled)
		return;
	r->cancelled = true;
	if (r->in_cb)
		return;                  /* req_done frees it when the callback returns */
	if (r->job != NULL) {
		aio_cancel(r->job);      /* req_done(cancelled) frees it later */
		return;
	}
	fq_leave(r);
	req_destroy(r);
}

/* ------------------------------------------------------------ helpers (worker side) */

static void msg_copy(struct store_msg *dst, const struct store_msg *src)
{
	*dst = *src;
	dst->base = xstrdup(src->base);
}

/* A corrupt index is kept for inspection, never silently overwritten. */
static void set_aside_corrupt(const char *path)
{
	char *from = xasprintf("%s/postling.index", path);
	char *to = xasprintf("%s/postling.index.corrupt-%lld", path, (long long)time(NULL));
	int rc = rename(from, to);
	struct logline *l = log_begin(LL_WARN, "store.index.rebuild");
	log_str(l, "folder", path);
	log_str(l, "corrupt_copy", rc == 0 ? to : NULL);
	log_end(l);
	free(from);
	free(to);
}

/* index_read, rebuilding when missing or corrupt; then (always after a
 * rebuild) sync with the directory and write back when anything changed. */
int store_index_load(const char *path, struct store_index *ix, bool rescan)
{
	bool rebuilt = false, changed = false;
	if (index_read(path, ix) == -1) {
		if (errno != ENOENT && errno != EBADMSG)
			return -1;
		if (errno == EBADMSG)
			set_aside_corrupt(path);
		rebuilt = true;
	} else if (!rescan) {
		return 0;
	}
	if (index_sync(path, ix, &changed) == -1 || ((changed || rebuilt) && index_write(path, ix) == -1)) {
		int saved = errno;
		index_free(ix);
		errno = saved;
		return -1;
	}
	return 0;
}

/* tmp/ is made last (after cur/ and new/): a folder another thread is still
 * creating does not count as existing yet */
bool store_folder_exists(const char *path)
{
	struct stat st;
	char *cur = xasprintf("%s/tmp", path);
	int rc = stat(cur, &st);
	free(cur);
	return rc == 0 && S_ISDIR(st.st_mode);
}

/* ------------------------------------------------------------ open folder */

static void open_work(void *arg)
{
	struct store_req *r = arg;
	struct open_job *j = &r->u.open;
	struct store_index ix;

	if (r->error != 0)
		return;
	if (!store_folder_exists(j->path) && maildir_create(j->user_path) == -1) {
		r->error = errno;
		return;
	}
	if (!store_folder_exists(j->path)) {
		r->error = ENOENT;       /* not a folder maildir_create makes */
		return;
	}
	maildir_clean_tmp(j->path);  /* best effort: leftovers of crashed deliveries */
	if (store_index_load(j->path, &ix, true) == -1) {
		r->error = errno;
		return;
	}
	struct store_view *v = xcalloc(1, sizeof(*v));
	v->user = j->user;
	v->folder = j->folder;
	j->user = j->folder = NULL;
	v->path = xstrdup(j->path);
	v->uidvalidity = ix.uidvalidity;
	v->uidnext = ix.uidnext;
	v->msgs = ix.msgs;           /* moved: the index copy is ours alone */
	v->count = ix.count;
	for (size_t i = 0; i < v->count; i++)
		v->total_size += v->msgs[i].size;
	ix.msgs = NULL;
	ix.count = 0;
	index_free(&ix);
	j->view = v;
}

static void open_complete(struct store_req *r)
{
	struct store_view *v = r->u.open.view;
	r->u.open.view = NULL;       /* the callback owns it now */
	r->cb.view(r->arg, r->error, v);
}

static void open_release(struct store_req *r)
{
	struct open_job *j = &r->u.open;
	free(j->user);
	free(j->folder);
	free(j->user_path);
	free(j->path);
	store_view_free(&j->view);
}

/* POP3 may have numbered new files: a shared IMAP view of the folder rescans */
static void open_apply(struct store_req *r)
{
	if (r->ran && r->u.open.path != NULL)
		store_mailbox_touched(r->s, r->u.open.path);
}

static const struct req_ops open_ops = { open_work, open_complete, open_release, open_apply };

struct store_req *store_open_folder(struct store *s, const char *user, const char *folder,
    store_view_cb cb, void *arg)
{
	struct store_req *r = req_new(s, &open_ops, arg);
	struct open_job *j = &r->u.open;

	r->cb.view = cb;
	j->user = xstrdup(user);
	j->folder = xstrdup(folder);
	j->user_path = maildir_user_path(s->data_dir, user);
	j->path = j->user_path != NULL ? maildir_folder_path(j->user_path, folder) : NULL;
	if (j->path == NULL)
		r->error = EINVAL;       /* unsafe address or folder name: reported async */
	return req_start(r, j->path);
}

void store_view_free(struct store_view **v_r)
{
	struct store_view *v = *v_r;
	if (v == NULL)
		return;
	*v_r = NULL;
	for (size_t i = 0; i < v->count; i++)
		free(v->msgs[i].base);
	free(v->msgs);
	free(v->user);
	free(v->folder);
	free(v->path);
	free(v);
}

/* ------------------------------------------------------------ files */

static void file_destroy(struct store_file *f)
{
	close(f->fd);
	free(f->data);
	free(f);
}

/* A small file is read with its open: one job per message instead of two. */
static void prefetch(struct store_file *f)
{
	if (f->size > STORE_PREFETCH_MAX)
		return;
	char *d = xmalloc((size_t)f->size + 1);
	size_t got = 0;
	while (got < f->size) {
		ssize_t n = pread(f->fd, d + got, (size_t)f->size - got, (off_t)got);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	if (got != f->size) {        /* short or failing: the reads report it */
		free(d);
		return;
	}
	d[got] = '\0';
	f->data = d;
	f->data_len = got;
}

const char *store_file_contents(const struct store_file *f, size_t *len_r)
{
	*len_r = f->data != NULL ? f->data_len : 0;
	return f->data;
}

static int open_msg(const char *folder, const struct store_msg *m)
{
	/* the usual name first: one open(), no directory opened and searched */
	char *guess = index_msg_guess_path(folder, m);
	int gfd = guess != NULL ? open(guess, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK) : -1;
	free(guess);
	struct stat st;
	if (gfd != -1 && fstat(gfd, &st) == 0 && S_ISREG(st.st_mode))
		return gfd;          /* (O_NONBLOCK: a FIFO planted there never blocks the open) */
	if (gfd != -1)
		close(gfd);
	char *full = index_msg_full_path(folder, m);
	if (full == NULL)
		return -1;
	int fd = open(full, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	free(full);
	return fd;
}

/* Opens m's file into f (fd, size, and the contents when small): 0, or an
 * errno value. A file renamed between lookup and open is looked up again. */
static int file_open(const char *folder, const struct store_msg *m, struct store_file *f)
{
	struct stat st;
	int fd = -1;
	for (int i = 0; i < OPEN_RETRIES && fd == -1; i++)
		if ((fd = open_msg(folder, m)) == -1 && errno != ENOENT)
			break;
	if (fd == -1 || fstat(fd, &st) == -1) {
		int e = errno;
		if (fd != -1)
			close(fd);
		return e;
	}
	f->fd = fd;
	f->size = (uint64_t)st.st_size;
	prefetch(f);
	return 0;
}

static void fopen_work(void *arg)
{
	struct store_req *r = arg;
	struct fopen_job *j = &r->u.fopen;
	struct store_file f = { .fd = -1 };
	if ((r->error = file_open(j->path, &j->msg, &f)) != 0)
		return;
	j->f = xmalloc(sizeof(*j->f));
	*j->f = f;
}

static void fopen_complete(struct store_req *r)
{
	struct store_file *f = r->u.fopen.f;
	r->u.fopen.f = NULL;
	r->cb.file(r->arg, r->error, f);
}

static void fopen_release(struct store_req *r)
{
	struct fopen_job *j = &r->u.fopen;
	free(j->path);
	free(j->msg.base);
	if (j->f != NULL)
		file_destroy(j->f);
}

static const struct req_ops fopen_ops = { fopen_work, fopen_complete, fopen_release, NULL };

struct store_req *store_file_open(struct store *s, const struct store_view *v, const struct store_msg *m,
    store_file_cb cb, void *arg)
{
	struct store_req *r = req_new(s, &fopen_ops, arg);
	r->cb.file = cb;
	r->u.fopen.path = xstrdup(v->path);
	msg_copy(&r->u.fopen.msg, m);
	return req_start(r, NULL);
}

/* ------------------------------------------------------------ several small files */

static void many_work(void *arg)
{
	struct store_req *r = arg;
	struct many_job *j = &r->u.many;
	for (size_t i = 0; i < j->n; i++) {
		struct store_blob *b = &j->blobs[i];
		struct store_file f = { .fd = -1 };
		if ((b->error = file_open(j->path, &j->msgs[i], &f)) != 0)
			continue;
		if (f.data != NULL) {
			b->data = f.data;    /* the blob takes the contents */
			b->len = f.data_len;
		} else {
			b->error = f.size > STORE_PREFETCH_MAX ? EFBIG : EIO;
		}
		close(f.fd);
	}
}

static void many_complete(struct store_req *r)
{
	struct many_job *j = &r->u.many;
	struct store_blob *b = j->blobs;
	j->blobs = NULL;             /* the callback owns them now */
	r->cb.blobs(r->arg, b, j->n);
}

static void many_release(struct store_req *r)
{
	struct many_job *j = &r->u.many;
	free(j->path);
	for (size_t i = 0; i < j->n; i++)
		free(j->msgs[i].base);
	free(j->msgs);
	store_blobs_free(j->blobs, j->n);
}

static const struct req_ops many_ops = { many_work, many_complete, many_release, NULL };

struct store_req *store_read_many(struct store *s, const char *folder_path, const struct store_msg *const *msgs,
    size_t n, store_blobs_cb cb, void *arg)
{
	struct store_req *r = req_new(s, &many_ops, arg);
	struct many_job *j = &r->u.many;
	r->cb.blobs = cb;
	j->path = xstrdup(folder_path);
	j->n = n;
	j->msgs = xcalloc(n ? n : 1, sizeof(*j->msgs));
	j->blobs = xcalloc(n ? n : 1, sizeof(*j->blobs));
	for (size_t i = 0; i < n; i++) {
		msg_copy(&j->msgs[i], msgs[i]);
		j->blobs[i].uid = msgs[i]->uid;
	}
	return req_start(r, NULL);
}

void store_blobs_free(struct store_blob *b, size_t n)
{
	if (b == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free(b[i].data);
	free(b);
}

static void read_work(void *arg)
{
	struct store_req *r = arg;
	struct read_job *j = &r->u.read;

	while (r->error == 0 && j->len < j->maxlen) {
		ssize_t n = pread(j->f->fd, j->data + j->len, j->maxlen - j->len, (off_t)(j->offset + j->len));
		if (n == -1 && errno == EINTR)
			continue;
		if (n == -1) {
			r->error = errno;
			return;
		}
		if (n == 0)
			break;
		j->len += (size_t)n;
	}
}

static void read_complete(struct store_req *r)
{
	struct read_job *j = &r->u.read;
	r->cb.read(r->arg, r->error, j->data, r->error == 0 ? j->len : 0);
}

static void read_release(struct store_req *r)
{
	struct read_job *j = &r->u.read;
	free(j->data);
	if (--j->f->inflight == 0 && j->f->closing)
		file_destroy(j->f);
}

static const struct req_ops read_ops = { read_work, read_complete, read_release, NULL };

/* maxlen 0 means a default chunk; larger than READ_MAX is clamped, so a
 * caller's number never sizes an allocation unchecked. */
struct store_req *store_file_read(struct store *s, struct store_file *f, uint64_t offset, size_t maxlen,
    store_read_cb cb, void *arg)
{
	struct store_req *r = req_new(s, &read_ops, arg);
	struct read_job *j = &r->u.read;

	r->cb.read = cb;
	j->f = f;
	j->offset = offset;
	j->maxlen = maxlen == 0 ? READ_DEFAULT : maxlen > READ_MAX ? READ_MAX : maxlen;
	/* a message file does not change once delivered: a buffer past its end would
	 * only be allocated (and, at 64 KiB, churn the heap top) for nothing; one
	 * octet more than what is left still sees a file that grew, and EOF */
	if (offset <= f->size && f->size - offset < j->maxlen)
		j->maxlen = (size_t)(f->size - offset) + 1;
	j->data = xmalloc(j->maxlen);
	if (offset > (uint64_t)INT64_MAX - j->maxlen)
		r->error = EINVAL;
	f->inflight++;
	return req_start(r, NULL);
}

uint64_t store_file_size(const struct store_file *f)
{
	return f->size;
}

/* With reads still on workers the fd must stay open: the last one closes it. */
void store_file_close(struct store_file **f_r)
{
	struct store_file *f = *f_r;
	if (f == NULL)
		return;
	*f_r = NULL;
	if (f->inflight > 0)
		f->closing = true;
	else
		file_destroy(f);
}

/* ------------------------------------------------------------ expunge */

/* ENOENT counts as removed: another session or client got there first. */
static int unlink_msg(const char *folder, const struct store_msg *m)
{
	char *full = index_msg_full_path(folder, m);
	if (full == NULL)
		return errno == ENOENT ? 0 : -1;
	int rc = unlink(full) == -1 && errno != ENOENT ? -1 : 0;
	free(full);
	return rc;
}

static void expunge_work(void *arg)
{
	struct store_req *r = arg;
	struct expunge_job *j = &r->u.expunge;
	struct store_index ix;
	int err = 0;

	for (size_t i = 0; i < j->count; i++)
		if (unlink_msg(j->path, &j->msgs[i]) == -1 && err == 0)
			err = errno;
	if ((maildir_fsync_subdir(j->path, "cur") == -1 || maildir_fsync_subdir(j->path, "new") == -1) && err == 0)
		err = errno;
	/* the index follows the directory: entries whose file is gone drop out */
	if (store_index_load(j->path, &ix, true) == -1 && err == 0)
		err = errno;
	else
		index_free(&ix);
	r->error = err;
}

static void done_complete(struct store_req *r)
{
	r->cb.done(r->arg, r->error);
}

static void expunge_release(struct store_req *r)
{
	struct expunge_job *j = &r->u.expunge;
	for (size_t i = 0; i < j->count; i++)
		free(j->msgs[i].base);
	free(j->msgs);
	free(j->path);
}

static void expunge_apply(struct store_req *r)
{
	if (r->ran)
		store_mailbox_touched(r->s, r->u.expunge.path);
}

static const struct req_ops expunge_ops = { expunge_work, done_complete, expunge_release, expunge_apply };

/* Files are found by base name, not uid, so an index rebuilt meanwhile
 * cannot make us remove the wrong message. */
struct store_req *store_expunge(struct store *s, const struct store_view *v, const uint32_t *uids,
    size_t nuids, store_done_cb cb, void *arg)
{
	struct store_req *r = req_new(s, &expunge_ops, arg);
	struct expunge_job *j = &r->u.expunge;

	r->cb.done = cb;
	j->path = xstrdup(v->path);
	j->msgs = xreallocarray(NULL, nuids ? nuids : 1, sizeof(*j->msgs));
	for (size_t i = 0; i < nuids; i++) {
		const struct store_msg *m = index_find(v->msgs, v->count, uids[i]);
		if (m != NULL)
			msg_copy(&j->msgs[j->count++], m);
	}
	return req_start(r, j->path);
}

/* ------------------------------------------------------------ deliver */

static int deliver_one(const struct deliver_job *j, size_t i, char **path_r)
{
	const char *user = j->users[i];
	struct iovec parts[2] = { { j->prefixes[i], strlen(j->prefixes[i]) }, { j->data, j->len } };
	char *up = maildir_user_path(j->data_dir, user);
	if (up == NULL) {
		errno = EINVAL;
		return -1;
	}
	int rc = 0;
	if (!store_folder_exists(up))
		rc = maildir_create(up);
	if (rc == 0)
		rc = maildir_deliver_iov(up, j->hostname, parts, 2, 0, NULL, path_r);
	int saved = errno;
	free(up);
	errno = saved;
	return rc;
}

/* Take back copies already made, so that a retry after our 4xx reply does
 * not leave the earlier recipients with duplicates. */
static void undo_copies(char **made, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (made[i] == NULL || unlink(made[i]) == -1)
			continue;
		char *slash = strrchr(made[i], '/');
		*slash = '\0';
		maildir_fsync_dir(made[i]);
	}
}

static void deliver_work(void *arg)
{
	struct store_req *r = arg;
	struct deliver_job *j = &r->u.deliver;
	char **made = xcalloc(j->nusers ? j->nusers : 1, sizeof(*made));
	size_t i;

	for (i = 0; i < j->nusers; i++) {
		if (deliver_one(j, i, &made[i]) == -1) {
			r->error = errno;
			undo_copies(made, i);
			break;
		}
	}
	for (size_t k = 0; k < j->nusers; k++)
		free(made[k]);
	free(made);
}

static void deliver_release(struct store_req *r)
{
	struct deliver_job *j = &r->u.deliver;
	for (size_t i = 0; i < j->nusers; i++) {
		free(j->users[i]);
		free(j->prefixes[i]);
	}
	free(j->users);
	free(j->prefixes);
	free(j->data);
	free(j->data_dir);
	free(j->hostname);
}

/* An IDLEing IMAP session of a recipient's INBOX learns of the mail now, not
 * at its next poll: the open shared mailbox rescans. Also when the caller
 * cancelled: the copies are there all the same. */
static void deliver_apply(struct store_req *r)
{
	struct deliver_job *j = &r->u.deliver;
	if (!r->ran || r->error != 0)
		return;
	for (size_t i = 0; i < j->nusers; i++) {
		char *up = maildir_user_path(j->data_dir, j->users[i]);
		if (up != NULL)
			store_mailbox_touched(r->s, up);
		free(up);
	}
}

static const struct req_ops deliver_ops = { deliver_work, done_complete, deliver_release, deliver_apply };

/* The message is copied: the caller may free data as soon as this returns. */
struct store_req *store_deliver(struct store *s, char *const *users, const char *const *prefixes,
    size_t nusers, const char *data, size_t len, store_done_cb cb, void *arg)
{
	struct store_req *r = req_new(s, &deliver_ops, arg);
	struct deliver_job *j = &r->u.deliver;

	r->cb.done = cb;
	j->data_dir = xstrdup(s->data_dir);
	j->hostname = xstrdup(s->hostname);
	j->users = xreallocarray(NULL, nusers ? nusers : 1, sizeof(*j->users));
	j->prefixes = xreallocarray(NULL, nusers ? nusers : 1, sizeof(*j->prefixes));
	for (size_t i = 0; i < nusers; i++) {
		j->users[i] = xstrdup(users[i]);
		j->prefixes[i] = xstrdup(prefixes != NULL ? prefixes[i] : "");
	}
	j->nusers = nusers;
	j->data = xmalloc(len);
	memcpy(j->data, data, len);
	j->len = len;
	return req_start(r, NULL);
}

/* ------------------------------------------------------------ store */

struct store *store_new(struct event_base *base, const char *data_dir, const char *hostname,
    int nthreads)
{
	struct aio *a = aio_new(base, nthreads);
	if (a == NULL)
		return NULL;
	struct store *s = xcalloc(1, sizeof(*s));
	s->base = base;
	s->aio = a;
	s->data_dir = xstrdup(data_dir);
	s->hostname = xstrdup(hostname != NULL ? hostname : "localhost");
	return s;
}

struct aio *store_aio(struct store *s)
{
	return s->aio;
}

struct event_base *store_base(const struct store *s)
{
	return s->base;
}

const char *store_data_dir(const struct store *s)
{
	return s->data_dir;
}

const char *store_hostname(const struct store *s)
{
	return s->hostname;
}

bool store_freeing(const struct store *s)
{
	return s->freeing;
}

struct store_mailbox **store_mailbox_list(struct store *s)
{
	return &s->mailboxes;
}

/* ------------------------------------------------------------ jobs of other files */

static void gen_work(void *arg)
{
	struct store_req *r = arg;
	r->u.gen.ops->work(r->u.gen.job);
}

static void gen_apply(struct store_req *r)
{
	if (r->u.gen.ops->apply != NULL)
		r->u.gen.ops->apply(r->u.gen.job, r->ran);
}

static void gen_complete(struct store_req *r)
{
	r->u.gen.ops->complete(r->u.gen.job, r->arg);
}

static void gen_release(struct store_req *r)
{
	r->u.gen.ops->release(r->u.gen.job);
}

static const struct req_ops gen_ops = { gen_work, gen_complete, gen_release, gen_apply };

struct store_req *store_job_start(struct store *s, const struct store_job_ops *ops, void *job, void *arg,
    const char *const *queues, size_t nqueues)
{
	struct store_req *r = req_new(s, &gen_ops, arg);
	r->u.gen.ops = ops;
	r->u.gen.job = job;
	return req_start_n(r, queues, nqueues);
}

/* Must not be called from inside a store callback. Waiting requests are
 * dropped; submitted ones are cancelled and freed by aio_free's done calls. */
void store_free(struct store **s_r)
{
	struct store *s = *s_r;
	if (s == NULL)
		return;
	*s_r = NULL;
	s->freeing = true;
	/* waiting requests never ran: drop them (freeing: nothing new starts) */
	for (struct store_req *r = s->reqs, *next; r != NULL; r = next) {
		next = r->next;
		if (!r->submitted) {
			fq_leave(r);
			req_destroy(r);
		}
	}
	for (struct store_req *r = s->reqs; r != NULL; r = r->next) {
		r->cancelled = true;
		if (r->job != NULL)
			aio_cancel(r->job);
	}
	aio_free(&s->aio);
	/* after the jobs (their apply steps may still touch open mailboxes) */
	store_mailboxes_free(s);
	free(s->data_dir);
	free(s->hostname);
	free(s);
}
