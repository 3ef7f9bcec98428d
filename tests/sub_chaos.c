/*
 * sub_chaos.c — a consumer group under SIGKILL (issue 8's chaos test).
 *
 * Writer processes append at random to many streams for the whole run
 * while the members of a consumer group (a subscription with partitions,
 * short leases) are SIGKILLed at random moments and restarted, so their
 * partitions are taken over by the others when the leases run out.  Each
 * consumer incarnation writes every event it receives to a file of its own
 * and fsyncs it before it acknowledges, then notes the acknowledgement
 * ("A" line, fsynced too).  On pg a writer whose commits are held open
 * (the store's commit_delay_ms test option) holds the log's horizon back
 * for part of the run.
 *
 * At the end the writers stop, every consumer runs until the subscription
 * is behind by nothing, and the files are checked against the log:
 *   1. every event of the log was received at least once (no gap), and
 *      nothing was received that is not in the log;
 *   2. within each incarnation every stream's seqs strictly increase;
 *   3. an event received more than once was, at every receipt but the
 *      last, not acknowledged by that incarnation (duplicates come only
 *      between a last checkpoint and a kill);
 * and every append a writer had acknowledged is in the log exactly once.
 *
 * The run is seeded (ES_TEST_SEED); `--soak` (or ES_CHAOS_SOAK=1, or ES_SOAK
 * as scripts/test.sh --soak sets it) runs at least 10 minutes and 1000
 * kills; ES_CHAOS_SECONDS sets the minimum length.
 * Nothing is timed: deadlines only turn a hung run into a failure.
 * Child processes are this program run again (fork + exec) with a role.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SUB_NAME "chaos"
#define GROUP_NAME "chaos-group"
#define N_STREAMS 64
#define N_PARTITIONS 8
#define N_CONSUMERS 4
#define N_WRITERS 3
#define BATCH_SIZE 16
#define LEASE_MS 400
#define SLOW_COMMIT_DELAY_MS 1500 /* pg: a commit held open up to this long */
#define DRAIN_DEADLINE_MS 240000  /* only to fail a hung run */
#define EXIT_LEASE_LOST 3         /* a consumer's lease was taken over */

static const char *self;
static volatile sig_atomic_t stop_flag;

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* one clock for every process of the machine */
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void nap_us(int64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR && !stop_flag)
        ;
}

static void on_term(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static void catch_term(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    /* spawn() blocked it: a SIGTERM sent before now is delivered here */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_UNBLOCK, &set, NULL);
}

/* "chaos-NN" → NN, or -1 */
static int stream_index(const uint8_t *key, size_t len)
{
    if (len != 8 || memcmp(key, "chaos-", 6) != 0 || key[6] < '0' || key[6] > '9' || key[7] < '0' ||
        key[7] > '9')
        return -1;
    int k = (key[6] - '0') * 10 + (key[7] - '0');
    return k < N_STREAMS ? k : -1;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* ---- child roles ---- */

/* "writer URI ID SEED COUNTFILE": append to random streams until SIGTERM,
 * then write the number of acknowledged appends to COUNTFILE. */
static int child_writer(char **argv)
{
    const char *uri = argv[2], *countfile = argv[5];
    unsigned id = (unsigned)strtoul(argv[3], NULL, 10);
    uint64_t rnd = strtoull(argv[4], NULL, 10) * 7919 + id + 1;
    es_store *st;
    uint64_t n = 0;
    catch_term();
    int rc = es_store_open(&st, uri, NULL);
    if (rc) {
        fprintf(stderr, "writer %u: open: %s\n", id, es_error_last());
        return 1;
    }
    while (!stop_flag) {
        char stream[16], data[64];
        int k = (int)tu_rand_below(&rnd, N_STREAMS);
        snprintf(stream, sizeof stream, "chaos-%02d", k);
        int len = snprintf(data, sizeof data, "stream=%d writer=%u n=%" PRIu64, k, id, n + 1);
        es_event_new ev = {.type = "Chaos", .data = data, .data_len = (size_t)len};
        es_append_result res;
        if ((rc = es_append(&res, st, stream, strlen(stream), ES_EXPECT_ANY, &ev, 1)) != 0) {
            fprintf(stderr, "writer %u: append %" PRIu64 ": %s: %s\n", id, n + 1, es_strerror(rc),
                    es_error_last());
            es_store_close(st);
            return 1;
        }
        n++;
        nap_us((int64_t)tu_rand_below(&rnd, 3000));
    }
    es_store_close(st);
    FILE *f = fopen(countfile, "w");
    if (!f || fprintf(f, "%" PRIu64 "\n", n) < 0 || fclose(f) != 0) {
        fprintf(stderr, "writer %u: cannot write %s\n", id, countfile);
        return 1;
    }
    return 0;
}

/* "consumer URI INC SEED OUTFILE": a member of the group until SIGTERM.
 * Each batch: a line per event ("R inc position stream seq µs"), fsync,
 * acknowledge, then "A inc position", fsync.  Exits 0 after a clean close,
 * EXIT_LEASE_LOST when the lease was taken over, 1 on any other error. */
static int child_consumer(char **argv)
{
    const char *uri = argv[2], *outfile = argv[5];
    unsigned inc = (unsigned)strtoul(argv[3], NULL, 10);
    uint64_t rnd = strtoull(argv[4], NULL, 10) * 104729 + inc + 1;
    char label[32];
    es_store *st = NULL;
    es_sub *sub = NULL;
    char *buf = NULL;
    int ret = 1, rc;
    catch_term();
    int fd = open(outfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "consumer %u: %s: %s\n", inc, outfile, strerror(errno));
        return 1;
    }
    if ((rc = es_store_open(&st, uri, NULL)) != 0) {
        fprintf(stderr, "consumer %u: open: %s\n", inc, es_error_last());
        goto done;
    }
    snprintf(label, sizeof label, "inc-%u", inc);
    es_sub_open_options o = ES_SUB_OPEN_OPTIONS_INIT;
    o.lease_ms = LEASE_MS;
    o.group = GROUP_NAME;
    o.member = label;
    if ((rc = es_sub_open(&sub, st, SUB_NAME, &o)) != 0)
        goto fail;
    size_t cap = (size_t)BATCH_SIZE * 96;
    if (!(buf = malloc(cap)))
        goto done;
    while (!stop_flag) {
        const es_event *const *evs;
        size_t n;
        rc = es_sub_next(&evs, &n, sub, 200);
        if (rc == ES_ETIMEDOUT)
            continue;
        if (rc != 0)
            goto fail;
        size_t len = 0;
        int64_t now = mono_us();
        for (size_t i = 0; i < n; i++) {
            int k = stream_index(evs[i]->stream, evs[i]->stream_len);
            len += (size_t)snprintf(buf + len, cap - len, "R %u %" PRIu64 " %d %" PRIu64 " %lld\n",
                                    inc, evs[i]->position, k, evs[i]->seq, (long long)now);
        }
        if (write_all(fd, buf, len) < 0 || fsync(fd) != 0) {
            fprintf(stderr, "consumer %u: writing %s: %s\n", inc, outfile, strerror(errno));
            goto done;
        }
        /* a little work, so that kills land between receipt and ack too */
        nap_us((int64_t)tu_rand_below(&rnd, 4000));
        uint64_t last = evs[n - 1]->position;
        if ((rc = es_sub_ack(sub, last)) != 0)
            goto fail;
        len = (size_t)snprintf(buf, cap, "A %u %" PRIu64 "\n", inc, last);
        if (write_all(fd, buf, len) < 0 || fsync(fd) != 0) {
            fprintf(stderr, "consumer %u: writing %s: %s\n", inc, outfile, strerror(errno));
            goto done;
        }
    }
    if ((rc = es_sub_commit(sub)) != 0)
        goto fail;
    ret = 0;
    goto done;
fail:
    if (rc == ES_ECONFLICT) {
        ret = EXIT_LEASE_LOST;
    } else {
        fprintf(stderr, "consumer %u: %s: %s\n", inc, es_strerror(rc), es_error_last());
        ret = 1;
    }
done:
    es_sub_close(sub);
    es_store_close(st);
    free(buf);
    close(fd);
    return ret;
}

/* ---- the parent ---- */

typedef struct chaos_cfg {
    bool soak;
    int64_t min_us;     /* run at least this long … */
    unsigned min_kills; /* … and until this many kills */
    int64_t kill_gap_min_us, kill_gap_max_us;
} chaos_cfg;

static chaos_cfg cfg;
static struct chaos *running; /* for the clean-up after a failure */

typedef struct incarnation {
    pid_t pid;
    bool killed;
} incarnation;

typedef struct chaos {
    tu_store ts;
    char dir[256];
    uint64_t rnd;
    incarnation *incs;
    unsigned n_incs, cap_incs;
    unsigned slot_inc[N_CONSUMERS]; /* 0: not running */
    int64_t restart_at[N_CONSUMERS];
    pid_t writers[N_WRITERS + 1];
    unsigned n_writers;
    unsigned kills, lease_losses, takeovers, handovers;
    unsigned last_owner[N_PARTITIONS]; /* last incarnation seen owning it (0 none) */
} chaos;

static pid_t spawn(char *const argv[])
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        fail_msg("fork: %s", strerror(errno));
    if (pid == 0) {
        /* SIGTERM waits until the child has its handler (catch_term) */
        sigset_t set;
        sigemptyset(&set);
        sigaddset(&set, SIGTERM);
        sigprocmask(SIG_BLOCK, &set, NULL);
        for (int fd = 3; fd < 1024; fd++)
            close(fd); /* the parent's store stays the parent's */
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void start_writer(chaos *c, unsigned id, const char *uri)
{
    char ids[16], seed[32], countfile[300];
    snprintf(ids, sizeof ids, "%u", id);
    snprintf(seed, sizeof seed, "%" PRIu64, tu_seed);
    snprintf(countfile, sizeof countfile, "%s/w%u.count", c->dir, id);
    char *argv[] = {(char *)self, "writer", (char *)uri, ids, seed, countfile, NULL};
    c->writers[c->n_writers++] = spawn(argv);
}

static void start_consumer(chaos *c, unsigned slot)
{
    if (c->n_incs == c->cap_incs) {
        c->cap_incs = c->cap_incs ? c->cap_incs * 2 : 64;
        c->incs = realloc(c->incs, c->cap_incs * sizeof *c->incs);
        assert_non_null(c->incs);
    }
    unsigned inc = ++c->n_incs; /* incarnations count from 1 */
    char incs[16], seed[32], out[300];
    snprintf(incs, sizeof incs, "%u", inc);
    snprintf(seed, sizeof seed, "%" PRIu64, tu_seed);
    snprintf(out, sizeof out, "%s/c%u.out", c->dir, inc);
    char *argv[] = {(char *)self, "consumer", c->ts.uri, incs, seed, out, NULL};
    c->incs[inc - 1] = (incarnation){spawn(argv), false};
    c->slot_inc[slot] = inc;
}

static void describe_exit(char *buf, size_t cap, int status)
{
    if (WIFEXITED(status))
        snprintf(buf, cap, "exited with %d", WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        snprintf(buf, cap, "was killed by signal %d", WTERMSIG(status));
    else
        snprintf(buf, cap, "ended with status %d", status);
}

/* Consumers that ended on their own: a lost lease is restarted (the group
 * goes on), anything else fails the test. */
static void reap_consumers(chaos *c)
{
    for (unsigned s = 0; s < N_CONSUMERS; s++) {
        unsigned inc = c->slot_inc[s];
        int status;
        if (!inc || waitpid(c->incs[inc - 1].pid, &status, WNOHANG) != c->incs[inc - 1].pid)
            continue;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != EXIT_LEASE_LOST) {
            char why[64];
            describe_exit(why, sizeof why, status);
            fail_msg("consumer incarnation %u %s (see its message above)", inc, why);
        }
        c->lease_losses++;
        c->slot_inc[s] = 0;
        c->restart_at[s] = mono_us();
    }
}

/* Who owns each partition: an owner that replaces a killed one is a
 * takeover, one that replaces a live one (rebalancing) a handover. */
static int on_partition(const es_sub_partition_info *pi, void *payload)
{
    chaos *c = payload;
    unsigned inc;
    if (pi->partition >= N_PARTITIONS || sscanf(pi->owner, "inc-%u", &inc) != 1 || inc == 0 ||
        inc > c->n_incs)
        return 0;
    unsigned prev = c->last_owner[pi->partition];
    if (prev && prev != inc) {
        if (c->incs[prev - 1].killed)
            c->takeovers++;
        else
            c->handovers++;
    }
    c->last_owner[pi->partition] = inc;
    return 0;
}

static void poll_owners(chaos *c)
{
    int rc = es_sub_partitions(c->ts.st, SUB_NAME, on_partition, c);
    if (rc != 0)
        fail_msg("es_sub_partitions: %s: %s", es_strerror(rc), es_error_last());
}

static void kill_one(chaos *c)
{
    unsigned live[N_CONSUMERS], n = 0;
    for (unsigned s = 0; s < N_CONSUMERS; s++)
        if (c->slot_inc[s])
            live[n++] = s;
    if (!n)
        return;
    unsigned s = live[tu_rand_below(&c->rnd, n)];
    incarnation *in = &c->incs[c->slot_inc[s] - 1];
    int status;
    kill(in->pid, SIGKILL);
    if (waitpid(in->pid, &status, 0) != in->pid)
        fail_msg("waitpid: %s", strerror(errno));
    if (WIFEXITED(status) && WEXITSTATUS(status) != EXIT_LEASE_LOST)
        fail_msg("consumer incarnation %u exited with %d before it was killed", c->slot_inc[s],
                 WEXITSTATUS(status));
    in->killed = true;
    c->kills++;
    c->slot_inc[s] = 0;
    /* sometimes at once, sometimes after its lease ran out */
    c->restart_at[s] = mono_us() + (int64_t)tu_rand_below(&c->rnd, 2 * LEASE_MS * 1000);
}

static void restart_due(chaos *c, bool all)
{
    int64_t now = mono_us();
    for (unsigned s = 0; s < N_CONSUMERS; s++)
        if (!c->slot_inc[s] && (all || c->restart_at[s] <= now))
            start_consumer(c, s);
}

static void stop_writers(chaos *c)
{
    for (unsigned w = 0; w < c->n_writers; w++)
        kill(c->writers[w], SIGTERM);
    for (unsigned w = 0; w < c->n_writers; w++) {
        int status;
        if (waitpid(c->writers[w], &status, 0) != c->writers[w])
            fail_msg("waitpid: %s", strerror(errno));
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            char why[64];
            describe_exit(why, sizeof why, status);
            fail_msg("writer %u %s (see its message above)", w, why);
        }
    }
}

/* ---- the check ---- */

typedef struct log_ev {
    uint64_t position, seq;
    int stream;
    unsigned writer;
    uint64_t n;
} log_ev;

typedef struct receipt {
    size_t ev;    /* index in the log */
    int64_t t_us; /* when it was received */
    unsigned inc;
    bool covered; /* its incarnation acknowledged it afterwards */
} receipt;

typedef struct vec {
    void *p;
    size_t n, cap, size;
} vec;

static void *vec_push(vec *v)
{
    if (v->n == v->cap) {
        v->cap = v->cap ? v->cap * 2 : 1024;
        v->p = realloc(v->p, v->cap * v->size);
        assert_non_null(v->p);
    }
    return (char *)v->p + v->size * v->n++;
}

static void read_log(vec *log, es_store *st)
{
    es_cursor *cur;
    const es_event *ev;
    int rc;
    TU_EXPECT_OK(es_log_catch_up(st, 60000));
    TU_EXPECT_OK(es_log_cursor(&cur, st, NULL));
    while ((rc = es_cursor_next(&ev, cur)) == 0) {
        log_ev *e = vec_push(log);
        char data[80];
        int k;
        size_t dl = ev->data_len < sizeof data - 1 ? ev->data_len : sizeof data - 1;
        memcpy(data, ev->data, dl);
        data[dl] = 0;
        e->position = ev->position;
        e->seq = ev->seq;
        e->stream = stream_index(ev->stream, ev->stream_len);
        if (e->stream < 0 ||
            sscanf(data, "stream=%d writer=%u n=%" SCNu64, &k, &e->writer, &e->n) != 3 ||
            k != e->stream)
            fail_msg("the log's event at position %" PRIu64 " is not one a writer appended: %s",
                     ev->position, data);
    }
    assert_int_equal(rc, ES_ITEROVER);
    es_cursor_free(cur);
}

static size_t find_position(const vec *log, uint64_t pos)
{
    const log_ev *a = log->p;
    size_t lo = 0, hi = log->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (a[mid].position < pos)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < log->n && a[lo].position == pos ? lo : SIZE_MAX;
}

/* Every append a writer had acknowledged is in the log exactly once. */
static void check_writers(const chaos *c, const vec *log)
{
    for (unsigned w = 0; w < c->n_writers; w++) {
        char path[300];
        unsigned long long count = 0;
        snprintf(path, sizeof path, "%s/w%u.count", c->dir, w);
        FILE *f = fopen(path, "r");
        if (!f || fscanf(f, "%llu", &count) != 1)
            fail_msg("writer %u left no count in %s", w, path);
        fclose(f);
        uint8_t *seen = calloc(count + 1, 1);
        assert_non_null(seen);
        const log_ev *a = log->p;
        for (size_t i = 0; i < log->n; i++) {
            if (a[i].writer != w)
                continue;
            if (a[i].n == 0 || a[i].n > count || seen[a[i].n])
                fail_msg("writer %u's append %" PRIu64 " is in the log %s", w, a[i].n,
                         a[i].n && a[i].n <= count ? "twice" : "but was never acknowledged");
            seen[a[i].n] = 1;
        }
        for (unsigned long long n = 1; n <= count; n++)
            if (!seen[n])
                fail_msg("writer %u's acknowledged append %llu is not in the log", w, n);
        free(seen);
        printf("   writer %u: %llu appends, all in the log once\n", w, count);
    }
}

/* One incarnation's file: its receipts (with whether an "A" line at or
 * after the position follows them), per-stream order checked. */
static void read_incarnation(vec *rec, const vec *log, const char *dir, unsigned inc)
{
    char path[300];
    snprintf(path, sizeof path, "%s/c%u.out", dir, inc);
    FILE *f = fopen(path, "r");
    if (!f)
        return; /* killed before it opened its file */
    size_t first = rec->n;
    uint64_t last_seq[N_STREAMS] = {0};
    char line[256];
    vec acks = {NULL, 0, 0, sizeof(size_t[2])}; /* (receipts so far, position) */
    while (fgets(line, sizeof line, f)) {
        unsigned li = 0;
        unsigned long long pos = 0, seq = 0;
        long long t = 0;
        int k = 0;
        if (!strchr(line, '\n'))
            break; /* a line cut short by the kill: never acknowledged */
        if (line[0] == 'A' && sscanf(line, "A %u %llu", &li, &pos) == 2 && li == inc) {
            size_t *a = vec_push(&acks);
            a[0] = rec->n;
            a[1] = (size_t)pos;
            continue;
        }
        if (line[0] != 'R' ||
            sscanf(line, "R %u %llu %d %llu %lld", &li, &pos, &k, &seq, &t) != 5 || li != inc)
            fail_msg("%s: a line that makes no sense: %s", path, line);
        size_t ev = find_position(log, pos);
        if (ev == SIZE_MAX)
            fail_msg("incarnation %u received position %llu, which is not in the log", inc, pos);
        const log_ev *e = &((const log_ev *)log->p)[ev];
        if (e->stream != k || e->seq != seq)
            fail_msg("incarnation %u received position %llu as stream %d seq %llu; the log has "
                     "stream %d seq %" PRIu64,
                     inc, pos, k, seq, e->stream, e->seq);
        if (seq <= last_seq[k])
            fail_msg("incarnation %u received chaos-%02d seq %llu after seq %" PRIu64
                     " (per-stream order)",
                     inc, k, seq, last_seq[k]);
        last_seq[k] = seq;
        receipt *r = vec_push(rec);
        *r = (receipt){ev, (int64_t)t, inc, false};
    }
    fclose(f);
    /* covered: an ack at or after its position, written after it */
    size_t(*a)[2] = acks.p;
    uint64_t best = 0;
    size_t ai = acks.n;
    for (size_t i = rec->n; i-- > first;) {
        while (ai > 0 && a[ai - 1][0] > i) {
            if (a[ai - 1][1] > best)
                best = a[ai - 1][1];
            ai--;
        }
        receipt *r = &((receipt *)rec->p)[i];
        r->covered = best >= ((const log_ev *)log->p)[r->ev].position;
    }
    free(acks.p);
}

static int cmp_receipt(const void *x, const void *y)
{
    const receipt *a = x, *b = y;
    if (a->ev != b->ev)
        return a->ev < b->ev ? -1 : 1;
    if (a->t_us != b->t_us)
        return a->t_us < b->t_us ? -1 : 1;
    return a->inc < b->inc ? -1 : a->inc > b->inc;
}

static void check_receipts(const chaos *c, const vec *log)
{
    vec rec = {NULL, 0, 0, sizeof(receipt)};
    for (unsigned inc = 1; inc <= c->n_incs; inc++)
        read_incarnation(&rec, log, c->dir, inc);
    receipt *r = rec.p;
    qsort(r, rec.n, sizeof *r, cmp_receipt);
    size_t i = 0, missing = 0, dups = 0, dup_events = 0;
    const log_ev *a = log->p;
    for (size_t ev = 0; ev < log->n; ev++) {
        if (i >= rec.n || r[i].ev != ev) {
            if (missing++ < 10)
                printf("   GAP: position %" PRIu64 " (chaos-%02d seq %" PRIu64
                       ") was never received\n",
                       a[ev].position, a[ev].stream, a[ev].seq);
            continue;
        }
        size_t j = i;
        while (j + 1 < rec.n && r[j + 1].ev == ev)
            j++;
        if (j > i)
            dup_events++;
        dups += j - i;
        for (size_t k = i; k < j; k++)
            if (r[k].covered)
                fail_msg("position %" PRIu64 " was received by incarnation %u, acknowledged by "
                         "it, and received again by incarnation %u",
                         a[ev].position, r[k].inc, r[k + 1].inc);
        i = j + 1;
    }
    printf("   events %zu, receipts %zu, duplicates %zu (of %zu events), gaps %zu\n", log->n, rec.n,
           dups, dup_events, missing);
    free(rec.p);
    if (missing)
        fail_msg("%zu events of the log were never received", missing);
}

/* ---- the run ---- */

/* Supervise until `until` and (with kills) `min_kills` kills. */
static void run_until(chaos *c, int64_t until, bool kills, unsigned min_kills, int64_t *next_kill)
{
    while (mono_us() < until || (kills && c->kills < min_kills)) {
        reap_consumers(c);
        if (kills && mono_us() >= *next_kill) {
            kill_one(c);
            *next_kill = mono_us() + cfg.kill_gap_min_us +
                         (int64_t)tu_rand_below(
                             &c->rnd, (uint64_t)(cfg.kill_gap_max_us - cfg.kill_gap_min_us));
        }
        restart_due(c, false);
        poll_owners(c);
        nap_us(50000);
    }
}

static void test_group_survives_sigkill(void **state)
{
    (void)state;
    chaos *c = calloc(1, sizeof *c);
    assert_non_null(c);
    running = c;
    c->rnd = tu_seed;
    tu_open(&c->ts);
    const char *tmp = getenv("TMPDIR");
    snprintf(c->dir, sizeof c->dir, "%s/es-chaos-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(c->dir))
        fail_msg("mkdtemp: %s", strerror(errno));

    es_sub_options so = ES_SUB_OPTIONS_INIT;
    so.partitions = N_PARTITIONS;
    so.batch_size = BATCH_SIZE;
    TU_EXPECT_OK(es_sub_create(c->ts.st, SUB_NAME, &so));

    bool pg = strcmp(tu_backend, "pg") == 0;
    char slow_uri[600];
    snprintf(slow_uri, sizeof slow_uri, "%s&commit_delay_ms=%d", c->ts.uri, SLOW_COMMIT_DELAY_MS);
    printf("   %s run: at least %lld s and %u kills; %d writers%s, %d consumers, %d partitions, "
           "lease %d ms\n",
           cfg.soak ? "soak" : "CI", (long long)(cfg.min_us / 1000000), cfg.min_kills, N_WRITERS,
           pg ? " (+1 holding commits open for a part)" : "", N_CONSUMERS, N_PARTITIONS, LEASE_MS);

    int64_t t0 = mono_us();
    for (unsigned w = 0; w < N_WRITERS; w++)
        start_writer(c, w, c->ts.uri);
    for (unsigned s = 0; s < N_CONSUMERS; s++)
        start_consumer(c, s);
    int64_t next_kill = t0 + cfg.kill_gap_max_us;
    if (pg) {
        /* a third of the run without, the rest with commits held open */
        run_until(c, t0 + cfg.min_us / 3, true, 0, &next_kill);
        start_writer(c, N_WRITERS, slow_uri);
        printf("   after %.1f s and %u kills: a writer with commit_delay_ms=%d joins\n",
               (double)(mono_us() - t0) / 1e6, c->kills, SLOW_COMMIT_DELAY_MS);
    }
    run_until(c, t0 + cfg.min_us, true, cfg.min_kills, &next_kill);
    stop_writers(c);
    printf("   after %.1f s: writers stopped, %u kills; every consumer runs to the end\n",
           (double)(mono_us() - t0) / 1e6, c->kills);

    /* the end: every consumer runs until nothing is left behind */
    restart_due(c, true);
    TU_EXPECT_OK(es_log_catch_up(c->ts.st, 60000));
    int64_t deadline = mono_us() + (int64_t)DRAIN_DEADLINE_MS * 1000;
    es_sub_info info;
    for (;;) {
        TU_EXPECT_OK(es_sub_info_get(&info, c->ts.st, SUB_NAME));
        if (info.behind == 0 && !info.behind_capped)
            break;
        if (mono_us() > deadline)
            fail_msg("the group did not catch up within %d s: %" PRIu64 " events behind, "
                     "checkpoint %" PRIu64 ", head %" PRIu64 ", %u members",
                     DRAIN_DEADLINE_MS / 1000, info.behind, info.checkpoint, info.head,
                     info.members);
        run_until(c, mono_us() + 100000, false, 0, &next_kill);
    }
    printf("   after %.1f s: caught up (head %" PRIu64 ", %u members)\n",
           (double)(mono_us() - t0) / 1e6, info.head, info.members);
    for (unsigned s = 0; s < N_CONSUMERS; s++)
        if (c->slot_inc[s])
            kill(c->incs[c->slot_inc[s] - 1].pid, SIGTERM);
    for (unsigned s = 0; s < N_CONSUMERS; s++) {
        unsigned inc = c->slot_inc[s];
        int status;
        if (!inc)
            continue;
        if (waitpid(c->incs[inc - 1].pid, &status, 0) != c->incs[inc - 1].pid)
            fail_msg("waitpid: %s", strerror(errno));
        if (WIFEXITED(status) && WEXITSTATUS(status) == EXIT_LEASE_LOST) {
            c->lease_losses++;
        } else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            char why[64];
            describe_exit(why, sizeof why, status);
            fail_msg("consumer incarnation %u %s at its clean close", inc, why);
        }
    }
    TU_EXPECT_OK(es_sub_info_get(&info, c->ts.st, SUB_NAME));
    assert_int_equal(info.behind, 0);

    vec log = {NULL, 0, 0, sizeof(log_ev)};
    read_log(&log, c->ts.st);
    check_writers(c, &log);
    check_receipts(c, &log);
    printf("   kills %u, takeovers %u, handovers %u, leases lost %u, incarnations %u, "
           "%.1f s\n",
           c->kills, c->takeovers, c->handovers, c->lease_losses, c->n_incs,
           (double)(mono_us() - t0) / 1e6);
    /* the run proved something only if killed members were replaced */
    assert_true(c->kills >= cfg.min_kills);
    if (c->takeovers == 0)
        fail_msg("no partition of a killed member was seen taken over");

    free(log.p);
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", c->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", c->dir);
    tu_close(&c->ts);
    free(c->incs);
    free(c);
    running = NULL;
}

/* After a failure: no child outlives the test (the files stay, for a look). */
static void kill_children(void)
{
    chaos *c = running;
    if (!c)
        return;
    for (unsigned w = 0; w < c->n_writers; w++)
        kill(c->writers[w], SIGKILL);
    for (unsigned s = 0; s < N_CONSUMERS; s++)
        if (c->slot_inc[s])
            kill(c->incs[c->slot_inc[s] - 1].pid, SIGKILL);
    while (wait(NULL) > 0)
        ;
    printf("   the consumers' files are kept in %s\n", c->dir);
}

int main(int argc, char **argv)
{
    self = argv[0];
    if (argc == 6 && strcmp(argv[1], "writer") == 0)
        return child_writer(argv);
    if (argc == 6 && strcmp(argv[1], "consumer") == 0)
        return child_consumer(argv);
    const char *soak = getenv("ES_CHAOS_SOAK");
    cfg.soak = (argc > 2 && strcmp(argv[2], "--soak") == 0) || (soak && strcmp(soak, "1") == 0) ||
               getenv("ES_SOAK"); /* scripts/test.sh --soak */
    if (argc > 2 && !cfg.soak) {
        fprintf(stderr, "usage: %s lmdb|pg [--soak]\n", argv[0]);
        return 2;
    }
    int rc = tu_init(argc, argv, "sub_chaos");
    if (rc)
        return rc;
    if (strcmp(tu_backend, "lmdb") != 0 && strcmp(tu_backend, "pg") != 0) {
        printf("SKIPPED: the chaos test needs a store that processes share (lmdb, pg)\n");
        return 77;
    }
    cfg.min_us = cfg.soak ? 600 * 1000000LL : 25 * 1000000LL;
    cfg.min_kills = cfg.soak ? 1000 : 24;
    cfg.kill_gap_min_us = cfg.soak ? 100000 : 200000;
    cfg.kill_gap_max_us = cfg.soak ? 1000000 : 1200000;
    const char *secs = getenv("ES_CHAOS_SECONDS");
    if (secs && *secs)
        cfg.min_us = strtoll(secs, NULL, 10) * 1000000LL;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_group_survives_sigkill),
    };
    rc = cmocka_run_group_tests(tests, NULL, NULL);
    kill_children();
    return rc;
}
