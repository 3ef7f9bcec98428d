/*
 * bench_pg.c — the PostgreSQL baselines of es_bench, on the same
 * server as eventsrc-pg:
 *
 *   pg-raw      what a user would hand-roll: an events table (bigserial
 *               position, UNIQUE (stream, seq)), one INSERT per event, and
 *               for batches one INSERT … SELECT FROM unnest(arrays) per 1000.
 *   message-db  Message DB (the npm package @eventide/message-db, installed
 *               by scripts/bench.sh): write_message() with an expected
 *               version, get_stream_messages() to read.  Batches are its
 *               best: 1000 write_message calls in one transaction, sent in a
 *               libpq pipeline, so round trips do not count against it.
 *
 * Both use libpq directly with binary parameters where the types allow,
 * and implement the interface of bench.h (W1–W4 are bench.c's loops); W8,
 * Message DB's consumer, is here.
 */
#define _GNU_SOURCE
#include "bench.h"

#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PIPE_CHUNK 250

/* ---- small libpq helpers ---- */

static int pq_fail(result *r, const char *what, const char *msg)
{
    char m[80];
    size_t n = 0;
    for (; msg && msg[n] && n < sizeof m - 1; n++)
        m[n] = msg[n] == '\n' ? ' ' : msg[n];
    m[n] = 0;
    return fail(r, "%s: %s", what, m);
}

static PGconn *connect_to(const char *uri, result *r)
{
    PGconn *c = PQconnectdb(uri);
    if (PQstatus(c) != CONNECTION_OK) {
        pq_fail(r, "connect", PQerrorMessage(c));
        PQfinish(c);
        return NULL;
    }
    PQclear(PQexec(c, "SET client_min_messages = warning"));
    /* Message DB's functions call each other unqualified */
    PQclear(PQexec(c, "SET search_path = message_store, public"));
    return c;
}

static int exec_ok(PGconn *c, const char *sql, result *r)
{
    PGresult *res = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(res);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        pq_fail(r, "sql", PQresultErrorMessage(res));
    PQclear(res);
    return ok ? 0 : -1;
}

static int prepare(PGconn *c, const char *name, const char *sql, int n, const Oid *types, result *r)
{
    PGresult *res = PQprepare(c, name, sql, n, types);
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        pq_fail(r, "prepare", PQresultErrorMessage(res));
    PQclear(res);
    return ok ? 0 : -1;
}

/* Run a prepared statement; 0 when it answered rows or OK. */
static int exec_prepared(PGconn *c, const char *name, int n, const char *const *v, const int *l,
                         const int *f, result *r)
{
    PGresult *res = PQexecPrepared(c, name, n, v, l, f, 1);
    ExecStatusType st = PQresultStatus(res);
    int ok = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
    if (!ok)
        pq_fail(r, name, PQresultErrorMessage(res));
    PQclear(res);
    return ok ? 0 : -1;
}

static void be64(uint8_t out[8], uint64_t v)
{
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(v >> (56 - 8 * i));
}

static void be32(uint8_t out[4], uint32_t v)
{
    for (int i = 0; i < 4; i++)
        out[i] = (uint8_t)(v >> (24 - 8 * i));
}

/* A one-dimensional array in PostgreSQL's binary format. */
typedef struct arr {
    uint8_t *p;
    size_t len, cap;
} arr;

static int arr_put(arr *a, const void *d, size_t n)
{
    if (a->len + n > a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 4096;
        while (cap < a->len + n)
            cap *= 2;
        uint8_t *p = realloc(a->p, cap);
        if (!p)
            return -1;
        a->p = p;
        a->cap = cap;
    }
    memcpy(a->p + a->len, d, n);
    a->len += n;
    return 0;
}

static int arr_begin(arr *a, Oid elem, uint32_t n)
{
    uint8_t h[20];
    a->len = 0;
    be32(h, 1);
    be32(h + 4, 0);
    be32(h + 8, elem);
    be32(h + 12, n);
    be32(h + 16, 1);
    return arr_put(a, h, 20);
}

static int arr_elem(arr *a, const void *d, uint32_t n)
{
    uint8_t l[4];
    be32(l, n);
    return arr_put(a, l, 4) || arr_put(a, d, n) ? -1 : 0;
}

/* ---- names on the server ---- */

static void raw_table(char *out, size_t cap, const bench *b, const char *t)
{
    snprintf(out, cap, "pgraw_%u.%s", b->run_id, t);
}

static int raw_setup(PGconn *c, const bench *b, const char *t, result *r)
{
    char sql[600], tab[64];
    raw_table(tab, sizeof tab, b, t);
    snprintf(sql, sizeof sql,
             "CREATE SCHEMA IF NOT EXISTS pgraw_%u;"
             "CREATE TABLE IF NOT EXISTS %s (position bigserial PRIMARY KEY,"
             " stream bytea NOT NULL, seq bigint NOT NULL, type text NOT NULL,"
             " data bytea NOT NULL, time timestamptz NOT NULL DEFAULT now(),"
             " UNIQUE (stream, seq))",
             b->run_id, tab);
    return exec_ok(c, sql, r);
}

/* Message DB stream name of stream i: category "benchN" and the workload
 * (all workloads share Message DB's one table), id = hex. */
static void mdb_stream(char out[64], const bench *b, const char *w, unsigned i)
{
    uint8_t id[16];
    stream_id(id, i);
    int n = snprintf(out, 64, "bench%u%s-", b->run_id, w);
    for (int k = 0; k < 16; k++)
        n += snprintf(out + n, (size_t)(64 - n), "%02x", id[k]);
}

static void mdb_uuid(char out[37], unsigned run, unsigned who, uint64_t n)
{
    snprintf(out, 37, "%08x-%04x-4000-8000-%012" PRIx64, run, who & 0xffff,
             (uint64_t)(n & 0xffffffffffffULL));
}

static void mdb_json(char out[PAYLOAD + 16], uint64_t n)
{
    uint8_t d[PAYLOAD];
    payload(d, n);
    memcpy(out, "{\"p\":\"", 6);
    memcpy(out + 6, d, PAYLOAD);
    memcpy(out + 6 + PAYLOAD, "\"}", 3);
}

static const char MDB_WRITE[] =
    "SELECT message_store.write_message($1, $2, 'Bench', $3::jsonb, NULL, $4::bigint)";

/* One write_message's text parameters. */
typedef struct mdb_msg {
    char id[37], stream[64], data[PAYLOAD + 16], version[24];
    const char *v[4];
} mdb_msg;

static void mdb_fill(mdb_msg *m, const bench *b, unsigned who, uint64_t n, unsigned stream,
                     int64_t expected)
{
    mdb_uuid(m->id, b->run_id, who, n);
    /* who: 100 = W1, 200.. = W2's writers, 300/301 = W3 */
    mdb_stream(m->stream, b, who < 200 ? "w1" : who < 300 ? "w2" : "w3", stream);
    mdb_json(m->data, n);
    snprintf(m->version, sizeof m->version, "%" PRId64, expected);
    m->v[0] = m->id;
    m->v[1] = m->stream;
    m->v[2] = m->data;
    m->v[3] = m->version;
}

/* Read every answer up to and including a pipeline's sync point. */
static int pipe_drain_to_sync(PGconn *c, result *r)
{
    int bad = 0;
    for (;;) {
        PGresult *res = PQgetResult(c);
        if (!res) {
            if (PQstatus(c) != CONNECTION_OK)
                return pq_fail(r, "pipeline", PQerrorMessage(c));
            continue;
        }
        ExecStatusType st = PQresultStatus(res);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(res);
            break;
        }
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && !bad) {
            if (r->ok) /* keep the first error */
                pq_fail(r, "pipeline", PQresultErrorMessage(res));
            bad = 1;
        }
        PQclear(res);
    }
    return bad ? -1 : 0;
}

/*
 * One Message DB batch: BEGIN, n write_message calls, COMMIT, pipelined in
 * chunks (a chunk's answers are read before the next chunk is sent).
 */
static int mdb_batch(PGconn *c, const bench *b, unsigned who, uint64_t base,
                     const unsigned *streams, const int64_t *expected, size_t n, result *r)
{
    mdb_msg m;
    if (!PQenterPipelineMode(c) || !PQsendQueryParams(c, "BEGIN", 0, NULL, NULL, NULL, NULL, 0))
        return pq_fail(r, "pipeline", PQerrorMessage(c));
    int rc = 0;
    size_t sent = 0, pending = 1; /* statements whose answers are not all read: BEGIN */
    while (sent < n && rc == 0) {
        size_t upto = sent + PIPE_CHUNK < n ? sent + PIPE_CHUNK : n;
        for (; sent < upto; sent++, pending++) {
            mdb_fill(&m, b, who, base + sent, streams[sent], expected[sent]);
            if (!PQsendQueryPrepared(c, "mdb_write", 4, m.v, NULL, NULL, 0)) {
                rc = pq_fail(r, "send", PQerrorMessage(c));
                break;
            }
        }
        if (rc || !PQsendFlushRequest(c) || PQflush(c) < 0) {
            rc = rc ? rc : pq_fail(r, "flush", PQerrorMessage(c));
            break;
        }
        while (pending > 0 && rc == 0) {
            PGresult *res = PQgetResult(c);
            if (!res) { /* the end of one statement's answers */
                pending--;
                continue;
            }
            ExecStatusType st = PQresultStatus(res);
            if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
                rc = pq_fail(r, "write_message", PQresultErrorMessage(res));
            PQclear(res);
        }
    }
    if (rc == 0 && !PQsendQueryParams(c, "COMMIT", 0, NULL, NULL, NULL, NULL, 0))
        rc = pq_fail(r, "commit", PQerrorMessage(c));
    if (!PQpipelineSync(c))
        return pq_fail(r, "sync", PQerrorMessage(c));
    if (pipe_drain_to_sync(c, r) < 0)
        rc = -1;
    PQexitPipelineMode(c);
    if (rc)
        exec_ok(c, "ROLLBACK", r);
    return rc;
}

/* One pg-raw batch: a single INSERT … SELECT FROM unnest(…) (one statement,
 * one transaction, one round trip). */
typedef struct raw_batch {
    arr s, q, d;
} raw_batch;

static int raw_insert_batch(PGconn *c, raw_batch *rb, const unsigned *streams, const uint64_t *seqs,
                            size_t n, uint64_t base, result *r)
{
    uint8_t id[16], d[PAYLOAD], q[8];
    if (arr_begin(&rb->s, 17, (uint32_t)n) || arr_begin(&rb->q, 20, (uint32_t)n) ||
        arr_begin(&rb->d, 17, (uint32_t)n))
        return fail(r, "out of memory");
    for (size_t i = 0; i < n; i++) {
        stream_id(id, streams[i]);
        be64(q, seqs[i]);
        payload(d, base + i);
        if (arr_elem(&rb->s, id, 16) || arr_elem(&rb->q, q, 8) || arr_elem(&rb->d, d, PAYLOAD))
            return fail(r, "out of memory");
    }
    const char *v[3] = {(const char *)rb->s.p, (const char *)rb->q.p, (const char *)rb->d.p};
    int l[3] = {(int)rb->s.len, (int)rb->q.len, (int)rb->d.len}, f[3] = {1, 1, 1};
    return exec_prepared(c, "raw_batch", 3, v, l, f, r);
}

static int raw_prepare_batch(PGconn *c, const bench *b, const char *t, result *r)
{
    char sql[400], tab[64];
    raw_table(tab, sizeof tab, b, t);
    snprintf(sql, sizeof sql,
             "INSERT INTO %s (stream, seq, type, data) SELECT s, q, 'Bench', d"
             " FROM unnest($1::bytea[], $2::int8[], $3::bytea[]) AS u(s, q, d)",
             tab);
    return prepare(c, "raw_batch", sql, 0, NULL, r);
}

static int raw_prepare_one(PGconn *c, const bench *b, const char *t, result *r)
{
    char sql[300], tab[64];
    raw_table(tab, sizeof tab, b, t);
    snprintf(sql, sizeof sql,
             "INSERT INTO %s (stream, seq, type, data) VALUES ($1, $2, 'Bench', $3)", tab);
    Oid types[3] = {17, 20, 17};
    return prepare(c, "raw_one", sql, 3, types, r);
}

static int raw_insert_one(PGconn *c, unsigned stream, uint64_t seq, uint64_t n, result *r)
{
    uint8_t id[16], q[8], d[PAYLOAD];
    stream_id(id, stream);
    be64(q, seq);
    payload(d, n);
    const char *v[3] = {(const char *)id, (const char *)q, (const char *)d};
    int l[3] = {16, 8, PAYLOAD}, f[3] = {1, 1, 1};
    return exec_prepared(c, "raw_one", 3, v, l, f, r);
}

static int mdb_write_one(PGconn *c, const bench *b, unsigned who, uint64_t n, unsigned stream,
                         int64_t expected, result *r)
{
    mdb_msg m;
    mdb_fill(&m, b, who, n, stream, expected);
    return exec_prepared(c, "mdb_write", 4, m.v, NULL, NULL, r);
}

/* ---- pg-raw and message-db behind the interface of bench.h ---- */

typedef struct pgh {
    const bench *b;
    PGconn *c;
    bool mdb;
    char set[8]; /* the table of pg-raw; Message DB's category: "w1", "w2", "w3" */
    raw_batch rb;
} pgh;

/* Message DB ids: 100 = W1, 200.. = W2's writers, 300/301 = W3 (see mdb_fill) */
static unsigned mdb_who(unsigned stream)
{
    return stream == ONE_STREAM ? 301 : stream >= 5000 ? 200 + (stream - 5000) : 100;
}

/* Connect h and prepare its statements (pg-raw: on its set's table,
 * created first when `setup`). */
static int pg_h_connect(emb *h, bool setup, result *r)
{
    pgh *p = h->pg;
    char sql[300], tab[64];
    if (!(p->c = connect_to(p->mdb ? p->b->mdb_uri : p->b->pg_uri, r)))
        return -1;
    if (!p->mdb && setup && raw_setup(p->c, p->b, p->set, r))
        return -1;
    if (p->mdb)
        return prepare(p->c, "mdb_write", MDB_WRITE, 0, NULL, r) ||
                       /* one call for the whole stream: Message DB's best */
                       prepare(
                           p->c, "mdb_read",
                           "SELECT id, stream_name, type, position, global_position, data,"
                           " metadata, time FROM message_store.get_stream_messages($1, 0, 10000)",
                           0, NULL, r)
                   ? -1
                   : 0;
    raw_table(tab, sizeof tab, p->b, p->set);
    snprintf(sql, sizeof sql, "SELECT seq, type, data FROM %s WHERE stream = $1 ORDER BY seq", tab);
    Oid t[1] = {17};
    return raw_prepare_one(p->c, p->b, p->set, r) || raw_prepare_batch(p->c, p->b, p->set, r) ||
                   prepare(p->c, "raw_read", sql, 1, t, r)
               ? -1
               : 0;
}

static int pg_h_new(emb *h, const pgh *from, result *r)
{
    pgh *p = calloc(1, sizeof *p);
    if (!p)
        return fail(r, "out of memory");
    p->b = from->b;
    p->mdb = from->mdb;
    memcpy(p->set, from->set, sizeof p->set);
    h->pg = p;
    return 0;
}

static int pg_h_open(emb *h, const bench *b, const char *sys, const char *set, bool reading,
                     result *r)
{
    pgh from = {.b = b, .mdb = strcmp(sys, "message-db") == 0};
    if (!b->pg_uri || (from.mdb && !b->mdb_uri))
        return fail(r, "no server given (--pg, --message-db)");
    snprintf(from.set, sizeof from.set, "%s", strcmp(set, "data") == 0 && from.mdb ? "w3" : set);
    return pg_h_new(h, &from, r) || pg_h_connect(h, true, r) ? -1 : 0;
}

/* a connection per writer thread */
static int pg_h_thread(emb **out, emb *h, result *r)
{
    emb *t = calloc(1, sizeof *t);
    if (!t)
        return fail(r, "out of memory");
    *t = (emb){.ops = h->ops, .thread = true};
    *out = t;
    return pg_h_new(t, h->pg, r) || pg_h_connect(t, false, r) ? -1 : 0;
}

static int pg_h_spread(emb *h, const unsigned *streams, size_t n, uint64_t seq, uint64_t base,
                       result *r)
{
    pgh *p = h->pg;
    uint64_t seqs[BATCH];
    int64_t expected[BATCH];
    for (size_t i = 0; i < n; i++) {
        seqs[i] = seq;
        expected[i] = (int64_t)seq - 2; /* Message DB's versions count from 0 */
    }
    if (p->mdb)
        return mdb_batch(p->c, p->b, 300, base, streams, expected, n, r);
    return raw_insert_batch(p->c, &p->rb, streams, seqs, n, base, r);
}

static int pg_h_run(emb *h, unsigned stream, size_t n, uint64_t first, uint64_t base, result *r)
{
    pgh *p = h->pg;
    unsigned streams[BATCH];
    uint64_t seqs[BATCH];
    int64_t expected[BATCH];
    if (n == 1) /* one statement, no batch */
        return p->mdb
                   ? mdb_write_one(p->c, p->b, mdb_who(stream), base, stream, (int64_t)first - 2, r)
                   : raw_insert_one(p->c, stream, first, base, r);
    for (size_t i = 0; i < n; i++) {
        streams[i] = stream;
        seqs[i] = first + i;
        expected[i] = (int64_t)(first + i) - 2;
    }
    if (p->mdb)
        return mdb_batch(p->c, p->b, mdb_who(stream), base, streams, expected, n, r);
    return raw_insert_batch(p->c, &p->rb, streams, seqs, n, base, r);
}

static int pg_h_read(emb *h, unsigned stream, uint64_t *cnt, uint64_t *sum, result *r)
{
    pgh *p = h->pg;
    char name[64];
    uint8_t id[16];
    const char *v[1];
    int l[1], f[1];
    if (p->mdb) {
        mdb_stream(name, p->b, "w3", stream);
        v[0] = name;
        l[0] = f[0] = 0;
    } else {
        stream_id(id, stream);
        v[0] = (const char *)id;
        l[0] = 16;
        f[0] = 1;
    }
    PGresult *res = PQexecPrepared(p->c, p->mdb ? "mdb_read" : "raw_read", 1, v, l, f, 1);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        pq_fail(r, "read", PQresultErrorMessage(res));
        PQclear(res);
        return -1;
    }
    int rows = PQntuples(res), col = p->mdb ? 5 : 2;
    for (int i = 0; i < rows; i++)
        *sum += (uint8_t)PQgetvalue(res, i, col)[0];
    *cnt += (uint64_t)rows;
    PQclear(res);
    return 0;
}

static void pg_h_close(emb *h)
{
    pgh *p = h->pg;
    if (!p)
        return;
    PQfinish(p->c);
    free(p->rb.s.p);
    free(p->rb.q.p);
    free(p->rb.d.p);
    free(p);
    h->pg = NULL;
}

/* No W5 (scan: NULL): the PostgreSQL baselines run W1–W4. */
const emb_ops PGRAW_OPS = {.open = pg_h_open,
                           .thread = pg_h_thread,
                           .append_spread = pg_h_spread,
                           .append_run = pg_h_run,
                           .read_stream = pg_h_read,
                           .close = pg_h_close,
                           .w4_reps = 100,
                           .writers = "connections"};
const emb_ops MDB_OPS = {.open = pg_h_open,
                         .thread = pg_h_thread,
                         .append_spread = pg_h_spread,
                         .append_run = pg_h_run,
                         .read_stream = pg_h_read,
                         .close = pg_h_close,
                         .w4_reps = 100,
                         .writers = "connections",
                         .w3_note = " (pipelined)",
                         .w4_note = " (one get_stream_messages call)"};

/* ---- W8: Message DB's consumer catching up over W3's category ---- */

static uint64_t get_be64(const char *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | (uint8_t)p[i];
    return v;
}

/*
 * What a Message DB consumer (Eventide's) does: start after the position in
 * the last 'Recorded' message of its position stream (category:position-ID,
 * which is not in the category), read the category in global-position order
 * with get_category_messages(category, position, batch_size), and after
 * each batch write a 'Recorded' message with the batch's last global
 * position — eventsrc's cadence of one checkpoint per batch.  Caught up
 * when a read answers nothing.  p50/p99: one batch (read + checkpoint).
 */
static int mdb_w8(const bench *b, const char *w, result *r)
{
    uint32_t batch = w8_batch(w), every_ms = w8_checkpoint_ms(w);
    uint64_t want = pg_w3_events(b) + ONE_STREAM_EVENTS, cnt = 0, sum = 0, pos = 1, k = 0;
    char category[48], pos_stream[96], pos_s[24], batch_s[24], data[64], id[37];
    double *lat = NULL, written = 0;
    size_t nl = 0, cap = 0;
    PGconn *c = connect_to(b->mdb_uri, r);
    if (!c)
        return -1;
    snprintf(category, sizeof category, "bench%uw3", b->run_id);
    snprintf(pos_stream, sizeof pos_stream, "%s:position-%sx%d", category, w, (int)getpid());
    snprintf(batch_s, sizeof batch_s, "%" PRIu32, batch);
    if (prepare(c, "mdb_cat",
                "SELECT id, stream_name, type, position, global_position, data, metadata, time"
                " FROM message_store.get_category_messages($1, $2::bigint, $3::bigint)",
                0, NULL, r) ||
        prepare(c, "mdb_last",
                "SELECT data FROM message_store.get_last_stream_message($1, 'Recorded')", 0, NULL,
                r) ||
        prepare(c, "mdb_rec",
                "SELECT message_store.write_message($1, $2, 'Recorded', $3::jsonb, NULL, NULL)", 0,
                NULL, r))
        goto out;
    double t0 = now_s();
    const char *lv[1] = {pos_stream};
    PGresult *res = PQexecPrepared(c, "mdb_last", 1, lv, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        pq_fail(r, "get_last_stream_message", PQresultErrorMessage(res));
        PQclear(res);
        goto out;
    }
    if (PQntuples(res) == 1 && !PQgetisnull(res, 0, 0)) {
        const char *p = strstr(PQgetvalue(res, 0, 0), "\"position\":");
        if (p)
            pos = strtoull(p + 11, NULL, 10) + 1;
    }
    PQclear(res);
    written = now_s();
    for (;;) {
        double s0 = now_s();
        snprintf(pos_s, sizeof pos_s, "%" PRIu64, pos);
        const char *v[3] = {category, pos_s, batch_s};
        res = PQexecPrepared(c, "mdb_cat", 3, v, NULL, NULL, 1);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            pq_fail(r, "get_category_messages", PQresultErrorMessage(res));
            PQclear(res);
            goto out;
        }
        int rows = PQntuples(res);
        for (int i = 0; i < rows; i++)
            sum += (uint8_t)PQgetvalue(res, i, 5)[0];
        uint64_t last = rows ? get_be64(PQgetvalue(res, rows - 1, 4)) : 0;
        PQclear(res);
        /* caught up: the last position is written (W8c's final one) */
        if (rows == 0 && (!every_ms || cnt == 0))
            break;
        if (rows) {
            cnt += (uint64_t)rows;
            pos = last + 1;
        }
        if (!every_ms || rows == 0 || (now_s() - written) * 1000 >= every_ms) {
            mdb_uuid(id, b->run_id, 800 + (unsigned)(w[2] ? w[2] : '0'), k++);
            snprintf(data, sizeof data, "{\"position\":%" PRIu64 "}", pos - 1);
            const char *rv[3] = {id, pos_stream, data};
            if (exec_prepared(c, "mdb_rec", 3, rv, NULL, NULL, r))
                goto out;
            written = now_s();
        }
        if (rows == 0)
            break;
        if (nl == cap) {
            size_t nc = cap ? cap * 2 : 4096;
            double *p = realloc(lat, nc * sizeof *p);
            if (!p) {
                fail(r, "out of memory");
                goto out;
            }
            lat = p;
            cap = nc;
        }
        lat[nl++] = now_s() - s0;
    }
    r->events_per_s = (double)cnt / (now_s() - t0);
    if (cnt != want) {
        fail(r, "read %" PRIu64 " messages of category %s, not %" PRIu64, cnt, category, want);
        goto out;
    }
    percentiles(lat, nl, r);
    if (every_ms)
        snprintf(r->note, sizeof r->note,
                 "%" PRIu64 " events; batch %u, a Recorded position message every %u ms%s", cnt,
                 batch, every_ms, sum ? "" : " ");
    else
        snprintf(r->note, sizeof r->note,
                 "%" PRIu64 " events; batch %u, a Recorded position message per batch%s", cnt,
                 batch, sum ? "" : " ");
out:
    PQfinish(c);
    free(lat);
    return r->ok ? 0 : -1;
}

int pgb_run(const bench *b, const char *w, const char *sys, result *r)
{
    if (!b->pg_uri || (strcmp(sys, "message-db") == 0 && !b->mdb_uri))
        return fail(r, "no server given (--pg, --message-db)");
    if (strncmp(w, "W8", 2) == 0 && strcmp(sys, "message-db") == 0)
        return mdb_w8(b, w, r);
    if (strcmp(w, "W1") && strcmp(w, "W2") && strcmp(w, "W3") && strcmp(w, "W4"))
        return fail(r, "no %s on %s", w, sys);
    return emb_run(b, w, sys, r);
}
