/* cli.c: subcommands other than the reactor itself: serve's option parsing,
 * check-config, passwd, user add/del/list, deliver (like dovecot-lda), queue,
 * dns-records and dkim-keygen (the DNS side of a new installation). */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sysexits.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "server/server.h"
#include "relay/relay.h"
#include "store/store.h"

#define DEFAULT_CONFIG "/etc/postling/postling.yaml"
#define EXIT_CONFIG 2

struct cli_opts {
	const char *config;
	char **overrides;
	size_t noverrides;
	bool demo;
	bool secret;
	int optind;
};

static void cli_opts_free(struct cli_opts *o)
{
	free(o->overrides);
}

/* Common options: -c FILE, -o key=value, --demo, --secret, -h. Returns -1 after
 * printing help (exit 0) and -2 on a usage error (exit 64). */
static int parse_opts(int argc, char **argv, const char *usage, struct cli_opts *o)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "override", required_argument, NULL, 'o' },
		{ "demo", no_argument, NULL, 'd' },
		{ "secret", no_argument, NULL, 's' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	memset(o, 0, sizeof(*o));
	o->config = DEFAULT_CONFIG;
	optind = 1;
	int ch;
	while ((ch = getopt_long(argc, argv, "c:o:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': o->config = optarg; break;
		case 'o':
			o->overrides = xreallocarray(o->overrides, o->noverrides + 1, sizeof(char *));
			o->overrides[o->noverrides++] = optarg;
			break;
		case 'd': o->demo = true; break;
		case 's': o->secret = true; break;
		case 'h':
			printf("%s", usage);
			return -1;
		default:
			fprintf(stderr, "%s", usage);
			return -2;
		}
	}
	o->optind = optind;
	return 0;
}

static int opts_exit(int r)
{
	return r == -1 ? 0 : EX_USAGE;
}

static struct config *load_config(const struct cli_opts *o)
{
	char err[1024];
	struct config *cfg = o->demo
	    ? cfg_load_string("<demo>", cfg_demo_yaml, strlen(cfg_demo_yaml), o->overrides,
		o->noverrides, err, sizeof(err))
	    : cfg_load(o->config, o->overrides, o->noverrides, err, sizeof(err));
	if (cfg == NULL)
		fprintf(stderr, "%s\n", err);
	return cfg;
}

/* The shape every config-reading subcommand shares: options, an argument
 * check (usage on failure), the configuration, the action, cleanup. */
typedef bool (*cli_args_ok)(char **args, int nargs);
typedef int (*cli_action)(const struct config *cfg, const struct cli_opts *o, char **args, int nargs);

static int run_with_config(int argc, char **argv, const char *usage, cli_args_ok ok, cli_action fn)
{
	struct cli_opts o;
	int r = parse_opts(argc, argv, usage, &o);
	if (r < 0)
		return opts_exit(r);
	char **args = argv + o.optind;
	int nargs = argc - o.optind;
	struct config *cfg = NULL;
	if (!ok(args, nargs)) {
		fprintf(stderr, "%s", usage);
		r = EX_USAGE;
	} else if ((cfg = load_config(&o)) == NULL) {
		r = EXIT_CONFIG;
	} else {
		r = fn(cfg, &o, args, nargs);
	}
	cfg_free(&cfg);
	cli_opts_free(&o);
	return r;
}

static bool no_args(char **args, int nargs)
{
	(void)args;
	return nargs == 0;
}

static bool one_arg(char **args, int nargs)
{
	(void)args;
	return nargs == 1;
}

/* ---- serve ---- */

static const char serve_usage[] =
    "usage: postling serve [-c FILE] [-o key.path=value ...] [--demo]\n"
    "  -c, --config FILE   configuration file (default " DEFAULT_CONFIG ")\n"
    "  -o key.path=value   override one configuration key (repeatable)\n"
    "  --demo              run the embedded demo configuration (loopback, ./var)\n";

static void print_demo_banner(const struct config *cfg)
{
	fprintf(stderr, "\nPostling demo: data in %s, self-signed certificate in %s/tls\n",
	    cfg->server.data_dir, cfg->server.data_dir);
	for (size_t i = 0; i < cfg->nlisteners; i++)
		fprintf(stderr, "  %-11s %s port %d\n", cfg_proto_name(cfg->listeners[i].proto),
		    cfg->listeners[i].addresses[0], cfg->listeners[i].port);
	fprintf(stderr, "  demo account: demo@example.org  password: demo\n"
	    "  put mail in:  ./build/postling deliver --demo demo@example.org < message.eml\n"
	    "  read it:      openssl s_client -quiet -connect 127.0.0.1:2995   (USER/PASS/LIST/RETR)\n\n");
}

int cli_serve(int argc, char **argv)
{
	struct cli_opts o;
	int r = parse_opts(argc, argv, serve_usage, &o);
	if (r < 0)
		return opts_exit(r);
	struct config *cfg = load_config(&o);
	if (cfg == NULL) {
		cli_opts_free(&o);
		return EXIT_CONFIG;
	}
	if (log_open(cfg->log.level, cfg->log.file) == -1) {
		fprintf(stderr, "cannot open log file '%s': %s\n", cfg->log.file, strerror(errno));
		cfg_free(&cfg);
		cli_opts_free(&o);
		return 1;
	}
	if (o.demo)
		print_demo_banner(cfg);
	r = server_run(cfg, o.overrides, o.noverrides, o.demo);
	cli_opts_free(&o);
	return r;
}

/* ---- check-config ---- */

static int check_config_main(const struct config *cfg, const struct cli_opts *o, char **args, int nargs)
{
	(void)o;
	(void)args;
	(void)nargs;
	char err[1024];
	struct auth *a = auth_new(cfg, err, sizeof(err));
	if (a == NULL) {
		fprintf(stderr, "%s\n", err);
		return EXIT_CONFIG;
	}
	printf("%s: ok (%zu listeners, %zu accounts)\n", cfg->path, cfg->nlisteners, auth_count(a));
	auth_unref(&a);
	return 0;
}

int cli_check_config(int argc, char **argv)
{
	static const char usage[] =
	    "usage: postling check-config [-c FILE] [-o key.path=value ...]\n"
	    "Validates the configuration (and the users file it names); prints errors as\n"
	    "file:line:column: message and exits 2 when it is not valid.\n";
	return run_with_config(argc, argv, usage, no_args, check_config_main);
}

/* ---- passwd ---- */

/* One line from stdin without echo when it is a terminal; NULL on EOF */
static char *read_password(const char *prompt)
{
	struct termios old, noecho;
	bool tty = isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &old) == 0;
	if (tty) {
		fprintf(stderr, "%s", prompt);
		noecho = old;
		noecho.c_lflag &= ~(tcflag_t)ECHO;
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &noecho);
	}
	char *line = NULL;
	size_t cap = 0;
	ssize_t n = getline(&line, &cap, stdin);
	if (tty) {
		tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
		fprintf(stderr, "\n");
	}
	if (n <= 0) {
		free(line);
		return NULL;
	}
	while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
		line[--n] = '\0';
	return line;
}

int cli_passwd(int argc, char **argv)
{
	static const char usage[] =
	    "usage: postling passwd [--secret]\n"
	    "Reads a password from standard input and prints its crypt(3) hash (yescrypt)\n"
	    "for the `password:` key. With --secret also prints SCRAM-SHA-1/256 keys.\n";
	struct cli_opts o;
	int r = parse_opts(argc, argv, usage, &o);
	if (r < 0)
		return opts_exit(r);
	char *pass = read_password("Password: ");
	if (pass == NULL || *pass == '\0') {
		fprintf(stderr, "postling passwd: no password given\n");
		free(pass);
		return 1;
	}
	char *hash = auth_hash_password(pass);
	printf("%s\n", hash);
	if (o.secret) {
		char *s1 = auth_scram_keys(pass, false), *s256 = auth_scram_keys(pass, true);
		printf("scram_sha1: \"%s\"\nscram_sha256: \"%s\"\n", s1, s256);
		free(s1);
		free(s256);
	}
	explicit_bzero(pass, strlen(pass));
	free(pass);
	free(hash);
	cli_opts_free(&o);
	return 0;
}

/* ---- user add/del/list ---- */

static int user_find(const struct cfg_user *u, size_t n, const char *addr)
{
	for (size_t i = 0; i < n; i++)
		if (strcasecmp(u[i].address, addr) == 0)
			return (int)i;
	return -1;
}

static int user_add(const char *file, struct cfg_user **u, size_t *n, const char *addr, bool secret)
{
	if (user_find(*u, *n, addr) >= 0) {
		fprintf(stderr, "postling user: %s already exists in %s\n", addr, file);
		return 1;
	}
	char *pass = read_password("Password: ");
	if (pass == NULL || *pass == '\0') {
		fprintf(stderr, "postling user: no password given\n");
		free(pass);
		return 1;
	}
	*u = xreallocarray(*u, *n + 1, sizeof(**u));
	struct cfg_user *nu = &(*u)[(*n)++];
	memset(nu, 0, sizeof(*nu));
	nu->address = xstrdup(addr);
	for (char *p = nu->address; *p; p++)
		*p = (char)tolower((unsigned char)*p);
	nu->password = auth_hash_password(pass);
	nu->secret = xstrdup(secret ? pass : "");
	nu->scram_sha1 = auth_scram_keys(pass, false);
	nu->scram_sha256 = auth_scram_keys(pass, true);
	nu->aliases = xcalloc(1, sizeof(char *));
	explicit_bzero(pass, strlen(pass));
	free(pass);
	return 0;
}

static int user_del(const char *file, struct cfg_user *u, size_t *n, const char *addr)
{
	int i = user_find(u, *n, addr);
	if (i < 0) {
		fprintf(stderr, "postling user: no account %s in %s\n", addr, file);
		return 1;
	}
	struct cfg_user gone = u[i];
	memmove(&u[i], &u[i + 1], (*n - (size_t)i - 1) * sizeof(*u));
	(*n)--;
	struct cfg_user *one = xmalloc(sizeof(*one));
	*one = gone;
	cfg_users_free(&one, 1);
	return 0;
}

static int user_list(const struct config *cfg, const struct cfg_user *u, size_t n)
{
	for (size_t i = 0; i < cfg->nusers; i++)
		printf("%s\t(config)\n", cfg->users[i].address);
	for (size_t i = 0; i < n; i++)
		printf("%s\t(users file)%s\n", u[i].address, u[i].secret[0] ? " secret" : "");
	return 0;
}

static int cli_user_run(const struct config *cfg, const char *verb, const char *addr, bool secret)
{
	const char *file = cfg->users_file;
	struct cfg_user *u = NULL;
	size_t n = 0;
	char err[1024];
	if (file[0] == '\0') {
		if (strcmp(verb, "list") == 0)
			return user_list(cfg, NULL, 0);
		fprintf(stderr, "postling user: the configuration names no users_file\n");
		return EXIT_CONFIG;
	}
	if (access(file, F_OK) == 0 && cfg_load_users_file(file, &u, &n, err, sizeof(err)) == -1) {
		fprintf(stderr, "%s\n", err);
		return EXIT_CONFIG;
	}
	int r;
	if (strcmp(verb, "list") == 0)
		r = user_list(cfg, u, n);
	else if (strcmp(verb, "add") == 0)
		r = user_add(file, &u, &n, addr, secret);
	else
		r = user_del(file, u, &n, addr);     /* user_args_ok allows list, add, del */
	if (r == 0 && strcmp(verb, "list") != 0 &&
	    cfg_save_users_file(file, u, n, err, sizeof(err)) == -1) {
		fprintf(stderr, "postling user: %s\n", err);
		r = 1;
	}
	if (r == 0 && strcmp(verb, "list") != 0)
		printf("%s: %s %s (send SIGHUP to the server to apply)\n", file,
		    strcmp(verb, "add") == 0 ? "added" : "deleted", addr);
	cfg_users_free(&u, n);
	return r;
}

static bool user_args_ok(char **args, int nargs)
{
	if (nargs == 1)
		return strcmp(args[0], "list") == 0;
	return nargs == 2 && (strcmp(args[0], "add") == 0 || strcmp(args[0], "del") == 0);
}

static int user_main(const struct config *cfg, const struct cli_opts *o, char **args, int nargs)
{
	return cli_user_run(cfg, args[0], nargs > 1 ? args[1] : NULL, o->secret);
}

int cli_user(int argc, char **argv)
{
	static const char usage[] =
	    "usage: postling user [-c FILE] list\n"
	    "       postling user [-c FILE] add ADDRESS [--secret]   (password on standard input)\n"
	    "       postling user [-c FILE] del ADDRESS\n"
	    "Edits the users file named by `users_file:` in the configuration (atomically);\n"
	    "send SIGHUP to the server to load the change. --secret also keeps the password\n"
	    "as a recoverable secret (enables CRAM-MD5 and APOP for the account).\n";
	return run_with_config(argc, argv, usage, user_args_ok, user_main);
}

/* ---- deliver ---- */

static int deliver_stdin(const struct config *cfg, const struct account *acct)
{
	char *user = maildir_user_path(cfg->server.data_dir, acct->address);
	uint64_t size = 0;
	int r = EX_TEMPFAIL;
	if (user == NULL) {
		fprintf(stderr, "postling deliver: unsafe address %s\n", acct->address);
		return EX_NOUSER;
	}
	if (maildir_create(user) == -1)
		fprintf(stderr, "postling deliver: cannot create %s: %s\n", user, strerror(errno));
	else if (maildir_deliver_fd(user, cfg->server.hostname, STDIN_FILENO, 0, &size) == -1)
		fprintf(stderr, "postling deliver: %s: %s\n", user, strerror(errno));
	else
		r = 0;
	if (r == 0) {
		struct logline *l = log_begin(LL_INFO, "deliver.ok");
		log_str(l, "user", acct->address);
		log_uint(l, "size", size);
		log_end(l);
	}
	free(user);
	return r;
}

static int deliver_main(const struct config *cfg, const struct cli_opts *o, char **args, int nargs)
{
	(void)o;
	(void)nargs;
	char err[1024];
	struct auth *a = auth_new(cfg, err, sizeof(err));
	const struct account *acct = a ? auth_find(a, args[0]) : NULL;
	int r;
	if (a == NULL) {
		fprintf(stderr, "%s\n", err);
		r = EXIT_CONFIG;
	} else if (acct == NULL) {
		fprintf(stderr, "postling deliver: no such local account: %s\n", args[0]);
		r = EX_NOUSER;
	} else if (mkdir(cfg->server.data_dir, 0755) == -1 && errno != EEXIST) {
		fprintf(stderr, "postling deliver: cannot create %s: %s\n", cfg->server.data_dir, strerror(errno));
		r = EX_TEMPFAIL;
	} else if (server_drop_privileges(cfg) == -1) {
		/* files written as root would be unreadable to the server */
		fprintf(stderr, "postling deliver: cannot become '%s'\n", cfg->server.user);
		r = EX_TEMPFAIL;
	} else {
		r = deliver_stdin(cfg, acct);
	}
	auth_unref(&a);
	return r;
}

int cli_deliver(int argc, char **argv)
{
	static const char usage[] =
	    "usage: postling deliver [-c FILE | --demo] ADDRESS < message\n"
	    "Delivers one message from standard input into the INBOX of a local account\n"
	    "(or alias), durably (fsync before exit 0). Exit codes as dovecot-lda:\n"
	    "67 unknown user, 75 temporary failure.\n";
	return run_with_config(argc, argv, usage, one_arg, deliver_main);
}

/* ---- queue (read-only: the files are replaced atomically by the server) ---- */

static const char *const rcpt_state_names[] = { "pending", "delivered", "deferred", "failed" };

static void queue_print_line(const struct queue_env *env)
{
	char when[32];
	struct tm tm;
	time_t t = env->created;
	localtime_r(&t, &tm);
	strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", &tm);
	size_t open = 0;
	for (size_t i = 0; i < env->nrcpts; i++)
		open += env->rcpts[i].state == Q_PENDING || env->rcpts[i].state == Q_DEFERRED;
	printf("%s  %s  <%s>  %zu/%zu recipients open, %u attempts\n", env->id, when, env->sender,
	    open, env->nrcpts, env->attempts);
}

static void queue_print_env(const struct queue_env *env)
{
	queue_print_line(env);
	for (size_t i = 0; i < env->nrcpts; i++) {
		const struct queue_rcpt *q = &env->rcpts[i];
		printf("  <%s> %s, %u attempts%s%s%s%s\n", q->addr, rcpt_state_names[q->state], q->attempts,
		    q->remote_mta[0] ? ", last host " : "", q->remote_mta,
		    q->last_reply[0] ? ": " : "", q->last_reply);
	}
}

static int queue_show(const char *dir, const char *id)
{
	struct queue_env env;
	if (!queue_id_valid(id) || queue_read_env(dir, id, &env) == -1) {
		fprintf(stderr, "postling queue: no queue entry %s\n", id);
		return 1;
	}
	queue_print_env(&env);
	queue_env_free(&env);
	return 0;
}

static int queue_list_all(const char *dir)
{
	char **ids = NULL;
	size_t n = 0;
	int r = 0;
	if (queue_list(dir, &ids, &n) == -1 && errno != ENOENT) {
		fprintf(stderr, "postling queue: %s: %s\n", dir, strerror(errno));
		r = 1;
	}
	for (size_t i = 0; i < n; i++) {
		struct queue_env env;
		if (queue_read_env(dir, ids[i], &env) == 0) {
			queue_print_line(&env);
			queue_env_free(&env);
		}
	}
	printf("%zu queued\n", n);
	xfree_strv(&ids);
	return r;
}

static bool queue_args_ok(char **args, int nargs)
{
	if (nargs == 1)
		return strcmp(args[0], "list") == 0 || strcmp(args[0], "flush") == 0;
	return nargs == 2 && (strcmp(args[0], "show") == 0 || strcmp(args[0], "delete") == 0 ||
	    strcmp(args[0], "bounce") == 0);
}

/* flush, delete, bounce: through the running server's control socket, so its
 * scheduler (which owns the entries) does the work. With no server running,
 * delete removes the files itself (nothing else can be using them). */
static int queue_control(const struct config *cfg, const char *verb, const char *id)
{
	if (id != NULL && !queue_id_valid(id)) {
		fprintf(stderr, "postling queue: '%s' is not a queue id\n", id);
		return 1;
	}
	char req[64], reply[512];
	snprintf(req, sizeof(req), "%s%s%s", verb, id ? " " : "", id ? id : "");
	if (control_request(cfg->server.data_dir, req, reply, sizeof(reply)) == 0) {
		bool ok = strncmp(reply, "ok ", 3) == 0;
		fprintf(ok ? stdout : stderr, "%s\n", ok ? reply + 3 : strncmp(reply, "error ", 6) == 0 ?
		    reply + 6 : reply);
		return ok ? 0 : 1;
	}
	if (errno != ENOENT && errno != ECONNREFUSED) {
		char *path = control_path(cfg->server.data_dir);
		fprintf(stderr, "postling queue: %s: %s\n", path, strerror(errno));
		free(path);
		return 1;
	}
	if (strcmp(verb, "delete") != 0) {
		fprintf(stderr, "postling queue: no server is running on %s; %s\n", cfg->server.data_dir,
		    strcmp(verb, "flush") == 0 ? "the queue is tried as soon as it starts"
		    : "bounce needs the running server (it writes the DSN); start it, or use delete");
		return 1;
	}
	char *dir = queue_dir_path(cfg->server.data_dir);
	struct queue_env env;
	int r = 0;
	if (queue_read_env(dir, id, &env) == -1) {
		fprintf(stderr, "postling queue: no queue entry %s\n", id);
		r = 1;
	} else {
		queue_env_free(&env);
		if (queue_remove(dir, id) == -1) {
			fprintf(stderr, "postling queue: removing %s: %s\n", id, strerror(errno));
			r = 1;
		} else {
			printf("%s deleted (no server running)\n", id);
		}
	}
	free(dir);
	return r;
}

static int queue_main(const struct config *cfg, const struct cli_opts *o, char **args, int nargs)
{
	(void)o;
	if (strcmp(args[0], "list") != 0 && strcmp(args[0], "show") != 0)
		return queue_control(cfg, args[0], nargs == 2 ? args[1] : NULL);
	char *dir = queue_dir_path(cfg->server.data_dir);
	int r = nargs == 2 ? queue_show(dir, args[1]) : queue_list_all(dir);
	free(dir);
	return r;
}

int cli_queue(int argc, char **argv)
{
	static const char usage[] =
	    "usage: postling queue [-c FILE] list\n"
	    "       postling queue [-c FILE] show ID\n"
	    "       postling queue [-c FILE] flush\n"
	    "       postling queue [-c FILE] delete ID\n"
	    "       postling queue [-c FILE] bounce ID\n"
	    "list and show read the relay queue under <data_dir>/queue (an entry's recipients\n"
	    "with their state and the last remote reply). flush retries every deferred entry\n"
	    "now; delete drops an entry silently; bounce fails its open recipients and sends\n"
	    "the sender a DSN. These three talk to the running server through\n"
	    "<data_dir>/control.sock (delete works on the files when no server runs).\n";
	return run_with_config(argc, argv, usage, queue_args_ok, queue_main);
}

/* ---- dns-records, dkim-keygen ---- */

/* One TXT record: RFC 1035 §3.3.14 character-strings hold at most 255
 * octets, so longer text (a 2048-bit DKIM key) is split into several quoted
 * strings, which DNS clients join back (RFC 7208 §3.3, RFC 6376 §3.6.2.2). */
static void print_txt(const char *name, const char *text)
{
	printf("%s.\tIN\tTXT\t", name);
	size_t len = strlen(text);
	for (size_t i = 0; i < len || i == 0; i += 255) {
		size_t n = len - i < 255 ? len - i : 255;
		printf("%s\"%.*s\"", i ? " " : "", (int)n, text + i);
		if (len == 0)
			break;
	}
	printf("\n");
}

static void print_dkim_record(const struct cfg_dkim *d)
{
	char *txt = dkim_dns_txt(d->pkey);
	char *name = xasprintf("%s._domainkey.%s", d->selector, d->domain);
	if (txt != NULL)
		print_txt(name, txt);
	else
		printf("; %s: cannot export the public key of %s\n", name, d->key);
	free(name);
	free(txt);
}

static bool cfg_has_domain(const struct config *cfg, const char *domain)
{
	for (size_t i = 0; i < cfg->ndomains; i++)
		if (strcmp(cfg->domains[i], domain) == 0)
			return true;
	return false;
}

/* The records of one domain: MX, SPF and DMARC for a local one, and the DKIM
 * key records of every configured selector. */
static void print_domain_records(const struct config *cfg, const char *domain, bool local)
{
	printf("\n; ---- %s\n", domain);
	if (local) {
		printf("%s.\tIN\tMX\t10 %s.\n", domain, cfg->server.hostname);
		print_txt(domain, "v=spf1 mx ~all");
		char *dmarc = xasprintf("v=DMARC1; p=quarantine; rua=mailto:postmaster@%s", domain);
		char *name = xasprintf("_dmarc.%s", domain);
		print_txt(name, dmarc);
		free(name);
		free(dmarc);
	}
	bool any = false;
	for (size_t i = 0; i < cfg->ndkim; i++) {
		if (strcmp(cfg->dkim[i].domain, domain) == 0) {
			print_dkim_record(&cfg->dkim[i]);
			any = true;
		}
	}
	if (!any)
		printf("; no DKIM key for %s: create one with `postling dkim-keygen %s`\n", domain, domain);
}

static int dns_records_main(const struct config *cfg, const struct cli_opts *o, char **args, int nargs)
{
	(void)o;
	(void)args;
	(void)nargs;
	const char *host = cfg->server.hostname;
	printf("; DNS records to publish for Postling on %s (postling dns-records, %s).\n"
	    "; Zone-file syntax (RFC 1035 §5): absolute names, the zone's default TTL.\n"
	    "; Not printed: the A/AAAA records of %s (its public addresses), and\n"
	    "; the reverse DNS (PTR) of those addresses, which must name %s:\n"
	    "; ask whoever runs the addresses.\n"
	    "; Defaults chosen here, to adjust as you like:\n"
	    ";  SPF   \"v=spf1 mx ~all\": the domain's MX hosts send its mail, others soft-fail;\n"
	    ";        \"-all\" once every sender of the domain's mail is listed.\n"
	    ";  DMARC p=quarantine: mail that passes neither aligned SPF nor DKIM goes to\n"
	    ";        spam; aggregate reports (rua) to postmaster@ the domain. p=none only\n"
	    ";        watches (a first step); p=reject once the reports show all is well.\n"
	    ";  MX    preference 10, the only exchanger: this server.\n",
	    host, cfg->path, host, host);
	if (cfg->relay.smarthost[0] != '\0')
		printf("; Mail leaves through the smarthost %s: add its SPF mechanism\n"
		    "; (e.g. include:...) to each domain's SPF record.\n", cfg->relay.smarthost);
	for (size_t i = 0; i < cfg->ndomains; i++)
		print_domain_records(cfg, cfg->domains[i], true);
	/* keys for domains that are not local (mail sent in their name) */
	for (size_t i = 0; i < cfg->ndkim; i++) {
		bool seen = cfg_has_domain(cfg, cfg->dkim[i].domain);
		for (size_t j = 0; j < i && !seen; j++)
			seen = strcmp(cfg->dkim[j].domain, cfg->dkim[i].domain) == 0;
		if (!seen)
			print_domain_records(cfg, cfg->dkim[i].domain, false);
	}
	/* RFC 7208 §2.3: receivers check the HELO name too; it only ever sends
	 * as itself. Not when it is a mail domain (one SPF record per name). */
	if (!cfg_has_domain(cfg, host)) {
		printf("\n; ---- %s (this server's name: EHLO, bounces)\n", host);
		print_txt(host, "v=spf1 a -all");
	}
	return 0;
}

int cli_dns_records(int argc, char **argv)
{
	static const char usage[] =
	    "usage: postling dns-records [-c FILE] [-o key.path=value ...]\n"
	    "Prints, in zone-file syntax, the records to publish for each local domain: MX\n"
	    "(-> server.hostname), SPF, DMARC, and the DKIM key record of each `dkim:`\n"
	    "entry (long TXT values split into 255-octet strings).\n";
	return run_with_config(argc, argv, usage, no_args, dns_records_main);
}

struct keygen_opts {
	struct cli_opts o;
	const char *selector;        /* NULL: "s" or "e" + YYYYMM */
	enum dkim_alg alg;
	int bits;
};

/* -c, -o, --selector, --type, --bits, -h; the same return values as parse_opts. */
static int keygen_parse(int argc, char **argv, const char *usage, struct keygen_opts *k)
{
	static const struct option longopts[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "override", required_argument, NULL, 'o' },
		{ "selector", required_argument, NULL, 's' },
		{ "type", required_argument, NULL, 't' },
		{ "bits", required_argument, NULL, 'b' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	memset(k, 0, sizeof(*k));
	k->o.config = DEFAULT_CONFIG;
	k->alg = DKIM_RSA_SHA256;
	k->bits = DKIM_RSA_DEFAULT_BITS;
	optind = 1;
	int ch;
	char *end;
	while ((ch = getopt_long(argc, argv, "c:o:s:t:b:h", longopts, NULL)) != -1) {
		switch (ch) {
		case 'c': k->o.config = optarg; break;
		case 'o':
			k->o.overrides = xreallocarray(k->o.overrides, k->o.noverrides + 1, sizeof(char *));
			k->o.overrides[k->o.noverrides++] = optarg;
			break;
		case 's': k->selector = optarg; break;
		case 't':
			if (strcmp(optarg, "rsa") != 0 && strcmp(optarg, "ed25519") != 0)
				goto bad;
			k->alg = strcmp(optarg, "rsa") == 0 ? DKIM_RSA_SHA256 : DKIM_ED25519_SHA256;
			break;
		case 'b':
			k->bits = (int)strtol(optarg, &end, 10);
			if (*end != '\0' || k->bits < DKIM_RSA_MIN_BITS || k->bits > DKIM_RSA_MAX_BITS)
				goto bad;
			break;
		case 'h':
			printf("%s", usage);
			return -1;
		default:
			goto bad;
		}
	}
	k->o.optind = optind;
	return 0;
bad:
	fprintf(stderr, "%s", usage);
	return -2;
}

/* Root writing a key for a server that drops privileges: the server must
 * still read it at a reload (SIGHUP), after the drop. */
static void keygen_chown(const struct config *cfg, const char *path)
{
	if (geteuid() != 0 || cfg->server.user[0] == '\0')
		return;
	struct passwd *pw = getpwnam(cfg->server.user);
	if (pw != NULL && chown(path, pw->pw_uid, pw->pw_gid) == -1)
		fprintf(stderr, "postling dkim-keygen: chown %s: %s\n", path, strerror(errno));
}

/* <data_dir>/dkim/<domain>.<selector>.key, 0600, never over an existing file. */
static int keygen_write(const struct config *cfg, const char *path, const char *pem, size_t len)
{
	char *dir = xasprintf("%s/dkim", cfg->server.data_dir);
	int r = -1;
	if ((mkdir(cfg->server.data_dir, 0755) == -1 && errno != EEXIST) ||
	    (mkdir(dir, 0700) == -1 && errno != EEXIST)) {
		fprintf(stderr, "postling dkim-keygen: mkdir %s: %s\n", dir, strerror(errno));
		free(dir);
		return -1;
	}
	keygen_chown(cfg, dir);
	int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd == -1) {
		fprintf(stderr, "postling dkim-keygen: %s: %s\n", path, errno == EEXIST
		    ? "exists already (choose another --selector)" : strerror(errno));
	} else if (util_write_all(fd, pem, len) == -1 || fsync(fd) == -1) {
		fprintf(stderr, "postling dkim-keygen: writing %s: %s\n", path, strerror(errno));
		unlink(path);
	} else {
		keygen_chown(cfg, path);
		r = 0;
	}
	if (fd != -1)
		close(fd);
	free(dir);
	return r;
}

static int keygen_run(const struct config *cfg, const struct keygen_opts *k, const char *domain,
    const char *selector)
{
	char err[256];
	struct dkim_key *key = dkim_key_generate(k->alg, k->bits, err, sizeof(err));
	if (key == NULL) {
		fprintf(stderr, "postling dkim-keygen: %s\n", err);
		return 1;
	}
	size_t len = 0;
	char *pem = dkim_key_pem(key, &len);
	char *path = xasprintf("%s/dkim/%s.%s.key", cfg->server.data_dir, domain, selector);
	int r = pem != NULL && keygen_write(cfg, path, pem, len) == 0 ? 0 : 1;
	if (r == 0) {
		struct cfg_dkim d = { (char *)domain, (char *)selector, path, key };
		char what[32];
		snprintf(what, sizeof(what), k->alg == DKIM_RSA_SHA256 ? "RSA, %d bits" : "Ed25519",
		    dkim_key_bits(key));
		printf("Wrote %s (%s).\n\n"
		    "1. Add to the configuration, then reload (SIGHUP) or restart the server:\n\n"
		    "dkim:\n  - { domain: %s, selector: %s, key: %s }\n\n"
		    "2. Publish this DNS record (`postling dns-records` prints it too):\n\n",
		    path, what, domain, selector, path);
		print_dkim_record(&d);
	}
	if (pem != NULL)
		explicit_bzero(pem, len);
	free(pem);
	free(path);
	dkim_key_unref(&key);
	return r;
}

int cli_dkim_keygen(int argc, char **argv)
{
	static const char usage[] =
	    "usage: postling dkim-keygen [-c FILE] [--selector S] [--type rsa|ed25519] [--bits N] DOMAIN\n"
	    "Creates a DKIM signing key under <data_dir>/dkim/ (mode 0600) and prints the\n"
	    "`dkim:` configuration entry and the DNS record to publish. Defaults: RSA of\n"
	    "2048 bits (--bits 1024..8192), selector s<YYYYMM> (e<YYYYMM> for ed25519).\n"
	    "For both algorithms (RFC 8463 §4) run it twice; receivers without ed25519\n"
	    "use the RSA signature.\n";
	struct keygen_opts k;
	int r = keygen_parse(argc, argv, usage, &k);
	if (r < 0)
		return opts_exit(r);
	if (argc - k.o.optind != 1) {
		fprintf(stderr, "%s", usage);
		cli_opts_free(&k.o);
		return EX_USAGE;
	}
	char *domain = xstrdup(argv[k.o.optind]), selector[64];
	for (char *p = domain; *p != '\0'; p++)
		*p = (char)tolower((unsigned char)*p);
	time_t now = time(NULL);
	struct tm tm;
	gmtime_r(&now, &tm);
	strftime(selector, sizeof(selector), k.alg == DKIM_ED25519_SHA256 ? "e%Y%m" : "s%Y%m", &tm);
	if (k.selector != NULL)
		snprintf(selector, sizeof(selector), "%s", k.selector);
	struct config *cfg = NULL;
	if (!dkim_name_valid(domain) || strchr(domain, '.') == NULL) {
		fprintf(stderr, "postling dkim-keygen: '%s' is not a domain name\n", domain);
		r = EX_USAGE;
	} else if (!dkim_name_valid(selector) || strlen(selector) > 63) {
		fprintf(stderr, "postling dkim-keygen: '%s' is not a selector (letters, digits, '-')\n",
		    selector);
		r = EX_USAGE;
	} else if ((cfg = load_config(&k.o)) == NULL) {
		r = EXIT_CONFIG;
	} else {
		r = keygen_run(cfg, &k, domain, selector);
	}
	cfg_free(&cfg);
	free(domain);
	cli_opts_free(&k.o);
	return r;
}
