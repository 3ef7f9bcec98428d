/*
 * testutil.c — see testutil.h.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

const char *tu_backend = "mem";
uint64_t tu_seed = 20261127;
static unsigned schema_counter;

int tu_init(int argc, char **argv, const char *suite)
{
    const char *s = getenv("ES_TEST_SEED");
    if (argc > 1)
        tu_backend = argv[1];
    if (s && *s)
        tu_seed = strtoull(s, NULL, 10);
    printf("[ %s ] backend=%s seed=%llu (set ES_TEST_SEED to change)\n", suite, tu_backend,
           (unsigned long long)tu_seed);
    if (strcmp(tu_backend, "pg") == 0) {
        const char *uri = getenv("ES_TEST_PG_URI");
        if (!uri || !*uri) {
            printf("SKIPPED: no PostgreSQL server given (set ES_TEST_PG_URI)\n");
            return 77;
        }
    }
    if (strcmp(tu_backend, "http") == 0) {
        const char *esrc = getenv("ES_TEST_ESRC");
        if (!esrc || !*esrc) {
            printf("SKIPPED: no esrc to serve the store (set ES_TEST_ESRC)\n");
            return 77;
        }
    }
    return 0;
}

int tu_http_start(const char *store_uri, const char *log, char *url, size_t cap)
{
    int fds[2];
    char line[512];
    size_t n = 0;
    if (pipe(fds) != 0)
        fail_msg("pipe failed");
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork failed");
    if (pid == 0) {
        int lf = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
        dup2(fds[1], 1);
        if (lf >= 0)
            dup2(lf, 2);
        close(fds[0]);
        /* bodies up to a whole 64 MiB batch in base64, 10000 events */
        execl(getenv("ES_TEST_ESRC"), "esrc", "--store", store_uri, "serve", "--open", "--listen",
              "127.0.0.1:0", "--max-body", "134217728", "--max-events", "10000", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    /* the first line: "esrc serve: listening on http://127.0.0.1:PORT (store lmdb)" */
    while (n + 1 < sizeof line && read(fds[0], &line[n], 1) == 1 && line[n] != '\n')
        n++;
    line[n] = 0;
    close(fds[0]);
    const char *u = strstr(line, "http://");
    const char *end = u ? strchr(u, ' ') : NULL;
    if (!u || !end || (size_t)(end - u) >= cap) {
        tu_http_stop(pid, SIGKILL);
        fail_msg("esrc serve did not start (log in %s): '%s'", log, line);
    }
    memcpy(url, u, (size_t)(end - u));
    url[end - u] = 0;
    return (int)pid;
}

void tu_http_stop(int pid, int sig)
{
    int status;
    if (pid <= 0)
        return;
    kill(pid, sig);
    while (waitpid(pid, &status, 0) < 0)
        ;
}

int64_t tu_clock(void *payload)
{
    tu_store *ts = payload;
    return atomic_fetch_add(&ts->clock_now, 1000) + 1000;
}

static void make_uri(tu_store *ts)
{
    if (strcmp(tu_backend, "mem") == 0) {
        snprintf(ts->uri, sizeof ts->uri, "mem:");
    } else if (strcmp(tu_backend, "lmdb") == 0) {
        const char *tmp = getenv("TMPDIR");
        snprintf(ts->dir, sizeof ts->dir, "%s/es-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(ts->dir))
            fail_msg("mkdtemp failed");
        snprintf(ts->uri, sizeof ts->uri, "lmdb:%s", ts->dir);
    } else if (strcmp(tu_backend, "pg") == 0) {
        const char *base = getenv("ES_TEST_PG_URI");
        /* Each store gets its own schema so tests never see each other. */
        snprintf(ts->uri, sizeof ts->uri, "%s%sschema=t_%d_%u", base, strchr(base, '?') ? "&" : "?",
                 (int)getpid(), ++schema_counter);
    } else if (strcmp(tu_backend, "http") == 0) {
        /* a server of our own over a fresh lmdb store: tests never see each
         * other, as on the other backends */
        char store[300], log[300];
        const char *tmp = getenv("TMPDIR");
        snprintf(ts->dir, sizeof ts->dir, "%s/es-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
        if (!mkdtemp(ts->dir))
            fail_msg("mkdtemp failed");
        snprintf(store, sizeof store, "lmdb:%s/store", ts->dir);
        snprintf(log, sizeof log, "%s/serve.log", ts->dir);
        ts->server_pid = tu_http_start(store, log, ts->uri, sizeof ts->uri);
    } else {
        fail_msg("unknown backend %s", tu_backend);
    }
}

void tu_open_opts(tu_store *ts, es_open_options *opts)
{
    memset(ts, 0, sizeof *ts);
    ts->clock_now = 1767225600000000LL; /* 2026-01-01T00:00:00Z */
    make_uri(ts);
    if (!opts->clock) {
        opts->clock = tu_clock;
        opts->clock_payload = ts;
    }
    int rc = es_store_open(&ts->st, ts->uri, opts);
    if (rc)
        fail_msg("open %s: %s: %s", ts->uri, es_strerror(rc), es_error_last());
}

void tu_open(tu_store *ts)
{
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    tu_open_opts(ts, &o);
}

void tu_reopen(tu_store *ts)
{
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.clock = tu_clock;
    o.clock_payload = ts;
    /* the next handle reads the log as this one left it (postgres: once
     * older transactions elsewhere have ended) */
    TU_EXPECT_OK(es_log_catch_up(ts->st, 60000));
    es_store_close(ts->st);
    ts->st = NULL;
    int rc = es_store_open(&ts->st, ts->uri, &o);
    if (rc)
        fail_msg("reopen %s: %s: %s", ts->uri, es_strerror(rc), es_error_last());
}

void tu_close(tu_store *ts)
{
    es_store_close(ts->st);
    ts->st = NULL;
    tu_http_stop(ts->server_pid, SIGTERM);
    ts->server_pid = 0;
    if (ts->dir[0]) {
        char cmd[600];
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", ts->dir);
        if (system(cmd) != 0)
            fprintf(stderr, "could not remove %s\n", ts->dir);
        ts->dir[0] = 0;
    }
}

uint64_t tu_rand(uint64_t *s)
{
    uint64_t x = *s ? *s : 88172645463325252ULL;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 2685821657736338717ULL;
}

uint64_t tu_rand_below(uint64_t *s, uint64_t n)
{
    return n ? tu_rand(s) % n : 0;
}

int tu_append1(es_store *st, const char *stream, uint64_t expected, const char *type,
               const char *data, es_append_result *out)
{
    es_event_new ev = {.type = type, .data = data, .data_len = data ? strlen(data) : 0};
    return es_append(out, st, stream, strlen(stream), expected, &ev, 1);
}

uint64_t tu_count_log(es_store *st)
{
    es_cursor *c;
    const es_event *ev;
    uint64_t n = 0;
    TU_EXPECT_OK(es_log_catch_up(st, 60000));
    TU_EXPECT_OK(es_log_cursor(&c, st, NULL));
    int rc;
    while ((rc = es_cursor_next(&ev, c)) == 0)
        n++;
    assert_int_equal(rc, ES_ITEROVER);
    es_cursor_free(c);
    return n;
}
