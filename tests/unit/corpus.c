/* corpus.c: see corpus.h. */
#include "tests/unit/corpus.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The corpus is three levels above this file. __FILE__ is relative to the build
 * root when not absolute (see test_config.c): try both that, resolved from the
 * executable's directory, and the current directory. */
int corpus_path(const char *name, char *path, size_t len)
{
	char exe[PATH_MAX], dir[1024];
	const char *src = __FILE__;
	if (path == NULL || len == 0)
		return -1;
	snprintf(dir, sizeof(dir), "%.*s", (int)(strrchr(src, '/') - src), src);
	if (src[0] != '/') {
		ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
		if (n > 0) {
			exe[n] = '\0';
			*strrchr(exe, '/') = '\0';
			*strrchr(exe, '/') = '\0';
			if (snprintf(path, len, "%.1024s/%s/../../../shared/mime-corpus/%s", exe, dir, name) < (int)len &&
			    access(path, R_OK) == 0)
				return 0;
		}
	}
	snprintf(path, len, "%s/../../../shared/mime-corpus/%s", dir, name);
	return access(path, R_OK) == 0 ? 0 : -1;
}

char *corpus_slurp(const char *name, size_t *len_r)
{
	char path[PATH_MAX * 2];
	if (corpus_path(name, path, sizeof(path)) != 0)
		return NULL;
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	char *d = n >= 0 ? malloc((size_t)n + 1) : NULL;
	if (d == NULL || fread(d, 1, (size_t)n, f) != (size_t)n) {
		free(d);
		fclose(f);
		return NULL;
	}
	fclose(f);
	d[n] = '\0';
	*len_r = (size_t)n;
	return d;
}
