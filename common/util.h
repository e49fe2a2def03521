/* util.h: small helpers shared by every part. */
#ifndef POSTLING_UTIL_H
#define POSTLING_UTIL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* "1G", "512M", "10k", "123" -> bytes; -1 on bad input or overflow */
int util_parse_size(const char *s, uint64_t *r);
/* "30s", "5m", "4h", "5d", "90" (seconds) -> seconds; -1 on bad input */
int util_parse_duration(const char *s, uint64_t *r);
/* 64-bit id -> 13 chars of lowercase base32 + NUL */
void util_id_base32(uint64_t id, char out[14]);
/* random 64-bit value from the OS (getrandom) */
uint64_t util_random64(void);
bool util_strcaseeq(const char *a, const char *b);
/* write all, retrying EINTR; -1 on error */
int util_write_all(int fd, const void *p, size_t len);
/* Base64 (RFC 4648) encode/decode. decode returns -1 on bad input; strict about
 * characters and padding. Output is malloc'ed and NUL-terminated. */
char *util_b64_encode(const void *p, size_t len);
int util_b64_decode(const char *s, size_t slen, unsigned char **out_r, size_t *outlen_r);
/* monotonic seconds */
double util_now(void);

#endif
