/*
 * pg_read.c — reads of the PostgreSQL store: heads, positions, stats, the
 * paged stream and log cursors, the stream listing, and waiting for new
 * events with LISTEN/NOTIFY and polling.
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- reads ---- */

int es__pg_head(void *be, const uint8_t *stream, size_t len, uint64_t *out)
{
    pg_store *s = be;
    pg_conn *pc;
    int rc = es__pg_acquire(s, &pc);
    if (rc < 0)
        return rc;
    rc = es__pg_head_of(s, pc, stream, len, out);
    es__pg_release(s, pc);
    return rc;
}

static int simple_i64(pg_store *s, int stmt, const pgp *p, int64_t *out, int ncols)
{
    pg_conn *pc;
    PGresult *r;
    int rc = es__pg_acquire(s, &pc);
    if (rc < 0)
        return rc;
    rc = es__pg_run(s, pc, stmt, p, &r);
    es__pg_release(s, pc);
    if (rc > 0)
        rc = es__err(ES_EIO, "postgres: a concurrent change interfered");
    if (rc < 0)
        return rc;
    for (int i = 0; i < ncols; i++)
        out[i] = PQgetisnull(r, 0, i) ? 0 : g_i64(r, 0, i);
    PQclear(r);
    return 0;
}

int es__pg_last_position(void *be, uint64_t *out)
{
    int64_t v;
    int rc = simple_i64(be, S_LASTPOS, NULL, &v, 1);
    if (rc == 0)
        *out = (uint64_t)v;
    return rc;
}

int es__pg_position_ceiling(void *be, uint64_t *out)
{
    int64_t v;
    int rc = simple_i64(be, S_CEILING, NULL, &v, 1);
    if (rc == 0)
        *out = (uint64_t)v;
    return rc;
}

int es__pg_stats(void *be, es_store_stats *out)
{
    int64_t v[5];
    int rc = simple_i64(be, S_STATS, NULL, v, 5);
    if (rc < 0)
        return rc;
    out->events = (uint64_t)v[0];
    out->streams = (uint64_t)v[1];
    out->last_position = (uint64_t)v[2];
    out->snapshots = (uint64_t)v[3];
    out->bytes = (uint64_t)v[4];
    return 0;
}

/* A cursor reads pages of rows; events point into the current page. */
typedef struct pg_cursor {
    es_cursor base;
    pg_store *s;
    bool log;
    uint8_t key[ES_MAX_KEY];
    size_t key_len;
    int backward;
    uint64_t next; /* next seq or position to ask for */
    uint64_t stop; /* stream: last seq */
    uint64_t left; /* stream: events still wanted (0: no limit) */
    uint8_t *prefix;
    size_t prefix_len;
    char *type;
    size_t type_len;
    PGresult *page;
    int row, rows;
    int page_rows; /* rows to ask for next */
    bool done;
    es_event ev;
    char type_buf[ES_MAX_TYPE + 1];
} pg_cursor;

static int fetch_page(pg_cursor *c)
{
    pg_store *s = c->s;
    pg_conn *pc;
    pgp p = {0};
    int rc;
    PQclear(c->page);
    c->page = NULL;
    c->row = c->rows = 0;
    if (c->page_rows == 0)
        c->page_rows = PG_PAGE;
    int want = c->page_rows;
    if (c->log) {
        p_i64(&p, (int64_t)c->next);
        p_i64(&p, want);
        if (c->type)
            p_bytes(&p, c->type, c->type_len);
        else
            p_null(&p);
        if (c->prefix_len)
            p_bytes(&p, c->prefix, c->prefix_len);
        else
            p_null(&p);
    } else {
        if (c->left && c->left < (uint64_t)want)
            want = (int)c->left;
        p_bytes(&p, c->key, c->key_len);
        p_i64(&p, (int64_t)c->next);
        p_i64(&p, (int64_t)c->stop);
        p_i64(&p, (int64_t)want);
    }
    if ((rc = es__pg_acquire(s, &pc)) < 0)
        return rc;
    int stmt = c->log ? S_LOG : c->backward ? S_STREAM_BWD : S_STREAM_FWD;
    rc = es__pg_run(s, pc, stmt, &p, &c->page);
    es__pg_release(s, pc);
    if (rc > 0)
        rc = es__err(ES_EIO, "postgres: a concurrent change interfered with a read");
    if (rc < 0)
        return rc;
    c->rows = PQntuples(c->page);
    if (c->rows < want)
        c->done = true; /* a short page: the end, as of this read */
    /* a long read takes fewer, larger round trips, within a memory bound */
    size_t bytes = 0;
    for (int i = 0; i < c->rows; i++)
        bytes += (size_t)PQgetlength(c->page, i, 6) + (size_t)PQgetlength(c->page, i, 7);
    if (c->page_rows < PG_PAGE_MAX && bytes < PG_PAGE_BYTES / 4)
        c->page_rows *= 4;
    return 0;
}

static int fill_event(pg_cursor *c, PGresult *r, int row)
{
    es_event *ev = &c->ev;
    ev->position = (uint64_t)g_i64(r, row, 0);
    ev->stream = (const uint8_t *)PQgetvalue(r, row, 1);
    ev->stream_len = (size_t)PQgetlength(r, row, 1);
    ev->seq = (uint64_t)g_i64(r, row, 2);
    ev->time_us = g_i64(r, row, 3);
    size_t tl = (size_t)PQgetlength(r, row, 5);
    if (PQgetlength(r, row, 4) != ES_ID_SIZE || PQgetlength(r, row, 8) != ES_HASH_SIZE || tl == 0 ||
        tl > ES_MAX_TYPE)
        return es__err(ES_ECORRUPT, "postgres: the event at position %llu has a malformed field",
                       (unsigned long long)ev->position);
    memcpy(ev->id, PQgetvalue(r, row, 4), ES_ID_SIZE);
    memcpy(c->type_buf, PQgetvalue(r, row, 5), tl);
    c->type_buf[tl] = '\0';
    ev->type = c->type_buf;
    ev->type_len = tl;
    ev->data = (const uint8_t *)PQgetvalue(r, row, 6);
    ev->data_len = (size_t)PQgetlength(r, row, 6);
    ev->meta = (const uint8_t *)PQgetvalue(r, row, 7);
    ev->meta_len = (size_t)PQgetlength(r, row, 7);
    memcpy(ev->hash, PQgetvalue(r, row, 8), ES_HASH_SIZE);
    return 0;
}

static int pg_cursor_next(const es_event **out, es_cursor *cur)
{
    pg_cursor *c = (pg_cursor *)cur;
    int rc;
    if (c->row >= c->rows) {
        if (c->done)
            return ES_ITEROVER;
        if ((rc = fetch_page(c)) < 0)
            return rc;
        if (c->rows == 0)
            return ES_ITEROVER;
    }
    if ((rc = fill_event(c, c->page, c->row++)) < 0)
        return rc;
    if (c->log) {
        c->next = c->ev.position + 1;
    } else {
        c->next = c->backward ? c->ev.seq - 1 : c->ev.seq + 1;
        if ((c->backward && c->ev.seq <= 1) || (c->left && --c->left == 0))
            c->done = true; /* nothing more after this page */
    }
    *out = &c->ev;
    return 0;
}

static void pg_cursor_free(es_cursor *cur)
{
    pg_cursor *c = (pg_cursor *)cur;
    PQclear(c->page);
    free(c->prefix);
    free(c->type);
    free(c);
}

static const es__cursor_ops pg_cursor_ops = {pg_cursor_next, pg_cursor_free};

int es__pg_stream_cursor(es_cursor **out, void *be, const uint8_t *stream, size_t len,
                         const es_read_options *opts)
{
    pg_cursor *c = es__calloc(1, sizeof *c);
    if (!c)
        return es__err(ES_ENOMEM, "out of memory for a cursor");
    c->base.ops = &pg_cursor_ops;
    c->s = be;
    memcpy(c->key, stream, len);
    c->key_len = len;
    c->backward = opts->backward;
    c->next = (uint64_t)pg_clamp_i64(opts->from_seq);
    c->stop = (uint64_t)pg_clamp_i64(opts->to_seq);
    c->left = opts->limit;
    *out = &c->base;
    return 0;
}

int es__pg_log_cursor(es_cursor **out, void *be, const es_log_options *opts)
{
    pg_cursor *c = es__calloc(1, sizeof *c);
    if (!c)
        return es__err(ES_ENOMEM, "out of memory for a cursor");
    c->base.ops = &pg_cursor_ops;
    c->s = be;
    c->log = true;
    c->next = (uint64_t)pg_clamp_i64(opts->from_position);
    /* a limit sizes the first page (a reader that wants 100 fetches 100);
     * pages grow from there, as the time range is applied above us */
    if (opts->limit && opts->limit < PG_PAGE)
        c->page_rows = (int)opts->limit;
    if (opts->prefix_len) {
        if (!(c->prefix = es__malloc(opts->prefix_len)))
            goto nomem;
        memcpy(c->prefix, opts->prefix, opts->prefix_len);
        c->prefix_len = opts->prefix_len;
    }
    if (opts->type) {
        c->type_len = strlen(opts->type);
        if (!(c->type = es__strdup(opts->type)))
            goto nomem;
    }
    *out = &c->base;
    return 0;
nomem:
    pg_cursor_free(&c->base);
    return es__err(ES_ENOMEM, "out of memory for a cursor");
}

int es__pg_streams(void *be, const void *prefix, size_t prefix_len, es_stream_fn fn, void *payload)
{
    pg_store *s = be;
    uint8_t from[ES_MAX_KEY + 1];
    size_t from_len = prefix_len;
    int rc = 0;
    if (prefix_len)
        memcpy(from, prefix, prefix_len);
    for (;;) {
        pg_conn *pc;
        PGresult *r;
        pgp p = {0};
        p_bytes(&p, from, from_len);
        p_i64(&p, PG_PAGE);
        if ((rc = es__pg_acquire(s, &pc)) < 0)
            return rc;
        rc = es__pg_run(s, pc, S_STREAMS, &p, &r);
        es__pg_release(s, pc);
        if (rc > 0)
            rc = es__err(ES_EIO, "postgres: a concurrent change interfered with a read");
        if (rc < 0)
            return rc;
        int rows = PQntuples(r);
        for (int i = 0; i < rows; i++) {
            const uint8_t *k = (const uint8_t *)PQgetvalue(r, i, 0);
            size_t kl = (size_t)PQgetlength(r, i, 0);
            if (!es__has_prefix(k, kl, prefix, prefix_len) || kl > ES_MAX_KEY) {
                PQclear(r);
                return 0;
            }
            int u = fn(k, kl, (uint64_t)g_i64(r, i, 1), payload);
            if (u) {
                PQclear(r);
                return es__cb_rc(u);
            }
            if (i == rows - 1) {
                /* the next page starts right after this key: key || 0x00 */
                memcpy(from, k, kl);
                from[kl] = 0;
                from_len = kl + 1;
            }
        }
        PQclear(r);
        if (rows < PG_PAGE)
            return 0;
    }
}

/* ---- waiting for new events: LISTEN/NOTIFY, with polling ---- */

int es__pg_wait(void *be, uint64_t after, int timeout_ms)
{
    pg_store *s = be;
    int64_t deadline = es__pg_mono_ms() + timeout_ms;
    int rc, nap = 5; /* poll at 5, 10, 20 … up to 100 ms; a notification wakes at once */
    for (;;) {
        uint64_t last = 0;
        if ((rc = es__pg_last_position(s, &last)) < 0)
            return rc;
        if (last > after)
            return 0;
        int64_t left = deadline - es__pg_mono_ms();
        if (left <= 0)
            return es__err(ES_ETIMEDOUT, "es_log_wait: nothing past position %llu within %d ms",
                           (unsigned long long)after, timeout_ms);
        /* Sleep on the listener until a notification or the poll interval:
         * without notifications (a transaction-pooling proxy, notify=0) the
         * interval alone keeps tailing going. */
        int slice = nap;
        if (slice > left)
            slice = (int)left;
        if (nap < 100)
            nap *= 2;
        pthread_mutex_lock(&s->listen_lock);
        if (s->listener && PQstatus(s->listener) != CONNECTION_OK) {
            PQfinish(s->listener);
            s->listener = NULL;
        }
        if (!s->listener) {
            pg_conn *pc = NULL;
            if (es__pg_connect(s, &pc) == 0) {
                char sql[120];
                snprintf(sql, sizeof sql, "LISTEN \"%s\"", s->channel);
                PGresult *r = PQexec(pc->c, sql);
                if (PQresultStatus(r) == PGRES_COMMAND_OK) {
                    s->listener = pc->c;
                    pc->c = NULL;
                }
                PQclear(r);
                es__pg_drop_conn(pc);
            }
            es_error_clear();
        }
        PGconn *l = s->listener;
        if (l) {
            struct pollfd pfd = {PQsocket(l), POLLIN, 0};
            if (poll(&pfd, 1, slice) > 0)
                PQconsumeInput(l);
            PGnotify *nf;
            while ((nf = PQnotifies(l)))
                PQfreemem(nf);
        }
        pthread_mutex_unlock(&s->listen_lock);
        if (!l) {
            struct timespec ts = {0, (long)slice * 1000000};
            nanosleep(&ts, NULL);
        }
    }
}
