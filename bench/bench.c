/*
 * bench.c — es_bench's workloads on the embedded systems: eventsrc (lmdb
 * and mem stores) and what a user would otherwise hand-roll — raw LMDB
 * key/value appends (key: stream id + big-endian seq) and a SQLite events
 * table (WAL, synchronous=FULL, primary key (stream, seq)) — on the same
 * data, so that the figures compare as ratios within one run.
 *
 * Data written by W3/W4 is kept in --dir for W4–W5.  eventsrc uses only the
 * public API (and the users example for W7).  The driver is main.c.
 */
#define _GNU_SOURCE
#include "bench.h"

#include "users.h"

#include <errno.h>
#include <inttypes.h>
#include <lmdb.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- helpers ---- */

double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/statm", "r");
    long pages = 0, rss = 0;
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

/* Anonymous resident memory (heap, stacks): what the process allocated, as
 * opposed to file pages it maps (LMDB's map counts in RSS when touched). */
static long anon_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "RssAnon: %ld", &kb) == 1)
            break;
    fclose(f);
    return kb;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

void percentiles(double *lat, size_t n, result *r)
{
    if (!n)
        return;
    qsort(lat, n, sizeof *lat, cmp_double);
    r->p50_us = lat[n / 2] * 1e6;
    r->p99_us = lat[(size_t)((double)(n - 1) * 0.99)] * 1e6;
}

void stream_id(uint8_t out[16], unsigned i)
{
    char buf[17];
    snprintf(buf, sizeof buf, "stream-%09u", i);
    memcpy(out, buf, 16);
}

void payload(uint8_t out[PAYLOAD], uint64_t n)
{
    for (int i = 0; i < PAYLOAD; i++)
        out[i] = (uint8_t)('a' + (n + (uint64_t)i) % 26);
}

static void path_of(char *out, size_t cap, const bench *b, const char *name)
{
    snprintf(out, cap, "%s/%s", b->dir, name);
}

int fail(result *r, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->note, sizeof r->note, fmt, ap);
    va_end(ap);
    r->ok = 0;
    return -1;
}

/* ---- eventsrc ---- */

int es_open_bench(es_store **st, const bench *b, const char *system, const char *name, result *r)
{
    char uri[700];
    if (strcmp(system, "eventsrc-mem") == 0) {
        snprintf(uri, sizeof uri, "mem:");
    } else if (strcmp(system, "eventsrc-pg") == 0) {
        /* one schema per data set and run, on the --pg server */
        char schema[64];
        int n = snprintf(schema, sizeof schema, "bench%u_", b->run_id);
        for (const char *c = name; *c && n < (int)sizeof schema - 1; c++)
            schema[n++] = *c == '-' ? '_' : *c;
        schema[n] = 0;
        if (!b->pg_uri)
            return fail(r, "eventsrc-pg needs --pg URI");
        snprintf(uri, sizeof uri, "%s%cschema=%s", b->pg_uri, strchr(b->pg_uri, '?') ? '&' : '?',
                 schema);
    } else {
        char p[600];
        path_of(p, sizeof p, b, name);
        snprintf(uri, sizeof uri, "lmdb:%s", p);
    }
    int rc = es_store_open(st, uri, NULL);
    if (rc)
        return fail(r, "open %s: %s", uri, es_error_last());
    return 0;
}

static int es_load_one_stream(es_store *st, const char *key, uint64_t n, result *r)
{
    es_event_new evs[BATCH];
    uint8_t data[BATCH][PAYLOAD];
    for (uint64_t done = 0; done < n; done += BATCH) {
        size_t k = n - done < BATCH ? (size_t)(n - done) : BATCH;
        for (size_t i = 0; i < k; i++) {
            payload(data[i], done + i);
            evs[i] = (es_event_new){.type = "Bench", .data = data[i], .data_len = PAYLOAD};
        }
        if (es_append(NULL, st, key, strlen(key), done, evs, k))
            return fail(r, "append: %s", es_error_last());
    }
    return 0;
}

/* A view for W6: the sum of the first payload byte, as a counter. */
static int w6_stream_key(uint8_t out[ES_MAX_KEY], size_t *len, const uint8_t *k, size_t n, void *p)
{
    (void)p;
    memcpy(out, k, n);
    *len = n;
    return 0;
}
static int w6_init(void **out, const uint8_t *k, size_t n, void *p)
{
    (void)k, (void)n, (void)p;
    *out = calloc(1, sizeof(uint64_t) * 2);
    return *out ? 0 : ES_ENOMEM;
}
static int w6_apply(void *acc, const es_event *ev, const uint8_t *k, size_t n, void *p)
{
    (void)k, (void)n, (void)p;
    uint64_t *v = acc;
    v[0]++;
    v[1] += ev->data_len ? ev->data[0] : 0;
    return ES_FOLD_CHANGED;
}
static int w6_encode(es_buf *out, const void *acc, void *p)
{
    (void)p;
    return es_buf_put(out, acc, 16);
}
static int w6_decode(void **out, const uint8_t *d, size_t n, void *p)
{
    (void)p;
    if (n != 16)
        return ES_ECORRUPT;
    if (!(*out = malloc(16)))
        return ES_ENOMEM;
    memcpy(*out, d, 16);
    return 0;
}
static void w6_free(void *v, void *p)
{
    (void)p;
    free(v);
}

typedef struct w7_arg {
    es_view *view;
    sqlite3 *db;
    MDB_env *env;
    MDB_dbi dbi;
    const char *sqlite_path;
    int id;
    uint64_t n;
    double *lat;
    uint64_t retries;
    int err;
} w7_arg;

static void *es_w7_thread(void *p)
{
    w7_arg *a = p;
    for (uint64_t i = 0; i < a->n; i++) {
        us_user u = {.id = (int64_t)(a->id * 1000000 + (int)i + 1)};
        snprintf(u.name, sizeof u.name, "User %d-%" PRIu64, a->id, i);
        /* usernames spread over many shards, all in one company stream */
        snprintf(u.username, sizeof u.username, "%c%c%cuser%d-%" PRIu64, 'a' + (int)(i % 26),
                 'a' + (int)((i / 26) % 26), 'a' + a->id, a->id, i);
        es_save_result res = ES_SAVE_RESULT_INIT;
        double t0 = now_s();
        int rc = us_save_user(&res, a->view, 1, &u, NULL);
        a->lat[i] = now_s() - t0;
        if (rc || res.status != ES_SAVED) {
            fprintf(stderr, "es_bench: W7 save %" PRIu64 " of thread %d: %s (status %d)\n", i,
                    a->id, rc ? es_error_last() : "not saved", (int)res.status);
            a->err = 1;
            es_save_result_clear(&res, a->view);
            return NULL;
        }
        a->retries += res.retries;
        es_save_result_clear(&res, a->view);
    }
    return NULL;
}

/* ---- raw LMDB ---- */

static int raw_open(MDB_env **env, MDB_dbi *dbi, const char *path, result *r)
{
    MDB_txn *txn;
    int rc;
    mkdir(path, 0755);
    if ((rc = mdb_env_create(env)) || (rc = mdb_env_set_mapsize(*env, (size_t)8 << 30)) ||
        (rc = mdb_env_open(*env, path, 0, 0644)))
        return fail(r, "lmdb: %s", mdb_strerror(rc));
    if ((rc = mdb_txn_begin(*env, NULL, 0, &txn)) || (rc = mdb_dbi_open(txn, NULL, 0, dbi)) ||
        (rc = mdb_txn_commit(txn)))
        return fail(r, "lmdb: %s", mdb_strerror(rc));
    return 0;
}

static void raw_key(uint8_t k[24], unsigned stream, uint64_t seq)
{
    stream_id(k, stream);
    for (int i = 0; i < 8; i++)
        k[16 + i] = (uint8_t)(seq >> (56 - 8 * i));
}

static int raw_put_batch(MDB_env *env, MDB_dbi dbi, const unsigned *streams, const uint64_t *seqs,
                         size_t n, uint64_t base, result *r)
{
    MDB_txn *txn;
    uint8_t k[24], d[PAYLOAD];
    int rc = mdb_txn_begin(env, NULL, 0, &txn);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        raw_key(k, streams[i], seqs[i]);
        payload(d, base + i);
        MDB_val key = {24, k}, val = {PAYLOAD, d};
        rc = mdb_put(txn, dbi, &key, &val, 0);
    }
    if (rc) {
        mdb_txn_abort(txn);
        return fail(r, "lmdb put: %s", mdb_strerror(rc));
    }
    if ((rc = mdb_txn_commit(txn)))
        return fail(r, "lmdb commit: %s", mdb_strerror(rc));
    return 0;
}

/* ---- SQLite ---- */

static int sq_open(sqlite3 **db, const char *path, result *r)
{
    char *err = NULL;
    if (sqlite3_open(path, db) != SQLITE_OK)
        return fail(r, "sqlite: %s", sqlite3_errmsg(*db));
    sqlite3_busy_timeout(*db, 60000);
    if (sqlite3_exec(*db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                     "CREATE TABLE IF NOT EXISTS events(stream BLOB NOT NULL, seq INTEGER NOT NULL,"
                     " type TEXT NOT NULL, data BLOB, PRIMARY KEY (stream, seq));"
                     "CREATE TABLE IF NOT EXISTS users(company INTEGER, username TEXT, id INTEGER,"
                     " UNIQUE(company, username));",
                     NULL, NULL, &err) != SQLITE_OK) {
        fail(r, "sqlite: %s", err);
        sqlite3_free(err);
        return -1;
    }
    return 0;
}

static int sq_insert_batch(sqlite3 *db, sqlite3_stmt *ins, const unsigned *streams,
                           const uint64_t *seqs, size_t n, uint64_t base, result *r)
{
    uint8_t k[16], d[PAYLOAD];
    bool txn = n > 1;
    if (txn && sqlite3_exec(db, "BEGIN", NULL, NULL, NULL) != SQLITE_OK)
        return fail(r, "sqlite: %s", sqlite3_errmsg(db));
    for (size_t i = 0; i < n; i++) {
        stream_id(k, streams[i]);
        payload(d, base + i);
        sqlite3_bind_blob(ins, 1, k, 16, SQLITE_TRANSIENT);
        sqlite3_bind_int64(ins, 2, (sqlite3_int64)seqs[i]);
        sqlite3_bind_text(ins, 3, "Bench", 5, SQLITE_STATIC);
        sqlite3_bind_blob(ins, 4, d, PAYLOAD, SQLITE_TRANSIENT);
        if (sqlite3_step(ins) != SQLITE_DONE) {
            fail(r, "sqlite insert: %s", sqlite3_errmsg(db));
            sqlite3_reset(ins);
            if (txn)
                sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
            return -1;
        }
        sqlite3_reset(ins);
    }
    if (txn && sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK)
        return fail(r, "sqlite: %s", sqlite3_errmsg(db));
    return 0;
}

static const char *SQ_INSERT = "INSERT INTO events(stream, seq, type, data) VALUES (?, ?, ?, ?)";

static void *sq_w7_thread(void *p)
{
    w7_arg *a = p;
    sqlite3 *db;
    sqlite3_stmt *ins;
    result r;
    if (sq_open(&db, a->sqlite_path, &r) ||
        sqlite3_prepare_v2(db, "INSERT INTO users(company, username, id) VALUES (1, ?, ?)", -1,
                           &ins, NULL) != SQLITE_OK) {
        a->err = 1;
        return NULL;
    }
    for (uint64_t i = 0; i < a->n; i++) {
        char name[64];
        snprintf(name, sizeof name, "%c%c%cuser%d-%" PRIu64, 'a' + (int)(i % 26),
                 'a' + (int)((i / 26) % 26), 'a' + a->id, a->id, i);
        sqlite3_bind_text(ins, 1, name, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(ins, 2, a->id * 1000000 + (int)i + 1);
        double t0 = now_s();
        int rc = sqlite3_step(ins);
        a->lat[i] = now_s() - t0;
        sqlite3_reset(ins);
        if (rc != SQLITE_DONE) {
            a->err = 1;
            break;
        }
    }
    sqlite3_finalize(ins);
    sqlite3_close(db);
    return NULL;
}

static void *raw_w7_thread(void *p)
{
    w7_arg *a = p;
    for (uint64_t i = 0; i < a->n; i++) {
        char name[64];
        int n = snprintf(name, sizeof name, "1:%c%c%cuser%d-%" PRIu64, 'a' + (int)(i % 26),
                         'a' + (int)((i / 26) % 26), 'a' + a->id, a->id, i);
        int64_t id = a->id * 1000000 + (int)i + 1;
        MDB_txn *txn;
        MDB_val k = {(size_t)n, name}, v = {8, &id};
        double t0 = now_s();
        int rc = mdb_txn_begin(a->env, NULL, 0, &txn);
        if (rc == 0)
            rc = mdb_put(txn, a->dbi, &k, &v, MDB_NOOVERWRITE);
        if (rc == 0)
            rc = mdb_txn_commit(txn);
        else
            mdb_txn_abort(txn);
        a->lat[i] = now_s() - t0;
        if (rc) {
            a->err = 1;
            break;
        }
    }
    return NULL;
}

/* ---- the embedded systems behind the interface of bench.h ---- */

/* eventsrc: stream n is the 16-byte stream_id(n); ONE_STREAM is "one-stream" */
static size_t es_key(uint8_t out[16], unsigned stream)
{
    if (stream == ONE_STREAM) {
        memcpy(out, "one-stream", 10);
        return 10;
    }
    stream_id(out, stream);
    return 16;
}

static int es_h_open(emb *h, const bench *b, const char *sys, const char *set, bool reading,
                     result *r)
{
    char name[32];
    if (reading && strcmp(sys, "eventsrc-mem") == 0)
        return mem_prepare(b, &h->st, r);
    snprintf(name, sizeof name, "%s-es", set);
    return es_open_bench(&h->st, b, sys, name, r);
}

static int same_thread(emb **out, emb *h, result *r)
{
    (void)r;
    *out = h;
    return 0;
}

static int es_h_spread(emb *h, const unsigned *streams, size_t n, uint64_t seq, uint64_t base,
                       result *r)
{
    es_append_op ops[BATCH];
    es_event_new evs[BATCH];
    es_append_result outs[BATCH];
    uint8_t keys[BATCH][16], data[BATCH][PAYLOAD];
    for (size_t i = 0; i < n; i++) {
        size_t kl = es_key(keys[i], streams[i]);
        payload(data[i], base + i);
        evs[i] = (es_event_new){.type = "Bench", .data = data[i], .data_len = PAYLOAD};
        ops[i] = (es_append_op){keys[i], kl, seq - 1, &evs[i], 1};
    }
    if (es_append_multi(outs, h->st, ops, n, 0))
        return fail(r, "append: %s", es_error_last());
    return 0;
}

static int es_h_run(emb *h, unsigned stream, size_t n, uint64_t first, uint64_t base, result *r)
{
    es_event_new evs[BATCH];
    uint8_t key[16], data[BATCH][PAYLOAD];
    size_t kl = es_key(key, stream);
    for (size_t i = 0; i < n; i++) {
        payload(data[i], base + i);
        evs[i] = (es_event_new){.type = "Bench", .data = data[i], .data_len = PAYLOAD};
    }
    if (es_append(NULL, h->st, key, kl, first - 1, evs, n))
        return fail(r, "append: %s", es_error_last());
    return 0;
}

static int es_h_read(emb *h, unsigned stream, uint64_t *cnt, uint64_t *sum, result *r)
{
    es_cursor *c;
    const es_event *ev;
    uint8_t key[16];
    size_t kl = es_key(key, stream);
    if (es_stream_cursor(&c, h->st, key, kl, NULL))
        return fail(r, "read: %s", es_error_last());
    while (es_cursor_next(&ev, c) == 0) {
        *sum += ev->data[0];
        ++*cnt;
    }
    es_cursor_free(c);
    return 0;
}

static int es_h_scan(emb *h, uint64_t *cnt, uint64_t *sum, void (*every)(void *), void *arg,
                     result *r)
{
    es_cursor *c;
    const es_event *ev;
    if (es_log_cursor(&c, h->st, NULL))
        return fail(r, "log: %s", es_error_last());
    while (es_cursor_next(&ev, c) == 0) {
        *sum += ev->data_len + ev->seq;
        if ((++*cnt & 65535) == 0)
            every(arg);
    }
    es_cursor_free(c);
    return 0;
}

static void es_h_close(emb *h)
{
    es_store_close(h->st);
}

static const emb_ops ES_OPS = {.open = es_h_open,
                               .thread = same_thread,
                               .append_spread = es_h_spread,
                               .append_run = es_h_run,
                               .read_stream = es_h_read,
                               .scan = es_h_scan,
                               .close = es_h_close,
                               .w4_reps = 300,
                               .writers = "writers"};

/* raw LMDB */

static int raw_h_open(emb *h, const bench *b, const char *sys, const char *set, bool reading,
                      result *r)
{
    char name[32];
    snprintf(name, sizeof name, "%s-raw", set);
    path_of(h->path, sizeof h->path, b, name);
    return raw_open(&h->env, &h->dbi, h->path, r);
}

static int raw_h_spread(emb *h, const unsigned *streams, size_t n, uint64_t seq, uint64_t base,
                        result *r)
{
    uint64_t seqs[BATCH];
    for (size_t i = 0; i < n; i++)
        seqs[i] = seq;
    return raw_put_batch(h->env, h->dbi, streams, seqs, n, base, r);
}

static int raw_h_run(emb *h, unsigned stream, size_t n, uint64_t first, uint64_t base, result *r)
{
    unsigned streams[BATCH];
    uint64_t seqs[BATCH];
    for (size_t i = 0; i < n; i++) {
        streams[i] = stream;
        seqs[i] = first + i;
    }
    return raw_put_batch(h->env, h->dbi, streams, seqs, n, base, r);
}

static int raw_h_read(emb *h, unsigned stream, uint64_t *cnt, uint64_t *sum, result *r)
{
    MDB_txn *txn;
    MDB_cursor *c;
    uint8_t from[24];
    raw_key(from, stream, 0);
    int rc = mdb_txn_begin(h->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return fail(r, "lmdb: %s", mdb_strerror(rc));
    if ((rc = mdb_cursor_open(txn, h->dbi, &c))) {
        mdb_txn_abort(txn);
        return fail(r, "lmdb: %s", mdb_strerror(rc));
    }
    MDB_val key = {24, from}, val;
    rc = mdb_cursor_get(c, &key, &val, MDB_SET_RANGE);
    while (rc == 0 && memcmp(key.mv_data, from, 16) == 0) {
        *sum += ((uint8_t *)val.mv_data)[0];
        ++*cnt;
        rc = mdb_cursor_get(c, &key, &val, MDB_NEXT);
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return 0;
}

static int raw_h_scan(emb *h, uint64_t *cnt, uint64_t *sum, void (*every)(void *), void *arg,
                      result *r)
{
    MDB_txn *txn;
    MDB_cursor *c;
    MDB_val k, v;
    int rc = mdb_txn_begin(h->env, NULL, MDB_RDONLY, &txn);
    if (rc)
        return fail(r, "lmdb: %s", mdb_strerror(rc));
    if ((rc = mdb_cursor_open(txn, h->dbi, &c))) {
        mdb_txn_abort(txn);
        return fail(r, "lmdb: %s", mdb_strerror(rc));
    }
    rc = mdb_cursor_get(c, &k, &v, MDB_FIRST);
    while (rc == 0) {
        *sum += v.mv_size + ((uint8_t *)k.mv_data)[23];
        if ((++*cnt & 65535) == 0)
            every(arg);
        rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(c);
    mdb_txn_abort(txn);
    return 0;
}

static void raw_h_close(emb *h)
{
    if (h->env)
        mdb_env_close(h->env);
}

static const emb_ops RAW_OPS = {.open = raw_h_open,
                                .thread = same_thread,
                                .append_spread = raw_h_spread,
                                .append_run = raw_h_run,
                                .read_stream = raw_h_read,
                                .scan = raw_h_scan,
                                .close = raw_h_close,
                                .w4_reps = 300,
                                .writers = "writers"};

/* SQLite: a connection per handle, the insert prepared once */

static int sq_h_connect(emb *h, result *r)
{
    if (sq_open(&h->db, h->path, r))
        return -1;
    if (sqlite3_prepare_v2(h->db, SQ_INSERT, -1, &h->ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(h->db,
                           "SELECT seq, type, data FROM events WHERE stream = ? ORDER BY seq", -1,
                           &h->rd, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(h->db, "SELECT stream, seq, type, data FROM events ORDER BY rowid", -1,
                           &h->sc, NULL) != SQLITE_OK)
        return fail(r, "sqlite: %s", sqlite3_errmsg(h->db));
    return 0;
}

static int sq_h_open(emb *h, const bench *b, const char *sys, const char *set, bool reading,
                     result *r)
{
    char name[32];
    snprintf(name, sizeof name, "%s.sqlite", set);
    path_of(h->path, sizeof h->path, b, name);
    return sq_h_connect(h, r);
}

static int sq_h_thread(emb **out, emb *h, result *r)
{
    emb *t = calloc(1, sizeof *t);
    if (!t)
        return fail(r, "out of memory");
    *t = (emb){.ops = h->ops, .thread = true};
    memcpy(t->path, h->path, sizeof t->path);
    *out = t;
    return sq_h_connect(t, r);
}

static int sq_h_spread(emb *h, const unsigned *streams, size_t n, uint64_t seq, uint64_t base,
                       result *r)
{
    uint64_t seqs[BATCH];
    for (size_t i = 0; i < n; i++)
        seqs[i] = seq;
    return sq_insert_batch(h->db, h->ins, streams, seqs, n, base, r);
}

static int sq_h_run(emb *h, unsigned stream, size_t n, uint64_t first, uint64_t base, result *r)
{
    unsigned streams[BATCH];
    uint64_t seqs[BATCH];
    for (size_t i = 0; i < n; i++) {
        streams[i] = stream;
        seqs[i] = first + i;
    }
    return sq_insert_batch(h->db, h->ins, streams, seqs, n, base, r);
}

static int sq_h_read(emb *h, unsigned stream, uint64_t *cnt, uint64_t *sum, result *r)
{
    sqlite3_stmt *q = h->rd;
    uint8_t key[16];
    stream_id(key, stream);
    sqlite3_bind_blob(q, 1, key, 16, SQLITE_STATIC);
    while (sqlite3_step(q) == SQLITE_ROW) {
        const uint8_t *d = sqlite3_column_blob(q, 2);
        *sum += d ? d[0] : 0;
        ++*cnt;
    }
    sqlite3_reset(q);
    return 0;
}

static int sq_h_scan(emb *h, uint64_t *cnt, uint64_t *sum, void (*every)(void *), void *arg,
                     result *r)
{
    sqlite3_stmt *q = h->sc;
    while (sqlite3_step(q) == SQLITE_ROW) {
        *sum += (uint64_t)sqlite3_column_bytes(q, 3) + (uint64_t)sqlite3_column_int64(q, 1);
        if ((++*cnt & 65535) == 0)
            every(arg);
    }
    sqlite3_reset(q);
    return 0;
}

static void sq_h_close(emb *h)
{
    sqlite3_finalize(h->ins);
    sqlite3_finalize(h->rd);
    sqlite3_finalize(h->sc);
    sqlite3_close(h->db);
}

static const emb_ops SQ_OPS = {.open = sq_h_open,
                               .thread = sq_h_thread,
                               .append_spread = sq_h_spread,
                               .append_run = sq_h_run,
                               .read_stream = sq_h_read,
                               .scan = sq_h_scan,
                               .close = sq_h_close,
                               .w4_reps = 300,
                               .writers = "writers"};

/* Open system `sys`'s data set `set` ("w1", "w2", "data": W3's);
 * `reading`: for W4/W5.  On failure h is still to be closed. */
static int emb_open(emb *h, const bench *b, const char *sys, const char *set, bool reading,
                    result *r)
{
    *h = (emb){.ops = NULL};
    if (strncmp(sys, "eventsrc", 8) == 0)
        h->ops = &ES_OPS;
    else if (strcmp(sys, "lmdb-raw") == 0)
        h->ops = &RAW_OPS;
    else if (strcmp(sys, "sqlite") == 0)
        h->ops = &SQ_OPS;
#ifdef ES_HAVE_PG
    else if (strcmp(sys, "pg-raw") == 0)
        h->ops = &PGRAW_OPS;
    else if (strcmp(sys, "message-db") == 0)
        h->ops = &MDB_OPS;
#endif
    if (!h->ops)
        return fail(r, "no system %s in this build", sys);
    return h->ops->open(h, b, sys, set, reading, r);
}

/* Close a handle of emb_open, or of emb_ops.thread (which frees it). */
static void emb_close(emb *h)
{
    if (h->thread) {
        h->ops->close(h);
        free(h);
    } else if (h->ops) {
        h->ops->close(h);
    }
}

/* W3's log: n events in commits of 1000, one on each of 1000 streams
 * (latency per commit into lat, when given). */
static int load_spread(emb *h, uint64_t n, double *lat, size_t *nl, result *r)
{
    unsigned streams[BATCH];
    for (unsigned i = 0; i < BATCH; i++)
        streams[i] = i % STREAMS;
    for (uint64_t k = 0; k < n / BATCH && r->ok; k++) {
        double s0 = now_s();
        if (h->ops->append_spread(h, streams, BATCH, k + 1, k * BATCH, r))
            return -1;
        if (lat)
            lat[(*nl)++] = now_s() - s0;
    }
    return r->ok ? 0 : -1;
}

/* W3's extra stream, for W4: 10,000 events in commits of 1000. */
static int load_one(emb *h, result *r)
{
    for (uint64_t done = 0; done < ONE_STREAM_EVENTS; done += BATCH)
        if (h->ops->append_run(h, ONE_STREAM, BATCH, done + 1, done, r))
            return -1;
    return 0;
}

/* eventsrc-mem keeps nothing between processes: build W3's data first. */
int mem_prepare(const bench *b, es_store **st, result *r)
{
    uint64_t n = scaled(b, 1000000, 10000);
    emb h = {.ops = &ES_OPS};
    n -= n % BATCH;
    if (es_open_bench(&h.st, b, "eventsrc-mem", "", r))
        return -1;
    *st = h.st;
    return load_spread(&h, n, NULL, NULL, r) || load_one(&h, r) ? -1 : 0;
}

/* ---- workloads ---- */

uint64_t scaled(const bench *b, double full, uint64_t min)
{
    uint64_t n = (uint64_t)(full * b->scale);
    return n < min ? min : n;
}

static int run_w1(const bench *b, const char *sys, result *r)
{
    uint64_t n = scaled(b, 3000, 100);
    double *lat = calloc(n, sizeof *lat);
    emb h;
    if (!lat)
        return fail(r, "out of memory");
    if (emb_open(&h, b, sys, "w1", false, r))
        goto out;
    double t0 = now_s();
    for (uint64_t i = 0; i < n && r->ok; i++) {
        double s0 = now_s();
        h.ops->append_run(&h, 7, 1, i + 1, i, r);
        lat[i] = now_s() - s0;
    }
    r->events_per_s = (double)n / (now_s() - t0);
    percentiles(lat, n, r);
    if (r->ok)
        snprintf(r->note, sizeof r->note, "%" PRIu64 " appends", n);
out:
    emb_close(&h);
    free(lat);
    return r->ok ? 0 : -1;
}

typedef struct w2_arg {
    emb *h; /* the run's handle: each thread asks it for its own */
    int id;
    uint64_t n;
    double *lat;
    int err;
} w2_arg;

static void *w2_thread(void *p)
{
    w2_arg *a = p;
    emb *t = NULL;
    result r = {.ok = 1};
    unsigned s = 5000 + (unsigned)a->id;
    if (a->h->ops->thread(&t, a->h, &r))
        a->err = 1;
    for (uint64_t i = 0; i < a->n && !a->err; i++) {
        double t0 = now_s();
        if (t->ops->append_run(t, s, 1, i + 1, i, &r))
            a->err = 1;
        a->lat[i] = now_s() - t0;
    }
    if (t && t != a->h)
        emb_close(t);
    return NULL;
}

static int run_w2(const bench *b, const char *sys, result *r)
{
    enum { T = 16 };
    uint64_t per = scaled(b, 1000, 20);
    pthread_t th[T];
    w2_arg args[T];
    double *lat = calloc(per * T, sizeof *lat);
    emb h;
    if (!lat)
        return fail(r, "out of memory");
    if (emb_open(&h, b, sys, "w2", false, r))
        goto out;
    double t0 = now_s();
    for (int i = 0; i < T; i++) {
        args[i] = (w2_arg){.h = &h, .id = i, .n = per, .lat = lat + per * (uint64_t)i};
        pthread_create(&th[i], NULL, w2_thread, &args[i]);
    }
    int err = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        err |= args[i].err;
    }
    r->events_per_s = (double)(per * T) / (now_s() - t0);
    percentiles(lat, per * T, r);
    snprintf(r->note, sizeof r->note, "16 %s x %" PRIu64 " appends", h.ops->writers, per);
    if (err)
        fail(r, "a writer failed");
out:
    emb_close(&h);
    free(lat);
    return r->ok ? 0 : -1;
}

/* W3: batches of 1000 across 1000 streams; leaves the data for W4/W5. */
uint64_t pg_w3_events(const bench *b)
{
    uint64_t n = scaled(b, 200000, 10000);
    return n - n % BATCH;
}

static int run_w3(const bench *b, const char *sys, result *r, bool for_later)
{
    uint64_t n = scaled(b, 1000000, 10000);
    n -= n % BATCH;
    if (strcmp(sys, "eventsrc-pg") == 0 || strcmp(sys, "pg-raw") == 0 ||
        strcmp(sys, "message-db") == 0)
        n = pg_w3_events(b);
    size_t nl = 0;
    double *lat = calloc(n / BATCH + 1, sizeof *lat);
    emb h;
    if (!lat)
        return fail(r, "out of memory");
    if (emb_open(&h, b, sys, "data", false, r))
        goto out;
    double t0 = now_s();
    load_spread(&h, n, lat, &nl, r);
    r->events_per_s = (double)n / (now_s() - t0);
    if (r->ok && for_later)
        load_one(&h, r);
    percentiles(lat, nl, r);
    if (r->ok)
        snprintf(r->note, sizeof r->note, "%" PRIu64 " events; latency per 1000-event commit%s", n,
                 h.ops->w3_note ? h.ops->w3_note : "");
out:
    emb_close(&h);
    free(lat);
    return r->ok ? 0 : -1;
}

static int run_w4(const bench *b, const char *sys, result *r)
{
    enum { REPS = 300 };
    double lat[REPS];
    uint64_t got = 0;
    int reps = REPS;
    emb h;
    if (emb_open(&h, b, sys, "data", true, r))
        goto out;
    reps = h.ops->w4_reps < REPS ? h.ops->w4_reps : REPS;
    for (int k = 0; k < reps; k++) {
        uint64_t sum = 0, cnt = 0;
        double t0 = now_s();
        if (h.ops->read_stream(&h, ONE_STREAM, &cnt, &sum, r))
            goto out;
        lat[k] = now_s() - t0;
        got = cnt + (sum == 0);
    }
    if (got < ONE_STREAM_EVENTS) {
        fail(r, "read %" PRIu64 " events, not %d", got, ONE_STREAM_EVENTS);
        goto out;
    }
    percentiles(lat, (size_t)reps, r);
    r->events_per_s = ONE_STREAM_EVENTS / (r->p50_us / 1e6);
    snprintf(r->note, sizeof r->note, "latency = one read of the whole stream%s",
             h.ops->w4_note ? h.ops->w4_note : "");
out:
    emb_close(&h);
    return r->ok ? 0 : -1;
}

/* W5's memory, sampled during the scan. */
typedef struct w5_mem {
    long peak, apeak;
} w5_mem;

static void w5_sample(void *p)
{
    w5_mem *m = p;
    long now = rss_kb(), anow = anon_kb();
    m->apeak = anow > m->apeak ? anow : m->apeak;
    m->peak = now > m->peak ? now : m->peak;
}

static int run_w5(const bench *b, const char *sys, result *r)
{
    uint64_t cnt = 0, sum = 0;
    emb h;
    if (emb_open(&h, b, sys, "data", true, r) || (!h.ops->scan && fail(r, "no W5 on %s", sys))) {
        emb_close(&h);
        return -1;
    }
    long before = rss_kb(), abefore = anon_kb();
    w5_mem m = {before, abefore};
    double t0 = now_s();
    int rc = h.ops->scan(&h, &cnt, &sum, w5_sample, &m, r);
    double t = now_s() - t0;
    emb_close(&h);
    if (rc)
        return -1;
    w5_sample(&m);
    r->anon_kb = m.apeak - abefore;
    r->events_per_s = (double)cnt / t;
    r->extra_kb = m.peak - before;
    snprintf(r->note, sizeof r->note,
             "%" PRIu64 " events; scan added %ld KiB RSS, %ld KiB anonymous%s", cnt, r->extra_kb,
             r->anon_kb, sum ? "" : " ");
    return 0;
}

static int run_w6(const bench *b, const char *sys, result *r)
{
    uint64_t n = scaled(b, 100000, 10000);
    es_store *st;
    if (strncmp(sys, "eventsrc", 8) != 0)
        return fail(r, "views are eventsrc's");
    char name[32];
    snprintf(name, sizeof name, "w6-%s", sys + 9);
    if (es_open_bench(&st, b, sys, name, r))
        return -1;
    if (es_load_one_stream(st, "view-stream", n, r))
        return -1;
    es_view_def d = {.version = ES_VIEW_DEF_VERSION,
                     .name = "bench-sum",
                     .view_version = 1,
                     .stream_key = w6_stream_key,
                     .init = w6_init,
                     .apply = w6_apply,
                     .encode = w6_encode,
                     .decode = w6_decode,
                     .free_value = w6_free};
    es_view_options never = ES_VIEW_OPTIONS_INIT, warm = ES_VIEW_OPTIONS_INIT;
    never.snapshot_every = UINT32_MAX;
    warm.snapshot_every = 1;
    es_view *cold_v, *warm_v;
    es_view_new(&cold_v, st, &d, &never);
    es_view_new(&warm_v, st, &d, &warm);
    double cold[5];
    for (int k = 0; k < 5; k++) {
        es_snapshot s;
        double t0 = now_s();
        if (es_view_get(&s, cold_v, "view-stream", 11, ES_LATEST_EVENT))
            return fail(r, "get: %s", es_error_last());
        cold[k] = now_s() - t0;
        if (((uint64_t *)s.value)[0] != n)
            return fail(r, "cold get folded %" PRIu64 " events", ((uint64_t *)s.value)[0]);
        es_snapshot_clear(&s, cold_v);
    }
    qsort(cold, 5, sizeof *cold, cmp_double);
    /* warm: the first get persists a snapshot at the head */
    es_snapshot s;
    es_view_get(&s, warm_v, "view-stream", 11, ES_LATEST_EVENT);
    es_snapshot_clear(&s, warm_v);
    enum { G = 2000 };
    double *lat = calloc(G, sizeof *lat);
    for (int k = 0; k < G; k++) {
        double t0 = now_s();
        es_view_get(&s, warm_v, "view-stream", 11, ES_LATEST_EVENT);
        lat[k] = now_s() - t0;
        es_snapshot_clear(&s, warm_v);
    }
    percentiles(lat, G, r);
    free(lat);
    r->events_per_s = (double)n / cold[2];
    snprintf(r->note, sizeof r->note,
             "cold: %" PRIu64 " events, median %.1f ms; p50/p99 = warm get", n, cold[2] * 1e3);
    es_view_free(cold_v);
    es_view_free(warm_v);
    es_store_close(st);
    return 0;
}

static int run_w7(const bench *b, const char *sys, result *r)
{
    enum { T = 4 };
    uint64_t per = scaled(b, 500, 20);
    pthread_t th[T];
    w7_arg args[T];
    double *lat = calloc(per * T, sizeof *lat);
    es_store *st = NULL;
    es_view *v = NULL;
    MDB_env *env = NULL;
    MDB_dbi dbi = 0;
    char p[600];
    if (!lat)
        return fail(r, "out of memory");
    if (strncmp(sys, "eventsrc", 8) == 0) {
        char name[32];
        snprintf(name, sizeof name, "w7-%s", sys + 9);
        if (es_open_bench(&st, b, sys, name, r))
            goto out;
        es_view_options o = ES_VIEW_OPTIONS_INIT;
        o.snapshot_every = 16;
        if (es_view_new(&v, st, us_user_by_name(), &o)) {
            fail(r, "view: %s", es_error_last());
            goto out;
        }
    } else if (strcmp(sys, "lmdb-raw") == 0) {
        path_of(p, sizeof p, b, "w7-raw");
        if (raw_open(&env, &dbi, p, r))
            goto out;
    } else {
        sqlite3 *db;
        path_of(p, sizeof p, b, "w7.sqlite");
        if (sq_open(&db, p, r))
            goto out;
        sqlite3_close(db);
    }
    double t0 = now_s();
    for (int i = 0; i < T; i++) {
        args[i] = (w7_arg){.view = v,
                           .env = env,
                           .dbi = dbi,
                           .sqlite_path = p,
                           .id = i,
                           .n = per,
                           .lat = lat + per * (uint64_t)i};
        void *(*fn)(void *) = v ? es_w7_thread : env ? raw_w7_thread : sq_w7_thread;
        pthread_create(&th[i], NULL, fn, &args[i]);
    }
    int err = 0;
    uint64_t retries = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        err |= args[i].err;
        retries += args[i].retries;
    }
    r->events_per_s = (double)(per * T) / (now_s() - t0);
    percentiles(lat, per * T, r);
    snprintf(r->note, sizeof r->note, "4 threads x %" PRIu64 " saves; %" PRIu64 " retries", per,
             retries);
    if (err)
        fail(r, "a save failed");
out:
    es_view_free(v);
    es_store_close(st);
    if (env)
        mdb_env_close(env);
    free(lat);
    return r->ok ? 0 : -1;
}

/*
 * W8: one subscription catching up over W3's log (what W5 scans), from the
 * beginning: es_sub_next (timeout 0) and es_sub_ack of each batch's last
 * position, with the default checkpoint policy (persist every ack), until
 * the log's last position has been delivered.  p50/p99: one batch (next +
 * ack).  W8 uses the default batch of 100, W8k batch_size 1000; W8c is W8
 * with a checkpoint once a second (checkpoint_ms 1000) and a final commit,
 * which shows what the machinery costs without a durable write per batch.
 */
uint32_t w8_batch(const char *w)
{
    return strcmp(w, "W8k") == 0 ? 1000 : 100;
}

uint32_t w8_checkpoint_ms(const char *w)
{
    return strcmp(w, "W8c") == 0 ? 1000 : 0;
}

static int run_w8(const bench *b, const char *w, const char *sys, result *r)
{
    uint32_t batch = w8_batch(w), every_ms = w8_checkpoint_ms(w);
    es_store *st = NULL;
    es_sub *sub = NULL;
    double *lat = NULL;
    size_t nl = 0, cap = 0;
    uint64_t last = 0, cnt = 0, sum = 0, got_to = 0, batches = 0;
    char name[48];
    bool created = false;
    if (strcmp(sys, "eventsrc-mem") == 0 ? mem_prepare(b, &st, r)
                                         : es_open_bench(&st, b, sys, "data-es", r))
        goto out;
    snprintf(name, sizeof name, "bench-%s-%u-%d", w, b->run_id, (int)getpid());
    es_sub_options so = ES_SUB_OPTIONS_INIT;
    so.batch_size = batch;
    if (es_store_last_position(&last, st) || es_sub_create(st, name, &so)) {
        fail(r, "create: %s", es_error_last());
        goto out;
    }
    created = true;
    double t0 = now_s();
    es_sub_open_options oo = ES_SUB_OPEN_OPTIONS_INIT;
    if (every_ms) {
        oo.checkpoint_every = UINT32_MAX;
        oo.checkpoint_ms = every_ms;
    }
    if (es_sub_open(&sub, st, name, &oo)) {
        fail(r, "open: %s", es_error_last());
        goto out;
    }
    while (got_to < last) {
        const es_event *const *evs;
        size_t n;
        double s0 = now_s();
        int rc = es_sub_next(&evs, &n, sub, 0);
        if (rc == 0)
            rc = es_sub_ack(sub, evs[n - 1]->position);
        if (rc) {
            fail(r, "after %" PRIu64 " events: %s", cnt, es_error_last());
            goto out;
        }
        double dt = now_s() - s0;
        for (size_t i = 0; i < n; i++)
            sum += evs[i]->data_len + evs[i]->seq;
        cnt += n;
        got_to = evs[n - 1]->position;
        batches++;
        if (nl == cap) {
            size_t c = cap ? cap * 2 : 4096;
            double *p = realloc(lat, c * sizeof *p);
            if (!p) {
                fail(r, "out of memory");
                goto out;
            }
            lat = p;
            cap = c;
        }
        lat[nl++] = dt;
    }
    if (es_sub_commit(sub)) {
        fail(r, "commit: %s", es_error_last());
        goto out;
    }
    double t = now_s() - t0;
    r->events_per_s = (double)cnt / t;
    percentiles(lat, nl, r);
    if (every_ms)
        snprintf(r->note, sizeof r->note,
                 "%" PRIu64 " events; batch %u, checkpoint every %u ms; latency per batch%s", cnt,
                 batch, every_ms, sum ? "" : " ");
    else
        snprintf(r->note, sizeof r->note,
                 "%" PRIu64 " events; batch %u, checkpoint every ack; latency per batch%s", cnt,
                 batch, sum ? "" : " ");
out:
    es_sub_close(sub);
    if (created)
        (void)es_sub_delete(st, name);
    es_store_close(st);
    free(lat);
    return r->ok ? 0 : -1;
}

/* ---- one (workload, system) of the embedded systems ---- */

int emb_run(const bench *b, const char *w, const char *sys, result *r)
{
    if (strcmp(w, "W1") == 0)
        return run_w1(b, sys, r);
    if (strcmp(w, "W2") == 0)
        return run_w2(b, sys, r);
    if (strcmp(w, "W3") == 0)
        return run_w3(b, sys, r, true);
    if (strcmp(w, "W4") == 0)
        return run_w4(b, sys, r);
    if (strcmp(w, "W5") == 0)
        return run_w5(b, sys, r);
    if (strcmp(w, "W6") == 0)
        return run_w6(b, sys, r);
    if (strcmp(w, "W7") == 0)
        return run_w7(b, sys, r);
    if (strcmp(w, "W8g") == 0)
        return run_w8g(b, sys, r);
    if (strncmp(w, "W8", 2) == 0)
        return run_w8(b, w, sys, r);
    if (strcmp(w, "W9") == 0)
        return run_w9(b, sys, r);
    return fail(r, "no workload %s", w);
}
