/*
 * fuzz_serve_request.c — the request decoding of `esrc serve`
 * (src/server/request.c): a request target, an append body, a subscription
 * body and the prefix-set arithmetic of token scopes.
 *
 * Input: TARGET "\n" BODY.  Any bytes must decode or be refused with a
 * message, never crash or leak.  Checked properties: a decoded append has
 * 1..max events each within the limits; a prefix set stays sorted and free
 * of overlap, and the intersection with a query covers exactly the keys both
 * cover; the server's direct event encoder writes the same bytes as
 * json_dumps(esrc_event_json()) for an event made of the body's bytes (text
 * or not, with escapes).
 */
#include "import.h"
#include "request.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int cmp(const uint8_t *a, size_t al, const uint8_t *b, size_t bl)
{
    size_t m = al < bl ? al : bl;
    int c = m ? memcmp(a, b, m) : 0;
    return c ? c : (al > bl) - (al < bl);
}

/* The body split in three (stream, type, data; meta the whole body) as an
 * event: srv_event_json must equal jansson's encoding byte for byte. */
static void check_event_json(const uint8_t *p, size_t n)
{
    es_event ev;
    char type[ES_MAX_TYPE + 1];
    size_t a = n / 3, b = n / 3;
    memset(&ev, 0, sizeof ev);
    if (a > ES_MAX_TYPE)
        a = ES_MAX_TYPE;
    memcpy(type, p, a);
    type[a] = 0;
    ev.type = type;
    ev.type_len = a;
    ev.stream = p + a;
    ev.stream_len = b;
    ev.data = p + a + b;
    ev.data_len = n - a - b;
    ev.meta = p;
    ev.meta_len = n;
    ev.seq = n + 1;
    ev.position = (uint64_t)n * 7919 + 1;
    ev.time_us = n % 2 ? -(int64_t)n * 1000003 : (int64_t)n * 1000003;
    for (size_t i = 0; i < ES_ID_SIZE && i < n; i++)
        ev.id[i] = p[i];
    for (size_t i = 0; i < ES_HASH_SIZE && i < n; i++)
        ev.hash[i] = p[n - 1 - i];
    json_t *j = esrc_event_json(&ev);
    char *want = j ? json_dumps(j, JSON_COMPACT) : NULL;
    es_buf got = ES_BUF_INIT;
    if (!want || srv_event_json(&got, &ev) || got.len != strlen(want) ||
        memcmp(got.data, want, got.len) != 0)
        abort();
    if (srv_is_text(p, n) != esrc_is_text(p, n))
        abort();
    es_buf_free(&got);
    free(want);
    json_decref(j);
}

static void check_set(const srv_prefixes *s)
{
    for (size_t i = 0; i + 1 < s->n; i++)
        if (cmp(s->key[i], s->len[i], s->key[i + 1], s->len[i + 1]) >= 0)
            abort();
    for (size_t i = 0; i < s->n; i++)
        for (size_t j = 0; j < s->n; j++)
            if (i != j && s->len[j] >= s->len[i] &&
                (s->len[i] == 0 || memcmp(s->key[j], s->key[i], s->len[i]) == 0))
                abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static srv_target t; /* large */
    char err[300];
    const uint8_t *nl = memchr(data, '\n', size);
    size_t tl = nl ? (size_t)(nl - data) : size;
    const char *body = nl ? (const char *)nl + 1 : "";
    size_t bl = nl ? size - tl - 1 : 0;

    err[0] = 0;
    if (srv_parse_target(&t, (const char *)data, tl, err, sizeof err) != SRV_OK) {
        if (!err[0])
            abort();
    } else {
        /* every segment and parameter points into t.store */
        for (size_t i = 0; i < t.n_seg; i++)
            if (t.seg[i].len == 0 || t.seg[i].p < t.store ||
                t.seg[i].p + t.seg[i].len > t.store + sizeof t.store)
                abort();
        uint64_t v;
        srv_param_u64(&v, &t, "limit", 100, 1, 1000, err, sizeof err);
    }

    check_event_json((const uint8_t *)body, bl);

    srv_append a;
    err[0] = 0;
    if (srv_decode_append(&a, body, bl, 5, NULL, err, sizeof err) == SRV_OK) {
        if (a.n == 0 || a.n > 5)
            abort();
        for (size_t i = 0; i < a.n; i++)
            if (!a.events[i].type || strlen(a.events[i].type) == 0 ||
                strlen(a.events[i].type) > ES_MAX_TYPE || a.events[i].data_len > ES_MAX_DATA ||
                a.events[i].meta_len > ES_MAX_META)
                abort();
        srv_append_free(&a);
    } else if (!err[0]) {
        abort();
    }

    srv_sub_create sc;
    if (srv_decode_sub_create(&sc, body, bl, err, sizeof err) == SRV_OK)
        srv_sub_create_free(&sc);

    /* prefixes: the target's segments as a set, the body's first bytes as a query */
    srv_prefixes s = {0}, w;
    if (srv_parse_target(&t, (const char *)data, tl, err, sizeof err) == SRV_OK) {
        for (size_t i = 0; i < t.n_seg; i++)
            srv_prefixes_add(&s, t.seg[i].p, t.seg[i].len > 40 ? 40 : t.seg[i].len);
        check_set(&s);
        size_t ql = bl > 8 ? 8 : bl;
        srv_prefixes_within(&w, &s, body, ql);
        check_set(&w);
        /* a key made of the query: covered by w exactly when by both */
        if (srv_prefixes_cover(&w, body, ql) != (srv_prefixes_cover(&s, body, ql) && true))
            abort();
        for (size_t i = 0; i < w.n; i++)
            if (!srv_prefixes_cover(&s, w.key[i], w.len[i]) || w.len[i] < ql ||
                memcmp(w.key[i], body, ql) != 0)
                abort();
    }
    return 0;
}
