/*
 * bench_group.c — W8g of es_bench: a consumer group of 4 members
 * catching up over W3's log (what W8 reads), and the takeover of a member
 * killed half-way.
 *
 * The subscription has W8G_PARTITIONS partitions and the default batch
 * (100); each member opens it with group "w8g", its label "m0".."m3",
 * lease_ms W8G_LEASE_MS and a checkpoint once a second (checkpoint_every
 * UINT32_MAX, checkpoint_ms 1000, as W8c) plus an es_sub_commit when idle
 * and at the end, and acknowledges each batch (es_sub_ack of its last
 * position) after marking its events received.  On lmdb and pg the members
 * are processes, forked before the store is opened in each of them (the
 * parent has no store open across the fork); on mem, a store of one
 * process, they are threads on the parent's store.
 *
 * What the members received is kept in memory they share with the parent
 * (an anonymous shared mapping): one bit per log position, set with an
 * atomic or, so the parent knows at any moment how many distinct events
 * came (and counts an event that came again as a duplicate), plus, per
 * partition, the real time of its last delivery.
 *
 * Phase 1, throughput: the 4 members consume the whole log; the figure is
 * the log's events over the time from the first fork to the moment every
 * event was received and acknowledged (no member has a batch in hand).
 * Phase 2, takeover (a second subscription, the same members' code): once
 * half of the events were received and the group is settled (4 owners),
 * the member with the most events left in its partitions (by their lag,
 * es_sub_partitions) is SIGKILLed (on mem, its
 * thread stops calling es_sub_next and leaves its subscription open, which
 * is what a hung member looks like).  Two times from the kill:
 *   owned:   every partition has a live owner again — es_sub_partitions
 *            polled every W8G_POLL_MS shows no partition without an owner or
 *            owned by the dead member (es_sub_partitions counts each partition's lag
 *            with a log scan, so it is not polled faster);
 *   flowing: every partition it owned (and had not checkpointed to its
 *            last event) had an event delivered to a survivor
 *            (exact: the shared per-partition delivery times).
 * At the end every event of the log must have been received at least once;
 * duplicates are counted (expected after a kill: what the dead member received since
 * its last persisted checkpoint), and the subscription must show nothing
 * behind once the members made their final commit.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <eventsrc.h>

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define W8G_MEMBERS 4
#define W8G_PARTITIONS 16
#define W8G_LEASE_MS 1000
#define W8G_CHECKPOINT_MS 1000
#define W8G_POLL_MS 20   /* es_sub_partitions after the kill */
#define W8G_STALL_S 20.0 /* no progress this long: the run failed */
#define W8G_GROUP "w8g"

typedef struct grp_shared {
    int stop;                        /* the parent says: commit, close, leave */
    int die[W8G_MEMBERS];            /* mem: the "killed" member stops here */
    int ready[W8G_MEMBERS];          /* opened the subscription */
    int done[W8G_MEMBERS];           /* left its loop */
    int inflight[W8G_MEMBERS];       /* has a batch in hand, not yet acknowledged */
    uint64_t unique, dups;           /* distinct events received, and again */
    uint64_t got[W8G_MEMBERS];       /* events received by each member */
    int64_t last_ns[W8G_PARTITIONS]; /* real time of a partition's last delivery */
    char err[W8G_MEMBERS][96];
    uint64_t nbits; /* positions 0..nbits-1 */
    uint64_t bits[];
} grp_shared;

typedef struct grp_member {
    const bench *b;
    const char *sys;
    const char *sub_name;
    es_store *st; /* mem: the parent's store */
    grp_shared *sh;
    int id;
    es_sub *left_open; /* mem: the stopped member's subscription, closed by the parent */
} grp_member;

static int64_t real_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

#define LOAD(x) __atomic_load_n(&(x), __ATOMIC_SEQ_CST)
#define STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_SEQ_CST)

static void member_fail(grp_member *m, const char *what)
{
    snprintf(m->sh->err[m->id], sizeof m->sh->err[m->id], "m%d: %s: %.70s", m->id, what,
             es_error_last());
}

/* One member: take batches, mark them received, acknowledge them, until
 * the parent says stop (or, on mem, die). */
static void member_run(grp_member *m)
{
    grp_shared *sh = m->sh;
    es_store *st = m->st;
    es_sub *sub = NULL;
    char label[8];
    result r;
    memset(&r, 0, sizeof r);
    if (!st && es_open_bench(&st, m->b, m->sys, "data-es", &r)) {
        snprintf(sh->err[m->id], sizeof sh->err[m->id], "m%d: %.80s", m->id, r.note);
        st = NULL;
        goto out;
    }
    snprintf(label, sizeof label, "m%d", m->id);
    es_sub_open_options oo = ES_SUB_OPEN_OPTIONS_INIT;
    oo.checkpoint_every = UINT32_MAX;
    oo.checkpoint_ms = W8G_CHECKPOINT_MS;
    oo.lease_ms = W8G_LEASE_MS;
    oo.group = W8G_GROUP;
    oo.member = label;
    if (es_sub_open(&sub, st, m->sub_name, &oo)) {
        member_fail(m, "open");
        goto out;
    }
    STORE(sh->ready[m->id], 1);
    while (!LOAD(sh->stop)) {
        if (LOAD(sh->die[m->id])) {
            m->left_open = sub; /* a hung member: no close, no release */
            sub = NULL;
            goto out;
        }
        const es_event *const *evs;
        size_t n;
        int rc = es_sub_next(&evs, &n, sub, 100);
        if (rc == ES_ETIMEDOUT) {
            if (es_sub_commit(sub)) { /* idle: let the checkpoint land */
                member_fail(m, "commit");
                goto out;
            }
            continue;
        }
        if (rc) {
            member_fail(m, "next");
            goto out;
        }
        STORE(sh->inflight[m->id], 1);
        uint32_t seen = 0;
        for (size_t i = 0; i < n; i++) {
            uint64_t pos = evs[i]->position;
            seen |= 1u << es_sub_partition_of(evs[i]->stream, evs[i]->stream_len, W8G_PARTITIONS);
            if (pos >= sh->nbits)
                continue; /* not an event of the log counted at the start */
            uint64_t bit = 1ull << (pos % 64);
            if (__atomic_fetch_or(&sh->bits[pos / 64], bit, __ATOMIC_SEQ_CST) & bit)
                __atomic_fetch_add(&sh->dups, 1, __ATOMIC_SEQ_CST);
            else
                __atomic_fetch_add(&sh->unique, 1, __ATOMIC_SEQ_CST);
        }
        int64_t now = real_ns();
        for (uint32_t p = 0; p < W8G_PARTITIONS; p++)
            if (seen & (1u << p))
                STORE(sh->last_ns[p], now);
        __atomic_fetch_add(&sh->got[m->id], (uint64_t)n, __ATOMIC_SEQ_CST);
        rc = es_sub_ack(sub, evs[n - 1]->position);
        STORE(sh->inflight[m->id], 0);
        if (rc) {
            member_fail(m, "ack");
            goto out;
        }
    }
    if (es_sub_commit(sub))
        member_fail(m, "final commit");
out:
    es_sub_close(sub);
    if (!m->st)
        es_store_close(st);
    STORE(sh->done[m->id], 1);
}

static void *member_thread(void *p)
{
    member_run(p);
    return NULL;
}

typedef struct grp_phase {
    double secs;        /* first fork to everything received and acknowledged */
    double owned_ms;    /* kill to every partition owned by a live member */
    double flowing_ms;  /* kill to a delivery in every partition it owned */
    int victim;         /* the member killed */
    int victim_parts;   /* partitions it owned at the kill */
    int victim_flowing; /* … with events to deliver again */
    uint64_t dups;
    uint64_t got[W8G_MEMBERS];
} grp_phase;

typedef struct owners {
    char owner[W8G_PARTITIONS][ES_MAX_SUB_NAME + 1];
    uint64_t behind[W8G_PARTITIONS], checkpoint[W8G_PARTITIONS];
    uint32_t n;
} owners;

static int collect_owner(const es_sub_partition_info *pi, void *payload)
{
    owners *o = payload;
    if (pi->partition < W8G_PARTITIONS) {
        memcpy(o->owner[pi->partition], pi->owner, sizeof o->owner[0]);
        o->behind[pi->partition] = pi->behind;
        o->checkpoint[pi->partition] = pi->checkpoint;
        o->n++;
    }
    return 0;
}

static int read_owners(owners *o, es_store *st, const char *name, result *r)
{
    memset(o, 0, sizeof *o);
    if (es_sub_partitions(st, name, collect_owner, o))
        return fail(r, "partitions: %s", es_error_last());
    return 0;
}

/* Every partition owned, by members other than `dead` ("" none); the
 * number of distinct owners in *distinct. */
static bool all_owned(const owners *o, const char *dead, int *distinct)
{
    char seen[W8G_PARTITIONS][ES_MAX_SUB_NAME + 1];
    int nd = 0;
    bool ok = o->n == W8G_PARTITIONS;
    for (uint32_t p = 0; p < W8G_PARTITIONS; p++) {
        if (!o->owner[p][0] || strcmp(o->owner[p], dead) == 0)
            ok = false;
        int k = 0;
        while (k < nd && strcmp(seen[k], o->owner[p]) != 0)
            k++;
        if (k == nd && o->owner[p][0])
            memcpy(seen[nd++], o->owner[p], sizeof seen[0]);
    }
    *distinct = nd;
    return ok;
}

/* Open the parent's store (or, on mem, keep the one it has). */
static int parent_store(es_store **st, const bench *b, const char *sys, result *r)
{
    if (*st)
        return 0;
    return es_open_bench(st, b, sys, "data-es", r);
}

static void parent_close(es_store **st, const char *sys)
{
    if (strcmp(sys, "eventsrc-mem") != 0) {
        es_store_close(*st);
        *st = NULL;
    }
}

/* Run one phase on subscription `name` (created by the caller): the group
 * consumes the log, and with `do_kill` loses a member half-way. */
static int run_phase(grp_phase *ph, es_store **st, const bench *b, const char *sys,
                     const char *name, grp_shared *sh, uint64_t total, const uint64_t part_last[],
                     bool do_kill, result *r)
{
    bool mem = strcmp(sys, "eventsrc-mem") == 0;
    pid_t pid[W8G_MEMBERS] = {0};
    pthread_t th[W8G_MEMBERS];
    grp_member mb[W8G_MEMBERS];
    bool alive[W8G_MEMBERS] = {false}, killed = false;
    owners o;
    int64_t snap[W8G_PARTITIONS] = {0};
    bool victim[W8G_PARTITIONS] = {false};
    double t_kill = 0, next_poll = 0;
    int v = 0; /* the member killed */
    char dead[16] = "";
    int rc = 0;
    memset(ph, 0, sizeof *ph);
    ph->owned_ms = ph->flowing_ms = -1;
    uint64_t nbits = sh->nbits;
    memset(sh, 0, sizeof *sh + (nbits + 63) / 64 * 8);
    sh->nbits = nbits;
    parent_close(st, sys); /* no store open across the fork */
    double t0 = now_s();
    for (int i = 0; i < W8G_MEMBERS; i++) {
        mb[i] = (grp_member){b, sys, name, mem ? *st : NULL, sh, i, NULL};
        if (mem) {
            if (pthread_create(&th[i], NULL, member_thread, &mb[i]) != 0) {
                rc = fail(r, "thread: %s", strerror(errno));
                goto stop;
            }
        } else if ((pid[i] = fork()) < 0) {
            rc = fail(r, "fork: %s", strerror(errno));
            goto stop;
        } else if (pid[i] == 0) {
            member_run(&mb[i]);
            _exit(sh->err[i][0] ? 1 : 0);
        }
        alive[i] = true;
    }
    if ((rc = parent_store(st, b, sys, r)))
        goto stop;
    uint64_t last_unique = 0;
    double progress_at = now_s();
    for (;;) {
        for (int i = 0; i < W8G_MEMBERS; i++)
            if (alive[i] && LOAD(sh->err[i][0])) {
                nap_ms(1); /* the message is being written */
                rc = fail(r, "%s", sh->err[i]);
                goto stop;
            }
        uint64_t u = LOAD(sh->unique);
        double now = now_s();
        if (u != last_unique)
            last_unique = u, progress_at = now;
        else if (now - progress_at > W8G_STALL_S) {
            rc = fail(r,
                      "no progress for %.0f s at %" PRIu64 " of %" PRIu64
                      " events (killed %d, owned %.0f ms, flowing %.0f ms)",
                      W8G_STALL_S, u, total, killed, ph->owned_ms, ph->flowing_ms);
            goto stop;
        }
        if (u == total) {
            bool busy = false;
            for (int i = 0; i < W8G_MEMBERS; i++)
                busy |= alive[i] && LOAD(sh->inflight[i]);
            if (!busy && (!do_kill || (killed && ph->owned_ms >= 0 && ph->flowing_ms >= 0))) {
                ph->secs = now - t0;
                break;
            }
            if (do_kill && !killed) {
                rc = fail(r, "every event came before the kill; use a larger --scale");
                goto stop;
            }
        }
        if (do_kill && !killed && u >= total / 2 && now >= next_poll) {
            /* once the group is settled (4 owners, every partition owned), kill
             * the member with the most events left in its partitions */
            int distinct;
            next_poll = now + W8G_POLL_MS / 1000.0;
            if ((rc = read_owners(&o, *st, name, r)))
                goto stop;
            if (all_owned(&o, "", &distinct) && distinct == W8G_MEMBERS) {
                uint64_t left[W8G_MEMBERS] = {0};
                for (int p = 0; p < W8G_PARTITIONS; p++)
                    if (o.owner[p][0] == 'm' && o.owner[p][1] >= '0' &&
                        o.owner[p][1] < '0' + W8G_MEMBERS)
                        left[o.owner[p][1] - '0'] += o.behind[p];
                for (int i = 1; i < W8G_MEMBERS; i++)
                    if (left[i] > left[v])
                        v = i;
                snprintf(dead, sizeof dead, "m%d", v);
                t_kill = now_s();
                if (mem) { /* it stops before its next batch: wait for that */
                    STORE(sh->die[v], 1);
                    while (!LOAD(sh->done[v]))
                        nap_ms(1);
                } else {
                    kill(pid[v], SIGKILL);
                    waitpid(pid[v], NULL, 0);
                }
                alive[v] = false;
                for (int p = 0; p < W8G_PARTITIONS; p++)
                    snap[p] = LOAD(sh->last_ns[p]);
                killed = true;
                next_poll = 0;
                /* its partitions whose checkpoint it left before their last
                 * event must flow again (from their checkpoints) */
                owners after;
                if ((rc = read_owners(&after, *st, name, r)))
                    goto stop;
                for (int p = 0; p < W8G_PARTITIONS; p++)
                    if (strcmp(o.owner[p], dead) == 0) {
                        ph->victim_parts++;
                        victim[p] = after.checkpoint[p] < part_last[p];
                        ph->victim_flowing += victim[p];
                    }
            }
        }
        if (killed && ph->flowing_ms < 0) {
            bool flowing = true;
            for (int p = 0; p < W8G_PARTITIONS; p++)
                if (victim[p] && LOAD(sh->last_ns[p]) == snap[p])
                    flowing = false;
            if (flowing)
                ph->flowing_ms = (now_s() - t_kill) * 1000;
        }
        if (killed && ph->owned_ms < 0 && now >= next_poll) {
            int distinct;
            next_poll = now + W8G_POLL_MS / 1000.0;
            if ((rc = read_owners(&o, *st, name, r)))
                goto stop;
            if (all_owned(&o, dead, &distinct))
                ph->owned_ms = (now_s() - t_kill) * 1000;
        }
        nap_ms(1);
    }
stop:
    STORE(sh->stop, 1);
    for (int i = 0; i < W8G_MEMBERS; i++) {
        if (mem) {
            if (alive[i] || (i == v && killed))
                pthread_join(th[i], NULL);
            es_sub_close(mb[i].left_open);
        } else if (alive[i]) {
            int status;
            waitpid(pid[i], &status, 0);
            if (rc == 0 && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
                rc = fail(r, "member m%d: %s", i, sh->err[i][0] ? sh->err[i] : "crashed");
        }
    }
    ph->victim = v;
    ph->dups = sh->dups;
    for (int i = 0; i < W8G_MEMBERS; i++)
        ph->got[i] = sh->got[i];
    return rc;
}

/* The events of the log, its last position, and each partition's. */
static int count_log(uint64_t *n, uint64_t *last, uint64_t part_last[], es_store *st, result *r)
{
    es_cursor *c = NULL;
    const es_event *ev;
    *n = *last = 0;
    if (es_log_cursor(&c, st, NULL))
        return fail(r, "log: %s", es_error_last());
    int rc;
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        (*n)++;
        *last = ev->position;
        part_last[es_sub_partition_of(ev->stream, ev->stream_len, W8G_PARTITIONS)] = ev->position;
    }
    es_cursor_free(c);
    if (rc != ES_ITEROVER)
        return fail(r, "log: %s", es_error_last());
    return 0;
}

int run_w8g(const bench *b, const char *sys, result *r)
{
    es_store *st = NULL;
    grp_shared *sh = MAP_FAILED;
    size_t map_len = 0;
    uint64_t total, last, part_last[W8G_PARTITIONS] = {0};
    grp_phase ph1, ph2;
    char name1[48], name2[48];
    bool created1 = false, created2 = false;
    if (strcmp(sys, "eventsrc-mem") == 0 ? mem_prepare(b, &st, r)
                                         : es_open_bench(&st, b, sys, "data-es", r))
        goto out;
    if (count_log(&total, &last, part_last, st, r))
        goto out;
    snprintf(name1, sizeof name1, "bench-W8g-%u-%d", b->run_id, (int)getpid());
    snprintf(name2, sizeof name2, "bench-W8gk-%u-%d", b->run_id, (int)getpid());
    es_sub_options so = ES_SUB_OPTIONS_INIT;
    so.partitions = W8G_PARTITIONS;
    if (es_sub_create(st, name1, &so)) {
        fail(r, "create: %s", es_error_last());
        goto out;
    }
    created1 = true;
    if (es_sub_create(st, name2, &so)) {
        fail(r, "create: %s", es_error_last());
        goto out;
    }
    created2 = true;
    map_len = sizeof *sh + (last + 1 + 63) / 64 * 8;
    sh = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        fail(r, "mmap: %s", strerror(errno));
        goto out;
    }
    sh->nbits = last + 1;
    if (run_phase(&ph1, &st, b, sys, name1, sh, total, part_last, false, r) ||
        run_phase(&ph2, &st, b, sys, name2, sh, total, part_last, true, r))
        goto out;
    for (int k = 0; k < 2; k++) {
        es_sub_info info;
        const char *nm = k ? name2 : name1;
        if (es_sub_info_get(&info, st, nm)) {
            fail(r, "info: %s", es_error_last());
            goto out;
        }
        if (info.behind) { /* (its checkpoint is the lowest partition's: not the head) */
            fail(r, "%s: %" PRIu64 " behind at the end", nm, info.behind);
            goto out;
        }
    }
    r->events_per_s = (double)total / ph1.secs;
    r->takeover_ms = ph2.owned_ms;
    r->flowing_ms = ph2.flowing_ms;
    r->dups = ph2.dups;
    r->group_events_per_s = (double)total / ph2.secs;
    snprintf(r->note, sizeof r->note,
             "%" PRIu64 " events, 4 members, 16 partitions, %" PRIu64 " dups; kill of m%d (%d "
             "partitions): owned again %.0f ms, flowing %.0f ms, %" PRIu64 " dups, %.0f ev/s",
             total, ph1.dups, ph2.victim, ph2.victim_parts, ph2.owned_ms, ph2.flowing_ms, ph2.dups,
             r->group_events_per_s);
    fprintf(stderr,
            "es_bench: W8g %s: phase 1 %.2f s, per member %" PRIu64 "/%" PRIu64 "/%" PRIu64
            "/%" PRIu64 "; phase 2 %.2f s, per member %" PRIu64 "/%" PRIu64 "/%" PRIu64 "/%" PRIu64
            "\n",
            sys, ph1.secs, ph1.got[0], ph1.got[1], ph1.got[2], ph1.got[3], ph2.secs, ph2.got[0],
            ph2.got[1], ph2.got[2], ph2.got[3]);
out:
    if (st) {
        if (created1)
            (void)es_sub_delete(st, name1);
        if (created2)
            (void)es_sub_delete(st, name2);
    }
    es_store_close(st);
    if (sh != MAP_FAILED)
        munmap(sh, map_len);
    return r->ok ? 0 : -1;
}
