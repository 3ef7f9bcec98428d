/*
 * views.c — views and snapshots: consistency modes, persisted snapshots and
 * their refresh, retention spread, version changes, sharded snapshots (the
 * users example's UserByName), and argument checks.  Run per backend.
 */
#define _GNU_SOURCE
#include "foldview.h"
#include "testutil.h"
#include "users.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void append_types(es_store *st, const char *k, const char *const *types, int n)
{
    for (int i = 0; i < n; i++) {
        char d[16];
        snprintf(d, sizeof d, "%d", i);
        TU_EXPECT_OK(tu_append1(st, k, ES_EXPECT_ANY, types[i], d, NULL));
    }
}

static void append_sets(es_store *st, const char *k, int n)
{
    for (int i = 0; i < n; i++)
        TU_EXPECT_OK(tu_append1(st, k, ES_EXPECT_ANY, "Set", "x", NULL));
}

static uint64_t snapshots(es_store *st)
{
    es_store_stats s;
    TU_EXPECT_OK(es_store_stats_get(&s, st));
    return s.snapshots;
}

static void test_states_none_value_deleted(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    es_snapshot s;
    tu_open(&ts);
    es_view_def d = fv_def("states", 1);
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, NULL));
    TU_EXPECT_OK(es_view_get(&s, v, "k", 1, ES_LATEST_EVENT));
    assert_int_equal(s.state, ES_SNAP_NONE);
    assert_int_equal(s.seq, 0);
    assert_null(s.value);
    static const char *const t1[] = {"Noop", "Set", "Noop"};
    append_types(ts.st, "k", t1, 3);
    TU_EXPECT_OK(es_view_get(&s, v, "k", 1, ES_LATEST_EVENT));
    assert_int_equal(s.state, ES_SNAP_VALUE);
    assert_int_equal(s.seq, 3); /* the trailing no-op still advances the seq */
    assert_int_equal(((fv_value *)s.value)->count, 1);
    es_snapshot_clear(&s, v);
    static const char *const t2[] = {"Del"};
    append_types(ts.st, "k", t2, 1);
    TU_EXPECT_OK(es_view_get(&s, v, "k", 1, ES_LATEST_EVENT));
    assert_int_equal(s.state, ES_SNAP_DELETED);
    assert_int_equal(s.seq, 4);
    assert_null(s.value);
    /* after a delete the value starts again from init */
    append_sets(ts.st, "k", 1);
    TU_EXPECT_OK(es_view_get(&s, v, "k", 1, ES_LATEST_EVENT));
    assert_int_equal(s.state, ES_SNAP_VALUE);
    assert_int_equal(((fv_value *)s.value)->count, 1);
    es_snapshot_clear(&s, v);
    es_view_free(v);
    tu_close(&ts);
}

static void test_snapshot_refresh_and_latest_snapshot_mode(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    es_snapshot s;
    tu_open(&ts);
    es_view_def d = fv_def("refresh", 1);
    es_view_options o = ES_VIEW_OPTIONS_INIT;
    o.snapshot_every = 10;
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, &o));
    append_sets(ts.st, "k", 9);
    TU_EXPECT_OK(es_view_get(&s, v, "k", 1, ES_LATEST_EVENT));
    es_snapshot_clear(&s, v);
    assert_int_equal(snapshots(ts.st), 0); /* 9 behind: not yet */
    /* latest-snapshot consistency sees no snapshot yet */
    TU_EXPECT_OK(es_view_get(&s, v, "k", 1, ES_LATEST_SNAPSHOT));
    assert_int_equal(s.state, ES_SNAP_NONE);
    assert_int_equal(s.seq, 0);
    append_sets(ts.st, "k", 1);
    TU_EXPECT_OK(es_view_get(&s, v, "k", 1, ES_LATEST_EVENT));
    es_snapshot_clear(&s, v);
    assert_int_equal(snapshots(ts.st), 1); /* 10 behind: persisted at seq 10 */
    append_sets(ts.st, "k", 3);
    TU_EXPECT_OK(es_view_get(&s, v, "k", 1, ES_LATEST_SNAPSHOT));
    assert_int_equal(s.seq, 10);
    assert_int_equal(((fv_value *)s.value)->count, 10);
    es_snapshot_clear(&s, v);
    TU_EXPECT_OK(es_view_get(&s, v, "k", 1, ES_LATEST_EVENT));
    assert_int_equal(s.seq, 13);
    assert_int_equal(((fv_value *)s.value)->count, 13);
    es_snapshot_clear(&s, v);
    /* reading again without new events never rewrites the snapshot */
    for (int i = 0; i < 5; i++) {
        TU_EXPECT_OK(es_view_get(&s, v, "k", 1, ES_LATEST_EVENT));
        es_snapshot_clear(&s, v);
    }
    assert_int_equal(snapshots(ts.st), 1);
    TU_EXPECT_OK(es_view_get(&s, v, "k", 1, ES_LATEST_SNAPSHOT));
    assert_int_equal(s.seq, 10);
    es_snapshot_clear(&s, v);
    assert_int_equal(es_view_get(&s, v, "k", 1, (es_consistency)7), ES_EINVAL);
    es_view_free(v);
    tu_close(&ts);
}

/* A decoder that counts how often it ran: proves where a fold started. */
static int decodes;
static int counting_decode(void **out, const uint8_t *d, size_t n, void *payload)
{
    decodes++;
    return fv_decode(out, d, n, payload);
}
static int applies;
static int counting_apply(void *acc, const es_event *ev, const uint8_t *k, size_t n, void *p)
{
    applies++;
    return fv_apply(acc, ev, k, n, p);
}

static void test_retained_snapshots_serve_get_at(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    es_snapshot s;
    tu_open(&ts);
    es_view_def d = fv_def("retain", 1);
    d.decode = counting_decode;
    d.apply = counting_apply;
    es_view_options o = ES_VIEW_OPTIONS_INIT;
    o.snapshot_every = 100;
    o.keep = 4;
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, &o));
    for (int round = 0; round < 10; round++) {
        append_sets(ts.st, "k", 100);
        TU_EXPECT_OK(es_view_get(&s, v, "k", 1, ES_LATEST_EVENT));
        es_snapshot_clear(&s, v);
    }
    /* 10 snapshots written, 4 kept, spread out: the newest (1000) always */
    assert_int_equal(snapshots(ts.st), 4);
    applies = 0;
    TU_EXPECT_OK(es_view_get_at(&s, v, "k", 1, 1000));
    assert_int_equal(applies, 0);
    assert_int_equal(((fv_value *)s.value)->count, 1000);
    es_snapshot_clear(&s, v);
    /* a seq far from the end starts from a retained snapshot before it */
    applies = 0;
    TU_EXPECT_OK(es_view_get_at(&s, v, "k", 1, 650));
    assert_int_equal(s.seq, 650);
    assert_int_equal(((fv_value *)s.value)->count, 650);
    assert_true(applies < 650);
    es_snapshot_clear(&s, v);
    es_view_free(v);
    tu_close(&ts);
}

static void test_version_change_ignores_old_snapshots(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v1, *v2;
    es_snapshot s;
    tu_open(&ts);
    es_view_def d1 = fv_def("versioned", 1), d2 = fv_def("versioned", 2);
    d2.decode = counting_decode;
    es_view_options o = ES_VIEW_OPTIONS_INIT;
    o.snapshot_every = 1;
    TU_EXPECT_OK(es_view_new(&v1, ts.st, &d1, &o));
    TU_EXPECT_OK(es_view_new(&v2, ts.st, &d2, &o));
    append_sets(ts.st, "k", 5);
    TU_EXPECT_OK(es_view_get(&s, v1, "k", 1, ES_LATEST_EVENT));
    es_snapshot_clear(&s, v1);
    decodes = 0;
    TU_EXPECT_OK(es_view_get(&s, v2, "k", 1, ES_LATEST_SNAPSHOT));
    assert_int_equal(s.state, ES_SNAP_NONE); /* v1's snapshot is not v2's */
    assert_int_equal(decodes, 0);
    TU_EXPECT_OK(es_view_get(&s, v2, "k", 1, ES_LATEST_EVENT));
    assert_int_equal(((fv_value *)s.value)->count, 5);
    es_snapshot_clear(&s, v2);
    es_view_free(v1);
    es_view_free(v2);
    tu_close(&ts);
}

static void test_get_as_of_time(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    es_snapshot s;
    es_append_result r[5];
    tu_open(&ts);
    es_view_def d = fv_def("asof", 1);
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, NULL));
    for (int i = 0; i < 5; i++) {
        TU_EXPECT_OK(tu_append1(ts.st, "k", ES_EXPECT_ANY, "Set", "x", &r[i]));
        ts.clock_now += 1000000;
    }
    TU_EXPECT_OK(es_view_get_as_of(&s, v, "k", 1, r[2].time_us));
    assert_int_equal(s.seq, 3);
    assert_int_equal(s.time_us, r[2].time_us);
    es_snapshot_clear(&s, v);
    TU_EXPECT_OK(es_view_get_as_of(&s, v, "k", 1, r[2].time_us - 1));
    assert_int_equal(s.seq, 2);
    es_snapshot_clear(&s, v);
    TU_EXPECT_OK(es_view_get_as_of(&s, v, "k", 1, r[0].time_us - 1));
    assert_int_equal(s.state, ES_SNAP_NONE);
    assert_int_equal(s.seq, 0);
    es_view_free(v);
    tu_close(&ts);
}

static void add_user(es_store *st, int64_t id, const char *name, const char *username)
{
    es_buf b = ES_BUF_INIT;
    es_event_new ev;
    us_event e = {.kind = US_INSERT_USER, .id = id};
    snprintf(e.name, sizeof e.name, "%s", name);
    snprintf(e.username, sizeof e.username, "%s", username);
    TU_EXPECT_OK(us_event_new(&ev, &b, &e));
    TU_EXPECT_OK(es_append(NULL, st, "company/7", 9, ES_EXPECT_ANY, &ev, 1));
    es_buf_free(&b);
}

static void expect_user(es_view *v, const char *key, es_snap_state st, int64_t id)
{
    es_snapshot s;
    TU_EXPECT_OK(es_view_get(&s, v, key, strlen(key), ES_LATEST_EVENT));
    assert_int_equal(s.state, st);
    if (st == ES_SNAP_VALUE)
        assert_int_equal(*(int64_t *)s.value, id);
    es_snapshot_clear(&s, v);
}

static void test_sharded_usernames(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    tu_open(&ts);
    es_view_options o = ES_VIEW_OPTIONS_INIT;
    o.snapshot_every = 1;
    TU_EXPECT_OK(es_view_new(&v, ts.st, us_user_by_name(), &o));
    add_user(ts.st, 1, "Homer", "homer");
    add_user(ts.st, 2, "Homer Jr", "homerjr");
    add_user(ts.st, 3, "Bart", "bart");
    add_user(ts.st, 4, "Ho", "ho");
    expect_user(v, "7:homer", ES_SNAP_VALUE, 1);
    expect_user(v, "7:homerjr", ES_SNAP_VALUE, 2);
    expect_user(v, "7:bart", ES_SNAP_VALUE, 3);
    expect_user(v, "7:ho", ES_SNAP_VALUE, 4);
    expect_user(v, "7:hom", ES_SNAP_NONE, 0);
    expect_user(v, "7:lisa", ES_SNAP_NONE, 0);
    /* homer and homerjr share one shard ("7:hom"): one snapshot serves both */
    uint64_t before = snapshots(ts.st);
    expect_user(v, "7:homerjr", ES_SNAP_VALUE, 2);
    assert_int_equal(snapshots(ts.st), before);
    assert_int_equal(before, 4); /* shards 7:hom, 7:bar, 7:ho, 7:lis; the rest had none */
    /* renaming Homer frees "homer"; deleting Bart frees "bart" */
    add_user(ts.st, 1, "Homer", "max");
    us_event del = {.kind = US_DELETE_USER, .id = 3};
    es_buf b = ES_BUF_INIT;
    es_event_new ev;
    TU_EXPECT_OK(us_event_new(&ev, &b, &del));
    TU_EXPECT_OK(es_append(NULL, ts.st, "company/7", 9, ES_EXPECT_ANY, &ev, 1));
    es_buf_free(&b);
    expect_user(v, "7:homer", ES_SNAP_NONE, 0);
    expect_user(v, "7:max", ES_SNAP_VALUE, 1);
    expect_user(v, "7:bart", ES_SNAP_NONE, 0);
    expect_user(v, "7:homerjr", ES_SNAP_VALUE, 2);
    /* bad view keys are refused by the view's callbacks */
    es_snapshot s;
    assert_int_equal(es_view_get(&s, v, "nocolon", 7, ES_LATEST_EVENT), ES_EINVAL);
    es_view_free(v);
    tu_close(&ts);
}

static void test_view_arguments(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    es_snapshot s;
    tu_open(&ts);
    es_view_def d = fv_def("args", 1);
    assert_int_equal(es_view_new(NULL, ts.st, &d, NULL), ES_EINVAL);
    assert_int_equal(es_view_new(&v, NULL, &d, NULL), ES_EINVAL);
    es_view_def bad = d;
    bad.name = "";
    assert_int_equal(es_view_new(&v, ts.st, &bad, NULL), ES_EINVAL);
    bad = d;
    bad.name = "a-view-name-that-is-much-longer-than-sixty-four-bytes-which-is-the-limit";
    assert_int_equal(es_view_new(&v, ts.st, &bad, NULL), ES_EINVAL);
    bad = d;
    bad.apply = NULL;
    assert_int_equal(es_view_new(&v, ts.st, &bad, NULL), ES_EINVAL);
    bad = d;
    bad.version = 42;
    assert_int_equal(es_view_new(&v, ts.st, &bad, NULL), ES_EINVAL);
    bad = d;
    bad.shard_key = fv_stream_key; /* sharded without select */
    assert_int_equal(es_view_new(&v, ts.st, &bad, NULL), ES_EINVAL);
    es_view_options o = ES_VIEW_OPTIONS_INIT;
    o.keep = 1000;
    assert_int_equal(es_view_new(&v, ts.st, &d, &o), ES_EINVAL);
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, NULL));
    char big[ES_MAX_VIEW_KEY + 1];
    memset(big, 'k', sizeof big);
    assert_int_equal(es_view_get(&s, v, big, sizeof big, ES_LATEST_EVENT), ES_ETOOBIG);
    assert_int_equal(es_view_get(&s, v, NULL, 1, ES_LATEST_EVENT), ES_EINVAL);
    assert_int_equal(es_view_get(&s, v, "k", 0, ES_LATEST_EVENT), ES_EINVAL);
    assert_int_equal(es_view_get(NULL, v, "k", 1, ES_LATEST_EVENT), ES_EINVAL);
    assert_int_equal(es_view_get(&s, NULL, "k", 1, ES_LATEST_EVENT), ES_EINVAL);
    assert_int_equal(es_view_history(v, "k", 1, 1, NULL, NULL), ES_EINVAL);
    es_view_free(v);
    es_view_free(NULL);
    es_snapshot_clear(NULL, NULL);
    tu_close(&ts);
}

static int stop_at_two(const es_snapshot *s, const es_event *ev, void *payload)
{
    (void)s;
    (*(int *)payload)++;
    return ev->seq == 2 ? 1 : 0;
}

static void test_history_callback_can_stop(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    int calls = 0;
    tu_open(&ts);
    es_view_def d = fv_def("hist", 1);
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, NULL));
    append_sets(ts.st, "k", 5);
    assert_int_equal(es_view_history(v, "k", 1, 1, stop_at_two, &calls), ES_EUSER);
    assert_int_equal(calls, 2);
    es_view_free(v);
    tu_close(&ts);
}

int main(int argc, char **argv)
{
    int rc = tu_init(argc, argv, "views");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_states_none_value_deleted),
        cmocka_unit_test(test_snapshot_refresh_and_latest_snapshot_mode),
        cmocka_unit_test(test_retained_snapshots_serve_get_at),
        cmocka_unit_test(test_version_change_ignores_old_snapshots),
        cmocka_unit_test(test_get_as_of_time),
        cmocka_unit_test(test_sharded_usernames),
        cmocka_unit_test(test_view_arguments),
        cmocka_unit_test(test_history_callback_can_stop),
    };
    char name[64];
    snprintf(name, sizeof name, "views/%s", tu_backend);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
