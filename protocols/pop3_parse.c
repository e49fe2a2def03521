/* pop3_parse.c: POP3 command line -> keyword and arguments. */
#include "protocols/pop3_parse.h"

#include <ctype.h>
#include <stddef.h>
#include <stdbool.h>
#include <string.h>

static enum pop3_parse_result parse_verb(const char *line, size_t len, struct pop3_cmd *cmd,
    size_t *end_r)
{
	size_t i = 0;
	while (i < len && line[i] != ' ') {
		if (i >= 4 || !isalpha((unsigned char)line[i]))
			return POP3_PARSE_BAD_VERB;
		cmd->verb[i] = (char)toupper((unsigned char)line[i]);
		i++;
	}
	if (i < 3)
		return POP3_PARSE_BAD_VERB;
	cmd->verb[i] = '\0';
	*end_r = i;
	return POP3_PARSE_OK;
}

enum pop3_parse_result pop3_parse_line(const char *line, size_t len, struct pop3_cmd *cmd)
{
	memset(cmd, 0, offsetof(struct pop3_cmd, argbuf));
	if (len == 0)
		return POP3_PARSE_EMPTY;
	if (len > POP3_MAX_LINE)
		return POP3_PARSE_ARG_TOO_LONG;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)line[i] < 0x20 && line[i] != '\t')
			return POP3_PARSE_NUL;
	size_t i;
	enum pop3_parse_result r = parse_verb(line, len, cmd, &i);
	if (r != POP3_PARSE_OK)
		return r;
	cmd->rest = i < len ? line + i + 1 : line + len;
	if (strcmp(cmd->verb, "PASS") == 0) {
		/* RFC 1939 §7: "the server may treat spaces in the argument as part of
		 * the password": PASS has one argument, the rest of the line */
		if (*cmd->rest != '\0')
			cmd->args[cmd->nargs++] = cmd->rest;
		return POP3_PARSE_OK;
	}
	char *out = cmd->argbuf;
	while (i < len) {
		while (i < len && line[i] == ' ')
			i++;
		if (i == len)
			break;
		if (cmd->nargs == POP3_MAX_ARGS)
			return POP3_PARSE_TOO_MANY_ARGS;
		size_t start = i;
		while (i < len && line[i] != ' ')
			i++;
		if (i - start > POP3_MAX_ARG_LEN)
			return POP3_PARSE_ARG_TOO_LONG;
		memcpy(out, line + start, i - start);
		out[i - start] = '\0';
		cmd->args[cmd->nargs++] = out;
		out += i - start + 1;
	}
	return POP3_PARSE_OK;
}

static int parse_decimal(const char *s, uint32_t *r, bool allow_zero)
{
	uint64_t v = 0;
	size_t i;
	for (i = 0; s[i] != '\0'; i++) {
		if (!isdigit((unsigned char)s[i]) || i >= 10)
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	if (i == 0 || (v == 0 && !allow_zero) || v > UINT32_MAX)
		return -1;
	*r = (uint32_t)v;
	return 0;
}

int pop3_parse_number(const char *s, uint32_t *r)
{
	return parse_decimal(s, r, false);
}

int pop3_parse_count(const char *s, uint32_t *r)
{
	return parse_decimal(s, r, true);
}

const char *pop3_parse_error(enum pop3_parse_result r)
{
	switch (r) {
	case POP3_PARSE_OK: return "ok";
	case POP3_PARSE_EMPTY: return "Empty command";
	case POP3_PARSE_BAD_VERB: return "Unknown command";
	case POP3_PARSE_NUL: return "Control characters are not allowed in commands";
	case POP3_PARSE_TOO_MANY_ARGS: return "Too many arguments";
	case POP3_PARSE_ARG_TOO_LONG: return "Argument too long";
	}
	return "error";
}
