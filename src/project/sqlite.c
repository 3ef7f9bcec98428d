/*
 * sqlite.c — the SQLite target of projections ("sqlite:PATH").
 *
 * The database runs in rollback-journal mode (not WAL), so that a rebuild
 * can be swapped in by rename(): a committed database is one file with no
 * side files.  The swap takes the old file's write lock first (no writer is
 * inside a transaction of it, and no hot journal is left for the new file
 * to inherit); a projector that still has the old file open checks, once
 * it holds its write lock, that PATH is still the file it has open, and
 * reopens PATH when it is not.
 */
#include "project_int.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PROJ_BUSY_TIMEOUT_MS 10000
#define PROJ_OPEN_TRIES 5

typedef struct sq_target {
    es_proj__target base; /* first: a target is a sq_target */
    char *path;           /* the file open: PATH, or the rebuild's file */
    char *final_path;     /* a rebuild: PATH, until swapped in; else NULL */
    sqlite3 *db;
    dev_t dev; /* the file the connection has open (see sq_begin) */
    ino_t ino;
    bool meta_ok; /* eventsrc_projection exists on this connection */
    sqlite3_stmt *get_ckpt, *put_ckpt;
} sq_target;

static int sq_fail(sq_target *t, const char *what)
{
    return es_proj__err(ES_EIO, "sqlite:%s: %s: %s", t->path, what, sqlite3_errmsg(t->db));
}

static int sq_exec(sq_target *t, const char *sql)
{
    if (sqlite3_exec(t->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return sq_fail(t, sql);
    return 0;
}

static void sq_disconnect(sq_target *t)
{
    if (!t->db)
        return;
    es_proj__detach(&t->base);
    sqlite3_finalize(t->get_ckpt);
    sqlite3_finalize(t->put_ckpt);
    sqlite3_close(t->db);
    t->db = NULL;
    t->base.db.conn = NULL;
    t->get_ckpt = t->put_ckpt = NULL;
    t->meta_ok = false;
}

/*
 * Open PATH and learn which file was opened: the file is the same before
 * and after the open (a rename over PATH in between is retried).
 */
static int sq_connect(sq_target *t)
{
    struct stat before, after;
    int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE;
    for (int tries = 0; tries < PROJ_OPEN_TRIES; tries++) {
        bool existed = stat(t->path, &before) == 0;
        if (sqlite3_open_v2(t->path, &t->db, flags, NULL) != SQLITE_OK) {
            int rc = sq_fail(t, "open");
            sqlite3_close(t->db);
            t->db = NULL;
            return rc;
        }
        sqlite3_busy_timeout(t->db, PROJ_BUSY_TIMEOUT_MS);
        /* Reading the journal mode opens the file for real. */
        int rc = sq_exec(t, "PRAGMA journal_mode=DELETE");
        if (rc == 0)
            rc = sq_exec(t, "PRAGMA synchronous=FULL");
        if (rc < 0) {
            sqlite3_close(t->db);
            t->db = NULL;
            return rc;
        }
        if (stat(t->path, &after) != 0) {
            rc = es_proj__err(ES_EIO, "sqlite:%s: %s", t->path, strerror(errno));
            sqlite3_close(t->db);
            t->db = NULL;
            return rc;
        }
        if (!existed || (before.st_dev == after.st_dev && before.st_ino == after.st_ino)) {
            t->dev = after.st_dev;
            t->ino = after.st_ino;
            t->base.db.conn = t->db;
            return 0;
        }
        sqlite3_close(t->db);
        t->db = NULL;
    }
    return es_proj__err(ES_EIO, "sqlite:%s: the file keeps being replaced", t->path);
}

/* Is PATH still the file the connection has open? */
static bool sq_same_file(const sq_target *t)
{
    struct stat s;
    return stat(t->path, &s) == 0 && s.st_dev == t->dev && s.st_ino == t->ino;
}

/*
 * Begin a batch's write transaction.  Once the write lock is held, no
 * rebuild can swap PATH under it; if one did before, the connection is
 * reopened on the new file.
 */
static int sq_begin(es_proj__target *base)
{
    sq_target *t = (sq_target *)base;
    int rc;
    for (int tries = 0; tries < PROJ_OPEN_TRIES; tries++) {
        if ((rc = sq_exec(t, "BEGIN IMMEDIATE")) < 0)
            return rc;
        if (sq_same_file(t))
            return 0;
        sqlite3_exec(t->db, "ROLLBACK", NULL, NULL, NULL);
        sq_disconnect(t);
        if ((rc = sq_connect(t)) < 0)
            return rc;
    }
    return es_proj__err(ES_EIO, "sqlite:%s: the file keeps being replaced", t->path);
}

static void sq_rollback(es_proj__target *base)
{
    sq_target *t = (sq_target *)base;
    if (t->db && !sqlite3_get_autocommit(t->db))
        sqlite3_exec(t->db, "ROLLBACK", NULL, NULL, NULL);
}

static const char sql_get_ckpt[] =
    "SELECT position, events, definition, updated_us FROM eventsrc_projection WHERE name = ?1";

/* Step a prepared checkpoint query (name bound) into c. */
static int sq_fetch_ckpt(sqlite3_stmt *st, const char *label, const char *name, es_proj__ckpt *c)
{
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        sqlite3_int64 pos = sqlite3_column_int64(st, 0);
        sqlite3_int64 n = sqlite3_column_int64(st, 1);
        const unsigned char *d = sqlite3_column_text(st, 2);
        if (pos < 0 || n < 0)
            return es_proj__err(ES_ECORRUPT, "%s: checkpoint of '%s' is negative", label, name);
        c->found = true;
        c->position = (uint64_t)pos;
        c->events = (uint64_t)n;
        c->updated_us = sqlite3_column_int64(st, 3);
        if (d)
            snprintf(c->definition, sizeof c->definition, "%s", (const char *)d);
        rc = SQLITE_DONE;
    }
    return rc == SQLITE_DONE ? 0 : 1;
}

static int sq_read_ckpt(es_proj__target *base, es_proj__ckpt *c)
{
    sq_target *t = (sq_target *)base;
    int rc;
    memset(c, 0, sizeof *c);
    if (!t->meta_ok) {
        if ((rc = sq_exec(t, "CREATE TABLE IF NOT EXISTS eventsrc_projection ("
                             "name TEXT PRIMARY KEY, position INTEGER NOT NULL, "
                             "events INTEGER NOT NULL, definition TEXT, "
                             "updated_us INTEGER NOT NULL)")) < 0)
            return rc;
        t->meta_ok = true;
    }
    if (!t->get_ckpt &&
        sqlite3_prepare_v2(t->db, sql_get_ckpt, -1, &t->get_ckpt, NULL) != SQLITE_OK)
        return sq_fail(t, "reading the checkpoint");
    sqlite3_reset(t->get_ckpt);
    sqlite3_bind_text(t->get_ckpt, 1, base->def->name, -1, SQLITE_STATIC);
    rc = sq_fetch_ckpt(t->get_ckpt, base->label, base->def->name, c);
    sqlite3_reset(t->get_ckpt);
    return rc < 0 ? rc : rc ? sq_fail(t, "reading the checkpoint") : 0;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int sq_write_ckpt(es_proj__target *base, const es_proj__ckpt *c)
{
    sq_target *t = (sq_target *)base;
    if (!t->put_ckpt &&
        sqlite3_prepare_v2(t->db,
                           "INSERT INTO eventsrc_projection(name, position, events, definition, "
                           "updated_us) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(name) DO UPDATE "
                           "SET position = excluded.position, events = excluded.events, "
                           "definition = excluded.definition, updated_us = excluded.updated_us",
                           -1, &t->put_ckpt, NULL) != SQLITE_OK)
        return sq_fail(t, "writing the checkpoint");
    sqlite3_reset(t->put_ckpt);
    sqlite3_bind_text(t->put_ckpt, 1, base->def->name, -1, SQLITE_STATIC);
    sqlite3_bind_int64(t->put_ckpt, 2, (sqlite3_int64)c->position);
    sqlite3_bind_int64(t->put_ckpt, 3, (sqlite3_int64)c->events);
    if (c->definition[0])
        sqlite3_bind_text(t->put_ckpt, 4, c->definition, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null(t->put_ckpt, 4);
    sqlite3_bind_int64(t->put_ckpt, 5, now_us());
    int rc = sqlite3_step(t->put_ckpt);
    sqlite3_reset(t->put_ckpt);
    return rc == SQLITE_DONE ? 0 : sq_fail(t, "writing the checkpoint");
}

static int sq_commit(es_proj__target *base)
{
    return sq_exec((sq_target *)base, "COMMIT");
}

static int fsync_dir_of(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return es_proj__err(ES_ENOMEM, "out of memory");
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        dir[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        strcpy(dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    int rc = 0;
    if (fd < 0 || fsync(fd) != 0)
        rc = es_proj__err(ES_EIO, "%s: %s", dir, strerror(errno));
    if (fd >= 0)
        close(fd);
    free(dir);
    return rc;
}

/*
 * Swap the rebuilt database (open on its temporary file) in at the final
 * path, under the old file's write lock.  The old file must hold nothing
 * but this projection (or nothing at all).
 */
static int sq_swap(es_proj__target *base)
{
    sq_target *t = (sq_target *)base;
    const char *path = t->final_path, *name = base->def->name;
    sqlite3 *old = NULL;
    sqlite3_stmt *st = NULL;
    int rc = 0;

    if (sqlite3_open_v2(path, &old, SQLITE_OPEN_READWRITE, NULL) != SQLITE_OK) {
        sqlite3_close(old); /* no old model: nothing to lock */
        old = NULL;
    } else {
        sqlite3_busy_timeout(old, PROJ_BUSY_TIMEOUT_MS);
        /* The write lock: no other writer is inside a transaction (whose
         * journal would be left beside the new file).  Readers go on
         * reading the old file; the first read below rolls back a hot
         * journal of a writer that died. */
        if (sqlite3_exec(old, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
            rc = es_proj__err(ES_EIO, "sqlite:%s: locking the old model: %s", path,
                              sqlite3_errmsg(old));
            goto done;
        }
        /* The old file holds only this projection: no other checkpoint, and
         * either a checkpoint table or no table at all. */
        if (sqlite3_prepare_v2(old,
                               "SELECT (SELECT count(*) FROM sqlite_master WHERE type = 'table' "
                               "AND name = 'eventsrc_projection'), (SELECT count(*) FROM "
                               "sqlite_master WHERE type = 'table')",
                               -1, &st, NULL) != SQLITE_OK ||
            sqlite3_step(st) != SQLITE_ROW) {
            rc = es_proj__err(ES_EIO, "sqlite:%s: %s", path, sqlite3_errmsg(old));
            goto done;
        }
        int has_meta = sqlite3_column_int(st, 0), tables = sqlite3_column_int(st, 1);
        sqlite3_finalize(st);
        st = NULL;
        if (!has_meta && tables > 0) {
            rc = es_proj__err(ES_EINVAL, "sqlite:%s: holds tables but no projection: not replaced",
                              path);
            goto done;
        }
        if (has_meta) {
            if (sqlite3_prepare_v2(old, "SELECT name FROM eventsrc_projection WHERE name <> ?1", -1,
                                   &st, NULL) != SQLITE_OK) {
                rc = es_proj__err(ES_EIO, "sqlite:%s: %s", path, sqlite3_errmsg(old));
                goto done;
            }
            sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
            if (sqlite3_step(st) == SQLITE_ROW) {
                rc = es_proj__err(ES_EINVAL,
                                  "sqlite:%s: also holds projection '%s': a rebuild replaces "
                                  "the whole file, so it needs a file of its own",
                                  path, (const char *)sqlite3_column_text(st, 0));
                goto done;
            }
        }
    }
    if (rename(t->path, path) != 0) {
        rc = es_proj__err(ES_EIO, "rename %s to %s: %s", t->path, path, strerror(errno));
        goto done;
    }
    free(t->path);
    t->path = t->final_path;
    t->final_path = NULL;
    rc = fsync_dir_of(path);
done:
    sqlite3_finalize(st);
    if (old) {
        sqlite3_exec(old, "ROLLBACK", NULL, NULL, NULL);
        sqlite3_close(old);
    }
    return rc;
}

static void sq_close(es_proj__target *base)
{
    sq_target *t = (sq_target *)base;
    if (!t)
        return;
    sq_disconnect(t);
    if (t->final_path && t->path) /* a rebuild not swapped in leaves the old model */
        unlink(t->path);
    free(t->path);
    free(t->final_path);
    free(t);
}

static const es_proj__target_ops sq_ops = {sq_begin,    sq_read_ckpt, sq_write_ckpt, sq_commit,
                                           sq_rollback, sq_swap,      sq_close};

int es_proj__sqlite_open(es_proj__target **out, const char *path, const es_proj_def *def,
                         bool rebuild)
{
    sq_target *t = calloc(1, sizeof *t);
    int rc = 0;

    *out = NULL;
    if (!t)
        return es_proj__err(ES_ENOMEM, "out of memory");
    t->base.ops = &sq_ops;
    t->base.def = def;
    t->base.db.kind = ES_PROJ_SQLITE;
    snprintf(t->base.label, sizeof t->base.label, "sqlite:%s", path);
    if (rebuild) {
        size_t n = strlen(path) + 64;
        if (!(t->final_path = strdup(path)) || !(t->path = malloc(n))) {
            rc = es_proj__err(ES_ENOMEM, "out of memory");
            goto done;
        }
        snprintf(t->path, n, "%s.rebuild-%ld", path, (long)getpid());
        /* Leftovers of a rebuild by an earlier process with this pid. */
        char *journal = malloc(n + 8);
        if (!journal) {
            rc = es_proj__err(ES_ENOMEM, "out of memory");
            goto done;
        }
        snprintf(journal, n + 8, "%s-journal", t->path);
        unlink(t->path);
        unlink(journal);
        free(journal);
    } else if (!(t->path = strdup(path))) {
        rc = es_proj__err(ES_ENOMEM, "out of memory");
        goto done;
    }
    rc = sq_connect(t);
done:
    if (rc < 0)
        sq_close(&t->base);
    else
        *out = &t->base;
    return rc;
}

int es_proj__sqlite_peek(es_proj__ckpt *c, const char *path, const char *name)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    struct stat s;
    int rc = 0;

    memset(c, 0, sizeof *c);
    if (stat(path, &s) != 0) /* no model yet */
        return errno == ENOENT ? 0 : es_proj__err(ES_EIO, "sqlite:%s: %s", path, strerror(errno));
    if (sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK) {
        rc = es_proj__err(ES_EIO, "sqlite:%s: %s", path, sqlite3_errmsg(db));
        goto done;
    }
    sqlite3_busy_timeout(db, PROJ_BUSY_TIMEOUT_MS);
    if (sqlite3_prepare_v2(db,
                           "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND "
                           "name = 'eventsrc_projection'",
                           -1, &st, NULL) != SQLITE_OK ||
        sqlite3_step(st) != SQLITE_ROW) {
        rc = es_proj__err(ES_EIO, "sqlite:%s: %s", path, sqlite3_errmsg(db));
        goto done;
    }
    int has = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    st = NULL;
    if (!has)
        goto done;
    if (sqlite3_prepare_v2(db, sql_get_ckpt, -1, &st, NULL) != SQLITE_OK) {
        rc = es_proj__err(ES_EIO, "sqlite:%s: %s", path, sqlite3_errmsg(db));
        goto done;
    }
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    char label[300];
    snprintf(label, sizeof label, "sqlite:%s", path);
    if ((rc = sq_fetch_ckpt(st, label, name, c)) > 0)
        rc = es_proj__err(ES_EIO, "sqlite:%s: %s", path, sqlite3_errmsg(db));
done:
    sqlite3_finalize(st);
    sqlite3_close(db);
    return rc;
}
