/*
 * pg_sql.c — the PostgreSQL store's SQL: the prepared statements, the
 * migrations that create and upgrade a schema, and the substitution of the
 * schema's name into both.
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- statements ---- */

/* The log's horizon: no position below it can still be committed. */
#define HORIZON                                                                                    \
    "(pg_snapshot_xmin(pg_current_snapshot())::text::bigint * " PG_SQL_INT(PG_POS_SHIFT) ")"
#define EVCOLS "position, stream, seq, time_us, id, type, data, meta, hash"

const pg_stmt es__pg_stmts[S_COUNT] = {
    [S_APPEND] = {"es_append",
                  "SELECT status, head, hash, time_us, first_position, server_us FROM "
                  "@.es_append($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                  14,
                  {OID_BYTEA, OID_INT8, OID_INT8, OID_BYTEA, OID_INT8, OID_BOOL, OID_INT4,
                   OID_BYTEA_ARRAY, OID_BYTEA_ARRAY, OID_BYTEA_ARRAY, OID_BYTEA_ARRAY,
                   OID_BYTEA_ARRAY, OID_INT4, OID_BOOL}},
    [S_HEADS] = {"es_heads",
                 "SELECT stream, head, hash, time_us FROM @.streams WHERE stream = ANY($1)",
                 1,
                 {OID_BYTEA_ARRAY}},
    [S_APPEND_BATCH] = {"es_append_batch",
                        "SELECT status, bad, head, base, server_us FROM @.es_append_batch($1, $2,"
                        " $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                        14,
                        {OID_BYTEA_ARRAY, OID_INT8_ARRAY, OID_INT8_ARRAY, OID_BYTEA_ARRAY,
                         OID_INT4_ARRAY, OID_INT8, OID_BOOL, OID_BYTEA_ARRAY, OID_BYTEA_ARRAY,
                         OID_BYTEA_ARRAY, OID_BYTEA_ARRAY, OID_BYTEA_ARRAY, OID_INT4, OID_BOOL}},
    [S_HEAD] = {"es_head", "SELECT head FROM @.streams WHERE stream = $1", 1, {OID_BYTEA}},
    [S_ID] = {"es_id",
              "SELECT stream, seq, position, time_us FROM @.events WHERE id = $1",
              1,
              {OID_BYTEA}},
    [S_CEILING] = {"es_ceiling",
                   "SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint * " PG_SQL_INT(
                       PG_POS_SHIFT),
                   0,
                   {0}},
    [S_LASTPOS] =
        {"es_lastpos",
         "SELECT coalesce(max(position), 0)::bigint FROM @.events WHERE position < " HORIZON,
         0,
         {0}},
    [S_STREAM_FWD] = {"es_stream_fwd",
                      "SELECT " EVCOLS " FROM @.events WHERE stream = $1 AND seq >= $2 AND "
                      "seq <= $3 ORDER BY seq LIMIT $4",
                      4,
                      {OID_BYTEA, OID_INT8, OID_INT8, OID_INT8}},
    [S_STREAM_BWD] = {"es_stream_bwd",
                      "SELECT " EVCOLS " FROM @.events WHERE stream = $1 AND seq <= $2 AND "
                      "seq >= $3 ORDER BY seq DESC LIMIT $4",
                      4,
                      {OID_BYTEA, OID_INT8, OID_INT8, OID_INT8}},
    [S_LOG] = {"es_log",
               "SELECT " EVCOLS " FROM @.events WHERE position >= $1 AND position < " HORIZON
               " AND ($3::bytea IS NULL OR type = $3)"
               " AND ($4::bytea IS NULL OR substring(stream FROM 1 FOR length($4)) = $4)"
               " ORDER BY position LIMIT $2",
               4,
               {OID_INT8, OID_INT8, OID_BYTEA, OID_BYTEA}},
    [S_STREAMS] = {"es_streams",
                   "SELECT stream, head FROM @.streams WHERE stream >= $1 AND head > 0 "
                   "ORDER BY stream LIMIT $2",
                   2,
                   {OID_BYTEA, OID_INT8}},
    [S_STATS] = {"es_stats",
                 "SELECT (SELECT count(*) FROM @.events)::bigint,"
                 " (SELECT count(*) FROM @.streams WHERE head > 0)::bigint,"
                 " (SELECT coalesce(max(position), 0) FROM @.events WHERE position < " HORIZON
                 ")::bigint,"
                 " (SELECT count(*) FROM @.snapshots)::bigint,"
                 " (pg_total_relation_size('@.events') + pg_total_relation_size('@.streams')"
                 " + pg_total_relation_size('@.snapshots'))::bigint",
                 0,
                 {0}},
    [S_SNAP_PUT] = {"es_snap_put",
                    "INSERT INTO @.snapshots (skey, seq, state, time_us, data) VALUES ($1, $2, "
                    "$3::int4::smallint, $4, $5) ON CONFLICT (skey, seq) DO UPDATE SET state = "
                    "excluded.state, time_us = excluded.time_us, data = excluded.data",
                    5,
                    {OID_BYTEA, OID_INT8, OID_INT4, OID_INT8, OID_BYTEA}},
    [S_SNAP_GET] = {"es_snap_get",
                    "SELECT state::int4, seq, time_us, data FROM @.snapshots WHERE skey = $1 AND "
                    "seq <= $2 AND time_us <= $3 ORDER BY seq DESC LIMIT 1",
                    3,
                    {OID_BYTEA, OID_INT8, OID_INT8}},
    [S_SNAP_LIST] = {"es_snap_list",
                     "SELECT seq FROM @.snapshots WHERE skey = $1 ORDER BY seq LIMIT $2",
                     2,
                     {OID_BYTEA, OID_INT8}},
    [S_SNAP_DEL] = {"es_snap_del",
                    "DELETE FROM @.snapshots WHERE skey = $1 AND seq = $2",
                    2,
                    {OID_BYTEA, OID_INT8}},
    [S_KV_GET] = {"es_kv_get", "SELECT value, version FROM @.kv WHERE key = $1", 1, {OID_BYTEA}},
    [S_KV_INSERT] = {"es_kv_insert",
                     "INSERT INTO @.kv (key, value, version) VALUES ($1, $2, "
                     "nextval('@.kv_version')) ON CONFLICT (key) DO NOTHING RETURNING version",
                     2,
                     {OID_BYTEA, OID_BYTEA}},
    [S_KV_UPDATE] = {"es_kv_update",
                     "UPDATE @.kv SET value = $2, version = nextval('@.kv_version') WHERE key = "
                     "$1 AND version = $3 RETURNING version",
                     3,
                     {OID_BYTEA, OID_BYTEA, OID_INT8}},
    /* the same, committed without waiting for the WAL flush: set_config(...,
     * true) lasts to the end of the statement's own transaction */
    [S_KV_UPDATE_LAZY] = {"es_kv_update_lazy",
                          "UPDATE @.kv SET value = $2, version = nextval('@.kv_version') FROM "
                          "(SELECT set_config('synchronous_commit', 'off', true)) AS lazy WHERE "
                          "key = $1 AND version = $3 RETURNING version",
                          3,
                          {OID_BYTEA, OID_BYTEA, OID_INT8}},
    [S_KV_DELETE] = {"es_kv_delete",
                     "DELETE FROM @.kv WHERE key = $1 AND version = $2 RETURNING version",
                     2,
                     {OID_BYTEA, OID_INT8}},
    [S_KV_LIST] = {"es_kv_list",
                   "SELECT key, value, version FROM @.kv WHERE substring(key from 1 for $2) = $1 "
                   "ORDER BY key",
                   2,
                   {OID_BYTEA, OID_INT4}},
};

/*
 * Migration 1: the tables and es_append, one stream's append in two
 * statements: lock the stream's row and look for the ids, then write the
 * events and the head.  Both functions carry enable_seqscan=off: plpgsql
 * caches a generic plan after a few calls, planned for the tables as they
 * were then (on a new store, a sequential scan of events for the id check).
 */
static const char *const migration1 =
    "CREATE TABLE @.events ("
    " position bigint PRIMARY KEY,"
    " stream bytea NOT NULL,"
    " seq bigint NOT NULL,"
    " time_us bigint NOT NULL,"
    " id bytea NOT NULL,"
    " type bytea NOT NULL,"
    " data bytea NOT NULL,"
    " meta bytea NOT NULL,"
    " hash bytea NOT NULL,"
    " CONSTRAINT events_stream_seq UNIQUE (stream, seq),"
    " CONSTRAINT events_id UNIQUE (id));\n"
    "CREATE TABLE @.streams ("
    " stream bytea PRIMARY KEY,"
    " head bigint NOT NULL,"
    " hash bytea NOT NULL,"
    " time_us bigint NOT NULL);\n"
    "CREATE TABLE @.snapshots ("
    " skey bytea NOT NULL,"
    " seq bigint NOT NULL,"
    " state smallint NOT NULL,"
    " time_us bigint NOT NULL,"
    " data bytea NOT NULL,"
    " PRIMARY KEY (skey, seq));\n"
    "CREATE FUNCTION @.es_append(p_stream bytea, p_expected bigint,"
    " p_prev_seq bigint, p_prev_hash bytea, p_time bigint, p_check_time boolean,"
    " p_base integer, p_ids bytea[], p_types bytea[], p_data bytea[], p_meta bytea[],"
    " p_hashes bytea[], p_delay_ms integer, p_notify boolean,"
    " OUT status integer, OUT head bigint, OUT hash bytea, OUT time_us bigint,"
    " OUT first_position bigint, OUT server_us bigint)\n"
    "LANGUAGE plpgsql AS $es$\n"
    "#variable_conflict use_column\n"
    "DECLARE\n"
    "  n integer := cardinality(p_ids);\n"
    "  h bigint; hh bytea; ht bigint; dup boolean;\n"
    "BEGIN\n"
    "  server_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;\n"
    "  SELECT s.head, s.hash, s.time_us,\n"
    "         EXISTS (SELECT 1 FROM @.events e WHERE e.id = ANY (p_ids))\n"
    "    INTO h, hh, ht, dup FROM @.streams s WHERE s.stream = p_stream FOR UPDATE;\n"
    "  IF NOT FOUND THEN\n"
    "    h := 0; hh := NULL; ht := NULL;\n"
    "    dup := EXISTS (SELECT 1 FROM @.events e WHERE e.id = ANY (p_ids));\n"
    "  END IF;\n"
    "  status := " PG_SQL_INT(
        PG_DONE) "; head := h; hash := hh; time_us := ht;\n"
                 "  IF dup THEN status := " PG_SQL_INT(
                     PG_IDS_EXIST) "; RETURN; END IF;\n"
                                   "  IF (p_expected = " PG_SQL_INT(
                                       PG_EXPECT_EXISTS) " AND h = 0)"
                                                         " OR (p_expected >= 0 AND h <> "
                                                         "p_expected) THEN\n"
                                                         "    status := " PG_SQL_INT(
                                                             PG_CONFLICT) "; RETURN;\n"
                                                                          "  END IF;\n"
                                                                          "  IF h <> p_prev_seq OR "
                                                                          "hh IS DISTINCT FROM "
                                                                          "p_prev_hash OR p_time < "
                                                                          "ht\n"
                                                                          "     OR (p_check_time "
                                                                          "AND p_time IS DISTINCT "
                                                                          "FROM ht\n"
                                                                          "         AND abs(p_time "
                                                                          "- server_us) "
                                                                          "> " PG_SQL_INT(
                                                                              PG_CLOCK_SLACK_US) ")"
                                                                                                 " "
                                                                                                 "T"
                                                                                                 "H"
                                                                                                 "E"
                                                                                                 "N"
                                                                                                 "\n"
                                                                                                 " "
                                                                                                 " "
                                                                                                 " "
                                                                                                 " "
                                                                                                 "s"
                                                                                                 "t"
                                                                                                 "a"
                                                                                                 "t"
                                                                                                 "u"
                                                                                                 "s"
                                                                                                 " "
                                                                                                 ":"
                                                                                                 "="
                                                                                                 " " PG_SQL_INT(
                                                                                                     PG_STALE) "; RETURN;\n"
                                                                                                               "  END IF;\n"
                                                                                                               "  first_position := (pg_current_xact_id()::text::bigint) * " PG_SQL_INT(
                                                                                                                   PG_POS_SHIFT) " + p_base;\n"
                                                                                                                                 "  WITH ins AS (\n"
                                                                                                                                 "    INSERT INTO @.events (position, stream, seq, time_us, id, type, data, meta, hash)\n"
                                                                                                                                 "    SELECT first_position + ev.i - 1, p_stream, h + ev.i, p_time, ev.id, ev.type,\n"
                                                                                                                                 "           ev.data, ev.meta, ev.hash\n"
                                                                                                                                 "      FROM unnest(p_ids, p_types, p_data, p_meta, p_hashes)\n"
                                                                                                                                 "           WITH ORDINALITY AS ev(id, type, data, meta, hash, i))\n"
                                                                                                                                 "  INSERT INTO @.streams AS st (stream, head, hash, time_us)\n"
                                                                                                                                 "  VALUES (p_stream, h + n, p_hashes[n], p_time)\n"
                                                                                                                                 "  ON CONFLICT (stream) DO UPDATE\n"
                                                                                                                                 "    SET head = excluded.head, hash = excluded.hash, time_us = excluded.time_us;\n"
                                                                                                                                 "  IF p_notify THEN PERFORM pg_notify('^', ''); END IF;\n"
                                                                                                                                 "  IF p_delay_ms > 0 THEN PERFORM pg_sleep(random() * p_delay_ms / 1000.0); END IF;\n"
                                                                                                                                 "  head := h + n; hash := p_hashes[n]; time_us := p_time;\n"
                                                                                                                                 "END\n"
                                                                                                                                 "$es$ SET enable_seqscan = off;\n";

/*
 * Version 2: es_append_batch, a commit of several requests in one call.
 * Every stream row of the commit is locked in key order (two batches never
 * deadlock); each request is checked against the head the earlier requests
 * of the commit leave; then all events go in with one INSERT and the heads
 * with one upsert.  Answers status 0 (done: base is the first position of
 * the commit), 1 (request `bad` met head `head`), 2 (the client's heads or
 * time are stale: nothing written), 3 (some ids exist).
 */
/*
 * Migration 3: the key-value table of the library's own records
 * (subscriptions, checkpoints, leases).  Versions come from one sequence,
 * so a version is never reused, even after a delete and a re-create.
 */
static const char *const migration3 =
    "CREATE SEQUENCE @.kv_version;\n"
    "CREATE TABLE @.kv (key bytea PRIMARY KEY, value bytea NOT NULL, version bigint NOT NULL);\n";

static const char *const migration2 =
    "CREATE FUNCTION @.es_append_batch(p_streams bytea[], p_expected bigint[],"
    " p_prev_seq bigint[], p_prev_hash bytea[], p_counts integer[], p_time bigint,"
    " p_check_time boolean, p_ids bytea[], p_types bytea[], p_data bytea[], p_meta bytea[],"
    " p_hashes bytea[], p_delay_ms integer, p_notify boolean,"
    " OUT status integer, OUT bad integer, OUT head bigint, OUT base bigint,"
    " OUT server_us bigint)\n"
    "LANGUAGE plpgsql AS $es$\n"
    "DECLARE\n"
    "  v_before bigint[]; v_off integer[]; v_head bigint[];\n"
    "  k_stream bytea[]; k_head bigint[]; k_hash bytea[]; k_time bigint[];\n"
    "BEGIN\n"
    "  server_us := (extract(epoch FROM clock_timestamp()) * 1000000)::bigint;\n"
    "  status := " PG_SQL_INT(
        PG_DONE) "; bad := -1; head := 0; base := 0;\n"
                 /* lock the rows and read the heads in one pass */
                 "  SELECT array_agg(l.stream), array_agg(l.head), array_agg(l.hash), "
                 "array_agg(l.time_us)\n"
                 "    INTO k_stream, k_head, k_hash, k_time\n"
                 "    FROM (SELECT st.stream, st.head, st.hash, st.time_us FROM @.streams st\n"
                 "           WHERE st.stream = ANY (p_streams) ORDER BY st.stream FOR UPDATE) l;\n"
                 "  IF EXISTS (SELECT 1 FROM @.events e WHERE e.id = ANY (p_ids)) THEN\n"
                 "    status := " PG_SQL_INT(
                     PG_IDS_EXIST) "; RETURN;\n"
                                   "  END IF;\n"
                                   /* per request: the stream's head before it, its first event's index,
     * and the stream's head on the server */
                                   "  SELECT array_agg(x.bef ORDER BY x.i), array_agg(x.off ORDER "
                                   "BY x.i),\n"
                                   "         array_agg(x.cur ORDER BY x.i)\n"
                                   "    INTO v_before, v_off, v_head\n"
                                   "    FROM (SELECT o.i, coalesce(c.head, 0) AS cur,\n"
                                   "                 coalesce(c.head, 0) + coalesce(sum(o.cnt) "
                                   "OVER (PARTITION BY o.stream\n"
                                   "                   ORDER BY o.i ROWS BETWEEN UNBOUNDED "
                                   "PRECEDING AND 1 PRECEDING), 0) AS bef,\n"
                                   "                 (coalesce(sum(o.cnt) OVER (ORDER BY o.i\n"
                                   "                   ROWS BETWEEN UNBOUNDED PRECEDING AND 1 "
                                   "PRECEDING), 0))::integer AS off\n"
                                   "            FROM unnest(p_streams, p_counts) WITH ORDINALITY "
                                   "AS o(stream, cnt, i)\n"
                                   "            LEFT JOIN unnest(k_stream, k_head) AS c(stream, "
                                   "head)\n"
                                   "              ON c.stream = o.stream) x;\n"
                                   "  SELECT (o.i - 1)::integer, v_before[o.i] INTO bad, head\n"
                                   "    FROM unnest(p_expected) WITH ORDINALITY AS o(exp, i)\n"
                                   "   WHERE (o.exp = " PG_SQL_INT(
                                       PG_EXPECT_EXISTS) " AND v_before[o.i] = 0)\n"
                                                         "      OR (o.exp >= 0 AND v_before[o.i] "
                                                         "<> o.exp)\n"
                                                         "   ORDER BY o.i LIMIT 1;\n"
                                                         "  IF FOUND THEN status := " PG_SQL_INT(
                                                             PG_CONFLICT) "; RETURN; END IF;\n"
                                                                          "  bad := -1; head := "
                                                                          "0;\n"
                                                                          /* the client's view: every request's head, and for a stream's first
     * request of the commit its hash and time */
                                                                          "  IF EXISTS (SELECT 1\n"
                                                                          "    FROM "
                                                                          "unnest(p_streams, "
                                                                          "p_prev_seq, "
                                                                          "p_prev_hash) WITH "
                                                                          "ORDINALITY AS o(stream, "
                                                                          "ps, ph, i)\n"
                                                                          "    LEFT JOIN "
                                                                          "unnest(k_stream, "
                                                                          "k_hash, k_time) AS "
                                                                          "c(stream, hash, "
                                                                          "time_us)\n"
                                                                          "      ON c.stream = "
                                                                          "o.stream\n"
                                                                          "   WHERE o.ps <> "
                                                                          "v_before[o.i]\n"
                                                                          "      OR (v_before[o.i] "
                                                                          "= v_head[o.i] AND (o.ph "
                                                                          "IS DISTINCT FROM "
                                                                          "c.hash\n"
                                                                          "          OR p_time < "
                                                                          "c.time_us\n"
                                                                          "          OR "
                                                                          "(p_check_time AND "
                                                                          "p_time IS DISTINCT FROM "
                                                                          "c.time_us\n"
                                                                          "              AND "
                                                                          "abs(p_time - server_us) "
                                                                          "> " PG_SQL_INT(
                                                                              PG_CLOCK_SLACK_US) ")"
                                                                                                 ")"
                                                                                                 ")"
                                                                                                 ")"
                                                                                                 " "
                                                                                                 "T"
                                                                                                 "H"
                                                                                                 "E"
                                                                                                 "N"
                                                                                                 "\n"
                                                                                                 " "
                                                                                                 " "
                                                                                                 " "
                                                                                                 " "
                                                                                                 "s"
                                                                                                 "t"
                                                                                                 "a"
                                                                                                 "t"
                                                                                                 "u"
                                                                                                 "s"
                                                                                                 " "
                                                                                                 ":"
                                                                                                 "="
                                                                                                 " " PG_SQL_INT(
                                                                                                     PG_STALE) "; RETURN;\n"
                                                                                                               "  END IF;\n"
                                                                                                               "  base := (pg_current_xact_id()::text::bigint) * " PG_SQL_INT(
                                                                                                                   PG_POS_SHIFT) ";\n"
                                                                                                                                 /* the event arrays are joined, not subscripted: a subscript of an
     * array of variable-length elements walks it from the start */
                                                                                                                                 "  INSERT INTO @.events (position, stream, seq, time_us, id, type, data, meta, hash)\n"
                                                                                                                                 "  SELECT base + ev.k - 1, o.stream, v_before[o.i] + ev.k - v_off[o.i], p_time,\n"
                                                                                                                                 "         ev.id, ev.type, ev.data, ev.meta, ev.hash\n"
                                                                                                                                 "    FROM unnest(p_streams, p_counts) WITH ORDINALITY AS o(stream, cnt, i)\n"
                                                                                                                                 "   CROSS JOIN LATERAL generate_series(v_off[o.i] + 1, v_off[o.i] + o.cnt) AS g(k)\n"
                                                                                                                                 "    JOIN unnest(p_ids, p_types, p_data, p_meta, p_hashes)\n"
                                                                                                                                 "         WITH ORDINALITY AS ev(id, type, data, meta, hash, k) ON ev.k = g.k;\n"
                                                                                                                                 "  INSERT INTO @.streams AS st (stream, head, hash, time_us)\n"
                                                                                                                                 "  SELECT DISTINCT ON (o.stream) o.stream, v_before[o.i] + o.cnt, hh.hash, p_time\n"
                                                                                                                                 "    FROM unnest(p_streams, p_counts) WITH ORDINALITY AS o(stream, cnt, i)\n"
                                                                                                                                 "    JOIN unnest(p_hashes) WITH ORDINALITY AS hh(hash, k) ON hh.k = v_off[o.i] + o.cnt\n"
                                                                                                                                 "   ORDER BY o.stream, o.i DESC\n"
                                                                                                                                 "  ON CONFLICT (stream) DO UPDATE\n"
                                                                                                                                 "    SET head = excluded.head, hash = excluded.hash, time_us = excluded.time_us;\n"
                                                                                                                                 "  IF p_notify THEN PERFORM pg_notify('^', ''); END IF;\n"
                                                                                                                                 "  IF p_delay_ms > 0 THEN PERFORM pg_sleep(random() * p_delay_ms / 1000.0); END IF;\n"
                                                                                                                                 "END\n"
                                                                                                                                 "$es$ SET enable_seqscan = off;\n";

/* Replace every '@' in tmpl with the (validated, quoted) schema name and
 * every '^' with the notification channel. */
char *es__pg_sql_for(const pg_store *s, const char *tmpl)
{
    size_t at = 0, sl = strlen(s->schema) + 2, cl = strlen(s->channel);
    for (const char *p = tmpl; *p; p++)
        at += *p == '@' || *p == '^';
    char *out = es__malloc(strlen(tmpl) + at * (sl > cl ? sl : cl) + 1), *o = out;
    if (!out)
        return NULL;
    for (const char *p = tmpl; *p; p++) {
        if (*p == '@')
            o += sprintf(o, "\"%s\"", s->schema);
        else if (*p == '^')
            o += sprintf(o, "%s", s->channel);
        else
            *o++ = *p;
    }
    *o = '\0';
    return out;
}

int es__pg_migrate(pg_store *s, pg_conn *pc)
{
    char sql[512];
    PGresult *r = NULL;
    int rc;
    /* one migrator at a time, across processes and machines */
    snprintf(sql, sizeof sql,
             "BEGIN; SELECT pg_advisory_xact_lock(hashtext('eventsrc:%s'));"
             " CREATE SCHEMA IF NOT EXISTS \"%s\";"
             " CREATE TABLE IF NOT EXISTS \"%s\".es_meta (key text PRIMARY KEY, value text NOT "
             "NULL)",
             s->schema, s->schema, s->schema);
    if ((rc = es__pg_run_sql(s, pc, sql, NULL)) < 0)
        goto fail;
    snprintf(sql, sizeof sql, "SELECT value FROM \"%s\".es_meta WHERE key = 'schema_version'",
             s->schema);
    if ((rc = es__pg_run_sql(s, pc, sql, &r)) < 0)
        goto fail;
    int version = PQntuples(r) ? atoi(PQgetvalue(r, 0, 0)) : 0;
    PQclear(r);
    r = NULL;
    if (version > PG_SCHEMA_VERSION) {
        rc = es__err(ES_ENOTSUP,
                     "postgres: schema \"%s\" is at version %d; this library knows up to %d",
                     s->schema, version, PG_SCHEMA_VERSION);
        goto fail;
    }
    static const char *const *const steps[] = {&migration1, &migration2, &migration3};
    for (int v = version; v < PG_SCHEMA_VERSION; v++) {
        char *m = es__pg_sql_for(s, *steps[v]);
        if (!m) {
            rc = es__err(ES_ENOMEM, "out of memory migrating");
            goto fail;
        }
        rc = es__pg_run_sql(s, pc, m, NULL);
        free(m);
        if (rc < 0)
            goto fail;
    }
    snprintf(sql, sizeof sql,
             "INSERT INTO \"%s\".es_meta VALUES ('schema_version', '%d') ON CONFLICT (key) DO "
             "UPDATE SET value = excluded.value; COMMIT",
             s->schema, PG_SCHEMA_VERSION);
    if ((rc = es__pg_run_sql(s, pc, sql, NULL)) < 0)
        goto fail;
    return 0;
fail:
    PQclear(r);
    if (!pc->broken)
        es__pg_run_sql(s, pc, "ROLLBACK", NULL);
    return rc;
}
