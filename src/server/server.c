/*
 * server.c — `esrc serve`: the store over HTTP (routes in doc/server.md).
 *
 * A client of the public API like the rest of esrc.  Requests are decoded by
 * request.c (pure, fuzzed), tokens checked by auth.c; this file holds the
 * libmicrohttpd glue, the routes, the Server-Sent Events feed, metrics, the
 * access log and the shutdown sequence.
 *
 * Threading: one thread per connection (MHD_USE_THREAD_PER_CONNECTION with
 * the internal polling thread accepting).  Every library call the routes make
 * may block — an append waits for its group commit and fsync, a pg call for
 * the network, a feed sleeps in es_log_wait — and a thread pool of
 * libmicrohttpd's event loop would stall every connection sharing a thread
 * behind one such call (MHD's event-loop threads must never block).  A thread
 * per connection lets each block on its own, the connection limit bounds
 * the threads, and the store handle is safe to share between them.
 */
#define _GNU_SOURCE
#include "server.h"

#include "args.h"
#include "auth.h"
#include "console.h"
#include "import.h"
#include "request.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sodium.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* ---- routes and metrics ---- */

#define ROUTES(X)                                                                                  \
    X(OTHER, "other")                                                                              \
    X(CONSOLE, "console")                                                                          \
    X(HEALTH, "health")                                                                            \
    X(READY, "ready")                                                                              \
    X(METRICS, "metrics")                                                                          \
    X(STATS, "stats")                                                                              \
    X(VERIFY, "verify")                                                                            \
    X(STREAMS, "streams")                                                                          \
    X(READ, "stream_read")                                                                         \
    X(APPEND, "stream_append")                                                                     \
    X(APPEND_MULTI, "append")                                                                      \
    X(HEAD, "stream_head")                                                                         \
    X(STREAM_VERIFY, "stream_verify")                                                              \
    X(LOG, "log")                                                                                  \
    X(FEED, "log_feed")                                                                            \
    X(SUBS, "subscriptions")                                                                       \
    X(SUB_CREATE, "subscription_create")                                                           \
    X(SUB_INFO, "subscription_info")                                                               \
    X(SUB_RESET, "subscription_reset")                                                             \
    X(SUB_DELETE, "subscription_delete")                                                           \
    X(SUB_PARKED, "subscription_parked")                                                           \
    X(SUB_PARKED_RETRY, "subscription_parked_retry")                                               \
    X(SUB_PARKED_DROP, "subscription_parked_drop")                                                 \
    X(SUB_FEED, "subscription_feed")                                                               \
    X(SUB_ACK, "subscription_ack")

enum {
#define X(id, name) R_##id,
    ROUTES(X)
#undef X
        R_N
};
static const char *const route_names[] = {
#define X(id, name) name,
    ROUTES(X)
#undef X
};

static const double buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                 0.1,    0.25,  0.5,    1,     2.5,  5,     10};
#define N_BUCKETS (sizeof buckets / sizeof *buckets)

typedef struct histogram {
    _Atomic uint64_t le[N_BUCKETS + 1]; /* the last one: +Inf */
    _Atomic uint64_t sum_us;
} histogram;

typedef struct server {
    es_store *st;
    struct MHD_Daemon *d;
    srv_tokens tokens;
    bool have_tokens, open;
    size_t max_body, max_events;
    unsigned max_conns;
    int64_t request_timeout_us;
    atomic_int conns, inflight;
    atomic_bool stopping;
    _Atomic uint64_t requests[R_N][600];
    _Atomic uint64_t events_appended;
    histogram append_latency, read_latency;
} server;

static void observe(histogram *h, int64_t us)
{
    double s = (double)us / 1e6;
    size_t i = 0;
    while (i < N_BUCKETS && s > buckets[i])
        i++;
    atomic_fetch_add(&h->le[i], 1);
    atomic_fetch_add(&h->sum_us, (uint64_t)(us < 0 ? 0 : us));
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- one request ---- */

typedef struct req {
    server *s;
    char *raw; /* the request target as sent */
    size_t raw_len;
    bool started, too_big, timed_out;
    es_buf body;
    int64_t start_mono;
    int route, status;
    char method[12];
    char remote[INET6_ADDRSTRLEN + 8];
    srv_token tok;
    bool have_tok;
    uint64_t bytes_in;
    srv_target target;
} req;

static const char *err_name(int rc)
{
    switch (rc) {
    case ES_EINVAL:
        return "invalid";
    case ES_ECONFLICT:
        return "conflict";
    case ES_ENOTFOUND:
        return "not_found";
    case ES_ETOOBIG:
        return "too_big";
    case ES_ENOMEM:
        return "out_of_memory";
    case ES_EIO:
        return "io";
    case ES_EUNAVAILABLE:
        return "unavailable";
    case ES_ECORRUPT:
        return "corrupt";
    case ES_EDUPLICATE:
        return "duplicate";
    case ES_ENOTSUP:
        return "not_supported";
    case ES_EFULL:
        return "full";
    case ES_ETIMEDOUT:
        return "timed_out";
    default:
        return "error";
    }
}

static int err_status(int rc)
{
    switch (rc) {
    case ES_EINVAL:
        return 400;
    case ES_ECONFLICT:
    case ES_EDUPLICATE:
        return 409;
    case ES_ENOTFOUND:
        return 404;
    case ES_ETOOBIG:
        return 413;
    case ES_ENOTSUP:
        return 501;
    case ES_EFULL:
        return 507;
    case ES_EUNAVAILABLE:
    case ES_ETIMEDOUT:
        return 503;
    default:
        return 500;
    }
}

static enum MHD_Result queue(req *r, struct MHD_Connection *c, int status, const char *ctype,
                             char *text, size_t len, const char *allow)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(text);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", ctype);
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    if (status == 401)
        MHD_add_response_header(resp, "WWW-Authenticate", "Bearer realm=\"esrc\"");
    if (allow)
        MHD_add_response_header(resp, "Allow", allow);
    if (atomic_load(&r->s->stopping) || status == 413 || status == 408)
        MHD_add_response_header(resp, "Connection", "close");
    r->status = status;
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, resp);
    MHD_destroy_response(resp);
    return ok;
}

/* Send a JSON object (stolen) with a status. */
static enum MHD_Result reply(req *r, struct MHD_Connection *c, int status, json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s) {
        const char oom[] = "{\"error\":\"out_of_memory\",\"message\":\"out of memory\"}\n";
        return queue(r, c, 500, "application/json", strdup(oom), sizeof oom - 1, NULL);
    }
    size_t n = strlen(s);
    char *t = realloc(s, n + 2);
    if (t) {
        t[n++] = '\n';
        t[n] = 0;
        s = t;
    }
    return queue(r, c, status, "application/json", s, n, NULL);
}

/* Send a JSON text built in b (freed here), or a 500 when building it ran out
 * of memory (bad). */
static enum MHD_Result reply_buf(req *r, struct MHD_Connection *c, int status, es_buf *b, bool bad)
{
    char *s = bad ? NULL : malloc(b->len + 2);
    if (s) {
        memcpy(s, b->data, b->len);
        s[b->len] = '\n';
        s[b->len + 1] = 0;
    }
    size_t n = b->len + 1;
    es_buf_free(b);
    if (!s) {
        const char oom[] = "{\"error\":\"out_of_memory\",\"message\":\"out of memory\"}\n";
        return queue(r, c, 500, "application/json", strdup(oom), sizeof oom - 1, NULL);
    }
    return queue(r, c, status, "application/json", s, n, NULL);
}

static enum MHD_Result fail_extra(req *r, struct MHD_Connection *c, int status, const char *code,
                                  json_t *extra, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static enum MHD_Result fail_extra(req *r, struct MHD_Connection *c, int status, const char *code,
                                  json_t *extra, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    json_t *o = json_pack("{s:s,s:s}", "error", code, "message", msg);
    if (!o)
        o = json_pack("{s:s,s:s}", "error", code, "message", "(not UTF-8)");
    if (o && extra)
        json_object_update(o, extra);
    json_decref(extra);
    return reply(r, c, status, o);
}

#define fail(r, c, status, code, ...) fail_extra(r, c, status, code, NULL, __VA_ARGS__)

static enum MHD_Result fail_lib(req *r, struct MHD_Connection *c, int rc)
{
    return fail(r, c, err_status(rc), err_name(rc), "%s", es_error_last());
}

static enum MHD_Result fail_fault(req *r, struct MHD_Connection *c, srv_fault f, const char *msg)
{
    if (f == SRV_TOO_BIG)
        return fail(r, c, 413, "too_big", "%s", msg);
    if (f == SRV_NOT_FOUND)
        return fail(r, c, 404, "not_found", "%s", msg);
    return fail(r, c, 400, "bad_request", "%s", msg);
}

static enum MHD_Result not_allowed(req *r, struct MHD_Connection *c, const char *allow)
{
    r->status = 405;
    json_t *o = json_pack("{s:s,s:s}", "error", "method_not_allowed", "message",
                          "this route does not take that method");
    char *s = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!s)
        return MHD_NO;
    return queue(r, c, 405, "application/json", s, strlen(s), allow);
}

static enum MHD_Result forbidden(req *r, struct MHD_Connection *c)
{
    return fail(r, c, 403, "forbidden", "the token does not allow this");
}

/* ---- helpers for routes ---- */

static bool method_is(const req *r, const char *m)
{
    return strcmp(r->method, m) == 0;
}

/* "/path?name=escaped&…" links for paging. */
static int link_add(es_buf *b, const char *name, const void *v, size_t n)
{
    bool first = memchr(b->data, '?', b->len) == NULL;
    return es_buf_put(b, first ? "?" : "&", 1) || es_buf_put(b, name, strlen(name)) ||
           es_buf_put(b, "=", 1) || srv_escape(b, v, n);
}

static int link_add_u64(es_buf *b, const char *name, uint64_t v)
{
    char s[24];
    snprintf(s, sizeof s, "%" PRIu64, v);
    return link_add(b, name, s, strlen(s));
}

static json_t *link_json(es_buf *b)
{
    json_t *s = json_stringn((const char *)b->data, b->len);
    es_buf_free(b);
    return s;
}

static json_t *append_result_json(const uint8_t *key, size_t kl, const es_append_result *a)
{
    char when[64];
    json_t *o = json_object();
    esrc_format_time_us(when, sizeof when, a->time_us);
    esrc_json_set_bytes(o, "stream", key, kl);
    json_object_set_new(o, "first_seq", json_integer((json_int_t)a->first_seq));
    json_object_set_new(o, "last_seq", json_integer((json_int_t)a->last_seq));
    json_object_set_new(o, "first_position", json_integer((json_int_t)a->first_position));
    json_object_set_new(o, "last_position", json_integer((json_int_t)a->last_position));
    json_object_set_new(o, "time_us", json_integer((json_int_t)a->time_us));
    json_object_set_new(o, "time", json_string(when));
    json_object_set_new(o, "head", json_integer((json_int_t)a->head));
    json_object_set_new(o, "replayed", json_boolean(a->replayed));
    return o;
}

static json_t *expected_json(uint64_t e)
{
    if (e == ES_EXPECT_ANY)
        return json_string("any");
    if (e == ES_EXPECT_EXISTS)
        return json_string("exists");
    if (e == ES_EXPECT_NO_STREAM)
        return json_string("no-stream");
    return json_integer((json_int_t)e);
}

/* ---- stream routes ---- */

static enum MHD_Result route_append(req *r, struct MHD_Connection *c, const srv_bytes *key)
{
    static const char *const known[] = {"expected", NULL};
    char err[300];
    srv_append a;
    es_append_result res;
    srv_fault f;
    enum MHD_Result ok;

    r->route = R_APPEND;
    if (!srv_token_allows(&r->tok, SRV_RIGHT_APPEND, key->p, key->len))
        return forbidden(r, c);
    if (!srv_params_known(&r->target, known, err, sizeof err))
        return fail(r, c, 400, "bad_request", "%s", err);
    f = srv_decode_append(&a, (const char *)r->body.data, r->body.len, r->s->max_events,
                          srv_param(&r->target, "expected"), err, sizeof err);
    if (f)
        return fail_fault(r, c, f, err);
    int64_t t0 = mono_us();
    unsigned flags = a.events[0].time_us ? ES_APPEND_KEEP_TIME : 0;
    int rc = es_append_ex(&res, r->s->st, key->p, key->len, a.expected, a.events, a.n, flags);
    observe(&r->s->append_latency, mono_us() - t0);
    if (rc == ES_ECONFLICT) {
        json_t *x = json_object();
        json_object_set_new(x, "head", json_integer((json_int_t)res.head));
        json_object_set_new(x, "expected", expected_json(a.expected));
        ok = fail_extra(r, c, 409, "conflict", x, "the stream is at seq %" PRIu64, res.head);
    } else if (rc) {
        ok = fail_lib(r, c, rc);
    } else {
        if (!res.replayed)
            atomic_fetch_add(&r->s->events_appended, a.n);
        ok = reply(r, c, res.replayed ? 200 : 201, append_result_json(key->p, key->len, &res));
    }
    srv_append_free(&a);
    return ok;
}

/* POST /append: es_append_multi, one commit over several streams. */
static enum MHD_Result route_multi(req *r, struct MHD_Connection *c)
{
    char err[300];
    srv_multi m;
    es_append_result *res = NULL;
    srv_fault f;
    enum MHD_Result ok;

    r->route = R_APPEND_MULTI;
    if (r->target.n_param)
        return fail(r, c, 400, "bad_request", "this route takes no query parameters");
    f = srv_decode_multi(&m, (const char *)r->body.data, r->body.len, r->s->max_events, err,
                         sizeof err);
    if (f)
        return fail_fault(r, c, f, err);
    for (size_t i = 0; i < m.n; i++) {
        if (!srv_token_allows(&r->tok, SRV_RIGHT_APPEND, m.aops[i].stream, m.aops[i].stream_len)) {
            srv_multi_free(&m);
            return forbidden(r, c);
        }
    }
    if (!(res = calloc(m.n, sizeof *res))) {
        srv_multi_free(&m);
        return fail(r, c, 500, "out_of_memory", "out of memory");
    }
    unsigned flags = m.aops[0].events[0].time_us ? ES_APPEND_KEEP_TIME : 0;
    int64_t t0 = mono_us();
    int rc = es_append_multi(res, r->s->st, m.aops, m.n, flags);
    observe(&r->s->append_latency, mono_us() - t0);
    if (rc == ES_ECONFLICT) {
        /* the op that met another head says so; the others are zero */
        json_t *x = json_object(), *heads = json_array();
        for (size_t i = 0; i < m.n; i++)
            json_array_append_new(heads, json_integer((json_int_t)res[i].head));
        json_object_set_new(x, "heads", heads);
        ok = fail_extra(r, c, 409, "conflict", x, "%s", es_error_last());
    } else if (rc) {
        ok = fail_lib(r, c, rc);
    } else {
        bool replayed = true;
        json_t *list = json_array();
        for (size_t i = 0; i < m.n; i++) {
            replayed = replayed && res[i].replayed;
            if (!res[i].replayed)
                atomic_fetch_add(&r->s->events_appended, m.aops[i].n);
            json_array_append_new(
                list, append_result_json(m.aops[i].stream, m.aops[i].stream_len, &res[i]));
        }
        ok = reply(r, c, replayed ? 200 : 201, json_pack("{s:o}", "results", list));
    }
    free(res);
    srv_multi_free(&m);
    return ok;
}

static enum MHD_Result route_read(req *r, struct MHD_Connection *c, const srv_bytes *key)
{
    static const char *const known[] = {"from", "to", "limit", "direction", NULL};
    char err[300];
    es_read_options o = ES_READ_OPTIONS_INIT;
    uint64_t limit, head = 0;
    es_cursor *cur = NULL;
    const es_event *ev;
    es_buf next = ES_BUF_INIT, body = ES_BUF_INIT;
    srv_fault f;
    int rc;

    r->route = R_READ;
    if (!srv_token_allows(&r->tok, SRV_RIGHT_READ, key->p, key->len))
        return forbidden(r, c);
    if (!srv_params_known(&r->target, known, err, sizeof err))
        return fail(r, c, 400, "bad_request", "%s", err);
    const srv_bytes *dir = srv_param(&r->target, "direction");
    if (dir && !((dir->len == 7 && memcmp(dir->p, "forward", 7) == 0) ||
                 (dir->len == 8 && memcmp(dir->p, "backward", 8) == 0)))
        return fail(r, c, 400, "bad_request", "direction must be forward or backward");
    o.backward = dir && dir->len == 8;
    if ((f = srv_param_u64(&o.from_seq, &r->target, "from", 0, 0, ES_SEQ_MAX - 1, err,
                           sizeof err)) ||
        (f = srv_param_u64(&o.to_seq, &r->target, "to", 0, 0, ES_SEQ_MAX - 1, err, sizeof err)) ||
        (f = srv_param_u64(&limit, &r->target, "limit", 100, 1, 1000, err, sizeof err)))
        return fail_fault(r, c, f, err);
    o.limit = limit + 1; /* one more tells whether there is a next page */
    int64_t t0 = mono_us();
    if ((rc = es_stream_head(&head, r->s->st, key->p, key->len)) ||
        (rc = es_stream_cursor(&cur, r->s->st, key->p, key->len, &o)))
        return fail_lib(r, c, rc);
    /* the page is written straight as JSON text: building 1000 events as
     * jansson trees and dumping them cost more than reading them */
    char num[64];
    snprintf(num, sizeof num, ",\"head\":%lld,\"events\":[", (long long)head);
    bool bad = es_buf_put(&body, "{", 1) || srv_json_bytes(&body, "stream", key->p, key->len) ||
               es_buf_put(&body, num, strlen(num));
    uint64_t n = 0;
    while (!bad && (rc = es_cursor_next(&ev, cur)) == 0) {
        if (n++ == limit) {
            if (es_buf_put(&next, "/streams/", 9) || srv_escape(&next, key->p, key->len) ||
                link_add_u64(&next, "from", ev->seq) ||
                (o.to_seq && link_add_u64(&next, "to", o.to_seq)) ||
                link_add_u64(&next, "limit", limit) ||
                (o.backward && link_add(&next, "direction", "backward", 8)))
                rc = ES_ENOMEM;
            break;
        }
        bad = (n > 1 && es_buf_put(&body, ",", 1)) || srv_event_json(&body, ev);
    }
    es_cursor_free(cur);
    observe(&r->s->read_latency, mono_us() - t0);
    if (!bad && rc && rc != ES_ITEROVER) {
        es_buf_free(&body);
        es_buf_free(&next);
        return fail_lib(r, c, rc);
    }
    bad = bad || es_buf_put(&body, "],\"next\":", 9) ||
          (next.len ? srv_json_str(&body, next.data, next.len) : es_buf_put(&body, "null", 4)) ||
          es_buf_put(&body, "}", 1);
    es_buf_free(&next);
    return reply_buf(r, c, 200, &body, bad);
}

static enum MHD_Result route_head(req *r, struct MHD_Connection *c, const srv_bytes *key)
{
    uint64_t head;
    int rc;
    r->route = R_HEAD;
    if (!srv_token_allows(&r->tok, SRV_RIGHT_READ, key->p, key->len))
        return forbidden(r, c);
    if (r->target.n_param)
        return fail(r, c, 400, "bad_request", "this route takes no query parameters");
    if ((rc = es_stream_head(&head, r->s->st, key->p, key->len)))
        return fail_lib(r, c, rc);
    json_t *o = json_object();
    esrc_json_set_bytes(o, "stream", key->p, key->len);
    json_object_set_new(o, "head", json_integer((json_int_t)head));
    return reply(r, c, 200, o);
}

static json_t *verify_json(const es_verify_result *v)
{
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_boolean(v->ok));
    json_object_set_new(o, "events_checked", json_integer((json_int_t)v->events_checked));
    json_object_set_new(o, "streams_checked", json_integer((json_int_t)v->streams_checked));
    if (!v->ok) {
        json_t *b = json_object();
        esrc_json_set_bytes(b, "stream", v->bad_stream, v->bad_stream_len);
        json_object_set_new(b, "seq", json_integer((json_int_t)v->bad_seq));
        json_object_set_new(b, "position", json_integer((json_int_t)v->bad_position));
        json_object_set_new(b, "reason", json_string(v->reason));
        json_object_set_new(o, "bad", b);
    }
    return o;
}

static enum MHD_Result route_verify(req *r, struct MHD_Connection *c, const srv_bytes *key)
{
    es_verify_result v;
    int rc;
    r->route = key ? R_STREAM_VERIFY : R_VERIFY;
    if (key ? !srv_token_allows(&r->tok, SRV_RIGHT_READ, key->p, key->len)
            : !srv_token_global(&r->tok, SRV_RIGHT_READ))
        return forbidden(r, c);
    if (r->target.n_param)
        return fail(r, c, 400, "bad_request", "this route takes no query parameters");
    if ((rc = es_verify(&v, r->s->st, key ? key->p : NULL, key ? key->len : 0)))
        return fail_lib(r, c, rc);
    json_t *o = verify_json(&v);
    if (key)
        esrc_json_set_bytes(o, "stream", key->p, key->len);
    return reply(r, c, 200, o);
}

typedef struct list_state {
    json_t *list;
    const srv_bytes *after;
    uint64_t limit, n;
    es_buf last; /* the last key listed */
    bool more;
} list_state;

static int list_one(const uint8_t *k, size_t kl, uint64_t head, void *payload)
{
    list_state *ls = payload;
    if (ls->after) {
        size_t m = kl < ls->after->len ? kl : ls->after->len;
        int cmp = m ? memcmp(k, ls->after->p, m) : 0;
        if (cmp < 0 || (cmp == 0 && kl <= ls->after->len))
            return 0;
    }
    if (ls->n == ls->limit) {
        ls->more = true;
        return 1;
    }
    json_t *o = json_object();
    esrc_json_set_bytes(o, "stream", k, kl);
    json_object_set_new(o, "head", json_integer((json_int_t)head));
    json_array_append_new(ls->list, o);
    ls->n++;
    es_buf_reset(&ls->last);
    return es_buf_put(&ls->last, k, kl) ? ES_ENOMEM : 0;
}

static enum MHD_Result route_streams(req *r, struct MHD_Connection *c)
{
    static const char *const known[] = {"prefix", "after", "limit", NULL};
    char err[300];
    srv_prefixes eff;
    list_state ls = {.after = srv_param(&r->target, "after")};
    es_buf next = ES_BUF_INIT;
    srv_fault f;
    int rc = 0;

    r->route = R_STREAMS;
    if (!(r->tok.rights & SRV_RIGHT_READ))
        return forbidden(r, c);
    if (!srv_params_known(&r->target, known, err, sizeof err))
        return fail(r, c, 400, "bad_request", "%s", err);
    if ((f = srv_param_u64(&ls.limit, &r->target, "limit", 100, 1, 1000, err, sizeof err)))
        return fail_fault(r, c, f, err);
    const srv_bytes *q = srv_param(&r->target, "prefix");
    if (q && q->len > ES_MAX_KEY)
        return fail(r, c, 400, "bad_request", "prefix is over %d bytes", ES_MAX_KEY);
    /* only the streams both under the token's prefixes and under the asked
     * one; the sets are disjoint and sorted, so the listing is in key order */
    srv_prefixes_within(&eff, &r->tok.prefixes, q ? q->p : (const uint8_t *)"", q ? q->len : 0);
    ls.list = json_array();
    for (size_t i = 0; i < eff.n && !ls.more; i++) {
        rc = es_streams(r->s->st, eff.key[i], eff.len[i], list_one, &ls);
        if (rc == ES_EUSER && ls.more)
            rc = 0;
        if (rc)
            break;
    }
    if (rc) {
        json_decref(ls.list);
        es_buf_free(&ls.last);
        return fail_lib(r, c, rc);
    }
    if (ls.more &&
        (es_buf_put(&next, "/streams", 8) || (q && link_add(&next, "prefix", q->p, q->len)) ||
         link_add(&next, "after", ls.last.data, ls.last.len) ||
         link_add_u64(&next, "limit", ls.limit)))
        es_buf_free(&next);
    es_buf_free(&ls.last);
    json_t *o = json_object();
    json_object_set_new(o, "streams", ls.list);
    json_object_set_new(o, "next", next.len ? link_json(&next) : json_null());
    return reply(r, c, 200, o);
}

/* ---- the global log ---- */

/* The prefixes a log read may see: the token's, within the asked one. */
static srv_fault log_scope(srv_prefixes *eff, const req *r, char *err, size_t errcap)
{
    const srv_bytes *q = srv_param(&r->target, "prefix");
    if (q && q->len > ES_MAX_KEY) {
        snprintf(err, errcap, "prefix is over %d bytes", ES_MAX_KEY);
        return SRV_BAD_REQUEST;
    }
    srv_prefixes_within(eff, &r->tok.prefixes, q ? q->p : (const uint8_t *)"", q ? q->len : 0);
    const srv_bytes *t = srv_param(&r->target, "type");
    if (t && (t->len == 0 || t->len > ES_MAX_TYPE || memchr(t->p, 0, t->len))) {
        snprintf(err, errcap, "type must be 1..%d bytes without NUL", ES_MAX_TYPE);
        return SRV_BAD_REQUEST;
    }
    return SRV_OK;
}

/* The scan budget of one log page: a token whose prefixes match little of
 * the log must not make one request walk all of it. */
#define LOG_SCAN_MAX 100000

static enum MHD_Result route_log(req *r, struct MHD_Connection *c)
{
    static const char *const known[] = {"from", "prefix", "type", "limit", NULL};
    char err[300], type[ES_MAX_TYPE + 1];
    srv_prefixes eff;
    es_log_options o = ES_LOG_OPTIONS_INIT;
    es_cursor *cur = NULL;
    const es_event *ev;
    uint64_t from, limit, n = 0, scanned = 0, resume;
    es_buf next = ES_BUF_INIT, body = ES_BUF_INIT;
    bool bad;
    srv_fault f;
    int rc = 0;

    r->route = R_LOG;
    if (!(r->tok.rights & SRV_RIGHT_READ))
        return forbidden(r, c);
    if (!srv_params_known(&r->target, known, err, sizeof err))
        return fail(r, c, 400, "bad_request", "%s", err);
    if ((f = srv_param_u64(&from, &r->target, "from", 1, 1, ES_SEQ_MAX, err, sizeof err)) ||
        (f = srv_param_u64(&limit, &r->target, "limit", 100, 1, 1000, err, sizeof err)) ||
        (f = log_scope(&eff, r, err, sizeof err)))
        return fail_fault(r, c, f, err);
    const srv_bytes *t = srv_param(&r->target, "type");
    /* read your writes: appends this server acknowledged show in the log
     * (postgres may show a commit late; mem and lmdb return at once) */
    es_log_catch_up(r->s->st, 1000);
    resume = from;
    bad = es_buf_put(&body, "{\"events\":[", 11) != 0;
    if (eff.n) {
        int64_t t0 = mono_us();
        o.from_position = from;
        o.prefix = eff.key[0];
        o.prefix_len = eff.n == 1 ? eff.len[0] : srv_prefixes_common(&eff);
        if (t) {
            memcpy(type, t->p, t->len);
            type[t->len] = 0;
            o.type = type;
        }
        if ((rc = es_log_cursor(&cur, r->s->st, &o)) == 0) {
            while (!bad && (rc = es_cursor_next(&ev, cur)) == 0) {
                if (eff.n > 1 && !srv_prefixes_cover(&eff, ev->stream, ev->stream_len)) {
                    resume = ev->position + 1;
                    if (++scanned == LOG_SCAN_MAX)
                        break;
                    continue;
                }
                if (n == limit)
                    break;
                bad = (n && es_buf_put(&body, ",", 1)) || srv_event_json(&body, ev);
                resume = ev->position + 1;
                n++;
                if (++scanned == LOG_SCAN_MAX)
                    break;
            }
        }
        es_cursor_free(cur);
        observe(&r->s->read_latency, mono_us() - t0);
        if (!bad && rc && rc != ES_ITEROVER) {
            es_buf_free(&body);
            return fail_lib(r, c, rc);
        }
    }
    /* a next page when this one stopped before the end of the log */
    if (rc == 0 &&
        (es_buf_put(&next, "/log", 4) || link_add_u64(&next, "from", resume) ||
         (srv_param(&r->target, "prefix") &&
          link_add(&next, "prefix", srv_param(&r->target, "prefix")->p,
                   srv_param(&r->target, "prefix")->len)) ||
         (t && link_add(&next, "type", t->p, t->len)) || link_add_u64(&next, "limit", limit)))
        es_buf_free(&next);
    char num[48];
    snprintf(num, sizeof num, ",\"resume_from\":%lld}", (long long)resume);
    bad = bad || es_buf_put(&body, "],\"next\":", 9) ||
          (next.len ? srv_json_str(&body, next.data, next.len) : es_buf_put(&body, "null", 4)) ||
          es_buf_put(&body, num, strlen(num));
    es_buf_free(&next);
    return reply_buf(r, c, 200, &body, bad);
}

/* ---- the live feed (Server-Sent Events) ---- */

typedef struct feed {
    server *s;
    uint64_t next; /* the next position to read */
    srv_prefixes eff;
    char type[ES_MAX_TYPE + 1];
    bool has_type;
    es_buf out;
    size_t off;
    int64_t last_write;
} feed;

#define FEED_KEEPALIVE_US (15 * 1000000)

/* Fill f->out with the next events (or nothing).  @return 0 or an ES code. */
static int feed_fill(feed *f)
{
    es_log_options o = ES_LOG_OPTIONS_INIT;
    es_cursor *cur = NULL;
    const es_event *ev;
    int rc;
    o.from_position = f->next;
    o.prefix = f->eff.key[0];
    o.prefix_len = f->eff.n == 1 ? f->eff.len[0] : srv_prefixes_common(&f->eff);
    o.type = f->has_type ? f->type : NULL;
    o.limit = 256;
    if ((rc = es_log_cursor(&cur, f->s->st, &o)))
        return rc;
    while ((rc = es_cursor_next(&ev, cur)) == 0) {
        f->next = ev->position + 1;
        if (f->eff.n > 1 && !srv_prefixes_cover(&f->eff, ev->stream, ev->stream_len))
            continue;
        char head[48];
        snprintf(head, sizeof head, "id: %" PRIu64 "\ndata: ", ev->position);
        if (es_buf_put(&f->out, head, strlen(head)) || srv_event_json(&f->out, ev) ||
            es_buf_put(&f->out, "\n\n", 2)) {
            rc = ES_ENOMEM;
            break;
        }
    }
    es_cursor_free(cur);
    return rc == ES_ITEROVER ? 0 : rc;
}

static ssize_t feed_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    feed *f = cls;
    for (;;) {
        if (f->off < f->out.len) {
            size_t n = f->out.len - f->off;
            if (n > max)
                n = max;
            memcpy(buf, f->out.data + f->off, n);
            f->off += n;
            f->last_write = mono_us();
            return (ssize_t)n;
        }
        es_buf_reset(&f->out);
        f->off = 0;
        if (atomic_load(&f->s->stopping))
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (feed_fill(f) != 0) {
            fprintf(stderr, "esrc serve: feed: %s\n", es_error_last());
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (f->out.len)
            continue;
        /* nothing new: sleep until the log grows, a little at a time so that
         * a shutdown ends the feed promptly */
        int rc = es_log_wait(f->s->st, f->next - 1, 250);
        if (rc != 0 && rc != ES_ETIMEDOUT) {
            fprintf(stderr, "esrc serve: feed: %s\n", es_error_last());
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
        if (rc == ES_ETIMEDOUT && mono_us() - f->last_write > FEED_KEEPALIVE_US &&
            es_buf_put(&f->out, ": keepalive\n\n", 13))
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

static void feed_free(void *cls)
{
    feed *f = cls;
    es_buf_free(&f->out);
    free(f);
}

static enum MHD_Result route_feed(req *r, struct MHD_Connection *c)
{
    /* access_token: read by dispatch (EventSource cannot send headers) */
    static const char *const known[] = {"from", "prefix", "type", "access_token", NULL};
    char err[300];
    uint64_t from = 0;
    srv_fault f;

    r->route = R_FEED;
    if (!(r->tok.rights & SRV_RIGHT_READ))
        return forbidden(r, c);
    if (!srv_params_known(&r->target, known, err, sizeof err))
        return fail(r, c, 400, "bad_request", "%s", err);
    feed *fd = calloc(1, sizeof *fd);
    if (!fd)
        return fail(r, c, 500, "out_of_memory", "out of memory");
    fd->s = r->s;
    if ((f = log_scope(&fd->eff, r, err, sizeof err)))
        goto bad;
    const srv_bytes *t = srv_param(&r->target, "type");
    if (t) {
        memcpy(fd->type, t->p, t->len);
        fd->type[t->len] = 0;
        fd->has_type = true;
    }
    /* where to start: just after Last-Event-ID (a reconnection), else `from`
     * (a position, or "end": only events after now, the default) */
    const char *last = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Last-Event-ID");
    const srv_bytes *fp = srv_param(&r->target, "from");
    if (last) {
        if (esrc_parse_u64(&from, last) != 0 || from >= ES_SEQ_MAX) {
            snprintf(err, sizeof err, "Last-Event-ID must be a position");
            f = SRV_BAD_REQUEST;
            goto bad;
        }
        fd->next = from + 1;
    } else if (fp && !(fp->len == 3 && memcmp(fp->p, "end", 3) == 0)) {
        if ((f = srv_param_u64(&fd->next, &r->target, "from", 1, 1, ES_SEQ_MAX, err, sizeof err)))
            goto bad;
    } else {
        int rc = es_store_last_position(&from, r->s->st);
        if (rc) {
            free(fd);
            return fail_lib(r, c, rc);
        }
        fd->next = from + 1;
    }
    if (fd->eff.n == 0) /* nothing the token may see: only keepalives */
        fd->next = ES_SEQ_MAX;
    es_buf_put(&fd->out, ": esrc log feed\nretry: 1000\n\n", 29);
    fd->last_write = mono_us();
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 32 * 1024, feed_read, fd, feed_free);
    if (!resp) {
        feed_free(fd);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    r->status = 200;
    enum MHD_Result ok = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    return ok;
bad:
    free(fd);
    return fail_fault(r, c, f, err);
}

/* ---- subscriptions ---- */

static json_t *sub_info_json(const es_sub_info *i)
{
    static const char *const states[] = {"idle", "catching_up", "live"};
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(i->name));
    json_object_set_new(o, "checkpoint", json_integer((json_int_t)i->checkpoint));
    json_object_set_new(o, "head", json_integer((json_int_t)i->head));
    json_object_set_new(o, "behind", json_integer((json_int_t)i->behind));
    json_object_set_new(o, "behind_capped", json_boolean(i->behind_capped));
    json_object_set_new(o, "behind_us", json_integer(i->behind_us));
    json_object_set_new(o, "last_ack_us", json_integer(i->last_ack_us));
    json_object_set_new(o, "state",
                        json_string(i->state <= ES_SUB_LIVE ? states[i->state] : "unknown"));
    json_object_set_new(o, "lease_until_us", json_integer(i->lease_until_us));
    json_object_set_new(o, "acked", json_integer((json_int_t)i->acked));
    json_object_set_new(o, "partitions", json_integer(i->partitions));
    json_object_set_new(o, "members", json_integer(i->members));
    json_object_set_new(o, "parked", json_integer((json_int_t)i->parked));
    json_object_set_new(o, "group", json_string(i->group));
    return o;
}

static int sub_list_one(const es_sub_info *i, void *payload)
{
    return json_array_append_new(payload, sub_info_json(i)) ? ES_ENOMEM : 0;
}

static int partition_one(const es_sub_partition_info *p, void *payload)
{
    json_t *o = json_object();
    json_object_set_new(o, "partition", json_integer(p->partition));
    json_object_set_new(o, "checkpoint", json_integer((json_int_t)p->checkpoint));
    json_object_set_new(o, "behind", json_integer((json_int_t)p->behind));
    json_object_set_new(o, "owner", json_string(p->owner));
    json_object_set_new(o, "lease_until_us", json_integer(p->lease_until_us));
    return json_array_append_new(payload, o) ? ES_ENOMEM : 0;
}

static int parked_one(const es_sub_parked *p, void *payload)
{
    json_t *o = json_object();
    json_object_set_new(o, "position", json_integer((json_int_t)p->position));
    json_object_set_new(o, "partition", json_integer(p->partition));
    json_object_set_new(o, "attempts", json_integer(p->attempts));
    json_object_set_new(o, "parked_at_us", json_integer(p->parked_at_us));
    json_object_set_new(o, "retry", json_boolean(p->retry));
    json_t *e = json_string(p->error ? p->error : "");
    json_object_set_new(o, "error", e ? e : json_string("(not UTF-8)"));
    return json_array_append_new(payload, o) ? ES_ENOMEM : 0;
}

/* A subscription name from a path segment, NUL-terminated into out. */
static bool sub_name(char *out, const srv_bytes *b)
{
    if (b->len == 0 || b->len > ES_MAX_SUB_NAME || memchr(b->p, 0, b->len))
        return false;
    memcpy(out, b->p, b->len);
    out[b->len] = 0;
    return true;
}

/* A JSON body that may be empty (then {}).  NULL after a reply. */
static json_t *body_object(req *r, struct MHD_Connection *c, enum MHD_Result *ok)
{
    json_error_t je;
    if (r->body.len == 0)
        return json_object();
    json_t *o = json_loadb((const char *)r->body.data, r->body.len, JSON_REJECT_DUPLICATES, &je);
    if (!json_is_object(o)) {
        json_decref(o);
        *ok = fail(r, c, 400, "bad_request", "the body must be a JSON object%s%s", o ? "" : ": ",
                   o ? "" : je.text);
        return NULL;
    }
    return o;
}

static enum MHD_Result route_sub_feed(req *r, struct MHD_Connection *c, const char *name);
static enum MHD_Result route_sub_ack(req *r, struct MHD_Connection *c, const char *name);

static enum MHD_Result route_subs(req *r, struct MHD_Connection *c)
{
    char name[ES_MAX_SUB_NAME + 1], err[300];
    const srv_target *t = &r->target;
    enum MHD_Result ok = MHD_NO;
    json_t *body = NULL;
    int rc;

    r->route = R_SUBS;
    if (!srv_token_global(&r->tok, SRV_RIGHT_ADMIN))
        return forbidden(r, c);
    if (t->n_seg == 3 && srv_seg_is(t, 2, "feed")) {
        if (!sub_name(name, &t->seg[1]))
            return fail(r, c, 404, "not_found", "no such subscription");
        return route_sub_feed(r, c, name);
    }
    if (t->n_param)
        return fail(r, c, 400, "bad_request", "this route takes no query parameters");
    if (t->n_seg == 1) {
        if (method_is(r, "GET")) {
            json_t *list = json_array();
            if ((rc = es_sub_list(r->s->st, sub_list_one, list))) {
                json_decref(list);
                return fail_lib(r, c, rc);
            }
            return reply(r, c, 200, json_pack("{s:o}", "subscriptions", list));
        }
        if (!method_is(r, "POST"))
            return not_allowed(r, c, "GET, POST");
        r->route = R_SUB_CREATE;
        srv_sub_create sc;
        srv_fault f =
            srv_decode_sub_create(&sc, (const char *)r->body.data, r->body.len, err, sizeof err);
        if (f)
            return fail_fault(r, c, f, err);
        rc = es_sub_create(r->s->st, sc.name, &sc.opts);
        if (rc == 0) {
            es_sub_info i;
            rc = es_sub_info_get(&i, r->s->st, sc.name);
            ok = rc ? fail_lib(r, c, rc) : reply(r, c, 201, sub_info_json(&i));
        } else {
            ok = fail_lib(r, c, rc);
        }
        srv_sub_create_free(&sc);
        return ok;
    }
    if (!sub_name(name, &t->seg[1]))
        return fail(r, c, 404, "not_found", "no such subscription");
    if (t->n_seg == 2) {
        if (method_is(r, "DELETE")) {
            r->route = R_SUB_DELETE;
            if ((rc = es_sub_delete(r->s->st, name)))
                return fail_lib(r, c, rc);
            return reply(r, c, 200, json_pack("{s:s}", "deleted", name));
        }
        if (!method_is(r, "GET"))
            return not_allowed(r, c, "GET, DELETE");
        r->route = R_SUB_INFO;
        es_sub_info i;
        json_t *parts = json_array();
        if ((rc = es_sub_info_get(&i, r->s->st, name)) ||
            (rc = es_sub_partitions(r->s->st, name, partition_one, parts))) {
            json_decref(parts);
            return fail_lib(r, c, rc);
        }
        json_t *o = sub_info_json(&i);
        json_object_set_new(o, "partition_table", parts);
        return reply(r, c, 200, o);
    }
    if (t->n_seg == 3 && srv_seg_is(t, 2, "reset")) {
        r->route = R_SUB_RESET;
        if (!method_is(r, "POST"))
            return not_allowed(r, c, "POST");
        if (!(body = body_object(r, c, &ok)))
            return ok;
        es_sub_start start = ES_SUB_FROM_BEGINNING;
        uint64_t pos = 0;
        int64_t tm = 0;
        json_t *v = json_object_get(body, "start");
        if (json_object_size(body) != (v ? 1u : 0u)) {
            ok = fail(r, c, 400, "bad_request", "a reset body is {\"start\": ...}");
        } else if (v && srv_decode_start(&start, &pos, &tm, v, err, sizeof err)) {
            ok = fail(r, c, 400, "bad_request", "%s", err);
        } else if ((rc = es_sub_reset(r->s->st, name, start, pos, tm))) {
            ok = fail_lib(r, c, rc);
        } else {
            es_sub_info i;
            rc = es_sub_info_get(&i, r->s->st, name);
            ok = rc ? fail_lib(r, c, rc) : reply(r, c, 200, sub_info_json(&i));
        }
        json_decref(body);
        return ok;
    }
    if (t->n_seg == 3 && srv_seg_is(t, 2, "ack"))
        return route_sub_ack(r, c, name);
    if (srv_seg_is(t, 2, "parked") && t->n_seg == 3) {
        r->route = R_SUB_PARKED;
        if (!method_is(r, "GET"))
            return not_allowed(r, c, "GET");
        json_t *list = json_array();
        if ((rc = es_sub_parked_list(r->s->st, name, parked_one, list))) {
            json_decref(list);
            return fail_lib(r, c, rc);
        }
        return reply(r, c, 200, json_pack("{s:s,s:o}", "name", name, "parked", list));
    }
    if (srv_seg_is(t, 2, "parked") && t->n_seg == 4 &&
        (srv_seg_is(t, 3, "retry") || srv_seg_is(t, 3, "drop"))) {
        bool retry = srv_seg_is(t, 3, "retry");
        r->route = retry ? R_SUB_PARKED_RETRY : R_SUB_PARKED_DROP;
        if (!method_is(r, "POST"))
            return not_allowed(r, c, "POST");
        if (!(body = body_object(r, c, &ok)))
            return ok;
        json_t *v = json_object_get(body, "position");
        if (json_object_size(body) != (v ? 1u : 0u) ||
            (v && (!json_is_integer(v) || json_integer_value(v) < 0))) {
            ok = fail(r, c, 400, "bad_request",
                      "the body is {} (every parked event) or {\"position\": N}");
        } else {
            uint64_t pos = v ? (uint64_t)json_integer_value(v) : 0;
            rc = retry ? es_sub_parked_retry(r->s->st, name, pos)
                       : es_sub_parked_drop(r->s->st, name, pos);
            ok = rc ? fail_lib(r, c, rc)
                    : reply(r, c, 200,
                            json_pack("{s:s,s:I,s:s}", "name", name, "position", (json_int_t)pos,
                                      "done", retry ? "retry" : "drop"));
        }
        json_decref(body);
        return ok;
    }
    return fail(r, c, 404, "not_found", "no such route");
}

/* ---- subscription feeds (Server-Sent Events with acknowledgements) ---- */

/*
 * GET /subscriptions/{name}/feed[?group=G&member=M&ack=auto|manual] consumes
 * a subscription as its consumer (or as a member of its group G) for as long
 * as the connection lasts: a first `session` event names the feed's session,
 * then each batch comes as events (`id:` the position) and a `batch` event
 * with its last position.  With ack=manual (the default) the next batch
 * comes once the last position of this one is acknowledged by
 * POST /subscriptions/{name}/ack {"session","position"} (or failed:
 * {"session","position","error"}, retried and parked as the subscription
 * says); with ack=auto each batch is acknowledged once it is handed to the
 * connection.  The subscription's checkpoint, not Last-Event-ID, says where
 * a new feed starts.  Closing the connection closes the consumer (final
 * checkpoint, lease given back).
 *
 * The feed's thread and the acknowledging requests share the es_sub under
 * the session's lock; sessions are found through one list, whose lock is
 * taken before a session's.
 */
typedef struct sfeed {
    server *s;
    es_sub *sub;
    char name[ES_MAX_SUB_NAME + 1];
    char session[33];
    bool auto_ack;
    pthread_mutex_t lock;
    pthread_cond_t acked;
    uint64_t waiting_for; /* manual: the last position of the batch out (0: none) */
    uint64_t pending_ack; /* auto: acknowledge this once the batch is out */
    bool ended;           /* an error event was written: end after it */
    int64_t renewed_us;
    es_buf out;
    size_t off;
    int64_t last_write;
    struct sfeed *next;
} sfeed;

static pthread_mutex_t sfeeds_lock = PTHREAD_MUTEX_INITIALIZER;
static sfeed *sfeeds;

#define SFEED_RENEW_US (3 * 1000000) /* the lease is 10 s */
#define SFEED_KEEPALIVE_US 1000000

/* An `error` event, after which the feed ends. */
static void sfeed_error(sfeed *f, int rc)
{
    const char *msg = es_error_last_code() == rc ? es_error_last() : es_strerror(rc);
    json_t *o = json_pack("{s:s,s:s}", "error", err_name(rc), "message", msg);
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (t && !es_buf_put(&f->out, "event: error\ndata: ", 19) && !es_buf_put(&f->out, t, strlen(t)))
        es_buf_put(&f->out, "\n\n", 2);
    free(t);
    f->ended = true;
}

/* The next batch into f->out (or nothing), with the session's lock held. */
static int sfeed_fill(sfeed *f)
{
    const es_event *const *evs;
    size_t n;
    int rc = es_sub_next(&evs, &n, f->sub, 250);
    if (rc == ES_ETIMEDOUT)
        return 0;
    if (rc)
        return rc;
    for (size_t i = 0; i < n; i++) {
        char head[48];
        snprintf(head, sizeof head, "id: %" PRIu64 "\ndata: ", evs[i]->position);
        if (es_buf_put(&f->out, head, strlen(head)) || srv_event_json(&f->out, evs[i]) ||
            es_buf_put(&f->out, "\n\n", 2))
            return ES_ENOMEM;
    }
    char tail[96];
    snprintf(tail, sizeof tail, "event: batch\ndata: {\"last\":%" PRIu64 ",\"events\":%zu}\n\n",
             evs[n - 1]->position, n);
    if (es_buf_put(&f->out, tail, strlen(tail)))
        return ES_ENOMEM;
    if (f->auto_ack)
        f->pending_ack = evs[n - 1]->position;
    else
        f->waiting_for = evs[n - 1]->position;
    f->renewed_us = mono_us();
    return 0;
}

static ssize_t sfeed_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    sfeed *f = cls;
    (void)pos;
    for (;;) {
        if (f->off < f->out.len) {
            size_t n = f->out.len - f->off;
            if (n > max)
                n = max;
            memcpy(buf, f->out.data + f->off, n);
            f->off += n;
            f->last_write = mono_us();
            return (ssize_t)n;
        }
        es_buf_reset(&f->out);
        f->off = 0;
        if (f->ended || atomic_load(&f->s->stopping))
            return MHD_CONTENT_READER_END_OF_STREAM;
        int rc = 0;
        pthread_mutex_lock(&f->lock);
        if (f->pending_ack) { /* auto: the batch is out */
            rc = es_sub_ack(f->sub, f->pending_ack);
            f->pending_ack = 0;
        }
        if (rc == 0 && f->waiting_for) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 250 * 1000000L;
            if (until.tv_nsec >= 1000000000L) {
                until.tv_sec++;
                until.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&f->acked, &f->lock, &until);
            if (f->waiting_for && mono_us() - f->renewed_us > SFEED_RENEW_US) {
                rc = es_sub_commit(f->sub); /* keep the lease while the client works */
                f->renewed_us = mono_us();
            }
        } else if (rc == 0) {
            rc = sfeed_fill(f);
        }
        if (rc)
            sfeed_error(f, rc);
        pthread_mutex_unlock(&f->lock);
        /* a comment every second while idle: a client that went away is
         * then seen (the write fails) within a second, and the consumer
         * closes, giving its lease back */
        if (!f->out.len && mono_us() - f->last_write > SFEED_KEEPALIVE_US &&
            es_buf_put(&f->out, ": keepalive\n\n", 13))
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
}

static void sfeed_free(void *cls)
{
    sfeed *f = cls;
    pthread_mutex_lock(&sfeeds_lock);
    for (sfeed **p = &sfeeds; *p; p = &(*p)->next)
        if (*p == f) {
            *p = f->next;
            break;
        }
    pthread_mutex_unlock(&sfeeds_lock);
    /* nobody can find it now; an acknowledgement in progress holds its lock */
    pthread_mutex_lock(&f->lock);
    es_sub_close(f->sub);
    pthread_mutex_unlock(&f->lock);
    pthread_mutex_destroy(&f->lock);
    pthread_cond_destroy(&f->acked);
    es_buf_free(&f->out);
    free(f);
}

static enum MHD_Result route_sub_feed(req *r, struct MHD_Connection *c, const char *name)
{
    static const char *const known[] = {"group", "member", "ack", NULL};
    char err[300], group[ES_MAX_SUB_NAME + 1] = "", member[ES_MAX_SUB_NAME + 1] = "";
    r->route = R_SUB_FEED;
    if (!method_is(r, "GET"))
        return not_allowed(r, c, "GET");
    if (!srv_params_known(&r->target, known, err, sizeof err))
        return fail(r, c, 400, "bad_request", "%s", err);
    const srv_bytes *g = srv_param(&r->target, "group"), *m = srv_param(&r->target, "member"),
                    *a = srv_param(&r->target, "ack");
    bool auto_ack = false;
    if (a && a->len == 4 && memcmp(a->p, "auto", 4) == 0)
        auto_ack = true;
    else if (a && !(a->len == 6 && memcmp(a->p, "manual", 6) == 0))
        return fail(r, c, 400, "bad_request", "ack is auto or manual");
    if ((g && (g->len == 0 || g->len > ES_MAX_SUB_NAME)) ||
        (m && (m->len == 0 || m->len > ES_MAX_SUB_NAME)))
        return fail(r, c, 400, "bad_request", "group and member are 1..%d bytes", ES_MAX_SUB_NAME);
    if (m && !g)
        return fail(r, c, 400, "bad_request", "member needs group");
    if (g)
        memcpy(group, g->p, g->len);
    if (m)
        memcpy(member, m->p, m->len);
    if ((g && strlen(group) != g->len) || (m && strlen(member) != m->len))
        return fail(r, c, 400, "bad_request", "group and member hold no NUL byte");
    sfeed *f = calloc(1, sizeof *f);
    if (!f)
        return fail(r, c, 500, "out_of_memory", "out of memory");
    es_sub_open_options oo = ES_SUB_OPEN_OPTIONS_INIT;
    oo.group = g ? group : NULL;
    oo.member = m ? member : NULL;
    int rc = es_sub_open(&f->sub, r->s->st, name, &oo);
    if (rc) {
        free(f);
        return fail_lib(r, c, rc);
    }
    f->s = r->s;
    f->auto_ack = auto_ack;
    snprintf(f->name, sizeof f->name, "%s", name);
    uint8_t rnd[16];
    randombytes_buf(rnd, sizeof rnd);
    sodium_bin2hex(f->session, sizeof f->session, rnd, sizeof rnd);
    pthread_mutex_init(&f->lock, NULL);
    pthread_cond_init(&f->acked, NULL);
    f->last_write = f->renewed_us = mono_us();
    char head[320];
    snprintf(head, sizeof head,
             ": esrc subscription feed\nretry: 1000\nevent: session\ndata: "
             "{\"session\":\"%s\",\"subscription\":\"%s\",\"ack\":\"%s\"}\n\n",
             f->session, f->name, auto_ack ? "auto" : "manual");
    es_buf_put(&f->out, head, strlen(head));
    pthread_mutex_lock(&sfeeds_lock);
    f->next = sfeeds;
    sfeeds = f;
    pthread_mutex_unlock(&sfeeds_lock);
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 32 * 1024, sfeed_read, f, sfeed_free);
    if (!resp) {
        sfeed_free(f);
        return MHD_NO;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-store");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    r->status = 200;
    enum MHD_Result ok = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result route_sub_ack(req *r, struct MHD_Connection *c, const char *name)
{
    enum MHD_Result ok = MHD_NO;
    json_t *body;
    r->route = R_SUB_ACK;
    if (!method_is(r, "POST"))
        return not_allowed(r, c, "POST");
    if (!(body = body_object(r, c, &ok)))
        return ok;
    json_t *js = json_object_get(body, "session"), *jp = json_object_get(body, "position"),
           *je = json_object_get(body, "error");
    size_t want = 2 + (je ? 1 : 0);
    if (!json_is_string(js) || !json_is_integer(jp) || json_integer_value(jp) <= 0 ||
        (je && !json_is_string(je)) || json_object_size(body) != want) {
        json_decref(body);
        return fail(r, c, 400, "bad_request",
                    "the body is {\"session\": S, \"position\": N} (and \"error\": TEXT for a "
                    "failure)");
    }
    uint64_t pos = (uint64_t)json_integer_value(jp);
    int rc = 0;
    bool found = false, waiting = false;
    pthread_mutex_lock(&sfeeds_lock);
    for (sfeed *f = sfeeds; f; f = f->next) {
        if (strcmp(f->session, json_string_value(js)) != 0 || strcmp(f->name, name) != 0)
            continue;
        found = true;
        pthread_mutex_lock(&f->lock);
        waiting = f->waiting_for != 0;
        if (waiting) {
            if (je) {
                rc = es_sub_nack(f->sub, pos, json_string_value(je));
                if (rc == 0 || rc == ES_EPOISON)
                    f->waiting_for = 0; /* the batch is given up: the next one comes */
            } else {
                rc = es_sub_ack(f->sub, pos);
                if (rc == 0 && pos >= f->waiting_for)
                    f->waiting_for = 0;
            }
            pthread_cond_signal(&f->acked);
        }
        pthread_mutex_unlock(&f->lock);
        break;
    }
    pthread_mutex_unlock(&sfeeds_lock);
    if (!found)
        ok = fail(r, c, 404, "not_found", "no feed session '%s' of subscription '%s'",
                  json_string_value(js), name);
    else if (!waiting)
        ok = fail(r, c, 409, "conflict", "the feed has no batch waiting for an acknowledgement");
    else if (rc)
        ok = fail_lib(r, c, rc);
    else
        ok = reply(r, c, 200,
                   json_pack("{s:s,s:I,s:b}", "session", json_string_value(js), "position",
                             (json_int_t)pos, "failed", je != NULL));
    json_decref(body);
    return ok;
}

/* ---- operations ---- */

static int metric(es_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int metric(es_buf *b, const char *fmt, ...)
{
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    return es_buf_put(b, line, (size_t)n < sizeof line ? (size_t)n : sizeof line - 1);
}

static void histogram_text(es_buf *b, const char *name, const char *help, histogram *h)
{
    uint64_t cum = 0;
    metric(b, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (size_t i = 0; i <= N_BUCKETS; i++) {
        cum += atomic_load(&h->le[i]);
        if (i < N_BUCKETS)
            metric(b, "%s_bucket{le=\"%g\"} %" PRIu64 "\n", name, buckets[i], cum);
        else
            metric(b, "%s_bucket{le=\"+Inf\"} %" PRIu64 "\n", name, cum);
    }
    metric(b, "%s_sum %.6f\n%s_count %" PRIu64 "\n", name, (double)atomic_load(&h->sum_us) / 1e6,
           name, cum);
}

static int sub_metric(const es_sub_info *i, void *payload)
{
    es_buf *b = payload;
    /* names are [A-Za-z0-9._-]: nothing to escape in a label */
    metric(b, "esrc_subscription_behind_events{subscription=\"%s\"} %" PRIu64 "\n", i->name,
           i->behind);
    metric(b, "esrc_subscription_behind_seconds{subscription=\"%s\"} %.6f\n", i->name,
           (double)i->behind_us / 1e6);
    metric(b, "esrc_subscription_checkpoint{subscription=\"%s\"} %" PRIu64 "\n", i->name,
           i->checkpoint);
    metric(b, "esrc_subscription_parked{subscription=\"%s\"} %" PRIu64 "\n", i->name, i->parked);
    return 0;
}

static enum MHD_Result route_metrics(req *r, struct MHD_Connection *c)
{
    es_buf b = ES_BUF_INIT;
    es_store_stats st;
    server *s = r->s;

    r->route = R_METRICS;
    if (!srv_token_global(&r->tok, SRV_RIGHT_ADMIN))
        return forbidden(r, c);
    metric(&b, "# HELP esrc_http_requests_total HTTP requests by route and status.\n"
               "# TYPE esrc_http_requests_total counter\n");
    for (int rt = 0; rt < R_N; rt++)
        for (int code = 100; code < 600; code++) {
            uint64_t n = atomic_load(&s->requests[rt][code]);
            if (n)
                metric(&b, "esrc_http_requests_total{route=\"%s\",status=\"%d\"} %" PRIu64 "\n",
                       route_names[rt], code, n);
        }
    histogram_text(&b, "esrc_append_duration_seconds", "Time of the store's append call.",
                   &s->append_latency);
    histogram_text(&b, "esrc_read_duration_seconds", "Time of a stream or log page read.",
                   &s->read_latency);
    metric(&b,
           "# HELP esrc_events_appended_total Events appended through this server.\n"
           "# TYPE esrc_events_appended_total counter\nesrc_events_appended_total %" PRIu64 "\n",
           atomic_load(&s->events_appended));
    metric(&b,
           "# HELP esrc_http_connections Open connections.\n# TYPE esrc_http_connections "
           "gauge\nesrc_http_connections %d\n",
           atomic_load(&s->conns));
    if (es_store_stats_get(&st, s->st) == 0)
        metric(&b,
               "# HELP esrc_store_events Events in the store.\n# TYPE esrc_store_events gauge\n"
               "esrc_store_events %" PRIu64 "\n"
               "# HELP esrc_store_streams Streams in the store.\n# TYPE esrc_store_streams gauge\n"
               "esrc_store_streams %" PRIu64 "\n"
               "# HELP esrc_store_bytes Bytes the store uses (approximate).\n"
               "# TYPE esrc_store_bytes gauge\nesrc_store_bytes %" PRIu64 "\n"
               "# HELP esrc_store_last_position The log's last position.\n"
               "# TYPE esrc_store_last_position gauge\nesrc_store_last_position %" PRIu64 "\n",
               st.events, st.streams, st.bytes, st.last_position);
    metric(&b, "# HELP esrc_subscription_behind_events Matching events after a subscription's "
               "checkpoint (capped).\n# TYPE esrc_subscription_behind_events gauge\n"
               "# HELP esrc_subscription_behind_seconds Age of its oldest unacknowledged event.\n"
               "# TYPE esrc_subscription_behind_seconds gauge\n"
               "# TYPE esrc_subscription_checkpoint gauge\n"
               "# TYPE esrc_subscription_parked gauge\n");
    es_sub_list(s->st, sub_metric, &b); /* a store without subscriptions: no lines */
    es_error_clear();
    r->status = 200;
    char *text = (char *)b.data;
    size_t n = b.len;
    if (!text)
        text = strdup("");
    return queue(r, c, 200, "text/plain; version=0.0.4", text, n, NULL);
}

static enum MHD_Result route_stats(req *r, struct MHD_Connection *c)
{
    es_store_stats st;
    int rc;
    r->route = R_STATS;
    if (!srv_token_global(&r->tok, SRV_RIGHT_READ))
        return forbidden(r, c);
    if ((rc = es_store_stats_get(&st, r->s->st)))
        return fail_lib(r, c, rc);
    return reply(r, c, 200,
                 json_pack("{s:s,s:I,s:I,s:I,s:I,s:I}", "kind", es_store_kind(r->s->st), "events",
                           (json_int_t)st.events, "streams", (json_int_t)st.streams,
                           "last_position", (json_int_t)st.last_position, "snapshots",
                           (json_int_t)st.snapshots, "bytes", (json_int_t)st.bytes));
}

/* ---- the web console ---- */

/* The console's pages (src/server/console/, embedded at build time): "/" and
 * "/console" are the page, "/console/NAME" its script and style.  They hold
 * no store data, so they need no token: the page asks for one and sends it
 * with each API request.  The headers keep the page to its own origin's
 * scripts (no inline script, no other origin) and out of frames. */
static enum MHD_Result route_console(req *r, struct MHD_Connection *c)
{
    const srv_target *t = &r->target;
    const char *name = "index.html";
    const srv_asset *a = NULL;

    r->route = R_CONSOLE;
    if (!method_is(r, "GET"))
        return not_allowed(r, c, "GET");
    if (t->n_seg == 2) {
        for (size_t i = 0; i < srv_console_n_assets; i++)
            if (srv_seg_is(t, 1, srv_console_assets[i].name))
                a = &srv_console_assets[i];
        if (!a)
            return fail(r, c, 404, "not_found", "no such console file");
    } else {
        for (size_t i = 0; i < srv_console_n_assets; i++)
            if (strcmp(srv_console_assets[i].name, name) == 0)
                a = &srv_console_assets[i];
        if (!a)
            return fail(r, c, 404, "not_found", "no console in this build");
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(a->len, (void *)a->data, MHD_RESPMEM_PERSISTENT);
    if (!resp)
        return MHD_NO;
    MHD_add_response_header(resp, "Content-Type", a->type);
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "Content-Security-Policy",
                            "default-src 'self'; base-uri 'none'; form-action 'none'; "
                            "frame-ancestors 'none'; object-src 'none'");
    MHD_add_response_header(resp, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(resp, "X-Frame-Options", "DENY");
    MHD_add_response_header(resp, "Referrer-Policy", "no-referrer");
    if (atomic_load(&r->s->stopping))
        MHD_add_response_header(resp, "Connection", "close");
    r->status = 200;
    enum MHD_Result ok = MHD_queue_response(c, 200, resp);
    MHD_destroy_response(resp);
    return ok;
}

/* ---- dispatch ---- */

/* "Bearer " + the feed's access_token parameter, into out.  A browser's
 * EventSource cannot send an Authorization header, so the log feed (and only
 * it) takes the token in the query; the access log never shows it
 * (redact_target).  @return out, or NULL when there is no such parameter. */
static const char *feed_token(char *out, size_t cap, const srv_target *t)
{
    const srv_bytes *v = srv_param(t, "access_token");
    if (!v)
        return NULL;
    if (v->len + 8 > cap || memchr(v->p, 0, v->len)) {
        snprintf(out, cap, "Bearer -"); /* not a token: a 401 */
        return out;
    }
    memcpy(out, "Bearer ", 7);
    memcpy(out + 7, v->p, v->len);
    out[7 + v->len] = 0;
    return out;
}

static enum MHD_Result dispatch(req *r, struct MHD_Connection *c)
{
    char err[300];
    srv_target *t = &r->target;
    srv_fault f;

    if (r->raw_len > SRV_MAX_TARGET)
        return fail(r, c, 414, "uri_too_long", "the request target is over %d bytes",
                    SRV_MAX_TARGET);
    if ((f = srv_parse_target(t, r->raw, r->raw_len, err, sizeof err)))
        return fail_fault(r, c, f, err);
    if (t->n_seg == 0 || (t->n_seg <= 2 && srv_seg_is(t, 0, "console")))
        return route_console(r, c);
    if (t->n_seg == 1 && (srv_seg_is(t, 0, "health") || srv_seg_is(t, 0, "ready"))) {
        bool ready = srv_seg_is(t, 0, "ready");
        uint64_t pos;
        r->route = ready ? R_READY : R_HEALTH;
        if (!method_is(r, "GET"))
            return not_allowed(r, c, "GET");
        if (atomic_load(&r->s->stopping))
            return fail(r, c, 503, "shutting_down", "the server is stopping");
        if (ready && es_store_last_position(&pos, r->s->st) != 0)
            return fail(r, c, 503, "unavailable", "the store: %s", es_error_last());
        return reply(r, c, 200, json_pack("{s:s}", "status", "ok"));
    }
    /* everything else needs a token (or --open); in the query only for the
     * log feed */
    bool is_feed = t->n_seg == 2 && srv_seg_is(t, 0, "log") && srv_seg_is(t, 1, "feed");
    char qtok[160];
    const char *auth = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
    if (srv_param(t, "access_token") && (!is_feed || auth))
        return fail(r, c, 400, "bad_request",
                    is_feed ? "give the token in the Authorization header or in access_token, "
                              "not both"
                            : "access_token is taken only by /log/feed; send an Authorization: "
                              "Bearer header");
    if (!auth && is_feed)
        auth = feed_token(qtok, sizeof qtok, t);
    if (auth && r->s->have_tokens) {
        int k = srv_tokens_check(&r->tok, &r->s->tokens, auth, err, sizeof err);
        if (k < 0) {
            fprintf(stderr, "esrc serve: tokens: %s\n", err);
            return fail(r, c, 500, "error", "the server cannot read its tokens");
        }
        if (k == 0)
            return fail(r, c, 401, "unauthorized", "the token is not valid");
        r->have_tok = true;
    } else if (r->s->open) {
        memset(&r->tok, 0, sizeof r->tok);
        snprintf(r->tok.id, sizeof r->tok.id, "open");
        r->tok.rights = SRV_RIGHT_READ | SRV_RIGHT_APPEND | SRV_RIGHT_ADMIN;
        srv_prefixes_add(&r->tok.prefixes, "", 0);
    } else {
        return fail(r, c, 401, "unauthorized",
                    auth ? "the token is not valid" : "an Authorization: Bearer token is needed");
    }
    if (atomic_load(&r->s->stopping))
        return fail(r, c, 503, "shutting_down", "the server is stopping");

    if (t->n_seg == 1 && srv_seg_is(t, 0, "metrics"))
        return method_is(r, "GET") ? route_metrics(r, c) : not_allowed(r, c, "GET");
    if (t->n_seg == 1 && srv_seg_is(t, 0, "stats"))
        return method_is(r, "GET") ? route_stats(r, c) : not_allowed(r, c, "GET");
    if (t->n_seg == 1 && srv_seg_is(t, 0, "verify"))
        return method_is(r, "GET") ? route_verify(r, c, NULL) : not_allowed(r, c, "GET");
    if (t->n_seg == 1 && srv_seg_is(t, 0, "append"))
        return method_is(r, "POST") ? route_multi(r, c) : not_allowed(r, c, "POST");
    if (srv_seg_is(t, 0, "streams")) {
        if (t->n_seg == 1)
            return method_is(r, "GET") ? route_streams(r, c) : not_allowed(r, c, "GET");
        const srv_bytes *key = &t->seg[1];
        if (key->len > ES_MAX_KEY)
            return fail(r, c, 400, "bad_request", "a stream key is 1..%d bytes", ES_MAX_KEY);
        if (t->n_seg == 2) {
            if (method_is(r, "GET"))
                return route_read(r, c, key);
            if (method_is(r, "POST"))
                return route_append(r, c, key);
            return not_allowed(r, c, "GET, POST");
        }
        if (t->n_seg == 3 && srv_seg_is(t, 2, "head"))
            return method_is(r, "GET") ? route_head(r, c, key) : not_allowed(r, c, "GET");
        if (t->n_seg == 3 && srv_seg_is(t, 2, "verify"))
            return method_is(r, "GET") ? route_verify(r, c, key) : not_allowed(r, c, "GET");
    }
    if (srv_seg_is(t, 0, "log")) {
        if (t->n_seg == 1)
            return method_is(r, "GET") ? route_log(r, c) : not_allowed(r, c, "GET");
        if (t->n_seg == 2 && srv_seg_is(t, 1, "feed"))
            return method_is(r, "GET") ? route_feed(r, c) : not_allowed(r, c, "GET");
    }
    if (srv_seg_is(t, 0, "subscriptions"))
        return route_subs(r, c);
    return fail(r, c, 404, "not_found", "no such route");
}

/* ---- libmicrohttpd callbacks ---- */

/* Called with the request target as sent, before libmicrohttpd unescapes it:
 * the request's state starts here (it becomes the handler's *req_cls). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
    req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->s = cls;
    r->raw_len = strlen(uri);
    r->raw = strndup(uri, r->raw_len > SRV_MAX_TARGET ? SRV_MAX_TARGET : r->raw_len);
    r->start_mono = mono_us();
    if (!r->raw) {
        free(r);
        return NULL;
    }
    return r;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **req_cls)
{
    server *s = cls;
    req *r = *req_cls;
    if (!r)
        return MHD_NO; /* out of memory in on_uri */
    if (!r->started) {
        r->started = true;
        atomic_fetch_add(&s->inflight, 1);
        snprintf(r->method, sizeof r->method, "%s", strcmp(method, "HEAD") == 0 ? "GET" : method);
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
        if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET)
            inet_ntop(AF_INET, &((const struct sockaddr_in *)ci->client_addr)->sin_addr, r->remote,
                      sizeof r->remote);
        else if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET6)
            inet_ntop(AF_INET6, &((const struct sockaddr_in6 *)ci->client_addr)->sin6_addr,
                      r->remote, sizeof r->remote);
        if ((unsigned)atomic_load(&s->conns) > s->max_conns)
            return fail(r, c, 503, "too_many_connections",
                        "the server has %u connections open; try again later", s->max_conns);
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        uint64_t n;
        if (cl && esrc_parse_u64(&n, cl) == 0 && n > s->max_body)
            return fail(r, c, 413, "too_big", "the body is %" PRIu64 " bytes; the limit is %zu", n,
                        s->max_body);
        return MHD_YES;
    }
    if (*upload_size) {
        r->bytes_in += *upload_size;
        if (mono_us() - r->start_mono > s->request_timeout_us)
            r->timed_out = true;
        if (!r->too_big && !r->timed_out && r->body.len + *upload_size > s->max_body)
            r->too_big = true;
        if (r->too_big || r->timed_out)
            es_buf_free(&r->body);
        else if (es_buf_put(&r->body, upload, *upload_size))
            r->too_big = true;
        *upload_size = 0;
        return MHD_YES;
    }
    if (r->timed_out)
        return fail(r, c, 408, "timeout", "the body took over %" PRId64 " s to arrive",
                    s->request_timeout_us / 1000000);
    if (r->too_big)
        return fail(r, c, 413, "too_big", "the body is over %zu bytes", s->max_body);
    return dispatch(r, c);
}

/* Does the query name n (as sent, %-escapes and all) decode to "access_token"? */
static bool is_token_name(const char *p, size_t n)
{
    static const char want[] = "access_token";
    size_t k = 0;
    for (size_t i = 0; i < n; i++, k++) {
        int ch = (unsigned char)p[i];
        if (ch == '%' && i + 2 < n) {
            char hex[3] = {p[i + 1], p[i + 2], 0};
            char *end;
            ch = (int)strtol(hex, &end, 16);
            if (*end)
                return false;
            i += 2;
        } else if (ch == '+') {
            ch = ' ';
        }
        if (k >= sizeof want - 1 || ch != want[k])
            return false;
    }
    return k == sizeof want - 1;
}

/* The target for the access log, with the value of every access_token
 * parameter replaced: a token must never reach a log.  A new string. */
static char *redact_target(const char *raw)
{
    const char *q = strchr(raw, '?');
    es_buf b = ES_BUF_INIT;
    if (!q)
        return strdup(raw);
    if (es_buf_put(&b, raw, (size_t)(q - raw) + 1))
        goto oom;
    for (const char *p = q + 1; *p;) {
        size_t n = strcspn(p, "&");
        const char *eq = memchr(p, '=', n);
        size_t nl = eq ? (size_t)(eq - p) : n;
        if (is_token_name(p, nl)) {
            if (es_buf_put(&b, p, nl) || es_buf_put(&b, "=REDACTED", 9))
                goto oom;
        } else if (es_buf_put(&b, p, n)) {
            goto oom;
        }
        p += n;
        if (*p == '&') {
            if (es_buf_put(&b, "&", 1))
                goto oom;
            p++;
        }
    }
    if (es_buf_put(&b, "", 1))
        goto oom;
    return (char *)b.data;
oom:
    es_buf_free(&b);
    return NULL;
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls,
                         enum MHD_RequestTerminationCode toe)
{
    server *s = cls;
    req *r = *req_cls;
    if (!r)
        return;
    *req_cls = NULL;
    if (r->started) {
        int status = r->status ? r->status : 0;
        if (status >= 100 && status < 600)
            atomic_fetch_add(&s->requests[r->route][status], 1);
        char *target = redact_target(r->raw);
        json_t *line = json_pack(
            "{s:I,s:s,s:s,s:s,s:s,s:i,s:I,s:I,s:s,s:b}", "ts_us", (json_int_t)now_us(), "remote",
            r->remote, "method", r->method, "target", target ? target : "(out of memory)", "route",
            route_names[r->route], "status", status, "us", (json_int_t)(mono_us() - r->start_mono),
            "bytes_in", (json_int_t)r->bytes_in, "token",
            r->have_tok ? r->tok.id : (r->s->open ? "open" : "-"), "completed",
            toe == MHD_REQUEST_TERMINATED_COMPLETED_OK);
        char *text = line ? json_dumps(line, JSON_COMPACT) : NULL;
        if (text)
            fprintf(stderr, "%s\n", text);
        free(text);
        free(target);
        json_decref(line);
        atomic_fetch_sub(&s->inflight, 1);
    }
    es_buf_free(&r->body);
    free(r->raw);
    free(r);
}

static void on_connection(void *cls, struct MHD_Connection *c, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode code)
{
    server *s = cls;
    atomic_fetch_add(&s->conns, code == MHD_CONNECTION_NOTIFY_STARTED ? 1 : -1);
}

/* ---- the command ---- */

static char *read_file(const char *path, const char *what)
{
    FILE *f = fopen(path, "rb");
    es_buf b = ES_BUF_INIT;
    char chunk[8192];
    size_t n;
    if (!f) {
        fprintf(stderr, "esrc serve: %s %s: %s\n", what, path, strerror(errno));
        return NULL;
    }
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        if (es_buf_put(&b, chunk, n))
            break;
    fclose(f);
    if (es_buf_put(&b, "", 1)) {
        es_buf_free(&b);
        return NULL;
    }
    return (char *)b.data;
}

static int parse_listen(struct sockaddr_storage *ss, socklen_t *len, const char *s)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    uint64_t port;
    memset(ss, 0, sizeof *ss);
    if (!colon || (size_t)(colon - s) >= sizeof host || esrc_parse_u64(&port, colon + 1) != 0 ||
        port > 65535)
        return -1;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = 0;
    if (host[0] == '[' && host[strlen(host) - 1] == ']') {
        struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
        host[strlen(host) - 1] = 0;
        a->sin6_family = AF_INET6;
        a->sin6_port = htons((uint16_t)port);
        *len = sizeof *a;
        return inet_pton(AF_INET6, host + 1, &a->sin6_addr) == 1 ? 0 : -1;
    }
    struct sockaddr_in *a = (struct sockaddr_in *)ss;
    a->sin_family = AF_INET;
    a->sin_port = htons((uint16_t)port);
    *len = sizeof *a;
    return inet_pton(AF_INET, host, &a->sin_addr) == 1 ? 0 : -1;
}

#define SHUTDOWN_GRACE_US (10 * 1000000)

int esrc_serve(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS,
                                          {"listen", required_argument, NULL, 'l'},
                                          {"open", no_argument, NULL, 'o'},
                                          {"tokens", required_argument, NULL, 'k'},
                                          {"tls-cert", required_argument, NULL, 'c'},
                                          {"tls-key", required_argument, NULL, 'K'},
                                          {"max-body", required_argument, NULL, 'b'},
                                          {"max-events", required_argument, NULL, 'e'},
                                          {"max-connections", required_argument, NULL, 'n'},
                                          {"idle-timeout", required_argument, NULL, 'i'},
                                          {"request-timeout", required_argument, NULL, 'r'},
                                          {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc serve --listen ADDR:PORT [--store URI] [--tokens FILE] [--open]\n"
        "                  [--tls-cert FILE --tls-key FILE] [--max-body BYTES]\n"
        "                  [--max-events N] [--max-connections N] [--idle-timeout S]\n"
        "                  [--request-timeout S]\n\n"
        "Serve the store over HTTP: a JSON API, a live feed of the log (Server-Sent\n"
        "Events), /metrics, /health and /ready (routes in doc/server.md).  Requests\n"
        "need a bearer token of --tokens (see esrc token); --open lets requests\n"
        "without one do everything (local use only).  PORT 0 picks a free port; the\n"
        "first line on standard output says where it listens.  SIGTERM or SIGINT\n"
        "stops accepting, lets requests in flight finish and closes the feeds.\n"
        "Defaults: --max-body 33554432, --max-events 1000, --max-connections 256,\n"
        "--idle-timeout 60, --request-timeout 30.\n";
    static server srv; /* large (the metrics); one per process */
    server *s = &srv;
    const char *listen = NULL, *tokens = NULL, *cert_path = NULL, *key_path = NULL;
    char *cert = NULL, *key = NULL;
    uint64_t max_body = 32u << 20, max_events = 1000, max_conns = 256, idle = 60, rto = 30;
    struct sockaddr_storage addr;
    socklen_t addr_len = 0;
    sigset_t sigs;
    int c, rc = ESRC_FAIL, sig;
    char err[300];

    memset(s, 0, sizeof *s);
    optind = 1;
    while ((c = getopt_long(argc, argv, ":h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        uint64_t *num = c == 'b'   ? &max_body
                        : c == 'e' ? &max_events
                        : c == 'n' ? &max_conns
                        : c == 'i' ? &idle
                        : c == 'r' ? &rto
                                   : NULL;
        if (num) {
            if (parse_u64(num, optarg, argv[optind - 2]) != 0)
                return ESRC_USAGE;
            if (*num == 0)
                return usage_error("serve: %s must be at least 1", argv[optind - 2]);
        } else if (c == 'l') {
            listen = optarg;
        } else if (c == 'o') {
            s->open = true;
        } else if (c == 'k') {
            tokens = optarg;
        } else if (c == 'c') {
            cert_path = optarg;
        } else if (c == 'K') {
            key_path = optarg;
        } else {
            return ESRC_USAGE;
        }
    }
    if (optind < argc)
        return usage_error("serve: unexpected argument '%s'", argv[optind]);
    if (!listen)
        return usage_error("serve needs --listen ADDR:PORT");
    if (parse_listen(&addr, &addr_len, listen) != 0)
        return usage_error("serve: --listen takes IPv4:PORT or [IPv6]:PORT, not '%s'", listen);
    if (!!cert_path != !!key_path)
        return usage_error("serve: --tls-cert and --tls-key go together");
    if (!tokens && !s->open)
        return usage_error("serve needs --tokens FILE, or --open for local use without tokens");
    if (max_events > ES_MAX_BATCH)
        return usage_error("serve: --max-events is at most %d", ES_MAX_BATCH);
    if (max_conns > 10000 || idle > 86400 || rto > 86400)
        return usage_error("serve: --max-connections is at most 10000, the timeouts 86400 s");
    s->max_body = (size_t)max_body;
    s->max_events = (size_t)max_events;
    s->max_conns = (unsigned)max_conns;
    s->request_timeout_us = (int64_t)rto * 1000000;
    if (tokens) {
        if (srv_tokens_open(&s->tokens, tokens, err, sizeof err) != 0) {
            fprintf(stderr, "esrc serve: %s\n", err);
            return ESRC_FAIL;
        }
        s->have_tokens = true;
    }
    if (cert_path &&
        (!(cert = read_file(cert_path, "--tls-cert")) || !(key = read_file(key_path, "--tls-key"))))
        goto done;
    if ((rc = open_store(&s->st, cx, true, false))) {
        s->st = NULL;
        goto done;
    }
    rc = ESRC_FAIL;

    /* signals are taken by this thread with sigwait; every thread started
     * from here (libmicrohttpd's) inherits the mask */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC |
                     MHD_USE_ERROR_LOG;
    if (addr.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    if (cert)
        flags |= MHD_USE_TLS;
    struct MHD_OptionItem tls[] = {
        {cert ? MHD_OPTION_HTTPS_MEM_CERT : MHD_OPTION_END, 0, cert},
        {cert ? MHD_OPTION_HTTPS_MEM_KEY : MHD_OPTION_END, 0, key},
        {MHD_OPTION_END, 0, NULL},
    };
    s->d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, s, MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, s,
        /* a little over the limit, so that the ones over it get a 503 with a body */
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)max_conns + 16, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)idle, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024, MHD_OPTION_ARRAY,
        tls, MHD_OPTION_END);
    if (!s->d) {
        fprintf(stderr, "esrc serve: cannot listen on %s (in use, or no such address)\n", listen);
        goto done;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    char host[64];
    snprintf(host, sizeof host, "%.*s", (int)(strrchr(listen, ':') - listen), listen);
    printf("esrc serve: listening on %s://%s:%u (store %s)\n", cert ? "https" : "http", host,
           di ? di->port : 0, es_store_kind(s->st));
    fflush(stdout);

    while (sigwait(&sigs, &sig) != 0)
        ;
    /* graceful shutdown: stop accepting, answer 503 on kept-alive
     * connections, let requests in flight (appends) finish and feeds end */
    fprintf(stderr, "esrc serve: stopping (signal %d)\n", sig);
    atomic_store(&s->stopping, true);
    MHD_socket ls = MHD_quiesce_daemon(s->d); /* ours to close from now on */
    if (ls != MHD_INVALID_SOCKET)
        close(ls);
    int64_t until = mono_us() + SHUTDOWN_GRACE_US;
    while (atomic_load(&s->inflight) > 0 && mono_us() < until)
        usleep(10000);
    if (atomic_load(&s->inflight) > 0)
        fprintf(stderr, "esrc serve: %d requests still in flight after %d s; closing them\n",
                atomic_load(&s->inflight), SHUTDOWN_GRACE_US / 1000000);
    MHD_stop_daemon(s->d);
    fprintf(stderr, "esrc serve: stopped\n");
    rc = ESRC_OK;
done:
    es_store_close(s->st);
    if (s->have_tokens)
        srv_tokens_close(&s->tokens);
    free(cert);
    free(key);
    return rc;
}
