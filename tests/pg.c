/*
 * pg.c — what only the shared PostgreSQL store must show: the global log
 * never skips an event while writers commit out of order; a server restart
 * mid-run loses nothing acknowledged and later calls reconnect; a server
 * that is down is a clear "unavailable"; every value travels as a
 * parameter, byte for byte; many processes may create the schema at once;
 * es_log_wait wakes on LISTEN/NOTIFY and, without it, by polling.
 *
 * Needs ES_TEST_PG_URI (else it reports itself skipped).  The restart test
 * also needs ES_TEST_PG_RESTART, a shell command that restarts the server
 * (scripts/test.sh gives it); without it that one test is skipped.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "backend/pg_internal.h" /* the URI parser, a connection of the pool */

#include <fcntl.h>
#include <signal.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static unsigned uri_counter;

/* A URI for a fresh schema that several handles can share. */
static void shared_uri(char *out, size_t cap, const char *extra)
{
    const char *base = getenv("ES_TEST_PG_URI");
    snprintf(out, cap, "%s%sschema=tpg_%d_%u%s%s", base, strchr(base, '?') ? "&" : "?",
             (int)getpid(), ++uri_counter, extra ? "&" : "", extra ? extra : "");
}

static void open_uri(es_store **st, const char *uri)
{
    int rc = es_store_open(st, uri, NULL);
    if (rc)
        fail_msg("open %s: %s", uri, es_error_last());
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000};
    nanosleep(&ts, NULL);
}

/* ---- the log never skips ---- */

#define WRITERS 4
#define PER_WRITER 60

typedef struct writer {
    char uri[600];
    int index;
    uint64_t positions[PER_WRITER];
    uint64_t ack_order[PER_WRITER]; /* global acknowledgement sequence number */
} writer;

static uint64_t ack_counter;
static pthread_mutex_t ack_lock = PTHREAD_MUTEX_INITIALIZER;

static void *write_with_delays(void *arg)
{
    writer *w = arg;
    es_store *st;
    if (es_store_open(&st, w->uri, NULL) != 0) {
        fprintf(stderr, "writer %d: %s\n", w->index, es_error_last());
        return (void *)1;
    }
    for (int i = 0; i < PER_WRITER; i++) {
        char stream[32], data[32];
        snprintf(stream, sizeof stream, "w%d-%d", w->index, i % 3);
        snprintf(data, sizeof data, "%d/%d", w->index, i);
        es_event_new ev = {.type = "Tick", .data = data, .data_len = strlen(data)};
        es_append_result r;
        if (es_append(&r, st, stream, strlen(stream), ES_EXPECT_ANY, &ev, 1) != 0) {
            fprintf(stderr, "writer %d: %s\n", w->index, es_error_last());
            es_store_close(st);
            return (void *)1;
        }
        pthread_mutex_lock(&ack_lock);
        w->ack_order[i] = ++ack_counter;
        pthread_mutex_unlock(&ack_lock);
        w->positions[i] = r.first_position;
    }
    es_store_close(st);
    return NULL;
}

typedef struct seen {
    uint64_t *pos;
    size_t n, cap;
} seen;

static void seen_add(seen *s, uint64_t p)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 256;
        s->pos = realloc(s->pos, s->cap * sizeof *s->pos);
        assert_non_null(s->pos);
    }
    s->pos[s->n++] = p;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_log_never_skips_while_writers_commit_out_of_order(void **state)
{
    (void)state;
    char uri[512], wuri[600];
    /* writers sleep a random 0..40 ms inside each append's transaction */
    shared_uri(uri, sizeof uri, NULL);
    snprintf(wuri, sizeof wuri, "%s&commit_delay_ms=40", uri);
    es_store *reader;
    open_uri(&reader, uri);

    static writer ws[WRITERS];
    pthread_t th[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        memset(&ws[i], 0, sizeof ws[i]);
        snprintf(ws[i].uri, sizeof ws[i].uri, "%s", wuri);
        ws[i].index = i;
        assert_int_equal(pthread_create(&th[i], NULL, write_with_delays, &ws[i]), 0);
    }

    /* tail the log while they write: a cursor from just past the last seen
     * position, then wait for more */
    seen tail = {0};
    uint64_t next = 1, prev = 0;
    size_t want = WRITERS * PER_WRITER;
    time_t give_up = time(NULL) + 120;
    while (tail.n < want && time(NULL) < give_up) {
        es_log_options o = ES_LOG_OPTIONS_INIT;
        o.from_position = next;
        es_cursor *c;
        const es_event *ev;
        int rc;
        TU_EXPECT_OK(es_log_cursor(&c, reader, &o));
        while ((rc = es_cursor_next(&ev, c)) == 0) {
            if (ev->position <= prev)
                fail_msg("log went back: %llu after %llu", (unsigned long long)ev->position,
                         (unsigned long long)prev);
            prev = ev->position;
            seen_add(&tail, ev->position);
            next = ev->position + 1;
        }
        assert_int_equal(rc, ES_ITEROVER);
        es_cursor_free(c);
        rc = es_log_wait(reader, next - 1, 500);
        assert_true(rc == 0 || rc == ES_ETIMEDOUT);
    }
    for (int i = 0; i < WRITERS; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        assert_null(ret);
    }

    /* every acknowledged event was seen exactly once */
    uint64_t acked[WRITERS * PER_WRITER];
    size_t k = 0;
    for (int i = 0; i < WRITERS; i++)
        for (int j = 0; j < PER_WRITER; j++)
            acked[k++] = ws[i].positions[j];
    qsort(acked, k, sizeof *acked, cmp_u64);
    if (tail.n != want)
        fail_msg("the tailing reader saw %zu events of %zu", tail.n, want);
    assert_memory_equal(acked, tail.pos, want * sizeof *acked); /* same set, already ordered */

    /* the commits really were out of order: an event acknowledged later
     * sits at a lower position than one acknowledged earlier */
    size_t inversions = 0;
    for (int a = 0; a < WRITERS; a++)
        for (int b = 0; b < WRITERS; b++)
            for (int i = 0; i < PER_WRITER; i++)
                for (int j = 0; j < PER_WRITER; j++)
                    if (ws[a].positions[i] < ws[b].positions[j] &&
                        ws[a].ack_order[i] > ws[b].ack_order[j])
                        inversions++;
    printf("   %zu events tailed once each, in order; %zu pairs committed out of position "
           "order\n",
           tail.n, inversions);
    assert_true(inversions > 0);

    /* a second read of the whole log gives the same order */
    es_cursor *c;
    const es_event *ev;
    size_t i = 0;
    TU_EXPECT_OK(es_log_cursor(&c, reader, NULL));
    while (es_cursor_next(&ev, c) == 0) {
        assert_true(i < tail.n);
        assert_int_equal(ev->position, tail.pos[i]);
        i++;
    }
    es_cursor_free(c);
    assert_int_equal(i, tail.n);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, reader, NULL, 0));
    assert_true(v.ok);
    free(tail.pos);
    es_store_close(reader);
}

/* ---- a restart mid-run ---- */

#define RESTART_APPENDS 400

typedef struct restart_run {
    char uri[600];
    _Atomic int acked; /* read by the main thread while the writer runs */
    int errors, other_errors;
    char first_error[300];
} restart_run;

static void *append_through_restart(void *arg)
{
    restart_run *rr = arg;
    es_store *st;
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.timeout_ms = 5000;
    if (es_store_open(&st, rr->uri, &o) != 0)
        return (void *)1;
    for (int i = 0; i < RESTART_APPENDS; i++) {
        uint8_t id[ES_ID_SIZE] = {0xee};
        id[12] = (uint8_t)(i >> 8);
        id[13] = (uint8_t)i;
        char data[16];
        snprintf(data, sizeof data, "%d", i);
        es_event_new ev = {.type = "N", .data = data, .data_len = strlen(data), .id = id};
        time_t give_up = time(NULL) + 60;
        for (;;) {
            /* an error leaves the outcome unknown: retry with the same id */
            int rc = es_append(NULL, st, "restart", 7, ES_EXPECT_ANY, &ev, 1);
            if (rc == 0)
                break;
            if (rc == ES_EUNAVAILABLE) {
                if (!rr->errors++)
                    snprintf(rr->first_error, sizeof rr->first_error, "%s", es_error_last());
            } else {
                rr->other_errors++;
                fprintf(stderr, "   unexpected: %s\n", es_error_last());
            }
            if (time(NULL) > give_up) {
                es_store_close(st);
                return (void *)2;
            }
            nap_ms(100);
        }
        rr->acked = i + 1;
    }
    es_store_close(st);
    return NULL;
}

static void test_restart_mid_run_loses_nothing(void **state)
{
    (void)state;
    const char *restart = getenv("ES_TEST_PG_RESTART");
    if (!restart || !*restart) {
        printf("   SKIPPED: set ES_TEST_PG_RESTART to a command that restarts the server\n");
        skip();
    }
    static restart_run rr;
    memset(&rr, 0, sizeof rr);
    shared_uri(rr.uri, sizeof rr.uri, NULL);
    es_store *st;
    open_uri(&st, rr.uri);
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, append_through_restart, &rr), 0);
    while (rr.acked < 50)
        nap_ms(5);
    printf("   restarting the server after %d acknowledged appends\n", rr.acked);
    assert_int_equal(system(restart), 0);
    void *ret;
    pthread_join(th, &ret);
    assert_null(ret);
    printf("   %d appends acknowledged; %d calls failed as unavailable (first: %s)\n", rr.acked,
           rr.errors, rr.first_error);
    assert_int_equal(rr.other_errors, 0);
    assert_true(rr.errors > 0); /* the restart did hit calls in flight */

    /* the old handle reconnects by itself; every event is there once */
    uint64_t head = 0;
    for (int i = 0; i < 50 && es_stream_head(&head, st, "restart", 7) == ES_EUNAVAILABLE; i++)
        nap_ms(100);
    assert_int_equal(head, RESTART_APPENDS);
    es_cursor *c;
    const es_event *ev;
    int i = 0, rc;
    TU_EXPECT_OK(es_stream_cursor(&c, st, "restart", 7, NULL));
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        char want[16];
        snprintf(want, sizeof want, "%d", i);
        assert_int_equal(ev->seq, (uint64_t)i + 1);
        assert_int_equal(ev->data_len, strlen(want));
        assert_memory_equal(ev->data, want, ev->data_len);
        assert_int_equal(ev->id[13], (uint8_t)i);
        i++;
    }
    assert_int_equal(rc, ES_ITEROVER);
    es_cursor_free(c);
    assert_int_equal(i, RESTART_APPENDS);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, st, NULL, 0));
    assert_true(v.ok);
    es_store_close(st);
}

/* ---- a server that is down ---- */

static void test_down_server_is_unavailable(void **state)
{
    (void)state;
    es_store *st = (es_store *)1;
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.timeout_ms = 2000;
    /* port 1 on loopback: nothing listens there */
    int rc = es_store_open(&st, "postgresql://postgres@127.0.0.1:1/postgres", &o);
    assert_int_equal(rc, ES_EUNAVAILABLE);
    assert_null(st);
    assert_non_null(strstr(es_error_last(), "cannot connect"));
}

/* ---- options in the URI ---- */

static void test_uri_options_are_checked(void **state)
{
    (void)state;
    const char *bad[] = {"schema=Bad-Name", "schema=",  "schema=1abc",       "pool=0",
                         "pool=x",          "notify=2", "commit_delay_ms=-1"};
    const char *base = getenv("ES_TEST_PG_URI");
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char uri[600];
        es_store *st;
        snprintf(uri, sizeof uri, "%s%s%s", base, strchr(base, '?') ? "&" : "?", bad[i]);
        assert_int_equal(es_store_open(&st, uri, NULL), ES_EINVAL);
        assert_non_null(strstr(es_error_last(), "postgres:"));
    }
    /* a store that does not exist, opened read-only or without creating */
    char uri[600];
    es_store *st;
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.flags = ES_OPEN_NOCREATE;
    shared_uri(uri, sizeof uri, NULL);
    assert_int_equal(es_store_open(&st, uri, &o), ES_ENOTFOUND);
    o.flags = ES_OPEN_READONLY;
    assert_int_equal(es_store_open(&st, uri, &o), ES_ENOTFOUND);
}

/* ---- the URI parser, without a server ---- */

static void test_uri_parser_takes_out_own_options_and_keeps_the_rest(void **state)
{
    (void)state;
    es__pg_uri u;
    assert_int_equal(es__pg_parse_uri(&u, "postgres://u@h:5/db?schema=abc&sslmode=disable&pool=3"
                                          "&application_name=a%20b%26c%3Dd&notify=1"
                                          "&commit_delay_ms=7&options=-c%20work_mem%3D8MB"),
                     0);
    assert_string_equal(u.conninfo, "postgres://u@h:5/db?sslmode=disable"
                                    "&application_name=a%20b%26c%3Dd&options=-c%20work_mem%3D8MB");
    assert_string_equal(u.schema, "abc");
    assert_int_equal(u.pool_max, 3);
    assert_true(u.notify);
    assert_int_equal(u.commit_delay_ms, 7);
    assert_string_equal(u.pq_options, "-c work_mem=8MB"); /* decoded by libpq */
    es__pg_uri_free(&u);

    /* defaults; no query, or a bare '?' */
    const char *plain[] = {"postgresql://h/db", "postgresql://h/db?"};
    for (size_t i = 0; i < 2; i++) {
        assert_int_equal(es__pg_parse_uri(&u, plain[i]), 0);
        assert_string_equal(u.conninfo, "postgresql://h/db");
        assert_string_equal(u.schema, "eventsrc");
        assert_int_equal(u.pool_max, 16);
        assert_false(u.notify);
        assert_null(u.pq_options);
        es__pg_uri_free(&u);
    }
    /* only our options: the query goes */
    assert_int_equal(es__pg_parse_uri(&u, "postgresql://h/db?schema=public&pool=256"), 0);
    assert_string_equal(u.conninfo, "postgresql://h/db");
    assert_string_equal(u.schema, "public");
    es__pg_uri_free(&u);
    /* our options' values are decoded too: %5F is '_' */
    assert_int_equal(es__pg_parse_uri(&u, "postgresql://h/db?sch%65ma=a%5Fb"), 0);
    assert_string_equal(u.schema, "a_b");
    es__pg_uri_free(&u);
}

/* The overflow of issue 7: a long value was copied twice into a buffer the
 * size of the URI.  Under ASan the old parser aborted here. */
static void test_uri_parser_takes_long_values(void **state)
{
    (void)state;
    size_t sizes[] = {5000, 100000};
    for (size_t i = 0; i < 2; i++) {
        size_t n = sizes[i];
        char *uri = malloc(n + 100), *want = malloc(n + 100);
        assert_non_null(uri);
        assert_non_null(want);
        int at = snprintf(uri, n + 100, "postgres://h/db?schema=long&application_name=");
        memset(uri + at, 'x', n);
        uri[at + n] = '\0';
        at = snprintf(want, n + 100, "postgres://h/db?application_name=");
        memset(want + at, 'x', n);
        want[at + n] = '\0';
        es__pg_uri u;
        assert_int_equal(es__pg_parse_uri(&u, uri), 0);
        assert_string_equal(u.conninfo, want);
        es__pg_uri_free(&u);
        free(uri);
        free(want);
    }
}

static void test_uri_parser_refuses_malformed_options(void **state)
{
    (void)state;
    static const struct {
        const char *query, *says;
    } bad[] = {
        {"sslmode", "needs the form name=value"},
        {"=disable", "needs the form name=value"},
        {"&sslmode=disable", "an empty option"},
        {"sslmode=disable&", "an empty option"},
        {"sslmode=disable&&connect_timeout=3", "an empty option"},
        {"sslmode=dis=able", "a second '='"},
        {"application_name=a%zz", "malformed %-escape"},
        {"application_name=a%4", "malformed %-escape"},
        {"application_name=%00", "malformed %-escape"},
        {"ssl%mode=disable", "malformed %-escape"},
        {"sslmode=disable&sslmode=require", "'sslmode' is given twice"},
        {"schema=a&schema=b", "'schema' is given twice"},
        {"schema=a&sch%65ma=b", "'schema' is given twice"},
        {"no_such_option=1", "bad URI"},
        {"schema=information_schema", "PostgreSQL's own"},
        {"schema=pg_catalog", "PostgreSQL's own"},
        {"schema=pg_toast", "PostgreSQL's own"},
        {"schema=pg_temp_1", "PostgreSQL's own"},
        {"schema=Bad-Name", "schema must be"},
        {"schema=", "schema must be"},
        {"schema=1abc", "schema must be"},
        {"schema=a%0Ab", "schema must be"},
        {"pool=0", "pool takes a number"},
        {"pool=257", "pool takes a number"},
        {"pool=%205", "pool takes a number"},
        {"pool=+5", "pool takes a number"},
        {"pool=99999999999999999999", "pool takes a number"},
        {"notify=2", "notify takes a number"},
        {"commit_delay_ms=-1", "commit_delay_ms takes a number"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char uri[300];
        es__pg_uri u;
        snprintf(uri, sizeof uri, "postgres://h/db?%s", bad[i].query);
        int rc = es__pg_parse_uri(&u, uri);
        if (rc != ES_EINVAL || !strstr(es_error_last(), bad[i].says))
            fail_msg("'%s': %d '%s', wanted ES_EINVAL saying '%s'", bad[i].query, rc,
                     es_error_last(), bad[i].says);
        assert_null(u.conninfo);
        assert_null(u.pq_options);
        es__pg_uri_free(&u); /* harmless after an error */
    }
    /* too many options */
    char uri[2000];
    int at = snprintf(uri, sizeof uri, "postgres://h/db?");
    for (int i = 0; i < 70; i++)
        at += snprintf(uri + at, sizeof uri - (size_t)at, "%sx%d=1", i ? "&" : "", i);
    es__pg_uri u;
    assert_int_equal(es__pg_parse_uri(&u, uri), ES_EINVAL);
    assert_non_null(strstr(es_error_last(), "more than"));
}

/* The same long option through es_store_open, to a port where nothing
 * listens: a clean "unavailable", not heap damage, before any connection. */
static void test_open_with_a_long_option_fails_cleanly(void **state)
{
    (void)state;
    char uri[6000];
    int at =
        snprintf(uri, sizeof uri, "postgresql://postgres@127.0.0.1:1/postgres?application_name=");
    memset(uri + at, 'y', 5000);
    uri[at + 5000] = '\0';
    es_store *st = (es_store *)1;
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.timeout_ms = 2000;
    assert_int_equal(es_store_open(&st, uri, &o), ES_EUNAVAILABLE);
    assert_null(st);
    /* and a malformed option is refused before connecting */
    assert_int_equal(es_store_open(&st, "postgresql://postgres@127.0.0.1:1/postgres?sslmode", &o),
                     ES_EINVAL);
}

/* ---- libpq options reach the server ---- */

/* SHOW a setting on one of the store's pooled connections. */
static void show_setting(es_store *st, const char *name, char *out, size_t cap)
{
    pg_store *s = st->be;
    pg_conn *pc;
    char sql[100];
    TU_EXPECT_OK(es__pg_acquire(s, &pc));
    snprintf(sql, sizeof sql, "SHOW %s", name);
    PGresult *r = PQexec(pc->c, sql);
    assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
    snprintf(out, cap, "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    es__pg_release(s, pc);
}

static void test_libpq_options_pass_through(void **state)
{
    (void)state;
    char uri[600], v[200];
    es_store *st;
    /* issue 7: sslmode=disable was refused ("extra key/value separator") */
    shared_uri(uri, sizeof uri, "sslmode=disable&application_name=es%20test");
    open_uri(&st, uri);
    show_setting(st, "application_name", v, sizeof v);
    assert_string_equal(v, "es test");
    es_append_result r;
    es_event_new ev = {.type = "T"};
    TU_EXPECT_OK(es_append(&r, st, "s", 1, ES_EXPECT_ANY, &ev, 1));
    es_store_close(st);

    /* the URI's `options` and ours both apply; ours win where both set one */
    shared_uri(uri, sizeof uri, "options=-c%20work_mem%3D5MB%20-c%20statement_timeout%3D1&pool=2");
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.timeout_ms = 7000;
    TU_EXPECT_OK(es_store_open(&st, uri, &o));
    show_setting(st, "work_mem", v, sizeof v);
    assert_string_equal(v, "5MB");
    show_setting(st, "statement_timeout", v, sizeof v);
    assert_string_equal(v, "7s");
    show_setting(st, "enable_seqscan", v, sizeof v);
    assert_string_equal(v, "off");
    es_store_close(st);

    /* 5000 bytes of application_name: passed (the server shortens it) or
     * refused, cleanly either way */
    char longer[6000];
    char name[5001];
    memset(name, 'z', 5000);
    name[5000] = '\0';
    snprintf(longer, sizeof longer, "application_name=%s", name);
    char uri2[6600];
    shared_uri(uri2, sizeof uri2, longer);
    int rc = es_store_open(&st, uri2, NULL);
    printf("   5000-byte application_name: %s\n", rc == 0 ? "accepted" : es_error_last());
    if (rc == 0) {
        show_setting(st, "application_name", v, sizeof v);
        assert_true(strlen(v) > 0 && strspn(v, "z") == strlen(v));
        es_store_close(st);
    } else {
        assert_true(rc == ES_EINVAL || rc == ES_EUNAVAILABLE);
    }
}

/* ---- server notices stay off stderr ---- */

static void test_server_warnings_do_not_reach_stderr(void **state)
{
    (void)state;
    char uri[600], path[] = "/tmp/es-pg-stderr-XXXXXX";
    es_store *st;
    shared_uri(uri, sizeof uri, NULL);
    open_uri(&st, uri);
    pg_store *s = st->be;
    pg_conn *pc;
    TU_EXPECT_OK(es__pg_acquire(s, &pc));
    /* stderr into a file while the server sends a WARNING and a NOTICE */
    int fd = mkstemp(path), saved = dup(2);
    assert_true(fd >= 0 && saved >= 0);
    fflush(stderr);
    dup2(fd, 2);
    PGresult *r = PQexec(pc->c, "SET client_min_messages = notice; "
                                "DO $$BEGIN RAISE WARNING 'es-test-warning'; "
                                "RAISE NOTICE 'es-test-notice'; END$$; "
                                "SET client_min_messages = warning");
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
    PQclear(r);
    es__pg_release(s, pc);
    char buf[512] = "";
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    close(fd);
    unlink(path);
    if (n != 0)
        fail_msg("stderr got: %s", buf);
    es_store_close(st);
}

/* ---- waits that run out are ES_ETIMEDOUT ---- */

static void test_waits_that_run_out_are_timeouts(void **state)
{
    (void)state;
    char uri[600];
    es_store *st;
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.timeout_ms = 300;
    uint64_t head;

    /* the pool: its one connection is lent out for longer than the timeout */
    shared_uri(uri, sizeof uri, "pool=1");
    TU_EXPECT_OK(es_store_open(&st, uri, &o));
    pg_store *s = st->be;
    pg_conn *pc;
    TU_EXPECT_OK(es__pg_acquire(s, &pc));
    assert_int_equal(es_stream_head(&head, st, "s", 1), ES_ETIMEDOUT);
    assert_non_null(strstr(es_error_last(), "busy"));
    es__pg_release(s, pc);
    TU_EXPECT_OK(es_stream_head(&head, st, "s", 1));
    es_store_close(st);

    /* the server's statement_timeout: each append sleeps a random 0..10 s in
     * its transaction; one that is cancelled wrote nothing */
    char slow[700];
    shared_uri(uri, sizeof uri, NULL);
    snprintf(slow, sizeof slow, "%s&commit_delay_ms=10000", uri);
    TU_EXPECT_OK(es_store_open(&st, slow, &o));
    int done = 0, timed_out = 0;
    for (int i = 0; i < 6; i++) {
        es_event_new ev = {.type = "T"};
        int rc = es_append(NULL, st, "slow", 4, ES_EXPECT_ANY, &ev, 1);
        if (rc == 0)
            done++;
        else if (rc == ES_ETIMEDOUT)
            timed_out++;
        else
            fail_msg("append: %d %s", rc, es_error_last());
    }
    es_store_close(st);
    TU_EXPECT_OK(es_store_open(&st, uri, NULL));
    TU_EXPECT_OK(es_stream_head(&head, st, "slow", 4));
    printf("   statement timeout: %d appends done, %d timed out\n", done, timed_out);
    assert_true(timed_out > 0);
    assert_int_equal(head, (uint64_t)done);
    es_store_close(st);

    /* no answer at all: the server process stops (SIGSTOP) with our
     * append in flight.  Its outcome is unknown; a retry with the same id
     * lands it exactly once. */
    shared_uri(uri, sizeof uri, "pool=1");
    TU_EXPECT_OK(es_store_open(&st, uri, &o));
    s = st->be;
    TU_EXPECT_OK(es__pg_acquire(s, &pc));
    pid_t backend = PQbackendPID(pc->c);
    es__pg_release(s, pc);
    if (kill(backend, SIGSTOP) != 0) {
        printf("   SKIPPED the stalled-server part: cannot stop the server process\n");
        es_store_close(st);
        return;
    }
    uint8_t id[ES_ID_SIZE] = {7, 7, 7};
    es_event_new ev = {.type = "T", .id = id};
    int rc = es_append(NULL, st, "stall", 5, ES_EXPECT_ANY, &ev, 1);
    kill(backend, SIGCONT);
    assert_int_equal(rc, ES_ETIMEDOUT);
    assert_non_null(strstr(es_error_last(), "outcome is unknown"));
    es_store_close(st);
    o.timeout_ms = 10000;
    TU_EXPECT_OK(es_store_open(&st, uri, &o));
    es_append_result r;
    TU_EXPECT_OK(es_append(&r, st, "stall", 5, ES_EXPECT_ANY, &ev, 1));
    TU_EXPECT_OK(es_stream_head(&head, st, "stall", 5));
    printf("   stalled server: the retry was %s\n", r.replayed ? "a replay" : "the first write");
    assert_int_equal(head, 1);
    es_store_close(st);
}

/* ---- every value is a parameter ---- */

static void test_hostile_bytes_round_trip(void **state)
{
    (void)state;
    char uri[600];
    es_store *st;
    shared_uri(uri, sizeof uri, NULL);
    open_uri(&st, uri);
    static const struct {
        const char *key;
        size_t len;
        const char *type;
    } cases[] = {
        {"it's", 4, "O'Brien"},
        {"back\\slash\\", 11, "T\\\\"},
        {"nul\0in\0key", 10, "Nul"},
        {"'; DROP TABLE events; --", 24, "'); DELETE FROM streams; --"},
        {"$1 $2 %s %n", 11, "$1"},
        {"\"quoted\" \"schema\".events", 24, "\"T\""},
        {"E'\\x00'::bytea", 14, "E'\\\\x'"},
        {"\xff\xfe\x80 not utf-8", 14, "\xc3\x28"},
        {"@ ^ ? & = #", 11, "@^?&=#"},
    };
    size_t n = sizeof cases / sizeof *cases;
    uint8_t data[256];
    for (int i = 0; i < 256; i++)
        data[i] = (uint8_t)i; /* every byte value, NUL first */
    for (size_t i = 0; i < n; i++) {
        es_event_new ev = {.type = cases[i].type,
                           .data = data,
                           .data_len = sizeof data,
                           .meta = cases[i].key,
                           .meta_len = cases[i].len};
        TU_EXPECT_OK(es_append(NULL, st, cases[i].key, cases[i].len, ES_EXPECT_NO_STREAM, &ev, 1));
    }
    TU_EXPECT_OK(es_log_catch_up(st, 60000));
    for (size_t i = 0; i < n; i++) {
        es_cursor *c;
        const es_event *ev;
        TU_EXPECT_OK(es_stream_cursor(&c, st, cases[i].key, cases[i].len, NULL));
        TU_EXPECT_OK(es_cursor_next(&ev, c));
        assert_int_equal(ev->stream_len, cases[i].len);
        assert_memory_equal(ev->stream, cases[i].key, cases[i].len);
        assert_string_equal(ev->type, cases[i].type);
        assert_int_equal(ev->data_len, sizeof data);
        assert_memory_equal(ev->data, data, sizeof data);
        assert_int_equal(ev->meta_len, cases[i].len);
        assert_memory_equal(ev->meta, cases[i].key, cases[i].len);
        assert_int_equal(es_cursor_next(&ev, c), ES_ITEROVER);
        es_cursor_free(c);
        uint64_t h;
        TU_EXPECT_OK(es_stream_head(&h, st, cases[i].key, cases[i].len));
        assert_int_equal(h, 1);

        /* the log's filters take the same bytes */
        es_log_options o = ES_LOG_OPTIONS_INIT;
        o.prefix = cases[i].key;
        o.prefix_len = cases[i].len;
        o.type = cases[i].type;
        TU_EXPECT_OK(es_log_cursor(&c, st, &o));
        TU_EXPECT_OK(es_cursor_next(&ev, c));
        assert_memory_equal(ev->stream, cases[i].key, cases[i].len);
        assert_int_equal(es_cursor_next(&ev, c), ES_ITEROVER);
        es_cursor_free(c);
    }
    es_store_stats s;
    TU_EXPECT_OK(es_store_stats_get(&s, st));
    assert_int_equal(s.events, n);
    assert_int_equal(s.streams, n);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, st, NULL, 0));
    assert_true(v.ok);
    es_store_close(st);
}

/* ---- many openers create the schema once ---- */

static void *open_and_append(void *arg)
{
    es_store *st;
    if (es_store_open(&st, arg, NULL) != 0) {
        fprintf(stderr, "open: %s\n", es_error_last());
        return (void *)1;
    }
    es_event_new ev = {.type = "Hello"};
    int rc = es_append(NULL, st, "greetings", 9, ES_EXPECT_ANY, &ev, 1);
    es_store_close(st);
    return rc ? (void *)2 : NULL;
}

/* Multi-stream commits racing on the same streams from two
 * handles (each with its own head cache): every commit lands whole, after
 * the library retries stale caches and lost races. */
typedef struct batcher {
    char uri[600];
    int index, rounds, failed;
} batcher;

static void *append_batches(void *arg)
{
    enum { OPS = 300 };
    batcher *b = arg;
    es_store *st;
    if (es_store_open(&st, b->uri, NULL) != 0) {
        b->failed = 1;
        return NULL;
    }
    static __thread es_append_op ops[OPS];
    static __thread es_event_new evs[OPS];
    static __thread es_append_result out[OPS];
    static __thread char keys[OPS][8];
    for (int round = 0; round < b->rounds && !b->failed; round++) {
        for (int i = 0; i < OPS; i++) {
            snprintf(keys[i], sizeof keys[i], "s%d", (i + round * 13 + b->index) % 40);
            evs[i] = (es_event_new){.type = "Batch"};
            ops[i] = (es_append_op){keys[i], strlen(keys[i]), ES_EXPECT_ANY, &evs[i], 1};
        }
        if (es_append_multi(out, st, ops, OPS, 0) != 0) {
            fprintf(stderr, "batcher %d: %s\n", b->index, es_error_last());
            b->failed = 1;
        }
    }
    es_store_close(st);
    return NULL;
}

static void test_batches_race(void **state)
{
    (void)state;
    char uri[600];
    shared_uri(uri, sizeof uri, NULL);
    batcher bs[2];
    pthread_t th[2];
    for (int i = 0; i < 2; i++) {
        bs[i] = (batcher){.index = i, .rounds = 15};
        snprintf(bs[i].uri, sizeof bs[i].uri, "%s", uri);
        assert_int_equal(pthread_create(&th[i], NULL, append_batches, &bs[i]), 0);
    }
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        assert_int_equal(bs[i].failed, 0);
    }
    es_store *st;
    open_uri(&st, uri);
    uint64_t total = 0;
    for (int k = 0; k < 40; k++) {
        char key[8];
        uint64_t head;
        snprintf(key, sizeof key, "s%d", k);
        TU_EXPECT_OK(es_stream_head(&head, st, key, strlen(key)));
        total += head;
    }
    assert_int_equal(total, 2 * 15 * 300);
    TU_EXPECT_OK(es_log_catch_up(st, 60000));
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, st, NULL, 0));
    if (!v.ok)
        fail_msg("verify: %s", v.reason);
    assert_int_equal(v.events_checked, 2 * 15 * 300);
    es_store_close(st);
}

static void test_concurrent_opens_migrate_once(void **state)
{
    (void)state;
    char uri[600];
    shared_uri(uri, sizeof uri, NULL);
    pthread_t th[6];
    for (int i = 0; i < 6; i++)
        assert_int_equal(pthread_create(&th[i], NULL, open_and_append, uri), 0);
    for (int i = 0; i < 6; i++) {
        void *ret;
        pthread_join(th[i], &ret);
        assert_null(ret);
    }
    es_store *st;
    open_uri(&st, uri);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, st, "greetings", 9));
    assert_int_equal(h, 6);
    es_store_close(st);
}

/* ---- es_log_wait: notified, or polling without notifications ---- */

typedef struct later {
    char uri[600];
    int delay_ms;
} later;

static void *append_later(void *arg)
{
    later *l = arg;
    es_store *st;
    nap_ms(l->delay_ms);
    if (es_store_open(&st, l->uri, NULL) != 0)
        return (void *)1;
    es_event_new ev = {.type = "Late"};
    int rc = es_append(NULL, st, "late", 4, ES_EXPECT_ANY, &ev, 1);
    es_store_close(st);
    return rc ? (void *)2 : NULL;
}

static void test_log_wait_wakes_with_and_without_notify(void **state)
{
    (void)state;
    for (int notify = 1; notify >= 0; notify--) {
        static later l;
        char uri[600];
        shared_uri(uri, sizeof uri, notify ? "notify=1" : NULL);
        es_store *st;
        open_uri(&st, uri);
        uint64_t last;
        TU_EXPECT_OK(es_store_last_position(&last, st));
        assert_int_equal(last, 0);
        /* nothing comes: the wait times out */
        assert_int_equal(es_log_wait(st, 0, 300), ES_ETIMEDOUT);
        snprintf(l.uri, sizeof l.uri, "%s", uri);
        l.delay_ms = 300;
        pthread_t th;
        assert_int_equal(pthread_create(&th, NULL, append_later, &l), 0);
        TU_EXPECT_OK(es_log_wait(st, 0, 30000));
        TU_EXPECT_OK(es_store_last_position(&last, st));
        assert_true(last > 0);
        void *ret;
        pthread_join(th, &ret);
        assert_null(ret);
        assert_int_equal(es_log_wait(st, 0, -1), ES_EINVAL);
        es_store_close(st);
    }
}

int main(int argc, char **argv)
{
    /* `test_pg uri`: the parser alone, with no server */
    if (argc > 1 && !strcmp(argv[1], "uri")) {
        const struct CMUnitTest uri_tests[] = {
            cmocka_unit_test(test_uri_parser_takes_out_own_options_and_keeps_the_rest),
            cmocka_unit_test(test_uri_parser_takes_long_values),
            cmocka_unit_test(test_uri_parser_refuses_malformed_options),
            cmocka_unit_test(test_open_with_a_long_option_fails_cleanly),
        };
        return cmocka_run_group_tests(uri_tests, NULL, NULL);
    }
    int rc = tu_init(argc, argv, "pg");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_libpq_options_pass_through),
        cmocka_unit_test(test_server_warnings_do_not_reach_stderr),
        cmocka_unit_test(test_waits_that_run_out_are_timeouts),
        cmocka_unit_test(test_log_never_skips_while_writers_commit_out_of_order),
        cmocka_unit_test(test_down_server_is_unavailable),
        cmocka_unit_test(test_uri_options_are_checked),
        cmocka_unit_test(test_hostile_bytes_round_trip),
        cmocka_unit_test(test_batches_race),
        cmocka_unit_test(test_concurrent_opens_migrate_once),
        cmocka_unit_test(test_log_wait_wakes_with_and_without_notify),
        cmocka_unit_test(test_restart_mid_run_loses_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
