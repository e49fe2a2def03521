/* log.c: JSON-lines logger. Writes each line with one write(2) so lines from
 * the reactor and from forked CLI helpers never interleave mid-line. */
#include "common/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/xmalloc.h"

#define LOG_LINE_MAX (16 * 1024)

struct logline {
	struct buf b;
	enum log_level level;
};

static int log_fd = 2;
static enum log_level log_min = LL_INFO;

static const char *const level_names[] = { "debug", "info", "warn", "error" };

int log_open(enum log_level level, const char *file)
{
	log_min = level;
	if (file == NULL || *file == '\0') {
		if (log_fd != 2)
			close(log_fd);
		log_fd = 2;
		return 0;
	}
	int fd = open(file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd == -1)
		return -1;
	if (log_fd != 2)
		close(log_fd);
	log_fd = fd;
	return 0;
}

void log_set_level(enum log_level level)
{
	log_min = level;
}

bool log_enabled(enum log_level level)
{
	return level >= log_min;
}

int log_level_parse(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (strcmp(s, level_names[i]) == 0)
			return i;
	return -1;
}

const char *log_level_name(enum log_level level)
{
	return level_names[level];
}

static void json_escape(struct buf *b, const char *s, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	buf_appendc(b, '"');
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '"' || c == '\\') {
			buf_appendc(b, '\\');
			buf_appendc(b, (char)c);
		} else if (c < 0x20 || c == 0x7f) {
			char e[7] = { '\\', 'u', '0', '0', hex[c >> 4], hex[c & 15], 0 };
			buf_appends(b, e);
		} else {
			buf_appendc(b, (char)c);
		}
	}
	buf_appendc(b, '"');
}

static void key(struct logline *l, const char *k)
{
	buf_appendc(&l->b, ',');
	json_escape(&l->b, k, strlen(k));
	buf_appendc(&l->b, ':');
}

struct logline *log_begin(enum log_level level, const char *event)
{
	if (level < log_min)
		return NULL;
	struct logline *l = xmalloc(sizeof(*l));
	buf_init(&l->b, LOG_LINE_MAX);
	l->level = level;

	struct timeval tv;
	struct tm tm;
	char ts[40];
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	buf_printf(&l->b, "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"event\":", ts,
	    (long)(tv.tv_usec / 1000), level_names[level]);
	json_escape(&l->b, event, strlen(event));
	return l;
}

void log_strn(struct logline *l, const char *k, const char *val, size_t len)
{
	if (l == NULL || val == NULL)
		return;
	key(l, k);
	json_escape(&l->b, val, len);
}

void log_str(struct logline *l, const char *k, const char *val)
{
	if (val != NULL)
		log_strn(l, k, val, strlen(val));
}

void log_int(struct logline *l, const char *k, long long val)
{
	if (l == NULL)
		return;
	key(l, k);
	buf_printf(&l->b, "%lld", val);
}

void log_uint(struct logline *l, const char *k, unsigned long long val)
{
	if (l == NULL)
		return;
	key(l, k);
	buf_printf(&l->b, "%llu", val);
}

void log_bool(struct logline *l, const char *k, bool val)
{
	if (l == NULL)
		return;
	key(l, k);
	buf_appends(&l->b, val ? "true" : "false");
}

void log_end(struct logline *l)
{
	if (l == NULL)
		return;
	if (buf_appends(&l->b, "}\n") == -1) {
		/* line hit the cap: cut it and still close the object */
		l->b.len = l->b.len > 64 ? l->b.len - 64 : 0;
		l->b.max += 64;
		buf_appends(&l->b, ",\"truncated\":true}\n");
	}
	const char *p = l->b.data;
	size_t left = l->b.len;
	while (left > 0) {
		ssize_t n = write(log_fd, p, left);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		p += n;
		left -= (size_t)n;
	}
	buf_free(&l->b);
	free(l);
}

static void log_vmsg(enum log_level level, const char *event, const char *fmt, va_list ap)
{
	struct logline *l = log_begin(level, event);
	if (l == NULL)
		return;
	char msg[1024];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	log_str(l, "msg", msg);
	log_end(l);
}

void log_msg(enum log_level level, const char *event, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(level, event, fmt, ap);
	va_end(ap);
}

void fatalx(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	log_vmsg(LL_ERROR, "fatal", fmt, ap);
	va_end(ap);
	exit(1);
}
