/* imap_parse.c: IMAP command -> tag, command name, argument tree; sequence sets;
 * FETCH sections. See imap_parse.h for the contract; modified UTF-7 is in common/mutf7.c. */
#include "protocols/imap_parse.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/xmalloc.h"

enum st {
	ST_TAG = 0, ST_CMD, ST_ARG_START, ST_AFTER_ARG, ST_CR, ST_ATOM, ST_BRACKET,
	ST_QUOTED, ST_QUOTED_ESC, ST_TILDE, ST_LIT_OPEN, ST_LIT_HDR, ST_LIT_CLOSE, ST_LIT_CR,
	ST_LIT_LF, ST_LIT_DATA, ST_SKIP, ST_SKIP_CR, ST_DONE, ST_ERROR,
};

enum step { STEP_NEXT, STEP_AGAIN, STEP_DONE, STEP_CONT, STEP_ERR };

#define INT64_MAXU ((uint64_t)INT64_MAX)

void imap_parse_limits_default(struct imap_parse_limits *l)
{
	l->max_line = IMAP_MAX_LINE;
	l->max_literal = 64 * 1024;
	l->max_nonsync = UINT64_MAX;
	l->max_data = 1024 * 1024;
	l->max_depth = IMAP_MAX_DEPTH;
	l->max_args = IMAP_MAX_ARGS;
}

void imap_parser_init(struct imap_parser *p, const struct imap_parse_limits *lim)
{
	memset(p, 0, sizeof(*p));
	if (lim != NULL)
		p->lim = *lim;
	else
		imap_parse_limits_default(&p->lim);
	if (p->lim.max_args == 0)
		p->lim.max_args = 1;
	/* grown on demand (new_node): most commands have a handful of arguments, and
	 * a session holds its parser for its whole life (an idle IMAP session should
	 * cost a few KiB, not max_args nodes) */
	p->args_cap = p->lim.max_args < IMAP_ARGS_INITIAL ? p->lim.max_args : IMAP_ARGS_INITIAL;
	p->args = xcalloc(p->args_cap, sizeof(*p->args));
	buf_init(&p->data, p->lim.max_data);
	p->skip_line = false;
	imap_parser_reset(p);
}

void imap_parser_free(struct imap_parser *p)
{
	free(p->args);
	p->args = NULL;
	buf_free(&p->data);
}

void imap_parser_reset(struct imap_parser *p)
{
	bool skip = p->state == ST_ERROR && p->skip_line && !p->fatal;
	p->state = skip ? ST_SKIP : ST_TAG;
	p->err = IMAP_PE_NONE;
	p->fatal = p->skip_line = false;
	p->taglen = p->cmdlen = 0;
	p->tag[0] = p->command[0] = '\0';
	p->line_len = 0;
	p->nargs = 0;
	p->first = p->last_top = p->cur_list = p->cur = IMAP_ARG_NONE;
	p->depth = 0;
	p->lit_size = p->lit_left = 0;
	p->lit_digits = p->lit_plus = p->lit8 = p->lit_nul = false;
	p->just_opened = p->br_quote = p->br_esc = false;
	buf_reset(&p->data);
}

static enum step fail(struct imap_parser *p, enum imap_parse_error e, bool skip, bool fatal)
{
	p->err = e;
	p->skip_line = skip;
	p->fatal = fatal;
	p->state = ST_ERROR;
	return STEP_ERR;
}

/* RFC 9051 §9: ATOM-CHAR = any CHAR except atom-specials */
static bool is_atom_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("(){%*\"\\]", c) == NULL;
}

/* tag = 1*<any ASTRING-CHAR except "+">; ASTRING-CHAR = ATOM-CHAR / "]" */
static bool is_tag_char(unsigned char c)
{
	return (is_atom_char(c) || c == ']') && c != '+';
}

/* Argument atoms are looser than ATOM-CHAR: flags (\Seen), list wildcards (% *),
 * "]" and fetch atoms are all read as atoms; the session checks what it expects. */
static bool is_arg_atom_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("(){\"", c) == NULL;
}

static enum step new_node(struct imap_parser *p, enum imap_arg_type type)
{
	if (p->nargs >= p->lim.max_args)
		return fail(p, IMAP_PE_TOO_MANY_ARGS, true, false);
	if (p->nargs >= p->args_cap) {   /* no pointer into args is held across this call */
		uint32_t cap = p->args_cap > p->lim.max_args / 2 ? p->lim.max_args : p->args_cap * 2;
		p->args = xreallocarray(p->args, cap, sizeof(*p->args));
		p->args_cap = cap;
	}
	uint32_t idx = p->nargs++;
	struct imap_arg *a = &p->args[idx];
	memset(a, 0, sizeof(*a));
	a->type = type;
	a->parent = p->cur_list;
	a->next = a->first = a->last = IMAP_ARG_NONE;
	a->off = p->data.len;
	if (p->cur_list == IMAP_ARG_NONE) {
		if (p->last_top == IMAP_ARG_NONE)
			p->first = idx;
		else
			p->args[p->last_top].next = idx;
		p->last_top = idx;
	} else {
		struct imap_arg *l = &p->args[p->cur_list];
		if (l->last == IMAP_ARG_NONE)
			l->first = idx;
		else
			p->args[l->last].next = idx;
		l->last = idx;
		l->count++;
	}
	p->cur = idx;
	p->just_opened = false;
	return STEP_NEXT;
}

static enum step put(struct imap_parser *p, const char *s, size_t n)
{
	if (buf_append(&p->data, s, n) == -1)
		return fail(p, IMAP_PE_TOO_MUCH_DATA, true, false);
	return STEP_NEXT;
}

/* Closes the value of p->cur: length, NUL separator, NUMBER/NIL classification */
static enum step finish_value(struct imap_parser *p)
{
	struct imap_arg *a = &p->args[p->cur];
	a->len = p->data.len - a->off;
	if (put(p, "", 1) == STEP_ERR)
		return STEP_ERR;
	const char *v = p->data.data + a->off;
	if (a->type == IMAP_ARG_ATOM) {
		if (a->len == 3 && strncasecmp(v, "NIL", 3) == 0) {
			a->type = IMAP_ARG_NIL;
		} else if (a->len <= 19 && strspn(v, "0123456789") == a->len) {
			uint64_t n = 0;
			for (size_t i = 0; i < a->len; i++)
				n = n * 10 + (uint64_t)(v[i] - '0');
			if (n <= INT64_MAXU) {   /* number64, RFC 9051 §9 */
				a->type = IMAP_ARG_NUMBER;
				a->num = n;
			}
		}
	}
	p->state = ST_AFTER_ARG;
	return STEP_NEXT;
}

static enum step open_list(struct imap_parser *p)
{
	if (p->depth >= p->lim.max_depth)
		return fail(p, IMAP_PE_TOO_DEEP, true, false);
	if (new_node(p, IMAP_ARG_LIST) == STEP_ERR)
		return STEP_ERR;
	p->cur_list = p->cur;
	p->depth++;
	p->just_opened = true;
	p->state = ST_ARG_START;
	return STEP_NEXT;
}

static enum step close_list(struct imap_parser *p)
{
	if (p->cur_list == IMAP_ARG_NONE)
		return fail(p, IMAP_PE_SYNTAX, true, false);
	p->cur = p->cur_list;
	p->cur_list = p->args[p->cur_list].parent;
	p->depth--;
	p->just_opened = false;
	p->state = ST_AFTER_ARG;
	return STEP_NEXT;
}

static enum step step_tag(struct imap_parser *p, unsigned char c)
{
	if (c == ' ' && p->taglen > 0) {
		p->state = ST_CMD;
		return STEP_NEXT;
	}
	if (c == '\r' && p->taglen == 0)
		return fail(p, IMAP_PE_EMPTY, true, false);
	if (c == '\n')
		return fail(p, IMAP_PE_BARE_EOL, false, false);
	if (c == '\r')
		return fail(p, IMAP_PE_BAD_COMMAND, true, false);
	if (!is_tag_char(c) || p->taglen == IMAP_MAX_TAG) {
		p->taglen = 0;
		p->tag[0] = '\0';
		return fail(p, IMAP_PE_BAD_TAG, true, false);
	}
	p->tag[p->taglen++] = (char)c;
	p->tag[p->taglen] = '\0';
	return STEP_NEXT;
}

static enum step step_cmd(struct imap_parser *p, unsigned char c)
{
	if ((c == ' ' || c == '\r') && p->cmdlen > 0) {
		p->state = ST_AFTER_ARG;
		return STEP_AGAIN;
	}
	if (c == '\n')
		return fail(p, IMAP_PE_BARE_EOL, false, false);
	if (!is_atom_char(c) || p->cmdlen == IMAP_MAX_COMMAND) {
		p->cmdlen = 0;
		p->command[0] = '\0';
		return fail(p, IMAP_PE_BAD_COMMAND, true, false);
	}
	p->command[p->cmdlen++] = (char)toupper(c);
	p->command[p->cmdlen] = '\0';
	return STEP_NEXT;
}

static enum step step_arg_start(struct imap_parser *p, unsigned char c)
{
	switch (c) {
	case '(':
		return open_list(p);
	case ')':
		if (!p->just_opened)
			return fail(p, IMAP_PE_SYNTAX, true, false);
		return close_list(p);
	case '"':
		p->state = ST_QUOTED;
		return new_node(p, IMAP_ARG_QUOTED);
	case '{':
		p->lit8 = false;
		p->state = ST_LIT_OPEN;
		return STEP_AGAIN;
	case '~':
		p->state = ST_TILDE;
		return STEP_NEXT;
	case '\r':
		return fail(p, p->just_opened ? IMAP_PE_UNCLOSED_LIST : IMAP_PE_SYNTAX, true, false);
	case '\n':
		return fail(p, IMAP_PE_BARE_EOL, false, false);
	}
	if (!is_arg_atom_char(c))
		return fail(p, c == '\0' ? IMAP_PE_NUL : IMAP_PE_SYNTAX, true, false);
	p->state = ST_ATOM;
	if (new_node(p, IMAP_ARG_ATOM) == STEP_ERR)
		return STEP_ERR;
	return STEP_AGAIN;
}

static enum step step_after_arg(struct imap_parser *p, unsigned char c)
{
	switch (c) {
	case ' ':
		p->state = ST_ARG_START;
		return STEP_NEXT;
	case ')':
		return close_list(p);
	case '\r':
		if (p->cur_list != IMAP_ARG_NONE)
			return fail(p, IMAP_PE_UNCLOSED_LIST, true, false);
		p->state = ST_CR;
		return STEP_NEXT;
	case '\n':
		return fail(p, IMAP_PE_BARE_EOL, false, false);
	}
	return fail(p, c == '\0' ? IMAP_PE_NUL : IMAP_PE_SYNTAX, true, false);
}

static enum step step_atom(struct imap_parser *p, unsigned char c)
{
	if (c == ' ' || c == ')' || c == '\r')
		return finish_value(p) == STEP_ERR ? STEP_ERR : STEP_AGAIN;
	if (c == '\n')
		return fail(p, IMAP_PE_BARE_EOL, false, false);
	if (!is_arg_atom_char(c))
		return fail(p, c == '\0' ? IMAP_PE_NUL : IMAP_PE_SYNTAX, true, false);
	if (c == '[') {
		p->state = ST_BRACKET;
		p->br_quote = p->br_esc = false;
	}
	char ch = (char)c;
	return put(p, &ch, 1);
}

/* Inside an atom's "[...]": RFC 9051 §9 section-spec may hold SP, a header-list in
 * parentheses and quoted header-fld-names; kept verbatim, no nesting. */
static enum step step_bracket(struct imap_parser *p, unsigned char c)
{
	if (c == '\r' || c == '\n' || c == '\0' || c < 0x20 || c > 0x7e)
		return fail(p, c == '\n' ? IMAP_PE_BARE_EOL : c == '\0' ? IMAP_PE_NUL :
		    IMAP_PE_SYNTAX, c != '\n', false);
	if (p->br_quote) {
		if (p->br_esc)
			p->br_esc = false;
		else if (c == '\\')
			p->br_esc = true;
		else if (c == '"')
			p->br_quote = false;
	} else if (c == '"') {
		p->br_quote = true;
	} else if (c == ']') {
		p->state = ST_ATOM;
	} else if (c == '[' || c == '{') {
		return fail(p, IMAP_PE_SYNTAX, true, false);
	}
	char ch = (char)c;
	return put(p, &ch, 1);
}

/* RFC 9051 §4.3: quoted = DQUOTE *QUOTED-CHAR DQUOTE; only \" and \\ escapes */
static enum step step_quoted(struct imap_parser *p, unsigned char c)
{
	char ch = (char)c;
	if (p->state == ST_QUOTED_ESC) {
		if (c != '"' && c != '\\')
			return fail(p, IMAP_PE_BAD_QUOTED, true, false);
		p->state = ST_QUOTED;
		return put(p, &ch, 1);
	}
	switch (c) {
	case '"':
		return finish_value(p);
	case '\\':
		p->state = ST_QUOTED_ESC;
		return STEP_NEXT;
	case '\r':
		return fail(p, IMAP_PE_BAD_QUOTED, true, false);
	case '\n':
		return fail(p, IMAP_PE_BAD_QUOTED, false, false);
	case '\0':
		return fail(p, IMAP_PE_NUL, true, false);
	}
	return put(p, &ch, 1);
}

/* Size checks happen at "}" - before any "+ Ready" and before any octet is read. */
static enum step literal_header_done(struct imap_parser *p)
{
	uint64_t n = p->lit_size;
	if (p->lit_plus) {
		/* RFC 7888 §4-5: the client sends the octets without waiting; a refusal
		 * cannot resynchronise the stream, so the session closes after BAD */
		if (n > p->lim.max_nonsync || n > p->lim.max_literal)
			return fail(p, IMAP_PE_NONSYNC_TOO_BIG, true, true);
		if (n >= p->lim.max_data - p->data.len || p->lim.max_data <= p->data.len)
			return fail(p, IMAP_PE_TOO_MUCH_DATA, true, true);
	} else {
		if (n > p->lim.max_literal)
			return fail(p, IMAP_PE_LITERAL_TOO_BIG, true, false);
		if (p->lim.max_data <= p->data.len || n >= p->lim.max_data - p->data.len)
			return fail(p, IMAP_PE_TOO_MUCH_DATA, true, false);
	}
	p->state = ST_LIT_CR;
	return STEP_NEXT;
}

static enum step step_literal(struct imap_parser *p, unsigned char c)
{
	switch (p->state) {
	case ST_TILDE:
		if (c == '{') {   /* literal8 = "~{" number64 ["+"] "}" CRLF *OCTET */
			p->lit8 = true;
			p->state = ST_LIT_OPEN;
			return STEP_AGAIN;
		}
		/* "~" starting an atom */
		p->state = ST_ATOM;
		if (new_node(p, IMAP_ARG_ATOM) == STEP_ERR || put(p, "~", 1) == STEP_ERR)
			return STEP_ERR;
		return STEP_AGAIN;
	case ST_LIT_OPEN:
		p->lit_size = 0;
		p->lit_digits = p->lit_plus = false;
		p->state = ST_LIT_HDR;
		return STEP_NEXT;
	case ST_LIT_HDR:
		if (c >= '0' && c <= '9') {
			if (p->lit_size > (INT64_MAXU - (uint64_t)(c - '0')) / 10)
				return fail(p, IMAP_PE_LITERAL_TOO_BIG, true, false);
			p->lit_size = p->lit_size * 10 + (uint64_t)(c - '0');
			p->lit_digits = true;
			return STEP_NEXT;
		}
		if (!p->lit_digits || (c != '+' && c != '}'))
			return fail(p, IMAP_PE_BAD_LITERAL, c != '\n', false);
		p->lit_plus = c == '+';
		if (c == '+') {
			p->state = ST_LIT_CLOSE;
			return STEP_NEXT;
		}
		return literal_header_done(p);
	case ST_LIT_CLOSE:
		if (c != '}')
			return fail(p, IMAP_PE_BAD_LITERAL, c != '\n', false);
		return literal_header_done(p);
	case ST_LIT_CR:
		if (c != '\r')
			return fail(p, IMAP_PE_BAD_LITERAL, c != '\n', p->lit_plus);
		p->state = ST_LIT_LF;
		return STEP_NEXT;
	default:   /* ST_LIT_LF */
		if (c != '\n')
			return fail(p, IMAP_PE_BARE_EOL, true, p->lit_plus);
		if (new_node(p, IMAP_ARG_LITERAL) == STEP_ERR)
			return STEP_ERR;
		p->args[p->cur].literal8 = p->lit8;
		p->args[p->cur].nonsync = p->lit_plus;
		p->lit_left = p->lit_size;
		p->lit_nul = false;
		p->state = ST_LIT_DATA;
		return p->lit_plus ? STEP_NEXT : STEP_CONT;
	}
}

static enum step step_eol(struct imap_parser *p, unsigned char c)
{
	if (p->state == ST_CR) {
		if (c != '\n')
			return fail(p, IMAP_PE_BARE_EOL, true, false);
		p->state = ST_DONE;
		return STEP_DONE;
	}
	/* ST_SKIP / ST_SKIP_CR: drop the rest of an erroneous line through CRLF */
	if (p->state == ST_SKIP_CR && c == '\n') {
		p->state = ST_TAG;
		return STEP_NEXT;
	}
	p->state = c == '\r' ? ST_SKIP_CR : ST_SKIP;
	return STEP_NEXT;
}

static enum step step(struct imap_parser *p, unsigned char c)
{
	switch ((enum st)p->state) {
	case ST_TAG: return step_tag(p, c);
	case ST_CMD: return step_cmd(p, c);
	case ST_ARG_START: return step_arg_start(p, c);
	case ST_AFTER_ARG: return step_after_arg(p, c);
	case ST_ATOM: return step_atom(p, c);
	case ST_BRACKET: return step_bracket(p, c);
	case ST_QUOTED: case ST_QUOTED_ESC: return step_quoted(p, c);
	case ST_TILDE: case ST_LIT_OPEN: case ST_LIT_HDR: case ST_LIT_CLOSE: case ST_LIT_CR:
	case ST_LIT_LF:
		return step_literal(p, c);
	case ST_CR: case ST_SKIP: case ST_SKIP_CR: return step_eol(p, c);
	case ST_LIT_DATA: case ST_DONE: case ST_ERROR: break;
	}
	return fail(p, IMAP_PE_SYNTAX, false, true);   /* not reached */
}

/* Literal octets go straight to the data buffer; they do not count as line. */
static enum imap_parse_status feed_literal(struct imap_parser *p, const char *data,
    size_t len, size_t *i)
{
	size_t n = len - *i;
	if ((uint64_t)n > p->lit_left)
		n = (size_t)p->lit_left;
	if (!p->lit8 && memchr(data + *i, '\0', n) != NULL)
		p->lit_nul = true;
	if (put(p, data + *i, n) == STEP_ERR)
		return IMAP_PARSE_ERROR;
	*i += n;
	p->lit_left -= n;
	if (p->lit_left > 0)
		return IMAP_PARSE_MORE;
	if (p->lit_nul) {   /* RFC 9051 §9: literal is CHAR8 (%x01-ff) */
		fail(p, IMAP_PE_NUL, true, false);
		return IMAP_PARSE_ERROR;
	}
	if (finish_value(p) == STEP_ERR)
		return IMAP_PARSE_ERROR;
	return IMAP_PARSE_MORE;
}

enum imap_parse_status imap_parser_feed(struct imap_parser *p, const char *data, size_t len,
    size_t *consumed_r)
{
	size_t i = 0;
	enum imap_parse_status ret = IMAP_PARSE_MORE;
	if (p->state == ST_DONE || p->state == ST_ERROR) {
		*consumed_r = 0;
		return p->state == ST_DONE ? IMAP_PARSE_DONE : IMAP_PARSE_ERROR;
	}
	while (i < len) {
		if (p->state == ST_LIT_DATA) {
			if (feed_literal(p, data, len, &i) == IMAP_PARSE_ERROR) {
				ret = IMAP_PARSE_ERROR;
				break;
			}
			continue;
		}
		bool skipping = p->state == ST_SKIP || p->state == ST_SKIP_CR;
		if (!skipping && p->line_len >= p->lim.max_line) {
			fail(p, IMAP_PE_LINE_TOO_LONG, true, true);
			ret = IMAP_PARSE_ERROR;
			break;
		}
		enum step s = step(p, (unsigned char)data[i]);
		if (s == STEP_AGAIN)
			continue;
		if (s == STEP_ERR) {
			/* a bare LF ended the client's line: it is consumed with the error */
			if (!p->skip_line && data[i] == '\n')
				i++;
			ret = IMAP_PARSE_ERROR;
			break;
		}
		i++;
		if (!skipping)
			p->line_len++;
		if (s == STEP_DONE) {
			ret = IMAP_PARSE_DONE;
			break;
		}
		if (s == STEP_CONT) {
			ret = IMAP_PARSE_CONTINUE;
			break;
		}
	}
	*consumed_r = i;
	return ret;
}

enum imap_parse_error imap_parser_error(const struct imap_parser *p)
{
	return p->err;
}

bool imap_parser_fatal(const struct imap_parser *p)
{
	return p->fatal;
}

const char *imap_parser_tag(const struct imap_parser *p)
{
	return p->taglen > 0 && p->state != ST_TAG ? p->tag : NULL;
}

const char *imap_parser_command(const struct imap_parser *p)
{
	return p->cmdlen > 0 && p->state != ST_CMD ? p->command : NULL;
}

const char *imap_parse_strerror(enum imap_parse_error e)
{
	switch (e) {
	case IMAP_PE_NONE: return "ok";
	case IMAP_PE_EMPTY: return "Empty command line";
	case IMAP_PE_BAD_TAG: return "Invalid tag";
	case IMAP_PE_BAD_COMMAND: return "Invalid or missing command name";
	case IMAP_PE_SYNTAX: return "Syntax error";
	case IMAP_PE_BARE_EOL: return "Lines must end with CRLF";
	case IMAP_PE_NUL: return "NUL characters are not allowed";
	case IMAP_PE_BAD_QUOTED: return "Invalid quoted string";
	case IMAP_PE_BAD_LITERAL: return "Invalid literal";
	case IMAP_PE_LITERAL_TOO_BIG: return "Literal too big";
	case IMAP_PE_NONSYNC_TOO_BIG: return "Non-synchronizing literal too big";
	case IMAP_PE_LINE_TOO_LONG: return "Command line too long";
	case IMAP_PE_TOO_DEEP: return "Lists nested too deeply";
	case IMAP_PE_TOO_MANY_ARGS: return "Too many arguments";
	case IMAP_PE_UNCLOSED_LIST: return "Missing ')'";
	case IMAP_PE_TOO_MUCH_DATA: return "Command too big";
	}
	return "error";
}

const char *imap_parse_resp_code(enum imap_parse_error e)
{
	switch (e) {
	case IMAP_PE_LITERAL_TOO_BIG: case IMAP_PE_NONSYNC_TOO_BIG: case IMAP_PE_TOO_MUCH_DATA:
		return "TOOBIG";   /* RFC 9051 §7.1, RFC 7888 §4 */
	default:
		return NULL;
	}
}

static const struct imap_arg *arg_at(const struct imap_parser *p, uint32_t idx)
{
	return idx == IMAP_ARG_NONE || idx >= p->nargs ? NULL : &p->args[idx];
}

const struct imap_arg *imap_arg_first(const struct imap_parser *p)
{
	return arg_at(p, p->first);
}

const struct imap_arg *imap_arg_next(const struct imap_parser *p, const struct imap_arg *a)
{
	return a == NULL ? NULL : arg_at(p, a->next);
}

const struct imap_arg *imap_arg_child(const struct imap_parser *p, const struct imap_arg *a)
{
	return a == NULL || a->type != IMAP_ARG_LIST ? NULL : arg_at(p, a->first);
}

size_t imap_arg_count(const struct imap_parser *p)
{
	size_t n = 0;
	for (const struct imap_arg *a = imap_arg_first(p); a != NULL; a = imap_arg_next(p, a))
		n++;
	return n;
}

const char *imap_arg_value(const struct imap_parser *p, const struct imap_arg *a,
    size_t *len_r)
{
	if (a == NULL || a->type == IMAP_ARG_LIST)
		return NULL;
	if (len_r != NULL)
		*len_r = a->len;
	return p->data.data + a->off;
}

bool imap_arg_is_atom(const struct imap_arg *a)
{
	return a != NULL && (a->type == IMAP_ARG_ATOM || a->type == IMAP_ARG_NUMBER ||
	    a->type == IMAP_ARG_NIL);
}

const char *imap_arg_astring(const struct imap_parser *p, const struct imap_arg *a,
    size_t *len_r)
{
	if (a == NULL || a->type == IMAP_ARG_LIST || (a->type == IMAP_ARG_LITERAL && a->literal8))
		return NULL;
	const char *v = imap_arg_value(p, a, len_r);
	if (imap_arg_is_atom(a)) {   /* ASTRING-CHAR only: no wildcards, no \, no [ */
		for (size_t i = 0; i < a->len; i++)
			if (!is_atom_char((unsigned char)v[i]) && v[i] != ']')
				return NULL;
	}
	return v;
}

/* ---- sequence sets ---- */

/* nz-number (RFC 9051 §9): digit-nz *DIGIT, at most 2^32-1; or "*" */
static int seq_number(const char *s, size_t len, size_t *i, uint32_t *r)
{
	if (*i < len && s[*i] == '*') {
		(*i)++;
		*r = IMAP_SEQ_STAR;
		return 0;
	}
	if (*i >= len || s[*i] < '1' || s[*i] > '9')
		return -1;
	uint64_t v = 0;
	while (*i < len && s[*i] >= '0' && s[*i] <= '9') {
		v = v * 10 + (uint64_t)(s[*i] - '0');
		if (v > UINT32_MAX)
			return -1;
		(*i)++;
	}
	*r = (uint32_t)v;
	return 0;
}

int imap_seqset_parse(const char *s, size_t len, struct imap_seqset *out)
{
	out->n = 0;
	out->dollar = false;
	if (len == 1 && s[0] == '$') {   /* RFC 5182 §2.1: "$" stands alone */
		out->dollar = true;
		return 0;
	}
	size_t i = 0;
	for (;;) {
		uint32_t lo, hi;
		if (out->n == IMAP_SEQSET_MAX_RANGES || seq_number(s, len, &i, &lo) == -1)
			return -1;
		hi = lo;
		if (i < len && s[i] == ':') {
			i++;
			if (seq_number(s, len, &i, &hi) == -1)
				return -1;
		}
		/* RFC 9051 §9 seq-range: either order; keep the star in hi */
		if (lo == IMAP_SEQ_STAR || (hi != IMAP_SEQ_STAR && lo > hi)) {
			uint32_t t = lo;
			lo = hi;
			hi = t;
		}
		out->r[out->n].lo = lo;
		out->r[out->n].hi = hi;
		out->n++;
		if (i == len)
			return 0;
		if (s[i] != ',')
			return -1;
		i++;
	}
}

static void seq_resolve(const struct imap_seqrange *r, uint32_t max, uint32_t *a, uint32_t *b)
{
	uint32_t lo = r->lo == IMAP_SEQ_STAR ? max : r->lo;
	uint32_t hi = r->hi == IMAP_SEQ_STAR ? max : r->hi;
	*a = lo < hi ? lo : hi;
	*b = lo < hi ? hi : lo;
}

bool imap_seqset_contains(const struct imap_seqset *s, uint32_t n, uint32_t max)
{
	if (s->dollar || n == 0 || n > max)
		return false;
	for (size_t i = 0; i < s->n; i++) {
		uint32_t a, b;
		seq_resolve(&s->r[i], max, &a, &b);
		if (a <= n && n <= b)
			return true;
	}
	return false;
}

uint32_t imap_seqset_highest(const struct imap_seqset *s, uint32_t max)
{
	uint32_t best = 0;
	if (s->dollar || max == 0)
		return 0;
	for (size_t i = 0; i < s->n; i++) {
		uint32_t a, b;
		seq_resolve(&s->r[i], max, &a, &b);
		if (a > max)
			continue;
		if (b > max)
			b = max;
		if (b > best)
			best = b;
	}
	return best;
}

/* ---- FETCH sections (RFC 9051 §9 section, section-binary, partial) ---- */

static bool eat(const char *s, size_t len, size_t *i, const char *word)
{
	size_t n = strlen(word);
	if (len - *i < n || strncasecmp(s + *i, word, n) != 0)
		return false;
	*i += n;
	return true;
}

static int sec_number(const char *s, size_t len, size_t *i, bool nz, uint32_t *r)
{
	size_t start = *i;
	uint64_t v = 0;
	while (*i < len && s[*i] >= '0' && s[*i] <= '9') {
		v = v * 10 + (uint64_t)(s[*i] - '0');
		if (v > UINT32_MAX)
			return -1;
		(*i)++;
	}
	if (*i == start || (nz && (v == 0 || s[start] == '0')))
		return -1;
	*r = (uint32_t)v;
	return 0;
}

/* header-list = "(" header-fld-name *(SP header-fld-name) ")"; names are astrings */
static int sec_fields(const char *s, size_t len, size_t *i, struct imap_fetch_section *out)
{
	if (!eat(s, len, i, " ("))
		return -1;
	for (;;) {
		size_t start = *i;
		if (out->nfields == IMAP_SECTION_MAX_FIELDS || *i >= len)
			return -1;
		if (s[*i] == '"') {
			for ((*i)++; *i < len && s[*i] != '"'; (*i)++)
				if (s[*i] == '\\')
					(*i)++;
			if (*i >= len)
				return -1;
			out->fields[out->nfields].off = start + 1;
			out->fields[out->nfields].len = *i - start - 1;
			(*i)++;
		} else {
			while (*i < len && (is_atom_char((unsigned char)s[*i]) || s[*i] == ']') &&
			    !(s[*i] == ']' && *i + 1 < len && s[*i + 1] != ' ' && s[*i + 1] != ')'))
				(*i)++;
			if (*i == start)
				return -1;
			out->fields[out->nfields].off = start;
			out->fields[out->nfields].len = *i - start;
		}
		out->nfields++;
		if (*i < len && s[*i] == ')') {
			(*i)++;
			return 0;
		}
		if (!eat(s, len, i, " "))
			return -1;
	}
}

static int sec_text(const char *s, size_t len, size_t *i, struct imap_fetch_section *out)
{
	if (eat(s, len, i, "HEADER.FIELDS.NOT")) {
		out->text = IMAP_SECTION_HEADER_FIELDS_NOT;
		return sec_fields(s, len, i, out);
	}
	if (eat(s, len, i, "HEADER.FIELDS")) {
		out->text = IMAP_SECTION_HEADER_FIELDS;
		return sec_fields(s, len, i, out);
	}
	if (eat(s, len, i, "HEADER"))
		out->text = IMAP_SECTION_HEADER;
	else if (eat(s, len, i, "TEXT"))
		out->text = IMAP_SECTION_TEXT;
	else if (out->nparts > 0 && eat(s, len, i, "MIME"))   /* section-text, after a part */
		out->text = IMAP_SECTION_MIME;
	else
		return -1;
	return 0;
}

static int sec_spec(const char *s, size_t len, size_t *i, struct imap_fetch_section *out)
{
	bool binary = out->item >= IMAP_FETCH_BINARY;
	if (*i < len && s[*i] == ']')
		return 0;
	if (*i < len && s[*i] >= '0' && s[*i] <= '9') {
		for (;;) {   /* section-part = nz-number *("." nz-number) */
			if (out->nparts == IMAP_SECTION_MAX_PARTS ||
			    sec_number(s, len, i, true, &out->parts[out->nparts]) == -1)
				return -1;
			out->nparts++;
			if (*i + 1 < len && s[*i] == '.' && s[*i + 1] >= '0' && s[*i + 1] <= '9')
				(*i)++;
			else
				break;
		}
		if (*i < len && s[*i] == ']')
			return 0;
		if (binary || !eat(s, len, i, "."))   /* section-binary: parts only */
			return -1;
	} else if (binary) {
		return -1;
	}
	return sec_text(s, len, i, out);
}

int imap_fetch_section_parse(const char *s, size_t len, struct imap_fetch_section *out)
{
	static const struct { const char *name; enum imap_fetch_item item; } items[] = {
		{ "BODY.PEEK[", IMAP_FETCH_BODY_PEEK }, { "BODY[", IMAP_FETCH_BODY },
		{ "BINARY.PEEK[", IMAP_FETCH_BINARY_PEEK }, { "BINARY.SIZE[", IMAP_FETCH_BINARY_SIZE },
		{ "BINARY[", IMAP_FETCH_BINARY },
	};
	size_t i = 0, k;
	memset(out, 0, sizeof(*out));
	for (k = 0; k < sizeof(items) / sizeof(items[0]); k++)
		if (eat(s, len, &i, items[k].name))
			break;
	if (k == sizeof(items) / sizeof(items[0]))
		return -1;
	out->item = items[k].item;
	if (sec_spec(s, len, &i, out) == -1 || !eat(s, len, &i, "]"))
		return -1;
	if (i == len)
		return 0;
	/* partial = "<" number64 "." nz-number64 ">" (not for BINARY.SIZE) */
	if (out->item == IMAP_FETCH_BINARY_SIZE || !eat(s, len, &i, "<") ||
	    sec_number(s, len, &i, false, &out->partial_off) == -1 || !eat(s, len, &i, ".") ||
	    sec_number(s, len, &i, true, &out->partial_len) == -1 || !eat(s, len, &i, ">") ||
	    i != len)
		return -1;
	out->partial = true;
	return 0;
}
