/* buf.h: growable byte buffer with a hard maximum, for input an attacker controls.
 * Every append past `max` fails with -1 and leaves the buffer unchanged. */
#ifndef POSTLING_BUF_H
#define POSTLING_BUF_H
#include <stdarg.h>
#include <stddef.h>

struct buf {
	char *data;   /* owned; always NUL-terminated after data[len] when data != NULL */
	size_t len;
	size_t cap;
	size_t max;   /* hard limit on len */
};

void buf_init(struct buf *b, size_t max);
void buf_free(struct buf *b);
void buf_reset(struct buf *b);                      /* len = 0, keeps memory */
int buf_append(struct buf *b, const void *p, size_t n);
int buf_appendc(struct buf *b, char c);
int buf_appends(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int buf_vprintf(struct buf *b, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));
void buf_consume(struct buf *b, size_t n);          /* drop n bytes from the front */
/* take ownership of the bytes (NUL-terminated); the buffer is left empty */
char *buf_steal(struct buf *b, size_t *len_r);

/*
 * CRLF-strict line splitting over (p, len): returns 1 and sets *linelen_r (without
 * the CRLF) and *consumed_r (with it) when a full CRLF line is present; 0 when more
 * input is needed; -1 when a bare LF is found (*consumed_r set past it, *linelen_r
 * the length before it). A bare CR not followed by LF stays part of the line.
 */
int buf_getline_crlf(const char *p, size_t len, size_t *linelen_r, size_t *consumed_r);

#endif
