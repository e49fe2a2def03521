/* imap_session.c: the IMAP server session (RFC 9051 IMAP4rev2 and RFC 3501
 * IMAP4rev1) as a state machine over the connection's I/O events: input fed to
 * the resumable parser (protocols/imap_parse.h), literals and continuations, the
 * command table and dispatch, the tagged reply, and the commands of the
 * connection itself: CAPABILITY, LOGOUT, ENABLE (RFC 5161), ID (RFC 2971),
 * IDLE (RFC 2177), NOOP and CHECK (a rescan of the selected mailbox). Logging in
 * is imap_auth.c.
 *
 * States (RFC 9051 §3): not authenticated -> authenticated <-> selected -> logout.
 * One command runs at a time: while it waits for the store, a file or output
 * room, input is paused and pipelined commands stay in the input buffer.
 *
 * Input: command text is read a line at a time (io_getline), literal octets by
 * count (io_peek/io_consume). A line ending in a literal header "{n}" tells how
 * many octets follow; the message literal of APPEND is not given to the parser but
 * streamed into an unlinked temp file (the parser sees an empty literal in its
 * place), so a 50 MB APPEND never sits in memory. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "protocols/imap.h"
#include "protocols/protocols.h"
#include "server/server.h"
#include "store/store.h"

#define IMAP_SASL_MAX_LINE (64 * 1024)  /* one SASL response line */
#define IMAP_ID_MAX_FIELDS 30           /* RFC 2971 §3.3 */

static void imap_input(struct imap_session *s);

/* ---------------------------------------------------------------- output */

void imap_write(struct imap_session *s, const void *p, size_t len)
{
	s->bytes_out += len;
	if (io_write(s->c, p, len) == -1 && !s->closed)
		imap_end(s, "write failed");
}

void imap_printf(struct imap_session *s, const char *fmt, ...)
{
	struct buf b;
	buf_init(&b, IMAP_MAX_LINE);
	va_list ap;
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	if (b.len > 0)
		imap_write(s, b.data, b.len);
	buf_free(&b);
}

static void tagged_line(struct imap_session *s, const char *tag, const char *status,
    const char *fmt, va_list ap)
{
	struct buf b;
	buf_init(&b, 4096);
	buf_printf(&b, "%s %s ", tag[0] ? tag : "*", status);
	buf_vprintf(&b, fmt, ap);
	if (b.len > 4094)
		b.len = 4094;
	b.data[b.len] = '\0';
	buf_appends(&b, "\r\n");
	imap_write(s, b.data, b.len);
	buf_free(&b);
}

static void tagged_line_f(struct imap_session *s, const char *tag, const char *status,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void tagged_line_f(struct imap_session *s, const char *tag, const char *status,
    const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	tagged_line(s, tag, status, fmt, ap);
	va_end(ap);
}

/* APPEND's literal state belongs to one command: dropped when it ends, and when
 * a command that streamed one never reached dispatch (a parse error after it). */
static void lit_reset(struct imap_session *s)
{
	if (s->lit.fd != -1)
		close(s->lit.fd);
	memset(&s->lit, 0, sizeof(s->lit));
	s->lit.fd = -1;
}

static void cmd_cleanup(struct imap_session *s)
{
	if (s->cmd_ctx_free != NULL && s->cmd_ctx != NULL)
		s->cmd_ctx_free(s->cmd_ctx);
	s->cmd_ctx = NULL;
	s->cmd_ctx_free = NULL;
	imap_fetch_free(&s->fetch);
	lit_reset(s);
}

void imap_set_ctx(struct imap_session *s, void *ctx, void (*free_fn)(void *))
{
	s->cmd_ctx = ctx;
	s->cmd_ctx_free = free_fn;
}

void imap_tagged(struct imap_session *s, const char *status, const char *fmt, ...)
{
	if (s->closed)
		return;
	/* untagged updates precede the tagged reply (RFC 9051 §7.5.1) */
	if (s->state == IMAP_ST_SELECTED && strcmp(status, "BAD") != 0)
		imap_updates(s, !(s->cmd != NULL && (s->cmd->flags & IMAP_CF_NO_EXPUNGE) && !s->uid_cmd));
	va_list ap;
	va_start(ap, fmt);
	tagged_line(s, s->tag, status, fmt, ap);
	va_end(ap);
	cmd_cleanup(s);
	s->in_cmd = false;
	s->idling = false;
	s->cmd = NULL;
	if (s->busy)
		imap_set_busy(s, false);
}

void imap_bad(struct imap_session *s, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char text[1024];
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	imap_tagged(s, "BAD", "%s", text);
	if (++s->bad_commands >= (unsigned)server->cfg->imap.max_errors && !s->closed) {
		imap_printf(s, "* BYE Too many invalid commands.\r\n");
		imap_end(s, "too many bad commands");
	}
}

/* ---------------------------------------------------------------- lifetime */

static void session_free(struct imap_session *s)
{
	struct logline *l = log_begin(LL_INFO, "imap.session");
	io_log_fields(l, s->c);
	log_str(l, "user", s->user);
	log_uint(l, "commands", s->commands);
	log_uint(l, "bytes", s->bytes_out);
	log_str(l, "reason", s->close_reason ? s->close_reason : "disconnected");
	log_end(l);

	store_cancel(&s->req);
	cmd_cleanup(s);
	imap_unselect(s);
	imap_parser_free(&s->parser);
	auth_sasl_free(&s->sasl);
	imap_release_user(s);
	free(s->user);
	free(s->sasl_final_user);
	free(s->pending_reply);
	free(s->saved);
	free(s);
}

void imap_end(struct imap_session *s, const char *reason)
{
	if (s->closed)
		return;
	s->closed = true;
	s->close_reason = reason;
	store_cancel(&s->req);
	io_close(s->c, reason);
}

void imap_set_busy(struct imap_session *s, bool busy)
{
	s->busy = busy;
	if (busy) {
		io_pause(s->c);
		return;
	}
	if (s->shutdown_pending && !s->in_cmd) {
		imap_printf(s, "* BYE Server shutting down.\r\n");
		imap_end(s, "server shutdown");
		return;
	}
	io_resume(s->c);
}

/* ---------------------------------------------------------------- capabilities */

bool imap_plaintext_ok(struct imap_session *s)
{
	return io_is_tls(s->c) || s->sa.ci.loopback || server->cfg->auth.allow_plaintext;
}

uint64_t imap_append_limit(void)
{
	const struct config *cfg = server->cfg;
	uint64_t n = cfg->imap.max_append_size ? cfg->imap.max_append_size : cfg->smtp.max_message_size;
	return n > UINT32_MAX ? UINT32_MAX : n;     /* RFC 7889: number (32 bits) */
}

void imap_capabilities(struct imap_session *s, struct buf *out)
{
	buf_appends(out, "IMAP4rev1 IMAP4rev2 LITERAL+ SASL-IR ENABLE IDLE NAMESPACE UIDPLUS MOVE "
	    "UNSELECT CHILDREN LIST-EXTENDED LIST-STATUS SPECIAL-USE ESEARCH SEARCHRES BINARY ID "
	    "QUOTA QUOTA=RES-STORAGE STATUS=SIZE UTF8=ACCEPT");
	buf_printf(out, " APPENDLIMIT=%llu", (unsigned long long)imap_append_limit());
	if (s->state != IMAP_ST_NOTAUTH)
		return;
	if (!io_is_tls(s->c) && io_tls_available(s->c))
		buf_appends(out, " STARTTLS");
	if (!imap_plaintext_ok(s))
		buf_appends(out, " LOGINDISABLED");
	const char *const *m = auth_mechanisms(server->auth, &s->sa.ci);
	for (size_t i = 0; m != NULL && m[i] != NULL; i++)
		buf_printf(out, " AUTH=%s", m[i]);
}

static void cmd_capability(struct imap_session *s, const struct imap_arg *args)
{
	(void)args;
	struct buf b;
	buf_init(&b, 4096);
	buf_appends(&b, "* CAPABILITY ");
	imap_capabilities(s, &b);
	buf_appends(&b, "\r\n");
	imap_write(s, b.data, b.len);
	buf_free(&b);
	imap_tagged(s, "OK", "CAPABILITY completed");
}

static void noop_synced(void *arg, int error)
{
	struct imap_session *s = arg;
	s->req = NULL;
	if (error != 0)
		log_msg(LL_WARN, "imap.sync_failed", "user %s: %s", s->user, strerror(error));
	imap_tagged(s, "OK", "%s completed", s->cmd->name);
}

/* NOOP and CHECK poll (RFC 9051 §6.1.2): with a mailbox selected, its directory is
 * rescanned first, so mail that other programs (or a delivery whose rescan is
 * still queued) put there shows up in this very reply. */
static void cmd_noop(struct imap_session *s, const struct imap_arg *args)
{
	(void)args;
	if (s->mb == NULL) {
		imap_tagged(s, "OK", "NOOP completed");
		return;
	}
	imap_set_busy(s, true);
	s->req = store_mailbox_sync(s->mb, noop_synced, s);
}

static void cmd_logout(struct imap_session *s, const struct imap_arg *args)
{
	(void)args;
	imap_printf(s, "* BYE Logging out\r\n");
	s->state = IMAP_ST_LOGOUT;
	imap_tagged(s, "OK", "LOGOUT completed");
	imap_end(s, "logout");
}

/* ---------------------------------------------------------------- ENABLE, ID, IDLE */

static void cmd_enable(struct imap_session *s, const struct imap_arg *args)
{
	const struct imap_parser *p = &s->parser;
	struct buf b;
	buf_init(&b, 1024);
	for (const struct imap_arg *a = args; a != NULL; a = imap_arg_next(p, a)) {
		if (!imap_arg_is_atom(a)) {
			buf_free(&b);
			imap_bad(s, "ENABLE takes capability names");
			return;
		}
		const char *v = imap_arg_value(p, a, NULL);
		/* RFC 5161 §3: each newly enabled capability is listed once */
		if (strcasecmp(v, "IMAP4rev2") == 0 && !s->rev2) {
			s->rev2 = s->utf8 = true;
			buf_appends(&b, " IMAP4rev2");
		} else if (strcasecmp(v, "UTF8=ACCEPT") == 0 && !s->utf8) {
			s->utf8 = true;
			buf_appends(&b, " UTF8=ACCEPT");
		}
	}
	if (args == NULL) {
		buf_free(&b);
		imap_bad(s, "ENABLE needs at least one capability");
		return;
	}
	imap_printf(s, "* ENABLED%s\r\n", b.len ? b.data : "");
	buf_free(&b);
	imap_tagged(s, "OK", "ENABLE completed");
}

/* RFC 2971: the client's fields are logged (bounded), ours returned. */
static void cmd_id(struct imap_session *s, const struct imap_arg *args)
{
	const struct imap_parser *p = &s->parser;
	if (args == NULL || imap_arg_next(p, args) != NULL ||
	    (args->type != IMAP_ARG_NIL && args->type != IMAP_ARG_LIST)) {
		imap_bad(s, "ID takes a parameter list or NIL");
		return;
	}
	if (args->type == IMAP_ARG_LIST) {
		if (args->count % 2 != 0 || args->count > 2 * IMAP_ID_MAX_FIELDS) {
			imap_bad(s, "ID needs at most 30 field/value pairs");
			return;
		}
		struct logline *l = log_begin(LL_DEBUG, "imap.id");
		io_log_fields(l, s->c);
		for (const struct imap_arg *f = imap_arg_child(p, args); f != NULL;) {
			const struct imap_arg *v = imap_arg_next(p, f);
			size_t fl = 0, vl = 0;
			const char *fs = imap_arg_value(p, f, &fl);
			const char *vs = imap_arg_value(p, v, &vl);
			if (fs != NULL && vs != NULL && f->type != IMAP_ARG_LIST && v->type != IMAP_ARG_NIL) {
				char key[40];
				snprintf(key, sizeof(key), "id_%.*s", (int)(fl > 30 ? 30 : fl), fs);
				log_strn(l, key, vs, vl > 128 ? 128 : vl);
			}
			f = imap_arg_next(p, v);
		}
		log_end(l);
	}
	imap_printf(s, "* ID (\"name\" \"Postling\" \"version\" \"0.1.0\")\r\n");
	imap_tagged(s, "OK", "ID completed");
}

/* RFC 2177: "+ idling"; updates go out as they happen; DONE ends it. */
static void cmd_idle(struct imap_session *s, const struct imap_arg *args)
{
	(void)args;
	if (s->state == IMAP_ST_SELECTED)
		imap_updates(s, true);
	s->idling = true;
	imap_printf(s, "+ idling\r\n");
}

static void idle_line(struct imap_session *s, const char *line, size_t len)
{
	/* any line ends IDLE; only DONE ends it well (RFC 2177 §3) */
	s->idling = false;
	io_set_timeout(s->c, server->cfg->imap.timeout);
	if (len == 4 && strncasecmp(line, "DONE", 4) == 0)
		imap_tagged(s, "OK", "IDLE terminated");
	else
		imap_bad(s, "Expected DONE to end IDLE");
}

/* ---------------------------------------------------------------- dispatch */

#define NA IMAP_ST_NOTAUTH
#define AU IMAP_ST_AUTH
#define SE IMAP_ST_SELECTED
#define ANY (NA | AU | SE)

static const struct imap_command imap_commands[] = {
	{ "CAPABILITY", cmd_capability, ANY, 0 },
	{ "NOOP", cmd_noop, ANY, 0 },
	{ "LOGOUT", cmd_logout, ANY, 0 },
	{ "ID", cmd_id, ANY, 0 },
	{ "STARTTLS", imap_cmd_starttls, NA, 0 },
	{ "LOGIN", imap_cmd_login, NA, 0 },
	{ "AUTHENTICATE", imap_cmd_authenticate, NA, 0 },
	{ "ENABLE", cmd_enable, AU | SE, 0 },
	{ "IDLE", cmd_idle, AU | SE, 0 },
	{ "SELECT", imap_cmd_select, AU | SE, 0 },
	{ "EXAMINE", imap_cmd_examine, AU | SE, 0 },
	{ "CREATE", imap_cmd_create, AU | SE, 0 },
	{ "DELETE", imap_cmd_delete, AU | SE, 0 },
	{ "RENAME", imap_cmd_rename, AU | SE, 0 },
	{ "SUBSCRIBE", imap_cmd_subscribe, AU | SE, 0 },
	{ "UNSUBSCRIBE", imap_cmd_unsubscribe, AU | SE, 0 },
	{ "LIST", imap_cmd_list, AU | SE, 0 },
	{ "LSUB", imap_cmd_lsub, AU | SE, 0 },
	{ "NAMESPACE", imap_cmd_namespace, AU | SE, 0 },
	{ "STATUS", imap_cmd_status, AU | SE, 0 },
	{ "APPEND", imap_cmd_append, AU | SE, 0 },
	{ "GETQUOTA", imap_cmd_getquota, AU | SE, 0 },
	{ "GETQUOTAROOT", imap_cmd_getquotaroot, AU | SE, 0 },
	{ "CHECK", cmd_noop, SE, 0 },
	{ "CLOSE", imap_cmd_close, SE, 0 },
	{ "UNSELECT", imap_cmd_unselect, SE, 0 },
	{ "EXPUNGE", imap_cmd_expunge, SE, IMAP_CF_UID },
	{ "FETCH", imap_cmd_fetch, SE, IMAP_CF_UID | IMAP_CF_NO_EXPUNGE },
	{ "STORE", imap_cmd_store, SE, IMAP_CF_UID | IMAP_CF_NO_EXPUNGE },
	{ "SEARCH", imap_cmd_search, SE, IMAP_CF_UID | IMAP_CF_NO_EXPUNGE },
	{ "COPY", imap_cmd_copy, SE, IMAP_CF_UID },
	{ "MOVE", imap_cmd_move, SE, IMAP_CF_UID },
};

static const struct imap_command *command_find(const char *name)
{
	for (size_t i = 0; i < sizeof(imap_commands) / sizeof(imap_commands[0]); i++)
		if (strcasecmp(imap_commands[i].name, name) == 0)
			return &imap_commands[i];
	return NULL;
}

static void dispatch(struct imap_session *s)
{
	const struct imap_parser *p = &s->parser;
	snprintf(s->tag, sizeof(s->tag), "%s", imap_parser_tag(p));
	s->in_cmd = true;
	s->uid_cmd = false;
	s->cmd = NULL;
	s->commands++;
	const char *name = imap_parser_command(p);
	const struct imap_arg *args = imap_arg_first(p);
	if (strcmp(name, "UID") == 0) {
		s->uid_cmd = true;
		name = imap_arg_is_atom(args) ? imap_arg_value(p, args, NULL) : "";
		args = imap_arg_next(p, args);
	}
	const struct imap_command *cmd = command_find(name);
	if (cmd == NULL || (s->uid_cmd && !(cmd->flags & IMAP_CF_UID))) {
		imap_bad(s, "Unknown command");
		return;
	}
	if (!(cmd->states & s->state)) {
		imap_bad(s, s->state == IMAP_ST_NOTAUTH ? "Log in first" :
		    cmd->states == IMAP_ST_SELECTED ? "No mailbox selected" : "Already logged in");
		return;
	}
	s->cmd = cmd;
	if (s->lit.extra && strcmp(cmd->name, "APPEND") == 0) {
		imap_bad(s, "One message per APPEND (MULTIAPPEND is not supported)");
		return;
	}
	cmd->fn(s, args);
	/* still running: the completion sends the tagged reply; input waits */
	if (s->in_cmd && !s->idling && !s->sasl_wait && !s->busy && !s->closed)
		imap_set_busy(s, true);
}

/* ---------------------------------------------------------------- input */

/* A literal header "{n}", "{n+}", "~{n}" ending a command line, announcing n
 * octets of literal data after the line end. */
struct lit_hdr {
	size_t start;                /* offset of "{" (or "~") */
	uint64_t size;
	bool plus, lit8;
};

static bool literal_header(const char *line, size_t len, struct lit_hdr *h)
{
	if (len < 3 || line[len - 1] != '}')
		return false;
	size_t i = len - 1;
	h->plus = line[i - 1] == '+';
	if (h->plus)
		i--;
	size_t end = i;
	while (i > 0 && line[i - 1] >= '0' && line[i - 1] <= '9')
		i--;
	if (i == end || i == 0 || line[i - 1] != '{' || end - i > 19)
		return false;
	h->size = 0;
	for (size_t k = i; k < end; k++)
		h->size = h->size * 10 + (uint64_t)(line[k] - '0');
	h->start = i - 1;
	h->lit8 = h->start > 0 && line[h->start - 1] == '~';
	if (h->lit8)
		h->start--;
	/* a literal is an argument of its own: after SP or "(" */
	return h->start > 0 && (line[h->start - 1] == ' ' || line[h->start - 1] == '(');
}

/* A reply to a command that never reached dispatch (parse errors, refused literals). */
static void early_reply(struct imap_session *s, const char *status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void early_reply(struct imap_session *s, const char *status, const char *fmt, ...)
{
	const char *tag = imap_parser_tag(&s->parser);
	va_list ap;
	va_start(ap, fmt);
	tagged_line(s, tag != NULL ? tag : "*", status, fmt, ap);
	va_end(ap);
}

/* The parser refused the input. in_line: the error came from the command text
 * already taken from the input (its rest is gone); must_close: the stream cannot
 * be resynchronised (that text announced a non-synchronizing literal whose octets
 * the client sends anyway, or the error came inside a literal). */
static void parse_error(struct imap_session *s, bool in_line, bool must_close)
{
	struct imap_parser *p = &s->parser;
	enum imap_parse_error e = imap_parser_error(p);
	bool fatal = imap_parser_fatal(p) || must_close;
	const char *code = imap_parse_resp_code(e);
	if (e == IMAP_PE_LITERAL_TOO_BIG && !fatal)
		early_reply(s, "NO", "[TOOBIG] %s", imap_parse_strerror(e));
	else
		early_reply(s, "BAD", "%s%s%s%s", code ? "[" : "", code ? code : "", code ? "] " : "",
		    imap_parse_strerror(e));
	bool skip = p->skip_line;
	imap_parser_reset(p);
	s->need_reset = false;
	lit_reset(s);
	if (skip && in_line && !fatal) {
		size_t used;
		imap_parser_feed(p, "\r\n", 2, &used);   /* the line's rest is already consumed */
	}
	if (fatal || ++s->bad_commands >= (unsigned)server->cfg->imap.max_errors) {
		imap_printf(s, "* BYE %s\r\n", fatal ? "Cannot continue after this error." :
		    "Too many invalid commands.");
		imap_end(s, fatal ? "protocol error" : "too many bad commands");
	}
}

/* Creates the unlinked temp file APPEND's literal goes to (<data_dir>/tmp). */
int imap_tmpfile(void)
{
	char *dir = xasprintf("%s/tmp", server->cfg->server.data_dir);
	(void)mkdir(dir, 0700);
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd == -1) {
		char *path = xasprintf("%s/imap-append.XXXXXX", dir);
		fd = mkostemp(path, O_CLOEXEC);
		if (fd != -1)
			unlink(path);
		free(path);
	}
	if (fd == -1)
		log_msg(LL_ERROR, "imap.append_tmp", "%s: %s", dir, strerror(errno));
	free(dir);
	return fd;
}

/* APPEND's message literal: not for the parser (which gets "{0+}" in its place)
 * but for a temp file. false when the command was answered here. */
static bool append_literal(struct imap_session *s, const struct lit_hdr *h)
{
	struct imap_append_lit *l = &s->lit;
	if (l->fd != -1 || l->discard) {
		l->extra = true;              /* a second message: read and drop it */
		l->discard = true;
	} else if (h->size > imap_append_limit()) {
		if (h->plus && h->size / 2 > imap_append_limit()) {
			/* far too big to be worth reading through: RFC 7888 §4 lets us close */
			early_reply(s, "BAD", "[TOOBIG] Message far larger than APPENDLIMIT %llu",
			    (unsigned long long)imap_append_limit());
			imap_printf(s, "* BYE Cannot continue after this error.\r\n");
			imap_end(s, "literal too big");
			return false;
		}
		if (!h->plus) {
			/* RFC 7889 §4: refused before the client sends a single octet */
			early_reply(s, "NO", "[TOOBIG] Message larger than APPENDLIMIT %llu",
			    (unsigned long long)imap_append_limit());
			s->need_reset = true;
			lit_reset(s);
			return false;
		}
		l->discard = l->too_big = true;
	} else {
		l->fd = imap_tmpfile();
		if (l->fd == -1)
			l->discard = l->failed = true;
	}
	l->size = l->left = h->size;
	if (!h->plus)
		imap_printf(s, "+ Ready for literal data\r\n");
	return true;
}

static void append_data(struct imap_session *s)
{
	struct imap_append_lit *l = &s->lit;
	const char *p;
	size_t n = io_peek(s->c, &p);
	if (n == 0)
		return;
	if ((uint64_t)n > l->left)
		n = (size_t)l->left;
	if (!l->discard && util_write_all(l->fd, p, n) == -1) {
		log_msg(LL_ERROR, "imap.append_write", "user %s: %s", s->user, strerror(errno));
		l->discard = l->failed = true;
	}
	io_consume(s->c, n);
	l->left -= n;
}

/* Literal octets for the parser (any literal but APPEND's message). */
static void parser_literal_data(struct imap_session *s)
{
	const char *p;
	size_t n = io_peek(s->c, &p);
	if (n == 0)
		return;
	if ((uint64_t)n > s->plit_left)
		n = (size_t)s->plit_left;
	size_t used = 0;
	enum imap_parse_status st = imap_parser_feed(&s->parser, p, n, &used);
	io_consume(s->c, used);
	s->plit_left -= used;
	if (st == IMAP_PARSE_ERROR) {
		/* inside a literal the rest of the command cannot be found reliably */
		s->plit_left = 0;
		parse_error(s, false, true);
	}
}

static bool feed(struct imap_session *s, const char *p, size_t n, enum imap_parse_status *st_r)
{
	size_t used;
	*st_r = imap_parser_feed(&s->parser, p, n, &used);
	return *st_r != IMAP_PARSE_ERROR;
}

static void command_line(struct imap_session *s, const char *line, size_t len)
{
	struct lit_hdr h = { 0 };
	bool lit = literal_header(line, len, &h);
	size_t head = lit ? h.start : len;
	enum imap_parse_status st;
	if (!feed(s, line, head, &st)) {
		parse_error(s, true, lit && h.plus);
		return;
	}
	const char *cmd = imap_parser_command(&s->parser);
	/* the message: a literal after the mailbox name, or RFC 6855's "UTF8 (~{n}" */
	bool msg_pos = lit && (line[h.start - 1] == ' ' || (h.start >= 6 && h.lit8 &&
	    strncasecmp(line + h.start - 6, "UTF8 (", 6) == 0));
	if (lit && cmd != NULL && strcmp(cmd, "APPEND") == 0 && msg_pos &&
	    imap_arg_count(&s->parser) >= 1 && s->state != IMAP_ST_NOTAUTH) {
		if (!append_literal(s, &h))
			return;
		const char *sub = h.lit8 ? "~{0+}\r\n" : "{0+}\r\n";
		if (!feed(s, sub, strlen(sub), &st))
			parse_error(s, false, true);   /* the octets follow regardless */
		return;
	}
	if ((lit && !feed(s, line + head, len - head, &st)) || !feed(s, "\r\n", 2, &st)) {
		parse_error(s, true, lit && h.plus);
		return;
	}
	switch (st) {
	case IMAP_PARSE_DONE:
		s->need_reset = true;
		dispatch(s);
		return;
	case IMAP_PARSE_CONTINUE:
		imap_printf(s, "+ Ready for literal data\r\n");
		s->plit_left = h.size;
		return;
	case IMAP_PARSE_MORE:
		if (lit)
			s->plit_left = h.size;
		return;
	case IMAP_PARSE_ERROR:
		return;
	}
}

/* The tag of the command line that starts the input, if it starts one: what a
 * too long line is answered with, its octets being dropped unread. */
static void peek_tag(struct imap_session *s, char tag[IMAP_MAX_TAG + 1])
{
	tag[0] = '\0';
	if (s->sasl_wait || s->idling || (!s->need_reset && imap_parser_tag(&s->parser) != NULL))
		return;
	const char *p;
	size_t n = io_peek(s->c, &p), i = 0;
	while (i < n && i < IMAP_MAX_TAG && p[i] > 0x20 && p[i] < 0x7f && strchr("(){%*\"\\+", p[i]) == NULL)
		i++;
	if (i < n && p[i] == ' ') {
		memcpy(tag, p, i);
		tag[i] = '\0';
	}
}

/* io_getline dropped a line over IMAP_MAX_LINE through its end, so the next line
 * starts a command again: BAD (or the SASL exchange ends) and the session goes on. */
static void line_too_long(struct imap_session *s, const char *tag)
{
	if (s->sasl_wait) {
		imap_sasl_abort(s, "SASL response too long");
		return;
	}
	if (s->idling) {
		idle_line(s, "", 0);
		return;
	}
	const char *t = imap_parser_tag(&s->parser);
	if (s->need_reset || t == NULL)
		t = tag[0] ? tag : "*";
	tagged_line_f(s, t, "BAD", "[TOOBIG] Command line too long");
	imap_parser_reset(&s->parser);
	s->need_reset = false;
	s->plit_left = 0;
	lit_reset(s);
	if (++s->bad_commands >= (unsigned)server->cfg->imap.max_errors) {
		imap_printf(s, "* BYE Too many invalid commands.\r\n");
		imap_end(s, "too many bad commands");
	}
}

static void imap_input(struct imap_session *s)
{
	while (!s->busy && !s->closed) {
		if (s->lit.left > 0) {
			size_t before = s->lit.left;
			append_data(s);
			if (s->lit.left == before)
				return;
			continue;
		}
		if (s->plit_left > 0) {
			uint64_t before = s->plit_left;
			parser_literal_data(s);
			if (s->plit_left == before && !s->closed)
				return;
			continue;
		}
		if (s->in_cmd && !s->idling && !s->sasl_wait)
			return;
		char *line;
		size_t len;
		char tag[IMAP_MAX_TAG + 1];
		peek_tag(s, tag);
		int r = io_getline(s->c, s->sasl_wait ? IMAP_SASL_MAX_LINE : IMAP_MAX_LINE + 2, &line, &len);
		if (r == IO_LINE_MORE)
			return;
		if (r == IO_LINE_TOOLONG) {
			line_too_long(s, tag);
			continue;
		}
		if (s->sasl_wait) {
			imap_sasl_line(s, line, len);
			continue;
		}
		if (s->idling) {
			idle_line(s, line, len);
			continue;
		}
		if (s->need_reset) {
			imap_parser_reset(&s->parser);
			s->need_reset = false;
		}
		command_line(s, line, len);
	}
}

/* ---------------------------------------------------------------- events */

static void imap_io(struct conn *c, enum io_event ev, void *arg)
{
	struct imap_session *s = arg;
	(void)c;
	switch (ev) {
	case IO_DATAIN:
		imap_input(s);
		break;
	case IO_LOWAT:
		imap_fetch_lowat(s);
		break;
	case IO_TIMER:
		if (s->pending_reply != NULL) {
			char *msg = s->pending_reply;
			s->pending_reply = NULL;
			imap_tagged(s, "NO", "%s", msg);
			free(msg);
		}
		break;
	case IO_TLSREADY:
		session_auth_refresh(s->c, &s->sa, "imap");
		imap_set_busy(s, false);
		break;
	case IO_TIMEOUT:
		imap_printf(s, "* BYE Autologout; idle for too long\r\n");
		imap_end(s, "timeout");
		break;
	case IO_SHUTDOWN:
		if (s->busy || (s->in_cmd && !s->idling && !s->sasl_wait)) {
			s->shutdown_pending = true;
			break;
		}
		imap_printf(s, "* BYE Server shutting down.\r\n");
		imap_end(s, "server shutdown");
		break;
	case IO_DISCONNECTED:
		session_free(s);
		break;
	}
}

static void imap_start(struct conn *c)
{
	struct imap_session *s = xcalloc(1, sizeof(*s));
	s->c = c;
	s->state = IMAP_ST_NOTAUTH;
	s->user_slot = -1;
	s->lit.fd = -1;
	imap_parser_init(&s->parser, NULL);
	session_auth_refresh(c, &s->sa, "imap");
	io_set_callback(c, imap_io, s);
	io_set_timeout(c, server->cfg->imap.login_timeout);
	struct buf b;
	buf_init(&b, 4096);
	imap_capabilities(s, &b);
	imap_printf(s, "* OK [CAPABILITY %s] Postling ready.\r\n", b.data);
	buf_free(&b);
}

const struct proto_ops imap_ops = {
	.name = "imap",
	.start = imap_start,
	.busy_reply = "* BYE [UNAVAILABLE] Too many connections, try again later.\r\n",
};
