/* files.c: see files.h. */
#include <fcntl.h>
#include <ftw.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>
#include <cmocka.h>

#include "common/buf.h"
#include "common/util.h"
#include "tests/unit/files.h"

void write_file(const char *path, const char *data, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd != -1);
	assert_int_equal(util_write_all(fd, data, len), 0);
	close(fd);
}

char *slurp(const char *path, size_t *len_r)
{
	struct buf b;
	char tmp[4096];
	int fd = open(path, O_RDONLY);
	assert_true(fd != -1);
	buf_init(&b, SIZE_MAX / 2);
	ssize_t n;
	while ((n = read(fd, tmp, sizeof(tmp))) > 0)
		buf_append(&b, tmp, (size_t)n);
	close(fd);
	if (b.data == NULL)
		buf_append(&b, "", 0);
	return buf_steal(&b, len_r);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(path);
}

void rm_tree(const char *dir)
{
	nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}
