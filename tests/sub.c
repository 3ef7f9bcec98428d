/*
 * sub.c — subscriptions: create/list/info/delete, catch-up then live with
 * no gap and no duplicate, filters, checkpoints across reopen, reset by
 * position and by time, one owner at a time with lease takeover, push
 * delivery, and bad input.  Run per backend.
 */
#include "internal.h" /* the kv table, to plant damaged records */
#include "testutil.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void append_n(es_store *st, const char *stream, const char *type, int n)
{
    for (int i = 0; i < n; i++)
        TU_EXPECT_OK(tu_append1(st, stream, ES_EXPECT_ANY, type, "x", NULL));
}

/* Every position of the log (after catch-up), for comparison. */
static size_t log_positions(es_store *st, uint64_t *out, size_t cap, const char *prefix,
                            const char *type)
{
    es_cursor *c;
    const es_event *ev;
    es_log_options o = ES_LOG_OPTIONS_INIT;
    size_t n = 0;
    TU_EXPECT_OK(es_log_catch_up(st, 60000));
    o.prefix = prefix;
    o.prefix_len = prefix ? strlen(prefix) : 0;
    o.type = type;
    TU_EXPECT_OK(es_log_cursor(&c, st, &o));
    while (es_cursor_next(&ev, c) == 0) {
        assert_true(n < cap);
        out[n++] = ev->position;
    }
    es_cursor_free(c);
    return n;
}

/* Take every batch until a timeout; positions into out; ack each batch. */
static size_t drain(es_sub *s, uint64_t *out, size_t cap, bool ack)
{
    const es_event *const *evs;
    size_t n, total = 0;
    int rc;
    while ((rc = es_sub_next(&evs, &n, s, 50)) == 0) {
        assert_true(n >= 1);
        for (size_t i = 0; i < n; i++) {
            assert_true(total < cap);
            out[total++] = evs[i]->position;
        }
        if (ack)
            TU_EXPECT_OK(es_sub_ack(s, evs[n - 1]->position));
    }
    assert_int_equal(rc, ES_ETIMEDOUT);
    return total;
}

static void test_create_list_info_delete(void **state)
{
    (void)state;
    tu_store ts;
    es_sub_info info;
    tu_open(&ts);
    append_n(ts.st, "a/1", "T", 3);
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    TU_EXPECT_OK(es_sub_create(ts.st, "search-index", NULL));
    TU_EXPECT_OK(es_sub_create(ts.st, "replica.1", NULL));
    assert_int_equal(es_sub_create(ts.st, "search-index", NULL), ES_ECONFLICT);
    assert_non_null(strstr(es_error_last(), "search-index"));
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "search-index"));
    assert_string_equal(info.name, "search-index");
    assert_int_equal(info.checkpoint, 0);
    assert_int_equal(info.behind, 3);
    assert_true(info.behind_us >= 0);
    assert_int_equal(info.state, ES_SUB_IDLE);
    assert_int_equal(es_sub_info_get(&info, ts.st, "nope"), ES_ENOTFOUND);
    assert_non_null(strstr(es_error_last(), "nope"));
    TU_EXPECT_OK(es_sub_delete(ts.st, "replica.1"));
    assert_int_equal(es_sub_delete(ts.st, "replica.1"), ES_ENOTFOUND);
    /* the name is free again */
    TU_EXPECT_OK(es_sub_create(ts.st, "replica.1", NULL));
    /* bad names and options */
    assert_int_equal(es_sub_create(ts.st, "", NULL), ES_EINVAL);
    assert_int_equal(es_sub_create(ts.st, "has space", NULL), ES_EINVAL);
    assert_int_equal(es_sub_create(ts.st, "a/b", NULL), ES_EINVAL);
    assert_int_equal(es_sub_create(ts.st, NULL, NULL), ES_EINVAL);
    char longname[80];
    memset(longname, 'x', sizeof longname - 1);
    longname[sizeof longname - 1] = 0;
    assert_int_equal(es_sub_create(ts.st, longname, NULL), ES_EINVAL);
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.start = ES_SUB_FROM_POSITION; /* position 0 */
    assert_int_equal(es_sub_create(ts.st, "bad", &o), ES_EINVAL);
    o = (es_sub_options)ES_SUB_OPTIONS_INIT;
    o.start = (es_sub_start)9;
    assert_int_equal(es_sub_create(ts.st, "bad", &o), ES_EINVAL);
    o = (es_sub_options)ES_SUB_OPTIONS_INIT;
    o.n_types = 1; /* no array */
    assert_int_equal(es_sub_create(ts.st, "bad", &o), ES_EINVAL);
    o = (es_sub_options)ES_SUB_OPTIONS_INIT;
    o.batch_size = ES_MAX_BATCH + 1;
    assert_int_equal(es_sub_create(ts.st, "bad", &o), ES_EINVAL);
    o.version = 99;
    assert_int_equal(es_sub_create(ts.st, "bad", &o), ES_EINVAL);
    assert_int_equal(es_sub_info_get(&info, ts.st, "bad"), ES_ENOTFOUND);
    tu_close(&ts);
}

typedef struct lister {
    int n;
    char names[4][ES_MAX_SUB_NAME + 1];
} lister;

static int list_fn(const es_sub_info *info, void *payload)
{
    lister *l = payload;
    if (l->n < 4)
        strcpy(l->names[l->n], info->name);
    l->n++;
    return 0;
}

static int list_stop(const es_sub_info *info, void *payload)
{
    (void)info, (void)payload;
    return -1;
}

static void test_list_in_name_order(void **state)
{
    (void)state;
    tu_store ts;
    lister l = {0};
    tu_open(&ts);
    TU_EXPECT_OK(es_sub_list(ts.st, list_fn, &l));
    assert_int_equal(l.n, 0);
    TU_EXPECT_OK(es_sub_create(ts.st, "b", NULL));
    TU_EXPECT_OK(es_sub_create(ts.st, "a", NULL));
    TU_EXPECT_OK(es_sub_create(ts.st, "c", NULL));
    TU_EXPECT_OK(es_sub_delete(ts.st, "c"));
    TU_EXPECT_OK(es_sub_list(ts.st, list_fn, &l));
    assert_int_equal(l.n, 2);
    assert_string_equal(l.names[0], "a");
    assert_string_equal(l.names[1], "b");
    assert_int_equal(es_sub_list(ts.st, list_stop, NULL), ES_EUSER);
    tu_close(&ts);
}

typedef struct writer {
    es_store *st;
    int n;
    int delay_ms;
} writer;

static void *write_later(void *arg)
{
    writer *w = arg;
    sleep_ms(w->delay_ms);
    for (int i = 0; i < w->n; i++)
        if (tu_append1(w->st, "live/1", ES_EXPECT_ANY, "T", "x", NULL) != 0)
            return (void *)1;
    return NULL;
}

static void test_catch_up_then_live_no_gap_no_duplicate(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *s;
    static uint64_t want[2000], got[2000];
    tu_open(&ts);
    append_n(ts.st, "old/1", "T", 250);
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.batch_size = 100;
    TU_EXPECT_OK(es_sub_create(ts.st, "s", &o));
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "s", NULL));
    const es_event *const *evs;
    size_t n;
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000));
    assert_int_equal(n, 100); /* batches of batch_size */
    TU_EXPECT_OK(es_sub_ack(s, evs[n - 1]->position));
    size_t got_n = 0;
    for (size_t i = 0; i < n; i++)
        got[got_n++] = evs[i]->position;
    /* writers append while the consumer catches up and then waits live */
    writer w = {ts.st, 300, 30};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, write_later, &w), 0);
    for (;;) {
        int rc = es_sub_next(&evs, &n, s, 30000); /* only a failure waits this long */
        if (rc == ES_ETIMEDOUT)
            break;
        TU_EXPECT_OK(rc);
        for (size_t i = 0; i < n; i++) {
            assert_true(got_n < 2000);
            got[got_n++] = evs[i]->position;
        }
        TU_EXPECT_OK(es_sub_ack(s, evs[n - 1]->position));
        if (got_n == 550)
            break;
    }
    void *wr;
    pthread_join(th, &wr);
    assert_null(wr);
    size_t want_n = log_positions(ts.st, want, 2000, NULL, NULL);
    assert_int_equal(want_n, 550);
    assert_int_equal(got_n, want_n);
    for (size_t i = 0; i < want_n; i++)
        assert_int_equal(got[i], want[i]);
    es_sub_info info;
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "s"));
    assert_int_equal(info.checkpoint, want[want_n - 1]);
    assert_int_equal(info.behind, 0);
    assert_int_equal(info.acked, 550);
    assert_int_equal(info.state, ES_SUB_LIVE);
    assert_true(info.last_ack_us > 0);
    es_sub_close(s);
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "s"));
    assert_int_equal(info.state, ES_SUB_IDLE);
    tu_close(&ts);
}

static void test_filters(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *s;
    static uint64_t got[600], want[600];
    tu_open(&ts);
    append_n(ts.st, "user/1", "Created", 5);
    append_n(ts.st, "group/1", "Created", 5);
    append_n(ts.st, "user/2", "Renamed", 5);
    append_n(ts.st, "other/1", "Created", 5);
    const void *prefixes[] = {"user/", "group/"};
    const size_t lens[] = {5, 6};
    const char *types[] = {"Created"};
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.prefixes = prefixes;
    o.prefix_lens = lens;
    o.n_prefixes = 2;
    o.types = types;
    o.n_types = 1;
    o.batch_size = 3;
    TU_EXPECT_OK(es_sub_create(ts.st, "f", &o));
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "f", NULL));
    size_t n = drain(s, got, 600, true);
    assert_int_equal(n, 10);
    size_t a = log_positions(ts.st, want, 600, "user/", "Created");
    size_t b = log_positions(ts.st, want + a, 600 - a, "group/", "Created");
    assert_int_equal(a + b, 10);
    /* user/1's five come before group/1's five in the log */
    for (size_t i = 0; i < 10; i++)
        assert_int_equal(got[i], want[i]);
    es_sub_info info;
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "f"));
    assert_int_equal(info.behind, 0);
    es_sub_close(s);
    /* one prefix, several types */
    const char *types2[] = {"Renamed", "Created"};
    o = (es_sub_options)ES_SUB_OPTIONS_INIT;
    o.prefixes = prefixes;
    o.prefix_lens = lens;
    o.n_prefixes = 1;
    o.types = types2;
    o.n_types = 2;
    TU_EXPECT_OK(es_sub_create(ts.st, "g", &o));
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "g", NULL));
    assert_int_equal(drain(s, got, 600, true), 10);
    es_sub_close(s);
    tu_close(&ts);
}

static void test_checkpoint_survives_reopen(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *s;
    const es_event *const *evs;
    size_t n;
    static uint64_t got[100];
    tu_open(&ts);
    append_n(ts.st, "k", "T", 30);
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.batch_size = 10;
    TU_EXPECT_OK(es_sub_create(ts.st, "cp", &o));
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "cp", NULL));
    TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000));
    assert_int_equal(n, 10);
    uint64_t acked = evs[6]->position;
    TU_EXPECT_OK(es_sub_ack(s, acked)); /* part of the batch */
    /* acks are checked */
    assert_int_equal(es_sub_ack(s, evs[9]->position + 1000000), ES_EINVAL);
    assert_int_equal(es_sub_ack(s, acked - 1), ES_EINVAL);
    TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000)); /* delivered, never acked */
    es_sub_close(s);
    if (strcmp(tu_backend, "mem") != 0)
        tu_reopen(&ts); /* mem forgets at close: there the subscription alone is reopened */
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "cp", NULL));
    size_t k = drain(s, got, 100, false);
    assert_int_equal(k, 23); /* 30 minus the 7 acknowledged: unacked ones come again */
    assert_int_equal(got[0] > acked, 1);
    es_sub_close(s);
    es_sub_info info;
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "cp"));
    assert_int_equal(info.checkpoint, acked);
    assert_int_equal(info.behind, 23);
    tu_close(&ts);
}

static void test_checkpoint_policy(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *s;
    const es_event *const *evs;
    size_t n;
    tu_open(&ts);
    append_n(ts.st, "k", "T", 10);
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.batch_size = 1;
    TU_EXPECT_OK(es_sub_create(ts.st, "p", &o));
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    es_sub_open_options oo = ES_SUB_OPEN_OPTIONS_INIT;
    oo.checkpoint_every = 4;
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "p", &oo));
    es_sub_info info;
    uint64_t pos[10];
    for (int i = 0; i < 6; i++) {
        TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000));
        pos[i] = evs[0]->position;
        TU_EXPECT_OK(es_sub_ack(s, pos[i]));
    }
    /* persisted after the 4th acknowledgement only */
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "p"));
    assert_int_equal(info.checkpoint, pos[3]);
    TU_EXPECT_OK(es_sub_commit(s));
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "p"));
    assert_int_equal(info.checkpoint, pos[5]);
    TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000));
    uint64_t last = evs[0]->position;
    TU_EXPECT_OK(es_sub_ack(s, last));
    es_sub_close(s); /* the final checkpoint */
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "p"));
    assert_int_equal(info.checkpoint, last);
    assert_int_equal(info.acked, 7);
    assert_int_equal(info.behind, 3);
    tu_close(&ts);
}

static void test_starts_and_resets(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *s;
    const es_event *const *evs;
    size_t n;
    static uint64_t all[100], got[100];
    tu_open(&ts);
    append_n(ts.st, "k", "T", 20);
    size_t na = log_positions(ts.st, all, 100, NULL, NULL);
    assert_int_equal(na, 20);
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.start = ES_SUB_FROM_END;
    TU_EXPECT_OK(es_sub_create(ts.st, "end", &o));
    o.start = ES_SUB_FROM_POSITION;
    o.start_position = all[12];
    TU_EXPECT_OK(es_sub_create(ts.st, "pos", &o));
    /* the time of the 16th event */
    es_cursor *c;
    const es_event *ev;
    es_log_options lo = ES_LOG_OPTIONS_INIT;
    lo.from_position = all[15];
    TU_EXPECT_OK(es_log_cursor(&c, ts.st, &lo));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    int64_t t15 = ev->time_us;
    es_cursor_free(c);
    o.start = ES_SUB_FROM_TIME;
    o.start_time_us = t15;
    TU_EXPECT_OK(es_sub_create(ts.st, "time", &o));

    TU_EXPECT_OK(es_sub_open(&s, ts.st, "end", NULL));
    assert_int_equal(es_sub_next(&evs, &n, s, 30), ES_ETIMEDOUT);
    es_sub_close(s);
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "pos", NULL));
    assert_int_equal(drain(s, got, 100, true), 8);
    assert_int_equal(got[0], all[12]);
    es_sub_close(s);
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "time", NULL));
    assert_int_equal(drain(s, got, 100, true), 5);
    assert_int_equal(got[0], all[15]);

    /* a reset while the consumer is open: it replays from there */
    TU_EXPECT_OK(es_sub_reset(ts.st, "time", ES_SUB_FROM_POSITION, all[2], 0));
    assert_int_equal(drain(s, got, 100, true), 18);
    assert_int_equal(got[0], all[2]);
    TU_EXPECT_OK(es_sub_reset(ts.st, "time", ES_SUB_FROM_BEGINNING, 0, 0));
    assert_int_equal(drain(s, got, 100, true), 20);
    TU_EXPECT_OK(es_sub_reset(ts.st, "time", ES_SUB_FROM_TIME, 0, t15));
    assert_int_equal(drain(s, got, 100, true), 5);
    assert_int_equal(got[0], all[15]);
    es_sub_close(s);
    assert_int_equal(es_sub_reset(ts.st, "none", ES_SUB_FROM_BEGINNING, 0, 0), ES_ENOTFOUND);
    assert_int_equal(es_sub_reset(ts.st, "time", ES_SUB_FROM_POSITION, 0, 0), ES_EINVAL);
    assert_int_equal(es_sub_reset(ts.st, "time", ES_SUB_FROM_TIME, 0, -5), ES_EINVAL);
    tu_close(&ts);
}

/* A reset while the consumer holds a batch: acknowledging that batch does
 * nothing (it is void), and the next batch starts at the reset's position
 * and can be acknowledged — backwards and forwards. */
static void test_reset_voids_the_batch_in_hand(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *s;
    const es_event *const *evs;
    size_t n;
    static uint64_t all[20];
    tu_open(&ts);
    append_n(ts.st, "k", "T", 10);
    assert_int_equal(log_positions(ts.st, all, 20, NULL, NULL), 10);
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.batch_size = 5;
    TU_EXPECT_OK(es_sub_create(ts.st, "v", &o));
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "v", NULL));
    TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000));
    assert_int_equal(n, 5);
    TU_EXPECT_OK(es_sub_ack(s, all[1]));
    /* backwards, while positions 3..5 are in hand and unacknowledged */
    TU_EXPECT_OK(es_sub_reset(ts.st, "v", ES_SUB_FROM_POSITION, all[0], 0));
    TU_EXPECT_OK(es_sub_commit(s));      /* the consumer sees the reset here */
    TU_EXPECT_OK(es_sub_ack(s, all[4])); /* void: does nothing */
    es_sub_info info;
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "v"));
    assert_int_equal(info.checkpoint, all[0] - 1);
    TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000));
    assert_int_equal(n, 5);
    assert_int_equal(evs[0]->position, all[0]);
    TU_EXPECT_OK(es_sub_ack(s, all[2])); /* inside the old void range: counts now */
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "v"));
    assert_int_equal(info.checkpoint, all[2]);
    /* forwards, noticed by es_sub_next itself */
    TU_EXPECT_OK(es_sub_reset(ts.st, "v", ES_SUB_FROM_POSITION, all[8], 0));
    TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000));
    assert_int_equal(n, 2);
    assert_int_equal(evs[0]->position, all[8]);
    TU_EXPECT_OK(es_sub_ack(s, all[9]));
    es_sub_close(s);
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "v"));
    assert_int_equal(info.checkpoint, all[9]);
    assert_int_equal(info.state, ES_SUB_IDLE);
    tu_close(&ts);
}

static void test_one_owner_and_lease_takeover(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *a, *b;
    const es_event *const *evs;
    size_t n;
    tu_open(&ts);
    append_n(ts.st, "k", "T", 5);
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    TU_EXPECT_OK(es_sub_create(ts.st, "own", NULL));
    es_sub_open_options oo = ES_SUB_OPEN_OPTIONS_INIT;
    oo.lease_ms = 200;
    TU_EXPECT_OK(es_sub_open(&a, ts.st, "own", &oo));
    assert_int_equal(es_sub_open(&b, ts.st, "own", &oo), ES_ECONFLICT);
    assert_non_null(strstr(es_error_last(), "another consumer"));
    es_sub_info info;
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "own"));
    assert_int_equal(info.state, ES_SUB_CATCHING_UP);
    assert_true(info.lease_until_us > 0);
    TU_EXPECT_OK(es_sub_next(&evs, &n, a, 1000));
    /* a stalls past its lease; b takes over */
    sleep_ms(300);
    TU_EXPECT_OK(es_sub_open(&b, ts.st, "own", &oo));
    /* a's acknowledgement cannot move b's checkpoint */
    assert_int_equal(es_sub_ack(a, evs[n - 1]->position), ES_ECONFLICT);
    assert_non_null(strstr(es_error_last(), "taken over"));
    es_sub_close(a); /* must not release b's lease */
    assert_int_equal(es_sub_open(&a, ts.st, "own", &oo), ES_ECONFLICT);
    TU_EXPECT_OK(es_sub_next(&evs, &n, b, 1000));
    assert_int_equal(n, 5); /* nothing was acknowledged: all again */
    es_sub_close(b);
    TU_EXPECT_OK(es_sub_open(&a, ts.st, "own", &oo));
    es_sub_close(a);
    tu_close(&ts);
}

typedef struct pusher {
    int batches;
    size_t events;
    volatile int stop;
    int fail_at;
} pusher;

static int push_handler(const es_event *const *evs, size_t n, void *payload)
{
    pusher *p = payload;
    (void)evs;
    p->batches++;
    if (p->fail_at && p->batches == p->fail_at)
        return -1;
    p->events += n;
    if (p->events >= 25)
        p->stop = 1;
    return 0;
}

static void test_push_delivery(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *s;
    tu_open(&ts);
    append_n(ts.st, "k", "T", 25);
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.batch_size = 10;
    TU_EXPECT_OK(es_sub_create(ts.st, "push", &o));
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "push", NULL));
    pusher p = {0, 0, 0, 0};
    TU_EXPECT_OK(es_sub_run(s, push_handler, &p.stop, &p));
    assert_int_equal(p.events, 25);
    assert_int_equal(p.batches, 3);
    es_sub_close(s);
    es_sub_info info;
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "push"));
    assert_int_equal(info.behind, 0);
    tu_close(&ts);
}

/* A handler that fails on one position, always (or until told to heal). */
typedef struct poison {
    uint64_t bad;
    int healed;
    int calls_on_bad;
    size_t ok_events;
    uint64_t last_ok;
    volatile int stop;
    size_t stop_after;
} poison;

static int poison_handler(const es_event *const *evs, size_t n, void *payload)
{
    poison *p = payload;
    for (size_t i = 0; i < n; i++)
        if (evs[i]->position == p->bad && !p->healed) {
            p->calls_on_bad++;
            return es__err(ES_EIO, "cannot index event %llu: disk on fire",
                           (unsigned long long)p->bad);
        }
    for (size_t i = 0; i < n; i++) {
        /* in log order, never twice (a batch that failed is handed over
         * again from its failing event, one at a time) */
        assert_true(evs[i]->position > p->last_ok || evs[i]->position == p->bad);
        if (evs[i]->position > p->last_ok)
            p->last_ok = evs[i]->position;
        p->ok_events++;
    }
    if (p->ok_events >= p->stop_after)
        p->stop = 1;
    return 0;
}

static char parked_error[ES_MAX_SUB_ERROR + 1];

static int collect_parked(const es_sub_parked *pk, void *payload)
{
    es_sub_parked *out = payload;
    assert_int_equal(out->position, 0); /* only one */
    *out = *pk;
    snprintf(parked_error, sizeof parked_error, "%s", pk->error); /* borrowed */
    out->error = parked_error;
    return 0;
}

/* A handler that keeps failing one event: retried with backoff, parked
 * after max_attempts with its error, the subscription goes on; a retry
 * delivers it again, and once handled it is no longer parked. */
static void test_poison_event_is_parked_and_retried(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *s;
    uint64_t pos[25];
    tu_open(&ts);
    append_n(ts.st, "k", "T", 25);
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.batch_size = 10;
    o.max_attempts = 3;
    o.retry_ms = 1;
    TU_EXPECT_OK(es_sub_create(ts.st, "poison", &o));
    assert_int_equal(log_positions(ts.st, pos, 25, NULL, NULL), 25);
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "poison", NULL));
    poison p = {pos[13], 0, 0, 0, 0, 0, 24};
    TU_EXPECT_OK(es_sub_run(s, poison_handler, &p.stop, &p));
    assert_int_equal(p.ok_events, 24);
    /* three failures, each a batch with it and then it alone */
    assert_int_equal(p.calls_on_bad, 3 * 2);
    es_sub_info info;
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "poison"));
    assert_int_equal(info.parked, 1);
    assert_int_equal(info.checkpoint, pos[24]);
    assert_int_equal(info.behind, 0);
    es_sub_parked pk;
    memset(&pk, 0, sizeof pk);
    TU_EXPECT_OK(es_sub_parked_list(ts.st, "poison", collect_parked, &pk));
    assert_int_equal(pk.position, pos[13]);
    assert_int_equal(pk.attempts, 3);
    assert_int_equal(pk.retry, 0);
    assert_true(pk.parked_at_us > 0);
    assert_non_null(strstr(pk.error, "disk on fire")); /* the handler's message */
    /* retried while still broken: parked again, one more attempt */
    TU_EXPECT_OK(es_sub_parked_retry(ts.st, "poison", pos[13]));
    memset(&pk, 0, sizeof pk);
    TU_EXPECT_OK(es_sub_parked_list(ts.st, "poison", collect_parked, &pk));
    assert_int_equal(pk.retry, 1);
    const es_event *const *evs;
    size_t n;
    TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000));
    assert_int_equal(n, 1);
    assert_int_equal(evs[0]->position, pos[13]);
    TU_EXPECT_OK(es_sub_nack(s, pos[13], "still broken"));
    memset(&pk, 0, sizeof pk);
    TU_EXPECT_OK(es_sub_parked_list(ts.st, "poison", collect_parked, &pk));
    assert_int_equal(pk.attempts, 4);
    assert_string_equal(pk.error, "still broken");
    assert_int_equal(pk.retry, 0);
    /* healed, retried again: handled, and gone from the parked list */
    TU_EXPECT_OK(es_sub_parked_retry(ts.st, "poison", 0));
    p.healed = 1;
    p.stop = 0;
    p.stop_after = 25;
    p.last_ok = 0;
    TU_EXPECT_OK(es_sub_run(s, poison_handler, &p.stop, &p));
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "poison"));
    assert_int_equal(info.parked, 0);
    assert_int_equal(info.checkpoint, pos[24]);
    /* nothing else comes */
    assert_int_equal(es_sub_next(&evs, &n, s, 20), ES_ETIMEDOUT);
    assert_int_equal(es_sub_parked_retry(ts.st, "poison", pos[13]), ES_ENOTFOUND);
    assert_int_equal(es_sub_parked_drop(ts.st, "poison", 7), ES_ENOTFOUND);
    assert_int_equal(es_sub_parked_drop(ts.st, "nosuch", 0), ES_ENOTFOUND);
    assert_int_equal(es_sub_nack(s, 999999, "x"), ES_EINVAL);
    es_sub_close(s);
    tu_close(&ts);
}

/* ES_SUB_STOP: the consumer stops before the poison event, which comes
 * again at the next open; dropping it moves the checkpoint past it. */
static void test_poison_event_stops(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *s;
    uint64_t pos[6];
    const es_event *const *evs;
    size_t n;
    tu_open(&ts);
    append_n(ts.st, "k", "T", 6);
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.max_attempts = 2;
    o.retry_ms = 1;
    o.on_poison = ES_SUB_STOP;
    TU_EXPECT_OK(es_sub_create(ts.st, "stop", &o));
    assert_int_equal(log_positions(ts.st, pos, 6, NULL, NULL), 6);
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "stop", NULL));
    TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000));
    assert_int_equal(n, 6);
    TU_EXPECT_OK(es_sub_nack(s, pos[2], "bad data")); /* 1st failure: 0 and 1 acked */
    TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000));     /* after the backoff, from it */
    assert_int_equal(evs[0]->position, pos[2]);
    assert_int_equal(n, 4);
    assert_int_equal(es_sub_nack(s, pos[2], "bad data"), ES_EPOISON);
    assert_non_null(strstr(es_error_last(), "stopped"));
    assert_int_equal(es_sub_next(&evs, &n, s, 10), ES_EPOISON);
    es_sub_close(s);
    es_sub_info info;
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "stop"));
    assert_int_equal(info.checkpoint, pos[1]);
    assert_int_equal(info.parked, 1);
    assert_int_equal(info.state, ES_SUB_STOPPED);
    /* the next consumer gets it again */
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "stop", NULL));
    TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000));
    assert_int_equal(evs[0]->position, pos[2]);
    es_sub_close(s);
    /* dropped: the checkpoint moves past it, and the rest follows */
    TU_EXPECT_OK(es_sub_parked_drop(ts.st, "stop", pos[2]));
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "stop"));
    assert_int_equal(info.checkpoint, pos[2]);
    assert_int_equal(info.parked, 0);
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "stop", NULL));
    TU_EXPECT_OK(es_sub_next(&evs, &n, s, 1000));
    assert_int_equal(evs[0]->position, pos[3]);
    assert_int_equal(n, 3);
    es_sub_close(s);
    tu_close(&ts);
}

#define G_STREAMS 24
#define G_PER 10

typedef struct gstat {
    int owner[G_STREAMS]; /* member that got the stream (-1: none yet) */
    uint64_t last[G_STREAMS];
    size_t got;
} gstat;

static int stream_index(const es_event *ev)
{
    char buf[16];
    assert_true(ev->stream_len < sizeof buf);
    memcpy(buf, ev->stream, ev->stream_len);
    buf[ev->stream_len] = 0;
    return atoi(buf + 2);
}

/* Take what member m has, checking per-stream order and one owner. */
static size_t pull(gstat *g, es_sub *s, int m)
{
    const es_event *const *evs;
    size_t n, took = 0;
    while (es_sub_next(&evs, &n, s, 0) == 0) {
        for (size_t i = 0; i < n; i++) {
            int k = stream_index(evs[i]);
            assert_true(g->owner[k] == -1 || g->owner[k] == m);
            g->owner[k] = m;
            assert_true(evs[i]->seq == g->last[k] + 1); /* per-stream order, no gap */
            g->last[k] = evs[i]->seq;
            g->got++;
            took++;
        }
        TU_EXPECT_OK(es_sub_ack(s, evs[n - 1]->position));
    }
    return took;
}

static int count_owned(const es_sub_partition_info *pi, void *payload)
{
    int *counts = payload;
    if (strcmp(pi->owner, "m0") == 0)
        counts[0]++;
    else if (strcmp(pi->owner, "m1") == 0)
        counts[1]++;
    else if (strcmp(pi->owner, "m2") == 0)
        counts[2]++;
    else
        counts[3]++;
    return 0;
}

/* Three members of a group split the partitions: each stream goes to
 * exactly one member, in order; a member that joins late gets its share as
 * the others hand partitions over; the group shows in info and partitions. */
static void test_group_split(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *m[3];
    gstat g;
    tu_open(&ts);
    for (int i = 0; i < G_PER; i++)
        for (int k = 0; k < G_STREAMS; k++) {
            char name[16];
            snprintf(name, sizeof name, "s-%d", k);
            TU_EXPECT_OK(tu_append1(ts.st, name, ES_EXPECT_ANY, "T", "x", NULL));
        }
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.partitions = 6;
    o.batch_size = 7;
    TU_EXPECT_OK(es_sub_create(ts.st, "grp", &o));
    memset(&g, 0, sizeof g);
    for (int k = 0; k < G_STREAMS; k++)
        g.owner[k] = -1;
    es_sub_open_options oo = ES_SUB_OPEN_OPTIONS_INIT;
    oo.group = "indexers";
    oo.member = "m0";
    TU_EXPECT_OK(es_sub_open(&m[0], ts.st, "grp", &oo));
    oo.member = "m1";
    TU_EXPECT_OK(es_sub_open(&m[1], ts.st, "grp", &oo));
    /* m0 took every partition when alone; it hands m1's share over at its
     * next batch, and m1 takes it at its own */
    size_t first = pull(&g, m[0], 0);
    (void)first;
    oo.member = "m2";
    TU_EXPECT_OK(es_sub_open(&m[2], ts.st, "grp", &oo));
    for (int round = 0; round < 6; round++)
        for (int i = 0; i < 3; i++)
            pull(&g, m[i], i);
    assert_int_equal(g.got, G_STREAMS * G_PER);
    for (int k = 0; k < G_STREAMS; k++)
        assert_int_equal(g.last[k], G_PER);
    int counts[4] = {0, 0, 0, 0};
    TU_EXPECT_OK(es_sub_partitions(ts.st, "grp", count_owned, counts));
    assert_int_equal(counts[0], 2);
    assert_int_equal(counts[1], 2);
    assert_int_equal(counts[2], 2);
    es_sub_info info;
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "grp"));
    assert_int_equal(info.partitions, 6);
    assert_int_equal(info.members, 3);
    assert_string_equal(info.group, "indexers");
    assert_int_equal(info.behind, 0);
    assert_int_equal(info.state, ES_SUB_LIVE);
    /* one group per subscription; the one consumer cannot join it */
    es_sub *x;
    oo.group = "other";
    assert_int_equal(es_sub_open(&x, ts.st, "grp", &oo), ES_ECONFLICT);
    assert_non_null(strstr(es_error_last(), "group 'indexers'"));
    assert_int_equal(es_sub_open(&x, ts.st, "grp", NULL), ES_ECONFLICT);
    oo.group = "bad name";
    assert_int_equal(es_sub_open(&x, ts.st, "grp", &oo), ES_EINVAL);
    oo.group = "indexers";
    oo.member = "bell\x07";
    assert_int_equal(es_sub_open(&x, ts.st, "grp", &oo), ES_EINVAL);
    /* members leave: the last one standing ends up with every partition */
    es_sub_close(m[0]);
    es_sub_close(m[1]);
    pull(&g, m[2], 2);
    memset(counts, 0, sizeof counts);
    TU_EXPECT_OK(es_sub_partitions(ts.st, "grp", count_owned, counts));
    assert_int_equal(counts[2], 6);
    es_sub_close(m[2]);
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "grp"));
    assert_int_equal(info.members, 0);
    assert_int_equal(info.state, ES_SUB_IDLE);
    tu_close(&ts);
}

/* A member that stops renewing its lease is dropped; another takes its
 * partitions over from their checkpoints: what it acknowledged is not
 * delivered again, what it did not is. */
static void test_group_takeover(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *a, *b;
    const es_event *const *evs;
    size_t n;
    tu_open(&ts);
    for (int k = 0; k < 8; k++) {
        char name[16];
        snprintf(name, sizeof name, "s-%d", k);
        for (int i = 0; i < 3; i++)
            TU_EXPECT_OK(tu_append1(ts.st, name, ES_EXPECT_ANY, "T", "x", NULL));
    }
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.partitions = 4;
    o.batch_size = 100;
    TU_EXPECT_OK(es_sub_create(ts.st, "tk", &o));
    es_sub_open_options oo = ES_SUB_OPEN_OPTIONS_INIT;
    oo.group = "g";
    oo.lease_ms = 300;
    oo.member = "a";
    TU_EXPECT_OK(es_sub_open(&a, ts.st, "tk", &oo));
    /* a alone: all 24; it acknowledges the first 10 and then hangs */
    TU_EXPECT_OK(es_sub_next(&evs, &n, a, 1000));
    assert_int_equal(n, 24);
    uint64_t acked_upto = evs[9]->position;
    TU_EXPECT_OK(es_sub_ack(a, acked_upto));
    oo.member = "b";
    TU_EXPECT_OK(es_sub_open(&b, ts.st, "tk", &oo));
    /* b gets nothing while a holds every partition... */
    assert_int_equal(es_sub_next(&evs, &n, b, 50), ES_ETIMEDOUT);
    /* ...and everything once a's lease ran out: the 14 a did not acknowledge */
    size_t got = 0;
    uint64_t lowest = UINT64_MAX;
    for (int i = 0; i < 40 && got < 14; i++) {
        int rc = es_sub_next(&evs, &n, b, 100);
        if (rc == ES_ETIMEDOUT)
            continue;
        TU_EXPECT_OK(rc);
        for (size_t j = 0; j < n; j++)
            if (evs[j]->position < lowest)
                lowest = evs[j]->position;
        got += n;
        TU_EXPECT_OK(es_sub_ack(b, evs[n - 1]->position));
    }
    assert_int_equal(got, 14);
    assert_true(lowest > acked_upto);
    /* a cannot move a checkpoint any more */
    assert_int_equal(es_sub_commit(a), ES_ECONFLICT);
    assert_non_null(strstr(es_error_last(), "taken over"));
    es_sub_close(a);
    es_sub_info info;
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "tk"));
    assert_int_equal(info.members, 1);
    assert_int_equal(info.behind, 0);
    es_sub_close(b);
    tu_close(&ts);
}

static void test_delete_while_open(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *s;
    const es_event *const *evs;
    size_t n;
    tu_open(&ts);
    append_n(ts.st, "k", "T", 2);
    TU_EXPECT_OK(es_sub_create(ts.st, "d", NULL));
    TU_EXPECT_OK(es_sub_open(&s, ts.st, "d", NULL));
    TU_EXPECT_OK(es_sub_delete(ts.st, "d"));
    assert_int_equal(es_sub_next(&evs, &n, s, 10), ES_ENOTFOUND);
    es_sub_close(s);
    assert_int_equal(es_sub_open(&s, ts.st, "d", NULL), ES_ENOTFOUND);
    assert_int_equal(es_sub_next(NULL, &n, NULL, 0), ES_EINVAL);
    assert_int_equal(es_sub_ack(NULL, 1), ES_EINVAL);
    es_sub_close(NULL);
    tu_close(&ts);
}

/* Hostile input: damaged records in the store, options over the limits,
 * names with control characters.  Each is an error code and changes
 * nothing else. */
static void test_hostile_input_changes_nothing(void **state)
{
    (void)state;
    tu_store ts;
    es_sub *s;
    es_sub_info info;
    tu_open(&ts);
    append_n(ts.st, "k", "T", 4);
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    TU_EXPECT_OK(es_sub_create(ts.st, "good", NULL));
    TU_EXPECT_OK(es_sub_create(ts.st, "bad", NULL));
    es_store_stats before, after;
    TU_EXPECT_OK(es_store_stats_get(&before, ts.st));

    /* its record cut inside the state, then a sound state before a
     * definition that is not one */
    es_buf b = ES_BUF_INIT;
    uint64_t ver, nv;
    es_store *st = ts.st;
    const uint8_t *key = (const uint8_t *)"sub/bad";
    TU_EXPECT_OK(st->ops->kv_get(st->be, key, 7, &b, &ver));
    assert_true(ver > 0 && b.len > 60);
    TU_EXPECT_OK(st->ops->kv_cas(st->be, key, 7, ver, b.data, 8, &nv));
    assert_int_equal(es_sub_info_get(&info, ts.st, "bad"), ES_ECORRUPT);
    assert_int_equal(es_sub_open(&s, ts.st, "bad", NULL), ES_ECORRUPT);
    assert_int_equal(es_sub_reset(ts.st, "bad", ES_SUB_FROM_BEGINNING, 0, 0), ES_ECORRUPT);
    static const uint8_t junk[] = {0x53, 0x55, 0x42, 0x31, 9, 9, 9};
    b.len = 60; /* the state: magic, checkpoint, … lease (60 bytes) */
    TU_EXPECT_OK(es_buf_put(&b, junk, sizeof junk));
    TU_EXPECT_OK(st->ops->kv_cas(st->be, key, 7, nv, b.data, b.len, &nv));
    assert_int_equal(es_sub_info_get(&info, ts.st, "bad"), ES_ECORRUPT);
    assert_int_equal(es_sub_open(&s, ts.st, "bad", NULL), ES_ECORRUPT);
    assert_int_equal(es_sub_list(ts.st, list_fn, &(lister){0}), ES_ECORRUPT);
    /* a damaged subscription can still be deleted */
    TU_EXPECT_OK(es_sub_delete(ts.st, "bad"));
    TU_EXPECT_OK(st->ops->kv_get(st->be, key, 7, &b, &ver));
    assert_int_equal(ver, 0);
    es_buf_free(&b);
    /* a record under a key that is no name of ours is not listed */
    TU_EXPECT_OK(
        st->ops->kv_cas(st->be, (const uint8_t *)"sub/\x1b", 5, 0, junk, sizeof junk, &nv));
    /* the other subscription and the events are as they were */
    TU_EXPECT_OK(es_sub_info_get(&info, ts.st, "good"));
    assert_int_equal(info.behind, 4);
    TU_EXPECT_OK(es_store_stats_get(&after, ts.st));
    assert_int_equal(after.events, before.events);
    assert_int_equal(after.last_position, before.last_position);

    /* options over the limits create nothing */
    const void *prefixes[ES_MAX_SUB_FILTERS + 1];
    size_t lens[ES_MAX_SUB_FILTERS + 1];
    static uint8_t long_prefix[ES_MAX_KEY + 1];
    for (int i = 0; i <= ES_MAX_SUB_FILTERS; i++) {
        prefixes[i] = "p";
        lens[i] = 1;
    }
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    o.prefixes = prefixes;
    o.prefix_lens = lens;
    o.n_prefixes = ES_MAX_SUB_FILTERS + 1;
    assert_int_equal(es_sub_create(ts.st, "over", &o), ES_ETOOBIG);
    o.n_prefixes = 1;
    prefixes[0] = long_prefix;
    lens[0] = sizeof long_prefix;
    assert_int_equal(es_sub_create(ts.st, "over", &o), ES_EINVAL);
    lens[0] = 0;
    assert_int_equal(es_sub_create(ts.st, "over", &o), ES_EINVAL);
    const char *types[] = {""};
    o = (es_sub_options)ES_SUB_OPTIONS_INIT;
    o.types = types;
    o.n_types = 1;
    assert_int_equal(es_sub_create(ts.st, "over", &o), ES_EINVAL);
    assert_int_equal(es_sub_info_get(&info, ts.st, "over"), ES_ENOTFOUND);

    /* a name with an escape sequence is refused without echoing it */
    assert_int_equal(es_sub_create(ts.st, "a\x1b[2Jb", NULL), ES_EINVAL);
    assert_null(strchr(es_error_last(), 0x1b));
    assert_non_null(strstr(es_error_last(), "0x1b"));
    lister l = {0};
    TU_EXPECT_OK(es_sub_list(ts.st, list_fn, &l));
    assert_int_equal(l.n, 1); /* "good" only */
    tu_close(&ts);
}

int main(int argc, char **argv)
{
    int rc = tu_init(argc, argv, "sub");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_list_info_delete),
        cmocka_unit_test(test_list_in_name_order),
        cmocka_unit_test(test_catch_up_then_live_no_gap_no_duplicate),
        cmocka_unit_test(test_filters),
        cmocka_unit_test(test_checkpoint_survives_reopen),
        cmocka_unit_test(test_checkpoint_policy),
        cmocka_unit_test(test_starts_and_resets),
        cmocka_unit_test(test_reset_voids_the_batch_in_hand),
        cmocka_unit_test(test_one_owner_and_lease_takeover),
        cmocka_unit_test(test_push_delivery),
        cmocka_unit_test(test_poison_event_is_parked_and_retried),
        cmocka_unit_test(test_poison_event_stops),
        cmocka_unit_test(test_group_split),
        cmocka_unit_test(test_group_takeover),
        cmocka_unit_test(test_delete_while_open),
        cmocka_unit_test(test_hostile_input_changes_nothing),
    };
    char name[64];
    snprintf(name, sizeof name, "sub/%s", tu_backend);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
