/*
 * conformance.c — the store conformance suite, written once and run against
 * every backend (argv[1]: mem, lmdb or pg).  Whatever passes here behaves
 * the same on every store.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int setup(void **state)
{
    tu_store *ts = calloc(1, sizeof *ts);
    tu_open(ts);
    *state = ts;
    return 0;
}

static int teardown(void **state)
{
    tu_store *ts = *state;
    tu_close(ts);
    free(ts);
    return 0;
}

#define ST (((tu_store *)*state)->st)

static uint64_t head_of(es_store *st, const char *stream)
{
    uint64_t h = 99;
    TU_EXPECT_OK(es_stream_head(&h, st, stream, strlen(stream)));
    return h;
}

static void test_empty_store(void **state)
{
    uint64_t pos = 7;
    es_store_stats s;
    assert_int_equal(head_of(ST, "nobody"), 0);
    TU_EXPECT_OK(es_store_last_position(&pos, ST));
    assert_int_equal(pos, 0);
    TU_EXPECT_OK(es_store_stats_get(&s, ST));
    assert_int_equal(s.events, 0);
    assert_int_equal(s.streams, 0);
    assert_int_equal(tu_count_log(ST), 0);
}

static void test_append_and_read_back_every_field(void **state)
{
    tu_store *ts = *state;
    uint8_t id1[16], id2[16];
    memset(id1, 0xA1, 16);
    memset(id2, 0xB2, 16);
    static const uint8_t key[] = {'a', 0, 'b', '\'', '"', '\\', 0xff};
    es_event_new evs[3] = {
        {.type = "Created",
         .data = "{\"x\":1}",
         .data_len = 7,
         .meta = "m1",
         .meta_len = 2,
         .id = id1},
        {.type = "Renamed", .data = "\0bin\0", .data_len = 5, .id = id2},
        {.type = "Empty"},
    };
    es_append_result r;
    TU_EXPECT_OK(es_append(&r, ST, key, sizeof key, ES_EXPECT_NO_STREAM, evs, 3));
    assert_int_equal(r.first_seq, 1);
    assert_int_equal(r.last_seq, 3);
    assert_int_equal(r.head, 3);
    assert_int_equal(r.last_position - r.first_position, 2);
    assert_int_equal(r.replayed, 0);
    assert_true(r.time_us >= 1767225600000000LL);
    /* the fake clock of the open options decides, except on http://, where
     * the server's store keeps its own clock */
    if (strcmp(tu_backend, "http") != 0)
        assert_true(r.time_us <= ts->clock_now);

    es_cursor *c;
    const es_event *ev;
    TU_EXPECT_OK(es_stream_cursor(&c, ST, key, sizeof key, NULL));
    uint8_t prev[ES_HASH_SIZE], h[ES_HASH_SIZE];
    for (int i = 0; i < 3; i++) {
        TU_EXPECT_OK(es_cursor_next(&ev, c));
        assert_int_equal(ev->seq, i + 1);
        assert_int_equal(ev->position, r.first_position + (uint64_t)i);
        assert_int_equal(ev->time_us, r.time_us);
        assert_int_equal(ev->stream_len, sizeof key);
        assert_memory_equal(ev->stream, key, sizeof key);
        assert_string_equal(ev->type, evs[i].type);
        assert_int_equal(ev->type_len, strlen(evs[i].type));
        assert_int_equal(ev->data_len, evs[i].data_len);
        if (evs[i].data_len)
            assert_memory_equal(ev->data, evs[i].data, evs[i].data_len);
        assert_int_equal(ev->meta_len, evs[i].meta_len);
        if (evs[i].meta_len)
            assert_memory_equal(ev->meta, evs[i].meta, evs[i].meta_len);
        if (evs[i].id)
            assert_memory_equal(ev->id, evs[i].id, 16);
        TU_EXPECT_OK(es_event_hash(h, i ? prev : NULL, ev));
        assert_memory_equal(h, ev->hash, ES_HASH_SIZE);
        memcpy(prev, ev->hash, ES_HASH_SIZE);
    }
    assert_int_equal(es_cursor_next(&ev, c), ES_ITEROVER);
    assert_int_equal(es_cursor_next(&ev, c), ES_ITEROVER);
    es_cursor_free(c);
    assert_int_equal(head_of(ST, "nobody"), 0);
    uint64_t h2;
    TU_EXPECT_OK(es_stream_head(&h2, ST, key, sizeof key));
    assert_int_equal(h2, 3);

    /* random ids differ */
    TU_EXPECT_OK(es_stream_cursor(&c, ST, key, sizeof key, NULL));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    uint8_t zero[16] = {0};
    assert_memory_not_equal(ev->id, zero, 16);
    es_cursor_free(c);
}

static void test_expect_any(void **state)
{
    es_append_result r;
    TU_EXPECT_OK(tu_append1(ST, "s", ES_EXPECT_ANY, "T", "1", &r));
    TU_EXPECT_OK(tu_append1(ST, "s", ES_EXPECT_ANY, "T", "2", &r));
    assert_int_equal(r.first_seq, 2);
    assert_int_equal(head_of(ST, "s"), 2);
}

static void test_expect_no_stream(void **state)
{
    es_append_result r;
    TU_EXPECT_OK(tu_append1(ST, "s", ES_EXPECT_NO_STREAM, "T", "1", &r));
    assert_int_equal(tu_append1(ST, "s", ES_EXPECT_NO_STREAM, "T", "2", &r), ES_ECONFLICT);
    assert_int_equal(r.head, 1);
    assert_int_equal(head_of(ST, "s"), 1);
    assert_int_equal(tu_count_log(ST), 1);
}

static void test_expect_exists(void **state)
{
    es_append_result r;
    assert_int_equal(tu_append1(ST, "s", ES_EXPECT_EXISTS, "T", "1", &r), ES_ECONFLICT);
    assert_int_equal(r.head, 0);
    assert_int_equal(tu_count_log(ST), 0);
    TU_EXPECT_OK(tu_append1(ST, "s", ES_EXPECT_ANY, "T", "1", &r));
    TU_EXPECT_OK(tu_append1(ST, "s", ES_EXPECT_EXISTS, "T", "2", &r));
    assert_int_equal(r.last_seq, 2);
}

static void test_expect_exact_seq(void **state)
{
    es_append_result r;
    TU_EXPECT_OK(tu_append1(ST, "s", 0, "T", "1", &r));
    TU_EXPECT_OK(tu_append1(ST, "s", 1, "T", "2", &r));
    assert_int_equal(tu_append1(ST, "s", 1, "T", "x", &r), ES_ECONFLICT);
    assert_int_equal(r.head, 2);
    assert_int_equal(tu_append1(ST, "s", 3, "T", "x", &r), ES_ECONFLICT);
    assert_int_equal(r.head, 2);
    TU_EXPECT_OK(tu_append1(ST, "s", 2, "T", "3", &r));
    assert_int_equal(r.first_seq, 3);
    assert_int_equal(tu_count_log(ST), 3);
}

static void test_failed_batch_leaves_nothing(void **state)
{
    static char big[ES_MAX_META + 1];
    es_event_new evs[3] = {
        {.type = "A", .data = "1", .data_len = 1},
        {.type = "B", .data = "2", .data_len = 1},
        {.type = "C", .meta = big, .meta_len = sizeof big},
    };
    es_append_result r;
    assert_int_equal(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, evs, 3), ES_ETOOBIG);
    assert_int_equal(head_of(ST, "s"), 0);
    assert_int_equal(tu_count_log(ST), 0);
    /* a conflicting batch writes nothing either */
    TU_EXPECT_OK(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, evs, 2));
    assert_int_equal(es_append(&r, ST, "s", 1, 5, evs, 2), ES_ECONFLICT);
    assert_int_equal(head_of(ST, "s"), 2);
    assert_int_equal(tu_count_log(ST), 2);
}

static void test_big_batch_is_atomic_and_contiguous(void **state)
{
    enum { N = 2500 };
    es_event_new *evs = calloc(N, sizeof *evs);
    char(*data)[16] = calloc(N, 16);
    for (int i = 0; i < N; i++) {
        snprintf(data[i], 16, "%d", i);
        evs[i] = (es_event_new){.type = "Big", .data = data[i], .data_len = strlen(data[i])};
    }
    es_append_result r;
    TU_EXPECT_OK(tu_append1(ST, "other", ES_EXPECT_ANY, "T", "x", &r));
    TU_EXPECT_OK(es_append(&r, ST, "big", 3, ES_EXPECT_NO_STREAM, evs, N));
    assert_int_equal(r.last_seq, N);
    assert_int_equal(r.last_position - r.first_position, N - 1);
    es_cursor *c;
    const es_event *ev;
    TU_EXPECT_OK(es_stream_cursor(&c, ST, "big", 3, NULL));
    int i = 0, rc;
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        assert_int_equal(ev->seq, i + 1);
        assert_int_equal(ev->position, r.first_position + (uint64_t)i);
        assert_int_equal(ev->data_len, strlen(data[i]));
        assert_memory_equal(ev->data, data[i], ev->data_len);
        i++;
    }
    assert_int_equal(rc, ES_ITEROVER);
    assert_int_equal(i, N);
    es_cursor_free(c);
    free(evs);
    free(data);
}

static void test_idempotent_retry(void **state)
{
    uint8_t ids[3][16];
    for (int i = 0; i < 3; i++)
        memset(ids[i], 0x10 + i, 16);
    es_event_new evs[3] = {
        {.type = "A", .id = ids[0]}, {.type = "B", .id = ids[1]}, {.type = "C", .id = ids[2]}};
    es_append_result r1, r2;
    TU_EXPECT_OK(tu_append1(ST, "s", ES_EXPECT_ANY, "T", "0", NULL));
    TU_EXPECT_OK(es_append(&r1, ST, "s", 1, 1, evs, 2));
    assert_int_equal(r1.replayed, 0);
    /* the same append again: the original result, nothing written */
    TU_EXPECT_OK(es_append(&r2, ST, "s", 1, 1, evs, 2));
    assert_int_equal(r2.replayed, 1);
    assert_int_equal(r2.first_seq, r1.first_seq);
    assert_int_equal(r2.last_seq, r1.last_seq);
    assert_int_equal(r2.first_position, r1.first_position);
    assert_int_equal(r2.last_position, r1.last_position);
    assert_int_equal(r2.time_us, r1.time_us);
    TU_EXPECT_OK(es_append(&r2, ST, "s", 1, ES_EXPECT_ANY, evs, 2));
    assert_int_equal(r2.replayed, 1);
    assert_int_equal(head_of(ST, "s"), 3);
    assert_int_equal(tu_count_log(ST), 3);
    /* other events came after: a retry with its original expectation is still answered */
    TU_EXPECT_OK(tu_append1(ST, "s", ES_EXPECT_ANY, "T", "later", NULL));
    TU_EXPECT_OK(es_append(&r2, ST, "s", 1, 1, evs, 2));
    assert_int_equal(r2.replayed, 1);
    assert_int_equal(r2.head, 4);
    /* ... but not with an expectation that never held there */
    assert_int_equal(es_append(&r2, ST, "s", 1, 2, evs, 2), ES_ECONFLICT);
    /* partial overlap: two landed, one new */
    assert_int_equal(es_append(&r2, ST, "s", 1, ES_EXPECT_ANY, evs, 3), ES_EDUPLICATE);
    es_event_new swapped[2] = {evs[2], evs[0]};
    assert_int_equal(es_append(&r2, ST, "s", 1, ES_EXPECT_ANY, swapped, 2), ES_EDUPLICATE);
    /* same id in another stream */
    assert_int_equal(es_append(&r2, ST, "t", 1, ES_EXPECT_ANY, evs, 1), ES_EDUPLICATE);
    /* the same id twice in one batch */
    es_event_new twice[2] = {evs[2], evs[2]};
    assert_int_equal(es_append(&r2, ST, "s", 1, ES_EXPECT_ANY, twice, 2), ES_EINVAL);
    assert_int_equal(head_of(ST, "s"), 4);
    assert_int_equal(head_of(ST, "t"), 0);
    assert_int_equal(tu_count_log(ST), 4);
}

static void append_n(es_store *st, const char *stream, int n)
{
    for (int i = 0; i < n; i++) {
        char d[32];
        snprintf(d, sizeof d, "%s-%d", stream, i + 1);
        TU_EXPECT_OK(tu_append1(st, stream, ES_EXPECT_ANY, "T", d, NULL));
    }
}

static void expect_seqs(es_store *st, const char *stream, es_read_options *o, const uint64_t *seqs,
                        size_t n)
{
    es_cursor *c;
    const es_event *ev;
    size_t i = 0;
    int rc;
    TU_EXPECT_OK(es_stream_cursor(&c, st, stream, strlen(stream), o));
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        assert_true(i < n);
        assert_int_equal(ev->seq, seqs[i]);
        i++;
    }
    assert_int_equal(rc, ES_ITEROVER);
    assert_int_equal(i, n);
    es_cursor_free(c);
}

static void test_read_ranges(void **state)
{
    append_n(ST, "a", 10);
    append_n(ST, "b", 3);
    es_read_options o = ES_READ_OPTIONS_INIT;
    uint64_t all[10] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10};
    expect_seqs(ST, "a", &o, all, 10);
    o.from_seq = 4;
    o.to_seq = 6;
    expect_seqs(ST, "a", &o, (uint64_t[]){4, 5, 6}, 3);
    o.limit = 2;
    expect_seqs(ST, "a", &o, (uint64_t[]){4, 5}, 2);
    o = (es_read_options)ES_READ_OPTIONS_INIT;
    o.backward = 1;
    expect_seqs(ST, "a", &o, (uint64_t[]){10, 9, 8, 7, 6, 5, 4, 3, 2, 1}, 10);
    o.from_seq = 5;
    o.limit = 3;
    expect_seqs(ST, "a", &o, (uint64_t[]){5, 4, 3}, 3);
    o.limit = 0;
    o.to_seq = 4;
    expect_seqs(ST, "a", &o, (uint64_t[]){5, 4}, 2);
    o.from_seq = 50;
    o.to_seq = 9;
    expect_seqs(ST, "a", &o, (uint64_t[]){10, 9}, 2);
    o = (es_read_options)ES_READ_OPTIONS_INIT;
    o.from_seq = 11;
    expect_seqs(ST, "a", &o, NULL, 0);
    o.from_seq = 6;
    o.to_seq = 5;
    expect_seqs(ST, "a", &o, NULL, 0);
    o = (es_read_options)ES_READ_OPTIONS_INIT;
    expect_seqs(ST, "nothing", &o, NULL, 0);
    o.backward = 1;
    expect_seqs(ST, "nothing", &o, NULL, 0);
    expect_seqs(ST, "b", &o, (uint64_t[]){3, 2, 1}, 3);
}

static void test_cursor_sees_later_appends_or_ends_cleanly(void **state)
{
    /* A forward cursor opened on an empty stream ends; reopened, it sees the events. */
    es_cursor *c;
    const es_event *ev;
    TU_EXPECT_OK(es_stream_cursor(&c, ST, "late", 4, NULL));
    assert_int_equal(es_cursor_next(&ev, c), ES_ITEROVER);
    es_cursor_free(c);
    append_n(ST, "late", 2);
    TU_EXPECT_OK(es_stream_cursor(&c, ST, "late", 4, NULL));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    assert_int_equal(ev->seq, 1);
    es_cursor_free(c);
}

static void test_global_log_order_and_filters(void **state)
{
    const char *streams[] = {"user-1", "user-2", "order-1", "user-1", "order-1", "user-3"};
    const char *types[] = {"Created", "Created", "Placed", "Renamed", "Paid", "Created"};
    for (int i = 0; i < 6; i++)
        TU_EXPECT_OK(tu_append1(ST, streams[i], ES_EXPECT_ANY, types[i], streams[i], NULL));
    /* postgres shows an event in the log once older transactions have ended */
    TU_EXPECT_OK(es_log_catch_up(ST, 60000));

    es_cursor *c;
    const es_event *ev;
    uint64_t last = 0;
    int i = 0, rc;
    TU_EXPECT_OK(es_log_cursor(&c, ST, NULL));
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        assert_true(ev->position > last);
        last = ev->position;
        assert_int_equal(ev->stream_len, strlen(streams[i]));
        assert_memory_equal(ev->stream, streams[i], ev->stream_len);
        assert_string_equal(ev->type, types[i]);
        i++;
    }
    assert_int_equal(rc, ES_ITEROVER);
    assert_int_equal(i, 6);
    es_cursor_free(c);

    es_log_options o = ES_LOG_OPTIONS_INIT;
    o.prefix = "user-";
    o.prefix_len = 5;
    TU_EXPECT_OK(es_log_cursor(&c, ST, &o));
    i = 0;
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        assert_memory_equal(ev->stream, "user-", 5);
        i++;
    }
    assert_int_equal(i, 4);
    es_cursor_free(c);

    o = (es_log_options)ES_LOG_OPTIONS_INIT;
    o.type = "Created";
    TU_EXPECT_OK(es_log_cursor(&c, ST, &o));
    i = 0;
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        assert_string_equal(ev->type, "Created");
        i++;
    }
    assert_int_equal(i, 3);
    es_cursor_free(c);

    /* from a position, with a limit */
    o = (es_log_options)ES_LOG_OPTIONS_INIT;
    TU_EXPECT_OK(es_log_cursor(&c, ST, &o));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    uint64_t third = ev->position;
    es_cursor_free(c);
    o.from_position = third;
    o.limit = 2;
    TU_EXPECT_OK(es_log_cursor(&c, ST, &o));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    assert_int_equal(ev->position, third);
    assert_string_equal(ev->type, "Placed");
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    assert_string_equal(ev->type, "Renamed");
    assert_int_equal(es_cursor_next(&ev, c), ES_ITEROVER);
    es_cursor_free(c);

    o = (es_log_options)ES_LOG_OPTIONS_INIT;
    o.prefix = "order-";
    o.prefix_len = 6;
    o.type = "Paid";
    TU_EXPECT_OK(es_log_cursor(&c, ST, &o));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    assert_string_equal(ev->type, "Paid");
    assert_int_equal(es_cursor_next(&ev, c), ES_ITEROVER);
    es_cursor_free(c);

    uint64_t lp;
    TU_EXPECT_OK(es_store_last_position(&lp, ST));
    assert_int_equal(lp, last);
}

typedef struct listed {
    char keys[8][32];
    uint64_t heads[8];
    int n;
} listed;

static int collect(const uint8_t *k, size_t len, uint64_t head, void *payload)
{
    listed *l = payload;
    if (l->n >= 8)
        return 1;
    memcpy(l->keys[l->n], k, len);
    l->keys[l->n][len] = 0;
    l->heads[l->n++] = head;
    return 0;
}

static void test_streams_listing_and_stats(void **state)
{
    append_n(ST, "b/2", 2);
    append_n(ST, "a/1", 1);
    append_n(ST, "b/1", 3);
    append_n(ST, "c", 1);
    listed l = {0};
    TU_EXPECT_OK(es_streams(ST, NULL, 0, collect, &l));
    assert_int_equal(l.n, 4);
    assert_string_equal(l.keys[0], "a/1");
    assert_string_equal(l.keys[1], "b/1");
    assert_int_equal(l.heads[1], 3);
    assert_string_equal(l.keys[2], "b/2");
    assert_string_equal(l.keys[3], "c");
    memset(&l, 0, sizeof l);
    TU_EXPECT_OK(es_streams(ST, "b/", 2, collect, &l));
    assert_int_equal(l.n, 2);
    assert_string_equal(l.keys[0], "b/1");
    /* a callback's non-zero return stops the walk */
    l.n = 8;
    assert_int_equal(es_streams(ST, NULL, 0, collect, &l), ES_EUSER);
    es_store_stats s;
    TU_EXPECT_OK(es_store_stats_get(&s, ST));
    assert_int_equal(s.events, 7);
    assert_int_equal(s.streams, 4);
}

static void test_limits_at_the_edge(void **state)
{
    uint8_t key[ES_MAX_KEY];
    char type[ES_MAX_TYPE + 1];
    for (int i = 0; i < ES_MAX_KEY; i++)
        key[i] = (uint8_t)i;
    memset(type, 'T', ES_MAX_TYPE);
    type[ES_MAX_TYPE] = 0;
    es_event_new ev = {.type = type};
    TU_EXPECT_OK(es_append(NULL, ST, key, sizeof key, ES_EXPECT_ANY, &ev, 1));
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, ST, key, sizeof key));
    assert_int_equal(h, 1);
    /* a 1 MiB payload round-trips */
    size_t n = 1 << 20;
    uint8_t *big = malloc(n);
    for (size_t i = 0; i < n; i++)
        big[i] = (uint8_t)(i * 7);
    es_event_new bev = {.type = "Big", .data = big, .data_len = n};
    TU_EXPECT_OK(es_append(NULL, ST, "big", 3, ES_EXPECT_ANY, &bev, 1));
    es_cursor *c;
    const es_event *e;
    TU_EXPECT_OK(es_stream_cursor(&c, ST, "big", 3, NULL));
    TU_EXPECT_OK(es_cursor_next(&e, c));
    assert_int_equal(e->data_len, n);
    assert_memory_equal(e->data, big, n);
    es_cursor_free(c);
    free(big);
}

static void test_invalid_arguments_change_nothing(void **state)
{
    es_append_result r;
    es_event_new ok = {.type = "T", .data = "x", .data_len = 1};
    uint8_t key[ES_MAX_KEY + 1];
    memset(key, 'k', sizeof key);
    char type[ES_MAX_TYPE + 2];
    memset(type, 't', sizeof type - 1);
    type[sizeof type - 1] = 0;
    static uint8_t big[ES_MAX_DATA + 1];

    TU_EXPECT_OK(tu_append1(ST, "s", ES_EXPECT_ANY, "T", "first", NULL));

    assert_int_equal(es_append(&r, NULL, "s", 1, ES_EXPECT_ANY, &ok, 1), ES_EINVAL);
    assert_true(strlen(es_error_last()) > 0);
    assert_int_equal(es_error_last_code(), ES_EINVAL);
    assert_int_equal(es_append(&r, ST, NULL, 1, ES_EXPECT_ANY, &ok, 1), ES_EINVAL);
    assert_int_equal(es_append(&r, ST, "s", 0, ES_EXPECT_ANY, &ok, 1), ES_EINVAL);
    assert_int_equal(es_append(&r, ST, key, sizeof key, ES_EXPECT_ANY, &ok, 1), ES_ETOOBIG);
    assert_non_null(strstr(es_error_last(), "256"));
    assert_int_equal(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, NULL, 1), ES_EINVAL);
    assert_int_equal(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, &ok, 0), ES_EINVAL);
    assert_int_equal(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, &ok, ES_MAX_BATCH + 1), ES_ETOOBIG);
    es_event_new bad = ok;
    bad.type = NULL;
    assert_int_equal(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, &bad, 1), ES_EINVAL);
    bad.type = "";
    assert_int_equal(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, &bad, 1), ES_EINVAL);
    bad.type = type;
    assert_int_equal(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, &bad, 1), ES_ETOOBIG);
    bad = ok;
    bad.data = NULL;
    assert_int_equal(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, &bad, 1), ES_EINVAL);
    bad = ok;
    bad.meta_len = 3;
    assert_int_equal(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, &bad, 1), ES_EINVAL);
    bad = ok;
    bad.data = big;
    bad.data_len = sizeof big;
    assert_int_equal(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, &bad, 1), ES_ETOOBIG);
    bad = ok;
    bad.meta = big;
    bad.meta_len = ES_MAX_META + 1;
    assert_int_equal(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, &bad, 1), ES_ETOOBIG);
    /* the batch's total is limited too: 5 × 16 MiB */
    es_event_new many[5];
    for (int i = 0; i < 5; i++)
        many[i] = (es_event_new){.type = "T", .data = big, .data_len = ES_MAX_DATA};
    assert_int_equal(es_append(&r, ST, "s", 1, ES_EXPECT_ANY, many, 5), ES_ETOOBIG);
    assert_int_equal(es_append(&r, ST, "s", 1, ES_SEQ_MAX, &ok, 1), ES_EINVAL);
    assert_int_equal(es_append_ex(&r, ST, "s", 1, ES_EXPECT_ANY, &ok, 1, 0x80), ES_EINVAL);
    assert_int_equal(es_append_ex(&r, ST, "s", 1, ES_EXPECT_ANY, &ok, 1, ES_APPEND_KEEP_TIME),
                     ES_EINVAL);

    uint64_t h;
    assert_int_equal(es_stream_head(NULL, ST, "s", 1), ES_EINVAL);
    assert_int_equal(es_stream_head(&h, ST, key, sizeof key), ES_ETOOBIG);
    assert_int_equal(es_stream_head(&h, NULL, "s", 1), ES_EINVAL);
    es_cursor *c = (es_cursor *)1;
    assert_int_equal(es_stream_cursor(&c, ST, "", 0, NULL), ES_EINVAL);
    assert_null(c);
    es_read_options ro = ES_READ_OPTIONS_INIT;
    ro.version = 99;
    assert_int_equal(es_stream_cursor(&c, ST, "s", 1, &ro), ES_EINVAL);
    ro = (es_read_options)ES_READ_OPTIONS_INIT;
    ro.backward = 5;
    assert_int_equal(es_stream_cursor(&c, ST, "s", 1, &ro), ES_EINVAL);
    es_log_options lo = ES_LOG_OPTIONS_INIT;
    lo.prefix_len = 3;
    assert_int_equal(es_log_cursor(&c, ST, &lo), ES_EINVAL);
    lo = (es_log_options)ES_LOG_OPTIONS_INIT;
    lo.type = "";
    assert_int_equal(es_log_cursor(&c, ST, &lo), ES_EINVAL);
    assert_int_equal(es_log_cursor(NULL, ST, NULL), ES_EINVAL);
    const es_event *ev;
    assert_int_equal(es_cursor_next(&ev, NULL), ES_EINVAL);
    assert_int_equal(es_streams(ST, NULL, 0, NULL, NULL), ES_EINVAL);
    assert_int_equal(es_store_stats_get(NULL, ST), ES_EINVAL);
    es_cursor_free(NULL);
    es_store_close(NULL);

    es_store *other = (es_store *)1;
    assert_int_equal(es_store_open(&other, "nosuch:thing", NULL), ES_ENOTSUP);
    assert_null(other);
    assert_int_equal(es_store_open(&other, "noscheme", NULL), ES_EINVAL);
    assert_int_equal(es_store_open(&other, "", NULL), ES_EINVAL);
    assert_int_equal(es_store_open(&other, NULL, NULL), ES_EINVAL);
    es_open_options oo = ES_OPEN_OPTIONS_INIT;
    oo.version = 0;
    assert_int_equal(es_store_open(&other, "mem:", &oo), ES_EINVAL);
    oo = (es_open_options)ES_OPEN_OPTIONS_INIT;
    oo.flags = 0x100;
    assert_int_equal(es_store_open(&other, "mem:", &oo), ES_EINVAL);

    /* nothing changed */
    assert_int_equal(head_of(ST, "s"), 1);
    assert_int_equal(tu_count_log(ST), 1);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, ST, NULL, 0));
    assert_true(v.ok);
}

static void test_commit_times_never_go_back(void **state)
{
    tu_store *ts = *state;
    es_append_result r1, r2;
    TU_EXPECT_OK(tu_append1(ST, "s", ES_EXPECT_ANY, "T", "1", &r1));
    ts->clock_now -= 3600LL * 1000000; /* the clock jumps back an hour */
    TU_EXPECT_OK(tu_append1(ST, "s", ES_EXPECT_ANY, "T", "2", &r2));
    assert_true(r2.time_us >= r1.time_us);
}

static void test_keep_time_for_imports(void **state)
{
    es_event_new ev = {.type = "Imported", .time_us = 1000000};
    es_append_result r;
    TU_EXPECT_OK(es_append_ex(&r, ST, "imp", 3, ES_EXPECT_ANY, &ev, 1, ES_APPEND_KEEP_TIME));
    assert_int_equal(r.time_us, 1000000);
    ev.time_us = 999999; /* going back is refused */
    assert_int_equal(es_append_ex(&r, ST, "imp", 3, ES_EXPECT_ANY, &ev, 1, ES_APPEND_KEEP_TIME),
                     ES_EINVAL);
    assert_int_equal(head_of(ST, "imp"), 1);
}

/* Importing the same file twice: the second import's appends all landed
 * before, so they are replays, answered from the original even though their
 * kept times are now before the store's latest commit (issue 7, item 4). */
static void test_keep_time_replay_is_answered_from_the_original(void **state)
{
    uint8_t ids[3][ES_ID_SIZE];
    for (int i = 0; i < 3; i++)
        memset(ids[i], 0xa0 + i, ES_ID_SIZE);
    es_event_new a[2] = {
        {.type = "A", .data = "1", .data_len = 1, .id = ids[0], .time_us = 1000000},
        {.type = "A", .data = "2", .data_len = 1, .id = ids[1], .time_us = 1000000}};
    es_event_new b = {.type = "B", .id = ids[2], .time_us = 2000000};
    es_append_result r1, r2, rb;
    TU_EXPECT_OK(es_append_ex(&r1, ST, "imp-a", 5, ES_EXPECT_NO_STREAM, a, 2, ES_APPEND_KEEP_TIME));
    TU_EXPECT_OK(
        es_append_ex(&rb, ST, "imp-b", 5, ES_EXPECT_NO_STREAM, &b, 1, ES_APPEND_KEEP_TIME));
    assert_int_equal(rb.time_us, 2000000);

    /* the whole file again: every append a replay, in the original's order */
    TU_EXPECT_OK(es_append_ex(&r2, ST, "imp-a", 5, ES_EXPECT_NO_STREAM, a, 2, ES_APPEND_KEEP_TIME));
    assert_int_equal(r2.replayed, 1);
    assert_int_equal(r2.first_seq, r1.first_seq);
    assert_int_equal(r2.last_seq, r1.last_seq);
    assert_int_equal(r2.first_position, r1.first_position);
    assert_int_equal(r2.last_position, r1.last_position);
    assert_int_equal(r2.time_us, 1000000);
    assert_int_equal(r2.head, 2);
    TU_EXPECT_OK(
        es_append_ex(&r2, ST, "imp-b", 5, ES_EXPECT_NO_STREAM, &b, 1, ES_APPEND_KEEP_TIME));
    assert_int_equal(r2.replayed, 1);
    assert_int_equal(r2.first_position, rb.first_position);
    assert_int_equal(tu_count_log(ST), 3);

    /* a new append into a replayed stream is still held to its kept time */
    uint8_t id4[ES_ID_SIZE];
    memset(id4, 0xb4, sizeof id4);
    es_event_new c = {.type = "C", .id = id4, .time_us = 1500000};
    assert_int_equal(es_append_ex(&r2, ST, "imp-b", 5, ES_EXPECT_ANY, &c, 1, ES_APPEND_KEEP_TIME),
                     ES_EINVAL);
    assert_int_equal(tu_count_log(ST), 3);
}

static void test_verify_clean_store(void **state)
{
    append_n(ST, "a", 5);
    append_n(ST, "b", 3);
    append_n(ST, "a", 2);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, ST, NULL, 0));
    assert_true(v.ok);
    assert_int_equal(v.events_checked, 10);
    assert_int_equal(v.streams_checked, 2);
    TU_EXPECT_OK(es_verify(&v, ST, "a", 1));
    assert_true(v.ok);
    assert_int_equal(v.events_checked, 7);
}

typedef struct writer_arg {
    es_store *st;
    int id;
    int n;
} writer_arg;

static void *writer(void *p)
{
    writer_arg *a = p;
    char stream[32];
    snprintf(stream, sizeof stream, "w-%d", a->id);
    for (int i = 0; i < a->n; i++) {
        char d[32];
        snprintf(d, sizeof d, "%d", i);
        es_event_new ev = {.type = "W", .data = d, .data_len = strlen(d)};
        int rc = es_append(NULL, a->st, stream, strlen(stream), (uint64_t)i, &ev, 1);
        if (rc)
            return (void *)1;
    }
    return NULL;
}

static void test_threads_share_a_store(void **state)
{
    enum { T = 4, N = 100 };
    pthread_t th[T];
    writer_arg args[T];
    for (int i = 0; i < T; i++) {
        args[i] = (writer_arg){ST, i, N};
        assert_int_equal(pthread_create(&th[i], NULL, writer, &args[i]), 0);
    }
    for (int i = 0; i < T; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
    assert_int_equal(tu_count_log(ST), T * N);
    for (int i = 0; i < T; i++) {
        char stream[32];
        snprintf(stream, sizeof stream, "w-%d", i);
        assert_int_equal(head_of(ST, stream), N);
    }
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, ST, NULL, 0));
    assert_true(v.ok);
}

static void test_multi_stream_append_is_all_or_nothing(void **state)
{
    es_event_new a = {.type = "A", .data = "a", .data_len = 1};
    es_event_new b2[2] = {{.type = "B1"}, {.type = "B2"}};
    es_append_result r[3];
    es_append_op ops[3] = {
        {"x", 1, ES_EXPECT_NO_STREAM, &a, 1},
        {"y", 1, ES_EXPECT_ANY, b2, 2},
        {"x", 1, 1, &a, 1}, /* the same stream again sees the first op's event */
    };
    TU_EXPECT_OK(es_append_multi(r, ST, ops, 3, 0));
    assert_int_equal(r[0].first_seq, 1);
    assert_int_equal(r[1].last_seq, 2);
    assert_int_equal(r[2].first_seq, 2);
    assert_int_equal(r[0].time_us, r[2].time_us); /* one commit */
    assert_true(r[1].first_position > r[0].last_position);
    assert_true(r[2].first_position > r[1].last_position);
    assert_int_equal(head_of(ST, "x"), 2);
    assert_int_equal(head_of(ST, "y"), 2);

    /* the last op conflicts: nothing of the call is written */
    es_append_op bad[2] = {{"y", 1, 2, &a, 1}, {"z", 1, 7, &a, 1}};
    assert_int_equal(es_append_multi(r, ST, bad, 2, 0), ES_ECONFLICT);
    assert_int_equal(r[0].first_seq, 0);
    assert_int_equal(r[1].head, 0);
    assert_int_equal(head_of(ST, "y"), 2);
    assert_int_equal(head_of(ST, "z"), 0);
    assert_int_equal(tu_count_log(ST), 4);

    /* a retried multi append with ids is answered from the original */
    uint8_t id1[16], id2[16];
    memset(id1, 0x31, 16);
    memset(id2, 0x32, 16);
    es_event_new e1 = {.type = "P", .id = id1}, e2 = {.type = "Q", .id = id2};
    es_append_op again[2] = {{"p", 1, ES_EXPECT_NO_STREAM, &e1, 1},
                             {"q", 1, ES_EXPECT_NO_STREAM, &e2, 1}};
    TU_EXPECT_OK(es_append_multi(r, ST, again, 2, 0));
    TU_EXPECT_OK(es_append_multi(r, ST, again, 2, 0));
    assert_int_equal(r[0].replayed, 1);
    assert_int_equal(r[1].replayed, 1);
    assert_int_equal(tu_count_log(ST), 6);
    /* one id twice across ops is refused */
    es_append_op dup[2] = {{"p2", 2, ES_EXPECT_ANY, &e1, 1}, {"q2", 2, ES_EXPECT_ANY, &e1, 1}};
    assert_int_equal(es_append_multi(r, ST, dup, 2, 0), ES_EINVAL);
    assert_int_equal(es_append_multi(NULL, ST, ops, 1, 0), ES_EINVAL);
    assert_int_equal(es_append_multi(r, ST, NULL, 1, 0), ES_EINVAL);
    assert_int_equal(es_append_multi(r, ST, ops, 0, 0), ES_EINVAL);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, ST, NULL, 0));
    assert_true(v.ok);
}

/* A commit of many requests (more than a postgres pipeline chunk): streams
 * repeated across it, a conflict deep inside that leaves nothing, then the
 * whole call again with the same ids answered from the original. */
static void test_large_multi_append(void **state)
{
    enum { OPS = 700, STREAMS = 90 };
    static es_append_op ops[OPS];
    static es_event_new evs[OPS];
    static es_append_result r[OPS];
    static uint8_t ids[OPS][16];
    static char keys[OPS][16], data[OPS][16];
    uint64_t seen[STREAMS] = {0};
    for (int i = 0; i < OPS; i++) {
        int st = (i * 7) % STREAMS;
        snprintf(keys[i], sizeof keys[i], "m-%02d", st);
        snprintf(data[i], sizeof data[i], "%d", i);
        for (int b = 0; b < 16; b++)
            ids[i][b] = (uint8_t)(i >> (b % 2 ? 8 : 0)) ^ (uint8_t)(b * 29);
        evs[i] = (es_event_new){
            .type = "Many", .data = data[i], .data_len = strlen(data[i]), .id = ids[i]};
        /* exact expectations: the stream's seq before this op */
        ops[i] = (es_append_op){keys[i], strlen(keys[i]), seen[st], &evs[i], 1};
        seen[st]++;
    }
    /* op 555 expects a seq its stream will not be at */
    uint64_t keep = ops[555].expected;
    ops[555].expected = keep + 3;
    assert_int_equal(es_append_multi(r, ST, ops, OPS, 0), ES_ECONFLICT);
    /* the head the op met: its stream as the commit's earlier ops left it */
    assert_int_equal(r[555].head, keep);
    assert_int_equal(head_of(ST, keys[0]), 0);
    assert_int_equal(head_of(ST, keys[554]), 0);
    ops[555].expected = keep;
    TU_EXPECT_OK(es_append_multi(r, ST, ops, OPS, 0));
    uint64_t prev_pos = 0;
    for (int i = 0; i < OPS; i++) {
        assert_int_equal(r[i].first_seq, ops[i].expected + 1);
        assert_true(r[i].first_position > prev_pos);
        assert_int_equal(r[i].time_us, r[0].time_us);
        assert_int_equal(r[i].replayed, 0);
        prev_pos = r[i].first_position;
    }
    for (int st = 0; st < STREAMS; st++) {
        char k[16];
        snprintf(k, sizeof k, "m-%02d", st);
        assert_int_equal(head_of(ST, k), seen[st]);
    }
    es_append_result again[OPS];
    TU_EXPECT_OK(es_append_multi(again, ST, ops, OPS, 0));
    for (int i = 0; i < OPS; i++) {
        assert_int_equal(again[i].replayed, 1);
        assert_int_equal(again[i].first_position, r[i].first_position);
    }
    assert_int_equal(tu_count_log(ST), OPS);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, ST, NULL, 0));
    assert_true(v.ok);
    assert_int_equal(v.events_checked, OPS);
}

static void test_reopen_keeps_everything(void **state)
{
    tu_store *ts = *state;
    if (strcmp(tu_backend, "mem") == 0)
        skip(); /* mem: is gone at close by design */
    append_n(ST, "a", 3);
    append_n(ST, "b", 2);
    tu_reopen(ts);
    assert_int_equal(head_of(ST, "a"), 3);
    assert_int_equal(head_of(ST, "b"), 2);
    assert_int_equal(tu_count_log(ST), 5);
    uint64_t before;
    TU_EXPECT_OK(es_store_last_position(&before, ST));
    es_append_result r;
    TU_EXPECT_OK(tu_append1(ST, "a", 3, "T", "4", &r));
    assert_true(r.last_position > before);
    assert_int_equal(r.first_seq, 4);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, ST, NULL, 0));
    assert_true(v.ok);
}

int main(int argc, char **argv)
{
    int rc = tu_init(argc, argv, "conformance");
    if (rc)
        return rc;
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_empty_store),
        T(test_append_and_read_back_every_field),
        T(test_expect_any),
        T(test_expect_no_stream),
        T(test_expect_exists),
        T(test_expect_exact_seq),
        T(test_failed_batch_leaves_nothing),
        T(test_big_batch_is_atomic_and_contiguous),
        T(test_idempotent_retry),
        T(test_read_ranges),
        T(test_cursor_sees_later_appends_or_ends_cleanly),
        T(test_global_log_order_and_filters),
        T(test_streams_listing_and_stats),
        T(test_limits_at_the_edge),
        T(test_invalid_arguments_change_nothing),
        T(test_commit_times_never_go_back),
        T(test_keep_time_for_imports),
        T(test_keep_time_replay_is_answered_from_the_original),
        T(test_verify_clean_store),
        T(test_threads_share_a_store),
        T(test_multi_stream_append_is_all_or_nothing),
        T(test_large_multi_append),
        T(test_reopen_keeps_everything),
    };
    char name[64];
    snprintf(name, sizeof name, "conformance/%s", tu_backend);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
