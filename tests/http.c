/*
 * http.c — the http:// store when its server dies mid-append.
 *
 * Writer threads append one event at a time, each with an id of its own,
 * while the test SIGKILLs the server at a random moment.  A server started
 * again on the same lmdb store must then hold every append that returned 0,
 * exactly once; an append that failed with ES_EUNAVAILABLE (or
 * ES_ETIMEDOUT) may or may not have landed, and its retry with the same id
 * is answered idempotently: replayed when it had landed, written when not,
 * never twice.  Any other failure fails the test.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <pthread.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

enum { WRITERS = 4, MAX_PER_WRITER = 20000, ROUNDS = 6 };

typedef struct outcome {
    uint8_t id[16];
    char stream[16];
    int rc;
} outcome;

typedef struct writer {
    es_store *st;
    int round, index;
    outcome *out;
    size_t n;
    atomic_bool *stop;
} writer;

static void make_id(uint8_t id[16], int round, int w, size_t i)
{
    memset(id, 0, 16);
    id[0] = 0xa5;
    id[1] = (uint8_t)round;
    id[2] = (uint8_t)w;
    for (int b = 0; b < 8; b++)
        id[8 + b] = (uint8_t)(i >> (8 * b));
}

static void *write_until_lost(void *arg)
{
    writer *w = arg;
    while (w->n < MAX_PER_WRITER) {
        outcome *o = &w->out[w->n];
        make_id(o->id, w->round, w->index, w->n);
        snprintf(o->stream, sizeof o->stream, "k/%d/%d", w->index, (int)(w->n % 3));
        es_event_new ev = {.type = "T", .data = "x", .data_len = 1, .id = o->id};
        o->rc = es_append(NULL, w->st, o->stream, strlen(o->stream), ES_EXPECT_ANY, &ev, 1);
        w->n++;
        if (o->rc != 0)
            break; /* the server is gone */
        if (atomic_load(w->stop) && w->n > 2)
            break;
    }
    return NULL;
}

/* How many times each of this round's ids is in the log: counts[at] for
 * writer w's i-th append, at = alln[0] + … + alln[w-1] + i.  Earlier rounds'
 * ids carry another round byte and are skipped. */
static void count_round(es_store *st, int round, const size_t *alln, unsigned *counts, size_t total)
{
    es_cursor *c;
    const es_event *ev;
    int rc;
    memset(counts, 0, total * sizeof *counts);
    TU_EXPECT_OK(es_log_catch_up(st, 10000));
    TU_EXPECT_OK(es_log_cursor(&c, st, NULL));
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        if (ev->id[0] != 0xa5 || ev->id[1] != (uint8_t)round)
            continue;
        int w = ev->id[2];
        size_t i = 0, at = 0;
        for (int b = 0; b < 8; b++)
            i |= (size_t)ev->id[8 + b] << (8 * b);
        assert_true(w < WRITERS && i < alln[w]);
        for (int k = 0; k < w; k++)
            at += alln[k];
        counts[at + i]++;
    }
    assert_int_equal(rc, ES_ITEROVER);
    es_cursor_free(c);
}

static void test_server_killed_mid_append(void **state)
{
    char dir[256], store[300], log[300], url[512];
    const char *tmp = getenv("TMPDIR");
    uint64_t seed = tu_seed;
    unsigned landed_unknown = 0, lost_unknown = 0, acked_total = 0;

    snprintf(dir, sizeof dir, "%s/es-http-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(dir));
    snprintf(store, sizeof store, "lmdb:%s/store", dir);
    snprintf(log, sizeof log, "%s/serve.log", dir);

    for (int round = 0; round < ROUNDS; round++) {
        int pid = tu_http_start(store, log, url, sizeof url);
        es_store *st;
        TU_EXPECT_OK(es_store_open(&st, url, NULL));
        writer ws[WRITERS];
        pthread_t th[WRITERS];
        atomic_bool stop = false;
        outcome *all[WRITERS];
        size_t alln[WRITERS];
        for (int w = 0; w < WRITERS; w++) {
            ws[w] = (writer){st, round, w, calloc(MAX_PER_WRITER, sizeof(outcome)), 0, &stop};
            assert_non_null(ws[w].out);
            assert_int_equal(pthread_create(&th[w], NULL, write_until_lost, &ws[w]), 0);
        }
        /* let the writers run 20..120 ms, then kill the server under them */
        struct timespec nap = {0, (long)(20 + tu_rand_below(&seed, 100)) * 1000000L};
        nanosleep(&nap, NULL);
        tu_http_stop(pid, SIGKILL);
        atomic_store(&stop, true);
        for (int w = 0; w < WRITERS; w++) {
            pthread_join(th[w], NULL);
            all[w] = ws[w].out;
            alln[w] = ws[w].n;
        }
        es_store_close(st);

        /* a new server over the same store */
        pid = tu_http_start(store, log, url, sizeof url);
        TU_EXPECT_OK(es_store_open(&st, url, NULL));
        size_t total = 0;
        for (int w = 0; w < WRITERS; w++)
            total += alln[w];
        unsigned *counts = calloc(total ? total : 1, sizeof *counts);
        assert_non_null(counts);
        count_round(st, round, alln, counts, total);

        size_t at = 0;
        for (int w = 0; w < WRITERS; w++) {
            for (size_t i = 0; i < alln[w]; i++, at++) {
                outcome *o = &all[w][i];
                if (o->rc == 0) {
                    acked_total++;
                    assert_int_equal(counts[at], 1); /* acknowledged: there, once */
                    continue;
                }
                if (o->rc != ES_EUNAVAILABLE && o->rc != ES_ETIMEDOUT)
                    fail_msg("an append failed with %s (%s), not as unavailable",
                             es_strerror(o->rc), es_error_last());
                assert_true(counts[at] <= 1);
                es_append_result r;
                es_event_new e = {.type = "T", .data = "x", .data_len = 1, .id = o->id};
                TU_EXPECT_OK(es_append(&r, st, o->stream, strlen(o->stream), ES_EXPECT_ANY, &e, 1));
                assert_int_equal(r.replayed, counts[at]); /* landed: answered, not written */
                if (counts[at])
                    landed_unknown++;
                else
                    lost_unknown++;
            }
        }
        /* after the retries every id is there exactly once */
        count_round(st, round, alln, counts, total);
        for (size_t k = 0; k < total; k++)
            assert_int_equal(counts[k], 1);
        free(counts);
        for (int w = 0; w < WRITERS; w++)
            free(all[w]);
        es_verify_result v;
        TU_EXPECT_OK(es_verify(&v, st, NULL, 0));
        assert_true(v.ok);
        es_store_close(st);
        tu_http_stop(pid, SIGTERM);
    }
    printf("%u appends acknowledged, all there; of the unknown ones %u had landed and %u "
           "had not (each retry answered accordingly)\n",
           acked_total, landed_unknown, lost_unknown);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

int main(int argc, char **argv)
{
    int rc = tu_init(argc, argv, "http");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_server_killed_mid_append),
    };
    return cmocka_run_group_tests_name("http", tests, NULL, NULL);
}
