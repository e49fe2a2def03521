/* config_override.c: `-o key.path=value` overrides (design §8).
 *
 * An override edits the YAML node tree that config.c parsed from the file,
 * before that tree is mapped: an overridden value is typed and validated
 * exactly like one from the file. The path walks mappings by key and lists
 * by index ("listeners.0.port"); missing mapping keys are made, a null
 * placeholder becomes a mapping, a value starting with '[' or '{' is parsed
 * as YAML flow. Every node made here is marked (mark.index CFG_OVR_MARK,
 * mark.line the override's number) so that config.c's messages about it say
 * "-o PATH: message" instead of a file position. */
#include "server/server.h"

#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <yaml.h>

#include "common/log.h"

struct ovr_ctx {
	yaml_document_t *doc;        /* the config tree being edited, owned by config.c */
	char *const *ovr;            /* the -o strings */
	char *err;
	size_t errlen;
};

/* "-o PATH: msg" about override number oi as a whole (bad path, bad syntax, bad value) */
__attribute__((format(printf, 3, 4)))
static int ovr_fail(struct ovr_ctx *c, size_t oi, const char *fmt, ...)
{
	char msg[768];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	const char *o = c->ovr[oi];
	snprintf(c->err, c->errlen, "-o %.*s: %s", (int)strcspn(o, "="), o, msg);
	return -1;
}

static yaml_node_t *node(struct ovr_ctx *c, int id)
{
	return yaml_document_get_node(c->doc, id);
}

static const char *scalar(const yaml_node_t *n)
{
	return (const char *)n->data.scalar.value;
}

static int mark_new(struct ovr_ctx *c, int id, size_t oi)
{
	if (id == 0)
		fatalx("config: out of memory building the YAML tree");
	yaml_node_t *n = node(c, id);
	n->start_mark.index = n->end_mark.index = CFG_OVR_MARK;
	n->start_mark.line = n->end_mark.line = oi;
	n->start_mark.column = n->end_mark.column = 0;
	return id;
}

static int new_scalar(struct ovr_ctx *c, size_t oi, const char *s, size_t len)
{
	return mark_new(c, yaml_document_add_scalar(c->doc, NULL, (const yaml_char_t *)s, (int)len,
	    YAML_PLAIN_SCALAR_STYLE), oi);
}

/* Copy node id of src (a flow value given with -o) into the config tree. */
static int copy_node(struct ovr_ctx *c, yaml_document_t *src, int id, size_t oi, int depth)
{
	yaml_node_t *n = yaml_document_get_node(src, id);
	int nid;
	if (depth > 16)
		return 0;
	if (n->type == YAML_SCALAR_NODE)
		return mark_new(c, yaml_document_add_scalar(c->doc, NULL, n->data.scalar.value,
		    (int)n->data.scalar.length, n->data.scalar.style), oi);
	if (n->type == YAML_SEQUENCE_NODE) {
		nid = mark_new(c, yaml_document_add_sequence(c->doc, NULL, YAML_FLOW_SEQUENCE_STYLE), oi);
		for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
			int child = copy_node(c, src, *it, oi, depth + 1);
			if (child == 0 || !yaml_document_append_sequence_item(c->doc, nid, child))
				return 0;
		}
		return nid;
	}
	nid = mark_new(c, yaml_document_add_mapping(c->doc, NULL, YAML_FLOW_MAPPING_STYLE), oi);
	for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
		int k = copy_node(c, src, p->key, oi, depth + 1), v = k ? copy_node(c, src, p->value, oi, depth + 1) : 0;
		if (v == 0 || !yaml_document_append_mapping_pair(c->doc, nid, k, v))
			return 0;
	}
	return nid;
}

/* The new value's node: a plain scalar, or YAML when it starts with [ or { */
static int ovr_value(struct ovr_ctx *c, size_t oi, const char *val)
{
	size_t len = strlen(val);
	if (len > INT_MAX / 2)
		return ovr_fail(c, oi, "value too long");
	if (val[0] != '[' && val[0] != '{') {
		int id = yaml_document_add_scalar(c->doc, NULL, (const yaml_char_t *)val, (int)len,
		    YAML_PLAIN_SCALAR_STYLE);
		return id != 0 ? mark_new(c, id, oi) : ovr_fail(c, oi, "value is not valid UTF-8");
	}
	yaml_parser_t p;
	yaml_document_t d;
	int id = 0;
	yaml_parser_initialize(&p);
	yaml_parser_set_input_string(&p, (const unsigned char *)val, len);
	if (!yaml_parser_load(&p, &d)) {
		ovr_fail(c, oi, "bad YAML value: %s", p.problem != NULL ? p.problem : "syntax error");
	} else {
		id = copy_node(c, &d, 1, oi, 0);
		if (id == 0)
			ovr_fail(c, oi, "value nested too deeply");
		yaml_document_delete(&d);
	}
	yaml_parser_delete(&p);
	return id != 0 ? id : -1;
}

/* Where the current node hangs, so a null placeholder can become a mapping. */
struct slot {
	int parent;                  /* 0: the root itself */
	size_t idx;
	bool seq;
};

static void slot_set(struct ovr_ctx *c, const struct slot *s, int id)
{
	yaml_node_t *p = node(c, s->parent);
	if (s->seq)
		p->data.sequence.items.start[s->idx] = id;
	else
		p->data.mapping.pairs.start[s->idx].value = id;
}

/* Child `comp` of mapping cur, made when missing; val != 0 replaces it. */
static int step_mapping(struct ovr_ctx *c, size_t oi, int cur, const char *comp, size_t len, int val,
    struct slot *sl)
{
	yaml_node_t *m = node(c, cur);
	size_t n = (size_t)(m->data.mapping.pairs.top - m->data.mapping.pairs.start);
	for (size_t i = 0; i < n; i++) {
		yaml_node_pair_t *p = &m->data.mapping.pairs.start[i];
		yaml_node_t *k = node(c, p->key);
		if (k->type == YAML_SCALAR_NODE && strlen(scalar(k)) == len && memcmp(scalar(k), comp, len) == 0) {
			*sl = (struct slot){ cur, i, false };
			if (val != 0)
				p->value = val;
			return p->value;
		}
	}
	int key = new_scalar(c, oi, comp, len);
	int v = val != 0 ? val : new_scalar(c, oi, "", 0);
	if (!yaml_document_append_mapping_pair(c->doc, cur, key, v))
		fatalx("config: out of memory building the YAML tree");
	*sl = (struct slot){ cur, n, false };
	return v;
}

static int step_sequence(struct ovr_ctx *c, size_t oi, int cur, const char *comp, size_t len, int val,
    struct slot *sl)
{
	yaml_node_t *s = node(c, cur);
	size_t n = (size_t)(s->data.sequence.items.top - s->data.sequence.items.start), idx = 0;
	if (len == 0 || len > 9 || strspn(comp, "0123456789") < len)
		return ovr_fail(c, oi, "no such list element");
	for (size_t i = 0; i < len; i++)
		idx = idx * 10 + (size_t)(comp[i] - '0');
	if (idx >= n)
		return ovr_fail(c, oi, "no such list element");
	*sl = (struct slot){ cur, idx, true };
	if (val != 0)
		s->data.sequence.items.start[idx] = val;
	return s->data.sequence.items.start[idx];
}

/* cur as a container: a null placeholder becomes an empty mapping. 0 if a scalar. */
static int as_container(struct ovr_ctx *c, size_t oi, int cur, const struct slot *sl)
{
	yaml_node_t *n = node(c, cur);
	if (n->type != YAML_SCALAR_NODE)
		return cur;
	if (!cfg_node_is_null(n) || sl->parent == 0)
		return 0;
	int m = mark_new(c, yaml_document_add_mapping(c->doc, NULL, YAML_BLOCK_MAPPING_STYLE), oi);
	slot_set(c, sl, m);
	return m;
}

static int set_path(struct ovr_ctx *c, size_t oi, const char *path, size_t pathlen, int val)
{
	int cur = 1;   /* the root is the first node */
	struct slot sl = { 0, 0, false };
	for (size_t at = 0;;) {
		size_t len = strcspn(path + at, ".");
		if (len > pathlen - at)
			len = pathlen - at;
		bool last = at + len == pathlen;
		if (len == 0)
			return ovr_fail(c, oi, "empty component in key path");
		cur = as_container(c, oi, cur, &sl);
		if (cur == 0 && at == 0)
			return ovr_fail(c, oi, "the top level is not a mapping");
		if (cur == 0)
			return ovr_fail(c, oi, "'%.*s' is not a mapping or a list", (int)at - 1, path);
		cur = node(c, cur)->type == YAML_SEQUENCE_NODE
		    ? step_sequence(c, oi, cur, path + at, len, last ? val : 0, &sl)
		    : step_mapping(c, oi, cur, path + at, len, last ? val : 0, &sl);
		if (cur == -1 || last)
			return cur == -1 ? -1 : 0;
		at += len + 1;
	}
}

int cfg_apply_overrides(yaml_document_t *doc, char *const *ovr, size_t n, char *err, size_t errlen)
{
	struct ovr_ctx c = { doc, ovr, err, errlen };
	/* an empty file: the root mapping must be node 1, made before any value */
	if (n > 0 && yaml_document_get_root_node(doc) == NULL &&
	    yaml_document_add_mapping(doc, NULL, YAML_BLOCK_MAPPING_STYLE) == 0)
		fatalx("config: out of memory building the YAML tree");
	for (size_t i = 0; i < n; i++) {
		const char *o = ovr[i], *eq = strchr(o, '=');
		if (eq == NULL || eq == o)
			return ovr_fail(&c, i, "expected key.path=value");
		int val = ovr_value(&c, i, eq + 1);
		if (val == -1 || set_path(&c, i, o, (size_t)(eq - o), val) == -1)
			return -1;
	}
	return 0;
}
