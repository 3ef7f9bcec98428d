/*
 * eventsrc_json.h — a ready codec for views whose value is JSON: the
 * accumulator is a jansson `json_t *` (an object, made empty by init),
 * stored in snapshots as compact JSON text.
 *
 * Header-only, so that libeventsrc itself does not depend on jansson: a
 * program that includes this header links jansson (pkg-config jansson).
 *
 *   static int apply(void *acc, const es_event *ev, const uint8_t *fkey, size_t fkey_len,
 *                    void *payload)
 *   {
 *       json_t *user = acc;   // mutate in place
 *       json_object_set_new(user, "name", json_stringn((const char *)ev->data, ev->data_len));
 *       return ES_FOLD_CHANGED;
 *   }
 *   es_view_def def = {.version = ES_VIEW_DEF_VERSION, .name = "User", .apply = apply};
 *   es_view_def_use_json(&def);
 *
 * A snapshot's value (es_snapshot.value) is then a json_t * the snapshot
 * owns: borrow it, or json_incref it to keep it past es_snapshot_clear.
 */
/* The public header is laid out by hand (aligned field comments, one-line
 * initialiser macros), which clang-format would undo. */
/* clang-format off */
#ifndef EVENTSRC_JSON_H
#define EVENTSRC_JSON_H

#include <eventsrc.h>
#include <jansson.h>

static inline int es_json__init(void **out, const uint8_t *fkey, size_t fkey_len, void *payload)
{
    (void)fkey, (void)fkey_len, (void)payload;
    *out = json_object();
    return *out ? 0 : ES_ENOMEM;
}

static inline int es_json__dump(const char *buffer, size_t size, void *data)
{
    return es_buf_put((es_buf *)data, buffer, size) == 0 ? 0 : -1;
}

static inline int es_json__encode(es_buf *out, const void *acc, void *payload)
{
    (void)payload;
    return json_dump_callback((const json_t *)acc, es_json__dump, out, JSON_COMPACT) == 0
               ? 0
               : ES_ENOMEM;
}

static inline int es_json__decode(void **out, const uint8_t *data, size_t len, void *payload)
{
    (void)payload;
    *out = json_loadb((const char *)data, len, 0, NULL);
    return *out ? 0 : ES_ECORRUPT;
}

static inline void es_json__free(void *acc, void *payload)
{
    (void)payload;
    json_decref((json_t *)acc);
}

/** Make `def` a JSON view: sets init, encode, decode and free_value (and
 *  value_size 0).  The caller sets name, apply and the rest. */
static inline void es_view_def_use_json(es_view_def *def)
{
    def->init = es_json__init;
    def->encode = es_json__encode;
    def->decode = es_json__decode;
    def->free_value = es_json__free;
    def->value_size = 0;
}

#endif /* EVENTSRC_JSON_H */
/* clang-format on */
