/*
 * bench_live.c — W9 of es_bench: live latency, from the start of an
 * append to a subscriber's handler, while W2's writers (16 threads, one
 * stream each) append.
 *
 * The subscriber is another process on the stores several processes share
 * (lmdb, pg), so the figure includes the wake-up across processes that
 * es_log_wait gives (lmdb: a futex in DIR/eventsrc-wake; pg: LISTEN/NOTIFY,
 * the store opened with notify=1); on mem, a store of one process, it is a
 * thread.  Each event carries its append's start by CLOCK_REALTIME, the
 * clock every process of the machine shares; the subscriber takes the time
 * when es_sub_next hands it the batch.  The writers record their own
 * appends' acknowledgement, for comparison: on lmdb an event is visible to
 * readers once committed, before its acknowledgement waits for the sync.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <eventsrc.h>

#include <stdbool.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define W9_WRITERS 16
#define W9_SUB "w9-live"
#define W9_IDLE_S 20.0 /* the subscriber gives up after this long without an event */

static int64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* The store of W9 for `sys`: a fresh data set, and notifications on pg. */
static int w9_uri(char *uri, size_t cap, const bench *b, const char *sys, result *r)
{
    if (strcmp(sys, "eventsrc-mem") == 0)
        snprintf(uri, cap, "mem:");
    else if (strcmp(sys, "eventsrc-pg") == 0) {
        if (!b->pg_uri)
            return fail(r, "eventsrc-pg needs --pg URI");
        snprintf(uri, cap, "%s%cschema=bench%u_w9&notify=1", b->pg_uri,
                 strchr(b->pg_uri, '?') ? '&' : '?', b->run_id);
    } else
        snprintf(uri, cap, "lmdb:%s/w9-es", b->dir);
    return 0;
}

/* What the subscriber sends back on its pipe: this header, then n doubles
 * (seconds from an append's start to the handler). */
typedef struct w9_report {
    uint64_t n;
    int ok;
    char err[96];
} w9_report;

typedef struct w9_sub_arg {
    es_store *st; /* the thread's store (mem); NULL: open `uri` */
    const char *uri;
    uint64_t expect;
    int fd; /* "R" when subscribed, then the report */
} w9_sub_arg;

static int write_all(int fd, const void *p, size_t n)
{
    for (const char *c = p; n;) {
        ssize_t w = write(fd, c, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        c += w;
        n -= (size_t)w;
    }
    return 0;
}

static int read_all(int fd, void *p, size_t n)
{
    for (char *c = p; n;) {
        ssize_t got = read(fd, c, n);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return -1;
        c += got;
        n -= (size_t)got;
    }
    return 0;
}

/* The subscriber: subscribe from the end, say so, then take batches until
 * every expected event came (or none for W9_IDLE_S), and report. */
static void w9_subscribe(w9_sub_arg *a)
{
    w9_report rep = {0};
    es_store *st = a->st;
    es_sub *sub = NULL;
    double *lat = calloc(a->expect ? a->expect : 1, sizeof *lat);
    es_sub_options so = ES_SUB_OPTIONS_INIT;
    es_sub_open_options oo = ES_SUB_OPEN_OPTIONS_INIT;
    so.start = ES_SUB_FROM_END;
    so.batch_size = 1000;
    oo.checkpoint_every = 1u << 30; /* the checkpoint is not what is measured */
    oo.checkpoint_ms = 1000;
    if (!lat) {
        snprintf(rep.err, sizeof rep.err, "out of memory");
        goto done;
    }
    if (!st && es_store_open(&st, a->uri, NULL)) {
        st = NULL;
        snprintf(rep.err, sizeof rep.err, "subscriber: open: %.70s", es_error_last());
        goto done;
    }
    (void)es_sub_delete(st, W9_SUB); /* one left by an earlier run in --dir */
    if (es_sub_create(st, W9_SUB, &so) || es_sub_open(&sub, st, W9_SUB, &oo)) {
        snprintf(rep.err, sizeof rep.err, "subscriber: %.70s", es_error_last());
        goto done;
    }
    if (write_all(a->fd, "R", 1))
        goto done;
    double idle_since = now_s();
    while (rep.n < a->expect) {
        const es_event *const *evs;
        size_t n;
        int rc = es_sub_next(&evs, &n, sub, 1000);
        int64_t now = real_ns();
        if (rc == ES_ETIMEDOUT) {
            if (now_s() - idle_since > W9_IDLE_S) {
                snprintf(rep.err, sizeof rep.err, "subscriber: %" PRIu64 " of %" PRIu64 " events",
                         rep.n, a->expect);
                goto done;
            }
            continue;
        }
        if (rc) {
            snprintf(rep.err, sizeof rep.err, "subscriber: %.70s", es_error_last());
            goto done;
        }
        idle_since = now_s();
        for (size_t i = 0; i < n && rep.n < a->expect; i++) {
            int64_t t0;
            if (evs[i]->data_len < sizeof t0)
                continue;
            memcpy(&t0, evs[i]->data, sizeof t0);
            lat[rep.n++] = (double)(now - t0) / 1e9;
        }
        if (es_sub_ack(sub, evs[n - 1]->position)) {
            snprintf(rep.err, sizeof rep.err, "subscriber: ack: %.70s", es_error_last());
            goto done;
        }
    }
    rep.ok = 1;
done:
    es_sub_close(sub);
    if (!a->st)
        es_store_close(st);
    if (write_all(a->fd, &rep, sizeof rep) == 0 && rep.n)
        (void)write_all(a->fd, lat, rep.n * sizeof *lat);
    free(lat);
}

static void *w9_sub_thread(void *p)
{
    w9_subscribe(p);
    return NULL;
}

typedef struct w9_writer {
    es_store *st;
    int id;
    uint64_t n;
    double *lat; /* acknowledgement, seconds */
    int err;
} w9_writer;

static void *w9_write_thread(void *p)
{
    w9_writer *a = p;
    uint8_t key[16], data[PAYLOAD];
    stream_id(key, 9000 + (unsigned)a->id);
    for (uint64_t i = 0; i < a->n; i++) {
        payload(data, i);
        es_event_new ev = {.type = "Live", .data = data, .data_len = PAYLOAD};
        double t0 = now_s();
        int64_t start = real_ns();
        memcpy(data, &start, sizeof start);
        if (es_append(NULL, a->st, key, 16, i, &ev, 1)) {
            fprintf(stderr, "es_bench: W9 writer %d: %s\n", a->id, es_error_last());
            a->err = 1;
            return NULL;
        }
        a->lat[i] = now_s() - t0;
    }
    return NULL;
}

int run_w9(const bench *b, const char *sys, result *r)
{
    uint64_t per = scaled(b, 1000, 20), total = per * W9_WRITERS;
    bool thread = strcmp(sys, "eventsrc-mem") == 0; /* mem: a store of one process */
    char uri[800];
    es_store *st = NULL;
    pid_t pid = -1;
    pthread_t sub_th, th[W9_WRITERS];
    bool sub_started = false;
    w9_writer wr[W9_WRITERS];
    w9_report rep = {0};
    int fds[2] = {-1, -1};
    double *ack = calloc(total, sizeof *ack), *live = NULL;
    w9_sub_arg sa = {.expect = total};
    char ready = 0;
    if (!ack)
        return fail(r, "out of memory");
    signal(SIGPIPE, SIG_IGN); /* a subscriber writing to a closed pipe: an error, not a death */
    if (w9_uri(uri, sizeof uri, b, sys, r) || pipe(fds) != 0)
        goto out;
    sa.uri = uri;
    sa.fd = fds[1];
    if (thread) {
        if (es_store_open(&st, uri, NULL)) {
            fail(r, "open %s: %s", uri, es_error_last());
            goto out;
        }
        sa.st = st;
        if (pthread_create(&sub_th, NULL, w9_sub_thread, &sa) != 0) {
            fail(r, "cannot start the subscriber thread");
            goto out;
        }
        sub_started = true;
    } else {
        /* before this process opens the store: a child must not inherit an
         * open LMDB environment */
        fflush(NULL);
        if ((pid = fork()) < 0) {
            fail(r, "fork: %s", strerror(errno));
            goto out;
        }
        if (pid == 0) {
            close(fds[0]);
            w9_subscribe(&sa);
            _exit(0);
        }
    }
    if (!thread) { /* the child's end; a thread writes on it until joined */
        close(fds[1]);
        fds[1] = -1;
    }
    if (read_all(fds[0], &ready, 1) != 0 || ready != 'R') {
        if (read_all(fds[0], &rep, sizeof rep) == 0)
            fail(r, "%s", rep.err);
        else
            fail(r, "the subscriber did not start");
        goto out;
    }
    if (!st && es_store_open(&st, uri, NULL)) {
        fail(r, "open %s: %s", uri, es_error_last());
        goto out;
    }
    double t0 = now_s();
    for (int i = 0; i < W9_WRITERS; i++) {
        wr[i] = (w9_writer){.st = st, .id = i, .n = per, .lat = ack + per * (uint64_t)i};
        pthread_create(&th[i], NULL, w9_write_thread, &wr[i]);
    }
    int err = 0;
    for (int i = 0; i < W9_WRITERS; i++) {
        pthread_join(th[i], NULL);
        err |= wr[i].err;
    }
    r->events_per_s = (double)total / (now_s() - t0);
    if (err)
        fail(r, "a writer failed");
    /* the subscriber reports once it has every event (or gives up) */
    if (read_all(fds[0], &rep, sizeof rep) != 0 || rep.n > total) {
        fail(r, "the subscriber did not report");
        goto out;
    }
    if (rep.n && (!(live = calloc(rep.n, sizeof *live)) ||
                  read_all(fds[0], live, rep.n * sizeof *live) != 0)) {
        fail(r, "the subscriber's report was cut short");
        goto out;
    }
    if (!rep.ok) {
        fail(r, "%s", rep.err);
        goto out;
    }
    result ackr = {0};
    percentiles(ack, total, &ackr);
    percentiles(live, rep.n, r);
    r->ack_p50_us = ackr.p50_us;
    r->ack_p99_us = ackr.p99_us;
    if (r->ok)
        snprintf(r->note, sizeof r->note,
                 "append->handler; ack p50 %.1f p99 %.1f us; 16x%" PRIu64 "; subscriber: %s",
                 ackr.p50_us, ackr.p99_us, per, thread ? "thread" : "process");
out:
    if (fds[0] >= 0)
        close(fds[0]); /* a subscriber still reporting gets EPIPE */
    fds[0] = -1;
    if (sub_started)
        pthread_join(sub_th, NULL); /* it reports (or gives up) on its own */
    if (pid > 0) {
        if (!r->ok)
            kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
    }
    if (fds[0] >= 0)
        close(fds[0]);
    if (fds[1] >= 0)
        close(fds[1]);
    es_store_close(st);
    free(ack);
    free(live);
    return r->ok ? 0 : -1;
}

static const result *w9_row(const bench *b, const char *sys)
{
    for (int i = 0; i < b->n_results; i++)
        if (strcmp(b->results[i].workload, "W9") == 0 && strcmp(b->results[i].system, sys) == 0 &&
            b->results[i].ok)
            return &b->results[i];
    return NULL;
}

/* BENCHMARKS.md: lmdb's p50 within 1 ms of the append's own acknowledgement;
 * pg (notify=1) p50 <= 5 ms. */
void w9_targets(const bench *b)
{
    const result *l = w9_row(b, "eventsrc-lmdb"), *p = w9_row(b, "eventsrc-pg");
    if (l) {
        double v = (l->p50_us - l->ack_p50_us) / 1000;
        if (b->json)
            printf("{\"target\":\"W9 eventsrc-lmdb handler p50 - ack p50 (ms)\",\"value\":%.3f,"
                   "\"goal\":1,\"met\":%s}\n",
                   v, v <= 1 ? "true" : "false");
        else
            printf("| %-44s | %7.3f | <= 1 ms | %s |\n", "W9 lmdb handler p50 - ack p50 (ms)", v,
                   v <= 1 ? "met" : "MISSED");
    }
    if (p) {
        double v = p->p50_us / 1000;
        if (b->json)
            printf("{\"target\":\"W9 eventsrc-pg handler p50 (ms)\",\"value\":%.3f,\"goal\":5,"
                   "\"met\":%s}\n",
                   v, v <= 5 ? "true" : "false");
        else
            printf("| %-44s | %7.3f | <= 5 ms | %s |\n", "W9 pg (notify=1) handler p50 (ms)", v,
                   v <= 5 ? "met" : "MISSED");
    }
}
