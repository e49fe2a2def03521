/* corpus.c: see corpus.h. */
#include "tests/unit/corpus.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* tests/data/mime-corpus (a copy committed with the tests, so any clone runs
 * them), else ../shared/mime-corpus beside the clone (where it comes from). The
 * source directory is found from __FILE__, which is relative to the build root
 * when not absolute (see test_config.c): resolved from the executable's
 * directory, then from the current directory. */
static int try_dir(char *path, size_t len, const char *base, const char *rel, const char *name)
{
	int n = snprintf(path, len, "%s%s%s/%s", base, base[0] ? "/" : "", rel, name);
	return n > 0 && (size_t)n < len && access(path, R_OK) == 0 ? 0 : -1;
}

int corpus_path(const char *name, char *path, size_t len)
{
	char exe[PATH_MAX], dir[1024], base[PATH_MAX + 1024];
	const char *src = __FILE__;
	static const char *const rels[] = { "../data/mime-corpus", "../../../shared/mime-corpus" };
	if (path == NULL || len == 0)
		return -1;
	snprintf(dir, sizeof(dir), "%.*s", (int)(strrchr(src, '/') - src), src);
	for (size_t r = 0; r < sizeof(rels) / sizeof(rels[0]); r++) {
		if (src[0] != '/') {
			ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
			if (n > 0) {
				exe[n] = '\0';
				*strrchr(exe, '/') = '\0';
				*strrchr(exe, '/') = '\0';
				snprintf(base, sizeof(base), "%.1024s/%s", exe, dir);
				if (try_dir(path, len, base, rels[r], name) == 0)
					return 0;
			}
		}
		if (try_dir(path, len, dir, rels[r], name) == 0)
			return 0;
	}
	return -1;
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
