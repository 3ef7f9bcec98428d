/*
 * project.c — SQL read models (libeventsrc_project) on the store under
 * test: a C handler and projection files, each event applied once across
 * runs, a failing batch rolled back whole, errors that name FILE:LINE with
 * the model left at its last good batch, filters, follow, and a rebuild
 * swapped in atomically.  Run per backend (mem, lmdb).
 */
#define _GNU_SOURCE
#include "testutil.h"

#include <eventsrc_project.h>

#include <pthread.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct tdir {
    char dir[256];
    char db[300];
    char target[320];
} tdir;

static void tdir_make(tdir *t)
{
    const char *tmp = getenv("TMPDIR");
    snprintf(t->dir, sizeof t->dir, "%s/es-proj-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    assert_non_null(mkdtemp(t->dir));
    snprintf(t->db, sizeof t->db, "%s/model.db", t->dir);
    snprintf(t->target, sizeof t->target, "sqlite:%s", t->db);
}

static void tdir_remove(tdir *t)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", t->dir);
    assert_int_equal(system(cmd), 0);
}

/* One integer a query answers (-1 when it answers no row, -2 on an error). */
static int64_t q1(const char *db, const char *sql)
{
    sqlite3 *c = NULL;
    sqlite3_stmt *st = NULL;
    int64_t v = -2;
    if (sqlite3_open_v2(db, &c, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(c, sql, -1, &st, NULL) == SQLITE_OK) {
        int rc = sqlite3_step(st);
        v = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : rc == SQLITE_DONE ? -1 : -2;
    }
    sqlite3_finalize(st);
    sqlite3_close(c);
    return v;
}

/* Every row of a query, as text lines, into out. */
static void rows(char *out, size_t cap, const char *db, const char *sql)
{
    sqlite3 *c = NULL;
    sqlite3_stmt *st = NULL;
    size_t n = 0;
    out[0] = '\0';
    assert_int_equal(sqlite3_open_v2(db, &c, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(c, sql, -1, &st, NULL), SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW) {
        for (int i = 0; i < sqlite3_column_count(st); i++) {
            const char *v = (const char *)sqlite3_column_text(st, i);
            n += (size_t)snprintf(out + n, cap - n, "%s%s", i ? "|" : "", v ? v : "NULL");
        }
        n += (size_t)snprintf(out + n, cap - n, "\n");
        assert_true(n < cap);
    }
    sqlite3_finalize(st);
    sqlite3_close(c);
}

static void append_n(es_store *st, const char *stream, int from, int n)
{
    for (int i = from; i < from + n; i++) {
        char data[64];
        snprintf(data, sizeof data, "{\"n\":%d,\"name\":\"u%d\"}", i, i);
        TU_EXPECT_OK(tu_append1(st, stream, ES_EXPECT_ANY, i % 3 ? "Tick" : "Tock", data, NULL));
    }
}

/* ---- a projection in C ---- */

typedef struct cproj {
    int fail_at_n; /* apply fails on the event whose "n" is this (-1: never) */
    int calls;
} cproj;

static int c_setup(const es_proj_db *db, void *payload)
{
    (void)payload;
    assert_int_equal(db->kind, ES_PROJ_SQLITE);
    return sqlite3_exec(db->conn,
                        "CREATE TABLE seen (position INTEGER, stream TEXT, type TEXT, data TEXT)",
                        NULL, NULL, NULL) == SQLITE_OK
               ? 0
               : ES_EIO;
}

static int c_apply(const es_proj_db *db, const es_event *ev, size_t n, void *payload)
{
    cproj *cp = payload;
    sqlite3_stmt *st;
    int rc = 0;
    cp->calls++;
    /* The handler runs inside the batch's transaction. */
    assert_int_equal(sqlite3_get_autocommit(db->conn), 0);
    assert_int_equal(
        sqlite3_prepare_v2(db->conn, "INSERT INTO seen VALUES (?1, ?2, ?3, ?4)", -1, &st, NULL),
        SQLITE_OK);
    for (size_t i = 0; i < n && rc == 0; i++) {
        char want[32];
        snprintf(want, sizeof want, "\"n\":%d,", cp->fail_at_n);
        if (cp->fail_at_n >= 0 && memmem(ev[i].data, ev[i].data_len, want, strlen(want))) {
            es_proj_set_error("refusing n=%d", cp->fail_at_n);
            rc = ES_EINVAL;
            break;
        }
        sqlite3_bind_int64(st, 1, (sqlite3_int64)ev[i].position);
        sqlite3_bind_text(st, 2, (const char *)ev[i].stream, (int)ev[i].stream_len, NULL);
        sqlite3_bind_text(st, 3, ev[i].type, (int)ev[i].type_len, NULL);
        sqlite3_bind_text(st, 4, (const char *)ev[i].data, (int)ev[i].data_len, NULL);
        if (sqlite3_step(st) != SQLITE_DONE)
            rc = ES_EIO;
        sqlite3_reset(st);
    }
    sqlite3_finalize(st);
    return rc;
}

static es_proj_def c_def(cproj *cp)
{
    es_proj_def d = {.version = ES_PROJ_DEF_VERSION,
                     .name = "seen",
                     .definition = "seen v1",
                     .setup = c_setup,
                     .apply = c_apply,
                     .payload = cp};
    return d;
}

static void test_c_handler_applies_each_event_once(void **state)
{
    (void)state;
    tu_store ts;
    tdir t;
    cproj cp = {.fail_at_n = -1};
    es_proj_def d = c_def(&cp);
    es_proj_options o = ES_PROJ_OPTIONS_INIT;
    es_proj_progress p;
    uint64_t last;

    tu_open(&ts);
    tdir_make(&t);
    append_n(ts.st, "a/1", 0, 15);
    append_n(ts.st, "b/1", 15, 10);
    o.batch_events = 7;
    TU_EXPECT_OK(es_proj_run(&p, ts.st, t.target, &d, &o));
    TU_EXPECT_OK(es_store_last_position(&last, ts.st));
    assert_int_equal(p.events, 25);
    assert_int_equal(p.batches, 4);
    assert_int_equal(p.position, last);
    assert_int_equal(q1(t.db, "SELECT count(*) FROM seen"), 25);
    assert_int_equal(q1(t.db, "SELECT count(DISTINCT position) FROM seen"), 25);
    assert_int_equal(q1(t.db, "SELECT position FROM eventsrc_projection WHERE name = 'seen'"),
                     (int64_t)last);
    assert_int_equal(q1(t.db, "SELECT events FROM eventsrc_projection"), 25);

    /* Again: nothing new, nothing written. */
    TU_EXPECT_OK(es_proj_run(&p, ts.st, t.target, &d, &o));
    assert_int_equal(p.events, 0);
    assert_int_equal(q1(t.db, "SELECT count(*) FROM seen"), 25);

    /* New events: only they are applied. */
    append_n(ts.st, "a/1", 25, 5);
    TU_EXPECT_OK(es_proj_run(&p, ts.st, t.target, &d, &o));
    assert_int_equal(p.events, 5);
    assert_int_equal(q1(t.db, "SELECT count(*) FROM seen"), 30);
    assert_int_equal(q1(t.db, "SELECT count(DISTINCT position) FROM seen"), 30);
    tdir_remove(&t);
    tu_close(&ts);
}

static void test_failing_batch_is_rolled_back_whole(void **state)
{
    (void)state;
    tu_store ts;
    tdir t;
    cproj cp = {.fail_at_n = 12};
    es_proj_def d = c_def(&cp);
    es_proj_options o = ES_PROJ_OPTIONS_INIT;
    es_proj_progress p;

    tu_open(&ts);
    tdir_make(&t);
    append_n(ts.st, "s", 0, 25);
    o.batch_events = 5;
    /* Batches 0-4 and 5-9 commit; 10-14 fails at 12 and leaves nothing. */
    assert_int_equal(es_proj_run(&p, ts.st, t.target, &d, &o), ES_EINVAL);
    assert_string_equal(es_proj_error_last(), "refusing n=12");
    assert_int_equal(q1(t.db, "SELECT count(*) FROM seen"), 10);
    assert_int_equal(q1(t.db, "SELECT max(data->>'n') FROM seen"), 9);
    int64_t pos = q1(t.db, "SELECT position FROM eventsrc_projection");
    assert_int_equal(pos, q1(t.db, "SELECT max(position) FROM seen"));

    /* Fixed, it resumes at the boundary: every event once. */
    cp.fail_at_n = -1;
    TU_EXPECT_OK(es_proj_run(&p, ts.st, t.target, &d, &o));
    assert_int_equal(p.events, 15);
    assert_int_equal(q1(t.db, "SELECT count(*) FROM seen"), 25);
    assert_int_equal(q1(t.db, "SELECT count(DISTINCT data->>'n') FROM seen"), 25);
    tdir_remove(&t);
    tu_close(&ts);
}

static void test_another_definition_is_refused(void **state)
{
    (void)state;
    tu_store ts;
    tdir t;
    cproj cp = {.fail_at_n = -1};
    es_proj_def d = c_def(&cp);

    tu_open(&ts);
    tdir_make(&t);
    append_n(ts.st, "s", 0, 3);
    TU_EXPECT_OK(es_proj_run(NULL, ts.st, t.target, &d, NULL));
    d.definition = "seen v2";
    assert_int_equal(es_proj_run(NULL, ts.st, t.target, &d, NULL), ES_ECONFLICT);
    assert_non_null(strstr(es_proj_error_last(), "another definition"));
    /* A rebuild makes it the v2 model. */
    es_proj_options o = ES_PROJ_OPTIONS_INIT;
    o.flags = ES_PROJ_REBUILD;
    TU_EXPECT_OK(es_proj_run(NULL, ts.st, t.target, &d, &o));
    TU_EXPECT_OK(es_proj_run(NULL, ts.st, t.target, &d, NULL));
    assert_int_equal(q1(t.db, "SELECT count(*) FROM seen"), 3);
    tdir_remove(&t);
    tu_close(&ts);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    tu_store ts;
    cproj cp = {.fail_at_n = -1};
    es_proj_def d = c_def(&cp);
    es_proj_options o = ES_PROJ_OPTIONS_INIT;

    tu_open(&ts);
    assert_int_equal(es_proj_run(NULL, NULL, "sqlite:x", &d, NULL), ES_EINVAL);
    assert_int_equal(es_proj_run(NULL, ts.st, NULL, &d, NULL), ES_EINVAL);
    assert_int_equal(es_proj_run(NULL, ts.st, "sqlite:x", NULL, NULL), ES_EINVAL);
    assert_int_equal(es_proj_run(NULL, ts.st, "mysql:x", &d, NULL), ES_EINVAL);
    assert_int_equal(es_proj_run(NULL, ts.st, "sqlite:", &d, NULL), ES_EINVAL);
#ifdef ES_PROJ_HAVE_PG
    /* a bad schema is refused before connecting */
    assert_int_equal(es_proj_run(NULL, ts.st, "postgres://h/db?schema=Bad", &d, NULL), ES_EINVAL);
    assert_int_equal(es_proj_run(NULL, ts.st, "postgres://h/db?schema=pg_x", &d, NULL), ES_EINVAL);
    assert_int_equal(es_proj_run(NULL, ts.st, "postgres://h/db?schema=a&schema=b", &d, NULL),
                     ES_EINVAL);
#else
    assert_int_equal(es_proj_run(NULL, ts.st, "postgres://h/db", &d, NULL), ES_ENOTSUP);
#endif
    d.name = "bad name";
    assert_int_equal(es_proj_run(NULL, ts.st, "sqlite:x", &d, NULL), ES_EINVAL);
    d.name = "seen";
    d.version = 99;
    assert_int_equal(es_proj_run(NULL, ts.st, "sqlite:x", &d, NULL), ES_EINVAL);
    d.version = ES_PROJ_DEF_VERSION;
    d.apply = NULL;
    assert_int_equal(es_proj_run(NULL, ts.st, "sqlite:x", &d, NULL), ES_EINVAL);
    d.apply = c_apply;
    o.flags = 0x80;
    assert_int_equal(es_proj_run(NULL, ts.st, "sqlite:x", &d, &o), ES_EINVAL);
    o.flags = 0;
    o.wait_ms = -1;
    assert_int_equal(es_proj_run(NULL, ts.st, "sqlite:x", &d, &o), ES_EINVAL);
    assert_int_equal(access("x", F_OK), -1); /* nothing was made */
    tu_close(&ts);
}

/* ---- projection files ---- */

static const char people_proj[] =
    "# people: a projection file\n"                                                      /* 1 */
    "name people\n"                                                                      /* 2 */
    "prefix person/\n"                                                                   /* 3 */
    "\n"                                                                                 /* 4 */
    "schema\n"                                                                           /* 5 */
    "    CREATE TABLE people (id INTEGER PRIMARY KEY, name TEXT, age INTEGER,\n"         /* 6 */
    "                         tag TEXT, stream TEXT, seq INTEGER) STRICT;\n"             /* 7 */
    "    CREATE TABLE log (position INTEGER, type TEXT, id TEXT, time INTEGER);\n"       /* 8 */
    "\n"                                                                                 /* 9 */
    "on Added Renamed\n"                                                                 /* 10 */
    "    -- a comment with a :colon and a ;\n"                                           /* 11 */
    "    INSERT INTO people (id, name, age, tag, stream, seq)\n"                         /* 12 */
    "        VALUES (:data.id, :data.name, :data.age?, :data.tags[1]?, :stream, :seq)\n" /* 13 */
    "        ON CONFLICT (id) DO UPDATE SET name = excluded.name, seq = :seq;\n"         /* 14 */
    "on Removed\n"                                                                       /* 15 */
    "    DELETE FROM people WHERE id = :data.id AND ':not.a.param' <> '';\n"             /* 16 */
    "on *\n"                                                                             /* 17 */
    "    INSERT INTO log VALUES (:position, :type, :id, :time)\n";                       /* 18 */

static void append_person(es_store *st, const char *stream, const char *type, const char *data)
{
    TU_EXPECT_OK(tu_append1(st, stream, ES_EXPECT_ANY, type, data, NULL));
}

static void test_file_builds_tables(void **state)
{
    (void)state;
    tu_store ts;
    tdir t;
    es_proj_file *pf;
    char out[2048];

    tu_open(&ts);
    tdir_make(&t);
    TU_EXPECT_OK(es_proj_file_parse(&pf, "people.proj", people_proj, strlen(people_proj)));
    assert_string_equal(es_proj_file_def(pf)->name, "people");
    append_person(ts.st, "person/1", "Added", "{\"id\":1,\"name\":\"Ann\",\"age\":40}");
    append_person(ts.st, "other/1", "Added", "{\"id\":9,\"name\":\"Not me\"}");
    append_person(ts.st, "person/2", "Added", "{\"id\":2,\"name\":\"Bob\",\"tags\":[\"x\",\"y\"]}");
    append_person(ts.st, "person/1", "Renamed", "{\"id\":1,\"name\":\"Anne\"}");
    append_person(ts.st, "person/3", "Added", "{\"id\":3,\"name\":\"O'Brien; DROP TABLE x\"}");
    append_person(ts.st, "person/3", "Removed", "{\"id\":3}");
    append_person(ts.st, "person/2", "Ignored", "{}");
    TU_EXPECT_OK(es_proj_run(NULL, ts.st, t.target, es_proj_file_def(pf), NULL));
    rows(out, sizeof out, t.db, "SELECT * FROM people ORDER BY id");
    assert_string_equal(out, "1|Anne|40|NULL|person/1|2\n"
                             "2|Bob|NULL|y|person/2|1\n");
    /* `on *` saw every event of the prefix, the other stream none. */
    assert_int_equal(q1(t.db, "SELECT count(*) FROM log"), 6);
    assert_int_equal(q1(t.db, "SELECT count(*) FROM log WHERE type = 'Ignored'"), 1);
    assert_int_equal(q1(t.db, "SELECT length(id) FROM log LIMIT 1"), 32);
    assert_int_equal(q1(t.db, "SELECT count(*) FROM log WHERE time > 0"), 6);
    uint64_t last;
    TU_EXPECT_OK(es_store_last_position(&last, ts.st));
    assert_int_equal(q1(t.db, "SELECT position FROM eventsrc_projection"), (int64_t)last);

    /* Events of other streams move the checkpoint without a batch of ours. */
    append_person(ts.st, "other/2", "Added", "{\"id\":8,\"name\":\"x\"}");
    es_proj_progress p;
    TU_EXPECT_OK(es_proj_run(&p, ts.st, t.target, es_proj_file_def(pf), NULL));
    assert_int_equal(p.events, 0);
    assert_int_equal(p.caught_up, 1);
    es_proj_file_free(pf);
    tdir_remove(&t);
    tu_close(&ts);
}

/* A parse error's message, or "" when the text parses. */
static const char *parse_msg(const char *text)
{
    static char msg[1024];
    es_proj_file *pf = NULL;
    int rc = es_proj_file_parse(&pf, "t.proj", text, strlen(text));
    snprintf(msg, sizeof msg, "%s", rc ? es_proj_error_last() : "");
    if (rc)
        assert_int_equal(rc, ES_EINVAL);
    assert_true(rc == 0 || pf == NULL);
    es_proj_file_free(pf);
    return msg;
}

static void test_file_errors_name_the_line(void **state)
{
    (void)state;
    assert_string_equal(parse_msg("on A\n    SELECT :nope;\n"),
                        "t.proj:2: unknown event field ':nope' (the fields are :stream :seq "
                        ":position :time :type :id :data :meta, and :data.PATH :meta.PATH)");
    assert_string_equal(parse_msg("schema\n  CREATE TABLE t (a);\non A\n\n  SELECT 1,\n"
                                  "    :data.x.y, :seq.z;\n"),
                        "t.proj:6: ':seq.z': only :data and :meta have paths into their JSON");
    assert_string_equal(parse_msg("bogus line\n"),
                        "t.proj:1: unknown directive 'bogus' (directives: name, prefix, "
                        "schema, on; SQL lines are indented)");
    assert_string_equal(parse_msg("# c\n  SELECT 1;\n"),
                        "t.proj:2: SQL outside a section (start one with 'schema' or 'on TYPE')");
    assert_string_equal(parse_msg("on A\n  SELECT 'abc;\n  ;\n"), "t.proj:2: unterminated string");
    assert_string_equal(parse_msg("on A\n  SELECT /* x\n"), "t.proj:2: unterminated /* comment");
    assert_string_equal(parse_msg("schema\n  CREATE TABLE t (a DEFAULT :seq);\n"),
                        "t.proj:2: the schema takes no parameters (':s…'); they belong in 'on' "
                        "sections");
    assert_string_equal(parse_msg("on\n"),
                        "t.proj:1: 'on' takes event types (or '*' for every event)");
    assert_string_equal(parse_msg("on A\n  SELECT :data[x];\n"),
                        "t.proj:2: ':data[x]': '[' takes an index: [0], [1] …");
    assert_string_equal(parse_msg("name a b\n"), "t.proj:1: 'name' takes one word");
    /* Not parameters: casts, strings, quoted names, comments. */
    assert_string_equal(parse_msg("on A\n  SELECT 1::int, ':x', \":y\" -- :z\n  /* :w */;\n"), "");
}

/* Run a file over the log; @return es_proj_run's code. */
static int run_text(tu_store *ts, tdir *t, const char *text, size_t batch)
{
    es_proj_file *pf;
    es_proj_options o = ES_PROJ_OPTIONS_INIT;
    o.batch_events = batch;
    TU_EXPECT_OK(es_proj_file_parse(&pf, "t.proj", text, strlen(text)));
    int rc = es_proj_run(NULL, ts->st, t->target, es_proj_file_def(pf), &o);
    es_proj_file_free(pf);
    return rc;
}

static void test_run_errors_leave_the_last_good_batch(void **state)
{
    (void)state;
    tu_store ts;
    tdir t;

    tu_open(&ts);
    tdir_make(&t);
    for (int i = 0; i < 6; i++)
        append_person(ts.st, "p", "A", "{\"n\":1,\"s\":\"x\"}");
    append_person(ts.st, "p", "B", "{\"n\":\"seven\",\"o\":{\"k\":1}}");
    append_person(ts.st, "p", "C", "not json");

    /* Bad SQL: found before anything is written, even for a new model. */
    assert_int_equal(run_text(&ts, &t, "schema\n  CREATE TABLE t (n);\non A\n  INSRT INTO t;\n", 2),
                     ES_EINVAL);
    assert_string_equal(es_proj_error_last(), "t.proj:4: near \"INSRT\": syntax error");
    assert_int_equal(q1(t.db, "SELECT count(*) FROM sqlite_master"), 0);
    assert_int_equal(run_text(&ts, &t, "on A\n  INSERT INTO nowhere VALUES (1);\n", 2), ES_EINVAL);
    assert_string_equal(es_proj_error_last(), "t.proj:2: no such table: nowhere");
    assert_int_equal(q1(t.db, "SELECT count(*) FROM sqlite_master"), 0);

    /* A type mismatch in a STRICT table, on event 7 with batches of 4: the
     * first batch stays, the second is rolled back. */
    static const char strict[] = "schema\n"
                                 "  CREATE TABLE t (n INTEGER) STRICT;\n"
                                 "on A B\n"
                                 "  INSERT INTO t VALUES (:data.n);\n";
    assert_int_equal(run_text(&ts, &t, strict, 4), ES_EINVAL);
    assert_non_null(strstr(es_proj_error_last(), "t.proj:4: cannot store TEXT value in INTEGER "
                                                 "column t.n (event at position"));
    assert_int_equal(q1(t.db, "SELECT count(*) FROM t"), 4);
    assert_int_equal(q1(t.db, "SELECT events FROM eventsrc_projection"), 4);

    /* A missing field, an object where a value goes, data that is not JSON. */
    tdir_remove(&t);
    tdir_make(&t);
    assert_int_equal(run_text(&ts, &t,
                              "schema\n  CREATE TABLE t (v);\non A\n  INSERT INTO t "
                              "VALUES (:data.missing);\n",
                              4),
                     ES_EINVAL);
    assert_non_null(strstr(es_proj_error_last(), "t.proj:4: the event has no data.missing"));
    assert_int_equal(q1(t.db, "SELECT count(*) FROM sqlite_master"), 0);
    assert_int_equal(run_text(&ts, &t,
                              "schema\n  CREATE TABLE t (v);\non B\n  INSERT INTO t "
                              "VALUES (:data.o);\n",
                              4),
                     ES_EINVAL);
    assert_non_null(strstr(es_proj_error_last(), "t.proj:4: type mismatch: data.o is an object"));
    assert_int_equal(q1(t.db, "SELECT count(*) FROM t"), 0);
    assert_int_equal(q1(t.db, "SELECT position FROM eventsrc_projection"), 4);
    tdir_remove(&t);
    tdir_make(&t);
    assert_int_equal(run_text(&ts, &t,
                              "schema\n  CREATE TABLE t (v);\non *\n  INSERT INTO t "
                              "VALUES (:data.n?);\n",
                              100),
                     ES_EINVAL);
    assert_non_null(strstr(es_proj_error_last(), "t.proj:4: its data is not JSON"));
    assert_int_equal(q1(t.db, "SELECT count(*) FROM sqlite_master"), 0);
    tdir_remove(&t);
    tu_close(&ts);
}

/* ---- rebuild ---- */

static void test_rebuild_swaps_in_a_whole_new_model(void **state)
{
    (void)state;
    tu_store ts;
    tdir t;
    sqlite3 *reader;
    static const char v1[] = "schema\n  CREATE TABLE t (n);\non *\n  INSERT INTO t VALUES (1);\n";
    static const char v2[] = "schema\n  CREATE TABLE t (n);\non *\n  INSERT INTO t VALUES (2);\n";

    tu_open(&ts);
    tdir_make(&t);
    append_n(ts.st, "s", 0, 10);
    TU_EXPECT_OK(run_text(&ts, &t, v1, 3));
    assert_int_equal(q1(t.db, "SELECT sum(n) FROM t"), 10);
    /* A reader in the middle of a read keeps its old model. */
    assert_int_equal(sqlite3_open_v2(t.db, &reader, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_exec(reader, "BEGIN; SELECT count(*) FROM t", NULL, NULL, NULL),
                     SQLITE_OK);

    es_proj_file *pf;
    es_proj_options o = ES_PROJ_OPTIONS_INIT;
    o.flags = ES_PROJ_REBUILD;
    o.batch_events = 3;
    TU_EXPECT_OK(es_proj_file_parse(&pf, "t.proj", v2, strlen(v2)));
    TU_EXPECT_OK(es_proj_run(NULL, ts.st, t.target, es_proj_file_def(pf), &o));
    assert_int_equal(q1(t.db, "SELECT sum(n) FROM t"), 20);
    assert_int_equal(q1(t.db, "SELECT events FROM eventsrc_projection"), 10);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(reader, "SELECT sum(n) FROM t", -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    assert_int_equal(sqlite3_column_int64(st, 0), 10);
    sqlite3_finalize(st);
    sqlite3_close(reader);
    /* No file of the rebuild is left beside the model. */
    char cmd[400];
    snprintf(cmd, sizeof cmd, "test $(ls '%s' | wc -l) -eq 1", t.dir);
    assert_int_equal(system(cmd), 0);

    /* A model file that holds another projection is not replaced. */
    assert_int_equal(sqlite3_open(t.db, &reader), SQLITE_OK);
    assert_int_equal(sqlite3_exec(reader,
                                  "INSERT INTO eventsrc_projection VALUES ('other', 0, 0, NULL, 0)",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(reader);
    assert_int_equal(es_proj_run(NULL, ts.st, t.target, es_proj_file_def(pf), &o), ES_EINVAL);
    assert_non_null(strstr(es_proj_error_last(), "also holds projection 'other'"));
    assert_int_equal(q1(t.db, "SELECT sum(n) FROM t"), 20);
    assert_int_equal(system(cmd), 0);
    es_proj_file_free(pf);
    tdir_remove(&t);
    tu_close(&ts);
}

/* ---- follow ---- */

typedef struct writer {
    es_store *st;
    int n;
} writer;

static void *write_slowly(void *arg)
{
    writer *w = arg;
    for (int i = 0; i < w->n; i++) {
        char data[32];
        snprintf(data, sizeof data, "{\"n\":%d}", i);
        if (tu_append1(w->st, "live", ES_EXPECT_ANY, "Tick", data, NULL) != 0)
            return (void *)1;
        usleep(2000);
    }
    return NULL;
}

static int stop_at(const es_proj_progress *p, void *payload)
{
    return p->caught_up && p->events >= (uint64_t) * (int *)payload ? 1 : 0;
}

static void test_follow_applies_events_as_they_come(void **state)
{
    (void)state;
    tu_store ts;
    tdir t;
    cproj cp = {.fail_at_n = -1};
    es_proj_def d = c_def(&cp);
    es_proj_options o = ES_PROJ_OPTIONS_INIT;
    es_proj_progress p;
    pthread_t th;
    void *res;
    int want = 60;

    tu_open(&ts);
    tdir_make(&t);
    writer w = {ts.st, want};
    o.flags = ES_PROJ_FOLLOW;
    o.wait_ms = 50;
    o.progress = stop_at;
    o.payload = &want;
    assert_int_equal(pthread_create(&th, NULL, write_slowly, &w), 0);
    TU_EXPECT_OK(es_proj_run(&p, ts.st, t.target, &d, &o));
    assert_int_equal(pthread_join(th, &res), 0);
    assert_null(res);
    assert_int_equal(p.events, want);
    assert_int_equal(q1(t.db, "SELECT count(DISTINCT data->>'n') FROM seen"), want);
    assert_int_equal(q1(t.db, "SELECT count(*) FROM seen"), want);
    tdir_remove(&t);
    tu_close(&ts);
}

int main(int argc, char **argv)
{
    int rc = tu_init(argc, argv, "project");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_c_handler_applies_each_event_once),
        cmocka_unit_test(test_failing_batch_is_rolled_back_whole),
        cmocka_unit_test(test_another_definition_is_refused),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_file_builds_tables),
        cmocka_unit_test(test_file_errors_name_the_line),
        cmocka_unit_test(test_run_errors_leave_the_last_good_batch),
        cmocka_unit_test(test_rebuild_swaps_in_a_whole_new_model),
        cmocka_unit_test(test_follow_applies_events_as_they_come),
    };
    char name[64];
    snprintf(name, sizeof name, "project/%s", tu_backend);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
