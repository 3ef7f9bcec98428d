/*
 * testutil.h — helpers shared by the test programs: fresh stores of the
 * backend under test, a fake clock, and a seeded random generator.
 */
#ifndef ES_TESTUTIL_H
#define ES_TESTUTIL_H

#include <eventsrc.h>

#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

/* The backend under test: "mem", "lmdb", "pg" or "http"; set by tu_init from argv. */
extern const char *tu_backend;

/* Parse argv (backend name first) and print the seed. Returns 0, or 77
 * (ctest's skip code) when the backend is not available. */
int tu_init(int argc, char **argv, const char *suite);

typedef struct tu_store {
    es_store *st;
    char uri[512];
    char dir[256];
    /* fake clock, advanced 1 ms per call; atomic because a store calls its
     * clock from every thread that appends (outside any lock of its own) */
    _Atomic int64_t clock_now;
    int server_pid; /* http: the esrc serve this store talks to */
} tu_store;

/* http: start `esrc serve --open` ($ES_TEST_ESRC) on a free loopback port
 * over the lmdb store STORE_URI, its log in LOG; its URL into url.
 * @return the server's pid (fails the test when it cannot start). */
int tu_http_start(const char *store_uri, const char *log, char *url, size_t cap);
/* Stop a server with signal sig (SIGTERM: gracefully) and reap it. */
void tu_http_stop(int pid, int sig);

/* Open a fresh, empty store of the backend under test with the fake clock. */
void tu_open(tu_store *ts);
/* Open with options (the clock is set unless opts->clock is). */
void tu_open_opts(tu_store *ts, es_open_options *opts);
/* Close and reopen the same store (mem: loses everything, so callers skip). */
void tu_reopen(tu_store *ts);
/* Close and delete. */
void tu_close(tu_store *ts);

int64_t tu_clock(void *payload);

/* xorshift64* seeded from ES_TEST_SEED or the default; printed by tu_init. */
extern uint64_t tu_seed;
uint64_t tu_rand(uint64_t *state);
uint64_t tu_rand_below(uint64_t *state, uint64_t n);

/* Append one event with given type/data to a stream. */
int tu_append1(es_store *st, const char *stream, uint64_t expected, const char *type,
               const char *data, es_append_result *out);

/* Number of events in the whole log. */
uint64_t tu_count_log(es_store *st);

#define TU_EXPECT_OK(expr)                                                                         \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_ != 0)                                                                              \
            fail_msg("%s returned %d (%s): %s", #expr, rc_, es_strerror(rc_), es_error_last());    \
    } while (0)

#endif
