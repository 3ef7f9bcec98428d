/*
 * foldview.h — a small, order-sensitive view for tests: its value is a
 * count and a running hash of the data of "Set" events; "Noop" leaves it,
 * "Del" deletes it.  Its view key is its stream key.
 */
#ifndef ES_FOLDVIEW_H
#define ES_FOLDVIEW_H

#include <eventsrc.h>
#include <stdlib.h>
#include <string.h>

typedef struct fv_value {
    uint64_t count;
    uint64_t hash;
} fv_value;

static inline int fv_stream_key(uint8_t out[ES_MAX_KEY], size_t *out_len, const uint8_t *vkey,
                                size_t vkey_len, void *payload)
{
    (void)payload;
    memcpy(out, vkey, vkey_len);
    *out_len = vkey_len;
    return 0;
}

static inline int fv_init(void **out, const uint8_t *k, size_t n, void *payload)
{
    (void)k, (void)n, (void)payload;
    *out = calloc(1, sizeof(fv_value));
    return *out ? 0 : ES_ENOMEM;
}

/* The fold step, usable directly by the model. */
static inline int fv_step(fv_value *v, const char *type, size_t type_len, const uint8_t *data,
                          size_t len)
{
    if (type_len == 3 && memcmp(type, "Set", 3) == 0) {
        v->count++;
        for (size_t i = 0; i < len; i++)
            v->hash = v->hash * 131 + data[i];
        v->hash = v->hash * 131 + 7;
        return ES_FOLD_CHANGED;
    }
    if (type_len == 3 && memcmp(type, "Del", 3) == 0)
        return ES_FOLD_DELETED;
    return ES_FOLD_UNCHANGED;
}

static inline int fv_apply(void *acc, const es_event *ev, const uint8_t *k, size_t n, void *payload)
{
    (void)k, (void)n, (void)payload;
    return fv_step(acc, ev->type, ev->type_len, ev->data, ev->data_len);
}

static inline int fv_encode(es_buf *out, const void *acc, void *payload)
{
    (void)payload;
    return es_buf_put(out, acc, sizeof(fv_value));
}

static inline int fv_decode(void **out, const uint8_t *d, size_t n, void *payload)
{
    (void)payload;
    if (n != sizeof(fv_value))
        return ES_ECORRUPT;
    fv_value *v = malloc(sizeof *v);
    if (!v)
        return ES_ENOMEM;
    memcpy(v, d, sizeof *v);
    *out = v;
    return 0;
}

static inline void fv_free(void *v, void *payload)
{
    (void)payload;
    free(v);
}

static inline es_view_def fv_def(const char *name, uint32_t version)
{
    es_view_def d = {
        .version = ES_VIEW_DEF_VERSION,
        .name = name,
        .view_version = version,
        .stream_key = fv_stream_key,
        .init = fv_init,
        .apply = fv_apply,
        .encode = fv_encode,
        .decode = fv_decode,
        .free_value = fv_free,
    };
    return d;
}

#endif
