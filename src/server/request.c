/*
 * request.c — decoding of request targets and bodies for `esrc serve`, and
 * the prefix sets token scopes are made of (see request.h).  Everything here
 * is a pure function of its input, refused with a message when malformed.
 */
#include "request.h"

#include "args.h"
#include "import.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decode raw[0..n) into *w (advancing it).  @return -1 on a bad escape. */
static int unescape(uint8_t **w, const char *raw, size_t n, bool plus_is_space)
{
    uint8_t *o = *w;
    for (size_t i = 0; i < n; i++) {
        if (raw[i] == '%') {
            int hi, lo;
            if (i + 2 >= n)
                return -1;
            if ((hi = hexval((unsigned char)raw[i + 1])) < 0 ||
                (lo = hexval((unsigned char)raw[i + 2])) < 0)
                return -1;
            *o++ = (uint8_t)(hi << 4 | lo);
            i += 2;
        } else if (raw[i] == '+' && plus_is_space) {
            *o++ = ' ';
        } else {
            *o++ = (uint8_t)raw[i];
        }
    }
    *w = o;
    return 0;
}

static bool bytes_is(const srv_bytes *b, const char *s)
{
    size_t n = strlen(s);
    return b->len == n && (n == 0 || memcmp(b->p, s, n) == 0);
}

srv_fault srv_parse_target(srv_target *out, const char *raw, size_t len, char *err, size_t errcap)
{
    uint8_t *w = out->store;
    size_t i = 0;

    out->n_seg = 0;
    out->n_param = 0;
    if (len > SRV_MAX_TARGET) {
        snprintf(err, errcap, "the request target is over %d bytes", SRV_MAX_TARGET);
        return SRV_TOO_BIG;
    }
    if (len == 0 || raw[0] != '/') {
        snprintf(err, errcap, "the request target must start with '/'");
        return SRV_BAD_REQUEST;
    }
    for (size_t k = 0; k < len; k++) {
        unsigned char c = (unsigned char)raw[k];
        if (c <= 0x20 || c >= 0x7f || c == '#') {
            snprintf(err, errcap, "the request target holds a byte that must be %%-escaped");
            return SRV_BAD_REQUEST;
        }
    }
    size_t qpos = 0;
    while (qpos < len && raw[qpos] != '?')
        qpos++;
    /* the path: "/" alone has no segments; otherwise each '/' starts one */
    i = 1;
    if (qpos > 1) {
        for (;;) {
            size_t e = i;
            while (e < qpos && raw[e] != '/')
                e++;
            if (out->n_seg == SRV_MAX_SEGMENTS) {
                snprintf(err, errcap, "no route has more than %d path segments", SRV_MAX_SEGMENTS);
                return SRV_NOT_FOUND;
            }
            srv_bytes *s = &out->seg[out->n_seg++];
            s->p = w;
            if (unescape(&w, raw + i, e - i, false) != 0) {
                snprintf(err, errcap, "a bad %%-escape in the path");
                return SRV_BAD_REQUEST;
            }
            s->len = (size_t)(w - s->p);
            if (s->len == 0 || bytes_is(s, ".") || bytes_is(s, "..")) {
                snprintf(err, errcap, "empty, '.' and '..' path segments are refused");
                return SRV_BAD_REQUEST;
            }
            if (e >= qpos)
                break;
            i = e + 1;
            if (i == qpos) { /* a trailing '/' */
                snprintf(err, errcap, "empty, '.' and '..' path segments are refused");
                return SRV_BAD_REQUEST;
            }
        }
    }
    /* the query: name=value pairs separated by '&' */
    i = qpos + 1;
    while (i < len) {
        size_t e = i, eq;
        while (e < len && raw[e] != '&')
            e++;
        if (e == i) { /* "a=1&&b=2": skip the empty one */
            i = e + 1;
            continue;
        }
        for (eq = i; eq < e && raw[eq] != '='; eq++)
            ;
        if (out->n_param == SRV_MAX_PARAMS) {
            snprintf(err, errcap, "over %d query parameters", SRV_MAX_PARAMS);
            return SRV_BAD_REQUEST;
        }
        srv_bytes *nm = &out->param[out->n_param].name, *v = &out->param[out->n_param].value;
        nm->p = w;
        if (unescape(&w, raw + i, eq - i, true) != 0)
            goto bad_escape;
        nm->len = (size_t)(w - nm->p);
        v->p = w;
        if (eq < e && unescape(&w, raw + eq + 1, e - eq - 1, true) != 0)
            goto bad_escape;
        v->len = (size_t)(w - v->p);
        for (size_t k = 0; k < out->n_param; k++) {
            if (out->param[k].name.len == nm->len &&
                memcmp(out->param[k].name.p, nm->p, nm->len) == 0) {
                snprintf(err, errcap, "query parameter '%.*s' given twice",
                         (int)(nm->len > 40 ? 40 : nm->len), (const char *)nm->p);
                return SRV_BAD_REQUEST;
            }
        }
        out->n_param++;
        i = e + 1;
    }
    return SRV_OK;
bad_escape:
    snprintf(err, errcap, "a bad %%-escape in the query");
    return SRV_BAD_REQUEST;
}

bool srv_seg_is(const srv_target *t, size_t i, const char *s)
{
    return i < t->n_seg && bytes_is(&t->seg[i], s);
}

const srv_bytes *srv_param(const srv_target *t, const char *name)
{
    for (size_t i = 0; i < t->n_param; i++)
        if (bytes_is(&t->param[i].name, name))
            return &t->param[i].value;
    return NULL;
}

bool srv_params_known(const srv_target *t, const char *const *known, char *err, size_t errcap)
{
    for (size_t i = 0; i < t->n_param; i++) {
        size_t k = 0;
        while (known[k] && !bytes_is(&t->param[i].name, known[k]))
            k++;
        if (!known[k]) {
            const srv_bytes *n = &t->param[i].name;
            char shown[48];
            size_t m = 0;
            for (size_t j = 0; j < n->len && m < 40; j++)
                shown[m++] = n->p[j] >= 0x20 && n->p[j] < 0x7f ? (char)n->p[j] : '?';
            shown[m] = 0;
            snprintf(err, errcap, "unknown query parameter '%s'", shown);
            return false;
        }
    }
    return true;
}

srv_fault srv_param_u64(uint64_t *out, const srv_target *t, const char *name, uint64_t def,
                        uint64_t min, uint64_t max, char *err, size_t errcap)
{
    const srv_bytes *v = srv_param(t, name);
    char s[24];
    uint64_t n;
    if (!v) {
        *out = def;
        return SRV_OK;
    }
    if (v->len == 0 || v->len >= sizeof s)
        goto bad;
    memcpy(s, v->p, v->len);
    s[v->len] = 0;
    if (esrc_parse_u64(&n, s) != 0 || n < min || n > max)
        goto bad;
    *out = n;
    return SRV_OK;
bad:
    snprintf(err, errcap, "%s must be a number from %llu to %llu", name, (unsigned long long)min,
             (unsigned long long)max);
    return SRV_BAD_REQUEST;
}

int srv_parse_expected(uint64_t *out, const char *s, size_t len)
{
    char b[24];
    uint64_t v;
    if (len >= sizeof b)
        return -1;
    memcpy(b, s, len);
    b[len] = 0;
    if (strcmp(b, "any") == 0)
        *out = ES_EXPECT_ANY;
    else if (strcmp(b, "exists") == 0)
        *out = ES_EXPECT_EXISTS;
    else if (strcmp(b, "no-stream") == 0)
        *out = ES_EXPECT_NO_STREAM;
    else if (esrc_parse_u64(&v, b) == 0 && v < ES_SEQ_MAX)
        *out = v;
    else
        return -1;
    return 0;
}

/* ---- append bodies ---- */

/* A bytes field: name (a string, or for data and meta any JSON value as its
 * compact text) or name_b64.  Absent: 0 bytes, or an error when required. */
static srv_fault get_bytes(es_buf *out, size_t cap, json_t *o, const char *name, bool any_json,
                           bool required, const char *where, char *err, size_t errcap)
{
    char key[16];
    json_t *s = json_object_get(o, name);
    snprintf(key, sizeof key, "%s_b64", name);
    json_t *b = json_object_get(o, key);

    if (s && b) {
        snprintf(err, errcap, "%s: both %s and %s given", where, name, key);
        return SRV_BAD_REQUEST;
    }
    if (s && json_is_string(s)) {
        if (json_string_length(s) > cap)
            goto too_big;
        if (json_string_length(s) && es_buf_put(out, json_string_value(s), json_string_length(s)))
            goto nomem;
    } else if (s && any_json) {
        char *t = json_dumps(s, JSON_COMPACT | JSON_ENCODE_ANY);
        if (!t)
            goto nomem;
        size_t n = strlen(t);
        int rc = n > cap ? 1 : es_buf_put(out, t, n) ? 2 : 0;
        free(t);
        if (rc == 1)
            goto too_big;
        if (rc == 2)
            goto nomem;
    } else if (s) {
        snprintf(err, errcap, "%s: %s is not a string", where, name);
        return SRV_BAD_REQUEST;
    } else if (b) {
        const char *t = json_string_value(b);
        size_t tl = json_string_length(b), n = 0;
        if (!t) {
            snprintf(err, errcap, "%s: %s is not a string", where, key);
            return SRV_BAD_REQUEST;
        }
        if (tl / 4 * 3 > cap + 2)
            goto too_big;
        uint8_t *dec = malloc(tl + 1);
        if (!dec)
            goto nomem;
        int bad =
            sodium_base642bin(dec, tl + 1, t, tl, NULL, &n, NULL, sodium_base64_VARIANT_ORIGINAL);
        int rc = bad ? 1 : n > cap ? 2 : (n && es_buf_put(out, dec, n)) ? 3 : 0;
        free(dec);
        if (rc == 1) {
            snprintf(err, errcap, "%s: %s is not base64", where, key);
            return SRV_BAD_REQUEST;
        }
        if (rc == 2)
            goto too_big;
        if (rc == 3)
            goto nomem;
    } else if (required) {
        snprintf(err, errcap, "%s: %s is missing", where, name);
        return SRV_BAD_REQUEST;
    }
    return SRV_OK;
too_big:
    snprintf(err, errcap, "%s: %s is over %zu bytes", where, name, cap);
    return SRV_TOO_BIG;
nomem:
    snprintf(err, errcap, "%s: out of memory", where);
    return SRV_TOO_BIG;
}

static const char *const event_fields[] = {"type",     "type_b64", "data",    "data_b64", "meta",
                                           "meta_b64", "id",       "time_us", NULL};

static srv_fault decode_event(srv_append *a, size_t i, json_t *o, char *err, size_t errcap)
{
    char where[32];
    const char *field;
    json_t *v;
    es_buf tb = ES_BUF_INIT;
    srv_fault f;

    snprintf(where, sizeof where, "event %zu", i);
    if (!json_is_object(o)) {
        snprintf(err, errcap, "%s is not a JSON object", where);
        return SRV_BAD_REQUEST;
    }
    json_object_foreach(o, field, v)
    {
        size_t k = 0;
        while (event_fields[k] && strcmp(field, event_fields[k]) != 0)
            k++;
        if (!event_fields[k]) {
            snprintf(err, errcap, "%s: unknown field '%.40s'", where, field);
            return SRV_BAD_REQUEST;
        }
    }
    if ((f = get_bytes(&tb, ES_MAX_TYPE, o, "type", false, true, where, err, errcap)))
        goto done;
    if (tb.len == 0 || memchr(tb.data, 0, tb.len)) {
        snprintf(err, errcap, "%s: type must be 1..%d bytes without NUL", where, ES_MAX_TYPE);
        f = SRV_BAD_REQUEST;
        goto done;
    }
    if (!(a->types[i] = malloc(tb.len + 1))) {
        snprintf(err, errcap, "out of memory");
        f = SRV_TOO_BIG;
        goto done;
    }
    memcpy(a->types[i], tb.data, tb.len);
    a->types[i][tb.len] = 0;
    if ((f = get_bytes(&a->bufs[2 * i], ES_MAX_DATA, o, "data", true, false, where, err, errcap)) ||
        (f = get_bytes(&a->bufs[2 * i + 1], ES_MAX_META, o, "meta", true, false, where, err,
                       errcap)))
        goto done;
    es_event_new *e = &a->events[i];
    e->type = a->types[i];
    e->data = a->bufs[2 * i].data;
    e->data_len = a->bufs[2 * i].len;
    e->meta = a->bufs[2 * i + 1].data;
    e->meta_len = a->bufs[2 * i + 1].len;
    if ((v = json_object_get(o, "id"))) {
        const char *s = json_string_value(v);
        size_t got = 0;
        if (!s || json_string_length(v) != ES_ID_SIZE * 2 ||
            sodium_hex2bin(a->ids[i], ES_ID_SIZE, s, ES_ID_SIZE * 2, NULL, &got, NULL) != 0 ||
            got != ES_ID_SIZE) {
            snprintf(err, errcap, "%s: id must be 32 hex digits", where);
            f = SRV_BAD_REQUEST;
            goto done;
        }
        e->id = a->ids[i];
    }
    if ((v = json_object_get(o, "time_us"))) {
        if (!json_is_integer(v) || json_integer_value(v) <= 0) {
            snprintf(err, errcap, "%s: time_us must be a positive integer (microseconds)", where);
            f = SRV_BAD_REQUEST;
            goto done;
        }
        e->time_us = (int64_t)json_integer_value(v);
    }
done:
    es_buf_free(&tb);
    return f;
}

/* One append (a single event object, or {"expected", "events"}; in a
 * multi-stream append also "stream" / "stream_b64", which the caller
 * decodes) from a parsed JSON object. */
static srv_fault decode_append_obj(srv_append *out, json_t *root, size_t max_events,
                                   const srv_bytes *exp_param, bool in_ops, char *err,
                                   size_t errcap)
{
    json_t *list = NULL, *v;
    srv_fault f = SRV_BAD_REQUEST;
    size_t n;

    memset(out, 0, sizeof *out);
    out->expected = ES_EXPECT_ANY;
    if (exp_param &&
        srv_parse_expected(&out->expected, (const char *)exp_param->p, exp_param->len) != 0) {
        snprintf(err, errcap, "expected must be any, exists, no-stream or a seq");
        return SRV_BAD_REQUEST;
    }
    if (!json_is_object(root)) {
        snprintf(err, errcap, "the body must be a JSON object");
        goto done;
    }
    list = json_object_get(root, "events");
    if (in_ops && !list) {
        snprintf(err, errcap, "an op has stream, expected and events");
        goto done;
    }
    if (list) {
        const char *field;
        json_object_foreach(root, field, v)
        {
            if (strcmp(field, "events") != 0 && strcmp(field, "expected") != 0 &&
                !(in_ops && (strcmp(field, "stream") == 0 || strcmp(field, "stream_b64") == 0))) {
                snprintf(err, errcap, "unknown field '%.40s' (a batch has %sevents and expected)",
                         field, in_ops ? "stream, " : "");
                goto done;
            }
        }
        if (!json_is_array(list)) {
            snprintf(err, errcap, "events must be an array");
            goto done;
        }
        if ((v = json_object_get(root, "expected"))) {
            if (exp_param) {
                snprintf(err, errcap, "expected given both in the query and the body");
                goto done;
            }
            if (json_is_integer(v) && json_integer_value(v) >= 0 &&
                (uint64_t)json_integer_value(v) < ES_SEQ_MAX) {
                out->expected = (uint64_t)json_integer_value(v);
            } else if (!json_is_string(v) ||
                       srv_parse_expected(&out->expected, json_string_value(v),
                                          json_string_length(v)) != 0) {
                snprintf(err, errcap,
                         "expected must be \"any\", \"exists\", \"no-stream\" or a seq");
                goto done;
            }
        }
        n = json_array_size(list);
    } else {
        n = 1;
    }
    if (n == 0) {
        snprintf(err, errcap, "an append needs at least one event");
        goto done;
    }
    if (n > max_events) {
        snprintf(err, errcap, "%zu events in one append; the limit is %zu", n, max_events);
        f = SRV_TOO_BIG;
        goto done;
    }
    out->events = calloc(n, sizeof *out->events);
    out->ids = calloc(n, sizeof *out->ids);
    out->types = calloc(n, sizeof *out->types);
    out->bufs = calloc(2 * n, sizeof *out->bufs);
    if (!out->events || !out->ids || !out->types || !out->bufs) {
        snprintf(err, errcap, "out of memory");
        f = SRV_TOO_BIG;
        goto done;
    }
    out->n = n;
    for (size_t i = 0; i < n; i++)
        if ((f = decode_event(out, i, list ? json_array_get(list, i) : root, err, errcap)))
            goto done;
    f = SRV_OK;
done:
    if (f)
        srv_append_free(out);
    return f;
}

srv_fault srv_decode_append(srv_append *out, const char *body, size_t len, size_t max_events,
                            const srv_bytes *exp_param, char *err, size_t errcap)
{
    json_error_t je;
    json_t *root;
    srv_fault f;

    memset(out, 0, sizeof *out);
    if (!(root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je))) {
        snprintf(err, errcap, "malformed JSON: %s (line %d, column %d)", je.text, je.line,
                 je.column);
        return SRV_BAD_REQUEST;
    }
    f = decode_append_obj(out, root, max_events, exp_param, false, err, errcap);
    json_decref(root);
    return f;
}

srv_fault srv_decode_multi(srv_multi *out, const char *body, size_t len, size_t max_events,
                           char *err, size_t errcap)
{
    json_error_t je;
    json_t *root, *ops;
    srv_fault f = SRV_BAD_REQUEST;
    size_t total = 0;

    memset(out, 0, sizeof *out);
    if (!(root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je))) {
        snprintf(err, errcap, "malformed JSON: %s (line %d, column %d)", je.text, je.line,
                 je.column);
        return SRV_BAD_REQUEST;
    }
    ops = json_object_get(root, "ops");
    if (!json_is_object(root) || !json_is_array(ops) || json_object_size(root) != 1) {
        snprintf(err, errcap, "the body must be {\"ops\": [{stream, expected, events}, ...]}");
        goto done;
    }
    out->n = json_array_size(ops);
    if (out->n == 0) {
        snprintf(err, errcap, "an append needs at least one op");
        goto done;
    }
    if (out->n > max_events) {
        snprintf(err, errcap, "%zu ops in one append; the limit is %zu", out->n, max_events);
        f = SRV_TOO_BIG;
        goto done;
    }
    out->ops = calloc(out->n, sizeof *out->ops);
    out->keys = calloc(out->n, sizeof *out->keys);
    out->aops = calloc(out->n, sizeof *out->aops);
    if (!out->ops || !out->keys || !out->aops) {
        snprintf(err, errcap, "out of memory");
        f = SRV_TOO_BIG;
        goto done;
    }
    for (size_t i = 0; i < out->n; i++) {
        char where[32];
        json_t *op = json_array_get(ops, i);
        snprintf(where, sizeof where, "op %zu", i);
        if ((f = decode_append_obj(&out->ops[i], op, max_events - total, NULL, true, err, errcap)))
            goto done;
        total += out->ops[i].n;
        if ((f = get_bytes(&out->keys[i], ES_MAX_KEY, op, "stream", false, true, where, err,
                           errcap)))
            goto done;
        if (out->keys[i].len == 0) {
            snprintf(err, errcap, "%s: a stream key is 1..%d bytes", where, ES_MAX_KEY);
            f = SRV_BAD_REQUEST;
            goto done;
        }
        out->aops[i] = (es_append_op){out->keys[i].data, out->keys[i].len, out->ops[i].expected,
                                      out->ops[i].events, out->ops[i].n};
    }
    f = SRV_OK;
done:
    json_decref(root);
    if (f)
        srv_multi_free(out);
    return f;
}

void srv_multi_free(srv_multi *m)
{
    if (!m)
        return;
    for (size_t i = 0; m->ops && i < m->n; i++)
        srv_append_free(&m->ops[i]);
    for (size_t i = 0; m->keys && i < m->n; i++)
        es_buf_free(&m->keys[i]);
    free(m->ops);
    free(m->keys);
    free(m->aops);
    memset(m, 0, sizeof *m);
}

void srv_append_free(srv_append *a)
{
    if (!a)
        return;
    for (size_t i = 0; a->types && i < a->n; i++)
        free(a->types[i]);
    for (size_t i = 0; a->bufs && i < 2 * a->n; i++)
        es_buf_free(&a->bufs[i]);
    free(a->events);
    free(a->ids);
    free(a->types);
    free(a->bufs);
    memset(a, 0, sizeof *a);
}

/* ---- subscriptions ---- */

srv_fault srv_decode_start(es_sub_start *start, uint64_t *position, int64_t *time_us,
                           const json_t *v, char *err, size_t errcap)
{
    char b[64];
    if (json_is_integer(v) && json_integer_value(v) > 0) {
        snprintf(b, sizeof b, "%lld", (long long)json_integer_value(v));
    } else if (json_is_string(v) && json_string_length(v) < sizeof b) {
        memcpy(b, json_string_value(v), json_string_length(v) + 1);
    } else {
        b[0] = 0;
    }
    if (!b[0] || strlen(b) != (json_is_string(v) ? json_string_length(v) : strlen(b)) ||
        esrc_parse_start(start, position, time_us, b) != 0) {
        snprintf(err, errcap,
                 "start must be \"beginning\", \"end\", a position or \"@TIME\" (ISO 8601 UTC or "
                 "µs)");
        return SRV_BAD_REQUEST;
    }
    return SRV_OK;
}

static const char *const sub_fields[] = {"name",       "prefixes",   "types",        "start",
                                         "batch_size", "partitions", "max_attempts", "on_poison",
                                         "retry_ms",   NULL};

static srv_fault get_u32(uint32_t *out, json_t *o, const char *name, char *err, size_t errcap)
{
    json_t *v = json_object_get(o, name);
    if (!v)
        return SRV_OK;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > UINT32_MAX) {
        snprintf(err, errcap, "%s must be a number", name);
        return SRV_BAD_REQUEST;
    }
    *out = (uint32_t)json_integer_value(v);
    return SRV_OK;
}

srv_fault srv_decode_sub_create(srv_sub_create *out, const char *body, size_t len, char *err,
                                size_t errcap)
{
    json_error_t je;
    const char *field;
    json_t *v, *root;
    srv_fault f = SRV_BAD_REQUEST;
    es_sub_options init = ES_SUB_OPTIONS_INIT;

    memset(out, 0, sizeof *out);
    out->opts = init;
    if (!(root = out->json = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je))) {
        snprintf(err, errcap, "malformed JSON: %s", je.text);
        return SRV_BAD_REQUEST;
    }
    if (!json_is_object(root)) {
        snprintf(err, errcap, "the body must be a JSON object");
        goto done;
    }
    json_object_foreach(root, field, v)
    {
        size_t k = 0;
        while (sub_fields[k] && strcmp(field, sub_fields[k]) != 0)
            k++;
        if (!sub_fields[k]) {
            snprintf(err, errcap, "unknown field '%.40s'", field);
            goto done;
        }
    }
    if (!(out->name = json_string_value(json_object_get(root, "name")))) {
        snprintf(err, errcap, "name is missing (a string)");
        goto done;
    }
    const char *lists[2] = {"prefixes", "types"};
    for (int l = 0; l < 2; l++) {
        json_t *a = json_object_get(root, lists[l]);
        size_t i;
        if (!a)
            continue;
        if (!json_is_array(a) || json_array_size(a) > ES_MAX_SUB_FILTERS) {
            snprintf(err, errcap, "%s must be an array of at most %d strings", lists[l],
                     ES_MAX_SUB_FILTERS);
            goto done;
        }
        json_array_foreach(a, i, v)
        {
            if (!json_is_string(v)) {
                snprintf(err, errcap, "%s must be an array of strings", lists[l]);
                goto done;
            }
            if (l == 0) {
                out->prefixes[i] = json_string_value(v);
                out->prefix_lens[i] = json_string_length(v);
            } else {
                out->types[i] = json_string_value(v);
            }
        }
        if (l == 0) {
            out->opts.prefixes = out->prefixes;
            out->opts.prefix_lens = out->prefix_lens;
            out->opts.n_prefixes = json_array_size(a);
        } else {
            out->opts.types = out->types;
            out->opts.n_types = json_array_size(a);
        }
    }
    if ((v = json_object_get(root, "start")) &&
        (f = srv_decode_start(&out->opts.start, &out->opts.start_position, &out->opts.start_time_us,
                              v, err, errcap)))
        goto done;
    f = SRV_BAD_REQUEST;
    if (get_u32(&out->opts.batch_size, root, "batch_size", err, errcap) ||
        get_u32(&out->opts.partitions, root, "partitions", err, errcap) ||
        get_u32(&out->opts.max_attempts, root, "max_attempts", err, errcap) ||
        get_u32(&out->opts.retry_ms, root, "retry_ms", err, errcap))
        goto done;
    if ((v = json_object_get(root, "on_poison"))) {
        const char *s = json_string_value(v);
        if (s && strcmp(s, "park") == 0)
            out->opts.on_poison = ES_SUB_PARK;
        else if (s && strcmp(s, "stop") == 0)
            out->opts.on_poison = ES_SUB_STOP;
        else {
            snprintf(err, errcap, "on_poison must be \"park\" or \"stop\"");
            goto done;
        }
    }
    f = SRV_OK;
done:
    if (f)
        srv_sub_create_free(out);
    return f;
}

void srv_sub_create_free(srv_sub_create *c)
{
    if (!c)
        return;
    json_decref(c->json);
    c->json = NULL;
}

/* ---- prefix sets ---- */

static bool starts_with(const uint8_t *k, size_t kl, const uint8_t *p, size_t pl)
{
    return kl >= pl && (pl == 0 || memcmp(k, p, pl) == 0);
}

static int cmp_bytes(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    size_t m = al < bl ? al : bl;
    int c = m ? memcmp(a, b, m) : 0;
    return c ? c : (al > bl) - (al < bl);
}

int srv_prefixes_add(srv_prefixes *s, const void *p, size_t len)
{
    if (len > ES_MAX_KEY)
        return -1;
    for (size_t i = 0; i < s->n; i++)
        if (starts_with(p, len, s->key[i], s->len[i]))
            return 0; /* already covered */
    size_t w = 0;
    for (size_t i = 0; i < s->n; i++) { /* drop the ones p covers */
        if (starts_with(s->key[i], s->len[i], p, len))
            continue;
        if (w != i) {
            memcpy(s->key[w], s->key[i], s->len[i]);
            s->len[w] = s->len[i];
        }
        w++;
    }
    s->n = w;
    if (s->n == SRV_MAX_PREFIXES)
        return -1;
    size_t at = 0;
    while (at < s->n && cmp_bytes(s->key[at], s->len[at], p, len) < 0)
        at++;
    for (size_t i = s->n; i > at; i--) {
        memcpy(s->key[i], s->key[i - 1], s->len[i - 1]);
        s->len[i] = s->len[i - 1];
    }
    if (len)
        memcpy(s->key[at], p, len);
    s->len[at] = len;
    s->n++;
    return 0;
}

void srv_prefixes_within(srv_prefixes *out, const srv_prefixes *s, const void *q, size_t qlen)
{
    out->n = 0;
    for (size_t i = 0; i < s->n; i++) {
        if (starts_with(q, qlen, s->key[i], s->len[i]))
            srv_prefixes_add(out, q, qlen);
        else if (starts_with(s->key[i], s->len[i], q, qlen))
            srv_prefixes_add(out, s->key[i], s->len[i]);
    }
}

bool srv_prefixes_cover(const srv_prefixes *s, const void *key, size_t len)
{
    for (size_t i = 0; i < s->n; i++)
        if (starts_with(key, len, s->key[i], s->len[i]))
            return true;
    return false;
}

size_t srv_prefixes_common(const srv_prefixes *s)
{
    if (s->n == 0)
        return 0;
    size_t c = s->len[0];
    for (size_t i = 1; i < s->n; i++) {
        size_t k = 0;
        while (k < c && k < s->len[i] && s->key[i][k] == s->key[0][k])
            k++;
        c = k;
    }
    return c;
}

int srv_escape(es_buf *out, const uint8_t *p, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        bool plain = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '.' || c == '_' || c == '~';
        char e[3] = {'%', hex[c >> 4], hex[c & 15]};
        if (es_buf_put(out, plain ? (const char *)&p[i] : e, plain ? 1 : 3) < 0)
            return -1;
    }
    return 0;
}

/* ---- encoding ---- */

/* The length of the UTF-8 sequence at p (n bytes left), 0 when invalid:
 * jansson's utf8_check_first / utf8_check_full. */
static size_t utf8_len(const uint8_t *p, size_t n)
{
    uint8_t c = p[0];
    size_t len;
    uint32_t v;
    if (c < 0x80)
        return 1;
    if (c < 0xC2) /* a continuation byte, or an overlong 2-byte form */
        return 0;
    if (c < 0xE0) {
        len = 2;
        v = c & 0x1F;
    } else if (c < 0xF0) {
        len = 3;
        v = c & 0x0F;
    } else if (c < 0xF5) {
        len = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (p[i] & 0x3F);
    }
    if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF) || (len == 3 && v < 0x800) ||
        (len == 4 && v < 0x10000))
        return 0;
    return len;
}

bool srv_is_text(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n;) {
        if (p[i] == 0)
            return false;
        size_t l = utf8_len(p + i, n - i);
        if (!l)
            return false;
        i += l;
    }
    return true;
}

int srv_json_str(es_buf *out, const uint8_t *p, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t run = 0; /* bytes before p + i not yet written */
    if (es_buf_put(out, "\"", 1))
        return -1;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = p[i];
        char esc[6];
        size_t el = 2;
        if (c >= 0x20 && c != '"' && c != '\\') {
            run++;
            continue;
        }
        esc[0] = '\\';
        switch (c) {
        case '"':
        case '\\':
            esc[1] = (char)c;
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            el = 6;
        }
        if ((run && es_buf_put(out, p + i - run, run)) || es_buf_put(out, esc, el))
            return -1;
        run = 0;
    }
    if (run && es_buf_put(out, p + n - run, run))
        return -1;
    return es_buf_put(out, "\"", 1) ? -1 : 0;
}

int srv_json_bytes(es_buf *out, const char *name, const uint8_t *p, size_t n)
{
    if (es_buf_put(out, "\"", 1) || es_buf_put(out, name, strlen(name)))
        return -1;
    if (srv_is_text(p, n))
        return es_buf_put(out, "\":", 2) || srv_json_str(out, p, n) ? -1 : 0;
    size_t cap = sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL);
    char *b = malloc(cap);
    int rc = -1;
    if (b) {
        sodium_bin2base64(b, cap, p, n, sodium_base64_VARIANT_ORIGINAL);
        rc = es_buf_put(out, "_b64\":\"", 7) || es_buf_put(out, b, strlen(b)) ||
                     es_buf_put(out, "\"", 1)
                 ? -1
                 : 0;
        free(b);
    }
    return rc;
}

int srv_event_json(es_buf *out, const es_event *ev)
{
    char idh[ES_ID_SIZE * 2 + 1], hh[ES_HASH_SIZE * 2 + 1], when[64], num[96];
    sodium_bin2hex(idh, sizeof idh, ev->id, ES_ID_SIZE);
    sodium_bin2hex(hh, sizeof hh, ev->hash, ES_HASH_SIZE);
    esrc_format_time_us(when, sizeof when, ev->time_us);
    int n = snprintf(num, sizeof num, ",\"seq\":%lld,\"position\":%lld,\"time_us\":%lld,\"time\":",
                     (long long)ev->seq, (long long)ev->position, (long long)ev->time_us);
    if (es_buf_put(out, "{", 1) || srv_json_bytes(out, "stream", ev->stream, ev->stream_len) ||
        es_buf_put(out, num, (size_t)n) || srv_json_str(out, (const uint8_t *)when, strlen(when)) ||
        es_buf_put(out, ",\"id\":\"", 7) || es_buf_put(out, idh, ES_ID_SIZE * 2) ||
        es_buf_put(out, "\",", 2) ||
        srv_json_bytes(out, "type", (const uint8_t *)ev->type, ev->type_len) ||
        es_buf_put(out, ",", 1) || srv_json_bytes(out, "data", ev->data, ev->data_len) ||
        es_buf_put(out, ",", 1) || srv_json_bytes(out, "meta", ev->meta, ev->meta_len) ||
        es_buf_put(out, ",\"hash\":\"", 9) || es_buf_put(out, hh, ES_HASH_SIZE * 2) ||
        es_buf_put(out, "\"}", 2))
        return -1;
    return 0;
}
