/*
 * fuzz_sub_records.c — subscriptions fed hostile input, on a mem: store.
 * The first byte picks the mode:
 *   even: a subscription's stored record (state, then definition) as a
 *         crafted store would hold it, written under the library's key
 *         through the store's kv table; then every call that reads it;
 *   odd:  es_sub_create with options made from the bytes (prefixes, types,
 *         start, batch size), then a consumer that reads, acks and closes.
 * Every call must answer a code (damaged records: ES_ECORRUPT), never crash,
 * leak or read out of bounds; the store's events are never touched.
 */
#include "internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static es_store *fresh_store(void)
{
    es_store *st;
    if (es_store_open(&st, "mem:", NULL) != 0)
        abort();
    es_event_new ev = {.type = "T", .data = "x", .data_len = 1};
    for (int i = 0; i < 5; i++)
        if (es_append(NULL, st, i % 2 ? "a/1" : "b/2", 3, ES_EXPECT_ANY, &ev, 1) != 0)
            abort();
    return st;
}

static int count_info(const es_sub_info *info, void *payload)
{
    (void)info;
    (*(int *)payload)++;
    return 0;
}

/* Read, ack and close; whatever the subscription is, this must not crash. */
static void consume(es_store *st, const char *name)
{
    es_sub *sub;
    if (es_sub_open(&sub, st, name, NULL) != 0)
        return;
    const es_event *const *evs;
    size_t n;
    if (es_sub_next(&evs, &n, sub, 0) == 0 && n > 0)
        (void)es_sub_ack(sub, evs[n - 1]->position);
    (void)es_sub_commit(sub);
    es_sub_close(sub);
}

static void the_reads(es_store *st, const char *name)
{
    es_sub_info info;
    int n = 0;
    (void)es_sub_info_get(&info, st, name);
    (void)es_sub_list(st, count_info, &n);
    consume(st, name);
    (void)es_sub_reset(st, name, ES_SUB_FROM_BEGINNING, 0, 0);
    consume(st, name);
    (void)es_sub_delete(st, name);
}

static void crafted_records(es_store *st, const uint8_t *data, size_t size)
{
    uint64_t ver;
    if (st->ops->kv_cas(st->be, (const uint8_t *)"sub/x", 5, 0, data, size, &ver) != 0)
        abort();
    the_reads(st, "x");
}

static void made_options(es_store *st, const uint8_t *data, size_t size)
{
    const void *prefixes[ES_MAX_SUB_FILTERS + 2];
    size_t lens[ES_MAX_SUB_FILTERS + 2];
    const char *types[ES_MAX_SUB_FILTERS + 2];
    char type_buf[ES_MAX_SUB_FILTERS + 2][8];
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    if (size < 4)
        return;
    o.n_prefixes = data[0] % (ES_MAX_SUB_FILTERS + 2); /* one past the limit too */
    o.n_types = data[1] % (ES_MAX_SUB_FILTERS + 2);
    o.start = (es_sub_start)(data[2] % 5); /* one past the last start */
    o.batch_size = data[3] * 41u;
    data += 4;
    size -= 4;
    for (size_t i = 0; i < o.n_prefixes; i++) {
        size_t l = size ? data[0] % 8 : 0; /* 0: an empty prefix, refused */
        if (l > size)
            l = size;
        prefixes[i] = size ? data : (const void *)"";
        lens[i] = l;
        data += l;
        size -= l;
    }
    for (size_t i = 0; i < o.n_types; i++) {
        size_t l = size ? data[0] % 8 : 0;
        if (l > size)
            l = size;
        memcpy(type_buf[i], data, l);
        type_buf[i][l] = 0; /* may be empty, or stop at an inner NUL */
        types[i] = type_buf[i];
        data += l;
        size -= l;
    }
    o.prefixes = prefixes;
    o.prefix_lens = lens;
    o.types = types;
    if (size >= 8) {
        memcpy(&o.start_position, data, 8);
        memcpy(&o.start_time_us, data, 8);
    }
    if (es_sub_create(st, "y", &o) == 0)
        the_reads(st, "y");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    es_store *st = fresh_store();
    if (data[0] % 2 == 0)
        crafted_records(st, data + 1, size - 1);
    else
        made_options(st, data + 1, size - 1);
    /* the events are untouched whatever happened */
    es_store_stats s;
    if (es_store_stats_get(&s, st) != 0 || s.events != 5)
        abort();
    es_store_close(st);
    return 0;
}
