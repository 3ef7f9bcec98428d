/*
 * merkle.c — verifiable history: a Merkle tree over the global log (RFC 9162
 * style), its digests, inclusion and consistency proofs, and the checks of
 * them.  doc/verifiable-history.md describes the format and the trade-offs.
 *
 * Why it is built lazily: appends must not slow down, and every backend must
 * have it.  So nothing happens at append time; the tree is caught up from
 * the log when a digest or proof is asked for.  What it computed is kept in
 * the store's record table (the kv_* vtable entries subscriptions use), in
 * chunks of CHUNK leaves: each chunk's root and first and last positions,
 * PER_REC chunks per record under "mrk/c/" + u64be record number.  A digest
 * then hashes only the chunk roots and the unfinished last chunk's leaves;
 * a proof reads back the CHUNK events of the one chunk it needs (and checks
 * them against the chunk's root: a rewritten event is refused, not proved).
 *
 * Concurrency: records are written with compare-and-set, in order; a writer
 * that loses a race stops writing (the winner wrote the same bytes: they
 * are a function of the log) and the next caller reads what is there.  A
 * record that is missing, short or out of order ends what is trusted; the
 * rest is computed again and written over it.
 */
#include "internal.h"

#include <sodium.h>
#include <stdlib.h>

#define HS ES_HASH_SIZE
#define CHUNK 256
#define PER_REC 64
#define ENTRY (HS + 16) /* root, first position, last position */
#define REC_HDR 4       /* u8 version, u8 reserved, u16be count */
#define REC_VERSION 1
#define KEY_PREFIX "mrk/c/"
#define KEY_PREFIX_LEN 6
#define SIGN_DOMAIN "esrc-digest-1"
#define SIGN_DOMAIN_LEN 13
#define SIGN_MSG (SIGN_DOMAIN_LEN + 8 + HS + 8 + 8)

/* ---- hashing ---- */

void es_merkle_leaf(uint8_t out[HS], const uint8_t event_hash[HS], uint64_t position)
{
    uint8_t b[1 + HS + 8];
    b[0] = 0x00;
    memcpy(b + 1, event_hash, HS);
    es__put_u64(b + 1 + HS, position);
    crypto_generichash(out, HS, b, sizeof b, NULL, 0);
}

static void hnode(uint8_t out[HS], const uint8_t l[HS], const uint8_t r[HS])
{
    uint8_t b[1 + 2 * HS];
    b[0] = 0x01;
    memcpy(b + 1, l, HS);
    memcpy(b + 1 + HS, r, HS);
    crypto_generichash(out, HS, b, sizeof b, NULL, 0);
}

static void hempty(uint8_t out[HS])
{
    crypto_generichash(out, HS, NULL, 0, NULL, 0);
}

/* The largest power of two below n (n >= 2): RFC 9162's split. */
static uint64_t split(uint64_t n)
{
    return (uint64_t)1 << (63 - __builtin_clzll(n - 1));
}

/* Root of a perfect tree of CHUNK leaves. */
static void chunk_root(uint8_t out[HS], const uint8_t (*leaves)[HS])
{
    uint8_t lv[CHUNK / 2][HS];
    for (int i = 0; i < CHUNK / 2; i++)
        hnode(lv[i], leaves[2 * i], leaves[2 * i + 1]);
    for (int n = CHUNK / 2; n > 1; n /= 2)
        for (int i = 0; i < n / 2; i++)
            hnode(lv[i], lv[2 * i], lv[2 * i + 1]);
    memcpy(out, lv[0], HS);
}

/* ---- the tree ---- */

typedef struct leafset {
    bool used;
    uint64_t chunk;
    uint8_t leaf[CHUNK][HS];
    uint64_t pos[CHUNK];
} leafset;

typedef struct rec_ver {
    uint64_t idx, version;
} rec_ver;

typedef struct mtree {
    es_store *st;
    /* complete chunks */
    uint64_t n_chunks, cap;
    uint8_t (*roots)[HS];
    uint64_t *first, *last;
    uint64_t persisted; /* chunks the records held when read */
    /* the unfinished last chunk */
    uint8_t tail[CHUNK][HS];
    uint64_t tail_pos[CHUNK];
    uint32_t n_tail;
    uint64_t size;
    uint64_t last_position; /* of leaf size - 1 */
    /* the records' versions, for compare-and-set */
    rec_ver *vers;
    size_t n_vers, cap_vers;
    /* chunks read back from the log */
    leafset cache[2];
    unsigned next_slot;
} mtree;

static void tree_free(mtree *t)
{
    if (!t)
        return;
    free(t->roots);
    free(t->first);
    free(t->last);
    free(t->vers);
    free(t);
}

static int tree_new(mtree **out, es_store *st)
{
    if (!(*out = es__calloc(1, sizeof **out)))
        return es__err(ES_ENOMEM, "out of memory for the Merkle tree");
    (*out)->st = st;
    return 0;
}

static int push_chunk(mtree *t, const uint8_t root[HS], uint64_t first, uint64_t last)
{
    if (t->n_chunks == t->cap) {
        uint64_t cap = t->cap ? t->cap * 2 : 64;
        void *r = es__realloc(t->roots, cap * HS);
        if (!r)
            return es__err(ES_ENOMEM, "out of memory for the Merkle tree");
        t->roots = r;
        void *f = es__realloc(t->first, cap * 8);
        if (!f)
            return es__err(ES_ENOMEM, "out of memory for the Merkle tree");
        t->first = f;
        void *l = es__realloc(t->last, cap * 8);
        if (!l)
            return es__err(ES_ENOMEM, "out of memory for the Merkle tree");
        t->last = l;
        t->cap = cap;
    }
    memcpy(t->roots[t->n_chunks], root, HS);
    t->first[t->n_chunks] = first;
    t->last[t->n_chunks] = last;
    t->n_chunks++;
    return 0;
}

/* ---- records ---- */

static void rec_key(uint8_t k[KEY_PREFIX_LEN + 8], uint64_t idx)
{
    memcpy(k, KEY_PREFIX, KEY_PREFIX_LEN);
    es__put_u64(k + KEY_PREFIX_LEN, idx);
}

typedef struct load_ctx {
    mtree *t;
    bool stop; /* the trusted prefix ended */
    int rc;
} load_ctx;

static int note_version(mtree *t, uint64_t idx, uint64_t version)
{
    if (t->n_vers == t->cap_vers) {
        size_t cap = t->cap_vers ? t->cap_vers * 2 : 16;
        void *p = es__realloc(t->vers, cap * sizeof *t->vers);
        if (!p)
            return es__err(ES_ENOMEM, "out of memory for the Merkle tree");
        t->vers = p;
        t->cap_vers = cap;
    }
    t->vers[t->n_vers++] = (rec_ver){idx, version};
    return 0;
}

static uint64_t version_of(const mtree *t, uint64_t idx)
{
    for (size_t i = 0; i < t->n_vers; i++)
        if (t->vers[i].idx == idx)
            return t->vers[i].version;
    return 0;
}

static void set_version(mtree *t, uint64_t idx, uint64_t version)
{
    for (size_t i = 0; i < t->n_vers; i++)
        if (t->vers[i].idx == idx) {
            t->vers[i].version = version;
            return;
        }
    (void)note_version(t, idx, version); /* at worst the next write conflicts */
}

static int load_one(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                    uint64_t version, void *payload)
{
    load_ctx *c = payload;
    mtree *t = c->t;
    if (klen != KEY_PREFIX_LEN + 8)
        return 0; /* not ours */
    uint64_t idx = es__get_u64(key + KEY_PREFIX_LEN);
    if ((c->rc = note_version(t, idx, version)) < 0)
        return 1;
    /* Records are trusted in order, from 0, each full but the last. */
    if (c->stop || idx != t->n_chunks / PER_REC || t->n_chunks % PER_REC) {
        c->stop = true;
        return 0;
    }
    if (vlen < REC_HDR || val[0] != REC_VERSION) {
        c->stop = true;
        return 0;
    }
    uint32_t n = ((uint32_t)val[2] << 8) | val[3];
    if (n == 0 || n > PER_REC || vlen != REC_HDR + (size_t)n * ENTRY) {
        c->stop = true;
        return 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        const uint8_t *e = val + REC_HDR + (size_t)i * ENTRY;
        uint64_t first = es__get_u64(e + HS), last = es__get_u64(e + HS + 8);
        uint64_t prev = t->n_chunks ? t->last[t->n_chunks - 1] : 0;
        if (first <= prev || last < first + CHUNK - 1) {
            c->stop = true;
            return 0;
        }
        if ((c->rc = push_chunk(t, e, first, last)) < 0)
            return 1;
    }
    return 0;
}

static int load_records(mtree *t)
{
    es_store *st = t->st;
    if (!st->ops->kv_list)
        return 0;
    load_ctx c = {t, false, 0};
    int rc = st->ops->kv_list(st->be, (const uint8_t *)KEY_PREFIX, KEY_PREFIX_LEN, load_one, &c);
    if (c.rc < 0)
        return c.rc;
    if (rc < 0)
        return rc;
    t->persisted = t->n_chunks;
    return 0;
}

/* Write the records holding chunks from..n_chunks-1.  Losing a race stops. */
static int save_records(mtree *t, uint64_t from)
{
    es_store *st = t->st;
    uint8_t key[KEY_PREFIX_LEN + 8];
    uint8_t *buf = NULL;
    int rc = 0;
    if (!st->ops->kv_cas || (st->flags & ES_OPEN_READONLY) || from >= t->n_chunks)
        return 0;
    if (!(buf = es__malloc(REC_HDR + PER_REC * ENTRY)))
        return es__err(ES_ENOMEM, "out of memory for the Merkle tree");
    for (uint64_t r = from / PER_REC; r * PER_REC < t->n_chunks; r++) {
        uint64_t a = r * PER_REC, b = a + PER_REC < t->n_chunks ? a + PER_REC : t->n_chunks;
        buf[0] = REC_VERSION;
        buf[1] = 0;
        buf[2] = (uint8_t)((b - a) >> 8);
        buf[3] = (uint8_t)(b - a);
        for (uint64_t i = a; i < b; i++) {
            uint8_t *e = buf + REC_HDR + (i - a) * ENTRY;
            memcpy(e, t->roots[i], HS);
            es__put_u64(e + HS, t->first[i]);
            es__put_u64(e + HS + 8, t->last[i]);
        }
        uint64_t nv;
        rec_key(key, r);
        rc = st->ops->kv_cas(st->be, key, sizeof key, version_of(t, r), buf,
                             REC_HDR + (size_t)(b - a) * ENTRY, &nv);
        if (rc == ES_ECONFLICT) { /* another writer got there: it wrote the same */
            es_error_clear();
            rc = 0;
            break;
        }
        if (rc < 0)
            break;
        set_version(t, r, nv);
    }
    free(buf);
    return rc;
}

/* ---- catching up with the log ---- */

/* Read the log after the last complete chunk, up to the position the log
 * shows as settled, into new chunks and the tail. */
static int catch_up(mtree *t)
{
    es_store *st = t->st;
    es_log_options o = ES_LOG_OPTIONS_INIT;
    es_cursor *c = NULL;
    const es_event *ev;
    uint64_t settled;
    int rc;

    if ((rc = es_store_last_position(&settled, st)) < 0)
        return rc;
    t->n_tail = 0;
    o.from_position = t->n_chunks ? t->last[t->n_chunks - 1] + 1 : 1;
    if (o.from_position <= settled) {
        if ((rc = es_log_cursor(&c, st, &o)) < 0)
            return rc;
        es_cursor_set_raw(c, 1); /* as stored: hashes cover the ciphertext */
        while ((rc = es_cursor_next(&ev, c)) == 0 && ev->position <= settled) {
            es_merkle_leaf(t->tail[t->n_tail], ev->hash, ev->position);
            t->tail_pos[t->n_tail++] = ev->position;
            if (t->n_tail == CHUNK) {
                uint8_t root[HS];
                chunk_root(root, (const uint8_t(*)[HS])t->tail);
                if ((rc = push_chunk(t, root, t->tail_pos[0], t->tail_pos[CHUNK - 1])) < 0)
                    break;
                t->n_tail = 0;
            }
        }
        es_cursor_free(c);
        if (rc < 0 && rc != ES_ITEROVER)
            return rc;
    }
    t->size = t->n_chunks * CHUNK + t->n_tail;
    t->last_position = t->n_tail     ? t->tail_pos[t->n_tail - 1]
                       : t->n_chunks ? t->last[t->n_chunks - 1]
                                     : 0;
    return 0;
}

/* The tree as the store keeps it, caught up with the log (and saved). */
static int tree_open(mtree **out, es_store *st)
{
    mtree *t;
    int rc;
    *out = NULL;
    if ((rc = tree_new(&t, st)) < 0)
        return rc;
    if ((rc = load_records(t)) < 0 || (rc = catch_up(t)) < 0 ||
        (rc = save_records(t, t->persisted)) < 0) {
        tree_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* ---- leaves read back from the log ---- */

static int load_chunk(mtree *t, uint64_t c, leafset **out)
{
    for (int i = 0; i < 2; i++)
        if (t->cache[i].used && t->cache[i].chunk == c) {
            *out = &t->cache[i];
            return 0;
        }
    leafset *ls = &t->cache[t->next_slot];
    t->next_slot ^= 1;
    ls->used = false;
    es_log_options o = ES_LOG_OPTIONS_INIT;
    es_cursor *cur;
    const es_event *ev;
    uint32_t n = 0;
    int rc;
    o.from_position = t->first[c];
    o.limit = CHUNK;
    if ((rc = es_log_cursor(&cur, t->st, &o)) < 0)
        return rc;
    es_cursor_set_raw(cur, 1); /* as stored: hashes cover the ciphertext */
    while ((rc = es_cursor_next(&ev, cur)) == 0) {
        if (ev->position > t->last[c] || (n == 0 && ev->position != t->first[c]))
            break;
        es_merkle_leaf(ls->leaf[n], ev->hash, ev->position);
        ls->pos[n++] = ev->position;
    }
    es_cursor_free(cur);
    if (rc < 0 && rc != ES_ITEROVER)
        return rc;
    uint8_t root[HS];
    if (n == CHUNK)
        chunk_root(root, (const uint8_t(*)[HS])ls->leaf);
    if (n != CHUNK || ls->pos[CHUNK - 1] != t->last[c] || sodium_memcmp(root, t->roots[c], HS))
        return es__err(ES_ECORRUPT,
                       "the events at positions %llu..%llu no longer hash to the tree's record "
                       "of them: the log was changed after the tree covered them (check it with "
                       "es_verify_since / esrc verify --since and an earlier digest)",
                       (unsigned long long)t->first[c], (unsigned long long)t->last[c]);
    ls->used = true;
    ls->chunk = c;
    *out = ls;
    return 0;
}

static int leaf_at(mtree *t, uint64_t i, uint8_t out[HS])
{
    uint64_t c = i / CHUNK;
    if (c >= t->n_chunks) {
        memcpy(out, t->tail[i - t->n_chunks * CHUNK], HS);
        return 0;
    }
    leafset *ls;
    int rc = load_chunk(t, c, &ls);
    if (rc == 0)
        memcpy(out, ls->leaf[i % CHUNK], HS);
    return rc;
}

/* The root of leaves [a, b), b <= t->size, b > a. */
static int node(mtree *t, uint64_t a, uint64_t b, uint8_t out[HS])
{
    if (b - a == 1)
        return leaf_at(t, a, out);
    if (a % CHUNK == 0 && b - a == CHUNK && a / CHUNK < t->n_chunks) {
        memcpy(out, t->roots[a / CHUNK], HS);
        return 0;
    }
    uint64_t k = split(b - a);
    uint8_t l[HS], r[HS];
    int rc;
    if ((rc = node(t, a, a + k, l)) < 0 || (rc = node(t, a + k, b, r)) < 0)
        return rc;
    hnode(out, l, r);
    return 0;
}

static int root_of(mtree *t, uint64_t n, uint8_t out[HS])
{
    if (n == 0) {
        hempty(out);
        return 0;
    }
    return node(t, 0, n, out);
}

/* RFC 9162 PATH(m, D[a:b]), leaf side first. */
static int path(mtree *t, uint64_t m, uint64_t a, uint64_t b, uint8_t (*out)[HS], uint32_t *n)
{
    if (b - a <= 1)
        return 0;
    uint64_t k = split(b - a);
    int rc;
    if (m < a + k) {
        if ((rc = path(t, m, a, a + k, out, n)) < 0)
            return rc;
        rc = node(t, a + k, b, out[*n]);
    } else {
        if ((rc = path(t, m, a + k, b, out, n)) < 0)
            return rc;
        rc = node(t, a, a + k, out[*n]);
    }
    if (rc == 0)
        (*n)++;
    return rc;
}

/* RFC 9162 SUBPROOF(m, D[a:b], flag), m counted from a. */
static int subproof(mtree *t, uint64_t m, uint64_t a, uint64_t b, bool flag, uint8_t (*out)[HS],
                    uint32_t *n)
{
    int rc;
    if (m == b - a) {
        if (flag)
            return 0;
        if ((rc = node(t, a, b, out[*n])) == 0)
            (*n)++;
        return rc;
    }
    uint64_t k = split(b - a);
    if (m <= k) {
        if ((rc = subproof(t, m, a, a + k, flag, out, n)) < 0)
            return rc;
        rc = node(t, a + k, b, out[*n]);
    } else {
        if ((rc = subproof(t, m - k, a + k, b, false, out, n)) < 0)
            return rc;
        rc = node(t, a, a + k, out[*n]);
    }
    if (rc == 0)
        (*n)++;
    return rc;
}

/* The leaf index of the event at `position`. */
static int index_of(mtree *t, uint64_t position, uint64_t *out)
{
    if (position == 0 || position > t->last_position)
        return es__err(ES_ENOTFOUND,
                       "position %llu is not in the tree, which covers the log up to position "
                       "%llu (an event the log does not show yet is covered later)",
                       (unsigned long long)position, (unsigned long long)t->last_position);
    if (t->n_tail && position >= t->tail_pos[0]) {
        for (uint32_t i = 0; i < t->n_tail; i++)
            if (t->tail_pos[i] == position) {
                *out = t->n_chunks * CHUNK + i;
                return 0;
            }
        return es__err(ES_ENOTFOUND, "no event at position %llu", (unsigned long long)position);
    }
    uint64_t lo = 0, hi = t->n_chunks; /* the first chunk whose last >= position */
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (t->last[mid] < position)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == t->n_chunks || t->first[lo] > position)
        return es__err(ES_ENOTFOUND, "no event at position %llu", (unsigned long long)position);
    leafset *ls;
    int rc = load_chunk(t, lo, &ls);
    if (rc < 0)
        return rc;
    for (uint32_t i = 0; i < CHUNK; i++)
        if (ls->pos[i] == position) {
            *out = lo * CHUNK + i;
            return 0;
        }
    return es__err(ES_ENOTFOUND, "no event at position %llu", (unsigned long long)position);
}

/* ---- the API ---- */

static int fill_digest(es_digest *out, mtree *t)
{
    memset(out, 0, sizeof *out);
    out->size = t->size;
    out->last_position = t->last_position;
    out->time_us = es__now(t->st);
    return root_of(t, t->size, out->root);
}

int es_digest_get(es_digest *out, es_store *st)
{
    mtree *t;
    int rc;
    if (!out || !st)
        return es__err(ES_EINVAL, "es_digest_get: NULL argument");
    memset(out, 0, sizeof *out);
    if ((rc = tree_open(&t, st)) < 0)
        return rc;
    rc = fill_digest(out, t);
    tree_free(t);
    return rc;
}

static int prove_in(es_inclusion_proof *out, mtree *t, uint64_t position, uint64_t tree_size)
{
    uint64_t idx = 0;
    int rc;
    if (tree_size == 0)
        tree_size = t->size;
    if (tree_size > t->size)
        return es__err(ES_EINVAL, "tree size %llu is past the tree now (%llu leaves)",
                       (unsigned long long)tree_size, (unsigned long long)t->size);
    if ((rc = index_of(t, position, &idx)) < 0)
        return rc;
    if (idx >= tree_size)
        return es__err(ES_EINVAL, "the event at position %llu is leaf %llu, past a tree of %llu",
                       (unsigned long long)position, (unsigned long long)idx,
                       (unsigned long long)tree_size);
    out->index = idx;
    out->size = tree_size;
    out->position = position;
    return path(t, idx, 0, tree_size, out->path, &out->n_path);
}

int es_prove_inclusion(es_inclusion_proof *out, es_store *st, uint64_t position, uint64_t tree_size)
{
    mtree *t;
    es_log_options o = ES_LOG_OPTIONS_INIT;
    es_cursor *c;
    const es_event *ev;
    es_digest d;
    int rc;
    if (!out || !st)
        return es__err(ES_EINVAL, "es_prove_inclusion: NULL argument");
    memset(out, 0, sizeof *out);
    if ((rc = tree_open(&t, st)) < 0)
        return rc;
    if ((rc = prove_in(out, t, position, tree_size)) < 0)
        goto done;
    /* the event's hash, read back now */
    o.from_position = position;
    o.limit = 1;
    if ((rc = es_log_cursor(&c, st, &o)) < 0)
        goto done;
    es_cursor_set_raw(c, 1); /* as stored: hashes cover the ciphertext */
    rc = es_cursor_next(&ev, c);
    if (rc == 0 && ev->position == position)
        memcpy(out->event_hash, ev->hash, HS);
    else if (rc == 0 || rc == ES_ITEROVER)
        rc = es__err(ES_ENOTFOUND, "no event at position %llu", (unsigned long long)position);
    es_cursor_free(c);
    if (rc < 0)
        goto done;
    /* What we hand out must check: the event as read now against the tree. */
    memset(&d, 0, sizeof d);
    d.size = out->size;
    d.last_position = t->last_position;
    if ((rc = root_of(t, out->size, d.root)) < 0)
        goto done;
    if (out->index == out->size - 1)
        d.last_position = position;
    if (es_verify_inclusion(out, &d) < 0)
        rc = es__err(ES_ECORRUPT,
                     "the event at position %llu no longer matches the tree: it was changed "
                     "after the tree covered it",
                     (unsigned long long)position);
done:
    tree_free(t);
    if (rc < 0)
        memset(out, 0, sizeof *out);
    return rc;
}

int es_prove_event(es_inclusion_proof *out, es_store *st, const void *stream, size_t stream_len,
                   uint64_t seq, uint64_t tree_size)
{
    es_read_options o = ES_READ_OPTIONS_INIT;
    es_cursor *c;
    const es_event *ev;
    uint64_t position = 0;
    int rc;
    if (!out || !st)
        return es__err(ES_EINVAL, "es_prove_event: NULL argument");
    memset(out, 0, sizeof *out);
    if (seq == 0)
        return es__err(ES_EINVAL, "es_prove_event: seqs start at 1");
    o.from_seq = seq;
    o.limit = 1;
    if ((rc = es_stream_cursor(&c, st, stream, stream_len, &o)) < 0)
        return rc;
    es_cursor_set_raw(c, 1); /* as stored: hashes cover the ciphertext */
    rc = es_cursor_next(&ev, c);
    if (rc == 0 && ev->seq == seq)
        position = ev->position;
    es_cursor_free(c);
    if (rc < 0 && rc != ES_ITEROVER)
        return rc;
    if (!position)
        return es__err(ES_ENOTFOUND, "the stream has no event of seq %llu",
                       (unsigned long long)seq);
    return es_prove_inclusion(out, st, position, tree_size);
}

int es_prove_consistency(es_consistency_proof *out, es_store *st, uint64_t old_size,
                         uint64_t new_size)
{
    mtree *t;
    int rc;
    if (!out || !st)
        return es__err(ES_EINVAL, "es_prove_consistency: NULL argument");
    memset(out, 0, sizeof *out);
    if ((rc = tree_open(&t, st)) < 0)
        return rc;
    if (new_size > t->size || old_size > new_size)
        rc = es__err(ES_EINVAL,
                     "es_prove_consistency: sizes %llu..%llu are not within the tree now "
                     "(%llu leaves)",
                     (unsigned long long)old_size, (unsigned long long)new_size,
                     (unsigned long long)t->size);
    out->old_size = old_size;
    out->new_size = new_size;
    if (rc == 0 && old_size > 0 && old_size < new_size)
        rc = subproof(t, old_size, 0, new_size, true, out->path, &out->n_path);
    tree_free(t);
    if (rc < 0)
        memset(out, 0, sizeof *out);
    return rc;
}

/* ---- verifiers: no store ---- */

/* The root that an inclusion path gives for leaf m of a tree of n; every
 * hash of the path is used, and the path must have exactly the length the
 * shape of the tree asks for.  -1 when it does not. */
static int incl_root(uint64_t m, uint64_t n, const uint8_t leaf[HS], const uint8_t (*p)[HS],
                     uint32_t np, uint8_t out[HS])
{
    if (n == 1) {
        if (np != 0)
            return -1;
        memcpy(out, leaf, HS);
        return 0;
    }
    if (np == 0)
        return -1;
    uint64_t k = split(n);
    uint8_t sub[HS];
    if (m < k) {
        if (incl_root(m, k, leaf, p, np - 1, sub) < 0)
            return -1;
        hnode(out, sub, p[np - 1]);
    } else {
        if (incl_root(m - k, n - k, leaf, p, np - 1, sub) < 0)
            return -1;
        hnode(out, p[np - 1], sub);
    }
    return 0;
}

int es_verify_inclusion(const es_inclusion_proof *pr, const es_digest *d)
{
    uint8_t leaf[HS], root[HS];
    if (!pr || !d)
        return es__err(ES_EINVAL, "es_verify_inclusion: NULL argument");
    if (pr->size != d->size)
        return es__err(ES_ECORRUPT, "the proof is for a tree of %llu leaves, the digest's has %llu",
                       (unsigned long long)pr->size, (unsigned long long)d->size);
    if (pr->index >= pr->size)
        return es__err(ES_ECORRUPT, "leaf %llu is not in a tree of %llu leaves",
                       (unsigned long long)pr->index, (unsigned long long)pr->size);
    if (pr->n_path > ES_MERKLE_MAX_PATH)
        return es__err(ES_ECORRUPT, "the path has %u hashes; at most %d", pr->n_path,
                       ES_MERKLE_MAX_PATH);
    if (pr->position == 0 || pr->position > d->last_position ||
        (pr->index == d->size - 1 && pr->position != d->last_position))
        return es__err(ES_ECORRUPT, "position %llu cannot be leaf %llu of the digest",
                       (unsigned long long)pr->position, (unsigned long long)pr->index);
    es_merkle_leaf(leaf, pr->event_hash, pr->position);
    if (incl_root(pr->index, pr->size, leaf, (const uint8_t(*)[HS])pr->path, pr->n_path, root) < 0)
        return es__err(ES_ECORRUPT,
                       "the path has %u hashes; leaf %llu of %llu needs another number", pr->n_path,
                       (unsigned long long)pr->index, (unsigned long long)pr->size);
    if (sodium_memcmp(root, d->root, HS) != 0)
        return es__err(ES_ECORRUPT, "the proof does not lead to the digest's root");
    return 0;
}

/* The old and new roots that a consistency proof gives (RFC 9162 SUBPROOF's
 * shape, walked back); -1 when its length does not fit the sizes. */
static int cons_roots(uint64_t m, uint64_t n, bool flag, const uint8_t old_root[HS],
                      const uint8_t (*p)[HS], uint32_t np, uint8_t o[HS], uint8_t nw[HS])
{
    if (m == n) {
        if (flag) {
            if (np != 0)
                return -1;
            memcpy(o, old_root, HS);
        } else {
            if (np != 1)
                return -1;
            memcpy(o, p[0], HS);
        }
        memcpy(nw, o, HS);
        return 0;
    }
    if (np == 0)
        return -1;
    uint64_t k = split(n);
    uint8_t so[HS], sn[HS];
    if (m <= k) {
        if (cons_roots(m, k, flag, old_root, p, np - 1, so, sn) < 0)
            return -1;
        memcpy(o, so, HS);
        hnode(nw, sn, p[np - 1]);
    } else {
        if (cons_roots(m - k, n - k, false, old_root, p, np - 1, so, sn) < 0)
            return -1;
        hnode(o, p[np - 1], so);
        hnode(nw, p[np - 1], sn);
    }
    return 0;
}

int es_verify_consistency(const es_consistency_proof *pr, const es_digest *od, const es_digest *nd)
{
    uint8_t o[HS], nw[HS];
    if (!pr || !od || !nd)
        return es__err(ES_EINVAL, "es_verify_consistency: NULL argument");
    if (pr->old_size != od->size || pr->new_size != nd->size)
        return es__err(ES_ECORRUPT,
                       "the proof is from %llu to %llu leaves; the digests have %llu and %llu",
                       (unsigned long long)pr->old_size, (unsigned long long)pr->new_size,
                       (unsigned long long)od->size, (unsigned long long)nd->size);
    if (od->size > nd->size)
        return es__err(ES_ECORRUPT, "the new digest (%llu leaves) is smaller than the old (%llu)",
                       (unsigned long long)nd->size, (unsigned long long)od->size);
    if (pr->n_path > ES_MERKLE_MAX_PATH)
        return es__err(ES_ECORRUPT, "the proof has %u hashes; at most %d", pr->n_path,
                       ES_MERKLE_MAX_PATH);
    if (od->size == 0 || od->size == nd->size) {
        /* everything extends the empty tree; a tree extends only itself */
        if (pr->n_path != 0)
            return es__err(ES_ECORRUPT, "a proof between these sizes is empty");
        if (od->size && sodium_memcmp(od->root, nd->root, HS) != 0)
            return es__err(ES_ECORRUPT, "two digests of %llu leaves with different roots",
                           (unsigned long long)od->size);
        return 0;
    }
    if (cons_roots(od->size, nd->size, true, od->root, (const uint8_t(*)[HS])pr->path, pr->n_path,
                   o, nw) < 0)
        return es__err(ES_ECORRUPT,
                       "the proof has %u hashes; sizes %llu to %llu need another number",
                       pr->n_path, (unsigned long long)od->size, (unsigned long long)nd->size);
    if (sodium_memcmp(o, od->root, HS) != 0)
        return es__err(ES_ECORRUPT, "the proof does not lead to the old digest's root");
    if (sodium_memcmp(nw, nd->root, HS) != 0)
        return es__err(ES_ECORRUPT, "the proof does not lead to the new digest's root");
    return 0;
}

/* ---- signatures ---- */

static void sign_message(uint8_t m[SIGN_MSG], const es_digest *d)
{
    memcpy(m, SIGN_DOMAIN, SIGN_DOMAIN_LEN);
    es__put_u64(m + SIGN_DOMAIN_LEN, d->size);
    memcpy(m + SIGN_DOMAIN_LEN + 8, d->root, HS);
    es__put_u64(m + SIGN_DOMAIN_LEN + 8 + HS, d->last_position);
    es__put_u64(m + SIGN_DOMAIN_LEN + 16 + HS, (uint64_t)d->time_us);
}

int es_digest_sign(uint8_t sig[ES_SIGNATURE_SIZE], const es_digest *d,
                   const uint8_t sk[ES_SIGN_SECRET_KEY_SIZE])
{
    uint8_t m[SIGN_MSG];
    if (!sig || !d || !sk)
        return es__err(ES_EINVAL, "es_digest_sign: NULL argument");
    if (sodium_init() < 0)
        return es__err(ES_ERROR, "libsodium failed to initialise");
    sign_message(m, d);
    crypto_sign_detached(sig, NULL, m, sizeof m, sk);
    return 0;
}

int es_digest_check_signature(const es_digest *d, const uint8_t sig[ES_SIGNATURE_SIZE],
                              const uint8_t pk[ES_SIGN_PUBLIC_KEY_SIZE])
{
    uint8_t m[SIGN_MSG];
    if (!sig || !d || !pk)
        return es__err(ES_EINVAL, "es_digest_check_signature: NULL argument");
    if (sodium_init() < 0)
        return es__err(ES_ERROR, "libsodium failed to initialise");
    sign_message(m, d);
    if (crypto_sign_verify_detached(sig, m, sizeof m, pk) != 0)
        return es__err(ES_ECORRUPT, "the signature is not the key's signature of this digest");
    return 0;
}

/* ---- the operator's check ---- */

static void since_fail(es_verify_result *r, uint64_t position, const char *fmt, ...)
    ES__PRINTF(3, 4);

static void since_fail(es_verify_result *r, uint64_t position, const char *fmt, ...)
{
    va_list ap;
    if (!r->ok)
        return;
    r->ok = 0;
    r->bad_position = position;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof r->reason, fmt, ap);
    va_end(ap);
}

int es_verify_since(es_verify_result *out, es_digest *now, es_store *st, const es_digest *old)
{
    mtree *kept = NULL, *t = NULL;
    es_digest cur;
    int rc;

    if (!out || !st || !old)
        return es__err(ES_EINVAL, "es_verify_since: NULL argument");
    memset(out, 0, sizeof *out);
    out->ok = 1;
    if (now)
        memset(now, 0, sizeof *now);
    /* What the store keeps about its tree (caught up), to compare with. */
    if ((rc = tree_open(&kept, st)) < 0)
        goto done;
    /* The same tree recomputed from the log alone, in one pass. */
    if ((rc = tree_new(&t, st)) < 0 || (rc = catch_up(t)) < 0)
        goto done;
    out->events_checked = t->size;

    /* The first chunk whose record does not match the log, if any. */
    uint64_t bad_chunk = UINT64_MAX;
    for (uint64_t c = 0; c < kept->n_chunks; c++)
        if (c >= t->n_chunks || kept->first[c] != t->first[c] || kept->last[c] != t->last[c] ||
            sodium_memcmp(kept->roots[c], t->roots[c], HS) != 0) {
            bad_chunk = c;
            break;
        }

    if (t->size < old->size) {
        since_fail(out, t->last_position,
                   "the log holds %llu events, fewer than the digest's %llu: events were removed",
                   (unsigned long long)t->size, (unsigned long long)old->size);
    } else {
        uint8_t r[HS];
        if ((rc = root_of(t, old->size, r)) < 0)
            goto done;
        if (sodium_memcmp(r, old->root, HS) != 0) {
            /* Where: the kept records, if made before the change, say. */
            uint8_t kr[HS];
            bool kept_old = kept->size >= old->size && bad_chunk != UINT64_MAX &&
                            root_of(kept, old->size, kr) == 0 &&
                            sodium_memcmp(kr, old->root, HS) == 0;
            es_error_clear();
            if (kept_old)
                since_fail(out, kept->first[bad_chunk],
                           "the log's first %llu events do not hash to the digest's root: "
                           "events at positions %llu..%llu were changed, removed or reordered",
                           (unsigned long long)old->size,
                           (unsigned long long)kept->first[bad_chunk],
                           (unsigned long long)kept->last[bad_chunk]);
            else
                since_fail(out, 0,
                           "the log's first %llu events do not hash to the digest's root: "
                           "history up to position %llu was changed, removed or reordered",
                           (unsigned long long)old->size, (unsigned long long)old->last_position);
        }
    }
    if ((rc = fill_digest(&cur, t)) < 0)
        goto done;
    if (out->ok) {
        es_consistency_proof p;
        memset(&p, 0, sizeof p);
        p.old_size = old->size;
        p.new_size = t->size;
        if (old->size > 0 && old->size < t->size &&
            (rc = subproof(t, old->size, 0, t->size, true, p.path, &p.n_path)) < 0)
            goto done;
        if (es_verify_consistency(&p, old, &cur) < 0) {
            since_fail(out, 0, "the consistency proof does not verify: %s", es_error_last());
            es_error_clear();
        }
    }
    if (bad_chunk != UINT64_MAX)
        since_fail(out, kept->first[bad_chunk],
                   "the tree's record of positions %llu..%llu does not match the log: events "
                   "there changed after the tree covered them",
                   (unsigned long long)kept->first[bad_chunk],
                   (unsigned long long)kept->last[bad_chunk]);
    if (now)
        *now = cur;
done:
    tree_free(kept);
    tree_free(t);
    return rc;
}
