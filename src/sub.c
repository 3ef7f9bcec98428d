/*
 * sub.c — subscriptions: named, durable readers of the global log with a
 * checkpoint and an ownership lease kept in the store's key-value table
 * (the backend's kv_* calls), so they behave the same on every store.
 *
 * One record per subscription, "sub/<name>": its state (checkpoint,
 * counters, owner and lease, a generation bumped by each reset) followed by
 * its definition (filters, start), which never changes.  One record means
 * creating or deleting a subscription is one compare-and-set, so no crash
 * can leave half of one behind.  Every write is conditional on the version
 * read, so a consumer whose lease was taken over cannot move the
 * checkpoint, and a reset is seen by the owner at its next batch.
 *
 * Delivery reads the log from the last delivered position.  It never
 * skips: a log cursor only returns a position when everything before it is
 * visible, and the subscription only moves its read position past events
 * the cursor returned, or up to a last position read before the scan.
 */
#include "internal.h"

#include <sodium.h>
#include <stdlib.h>
#include <time.h>

#define SUB_PREFIX "sub/"
#define SUB_PREFIX_LEN 4
#define SUB_DEF_MAGIC 0x53554231u   /* "SUB1" */
#define SUB_STATE_MAGIC 0x53544131u /* "STA1" */
#define SUB_BEHIND_CAP 1000000      /* events counted for the lag, at most */
#define SUB_WAIT_SLICE_MS 200       /* es_sub_run checks its stop flag this often */

/* ---- records ---- */

typedef struct sub_def {
    es_sub_start start;
    uint64_t start_position;
    int64_t start_time_us;
    uint32_t batch_size;
    size_t n_prefixes, n_types;
    uint8_t prefix[ES_MAX_SUB_FILTERS][ES_MAX_KEY];
    size_t prefix_len[ES_MAX_SUB_FILTERS];
    char type[ES_MAX_SUB_FILTERS][ES_MAX_TYPE + 1];
    size_t type_len[ES_MAX_SUB_FILTERS];
} sub_def;

typedef struct sub_state {
    uint64_t checkpoint;
    int64_t last_ack_us;
    uint64_t acked;
    uint64_t generation; /* bumped by es_sub_reset */
    uint8_t owner[16];   /* zeros: none */
    int64_t lease_until_us;
} sub_state;

/* Layout of the state, at the head of the record: magic u32 | checkpoint
 * u64 | last_ack i64 | acked u64 | generation u64 | owner[16] | lease_until
 * i64; the definition follows. */
#define STATE_SIZE (4 + 8 + 8 + 8 + 8 + 16 + 8)

static void state_encode(uint8_t out[STATE_SIZE], const sub_state *s)
{
    uint8_t *p = out;
    es__put_u32(p, SUB_STATE_MAGIC), p += 4;
    es__put_u64(p, s->checkpoint), p += 8;
    es__put_u64(p, (uint64_t)s->last_ack_us), p += 8;
    es__put_u64(p, s->acked), p += 8;
    es__put_u64(p, s->generation), p += 8;
    memcpy(p, s->owner, 16), p += 16;
    es__put_u64(p, (uint64_t)s->lease_until_us);
}

static int state_decode(sub_state *s, const uint8_t *p, size_t n, const char *name)
{
    if (n < STATE_SIZE || es__get_u32(p) != SUB_STATE_MAGIC)
        return es__err(ES_ECORRUPT, "subscription '%s': its state record is damaged", name);
    p += 4;
    s->checkpoint = es__get_u64(p), p += 8;
    s->last_ack_us = (int64_t)es__get_u64(p), p += 8;
    s->acked = es__get_u64(p), p += 8;
    s->generation = es__get_u64(p), p += 8;
    memcpy(s->owner, p, 16), p += 16;
    s->lease_until_us = (int64_t)es__get_u64(p);
    return 0;
}

/* Definition: magic u32 | start u8 | start_position u64 | start_time i64 |
 * batch u32 | n_prefixes u8 | (u8 len, bytes)… | n_types u8 | (u8 len, bytes)… */
static int def_encode(es_buf *out, const sub_def *d)
{
    uint8_t b[8 + 8 + 4 + 4 + 1];
    int rc;
    es__put_u32(b, SUB_DEF_MAGIC);
    b[4] = (uint8_t)d->start;
    es__put_u64(b + 5, d->start_position);
    es__put_u64(b + 13, (uint64_t)d->start_time_us);
    es__put_u32(b + 21, d->batch_size);
    if ((rc = es_buf_put(out, b, 25)) < 0)
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
    if (!p || n < 26 || es__get_u32(p) != SUB_DEF_MAGIC || p[4] > ES_SUB_FROM_TIME)
        goto bad;
    const uint8_t *end = p + n;
    d->start = (es_sub_start)p[4];
    d->start_position = es__get_u64(p + 5);
    d->start_time_us = (int64_t)es__get_u64(p + 13);
    d->batch_size = es__get_u32(p + 21);
    p += 25;
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
    int rc = st->ops->kv_get(st->be, k->k, k->len, &b, ver);
    if (rc == 0 && *ver == 0)
        rc = es__err(ES_ENOTFOUND, "no subscription named '%s'", name);
    if (rc == 0)
        rc = state_decode(s, b.data, b.len, name);
    if (rc == 0 && d)
        rc = def_decode(d, b.data + STATE_SIZE, b.len - STATE_SIZE, name);
    if (rc == 0 && def_bytes) {
        es_buf_reset(def_bytes);
        rc = es_buf_put(def_bytes, b.data + STATE_SIZE, b.len - STATE_SIZE);
    }
    es_buf_free(&b);
    return rc;
}

/* Write a subscription's record (state, then the definition's bytes) if
 * its version is still `expected` (0: only if there is none). */
static int store_sub(es_store *st, const sub_key *k, uint64_t expected, const sub_state *s,
                     const es_buf *def_bytes, uint64_t *ver)
{
    es_buf b = ES_BUF_INIT;
    int rc;
    uint8_t head[STATE_SIZE];
    state_encode(head, s);
    if ((rc = es_buf_put(&b, head, sizeof head)) == 0 &&
        (rc = es_buf_put(&b, def_bytes->data, def_bytes->len)) == 0)
        rc = st->ops->kv_cas(st->be, k->k, k->len, expected, b.data, b.len, ver);
    es_buf_free(&b);
    return rc;
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

/* ---- create, delete, reset ---- */

int es_sub_create(es_store *st, const char *name, const es_sub_options *opts)
{
    es_sub_options o = ES_SUB_OPTIONS_INIT;
    sub_def *d = NULL;
    es_buf b = ES_BUF_INIT;
    sub_key k;
    size_t nl;
    uint64_t ver;
    int rc;

    if ((rc = need_kv(st)) < 0 || (rc = check_name(name, &nl)) < 0)
        return rc;
    if (opts) {
        if ((rc = es__check_version(opts->version, ES_SUB_OPTIONS_VERSION, "es_sub_options")) < 0)
            return rc;
        o = *opts;
    }
    if (o.n_prefixes > ES_MAX_SUB_FILTERS || o.n_types > ES_MAX_SUB_FILTERS)
        return es__err(ES_ETOOBIG, "a subscription takes at most %d prefixes and %d types",
                       ES_MAX_SUB_FILTERS, ES_MAX_SUB_FILTERS);
    if ((o.n_prefixes && (!o.prefixes || !o.prefix_lens)) || (o.n_types && !o.types))
        return es__err(ES_EINVAL, "es_sub_options: a filter count without its array");
    if (o.batch_size > ES_MAX_BATCH)
        return es__err(ES_EINVAL, "batch_size %u is over %d", o.batch_size, ES_MAX_BATCH);
    if ((rc = check_start(o.start, o.start_position, o.start_time_us)) < 0)
        return rc;
    if (!(d = es__calloc(1, sizeof *d)))
        return es__err(ES_ENOMEM, "out of memory creating a subscription");
    d->start = o.start;
    d->start_position = o.start_position;
    d->start_time_us = o.start_time_us;
    d->batch_size = o.batch_size ? o.batch_size : 100;
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
    sub_state s;
    memset(&s, 0, sizeof s);
    if ((rc = start_checkpoint(&s.checkpoint, st, d->start, d->start_position, d->start_time_us)) <
        0)
        goto done;
    if ((rc = def_encode(&b, d)) < 0)
        goto done;
    if ((rc = store_sub(st, &k, 0, &s, &b, &ver)) == ES_ECONFLICT)
        rc = es__err(ES_ECONFLICT, "a subscription named '%s' exists", name);
done:
    es_buf_free(&b);
    free(d);
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
    return rc;
}

int es_sub_reset(es_store *st, const char *name, es_sub_start start, uint64_t position,
                 int64_t time_us)
{
    sub_key k;
    sub_state s;
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
    do {
        if ((rc = load_sub(&s, &ver, NULL, &def_bytes, st, &k, name)) < 0)
            break;
        s.checkpoint = cp;
        s.generation++;
        s.last_ack_us = es__now(st);
    } while ((rc = store_sub(st, &k, ver, &s, &def_bytes, &ver)) == ES_ECONFLICT);
    es_buf_free(&def_bytes);
    return rc;
}

/* ---- info and list ---- */

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
 * or type is handed to the store so that it can skip work). */
static int open_log(es_cursor **c, es_store *st, const sub_def *d, uint64_t from)
{
    es_log_options o = ES_LOG_OPTIONS_INIT;
    o.from_position = from;
    if (d->n_prefixes == 1) {
        o.prefix = d->prefix[0];
        o.prefix_len = d->prefix_len[0];
    }
    if (d->n_types == 1)
        o.type = d->type[0];
    return es_log_cursor(c, st, &o);
}

static int fill_info(es_sub_info *out, es_store *st, const char *name, size_t nl)
{
    sub_key k;
    sub_def *d;
    sub_state s;
    uint64_t ver;
    es_cursor *c = NULL;
    const es_event *ev;
    int rc;

    memset(out, 0, sizeof *out);
    memcpy(out->name, name, nl);
    make_key(&k, name, nl);
    if (!(d = es__malloc(sizeof *d)))
        return es__err(ES_ENOMEM, "out of memory reading a subscription");
    if ((rc = load_sub(&s, &ver, d, NULL, st, &k, name)) < 0)
        goto done;
    if ((rc = es_store_last_position(&out->head, st)) < 0)
        goto done;
    out->checkpoint = s.checkpoint;
    out->last_ack_us = s.last_ack_us;
    out->acked = s.acked;
    int64_t now = es__realtime_us();
    bool owned = s.lease_until_us > now;
    out->lease_until_us = owned ? s.lease_until_us : 0;
    int64_t store_now = es__now(st); /* commit times come from the store's clock */
    if (s.checkpoint < out->head) {
        if ((rc = open_log(&c, st, d, s.checkpoint + 1)) < 0)
            goto done;
        while ((rc = es_cursor_next(&ev, c)) == 0) {
            if (!def_match(d, ev))
                continue;
            if (out->behind == 0)
                out->behind_us = store_now > ev->time_us ? store_now - ev->time_us : 0;
            if (++out->behind >= SUB_BEHIND_CAP) {
                out->behind_capped = es_cursor_next(&ev, c) == 0;
                rc = ES_ITEROVER;
                break;
            }
        }
        if (rc != ES_ITEROVER)
            goto done;
        rc = 0;
    }
    out->state = !owned ? ES_SUB_IDLE : out->behind ? ES_SUB_CATCHING_UP : ES_SUB_LIVE;
done:
    es_cursor_free(c);
    free(d);
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
    for (size_t i = 0; rc == 0 && i < l.n; i++) {
        es_sub_info info;
        rc = fill_info(&info, st, l.names[i], strlen(l.names[i]));
        if (rc == ES_ENOTFOUND) { /* deleted meanwhile */
            rc = 0;
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

/* ---- the consumer ---- */

struct es_sub {
    es_store *st;
    char name[ES_MAX_SUB_NAME + 1];
    sub_key k;
    sub_def def;
    es_buf def_bytes;  /* the record's definition, rewritten with each state */
    sub_state state;   /* as last written or read */
    uint64_t version;  /* of the state record */
    uint64_t read_pos; /* every matching event up to it was delivered */
    uint64_t delivered_last;
    uint64_t acked_pos;    /* acknowledged, maybe not yet persisted */
    uint64_t voided_upto;  /* a reset voided the batch in hand: its acks are no-ops */
    uint64_t acked_events; /* acknowledged since the last persist */
    int64_t persisted_at_ms;
    uint32_t every, every_ms, lease_ms;
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

/* Take a state record that changed under us: another owner means we lost
 * the subscription; our own with a new generation is a reset, which we
 * follow (the batch in hand is void: its acknowledgements do nothing). */
static int adopt(es_sub *s, const sub_state *cur, uint64_t ver)
{
    if (memcmp(cur->owner, s->state.owner, 16) != 0)
        return es__err(ES_ECONFLICT,
                       "subscription '%s' was taken over by another consumer (its lease ran out)",
                       s->name);
    if (cur->generation != s->state.generation) {
        if (s->delivered_last > s->voided_upto)
            s->voided_upto = s->delivered_last;
        s->read_pos = s->delivered_last = s->acked_pos = cur->checkpoint;
        s->acked_events = 0;
        s->n = 0;
    }
    s->state = *cur;
    s->version = ver;
    return 0;
}

/* Write the state: our lease renewed (or given back, `release`) and the
 * acknowledged checkpoint, conditional on the version we read. */
static int persist(es_sub *s, bool release)
{
    for (;;) {
        sub_state next = s->state;
        int64_t now = es__realtime_us(); /* leases: the real clock, shared by processes */
        if (s->acked_pos > next.checkpoint) {
            next.acked += s->acked_events;
            next.checkpoint = s->acked_pos;
            next.last_ack_us = es__now(s->st);
        }
        if (release) {
            memset(next.owner, 0, sizeof next.owner);
            next.lease_until_us = 0;
        } else {
            next.lease_until_us = now + (int64_t)s->lease_ms * 1000;
        }
        uint64_t ver;
        int rc = store_sub(s->st, &s->k, s->version, &next, &s->def_bytes, &ver);
        if (rc == 0) {
            s->state = next;
            s->version = ver;
            s->acked_events = 0;
            s->persisted_at_ms = mono_ms();
            return 0;
        }
        if (rc != ES_ECONFLICT)
            return rc;
        sub_state cur;
        if ((rc = load_sub(&cur, &ver, NULL, NULL, s->st, &s->k, s->name)) < 0 ||
            (rc = adopt(s, &cur, ver)) < 0)
            return rc;
    }
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
        o = *opts;
    }
    if (o.lease_ms && (o.lease_ms < 100 || o.lease_ms > 3600000))
        return es__err(ES_EINVAL, "lease_ms must be 100..3600000, not %u", o.lease_ms);
    if (!(s = es__calloc(1, sizeof *s)))
        return es__err(ES_ENOMEM, "out of memory opening a subscription");
    s->st = st;
    memcpy(s->name, name, nl);
    make_key(&s->k, name, nl);
    s->every = o.checkpoint_every ? o.checkpoint_every : 1;
    s->every_ms = o.checkpoint_ms;
    s->lease_ms = o.lease_ms ? o.lease_ms : 10000;
    for (;;) {
        if ((rc = load_sub(&s->state, &s->version, &s->def, &s->def_bytes, st, &s->k, name)) < 0)
            goto fail;
        int64_t now = es__realtime_us();
        static const uint8_t nobody[16];
        if (s->state.lease_until_us > now && memcmp(s->state.owner, nobody, 16) != 0) {
            rc = es__err(ES_ECONFLICT,
                         "subscription '%s' is open by another consumer (its lease runs for "
                         "%lld ms more)",
                         name, (long long)((s->state.lease_until_us - now) / 1000));
            goto fail;
        }
        sub_state mine = s->state;
        randombytes_buf(mine.owner, sizeof mine.owner);
        mine.lease_until_us = now + (int64_t)s->lease_ms * 1000;
        uint64_t ver;
        rc = store_sub(st, &s->k, s->version, &mine, &s->def_bytes, &ver);
        if (rc == 0) {
            s->state = mine;
            s->version = ver;
            break;
        }
        if (rc != ES_ECONFLICT)
            goto fail;
    }
    s->read_pos = s->delivered_last = s->acked_pos = s->state.checkpoint;
    s->persisted_at_ms = mono_ms();
    *out = s;
    return 0;
fail:
    es_buf_free(&s->def_bytes);
    free(s);
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

/* One scan from read_pos: fills the batch with up to batch_size events. */
static int scan(es_sub *s)
{
    es_cursor *c;
    const es_event *ev;
    uint64_t last;
    int rc;

    s->n = 0;
    es_buf_reset(&s->arena);
    /* Everything up to `last` is visible to a cursor opened after this. */
    if ((rc = es_store_last_position(&last, s->st)) < 0)
        return rc;
    if (last <= s->read_pos)
        return 0;
    if ((rc = open_log(&c, s->st, &s->def, s->read_pos + 1)) < 0)
        return rc;
    while (s->n < s->def.batch_size && (rc = es_cursor_next(&ev, c)) == 0) {
        if (!def_match(&s->def, ev))
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
    if (s->n) {
        fix_pointers(s);
        s->read_pos = s->events[s->n - 1].position;
        s->delivered_last = s->read_pos;
    }
    /* the cursor read the whole log up to `last`: nothing else is there */
    if (to_end && last > s->read_pos)
        s->read_pos = last;
    return 0;
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
        /* a state record that changed under us (a reset, a delete, a
         * takeover) is followed; the lease is renewed at half its time */
        uint64_t ver;
        sub_state cur;
        if ((rc = load_sub(&cur, &ver, NULL, NULL, s->st, &s->k, s->name)) < 0)
            return rc;
        if (ver != s->version && (rc = adopt(s, &cur, ver)) < 0)
            return rc;
        if (mono_ms() - s->persisted_at_ms > s->lease_ms / 2 && (rc = persist(s, false)) < 0)
            return rc;
        s->voided_upto = 0; /* the batch in hand is given up for a new one */
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
        if (slice > left)
            slice = left;
        rc = es_log_wait(s->st, s->read_pos, (int)slice);
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

int es_sub_ack(es_sub *s, uint64_t position)
{
    if (!s)
        return es__err(ES_EINVAL, "es_sub_ack: sub is NULL");
    if (s->voided_upto && position <= s->voided_upto)
        return 0; /* from a batch a reset voided */
    if (position > s->delivered_last)
        return es__err(ES_EINVAL,
                       "es_sub_ack: position %llu was not delivered (the last delivered is %llu)",
                       (unsigned long long)position, (unsigned long long)s->delivered_last);
    if (position < s->acked_pos)
        return es__err(ES_EINVAL, "es_sub_ack: position %llu is before the checkpoint %llu",
                       (unsigned long long)position, (unsigned long long)s->acked_pos);
    /* count the events of the batch now acknowledged (it is in position
     * order: two binary searches) */
    s->acked_events += batch_upto(s, position) - batch_upto(s, s->acked_pos);
    s->acked_pos = position;
    bool due = s->acked_events >= s->every ||
               (s->every_ms && mono_ms() - s->persisted_at_ms >= (int64_t)s->every_ms);
    return due ? persist(s, false) : 0;
}

int es_sub_commit(es_sub *s)
{
    if (!s)
        return es__err(ES_EINVAL, "es_sub_commit: sub is NULL");
    return persist(s, false);
}

int es_sub_run(es_sub *s, es_sub_handler handler, volatile int *stop, void *payload)
{
    int rc;
    if (!s || !handler || !stop)
        return es__err(ES_EINVAL, "es_sub_run: NULL argument");
    while (!*stop) {
        const es_event *const *evs;
        size_t n;
        rc = es_sub_next(&evs, &n, s, SUB_WAIT_SLICE_MS);
        if (rc == ES_ETIMEDOUT)
            continue;
        if (rc < 0)
            return rc;
        int r = handler(evs, n, payload);
        if (r)
            return es__cb_rc(r);
        if ((rc = es_sub_ack(s, evs[n - 1]->position)) < 0)
            return rc;
    }
    return 0;
}

void es_sub_close(es_sub *s)
{
    if (!s)
        return;
    /* a clean close: the final checkpoint and the lease given back, in one
     * write (none if the subscription was taken over or deleted) */
    (void)persist(s, true);
    free(s->events);
    free(s->ptrs);
    es_buf_free(&s->arena);
    es_buf_free(&s->def_bytes);
    free(s);
}
