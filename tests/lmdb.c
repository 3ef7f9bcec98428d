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
#include <sys/resource.h>
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
            snprintf(stream, sizeof stream, "shared-%llu", (unsigned long long)tu_rand_below(&rng, 3));
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

static void read_acks(int fd, acks *a)
{
    static char buf[1 << 16];
    static size_t have;
    ssize_t n;
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
    have = 0; /* a torn last line was never a whole acknowledgement */
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
        struct timespec ts = {0, (long)(5 + tu_rand_below(&rng, 60)) * 1000000L};
        nanosleep(&ts, NULL);
        kill(pid, SIGKILL);
        int status;
        waitpid(pid, &status, 0);
        if (WIFEXITED(status))
            fail_msg("writer exited with %d before it was killed", WEXITSTATUS(status));
        read_acks(fd, &a);
        close(fd);
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

int main(int argc, char **argv)
{
    self = argv[0];
    if (argc == 5 && strcmp(argv[1], "writer") == 0)
        return child_writer(argv[2], strtoull(argv[3], NULL, 10), atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "mixed") == 0)
        return child_mixed(argv[2], strtoull(argv[3], NULL, 10), atoi(argv[4]));
    if (argc == 5 && strcmp(argv[1], "filler") == 0)
        return child_filler(argv[2]);
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
    };
    return cmocka_run_group_tests_name("lmdb", tests, NULL, NULL);
}
