/* smtp_parse.c: SMTP command line -> verb, path and ESMTP parameters; DATA stream ->
 * unstuffed message. Modelled on Dovecot's lib-smtp/smtp-command-parser.c: explicit
 * limits, exact error codes, no I/O. */
#include "protocols/smtp_parse.h"

#include <string.h>

/* ---- small ASCII helpers (locale-independent on purpose) ---- */

static bool is_digit(unsigned char c)
{
	return c >= '0' && c <= '9';
}

static bool is_alnum(unsigned char c)
{
	return is_digit(c) || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

static char upper(char c)
{
	return c >= 'a' && c <= 'z' ? (char)(c - ('a' - 'A')) : c;
}

static bool ascii_ncaseeq(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (upper(a[i]) != upper(b[i]))
			return false;
	return true;
}

/* index of s[0..n) in a NULL-terminated word list, case-insensitive; -1 if absent */
static int word_index(const char *s, size_t n, const char *const *words)
{
	for (int i = 0; words[i] != NULL; i++)
		if (strlen(words[i]) == n && ascii_ncaseeq(s, words[i], n))
			return i;
	return -1;
}

/* 1*DIGIT -> uint64: 0, -1 when not digits, -2 on overflow */
static int parse_u64(const char *s, size_t n, uint64_t *r)
{
	uint64_t v = 0;
	if (n == 0)
		return -1;
	for (size_t i = 0; i < n; i++)
		if (!is_digit((unsigned char)s[i]))
			return -1;
	for (size_t i = 0; i < n; i++) {
		unsigned d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -2;
		v = v * 10 + d;
	}
	*r = v;
	return 0;
}

static int hex_upper(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* RFC 3461 §4: xtext = *( xchar / hexchar ); xchar = "!".."~" except "+" and "=";
 * hexchar = "+" 2(DIGIT / "A".."F"). Decoded octets must be printable US-ASCII
 * (RFC 3461 §4.2, §4.4) unless allow_8bit (AUTH=, whose mailbox is validated after). */
static int xtext_decode(const char *s, char *out, size_t outsize, bool allow_8bit, size_t *n_r)
{
	size_t o = 0;
	for (size_t i = 0; s[i] != '\0'; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '+') {
			int hi = hex_upper(s[i + 1]), lo = hi < 0 ? -1 : hex_upper(s[i + 2]);
			if (lo < 0)
				return -1;
			c = (unsigned char)(hi << 4 | lo);
			i += 2;
			if (!allow_8bit && (c < 32 || c > 126))
				return -1;
		} else if (c < 33 || c > 126 || c == '=') {
			return -1;
		}
		if (o + 1 >= outsize)
			return -1;
		out[o++] = (char)c;
	}
	out[o] = '\0';
	*n_r = o;
	return 0;
}

/* ---- MAIL / RCPT parameters ---- */

/* RFC 1870 §3: SIZE=1*20DIGIT; a value beyond 2^64-1 is "too big", not a syntax error */
static enum smtp_parse_result p_size(struct smtp_cmd *cmd, const char *v)
{
	int r = v == NULL ? -1 : parse_u64(v, strlen(v), &cmd->mail.size);
	if (r == -2)
		return SMTP_E_SIZE_OVERFLOW;
	if (r == -1)
		return SMTP_E_BAD_SIZE;
	cmd->mail.has_size = true;
	return SMTP_PARSE_OK;
}

/* RFC 6152 §2 (7BIT, 8BITMIME), RFC 3030 §3 (BINARYMIME) */
static enum smtp_parse_result p_body(struct smtp_cmd *cmd, const char *v)
{
	static const char *const words[] = { "7BIT", "8BITMIME", "BINARYMIME", NULL };
	int i = v == NULL ? -1 : word_index(v, strlen(v), words);
	if (i < 0)
		return SMTP_E_BAD_BODY;
	cmd->mail.body = (enum smtp_body)(SMTP_BODY_7BIT + i);
	return SMTP_PARSE_OK;
}

/* RFC 6531 §3.4: SMTPUTF8 takes no value */
static enum smtp_parse_result p_smtputf8(struct smtp_cmd *cmd, const char *v)
{
	if (v != NULL)
		return SMTP_E_PARAM_SYNTAX;
	cmd->mail.smtputf8 = true;
	return SMTP_PARSE_OK;
}

/* RFC 3461 §4.3: RET=FULL / HDRS */
static enum smtp_parse_result p_ret(struct smtp_cmd *cmd, const char *v)
{
	static const char *const words[] = { "FULL", "HDRS", NULL };
	int i = v == NULL ? -1 : word_index(v, strlen(v), words);
	if (i < 0)
		return SMTP_E_BAD_RET;
	cmd->mail.ret = (enum smtp_ret)(SMTP_RET_FULL + i);
	return SMTP_PARSE_OK;
}

/* RFC 3461 §4.4: ENVID=xtext, at most 100 characters */
static enum smtp_parse_result p_envid(struct smtp_cmd *cmd, const char *v)
{
	size_t n;
	if (v == NULL || strlen(v) > SMTP_ENVID_MAX ||
	    xtext_decode(v, cmd->mail.envid, sizeof(cmd->mail.envid), false, &n) == -1)
		return SMTP_E_BAD_ENVID;
	cmd->mail.has_envid = true;
	return SMTP_PARSE_OK;
}

/* RFC 4954 §5: AUTH=xtext(addr-spec) / "<>" */
static enum smtp_parse_result p_auth(struct smtp_cmd *cmd, const char *v)
{
	char tmp[SMTP_MAX_LINE];
	size_t n;
	if (v == NULL || xtext_decode(v, tmp, sizeof(tmp), true, &n) == -1)
		return SMTP_E_BAD_AUTH_PARAM;
	cmd->mail.has_auth = true;
	if (strcmp(tmp, "<>") == 0) {
		cmd->mail.auth_null = true;
		return SMTP_PARSE_OK;
	}
	if (mailaddr_parse(tmp, n, MAILADDR_ALLOW_UTF8, &cmd->mail.auth) != MAILADDR_OK)
		return SMTP_E_BAD_AUTH_PARAM;
	return SMTP_PARSE_OK;
}

/* RFC 3461 §4.1: NOTIFY="NEVER" / 1#("SUCCESS" / "FAILURE" / "DELAY"), NEVER alone */
static enum smtp_parse_result p_notify(struct smtp_cmd *cmd, const char *v)
{
	static const char *const words[] = { "NEVER", "SUCCESS", "FAILURE", "DELAY", NULL };
	unsigned bits = 0;
	if (v == NULL)
		return SMTP_E_BAD_NOTIFY;
	for (;;) {
		size_t n = strcspn(v, ",");
		int i = word_index(v, n, words);
		if (i < 0 || (bits & (1u << i)))
			return SMTP_E_BAD_NOTIFY;
		bits |= 1u << i;
		if (v[n] == '\0')
			break;
		v += n + 1;
	}
	if ((bits & SMTP_NOTIFY_NEVER) && bits != SMTP_NOTIFY_NEVER)
		return SMTP_E_BAD_NOTIFY;
	cmd->rcpt.notify = bits;
	return SMTP_PARSE_OK;
}

/* RFC 5322 §3.2.3 atext, ASCII */
static bool is_atext(unsigned char c)
{
	return is_alnum(c) || (c != '\0' && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL);
}

/* RFC 3461 §4.2: ORCPT=addr-type ";" xtext, addr-type = atom, value <= 500 chars */
static enum smtp_parse_result p_orcpt(struct smtp_cmd *cmd, const char *v)
{
	const char *semi = v == NULL ? NULL : strchr(v, ';');
	size_t n;
	if (semi == NULL || semi == v || strlen(v) > SMTP_ORCPT_MAX ||
	    (size_t)(semi - v) > SMTP_ORCPT_TYPE_MAX)
		return SMTP_E_BAD_ORCPT;
	for (const char *s = v; s < semi; s++)
		if (!is_atext((unsigned char)*s))
			return SMTP_E_BAD_ORCPT;
	if (xtext_decode(semi + 1, cmd->rcpt.orcpt_addr, sizeof(cmd->rcpt.orcpt_addr), false,
	    &n) == -1 || n == 0)
		return SMTP_E_BAD_ORCPT;
	memcpy(cmd->rcpt.orcpt_type, v, (size_t)(semi - v));
	cmd->rcpt.orcpt_type[semi - v] = '\0';
	cmd->rcpt.has_orcpt = true;
	return SMTP_PARSE_OK;
}

/* Parameters we know, and for which command; anything else is SMTP_E_UNKNOWN_PARAM
 * (555 5.5.4, RFC 5321 §4.1.1.11). */
static const struct param_def {
	const char *keyword;
	enum smtp_verb verb;
	enum smtp_parse_result (*fn)(struct smtp_cmd *cmd, const char *value);
} param_defs[] = {
	{ "SIZE", SMTP_VERB_MAIL, p_size },
	{ "BODY", SMTP_VERB_MAIL, p_body },
	{ "SMTPUTF8", SMTP_VERB_MAIL, p_smtputf8 },
	{ "RET", SMTP_VERB_MAIL, p_ret },
	{ "ENVID", SMTP_VERB_MAIL, p_envid },
	{ "AUTH", SMTP_VERB_MAIL, p_auth },
	{ "NOTIFY", SMTP_VERB_RCPT, p_notify },
	{ "ORCPT", SMTP_VERB_RCPT, p_orcpt },
};

static enum smtp_parse_result interpret_params(struct smtp_cmd *cmd)
{
	for (size_t i = 0; i < cmd->nparams; i++) {
		const struct smtp_param *prm = &cmd->params[i];
		const struct param_def *def = NULL;
		for (size_t k = 0; k < sizeof(param_defs) / sizeof(param_defs[0]); k++)
			if (param_defs[k].verb == cmd->verb &&
			    strcmp(param_defs[k].keyword, prm->keyword) == 0)
				def = &param_defs[k];
		cmd->err_param = prm->keyword;
		if (def == NULL)
			return SMTP_E_UNKNOWN_PARAM;
		enum smtp_parse_result r = def->fn(cmd, prm->value);
		if (r != SMTP_PARSE_OK)
			return r;
	}
	cmd->err_param = NULL;
	return SMTP_PARSE_OK;
}

/* esmtp-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-") (RFC 5321 §4.1.2) */
static bool valid_keyword(const char *s)
{
	if (!is_alnum((unsigned char)*s))
		return false;
	for (; *s != '\0'; s++)
		if (!is_alnum((unsigned char)*s) && *s != '-')
			return false;
	return true;
}

/* esmtp-value = 1*(%d33-60 / %d62-126) (RFC 5321 §4.1.2) */
static bool valid_value(const char *s)
{
	if (*s == '\0')
		return false;
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 33 || (unsigned char)*s > 126 || *s == '=')
			return false;
	return true;
}

/* tok is NUL-terminated in cmd->parambuf and is split in place */
static enum smtp_parse_result add_param(struct smtp_cmd *cmd, char *tok)
{
	char *eq = strchr(tok, '=');
	if (eq != NULL)
		*eq = '\0';
	cmd->err_param = tok;
	if (!valid_keyword(tok) || (eq != NULL && !valid_value(eq + 1)))
		return SMTP_E_PARAM_SYNTAX;
	for (char *s = tok; *s != '\0'; s++)
		*s = upper(*s);
	for (size_t i = 0; i < cmd->nparams; i++)
		if (strcmp(cmd->params[i].keyword, tok) == 0)
			return SMTP_E_DUPLICATE_PARAM;
	if (cmd->nparams == SMTP_MAX_PARAMS)
		return SMTP_E_TOO_MANY_PARAMS;
	cmd->params[cmd->nparams].keyword = tok;
	cmd->params[cmd->nparams].value = eq != NULL ? eq + 1 : NULL;
	cmd->nparams++;
	cmd->err_param = NULL;
	return SMTP_PARSE_OK;
}

/* Mail-parameters = esmtp-param *(SP esmtp-param) (RFC 5321 §4.1.2); runs of spaces
 * are tolerated. */
static enum smtp_parse_result split_params(struct smtp_cmd *cmd, const char *s, size_t len)
{
	char *p = cmd->parambuf;
	memcpy(p, s, len);
	p[len] = '\0';
	for (;;) {
		while (*p == ' ')
			p++;
		if (*p == '\0')
			return SMTP_PARSE_OK;
		char *tok = p;
		p += strcspn(p, " ");
		if (*p == ' ')
			*p++ = '\0';
		enum smtp_parse_result r = add_param(cmd, tok);
		if (r != SMTP_PARSE_OK)
			return r;
	}
}

/* s is what follows "FROM:" / "TO:". A space before the path is tolerated (many
 * clients send one) and recorded. */
static enum smtp_parse_result parse_path_params(struct smtp_cmd *cmd, const char *s, size_t len,
    unsigned flags, enum smtp_parse_result bad)
{
	size_t i = 0, used;
	while (i < len && s[i] == ' ')
		i++;
	cmd->space_after_colon = i > 0;
	cmd->addr_err = mailaddr_parse_path(s + i, len - i, flags, &cmd->path, &used);
	if (cmd->addr_err != MAILADDR_OK)
		return bad;
	i += used;
	if (i < len && s[i] != ' ') {
		cmd->addr_err = MAILADDR_E_SYNTAX;
		return bad;
	}
	return split_params(cmd, s + i, len - i);
}

/* ---- verbs ---- */

/* RFC 5321 §4.1.1.1: "EHLO" SP ( Domain / address-literal ); HELO likewise */
static enum smtp_parse_result parse_helo(struct smtp_cmd *cmd, const char *arg, size_t len)
{
	if (arg == NULL)
		return SMTP_E_SYNTAX;
	cmd->addr_err = mailaddr_parse_domain(arg, len, 0, &cmd->helo);
	return cmd->addr_err == MAILADDR_OK ? SMTP_PARSE_OK : SMTP_E_BAD_HELO;
}

/* RFC 5321 §4.1.1.2: "MAIL FROM:" Reverse-path [SP Mail-parameters] */
static enum smtp_parse_result parse_mail(struct smtp_cmd *cmd, const char *arg, size_t len)
{
	if (arg == NULL || len < 5 || !ascii_ncaseeq(arg, "FROM:", 5))
		return SMTP_E_SYNTAX;
	enum smtp_parse_result r = parse_path_params(cmd, arg + 5, len - 5,
	    MAILADDR_ALLOW_NULL | MAILADDR_ALLOW_UTF8, SMTP_E_BAD_SENDER);
	if (r == SMTP_PARSE_OK)
		r = interpret_params(cmd);
	/* RFC 6531 §3.4: non-ASCII envelope addresses need SMTPUTF8 on this MAIL */
	if (r == SMTP_PARSE_OK && (cmd->path.utf8 || cmd->mail.auth.utf8) && !cmd->mail.smtputf8) {
		cmd->addr_err = MAILADDR_E_UTF8_NOT_ALLOWED;
		r = SMTP_E_UTF8_NOT_ALLOWED;
	}
	return r;
}

/* RFC 5321 §4.1.1.3: "RCPT TO:" ( "<Postmaster@" Domain ">" / "<Postmaster>" /
 * Forward-path ) [SP Rcpt-parameters]. Whether a UTF-8 path is allowed depends on
 * the transaction's MAIL, which the session checks (path.utf8). */
static enum smtp_parse_result parse_rcpt(struct smtp_cmd *cmd, const char *arg, size_t len)
{
	if (arg == NULL || len < 3 || !ascii_ncaseeq(arg, "TO:", 3))
		return SMTP_E_SYNTAX;
	enum smtp_parse_result r = parse_path_params(cmd, arg + 3, len - 3,
	    MAILADDR_ALLOW_UTF8 | MAILADDR_ALLOW_POSTMASTER, SMTP_E_BAD_RECIPIENT);
	return r == SMTP_PARSE_OK ? interpret_params(cmd) : r;
}

/* RFC 3030 §2: "BDAT" SP chunk-size [ SP "LAST" ]; chunk-size = 1*DIGIT. A size we
 * cannot represent leaves the session unable to skip the chunk: it must close. */
static enum smtp_parse_result parse_bdat(struct smtp_cmd *cmd, const char *arg, size_t len)
{
	static const char *const last[] = { "LAST", NULL };
	if (arg == NULL)
		return SMTP_E_SYNTAX;
	size_t n = strcspn(arg, " ");
	int r = parse_u64(arg, n, &cmd->bdat_size);
	if (r != 0)
		return r == -2 ? SMTP_E_SIZE_OVERFLOW : SMTP_E_SYNTAX;
	const char *rest = arg + n + strspn(arg + n, " ");
	if (*rest == '\0')
		return SMTP_PARSE_OK;
	if (word_index(rest, strlen(rest), last) != 0)
		return SMTP_E_SYNTAX;
	cmd->bdat_last = true;
	return SMTP_PARSE_OK;
}

/* RFC 4648 §4 base64 with padding, as RFC 4954 §4 requires for initial-response */
static bool is_base64(const char *s)
{
	size_t n = strlen(s), pad = 0;
	if (n == 0 || n % 4 != 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (s[i] == '=')
			pad++;
		else if (pad > 0 || !(is_alnum((unsigned char)s[i]) || s[i] == '+' || s[i] == '/'))
			return false;
	}
	return pad <= 2;
}

/* RFC 4954 §4: "AUTH" SP sasl-mech [SP initial-response]; initial-response = base64 / "=";
 * sasl-mech = 1*20(UPPER-ALPHA / DIGIT / "-" / "_") (RFC 4422 §3.1), any case accepted */
static enum smtp_parse_result parse_auth(struct smtp_cmd *cmd, const char *arg, size_t len)
{
	if (arg == NULL)
		return SMTP_E_SYNTAX;
	size_t n = strcspn(arg, " ");
	if (n > SMTP_AUTH_MECH_MAX)
		return SMTP_E_SYNTAX;
	for (size_t i = 0; i < n; i++) {
		if (!is_alnum((unsigned char)arg[i]) && arg[i] != '-' && arg[i] != '_')
			return SMTP_E_SYNTAX;
		cmd->auth_mech[i] = upper(arg[i]);
	}
	cmd->auth_mech[n] = '\0';
	const char *rest = arg + n + strspn(arg + n, " ");
	if (*rest == '\0')
		return SMTP_PARSE_OK;
	if (strcmp(rest, "=") != 0 && !is_base64(rest))
		return SMTP_E_SYNTAX;
	cmd->auth_initial = strcmp(rest, "=") == 0 ? "" : rest;
	return SMTP_PARSE_OK;
}

/* DATA, RSET, QUIT, STARTTLS (RFC 5321 §4.1.1.4, .5, .10; RFC 3207 §4) */
static enum smtp_parse_result parse_no_arg(struct smtp_cmd *cmd, const char *arg, size_t len)
{
	return arg == NULL ? SMTP_PARSE_OK : SMTP_E_SYNTAX;
}

/* VRFY, EXPN: SP String (RFC 5321 §4.1.1.6, .7) */
static enum smtp_parse_result parse_need_arg(struct smtp_cmd *cmd, const char *arg, size_t len)
{
	return arg != NULL ? SMTP_PARSE_OK : SMTP_E_SYNTAX;
}

/* NOOP, HELP: [SP String] (RFC 5321 §4.1.1.8, .9) */
static enum smtp_parse_result parse_opt_arg(struct smtp_cmd *cmd, const char *arg, size_t len)
{
	return SMTP_PARSE_OK;
}

static const struct verb_def {
	const char *name;
	enum smtp_verb verb;
	enum smtp_parse_result (*parse)(struct smtp_cmd *cmd, const char *arg, size_t len);
} verb_defs[] = {
	{ "EHLO", SMTP_VERB_EHLO, parse_helo },
	{ "HELO", SMTP_VERB_HELO, parse_helo },
	{ "MAIL", SMTP_VERB_MAIL, parse_mail },
	{ "RCPT", SMTP_VERB_RCPT, parse_rcpt },
	{ "DATA", SMTP_VERB_DATA, parse_no_arg },
	{ "BDAT", SMTP_VERB_BDAT, parse_bdat },
	{ "RSET", SMTP_VERB_RSET, parse_no_arg },
	{ "NOOP", SMTP_VERB_NOOP, parse_opt_arg },
	{ "QUIT", SMTP_VERB_QUIT, parse_no_arg },
	{ "VRFY", SMTP_VERB_VRFY, parse_need_arg },
	{ "EXPN", SMTP_VERB_EXPN, parse_need_arg },
	{ "HELP", SMTP_VERB_HELP, parse_opt_arg },
	{ "STARTTLS", SMTP_VERB_STARTTLS, parse_no_arg },
	{ "AUTH", SMTP_VERB_AUTH, parse_auth },
};

static const struct verb_def *find_verb(const char *s, size_t n)
{
	for (size_t i = 0; i < sizeof(verb_defs) / sizeof(verb_defs[0]); i++)
		if (strlen(verb_defs[i].name) == n && ascii_ncaseeq(s, verb_defs[i].name, n))
			return &verb_defs[i];
	return NULL;
}

/* A control byte in the line: in a MAIL or RCPT argument it makes the address
 * malformed (501 5.1.7 / 5.1.3), anywhere else the command (500 5.5.2). */
static enum smtp_parse_result control_result(const char *line, size_t len, struct smtp_cmd *cmd)
{
	size_t i = 0;
	while (i < len && line[i] != ' ' && line[i] != ':' && (unsigned char)line[i] >= 0x20)
		i++;
	const struct verb_def *v = find_verb(line, i);
	if (v == NULL || i == len || (unsigned char)line[i] < 0x20)
		return SMTP_E_CONTROL;
	cmd->verb = v->verb;
	cmd->name = v->name;
	cmd->addr_err = MAILADDR_E_CONTROL;
	if (v->verb == SMTP_VERB_MAIL)
		return SMTP_E_BAD_SENDER;
	if (v->verb == SMTP_VERB_RCPT)
		return SMTP_E_BAD_RECIPIENT;
	return SMTP_E_CONTROL;
}

enum smtp_parse_result smtp_parse_command(const char *line, size_t len, struct smtp_cmd *cmd)
{
	memset(cmd, 0, offsetof(struct smtp_cmd, argbuf));
	cmd->argbuf[0] = cmd->parambuf[0] = '\0';
	if (len > SMTP_MAX_LINE - 2)          /* RFC 5321 §4.5.3.1.4 */
		return SMTP_E_TOO_LONG;
	for (size_t i = 0; i < len; i++)      /* CR/LF here would be smuggling */
		if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
			return control_result(line, len, cmd);
	while (len > 0 && line[len - 1] == ' ')
		len--;
	if (len == 0)
		return SMTP_E_EMPTY;
	size_t i = 0;
	while (i < len && line[i] != ' ')
		i++;
	const struct verb_def *v = find_verb(line, i);
	if (v == NULL)
		return SMTP_E_UNKNOWN_COMMAND;
	cmd->verb = v->verb;
	cmd->name = v->name;
	while (i < len && line[i] == ' ')
		i++;
	if (i < len) {
		memcpy(cmd->argbuf, line + i, len - i);
		cmd->argbuf[len - i] = '\0';
		cmd->arg = cmd->argbuf;
	}
	return v->parse(cmd, cmd->arg, len - i);
}

static const struct smtp_reply_hint replies[] = {
	[SMTP_PARSE_OK] = { 250, "2.0.0", "OK" },
	[SMTP_E_EMPTY] = { 500, "5.5.2", "Empty command" },
	[SMTP_E_TOO_LONG] = { 500, "5.5.2", "Line too long" },
	[SMTP_E_CONTROL] = { 500, "5.5.2", "Control characters not allowed in commands" },
	[SMTP_E_UNKNOWN_COMMAND] = { 500, "5.5.2", "Command unrecognized" },
	[SMTP_E_SYNTAX] = { 501, "5.5.4", "Syntax error in parameters or arguments" },
	[SMTP_E_BAD_HELO] = { 501, "5.5.4", "Invalid domain name" },
	[SMTP_E_BAD_SENDER] = { 501, "5.1.7", "Malformed sender address" },
	[SMTP_E_BAD_RECIPIENT] = { 501, "5.1.3", "Malformed recipient address" },
	[SMTP_E_UTF8_NOT_ALLOWED] = { 553, "5.6.7", "Non-ASCII address requires SMTPUTF8" },
	[SMTP_E_PARAM_SYNTAX] = { 501, "5.5.4", "Malformed parameter" },
	[SMTP_E_TOO_MANY_PARAMS] = { 501, "5.5.4", "Too many parameters" },
	[SMTP_E_DUPLICATE_PARAM] = { 501, "5.5.4", "Duplicate parameter" },
	[SMTP_E_UNKNOWN_PARAM] = { 555, "5.5.4", "Unsupported parameter" },
	[SMTP_E_BAD_SIZE] = { 501, "5.5.4", "Invalid SIZE parameter" },
	[SMTP_E_SIZE_OVERFLOW] = { 552, "5.3.4", "Message size exceeds fixed maximum message size" },
	[SMTP_E_BAD_BODY] = { 501, "5.5.4", "Invalid BODY parameter" },
	[SMTP_E_BAD_RET] = { 501, "5.5.4", "Invalid RET parameter" },
	[SMTP_E_BAD_ENVID] = { 501, "5.5.4", "Invalid ENVID parameter" },
	[SMTP_E_BAD_NOTIFY] = { 501, "5.5.4", "Invalid NOTIFY parameter" },
	[SMTP_E_BAD_ORCPT] = { 501, "5.5.4", "Invalid ORCPT parameter" },
	[SMTP_E_BAD_AUTH_PARAM] = { 501, "5.5.4", "Invalid AUTH parameter" },
	[SMTP_E_BARE_EOL] = { 554, "5.6.0", "Bare CR or LF in message not allowed" },
	[SMTP_E_LINE_TOO_LONG] = { 500, "5.5.2", "Message line longer than 1000 octets" },
	[SMTP_E_TOO_BIG] = { 552, "5.3.4", "Message size exceeds fixed maximum message size" },
};

struct smtp_reply_hint smtp_parse_reply(enum smtp_parse_result r)
{
	static const struct smtp_reply_hint unknown = { 451, "4.3.0", "Internal error" };
	if ((size_t)r >= sizeof(replies) / sizeof(replies[0]) || replies[r].text == NULL)
		return unknown;
	return replies[r];
}

const char *smtp_parse_strerror(enum smtp_parse_result r)
{
	return smtp_parse_reply(r).text;
}

/* ---- DATA stream (RFC 5321 §4.1.1.4, §4.5.2) ---- */

void smtp_data_init(struct smtp_data_parser *p, struct buf *out, uint64_t max_size)
{
	memset(p, 0, sizeof(*p));
	p->out = out;
	p->base_len = out->len;
	p->max_size = max_size;
	p->state = SMTP_DATA_BOL;
}

/* Stores message octets while under the limit; past it, drops what was stored (so
 * the result does not depend on how the input was split) and only counts. */
static void data_emit(struct smtp_data_parser *p, const char *s, size_t n)
{
	p->msg_size += n;
	if (p->flags & SMTP_DATA_F_TOO_BIG)
		return;
	if (p->msg_size <= p->max_size && buf_append(p->out, s, n) == 0)
		return;
	p->flags |= SMTP_DATA_F_TOO_BIG;
	p->out->len = p->base_len;
	if (p->out->data != NULL)
		p->out->data[p->base_len] = '\0';
}

/* RFC 5321 §4.5.3.1.6: 1000 octets per line incl. CRLF, the stuffing dot not counted;
 * saturates so a endless line cannot wrap the counter. */
static void data_count(struct smtp_data_parser *p, size_t n)
{
	if (n > SMTP_MAX_TEXT_LINE)
		n = SMTP_MAX_TEXT_LINE;
	if (p->line_len <= SMTP_MAX_TEXT_LINE)
		p->line_len += n;
	if (p->line_len > SMTP_MAX_TEXT_LINE - 2)
		p->flags |= SMTP_DATA_F_LINE_TOO_LONG;
}

/* An octet inside a line: CR waits for its LF; a bare LF is data, never a line end. */
static void data_text_byte(struct smtp_data_parser *p, char c)
{
	if (c == '\r') {
		p->state = SMTP_DATA_CR;
		return;
	}
	if (c == '\n')
		p->flags |= SMTP_DATA_F_BARE_LF;
	data_count(p, 1);
	data_emit(p, &c, 1);
	p->state = SMTP_DATA_TEXT;
}

/* The pending CR was not followed by LF: it is data, and suspicious. */
static void data_bare_cr(struct smtp_data_parser *p)
{
	p->flags |= SMTP_DATA_F_BARE_CR;
	data_count(p, 1);
	data_emit(p, "\r", 1);
}

/* One octet through the state machine; true once CRLF "." CRLF is complete. */
static bool data_step(struct smtp_data_parser *p, char c)
{
	switch (p->state) {
	case SMTP_DATA_BOL:
		if (c == '.')
			p->state = SMTP_DATA_DOT;
		else
			data_text_byte(p, c);
		return false;
	case SMTP_DATA_TEXT:
		data_text_byte(p, c);
		return false;
	case SMTP_DATA_CR:
		if (c == '\n') {
			data_emit(p, "\r\n", 2);
			p->line_len = 0;
			p->state = SMTP_DATA_BOL;
			return false;
		}
		data_bare_cr(p);
		data_text_byte(p, c);
		return false;
	case SMTP_DATA_DOT:
		if (c == '\r')
			p->state = SMTP_DATA_DOT_CR;
		else
			data_text_byte(p, c);   /* §4.5.2: the leading dot is deleted */
		return false;
	case SMTP_DATA_DOT_CR:
		if (c == '\n') {
			p->state = SMTP_DATA_DONE;
			return true;
		}
		data_bare_cr(p);                /* ".\rX": stuffing dot deleted, CR is data */
		data_text_byte(p, c);
		return false;
	case SMTP_DATA_DONE:
		return true;
	}
	return true;
}

/* Fast path inside a line: a run of octets that are neither CR nor LF. */
static size_t data_span(struct smtp_data_parser *p, const char *s, size_t n)
{
	size_t k = 0;
	while (k < n && s[k] != '\r' && s[k] != '\n')
		k++;
	if (k > 0) {
		data_count(p, k);
		data_emit(p, s, k);
	}
	return k;
}

int smtp_data_feed(struct smtp_data_parser *p, const char *data, size_t len, size_t *consumed_r)
{
	size_t i = 0;
	while (i < len && p->state != SMTP_DATA_DONE) {
		if (p->state == SMTP_DATA_TEXT) {
			i += data_span(p, data + i, len - i);
			if (i == len)
				break;
		}
		data_step(p, data[i++]);
	}
	*consumed_r = i;
	p->bytes_in += i;
	return p->state == SMTP_DATA_DONE;
}

unsigned smtp_data_flags(const struct smtp_data_parser *p)
{
	return p->flags;
}

uint64_t smtp_data_size(const struct smtp_data_parser *p)
{
	return p->msg_size;
}

uint64_t smtp_data_bytes_in(const struct smtp_data_parser *p)
{
	return p->bytes_in;
}

enum smtp_parse_result smtp_data_result(const struct smtp_data_parser *p)
{
	if (p->flags & (SMTP_DATA_F_BARE_CR | SMTP_DATA_F_BARE_LF))
		return SMTP_E_BARE_EOL;
	if (p->flags & SMTP_DATA_F_TOO_BIG)
		return SMTP_E_TOO_BIG;
	if (p->flags & SMTP_DATA_F_LINE_TOO_LONG)
		return SMTP_E_LINE_TOO_LONG;
	return SMTP_PARSE_OK;
}
