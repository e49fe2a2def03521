/* smtp_session.c: the SMTP server session (RFC 5321) for the three listener
 * roles of design §6: `smtp` (port 25, inbound MX: local recipients only unless
 * authenticated), `submission` (587, STARTTLS then AUTH required, RFC 6409) and
 * `submissions` (465, implicit TLS, RFC 8314). ESMTP extensions: PIPELINING
 * (RFC 2920), SIZE (1870), 8BITMIME (6152), SMTPUTF8 (6531), ENHANCEDSTATUSCODES
 * (2034/3463), CHUNKING (3030), DSN (3461), STARTTLS (3207), AUTH (4954).
 *
 * One state machine over the connection's events; commands come from a table
 * (verb, handler, allowed states). Pipelined commands are answered in order:
 * replies queue in the output buffer and leave together. While async work runs
 * (a SASL step, delivery) input is paused and later commands wait. DATA and
 * BDAT content is handled in smtp_message.c. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/log.h"
#include "common/mailaddr.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "protocols/protocols.h"
#include "protocols/smtp_parse.h"
#include "server/server.h"
#include "relay/relay.h"
#include "store/store.h"

typedef void (*smtp_handler)(struct smtp_session *s, struct smtp_cmd *cmd);

struct smtp_command {
	enum smtp_verb verb;
	smtp_handler fn;
	unsigned states;             /* mask of enum smtp_state */
};

/* ---------------------------------------------------------------- replies */

void smtp_reply(struct smtp_session *s, int code, const char *enh, const char *fmt, ...)
{
	char text[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	/* RFC 2034: enhanced codes on every reply once ENHANCEDSTATUSCODES is offered
	 * (we offer it always; 220/221/354 greetings carry them too where defined) */
	if (enh != NULL)
		io_printf(s->c, "%d %s %s\r\n", code, enh, text);
	else
		io_printf(s->c, "%d %s\r\n", code, text);
}

static void reply_hint(struct smtp_session *s, enum smtp_parse_result r)
{
	struct smtp_reply_hint h = smtp_parse_reply(r);
	smtp_reply(s, h.code, h.enhanced, "%s", h.text);
}

/* ---------------------------------------------------------------- lifetime */

static void rcpts_free(struct smtp_session *s)
{
	for (size_t i = 0; i < s->nrcpts; i++) {
		free(s->rcpts[i].addr);
		free(s->rcpts[i].account);
		free(s->rcpts[i].orcpt);
	}
	free(s->rcpts);
	s->rcpts = NULL;
	s->nrcpts = 0;
}

void smtp_reset_transaction(struct smtp_session *s)
{
	rcpts_free(s);
	free(s->mail_from);
	s->mail_from = NULL;
	s->has_mail = false;
	memset(&s->mp, 0, sizeof(s->mp));
	buf_free(&s->msg);
	s->bdat_left = 0;
	s->bdat_last = s->bdat_discard = s->bdat_too_big = false;
	s->bdat_reply = NULL;
	if (s->state & (SS_MAIL | SS_RCPT | SS_DATA | SS_BDAT))
		s->state = SS_READY;
}

static void cancel_work(struct smtp_session *s)
{
	store_cancel(&s->req);
	queue_cancel(&s->qreq);
	smtp_detach_work(s);
}

static void session_free(struct smtp_session *s)
{
	cancel_work(s);
	auth_sasl_free(&s->sasl);
	smtp_reset_transaction(s);
	free(s->helo);
	free(s->auth_user);
	free(s->sasl_user);
	free(s);
}

void smtp_end(struct smtp_session *s, const char *reason)
{
	s->closed = true;
	cancel_work(s);
	io_close(s->c, reason);
}

void smtp_set_busy(struct smtp_session *s, bool busy)
{
	s->busy = busy;
	if (busy) {
		io_pause(s->c);
		return;
	}
	if (s->shutdown_pending) {
		smtp_reply(s, 421, "4.3.2", "%s Service shutting down", server->cfg->server.hostname);
		smtp_end(s, "server shutdown");
		return;
	}
	io_resume(s->c);
}

bool smtp_is_submission(const struct smtp_session *s)
{
	enum cfg_proto p = io_proto(s->c);
	return p == PROTO_SUBMISSION || p == PROTO_SUBMISSIONS;
}

/* A command that failed: counted; too many end the session (design §6 anti-abuse). */
static void count_error(struct smtp_session *s)
{
	if (++s->errors < (unsigned)server->cfg->smtp.max_errors)
		return;
	smtp_reply(s, 421, "4.7.0", "%s Too many errors, closing connection",
	    server->cfg->server.hostname);
	smtp_end(s, "too many errors");
}


/* ---------------------------------------------------------------- EHLO, HELO */

static void ehlo_keywords(struct smtp_session *s)
{
	const struct config *cfg = server->cfg;
	io_printf(s->c, "250-PIPELINING\r\n250-SIZE %llu\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
	    "250-ENHANCEDSTATUSCODES\r\n250-CHUNKING\r\n250-DSN\r\n",
	    (unsigned long long)cfg->smtp.max_message_size);
	if (!io_is_tls(s->c) && io_tls_available(s->c))
		io_printf(s->c, "250-STARTTLS\r\n");
	const char *const *m = auth_mechanisms(server->auth, &s->sa.ci);
	if (s->auth_user == NULL && m != NULL && m[0] != NULL) {
		struct buf b;
		buf_init(&b, 1024);
		buf_appends(&b, "250-AUTH");
		for (size_t i = 0; m[i] != NULL; i++)
			buf_printf(&b, " %s", m[i]);
		buf_appends(&b, "\r\n");
		io_write(s->c, b.data, b.len);
		buf_free(&b);
	}
	io_printf(s->c, "250 HELP\r\n");
}

static void cmd_helo(struct smtp_session *s, struct smtp_cmd *cmd)
{
	/* RFC 5321 §4.1.4: EHLO/HELO anywhere resets the transaction */
	smtp_reset_transaction(s);
	free(s->helo);
	s->helo = xstrdup(cmd->arg);
	s->esmtp = cmd->verb == SMTP_VERB_EHLO;
	s->state = SS_READY;
	if (!s->esmtp) {
		smtp_reply(s, 250, NULL, "%s", server->cfg->server.hostname);
		return;
	}
	io_printf(s->c, "250-%s Hello %s [%s]\r\n", server->cfg->server.hostname, s->helo,
	    io_remote(s->c));
	ehlo_keywords(s);
}

/* ---------------------------------------------------------------- STARTTLS */

static void cmd_starttls(struct smtp_session *s, struct smtp_cmd *cmd)
{
	if (cmd->arg != NULL) {
		smtp_reply(s, 501, "5.5.4", "Syntax error (no parameters allowed)");
		count_error(s);
		return;
	}
	if (io_is_tls(s->c)) {
		smtp_reply(s, 503, "5.5.1", "TLS already active");
		count_error(s);
		return;
	}
	if (!io_tls_available(s->c)) {
		smtp_reply(s, 454, "4.7.0", "TLS not available");
		return;
	}
	smtp_reply(s, 220, "2.0.0", "Ready to start TLS");
	/* RFC 3207 §6: commands pipelined after STARTTLS are discarded; after the
	 * handshake the client starts over with EHLO */
	if (io_starttls(s->c) == -1) {
		smtp_end(s, "starttls failed");
		return;
	}
	smtp_reset_transaction(s);
	free(s->helo);
	s->helo = NULL;
	s->state = SS_CONNECTED;
	smtp_set_busy(s, true);
}

/* ---------------------------------------------------------------- AUTH */

static void sasl_done(struct conn *c, enum auth_result r, struct auth_sasl *sasl, char *out,
    const char *user, void *arg);

static void sasl_step(struct smtp_session *s, const char *in)
{
	struct auth_sasl *sasl = s->sasl;
	s->sasl = NULL;              /* the job owns it until sasl_done */
	smtp_set_busy(s, true);
	session_sasl_step(s->c, sasl, in, sasl_done, s);
}

static void auth_succeeded(struct smtp_session *s, const char *user)
{
	session_log_auth(s->c, true, s->auth_mech, user);
	free(s->auth_user);
	s->auth_user = xstrdup(user);
	smtp_reply(s, 235, "2.7.0", "Authentication successful");
}

static void auth_failed(struct smtp_session *s, int code, const char *enh, const char *text)
{
	auth_sasl_free(&s->sasl);
	s->sasl_wait = s->sasl_final = false;
	smtp_reply(s, code, enh, "%s", text);
	count_error(s);
}

static void sasl_done(struct conn *c, enum auth_result r, struct auth_sasl *sasl, char *out,
    const char *user, void *arg)
{
	struct smtp_session *s = arg;
	(void)c;
	s->sasl = sasl;
	if (r == AUTH_CONTINUE) {
		s->sasl_wait = true;
		io_printf(s->c, "334 %s\r\n", out ? out : "");
	} else if (r == AUTH_OK && out != NULL && *out != '\0') {
		/* RFC 4954 §4: additional data with success goes out as a 334 first */
		auth_sasl_free(&s->sasl);
		free(s->sasl_user);
		s->sasl_user = xstrdup(user);
		s->sasl_final = true;
		io_printf(s->c, "334 %s\r\n", out);
	} else if (r == AUTH_OK) {
		auth_sasl_free(&s->sasl);
		auth_succeeded(s, user);
	} else if (r == AUTH_BADPROTO) {
		auth_failed(s, 501, "5.5.2", "Invalid base64 data or SASL message");
	} else if (r == AUTH_TEMPFAIL) {
		auth_failed(s, 454, "4.7.0", "Temporary authentication failure");
	} else {
		session_log_auth(s->c, false, s->auth_mech, NULL);
		auth_failed(s, 535, "5.7.8", "Authentication credentials invalid");
	}
	if (!s->closed)
		smtp_set_busy(s, false);
}

static void sasl_line(struct smtp_session *s, const char *line, size_t len)
{
	if (s->sasl_final) {
		s->sasl_final = false;
		if (len != 0)
			auth_failed(s, 501, "5.0.0", "Authentication cancelled");
		else
			auth_succeeded(s, s->sasl_user);
		return;
	}
	s->sasl_wait = false;
	if (len == 1 && line[0] == '*') {
		auth_failed(s, 501, "5.0.0", "Authentication cancelled");   /* RFC 4954 §4 */
		return;
	}
	sasl_step(s, line);
}

static void cmd_auth(struct smtp_session *s, struct smtp_cmd *cmd)
{
	if (s->auth_user != NULL) {
		smtp_reply(s, 503, "5.5.1", "Already authenticated");   /* RFC 4954 §4 */
		count_error(s);
		return;
	}
	if (throttle_check(server->throttle, io_remote(s->c), time(NULL)) < 0) {
		smtp_reply(s, 454, "4.7.0", "Too many authentication failures, try again later");
		return;
	}
	if (auth_mechanisms(server->auth, &s->sa.ci) == NULL ||
	    auth_mechanisms(server->auth, &s->sa.ci)[0] == NULL) {
		/* RFC 4954 §4 / RFC 3207: no mechanism without TLS on this connection */
		smtp_reply(s, 538, "5.7.11", "Encryption required for requested authentication mechanism");
		count_error(s);
		return;
	}
	enum auth_result r;
	s->sasl = auth_sasl_start(server->auth, cmd->auth_mech, &s->sa.ci, &r);
	if (s->sasl == NULL) {
		smtp_reply(s, 504, "5.5.4", "Unrecognized authentication type");
		count_error(s);
		return;
	}
	s->auth_mech = auth_sasl_mech(s->sasl);
	sasl_step(s, cmd->auth_initial);
}

/* ---------------------------------------------------------------- MAIL, RCPT */

static bool auth_required(const struct smtp_session *s)
{
	return smtp_is_submission(s) && s->auth_user == NULL;
}

static void cmd_mail(struct smtp_session *s, struct smtp_cmd *cmd)
{
	const struct config *cfg = server->cfg;
	if (auth_required(s)) {
		smtp_reply(s, 530, "5.7.0", "Authentication required");   /* RFC 4954 §6 */
		count_error(s);
		return;
	}
	if (cmd->mail.has_size && cmd->mail.size > cfg->smtp.max_message_size) {
		smtp_reply(s, 552, "5.3.4", "Message size exceeds fixed maximum message size");
		return;
	}
	if (!s->esmtp && cmd->nparams > 0) {
		smtp_reply(s, 555, "5.5.4", "MAIL parameters need EHLO");
		count_error(s);
		return;
	}
	char from[MAILADDR_STRING_MAX + 8] = "";
	if (!cmd->path.null_path && mailaddr_to_string(&cmd->path, from, sizeof(from)) == -1) {
		smtp_reply(s, 501, "5.1.7", "Bad sender address syntax");
		count_error(s);
		return;
	}
	if (s->auth_user != NULL && !auth_sender_allowed(server->auth, s->auth_user,
	    cmd->path.null_path ? NULL : cmd->path.local, cmd->path.domain)) {
		smtp_reply(s, 553, "5.7.1", "Sender address <%s> not owned by user %s", from, s->auth_user);
		count_error(s);
		return;
	}
	s->mail_from = xstrdup(from);
	s->mp = cmd->mail;
	s->has_mail = true;
	s->state = SS_MAIL;
	smtp_reply(s, 250, "2.1.0", "Ok");
}

/* The mailbox a RCPT names: its local part and domain as parsed (quotes
 * removed, route dropped); "<Postmaster>" is postmaster of the first local
 * domain (RFC 5321 §4.1.1.3: it must be accepted without a domain). */
static void rcpt_parts(const struct smtp_cmd *cmd, const char **local_r, const char **domain_r)
{
	const struct config *cfg = server->cfg;
	if (cmd->path.postmaster) {
		*local_r = "postmaster";
		*domain_r = cfg->ndomains ? cfg->domains[0] : cfg->server.hostname;
		return;
	}
	*local_r = cmd->path.local;
	*domain_r = cmd->path.domain;
}

static void add_rcpt(struct smtp_session *s, const char *addr, const char *account,
    const struct smtp_cmd *cmd)
{
	s->rcpts = xreallocarray(s->rcpts, s->nrcpts + 1, sizeof(*s->rcpts));
	struct smtp_rcpt *r = &s->rcpts[s->nrcpts++];
	r->addr = xstrdup(addr);
	r->account = account ? xstrdup(account) : NULL;
	r->notify = cmd->rcpt.notify;
	r->orcpt = cmd->rcpt.has_orcpt ? xasprintf("%s;%s", cmd->rcpt.orcpt_type, cmd->rcpt.orcpt_addr)
	    : NULL;
	s->state = SS_RCPT;
}

static void cmd_rcpt(struct smtp_session *s, struct smtp_cmd *cmd)
{
	if (cmd->path.utf8 && !s->mp.smtputf8) {
		smtp_reply(s, 553, "5.6.7", "UTF-8 address needs MAIL FROM ... SMTPUTF8");   /* RFC 6531 §3.5 */
		count_error(s);
		return;
	}
	if (s->nrcpts >= (size_t)server->cfg->smtp.max_recipients) {
		smtp_reply(s, 452, "4.5.3", "Too many recipients");   /* RFC 5321 §4.5.3.1.10 */
		return;
	}
	const char *local, *domain;
	rcpt_parts(cmd, &local, &domain);
	char addr[MAILADDR_STRING_MAX + 16];
	if (cmd->path.postmaster)
		snprintf(addr, sizeof(addr), "%s@%s", local, domain);
	else
		mailaddr_to_string(&cmd->path, addr, sizeof(addr));   /* printable form for replies/logs */
	const struct account *acct = NULL;
	enum auth_rcpt kind = auth_lookup_recipient(server->auth, local, domain, &acct);
	if (kind == AUTH_RCPT_UNKNOWN) {
		smtp_reply(s, 550, "5.1.1", "<%s>: Recipient address rejected: User unknown", addr);
		count_error(s);
		return;
	}
	if (kind == AUTH_RCPT_REMOTE && s->auth_user == NULL) {
		/* design §6: port 25 accepts mail for local domains only (no open relay) */
		smtp_reply(s, 550, "5.7.1", "<%s>: Relay access denied", addr);
		count_error(s);
		return;
	}
	add_rcpt(s, addr, kind == AUTH_RCPT_LOCAL ? acct->address : NULL, cmd);
	smtp_reply(s, 250, "2.1.5", "Ok");
}

/* ---------------------------------------------------------------- DATA, BDAT */

static void cmd_data(struct smtp_session *s, struct smtp_cmd *cmd)
{
	if (cmd->arg != NULL) {
		smtp_reply(s, 501, "5.5.4", "Syntax error (no parameters allowed)");
		count_error(s);
		return;
	}
	if (s->state & SS_BDAT) {
		smtp_reply(s, 503, "5.5.1", "DATA not allowed after BDAT");   /* RFC 3030 §3 */
		count_error(s);
		return;
	}
	if (s->mp.body == SMTP_BODY_BINARYMIME) {
		smtp_reply(s, 503, "5.5.1", "BINARYMIME needs BDAT");   /* RFC 3030 §3 */
		count_error(s);
		return;
	}
	smtp_data_start(s);
}

static void cmd_bdat(struct smtp_session *s, struct smtp_cmd *cmd)
{
	smtp_bdat_start(s, cmd->bdat_size, cmd->bdat_last);
}

/* ---------------------------------------------------------------- the rest */

static void cmd_rset(struct smtp_session *s, struct smtp_cmd *cmd)
{
	(void)cmd;
	smtp_reset_transaction(s);
	smtp_reply(s, 250, "2.0.0", "Ok");
}

static void cmd_noop(struct smtp_session *s, struct smtp_cmd *cmd)
{
	(void)cmd;
	smtp_reply(s, 250, "2.0.0", "Ok");
}

static void cmd_quit(struct smtp_session *s, struct smtp_cmd *cmd)
{
	(void)cmd;
	smtp_reply(s, 221, "2.0.0", "%s Bye", server->cfg->server.hostname);
	smtp_end(s, "quit");
}

static void cmd_vrfy(struct smtp_session *s, struct smtp_cmd *cmd)
{
	/* RFC 5321 §3.5.3: 252 when we will not verify (the default: no account harvesting) */
	struct mailaddr a;
	const char *arg = cmd->arg ? cmd->arg : "";
	size_t used;
	bool bracketed = arg[0] == '<';
	enum mailaddr_result r = bracketed
	    ? mailaddr_parse_path(arg, strlen(arg), MAILADDR_ALLOW_UTF8, &a, &used)
	    : mailaddr_parse(arg, strlen(arg), MAILADDR_ALLOW_UTF8, &a);
	if (!server->cfg->smtp.vrfy || r != MAILADDR_OK) {
		smtp_reply(s, 252, "2.5.2", "Cannot VRFY user, but will accept message and attempt delivery");
		return;
	}
	const struct account *acct = NULL;
	if (auth_lookup_recipient(server->auth, a.local, a.domain, &acct) == AUTH_RCPT_LOCAL)
		smtp_reply(s, 250, "2.1.5", "<%s>", acct->address);
	else
		smtp_reply(s, 550, "5.1.1", "User unknown");
}

static void cmd_expn(struct smtp_session *s, struct smtp_cmd *cmd)
{
	(void)cmd;
	smtp_reply(s, 502, "5.5.1", "EXPN not available");
}

static void cmd_help(struct smtp_session *s, struct smtp_cmd *cmd)
{
	(void)cmd;
	smtp_reply(s, 214, "2.0.0", "Postling: see RFC 5321 (EHLO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY STARTTLS AUTH)");
}

#define ANY (SS_CONNECTED | SS_READY | SS_MAIL | SS_RCPT | SS_BDAT)

static const struct smtp_command smtp_commands[] = {
	{ SMTP_VERB_EHLO, cmd_helo, ANY },
	{ SMTP_VERB_HELO, cmd_helo, ANY },
	{ SMTP_VERB_STARTTLS, cmd_starttls, SS_CONNECTED | SS_READY },
	{ SMTP_VERB_AUTH, cmd_auth, SS_READY },
	{ SMTP_VERB_MAIL, cmd_mail, SS_READY },
	{ SMTP_VERB_RCPT, cmd_rcpt, SS_MAIL | SS_RCPT },
	{ SMTP_VERB_DATA, cmd_data, SS_RCPT | SS_BDAT },
	{ SMTP_VERB_BDAT, cmd_bdat, ANY },     /* wrong states answered after skipping the chunk */
	{ SMTP_VERB_RSET, cmd_rset, ANY },
	{ SMTP_VERB_NOOP, cmd_noop, ANY },
	{ SMTP_VERB_QUIT, cmd_quit, ANY },
	{ SMTP_VERB_VRFY, cmd_vrfy, ANY },
	{ SMTP_VERB_EXPN, cmd_expn, ANY },
	{ SMTP_VERB_HELP, cmd_help, ANY },
};

/* The "bad sequence" reply for a command not allowed now (RFC 5321 §4.2.4) */
static void wrong_state(struct smtp_session *s, enum smtp_verb verb)
{
	if (verb == SMTP_VERB_DATA && (s->state & SS_MAIL))
		smtp_reply(s, 554, "5.5.1", "No valid recipients");
	else if (verb == SMTP_VERB_RCPT)
		smtp_reply(s, 503, "5.5.1", "Need MAIL command first");
	else if (verb == SMTP_VERB_MAIL && (s->state & (SS_MAIL | SS_RCPT)))
		smtp_reply(s, 503, "5.5.1", "Nested MAIL command");
	else if (s->state & SS_CONNECTED)
		smtp_reply(s, 503, "5.5.1", "Send EHLO/HELO first");
	else if (verb == SMTP_VERB_DATA || verb == SMTP_VERB_BDAT)
		smtp_reply(s, 503, "5.5.1", "Need RCPT command first");
	else
		smtp_reply(s, 503, "5.5.1", "Bad sequence of commands");
	count_error(s);
}

static void dispatch(struct smtp_session *s, const char *line, size_t len)
{
	struct smtp_cmd *cmd = xmalloc(sizeof(*cmd));
	enum smtp_parse_result r = smtp_parse_command(line, len, cmd);
	if (r == SMTP_E_SIZE_OVERFLOW && cmd->verb == SMTP_VERB_BDAT) {
		/* the chunk cannot be skipped: the stream is lost (RFC 3030 §2) */
		smtp_reply(s, 552, "5.3.4", "Chunk size too large; closing");
		smtp_end(s, "bdat size overflow");
	} else if (r != SMTP_PARSE_OK) {
		reply_hint(s, r);
		count_error(s);
	} else {
		const struct smtp_command *sc = NULL;
		for (size_t i = 0; i < sizeof(smtp_commands) / sizeof(smtp_commands[0]); i++)
			if (smtp_commands[i].verb == cmd->verb)
				sc = &smtp_commands[i];
		if (sc == NULL || !(sc->states & s->state))
			wrong_state(s, cmd->verb);
		else
			sc->fn(s, cmd);
	}
	free(cmd);
}

static void smtp_input(struct smtp_session *s)
{
	while (!s->busy && !s->closed) {
		if (s->state & SS_DATA) {
			if (!smtp_data_input(s))
				return;
			continue;
		}
		if (s->bdat_left > 0) {
			if (!smtp_bdat_input(s))
				return;
			continue;
		}
		char *line;
		size_t len;
		int r = io_getline(s->c, SMTP_MAX_LINE, &line, &len);
		if (r == IO_LINE_MORE)
			return;
		if (r == IO_LINE_TOOLONG) {
			if (s->sasl_wait || s->sasl_final)
				auth_failed(s, 500, "5.5.6", "Authentication exchange line is too long");
			else {
				smtp_reply(s, 500, "5.5.2", "Line too long");   /* RFC 5321 §4.5.3.1.4 */
				count_error(s);
			}
		} else if (s->sasl_wait || s->sasl_final) {
			sasl_line(s, line, len);
		} else {
			dispatch(s, line, len);
		}
	}
}

static void greet(struct smtp_session *s)
{
	s->state = SS_CONNECTED;
	/* RFC 5321 §4.3.1; the ESMTP word tells old clients EHLO is understood */
	smtp_reply(s, 220, NULL, "%s ESMTP Postling", server->cfg->server.hostname);
}

static void smtp_io(struct conn *c, enum io_event ev, void *arg)
{
	struct smtp_session *s = arg;
	(void)c;
	switch (ev) {
	case IO_DATAIN:
		if (s->state == SS_GREETING) {
			/* a client talking before the greeting is no SMTP client (RFC 5321 §4.3.1) */
			smtp_reply(s, 554, "5.5.0", "Protocol error: client sent data before the greeting");
			smtp_end(s, "early talker");
			return;
		}
		smtp_input(s);
		break;
	case IO_LOWAT:
		break;
	case IO_TIMER:
		if (s->state == SS_GREETING) {
			greet(s);
			io_resume(s->c);
		}
		break;
	case IO_TLSREADY:
		session_auth_refresh(s->c, &s->sa, "smtp");
		smtp_set_busy(s, false);
		break;
	case IO_TIMEOUT:
		smtp_reply(s, 421, "4.4.2", "%s Error: timeout exceeded", server->cfg->server.hostname);
		smtp_end(s, "timeout");
		break;
	case IO_SHUTDOWN:
		if (s->busy) {
			s->shutdown_pending = true;
			break;
		}
		smtp_reply(s, 421, "4.3.2", "%s Service shutting down", server->cfg->server.hostname);
		smtp_end(s, "server shutdown");
		break;
	case IO_DISCONNECTED:
		session_free(s);
		break;
	}
}

static void smtp_start(struct conn *c)
{
	struct smtp_session *s = xcalloc(1, sizeof(*s));
	s->c = c;
	session_auth_refresh(s->c, &s->sa, "smtp");
	io_set_callback(c, smtp_io, s);
	io_set_timeout(c, server->cfg->smtp.timeout);
	int delay = server->cfg->smtp.greeting_delay_ms;
	if (delay > 0) {
		/* early-talker check: input arriving before the timer fires is refused */
		s->state = SS_GREETING;
		io_set_timer(c, delay);
		return;
	}
	greet(s);
}

const struct proto_ops smtp_ops = {
	.name = "smtp",
	.start = smtp_start,
	.busy_reply = "421 4.7.0 Too many connections, try again later\r\n",
};
