/*
 * pg_snap.c — snapshot records of the PostgreSQL store, one row per
 * (snapshot key, seq).
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <stdlib.h>

/* ---- snapshots ---- */

static int snap_run(pg_store *s, int stmt, const pgp *p, PGresult **out)
{
    pg_conn *pc;
    PGresult *r = NULL;
    int rc = es__pg_acquire(s, &pc);
    if (rc < 0)
        return rc;
    for (int tries = 0; tries < 5; tries++)
        if ((rc = es__pg_run(s, pc, stmt, p, &r)) != ES__PG_RETRY)
            break;
    es__pg_release(s, pc);
    if (rc > 0)
        rc = es__err(ES_EIO, "postgres: a snapshot write kept racing with another");
    if (rc < 0)
        return rc;
    if (out)
        *out = r;
    else
        PQclear(r);
    return 0;
}

int es__pg_snap_put(void *be, const uint8_t *skey, size_t sklen, const es__snap *snap)
{
    pgp p = {0};
    p_bytes(&p, skey, sklen);
    p_i64(&p, pg_clamp_i64(snap->seq));
    p_i32(&p, snap->state);
    p_i64(&p, snap->time_us);
    p_bytes(&p, snap->data, snap->len);
    return snap_run(be, S_SNAP_PUT, &p, NULL);
}

int es__pg_snap_get(void *be, const uint8_t *skey, size_t sklen, uint64_t max_seq, int64_t max_time,
                    es__snap *out, es_buf *buf)
{
    pgp p = {0};
    PGresult *r;
    p_bytes(&p, skey, sklen);
    p_i64(&p, pg_clamp_i64(max_seq));
    p_i64(&p, max_time);
    int rc = snap_run(be, S_SNAP_GET, &p, &r);
    if (rc < 0)
        return rc;
    if (PQntuples(r) == 0) {
        PQclear(r);
        return ES_ENOTFOUND;
    }
    es_buf_reset(buf);
    size_t len = (size_t)PQgetlength(r, 0, 3);
    if (len && es_buf_put(buf, PQgetvalue(r, 0, 3), len) < 0) {
        PQclear(r);
        return es__err(ES_ENOMEM, "out of memory reading a snapshot");
    }
    out->state = (uint8_t)g_i32(r, 0, 0);
    out->seq = (uint64_t)g_i64(r, 0, 1);
    out->time_us = g_i64(r, 0, 2);
    out->data = buf->data;
    out->len = len;
    PQclear(r);
    return 0;
}

int es__pg_snap_list(void *be, const uint8_t *skey, size_t sklen, uint64_t *seqs, size_t cap,
                     size_t *n)
{
    pgp p = {0};
    PGresult *r;
    p_bytes(&p, skey, sklen);
    p_i64(&p, pg_clamp_i64(cap));
    int rc = snap_run(be, S_SNAP_LIST, &p, &r);
    if (rc < 0)
        return rc;
    *n = 0;
    for (int i = 0; i < PQntuples(r) && *n < cap; i++)
        seqs[(*n)++] = (uint64_t)g_i64(r, i, 0);
    PQclear(r);
    return 0;
}

int es__pg_snap_del(void *be, const uint8_t *skey, size_t sklen, uint64_t seq)
{
    pgp p = {0};
    p_bytes(&p, skey, sklen);
    p_i64(&p, pg_clamp_i64(seq));
    return snap_run(be, S_SNAP_DEL, &p, NULL);
}
