/* imap.h: the internal header of the IMAP session files (imap_session.c,
 * imap_cmd_mailbox.c, imap_cmd_message.c, imap_fetch.c): the session object, the
 * command table's types and the helpers the command families share.
 *
 * Command life cycle (design §3): dispatch() finds the command in the table,
 * checks the state and calls its handler with the parsed arguments. A handler
 * either answers at once (imap_tagged) or starts one async operation (store job,
 * file read, output backpressure) and answers from its completion. Until the
 * tagged reply input stays paused, so pipelined commands wait in the input
 * buffer; the parser's argument tree stays valid until then as well. */
#ifndef POSTLING_IMAP_H
#define POSTLING_IMAP_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "protocols/imap_parse.h"
#include "server/server.h"

struct conn;
struct store_req;
struct store_mailbox;
struct store_watch;
struct store_file;
struct mime_message;
struct imap_fetch_job;
struct imap_cache;

enum imap_state {
	IMAP_ST_NOTAUTH = 1 << 0,
	IMAP_ST_AUTH = 1 << 1,
	IMAP_ST_SELECTED = 1 << 2,
	IMAP_ST_LOGOUT = 1 << 3,
};

/* command table flags */
#define IMAP_CF_UID 0x1u             /* also exists as "UID <name>" */
/* RFC 9051 §7.5.1 / RFC 3501 §7.4.1: no EXPUNGE responses after the non-UID
 * FETCH, STORE and SEARCH, whose sequence numbers the client is still using */
#define IMAP_CF_NO_EXPUNGE 0x2u

struct imap_session;
typedef void (*imap_handler)(struct imap_session *s, const struct imap_arg *args);

struct imap_command {
	const char *name;
	imap_handler fn;
	unsigned states;             /* mask of enum imap_state */
	unsigned flags;              /* IMAP_CF_* */
};

/* The session's own flag bit next to the MF_* ones in struct imap_msg.flags:
 * \Recent (rev1), which the store does not keep per message. */
#define IMAP_F_RECENT (1u << 16)
/* The store's flags (store.h MF_*) that IMAP shows */
#define IMAP_MF_MASK 0x3fu

/* One message as this session told its client about it (the message map). The
 * array is in sequence order, which is uid order. */
struct imap_msg {
	uint32_t uid;
	uint32_t flags;              /* MF_* as last reported, plus IMAP_F_RECENT */
	uint64_t keywords;           /* keyword bits as last reported */
	bool expunged;               /* gone from the store, EXPUNGE not sent yet */
};

/* APPEND's message literal, streamed to an unlinked temp file (imap_session.c
 * feeds it, imap_cmd_mailbox.c stores it). */
struct imap_append_lit {
	int fd;                      /* -1 when none */
	uint64_t size;               /* announced octets */
	uint64_t left;               /* still to read */
	bool discard;                /* over the limit or failed: read and drop */
	bool too_big;
	bool failed;                 /* write error: answer NO */
	bool extra;                  /* a second message (MULTIAPPEND is not offered) */
};

struct imap_session {
	struct conn *c;
	enum imap_state state;
	struct imap_parser parser;
	bool need_reset;             /* parser holds the last command: reset before feeding */
	bool busy;                   /* async work: input paused */
	bool in_cmd;                 /* between dispatch and the tagged reply */
	bool closed;                 /* io_close called; freed on IO_DISCONNECTED */
	bool shutdown_pending;
	bool idling;                 /* IDLE: waiting for DONE, updates go out at once */
	bool rev2;                   /* ENABLE IMAP4rev2 */
	bool utf8;                   /* ENABLE UTF8=ACCEPT (or rev2): UTF-8 names */
	/* the command being run */
	char tag[IMAP_MAX_TAG + 1];
	const struct imap_command *cmd;
	bool uid_cmd;                /* "UID FETCH" etc. */
	/* authentication */
	struct session_auth sa;      /* connection facts for SASL */
	struct auth_sasl *sasl;
	bool sasl_wait;              /* next line is a SASL response */
	char *sasl_final_user;       /* user waiting for the client's ack of final data */
	const char *mech;
	char *pending_reply;         /* tagged NO held back by the throttle delay */
	char *user;                  /* authenticated account */
	int user_slot;               /* which per-user session slot it holds, -1 none */
	/* the selected mailbox */
	struct store_mailbox *mb;
	struct store_watch *watch;
	char *mbox_name;             /* UTF-8 */
	bool readonly;               /* EXAMINE */
	struct imap_msg *msgs;
	size_t nmsgs, msgs_cap;
	size_t nkeywords_sent;       /* keywords listed in the last FLAGS response */
	uint32_t *saved;             /* SEARCHRES "$" as uids (RFC 5182) */
	size_t nsaved;
	/* async work */
	struct store_req *req;       /* the store call in flight, cancelled on free */
	struct imap_fetch_job *fetch;
	struct imap_cache *cache;    /* the last message read (imap_fetch.c) */
	struct imap_append_lit lit;
	uint64_t plit_left;           /* literal octets still owed to the parser */
	void *cmd_ctx;               /* per-command state of an async handler */
	void (*cmd_ctx_free)(void *);
	/* statistics and limits */
	unsigned bad_commands;
	unsigned commands;
	const char *close_reason;    /* static string for the imap.session log line */
	uint64_t bytes_out;
};

/* ---------------------------------------------------------------- imap_session.c */

extern const struct proto_ops imap_ops;

void imap_write(struct imap_session *s, const void *p, size_t len);
void imap_printf(struct imap_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The tagged reply ends the command: for OK and NO the pending untagged updates
 * go first (imap_updates), then input resumes. status "OK", "NO" or "BAD";
 * text may start with a "[CODE]". */
void imap_tagged(struct imap_session *s, const char *status, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* BAD that counts towards the bad-command limit (syntax errors) */
void imap_bad(struct imap_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void imap_set_busy(struct imap_session *s, bool busy);
void imap_end(struct imap_session *s, const char *reason);
/* Per-command state freed when the command ends or the session goes away. */
void imap_set_ctx(struct imap_session *s, void *ctx, void (*free_fn)(void *));
/* The "IMAP4rev1 IMAP4rev2 ..." list for CAPABILITY and [CAPABILITY] */
void imap_capabilities(struct imap_session *s, struct buf *out);
/* TLS, or loopback counted as local, or auth.allow_plaintext */
bool imap_plaintext_ok(struct imap_session *s);
/* APPENDLIMIT in bytes */
uint64_t imap_append_limit(void);
/* An unlinked temp file under <data_dir>/tmp for APPEND data, or -1 (logged) */
int imap_tmpfile(void);

/* ---------------------------------------------------------------- imap_auth.c */

void imap_cmd_login(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_authenticate(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_starttls(struct imap_session *s, const struct imap_arg *args);
/* A client line while AUTHENTICATE waits for a response */
void imap_sasl_line(struct imap_session *s, const char *line, size_t len);
void imap_sasl_abort(struct imap_session *s, const char *why);
/* Gives back the per-user session slot */
void imap_release_user(struct imap_session *s);

/* ---------------------------------------------------------------- imap_cmd_mailbox.c */

/* Mailbox name argument -> normalised UTF-8 (malloc'ed): modified UTF-7 is
 * decoded for rev1 clients. NULL when undecodable (the caller answers NO [CANNOT]). */
char *imap_mailbox_arg(struct imap_session *s, const struct imap_arg *a);
/* A UTF-8 folder name as the client sees it (mUTF-7 for rev1), as an IMAP string */
void imap_mailbox_out(struct imap_session *s, struct buf *out, const char *name);
/* Leaves the selected state (UNSELECT, CLOSE, SELECT of another, a deleted folder) */
void imap_unselect(struct imap_session *s);
/* The "\Seen \Answered ..." names of flags + keywords, space separated */
void imap_flags_out(struct imap_session *s, struct buf *out, uint32_t flags, uint64_t keywords);

void imap_cmd_select(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_examine(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_close(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_unselect(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_create(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_delete(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_rename(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_subscribe(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_unsubscribe(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_list(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_lsub(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_namespace(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_status(struct imap_session *s, const struct imap_arg *args);

/* ---------------------------------------------------------------- imap_cmd_append.c */

void imap_cmd_append(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_getquota(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_getquotaroot(struct imap_session *s, const struct imap_arg *args);

/* ---------------------------------------------------------------- imap_cmd_message.c */

/* Compares the message map with the shared mailbox's state and sends EXPUNGE
 * (when allowed), EXISTS, RECENT, FLAGS and FETCH (FLAGS) for what changed. */
void imap_updates(struct imap_session *s, bool allow_expunge);
/* The watcher callback (store_mailbox_watch) */
void imap_mailbox_changed(void *arg);
/* Fills the message map from the state at SELECT; sends nothing. */
void imap_map_load(struct imap_session *s);
/* "* FLAGS (...)" and "* OK [PERMANENTFLAGS (...)]" with the folder's keywords */
void imap_send_flag_lists(struct imap_session *s);
/* Parses a sequence set argument ("$" resolved to the saved result) into a
 * sorted list of map indexes of present messages (malloc'ed, *n_r). UID sets
 * select by uid. -1 on bad syntax (the caller answers BAD). */
int imap_seqset_indexes(struct imap_session *s, const struct imap_arg *a, bool uid,
    size_t **idx_r, size_t *n_r);
/* Flag/keyword name -> MF_* bit, or 0 with *kw_r set (a keyword), -1 when invalid
 * (a \-flag we do not know, \Recent, or a bad atom) */
int imap_flag_parse(const char *name, uint32_t *flag_r, bool *kw_r);

void imap_cmd_store(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_expunge(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_copy(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_move(struct imap_session *s, const struct imap_arg *args);
void imap_cmd_search(struct imap_session *s, const struct imap_arg *args);

/* ---------------------------------------------------------------- imap_fetch.c */

void imap_cmd_fetch(struct imap_session *s, const struct imap_arg *args);
/* output drained: a FETCH waiting for IO_LOWAT goes on */
void imap_fetch_lowat(struct imap_session *s);
void imap_fetch_free(struct imap_fetch_job **f_r);
/* The whole message with this uid (and its MIME tree when want_mime), through a
 * one-message cache: clients often fetch BODYSTRUCTURE and then a part. Returns 1
 * when served from the cache (*data_r, *len_r, *mime_r set, no callback), 0 when a
 * read started (cb follows, with an errno value when the read fails), -1 when the
 * store no longer has the message (no callback). The data is
 * valid until the next imap_msg_load or imap_cache_free. */
typedef void (*imap_load_cb)(struct imap_session *s, int error, const char *data, size_t len,
    const struct mime_message *mime);
int imap_msg_load(struct imap_session *s, uint32_t uid, bool want_mime, imap_load_cb cb,
    const char **data_r, size_t *len_r, const struct mime_message **mime_r);
void imap_cache_free(struct imap_session *s);

#endif
