/*
 * proj_bench.c — the projection benchmark of issue 9 (BENCHMARKS.md,
 * "Projections"), driven by bench/proj_bench.sh.  Not installed.
 *
 *   es_proj_bench load STORE N
 *       W3's log (as es_bench W3 writes it): N events in 1000-event
 *       commits (es_append_multi), one event for each of 1000 streams
 *       "stream-%09u", type "Bench", 150 bytes of letters as data.
 *   es_proj_bench hand STORE sqlite:PATH [EVERY]
 *       the hand-written baseline: reads the log with es_log_cursor and does
 *       the projection's INSERT for every event with one prepared statement
 *       in ONE SQLite transaction (same pragmas as the projector's target:
 *       journal_mode=DELETE, synchronous=FULL); with EVERY, a commit every
 *       EVERY events instead (the projector's durability, without its
 *       checkpoint).
 *   es_proj_bench lib STORE sqlite:PATH FILE BATCH
 *       es_proj_run of the projection file FILE with batch_events = BATCH.
 *
 * Each prints one line: "MODE: N events in T s: R events/s".
 */
#define _POSIX_C_SOURCE 200809L
#include <eventsrc.h>
#include <eventsrc_project.h>

#include <inttypes.h>
#include <stdbool.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { BATCH = 1000, STREAMS = 1000, PAYLOAD = 150 };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void report(const char *mode, uint64_t n, double t)
{
    printf("%s: %" PRIu64 " events in %.3f s: %.0f events/s\n", mode, n, t,
           t > 0 ? (double)n / t : 0.0);
}

static int load(es_store *st, uint64_t n)
{
    static es_append_op ops[BATCH];
    static es_event_new evs[BATCH];
    static es_append_result outs[BATCH];
    static char keys[BATCH][17];
    static uint8_t data[BATCH][PAYLOAD];
    uint64_t seq = 0;
    double t0 = now_s();
    for (unsigned i = 0; i < BATCH; i++)
        snprintf(keys[i], sizeof keys[i], "stream-%09u", i % STREAMS);
    for (uint64_t done = 0; done < n; done += BATCH, seq++) {
        for (unsigned i = 0; i < BATCH; i++) {
            for (unsigned k = 0; k < PAYLOAD; k++)
                data[i][k] = (uint8_t)('a' + (done + i + k) % 26);
            evs[i] = (es_event_new){.type = "Bench", .data = data[i], .data_len = PAYLOAD};
            ops[i] = (es_append_op){keys[i], 16, seq, &evs[i], 1};
        }
        if (es_append_multi(outs, st, ops, BATCH, 0)) {
            fprintf(stderr, "es_proj_bench: append: %s\n", es_error_last());
            return 1;
        }
    }
    report("load (es_append_multi, 1000-event commits)", n - n % BATCH, now_s() - t0);
    return 0;
}

static int sq(sqlite3 *db, const char *sql)
{
    char *msg = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        fprintf(stderr, "es_proj_bench: %s: %s\n", sql, msg ? msg : sqlite3_errmsg(db));
        sqlite3_free(msg);
        return 1;
    }
    return 0;
}

static int hand(es_store *st, const char *path, uint64_t every)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *ins = NULL;
    es_cursor *cur = NULL;
    es_log_options lo = ES_LOG_OPTIONS_INIT;
    const es_event *ev;
    uint64_t n = 0, commits = 0;
    char mode[80];
    int rc = 1, r;
    double t0 = now_s();

    if (sqlite3_open(path, &db) != SQLITE_OK) {
        fprintf(stderr, "es_proj_bench: %s: %s\n", path, sqlite3_errmsg(db));
        goto out;
    }
    if (sq(db, "PRAGMA journal_mode=DELETE") || sq(db, "PRAGMA synchronous=FULL") ||
        sq(db, "CREATE TABLE ev (stream TEXT NOT NULL, seq INTEGER NOT NULL,"
               " position INTEGER NOT NULL, payload TEXT NOT NULL)") ||
        sq(db, "BEGIN"))
        goto out;
    if (sqlite3_prepare_v2(
            db, "INSERT INTO ev (stream, seq, position, payload) VALUES (?1, ?2, ?3, ?4)", -1, &ins,
            NULL) != SQLITE_OK) {
        fprintf(stderr, "es_proj_bench: prepare: %s\n", sqlite3_errmsg(db));
        goto out;
    }
    if (es_log_cursor(&cur, st, &lo)) {
        fprintf(stderr, "es_proj_bench: log: %s\n", es_error_last());
        goto out;
    }
    while ((r = es_cursor_next(&ev, cur)) == 0) {
        sqlite3_bind_text(ins, 1, (const char *)ev->stream, (int)ev->stream_len, SQLITE_STATIC);
        sqlite3_bind_int64(ins, 2, (sqlite3_int64)ev->seq);
        sqlite3_bind_int64(ins, 3, (sqlite3_int64)ev->position);
        sqlite3_bind_text(ins, 4, (const char *)ev->data, (int)ev->data_len, SQLITE_STATIC);
        if (sqlite3_step(ins) != SQLITE_DONE) {
            fprintf(stderr, "es_proj_bench: insert: %s\n", sqlite3_errmsg(db));
            goto out;
        }
        sqlite3_reset(ins);
        n++;
        if (every && n % every == 0) {
            if (sq(db, "COMMIT") || sq(db, "BEGIN"))
                goto out;
            commits++;
        }
    }
    if (r != ES_ITEROVER) {
        fprintf(stderr, "es_proj_bench: log: %s\n", es_error_last());
        goto out;
    }
    if (sq(db, "COMMIT"))
        goto out;
    if (!every || n % every) /* the last commit had rows to commit */
        commits++;
    snprintf(mode, sizeof mode, "hand (es_log_cursor + SQLite, %" PRIu64 " commits)", commits);
    report(mode, n, now_s() - t0);
    rc = 0;
out:
    es_cursor_free(cur);
    sqlite3_finalize(ins);
    sqlite3_close(db);
    return rc;
}

static int lib(es_store *st, const char *target, const char *file, size_t batch)
{
    es_proj_file *f = NULL;
    es_proj_options o = ES_PROJ_OPTIONS_INIT;
    es_proj_progress p;
    char mode[64];
    double t0 = now_s();
    int rc = 1;

    if (es_proj_file_load(&f, file)) {
        fprintf(stderr, "es_proj_bench: %s\n", es_proj_error_last());
        return 1;
    }
    o.batch_events = batch;
    if (es_proj_run(&p, st, target, es_proj_file_def(f), &o)) {
        fprintf(stderr, "es_proj_bench: es_proj_run: %s\n", es_proj_error_last());
        goto out;
    }
    snprintf(mode, sizeof mode, "lib (es_proj_run, batch %zu, %" PRIu64 " commits)", batch,
             p.batches);
    report(mode, p.events, now_s() - t0);
    rc = 0;
out:
    es_proj_file_free(f);
    return rc;
}

int main(int argc, char **argv)
{
    es_store *st = NULL;
    int rc = 2;
    const char *mode = argc > 1 ? argv[1] : "";
    bool ok = (strcmp(mode, "load") == 0 && argc == 4) ||
              (strcmp(mode, "hand") == 0 && (argc == 4 || (argc == 5 && atol(argv[4]) > 0)) &&
               strncmp(argv[3], "sqlite:", 7) == 0) ||
              (strcmp(mode, "lib") == 0 && argc == 6 && atol(argv[5]) > 0);
    if (!ok) {
        fprintf(stderr, "usage: es_proj_bench load STORE N | hand STORE sqlite:PATH [EVERY] |"
                        " lib STORE sqlite:PATH FILE BATCH\n");
        return 2;
    }
    if (es_store_open(&st, argv[2], NULL)) {
        fprintf(stderr, "es_proj_bench: %s: %s\n", argv[2], es_error_last());
        return 1;
    }
    if (strcmp(mode, "load") == 0)
        rc = load(st, strtoull(argv[3], NULL, 10));
    else if (strcmp(mode, "hand") == 0)
        rc = hand(st, argv[3] + 7, argc == 5 ? (uint64_t)atol(argv[4]) : 0);
    else
        rc = lib(st, argv[3], argv[4], (size_t)atol(argv[5]));
    es_store_close(st);
    return rc;
}
