/* server.h: the internal header of server/ (design §1, §2, §4, §7).
 * One section of prototypes per file. */
#ifndef POSTLING_SERVER_H
#define POSTLING_SERVER_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>

struct event_base;
struct conn;
struct store;
struct auth;
struct auth_sasl;
struct logline;
struct relay;
struct dkim_key;
struct yaml_document_s;          /* libyaml's, for config.c and config_override.c */
struct buf;                      /* common/buf.h, for cfg_read_file */
struct yaml_node_s;

/* ---------------------------------------------------------------- config.c */

enum cfg_proto {
	PROTO_SMTP, PROTO_SUBMISSION, PROTO_SUBMISSIONS,
	PROTO_IMAP, PROTO_IMAPS, PROTO_POP3, PROTO_POP3S,
	PROTO__COUNT
};

struct cfg_listener {
	enum cfg_proto proto;
	char **addresses;            /* NULL-terminated; default {"0.0.0.0", "::"}; a string or a list in YAML */
	size_t naddresses;
	int port;                    /* 1..65535 */
	bool proxy_protocol;         /* reserved: PROXY v2 header expected (not yet supported: rejected if true) */
	int line;                    /* position in the config file, for messages */
};

struct cfg_cert {
	char *cert;                  /* PEM chain path */
	char *key;                   /* PEM key path */
};

struct cfg_user {
	char *address;               /* lowercased local@domain */
	char *password;              /* crypt(3) hash; "" = no password login */
	char *secret;                /* recoverable secret for CRAM-MD5/DIGEST-MD5/APOP/SCRAM, "" = none */
	char *scram_sha1;            /* "" or "<iter>:<salt b64>:<StoredKey b64>:<ServerKey b64>" (RFC 5802) */
	char *scram_sha256;          /* same, for SCRAM-SHA-256 (RFC 7677) */
	char **aliases;              /* NULL-terminated, lowercased */
	size_t naliases;
	uint64_t quota;              /* bytes, 0 = unlimited */
};

/* `dkim:` entries: sign mail From domain with the key (RFC 6376); the key
 * file is read and checked at load (server/config.c), the key kept here. */
struct cfg_dkim {
	char *domain;                /* d=, lowercased */
	char *selector;              /* s= */
	char *key;                   /* PEM file: RSA >= 1024 bits or Ed25519, not group/world accessible */
	struct dkim_key *pkey;       /* the parsed key, one reference (relay/relay.h dkim.c) */
};

struct config {
	char *path;                  /* file it came from, or "<demo>" */
	struct {
		char *hostname;          /* default: gethostname() */
		char *data_dir;          /* default /var/lib/postling */
		char *user;              /* default "postling"; "" = do not drop privileges */
		int max_connections;     /* default 2000 */
		int max_connections_per_ip; /* default 20 */
		int max_connection_rate_per_ip; /* new connections per minute per IP, 0 = no limit (default) */
		int shutdown_timeout;    /* seconds, default 30 (server.shutdown_timeout) */
	} server;
	struct {
		int level;               /* enum log_level, default info */
		char *file;              /* "" = stderr */
	} log;
	struct {
		struct cfg_cert *certificates;
		size_t ncertificates;
		bool self_signed;        /* make data_dir/tls/selfsigned.{crt,key} on first start */
		int min_version;         /* 12 or 13 (TLS 1.2 / 1.3), default 12 */
	} tls;
	struct cfg_listener *listeners;
	size_t nlisteners;
	char **domains;              /* NULL-terminated, lowercased */
	size_t ndomains;
	struct {
		char **mechanisms;       /* NULL-terminated, uppercased; default PLAIN LOGIN SCRAM-SHA-256 SCRAM-SHA-1 CRAM-MD5 */
		size_t nmechanisms;
		bool allow_plaintext;    /* default false */
		bool loopback_is_local;  /* default true: loopback clients may log in without TLS (tests set false) */
		int max_failures;        /* failures per IP before refusal, default 10 */
		int fail_window;         /* seconds the failures are remembered / refusal lasts, default 900 */
	} auth;
	struct {
		int timeout;             /* seconds, default 600 (RFC 1939 §3: at least 10 minutes) */
		int login_delay;         /* seconds advertised in CAPA LOGIN-DELAY, default 0 (not advertised) */
		char *expire;            /* CAPA EXPIRE value: "NEVER" (default) or days as text */
	} pop3;
	struct {
		int timeout;             /* seconds, autologout once logged in, default 30m (RFC 9051 §5.4) */
		int login_timeout;       /* seconds before authentication, default 60 */
		int max_sessions_per_user;   /* default 8; beyond: NO [LIMIT] to LOGIN/AUTHENTICATE */
		uint64_t max_append_size;    /* APPENDLIMIT (RFC 7889); 0 = smtp.max_message_size */
		int max_errors;          /* bad commands per session, then BYE; default 20 */
	} imap;
	struct {
		uint64_t max_message_size;   /* bytes, SIZE (RFC 1870); default 50M */
		int max_recipients;      /* per message, default 100 (452 4.5.3 beyond) */
		int max_errors;          /* bad commands per session, then 421; default 10 */
		int timeout;             /* seconds waiting for a command, default 300 (RFC 5321 §4.5.3.2.7) */
		int data_timeout;        /* seconds for each DATA/BDAT read, default 180 (§4.5.3.2.6) */
		int greeting_delay_ms;   /* pause before the 220; input before it is an early talker; default 0 */
		bool vrfy;               /* answer VRFY for real; default false: 252 */
	} smtp;
	struct cfg_dkim *dkim;       /* keys to sign outbound mail with; several per domain sign twice */
	size_t ndkim;
	char *users_file;            /* "" = none */
	struct cfg_user *users;      /* from `users:` (not from users_file) */
	size_t nusers;
	struct {
		char *smarthost;
		char **dns_servers;
		size_t ndns_servers;
		int dns_port;
		char *dns_trust_anchor;  /* "" or a DS/DNSKEY file: DNSSEC validation, DANE (RFC 7672) */
		int port;
		uint64_t retry_initial, retry_max, warn_after, max_queue_time; /* seconds */
		bool hold;               /* true: keep queued mail, attempt no delivery (maintenance, tests) */
		int connect_timeout, command_timeout, data_timeout, final_timeout;   /* seconds,
		                          * defaults 30s, 5m, 3m, 10m (RFC 5321 §4.5.3.2) */
		int max_connections;     /* outbound SMTP connections at once, default 20 */
		int max_connections_per_domain;  /* towards one destination domain, default 10 */
		char *tls;               /* "opportunistic" (default) or "require": STARTTLS or defer */
		char *smarthost_tls;     /* "starttls" (default) or "implicit" (port 465 style) */
		char *smarthost_user;    /* "" = no AUTH; else AUTH PLAIN/LOGIN, only under TLS */
		char *smarthost_password;
	} relay;
};

/* Load and validate. On error returns NULL and writes "file:line:column: message"
 * into err. overrides: "key.path=value" strings applied before validation (-o). */
struct config *cfg_load(const char *path, char *const *overrides, size_t noverrides,
    char *err, size_t errlen);
/* Parse YAML text (used for the embedded demo configuration and by tests);
 * `name` is used in error messages in place of a file name. */
struct config *cfg_load_string(const char *name, const char *text, size_t len,
    char *const *overrides, size_t noverrides, char *err, size_t errlen);
void cfg_free(struct config **cfg_r);
/* Frees n users (a malloc'ed array, as the users loaders return) and NULLs *users_r. */
void cfg_users_free(struct cfg_user **users_r, size_t n);
const char *cfg_proto_name(enum cfg_proto p);
bool cfg_proto_implicit_tls(enum cfg_proto p);
/* The embedded demo configuration (YAML text), data under ./var */
extern const char cfg_demo_yaml[];
/* Internal to config.c, config_override.c and users_file.c.
 * A plain empty, "~" or "null" scalar, an absent value (YAML 1.2 core schema). */
bool cfg_node_is_null(const struct yaml_node_s *n);
/* The whole file at path into *b (initialized here; the caller buf_frees it
 * on success), at most 16 MiB; 0, or -1 with "path: cannot open|read: why" in err. */
int cfg_read_file(const char *path, struct buf *b, char *err, size_t errlen);
/* Users file text -> accounts, mapped and checked like the config's `users:`
 * (messages name `name`); on success *users_r is never NULL (cfg_users_free). */
int cfg_load_users_text(const char *name, const char *text, size_t len, struct cfg_user **users_r,
    size_t *nusers_r, char *err, size_t errlen);
/* The keys of a users entry in config.c's table order, for the writer: the
 * i-th one's name, how its field is written and its offset in struct
 * cfg_user; NULL past the last. */
enum cfg_user_field { CFG_USER_STR, CFG_USER_LIST, CFG_USER_SIZE, CFG_USER_OTHER };
const char *cfg_user_key(size_t i, enum cfg_user_field *field_r, size_t *off_r);

/* ---------------------------------------------------------------- config_override.c */

/* Internal to config.c: nodes an override made carry mark.index CFG_OVR_MARK and
 * mark.line = the override's number, so messages about them say "-o PATH: ...". */
#define CFG_OVR_MARK SIZE_MAX
/* Apply the `-o key.path=value` strings ovr[0..n) in order to the parsed tree doc
 * (an empty document first gets a root mapping), before it is mapped. 0, or -1
 * with "-o PATH: message" in err. */
int cfg_apply_overrides(struct yaml_document_s *doc, char *const *ovr, size_t n,
    char *err, size_t errlen);

/* ---------------------------------------------------------------- users_file.c */

/* Users file: YAML with a top-level `users:` list, same keys as in the config.
 * A file that does not exist yet is no accounts (0, *users_r NULL). */
int cfg_load_users_file(const char *path, struct cfg_user **users_r, size_t *nusers_r,
    char *err, size_t errlen);
/* Write a users file atomically (temp + fsync + rename) */
int cfg_save_users_file(const char *path, const struct cfg_user *users, size_t n,
    char *err, size_t errlen);

/* ---------------------------------------------------------------- auth.c */

struct account {
	char *address;
	char *password;              /* crypt hash or "" */
	char *secret;                /* "" = none */
	char *scram_sha1;            /* "" = none, format as in struct cfg_user */
	char *scram_sha256;
	char **aliases;              /* NULL-terminated; "@domain" is that domain's catch-all */
	uint64_t quota;
};

enum auth_result {
	AUTH_OK = 0,        /* authenticated; auth_sasl_user() is the account address */
	AUTH_CONTINUE,      /* send the challenge in *out_b64_r, read the next response */
	AUTH_FAIL,          /* bad credentials */
	AUTH_BADPROTO,      /* malformed client data (bad base64, bad message) */
	AUTH_TEMPFAIL,      /* internal error */
};

/* Information about the connection a SASL exchange runs on. */
struct auth_conn_info {
	bool tls;
	bool loopback;
	const char *remote;          /* printable address */
	/* channel binding data for SCRAM-*-PLUS, NULL when none */
	const unsigned char *cb_tls_exporter; size_t cb_tls_exporter_len;
	const unsigned char *cb_tls_unique; size_t cb_tls_unique_len;
	const char *hostname;        /* service host name for DIGEST-MD5/GSSAPI realms */
	const char *service;         /* "pop", "imap", "smtp" */
};

/* The account database is an immutable, refcounted snapshot: a reload makes a
 * new one; sessions keep the one they started with. Lookups, password checks
 * and SASL steps may run on worker threads (crypt(3) costs milliseconds). */
struct auth *auth_new(const struct config *cfg, char *err, size_t errlen);
void auth_ref(struct auth *a);
void auth_unref(struct auth **a_r);
size_t auth_count(const struct auth *a);
const struct account *auth_find(const struct auth *a, const char *address);   /* case-insensitive */

/* Mechanisms offered on a connection, from auth.mechanisms, NULL-terminated, static strings
 * owned by `a`. Mechanisms need TLS (or loopback, or allow_plaintext) to be offered, -PLUS
 * also channel-binding data. Only mechanisms some account of the snapshot can use are
 * offered or allowed (design §4): CRAM-MD5 and DIGEST-MD5 when one has a secret, SCRAM-SHA-1
 * and SCRAM-SHA-256 (and -PLUS) when one has a secret or stored keys for that hash. */
const char *const *auth_mechanisms(const struct auth *a, const struct auth_conn_info *ci);
bool auth_mech_allowed(const struct auth *a, const char *mech, const struct auth_conn_info *ci);

struct auth_sasl;
/* Start a server exchange; NULL (and *res_r = AUTH_BADPROTO) when the mechanism is
 * unknown or not allowed here. ci's pointers must live until auth_sasl_free. */
struct auth_sasl *auth_sasl_start(struct auth *a, const char *mech, const struct auth_conn_info *ci,
    enum auth_result *res_r);
/* One step. in_b64: the client's base64 line ("" for an empty response, "=" as
 * in RFC 4954 for an empty initial response, NULL for no initial response).
 * *out_b64_r: malloc'ed challenge (AUTH_CONTINUE) or final server data (AUTH_OK, may be "").
 * Blocking (CPU): call from a worker thread. */
enum auth_result auth_sasl_step(struct auth_sasl *s, const char *in_b64, char **out_b64_r);
const char *auth_sasl_user(const struct auth_sasl *s);        /* valid after AUTH_OK */
const char *auth_sasl_mech(const struct auth_sasl *s);
void auth_sasl_free(struct auth_sasl **s_r);

/* Internal to auth.c and recipient.c (the snapshot seen by its recipient
 * resolution): the i-th account (i < auth_count(a)); the address or alias
 * local@domain given in pieces, local being llen bytes (case-insensitive; llen 0
 * finds the catch-all "@domain", which auth_find never does); and the local
 * domains recipient_domains() made for this snapshot (NULL-terminated, *n_r). */
const struct account *auth_account_at(const struct auth *a, size_t i);
const struct account *auth_find_parts(const struct auth *a, const char *local, size_t llen,
    const char *domain);
char *const *auth_local_domains(const struct auth *a, size_t *n_r);

/* Internal to auth.c and password.c: the hash a password check spends its time
 * on for an unknown user or one without a hash (one of the snapshot's own when
 * it has any, so that the decoy costs what a real check costs); the salt length
 * of the SCRAM keys auth_scram_keys makes, which the salts auth.c makes up for
 * names without stored keys share so that they look alike. */
const char *auth_dummy_hash(const struct auth *a);
#define AUTH_SCRAM_SALT_LEN 16

/* ---------------------------------------------------------------- password.c */

/* crypt(3) check; AUTH_OK or AUTH_FAIL (unknown user costs the same time as a bad password) */
enum auth_result auth_check_password(const struct auth *a, const char *user, const char *pass,
    const struct account **acct_r);
/* APOP (RFC 1939 §7): digest = hex MD5(timestamp secret) */
enum auth_result auth_check_apop(const struct auth *a, const char *user, const char *timestamp,
    const char *digest_hex, const struct account **acct_r);
/* crypt(3) hash of a password with a fresh salt: yescrypt, else SHA-512-crypt */
char *auth_hash_password(const char *pass);
/* "<iter>:<salt>:<StoredKey>:<ServerKey>" for SCRAM-SHA-1 (sha256=false) or -256, fresh salt, 4096 iterations */
char *auth_scram_keys(const char *pass, bool sha256);

/* ---------------------------------------------------------------- recipient.c */

/* Where mail for local@domain goes. Domains, aliases, catch-all and +tag
 * addressing are resolved here and nowhere else (design §4). */
enum auth_rcpt {
	AUTH_RCPT_LOCAL,    /* delivered to the account in *acct_r */
	AUTH_RCPT_UNKNOWN,  /* a local domain without such a user: 550 5.1.1 */
	AUTH_RCPT_REMOTE,   /* not a local domain (domain literals never are) */
};
/* Local domains: config `domains:` plus those of all addresses and aliases;
 * case-insensitive; "[192.0.2.1]"-style literals are never local. */
bool auth_is_local_domain(const struct auth *a, const char *domain);
/* local: the parser's unquoted local part, taken literally ('%', '!', '@' are
 * plain characters). Order: exact address or alias (case-insensitive), then
 * "base+tag" as "base" (first '+'; none when local starts or ends with '+'),
 * then the domain's catch-all alias "@domain". acct_r may be NULL.
 * Mail to postmaster is not special-cased: each snapshot build logs the warning
 * auth.no_postmaster for a local domain where it reaches no account
 * (RFC 5321 §4.5.1); a bare <Postmaster> (empty domain) is the caller's to map. */
enum auth_rcpt auth_lookup_recipient(const struct auth *a, const char *local, const char *domain,
    const struct account **acct_r);
/* May the authenticated account `user` use local@domain as envelope sender
 * (design §6)? Yes when auth_lookup_recipient would deliver that address to this
 * very account. local NULL is the null reverse-path "<>" (RFC 5321 §4.5.5):
 * yes. Always no when `user` is no account of this snapshot. */
bool auth_sender_allowed(const struct auth *a, const char *user, const char *local,
    const char *domain);

/* Internal to auth.c, called by auth_new() once the accounts and name index are
 * built: the local domains (lowercased, sorted, unique, NULL-terminated, *n_r of
 * them; the snapshot owns them), then one auth.no_postmaster warning per local
 * domain where postmaster reaches no account. */
char **recipient_domains(const struct auth *a, const struct config *cfg, size_t *n_r);
void recipient_warn_no_postmaster(const struct auth *a);

/* ---------------------------------------------------------------- throttle.c */

/* Failed-login throttling per remote IP (reactor thread only). After each
 * failure the next attempt from that IP is delayed (growing: 0.25 s doubling,
 * at most 8 s); after `max_failures` within `window` seconds the IP is refused
 * for `window` seconds. A success clears the IP's record. Bounded memory. */
struct throttle;
struct throttle *throttle_new(int max_failures, int window);
void throttle_free(struct throttle **t_r);
void throttle_configure(struct throttle *t, int max_failures, int window);
/* ms to wait before answering the next attempt; -1 if the IP is refused now */
int throttle_check(struct throttle *t, const char *ip, time_t now);
void throttle_fail(struct throttle *t, const char *ip, time_t now);
void throttle_success(struct throttle *t, const char *ip);
size_t throttle_size(const struct throttle *t);


/* ---------------------------------------------------------------- io.c */

/* Events a protocol session receives from its connection (design §2). */
enum io_event {
	IO_DATAIN,          /* input is buffered (also re-sent by io_resume when input waits) */
	IO_LOWAT,           /* queued output drained below the low watermark */
	IO_TIMEOUT,         /* no input for the timeout set by io_set_timeout */
	IO_DISCONNECTED,    /* the last event, always delivered once: the conn is going away
	                     * (peer closed, I/O or TLS error, or after io_close); the session
	                     * frees itself now. Delivered at the end of a loop pass, never
	                     * from inside another call of the session. */
	IO_TLSREADY,        /* TLS handshake finished after io_starttls */
	IO_TIMER,           /* the timer set by io_set_timer fired */
	IO_SHUTDOWN,        /* the server is draining (SIGTERM): say goodbye and io_close */
};

typedef void (*io_cb)(struct conn *c, enum io_event ev, void *arg);

enum { IO_LINE_TOOLONG = -1, IO_LINE_MORE = 0, IO_LINE_OK = 1 };

#define IO_OUTPUT_LOWAT (64 * 1024)      /* IO_LOWAT below this many queued bytes */
#define IO_OUTPUT_HARDCAP (8 * 1024 * 1024) /* more queued than this: the reader is gone, close */

void io_set_callback(struct conn *c, io_cb cb, void *arg);
/* Next input line without its line end (CRLF, or a bare LF for command lines):
 * IO_LINE_OK with *line_r valid until the next io_getline call (NUL-terminated;
 * *len_r excludes the NUL; embedded NULs possible), IO_LINE_MORE when no full line
 * is buffered, IO_LINE_TOOLONG once when a line exceeds max octets (line end
 * included): its bytes are discarded up to and including the next line end. */
int io_getline(struct conn *c, size_t max, char **line_r, size_t *len_r);
size_t io_input_len(const struct conn *c);
/* Raw input (SMTP DATA/BDAT): the first contiguous piece of buffered input
 * (0 when none; valid until the next io_* call), and dropping n octets of it. */
size_t io_peek(struct conn *c, const char **p_r);
void io_consume(struct conn *c, size_t n);
void io_pause(struct conn *c);           /* stop reading (async work in progress) */
void io_resume(struct conn *c);          /* read again; IO_DATAIN soon if input waits */
int io_write(struct conn *c, const void *p, size_t len);
int io_printf(struct conn *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
size_t io_queued(const struct conn *c);
void io_set_timeout(struct conn *c, int secs);
void io_set_timer(struct conn *c, int ms);  /* one-shot IO_TIMER; ms < 0 cancels */
/* Discard all buffered input (STARTTLS injection defence, RFC 2595 §4 / RFC 3207 §6)
 * and start a server-side TLS handshake over the connection; IO_TLSREADY or IO_DISCONNECTED
 * follows. Output already queued (the "+OK Begin TLS") goes out first, in clear. */
int io_starttls(struct conn *c);
bool io_tls_available(const struct conn *c);     /* a certificate is loaded */
bool io_is_tls(const struct conn *c);
const char *io_tls_version(const struct conn *c);
const char *io_tls_cipher(const struct conn *c);
/* channel binding data (RFC 9266 tls-exporter, RFC 5929 tls-unique); 0 or -1 */
int io_tls_exporter(struct conn *c, unsigned char out[32]);
int io_tls_unique(struct conn *c, unsigned char *out, size_t max, size_t *len_r);
const char *io_remote(const struct conn *c);     /* printable IP */
bool io_remote_loopback(const struct conn *c);
const char *io_sid(const struct conn *c);        /* 13-char base32 session id */
uint64_t io_id(const struct conn *c);
enum cfg_proto io_proto(const struct conn *c);
/* Close after queued output is flushed (bounded by a short deadline). No event
 * but the final IO_DISCONNECTED follows; the session keeps its memory until then
 * (it marks itself closed and stops work: Redis' "free at the end of the pass"). */
void io_close(struct conn *c, const char *reason);
bool io_closing(const struct conn *c);
/* add common log fields (sid, proto, remote) */
void io_log_fields(struct logline *l, const struct conn *c);

/* ---------------------------------------------------------------- session.c */

/* What a protocol registers (one per protocol, see protocols/NAME_session.c). */
struct proto_ops {
	const char *name;            /* "pop3" */
	void (*start)(struct conn *c);   /* after accept (after the handshake for implicit TLS) */
	const char *busy_reply;      /* sent before closing when a limit refuses the connection */
};

/* Blocking auth work on the worker pool, with the answer on the reactor.
 * The job owns `sasl` while it runs and hands it back to the callback; if the
 * connection is gone the result is dropped and sasl is freed. */
typedef void (*session_auth_cb)(struct conn *c, enum auth_result r, struct auth_sasl *sasl,
    char *out_b64, const char *user, void *arg);
void session_sasl_step(struct conn *c, struct auth_sasl *sasl, const char *in_b64,
    session_auth_cb cb, void *arg);
void session_check_password(struct conn *c, const char *user, const char *pass,
    session_auth_cb cb, void *arg);
/* What a SASL exchange needs to know about the connection, with the channel
 * binding data (RFC 9266 tls-exporter, RFC 5929 tls-unique) ci points into. */
struct session_auth {
	struct auth_conn_info ci;
	unsigned char cb_exporter[32];
	unsigned char cb_unique[64];
};
/* (Re)fill from the connection: at start and after STARTTLS */
void session_auth_refresh(struct conn *c, struct session_auth *sa, const char *service);
/* Per-user exclusive locks (POP3 maildrop lock, RFC 1939 §8) */
bool session_lock_user(const char *proto, const char *user);
void session_unlock_user(const char *proto, const char *user);
/* log auth.ok / auth.fail and update the throttle */
void session_log_auth(struct conn *c, bool ok, const char *mech, const char *user);

/* ---------------------------------------------------------------- control.c */

/* The administration socket of a running server (postling queue flush|delete|bounce). */
struct control;
char *control_path(const char *data_dir);                 /* malloc'ed */
struct control *control_open(const char *data_dir);       /* NULL (logged) when unavailable */
void control_close(struct control **c_r);
/* CLI side: send one request line, read the reply line. 0, or -1 with errno
 * (ENOENT/ECONNREFUSED: no server is running on that data_dir). */
int control_request(const char *data_dir, const char *request, char *reply, size_t replylen);

/* ---------------------------------------------------------------- cli.c */

/* The subcommands of the postling binary; argv[0] is the subcommand name;
 * each returns the process exit code (2 for a bad configuration). */
int cli_serve(int argc, char **argv);
int cli_check_config(int argc, char **argv);
int cli_passwd(int argc, char **argv);
int cli_user(int argc, char **argv);
int cli_deliver(int argc, char **argv);
int cli_queue(int argc, char **argv);
int cli_dns_records(int argc, char **argv);
int cli_dkim_keygen(int argc, char **argv);

/* ---------------------------------------------------------------- server.c */

struct listener;
struct tls;

/* The one piece of global state (conventions: no other mutable globals). */
struct server {
	struct event_base *base;
	struct config *cfg;          /* current config; replaced on SIGHUP */
	struct auth *auth;           /* current account snapshot; sessions keep refs */
	struct throttle *throttle;
	struct store *store;
	struct relay *relay;         /* outbound queue; NULL when it could not start */
	struct control *control;     /* <data_dir>/control.sock; NULL when unavailable */
	struct tls *tls;             /* current certificates; connections keep refs */
	struct listener **listeners;
	size_t nlisteners;
	struct conn_list *conns;     /* all live connections */
	size_t nconns;
	struct ip_count *ipcounts;   /* connections per remote IP */
	struct ip_count *rates;      /* connections per remote IP in the current minute */
	time_t rate_window;          /* start of that minute */
	struct user_lock *locks;
	bool draining;
	uint64_t next_id;
};
extern struct server *server;

/* Runs until SIGTERM/SIGINT; takes ownership of cfg; returns the exit code.
 * overrides are re-applied on each SIGHUP reload. */
int server_run(struct config *cfg, char *const *overrides, size_t noverrides, bool demo);
void server_conn_count(const char *ip, int delta);
int server_conn_count_get(const char *ip);
/* Counts a new connection from ip; false when server.max_connection_rate_per_ip
 * (per minute, 0 = no limit) is exceeded. */
bool server_conn_rate_ok(const char *ip);
/* When root and server.user is set: hand the data dir (and its tls/, mail/) to
 * that user, then become it (the server after binding; `deliver` before writing). */
int server_drop_privileges(const struct config *cfg);
const struct proto_ops *server_proto_ops(enum cfg_proto p);

/* ---------------------------------------------------------------- listener.c */

int listener_open_all(struct server *srv, char *err, size_t errlen);
void listener_close_all(struct server *srv);
void listener_pause_all(struct server *srv);
void listener_log_ready(struct server *srv, struct logline *line);   /* adds "listeners" */

/* ---------------------------------------------------------------- tls.c */

/* A set of certificates as one refcounted object: SSL_CTX per certificate, chosen by SNI. */
struct tls *tls_new(const struct config *cfg, char *err, size_t errlen);
void tls_ref(struct tls *t);
void tls_unref(struct tls **t_r);
struct ssl_st *tls_new_ssl(struct tls *t);     /* an SSL for a new server-side handshake */
/* create data_dir/tls/selfsigned.{crt,key} if missing (RSA 2048, CN=hostname) */
int tls_make_self_signed(const char *data_dir, const char *hostname, char **cert_r, char **key_r,
    char *err, size_t errlen);

/* ---------------------------------------------------------------- conn (io.c) */

struct conn *conn_new(struct server *srv, int fd, const struct sockaddr *sa, socklen_t salen,
    enum cfg_proto proto, struct tls *tls);
void conn_free_all(struct server *srv);
/* the open conn with this id, or NULL when it is gone or closing */
struct conn *conn_lookup(uint64_t id);
void conn_drain_all(struct server *srv);  /* ask every session to say goodbye (SIGTERM) */

#endif
