/*
 * project.c — `esrc project FILE --to TARGET [--follow] [--rebuild] [--status]`:
 * runs a projection file (doc/projections.md) through libeventsrc_project,
 * into SQLite (sqlite:PATH) or PostgreSQL (postgres://…), or tells how far
 * its model is behind the log (--status).
 *
 * Progress: on a terminal one line on stderr, rewritten (events, rate,
 * ETA); otherwise plain lines, at most one every few seconds while a long
 * catch-up runs and one each time the model has caught up.
 */
#include "cli.h"

#include <eventsrc_project.h>

#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PLAIN_EVERY_S 5.0
#define TTY_EVERY_S 0.5

static volatile sig_atomic_t stop_asked;

static void on_signal(int sig)
{
    (void)sig;
    stop_asked = 1;
}

typedef struct runview {
    const char *name;
    bool tty, json, follow;
    double started, last_line;
    uint64_t shown_position; /* the position of the last "caught up" line */
    bool line_open;          /* a terminal line waits to be ended */
} runview;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fmt_eta(char *out, size_t cap, double s)
{
    if (s < 0 || s > 99 * 3600.0)
        snprintf(out, cap, "?");
    else
        snprintf(out, cap, "%d:%02d:%02d", (int)s / 3600, (int)s / 60 % 60, (int)s % 60);
}

static int on_progress(const es_proj_progress *p, void *payload)
{
    runview *v = payload;
    double t = now_s(), el = t - v->started;
    double rate = el > 0 ? (double)p->events / el : 0;
    const char *what = p->rebuilding ? "rebuilding" : "projecting";

    if (stop_asked)
        return 1;
    if (v->json)
        return 0;
    if (!p->caught_up) {
        if (t - v->last_line < (v->tty ? TTY_EVERY_S : PLAIN_EVERY_S))
            return 0;
        v->last_line = t;
        double pos_rate = el > 0 ? (double)(p->position - p->start) / el : 0;
        double eta = pos_rate > 0 ? (double)(p->last_position - p->position) / pos_rate : -1;
        char e[32];
        fmt_eta(e, sizeof e, eta);
        if (v->tty) {
            fprintf(stderr,
                    "\r%s %s: %" PRIu64 " events, position %" PRIu64 " of %" PRIu64
                    ", %.0f events/s, ETA %s   ",
                    what, v->name, p->events, p->position, p->last_position, rate, e);
            v->line_open = true;
        } else {
            fprintf(stderr,
                    "%s %s: %" PRIu64 " events, position %" PRIu64 " of %" PRIu64
                    ", %.0f events/s, ETA %s\n",
                    what, v->name, p->events, p->position, p->last_position, rate, e);
        }
        return 0;
    }
    /* Caught up: a line when something new was applied since the last one. */
    if (v->follow && p->position != v->shown_position) {
        if (v->line_open)
            fputc('\n', stderr);
        v->line_open = false;
        fprintf(stderr, "%s: caught up at position %" PRIu64 " (%" PRIu64 " events applied)\n",
                v->name, p->position, p->events);
        v->shown_position = p->position;
    }
    return 0;
}

static int proj_error(const char *what, int rc)
{
    const char *msg = es_proj_error_last();
    fprintf(stderr, "esrc: %s: %s\n", what, *msg ? msg : es_strerror(rc));
    return rc == ES_ECONFLICT ? ESRC_CONFLICT : rc == ES_EINVAL ? ESRC_USAGE : ESRC_FAIL;
}

static void fmt_time(char *out, size_t cap, int64_t us)
{
    time_t s = (time_t)(us / 1000000);
    struct tm tm;
    if (us <= 0 || !gmtime_r(&s, &tm))
        snprintf(out, cap, "-");
    else
        strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* --status: the model against the log, read only. */
static int print_status(esrc_ctx *cx, es_store *st, const char *to, const es_proj_def *def)
{
    es_proj_status s;
    char upd[40], old[40];
    int rc = es_proj_status_get(&s, st, to, def);
    if (rc < 0)
        return proj_error("project", rc);
    fmt_time(upd, sizeof upd, s.updated_us);
    fmt_time(old, sizeof old, s.oldest_us);
    if (cx->json) {
        print_json(json_pack("{s:s,s:s,s:b,s:b,s:I,s:I,s:I,s:I,s:b,s:I,s:I}", "projection",
                             def->name, "target", to, "found", s.found, "same_definition",
                             s.same_definition, "checkpoint", (json_int_t)s.checkpoint, "events",
                             (json_int_t)s.events, "head", (json_int_t)s.head, "behind",
                             (json_int_t)s.behind, "behind_capped", s.behind_capped, "oldest_us",
                             (json_int_t)s.oldest_us, "updated_us", (json_int_t)s.updated_us));
        return ESRC_OK;
    }
    printf("projection:  %s\n", def->name);
    printf("target:      %s\n", to);
    if (!s.found)
        printf("model:       none yet\n");
    else
        printf("model:       %s\n", s.same_definition
                                        ? "built by this file"
                                        : "built by another version of the file (rebuild it)");
    printf("checkpoint:  %" PRIu64 " (%" PRIu64 " events applied, last at %s)\n", s.checkpoint,
           s.events, upd);
    printf("head:        %" PRIu64 "\n", s.head);
    printf("behind:      %s%" PRIu64 " events%s%s\n", s.behind_capped ? "more than " : "", s.behind,
           s.behind ? ", the oldest committed at " : "", s.behind ? old : "");
    return ESRC_OK;
}

int esrc_project(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS,
                                          {"to", required_argument, NULL, 't'},
                                          {"follow", no_argument, NULL, 'f'},
                                          {"rebuild", no_argument, NULL, 'r'},
                                          {"batch", required_argument, NULL, 'b'},
                                          {"status", no_argument, NULL, 's'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc project FILE --to TARGET [--follow] [--rebuild] [--batch N]\n"
        "       esrc project FILE --to TARGET --status\n\n"
        "Keep a SQL read model of the log: the projection FILE (see\n"
        "doc/projections.md) maps event types to SQL statements.  Each batch of\n"
        "events is applied in one transaction of the target that also moves the\n"
        "projection's checkpoint (table eventsrc_projection), so a run killed at\n"
        "any moment resumes where the model stands: no event twice, none lost.\n\n"
        "  --to sqlite:PATH  the target: a SQLite file (created if missing), or\n"
        "  --to postgres://…[?schema=NAME]  a PostgreSQL database; the model\n"
        "                    lives in SCHEMA (default: the projection's name)\n"
        "  --follow          keep applying new events (stop with Ctrl-C)\n"
        "  --rebuild         build from the start of the log into a new file and\n"
        "                    swap it in atomically: readers see the old model or\n"
        "                    the new one, never a mix\n"
        "  --batch N         events per transaction (default 1000)\n"
        "  --status          print the model's checkpoint, the log's head and\n"
        "                    the events in between (its lag); changes nothing\n\n"
        "An error (bad SQL, an event field the file names that the event lacks, a\n"
        "type mismatch) names FILE:LINE, and the model stays at its last good\n"
        "batch.  Exit 2 for a bad file, 3 when the model was built by another\n"
        "version of the file (rebuild it).\n";
    const char *to = NULL;
    es_proj_options o = ES_PROJ_OPTIONS_INIT;
    es_proj_progress p;
    es_proj_file *pf = NULL;
    es_store *st = NULL;
    runview v = {0};
    uint64_t batch = 0;
    bool status = false;
    int c, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        switch (c) {
        case 't':
            to = optarg;
            break;
        case 'f':
            o.flags |= ES_PROJ_FOLLOW;
            break;
        case 'r':
            o.flags |= ES_PROJ_REBUILD;
            break;
        case 's':
            status = true;
            break;
        case 'b':
            if ((rc = parse_u64(&batch, optarg, "--batch")) != 0)
                return rc;
            if (batch < 1 || batch > 1000000)
                return usage_error("--batch must be 1..1000000, not %" PRIu64, batch);
            o.batch_events = (size_t)batch;
            break;
        default:
            return ESRC_USAGE;
        }
    }
    if (optind >= argc)
        return usage_error("project: no projection file given");
    if (optind + 1 < argc)
        return usage_error("project: unexpected argument '%s'", argv[optind + 1]);
    if (!to)
        return usage_error("project: --to sqlite:PATH or --to postgres://… is required");
    if (status && o.flags)
        return usage_error("project: --status goes alone (not with --follow or --rebuild)");
    if ((rc = es_proj_file_load(&pf, argv[optind])) < 0)
        return proj_error("project", rc);
    if ((rc = open_store(&st, cx, false, true)) != 0)
        goto done;
    if (status) {
        rc = print_status(cx, st, to, es_proj_file_def(pf));
        goto done;
    }

    v.name = es_proj_file_def(pf)->name;
    v.tty = isatty(STDERR_FILENO);
    v.json = cx->json;
    v.follow = (o.flags & ES_PROJ_FOLLOW) != 0;
    v.started = now_s();
    v.shown_position = UINT64_MAX;
    o.progress = on_progress;
    o.payload = &v;
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);

    rc = es_proj_run(&p, st, to, es_proj_file_def(pf), &o);
    if (v.line_open)
        fputc('\n', stderr);
    if (rc < 0) {
        rc = proj_error("project", rc);
        goto done;
    }
    if (cx->json) {
        print_json(json_pack("{s:s,s:s,s:I,s:I,s:b}", "projection", v.name, "target", to, "events",
                             (json_int_t)p.events, "position", (json_int_t)p.position, "rebuilt",
                             (o.flags & ES_PROJ_REBUILD) != 0));
    } else {
        printf("%s %s into %s: %" PRIu64 " events, at position %" PRIu64 "\n",
               o.flags & ES_PROJ_REBUILD ? "rebuilt" : "projected", v.name, to, p.events,
               p.position);
    }
    rc = ESRC_OK;
done:
    es_store_close(st);
    es_proj_file_free(pf);
    return rc;
}
