/*
 * pg.c — the PostgreSQL store: one database shared by many processes and
 * machines, with the semantics of the embedded store.
 *
 * Schema (in the schema named by the URI's `schema=` option, default
 * "eventsrc"; created and migrated on open under an advisory lock, so many
 * processes may open at once):
 *
 *   es_meta(key, value)                        schema version
 *   events(position PK, stream, seq, time_us, id, type, data, meta, hash)
 *       UNIQUE (stream, seq), UNIQUE (id)
 *   streams(stream PK, head, hash, time_us)    one row per stream: its head
 *   snapshots(skey, seq, state, time_us, data) PK (skey, seq)
 *   es_append(...)                             one stream's append, as one call
 *   es_append_batch(...)                       a commit of several streams (v2)
 *
 * Global positions never skip.  An event's position is its transaction's
 * id (pg_current_xact_id()) × PG_POS_SHIFT (16384) + its index in the
 * commit (a commit holds at most ES_MAX_BATCH < PG_POS_SHIFT events).  A
 * reader returns only positions below pg_snapshot_xmin(pg_current_snapshot())
 * × PG_POS_SHIFT: every transaction below that xmin has committed or
 * aborted, so nothing can later appear behind what a reader has passed.
 * Writers never wait for each other (except on one stream's row); the cost
 * falls on readers: a long transaction anywhere in the cluster holds the
 * log's horizon back until it ends.  Positions are increasing but not dense.
 *
 * Appends take one round trip: es_append() locks the stream's row, checks
 * the expectation and idempotency, and inserts the events whose chain
 * hashes the client computed from the stream's head hash, which it keeps
 * in a cache; es_append_batch() does the same for every stream of a
 * multi-stream commit set-wise (rows locked in key order, one INSERT).
 * When the cache is stale the function says so, writes nothing, and
 * returns the head; the client recomputes and sends again.
 * Commit times come from the server's clock: the client proposes its
 * estimate (its clock plus an offset learned from the server) and the
 * server accepts it within 0.5 s, else returns its time and the client
 * sends again.  Times never go back within a stream.  A clock given in the
 * open options, or a kept time (imports), is used as is.
 *
 * Connections: a pool (up to `pool=N`, default 16), one connection per
 * call at a time, so a store handle serves many threads.  A connection
 * that fails is dropped; the call in flight returns ES_EUNAVAILABLE (an
 * append's outcome is then unknown: retry it with the same event ids) and
 * the next call connects again.  Every wait is bounded by the timeout and
 * answers ES_ETIMEDOUT when it runs out: for a connection of the pool, for
 * a statement (the server's statement_timeout: it rolled back), or for an
 * answer (timeout + 2 s: the outcome is unknown, as for a lost connection).
 *
 * Waiting for new events (es_log_wait) LISTENs on the store's channel on a
 * connection of its own and polls the log's horizon, every 5 ms at first,
 * backing off to 100 ms; polling alone keeps it working behind a
 * transaction-pooling proxy.  Writers opened with `notify=1` NOTIFY that
 * channel after each append commits, in a statement of its own, which wakes
 * waiters at once: a NOTIFY in the append's own transaction would serialise
 * the commits (PostgreSQL holds its notification lock through the WAL
 * flush), undoing group commit for concurrent writers; the NOTIFY's own
 * transaction commits without waiting for a flush (synchronous_commit off:
 * a notification lost in a crash only delays waiters to their next poll).
 * It costs the writer one round trip, so it is off by default.
 *
 * Our connections run with enable_seqscan=off (and the SQL functions carry
 * it too): every statement is an index lookup or a range scan, and a plan
 * cached while the store was small must not stay a sequential scan.  They
 * also run with enable_bitmapscan=off: on tables not yet analyzed the
 * planner read a log page as a bitmap scan of every position after the
 * start, sorted, then took the page (100 ms a page on 200k events, where an
 * ordered index scan with its LIMIT takes 3 ms).
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- open and close ---- */

static void pg_close(void *be);

/* The `options` every connection starts with: the URI's own, then ours,
 * which win where both set a parameter (our statement timeout bounds every
 * wait; enable_seqscan=off: every statement of ours is an index lookup or
 * range scan, and a plan cached while the tables were small must not stay
 * a sequential scan once they are large). */
static int session_options(pg_store *s, const char *from_uri)
{
    char ours[160];
    snprintf(ours, sizeof ours,
             "-c statement_timeout=%d -c client_min_messages=warning -c enable_seqscan=off "
             "-c enable_bitmapscan=off",
             s->timeout_ms);
    size_t n = (from_uri ? strlen(from_uri) + 1 : 0) + strlen(ours) + 1;
    if (!(s->session = es__malloc(n)))
        return es__err(ES_ENOMEM, "out of memory opening a store");
    snprintf(s->session, n, "%s%s%s", from_uri ? from_uri : "", from_uri ? " " : "", ours);
    return 0;
}

static int pg_open(void **out, const char *uri, const es_open_options *opts, es_store *st)
{
    pg_store *s = es__calloc(1, sizeof *s);
    pg_conn *pc = NULL;
    es__pg_uri u = {0};
    int rc;
    if (!s)
        return es__err(ES_ENOMEM, "out of memory opening a store");
    s->st = st;
    s->timeout_ms = opts->timeout_ms ? opts->timeout_ms : 10000;
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    pthread_mutex_init(&s->cache_lock, NULL);
    pthread_mutex_init(&s->listen_lock, NULL);
    if ((rc = es__pg_parse_uri(&u, uri)) < 0)
        goto fail;
    s->conninfo = u.conninfo;
    u.conninfo = NULL;
    snprintf(s->schema, sizeof s->schema, "%s", u.schema);
    s->pool_max = u.pool_max;
    s->commit_delay_ms = u.commit_delay_ms;
    s->notify = u.notify;
    snprintf(s->channel, sizeof s->channel, "es_%s", s->schema);
    /* one implicit transaction: its commit need not wait for a WAL flush */
    snprintf(s->notify_sql, sizeof s->notify_sql,
             "SET LOCAL synchronous_commit TO off; NOTIFY \"%s\"", s->channel);
    rc = session_options(s, u.pq_options);
    es__pg_uri_free(&u);
    if (rc < 0)
        goto fail;
    if (opts->flags & ES_OPEN_NOSYNC) {
        rc = es__err(ES_EINVAL, "postgres: nosync is an lmdb option (set synchronous_commit on "
                                "the server instead)");
        goto fail;
    }
    if (!(s->idle = es__calloc((size_t)s->pool_max, sizeof *s->idle))) {
        rc = es__err(ES_ENOMEM, "out of memory opening a store");
        goto fail;
    }
    if ((rc = es__pg_connect(s, &pc)) < 0)
        goto fail;
    if (opts->flags & (ES_OPEN_READONLY | ES_OPEN_NOCREATE)) {
        char sql[200];
        PGresult *r;
        snprintf(sql, sizeof sql, "SELECT to_regclass('\"%s\".es_meta') IS NOT NULL", s->schema);
        if ((rc = es__pg_run_sql(s, pc, sql, &r)) < 0)
            goto fail;
        bool exists = PQgetvalue(r, 0, 0)[0] == 't';
        PQclear(r);
        if (!exists) {
            rc = es__err(ES_ENOTFOUND, "postgres: no eventsrc store in schema \"%s\"", s->schema);
            goto fail;
        }
    }
    if (!(opts->flags & ES_OPEN_READONLY) && (rc = es__pg_migrate(s, pc)) < 0)
        goto fail;
    if ((rc = es__pg_prepare_all(s, pc)) < 0)
        goto fail;
    s->idle[s->n_idle++] = pc;
    s->n_conns = 1;
    *out = s;
    return 0;
fail:
    es__pg_uri_free(&u);
    es__pg_drop_conn(pc);
    pg_close(s);
    return rc;
}

static void pg_close(void *be)
{
    pg_store *s = be;
    for (int i = 0; i < s->n_idle; i++)
        es__pg_drop_conn(s->idle[i]);
    free(s->idle);
    if (s->listener)
        PQfinish(s->listener);
    es__map_free(&s->cache, free);
    pthread_mutex_destroy(&s->lock);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->cache_lock);
    pthread_mutex_destroy(&s->listen_lock);
    free(s->conninfo);
    free(s->session);
    free(s);
}

/* ---- test hook ---- */

static int pg_tamper(void *be, uint64_t position, int field, size_t offset)
{
    pg_store *s = be;
    static const char *const cols[ES__F_COUNT] = {"stream", "seq",  "position", "time_us", "id",
                                                  "type",   "data", "meta",     "hash"};
    if (field < 0 || field >= ES__F_COUNT)
        return es__err(ES_EINVAL, "no such field");
    const char *col = cols[field];
    char tmpl[400];
    bool is_int = field == ES__F_SEQ || field == ES__F_POSITION || field == ES__F_TIME;
    if (is_int)
        snprintf(tmpl, sizeof tmpl,
                 "UPDATE @.events SET %s = %s # (1::bigint << (8 * (7 - $2::int8 %% 8))::int) "
                 "WHERE position = $1",
                 col, col);
    else
        snprintf(tmpl, sizeof tmpl,
                 "UPDATE @.events SET %s = set_byte(%s, ($2::int8 %% length(%s))::int,"
                 " get_byte(%s, ($2::int8 %% length(%s))::int) # 1) WHERE position = $1 AND "
                 "length(%s) > 0",
                 col, col, col, col, col, col);
    char *sql = es__pg_sql_for(s, tmpl);
    if (!sql)
        return es__err(ES_ENOMEM, "out of memory");
    pgp p = {0};
    p_i64(&p, pg_clamp_i64(position));
    p_i64(&p, (int64_t)(offset % (1u << 30)));
    Oid types[2] = {OID_INT8, OID_INT8};
    pg_conn *pc;
    int rc = es__pg_acquire(s, &pc);
    for (int again = 0; rc == 0; again++) {
        PGresult *r;
        if (!PQsendQueryParams(pc->c, sql, 2, types, p.v, p.l, p.f, 1)) {
            pc->broken = true;
            rc = es__err(ES_EUNAVAILABLE, "postgres: %s", es__pg_msg(pc->c));
        } else if ((rc = es__pg_finish(s, pc, &r)) == 0) {
            if (atoi(PQcmdTuples(r)) != 1)
                rc = es__err(ES_ENOTFOUND, "no event at position %llu (or the field is empty)",
                             (unsigned long long)position);
            PQclear(r);
        } else if (rc > 0 && is_int && !again) {
            /* the flipped number clashed with a unique key (seq 3 -> 2): flip
             * a high bit instead, as a forger would pick a free value */
            p.n = 1;
            p_i64(&p, 2);
            rc = 0;
            continue;
        } else if (rc > 0) {
            rc = es__err(ES_EIO, "postgres: tampering clashed with a unique key");
        }
        es__pg_release(s, pc);
        break;
    }
    free(sql);
    /* the cache may hold the old head hash; that is what a client would have */
    return rc;
}

const es__backend es__backend_pg = {
    .name = "postgres",
    .open = pg_open,
    .close = pg_close,
    .append = es__pg_append,
    .head = es__pg_head,
    .last_position = es__pg_last_position,
    .stream_cursor = es__pg_stream_cursor,
    .log_cursor = es__pg_log_cursor,
    .streams = es__pg_streams,
    .stats = es__pg_stats,
    .snap_put = es__pg_snap_put,
    .snap_get = es__pg_snap_get,
    .snap_list = es__pg_snap_list,
    .snap_del = es__pg_snap_del,
    .kv_get = es__pg_kv_get,
    .kv_cas = es__pg_kv_cas,
    .kv_cas_lazy = es__pg_kv_cas_lazy,
    .kv_list = es__pg_kv_list,
    .wait = es__pg_wait,
    .position_ceiling = es__pg_position_ceiling,
    .tamper = pg_tamper,
};
