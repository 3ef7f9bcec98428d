/*
 * alloc_fail.c — allocation-failure injection over the core calls, as
 * jansson's test_chaos.c and SQLite's malloc tests do: for N = 0, 1, 2 …
 * the Nth allocation of the library fails (es__alloc_fail_after), until a
 * run of the call makes no failure.  Every run must end in success or
 * ES_ENOMEM — never another code, a crash or a leak (the ASan build checks
 * leaks at exit) — and an append or save that failed must leave the store
 * as it was: same heads, same last position, same number of events.
 */
#define _GNU_SOURCE
#include "foldview.h"
#include "testutil.h"

#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The calls under test share one store with a few events in it. */
typedef struct fx {
    tu_store ts;
    es_view *view;
    long iteration;
} fx;

/* What must not change when a write fails. */
typedef struct store_state {
    uint64_t head_a, head_b, last_position, events;
} store_state;

static void get_state(fx *f, store_state *s)
{
    es_store_stats stats;
    TU_EXPECT_OK(es_log_catch_up(f->ts.st, 60000));
    TU_EXPECT_OK(es_stream_head(&s->head_a, f->ts.st, "a", 1));
    TU_EXPECT_OK(es_stream_head(&s->head_b, f->ts.st, "b", 1));
    TU_EXPECT_OK(es_store_stats_get(&stats, f->ts.st));
    s->last_position = stats.last_position;
    s->events = stats.events;
}

/* Run `call` with the Nth allocation failing, for every N until a run
 * makes no failure.  `writes`: a failed run must leave the store as it was. */
static void inject_each(fx *f, const char *what, int (*call)(fx *), int writes)
{
    long n;
    unsigned long failures = 0;
    for (n = 0; n < 100000; n++) {
        store_state before, after;
        if (writes)
            get_state(f, &before);
        f->iteration = n;
        es__alloc_fail_after(n);
        int rc = call(f);
        unsigned long count = es__alloc_count();
        es__alloc_fail_after(-1);
        int injected = count > (unsigned long)n;
        char msg[200];
        snprintf(msg, sizeof msg, "%s", rc ? es_error_last() : "");
        if (rc != 0 && rc != ES_ENOMEM)
            fail_msg("%s with allocation %ld failing returned %d (%s): %s", what, n, rc,
                     es_strerror(rc), es_error_last());
        if (!injected) {
            if (rc != 0)
                fail_msg("%s failed with no allocation failing: %s", what, es_error_last());
            break;
        }
        if (rc == ES_ENOMEM)
            failures++;
        if (writes && rc != 0) {
            get_state(f, &after);
            if (memcmp(&before, &after, sizeof before) != 0)
                fail_msg("%s failed at allocation %ld (%s) but changed the store: head a %llu -> "
                         "%llu, b %llu -> %llu, last position %llu -> %llu, events %llu -> %llu",
                         what, n, msg, (unsigned long long)before.head_a,
                         (unsigned long long)after.head_a, (unsigned long long)before.head_b,
                         (unsigned long long)after.head_b, (unsigned long long)before.last_position,
                         (unsigned long long)after.last_position, (unsigned long long)before.events,
                         (unsigned long long)after.events);
        }
    }
    if (n == 100000)
        fail_msg("%s still hit an injected failure after 100000 allocations", what);
    printf("    %-28s %3ld allocations, %lu of them answered ES_ENOMEM\n", what, n, failures);
    /* the store still works after all that */
    es_append_result r;
    TU_EXPECT_OK(tu_append1(f->ts.st, "a", ES_EXPECT_ANY, "Set", "after", &r));
}

/* ---- the calls ---- */

static int call_open(fx *f)
{
    char uri[600];
    es_store *st = NULL;
    if (strcmp(tu_backend, "lmdb") == 0) /* a new store each time: the create path */
        snprintf(uri, sizeof uri, "%s/open%ld", f->ts.uri, f->iteration);
    else
        snprintf(uri, sizeof uri, "%s", f->ts.uri);
    int rc = es_store_open(&st, uri, NULL);
    if (rc == 0) {
        es_event_new ev = {.type = "Set", .data = "o", .data_len = 1};
        es_append_result r;
        rc = es_append(&r, st, "o", 1, ES_EXPECT_ANY, &ev, 1);
    } else if (st) {
        fail_msg("es_store_open failed but set *out");
    }
    es_store_close(st);
    return rc;
}

static int call_append(fx *f)
{
    es_event_new ev[3] = {{.type = "Set", .data = "1", .data_len = 1},
                          {.type = "Noop", .meta = "m", .meta_len = 1},
                          {.type = "Set", .data = "2", .data_len = 1}};
    es_append_result r;
    return es_append(&r, f->ts.st, "a", 1, ES_EXPECT_ANY, ev, 3);
}

static int call_append_expected(fx *f)
{
    uint64_t head;
    int rc = es_stream_head(&head, f->ts.st, "b", 1);
    if (rc)
        return rc;
    es_event_new ev = {.type = "Set", .data = "b", .data_len = 1};
    es_append_result r;
    return es_append(&r, f->ts.st, "b", 1, head, &ev, 1);
}

static int call_append_multi(fx *f)
{
    es_event_new ea = {.type = "Set", .data = "x", .data_len = 1};
    es_event_new eb[2] = {{.type = "Set", .data = "y", .data_len = 1}, {.type = "Del"}};
    es_append_op ops[2] = {{"a", 1, ES_EXPECT_EXISTS, &ea, 1}, {"b", 1, ES_EXPECT_ANY, eb, 2}};
    es_append_result r[2];
    return es_append_multi(r, f->ts.st, ops, 2, 0);
}

/* A retry with the same event id is answered from the original. */
static int call_append_replay(fx *f)
{
    static const uint8_t id[ES_ID_SIZE] = {0x42, 0x42};
    es_event_new ev = {.type = "Set", .data = "r", .data_len = 1, .id = id};
    es_append_result r;
    return es_append(&r, f->ts.st, "a", 1, ES_EXPECT_ANY, &ev, 1);
}

static int drain(es_cursor *c, int rc)
{
    const es_event *ev;
    if (rc)
        return rc;
    while ((rc = es_cursor_next(&ev, c)) == 0)
        ;
    es_cursor_free(c);
    return rc == ES_ITEROVER ? 0 : rc;
}

static int call_stream_cursor(fx *f)
{
    es_cursor *c = NULL;
    es_read_options o = ES_READ_OPTIONS_INIT;
    int rc = drain(c, es_stream_cursor(&c, f->ts.st, "a", 1, NULL));
    if (rc)
        return rc;
    o.backward = 1;
    o.limit = 3;
    c = NULL;
    return drain(c, es_stream_cursor(&c, f->ts.st, "a", 1, &o));
}

static int call_log_cursor(fx *f)
{
    es_cursor *c = NULL;
    es_log_options o = ES_LOG_OPTIONS_INIT;
    int rc = drain(c, es_log_cursor(&c, f->ts.st, NULL));
    if (rc)
        return rc;
    o.prefix = "a";
    o.prefix_len = 1;
    o.type = "Set";
    o.from_position = 2;
    c = NULL;
    return drain(c, es_log_cursor(&c, f->ts.st, &o));
}

static int call_view_new(fx *f)
{
    es_view_def d = fv_def("alloc", 1);
    es_view_options vo = ES_VIEW_OPTIONS_INIT;
    es_view *v = NULL;
    vo.snapshot_every = 1;
    int rc = es_view_new(&v, f->ts.st, &d, &vo);
    if (rc == 0 && !v)
        fail_msg("es_view_new succeeded without a view");
    es_view_free(v);
    return rc;
}

static int call_view_get(fx *f)
{
    es_snapshot s = ES_SNAPSHOT_INIT;
    int rc = es_view_get(&s, f->view, "a", 1, ES_LATEST_EVENT);
    es_snapshot_clear(&s, f->view);
    if (rc)
        return rc;
    rc = es_view_get(&s, f->view, "b", 1, ES_LATEST_SNAPSHOT);
    es_snapshot_clear(&s, f->view);
    return rc;
}

static int call_view_get_at(fx *f)
{
    es_snapshot s = ES_SNAPSHOT_INIT;
    int rc = es_view_get_at(&s, f->view, "a", 1, 2);
    es_snapshot_clear(&s, f->view);
    if (rc)
        return rc;
    rc = es_view_get_as_of(&s, f->view, "a", 1, INT64_MAX / 2);
    es_snapshot_clear(&s, f->view);
    return rc;
}

static int count_history(const es_snapshot *snap, const es_event *ev, void *payload)
{
    (void)snap, (void)ev;
    ++*(int *)payload;
    return 0;
}

static int call_view_history(fx *f)
{
    int n = 0;
    return es_view_history(f->view, "a", 1, 1, count_history, &n);
}

static int emit_set(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    (void)snap, (void)op;
    es_event_new ev = {.type = "Set", .data = "s", .data_len = 1};
    return es_op_emit(ctx, &ev);
}

static int reject_always(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    (void)snap, (void)op;
    return es_op_reject(ctx, "no");
}

static int call_save(fx *f)
{
    es_op ops[2] = {{.run = emit_set}, {.run = emit_set}};
    es_save_result r = ES_SAVE_RESULT_INIT;
    int rc = es_save(&r, f->view, "a", 1, ops, 2, NULL);
    if (rc == 0 && r.status != ES_SAVED)
        fail_msg("save was not SAVED (%d)", (int)r.status);
    es_save_result_clear(&r, f->view);
    return rc;
}

static int call_save_rejected(fx *f)
{
    es_op ops[2] = {{.run = emit_set}, {.run = reject_always}};
    es_save_result r = ES_SAVE_RESULT_INIT;
    int rc = es_save(&r, f->view, "b", 1, ops, 2, NULL);
    if (rc == 0 && (r.status != ES_REJECTED || r.n_reasons != 1))
        fail_msg("save was not REJECTED with one reason (%d)", (int)r.status);
    es_save_result_clear(&r, f->view);
    return rc;
}

static int call_verify(fx *f)
{
    es_verify_result v;
    int rc = es_verify(&v, f->ts.st, NULL, 0);
    if (rc == 0 && !v.ok)
        fail_msg("verify said not ok: %s", v.reason);
    if (rc)
        return rc;
    rc = es_verify(&v, f->ts.st, "a", 1);
    if (rc == 0 && !v.ok)
        fail_msg("verify of a said not ok: %s", v.reason);
    return rc;
}

static int count_stream(const uint8_t *s, size_t len, uint64_t head, void *payload)
{
    (void)s, (void)len, (void)head;
    ++*(int *)payload;
    return 0;
}

static int call_streams(fx *f)
{
    int n = 0;
    int rc = es_streams(f->ts.st, NULL, 0, count_stream, &n);
    if (rc)
        return rc;
    return es_streams(f->ts.st, "a", 1, count_stream, &n);
}

static int call_stats(fx *f)
{
    es_store_stats s;
    return es_store_stats_get(&s, f->ts.st);
}

/* ---- fixture and tests ---- */

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    assert_non_null(f);
    tu_open(&f->ts);
    es_append_result r;
    for (int i = 0; i < 5; i++) {
        TU_EXPECT_OK(tu_append1(f->ts.st, "a", ES_EXPECT_ANY, i == 2 ? "Noop" : "Set", "v", &r));
        TU_EXPECT_OK(tu_append1(f->ts.st, "b", ES_EXPECT_ANY, "Set", "w", &r));
    }
    es_view_def d = fv_def("alloc", 1);
    es_view_options vo = ES_VIEW_OPTIONS_INIT;
    vo.snapshot_every = 1; /* every read persists: the snapshot paths run too */
    TU_EXPECT_OK(es_view_new(&f->view, f->ts.st, &d, &vo));
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    es__alloc_fail_after(-1);
    es_view_free(f->view);
    tu_close(&f->ts);
    free(f);
    return 0;
}

#define CASE(name, call, writes)                                                                   \
    static void test_##name(void **state)                                                          \
    {                                                                                              \
        inject_each(*state, #call, call, writes);                                                  \
    }

CASE(open_fails_cleanly, call_open, 0)
CASE(append_fails_cleanly_and_writes_nothing, call_append, 1)
CASE(append_at_expected_fails_cleanly_and_writes_nothing, call_append_expected, 1)
CASE(append_multi_fails_cleanly_and_writes_nothing, call_append_multi, 1)
CASE(append_retry_fails_cleanly_and_writes_nothing, call_append_replay, 1)
CASE(stream_cursor_fails_cleanly, call_stream_cursor, 0)
CASE(log_cursor_with_filters_fails_cleanly, call_log_cursor, 0)
CASE(view_new_fails_cleanly, call_view_new, 0)
CASE(view_get_fails_cleanly, call_view_get, 0)
CASE(view_get_at_and_as_of_fail_cleanly, call_view_get_at, 0)
CASE(view_history_fails_cleanly, call_view_history, 0)
CASE(save_fails_cleanly_and_writes_nothing, call_save, 1)
CASE(rejected_save_fails_cleanly_and_writes_nothing, call_save_rejected, 1)
CASE(verify_fails_cleanly, call_verify, 0)
CASE(streams_fails_cleanly, call_streams, 0)
CASE(stats_fail_cleanly, call_stats, 0)

int main(int argc, char **argv)
{
    int rc = tu_init(argc, argv, "alloc_fail");
    if (rc)
        return rc;
#define T(name) cmocka_unit_test_setup_teardown(test_##name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(open_fails_cleanly),
        T(append_fails_cleanly_and_writes_nothing),
        T(append_at_expected_fails_cleanly_and_writes_nothing),
        T(append_multi_fails_cleanly_and_writes_nothing),
        T(append_retry_fails_cleanly_and_writes_nothing),
        T(stream_cursor_fails_cleanly),
        T(log_cursor_with_filters_fails_cleanly),
        T(view_new_fails_cleanly),
        T(view_get_fails_cleanly),
        T(view_get_at_and_as_of_fail_cleanly),
        T(view_history_fails_cleanly),
        T(save_fails_cleanly_and_writes_nothing),
        T(rejected_save_fails_cleanly_and_writes_nothing),
        T(verify_fails_cleanly),
        T(streams_fails_cleanly),
        T(stats_fail_cleanly),
    };
    return cmocka_run_group_tests_name(tu_backend, tests, NULL, NULL);
}
