/*
 * esrc.c — the eventsrc command line, a client of the public API only.
 *
 *   esrc [--store URI] [--json] COMMAND [ARGS]
 *
 * The store is --store, else $ESRC_STORE, else lmdb:./eventsrc.db.  Output
 * is a readable table, or JSON Lines with --json.  Exit status: 0 ok, 1
 * error, 2 usage or bad input, 3 conflict (--expect, or an import that
 * contradicts the store), 4 verification failed.  Bad input gives one line
 * on stderr and writes nothing.  The manual is doc/esrc.1.
 */
#define _GNU_SOURCE
#include "cli.h"
#include "args.h"
#include "import.h"
#include "server.h"

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
#define ESRC_STORE_LMDB " lmdb"
#else
#define ESRC_DEFAULT_STORE "mem:"
#define ESRC_STORE_LMDB ""
#endif
#ifdef ES_HAVE_PG
#define ESRC_STORE_PG " postgres"
#else
#define ESRC_STORE_PG ""
#endif
#ifdef ES_HAVE_HTTP
#define ESRC_STORE_HTTP " http"
#else
#define ESRC_STORE_HTTP ""
#endif
/* The stores built in, for `esrc --version` (and scripts that test them). */
#define ESRC_STORES "mem" ESRC_STORE_LMDB ESRC_STORE_PG ESRC_STORE_HTTP

/* The latest ESRC_CLOCK_START_US: 9999-12-31T23:59:59Z, far from overflowing. */
#define ESRC_CLOCK_MAX_US INT64_C(253402300799000000)

int usage_error(const char *fmt, ...)
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
    return rc == ES_ECONFLICT                                           ? ESRC_CONFLICT
           : rc == ES_EINVAL || rc == ES_ETOOBIG || rc == ES_EDUPLICATE ? ESRC_USAGE
                                                                        : ESRC_FAIL;
}

/* The test clock: a second per reading.  `esrc serve` reads it from many
 * threads, so it is one atomic step. */
static int64_t fake_clock(void *payload)
{
    esrc_ctx *cx = payload;
    int64_t now = __atomic_load_n(&cx->fake_now, __ATOMIC_RELAXED);
    for (;;) {
        if (now > INT64_MAX - 1000000) /* never reached from a valid start */
            return now;
        if (__atomic_compare_exchange_n(&cx->fake_now, &now, now + 1000000, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED))
            return now + 1000000;
    }
}

/* Open the store; `create` lets a missing lmdb store be made. */
/* The master key of crypto-shredding: a file of 32 bytes, or of 64 hex
 * digits (and an optional newline), e.g. `head -c 32 /dev/urandom > FILE`. */
static int load_master_key(es_store *st, const char *path)
{
    uint8_t raw[80], key[ES_MASTER_KEY_SIZE];
    size_t n, kl = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "esrc: master key %s: %s\n", path, strerror(errno));
        return ESRC_FAIL;
    }
    n = fread(raw, 1, sizeof raw, f);
    fclose(f);
    int ok = n == ES_MASTER_KEY_SIZE;
    if (ok) {
        memcpy(key, raw, sizeof key);
    } else {
        while (n > 0 && (raw[n - 1] == '\n' || raw[n - 1] == '\r'))
            n--;
        ok = n == 2 * ES_MASTER_KEY_SIZE &&
             sodium_hex2bin(key, sizeof key, (const char *)raw, n, NULL, &kl, NULL) == 0 &&
             kl == sizeof key;
    }
    sodium_memzero(raw, sizeof raw);
    if (!ok) {
        fprintf(stderr,
                "esrc: master key %s: not 32 bytes, nor 64 hex digits (make one with "
                "`head -c 32 /dev/urandom > FILE`)\n",
                path);
        return ESRC_USAGE;
    }
    es_store_set_master_key(st, key);
    sodium_memzero(key, sizeof key);
    return 0;
}

int open_store(es_store **st, esrc_ctx *cx, bool create, bool readonly)
{
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    int rc;
    if (!create)
        o.flags |= ES_OPEN_NOCREATE;
    if (readonly && !create)
        o.flags |= ES_OPEN_READONLY;
    if (cx->fake) {
        o.clock = fake_clock;
        o.clock_payload = cx;
    }
    if ((rc = es_store_open(st, cx->store_uri, &o)) < 0)
        return lib_error(cx->store_uri, rc);
    if (cx->master_key_file && (rc = load_master_key(*st, cx->master_key_file))) {
        es_store_close(*st);
        *st = NULL;
        return rc;
    }
    return 0;
}

/* A replica is written by its replicator only: refuse other writes unless
 * forced.  @return 0 (write), or an exit code after a message. */
static int refuse_replica(es_store *st, const char *cmd, bool force)
{
    es_replica_info ri;
    if (force || !st || es_replica_info_get(&ri, st, NULL) != 0)
        return 0;
    fprintf(stderr,
            "esrc: %s: the store is a replica (replica '%s', copied from its source up to "
            "position %" PRIu64 "): write to its source, or give --force (or drop the replica "
            "with `esrc replicate --to URI --drop`)\n",
            cmd, ri.name, ri.position);
    return ESRC_CONFLICT;
}

/* ---- options common to every command ---- */

char **current_argv;

int common_opt(esrc_ctx *cx, int c, const char *help)
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

/* A decimal number: digits only (no sign, no blanks: strtoull would take both). */
int parse_u64(uint64_t *out, const char *s, const char *what)
{
    if (esrc_parse_u64(out, s) != 0)
        return usage_error("%s must be a non-negative integer, not '%s'", what, s);
    return 0;
}

/* ---- output helpers ---- */

void print_json(json_t *o)
{
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_ENSURE_ASCII * 0);
    if (s) {
        puts(s);
        free(s);
    }
    json_decref(o);
}

/* The length of the valid UTF-8 sequence at p (1..4), or 0 when it is not one. */
static size_t utf8_seq(const uint8_t *p, size_t n)
{
    size_t len;
    uint32_t cp, min;
    if (p[0] < 0x80)
        return 1;
    if ((p[0] & 0xE0) == 0xC0)
        len = 2, cp = p[0] & 0x1F, min = 0x80;
    else if ((p[0] & 0xF0) == 0xE0)
        len = 3, cp = p[0] & 0x0F, min = 0x800;
    else if ((p[0] & 0xF8) == 0xF0)
        len = 4, cp = p[0] & 0x07, min = 0x10000;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

/*
 * Bytes rendered for a table, at most cap - 1 characters, cut with "...".
 * A terminal must not receive control characters from the store: C0 and C1
 * controls, DEL and bytes that are not UTF-8 are shown as \xNN.  In data
 * (`is_data`), newlines and tabs become spaces, and bytes that are not
 * UTF-8 text at all are summed up as "<N bytes>"; --json prints exact values.
 */
static void show_bytes(char *out, size_t cap, const uint8_t *p, size_t n, bool is_data)
{
    size_t w = 0, i = 0;
    if (is_data && !esrc_is_text(p, n)) {
        snprintf(out, cap, "<%zu bytes>", n);
        return;
    }
    while (i < n) {
        size_t len = utf8_seq(p + i, n - i);
        bool control = len == 0 || (len == 1 && (p[i] < 0x20 || p[i] == 0x7f)) ||
                       (len == 2 && p[i] == 0xC2 && p[i + 1] < 0xA0);
        char piece[16];
        size_t pn;
        if (is_data && len == 1 && (p[i] == '\n' || p[i] == '\t' || p[i] == '\r')) {
            piece[0] = ' ';
            pn = 1;
        } else if (control) {
            size_t k = len ? len : 1;
            pn = 0;
            for (size_t j = 0; j < k; j++)
                pn += (size_t)snprintf(piece + pn, sizeof piece - pn, "\\x%02x", p[i + j]);
        } else {
            memcpy(piece, p + i, len);
            pn = len;
        }
        if (w + pn + 4 > cap) {
            memcpy(out + w, "...", 3);
            w += 3;
            break;
        }
        memcpy(out + w, piece, pn);
        w += pn;
        i += len ? len : 1;
    }
    out[w] = 0;
}

enum { SHOW_NAME = 4 * ES_MAX_TYPE + 4 }; /* a key or type with every byte escaped */

static void print_event_row(const es_event *ev, bool with_stream)
{
    char when[64], data[84], stream[72], type[SHOW_NAME];
    esrc_format_time_us(when, sizeof when, ev->time_us);
    if (ev->shred == ES_SHRED_FORGOTTEN || ev->shred == ES_SHRED_LOCKED ||
        ev->shred == ES_SHRED_BROKEN)
        snprintf(data, sizeof data, "<%s>", esrc_shred_name(ev->shred));
    else
        show_bytes(data, sizeof data, ev->data, ev->data_len, true);
    show_bytes(type, sizeof type, (const uint8_t *)ev->type, ev->type_len, false);
    if (with_stream) {
        show_bytes(stream, sizeof stream, ev->stream, ev->stream_len, false);
        printf("%-9" PRIu64 " %-20s %-6" PRIu64 " %-27s %-20s %s\n", ev->position, stream, ev->seq,
               when, type, data);
    } else {
        printf("%-6" PRIu64 " %-9" PRIu64 " %-27s %-20s %s\n", ev->seq, ev->position, when, type,
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
                                          {"force", no_argument, NULL, 'f'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc append [--expect any|exists|no-stream|SEQ] [--meta TEXT] [--id HEX]\n"
        "                   [--force] STREAM TYPE [DATA]\n\n"
        "Append one event.  DATA is the argument, or standard input when it is\n"
        "absent or '-'.  --expect makes the append conditional (exit 3 when the\n"
        "stream is not in that state); --id makes a retry safe.  A replica\n"
        "(esrc replicate) is refused (exit 3) unless --force.\n";
    uint64_t expected = ES_EXPECT_ANY;
    uint8_t id[ES_ID_SIZE];
    bool have_id = false;
    const char *meta = NULL;
    bool force = false;
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
        } else if (c == 'f') {
            force = true;
        } else {
            return ESRC_USAGE;
        }
    }
    int nargs = argc - optind;
    if (nargs < 2 || nargs > 3)
        return usage_error("append needs STREAM TYPE [DATA]");
    const char *stream = argv[optind], *type = argv[optind + 1];
    if (strlen(stream) == 0 || strlen(stream) > ES_MAX_KEY)
        return usage_error("stream key must be 1..%d bytes (it is %zu)", ES_MAX_KEY,
                           strlen(stream));
    if (strlen(type) == 0 || strlen(type) > ES_MAX_TYPE)
        return usage_error("type name must be 1..%d bytes (it is %zu)", ES_MAX_TYPE, strlen(type));
    if (nargs == 3 && strcmp(argv[optind + 2], "-") != 0) {
        if (es_buf_put(&data, argv[optind + 2], strlen(argv[optind + 2])) < 0)
            return lib_error("append", es_error_last_code());
    } else if ((rc = read_all(stdin, &data))) {
        es_buf_free(&data);
        return rc;
    }
    es_event_new ev = {.type = type,
                       .data = data.data,
                       .data_len = data.len,
                       .meta = meta,
                       .meta_len = meta ? strlen(meta) : 0,
                       .id = have_id ? id : NULL};
    es_append_result r;
    if ((rc = open_store(&st, cx, true, false)) || (rc = refuse_replica(st, "append", force)))
        goto done;
    char shown[SHOW_NAME];
    show_bytes(shown, sizeof shown, (const uint8_t *)stream, strlen(stream), false);
    /* a replica was refused above unless --force */
    rc = es_append_ex(&r, st, stream, strlen(stream), expected, &ev, 1, ES_APPEND_TO_REPLICA);
    if (rc == ES_ECONFLICT) {
        fprintf(stderr, "esrc: append: conflict: stream %s is at seq %" PRIu64 "\n", shown, r.head);
        rc = ESRC_CONFLICT;
        goto done;
    }
    if (rc) {
        rc = lib_error("append", rc);
        goto done;
    }
    if (cx->json) {
        json_t *o = json_object();
        esrc_json_set_bytes(o, "stream", (const uint8_t *)stream, strlen(stream));
        json_object_set_new(o, "seq", json_integer((json_int_t)r.first_seq));
        json_object_set_new(o, "position", json_integer((json_int_t)r.first_position));
        json_object_set_new(o, "time_us", json_integer((json_int_t)r.time_us));
        json_object_set_new(o, "replayed", json_boolean(r.replayed));
        print_json(o);
    } else {
        printf("appended %s seq %" PRIu64 " at position %" PRIu64 "%s\n", shown, r.first_seq,
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
        return usage_error("stream key must be 1..%d bytes (it is %zu)", ES_MAX_KEY,
                           strlen(stream));
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
            print_json(esrc_event_json(ev));
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
                print_json(esrc_event_json(ev));
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
        esrc_json_set_bytes(o, "stream", k, len);
        json_object_set_new(o, "head", json_integer((json_int_t)head));
        print_json(o);
    } else {
        char s[SHOW_NAME];
        show_bytes(s, sizeof s, k, len, false);
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
        return usage_error("stream key must be 1..%d bytes (it is %zu)", ES_MAX_KEY,
                           strlen(stream));
    if ((rc = open_store(&st, cx, false, true)))
        return rc;
    if ((rc = es_stream_head(&h, st, stream, strlen(stream))) < 0) {
        rc = lib_error("head", rc);
    } else {
        if (cx->json) {
            json_t *o = json_object();
            esrc_json_set_bytes(o, "stream", (const uint8_t *)stream, strlen(stream));
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
    static const struct option longs[] = {COMMON_OPTS,
                                          {"since", required_argument, NULL, 's'},
                                          {"pubkey", required_argument, NULL, 'p'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc verify [STREAM]\n"
        "       esrc verify --since DIGEST.json [--pubkey HEX]\n\n"
        "Recompute the hash chains (of one stream, or of the whole store) and check\n"
        "that seqs have no gaps.  Exit 4 and name the first bad event on mismatch.\n"
        "--since: also prove that today's log extends an earlier digest (from\n"
        "`esrc digest`; with --pubkey its signature is checked first): nothing in it\n"
        "was changed, removed or reordered.\n";
    const char *since = NULL, *pubkey = NULL;
    es_store *st;
    es_verify_result v;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 's')
            since = optarg;
        else if (c == 'p')
            pubkey = optarg;
        else
            return ESRC_USAGE;
    }
    if (argc - optind > 1)
        return usage_error("verify takes at most one STREAM");
    if ((since && optind < argc) || (pubkey && !since))
        return usage_error("verify --since checks the whole log (no STREAM); --pubkey needs it");
    const char *stream = optind < argc ? argv[optind] : NULL;
    if (stream && (strlen(stream) == 0 || strlen(stream) > ES_MAX_KEY))
        return usage_error("stream key must be 1..%d bytes (it is %zu)", ES_MAX_KEY,
                           strlen(stream));
    /* A store too damaged to open or walk failed verification: exit 4. */
    if ((rc = open_store(&st, cx, false, !since)))
        return es_error_last_code() == ES_ECORRUPT ? ESRC_VERIFY : rc;
    if ((rc = es_verify(&v, st, stream, stream ? strlen(stream) : 0)) < 0) {
        int corrupt = rc == ES_ECORRUPT;
        rc = lib_error("verify", rc);
        es_store_close(st);
        return corrupt ? ESRC_VERIFY : rc;
    }
    if (since && v.ok) {
        rc = esrc_verify_since(cx, st, since, pubkey);
        es_store_close(st);
        return rc;
    }
    char bad[SHOW_NAME];
    show_bytes(bad, sizeof bad, v.bad_stream, v.bad_stream_len, false);
    if (cx->json) {
        json_t *o = json_object();
        json_object_set_new(o, "ok", json_boolean(v.ok));
        json_object_set_new(o, "events", json_integer((json_int_t)v.events_checked));
        json_object_set_new(o, "streams", json_integer((json_int_t)v.streams_checked));
        if (!v.ok) {
            esrc_json_set_bytes(o, "stream", v.bad_stream, v.bad_stream_len);
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

static int print_rule(const uint8_t *prefix, size_t len, unsigned flags, void *payload)
{
    char shown[SHOW_NAME];
    (void)payload;
    show_bytes(shown, sizeof shown, prefix, len, false);
    printf("%s%s\n", shown, (flags & ES_SHRED_META) ? " (data and metadata)" : "");
    return 0;
}

static int cmd_shred(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {
        COMMON_OPTS, {"meta", no_argument, NULL, 'm'}, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc shred [PREFIX [--meta]]\n\n"
        "Encrypt, from now on, the data (with --meta: and metadata) of the events of\n"
        "every stream whose key starts with PREFIX, with a key per subject: the\n"
        "stream key up to the first '/' after PREFIX.  Writers need the master key\n"
        "(--master-key FILE or $ESRC_MASTER_KEY_FILE).  `esrc forget SUBJECT` destroys\n"
        "a subject's key.  Without PREFIX: list the rules.\n";
    unsigned flags = 0;
    es_store *st;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c == 'm')
            flags |= ES_SHRED_META;
        else
            return ESRC_USAGE;
    }
    if (argc - optind > 1)
        return usage_error("shred takes at most one PREFIX");
    if (optind == argc && flags)
        return usage_error("--meta needs a PREFIX");
    if (optind < argc && (strlen(argv[optind]) == 0 || strlen(argv[optind]) > ES_MAX_KEY))
        return usage_error("PREFIX must be 1..%d bytes", ES_MAX_KEY);
    if ((rc = open_store(&st, cx, optind < argc, optind == argc)))
        return rc;
    if (optind < argc)
        rc = es_shred_rule_add(st, argv[optind], strlen(argv[optind]), flags);
    else
        rc = es_shred_rules(st, print_rule, NULL);
    rc = rc < 0 ? lib_error("shred", rc) : ESRC_OK;
    es_store_close(st);
    return rc;
}

static int cmd_forget(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc forget SUBJECT\n\n"
        "Destroy the key of SUBJECT (see `esrc shred`): the data of its events can\n"
        "never be read again; the events stay, with their hashes.  No master key is\n"
        "needed.  See doc/crypto-shredding.md for the copies a store may keep.\n";
    es_store *st;
    int c, rc;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        return ESRC_USAGE;
    }
    if (argc - optind != 1)
        return usage_error("forget needs one SUBJECT");
    const char *subject = argv[optind];
    if (strlen(subject) == 0 || strlen(subject) > ES_MAX_KEY)
        return usage_error("SUBJECT must be 1..%d bytes", ES_MAX_KEY);
    if ((rc = open_store(&st, cx, false, false)))
        return rc;
    rc = es_forget(st, subject, strlen(subject));
    if (rc == 0)
        printf("forgot %s\n", subject);
    rc = rc < 0 ? lib_error("forget", rc) : ESRC_OK;
    es_store_close(st);
    return rc;
}

static int cmd_export(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {
        COMMON_OPTS, {"prefix", required_argument, NULL, 'p'}, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc export [--prefix PREFIX] > events.jsonl\n\n"
        "Write every event (or those of streams with PREFIX) as JSON Lines, in log\n"
        "order, with every field: stream, seq, position, time_us, id, type, data,\n"
        "meta, hash.  A stream, type, data or meta that is not UTF-8 text (or\n"
        "holds a NUL) is written as base64 under stream_b64 / type_b64 / data_b64\n"
        "/ meta_b64 instead.  `esrc import` reads it back.\n";
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
    /* as stored: encrypted events stay encrypted (and keep their hashes) */
    es_cursor_set_raw(cur, 1);
    progress_start(&p, "exporting", s.events);
    while ((rc = es_cursor_next(&ev, cur)) == 0) {
        json_t *j = esrc_event_json(ev);
        json_object_del(j, "time");  /* time_us says it exactly */
        json_object_del(j, "shred"); /* an envelope says so itself */
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

static void import_progress(void *payload, uint64_t done, uint64_t total)
{
    progress *p = payload;
    p->total = total;
    progress_step(p, done - p->done);
}

/* Import one input: a named file, or standard input ("-"), spooled to a
 * temporary file when it cannot be read twice (a pipe). */
static int import_one(esrc_ctx *cx, es_store **st, const char *name)
{
    esrc_import_options io = {.name = name, .progress = import_progress};
    esrc_import_result r;
    FILE *in = stdin, *spool = NULL;
    int64_t now;
    progress p;
    int rc;

    if (strcmp(name, "-") != 0) {
        if (!(in = fopen(name, "rb"))) {
            int e = errno;
            fprintf(stderr, "esrc: import: %s: %s\n", name, strerror(e));
            return e == ENOENT ? ESRC_USAGE : ESRC_FAIL;
        }
    } else if (ftello(stdin) < 0 || fseeko(stdin, 0, SEEK_CUR) != 0) {
        char chunk[65536];
        size_t n;
        if (!(spool = tmpfile())) {
            fprintf(stderr, "esrc: import: a temporary file for standard input: %s\n",
                    strerror(errno));
            return ESRC_FAIL;
        }
        while ((n = fread(chunk, 1, sizeof chunk, stdin)) > 0)
            if (fwrite(chunk, 1, n, spool) != n)
                break;
        if (ferror(stdin) || ferror(spool) || fflush(spool) != 0 || fseeko(spool, 0, SEEK_SET)) {
            fprintf(stderr, "esrc: import: spooling standard input: %s\n", strerror(errno));
            fclose(spool);
            return ESRC_FAIL;
        }
        in = spool;
    }
    off_t start = ftello(in);
    if (cx->fake) {
        now = cx->fake_now;
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        now = (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
    }
    io.max_time_us = now + ESRC_IMPORT_MAX_AHEAD_US;
    io.progress_payload = &p;
    progress_start(&p, "importing", 0);
    if (!*st) {
        /* No store yet: check the input against an empty one before making it. */
        es_store *empty;
        io.check_only = true;
        if ((rc = es_store_open(&empty, "mem:", NULL)) < 0) {
            rc = lib_error("import", rc);
            goto done;
        }
        rc = esrc_import(&r, empty, in, &io);
        es_store_close(empty);
        io.check_only = false;
        if (rc || (rc = fseeko(in, start, SEEK_SET) ? ESRC_FAIL : 0) ||
            (rc = open_store(st, cx, true, false)))
            goto done;
    }
    rc = esrc_import(&r, *st, in, &io);
done:
    progress_end(&p);
    if (in != stdin)
        fclose(in);
    if (rc)
        return rc;
    if (cx->json) {
        json_t *o = json_pack("{s:s,s:I,s:I}", "input", name, "imported", (json_int_t)r.imported,
                              "already_there", (json_int_t)r.replayed);
        print_json(o);
    } else {
        printf("imported %" PRIu64 " events", r.imported);
        if (r.replayed)
            printf(" (%" PRIu64 " were already there)", r.replayed);
        printf("\n");
    }
    return ESRC_OK;
}

static int cmd_import(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {
        COMMON_OPTS, {"force", no_argument, NULL, 'f'}, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc import [FILE...] (standard input when none or '-')\n\n"
        "Append the events of an export, keeping their streams, seqs, ids and\n"
        "times.  Each input is checked whole before anything of it is written:\n"
        "seqs follow without gaps, a stream the store does not have starts at\n"
        "seq 1, times never go back, an id is used once, and each event's hash,\n"
        "when given, is its chain hash.  Events the store already has must be\n"
        "identical and are skipped, so importing the same file twice writes\n"
        "nothing the second time.  Exit 2 on bad input, 3 when the input\n"
        "contradicts the store; either way nothing of that input is written.\n"
        "A replica (esrc replicate) is refused (exit 3) unless --force.\n";
    es_store *st = NULL;
    bool force = false;
    int c, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        if (c != 'f')
            return ESRC_USAGE;
        force = true;
    }
    /* A store that does not exist is made only once an input is found good. */
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.flags = ES_OPEN_NOCREATE;
    if (cx->fake) {
        o.clock = fake_clock;
        o.clock_payload = cx;
    }
    if ((rc = es_store_open(&st, cx->store_uri, &o)) == ES_ENOTFOUND)
        st = NULL;
    else if (rc < 0)
        return lib_error(cx->store_uri, rc);
    if ((rc = refuse_replica(st, "import", force))) {
        es_store_close(st);
        return rc;
    }
    if (optind == argc)
        rc = import_one(cx, &st, "-");
    for (int i = optind; i < argc && rc == ESRC_OK; i++)
        rc = import_one(cx, &st, argv[i]);
    es_store_close(st);
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
    /* (its own handle, for its clock: the master key too, for shredded streams) */
    if (cx->master_key_file && (rc = load_master_key(st, cx->master_key_file))) {
        es_store_close(st);
        return rc;
    }
    rc = esrc_demo(st, &clock, stdout);
    es_store_close(st);
    return rc < 0 ? lib_error("demo", rc) : ESRC_OK;
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
    {"verify", cmd_verify, "check the hash chains (--since: against a digest)"},
    {"digest", esrc_digest, "print the signed Merkle digest of the log"},
    {"prove", esrc_prove, "prove that an event is in the log of a digest"},
    {"check-proof", esrc_check_proof, "check a proof offline, with no store"},
    {"key", esrc_key, "create or show a signing key for digests"},
    {"shred", cmd_shred, "encrypt the streams of a prefix per subject (list: no args)"},
    {"forget", cmd_forget, "destroy a subject's key: its data is gone for good"},
    {"export", cmd_export, "write every event as JSON Lines"},
    {"import", cmd_import, "append the events of an export"},
    {"demo", cmd_demo, "play the talk's users-and-groups story"},
    {"sub", esrc_sub, "manage and run subscriptions (durable consumers)"},
    {"project", esrc_project, "keep a SQL read model of the log (projection file)"},
    {"replicate", esrc_replicate, "copy a store into another, and keep it current"},
    {"backup", esrc_backup, "copy a live lmdb store into a new directory"},
    {"serve", esrc_serve, "serve the store over HTTP (JSON API, live feed, tokens)"},
    {"token", esrc_token, "create, list and revoke the tokens of esrc serve"},
};

static void print_help(void)
{
    printf("usage: esrc [--store URI] [--json] COMMAND [ARGS]\n\n"
           "Commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        printf("  %-9s %s\n", commands[i].name, commands[i].help);
    printf("\nThe store is --store URI, else $ESRC_STORE, else %s.\n"
           "URIs: mem:, lmdb:DIR, postgres://..., http[s]://HOST:PORT[?token=T] (esrc serve)\n"
           "--json prints JSON Lines instead of tables.\n"
           "`esrc COMMAND --help` describes a command.\n\n"
           "Exit status: 0 ok, 1 error, 2 usage or bad input, 3 conflict (--expect,\n"
           "or an import that contradicts the store), 4 verification failed.\n"
           "`esrc --version` lists the stores built in.  See esrc(1).\n",
           ESRC_DEFAULT_STORE);
}

int main(int argc, char **argv)
{
    esrc_ctx cx = {0};
    int i = 1;

    signal(SIGPIPE, SIG_DFL);
    cx.store_uri = getenv("ESRC_STORE");
    cx.master_key_file = getenv("ESRC_MASTER_KEY_FILE");
    if (cx.master_key_file && !*cx.master_key_file)
        cx.master_key_file = NULL;
    if (!cx.store_uri || !*cx.store_uri)
        cx.store_uri = ESRC_DEFAULT_STORE;
    const char *fake = getenv("ESRC_CLOCK_START_US");
    if (fake && *fake) {
        uint64_t v;
        if (esrc_parse_u64(&v, fake) != 0 || v > (uint64_t)ESRC_CLOCK_MAX_US)
            return usage_error(
                "ESRC_CLOCK_START_US must be microseconds since 1970 from 0 to %" PRId64
                " (9999-12-31), not '%s'",
                ESRC_CLOCK_MAX_US, fake);
        cx.fake = true;
        cx.fake_now = (int64_t)v;
    }
    /* Global options come before the command (they are also accepted after it). */
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            print_help();
            return ESRC_OK;
        } else if (strcmp(a, "--version") == 0) {
            printf("esrc %s (libeventsrc %s)\nstores: %s\n", ES_VERSION_STRING, es_version(),
                   ESRC_STORES);
            return ESRC_OK;
        } else if (strcmp(a, "--json") == 0) {
            cx.json = 1;
        } else if (strcmp(a, "--store") == 0) {
            if (++i >= argc)
                return usage_error("%s needs a URI", a);
            cx.store_uri = argv[i];
        } else if (strncmp(a, "--store=", 8) == 0) {
            cx.store_uri = a + 8;
        } else if (strcmp(a, "--master-key") == 0) {
            if (++i >= argc)
                return usage_error("%s needs a FILE", a);
            cx.master_key_file = argv[i];
        } else if (strncmp(a, "--master-key=", 13) == 0) {
            cx.master_key_file = a + 13;
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
