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

struct config {
	char *path;                  /* file it came from, or "<demo>" */
	struct {
		char *hostname;          /* default: gethostname() */
		char *data_dir;          /* default /var/lib/postling */
		char *user;              /* default "postling"; "" = do not drop privileges */
		int max_connections;     /* default 2000 */
		int max_connections_per_ip; /* default 20 */
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
		int max_failures;        /* failures per IP before refusal, default 10 */
		int fail_window;         /* seconds the failures are remembered / refusal lasts, default 900 */
	} auth;
	struct {
		int timeout;             /* seconds, default 600 (RFC 1939 §3: at least 10 minutes) */
		int login_delay;         /* seconds advertised in CAPA LOGIN-DELAY, default 0 (not advertised) */
		char *expire;            /* CAPA EXPIRE value: "NEVER" (default) or days as text */
	} pop3;
	char *users_file;            /* "" = none */
	struct cfg_user *users;      /* from `users:` (not from users_file) */
	size_t nusers;
	struct {
		char *smarthost;
		char **dns_servers;
		size_t ndns_servers;
		int dns_port;
		int port;
		uint64_t retry_initial, retry_max, warn_after, max_queue_time; /* seconds */
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
/* Users file: YAML with a top-level `users:` list, same keys as in the config. */
int cfg_load_users_file(const char *path, struct cfg_user **users_r, size_t *nusers_r,
    char *err, size_t errlen);
void cfg_users_free(struct cfg_user **users_r, size_t n);
/* Write a users file atomically (temp + fsync + rename) */
int cfg_save_users_file(const char *path, const struct cfg_user *users, size_t n,
    char *err, size_t errlen);
const char *cfg_proto_name(enum cfg_proto p);
bool cfg_proto_implicit_tls(enum cfg_proto p);
/* The embedded demo configuration (YAML text), data under ./var */
extern const char cfg_demo_yaml[];

/* ---------------------------------------------------------------- auth.c */

struct account {
	char *address;
	char *password;              /* crypt hash or "" */
	char *secret;                /* "" = none */
	char *scram_sha1;            /* "" = none, format as in struct cfg_user */
	char *scram_sha256;
	char **aliases;
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
/* crypt(3) check; AUTH_OK or AUTH_FAIL (unknown user costs the same time as a bad password) */
enum auth_result auth_check_password(const struct auth *a, const char *user, const char *pass,
    const struct account **acct_r);
/* APOP (RFC 1939 §7): digest = hex MD5(timestamp secret) */
enum auth_result auth_check_apop(const struct auth *a, const char *user, const char *timestamp,
    const char *digest_hex, const struct account **acct_r);
/* Mechanisms offered on a connection, from auth.mechanisms, NULL-terminated, static strings
 * owned by `a`. Mechanisms need TLS (or loopback, or allow_plaintext) to be offered. */
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
/* crypt(3) hash of a password with a fresh salt: yescrypt, else SHA-512-crypt */
char *auth_hash_password(const char *pass);
/* "<iter>:<salt>:<StoredKey>:<ServerKey>" for SCRAM-SHA-1 (sha256=false) or -256, fresh salt, 4096 iterations */
char *auth_scram_keys(const char *pass, bool sha256);

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

#endif
