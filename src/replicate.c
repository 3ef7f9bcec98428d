/*
 * replicate.c — replicas (es_replicate) and backups (es_store_backup):
 * copies of a store.
 *
 * A replicator reads the source's global log after its checkpoint, a batch
 * at a time, and appends the events to the target with their ids and
 * commit times (ES_APPEND_KEEP_TIME), each stream's events at exactly the
 * seq they have in the source.  The target then computes the same chain
 * hashes, because a chain hash covers only the event's own fields and the
 * previous hash of its stream; the replicator recomputes each hash itself
 * from the target's previous one before it appends, so a source event that
 * does not continue what was copied (rewritten history, a damaged record)
 * is reported and never written.
 *
 * The checkpoint is a record of the target's own key-value table (the one
 * subscriptions use), "replica/<name>": the source position copied up to,
 * and the stream, seq and hash of the event there, which must still be the
 * source's at the next start.  It is written after the batch's appends
 * committed, so a crash leaves the target ahead of its checkpoint, never
 * behind: the re-sent events are found in the target, compared by hash and
 * skipped.  A record in the target's table rather than a reserved stream:
 * a stream would be part of the replica's log and chains, which must be the
 * source's and nothing else.
 *
 * One commit of the target has one commit time, so a batch is appended as
 * runs of events with equal times, each run one es_append_multi.  The
 * batch is put in time order first (stably, by position), which keeps each
 * stream's order (a stream's times never go back) and lets a postgres
 * source, whose concurrent commits may reach its log a little out of time
 * order, be copied into a store whose times must not go back.
 */
#include "internal.h"

#include "map.h"

#include <stdio.h>
#include <stdlib.h>

#define REPL_PREFIX "replica/"
#define REPL_PREFIX_LEN 8
#define REPL_MAGIC 0x52455031u /* "REP1" */
#define DEFAULT_NAME "default"
#define DEFAULT_BATCH 1000
#define FOLLOW_SLICE_MS 200
/* Streams whose last copied hash is kept in memory; past it the cache
 * starts again empty (a miss costs one read of the target). */
#define STREAM_CACHE_MAX 100000

/* ---- the checkpoint record ---- */

typedef struct repl_key {
    uint8_t k[REPL_PREFIX_LEN + ES_MAX_REPLICA_NAME];
    size_t len;
} repl_key;

static bool name_char_ok(uint8_t c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static int make_key(repl_key *k, const char *name)
{
    if (!name)
        name = DEFAULT_NAME;
    size_t n = strnlen(name, ES_MAX_REPLICA_NAME + 1);
    if (n == 0 || n > ES_MAX_REPLICA_NAME)
        return es__err(ES_EINVAL, "replica name must be 1..%d bytes", ES_MAX_REPLICA_NAME);
    for (size_t i = 0; i < n; i++)
        if (!name_char_ok((uint8_t)name[i]))
            return es__err(ES_EINVAL,
                           "replica name: byte %zu is 0x%02x; a name is made of A-Z a-z 0-9 . _ -",
                           i, (unsigned)(uint8_t)name[i]);
    memcpy(k->k, REPL_PREFIX, REPL_PREFIX_LEN);
    memcpy(k->k + REPL_PREFIX_LEN, name, n);
    k->len = REPL_PREFIX_LEN + n;
    return 0;
}

static int need_kv(es_store *st)
{
    if (!st->ops->kv_get || !st->ops->kv_cas || !st->ops->kv_list)
        return es__err(ES_ENOTSUP, "the %s store keeps no records: it cannot hold a replica",
                       st->ops->name);
    return 0;
}

/* magic, position, copied, updated, last seq, last hash, stream, prefix */
enum { REC_FIXED = 4 + 8 + 8 + 8 + 8 + ES_HASH_SIZE + 1 + 1 };

static int rec_encode(es_buf *b, const es_replica_info *r)
{
    uint8_t fx[4 + 8 * 4 + ES_HASH_SIZE + 1];
    es__put_u32(fx, REPL_MAGIC);
    es__put_u64(fx + 4, r->position);
    es__put_u64(fx + 12, r->copied);
    es__put_u64(fx + 20, (uint64_t)r->updated_us);
    es__put_u64(fx + 28, r->last_seq);
    memcpy(fx + 36, r->last_hash, ES_HASH_SIZE);
    fx[36 + ES_HASH_SIZE] = (uint8_t)r->last_stream_len;
    uint8_t pl = (uint8_t)r->prefix_len;
    int rc;
    es_buf_reset(b);
    if ((rc = es_buf_put(b, fx, sizeof fx)) < 0 ||
        (rc = es_buf_put(b, r->last_stream, r->last_stream_len)) < 0 ||
        (rc = es_buf_put(b, &pl, 1)) < 0 || (rc = es_buf_put(b, r->prefix, r->prefix_len)) < 0)
        return rc;
    return 0;
}

static int rec_decode(es_replica_info *r, const uint8_t *p, size_t n, const repl_key *k)
{
    const char *name = (const char *)k->k + REPL_PREFIX_LEN;
    int nl = (int)(k->len - REPL_PREFIX_LEN);
    memset(r, 0, sizeof *r);
    memcpy(r->name, name, (size_t)nl);
    if (n < REC_FIXED || es__get_u32(p) != REPL_MAGIC)
        goto bad;
    r->position = es__get_u64(p + 4);
    r->copied = es__get_u64(p + 12);
    r->updated_us = (int64_t)es__get_u64(p + 20);
    r->last_seq = es__get_u64(p + 28);
    memcpy(r->last_hash, p + 36, ES_HASH_SIZE);
    size_t at = 36 + ES_HASH_SIZE;
    r->last_stream_len = p[at++];
    if (n < at + r->last_stream_len + 1)
        goto bad;
    memcpy(r->last_stream, p + at, r->last_stream_len);
    at += r->last_stream_len;
    r->prefix_len = p[at++];
    if (n != at + r->prefix_len)
        goto bad;
    memcpy(r->prefix, p + at, r->prefix_len);
    return 0;
bad:
    return es__err(ES_ECORRUPT, "replica '%.*s': its checkpoint record is damaged", nl, name);
}

/* Read a checkpoint; *ver 0 when there is none. */
static int rec_load(es_replica_info *r, uint64_t *ver, es_store *st, const repl_key *k)
{
    es_buf b = ES_BUF_INIT;
    int rc = st->ops->kv_get(st->be, k->k, k->len, &b, ver);
    if (rc == 0 && *ver)
        rc = rec_decode(r, b.data, b.len, k);
    es_buf_free(&b);
    return rc;
}

static int rec_store(es_store *st, const repl_key *k, uint64_t *ver, es_replica_info *r)
{
    es_buf b = ES_BUF_INIT;
    int rc;
    r->updated_us = es__realtime_us();
    if ((rc = rec_encode(&b, r)) == 0)
        rc = st->ops->kv_cas(st->be, k->k, k->len, *ver, b.data, b.len, ver);
    es_buf_free(&b);
    if (rc == ES_ECONFLICT)
        rc = es__err(ES_ECONFLICT,
                     "replica '%s': another replicator moved its checkpoint (two replicators of "
                     "one name into one target)",
                     r->name);
    return rc;
}

/* ---- messages ---- */

/* A stream key for messages: printable as it is (at most 60 bytes), else hex. */
static const char *key_str(char *out, size_t cap, const uint8_t *k, size_t n)
{
    bool plain = true;
    for (size_t i = 0; i < n; i++)
        plain = plain && k[i] >= 0x20 && k[i] < 0x7f;
    if (plain) {
        snprintf(out, cap, "'%.*s%s'", (int)(n > 60 ? 60 : n), (const char *)k,
                 n > 60 ? "..." : "");
        return out;
    }
    size_t w = (size_t)snprintf(out, cap, "0x");
    for (size_t i = 0; i < n && i < 60 && w + 3 < cap; i++)
        w += (size_t)snprintf(out + w, cap - w, "%02x", k[i]);
    return out;
}

/* ---- the replicator ---- */

typedef struct sstate {
    uint64_t seq; /* the target's head (after what is queued) */
    uint8_t hash[ES_HASH_SIZE];
} sstate;

/* One source event, copied out of the cursor; pointers into the arena are
 * set once the batch is read (the arena moves while it grows). */
typedef struct rev {
    es_event ev;
    size_t off; /* of the stream key, then type + NUL, data, meta */
} rev;

typedef struct repl {
    es_store *src, *dst;
    es_replicate_options o;
    repl_key key;
    es_replica_info ck;
    uint64_t ck_ver;
    es__map streams; /* stream key → sstate */
    es_buf arena;
    rev *evs;
    rev **order;
    es_event_new *news;
    es_append_op *ops;
    es_append_result *outs;
    size_t n;
    /* the run of equal-time events being gathered: order[g0 .. g0 + gn) */
    size_t g0, gn, gbytes;
    es_replicate_result *res;
} repl;

static int cmp_time(const void *a, const void *b)
{
    const es_event *x = &(*(rev *const *)a)->ev, *y = &(*(rev *const *)b)->ev;
    if (x->time_us != y->time_us)
        return x->time_us < y->time_us ? -1 : 1;
    return x->position < y->position ? -1 : x->position > y->position;
}

/* The target's event at `seq` of a stream (ES_ITEROVER when absent); its
 * hash and id into the out-parameters. */
static int target_event(repl *r, const es_event *like, uint64_t seq, uint8_t hash[ES_HASH_SIZE],
                        uint8_t id[ES_ID_SIZE])
{
    es_read_options ro = ES_READ_OPTIONS_INIT;
    es_cursor *c;
    const es_event *ev;
    int rc;
    ro.from_seq = seq;
    ro.to_seq = seq;
    ro.limit = 1;
    if ((rc = es_stream_cursor(&c, r->dst, like->stream, like->stream_len, &ro)) < 0)
        return rc;
    es_cursor_set_raw(c, 1); /* as stored: hashes cover the ciphertext */
    if ((rc = es_cursor_next(&ev, c)) == 0) {
        memcpy(hash, ev->hash, ES_HASH_SIZE);
        memcpy(id, ev->id, ES_ID_SIZE);
    }
    es_cursor_free(c);
    return rc;
}

/* The state of a stream in the target: from the cache, or its last event. */
static int stream_state(sstate **out, repl *r, const es_event *ev)
{
    es_read_options ro = ES_READ_OPTIONS_INIT;
    es_cursor *c;
    const es_event *last;
    sstate *s = es__map_get(&r->streams, ev->stream, ev->stream_len);
    int rc;
    if (s) {
        *out = s;
        return 0;
    }
    if (r->streams.count >= STREAM_CACHE_MAX) {
        es__map_free(&r->streams, free);
        memset(&r->streams, 0, sizeof r->streams);
    }
    if (!(s = es__calloc(1, sizeof *s)))
        return es__err(ES_ENOMEM, "out of memory replicating");
    ro.backward = 1;
    ro.limit = 1;
    if ((rc = es_stream_cursor(&c, r->dst, ev->stream, ev->stream_len, &ro)) < 0)
        goto fail;
    es_cursor_set_raw(c, 1); /* as stored: hashes cover the ciphertext */
    rc = es_cursor_next(&last, c);
    if (rc == 0) {
        s->seq = last->seq;
        memcpy(s->hash, last->hash, ES_HASH_SIZE);
    }
    es_cursor_free(c);
    if (rc < 0 && rc != ES_ITEROVER)
        goto fail;
    if ((rc = es__map_put(&r->streams, ev->stream, ev->stream_len, s)) < 0)
        goto fail;
    *out = s;
    return 0;
fail:
    free(s);
    return rc;
}

/* Append the gathered run (one commit, one time). */
static int flush(repl *r)
{
    size_t nops = 0;
    int rc;
    char k[140];
    if (r->gn == 0)
        return 0;
    for (size_t i = r->g0; i < r->g0 + r->gn; i++) {
        const es_event *e = &r->order[i]->ev;
        r->news[i] = (es_event_new){.type = e->type,
                                    .data = e->data,
                                    .data_len = e->data_len,
                                    .meta = e->meta,
                                    .meta_len = e->meta_len,
                                    .id = e->id,
                                    .time_us = e->time_us};
        const es_event *p = i > r->g0 ? &r->order[i - 1]->ev : NULL;
        if (p && p->stream_len == e->stream_len && !memcmp(p->stream, e->stream, e->stream_len) &&
            p->seq + 1 == e->seq) {
            r->ops[nops - 1].n++;
            continue;
        }
        r->ops[nops++] = (es_append_op){e->stream, e->stream_len, e->seq - 1, &r->news[i], 1};
    }
    rc = es_append_multi(r->outs, r->dst, r->ops, nops,
                         ES_APPEND_KEEP_TIME | ES_APPEND_RAW | ES_APPEND_TO_REPLICA);
    if (rc == 0) {
        for (size_t j = 0; j < nops; j++) {
            if (r->outs[j].replayed)
                r->res->present += r->ops[j].n;
            else
                r->res->copied += r->ops[j].n;
        }
    } else {
        const es_event *e = &r->order[r->g0]->ev;
        char msg[512];
        snprintf(msg, sizeof msg, "%s", es_error_last());
        if (rc == ES_ECONFLICT)
            rc = es__err(ES_ECONFLICT,
                         "the target's streams moved under the replicator (another writer of "
                         "the replica?): %s",
                         msg);
        else
            rc = es__err(rc,
                         "appending the source's events from stream %s seq %llu (time %lld) to "
                         "the target: %s%s",
                         key_str(k, sizeof k, e->stream, e->stream_len), (unsigned long long)e->seq,
                         (long long)e->time_us, msg,
                         rc == ES_EINVAL && strstr(msg, "kept commit time")
                             ? " (the target's commit times never go back: it cannot take a "
                               "source event older than what it holds)"
                             : "");
    }
    r->g0 += r->gn;
    r->gn = 0;
    r->gbytes = 0;
    return rc;
}

/* Check one source event against the target and queue it, or find it
 * there already. */
static int take(repl *r, size_t i)
{
    const es_event *e = &r->order[i]->ev;
    size_t bytes = e->type_len + e->data_len + e->meta_len;
    uint8_t h[ES_HASH_SIZE], tid[ES_ID_SIZE];
    char k[140];
    sstate *s = NULL;
    int rc;

    if (r->gn &&
        (e->time_us != r->order[r->g0]->ev.time_us || r->gn + 1 > ES_MAX_BATCH ||
         r->gbytes + bytes > ES_MAX_BATCH_BYTES) &&
        (rc = flush(r)) < 0)
        return rc;
    if (r->gn == 0)
        r->g0 = i;
    if ((rc = stream_state(&s, r, e)) < 0)
        return rc;
    if (e->seq <= s->seq) {
        /* copied before (a batch re-sent after a crash): it must be the same */
        if ((rc = flush(r)) < 0)
            return rc;
        rc = target_event(r, e, e->seq, h, tid);
        if (rc < 0 && rc != ES_ITEROVER)
            return rc;
        if (rc == ES_ITEROVER || memcmp(h, e->hash, ES_HASH_SIZE) || memcmp(tid, e->id, ES_ID_SIZE))
            return es__err(ES_ECORRUPT,
                           "the source's stream %s seq %llu (position %llu) is not the event "
                           "copied to the target: the source's history was rewritten (or the "
                           "target was written by another writer); nothing more is copied",
                           key_str(k, sizeof k, e->stream, e->stream_len),
                           (unsigned long long)e->seq, (unsigned long long)e->position);
        r->res->present++;
        return 0;
    }
    if (e->seq != s->seq + 1)
        return es__err(ES_ECORRUPT,
                       "the source's stream %s has seq %llu (position %llu) after seq %llu: a "
                       "gap in its history; nothing more is copied",
                       key_str(k, sizeof k, e->stream, e->stream_len), (unsigned long long)e->seq,
                       (unsigned long long)e->position, (unsigned long long)s->seq);
    if ((rc = es_event_hash(h, s->seq ? s->hash : NULL, e)) < 0)
        return rc;
    if (memcmp(h, e->hash, ES_HASH_SIZE) != 0)
        return es__err(ES_ECORRUPT,
                       "the source's stream %s seq %llu (position %llu) does not hash to its "
                       "chain: the source was damaged or its history rewritten; nothing of it is "
                       "copied",
                       key_str(k, sizeof k, e->stream, e->stream_len), (unsigned long long)e->seq,
                       (unsigned long long)e->position);
    s->seq = e->seq;
    memcpy(s->hash, h, ES_HASH_SIZE);
    r->gn++;
    r->gbytes += bytes;
    return 0;
}

/* Read up to batch_size source events after the checkpoint into r->evs. */
static int read_batch(repl *r)
{
    es_log_options lo = ES_LOG_OPTIONS_INIT;
    es_cursor *c;
    const es_event *ev;
    int rc;
    r->n = 0;
    es_buf_reset(&r->arena);
    lo.from_position = r->ck.position + 1;
    lo.prefix = r->ck.prefix_len ? r->ck.prefix : NULL;
    lo.prefix_len = r->ck.prefix_len;
    lo.limit = r->o.batch_size;
    if ((rc = es_log_cursor(&c, r->src, &lo)) < 0)
        return rc;
    es_cursor_set_raw(c, 1); /* as stored: hashes cover the ciphertext */
    static const uint8_t nul = 0;
    while (r->n < r->o.batch_size && (rc = es_cursor_next(&ev, c)) == 0) {
        rev *x = &r->evs[r->n];
        x->ev = *ev;
        x->off = r->arena.len;
        if ((rc = es_buf_put(&r->arena, ev->stream, ev->stream_len)) < 0 ||
            (rc = es_buf_put(&r->arena, ev->type, ev->type_len)) < 0 ||
            (rc = es_buf_put(&r->arena, &nul, 1)) < 0 ||
            (rc = es_buf_put(&r->arena, ev->data, ev->data_len)) < 0 ||
            (rc = es_buf_put(&r->arena, ev->meta, ev->meta_len)) < 0)
            break;
        r->n++;
    }
    es_cursor_free(c);
    if (rc < 0 && rc != ES_ITEROVER)
        return rc;
    bool sorted = true;
    for (size_t i = 0; i < r->n; i++) {
        rev *x = &r->evs[i];
        const uint8_t *p = r->arena.data + x->off;
        x->ev.stream = p;
        p += x->ev.stream_len;
        x->ev.type = (const char *)p;
        p += x->ev.type_len + 1;
        x->ev.data = x->ev.data_len ? p : NULL;
        p += x->ev.data_len;
        x->ev.meta = x->ev.meta_len ? p : NULL;
        r->order[i] = x;
        if (i && x->ev.time_us < r->evs[i - 1].ev.time_us)
            sorted = false;
    }
    if (!sorted)
        qsort(r->order, r->n, sizeof *r->order, cmp_time);
    return 0;
}

/* One batch: read, check, append, checkpoint.  *got: events read. */
static int round_once(repl *r, size_t *got)
{
    int rc;
    *got = 0;
    if ((rc = read_batch(r)) < 0 || r->n == 0)
        return rc;
    *got = r->n;
    r->g0 = r->gn = r->gbytes = 0;
    for (size_t i = 0; i < r->n; i++)
        if ((rc = take(r, i)) < 0)
            return rc;
    if ((rc = flush(r)) < 0)
        return rc;
    /* the checkpoint: the last event in source log order */
    const es_event *last = &r->evs[r->n - 1].ev;
    uint64_t copied_before = r->ck.copied;
    r->ck.position = last->position;
    r->ck.copied += r->n;
    r->ck.last_seq = last->seq;
    r->ck.last_stream_len = last->stream_len;
    memcpy(r->ck.last_stream, last->stream, last->stream_len);
    memcpy(r->ck.last_hash, last->hash, ES_HASH_SIZE);
    if ((rc = rec_store(r->dst, &r->key, &r->ck_ver, &r->ck)) < 0) {
        r->ck.copied = copied_before;
        return rc;
    }
    r->res->position = r->ck.position;
    r->res->batches++;
    return 0;
}

/* The checkpoint's event must still be the source's. */
static int check_checkpoint(repl *r)
{
    es_log_options lo = ES_LOG_OPTIONS_INIT;
    es_cursor *c;
    const es_event *ev;
    char k[140];
    int rc;
    if (r->ck.position == 0)
        return 0;
    lo.from_position = r->ck.position;
    lo.limit = 1;
    if ((rc = es_log_cursor(&c, r->src, &lo)) < 0)
        return rc;
    es_cursor_set_raw(c, 1); /* as stored: hashes cover the ciphertext */
    rc = es_cursor_next(&ev, c);
    if (rc == 0 && (ev->position != r->ck.position || ev->seq != r->ck.last_seq ||
                    ev->stream_len != r->ck.last_stream_len ||
                    memcmp(ev->stream, r->ck.last_stream, ev->stream_len) ||
                    memcmp(ev->hash, r->ck.last_hash, ES_HASH_SIZE)))
        rc = ES_ITEROVER;
    es_cursor_free(c);
    if (rc == ES_ITEROVER)
        return es__err(ES_ECORRUPT,
                       "replica '%s': the source's event at position %llu is not the one copied "
                       "there (stream %s seq %llu): the source's history was rewritten, or it is "
                       "another store; nothing is copied",
                       r->ck.name, (unsigned long long)r->ck.position,
                       key_str(k, sizeof k, r->ck.last_stream, r->ck.last_stream_len),
                       (unsigned long long)r->ck.last_seq);
    return rc;
}

static int start(repl *r)
{
    int rc;
    if ((rc = rec_load(&r->ck, &r->ck_ver, r->dst, &r->key)) < 0)
        return rc;
    if (r->ck_ver == 0) {
        memset(&r->ck, 0, sizeof r->ck);
        memcpy(r->ck.name, r->key.k + REPL_PREFIX_LEN, r->key.len - REPL_PREFIX_LEN);
        r->ck.prefix_len = r->o.prefix_len;
        if (r->o.prefix_len)
            memcpy(r->ck.prefix, r->o.prefix, r->o.prefix_len);
        /* the record marks the target as a replica from the start */
        return rec_store(r->dst, &r->key, &r->ck_ver, &r->ck);
    }
    if (r->ck.prefix_len != r->o.prefix_len ||
        (r->o.prefix_len && memcmp(r->ck.prefix, r->o.prefix, r->o.prefix_len))) {
        char a[140], b[140];
        return es__err(
            ES_EINVAL,
            "replica '%s' copies the streams with prefix %s, not %s (use another name "
            "for another prefix)",
            r->ck.name,
            r->ck.prefix_len ? key_str(a, sizeof a, r->ck.prefix, r->ck.prefix_len) : "'' (all)",
            r->o.prefix_len ? key_str(b, sizeof b, r->o.prefix, r->o.prefix_len) : "'' (all)");
    }
    r->res->position = r->ck.position;
    return check_checkpoint(r);
}

int es_replicate(es_replicate_result *out, es_store *target, es_store *source,
                 const es_replicate_options *opts, volatile int *stop)
{
    es_replicate_result local;
    repl r;
    int rc;

    memset(&r, 0, sizeof r);
    if (!out)
        out = &local;
    memset(out, 0, sizeof *out);
    r.res = out;
    if (!target || !source)
        return es__err(ES_EINVAL, "es_replicate: NULL store");
    if (target == source)
        return es__err(ES_EINVAL, "es_replicate: the source and the target are one handle");
    es_replicate_options o = ES_REPLICATE_OPTIONS_INIT;
    if (opts) {
        if ((rc = es__check_version(opts->version, ES_REPLICATE_OPTIONS_VERSION,
                                    "es_replicate_options")) < 0)
            return rc;
        o = *opts;
    }
    if (!o.prefix && o.prefix_len)
        return es__err(ES_EINVAL, "es_replicate_options: prefix_len without a prefix");
    if (o.prefix_len > ES_MAX_KEY)
        return es__err(ES_ETOOBIG, "replica prefix is %zu bytes; the limit is %d", o.prefix_len,
                       ES_MAX_KEY);
    if (o.batch_size == 0)
        o.batch_size = DEFAULT_BATCH;
    if (o.batch_size > ES_MAX_BATCH)
        return es__err(ES_EINVAL, "es_replicate_options.batch_size must be 1..%d, not %u",
                       ES_MAX_BATCH, o.batch_size);
    if (o.follow != 0 && o.follow != 1)
        return es__err(ES_EINVAL, "es_replicate_options.follow must be 0 or 1");
    if (o.follow && !stop)
        return es__err(ES_EINVAL, "es_replicate: follow needs a stop flag");
    if (target->flags & ES_OPEN_READONLY)
        return es__err(ES_EINVAL, "es_replicate: the target was opened read-only");
    r.src = source;
    r.dst = target;
    r.o = o;
    if ((rc = make_key(&r.key, o.name)) < 0 || (rc = need_kv(target)) < 0)
        return rc;
    if (!(r.evs = es__malloc(o.batch_size * sizeof *r.evs)) ||
        !(r.order = es__malloc(o.batch_size * sizeof *r.order)) ||
        !(r.news = es__malloc(o.batch_size * sizeof *r.news)) ||
        !(r.ops = es__malloc(o.batch_size * sizeof *r.ops)) ||
        !(r.outs = es__malloc(o.batch_size * sizeof *r.outs))) {
        rc = es__err(ES_ENOMEM, "out of memory for a batch of %u events", o.batch_size);
        goto done;
    }
    if ((rc = start(&r)) < 0)
        goto done;
    for (;;) {
        uint64_t last;
        size_t got;
        if (stop && __atomic_load_n(stop, __ATOMIC_ACQUIRE)) /* set by another thread */
            break;
        if ((rc = es_store_last_position(&last, source)) < 0 || (rc = round_once(&r, &got)) < 0)
            goto done;
        if (got == o.batch_size)
            continue; /* there may be more already */
        if (!o.follow)
            break;
        if (last < r.ck.position)
            last = r.ck.position;
        rc = es_log_wait(source, last, FOLLOW_SLICE_MS);
        if (rc < 0 && rc != ES_ETIMEDOUT)
            goto done;
        rc = 0;
    }
done:
    out->position = r.ck.position;
    es__map_free(&r.streams, free);
    es_buf_free(&r.arena);
    free(r.evs);
    free(r.order);
    free(r.news);
    free(r.ops);
    free(r.outs);
    return rc;
}

/* ---- replica records ---- */

typedef struct first_arg {
    es_replica_info *out;
    int rc;
    bool found;
} first_arg;

static int first_record(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                        uint64_t version, void *payload)
{
    first_arg *a = payload;
    repl_key k;
    (void)version;
    if (klen > sizeof k.k)
        return 0;
    memcpy(k.k, key, klen);
    k.len = klen;
    a->rc = rec_decode(a->out, val, vlen, &k);
    a->found = true;
    return 1; /* the first is enough */
}

int es_replica_info_get(es_replica_info *out, es_store *store, const char *name)
{
    repl_key k;
    uint64_t ver = 0;
    int rc;
    if (!out || !store)
        return es__err(ES_EINVAL, "es_replica_info_get: NULL argument");
    memset(out, 0, sizeof *out);
    if ((rc = need_kv(store)) < 0)
        return rc;
    if (!name) {
        first_arg a = {out, 0, false};
        rc = store->ops->kv_list(store->be, (const uint8_t *)REPL_PREFIX, REPL_PREFIX_LEN,
                                 first_record, &a);
        if (rc < 0 && rc != ES_EUSER && !a.found)
            return rc;
        if (!a.found)
            return es__err(ES_ENOTFOUND, "the store is not a replica");
        return a.rc;
    }
    if ((rc = make_key(&k, name)) < 0 || (rc = rec_load(out, &ver, store, &k)) < 0)
        return rc;
    if (ver == 0)
        return es__err(ES_ENOTFOUND, "no replica named '%s' in the store", name);
    return 0;
}

int es_replica_delete(es_store *store, const char *name)
{
    repl_key k;
    es_buf b = ES_BUF_INIT;
    uint64_t ver = 0, gone;
    int rc;
    if (!store)
        return es__err(ES_EINVAL, "es_replica_delete: store is NULL");
    if ((rc = make_key(&k, name)) < 0 || (rc = need_kv(store)) < 0)
        return rc;
    do {
        if ((rc = store->ops->kv_get(store->be, k.k, k.len, &b, &ver)) < 0)
            break;
        if (ver == 0) {
            rc = es__err(ES_ENOTFOUND, "no replica named '%s' in the store",
                         name ? name : DEFAULT_NAME);
            break;
        }
    } while ((rc = store->ops->kv_cas(store->be, k.k, k.len, ver, NULL, 0, &gone)) == ES_ECONFLICT);
    es_buf_free(&b);
    return rc;
}

/* ---- backups ---- */

int es_store_backup(es_store *store, const char *dir)
{
    if (!store || !dir || !*dir)
        return es__err(ES_EINVAL, "es_store_backup: NULL store or empty directory");
    if (!store->ops->backup)
        return es__err(ES_ENOTSUP,
                       "es_store_backup copies lmdb stores only; this is a %s store (replicate "
                       "it into an lmdb store instead)",
                       store->ops->name);
    return store->ops->backup(store->be, dir);
}
