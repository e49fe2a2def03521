/* pop3_session.c: the POP3 server session (RFC 1939, 2449 CAPA and response
 * codes, 2595 STLS, 5034 SASL AUTH, 1734 APOP) as a state machine over the
 * connection's I/O events.
 *
 * States (RFC 1939 §3): AUTHORIZATION -> TRANSACTION -> UPDATE. While an async
 * operation runs (password check, SASL step, opening the maildrop, streaming
 * a message, expunging at QUIT) `busy` is set and input is paused, so
 * pipelined commands (RFC 2449 PIPELINING) wait in the input buffer and run in
 * order afterwards.
 *
 * The command table below is data: replacing a handler (the classic
 * "override STAT/LIST" case) means changing one line of it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "protocols/pop3_parse.h"
#include "protocols/protocols.h"
#include "server/server.h"
#include "store/store.h"

#define POP3_MAX_BAD_COMMANDS 20
#define POP3_CHUNK (64 * 1024)       /* message bytes read per store call */

enum pop3_state {
	ST_AUTHORIZATION = 1 << 0,
	ST_TRANSACTION = 1 << 1,
	ST_UPDATE = 1 << 2,
};

struct pop3_session;
typedef void (*pop3_handler)(struct pop3_session *s, struct pop3_cmd *cmd);

struct pop3_command {
	const char *name;
	pop3_handler fn;
	unsigned states;             /* mask of enum pop3_state where it is allowed */
	unsigned char min_args, max_args;   /* RFC 1939 §5-7 arities, checked before fn */
};

/* Message streaming (RETR, TOP): dot-stuffing state carried across chunks. */
struct pop3_stream {
	struct store_file *file;
	uint64_t offset;
	bool at_bol;                 /* next byte starts a line */
	bool prev_cr;
	size_t line_len;             /* bytes in the current line, CR/LF excluded */
	bool in_header;
	int64_t body_lines_left;     /* TOP: body lines still to send; -1 = everything */
	bool wait_lowat;
	struct buf out;
};

struct pop3_session {
	struct conn *c;
	enum pop3_state state;
	bool busy;                   /* async work in flight: input paused */
	bool closed;                 /* io_close called: freed on IO_DISCONNECTED */
	bool shutdown_pending;       /* IO_SHUTDOWN arrived while busy */
	bool sasl_wait;              /* next line is a SASL response */
	bool sasl_final;             /* next (empty) line acknowledges the server's final data */
	char timestamp[128];         /* APOP banner timestamp (RFC 1939 §7) */
	char *user_arg;              /* name from USER */
	char *user;                  /* authenticated account address (owns the lock) */
	const char *mech;            /* mechanism of the current/last login attempt */
	char *pending_reply;         /* reply held back by the throttle delay */
	struct auth_sasl *sasl;
	struct session_auth sa;     /* connection facts for SASL */
	struct store_view *view;
	bool *deleted;               /* per message of the view */
	size_t ndeleted;
	struct store_req *req;       /* the store call in flight, cancelled on free */
	struct pop3_stream stream;
	unsigned bad_commands;
	unsigned retrieved;
	uint64_t bytes_sent;
	unsigned expunged;
};

static void pop3_input(struct pop3_session *s);
static void pop3_io(struct conn *c, enum io_event ev, void *arg);

/* ---------------------------------------------------------------- replies */

static void reply(struct pop3_session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void reply(struct pop3_session *s, const char *fmt, ...)
{
	char line[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n > sizeof(line) - 3)
		n = (int)sizeof(line) - 3;
	memcpy(line + n, "\r\n", 3);
	io_write(s->c, line, (size_t)n + 2);
}

/* ---------------------------------------------------------------- lifetime */

static void session_free(struct pop3_session *s)
{
	struct logline *l = log_begin(LL_INFO, "pop3.session");
	io_log_fields(l, s->c);
	log_str(l, "user", s->user);
	log_uint(l, "retrieved", s->retrieved);
	log_uint(l, "deleted", s->expunged);
	log_uint(l, "bytes", s->bytes_sent);
	log_end(l);

	store_cancel(&s->req);
	store_file_close(&s->stream.file);
	buf_free(&s->stream.out);
	store_view_free(&s->view);
	auth_sasl_free(&s->sasl);
	if (s->user != NULL)
		session_unlock_user("pop3", s->user);
	free(s->user);
	free(s->user_arg);
	free(s->pending_reply);
	free(s->deleted);
	free(s);
}

/* Close after the queued replies; the memory lives until IO_DISCONNECTED. */
static void session_end(struct pop3_session *s, const char *reason)
{
	s->closed = true;
	store_cancel(&s->req);
	io_close(s->c, reason);
}

static void set_busy(struct pop3_session *s, bool busy)
{
	s->busy = busy;
	if (busy) {
		io_pause(s->c);
		return;
	}
	if (s->shutdown_pending) {
		reply(s, "-ERR [SYS/TEMP] Server shutting down.");
		session_end(s, "server shutdown");
		return;
	}
	io_resume(s->c);
}

/* ---------------------------------------------------------------- helpers */

static bool plaintext_ok(struct pop3_session *s)
{
	return io_is_tls(s->c) || s->sa.ci.loopback || server->cfg->auth.allow_plaintext;
}


/* The message for a 1-based number, NULL if out of range or deleted */
static struct store_msg *msg_get(struct pop3_session *s, const char *arg, size_t *idx_r)
{
	uint32_t n;
	if (arg == NULL || pop3_parse_number(arg, &n) == -1 || n > s->view->count)
		return NULL;
	if (s->deleted[n - 1])
		return NULL;
	*idx_r = n - 1;
	return &s->view->msgs[n - 1];
}

static void no_such_message(struct pop3_session *s, const char *arg)
{
	uint32_t n;
	if (arg == NULL)
		reply(s, "-ERR Message number required.");
	else if (pop3_parse_number(arg, &n) == -1)
		reply(s, "-ERR Invalid message number: %.40s", arg);
	else if (n <= s->view->count && s->deleted[n - 1])
		reply(s, "-ERR Message is deleted.");
	else
		reply(s, "-ERR There's no message %u.", n);
}

/* ---------------------------------------------------------------- login */

static void open_done(void *arg, int error, struct store_view *view)
{
	struct pop3_session *s = arg;
	s->req = NULL;
	if (error != 0) {
		log_msg(LL_ERROR, "pop3.open_failed", "user %s: %s", s->user, strerror(error));
		reply(s, "-ERR [SYS/TEMP] Unable to open the mailbox, try again later.");
		session_unlock_user("pop3", s->user);
		free(s->user);
		s->user = NULL;
		set_busy(s, false);
		return;
	}
	s->view = view;
	s->ndeleted = view->count;
	s->deleted = xcalloc(view->count ? view->count : 1, sizeof(bool));
	s->state = ST_TRANSACTION;
	reply(s, "+OK Logged in");
	set_busy(s, false);
}

/* Credentials are good: lock the maildrop (RFC 1939 §8) and open it. */
static void login_ok(struct pop3_session *s, const char *user)
{
	session_log_auth(s->c, true, s->mech, user);
	if (!session_lock_user("pop3", user)) {
		reply(s, "-ERR [IN-USE] Mailbox is locked by another POP3 session.");
		set_busy(s, false);
		return;
	}
	s->user = xstrdup(user);
	set_busy(s, true);
	s->req = store_open_folder(server->store, user, "INBOX", open_done, s);
}

/* Credentials are bad: the reply waits for the throttle's delay. */
static void login_failed(struct pop3_session *s, const char *user, const char *msg)
{
	session_log_auth(s->c, false, s->mech, user);
	int delay = throttle_check(server->throttle, io_remote(s->c), time(NULL));
	free(s->pending_reply);
	s->pending_reply = xstrdup(msg);
	set_busy(s, true);
	io_set_timer(s->c, delay > 0 ? delay : 0);
}

/* Refuse early when this address failed too often (design §2 limits). */
static bool throttled(struct pop3_session *s)
{
	if (throttle_check(server->throttle, io_remote(s->c), time(NULL)) >= 0)
		return false;
	reply(s, "-ERR [SYS/TEMP] Too many authentication failures from your address, try again later.");
	return true;
}

/* ---------------------------------------------------------------- AUTHORIZATION */

static void cmd_user(struct pop3_session *s, struct pop3_cmd *cmd)
{
	if (!plaintext_ok(s)) {
		reply(s, "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections; use STLS first.");
		return;
	}
	free(s->user_arg);
	s->user_arg = xstrdup(cmd->args[0]);
	reply(s, "+OK");
}

static void pass_done(struct conn *c, enum auth_result r, struct auth_sasl *sasl, char *out,
    const char *user, void *arg)
{
	struct pop3_session *s = arg;
	(void)c;
	(void)sasl;
	(void)out;
	if (r == AUTH_OK)
		login_ok(s, user);
	else if (r == AUTH_TEMPFAIL) {
		reply(s, "-ERR [SYS/TEMP] Temporary authentication failure.");
		set_busy(s, false);
	} else
		login_failed(s, s->user_arg, "-ERR [AUTH] Authentication failed.");
}

static void cmd_pass(struct pop3_session *s, struct pop3_cmd *cmd)
{
	if (!plaintext_ok(s)) {
		reply(s, "-ERR [AUTH] Plaintext authentication disallowed on non-secure connections; use STLS first.");
		return;
	}
	if (s->user_arg == NULL) {
		reply(s, "-ERR No user name given: USER first.");
		return;
	}
	if (throttled(s))
		return;
	s->mech = "USER";
	set_busy(s, true);
	/* RFC 1939 §7: the whole rest of the line is the password (it may hold spaces) */
	session_check_password(s->c, s->user_arg, cmd->rest, pass_done, s);
}

static void cmd_apop(struct pop3_session *s, struct pop3_cmd *cmd)
{
	if (throttled(s))
		return;
	s->mech = "APOP";
	const struct account *acct = NULL;
	if (auth_check_apop(server->auth, cmd->args[0], s->timestamp, cmd->args[1], &acct) == AUTH_OK
	    && acct != NULL) {
		set_busy(s, true);
		login_ok(s, acct->address);
		return;
	}
	login_failed(s, cmd->args[0], "-ERR [AUTH] Authentication failed.");
}

static void sasl_done(struct conn *c, enum auth_result r, struct auth_sasl *sasl, char *out,
    const char *user, void *arg);

static void sasl_step(struct pop3_session *s, const char *in)
{
	struct auth_sasl *sasl = s->sasl;
	s->sasl = NULL;                  /* the job owns it until sasl_done */
	set_busy(s, true);
	session_sasl_step(s->c, sasl, in, sasl_done, s);
}

static void sasl_abort(struct pop3_session *s, const char *msg)
{
	auth_sasl_free(&s->sasl);
	s->sasl_wait = s->sasl_final = false;
	reply(s, "%s", msg);
}

static void sasl_done(struct conn *c, enum auth_result r, struct auth_sasl *sasl, char *out,
    const char *user, void *arg)
{
	struct pop3_session *s = arg;
	(void)c;
	s->sasl = sasl;
	switch (r) {
	case AUTH_CONTINUE:
		s->sasl_wait = true;
		reply(s, "+ %s", out ? out : "");
		set_busy(s, false);
		return;
	case AUTH_OK:
		auth_sasl_free(&s->sasl);
		if (out != NULL && *out != '\0') {
			/* RFC 5034 §4: final server data goes out as a challenge first */
			free(s->user_arg);
			s->user_arg = xstrdup(user);
			s->sasl_final = true;
			reply(s, "+ %s", out);
			set_busy(s, false);
			return;
		}
		login_ok(s, user);
		return;
	case AUTH_BADPROTO:
		sasl_abort(s, "-ERR Invalid base64 data or SASL message.");
		set_busy(s, false);
		return;
	case AUTH_TEMPFAIL:
		sasl_abort(s, "-ERR [SYS/TEMP] Temporary authentication failure.");
		set_busy(s, false);
		return;
	case AUTH_FAIL:
		break;
	}
	auth_sasl_free(&s->sasl);
	s->sasl_wait = false;
	login_failed(s, NULL, "-ERR [AUTH] Authentication failed.");
}

static void list_mechanisms(struct pop3_session *s, const char *prefix)
{
	const char *const *m = auth_mechanisms(server->auth, &s->sa.ci);
	struct buf b;
	buf_init(&b, 1024);
	buf_appends(&b, prefix);
	for (size_t i = 0; m != NULL && m[i] != NULL; i++) {
		if (prefix[0] != '\0')
			buf_appendc(&b, ' ');
		buf_appends(&b, m[i]);
		if (prefix[0] == '\0')
			buf_appends(&b, "\r\n");
	}
	if (b.len > 0)
		io_write(s->c, b.data, b.len);
	buf_free(&b);
}

static void cmd_auth(struct pop3_session *s, struct pop3_cmd *cmd)
{
	if (cmd->nargs == 0) {
		/* pre-RFC 5034 mechanism listing, still used by clients (e.g. fetchmail) */
		reply(s, "+OK");
		list_mechanisms(s, "");
		reply(s, ".");
		return;
	}
	if (throttled(s))
		return;
	enum auth_result r;
	s->sasl = auth_sasl_start(server->auth, cmd->args[0], &s->sa.ci, &r);
	if (s->sasl == NULL) {
		reply(s, "-ERR Unsupported authentication mechanism.");
		return;
	}
	s->mech = auth_sasl_mech(s->sasl);
	sasl_step(s, cmd->nargs == 2 ? cmd->args[1] : NULL);
}

/* A line while a SASL exchange is running (RFC 5034 §4) */
static void sasl_line(struct pop3_session *s, char *line, size_t len)
{
	if (s->sasl_final) {
		s->sasl_final = false;
		if (len != 0) {
			sasl_abort(s, "-ERR Authentication cancelled.");
			return;
		}
		set_busy(s, true);
		login_ok(s, s->user_arg);
		return;
	}
	s->sasl_wait = false;
	if (len == 1 && line[0] == '*') {
		sasl_abort(s, "-ERR Authentication cancelled.");
		return;
	}
	sasl_step(s, line);
}

static void cmd_stls(struct pop3_session *s, struct pop3_cmd *cmd)
{
	(void)cmd;
	if (io_is_tls(s->c)) {
		reply(s, "-ERR TLS is already active.");
		return;
	}
	if (!io_tls_available(s->c)) {
		reply(s, "-ERR TLS is not available.");
		return;
	}
	reply(s, "+OK Begin TLS negotiation");
	/* RFC 2595 §4: anything the client pipelined after STLS is discarded */
	if (io_starttls(s->c) == -1) {
		session_end(s, "starttls failed");
		return;
	}
	free(s->user_arg);
	s->user_arg = NULL;
	set_busy(s, true);           /* until IO_TLSREADY */
}

static void cmd_capa(struct pop3_session *s, struct pop3_cmd *cmd)
{
	(void)cmd;
	const struct config *cfg = server->cfg;
	reply(s, "+OK Capability list follows");
	reply(s, "TOP");
	reply(s, "UIDL");
	reply(s, "RESP-CODES");
	reply(s, "AUTH-RESP-CODE");
	reply(s, "PIPELINING");
	if (s->state == ST_AUTHORIZATION) {
		if (plaintext_ok(s))
			reply(s, "USER");
		const char *const *m = auth_mechanisms(server->auth, &s->sa.ci);
		if (m != NULL && m[0] != NULL)
			list_mechanisms(s, "SASL");
		if (m != NULL && m[0] != NULL)
			io_write(s->c, "\r\n", 2);
		if (!io_is_tls(s->c) && io_tls_available(s->c))
			reply(s, "STLS");
	}
	reply(s, "EXPIRE %s", cfg->pop3.expire[0] ? cfg->pop3.expire : "NEVER");
	if (cfg->pop3.login_delay > 0)
		reply(s, "LOGIN-DELAY %d", cfg->pop3.login_delay);
	reply(s, "IMPLEMENTATION Postling");
	reply(s, ".");
}

/* ---------------------------------------------------------------- TRANSACTION */

static void cmd_stat(struct pop3_session *s, struct pop3_cmd *cmd)
{
	(void)cmd;
	size_t n = 0;
	uint64_t size = 0;
	for (size_t i = 0; i < s->view->count; i++)
		if (!s->deleted[i]) {
			n++;
			size += s->view->msgs[i].size;
		}
	reply(s, "+OK %zu %llu", n, (unsigned long long)size);
}

static void cmd_list(struct pop3_session *s, struct pop3_cmd *cmd)
{
	size_t idx;
	if (cmd->nargs >= 1) {
		struct store_msg *m = msg_get(s, cmd->args[0], &idx);
		if (m == NULL)
			no_such_message(s, cmd->args[0]);
		else
			reply(s, "+OK %zu %llu", idx + 1, (unsigned long long)m->size);
		return;
	}
	reply(s, "+OK scan listing follows");
	for (size_t i = 0; i < s->view->count; i++)
		if (!s->deleted[i])
			reply(s, "%zu %llu", i + 1, (unsigned long long)s->view->msgs[i].size);
	reply(s, ".");
}

static void cmd_uidl(struct pop3_session *s, struct pop3_cmd *cmd)
{
	/* unique-id: uid and UIDVALIDITY as 16 hex digits (like Dovecot's
	 * default %08Xu%08Xv), stable while the folder index lives */
	size_t idx;
	uint32_t uv = s->view->uidvalidity;
	if (cmd->nargs >= 1) {
		struct store_msg *m = msg_get(s, cmd->args[0], &idx);
		if (m == NULL)
			no_such_message(s, cmd->args[0]);
		else
			reply(s, "+OK %zu %08X%08X", idx + 1, m->uid, uv);
		return;
	}
	reply(s, "+OK unique-id listing follows");
	for (size_t i = 0; i < s->view->count; i++)
		if (!s->deleted[i])
			reply(s, "%zu %08X%08X", i + 1, s->view->msgs[i].uid, uv);
	reply(s, ".");
}

static void cmd_dele(struct pop3_session *s, struct pop3_cmd *cmd)
{
	size_t idx;
	if (msg_get(s, cmd->args[0], &idx) == NULL) {
		no_such_message(s, cmd->args[0]);
		return;
	}
	s->deleted[idx] = true;
	reply(s, "+OK Marked to be deleted.");
}

static void cmd_rset(struct pop3_session *s, struct pop3_cmd *cmd)
{
	(void)cmd;
	memset(s->deleted, 0, s->view->count * sizeof(bool));
	reply(s, "+OK");
}

static void cmd_noop(struct pop3_session *s, struct pop3_cmd *cmd)
{
	(void)cmd;
	reply(s, "+OK");
}

/* ---- streaming RETR/TOP ---- */

static void stream_next(struct pop3_session *s);

static void stream_finish(struct pop3_session *s, bool complete)
{
	store_file_close(&s->stream.file);
	if (complete) {
		if (!s->stream.at_bol)
			io_write(s->c, "\r\n", 2);
		io_write(s->c, ".\r\n", 3);
	}
	set_busy(s, false);
}

/* Dot-stuff (RFC 1939 §3) one chunk into stream.out; LF-only lines get CRLF.
 * Returns true when TOP's line limit is reached. */
static bool stuff_chunk(struct pop3_stream *st, const char *p, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		char ch = p[i];
		if (st->at_bol && ch == '.')
			buf_appendc(&st->out, '.');
		st->at_bol = false;
		if (ch == '\n') {
			if (!st->prev_cr)
				buf_appendc(&st->out, '\r');
			buf_appendc(&st->out, '\n');
			st->at_bol = true;
			st->prev_cr = false;
			bool empty = st->line_len == 0;
			st->line_len = 0;
			if (st->in_header) {
				st->in_header = !empty;
			} else if (st->body_lines_left > 0) {
				st->body_lines_left--;
			}
			if (!st->in_header && st->body_lines_left == 0)
				return true;
			continue;
		}
		if (st->prev_cr)
			st->line_len++;
		st->prev_cr = ch == '\r';
		if (!st->prev_cr)
			st->line_len++;
		buf_appendc(&st->out, ch);
	}
	return false;
}

static void read_done(void *arg, int error, const char *data, size_t len)
{
	struct pop3_session *s = arg;
	struct pop3_stream *st = &s->stream;
	s->req = NULL;
	if (error != 0) {
		log_msg(LL_ERROR, "pop3.read_failed", "user %s: %s", s->user, strerror(error));
		session_end(s, "message read error");
		return;
	}
	if (len == 0) {
		stream_finish(s, true);
		return;
	}
	buf_reset(&st->out);
	bool done = stuff_chunk(st, data, len);
	st->offset += len;
	s->bytes_sent += st->out.len;
	if (io_write(s->c, st->out.data, st->out.len) == -1) {
		session_end(s, "write failed");
		return;
	}
	/* the file is read whole once offset reaches its size: no extra EOF read */
	if (done || st->offset >= store_file_size(st->file)) {
		stream_finish(s, true);
		return;
	}
	stream_next(s);
}

static void stream_next(struct pop3_session *s)
{
	if (io_queued(s->c) >= IO_OUTPUT_LOWAT) {
		s->stream.wait_lowat = true;  /* resumed by IO_LOWAT */
		return;
	}
	s->stream.wait_lowat = false;
	s->req = store_file_read(server->store, s->stream.file, s->stream.offset, POP3_CHUNK, read_done, s);
}

static void file_opened(void *arg, int error, struct store_file *f)
{
	struct pop3_session *s = arg;
	s->req = NULL;
	if (error != 0) {
		reply(s, error == 2 /* ENOENT */ ? "-ERR Message was removed by another session."
		    : "-ERR [SYS/TEMP] Cannot read the message.");
		set_busy(s, false);
		return;
	}
	s->stream.file = f;
	if (s->stream.body_lines_left < 0)
		s->retrieved++;
	if (s->stream.body_lines_left >= 0)
		reply(s, "+OK Top of message follows.");
	else
		reply(s, "+OK %llu octets", (unsigned long long)store_file_size(f));
	stream_next(s);
}

static void start_stream(struct pop3_session *s, struct store_msg *m, int64_t top_lines)
{
	struct pop3_stream *st = &s->stream;
	st->offset = 0;
	st->at_bol = true;
	st->prev_cr = false;
	st->line_len = 0;
	st->in_header = top_lines >= 0;
	st->body_lines_left = top_lines;
	st->wait_lowat = false;
	if (st->out.max == 0)
		buf_init(&st->out, 2 * POP3_CHUNK + 16);
	set_busy(s, true);
	s->req = store_file_open(server->store, s->view, m, file_opened, s);
}

static void cmd_retr(struct pop3_session *s, struct pop3_cmd *cmd)
{
	size_t idx;
	struct store_msg *m = msg_get(s, cmd->args[0], &idx);
	if (m == NULL) {
		no_such_message(s, cmd->args[0]);
		return;
	}
	start_stream(s, m, -1);
}

static void cmd_top(struct pop3_session *s, struct pop3_cmd *cmd)
{
	size_t idx;
	uint32_t lines;
	struct store_msg *m = msg_get(s, cmd->args[0], &idx);
	if (m == NULL) {
		no_such_message(s, cmd->args[0]);
		return;
	}
	if (pop3_parse_count(cmd->args[1], &lines) == -1) {
		reply(s, "-ERR TOP needs a message number and a line count.");
		return;
	}
	start_stream(s, m, lines);
}

/* ---- QUIT and the UPDATE state ---- */

static void expunge_done(void *arg, int error)
{
	struct pop3_session *s = arg;
	s->req = NULL;
	if (error != 0) {
		log_msg(LL_ERROR, "pop3.expunge_failed", "user %s: %s", s->user, strerror(error));
		reply(s, "-ERR [SYS/TEMP] Some deleted messages were not removed.");
		s->expunged = 0;
	} else {
		reply(s, "+OK Logging out, messages deleted.");
	}
	session_end(s, "quit");
}

static void cmd_quit(struct pop3_session *s, struct pop3_cmd *cmd)
{
	(void)cmd;
	if (s->state != ST_TRANSACTION) {
		reply(s, "+OK Logging out.");
		session_end(s, "quit");
		return;
	}
	/* RFC 1939 §6: only a QUIT from TRANSACTION removes the marked messages */
	s->state = ST_UPDATE;
	uint32_t *uids = xcalloc(s->view->count ? s->view->count : 1, sizeof(uint32_t));
	size_t n = 0;
	for (size_t i = 0; i < s->view->count; i++)
		if (s->deleted[i])
			uids[n++] = s->view->msgs[i].uid;
	if (n == 0) {
		free(uids);
		reply(s, "+OK Logging out.");
		session_end(s, "quit");
		return;
	}
	s->expunged = (unsigned)n;
	set_busy(s, true);
	s->req = store_expunge(server->store, s->view, uids, n, expunge_done, s);
	free(uids);
}

/* ---------------------------------------------------------------- dispatch */

static const struct pop3_command pop3_commands[] = {
	{ "CAPA", cmd_capa, ST_AUTHORIZATION | ST_TRANSACTION, 0, 0 },
	{ "USER", cmd_user, ST_AUTHORIZATION, 1, 1 },
	{ "PASS", cmd_pass, ST_AUTHORIZATION, 1, 1 },
	{ "APOP", cmd_apop, ST_AUTHORIZATION, 2, 2 },
	{ "AUTH", cmd_auth, ST_AUTHORIZATION, 0, 2 },
	{ "STLS", cmd_stls, ST_AUTHORIZATION, 0, 0 },
	{ "QUIT", cmd_quit, ST_AUTHORIZATION | ST_TRANSACTION, 0, 0 },
	{ "STAT", cmd_stat, ST_TRANSACTION, 0, 0 },
	{ "LIST", cmd_list, ST_TRANSACTION, 0, 1 },
	{ "UIDL", cmd_uidl, ST_TRANSACTION, 0, 1 },
	{ "RETR", cmd_retr, ST_TRANSACTION, 1, 1 },
	{ "TOP", cmd_top, ST_TRANSACTION, 2, 2 },
	{ "DELE", cmd_dele, ST_TRANSACTION, 1, 1 },
	{ "RSET", cmd_rset, ST_TRANSACTION, 0, 0 },
	{ "NOOP", cmd_noop, ST_TRANSACTION, 0, 0 },
};

static void bad_command(struct pop3_session *s, const char *msg)
{
	reply(s, "-ERR %s", msg);
	if (++s->bad_commands >= POP3_MAX_BAD_COMMANDS) {
		reply(s, "-ERR Too many bad commands, closing.");
		session_end(s, "too many bad commands");
	}
}

static void dispatch(struct pop3_session *s, char *line, size_t len)
{
	struct pop3_cmd cmd;
	enum pop3_parse_result r = pop3_parse_line(line, len, &cmd);
	if (r != POP3_PARSE_OK) {
		bad_command(s, pop3_parse_error(r));
		return;
	}
	for (size_t i = 0; i < sizeof(pop3_commands) / sizeof(pop3_commands[0]); i++) {
		const struct pop3_command *pc = &pop3_commands[i];
		if (strcmp(pc->name, cmd.verb) != 0)
			continue;
		if (!(pc->states & s->state))
			bad_command(s, "Command not valid in this state.");
		else if (cmd.nargs < pc->min_args || cmd.nargs > pc->max_args)
			bad_command(s, pc->min_args == pc->max_args && pc->max_args == 0
			    ? "This command takes no arguments." : "Wrong number of arguments.");
		else
			pc->fn(s, &cmd);
		return;
	}
	bad_command(s, "Unknown command.");
}

static void pop3_input(struct pop3_session *s)
{
	while (!s->busy && !s->closed) {
		char *line;
		size_t len;
		int r = io_getline(s->c, POP3_MAX_LINE, &line, &len);
		if (r == IO_LINE_MORE)
			return;
		if (r == IO_LINE_TOOLONG) {
			if (s->sasl_wait || s->sasl_final)
				sasl_abort(s, "-ERR SASL response too long.");
			else
				bad_command(s, "Line too long.");
		} else if (s->sasl_wait || s->sasl_final) {
			sasl_line(s, line, len);
		} else {
			dispatch(s, line, len);
		}
	}
}

static void pop3_io(struct conn *c, enum io_event ev, void *arg)
{
	struct pop3_session *s = arg;
	(void)c;
	switch (ev) {
	case IO_DATAIN:
		pop3_input(s);
		break;
	case IO_LOWAT:
		if (s->stream.wait_lowat && s->req == NULL)
			stream_next(s);
		break;
	case IO_TIMER:
		if (s->pending_reply != NULL) {
			reply(s, "%s", s->pending_reply);
			free(s->pending_reply);
			s->pending_reply = NULL;
			set_busy(s, false);
		}
		break;
	case IO_TLSREADY:
		session_auth_refresh(s->c, &s->sa, "pop");
		set_busy(s, false);
		break;
	case IO_TIMEOUT:
		reply(s, "-ERR Disconnected for inactivity.");
		session_end(s, "timeout");
		break;
	case IO_SHUTDOWN:
		if (s->busy) {
			s->shutdown_pending = true;
			break;
		}
		reply(s, "-ERR [SYS/TEMP] Server shutting down.");
		session_end(s, "server shutdown");
		break;
	case IO_DISCONNECTED:
		/* a dropped connection never reaches UPDATE: nothing is deleted */
		session_free(s);
		break;
	}
}

static void pop3_start(struct conn *c)
{
	struct pop3_session *s = xcalloc(1, sizeof(*s));
	s->c = c;
	s->state = ST_AUTHORIZATION;
	snprintf(s->timestamp, sizeof(s->timestamp), "<%d.%llu@%s>", (int)getpid(),
	    (unsigned long long)(util_random64() % 10000000000ULL), server->cfg->server.hostname);
	session_auth_refresh(s->c, &s->sa, "pop");
	io_set_callback(c, pop3_io, s);
	io_set_timeout(c, server->cfg->pop3.timeout);
	reply(s, "+OK Postling ready %s", s->timestamp);
}

const struct proto_ops pop3_ops = {
	.name = "pop3",
	.start = pop3_start,
	.busy_reply = "-ERR [SYS/TEMP] Too many connections, try again later.\r\n",
};
