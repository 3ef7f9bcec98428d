/*
 * wake.c — es_log_wait wakes on new events instead of polling: a waiter
 * blocked with a long timeout returns once another thread (every store) or
 * another process (lmdb, pg) appends; it times out when nothing comes; it
 * returns at once when the log is already past.  On lmdb, the mechanism
 * itself: a commit bumps the word in DIR/eventsrc-wake that other processes
 * sleep on, a commit that misses a waiter's word is still seen (the bounded
 * re-check), and a read-only opener waits with or without the file.
 *
 * Latencies are printed, never asserted (BENCHMARKS.md W9 measures them).
 * Child processes are this program run again (fork + exec) with a role.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define LONG_WAIT_MS 10000

static const char *self;

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* one clock for every process of the machine */
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- child roles ---- */

/* "append URI FD": append one event, then write "<start µs> <ack µs>\n"
 * (CLOCK_MONOTONIC around the append) to FD. */
static int child_append(const char *uri, int fd)
{
    es_store *st;
    int rc = es_store_open(&st, uri, NULL);
    if (rc) {
        fprintf(stderr, "child: open %s: %s\n", uri, es_error_last());
        return 3;
    }
    int64_t t0 = mono_us();
    rc = tu_append1(st, "from-child", ES_EXPECT_ANY, "T", "x", NULL);
    int64_t t1 = mono_us();
    es_store_close(st);
    if (rc) {
        fprintf(stderr, "child: append: %s\n", es_error_last());
        return 4;
    }
    char line[64];
    int len = snprintf(line, sizeof line, "%lld %lld\n", (long long)t0, (long long)t1);
    return write(fd, line, (size_t)len) == len ? 0 : 5;
}

/* "ro-wait DIR": open read-only, check the log is at 1, wait for position 2
 * (another process appends it); exit 0 when it came, 6 on a timeout. */
static int child_ro_wait(const char *dir)
{
    es_store *st;
    char uri[600];
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.flags = ES_OPEN_READONLY;
    snprintf(uri, sizeof uri, "lmdb:%s", dir);
    int rc = es_store_open(&st, uri, &o);
    if (rc) {
        fprintf(stderr, "   as uid %d: open: %s\n", (int)getuid(), es_error_last());
        return 3;
    }
    if (es_log_wait(st, 0, 0) != 0 || es_log_wait(st, 1, 0) != ES_ETIMEDOUT) {
        es_store_close(st);
        return 4;
    }
    /* tell the parent we are about to wait (it appends then) */
    if (write(STDOUT_FILENO, "ready\n", 6) != 6)
        return 5;
    int64_t t0 = mono_us();
    rc = es_log_wait(st, 1, LONG_WAIT_MS);
    fprintf(stderr, "   as uid %d: es_log_wait returned %s after %.1f ms\n", (int)getuid(),
            rc ? es_strerror(rc) : "0", (double)(mono_us() - t0) / 1000);
    es_store_close(st);
    return rc == 0 ? 0 : 6;
}

/* ---- helpers ---- */

/* Start `self role arg…` with its stdout on a pipe; *out_fd reads it. */
static pid_t spawn(char *const argv[], int *out_fd)
{
    int fds[2];
    if (pipe(fds) != 0)
        fail_msg("pipe: %s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        if (dup2(fds[1], STDOUT_FILENO) < 0)
            _exit(126);
        execv(argv[0], argv);
        _exit(127);
    }
    close(fds[1]);
    *out_fd = fds[0];
    return pid;
}

static int reap(pid_t pid)
{
    int status;
    if (waitpid(pid, &status, 0) != pid)
        fail_msg("waitpid: %s", strerror(errno));
    if (!WIFEXITED(status))
        fail_msg("the child died (status %d)", status);
    return WEXITSTATUS(status);
}

static void read_line(int fd, char *line, size_t cap)
{
    size_t n = 0;
    char c;
    while (n + 1 < cap && read(fd, &c, 1) == 1 && c != '\n')
        line[n++] = c;
    line[n] = 0;
}

/* Another process appends one event to `uri`; the caller waits.  Returns
 * es_log_wait's code and prints the latencies. */
static int wait_for_other_process(es_store *st, const char *uri, uint64_t after)
{
    char fdarg[16] = "1"; /* the child's stdout: our pipe */
    char *argv[] = {(char *)self, "append", (char *)uri, fdarg, NULL};
    int fd;
    pid_t pid = spawn(argv, &fd);
    int rc = es_log_wait(st, after, LONG_WAIT_MS);
    int64_t woke = mono_us();
    char line[64];
    read_line(fd, line, sizeof line);
    close(fd);
    assert_int_equal(reap(pid), 0);
    long long t0 = 0, t1 = 0;
    if (sscanf(line, "%lld %lld", &t0, &t1) == 2)
        printf("   woken %.3f ms after the other process began its append (acknowledged "
               "after %.3f ms)\n",
               (double)(woke - t0) / 1000, (double)(t1 - t0) / 1000);
    return rc;
}

/* ---- every store ---- */

static void test_wait_returns_at_once_when_the_log_is_past(void **state)
{
    (void)state;
    tu_store ts;
    tu_open(&ts);
    uint64_t last;
    TU_EXPECT_OK(tu_append1(ts.st, "s", ES_EXPECT_ANY, "T", "x", NULL));
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    TU_EXPECT_OK(es_store_last_position(&last, ts.st));
    /* a zero timeout cannot sleep: it answers from the log as it is */
    TU_EXPECT_OK(es_log_wait(ts.st, last - 1, 0));
    TU_EXPECT_OK(es_log_wait(ts.st, 0, 0));
    int64_t t0 = mono_us();
    TU_EXPECT_OK(es_log_wait(ts.st, last - 1, LONG_WAIT_MS));
    printf("   a wait already satisfied took %.1f µs\n", (double)(mono_us() - t0));
    assert_int_equal(es_log_wait(ts.st, last, 0), ES_ETIMEDOUT);
    tu_close(&ts);
}

static void test_wait_times_out_when_nothing_comes(void **state)
{
    (void)state;
    tu_store ts;
    tu_open(&ts);
    uint64_t last;
    TU_EXPECT_OK(es_store_last_position(&last, ts.st));
    assert_int_equal(es_log_wait(ts.st, last, 50), ES_ETIMEDOUT);
    assert_int_equal(es_error_last_code(), ES_ETIMEDOUT);
    assert_non_null(strstr(es_error_last(), "nothing past position"));
    /* an event satisfies a wait for it, not one for the next (positions
     * may leave gaps: pg) */
    TU_EXPECT_OK(tu_append1(ts.st, "s", ES_EXPECT_ANY, "T", "x", NULL));
    TU_EXPECT_OK(es_log_catch_up(ts.st, 60000));
    TU_EXPECT_OK(es_log_wait(ts.st, last, 50));
    TU_EXPECT_OK(es_store_last_position(&last, ts.st));
    assert_int_equal(es_log_wait(ts.st, last, 50), ES_ETIMEDOUT);
    tu_close(&ts);
}

typedef struct waiter {
    es_store *st;
    uint64_t after;
    int rc;
    uint64_t seen; /* the log's last position when the wait returned */
    int64_t woke_us;
} waiter;

static void *wait_thread(void *p)
{
    waiter *w = p;
    w->rc = es_log_wait(w->st, w->after, LONG_WAIT_MS);
    w->woke_us = mono_us();
    es_store_last_position(&w->seen, w->st);
    return NULL;
}

/* Three threads blocked in es_log_wait, for one and for two more events:
 * every one of them wakes (a broadcast, not one signal), none before its
 * event is there. */
static void test_append_in_another_thread_wakes_every_waiter(void **state)
{
    (void)state;
    enum { N = 3 };
    tu_store ts;
    tu_open(&ts);
    uint64_t last;
    TU_EXPECT_OK(es_store_last_position(&last, ts.st));
    pthread_t th[N];
    waiter w[N];
    for (int i = 0; i < N; i++) {
        w[i] = (waiter){.st = ts.st, .after = last + (i == N - 1 ? 1 : 0)};
        assert_int_equal(pthread_create(&th[i], NULL, wait_thread, &w[i]), 0);
    }
    struct timespec nap = {0, 30 * 1000000L}; /* let them block */
    nanosleep(&nap, NULL);
    int64_t t0 = mono_us();
    TU_EXPECT_OK(tu_append1(ts.st, "s", ES_EXPECT_ANY, "T", "first", NULL));
    int64_t t1 = mono_us();
    nanosleep(&nap, NULL);
    TU_EXPECT_OK(tu_append1(ts.st, "s", ES_EXPECT_ANY, "T", "second", NULL));
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        if (w[i].rc)
            fail_msg("waiter %d: %s: %s", i, es_strerror(w[i].rc), es_error_last());
        assert_true(w[i].seen > w[i].after);
    }
    printf("   waiters woken %.3f and %.3f ms after the append began (acknowledged after %.3f "
           "ms)\n",
           (double)(w[0].woke_us - t0) / 1000, (double)(w[1].woke_us - t0) / 1000,
           (double)(t1 - t0) / 1000);
    tu_close(&ts);
}

/* The point of the wake: a writer in another process (lmdb, pg). */
static void test_append_in_another_process_wakes_the_waiter(void **state)
{
    (void)state;
    if (strcmp(tu_backend, "mem") == 0) {
        printf("   mem: a store of one process\n");
        skip();
        return;
    }
    tu_store ts;
    tu_open(&ts);
    uint64_t last;
    TU_EXPECT_OK(es_store_last_position(&last, ts.st));
    for (int round = 0; round < 3; round++) {
        int rc = wait_for_other_process(ts.st, ts.uri, last);
        if (rc)
            fail_msg("round %d: %s: %s", round, es_strerror(rc), es_error_last());
        TU_EXPECT_OK(es_store_last_position(&last, ts.st));
    }
    tu_close(&ts);
}

/* ---- lmdb: the mechanism ---- */

static bool lmdb_only(void)
{
    if (strcmp(tu_backend, "lmdb") == 0)
        return true;
    printf("   lmdb only\n");
    skip();
    return false;
}

static void test_lmdb_commit_bumps_the_shared_word(void **state)
{
    (void)state;
    if (!lmdb_only())
        return;
    tu_store ts;
    tu_open(&ts);
    char f[600];
    snprintf(f, sizeof f, "%s/eventsrc-wake", ts.dir);
    int fd = open(f, O_RDONLY);
    assert_true(fd >= 0);
    struct stat sb;
    assert_int_equal(fstat(fd, &sb), 0);
    assert_true(sb.st_size >= 4);
    const volatile uint32_t *word = mmap(NULL, 4, PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    assert_true(word != MAP_FAILED);
    uint32_t before = *word;
    TU_EXPECT_OK(tu_append1(ts.st, "s", ES_EXPECT_ANY, "T", "x", NULL));
    uint32_t mine = *word;
    assert_int_not_equal(mine, before);
    /* another process, through its own map of the file */
    uint64_t last;
    TU_EXPECT_OK(es_store_last_position(&last, ts.st));
    TU_EXPECT_OK(wait_for_other_process(ts.st, ts.uri, last));
    assert_int_not_equal(*word, mine);
    /* a failed append commits nothing and wakes nobody */
    uint32_t now = *word;
    assert_int_equal(tu_append1(ts.st, "s", 0, "T", "conflict", NULL), ES_ECONFLICT);
    assert_int_equal(*word, now);
    munmap((void *)word, 4);
    tu_close(&ts);
}

/* A commit that does not bump the waiter's word (here: the file was
 * replaced under it, as with a writer of an older eventsrc) is still seen,
 * by the re-check, long before the timeout. */
static void test_lmdb_commit_missing_the_word_is_seen(void **state)
{
    (void)state;
    if (!lmdb_only())
        return;
    tu_store ts;
    tu_open(&ts);
    char f[600];
    snprintf(f, sizeof f, "%s/eventsrc-wake", ts.dir);
    assert_int_equal(unlink(f), 0); /* the child makes a new one: another word */
    uint64_t last;
    TU_EXPECT_OK(es_store_last_position(&last, ts.st));
    TU_EXPECT_OK(wait_for_other_process(ts.st, ts.uri, last));
    tu_close(&ts);
}

static void chmod_or_fail(const char *path, mode_t mode)
{
    if (chmod(path, mode) != 0)
        fail_msg("chmod %s: %s", path, strerror(errno));
}

/* A read-only opener (another user) waits on the writers' word through a
 * read-only map; with no file and a directory it may not write, it polls.
 * Either way the open succeeds and a commit elsewhere ends its wait. */
static void test_lmdb_read_only_opener_waits(void **state)
{
    (void)state;
    if (!lmdb_only())
        return;
    if (geteuid() != 0 || system("command -v runuser >/dev/null") != 0) {
        printf("   needs root and runuser: not tested\n");
        skip();
        return;
    }
    for (int with_file = 1; with_file >= 0; with_file--) {
        tu_store ts;
        tu_open(&ts);
        char f[600];
        TU_EXPECT_OK(tu_append1(ts.st, "s", ES_EXPECT_ANY, "T", "x", NULL));
        snprintf(f, sizeof f, "%s/eventsrc-wake", ts.dir);
        if (!with_file)
            assert_int_equal(unlink(f), 0);
        chmod_or_fail(ts.dir, 0555);
        char *argv[] = {"/usr/sbin/runuser", "-u",      "nobody", "--",
                        (char *)self,        "ro-wait", ts.dir,   NULL};
        if (access(argv[0], X_OK) != 0)
            argv[0] = "/sbin/runuser";
        int fd;
        pid_t pid = spawn(argv, &fd);
        char line[16];
        read_line(fd, line, sizeof line);
        close(fd);
        if (strcmp(line, "ready") == 0)
            TU_EXPECT_OK(tu_append1(ts.st, "s", ES_EXPECT_ANY, "T", "y", NULL));
        int rc = reap(pid);
        chmod_or_fail(ts.dir, 0700);
        if (rc)
            fail_msg("%s the wake file: the read-only waiter exited %d",
                     with_file ? "with" : "without", rc);
        if (!with_file)
            assert_int_equal(access(f, F_OK), -1); /* it did not make one */
        tu_close(&ts);
    }
}

int main(int argc, char **argv)
{
    self = argv[0];
    if (argc == 4 && strcmp(argv[1], "append") == 0)
        return child_append(argv[2], atoi(argv[3]));
    if (argc == 3 && strcmp(argv[1], "ro-wait") == 0)
        return child_ro_wait(argv[2]);
    int rc = tu_init(argc, argv, "wake");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wait_returns_at_once_when_the_log_is_past),
        cmocka_unit_test(test_wait_times_out_when_nothing_comes),
        cmocka_unit_test(test_append_in_another_thread_wakes_every_waiter),
        cmocka_unit_test(test_append_in_another_process_wakes_the_waiter),
        cmocka_unit_test(test_lmdb_commit_bumps_the_shared_word),
        cmocka_unit_test(test_lmdb_commit_missing_the_word_is_seen),
        cmocka_unit_test(test_lmdb_read_only_opener_waits),
    };
    char name[64];
    snprintf(name, sizeof name, "wake/%s", tu_backend);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
