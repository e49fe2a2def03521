/* smtp_message.c: message content for the SMTP session: DATA (RFC 5321
 * §4.1.1.4, dot-unstuffing and SMTP-smuggling defence in smtp_parse.c) and BDAT
 * (RFC 3030), the trace header (RFC 5321 §4.4, RFC 3848 protocol names), the
 * Message-ID:/Date: a submission server adds (RFC 6409 §8), the DKIM
 * signature of mail that authenticated users send out (RFC 6376, made on a
 * worker), then durable delivery: remote recipients into the relay queue,
 * local ones into their Maildirs, both fsync'ed before the 250 (design §6). */
#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "protocols/protocols.h"
#include "relay/relay.h"
#include "server/server.h"
#include "store/store.h"

#define HEADER_SLACK (64 * 1024)     /* room for our headers on top of the size limit */

static void rfc5322_date(char *out, size_t size, time_t t)
{
	struct tm tm;
	localtime_r(&t, &tm);
	strftime(out, size, "%a, %d %b %Y %H:%M:%S %z", &tm);
}

/* RFC 3848: SMTP / ESMTP, +S with TLS, +A when authenticated */
static const char *with_protocol(const struct smtp_session *s)
{
	static const char *const names[] = { "ESMTP", "ESMTPS", "ESMTPA", "ESMTPSA" };
	if (!s->esmtp)
		return "SMTP";
	return names[(io_is_tls(s->c) ? 1 : 0) + (s->auth_user != NULL ? 2 : 0)];
}

static void add_received(struct smtp_session *s)
{
	char date[64];
	rfc5322_date(date, sizeof(date), time(NULL));
	struct buf *b = &s->msg;
	buf_printf(b, "Received: from %s ([%s])\r\n\tby %s (Postling) with %s id %s",
	    s->helo ? s->helo : "unknown", io_remote(s->c), server->cfg->server.hostname,
	    with_protocol(s), s->id);
	if (io_is_tls(s->c))
		buf_printf(b, "\r\n\t(using %s with cipher %s)", io_tls_version(s->c), io_tls_cipher(s->c));
	if (s->auth_user != NULL)
		buf_printf(b, "\r\n\t(Authenticated sender: %s)", s->auth_user);
	if (s->nrcpts == 1)
		buf_printf(b, "\r\n\tfor <%s>", s->rcpts[0].addr);
	buf_printf(b, ";\r\n\t%s\r\n", date);
	s->body_start = b->len;
}

static void content_begin(struct smtp_session *s)
{
	queue_new_id(s->id);
	buf_init(&s->msg, server->cfg->smtp.max_message_size + HEADER_SLACK);
	add_received(s);
	io_set_timeout(s->c, server->cfg->smtp.data_timeout);
}

static void content_end(struct smtp_session *s)
{
	smtp_reset_transaction(s);
	io_set_timeout(s->c, server->cfg->smtp.timeout);
}

static void log_result(struct smtp_session *s, bool ok, const char *result, uint64_t size)
{
	struct logline *l = log_begin(ok ? LL_INFO : LL_WARN, ok ? "smtp.accept" : "smtp.reject");
	io_log_fields(l, s->c);
	log_str(l, "user", s->auth_user);
	log_str(l, "msgid", s->id);
	log_str(l, "from", s->mail_from);
	struct buf r;
	buf_init(&r, 64 * 1024);
	for (size_t i = 0; i < s->nrcpts; i++)
		buf_printf(&r, "%s%s", i ? "," : "", s->rcpts[i].addr);
	log_str(l, "rcpts", r.data ? r.data : "");
	buf_free(&r);
	log_uint(l, "size", size);
	log_bool(l, "tls", io_is_tls(s->c));
	log_str(l, "result", result);
	log_end(l);
}

/* ---------------------------------------------------------------- headers */

/* Is there a header field `name` in the message header (after our Received:)? */
static bool has_header(const struct smtp_session *s, const char *name)
{
	size_t n = strlen(name);
	const char *p = s->msg.data + s->body_start, *end = s->msg.data + s->msg.len;
	while (p < end && !(p[0] == '\r' || p[0] == '\n')) {
		if ((size_t)(end - p) > n && strncasecmp(p, name, n) == 0 && p[n] == ':')
			return true;
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		if (nl == NULL)
			break;
		p = nl + 1;
	}
	return false;
}

static int insert_at(struct buf *b, size_t off, const char *text)
{
	size_t n = strlen(text), tail = b->len - off;
	if (buf_append(b, text, n) == -1)
		return -1;
	memmove(b->data + off + n, b->data + off, tail);
	memcpy(b->data + off, text, n);
	return 0;
}

/* RFC 6409 §8.2/8.3: a submission server may add missing Date: and Message-ID: */
static void submission_headers(struct smtp_session *s)
{
	if (!smtp_is_submission(s) && s->auth_user == NULL)
		return;
	if (!has_header(s, "Message-ID")) {
		char *h = xasprintf("Message-ID: <%s.%llx@%s>\r\n", s->id,
		    (unsigned long long)util_random64(), server->cfg->server.hostname);
		insert_at(&s->msg, s->body_start, h);
		free(h);
	}
	if (!has_header(s, "Date")) {
		char date[64];
		rfc5322_date(date, sizeof(date), time(NULL));
		char *h = xasprintf("Date: %s\r\n", date);
		insert_at(&s->msg, s->body_start, h);
		free(h);
	}
}

/* ---------------------------------------------------------------- delivery */

static void transaction_failed(struct smtp_session *s, int code, const char *enh, const char *text,
    const char *why)
{
	log_result(s, false, why, s->msg.len > s->body_start ? s->msg.len - s->body_start : 0);
	smtp_reply(s, code, enh, "%s", text);
	content_end(s);
}

/* Some recipient is remote: the message has a queue entry */
static bool has_remote_rcpts(const struct smtp_session *s)
{
	for (size_t i = 0; i < s->nrcpts; i++)
		if (s->rcpts[i].account == NULL)
			return true;
	return false;
}

static void accepted(struct smtp_session *s)
{
	/* only now: a 451 after the queue write takes the entry back (unqueue) */
	if (has_remote_rcpts(s) && server->relay != NULL)
		relay_submitted(server->relay, s->id);
	log_result(s, true, "queued", s->msg.len - s->body_start);
	smtp_reply(s, 250, "2.0.0", "Ok: queued as %s", s->id);
	s->messages++;
	content_end(s);
	smtp_set_busy(s, false);
}

struct unqueue_job {
	struct smtp_session *s;      /* NULL once the session detached */
	char *dir, *id;
};

struct dkim_job {
	struct smtp_session *s;      /* NULL once the session detached */
	struct buf msg;              /* the session's message, moved here while the worker signs */
	struct dkim_signer *signers; /* domain/selector strings owned, one key reference each */
	size_t nsigners;
	time_t now;
	char *fields;                /* worker: the DKIM-Signature fields, or NULL */
	size_t len;
	char err[256];               /* worker: why there are none */
};

void smtp_detach_work(struct smtp_session *s)
{
	if (s->ujob != NULL)
		s->ujob->s = NULL;
	s->ujob = NULL;
	if (s->djob != NULL)
		s->djob->s = NULL;
	s->djob = NULL;
}

static void unqueue_work(void *arg)
{
	struct unqueue_job *j = arg;
	queue_remove(j->dir, j->id);
}

static void unqueue_done(void *arg, bool cancelled)
{
	struct unqueue_job *j = arg;
	if (!cancelled && j->s != NULL) {
		struct smtp_session *s = j->s;
		s->ujob = NULL;
		transaction_failed(s, 451, "4.3.0", "Requested action aborted: local error in processing",
		    "local delivery failed");
		smtp_set_busy(s, false);
	}
	free(j->dir);
	free(j->id);
	free(j);
}

/* The local copies failed after the queue entry was written: take the entry
 * back before answering 451, so the client's retry does not send the remote
 * copies twice. */
static void unqueue(struct smtp_session *s)
{
	struct unqueue_job *j = xcalloc(1, sizeof(*j));
	j->s = s;
	j->dir = queue_dir_path(server->cfg->server.data_dir);
	j->id = xstrdup(s->id);
	s->ujob = j;
	aio_submit(store_aio(server->store), unqueue_work, unqueue_done, j);
}

static void local_done(void *arg, int error)
{
	struct smtp_session *s = arg;
	s->req = NULL;
	if (error == 0) {
		accepted(s);
		return;
	}
	log_msg(LL_ERROR, "smtp.deliver_failed", "%s: %s", s->id, strerror(error));
	if (has_remote_rcpts(s)) {
		unqueue(s);              /* replies when the entry is gone */
		return;
	}
	transaction_failed(s, 451, "4.3.0", "Requested action aborted: local error in processing",
	    "local delivery failed");
	smtp_set_busy(s, false);
}

static void deliver_local(struct smtp_session *s)
{
	char **users = xcalloc(s->nrcpts + 1, sizeof(char *));
	char **prefixes = xcalloc(s->nrcpts + 1, sizeof(char *));
	size_t n = 0;
	for (size_t i = 0; i < s->nrcpts; i++) {
		const char *acct = s->rcpts[i].account;
		bool dup = acct == NULL;
		for (size_t k = 0; !dup && k < n; k++)
			dup = strcmp(users[k], acct) == 0;      /* alias + address: one copy */
		if (dup)
			continue;
		users[n] = (char *)acct;
		/* RFC 5321 §4.4: Return-Path is added at final delivery */
		prefixes[n++] = xasprintf("Return-Path: <%s>\r\nDelivered-To: %s\r\n", s->mail_from, acct);
	}
	if (n == 0) {
		accepted(s);
	} else {
		s->req = store_deliver(server->store, users, (const char *const *)prefixes, n, s->msg.data,
		    s->msg.len, local_done, s);
	}
	for (size_t k = 0; k < n; k++)
		free(prefixes[k]);
	free(prefixes);
	free(users);
}

static void queue_done(void *arg, int error)
{
	struct smtp_session *s = arg;
	s->qreq = NULL;
	if (error != 0) {
		log_msg(LL_ERROR, "smtp.queue_failed", "%s: %s", s->id, strerror(error));
		transaction_failed(s, 451, "4.3.0", "Requested action aborted: local error in processing",
		    "queue write failed");
		smtp_set_busy(s, false);
		return;
	}
	deliver_local(s);
}

static void env_fill(struct smtp_session *s, struct queue_env *env)
{
	memset(env, 0, sizeof(*env));
	memcpy(env->id, s->id, sizeof(env->id));
	env->sender = s->mail_from;
	env->ret = s->mp.ret == SMTP_RET_FULL ? QUEUE_RET_FULL : s->mp.ret == SMTP_RET_HDRS
	    ? QUEUE_RET_HDRS : QUEUE_RET_UNSET;
	env->envid = s->mp.has_envid ? s->mp.envid : "";
	env->smtputf8 = s->mp.smtputf8;
	env->body = s->mp.body == SMTP_BODY_8BITMIME ? QUEUE_BODY_8BITMIME
	    : s->mp.body == SMTP_BODY_BINARYMIME ? QUEUE_BODY_BINARYMIME : QUEUE_BODY_7BIT;
	env->auth_user = s->auth_user ? s->auth_user : "";
	env->client_ip = (char *)io_remote(s->c);
	env->helo = s->helo ? s->helo : "";
	env->created = env->next_attempt = time(NULL);
	env->rcpts = xcalloc(s->nrcpts, sizeof(*env->rcpts));
	for (size_t i = 0; i < s->nrcpts; i++) {
		if (s->rcpts[i].account != NULL)
			continue;
		struct queue_rcpt *q = &env->rcpts[env->nrcpts++];
		q->addr = s->rcpts[i].addr;
		q->orcpt = s->rcpts[i].orcpt ? s->rcpts[i].orcpt : "";
		q->notify = s->rcpts[i].notify;      /* SMTP_NOTIFY_* == QUEUE_NOTIFY_* bits */
		q->updated = env->created;
	}
}

/* Remote recipients first (queue entry), then local copies; 250 only after both. */
static void store_message(struct smtp_session *s)
{
	struct queue_env env;
	env_fill(s, &env);
	if (env.nrcpts == 0) {
		free(env.rcpts);
		deliver_local(s);
		return;
	}
	char *dir = queue_dir_path(server->cfg->server.data_dir);
	s->qreq = queue_submit(store_aio(server->store), dir, &env, s->msg.data, s->msg.len, queue_done, s);
	free(dir);
	free(env.rcpts);       /* the strings are borrowed; queue_submit copied them */
}

/* ---------------------------------------------------------------- DKIM */

/* Worker: reads only the job's own copies. */
static void dkim_work(void *arg)
{
	struct dkim_job *j = arg;
	j->fields = dkim_sign(j->signers, j->nsigners, j->now, j->msg.data, j->msg.len, &j->len, j->err,
	    sizeof(j->err));
}

static void dkim_job_free(struct dkim_job *j)
{
	for (size_t i = 0; i < j->nsigners; i++) {
		free((char *)j->signers[i].domain);
		free((char *)j->signers[i].selector);
		struct dkim_key *k = (struct dkim_key *)j->signers[i].key;
		dkim_key_unref(&k);
	}
	free(j->signers);
	free(j->fields);
	buf_free(&j->msg);
	free(j);
}

static void log_dkim(const struct smtp_session *s, const struct dkim_job *j)
{
	struct logline *l = log_begin(j->fields != NULL ? LL_DEBUG : LL_WARN,
	    j->fields != NULL ? "smtp.dkim_signed" : "smtp.dkim_failed");
	log_str(l, "msgid", s->id);
	log_str(l, "domain", j->signers[0].domain);
	log_uint(l, "signatures", j->fields != NULL ? j->nsigners : 0);
	if (j->fields == NULL)
		log_str(l, "error", j->err);
	log_end(l);
}

/* Reactor: the message comes back to the session with the signatures on top
 * (RFC 6376 §5.6: prepended, above our Received:). A message that could not
 * be signed goes out unsigned: DKIM is no reason to refuse mail. */
static void dkim_done(void *arg, bool cancelled)
{
	struct dkim_job *j = arg;
	struct smtp_session *s = j->s;
	if (cancelled || s == NULL) {
		dkim_job_free(j);
		return;
	}
	s->djob = NULL;
	buf_free(&s->msg);
	s->msg = j->msg;
	buf_init(&j->msg, 0);
	if (j->fields != NULL && insert_at(&s->msg, 0, j->fields) == 0) {
		s->body_start += j->len;
	} else if (j->fields != NULL) {  /* past the size limit: no room left for them */
		free(j->fields);
		j->fields = NULL;
		snprintf(j->err, sizeof(j->err), "no room for the signature fields");
	}
	log_dkim(s, j);
	dkim_job_free(j);
	store_message(s);
}

/* The keys that sign this message: mail an authenticated user sends to
 * another domain, From: a domain with keys (the envelope sender's domain
 * when From: is unusable). Mail relayed for others or delivered only here is
 * not signed. A job with every matching key, or NULL. */
static struct dkim_job *dkim_job_new(struct smtp_session *s)
{
	const struct config *cfg = server->cfg;
	char domain[256];
	if (cfg->ndkim == 0 || s->auth_user == NULL || !has_remote_rcpts(s))
		return NULL;
	if (!dkim_from_domain(s->msg.data + s->body_start, s->msg.len - s->body_start, domain,
	    sizeof(domain))) {
		const char *at = strrchr(s->mail_from, '@');
		if (at == NULL || strlen(at + 1) >= sizeof(domain))
			return NULL;
		for (size_t i = 0; at[i + 1] != '\0'; i++)
			domain[i] = (char)tolower((unsigned char)at[i + 1]);
		domain[strlen(at + 1)] = '\0';
	}
	struct dkim_job *j = NULL;
	for (size_t i = 0; i < cfg->ndkim; i++) {
		const struct cfg_dkim *d = &cfg->dkim[i];
		if (strcmp(d->domain, domain) != 0)
			continue;
		if (j == NULL) {
			j = xcalloc(1, sizeof(*j));
			j->signers = xcalloc(cfg->ndkim, sizeof(*j->signers));
		}
		struct dkim_signer *sg = &j->signers[j->nsigners++];
		sg->domain = xstrdup(d->domain);
		sg->selector = xstrdup(d->selector);
		sg->key = dkim_key_ref(d->pkey);
	}
	return j;
}

/* Signing hashes the whole message and makes an RSA signature: a worker's
 * job, never the reactor's. The job takes the message buffer (the session
 * may go away meanwhile) and gives it back in dkim_done. */
static bool dkim_start(struct smtp_session *s)
{
	struct dkim_job *j = dkim_job_new(s);
	if (j == NULL)
		return false;
	j->s = s;
	j->now = time(NULL);
	j->msg = s->msg;
	buf_init(&s->msg, j->msg.max);
	s->djob = j;
	aio_submit(store_aio(server->store), dkim_work, dkim_done, j);
	return true;
}

static void finish_message(struct smtp_session *s)
{
	submission_headers(s);
	smtp_set_busy(s, true);
	if (!dkim_start(s))
		store_message(s);
}

/* ---------------------------------------------------------------- DATA */

void smtp_data_start(struct smtp_session *s)
{
	content_begin(s);
	smtp_data_init(&s->dp, &s->msg, server->cfg->smtp.max_message_size);
	s->state = SS_DATA;
	smtp_reply(s, 354, NULL, "End data with <CR><LF>.<CR><LF>");
}

static void data_done(struct smtp_session *s)
{
	switch (smtp_data_result(&s->dp)) {
	case SMTP_E_BARE_EOL:
		transaction_failed(s, 554, "5.6.0", "Message contains bare CR or LF (not allowed in SMTP DATA)",
		    "bare CR/LF (smuggling)");
		return;
	case SMTP_E_TOO_BIG:
		transaction_failed(s, 552, "5.3.4", "Message size exceeds fixed maximum message size",
		    "too big");
		return;
	case SMTP_E_LINE_TOO_LONG:
		transaction_failed(s, 500, "5.5.2", "Message has a line longer than 1000 octets (RFC 5321 4.5.3.1.6)",
		    "line too long");
		return;
	default:
		break;
	}
	finish_message(s);
}

bool smtp_data_input(struct smtp_session *s)
{
	const char *p;
	size_t n = io_peek(s->c, &p), used = 0;
	if (n == 0)
		return false;
	int done = smtp_data_feed(&s->dp, p, n, &used);
	io_consume(s->c, used);
	if (done)
		data_done(s);
	return true;
}

/* ---------------------------------------------------------------- BDAT */

static void chunk_done(struct smtp_session *s)
{
	if (s->bdat_discard) {
		s->bdat_discard = false;
		if (s->bdat_too_big)
			transaction_failed(s, 552, "5.3.4", "Message size exceeds fixed maximum message size",
			    "too big");
		else
			smtp_reply(s, s->bdat_code, "5.5.1", "%s", s->bdat_reply);
		return;
	}
	if (!s->bdat_last) {
		smtp_reply(s, 250, "2.0.0", "%llu octets received", (unsigned long long)s->bdat_size);
		return;
	}
	finish_message(s);
}

void smtp_bdat_start(struct smtp_session *s, uint64_t size, bool last)
{
	s->bdat_code = 0;
	if (s->state & (SS_CONNECTED | SS_READY)) {
		s->bdat_code = 503;
		s->bdat_reply = "Need MAIL and RCPT commands first";
	} else if (s->state & SS_MAIL) {
		s->bdat_code = 554;
		s->bdat_reply = "No valid recipients";
	}
	s->bdat_size = s->bdat_left = size;
	s->bdat_last = last;
	if (s->bdat_code != 0) {
		/* RFC 3030 §2: the chunk follows the command whatever we answer: skip it */
		s->bdat_discard = true;
	} else {
		if (!(s->state & SS_BDAT))
			content_begin(s);
		s->state = SS_BDAT;
		if (s->msg.len - s->body_start + size > server->cfg->smtp.max_message_size) {
			s->bdat_discard = true;
			s->bdat_too_big = true;
		}
	}
	if (size == 0)
		chunk_done(s);
}

bool smtp_bdat_input(struct smtp_session *s)
{
	const char *p;
	size_t n = io_peek(s->c, &p);
	if (n == 0)
		return false;
	size_t take = n < s->bdat_left ? n : (size_t)s->bdat_left;
	if (!s->bdat_discard)
		buf_append(&s->msg, p, take);
	io_consume(s->c, take);
	s->bdat_left -= take;
	if (s->bdat_left == 0)
		chunk_done(s);
	return true;
}
