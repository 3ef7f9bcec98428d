/*
 * lmdb.c — what only the durable embedded store must show: the map grows by
 * itself; a full disk is a clear error that leaves the store intact; one
 * directory opened twice in a process shares one environment; read-only
 * opens; and crash safety — a writer killed with SIGKILL at random moments
 * never loses an acknowledged append nor leaves half of one visible, and 4
 * processes appending and saving on shared keys stay consistent.
 *
 * Child processes are this program run again (fork + exec) with a role.
 */
#define _GNU_SOURCE
#include "foldview.h"
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <lmdb.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *self;

static void open_dir(es_store **st, const char *dir, unsigned flags)
{
    char uri[600];
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.flags = flags;
    snprintf(uri, sizeof uri, "lmdb:%s", dir);
    int rc = es_store_open(st, uri, &o);
    if (rc)
        fail_msg("open %s: %s", uri, es_error_last());
}

static int count_stream(const uint8_t *k, size_t len, uint64_t head, void *payload)
{
    (void)k, (void)len, (void)head, (void)payload;
    return 0;
}

static void make_dir(char *dir, size_t cap)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, cap, "%s/es-lmdb-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(dir))
        fail_msg("mkdtemp");
}

static void remove_dir(const char *dir)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

static void test_map_grows_by_itself(void **state)
{
    (void)state;
    char dir[256], uri[300];
    make_dir(dir, sizeof dir);
    snprintf(uri, sizeof uri, "lmdb:%s", dir);
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.map_size = 1 << 20; /* 1 MiB, then 40 MiB of events */
    o.flags = ES_OPEN_NOSYNC;
    es_store *st;
    TU_EXPECT_OK(es_store_open(&st, uri, &o));
    static uint8_t blob[100000];
    memset(blob, 'b', sizeof blob);
    es_event_new ev = {.type = "Blob", .data = blob, .data_len = sizeof blob};
    for (int i = 0; i < 400; i++)
        TU_EXPECT_OK(es_append(NULL, st, "s", 1, (uint64_t)i, &ev, 1));
    es_store_close(st);
    open_dir(&st, dir, 0);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, st, "s", 1));
    assert_int_equal(h, 400);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, st, NULL, 0));
    assert_true(v.ok);
    es_store_close(st);
    remove_dir(dir);
}

static void test_same_directory_twice_shares_one_environment(void **state)
{
    (void)state;
    char dir[256];
    es_store *a, *b;
    make_dir(dir, sizeof dir);
    open_dir(&a, dir, 0);
    open_dir(&b, dir, 0);
    TU_EXPECT_OK(tu_append1(a, "s", 0, "T", "from a", NULL));
    TU_EXPECT_OK(tu_append1(b, "s", 1, "T", "from b", NULL));
    assert_int_equal(tu_append1(a, "s", 1, "T", "late", NULL), ES_ECONFLICT);
    es_store_close(a);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, b, "s", 1));
    assert_int_equal(h, 2);
    es_store_close(b);
    remove_dir(dir);
}

static void test_uri_options(void **state)
{
    (void)state;
    char dir[256], uri[400];
    es_store *st;
    make_dir(dir, sizeof dir);
    const char *bad[] = {"?bogus", "?nosync=maybe", "?map_size=12", "?map_size=", "?map_size=1x"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        snprintf(uri, sizeof uri, "lmdb:%s/sub%s", dir, bad[i]);
        assert_int_equal(es_store_open(&st, uri, NULL), ES_EINVAL);
        assert_non_null(strstr(es_error_last(), "lmdb:"));
        /* nothing was created */
        snprintf(uri, sizeof uri, "%s/sub", dir);
        assert_int_equal(access(uri, F_OK), -1);
    }
    snprintf(uri, sizeof uri, "lmdb:%s/sub?nosync&map_size=2097152", dir);
    TU_EXPECT_OK(es_store_open(&st, uri, NULL));
    TU_EXPECT_OK(tu_append1(st, "s", 0, "T", "x", NULL));
    es_store_close(st);
    snprintf(uri, sizeof uri, "%s/sub", dir);
    open_dir(&st, uri, ES_OPEN_READONLY);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, st, "s", 1));
    assert_int_equal(h, 1);
    es_store_close(st);
    remove_dir(dir);
}

static void test_read_only_and_missing_stores(void **state)
{
    (void)state;
    char dir[256], missing[300];
    es_store *st;
    make_dir(dir, sizeof dir);
    snprintf(missing, sizeof missing, "lmdb:%s/nope", dir);
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.flags = ES_OPEN_NOCREATE;
    assert_int_equal(es_store_open(&st, missing, &o), ES_ENOTFOUND);
    o.flags = ES_OPEN_READONLY;
    assert_int_equal(es_store_open(&st, missing, &o), ES_ENOTFOUND);
    assert_int_equal(es_store_open(&st, "lmdb:", NULL), ES_EINVAL);
    char file[300];
    snprintf(file, sizeof file, "lmdb:%s/file", dir);
    FILE *f = fopen(file + 5, "w");
    fclose(f);
    assert_int_equal(es_store_open(&st, file, NULL), ES_EINVAL);

    open_dir(&st, dir, 0);
    TU_EXPECT_OK(tu_append1(st, "s", 0, "T", "x", NULL));
    es_store_close(st);
    open_dir(&st, dir, ES_OPEN_READONLY);
    assert_int_equal(tu_append1(st, "s", 1, "T", "y", NULL), ES_EINVAL);
    assert_int_equal(tu_count_log(st), 1);
    es_store_close(st);
    remove_dir(dir);
}

/* ---- children ---- */

/* Event data: "stream|seq|batch|i|n" so the parent can check each event and
 * that every batch it sees is whole. */
static int child_writer(const char *dir, uint64_t seed, int ack_fd)
{
    es_store *st;
    char uri[600];
    snprintf(uri, sizeof uri, "lmdb:%s", dir);
    if (es_store_open(&st, uri, NULL))
        return 2;
    uint64_t rng = seed;
    /* Ready: the parent starts its kill timer only now, after exec and open. */
    if (write(ack_fd, "ready\n", 6) != 6)
        return 5;
    for (uint64_t batch = seed * 1000000;; batch++) {
        char stream[16];
        snprintf(stream, sizeof stream, "s%llu", (unsigned long long)tu_rand_below(&rng, 8));
        uint64_t head;
        if (es_stream_head(&head, st, stream, strlen(stream)))
            return 3;
        size_t n = 1 + tu_rand_below(&rng, 20);
        es_event_new evs[20];
        char data[20][96];
        for (size_t i = 0; i < n; i++) {
            snprintf(data[i], sizeof data[i], "%s|%llu|%llu|%zu|%zu", stream,
                     (unsigned long long)(head + 1 + i), (unsigned long long)batch, i, n);
            evs[i] = (es_event_new){.type = "Crash", .data = data[i], .data_len = strlen(data[i])};
        }
        es_append_result r;
        int rc = es_append(&r, st, stream, strlen(stream), head, evs, n);
        if (rc == ES_ECONFLICT)
            continue;
        if (rc)
            return 4;
        /* Acknowledged: tell the parent (one line per append). */
        char line[128];
        int len = snprintf(line, sizeof line, "%s %llu %zu\n", stream,
                           (unsigned long long)r.first_seq, n);
        if (write(ack_fd, line, (size_t)len) != len)
            return 5;
    }
}

/* A save operation: one more increment, whatever the state. */
static int inc(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    (void)snap, (void)op;
    es_event_new ev = {.type = "Set", .data = "+", .data_len = 1};
    return es_op_emit(ctx, &ev);
}

static int child_mixed(const char *dir, uint64_t seed, int ack_fd)
{
    es_store *st;
    es_view *v;
    char uri[600];
    snprintf(uri, sizeof uri, "lmdb:%s", dir);
    if (es_store_open(&st, uri, NULL))
        return 2;
    es_view_def d = fv_def("counter", 1);
    es_view_options vo = ES_VIEW_OPTIONS_INIT;
    vo.snapshot_every = 8;
    if (es_view_new(&v, st, &d, &vo))
        return 3;
    uint64_t rng = seed;
    es_event_new set = {.type = "Set", .data = "+", .data_len = 1};
    for (int i = 0; i < 60; i++) {
        char line[64];
        int len;
        if (tu_rand_below(&rng, 2)) {
            es_save_result res = ES_SAVE_RESULT_INIT;
            es_save_options so = ES_SAVE_OPTIONS_INIT;
            so.max_attempts = 200;
            so.max_total_ms = 60000;
            es_op real = {.run = inc};
            if (es_save(&res, v, "shared-counter", 14, &real, 1, &so))
                return 4;
            len = snprintf(line, sizeof line, "save %d\n", res.status == ES_SAVED);
            es_save_result_clear(&res, v);
        } else {
            char stream[16];
            snprintf(stream, sizeof stream, "shared-%llu",
                     (unsigned long long)tu_rand_below(&rng, 3));
            es_append_result r;
            if (es_append(&r, st, stream, strlen(stream), ES_EXPECT_ANY, &set, 1))
                return 5;
            len = snprintf(line, sizeof line, "append %s %llu\n", stream,
                           (unsigned long long)r.first_seq);
        }
        if (write(ack_fd, line, (size_t)len) != len)
            return 6;
    }
    es_view_free(v);
    es_store_close(st);
    return 0;
}

static pid_t spawn(const char *role, const char *dir, uint64_t seed, int *read_fd)
{
    int fds[2];
    if (pipe(fds) != 0)
        fail_msg("pipe");
    pid_t pid = fork();
    if (pid == 0) {
        char fdarg[16], seedarg[32];
        close(fds[0]);
        snprintf(fdarg, sizeof fdarg, "%d", fds[1]);
        snprintf(seedarg, sizeof seedarg, "%llu", (unsigned long long)seed);
        execl(self, self, role, dir, seedarg, fdarg, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    *read_fd = fds[0];
    return pid;
}

/* What the parent knows was acknowledged: per stream, the highest seq. */
typedef struct acks {
    uint64_t head[8];
    uint64_t appends;
} acks;

/* Block until the child's first line, "ready". */
static void wait_ready(int fd)
{
    char c, line[16];
    size_t n = 0;
    while (n + 1 < sizeof line && read(fd, &c, 1) == 1 && c != '\n')
        line[n++] = c;
    line[n] = 0;
    if (strcmp(line, "ready") != 0)
        fail_msg("child did not signal readiness (got '%s')", line);
}

/* Read the acknowledgements until the writer's end; the first
 * byte of them (first_byte), already read. */
static void read_acks_from(int fd, acks *a, char first_byte)
{
    static char buf[1 << 16];
    size_t have = 1;
    ssize_t n;
    buf[0] = first_byte;
    while ((n = read(fd, buf + have, sizeof buf - have - 1)) > 0) {
        have += (size_t)n;
        buf[have] = 0;
        char *line = buf, *nl;
        while ((nl = strchr(line, '\n'))) {
            *nl = 0;
            unsigned s;
            unsigned long long first;
            size_t cnt;
            if (sscanf(line, "s%u %llu %zu", &s, &first, &cnt) == 3 && s < 8) {
                if (first + cnt - 1 > a->head[s])
                    a->head[s] = first + cnt - 1;
                a->appends++;
            }
            line = nl + 1;
        }
        have = (size_t)(buf + have - line);
        memmove(buf, line, have);
    }
    /* a torn last line was never a whole acknowledgement */
}

static void check_store_after_crash(const char *dir, const acks *a)
{
    es_store *st;
    open_dir(&st, dir, 0);
    /* every acknowledged event is there */
    for (int s = 0; s < 8; s++) {
        char stream[8];
        uint64_t h;
        snprintf(stream, sizeof stream, "s%d", s);
        TU_EXPECT_OK(es_stream_head(&h, st, stream, strlen(stream)));
        if (h < a->head[s])
            fail_msg("stream %s has %llu events but %llu were acknowledged", stream,
                     (unsigned long long)h, (unsigned long long)a->head[s]);
    }
    /* each event intact and every batch whole */
    es_cursor *c;
    const es_event *ev;
    int rc;
    char want_stream[16] = "";
    uint64_t batch = 0;
    size_t next_i = 0, n = 0;
    TU_EXPECT_OK(es_log_cursor(&c, st, NULL));
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        char data[128], stream[16];
        unsigned long long seq, b;
        size_t i, cnt;
        assert_true(ev->data_len < sizeof data);
        memcpy(data, ev->data, ev->data_len);
        data[ev->data_len] = 0;
        if (sscanf(data, "%15[^|]|%llu|%llu|%zu|%zu", stream, &seq, &b, &i, &cnt) != 5)
            fail_msg("event data '%s' is not what was written", data);
        assert_int_equal(ev->stream_len, strlen(stream));
        assert_memory_equal(ev->stream, stream, ev->stream_len);
        assert_int_equal(ev->seq, seq);
        if (i == 0) {
            if (next_i != n)
                fail_msg("batch %llu is partly visible: %zu of %zu events",
                         (unsigned long long)batch, next_i, n);
            batch = b;
            n = cnt;
            next_i = 0;
            snprintf(want_stream, sizeof want_stream, "%s", stream);
        }
        if (b != batch || i != next_i || cnt != n || strcmp(stream, want_stream) != 0)
            fail_msg("event %zu of batch %llu out of place", i, b);
        next_i++;
    }
    assert_int_equal(rc, ES_ITEROVER);
    if (next_i != n)
        fail_msg("the last batch is partly visible: %zu of %zu events", next_i, n);
    es_cursor_free(c);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, st, NULL, 0));
    if (!v.ok)
        fail_msg("verify after a crash: %s", v.reason);
    es_store_close(st);
}

static void test_sigkill_never_loses_acknowledged_appends(void **state)
{
    (void)state;
    char dir[256];
    acks a = {0};
    uint64_t rng = tu_seed;
    int rounds = getenv("ES_SOAK") ? 1000 : 20;
    make_dir(dir, sizeof dir);
    for (int round = 0; round < rounds; round++) {
        int fd;
        pid_t pid = spawn("writer", dir, tu_seed + (uint64_t)round + 1, &fd);
        wait_ready(fd);
        /* Let it run until it has at least one acknowledged append, then a
         * random while longer, so that every round checks something. */
        uint64_t before = a.appends;
        char c;
        if (read(fd, &c, 1) != 1)
            fail_msg("writer of round %d died before its first append", round);
        struct timespec ts = {0, (long)(1 + tu_rand_below(&rng, 60)) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        if (WIFEXITED(status))
            fail_msg("writer exited with %d before it was killed", WEXITSTATUS(status));
        read_acks_from(fd, &a, c);
        close(fd);
        if (a.appends == before)
            fail_msg("round %d: no acknowledged append to check", round);
        check_store_after_crash(dir, &a);
    }
    printf("   %d kills, %llu acknowledged appends, all present and whole\n", rounds,
           (unsigned long long)a.appends);
    assert_true(a.appends > 0);
    remove_dir(dir);
}

static void test_four_processes_append_and_save_on_shared_keys(void **state)
{
    (void)state;
    char dir[256];
    enum { P = 4 };
    pid_t pids[P];
    int fds[P];
    make_dir(dir, sizeof dir);
    es_store *st;
    open_dir(&st, dir, 0); /* create it before the children race to */
    es_store_close(st);
    for (int i = 0; i < P; i++)
        pids[i] = spawn("mixed", dir, tu_seed + 100 + (uint64_t)i, &fds[i]);
    uint64_t saves = 0, appends = 0, max_seq[3] = {0};
    for (int i = 0; i < P; i++) {
        FILE *f = fdopen(fds[i], "r");
        char line[128];
        while (fgets(line, sizeof line, f)) {
            int ok;
            unsigned s;
            unsigned long long seq;
            if (sscanf(line, "save %d", &ok) == 1)
                saves += (uint64_t)ok;
            else if (sscanf(line, "append shared-%u %llu", &s, &seq) == 2 && s < 3) {
                appends++;
                if (seq > max_seq[s])
                    max_seq[s] = seq;
            }
        }
        fclose(f);
        int status;
        waitpid(pids[i], &status, 0);
        assert_true(WIFEXITED(status));
        assert_int_equal(WEXITSTATUS(status), 0);
    }
    open_dir(&st, dir, 0);
    es_view *v;
    es_view_def d = fv_def("counter", 1);
    TU_EXPECT_OK(es_view_new(&v, st, &d, NULL));
    es_snapshot s;
    TU_EXPECT_OK(es_view_get(&s, v, "shared-counter", 14, ES_LATEST_EVENT));
    assert_int_equal(s.state == ES_SNAP_VALUE ? ((fv_value *)s.value)->count : 0, saves);
    assert_int_equal(s.seq, saves);
    es_snapshot_clear(&s, v);
    uint64_t total = 0;
    for (int k = 0; k < 3; k++) {
        char stream[16];
        uint64_t h;
        snprintf(stream, sizeof stream, "shared-%d", k);
        TU_EXPECT_OK(es_stream_head(&h, st, stream, strlen(stream)));
        assert_true(h >= max_seq[k]);
        total += h;
    }
    assert_int_equal(total, appends); /* contiguous: no seq lost or doubled */
    es_verify_result vr;
    TU_EXPECT_OK(es_verify(&vr, st, NULL, 0));
    assert_true(vr.ok);
    printf("   %d processes: %llu saves and %llu appends, all accounted for\n", P,
           (unsigned long long)saves, (unsigned long long)appends);
    es_view_free(v);
    es_store_close(st);
    remove_dir(dir);
}

static void test_full_disk_is_a_clear_error_and_changes_nothing(void **state)
{
    (void)state;
    char dir[256];
    make_dir(dir, sizeof dir);
    pid_t pid = fork();
    if (pid == 0) {
        /* A file size limit stands in for a full disk: writes past it fail. */
        struct rlimit rl = {4 << 20, 4 << 20};
        signal(SIGXFSZ, SIG_IGN);
        setrlimit(RLIMIT_FSIZE, &rl);
        execl(self, self, "filler", dir, "0", "1", (char *)NULL);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
    /* the store opens, verifies, and holds exactly what was acknowledged */
    es_store *st;
    open_dir(&st, dir, 0);
    FILE *f;
    char path[300];
    snprintf(path, sizeof path, "%s/acked", dir);
    f = fopen(path, "r");
    assert_non_null(f);
    unsigned long long acked = 0;
    assert_int_equal(fscanf(f, "%llu", &acked), 1);
    fclose(f);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, st, "fill", 4));
    assert_int_equal(h, acked);
    assert_true(acked > 0);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, st, NULL, 0));
    assert_true(v.ok);
    es_store_close(st);
    remove_dir(dir);
}

static int child_filler(const char *dir)
{
    es_store *st;
    char uri[600], path[300];
    snprintf(uri, sizeof uri, "lmdb:%s", dir);
    snprintf(path, sizeof path, "%s/acked", dir);
    if (es_store_open(&st, uri, NULL))
        return 2;
    static uint8_t blob[50000];
    memset(blob, 'f', sizeof blob);
    es_event_new ev = {.type = "Fill", .data = blob, .data_len = sizeof blob};
    uint64_t acked = 0;
    int rc = 0;
    for (int i = 0; i < 1000 && rc == 0; i++) {
        rc = es_append(NULL, st, "fill", 4, acked, &ev, 1);
        if (rc == 0)
            acked++;
    }
    /* the failure must be a clear full-disk or I/O error, with a message */
    int ok = (rc == ES_EFULL || rc == ES_EIO) && strlen(es_error_last()) > 0;
    fprintf(stderr, "   filler stopped after %llu appends: %s (%s)\n", (unsigned long long)acked,
            es_strerror(rc), es_error_last());
    es_store_close(st);
    FILE *f = fopen(path, "w"); /* the limit is on file size; this file is tiny */
    if (!f)
        return 3;
    fprintf(f, "%llu\n", (unsigned long long)acked);
    fclose(f);
    return ok ? 0 : 4;
}

/* ---- damaged files, full disks, stale readers, permissions ---- */

static int run(const char *cmd)
{
    int rc = system(cmd);
    return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

static void copy_dir(const char *from, const char *to)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && cp -r '%s' '%s'", to, from, to);
    if (run(cmd) != 0)
        fail_msg("%s failed", cmd);
}

/* In a child process: open, stats, verify, read the log, append.  Exits 0
 * when the open worked, 1 when it said ES_ECORRUPT, 2 for another error
 * code; a signal kills it (the parent checks that none does). */
static int poke_store(const char *dir)
{
    es_store *st;
    char uri[600];
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.flags = ES_OPEN_NOCREATE;
    snprintf(uri, sizeof uri, "lmdb:%s", dir);
    int rc = es_store_open(&st, uri, &o);
    if (rc)
        return rc == ES_ECORRUPT ? 1 : 2;
    es_store_stats ss;
    es_verify_result v;
    es_cursor *c;
    const es_event *ev;
    (void)es_store_stats_get(&ss, st);
    (void)es_verify(&v, st, NULL, 0);
    if (es_log_cursor(&c, st, NULL) == 0) {
        while (es_cursor_next(&ev, c) == 0)
            ;
        es_cursor_free(c);
    }
    (void)tu_append1(st, "s0", ES_EXPECT_ANY, "T", "after", NULL);
    es_store_close(st);
    return 0;
}

/* In a forked child: the test runner's signal handlers would catch a fault
 * and go on running tests in the child; let a fault kill it instead. */
static void default_signals(void)
{
    int sigs[] = {SIGBUS, SIGSEGV, SIGILL, SIGFPE, SIGABRT};
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++)
        signal(sigs[i], SIG_DFL);
}

static int poke_in_child(const char *dir)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        default_signals();
        _exit(poke_store(dir));
    }
    int status;
    waitpid(pid, &status, 0);
    if (WIFSIGNALED(status))
        fail_msg("%s: the child was killed by signal %d (%s)", dir, WTERMSIG(status),
                 strsignal(WTERMSIG(status)));
    assert_true(WIFEXITED(status));
    return WEXITSTATUS(status);
}

static void make_store_of(const char *dir, int events)
{
    es_store *st;
    static char blob[2000];
    memset(blob, 'y', sizeof blob - 1);
    open_dir(&st, dir, ES_OPEN_NOSYNC);
    for (int i = 0; i < events; i++) {
        char stream[8];
        snprintf(stream, sizeof stream, "s%d", i % 5);
        TU_EXPECT_OK(tu_append1(st, stream, ES_EXPECT_ANY, "T", blob, NULL));
    }
    es_store_close(st);
}

static void test_damaged_file_is_an_error_never_a_signal(void **state)
{
    (void)state;
    char dir[256], copy[300], f[400];
    make_dir(dir, sizeof dir);
    make_store_of(dir, 60);
    snprintf(copy, sizeof copy, "%s.copy", dir);
    snprintf(f, sizeof f, "%s/data.mdb", copy);
    const long cuts[] = {8 << 10, 16 << 10, 64 << 10};
    for (size_t i = 0; i < sizeof cuts / sizeof *cuts; i++) {
        copy_dir(dir, copy);
        assert_int_equal(truncate(f, cuts[i]), 0);
        int code = poke_in_child(copy);
        printf("   data.mdb cut to %ld KB: %s\n", cuts[i] >> 10,
               code == 1 ? "ES_ECORRUPT" : "other");
        assert_int_equal(code, 1);
    }
    /* random byte flips (a fixed seed): any outcome but a signal */
    uint64_t rng = tu_seed ^ 0xf11b;
    struct stat sb;
    copy_dir(dir, copy);
    assert_int_equal(stat(f, &sb), 0);
    printf("   flips with seed %llu\n", (unsigned long long)(tu_seed ^ 0xf11b));
    for (int i = 0; i < 24; i++) {
        copy_dir(dir, copy);
        int fd = open(f, O_RDWR);
        assert_true(fd >= 0);
        /* half of them in the meta pages, which are checked before mapping */
        off_t at =
            (off_t)(i % 2 ? tu_rand_below(&rng, 8192) : tu_rand_below(&rng, (uint64_t)sb.st_size));
        uint8_t b;
        assert_int_equal(pread(fd, &b, 1, at), 1);
        b ^= (uint8_t)(1 + tu_rand_below(&rng, 255));
        assert_int_equal(pwrite(fd, &b, 1, at), 1);
        close(fd);
        poke_in_child(copy);
    }
    remove_dir(copy);
    remove_dir(dir);
}

/* ENOSPC from a real (small) file system: a tmpfs of 1 MiB, which needs root. */
static void test_enospc_is_es_efull(void **state)
{
    (void)state;
    char dir[256], cmd[700], store[300];
    make_dir(dir, sizeof dir);
    snprintf(cmd, sizeof cmd, "mount -t tmpfs -o size=1m tmpfs '%s' 2>/dev/null", dir);
    if (run(cmd) != 0) {
        remove_dir(dir);
        printf("   cannot mount a tmpfs (needs root): ENOSPC not tested\n");
        skip();
        return;
    }
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        default_signals();
        /* the child: a store fills the file system; then a new store in the
         * full file system cannot even start */
        es_store *st;
        snprintf(store, sizeof store, "lmdb:%s/a", dir);
        if (es_store_open(&st, store, NULL))
            _exit(10);
        static uint8_t blob[50000];
        es_event_new ev = {.type = "Fill", .data = blob, .data_len = sizeof blob};
        int rc = 0, n = 0;
        while (n < 100 && (rc = es_append(NULL, st, "fill", 4, ES_EXPECT_ANY, &ev, 1)) == 0)
            n++;
        fprintf(stderr, "   full after %d appends: %s (%s)\n", n, es_strerror(rc), es_error_last());
        if (rc != ES_EFULL)
            _exit(11);
        uint64_t h;
        if (es_stream_head(&h, st, "fill", 4) || h != (uint64_t)n)
            _exit(12);
        es_store_close(st);
        /* fill what is left, then create a store */
        snprintf(store, sizeof store, "%s/filler", dir);
        FILE *f = fopen(store, "w");
        while (f && fwrite(blob, 1, 4096, f) == 4096 && fflush(f) == 0)
            ;
        if (f)
            fclose(f);
        snprintf(store, sizeof store, "lmdb:%s/b", dir);
        rc = es_store_open(&st, store, NULL);
        fprintf(stderr, "   a new store on the full file system: %s (%s)\n", es_strerror(rc),
                es_error_last());
        if (rc == 0)
            es_store_close(st);
        _exit(rc == ES_EFULL ? 0 : 13);
    }
    int status;
    waitpid(pid, &status, 0);
    snprintf(cmd, sizeof cmd, "umount '%s'", dir);
    run(cmd);
    remove_dir(dir);
    if (WIFSIGNALED(status))
        fail_msg("killed by signal %d", WTERMSIG(status));
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

static int child_reader(const char *dir, int ready_fd)
{
    es_store *st;
    es_cursor *c;
    const es_event *ev;
    char uri[600];
    snprintf(uri, sizeof uri, "lmdb:%s", dir);
    if (es_store_open(&st, uri, NULL) || es_log_cursor(&c, st, NULL) || es_cursor_next(&ev, c) != 0)
        return 2;
    /* the cursor holds its read transaction (a reader slot) until killed */
    if (write(ready_fd, "ready\n", 6) != 6)
        return 3;
    for (;;)
        pause();
}

/* Start n readers, wait until each holds a read transaction, SIGKILL them. */
static void kill_readers(const char *dir, int n)
{
    pid_t *pids = calloc((size_t)n, sizeof *pids);
    int *fds = calloc((size_t)n, sizeof *fds);
    for (int i = 0; i < n; i++)
        pids[i] = spawn("reader", dir, 0, &fds[i]);
    for (int i = 0; i < n; i++)
        wait_ready(fds[i]);
    for (int i = 0; i < n; i++) {
        kill(pids[i], SIGKILL);
        waitpid(pids[i], NULL, 0);
        close(fds[i]);
    }
    free(pids);
    free(fds);
}

static off_t file_size(const char *dir)
{
    char f[300];
    struct stat sb;
    snprintf(f, sizeof f, "%s/data.mdb", dir);
    return stat(f, &sb) == 0 ? sb.st_size : -1;
}

static void test_reader_slots_of_killed_processes_are_reclaimed(void **state)
{
    (void)state;
    char dir[256];
    es_store *st;
    make_dir(dir, sizeof dir);
    make_store_of(dir, 5);
    /* 30 readers die holding old snapshots; then 3000 small appends */
    kill_readers(dir, 30);
    open_dir(&st, dir, ES_OPEN_NOSYNC);
    off_t before = file_size(dir);
    for (int i = 0; i < 3000; i++)
        TU_EXPECT_OK(tu_append1(st, "small", ES_EXPECT_ANY, "T", "x", NULL));
    off_t after = file_size(dir);
    printf("   3000 appends after 30 killed readers: data.mdb %lld -> %lld bytes\n",
           (long long)before, (long long)after);
    assert_true(after - before < (8 << 20));
    /* every slot taken by processes killed while this one has the store open */
    kill_readers(dir, 256);
    uint64_t h;
    TU_EXPECT_OK(es_stream_head(&h, st, "small", 5));
    assert_int_equal(h, 3000);
    es_store_close(st);
    remove_dir(dir);
}

static void test_read_only_handle_first_does_not_make_later_ones_read_only(void **state)
{
    (void)state;
    char dir[256];
    es_store *ro, *rw;
    make_dir(dir, sizeof dir);
    make_store_of(dir, 1);
    open_dir(&ro, dir, ES_OPEN_READONLY);
    open_dir(&rw, dir, 0);
    TU_EXPECT_OK(tu_append1(rw, "s0", ES_EXPECT_ANY, "T", "rw", NULL));
    assert_int_equal(tu_append1(ro, "s0", ES_EXPECT_ANY, "T", "ro", NULL), ES_EINVAL);
    assert_int_equal(tu_count_log(ro), 2);
    es_store_close(rw);
    es_store_close(ro);
    remove_dir(dir);
}

/* Run as `nobody`: open read-only and count the log (exit 0), or exit with
 * 10 + the open's code's distance from ES_ERRNO_BASE. */
static int child_ro(const char *dir, int expect_count)
{
    es_store *st;
    char uri[600];
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.flags = ES_OPEN_READONLY;
    snprintf(uri, sizeof uri, "lmdb:%s", dir);
    int rc = es_store_open(&st, uri, &o);
    fprintf(stderr, "   as uid %d: %s%s%s\n", (int)getuid(), rc ? es_strerror(rc) : "opened",
            rc ? ": " : "", rc ? es_error_last() : "");
    if (rc == ES_EIO && strstr(es_error_last(), "ermission denied"))
        return 20;
    if (rc)
        return 21;
    uint64_t n = tu_count_log(st);
    es_store_close(st);
    return n == (uint64_t)expect_count ? 0 : 22;
}

static void test_read_only_store_as_another_user(void **state)
{
    (void)state;
    char dir[256], cmd[1200];
    if (geteuid() != 0 || run("command -v runuser >/dev/null") != 0) {
        printf("   needs root and runuser: not tested\n");
        skip();
        return;
    }
    make_dir(dir, sizeof dir);
    make_store_of(dir, 3);
    /* a store made read-only with chmod, lock file included */
    snprintf(cmd, sizeof cmd, "chmod 0755 '%s' && chmod 0444 '%s'/*.mdb && chmod 0555 '%s'", dir,
             dir, dir);
    assert_int_equal(run(cmd), 0);
    snprintf(cmd, sizeof cmd, "runuser -u nobody -- '%s' ro '%s' 3", self, dir);
    assert_int_equal(run(cmd), 0);
    /* a directory it may not read: permission denied, not "no store" */
    snprintf(cmd, sizeof cmd, "chmod 0700 '%s'", dir);
    assert_int_equal(run(cmd), 0);
    snprintf(cmd, sizeof cmd, "runuser -u nobody -- '%s' ro '%s' 3", self, dir);
    assert_int_equal(run(cmd), 20);
    snprintf(cmd, sizeof cmd, "chmod -R u+w '%s'", dir);
    run(cmd);
    remove_dir(dir);
}

/* A crafted store whose streams table holds a key longer than any stream
 * key may be: listing the streams says ES_ECORRUPT (it overflowed a stack
 * buffer). */
static void test_overlong_stream_key_on_disk_is_corrupt(void **state)
{
    (void)state;
    char dir[256];
    make_dir(dir, sizeof dir);
    make_store_of(dir, 1);
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi dbi;
    assert_int_equal(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 8);
    assert_int_equal(mdb_env_open(env, dir, 0, 0644), 0);
    assert_int_equal(mdb_txn_begin(env, NULL, 0, &txn), 0);
    assert_int_equal(mdb_dbi_open(txn, "streams", 0, &dbi), 0);
    static uint8_t key[400], row[44];
    memset(key, 'k', sizeof key);
    row[7] = 1; /* head 1, no tail */
    MDB_val k = {sizeof key, key}, v = {sizeof row, row};
    assert_int_equal(mdb_put(txn, dbi, &k, &v, 0), 0);
    assert_int_equal(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
    es_store *st;
    open_dir(&st, dir, 0);
    assert_int_equal(es_streams(st, NULL, 0, count_stream, NULL), ES_ECORRUPT);
    assert_non_null(strstr(es_error_last(), "key of 400 bytes"));
    es_verify_result vr;
    int rc = es_verify(&vr, st, NULL, 0);
    assert_true(rc == ES_ECORRUPT || (rc == 0 && !vr.ok));
    es_store_close(st);
    remove_dir(dir);
}

int main(int argc, char **argv)
{
    self = argv[0];
    if (argc == 5 && strcmp(argv[1], "writer") == 0)
        return child_writer(argv[2], strtoull(argv[3], NULL, 10), atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "mixed") == 0)
        return child_mixed(argv[2], strtoull(argv[3], NULL, 10), atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "filler") == 0)
        return child_filler(argv[2]);
    if (argc == 5 && strcmp(argv[1], "reader") == 0)
        return child_reader(argv[2], atoi(argv[4]));
    if (argc == 4 && strcmp(argv[1], "ro") == 0)
        return child_ro(argv[2], atoi(argv[3]));
    int rc = tu_init(argc, argv, "lmdb");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_map_grows_by_itself),
        cmocka_unit_test(test_same_directory_twice_shares_one_environment),
        cmocka_unit_test(test_read_only_and_missing_stores),
        cmocka_unit_test(test_uri_options),
        cmocka_unit_test(test_sigkill_never_loses_acknowledged_appends),
        cmocka_unit_test(test_four_processes_append_and_save_on_shared_keys),
        cmocka_unit_test(test_full_disk_is_a_clear_error_and_changes_nothing),
        cmocka_unit_test(test_damaged_file_is_an_error_never_a_signal),
        cmocka_unit_test(test_enospc_is_es_efull),
        cmocka_unit_test(test_reader_slots_of_killed_processes_are_reclaimed),
        cmocka_unit_test(test_read_only_handle_first_does_not_make_later_ones_read_only),
        cmocka_unit_test(test_read_only_store_as_another_user),
        cmocka_unit_test(test_overlong_stream_key_on_disk_is_corrupt),
    };
    return cmocka_run_group_tests_name("lmdb", tests, NULL, NULL);
}
