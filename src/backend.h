/*
 * backend.h — the storage vtable.  A backend stores events, the stream and
 * id indexes, and snapshot records; it knows nothing of views or operations.
 * Each backend is one file in src/backend/ that fills an es__backend.
 *
 * The library checks every argument before calling a backend, so backends
 * may assume valid, in-limit input.  Backends report failures with es__err().
 */
#ifndef ES_BACKEND_H
#define ES_BACKEND_H

#include "eventsrc.h"

#include <stdbool.h>

typedef struct es__append_req {
    const uint8_t *stream;
    size_t stream_len;
    uint64_t expected;
    const es_event_new *events;
    size_t n;
    const uint8_t (*ids)[ES_ID_SIZE]; /* resolved ids, n of them */
    bool keep_time;                   /* use events[0].time_us */
    size_t payload_bytes;             /* sum of type, data and meta lengths */
} es__append_req;

/* A persisted snapshot record (opaque value bytes). */
typedef struct es__snap {
    uint8_t state; /* es_snap_state */
    uint64_t seq;
    int64_t time_us;
    const uint8_t *data;
    size_t len;
} es__snap;

/* Every cursor starts with this header; backends embed it first. */
typedef struct es__cursor_ops {
    int (*next)(const es_event **out, es_cursor *cur);
    void (*free)(es_cursor *cur);
} es__cursor_ops;

struct es_cursor {
    const es__cursor_ops *ops;
    /* filters and limits applied by the generic layer */
    uint64_t limit;
    uint64_t returned;
    uint8_t *prefix;
    size_t prefix_len;
    char *type;
    size_t type_len;
    /* commit-time range (inclusive); to_time_us INT64_MAX when unbounded */
    int64_t from_time_us, to_time_us;
    bool time_ordered; /* the backend's log never goes back in time: stop past to_time_us */
    bool done;
    /* crypto-shredding (shred.c): set by the generic layer */
    es_store *st;
    bool raw;                 /* deliver encrypted events as stored */
    es_event out;             /* the event handed out (backends need not set .shred) */
    struct es__shred_cur *sc; /* decryption state, allocated at the first envelope */
};

/* Fields for the tamper hook (tests of es_verify). */
enum {
    ES__F_KEY,
    ES__F_SEQ,
    ES__F_POSITION,
    ES__F_TIME,
    ES__F_ID,
    ES__F_TYPE,
    ES__F_DATA,
    ES__F_META,
    ES__F_HASH,
    ES__F_COUNT
};

typedef struct es__backend {
    const char *name;
    int (*open)(void **out, const char *path, const es_open_options *opts, es_store *st);
    void (*close)(void *be);
    /* Append every request or none, in one commit; outs[i] for reqs[i].  A
     * request whose ids all landed before is answered from the original
     * (outs[i].replayed) and writes nothing. */
    int (*append)(void *be, const es__append_req *reqs, size_t n, es_append_result *outs);
    int (*head)(void *be, const uint8_t *stream, size_t len, uint64_t *out);
    int (*last_position)(void *be, uint64_t *out);
    /* opts are normalised: from_seq >= 1 forward; to_seq = UINT64_MAX when unbounded. */
    int (*stream_cursor)(es_cursor **out, void *be, const uint8_t *stream, size_t len,
                         const es_read_options *opts);
    /* The backend may use the prefix/type filters to skip work; the generic
     * layer re-checks them. */
    int (*log_cursor)(es_cursor **out, void *be, const es_log_options *opts);
    int (*streams)(void *be, const void *prefix, size_t prefix_len, es_stream_fn fn, void *payload);
    int (*stats)(void *be, es_store_stats *out);
    /* Snapshots: stored per (skey, seq). */
    int (*snap_put)(void *be, const uint8_t *skey, size_t sklen, const es__snap *snap);
    /* The snapshot with the greatest seq such that seq <= max_seq and
     * time_us <= max_time; its bytes are copied into buf.  ES_ENOTFOUND if none. */
    int (*snap_get)(void *be, const uint8_t *skey, size_t sklen, uint64_t max_seq, int64_t max_time,
                    es__snap *out, es_buf *buf);
    /* Seqs of the retained snapshots, ascending (at most cap). */
    int (*snap_list)(void *be, const uint8_t *skey, size_t sklen, uint64_t *seqs, size_t cap,
                     size_t *n);
    int (*snap_del)(void *be, const uint8_t *skey, size_t sklen, uint64_t seq);
    /* Optional: wait until the log's last position is past `after` (0) or
     * timeout_ms passes (ES_ETIMEDOUT).  NULL: the library polls. */
    int (*wait)(void *be, uint64_t after, int timeout_ms);
    /* Optional: a position that no event committed so far can have or pass
     * (postgres: the next transaction id's first position).  NULL: the last
     * position plus one (stores that commit in position order). */
    int (*position_ceiling)(void *be, uint64_t *out);
    /* Test hook: flip byte `offset` (mod the field's size) of one field of the
     * event at `position`, below the API, as a disk fault or an attacker would. */
    int (*tamper)(void *be, uint64_t position, int field, size_t offset);
    /* A small key-value table for the library's own records (subscriptions,
     * checkpoints, leases), with compare-and-set.  Each value has a version
     * (0: absent) taken from a counter of the whole store, so a version is
     * never reused, even after a delete and a re-create.  kv_get fills val
     * and *version (0 and an empty val when absent).  kv_cas writes val (or
     * deletes, val NULL) only if the current version is `expected` (0: must
     * be absent), else ES_ECONFLICT; *version gets the new version (0 after
     * a delete).
     * kv_list calls fn for each key with the prefix, in key order.  NULL:
     * the store has no such table (ES_ENOTSUP). */
    int (*kv_get)(void *be, const uint8_t *key, size_t klen, es_buf *val, uint64_t *version);
    int (*kv_cas)(void *be, const uint8_t *key, size_t klen, uint64_t expected, const uint8_t *val,
                  size_t vlen, uint64_t *version);
    /* Optional: kv_cas of an update whose loss in a crash of the store's
     * server is harmless (a subscription's checkpoint: the events after an
     * older one are delivered again), so its commit need not wait for a
     * flush.  NULL: kv_cas. */
    int (*kv_cas_lazy)(void *be, const uint8_t *key, size_t klen, uint64_t expected,
                       const uint8_t *val, size_t vlen, uint64_t *version);
    int (*kv_list)(void *be, const uint8_t *prefix, size_t plen,
                   int (*fn)(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                             uint64_t version, void *payload),
                   void *payload);
    /* Optional: a consistent, compacted copy of the live store into
     * directory `dir` (es_store_backup).  NULL: ES_ENOTSUP. */
    int (*backup)(void *be, const char *dir);
    /* Commit times never go back along the global log (a single writer
     * assigns positions and times in commit order): time-range reads may
     * then seek and stop early. */
    bool log_time_ordered;
} es__backend;

/*
 * Idempotent-retry check, shared by backends.  `lookup` finds an event by id
 * (returns 1 and fills ev's stream/seq/position/time, 0 when absent, or a
 * negative code).  Returns 0 when no id of the batch is stored (go on and
 * append), 1 when the whole batch is stored as a retry (out filled), or
 * ES_EDUPLICATE / ES_ECONFLICT.
 */
typedef int (*es__id_lookup_fn)(void *ctx, const uint8_t id[ES_ID_SIZE], es_event *ev);
int es__idempotency_check(const es__append_req *req, es__id_lookup_fn lookup, void *ctx,
                          uint64_t head, es_append_result *out);

/* Does `head` satisfy `expected`? */
bool es__expect_ok(uint64_t expected, uint64_t head);

/* Commit time for an append (one per commit, from its first request): the
 * clock (or the kept time), never below the store's latest commit time.
 * Returns ES_EINVAL for a kept time that goes back. */
int es__commit_time(es_store *st, const es__append_req *req, int64_t last_time, int64_t *out);
/* A kept time (ES_APPEND_KEEP_TIME) may be at most ES_MAX_TIME_AHEAD_US past
 * the store's clock; checked only for requests that write, so that a retry
 * of an append that landed is answered whatever its time. */
int es__check_kept_time(es_store *st, int64_t t);

extern const es__backend es__backend_mem;
#ifdef ES_HAVE_LMDB
extern const es__backend es__backend_lmdb;
#endif
#ifdef ES_HAVE_PG
extern const es__backend es__backend_pg;
#endif
#ifdef ES_HAVE_HTTP
extern const es__backend es__backend_http;
#endif

#endif
