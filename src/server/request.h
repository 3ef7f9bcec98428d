/*
 * request.h — the pure half of `esrc serve`: turning a request's raw target
 * and body into values the routes use, and the scope arithmetic of tokens.
 * No sockets, no store, no printing: a fuzz target drives all of it
 * (fuzz/fuzz_serve_request.c), and the server only calls it.
 *
 * The server decodes the request target itself (from the raw URI libmicrohttpd
 * logs, before its own unescaping), so that a stream key holding '/' is sent
 * as %2F inside one path segment and never mistaken for a path separator.
 */
#ifndef ESRC_SERVER_REQUEST_H
#define ESRC_SERVER_REQUEST_H

#include <eventsrc.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SRV_MAX_TARGET 8192 /* bytes of a request target */
#define SRV_MAX_SEGMENTS 8
#define SRV_MAX_PARAMS 16
#define SRV_MAX_PREFIXES 16 /* prefixes of a token */

/* What went wrong while decoding; the server maps each to an HTTP status. */
typedef enum srv_fault {
    SRV_OK = 0,
    SRV_BAD_REQUEST = 1, /* 400 */
    SRV_TOO_BIG = 2,     /* 413 */
    SRV_NOT_FOUND = 3,   /* 404 */
} srv_fault;

typedef struct srv_bytes {
    const uint8_t *p; /* borrowed from the structure that holds it */
    size_t len;
} srv_bytes;

/* A decoded request target: path segments and query parameters, every one
 * percent-decoded (and '+' as a space in query values), into `store`. */
typedef struct srv_target {
    srv_bytes seg[SRV_MAX_SEGMENTS];
    size_t n_seg;
    struct {
        srv_bytes name, value;
    } param[SRV_MAX_PARAMS];
    size_t n_param;
    uint8_t store[SRV_MAX_TARGET];
} srv_target;

/* Decode a raw target ("/streams/a%2Fb?limit=10").  Refuses: no leading '/',
 * over SRV_MAX_TARGET bytes, bad %-escapes, empty, "." or ".." segments (raw
 * or escaped), too many segments or parameters, a parameter given twice.
 * @return SRV_OK or a fault with a message in err. */
srv_fault srv_parse_target(srv_target *out, const char *raw, size_t len, char *err, size_t errcap);

/* Does segment i equal the text s? */
bool srv_seg_is(const srv_target *t, size_t i, const char *s);
/* A parameter's value, or NULL when it was not given. */
const srv_bytes *srv_param(const srv_target *t, const char *name);
/* Is every parameter one of the NULL-terminated list `known`?  Names the
 * first unknown one in err. */
bool srv_params_known(const srv_target *t, const char *const *known, char *err, size_t errcap);
/* A parameter as a decimal number in [min, max]; absent: *out = def. */
srv_fault srv_param_u64(uint64_t *out, const srv_target *t, const char *name, uint64_t def,
                        uint64_t min, uint64_t max, char *err, size_t errcap);

/* An append body, decoded.  Either one event object or
 * {"expected": ..., "events": [event, ...]}; an event is
 * {"type" | "type_b64", "data" | "data_b64", "meta" | "meta_b64", "id", "time_us"}
 * where data and meta given as a JSON value other than a string are stored
 * as its compact JSON text.  time_us on the first event keeps that time as
 * the commit time (ES_APPEND_KEEP_TIME).  Free with srv_append_free. */
typedef struct srv_append {
    uint64_t expected;
    es_event_new *events;
    size_t n;
    uint8_t (*ids)[ES_ID_SIZE];
    char **types;
    es_buf *bufs; /* 2 per event: data, meta */
} srv_append;

/* Decode an append body of at most max_events events (SRV_TOO_BIG beyond).
 * A query parameter `expected` (exp_param, may be NULL) is used when the body
 * does not say. */
srv_fault srv_decode_append(srv_append *out, const char *body, size_t len, size_t max_events,
                            const srv_bytes *exp_param, char *err, size_t errcap);
void srv_append_free(srv_append *a);

/* A multi-stream append (es_append_multi): {"ops": [{"stream" | "stream_b64",
 * "expected", "events": [event, ...]}, ...]}, at most max_events events in
 * all.  aops[i] borrows from ops[i] and keys[i].  Free with srv_multi_free. */
typedef struct srv_multi {
    size_t n;
    srv_append *ops;
    es_buf *keys;
    es_append_op *aops;
} srv_multi;

srv_fault srv_decode_multi(srv_multi *out, const char *body, size_t len, size_t max_events,
                           char *err, size_t errcap);
void srv_multi_free(srv_multi *m);

/* An expectation: any | exists | no-stream | SEQ. */
int srv_parse_expected(uint64_t *out, const char *s, size_t len);

/* A subscription's creation body, decoded into options whose pointers are
 * borrowed from `json` (keep it alive while using them). */
typedef struct srv_sub_create {
    const char *name;
    es_sub_options opts;
    const void *prefixes[ES_MAX_SUB_FILTERS];
    size_t prefix_lens[ES_MAX_SUB_FILTERS];
    const char *types[ES_MAX_SUB_FILTERS];
    json_t *json; /* owned */
} srv_sub_create;

srv_fault srv_decode_sub_create(srv_sub_create *out, const char *body, size_t len, char *err,
                                size_t errcap);
void srv_sub_create_free(srv_sub_create *c);

/* A subscription start in a JSON value: "beginning" | "end" | position (a
 * number or a string of digits) | "@TIME". */
srv_fault srv_decode_start(es_sub_start *start, uint64_t *position, int64_t *time_us,
                           const json_t *v, char *err, size_t errcap);

/* ---- scopes ---- */

/* A set of stream-key prefixes ("" is every stream), kept free of overlap:
 * none is a prefix of another, sorted by bytes.  Then the ranges of keys they
 * cover are disjoint and in key order, so listing them one after the other
 * lists keys in order. */
typedef struct srv_prefixes {
    uint8_t key[SRV_MAX_PREFIXES][ES_MAX_KEY];
    size_t len[SRV_MAX_PREFIXES];
    size_t n;
} srv_prefixes;

/* Add p to s (dropping what p covers, or p when covered).  @return 0, -1 when
 * full or p is over ES_MAX_KEY bytes. */
int srv_prefixes_add(srv_prefixes *s, const void *p, size_t len);
/* The keys both in s and under q: the intersection as prefixes. */
void srv_prefixes_within(srv_prefixes *out, const srv_prefixes *s, const void *q, size_t qlen);
/* Is key under one of s's prefixes? */
bool srv_prefixes_cover(const srv_prefixes *s, const void *key, size_t len);
/* The longest prefix common to all of s (for a cursor's prefix). */
size_t srv_prefixes_common(const srv_prefixes *s);

/* Percent-encode bytes for a path segment or query value (unreserved
 * characters as is).  @return 0, or -1 when out of memory. */
int srv_escape(es_buf *out, const uint8_t *p, size_t n);

/* ---- encoding ---- */

/* A JSON string: bytes that are UTF-8 text (checked first with
 * srv_is_text) quoted and escaped as jansson's json_dumps does.  @return 0,
 * or -1 when out of memory. */
int srv_json_str(es_buf *out, const uint8_t *p, size_t n);
/* Bytes that esrc_json_set_bytes would keep as a JSON string: valid UTF-8
 * without NUL (jansson's rules: no overlong forms, surrogates or code points
 * past U+10FFFF). */
bool srv_is_text(const uint8_t *p, size_t n);
/* `"name":"text"` or `"name_b64":"base64"`, as esrc_json_set_bytes. */
int srv_json_bytes(es_buf *out, const char *name, const uint8_t *p, size_t n);
/* One event as compact JSON, the same bytes as
 * json_dumps(esrc_event_json(ev), JSON_COMPACT), written straight into out
 * (a page of 1000 events built as jansson trees cost more than the store's
 * read).  @return 0, or -1 when out of memory. */
int srv_event_json(es_buf *out, const es_event *ev);

#endif
