/*
 * save.c — save: run operations against the latest snapshot
 * of a view key and append everything they emit as ONE conditional append
 * at exactly snapshot.seq + 1.  On a conflict, catch the snapshot up with
 * the new events only and run the operations again, after a full-jitter
 * exponential backoff, within bounds on attempts and time.
 *
 * Unlike the Scala library this grew from, a batch is never half written
 * (one append) and a retry never re-sends events that already landed.
 */
#include "view.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <sodium.h>
#include <stdint.h>
#include <stdlib.h>
#include <time.h>

/*
 * Saves are optimistic: they run in parallel and the append's expected seq
 * decides.  A save that has lost twice takes a turn lock (striped by store
 * and stream, within the process) and keeps it until it is done; while any
 * save waits for or holds one, new saves on that stripe queue for it from
 * the start.  So saves of one process that keep colliding take turns and
 * none starves (with backoff alone, a thread that sleeps keeps losing to
 * threads that do not).  Saves from other processes or machines still race
 * and retry.  A thread holds at most one turn: a save run by an operation of
 * another save stays optimistic, so no two threads wait for each other.
 */
#define SAVE_STRIPES 64
static pthread_mutex_t stripes[SAVE_STRIPES];
static _Atomic int contended[SAVE_STRIPES]; /* saves waiting for or holding a turn */
static pthread_once_t stripes_once = PTHREAD_ONCE_INIT;
static _Thread_local bool holding_turn;

static void stripes_init(void)
{
    for (int i = 0; i < SAVE_STRIPES; i++)
        pthread_mutex_init(&stripes[i], NULL);
}

static int stripe_of(const es_store *st, const uint8_t *key, size_t len)
{
    uint64_t h = 1469598103934665603ULL ^ (uint64_t)(uintptr_t)st;
    for (size_t i = 0; i < len; i++)
        h = (h ^ key[i]) * 1099511628211ULL;
    return (int)(h % SAVE_STRIPES);
}

static void take_turn(int s)
{
    pthread_once(&stripes_once, stripes_init);
    atomic_fetch_add(&contended[s], 1);
    pthread_mutex_lock(&stripes[s]);
    holding_turn = true;
}

static void end_turn(int s)
{
    holding_turn = false;
    pthread_mutex_unlock(&stripes[s]);
    atomic_fetch_sub(&contended[s], 1);
}

typedef struct op_event {
    es_event_new ev;
    uint8_t id[ES_ID_SIZE];
    char *type;
    uint8_t *data;
    uint8_t *meta;
    /* es_op_emit_to: another stream and its expectation (stream NULL: the
     * view key's own stream, at the snapshot's seq + 1) */
    uint8_t *stream;
    size_t stream_len;
    uint64_t expected;
} op_event;

struct es_op_ctx {
    op_event *evs;
    size_t n, cap;
    size_t n_side;      /* events for other streams */
    const es__vkeys *k; /* the view key's streams */
    size_t first_of_op; /* index of the first event of the running op */
    size_t bytes;
    char **reasons;
    size_t n_reasons, cap_reasons;
};

static void ctx_reset(es_op_ctx *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free(c->evs[i].type);
        free(c->evs[i].data);
        free(c->evs[i].meta);
        free(c->evs[i].stream);
    }
    c->n = 0;
    c->n_side = 0;
    c->bytes = 0;
    for (size_t i = 0; i < c->n_reasons; i++)
        free(c->reasons[i]);
    c->n_reasons = 0;
}

static void ctx_free(es_op_ctx *c)
{
    ctx_reset(c);
    free(c->evs);
    free(c->reasons);
}

static void *dup_bytes(const void *p, size_t n)
{
    void *q = es__malloc(n ? n : 1);
    if (q && n)
        memcpy(q, p, n);
    return q;
}

static int emit(es_op_ctx *c, const es_event_new *ev, const uint8_t *stream, size_t stream_len,
                uint64_t expected)
{
    size_t tl;
    if (!c || !ev || !ev->type)
        return es__err(ES_EINVAL, "es_op_emit: NULL argument or type");
    tl = strnlen(ev->type, ES_MAX_TYPE + 1);
    if (tl == 0)
        return es__err(ES_EINVAL, "es_op_emit: empty type name");
    if (tl > ES_MAX_TYPE)
        return es__err(ES_ETOOBIG, "es_op_emit: type name over %d bytes", ES_MAX_TYPE);
    if ((!ev->data && ev->data_len) || (!ev->meta && ev->meta_len))
        return es__err(ES_EINVAL, "es_op_emit: a length with a NULL pointer");
    if (ev->data_len > ES_MAX_DATA || ev->meta_len > ES_MAX_META)
        return es__err(ES_ETOOBIG, "es_op_emit: event data or metadata over the limit");
    if (c->n >= ES_MAX_BATCH || c->bytes + tl + ev->data_len + ev->meta_len > ES_MAX_BATCH_BYTES)
        return es__err(ES_ETOOBIG, "es_op_emit: the save's events exceed one append's limits");
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        op_event *p = es__realloc(c->evs, cap * sizeof *p);
        if (!p)
            return es__err(ES_ENOMEM, "out of memory emitting an event");
        c->evs = p;
        c->cap = cap;
    }
    op_event *e = &c->evs[c->n];
    memset(e, 0, sizeof *e);
    e->ev.data_len = ev->data_len;
    e->ev.meta_len = ev->meta_len;
    e->type = dup_bytes(ev->type, tl + 1);
    e->data = dup_bytes(ev->data, ev->data_len);
    e->meta = dup_bytes(ev->meta, ev->meta_len);
    e->stream = stream ? dup_bytes(stream, stream_len) : NULL;
    e->stream_len = stream ? stream_len : 0;
    e->expected = expected;
    if (!e->type || !e->data || !e->meta || (stream && !e->stream)) {
        free(e->type);
        free(e->data);
        free(e->meta);
        free(e->stream);
        return es__err(ES_ENOMEM, "out of memory emitting an event");
    }
    if (ev->id)
        memcpy(e->id, ev->id, ES_ID_SIZE);
    else
        es__new_id(e->id);
    c->n++;
    c->n_side += stream != NULL;
    c->bytes += tl + ev->data_len + ev->meta_len;
    return 0;
}

int es_op_emit(es_op_ctx *c, const es_event_new *ev)
{
    return emit(c, ev, NULL, 0, 0);
}

int es_op_emit_to(es_op_ctx *c, const void *stream, size_t stream_len, uint64_t expected,
                  const es_event_new *ev)
{
    if (!c || !stream)
        return es__err(ES_EINVAL, "es_op_emit_to: NULL argument");
    if (stream_len == 0)
        return es__err(ES_EINVAL, "es_op_emit_to: stream key is empty");
    if (stream_len > ES_MAX_KEY)
        return es__err(ES_ETOOBIG, "es_op_emit_to: stream key is %zu bytes; the limit is %d",
                       stream_len, ES_MAX_KEY);
    if (c->k && stream_len == c->k->stream_len && memcmp(stream, c->k->stream, stream_len) == 0)
        return es__err(ES_EINVAL, "es_op_emit_to: that is the view key's own stream; use "
                                  "es_op_emit, which appends at the snapshot's seq");
    return emit(c, ev, stream, stream_len, expected);
}

int es_op_reject(es_op_ctx *c, const char *reason)
{
    if (!c || !reason)
        return es__err(ES_EINVAL, "es_op_reject: NULL argument");
    if (c->n_reasons == c->cap_reasons) {
        size_t cap = c->cap_reasons ? c->cap_reasons * 2 : 4;
        char **p = es__realloc(c->reasons, cap * sizeof *p);
        if (!p)
            return es__err(ES_ENOMEM, "out of memory rejecting");
        c->reasons = p;
        c->cap_reasons = cap;
    }
    size_t n = strnlen(reason, 4096);
    char *r = es__malloc(n + 1);
    if (!r)
        return es__err(ES_ENOMEM, "out of memory rejecting");
    memcpy(r, reason, n);
    r[n] = 0;
    c->reasons[c->n_reasons++] = r;
    return 0;
}

static int emit_all(es_op_ctx *c, const es_op *op)
{
    int rc;
    if (!op->events && op->n_events)
        return es__err(ES_EINVAL, "built-in operation has n_events but no events");
    for (size_t i = 0; i < op->n_events; i++)
        if ((rc = es_op_emit(c, &op->events[i])) < 0)
            return rc;
    return 0;
}

static int run_if_new(es_op_ctx *c, const es_snapshot *snap, const es_op *op)
{
    if (snap->state == ES_SNAP_VALUE)
        return es_op_reject(c, "duplicate value");
    return emit_all(c, op);
}

static int run_if_seq(es_op_ctx *c, const es_snapshot *snap, const es_op *op)
{
    if (snap->seq != op->seq)
        return es_op_reject(c, "sequence mismatch");
    return emit_all(c, op);
}

es_op es_op_if_new(const es_event_new *events, size_t n)
{
    es_op op = {run_if_new, NULL, events, n, 0};
    return op;
}

es_op es_op_if_seq(uint64_t seq, const es_event_new *events, size_t n)
{
    es_op op = {run_if_seq, NULL, events, n, seq};
    return op;
}

void es_save_result_clear(es_save_result *res, const es_view *v)
{
    if (!res)
        return;
    es_snapshot_clear(&res->snapshot, v);
    for (size_t i = 0; i < res->n_reasons; i++)
        free(res->reasons[i]);
    free(res->reasons);
    memset(res, 0, sizeof *res);
}

/* A pretend event for folding an emitted event before it is stored. */
static es_event pending_event(const es__vkeys *k, const op_event *e, uint64_t seq, int64_t t,
                              uint64_t pos)
{
    es_event ev;
    memset(&ev, 0, sizeof ev);
    ev.stream = k->stream;
    ev.stream_len = k->stream_len;
    ev.seq = seq;
    ev.position = pos;
    ev.time_us = t;
    memcpy(ev.id, e->id, ES_ID_SIZE);
    ev.type = e->type;
    ev.type_len = strlen(e->type);
    ev.data = e->data;
    ev.data_len = e->ev.data_len;
    ev.meta = e->meta;
    ev.meta_len = e->ev.meta_len;
    return ev;
}

/* The append of a save: the view key's own events at exactly base_seq + 1
 * and, in the same atomic commit, the events emitted for other streams with
 * their expectations (consecutive events for one stream and expectation make
 * one request).  *own gets the own stream's result (zeros when it had no
 * events).  *batch is the caller's to free. */
static int append_emitted(es_append_result *own, es_store *st, const es__vkeys *k,
                          uint64_t base_seq, const es_op_ctx *ctx, es_event_new **batch)
{
    es_append_op *ops = NULL;
    es_append_result *res = NULL;
    size_t n_own = ctx->n - ctx->n_side, n_ops = 0;
    int rc;

    memset(own, 0, sizeof *own);
    if (!(*batch = es__malloc(ctx->n * sizeof **batch)))
        return es__err(ES_ENOMEM, "out of memory for a save's batch");
    es_event_new *b = *batch;
    /* own events first, then the others in the order they were emitted */
    for (int pass = 0, m = 0; pass < 2; pass++)
        for (size_t i = 0; i < ctx->n; i++) {
            const op_event *e = &ctx->evs[i];
            if ((e->stream != NULL) != (pass == 1))
                continue;
            b[m] = e->ev;
            b[m].type = e->type;
            b[m].data = e->data;
            b[m].meta = e->meta;
            b[m].id = e->id;
            b[m].time_us = 0;
            m++;
        }
    if (ctx->n_side == 0)
        return es_append(own, st, k->stream, k->stream_len, base_seq, b, n_own);

    if (!(ops = es__calloc(ctx->n_side + 1, sizeof *ops)) ||
        !(res = es__calloc(ctx->n_side + 1, sizeof *res))) {
        rc = es__err(ES_ENOMEM, "out of memory for a save's batch");
        goto done;
    }
    if (n_own)
        ops[n_ops++] = (es_append_op){k->stream, k->stream_len, base_seq, b, n_own};
    /* A stream's first event sets its expectation; later ones follow it in
     * the same commit (adjacent ones in the same request, others in a
     * request that expects anything: the first already fixed the state). */
    size_t first_side = n_ops;
    for (size_t i = 0, m = n_own; i < ctx->n; i++) {
        const op_event *e = &ctx->evs[i];
        if (!e->stream)
            continue;
        es_append_op *last = n_ops > first_side ? &ops[n_ops - 1] : NULL;
        if (last && last->stream_len == e->stream_len &&
            memcmp(last->stream, e->stream, e->stream_len) == 0) {
            last->n++;
        } else {
            uint64_t expected = e->expected;
            for (size_t j = first_side; j < n_ops; j++)
                if (ops[j].stream_len == e->stream_len &&
                    memcmp(ops[j].stream, e->stream, e->stream_len) == 0)
                    expected = ES_EXPECT_ANY;
            ops[n_ops++] = (es_append_op){e->stream, e->stream_len, expected, &b[m], 1};
        }
        m++;
    }
    if ((rc = es_append_multi(res, st, ops, n_ops, 0)) == 0 && n_own)
        *own = res[0];
    else if (rc == 0) {
        own->time_us = res[0].time_us;
        own->head = base_seq;
    }
done:
    free(ops);
    free(res);
    return rc;
}

/* Run the operations on a copy of `base`.  Returns 0 with ctx holding the
 * events (or the reasons), or an error. */
static int run_ops(es_op_ctx *ctx, es_view *v, const es__vkeys *k, const es__fold *base,
                   const es_op *ops, size_t n_ops, es__fold *work)
{
    int rc;
    int64_t now = es__now(v->st);

    ctx_reset(ctx);
    ctx->k = k;
    uint64_t next_seq = base->seq + 1;
    if ((rc = es__fold_clone(work, v, k, base)) < 0)
        return rc;
    for (size_t i = 0; i < n_ops; i++) {
        es_snapshot snap;
        if ((rc = es__fold_view(&snap, v, k, work, false)) < 0)
            return rc;
        ctx->first_of_op = ctx->n;
        int r = ops[i].run(ctx, &snap, &ops[i]);
        if (v->def.shard_key)
            es_snapshot_clear(&snap, v);
        if (r)
            return es__cb_rc(r);
        if (ctx->n_reasons)
            return 0;
        /* Later operations see the events of the earlier ones. */
        for (size_t j = ctx->first_of_op; j < ctx->n; j++) {
            if (ctx->evs[j].stream)
                continue; /* another stream's event: not part of this fold */
            es_event ev = pending_event(k, &ctx->evs[j], next_seq++, now, 0);
            if ((rc = es__fold_apply(work, v, k, &ev)) < 0)
                return rc;
        }
    }
    return 0;
}

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_us(uint64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

/* The snapshot after a save's append: the stored events (real seqs, time
 * and positions) folded into a fresh copy of the base, so that it equals a
 * later get.  A failure leaves out->snapshot for the caller to reset; a
 * snapshot that cannot be persisted is only a cache left stale. */
static int saved_snapshot(es_save_result *out, es_view *v, const es__vkeys *k, const es__fold *base,
                          const es_op_ctx *ctx, const es_append_result *ar, es__fold *work)
{
    int rc;
    es__fold_clear(work, v);
    if ((rc = es__fold_clone(work, v, k, base)) < 0)
        return rc;
    uint64_t i_own = 0;
    for (size_t i = 0; i < ctx->n; i++) {
        if (ctx->evs[i].stream)
            continue;
        es_event ev = pending_event(k, &ctx->evs[i], ar->first_seq + i_own, ar->time_us,
                                    ar->first_position + i_own);
        i_own++;
        if ((rc = es__fold_apply(work, v, k, &ev)) < 0)
            return rc;
    }
    (void)es__fold_maybe_persist(work, v, k);
    return es__fold_view(&out->snapshot, v, k, work, true);
}

int es_save(es_save_result *out, es_view *v, const void *vkey, size_t vkey_len, const es_op *ops,
            size_t n_ops, const es_save_options *opts)
{
    es_save_options o = ES_SAVE_OPTIONS_INIT;
    es_op_ctx ctx;
    es__vkeys k;
    es__fold base, work;
    es_event_new *batch = NULL;
    int64_t start = mono_us();
    int rc, stripe = 0;
    bool turn = false; /* this save holds its stream's turn */

    memset(&ctx, 0, sizeof ctx);
    memset(&base, 0, sizeof base);
    memset(&work, 0, sizeof work);
    if (!out)
        return es__err(ES_EINVAL, "es_save: out is NULL");
    memset(out, 0, sizeof *out);
    if (!v)
        return es__err(ES_EINVAL, "es_save: view is NULL");
    if (!ops || n_ops == 0)
        return es__err(ES_EINVAL, "es_save: no operations");
    for (size_t i = 0; i < n_ops; i++)
        if (!ops[i].run)
            return es__err(ES_EINVAL, "es_save: operation %zu has no run callback", i);
    if (opts) {
        if ((rc = es__check_version(opts->version, ES_SAVE_OPTIONS_VERSION, "es_save_options")) < 0)
            return rc;
        o = *opts;
    }
    if (!o.max_attempts)
        o.max_attempts = 16;
    if (!o.max_total_ms)
        o.max_total_ms = 10000;
    if (!o.backoff_base_us)
        o.backoff_base_us = 200;
    if (!o.backoff_cap_us)
        o.backoff_cap_us = 100000;
    if ((rc = es__view_keys(&k, v, vkey, vkey_len)) < 0)
        return rc;
    stripe = stripe_of(v->st, k.stream, k.stream_len);
    if (!holding_turn && atomic_load(&contended[stripe]) > 0) {
        /* others are taking turns on this stream: queue with them */
        take_turn(stripe);
        turn = true;
    }
    if ((rc = es__fold_load(&base, v, &k, UINT64_MAX, INT64_MAX)) < 0)
        goto done;
    if ((rc = es__fold_run(&base, v, &k, UINT64_MAX, INT64_MAX, NULL, NULL)) < 0)
        goto done;

    for (unsigned attempt = 1;; attempt++) {
        es_append_result ar;
        es__fold_clear(&work, v);
        if ((rc = run_ops(&ctx, v, &k, &base, ops, n_ops, &work)) < 0)
            goto done;
        if (ctx.n_reasons) {
            out->status = ES_REJECTED;
            out->reasons = ctx.reasons;
            out->n_reasons = ctx.n_reasons;
            ctx.reasons = NULL;
            ctx.n_reasons = ctx.cap_reasons = 0;
            rc = es__fold_view(&out->snapshot, v, &k, &base, true);
            goto done;
        }
        if (ctx.n == 0) { /* nothing to write: saved as is */
            out->status = ES_SAVED;
            out->last_seq = base.seq;
            rc = es__fold_view(&out->snapshot, v, &k, &base, true);
            goto done;
        }
        free(batch);
        batch = NULL;
        rc = append_emitted(&ar, v->st, &k, base.seq, &ctx, &batch);
        if (rc == 0) {
            /* The events are stored: from here on nothing turns the save into
             * an error, or a caller's retry would write them twice. */
            out->status = ES_SAVED;
            out->last_seq = ctx.n > ctx.n_side ? ar.last_seq : base.seq;
            out->retries = attempt - 1;
            if (saved_snapshot(out, v, &k, &base, &ctx, &ar, &work) < 0) {
                es_snapshot_clear(&out->snapshot, v);
                out->snapshot = (es_snapshot)ES_SNAPSHOT_INIT;
            }
            es_error_clear();
            goto done;
        }
        if (rc != ES_ECONFLICT)
            goto done;
        /* Conflict: catch the base up with the new events only. */
        out->retries = attempt;
        bool now = !turn && !holding_turn && attempt >= 2 && attempt < o.max_attempts;
        if (now) {
            take_turn(stripe);
            turn = true;
        }
        if ((rc = es__fold_run(&base, v, &k, UINT64_MAX, INT64_MAX, NULL, NULL)) < 0)
            goto done;
        if (now)
            continue; /* waiting for the turn was the backoff */
        uint64_t ceiling = (uint64_t)o.backoff_base_us << (attempt < 20 ? attempt : 20);
        if (ceiling > o.backoff_cap_us)
            ceiling = o.backoff_cap_us;
        uint64_t pause = randombytes_uniform((uint32_t)ceiling + 1);
        if (attempt >= o.max_attempts ||
            (uint64_t)(mono_us() - start) + pause > (uint64_t)o.max_total_ms * 1000) {
            out->status = ES_GAVE_UP;
            rc = es__fold_view(&out->snapshot, v, &k, &base, true);
            goto done;
        }
        sleep_us(pause);
    }
done:
    if (turn)
        end_turn(stripe);
    free(batch);
    es__fold_clear(&work, v);
    es__fold_clear(&base, v);
    ctx_free(&ctx);
    if (rc < 0)
        es_save_result_clear(out, v);
    return rc;
}
