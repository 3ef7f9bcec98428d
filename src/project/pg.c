/*
 * pg.c — the PostgreSQL target of projections ("postgres://…?schema=NAME").
 *
 * The model lives in a schema of its own (default: the projection's name),
 * checkpoint table included, and the connection's search_path is that
 * schema alone: the projection's SQL names tables unqualified, and a rebuild
 * can build the same names in another schema and swap the two by renaming,
 * in one transaction.
 *
 * Batches of one projection are serialised by a transaction-scoped advisory
 * lock on (schema, name), taken first in each batch's transaction; the
 * checkpoint is read after it (READ COMMITTED: each statement sees what
 * committed before it), so two projectors on one model never apply a batch
 * twice.  The swap takes the same lock of the live schema, so it never
 * lands inside a batch of a projector following the old model; that
 * projector's next batch resolves its tables by name (search_path), and the
 * server re-plans its prepared statements, so it continues on the new ones.
 */
#include "project_int.h"

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PG_SCHEMA_MAX 40 /* leaves room for "_rebuild_PID" in 63 bytes */

typedef struct pg_target {
    es_proj__target base; /* first: a target is a pg_target */
    PGconn *conn;
    char schema[PG_SCHEMA_MAX + 32]; /* the schema written to (a rebuild's own) */
    char live[PG_SCHEMA_MAX + 1];    /* the model's schema */
    bool rebuilding;                 /* schema is a rebuild not swapped in yet */
    bool meta_ok;                    /* the schema and its checkpoint table exist */
    bool retryable; /* the last failure was a deadlock or a serialization failure */
} pg_target;

static void no_notices(void *arg, const char *message)
{
    (void)arg;
    (void)message;
}

/* A server's message, without its trailing newline. */
static const char *pg_msg(PGconn *conn, const PGresult *res, char *buf, size_t cap)
{
    const char *m = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    if (!m || !*m)
        m = PQerrorMessage(conn);
    size_t n = strlen(m);
    while (n && (m[n - 1] == '\n' || m[n - 1] == ' '))
        n--;
    snprintf(buf, cap, "%.*s", (int)n, m);
    return buf;
}

static int pg_fail(pg_target *t, const PGresult *res, const char *what)
{
    char m[512];
    const char *code = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    t->retryable = code && (!strcmp(code, "40P01") || !strcmp(code, "40001"));
    return es_proj__err(ES_EIO, "%s: %s: %s", t->base.label, what,
                        pg_msg(t->conn, res, m, sizeof m));
}

/* Run one statement with text parameters; 0 when it did not fail.  The
 * result is handed back in *out when asked for (PQclear it). */
static int pg_run(pg_target *t, const char *sql, int n, const char *const *vals, PGresult **out,
                  const char *what)
{
    PGresult *res = PQexecParams(t->conn, sql, n, NULL, vals, NULL, NULL, 0);
    ExecStatusType st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        int rc = pg_fail(t, res, what);
        PQclear(res);
        return rc;
    }
    if (out)
        *out = res;
    else
        PQclear(res);
    return 0;
}

static bool valid_schema(const char *v, size_t n)
{
    if (n == 0 || n > PG_SCHEMA_MAX || !((v[0] >= 'a' && v[0] <= 'z') || v[0] == '_'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= '0' && v[i] <= '9') || v[i] == '_'))
            return false;
    return strncmp(v, "pg_", 3) != 0 && !(n == 18 && !memcmp(v, "information_schema", 18));
}

/*
 * Split the URI into what libpq takes (conninfo, the URI less `schema=`)
 * and the model's schema (default: the projection's name).
 */
static int parse_uri(const char *uri, const es_proj_def *def, char **conninfo,
                     char schema[PG_SCHEMA_MAX + 1])
{
    size_t n = strlen(uri);
    const char *q = strchr(uri, '?');
    char *out = malloc(n + 1);
    size_t o;
    bool given = false;

    if (!out)
        return es_proj__err(ES_ENOMEM, "out of memory");
    o = q ? (size_t)(q - uri) : n;
    memcpy(out, uri, o);
    for (const char *item = q ? q + 1 : NULL, *end; item && *item; item = *end ? end + 1 : NULL) {
        end = item + strcspn(item, "&");
        if ((size_t)(end - item) > 7 && !memcmp(item, "schema=", 7)) {
            const char *v = item + 7;
            size_t vl = (size_t)(end - v);
            if (given || !valid_schema(v, vl)) {
                free(out);
                return es_proj__err(ES_EINVAL,
                                    "postgres target: schema must be given once, 1..%d of a-z, "
                                    "0-9 and _ (not starting with a digit or pg_), not '%.*s'",
                                    PG_SCHEMA_MAX, (int)(vl > 60 ? 60 : vl), v);
            }
            memcpy(schema, v, vl);
            schema[vl] = '\0';
            given = true;
            continue;
        }
        char sep = o == (size_t)(q - uri) ? '?' : '&';
        out[o++] = sep;
        memcpy(out + o, item, (size_t)(end - item));
        o += (size_t)(end - item);
    }
    out[o] = '\0';
    if (!given) {
        if (!valid_schema(def->name, strlen(def->name))) {
            free(out);
            return es_proj__err(ES_EINVAL,
                                "postgres target: the projection's name '%s' is no schema name "
                                "(a-z, 0-9, _): give one with ?schema=NAME",
                                def->name);
        }
        snprintf(schema, PG_SCHEMA_MAX + 1, "%s", def->name);
    }
    *conninfo = out;
    return 0;
}

static int pg_connect(PGconn **out, const char *conninfo, const char *label)
{
    char m[512];
    PGconn *c = PQconnectdb(conninfo);
    *out = NULL;
    if (!c)
        return es_proj__err(ES_ENOMEM, "out of memory");
    if (PQstatus(c) != CONNECTION_OK) {
        int rc = es_proj__err(ES_EIO, "%s: %s", label, pg_msg(c, NULL, m, sizeof m));
        PQfinish(c);
        return rc;
    }
    PQsetNoticeProcessor(c, no_notices, NULL);
    *out = c;
    return 0;
}

/* A quoted identifier; NULL when out of memory (PQfreemem it). */
static char *ident(PGconn *c, const char *name)
{
    return PQescapeIdentifier(c, name, strlen(name));
}

/* Run SQL built from a format with one quoted identifier per %s. */
static int pg_exec_ids(pg_target *t, const char *fmt, const char *a, const char *b,
                       const char *what)
{
    char *qa = ident(t->conn, a), *qb = b ? ident(t->conn, b) : NULL;
    char sql[512];
    int rc;
    if (!qa || (b && !qb)) {
        PQfreemem(qa);
        PQfreemem(qb);
        return es_proj__err(ES_ENOMEM, "out of memory");
    }
    snprintf(sql, sizeof sql, fmt, qa, qb ? qb : "");
    rc = pg_run(t, sql, 0, NULL, NULL, what);
    PQfreemem(qa);
    PQfreemem(qb);
    return rc;
}

static int set_search_path(pg_target *t)
{
    return pg_exec_ids(t, "SET search_path TO %s%s", t->schema, NULL, "setting search_path");
}

/* The write lock of (schema, projection), for the current transaction. */
static int lock_model(pg_target *t, const char *schema)
{
    const char *v[2] = {schema, t->base.def->name};
    return pg_run(t,
                  "SELECT pg_advisory_xact_lock(hashtext('eventsrc_projection'), "
                  "hashtext($1 || '/' || $2))",
                  2, v, NULL, "locking the model");
}

static int pgt_begin(es_proj__target *base)
{
    pg_target *t = (pg_target *)base;
    int rc;
    if ((rc = pg_run(t, "BEGIN", 0, NULL, NULL, "BEGIN")) < 0)
        return rc;
    return lock_model(t, t->schema);
}

static void pgt_rollback(es_proj__target *base)
{
    pg_target *t = (pg_target *)base;
    if (t->conn && PQtransactionStatus(t->conn) != PQTRANS_IDLE)
        PQclear(PQexec(t->conn, "ROLLBACK"));
}

static const char sql_get_ckpt[] =
    "SELECT position, events, definition, updated_us FROM eventsrc_projection WHERE name = $1";

static int fetch_ckpt(const PGresult *res, const char *label, const char *name, es_proj__ckpt *c)
{
    memset(c, 0, sizeof *c);
    if (PQntuples(res) == 0)
        return 0;
    long long pos = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    long long n = strtoll(PQgetvalue(res, 0, 1), NULL, 10);
    if (pos < 0 || n < 0)
        return es_proj__err(ES_ECORRUPT, "%s: checkpoint of '%s' is negative", label, name);
    c->found = true;
    c->position = (uint64_t)pos;
    c->events = (uint64_t)n;
    c->updated_us = strtoll(PQgetvalue(res, 0, 3), NULL, 10);
    if (!PQgetisnull(res, 0, 2))
        snprintf(c->definition, sizeof c->definition, "%s", PQgetvalue(res, 0, 2));
    return 0;
}

static int pgt_read_ckpt(es_proj__target *base, es_proj__ckpt *c)
{
    pg_target *t = (pg_target *)base;
    const char *v[1] = {base->def->name};
    PGresult *res = NULL;
    int rc;
    memset(c, 0, sizeof *c);
    if (!t->meta_ok) {
        if ((rc = pg_exec_ids(t, "CREATE SCHEMA IF NOT EXISTS %s%s", t->schema, NULL,
                              "creating the model's schema")) < 0 ||
            (rc = pg_run(t,
                         "CREATE TABLE IF NOT EXISTS eventsrc_projection (name text PRIMARY KEY, "
                         "position bigint NOT NULL, events bigint NOT NULL, definition text, "
                         "updated_us bigint NOT NULL)",
                         0, NULL, NULL, "creating the checkpoint table")) < 0)
            return rc;
        t->meta_ok = true;
    }
    if ((rc = pg_run(t, sql_get_ckpt, 1, v, &res, "reading the checkpoint")) < 0)
        return rc;
    rc = fetch_ckpt(res, base->label, base->def->name, c);
    PQclear(res);
    return rc;
}

static int pgt_write_ckpt(es_proj__target *base, const es_proj__ckpt *c)
{
    pg_target *t = (pg_target *)base;
    char pos[24], n[24], now[24];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(pos, sizeof pos, "%llu", (unsigned long long)c->position);
    snprintf(n, sizeof n, "%llu", (unsigned long long)c->events);
    snprintf(now, sizeof now, "%lld", (long long)ts.tv_sec * 1000000 + ts.tv_nsec / 1000);
    const char *v[5] = {base->def->name, pos, n, c->definition[0] ? c->definition : NULL, now};
    return pg_run(t,
                  "INSERT INTO eventsrc_projection (name, position, events, definition, "
                  "updated_us) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET "
                  "position = excluded.position, events = excluded.events, definition = "
                  "excluded.definition, updated_us = excluded.updated_us",
                  5, v, NULL, "writing the checkpoint");
}

static int pgt_commit(es_proj__target *base)
{
    pg_target *t = (pg_target *)base;
    PGresult *res = NULL;
    int rc;
    /* COMMIT of a failed transaction answers ROLLBACK, not an error. */
    if ((rc = pg_run(t, "COMMIT", 0, NULL, &res, "COMMIT")) < 0)
        return rc;
    if (strcmp(PQcmdStatus(res), "COMMIT") != 0)
        rc = es_proj__err(ES_EIO, "%s: the transaction was rolled back", base->label);
    PQclear(res);
    return rc;
}

/*
 * Swap the rebuilt schema in: under the live model's lock, check that the
 * live schema holds only this projection, drop it and rename the rebuild's
 * schema to its name, in one transaction.
 */
static int pgt_swap_once(es_proj__target *base)
{
    pg_target *t = (pg_target *)base;
    PGresult *res = NULL;
    const char *v[2] = {t->live, base->def->name};
    int rc;

    if ((rc = pg_run(t, "BEGIN", 0, NULL, NULL, "BEGIN")) < 0 || (rc = lock_model(t, t->live)) < 0)
        goto fail;
    /* tables of the live schema; whether it has a checkpoint table */
    if ((rc = pg_run(
             t,
             "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = "
             "c.relnamespace WHERE n.nspname = $1::text AND c.relkind IN ('r', 'p', 'v', 'm', "
             "'f')), to_regclass(quote_ident($1::text) || '.eventsrc_projection') IS NOT NULL",
             1, v, &res, "checking the live model")) < 0)
        goto fail;
    long tables = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    bool has_meta = PQgetvalue(res, 0, 1)[0] == 't';
    PQclear(res);
    res = NULL;
    if (!has_meta && tables > 0) {
        rc = es_proj__err(ES_EINVAL, "%s: holds tables but no projection: not replaced",
                          base->label);
        goto fail;
    }
    if (has_meta) {
        char *qs = ident(t->conn, t->live);
        char sql[256];
        if (!qs) {
            rc = es_proj__err(ES_ENOMEM, "out of memory");
            goto fail;
        }
        snprintf(sql, sizeof sql, "SELECT name FROM %s.eventsrc_projection WHERE name <> $1", qs);
        PQfreemem(qs);
        if ((rc = pg_run(t, sql, 1, v + 1, &res, "checking the live model")) < 0)
            goto fail;
        if (PQntuples(res) > 0) {
            rc = es_proj__err(ES_EINVAL,
                              "%s: also holds projection '%s': a rebuild replaces the whole "
                              "schema, so it needs a schema of its own",
                              base->label, PQgetvalue(res, 0, 0));
            goto fail;
        }
        PQclear(res);
        res = NULL;
    }
    if ((rc = pg_exec_ids(t, "DROP SCHEMA IF EXISTS %s%s CASCADE", t->live, NULL,
                          "dropping the old model")) < 0 ||
        (rc = pg_exec_ids(t, "ALTER SCHEMA %s RENAME TO %s", t->schema, t->live,
                          "renaming the new model")) < 0 ||
        (rc = pgt_commit(base)) < 0)
        goto fail;
    memcpy(t->schema, t->live, sizeof t->live);
    t->rebuilding = false;
    return set_search_path(t);
fail:
    PQclear(res);
    pgt_rollback(base);
    return rc;
}

/* The swap drops the live schema while readers may hold its tables: the
 * server may pick the swap as a deadlock's victim.  Readers come and go, so
 * it is tried again (the transaction was rolled back whole). */
static int pgt_swap(es_proj__target *base)
{
    pg_target *t = (pg_target *)base;
    int rc;
    for (int tries = 1;; tries++) {
        t->retryable = false;
        rc = pgt_swap_once(base);
        if (rc == 0 || !t->retryable || tries == 5)
            return rc;
        struct timespec nap = {0, 20L * 1000000 * tries};
        nanosleep(&nap, NULL);
    }
}

static void pgt_close(es_proj__target *base)
{
    pg_target *t = (pg_target *)base;
    if (!t)
        return;
    if (t->conn) {
        es_proj__detach(base);
        pgt_rollback(base);
        /* A rebuild not swapped in leaves the old model as it was. */
        if (t->rebuilding && PQstatus(t->conn) == CONNECTION_OK)
            pg_exec_ids(t, "DROP SCHEMA IF EXISTS %s%s CASCADE", t->schema, NULL,
                        "dropping an unfinished rebuild");
        PQfinish(t->conn);
    }
    free(t);
}

static const es_proj__target_ops pg_ops = {pgt_begin,    pgt_read_ckpt, pgt_write_ckpt, pgt_commit,
                                           pgt_rollback, pgt_swap,      pgt_close};

int es_proj__pg_open(es_proj__target **out, const char *uri, const es_proj_def *def, bool rebuild)
{
    pg_target *t = calloc(1, sizeof *t);
    char *conninfo = NULL;
    int rc;

    *out = NULL;
    if (!t)
        return es_proj__err(ES_ENOMEM, "out of memory");
    t->base.ops = &pg_ops;
    t->base.def = def;
    t->base.db.kind = ES_PROJ_PG;
    if ((rc = parse_uri(uri, def, &conninfo, t->live)) < 0)
        goto done;
    snprintf(t->base.label, sizeof t->base.label, "postgres schema %s", t->live);
    if (rebuild)
        snprintf(t->schema, sizeof t->schema, "%s_rebuild_%ld", t->live, (long)getpid());
    else
        memcpy(t->schema, t->live, sizeof t->live);
    if ((rc = pg_connect(&t->conn, conninfo, t->base.label)) < 0)
        goto done;
    t->base.db.conn = t->conn;
    if (rebuild) {
        /* leftovers of a rebuild by an earlier process with this pid */
        if ((rc = pg_exec_ids(t, "DROP SCHEMA IF EXISTS %s%s CASCADE", t->schema, NULL,
                              "dropping an old rebuild")) < 0)
            goto done;
        t->rebuilding = true;
    }
    rc = set_search_path(t);
done:
    free(conninfo);
    if (rc < 0)
        pgt_close(&t->base);
    else
        *out = &t->base;
    return rc;
}

int es_proj__pg_peek(es_proj__ckpt *c, const char *uri, const es_proj_def *def)
{
    pg_target t;
    char *conninfo = NULL, *qs = NULL, sql[256];
    PGresult *res = NULL;
    const char *v[1];
    int rc;

    memset(c, 0, sizeof *c);
    memset(&t, 0, sizeof t);
    t.base.def = def;
    if ((rc = parse_uri(uri, def, &conninfo, t.live)) < 0)
        return rc;
    snprintf(t.base.label, sizeof t.base.label, "postgres schema %s", t.live);
    if ((rc = pg_connect(&t.conn, conninfo, t.base.label)) < 0)
        goto done;
    v[0] = t.live;
    if ((rc = pg_run(&t,
                     "SELECT to_regclass(quote_ident($1::text) || '.eventsrc_projection') IS NULL",
                     1, v, &res, "reading the checkpoint")) < 0)
        goto done;
    bool none = PQgetvalue(res, 0, 0)[0] == 't';
    PQclear(res);
    res = NULL;
    if (none)
        goto done;
    if (!(qs = ident(t.conn, t.live))) {
        rc = es_proj__err(ES_ENOMEM, "out of memory");
        goto done;
    }
    snprintf(sql, sizeof sql,
             "SELECT position, events, definition, updated_us FROM %s.eventsrc_projection "
             "WHERE name = $1",
             qs);
    v[0] = def->name;
    if ((rc = pg_run(&t, sql, 1, v, &res, "reading the checkpoint")) < 0)
        goto done;
    rc = fetch_ckpt(res, t.base.label, def->name, c);
done:
    PQclear(res);
    PQfreemem(qs);
    PQfinish(t.conn);
    free(conninfo);
    return rc;
}
