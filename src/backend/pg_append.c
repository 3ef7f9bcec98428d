/*
 * pg_append.c — appends to the PostgreSQL store: the client's cache of
 * stream heads, the chain hashes computed from it, and one round trip per
 * commit (es_append or es_append_batch), retried when the cache was stale.
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- the head cache ---- */

static bool cache_get(pg_store *s, const uint8_t *stream, size_t len, cached_head *out)
{
    pthread_mutex_lock(&s->cache_lock);
    cached_head *c = es__map_get(&s->cache, stream, len);
    if (c)
        *out = *c;
    pthread_mutex_unlock(&s->cache_lock);
    return c != NULL;
}

static void cache_put(pg_store *s, const uint8_t *stream, size_t len, uint64_t head,
                      const void *hash, size_t hash_len, int64_t time_us)
{
    pthread_mutex_lock(&s->cache_lock);
    cached_head *c = es__map_get(&s->cache, stream, len);
    if (!c) {
        if (s->cache.count >= PG_CACHE_MAX) {
            es__map_free(&s->cache, free);
            memset(&s->cache, 0, sizeof s->cache);
        }
        if ((c = es__calloc(1, sizeof *c)) && es__map_put(&s->cache, stream, len, c) < 0) {
            free(c);
            c = NULL;
        }
    }
    if (c) {
        c->head = head;
        memset(c->hash, 0, sizeof c->hash);
        if (hash && hash_len == ES_HASH_SIZE)
            memcpy(c->hash, hash, ES_HASH_SIZE);
        c->time_us = time_us;
    }
    pthread_mutex_unlock(&s->cache_lock);
}

/* ---- append ---- */

typedef struct lookup_ctx {
    pg_store *s;
    pg_conn *pc;
    PGresult *last;
} lookup_ctx;

static int lookup_id(void *ctx, const uint8_t id[ES_ID_SIZE], es_event *ev)
{
    lookup_ctx *l = ctx;
    pgp p = {0};
    PGresult *r;
    p_bytes(&p, id, ES_ID_SIZE);
    int rc = es__pg_run(l->s, l->pc, S_ID, &p, &r);
    if (rc > 0)
        rc = es__err(ES_EIO, "postgres: looking up an event id failed");
    if (rc < 0)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return 0;
    }
    /* the stream bytes must outlive this call: keep the result until the next */
    PQclear(l->last);
    l->last = r;
    ev->stream = (const uint8_t *)PQgetvalue(r, 0, 0);
    ev->stream_len = (size_t)PQgetlength(r, 0, 0);
    ev->seq = (uint64_t)g_i64(r, 0, 1);
    ev->position = (uint64_t)g_i64(r, 0, 2);
    ev->time_us = g_i64(r, 0, 3);
    return 1;
}

int es__pg_head_of(pg_store *s, pg_conn *pc, const uint8_t *stream, size_t len, uint64_t *out)
{
    pgp p = {0};
    PGresult *r;
    p_bytes(&p, stream, len);
    int rc = es__pg_run(s, pc, S_HEAD, &p, &r);
    if (rc > 0)
        rc = es__err(ES_EIO, "postgres: reading a head failed");
    if (rc < 0)
        return rc;
    *out = PQntuples(r) ? (uint64_t)g_i64(r, 0, 0) : 0;
    PQclear(r);
    return 0;
}

static int64_t local_us(void)
{
    return es__realtime_us();
}

/* One attempt at the whole commit.  Returns 0 done, 2 go again (stale
 * cache or a race), 3 some ids already landed (resolve, then go again), or
 * an error. */
/* Append arrays in PostgreSQL's binary format (one dimension). */
static int arr_head(es_buf *b, Oid elem, size_t n, bool nulls)
{
    uint8_t hdr[20];
    es_buf_reset(b);
    es__put_u32(hdr, 1);
    es__put_u32(hdr + 4, nulls ? 1 : 0);
    es__put_u32(hdr + 8, elem);
    es__put_u32(hdr + 12, (uint32_t)n);
    es__put_u32(hdr + 16, 1);
    return es_buf_put(b, hdr, 20) < 0 ? ES_ENOMEM : 0;
}

static int arr_add(es_buf *b, const void *v, size_t len)
{
    uint8_t l4[4];
    es__put_u32(l4, v ? (uint32_t)len : UINT32_MAX); /* -1: NULL */
    if (es_buf_put(b, l4, 4) < 0 || (v && len && es_buf_put(b, v, len) < 0))
        return ES_ENOMEM;
    return 0;
}

static int arr_add_i64(es_buf *b, int64_t v)
{
    uint8_t x[8];
    es__put_u64(x, (uint64_t)v);
    return arr_add(b, x, 8);
}

static int arr_add_i32(es_buf *b, int32_t v)
{
    uint8_t x[4];
    es__put_u32(x, (uint32_t)v);
    return arr_add(b, x, 4);
}

/* The expectation as the SQL functions take it. */
static int64_t expected_arg(uint64_t expected)
{
    return expected == ES_EXPECT_ANY      ? PG_EXPECT_ANY
           : expected == ES_EXPECT_EXISTS ? PG_EXPECT_EXISTS
                                          : (int64_t)expected;
}

/* Refresh the cached heads of every stream of a commit (after a stale
 * answer): one query for all of them; streams without a row are empty. */
static int refresh_heads(pg_store *s, pg_conn *pc, const es__append_req *reqs, size_t n,
                         const bool *skip)
{
    es_buf keys = ES_BUF_INIT;
    size_t live = 0;
    int rc;
    for (size_t k = 0; k < n; k++)
        live += !skip[k];
    rc = arr_head(&keys, OID_BYTEA, live, false);
    for (size_t k = 0; k < n && rc == 0; k++)
        if (!skip[k])
            rc = arr_add(&keys, reqs[k].stream, reqs[k].stream_len);
    if (rc) {
        es_buf_free(&keys);
        return es__err(ES_ENOMEM, "out of memory for an append");
    }
    pgp p = {0};
    PGresult *r;
    p_bytes(&p, keys.data, keys.len);
    rc = es__pg_run(s, pc, S_HEADS, &p, &r);
    es_buf_free(&keys);
    if (rc == ES__PG_RETRY)
        return 2;
    if (rc < 0)
        return rc;
    for (size_t k = 0; k < n; k++)
        if (!skip[k])
            cache_put(s, reqs[k].stream, reqs[k].stream_len, 0, NULL, 0, INT64_MIN);
    for (int i = 0; i < PQntuples(r); i++)
        cache_put(s, (const uint8_t *)PQgetvalue(r, i, 0), (size_t)PQgetlength(r, i, 0),
                  (uint64_t)g_i64(r, i, 1), PQgetvalue(r, i, 2), (size_t)PQgetlength(r, i, 2),
                  g_i64(r, i, 3));
    PQclear(r);
    return 0;
}

/* Learn the server's clock from an answer that refused our time. */
static void learn_clock(pg_store *s, int64_t t, int64_t server_us)
{
    pthread_mutex_lock(&s->cache_lock);
    if (t > server_us + PG_CLOCK_SLACK_US || t < server_us - PG_CLOCK_SLACK_US)
        s->clock_offset = server_us - local_us();
    pthread_mutex_unlock(&s->cache_lock);
}

/*
 * One try at a commit.  The chain hashes are computed here from the cached
 * head of each stream (and, for a stream appended to twice in the commit,
 * from the earlier request).  One request: one call of es_append(); several:
 * one call of es_append_batch(), which checks every request set-wise and
 * writes all events with one INSERT.  Either is one round trip and its own
 * transaction.  Returns 0, an error, or 2 (stale cache or lost race: try
 * again), 3 (some event ids exist: look them up).
 */
static int attempt(pg_store *s, pg_conn *pc, const es__append_req *reqs, size_t n,
                   const bool *skip, es_append_result *outs)
{
    size_t live = 0, events = 0;
    for (size_t k = 0; k < n; k++)
        if (!skip[k]) {
            live++;
            events += reqs[k].n;
        }
    if (live == 0)
        return 0;
    bool multi = live > 1;

    typedef struct pend {
        cached_head h; /* the stream before this request, then after it */
        bool known;
        uint64_t before;
        uint32_t off; /* index of its first event in the commit */
    } pend;
    pend *pd = es__calloc(n, sizeof *pd);
    uint8_t(*hashes)[ES_HASH_SIZE] = es__malloc(events * sizeof *hashes);
    es_buf b[10];
    for (int i = 0; i < 10; i++)
        b[i] = (es_buf)ES_BUF_INIT;
    PGresult *r = NULL;
    int rc = 0;
    if (!pd || !hashes) {
        rc = es__err(ES_ENOMEM, "out of memory for an append");
        goto out;
    }

    /* the commit time: one per commit, never before any of its streams' */
    bool check_time = false;
    int64_t t;
    if (reqs[0].keep_time) {
        t = reqs[0].events[0].time_us;
    } else if (s->st->clock) {
        t = es__now(s->st);
    } else {
        pthread_mutex_lock(&s->cache_lock);
        t = local_us() + s->clock_offset;
        pthread_mutex_unlock(&s->cache_lock);
        check_time = true;
    }
    for (size_t k = 0; k < n; k++) {
        if (skip[k])
            continue;
        pend *e = &pd[k];
        e->known = cache_get(s, reqs[k].stream, reqs[k].stream_len, &e->h);
        if (!e->known && reqs[k].expected == ES_EXPECT_NO_STREAM) {
            e->known = true; /* a good guess: a new stream */
            memset(&e->h, 0, sizeof e->h);
            e->h.time_us = INT64_MIN;
        }
        if (e->known && e->h.head && e->h.time_us > t) {
            if (reqs[0].keep_time) {
                rc = es__err(ES_EINVAL,
                             "kept commit time %lld is before the stream's latest commit time "
                             "%lld",
                             (long long)t, (long long)e->h.time_us);
                goto out;
            }
            t = e->h.time_us;
        }
    }

    /* chain hashes, request by request */
    uint32_t off = 0;
    for (size_t k = 0; k < n; k++) {
        const es__append_req *req = &reqs[k];
        if (skip[k])
            continue;
        cached_head prev = pd[k].h;
        bool known = pd[k].known;
        for (size_t j = 0; j < k; j++) {
            if (!skip[j] && reqs[j].stream_len == req->stream_len &&
                !memcmp(reqs[j].stream, req->stream, req->stream_len)) {
                prev.head = pd[j].before + reqs[j].n;
                memcpy(prev.hash, hashes[pd[j].off + reqs[j].n - 1], ES_HASH_SIZE);
                known = pd[j].known;
            }
        }
        pd[k].known = known;
        pd[k].before = prev.head;
        pd[k].off = off;
        const uint8_t *ph = known && prev.head ? prev.hash : NULL;
        memcpy(pd[k].h.hash, prev.hash, ES_HASH_SIZE); /* kept for the call below */
        for (size_t i = 0; i < req->n; i++) {
            const es_event_new *e = &req->events[i];
            es__chain_hash(hashes[off + i], i ? hashes[off + i - 1] : ph, req->stream,
                           req->stream_len, prev.head + 1 + i, t, req->ids[i], e->type,
                           strlen(e->type), e->data, e->data_len, e->meta, e->meta_len);
        }
        off += (uint32_t)req->n;
    }

    /* the events, flattened in commit order */
    rc = arr_head(&b[0], OID_BYTEA, events, false) || arr_head(&b[1], OID_BYTEA, events, false) ||
         arr_head(&b[2], OID_BYTEA, events, false) || arr_head(&b[3], OID_BYTEA, events, false) ||
         arr_head(&b[4], OID_BYTEA, events, false);
    for (size_t k = 0; k < n && !rc; k++) {
        if (skip[k])
            continue;
        const es__append_req *req = &reqs[k];
        for (size_t i = 0; i < req->n && !rc; i++) {
            const es_event_new *e = &req->events[i];
            rc = arr_add(&b[0], req->ids[i], ES_ID_SIZE) ||
                 arr_add(&b[1], e->type, strlen(e->type)) ||
                 arr_add(&b[2], e->data_len ? e->data : "", e->data_len) ||
                 arr_add(&b[3], e->meta_len ? e->meta : "", e->meta_len) ||
                 arr_add(&b[4], hashes[pd[k].off + i], ES_HASH_SIZE);
        }
    }
    if (rc) {
        rc = es__err(ES_ENOMEM, "out of memory for an append");
        goto out;
    }

    pgp p = {0};
    int stmt;
    if (!multi) {
        size_t k = 0;
        while (skip[k])
            k++;
        const es__append_req *req = &reqs[k];
        p_bytes(&p, req->stream, req->stream_len);
        p_i64(&p, expected_arg(req->expected));
        p_i64(&p, pd[k].known ? (int64_t)pd[k].before : -1);
        if (pd[k].known && pd[k].before)
            p_bytes(&p, pd[k].h.hash, ES_HASH_SIZE);
        else
            p_null(&p);
        p_i64(&p, t);
        p_bool(&p, check_time);
        p_i32(&p, 0);
        stmt = S_APPEND;
    } else {
        /* the requests as arrays: stream, expectation, what the client
         * believes the stream is at, and how many events it adds */
        rc = arr_head(&b[5], OID_BYTEA, live, false) || arr_head(&b[6], OID_INT8, live, false) ||
             arr_head(&b[7], OID_INT8, live, false) || arr_head(&b[8], OID_BYTEA, live, true) ||
             arr_head(&b[9], OID_INT4, live, false);
        for (size_t k = 0; k < n && !rc; k++) {
            if (skip[k])
                continue;
            bool has_hash = pd[k].known && pd[k].before;
            rc = arr_add(&b[5], reqs[k].stream, reqs[k].stream_len) ||
                 arr_add_i64(&b[6], expected_arg(reqs[k].expected)) ||
                 arr_add_i64(&b[7], pd[k].known ? (int64_t)pd[k].before : -1) ||
                 arr_add(&b[8], has_hash ? pd[k].h.hash : NULL, ES_HASH_SIZE) ||
                 arr_add_i32(&b[9], (int32_t)reqs[k].n);
        }
        if (rc) {
            rc = es__err(ES_ENOMEM, "out of memory for an append");
            goto out;
        }
        for (int i = 5; i < 10; i++)
            p_bytes(&p, b[i].data, b[i].len);
        p_i64(&p, t);
        p_bool(&p, check_time);
        stmt = S_APPEND_BATCH;
    }
    for (int i = 0; i < 5; i++)
        p_bytes(&p, b[i].data, b[i].len);
    p_i32(&p, s->commit_delay_ms);
    p_bool(&p, s->notify);
    rc = es__pg_run(s, pc, stmt, &p, &r);
    if (rc == ES__PG_RETRY) { /* a race on a new stream's first seq, or on an id */
        rc = refresh_heads(s, pc, reqs, n, skip);
        rc = rc < 0 ? rc : 2;
        goto out;
    }
    if (rc < 0)
        goto out;

    /* status, head, hash, time_us, first_position, server_us; the batch
     * answers status, bad (the request), head, base, server_us */
    int status = g_i32(r, 0, 0);
    if (!multi) {
        size_t k = 0;
        while (skip[k])
            k++;
        uint64_t head = PQgetisnull(r, 0, 1) ? 0 : (uint64_t)g_i64(r, 0, 1);
        if (check_time && status == 2)
            learn_clock(s, t, g_i64(r, 0, 5));
        if (status == 0) {
            outs[k].first_seq = pd[k].before + 1;
            outs[k].last_seq = head;
            outs[k].head = head;
            outs[k].first_position = (uint64_t)g_i64(r, 0, 4);
            outs[k].last_position = outs[k].first_position + reqs[k].n - 1;
            outs[k].time_us = t;
            outs[k].replayed = 0;
            cache_put(s, reqs[k].stream, reqs[k].stream_len, head, hashes[reqs[k].n - 1],
                      ES_HASH_SIZE, t);
            rc = 0;
            goto out;
        }
        if (head || !PQgetisnull(r, 0, 2))
            cache_put(s, reqs[k].stream, reqs[k].stream_len, head,
                      PQgetisnull(r, 0, 2) ? NULL : PQgetvalue(r, 0, 2),
                      PQgetisnull(r, 0, 2) ? 0 : (size_t)PQgetlength(r, 0, 2),
                      PQgetisnull(r, 0, 3) ? INT64_MIN : g_i64(r, 0, 3));
        else if (status == 2) /* the stream is empty: forget a wrong guess */
            cache_put(s, reqs[k].stream, reqs[k].stream_len, 0, NULL, 0, INT64_MIN);
        if (status == 1) {
            memset(&outs[k], 0, sizeof outs[k]);
            outs[k].head = head;
            rc = es__err(ES_ECONFLICT, "stream is at seq %llu, not at the expected state",
                         (unsigned long long)head);
        } else {
            rc = status == 2 ? 2 : 3;
        }
        goto out;
    }

    if (status == 0) {
        uint64_t base = (uint64_t)g_i64(r, 0, 3);
        for (size_t k = 0; k < n; k++) {
            if (skip[k])
                continue;
            outs[k].first_seq = pd[k].before + 1;
            outs[k].last_seq = outs[k].head = pd[k].before + reqs[k].n;
            outs[k].first_position = base + pd[k].off;
            outs[k].last_position = outs[k].first_position + reqs[k].n - 1;
            outs[k].time_us = t;
            outs[k].replayed = 0;
        }
        /* later requests of a stream overwrite earlier ones: the cache ends
         * at each stream's last request */
        for (size_t k = 0; k < n; k++)
            if (!skip[k])
                cache_put(s, reqs[k].stream, reqs[k].stream_len, outs[k].last_seq,
                          hashes[pd[k].off + reqs[k].n - 1], ES_HASH_SIZE, t);
        rc = 0;
        goto out;
    }
    /* nothing of the commit landed */
    for (size_t k = 0; k < n; k++)
        if (!skip[k])
            memset(&outs[k], 0, sizeof outs[k]);
    if (status == 1) {
        int bad = g_i32(r, 0, 1);
        uint64_t head = (uint64_t)g_i64(r, 0, 2);
        size_t k = 0;
        for (int live_i = -1; k < n; k++)
            if (!skip[k] && ++live_i == bad)
                break;
        if (k < n)
            outs[k].head = head;
        rc = es__err(ES_ECONFLICT,
                     "one of the append's streams: stream is at seq %llu, not at the expected "
                     "state",
                     (unsigned long long)head);
    } else if (status == 2) {
        if (check_time)
            learn_clock(s, t, g_i64(r, 0, 4));
        rc = refresh_heads(s, pc, reqs, n, skip);
        rc = rc < 0 ? rc : 2;
    } else {
        rc = 3;
    }
out:
    PQclear(r);
    for (int i = 0; i < 10; i++)
        es_buf_free(&b[i]);
    free(pd);
    free(hashes);
    return rc;
}

int es__pg_append(void *be, const es__append_req *reqs, size_t n, es_append_result *outs)
{
    pg_store *s = be;
    pg_conn *pc;
    bool *skip = es__calloc(n, sizeof *skip);
    int rc;
    if (!skip)
        return es__err(ES_ENOMEM, "out of memory for an append");
    if ((rc = es__pg_acquire(s, &pc)) < 0) {
        free(skip);
        return rc;
    }
    for (int tries = 0;; tries++) {
        rc = attempt(s, pc, reqs, n, skip, outs);
        if (rc <= 0)
            break;
        if (tries >= PG_MAX_TRIES) {
            rc = es__err(ES_EUNAVAILABLE,
                         "postgres: the append kept racing with other writers (%d tries)", tries);
            break;
        }
        if (rc == 3) {
            /* some ids landed: which requests are whole retries? */
            lookup_ctx l = {s, pc, NULL};
            for (size_t k = 0; k < n && rc > 0; k++) {
                uint64_t head;
                if (skip[k])
                    continue;
                if ((rc = es__pg_head_of(s, pc, reqs[k].stream, reqs[k].stream_len, &head)) < 0)
                    break;
                rc = es__idempotency_check(&reqs[k], lookup_id, &l, head, &outs[k]);
                if (rc == 1)
                    skip[k] = true;
                if (rc >= 0)
                    rc = 3;
            }
            PQclear(l.last);
            if (rc < 0)
                break;
        }
    }
    es__pg_release(s, pc);
    free(skip);
    return rc;
}

