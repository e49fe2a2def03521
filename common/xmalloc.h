/* xmalloc.h: allocation for internal bookkeeping; fatal on OOM.
 * Growth driven by untrusted input must go through buf_* (common/buf.h) instead. */
#ifndef POSTLING_XMALLOC_H
#define POSTLING_XMALLOC_H
#include <stddef.h>

void *xmalloc(size_t n);
void *xcalloc(size_t nmemb, size_t size);
/* xreallocarray: checks nmemb * size for overflow (fatal) */
void *xreallocarray(void *p, size_t nmemb, size_t size);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);
char *xasprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* free a NULL-terminated array of strings and the array itself */
void xfree_strv(char ***v_r);

#endif
