/* files.h: file helpers shared by the unit tests that work on real directories
 * (store, mailbox, queue, mta). They fail the running cmocka test on error. */
#ifndef POSTLING_TEST_FILES_H
#define POSTLING_TEST_FILES_H
#include <stddef.h>

/* path made (0600) or truncated, holding data[0..len) */
void write_file(const char *path, const char *data, size_t len);
/* The whole file, NUL-terminated and never NULL (an empty file gives ""); malloc'ed. */
char *slurp(const char *path, size_t *len_r);
/* rm -r dir (best effort: a fixture's teardown) */
void rm_tree(const char *dir);

#endif
