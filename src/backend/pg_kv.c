/*
 * pg_kv.c — the key-value table of the PostgreSQL store (subscriptions,
 * checkpoints, leases): one row per key with a version from a sequence;
 * every write is conditional on the version read (compare-and-set), so it
 * is one statement and needs no transaction of its own.
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <stdlib.h>

static int kv_run(pg_store *s, int stmt, const pgp *p, PGresult **out)
{
    pg_conn *pc;
    int rc = es__pg_acquire(s, &pc);
    if (rc < 0)
        return rc;
    for (int tries = 0; tries < 5; tries++)
        if ((rc = es__pg_run(s, pc, stmt, p, out)) != ES__PG_RETRY)
            break;
    es__pg_release(s, pc);
    if (rc > 0)
        rc = es__err(ES_EIO, "postgres: a record write kept racing with another");
    return rc < 0 ? rc : 0;
}

int es__pg_kv_get(void *be, const uint8_t *key, size_t klen, es_buf *val, uint64_t *version)
{
    pgp p = {0};
    PGresult *r;
    es_buf_reset(val);
    *version = 0;
    p_bytes(&p, key, klen);
    int rc = kv_run(be, S_KV_GET, &p, &r);
    if (rc < 0)
        return rc;
    if (PQntuples(r) == 1) {
        size_t len = (size_t)PQgetlength(r, 0, 0);
        if (len && es_buf_put(val, PQgetvalue(r, 0, 0), len) < 0)
            rc = es__err(ES_ENOMEM, "out of memory reading a record");
        *version = (uint64_t)g_i64(r, 0, 1);
    }
    PQclear(r);
    return rc;
}

static int kv_cas(void *be, const uint8_t *key, size_t klen, uint64_t expected, const uint8_t *val,
                  size_t vlen, uint64_t *version, bool lazy)
{
    pgp p = {0};
    PGresult *r;
    int stmt, rc;
    p_bytes(&p, key, klen);
    if (!val) {
        stmt = S_KV_DELETE;
        p_i64(&p, pg_clamp_i64(expected));
    } else if (expected == 0) {
        stmt = S_KV_INSERT;
        p_bytes(&p, val, vlen);
    } else {
        stmt = lazy ? S_KV_UPDATE_LAZY : S_KV_UPDATE;
        p_bytes(&p, val, vlen);
        p_i64(&p, pg_clamp_i64(expected));
    }
    if (!val && expected == 0) { /* deleting what is absent: is it absent? */
        es_buf b = ES_BUF_INIT;
        uint64_t cur;
        rc = es__pg_kv_get(be, key, klen, &b, &cur);
        es_buf_free(&b);
        if (rc == 0 && cur)
            rc = es__err(ES_ECONFLICT, "record changed since it was read");
        *version = 0;
        return rc;
    }
    if ((rc = kv_run(be, stmt, &p, &r)) < 0)
        return rc;
    if (PQntuples(r) != 1)
        rc = es__err(ES_ECONFLICT, "record changed since it was read");
    else
        *version = val ? (uint64_t)g_i64(r, 0, 0) : 0;
    PQclear(r);
    return rc;
}

int es__pg_kv_cas(void *be, const uint8_t *key, size_t klen, uint64_t expected, const uint8_t *val,
                  size_t vlen, uint64_t *version)
{
    return kv_cas(be, key, klen, expected, val, vlen, version, false);
}

int es__pg_kv_cas_lazy(void *be, const uint8_t *key, size_t klen, uint64_t expected,
                       const uint8_t *val, size_t vlen, uint64_t *version)
{
    return kv_cas(be, key, klen, expected, val, vlen, version, true);
}

int es__pg_kv_list(void *be, const uint8_t *prefix, size_t plen,
                   int (*fn)(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                             uint64_t version, void *payload),
                   void *payload)
{
    pgp p = {0};
    PGresult *r;
    p_bytes(&p, prefix, plen);
    p_i32(&p, (int32_t)plen);
    int rc = kv_run(be, S_KV_LIST, &p, &r);
    if (rc < 0)
        return rc;
    /* the rows are ours once fetched: fn may call back into the store */
    for (int i = 0; rc == 0 && i < PQntuples(r); i++) {
        int u = fn((const uint8_t *)PQgetvalue(r, i, 0), (size_t)PQgetlength(r, i, 0),
                   (const uint8_t *)PQgetvalue(r, i, 1), (size_t)PQgetlength(r, i, 1),
                   (uint64_t)g_i64(r, i, 2), payload);
        if (u)
            rc = es__cb_rc(u);
    }
    PQclear(r);
    return rc;
}
