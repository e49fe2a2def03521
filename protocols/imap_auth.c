/* imap_auth.c: logging in to the IMAP session: LOGIN (refused before TLS unless
 * plaintext is allowed: LOGINDISABLED, RFC 9051 §6.2.3), AUTHENTICATE with SASL-IR
 * (RFC 4959) over the shared SASL layer (server/auth.c, steps on the worker pool),
 * STARTTLS (RFC 9051 §6.2.1), the failed-login throttle, and the per-user session
 * limit (imap.max_sessions_per_user, NO [LIMIT]). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/xmalloc.h"
#include "protocols/imap.h"
#include "server/server.h"

/* A free per-user session slot ("imap0".."imapN-1" in the server's user locks):
 * max_sessions_per_user sessions of one account at a time. */
static int take_user_slot(const char *user)
{
	for (int i = 0; i < server->cfg->imap.max_sessions_per_user; i++) {
		char name[32];
		snprintf(name, sizeof(name), "imap%d", i);
		if (session_lock_user(name, user))
			return i;
	}
	return -1;
}

static void login_ok(struct imap_session *s, const char *user)
{
	session_log_auth(s->c, true, s->mech, user);
	int slot = take_user_slot(user);
	if (slot < 0) {
		log_msg(LL_INFO, "imap.session_limit", "user %s: %d sessions", user,
		    server->cfg->imap.max_sessions_per_user);
		imap_tagged(s, "NO", "[LIMIT] Too many sessions for this user, log out elsewhere first");
		return;
	}
	s->user = xstrdup(user);
	s->user_slot = slot;
	s->state = IMAP_ST_AUTH;
	io_set_timeout(s->c, server->cfg->imap.timeout);
	struct buf b;
	buf_init(&b, 4096);
	imap_capabilities(s, &b);
	imap_tagged(s, "OK", "[CAPABILITY %s] Logged in", b.data);
	buf_free(&b);
}

/* Bad credentials: the NO waits for the throttle's delay (busy until IO_TIMER). */
static void login_failed(struct imap_session *s, const char *user)
{
	session_log_auth(s->c, false, s->mech, user);
	int delay = throttle_check(server->throttle, io_remote(s->c), time(NULL));
	free(s->pending_reply);
	s->pending_reply = xstrdup("[AUTHENTICATIONFAILED] Authentication failed.");
	imap_set_busy(s, true);
	io_set_timer(s->c, delay > 0 ? delay : 0);
}

static bool throttled(struct imap_session *s)
{
	if (throttle_check(server->throttle, io_remote(s->c), time(NULL)) >= 0)
		return false;
	imap_tagged(s, "NO", "[UNAVAILABLE] Too many authentication failures from your address, "
	    "try again later.");
	return true;
}

static void password_done(struct conn *c, enum auth_result r, struct auth_sasl *sasl, char *out,
    const char *user, void *arg)
{
	struct imap_session *s = arg;
	(void)c;
	(void)sasl;
	(void)out;
	if (r == AUTH_OK)
		login_ok(s, user);
	else if (r == AUTH_TEMPFAIL)
		imap_tagged(s, "NO", "[UNAVAILABLE] Temporary authentication failure.");
	else
		login_failed(s, s->cmd_ctx);
}

void imap_cmd_login(struct imap_session *s, const struct imap_arg *args)
{
	const struct imap_parser *p = &s->parser;
	const struct imap_arg *a2 = imap_arg_next(p, args);
	size_t ulen, plen;
	const char *user = imap_arg_astring(p, args, &ulen);
	const char *pass = imap_arg_astring(p, a2, &plen);
	if (user == NULL || pass == NULL || imap_arg_next(p, a2) != NULL) {
		imap_bad(s, "LOGIN needs a user name and a password");
		return;
	}
	if (!imap_plaintext_ok(s)) {
		imap_tagged(s, "NO", "[PRIVACYREQUIRED] LOGIN is disabled before STARTTLS");
		return;
	}
	if (strlen(user) != ulen || strlen(pass) != plen) {
		imap_tagged(s, "NO", "[AUTHENTICATIONFAILED] Authentication failed.");
		return;
	}
	if (throttled(s))
		return;
	s->mech = "LOGIN";
	imap_set_ctx(s, xstrdup(user), free);
	imap_set_busy(s, true);
	session_check_password(s->c, user, pass, password_done, s);
}

static void sasl_done(struct conn *c, enum auth_result r, struct auth_sasl *sasl, char *out,
    const char *user, void *arg);

static void sasl_step(struct imap_session *s, const char *in)
{
	struct auth_sasl *sasl = s->sasl;
	s->sasl = NULL;                  /* the job owns it until sasl_done */
	imap_set_busy(s, true);
	session_sasl_step(s->c, sasl, in, sasl_done, s);
}

static void sasl_done(struct conn *c, enum auth_result r, struct auth_sasl *sasl, char *out,
    const char *user, void *arg)
{
	struct imap_session *s = arg;
	(void)c;
	s->sasl = sasl;
	switch (r) {
	case AUTH_CONTINUE:
		s->sasl_wait = true;
		imap_printf(s, "+ %s\r\n", out ? out : "");
		imap_set_busy(s, false);
		return;
	case AUTH_OK:
		auth_sasl_free(&s->sasl);
		if (out != NULL && *out != '\0') {
			/* RFC 9051 §6.2.2: final server data goes out as a challenge whose
			 * (empty) answer completes the exchange */
			free(s->sasl_final_user);
			s->sasl_final_user = xstrdup(user);
			s->sasl_wait = true;
			imap_printf(s, "+ %s\r\n", out);
			imap_set_busy(s, false);
			return;
		}
		login_ok(s, user);
		return;
	case AUTH_BADPROTO:
		auth_sasl_free(&s->sasl);
		imap_bad(s, "Invalid base64 data or SASL message");
		return;
	case AUTH_TEMPFAIL:
		auth_sasl_free(&s->sasl);
		imap_tagged(s, "NO", "[UNAVAILABLE] Temporary authentication failure.");
		return;
	case AUTH_FAIL:
		break;
	}
	auth_sasl_free(&s->sasl);
	login_failed(s, NULL);
}

/* A client line while AUTHENTICATE runs (RFC 9051 §6.2.2): "*" cancels. */
void imap_sasl_line(struct imap_session *s, const char *line, size_t len)
{
	s->sasl_wait = false;
	if (s->sasl_final_user != NULL) {
		char *user = s->sasl_final_user;
		s->sasl_final_user = NULL;
		if (len != 0)
			imap_bad(s, "AUTHENTICATE cancelled");
		else
			login_ok(s, user);
		free(user);
		return;
	}
	if (len == 1 && line[0] == '*') {
		auth_sasl_free(&s->sasl);
		imap_bad(s, "AUTHENTICATE cancelled");
		return;
	}
	sasl_step(s, line);
}

void imap_cmd_authenticate(struct imap_session *s, const struct imap_arg *args)
{
	const struct imap_parser *p = &s->parser;
	const struct imap_arg *ir = imap_arg_next(p, args);
	if (!imap_arg_is_atom(args) || (ir != NULL && (!imap_arg_is_atom(ir) ||
	    imap_arg_next(p, ir) != NULL))) {
		imap_bad(s, "AUTHENTICATE needs a mechanism name and an optional initial response");
		return;
	}
	if (throttled(s))
		return;
	char mech[64];
	snprintf(mech, sizeof(mech), "%s", imap_arg_value(p, args, NULL));
	for (char *q = mech; *q; q++)
		if (*q >= 'a' && *q <= 'z')
			*q = (char)(*q - 'a' + 'A');
	enum auth_result r;
	s->sasl = auth_sasl_start(server->auth, mech, &s->sa.ci, &r);
	if (s->sasl == NULL) {
		imap_tagged(s, "NO", "Unsupported authentication mechanism");
		return;
	}
	s->mech = auth_sasl_mech(s->sasl);
	/* SASL-IR (RFC 4959): "=" is an empty initial response, as auth_sasl_step wants */
	sasl_step(s, ir != NULL ? imap_arg_value(p, ir, NULL) : NULL);
}

void imap_cmd_starttls(struct imap_session *s, const struct imap_arg *args)
{
	(void)args;
	if (io_is_tls(s->c)) {
		imap_bad(s, "TLS is already active");
		return;
	}
	if (!io_tls_available(s->c)) {
		imap_tagged(s, "NO", "TLS is not available");
		return;
	}
	imap_tagged(s, "OK", "Begin TLS negotiation now");
	/* RFC 9051 §6.2.1: what the client pipelined after STARTTLS is discarded */
	if (io_starttls(s->c) == -1) {
		imap_end(s, "starttls failed");
		return;
	}
	imap_set_busy(s, true);      /* until IO_TLSREADY */
}

void imap_release_user(struct imap_session *s)
{
	if (s->user_slot >= 0) {
		char name[32];
		snprintf(name, sizeof(name), "imap%d", s->user_slot);
		session_unlock_user(name, s->user);
		s->user_slot = -1;
	}
}

/* Ends a running AUTHENTICATE with BAD (cancelled, or a response too long). */
void imap_sasl_abort(struct imap_session *s, const char *why)
{
	s->sasl_wait = false;
	auth_sasl_free(&s->sasl);
	free(s->sasl_final_user);
	s->sasl_final_user = NULL;
	imap_bad(s, "%s", why);
}

