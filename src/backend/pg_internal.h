/*
 * pg_internal.h — what the files of the PostgreSQL store share: the store
 * handle, the prepared statements, the connection pool and the parameter
 * helpers.  pg.c describes the design; each pg_*.c file holds one part of
 * it (pg_sql.c the SQL and migrations, pg_pool.c connections, pg_uri.c the
 * URI's options, pg_append.c appends, pg_read.c reads and waits, pg_snap.c
 * snapshots).
 */
#ifndef ES_PG_INTERNAL_H
#define ES_PG_INTERNAL_H

#include "../internal.h"
#include "../map.h"

#include <libpq-fe.h>
#include <pthread.h>

#define PG_SCHEMA_VERSION 3
/* Positions per transaction id: an event's position is its transaction's
 * id × PG_POS_SHIFT + its index in the commit. */
#define PG_POS_SHIFT 16384
_Static_assert(ES_MAX_BATCH < PG_POS_SHIFT, "a commit's events must fit below the next xid");
/* How far a proposed commit time may be from the server's clock (µs). */
#define PG_CLOCK_SLACK_US 500000
#define PG_PAGE 1000             /* rows of a cursor's first round trip */
#define PG_PAGE_MAX 65536        /* pages grow ×4 up to this many rows… */
#define PG_PAGE_BYTES (8u << 20) /* …while a page's data stays under this */
#define PG_MAX_TRIES 20          /* stale-cache and race retries of one append */
#define PG_CACHE_MAX 65536       /* streams whose head the client remembers */

#define OID_BOOL 16
#define OID_BYTEA 17
#define OID_INT8 20
#define OID_INT4 23
#define OID_BYTEA_ARRAY 1001
#define OID_INT4_ARRAY 1007
#define OID_INT8_ARRAY 1016

/* ---- statements (pg_sql.c) ---- */

/* A number in SQL text, written from the one C constant. */
#define PG_SQL_STR_(x) #x
#define PG_SQL_INT(x) PG_SQL_STR_(x)

/* The expectation as the SQL functions take it (p_expected): a seq N >= 0
 * is "exactly N"; ES_EXPECT_NO_STREAM is 0. */
#define PG_EXPECT_ANY -1
#define PG_EXPECT_EXISTS -2

/* What es_append() and es_append_batch() answer in `status`. */
#define PG_DONE 0      /* written */
#define PG_CONFLICT 1  /* an expectation failed: nothing written */
#define PG_STALE 2     /* the client's head, hash or time was stale: nothing written */
#define PG_IDS_EXIST 3 /* some of the event ids are stored: nothing written */

enum {
    S_APPEND,
    S_HEAD,
    S_HEADS,
    S_APPEND_BATCH,
    S_ID,
    S_LASTPOS,
    S_CEILING,
    S_STREAM_FWD,
    S_STREAM_BWD,
    S_LOG,
    S_STREAMS,
    S_STATS,
    S_SNAP_PUT,
    S_SNAP_GET,
    S_SNAP_LIST,
    S_SNAP_DEL,
    S_KV_GET,
    S_KV_INSERT,
    S_KV_UPDATE,
    S_KV_UPDATE_LAZY,
    S_KV_DELETE,
    S_KV_LIST,
    S_COUNT
};

#define PG_MAX_PARAMS 14

typedef struct pg_stmt {
    const char *name;
    const char *sql; /* '@' stands for the schema */
    int n;
    Oid types[PG_MAX_PARAMS];
} pg_stmt;

extern const pg_stmt es__pg_stmts[S_COUNT];

/* ---- the store ---- */

typedef struct pg_conn {
    PGconn *c;
    bool broken;
} pg_conn;

typedef struct cached_head {
    uint64_t head;
    uint8_t hash[ES_HASH_SIZE];
    int64_t time_us;
} cached_head;

typedef struct pg_store {
    es_store *st;
    char *conninfo; /* the URI without eventsrc's own options */
    char *session;  /* the `options` our connections start with: the URI's, then ours */
    char schema[64];
    char channel[80];
    char notify_sql[140]; /* NOTIFY "channel", committed without a flush */
    int timeout_ms;
    int pool_max;
    int commit_delay_ms; /* tests: a random sleep inside each append's transaction */
    bool notify;

    pthread_mutex_t lock; /* pool */
    pthread_cond_t cond;
    pg_conn **idle;
    int n_idle;
    int n_conns;

    pthread_mutex_t cache_lock;
    es__map cache; /* stream → cached_head */
    int64_t clock_offset;

    pthread_mutex_t listen_lock;
    PGconn *listener;
} pg_store;

/* Replace every '@' in tmpl with the (validated, quoted) schema name and
 * every '^' with the notification channel.  NULL when out of memory. */
char *es__pg_sql_for(const pg_store *s, const char *tmpl);

/* Create the schema or bring it to PG_SCHEMA_VERSION, under an advisory lock. */
int es__pg_migrate(pg_store *s, pg_conn *pc);

/* ---- the URI (pg_uri.c) ---- */

/* A postgres:// URI, parsed. */
typedef struct es__pg_uri {
    char *conninfo;   /* the URI less eventsrc's options, for libpq (owned) */
    char *pq_options; /* libpq's `options` of the URI, decoded, or NULL (owned) */
    char schema[64];  /* default "eventsrc" */
    int pool_max;     /* default 16 */
    int commit_delay_ms;
    bool notify;
} es__pg_uri;

/* Take eventsrc's own options (schema, pool, notify, commit_delay_ms) out
 * of the URI's query; every other option stays, as written, for libpq,
 * which checks them without connecting.  Returns 0, ES_EINVAL (a message
 * names the option) or ES_ENOMEM; on an error *out holds nothing to free.
 * Needs no server: the fuzz target calls it on any bytes. */
int es__pg_parse_uri(es__pg_uri *out, const char *uri);
void es__pg_uri_free(es__pg_uri *u);

/* ---- parameters, all sent in binary ---- */

typedef struct pgp {
    const char *v[PG_MAX_PARAMS];
    int l[PG_MAX_PARAMS];
    int f[PG_MAX_PARAMS];
    uint8_t ints[PG_MAX_PARAMS][8];
    int n;
} pgp;

static inline void p_bytes(pgp *p, const void *v, size_t len)
{
    p->v[p->n] = len ? v : "";
    p->l[p->n] = (int)len;
    p->f[p->n++] = 1;
}
static inline void p_null(pgp *p)
{
    p->v[p->n] = NULL;
    p->l[p->n] = 0;
    p->f[p->n++] = 1;
}
static inline void p_i64(pgp *p, int64_t v)
{
    es__put_u64(p->ints[p->n], (uint64_t)v);
    p_bytes(p, p->ints[p->n], 8);
}
static inline void p_i32(pgp *p, int32_t v)
{
    es__put_u32(p->ints[p->n], (uint32_t)v);
    p_bytes(p, p->ints[p->n], 4);
}
static inline void p_bool(pgp *p, bool v)
{
    p->ints[p->n][0] = v;
    p_bytes(p, p->ints[p->n], 1);
}

static inline int64_t g_i64(const PGresult *r, int row, int col)
{
    return (int64_t)es__get_u64((const uint8_t *)PQgetvalue(r, row, col));
}
static inline int32_t g_i32(const PGresult *r, int row, int col)
{
    return (int32_t)es__get_u32((const uint8_t *)PQgetvalue(r, row, col));
}

/* A count or seq for a bigint parameter. */
static inline int64_t pg_clamp_i64(uint64_t v)
{
    return v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
}

/* ---- connections and the pool (pg_pool.c) ---- */

/* A statement's answer for a race worth retrying (unique violation,
 * serialization failure, deadlock). */
#define ES__PG_RETRY 1

int64_t es__pg_mono_ms(void);

/* The connection's last error on one line (a thread-local buffer). */
const char *es__pg_msg(PGconn *c);

/* Run a query already sent on pc; collect its last result.  0 with *out,
 * ES__PG_RETRY, or an error (the connection is marked broken when it can
 * no longer be trusted). */
int es__pg_finish(pg_store *s, pg_conn *pc, PGresult **out);

/* Run a prepared statement (binary parameters and results). */
int es__pg_run(pg_store *s, pg_conn *pc, int stmt, const pgp *p, PGresult **out);

/* Simple SQL (text results), for setup and transaction control; out may be NULL. */
int es__pg_run_sql(pg_store *s, pg_conn *pc, const char *sql, PGresult **out);

/* A new connection with our session settings (not yet prepared). */
int es__pg_connect(pg_store *s, pg_conn **out);

int es__pg_prepare_all(pg_store *s, pg_conn *pc);
void es__pg_drop_conn(pg_conn *pc);

/* Take a connection from the pool (connecting when needed), waiting up to
 * the timeout for one to come back; hand it back with es__pg_release. */
int es__pg_acquire(pg_store *s, pg_conn **out);
void es__pg_release(pg_store *s, pg_conn *pc);

/* ---- the vtable's entries ---- */

/* pg_append.c */
int es__pg_append(void *be, const es__append_req *reqs, size_t n, es_append_result *outs);
int es__pg_head_of(pg_store *s, pg_conn *pc, const uint8_t *stream, size_t len, uint64_t *out);

/* pg_read.c */
int es__pg_head(void *be, const uint8_t *stream, size_t len, uint64_t *out);
int es__pg_last_position(void *be, uint64_t *out);
int es__pg_position_ceiling(void *be, uint64_t *out);
int es__pg_stats(void *be, es_store_stats *out);
int es__pg_stream_cursor(es_cursor **out, void *be, const uint8_t *stream, size_t len,
                         const es_read_options *opts);
int es__pg_log_cursor(es_cursor **out, void *be, const es_log_options *opts);
int es__pg_streams(void *be, const void *prefix, size_t prefix_len, es_stream_fn fn, void *payload);
int es__pg_wait(void *be, uint64_t after, int timeout_ms);

/* pg_snap.c */
int es__pg_snap_put(void *be, const uint8_t *skey, size_t sklen, const es__snap *snap);
int es__pg_snap_get(void *be, const uint8_t *skey, size_t sklen, uint64_t max_seq, int64_t max_time,
                    es__snap *out, es_buf *buf);
int es__pg_snap_list(void *be, const uint8_t *skey, size_t sklen, uint64_t *seqs, size_t cap,
                     size_t *n);
int es__pg_snap_del(void *be, const uint8_t *skey, size_t sklen, uint64_t seq);

/* pg_kv.c */
int es__pg_kv_get(void *be, const uint8_t *key, size_t klen, es_buf *val, uint64_t *version);
int es__pg_kv_cas(void *be, const uint8_t *key, size_t klen, uint64_t expected, const uint8_t *val,
                  size_t vlen, uint64_t *version);
int es__pg_kv_cas_lazy(void *be, const uint8_t *key, size_t klen, uint64_t expected,
                       const uint8_t *val, size_t vlen, uint64_t *version);
int es__pg_kv_list(void *be, const uint8_t *prefix, size_t plen,
                   int (*fn)(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                             uint64_t version, void *payload),
                   void *payload);

#endif
