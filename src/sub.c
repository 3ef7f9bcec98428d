/*
 * sub.c — subscriptions: named, durable readers of the global log with
 * checkpoints, an ownership lease per consumer, consumer groups and parked
 * events, all kept in the store's key-value table (the backend's kv_*
 * calls), so they behave the same on every store.
 *
 * One record per subscription, "sub/<name>": its state (a generation
 * bumped by each reset, counters, the group's name, each partition's
 * checkpoint and owner, each live member's id, label and lease) followed by
 * its definition (filters, start, partitions, poison rule), which never
 * changes.  One record means creating or deleting a subscription is one
 * compare-and-set, so no crash can leave half of one behind, and a change
 * of ownership and the checkpoints it hands over land together.  Every
 * write is conditional on the version read and recomposed from the current
 * record when it lost a race, so a consumer whose lease was taken over
 * cannot move a checkpoint, and a reset is seen by the owner at its next
 * batch.  Parked events are records of their own, "sub/<name>/x/<position
 * in hex>" ('/' is not a name byte, so they never look like a
 * subscription).
 *
 * Delivery reads the log from the last delivered position.  It never
 * skips: a log cursor only returns a position when everything before it is
 * visible, and the subscription only moves its read position past events
 * the cursor returned, or up to a last position read before the scan.  A
 * member keeps, for each partition it owns, the position up to which that
 * partition's events were delivered; a scan starts at the lowest of them
 * (a partition just taken over may be behind) and hands each event over
 * only when its partition is owned and not yet delivered that far.
 */
#include "internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#define SUB_PREFIX "sub/"
#define SUB_PREFIX_LEN 4
#define SUB_DEF_MAGIC1 0x53554231u   /* "SUB1": no partitions, no poison rule */
#define SUB_DEF_MAGIC2 0x53554232u   /* "SUB2" */
#define SUB_STATE_MAGIC1 0x53544131u /* "STA1": one owner, one checkpoint */
#define SUB_STATE_MAGIC2 0x53544132u /* "STA2" */
#define SUB_PARK_MAGIC 0x50524b31u   /* "PRK1" */
#define SUB_BEHIND_CAP 1000000       /* events counted for the lag, at most */
#define SUB_WAIT_SLICE_MS 200        /* es_sub_run checks its stop flag this often */
#define SUB_IDLE_SLICE_MS 500        /* a member without partitions looks again */
#define SUB_MAX_BACKOFF_MS 30000
#define SUB_PARK_KEY_MAX (SUB_PREFIX_LEN + ES_MAX_SUB_NAME + 3 + 16)

/* ---- records ---- */

typedef struct sub_def {
    es_sub_start start;
    uint64_t start_position;
    int64_t start_time_us;
    uint32_t batch_size;
    uint32_t partitions, max_attempts, retry_ms;
    es_sub_on_poison on_poison;
    size_t n_prefixes, n_types;
    uint8_t prefix[ES_MAX_SUB_FILTERS][ES_MAX_KEY];
    size_t prefix_len[ES_MAX_SUB_FILTERS];
    char type[ES_MAX_SUB_FILTERS][ES_MAX_TYPE + 1];
    size_t type_len[ES_MAX_SUB_FILTERS];
} sub_def;

typedef struct sub_part {
    uint64_t checkpoint;
    uint8_t owner[16]; /* a member's id; zeros: none */
} sub_part;

typedef struct sub_member {
    uint8_t id[16];
    int64_t lease_until_us; /* real-time clock */
    char label[ES_MAX_SUB_NAME + 1];
} sub_member;

typedef struct sub_state {
    uint64_t generation; /* bumped by es_sub_reset */
    uint64_t acked;
    uint64_t retry_seq; /* bumped when a parked event is to be retried */
    int64_t last_ack_us;
    char group[ES_MAX_SUB_NAME + 1]; /* "" none: the one consumer */
    uint32_t n_parts, n_members;
    sub_part part[ES_MAX_SUB_PARTITIONS];
    sub_member member[ES_MAX_SUB_MEMBERS];
} sub_state;

static const uint8_t nobody[16];

/* STA2: magic u32 | length of the rest of the state u32 | generation u64 |
 * acked u64 | retry_seq u64 | last_ack i64 | group (u8 len, bytes) |
 * n_parts u16 | n_members u16 | n_parts × (checkpoint u64, owner[16]) |
 * n_members × (id[16], lease i64, label (u8 len, bytes)); the definition
 * follows.  STA1 (one owner and checkpoint) is read as one partition. */
#define STATE1_SIZE (4 + 8 + 8 + 8 + 8 + 16 + 8)

static int state_encode(es_buf *out, const sub_state *s)
{
    uint8_t b[64];
    size_t at = out->len;
    int rc;
    es__put_u32(b, SUB_STATE_MAGIC2);
    es__put_u32(b + 4, 0); /* the length, filled in below */
    es__put_u64(b + 8, s->generation);
    es__put_u64(b + 16, s->acked);
    es__put_u64(b + 24, s->retry_seq);
    es__put_u64(b + 32, (uint64_t)s->last_ack_us);
    uint8_t gl = (uint8_t)strlen(s->group);
    b[40] = gl;
    if ((rc = es_buf_put(out, b, 41)) < 0 || (rc = es_buf_put(out, s->group, gl)) < 0)
        return rc;
    b[0] = (uint8_t)(s->n_parts >> 8), b[1] = (uint8_t)s->n_parts;
    b[2] = (uint8_t)(s->n_members >> 8), b[3] = (uint8_t)s->n_members;
    if ((rc = es_buf_put(out, b, 4)) < 0)
        return rc;
    for (uint32_t i = 0; i < s->n_parts; i++) {
        es__put_u64(b, s->part[i].checkpoint);
        memcpy(b + 8, s->part[i].owner, 16);
        if ((rc = es_buf_put(out, b, 24)) < 0)
            return rc;
    }
    for (uint32_t i = 0; i < s->n_members; i++) {
        const sub_member *m = &s->member[i];
        uint8_t ll = (uint8_t)strlen(m->label);
        memcpy(b, m->id, 16);
        es__put_u64(b + 16, (uint64_t)m->lease_until_us);
        b[24] = ll;
        if ((rc = es_buf_put(out, b, 25)) < 0 || (rc = es_buf_put(out, m->label, ll)) < 0)
            return rc;
    }
    es__put_u32(out->data + at + 4, (uint32_t)(out->len - at - 8));
    return 0;
}

/* Decode the state; *used gets the bytes it takes (the definition follows). */
static int state_decode(sub_state *s, size_t *used, const uint8_t *p, size_t n, const char *name)
{
    memset(s, 0, sizeof *s);
    if (!p || n < 8)
        goto bad;
    if (es__get_u32(p) == SUB_STATE_MAGIC1) {
        if (n < STATE1_SIZE)
            goto bad;
        p += 4;
        s->n_parts = 1;
        s->part[0].checkpoint = es__get_u64(p), p += 8;
        s->last_ack_us = (int64_t)es__get_u64(p), p += 8;
        s->acked = es__get_u64(p), p += 8;
        s->generation = es__get_u64(p), p += 8;
        if (memcmp(p, nobody, 16) != 0) {
            s->n_members = 1;
            memcpy(s->member[0].id, p, 16);
            memcpy(s->part[0].owner, p, 16);
            s->member[0].lease_until_us = (int64_t)es__get_u64(p + 16);
        }
        *used = STATE1_SIZE;
        return 0;
    }
    if (es__get_u32(p) != SUB_STATE_MAGIC2)
        goto bad;
    size_t len = es__get_u32(p + 4);
    if (len > n - 8 || len < 37)
        goto bad;
    const uint8_t *end = p + 8 + len;
    p += 8;
    s->generation = es__get_u64(p);
    s->acked = es__get_u64(p + 8);
    s->retry_seq = es__get_u64(p + 16);
    s->last_ack_us = (int64_t)es__get_u64(p + 24);
    size_t gl = p[32];
    p += 33;
    if (gl > ES_MAX_SUB_NAME || (size_t)(end - p) < gl + 4)
        goto bad;
    memcpy(s->group, p, gl);
    p += gl;
    s->n_parts = (uint32_t)p[0] << 8 | p[1];
    s->n_members = (uint32_t)p[2] << 8 | p[3];
    p += 4;
    if (s->n_parts == 0 || s->n_parts > ES_MAX_SUB_PARTITIONS ||
        s->n_members > ES_MAX_SUB_MEMBERS || (size_t)(end - p) < (size_t)s->n_parts * 24)
        goto bad;
    for (uint32_t i = 0; i < s->n_parts; i++, p += 24) {
        s->part[i].checkpoint = es__get_u64(p);
        memcpy(s->part[i].owner, p + 8, 16);
    }
    for (uint32_t i = 0; i < s->n_members; i++) {
        sub_member *m = &s->member[i];
        if ((size_t)(end - p) < 25 || (size_t)(end - p) < 25u + p[24] || p[24] > ES_MAX_SUB_NAME)
            goto bad;
        memcpy(m->id, p, 16);
        m->lease_until_us = (int64_t)es__get_u64(p + 16);
        memcpy(m->label, p + 25, p[24]);
        p += 25 + p[24];
    }
    if (p != end)
        goto bad;
    *used = 8 + len;
    return 0;
bad:
    return es__err(ES_ECORRUPT, "subscription '%s': its state record is damaged", name);
}

/* Definition: magic u32 | start u8 | start_position u64 | start_time i64 |
 * batch u32 | [SUB2: partitions u16 | max_attempts u16 | on_poison u8 |
 * retry_ms u32] | n_prefixes u8 | (u8 len, bytes)… | n_types u8 | (u8 len,
 * bytes)… */
static int def_encode(es_buf *out, const sub_def *d)
{
    uint8_t b[40];
    int rc;
    es__put_u32(b, SUB_DEF_MAGIC2);
    b[4] = (uint8_t)d->start;
    es__put_u64(b + 5, d->start_position);
    es__put_u64(b + 13, (uint64_t)d->start_time_us);
    es__put_u32(b + 21, d->batch_size);
    b[25] = (uint8_t)(d->partitions >> 8), b[26] = (uint8_t)d->partitions;
    b[27] = (uint8_t)(d->max_attempts >> 8), b[28] = (uint8_t)d->max_attempts;
    b[29] = (uint8_t)d->on_poison;
    es__put_u32(b + 30, d->retry_ms);
    if ((rc = es_buf_put(out, b, 34)) < 0)
        return rc;
    uint8_t n = (uint8_t)d->n_prefixes;
    if ((rc = es_buf_put(out, &n, 1)) < 0)
        return rc;
    for (size_t i = 0; i < d->n_prefixes; i++) {
        uint8_t l = (uint8_t)d->prefix_len[i];
        if ((rc = es_buf_put(out, &l, 1)) < 0 || (rc = es_buf_put(out, d->prefix[i], l)) < 0)
            return rc;
    }
    n = (uint8_t)d->n_types;
    if ((rc = es_buf_put(out, &n, 1)) < 0)
        return rc;
    for (size_t i = 0; i < d->n_types; i++) {
        uint8_t l = (uint8_t)d->type_len[i];
        if ((rc = es_buf_put(out, &l, 1)) < 0 || (rc = es_buf_put(out, d->type[i], l)) < 0)
            return rc;
    }
    return 0;
}

static int def_decode(sub_def *d, const uint8_t *p, size_t n, const char *name)
{
    memset(d, 0, sizeof *d);
    /* an empty record has no bytes at all (p may be NULL): check first */
    if (!p || n < 26 || p[4] > ES_SUB_FROM_TIME)
        goto bad;
    const uint8_t *end = p + n;
    uint32_t magic = es__get_u32(p);
    d->start = (es_sub_start)p[4];
    d->start_position = es__get_u64(p + 5);
    d->start_time_us = (int64_t)es__get_u64(p + 13);
    d->batch_size = es__get_u32(p + 21);
    d->partitions = 1, d->max_attempts = 5, d->retry_ms = 100, d->on_poison = ES_SUB_PARK;
    p += 25;
    if (magic == SUB_DEF_MAGIC2) {
        if (n < 35)
            goto bad;
        d->partitions = (uint32_t)p[0] << 8 | p[1];
        d->max_attempts = (uint32_t)p[2] << 8 | p[3];
        d->on_poison = (es_sub_on_poison)p[4];
        d->retry_ms = es__get_u32(p + 5);
        p += 9;
        if (d->partitions == 0 || d->partitions > ES_MAX_SUB_PARTITIONS || d->max_attempts == 0 ||
            d->max_attempts > 100 || (unsigned)d->on_poison > ES_SUB_STOP || d->retry_ms == 0 ||
            d->retry_ms > 60000)
            goto bad;
    } else if (magic != SUB_DEF_MAGIC1) {
        goto bad;
    }
    d->n_prefixes = *p++;
    if (d->n_prefixes > ES_MAX_SUB_FILTERS || d->batch_size == 0 || d->batch_size > ES_MAX_BATCH)
        goto bad;
    for (size_t i = 0; i < d->n_prefixes; i++) {
        if (p >= end || (size_t)(end - p) < 1u + *p || *p == 0)
            goto bad;
        d->prefix_len[i] = *p++;
        memcpy(d->prefix[i], p, d->prefix_len[i]);
        p += d->prefix_len[i];
    }
    if (p >= end)
        goto bad;
    d->n_types = *p++;
    if (d->n_types > ES_MAX_SUB_FILTERS)
        goto bad;
    for (size_t i = 0; i < d->n_types; i++) {
        if (p >= end || (size_t)(end - p) < 1u + *p || *p == 0)
            goto bad;
        d->type_len[i] = *p++;
        memcpy(d->type[i], p, d->type_len[i]);
        d->type[i][d->type_len[i]] = 0;
        p += d->type_len[i];
    }
    if (p != end)
        goto bad;
    return 0;
bad:
    return es__err(ES_ECORRUPT, "subscription '%s': its definition record is damaged", name);
}

uint32_t es_sub_partition_of(const void *stream, size_t len, uint32_t partitions)
{
    if (partitions <= 1 || partitions > ES_MAX_SUB_PARTITIONS || (!stream && len))
        return 0;
    const uint8_t *p = stream;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return (uint32_t)(h % partitions);
}

/* Is member `id` in the state and its lease running at `now`? */
static sub_member *find_member(sub_state *s, const uint8_t id[16])
{
    for (uint32_t i = 0; i < s->n_members; i++)
        if (memcmp(s->member[i].id, id, 16) == 0)
            return &s->member[i];
    return NULL;
}

/* Drop members whose lease ran out (not `keep`), and free their partitions. */
static void prune_members(sub_state *s, int64_t now, const uint8_t *keep)
{
    uint32_t j = 0;
    for (uint32_t i = 0; i < s->n_members; i++) {
        sub_member *m = &s->member[i];
        if (m->lease_until_us > now || (keep && memcmp(m->id, keep, 16) == 0)) {
            s->member[j++] = *m;
            continue;
        }
        for (uint32_t p = 0; p < s->n_parts; p++)
            if (memcmp(s->part[p].owner, m->id, 16) == 0)
                memset(s->part[p].owner, 0, 16);
    }
    s->n_members = j;
}

static uint64_t min_checkpoint(const sub_state *s)
{
    uint64_t m = s->part[0].checkpoint;
    for (uint32_t p = 1; p < s->n_parts; p++)
        if (s->part[p].checkpoint < m)
            m = s->part[p].checkpoint;
    return m;
}

/* ---- names and keys ---- */

/* The bytes of a subscription name: A-Z a-z 0-9 . _ - */
static bool name_char_ok(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static int check_name(const char *name, size_t *len)
{
    if (!name)
        return es__err(ES_EINVAL, "subscription name is NULL");
    size_t n = strnlen(name, ES_MAX_SUB_NAME + 1);
    if (n == 0 || n > ES_MAX_SUB_NAME)
        return es__err(ES_EINVAL, "subscription name must be 1..%d bytes", ES_MAX_SUB_NAME);
    for (size_t i = 0; i < n; i++) {
        uint8_t c = (uint8_t)name[i];
        /* the name itself is not echoed: it may hold control characters */
        if (!name_char_ok(c))
            return es__err(ES_EINVAL,
                           "subscription name: byte %zu is 0x%02x; a name is made of A-Z a-z "
                           "0-9 . _ -",
                           i, (unsigned)c);
    }
    *len = n;
    return 0;
}

typedef struct sub_key {
    uint8_t k[SUB_PREFIX_LEN + ES_MAX_SUB_NAME];
    size_t len;
} sub_key;

static void make_key(sub_key *k, const char *name, size_t n)
{
    memcpy(k->k, SUB_PREFIX, SUB_PREFIX_LEN);
    memcpy(k->k + SUB_PREFIX_LEN, name, n);
    k->len = SUB_PREFIX_LEN + n;
}

static int need_kv(es_store *st)
{
    if (!st)
        return es__err(ES_EINVAL, "store is NULL");
    if (!st->ops->kv_get || !st->ops->kv_cas || !st->ops->kv_list)
        return es__err(ES_ENOTSUP, "the %s store does not keep subscriptions", st->ops->name);
    return 0;
}

/* Read a subscription's record: its state and version, and (when asked)
 * its definition, decoded and as bytes. */
static int load_sub(sub_state *s, uint64_t *ver, sub_def *d, es_buf *def_bytes, es_store *st,
                    const sub_key *k, const char *name)
{
    es_buf b = ES_BUF_INIT;
    size_t used = 0;
    int rc = st->ops->kv_get(st->be, k->k, k->len, &b, ver);
    if (rc == 0 && *ver == 0)
        rc = es__err(ES_ENOTFOUND, "no subscription named '%s'", name);
    if (rc == 0)
        rc = state_decode(s, &used, b.data, b.len, name);
    if (rc == 0 && d)
        rc = def_decode(d, b.data + used, b.len - used, name);
    if (rc == 0 && def_bytes) {
        es_buf_reset(def_bytes);
        rc = es_buf_put(def_bytes, b.data + used, b.len - used);
    }
    es_buf_free(&b);
    return rc;
}

/* Write a subscription's record (state, then the definition's bytes) if
 * its version is still `expected` (0: only if there is none). */
static int store_sub_as(es_store *st, const sub_key *k, uint64_t expected, const sub_state *s,
                        const es_buf *def_bytes, uint64_t *ver, bool lazy)
{
    es_buf b = ES_BUF_INIT;
    int rc;
    if ((rc = state_encode(&b, s)) == 0 &&
        (rc = es_buf_put(&b, def_bytes->data, def_bytes->len)) == 0)
        rc = (lazy && expected && st->ops->kv_cas_lazy ? st->ops->kv_cas_lazy : st->ops->kv_cas)(
            st->be, k->k, k->len, expected, b.data, b.len, ver);
    es_buf_free(&b);
    return rc;
}

static int store_sub(es_store *st, const sub_key *k, uint64_t expected, const sub_state *s,
                     const es_buf *def_bytes, uint64_t *ver)
{
    return store_sub_as(st, k, expected, s, def_bytes, ver, false);
}

/* ---- where a start points ---- */

/* The checkpoint that makes delivery begin at `start`: the position just
 * before the first event to deliver. */
static int start_checkpoint(uint64_t *out, es_store *st, es_sub_start start, uint64_t position,
                            int64_t time_us)
{
    int rc;
    *out = 0;
    switch (start) {
    case ES_SUB_FROM_BEGINNING:
        return 0;
    case ES_SUB_FROM_END:
        return es_store_last_position(out, st);
    case ES_SUB_FROM_POSITION:
        *out = position ? position - 1 : 0;
        return 0;
    case ES_SUB_FROM_TIME: {
        es_log_options o = ES_LOG_OPTIONS_INIT;
        es_cursor *c;
        const es_event *ev;
        uint64_t last;
        if ((rc = es_store_last_position(&last, st)) < 0)
            return rc;
        o.from_time_us = time_us;
        o.limit = 1;
        if ((rc = es_log_cursor(&c, st, &o)) < 0)
            return rc;
        rc = es_cursor_next(&ev, c);
        if (rc == 0)
            *out = ev->position - 1;
        else if (rc == ES_ITEROVER) {
            *out = last; /* nothing at or after it yet: from the end */
            rc = 0;
        }
        es_cursor_free(c);
        return rc;
    }
    }
    return es__err(ES_EINVAL, "unknown subscription start %d", (int)start);
}

static int check_start(es_sub_start start, uint64_t position, int64_t time_us)
{
    switch (start) {
    case ES_SUB_FROM_BEGINNING:
    case ES_SUB_FROM_END:
        return 0;
    case ES_SUB_FROM_POSITION:
        if (position == 0 || position >= ES_SEQ_MAX)
            return es__err(ES_EINVAL, "start position must be 1..2^62-1");
        return 0;
    case ES_SUB_FROM_TIME:
        if (time_us < 0)
            return es__err(ES_EINVAL, "start time is negative");
        return 0;
    }
    return es__err(ES_EINVAL, "unknown subscription start %d", (int)start);
}

/* ---- parked records ---- */

typedef struct park_key {
    uint8_t k[SUB_PARK_KEY_MAX];
    size_t len;
} park_key;

/* "sub/<name>/x/" and, with a position, its 16 hex digits */
static void make_park_key(park_key *pk, const sub_key *k, uint64_t position)
{
    memcpy(pk->k, k->k, k->len);
    memcpy(pk->k + k->len, "/x/", 3);
    pk->len = k->len + 3;
    if (position) {
        snprintf((char *)pk->k + pk->len, 17, "%016llx", (unsigned long long)position);
        pk->len += 16;
    }
}

typedef struct parked_rec {
    uint64_t position;
    uint32_t partition, attempts;
    int64_t parked_at_us;
    int retry;
    char error[ES_MAX_SUB_ERROR + 1];
} parked_rec;

/* PRK1: magic u32 | position u64 | partition u16 | attempts u32 |
 * parked_at i64 | retry u8 | error (u16 len, bytes) */
static int park_encode(es_buf *out, const parked_rec *r)
{
    uint8_t b[32];
    size_t el = strlen(r->error);
    es__put_u32(b, SUB_PARK_MAGIC);
    es__put_u64(b + 4, r->position);
    b[12] = (uint8_t)(r->partition >> 8), b[13] = (uint8_t)r->partition;
    es__put_u32(b + 14, r->attempts);
    es__put_u64(b + 18, (uint64_t)r->parked_at_us);
    b[26] = (uint8_t)r->retry;
    b[27] = (uint8_t)(el >> 8), b[28] = (uint8_t)el;
    int rc = es_buf_put(out, b, 29);
    return rc < 0 ? rc : es_buf_put(out, r->error, el);
}

static int park_decode(parked_rec *r, const uint8_t *p, size_t n, const char *name)
{
    if (!p || n < 29 || es__get_u32(p) != SUB_PARK_MAGIC)
        goto bad;
    r->position = es__get_u64(p + 4);
    r->partition = (uint32_t)p[12] << 8 | p[13];
    r->attempts = es__get_u32(p + 14);
    r->parked_at_us = (int64_t)es__get_u64(p + 18);
    r->retry = p[26] != 0;
    size_t el = (size_t)p[27] << 8 | p[28];
    if (el > ES_MAX_SUB_ERROR || n != 29 + el || r->position == 0)
        goto bad;
    memcpy(r->error, p + 29, el);
    r->error[el] = 0;
    return 0;
bad:
    return es__err(ES_ECORRUPT, "subscription '%s': a parked-event record is damaged", name);
}

/* The keys (and versions) of a subscription's parked records. */
typedef struct park_keys {
    park_key *k;
    uint64_t *ver;
    size_t n, cap;
} park_keys;

static int collect_park_key(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                            uint64_t version, void *payload)
{
    park_keys *l = payload;
    (void)val, (void)vlen;
    if (klen > SUB_PARK_KEY_MAX)
        return 0;
    if (l->n == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 16;
        park_key *k = es__realloc(l->k, c * sizeof *k);
        if (!k)
            return ES_ENOMEM;
        l->k = k;
        uint64_t *v = es__realloc(l->ver, c * sizeof *v);
        if (!v)
            return ES_ENOMEM;
        l->ver = v;
        l->cap = c;
    }
    memcpy(l->k[l->n].k, key, klen);
    l->k[l->n].len = klen;
    l->ver[l->n] = version;
    l->n++;
    return 0;
}

static int list_park_keys(park_keys *l, es_store *st, const sub_key *k)
{
    park_key pre;
    make_park_key(&pre, k, 0);
    memset(l, 0, sizeof *l);
    int rc = st->ops->kv_list(st->be, pre.k, pre.len, collect_park_key, l);
    if (rc == ES_ENOMEM)
        rc = es__err(ES_ENOMEM, "out of memory listing parked events");
    return rc;
}

static void free_park_keys(park_keys *l)
{
    free(l->k);
    free(l->ver);
}

/* Remove every parked record of a subscription (after a delete, or left
 * over from one before a create). */
static int sweep_parked(es_store *st, const sub_key *k)
{
    park_keys l;
    uint64_t gone;
    int rc = list_park_keys(&l, st, k);
    for (size_t i = 0; rc == 0 && i < l.n; i++) {
        rc = st->ops->kv_cas(st->be, l.k[i].k, l.k[i].len, l.ver[i], NULL, 0, &gone);
        if (rc == ES_ECONFLICT) /* removed or rewritten meanwhile: it goes anyway */
            rc = 0, es_error_clear();
    }
    free_park_keys(&l);
    return rc;
}

/* ---- create, delete, reset ---- */

int es_sub_create(es_store *st, const char *name, const es_sub_options *opts)
{
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    sub_def *d = NULL;
    sub_state *s = NULL;
    es_buf b = ES_BUF_INIT, b2 = ES_BUF_INIT;
    sub_key k;
    size_t nl;
    uint64_t ver;
    int rc;

    if ((rc = need_kv(st)) < 0 || (rc = check_name(name, &nl)) < 0)
        return rc;
    if (opts) {
        if ((rc = es__check_version(opts->version, ES_SUB_OPTIONS_VERSION, "es_sub_options")) < 0)
            return rc;
        if (opts->version == 1)
            memcpy(&o, opts, offsetof(es_sub_options, partitions));
        else
            o = *opts;
    }
    if (o.n_prefixes > ES_MAX_SUB_FILTERS || o.n_types > ES_MAX_SUB_FILTERS)
        return es__err(ES_ETOOBIG, "a subscription takes at most %d prefixes and %d types",
                       ES_MAX_SUB_FILTERS, ES_MAX_SUB_FILTERS);
    if ((o.n_prefixes && (!o.prefixes || !o.prefix_lens)) || (o.n_types && !o.types))
        return es__err(ES_EINVAL, "es_sub_options: a filter count without its array");
    if (o.batch_size > ES_MAX_BATCH)
        return es__err(ES_EINVAL, "batch_size %u is over %d", o.batch_size, ES_MAX_BATCH);
    if (o.partitions > ES_MAX_SUB_PARTITIONS)
        return es__err(ES_EINVAL, "partitions must be 1..%d, not %u", ES_MAX_SUB_PARTITIONS,
                       o.partitions);
    if (o.max_attempts > 100)
        return es__err(ES_EINVAL, "max_attempts must be 1..100, not %u", o.max_attempts);
    if (o.retry_ms > 60000)
        return es__err(ES_EINVAL, "retry_ms must be 1..60000, not %u", o.retry_ms);
    if ((unsigned)o.on_poison > ES_SUB_STOP)
        return es__err(ES_EINVAL, "on_poison must be ES_SUB_PARK or ES_SUB_STOP");
    if ((rc = check_start(o.start, o.start_position, o.start_time_us)) < 0)
        return rc;
    if (!(d = es__calloc(1, sizeof *d)) || !(s = es__calloc(1, sizeof *s))) {
        rc = es__err(ES_ENOMEM, "out of memory creating a subscription");
        goto done;
    }
    d->start = o.start;
    d->start_position = o.start_position;
    d->start_time_us = o.start_time_us;
    d->batch_size = o.batch_size ? o.batch_size : 100;
    d->partitions = o.partitions ? o.partitions : 1;
    d->max_attempts = o.max_attempts ? o.max_attempts : 5;
    d->retry_ms = o.retry_ms ? o.retry_ms : 100;
    d->on_poison = o.on_poison;
    d->n_prefixes = o.n_prefixes;
    d->n_types = o.n_types;
    for (size_t i = 0; i < o.n_prefixes; i++) {
        if (!o.prefixes[i] || o.prefix_lens[i] == 0 || o.prefix_lens[i] > ES_MAX_KEY) {
            rc = es__err(ES_EINVAL, "prefix %zu must be 1..%d bytes", i, ES_MAX_KEY);
            goto done;
        }
        memcpy(d->prefix[i], o.prefixes[i], o.prefix_lens[i]);
        d->prefix_len[i] = o.prefix_lens[i];
    }
    for (size_t i = 0; i < o.n_types; i++) {
        size_t tl = o.types[i] ? strnlen(o.types[i], ES_MAX_TYPE + 1) : 0;
        if (tl == 0 || tl > ES_MAX_TYPE) {
            rc = es__err(ES_EINVAL, "type filter %zu must be 1..%d bytes", i, ES_MAX_TYPE);
            goto done;
        }
        memcpy(d->type[i], o.types[i], tl);
        d->type_len[i] = tl;
    }
    make_key(&k, name, nl);
    uint64_t cp;
    if ((rc = start_checkpoint(&cp, st, d->start, d->start_position, d->start_time_us)) < 0)
        goto done;
    s->n_parts = d->partitions;
    for (uint32_t p = 0; p < s->n_parts; p++)
        s->part[p].checkpoint = cp;
    if ((rc = def_encode(&b, d)) < 0)
        goto done;
    /* parked records a deleted namesake left behind are not this one's */
    if ((rc = st->ops->kv_get(st->be, k.k, k.len, &b2, &ver)) < 0)
        goto done;
    if (ver) {
        rc = es__err(ES_ECONFLICT, "a subscription named '%s' exists", name);
        goto done;
    }
    if ((rc = sweep_parked(st, &k)) < 0)
        goto done;
    if ((rc = store_sub(st, &k, 0, s, &b, &ver)) == ES_ECONFLICT)
        rc = es__err(ES_ECONFLICT, "a subscription named '%s' exists", name);
done:
    es_buf_free(&b);
    es_buf_free(&b2);
    free(d);
    free(s);
    return rc;
}

int es_sub_delete(es_store *st, const char *name)
{
    sub_key k;
    size_t nl;
    uint64_t ver, gone;
    es_buf b = ES_BUF_INIT;
    int rc;
    if ((rc = need_kv(st)) < 0 || (rc = check_name(name, &nl)) < 0)
        return rc;
    make_key(&k, name, nl);
    /* an owner's next checkpoint then finds it gone */
    do {
        if ((rc = st->ops->kv_get(st->be, k.k, k.len, &b, &ver)) < 0)
            break;
        if (ver == 0) {
            rc = es__err(ES_ENOTFOUND, "no subscription named '%s'", name);
            break;
        }
    } while ((rc = st->ops->kv_cas(st->be, k.k, k.len, ver, NULL, 0, &gone)) == ES_ECONFLICT);
    es_buf_free(&b);
    if (rc == 0)
        rc = sweep_parked(st, &k);
    return rc;
}

int es_sub_reset(es_store *st, const char *name, es_sub_start start, uint64_t position,
                 int64_t time_us)
{
    sub_key k;
    sub_state *s;
    es_buf def_bytes = ES_BUF_INIT;
    size_t nl;
    uint64_t ver, cp;
    int rc;
    if ((rc = need_kv(st)) < 0 || (rc = check_name(name, &nl)) < 0 ||
        (rc = check_start(start, position, time_us)) < 0)
        return rc;
    make_key(&k, name, nl);
    if ((rc = start_checkpoint(&cp, st, start, position, time_us)) < 0)
        return rc;
    if (!(s = es__malloc(sizeof *s)))
        return es__err(ES_ENOMEM, "out of memory resetting a subscription");
    do {
        if ((rc = load_sub(s, &ver, NULL, &def_bytes, st, &k, name)) < 0)
            break;
        for (uint32_t p = 0; p < s->n_parts; p++)
            s->part[p].checkpoint = cp;
        s->generation++;
        s->last_ack_us = es__now(st);
    } while ((rc = store_sub(st, &k, ver, s, &def_bytes, &ver)) == ES_ECONFLICT);
    es_buf_free(&def_bytes);
    free(s);
    return rc;
}

static bool def_match(const sub_def *d, const es_event *ev)
{
    bool ok = d->n_prefixes == 0;
    for (size_t i = 0; !ok && i < d->n_prefixes; i++)
        ok = es__has_prefix(ev->stream, ev->stream_len, d->prefix[i], d->prefix_len[i]);
    if (!ok)
        return false;
    if (d->n_types == 0)
        return true;
    for (size_t i = 0; i < d->n_types; i++)
        if (ev->type_len == d->type_len[i] && memcmp(ev->type, d->type[i], ev->type_len) == 0)
            return true;
    return false;
}

/* A log cursor from `from` with the definition's filters (a single prefix
 * or type is handed to the store so that it can skip work); `want` > 0 is
 * how many events the reader takes, a hint for the store's first read. */
static int open_log(es_cursor **c, es_store *st, const sub_def *d, uint64_t from, uint32_t want)
{
    es_log_options o = ES_LOG_OPTIONS_INIT;
    o.from_position = from;
    o.limit = want;
    if (d->n_prefixes == 1) {
        o.prefix = d->prefix[0];
        o.prefix_len = d->prefix_len[0];
    }
    if (d->n_types == 1)
        o.type = d->type[0];
    return es_log_cursor(c, st, &o);
}

/* ---- info, list, partitions ---- */

/* The lag of a subscription (or of its partitions): matching events after
 * each partition's checkpoint, counted up to a cap, and the commit time of
 * the oldest. */
typedef struct lag {
    uint64_t behind, part_behind[ES_MAX_SUB_PARTITIONS];
    int capped;
    int64_t oldest_us; /* 0: none */
} lag;

static int count_lag(lag *out, es_store *st, const sub_def *d, const sub_state *s, uint64_t head)
{
    es_cursor *c = NULL;
    const es_event *ev;
    int rc;
    memset(out, 0, sizeof *out);
    uint64_t from = min_checkpoint(s);
    if (from >= head)
        return 0;
    if ((rc = open_log(&c, st, d, from + 1, 0)) < 0)
        return rc;
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        if (!def_match(d, ev))
            continue;
        uint32_t p = es_sub_partition_of(ev->stream, ev->stream_len, s->n_parts);
        if (ev->position <= s->part[p].checkpoint)
            continue;
        if (out->behind == 0)
            out->oldest_us = ev->time_us;
        out->part_behind[p]++;
        if (++out->behind >= SUB_BEHIND_CAP) {
            out->capped = es_cursor_next(&ev, c) == 0;
            rc = ES_ITEROVER;
            break;
        }
    }
    es_cursor_free(c);
    return rc == ES_ITEROVER ? 0 : rc;
}

/* How many events are parked, and is one of them ahead of its partition's
 * checkpoint (where an ES_SUB_STOP subscription stopped)? */
typedef struct park_count {
    uint64_t n;
    bool blocking;
    const sub_state *s;
    const char *name;
} park_count;

static int count_one_parked(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                            uint64_t version, void *payload)
{
    park_count *c = payload;
    parked_rec r;
    (void)key, (void)klen, (void)version;
    c->n++;
    if (park_decode(&r, val, vlen, c->name) == 0) {
        if (r.partition < c->s->n_parts && r.position > c->s->part[r.partition].checkpoint)
            c->blocking = true;
    } else {
        es_error_clear(); /* counted; es_sub_parked_list reports it */
    }
    return 0;
}

static int count_parked(park_count *c, es_store *st, const sub_key *k)
{
    park_key pre;
    make_park_key(&pre, k, 0);
    return st->ops->kv_list(st->be, pre.k, pre.len, count_one_parked, c);
}

typedef struct sub_view {
    sub_def d;
    sub_state s;
    lag lag;
    uint64_t head;
    sub_key k;
} sub_view;

static int view_sub(sub_view *v, es_store *st, const char *name, size_t nl)
{
    uint64_t ver;
    int rc;
    make_key(&v->k, name, nl);
    if ((rc = load_sub(&v->s, &ver, &v->d, NULL, st, &v->k, name)) < 0 ||
        (rc = es_store_last_position(&v->head, st)) < 0)
        return rc;
    return count_lag(&v->lag, st, &v->d, &v->s, v->head);
}

static int fill_info(es_sub_info *out, es_store *st, const char *name, size_t nl)
{
    sub_view *v;
    int rc;
    memset(out, 0, sizeof *out);
    memcpy(out->name, name, nl);
    if (!(v = es__malloc(sizeof *v)))
        return es__err(ES_ENOMEM, "out of memory reading a subscription");
    park_count pc = {0, false, &v->s, name};
    if ((rc = view_sub(v, st, name, nl)) < 0 || (rc = count_parked(&pc, st, &v->k)) < 0)
        goto done;
    out->parked = pc.n;
    const sub_state *s = &v->s;
    out->head = v->head;
    out->checkpoint = min_checkpoint(s);
    out->last_ack_us = s->last_ack_us;
    out->acked = s->acked;
    out->partitions = s->n_parts;
    memcpy(out->group, s->group, sizeof out->group);
    int64_t now = es__realtime_us();
    for (uint32_t i = 0; i < s->n_members; i++) {
        if (s->member[i].lease_until_us <= now)
            continue;
        out->members++;
        if (s->member[i].lease_until_us > out->lease_until_us)
            out->lease_until_us = s->member[i].lease_until_us;
    }
    out->behind = v->lag.behind;
    out->behind_capped = v->lag.capped;
    if (v->lag.behind) {
        int64_t store_now = es__now(st); /* commit times come from the store's clock */
        out->behind_us = store_now > v->lag.oldest_us ? store_now - v->lag.oldest_us : 0;
    }
    out->state = v->d.on_poison == ES_SUB_STOP && pc.blocking ? ES_SUB_STOPPED
                 : !out->members                              ? ES_SUB_IDLE
                 : out->behind                                ? ES_SUB_CATCHING_UP
                                                              : ES_SUB_LIVE;
done:
    free(v);
    return rc;
}

int es_sub_info_get(es_sub_info *out, es_store *st, const char *name)
{
    size_t nl;
    int rc;
    if (!out)
        return es__err(ES_EINVAL, "es_sub_info_get: out is NULL");
    memset(out, 0, sizeof *out);
    if ((rc = need_kv(st)) < 0 || (rc = check_name(name, &nl)) < 0)
        return rc;
    return fill_info(out, st, name, nl);
}

typedef struct list_ctx {
    char (*names)[ES_MAX_SUB_NAME + 1];
    size_t n, cap;
} list_ctx;

static int collect_name(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                        uint64_t version, void *payload)
{
    list_ctx *l = payload;
    (void)val, (void)vlen, (void)version;
    if (klen <= SUB_PREFIX_LEN || klen > SUB_PREFIX_LEN + ES_MAX_SUB_NAME)
        return 0;
    for (size_t i = SUB_PREFIX_LEN; i < klen; i++)
        if (!name_char_ok(key[i]))
            return 0; /* not a name this library writes: not one of its records */
    if (l->n == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 16;
        void *p = es__realloc(l->names, c * sizeof *l->names);
        if (!p)
            return ES_ENOMEM;
        l->names = p;
        l->cap = c;
    }
    memcpy(l->names[l->n], key + SUB_PREFIX_LEN, klen - SUB_PREFIX_LEN);
    l->names[l->n][klen - SUB_PREFIX_LEN] = 0;
    l->n++;
    return 0;
}

int es_sub_list(es_store *st, es_sub_info_fn fn, void *payload)
{
    list_ctx l = {NULL, 0, 0};
    int rc;
    if ((rc = need_kv(st)) < 0)
        return rc;
    if (!fn)
        return es__err(ES_EINVAL, "es_sub_list: fn is NULL");
    /* Names first, then each info with no kv call in progress. */
    rc = st->ops->kv_list(st->be, (const uint8_t *)SUB_PREFIX, SUB_PREFIX_LEN, collect_name, &l);
    if (rc == ES_ENOMEM)
        rc = es__err(ES_ENOMEM, "out of memory listing subscriptions");
    for (size_t i = 0; rc == 0 && i < l.n; i++) {
        es_sub_info info;
        rc = fill_info(&info, st, l.names[i], strlen(l.names[i]));
        if (rc == ES_ENOTFOUND) { /* deleted meanwhile */
            rc = 0;
            es_error_clear();
            continue;
        }
        if (rc == 0) {
            int r = fn(&info, payload);
            if (r)
                rc = es__cb_rc(r);
        }
    }
    free(l.names);
    return rc;
}

int es_sub_partitions(es_store *st, const char *name, es_sub_partition_fn fn, void *payload)
{
    sub_view *v;
    size_t nl;
    int rc;
    if ((rc = need_kv(st)) < 0 || (rc = check_name(name, &nl)) < 0)
        return rc;
    if (!fn)
        return es__err(ES_EINVAL, "es_sub_partitions: fn is NULL");
    if (!(v = es__malloc(sizeof *v)))
        return es__err(ES_ENOMEM, "out of memory reading a subscription");
    if ((rc = view_sub(v, st, name, nl)) < 0)
        goto done;
    int64_t now = es__realtime_us();
    for (uint32_t p = 0; p < v->s.n_parts; p++) {
        es_sub_partition_info pi;
        memset(&pi, 0, sizeof pi);
        pi.partition = p;
        pi.checkpoint = v->s.part[p].checkpoint;
        pi.behind = v->lag.part_behind[p];
        const sub_member *m =
            memcmp(v->s.part[p].owner, nobody, 16) ? find_member(&v->s, v->s.part[p].owner) : NULL;
        if (m && m->lease_until_us > now) {
            memcpy(pi.owner, m->label, sizeof pi.owner);
            pi.lease_until_us = m->lease_until_us;
        }
        int r = fn(&pi, payload);
        if (r) {
            rc = es__cb_rc(r);
            break;
        }
    }
done:
    free(v);
    return rc;
}

/* ---- parked events: list, retry, drop ---- */

typedef struct parked_ctx {
    const char *name;
    es_sub_parked_fn fn;
    void *payload;
    int rc;
} parked_ctx;

static int parked_one(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                      uint64_t version, void *payload)
{
    parked_ctx *c = payload;
    parked_rec *r = es__malloc(sizeof *r);
    (void)key, (void)klen, (void)version;
    if (!r)
        return c->rc = es__err(ES_ENOMEM, "out of memory listing parked events");
    int rc = park_decode(r, val, vlen, c->name);
    if (rc == 0) {
        es_sub_parked p;
        memset(&p, 0, sizeof p);
        p.position = r->position;
        p.partition = r->partition;
        p.attempts = r->attempts;
        p.parked_at_us = r->parked_at_us;
        p.retry = r->retry;
        p.error = r->error;
        int u = c->fn(&p, c->payload);
        if (u)
            rc = es__cb_rc(u);
    }
    free(r);
    return c->rc = rc;
}

int es_sub_parked_list(es_store *st, const char *name, es_sub_parked_fn fn, void *payload)
{
    sub_key k;
    park_key pre;
    size_t nl;
    uint64_t ver;
    es_buf b = ES_BUF_INIT;
    int rc;
    if ((rc = need_kv(st)) < 0 || (rc = check_name(name, &nl)) < 0)
        return rc;
    if (!fn)
        return es__err(ES_EINVAL, "es_sub_parked_list: fn is NULL");
    make_key(&k, name, nl);
    rc = st->ops->kv_get(st->be, k.k, k.len, &b, &ver);
    es_buf_free(&b);
    if (rc < 0)
        return rc;
    if (ver == 0)
        return es__err(ES_ENOTFOUND, "no subscription named '%s'", name);
    make_park_key(&pre, &k, 0);
    parked_ctx c = {name, fn, payload, 0};
    rc = st->ops->kv_list(st->be, pre.k, pre.len, parked_one, &c);
    return c.rc ? c.rc : rc;
}

/* Are there no events of partition `part` after `from` and before `to`? */
static int nothing_between(bool *clear, es_store *st, const sub_def *d, uint32_t nparts,
                           uint32_t part, uint64_t from, uint64_t to)
{
    es_cursor *c = NULL;
    const es_event *ev;
    int rc = open_log(&c, st, d, from + 1, 0);
    *clear = true;
    while (rc >= 0 && (rc = es_cursor_next(&ev, c)) == 0 && ev->position < to)
        if (def_match(d, ev) && es_sub_partition_of(ev->stream, ev->stream_len, nparts) == part) {
            *clear = false;
            break;
        }
    es_cursor_free(c);
    return rc == ES_ITEROVER || rc == 0 ? 0 : rc;
}

/* Apply `retry` (or a drop) to one parked record, or to all (position 0). */
static int parked_change(es_store *st, const char *name, uint64_t position, bool retry)
{
    sub_key k;
    sub_def *d = NULL;
    sub_state *s = NULL;
    parked_rec *r = NULL;
    park_keys l = {0};
    es_buf b = ES_BUF_INIT, def_bytes = ES_BUF_INIT;
    size_t nl, done_n = 0;
    uint64_t ver, sver, nv;
    int rc;
    if ((rc = need_kv(st)) < 0 || (rc = check_name(name, &nl)) < 0)
        return rc;
    if (position >= ES_SEQ_MAX)
        return es__err(ES_EINVAL, "position %llu is out of range", (unsigned long long)position);
    make_key(&k, name, nl);
    if (!(d = es__malloc(sizeof *d)) || !(s = es__malloc(sizeof *s)) ||
        !(r = es__malloc(sizeof *r))) {
        rc = es__err(ES_ENOMEM, "out of memory changing parked events");
        goto done;
    }
    if ((rc = load_sub(s, &sver, d, &def_bytes, st, &k, name)) < 0 ||
        (rc = list_park_keys(&l, st, &k)) < 0)
        goto done;
    for (size_t i = 0; i < l.n; i++) {
        if ((rc = st->ops->kv_get(st->be, l.k[i].k, l.k[i].len, &b, &ver)) < 0)
            goto done;
        if (ver == 0)
            continue; /* gone meanwhile */
        if ((rc = park_decode(r, b.data, b.len, name)) < 0)
            goto done;
        if (position && r->position != position)
            continue;
        if (retry && d->on_poison == ES_SUB_PARK) {
            /* the owner of its partition delivers it again */
            r->retry = 1;
            es_buf_reset(&b);
            if ((rc = park_encode(&b, r)) < 0)
                goto done;
            rc = st->ops->kv_cas(st->be, l.k[i].k, l.k[i].len, ver, b.data, b.len, &nv);
        } else {
            rc = st->ops->kv_cas(st->be, l.k[i].k, l.k[i].len, ver, NULL, 0, &nv);
        }
        if (rc == ES_ECONFLICT) { /* a consumer changed it meanwhile: it is its now */
            es_error_clear();
            rc = 0;
            continue;
        }
        if (rc < 0)
            goto done;
        done_n++;
        /* a dropped event of a stopped subscription: its partition moves
         * past it when nothing of the partition before it is unacknowledged */
        if (!retry && d->on_poison == ES_SUB_STOP) {
            for (;;) {
                sub_part *pp = &s->part[r->partition < s->n_parts ? r->partition : 0];
                bool clear = false;
                if (pp->checkpoint >= r->position ||
                    (rc = nothing_between(&clear, st, d, s->n_parts, r->partition, pp->checkpoint,
                                          r->position)) < 0 ||
                    !clear)
                    break;
                pp->checkpoint = r->position;
                rc = store_sub(st, &k, sver, s, &def_bytes, &sver);
                if (rc != ES_ECONFLICT)
                    break;
                if ((rc = load_sub(s, &sver, NULL, &def_bytes, st, &k, name)) < 0)
                    break;
            }
            if (rc < 0)
                goto done;
        }
    }
    if (retry && done_n && d->on_poison == ES_SUB_PARK) {
        /* tell the consumers: a new retry_seq changes the record */
        do {
            s->retry_seq++;
            rc = store_sub(st, &k, sver, s, &def_bytes, &sver);
        } while (rc == ES_ECONFLICT &&
                 (rc = load_sub(s, &sver, NULL, &def_bytes, st, &k, name)) == 0);
        if (rc < 0)
            goto done;
    }
    if (position && done_n == 0)
        rc = es__err(ES_ENOTFOUND, "subscription '%s' has no parked event at position %llu", name,
                     (unsigned long long)position);
done:
    free_park_keys(&l);
    es_buf_free(&b);
    es_buf_free(&def_bytes);
    free(d);
    free(s);
    free(r);
    return rc;
}

int es_sub_parked_retry(es_store *st, const char *name, uint64_t position)
{
    return parked_change(st, name, position, true);
}

int es_sub_parked_drop(es_store *st, const char *name, uint64_t position)
{
    return parked_change(st, name, position, false);
}

/* ---- the consumer ---- */

struct es_sub {
    es_store *st;
    char name[ES_MAX_SUB_NAME + 1];
    sub_key k;
    sub_def def;
    es_buf def_bytes; /* the record's definition, rewritten with each state */
    sub_state *state; /* as last written or read */
    sub_state *next;  /* scratch: the state being composed */
    uint64_t version; /* of the state record */
    uint8_t me[16];   /* this consumer's member id */
    char label[ES_MAX_SUB_NAME + 1];
    char group[ES_MAX_SUB_NAME + 1]; /* "" : the one consumer */
    /* per partition: owned by us, delivered up to, acknowledged up to */
    bool owned[ES_MAX_SUB_PARTITIONS];
    uint64_t delivered[ES_MAX_SUB_PARTITIONS];
    uint64_t acked[ES_MAX_SUB_PARTITIONS];
    uint64_t delivered_last; /* the last event handed over */
    uint64_t acked_pos;      /* the last acknowledged position */
    uint64_t voided_upto;    /* a reset voided the batch in hand: its acks are no-ops */
    uint64_t acked_events;   /* acknowledged since the last persist */
    int64_t persisted_at_ms;
    uint32_t every, every_ms, lease_ms;
    /* failures: the event failing now, how often, when it may come again */
    uint64_t fail_pos;
    uint32_t fail_count;
    int64_t retry_at_ms;
    uint64_t stopped_at; /* ES_SUB_STOP parked this event: the consumer stops */
    /* parked events to deliver again (positions), and whether the batch in
     * hand is made of them */
    uint64_t retry_seq_seen;
    uint64_t *retry_q;
    size_t retry_n, retry_cap;
    bool retry_batch;
    /* the current batch: events whose pointers point into `arena` */
    es_event *events;
    const es_event **ptrs;
    size_t n, cap;
    es_buf arena;
};

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int taken_over(const es_sub *s)
{
    return es__err(ES_ECONFLICT,
                   "subscription '%s' was taken over by another consumer (its lease ran out)",
                   s->name);
}

/* Our rank among the members (they are ordered by id) */
static uint32_t rank_of(const sub_state *st, const uint8_t id[16])
{
    uint32_t r = 0;
    for (uint32_t i = 0; i < st->n_members; i++)
        if (memcmp(st->member[i].id, id, 16) < 0)
            r++;
    return r;
}

/*
 * Compose the state to write from the current record `next` (in place):
 * dead members dropped, our lease renewed (or our membership given back,
 * `release`), our acknowledged checkpoints, and in a group the partitions
 * we release or take as the assignment says.  own[] gets the partitions we
 * own once it is written.
 */
static int compose(es_sub *s, sub_state *next, bool release, bool own[])
{
    int64_t now = es__realtime_us();
    prune_members(next, now, s->me);
    sub_member *m = find_member(next, s->me);
    if (!m)
        return taken_over(s);
    for (uint32_t p = 0; p < next->n_parts; p++) {
        own[p] = s->owned[p];
        if (!own[p])
            continue;
        if (memcmp(next->part[p].owner, s->me, 16) != 0)
            return taken_over(s);
        if (s->acked[p] > next->part[p].checkpoint)
            next->part[p].checkpoint = s->acked[p];
    }
    if (s->acked_events) {
        next->acked += s->acked_events;
        next->last_ack_us = es__now(s->st);
    }
    if (release) {
        *m = next->member[--next->n_members];
        for (uint32_t p = 0; p < next->n_parts; p++)
            if (own[p]) {
                memset(next->part[p].owner, 0, 16);
                own[p] = false;
            }
        return 0;
    }
    m->lease_until_us = now + (int64_t)s->lease_ms * 1000;
    if (!s->group[0])
        return 0; /* the one consumer owns every partition from its open */
    uint32_t rank = rank_of(next, s->me), mcount = next->n_members;
    for (uint32_t p = 0; p < next->n_parts; p++) {
        bool want = p % mcount == rank;
        if (own[p] && !want) {
            memset(next->part[p].owner, 0, 16);
            own[p] = false;
        } else if (!own[p] && want &&
                   (memcmp(next->part[p].owner, nobody, 16) == 0 ||
                    !find_member(next, next->part[p].owner))) {
            memcpy(next->part[p].owner, s->me, 16);
            own[p] = true;
        }
    }
    return 0;
}

/* After a write: the partitions we took start at their checkpoints. */
static void apply_ownership(es_sub *s, const sub_state *written, const bool own[])
{
    for (uint32_t p = 0; p < written->n_parts; p++) {
        if (own[p] && !s->owned[p]) {
            s->delivered[p] = s->acked[p] = written->part[p].checkpoint;
            if (s->acked_pos > s->acked[p])
                s->acked_pos = s->acked[p];
            s->retry_seq_seen = UINT64_MAX; /* its parked retries too */
        }
        s->owned[p] = own[p];
    }
}

/* Take a state record that changed under us: without our membership (or
 * a partition of ours) we lost the subscription; a new generation is a
 * reset, which we follow (the batch in hand is void: its acknowledgements
 * do nothing). */
static int adopt(es_sub *s, const sub_state *cur, uint64_t ver)
{
    if (!find_member((sub_state *)cur, s->me))
        return taken_over(s);
    for (uint32_t p = 0; p < cur->n_parts; p++)
        if (s->owned[p] && memcmp(cur->part[p].owner, s->me, 16) != 0)
            return taken_over(s);
    if (cur->generation != s->state->generation) {
        if (s->delivered_last > s->voided_upto)
            s->voided_upto = s->delivered_last;
        uint64_t low = UINT64_MAX;
        for (uint32_t p = 0; p < cur->n_parts; p++) {
            s->delivered[p] = s->acked[p] = cur->part[p].checkpoint;
            if (s->owned[p] && cur->part[p].checkpoint < low)
                low = cur->part[p].checkpoint;
        }
        s->delivered_last = s->acked_pos = low == UINT64_MAX ? min_checkpoint(cur) : low;
        s->acked_events = 0;
        s->fail_pos = 0, s->fail_count = 0, s->retry_at_ms = 0;
        s->stopped_at = 0;
        s->n = 0;
        s->retry_n = 0;
        s->retry_batch = false;
    }
    *s->state = *cur;
    s->version = ver;
    return 0;
}

/* Write our state: lease renewed (or given back, `release`), acknowledged
 * checkpoints, group rebalancing; conditional on the version we read, and
 * composed again from the current record when it changed.  `lazy`: the
 * store may commit it without a flush (a checkpoint lost in a crash of the
 * store's server only means events delivered again), for the writes the
 * consumer makes as it goes; es_sub_commit and es_sub_close are durable. */
static int persist_as(es_sub *s, bool release, bool lazy)
{
    bool own[ES_MAX_SUB_PARTITIONS];
    for (;;) {
        *s->next = *s->state;
        int rc = compose(s, s->next, release, own);
        if (rc < 0)
            return rc;
        uint64_t ver;
        rc = store_sub_as(s->st, &s->k, s->version, s->next, &s->def_bytes, &ver, lazy);
        if (rc == 0) {
            apply_ownership(s, s->next, own);
            *s->state = *s->next;
            s->version = ver;
            s->acked_events = 0;
            s->persisted_at_ms = mono_ms();
            return 0;
        }
        if (rc != ES_ECONFLICT)
            return rc;
        if ((rc = load_sub(s->next, &ver, NULL, NULL, s->st, &s->k, s->name)) < 0 ||
            (rc = adopt(s, s->next, ver)) < 0)
            return rc;
    }
}

static int persist(es_sub *s, bool release)
{
    return persist_as(s, release, true);
}

/* Would a write now change membership or ownership (a member died, one
 * joined, a partition is to be handed over)? */
static bool group_changes(es_sub *s)
{
    bool own[ES_MAX_SUB_PARTITIONS];
    *s->next = *s->state;
    if (compose(s, s->next, false, own) < 0)
        return true; /* the write will say what is wrong */
    if (s->next->n_members != s->state->n_members)
        return true;
    for (uint32_t p = 0; p < s->next->n_parts; p++)
        if (own[p] != s->owned[p])
            return true;
    return false;
}

static int check_label(const char *l, const char *what)
{
    size_t n = strnlen(l, ES_MAX_SUB_NAME + 1);
    if (n == 0 || n > ES_MAX_SUB_NAME)
        return es__err(ES_EINVAL, "%s must be 1..%d bytes", what, ES_MAX_SUB_NAME);
    for (size_t i = 0; i < n; i++)
        if ((uint8_t)l[i] < 0x20 || (uint8_t)l[i] > 0x7e)
            return es__err(ES_EINVAL, "%s: byte %zu is 0x%02x; it must be printable ASCII", what, i,
                           (unsigned)(uint8_t)l[i]);
    return 0;
}

static void free_sub(es_sub *s)
{
    free(s->events);
    free(s->ptrs);
    free(s->retry_q);
    free(s->state);
    free(s->next);
    es_buf_free(&s->arena);
    es_buf_free(&s->def_bytes);
    free(s);
}

int es_sub_open(es_sub **out, es_store *st, const char *name, const es_sub_open_options *opts)
{
    es_sub_open_options o = ES_SUB_OPEN_OPTIONS_INIT;
    es_sub *s;
    size_t nl;
    int rc;
    if (!out)
        return es__err(ES_EINVAL, "es_sub_open: out is NULL");
    *out = NULL;
    if ((rc = need_kv(st)) < 0 || (rc = check_name(name, &nl)) < 0)
        return rc;
    if (opts) {
        if ((rc = es__check_version(opts->version, ES_SUB_OPEN_OPTIONS_VERSION,
                                    "es_sub_open_options")) < 0)
            return rc;
        if (opts->version == 1)
            memcpy(&o, opts, offsetof(es_sub_open_options, group));
        else
            o = *opts;
    }
    if (o.lease_ms && (o.lease_ms < 100 || o.lease_ms > 3600000))
        return es__err(ES_EINVAL, "lease_ms must be 100..3600000, not %u", o.lease_ms);
    size_t gl = 0;
    if (o.group && (rc = check_name(o.group, &gl)) < 0)
        return es__err(rc, "group name: %s", es_error_last());
    if (o.member && (rc = check_label(o.member, "member label")) < 0)
        return rc;
    if (!(s = es__calloc(1, sizeof *s)) || !(s->state = es__malloc(sizeof *s->state)) ||
        !(s->next = es__malloc(sizeof *s->next))) {
        if (s)
            free_sub(s);
        return es__err(ES_ENOMEM, "out of memory opening a subscription");
    }
    s->st = st;
    memcpy(s->name, name, nl);
    make_key(&s->k, name, nl);
    if (gl)
        memcpy(s->group, o.group, gl);
    if (o.member) {
        memcpy(s->label, o.member, strlen(o.member));
    } else {
        char host[64] = "";
        if (gethostname(host, sizeof host - 1) < 0)
            host[0] = 0;
        for (char *h = host; *h; h++)
            if ((uint8_t)*h < 0x20 || (uint8_t)*h > 0x7e)
                *h = '?';
        snprintf(s->label, sizeof s->label, "%.50s:%ld", host[0] ? host : "?", (long)getpid());
    }
    s->every = o.checkpoint_every ? o.checkpoint_every : 1;
    s->every_ms = o.checkpoint_ms;
    s->lease_ms = o.lease_ms ? o.lease_ms : 10000;
    randombytes_buf(s->me, sizeof s->me);
    for (;;) {
        if ((rc = load_sub(s->state, &s->version, &s->def, &s->def_bytes, st, &s->k, name)) < 0)
            goto fail;
        sub_state *n = s->next;
        *n = *s->state;
        int64_t now = es__realtime_us();
        prune_members(n, now, NULL);
        int64_t until = 0;
        for (uint32_t i = 0; i < n->n_members; i++)
            if (n->member[i].lease_until_us > until)
                until = n->member[i].lease_until_us;
        if (n->n_members && (!gl || strcmp(n->group, s->group) != 0)) {
            if (n->group[0])
                rc = es__err(ES_ECONFLICT,
                             "subscription '%s' is consumed by group '%s' (%u live members); "
                             "create another subscription for an independent consumer",
                             name, n->group, n->n_members);
            else
                rc = es__err(ES_ECONFLICT,
                             "subscription '%s' is open by another consumer (its lease runs for "
                             "%lld ms more)",
                             name, (long long)((until - now) / 1000));
            goto fail;
        }
        if (n->n_members >= ES_MAX_SUB_MEMBERS) {
            rc = es__err(ES_ECONFLICT, "subscription '%s' has %d live members already", name,
                         ES_MAX_SUB_MEMBERS);
            goto fail;
        }
        memcpy(n->group, s->group, sizeof n->group);
        sub_member *m = &n->member[n->n_members++];
        memset(m, 0, sizeof *m);
        memcpy(m->id, s->me, 16);
        memcpy(m->label, s->label, sizeof m->label);
        bool own[ES_MAX_SUB_PARTITIONS];
        if (!gl) { /* the one consumer: every partition */
            for (uint32_t p = 0; p < n->n_parts; p++) {
                memcpy(n->part[p].owner, s->me, 16);
                s->owned[p] = true;
                s->acked[p] = s->delivered[p] = n->part[p].checkpoint;
            }
        }
        if ((rc = compose(s, n, false, own)) < 0)
            goto fail;
        uint64_t ver;
        rc = store_sub(st, &s->k, s->version, n, &s->def_bytes, &ver);
        if (rc == 0) {
            memset(s->owned, 0, sizeof s->owned);
            s->acked_pos = UINT64_MAX;
            apply_ownership(s, n, own);
            if (s->acked_pos == UINT64_MAX)
                s->acked_pos = min_checkpoint(n);
            *s->state = *n;
            s->version = ver;
            break;
        }
        if (rc != ES_ECONFLICT)
            goto fail;
        memset(s->owned, 0, sizeof s->owned);
    }
    s->delivered_last = s->acked_pos;
    s->persisted_at_ms = mono_ms();
    s->retry_seq_seen = UINT64_MAX; /* parked events waiting for a retry: look once */
    *out = s;
    return 0;
fail:
    free_sub(s);
    return rc;
}

/* Copy an event into the batch (pointers fixed up after the arena is final). */
static int keep_event(es_sub *s, const es_event *ev)
{
    int rc;
    if (s->n == s->cap) {
        size_t c = s->cap ? s->cap * 2 : 64;
        es_event *p = es__realloc(s->events, c * sizeof *p);
        if (!p)
            return es__err(ES_ENOMEM, "out of memory for a batch");
        s->events = p;
        const es_event **q = es__realloc(s->ptrs, c * sizeof *q);
        if (!q)
            return es__err(ES_ENOMEM, "out of memory for a batch");
        s->ptrs = q;
        s->cap = c;
    }
    es_event *e = &s->events[s->n];
    *e = *ev;
    /* offsets into the arena for now */
    e->stream = (const uint8_t *)(uintptr_t)s->arena.len;
    if ((rc = es_buf_put(&s->arena, ev->stream, ev->stream_len)) < 0)
        return rc;
    e->type = (const char *)(uintptr_t)s->arena.len;
    if ((rc = es_buf_put(&s->arena, ev->type, ev->type_len + 1)) < 0)
        return rc;
    e->data = (const uint8_t *)(uintptr_t)s->arena.len;
    if (ev->data_len && (rc = es_buf_put(&s->arena, ev->data, ev->data_len)) < 0)
        return rc;
    e->meta = (const uint8_t *)(uintptr_t)s->arena.len;
    if (ev->meta_len && (rc = es_buf_put(&s->arena, ev->meta, ev->meta_len)) < 0)
        return rc;
    s->n++;
    return 0;
}

static void fix_pointers(es_sub *s)
{
    for (size_t i = 0; i < s->n; i++) {
        es_event *e = &s->events[i];
        e->stream = s->arena.data + (uintptr_t)e->stream;
        e->type = (const char *)(s->arena.data + (uintptr_t)e->type);
        e->data = s->arena.data + (uintptr_t)e->data;
        e->meta = s->arena.data + (uintptr_t)e->meta;
        s->ptrs[i] = e;
    }
}

/* ---- delivery ---- */

/* Parked events asked to be retried, of partitions we own, by position. */
typedef struct retry_ctx {
    es_sub *s;
    int rc;
} retry_ctx;

static int collect_retry(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                         uint64_t version, void *payload)
{
    retry_ctx *c = payload;
    es_sub *s = c->s;
    parked_rec r;
    (void)key, (void)klen, (void)version;
    if (park_decode(&r, val, vlen, s->name) < 0) {
        es_error_clear(); /* es_sub_parked_list reports it; delivery goes on */
        return 0;
    }
    if (!r.retry || r.partition >= s->state->n_parts || !s->owned[r.partition])
        return 0;
    if (s->retry_n == s->retry_cap) {
        size_t cap = s->retry_cap ? s->retry_cap * 2 : 16;
        uint64_t *q = es__realloc(s->retry_q, cap * sizeof *q);
        if (!q)
            return c->rc = es__err(ES_ENOMEM, "out of memory for parked events to retry");
        s->retry_q = q;
        s->retry_cap = cap;
    }
    s->retry_q[s->retry_n++] = r.position;
    return 0;
}

static int load_retries(es_sub *s)
{
    park_key pre;
    retry_ctx c = {s, 0};
    s->retry_n = 0;
    make_park_key(&pre, &s->k, 0);
    int rc = s->st->ops->kv_list(s->st->be, pre.k, pre.len, collect_retry, &c);
    if (c.rc)
        rc = c.rc;
    if (rc == 0)
        s->retry_seq_seen = s->state->retry_seq;
    return rc;
}

/* A batch of parked events to deliver again, read back from the log. */
static int scan_retries(es_sub *s)
{
    es_log_options o = ES_LOG_OPTIONS_INIT;
    es_cursor *c;
    const es_event *ev;
    size_t used = 0;
    int rc = 0;
    while (used < s->retry_n && s->n < s->def.batch_size) {
        uint64_t pos = s->retry_q[used++];
        o.from_position = pos;
        o.limit = 1;
        if ((rc = es_log_cursor(&c, s->st, &o)) < 0)
            break;
        rc = es_cursor_next(&ev, c);
        if (rc == 0 && ev->position == pos)
            rc = keep_event(s, ev);
        else if (rc == 0 || rc == ES_ITEROVER)
            rc = 0; /* not in the log (a damaged record): nothing to deliver */
        es_cursor_free(c);
        if (rc < 0)
            break;
    }
    if (rc < 0) {
        s->n = 0;
        return rc;
    }
    memmove(s->retry_q, s->retry_q + used, (s->retry_n - used) * sizeof *s->retry_q);
    s->retry_n -= used;
    if (s->n) {
        fix_pointers(s);
        s->retry_batch = true;
    }
    return 0;
}

/* One scan from the lowest delivered position of our partitions: fills the
 * batch with up to batch_size events. */
static int scan(es_sub *s)
{
    es_cursor *c;
    const es_event *ev;
    uint64_t last, from = UINT64_MAX;
    uint32_t np = s->state->n_parts;
    int rc;

    s->n = 0;
    s->retry_batch = false;
    es_buf_reset(&s->arena);
    if (s->retry_n)
        return scan_retries(s);
    for (uint32_t p = 0; p < np; p++)
        if (s->owned[p] && s->delivered[p] < from)
            from = s->delivered[p];
    if (from == UINT64_MAX)
        return 0; /* no partition of ours */
    /* Everything up to `last` is visible to a cursor opened after this. */
    if ((rc = es_store_last_position(&last, s->st)) < 0)
        return rc;
    if (last <= from)
        return 0;
    /* when the store filters exactly what we deliver, a batch is what the
     * cursor returns: it reads no more than that (else the batch never
     * asks for an event past the limit, so no end is mistaken for it) */
    bool exact = s->def.n_prefixes <= 1 && s->def.n_types <= 1 && np == 1;
    if ((rc = open_log(&c, s->st, &s->def, from + 1, exact ? s->def.batch_size : 0)) < 0)
        return rc;
    while (s->n < s->def.batch_size && (rc = es_cursor_next(&ev, c)) == 0) {
        if (!def_match(&s->def, ev))
            continue;
        uint32_t p = es_sub_partition_of(ev->stream, ev->stream_len, np);
        if (!s->owned[p] || ev->position <= s->delivered[p])
            continue;
        if ((rc = keep_event(s, ev)) < 0)
            break;
    }
    es_cursor_free(c);
    bool to_end = rc == ES_ITEROVER;
    if (to_end)
        rc = 0;
    if (rc < 0) {
        s->n = 0;
        return rc;
    }
    /* the cursor read the whole log up to `last` (and past it, when events
     * committed meanwhile), or up to the batch's last event */
    uint64_t frontier = s->n ? s->events[s->n - 1].position : 0;
    if (to_end && last > frontier)
        frontier = last;
    for (uint32_t p = 0; p < np; p++)
        if (s->owned[p] && s->delivered[p] < frontier)
            s->delivered[p] = frontier;
    if (s->n) {
        fix_pointers(s);
        s->delivered_last = s->events[s->n - 1].position;
    }
    return 0;
}

static int stopped(const es_sub *s)
{
    return es__err(ES_EPOISON,
                   "subscription '%s' stopped at the event at position %llu: it failed %u times "
                   "and is parked; drop it (or retry it) to go on",
                   s->name, (unsigned long long)s->stopped_at, s->def.max_attempts);
}

/* Look at the record: follow a reset, a delete, a takeover, a retry; renew
 * the lease at half its time; in a group, hand partitions over. */
static int refresh(es_sub *s)
{
    uint64_t ver;
    int rc;
    if ((rc = load_sub(s->next, &ver, NULL, NULL, s->st, &s->k, s->name)) < 0)
        return rc;
    if (ver != s->version && (rc = adopt(s, s->next, ver)) < 0)
        return rc;
    bool due = mono_ms() - s->persisted_at_ms > s->lease_ms / 2;
    if (!due && s->group[0])
        due = group_changes(s);
    if (due && (rc = persist(s, false)) < 0)
        return rc;
    if (s->retry_seq_seen != s->state->retry_seq && (rc = load_retries(s)) < 0)
        return rc;
    return 0;
}

static void nap_ms(int64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int es_sub_next(const es_event *const **out, size_t *n, es_sub *s, int timeout_ms)
{
    int rc;
    if (!out || !n || !s)
        return es__err(ES_EINVAL, "es_sub_next: NULL argument");
    *out = NULL;
    *n = 0;
    if (timeout_ms < 0 || timeout_ms > 86400000)
        return es__err(ES_EINVAL, "es_sub_next: timeout_ms must be 0..86400000, not %d",
                       timeout_ms);
    int64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        if ((rc = refresh(s)) < 0)
            return rc;
        if (s->stopped_at)
            return stopped(s);
        s->voided_upto = 0; /* the batch in hand is given up for a new one */
        s->n = 0;
        int64_t now = mono_ms();
        if (s->retry_at_ms > now) { /* a failed event's backoff */
            int64_t wait = s->retry_at_ms - now;
            if (wait > deadline - now) {
                nap_ms(deadline > now ? deadline - now : 0);
                return es__err(ES_ETIMEDOUT,
                               "subscription '%s': a failed event is due again in %lld ms", s->name,
                               (long long)wait);
            }
            nap_ms(wait < SUB_WAIT_SLICE_MS ? wait : SUB_WAIT_SLICE_MS);
            continue;
        }
        if ((rc = scan(s)) < 0)
            return rc;
        if (s->n) {
            *out = s->ptrs;
            *n = s->n;
            return 0;
        }
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            return es__err(ES_ETIMEDOUT, "subscription '%s': nothing new within %d ms", s->name,
                           timeout_ms);
        int64_t slice = (int64_t)s->lease_ms / 2;
        if (s->group[0] && slice > SUB_IDLE_SLICE_MS)
            slice = SUB_IDLE_SLICE_MS; /* members joining or dying are seen soon */
        if (slice > left)
            slice = left;
        uint64_t from = UINT64_MAX;
        for (uint32_t p = 0; p < s->state->n_parts; p++)
            if (s->owned[p] && s->delivered[p] < from)
                from = s->delivered[p];
        if (from == UINT64_MAX) {
            nap_ms(slice);
            continue;
        }
        rc = es_log_wait(s->st, from, (int)slice);
        if (rc < 0 && rc != ES_ETIMEDOUT)
            return rc;
    }
}

/* How many events of the batch in hand are at or before `position`. */
static size_t batch_upto(const es_sub *s, uint64_t position)
{
    size_t lo = 0, hi = s->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s->events[mid].position <= position)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Forget a parked record (its event was handled after a retry). */
static int unpark(es_sub *s, uint64_t position)
{
    park_key pk;
    es_buf b = ES_BUF_INIT;
    uint64_t ver, gone;
    make_park_key(&pk, &s->k, position);
    int rc = s->st->ops->kv_get(s->st->be, pk.k, pk.len, &b, &ver);
    es_buf_free(&b);
    if (rc == 0 && ver)
        rc = s->st->ops->kv_cas(s->st->be, pk.k, pk.len, ver, NULL, 0, &gone);
    if (rc == ES_ECONFLICT) /* dropped or retried again meanwhile */
        rc = 0, es_error_clear();
    return rc;
}

/* Park the event at batch index i after `attempts` failures (a record of
 * its own, rewritten if it was parked before). */
static int park(es_sub *s, size_t i, uint32_t attempts, const char *error)
{
    const es_event *ev = &s->events[i];
    park_key pk;
    parked_rec *r;
    es_buf b = ES_BUF_INIT;
    uint64_t ver, nv;
    int rc;
    if (!(r = es__calloc(1, sizeof *r)))
        return es__err(ES_ENOMEM, "out of memory parking an event");
    make_park_key(&pk, &s->k, ev->position);
    r->position = ev->position;
    r->partition = es_sub_partition_of(ev->stream, ev->stream_len, s->state->n_parts);
    r->parked_at_us = es__realtime_us();
    snprintf(r->error, sizeof r->error, "%s", error && *error ? error : "(no message)");
    do {
        es_buf_reset(&b);
        if ((rc = s->st->ops->kv_get(s->st->be, pk.k, pk.len, &b, &ver)) < 0)
            break;
        r->attempts = attempts;
        if (ver) { /* parked before: its attempts add up */
            parked_rec *old = es__malloc(sizeof *old);
            if (old && park_decode(old, b.data, b.len, s->name) == 0)
                r->attempts += old->attempts;
            free(old);
            es_error_clear();
        }
        es_buf_reset(&b);
        if ((rc = park_encode(&b, r)) < 0)
            break;
        rc = s->st->ops->kv_cas(s->st->be, pk.k, pk.len, ver, b.data, b.len, &nv);
    } while (rc == ES_ECONFLICT);
    es_buf_free(&b);
    free(r);
    return rc;
}

/* Acknowledge the delivered events up to `position` (no write). */
static void ack_upto(es_sub *s, uint64_t position)
{
    s->acked_events += batch_upto(s, position) - batch_upto(s, s->acked_pos);
    for (uint32_t p = 0; p < s->state->n_parts; p++) {
        if (!s->owned[p])
            continue;
        uint64_t to = position < s->delivered[p] ? position : s->delivered[p];
        if (to > s->acked[p])
            s->acked[p] = to;
    }
    s->acked_pos = position;
}

static bool persist_due(const es_sub *s)
{
    return s->acked_events >= s->every ||
           (s->every_ms && mono_ms() - s->persisted_at_ms >= (int64_t)s->every_ms);
}

int es_sub_ack(es_sub *s, uint64_t position)
{
    int rc;
    if (!s)
        return es__err(ES_EINVAL, "es_sub_ack: sub is NULL");
    if (s->voided_upto && position <= s->voided_upto)
        return 0; /* from a batch a reset voided */
    if (s->retry_batch) {
        /* parked events delivered again: handled, so no longer parked */
        size_t upto = batch_upto(s, position);
        if (upto == 0 || s->events[upto - 1].position != position)
            return es__err(ES_EINVAL, "es_sub_ack: position %llu is not in the batch in hand",
                           (unsigned long long)position);
        for (size_t i = 0; i < upto; i++)
            if ((rc = unpark(s, s->events[i].position)) < 0)
                return rc;
        s->acked_events += upto;
        return persist(s, false);
    }
    if (position > s->delivered_last)
        return es__err(ES_EINVAL,
                       "es_sub_ack: position %llu was not delivered (the last delivered is %llu)",
                       (unsigned long long)position, (unsigned long long)s->delivered_last);
    if (position < s->acked_pos)
        return es__err(ES_EINVAL, "es_sub_ack: position %llu is before the checkpoint %llu",
                       (unsigned long long)position, (unsigned long long)s->acked_pos);
    ack_upto(s, position);
    if (s->fail_pos && position >= s->fail_pos)
        s->fail_pos = 0, s->fail_count = 0; /* it went through in the end */
    return persist_due(s) ? persist(s, false) : 0;
}

/* Give the batch up after position `before`: its later events come again. */
static void rewind_after(es_sub *s, uint64_t before)
{
    for (uint32_t p = 0; p < s->state->n_parts; p++)
        if (s->owned[p] && s->delivered[p] > before)
            s->delivered[p] = before;
    s->delivered_last = before;
    s->n = 0;
}

int es_sub_nack(es_sub *s, uint64_t position, const char *error)
{
    int rc;
    if (!s)
        return es__err(ES_EINVAL, "es_sub_nack: sub is NULL");
    if (s->stopped_at)
        return stopped(s);
    if (s->voided_upto && position <= s->voided_upto)
        return 0; /* from a batch a reset voided */
    size_t upto = batch_upto(s, position);
    if (upto == 0 || s->events[upto - 1].position != position)
        return es__err(ES_EINVAL, "es_sub_nack: position %llu is not an event of the batch in hand",
                       (unsigned long long)position);
    size_t i = upto - 1;
    if (s->retry_batch) {
        /* a retried event failed again: the ones before it went through,
         * it is parked again (one more attempt counted) */
        for (size_t j = 0; j < i; j++)
            if ((rc = unpark(s, s->events[j].position)) < 0)
                return rc;
        if ((rc = park(s, i, 1, error)) < 0)
            return rc;
        /* the rest of the batch is retried later */
        for (size_t j = i + 1; j < s->n; j++)
            if (s->retry_n < s->retry_cap)
                s->retry_q[s->retry_n++] = s->events[j].position;
        s->n = 0;
        return persist(s, false);
    }
    if (position <= s->acked_pos)
        return es__err(ES_EINVAL, "es_sub_nack: position %llu is already acknowledged",
                       (unsigned long long)position);
    if (i > 0)
        ack_upto(s, s->events[i - 1].position);
    if (s->fail_pos == position)
        s->fail_count++;
    else
        s->fail_pos = position, s->fail_count = 1;
    if (s->fail_count < s->def.max_attempts) {
        uint64_t backoff = (uint64_t)s->def.retry_ms
                           << (s->fail_count - 1 < 20 ? s->fail_count - 1 : 20);
        if (backoff > SUB_MAX_BACKOFF_MS)
            backoff = SUB_MAX_BACKOFF_MS;
        s->retry_at_ms = mono_ms() + (int64_t)backoff;
        rewind_after(s, position - 1);
        return i > 0 && persist_due(s) ? persist(s, false) : 0;
    }
    if ((rc = park(s, i, s->fail_count, error)) < 0)
        return rc;
    s->fail_pos = 0, s->fail_count = 0, s->retry_at_ms = 0;
    if (s->def.on_poison == ES_SUB_STOP) {
        s->stopped_at = position;
        rewind_after(s, position - 1);
        if ((rc = persist(s, false)) < 0)
            return rc;
        return stopped(s);
    }
    ack_upto(s, position); /* parked: the subscription goes on past it */
    rewind_after(s, position);
    return persist(s, false);
}

int es_sub_commit(es_sub *s)
{
    if (!s)
        return es__err(ES_EINVAL, "es_sub_commit: sub is NULL");
    return persist_as(s, false, false);
}

int es_sub_run(es_sub *s, es_sub_handler handler, volatile int *stop, void *payload)
{
    int rc;
    if (!s || !handler || !stop)
        return es__err(ES_EINVAL, "es_sub_run: NULL argument");
    while (!__atomic_load_n(stop, __ATOMIC_ACQUIRE)) { /* set by another thread, or a handler */
        const es_event *const *evs;
        size_t n;
        rc = es_sub_next(&evs, &n, s, SUB_WAIT_SLICE_MS);
        if (rc == ES_ETIMEDOUT)
            continue;
        if (rc < 0)
            return rc;
        es_error_clear();
        int r = handler(evs, n, payload);
        size_t bad = 0;
        if (r && n > 1) {
            /* which one fails?  one at a time, up to it */
            for (bad = 0; bad < n; bad++) {
                es_error_clear();
                if ((r = handler(evs + bad, 1, payload)) != 0)
                    break;
            }
        }
        if (r == 0) {
            if ((rc = es_sub_ack(s, evs[n - 1]->position)) < 0)
                return rc;
            continue;
        }
        char msg[ES_MAX_SUB_ERROR + 1];
        const char *last = es_error_last();
        if (*last)
            snprintf(msg, sizeof msg, "%s", last);
        else
            snprintf(msg, sizeof msg, "the handler returned %d", r);
        if ((rc = es_sub_nack(s, evs[bad]->position, msg)) < 0)
            return rc;
    }
    return 0;
}

void es_sub_close(es_sub *s)
{
    if (!s)
        return;
    /* a clean close: the final checkpoints and the membership given back,
     * in one write (none if the subscription was taken over or deleted) */
    (void)persist_as(s, true, false);
    free_sub(s);
}
