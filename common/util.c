/* util.c: parsing of sizes and durations, ids, base64. */
#include "common/util.h"

#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "common/xmalloc.h"

static int parse_scaled(const char *s, uint64_t *r, const char *units, const uint64_t *mult)
{
	if (s == NULL || !isdigit((unsigned char)*s))
		return -1;
	errno = 0;
	char *end;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0)
		return -1;
	uint64_t m = 1;
	if (*end != '\0') {
		const char *u = strchr(units, tolower((unsigned char)*end));
		if (u == NULL || end[1] != '\0')
			return -1;
		m = mult[u - units];
	}
	if (v > UINT64_MAX / m)
		return -1;
	*r = v * m;
	return 0;
}

int util_parse_size(const char *s, uint64_t *r)
{
	static const uint64_t mult[] = { 1, 1024, 1024 * 1024, 1024ULL * 1024 * 1024, 1024ULL * 1024 * 1024 * 1024 };
	return parse_scaled(s, r, "bkmgt", mult);
}

int util_parse_duration(const char *s, uint64_t *r)
{
	static const uint64_t mult[] = { 1, 60, 3600, 86400, 604800 };
	return parse_scaled(s, r, "smhdw", mult);
}

void util_id_base32(uint64_t id, char out[14])
{
	static const char alpha[] = "abcdefghijklmnopqrstuvwxyz234567";
	for (int i = 12; i >= 0; i--) {
		out[i] = alpha[id & 31];
		id >>= 5;
	}
	out[13] = '\0';
}

uint64_t util_random64(void)
{
	uint64_t v;
	if (getrandom(&v, sizeof(v), 0) != sizeof(v))
		abort();
	return v;
}

bool util_strcaseeq(const char *a, const char *b)
{
	return strcasecmp(a, b) == 0;
}

int util_write_all(int fd, const void *p, size_t len)
{
	const char *c = p;
	while (len > 0) {
		ssize_t n = write(fd, c, len);
		if (n == -1 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		c += n;
		len -= (size_t)n;
	}
	return 0;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

char *util_b64_encode(const void *p, size_t len)
{
	const unsigned char *in = p;
	char *out = xmalloc((len + 2) / 3 * 4 + 1), *o = out;
	size_t i;
	for (i = 0; i + 2 < len; i += 3) {
		*o++ = b64[in[i] >> 2];
		*o++ = b64[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
		*o++ = b64[((in[i + 1] & 15) << 2) | (in[i + 2] >> 6)];
		*o++ = b64[in[i + 2] & 63];
	}
	if (i < len) {
		*o++ = b64[in[i] >> 2];
		if (i + 1 < len) {
			*o++ = b64[((in[i] & 3) << 4) | (in[i + 1] >> 4)];
			*o++ = b64[(in[i + 1] & 15) << 2];
		} else {
			*o++ = b64[(in[i] & 3) << 4];
			*o++ = '=';
		}
		*o++ = '=';
	}
	*o = '\0';
	return out;
}

int util_b64_decode(const char *s, size_t slen, unsigned char **out_r, size_t *outlen_r)
{
	if (slen % 4 != 0)
		return -1;
	unsigned char *out = xmalloc(slen / 4 * 3 + 1);
	size_t o = 0;
	for (size_t i = 0; i < slen; i += 4) {
		int v[4];
		for (int j = 0; j < 4; j++) {
			const char *c = s[i + j] ? strchr(b64, s[i + j]) : NULL;
			if (c != NULL)
				v[j] = (int)(c - b64);
			else if (s[i + j] == '=' && i + 4 == slen && j >= 2 && (j == 3 || s[i + 3] == '='))
				v[j] = -1;
			else
				goto bad;
		}
		out[o++] = (unsigned char)((v[0] << 2) | (v[1] >> 4));
		if (v[2] >= 0)
			out[o++] = (unsigned char)(((v[1] & 15) << 4) | (v[2] >> 2));
		if (v[3] >= 0) {
			if (v[2] < 0)
				goto bad;
			out[o++] = (unsigned char)(((v[2] & 3) << 6) | v[3]);
		}
	}
	out[o] = '\0';
	*out_r = out;
	*outlen_r = o;
	return 0;
bad:
	free(out);
	return -1;
}

double util_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}
