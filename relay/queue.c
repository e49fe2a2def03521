/* queue.c: the durable relay queue (design §6); format and rules in relay.h.
 *
 * Everything but queue_submit/queue_cancel blocks: aio workers and the CLI.
 * The writers use the Maildir pattern (maildir_create_file and
 * maildir_replace_file: tmp file, fsync, link or rename into place, fsync the
 * directory); fields are split, numbers read and strings %XX-escaped by
 * common/record.h. The .msg is made durable before its .env is created, so
 * after any crash an .env never names a missing .msg. No state is shared
 * between threads except the test-only fault hook, which is set while
 * nothing runs. */
#include "relay/relay.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/log.h"
#include "common/record.h"
#include "common/util.h"
#include "common/xmalloc.h"
#include "store/store.h"

#define QUEUE_MAGIC "POSTLING-QUEUE 1"
#define TIME_MAX 253402300799ULL     /* 9999-12-31T23:59:59Z */
#define ID_TIME_CHARS 8              /* 40 bits of seconds, then 40 random bits */

/* RFC 4648 §7 base32hex, lowercased: ASCII order is numeric order */
static const char id_alpha[] = "0123456789abcdefghijklmnopqrstuv";

static queue_fault_fn fault_hook;

/* ------------------------------------------------------------ ids, faults */

static void id_encode(uint64_t v, char *out, int nchars)
{
	for (int i = nchars - 1; i >= 0; i--) {
		out[i] = id_alpha[v & 31];
		v >>= 5;
	}
}

void queue_new_id(char out[QUEUE_ID_LEN + 1])
{
	id_encode((uint64_t)time(NULL), out, ID_TIME_CHARS);
	id_encode(util_random64(), out + ID_TIME_CHARS, QUEUE_ID_LEN - ID_TIME_CHARS);
	out[QUEUE_ID_LEN] = '\0';
}

/* p[0..len) (not necessarily NUL-terminated) is an id */
static bool id_chars_ok(const char *p, size_t len)
{
	if (len != QUEUE_ID_LEN)
		return false;
	for (size_t i = 0; i < len; i++)
		if (p[i] == '\0' || memchr(id_alpha, p[i], sizeof(id_alpha) - 1) == NULL)
			return false;
	return true;
}

bool queue_id_valid(const char *id)
{
	return id != NULL && id_chars_ok(id, strnlen(id, QUEUE_ID_LEN + 1));
}

void queue_set_fault_hook(queue_fault_fn hook)
{
	fault_hook = hook;
}

static int fault(const char *file, const char *step)
{
	int err = fault_hook != NULL ? fault_hook(file, step) : 0;
	if (err == 0)
		return 0;
	errno = err;
	return -1;
}

/* ------------------------------------------------------------ strings */

/* <str> fields: "-" for "", "%2D" for "-" (relay.h) */
#define STR_ESC RECORD_ESC_DASH

static void put_str(struct buf *b, const char *s)
{
	buf_appendc(b, ' ');
	record_escape(b, s, STR_ESC);
}

/* Index of the name f in names[0..n), or -1. */
static int name_lookup(const char *const *names, size_t n, const char *f, size_t len)
{
	for (size_t i = 0; i < n; i++)
		if (record_field_is(f, len, names[i]))
			return (int)i;
	return -1;
}

/* ------------------------------------------------------------ value types */

static const char *const ret_names[] = { "-", "FULL", "HDRS" };
static const char *const body_names[] = { "7BIT", "8BITMIME", "BINARYMIME" };
static const char *const bool_names[] = { "0", "1" };
static const char *const state_names[] = { "pending", "delivered", "deferred", "failed" };
/* bit i+1 of notify; NEVER (bit 0) stands alone */
static const char *const notify_names[] = { "SUCCESS", "FAILURE", "DELAY" };

#define NELEM(a) (sizeof(a) / sizeof((a)[0]))

static bool notify_valid(unsigned n)
{
	return n <= 0xf && !((n & QUEUE_NOTIFY_NEVER) && n != QUEUE_NOTIFY_NEVER);
}

static void put_notify(struct buf *b, unsigned n)
{
	if (n == 0 || n == QUEUE_NOTIFY_NEVER) {
		buf_appends(b, n == 0 ? " -" : " NEVER");
		return;
	}
	const char *sep = " ";
	for (size_t i = 0; i < NELEM(notify_names); i++) {
		if (n & (2u << i)) {
			buf_printf(b, "%s%s", sep, notify_names[i]);
			sep = ",";
		}
	}
}

/* The form put_notify writes: "-", "NEVER", or names in table order, no repeats. */
static bool get_notify(const char *f, size_t len, unsigned *r)
{
	*r = 0;
	if (record_field_is(f, len, "-"))
		return true;
	if (record_field_is(f, len, "NEVER")) {
		*r = QUEUE_NOTIFY_NEVER;
		return true;
	}
	const char *p = f, *end = f + len;
	int prev = -1;
	for (;;) {
		const char *comma = memchr(p, ',', (size_t)(end - p));
		const char *e = comma != NULL ? comma : end;
		int i = name_lookup(notify_names, NELEM(notify_names), p, (size_t)(e - p));
		if (i <= prev)
			return false;
		*r |= 2u << i;
		prev = i;
		if (comma == NULL)
			return true;
		p = comma + 1;
	}
}

/* ------------------------------------------------------------ header fields */

enum fkind { F_ID, F_STR, F_RET, F_BOOL, F_BODY, F_TIME, F_U32 };

struct field {
	const char *key;
	enum fkind kind;
	size_t off;                  /* in struct queue_env */
};

#define FLD(key, kind, member) { key, kind, offsetof(struct queue_env, member) }
static const struct field fields[] = {
	FLD("id", F_ID, id),
	FLD("sender", F_STR, sender),               /* RFC 5321 §4.1.1.2 */
	FLD("ret", F_RET, ret),                     /* RFC 3461 §4.3 */
	FLD("envid", F_STR, envid),                 /* RFC 3461 §4.4 */
	FLD("smtputf8", F_BOOL, smtputf8),          /* RFC 6531 §3.4 */
	FLD("body", F_BODY, body),                  /* RFC 6152, RFC 3030 §3 */
	FLD("auth-user", F_STR, auth_user),
	FLD("client-ip", F_STR, client_ip),
	FLD("helo", F_STR, helo),                   /* RFC 5321 §4.1.1.1 */
	FLD("created", F_TIME, created),
	FLD("attempts", F_U32, attempts),
	FLD("next-attempt", F_TIME, next_attempt),
	FLD("last-attempt", F_TIME, last_attempt),
	FLD("warned", F_BOOL, warned),              /* delay DSN (RFC 3464) sent */
};
#undef FLD
#define ALL_FIELDS ((1u << NELEM(fields)) - 1)

static bool time_ok(time_t t)
{
	return t >= 0 && (unsigned long long)t <= TIME_MAX;
}

static void put_field(struct buf *b, const struct queue_env *env, const struct field *fd)
{
	const void *p = (const char *)env + fd->off;
	buf_appends(b, fd->key);
	switch (fd->kind) {
	case F_ID: buf_printf(b, " %s", (const char *)p); break;
	case F_STR: put_str(b, *(char *const *)p); break;
	case F_RET: buf_printf(b, " %s", ret_names[*(const enum queue_ret *)p]); break;
	case F_BOOL: buf_printf(b, " %s", bool_names[*(const bool *)p]); break;
	case F_BODY: buf_printf(b, " %s", body_names[*(const enum queue_body *)p]); break;
	case F_TIME: buf_printf(b, " %lld", (long long)*(const time_t *)p); break;
	case F_U32: buf_printf(b, " %lu", (unsigned long)*(const uint32_t *)p); break;
	}
	buf_appendc(b, '\n');
}

/* One value f[0..len) into the member; false when not canonical or out of range. */
static bool get_field(struct queue_env *env, const struct field *fd, const char *f, size_t len)
{
	void *p = (char *)env + fd->off;
	uint64_t v;
	int i = -1;
	switch (fd->kind) {
	case F_ID:
		if (!id_chars_ok(f, len))
			return false;
		memcpy(env->id, f, QUEUE_ID_LEN);
		return true;
	case F_STR: return (*(char **)p = record_unescape(f, len, STR_ESC)) != NULL;
	case F_RET: i = name_lookup(ret_names, NELEM(ret_names), f, len); break;
	case F_BODY: i = name_lookup(body_names, NELEM(body_names), f, len); break;
	case F_BOOL: i = name_lookup(bool_names, NELEM(bool_names), f, len); break;
	case F_TIME:
	case F_U32:
		if (!record_num(f, len, 0, fd->kind == F_TIME ? TIME_MAX : UINT32_MAX, &v))
			return false;
		if (fd->kind == F_TIME)
			*(time_t *)p = (time_t)v;
		else
			*(uint32_t *)p = (uint32_t)v;
		return true;
	}
	if (i < 0)
		return false;
	if (fd->kind == F_RET)
		*(enum queue_ret *)p = (enum queue_ret)i;
	else if (fd->kind == F_BODY)
		*(enum queue_body *)p = (enum queue_body)i;
	else
		*(bool *)p = i == 1;
	return true;
}

/* ------------------------------------------------------------ format */

static bool rcpt_valid(const struct queue_rcpt *r)
{
	return r->addr != NULL && r->addr[0] != '\0' && notify_valid(r->notify) &&
	    (unsigned)r->state <= Q_FAILED && time_ok(r->updated);
}

static bool env_valid(const struct queue_env *env)
{
	if (!queue_id_valid(env->id) || env->nrcpts == 0 || env->nrcpts > QUEUE_RCPT_MAX)
		return false;
	if ((unsigned)env->ret > QUEUE_RET_HDRS || (unsigned)env->body > QUEUE_BODY_BINARYMIME)
		return false;
	if (!time_ok(env->created) || !time_ok(env->next_attempt) || !time_ok(env->last_attempt))
		return false;
	for (size_t i = 0; i < env->nrcpts; i++)
		if (!rcpt_valid(&env->rcpts[i]))
			return false;
	return true;
}

static void put_rcpt(struct buf *b, const struct queue_rcpt *r)
{
	buf_appends(b, "rcpt");
	put_str(b, r->addr);
	put_str(b, r->orcpt);
	put_notify(b, r->notify);
	buf_printf(b, " %s %lu %lld", state_names[r->state], (unsigned long)r->attempts,
	    (long long)r->updated);
	put_str(b, r->remote_mta);
	put_str(b, r->last_reply);
	buf_appendc(b, '\n');
}

char *queue_env_format(const struct queue_env *env, size_t *len_r)
{
	struct buf b;
	if (!env_valid(env)) {
		errno = EINVAL;
		return NULL;
	}
	/* no cap while building (the input is already in memory); checked below */
	buf_init(&b, SIZE_MAX / 2);
	buf_appends(&b, QUEUE_MAGIC "\n");
	for (size_t i = 0; i < NELEM(fields); i++)
		put_field(&b, env, &fields[i]);
	for (size_t i = 0; i < env->nrcpts; i++)
		put_rcpt(&b, &env->rcpts[i]);
	buf_printf(&b, "end %zu\n", env->nrcpts);
	if (b.len > QUEUE_ENV_MAX_BYTES) {
		buf_free(&b);
		errno = EMSGSIZE;
		return NULL;
	}
	return buf_steal(&b, len_r);
}

/* ------------------------------------------------------------ parse */

struct parser {
	struct queue_env *env;
	size_t cap;                  /* rcpts allocated */
	unsigned seen;               /* bit i: fields[i] given */
	bool ended;                  /* "end" line seen */
};

#define FS_NUM(fs, i, max, r) record_num((fs)->p[i], (fs)->len[i], 0, (max), (r))
#define FS_STR(fs, i) record_unescape((fs)->p[i], (fs)->len[i], STR_ESC)

static bool parse_rcpt(struct parser *ps, const struct record_fields *fs)
{
	struct queue_env *env = ps->env;
	uint64_t att, upd;
	if (fs->n != 9 || env->nrcpts == QUEUE_RCPT_MAX)
		return false;
	if (env->nrcpts == ps->cap) {
		ps->cap = ps->cap == 0 ? 4 : ps->cap * 2;
		env->rcpts = xreallocarray(env->rcpts, ps->cap, sizeof(*env->rcpts));
	}
	struct queue_rcpt *r = &env->rcpts[env->nrcpts++];
	memset(r, 0, sizeof(*r));
	int st = name_lookup(state_names, NELEM(state_names), fs->p[4], fs->len[4]);
	if (st < 0 || !get_notify(fs->p[3], fs->len[3], &r->notify) || !FS_NUM(fs, 5, UINT32_MAX, &att) ||
	    !FS_NUM(fs, 6, TIME_MAX, &upd))
		return false;
	r->state = (enum queue_rcpt_state)st;
	r->attempts = (uint32_t)att;
	r->updated = (time_t)upd;
	return (r->addr = FS_STR(fs, 1)) != NULL && r->addr[0] != '\0' && (r->orcpt = FS_STR(fs, 2)) != NULL &&
	    (r->remote_mta = FS_STR(fs, 7)) != NULL && (r->last_reply = FS_STR(fs, 8)) != NULL;
}

static bool parse_header_field(struct parser *ps, const struct record_fields *fs)
{
	for (size_t i = 0; i < NELEM(fields); i++) {
		if (!record_field_is(fs->p[0], fs->len[0], fields[i].key))
			continue;
		if ((ps->seen & (1u << i)) || fs->n != 2)
			return false;
		ps->seen |= 1u << i;
		return get_field(ps->env, &fields[i], fs->p[1], fs->len[1]);
	}
	return false;   /* unknown field */
}

/* One line [p, end) after the magic, without its LF. */
static bool parse_line(struct parser *ps, const char *p, const char *end)
{
	struct record_fields fs;
	if (ps->ended)
		return false;                /* nothing may follow "end" */
	if (end - p >= 2 && p[0] == 'x' && p[1] == '-')
		return true;                 /* extension field: ignored */
	if (!record_split(p, (size_t)(end - p), &fs))
		return false;
	if (record_field_is(fs.p[0], fs.len[0], "rcpt"))
		return parse_rcpt(ps, &fs);
	if (record_field_is(fs.p[0], fs.len[0], "end")) {
		uint64_t n;
		ps->ended = true;
		return fs.n == 2 && FS_NUM(&fs, 1, QUEUE_RCPT_MAX, &n) && n == ps->env->nrcpts;
	}
	return parse_header_field(ps, &fs);
}

static int parse_fail(struct queue_env *env, size_t *line_r, size_t line)
{
	queue_env_free(env);
	if (line_r != NULL)
		*line_r = line;
	errno = EBADMSG;
	return -1;
}

int queue_env_parse(const char *data, size_t len, struct queue_env *env_r, size_t *line_r)
{
	struct parser ps = { .env = env_r };
	const char *p = data, *end = data + len;
	size_t line = 1;

	memset(env_r, 0, sizeof(*env_r));
	if (len > QUEUE_ENV_MAX_BYTES)
		return parse_fail(env_r, line_r, 0);
	for (; p < end; line++) {
		/* a last line without its LF is a torn write */
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		bool ok = nl != NULL && (line == 1 ? record_field_is(p, (size_t)(nl - p), QUEUE_MAGIC) :
		    parse_line(&ps, p, nl));
		if (!ok)
			return parse_fail(env_r, line_r, line);
		p = nl + 1;
	}
	if (line == 1)
		return parse_fail(env_r, line_r, 1);   /* empty file: no magic */
	if (!ps.ended || ps.seen != ALL_FIELDS || env_r->nrcpts == 0)
		return parse_fail(env_r, line_r, 0);
	if (line_r != NULL)
		*line_r = 0;
	return 0;
}

/* ------------------------------------------------------------ env memory */

static void rcpt_free(struct queue_rcpt *r)
{
	free(r->addr);
	free(r->orcpt);
	free(r->last_reply);
	free(r->remote_mta);
}

void queue_env_free(struct queue_env *env)
{
	if (env == NULL)
		return;
	for (size_t i = 0; i < env->nrcpts; i++)
		rcpt_free(&env->rcpts[i]);
	free(env->rcpts);
	free(env->sender);
	free(env->envid);
	free(env->auth_user);
	free(env->client_ip);
	free(env->helo);
	memset(env, 0, sizeof(*env));
}

static char *dup0(const char *s)
{
	return xstrdup(s != NULL ? s : "");
}

void queue_env_copy(struct queue_env *dst, const struct queue_env *src)
{
	*dst = *src;
	dst->sender = dup0(src->sender);
	dst->envid = dup0(src->envid);
	dst->auth_user = dup0(src->auth_user);
	dst->client_ip = dup0(src->client_ip);
	dst->helo = dup0(src->helo);
	dst->rcpts = src->nrcpts > 0 ? xreallocarray(NULL, src->nrcpts, sizeof(*dst->rcpts)) : NULL;
	for (size_t i = 0; i < src->nrcpts; i++) {
		struct queue_rcpt *d = &dst->rcpts[i];
		*d = src->rcpts[i];
		d->addr = dup0(d->addr);
		d->orcpt = dup0(d->orcpt);
		d->last_reply = dup0(d->last_reply);
		d->remote_mta = dup0(d->remote_mta);
	}
}

/* ------------------------------------------------------------ files */

static int fsync_dir(const char *dir)
{
	if (fault("dir", "fsync") == -1)
		return -1;
	return maildir_fsync_dir(dir);
}

/* "<dir>/<id>.<ext>", ext "msg" or "env"; malloc'ed */
static char *entry_path(const char *dir, const char *id, const char *ext)
{
	return xasprintf("%s/%s.%s", dir, id, ext);
}

/* maildir_file step hook -> the test fault hook: "msg"/"env" (what) steps,
 * and the directory fsync as "dir" "fsync". */
static int file_step(const char *step, const void *what)
{
	return strcmp(step, "fsync-dir") == 0 ? fault("dir", "fsync") : fault(what, step);
}

/* <dir>/<id>.<what> (what: "msg" or "env") holding data[0..len): made new
 * (link; EEXIST rather than clobber on an id collision) or replaced (rename). */
static int put_file(const char *dir, const char *id, const char *what, const char *data, size_t len,
    bool replace)
{
	const struct maildir_file f = { .data = data, .len = len, .step = file_step, .step_arg = what };
	char *name = xasprintf("%s.%s", id, what);
	int rc = replace ? maildir_replace_file(dir, name, &f) : maildir_create_file(dir, name, &f);
	free(name);
	return rc;
}

/* A whole envelope file, malloc'ed and NUL-terminated; EBADMSG past
 * QUEUE_ENV_MAX_BYTES. O_NOFOLLOW: the queue holds no symlinks of ours. */
static int read_whole(const char *path, char **data_r, size_t *len_r)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd == -1)
		return -1;
	struct buf b;
	char chunk[8192];
	ssize_t n;
	int err = 0;
	buf_init(&b, QUEUE_ENV_MAX_BYTES);
	while (err == 0 && (n = read(fd, chunk, sizeof(chunk))) != 0) {
		if (n == -1)
			err = errno == EINTR ? 0 : errno;
		else if (buf_append(&b, chunk, (size_t)n) == -1)
			err = EBADMSG;           /* over QUEUE_ENV_MAX_BYTES */
	}
	close(fd);
	if (err != 0) {
		buf_free(&b);
		errno = err;
		return -1;
	}
	*data_r = buf_steal(&b, len_r);
	return 0;
}

/* mkdir queue_dir 0700; when made here, its parent is synced so it lasts. */
static int queue_mkdir(const char *dir)
{
	if (mkdir(dir, 0700) == -1)
		return errno == EEXIST ? 0 : -1;
	char *parent = xstrdup(dir);
	char *slash = strrchr(parent, '/');
	int rc = 0;
	if (slash != NULL) {
		*slash = '\0';
		rc = maildir_fsync_dir(slash == parent ? "/" : parent);
	}
	free(parent);
	return rc;
}

/* ------------------------------------------------------------ write */

/* Undo a write whose .env failed (and left nothing): the .msg goes too. */
static void remove_msg(const char *dir, const char *id)
{
	int saved = errno;
	char *msg = entry_path(dir, id, "msg");
	unlink(msg);
	maildir_fsync_dir(dir);
	free(msg);
	errno = saved;
}

int queue_write(const char *queue_dir, const struct queue_env *env, const char *msg, size_t len)
{
	size_t envlen;
	char *text = queue_env_format(env, &envlen);
	if (text == NULL)
		return -1;
	/* the .msg is durable (dir fsync'ed) before the .env is begun */
	int rc = queue_mkdir(queue_dir);
	if (rc == 0)
		rc = put_file(queue_dir, env->id, "msg", msg, len, false);
	if (rc == 0 && (rc = put_file(queue_dir, env->id, "env", text, envlen, false)) == -1)
		remove_msg(queue_dir, env->id);
	free(text);
	return rc;
}

int queue_update_env(const char *queue_dir, const struct queue_env *env)
{
	struct stat st;
	size_t envlen;
	char *text = queue_env_format(env, &envlen);
	if (text == NULL)
		return -1;
	char *path = entry_path(queue_dir, env->id, "env");
	int rc = stat(path, &st);
	free(path);
	if (rc == 0)
		rc = put_file(queue_dir, env->id, "env", text, envlen, true);
	free(text);
	return rc;
}

/* ------------------------------------------------------------ read, remove, list */

int queue_read_env(const char *queue_dir, const char *id, struct queue_env *env_r)
{
	char *data;
	size_t len;
	memset(env_r, 0, sizeof(*env_r));
	if (!queue_id_valid(id)) {
		errno = EINVAL;
		return -1;
	}
	char *path = entry_path(queue_dir, id, "env");
	int rc = read_whole(path, &data, &len);
	free(path);
	if (rc == -1)
		return -1;
	rc = queue_env_parse(data, len, env_r, NULL);
	free(data);
	if (rc == 0 && strcmp(env_r->id, id) != 0) {
		queue_env_free(env_r);   /* a copied or renamed file: not this entry */
		errno = EBADMSG;
		rc = -1;
	}
	return rc;
}

/* unlink; a missing file counts in *gone and is no error */
static int unlink_counted(const char *path, int *gone)
{
	if (unlink(path) == 0)
		return 0;
	if (errno != ENOENT)
		return -1;
	(*gone)++;
	return 0;
}

int queue_remove(const char *queue_dir, const char *id)
{
	if (!queue_id_valid(id)) {
		errno = EINVAL;
		return -1;
	}
	char *env = entry_path(queue_dir, id, "env"), *msg = entry_path(queue_dir, id, "msg");
	int gone = 0;
	int rc = unlink_counted(env, &gone);
	if (rc == 0)
		rc = unlink_counted(msg, &gone);
	if (rc == 0 && gone < 2)
		rc = fsync_dir(queue_dir);
	free(env);
	free(msg);
	if (rc == 0 && gone == 2) {
		errno = ENOENT;
		rc = -1;
	}
	return rc;
}

/* "<id><suffix>" exactly: the id (NUL-terminated) into id_r. */
static bool name_has_id(const char *name, const char *suffix, char id_r[QUEUE_ID_LEN + 1])
{
	if (strlen(name) != QUEUE_ID_LEN + strlen(suffix) || strcmp(name + QUEUE_ID_LEN, suffix) != 0)
		return false;
	memcpy(id_r, name, QUEUE_ID_LEN);
	id_r[QUEUE_ID_LEN] = '\0';
	return queue_id_valid(id_r);
}

static bool is_regular_at(int dfd, const char *name)
{
	struct stat st;
	return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

static int id_cmp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int queue_list(const char *queue_dir, char ***ids_r, size_t *n_r)
{
	char id[QUEUE_ID_LEN + 1];
	size_t n = 0, cap = 16;
	char **ids = xreallocarray(NULL, cap, sizeof(*ids));
	DIR *dir = opendir(queue_dir);
	struct dirent *de;

	while (dir != NULL && (de = readdir(dir)) != NULL) {
		if (!name_has_id(de->d_name, ".env", id) || !is_regular_at(dirfd(dir), de->d_name))
			continue;
		if (n + 1 == cap)
			ids = xreallocarray(ids, cap *= 2, sizeof(*ids));
		ids[n++] = xstrdup(id);
	}
	ids[n] = NULL;
	if (dir == NULL && errno != ENOENT) {
		xfree_strv(&ids);
		return -1;
	}
	if (dir != NULL)
		closedir(dir);
	qsort(ids, n, sizeof(*ids), id_cmp);
	*ids_r = ids;
	*n_r = n;
	return 0;
}

/* A leftover of a crash: <id>.msg.tmp, <id>.env.tmp, or <id>.msg without <id>.env. */
static bool is_leftover(int dfd, const char *name)
{
	char id[QUEUE_ID_LEN + 1], env[QUEUE_ID_LEN + 5];
	if (name_has_id(name, ".msg.tmp", id) || name_has_id(name, ".env.tmp", id))
		return true;
	if (!name_has_id(name, ".msg", id))
		return false;
	memcpy(env, id, QUEUE_ID_LEN);
	memcpy(env + QUEUE_ID_LEN, ".env", 5);
	struct stat st;
	return fstatat(dfd, env, &st, AT_SYMLINK_NOFOLLOW) == -1 && errno == ENOENT;
}

static void log_removed(const char *dir, const char *name)
{
	struct logline *l = log_begin(LL_WARN, "queue.clean");
	log_str(l, "dir", dir);
	log_str(l, "removed", name);
	log_end(l);
}

int queue_clean(const char *queue_dir)
{
	DIR *dir = opendir(queue_dir);
	if (dir == NULL)
		return errno == ENOENT ? 0 : -1;
	struct dirent *de;
	int rc = 0, saved = 0;
	size_t removed = 0;
	while ((de = readdir(dir)) != NULL) {
		if (!is_leftover(dirfd(dir), de->d_name))
			continue;
		if (unlinkat(dirfd(dir), de->d_name, 0) == -1 && errno != ENOENT) {
			rc = -1;
			saved = errno;
			continue;
		}
		log_removed(queue_dir, de->d_name);
		removed++;
	}
	closedir(dir);
	if (removed > 0 && maildir_fsync_dir(queue_dir) == -1 && rc == 0) {
		rc = -1;
		saved = errno;
	}
	errno = saved;
	return rc;
}

char *queue_dir_path(const char *data_dir)
{
	return xasprintf("%s/queue", data_dir);
}

char *queue_msg_path(const char *queue_dir, const char *id)
{
	return queue_id_valid(id) ? entry_path(queue_dir, id, "msg") : NULL;
}

/* ------------------------------------------------------------ async */

/* Owned by the module from queue_submit until submit_done frees it. The
 * worker reads the copies and writes error/ran; the reactor reads those only
 * in submit_done, after the aio hand-off (mutex) has ordered the two. */
struct queue_req {
	struct aio_job *job;
	char *dir;
	struct queue_env env;
	char *msg;
	size_t len;
	queue_done_cb cb;
	void *arg;
	int error;                   /* worker */
	bool ran;                    /* worker: queue_write was attempted */
	bool cancelled, in_cb;       /* reactor */
};

static void submit_work(void *arg)
{
	struct queue_req *r = arg;
	errno = 0;
	if (queue_write(r->dir, &r->env, r->msg, r->len) == -1)
		r->error = errno != 0 ? errno : EIO;
	r->ran = true;
}

static void submit_done(void *arg, bool cancelled)
{
	struct queue_req *r = arg;
	(void)cancelled;             /* only aio_free or queue_cancel cancel; r says which */
	if (!r->cancelled) {
		r->in_cb = true;
		r->cb(r->arg, r->ran ? r->error : ECANCELED);
		r->in_cb = false;
	}
	queue_env_free(&r->env);
	free(r->dir);
	free(r->msg);
	free(r);
}

struct queue_req *queue_submit(struct aio *aio, const char *queue_dir, const struct queue_env *env,
    const char *msg, size_t len, queue_done_cb cb, void *arg)
{
	struct queue_req *r = xcalloc(1, sizeof(*r));
	r->dir = xstrdup(queue_dir);
	queue_env_copy(&r->env, env);
	r->msg = xmalloc(len + 1);
	memcpy(r->msg, msg, len);
	r->len = len;
	r->cb = cb;
	r->arg = arg;
	r->job = aio_submit(aio, submit_work, submit_done, r);
	return r;
}

void queue_cancel(struct queue_req **r_r)
{
	struct queue_req *r = *r_r;
	if (r == NULL)
		return;
	*r_r = NULL;
	if (r->cancelled)
		return;
	r->cancelled = true;
	if (!r->in_cb)
		aio_cancel(r->job);      /* submit_done(cancelled) frees it later */
}
