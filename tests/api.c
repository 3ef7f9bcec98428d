/*
 * api.c — the API settled before 1.0: callback codes kept apart from the
 * library's, one timeout code, option versions 1..current, ready codecs for
 * simple views (plain struct, JSON), a commit-time range on the log cursor,
 * saves that append to more than one stream, and the bound on kept times.
 * Run per backend.
 */
#include "testutil.h"

#include "users.h"

#include <eventsrc_json.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- callback codes ---- */

static int stream_fn_returns(const uint8_t *k, size_t len, uint64_t head, void *payload)
{
    (void)k, (void)len, (void)head;
    return *(int *)payload;
}

static void test_callback_codes_do_not_collide(void **state)
{
    (void)state;
    tu_store ts;
    tu_open(&ts);
    TU_EXPECT_OK(tu_append1(ts.st, "s", ES_EXPECT_ANY, "T", "x", NULL));
    /* the common -1 is not ES_EINVAL any more: it is the callback's own */
    int r = -1;
    assert_int_equal(es_streams(ts.st, NULL, 0, stream_fn_returns, &r), ES_EUSER);
    assert_non_null(strstr(es_error_last(), "-1"));
    r = 7;
    assert_int_equal(es_streams(ts.st, NULL, 0, stream_fn_returns, &r), ES_EUSER);
    r = -22; /* an errno-style value */
    assert_int_equal(es_streams(ts.st, NULL, 0, stream_fn_returns, &r), ES_EUSER);
    /* a library code handed back by a callback passes through as is */
    r = ES_ENOMEM;
    assert_int_equal(es_streams(ts.st, NULL, 0, stream_fn_returns, &r), ES_ENOMEM);
    r = ES_ETIMEDOUT;
    assert_int_equal(es_streams(ts.st, NULL, 0, stream_fn_returns, &r), ES_ETIMEDOUT);
    tu_close(&ts);
}

static void test_error_band_is_generated_from_the_map(void **state)
{
    (void)state;
    /* every code of the map is in the band and has its own message */
    static const struct {
        int code;
        const char *msg;
    } map[] = {
#define ROW(name, code, msg) {ES_##name, msg},
        ES_ERRNO_MAP(ROW)
#undef ROW
    };
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++) {
        assert_true(ES_IS_ERRNO(map[i].code));
        assert_string_equal(es_strerror(map[i].code), map[i].msg);
        assert_int_equal(map[i].code, ES_ERRNO_BASE - 1 - (int)i); /* dense */
    }
    assert_int_equal(ES__ERRNO_LAST, ES_EPOISON - 1);
    assert_false(ES_IS_ERRNO(0));
    assert_false(ES_IS_ERRNO(-1));
    assert_false(ES_IS_ERRNO(ES__ERRNO_LAST));
    assert_false(ES_IS_ERRNO(ES_ERRNO_BASE));
    assert_string_equal(es_strerror(-1), "unknown error");
    assert_true(ES_VERSION_CHECK(0, 0, 1));
    assert_true(ES_VERSION_CHECK(ES_VERSION_MAJOR, ES_VERSION_MINOR, ES_VERSION_PATCH));
    assert_false(ES_VERSION_CHECK(ES_VERSION_MAJOR + 1, 0, 0));
}

/* ---- timeouts ---- */

static void test_wait_times_out_with_one_code(void **state)
{
    (void)state;
    tu_store ts;
    tu_open(&ts);
    uint64_t last;
    TU_EXPECT_OK(es_store_last_position(&last, ts.st));
    assert_int_equal(es_log_wait(ts.st, last, 20), ES_ETIMEDOUT);
    assert_int_equal(es_error_last_code(), ES_ETIMEDOUT);
    TU_EXPECT_OK(tu_append1(ts.st, "s", ES_EXPECT_ANY, "T", "x", NULL));
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    TU_EXPECT_OK(es_log_wait(ts.st, last, 60000));
    tu_close(&ts);
}

/* ---- option versions ---- */

/* What a caller compiled against version 1 of es_log_options passes. */
typedef struct log_options_v1 {
    unsigned version;
    uint64_t from_position;
    const void *prefix;
    size_t prefix_len;
    const char *type;
    uint64_t limit;
} log_options_v1;

static void test_option_versions(void **state)
{
    (void)state;
    tu_store ts;
    es_cursor *c;
    const es_event *ev;
    tu_open(&ts);
    for (int i = 0; i < 3; i++)
        TU_EXPECT_OK(tu_append1(ts.st, i == 1 ? "b" : "a", ES_EXPECT_ANY, "T", "x", NULL));
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));

    es_read_options ro = ES_READ_OPTIONS_INIT;
    ro.version = 0;
    assert_int_equal(es_stream_cursor(&c, ts.st, "a", 1, &ro), ES_EINVAL);
    ro.version = ES_READ_OPTIONS_VERSION + 1;
    assert_int_equal(es_stream_cursor(&c, ts.st, "a", 1, &ro), ES_EINVAL);
    assert_non_null(strstr(es_error_last(), "es_read_options"));

    /* an older caller's smaller struct is read only as far as it goes */
    log_options_v1 *v1 = malloc(sizeof *v1); /* exactly its size: ASan sees any overread */
    assert_non_null(v1);
    memset(v1, 0, sizeof *v1);
    v1->version = 1;
    v1->prefix = "a";
    v1->prefix_len = 1;
    TU_EXPECT_OK(es_log_cursor(&c, ts.st, (const es_log_options *)v1));
    int n = 0;
    while (es_cursor_next(&ev, c) == 0)
        n++;
    assert_int_equal(n, 2);
    es_cursor_free(c);
    free(v1);

    es_log_options lo = ES_LOG_OPTIONS_INIT;
    lo.version = ES_LOG_OPTIONS_VERSION + 1;
    assert_int_equal(es_log_cursor(&c, ts.st, &lo), ES_EINVAL);
    tu_close(&ts);
}

/* ---- result structs can grow ---- */

static void test_result_reserved_fields_are_zero(void **state)
{
    (void)state;
    tu_store ts;
    tu_open(&ts);
    es_append_result r;
    memset(&r, 0xab, sizeof r);
    TU_EXPECT_OK(tu_append1(ts.st, "s", ES_EXPECT_ANY, "T", "x", &r));
    for (size_t i = 0; i < sizeof r.reserved_ / sizeof r.reserved_[0]; i++)
        assert_int_equal(r.reserved_[i], 0);
    es_store_stats s;
    memset(&s, 0xab, sizeof s);
    TU_EXPECT_OK(es_store_stats_get(&s, ts.st));
    for (size_t i = 0; i < sizeof s.reserved_ / sizeof s.reserved_[0]; i++)
        assert_int_equal(s.reserved_[i], 0);
    es_verify_result vr;
    memset(&vr, 0xab, sizeof vr);
    TU_EXPECT_OK(es_verify(&vr, ts.st, NULL, 0));
    assert_int_equal(vr.ok, 1);
    for (size_t i = 0; i < sizeof vr.reserved_ / sizeof vr.reserved_[0]; i++)
        assert_int_equal(vr.reserved_[i], 0);
    tu_close(&ts);
}

/* ---- views with ready codecs ---- */

typedef struct counter {
    uint64_t events;
    int64_t sum;
} counter;

static int count_apply(void *acc, const es_event *ev, const uint8_t *fkey, size_t fkey_len,
                       void *payload)
{
    (void)fkey, (void)fkey_len;
    counter *c = acc;
    (*(int *)payload)++;
    if (ev->type_len == 3 && memcmp(ev->type, "Del", 3) == 0)
        return ES_FOLD_DELETED;
    c->events++;
    char num[32]; /* event data is not NUL-terminated */
    size_t n = ev->data_len < sizeof num - 1 ? ev->data_len : sizeof num - 1;
    memcpy(num, ev->data, n);
    num[n] = 0;
    c->sum += strtoll(num, NULL, 10);
    return ES_FOLD_CHANGED;
}

/* A plain-struct view (value_size, no codec) counting and summing events;
 * *applied counts the events it folded. */
static es_view_def counter_def(const char *name, int *applied)
{
    es_view_def d = {.version = ES_VIEW_DEF_VERSION,
                     .name = name,
                     .view_version = 1,
                     .apply = count_apply,
                     .payload = applied,
                     .value_size = sizeof(counter)};
    return d;
}

static void append_numbers(es_store *st, const char *stream, int from, int to)
{
    for (int i = from; i <= to; i++) {
        char d[16];
        snprintf(d, sizeof d, "%d", i);
        TU_EXPECT_OK(tu_append1(st, stream, ES_EXPECT_ANY, "Add", d, NULL));
    }
}

static void free_counter(void *acc, void *payload)
{
    (void)payload;
    free(acc);
}

static void test_plain_struct_view(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    es_snapshot s = ES_SNAPSHOT_INIT;
    int applied = 0;
    tu_open(&ts);
    es_view_def d = counter_def("counter", &applied);
    es_view_options vo = ES_VIEW_OPTIONS_INIT;
    vo.snapshot_every = 5;
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, &vo));
    append_numbers(ts.st, "nums", 1, 10);
    TU_EXPECT_OK(es_view_get(&s, v, "nums", 4, ES_LATEST_EVENT));
    assert_int_equal(s.state, ES_SNAP_VALUE);
    assert_int_equal(((counter *)s.value)->events, 10);
    assert_int_equal(((counter *)s.value)->sum, 55);
    es_snapshot_clear(&s, v);
    /* the persisted snapshot is decoded, so only newer events are folded */
    append_numbers(ts.st, "nums", 11, 12);
    applied = 0;
    TU_EXPECT_OK(es_view_get(&s, v, "nums", 4, ES_LATEST_EVENT));
    assert_int_equal(((counter *)s.value)->sum, 78);
    assert_int_equal(applied, 2);
    es_snapshot_clear(&s, v);
    TU_EXPECT_OK(es_view_get_at(&s, v, "nums", 4, 3));
    assert_int_equal(((counter *)s.value)->sum, 6);
    es_snapshot_clear(&s, v);
    TU_EXPECT_OK(tu_append1(ts.st, "nums", ES_EXPECT_ANY, "Del", "", NULL));
    TU_EXPECT_OK(es_view_get(&s, v, "nums", 4, ES_LATEST_EVENT));
    assert_int_equal(s.state, ES_SNAP_DELETED);
    es_snapshot_clear(&s, v);
    es_view_free(v);

    /* a snapshot of another size is not read as this struct */
    es_view_def d2 = d;
    d2.value_size = sizeof(counter) + 8;
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d2, &vo));
    assert_int_equal(es_view_get(&s, v, "nums", 4, ES_LATEST_SNAPSHOT), ES_ECORRUPT);
    assert_non_null(strstr(es_error_last(), "change view_version")); /* the library's message */
    es_view_free(v);

    /* value_size and codec callbacks together are refused */
    d2 = d;
    d2.free_value = free_counter;
    assert_int_equal(es_view_new(&v, ts.st, &d2, NULL), ES_EINVAL);
    d2 = d;
    d2.value_size = 0;
    assert_int_equal(es_view_new(&v, ts.st, &d2, NULL), ES_EINVAL);
    tu_close(&ts);
}

static int json_apply(void *acc, const es_event *ev, const uint8_t *fkey, size_t fkey_len,
                      void *payload)
{
    (void)fkey, (void)fkey_len, (void)payload;
    json_t *o = acc;
    json_t *patch = json_loadb((const char *)ev->data, ev->data_len, 0, NULL);
    if (!patch)
        return ES_EINVAL;
    json_object_update(o, patch);
    json_decref(patch);
    return ES_FOLD_CHANGED;
}

static void test_json_view(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    es_snapshot s = ES_SNAPSHOT_INIT;
    tu_open(&ts);
    es_view_def d = {
        .version = ES_VIEW_DEF_VERSION, .name = "user", .view_version = 1, .apply = json_apply};
    es_view_def_use_json(&d);
    es_view_options vo = ES_VIEW_OPTIONS_INIT;
    vo.snapshot_every = 1;
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, &vo));
    TU_EXPECT_OK(tu_append1(ts.st, "user/1", ES_EXPECT_NO_STREAM, "Set",
                            "{\"name\":\"homer\",\"age\":39}", NULL));
    TU_EXPECT_OK(tu_append1(ts.st, "user/1", 1, "Set", "{\"age\":40}", NULL));
    TU_EXPECT_OK(es_view_get(&s, v, "user/1", 6, ES_LATEST_EVENT));
    json_t *o = s.value;
    assert_string_equal(json_string_value(json_object_get(o, "name")), "homer");
    assert_int_equal(json_integer_value(json_object_get(o, "age")), 40);
    es_snapshot_clear(&s, v);
    /* from the persisted snapshot alone (decoded JSON) */
    TU_EXPECT_OK(es_view_get(&s, v, "user/1", 6, ES_LATEST_SNAPSHOT));
    assert_int_equal(s.seq, 2);
    assert_int_equal(json_integer_value(json_object_get(s.value, "age")), 40);
    es_snapshot_clear(&s, v);
    /* an apply error (a plain -1 style code from jansson-land) stops the get */
    TU_EXPECT_OK(tu_append1(ts.st, "user/1", 2, "Set", "not json", NULL));
    assert_int_equal(es_view_get(&s, v, "user/1", 6, ES_LATEST_EVENT), ES_EINVAL);
    es_view_free(v);
    tu_close(&ts);
}

/* ---- the log cursor's commit-time range ---- */

typedef struct logged {
    uint64_t position;
    int64_t time_us;
    char stream[8];
} logged;

static void test_log_time_range(void **state)
{
    (void)state;
    tu_store ts;
    es_cursor *c;
    const es_event *ev;
    enum { N = 200 };
    static logged all[N];
    uint64_t rnd = tu_seed;
    tu_open(&ts);
    for (int i = 0; i < N; i++) {
        char k[8];
        snprintf(k, sizeof k, "s/%d", (int)tu_rand_below(&rnd, 7));
        TU_EXPECT_OK(tu_append1(ts.st, k, ES_EXPECT_ANY, i % 3 ? "A" : "B", "x", NULL));
    }
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    TU_EXPECT_OK(es_log_cursor(&c, ts.st, NULL));
    int n = 0;
    while (es_cursor_next(&ev, c) == 0) {
        assert_true(n < N);
        all[n].position = ev->position;
        all[n].time_us = ev->time_us;
        memcpy(all[n].stream, ev->stream, ev->stream_len);
        all[n].stream[ev->stream_len] = 0;
        n++;
    }
    es_cursor_free(c);
    assert_int_equal(n, N);
    /* random ranges (and edges: before everything, after everything, one
     * event), each compared with a filter over the whole log */
    for (int round = 0; round < 60; round++) {
        int64_t lo = all[0].time_us - 5, hi = all[N - 1].time_us + 5;
        int64_t from = 0, to = 0;
        if (round == 1)
            from = hi; /* past the end */
        else if (round == 2)
            to = lo; /* before the start */
        else if (round == 3)
            from = to = all[N / 2].time_us;
        else if (round > 3) {
            from = lo + (int64_t)tu_rand_below(&rnd, (uint64_t)(hi - lo));
            to = from + (int64_t)tu_rand_below(&rnd, (uint64_t)(hi - lo));
            if (round % 4 == 0)
                from = 0;
            if (round % 5 == 0)
                to = 0;
        }
        es_log_options lo_ = ES_LOG_OPTIONS_INIT;
        lo_.from_time_us = from;
        lo_.to_time_us = to;
        if (round % 3 == 0) {
            lo_.prefix = "s/1";
            lo_.prefix_len = 3;
        }
        TU_EXPECT_OK(es_log_cursor(&c, ts.st, &lo_));
        int j = 0;
        for (int i = 0; i < N; i++) {
            if ((from && all[i].time_us < from) || (to && all[i].time_us > to))
                continue;
            if (lo_.prefix && strncmp(all[i].stream, "s/1", 3) != 0)
                continue;
            int rc = es_cursor_next(&ev, c);
            if (rc != 0)
                fail_msg("round %d: ended at %d, expected position %llu", round, j,
                         (unsigned long long)all[i].position);
            assert_int_equal(ev->position, all[i].position);
            j++;
        }
        assert_int_equal(es_cursor_next(&ev, c), ES_ITEROVER);
        es_cursor_free(c);
    }
    es_log_options bad = ES_LOG_OPTIONS_INIT;
    bad.from_time_us = 10;
    bad.to_time_us = 5;
    assert_int_equal(es_log_cursor(&c, ts.st, &bad), ES_EINVAL);
    bad.from_time_us = -1;
    bad.to_time_us = 0;
    assert_int_equal(es_log_cursor(&c, ts.st, &bad), ES_EINVAL);
    tu_close(&ts);
}

/* ---- saves that append to more than one stream ---- */

/* A user's stream "user/<id>" (view key = stream key) and a claim stream
 * "username/<name>" per username.  The operation checks the claim stream
 * itself each time it runs. */
typedef struct claim_op {
    es_store *st;
    const char *username;
} claim_op;

static int claim_run(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    const claim_op *c = op->payload;
    char claim[64];
    uint64_t head;
    int rc;
    (void)snap;
    snprintf(claim, sizeof claim, "username/%s", c->username);
    if ((rc = es_stream_head(&head, c->st, claim, strlen(claim))) < 0)
        return rc;
    if (head)
        return es_op_reject(ctx, "username taken");
    es_event_new claimed = {
        .type = "Claimed", .data = c->username, .data_len = strlen(c->username)};
    es_event_new created = {.type = "Set", .data = c->username, .data_len = strlen(c->username)};
    if ((rc = es_op_emit_to(ctx, claim, strlen(claim), ES_EXPECT_NO_STREAM, &claimed)) < 0)
        return rc;
    return es_op_emit(ctx, &created);
}

typedef struct racer {
    claim_op *claim;
    int runs;
} racer;

static int racing_run(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    racer *r = op->payload;
    es_op inner = {claim_run, r->claim, NULL, 0, 0};
    int rc = claim_run(ctx, snap, &inner);
    if (++r->runs == 1 && rc == 0) {
        /* another writer claims the name right after this run looked */
        char claim[64];
        snprintf(claim, sizeof claim, "username/%s", r->claim->username);
        rc = tu_append1(r->claim->st, claim, ES_EXPECT_NO_STREAM, "Claimed", "other", NULL);
    }
    return rc;
}

static void test_save_across_streams(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    int applied = 0;
    tu_open(&ts);
    es_view_def d = counter_def("u", &applied);
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, NULL));
    claim_op homer = {ts.st, "homer"};
    es_op op = {claim_run, &homer, NULL, 0, 0};
    es_save_result r = ES_SAVE_RESULT_INIT;
    TU_EXPECT_OK(es_save(&r, v, "user/1", 6, &op, 1, NULL));
    assert_int_equal(r.status, ES_SAVED);
    assert_int_equal(r.last_seq, 1);
    es_save_result_clear(&r, v);
    uint64_t h1, h2;
    TU_EXPECT_OK(es_stream_head(&h1, ts.st, "username/homer", 14));
    TU_EXPECT_OK(es_stream_head(&h2, ts.st, "user/1", 6));
    assert_int_equal(h1, 1);
    assert_int_equal(h2, 1);
    /* both events in one commit: same time, adjacent positions */
    es_cursor *c;
    const es_event *ev;
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    TU_EXPECT_OK(es_log_cursor(&c, ts.st, NULL));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    int64_t t = ev->time_us;
    uint64_t p = ev->position;
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    assert_int_equal(ev->time_us, t);
    assert_int_equal(ev->position, p + 1);
    es_cursor_free(c);

    /* another user wants the same name: rejected, nothing written */
    TU_EXPECT_OK(es_save(&r, v, "user/2", 6, &op, 1, NULL));
    assert_int_equal(r.status, ES_REJECTED);
    assert_string_equal(r.reasons[0], "username taken");
    es_save_result_clear(&r, v);
    TU_EXPECT_OK(es_stream_head(&h2, ts.st, "user/2", 6));
    assert_int_equal(h2, 0);

    /* a claim taken between the check and the append (another writer gets
     * in after the operation looked): the save conflicts, runs again, sees
     * the claim and rejects; the user's stream stays empty */
    claim_op bart = {ts.st, "bart"};
    racer bart_racer = {&bart, 0};
    es_op racing = {racing_run, &bart_racer, NULL, 0, 0};
    TU_EXPECT_OK(es_save(&r, v, "user/3", 6, &racing, 1, NULL));
    assert_int_equal(r.status, ES_REJECTED);
    assert_int_equal(r.retries, 1);
    assert_int_equal(bart_racer.runs, 2);
    es_save_result_clear(&r, v);
    TU_EXPECT_OK(es_stream_head(&h2, ts.st, "user/3", 6));
    assert_int_equal(h2, 0);
    TU_EXPECT_OK(es_stream_head(&h1, ts.st, "username/bart", 13));
    assert_int_equal(h1, 1); /* only the other writer's claim */
    es_view_free(v);
    tu_close(&ts);
}

/* An operation that emits to another stream at a fixed expectation that is
 * wrong on the first run only: the save must retry, not half-write. */
typedef struct flaky {
    int runs;
} flaky;

static int flaky_run(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    flaky *f = op->payload;
    (void)snap;
    f->runs++;
    es_event_new e = {.type = "E", .data = "1", .data_len = 1};
    /* first run expects "other" to be empty, but it has one event */
    int rc = es_op_emit_to(ctx, "other", 5, f->runs == 1 ? ES_EXPECT_NO_STREAM : 1, &e);
    if (rc < 0)
        return rc;
    return es_op_emit(ctx, &e);
}

static void test_save_other_stream_conflict_retries(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    int applied = 0;
    tu_open(&ts);
    es_view_def d = counter_def("f", &applied);
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, NULL));
    TU_EXPECT_OK(tu_append1(ts.st, "other", ES_EXPECT_NO_STREAM, "E", "0", NULL));
    flaky f = {0};
    es_op op = {flaky_run, &f, NULL, 0, 0};
    es_save_result r = ES_SAVE_RESULT_INIT;
    TU_EXPECT_OK(es_save(&r, v, "mine", 4, &op, 1, NULL));
    assert_int_equal(r.status, ES_SAVED);
    assert_int_equal(r.retries, 1);
    assert_int_equal(f.runs, 2);
    es_save_result_clear(&r, v);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, ts.st, "other", 5));
    assert_int_equal(h, 2);
    TU_EXPECT_OK(es_stream_head(&h, ts.st, "mine", 4));
    assert_int_equal(h, 1);

    es_view_free(v);
    tu_close(&ts);
}

static int own_stream_run(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    (void)snap, (void)op;
    es_event_new e = {.type = "E"};
    return es_op_emit_to(ctx, "mine", 4, ES_EXPECT_ANY, &e);
}

/* An operation that goes back to a stream it already emitted to (A, B, A):
 * the stream's first event sets its expectation, the later one follows. */
static int back_and_forth_run(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    (void)snap, (void)op;
    es_event_new e = {.type = "E", .data = "1", .data_len = 1};
    int rc;
    if ((rc = es_op_emit_to(ctx, "A", 1, ES_EXPECT_NO_STREAM, &e)) < 0 ||
        (rc = es_op_emit_to(ctx, "B", 1, ES_EXPECT_NO_STREAM, &e)) < 0 ||
        (rc = es_op_emit_to(ctx, "A", 1, ES_EXPECT_NO_STREAM, &e)) < 0)
        return rc;
    return es_op_emit(ctx, &e);
}

static void test_emit_to_a_stream_twice(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    int applied = 0;
    tu_open(&ts);
    es_view_def d = counter_def("f", &applied);
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, NULL));
    es_op op = {back_and_forth_run, NULL, NULL, 0, 0};
    es_save_result r = ES_SAVE_RESULT_INIT;
    es_save_options so = ES_SAVE_OPTIONS_INIT;
    so.max_attempts = 2;
    TU_EXPECT_OK(es_save(&r, v, "mine", 4, &op, 1, &so));
    assert_int_equal(r.status, ES_SAVED);
    assert_int_equal(r.retries, 0);
    es_save_result_clear(&r, v);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, ts.st, "A", 1));
    assert_int_equal(h, 2);
    TU_EXPECT_OK(es_stream_head(&h, ts.st, "B", 1));
    assert_int_equal(h, 1);
    /* a second save: A exists now, so its first expectation fails → rejected
     * only after the bounded retries, nothing written */
    TU_EXPECT_OK(es_save(&r, v, "mine", 4, &op, 1, &so));
    assert_int_equal(r.status, ES_GAVE_UP);
    es_save_result_clear(&r, v);
    TU_EXPECT_OK(es_stream_head(&h, ts.st, "A", 1));
    assert_int_equal(h, 2);
    es_view_free(v);
    tu_close(&ts);
}

/* A retry of an append with a kept time is answered from the original even
 * when the store's clock has since gone back by more than the bound. */
static void test_kept_time_replay_whatever_the_clock(void **state)
{
    (void)state;
    tu_store ts;
    tu_open(&ts);
    static const uint8_t id[ES_ID_SIZE] = {7, 7, 7};
    es_event_new e = {.type = "T", .data = "x", .data_len = 1, .id = id};
    e.time_us = ts.clock_now + ES_MAX_TIME_AHEAD_US / 2;
    es_append_result r1, r2;
    TU_EXPECT_OK(es_append_ex(&r1, ts.st, "s", 1, ES_EXPECT_NO_STREAM, &e, 1, ES_APPEND_KEEP_TIME));
    ts.clock_now -= 2 * ES_MAX_TIME_AHEAD_US;
    TU_EXPECT_OK(es_append_ex(&r2, ts.st, "s", 1, ES_EXPECT_NO_STREAM, &e, 1, ES_APPEND_KEEP_TIME));
    assert_int_equal(r2.replayed, 1);
    assert_int_equal(r2.first_position, r1.first_position);
    tu_close(&ts);
}

static void test_emit_to_own_stream_is_refused(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    int applied = 0;
    tu_open(&ts);
    es_view_def d = counter_def("f", &applied);
    TU_EXPECT_OK(es_view_new(&v, ts.st, &d, NULL));
    es_op op = {own_stream_run, NULL, NULL, 0, 0};
    es_save_result r = ES_SAVE_RESULT_INIT;
    assert_int_equal(es_save(&r, v, "mine", 4, &op, 1, NULL), ES_EINVAL);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, ts.st, "mine", 4));
    assert_int_equal(h, 0);
    assert_int_equal(es_op_emit_to(NULL, "x", 1, 0, NULL), ES_EINVAL);
    es_view_free(v);
    tu_close(&ts);
}

/* ---- the users example, the second way ---- */

static int save_claimed(es_view *v, es_store *st, int64_t id, const char *name,
                        const char *username)
{
    us_user u = {.id = id};
    snprintf(u.name, sizeof u.name, "%s", name);
    snprintf(u.username, sizeof u.username, "%s", username);
    es_save_result r = ES_SAVE_RESULT_INIT;
    int rc = us_save_user_claimed(&r, v, st, 1, &u, NULL);
    if (rc == 0)
        rc = r.status == ES_SAVED ? 0 : r.status == ES_REJECTED ? 1 : 2;
    es_save_result_clear(&r, v);
    return rc;
}

typedef struct claimer {
    es_view *v;
    es_store *st;
    int64_t id;
    int result;
} claimer;

static void *claim_thread(void *arg)
{
    claimer *c = arg;
    c->result = save_claimed(c->v, c->st, c->id, "Maggie", "maggie");
    return NULL;
}

static void test_users_with_claim_streams(void **state)
{
    (void)state;
    tu_store ts;
    es_view *v;
    es_snapshot s = ES_SNAPSHOT_INIT;
    tu_open(&ts);
    TU_EXPECT_OK(es_view_new(&v, ts.st, us_user_by_stream(), NULL));
    assert_int_equal(save_claimed(v, ts.st, 1, "Homer", "homer"), 0);
    assert_int_equal(save_claimed(v, ts.st, 2, "Bart", "homer"), 1);    /* taken */
    assert_int_equal(save_claimed(v, ts.st, 1, "Homer J", "homer"), 0); /* same user: fine */
    assert_int_equal(save_claimed(v, ts.st, 1, "Homer", "homer2"), 0);  /* rename frees it */
    assert_int_equal(save_claimed(v, ts.st, 2, "Bart", "homer"), 0);
    assert_int_equal(save_claimed(v, ts.st, 1, "Homer", "homer"), 1);
    TU_EXPECT_OK(es_view_get(&s, v, "company/1/user/1", 16, ES_LATEST_EVENT));
    assert_string_equal(((us_user *)s.value)->username, "homer2");
    es_snapshot_clear(&s, v);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, ts.st, "company/1/username/homer", 24));
    assert_int_equal(h, 3); /* claimed by 1, released by 1, claimed by 2 */

    /* racing claims of one name by four users: exactly one wins */
    claimer c[4];
    pthread_t th[4];
    for (int i = 0; i < 4; i++) {
        c[i] = (claimer){v, ts.st, 10 + i, -1};
        assert_int_equal(pthread_create(&th[i], NULL, claim_thread, &c[i]), 0);
    }
    int won = 0, lost = 0;
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        won += c[i].result == 0;
        lost += c[i].result == 1;
    }
    assert_int_equal(won, 1);
    assert_int_equal(lost, 3);
    TU_EXPECT_OK(es_stream_head(&h, ts.st, "company/1/username/maggie", 25));
    assert_int_equal(h, 1);

    /* the audit question over the log, with a time range */
    es_buf buf = ES_BUF_INIT;
    es_event_new ev;
    us_event e = {.kind = US_SET_API_KEY, .id = 1};
    strcpy(e.key, "k1");
    TU_EXPECT_OK(us_event_new(&ev, &buf, &e));
    es_append_result r1, r2;
    TU_EXPECT_OK(es_append(&r1, ts.st, "company/1/user/1", 16, ES_EXPECT_ANY, &ev, 1));
    TU_EXPECT_OK(es_append(&r2, ts.st, "company/1/user/1", 16, ES_EXPECT_ANY, &ev, 1));
    TU_EXPECT_OK(es_append(NULL, ts.st, "company/10/user/1", 17, ES_EXPECT_ANY, &ev, 1));
    es_buf_free(&buf);
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    uint64_t n;
    TU_EXPECT_OK(us_count_api_key_changes_log(&n, ts.st, 1, 0));
    assert_int_equal(n, 2);
    TU_EXPECT_OK(us_count_api_key_changes_log(&n, ts.st, 1, r2.time_us));
    assert_int_equal(n, 1);
    TU_EXPECT_OK(us_count_api_key_changes_log(&n, ts.st, 1, r2.time_us + 1));
    assert_int_equal(n, 0);
    es_view_free(v);
    tu_close(&ts);
}

/* ---- kept times are bounded ---- */

static void test_kept_time_bounded(void **state)
{
    (void)state;
    tu_store ts;
    tu_open(&ts);
    es_event_new e = {.type = "T", .data = "x", .data_len = 1};
    es_append_result r;
    e.time_us = INT64_MAX;
    assert_int_equal(es_append_ex(&r, ts.st, "s", 1, ES_EXPECT_ANY, &e, 1, ES_APPEND_KEEP_TIME),
                     ES_EINVAL);
    e.time_us = ts.clock_now + 2 * ES_MAX_TIME_AHEAD_US;
    assert_int_equal(es_append_ex(&r, ts.st, "s", 1, ES_EXPECT_ANY, &e, 1, ES_APPEND_KEEP_TIME),
                     ES_EINVAL);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, ts.st, "s", 1));
    assert_int_equal(h, 0);
    /* within the day: accepted, and the next commit is not before it */
    e.time_us = ts.clock_now + ES_MAX_TIME_AHEAD_US / 2;
    TU_EXPECT_OK(es_append_ex(&r, ts.st, "s", 1, ES_EXPECT_ANY, &e, 1, ES_APPEND_KEEP_TIME));
    assert_int_equal(r.time_us, e.time_us);
    es_append_result r2;
    TU_EXPECT_OK(tu_append1(ts.st, "s", ES_EXPECT_ANY, "T", "y", &r2));
    assert_true(r2.time_us >= r.time_us);
    assert_int_equal(es_append_ex(&r, ts.st, "s", 1, ES_EXPECT_ANY, &e, 1, 0x80), ES_EINVAL);
    tu_close(&ts);
}

int main(int argc, char **argv)
{
    int rc = tu_init(argc, argv, "api");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_callback_codes_do_not_collide),
        cmocka_unit_test(test_error_band_is_generated_from_the_map),
        cmocka_unit_test(test_wait_times_out_with_one_code),
        cmocka_unit_test(test_option_versions),
        cmocka_unit_test(test_result_reserved_fields_are_zero),
        cmocka_unit_test(test_plain_struct_view),
        cmocka_unit_test(test_json_view),
        cmocka_unit_test(test_log_time_range),
        cmocka_unit_test(test_save_across_streams),
        cmocka_unit_test(test_save_other_stream_conflict_retries),
        cmocka_unit_test(test_emit_to_own_stream_is_refused),
        cmocka_unit_test(test_emit_to_a_stream_twice),
        cmocka_unit_test(test_kept_time_replay_whatever_the_clock),
        cmocka_unit_test(test_users_with_claim_streams),
        cmocka_unit_test(test_kept_time_bounded),
    };
    char name[64];
    snprintf(name, sizeof name, "api/%s", tu_backend);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
