/*
 * store.c — the store handle: opening by URI, argument checks at the API
 * boundary, and dispatch to the backend vtable.  Everything a backend may
 * assume about its input is checked here, once, for every backend.
 */
#include "internal.h"

#include <sodium.h>
#include <stdlib.h>
#include <time.h>

int64_t es__realtime_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void es__new_id(uint8_t id[ES_ID_SIZE])
{
    uint64_t ms = (uint64_t)es__realtime_us() / 1000;
    randombytes_buf(id + 6, ES_ID_SIZE - 6);
    for (int i = 5; i >= 0; i--) {
        id[i] = (uint8_t)ms;
        ms >>= 8;
    }
    id[6] = (uint8_t)(0x70 | (id[6] & 0x0f)); /* version 7 */
    id[8] = (uint8_t)(0x80 | (id[8] & 0x3f)); /* RFC 4122 variant */
}

int64_t es__now(es_store *st)
{
    return st->clock ? st->clock(st->clock_payload) : es__realtime_us();
}

static const es__backend *find_backend(const char *uri, const char **path)
{
    if (strncmp(uri, "mem:", 4) == 0) {
        *path = uri + 4;
        return &es__backend_mem;
    }
#ifdef ES_HAVE_LMDB
    if (strncmp(uri, "lmdb:", 5) == 0) {
        *path = uri + 5;
        return &es__backend_lmdb;
    }
#endif
#ifdef ES_HAVE_PG
    if (strncmp(uri, "postgres://", 11) == 0 || strncmp(uri, "postgresql://", 13) == 0) {
        *path = uri;
        return &es__backend_pg;
    }
#endif
#ifdef ES_HAVE_HTTP
    if (strncmp(uri, "http://", 7) == 0 || strncmp(uri, "https://", 8) == 0) {
        *path = uri;
        return &es__backend_http;
    }
#endif
    return NULL;
}

int es_store_open(es_store **out, const char *uri, const es_open_options *opts)
{
    es_open_options defaults = ES_OPEN_OPTIONS_INIT;
    const char *path = NULL;
    const es__backend *ops;
    es_store *st;
    int rc;

    if (!out)
        return es__err(ES_EINVAL, "es_store_open: out is NULL");
    *out = NULL;
    if (!uri || !*uri)
        return es__err(ES_EINVAL, "es_store_open: empty store URI");
    if (!opts)
        opts = &defaults;
    if ((rc = es__check_version(opts->version, ES_OPEN_OPTIONS_VERSION, "es_open_options")) < 0)
        return rc;
    if (opts->flags & ~(unsigned)(ES_OPEN_NOSYNC | ES_OPEN_READONLY | ES_OPEN_NOCREATE))
        return es__err(ES_EINVAL, "es_open_options.flags has unknown bits 0x%x", opts->flags);
    if (opts->timeout_ms < 0)
        return es__err(ES_EINVAL, "es_open_options.timeout_ms is negative");
    if (!(ops = find_backend(uri, &path))) {
        const char *colon = strchr(uri, ':');
        if (!colon)
            return es__err(ES_EINVAL,
                           "store URI '%.200s' has no scheme (try mem:, lmdb:PATH or "
                           "postgres://…)",
                           uri);
        return es__err(ES_ENOTSUP, "store scheme '%.*s' is not built into this library",
                       (int)(colon - uri > 40 ? 40 : colon - uri), uri);
    }
    if (sodium_init() < 0)
        return es__err(ES_ERROR, "libsodium failed to initialise");
    if (!(st = es__calloc(1, sizeof *st)))
        return es__err(ES_ENOMEM, "out of memory opening a store");
    if ((rc = es__shred_init(st)) < 0) {
        free(st);
        return rc;
    }
    st->ops = ops;
    st->clock = opts->clock;
    st->clock_payload = opts->clock_payload;
    st->flags = opts->flags;
    if ((rc = ops->open(&st->be, path, opts, st)) < 0) {
        es__shred_free(st);
        free(st);
        return rc;
    }
    *out = st;
    return 0;
}

void es_store_close(es_store *st)
{
    if (!st)
        return;
    st->ops->close(st->be);
    es__shred_free(st);
    free(st);
}

const char *es_store_kind(const es_store *st)
{
    return st ? st->ops->name : "";
}

bool es__expect_ok(uint64_t expected, uint64_t head)
{
    if (expected == ES_EXPECT_ANY)
        return true;
    if (expected == ES_EXPECT_EXISTS)
        return head > 0;
    return head == expected;
}

int es__check_kept_time(es_store *st, int64_t t)
{
    int64_t now = es__now(st);
    /* now is at most INT64_MAX: compare without overflowing */
    if (now < INT64_MAX - ES_MAX_TIME_AHEAD_US && t > now + ES_MAX_TIME_AHEAD_US)
        return es__err(ES_EINVAL,
                       "es_append: kept time %lld is over a day past the store's clock (%lld); "
                       "it would pin every later commit time",
                       (long long)t, (long long)now);
    return 0;
}

int es__commit_time(es_store *st, const es__append_req *req, int64_t last_time, int64_t *out)
{
    int64_t t;
    int rc;
    if (req->keep_time) {
        t = req->events[0].time_us;
        if ((rc = es__check_kept_time(st, t)) < 0)
            return rc;
        if (t < last_time)
            return es__err(ES_EINVAL,
                           "kept commit time %lld is before the store's latest commit time %lld",
                           (long long)t, (long long)last_time);
    } else {
        t = es__now(st);
        if (t < last_time)
            t = last_time; /* commit times never go back, so "as of T" stays a prefix */
    }
    *out = t;
    return 0;
}

int es__idempotency_check(const es__append_req *req, es__id_lookup_fn lookup, void *ctx,
                          uint64_t head, es_append_result *out)
{
    es_event ev;
    size_t found = 0;
    uint64_t first_seq = 0;
    int rc;

    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < req->n; i++) {
        memset(&ev, 0, sizeof ev);
        if ((rc = lookup(ctx, req->ids[i], &ev)) < 0)
            return rc;
        if (rc == 0) {
            if (found)
                break;
            continue;
        }
        if (found != i)
            return es__err(ES_EDUPLICATE,
                           "event %zu of the batch has an id already stored, but event %zu "
                           "does not: a partial overlap with an earlier append",
                           i, i - 1);
        if (ev.stream_len != req->stream_len || memcmp(ev.stream, req->stream, ev.stream_len))
            return es__err(ES_EDUPLICATE, "event %zu's id is already used in another stream", i);
        if (i == 0) {
            first_seq = ev.seq;
            out->first_seq = ev.seq;
            out->first_position = ev.position;
            out->time_us = ev.time_us;
        } else if (ev.seq != first_seq + i) {
            return es__err(ES_EDUPLICATE,
                           "event ids of the batch are stored, but not consecutively");
        }
        out->last_seq = ev.seq;
        out->last_position = ev.position;
        found++;
    }
    if (found == 0)
        return 0;
    if (found != req->n)
        return es__err(ES_EDUPLICATE,
                       "%zu of the batch's %zu event ids are already stored: a partial overlap "
                       "with an earlier append",
                       found, req->n);
    if (!es__expect_ok(req->expected, first_seq - 1)) {
        memset(out, 0, sizeof *out);
        out->head = head;
        return es__err(ES_ECONFLICT,
                       "retried append landed at seq %llu, which its expectation does not allow",
                       (unsigned long long)first_seq);
    }
    out->head = head;
    out->replayed = 1;
    return 1;
}

static int cmp_id(const void *a, const void *b)
{
    return memcmp(a, b, ES_ID_SIZE);
}

static int check_stream(const void *stream, size_t len)
{
    if (!stream)
        return es__err(ES_EINVAL, "stream key is NULL");
    if (len == 0)
        return es__err(ES_EINVAL, "stream key is empty");
    if (len > ES_MAX_KEY)
        return es__err(ES_ETOOBIG, "stream key is %zu bytes; the limit is %d", len, ES_MAX_KEY);
    return 0;
}

static int check_type(const char *type, const char *what, size_t i, size_t *len)
{
    if (!type)
        return es__err(ES_EINVAL, "%s %zu has no type name", what, i);
    size_t n = strnlen(type, ES_MAX_TYPE + 1);
    if (n == 0)
        return es__err(ES_EINVAL, "%s %zu has an empty type name", what, i);
    if (n > ES_MAX_TYPE)
        return es__err(ES_ETOOBIG, "%s %zu's type name is over the limit of %d bytes", what, i,
                       ES_MAX_TYPE);
    *len = n;
    return 0;
}

/* Check one request's events; adds their sizes to *bytes and *events. */
static int check_events(const es_event_new *events, size_t n, size_t op, size_t *bytes,
                        size_t *count, bool raw)
{
    size_t tl;
    int rc;
    if (!events || n == 0)
        return es__err(ES_EINVAL, "es_append: op %zu has no events", op);
    if (n > ES_MAX_BATCH || *count + n > ES_MAX_BATCH)
        return es__err(ES_ETOOBIG, "es_append: over %d events in one append", ES_MAX_BATCH);
    *count += n;
    for (size_t i = 0; i < n; i++) {
        const es_event_new *e = &events[i];
        if ((rc = check_type(e->type, "event", i, &tl)) < 0)
            return rc;
        if ((!e->data && e->data_len) || (!e->meta && e->meta_len))
            return es__err(ES_EINVAL, "event %zu has a length but a NULL data or meta pointer", i);
        if (e->data_len > ES_MAX_DATA)
            return es__err(ES_ETOOBIG, "event %zu's data is %zu bytes; the limit is %u", i,
                           e->data_len, ES_MAX_DATA);
        if (e->meta_len > ES_MAX_META)
            return es__err(ES_ETOOBIG, "event %zu's metadata is %zu bytes; the limit is %u", i,
                           e->meta_len, ES_MAX_META);
        if (!raw && es__shred_is_envelope(e->data, e->data_len))
            return es__err(ES_EINVAL,
                           "event %zu's data starts with the bytes that mark an encrypted "
                           "envelope; only a raw append (ES_APPEND_RAW) may write those",
                           i);
        *bytes += tl + e->data_len + e->meta_len;
        if (*bytes > ES_MAX_BATCH_BYTES)
            return es__err(ES_ETOOBIG, "the append holds over %u bytes of data",
                           ES_MAX_BATCH_BYTES);
    }
    return 0;
}

static int found_one(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                     uint64_t version, void *payload)
{
    (void)key, (void)klen, (void)val, (void)vlen, (void)version, (void)payload;
    return 1; /* one is enough */
}

/* ES_EINVAL on a replica (a "replica/" record in the kv table, which
 * es_replicate keeps in its target); looked up once per handle. */
static int check_not_replica(es_store *st)
{
    int known = atomic_load(&st->replica);
    if (known == 0) {
        int rc = 0;
        if (st->ops->kv_list)
            rc = st->ops->kv_list(st->be, (const uint8_t *)"replica/", 8, found_one, NULL);
        if (rc < 0 && rc != ES_EUSER)
            return rc;
        known = rc == ES_EUSER || rc == 1 ? 2 : 1;
        atomic_store(&st->replica, known);
    }
    if (known == 2)
        return es__err(ES_EINVAL, "the store is a replica (esrc replicate writes it): write to "
                                  "its source, or append with ES_APPEND_TO_REPLICA");
    return 0;
}

int es_append_multi(es_append_result *out, es_store *st, const es_append_op *ops, size_t n_ops,
                    unsigned flags)
{
    uint8_t(*ids)[ES_ID_SIZE] = NULL;
    uint8_t(*sorted)[ES_ID_SIZE] = NULL;
    es__append_req *reqs = NULL;
    es_event_new **sealed = NULL;
    es_append_result *outs = out;
    size_t bytes = 0, count = 0;
    int rc;

    if (!out)
        return es__err(ES_EINVAL, "es_append_multi: out is NULL");
    if (!st)
        return es__err(ES_EINVAL, "es_append: store is NULL");
    if (!ops || n_ops == 0)
        return es__err(ES_EINVAL, "es_append_multi: no ops");
    if (n_ops > ES_MAX_BATCH)
        return es__err(ES_ETOOBIG, "es_append_multi: over %d ops", ES_MAX_BATCH);
    memset(out, 0, n_ops * sizeof *out);
    if (st->flags & ES_OPEN_READONLY)
        return es__err(ES_EINVAL, "es_append: the store was opened read-only");
    if (flags & ~(unsigned)(ES_APPEND_KEEP_TIME | ES_APPEND_RAW | ES_APPEND_TO_REPLICA))
        return es__err(ES_EINVAL, "es_append: unknown flags 0x%x", flags);
    for (size_t k = 0; k < n_ops; k++) {
        const es_append_op *op = &ops[k];
        if ((rc = check_stream(op->stream, op->stream_len)) < 0)
            return rc;
        if (op->expected != ES_EXPECT_ANY && op->expected != ES_EXPECT_EXISTS &&
            op->expected >= ES_SEQ_MAX)
            return es__err(ES_EINVAL, "es_append: expected seq %llu is out of range",
                           (unsigned long long)op->expected);
        if ((rc = check_events(op->events, op->n, k, &bytes, &count,
                               (flags & ES_APPEND_RAW) != 0)) < 0)
            return rc;
    }
    if ((flags & ES_APPEND_KEEP_TIME) && ops[0].events[0].time_us <= 0)
        return es__err(ES_EINVAL, "es_append: ES_APPEND_KEEP_TIME needs events[0].time_us > 0");

    if (!(ids = es__malloc(count * sizeof *ids)) || !(reqs = es__calloc(n_ops, sizeof *reqs))) {
        rc = es__err(ES_ENOMEM, "out of memory for %zu event ids", count);
        goto done;
    }
    size_t at = 0;
    for (size_t k = 0; k < n_ops; k++) {
        const es_append_op *op = &ops[k];
        size_t pb = 0;
        for (size_t i = 0; i < op->n; i++) {
            const es_event_new *e = &op->events[i];
            if (e->id)
                memcpy(ids[at + i], e->id, ES_ID_SIZE);
            else
                es__new_id(ids[at + i]);
            pb += strlen(e->type) + e->data_len + e->meta_len;
        }
        reqs[k] = (es__append_req){
            .stream = op->stream,
            .stream_len = op->stream_len,
            .expected = op->expected,
            .events = op->events,
            .n = op->n,
            .ids = (const uint8_t(*)[ES_ID_SIZE])ids + at,
            .keep_time = (flags & ES_APPEND_KEEP_TIME) != 0,
            .payload_bytes = pb,
        };
        at += op->n;
    }
    if (count > 1) {
        if (!(sorted = es__malloc(count * sizeof *sorted))) {
            rc = es__err(ES_ENOMEM, "out of memory for %zu event ids", count);
            goto done;
        }
        memcpy(sorted, ids, count * sizeof *ids);
        qsort(sorted, count, ES_ID_SIZE, cmp_id);
        for (size_t i = 1; i < count; i++) {
            if (memcmp(sorted[i - 1], sorted[i], ES_ID_SIZE) == 0) {
                rc = es__err(ES_EINVAL, "two events of the append have the same id");
                goto done;
            }
        }
    }
    /* a replica is written by its replicator only */
    if (!(flags & ES_APPEND_TO_REPLICA) && (rc = check_not_replica(st)) < 0)
        goto done;
    /* events under a shredding rule are written encrypted (shred.c) */
    if (!(flags & ES_APPEND_RAW)) {
        if ((rc = es__shred_seal_ops(&sealed, st, ops, n_ops, (const uint8_t(*)[ES_ID_SIZE])ids)) <
            0)
            goto done;
        for (size_t k = 0; sealed && k < n_ops; k++) {
            if (!sealed[k])
                continue;
            size_t pb = 0;
            for (size_t i = 0; i < ops[k].n; i++)
                pb += strlen(sealed[k][i].type) + sealed[k][i].data_len + sealed[k][i].meta_len;
            reqs[k].events = sealed[k];
            reqs[k].payload_bytes = pb;
        }
    }
    rc = st->ops->append(st->be, reqs, n_ops, outs);
    if (rc > 0)
        rc = 0;
    if (rc == 0) {
        uint64_t top = 0;
        for (size_t i = 0; i < n_ops; i++)
            if (outs[i].last_position > top)
                top = outs[i].last_position;
        uint64_t cur = atomic_load(&st->max_acked);
        while (top > cur && !atomic_compare_exchange_weak(&st->max_acked, &cur, top))
            ;
    }
done:
    es__shred_free_ops(sealed, ops, n_ops);
    free(sorted);
    free(reqs);
    free(ids);
    return rc;
}

int es_append_ex(es_append_result *out, es_store *st, const void *stream, size_t stream_len,
                 uint64_t expected, const es_event_new *events, size_t n, unsigned flags)
{
    es_append_result local;
    es_append_op op = {stream, stream_len, expected, events, n};
    return es_append_multi(out ? out : &local, st, &op, 1, flags);
}

int es_append(es_append_result *out, es_store *st, const void *stream, size_t stream_len,
              uint64_t expected, const es_event_new *events, size_t n)
{
    return es_append_ex(out, st, stream, stream_len, expected, events, n, 0);
}

int es_stream_head(uint64_t *out, es_store *st, const void *stream, size_t stream_len)
{
    int rc;
    if (!out || !st)
        return es__err(ES_EINVAL, "es_stream_head: NULL argument");
    *out = 0;
    if ((rc = check_stream(stream, stream_len)) < 0)
        return rc;
    return st->ops->head(st->be, stream, stream_len, out);
}

int es_log_wait(es_store *st, uint64_t after, int timeout_ms)
{
    if (!st)
        return es__err(ES_EINVAL, "es_log_wait: store is NULL");
    if (timeout_ms < 0 || timeout_ms > 86400000)
        return es__err(ES_EINVAL, "es_log_wait: timeout_ms must be 0..86400000, not %d",
                       timeout_ms);
    if (st->ops->wait)
        return st->ops->wait(st->be, after, timeout_ms);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (;;) {
        uint64_t last;
        int rc = st->ops->last_position(st->be, &last);
        if (rc < 0)
            return rc;
        if (last > after)
            return 0;
        clock_gettime(CLOCK_MONOTONIC, &now);
        int64_t ms =
            (int64_t)(now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
        if (ms >= timeout_ms)
            return es__err(ES_ETIMEDOUT, "es_log_wait: nothing past position %llu within %d ms",
                           (unsigned long long)after, timeout_ms);
        struct timespec nap = {0, 5000000};
        nanosleep(&nap, NULL);
    }
}

int es_log_catch_up(es_store *st, int timeout_ms)
{
    if (!st)
        return es__err(ES_EINVAL, "es_log_catch_up: store is NULL");
    if (timeout_ms < 0 || timeout_ms > 86400000)
        return es__err(ES_EINVAL, "es_log_catch_up: timeout_ms must be 0..86400000, not %d",
                       timeout_ms);
    uint64_t top = atomic_load(&st->max_acked);
    if (top == 0)
        return 0;
    int rc = es_log_wait(st, top - 1, timeout_ms);
    if (rc == ES_ETIMEDOUT)
        return es__err(ES_ETIMEDOUT,
                       "es_log_catch_up: the global log did not reach position %llu within %d ms "
                       "(a long transaction elsewhere may hold its horizon back)",
                       (unsigned long long)top, timeout_ms);
    return rc;
}

int es_store_last_position(uint64_t *out, es_store *st)
{
    if (!out || !st)
        return es__err(ES_EINVAL, "es_store_last_position: NULL argument");
    *out = 0;
    return st->ops->last_position(st->be, out);
}

/* ---- cursors ---- */

int es_stream_cursor(es_cursor **out, es_store *st, const void *stream, size_t stream_len,
                     const es_read_options *opts)
{
    es_read_options o = ES_READ_OPTIONS_INIT;
    int rc;

    if (!out)
        return es__err(ES_EINVAL, "es_stream_cursor: out is NULL");
    *out = NULL;
    if (!st)
        return es__err(ES_EINVAL, "es_stream_cursor: store is NULL");
    if ((rc = check_stream(stream, stream_len)) < 0)
        return rc;
    if (opts) {
        if ((rc = es__check_version(opts->version, ES_READ_OPTIONS_VERSION, "es_read_options")) < 0)
            return rc;
        o = *opts;
    }
    if (o.backward != 0 && o.backward != 1)
        return es__err(ES_EINVAL, "es_read_options.backward must be 0 or 1");
    if (!o.backward) {
        if (o.from_seq == 0)
            o.from_seq = 1;
        if (o.to_seq == 0)
            o.to_seq = UINT64_MAX;
    } else {
        if (o.from_seq == 0)
            o.from_seq = UINT64_MAX;
        if (o.to_seq == 0)
            o.to_seq = 1;
    }
    if ((rc = st->ops->stream_cursor(out, st->be, stream, stream_len, &o)) < 0)
        return rc;
    (*out)->st = st;
    (*out)->limit = o.limit;
    (*out)->from_time_us = 0;
    (*out)->to_time_us = INT64_MAX;
    (*out)->time_ordered = false;
    (*out)->done = false;
    return 0;
}

/* The first position at or after *from whose event was committed at or
 * after t, by a binary search over positions (stores whose log is in time
 * order only).  Each probe reads one event. */
static int seek_time(es_store *st, uint64_t *from, int64_t t)
{
    uint64_t lo = *from, hi;
    int rc;
    if ((rc = st->ops->last_position(st->be, &hi)) < 0)
        return rc;
    if (hi < lo)
        return 0;
    /* the answer is in [lo, hi + 1] */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        es_log_options probe = ES_LOG_OPTIONS_INIT;
        es_cursor *c;
        const es_event *ev;
        probe.from_position = mid;
        if ((rc = st->ops->log_cursor(&c, st->be, &probe)) < 0)
            return rc;
        rc = c->ops->next(&ev, c);
        if (rc == 0 && ev->time_us < t)
            lo = ev->position + 1; /* everything up to it is earlier */
        else if (rc == 0 || rc == ES_ITEROVER)
            hi = mid; /* no event in [mid, ev) : the answer is at most mid */
        c->ops->free(c);
        if (rc < 0 && rc != ES_ITEROVER)
            return rc;
    }
    *from = lo;
    return 0;
}

int es_log_cursor(es_cursor **out, es_store *st, const es_log_options *opts)
{
    es_log_options o = ES_LOG_OPTIONS_INIT;
    es_cursor *c;
    int rc;
    size_t tl = 0;

    if (!out)
        return es__err(ES_EINVAL, "es_log_cursor: out is NULL");
    *out = NULL;
    if (!st)
        return es__err(ES_EINVAL, "es_log_cursor: store is NULL");
    if (opts) {
        if ((rc = es__check_version(opts->version, ES_LOG_OPTIONS_VERSION, "es_log_options")) < 0)
            return rc;
        /* version 1 ends before the time range */
        memcpy(&o, opts, opts->version == 1 ? offsetof(es_log_options, from_time_us) : sizeof o);
        o.version = ES_LOG_OPTIONS_VERSION;
    }
    if (o.from_time_us < 0 || o.to_time_us < 0)
        return es__err(ES_EINVAL, "es_log_options: a time range bound is negative");
    if (o.to_time_us && o.from_time_us > o.to_time_us)
        return es__err(ES_EINVAL, "es_log_options: from_time_us is after to_time_us");
    if (!o.prefix && o.prefix_len)
        return es__err(ES_EINVAL, "es_log_options: prefix_len without a prefix");
    if (o.prefix_len > ES_MAX_KEY)
        return es__err(ES_ETOOBIG, "prefix is %zu bytes; the limit is %d", o.prefix_len,
                       ES_MAX_KEY);
    if (o.type && (rc = check_type(o.type, "filter", 0, &tl)) < 0)
        return rc;
    if (o.from_position == 0)
        o.from_position = 1;
    if (o.from_time_us && st->ops->log_time_ordered &&
        (rc = seek_time(st, &o.from_position, o.from_time_us)) < 0)
        return rc;
    if ((rc = st->ops->log_cursor(&c, st->be, &o)) < 0)
        return rc;
    c->st = st;
    c->limit = o.limit;
    c->from_time_us = o.from_time_us;
    c->to_time_us = o.to_time_us ? o.to_time_us : INT64_MAX;
    c->time_ordered = st->ops->log_time_ordered;
    c->done = false;
    if (o.prefix_len) {
        if (!(c->prefix = es__malloc(o.prefix_len)))
            goto nomem;
        memcpy(c->prefix, o.prefix, o.prefix_len);
        c->prefix_len = o.prefix_len;
    }
    if (o.type) {
        if (!(c->type = es__malloc(tl + 1)))
            goto nomem;
        memcpy(c->type, o.type, tl + 1);
        c->type_len = tl;
    }
    *out = c;
    return 0;
nomem:
    es_cursor_free(c);
    return es__err(ES_ENOMEM, "out of memory opening a cursor");
}

int es_cursor_next(const es_event **out, es_cursor *c)
{
    const es_event *ev;
    int rc;

    if (!out || !c)
        return es__err(ES_EINVAL, "es_cursor_next: NULL argument");
    *out = NULL;
    if ((c->limit && c->returned >= c->limit) || c->done)
        return ES_ITEROVER;
    for (;;) {
        if ((rc = c->ops->next(&ev, c)) != 0)
            return rc;
        if (ev->time_us > c->to_time_us) {
            if (c->time_ordered) {
                c->done = true; /* everything after is later still */
                return ES_ITEROVER;
            }
            continue;
        }
        if (ev->time_us < c->from_time_us)
            continue;
        if (c->prefix_len && !es__has_prefix(ev->stream, ev->stream_len, c->prefix, c->prefix_len))
            continue;
        if (c->type && (ev->type_len != c->type_len || memcmp(ev->type, c->type, c->type_len)))
            continue;
        c->returned++;
        if (es__shred_is_envelope(ev->data, ev->data_len))
            return es__shred_open(out, c, ev);
        c->out = *ev;
        c->out.shred = ES_SHRED_NONE;
        *out = &c->out;
        return 0;
    }
}

void es_cursor_free(es_cursor *c)
{
    if (!c)
        return;
    free(c->prefix);
    free(c->type);
    es__shred_cur_free(c);
    c->ops->free(c);
}

int es_streams(es_store *st, const void *prefix, size_t prefix_len, es_stream_fn fn, void *payload)
{
    if (!st || !fn)
        return es__err(ES_EINVAL, "es_streams: NULL store or callback");
    if (!prefix && prefix_len)
        return es__err(ES_EINVAL, "es_streams: prefix_len without a prefix");
    if (prefix_len > ES_MAX_KEY)
        return es__err(ES_ETOOBIG, "prefix is %zu bytes; the limit is %d", prefix_len, ES_MAX_KEY);
    return st->ops->streams(st->be, prefix, prefix_len, fn, payload);
}

int es_store_stats_get(es_store_stats *out, es_store *st)
{
    if (!out || !st)
        return es__err(ES_EINVAL, "es_store_stats_get: NULL argument");
    memset(out, 0, sizeof *out);
    return st->ops->stats(st->be, out);
}
