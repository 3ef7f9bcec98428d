/*
 * fuzz_http_json.c — the http:// store's reader of a server's JSON answers
 * (src/backend/http_json.c) fed hostile bytes, as a broken or hostile
 * server would send them.  It must answer 0, ES_ENOMEM or ES_ECORRUPT,
 * never crash or read out of bounds; a tree it accepts must be sound: every
 * index in range, every string NUL-terminated at its length, and lookups
 * by name answer what a walk of the members finds.
 */
#include "backend/http_json.h"
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void walk(const hj_doc *d, size_t i, int depth)
{
    if (i >= d->n || depth > 10000)
        abort();
    const hj_node *v = &d->v[i];
    if (v->type == HJ_STR && v->s[v->len] != 0)
        abort();
    if (v->key && v->key[v->key_len] != 0)
        abort();
    if (v->type != HJ_ARR && v->type != HJ_OBJ)
        return;
    for (size_t c = v->first; c != HJ_NONE; c = d->v[c].next) {
        if (c >= d->n || (v->type == HJ_OBJ) != (d->v[c].key != NULL))
            abort();
        walk(d, c, depth + 1);
        if (v->type == HJ_OBJ && strlen(d->v[c].key) == d->v[c].key_len &&
            es__hj_get(d, i, d->v[c].key) == HJ_NONE)
            abort();
        int64_t x;
        if (v->type == HJ_OBJ && strlen(d->v[c].key) == d->v[c].key_len)
            (void)es__hj_int(d, i, d->v[c].key, &x);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size + 1); /* the parser may write buf[size] */
    hj_doc doc;
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    memset(&doc, 0, sizeof doc);
    int rc = es__hj_parse(&doc, buf, size);
    if (rc != 0 && rc != ES_ENOMEM && rc != ES_ECORRUPT)
        abort();
    if (rc == 0)
        walk(&doc, 0, 0);
    es__hj_free(&doc);
    free(buf);
    return 0;
}
