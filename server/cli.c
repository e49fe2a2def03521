/* cli.c: subcommands other than the reactor itself: serve's option parsing,
 * check-config, passwd, user add/del/list, deliver (like dovecot-lda). */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
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
	return (nargs == 1 && strcmp(args[0], "list") == 0) || (nargs == 2 && strcmp(args[0], "show") == 0);
}

static int queue_main(const struct config *cfg, const struct cli_opts *o, char **args, int nargs)
{
	(void)o;
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
	    "Lists the relay queue under <data_dir>/queue, or shows one entry's recipients\n"
	    "with their state and the last remote reply.\n";
	return run_with_config(argc, argv, usage, queue_args_ok, queue_main);
}
