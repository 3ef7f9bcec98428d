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

/* What one try at a commit answers besides 0 (done) and an error. */
enum {
    TRY_AGAIN = 2,     /* the cache was stale or a race was lost: nothing written */
    TRY_IDS_EXIST = 3, /* some event ids are stored: resolve them, then go again */
    TRY_KEPT_TIME = 4, /* a kept time was refused (the message is set): unless the
                          requests turn out to be retries, that is the answer */
};

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
        return TRY_AGAIN;
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

/* The columns of the event arrays (every event of the commit, in order)
 * and of the request arrays (es_append_batch: one element per request). */
enum { EV_ID, EV_TYPE, EV_DATA, EV_META, EV_HASH, EV_COLS };
enum { RQ_STREAM, RQ_EXPECTED, RQ_PREV_SEQ, RQ_PREV_HASH, RQ_COUNT, RQ_COLS };

/* A request of the commit as the client sees it. */
typedef struct pend {
    cached_head h;   /* the stream before this request (its hash is sent) */
    bool known;      /* h is known (cached, or guessed for a new stream) */
    uint64_t before; /* the stream's head before this request */
    uint32_t off;    /* index of its first event in the commit */
} pend;

/* One try at a commit: what the client computed and will send. */
typedef struct commit {
    pg_store *s;
    const es__append_req *reqs;
    size_t n;
    const bool *skip; /* requests already answered as retries */
    size_t live;      /* requests not skipped */
    size_t events;    /* their events */
    pend *pd;
    uint8_t (*hashes)[ES_HASH_SIZE]; /* per event, in commit order */
    int64_t t;                       /* the commit time */
    bool check_time;                 /* t is our estimate: the server may refuse it */
    es_buf ev[EV_COLS];
    es_buf rq[RQ_COLS];
} commit;

static int nomem_append(void)
{
    return es__err(ES_ENOMEM, "out of memory for an append");
}

/* The index of the one request that is not skipped (a single append). */
static size_t only_live(const commit *c)
{
    size_t k = 0;
    while (c->skip[k])
        k++;
    return k;
}

/* The commit time, one per commit and never before any of its streams'
 * latest; loads each request's cached head on the way. */
static int commit_time(commit *c)
{
    const es__append_req *reqs = c->reqs;
    pg_store *s = c->s;
    c->check_time = false;
    if (reqs[0].keep_time) {
        c->t = reqs[0].events[0].time_us;
        if (es__check_kept_time(s->st, c->t) < 0)
            return TRY_KEPT_TIME;
    } else if (s->st->clock) {
        c->t = es__now(s->st);
    } else {
        pthread_mutex_lock(&s->cache_lock);
        c->t = local_us() + s->clock_offset;
        pthread_mutex_unlock(&s->cache_lock);
        c->check_time = true;
    }
    for (size_t k = 0; k < c->n; k++) {
        if (c->skip[k])
            continue;
        pend *e = &c->pd[k];
        e->known = cache_get(s, reqs[k].stream, reqs[k].stream_len, &e->h);
        if (!e->known && reqs[k].expected == ES_EXPECT_NO_STREAM) {
            e->known = true; /* a good guess: a new stream */
            memset(&e->h, 0, sizeof e->h);
            e->h.time_us = INT64_MIN;
        }
        if (e->known && e->h.head && e->h.time_us > c->t) {
            if (reqs[0].keep_time) {
                es__err(ES_EINVAL,
                        "kept commit time %lld is before the stream's latest commit time %lld",
                        (long long)c->t, (long long)e->h.time_us);
                return TRY_KEPT_TIME;
            }
            c->t = e->h.time_us;
        }
    }
    return 0;
}

/* The chain hashes, request by request: from the cached head, or for a
 * stream appended to earlier in the commit, from that request's last. */
static void chain_hashes(commit *c)
{
    const es__append_req *reqs = c->reqs;
    uint32_t off = 0;
    for (size_t k = 0; k < c->n; k++) {
        const es__append_req *req = &reqs[k];
        if (c->skip[k])
            continue;
        cached_head prev = c->pd[k].h;
        bool known = c->pd[k].known;
        for (size_t j = 0; j < k; j++) {
            if (!c->skip[j] && reqs[j].stream_len == req->stream_len &&
                !memcmp(reqs[j].stream, req->stream, req->stream_len)) {
                prev.head = c->pd[j].before + reqs[j].n;
                memcpy(prev.hash, c->hashes[c->pd[j].off + reqs[j].n - 1], ES_HASH_SIZE);
                known = c->pd[j].known;
            }
        }
        c->pd[k].known = known;
        c->pd[k].before = prev.head;
        c->pd[k].off = off;
        const uint8_t *ph = known && prev.head ? prev.hash : NULL;
        memcpy(c->pd[k].h.hash, prev.hash, ES_HASH_SIZE); /* sent as the head's hash */
        for (size_t i = 0; i < req->n; i++) {
            const es_event_new *e = &req->events[i];
            es__chain_hash(c->hashes[off + i], i ? c->hashes[off + i - 1] : ph, req->stream,
                           req->stream_len, prev.head + 1 + i, c->t, req->ids[i], e->type,
                           strlen(e->type), e->data, e->data_len, e->meta, e->meta_len);
        }
        off += (uint32_t)req->n;
    }
}

/* The events, flattened in commit order, one array per column. */
static int event_arrays(commit *c)
{
    int rc = 0;
    for (int i = 0; i < EV_COLS && !rc; i++)
        rc = arr_head(&c->ev[i], OID_BYTEA, c->events, false);
    for (size_t k = 0; k < c->n && !rc; k++) {
        if (c->skip[k])
            continue;
        const es__append_req *req = &c->reqs[k];
        for (size_t i = 0; i < req->n && !rc; i++) {
            const es_event_new *e = &req->events[i];
            rc = arr_add(&c->ev[EV_ID], req->ids[i], ES_ID_SIZE) ||
                 arr_add(&c->ev[EV_TYPE], e->type, strlen(e->type)) ||
                 arr_add(&c->ev[EV_DATA], e->data_len ? e->data : "", e->data_len) ||
                 arr_add(&c->ev[EV_META], e->meta_len ? e->meta : "", e->meta_len) ||
                 arr_add(&c->ev[EV_HASH], c->hashes[c->pd[k].off + i], ES_HASH_SIZE);
        }
    }
    return rc ? nomem_append() : 0;
}

/* The requests as arrays: stream, expectation, what the client believes
 * the stream is at (seq and hash), and how many events it adds. */
static int request_arrays(commit *c)
{
    int rc = arr_head(&c->rq[RQ_STREAM], OID_BYTEA, c->live, false) ||
             arr_head(&c->rq[RQ_EXPECTED], OID_INT8, c->live, false) ||
             arr_head(&c->rq[RQ_PREV_SEQ], OID_INT8, c->live, false) ||
             arr_head(&c->rq[RQ_PREV_HASH], OID_BYTEA, c->live, true) ||
             arr_head(&c->rq[RQ_COUNT], OID_INT4, c->live, false);
    for (size_t k = 0; k < c->n && !rc; k++) {
        if (c->skip[k])
            continue;
        const pend *e = &c->pd[k];
        bool has_hash = e->known && e->before;
        rc = arr_add(&c->rq[RQ_STREAM], c->reqs[k].stream, c->reqs[k].stream_len) ||
             arr_add_i64(&c->rq[RQ_EXPECTED], expected_arg(c->reqs[k].expected)) ||
             arr_add_i64(&c->rq[RQ_PREV_SEQ], e->known ? (int64_t)e->before : -1) ||
             arr_add(&c->rq[RQ_PREV_HASH], has_hash ? e->h.hash : NULL, ES_HASH_SIZE) ||
             arr_add_i32(&c->rq[RQ_COUNT], (int32_t)c->reqs[k].n);
    }
    return rc ? nomem_append() : 0;
}

/* The parameters of es_append() (one request) or es_append_batch(). */
static int build_params(commit *c, pgp *p, int *stmt)
{
    int rc;
    if (c->live == 1) {
        size_t k = only_live(c);
        const es__append_req *req = &c->reqs[k];
        const pend *e = &c->pd[k];
        p_bytes(p, req->stream, req->stream_len);
        p_i64(p, expected_arg(req->expected));
        p_i64(p, e->known ? (int64_t)e->before : -1);
        if (e->known && e->before)
            p_bytes(p, e->h.hash, ES_HASH_SIZE);
        else
            p_null(p);
        p_i64(p, c->t);
        p_bool(p, c->check_time);
        p_i32(p, 0); /* p_base: the commit's first event */
        *stmt = S_APPEND;
    } else {
        if ((rc = request_arrays(c)) < 0)
            return rc;
        for (int i = 0; i < RQ_COLS; i++)
            p_bytes(p, c->rq[i].data, c->rq[i].len);
        p_i64(p, c->t);
        p_bool(p, c->check_time);
        *stmt = S_APPEND_BATCH;
    }
    for (int i = 0; i < EV_COLS; i++)
        p_bytes(p, c->ev[i].data, c->ev[i].len);
    p_i32(p, c->s->commit_delay_ms);
    p_bool(p, false); /* notified after the commit: see es__pg_append */
    return 0;
}

/* es_append()'s answer: status, head, hash, time_us, first_position, server_us. */
static int answer_one(commit *c, const PGresult *r, es_append_result *outs)
{
    pg_store *s = c->s;
    size_t k = only_live(c);
    const es__append_req *req = &c->reqs[k];
    int status = g_i32(r, 0, 0);
    uint64_t head = PQgetisnull(r, 0, 1) ? 0 : (uint64_t)g_i64(r, 0, 1);
    if (c->check_time && status == PG_STALE)
        learn_clock(s, c->t, g_i64(r, 0, 5));
    if (status == PG_DONE) {
        outs[k].first_seq = c->pd[k].before + 1;
        outs[k].last_seq = head;
        outs[k].head = head;
        outs[k].first_position = (uint64_t)g_i64(r, 0, 4);
        outs[k].last_position = outs[k].first_position + req->n - 1;
        outs[k].time_us = c->t;
        outs[k].replayed = 0;
        cache_put(s, req->stream, req->stream_len, head, c->hashes[req->n - 1], ES_HASH_SIZE, c->t);
        return 0;
    }
    bool no_hash = PQgetisnull(r, 0, 2);
    if (head || !no_hash)
        cache_put(s, req->stream, req->stream_len, head, no_hash ? NULL : PQgetvalue(r, 0, 2),
                  no_hash ? 0 : (size_t)PQgetlength(r, 0, 2),
                  PQgetisnull(r, 0, 3) ? INT64_MIN : g_i64(r, 0, 3));
    else if (status == PG_STALE) /* the stream is empty: forget a wrong guess */
        cache_put(s, req->stream, req->stream_len, 0, NULL, 0, INT64_MIN);
    if (status == PG_CONFLICT) {
        memset(&outs[k], 0, sizeof outs[k]);
        outs[k].head = head;
        return es__err(ES_ECONFLICT, "stream is at seq %llu, not at the expected state",
                       (unsigned long long)head);
    }
    return status == PG_STALE ? TRY_AGAIN : TRY_IDS_EXIST;
}

/* es_append_batch()'s answer: status, bad (the request), head, base, server_us. */
static int answer_batch(commit *c, pg_conn *pc, const PGresult *r, es_append_result *outs)
{
    pg_store *s = c->s;
    const es__append_req *reqs = c->reqs;
    int status = g_i32(r, 0, 0);
    if (status == PG_DONE) {
        uint64_t base = (uint64_t)g_i64(r, 0, 3);
        for (size_t k = 0; k < c->n; k++) {
            if (c->skip[k])
                continue;
            outs[k].first_seq = c->pd[k].before + 1;
            outs[k].last_seq = outs[k].head = c->pd[k].before + reqs[k].n;
            outs[k].first_position = base + c->pd[k].off;
            outs[k].last_position = outs[k].first_position + reqs[k].n - 1;
            outs[k].time_us = c->t;
            outs[k].replayed = 0;
        }
        /* later requests of a stream overwrite earlier ones: the cache ends
         * at each stream's last request */
        for (size_t k = 0; k < c->n; k++)
            if (!c->skip[k])
                cache_put(s, reqs[k].stream, reqs[k].stream_len, outs[k].last_seq,
                          c->hashes[c->pd[k].off + reqs[k].n - 1], ES_HASH_SIZE, c->t);
        return 0;
    }
    /* nothing of the commit landed */
    for (size_t k = 0; k < c->n; k++)
        if (!c->skip[k])
            memset(&outs[k], 0, sizeof outs[k]);
    if (status == PG_CONFLICT) {
        int bad = g_i32(r, 0, 1);
        uint64_t head = (uint64_t)g_i64(r, 0, 2);
        size_t k = 0;
        for (int live_i = -1; k < c->n; k++)
            if (!c->skip[k] && ++live_i == bad)
                break;
        if (k < c->n)
            outs[k].head = head;
        return es__err(ES_ECONFLICT,
                       "one of the append's streams: stream is at seq %llu, not at the "
                       "expected state",
                       (unsigned long long)head);
    }
    if (status == PG_STALE) {
        if (c->check_time)
            learn_clock(s, c->t, g_i64(r, 0, 4));
        int rc = refresh_heads(s, pc, reqs, c->n, c->skip);
        return rc < 0 ? rc : TRY_AGAIN;
    }
    return TRY_IDS_EXIST;
}

/*
 * One try at a commit.  The chain hashes are computed here from the cached
 * head of each stream (and, for a stream appended to twice in the commit,
 * from the earlier request).  One request: one call of es_append(); several:
 * one call of es_append_batch(), which checks every request set-wise and
 * writes all events with one INSERT.  Either is one round trip and its own
 * transaction.  Returns 0, an error, TRY_AGAIN or TRY_IDS_EXIST.
 */
static int attempt(pg_store *s, pg_conn *pc, const es__append_req *reqs, size_t n, const bool *skip,
                   es_append_result *outs)
{
    commit c = {.s = s, .reqs = reqs, .n = n, .skip = skip};
    for (size_t k = 0; k < n; k++)
        if (!skip[k]) {
            c.live++;
            c.events += reqs[k].n;
        }
    if (c.live == 0)
        return 0;
    for (int i = 0; i < EV_COLS; i++)
        c.ev[i] = (es_buf)ES_BUF_INIT;
    for (int i = 0; i < RQ_COLS; i++)
        c.rq[i] = (es_buf)ES_BUF_INIT;
    PGresult *r = NULL;
    pgp p = {0};
    int rc, stmt;
    c.pd = es__calloc(n, sizeof *c.pd);
    c.hashes = es__malloc(c.events * sizeof *c.hashes);
    if (!c.pd || !c.hashes) {
        rc = nomem_append();
        goto out;
    }
    if ((rc = commit_time(&c)) != 0)
        goto out;
    chain_hashes(&c);
    if ((rc = event_arrays(&c)) < 0 || (rc = build_params(&c, &p, &stmt)) < 0)
        goto out;
    rc = es__pg_run(s, pc, stmt, &p, &r);
    if (rc == ES__PG_RETRY) { /* a race on a new stream's first seq, or on an id */
        rc = refresh_heads(s, pc, reqs, n, skip);
        rc = rc < 0 ? rc : TRY_AGAIN;
        goto out;
    }
    if (rc < 0)
        goto out;
    rc = c.live == 1 ? answer_one(&c, r, outs) : answer_batch(&c, pc, r, outs);
out:
    PQclear(r);
    for (int i = 0; i < EV_COLS; i++)
        es_buf_free(&c.ev[i]);
    for (int i = 0; i < RQ_COLS; i++)
        es_buf_free(&c.rq[i]);
    free(c.pd);
    free(c.hashes);
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
    bool resolved = false; /* the ids were looked up after a refused kept time */
    for (int tries = 0;; tries++) {
        rc = attempt(s, pc, reqs, n, skip, outs);
        if (rc <= 0)
            break;
        if (rc == TRY_KEPT_TIME) {
            /* a retry of an append that landed is answered whatever its
             * time, as on every store: look the ids up once, then go again;
             * a kept time still refused then is the answer */
            if (resolved) {
                rc = ES_EINVAL; /* with commit_time's message */
                break;
            }
            resolved = true;
            rc = TRY_IDS_EXIST;
        }
        if (tries >= PG_MAX_TRIES) {
            rc = es__err(ES_EUNAVAILABLE,
                         "postgres: the append kept racing with other writers (%d tries)", tries);
            break;
        }
        if (rc == TRY_IDS_EXIST) {
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
                    rc = TRY_IDS_EXIST;
            }
            PQclear(l.last);
            if (rc < 0)
                break;
        }
    }
    if (rc == 0 && s->notify) {
        /* Wake the listeners after the commit, in a transaction of its own:
         * a NOTIFY inside the append's transaction would hold PostgreSQL's
         * notification lock through the commit's WAL flush, one notifying
         * commit at a time, undoing group commit for concurrent writers.
         * The append stands whatever happens to this (waiters also poll). */
        PGresult *nr = PQexec(pc->c, s->notify_sql);
        PQclear(nr);
    }
    es__pg_release(s, pc);
    free(skip);
    return rc;
}
