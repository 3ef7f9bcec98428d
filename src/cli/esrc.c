/*
 * esrc.c — the eventsrc command line, a client of the public API only.
 *
 *   esrc [--store URI] [--json] COMMAND [ARGS]
 *
 * The store is --store, else $ESRC_STORE, else lmdb:./eventsrc.db.  Output
 * is a readable table, or JSON Lines with --json.  Exit status: 0 ok, 1
 * error, 2 usage or bad input, 3 conflict (--expect), 4 verification failed.
 * Bad input gives one line on stderr and writes nothing.
 */
#define _GNU_SOURCE
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef ES_HAVE_LMDB
#define ESRC_DEFAULT_STORE "lmdb:./eventsrc.db"
#else
#define ESRC_DEFAULT_STORE "mem:"
#endif

typedef struct esrc_ctx {
    const char *store_uri;
    int json;
    int64_t fake_now; /* ESRC_CLOCK_START_US: a fake clock, for reproducible output */
} esrc_ctx;

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "esrc: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (see --help)\n");
    return ESRC_USAGE;
}

static int lib_error(const char *what, int rc)
{
    const char *detail = es_error_last();
    fprintf(stderr, "esrc: %s: %s%s%s\n", what, es_strerror(rc), *detail ? ": " : "", detail);
    return rc == ES_ECONFLICT                         ? ESRC_CONFLICT
           : rc == ES_EINVAL || rc == ES_ETOOBIG || rc == ES_EDUPLICATE ? ESRC_USAGE
                                                      : ESRC_FAIL;
}

static int64_t fake_clock(void *payload)
{
    esrc_ctx *cx = payload;
    cx->fake_now += 1000000;
    return cx->fake_now;
}

/* Open the store; `create` lets a missing lmdb store be made. */
static int open_store(es_store **st, esrc_ctx *cx, bool create, bool readonly)
{
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    int rc;
    if (!create)
        o.flags |= ES_OPEN_NOCREATE;
    if (readonly && !create)
        o.flags |= ES_OPEN_READONLY;
    if (cx->fake_now) {
        o.clock = fake_clock;
        o.clock_payload = cx;
    }
    if ((rc = es_store_open(st, cx->store_uri, &o)) < 0)
        return lib_error(cx->store_uri, rc);
    return 0;
}

/* ---- options common to every command ---- */

/* The command's argv, for messages about its options (getopt's own are off). */
static char **current_argv;

#define COMMON_OPTS                                                                              \
    {"help", no_argument, NULL, 'h'}, {"store", required_argument, NULL, 'S'},                   \
        {"json", no_argument, NULL, 'J'}

static int common_opt(esrc_ctx *cx, int c, const char *help)
{
    switch (c) {
    case 'h':
        fputs(help, stdout);
        return 100;
    case 'S':
        cx->store_uri = optarg;
        return ESRC_OK;
    case 'J':
        cx->json = 1;
        return ESRC_OK;
    case '?':
        usage_error("%s: unknown option '%s'", current_argv[0], current_argv[optind - 1]);
        return ESRC_USAGE;
    case ':':
        usage_error("%s: '%s' needs a value", current_argv[0], current_argv[optind - 1]);
        return ESRC_USAGE;
    default:
        return -1;
    }
}

/* Used inside a getopt loop: `continue`s past a common option. */
#define HANDLE_COMMON(cx, c, help)                                                               \
    {                                                                                            \
        int r_ = common_opt(cx, c, help);                                                        \
        if (r_ == 100)                                                                           \
            return ESRC_OK;                                                                      \
        if (r_ == ESRC_USAGE)                                                                    \
            return ESRC_USAGE;                                                                   \
        if (r_ == ESRC_OK)                                                                       \
            continue;                                                                            \
    }

static int parse_u64(uint64_t *out, const char *s, const char *what)
{
    char *end;
    errno = 0;
    if (!*s || *s == '-')
        return usage_error("%s must be a non-negative integer, not '%s'", what, s);
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end)
        return usage_error("%s must be a non-negative integer, not '%s'", what, s);
    *out = v;
    return 0;
}

/* ---- output helpers ---- */

static void format_time_us(char *out, size_t cap, int64_t us)
{
    time_t s = (time_t)(us / 1000000);
    int64_t frac = us % 1000000;
    if (frac < 0) {
        frac += 1000000;
        s--;
    }
    struct tm tm;
    gmtime_r(&s, &tm);
    size_t n = strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, cap - n, ".%06lldZ", (long long)frac);
}

static bool is_utf8_text(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] == 0)
            return false;
    json_t *j = json_stringn((const char *)p, n); /* NULL unless valid UTF-8 */
    if (!j)
        return false;
    json_decref(j);
    return true;
}

/* A bytes field as JSON: a string when it is UTF-8 text, else base64 under name_b64. */
static int set_bytes(json_t *obj, const char *name, const uint8_t *p, size_t n)
{
    if (is_utf8_text(p, n))
        return json_object_set_new(obj, name, json_stringn((const char *)p, n));
    size_t cap = sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL);
    char *b = malloc(cap);
    char key[32];
    if (!b)
        return -1;
    sodium_bin2base64(b, cap, p, n, sodium_base64_VARIANT_ORIGINAL);
    snprintf(key, sizeof key, "%s_b64", name);
    int rc = json_object_set_new(obj, key, json_string(b));
    free(b);
    return rc;
}

static void hex(char *out, const uint8_t *p, size_t n)
{
    sodium_bin2hex(out, n * 2 + 1, p, n);
}

static json_t *event_json(const es_event *ev)
{
    char idh[ES_ID_SIZE * 2 + 1], hh[ES_HASH_SIZE * 2 + 1], when[40];
    json_t *o = json_object();
    if (!o)
        return NULL;
    hex(idh, ev->id, ES_ID_SIZE);
    hex(hh, ev->hash, ES_HASH_SIZE);
    format_time_us(when, sizeof when, ev->time_us);
    set_bytes(o, "stream", ev->stream, ev->stream_len);
    json_object_set_new(o, "seq", json_integer((json_int_t)ev->seq));
    json_object_set_new(o, "position", json_integer((json_int_t)ev->position));
    json_object_set_new(o, "time_us", json_integer((json_int_t)ev->time_us));
    json_object_set_new(o, "time", json_string(when));
    json_object_set_new(o, "id", json_string(idh));
    json_object_set_new(o, "type", json_stringn(ev->type, ev->type_len));
    set_bytes(o, "data", ev->data, ev->data_len);
    set_bytes(o, "meta", ev->meta, ev->meta_len);
    json_object_set_new(o, "hash", json_string(hh));
    return o;
}

static void print_json(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII * 0);
    if (s) {
        puts(s);
        free(s);
    }
    json_decref(o);
}

/* A short, printable rendering of bytes for tables. */
static void show_bytes(char *out, size_t cap, const uint8_t *p, size_t n)
{
    if (!is_utf8_text(p, n)) {
        snprintf(out, cap, "<%zu bytes>", n);
        return;
    }
    size_t w = 0;
    for (size_t i = 0; i < n && w + 4 < cap; i++) {
        unsigned char ch = p[i];
        out[w++] = (ch == '\n' || ch == '\t' || ch == '\r') ? ' ' : (char)ch;
    }
    if (w + 4 >= cap && n > w) {
        /* cut on a UTF-8 boundary and mark it */
        while (w > 0 && ((unsigned char)out[w - 1] & 0xC0) == 0x80)
            w--;
        if (w > 0 && ((unsigned char)out[w - 1] & 0xC0) == 0xC0)
            w--;
        out[w++] = '.';
        out[w++] = '.';
        out[w++] = '.';
    }
    out[w] = 0;
}

static void print_event_row(const es_event *ev, bool with_stream)
{
    char when[40], data[84], stream[72];
    format_time_us(when, sizeof when, ev->time_us);
    show_bytes(data, sizeof data, ev->data, ev->data_len);
    if (with_stream) {
        show_bytes(stream, sizeof stream, ev->stream, ev->stream_len);
        printf("%-9" PRIu64 " %-20s %-6" PRIu64 " %-27s %-20s %s\n", ev->position, stream, ev->seq,
               when, ev->type, data);
    } else {
        printf("%-6" PRIu64 " %-9" PRIu64 " %-27s %-20s %s\n", ev->seq, ev->position, when, ev->type,
               data);
    }
}

/* ---- reading input ---- */

static int read_all(FILE *f, es_buf *out)
{
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) {
        if (es_buf_put(out, chunk, n) < 0)
            return lib_error("reading input", es_error_last_code());
    }
    if (ferror(f)) {
        fprintf(stderr, "esrc: reading input: %s\n", strerror(errno));
        return ESRC_FAIL;
    }
    return 0;
}

static int parse_expect(uint64_t *out, const char *s)
{
    if (strcmp(s, "any") == 0)
        *out = ES_EXPECT_ANY;
    else if (strcmp(s, "exists") == 0)
        *out = ES_EXPECT_EXISTS;
    else if (strcmp(s, "no-stream") == 0)
        *out = ES_EXPECT_NO_STREAM;
    else {
        uint64_t v;
        if (parse_u64(&v, s, "--expect") != 0)
            return ESRC_USAGE;
        if (v >= ES_SEQ_MAX)
            return usage_error("--expect %s is out of range", s);
        *out = v;
    }
    return 0;
}

static int parse_id(uint8_t out[ES_ID_SIZE], const char *s)
{
    size_t n = 0;
    if (strlen(s) != ES_ID_SIZE * 2 ||
        sodium_hex2bin(out, ES_ID_SIZE, s, strlen(s), NULL, &n, NULL) != 0 || n != ES_ID_SIZE)
        return usage_error("an event id is 32 hex digits, not '%s'", s);
    return 0;
}

/* ---- commands ---- */

static int cmd_init(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS, {NULL, 0, NULL, 0}};
    static const char help[] = "usage: esrc init [--store URI]\n\n"
                               "Create the store if it does not exist.\n";
    es_store *st;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        return ESRC_USAGE;
    }
    if (optind < argc)
        return usage_error("init: unexpected argument '%s'", argv[optind]);
    if ((rc = open_store(&st, cx, true, false)))
        return rc;
    if (cx->json) {
        json_t *o = json_pack("{s:s,s:s}", "store", cx->store_uri, "kind", es_store_kind(st));
        print_json(o);
    } else {
        printf("initialised %s\n", cx->store_uri);
    }
    es_store_close(st);
    return ESRC_OK;
}

static int cmd_append(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS,
                                          {"expect", required_argument, NULL, 'e'},
                                          {"meta", required_argument, NULL, 'm'},
                                          {"id", required_argument, NULL, 'i'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc append [--expect any|exists|no-stream|SEQ] [--meta TEXT] [--id HEX]\n"
        "                   STREAM TYPE [DATA]\n\n"
        "Append one event.  DATA is the argument, or standard input when it is\n"
        "absent or '-'.  --expect makes the append conditional (exit 3 when the\n"
        "stream is not in that state); --id makes a retry safe.\n";
    uint64_t expected = ES_EXPECT_ANY;
    uint8_t id[ES_ID_SIZE];
    bool have_id = false;
    const char *meta = NULL;
    es_buf data = ES_BUF_INIT;
    es_store *st = NULL;
    int c, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 'e') {
            if ((rc = parse_expect(&expected, optarg)))
                return rc;
        } else if (c == 'm') {
            meta = optarg;
        } else if (c == 'i') {
            if ((rc = parse_id(id, optarg)))
                return rc;
            have_id = true;
        } else {
            return ESRC_USAGE;
        }
    }
    int nargs = argc - optind;
    if (nargs < 2 || nargs > 3)
        return usage_error("append needs STREAM TYPE [DATA]");
    const char *stream = argv[optind], *type = argv[optind + 1];
    if (strlen(stream) == 0 || strlen(stream) > ES_MAX_KEY)
        return usage_error("stream key must be 1..%d bytes (it is %zu)", ES_MAX_KEY, strlen(stream));
    if (strlen(type) == 0 || strlen(type) > ES_MAX_TYPE)
        return usage_error("type name must be 1..%d bytes (it is %zu)", ES_MAX_TYPE, strlen(type));
    if (nargs == 3 && strcmp(argv[optind + 2], "-") != 0) {
        if (es_buf_put(&data, argv[optind + 2], strlen(argv[optind + 2])) < 0)
            return lib_error("append", es_error_last_code());
    } else if ((rc = read_all(stdin, &data))) {
        es_buf_free(&data);
        return rc;
    }
    es_event_new ev = {.type = type, .data = data.data, .data_len = data.len,
                       .meta = meta, .meta_len = meta ? strlen(meta) : 0,
                       .id = have_id ? id : NULL};
    es_append_result r;
    if ((rc = open_store(&st, cx, true, false)))
        goto done;
    rc = es_append(&r, st, stream, strlen(stream), expected, &ev, 1);
    if (rc == ES_ECONFLICT) {
        fprintf(stderr, "esrc: append: conflict: stream %s is at seq %" PRIu64 "\n", stream, r.head);
        rc = ESRC_CONFLICT;
        goto done;
    }
    if (rc) {
        rc = lib_error("append", rc);
        goto done;
    }
    if (cx->json) {
        json_t *o = json_object();
        json_object_set_new(o, "stream", json_string(stream));
        json_object_set_new(o, "seq", json_integer((json_int_t)r.first_seq));
        json_object_set_new(o, "position", json_integer((json_int_t)r.first_position));
        json_object_set_new(o, "time_us", json_integer((json_int_t)r.time_us));
        json_object_set_new(o, "replayed", json_boolean(r.replayed));
        print_json(o);
    } else {
        printf("appended %s seq %" PRIu64 " at position %" PRIu64 "%s\n", stream, r.first_seq,
               r.first_position, r.replayed ? " (a retry: already there, nothing written)" : "");
    }
done:
    es_store_close(st);
    es_buf_free(&data);
    return rc;
}

static int cmd_read(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS,
                                          {"from", required_argument, NULL, 'f'},
                                          {"to", required_argument, NULL, 't'},
                                          {"limit", required_argument, NULL, 'l'},
                                          {"backward", no_argument, NULL, 'b'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc read [--from SEQ] [--to SEQ] [--backward] [--limit N] STREAM\n\n"
        "Print a stream's events (oldest first, or newest first with --backward).\n";
    es_read_options o = ES_READ_OPTIONS_INIT;
    es_store *st;
    es_cursor *cur;
    const es_event *ev;
    int c, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 'f')
            rc = parse_u64(&o.from_seq, optarg, "--from");
        else if (c == 't')
            rc = parse_u64(&o.to_seq, optarg, "--to");
        else if (c == 'l')
            rc = parse_u64(&o.limit, optarg, "--limit");
        else if (c == 'b')
            rc = 0, o.backward = 1;
        else
            return ESRC_USAGE;
        if (rc)
            return rc;
    }
    if (argc - optind != 1)
        return usage_error("read needs one STREAM");
    const char *stream = argv[optind];
    if (strlen(stream) == 0 || strlen(stream) > ES_MAX_KEY)
        return usage_error("stream key must be 1..%d bytes (it is %zu)", ES_MAX_KEY, strlen(stream));
    if ((rc = open_store(&st, cx, false, true)))
        return rc;
    if ((rc = es_stream_cursor(&cur, st, stream, strlen(stream), &o)) < 0) {
        rc = lib_error("read", rc);
        es_store_close(st);
        return rc;
    }
    if (!cx->json)
        printf("%-6s %-9s %-27s %-20s %s\n", "seq", "position", "time", "type", "data");
    while ((rc = es_cursor_next(&ev, cur)) == 0) {
        if (cx->json)
            print_json(event_json(ev));
        else
            print_event_row(ev, false);
    }
    rc = rc == ES_ITEROVER ? ESRC_OK : lib_error("read", rc);
    es_cursor_free(cur);
    es_store_close(st);
    return rc;
}

static volatile sig_atomic_t stop_following;
static void on_signal(int sig)
{
    (void)sig;
    stop_following = 1;
}

static int cmd_log(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS,
                                          {"from", required_argument, NULL, 'f'},
                                          {"prefix", required_argument, NULL, 'p'},
                                          {"type", required_argument, NULL, 't'},
                                          {"limit", required_argument, NULL, 'l'},
                                          {"follow", no_argument, NULL, 'F'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc log [--from POSITION] [--prefix STREAM-PREFIX] [--type TYPE]\n"
        "                [--limit N] [--follow]\n\n"
        "Print the global log in commit order.  --follow keeps waiting for new\n"
        "events until interrupted.\n";
    es_log_options o = ES_LOG_OPTIONS_INIT;
    bool follow = false;
    es_store *st;
    es_cursor *cur;
    const es_event *ev;
    int c, rc = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 'f')
            rc = parse_u64(&o.from_position, optarg, "--from");
        else if (c == 'p') {
            o.prefix = optarg;
            o.prefix_len = strlen(optarg);
            if (o.prefix_len > ES_MAX_KEY)
                return usage_error("--prefix is over %d bytes", ES_MAX_KEY);
        } else if (c == 't') {
            o.type = optarg;
            if (!*optarg || strlen(optarg) > ES_MAX_TYPE)
                return usage_error("--type must be 1..%d bytes", ES_MAX_TYPE);
        } else if (c == 'l')
            rc = parse_u64(&o.limit, optarg, "--limit");
        else if (c == 'F')
            follow = true;
        else
            return ESRC_USAGE;
        if (rc)
            return rc;
    }
    if (optind < argc)
        return usage_error("log: unexpected argument '%s'", argv[optind]);
    if ((rc = open_store(&st, cx, false, true)))
        return rc;
    if ((rc = es_log_cursor(&cur, st, &o)) < 0) {
        rc = lib_error("log", rc);
        es_store_close(st);
        return rc;
    }
    if (follow) {
        signal(SIGINT, on_signal);
        signal(SIGTERM, on_signal);
    }
    if (!cx->json)
        printf("%-9s %-20s %-6s %-27s %-20s %s\n", "position", "stream", "seq", "time", "type",
               "data");
    for (;;) {
        while ((rc = es_cursor_next(&ev, cur)) == 0) {
            if (cx->json)
                print_json(event_json(ev));
            else
                print_event_row(ev, true);
        }
        if (rc != ES_ITEROVER || !follow || stop_following)
            break;
        if (o.limit) {
            /* a limit counts across the follow; stop when reached */
            break;
        }
        fflush(stdout);
        struct timespec ts = {0, 100 * 1000000L};
        nanosleep(&ts, NULL);
        if (stop_following)
            break;
    }
    rc = rc == ES_ITEROVER || rc == 0 ? ESRC_OK : lib_error("log", rc);
    es_cursor_free(cur);
    es_store_close(st);
    return rc;
}

typedef struct list_ctx {
    esrc_ctx *cx;
    uint64_t n;
} list_ctx;

static int print_stream(const uint8_t *k, size_t len, uint64_t head, void *payload)
{
    list_ctx *l = payload;
    if (l->cx->json) {
        json_t *o = json_object();
        set_bytes(o, "stream", k, len);
        json_object_set_new(o, "head", json_integer((json_int_t)head));
        print_json(o);
    } else {
        char s[260];
        show_bytes(s, sizeof s, k, len);
        printf("%-40s %" PRIu64 "\n", s, head);
    }
    l->n++;
    return 0;
}

static int cmd_streams(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {
        COMMON_OPTS, {"prefix", required_argument, NULL, 'p'}, {NULL, 0, NULL, 0}};
    static const char help[] = "usage: esrc streams [--prefix PREFIX]\n\n"
                               "List streams (in key order) with their heads.\n";
    const char *prefix = NULL;
    es_store *st;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 'p')
            prefix = optarg;
        else
            return ESRC_USAGE;
    }
    if (optind < argc)
        return usage_error("streams: unexpected argument '%s'", argv[optind]);
    if (prefix && strlen(prefix) > ES_MAX_KEY)
        return usage_error("--prefix is over %d bytes", ES_MAX_KEY);
    if ((rc = open_store(&st, cx, false, true)))
        return rc;
    list_ctx l = {cx, 0};
    if (!cx->json)
        printf("%-40s %s\n", "stream", "head");
    rc = es_streams(st, prefix, prefix ? strlen(prefix) : 0, print_stream, &l);
    rc = rc ? lib_error("streams", rc) : ESRC_OK;
    es_store_close(st);
    return rc;
}

static int cmd_head(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS, {NULL, 0, NULL, 0}};
    static const char help[] = "usage: esrc head STREAM\n\n"
                               "Print the stream's last seq (0 when it has no events).\n";
    es_store *st;
    uint64_t h;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        return ESRC_USAGE;
    }
    if (argc - optind != 1)
        return usage_error("head needs one STREAM");
    const char *stream = argv[optind];
    if (strlen(stream) == 0 || strlen(stream) > ES_MAX_KEY)
        return usage_error("stream key must be 1..%d bytes (it is %zu)", ES_MAX_KEY, strlen(stream));
    if ((rc = open_store(&st, cx, false, true)))
        return rc;
    if ((rc = es_stream_head(&h, st, stream, strlen(stream))) < 0) {
        rc = lib_error("head", rc);
    } else {
        if (cx->json) {
            json_t *o = json_object();
            json_object_set_new(o, "stream", json_string(stream));
            json_object_set_new(o, "head", json_integer((json_int_t)h));
            print_json(o);
        } else {
            printf("%" PRIu64 "\n", h);
        }
        rc = ESRC_OK;
    }
    es_store_close(st);
    return rc;
}

static int cmd_stats(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS, {NULL, 0, NULL, 0}};
    static const char help[] = "usage: esrc stats\n\nPrint counts and sizes of the store.\n";
    es_store *st;
    es_store_stats s;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        return ESRC_USAGE;
    }
    if (optind < argc)
        return usage_error("stats: unexpected argument '%s'", argv[optind]);
    if ((rc = open_store(&st, cx, false, true)))
        return rc;
    if ((rc = es_store_stats_get(&s, st)) < 0) {
        rc = lib_error("stats", rc);
    } else {
        if (cx->json) {
            json_t *o = json_object();
            json_object_set_new(o, "kind", json_string(es_store_kind(st)));
            json_object_set_new(o, "events", json_integer((json_int_t)s.events));
            json_object_set_new(o, "streams", json_integer((json_int_t)s.streams));
            json_object_set_new(o, "last_position", json_integer((json_int_t)s.last_position));
            json_object_set_new(o, "snapshots", json_integer((json_int_t)s.snapshots));
            json_object_set_new(o, "bytes", json_integer((json_int_t)s.bytes));
            print_json(o);
        } else {
            printf("kind           %s\n", es_store_kind(st));
            printf("events         %" PRIu64 "\n", s.events);
            printf("streams        %" PRIu64 "\n", s.streams);
            printf("last position  %" PRIu64 "\n", s.last_position);
            printf("snapshots      %" PRIu64 "\n", s.snapshots);
            printf("bytes          %" PRIu64 "\n", s.bytes);
        }
        rc = ESRC_OK;
    }
    es_store_close(st);
    return rc;
}

static int cmd_verify(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc verify [STREAM]\n\n"
        "Recompute the hash chains (of one stream, or of the whole store) and check\n"
        "that seqs have no gaps.  Exit 4 and name the first bad event on mismatch.\n";
    es_store *st;
    es_verify_result v;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        return ESRC_USAGE;
    }
    if (argc - optind > 1)
        return usage_error("verify takes at most one STREAM");
    const char *stream = optind < argc ? argv[optind] : NULL;
    if (stream && (strlen(stream) == 0 || strlen(stream) > ES_MAX_KEY))
        return usage_error("stream key must be 1..%d bytes (it is %zu)", ES_MAX_KEY, strlen(stream));
    if ((rc = open_store(&st, cx, false, true)))
        return rc;
    if ((rc = es_verify(&v, st, stream, stream ? strlen(stream) : 0)) < 0) {
        rc = lib_error("verify", rc);
        es_store_close(st);
        return rc;
    }
    char bad[300];
    show_bytes(bad, sizeof bad, v.bad_stream, v.bad_stream_len);
    if (cx->json) {
        json_t *o = json_object();
        json_object_set_new(o, "ok", json_boolean(v.ok));
        json_object_set_new(o, "events", json_integer((json_int_t)v.events_checked));
        json_object_set_new(o, "streams", json_integer((json_int_t)v.streams_checked));
        if (!v.ok) {
            set_bytes(o, "stream", v.bad_stream, v.bad_stream_len);
            json_object_set_new(o, "seq", json_integer((json_int_t)v.bad_seq));
            json_object_set_new(o, "position", json_integer((json_int_t)v.bad_position));
            json_object_set_new(o, "reason", json_string(v.reason));
        }
        print_json(o);
    } else if (v.ok) {
        printf("ok: %" PRIu64 " events in %" PRIu64 " streams verified\n", v.events_checked,
               v.streams_checked);
    } else {
        printf("FAILED: stream %s seq %" PRIu64 " position %" PRIu64 ": %s\n", bad, v.bad_seq,
               v.bad_position, v.reason);
    }
    es_store_close(st);
    return v.ok ? ESRC_OK : ESRC_VERIFY;
}

/* ---- export / import ---- */

typedef struct progress {
    bool on;
    const char *what;
    uint64_t done, total;
    time_t started, last;
} progress;

static void progress_start(progress *p, const char *what, uint64_t total)
{
    memset(p, 0, sizeof *p);
    p->on = isatty(STDERR_FILENO);
    p->what = what;
    p->total = total;
    p->started = p->last = time(NULL);
}

static void progress_step(progress *p, uint64_t n)
{
    p->done += n;
    if (!p->on)
        return;
    time_t now = time(NULL);
    /* only when the work is long: after the first second, at most twice a second */
    if (now == p->last || now - p->started < 1)
        return;
    p->last = now;
    int width = 30, fill = p->total ? (int)(width * p->done / p->total) : 0;
    fprintf(stderr, "\r%s [%.*s%*s] %" PRIu64 "/%" PRIu64 " events", p->what, fill,
            "##############################", width - fill, "", p->done, p->total);
}

static void progress_end(progress *p)
{
    if (p->on && p->last != p->started)
        fprintf(stderr, "\r%s: %" PRIu64 " events%30s\n", p->what, p->done, "");
}

static int cmd_export(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {
        COMMON_OPTS, {"prefix", required_argument, NULL, 'p'}, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc export [--prefix PREFIX] > events.jsonl\n\n"
        "Write every event (or those of streams with PREFIX) as JSON Lines, in log\n"
        "order, with every field: stream, seq, position, time_us, id, type, data,\n"
        "meta, hash.  Bytes that are not UTF-8 text are written as base64 under\n"
        "stream_b64 / data_b64 / meta_b64.  `esrc import` reads it back.\n";
    es_log_options o = ES_LOG_OPTIONS_INIT;
    es_store *st;
    es_store_stats s;
    es_cursor *cur;
    const es_event *ev;
    progress p;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 'p') {
            o.prefix = optarg;
            o.prefix_len = strlen(optarg);
            if (o.prefix_len > ES_MAX_KEY)
                return usage_error("--prefix is over %d bytes", ES_MAX_KEY);
        } else
            return ESRC_USAGE;
    }
    if (optind < argc)
        return usage_error("export: unexpected argument '%s'", argv[optind]);
    if ((rc = open_store(&st, cx, false, true)))
        return rc;
    if ((rc = es_store_stats_get(&s, st)) < 0 || (rc = es_log_cursor(&cur, st, &o)) < 0) {
        rc = lib_error("export", rc);
        es_store_close(st);
        return rc;
    }
    progress_start(&p, "exporting", s.events);
    while ((rc = es_cursor_next(&ev, cur)) == 0) {
        json_t *j = event_json(ev);
        json_object_del(j, "time"); /* time_us says it exactly */
        print_json(j);
        progress_step(&p, 1);
    }
    progress_end(&p);
    rc = rc == ES_ITEROVER ? ESRC_OK : lib_error("export", rc);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "esrc: export: writing output: %s\n", strerror(errno));
        rc = ESRC_FAIL;
    }
    es_cursor_free(cur);
    es_store_close(st);
    return rc;
}

/* One parsed line of an export. */
typedef struct imp_event {
    uint8_t stream[ES_MAX_KEY];
    size_t stream_len;
    uint64_t seq;
    int64_t time_us;
    uint8_t id[ES_ID_SIZE];
    char type[ES_MAX_TYPE + 1];
    es_buf data, meta;
    uint8_t hash[ES_HASH_SIZE];
    bool has_hash;
} imp_event;

static int get_bytes(uint8_t *fixed, size_t fixed_cap, size_t *fixed_len, es_buf *buf,
                     json_t *o, const char *name, bool required, char *err, size_t errcap)
{
    char key[32];
    json_t *s = json_object_get(o, name);
    snprintf(key, sizeof key, "%s_b64", name);
    json_t *b = json_object_get(o, key);
    const uint8_t *p = NULL;
    size_t n = 0;
    uint8_t *dec = NULL;
    if (s && b) {
        snprintf(err, errcap, "both %s and %s given", name, key);
        return -1;
    }
    if (s) {
        if (!json_is_string(s)) {
            snprintf(err, errcap, "%s is not a string", name);
            return -1;
        }
        p = (const uint8_t *)json_string_value(s);
        n = json_string_length(s);
    } else if (b) {
        const char *t = json_string_value(b);
        if (!t) {
            snprintf(err, errcap, "%s is not a string", key);
            return -1;
        }
        size_t tl = strlen(t);
        dec = malloc(tl + 1);
        if (!dec || sodium_base642bin(dec, tl + 1, t, tl, NULL, &n, NULL,
                                      sodium_base64_VARIANT_ORIGINAL) != 0) {
            free(dec);
            snprintf(err, errcap, "%s is not base64", key);
            return -1;
        }
        p = dec;
    } else if (required) {
        snprintf(err, errcap, "%s is missing", name);
        return -1;
    }
    int rc = 0;
    if (fixed) {
        if (n == 0 || n > fixed_cap) {
            snprintf(err, errcap, "%s must be 1..%zu bytes (it is %zu)", name, fixed_cap, n);
            rc = -1;
        } else {
            memcpy(fixed, p, n);
            *fixed_len = n;
        }
    } else {
        es_buf_reset(buf);
        if (n && es_buf_put(buf, p, n) < 0) {
            snprintf(err, errcap, "%s: %s", name, es_error_last());
            rc = -1;
        }
    }
    free(dec);
    return rc;
}

static int parse_line(imp_event *e, const char *line, size_t len, char *err, size_t errcap)
{
    json_error_t je;
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, &je);
    int rc = -1;
    if (!o) {
        snprintf(err, errcap, "malformed JSON: %s", je.text);
        return -1;
    }
    if (!json_is_object(o)) {
        snprintf(err, errcap, "not a JSON object");
        goto done;
    }
    if (get_bytes(e->stream, ES_MAX_KEY, &e->stream_len, NULL, o, "stream", true, err, errcap))
        goto done;
    json_t *seq = json_object_get(o, "seq"), *t = json_object_get(o, "time_us"),
           *id = json_object_get(o, "id"), *type = json_object_get(o, "type"),
           *hash = json_object_get(o, "hash");
    if (!json_is_integer(seq) || json_integer_value(seq) < 1) {
        snprintf(err, errcap, "seq must be an integer >= 1");
        goto done;
    }
    e->seq = (uint64_t)json_integer_value(seq);
    if (!json_is_integer(t) || json_integer_value(t) <= 0) {
        snprintf(err, errcap, "time_us must be a positive integer");
        goto done;
    }
    e->time_us = json_integer_value(t);
    size_t n = 0;
    const char *ids = json_string_value(id);
    if (!ids || strlen(ids) != 32 ||
        sodium_hex2bin(e->id, ES_ID_SIZE, ids, 32, NULL, &n, NULL) != 0 || n != ES_ID_SIZE) {
        snprintf(err, errcap, "id must be 32 hex digits");
        goto done;
    }
    const char *ty = json_string_value(type);
    if (!ty || !*ty || json_string_length(type) > ES_MAX_TYPE ||
        strlen(ty) != json_string_length(type)) {
        snprintf(err, errcap, "type must be 1..%d bytes without NUL", ES_MAX_TYPE);
        goto done;
    }
    strcpy(e->type, ty);
    if (get_bytes(NULL, 0, NULL, &e->data, o, "data", false, err, errcap) ||
        get_bytes(NULL, 0, NULL, &e->meta, o, "meta", false, err, errcap))
        goto done;
    if (e->data.len > ES_MAX_DATA || e->meta.len > ES_MAX_META) {
        snprintf(err, errcap, "data or meta over the limit");
        goto done;
    }
    e->has_hash = false;
    if (hash) {
        const char *hs = json_string_value(hash);
        if (!hs || strlen(hs) != 64 ||
            sodium_hex2bin(e->hash, ES_HASH_SIZE, hs, 64, NULL, &n, NULL) != 0) {
            snprintf(err, errcap, "hash must be 64 hex digits");
            goto done;
        }
        e->has_hash = true;
    }
    rc = 0;
done:
    json_decref(o);
    return rc;
}

/* Lines of a buffer, one at a time. */
static bool next_line(const es_buf *in, size_t *off, const char **line, size_t *len)
{
    while (*off < in->len) {
        const char *p = (const char *)in->data + *off;
        const char *nl = memchr(p, '\n', in->len - *off);
        size_t n = nl ? (size_t)(nl - p) : in->len - *off;
        *off += n + (nl ? 1 : 0);
        if (n && p[n - 1] == '\r')
            n--;
        if (n == 0)
            continue; /* blank lines are fine */
        *line = p;
        *len = n;
        return true;
    }
    return false;
}

static int cmd_import(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc import < events.jsonl\n\n"
        "Append the events of an export, keeping their streams, seqs, ids and\n"
        "times.  The whole input is checked before anything is written; each\n"
        "event's hash, when given, must match what the store computes.  Importing\n"
        "the same file twice writes nothing the second time.\n";
    es_buf in = ES_BUF_INIT;
    es_store *st = NULL;
    imp_event *batch = NULL;
    es_event_new *news = NULL;
    char err[300];
    size_t off, len, lineno = 0, total = 0;
    const char *line;
    progress p;
    int c, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        return ESRC_USAGE;
    }
    if (optind < argc)
        return usage_error("import: unexpected argument '%s'", argv[optind]);
    if ((rc = read_all(stdin, &in)))
        return rc;

    /* Pass 1: every line must parse, and seqs must follow within each stream. */
    imp_event e;
    memset(&e, 0, sizeof e);
    off = 0;
    while (next_line(&in, &off, &line, &len)) {
        lineno++;
        if (parse_line(&e, line, len, err, sizeof err)) {
            fprintf(stderr, "esrc: import: line %zu: %s; nothing was imported\n", lineno, err);
            rc = ESRC_USAGE;
            goto done;
        }
        total++;
    }
    if ((rc = open_store(&st, cx, true, false)))
        goto done;

    /* Pass 2: append runs of events of one stream with one commit time. */
    enum { MAXB = 1000 };
    batch = calloc(MAXB, sizeof *batch);
    news = calloc(MAXB, sizeof *news);
    if (!batch || !news) {
        rc = lib_error("import", ES_ENOMEM);
        goto done;
    }
    size_t nb = 0;
    uint64_t imported = 0, replayed = 0;
    progress_start(&p, "importing", total);
    off = 0;
    lineno = 0;
    bool more = true;
    while (more) {
        imp_event *cur = &batch[nb];
        more = next_line(&in, &off, &line, &len);
        if (more) {
            lineno++;
            parse_line(cur, line, len, err, sizeof err); /* parsed fine in pass 1 */
        }
        bool flush = nb > 0 && (!more || nb == MAXB || cur->stream_len != batch[0].stream_len ||
                                memcmp(cur->stream, batch[0].stream, cur->stream_len) ||
                                cur->time_us != batch[0].time_us ||
                                cur->seq != batch[nb - 1].seq + 1);
        if (flush) {
            for (size_t i = 0; i < nb; i++)
                news[i] = (es_event_new){.type = batch[i].type, .data = batch[i].data.data,
                                         .data_len = batch[i].data.len, .meta = batch[i].meta.data,
                                         .meta_len = batch[i].meta.len, .id = batch[i].id,
                                         .time_us = batch[i].time_us};
            es_append_result r;
            rc = es_append_ex(&r, st, batch[0].stream, batch[0].stream_len, batch[0].seq - 1,
                              news, nb, ES_APPEND_KEEP_TIME);
            if (rc) {
                fprintf(stderr, "esrc: import: the batch ending at line %zu: %s: %s (%" PRIu64
                                " events were imported before it)\n",
                        lineno - (more ? 1 : 0), es_strerror(rc), es_error_last(), imported);
                rc = rc == ES_ECONFLICT ? ESRC_CONFLICT : ESRC_FAIL;
                goto done;
            }
            /* The stored hashes must be the exported ones. */
            if (batch[nb - 1].has_hash) {
                es_read_options ro = ES_READ_OPTIONS_INIT;
                es_cursor *rc_cur;
                const es_event *ev;
                ro.from_seq = r.first_seq;
                ro.to_seq = r.last_seq;
                if (es_stream_cursor(&rc_cur, st, batch[0].stream, batch[0].stream_len, &ro) == 0) {
                    size_t i = 0;
                    while (es_cursor_next(&ev, rc_cur) == 0 && i < nb) {
                        if (batch[i].has_hash && memcmp(ev->hash, batch[i].hash, ES_HASH_SIZE)) {
                            fprintf(stderr,
                                    "esrc: import: event seq %" PRIu64
                                    " does not hash to the exported hash: the export was altered\n",
                                    ev->seq);
                            es_cursor_free(rc_cur);
                            rc = ESRC_VERIFY;
                            goto done;
                        }
                        i++;
                    }
                    es_cursor_free(rc_cur);
                }
            }
            if (r.replayed)
                replayed += nb;
            else
                imported += nb;
            progress_step(&p, nb);
            /* keep the current event as the first of the next batch */
            imp_event tmp = batch[0];
            batch[0] = batch[nb];
            batch[nb] = tmp;
            nb = 0;
            cur = &batch[0];
        }
        if (more)
            nb++;
    }
    progress_end(&p);
    if (cx->json) {
        json_t *o = json_pack("{s:I,s:I}", "imported", (json_int_t)imported, "already_there",
                              (json_int_t)replayed);
        print_json(o);
    } else {
        printf("imported %" PRIu64 " events", imported);
        if (replayed)
            printf(" (%" PRIu64 " were already there)", replayed);
        printf("\n");
    }
    rc = ESRC_OK;
done:
    if (batch) {
        for (size_t i = 0; i < MAXB; i++) {
            es_buf_free(&batch[i].data);
            es_buf_free(&batch[i].meta);
        }
    }
    es_buf_free(&e.data);
    es_buf_free(&e.meta);
    free(batch);
    free(news);
    es_store_close(st);
    es_buf_free(&in);
    return rc;
}

static int cmd_demo(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc demo [--store URI]\n\n"
        "Plays the talk's users-and-groups story on the store and prints the\n"
        "tables, the event log, the audit answer and a rejected save.\n";
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    demo_clock clock = {0};
    es_store *st = NULL;
    int c, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        return ESRC_USAGE;
    }
    if (optind < argc)
        return usage_error("demo: unexpected argument '%s'", argv[optind]);
    o.clock = esrc_demo_clock;
    o.clock_payload = &clock;
    if ((rc = es_store_open(&st, cx->store_uri, &o)) < 0)
        return lib_error(cx->store_uri, rc);
    rc = esrc_demo(st, &clock, stdout);
    es_store_close(st);
    return rc < 0 ? lib_error("demo", rc) : ESRC_OK;
}

static int cmd_bench(esrc_ctx *cx, int argc, char **argv)
{
    return esrc_bench(cx->json, argc, argv);
}

typedef struct command {
    const char *name;
    int (*run)(esrc_ctx *cx, int argc, char **argv);
    const char *help;
} command;

static const command commands[] = {
    {"init", cmd_init, "create the store"},
    {"append", cmd_append, "append an event to a stream"},
    {"read", cmd_read, "print a stream's events"},
    {"log", cmd_log, "print the global log (--follow to keep tailing)"},
    {"streams", cmd_streams, "list streams and their heads"},
    {"head", cmd_head, "print a stream's last seq"},
    {"stats", cmd_stats, "print counts and sizes"},
    {"verify", cmd_verify, "check the hash chains"},
    {"export", cmd_export, "write every event as JSON Lines"},
    {"import", cmd_import, "append the events of an export"},
    {"demo", cmd_demo, "play the talk's users-and-groups story"},
    {"bench", cmd_bench, "run the benchmarks against the baselines"},
};

static void print_help(void)
{
    printf("usage: esrc [--store URI] [--json] COMMAND [ARGS]\n\n"
           "Commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        printf("  %-8s %s\n", commands[i].name, commands[i].help);
    printf("\nThe store is --store URI, else $ESRC_STORE, else %s.\n"
           "URIs: mem:, lmdb:DIR, postgres://...\n"
           "--json prints JSON Lines instead of tables.\n"
           "`esrc COMMAND --help` describes a command.\n\n"
           "Exit status: 0 ok, 1 error, 2 usage or bad input, 3 conflict (--expect),\n"
           "4 verification failed.\n",
           ESRC_DEFAULT_STORE);
}

int main(int argc, char **argv)
{
    esrc_ctx cx = {0};
    int i = 1;

    signal(SIGPIPE, SIG_DFL);
    cx.store_uri = getenv("ESRC_STORE");
    if (!cx.store_uri || !*cx.store_uri)
        cx.store_uri = ESRC_DEFAULT_STORE;
    const char *fake = getenv("ESRC_CLOCK_START_US");
    if (fake && *fake)
        cx.fake_now = strtoll(fake, NULL, 10);
    /* Global options come before the command (they are also accepted after it). */
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            print_help();
            return ESRC_OK;
        } else if (strcmp(a, "--version") == 0) {
            printf("esrc %s (libeventsrc %s)\n", ES_VERSION_STRING, es_version());
            return ESRC_OK;
        } else if (strcmp(a, "--json") == 0) {
            cx.json = 1;
        } else if (strcmp(a, "--store") == 0) {
            if (++i >= argc)
                return usage_error("%s needs a URI", a);
            cx.store_uri = argv[i];
        } else if (strncmp(a, "--store=", 8) == 0) {
            cx.store_uri = a + 8;
        } else {
            return usage_error("unknown option '%s'", a);
        }
    }
    if (i >= argc)
        return usage_error("no command given");
    for (size_t k = 0; k < sizeof commands / sizeof *commands; k++) {
        if (strcmp(argv[i], commands[k].name) == 0) {
            current_argv = argv + i;
            opterr = 0;
            return commands[k].run(&cx, argc - i, argv + i);
        }
    }
    return usage_error("unknown command '%s'", argv[i]);
}
