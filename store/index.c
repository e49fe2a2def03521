/* index.c: the per-folder postling.index (design §5).
 *
 * Text, one record per line, every field validated on read (version 2):
 *   POSTLING-INDEX 2 <uidvalidity> <uidnext> <highestmodseq> <nkeywords>
 *   K <keyword>                        (nkeywords lines: bit 0, 1, ...)
 *   <uid> <modseq> <flags|-> <keywords> <size> <internal_date> <n|c> <base>
 * <keywords> is the decimal bit mask of the message's keywords, no bit at or
 * past nkeywords. Keyword names are IMAP atoms (RFC 9051 §9 flag-keyword),
 * which hold no space, '%' or control byte, so they need no escaping; names
 * are unique regardless of case (IMAP compares flags case-insensitively).
 * Version 1 files (no nkeywords, no K lines, no <keywords> field) are still
 * read, as having no keywords; the next write makes them version 2.
 * The base name is %XX-escaped ('%', space, control bytes, non-ASCII;
 * common/record.h), so no byte of a file name, which anyone with access to
 * the Maildir may choose, can split or forge a record. The file is only ever
 * replaced whole (maildir_replace_file: tmp, fsync, rename, fsync dir), so a
 * reader sees the old or the new index.
 *
 * Everything blocks: aio workers and the CLI only. A struct store_index and
 * the base strings in it belong to whoever holds the struct (index_free). */
#include "store/store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/record.h"
#include "common/util.h"
#include "common/xmalloc.h"

#define INDEX_NAME "postling.index"
#define INDEX_MAGIC "POSTLING-INDEX"
#define INDEX_VERSION 2
#define INDEX_VERSION_MIN 1
#define INDEX_MAX_BYTES (1024ULL * 1024 * 1024)
#define MODSEQ_MAX ((uint64_t)INT64_MAX)     /* RFC 7162 §7: mod-sequence is 63-bit */
#define SIZE_MAX_OCTETS ((uint64_t)INT64_MAX)
#define DATE_MAX 253402300799ULL             /* 9999-12-31T23:59:59Z */
#define FLUSH_AT (64 * 1024)

/* bit i of MF_* is letter i; the string is in ASCII order as Maildir wants */
static const char flag_letters[] = "DFPRST";

/* ------------------------------------------------------------ fields */

/* Letters of flags in Maildir order into out[7]; "" when none. */
static void flags_letters(uint32_t flags, char out[8])
{
	size_t n = 0;
	for (size_t i = 0; flag_letters[i] != '\0'; i++)
		if (flags & (1u << i))
			out[n++] = flag_letters[i];
	out[n] = '\0';
}

/* "-" or strictly increasing known letters: the form index_write produces. */
static bool flags_parse(const char *f, size_t len, uint32_t *r)
{
	*r = 0;
	if (len == 1 && f[0] == '-')
		return true;
	size_t next = 0;
	for (size_t i = 0; i < len; i++) {
		const char *c = memchr(flag_letters + next, f[i], sizeof(flag_letters) - 1 - next);
		if (c == NULL)
			return false;
		next = (size_t)(c - flag_letters) + 1;
		*r |= 1u << (next - 1);
	}
	return len > 0;
}

/* A base as a path component: no '/', no NUL, no ':', not hidden. */
static bool base_safe(const char *s)
{
	return s[0] != '\0' && s[0] != '.' && strpbrk(s, "/:") == NULL;
}

/* How a base is escaped. Writing: no "-" convention (a base is never empty).
 * Reading: index_read has always taken any %XX but %00 in a base (e.g. "%41"
 * for "A"; RECORD_ESC_LENIENT) and keeps doing so, since refusing it would
 * now turn such a hand-edited index into a rebuild with new UIDs. */
#define BASE_ESC RECORD_ESC_LENIENT

/* malloc'ed unescaped base, or NULL when the field is not an escaped base or
 * names something unsafe. */
static char *base_unescape(const char *f, size_t len)
{
	char *base = record_unescape(f, len, BASE_ESC);
	if (base != NULL && !base_safe(base)) {
		free(base);
		base = NULL;
	}
	return base;
}

#define FIELD_NUM(fs, i, min, max, r) record_num((fs)->p[i], (fs)->len[i], (min), (max), (r))

/* ------------------------------------------------------------ read */

/* *nkw_r: the number of K lines that follow (0 for version 1). */
static bool parse_header(const char *p, const char *end, struct store_index *ix, unsigned *ver_r,
    size_t *nkw_r)
{
	struct record_fields fs;
	uint64_t ver, v, next, hms, nkw = 0;

	if (!record_split(p, (size_t)(end - p), &fs) || fs.n < 2 ||
	    !record_field_is(fs.p[0], fs.len[0], INDEX_MAGIC) ||
	    !FIELD_NUM(&fs, 1, INDEX_VERSION_MIN, INDEX_VERSION, &ver) || fs.n != (ver == 1 ? 5 : 6))
		return false;
	if (!FIELD_NUM(&fs, 2, 1, UINT32_MAX, &v) || !FIELD_NUM(&fs, 3, 1, UINT32_MAX, &next) ||
	    !FIELD_NUM(&fs, 4, 0, MODSEQ_MAX, &hms) ||
	    (ver >= 2 && !FIELD_NUM(&fs, 5, 0, STORE_MAX_KEYWORDS, &nkw)))
		return false;
	ix->uidvalidity = (uint32_t)v;
	ix->uidnext = (uint32_t)next;
	ix->highestmodseq = hms;
	*ver_r = (unsigned)ver;
	*nkw_r = (size_t)nkw;
	return true;
}

/* "K <keyword>": the next bit's name, valid and not yet taken. */
static bool parse_keyword(const char *p, const char *end, struct store_index *ix)
{
	struct record_fields fs;

	if (!record_split(p, (size_t)(end - p), &fs) || fs.n != 2 || !record_field_is(fs.p[0], fs.len[0], "K") ||
	    fs.len[1] > STORE_MAX_KEYWORD_LEN)
		return false;
	char *kw = xstrndup(fs.p[1], fs.len[1]);
	if (!index_keyword_valid(kw) || index_keyword_find(ix, kw) != -1) {
		free(kw);
		return false;
	}
	ix->keywords[ix->nkeywords++] = kw;
	return true;
}

/* One record; uids must rise strictly and stay below uidnext, modseqs must
 * not pass highestmodseq: otherwise IMAP clients would see UIDs reused. */
static bool parse_record(const char *p, const char *end, const struct store_index *ix, unsigned ver,
    struct store_msg *m)
{
	struct record_fields fs;
	uint64_t uid, modseq, size, date, kw = 0;
	uint64_t prev = ix->count > 0 ? ix->msgs[ix->count - 1].uid : 0;
	uint64_t kwmax = ix->nkeywords == 64 ? UINT64_MAX : (1ULL << ix->nkeywords) - 1;
	size_t f = ver >= 2 ? 1 : 0;     /* fields after <flags> shift by the keywords field */

	if (!record_split(p, (size_t)(end - p), &fs) || fs.n != 7 + f)
		return false;
	if (!FIELD_NUM(&fs, 0, prev + 1, (uint64_t)ix->uidnext - 1, &uid) ||
	    !FIELD_NUM(&fs, 1, 1, ix->highestmodseq, &modseq) || !flags_parse(fs.p[2], fs.len[2], &m->flags) ||
	    (f == 1 && !FIELD_NUM(&fs, 3, 0, kwmax, &kw)) ||
	    !FIELD_NUM(&fs, 3 + f, 0, SIZE_MAX_OCTETS, &size) || !FIELD_NUM(&fs, 4 + f, 0, DATE_MAX, &date))
		return false;
	if (fs.len[5 + f] != 1 || (fs.p[5 + f][0] != 'n' && fs.p[5 + f][0] != 'c'))
		return false;
	if ((m->base = base_unescape(fs.p[6 + f], fs.len[6 + f])) == NULL)
		return false;
	m->uid = (uint32_t)uid;
	m->modseq = modseq;
	m->keywords = kw;
	m->size = size;
	m->internal_date = (time_t)date;
	m->in_new = fs.p[5 + f][0] == 'n';
	return true;
}

static int read_whole(const char *path, char **data_r, size_t *len_r)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd == -1)
		return -1;
	int err = fstat(fd, &st) == -1 ? errno : 0;
	if (err == 0 && (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > INDEX_MAX_BYTES))
		err = EBADMSG;
	if (err != 0) {
		close(fd);
		errno = err;
		return -1;
	}
	size_t len = (size_t)st.st_size, got = 0;
	char *data = xmalloc(len + 1);
	err = 0;
	while (got < len && err == 0) {
		ssize_t n = read(fd, data + got, len - got);
		if (n == -1 && errno != EINTR)
			err = errno;
		else if (n == 0)
			break;   /* shrank under us: parse what is there */
		else if (n > 0)
			got += (size_t)n;
	}
	close(fd);
	if (err != 0) {
		free(data);
		errno = err;
		return -1;
	}
	data[got] = '\0';
	*data_r = data;
	*len_r = got;
	return 0;
}

/* Drop what was parsed; keep the header when it was valid (see store.h). */
static int corrupt(struct store_index *ix, bool keep_header)
{
	struct store_index hdr = *ix;
	index_free(ix);
	if (keep_header) {
		ix->uidvalidity = hdr.uidvalidity;
		ix->uidnext = hdr.uidnext;
		ix->highestmodseq = hdr.highestmodseq;
	}
	errno = EBADMSG;
	return -1;
}

static size_t count_lines(const char *p, size_t len)
{
	size_t n = 0;
	for (const char *e = p + len; (p = memchr(p, '\n', (size_t)(e - p))) != NULL; p++)
		n++;
	return n;
}

struct store_msg *index_find(const struct store_msg *msgs, size_t count, uint32_t uid)
{
	size_t lo = 0, hi = count;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (msgs[mid].uid == uid)
			return (struct store_msg *)&msgs[mid];
		if (msgs[mid].uid < uid)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* "F <uid> <modseq> <flags|-> <keywords> <n|c>": a flag change appended after the
 * messages (index_append_updates). The uid must be indexed, the modseq above
 * every one before it, the keywords known. */
static bool parse_update(const char *p, const char *end, struct store_index *ix)
{
	struct record_fields fs;
	uint64_t uid, modseq, kw;
	uint32_t flags;
	uint64_t kwmax = ix->nkeywords >= 64 ? UINT64_MAX : (1ULL << ix->nkeywords) - 1;
	if (!record_split(p, (size_t)(end - p), &fs) || fs.n != 6 || !record_field_is(fs.p[0], fs.len[0], "F"))
		return false;
	if (!FIELD_NUM(&fs, 1, 1, UINT32_MAX, &uid) || ix->highestmodseq >= MODSEQ_MAX ||
	    !FIELD_NUM(&fs, 2, ix->highestmodseq + 1, MODSEQ_MAX, &modseq) ||
	    !flags_parse(fs.p[3], fs.len[3], &flags) || !FIELD_NUM(&fs, 4, 0, UINT64_MAX, &kw) ||
	    (kw & ~kwmax) != 0 || fs.len[5] != 1 || (fs.p[5][0] != 'n' && fs.p[5][0] != 'c'))
		return false;
	struct store_msg *m = index_find(ix->msgs, ix->count, (uint32_t)uid);
	if (m == NULL)
		return false;
	m->flags = flags;
	m->keywords = kw;
	m->modseq = modseq;
	m->in_new = fs.p[5][0] == 'n';
	ix->highestmodseq = modseq;
	ix->nupdates++;
	return true;
}

static int parse_index(const char *data, size_t len, struct store_index *ix)
{
	const char *end = data + len;
	const char *nl = memchr(data, '\n', len);
	const char *p;
	unsigned ver;
	size_t nkw;

	if (nl == NULL || !parse_header(data, nl, ix, &ver, &nkw))
		return corrupt(ix, false);
	/* a line without its newline is a torn write: corrupt */
	for (p = nl + 1; ix->nkeywords < nkw; p = nl + 1)
		if (p >= end || (nl = memchr(p, '\n', (size_t)(end - p))) == NULL || !parse_keyword(p, nl, ix))
			return corrupt(ix, true);
	size_t nrec = count_lines(p, (size_t)(end - p));
	if (nrec > 0)
		ix->msgs = xreallocarray(NULL, nrec, sizeof(*ix->msgs));
	bool updates = false;
	for (; p < end; p = nl + 1) {
		nl = memchr(p, '\n', (size_t)(end - p));
		if (nl == NULL && (updates || (end - p >= 2 && p[0] == 'F' && p[1] == ' ')))
			break;               /* an append cut short by a crash: that change is lost */
		if (nl != NULL && p[0] == 'F') {
			updates = true;
			if (!parse_update(p, nl, ix))
				return corrupt(ix, true);
			continue;
		}
		if (nl == NULL || updates || !parse_record(p, nl, ix, ver, &ix->msgs[ix->count]))
			return corrupt(ix, true);
		ix->count++;
	}
	return 0;
}

int index_read(const char *folder_path, struct store_index *ix)
{
	char *path = xasprintf("%s/%s", folder_path, INDEX_NAME);
	char *data;
	size_t len;

	memset(ix, 0, sizeof(*ix));
	int rc = read_whole(path, &data, &len);
	free(path);
	if (rc == -1)
		return -1;
	rc = parse_index(data, len, ix);
	free(data);
	return rc;
}

/* ------------------------------------------------------------ write */

/* Decimal digits of v at p; returns the end. (buf_printf per field made
 * vfprintf the largest cost of a STORE on a 1,000-message folder.) */
static char *put_dec(char *p, uint64_t v)
{
	char tmp[20];
	size_t n = 0;
	do
		tmp[n++] = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	while (n > 0)
		*p++ = tmp[--n];
	return p;
}

/* "<uid> <modseq> <flags|-> <keywords>": what a record and an F record share. */
static char *put_state(char *p, const struct store_msg *m)
{
	char fl[8];
	flags_letters(m->flags, fl);
	p = put_dec(p, m->uid);
	*p++ = ' ';
	p = put_dec(p, m->modseq);
	*p++ = ' ';
	for (const char *f = fl[0] != '\0' ? fl : "-"; *f != '\0'; f++)
		*p++ = *f;
	*p++ = ' ';
	return put_dec(p, m->keywords);
}

/* maildir_file fill: the index as text, in FLUSH_AT pieces. */
static int write_records(int fd, const void *arg)
{
	const struct store_index *ix = arg;
	struct buf b;
	int rc = 0;

	buf_init(&b, SIZE_MAX / 2);
	buf_printf(&b, "%s %d %u %u %llu %zu\n", INDEX_MAGIC, INDEX_VERSION, ix->uidvalidity, ix->uidnext,
	    (unsigned long long)ix->highestmodseq, ix->nkeywords);
	for (size_t i = 0; i < ix->nkeywords; i++)
		buf_printf(&b, "K %s\n", ix->keywords[i]);
	for (size_t i = 0; i < ix->count && rc == 0; i++) {
		const struct store_msg *m = &ix->msgs[i];
		/* "<uid> <modseq> <flags|-> <keywords> <size> <date> <n|c> " (as parse_record reads it;
		 * every value is non-negative: DATE_MAX bounds the date) */
		char line[8 * 21], *p = put_state(line, m);
		*p++ = ' ';
		p = put_dec(p, m->size);
		*p++ = ' ';
		p = put_dec(p, m->internal_date > 0 ? (uint64_t)m->internal_date : 0);
		*p++ = ' ';
		*p++ = m->in_new ? 'n' : 'c';
		*p++ = ' ';
		buf_append(&b, line, (size_t)(p - line));
		record_escape(&b, m->base, BASE_ESC);
		buf_appendc(&b, '\n');
		if (b.len >= FLUSH_AT) {
			rc = util_write_all(fd, b.data, b.len);
			buf_reset(&b);
		}
	}
	if (rc == 0)
		rc = util_write_all(fd, b.data, b.len);
	buf_free(&b);
	return rc;
}

int index_append_updates(const char *folder_path, const struct store_index *ix, const uint32_t *uids,
    size_t n)
{
	struct buf b;
	buf_init(&b, SIZE_MAX / 2);
	uint64_t prev = 0;
	for (size_t i = 0; i < n; i++) {
		const struct store_msg *m = index_find(ix->msgs, ix->count, uids[i]);
		if (m == NULL || m->modseq <= prev) {   /* the reader wants rising modseqs */
			buf_free(&b);
			errno = EINVAL;
			return -1;
		}
		prev = m->modseq;
		char line[8 * 21] = "F ", *p = put_state(line + 2, m);
		*p++ = ' ';
		*p++ = m->in_new ? 'n' : 'c';
		*p++ = '\n';
		buf_append(&b, line, (size_t)(p - line));
	}
	char *path = xasprintf("%s/%s", folder_path, INDEX_NAME);
	int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
	free(path);
	int rc = fd == -1 ? -1 : util_write_all(fd, b.data, b.len);
	if (fd != -1) {
		int saved = errno;
		if (close(fd) == -1 && rc == 0)
			rc = -1;
		else
			errno = saved;
	}
	buf_free(&b);
	return rc;
}

/* What index_read would refuse is never written: a bad keyword table or a
 * mask naming an unknown bit is a broken invariant of our own (EINVAL). */
static bool index_writable(const struct store_index *ix)
{
	uint64_t kwmax = ix->nkeywords >= 64 ? UINT64_MAX : (1ULL << ix->nkeywords) - 1;
	if (ix->nkeywords > STORE_MAX_KEYWORDS)
		return false;
	for (size_t i = 0; i < ix->nkeywords; i++)
		if (!index_keyword_valid(ix->keywords[i]))
			return false;
	for (size_t i = 0; i < ix->count; i++)
		if ((ix->msgs[i].keywords & ~kwmax) != 0)
			return false;
	return true;
}

static int write_index(const char *folder_path, const struct store_index *ix, bool lazy)
{
	const struct maildir_file f = { .fill = write_records, .fill_arg = ix, .lazy_rename = lazy };
	if (!index_writable(ix)) {
		errno = EINVAL;
		return -1;
	}
	return maildir_replace_file(folder_path, INDEX_NAME, &f);
}

int index_write(const char *folder_path, const struct store_index *ix)
{
	return write_index(folder_path, ix, false);
}

int index_write_lazy(const char *folder_path, const struct store_index *ix)
{
	return write_index(folder_path, ix, true);
}

void index_free(struct store_index *ix)
{
	for (size_t i = 0; i < ix->count; i++)
		free(ix->msgs[i].base);
	free(ix->msgs);
	for (size_t i = 0; i < ix->nkeywords; i++)
		free(ix->keywords[i]);
	memset(ix, 0, sizeof(*ix));
}

/* ------------------------------------------------------------ keywords */

/* RFC 9051 §9: flag-keyword = "$MDNSent" / "$Forwarded" / "$Junk" /
 * "$NotJunk" / "$Phishing" / atom; atom-char is any CHAR but atom-specials:
 * "(" ")" "{" SP CTL list-wildcards ("%" "*") quoted-specials ('"' "\\")
 * resp-specials ("]"). A leading '\\' would be a system flag: not a keyword. */
bool index_keyword_valid(const char *kw)
{
	size_t len = strlen(kw);
	if (len == 0 || len > STORE_MAX_KEYWORD_LEN)
		return false;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)kw[i];
		if (c <= 0x20 || c >= 0x7f || strchr("(){%*\"\\]", c) != NULL)
			return false;
	}
	return true;
}

int index_keyword_find(const struct store_index *ix, const char *kw)
{
	for (size_t i = 0; i < ix->nkeywords; i++)
		if (util_strcaseeq(ix->keywords[i], kw))
			return (int)i;
	return -1;
}

int index_keyword_add(struct store_index *ix, const char *kw)
{
	int bit = index_keyword_find(ix, kw);
	if (bit != -1)
		return bit;
	if (!index_keyword_valid(kw)) {
		errno = EINVAL;
		return -1;
	}
	if (ix->nkeywords >= STORE_MAX_KEYWORDS) {
		errno = ENOSPC;
		return -1;
	}
	ix->keywords[ix->nkeywords] = xstrdup(kw);
	return (int)ix->nkeywords++;
}

/* ------------------------------------------------------------ sync */

/* A message file seen in new/ or cur/. */
struct found {
	char *name;                  /* owned; name[0..baselen) is the base */
	size_t baselen;
	bool in_new;
	bool matched;                /* an index entry claimed it */
	uint32_t flags;
	uint64_t size;
	struct timespec mtime;
};

struct scan {
	struct found *v;             /* owned, with the names */
	size_t n, cap;
};

static void scan_free(struct scan *sc)
{
	for (size_t i = 0; i < sc->n; i++)
		free(sc->v[i].name);
	free(sc->v);
	memset(sc, 0, sizeof(*sc));
}

/* ",S=<n>" among the base's comma fields (Maildir++ / Dovecot), else fallback */
static uint64_t size_from_name(const char *name, size_t baselen, uint64_t fallback)
{
	for (const char *c = memchr(name, ',', baselen); c != NULL;
	     c = memchr(c + 1, ',', baselen - (size_t)(c + 1 - name))) {
		size_t rest = baselen - (size_t)(c - name);
		if (rest < 4 || c[1] != 'S' || c[2] != '=')
			continue;
		const char *e = memchr(c + 1, ',', rest - 1);
		size_t len = (e != NULL ? (size_t)(e - c) : rest) - 3;
		uint64_t v;
		if (record_num(c + 3, len, 0, SIZE_MAX_OCTETS, &v))
			return v;
	}
	return fallback;
}

static void scan_add(struct scan *sc, const char *name, const struct stat *st, bool in_new)
{
	if (sc->n == sc->cap) {
		sc->cap = sc->cap ? sc->cap * 2 : 64;
		sc->v = xreallocarray(sc->v, sc->cap, sizeof(*sc->v));
	}
	struct found *f = &sc->v[sc->n++];
	memset(f, 0, sizeof(*f));
	f->name = xstrdup(name);
	f->baselen = strcspn(name, ":");
	f->in_new = in_new;
	f->flags = (uint32_t)maildir_parse_flags(name);
	f->size = size_from_name(name, f->baselen, (uint64_t)st->st_size);
	f->mtime = st->st_mtim;
}

/* Regular files only, hidden names skipped (tools' temp files, ".", ".."). */
static int scan_dir(const char *folder_path, bool in_new, struct scan *sc)
{
	char *path = xasprintf("%s/%s", folder_path, in_new ? "new" : "cur");
	DIR *dir = opendir(path);
	free(path);
	if (dir == NULL)
		return -1;
	struct dirent *de;
	struct stat st;
	while ((de = readdir(dir)) != NULL) {
		if (de->d_name[0] == '.' || de->d_name[0] == ':')
			continue;   /* hidden (tools' temp files, "." and "..") or no base */
		/* vanished since readdir (moved or expunged meanwhile): not there */
		if (fstatat(dirfd(dir), de->d_name, &st, AT_SYMLINK_NOFOLLOW) == -1 || !S_ISREG(st.st_mode))
			continue;
		scan_add(sc, de->d_name, &st, in_new);
	}
	closedir(dir);
	return 0;
}

static int base_cmp(const char *a, size_t alen, const char *b, size_t blen)
{
	int c = memcmp(a, b, alen < blen ? alen : blen);
	return c != 0 ? c : (alen > blen) - (alen < blen);
}

/* by base, and cur/ before new/ for the same base */
static int found_cmp_base(const void *pa, const void *pb)
{
	const struct found *a = pa, *b = pb;
	int c = base_cmp(a->name, a->baselen, b->name, b->baselen);
	return c != 0 ? c : (int)a->in_new - (int)b->in_new;
}

/* delivery order: mtime, then name (the unique name starts with the time) */
static int found_cmp_time(const void *pa, const void *pb)
{
	const struct found *a = *(const struct found *const *)pa, *b = *(const struct found *const *)pb;
	if (a->mtime.tv_sec != b->mtime.tv_sec)
		return a->mtime.tv_sec < b->mtime.tv_sec ? -1 : 1;
	if (a->mtime.tv_nsec != b->mtime.tv_nsec)
		return a->mtime.tv_nsec < b->mtime.tv_nsec ? -1 : 1;
	return strcmp(a->name, b->name);
}

/* A file moved new/ -> cur/ while we scanned shows up in both: keep cur/,
 * which sorts first. */
static void scan_sort_dedupe(struct scan *sc)
{
	size_t out = 0;
	if (sc->n > 1)
		qsort(sc->v, sc->n, sizeof(*sc->v), found_cmp_base);
	for (size_t i = 0; i < sc->n; i++) {
		const struct found *prev = out > 0 ? &sc->v[out - 1] : NULL;
		if (prev != NULL && base_cmp(prev->name, prev->baselen, sc->v[i].name, sc->v[i].baselen) == 0) {
			free(sc->v[i].name);
			continue;
		}
		sc->v[out++] = sc->v[i];
	}
	sc->n = out;
}

static struct found *scan_find(struct scan *sc, const char *base)
{
	size_t lo = 0, hi = sc->n, blen = strlen(base);
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = base_cmp(base, blen, sc->v[mid].name, sc->v[mid].baselen);
		if (c == 0)
			return &sc->v[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* Never 0, never the previous value (RFC 3501 §2.3.1.1). */
static uint32_t new_uidvalidity(uint32_t old)
{
	uint32_t v = (uint32_t)time(NULL);
	if (v == old)
		v++;
	return v != 0 ? v : 1;
}

/* Another program may have moved the file to cur/ and changed its flags:
 * take them, and bump the modseq when IMAP-visible state changed (RFC 7162). */
static bool refresh(struct store_index *ix, struct store_msg *m, const struct found *f)
{
	bool changed = m->in_new != f->in_new || m->size != f->size;
	m->in_new = f->in_new;
	m->size = f->size;
	if (m->flags != f->flags) {
		m->flags = f->flags;
		m->modseq = ++ix->highestmodseq;
		changed = true;
	}
	return changed;
}

/* Keep entries whose file is still there; drop the others. An index entry
 * matching a file another entry already claimed is a duplicate: dropped. */
static bool reconcile(struct store_index *ix, struct scan *sc)
{
	size_t out = 0;
	bool changed = false, dropped = false;

	for (size_t i = 0; i < ix->count; i++) {
		struct store_msg m = ix->msgs[i];
		struct found *f = scan_find(sc, m.base);
		if (f == NULL || f->matched) {
			free(m.base);
			dropped = true;
			continue;
		}
		f->matched = true;
		changed |= refresh(ix, &m, f);
		ix->msgs[out++] = m;
	}
	ix->count = out;
	if (dropped)
		ix->highestmodseq++;   /* expunges are modseq-visible too (RFC 7162 §3.2.10) */
	return changed || dropped;
}

/* UIDs ran out: start a new UIDVALIDITY epoch numbered from 1. */
static void renumber(struct store_index *ix)
{
	ix->uidvalidity = new_uidvalidity(ix->uidvalidity);
	for (size_t i = 0; i < ix->count; i++)
		ix->msgs[i].uid = (uint32_t)(i + 1);
	ix->uidnext = (uint32_t)(ix->count + 1);
}

static void append_msg(struct store_index *ix, const struct found *f)
{
	struct store_msg *m = &ix->msgs[ix->count++];
	m->uid = ix->uidnext++;
	m->modseq = ++ix->highestmodseq;
	m->flags = f->flags;
	m->keywords = 0;             /* keywords live only in the index: a new file has none */
	m->size = f->size;
	/* clamped to what index_read accepts, or a pre-1970 file would make the
	 * index we write read back as corrupt on every open */
	m->internal_date = f->mtime.tv_sec < 0 ? 0
	    : (uint64_t)f->mtime.tv_sec > DATE_MAX ? (time_t)DATE_MAX : f->mtime.tv_sec;
	m->base = xstrndup(f->name, f->baselen);
	m->in_new = f->in_new;
}

/* Files no entry claimed get the next UIDs, in delivery (mtime, name) order. */
static bool add_new(struct store_index *ix, struct scan *sc)
{
	size_t k = 0;
	struct found **add = xreallocarray(NULL, sc->n ? sc->n : 1, sizeof(*add));
	for (size_t i = 0; i < sc->n; i++)
		if (!sc->v[i].matched)
			add[k++] = &sc->v[i];
	if (k > 0) {
		qsort(add, k, sizeof(*add), found_cmp_time);
		if ((uint64_t)ix->uidnext + k > UINT32_MAX)
			renumber(ix);
		/* past 2^32-1 files even a new epoch cannot number them: leave the rest */
		if ((uint64_t)ix->uidnext + k > UINT32_MAX)
			k = UINT32_MAX - ix->uidnext;
		ix->msgs = xreallocarray(ix->msgs, ix->count + k, sizeof(*ix->msgs));
		for (size_t i = 0; i < k; i++)
			append_msg(ix, add[i]);
	}
	free(add);
	return k > 0;
}

int index_sync(const char *folder_path, struct store_index *ix, bool *changed_r)
{
	struct scan sc = { 0 };
	bool changed = false;

	if (scan_dir(folder_path, true, &sc) == -1 || scan_dir(folder_path, false, &sc) == -1) {
		int saved = errno;
		scan_free(&sc);
		errno = saved;
		return -1;
	}
	scan_sort_dedupe(&sc);
	if (ix->uidvalidity == 0) {
		ix->uidvalidity = new_uidvalidity(0);
		ix->uidnext = 1;
		changed = true;
	}
	changed |= reconcile(ix, &sc);
	changed |= add_new(ix, &sc);
	scan_free(&sc);
	if (changed_r != NULL)
		*changed_r = changed;
	return 0;
}

/* ------------------------------------------------------------ lookup */

static bool is_file_at(int dfd, const char *name)
{
	struct stat st;
	return fstatat(dfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode);
}

/* The name in <folder>/<sub> whose base is m->base. The usual names are
 * tried directly (new/: no info; cur/: the recorded flags), then a readdir
 * finds the file whatever flags another client gave it since. */
static char *find_in_dir(const char *folder_path, const char *sub, const struct store_msg *m)
{
	char *path = xasprintf("%s/%s", folder_path, sub);
	DIR *dir = opendir(path);
	free(path);
	if (dir == NULL)
		return NULL;

	char fl[8], *name = NULL;
	flags_letters(m->flags, fl);
	char *guess = xasprintf("%s:2,%s", m->base, fl);
	size_t blen = strlen(m->base);
	if (is_file_at(dirfd(dir), m->base))
		name = xstrdup(m->base);
	else if (is_file_at(dirfd(dir), guess))
		name = xstrdup(guess);
	for (struct dirent *de; name == NULL && (de = readdir(dir)) != NULL;) {
		if (strncmp(de->d_name, m->base, blen) == 0 && de->d_name[blen] == ':' &&
		    is_file_at(dirfd(dir), de->d_name))
			name = xstrdup(de->d_name);
	}
	free(guess);
	closedir(dir);
	return name;
}

char *index_msg_path(const char *folder_path, const struct store_msg *m)
{
	if (m->base == NULL || !base_safe(m->base)) {
		errno = EINVAL;
		return NULL;
	}
	const char *first = m->in_new ? "new" : "cur", *second = m->in_new ? "cur" : "new";
	const char *sub = first;
	char *name = find_in_dir(folder_path, first, m);
	if (name == NULL) {
		sub = second;
		name = find_in_dir(folder_path, second, m);
	}
	if (name == NULL) {
		errno = ENOENT;
		return NULL;
	}
	char *rel = xasprintf("%s/%s", sub, name);
	free(name);
	return rel;
}

char *index_msg_guess_path(const char *folder_path, const struct store_msg *m)
{
	if (m->base == NULL || !base_safe(m->base))
		return NULL;
	if (m->in_new)
		return xasprintf("%s/new/%s", folder_path, m->base);
	char fl[8];
	flags_letters(m->flags, fl);
	return xasprintf("%s/cur/%s:2,%s", folder_path, m->base, fl);
}

char *index_msg_full_path(const char *folder_path, const struct store_msg *m)
{
	char *rel = index_msg_path(folder_path, m);
	if (rel == NULL)
		return NULL;
	char *full = xasprintf("%s/%s", folder_path, rel);
	free(rel);
	return full;
}
