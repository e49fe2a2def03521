/* store.h: the internal header of store/ (design §5).
 *
 * Threading: every store_* call and every callback runs on the reactor thread.
 * Blocking work (open, read, write, fsync, rename, readdir, unlink) runs on the
 * aio worker pool; a job owns its buffers and paths and never touches reactor
 * state. Jobs on the same folder run one at a time, in submission order.
 *
 * Cancellation: every async call returns a request handle. store_cancel()
 * guarantees the callback is never called afterwards (the job may still finish
 * its syscalls; its results are then freed by the store).
 *
 * Layering: store/ includes nothing from server/, protocols/ or relay/. */
#ifndef POSTLING_STORE_H
#define POSTLING_STORE_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <time.h>

struct event_base;

/* ---------------------------------------------------------------- aio.c */

struct aio;
struct aio_job;
typedef void (*aio_work_fn)(void *arg);                   /* worker thread */
typedef void (*aio_done_fn)(void *arg, bool cancelled);   /* reactor thread */

struct aio *aio_new(struct event_base *base, int nthreads);
/* Queue work(arg) on a worker; then done(arg, cancelled) on the reactor. done is
 * always called exactly once (with cancelled=true after aio_cancel) so it can free arg.
 * The job handle is valid until done() has been called; never call done synchronously. */
struct aio_job *aio_submit(struct aio *a, aio_work_fn work, aio_done_fn done, void *arg);
void aio_cancel(struct aio_job *j);
size_t aio_pending(const struct aio *a);
/* Waits for running jobs, runs pending done callbacks as cancelled, joins threads. */
void aio_free(struct aio **a_r);

/* ---------------------------------------------------------------- maildir.c */

/* Maildir flags as kept in file names (":2,<flags>", sorted ASCII) */
enum {
	MF_DRAFT = 1 << 0,     /* D */
	MF_FLAGGED = 1 << 1,   /* F */
	MF_PASSED = 1 << 2,    /* P */
	MF_REPLIED = 1 << 3,   /* R */
	MF_SEEN = 1 << 4,      /* S */
	MF_TRASHED = 1 << 5,   /* T (IMAP \Deleted) */
	MF_ALL = (1 << 6) - 1,
};

/* <data_dir>/mail/<domain>/<local>; NULL if the address is unsafe as a path
 * (empty parts, '/', leading '.', control bytes). malloc'ed. */
char *maildir_user_path(const char *data_dir, const char *address);
/* Folder dir: user path for "INBOX", else "<user>/.<name>" (Maildir++). NULL if unsafe. */
char *maildir_folder_path(const char *user_path, const char *folder);
#define MAILDIR_SUBSCRIPTIONS "subscriptions"   /* in the user dir (Dovecot's name) */
/* mkdir -p of the user Maildir with cur/ new/ tmp/ (and the default special-use
 * folders .Sent .Drafts .Trash .Junk .Archive). For a new account (no tmp/ yet)
 * it also writes the subscriptions file naming INBOX and those five. Blocking. */
int maildir_create(const char *user_path);
/* One Maildir++ subfolder directory (mkdir -p, cur/ new/ tmp/ made durable,
 * tmp/ last, and the "maildirfolder" marker). Existing parts are fine. */
int maildir_create_folder(const char *folder_path);
/* Unique base name "<secs>.M<usecs>P<pid>Q<seq>.<host>" (host with '/' and ':' escaped) */
char *maildir_unique_name(const char *hostname);
int maildir_parse_flags(const char *filename);            /* bits from ":2,..." */
/* The letters of MF_* flags in Maildir (ASCII) order into out; "" for none. */
void maildir_flags_string(uint32_t flags, char out[8]);
/* Durable delivery of one message (blocking; CLI `deliver` and workers use it):
 * write tmp/<unique>, fsync, link/rename into new/<unique>,S=<size>, fsync new/.
 * Input line endings are normalised to CRLF (the store keeps CRLF so sizes
 * are exact octet counts for POP3/IMAP). Returns 0, or -1 with errno set and
 * nothing left in tmp/ or new/. *size_r = stored size. */
int maildir_deliver_fd(const char *folder_path, const char *hostname, int in_fd, uint64_t max_size,
    uint64_t *size_r);
/* As maildir_deliver_fd, with the malloc'ed full path of the file in new/. */
int maildir_deliver_fd_path(const char *folder_path, const char *hostname, int in_fd, uint64_t max_size,
    uint64_t *size_r, char **path_r);
int maildir_deliver_buf(const char *folder_path, const char *hostname, const char *data, size_t len,
    uint64_t *size_r);
/* As maildir_deliver_buf, with a size limit (0 = none, else EFBIG past it) and,
 * when path_r is not NULL, the malloc'ed full path of the file made in new/, so
 * store_deliver can take a copy back when another recipient's copy fails. */
int maildir_deliver_buf_path(const char *folder_path, const char *hostname, const char *data, size_t len,
    uint64_t max_size, uint64_t *size_r, char **path_r);
/* As maildir_deliver_buf_path, the message being the concatenation of parts
 * (e.g. per-recipient Return-Path/Delivered-To headers, then the shared body). */
struct iovec;
int maildir_deliver_iov(const char *folder_path, const char *hostname, const struct iovec *parts,
    size_t nparts, uint64_t max_size, uint64_t *size_r, char **path_r);
/* Remove tmp/ files older than 36 hours (Maildir convention) */
int maildir_clean_tmp(const char *folder_path);
/* fsync a directory so the names made or removed in it are durable */
int maildir_fsync_dir(const char *dir_path);
/* maildir_fsync_dir of <folder_path>/<sub> ("cur", "new") */
int maildir_fsync_subdir(const char *folder_path, const char *sub);

/* A whole small file for maildir_replace_file / maildir_create_file (blocking;
 * the folder index, relay queue entries). */
struct maildir_file {
	const char *data;            /* the content, data[0..len), when fill is NULL */
	size_t len;
	int (*fill)(int fd, const void *arg);    /* else writes it: 0, or -1 with errno */
	const void *fill_arg;
	/* NULL, or called before each step ("write", "fsync", "rename" or "link",
	 * "fsync-dir"): 0 to go on, or -1 with errno to fail that step (tests). */
	int (*step)(const char *what, const void *arg);
	const void *step_arg;
	/* maildir_replace_file only: skip the final directory fsync. The content is
	 * still fsync'ed before the rename, so a crash leaves the old file or the
	 * complete new one, but the new one may be lost (flag changes, see index_write_lazy). */
	bool lazy_rename;
};
/* Atomic durable replacement of <dir>/<name>: <name>.tmp (0600, truncated),
 * content, fsync, rename over <name>, fsync dir. On -1 before the rename the
 * old file is intact and the .tmp gone; -1 from the final directory fsync means
 * the new file is in place but may not survive a crash. */
int maildir_replace_file(const char *dir, const char *name, const struct maildir_file *f);
/* Durable creation of <dir>/<name>, never replacing one (EEXIST): <name>.tmp
 * (0600, O_EXCL), content, fsync, link to <name>, unlink the .tmp, fsync dir.
 * -1 with errno and nothing of this call left (a name made before a failing
 * directory fsync is unlinked again). */
int maildir_create_file(const char *dir, const char *name, const struct maildir_file *f);

/* ---------------------------------------------------------------- index.c */

#define STORE_MAX_KEYWORDS 64        /* IMAP keywords per folder (a uint64_t mask) */
#define STORE_MAX_KEYWORD_LEN 128    /* octets of one keyword name */

/* One message as the index knows it. */
struct store_msg {
	uint32_t uid;
	uint64_t modseq;
	uint32_t flags;              /* MF_* */
	uint64_t keywords;           /* bit i = the folder's keyword i (store_index.keywords) */
	uint64_t size;               /* octets as stored (CRLF) */
	time_t internal_date;
	char *base;                  /* Maildir base name (up to ':'), owned */
	bool in_new;                 /* file is in new/ (else cur/) */
};

struct store_index {
	uint32_t uidvalidity;
	uint32_t uidnext;
	uint64_t highestmodseq;
	struct store_msg *msgs;      /* sorted by uid */
	size_t count;
	char *keywords[STORE_MAX_KEYWORDS];   /* IMAP keyword names by bit, owned */
	size_t nkeywords;
	size_t nupdates;             /* "F" records read after the messages (flag changes) */
};

/* Read <folder>/postling.index; -1 if missing or corrupt (caller rebuilds).
 * errno: ENOENT missing, EBADMSG corrupt, else the I/O error. On EBADMSG with a
 * valid first line, ix keeps that line's uidvalidity/uidnext/highestmodseq (and
 * no messages), so a rebuild keeps UIDVALIDITY and numbers the files from the
 * old UIDNEXT: no UID is ever reused (RFC 3501 §2.3.1.1). */
int index_read(const char *folder_path, struct store_index *ix);
/* The message with this uid in msgs[0..count) (sorted by uid, as every index
 * and view keeps them), or NULL. */
struct store_msg *index_find(const struct store_msg *msgs, size_t count, uint32_t uid);
/* Atomic rewrite: postling.index.tmp, fsync, rename, fsync dir. */
int index_write(const char *folder_path, const struct store_index *ix);
/* The same without the directory fsync after the rename: for flag and keyword
 * changes (STORE), where a crash may bring back the previous index — still whole
 * and valid, its flags then refreshed from the Maildir file names — but never a
 * torn or empty one. Messages (deliveries, APPEND, COPY, EXPUNGE) use index_write. */
int index_write_lazy(const char *folder_path, const struct store_index *ix);
/* Flag changes without rewriting the index (design §5: append-only records,
 * compacted by a whole rewrite): one "F" line per uid (flags, keywords, modseq,
 * location as in ix; modseqs rising in uids' order) appended in one write, no
 * fsync. A crash may cut the last line: the reader drops a cut line, so a torn
 * append loses that change, never the index. The keyword table must be the one
 * on disk (new names need index_write). */
int index_append_updates(const char *folder_path, const struct store_index *ix, const uint32_t *uids,
    size_t n);
/* Scan new/ and cur/ and reconcile with ix (which may be empty/fresh): files
 * not in ix get uid = uidnext++ (in delivery-time order), entries whose file
 * is gone are dropped, flags/location/size refreshed. *changed_r tells whether
 * the index must be written. Blocking. */
int index_sync(const char *folder_path, struct store_index *ix, bool *changed_r);
void index_free(struct store_index *ix);
/* An IMAP keyword as the index keeps it: an atom (RFC 9051 §9 flag-keyword) of
 * 1..STORE_MAX_KEYWORD_LEN octets; system flags (backslash) are not keywords. */
bool index_keyword_valid(const char *kw);
/* Bit of keyword kw in ix (names compare case-insensitively), or -1. */
int index_keyword_find(const struct store_index *ix, const char *kw);
/* Bit of kw, added to the table when new: -1 with errno EINVAL (not a valid
 * keyword) or ENOSPC (STORE_MAX_KEYWORDS names already). */
int index_keyword_add(struct store_index *ix, const char *kw);
/* Relative path of a message file ("new/<name>" or "cur/<name>"), found by
 * looking up the base in the directory (the flags suffix may have changed). */
char *index_msg_path(const char *folder_path, const struct store_msg *m);
/* The same as a full malloc'ed path "<folder_path>/<new|cur>/<name>"; NULL with
 * errno (ENOENT: no such file) as index_msg_path. */
char *index_msg_full_path(const char *folder_path, const struct store_msg *m);
/* Where m's file is when nobody renamed it since the index was written
 * ("new/<base>" or "cur/<base>:2,<flags>"), as a full path: what an open tries
 * before searching the directories. NULL for an unsafe base. */
char *index_msg_guess_path(const char *folder_path, const struct store_msg *m);

/* ---------------------------------------------------------------- store.c */

struct store;

struct store *store_new(struct event_base *base, const char *data_dir, const char *hostname,
    int nthreads);
/* Open shared mailboxes and their watches still held by callers are freed too
 * (their pointers must not be used afterwards). */
void store_free(struct store **s_r);
struct aio *store_aio(struct store *s);

/* A request handle is valid until its callback starts. Cancelling it from inside
 * that callback is allowed (and does nothing more). store_free must not be called
 * from inside a store callback. */
struct store_req;
void store_cancel(struct store_req **r_r);

/* Folder snapshot handed to a session: a copy it owns (free with store_view_free). */
struct store_view {
	char *user;                  /* address */
	char *folder;                /* "INBOX" */
	char *path;                  /* folder directory */
	uint32_t uidvalidity, uidnext;
	struct store_msg *msgs;      /* sorted by uid */
	size_t count;
	uint64_t total_size;
};
void store_view_free(struct store_view **v_r);

/* error codes handed to callbacks: 0 ok, else an errno value */
typedef void (*store_view_cb)(void *arg, int error, struct store_view *view);   /* view owned by cb */
typedef void (*store_done_cb)(void *arg, int error);

/* Create the user's Maildir if needed, load + sync the index (rebuilding it if
 * missing/corrupt), write it back if changed, return a snapshot. */
struct store_req *store_open_folder(struct store *s, const char *user, const char *folder,
    store_view_cb cb, void *arg);

/* Reading a message file in chunks (RETR/TOP/FETCH streaming). */
struct store_file;
typedef void (*store_file_cb)(void *arg, int error, struct store_file *f);   /* f owned by cb */
typedef void (*store_read_cb)(void *arg, int error, const char *data, size_t len); /* len 0 = EOF */
struct store_req *store_file_open(struct store *s, const struct store_view *v, const struct store_msg *m,
    store_file_cb cb, void *arg);
/* Read up to maxlen bytes at offset (data valid only during the callback).
 * maxlen 0 means 64 KiB; more than 1 MiB is clamped to 1 MiB. */
struct store_req *store_file_read(struct store *s, struct store_file *f, uint64_t offset, size_t maxlen,
    store_read_cb cb, void *arg);
uint64_t store_file_size(const struct store_file *f);
/* Files up to STORE_PREFETCH_MAX octets are read whole by store_file_open's job:
 * their contents (NUL-terminated, valid until store_file_close), else NULL. */
#define STORE_PREFETCH_MAX (64 * 1024)
const char *store_file_contents(const struct store_file *f, size_t *len_r);
/* Several small messages read whole in one worker job (SEARCH: one hand-off
 * for a batch instead of one per message). A message over STORE_PREFETCH_MAX
 * octets comes back with error EFBIG and no data (read it with the file API);
 * one that cannot be read with its errno. */
struct store_blob {
	uint32_t uid;
	int error;
	char *data;                  /* malloc'ed, NUL-terminated, or NULL */
	size_t len;
};
typedef void (*store_blobs_cb)(void *arg, struct store_blob *blobs, size_t n);   /* blobs owned by cb */
void store_blobs_free(struct store_blob *b, size_t n);
/* store_mailbox_read_many's worker side, by folder path (mailbox.c). */
struct store_req *store_read_many(struct store *s, const char *folder_path, const struct store_msg *const *msgs,
    size_t n, store_blobs_cb cb, void *arg);
/* May be called with reads in flight: the fd is closed when the last one ends. */
void store_file_close(struct store_file **f_r);

/* Remove messages by uid (POP3 UPDATE state, IMAP EXPUNGE): unlink files, fsync
 * the directories, update the index. Messages already gone count as removed. */
struct store_req *store_expunge(struct store *s, const struct store_view *v, const uint32_t *uids,
    size_t nuids, store_done_cb cb, void *arg);

/* Durable delivery of one message (in memory) to several users' INBOX
 * (design §5); cb error 0 only when every copy is fsync'ed; on failure the
 * copies already made are removed. prefixes: NULL, or one string per user put
 * before the message in that user's copy (Return-Path:, Delivered-To:). */
struct store_req *store_deliver(struct store *s, char *const *users, const char *const *prefixes,
    size_t nusers, const char *data, size_t len, store_done_cb cb, void *arg);

/* ---------------------------------------------------------------- mailbox.c */
/* IMAP's view of the store: folders by name, and the shared open folder object
 * (design §5) that every IMAP session with the folder selected uses.
 *
 * Names: UTF-8 (the session decodes modified UTF-7 for rev1 clients), hierarchy
 * delimiter '/', "INBOX" in any case is the user's root Maildir. Other folders
 * are Maildir++ directories "<user>/.<c1>.<c2>..." whose components are written
 * in modified UTF-7 (common/mutf7.h), as Dovecot names them, so
 * "Archive/2024/Zürich" is ".Archive.2024.Z&APw-rich". */
#define STORE_MAX_NAME 255           /* octets of a UTF-8 folder name */
#define STORE_MAX_LEVELS 16          /* hierarchy depth */

/* 0 when name is a valid folder name for create/rename/append targets, -1 when
 * not (the session answers NO [CANNOT]): empty; longer than STORE_MAX_NAME;
 * invalid UTF-8; control characters (< 0x20, 0x7f); an empty component (leading,
 * trailing or doubled '/'); a component that is "." or ".." or contains '.'
 * (the Maildir++ separator) or starts with '~'; more than STORE_MAX_LEVELS levels;
 * a directory name ".<c1>.<c2>..." (modified UTF-7) longer than 255 octets, so an
 * ASCII name has at most 254 octets and a non-ASCII one may be refused sooner. */
int store_name_check(const char *name);
/* name with a leading "INBOX" component (any case) written "INBOX"; malloc'ed. */
char *store_name_normalize(const char *name);

/* Special-use attribute (RFC 6154) of a folder name, or NULL: "Sent" → "\\Sent",
 * "Drafts", "Trash", "Junk", "Archive" likewise (the folders maildir_create makes). */
const char *store_special_use(const char *name);

/* ---- folder-level operations (one aio job each; errors as errno values) ---- */

struct store_folder_info {
	char *name;                  /* UTF-8 with '/', owned */
	bool exists;                 /* false: only subscribed, or the missing parent of
	                              * existing folders (LIST \\NonExistent) */
	bool subscribed;
	bool has_children;           /* some existing folder below it */
	const char *special_use;     /* static, or NULL */
};
/* Every folder of the user (INBOX first, the rest sorted by name) plus subscribed
 * names that do not exist. Creates the user's Maildir when missing. */
typedef void (*store_list_cb)(void *arg, int error, struct store_folder_info *v, size_t n);  /* v owned by cb */
struct store_req *store_folder_list(struct store *s, const char *user, store_list_cb cb, void *arg);
void store_folder_list_free(struct store_folder_info *v, size_t n);

/* EEXIST, EINVAL (bad name). Parents are created as needed ("a/b" makes "a"). */
struct store_req *store_folder_create(struct store *s, const char *user, const char *name,
    store_done_cb cb, void *arg);
/* ENOENT, EPERM (INBOX), ENOTEMPTY (has child folders: delete them first).
 * Removes the messages and the folder; an open shared mailbox of it is marked
 * deleted and its watchers told. */
struct store_req *store_folder_delete(struct store *s, const char *user, const char *name,
    store_done_cb cb, void *arg);
/* Renames a folder and its children (RFC 9051 §6.3.6). ENOENT, EEXIST, EINVAL.
 * Renaming INBOX moves its messages (new UIDs) into a new folder "to" and leaves
 * INBOX empty. Open shared mailboxes of renamed folders are marked deleted. */
struct store_req *store_folder_rename(struct store *s, const char *user, const char *from,
    const char *to, store_done_cb cb, void *arg);
/* Subscriptions live in "<user>/subscriptions" (one UTF-8 name per line, Dovecot's
 * file name), replaced atomically. A name need not exist. */
struct store_req *store_folder_subscribe(struct store *s, const char *user, const char *name,
    bool subscribe, store_done_cb cb, void *arg);

struct store_status {
	uint32_t messages, unseen, deleted, recent;
	uint32_t uidnext, uidvalidity;
	uint64_t size;               /* sum of message sizes (STATUS SIZE) */
	uint64_t highestmodseq;
};
/* From the shared mailbox when the folder is open (no I/O), else from its index
 * (synced with the directory first). ENOENT when the folder does not exist. */
typedef void (*store_status_cb)(void *arg, int error, const struct store_status *st);
struct store_req *store_folder_status(struct store *s, const char *user, const char *name,
    store_status_cb cb, void *arg);
/* Storage used by all the user's folders (QUOTA, APPENDLIMIT checks). */
typedef void (*store_usage_cb)(void *arg, int error, uint64_t bytes, uint64_t messages);
struct store_req *store_user_usage(struct store *s, const char *user, store_usage_cb cb, void *arg);

/* ---- the shared open folder ---- */

struct store_mailbox;
struct store_watch;

/* The folder's state as the store knows it now (reactor thread). Valid until the
 * caller returns to the reactor: any callback may change it. */
struct store_mbox_state {
	uint32_t uidvalidity, uidnext;
	uint64_t highestmodseq;
	const struct store_msg *msgs;   /* sorted by uid; msgs[i].base belongs to the store */
	size_t count;
	const char *const *keywords;    /* keyword names by bit */
	size_t nkeywords;
	bool deleted;                   /* folder deleted or renamed away: sessions must leave it */
};

/* Opens (or shares the already open) folder: the first open loads and syncs the
 * index on a worker; later opens of the same user+folder share that object and
 * only sync it again (so a SELECT sees mail dropped in by other programs).
 * cb gets a reference (error 0) or ENOENT (no such folder), EINVAL (bad name). */
typedef void (*store_mailbox_cb)(void *arg, int error, struct store_mailbox *mb);
struct store_req *store_mailbox_open(struct store *s, const char *user, const char *name,
    store_mailbox_cb cb, void *arg);
/* Drops a reference; the object goes away with the last one (after its running
 * jobs, whose callbacks have been cancelled with their store_req). */
void store_mailbox_close(struct store_mailbox **mb_r);
const struct store_mbox_state *store_mailbox_state(const struct store_mailbox *mb);
const char *store_mailbox_name(const struct store_mailbox *mb);
const struct store_msg *store_mailbox_find(const struct store_mailbox *mb, uint32_t uid);

/* changed(arg) runs on the reactor, from an event (never inside another store
 * call), after the state changed: messages added or expunged, flags or keywords
 * changed, folder deleted. Several changes may be folded into one call. The
 * session compares the state with what it last told its client. */
struct store_watch *store_mailbox_watch(struct store_mailbox *mb, void (*changed)(void *arg), void *arg);
void store_mailbox_unwatch(struct store_watch **w_r);

/* \\Recent (IMAP4rev1 only): the first session to claim after messages arrived
 * gets them. Returns the lowest UID that is recent for the caller (messages with
 * uid >= it); later calls return the current uidnext (nothing recent) until more
 * arrive. In memory only: after a restart everything is recent once more. */
uint32_t store_mailbox_claim_recent(struct store_mailbox *mb);

/* Rescan the directories (new files from deliveries or other programs, files
 * removed or renamed outside us) and apply the differences. */
struct store_req *store_mailbox_sync(struct store_mailbox *mb, store_done_cb cb, void *arg);

enum store_flag_op { STORE_FLAGS_REPLACE = 0, STORE_FLAGS_ADD, STORE_FLAGS_REMOVE };
/* Changes flags and keywords of the listed uids (absent uids are skipped): the
 * Maildir file is renamed to carry the standard flags, the index records flags,
 * keywords and a new modseq for each message that changed. Keyword names are new
 * bits when not yet known; ENOSPC when more than STORE_MAX_KEYWORDS would be needed
 * (nothing changed then). */
struct store_req *store_mailbox_store(struct store_mailbox *mb, const uint32_t *uids, size_t n,
    enum store_flag_op op, uint32_t flags, const char *const *keywords, size_t nkeywords,
    store_done_cb cb, void *arg);
/* Removes the listed uids (files unlinked, directories fsync'ed, index updated). */
struct store_req *store_mailbox_expunge(struct store_mailbox *mb, const uint32_t *uids, size_t n,
    store_done_cb cb, void *arg);

/* Copies the listed uids (present ones, in uid order) to folder `to` of the same
 * user, with their flags, keywords and internal dates; with move, removes them
 * from mb afterwards (RFC 6851). Each copy is durable (fsync) before cb. ENOENT
 * when `to` does not exist (TRYCREATE). cb gets the uid pairs for COPYUID
 * (RFC 4315): src[i] became dst[i]; the arrays are valid during the callback. */
typedef void (*store_copy_cb)(void *arg, int error, uint32_t dst_uidvalidity, const uint32_t *src,
    const uint32_t *dst, size_t n);
struct store_req *store_mailbox_copy(struct store_mailbox *mb, const uint32_t *uids, size_t n,
    const char *to, bool move, store_copy_cb cb, void *arg);

/* APPEND: the message is read from fd (the store takes the fd and closes it; it is
 * read from offset 0), line ends normalised to CRLF, written durably into folder
 * `name`, given the flags, keywords and internal date (0 = now). ENOENT (TRYCREATE),
 * EINVAL (bad name), ENOSPC (keywords), EFBIG (past max_size, 0 = none). An open
 * shared mailbox of the folder learns of it before cb. */
typedef void (*store_append_cb)(void *arg, int error, uint32_t uidvalidity, uint32_t uid);
struct store_req *store_append(struct store *s, const char *user, const char *name, int fd,
    uint64_t max_size, uint32_t flags, const char *const *keywords, size_t nkeywords,
    time_t internal_date, store_append_cb cb, void *arg);

/* Reading a message of a shared mailbox (FETCH, SEARCH): like store_file_open. */
struct store_req *store_mailbox_file_open(struct store_mailbox *mb, const struct store_msg *m,
    store_file_cb cb, void *arg);

/* Several small messages of a shared mailbox read in one job (store_blob above). */
struct store_req *store_mailbox_read_many(struct store_mailbox *mb, const struct store_msg *const *msgs,
    size_t n, store_blobs_cb cb, void *arg);

/* ---------------------------------------------------------------- store/ internals */
/* Between store.c and mailbox.c only; nothing outside store/ calls these. */

/* A job of mailbox.c run by store.c's request machinery. The job struct holds
 * its inputs, results, error and the caller's callback; store.c only owns the
 * struct store_req around it. */
struct store_job_ops {
	void (*work)(void *job);                    /* worker thread */
	/* reactor, once aio is done with the job, whether or not the request was
	 * cancelled (ran: work() ran): apply results to shared state. May be NULL. */
	void (*apply)(void *job, bool ran);
	void (*complete)(void *job, void *arg);     /* reactor, not cancelled: the callback */
	void (*release)(void *job);                 /* reactor: free the job (also never run) */
};
/* Runs the job after the running jobs of every named folder queue (folder
 * paths, or other keys; NULL entries skipped; up to 3), or at once for none. */
struct store_req *store_job_start(struct store *s, const struct store_job_ops *ops, void *job, void *arg,
    const char *const *queues, size_t nqueues);
struct event_base *store_base(const struct store *s);
const char *store_data_dir(const struct store *s);
const char *store_hostname(const struct store *s);
bool store_freeing(const struct store *s);
/* Worker side: the folder's index as the last job left it (index_read); when
 * missing or corrupt rebuilt from the directory and written. With rescan, also
 * synced with new/ and cur/ (index_sync) and written back when that changed
 * anything. -1 with errno; ix is then empty. */
int store_index_load(const char *path, struct store_index *ix, bool rescan);
/* The folder directory is complete (its tmp/, made last, exists). Blocking. */
bool store_folder_exists(const char *path);
struct store_mailbox **store_mailbox_list(struct store *s);   /* mailbox.c's list head */
/* mailbox.c: something outside the shared mailbox changed the folder at
 * folder_path (a delivery, POP3): an open shared mailbox of it rescans. */
void store_mailbox_touched(struct store *s, const char *folder_path);
/* mailbox.c: frees every shared mailbox left (store_free, after the jobs). */
void store_mailboxes_free(struct store *s);
/* mailbox.c: the loaded, not deleted shared mailbox of a folder path, or NULL. */
struct store_mailbox *store_mailbox_lookup(struct store *s, const char *path);
/* mailbox.c: ix (moved out) is the folder's index as a job just wrote it: the
 * open shared mailbox of path, if any, takes it and tells its watchers. */
void store_mailbox_install(struct store *s, const char *path, struct store_index *ix);
/* mailbox.c: the user's folder name and those below it were deleted or renamed:
 * their shared mailboxes are marked deleted and their watchers told. */
void store_mailbox_gone(struct store *s, const char *user, const char *name);
void store_mailbox_status(const struct store_mailbox *mb, struct store_status *st);
/* folder.c: the directory of a valid normalised folder name: user_path for
 * "INBOX", else "<user_path>/.<c1>.<c2>..." with components in modified UTF-7.
 * NULL when the name cannot be a folder. malloc'ed. */
char *store_folder_path(const char *user_path, const char *name);

#endif
