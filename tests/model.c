/*
 * model.c — randomised model tests with a fixed, printed seed.
 *
 * 1. Random appends (right and wrong expectations, batches) and random
 *    reads of streams and of the global log, compared with a plain in-test
 *    model of what the store must hold.
 * 2. Views: for random n, get_at(n) equals a direct fold of the first n
 *    events; get_as_of(T) equals a fold of the events up to T; and a view
 *    that persists snapshots often (snapshot + tail) equals one that never
 *    does (full replay), for every key, after random writes.
 */
#define _GNU_SOURCE
#include "foldview.h"
#include "testutil.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NSTREAMS 6
#define MAXEV 4096

typedef struct mev {
    int stream;
    uint64_t seq;
    uint64_t position;
    int64_t time_us;
    char type[8];
    char data[24];
} mev;

typedef struct model {
    mev log[MAXEV];
    size_t n;
    size_t by_stream[NSTREAMS][MAXEV];
    uint64_t head[NSTREAMS];
} model;

static const char *names[NSTREAMS] = {"acct-1", "acct-2", "acct-3", "user-1", "user-2", "u"};
static const char *types[] = {"Set", "Noop", "Del", "Set"};

static void check_event(const es_event *ev, const mev *m)
{
    assert_int_equal(ev->stream_len, strlen(names[m->stream]));
    assert_memory_equal(ev->stream, names[m->stream], ev->stream_len);
    assert_int_equal(ev->seq, m->seq);
    assert_int_equal(ev->position, m->position);
    assert_int_equal(ev->time_us, m->time_us);
    assert_string_equal(ev->type, m->type);
    assert_int_equal(ev->data_len, strlen(m->data));
    assert_memory_equal(ev->data, m->data, ev->data_len);
}

static void random_append(tu_store *ts, model *m, uint64_t *rng)
{
    int s = (int)tu_rand_below(rng, NSTREAMS);
    size_t n = 1 + tu_rand_below(rng, 4);
    uint64_t head = m->head[s], expected;
    bool should_pass;
    switch (tu_rand_below(rng, 6)) {
    case 0:
        expected = ES_EXPECT_ANY;
        should_pass = true;
        break;
    case 1:
        expected = ES_EXPECT_EXISTS;
        should_pass = head > 0;
        break;
    case 2:
        expected = ES_EXPECT_NO_STREAM;
        should_pass = head == 0;
        break;
    case 3:
        expected = head + 1 + tu_rand_below(rng, 3);
        should_pass = false;
        break;
    default:
        expected = head;
        should_pass = true;
        break;
    }
    if (m->n + n > MAXEV)
        return;
    es_event_new evs[4];
    char data[4][24];
    const char *ty[4];
    for (size_t i = 0; i < n; i++) {
        ty[i] = types[tu_rand_below(rng, 4)];
        snprintf(data[i], sizeof data[i], "d%llu", (unsigned long long)tu_rand_below(rng, 1000000));
        evs[i] = (es_event_new){.type = ty[i], .data = data[i], .data_len = strlen(data[i])};
    }
    es_append_result r;
    int rc = es_append(&r, ts->st, names[s], strlen(names[s]), expected, evs, n);
    if (!should_pass) {
        assert_int_equal(rc, ES_ECONFLICT);
        assert_int_equal(r.head, head);
        return;
    }
    TU_EXPECT_OK(rc);
    assert_int_equal(r.first_seq, head + 1);
    assert_int_equal(r.last_seq, head + n);
    assert_true(m->n == 0 || r.first_position > m->log[m->n - 1].position);
    for (size_t i = 0; i < n; i++) {
        mev *e = &m->log[m->n];
        e->stream = s;
        e->seq = head + 1 + i;
        e->position = r.first_position + i;
        e->time_us = r.time_us;
        snprintf(e->type, sizeof e->type, "%s", ty[i]);
        snprintf(e->data, sizeof e->data, "%s", data[i]);
        m->by_stream[s][head + i] = m->n;
        m->n++;
    }
    m->head[s] = head + n;
}

static void random_stream_read(tu_store *ts, model *m, uint64_t *rng)
{
    int s = (int)tu_rand_below(rng, NSTREAMS);
    uint64_t head = m->head[s];
    es_read_options o = ES_READ_OPTIONS_INIT;
    o.backward = (int)tu_rand_below(rng, 2);
    o.from_seq = tu_rand_below(rng, head + 3);
    o.to_seq = tu_rand_below(rng, head + 3);
    o.limit = tu_rand_below(rng, 4) == 0 ? 1 + tu_rand_below(rng, 5) : 0;
    /* what the model says */
    uint64_t want[MAXEV];
    size_t nw = 0;
    if (!o.backward) {
        uint64_t from = o.from_seq ? o.from_seq : 1, to = o.to_seq ? o.to_seq : UINT64_MAX;
        for (uint64_t q = from; q <= head && q <= to; q++)
            want[nw++] = q;
    } else {
        uint64_t from = o.from_seq ? o.from_seq : UINT64_MAX, to = o.to_seq ? o.to_seq : 1;
        if (from > head)
            from = head;
        for (uint64_t q = from; q >= 1 && q >= to; q--)
            want[nw++] = q;
    }
    if (o.limit && nw > o.limit)
        nw = o.limit;
    es_cursor *c;
    const es_event *ev;
    size_t i = 0;
    int rc;
    TU_EXPECT_OK(es_stream_cursor(&c, ts->st, names[s], strlen(names[s]), &o));
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        assert_true(i < nw);
        check_event(ev, &m->log[m->by_stream[s][want[i] - 1]]);
        i++;
    }
    assert_int_equal(rc, ES_ITEROVER);
    assert_int_equal(i, nw);
    es_cursor_free(c);
}

static void random_log_read(tu_store *ts, model *m, uint64_t *rng)
{
    es_log_options o = ES_LOG_OPTIONS_INIT;
    size_t start = m->n ? tu_rand_below(rng, m->n + 1) : 0;
    o.from_position =
        start < m->n ? m->log[start].position : (m->n ? m->log[m->n - 1].position + 1 : 0);
    if (tu_rand_below(rng, 3) == 0) {
        o.prefix = tu_rand_below(rng, 2) ? "acct-" : "u";
        o.prefix_len = strlen(o.prefix);
    }
    if (tu_rand_below(rng, 3) == 0)
        o.type = types[tu_rand_below(rng, 3)];
    o.limit = tu_rand_below(rng, 3) == 0 ? 1 + tu_rand_below(rng, 20) : 0;
    es_cursor *c;
    const es_event *ev;
    int rc;
    size_t i = start, got = 0;
    /* on postgres the log shows an event once older transactions end */
    TU_EXPECT_OK(es_log_catch_up(ts->st, 60000));
    TU_EXPECT_OK(es_log_cursor(&c, ts->st, &o));
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        while (i < m->n &&
               ((o.prefix && strncmp(names[m->log[i].stream], o.prefix, o.prefix_len) != 0) ||
                (o.type && strcmp(m->log[i].type, o.type) != 0)))
            i++;
        assert_true(i < m->n);
        check_event(ev, &m->log[i]);
        i++;
        got++;
    }
    assert_int_equal(rc, ES_ITEROVER);
    /* nothing else should have matched */
    if (!o.limit || got < o.limit) {
        while (i < m->n &&
               ((o.prefix && strncmp(names[m->log[i].stream], o.prefix, o.prefix_len) != 0) ||
                (o.type && strcmp(m->log[i].type, o.type) != 0)))
            i++;
        assert_int_equal(i, m->n);
    } else {
        assert_int_equal(got, o.limit);
    }
    es_cursor_free(c);
}

static void test_store_matches_model(void **state)
{
    (void)state;
    static model m;
    tu_store ts;
    uint64_t rng = tu_seed;
    memset(&m, 0, sizeof m);
    tu_open(&ts);
    int steps = getenv("ES_SOAK") ? 20000 : 1500;
    for (int i = 0; i < steps; i++) {
        switch (tu_rand_below(&rng, 5)) {
        case 0:
        case 1:
            random_append(&ts, &m, &rng);
            break;
        case 2:
        case 3:
            random_stream_read(&ts, &m, &rng);
            break;
        default:
            random_log_read(&ts, &m, &rng);
            break;
        }
        if (i % 300 == 0) {
            for (int s = 0; s < NSTREAMS; s++) {
                uint64_t h;
                TU_EXPECT_OK(es_stream_head(&h, ts.st, names[s], strlen(names[s])));
                assert_int_equal(h, m.head[s]);
            }
        }
    }
    assert_int_equal(tu_count_log(ts.st), m.n);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, ts.st, NULL, 0));
    assert_true(v.ok);
    tu_close(&ts);
}

/* The value after the first n events of a stream, folded directly. */
static void model_fold(const model *m, int s, uint64_t n, int64_t max_time, es_snapshot *out,
                       fv_value *val)
{
    memset(out, 0, sizeof *out);
    memset(val, 0, sizeof *val);
    for (uint64_t q = 1; q <= n && q <= m->head[s]; q++) {
        const mev *e = &m->log[m->by_stream[s][q - 1]];
        if (e->time_us > max_time)
            break;
        int r = fv_step(val, e->type, strlen(e->type), (const uint8_t *)e->data, strlen(e->data));
        if (r == ES_FOLD_CHANGED)
            out->state = ES_SNAP_VALUE;
        else if (r == ES_FOLD_DELETED) {
            out->state = ES_SNAP_DELETED;
            memset(val, 0, sizeof *val);
        }
        out->seq = q;
        out->time_us = e->time_us;
    }
}

static void assert_same(const es_snapshot *got, const es_snapshot *want, const fv_value *wv)
{
    assert_int_equal(got->state, want->state);
    assert_int_equal(got->seq, want->seq);
    assert_int_equal(got->time_us, want->time_us);
    if (want->state == ES_SNAP_VALUE) {
        const fv_value *v = got->value;
        assert_non_null(v);
        assert_int_equal(v->count, wv->count);
        assert_int_equal(v->hash, wv->hash);
    } else {
        assert_null(got->value);
    }
}

typedef struct hist {
    const model *m;
    int s;
    uint64_t next;
} hist;

static int check_history(const es_snapshot *snap, const es_event *ev, void *payload)
{
    hist *h = payload;
    es_snapshot want;
    fv_value wv;
    assert_int_equal(ev->seq, h->next);
    model_fold(h->m, h->s, h->next, INT64_MAX, &want, &wv);
    assert_same(snap, &want, &wv);
    h->next++;
    return 0;
}

static void test_views_match_direct_folds(void **state)
{
    (void)state;
    static model m;
    tu_store ts;
    uint64_t rng = tu_seed ^ 0x5eed;
    es_view *snapped, *replay;
    memset(&m, 0, sizeof m);
    tu_open(&ts);
    es_view_def d = fv_def("model", 1);
    es_view_options often = ES_VIEW_OPTIONS_INIT, never = ES_VIEW_OPTIONS_INIT;
    often.snapshot_every = 3;
    often.keep = 4;
    never.snapshot_every = UINT32_MAX;
    TU_EXPECT_OK(es_view_new(&snapped, ts.st, &d, &often));
    TU_EXPECT_OK(es_view_new(&replay, ts.st, &d, &never));

    int rounds = getenv("ES_SOAK") ? 3000 : 400;
    for (int i = 0; i < rounds; i++) {
        random_append(&ts, &m, &rng);
        int s = (int)tu_rand_below(&rng, NSTREAMS);
        const char *k = names[s];
        es_snapshot got = ES_SNAPSHOT_INIT, want;
        fv_value wv;
        switch (tu_rand_below(&rng, 4)) {
        case 0: { /* latest, both ways */
            model_fold(&m, s, UINT64_MAX, INT64_MAX, &want, &wv);
            TU_EXPECT_OK(es_view_get(&got, snapped, k, strlen(k), ES_LATEST_EVENT));
            assert_same(&got, &want, &wv);
            es_snapshot_clear(&got, snapped);
            TU_EXPECT_OK(es_view_get(&got, replay, k, strlen(k), ES_LATEST_EVENT));
            assert_same(&got, &want, &wv);
            es_snapshot_clear(&got, replay);
            break;
        }
        case 1: { /* at a random seq */
            uint64_t n = tu_rand_below(&rng, m.head[s] + 2);
            model_fold(&m, s, n, INT64_MAX, &want, &wv);
            TU_EXPECT_OK(es_view_get_at(&got, snapped, k, strlen(k), n));
            assert_same(&got, &want, &wv);
            es_snapshot_clear(&got, snapped);
            break;
        }
        case 2: { /* as of a random time */
            int64_t t = m.n ? m.log[tu_rand_below(&rng, m.n)].time_us : 0;
            model_fold(&m, s, UINT64_MAX, t, &want, &wv);
            TU_EXPECT_OK(es_view_get_as_of(&got, snapped, k, strlen(k), t));
            assert_same(&got, &want, &wv);
            es_snapshot_clear(&got, snapped);
            break;
        }
        default: { /* history from a random seq */
            hist h = {&m, s, 1 + tu_rand_below(&rng, m.head[s] + 1)};
            uint64_t from = h.next;
            TU_EXPECT_OK(es_view_history(snapped, k, strlen(k), from, check_history, &h));
            assert_int_equal(h.next, m.head[s] + 1 > from ? m.head[s] + 1 : from);
            break;
        }
        }
    }
    /* finally every key, snapshot + tail against full replay */
    for (int s = 0; s < NSTREAMS; s++) {
        es_snapshot a = ES_SNAPSHOT_INIT, b = ES_SNAPSHOT_INIT, want;
        fv_value wv;
        model_fold(&m, s, UINT64_MAX, INT64_MAX, &want, &wv);
        TU_EXPECT_OK(es_view_get(&a, snapped, names[s], strlen(names[s]), ES_LATEST_EVENT));
        TU_EXPECT_OK(es_view_get(&b, replay, names[s], strlen(names[s]), ES_LATEST_EVENT));
        assert_same(&a, &want, &wv);
        assert_same(&b, &want, &wv);
        es_snapshot_clear(&a, snapped);
        es_snapshot_clear(&b, replay);
    }
    es_store_stats st;
    TU_EXPECT_OK(es_store_stats_get(&st, ts.st));
    assert_true(st.snapshots > 0);
    assert_true(st.snapshots <= NSTREAMS * 4);
    es_view_free(snapped);
    es_view_free(replay);
    tu_close(&ts);
}

int main(int argc, char **argv)
{
    int rc = tu_init(argc, argv, "model");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_store_matches_model),
        cmocka_unit_test(test_views_match_direct_folds),
    };
    char name[64];
    snprintf(name, sizeof name, "model/%s", tu_backend);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
