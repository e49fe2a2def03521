/* protocols.h: the internal header of protocols/. Sessions see the server only
 * through server/server.h's io_*, session_* and auth_* interfaces. */
#ifndef POSTLING_PROTOCOLS_H
#define POSTLING_PROTOCOLS_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/buf.h"
#include "protocols/smtp_parse.h"
#include "server/server.h"

struct proto_ops;
struct store_req;
struct queue_req;
struct unqueue_job;

/* ---------------------------------------------------------------- pop3_session.c */
extern const struct proto_ops pop3_ops;

/* ---------------------------------------------------------------- imap_session.c */
/* (the IMAP files share protocols/imap.h) */
extern const struct proto_ops imap_ops;

/* ---------------------------------------------------------------- smtp_session.c */

/* SMTP session states (RFC 5321 §4.1.4 command order), as a mask for the
 * command table. */
enum smtp_state {
	SS_GREETING = 1 << 0,        /* before our 220 (early-talker window) */
	SS_CONNECTED = 1 << 1,       /* greeted, no EHLO/HELO yet (also after STARTTLS) */
	SS_READY = 1 << 2,           /* EHLO/HELO done, no transaction */
	SS_MAIL = 1 << 3,            /* MAIL accepted, no recipient yet */
	SS_RCPT = 1 << 4,            /* at least one recipient */
	SS_DATA = 1 << 5,            /* reading DATA */
	SS_BDAT = 1 << 6,            /* reading a BDAT chunk (or between chunks) */
};

struct smtp_rcpt {
	char *addr;                  /* canonical local@domain as given (route dropped) */
	char *account;               /* local account it resolves to, NULL when remote */
	unsigned notify;             /* SMTP_NOTIFY_* (RFC 3461) */
	char *orcpt;                 /* "type;addr" or NULL */
};

struct smtp_session {
	struct conn *c;
	enum smtp_state state;
	bool busy;                   /* async work: input paused */
	bool closed;                 /* io_close called; freed on IO_DISCONNECTED */
	bool shutdown_pending;
	bool esmtp;                  /* EHLO (not HELO) */
	char *helo;
	char *auth_user;             /* authenticated account, NULL when none */
	const char *auth_mech;
	struct auth_sasl *sasl;
	bool sasl_wait, sasl_final;
	char *sasl_user;             /* user pending the client's ack of final SASL data */
	struct session_auth sa;     /* connection facts for SASL */
	unsigned errors;
	unsigned messages;
	/* the transaction */
	bool has_mail;
	char *mail_from;             /* "" for the null reverse-path */
	struct smtp_mail_params mp;
	struct smtp_rcpt *rcpts;
	size_t nrcpts;
	/* message content (DATA or BDAT) */
	struct buf msg;              /* Received: + message, CRLF lines */
	size_t body_start;           /* offset after our Received: header */
	struct smtp_data_parser dp;
	uint64_t bdat_size;          /* size of the current chunk */
	uint64_t bdat_left;          /* octets of the current chunk still to read */
	bool bdat_last;
	bool bdat_discard;           /* chunk refused: read and drop it */
	bool bdat_too_big;
	int bdat_code;               /* error to send once a discarded chunk is read */
	const char *bdat_reply;
	char id[17];                 /* queue/message id */
	struct store_req *req;
	struct queue_req *qreq;
	struct unqueue_job *ujob;    /* taking a queue entry back before a 451 */
	struct dkim_job *djob;       /* signing the message on a worker (it holds msg meanwhile) */
};

extern const struct proto_ops smtp_ops;

void smtp_reply(struct smtp_session *s, int code, const char *enh, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
void smtp_set_busy(struct smtp_session *s, bool busy);
void smtp_end(struct smtp_session *s, const char *reason);
void smtp_reset_transaction(struct smtp_session *s);
bool smtp_is_submission(const struct smtp_session *s);

/* ---------------------------------------------------------------- smtp_message.c */

/* DATA and BDAT: reading the content, the trace and submission headers,
 * durable delivery and queueing, the final reply. */
void smtp_data_start(struct smtp_session *s);
/* consume buffered content; false when no input was there to consume */
bool smtp_data_input(struct smtp_session *s);
void smtp_bdat_start(struct smtp_session *s, uint64_t size, bool last);
bool smtp_bdat_input(struct smtp_session *s);
/* the session is going away: a pending queue-entry removal still completes,
 * but no longer answers it */
void smtp_detach_work(struct smtp_session *s);

#endif
