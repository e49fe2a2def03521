/* relay.h: the internal header of relay/ (design §6): the durable queue of
 * outbound mail, its scheduler and the SMTP client that empties it.
 *
 * Threading: functions marked "blocking" run on an aio worker or in the CLI,
 * never on the reactor. Async calls and their callbacks run on the reactor.
 *
 * Layering: relay/ includes store/store.h (the aio pool; maildir_create_file,
 * maildir_replace_file and maildir_fsync_dir for durable files) and common/
 * only; never server/ or protocols/ headers. */
#ifndef POSTLING_RELAY_H
#define POSTLING_RELAY_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

struct aio;

/* ---------------------------------------------------------------- queue.c */

/* Layout (design §6): <data_dir>/queue/<id>.msg holds the message exactly as
 * handed in (CRLF lines, Received: already prepended); <id>.env the envelope.
 * The .env is written last, so an entry exists exactly when its .env does: a
 * .msg without .env, and any *.tmp, is what a crash left (queue_clean).
 *
 * Id: 16 characters of lowercase base32hex (RFC 4648 §7, "0-9a-v", whose
 * ASCII order is its numeric order): 8 for the creation second, 8 random
 * (40 bits). Names therefore sort by age in `ls` and in queue_list.
 *
 * Envelope file: text, LF-terminated lines, fields separated by one space:
 *   POSTLING-QUEUE 1
 *   id <id>
 *   sender <str>              reverse-path, "" for <> (RFC 5321 §4.1.1.2)
 *   ret -|FULL|HDRS           RET= (RFC 3461 §4.3)
 *   envid <str>               ENVID=, xtext-decoded (RFC 3461 §4.4)
 *   smtputf8 0|1              SMTPUTF8 (RFC 6531 §3.4)
 *   body 7BIT|8BITMIME|BINARYMIME   BODY= (RFC 6152, RFC 3030 §3)
 *   auth-user <str>           submitting account, "" if none
 *   client-ip <str>
 *   helo <str>                EHLO/HELO argument (RFC 5321 §4.1.1.1)
 *   created|next-attempt|last-attempt <secs since the epoch, 0..9999-12-31>
 *   attempts <0..4294967295>
 *   warned 0|1                delay DSN sent (RFC 3464)
 *   rcpt <addr> <orcpt> <notify> <state> <attempts> <updated> <remote-mta> <last-reply>
 *   end <number of rcpt lines>
 * Every header field exactly once, in any order; one or more rcpt lines;
 * "end" last. notify is "-", "NEVER" or a comma list of SUCCESS,FAILURE,DELAY
 * in that order (RFC 3461 §4.1); state is pending|delivered|deferred|failed.
 * A <str> is "-" for the empty string; otherwise its bytes with '%', bytes
 * <= 0x20 (space, CR, LF, controls), 0x7f and >= 0x80 written as %XX
 * (uppercase hex), and the one-byte string "-" written "%2D" (record_escape
 * with RECORD_ESC_DASH, common/record.h). So no byte an attacker chose can
 * end a line or a field. Strings never hold NUL.
 * The reader is strict: only the canonical form above is accepted, numbers
 * without sign or leading zeros and range-checked; an unknown field is an
 * error unless its name starts with "x-" (ignored: forward compatibility). */

#define QUEUE_ID_LEN 16
#define QUEUE_ENV_MAX_BYTES (16u * 1024 * 1024)
#define QUEUE_RCPT_MAX 100000

/* RFC 3461 §4.1 NOTIFY; 0 = no NOTIFY parameter given. NEVER excludes the others. */
#define QUEUE_NOTIFY_NEVER   0x1u
#define QUEUE_NOTIFY_SUCCESS 0x2u
#define QUEUE_NOTIFY_FAILURE 0x4u
#define QUEUE_NOTIFY_DELAY   0x8u

enum queue_ret { QUEUE_RET_UNSET = 0, QUEUE_RET_FULL, QUEUE_RET_HDRS };            /* RFC 3461 §4.3 */
enum queue_body { QUEUE_BODY_7BIT = 0, QUEUE_BODY_8BITMIME, QUEUE_BODY_BINARYMIME };
enum queue_rcpt_state { Q_PENDING = 0, Q_DELIVERED, Q_DEFERRED, Q_FAILED };

/* Strings are malloc'ed and owned by the struct; after queue_read_env none is
 * NULL. Writers treat a NULL string as "". */
struct queue_rcpt {
	char *addr;                  /* forward-path mailbox, never "" */
	char *orcpt;                 /* "" or "<addr-type>;<decoded addr>" (RFC 3461 §4.2) */
	unsigned notify;             /* QUEUE_NOTIFY_* bits */
	enum queue_rcpt_state state;
	uint32_t attempts;
	char *last_reply;            /* remote reply text (may be multi-line) or "" */
	char *remote_mta;            /* "" or host that gave last_reply (RFC 3464 §2.3.5) */
	time_t updated;
};

struct queue_env {
	char id[QUEUE_ID_LEN + 1];
	char *sender;                /* "" for the null reverse-path */
	enum queue_ret ret;
	char *envid;                 /* "" when not given */
	bool smtputf8;
	enum queue_body body;
	char *auth_user;             /* "" if none */
	char *client_ip;
	char *helo;
	time_t created;
	uint32_t attempts;
	time_t next_attempt;
	time_t last_attempt;
	bool warned;                 /* delay DSN sent */
	struct queue_rcpt *rcpts;    /* owned, nrcpts entries, 1..QUEUE_RCPT_MAX */
	size_t nrcpts;
};

void queue_new_id(char out[QUEUE_ID_LEN + 1]);
/* 16 chars of [0-9a-v]: the only names queue functions build paths from. */
bool queue_id_valid(const char *id);

/* Pure. The envelope as file text (malloc'ed, NUL-terminated, length in
 * *len_r); NULL with errno EINVAL when env breaks a rule above (bad id, no
 * recipient, empty addr, value out of range) or EMSGSIZE past QUEUE_ENV_MAX_BYTES. */
char *queue_env_format(const struct queue_env *env, size_t *len_r);
/* Pure. 0, or -1 with errno EBADMSG and *env_r zeroed; *line_r (may be NULL)
 * gets the 1-based line at fault, or 0 when the file as a whole is (missing
 * field, no "end" line). */
int queue_env_parse(const char *data, size_t len, struct queue_env *env_r, size_t *line_r);
void queue_env_copy(struct queue_env *dst, const struct queue_env *src);   /* deep; NULL -> "" */
void queue_env_free(struct queue_env *env);   /* frees members, zeroes *env */

/* Blocking. New entry env->id: mkdir queue_dir (0700) if needed; <id>.msg.tmp,
 * fsync, link to <id>.msg, fsync dir; the same for <id>.env; fsync dir. The
 * final names are made with link(2), so an existing entry is never replaced
 * (EEXIST). 0, or -1 with errno (EINVAL, EEXIST, ENOSPC, EFBIG, EIO...) and
 * nothing left of this write. */
int queue_write(const char *queue_dir, const struct queue_env *env, const char *msg, size_t len);
/* Blocking. Atomic replacement of <id>.env: tmp, fsync, rename, fsync dir.
 * ENOENT when the entry does not exist (never re-creates a removed one). On
 * -1 before the rename the old file is intact; -1 from the final directory
 * fsync means the new file is in place but may not survive a crash. */
int queue_update_env(const char *queue_dir, const struct queue_env *env);
/* Blocking. errno EINVAL (bad id), ENOENT, EBADMSG (corrupt or names another id). */
int queue_read_env(const char *queue_dir, const char *id, struct queue_env *env_r);
/* Blocking. Unlinks <id>.env (the entry is gone from then on), then <id>.msg,
 * then fsyncs the dir. ENOENT when neither file existed. */
int queue_remove(const char *queue_dir, const char *id);
/* Blocking. Ids with a <id>.env regular file, sorted (= by age). *ids_r is a
 * NULL-terminated array (xfree_strv); a missing queue_dir is an empty queue.
 * The .env content is only checked by queue_read_env. */
int queue_list(const char *queue_dir, char ***ids_r, size_t *n_r);
/* Blocking. Removes <id>.msg without <id>.env and <id>.{msg,env}.tmp; leaves
 * other names alone. Only while no queue_write runs on queue_dir (start-up,
 * before listeners accept; a CLI with the server stopped): it cannot tell a
 * crash leftover from a write in progress. */
int queue_clean(const char *queue_dir);
/* malloc'ed "<queue_dir>/<id>.msg", or NULL for an invalid id */
char *queue_msg_path(const char *queue_dir, const char *id);
/* <data_dir>/queue (malloc'ed): where the server, the relay and the CLI find it */
char *queue_dir_path(const char *data_dir);

/* Async queue_write for the SMTP session (reactor thread). env and msg are
 * copied: the caller may free them when this returns. cb runs later on the
 * reactor, never from inside queue_submit, exactly once unless queue_cancel
 * came first: error 0 when the entry is durable, else an errno value
 * (ECANCELED when the pool was freed before the write started).
 *
 * queue_cancel(&r) (also allowed inside cb) guarantees cb is not called after
 * it returns, and NULLs r. The write itself is not undone: if it had not
 * started it never runs; if it had, it completes durably or rolls back on its
 * own. A cancelled write that succeeded stays in the queue and will be
 * delivered, which is correct: only the reply to the client is lost, and
 * SMTP allows duplicates over lost mail (RFC 5321 §6.1). The handle is valid
 * until cb starts or the request is cancelled; cancel every request before
 * aio_free. */
struct queue_req;
typedef void (*queue_done_cb)(void *arg, int error);
struct queue_req *queue_submit(struct aio *aio, const char *queue_dir, const struct queue_env *env,
    const char *msg, size_t len, queue_done_cb cb, void *arg);
void queue_cancel(struct queue_req **r_r);

/* Tests only: hook(file, step) runs before each step of the blocking writers
 * ("msg"/"env"/"dir", "write"/"fsync"/"link"/"rename"/"fsync") and returns 0
 * to go on or an errno value to fail the step with. NULL (default) = none.
 * Called on worker threads; set it while no write runs. */
typedef int (*queue_fault_fn)(const char *file, const char *step);
void queue_set_fault_hook(queue_fault_fn hook);

/* ------------------------------------------------------------------ dns.c */

/* Asynchronous DNS for delivery (design §6): libunbound on the server's
 * event_base (ub_ctx_create_event + ub_resolve_event; Debian's libunbound is
 * linked against the same libevent). Forwarders come from relay.dns.servers,
 * else /etc/resolv.conf. Names are ASCII (IDNA A-labels: the caller converts
 * U-labels); results use lowercase names without the final dot.
 *
 * A callback always runs later on the event loop, never from inside
 * dns_resolve_*, exactly once unless dns_cancel came first. The result list
 * handed to it is NULL unless status is DNS_OK, and is then owned by the
 * callee (dns_*_list_free). A request handle is valid until its callback
 * starts; dns_cancel(&r) inside that callback is allowed and does nothing
 * but NULL r. */

struct event_base;
struct sockaddr_storage;
struct dns;
struct dns_req;

enum dns_status {
	DNS_OK = 0,
	DNS_NOADDR,       /* addrs: the name exists, no A/AAAA (RFC 5321 §5.1: next MX) */
	DNS_NULL_MX,      /* mx: RFC 7505 null MX: the domain takes no mail (5.1.10) */
	DNS_NXDOMAIN,     /* RCODE 3 (RFC 1035 §4.1.1, RFC 8020): permanent */
	DNS_BADNAME,      /* not a hostname that can be looked up: permanent */
	DNS_TEMPFAIL,     /* SERVFAIL, REFUSED, timeout, malformed answer,
	                     unusable MX names, resolver error: defer */
	DNS_BOGUS,        /* DNSSEC validation failed (RFC 4035 §5.5, only with a trust
	                     anchor): never used; callers treat it as DNS_TEMPFAIL, and
	                     for DANE the host as unusable (RFC 7672 §2.2) */
};

#define DNS_MX_MAX 64             /* MX records used; more are ignored */
#define DNS_ADDR_MAX 32           /* addresses used per family */
#define DNS_NAME_MAX 253          /* text form, no final dot (RFC 1035 §2.3.4) */
#define DNS_TIMEOUT_MS_DEFAULT 30000

struct dns_mx {
	char *name;                   /* owned */
	uint16_t pref;
};

struct dns_mx_list {
	struct dns_mx *mx;            /* owned, n >= 1 entries: ascending preference,
	                                 equal preferences in random order (RFC 5321 §5.1),
	                                 each name once */
	size_t n;
	bool implicit;                /* no MX RRset: mx[0] is the domain, pref 0 (RFC 5321 §5.1) */
	bool secure;                  /* DNSSEC-validated answer (RFC 7672 §2.2.1) */
};

struct dns_addr_list {
	struct sockaddr_storage *addrs;   /* owned, n >= 1: IPv6 first, then IPv4; port 0 */
	size_t n;
	char *canon;                  /* owned: owner of the addresses after CNAMEs
	                                 (RFC 1034 §3.6.2), == the name asked when none */
	bool secure;                  /* both answers DNSSEC-validated (RFC 7672 §2.2) */
};

/* TLSA (RFC 6698 §2.1): certificate usage, selector, matching type, data. */
#define DNS_TLSA_MAX 32               /* records used; more are ignored */
#define DNS_TLSA_USAGE_DANE_TA 2      /* RFC 7218 acronyms */
#define DNS_TLSA_USAGE_DANE_EE 3

struct dns_tlsa {
	uint8_t usage, selector, mtype;
	uint8_t *data;                /* owned, len octets (len >= 1) */
	size_t len;
};

struct dns_tlsa_list {
	struct dns_tlsa *rr;          /* owned, n >= 1 entries in answer order, usable or not */
	size_t n;
	bool secure;                  /* DNSSEC-validated: only then is DANE applicable
	                                 (RFC 7672 §2.2) */
};

typedef void (*dns_mx_cb)(void *arg, enum dns_status status, struct dns_mx_list *list);
typedef void (*dns_addr_cb)(void *arg, enum dns_status status, struct dns_addr_list *list);
typedef void (*dns_tlsa_cb)(void *arg, enum dns_status status, struct dns_tlsa_list *list);

/* servers: nservers entries "IP" or "IP@PORT" (IPv4 or IPv6); port (1..65535)
 * applies to those without "@", 0 meaning 53. nservers 0: the nameservers of
 * /etc/resolv.conf. /etc/hosts is not read (mail routing is DNS only). No
 * DNSSEC validation unless dns_set_trust_anchor_file. NULL with a message in
 * err on a bad server string or a libunbound failure. */
struct dns *dns_new(struct event_base *base, const char *const *servers, size_t nservers,
    int port, char *err, size_t errlen);
/* Cancels every pending request (no callback runs; their handles are dead),
 * then frees. */
void dns_free(struct dns **d_r);
/* Zone file of DS/DNSKEY records (e.g. /usr/share/dns/root.key) enabling
 * validation; before the first dns_resolve_*. 0, or -1 with a message. */
int dns_set_trust_anchor_file(struct dns *d, const char *path, char *err, size_t errlen);
/* Per-request bound (default DNS_TIMEOUT_MS_DEFAULT; 0 restores it); past it
 * the request ends DNS_TEMPFAIL. Applies to requests started afterwards. */
void dns_set_timeout(struct dns *d, unsigned ms);

/* MX of domain: DNS_OK (list), DNS_NULL_MX, DNS_NXDOMAIN, DNS_BADNAME,
 * DNS_TEMPFAIL. No MX RRset (NODATA) gives the implicit MX. Exchanges equal
 * to "." are dropped (RFC 7505 §3): when nothing else is left, DNS_NULL_MX.
 * Never NULL. The caller still drops MX hosts that are itself (RFC 5321 §5.1). */
struct dns_req *dns_resolve_mx(struct dns *d, const char *domain, dns_mx_cb cb, void *arg);
/* AAAA and A of host (two queries; CNAMEs followed): DNS_OK when either gave
 * an address (the other may have failed), else DNS_TEMPFAIL if either failed
 * temporarily, DNS_NXDOMAIN if both said so, else DNS_NOADDR. Never NULL. */
struct dns_req *dns_resolve_addrs(struct dns *d, const char *host, dns_addr_cb cb, void *arg);
/* TLSA of _<port>._tcp.<host> (RFC 6698 §3, RFC 7672 §2.2.3): DNS_OK
 * (list, secure or not), DNS_NOADDR (the name exists without TLSA: NODATA),
 * DNS_NXDOMAIN, DNS_BADNAME, DNS_BOGUS, DNS_TEMPFAIL. Both "no records"
 * answers mean no DANE. port 1..65535. Never NULL. */
struct dns_req *dns_resolve_tlsa(struct dns *d, const char *host, int port, dns_tlsa_cb cb,
    void *arg);
/* No callback after this; NULLs *r_r. NULL *r_r is fine. */
void dns_cancel(struct dns_req **r_r);
/* A trust anchor was set: secure flags and DNS_BOGUS can happen. */
bool dns_validating(const struct dns *d);

const char *dns_strerror(enum dns_status status);
void dns_mx_list_free(struct dns_mx_list **l_r);
void dns_addr_list_free(struct dns_addr_list **l_r);
void dns_tlsa_list_free(struct dns_tlsa_list **l_r);
/* RFC 7672 §3.1.3 and §3.1: usable for SMTP are DANE-TA(2) and DANE-EE(3)
 * with selector Cert(0) or SPKI(1) and matching type Full(0) (some data),
 * SHA2-256(1) (32 octets) or SHA2-512(2) (64 octets). PKIX-TA(0) and
 * PKIX-EE(1) are not: an MTA has no agreed set of CAs. */
bool dns_tlsa_usable(const struct dns_tlsa *t);

/* Pure, for tests and fuzzing: one answer message (RFC 1035 §4.1) to the
 * question <name, qtype IN> interpreted as the resolve calls above do.
 * dns_mx_parse: status as dns_resolve_mx, *list_r set only for DNS_OK.
 * dns_addr_parse: qtype 1 (A) or 28 (AAAA); DNS_OK appends up to
 * DNS_ADDR_MAX addresses to *list_r (created when NULL, canon set when
 * unset), other statuses leave it alone; NODATA is DNS_NOADDR.
 * A malformed message is DNS_TEMPFAIL. */
enum dns_status dns_mx_parse(const void *pkt, size_t len, const char *domain,
    struct dns_mx_list **list_r);
enum dns_status dns_addr_parse(const void *pkt, size_t len, const char *host, int qtype,
    struct dns_addr_list **list_r);
/* dns_tlsa_parse: name is the owner asked ("_25._tcp.mx.example"); DNS_OK
 * with *list_r (secure false) when the answer holds TLSA records, NODATA is
 * DNS_NOADDR; a TLSA RDATA under 4 octets is malformed (DNS_TEMPFAIL). */
enum dns_status dns_tlsa_parse(const void *pkt, size_t len, const char *name,
    struct dns_tlsa_list **list_r);

/* --------------------------------------------------------------- bounce.c */

/* Delivery status notifications: RFC 3464 delivery-status inside an RFC 6522
 * (formerly RFC 3462) multipart/report. Pure: the caller reads the original
 * from the queue and queues the result like any mail, with the null
 * reverse-path (RFC 5321 §4.5.5) so a DSN is never answered by another, one
 * recipient (env->sender), notify NEVER, body from bounce_body_type() and
 * smtputf8 from bounce_smtputf8().
 *
 * The result: CRLF lines, each at most 998 octets (RFC 5322 §2.1.1); From,
 * To, Subject, Date (UTC), Message-ID, MIME-Version, Auto-Submitted:
 * auto-replied (RFC 3834 §5), Content-Type: multipart/report;
 * report-type=delivery-status; boundary="=_postling_<hex>" (redrawn until it
 * occurs in no part). Parts: (1) text/plain, the recipients and the remote
 * replies; (2) message/delivery-status: Original-Envelope-Id, Reporting-MTA,
 * Arrival-Date, then per recipient Original-Recipient (ORCPT), Final-Recipient,
 * Action, Status, Remote-MTA, Diagnostic-Code, Last-Attempt-Date and, for a
 * delay, Will-Retry-Until; (3) when the original is given, the original
 * (message/rfc822) for a failure DSN with RET=FULL, else its header section
 * (text/rfc822-headers) -- RET=HDRS, no RET (RFC 3461 §4.3 leaves it to us),
 * delay and success DSNs, an original over max_original octets or one not in
 * CRLF lines of at most 998 octets (BDAT/BINARYMIME); nothing when even the
 * header section does not qualify.
 *
 * Status (RFC 3463) is the enhanced code of the remote reply ("550 5.1.1 ..."
 * -> 5.1.1) when its class fits the kind (failure: 5 or 4, delay: 4,
 * success: 2); else from the basic code's class (a 4xx failure, i.e. expiry,
 * is 4.4.7, RFC 3463 §3.5); else 5.0.0 / 4.0.0 / 2.0.0. Diagnostic-Code is
 * "smtp; <reply>" when the reply starts with a reply code, else
 * "X-Postling; <text>" (a locally made reason); a multi-line reply is joined
 * into one line (the code and a repeated enhanced code dropped from the
 * continuation lines), capped at 2,000 octets, then folded.
 *
 * UTF-8 (RFC 6533): when env->smtputf8 and the sender or a reported
 * recipient (address or ORCPT) is not ASCII, part 2 is
 * message/global-delivery-status and part 1 text/plain; charset=utf-8, both
 * 8bit, and such addresses are "utf-8; <utf-8-addr-unitext>". Otherwise the
 * parts are 7-bit: a non-ASCII address becomes "utf-8; <utf-8-addr-xtext>"
 * (\x{HEX}), and other non-ASCII octets '?'. An original whose header
 * section holds 8-bit octets goes out as message/global (-headers); any
 * 8-bit part is labelled Content-Transfer-Encoding: 8bit. */

enum bounce_kind {
	BOUNCE_FAILURE = 0,          /* Action: failed */
	BOUNCE_DELAY,                /* Action: delayed (RFC 3464 §2.3.3) */
	BOUNCE_SUCCESS,              /* Action: delivered, or relayed */
};

#define BOUNCE_MAX_ORIGINAL_DEFAULT (1024u * 1024)

struct bounce_params {
	const char *hostname;        /* reporting MTA: "Reporting-MTA: dns; <it>"; required */
	const char *from;            /* NULL: "MAILER-DAEMON@<hostname>" */
	const char *msgid_domain;    /* right side of Message-ID; NULL: hostname */
	const struct queue_env *env; /* the original envelope; borrowed */
	enum bounce_kind kind;
	/* Indices into env->rcpts to report, in this order (borrowed); NULL:
	 * every recipient for which bounce_reportable(env, r, kind). */
	const size_t *rcpts;
	size_t nrcpts;
	bool relayed;                /* BOUNCE_SUCCESS: "relayed" (the next hop takes no
	                              * DSN responsibility, RFC 3461 §5.2.2) not "delivered" */
	time_t arrival;              /* Arrival-Date; 0: env->created (0 too: omitted) */
	time_t now;                  /* Date:; 0: time(NULL) */
	time_t retry_until;          /* BOUNCE_DELAY: Will-Retry-Until; 0: omitted */
	const char *msg;             /* original message, CRLF lines; borrowed; NULL: none */
	size_t msg_len;
	size_t max_original;         /* cap on the attached original; 0: the default */
	/* Randomness for the boundary and Message-ID; NULL: util_random64.
	 * Tests set a fixed one for byte-exact output. */
	uint64_t (*rand_fn)(void *arg);
	void *rand_arg;
};

/* Pure. The DSN (malloc'ed, NUL-terminated, length in *len_r), or NULL with
 * errno EINVAL (no env, null or malformed sender, bad hostname/from/msgid
 * domain, bad kind, an index out of range, rcpts given with nrcpts 0) or
 * ENOENT (rcpts NULL and no recipient is reportable). */
char *bounce_build(const struct bounce_params *p, size_t *len_r);

/* Policy (RFC 3461 §4.1): false for the null sender (never bounce a bounce,
 * RFC 5321 §4.5.5) and NOTIFY=NEVER; with NOTIFY, only the kinds it lists;
 * without, failure and delay (delay warnings default on) but not success. */
bool bounce_wanted(const struct queue_env *env, const struct queue_rcpt *r, enum bounce_kind kind);
/* bounce_wanted and r's state fits kind: failed for failure, deferred or
 * still pending for delay, delivered for success. The default selection. */
bool bounce_reportable(const struct queue_env *env, const struct queue_rcpt *r,
    enum bounce_kind kind);
/* Body type to queue a built DSN with: 8BITMIME when any octet >= 0x80. */
enum queue_body bounce_body_type(const char *dsn, size_t len);
/* The DSN needs SMTPUTF8: its recipient, the original sender, is not ASCII. */
bool bounce_smtputf8(const struct queue_env *env);
/* The RFC 3463 enhanced code at the start of a reply ("550 5.1.1 ..." or a
 * locally made "4.4.3 ..."): copied to out, or false when there is none. */
bool bounce_reply_enhanced(const char *reply, char out[16]);

/* --------------------------------------------------------------- scheduler.c */

/* The relay: loads the queue at start, delivers due entries (MX, SMTP
 * client), retries with exponential backoff, bounces (design §6). Reactor
 * thread only. The server hands it its event_base and aio pool; relay/ never
 * sees server/ (the local-account hook decides where DSNs to local senders go). */
struct relay;
struct relay_params {
	char *queue_dir;             /* <data_dir>/queue */
	char *data_dir;              /* for local delivery of DSNs */
	char *hostname;              /* EHLO name, Reporting-MTA */
	char *smarthost;             /* "" or a host name: every domain goes there */
	char **dns_servers;          /* "IP" or "IP@PORT" (relay_new copies them) */
	size_t ndns_servers;
	int dns_port;                /* 0 = 53 */
	/* "" or NULL: no DNSSEC validation. Else a DS/DNSKEY file for
	 * ub_ctx_add_ta_file: answers are validated, bogus ones never used, and
	 * an MX host with secure addresses and a secure TLSA RRset at
	 * _<port>._tcp.<host> gets DANE (RFC 7672; mta_params.dane); a host
	 * whose addresses or TLSA lookup are bogus, or whose TLSA lookup fails,
	 * is skipped (4.7.5). Not for the smarthost. */
	char *dns_trust_anchor;
	int port;                    /* remote SMTP port (25; tests use a local one) */
	uint64_t retry_initial, retry_max, warn_after, max_queue_time;   /* seconds */
	int connect_timeout, cmd_timeout, data_timeout, final_timeout;    /* seconds (RFC 5321 §4.5.3.2) */
	bool hold;                   /* keep everything queued, attempt nothing */
	int max_active;              /* entries being delivered at once (relay.max_connections), 0: 20 */
	int max_per_domain;          /* of them towards one domain or the smarthost, 0: 10 */
	bool tls_require;            /* relay.tls: require: no delivery in clear (4.7.10, deferred) */
	bool smarthost_implicit;     /* TLS from the first octet (port 465), else STARTTLS */
	char *smarthost_user;        /* "" or AUTH credentials for the smarthost */
	char *smarthost_password;
	/* malloc'ed account address when addr is a local mailbox, else NULL */
	char *(*local_account)(void *arg, const char *addr);
	void *hook_arg;
};
struct relay *relay_new(struct event_base *base, struct aio *aio, const struct relay_params *p,
    char *err, size_t errlen);
/* A new entry <id> was written by the SMTP server: load it and try it now. */
void relay_submitted(struct relay *r, const char *id);
size_t relay_queued(const struct relay *r);
/* SIGHUP: later attempts use p (smarthost, limits, timeouts, hold, TLS policy...);
 * attempts in progress finish as they began. The resolver settings and the queue
 * directory are kept: false when p asks for other DNS servers (restart needed). */
bool relay_reconfigure(struct relay *r, const struct relay_params *p);
/* Administration (`postling queue`, through server/control.c). Every entry not
 * being delivered becomes due now; returns how many were waiting. */
size_t relay_flush(struct relay *r);
/* Removes entry id without a DSN / fails its open recipients with a DSN to the
 * sender (5.0.0). 0, ENOENT, or EBUSY while it is being delivered. */
int relay_delete(struct relay *r, const char *id);
int relay_bounce(struct relay *r, const char *id);
void relay_free(struct relay **r_r);

/* ------------------------------------------------------------------ mta.c */

/* The outbound SMTP client (design §6): one connection that offers one
 * message to the recipients of one destination, on the reactor, on
 * bufferevents (OpenSSL for STARTTLS). The model is OpenSMTPD's
 * mta_session.c: a state enum and one logged state change function.
 *
 * mta_deliver tries p->addrs in order. A failure before the MAIL
 * transaction (connection refused or timed out, 4xx/5xx greeting, EHLO and
 * HELO refused, STARTTLS or AUTH failing, a lost connection, a malformed
 * reply) moves on to the next address; when none is left every recipient
 * gets the failure of the last address that was tried, permanent only if
 * every address answered with a 5xx (RFC 5321 §3.1, §5.1), else temporary.
 * From MAIL on, the verdict is final and no other address is tried (that
 * would risk duplicates). The rules:
 * - STARTTLS (RFC 3207) whenever offered and p->tls is set; EHLO again
 *   after it. A failed handshake (or anything sent in clear behind the
 *   220, RFC 3207 §4, which is never read as if it came under TLS)
 *   reconnects once to the same address without TLS (opportunistic),
 *   unless tls_required (then 4.7.5); a refused STARTTLS
 *   command goes on in clear, unless tls_required. tls_required and no
 *   STARTTLS offered: temporary failure 4.7.10. The SSL_CTX decides the
 *   certificate checks; the SNI is mx_name unless that is an IP literal.
 * - AUTH PLAIN (preferred) or LOGIN (RFC 4954) when auth_user is set, only
 *   under TLS or, without tls_required, to a loopback address; anything
 *   else (no TLS, mechanism not offered, credentials refused even with
 *   5xx) is a temporary failure: a configuration problem must not bounce.
 * - Before MAIL, permanent failures for every recipient: SIZE (RFC 1870)
 *   below msg_size 5.3.4; SMTPUTF8 needed (p->smtputf8, or a non-ASCII
 *   sender or recipient) but not offered 5.6.7 (RFC 6531 §3.5); body_8bit
 *   without 8BITMIME 5.6.3 (RFC 6152 §3: no downgrade is attempted).
 *   MAIL carries SIZE=, BODY=8BITMIME, SMTPUTF8 when offered and needed;
 *   RET=, ENVID= (xtext) and NOTIFY=, ORCPT= only when DSN is offered
 *   (RFC 3461). A non-ASCII ORCPT is sent as utf-8-addr-unitext with
 *   SMTPUTF8, else utf-8-addr-xtext (RFC 6533 §3).
 * - PIPELINING offered (RFC 2920): MAIL and every RCPT in one write, DATA
 *   after the last RCPT reply; else one command at a time.
 * - RCPT: 2xx accepted, 4xx temporary, 5xx permanent for that recipient.
 *   MAIL refused: every recipient gets that reply. None accepted: QUIT.
 * - DATA: the message file is read in 64 KiB pieces on the aio pool (only
 *   while less than 64 KiB waits to be sent), dot-stuffed (RFC 5321
 *   §4.5.2) with bare CR and LF turned into CRLF (mta_stuff_*). The final
 *   reply applies to every accepted recipient. A lost connection, a
 *   timeout or a read error before that reply: temporary failure, never
 *   delivered; the final "." is never sent after a failed read.
 * - Replies (mta_reply_feed): CRLF lines only, one code per reply, at most
 *   MTA_REPLY_MAX octets (a longer one, e.g. a 100 KiB line, is a protocol
 *   error: temporary failure, nothing buffered beyond what was read).
 * - Timeouts (RFC 5321 §4.5.3.2), each 0 for its default: connect_timeout
 *   for the TCP connect; cmd_timeout for the greeting, EHLO, STARTTLS and
 *   the handshake, AUTH, MAIL, RCPT, DATA; data_timeout without progress
 *   in writing the message; final_timeout for the reply to "."; a QUIT
 *   reply is awaited at most MTA_QUIT_TIMEOUT. Any of them: temporary.
 *
 * Results. A recipient's reply is the remote reply, its lines joined with
 * "\n" ("550-5.1.1 No\n550 5.1.1 such user"), code its code and enhanced
 * its RFC 3463 code, or "<class>.0.0" when the server gave none; a reply
 * taken as a temporary failure (a 2xx where none belongs, a refused AUTH)
 * gets a 4.x.x enhanced code (5.7.8 -> 4.7.8; 2.x.x -> 4.5.0). A failure
 * made here (connect refused, timeout, policy) has code 0, a text that does
 * not start with a reply code, and an enhanced code of ours (4.4.1 no
 * answer, 4.4.2 connection lost or timed out, 4.5.0 bad reply, 4.7.5 TLS
 * failure, 4.7.10 TLS needed, 4.7.0 AUTH unusable, 4.3.0 local read
 * error, 5.3.4, 5.6.7, 5.6.3 above). conn_status is MTA_OK when the
 * recipients were decided one by one (RCPT, then the reply to "."), else the
 * one status they all share from a single connection-level event (no
 * address took the connection, a pre-MAIL check, MAIL refused, DATA
 * refused or lost before any RCPT was refused on its own). remote_ip is
 * the last address tried, tls whether the transaction ran under TLS.
 *
 * Threading and lifetime: reactor thread only. mta_deliver copies p (the
 * caller may free it when it returns) but for p->tls and p->aio, borrowed
 * until cb or mta_cancel; it never calls cb from inside;
 * cb runs exactly once, later, unless mta_cancel came first; res is then
 * owned by cb (mta_result_free). The handle is valid until cb starts;
 * mta_cancel(&r) inside cb only NULLs r. mta_cancel frees everything (the
 * connection is closed without QUIT; a file read in flight finishes on its
 * worker and is dropped) and never calls back. Nothing of the session
 * (commands, replies, credentials) is logged: the caller logs the result. */

struct event_base;
struct sockaddr_storage;
struct ssl_ctx_st;                 /* SSL_CTX */

#define MTA_REPLY_LINE_MAX 512     /* octets kept of each reply line, RFC 5321 §4.5.3.1.5 */
#define MTA_REPLY_MAX (64u * 1024) /* octets of one reply on the wire, CRLFs included */
#define MTA_CONNECT_TIMEOUT_DEFAULT 30
#define MTA_CMD_TIMEOUT_DEFAULT 300      /* RFC 5321 §4.5.3.2.1-.5 */
#define MTA_DATA_TIMEOUT_DEFAULT 180     /* §4.5.3.2.5 data block */
#define MTA_FINAL_TIMEOUT_DEFAULT 600    /* §4.5.3.2.6 DATA termination */
#define MTA_QUIT_TIMEOUT 10

struct mta_params {
	/* Tried in order until one answers; AF_INET or AF_INET6. An address's
	 * own port is used when it is not 0, else port. */
	const struct sockaddr_storage *addrs;
	size_t naddrs;
	int port;                          /* normally 25 */
	const char *mx_name;               /* SNI, results' remote_host; NULL: the IP */
	const char *helo;                  /* our hostname for EHLO/HELO */
	struct ssl_ctx_st *tls;            /* client context; NULL: never STARTTLS */
	bool tls_required;                 /* needs tls */
	bool reuse;                        /* take a parked connection to the same host, and
	                                    * park this one after the transaction (mta_cache.c) */
	bool implicit_tls;                 /* TLS handshake right after connect (RFC 8314 §3.3);
	                                    * needs tls, implies tls_required */
	/* DANE (RFC 7672 §2.2): this host has a DNSSEC-validated TLSA RRset.
	 * Implies tls_required, failures 4.7.5 (no STARTTLS offered or
	 * accepted, handshake failed, certificate matches no record); no
	 * connection is taken from or left in the cache. With usable records
	 * (dns_tlsa_usable; the others are dropped) the peer must match one
	 * through OpenSSL's DANE (SSL_dane_enable with mx_name as the TLSA base
	 * domain and reference identifier, DANE-EE without name checks, RFC
	 * 7672 §3.1.1); with none, TLS is still required but not authenticated
	 * (§2.2). Needs tls; tlsa is copied. */
	bool dane;
	const struct dns_tlsa *tlsa;
	size_t ntlsa;
	const char *auth_user, *auth_pass; /* both or neither */
	const char *sender;                /* "" = null reverse-path */
	bool smtputf8, body_8bit;          /* what the message needs */
	const char *envid;                 /* NULL or "": none; decoded (xtext-encoded here) */
	int ret;                           /* enum queue_ret */
	const char *const *rcpts;          /* nrcpts >= 1 mailboxes */
	const unsigned *notify;            /* NULL, or QUEUE_NOTIFY_* bits per recipient */
	const char *const *orcpt;          /* NULL, or per recipient "" or "<type>;<decoded addr>" */
	size_t nrcpts;
	const char *msg_path;              /* the message: CRLF lines (queue .msg) */
	uint64_t msg_size;                 /* 0: unknown (no SIZE= and no SIZE check) */
	struct aio *aio;                   /* reads the message file */
	int connect_timeout, cmd_timeout, data_timeout, final_timeout;   /* seconds, 0: default */
};

enum mta_status { MTA_OK = 0, MTA_TEMPFAIL, MTA_PERMFAIL };

struct mta_rcpt_result {
	enum mta_status status;
	int code;                          /* reply code, 0 for a failure made here */
	char enhanced[16];                 /* "5.1.1" */
	char *reply;                       /* owned, never NULL */
};

struct mta_result {
	enum mta_status conn_status;
	char *error;                       /* owned: with conn_status not MTA_OK, the reply
	                                      every recipient got; else NULL */
	/* No address got as far as MAIL (connection, greeting, EHLO, TLS,
	 * AUTH): the failure is the hosts' and another MX may do better (RFC
	 * 5321 §5.1); conn_status then says whether every address answered
	 * with a 5xx (PERMFAIL) or not. */
	bool host_failed;
	char *remote_host;                 /* owned: mx_name (or the IP) */
	char *remote_ip;                   /* owned: last address tried, "" if none */
	bool tls;
	bool dane;                         /* the peer was authenticated by a TLSA record */
	char *tls_version;                 /* owned, NULL without TLS */
	struct mta_rcpt_result *rcpts;     /* owned, in p->rcpts order */
	size_t nrcpts;
};

struct mta_req;
typedef void (*mta_done_cb)(void *arg, struct mta_result *res);

/* mta_cache.c (used by mta.c): parked connections, see there. */
struct mta_conn {
	int fd;                            /* owned when the bev is plain, else -1 */
	struct bufferevent *bev;
	struct ssl_st *ssl;                /* borrowed from a TLS bev */
	unsigned ext;                      /* EHLO extensions */
	uint64_t size_max;
	bool tls, loopback;
	char *tls_version;                 /* owned */
	unsigned uses;                     /* transactions carried so far */
};
/* Parks c (ownership moves; *c is cleared) under key. */
void mta_cache_put(struct event_base *base, const char *key, struct mta_conn *c);
/* A parked connection for key, now the caller's (its callbacks unset). */
bool mta_cache_take(struct event_base *base, const char *key, struct mta_conn *out);
/* Closes the parked connections of base (NULL: all). */
void mta_cache_clear(struct event_base *base);
size_t mta_cache_count(void);

/* NULL with errno EINVAL when p breaks a rule above: no address or
 * recipient, a missing string, a control octet in helo, sender, a
 * recipient, envid or orcpt (no command injection), a space in helo,
 * tls_required, implicit_tls or dane without tls, auth_user without auth_pass, no aio. */
struct mta_req *mta_deliver(struct event_base *base, const struct mta_params *p, mta_done_cb cb,
    void *arg);
void mta_cancel(struct mta_req **r_r);
void mta_result_free(struct mta_result **r_r);
const char *mta_status_name(enum mta_status s);   /* "ok", "tempfail", "permfail" */

/* ------------------------------------------------------------ mta_reply.c */

/* Pure, for tests and fuzzing: a resumable reader of one SMTP reply (RFC
 * 5321 §4.2). Feed what arrived, in any split: 1 when the reply is complete
 * (*consumed_r octets used, the rest belongs to the next reply), 0 when all
 * was used and more is needed, -1 on error (r->error; *consumed_r up to the
 * fault). Each line is "ddd", "ddd text" or "ddd-text" (continued) ending in
 * CRLF, d in 2-5/0-5/0-9, every line with the same code. Past
 * MTA_REPLY_MAX octets: MTA_REPLY_E_TOO_LONG, found without storing more.
 * Call mta_reply_reset before the next reply. */
enum mta_reply_error {
	MTA_REPLY_E_NONE = 0,
	MTA_REPLY_E_SYNTAX,                /* not a reply line */
	MTA_REPLY_E_CODE_MISMATCH,         /* lines with different codes */
	MTA_REPLY_E_BARE_EOL,              /* CR or LF not in a CRLF pair */
	MTA_REPLY_E_TOO_LONG,              /* over MTA_REPLY_MAX */
};

struct mta_reply {
	int code;                          /* set when complete */
	char enhanced[16];                 /* of the first line when its class fits code, else "" */
	/* Lines without CRLF joined by "\n", each cut at MTA_REPLY_LINE_MAX
	 * octets, other control octets turned into spaces; owned, NUL-terminated
	 * once anything was fed. Grows with the reply, never past MTA_REPLY_MAX. */
	char *text;
	size_t text_len, text_cap;
	size_t nlines;
	enum mta_reply_error error;
	/* reader state */
	size_t wire;                       /* octets of this reply so far */
	size_t line_start, line_len;       /* current line in text, its octets kept */
	bool cr, done;
};

void mta_reply_init(struct mta_reply *r);
void mta_reply_reset(struct mta_reply *r);      /* for the next reply; keeps memory */
void mta_reply_free(struct mta_reply *r);
int mta_reply_feed(struct mta_reply *r, const char *p, size_t len, size_t *consumed_r);
const char *mta_reply_strerror(enum mta_reply_error e);

/* Pure: the message as sent after DATA (RFC 5321 §4.5.2): a "." starting a
 * line doubled, bare CR and bare LF written as CRLF, in any split of the
 * input. mta_stuff writes at most 2 * len + 2 octets to out and returns
 * how many; mta_stuff_end then writes the end: CRLF when the message does
 * not end with one, and ".\r\n" (at most MTA_STUFF_END_MAX octets). */
#define MTA_STUFF_END_MAX 5
struct mta_stuff {
	bool mid_line;                     /* inside a line (false at the start) */
	bool cr;                           /* a CR held back, its LF may follow */
};
size_t mta_stuff(struct mta_stuff *st, const char *in, size_t len, char *out);
size_t mta_stuff_end(struct mta_stuff *st, char *out);

/* ----------------------------------------------------------------- dkim.c */

/* DKIM signing of outbound mail (RFC 6376): relaxed/relaxed canonicalisation
 * (§3.4.2, §3.4.4), the whole body hashed (no l=), rsa-sha256 (§3.3.1, RSA
 * keys of DKIM_RSA_MIN_BITS or more) and ed25519-sha256 (RFC 8463). Pure: no
 * file or network I/O; keys come in and go out as PEM text, and the caller
 * (server/config.c, server/cli.c) reads and writes the files.
 *
 * Line ends: CRLF, and also a bare CR or a bare LF, each count as one line
 * end, because that is how the relay sends the message (mta_stuff writes bare
 * CR and LF as CRLF): the signature covers what goes on the wire.
 *
 * Threading: a parsed key is immutable; dkim_sign may run on several worker
 * threads at once with the same key (OpenSSL 3 allows concurrent read-only use
 * of an EVP_PKEY). The reference count is not atomic: take and drop
 * references on one thread (the reactor; the CLI has only one). */

enum dkim_alg { DKIM_RSA_SHA256 = 0, DKIM_ED25519_SHA256 };
#define DKIM_RSA_MIN_BITS 1024           /* RFC 8301 §3.2: verifiers refuse smaller */
#define DKIM_RSA_DEFAULT_BITS 2048
#define DKIM_RSA_MAX_BITS 8192           /* larger keys are refused: no receiver needs them */
#define DKIM_KEY_MAX_PEM (64u * 1024)    /* larger key files are refused unread */
/* At most this many instances of one header name are signed, the bottom-most
 * ones (RFC 6376 §5.4.2 counts instances from the bottom); more is abuse. */
#define DKIM_MAX_INSTANCES 8

struct dkim_key;
/* A private key from PEM text (PKCS#8 or the traditional RSA form). NULL with
 * a message in err: not a key, encrypted (no passphrase is asked for), a type
 * other than RSA and Ed25519, RSA outside DKIM_RSA_MIN_BITS..DKIM_RSA_MAX_BITS.
 * One reference. */
struct dkim_key *dkim_key_parse(const char *pem, size_t len, char *err, size_t errlen);
/* A new key: RSA of `bits` (DKIM_RSA_MIN_BITS..DKIM_RSA_MAX_BITS), or Ed25519 (bits ignored). */
struct dkim_key *dkim_key_generate(enum dkim_alg alg, int bits, char *err, size_t errlen);
/* The private key as PKCS#8 PEM (malloc'ed, NUL-terminated), for writing it out. */
char *dkim_key_pem(const struct dkim_key *k, size_t *len_r);
enum dkim_alg dkim_key_alg(const struct dkim_key *k);
int dkim_key_bits(const struct dkim_key *k);
/* The text of the selector's TXT record (RFC 6376 §3.6.1): "v=DKIM1; k=rsa;
 * p=<SubjectPublicKeyInfo, base64>", or k=ed25519 with the raw 32-octet
 * public key (RFC 8463 §4). malloc'ed. */
char *dkim_dns_txt(const struct dkim_key *k);
const char *dkim_alg_name(enum dkim_alg a);        /* "rsa-sha256", "ed25519-sha256" (a=) */
const char *dkim_key_type_name(enum dkim_alg a);   /* "rsa", "ed25519" (k=) */
struct dkim_key *dkim_key_ref(struct dkim_key *k);
void dkim_key_unref(struct dkim_key **k_r);

/* Relaxed header canonicalisation (§3.4.2) of one raw header field, folding
 * line ends included, its final line end not: "name:value\r\n" appended to
 * out. -1 when out's maximum is reached. */
struct buf;
int dkim_canon_header(const char *field, size_t len, struct buf *out);

/* Relaxed body canonicalisation (§3.4.4), resumable: feed the body in any
 * split, then end; out receives the canonical octets in order. */
typedef void (*dkim_out_fn)(void *arg, const char *p, size_t n);
struct dkim_body {
	dkim_out_fn out;
	void *arg;
	uint64_t empty_lines;        /* empty lines held back: trailing ones are dropped */
	bool line_started;           /* a non-WSP octet was written on this line */
	bool space;                  /* WSP seen since the last octet written */
	bool skip_lf;                /* the last octet was a CR: an LF now is its pair */
};
void dkim_body_init(struct dkim_body *b, dkim_out_fn out, void *arg);
void dkim_body_feed(struct dkim_body *b, const char *p, size_t len);
void dkim_body_end(struct dkim_body *b);

/* One signature to make: d=, s= and the key (all borrowed). */
struct dkim_signer {
	const char *domain;
	const char *selector;
	const struct dkim_key *key;
};
/* Signs msg (header, empty line, body) once per signer, with t=now. The
 * signed fields: From (required, and oversigned: listed once more than
 * present, so an added From breaks the signature, §8.15), To, Cc, Subject
 * (oversigned too), Date, Message-ID, Reply-To, In-Reply-To, References,
 * MIME-Version, Content-Type, Content-Transfer-Encoding and the List-*
 * fields of RFC 2369, 2919 and 8058, those present. Returns the
 * DKIM-Signature fields to put on top of the message, CRLF-terminated and
 * folded under 78 columns (malloc'ed, length in *len_r), or NULL with a
 * message in err: no From field, a domain or selector that is not a DNS
 * name, an OpenSSL failure. Blocking (hashes the whole message). */
char *dkim_sign(const struct dkim_signer *signers, size_t n, time_t now, const char *msg, size_t len,
    size_t *len_r, char *err, size_t errlen);
/* The domain of the first address in the (first) From field, lowercased,
 * into out; false when there is no From field or its address has no
 * usable domain (a group, a domain literal, junk). */
bool dkim_from_domain(const char *msg, size_t len, char *out, size_t outsize);
/* A DNS name for d= and s=: labels of letters, digits, '-' and '_', dots
 * between them, at most 253 octets. */
bool dkim_name_valid(const char *s);

#endif
