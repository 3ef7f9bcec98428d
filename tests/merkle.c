/*
 * merkle.c — verifiable history: digests, inclusion and consistency proofs
 * over the global log, on every backend; proofs with any element tampered
 * fail; es_verify_since catches a changed log.  On lmdb, the deliberate
 * rewrite of issue 12 (an event changed, its stream's chain recomputed with
 * es_event_hash and its head row updated: es_verify says ok) and its
 * variations (delete, reorder, truncate) are done on the files and caught.
 *
 * `test_merkle rewrite DIR STREAM SEQ` does that rewrite on an lmdb store
 * directory, for the black-box test of `esrc verify --since`.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "internal.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>

#ifdef ES_HAVE_LMDB
#include "backend/lmdb_record.h"
#include <lmdb.h>
#endif

enum { N_EVENTS = 520, HS = ES_HASH_SIZE };

static const char *stream_of(int i)
{
    static const char *keys[] = {"user/1", "user/2", "group/a", "user/3", "k"};
    return keys[(i * 7 + i / 3) % 5];
}

static void open_store(tu_store *ts)
{
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    if (strcmp(tu_backend, "lmdb") == 0)
        o.flags |= ES_OPEN_NOSYNC;
    tu_open_opts(ts, &o);
}

static void append_one(es_store *st, int i, uint64_t *position)
{
    char data[48];
    snprintf(data, sizeof data, "{\"n\":%d}", i);
    es_event_new ev = {.type = "T", .data = data, .data_len = strlen(data)};
    es_append_result r;
    TU_EXPECT_OK(es_append(&r, st, stream_of(i), strlen(stream_of(i)), ES_EXPECT_ANY, &ev, 1));
    if (position)
        *position = r.first_position;
}

static void digest_now(es_store *st, es_digest *d)
{
    TU_EXPECT_OK(es_log_catch_up(st, 60000));
    TU_EXPECT_OK(es_digest_get(d, st));
}

/* ---- an independent tree: the documented format, hashed here directly ---- */

static void ref_leaf(uint8_t out[HS], const uint8_t hash[HS], uint64_t pos)
{
    uint8_t b[1 + HS + 8];
    b[0] = 0;
    memcpy(b + 1, hash, HS);
    for (int i = 0; i < 8; i++)
        b[1 + HS + i] = (uint8_t)(pos >> (56 - 8 * i));
    crypto_generichash(out, HS, b, sizeof b, NULL, 0);
}

static void ref_root(uint8_t out[HS], uint8_t (*leaves)[HS], uint64_t n)
{
    if (n == 0) {
        crypto_generichash(out, HS, NULL, 0, NULL, 0);
        return;
    }
    if (n == 1) {
        memcpy(out, leaves[0], HS);
        return;
    }
    uint64_t k = 1;
    while (k * 2 < n)
        k *= 2;
    uint8_t b[1 + 2 * HS];
    b[0] = 1;
    ref_root(b + 1, leaves, k);
    ref_root(b + 1 + HS, leaves + k, n - k);
    crypto_generichash(out, HS, b, sizeof b, NULL, 0);
}

/* Leaves of the whole log, by reading it. */
static uint64_t ref_leaves(es_store *st, uint8_t (*leaves)[HS], uint64_t *positions, uint64_t cap)
{
    es_cursor *c;
    const es_event *ev;
    uint64_t n = 0;
    int rc;
    TU_EXPECT_OK(es_log_cursor(&c, st, NULL));
    while ((rc = es_cursor_next(&ev, c)) == 0 && n < cap) {
        ref_leaf(leaves[n], ev->hash, ev->position);
        positions[n++] = ev->position;
    }
    es_cursor_free(c);
    return n;
}

/* ---- a log with digests of every size ---- */

typedef struct fixture {
    tu_store ts;
    es_digest d[N_EVENTS + 1]; /* d[m]: the digest when the log had m events */
    uint64_t pos[N_EVENTS];
} fixture;

static bool wanted_size(int m)
{
    return m <= 300 || m == 383 || m == 384 || m == 385 || m == 511 || m == 512 || m == 513 ||
           m == N_EVENTS;
}

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof *f);
    open_store(&f->ts);
    digest_now(f->ts.st, &f->d[0]);
    for (int i = 0; i < N_EVENTS; i++) {
        append_one(f->ts.st, i, &f->pos[i]);
        if (wanted_size(i + 1))
            digest_now(f->ts.st, &f->d[i + 1]);
    }
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    tu_close(&f->ts);
    free(f);
    return 0;
}

static void test_digests_match_an_independent_tree(void **state)
{
    fixture *f = *state;
    uint8_t(*leaves)[HS] = calloc(N_EVENTS, HS);
    uint64_t positions[N_EVENTS];
    assert_int_equal(ref_leaves(f->ts.st, leaves, positions, N_EVENTS), N_EVENTS);
    for (int m = 0; m <= N_EVENTS; m++) {
        if (!wanted_size(m))
            continue;
        uint8_t r[HS];
        ref_root(r, leaves, (uint64_t)m);
        assert_int_equal(f->d[m].size, m);
        if (memcmp(r, f->d[m].root, HS) != 0)
            fail_msg("the digest of %d events is not the documented tree's root", m);
        assert_int_equal(f->d[m].last_position, m ? positions[m - 1] : 0);
    }
    free(leaves);
}

static void check_inclusion(fixture *f, int m, int i)
{
    es_inclusion_proof p;
    TU_EXPECT_OK(es_prove_inclusion(&p, f->ts.st, f->pos[i], (uint64_t)m));
    assert_int_equal(p.index, i);
    assert_int_equal(p.size, m);
    if (es_verify_inclusion(&p, &f->d[m]) != 0)
        fail_msg("proof of leaf %d in %d does not verify: %s", i, m, es_error_last());
}

static void test_inclusion_proofs_verify_for_many_sizes(void **state)
{
    fixture *f = *state;
    uint64_t rnd = tu_seed;
    for (int m = 1; m <= N_EVENTS; m++) {
        if (!wanted_size(m))
            continue;
        if (m <= 40) {
            for (int i = 0; i < m; i++)
                check_inclusion(f, m, i);
        } else {
            int picks[] = {0, m / 2, m - 1, (int)tu_rand_below(&rnd, (uint64_t)m), 255 % m};
            for (size_t k = 0; k < sizeof picks / sizeof *picks; k++)
                check_inclusion(f, m, picks[k]);
        }
    }
    /* by stream and seq: the first event's stream, seq 1 */
    es_inclusion_proof p;
    TU_EXPECT_OK(es_prove_event(&p, f->ts.st, stream_of(0), strlen(stream_of(0)), 1, 0));
    assert_int_equal(p.index, 0);
    assert_int_equal(p.position, f->pos[0]);
    TU_EXPECT_OK(es_verify_inclusion(&p, &f->d[N_EVENTS]));
    /* errors */
    assert_int_equal(es_prove_event(&p, f->ts.st, "nope", 4, 1, 0), ES_ENOTFOUND);
    assert_int_equal(es_prove_inclusion(&p, f->ts.st, f->pos[N_EVENTS - 1] + 1000000, 0),
                     ES_ENOTFOUND);
    assert_int_equal(es_prove_inclusion(&p, f->ts.st, f->pos[10], 5), ES_EINVAL);
    assert_int_equal(es_prove_inclusion(&p, f->ts.st, f->pos[1], N_EVENTS + 1), ES_EINVAL);
    assert_int_equal(es_prove_inclusion(NULL, f->ts.st, f->pos[1], 0), ES_EINVAL);
}

static void test_tampered_inclusion_proofs_fail(void **state)
{
    fixture *f = *state;
    int cases[][2] = {{300, 137}, {257, 256}, {256, 0}, {N_EVENTS, 300}, {2, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int m = cases[c][0], i = cases[c][1];
        es_inclusion_proof p, q;
        TU_EXPECT_OK(es_prove_inclusion(&p, f->ts.st, f->pos[i], (uint64_t)m));
        TU_EXPECT_OK(es_verify_inclusion(&p, &f->d[m]));
        assert_true(p.n_path >= 1);
        for (uint32_t k = 0; k < p.n_path; k++) { /* every element, the middle ones too */
            for (int byte = 0; byte < HS; byte += 31) {
                q = p;
                q.path[k][byte] ^= 0x01;
                if (es_verify_inclusion(&q, &f->d[m]) != ES_ECORRUPT)
                    fail_msg("leaf %d of %d: path element %u flipped at byte %d verified", i, m, k,
                             byte);
            }
        }
        q = p;
        q.event_hash[7] ^= 0x80;
        assert_int_equal(es_verify_inclusion(&q, &f->d[m]), ES_ECORRUPT);
        q = p;
        q.position++;
        assert_int_equal(es_verify_inclusion(&q, &f->d[m]), ES_ECORRUPT);
        q = p;
        q.index = p.index ? p.index - 1 : p.index + 1;
        assert_int_equal(es_verify_inclusion(&q, &f->d[m]), ES_ECORRUPT);
        q = p;
        q.size++;
        assert_int_equal(es_verify_inclusion(&q, &f->d[m]), ES_ECORRUPT);
        q = p; /* a digest of another size with the proof's size changed to match */
        q.size = m - 1 >= 1 && (uint64_t)i < (uint64_t)m - 1 ? (uint64_t)m - 1 : (uint64_t)m;
        if (q.size != (uint64_t)m)
            assert_int_equal(es_verify_inclusion(&q, &f->d[m - 1]), ES_ECORRUPT);
        q = p; /* an element dropped, or one more */
        q.n_path--;
        assert_int_equal(es_verify_inclusion(&q, &f->d[m]), ES_ECORRUPT);
        q = p;
        memset(q.path[q.n_path], 0, HS);
        q.n_path++;
        assert_int_equal(es_verify_inclusion(&q, &f->d[m]), ES_ECORRUPT);
        q = p;
        q.n_path = ES_MERKLE_MAX_PATH + 1;
        assert_int_equal(es_verify_inclusion(&q, &f->d[m]), ES_ECORRUPT);
        es_digest other = f->d[m];
        other.root[0] ^= 1;
        assert_int_equal(es_verify_inclusion(&p, &other), ES_ECORRUPT);
    }
    assert_int_equal(es_verify_inclusion(NULL, &f->d[1]), ES_EINVAL);
}

static void check_consistency(fixture *f, int a, int b)
{
    es_consistency_proof p;
    TU_EXPECT_OK(es_prove_consistency(&p, f->ts.st, (uint64_t)a, (uint64_t)b));
    if (es_verify_consistency(&p, &f->d[a], &f->d[b]) != 0)
        fail_msg("consistency %d -> %d does not verify: %s", a, b, es_error_last());
}

static void test_consistency_proofs_verify_and_tampered_ones_fail(void **state)
{
    fixture *f = *state;
    uint64_t rnd = tu_seed ^ 0x9e3779b97f4a7c15ULL;
    int sizes[] = {0,   1,   2,   3,   4,   5,   7,   8,   9,   15,      16,
                   17,  31,  32,  33,  63,  64,  65,  127, 128, 129,     255,
                   256, 257, 300, 383, 384, 385, 511, 512, 513, N_EVENTS};
    size_t ns = sizeof sizes / sizeof *sizes;
    for (size_t x = 0; x < ns; x++)
        for (size_t y = x; y < ns; y++)
            check_consistency(f, sizes[x], sizes[y]);
    printf("random consistency pairs from seed %llu\n", (unsigned long long)tu_seed);
    for (int k = 0; k < 300; k++) {
        int a = (int)tu_rand_below(&rnd, 301), b = (int)tu_rand_below(&rnd, 301);
        if (a > b) {
            int t = a;
            a = b;
            b = t;
        }
        check_consistency(f, a, b);
    }
    /* tampering */
    int cases[][2] = {{100, 300}, {256, N_EVENTS}, {3, 7}, {257, 384}, {1, 2}};
    for (size_t c = 0; c < sizeof cases / sizeof *cases; c++) {
        int a = cases[c][0], b = cases[c][1];
        es_consistency_proof p, q;
        TU_EXPECT_OK(es_prove_consistency(&p, f->ts.st, (uint64_t)a, (uint64_t)b));
        assert_true(p.n_path >= 1);
        for (uint32_t k = 0; k < p.n_path; k++) {
            q = p;
            q.path[k][k % HS] ^= 0x40;
            if (es_verify_consistency(&q, &f->d[a], &f->d[b]) != ES_ECORRUPT)
                fail_msg("consistency %d -> %d: element %u flipped verified", a, b, k);
        }
        q = p;
        q.n_path--;
        assert_int_equal(es_verify_consistency(&q, &f->d[a], &f->d[b]), ES_ECORRUPT);
        q = p;
        memset(q.path[q.n_path], 0, HS);
        q.n_path++;
        assert_int_equal(es_verify_consistency(&q, &f->d[a], &f->d[b]), ES_ECORRUPT);
        q = p; /* wrong sizes, matching digests */
        q.old_size = (uint64_t)a + 1;
        if (a + 1 <= b)
            assert_int_equal(es_verify_consistency(&q, &f->d[a + 1], &f->d[b]), ES_ECORRUPT);
        q = p;
        q.new_size = (uint64_t)b - 1;
        if (b - 1 > a)
            assert_int_equal(es_verify_consistency(&q, &f->d[a], &f->d[b - 1]), ES_ECORRUPT);
        es_digest od = f->d[a], nd = f->d[b];
        od.root[5] ^= 1;
        assert_int_equal(es_verify_consistency(&p, &od, &f->d[b]), ES_ECORRUPT);
        nd.root[5] ^= 1;
        assert_int_equal(es_verify_consistency(&p, &f->d[a], &nd), ES_ECORRUPT);
    }
    /* two digests of one size must be equal */
    es_consistency_proof e;
    TU_EXPECT_OK(es_prove_consistency(&e, f->ts.st, 10, 10));
    es_digest other = f->d[10];
    other.root[0] ^= 1;
    assert_int_equal(es_verify_consistency(&e, &f->d[10], &other), ES_ECORRUPT);
    assert_int_equal(es_prove_consistency(&e, f->ts.st, 11, 10), ES_EINVAL);
    assert_int_equal(es_prove_consistency(&e, f->ts.st, 1, N_EVENTS + 1), ES_EINVAL);
}

static void test_verify_since_accepts_every_earlier_digest(void **state)
{
    fixture *f = *state;
    int sizes[] = {0, 1, 100, 255, 256, 257, 300, 512, N_EVENTS};
    for (size_t k = 0; k < sizeof sizes / sizeof *sizes; k++) {
        es_verify_result r;
        es_digest now;
        TU_EXPECT_OK(es_verify_since(&r, &now, f->ts.st, &f->d[sizes[k]]));
        if (!r.ok)
            fail_msg("verify since %d: %s", sizes[k], r.reason);
        assert_int_equal(now.size, N_EVENTS);
        assert_memory_equal(now.root, f->d[N_EVENTS].root, HS);
    }
    es_digest bad = f->d[300];
    bad.root[31] ^= 1;
    es_verify_result r;
    TU_EXPECT_OK(es_verify_since(&r, NULL, f->ts.st, &bad));
    assert_int_equal(r.ok, 0);
    bad = f->d[N_EVENTS];
    bad.size++;
    TU_EXPECT_OK(es_verify_since(&r, NULL, f->ts.st, &bad));
    assert_int_equal(r.ok, 0);
    assert_non_null(strstr(r.reason, "fewer than the digest"));
}

static void test_signatures(void **state)
{
    fixture *f = *state;
    uint8_t pk[ES_SIGN_PUBLIC_KEY_SIZE], sk[ES_SIGN_SECRET_KEY_SIZE], sig[ES_SIGNATURE_SIZE];
    crypto_sign_keypair(pk, sk);
    es_digest d = f->d[300];
    TU_EXPECT_OK(es_digest_sign(sig, &d, sk));
    TU_EXPECT_OK(es_digest_check_signature(&d, sig, pk));
    es_digest e = d;
    e.time_us++;
    assert_int_equal(es_digest_check_signature(&e, sig, pk), ES_ECORRUPT);
    e = d;
    e.size--;
    assert_int_equal(es_digest_check_signature(&e, sig, pk), ES_ECORRUPT);
    e = d;
    e.root[9] ^= 4;
    assert_int_equal(es_digest_check_signature(&e, sig, pk), ES_ECORRUPT);
    sig[0] ^= 1;
    assert_int_equal(es_digest_check_signature(&d, sig, pk), ES_ECORRUPT);
}

/* ---- on a store of its own ---- */

/* The tree is kept in the store's record table in chunks of 256 leaves;
 * a second handle uses what the first kept. */
static int count_rec(const uint8_t *k, size_t kl, const uint8_t *v, size_t vl, uint64_t ver,
                     void *payload)
{
    (void)k, (void)kl, (void)v, (void)vl, (void)ver;
    (*(int *)payload)++;
    return 0;
}

typedef struct racer {
    es_store *st;
    _Atomic int *stop;
    es_digest got[64];
    int n;
    int rc;
} racer;

static void *race_digests(void *arg)
{
    racer *r = arg;
    while (!atomic_load(r->stop) && r->n < 64) {
        if ((r->rc = es_digest_get(&r->got[r->n], r->st)) < 0)
            return NULL;
        r->n++;
    }
    return NULL;
}

static void test_builders_racing_a_writer_agree(void **state)
{
    (void)state;
    tu_store ts;
    open_store(&ts);
    _Atomic int stop = 0;
    racer rs[2] = {{ts.st, &stop, {{0}}, 0, 0}, {ts.st, &stop, {{0}}, 0, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, race_digests, &rs[i]), 0);
    for (int i = 0; i < 1100; i++)
        append_one(ts.st, i, NULL);
    atomic_store(&stop, 1);
    for (int i = 0; i < 2; i++) {
        pthread_join(th[i], NULL);
        TU_EXPECT_OK(rs[i].rc);
    }
    es_digest last;
    digest_now(ts.st, &last);
    assert_int_equal(last.size, 1100);
    int recs = 0;
    if (ts.st->ops->kv_list)
        TU_EXPECT_OK(
            ts.st->ops->kv_list(ts.st->be, (const uint8_t *)"mrk/c/", 6, count_rec, &recs));
    assert_int_equal(recs, 1); /* 4 chunks, in one record */
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < rs[i].n; k++) {
            es_consistency_proof p;
            TU_EXPECT_OK(es_prove_consistency(&p, ts.st, rs[i].got[k].size, last.size));
            if (es_verify_consistency(&p, &rs[i].got[k], &last) != 0)
                fail_msg("a digest of %llu taken while appending is not extended: %s",
                         (unsigned long long)rs[i].got[k].size, es_error_last());
        }
    if (strcmp(tu_backend, "mem") != 0) {
        tu_reopen(&ts);
        es_digest again;
        digest_now(ts.st, &again);
        assert_int_equal(again.size, last.size);
        assert_memory_equal(again.root, last.root, HS);
    }
    tu_close(&ts);
}

/* A flipped stored chain hash (the backend's tamper hook) of a covered
 * event: proofs of it are refused, and verify_since with an earlier digest
 * fails; es_verify says so too. */
static void test_a_changed_event_is_caught(void **state)
{
    (void)state;
    tu_store ts;
    open_store(&ts);
    if (!ts.st->ops->tamper) {
        tu_close(&ts);
        skip();
    }
    uint64_t pos[600];
    for (int i = 0; i < 600; i++)
        append_one(ts.st, i, &pos[i]);
    es_digest d;
    digest_now(ts.st, &d);
    TU_EXPECT_OK(ts.st->ops->tamper(ts.st->be, pos[300], ES__F_HASH, 3));
    es_inclusion_proof p;
    assert_int_equal(es_prove_inclusion(&p, ts.st, pos[300], 0), ES_ECORRUPT);
    assert_int_equal(es_prove_inclusion(&p, ts.st, pos[301], 0), ES_ECORRUPT); /* its chunk */
    TU_EXPECT_OK(es_prove_inclusion(&p, ts.st, pos[10], 0));                   /* another one */
    es_verify_result r;
    TU_EXPECT_OK(es_verify_since(&r, NULL, ts.st, &d));
    assert_int_equal(r.ok, 0);
    printf("caught: %s\n", r.reason);
    assert_true(r.bad_position <= pos[300]);
    tu_close(&ts);
}

#ifdef ES_HAVE_LMDB
/* ---- the deliberate rewrite, on the files of an lmdb store ---- */

typedef struct raw {
    MDB_env *env;
    MDB_txn *txn;
    MDB_dbi log, streams, ids;
} raw;

static int raw_open(raw *r, const char *dir)
{
    if (mdb_env_create(&r->env) || mdb_env_set_maxdbs(r->env, 16) ||
        mdb_env_open(r->env, dir, 0, 0644) || mdb_txn_begin(r->env, NULL, 0, &r->txn) ||
        mdb_dbi_open(r->txn, "log", 0, &r->log) ||
        mdb_dbi_open(r->txn, "streams", 0, &r->streams) || mdb_dbi_open(r->txn, "ids", 0, &r->ids))
        return -1;
    return 0;
}

static int raw_close(raw *r)
{
    int rc = mdb_txn_commit(r->txn);
    mdb_env_close(r->env);
    return rc ? -1 : 0;
}

/* Set the stream row's head hash (bytes 8..40 of its row). */
static int set_row_hash(raw *r, const uint8_t *stream, size_t len, const uint8_t hash[HS])
{
    MDB_val k = {len, (void *)stream}, v;
    if (mdb_get(r->txn, r->streams, &k, &v))
        return -1;
    uint8_t row[44 + 8 * 64];
    if (v.mv_size > sizeof row)
        return -1;
    memcpy(row, v.mv_data, v.mv_size);
    memcpy(row + 8, hash, HS);
    v.mv_data = row;
    return mdb_put(r->txn, r->streams, &k, &v, 0) ? -1 : 0;
}

/* Change one byte of the data of STREAM's event SEQ, recompute the chain
 * from there with es_event_hash, and update the head row: what an attacker
 * with write access does.  es_verify then says ok. */
static int rewrite_event(const char *dir, const char *stream, uint64_t seq)
{
    raw r;
    MDB_cursor *c;
    MDB_val k, v;
    uint8_t prev[HS];
    bool have_prev = false, changed = false;
    size_t sl = strlen(stream);
    if (raw_open(&r, dir) || mdb_cursor_open(r.txn, r.log, &c))
        return -1;
    int op = MDB_FIRST;
    while (mdb_cursor_get(c, &k, &v, op) == 0) {
        op = MDB_NEXT;
        uint64_t position = es__get_u64(k.mv_data);
        es_event ev;
        uint8_t *rec = malloc(v.mv_size);
        memcpy(rec, v.mv_data, v.mv_size);
        if (es__rec_decode(&ev, rec, v.mv_size, position) < 0) {
            free(rec);
            return -1;
        }
        if (ev.stream_len != sl || memcmp(ev.stream, stream, sl) || ev.seq < seq) {
            if (ev.stream_len == sl && !memcmp(ev.stream, stream, sl)) {
                memcpy(prev, ev.hash, HS);
                have_prev = true;
            }
            free(rec);
            continue;
        }
        if (ev.seq == seq) {
            if (!ev.data_len) {
                free(rec);
                return -1;
            }
            ((uint8_t *)ev.data)[ev.data_len - 2] ^= 0x01; /* {"n":5} -> {"n":4} */
            changed = true;
        }
        uint8_t h[HS];
        if (es_event_hash(h, have_prev ? prev : NULL, &ev) < 0)
            return -1;
        memcpy(rec + ES__REC_AT_HASH, h, HS);
        memcpy(prev, h, HS);
        have_prev = true;
        MDB_val nv = {v.mv_size, rec};
        int rc = mdb_cursor_put(c, &k, &nv, MDB_CURRENT);
        free(rec);
        if (rc)
            return -1;
    }
    mdb_cursor_close(c);
    if (!changed || set_row_hash(&r, (const uint8_t *)stream, sl, prev))
        return -1;
    return raw_close(&r);
}

/* Remove the event at `position`, the last of its stream: the log record,
 * its id, and the stream row (head, hash, tail) made to match. */
static int remove_last_of_stream(raw *r, uint64_t position)
{
    uint8_t pk[8], rec[1024];
    es__put_u64(pk, position);
    MDB_val k = {8, pk}, v;
    es_event ev;
    if (mdb_get(r->txn, r->log, &k, &v) || v.mv_size > sizeof rec)
        return -1;
    memcpy(rec, v.mv_data, v.mv_size);
    if (es__rec_decode(&ev, rec, v.mv_size, position) < 0)
        return -1;
    MDB_val sk = {ev.stream_len, (void *)ev.stream}, sv;
    if (mdb_get(r->txn, r->streams, &sk, &sv))
        return -1;
    uint8_t row[44 + 8 * 64];
    memcpy(row, sv.mv_data, sv.mv_size);
    uint64_t head = es__get_u64(row);
    uint32_t n_tail = es__get_u32(row + 40);
    if (head != ev.seq || n_tail != head || es__get_u64(row + 44 + 8 * (n_tail - 1)) != position)
        return -1; /* keep to short streams: every position in the tail */
    MDB_val idk = {ES_ID_SIZE, ev.id};
    if (mdb_del(r->txn, r->ids, &idk, NULL) || mdb_del(r->txn, r->log, &k, NULL))
        return -1;
    if (head == 1)
        return mdb_del(r->txn, r->streams, &sk, NULL) ? -1 : 0;
    /* the previous event's hash */
    uint64_t pp = es__get_u64(row + 44 + 8 * (n_tail - 2));
    es__put_u64(pk, pp);
    MDB_val k2 = {8, pk}, v2;
    es_event pe;
    if (mdb_get(r->txn, r->log, &k2, &v2) || es__rec_decode(&pe, v2.mv_data, v2.mv_size, pp) < 0)
        return -1;
    es__put_u64(row, head - 1);
    memcpy(row + 8, pe.hash, HS);
    es__put_u32(row + 40, n_tail - 1);
    sv = (MDB_val){44 + 8 * (size_t)(n_tail - 1), row};
    return mdb_put(r->txn, r->streams, &sk, &sv, 0) ? -1 : 0;
}

/* Swap the events at positions a and b (of two streams, nothing of either
 * stream between them): records, ids and the tails of both rows. */
static int swap_events(raw *r, uint64_t a, uint64_t b)
{
    uint8_t ka[8], kb[8], ra[1024], rb[1024];
    es__put_u64(ka, a);
    es__put_u64(kb, b);
    MDB_val k1 = {8, ka}, k2 = {8, kb}, v1, v2;
    if (mdb_get(r->txn, r->log, &k1, &v1) || v1.mv_size > sizeof ra)
        return -1;
    size_t na = v1.mv_size;
    memcpy(ra, v1.mv_data, na);
    if (mdb_get(r->txn, r->log, &k2, &v2) || v2.mv_size > sizeof rb)
        return -1;
    size_t nb = v2.mv_size;
    memcpy(rb, v2.mv_data, nb);
    es_event ea, eb;
    if (es__rec_decode(&ea, ra, na, a) < 0 || es__rec_decode(&eb, rb, nb, b) < 0)
        return -1;
    v1 = (MDB_val){nb, rb};
    v2 = (MDB_val){na, ra};
    if (mdb_put(r->txn, r->log, &k1, &v1, 0) || mdb_put(r->txn, r->log, &k2, &v2, 0))
        return -1;
    const es_event *evs[2] = {&ea, &eb};
    uint64_t from[2] = {a, b}, to[2] = {b, a};
    for (int i = 0; i < 2; i++) {
        MDB_val sk = {evs[i]->stream_len, (void *)evs[i]->stream}, sv;
        uint8_t row[44 + 8 * 64];
        if (mdb_get(r->txn, r->streams, &sk, &sv))
            return -1;
        memcpy(row, sv.mv_data, sv.mv_size);
        uint32_t n_tail = es__get_u32(row + 40);
        bool found = false;
        for (uint32_t t = 0; t < n_tail; t++)
            if (es__get_u64(row + 44 + 8 * t) == from[i]) {
                es__put_u64(row + 44 + 8 * t, to[i]);
                found = true;
            }
        sv.mv_data = row;
        if (!found || mdb_put(r->txn, r->streams, &sk, &sv, 0))
            return -1;
        uint8_t pv[8];
        es__put_u64(pv, to[i]);
        MDB_val idk = {ES_ID_SIZE, (void *)evs[i]->id}, idv = {8, pv};
        if (mdb_put(r->txn, r->ids, &idk, &idv, 0))
            return -1;
    }
    return 0;
}

static int last_position_of(raw *r, uint64_t *out)
{
    MDB_cursor *c;
    MDB_val k, v;
    if (mdb_cursor_open(r->txn, r->log, &c) || mdb_cursor_get(c, &k, &v, MDB_LAST))
        return -1;
    *out = es__get_u64(k.mv_data);
    mdb_cursor_close(c);
    return 0;
}

enum { DAMAGE_REWRITE, DAMAGE_DELETE, DAMAGE_REORDER, DAMAGE_TRUNCATE, DAMAGE_COUNT };
static const char *damage_names[] = {"rewrite", "delete", "reorder", "truncate"};

static void test_deliberate_damage_is_caught_by_verify_since(void **state)
{
    (void)state;
    if (strcmp(tu_backend, "lmdb") != 0)
        skip();
    for (int kind = 0; kind < DAMAGE_COUNT; kind++) {
        tu_store ts;
        open_store(&ts);
        /* 60 streams of 5 events, interleaved: short rows, all in the tail */
        uint64_t pos[300];
        for (int i = 0; i < 300; i++) {
            char s[16], data[32];
            snprintf(s, sizeof s, "s/%d", i % 60);
            snprintf(data, sizeof data, "{\"n\":%d}", 10 + i);
            es_event_new ev = {.type = "T", .data = data, .data_len = strlen(data)};
            es_append_result ar;
            TU_EXPECT_OK(es_append(&ar, ts.st, s, strlen(s), ES_EXPECT_ANY, &ev, 1));
            pos[i] = ar.first_position;
        }
        es_digest d;
        digest_now(ts.st, &d);
        es_store_close(ts.st);
        ts.st = NULL;
        int rc = 0;
        if (kind == DAMAGE_REWRITE) {
            rc = rewrite_event(ts.dir, "s/7", 2);
        } else {
            raw r;
            if (raw_open(&r, ts.dir))
                fail_msg("raw open");
            if (kind == DAMAGE_DELETE) {
                rc = remove_last_of_stream(&r, pos[280]); /* s/40's 5th event */
            } else if (kind == DAMAGE_REORDER) {
                rc = swap_events(&r, pos[100], pos[101]);
            } else {
                for (int k = 0; k < 3 && rc == 0; k++) {
                    uint64_t last;
                    rc = last_position_of(&r, &last) || remove_last_of_stream(&r, last);
                }
            }
            if (raw_close(&r))
                rc = -1;
        }
        if (rc)
            fail_msg("%s: damaging the files failed", damage_names[kind]);
        es_open_options o = ES_OPEN_OPTIONS_INIT;
        o.clock = tu_clock;
        o.clock_payload = &ts;
        TU_EXPECT_OK(es_store_open(&ts.st, ts.uri, &o));
        es_verify_result vr;
        TU_EXPECT_OK(es_verify(&vr, ts.st, NULL, 0));
        printf("%s: es_verify says %s%s\n", damage_names[kind],
               vr.ok ? "ok" : "FAILED: ", vr.ok ? "" : vr.reason);
        if (kind == DAMAGE_REWRITE || kind == DAMAGE_DELETE || kind == DAMAGE_TRUNCATE)
            assert_int_equal(vr.ok, 1); /* the chains alone do not see it */
        TU_EXPECT_OK(es_verify_since(&vr, NULL, ts.st, &d));
        printf("%s: es_verify_since: %s\n", damage_names[kind], vr.reason);
        assert_int_equal(vr.ok, 0);
        tu_close(&ts);
    }
}
#endif

int main(int argc, char **argv)
{
#ifdef ES_HAVE_LMDB
    if (argc == 5 && strcmp(argv[1], "rewrite") == 0) {
        if (rewrite_event(argv[2], argv[3], strtoull(argv[4], NULL, 10)) != 0) {
            fprintf(stderr, "rewrite failed\n");
            return 1;
        }
        return 0;
    }
#endif
    int rc = tu_init(argc, argv, "merkle");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_digests_match_an_independent_tree),
        cmocka_unit_test(test_inclusion_proofs_verify_for_many_sizes),
        cmocka_unit_test(test_tampered_inclusion_proofs_fail),
        cmocka_unit_test(test_consistency_proofs_verify_and_tampered_ones_fail),
        cmocka_unit_test(test_verify_since_accepts_every_earlier_digest),
        cmocka_unit_test(test_signatures),
    };
    const struct CMUnitTest own[] = {
        cmocka_unit_test(test_builders_racing_a_writer_agree),
        cmocka_unit_test(test_a_changed_event_is_caught),
#ifdef ES_HAVE_LMDB
        cmocka_unit_test(test_deliberate_damage_is_caught_by_verify_since),
#endif
    };
    char name[64];
    snprintf(name, sizeof name, "merkle/%s", tu_backend);
    rc = cmocka_run_group_tests_name(name, tests, setup, teardown);
    snprintf(name, sizeof name, "merkle-own/%s", tu_backend);
    return rc | cmocka_run_group_tests_name(name, own, NULL, NULL);
}
