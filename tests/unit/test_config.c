/* test_config.c: server/config.c and server/config_override.c (design §7, §8):
 * defaults, typing, exact "file:line:column: message" errors, -o overrides, the
 * users file. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <crypt.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/log.h"
#include "server/server.h"

static char err[1024];

#define POP3 "listeners:\n  - { protocol: pop3, port: 2110 }\n"

static struct config *load_o(const char *yaml, char *const *ovr, size_t novr)
{
	err[0] = '\0';
	return cfg_load_string("t.yaml", yaml, strlen(yaml), ovr, novr, err, sizeof(err));
}

static struct config *load(const char *yaml)
{
	return load_o(yaml, NULL, 0);
}

static void expect_error_o(const char *yaml, char *const *ovr, size_t novr, const char *want)
{
	struct config *cfg = load_o(yaml, ovr, novr);
	assert_null(cfg);
	assert_string_equal(err, want);
}

static void expect_error(const char *yaml, const char *want)
{
	expect_error_o(yaml, NULL, 0, want);
}

/* a temp file holding text; the name is written to path (PATH_MAX) */
static void write_temp(char *path, const char *text)
{
	strcpy(path, "/tmp/postling-test-config-XXXXXX");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

/* ------------------------------------------------------------------ loading */

static void test_minimal_config_gets_every_default(void **state)
{
	struct config *cfg = load("listeners:\n  - protocol: pop3\n    port: 110\n");
	assert_non_null(cfg);
	assert_string_equal(cfg->path, "t.yaml");
	assert_true(cfg->server.hostname[0] != '\0');   /* gethostname() */
	assert_string_equal(cfg->server.data_dir, "/var/lib/postling");
	assert_string_equal(cfg->server.user, "postling");
	assert_int_equal(cfg->server.max_connections, 2000);
	assert_int_equal(cfg->server.max_connections_per_ip, 20);
	assert_int_equal(cfg->server.shutdown_timeout, 30);
	assert_int_equal(cfg->log.level, LL_INFO);
	assert_string_equal(cfg->log.file, "");
	assert_int_equal(cfg->tls.ncertificates, 0);
	assert_false(cfg->tls.self_signed);
	assert_int_equal(cfg->tls.min_version, 12);
	assert_int_equal(cfg->nlisteners, 1);
	assert_int_equal(cfg->listeners[0].proto, PROTO_POP3);
	assert_int_equal(cfg->listeners[0].port, 110);
	assert_int_equal(cfg->listeners[0].naddresses, 2);
	assert_string_equal(cfg->listeners[0].addresses[0], "0.0.0.0");
	assert_string_equal(cfg->listeners[0].addresses[1], "::");
	assert_null(cfg->listeners[0].addresses[2]);
	assert_false(cfg->listeners[0].proxy_protocol);
	assert_int_equal(cfg->listeners[0].line, 2);
	assert_int_equal(cfg->ndomains, 0);
	assert_null(cfg->domains[0]);
	assert_int_equal(cfg->auth.nmechanisms, 5);
	assert_string_equal(cfg->auth.mechanisms[0], "PLAIN");
	assert_string_equal(cfg->auth.mechanisms[1], "LOGIN");
	assert_string_equal(cfg->auth.mechanisms[2], "SCRAM-SHA-256");
	assert_string_equal(cfg->auth.mechanisms[3], "SCRAM-SHA-1");
	assert_string_equal(cfg->auth.mechanisms[4], "CRAM-MD5");
	assert_null(cfg->auth.mechanisms[5]);
	assert_false(cfg->auth.allow_plaintext);
	assert_int_equal(cfg->auth.max_failures, 10);
	assert_int_equal(cfg->auth.fail_window, 900);
	assert_int_equal(cfg->pop3.timeout, 600);
	assert_int_equal(cfg->pop3.login_delay, 0);
	assert_string_equal(cfg->pop3.expire, "NEVER");
	assert_int_equal(cfg->imap.timeout, 1800);
	assert_int_equal(cfg->imap.login_timeout, 60);
	assert_int_equal(cfg->imap.max_sessions_per_user, 8);
	assert_int_equal(cfg->imap.max_append_size, 0);
	assert_int_equal(cfg->imap.max_errors, 20);
	assert_string_equal(cfg->users_file, "");
	assert_int_equal(cfg->nusers, 0);
	assert_string_equal(cfg->relay.smarthost, "");
	assert_int_equal(cfg->relay.ndns_servers, 0);
	assert_null(cfg->relay.dns_servers[0]);
	assert_int_equal(cfg->relay.dns_port, 53);
	assert_int_equal(cfg->relay.port, 25);
	assert_int_equal(cfg->relay.retry_initial, 300);
	assert_int_equal(cfg->relay.retry_max, 3600);
	assert_int_equal(cfg->relay.warn_after, 4 * 3600);
	assert_int_equal(cfg->relay.max_queue_time, 5 * 86400);
	assert_false(cfg->relay.hold);
	assert_int_equal(cfg->relay.connect_timeout, 30);
	assert_int_equal(cfg->relay.command_timeout, 300);
	assert_int_equal(cfg->relay.data_timeout, 180);
	assert_int_equal(cfg->relay.final_timeout, 600);
	cfg_free(&cfg);
	assert_null(cfg);
}

static void test_values_are_typed_and_normalised(void **state)
{
	struct config *cfg = load(
	    "server: { hostname: mx.example.org, max_connections: \"50\", shutdown_timeout: 1m }\n"
	    "log: { level: debug, file: /tmp/p.log }\n"
	    "tls: { self_signed: yes, min_version: \"1.3\" }\n"
	    "listeners:\n"
	    "  - { protocol: POP3S, address: 127.0.0.1, port: 995 }\n"
	    "  - { protocol: smtp, address: [\"::1\", 127.0.0.1], port: '25' }\n"
	    "domains: [Example.ORG, example.net]\n"
	    "auth: { mechanisms: [plain, scram-sha-256-plus], fail_window: 1h }\n"
	    "pop3: { timeout: 30, login_delay: 5m, expire: never }\n"
	    "users:\n"
	    "  - { address: Bob@Example.org, aliases: [Postmaster@example.org], quota: 1G }\n"
	    "relay: { smarthost: \"smtp.example.net:587\", dns: { servers: [127.0.0.1], port: 5353 },"
	    " port: 2525, retry_initial: 10s, retry_max: 2m, warn_after: 0, max_queue_time: 1w }\n");
	assert_non_null(cfg);
	assert_string_equal(cfg->server.hostname, "mx.example.org");
	assert_int_equal(cfg->server.max_connections, 50);
	assert_int_equal(cfg->server.shutdown_timeout, 60);
	assert_int_equal(cfg->log.level, LL_DEBUG);
	assert_string_equal(cfg->log.file, "/tmp/p.log");
	assert_true(cfg->tls.self_signed);
	assert_int_equal(cfg->tls.min_version, 13);
	assert_int_equal(cfg->listeners[0].proto, PROTO_POP3S);
	assert_int_equal(cfg->listeners[0].naddresses, 1);
	assert_string_equal(cfg->listeners[0].addresses[0], "127.0.0.1");
	assert_int_equal(cfg->listeners[1].naddresses, 2);
	assert_string_equal(cfg->listeners[1].addresses[0], "::1");
	assert_int_equal(cfg->listeners[1].port, 25);
	assert_string_equal(cfg->domains[0], "example.org");
	assert_string_equal(cfg->domains[1], "example.net");
	assert_int_equal(cfg->auth.nmechanisms, 2);
	assert_string_equal(cfg->auth.mechanisms[1], "SCRAM-SHA-256-PLUS");
	assert_int_equal(cfg->auth.fail_window, 3600);
	assert_int_equal(cfg->pop3.timeout, 30);
	assert_int_equal(cfg->pop3.login_delay, 300);
	assert_string_equal(cfg->pop3.expire, "NEVER");
	assert_string_equal(cfg->users[0].address, "bob@example.org");
	assert_string_equal(cfg->users[0].password, "");
	assert_string_equal(cfg->users[0].scram_sha256, "");
	assert_string_equal(cfg->users[0].aliases[0], "postmaster@example.org");
	assert_int_equal(cfg->users[0].quota, 1024ULL * 1024 * 1024);
	assert_string_equal(cfg->relay.smarthost, "smtp.example.net:587");
	assert_string_equal(cfg->relay.dns_servers[0], "127.0.0.1");
	assert_int_equal(cfg->relay.dns_port, 5353);
	assert_int_equal(cfg->relay.port, 2525);
	assert_int_equal(cfg->relay.retry_initial, 10);
	assert_int_equal(cfg->relay.retry_max, 120);
	assert_int_equal(cfg->relay.warn_after, 0);
	assert_int_equal(cfg->relay.max_queue_time, 7 * 86400);
	cfg_free(&cfg);
}

static void test_demo_yaml_loads_with_working_demo_password(void **state)
{
	struct config *cfg = cfg_load_string("<demo>", cfg_demo_yaml, strlen(cfg_demo_yaml), NULL, 0,
	    err, sizeof(err));
	assert_non_null(cfg);
	assert_string_equal(cfg->server.hostname, "localhost");
	assert_string_equal(cfg->server.data_dir, "./var");
	assert_string_equal(cfg->server.user, "");
	assert_true(cfg->tls.self_signed);
	assert_int_equal(cfg->nlisteners, 7);
	assert_int_equal(cfg->listeners[0].proto, PROTO_POP3);
	assert_int_equal(cfg->listeners[0].port, 2110);
	assert_string_equal(cfg->listeners[0].addresses[0], "127.0.0.1");
	assert_int_equal(cfg->listeners[1].proto, PROTO_POP3S);
	assert_int_equal(cfg->listeners[1].port, 2995);
	assert_int_equal(cfg->listeners[2].proto, PROTO_SMTP);
	assert_int_equal(cfg->listeners[2].port, 2525);
	assert_int_equal(cfg->listeners[3].proto, PROTO_SUBMISSION);
	assert_int_equal(cfg->listeners[3].port, 2587);
	assert_int_equal(cfg->listeners[4].proto, PROTO_SUBMISSIONS);
	assert_int_equal(cfg->listeners[4].port, 2465);
	assert_int_equal(cfg->listeners[5].proto, PROTO_IMAP);
	assert_int_equal(cfg->listeners[5].port, 2143);
	assert_int_equal(cfg->listeners[6].proto, PROTO_IMAPS);
	assert_int_equal(cfg->listeners[6].port, 2993);
	assert_string_equal(cfg->domains[0], "example.org");
	assert_int_equal(cfg->nusers, 1);
	assert_string_equal(cfg->users[0].address, "demo@example.org");
	assert_string_equal(cfg->users[0].secret, "demo");
	struct crypt_data cd;
	memset(&cd, 0, sizeof(cd));
#ifdef CRYPT_OUTPUT_SIZE   /* libxcrypt: crypt_rn is not intercepted (wrongly) by ASan */
	const char *h = crypt_rn("demo", cfg->users[0].password, &cd, sizeof(cd));
#else
	const char *h = crypt_r("demo", cfg->users[0].password, &cd);
#endif
	assert_non_null(h);
	assert_string_equal(h, cfg->users[0].password);
	cfg_free(&cfg);
}

/* config.example.yaml sits two levels above this file; __FILE__ is relative to
 * the build root, which is the parent of the directory holding this binary. */
static int open_example(char *path, size_t len)
{
	char exe[PATH_MAX], dir[1024];
	const char *src = __FILE__;
	snprintf(dir, sizeof(dir), "%.*s", (int)(strrchr(src, '/') - src), src);
	if (src[0] == '/') {
		snprintf(path, len, "%s/../../config.example.yaml", dir);
		return access(path, R_OK);
	}
	ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
	if (n > 0) {
		exe[n] = '\0';
		*strrchr(exe, '/') = '\0';
		*strrchr(exe, '/') = '\0';
		if (snprintf(path, len, "%.1024s/%s/../../config.example.yaml", exe, dir) >= (int)len)
			return -1;
		if (access(path, R_OK) == 0)
			return 0;
	}
	snprintf(path, len, "%s/../../config.example.yaml", dir);
	return access(path, R_OK);
}

static void test_example_yaml_loads(void **state)
{
	char path[PATH_MAX * 2];
	assert_int_equal(open_example(path, sizeof(path)), 0);
	struct config *cfg = cfg_load(path, NULL, 0, err, sizeof(err));
	if (cfg == NULL)
		fail_msg("%s", err);
	assert_int_equal(cfg->nlisteners, 7);
	assert_int_equal(cfg->listeners[3].proto, PROTO_IMAPS);
	assert_int_equal(cfg->listeners[4].proto, PROTO_IMAP);
	assert_int_equal(cfg->listeners[6].proto, PROTO_POP3);
	assert_int_equal(cfg->imap.timeout, 1800);
	assert_string_equal(cfg->users[0].aliases[0], "postmaster@example.org");
	assert_int_equal(cfg->auth.fail_window, 900);
	cfg_free(&cfg);
}

static void test_load_file_and_missing_file(void **state)
{
	char path[PATH_MAX];
	write_temp(path, POP3);
	struct config *cfg = cfg_load(path, NULL, 0, err, sizeof(err));
	assert_non_null(cfg);
	assert_string_equal(cfg->path, path);
	cfg_free(&cfg);
	unlink(path);
	assert_null(cfg_load("/nonexistent/c.yaml", NULL, 0, err, sizeof(err)));
	assert_string_equal(err, "/nonexistent/c.yaml: cannot open: No such file or directory");
}

/* ------------------------------------------------------------------ syntax errors */

static void test_tab_indentation_names_line_and_column(void **state)
{
	const char *y = "server:\n  hostname: x\n\tdata_dir: y\n";
	assert_null(cfg_load_string("config.yaml", y, strlen(y), NULL, 0, err, sizeof(err)));
	assert_string_equal(err, "config.yaml:3:1: found a tab character where indentation is expected "
	    "(YAML forbids tabs for indentation)");
}

static void test_tab_after_spaces_points_at_the_tab(void **state)
{
	expect_error("server:\n  hostname: x\n  \tdata_dir: y\n",
	    "t.yaml:3:3: found a tab character where indentation is expected "
	    "(YAML forbids tabs for indentation)");
}

static void test_yaml_syntax_error_has_position(void **state)
{
	expect_error("domains: [a, b\n",
	    "t.yaml:2:1: did not find expected ',' or ']' (while parsing a flow sequence at line 1, column 10)");
}

static void test_second_document_is_rejected(void **state)
{
	expect_error(POP3 "---\nlog: {}\n", "t.yaml:4:1: only one YAML document is allowed");
}

/* ------------------------------------------------------------------ keys */

static void test_unknown_top_key_suggests_nearest(void **state)
{
	expect_error("servr:\n  hostname: x\n" POP3, "t.yaml:1:1: unknown key 'servr', did you mean 'server'?");
}

static void test_unknown_listener_key_suggests_port(void **state)
{
	expect_error("listeners:\n  - protocol: smtp\n    prot: 25\n",
	    "t.yaml:3:5: unknown key 'prot', did you mean 'port'?");
}

static void test_transposed_key_suggested(void **state)
{
	expect_error(POP3 "tls:\n  slef_signed: true\n",
	    "t.yaml:4:3: unknown key 'slef_signed', did you mean 'self_signed'?");
}

static void test_unknown_key_far_from_all_lists_valid_keys(void **state)
{
	expect_error(POP3 "log:\n  colour: red\n", "t.yaml:4:3: unknown key 'colour' (valid here: level, file)");
}

static void test_duplicate_key(void **state)
{
	expect_error(POP3 "server:\n  user: a\n  user: b\n", "t.yaml:5:3: duplicate key 'user'");
}

static void test_missing_port(void **state)
{
	expect_error("listeners:\n  - protocol: smtp\n", "t.yaml:2:5: missing required key 'port'");
}

static void test_no_listener(void **state)
{
	expect_error("server: {}\n", "t.yaml:1:1: at least one listener is required");
	expect_error("listeners: []\n", "t.yaml:1:12: at least one listener is required");
}

/* ------------------------------------------------------------------ types and values */

static void test_port_zero_out_of_range(void **state)
{
	expect_error("listeners:\n  - { protocol: smtp, port: 0 }\n", "t.yaml:2:29: port 0 out of range 1..65535");
}

static void test_port_70000_out_of_range(void **state)
{
	expect_error("listeners:\n  - protocol: smtp\n    port: 70000\n",
	    "t.yaml:3:11: port 70000 out of range 1..65535");
}

static void test_unknown_protocol_lists_valid_ones(void **state)
{
	expect_error("listeners:\n  - { protocol: pop4, port: 110 }\n",
	    "t.yaml:2:17: unknown protocol 'pop4' (valid: smtp, submission, submissions, imap, imaps, pop3, pop3s)");
}

static void test_listeners_scalar_is_wrong_type(void **state)
{
	expect_error("listeners: 5\n", "t.yaml:1:12: listeners: expected a list, found '5'");
}

static void test_mapping_list_and_boolean_types(void **state)
{
	expect_error(POP3 "tls: [a]\n", "t.yaml:3:6: tls: expected a mapping, found a list");
	expect_error(POP3 "tls: { self_signed: maybe }\n",
	    "t.yaml:3:21: self_signed: expected a boolean (true or false), found 'maybe'");
	expect_error(POP3 "server: { max_connections: many }\n",
	    "t.yaml:3:28: max_connections: expected an integer, found 'many'");
	expect_error(POP3 "server: { data_dir: [a] }\n", "t.yaml:3:21: data_dir: expected a string, found a list");
	expect_error(POP3 "relay: { port: }\n", "t.yaml:3:16: port: expected an integer, found an empty value");
}

static void test_bad_size(void **state)
{
	expect_error(POP3 "users:\n  - address: a@example.org\n    quota: 12X\n",
	    "t.yaml:5:12: quota: bad size '12X' (use e.g. 0, 512M, 1G)");
}

static void test_bad_duration_and_range(void **state)
{
	expect_error(POP3 "relay:\n  retry_max: 1x\n",
	    "t.yaml:4:14: retry_max: bad duration '1x' (use e.g. 90, 30s, 5m, 4h, 5d)");
	expect_error(POP3 "pop3:\n  timeout: 10s\n", "t.yaml:4:12: timeout 10s out of range 30..86400 seconds");
}

static void test_bad_log_level(void **state)
{
	expect_error(POP3 "log: { level: verbose }\n",
	    "t.yaml:3:15: unknown log level 'verbose' (valid: debug, info, warn, error)");
}

static void test_bad_tls_version_and_mechanism(void **state)
{
	expect_error(POP3 "tls: { min_version: 1.1 }\n",
	    "t.yaml:3:21: min_version: expected \"1.2\" or \"1.3\", found '1.1'");
	expect_error(POP3 "auth: { mechanisms: [PLAIN, NTLMX] }\n",
	    "t.yaml:3:29: unknown mechanism 'NTLMX' (valid: PLAIN, LOGIN, CRAM-MD5, DIGEST-MD5, SCRAM-SHA-1, "
	    "SCRAM-SHA-1-PLUS, SCRAM-SHA-256, SCRAM-SHA-256-PLUS)");
}

static void test_bad_listen_address_and_proxy_protocol(void **state)
{
	expect_error("listeners:\n  - { protocol: pop3, address: localhost, port: 110 }\n",
	    "t.yaml:2:32: 'localhost' is not an IPv4 or IPv6 address");
	expect_error("listeners:\n  - { protocol: pop3, port: 110, proxy_protocol: true }\n",
	    "t.yaml:2:50: proxy_protocol: not supported yet (must be false)");
}

static void test_missing_certificate_file(void **state)
{
	expect_error(POP3 "tls:\n  certificates:\n    - cert: /nonexistent/x.pem\n      key: /nonexistent/k.pem\n",
	    "t.yaml:5:13: cannot read certificate file '/nonexistent/x.pem': No such file or directory");
}

static void test_certificate_pair_is_accepted(void **state)
{
	char cert[PATH_MAX], key[PATH_MAX], yaml[3 * PATH_MAX];
	write_temp(cert, "-----BEGIN CERTIFICATE-----\n");
	write_temp(key, "-----BEGIN PRIVATE KEY-----\n");
	snprintf(yaml, sizeof(yaml), "listeners: [{ protocol: pop3s, port: 995 }]\n"
	    "tls: { certificates: [{ cert: %s, key: %s }] }\n", cert, key);
	struct config *cfg = load(yaml);
	assert_non_null(cfg);
	assert_int_equal(cfg->tls.ncertificates, 1);
	assert_string_equal(cfg->tls.certificates[0].cert, cert);
	assert_string_equal(cfg->tls.certificates[0].key, key);
	cfg_free(&cfg);
	unlink(cert);
	unlink(key);
}

static void test_implicit_tls_needs_a_certificate(void **state)
{
	expect_error("listeners:\n  - { protocol: pop3, port: 110 }\n  - { protocol: pop3s, port: 995 }\n",
	    "t.yaml:3:5: listener pop3s needs TLS: set tls.certificates or tls.self_signed: true");
	expect_error("listeners:\n  - { protocol: submission, port: 587 }\n",
	    "t.yaml:2:5: listener submission needs TLS for AUTH: set tls.certificates or tls.self_signed: true "
	    "(or auth.allow_plaintext: true)");
}

/* ------------------------------------------------------------------ users */

static void test_unsafe_addresses_rejected(void **state)
{
	expect_error(POP3 "users:\n  - address: a/b@x\n", "t.yaml:4:14: bad address 'a/b@x': contains a slash");
	expect_error(POP3 "users:\n  - address: ../x@y\n", "t.yaml:4:14: bad address '../x@y': starts with '.'");
	expect_error(POP3 "users:\n  - address: x@..\n", "t.yaml:4:14: bad address 'x@..': starts with '.'");
	expect_error(POP3 "users:\n  - address: \"a\\x01@y\"\n",
	    "t.yaml:4:14: bad address 'a\x01@y': contains a control character");
	expect_error(POP3 "users:\n  - address: nobody\n", "t.yaml:4:14: bad address 'nobody': expected local@domain");
	expect_error(POP3 "users:\n  - address: \"@y\"\n",
	    "t.yaml:4:14: bad address '@y': empty local part or domain");
	expect_error(POP3 "users:\n  - { address: a@y, aliases: [b@y/z] }\n",
	    "t.yaml:4:31: bad address 'b@y/z': contains a slash");
	expect_error(POP3 "domains: [../etc]\n", "t.yaml:3:11: bad domain '../etc': starts with '.'");
}

static void test_duplicate_user_address(void **state)
{
	expect_error(POP3 "users:\n  - address: a@example.org\n  - address: A@Example.org\n",
	    "t.yaml:5:14: duplicate address 'a@example.org' (already used by user 'a@example.org')");
	expect_error(POP3 "users:\n  - address: a@example.org\n  - { address: b@example.org, aliases: [a@example.org] }\n",
	    "t.yaml:5:41: duplicate address 'a@example.org' (already used by user 'a@example.org')");
}

static void test_catch_all_alias_accepted_and_its_domain_checked(void **state)
{
	char e[256] = "";
	struct config *cfg = load(POP3 "users:\n  - { address: a@example.org,\n"
	    "      aliases: [\"@Catch.Example\", Postmaster@example.org] }\n");
	if (cfg == NULL)
		fail_msg("%s", err);
	assert_int_equal(cfg->users[0].naliases, 2);
	assert_string_equal(cfg->users[0].aliases[0], "@catch.example");
	assert_string_equal(cfg->users[0].aliases[1], "postmaster@example.org");
	struct auth *a = auth_new(cfg, e, sizeof(e));    /* and the snapshot takes it as the catch-all */
	if (a == NULL)
		fail_msg("%s", e);
	const struct account *acct = NULL;
	assert_int_equal(auth_lookup_recipient(a, "anyone", "catch.example", &acct), AUTH_RCPT_LOCAL);
	assert_string_equal(acct->address, "a@example.org");
	auth_unref(&a);
	cfg_free(&cfg);
	expect_error(POP3 "users:\n  - { address: a@y, aliases: [\"@x/z\"] }\n",
	    "t.yaml:4:31: bad catch-all alias '@x/z': contains a slash");
	expect_error(POP3 "users:\n  - { address: a@y, aliases: [\"@..x\"] }\n",
	    "t.yaml:4:31: bad catch-all alias '@..x': starts with '.'");
	expect_error(POP3 "users:\n  - { address: a@y, aliases: [\"@\"] }\n",
	    "t.yaml:4:31: bad catch-all alias '@': empty local part or domain");
	expect_error(POP3 "users:\n  - { address: a@y, aliases: [\"@a@b\"] }\n",
	    "t.yaml:4:31: bad catch-all alias '@a@b': contains '@'");
	/* an account address is never "@domain"; one catch-all per domain */
	expect_error(POP3 "users:\n  - address: \"@y\"\n", "t.yaml:4:14: bad address '@y': empty local part or domain");
	expect_error(POP3 "users:\n  - { address: a@y, aliases: [\"@c.example\"] }\n"
	    "  - { address: b@y, aliases: [\"@C.example\"] }\n",
	    "t.yaml:5:31: duplicate address '@c.example' (already used by user 'a@y')");
	/* YAML reserves '@': unquoted, the parser stops with a hint */
	expect_error(POP3 "users:\n  - { address: a@y, aliases: [@c.example] }\n",
	    "t.yaml:4:31: a value starting with '@' must be quoted (YAML reserves '@' and '`'), "
	    "e.g. \"@example.org\"");
}

static void test_catch_all_alias_in_users_file(void **state)
{
	char path[PATH_MAX], want[PATH_MAX + 128];
	char *al[] = { "@catch.example", NULL };
	struct cfg_user in = { "a@example.org", "", "", "", "", al, 1, 0 }, *out = NULL;
	size_t n = 0;
	write_temp(path, "");
	assert_int_equal(cfg_save_users_file(path, &in, 1, err, sizeof(err)), 0);
	if (cfg_load_users_file(path, &out, &n, err, sizeof(err)) == -1)
		fail_msg("%s", err);
	assert_int_equal(n, 1);
	assert_int_equal(out[0].naliases, 1);
	assert_string_equal(out[0].aliases[0], "@catch.example");
	cfg_users_free(&out, n);
	unlink(path);
	write_temp(path, "users:\n  - address: a@example.org\n    aliases: [\"@bad/domain\"]\n");
	snprintf(want, sizeof(want), "%s:3:15: bad catch-all alias '@bad/domain': contains a slash", path);
	assert_int_equal(cfg_load_users_file(path, &out, &n, err, sizeof(err)), -1);
	assert_string_equal(err, want);
	unlink(path);
}

static void test_user_without_address(void **state)
{
	expect_error(POP3 "users:\n  - password: x\n", "t.yaml:4:5: missing required key 'address'");
}

static void test_bad_scram_keys(void **state)
{
	expect_error(POP3 "users:\n  - { address: a@y, scram_sha256: abc }\n",
	    "t.yaml:4:35: expected '<iterations>:<salt>:<StoredKey>:<ServerKey>'");
}

static void test_users_file_round_trip(void **state)
{
	char path[PATH_MAX], tmp[PATH_MAX + 32];
	char *al[] = { "x@example.org", "y@example.org", NULL };
	char *none[] = { NULL };
	struct cfg_user in[2] = {
		{ "a@example.org", "$6$salt$hash", "se\"cr\\et\t\n\x01 \xc3\xa9: #x", "4096:c2FsdA==:AAAA:BBBB",
		  "", al, 2, 1234567 },
		{ "b@example.org", "", "", "", "4096:c2FsdA==:CCCC:DDDD", none, 0, 0 },
	};
	struct cfg_user *out = NULL;
	size_t n = 0;
	struct stat st;
	write_temp(path, "");
	assert_int_equal(cfg_save_users_file(path, in, 2, err, sizeof(err)), 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
	assert_int_equal(access(tmp, F_OK), -1);
	if (cfg_load_users_file(path, &out, &n, err, sizeof(err)) == -1)
		fail_msg("%s", err);
	assert_int_equal(n, 2);
	for (size_t i = 0; i < 2; i++) {
		assert_string_equal(out[i].address, in[i].address);
		assert_string_equal(out[i].password, in[i].password);
		assert_string_equal(out[i].secret, in[i].secret);
		assert_string_equal(out[i].scram_sha1, in[i].scram_sha1);
		assert_string_equal(out[i].scram_sha256, in[i].scram_sha256);
		assert_int_equal(out[i].naliases, in[i].naliases);
		for (size_t j = 0; j < in[i].naliases; j++)
			assert_string_equal(out[i].aliases[j], in[i].aliases[j]);
		assert_null(out[i].aliases[in[i].naliases]);
		assert_int_equal(out[i].quota, in[i].quota);
	}
	cfg_users_free(&out, n);
	assert_null(out);
	assert_int_equal(cfg_save_users_file(path, in, 0, err, sizeof(err)), 0);
	assert_int_equal(cfg_load_users_file(path, &out, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 0);
	cfg_users_free(&out, n);
	unlink(path);
}

static void test_save_refuses_unsafe_user(void **state)
{
	char *none[] = { NULL };
	struct cfg_user u = { "../x@y", "", "", "", "", none, 0, 0 };
	assert_int_equal(cfg_save_users_file("/tmp/postling-never-written", &u, 1, err, sizeof(err)), -1);
	assert_string_equal(err, "/tmp/postling-never-written:3:14: bad address '../x@y': starts with '.'");
	assert_int_equal(access("/tmp/postling-never-written", F_OK), -1);
}

static void test_users_file_errors_name_the_users_file(void **state)
{
	char path[PATH_MAX], want[PATH_MAX + 128], yaml[PATH_MAX + 128];
	write_temp(path, "users:\n  - adress: a@example.org\n");
	struct cfg_user *out = NULL;
	size_t n = 0;
	snprintf(want, sizeof(want), "%s:2:5: unknown key 'adress', did you mean 'address'?", path);
	assert_int_equal(cfg_load_users_file(path, &out, &n, err, sizeof(err)), -1);
	assert_string_equal(err, want);
	snprintf(yaml, sizeof(yaml), POP3 "users_file: %s\n", path);
	expect_error(yaml, want);
	unlink(path);
	/* a users file that does not exist yet is empty (postling user add creates it) */
	struct config *cfg = load(POP3 "users_file: /nonexistent/u.yaml\n");
	assert_non_null(cfg);
	cfg_free(&cfg);
	assert_int_equal(cfg_load_users_file("/nonexistent/u.yaml", &out, &n, err, sizeof(err)), 0);
	assert_int_equal(n, 0);
	/* a directory is not a users file */
	expect_error(POP3 "users_file: /tmp\n",
	    "t.yaml:3:13: cannot read users file '/tmp': not a regular file");
}

static void test_users_file_named_in_config_loads(void **state)
{
	char path[PATH_MAX], yaml[PATH_MAX + 128];
	write_temp(path, "users:\n  - address: c@example.org\n");
	snprintf(yaml, sizeof(yaml), POP3 "users_file: %s\n", path);
	struct config *cfg = load(yaml);
	assert_non_null(cfg);
	assert_string_equal(cfg->users_file, path);
	assert_int_equal(cfg->nusers, 0);
	cfg_free(&cfg);
	unlink(path);
}

/* ------------------------------------------------------------------ overrides */

static void test_override_sets_values(void **state)
{
	char *o[] = { "server.data_dir=/tmp/x", "log.level=debug", "domains=[A.example, b.example]" };
	struct config *cfg = load_o("server:\n  data_dir: /var/x\n" POP3, o, 3);
	assert_non_null(cfg);
	assert_string_equal(cfg->server.data_dir, "/tmp/x");
	assert_int_equal(cfg->log.level, LL_DEBUG);
	assert_int_equal(cfg->ndomains, 2);
	assert_string_equal(cfg->domains[0], "a.example");
	cfg_free(&cfg);
}

static void test_override_indexes_lists(void **state)
{
	char *o[] = { "listeners.0.port=2111", "listeners.1.address=[127.0.0.1, \"::1\"]" };
	struct config *cfg = load_o(POP3 "  - { protocol: smtp, port: 25 }\n", o, 2);
	assert_non_null(cfg);
	assert_int_equal(cfg->listeners[0].port, 2111);
	assert_int_equal(cfg->listeners[1].naddresses, 2);
	assert_string_equal(cfg->listeners[1].addresses[1], "::1");
	cfg_free(&cfg);
}

static void test_override_creates_missing_keys(void **state)
{
	char *o[] = { "tls.self_signed=true", "relay.dns.port=5353", "server.user=" };
	struct config *cfg = load_o("listeners: [{ protocol: pop3s, port: 995 }]\nrelay:\n", o, 3);
	assert_non_null(cfg);
	assert_true(cfg->tls.self_signed);
	assert_int_equal(cfg->relay.dns_port, 5353);
	assert_string_equal(cfg->server.user, "");
	cfg_free(&cfg);
}

static void test_override_on_empty_file(void **state)
{
	char *o[] = { "listeners=[{protocol: pop3, port: 2110}]" };
	struct config *cfg = load_o("", o, 1);
	if (cfg == NULL)
		fail_msg("%s", err);
	assert_int_equal(cfg->listeners[0].port, 2110);
	cfg_free(&cfg);
	char *o2[] = { "log.level=debug" };
	expect_error_o("", o2, 1, "t.yaml:1:1: at least one listener is required");
}

static void test_override_bad_paths(void **state)
{
	char *o1[] = { "listeners.9.port=1" }, *o2[] = { "server.data_dir.x=1" }, *o3[] = { "server.data_dir" };
	char *o4[] = { "listeners.x.port=1" }, *o5[] = { "log..level=info" };
	expect_error_o(POP3, o1, 1, "-o listeners.9.port: no such list element");
	expect_error_o("server: { data_dir: /x }\n" POP3, o2, 1,
	    "-o server.data_dir.x: 'server.data_dir' is not a mapping or a list");
	expect_error_o(POP3, o3, 1, "-o server.data_dir: expected key.path=value");
	expect_error_o(POP3, o4, 1, "-o listeners.x.port: no such list element");
	expect_error_o(POP3, o5, 1, "-o log..level: empty component in key path");
}

static void test_override_values_are_validated(void **state)
{
	char *o1[] = { "listeners.0.port=70000" }, *o2[] = { "log.levle=debug" }, *o3[] = { "domains=[a" };
	expect_error_o(POP3, o1, 1, "-o listeners.0.port: port 70000 out of range 1..65535");
	expect_error_o(POP3, o2, 1, "-o log.levle: unknown key 'levle', did you mean 'level'?");
	expect_error_o(POP3, o3, 1, "-o domains: bad YAML value: did not find expected ',' or ']'");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_minimal_config_gets_every_default),
		cmocka_unit_test(test_values_are_typed_and_normalised),
		cmocka_unit_test(test_demo_yaml_loads_with_working_demo_password),
		cmocka_unit_test(test_example_yaml_loads),
		cmocka_unit_test(test_load_file_and_missing_file),
		cmocka_unit_test(test_tab_indentation_names_line_and_column),
		cmocka_unit_test(test_tab_after_spaces_points_at_the_tab),
		cmocka_unit_test(test_yaml_syntax_error_has_position),
		cmocka_unit_test(test_second_document_is_rejected),
		cmocka_unit_test(test_unknown_top_key_suggests_nearest),
		cmocka_unit_test(test_unknown_listener_key_suggests_port),
		cmocka_unit_test(test_transposed_key_suggested),
		cmocka_unit_test(test_unknown_key_far_from_all_lists_valid_keys),
		cmocka_unit_test(test_duplicate_key),
		cmocka_unit_test(test_missing_port),
		cmocka_unit_test(test_no_listener),
		cmocka_unit_test(test_port_zero_out_of_range),
		cmocka_unit_test(test_port_70000_out_of_range),
		cmocka_unit_test(test_unknown_protocol_lists_valid_ones),
		cmocka_unit_test(test_listeners_scalar_is_wrong_type),
		cmocka_unit_test(test_mapping_list_and_boolean_types),
		cmocka_unit_test(test_bad_size),
		cmocka_unit_test(test_bad_duration_and_range),
		cmocka_unit_test(test_bad_log_level),
		cmocka_unit_test(test_bad_tls_version_and_mechanism),
		cmocka_unit_test(test_bad_listen_address_and_proxy_protocol),
		cmocka_unit_test(test_missing_certificate_file),
		cmocka_unit_test(test_certificate_pair_is_accepted),
		cmocka_unit_test(test_implicit_tls_needs_a_certificate),
		cmocka_unit_test(test_unsafe_addresses_rejected),
		cmocka_unit_test(test_duplicate_user_address),
		cmocka_unit_test(test_catch_all_alias_accepted_and_its_domain_checked),
		cmocka_unit_test(test_catch_all_alias_in_users_file),
		cmocka_unit_test(test_user_without_address),
		cmocka_unit_test(test_bad_scram_keys),
		cmocka_unit_test(test_users_file_round_trip),
		cmocka_unit_test(test_save_refuses_unsafe_user),
		cmocka_unit_test(test_users_file_errors_name_the_users_file),
		cmocka_unit_test(test_users_file_named_in_config_loads),
		cmocka_unit_test(test_override_sets_values),
		cmocka_unit_test(test_override_indexes_lists),
		cmocka_unit_test(test_override_creates_missing_keys),
		cmocka_unit_test(test_override_on_empty_file),
		cmocka_unit_test(test_override_bad_paths),
		cmocka_unit_test(test_override_values_are_validated),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
