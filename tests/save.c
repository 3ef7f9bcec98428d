/*
 * save.c — save with operations: atomic multi-operation batches, rejects,
 * the built-in operations, retry and give-up, and contention: 8 threads
 * saving on one counter key, and 8 threads racing for one username.
 */
#define _GNU_SOURCE
#include "foldview.h"
#include "testutil.h"
#include "users.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t count_of(const es_snapshot *s)
{
    return s->state == ES_SNAP_VALUE ? ((const fv_value *)s->value)->count : 0;
}

/* Emits one Set when the count is op->seq (so a second op sees the first's event). */
static int set_if_count(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    if (count_of(snap) != op->seq)
        return es_op_reject(ctx, "count differs");
    es_event_new ev = {.type = "Set", .data = "s", .data_len = 1};
    return es_op_emit(ctx, &ev);
}

static void test_operations_append_as_one_batch(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    tu_open(&ts);
    es_view_def d = fv_def("ops", 1);
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, NULL));
    es_op ops[2] = {{.run = set_if_count, .seq = 0}, {.run = set_if_count, .seq = 1}};
    es_save_result r = ES_SAVE_RESULT_INIT;
    TU_EXPECT_OK(es_save(&r, v, "k", 1, ops, 2, NULL));
    assert_int_equal(r.status, ES_SAVED);
    assert_int_equal(r.last_seq, 2);
    assert_int_equal(r.retries, 0);
    assert_int_equal(r.snapshot.seq, 2);
    assert_int_equal(count_of(&r.snapshot), 2);
    es_save_result_clear(&r, v);
    /* both events landed in one append: one commit time, adjacent positions */
    es_cursor *c;
    const es_event *ev;
    TU_EXPECT_OK(es_stream_cursor(&c, ts.st, "k", 1, NULL));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    int64_t t = ev->time_us;
    uint64_t p = ev->position;
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    assert_int_equal(ev->time_us, t);
    assert_int_equal(ev->position, p + 1);
    es_cursor_free(c);

    /* second op rejects: nothing is written, reasons come back */
    es_op bad[2] = {{.run = set_if_count, .seq = 2}, {.run = set_if_count, .seq = 99}};
    TU_EXPECT_OK(es_save(&r, v, "k", 1, bad, 2, NULL));
    assert_int_equal(r.status, ES_REJECTED);
    assert_int_equal(r.n_reasons, 1);
    assert_string_equal(r.reasons[0], "count differs");
    assert_int_equal(r.snapshot.seq, 2);
    es_save_result_clear(&r, v);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, ts.st, "k", 1));
    assert_int_equal(h, 2);
    es_view_free(v);
    tu_close(&ts);
}

static void test_builtin_if_new_and_if_seq(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    tu_open(&ts);
    es_view_def d = fv_def("builtin", 1);
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, NULL));
    es_event_new set = {.type = "Set", .data = "v", .data_len = 1};
    es_save_result r = ES_SAVE_RESULT_INIT;
    es_op op = es_op_if_new(&set, 1);
    TU_EXPECT_OK(es_save(&r, v, "k", 1, &op, 1, NULL));
    assert_int_equal(r.status, ES_SAVED);
    es_save_result_clear(&r, v);
    TU_EXPECT_OK(es_save(&r, v, "k", 1, &op, 1, NULL));
    assert_int_equal(r.status, ES_REJECTED);
    assert_string_equal(r.reasons[0], "duplicate value");
    es_save_result_clear(&r, v);
    op = es_op_if_seq(0, &set, 1);
    TU_EXPECT_OK(es_save(&r, v, "k", 1, &op, 1, NULL));
    assert_int_equal(r.status, ES_REJECTED);
    assert_string_equal(r.reasons[0], "sequence mismatch");
    es_save_result_clear(&r, v);
    op = es_op_if_seq(1, &set, 1);
    TU_EXPECT_OK(es_save(&r, v, "k", 1, &op, 1, NULL));
    assert_int_equal(r.status, ES_SAVED);
    assert_int_equal(r.last_seq, 2);
    es_save_result_clear(&r, v);
    /* if_new passes again after a delete */
    TU_EXPECT_OK(tu_append1(ts.st, "k", ES_EXPECT_ANY, "Del", "", NULL));
    op = es_op_if_new(&set, 1);
    TU_EXPECT_OK(es_save(&r, v, "k", 1, &op, 1, NULL));
    assert_int_equal(r.status, ES_SAVED);
    assert_int_equal(count_of(&r.snapshot), 1);
    es_save_result_clear(&r, v);
    es_view_free(v);
    tu_close(&ts);
}

/* An operation that races itself: each run appends behind the save's back. */
static int interfering(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    (void)snap;
    es_store *st = op->payload;
    TU_EXPECT_OK(tu_append1(st, "k", ES_EXPECT_ANY, "Noop", "", NULL));
    es_event_new ev = {.type = "Set"};
    return es_op_emit(ctx, &ev);
}

static void test_gives_up_after_max_attempts(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    tu_open(&ts);
    es_view_def d = fv_def("giveup", 1);
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, NULL));
    es_op op = {.run = interfering, .payload = ts.st};
    es_save_options o = ES_SAVE_OPTIONS_INIT;
    o.max_attempts = 3;
    o.backoff_base_us = 10;
    es_save_result r = ES_SAVE_RESULT_INIT;
    TU_EXPECT_OK(es_save(&r, v, "k", 1, &op, 1, &o));
    assert_int_equal(r.status, ES_GAVE_UP);
    assert_int_equal(r.retries, 3);
    /* the snapshot was caught up with what the others wrote */
    assert_int_equal(r.snapshot.seq, 3);
    es_save_result_clear(&r, v);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, ts.st, "k", 1));
    assert_int_equal(h, 3); /* only the interfering Noops */
    es_view_free(v);
    tu_close(&ts);
}

static int emits_nothing(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    (void)ctx, (void)snap, (void)op;
    return 0;
}

static int fails(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    (void)ctx, (void)snap, (void)op;
    return ES_ENOTFOUND;
}

static int emits_bad(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    (void)snap, (void)op;
    es_event_new ev = {.type = ""};
    return es_op_emit(ctx, &ev);
}

static void test_save_edge_cases_and_arguments(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    tu_open(&ts);
    es_view_def d = fv_def("edges", 1);
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, NULL));
    es_save_result r = ES_SAVE_RESULT_INIT;
    es_op none = {.run = emits_nothing};
    TU_EXPECT_OK(es_save(&r, v, "k", 1, &none, 1, NULL));
    assert_int_equal(r.status, ES_SAVED);
    assert_int_equal(r.last_seq, 0);
    es_save_result_clear(&r, v);
    es_op f = {.run = fails};
    assert_int_equal(es_save(&r, v, "k", 1, &f, 1, NULL), ES_ENOTFOUND);
    es_op b = {.run = emits_bad};
    assert_int_equal(es_save(&r, v, "k", 1, &b, 1, NULL), ES_EINVAL);
    es_op norun = {0};
    assert_int_equal(es_save(&r, v, "k", 1, &norun, 1, NULL), ES_EINVAL);
    assert_int_equal(es_save(&r, v, "k", 1, NULL, 1, NULL), ES_EINVAL);
    assert_int_equal(es_save(&r, v, "k", 1, &none, 0, NULL), ES_EINVAL);
    assert_int_equal(es_save(NULL, v, "k", 1, &none, 1, NULL), ES_EINVAL);
    assert_int_equal(es_save(&r, NULL, "k", 1, &none, 1, NULL), ES_EINVAL);
    assert_int_equal(es_save(&r, v, "", 0, &none, 1, NULL), ES_EINVAL);
    es_save_options o = ES_SAVE_OPTIONS_INIT;
    o.version = 9;
    assert_int_equal(es_save(&r, v, "k", 1, &none, 1, &o), ES_EINVAL);
    assert_int_equal(es_op_emit(NULL, NULL), ES_EINVAL);
    assert_int_equal(es_op_reject(NULL, "x"), ES_EINVAL);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, ts.st, "k", 1));
    assert_int_equal(h, 0);
    es_save_result_clear(NULL, NULL);
    es_view_free(v);
    tu_close(&ts);
}

/* ---- contention ---- */

enum { THREADS = 8 };

typedef struct racer {
    es_view *v;
    int id;
    int saves;
    int saved;
    int gave_up;
    int errors;
    uint64_t retries;
} racer;

static int inc(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    (void)snap, (void)op;
    es_event_new ev = {.type = "Set", .data = "+", .data_len = 1};
    return es_op_emit(ctx, &ev);
}

static void *counter_racer(void *p)
{
    racer *r = p;
    es_op op = {.run = inc};
    es_save_options o = ES_SAVE_OPTIONS_INIT;
    o.max_attempts = 1000;
    o.max_total_ms = 60000;
    for (int i = 0; i < r->saves; i++) {
        es_save_result res = ES_SAVE_RESULT_INIT;
        int rc = es_save(&res, r->v, "counter", 7, &op, 1, &o);
        if (rc)
            r->errors++;
        else if (res.status == ES_SAVED)
            r->saved++;
        else
            r->gave_up++;
        r->retries += res.retries;
        es_save_result_clear(&res, r->v);
    }
    return NULL;
}

/* THREADS threads, spread over the views, each making `per` saves on one
 * counter: every save lands (threads that keep colliding take turns, and
 * those on other handles retry).  Returns the number saved. */
static int race_counter(es_view *const *views, int n_views, int per, const char *label)
{
    pthread_t th[THREADS];
    racer rs[THREADS];
    for (int i = 0; i < THREADS; i++) {
        rs[i] = (racer){.v = views[i % n_views], .id = i, .saves = per};
        assert_int_equal(pthread_create(&th[i], NULL, counter_racer, &rs[i]), 0);
    }
    int saved = 0;
    uint64_t retries = 0;
    for (int i = 0; i < THREADS; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(rs[i].errors, 0);
        assert_int_equal(rs[i].gave_up, 0);
        saved += rs[i].saved;
        retries += rs[i].retries;
    }
    printf("   %s: %d saves succeeded, %llu conflicts retried\n", label, saved,
           (unsigned long long)retries);
    assert_int_equal(saved, THREADS * per);
    return saved;
}

static void test_eight_threads_save_one_counter(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    tu_open(&ts);
    es_view_def d = fv_def("counter", 1);
    es_view_options vo = ES_VIEW_OPTIONS_INIT;
    vo.snapshot_every = 16;
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, &vo));
    int per = strcmp(tu_backend, "mem") == 0 ? 200 : 40;
    int saved = race_counter(&v, 1, per, "one handle");
    es_snapshot s;
    TU_EXPECT_OK(es_view_get(&s, v, "counter", 7, ES_LATEST_EVENT));
    assert_int_equal(count_of(&s), (uint64_t)saved);
    assert_int_equal(s.seq, (uint64_t)saved);
    es_snapshot_clear(&s, v);
    /* seqs are contiguous and the chain verifies */
    es_verify_result vr;
    TU_EXPECT_OK(es_verify(&vr, ts.st, "counter", 7));
    assert_true(vr.ok);
    assert_int_equal(vr.events_checked, (uint64_t)saved);
    es_view_free(v);
    tu_close(&ts);
}

typedef struct name_racer {
    es_view *v;
    int64_t id;
    es_save_status status;
    int rc;
    pthread_barrier_t *go;
} name_racer;

static void *username_racer(void *p)
{
    name_racer *r = p;
    us_user u = {.id = r->id};
    snprintf(u.name, sizeof u.name, "Bart %lld", (long long)r->id);
    snprintf(u.username, sizeof u.username, "bart");
    es_save_result res = ES_SAVE_RESULT_INIT;
    pthread_barrier_wait(r->go);
    r->rc = us_save_user(&res, r->v, 1, &u, NULL);
    r->status = res.status;
    es_save_result_clear(&res, r->v);
    return NULL;
}

/* Two handles on one store (two processes, in effect): their saves race and
 * retry, and every one lands. */
static void test_two_handles_race_on_one_counter(void **state)
{
    (void)state;
    if (strcmp(tu_backend, "mem") == 0)
        skip(); /* a mem: store cannot be opened twice */
    tu_store ts;
    es_store *other;
    es_view *v[2];
    tu_open(&ts);
    TU_EXPECT_OK(es_store_open(&other, ts.uri, NULL));
    es_view_def d = fv_def("counter", 1);
    TU_EXPECT_OK(es_view_new(&v[0], ts.st, &d, NULL));
    TU_EXPECT_OK(es_view_new(&v[1], other, &d, NULL));
    int saved = race_counter(v, 2, 30, "two handles");
    es_snapshot snap;
    TU_EXPECT_OK(es_view_get(&snap, v[1], "counter", 7, ES_LATEST_EVENT));
    assert_int_equal(count_of(&snap), (uint64_t)saved);
    es_snapshot_clear(&snap, v[1]);
    es_verify_result vr;
    TU_EXPECT_OK(es_verify(&vr, ts.st, "counter", 7));
    assert_true(vr.ok);
    es_view_free(v[0]);
    es_view_free(v[1]);
    es_store_close(other);
    tu_close(&ts);
}

static void test_eight_threads_race_for_one_username(void **state)
{
    (void)state;
    int rounds = 5;
    for (int round = 0; round < rounds; round++) {
        tu_store ts;
        es_view *v;
        pthread_t th[THREADS];
        name_racer rs[THREADS];
        pthread_barrier_t go;
        tu_open(&ts);
        TU_EXPECT_OK(es_view_new(&v, ts.st, us_user_by_name(), NULL));
        pthread_barrier_init(&go, NULL, THREADS);
        for (int i = 0; i < THREADS; i++) {
            rs[i] = (name_racer){.v = v, .id = 100 + i, .go = &go};
            assert_int_equal(pthread_create(&th[i], NULL, username_racer, &rs[i]), 0);
        }
        int winners = 0, rejected = 0;
        int64_t winner = 0;
        for (int i = 0; i < THREADS; i++) {
            pthread_join(th[i], NULL);
            assert_int_equal(rs[i].rc, 0);
            if (rs[i].status == ES_SAVED) {
                winners++;
                winner = rs[i].id;
            } else if (rs[i].status == ES_REJECTED) {
                rejected++;
            }
        }
        pthread_barrier_destroy(&go);
        assert_int_equal(winners, 1);
        assert_int_equal(rejected, THREADS - 1);
        es_snapshot s;
        TU_EXPECT_OK(es_view_get(&s, v, "1:bart", 6, ES_LATEST_EVENT));
        assert_int_equal(s.state, ES_SNAP_VALUE);
        assert_int_equal(*(int64_t *)s.value, winner);
        assert_int_equal(s.seq, 1); /* exactly one InsertUser was appended */
        es_snapshot_clear(&s, v);
        es_view_free(v);
        tu_close(&ts);
    }
}

int main(int argc, char **argv)
{
    int rc = tu_init(argc, argv, "save");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_operations_append_as_one_batch),
        cmocka_unit_test(test_builtin_if_new_and_if_seq),
        cmocka_unit_test(test_gives_up_after_max_attempts),
        cmocka_unit_test(test_save_edge_cases_and_arguments),
        cmocka_unit_test(test_eight_threads_save_one_counter),
        cmocka_unit_test(test_two_handles_race_on_one_counter),
        cmocka_unit_test(test_eight_threads_race_for_one_username),
    };
    char name[64];
    snprintf(name, sizeof name, "save/%s", tu_backend);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
