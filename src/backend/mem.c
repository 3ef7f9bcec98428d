/*
 * mem.c — the in-memory store ("mem:").  For tests, demos and ephemeral use:
 * everything is gone at close.  It implements the same semantics as the
 * durable stores (the conformance suite runs on it too) with a global
 * read-write lock: appends are serialised, reads run in parallel.
 *
 * Events never move once appended (each is its own allocation), so cursors
 * hand out pointers to them without copying.
 *
 * es_log_wait sleeps on a condition variable that every append broadcasts
 * after it publishes (a store lives in one process, so no more is needed).
 */
#include "../internal.h"
#include "../map.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

typedef struct mem_event {
    es_event ev; /* pointers into blob */
    uint8_t blob[];
} mem_event;

typedef struct mem_stream {
    uint64_t *positions; /* positions[seq - 1] */
    uint64_t n, cap;
    uint8_t hash[ES_HASH_SIZE];
} mem_stream;

typedef struct mem_snap {
    uint64_t seq;
    int64_t time_us;
    uint8_t state;
    uint8_t *data;
    size_t len;
} mem_snap;

typedef struct mem_snaps {
    mem_snap *v; /* ascending seq */
    size_t n, cap;
} mem_snaps;

typedef struct mem_store {
    pthread_rwlock_t lock;
    /* Waiters of es_log_wait.  Taken without `lock` held (appends broadcast
     * after releasing it), and before it by waiters: one order. */
    pthread_mutex_t wake_lock;
    pthread_cond_t wake;
    es_store *st;
    mem_event **events; /* events[position - 1] */
    uint64_t n, cap;
    es__map streams; /* key -> mem_stream */
    es__map ids;     /* id -> mem_event */
    es__map snaps;   /* skey -> mem_snaps */
    es__map kv;      /* key -> mem_kv */
    uint64_t kv_counter;
    uint64_t bytes;
    uint64_t n_snaps;
    int64_t last_time;
} mem_store;

static void free_kv(void *p);

static int mem_open(void **out, const char *path, const es_open_options *opts, es_store *st)
{
    (void)path;
    (void)opts;
    mem_store *m = es__calloc(1, sizeof *m);
    if (!m)
        return es__err(ES_ENOMEM, "out of memory opening a mem: store");
    pthread_condattr_t ca;
    bool ca_ok = pthread_condattr_init(&ca) == 0;
    bool cond_ok = ca_ok && pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
                   pthread_cond_init(&m->wake, &ca) == 0;
    if (ca_ok)
        pthread_condattr_destroy(&ca);
    bool mutex_ok = cond_ok && pthread_mutex_init(&m->wake_lock, NULL) == 0;
    if (!mutex_ok || pthread_rwlock_init(&m->lock, NULL) != 0) {
        if (mutex_ok)
            pthread_mutex_destroy(&m->wake_lock);
        if (cond_ok)
            pthread_cond_destroy(&m->wake);
        free(m);
        return es__err(ES_ERROR, "cannot initialise a lock");
    }
    m->st = st;
    *out = m;
    return 0;
}

static void free_stream(void *p)
{
    mem_stream *s = p;
    free(s->positions);
    free(s);
}

static void free_snaps(void *p)
{
    mem_snaps *s = p;
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i].data);
    free(s->v);
    free(s);
}

static void mem_close(void *be)
{
    mem_store *m = be;
    for (uint64_t i = 0; i < m->n; i++)
        free(m->events[i]);
    free(m->events);
    es__map_free(&m->streams, free_stream);
    es__map_free(&m->ids, NULL);
    es__map_free(&m->snaps, free_snaps);
    es__map_free(&m->kv, free_kv);
    pthread_rwlock_destroy(&m->lock);
    pthread_mutex_destroy(&m->wake_lock);
    pthread_cond_destroy(&m->wake);
    free(m);
}

static int lookup_id(void *ctx, const uint8_t id[ES_ID_SIZE], es_event *ev)
{
    mem_event *e = es__map_get(&((mem_store *)ctx)->ids, id, ES_ID_SIZE);
    if (!e)
        return 0;
    *ev = e->ev;
    return 1;
}

static int grow_u64(uint64_t **v, uint64_t *cap, uint64_t need)
{
    if (need <= *cap)
        return 0;
    uint64_t c = *cap ? *cap : 8;
    while (c < need)
        c *= 2;
    uint64_t *p = es__realloc(*v, c * sizeof *p);
    if (!p)
        return es__err(ES_ENOMEM, "out of memory growing an index");
    *v = p;
    *cap = c;
    return 0;
}

/* What one request of an append will do, worked out before anything changes. */
typedef struct plan {
    mem_stream *s; /* existing stream, or a new one (is_new) */
    bool is_new;
    bool replayed;
    uint64_t head; /* head before this request */
    mem_event **made;
} plan;

static void free_plans(plan *p, const es__append_req *reqs, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        if (p[k].made) {
            for (size_t i = 0; i < reqs[k].n; i++)
                free(p[k].made[i]);
            free(p[k].made);
        }
    }
    free(p);
}

static mem_event *build_event(const es__append_req *req, size_t i, uint64_t seq, uint64_t pos,
                              int64_t t, const uint8_t *prev)
{
    const es_event_new *in = &req->events[i];
    size_t tl = strlen(in->type);
    mem_event *e = es__malloc(sizeof *e + req->stream_len + tl + 1 + in->data_len + in->meta_len);
    if (!e)
        return NULL;
    uint8_t *p = e->blob;
    memcpy(p, req->stream, req->stream_len);
    e->ev.stream = p;
    e->ev.stream_len = req->stream_len;
    p += req->stream_len;
    memcpy(p, in->type, tl + 1);
    e->ev.type = (const char *)p;
    e->ev.type_len = tl;
    p += tl + 1;
    if (in->data_len)
        memcpy(p, in->data, in->data_len);
    e->ev.data = p;
    e->ev.data_len = in->data_len;
    p += in->data_len;
    if (in->meta_len)
        memcpy(p, in->meta, in->meta_len);
    e->ev.meta = p;
    e->ev.meta_len = in->meta_len;
    e->ev.seq = seq;
    e->ev.position = pos;
    e->ev.time_us = t;
    memcpy(e->ev.id, req->ids[i], ES_ID_SIZE);
    es__chain_hash(e->ev.hash, prev, e->ev.stream, e->ev.stream_len, seq, t, e->ev.id, e->ev.type,
                   tl, e->ev.data, e->ev.data_len, e->ev.meta, e->ev.meta_len);
    return e;
}

/*
 * Appends are all or nothing: plan every request (expectations, retries,
 * seqs; a stream named twice sees its earlier events), make every
 * allocation, and only then publish, which cannot fail.  All of it under the
 * write lock; an append's working state lives in one `append_ctx`.
 */
typedef struct append_ctx {
    mem_store *m;
    const es__append_req *reqs;
    size_t n;
    es_append_result *outs;
    plan *p;
    es__map batch_streams; /* streams new in this append */
    uint8_t **keys;        /* owned map keys: ids, then new streams */
    size_t nkeys;
    size_t total; /* events written (replays excluded) */
    size_t new_streams;
    uint64_t pos; /* last position used */
    int64_t t;    /* commit time */
} append_ctx;

/* 1. Plan: expectations and retries of every request, nothing changed.
 * A request whose ids all landed before is a replay, answered from the
 * original whatever else it asks. */
static int plan_requests(append_ctx *a)
{
    mem_store *m = a->m;
    int rc;
    for (size_t k = 0; k < a->n; k++) {
        const es__append_req *req = &a->reqs[k];
        plan *p = a->p;
        mem_stream *s = es__map_get(&m->streams, req->stream, req->stream_len);
        if (!s && (s = es__map_get(&a->batch_streams, req->stream, req->stream_len)))
            p[k].is_new = true;
        /* the head as earlier requests of this append left it */
        uint64_t head = s ? s->n : 0;
        for (size_t j = 0; j < k; j++)
            if (p[j].s == s && s && !p[j].replayed)
                head = p[j].head + a->reqs[j].n;
        if ((rc = es__idempotency_check(req, lookup_id, m, head, &a->outs[k])) < 0)
            return rc;
        if (rc == 1) {
            p[k].replayed = true;
            p[k].s = s;
            continue;
        }
        if (!es__expect_ok(req->expected, head)) {
            a->outs[k].head = head;
            return es__err(ES_ECONFLICT, "%sstream is at seq %llu, not at the expected state",
                           a->n > 1 ? "one of the append's streams: " : "",
                           (unsigned long long)head);
        }
        if (!s) {
            if (!(s = es__calloc(1, sizeof *s)) ||
                es__map_put(&a->batch_streams, req->stream, req->stream_len, s) < 0) {
                free(s);
                return es__err(ES_ENOMEM, "out of memory for a new stream");
            }
            p[k].is_new = true;
            a->new_streams++;
        }
        p[k].s = s;
        p[k].head = head;
        a->total += req->n;
    }
    return 0;
}

/* Keep an owned copy of a map key, to publish later. */
static int keep_key(append_ctx *a, const void *key, size_t len)
{
    uint8_t *copy = es__malloc(len);
    if (!copy)
        return es__err(ES_ENOMEM, "out of memory for an append");
    memcpy(copy, key, len);
    a->keys[a->nkeys++] = copy;
    return 0;
}

/* 2. Allocate: room in the log, the maps and the stream indexes, and every
 * event built with its chain hash. */
static int build_events(append_ctx *a)
{
    mem_store *m = a->m;
    plan *p = a->p;
    int rc;
    if (m->n + a->total > m->cap) {
        uint64_t c = m->cap ? m->cap : 64;
        while (c < m->n + a->total)
            c *= 2;
        mem_event **ev = es__realloc(m->events, c * sizeof *ev);
        if (!ev)
            return es__err(ES_ENOMEM, "out of memory growing the log");
        m->events = ev;
        m->cap = c;
    }
    if (es__map_reserve(&m->ids, a->total) < 0 ||
        es__map_reserve(&m->streams, a->new_streams) < 0 ||
        !(a->keys = es__calloc(a->total + a->new_streams + 1, sizeof *a->keys)))
        return es__err(ES_ENOMEM, "out of memory for an append");
    for (size_t k = 0; k < a->n; k++) {
        const es__append_req *req = &a->reqs[k];
        if (p[k].replayed)
            continue;
        if ((rc = grow_u64(&p[k].s->positions, &p[k].s->cap, p[k].head + req->n)) < 0)
            return rc;
        if (!(p[k].made = es__calloc(req->n, sizeof *p[k].made)))
            return es__err(ES_ENOMEM, "out of memory for an append");
        /* the previous hash: the stream's, or that of an earlier request's last event */
        const uint8_t *prev = p[k].head ? p[k].s->hash : NULL;
        for (size_t j = 0; j < k; j++)
            if (p[j].s == p[k].s && !p[j].replayed)
                prev = p[j].made[a->reqs[j].n - 1]->ev.hash;
        for (size_t i = 0; i < req->n; i++) {
            mem_event *e = build_event(req, i, p[k].head + 1 + i, ++a->pos, a->t, prev);
            if (!e)
                return es__err(ES_ENOMEM, "out of memory for an event");
            p[k].made[i] = e;
            if ((rc = keep_key(a, req->ids[i], ES_ID_SIZE)) < 0)
                return rc;
            prev = e->ev.hash;
        }
    }
    for (size_t i = 0; i < a->batch_streams.cap; i++) {
        es__map_slot *sl = &a->batch_streams.slots[i];
        if (sl->key && (rc = keep_key(a, sl->key, sl->len)) < 0)
            return rc;
    }
    return 0;
}

/* 3. Publish what was built: nothing here can fail. */
static void publish(append_ctx *a)
{
    mem_store *m = a->m;
    plan *p = a->p;
    size_t key_i = 0;
    for (size_t k = 0; k < a->n; k++) {
        const es__append_req *req = &a->reqs[k];
        if (p[k].replayed)
            continue;
        mem_stream *s = p[k].s;
        for (size_t i = 0; i < req->n; i++) {
            mem_event *e = p[k].made[i];
            m->events[e->ev.position - 1] = e;
            s->positions[p[k].head + i] = e->ev.position;
            es__map_put_owned(&m->ids, a->keys[key_i++], ES_ID_SIZE, e);
            m->bytes += sizeof(mem_event) + e->ev.stream_len + e->ev.type_len + e->ev.data_len +
                        e->ev.meta_len;
        }
        s->n = p[k].head + req->n;
        memcpy(s->hash, p[k].made[req->n - 1]->ev.hash, ES_HASH_SIZE);
        a->outs[k] = (es_append_result){
            .first_seq = p[k].head + 1,
            .last_seq = s->n,
            .first_position = p[k].made[0]->ev.position,
            .last_position = p[k].made[req->n - 1]->ev.position,
            .time_us = a->t,
            .head = s->n,
            .replayed = 0,
        };
        free(p[k].made);
        p[k].made = NULL;
    }
    for (size_t i = 0; i < a->batch_streams.cap; i++) {
        es__map_slot *sl = &a->batch_streams.slots[i];
        if (sl->key)
            es__map_put_owned(&m->streams, a->keys[key_i++], sl->len, sl->value);
    }
    for (size_t k = 0; k < a->n; k++)
        if (p[k].replayed && p[k].s)
            a->outs[k].head = p[k].s->n;
    if (a->pos > m->n)
        m->last_time = a->t;
    m->n = a->pos;
    a->nkeys = 0; /* the maps own them now */
}

static int mem_append(void *be, const es__append_req *reqs, size_t n, es_append_result *outs)
{
    mem_store *m = be;
    append_ctx a = {.m = m, .reqs = reqs, .n = n, .outs = outs};
    int rc;

    if (!(a.p = es__calloc(n, sizeof *a.p)))
        return es__err(ES_ENOMEM, "out of memory for an append");
    pthread_rwlock_wrlock(&m->lock);
    a.pos = m->n;
    if ((rc = plan_requests(&a)) < 0)
        goto done;
    /* The commit time is needed (and a kept one checked) only when
     * something is written: a pure replay is answered from the original. */
    if (a.total && (rc = es__commit_time(m->st, &reqs[0], m->last_time, &a.t)) < 0)
        goto done;
    if ((rc = build_events(&a)) < 0)
        goto done;
    publish(&a);
done:
    for (size_t i = 0; i < a.nkeys; i++)
        free(a.keys[i]);
    free(a.keys);
    free_plans(a.p, reqs, n); /* after publish, nothing is left in them */
    /* new streams are the store's once published, else never were */
    es__map_free(&a.batch_streams, rc < 0 ? free_stream : NULL);
    pthread_rwlock_unlock(&m->lock);
    if (rc >= 0 && a.total) {
        pthread_mutex_lock(&m->wake_lock);
        pthread_cond_broadcast(&m->wake);
        pthread_mutex_unlock(&m->wake_lock);
    }
    return rc;
}

static int mem_head(void *be, const uint8_t *stream, size_t len, uint64_t *out)
{
    mem_store *m = be;
    pthread_rwlock_rdlock(&m->lock);
    mem_stream *s = es__map_get(&m->streams, stream, len);
    *out = s ? s->n : 0;
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

static int mem_last_position(void *be, uint64_t *out)
{
    mem_store *m = be;
    pthread_rwlock_rdlock(&m->lock);
    *out = m->n;
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

/* A waiter holds wake_lock from its check of the log until it sleeps, and
 * an append broadcasts under wake_lock after publishing: an append is either
 * seen by the check or wakes the sleep. */
static int mem_wait(void *be, uint64_t after, int timeout_ms)
{
    mem_store *m = be;
    struct timespec until;
    int rc = 0;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&m->wake_lock);
    for (;;) {
        uint64_t last;
        mem_last_position(m, &last);
        if (last > after)
            break;
        if (rc == ETIMEDOUT) {
            rc = es__err(ES_ETIMEDOUT, "es_log_wait: nothing past position %llu within %d ms",
                         (unsigned long long)after, timeout_ms);
            break;
        }
        rc = pthread_cond_timedwait(&m->wake, &m->wake_lock, &until);
    }
    pthread_mutex_unlock(&m->wake_lock);
    return rc == ES_ETIMEDOUT ? rc : 0;
}

/* ---- cursors ---- */

typedef struct mem_cursor {
    es_cursor base;
    mem_store *m;
    mem_stream *s; /* stream cursors: NULL until the stream exists */
    uint8_t key[ES_MAX_KEY];
    size_t key_len;
    int backward;
    uint64_t next; /* next seq (stream) or position (log) */
    uint64_t stop; /* last seq to return */
    int done;
} mem_cursor;

static int stream_next(const es_event **out, es_cursor *cur)
{
    mem_cursor *c = (mem_cursor *)cur;
    mem_store *m = c->m;
    int rc = ES_ITEROVER;

    if (c->done)
        return ES_ITEROVER;
    pthread_rwlock_rdlock(&m->lock);
    if (!c->s)
        c->s = es__map_get(&m->streams, c->key, c->key_len);
    if (c->s) {
        mem_stream *s = c->s;
        if (c->backward && c->next > s->n)
            c->next = s->n;
        if (c->next >= 1 && c->next <= s->n &&
            (c->backward ? c->next >= c->stop : c->next <= c->stop)) {
            *out = &m->events[s->positions[c->next - 1] - 1]->ev;
            if (c->backward) {
                if (c->next == c->stop)
                    c->done = 1;
                c->next--;
            } else {
                if (c->next == c->stop)
                    c->done = 1;
                c->next++;
            }
            rc = 0;
        }
    }
    if (rc == ES_ITEROVER && c->backward)
        c->done = 1;
    pthread_rwlock_unlock(&m->lock);
    return rc;
}

static int log_next(const es_event **out, es_cursor *cur)
{
    mem_cursor *c = (mem_cursor *)cur;
    mem_store *m = c->m;
    int rc = ES_ITEROVER;
    pthread_rwlock_rdlock(&m->lock);
    if (c->next <= m->n) {
        *out = &m->events[c->next - 1]->ev;
        c->next++;
        rc = 0;
    }
    pthread_rwlock_unlock(&m->lock);
    return rc;
}

static void cursor_free(es_cursor *cur)
{
    free(cur);
}

static const es__cursor_ops stream_ops = {stream_next, cursor_free};
static const es__cursor_ops log_ops = {log_next, cursor_free};

static int mem_stream_cursor(es_cursor **out, void *be, const uint8_t *stream, size_t len,
                             const es_read_options *o)
{
    mem_cursor *c = es__calloc(1, sizeof *c);
    if (!c)
        return es__err(ES_ENOMEM, "out of memory for a cursor");
    c->base.ops = &stream_ops;
    c->m = be;
    memcpy(c->key, stream, len);
    c->key_len = len;
    c->backward = o->backward;
    c->next = o->from_seq;
    c->stop = o->to_seq;
    if (o->backward ? o->from_seq < o->to_seq : o->from_seq > o->to_seq)
        c->done = 1;
    *out = &c->base;
    return 0;
}

static int mem_log_cursor(es_cursor **out, void *be, const es_log_options *o)
{
    mem_cursor *c = es__calloc(1, sizeof *c);
    if (!c)
        return es__err(ES_ENOMEM, "out of memory for a cursor");
    c->base.ops = &log_ops;
    c->m = be;
    c->next = o->from_position;
    *out = &c->base;
    return 0;
}

typedef struct key_ref {
    const uint8_t *key;
    size_t len;
    uint64_t head;
} key_ref;

static int cmp_key(const void *a, const void *b)
{
    const key_ref *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->key, y->key, n);
    if (c)
        return c;
    return (x->len > y->len) - (x->len < y->len);
}

static int mem_streams(void *be, const void *prefix, size_t prefix_len, es_stream_fn fn,
                       void *payload)
{
    mem_store *m = be;
    key_ref *keys;
    size_t n = 0;
    int rc = 0;

    /* Copy the keys out so the callback may call back into the store. */
    pthread_rwlock_rdlock(&m->lock);
    keys = es__malloc((m->streams.count ? m->streams.count : 1) * sizeof *keys);
    if (!keys) {
        pthread_rwlock_unlock(&m->lock);
        return es__err(ES_ENOMEM, "out of memory listing streams");
    }
    for (size_t i = 0; i < m->streams.cap; i++) {
        es__map_slot *sl = &m->streams.slots[i];
        if (sl->key && es__has_prefix(sl->key, sl->len, prefix, prefix_len))
            keys[n++] = (key_ref){sl->key, sl->len, ((mem_stream *)sl->value)->n};
    }
    pthread_rwlock_unlock(&m->lock);
    /* Map keys are never freed while the store is open. */
    qsort(keys, n, sizeof *keys, cmp_key);
    for (size_t i = 0; i < n; i++) {
        int r = fn(keys[i].key, keys[i].len, keys[i].head, payload);
        if (r) {
            /* a library code from the callback keeps the message it set */
            rc = es__cb_rc(r);
            break;
        }
    }
    free(keys);
    return rc;
}

static int mem_stats(void *be, es_store_stats *out)
{
    mem_store *m = be;
    pthread_rwlock_rdlock(&m->lock);
    out->events = m->n;
    out->streams = m->streams.count;
    out->last_position = m->n;
    out->snapshots = m->n_snaps;
    out->bytes = m->bytes;
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

/* ---- snapshots ---- */

static int mem_snap_put(void *be, const uint8_t *skey, size_t sklen, const es__snap *snap)
{
    mem_store *m = be;
    int rc = 0;
    uint8_t *copy = es__malloc(snap->len ? snap->len : 1);
    if (!copy)
        return es__err(ES_ENOMEM, "out of memory for a snapshot");
    if (snap->len)
        memcpy(copy, snap->data, snap->len);
    pthread_rwlock_wrlock(&m->lock);
    mem_snaps *ss = es__map_get(&m->snaps, skey, sklen);
    if (!ss) {
        if (!(ss = es__calloc(1, sizeof *ss)) || es__map_put(&m->snaps, skey, sklen, ss) < 0) {
            free(ss);
            rc = es__err(ES_ENOMEM, "out of memory for a snapshot");
            goto done;
        }
    }
    size_t i = 0;
    while (i < ss->n && ss->v[i].seq < snap->seq)
        i++;
    if (i < ss->n && ss->v[i].seq == snap->seq) {
        free(ss->v[i].data);
    } else {
        if (ss->n == ss->cap) {
            size_t c = ss->cap ? ss->cap * 2 : 4;
            mem_snap *p = es__realloc(ss->v, c * sizeof *p);
            if (!p) {
                rc = es__err(ES_ENOMEM, "out of memory for a snapshot");
                goto done;
            }
            ss->v = p;
            ss->cap = c;
        }
        memmove(&ss->v[i + 1], &ss->v[i], (ss->n - i) * sizeof *ss->v);
        ss->n++;
        m->n_snaps++;
    }
    ss->v[i] = (mem_snap){snap->seq, snap->time_us, snap->state, copy, snap->len};
    copy = NULL;
done:
    pthread_rwlock_unlock(&m->lock);
    free(copy);
    return rc;
}

static int mem_snap_get(void *be, const uint8_t *skey, size_t sklen, uint64_t max_seq,
                        int64_t max_time, es__snap *out, es_buf *buf)
{
    mem_store *m = be;
    int rc = ES_ENOTFOUND;
    pthread_rwlock_rdlock(&m->lock);
    mem_snaps *ss = es__map_get(&m->snaps, skey, sklen);
    for (size_t i = ss ? ss->n : 0; i-- > 0;) {
        mem_snap *s = &ss->v[i];
        if (s->seq <= max_seq && s->time_us <= max_time) {
            es_buf_reset(buf);
            if ((rc = es_buf_put(buf, s->data, s->len)) == 0) {
                *out = (es__snap){s->state, s->seq, s->time_us, buf->data, s->len};
            }
            break;
        }
    }
    pthread_rwlock_unlock(&m->lock);
    return rc;
}

static int mem_snap_list(void *be, const uint8_t *skey, size_t sklen, uint64_t *seqs, size_t cap,
                         size_t *n)
{
    mem_store *m = be;
    pthread_rwlock_rdlock(&m->lock);
    mem_snaps *ss = es__map_get(&m->snaps, skey, sklen);
    *n = 0;
    for (size_t i = 0; ss && i < ss->n && *n < cap; i++)
        seqs[(*n)++] = ss->v[i].seq;
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

static int mem_snap_del(void *be, const uint8_t *skey, size_t sklen, uint64_t seq)
{
    mem_store *m = be;
    pthread_rwlock_wrlock(&m->lock);
    mem_snaps *ss = es__map_get(&m->snaps, skey, sklen);
    for (size_t i = 0; ss && i < ss->n; i++) {
        if (ss->v[i].seq == seq) {
            free(ss->v[i].data);
            memmove(&ss->v[i], &ss->v[i + 1], (ss->n - i - 1) * sizeof *ss->v);
            ss->n--;
            m->n_snaps--;
            break;
        }
    }
    pthread_rwlock_unlock(&m->lock);
    return 0;
}

static void flip(void *p, size_t size, size_t offset)
{
    if (size)
        ((uint8_t *)p)[offset % size] ^= 0x01;
}

static int mem_tamper(void *be, uint64_t position, int field, size_t offset)
{
    mem_store *m = be;
    int rc = 0;
    pthread_rwlock_wrlock(&m->lock);
    if (position == 0 || position > m->n) {
        rc = es__err(ES_ENOTFOUND, "no event at position %llu", (unsigned long long)position);
        goto done;
    }
    es_event *ev = &m->events[position - 1]->ev;
    uint8_t be8[8];
    switch (field) {
    case ES__F_KEY:
        flip((void *)ev->stream, ev->stream_len, offset);
        break;
    case ES__F_SEQ:
        es__put_u64(be8, ev->seq);
        flip(be8, 8, offset);
        ev->seq = es__get_u64(be8);
        break;
    case ES__F_POSITION: {
        /* Positions are implicit here; the stored copy is the stream index. */
        mem_stream *s = es__map_get(&m->streams, ev->stream, ev->stream_len);
        es__put_u64(be8, s->positions[ev->seq - 1]);
        flip(be8, 8, offset);
        uint64_t p = es__get_u64(be8);
        s->positions[ev->seq - 1] = p >= 1 && p <= m->n ? p : (p % m->n) + 1;
        if (s->positions[ev->seq - 1] == position) /* the flip wrapped onto itself */
            s->positions[ev->seq - 1] = position % m->n + 1;
        break;
    }
    case ES__F_TIME:
        es__put_u64(be8, (uint64_t)ev->time_us);
        flip(be8, 8, offset);
        ev->time_us = (int64_t)es__get_u64(be8);
        break;
    case ES__F_ID:
        flip(ev->id, ES_ID_SIZE, offset);
        break;
    case ES__F_TYPE:
        flip((void *)ev->type, ev->type_len, offset);
        break;
    case ES__F_DATA:
        if (!ev->data_len)
            rc = es__err(ES_EINVAL, "event has no data");
        flip((void *)ev->data, ev->data_len, offset);
        break;
    case ES__F_META:
        if (!ev->meta_len)
            rc = es__err(ES_EINVAL, "event has no metadata");
        flip((void *)ev->meta, ev->meta_len, offset);
        break;
    case ES__F_HASH:
        flip(ev->hash, ES_HASH_SIZE, offset);
        break;
    default:
        rc = es__err(ES_EINVAL, "unknown field %d", field);
    }
done:
    pthread_rwlock_unlock(&m->lock);
    return rc;
}

/* ---- the key-value table (subscriptions, checkpoints, leases) ----
 *
 * The map never forgets a key, so a deleted record stays as a tombstone
 * (version 0) in it; versions come from one counter of the store. */

typedef struct mem_kv {
    uint64_t version; /* 0: deleted */
    uint8_t *val;
    size_t len;
} mem_kv;

static void free_kv(void *p)
{
    mem_kv *r = p;
    free(r->val);
    free(r);
}

static int mem_kv_get(void *be, const uint8_t *key, size_t klen, es_buf *val, uint64_t *version)
{
    mem_store *m = be;
    int rc = 0;
    es_buf_reset(val);
    *version = 0;
    pthread_rwlock_rdlock(&m->lock);
    mem_kv *r = es__map_get(&m->kv, key, klen);
    if (r && r->version) {
        *version = r->version;
        rc = es_buf_put(val, r->val, r->len);
    }
    pthread_rwlock_unlock(&m->lock);
    return rc;
}

static int mem_kv_cas(void *be, const uint8_t *key, size_t klen, uint64_t expected,
                      const uint8_t *val, size_t vlen, uint64_t *version)
{
    mem_store *m = be;
    int rc = 0;
    uint8_t *copy = NULL;
    if (val && !(copy = es__malloc(vlen ? vlen : 1)))
        return es__err(ES_ENOMEM, "out of memory for a record");
    if (val && vlen)
        memcpy(copy, val, vlen);
    pthread_rwlock_wrlock(&m->lock);
    mem_kv *r = es__map_get(&m->kv, key, klen);
    uint64_t current = r ? r->version : 0;
    if (current != expected) {
        rc = es__err(ES_ECONFLICT, "record changed since it was read");
        goto done;
    }
    if (!val) {
        if (r) {
            free(r->val);
            r->val = NULL;
            r->len = 0;
            r->version = 0;
        }
        *version = 0;
        goto done;
    }
    if (!r) {
        if (!(r = es__calloc(1, sizeof *r)) || es__map_put(&m->kv, key, klen, r) < 0) {
            free(r);
            rc = es__err(ES_ENOMEM, "out of memory for a record");
            goto done;
        }
    }
    free(r->val);
    r->val = copy;
    r->len = vlen;
    copy = NULL;
    r->version = ++m->kv_counter;
    *version = r->version;
done:
    pthread_rwlock_unlock(&m->lock);
    free(copy);
    return rc;
}

typedef struct kv_item {
    uint8_t *key;
    size_t klen;
    uint8_t *val;
    size_t vlen;
    uint64_t version;
} kv_item;

static int cmp_kv_item(const void *a, const void *b)
{
    const kv_item *x = a, *y = b;
    size_t n = x->klen < y->klen ? x->klen : y->klen;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->klen > y->klen) - (x->klen < y->klen);
}

static int mem_kv_list(void *be, const uint8_t *prefix, size_t plen,
                       int (*fn)(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                                 uint64_t version, void *payload),
                       void *payload)
{
    mem_store *m = be;
    kv_item *items = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    /* Copy the matching records under the lock, call fn without it (fn may
     * call back into the store). */
    pthread_rwlock_rdlock(&m->lock);
    for (size_t i = 0; i < m->kv.cap && rc == 0; i++) {
        es__map_slot *sl = &m->kv.slots[i];
        mem_kv *r = sl->key ? sl->value : NULL;
        if (!r || !r->version || !es__has_prefix(sl->key, sl->len, prefix, plen))
            continue;
        if (n == cap) {
            size_t c = cap ? cap * 2 : 16;
            kv_item *p = es__realloc(items, c * sizeof *p);
            if (!p) {
                rc = es__err(ES_ENOMEM, "out of memory listing records");
                break;
            }
            items = p;
            cap = c;
        }
        kv_item *it = &items[n];
        it->key = es__malloc(sl->len);
        it->val = es__malloc(r->len ? r->len : 1);
        if (!it->key || !it->val) {
            free(it->key);
            free(it->val);
            rc = es__err(ES_ENOMEM, "out of memory listing records");
            break;
        }
        memcpy(it->key, sl->key, sl->len);
        if (r->len)
            memcpy(it->val, r->val, r->len);
        it->klen = sl->len;
        it->vlen = r->len;
        it->version = r->version;
        n++;
    }
    pthread_rwlock_unlock(&m->lock);
    if (n)
        qsort(items, n, sizeof *items, cmp_kv_item);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0) {
            int r = fn(items[i].key, items[i].klen, items[i].val, items[i].vlen, items[i].version,
                       payload);
            if (r)
                rc = es__cb_rc(r);
        }
        free(items[i].key);
        free(items[i].val);
    }
    free(items);
    return rc;
}

const es__backend es__backend_mem = {
    .name = "mem",
    .open = mem_open,
    .close = mem_close,
    .append = mem_append,
    .head = mem_head,
    .last_position = mem_last_position,
    .wait = mem_wait,
    .stream_cursor = mem_stream_cursor,
    .log_cursor = mem_log_cursor,
    .streams = mem_streams,
    .stats = mem_stats,
    .snap_put = mem_snap_put,
    .snap_get = mem_snap_get,
    .snap_list = mem_snap_list,
    .snap_del = mem_snap_del,
    .tamper = mem_tamper,
    .kv_get = mem_kv_get,
    .kv_cas = mem_kv_cas,
    .kv_list = mem_kv_list,
    .log_time_ordered = true, /* one writer: positions and times in commit order */
};
