/*
 * sub.c — `esrc sub`: create, list, inspect, reset, delete and run
 * subscriptions (named, durable readers of the global log whose checkpoint
 * lives in the store; see "Subscriptions" in eventsrc.h).
 *
 * `esrc sub run` is the consumer a shell script needs: it prints each batch
 * as JSON Lines (the encoder of `esrc log --json`) and moves the checkpoint
 * only when the batch is acknowledged — at once (--auto-ack), by positions
 * read back on standard input, or by a command (--exec) that exits 0 after
 * reading the batch on its standard input.  Delivery is at least once: what
 * was not acknowledged when it stops comes again at the next run.  Ctrl-C
 * and SIGTERM stop it between batches with the checkpoint committed.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "args.h"
#include "import.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* How long one wait for events lasts before the stop flag is looked at. */
#define RUN_SLICE_MS 200
/* The lease es_sub_open takes by default; renewed at half of it while the
 * consumer waits for an acknowledgement or a command. */
#define RUN_LEASE_MS 10000
/* Longest acknowledgement line read from standard input. */
#define ACK_LINE_MAX 256

/* A library failure: one line naming what failed, and the exit code.  The
 * detail of es_error_last() says it best (it names the subscription); the
 * generic name of the code is only used when there is none. */
static int sub_error(const char *what, int rc)
{
    const char *detail = es_error_last_code() == rc ? es_error_last() : "";
    fprintf(stderr, "esrc: sub %s: %s\n", what, *detail ? detail : es_strerror(rc));
    return rc == ES_ECONFLICT                    ? ESRC_CONFLICT
           : rc == ES_EINVAL || rc == ES_ETOOBIG ? ESRC_USAGE
                                                 : ESRC_FAIL;
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- starts: beginning | end | POSITION | @TIME ---- */

static int parse_start(es_sub_start *start, uint64_t *position, int64_t *time_us, const char *s,
                       const char *opt)
{
    switch (esrc_parse_start(start, position, time_us, s)) {
    case 0:
        return 0;
    case ESRC_START_POSITION:
        return usage_error("%s: a position is 1..%" PRIu64 ", not '%s'", opt, ES_SEQ_MAX - 1, s);
    case ESRC_START_TIME:
        return usage_error("%s: '%s' is not a time: use @MICROSECONDS since 1970 or "
                           "@YYYY-MM-DDTHH:MM:SS[.ffffff]Z (UTC)",
                           opt, s);
    default:
        return usage_error("%s must be beginning, end, a position or @TIME, not '%s'", opt, s);
    }
}

/* ---- lag and health ---- */

static const char *state_name(es_sub_state s)
{
    switch (s) {
    case ES_SUB_IDLE:
        return "idle";
    case ES_SUB_CATCHING_UP:
        return "catching-up";
    case ES_SUB_LIVE:
        return "live";
    case ES_SUB_STOPPED:
        return "stopped";
    }
    return "unknown";
}

/* Time behind for people: 850ms, 42s, 3m05s, 5h03m, 2d04h; "-" when nothing is behind. */
static void format_lag(char *out, size_t cap, const es_sub_info *in)
{
    long long s = (long long)(in->behind_us / 1000000);
    if (in->behind == 0)
        snprintf(out, cap, "-");
    else if (s < 1)
        snprintf(out, cap, "%lldms", (long long)(in->behind_us / 1000));
    else if (s < 60)
        snprintf(out, cap, "%llds", s);
    else if (s < 3600)
        snprintf(out, cap, "%lldm%02llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(out, cap, "%lldh%02lldm", s / 3600, s / 60 % 60);
    else
        snprintf(out, cap, "%lldd%02lldh", s / 86400, s / 3600 % 24);
}

static void format_behind(char *out, size_t cap, const es_sub_info *in)
{
    snprintf(out, cap, "%" PRIu64 "%s", in->behind, in->behind_capped ? "+" : "");
}

static void format_when(char *out, size_t cap, int64_t us, const char *none)
{
    if (us)
        esrc_format_time_us(out, cap, us);
    else
        snprintf(out, cap, "%s", none);
}

static json_t *info_json(const es_sub_info *in)
{
    char when[64];
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(in->name));
    json_object_set_new(o, "checkpoint", json_integer((json_int_t)in->checkpoint));
    json_object_set_new(o, "head", json_integer((json_int_t)in->head));
    json_object_set_new(o, "behind", json_integer((json_int_t)in->behind));
    json_object_set_new(o, "behind_capped", json_boolean(in->behind_capped));
    json_object_set_new(o, "lag_us", json_integer((json_int_t)in->behind_us));
    json_object_set_new(o, "state", json_string(state_name(in->state)));
    json_object_set_new(o, "last_ack_us", json_integer((json_int_t)in->last_ack_us));
    format_when(when, sizeof when, in->last_ack_us, "");
    json_object_set_new(o, "last_ack", in->last_ack_us ? json_string(when) : json_null());
    json_object_set_new(o, "lease_until_us", json_integer((json_int_t)in->lease_until_us));
    json_object_set_new(o, "acked", json_integer((json_int_t)in->acked));
    json_object_set_new(o, "partitions", json_integer((json_int_t)in->partitions));
    json_object_set_new(o, "members", json_integer((json_int_t)in->members));
    json_object_set_new(o, "group", in->group[0] ? json_string(in->group) : json_null());
    json_object_set_new(o, "parked", json_integer((json_int_t)in->parked));
    return o;
}

#define LIST_HEADER "%-24s %10s %10s %10s %8s %-11s %7s %6s %s\n"

typedef struct list_ctx {
    esrc_ctx *cx;
    bool header; /* printed: only once a row is there, so that an error prints no table */
} list_ctx;

static void list_header(list_ctx *l)
{
    if (!l->cx->json && !l->header)
        printf(LIST_HEADER, "name", "checkpoint", "head", "behind", "lag", "state", "members",
               "parked", "last ack");
    l->header = true;
}

static int print_info_row(const es_sub_info *in, void *payload)
{
    list_ctx *l = payload;
    char behind[32], lag[32], when[64];
    if (l->cx->json) {
        print_json(info_json(in));
        return 0;
    }
    list_header(l);
    format_behind(behind, sizeof behind, in);
    format_lag(lag, sizeof lag, in);
    format_when(when, sizeof when, in->last_ack_us, "never");
    printf("%-24s %10" PRIu64 " %10" PRIu64 " %10s %8s %-11s %7u %6" PRIu64 " %s\n", in->name,
           in->checkpoint, in->head, behind, lag, state_name(in->state), in->members, in->parked,
           when);
    return 0;
}

static int print_partition_row(const es_sub_partition_info *p, void *payload)
{
    char lease[64];
    (void)payload;
    format_when(lease, sizeof lease, p->lease_until_us, "-");
    printf("  %9u %10" PRIu64 " %10" PRIu64 "  %-24s %s\n", p->partition, p->checkpoint, p->behind,
           p->owner[0] ? p->owner : "-", lease);
    return 0;
}

static int partition_json(const es_sub_partition_info *p, void *payload)
{
    json_t *o = json_object();
    json_object_set_new(o, "partition", json_integer(p->partition));
    json_object_set_new(o, "checkpoint", json_integer((json_int_t)p->checkpoint));
    json_object_set_new(o, "behind", json_integer((json_int_t)p->behind));
    json_object_set_new(o, "owner", p->owner[0] ? json_string(p->owner) : json_null());
    json_object_set_new(o, "lease_until_us", json_integer((json_int_t)p->lease_until_us));
    json_array_append_new(payload, o);
    return 0;
}

/* ---- the commands ---- */

/* The one NAME argument of a command. */
static int one_name(const char **name, int argc, char **argv, const char *cmd)
{
    if (argc - optind != 1)
        return usage_error("sub %s needs one NAME", cmd);
    *name = argv[optind];
    return 0;
}

static int sub_create(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS,
                                          {"prefix", required_argument, NULL, 'p'},
                                          {"type", required_argument, NULL, 't'},
                                          {"from", required_argument, NULL, 'f'},
                                          {"batch", required_argument, NULL, 'b'},
                                          {"partitions", required_argument, NULL, 'P'},
                                          {"max-attempts", required_argument, NULL, 'K'},
                                          {"on-poison", required_argument, NULL, 'O'},
                                          {"retry-ms", required_argument, NULL, 'R'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc sub create NAME [--prefix STREAM-PREFIX]... [--type TYPE]...\n"
        "                       [--from beginning|end|POSITION|@TIME] [--batch N]\n"
        "                       [--partitions N] [--max-attempts K] [--on-poison park|stop]\n"
        "                       [--retry-ms MS]\n\n"
        "Create a subscription: a named reader of the global log whose checkpoint\n"
        "is kept in the store.  NAME is 1..64 of A-Z a-z 0-9 . _ -.  It delivers the\n"
        "events of streams with one of the prefixes (none: all) and of one of the\n"
        "types (none: all), up to 16 of each, from the beginning (the default),\n"
        "after the current end, at or after a position, or at or after a commit\n"
        "time: @MICROSECONDS since 1970 or @YYYY-MM-DDTHH:MM:SS[.ffffff]Z (UTC).\n"
        "--batch is the events per batch, 1..10000 (default 100).\n"
        "--partitions splits the events by stream for a consumer group (`sub run\n"
        "--group`), 1..64 (default 1): each partition has its own checkpoint and one\n"
        "member at a time.  An event that fails (an --exec command exiting non-zero,\n"
        "a `fail` line) comes again after MS ms (default 100, doubling up to 30 s);\n"
        "its K-th failure (default 5) parks it (`sub parked`), and the subscription\n"
        "goes on past it (park, the default) or stops before it (stop).\n";
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    const void *prefixes[ES_MAX_SUB_FILTERS];
    size_t prefix_lens[ES_MAX_SUB_FILTERS];
    const char *types[ES_MAX_SUB_FILTERS];
    const char *name = NULL;
    es_store *st;
    es_sub_info info;
    uint64_t v;
    int c, rc = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 'p') {
            if (o.n_prefixes == ES_MAX_SUB_FILTERS)
                return usage_error("sub create: at most %d --prefix", ES_MAX_SUB_FILTERS);
            if (!*optarg || strlen(optarg) > ES_MAX_KEY)
                return usage_error("--prefix must be 1..%d bytes", ES_MAX_KEY);
            prefixes[o.n_prefixes] = optarg;
            prefix_lens[o.n_prefixes++] = strlen(optarg);
        } else if (c == 't') {
            if (o.n_types == ES_MAX_SUB_FILTERS)
                return usage_error("sub create: at most %d --type", ES_MAX_SUB_FILTERS);
            if (!*optarg || strlen(optarg) > ES_MAX_TYPE)
                return usage_error("--type must be 1..%d bytes", ES_MAX_TYPE);
            types[o.n_types++] = optarg;
        } else if (c == 'f') {
            rc = parse_start(&o.start, &o.start_position, &o.start_time_us, optarg, "--from");
        } else if (c == 'b') {
            if ((rc = parse_u64(&v, optarg, "--batch")) == 0 && (v == 0 || v > ES_MAX_BATCH))
                rc = usage_error("--batch must be 1..%d, not %s", ES_MAX_BATCH, optarg);
            o.batch_size = (uint32_t)v;
        } else if (c == 'P') {
            if ((rc = parse_u64(&v, optarg, "--partitions")) == 0 &&
                (v == 0 || v > ES_MAX_SUB_PARTITIONS))
                rc = usage_error("--partitions must be 1..%d, not %s", ES_MAX_SUB_PARTITIONS,
                                 optarg);
            o.partitions = (uint32_t)v;
        } else if (c == 'K') {
            if ((rc = parse_u64(&v, optarg, "--max-attempts")) == 0 && (v == 0 || v > 100))
                rc = usage_error("--max-attempts must be 1..100, not %s", optarg);
            o.max_attempts = (uint32_t)v;
        } else if (c == 'R') {
            if ((rc = parse_u64(&v, optarg, "--retry-ms")) == 0 && (v == 0 || v > 60000))
                rc = usage_error("--retry-ms must be 1..60000, not %s", optarg);
            o.retry_ms = (uint32_t)v;
        } else if (c == 'O') {
            if (strcmp(optarg, "park") == 0)
                o.on_poison = ES_SUB_PARK;
            else if (strcmp(optarg, "stop") == 0)
                o.on_poison = ES_SUB_STOP;
            else
                rc = usage_error("--on-poison must be park or stop, not '%s'", optarg);
        } else {
            return ESRC_USAGE;
        }
        if (rc)
            return rc;
    }
    if ((rc = one_name(&name, argc, argv, "create")))
        return rc;
    o.prefixes = prefixes;
    o.prefix_lens = prefix_lens;
    o.types = types;
    if ((rc = open_store(&st, cx, true, false)))
        return rc;
    if ((rc = es_sub_create(st, name, &o)) < 0 || (rc = es_sub_info_get(&info, st, name)) < 0) {
        rc = sub_error("create", rc);
    } else {
        if (cx->json)
            print_json(json_pack("{s:s,s:I,s:I}", "name", name, "checkpoint",
                                 (json_int_t)info.checkpoint, "head", (json_int_t)info.head));
        else
            printf("created subscription %s at checkpoint %" PRIu64 " (head %" PRIu64 ")\n", name,
                   info.checkpoint, info.head);
        rc = ESRC_OK;
    }
    es_store_close(st);
    return rc;
}

static int sub_list(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc sub list [--json]\n\n"
        "List subscriptions by name with their lag: the checkpoint (the position\n"
        "acknowledged), the log's head, the matching events behind it ('+': more\n"
        "than counted), the time behind (since the commit of the oldest event not\n"
        "acknowledged), the state (idle: no consumer; catching-up; live) and the\n"
        "last acknowledgement.  --json prints one object per subscription.\n";
    es_store *st;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        return ESRC_USAGE;
    }
    if (optind < argc)
        return usage_error("sub list: unexpected argument '%s'", argv[optind]);
    if ((rc = open_store(&st, cx, false, true)))
        return rc;
    list_ctx l = {cx, false};
    if ((rc = es_sub_list(st, print_info_row, &l)) < 0) {
        rc = sub_error("list", rc);
    } else {
        list_header(&l); /* an empty table still has its header */
        rc = ESRC_OK;
    }
    es_store_close(st);
    return rc;
}

static int sub_info(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS, {NULL, 0, NULL, 0}};
    static const char help[] = "usage: esrc sub info NAME [--json]\n\n"
                               "Print the lag and health of one subscription (see `esrc sub "
                               "list --help`),\nits lease and the events it acknowledged.\n";
    const char *name = NULL;
    es_store *st;
    es_sub_info in;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        return ESRC_USAGE;
    }
    if ((rc = one_name(&name, argc, argv, "info")))
        return rc;
    if ((rc = open_store(&st, cx, false, true)))
        return rc;
    if ((rc = es_sub_info_get(&in, st, name)) < 0) {
        rc = sub_error("info", rc);
    } else if (cx->json) {
        json_t *o = info_json(&in);
        json_t *parts = json_array();
        json_object_set_new(o, "partition_list", parts);
        rc = es_sub_partitions(st, name, partition_json, parts);
        if (rc < 0) {
            json_decref(o);
            rc = sub_error("info", rc);
        } else {
            print_json(o);
            rc = ESRC_OK;
        }
    } else {
        char behind[32], lag[32], when[64], lease[64];
        format_behind(behind, sizeof behind, &in);
        format_lag(lag, sizeof lag, &in);
        format_when(when, sizeof when, in.last_ack_us, "never");
        format_when(lease, sizeof lease, in.lease_until_us, "-");
        printf("name         %s\n", in.name);
        printf("checkpoint   %" PRIu64 "\n", in.checkpoint);
        printf("head         %" PRIu64 "\n", in.head);
        printf("behind       %s\n", behind);
        printf("lag          %s\n", lag);
        printf("state        %s\n", state_name(in.state));
        printf("last ack     %s\n", when);
        printf("lease until  %s\n", lease);
        printf("acked        %" PRIu64 "\n", in.acked);
        printf("parked       %" PRIu64 "\n", in.parked);
        if (in.partitions > 1) {
            printf("group        %s\n", in.group[0] ? in.group : "-");
            printf("members      %u\n", in.members);
            printf("partitions   %u\n", in.partitions);
            printf("  %9s %10s %10s  %-24s %s\n", "partition", "checkpoint", "behind", "owner",
                   "lease until");
            rc = es_sub_partitions(st, name, print_partition_row, NULL);
            rc = rc < 0 ? sub_error("info", rc) : ESRC_OK;
        } else {
            rc = ESRC_OK;
        }
    }
    es_store_close(st);
    return rc;
}

static int sub_reset(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {
        COMMON_OPTS, {"to", required_argument, NULL, 't'}, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc sub reset NAME --to beginning|end|POSITION|@TIME\n\n"
        "Move the checkpoint, for a replay or to skip ahead: the next batch starts\n"
        "at the beginning, after the current end, at the first event at or after\n"
        "POSITION, or at the first committed at or after TIME (@MICROSECONDS since\n"
        "1970 or @YYYY-MM-DDTHH:MM:SS[.ffffff]Z).  A running consumer picks it up\n"
        "at its next batch.\n";
    es_sub_start start = ES_SUB_FROM_BEGINNING;
    uint64_t position = 0;
    int64_t time_us = 0;
    bool have_to = false;
    const char *name = NULL;
    es_store *st;
    es_sub_info in;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c != 't')
            return ESRC_USAGE;
        if ((rc = parse_start(&start, &position, &time_us, optarg, "--to")))
            return rc;
        have_to = true;
    }
    if ((rc = one_name(&name, argc, argv, "reset")))
        return rc;
    if (!have_to)
        return usage_error("sub reset needs --to beginning|end|POSITION|@TIME");
    if ((rc = open_store(&st, cx, false, false)))
        return rc;
    if ((rc = es_sub_reset(st, name, start, position, time_us)) < 0 ||
        (rc = es_sub_info_get(&in, st, name)) < 0) {
        rc = sub_error("reset", rc);
    } else {
        if (cx->json)
            print_json(json_pack("{s:s,s:I,s:I,s:I,s:b}", "name", name, "checkpoint",
                                 (json_int_t)in.checkpoint, "head", (json_int_t)in.head, "behind",
                                 (json_int_t)in.behind, "behind_capped", in.behind_capped));
        else
            printf("reset %s to checkpoint %" PRIu64 " (%" PRIu64 "%s behind)\n", name,
                   in.checkpoint, in.behind, in.behind_capped ? "+" : "");
        rc = ESRC_OK;
    }
    es_store_close(st);
    return rc;
}

static int sub_delete(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS, {NULL, 0, NULL, 0}};
    static const char help[] = "usage: esrc sub delete NAME\n\n"
                               "Delete a subscription and its checkpoint.  A consumer that runs "
                               "it stops\nwith an error at its next checkpoint.\n";
    const char *name = NULL;
    es_store *st;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        return ESRC_USAGE;
    }
    if ((rc = one_name(&name, argc, argv, "delete")))
        return rc;
    if ((rc = open_store(&st, cx, false, false)))
        return rc;
    if ((rc = es_sub_delete(st, name)) < 0) {
        rc = sub_error("delete", rc);
    } else {
        if (cx->json)
            print_json(json_pack("{s:s,s:b}", "name", name, "deleted", 1));
        else
            printf("deleted subscription %s\n", name);
        rc = ESRC_OK;
    }
    es_store_close(st);
    return rc;
}

/* ---- parked events ---- */

typedef struct parked_ctx {
    esrc_ctx *cx;
    bool header;
} parked_ctx;

static void parked_header(parked_ctx *c)
{
    if (!c->cx->json && !c->header)
        printf("%10s %9s %8s  %-27s %-5s %s\n", "position", "partition", "attempts", "parked at",
               "retry", "error");
    c->header = true;
}

static int print_parked(const es_sub_parked *p, void *payload)
{
    parked_ctx *pc = payload;
    esrc_ctx *cx = pc->cx;
    char when[64];
    parked_header(pc);
    format_when(when, sizeof when, p->parked_at_us, "-");
    if (cx->json) {
        print_json(json_pack("{s:I,s:i,s:i,s:s,s:I,s:b,s:s}", "position", (json_int_t)p->position,
                             "partition", (int)p->partition, "attempts", (int)p->attempts,
                             "parked_at", when, "parked_at_us", (json_int_t)p->parked_at_us,
                             "retry", p->retry, "error", p->error));
        return 0;
    }
    /* the error is the handler's text: printed as a JSON string, so that no
     * byte of it can drive the terminal */
    json_t *e = json_string(p->error);
    char *es = e ? json_dumps(e, JSON_ENCODE_ANY | JSON_ENSURE_ASCII) : NULL;
    json_decref(e);
    printf("%10" PRIu64 " %9u %8u  %-27s %-5s %s\n", p->position, p->partition, p->attempts, when,
           p->retry ? "yes" : "no", es ? es : "\"?\"");
    free(es);
    return 0;
}

static int sub_parked(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc sub parked NAME [list | retry POSITION|all | drop POSITION|all]\n\n"
        "Events a subscription parked after they failed its last attempt: list them\n"
        "(position, partition, attempts, when, whether a retry is pending, the last\n"
        "error), have one or all delivered once more to the consumer of their\n"
        "partition (retry; a consumer that stopped on one gets it at its next run),\n"
        "or forget them (drop; a subscription stopped on one goes on past it).\n";
    const char *name, *verb = "list";
    uint64_t position = 0;
    es_store *st;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        return ESRC_USAGE;
    }
    int left = argc - optind;
    if (left < 1)
        return usage_error("sub parked needs NAME");
    name = argv[optind];
    if (left >= 2)
        verb = argv[optind + 1];
    bool list = strcmp(verb, "list") == 0;
    bool retry = strcmp(verb, "retry") == 0;
    if (!list && !retry && strcmp(verb, "drop") != 0)
        return usage_error("sub parked: unknown action '%s' (list, retry or drop)", verb);
    if (list && left > 2)
        return usage_error("sub parked %s list: unexpected argument '%s'", name, argv[optind + 2]);
    if (!list) {
        if (left != 3)
            return usage_error("sub parked %s %s needs one POSITION or all", name, verb);
        const char *a = argv[optind + 2];
        if (strcmp(a, "all") != 0 &&
            ((rc = parse_u64(&position, a, "POSITION")) ||
             (position == 0 && (rc = usage_error("POSITION must be 1 or more")))))
            return rc;
    }
    if ((rc = open_store(&st, cx, false, list)))
        return rc;
    if (list) {
        parked_ctx pc = {cx, false};
        if ((rc = es_sub_parked_list(st, name, print_parked, &pc)) == 0)
            parked_header(&pc); /* none parked: still the header */
    } else {
        rc = retry ? es_sub_parked_retry(st, name, position)
                   : es_sub_parked_drop(st, name, position);
        if (rc == 0) {
            if (cx->json)
                print_json(
                    json_pack("{s:s,s:s,s:o}", "name", name, "action", verb, "position",
                              position ? json_integer((json_int_t)position) : json_string("all")));
            else if (position)
                printf("%s parked event %" PRIu64 " of %s\n", retry ? "retrying" : "dropped",
                       position, name);
            else
                printf("%s every parked event of %s\n", retry ? "retrying" : "dropped", name);
        }
    }
    rc = rc < 0 ? sub_error("parked", rc) : ESRC_OK;
    es_store_close(st);
    return rc;
}

/* ---- run ---- */

static volatile sig_atomic_t stop_run;

static void on_stop_signal(int sig)
{
    (void)sig;
    stop_run = 1;
}

/* Returned by a delivery step when the run is to end cleanly (exit 0). */
#define RUN_STOP 100
/* Returned by an --exec delivery whose command failed (r->fail says how). */
#define RUN_FAILED 101

typedef struct run_ctx {
    es_sub *sub;
    const char *exec;
    bool auto_ack;
    int64_t renewed_ms; /* when our lease was last renewed */
    uint64_t acked;     /* the last position acknowledged by this run */
    /* acknowledgements from standard input: bytes read, not yet a line */
    char buf[ACK_LINE_MAX];
    size_t buf_len;
    bool too_long; /* the line being read is over ACK_LINE_MAX: dropped */
    unsigned long line_no;
    char fail[ES_MAX_SUB_ERROR + 1]; /* why the last --exec command failed */
} run_ctx;

/* Renew the lease (es_sub_commit persists the checkpoint and the lease)
 * when half of it passed: a consumer waiting for its reader or its command
 * keeps its subscription. */
static int renew_lease(run_ctx *r)
{
    int rc;
    if (mono_ms() - r->renewed_ms < RUN_LEASE_MS / 2)
        return 0;
    if ((rc = es_sub_commit(r->sub)) < 0)
        return sub_error("run", rc);
    r->renewed_ms = mono_ms();
    return 0;
}

/* The event at `position` failed: the subscription retries it after a
 * backoff, or parks it.  A subscription that stops on poison ends the run. */
static int nack(run_ctx *r, uint64_t position, const char *why)
{
    int rc = es_sub_nack(r->sub, position, why);
    if (rc < 0)
        return sub_error("run", rc);
    r->renewed_ms = mono_ms();
    return 0;
}

static int ack(run_ctx *r, uint64_t position)
{
    int rc = es_sub_ack(r->sub, position);
    if (rc < 0)
        return sub_error("run", rc);
    r->acked = position;
    r->renewed_ms = mono_ms();
    return 0;
}

/* The batch as JSON Lines on standard output. */
static int print_batch(const es_event *const *evs, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        json_t *j = esrc_event_json(evs[i]);
        if (!j) {
            fprintf(stderr, "esrc: sub run: out of memory encoding position %" PRIu64 "\n",
                    evs[i]->position);
            return ESRC_FAIL;
        }
        print_json(j);
    }
    errno = 0;
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "esrc: sub run: writing output: %s\n", strerror(errno ? errno : EIO));
        return ESRC_FAIL;
    }
    return 0;
}

/*
 * One line of standard input, read with read(2) (not stdio, so that poll(2)
 * sees every byte not yet taken).  @return 1 with the line, without its
 * newline, in out; 0 when the lease wants renewing; RUN_STOP at the end of
 * the input (a last line without newline is dropped) or on a stop signal;
 * or an exit code after a message.
 */
static int read_ack_line(run_ctx *r, char out[ACK_LINE_MAX + 1])
{
    for (;;) {
        char *nl = memchr(r->buf, '\n', r->buf_len);
        if (nl) {
            size_t len = (size_t)(nl - r->buf);
            bool dropped = r->too_long;
            memcpy(out, r->buf, len);
            out[len] = 0;
            r->buf_len -= len + 1;
            memmove(r->buf, nl + 1, r->buf_len);
            r->line_no++;
            r->too_long = false;
            if (dropped) {
                fprintf(stderr, "esrc: sub run: acknowledgement line %lu is over %d bytes\n",
                        r->line_no, ACK_LINE_MAX);
                return ESRC_USAGE;
            }
            return 1;
        }
        if (r->buf_len == sizeof r->buf) {
            r->too_long = true;
            r->buf_len = 0;
        }
        if (stop_run)
            return RUN_STOP;
        struct pollfd p = {.fd = STDIN_FILENO, .events = POLLIN};
        int pr = poll(&p, 1, RUN_LEASE_MS / 4);
        if (pr < 0 && errno != EINTR) {
            fprintf(stderr, "esrc: sub run: reading acknowledgements: %s\n", strerror(errno));
            return ESRC_FAIL;
        }
        if (pr <= 0)
            return 0;
        ssize_t got = read(STDIN_FILENO, r->buf + r->buf_len, sizeof r->buf - r->buf_len);
        if (got < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (got < 0) {
            fprintf(stderr, "esrc: sub run: reading acknowledgements: %s\n", strerror(errno));
            return ESRC_FAIL;
        }
        if (got == 0)
            return RUN_STOP;
        r->buf_len += (size_t)got;
    }
}

/* Print the batch, then take acknowledgements from standard input until one
 * covers its last event. */
static int deliver_stdin(run_ctx *r, const es_event *const *evs, size_t n)
{
    uint64_t last = evs[n - 1]->position;
    char line[ACK_LINE_MAX + 1];
    int rc;
    /* after a reset back, the batch starts before what was acknowledged */
    if (r->acked >= evs[0]->position)
        r->acked = evs[0]->position - 1;
    if ((rc = print_batch(evs, n)))
        return rc;
    for (;;) {
        if ((rc = read_ack_line(r, line)) == 0) {
            if ((rc = renew_lease(r)))
                return rc;
            continue;
        }
        if (rc != 1)
            return rc;
        uint64_t pos;
        const char *why;
        int got = esrc_parse_ack_line(&pos, &why, line);
        if (got == 0)
            continue;
        if (got < 0) {
            fprintf(stderr,
                    "esrc: sub run: acknowledgement line %lu: '%s' is not a position (or "
                    "'fail POSITION [MESSAGE]')\n",
                    r->line_no, line);
            return ESRC_USAGE;
        }
        if (got == 2) { /* the reader could not handle it: it comes again, or is parked */
            bool in_batch = false;
            for (size_t i = 0; i < n; i++)
                in_batch |= evs[i]->position == pos;
            if (!in_batch || pos <= r->acked) {
                fprintf(stderr,
                        "esrc: sub run: acknowledgement line %lu: position %" PRIu64
                        " is not an unacknowledged event of this batch\n",
                        r->line_no, pos);
                return ESRC_USAGE;
            }
            if ((rc = nack(r, pos, *why ? why : "failed (a 'fail' line)")))
                return rc;
            r->acked = pos - 1;
            return 0;
        }
        if (pos > last) {
            fprintf(stderr,
                    "esrc: sub run: acknowledgement line %lu: position %" PRIu64
                    " was not delivered (the last delivered is %" PRIu64 ")\n",
                    r->line_no, pos, last);
            return ESRC_USAGE;
        }
        if (pos < r->acked) {
            fprintf(stderr,
                    "esrc: sub run: acknowledgement line %lu: position %" PRIu64
                    " is before the last acknowledged, %" PRIu64 "\n",
                    r->line_no, pos, r->acked);
            return ESRC_USAGE;
        }
        if ((rc = ack(r, pos)))
            return rc;
        if (pos == last)
            return 0;
    }
}

/* Write all of p to the command's stdin (non-blocking, so that the lease is
 * renewed while a slow command reads).  @return 0, 1 when the command closed
 * its input, or an exit code after a message. */
static int feed(run_ctx *r, int fd, const char *p, size_t n)
{
    int rc;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EPIPE)
            return 1;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd q = {.fd = fd, .events = POLLOUT};
            (void)poll(&q, 1, RUN_LEASE_MS / 4);
            if ((rc = renew_lease(r)))
                return rc;
            continue;
        }
        fprintf(stderr, "esrc: sub run: writing to the --exec command: %s\n", strerror(errno));
        return ESRC_FAIL;
    }
    return 0;
}

/* Feed the batch to `sh -c CMD` and acknowledge it when the command exits 0
 * (whether or not it read all of it: its exit status is its answer). */
static int deliver_exec(run_ctx *r, const es_event *const *evs, size_t n)
{
    int fds[2], status = 0, rc = 0;
    pid_t pid;
    fflush(stdout);
    if (pipe2(fds, O_CLOEXEC) < 0 || fcntl(fds[1], F_SETFL, O_NONBLOCK) < 0) {
        fprintf(stderr, "esrc: sub run: a pipe for the --exec command: %s\n", strerror(errno));
        return ESRC_FAIL;
    }
    if ((pid = fork()) < 0) {
        fprintf(stderr, "esrc: sub run: starting the --exec command: %s\n", strerror(errno));
        close(fds[0]);
        close(fds[1]);
        return ESRC_FAIL;
    }
    if (pid == 0) {
        /* dup2 leaves the new stdin open across exec; SIGPIPE is ignored here */
        if (dup2(fds[0], STDIN_FILENO) < 0)
            _exit(127);
        signal(SIGPIPE, SIG_DFL);
        execl("/bin/sh", "sh", "-c", r->exec, (char *)NULL);
        _exit(127);
    }
    close(fds[0]);
    for (size_t i = 0; i < n && rc == 0; i++) {
        json_t *j = esrc_event_json(evs[i]);
        char *s = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
        json_decref(j);
        if (!s) {
            fprintf(stderr, "esrc: sub run: out of memory encoding position %" PRIu64 "\n",
                    evs[i]->position);
            rc = ESRC_FAIL;
            break;
        }
        rc = feed(r, fds[1], s, strlen(s));
        if (rc == 0)
            rc = feed(r, fds[1], "\n", 1);
        free(s);
    }
    if (rc == 1) /* the command stopped reading: its exit status decides */
        rc = 0;
    close(fds[1]);
    /* wait for it, renewing the lease meanwhile; a stop signal waits too */
    for (int nap_ms = 1;;) {
        pid_t w = waitpid(pid, &status, WNOHANG);
        if (w == pid)
            break;
        if (w < 0 && errno != EINTR) {
            fprintf(stderr, "esrc: sub run: waiting for the --exec command: %s\n", strerror(errno));
            return ESRC_FAIL;
        }
        struct timespec ts = {0, nap_ms * 1000000L};
        nanosleep(&ts, NULL);
        if (nap_ms < 20)
            nap_ms *= 2;
        if (rc == 0)
            rc = renew_lease(r);
    }
    if (rc)
        return rc;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return ack(r, evs[n - 1]->position);
    if (stop_run) /* interrupted with its command: the batch comes again next time */
        return RUN_STOP;
    if (WIFEXITED(status))
        snprintf(r->fail, sizeof r->fail, "the --exec command exited with status %d",
                 WEXITSTATUS(status));
    else
        snprintf(r->fail, sizeof r->fail, "the --exec command was killed by signal %d",
                 WTERMSIG(status));
    return RUN_FAILED;
}

/* A batch for --exec: when the command fails it, the events go one at a
 * time to find the one that fails (those before it are acknowledged), and
 * that one is handed back to the subscription's retry and parking. */
static int deliver_exec_batch(run_ctx *r, const es_event *const *evs, size_t n)
{
    int rc = deliver_exec(r, evs, n);
    size_t bad = 0;
    if (rc == RUN_FAILED && n > 1)
        for (bad = 0; bad < n; bad++)
            if ((rc = deliver_exec(r, evs + bad, 1)) != 0)
                break;
    if (rc != RUN_FAILED)
        return rc;
    fprintf(stderr,
            "esrc: sub run: %s at position %" PRIu64 "; it comes again after a backoff and is "
            "parked after the subscription's last attempt\n",
            r->fail, evs[bad]->position);
    return nack(r, evs[bad]->position, r->fail);
}

static int sub_run(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS,
                                          {"auto-ack", no_argument, NULL, 'a'},
                                          {"exec", required_argument, NULL, 'x'},
                                          {"limit", required_argument, NULL, 'l'},
                                          {"timeout-ms", required_argument, NULL, 'T'},
                                          {"group", required_argument, NULL, 'g'},
                                          {"member", required_argument, NULL, 'm'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc sub run NAME [--auto-ack | --exec CMD] [--limit N] [--timeout-ms N]\n"
        "                    [--group G [--member LABEL]]\n\n"
        "Consume a subscription: deliver its events after the checkpoint in batches,\n"
        "catching up and then live, and move the checkpoint as they are acknowledged:\n"
        "  (default)    print each batch as JSON Lines (the shape of `esrc log --json`)\n"
        "               and read acknowledgements on standard input, one position a\n"
        "               line, each acknowledging every event up to it; the next batch\n"
        "               comes when the last event of this one is acknowledged;\n"
        "               `fail POSITION [MESSAGE]` says that event failed (those before\n"
        "               it are acknowledged): it comes again, or is parked\n"
        "  --auto-ack   print each batch and acknowledge it at once\n"
        "  --exec CMD   run `sh -c CMD` for each batch with the batch on its standard\n"
        "               input; exit status 0 acknowledges it; when it fails, the events\n"
        "               go one at a time to find the one that fails, which is retried\n"
        "               after a backoff and parked after the subscription's last\n"
        "               attempt (see `sub create --help`)\n"
        "Delivery is at least once: events not acknowledged come again at the next\n"
        "run, so use the position as an idempotence key.  The run stops cleanly, with\n"
        "the checkpoint committed, on Ctrl-C or SIGTERM (after the batch in hand), at\n"
        "the end of standard input (default mode), after N events (--limit), or when\n"
        "nothing new arrives for N ms (--timeout-ms).  One consumer at a time: exit 3\n"
        "while another holds the subscription.  With --group G it joins the\n"
        "subscription's consumer group G instead: the members split its partitions\n"
        "(`sub create --partitions`), each stream going to one member, and take over\n"
        "the partitions of a member that stops or dies (after its 10 s lease).\n"
        "--member labels this consumer in `sub info` (default HOST:PID).\n";
    run_ctx *r = NULL;
    uint64_t limit = 0, delivered = 0, v;
    int64_t timeout_ms = -1;
    bool auto_ack = false;
    const char *exec = NULL, *name = NULL, *group = NULL, *member = NULL;
    es_store *st = NULL;
    es_sub *sub = NULL;
    int c, rc = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 'a') {
            auto_ack = true;
        } else if (c == 'x') {
            exec = optarg;
            if (!*exec)
                return usage_error("--exec needs a command");
        } else if (c == 'l') {
            if ((rc = parse_u64(&limit, optarg, "--limit")) == 0 && limit == 0)
                rc = usage_error("--limit must be 1 or more");
        } else if (c == 'T') {
            if ((rc = parse_u64(&v, optarg, "--timeout-ms")) == 0 && v > 86400000)
                rc = usage_error("--timeout-ms must be 0..86400000, not %s", optarg);
            timeout_ms = (int64_t)v;
        } else if (c == 'g') {
            group = optarg;
        } else if (c == 'm') {
            member = optarg;
        } else {
            return ESRC_USAGE;
        }
        if (rc)
            return rc;
    }
    if ((rc = one_name(&name, argc, argv, "run")))
        return rc;
    if (auto_ack && exec)
        return usage_error("sub run: --auto-ack and --exec do not go together");
    if (member && !group)
        return usage_error("sub run: --member needs --group");
    if ((rc = open_store(&st, cx, false, false)))
        return rc;
    es_sub_open_options oo = ES_SUB_OPEN_OPTIONS_INIT;
    oo.lease_ms = RUN_LEASE_MS;
    oo.group = group;
    oo.member = member;
    if ((rc = es_sub_open(&sub, st, name, &oo)) < 0) {
        rc = sub_error("run", rc);
        goto done;
    }
    if (!(r = calloc(1, sizeof *r))) {
        fprintf(stderr, "esrc: sub run: out of memory\n");
        rc = ESRC_FAIL;
        goto done;
    }
    r->sub = sub;
    r->exec = exec;
    r->auto_ack = auto_ack;
    r->renewed_ms = mono_ms();

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal; /* no SA_RESTART: a wait returns at once */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a reader that went away is a write error, and a clean stop */

    int64_t idle_deadline = timeout_ms >= 0 ? mono_ms() + timeout_ms : 0;
    while (!stop_run && (!limit || delivered < limit)) {
        const es_event *const *evs;
        size_t n;
        int slice = RUN_SLICE_MS;
        if (timeout_ms >= 0) {
            int64_t left = idle_deadline - mono_ms();
            slice = left < 0 ? 0 : left < slice ? (int)left : slice;
        }
        rc = es_sub_next(&evs, &n, sub, slice);
        if (rc == ES_ETIMEDOUT) {
            rc = 0;
            if (timeout_ms >= 0 && mono_ms() >= idle_deadline)
                break;
            continue;
        }
        if (rc < 0) {
            rc = sub_error("run", rc);
            break;
        }
        r->renewed_ms = mono_ms();
        if (limit && n > limit - delivered)
            n = (size_t)(limit - delivered); /* the rest comes again next time */
        if (exec)
            rc = deliver_exec_batch(r, evs, n);
        else if (auto_ack)
            rc = (rc = print_batch(evs, n)) ? rc : ack(r, evs[n - 1]->position);
        else
            rc = deliver_stdin(r, evs, n);
        if (rc == RUN_STOP) {
            rc = 0;
            break;
        }
        if (rc)
            break;
        delivered += n;
        if (timeout_ms >= 0)
            idle_deadline = mono_ms() + timeout_ms;
    }
    /* a clean stop: the acknowledged checkpoint is written, the lease given back */
    int crc = es_sub_commit(sub);
    if (crc < 0 && rc == 0)
        rc = sub_error("run", crc);
done:
    es_sub_close(sub);
    free(r);
    es_store_close(st);
    return rc;
}

/* ---- esrc sub COMMAND ---- */

typedef struct subcommand {
    const char *name;
    int (*run)(esrc_ctx *cx, int argc, char **argv);
    const char *help;
} subcommand;

static const subcommand subcommands[] = {
    {"create", sub_create, "create a subscription (filters, start, batch size)"},
    {"list", sub_list, "list subscriptions with their lag"},
    {"info", sub_info, "print one subscription's lag and health"},
    {"reset", sub_reset, "move a subscription's checkpoint (a replay)"},
    {"delete", sub_delete, "delete a subscription"},
    {"run", sub_run, "consume a subscription: JSON Lines out, acknowledgements in"},
    {"parked", sub_parked, "list, retry or drop the events a subscription parked"},
};

int esrc_sub(esrc_ctx *cx, int argc, char **argv)
{
    const subcommand *sc = NULL;
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        printf("usage: esrc sub COMMAND [ARGS]\n\n"
               "Subscriptions: named, durable consumers of the global log, whose\n"
               "checkpoint is kept in the store.\n\nCommands:\n");
        for (size_t i = 0; i < sizeof subcommands / sizeof *subcommands; i++)
            printf("  %-7s %s\n", subcommands[i].name, subcommands[i].help);
        printf("\n`esrc sub COMMAND --help` describes a command.\n");
        return ESRC_OK;
    }
    if (argc < 2)
        return usage_error("sub needs a command: create, list, info, reset, delete, run or parked");
    for (size_t i = 0; i < sizeof subcommands / sizeof *subcommands; i++)
        if (strcmp(argv[1], subcommands[i].name) == 0)
            sc = &subcommands[i];
    if (!sc)
        return usage_error("sub: unknown command '%s'", argv[1]);
    /* The command sees "sub NAME" as its argv[0], for its messages. */
    char label[32];
    char **args = malloc((size_t)argc * sizeof *args);
    if (!args) {
        fprintf(stderr, "esrc: sub: out of memory\n");
        return ESRC_FAIL;
    }
    snprintf(label, sizeof label, "sub %s", sc->name);
    args[0] = label;
    for (int i = 2; i < argc; i++)
        args[i - 1] = argv[i];
    args[argc - 1] = NULL;
    current_argv = args;
    int rc = sc->run(cx, argc - 1, args);
    free(args);
    return rc;
}
