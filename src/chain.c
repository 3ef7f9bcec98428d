/*
 * chain.c — hash chains.  Every event stores BLAKE2b-256(previous hash of
 * its stream || canonical bytes of the event), so rewriting any stored event
 * changes its hash or breaks the chain after it.  es_verify walks the log
 * (or one stream) and recomputes everything.
 */
#include "internal.h"

#include "map.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>

static const uint8_t zero_hash[ES_HASH_SIZE];

void es__chain_hash(uint8_t out[ES_HASH_SIZE], const uint8_t *prev, const uint8_t *stream,
                    size_t stream_len, uint64_t seq, int64_t time_us, const uint8_t id[ES_ID_SIZE],
                    const char *type, size_t type_len, const void *data, size_t data_len,
                    const void *meta, size_t meta_len)
{
    crypto_generichash_state h;
    uint8_t hdr[3 + 1 + ES_MAX_KEY + 8 + 8 + ES_ID_SIZE + 1 + ES_MAX_TYPE + 4];
    uint8_t len4[4];
    size_t n = 0;

    memcpy(hdr, "es1", 3);
    n = 3;
    hdr[n++] = (uint8_t)stream_len;
    memcpy(hdr + n, stream, stream_len);
    n += stream_len;
    es__put_u64(hdr + n, seq);
    n += 8;
    es__put_u64(hdr + n, (uint64_t)time_us);
    n += 8;
    memcpy(hdr + n, id, ES_ID_SIZE);
    n += ES_ID_SIZE;
    hdr[n++] = (uint8_t)type_len;
    memcpy(hdr + n, type, type_len);
    n += type_len;
    es__put_u32(hdr + n, (uint32_t)data_len);
    n += 4;

    crypto_generichash_init(&h, NULL, 0, ES_HASH_SIZE);
    crypto_generichash_update(&h, prev ? prev : zero_hash, ES_HASH_SIZE);
    crypto_generichash_update(&h, hdr, n);
    if (data_len)
        crypto_generichash_update(&h, data, data_len);
    es__put_u32(len4, (uint32_t)meta_len);
    crypto_generichash_update(&h, len4, 4);
    if (meta_len)
        crypto_generichash_update(&h, meta, meta_len);
    crypto_generichash_final(&h, out, ES_HASH_SIZE);
}

int es_event_hash(uint8_t out[ES_HASH_SIZE], const uint8_t *prev, const es_event *ev)
{
    if (!out || !ev || !ev->stream || !ev->type || (!ev->data && ev->data_len) ||
        (!ev->meta && ev->meta_len))
        return es__err(ES_EINVAL, "es_event_hash: NULL argument");
    if (ev->stream_len == 0 || ev->stream_len > ES_MAX_KEY || ev->type_len == 0 ||
        ev->type_len > ES_MAX_TYPE || ev->data_len > ES_MAX_DATA || ev->meta_len > ES_MAX_META)
        return es__err(ES_EINVAL, "es_event_hash: a field is out of its limits");
    es__chain_hash(out, prev, ev->stream, ev->stream_len, ev->seq, ev->time_us, ev->id, ev->type,
                   ev->type_len, ev->data, ev->data_len, ev->meta, ev->meta_len);
    return 0;
}

/* What the log walk learned about one stream, checked again by the stream walk. */
typedef struct vstream {
    uint64_t seq;
    uint8_t hash[ES_HASH_SIZE];
    uint8_t pos_digest[ES_HASH_SIZE]; /* running hash of (seq, position) pairs */
} vstream;

static void fail(es_verify_result *r, const es_event *ev, const char *fmt, ...) ES__PRINTF(3, 4);

static void fail(es_verify_result *r, const es_event *ev, const char *fmt, ...)
{
    va_list ap;
    if (!r->ok)
        return;
    r->ok = 0;
    r->bad_stream_len = ev->stream_len <= ES_MAX_KEY ? ev->stream_len : ES_MAX_KEY;
    memcpy(r->bad_stream, ev->stream, r->bad_stream_len);
    r->bad_seq = ev->seq;
    r->bad_position = ev->position;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
}

static void digest_step(uint8_t d[ES_HASH_SIZE], uint64_t seq, uint64_t pos)
{
    uint8_t buf[ES_HASH_SIZE + 16];
    memcpy(buf, d, ES_HASH_SIZE);
    es__put_u64(buf + ES_HASH_SIZE, seq);
    es__put_u64(buf + ES_HASH_SIZE + 8, pos);
    crypto_generichash(d, ES_HASH_SIZE, buf, sizeof buf, NULL, 0);
}

/* Check one event against the state of its stream; update the state. */
static void check_event(es_verify_result *r, vstream *vs, const es_event *ev)
{
    uint8_t h[ES_HASH_SIZE];
    if (ev->seq != vs->seq + 1) {
        fail(r, ev, "seq %llu follows seq %llu", (unsigned long long)ev->seq,
             (unsigned long long)vs->seq);
        return;
    }
    if (ev->stream_len == 0 || ev->stream_len > ES_MAX_KEY || ev->type_len == 0 ||
        ev->type_len > ES_MAX_TYPE) {
        fail(r, ev, "a field is out of its limits");
        return;
    }
    es__chain_hash(h, vs->seq ? vs->hash : NULL, ev->stream, ev->stream_len, ev->seq, ev->time_us,
                   ev->id, ev->type, ev->type_len, ev->data, ev->data_len, ev->meta, ev->meta_len);
    if (sodium_memcmp(h, ev->hash, ES_HASH_SIZE) != 0) {
        fail(r, ev, "chain hash does not match the event");
        return;
    }
    vs->seq = ev->seq;
    memcpy(vs->hash, ev->hash, ES_HASH_SIZE);
    digest_step(vs->pos_digest, ev->seq, ev->position);
}

/* The event with the highest position past the cut, checked at the end
 * against the store's position ceiling. */
typedef struct beyond {
    uint64_t position, seq;
    uint8_t stream[ES_MAX_KEY];
    size_t stream_len;
} beyond;

/*
 * Walk one stream through its index and check every event's chain.  `head`
 * is the stream's head read before the walk: the walk must reach it
 * (appends made meanwhile only add events).  With `expect` (the whole-store
 * check), the stream's events up to global position `cut` — the end of the
 * log walk — must be exactly those the log walk saw; events after the cut
 * were appended (or became visible) since, and are checked on their own.
 */
static int verify_stream(es_verify_result *r, es_store *st, const void *stream, size_t len,
                         uint64_t head, const vstream *expect, uint64_t cut, beyond *far)
{
    es_cursor *c = NULL;
    const es_event *ev;
    vstream vs;
    uint64_t upto_seq = 0;
    uint8_t upto_digest[ES_HASH_SIZE];
    int rc;

    memset(&vs, 0, sizeof vs);
    memset(upto_digest, 0, sizeof upto_digest);
    if ((rc = es_stream_cursor(&c, st, stream, len, NULL)) < 0)
        return rc;
    es_cursor_set_raw(c, 1); /* as stored: hashes cover the ciphertext */
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        if (ev->stream_len != len || memcmp(ev->stream, stream, len)) {
            fail(r, ev, "stream index points at an event of another stream");
            break;
        }
        check_event(r, &vs, ev);
        if (!r->ok)
            break;
        if (expect && ev->position <= cut) {
            upto_seq = vs.seq;
            memcpy(upto_digest, vs.pos_digest, ES_HASH_SIZE);
        } else {
            r->events_checked++;
            if (far && ev->position > far->position) {
                far->position = ev->position;
                far->seq = ev->seq;
                far->stream_len = len;
                memcpy(far->stream, stream, len);
            }
        }
    }
    es_cursor_free(c);
    if (rc != ES_ITEROVER && rc < 0)
        return rc;
    if (r->ok && expect &&
        (upto_seq != expect->seq || memcmp(upto_digest, expect->pos_digest, ES_HASH_SIZE) != 0)) {
        es_event e = {.stream = stream, .stream_len = len, .seq = upto_seq};
        fail(r, &e, "stream index and global log disagree");
    }
    if (r->ok && vs.seq < head) {
        es_event e = {.stream = stream, .stream_len = len, .seq = vs.seq + 1};
        fail(r, &e, "stream head is %llu but its events end at seq %llu", (unsigned long long)head,
             (unsigned long long)vs.seq);
    }
    r->streams_checked++;
    return 0;
}

typedef struct walk_ctx {
    es_verify_result *r;
    es_store *st;
    es__map *seen;
    uint64_t cut;
    uint64_t listed; /* listed streams that the log walk saw */
    beyond far;
} walk_ctx;

static int verify_listed(const uint8_t *stream, size_t len, uint64_t head, void *payload)
{
    static const vstream none; /* a stream the log walk did not see */
    walk_ctx *w = payload;
    vstream *vs = es__map_get(w->seen, stream, len);
    if (vs)
        w->listed++;
    if (vs && head < vs->seq) {
        es_event e = {.stream = stream, .stream_len = len, .seq = head};
        fail(w->r, &e, "stream head %llu but the global log holds %llu events",
             (unsigned long long)head, (unsigned long long)vs->seq);
        return 1;
    }
    int rc = verify_stream(w->r, w->st, stream, len, head, vs ? vs : &none, w->cut, &w->far);
    if (rc < 0)
        return rc;
    return w->r->ok ? 0 : 1;
}

int es_verify(es_verify_result *out, es_store *st, const void *stream, size_t stream_len)
{
    es__map seen = {0};
    es_cursor *c = NULL;
    const es_event *ev;
    uint64_t last_pos = 0;
    int rc;

    if (!out || !st)
        return es__err(ES_EINVAL, "es_verify: NULL argument");
    memset(out, 0, sizeof *out);
    out->ok = 1;
    if (stream) {
        if (stream_len == 0 || stream_len > ES_MAX_KEY)
            return es__err(stream_len ? ES_ETOOBIG : ES_EINVAL, "es_verify: bad stream key length");
        uint64_t head;
        if ((rc = es_stream_head(&head, st, stream, stream_len)) < 0)
            return rc;
        return verify_stream(out, st, stream, stream_len, head, NULL, 0, NULL);
    }

    /* Pass 1: the global log, in position order. */
    if ((rc = es_log_cursor(&c, st, NULL)) < 0)
        return rc;
    es_cursor_set_raw(c, 1); /* as stored: hashes cover the ciphertext */
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        out->events_checked++;
        if (ev->position <= last_pos) {
            fail(out, ev, "position %llu does not follow %llu", (unsigned long long)ev->position,
                 (unsigned long long)last_pos);
            break;
        }
        last_pos = ev->position;
        vstream *vs = es__map_get(&seen, ev->stream, ev->stream_len);
        if (!vs) {
            if (!(vs = es__calloc(1, sizeof *vs))) {
                rc = es__err(ES_ENOMEM, "out of memory verifying");
                goto done;
            }
            if ((rc = es__map_put(&seen, ev->stream, ev->stream_len, vs)) < 0) {
                free(vs);
                goto done;
            }
        }
        check_event(out, vs, ev);
        if (!out->ok)
            break;
    }
    if (rc != ES_ITEROVER && rc < 0)
        goto done;
    rc = 0;
    es_cursor_free(c);
    c = NULL;
    if (!out->ok)
        goto done;

    /* Pass 2: every stream through its index; it must agree with the log. */
    walk_ctx w = {out, st, &seen, last_pos, 0, {0}};
    if ((rc = es_streams(st, NULL, 0, verify_listed, &w)) < 0 && rc != ES_EUSER)
        goto done;
    rc = 0;
    /* Events past the cut were committed after the log walk, or are still
     * behind the log's horizon; none may sit where no commit can be yet
     * (a position moved into the future hides an event from readers). */
    if (out->ok && w.far.position) {
        uint64_t ceiling;
        if (st->ops->position_ceiling)
            rc = st->ops->position_ceiling(st->be, &ceiling);
        else if ((rc = st->ops->last_position(st->be, &ceiling)) == 0)
            ceiling++;
        if (rc < 0)
            goto done;
        if (w.far.position >= ceiling) {
            es_event e = {.stream = w.far.stream,
                          .stream_len = w.far.stream_len,
                          .seq = w.far.seq,
                          .position = w.far.position};
            fail(out, &e, "position %llu is past every position assigned so far",
                 (unsigned long long)w.far.position);
        }
    }
    if (out->ok && w.listed != seen.count) {
        out->ok = 0;
        snprintf(out->reason, sizeof out->reason,
                 "the global log holds %zu streams but the index lists %llu", seen.count,
                 (unsigned long long)w.listed);
    }
done:
    es_cursor_free(c);
    es__map_free(&seen, free);
    return rc;
}
