/*
 * main.c — es_bench: the workloads of BENCHMARKS.md, run in one go on
 * eventsrc and on what a user would otherwise hand-roll (raw LMDB, SQLite;
 * with a PostgreSQL server also plain inserts and Message DB), on the same
 * data, so that the figures compare as ratios within one run.  Built with
 * the project, never installed: the shipped esrc links none of the
 * baselines.  scripts/bench.sh runs it with a throwaway PostgreSQL cluster.
 *
 * This file is the driver: the command line, one child process per
 * (workload, system) so that its peak RSS is its own (wait4), the rows and
 * the target ratios.  The workloads are in bench.c (eventsrc, raw LMDB,
 * SQLite), bench_pg.c (pg-raw, Message DB), bench_live.c (W9) and
 * bench_group.c (W8g).
 */
#define _GNU_SOURCE
#include "bench.h"

#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Exit codes, as esrc's: 0 ok, 1 a failed row or error, 2 bad command line. */
enum { BENCH_OK = 0, BENCH_FAIL = 1, BENCH_USAGE = 2 };

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    if (remove(path) != 0)
        fprintf(stderr, "es_bench: could not remove %s: %s\n", path, strerror(errno));
    return 0;
}

/* Remove the temp dir this run made, and what is in it (depth first, not
 * following links; no shell). */
static void remove_tree(const char *path)
{
    if (nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
        fprintf(stderr, "es_bench: could not remove %s: %s\n", path, strerror(errno));
}

/* ---- driver ---- */

static const char *const SYSTEMS[] = {"eventsrc-lmdb", "eventsrc-mem", "lmdb-raw",  "sqlite",
                                      "eventsrc-pg",   "pg-raw",       "message-db"};

static bool listed(const char *list, const char *item)
{
    if (!list)
        return true;
    size_t n = strlen(item);
    for (const char *p = list; (p = strstr(p, item)); p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == 0))
            return true;
    return false;
}

static bool is_pg_baseline(const char *sys)
{
    return strcmp(sys, "pg-raw") == 0 || strcmp(sys, "message-db") == 0;
}

/* Systems of this run: those listed, or every one whose server was given. */
static bool wanted(const bench *b, const char *sys)
{
    if (b->systems)
        return listed(b->systems, sys);
    if (strcmp(sys, "message-db") == 0)
        return b->mdb_uri != NULL;
    if (strcmp(sys, "eventsrc-pg") == 0 || strcmp(sys, "pg-raw") == 0)
        return b->pg_uri != NULL;
    return true;
}
static const char *const WORKLOADS[] = {"W1", "W2", "W3",  "W4",  "W5",  "W6",
                                        "W7", "W8", "W8k", "W8c", "W8g", "W9"};

/* Run one (workload, system) in a child; record and print it unless `quiet`. */
static void run_one(bench *b, const char *w, const char *sys, bool quiet)
{
    int fds[2];
    result r;
    memset(&r, 0, sizeof r);
    snprintf(r.workload, sizeof r.workload, "%s", w);
    snprintf(r.system, sizeof r.system, "%s", sys);
    if ((strcmp(w, "W6") == 0 || strcmp(w, "W9") == 0) && strncmp(sys, "eventsrc", 8) != 0)
        return; /* views and live subscriptions are eventsrc's: no baseline row */
    if (strncmp(w, "W8", 2) == 0 && strncmp(sys, "eventsrc", 8) && strcmp(sys, "message-db"))
        return; /* subscriptions: eventsrc against Message DB's consumer */
    if (strcmp(w, "W8g") == 0 && strncmp(sys, "eventsrc", 8) != 0)
        return; /* Message DB's groups have fixed members and no failover: no row */
    if (is_pg_baseline(sys) && strcmp(w, "W1") && strcmp(w, "W2") && strcmp(w, "W3") &&
        strcmp(w, "W4") && strncmp(w, "W8", 2))
        return; /* the PostgreSQL baselines run W1–W4 (and Message DB W8) */
    fflush(stdout);
    if (pipe(fds) != 0)
        return;
    pid_t pid = fork();
    if (pid == 0) {
        close(fds[0]);
        r.ok = 1;
        int rc;
        if (is_pg_baseline(sys))
#ifdef ES_HAVE_PG
            rc = pgb_run(b, w, sys, &r);
#else
            rc = fail(&r, "es_bench was built without PostgreSQL");
#endif
        else
            rc = emb_run(b, w, sys, &r);
        r.ok = rc == 0 && r.ok;
        if (write(fds[1], &r, sizeof r) != (ssize_t)sizeof r)
            _exit(2);
        _exit(0);
    }
    close(fds[1]);
    struct rusage ru;
    int status;
    ssize_t got = read(fds[0], &r, sizeof r);
    close(fds[0]);
    wait4(pid, &status, 0, &ru);
    if (got != (ssize_t)sizeof r) {
        r.ok = 0;
        snprintf(r.note, sizeof r.note, "the run crashed (status %d)", status);
    }
    r.peak_rss_kb = ru.ru_maxrss;
    if (quiet) {
        if (!r.ok)
            fprintf(stderr, "es_bench: preparing %s on %s failed: %s\n", w, sys, r.note);
        return;
    }
    b->results[b->n_results++] = r;
    if (b->json) {
        printf("{\"workload\":\"%s\",\"system\":\"%s\",\"events_per_s\":%.0f,\"p50_us\":%.1f,"
               "\"p99_us\":%.1f,\"peak_rss_kb\":%ld",
               r.workload, r.system, r.events_per_s, r.p50_us, r.p99_us, r.peak_rss_kb);
        if (strcmp(w, "W5") == 0)
            printf(",\"scan_rss_added_kb\":%ld,\"scan_anon_added_kb\":%ld", r.extra_kb, r.anon_kb);
        if (strcmp(w, "W9") == 0)
            printf(",\"ack_p50_us\":%.1f,\"ack_p99_us\":%.1f", r.ack_p50_us, r.ack_p99_us);
        if (strcmp(w, "W8g") == 0)
            printf(",\"takeover_ms\":%.0f,\"flowing_ms\":%.0f,\"dups\":%" PRIu64
                   ",\"with_kill_events_per_s\":%.0f",
                   r.takeover_ms, r.flowing_ms, r.dups, r.group_events_per_s);
        printf(",\"ok\":%s,\"note\":\"%s\"}\n", r.ok ? "true" : "false", r.note);
    } else {
        printf("| %-3s | %-14s | %12.0f | %9.1f | %9.1f | %9ld | %s%s |\n", r.workload, r.system,
               r.events_per_s, r.p50_us, r.p99_us, r.peak_rss_kb, r.ok ? "" : "FAILED: ", r.note);
    }
    fflush(stdout);
}

static const result *find(const bench *b, const char *w, const char *sys)
{
    for (int i = 0; i < b->n_results; i++)
        if (strcmp(b->results[i].workload, w) == 0 && strcmp(b->results[i].system, sys) == 0 &&
            b->results[i].ok)
            return &b->results[i];
    return NULL;
}

static void ratio(const bench *b, const char *what, const char *w1, const char *s1, const char *w2,
                  const char *s2, double target, bool higher_is_better, bool by_time)
{
    const result *x = find(b, w1, s1), *y = find(b, w2, s2);
    if (!x || !y)
        return;
    double v = by_time ? (x->p50_us / y->p50_us) : (x->events_per_s / y->events_per_s);
    bool met = higher_is_better ? v >= target : v <= target;
    if (target == 0) { /* for comparison only */
        if (b->json)
            printf("{\"comparison\":\"%s\",\"ratio\":%.2f}\n", what, v);
        else
            printf("| %-44s | %7.2f | | |\n", what, v);
        return;
    }
    if (b->json)
        printf("{\"target\":\"%s\",\"ratio\":%.2f,\"goal\":%.2f,\"met\":%s}\n", what, v, target,
               met ? "true" : "false");
    else
        printf("| %-44s | %7.2f | %s %.2f | %s |\n", what, v,
               higher_is_better ? ">=" : "<=", target, met ? "met" : "MISSED");
}

static void w8_ratios(const bench *b)
{
    ratio(b, "W8 eventsrc-lmdb / its own W5", "W8", "eventsrc-lmdb", "W5", "eventsrc-lmdb", 0.8,
          true, false);
    ratio(b, "W8k eventsrc-lmdb / its own W5", "W8k", "eventsrc-lmdb", "W5", "eventsrc-lmdb", 0.8,
          true, false);
    ratio(b, "W8 eventsrc-pg / message-db", "W8", "eventsrc-pg", "W8", "message-db", 2.0, true,
          false);
    ratio(b, "W8k eventsrc-pg / message-db", "W8k", "eventsrc-pg", "W8k", "message-db", 2.0, true,
          false);
    ratio(b, "W8c eventsrc-lmdb / its own W5", "W8c", "eventsrc-lmdb", "W5", "eventsrc-lmdb", 0,
          true, false);
    ratio(b, "W8c eventsrc-pg / message-db", "W8c", "eventsrc-pg", "W8c", "message-db", 0, true,
          false);
    ratio(b, "W8 eventsrc-mem / its own W5", "W8", "eventsrc-mem", "W5", "eventsrc-mem", 0, true,
          false);
    ratio(b, "W8 eventsrc-pg / its own W5", "W8", "eventsrc-pg", "W5", "eventsrc-pg", 0, true,
          false);
    ratio(b, "W8k eventsrc-pg / its own W5", "W8k", "eventsrc-pg", "W5", "eventsrc-pg", 0, true,
          false);
    ratio(b, "W8g eventsrc-lmdb / its W8c (one consumer)", "W8g", "eventsrc-lmdb", "W8c",
          "eventsrc-lmdb", 0, true, false);
    ratio(b, "W8g eventsrc-pg / its W8c (one consumer)", "W8g", "eventsrc-pg", "W8c", "eventsrc-pg",
          0, true, false);
    ratio(b, "W8g eventsrc-mem / its W8c (one consumer)", "W8g", "eventsrc-mem", "W8c",
          "eventsrc-mem", 0, true, false);
}

int main(int argc, char **argv)
{
    static const struct option longs[] = {{"help", no_argument, NULL, 'h'},
                                          {"json", no_argument, NULL, 'J'},
                                          {"scale", required_argument, NULL, 's'},
                                          {"dir", required_argument, NULL, 'd'},
                                          {"only", required_argument, NULL, 'o'},
                                          {"systems", required_argument, NULL, 'y'},
                                          {"keep", no_argument, NULL, 'k'},
                                          {"pg", required_argument, NULL, 'p'},
                                          {"message-db", required_argument, NULL, 'm'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: es_bench [--scale F] [--only W1,W3,...] [--systems a,b] [--dir DIR]\n"
        "                [--pg URI] [--message-db URI] [--keep] [--json]\n\n"
        "Runs the workloads on eventsrc (lmdb and mem stores) and, in the same run\n"
        "on the same data, on raw LMDB and SQLite:\n"
        "  W1 durable one-event appends, 1 writer        W2 the same, 16 writer threads\n"
        "  W3 1000-event commits over 1000 streams (1M)  W4 read one stream of 10,000\n"
        "  W5 scan the global log                        W6 view get, cold and warm\n"
        "  W7 saves with the unique-username rule, 4 threads on one company\n"
        "  W8 a subscription catching up over W3's log (batch 100; W8k: batch 1000;\n"
        "     W8c: batch 100, a checkpoint a second; W8g: a group of 4 member processes,\n"
        "     16 partitions, as W8c, then one member SIGKILLed half-way: takeover time)\n"
        "  W9 live latency, append -> subscriber (another process), under W2's writers\n"
        "--scale sizes the work (1 = the full run, minutes; 0.02 = seconds).\n"
        "Data goes to --dir (default: a new temp dir), removed unless --keep.\n"
        "Systems: eventsrc-lmdb, eventsrc-mem, lmdb-raw, sqlite; with --pg URI (a\n"
        "PostgreSQL server) also eventsrc-pg and pg-raw, and with --message-db URI (the\n"
        "database Message DB is installed in, on the same server) message-db.\n"
        "PostgreSQL systems run W3 on a fifth of the events; pg-raw and message-db\n"
        "run W1-W4, message-db also the W8s.  scripts/bench.sh sets all of this up.\n";
    bench *b = calloc(1, sizeof *b);
    bool keep = false, made_dir = false;
    int c;
    if (!b)
        return BENCH_FAIL;
    b->scale = 1.0;
    b->run_id = (unsigned)(time(NULL) % 100000000);
    optind = 1;
    while ((c = getopt_long(argc, argv, "+:h", longs, NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(help, stdout);
            free(b);
            return BENCH_OK;
        case 'J':
            b->json = 1;
            break;
        case 's': {
            char *end;
            b->scale = strtod(optarg, &end);
            if (*end || b->scale <= 0 || b->scale > 100) {
                fprintf(stderr, "es_bench: --scale must be a number in (0, 100]\n");
                free(b);
                return BENCH_USAGE;
            }
            break;
        }
        case 'd':
            snprintf(b->dir, sizeof b->dir, "%s", optarg);
            break;
        case 'o':
            b->only = optarg;
            break;
        case 'y':
            b->systems = optarg;
            break;
        case 'k':
            keep = true;
            break;
        case 'p':
            b->pg_uri = optarg;
            break;
        case 'm':
            b->mdb_uri = optarg;
            break;
        default:
            fprintf(stderr, "es_bench: unknown option or missing value in '%s' (see --help)\n",
                    argv[optind - 1]);
            free(b);
            return BENCH_USAGE;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "es_bench: unexpected argument '%s' (see --help)\n", argv[optind]);
        free(b);
        return BENCH_USAGE;
    }
    if (!b->dir[0]) {
        const char *tmp = getenv("TMPDIR");
        snprintf(b->dir, sizeof b->dir, "%s/esrc-bench-XXXXXX", tmp && *tmp ? tmp : "/var/tmp");
        if (!mkdtemp(b->dir)) {
            fprintf(stderr, "es_bench: cannot make a temp dir: %s\n", strerror(errno));
            free(b);
            return BENCH_FAIL;
        }
        made_dir = true;
    } else if (mkdir(b->dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "es_bench: cannot make %s: %s\n", b->dir, strerror(errno));
        free(b);
        return BENCH_FAIL;
    }
    if (!b->json) {
        printf("es_bench: scale %g, data in %s\n\n", b->scale, b->dir);
        printf(
            "| W   | system         |     events/s |   p50 µs |   p99 µs |  peak RSS KiB | "
            "notes |\n|-----|----------------|-------------:|----------:|----------:|----------:|"
            "-------|\n");
    }
    for (size_t w = 0; w < sizeof WORKLOADS / sizeof *WORKLOADS; w++) {
        if (!listed(b->only, WORKLOADS[w]))
            continue;
        /* W4 and W5 read W3's data: make it when W3 is not part of this run */
        if ((strcmp(WORKLOADS[w], "W4") == 0 || strcmp(WORKLOADS[w], "W5") == 0 ||
             strncmp(WORKLOADS[w], "W8", 2) == 0) &&
            !listed(b->only, "W3")) {
            char probe[600];
            snprintf(probe, sizeof probe, "%s/data-es", b->dir);
            if (access(probe, F_OK) != 0) {
                fprintf(stderr, "es_bench: loading W3's data first\n");
                for (size_t s = 0; s < sizeof SYSTEMS / sizeof *SYSTEMS; s++)
                    if (strcmp(SYSTEMS[s], "eventsrc-mem") != 0 && wanted(b, SYSTEMS[s]))
                        run_one(b, "W3", SYSTEMS[s], true);
            }
        }
        for (size_t s = 0; s < sizeof SYSTEMS / sizeof *SYSTEMS; s++)
            if (wanted(b, SYSTEMS[s]))
                run_one(b, WORKLOADS[w], SYSTEMS[s], false);
    }
    if (!b->json)
        printf("\n| target (ratios within this run) | ratio | goal | |\n|---|---:|---|---|\n");
    ratio(b, "W1 eventsrc-lmdb / lmdb-raw", "W1", "eventsrc-lmdb", "W1", "lmdb-raw", 0.9, true,
          false);
    ratio(b, "W2 eventsrc-lmdb / its own W1", "W2", "eventsrc-lmdb", "W1", "eventsrc-lmdb", 10,
          true, false);
    ratio(b, "W3 eventsrc-lmdb / lmdb-raw", "W3", "eventsrc-lmdb", "W3", "lmdb-raw", 1.0, true,
          false);
    ratio(b, "W3 eventsrc-lmdb / sqlite", "W3", "eventsrc-lmdb", "W3", "sqlite", 5.0, true, false);
    ratio(b, "W4 eventsrc-lmdb time / lmdb-raw time", "W4", "eventsrc-lmdb", "W4", "lmdb-raw", 2.0,
          false, true);
    ratio(b, "W5 eventsrc-lmdb / lmdb-raw", "W5", "eventsrc-lmdb", "W5", "lmdb-raw", 0.5, true,
          false);
    ratio(b, "W1 eventsrc-pg / message-db", "W1", "eventsrc-pg", "W1", "message-db", 0.9, true,
          false);
    ratio(b, "W2 eventsrc-pg / message-db (16 clients)", "W2", "eventsrc-pg", "W2", "message-db",
          1.5, true, false);
    ratio(b, "W3 eventsrc-pg / message-db (pipelined)", "W3", "eventsrc-pg", "W3", "message-db",
          1.5, true, false);
    ratio(b, "W4 eventsrc-pg time / message-db time", "W4", "eventsrc-pg", "W4", "message-db",
          1.0 / 3, false, true);
    ratio(b, "W1 eventsrc-pg / pg-raw", "W1", "eventsrc-pg", "W1", "pg-raw", 0, true, false);
    ratio(b, "W2 eventsrc-pg / pg-raw", "W2", "eventsrc-pg", "W2", "pg-raw", 0, true, false);
    ratio(b, "W3 eventsrc-pg / pg-raw", "W3", "eventsrc-pg", "W3", "pg-raw", 0, true, false);
    ratio(b, "W4 eventsrc-pg time / pg-raw time", "W4", "eventsrc-pg", "W4", "pg-raw", 0, false,
          true);
    w8_ratios(b);
    const result *w6 = find(b, "W6", "eventsrc-lmdb"), *w5 = find(b, "W5", "eventsrc-lmdb");
    if (w6 && !b->json) {
        printf("| %-44s | %7.1f | <= 10 µs | %s |\n", "W6 warm get median (µs)", w6->p50_us,
               w6->p50_us <= 10 ? "met" : "MISSED");
        printf("| %-44s | %7.2f | >= 5 M/s | %s |\n", "W6 cold fold (M events/s)",
               w6->events_per_s / 1e6, w6->events_per_s >= 5e6 ? "met" : "MISSED");
    }
    if (w5 && !b->json)
        printf("| %-44s | %7.1f | < 64 MiB | %s |\n", "W5 RSS added by the scan (MiB)",
               (double)w5->extra_kb / 1024, w5->extra_kb < 64 * 1024 ? "met" : "MISSED");
    if (w5 && !b->json)
        printf("| %-44s | %7.1f | < 64 MiB | %s |\n", "W5 anonymous memory added by the scan (MiB)",
               (double)w5->anon_kb / 1024, w5->anon_kb < 64 * 1024 ? "met" : "MISSED");
    w9_targets(b);
    if (made_dir && !keep)
        remove_tree(b->dir);
    int failed = 0;
    for (int i = 0; i < b->n_results; i++)
        failed |= !b->results[i].ok;
    free(b);
    return failed ? BENCH_FAIL : BENCH_OK;
}
