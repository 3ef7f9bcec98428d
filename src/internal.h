/*
 * internal.h — what the library's own files share and the public header does
 * not promise: error helpers, the store handle, and small byte utilities.
 * Internal names carry a double-underscore prefix (es__…).
 */
#ifndef ES_INTERNAL_H
#define ES_INTERNAL_H

#include "eventsrc.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <string.h>

#include "backend.h"

#if defined(__GNUC__)
#define ES__PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define ES__PRINTF(a, b)
#endif

/* Allocation (alloc.c): malloc and friends, with failure injection for the
 * tests.  Memory from these is released with free(). */
void *es__malloc(size_t n);
void *es__calloc(size_t n, size_t size);
void *es__realloc(void *p, size_t n);
char *es__strdup(const char *s);
/* Tests: let n allocations succeed, fail the next one, then succeed again
 * (n < 0: never fail); resets es__alloc_count(). */
void es__alloc_fail_after(long n);
unsigned long es__alloc_count(void);

/* Set the calling thread's last error and return `code`. */
int es__err(int code, const char *fmt, ...) ES__PRINTF(2, 3);

struct es_store {
    const es__backend *ops;
    void *be;
    es_clock_fn clock;
    void *clock_payload;
    unsigned flags;
    /* the highest position this handle has had acknowledged (catch-up) */
    _Atomic uint64_t max_acked;
    /* crypto-shredding (shred.c): master key and cached rules, under shred_mu */
    struct es__shred_state *shred;
    /* is the store a replica (es_replicate's record in its kv table)?
     * 0 not known yet, 1 no, 2 yes: learnt at the first append */
    _Atomic int replica;
};

/* shred.c */
int es__shred_init(es_store *st);
void es__shred_free(es_store *st);
/* Is this data an encrypted envelope (its magic)? */
bool es__shred_is_envelope(const void *data, size_t len);
/* Encrypt the events of the ops under a rule: *enc_out becomes NULL (nothing to
 * do) or an array of n_ops event arrays to use instead (free with
 * es__shred_free_ops).  ids are the resolved ids, in op order. */
int es__shred_seal_ops(es_event_new ***enc_out, es_store *st, const es_append_op *ops, size_t n_ops,
                       const uint8_t (*ids)[ES_ID_SIZE]);
void es__shred_free_ops(es_event_new **enc, const es_append_op *ops, size_t n_ops);
/* Decrypt an envelope event for a cursor: *out points at the cursor's copy. */
int es__shred_open(const es_event **out, es_cursor *c, const es_event *ev);
void es__shred_cur_free(es_cursor *c);

/* A new event id: time-ordered (the UUIDv7 layout: 48-bit ms time, then
 * random bits), so id indexes grow at their right edge. */
void es__new_id(uint8_t id[ES_ID_SIZE]);

/* The store's clock, in µs since the epoch. */
int64_t es__now(es_store *st);
/* The system's real-time clock. */
int64_t es__realtime_us(void);

/* Chain hash of one event given the previous hash (NULL: zeros). */
void es__chain_hash(uint8_t out[ES_HASH_SIZE], const uint8_t *prev, const uint8_t *stream,
                    size_t stream_len, uint64_t seq, int64_t time_us, const uint8_t id[ES_ID_SIZE],
                    const char *type, size_t type_len, const void *data, size_t data_len,
                    const void *meta, size_t meta_len);

/* Big-endian integer helpers (memcpy + byte swap: one load and one bswap). */
static inline void es__put_u64(uint8_t *p, uint64_t v)
{
#if defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    v = __builtin_bswap64(v);
    memcpy(p, &v, 8);
#else
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
#endif
}
static inline uint64_t es__get_u64(const uint8_t *p)
{
#if defined(__GNUC__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    uint64_t v;
    memcpy(&v, p, 8);
    return __builtin_bswap64(v);
#else
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
#endif
}
static inline void es__put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}
static inline uint32_t es__get_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Does [key, key+len) start with prefix? */
static inline bool es__has_prefix(const uint8_t *key, size_t len, const void *prefix,
                                  size_t prefix_len)
{
    return prefix_len <= len && (prefix_len == 0 || memcmp(key, prefix, prefix_len) == 0);
}

/* Map a callback's non-zero return to what the API hands back: one of the
 * library's codes as is, anything else ES_EUSER (the value in the message). */
static inline int es__cb_rc(int r)
{
    /* a code the library set with its message (a callback that called the
     * library, or the library's own codec) keeps that message */
    if (ES_IS_ERRNO(r) && es_error_last_code() == r)
        return r;
    if (ES_IS_ERRNO(r))
        return es__err(r, "stopped by a callback (%s)", es_strerror(r));
    return es__err(ES_EUSER, "stopped by a callback that returned %d", r);
}

/* Check an options struct's version: every version from 1 up to the one
 * this library knows is accepted (older callers keep working; the caller
 * copies only the fields that version has).  `what` names the struct. */
static inline int es__check_version(unsigned version, unsigned current, const char *what)
{
    if (version >= 1 && version <= current)
        return 0;
    return es__err(ES_EINVAL, "%s.version is %u; this library knows 1..%u", what, version, current);
}

#endif
