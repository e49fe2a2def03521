/* log.h: structured logs, one JSON object per line (design §7).
 *
 *   struct logline *l = log_begin(LL_INFO, "auth.fail");
 *   log_str(l, "mech", "PLAIN"); log_int(l, "delay_ms", 400);
 *   log_end(l);
 *
 * log_begin returns NULL when the level is filtered; every log_* accepts NULL.
 * Passwords and AUTH payloads are never passed here. */
#ifndef POSTLING_LOG_H
#define POSTLING_LOG_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum log_level { LL_DEBUG = 0, LL_INFO, LL_WARN, LL_ERROR };

struct logline;

/* file NULL or "" = stderr; returns -1 (errno set) when the file cannot be opened */
int log_open(enum log_level level, const char *file);
void log_set_level(enum log_level level);
bool log_enabled(enum log_level level);
int log_level_parse(const char *s);             /* -1 if unknown */
const char *log_level_name(enum log_level level);

struct logline *log_begin(enum log_level level, const char *event);
void log_str(struct logline *l, const char *key, const char *val);   /* val NULL: skipped */
void log_strn(struct logline *l, const char *key, const char *val, size_t len);
void log_int(struct logline *l, const char *key, long long val);
void log_uint(struct logline *l, const char *key, unsigned long long val);
void log_bool(struct logline *l, const char *key, bool val);
void log_end(struct logline *l);

/* one-shot: event plus a printf-formatted "msg" field */
void log_msg(enum log_level level, const char *event, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* for broken invariants and start-up failures: logs at error level and exits 1 */
void fatalx(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));


#endif
