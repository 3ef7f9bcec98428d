/*
 * eventsrc.h — the public API of libeventsrc, an event-sourcing library and
 * event store.
 *
 * Every change is an immutable event appended to a stream (a stream key and
 * seqs 1, 2, 3 … with no gaps).  Every table, index or replica is a fold over
 * those events.  This header is the reference documentation: if it is not
 * declared here, it is not API.
 *
 * Conventions
 *  - Functions return int: 0 (ES_OK) on success, a negative ES_E* code on
 *    failure.  es_strerror() names a code; es_error_last() gives the detail
 *    of the last failure on the calling thread.
 *  - Out-parameters come first and are named `out`; callbacks take their
 *    `payload` last.  A non-zero return from a callback stops the operation:
 *    a negative ES_E* code is handed back as is, any other value becomes
 *    ES_EUSER.
 *  - Handles: open → use → free.  Every free/close function accepts NULL.
 *  - Memory is borrowed unless a call says otherwise; each call says how
 *    long borrowed memory stays valid.
 *  - A store handle (es_store) may be used from many threads at once.  A
 *    cursor belongs to one thread at a time.  A view handle is read-only
 *    after creation and may be shared.
 */
/* The public header is laid out by hand (aligned field comments, one-line
 * initialiser macros), which clang-format would undo. */
/* clang-format off */
#ifndef EVENTSRC_H
#define EVENTSRC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(ES_STATIC)
#define ES_EXTERN
#elif defined(__GNUC__) && __GNUC__ >= 4
#define ES_EXTERN __attribute__((visibility("default")))
#else
#define ES_EXTERN
#endif

/* ------------------------------------------------------------------ */
/* Version                                                              */
/* ------------------------------------------------------------------ */

#define ES_VERSION_MAJOR 0
#define ES_VERSION_MINOR 1
#define ES_VERSION_PATCH 0
#define ES_VERSION_STRING "0.1.0"
/** ES_VERSION_NUMBER is (major * 10000 + minor * 100 + patch). */
#define ES_VERSION_NUMBER (ES_VERSION_MAJOR * 10000 + ES_VERSION_MINOR * 100 + ES_VERSION_PATCH)
/** True when the header is version major.minor.patch or later, e.g.
 *  `#if ES_VERSION_CHECK(0, 2, 0)` around code that needs 0.2's calls. */
#define ES_VERSION_CHECK(major, minor, patch)                                                    \
    (ES_VERSION_NUMBER >= ((major) * 10000 + (minor) * 100 + (patch)))

/** @return the version of the library linked at run time, e.g. "0.1.0". */
ES_EXTERN const char *es_version(void);

/* ------------------------------------------------------------------ */
/* Errors                                                               */
/* ------------------------------------------------------------------ */

/*
 * One table makes both the codes and their messages (see es_strerror).
 *
 * The library's codes live in a reserved band, ES_ERRNO_BASE - 1 down to
 * ES__ERRNO_LAST + 1 (-30001 …), the way LMDB keeps its codes apart from
 * errno values.  A callback of yours may hand one of these codes back and it
 * reaches the caller as is; any other non-zero value (the common -1, an
 * errno, a positive number) reaches the caller as ES_EUSER, with the value
 * in es_error_last()'s message.  New codes are only ever added at the end.
 */
#define ES_ERRNO_BASE (-30000)
#define ES_ERRNO_MAP(X)                                                        \
    X(EINVAL, -30001, "invalid argument")                                      \
    X(ECONFLICT, -30002, "stream is not at the expected seq")                  \
    X(ENOTFOUND, -30003, "not found")                                          \
    X(ETOOBIG, -30004, "too big")                                              \
    X(ENOMEM, -30005, "out of memory")                                         \
    X(EIO, -30006, "I/O error")                                                \
    X(EUNAVAILABLE, -30007, "store unavailable")                               \
    X(ECORRUPT, -30008, "data is corrupt")                                     \
    X(ITEROVER, -30009, "end of iteration")                                    \
    X(EUSER, -30010, "stopped by a callback")                                  \
    X(EDUPLICATE, -30011, "event id already used elsewhere")                   \
    X(ENOTSUP, -30012, "not supported by this store")                          \
    X(EFULL, -30013, "store or disk is full")                                  \
    X(ERROR, -30014, "error")                                                  \
    X(ETIMEDOUT, -30015, "timed out")                                          \
    X(EPOISON, -30016, "an event failed too often")

typedef enum es_errno {
    ES_OK = 0, /* success */
#define ES__ERRNO_ENUM(name, code, msg) ES_##name = code,
    ES_ERRNO_MAP(ES__ERRNO_ENUM)
#undef ES__ERRNO_ENUM
} es_errno;

/* One below the map's last code, counted from the map (its codes are dense). */
#define ES__ERRNO_COUNT_ONE(name, code, msg) +1
#define ES__ERRNO_LAST (ES_ERRNO_BASE - (0 ES_ERRNO_MAP(ES__ERRNO_COUNT_ONE)) - 1)

/** Is `code` one of the library's ES_E* codes (not ES_OK)? */
#define ES_IS_ERRNO(code) ((code) < ES_ERRNO_BASE && (code) > ES__ERRNO_LAST)

/** @return a static, human-readable name for an ES_* code ("unknown error"
 *  for codes this version does not know). Never NULL. */
ES_EXTERN const char *es_strerror(int code);

/** @return the message of the last failure on the calling thread, with
 *  detail (e.g. "stream key is 300 bytes; the limit is 255"), or "" when no
 *  call failed yet.  Valid until the next eventsrc call on this thread. */
ES_EXTERN const char *es_error_last(void);

/** @return the code of the last failure on the calling thread (0 if none). */
ES_EXTERN int es_error_last_code(void);

/** Clear the calling thread's last error. */
ES_EXTERN void es_error_clear(void);

/* ------------------------------------------------------------------ */
/* Limits (checked by every call; exceeding one returns ES_ETOOBIG)     */
/* ------------------------------------------------------------------ */

#define ES_MAX_KEY 255                 /* stream key: 1..255 bytes (any bytes) */
#define ES_MAX_TYPE 255                /* type name: 1..255 bytes, no NUL */
#define ES_MAX_DATA (16u << 20)        /* event data: 0..16 MiB */
#define ES_MAX_META (64u << 10)        /* event metadata: 0..64 KiB */
#define ES_MAX_BATCH 10000             /* events in one append */
#define ES_MAX_BATCH_BYTES (64u << 20) /* data + metadata of one append */
#define ES_MAX_VIEW_NAME 64            /* view name: 1..64 bytes, no NUL */
#define ES_MAX_VIEW_KEY 255            /* view key and shard key */
#define ES_ID_SIZE 16
#define ES_HASH_SIZE 32

/* ------------------------------------------------------------------ */
/* Growable byte buffer (used by view encoders and a few results)      */
/* ------------------------------------------------------------------ */

typedef struct es_buf {
    uint8_t *data; /* owned; free with es_buf_free */
    size_t len;
    size_t cap;
} es_buf;

#define ES_BUF_INIT {NULL, 0, 0}

/** Append n bytes.  @return 0, ES_ENOMEM, ES_ETOOBIG (over 1 GiB). */
ES_EXTERN int es_buf_put(es_buf *buf, const void *data, size_t n);
/** Empty the buffer but keep its memory. */
ES_EXTERN void es_buf_reset(es_buf *buf);
/** Release the memory; the buffer is then empty and reusable. NULL ok. */
ES_EXTERN void es_buf_free(es_buf *buf);

/* ------------------------------------------------------------------ */
/* Events                                                               */
/* ------------------------------------------------------------------ */

/**
 * An event as stored.  Returned by cursors; every pointer is borrowed from
 * the cursor (see es_cursor_next for how long it stays valid).
 *
 * The chain hash is BLAKE2b-256 (libsodium crypto_generichash, 32 bytes) of
 * the previous event's hash in the same stream (32 zero bytes before seq 1)
 * followed by the event's canonical bytes:
 *
 *   "es1" | u8 key_len | key | u64be seq | i64be time_us | id[16]
 *         | u8 type_len | type | u32be data_len | data | u32be meta_len | meta
 *
 * The global position is not hashed, so a stream copied into another store
 * (export/import, replica) keeps its hashes.
 */
typedef struct es_event {
    const uint8_t *stream; /* stream key */
    size_t stream_len;
    uint64_t seq;      /* 1, 2, 3 … within the stream */
    uint64_t position; /* global position: increases in commit order, from 1 */
    int64_t time_us;   /* commit time, µs since the Unix epoch (store's clock) */
    uint8_t id[ES_ID_SIZE];
    const char *type; /* NUL-terminated; type_len excludes the NUL */
    size_t type_len;
    const uint8_t *data;
    size_t data_len;
    const uint8_t *meta;
    size_t meta_len;
    uint8_t hash[ES_HASH_SIZE]; /* chain hash, see above */
    unsigned shred;    /* ES_SHRED_*: was the data encrypted, and could it be
                          read?  (see "Crypto-shredding"); 0 for plain events */
} es_event;

/**
 * An event to append.  `id` may be NULL: the library then makes one,
 * time-ordered (the UUIDv7 layout: 48 bits of ms time, 74 random bits),
 * which keeps id indexes compact.  Give ids yourself to make appends safely
 * retryable (see es_append); random ones work, time-ordered ones write less.
 * `time_us` is used only by es_append_ex with ES_APPEND_KEEP_TIME (imports);
 * otherwise the store's clock decides and the field is ignored.
 */
typedef struct es_event_new {
    const char *type; /* NUL-terminated, 1..ES_MAX_TYPE bytes */
    const void *data; /* may be NULL when data_len is 0 */
    size_t data_len;
    const void *meta; /* may be NULL when meta_len is 0 */
    size_t meta_len;
    const uint8_t *id; /* ES_ID_SIZE bytes, or NULL */
    int64_t time_us;
} es_event_new;

/* ------------------------------------------------------------------ */
/* Store                                                                */
/* ------------------------------------------------------------------ */

typedef struct es_store es_store;

/** A clock: µs since the Unix epoch.  Called once per commit, from the
 *  appending thread (any thread that appends), possibly while the store's
 *  write transaction is open: it must be quick and thread-safe and must not
 *  call back into the store.  A clock that goes back is harmless: a commit's
 *  time is never below the store's latest commit time. */
typedef int64_t (*es_clock_fn)(void *payload);

#define ES_OPEN_OPTIONS_VERSION 1

/* Flags for es_open_options.flags. */
#define ES_OPEN_NOSYNC 0x1u   /* lmdb: do not fsync commits (a crash of the
                                 machine may lose acknowledged appends) */
#define ES_OPEN_READONLY 0x2u /* open for reading only */
#define ES_OPEN_NOCREATE 0x4u /* fail with ES_ENOTFOUND if the store is missing */

typedef struct es_open_options {
    unsigned version;   /* ES_OPEN_OPTIONS_VERSION */
    unsigned flags;     /* ES_OPEN_* */
    es_clock_fn clock;  /* NULL: the system's real-time clock */
    void *clock_payload;
    uint64_t map_size;  /* lmdb: initial map size in bytes (0: 1 GiB of address
                           space, not of disk); grows by itself */
    int timeout_ms;     /* postgres: bounds the wait for a pooled connection, each
                           statement (the server's statement_timeout) and each
                           answer (timeout_ms + 2 s); a wait that runs out
                           returns ES_ETIMEDOUT (0: 10000) */
} es_open_options;

#define ES_OPEN_OPTIONS_INIT {ES_OPEN_OPTIONS_VERSION, 0, NULL, NULL, 0, 0}

/**
 * Open a store.
 *
 * URIs: "mem:" (in memory, gone at es_store_close; "mem:NAME" is the same),
 * "lmdb:PATH" (PATH a directory, created if missing; options may follow
 * as a query: "lmdb:PATH?nosync" is ES_OPEN_NOSYNC, "?map_size=BYTES" the
 * initial map size; an unknown option is ES_EINVAL.  Processes and handles
 * sharing one directory share its first opener's sync mode),
 * "postgres://…" / "postgresql://…" (libpq connection URI).
 *
 * @param[out] out   the store, to be closed with es_store_close
 * @param uri        NUL-terminated URI
 * @param opts       options or NULL for the defaults
 * @return 0, ES_EINVAL (bad URI or options), ES_ENOTSUP (scheme not built
 *         in), ES_ENOTFOUND (NOCREATE and missing), ES_EIO, ES_EUNAVAILABLE,
 *         ES_ECORRUPT, ES_ENOMEM.
 */
ES_EXTERN int es_store_open(es_store **out, const char *uri, const es_open_options *opts);

/** Close a store; NULL is ignored.  Cursors must be freed first. */
ES_EXTERN void es_store_close(es_store *store);

/** @return the scheme of an open store: "mem", "lmdb" or "postgres". */
ES_EXTERN const char *es_store_kind(const es_store *store);

/* Expected state of a stream for es_append.  Any other value N means
 * "the stream's head is exactly N" (N = 0 is the same as NO_STREAM). */
#define ES_EXPECT_ANY UINT64_MAX            /* no check */
#define ES_EXPECT_EXISTS (UINT64_MAX - 1)   /* head >= 1 */
#define ES_EXPECT_NO_STREAM ((uint64_t)0)   /* head == 0 */
#define ES_SEQ_MAX ((uint64_t)1 << 62)      /* seqs and positions stay below */

typedef struct es_append_result {
    uint64_t first_seq; /* seq of the first event appended */
    uint64_t last_seq;  /* seq of the last one = the stream's new head */
    uint64_t first_position;
    uint64_t last_position;
    int64_t time_us; /* commit time of the batch */
    uint64_t head;   /* the stream's head: after the append, or the actual
                        head when the call returned ES_ECONFLICT */
    int replayed;    /* 1 when this was a retry answered from the original */
    uint64_t reserved_[4]; /* zeroed; later fields come from here, so the size
                              of this struct never changes */
} es_append_result;

/**
 * Append events to one stream, atomically: all of them or none.
 *
 * If every event id of the batch already landed, consecutively and in
 * order, in this stream, nothing is written and `out` holds the original
 * result with out->replayed = 1 (an idempotent retry) — provided the
 * expectation held at the original position, else ES_ECONFLICT.  If only
 * some ids landed, or landed elsewhere, the call fails with ES_EDUPLICATE.
 *
 * @param[out] out  result; may be NULL.  On ES_ECONFLICT, out->head is the
 *                  stream's current head and the other fields are 0.
 * @param store     the store
 * @param stream    stream key, 1..ES_MAX_KEY bytes
 * @param expected  ES_EXPECT_ANY, ES_EXPECT_EXISTS, ES_EXPECT_NO_STREAM or a seq
 * @param events    n events; each checked against the limits
 * @return 0, ES_EINVAL, ES_ETOOBIG, ES_ECONFLICT, ES_EDUPLICATE, ES_ENOMEM,
 *         ES_EIO, ES_EFULL, ES_EUNAVAILABLE, ES_ETIMEDOUT.  On any error but
 *         ES_EUNAVAILABLE and ES_ETIMEDOUT nothing is written.  After those
 *         two (postgres: the connection was lost, or no answer came within
 *         timeout_ms) the append may have landed: retry it with the same
 *         event ids, which returns the original result (`replayed`) if it did.
 */
ES_EXTERN int es_append(es_append_result *out, es_store *store, const void *stream,
                        size_t stream_len, uint64_t expected, const es_event_new *events,
                        size_t n);

/* Flags for es_append_ex. */
#define ES_APPEND_KEEP_TIME 0x1u /* use events[0].time_us as the commit time
                                    (imports); it must be >= the store's latest
                                    commit time and at most ES_MAX_TIME_AHEAD_US
                                    past the store's clock, else ES_EINVAL.  A
                                    retry of an append that landed is answered
                                    from the original whatever its time. */
#define ES_APPEND_RAW 0x2u       /* write data and metadata exactly as given:
                                    no shredding rule applies, and encrypted
                                    envelopes (from a raw cursor) are accepted
                                    as they are (replicas, imports) */
#define ES_APPEND_TO_REPLICA 0x4u /* append to a replica (a store es_replicate
                                    writes into): refused (ES_EINVAL) without
                                    this flag, so that only its replicator (and
                                    a deliberate override) writes there.  A
                                    handle learns that its store is a replica
                                    at its first append. */
/* How far past its clock a kept time may be: a day.  A time far in the
 * future would pin every later commit time of the store to it. */
#define ES_MAX_TIME_AHEAD_US ((int64_t)86400 * 1000000)

/** es_append with flags (ES_APPEND_*). */
ES_EXTERN int es_append_ex(es_append_result *out, es_store *store, const void *stream,
                           size_t stream_len, uint64_t expected, const es_event_new *events,
                           size_t n, unsigned flags);

/** One stream's part of es_append_multi. */
typedef struct es_append_op {
    const void *stream;
    size_t stream_len;
    uint64_t expected; /* as for es_append */
    const es_event_new *events;
    size_t n;
} es_append_op;

/**
 * Append to several streams in ONE atomic commit: every op lands or none
 * does.  Each op is checked like an es_append (a stream may appear in
 * several ops; a later op sees the earlier ones' events).  The limits of
 * one append (events, bytes) hold for the whole call.
 *
 * @param[out] out  n_ops results, out[i] for ops[i].  On ES_ECONFLICT the
 *                  op that failed has its stream's head in out[i].head.
 * @return as es_append.
 */
ES_EXTERN int es_append_multi(es_append_result *out, es_store *store, const es_append_op *ops,
                              size_t n_ops, unsigned flags);

/**
 * The head of a stream: its last seq, 0 when the stream has no events.
 * @return 0, ES_EINVAL, ES_EIO, ES_EUNAVAILABLE.
 */
ES_EXTERN int es_stream_head(uint64_t *out, es_store *store, const void *stream,
                             size_t stream_len);

/** The store's last global position (0 when empty): every event up to it
 *  is visible to a log cursor.  Positions increase but need not be dense
 *  (postgres: a transaction id times 16384 plus the index in the commit). */
ES_EXTERN int es_store_last_position(uint64_t *out, es_store *store);

/**
 * Wait until the global log has an event past `after` (its last position >
 * after), for tailing.  postgres: polls from every 5 ms, backing off to
 * 100 ms, and LISTENs as well, so writers opened with `notify=1` wake it at
 * once (polling alone keeps it working behind a transaction-pooling proxy);
 * lmdb and mem: polls every 5 ms (another process may be the writer).
 * @param timeout_ms  0..86400000
 * @return 0 (there is a new event), ES_ETIMEDOUT (the timeout passed),
 *         ES_EINVAL, ES_EIO, ES_EUNAVAILABLE.
 */
ES_EXTERN int es_log_wait(es_store *store, uint64_t after, int timeout_ms);

/**
 * Wait until the global log, read through any handle, shows every event this
 * handle has had acknowledged (read your writes on the log).  Stream reads
 * and heads always show an acknowledged append at once; the global log may
 * lag: on postgres it shows an event only once every transaction that
 * started before it has ended (milliseconds, or as long as a long
 * transaction elsewhere lasts).  mem and lmdb: returns at once.
 * @param timeout_ms  0..86400000
 * @return 0, ES_ETIMEDOUT (the log did not catch up in time), ES_EINVAL,
 *         ES_EIO, ES_EUNAVAILABLE.
 */
ES_EXTERN int es_log_catch_up(es_store *store, int timeout_ms);

/* ------------------------------------------------------------------ */
/* Cursors                                                              */
/* ------------------------------------------------------------------ */

typedef struct es_cursor es_cursor;

#define ES_READ_OPTIONS_VERSION 1

typedef struct es_read_options {
    unsigned version;
    int backward;      /* 0: ascending seq; 1: descending */
    uint64_t from_seq; /* first seq to return (inclusive); 0: the start
                          (forward) or the head (backward) */
    uint64_t to_seq;   /* last seq to return (inclusive); 0: no bound */
    uint64_t limit;    /* at most this many events; 0: no limit */
} es_read_options;

#define ES_READ_OPTIONS_INIT {ES_READ_OPTIONS_VERSION, 0, 0, 0, 0}

/**
 * Open a cursor over one stream.  A cursor reads a consistent state of the
 * stream as of some moment at or after this call.
 * @param[out] out  the cursor; free with es_cursor_free
 * @return 0, ES_EINVAL, ES_ENOMEM, ES_EIO, ES_EUNAVAILABLE.
 */
ES_EXTERN int es_stream_cursor(es_cursor **out, es_store *store, const void *stream,
                               size_t stream_len, const es_read_options *opts);

#define ES_LOG_OPTIONS_VERSION 2

typedef struct es_log_options {
    unsigned version;
    uint64_t from_position; /* first position to return (inclusive); 0 = 1 */
    const void *prefix;     /* only streams whose key starts with it; NULL: all */
    size_t prefix_len;
    const char *type; /* only events of this type; NULL: all */
    uint64_t limit;   /* 0: no limit */
    /* version 2: a commit-time range, µs since the epoch (both inclusive;
     * 0: unbounded).  On stores whose commit times never go back along the
     * log (mem, lmdb) the cursor starts at the first event at or after
     * from_time_us by a binary search and stops at the first one past
     * to_time_us; elsewhere (postgres) the range is a filter. */
    int64_t from_time_us;
    int64_t to_time_us;
} es_log_options;

#define ES_LOG_OPTIONS_INIT {ES_LOG_OPTIONS_VERSION, 0, NULL, 0, NULL, 0, 0, 0}

/**
 * Open a cursor over the global log, in position order.  The log never
 * skips an event: a position is returned only when every event before it
 * is committed and visible.
 * @return 0, ES_EINVAL, ES_ENOMEM, ES_EIO, ES_EUNAVAILABLE.
 */
ES_EXTERN int es_log_cursor(es_cursor **out, es_store *store, const es_log_options *opts);

/**
 * Next event.  The event and every pointer in it are borrowed from the
 * cursor: valid until the next es_cursor_next or es_cursor_free on it.
 * Do not modify or free them.
 * @return 0 (an event), ES_ITEROVER (no more: the normal end), or an error
 *         (ES_EIO, ES_ECORRUPT, ES_EUNAVAILABLE, ES_ENOMEM, ES_EINVAL).
 */
ES_EXTERN int es_cursor_next(const es_event **out, es_cursor *cursor);

/** Free a cursor; NULL is ignored. */
ES_EXTERN void es_cursor_free(es_cursor *cursor);

/** Call `fn` for each stream whose key starts with `prefix` (NULL: all), in
 *  key order, with its head.  fn returns 0 to go on.
 *  @return 0, ES_EINVAL, ES_EUSER or fn's negative code, ES_EIO, ... */
typedef int (*es_stream_fn)(const uint8_t *stream, size_t stream_len, uint64_t head,
                            void *payload);
ES_EXTERN int es_streams(es_store *store, const void *prefix, size_t prefix_len,
                         es_stream_fn fn, void *payload);

typedef struct es_store_stats {
    uint64_t events;        /* number of events */
    uint64_t streams;       /* number of streams */
    uint64_t last_position; /* last global position */
    uint64_t snapshots;     /* persisted snapshots */
    uint64_t bytes;         /* bytes used on disk or in memory (approximate) */
    uint64_t reserved_[8];  /* zeroed; later fields come from here */
} es_store_stats;

ES_EXTERN int es_store_stats_get(es_store_stats *out, es_store *store);

/* ------------------------------------------------------------------ */
/* Chain verification                                                   */
/* ------------------------------------------------------------------ */

typedef struct es_verify_result {
    uint64_t events_checked;
    uint64_t streams_checked;
    int ok; /* 1: every event matched */
    /* the first event that did not match (when ok == 0): */
    uint8_t bad_stream[ES_MAX_KEY];
    size_t bad_stream_len;
    uint64_t bad_seq;
    uint64_t bad_position;
    char reason[128];
    uint64_t reserved_[8]; /* zeroed; later fields come from here */
} es_verify_result;

/**
 * Recompute chain hashes and check seqs: of one stream (stream != NULL) or
 * of the whole store (stream == NULL, walking the global log).
 * @return 0 when the walk finished (check out->ok), ES_EINVAL, ES_EIO, ...
 */
ES_EXTERN int es_verify(es_verify_result *out, es_store *store, const void *stream,
                        size_t stream_len);

/** Compute the chain hash of an event given the previous hash (NULL for the
 *  first event of a stream).  Reads every field of `ev` except position and
 *  hash. @return 0 or ES_EINVAL. */
ES_EXTERN int es_event_hash(uint8_t out[ES_HASH_SIZE], const uint8_t *prev,
                            const es_event *ev);

/* ------------------------------------------------------------------ */
/* Verifiable history: a Merkle tree over the global log                */
/* ------------------------------------------------------------------ */

/*
 * The global log is also a Merkle tree in the style of Certificate
 * Transparency (RFC 9162), so that a small signed digest of the whole log
 * can be published, and later checked against: an event is in it (an
 * inclusion proof), and today's log extends it, nothing before it changed
 * (a consistency proof) — each in O(log n) hashes.  doc/verifiable-history.md
 * has the format, for verifiers written elsewhere.
 *
 *  - Leaf i (from 0) is the i-th event of the log in position order
 *    (positions need not be dense; leaves are).  H is BLAKE2b-256.
 *    leaf  = H(0x00 | event chain hash | u64be position)
 *    node  = H(0x01 | left | right)
 *    empty = H("")
 *  - A tree of n > 1 leaves splits at k, the largest power of two below n:
 *    root = node(root of leaves 0..k-1, root of leaves k..n-1).
 *  - The tree covers the events the log shows (es_store_last_position).  It
 *    is kept, in chunks of 256 leaves, in the store's own record table and
 *    caught up from the log by the calls below (appends do no extra work).
 *    Two processes catching it up at once are safe.
 */

#define ES_MERKLE_MAX_PATH 64    /* hashes in a proof (trees below 2^63 leaves) */
#define ES_SIGN_PUBLIC_KEY_SIZE 32 /* Ed25519 (libsodium crypto_sign) */
#define ES_SIGN_SECRET_KEY_SIZE 64
#define ES_SIGNATURE_SIZE 64

/** The state of the log's tree. */
typedef struct es_digest {
    uint64_t size;              /* leaves: events covered */
    uint8_t root[ES_HASH_SIZE]; /* the tree's root */
    uint64_t last_position;     /* position of the last leaf (0: empty) */
    int64_t time_us;            /* when the digest was made (the store's clock) */
    uint64_t reserved_[4];      /* zeroed */
} es_digest;

/** A proof that one event is a leaf of the tree of `size` leaves. */
typedef struct es_inclusion_proof {
    uint64_t index;                   /* the leaf */
    uint64_t size;                    /* leaves of the tree it is proved in */
    uint64_t position;                /* the event's position */
    uint8_t event_hash[ES_HASH_SIZE]; /* the event's chain hash */
    uint32_t n_path;                  /* hashes in path */
    uint8_t path[ES_MERKLE_MAX_PATH][ES_HASH_SIZE]; /* RFC 9162 audit path, leaf side first */
} es_inclusion_proof;

/** A proof that the tree of new_size leaves extends the one of old_size. */
typedef struct es_consistency_proof {
    uint64_t old_size, new_size;
    uint32_t n_path;
    uint8_t path[ES_MERKLE_MAX_PATH][ES_HASH_SIZE]; /* RFC 9162 order */
} es_consistency_proof;

/**
 * The digest of the log now: catches the tree up with the log (and keeps
 * what it computed for the next call) and gives its size and root.
 * @return 0, ES_EINVAL, ES_ECORRUPT, ES_ENOMEM, ES_EIO, ES_EUNAVAILABLE.
 */
ES_EXTERN int es_digest_get(es_digest *out, es_store *store);

/**
 * Prove that the event at `position` is in the tree of `tree_size` leaves
 * (0: the tree now).  The proof is made from the events themselves: when an
 * event the tree covered was changed since, the call fails with ES_ECORRUPT.
 * @return 0, ES_ENOTFOUND (no event at that position, or not yet covered),
 *         ES_EINVAL (tree_size past the tree, or the event past tree_size),
 *         ES_ECORRUPT, ES_ENOMEM, ES_EIO, ES_EUNAVAILABLE.
 */
ES_EXTERN int es_prove_inclusion(es_inclusion_proof *out, es_store *store, uint64_t position,
                                 uint64_t tree_size);

/** es_prove_inclusion of the event `seq` of `stream`. @return as it. */
ES_EXTERN int es_prove_event(es_inclusion_proof *out, es_store *store, const void *stream,
                             size_t stream_len, uint64_t seq, uint64_t tree_size);

/**
 * Prove that the tree of `new_size` leaves extends the tree of `old_size`
 * leaves (old_size <= new_size <= the tree now: see es_digest_get).
 * @return 0, ES_EINVAL, ES_ECORRUPT, ES_ENOMEM, ES_EIO, ES_EUNAVAILABLE.
 */
ES_EXTERN int es_prove_consistency(es_consistency_proof *out, es_store *store, uint64_t old_size,
                                   uint64_t new_size);

/** The leaf hash of an event (see above). */
ES_EXTERN void es_merkle_leaf(uint8_t out[ES_HASH_SIZE], const uint8_t event_hash[ES_HASH_SIZE],
                              uint64_t position);

/**
 * Check an inclusion proof against a digest, with no store: every hash of
 * the path is used, the path must be exactly as long as (index, size) say,
 * and the result must be the digest's root.
 * @return 0 (the event is leaf proof->index of the digest's tree),
 *         ES_ECORRUPT (it does not verify; es_error_last() says why),
 *         ES_EINVAL (NULL).
 */
ES_EXTERN int es_verify_inclusion(const es_inclusion_proof *proof, const es_digest *digest);

/** Check a consistency proof between two digests, with no store.
 *  @return 0, ES_ECORRUPT (it does not verify), ES_EINVAL (NULL). */
ES_EXTERN int es_verify_consistency(const es_consistency_proof *proof, const es_digest *old_digest,
                                    const es_digest *new_digest);

/**
 * Does today's log extend `old`?  Unlike a proof, which a client checks
 * against what the store hands it, this is the operator's check of the
 * store itself, and trusts nothing the store keeps about its tree: it
 * re-reads the log once, recomputes every leaf and chunk, checks that the
 * first old->size leaves give old->root, checks a consistency proof to the
 * tree now, and checks the store's records of its tree against the log.
 * It reads chain hashes as stored: run es_verify too, which checks them.
 * @param[out] out  out->ok: 1 when the log extends the digest; else the
 *                  reason, and the first position found changed (if known)
 * @param[out] now  the digest of the log now, recomputed (may be NULL)
 * @return 0 when the check ran (see out->ok), ES_EINVAL, ES_ENOMEM, ES_EIO,
 *         ES_EUNAVAILABLE.
 */
ES_EXTERN int es_verify_since(es_verify_result *out, es_digest *now, es_store *store,
                              const es_digest *old);

/** Sign a digest with an Ed25519 secret key (libsodium's 64-byte form).
 *  The signed message is documented in doc/verifiable-history.md.
 *  @return 0, ES_EINVAL. */
ES_EXTERN int es_digest_sign(uint8_t sig[ES_SIGNATURE_SIZE], const es_digest *digest,
                             const uint8_t secret_key[ES_SIGN_SECRET_KEY_SIZE]);

/** @return 0 when sig is the key's signature of the digest, ES_ECORRUPT
 *  when it is not, ES_EINVAL. */
ES_EXTERN int es_digest_check_signature(const es_digest *digest,
                                        const uint8_t sig[ES_SIGNATURE_SIZE],
                                        const uint8_t public_key[ES_SIGN_PUBLIC_KEY_SIZE]);

/* ------------------------------------------------------------------ */
/* Views: folds over a stream                                           */
/* ------------------------------------------------------------------ */

typedef enum es_snap_state {
    ES_SNAP_NONE = 0,    /* no value yet */
    ES_SNAP_VALUE = 1,   /* a value */
    ES_SNAP_DELETED = 2, /* the value was deleted */
} es_snap_state;

/* What an apply callback did with an event. */
typedef enum es_fold {
    ES_FOLD_UNCHANGED = 0, /* event does not concern this key; seq still advances */
    ES_FOLD_CHANGED = 1,   /* the accumulator now holds a value */
    ES_FOLD_DELETED = 2,   /* the value is gone; the library resets the accumulator */
} es_fold;

#define ES_VIEW_DEF_VERSION 2

/**
 * A view.  A view key (bytes) maps to the stream holding its events
 * (`stream_key`) and, optionally, to a coarser shard key (`shard_key`): the
 * fold then runs once per shard, its snapshots are stored per shard, and
 * `select` picks one view key's value out of the shard's accumulator.
 * Without shard_key the fold key is the view key itself.
 *
 * The accumulator is a `void *` the callbacks own the shape of:
 *  - init:   make an empty accumulator for a fold key.
 *  - apply:  fold one event into it (mutate in place) and say what changed.
 *  - encode / decode: persist snapshots (encode appends to `out`).
 *  - free_value: free an accumulator (and, when select is NULL, a value).
 *  - select (sharded views): make a new value for `vkey` from the shard's
 *    accumulator; return 1 when found, 0 when absent, or a negative code.
 *  - free_selected: free a value made by select (NULL: free_value).
 *
 * Callbacks return 0 (or an es_fold for apply) on success; a non-zero code
 * aborts the call that ran them (see the conventions at the top for how it
 * reaches the caller).
 *
 * Simple views need only `apply` (version 2):
 *  - stream_key NULL: the view key is the stream key.
 *  - value_size > 0 (with init, encode, decode and free_value NULL): the
 *    value is a plain struct of that many bytes with no pointers inside,
 *    zeroed by init and stored in snapshots byte for byte (same machine
 *    layout; change view_version when the struct changes).  `apply` gets a
 *    pointer to it.
 *  - a JSON value (a jansson json_t *): see eventsrc_json.h.
 */
typedef struct es_view_def {
    unsigned version; /* ES_VIEW_DEF_VERSION */
    const char *name; /* 1..ES_MAX_VIEW_NAME bytes */
    uint32_t view_version; /* change it when the fold changes: old snapshots are then ignored */
    int (*stream_key)(uint8_t out[ES_MAX_KEY], size_t *out_len, const uint8_t *vkey,
                      size_t vkey_len, void *payload);
    int (*shard_key)(uint8_t out[ES_MAX_VIEW_KEY], size_t *out_len, const uint8_t *vkey,
                     size_t vkey_len, void *payload); /* NULL: not sharded */
    int (*init)(void **out, const uint8_t *fkey, size_t fkey_len, void *payload);
    int (*apply)(void *acc, const es_event *ev, const uint8_t *fkey, size_t fkey_len,
                 void *payload);
    int (*encode)(es_buf *out, const void *acc, void *payload);
    int (*decode)(void **out, const uint8_t *data, size_t len, void *payload);
    void (*free_value)(void *acc, void *payload);
    int (*select)(void **out, const void *acc, const uint8_t *vkey, size_t vkey_len,
                  void *payload);
    void (*free_selected)(void *value, void *payload);
    void *payload;
    size_t value_size; /* version 2: plain-old-data values (see above); 0: none */
} es_view_def;

typedef struct es_view es_view;

#define ES_VIEW_OPTIONS_VERSION 1

typedef struct es_view_options {
    unsigned version;
    uint32_t snapshot_every; /* persist when the snapshot is this many events
                                behind (0: 100; UINT32_MAX: never persist) */
    uint32_t keep;           /* snapshots retained per key (0: 4; 1..64) */
} es_view_options;

#define ES_VIEW_OPTIONS_INIT {ES_VIEW_OPTIONS_VERSION, 0, 0}

/** Make a view over a store.  `def` is copied (its strings too); the store
 *  must outlive the view.  @return 0, ES_EINVAL, ES_ENOMEM. */
ES_EXTERN int es_view_new(es_view **out, es_store *store, const es_view_def *def,
                          const es_view_options *opts);
ES_EXTERN void es_view_free(es_view *view);

/**
 * A snapshot of a view key: a state, the value (owned by the snapshot when
 * state is ES_SNAP_VALUE), and the seq and time of the last event folded
 * (an unchanged event still advances them).  Clear with es_snapshot_clear.
 */
typedef struct es_snapshot {
    es_snap_state state;
    uint64_t seq;
    int64_t time_us;
    void *value;
} es_snapshot;

#define ES_SNAPSHOT_INIT {ES_SNAP_NONE, 0, 0, NULL}

/** Free the snapshot's value (through the view's callbacks) and reset it. */
ES_EXTERN void es_snapshot_clear(es_snapshot *snap, const es_view *view);

/* Consistency of es_view_get. */
typedef enum es_consistency {
    ES_LATEST_EVENT = 0,    /* fold up to the stream's latest event (default) */
    ES_LATEST_SNAPSHOT = 1, /* the latest persisted snapshot only, no reads of events */
} es_consistency;

/**
 * The value of a view key.  Starts from the latest persisted snapshot, folds
 * the events after it, and persists a new snapshot when the old one was
 * `snapshot_every` or more events behind.
 * @param[out] out  must be cleared with es_snapshot_clear
 * @return 0, ES_EINVAL, ES_ENOMEM, ES_EIO, ES_ECORRUPT, a callback's code.
 */
ES_EXTERN int es_view_get(es_snapshot *out, es_view *view, const void *vkey, size_t vkey_len,
                          es_consistency consistency);

/** The value after the event with seq `seq` (seq 0: before any event; a seq
 *  past the head gives the latest). Starts from the nearest retained
 *  snapshot at or before it. */
ES_EXTERN int es_view_get_at(es_snapshot *out, es_view *view, const void *vkey,
                             size_t vkey_len, uint64_t seq);

/** The value as of time `time_us`: after every event committed at or before it. */
ES_EXTERN int es_view_get_as_of(es_snapshot *out, es_view *view, const void *vkey,
                                size_t vkey_len, int64_t time_us);

/** History: called after each event from seq `from_seq` (1 = all) on, with
 *  the snapshot after that event (borrowed, valid during the call) and the
 *  event.  Return 0 to go on. */
typedef int (*es_history_fn)(const es_snapshot *snap, const es_event *ev, void *payload);
ES_EXTERN int es_view_history(es_view *view, const void *vkey, size_t vkey_len,
                              uint64_t from_seq, es_history_fn fn, void *payload);

/* ------------------------------------------------------------------ */
/* Save: operations appended atomically                                 */
/* ------------------------------------------------------------------ */

typedef struct es_op_ctx es_op_ctx;
typedef struct es_op es_op;

/**
 * An operation sees the current snapshot of the key (as updated by the
 * events of the operations before it in the same save) and either emits
 * events (es_op_emit) or rejects (es_op_reject).  It may run several times
 * when a save retries after a conflict, so it must not have side effects
 * beyond emitting or rejecting.
 */
struct es_op {
    int (*run)(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op);
    void *payload;
    /* used by the built-in operations; free for custom ones */
    const es_event_new *events;
    size_t n_events;
    uint64_t seq;
};

/** Emit an event (copied).  @return 0, ES_EINVAL, ES_ETOOBIG, ES_ENOMEM. */
ES_EXTERN int es_op_emit(es_op_ctx *ctx, const es_event_new *ev);
/**
 * Emit an event (copied) for ANOTHER stream than the view key's, appended in
 * the same atomic commit as the save's own events, with its own expectation
 * (ES_EXPECT_NO_STREAM, a seq, …).  The first event a save emits for a
 * stream sets that stream's expectation; later ones for it follow in the
 * same commit.  If that stream is not as expected, the save conflicts and
 * runs its operations again, like a conflict on its own stream: an
 * operation that claims something elsewhere (a unique username as the
 * stream "username/homer", expected no stream) must look at that stream
 * itself each time it runs and reject when the claim is taken.  A save
 * whose operations emit only with this call writes nothing to the view
 * key's stream and is not checked against it: the other streams'
 * expectations are what make it conditional.
 * @return 0, ES_EINVAL (NULL, empty key, or the view key's own stream),
 *         ES_ETOOBIG, ES_ENOMEM.
 */
ES_EXTERN int es_op_emit_to(es_op_ctx *ctx, const void *stream, size_t stream_len,
                            uint64_t expected, const es_event_new *ev);
/** Reject with a reason (copied). @return 0, ES_EINVAL, ES_ENOMEM. */
ES_EXTERN int es_op_reject(es_op_ctx *ctx, const char *reason);

/** Emits `events` when the key has no value (state NONE or DELETED), else
 *  rejects with "duplicate value".  The events array must outlive the save. */
ES_EXTERN es_op es_op_if_new(const es_event_new *events, size_t n);
/** Emits `events` when the snapshot's seq equals `seq`, else rejects with
 *  "sequence mismatch". */
ES_EXTERN es_op es_op_if_seq(uint64_t seq, const es_event_new *events, size_t n);

typedef enum es_save_status {
    ES_SAVED = 0,
    ES_REJECTED = 1,
    ES_GAVE_UP = 2,
} es_save_status;

typedef struct es_save_result {
    es_save_status status;
    es_snapshot snapshot; /* SAVED: the new value; else the last one seen */
    uint64_t last_seq;    /* SAVED: seq of the last event appended */
    unsigned retries;     /* conflicts retried */
    char **reasons;       /* REJECTED: n_reasons strings (owned) */
    size_t n_reasons;
} es_save_result;

#define ES_SAVE_RESULT_INIT {ES_SAVED, ES_SNAPSHOT_INIT, 0, 0, NULL, 0}

/** Free what a save result owns. */
ES_EXTERN void es_save_result_clear(es_save_result *res, const es_view *view);

#define ES_SAVE_OPTIONS_VERSION 1

typedef struct es_save_options {
    unsigned version;
    unsigned max_attempts;   /* 0: 16 */
    uint32_t max_total_ms;   /* 0: 10000 */
    uint32_t backoff_base_us; /* 0: 200 */
    uint32_t backoff_cap_us;  /* 0: 100000 */
} es_save_options;

#define ES_SAVE_OPTIONS_INIT {ES_SAVE_OPTIONS_VERSION, 0, 0, 0, 0}

/**
 * Save: read the latest snapshot of `vkey`, run the operations in order, and
 * append all their events as one atomic append at exactly snapshot.seq + 1
 * to the key's stream.  On a conflict the snapshot is caught up (only the
 * new events are read) and the operations run again, after a full-jitter
 * exponential backoff, until max_attempts or max_total_ms.
 *
 * A save whose operations emit nothing is SAVED with no append.  Once its
 * append succeeded a save is SAVED and returns 0 whatever happens next: if
 * memory runs out while it builds out->snapshot, that snapshot is left
 * empty (ES_SNAP_NONE, seq 0) and es_view_get gives the value.
 *
 * @param[out] out  result, cleared with es_save_result_clear
 * @return 0 when out->status says what happened; ES_EINVAL, ES_ENOMEM,
 *         ES_EIO, ES_EUNAVAILABLE, or an operation's negative code.
 */
ES_EXTERN int es_save(es_save_result *out, es_view *view, const void *vkey, size_t vkey_len,
                      const es_op *ops, size_t n_ops, const es_save_options *opts);

/* ------------------------------------------------------------------ */
/* Subscriptions: durable, checkpointed delivery of the global log      */
/* ------------------------------------------------------------------ */

/*
 * A subscription is a named, durable reader of the global log: filters, a
 * start, and a checkpoint kept in the store itself, so a consumer in any
 * process (or, on postgres, any machine) resumes where the last one
 * acknowledged.  Delivery is at least once: events after the checkpoint are
 * delivered again after a crash, so handlers treat the event's position as
 * an idempotence key.  Events arrive in global log order (so in seq order
 * per stream), and the log never skips an event, even when writers commit
 * out of order.
 *
 * One consumer at a time owns a subscription: es_sub_open takes a lease
 * (renewed as the consumer reads and acknowledges); a second opener gets
 * ES_ECONFLICT until the owner closes or its lease runs out, and an owner
 * whose lease was taken over is told so (ES_ECONFLICT) at its next
 * checkpoint — never two owners writing one checkpoint.
 *
 * Consumer groups.  A subscription created with `partitions` = P > 1 splits
 * its events by stream: an event belongs to partition
 * es_sub_partition_of(stream key, P), so one stream is always in one
 * partition, and each partition has its own checkpoint.  Consumers that
 * open it with a `group` name are members of its group: the live members,
 * ordered by their random ids, own the partitions in turn (partition i goes
 * to member i mod M), and each member delivers only its partitions' events,
 * in log order.  Membership is a lease kept in the subscription's record:
 * a member that joins takes the partitions due to it as their owners
 * release them (at their next es_sub_next); a member that dies is dropped
 * when its lease runs out and the others take its partitions over from
 * their checkpoints.  A partition has at most one owner at any time.  One
 * subscription has one group: opening it with another group name, or
 * without one while members are live, is ES_ECONFLICT (create a second
 * subscription for an independent consumer).  Without a group, one consumer
 * owns every partition.
 *
 * Poison events.  A consumer that cannot handle an event says so with
 * es_sub_nack: the events before it count as acknowledged, and it is
 * delivered again after a backoff (retry_ms, doubling, at most 30 s).  Its
 * `max_attempts`-th failure parks it: a record with its position, attempts
 * and last error is kept (es_sub_parked_list), and the subscription either
 * goes on past it (ES_SUB_PARK) or stops before it (ES_SUB_STOP: the
 * consumer gets ES_EPOISON until the event is dropped or retried).
 * es_sub_parked_retry has a parked event delivered once more (ahead of new
 * events) to the owner of its partition; es_sub_parked_drop forgets it.
 * Failure counts live in the consumer: a consumer that crashes starts them
 * again.
 */
typedef struct es_sub es_sub;

#define ES_MAX_SUB_NAME 64   /* 1..64 bytes of [A-Za-z0-9._-] */
#define ES_MAX_SUB_FILTERS 16 /* prefixes, and types */
#define ES_MAX_SUB_PARTITIONS 64 /* partitions of a consumer group */
#define ES_MAX_SUB_MEMBERS 64    /* live members of a consumer group */
#define ES_MAX_SUB_ERROR 1024    /* bytes of a parked event's error kept */

typedef enum es_sub_start {
    ES_SUB_FROM_BEGINNING = 0, /* every event of the log */
    ES_SUB_FROM_END = 1,       /* only events after the subscription's creation */
    ES_SUB_FROM_POSITION = 2,  /* events at or after start_position */
    ES_SUB_FROM_TIME = 3,      /* events committed at or after start_time_us */
} es_sub_start;

typedef enum es_sub_on_poison {
    ES_SUB_PARK = 0, /* park the event and go on */
    ES_SUB_STOP = 1, /* park the event and stop before it */
} es_sub_on_poison;

#define ES_SUB_OPTIONS_VERSION 2

typedef struct es_sub_options {
    unsigned version;
    /* only streams whose key starts with one of these (none: all) */
    const void *const *prefixes;
    const size_t *prefix_lens;
    size_t n_prefixes;
    /* only events of one of these types (none: all) */
    const char *const *types;
    size_t n_types;
    es_sub_start start;
    uint64_t start_position; /* ES_SUB_FROM_POSITION */
    int64_t start_time_us;   /* ES_SUB_FROM_TIME */
    uint32_t batch_size;     /* events per batch: 1..ES_MAX_BATCH (0: 100) */
    /* version 2 */
    uint32_t partitions;     /* 1..ES_MAX_SUB_PARTITIONS (0: 1) */
    uint32_t max_attempts;   /* failures that park an event: 1..100 (0: 5) */
    es_sub_on_poison on_poison;
    uint32_t retry_ms;       /* first backoff after a failure: 1..60000 (0: 100) */
} es_sub_options;

#define ES_SUB_OPTIONS_INIT {ES_SUB_OPTIONS_VERSION, NULL, NULL, 0, NULL, 0, ES_SUB_FROM_BEGINNING, 0, 0, 0, 0, 0, ES_SUB_PARK, 0}

/** The partition of a stream key among `partitions` (1..ES_MAX_SUB_PARTITIONS;
 *  others answer 0): FNV-1a (64 bits) of the key, modulo `partitions`.
 *  Stable across versions and machines. */
ES_EXTERN uint32_t es_sub_partition_of(const void *stream, size_t stream_len, uint32_t partitions);

/**
 * Create a subscription.
 * @return 0, ES_EINVAL (bad name or options), ES_ETOOBIG, ES_ECONFLICT (a
 *         subscription of that name exists), ES_ENOTSUP, ES_EIO,
 *         ES_EUNAVAILABLE, ES_ENOMEM.
 */
ES_EXTERN int es_sub_create(es_store *store, const char *name, const es_sub_options *opts);

/** Delete a subscription and its checkpoint.  A consumer that has it open
 *  gets ES_ENOTFOUND at its next checkpoint.
 *  @return 0, ES_ENOTFOUND, ES_EINVAL, ES_EIO, ES_EUNAVAILABLE. */
ES_EXTERN int es_sub_delete(es_store *store, const char *name);

/**
 * Move a subscription's checkpoint, for a replay (or to skip ahead): the next
 * batch starts at the first event at or after `position`
 * (ES_SUB_FROM_POSITION), at or after `time_us` (ES_SUB_FROM_TIME), at the
 * beginning or after the current end.  A consumer that has it open picks
 * the new checkpoint up at its next batch or checkpoint.
 * @return 0, ES_ENOTFOUND, ES_EINVAL, ES_EIO, ES_EUNAVAILABLE.
 */
ES_EXTERN int es_sub_reset(es_store *store, const char *name, es_sub_start start,
                           uint64_t position, int64_t time_us);

typedef enum es_sub_state {
    ES_SUB_IDLE = 0,        /* no consumer holds the lease */
    ES_SUB_CATCHING_UP = 1, /* a consumer holds it, and is behind the log */
    ES_SUB_LIVE = 2,        /* a consumer holds it, and is at the log's end */
    ES_SUB_STOPPED = 3,     /* an ES_SUB_STOP subscription stopped before a
                               parked event (drop or retry it to go on) */
} es_sub_state;

typedef struct es_sub_info {
    char name[ES_MAX_SUB_NAME + 1];
    uint64_t checkpoint;    /* position acknowledged (0: none yet) */
    uint64_t head;          /* the log's last position */
    uint64_t behind;        /* matching events after the checkpoint (capped) */
    int behind_capped;      /* 1: there are more than `behind` */
    int64_t behind_us;      /* now (the store's clock, which commit times come
                               from) minus the commit time of the oldest
                               unacknowledged event (0: none) */
    int64_t last_ack_us;    /* when the checkpoint last moved, by the store's
                               clock (0: never) */
    es_sub_state state;
    int64_t lease_until_us; /* the owner's lease, by the system's real-time
                               clock that all processes share (0: none) */
    uint64_t acked;         /* events acknowledged over the subscription's life */
    uint32_t partitions;    /* 1, or a consumer group's partitions */
    uint32_t members;       /* live consumers (group members, or the one owner) */
    uint64_t parked;        /* parked events */
    char group[ES_MAX_SUB_NAME + 1]; /* the group consuming it ("" none) */
    uint64_t reserved_[8];
} es_sub_info;

/** Lag and health of one subscription.
 *  @return 0, ES_ENOTFOUND, ES_EINVAL, ES_EIO, ES_EUNAVAILABLE. */
ES_EXTERN int es_sub_info_get(es_sub_info *out, es_store *store, const char *name);

/** Call fn for every subscription, by name.  fn returns 0 to go on. */
typedef int (*es_sub_info_fn)(const es_sub_info *info, void *payload);
ES_EXTERN int es_sub_list(es_store *store, es_sub_info_fn fn, void *payload);

typedef struct es_sub_partition_info {
    uint32_t partition;
    uint64_t checkpoint;     /* acknowledged in this partition */
    uint64_t behind;         /* its matching events after the checkpoint (capped) */
    char owner[ES_MAX_SUB_NAME + 1]; /* the owning member's label ("" none) */
    int64_t lease_until_us;  /* the owner's lease (0: none) */
    uint64_t reserved_[4];
} es_sub_partition_info;

/** Call fn for each partition of a subscription, in order (one for a
 *  subscription without partitions).  @return as es_sub_info_get. */
typedef int (*es_sub_partition_fn)(const es_sub_partition_info *info, void *payload);
ES_EXTERN int es_sub_partitions(es_store *store, const char *name, es_sub_partition_fn fn,
                                void *payload);

typedef struct es_sub_parked {
    uint64_t position;      /* the event's position in the log */
    uint32_t partition;
    uint32_t attempts;      /* failures so far */
    int64_t parked_at_us;   /* by the real-time clock */
    int retry;              /* 1: a retry was asked for and is pending */
    const char *error;      /* the last failure's message */
    uint64_t reserved_[4];
} es_sub_parked;

/** Call fn for each parked event of a subscription, by position.
 *  @return 0, ES_ENOTFOUND, ES_EINVAL, ES_ECORRUPT, ES_EIO, ES_EUNAVAILABLE. */
typedef int (*es_sub_parked_fn)(const es_sub_parked *parked, void *payload);
ES_EXTERN int es_sub_parked_list(es_store *store, const char *name, es_sub_parked_fn fn,
                                 void *payload);

/** Deliver a parked event (position; 0: every parked event) once more, to
 *  the owner of its partition, ahead of new events.  On an ES_SUB_STOP
 *  subscription the stopped event is simply forgotten: it is still ahead of
 *  the checkpoint and comes again at the next open.
 *  @return 0, ES_ENOTFOUND (no such subscription or parked event),
 *  ES_EINVAL, ES_EIO, ES_EUNAVAILABLE. */
ES_EXTERN int es_sub_parked_retry(es_store *store, const char *name, uint64_t position);

/** Forget a parked event (position; 0: every one) without delivering it.
 *  On an ES_SUB_STOP subscription its partition's checkpoint moves past it
 *  when nothing before it is left unacknowledged.
 *  @return as es_sub_parked_retry. */
ES_EXTERN int es_sub_parked_drop(es_store *store, const char *name, uint64_t position);

#define ES_SUB_OPEN_OPTIONS_VERSION 2

typedef struct es_sub_open_options {
    unsigned version;
    uint32_t checkpoint_every; /* persist the checkpoint every N acknowledged
                                  events (0: 1, every acknowledgement) */
    uint32_t checkpoint_ms;    /* … or when this long passed since the last one
                                  (0: no time rule) */
    uint32_t lease_ms;         /* ownership lease (0: 10000; 100..3600000) */
    /* version 2 */
    const char *group;         /* join the subscription's consumer group of
                                  this name (NULL: the one consumer) */
    const char *member;        /* this consumer's label in es_sub_partitions
                                  (NULL: "host:pid"); 1..64 printable bytes */
} es_sub_open_options;

#define ES_SUB_OPEN_OPTIONS_INIT {ES_SUB_OPEN_OPTIONS_VERSION, 0, 0, 0, NULL, NULL}

/**
 * Open a subscription as its consumer (takes its lease).
 * @return 0, ES_ENOTFOUND, ES_ECONFLICT (another consumer holds the lease;
 *         the message says until when), ES_EINVAL, ES_EIO, ES_EUNAVAILABLE,
 *         ES_ENOMEM.
 */
ES_EXTERN int es_sub_open(es_sub **out, es_store *store, const char *name,
                          const es_sub_open_options *opts);

/**
 * The next batch: up to batch_size events after the last one delivered,
 * waiting up to timeout_ms for at least one.  Catch-up and live delivery
 * are the same call: no gap and no duplicate where one becomes the other.
 * @param[out] out  an array of *n events, borrowed from the subscription:
 *                  valid until the next es_sub_next or es_sub_close
 * @return 0 (n >= 1), ES_ETIMEDOUT (nothing new in time), ES_ECONFLICT (the
 *         lease was lost), ES_ENOTFOUND (deleted), ES_EINVAL, ES_EIO,
 *         ES_EUNAVAILABLE, ES_ENOMEM.
 */
ES_EXTERN int es_sub_next(const es_event *const **out, size_t *n, es_sub *sub, int timeout_ms);

/**
 * Acknowledge every delivered event up to and including `position`.  The
 * checkpoint is persisted as the open options say (and at es_sub_commit and
 * es_sub_close).  @return 0, ES_EINVAL (a position not delivered, or before
 * the checkpoint), ES_ECONFLICT, ES_ENOTFOUND, ES_EIO, ES_EUNAVAILABLE.
 */
ES_EXTERN int es_sub_ack(es_sub *sub, uint64_t position);

/**
 * The event at `position` (one of the batch in hand) failed with `error`
 * (NULL: none given): the events before it in the batch are acknowledged,
 * and it is delivered again by a later es_sub_next after a backoff — or,
 * at its max_attempts-th failure, parked (see "Poison events").
 * @return 0, ES_EPOISON (parked, and the subscription is ES_SUB_STOP: it
 *         stops here), ES_EINVAL (not an event of the batch in hand),
 *         ES_ECONFLICT, ES_ENOTFOUND, ES_EIO, ES_EUNAVAILABLE.
 */
ES_EXTERN int es_sub_nack(es_sub *sub, uint64_t position, const char *error);

/** Persist the acknowledged checkpoint now. @return as es_sub_ack. */
ES_EXTERN int es_sub_commit(es_sub *sub);

/** Handler for es_sub_run: a batch; return 0 to acknowledge it. */
typedef int (*es_sub_handler)(const es_event *const *events, size_t n, void *payload);

/**
 * Push delivery: call `handler` with each batch and acknowledge it when the
 * handler returns 0, until *stop becomes non-zero (checked between batches
 * and at least every 200 ms while waiting) or an error.  When the handler
 * fails a batch, its events are handed over one at a time to find the one
 * that fails, which is es_sub_nack'ed (retried with backoff, then parked)
 * with the handler's es_error_last() message when it set one.
 * @return 0 (stopped), ES_EPOISON (an ES_SUB_STOP subscription parked an
 *         event), or es_sub_next's errors.
 */
ES_EXTERN int es_sub_run(es_sub *sub, es_sub_handler handler, volatile int *stop, void *payload);

/** Persist the checkpoint (a clean close), release the lease and free.
 *  NULL ok.  Use es_sub_commit first to see whether the checkpoint landed. */
ES_EXTERN void es_sub_close(es_sub *sub);

/* ------------------------------------------------------------------ */
/* Crypto-shredding: per-subject encryption, and forgetting a subject    */
/* ------------------------------------------------------------------ */

/*
 * The data (and, where a rule says so, the metadata) of events in chosen
 * streams is encrypted with a key per subject (a user, a customer), so that
 * es_forget can make it unreadable for good by destroying that one key,
 * while the events stay in the log with their hashes, chains and proofs
 * intact (they cover the ciphertext).  See doc/crypto-shredding.md.
 *
 * Which events: a rule (es_shred_rule_add) names a stream-key prefix; the
 * subject of an event in a matching stream is its stream key up to (not
 * including) the first '/' after the prefix, or the whole key.  With the
 * rule "user/", stream "user/42/profile" has the subject "user/42".  Rules
 * are kept in the store, so every writer applies them; the longest matching
 * prefix wins.  A handle reads the rules at its first append and when it
 * adds one: add rules before writing to their streams.
 *
 * Keys: each subject's key is 32 random bytes, kept in the store encrypted
 * ("wrapped") with a master key that is not: the application hands it to
 * each handle with es_store_set_master_key.  Appending to a stream under a
 * rule without the master key fails (ES_EINVAL): nothing is ever written in
 * plaintext there.  Reading without it gives ES_SHRED_LOCKED events.
 *
 * Encryption: XChaCha20-Poly1305 (libsodium crypto_aead_xchacha20poly1305_
 * ietf), a random nonce per event stored with the ciphertext, and the
 * stream key, event id and type as associated data: a ciphertext copied
 * into another event fails authentication (ES_SHRED_BROKEN).
 *
 * Reading: cursors (and so views, subscriptions, es_sub_*, es_view_*)
 * deliver encrypted events decrypted, with es_event.shred saying what
 * happened.  When the data cannot be read (FORGOTTEN, LOCKED, BROKEN) the
 * event keeps its stream, seq, position, time, id, type and hash; its data
 * is empty (data_len 0), and so is its metadata when the metadata was
 * encrypted too.  A cursor put in raw mode (es_cursor_set_raw) delivers
 * events as stored (ES_SHRED_SEALED), which is what verification, replicas
 * and exports use.
 */
#define ES_SHRED_NONE 0      /* not encrypted: data as written */
#define ES_SHRED_OPEN 1      /* encrypted, and decrypted for this read */
#define ES_SHRED_FORGOTTEN 2 /* its subject was forgotten: data gone for good */
#define ES_SHRED_LOCKED 3    /* no master key, or not the right one */
#define ES_SHRED_BROKEN 4    /* the ciphertext does not authenticate (damaged,
                                or moved from another event) */
#define ES_SHRED_SEALED 5    /* raw cursor: the encrypted envelope as stored */

#define ES_MASTER_KEY_SIZE 32

/* Flags for es_shred_rule_add. */
#define ES_SHRED_META 0x1u /* encrypt the metadata too */

/** Give the handle the master key (ES_MASTER_KEY_SIZE bytes, copied; NULL
 *  forgets it).  @return 0, ES_EINVAL. */
ES_EXTERN int es_store_set_master_key(es_store *store, const uint8_t *key);

/** Encrypt the events of every stream whose key starts with `prefix` (see
 *  above); adding an existing rule again changes its flags.
 *  @return 0, ES_EINVAL, ES_ETOOBIG, ES_ENOTSUP (a store without records),
 *  ES_EIO, ES_EUNAVAILABLE, ES_ENOMEM. */
ES_EXTERN int es_shred_rule_add(es_store *store, const void *prefix, size_t prefix_len,
                                unsigned flags);

/** Call fn for each rule, in prefix order.  fn returns 0 to go on. */
typedef int (*es_shred_rule_fn)(const uint8_t *prefix, size_t prefix_len, unsigned flags,
                                void *payload);
ES_EXTERN int es_shred_rules(es_store *store, es_shred_rule_fn fn, void *payload);

/**
 * Forget a subject: destroy its key, so the data of every event written for
 * it can never be decrypted again (they read as ES_SHRED_FORGOTTEN).  No
 * master key is needed.  Later appends for the subject get a new key.  The
 * store may keep the destroyed key's bytes in free space until reused (see
 * doc/crypto-shredding.md for what an operator does about it).
 * @return 0, ES_ENOTFOUND (no key for that subject), ES_EINVAL, ES_ETOOBIG,
 *         ES_ENOTSUP, ES_EIO, ES_EUNAVAILABLE, ES_ENOMEM.
 */
ES_EXTERN int es_forget(es_store *store, const void *subject, size_t subject_len);

/** Raw mode (raw = 1): the cursor's events come as stored, encrypted ones
 *  as their envelope with shred = ES_SHRED_SEALED.  @return 0, ES_EINVAL. */
ES_EXTERN int es_cursor_set_raw(es_cursor *cursor, int raw);

/* ------------------------------------------------------------------ */
/* Replicas and backups: copies of a store                              */
/* ------------------------------------------------------------------ */

/*
 * A replica is a store that holds a copy of another store's events (all of
 * them, or the streams of a key prefix) with their stream, seq, id, commit
 * time, type, data and metadata, so its hash chains are the source's: the
 * same `es_verify` last hashes on both.  Global positions are the target's
 * own (a postgres position cannot be kept on lmdb), and consecutive source
 * commits with one commit time may land as one target commit.
 *
 * es_replicate copies in source log order, checking every event against
 * the chain it continues in the target (the hash is recomputed; a seq that
 * does not follow, or an event that does not hash to its stored hash, is
 * a source whose history was damaged or rewritten: ES_ECORRUPT, and
 * nothing of it is copied).  Its checkpoint lives in the target, in a
 * record named after the replication ("replica/<name>" in the store's own
 * table, beside subscriptions): the source position copied up to and the
 * last copied event's stream, seq and hash, checked against the source at
 * each start.  The checkpoint moves only after the events before it are
 * committed, so a replicator killed at any moment and started again
 * re-sends at most one batch; events the target already has are compared
 * with the source by hash and skipped (their ids make a re-sent append an
 * idempotent retry), so there is no duplicate and no gap.
 *
 * A store holding a replica record is a replica: `esrc append` and
 * `esrc import` refuse to write to it unless given --force (the library
 * does not refuse: a writer of its own choosing may still append, and the
 * replicator then stops with ES_ECONFLICT or ES_ECORRUPT at the stream it
 * touched).  es_replica_delete turns a replica back into a store of its own.
 *
 * Commit times: a target whose commit times never go back along its log
 * (lmdb, mem) can only take a source event whose time is not before the
 * target's latest commit.  Events are copied by time within a batch, which
 * covers a postgres source whose concurrent commits reach the log slightly
 * out of time order; a source event older than the target's latest commit
 * stops the copy with ES_EINVAL and says so.  So such a target takes a
 * second replication (another name, another prefix) only for events newer
 * than what it holds; a postgres target keeps times per stream and takes
 * any number.
 */
#define ES_MAX_REPLICA_NAME 64 /* 1..64 bytes of [A-Za-z0-9._-] */

#define ES_REPLICATE_OPTIONS_VERSION 1

typedef struct es_replicate_options {
    unsigned version;
    const char *name;     /* the replication's name in the target (NULL: "default") */
    const void *prefix;   /* only streams whose key starts with it (NULL: all); fixed
                             by the first run of a name */
    size_t prefix_len;
    uint32_t batch_size;  /* source events read and checkpointed at a time:
                             1..ES_MAX_BATCH (0: 1000) */
    int follow;           /* 0: stop at the end of the source's log; 1: keep
                             copying new events until *stop becomes non-zero */
} es_replicate_options;

#define ES_REPLICATE_OPTIONS_INIT {ES_REPLICATE_OPTIONS_VERSION, NULL, NULL, 0, 0, 0}

typedef struct es_replicate_result {
    uint64_t copied;   /* events appended to the target by this call */
    uint64_t present;  /* events re-sent that the target already had (checked) */
    uint64_t position; /* the source position the checkpoint is at */
    uint64_t batches;  /* checkpoints written */
    uint64_t reserved_[4];
} es_replicate_result;

/**
 * Copy the events of `source` after the replication's checkpoint into
 * `target`, checkpoint by checkpoint (see above).  With opts->follow it
 * waits for new events (es_log_wait, in slices of 200 ms) until *stop
 * becomes non-zero; `stop` may be NULL without follow.
 * @param[out] out  what was done; may be NULL.  Filled on errors too.
 * @return 0, ES_ECORRUPT (the source's history does not continue what was
 *         copied: rewritten, damaged, or the target was written by another
 *         writer; the message names the stream and seq), ES_ECONFLICT (a
 *         stream of the target moved under the replicator, or another
 *         replicator of the same name moved the checkpoint), ES_EINVAL (bad
 *         options, source == target, a prefix other than the name's first
 *         run's, or a commit time the target cannot keep), ES_EDUPLICATE,
 *         ES_ENOTSUP (the target keeps no records), ES_EIO, ES_EUNAVAILABLE,
 *         ES_ETIMEDOUT, ES_EFULL, ES_ENOMEM.
 */
ES_EXTERN int es_replicate(es_replicate_result *out, es_store *target, es_store *source,
                           const es_replicate_options *opts, volatile int *stop);

typedef struct es_replica_info {
    char name[ES_MAX_REPLICA_NAME + 1];
    uint64_t position;            /* source position copied up to (0: none yet) */
    uint64_t copied;              /* events copied over the replica's life */
    int64_t updated_us;           /* when the checkpoint last moved (real-time clock) */
    uint8_t prefix[ES_MAX_KEY];   /* the streams replicated ("" all) */
    size_t prefix_len;
    uint8_t last_stream[ES_MAX_KEY]; /* the last copied event (in source log order) */
    size_t last_stream_len;
    uint64_t last_seq;
    uint8_t last_hash[ES_HASH_SIZE];
    uint64_t reserved_[8];
} es_replica_info;

/** The checkpoint of replication `name` in `store` (NULL: the first one by
 *  name, i.e. "is this store a replica?").
 *  @return 0, ES_ENOTFOUND (not a replica / no such name), ES_EINVAL,
 *  ES_ECORRUPT, ES_ENOTSUP, ES_EIO, ES_EUNAVAILABLE. */
ES_EXTERN int es_replica_info_get(es_replica_info *out, es_store *store, const char *name);

/** Forget replication `name` of `store` (its events stay): a store with no
 *  replica record left is no longer a replica.
 *  @return 0, ES_ENOTFOUND, ES_EINVAL, ES_ENOTSUP, ES_EIO, ES_EUNAVAILABLE. */
ES_EXTERN int es_replica_delete(es_store *store, const char *name);

/**
 * A consistent copy of a live lmdb store into directory `dir` (created if
 * missing; it must not hold a data.mdb yet), compacted (free pages left
 * out), taken from one read transaction while writers go on.  The copy is
 * a store of its own: open it as "lmdb:DIR".
 * @return 0, ES_ENOTSUP (not an lmdb store), ES_EINVAL (NULL, or dir holds
 *         a store already), ES_EIO, ES_EFULL.
 */
ES_EXTERN int es_store_backup(es_store *store, const char *dir);

#ifdef __cplusplus
}
#endif

#endif /* EVENTSRC_H */
/* clang-format on */
