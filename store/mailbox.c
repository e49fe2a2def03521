/* mailbox.c: the shared open folder (design §5) and the message operations of
 * IMAP on it: sync, flags, expunge, copy/move, append.
 *
 * One struct store_mailbox per (user, folder) in the process, found by folder
 * path in the store's list, refcounted by its callers and by the jobs in
 * flight for it. Its state (a struct store_index) belongs to the reactor and
 * changes only there, when a job's apply step installs the index the job
 * left on disk. Jobs touching a folder's index run in that folder's queue
 * (store.c), so each job reads the index the previous one wrote, and the
 * indexes are installed in the order they were written: the shared state is
 * always the newest one. A job never reads the shared state; it works on its
 * inputs and the disk, and hands back results.
 *
 * Watchers are told from an event on the store's event_base, never from
 * inside a store call; changes before the event runs fold into one call.
 *
 * Folder names and folder-level operations are in folder.c. */
#include "store/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <event2/event.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"

#define RENAME_RETRIES 3             /* the file was renamed by another program meanwhile */
#define LINGER_SECONDS 30           /* a mailbox nobody holds stays loaded this long */
#define REFRESH_MAX 2                /* in flight per mailbox: one running, one to rescan after it */
#define COPY_CHUNK (64 * 1024)

/* What a rescan would look at: when new/, cur/ and the index are as they were
 * at the last full sync, nothing changed and the rescan (readdir of both, the
 * index parsed) is skipped — Dovecot's maildir sync does the same. Timestamps
 * within STAMP_TRUST seconds of the scan are not trusted: the kernel's clock
 * tick is coarser than a change, so a second change could keep the time. */
#define STAMP_TRUST 2
struct dir_stamp {
	bool valid;
	struct timespec cur, new_, idx;
	ino_t idx_ino;
	off_t idx_size;
};

struct store_watch {
	struct store_watch *next;
	struct store_mailbox *mb;
	void (*changed)(void *arg);
	void *arg;
	bool dead;                   /* unwatched while notifying: freed after the pass */
};

struct store_mailbox {
	struct store *s;
	struct store_mailbox *prev, *next;   /* in *store_mailbox_list(s) */
	char *user, *name, *path;    /* owned; name normalised */
	unsigned refs;               /* callers + jobs in flight */
	struct store_index ix;       /* reactor state, owned */
	struct store_mbox_state st;  /* what store_mailbox_state hands out; points into ix */
	bool loaded;                 /* ix installed once */
	uint32_t recent_from;        /* \Recent watermark: uids >= it not yet claimed */
	unsigned refreshing;         /* refresh syncs in flight */
	struct dir_stamp stamp;      /* as of the last full sync, if nothing changed since */
	struct event *ev;            /* notify watchers (activated, never added) */
	struct event *linger;        /* refs reached 0: destroyed when it fires (a client
	                              * selecting the folder again, or reconnecting to poll
	                              * it, finds it loaded: a stamp check, no rescan) */
	struct store_watch *watches;
	unsigned notifying;          /* inside the watcher loop */
};

/* One job of this file; which fields count depends on the ops table. */
struct mjob {
	struct store *s;
	struct store_mailbox *mb;    /* a reference (released in mjob_release), or NULL */
	char *path, *path2;          /* owned: the folder; the copy target or append folder */
	char *user_path, *host;      /* owned copies: a worker never reads the store */
	int error;
	struct store_index ix, ix2;  /* results: path's and path2's index as written */
	bool have_ix, have_ix2;
	bool clean_tmp;              /* open: tmp/ cleanup */
	struct dir_stamp stamp_in;   /* sync: the mailbox's stamp when the job was made */
	struct dir_stamp stamp_out;  /* sync: the stamp of the index it loaded */
	bool unchanged;              /* sync: stamp_in still holds, nothing loaded */
	uint32_t *uids;              /* owned, sorted, no duplicates */
	size_t n;
	enum store_flag_op op;
	uint32_t flags;
	char **kws;                  /* owned */
	size_t nkws;
	bool move;
	uint32_t *src, *dst;         /* copy results (COPYUID), owned */
	size_t npairs;
	uint32_t uidvalidity, uid;   /* copy target / append results */
	int fd;                      /* append input, owned (-1: none) */
	uint64_t max_size;
	time_t date;
	union {
		store_done_cb done;
		store_mailbox_cb mbox;
		store_copy_cb copy;
		store_append_cb append;
	} cb;
};

/* ------------------------------------------------------------ state and watchers */

static void mb_state_update(struct store_mailbox *mb)
{
	struct store_mbox_state *st = &mb->st;
	st->uidvalidity = mb->ix.uidvalidity;
	st->uidnext = mb->ix.uidnext;
	st->highestmodseq = mb->ix.highestmodseq;
	st->msgs = mb->ix.msgs;
	st->count = mb->ix.count;
	st->keywords = (const char *const *)mb->ix.keywords;
	st->nkeywords = mb->ix.nkeywords;
}

static void mb_watches_sweep(struct store_mailbox *mb)
{
	for (struct store_watch **pp = &mb->watches; *pp != NULL;) {
		struct store_watch *w = *pp;
		if (w->dead) {
			*pp = w->next;
			free(w);
		} else {
			pp = &w->next;
		}
	}
}

static void mb_destroy(struct store_mailbox *mb)
{
	struct store_mailbox **head = store_mailbox_list(mb->s);
	if (mb->prev != NULL)
		mb->prev->next = mb->next;
	else
		*head = mb->next;
	if (mb->next != NULL)
		mb->next->prev = mb->prev;
	for (struct store_watch *w = mb->watches; w != NULL; w = w->next)
		w->dead = true;          /* callers that closed without unwatching */
	mb_watches_sweep(mb);
	event_free(mb->ev);
	event_free(mb->linger);
	index_free(&mb->ix);
	free(mb->user);
	free(mb->name);
	free(mb->path);
	free(mb);
}

static struct store_mailbox *mb_ref(struct store_mailbox *mb)
{
	if (mb->refs++ == 0)
		evtimer_del(mb->linger);
	return mb;
}

static void mb_unref(struct store_mailbox *mb)
{
	if (mb == NULL || --mb->refs > 0)
		return;
	if (mb->loaded && !mb->st.deleted && !store_freeing(mb->s)) {
		struct timeval tv = { LINGER_SECONDS, 0 };
		evtimer_add(mb->linger, &tv);
		return;
	}
	mb_destroy(mb);
}

static void mb_linger_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	struct store_mailbox *mb = arg;
	if (mb->refs == 0)
		mb_destroy(mb);
}

/* The event: every live watcher once. A watcher may unwatch (itself or
 * others) or close the mailbox from its callback: the loop holds a reference
 * and frees unwatched entries only after the pass. */
static void mb_notify_cb(evutil_socket_t fd, short what, void *arg)
{
	struct store_mailbox *mb = mb_ref(arg);
	mb->notifying++;
	for (struct store_watch *w = mb->watches; w != NULL; w = w->next)
		if (!w->dead)
			w->changed(w->arg);
	if (--mb->notifying == 0)
		mb_watches_sweep(mb);
	mb_unref(mb);
}

static void mb_changed(struct store_mailbox *mb)
{
	if (mb->watches != NULL)
		event_active(mb->ev, EV_TIMEOUT, 0);   /* no-op when already active: folds */
}

/* The newest index of the folder replaces the state (moved out of ix). */
static void mb_install(struct store_mailbox *mb, struct store_index *ix)
{
	if (mb->st.deleted)
		return;                  /* sessions are leaving it: keep what they saw */
	mb->stamp.valid = false;     /* a sync sets it again after installing */
	struct store_index old = mb->ix;
	bool changed = mb->loaded && (old.uidvalidity != ix->uidvalidity || old.uidnext != ix->uidnext ||
	    old.count != ix->count || old.highestmodseq != ix->highestmodseq || old.nkeywords != ix->nkeywords);
	mb->ix = *ix;
	memset(ix, 0, sizeof(*ix));
	mb->loaded = true;
	mb_state_update(mb);
	index_free(&old);
	if (changed)
		mb_changed(mb);
}

static struct store_mailbox *mb_lookup(struct store *s, const char *path)
{
	for (struct store_mailbox *mb = *store_mailbox_list(s); mb != NULL; mb = mb->next)
		if (!mb->st.deleted && strcmp(mb->path, path) == 0)
			return mb;
	return NULL;
}

struct store_mailbox *store_mailbox_lookup(struct store *s, const char *path)
{
	struct store_mailbox *mb = mb_lookup(s, path);
	return mb != NULL && mb->loaded ? mb : NULL;
}

void store_mailbox_install(struct store *s, const char *path, struct store_index *ix)
{
	struct store_mailbox *mb = store_mailbox_lookup(s, path);
	if (mb != NULL)
		mb_install(mb, ix);
}

/* Folder deleted or renamed away: name itself or anything below it. */
void store_mailbox_gone(struct store *s, const char *user, const char *name)
{
	size_t len = strlen(name);
	for (struct store_mailbox *mb = *store_mailbox_list(s); mb != NULL; mb = mb->next) {
		if (mb->st.deleted || strcmp(mb->user, user) != 0 || strncmp(mb->name, name, len) != 0 ||
		    (mb->name[len] != '\0' && mb->name[len] != '/'))
			continue;
		mb->st.deleted = true;
		mb_changed(mb);
	}
}

void store_mailbox_status(const struct store_mailbox *mb, struct store_status *st)
{
	memset(st, 0, sizeof(*st));
	for (size_t i = 0; i < mb->ix.count; i++) {
		const struct store_msg *m = &mb->ix.msgs[i];
		st->messages++;
		st->unseen += (m->flags & MF_SEEN) == 0;
		st->deleted += (m->flags & MF_TRASHED) != 0;
		st->recent += m->uid >= mb->recent_from;
		st->size += m->size;
	}
	st->uidnext = mb->ix.uidnext;
	st->uidvalidity = mb->ix.uidvalidity;
	st->highestmodseq = mb->ix.highestmodseq;
}

const struct store_mbox_state *store_mailbox_state(const struct store_mailbox *mb)
{
	return &mb->st;
}

const char *store_mailbox_name(const struct store_mailbox *mb)
{
	return mb->name;
}

const struct store_msg *store_mailbox_find(const struct store_mailbox *mb, uint32_t uid)
{
	return index_find(mb->ix.msgs, mb->ix.count, uid);
}

struct store_watch *store_mailbox_watch(struct store_mailbox *mb, void (*changed)(void *arg), void *arg)
{
	struct store_watch *w = xcalloc(1, sizeof(*w));
	w->mb = mb;
	w->changed = changed;
	w->arg = arg;
	w->next = mb->watches;       /* at the head: a pass under way does not call it */
	mb->watches = w;
	return w;
}

void store_mailbox_unwatch(struct store_watch **w_r)
{
	struct store_watch *w = *w_r;
	if (w == NULL)
		return;
	*w_r = NULL;
	w->dead = true;
	if (w->mb->notifying == 0)
		mb_watches_sweep(w->mb);
}

uint32_t store_mailbox_claim_recent(struct store_mailbox *mb)
{
	uint32_t from = mb->recent_from;
	mb->recent_from = mb->ix.uidnext;
	return from < mb->ix.uidnext ? from : mb->ix.uidnext;
}

void store_mailboxes_free(struct store *s)
{
	struct store_mailbox **head = store_mailbox_list(s);
	while (*head != NULL)
		mb_destroy(*head);
}

/* ------------------------------------------------------------ jobs */

static struct mjob *mjob_new(struct store *s, struct store_mailbox *mb)
{
	struct mjob *j = xcalloc(1, sizeof(*j));
	j->s = s;
	j->mb = mb != NULL ? mb_ref(mb) : NULL;
	j->fd = -1;
	j->host = xstrdup(store_hostname(s));
	if (mb != NULL)
		j->path = xstrdup(mb->path);
	return j;
}

static void mjob_release(void *job)
{
	struct mjob *j = job;
	mb_unref(j->mb);
	index_free(&j->ix);
	index_free(&j->ix2);
	for (size_t i = 0; i < j->nkws; i++)
		free(j->kws[i]);
	free(j->kws);
	free(j->uids);
	free(j->src);
	free(j->dst);
	if (j->fd != -1)
		close(j->fd);
	free(j->path);
	free(j->path2);
	free(j->user_path);
	free(j->host);
	free(j);
}

/* path's index into the job's mailbox, path2's into whichever is open */
static void mjob_apply(void *job, bool ran)
{
	struct mjob *j = job;
	if (!ran)
		return;
	if (j->have_ix && j->mb != NULL)
		mb_install(j->mb, &j->ix);
	else if (j->have_ix)
		store_mailbox_install(j->s, j->path, &j->ix);
	if (j->have_ix2)
		store_mailbox_install(j->s, j->path2, &j->ix2);
}

static void done_complete(void *job, void *arg)
{
	struct mjob *j = job;
	j->cb.done(arg, j->error);
}

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
	return (x > y) - (x < y);
}

static void mjob_set_uids(struct mjob *j, const uint32_t *uids, size_t n)
{
	j->uids = xreallocarray(NULL, n ? n : 1, sizeof(*j->uids));
	if (n > 0)
		memcpy(j->uids, uids, n * sizeof(*uids));
	qsort(j->uids, n, sizeof(*j->uids), cmp_u32);
	j->n = 0;
	for (size_t i = 0; i < n; i++)
		if (j->n == 0 || j->uids[j->n - 1] != j->uids[i])
			j->uids[j->n++] = j->uids[i];
}

static void mjob_set_keywords(struct mjob *j, const char *const *kws, size_t n)
{
	j->kws = xreallocarray(NULL, n ? n : 1, sizeof(*j->kws));
	for (size_t i = 0; i < n; i++)
		j->kws[i] = xstrdup(kws[i]);
	j->nkws = n;
}

static struct store_req *mjob_start(struct mjob *j, const struct store_job_ops *ops, void *arg)
{
	const char *queues[2] = { j->path, j->path2 };
	return store_job_start(j->s, ops, j, arg, queues, 2);
}

/* Keyword names to a mask of ix's bits (new names added): -1 with errno
 * EINVAL or ENOSPC; the caller then drops ix unwritten, so nothing changed. */
static int keywords_mask(struct store_index *ix, char *const *kws, size_t n, uint64_t *mask_r)
{
	uint64_t mask = 0;
	for (size_t i = 0; i < n; i++) {
		int bit = index_keyword_add(ix, kws[i]);
		if (bit == -1)
			return -1;
		mask |= 1ULL << bit;
	}
	*mask_r = mask;
	return 0;
}

/* Remove the entries of ix at the given positions' uids (sorted). */
static size_t index_drop(struct store_index *ix, const uint32_t *uids, size_t n)
{
	size_t out = 0, dropped = 0;
	for (size_t i = 0; i < ix->count; i++) {
		if (bsearch(&ix->msgs[i].uid, uids, n, sizeof(*uids), cmp_u32) != NULL) {
			free(ix->msgs[i].base);
			dropped++;
			continue;
		}
		ix->msgs[out++] = ix->msgs[i];
	}
	ix->count = out;
	if (dropped > 0)
		ix->highestmodseq++;     /* RFC 7162 §3.2.10: expunges are modseq-visible */
	return dropped;
}

/* Unlink the files of the listed uids (gone already counts as removed),
 * fsync the directories, drop the entries. */
static int expunge_files(const char *path, struct store_index *ix, const uint32_t *uids, size_t n)
{
	int err = 0;
	for (size_t i = 0; i < n; i++) {
		const struct store_msg *m = index_find(ix->msgs, ix->count, uids[i]);
		if (m == NULL)
			continue;
		char *full = index_msg_full_path(path, m);
		if (full == NULL ? errno != ENOENT : unlink(full) == -1 && errno != ENOENT)
			err = err != 0 ? err : errno;
		free(full);
	}
	if ((maildir_fsync_subdir(path, "cur") == -1 || maildir_fsync_subdir(path, "new") == -1) && err == 0)
		err = errno;
	index_drop(ix, uids, n);
	errno = err;
	return err != 0 ? -1 : 0;
}

/* ------------------------------------------------------------ open and sync */

/* A user's first IMAP command may name any folder: the account is made as
 * store_open_folder and LIST make it (the special folders come with it). */
static int ensure_user(const char *user_path)
{
	if (user_path == NULL || store_folder_exists(user_path))
		return 0;
	return maildir_create(user_path);
}

static bool ts_equal(const struct timespec *a, const struct timespec *b)
{
	return a->tv_sec == b->tv_sec && a->tv_nsec == b->tv_nsec;
}

/* The stamp of the folder at path now; invalid when any part cannot be read or
 * changed too recently to be trusted. */
static void stamp_read(const char *path, struct dir_stamp *st)
{
	struct stat c, n, x;
	char *pc = xasprintf("%s/cur", path), *pn = xasprintf("%s/new", path);
	char *px = xasprintf("%s/postling.index", path);
	memset(st, 0, sizeof(*st));
	if (stat(pc, &c) == 0 && stat(pn, &n) == 0 && stat(px, &x) == 0) {
		st->cur = c.st_mtim;
		st->new_ = n.st_mtim;
		st->idx = x.st_mtim;
		st->idx_ino = x.st_ino;
		st->idx_size = x.st_size;
		time_t trust = time(NULL) - STAMP_TRUST;
		st->valid = c.st_mtim.tv_sec < trust && n.st_mtim.tv_sec < trust && x.st_mtim.tv_sec < trust;
	}
	free(pc);
	free(pn);
	free(px);
}

static bool stamp_same(const struct dir_stamp *a, const struct dir_stamp *b)
{
	return a->valid && b->valid && ts_equal(&a->cur, &b->cur) && ts_equal(&a->new_, &b->new_) &&
	    ts_equal(&a->idx, &b->idx) && a->idx_ino == b->idx_ino && a->idx_size == b->idx_size;
}

static void sync_work(void *job)
{
	struct mjob *j = job;
	if (j->error != 0)
		return;
	if (j->stamp_in.valid) {
		struct dir_stamp now;
		stamp_read(j->path, &now);
		if (stamp_same(&now, &j->stamp_in)) {
			j->unchanged = true;   /* the mailbox holds this very index already */
			return;
		}
	}
	if (ensure_user(j->user_path) == -1) {
		j->error = errno;
		return;
	}
	if (!store_folder_exists(j->path)) {
		j->error = ENOENT;
		return;
	}
	if (j->clean_tmp)
		maildir_clean_tmp(j->path);   /* best effort: leftovers of crashed deliveries */
	if (store_index_load(j->path, &j->ix, true) == -1) {
		j->error = errno;
	} else {
		j->have_ix = true;
		stamp_read(j->path, &j->stamp_out);   /* after any write of the load */
	}
}

/* A folder that vanished under an open mailbox (another program) is gone. */
static void sync_apply(void *job, bool ran)
{
	struct mjob *j = job;
	if (ran && j->error == ENOENT && j->mb != NULL && j->mb->loaded && !j->mb->st.deleted) {
		j->mb->st.deleted = true;
		mb_changed(j->mb);
	}
	bool install = ran && j->have_ix && j->mb != NULL;
	mjob_apply(job, ran);
	if (install)
		j->mb->stamp = j->stamp_out;
}

static void refresh_apply(void *job, bool ran)
{
	struct mjob *j = job;
	j->mb->refreshing--;
	sync_apply(job, ran);
}

static void refresh_complete(void *job, void *arg)
{
}

static void open_complete(void *job, void *arg)
{
	struct mjob *j = job;
	struct store_mailbox *mb = j->error == 0 ? j->mb : NULL;
	if (mb != NULL)
		j->mb = NULL;            /* the job's reference becomes the caller's */
	j->cb.mbox(arg, j->error, mb);
}

static const struct store_job_ops open_ops = { sync_work, sync_apply, open_complete, mjob_release };
static const struct store_job_ops sync_ops = { sync_work, sync_apply, done_complete, mjob_release };
static const struct store_job_ops refresh_ops = { sync_work, refresh_apply, refresh_complete, mjob_release };

static struct store_mailbox *mb_new(struct store *s, const char *user, const char *name, const char *path)
{
	struct store_mailbox *mb = xcalloc(1, sizeof(*mb));
	struct store_mailbox **head = store_mailbox_list(s);
	mb->s = s;
	mb->user = xstrdup(user);
	mb->name = xstrdup(name);
	mb->path = xstrdup(path);
	mb->recent_from = 1;         /* after a (re)start everything is recent once */
	mb->ev = event_new(store_base(s), -1, 0, mb_notify_cb, mb);
	mb->linger = evtimer_new(store_base(s), mb_linger_cb, mb);
	if (mb->ev == NULL || mb->linger == NULL)
		fatalx("store: event_new failed");
	mb->next = *head;
	if (*head != NULL)
		(*head)->prev = mb;
	*head = mb;
	return mb;
}

struct store_req *store_mailbox_open(struct store *s, const char *user, const char *name,
    store_mailbox_cb cb, void *arg)
{
	char *norm = NULL, *up = maildir_user_path(store_data_dir(s), user);
	char *path = NULL;
	if (up != NULL && store_name_check(name) == 0) {
		norm = store_name_normalize(name);
		path = store_folder_path(up, norm);
	}
	struct store_mailbox *mb = path != NULL ? mb_lookup(s, path) : NULL;
	if (path != NULL && mb == NULL)
		mb = mb_new(s, user, norm, path);
	struct mjob *j = mjob_new(s, mb);   /* the reference handed to cb */
	j->cb.mbox = cb;
	if (mb != NULL && mb->loaded)
		j->stamp_in = mb->stamp;     /* shared already: a rescan that may find nothing */
	else
		j->clean_tmp = true;
	if (mb == NULL)
		j->error = EINVAL;       /* reported from the callback, like every error */
	j->user_path = up;
	free(norm);
	free(path);
	return mjob_start(j, &open_ops, arg);
}

void store_mailbox_close(struct store_mailbox **mb_r)
{
	struct store_mailbox *mb = *mb_r;
	*mb_r = NULL;
	mb_unref(mb);
}

struct store_req *store_mailbox_sync(struct store_mailbox *mb, store_done_cb cb, void *arg)
{
	struct mjob *j = mjob_new(mb->s, mb);
	j->cb.done = cb;
	j->stamp_in = mb->stamp;
	return mjob_start(j, &sync_ops, arg);
}

/* A second refresh may be waiting behind a running one: it scans after
 * whatever made this call; more would scan nothing new. */
void store_mailbox_touched(struct store *s, const char *folder_path)
{
	struct store_mailbox *mb = store_mailbox_lookup(s, folder_path);
	if (mb == NULL || store_freeing(s) || mb->refreshing >= REFRESH_MAX)
		return;
	mb->refreshing++;
	struct mjob *j = mjob_new(s, mb);
	mjob_start(j, &refresh_ops, NULL);   /* no caller: never cancelled but by store_free */
}

/* ------------------------------------------------------------ flags */

static uint32_t op_apply32(enum store_flag_op op, uint32_t cur, uint32_t v)
{
	return op == STORE_FLAGS_REPLACE ? v : op == STORE_FLAGS_ADD ? cur | v : cur & ~v;
}

static uint64_t op_apply64(enum store_flag_op op, uint64_t cur, uint64_t v)
{
	return op == STORE_FLAGS_REPLACE ? v : op == STORE_FLAGS_ADD ? cur | v : cur & ~v;
}

/* The file of m renamed to cur/<base>:2,<flags>: 1 done, 0 file gone, -1 error. */
static int rename_flags(const char *path, const struct store_msg *m, uint32_t flags)
{
	char fl[8];
	maildir_flags_string(flags, fl);
	char *to = xasprintf("%s/cur/%s:2,%s", path, m->base, fl);
	int rc = -1;
	for (int i = 0; i < RENAME_RETRIES && rc == -1; i++) {
		char *from = index_msg_full_path(path, m);
		if (from == NULL) {
			rc = errno == ENOENT ? 0 : -1;
			break;
		}
		rc = rename(from, to) == 0 ? 1 : -1;
		free(from);
		if (rc == -1 && errno != ENOENT)
			break;
	}
	free(to);
	return rc == -1 && errno == ENOENT ? 0 : rc;
}

static void store_work(void *job)
{
	struct mjob *j = job;
	struct store_index *ix = &j->ix;
	uint64_t mask;
	bool changed = false;

	if (store_index_load(j->path, ix, false) == -1) {
		j->error = errno;
		index_free(ix);
		return;
	}
	size_t nkw_before = ix->nkeywords, nchanged = 0;
	if (keywords_mask(ix, j->kws, j->nkws, &mask) == -1) {
		j->error = errno;
		index_free(ix);
		return;
	}
	uint32_t *changed_uids = xreallocarray(NULL, j->n ? j->n : 1, sizeof(uint32_t));
	for (size_t i = 0; i < j->n && j->error == 0; i++) {
		struct store_msg *m = index_find(ix->msgs, ix->count, j->uids[i]);
		if (m == NULL)
			continue;
		uint32_t nf = op_apply32(j->op, m->flags, j->flags) & MF_ALL;
		uint64_t nk = op_apply64(j->op, m->keywords, mask);
		if (nf == m->flags && nk == m->keywords)
			continue;
		if (nf != m->flags) {
			int rc = rename_flags(j->path, m, nf);
			if (rc == -1)
				j->error = errno;
			if (rc != 1)
				continue;        /* gone: the next sync drops it */
			m->in_new = false;
		}
		m->flags = nf;
		m->keywords = nk;
		m->modseq = ++ix->highestmodseq;
		changed_uids[nchanged++] = m->uid;
		changed = true;
	}
	if (!changed) {
		free(changed_uids);
		index_free(ix);          /* keyword names added for nothing are not kept */
		return;
	}
	/* Appended "F" records while they stay fewer than the messages (at least 256),
	 * then one rewrite compacts them; new keyword names need the rewrite too. */
	size_t limit = ix->count > 256 ? ix->count : 256;
	bool appended = ix->nkeywords == nkw_before && ix->nupdates + nchanged <= limit &&
	    index_append_updates(j->path, ix, changed_uids, nchanged) == 0;
	free(changed_uids);
	if (appended) {
		ix->nupdates += nchanged;
		j->have_ix = true;
		return;
	}
	/* Flag changes are not made durable one by one (no fsync of cur/ or new/ after
	 * the renames, none of the directory after the index's rename): a crash may
	 * undo recent ones, never a message. Whichever index survives is whole; a
	 * sync takes the flags from the file names, so the two agree again. */
	if (index_write_lazy(j->path, ix) == -1) {
		j->error = j->error != 0 ? j->error : errno;
		index_free(ix);          /* a rescan makes the state follow the files */
		return;
	}
	j->have_ix = true;
}

static const struct store_job_ops store_ops = { store_work, mjob_apply, done_complete, mjob_release };

struct store_req *store_mailbox_store(struct store_mailbox *mb, const uint32_t *uids, size_t n,
    enum store_flag_op op, uint32_t flags, const char *const *keywords, size_t nkeywords,
    store_done_cb cb, void *arg)
{
	struct mjob *j = mjob_new(mb->s, mb);
	j->cb.done = cb;
	j->op = op;
	j->flags = flags;
	mjob_set_uids(j, uids, n);
	mjob_set_keywords(j, keywords, nkeywords);
	if (mb->st.deleted)
		j->error = ENOENT;
	return mjob_start(j, &store_ops, arg);
}

/* ------------------------------------------------------------ expunge */

static void expunge_work(void *job)
{
	struct mjob *j = job;
	if (j->error != 0)
		return;
	if (store_index_load(j->path, &j->ix, false) == -1) {
		j->error = errno;
		return;
	}
	size_t before = j->ix.count;
	if (expunge_files(j->path, &j->ix, j->uids, j->n) == -1)
		j->error = errno;
	if (j->ix.count != before && index_write(j->path, &j->ix) == -1 && j->error == 0)
		j->error = errno;
	j->have_ix = true;           /* the files are gone either way */
}

static const struct store_job_ops expunge_ops = { expunge_work, mjob_apply, done_complete, mjob_release };

struct store_req *store_mailbox_expunge(struct store_mailbox *mb, const uint32_t *uids, size_t n,
    store_done_cb cb, void *arg)
{
	struct mjob *j = mjob_new(mb->s, mb);
	j->cb.done = cb;
	mjob_set_uids(j, uids, n);
	if (mb->st.deleted)
		j->error = ENOENT;
	return mjob_start(j, &expunge_ops, arg);
}

/* ------------------------------------------------------------ copy and move */

static int copy_data(int in, int out)
{
	char *buf = xmalloc(COPY_CHUNK);
	ssize_t n;
	int rc = 0;
	while (rc == 0 && (n = read(in, buf, COPY_CHUNK)) != 0) {
		if (n == -1)
			rc = errno == EINTR ? 0 : -1;
		else
			rc = util_write_all(out, buf, (size_t)n);
	}
	free(buf);
	return rc;
}

/* No hard link across file systems (a folder on another mount): copy into
 * tmp/, fsync, rename into place. */
static int copy_file(const char *from, const char *dst_folder, const char *name, const char *to)
{
	char *tmp = xasprintf("%s/tmp/%s", dst_folder, name);
	int in = open(from, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	int out = in == -1 ? -1 : open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	int rc = out == -1 || copy_data(in, out) == -1 || fsync(out) == -1 ? -1 : 0;
	int saved = errno;
	if (out != -1 && close(out) == -1 && rc == 0) {
		rc = -1;
		saved = errno;
	}
	if (in != -1)
		close(in);
	if (rc == 0 && rename(tmp, to) == -1) {
		rc = -1;
		saved = errno;
	}
	if (rc == -1 && out != -1)
		unlink(tmp);
	free(tmp);
	errno = saved;
	return rc;
}

/* One message into dst's cur/ under a new unique base: a hard link, which
 * makes the complete file appear at once (its data was fsync'ed when it was
 * stored), else a copy. *base_r gets the new base. */
static int copy_one(const struct mjob *j, const struct store_msg *m, char **base_r, char **made_r)
{
	char fl[8];
	char *from = index_msg_full_path(j->path, m);
	if (from == NULL)
		return -1;
	maildir_flags_string(m->flags, fl);
	char *uniq = maildir_unique_name(j->host);
	char *base = xasprintf("%s,S=%llu", uniq, (unsigned long long)m->size);
	char *name = xasprintf("%s:2,%s", base, fl);
	char *to = xasprintf("%s/cur/%s", j->path2, name);
	int rc = link(from, to);
	if (rc == -1 && errno != ENOENT)
		rc = copy_file(from, j->path2, name, to);
	int saved = errno;
	free(from);
	free(uniq);
	free(name);
	if (rc == -1) {
		free(base);
		free(to);
		errno = saved;
		return -1;
	}
	*base_r = base;
	*made_r = to;
	return 0;
}

static void unlink_all(char **made, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (made[i] != NULL)
			unlink(made[i]);
}

/* The selected messages (copies, in uid order) and their keyword masks
 * remapped to dst's table. */
static int copy_select(struct mjob *j, const struct store_index *six, struct store_index *dix,
    struct store_msg **sel_r, size_t *n_r)
{
	struct store_msg *sel = xreallocarray(NULL, j->n ? j->n : 1, sizeof(*sel));
	size_t n = 0;
	int rc = 0;
	for (size_t i = 0; i < j->n && rc == 0; i++) {
		const struct store_msg *m = index_find(six->msgs, six->count, j->uids[i]);
		if (m == NULL)
			continue;
		sel[n] = *m;
		sel[n].base = xstrdup(m->base);
		sel[n].keywords = 0;
		for (size_t b = 0; b < six->nkeywords && rc == 0; b++) {
			if ((m->keywords & (1ULL << b)) == 0)
				continue;
			int nb = index_keyword_add(dix, six->keywords[b]);
			if (nb == -1)
				rc = -1;
			else
				sel[n].keywords |= 1ULL << nb;
		}
		n++;
	}
	*sel_r = sel;
	*n_r = n;
	return rc;
}

/* Make the copies and enter them in dix, written to write_path unless NULL;
 * on error nothing of the copies is left on disk. */
static int copy_into(struct mjob *j, struct store_index *dix, struct store_msg *sel, size_t n,
    const char *write_path)
{
	char **made = xcalloc(n ? n : 1, sizeof(*made));
	size_t k = 0;
	int rc = 0;

	j->src = xreallocarray(NULL, n ? n : 1, sizeof(*j->src));
	j->dst = xreallocarray(NULL, n ? n : 1, sizeof(*j->dst));
	if ((uint64_t)dix->uidnext + n > UINT32_MAX) {
		errno = ENOSPC;          /* UIDs exhausted: a rescan starts a new epoch */
		rc = -1;
	}
	dix->msgs = xreallocarray(dix->msgs, dix->count + n + 1, sizeof(*dix->msgs));
	for (size_t i = 0; i < n && rc == 0; i++) {
		char *base;
		if (copy_one(j, &sel[i], &base, &made[k]) == -1) {
			if (errno == ENOENT)
				continue;        /* removed meanwhile: not copied */
			rc = -1;
			break;
		}
		k++;
		struct store_msg *m = &dix->msgs[dix->count++];
		*m = sel[i];
		m->base = base;
		m->in_new = false;
		m->uid = dix->uidnext++;
		m->modseq = ++dix->highestmodseq;
		j->src[j->npairs] = sel[i].uid;
		j->dst[j->npairs++] = m->uid;
	}
	if (rc == 0 && (maildir_fsync_subdir(j->path2, "cur") == -1 || (write_path != NULL && index_write(write_path, dix) == -1)))
		rc = -1;
	if (rc == -1) {
		int saved = errno;
		unlink_all(made, k);
		maildir_fsync_subdir(j->path2, "cur");
		errno = saved;
	}
	for (size_t i = 0; i < k; i++)
		free(made[i]);
	free(made);
	return rc;
}

static void copy_work(void *job)
{
	struct mjob *j = job;
	bool same = strcmp(j->path, j->path2) == 0;
	struct store_index *six = &j->ix, *dix = same ? &j->ix : &j->ix2;
	struct store_msg *sel = NULL;
	size_t nsel = 0;

	if (j->error != 0)
		return;
	if (!store_folder_exists(j->path2)) {
		j->error = ENOENT;       /* TRYCREATE */
		return;
	}
	if (store_index_load(j->path, six, false) == -1 || (!same && store_index_load(j->path2, dix, false) == -1) ||
	    copy_select(j, six, dix, &sel, &nsel) == -1 || copy_into(j, dix, sel, nsel, same ? NULL : j->path2) == -1) {
		j->error = errno;
		goto fail;
	}
	j->uidvalidity = dix->uidvalidity;
	j->have_ix2 = !same;
	/* RFC 6851: the copies are durable; now the originals go */
	if (j->move && expunge_files(j->path, six, j->src, j->npairs) == -1)
		j->error = errno;
	if ((j->move || same) && index_write(j->path, six) == -1 && j->error == 0)
		j->error = errno;
	j->have_ix = j->move || same;
	for (size_t i = 0; i < nsel; i++)
		free(sel[i].base);
	free(sel);
	return;
fail:
	for (size_t i = 0; i < nsel; i++)
		free(sel[i].base);
	free(sel);
	index_free(&j->ix);
	index_free(&j->ix2);
	j->npairs = 0;
}

static void copy_complete(void *job, void *arg)
{
	struct mjob *j = job;
	j->cb.copy(arg, j->error, j->uidvalidity, j->src, j->dst, j->error == 0 ? j->npairs : 0);
}

static const struct store_job_ops copy_ops = { copy_work, mjob_apply, copy_complete, mjob_release };

struct store_req *store_mailbox_copy(struct store_mailbox *mb, const uint32_t *uids, size_t n,
    const char *to, bool move, store_copy_cb cb, void *arg)
{
	struct mjob *j = mjob_new(mb->s, mb);
	char *up = maildir_user_path(store_data_dir(mb->s), mb->user);
	j->cb.copy = cb;
	j->move = move;
	mjob_set_uids(j, uids, n);
	if (up != NULL && store_name_check(to) == 0) {
		char *norm = store_name_normalize(to);
		j->path2 = store_folder_path(up, norm);
		free(norm);
	}
	if (j->path2 == NULL)
		j->error = EINVAL;
	else if (mb->st.deleted)
		j->error = ENOENT;
	free(up);
	return mjob_start(j, &copy_ops, arg);
}

/* ------------------------------------------------------------ append */

/* The delivered file (new/<name>) into cur/ with its flags and the internal
 * date as mtime (what a rebuild of the index takes as internal date). */
static int append_place(struct mjob *j, const char *new_path, struct store_msg *m)
{
	char fl[8];
	const char *name = strrchr(new_path, '/') + 1;
	maildir_flags_string(j->flags, fl);
	char *to = xasprintf("%s/cur/%s:2,%s", j->path, name, fl);
	struct timespec ts[2] = { { j->date, 0 }, { j->date, 0 } };
	int rc = rename(new_path, to) == -1 || utimensat(AT_FDCWD, to, ts, 0) == -1 ||
	    maildir_fsync_subdir(j->path, "cur") == -1 || maildir_fsync_subdir(j->path, "new") == -1 ? -1 : 0;
	if (rc == -1) {
		int saved = errno;
		unlink(new_path);
		unlink(to);
		errno = saved;
	}
	free(to);
	m->base = xstrdup(name);
	return rc;
}

static void append_work(void *job)
{
	struct mjob *j = job;
	struct store_index *ix = &j->ix;
	struct store_msg m = { .flags = j->flags, .internal_date = j->date };
	char *new_path = NULL;

	if (j->error != 0)
		return;
	if (ensure_user(j->user_path) == -1) {
		j->error = errno;
		return;
	}
	if (!store_folder_exists(j->path)) {
		j->error = ENOENT;       /* TRYCREATE */
		return;
	}
	if (store_index_load(j->path, ix, false) == -1 || keywords_mask(ix, j->kws, j->nkws, &m.keywords) == -1) {
		j->error = errno;
		index_free(ix);
		return;
	}
	if (ix->uidnext == UINT32_MAX) {
		j->error = ENOSPC;       /* UIDs exhausted: a rescan starts a new epoch */
		index_free(ix);
		return;
	}
	if (lseek(j->fd, 0, SEEK_SET) == -1 ||
	    maildir_deliver_fd_path(j->path, j->host, j->fd, j->max_size, &m.size, &new_path) == -1) {
		j->error = errno;
		index_free(ix);
		return;
	}
	if (append_place(j, new_path, &m) == -1) {
		j->error = errno;
		goto out;
	}
	m.uid = ix->uidnext++;
	m.modseq = ++ix->highestmodseq;
	ix->msgs = xreallocarray(ix->msgs, ix->count + 1, sizeof(*ix->msgs));
	ix->msgs[ix->count++] = m;
	m.base = NULL;               /* the index owns it now */
	if (index_write(j->path, ix) == -1) {
		j->error = errno;        /* the file stays: the next rescan numbers it */
		goto out;
	}
	j->uid = ix->msgs[ix->count - 1].uid;
	j->uidvalidity = ix->uidvalidity;
	j->have_ix = true;
out:
	if (!j->have_ix)
		index_free(ix);
	free(m.base);
	free(new_path);
}

static void append_complete(void *job, void *arg)
{
	struct mjob *j = job;
	j->cb.append(arg, j->error, j->uidvalidity, j->uid);
}

static const struct store_job_ops append_ops = { append_work, mjob_apply, append_complete, mjob_release };

struct store_req *store_append(struct store *s, const char *user, const char *name, int fd,
    uint64_t max_size, uint32_t flags, const char *const *keywords, size_t nkeywords,
    time_t internal_date, store_append_cb cb, void *arg)
{
	struct mjob *j = mjob_new(s, NULL);
	char *up = maildir_user_path(store_data_dir(s), user);
	j->cb.append = cb;
	j->fd = fd;
	j->max_size = max_size;
	j->flags = flags & MF_ALL;
	j->date = internal_date != 0 ? internal_date : time(NULL);
	mjob_set_keywords(j, keywords, nkeywords);
	if (up != NULL && store_name_check(name) == 0) {
		char *norm = store_name_normalize(name);
		j->path = store_folder_path(up, norm);
		free(norm);
	}
	if (j->path == NULL || internal_date < 0)
		j->error = EINVAL;
	j->user_path = up;
	return mjob_start(j, &append_ops, arg);
}

/* ------------------------------------------------------------ files */

struct store_req *store_mailbox_read_many(struct store_mailbox *mb, const struct store_msg *const *msgs,
    size_t n, store_blobs_cb cb, void *arg)
{
	return store_read_many(mb->s, mb->path, msgs, n, cb, arg);
}

/* Reads need no order: a file renamed meanwhile is found by its base. */
struct store_req *store_mailbox_file_open(struct store_mailbox *mb, const struct store_msg *m,
    store_file_cb cb, void *arg)
{
	struct store_view v = { .path = mb->path };   /* all store_file_open reads of it */
	return store_file_open(mb->s, &v, m, cb, arg);
}
