/* corpus.h: access to the shared MIME corpus (../shared/mime-corpus beside the
 * clone, see its README) for the unit tests that check against it. */
#ifndef POSTLING_TEST_CORPUS_H
#define POSTLING_TEST_CORPUS_H
#include <stddef.h>

/* Path of corpus file `name` into path: 0 when readable, else -1. */
int corpus_path(const char *name, char *path, size_t len);
/* The whole file, NUL-terminated, malloc'ed; NULL when it cannot be read. */
char *corpus_slurp(const char *name, size_t *len_r);

#endif
