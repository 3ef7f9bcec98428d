/*
 * project.c — running a projection: the log, batch by batch, into a SQL
 * target, each batch in one transaction of the target together with the
 * projection's checkpoint.
 *
 * Why the checkpoint lives in the target: the model and the position it
 * reflects then commit or vanish together, so a crash anywhere (in the
 * handler, between batches, inside the target's commit) leaves a model that
 * is exactly "the log up to the checkpoint".  The run reads the checkpoint
 * inside each batch's write transaction, so even two projectors on the same
 * target cannot apply a batch twice: the second one finds the checkpoint
 * the first one moved.
 *
 * SQLite target: the database runs in rollback-journal mode (not WAL), so
 * that a rebuild can be swapped in by rename(): a committed database is one
 * file with no side files.  The swap takes the old file's write lock
 * first (no writer is inside a transaction of it, and no hot journal is
 * left for the new file to inherit); a projector that still has the old
 * file open checks, once it holds its write lock, that PATH is still the
 * file it has open, and reopens PATH when it is not.
 */
#include "project_int.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define PROJ_NAME_MAX 128
#define PROJ_BATCH_DEFAULT 1000
#define PROJ_WAIT_DEFAULT_MS 1000
#define PROJ_BUSY_TIMEOUT_MS 10000
#define PROJ_OPEN_TRIES 5

/* ---- errors ---- */

static _Thread_local char proj_errmsg[1024];

void es_proj__clear_error(void)
{
    proj_errmsg[0] = '\0';
}

const char *es_proj_error_last(void)
{
    return proj_errmsg;
}

static void set_errorv(const char *fmt, va_list ap)
{
    char tmp[sizeof proj_errmsg];
    vsnprintf(tmp, sizeof tmp, fmt, ap); /* fmt's arguments may point into proj_errmsg */
    memcpy(proj_errmsg, tmp, sizeof tmp);
}

void es_proj_set_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_errorv(fmt, ap);
    va_end(ap);
}

int es_proj__err(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    set_errorv(fmt, ap);
    va_end(ap);
    return code;
}

/* A callback's code: its own ES_E* code, else ES_EUSER. */
static int cb_rc(int rc, const char *what)
{
    if (ES_IS_ERRNO(rc))
        return rc;
    if (!proj_errmsg[0])
        es_proj_set_error("%s returned %d", what, rc);
    return ES_EUSER;
}

/* A store call failed: keep the library's message. */
static int store_err(int rc, const char *what)
{
    return es_proj__err(rc, "%s: %s%s%s", what, es_strerror(rc), *es_error_last() ? ": " : "",
                        es_error_last());
}

/* ---- the SQLite target ---- */

typedef struct target {
    char *path;
    sqlite3 *db;
    dev_t dev; /* the file the connection has open (see sq_begin) */
    ino_t ino;
    bool meta_ok;  /* eventsrc_projection exists on this connection */
    bool attached; /* the projection's callbacks have seen this connection */
    sqlite3_stmt *get_ckpt, *put_ckpt;
} target;

static int sq_fail(target *t, const char *what)
{
    return es_proj__err(ES_EIO, "sqlite:%s: %s: %s", t->path, what, sqlite3_errmsg(t->db));
}

static int sq_exec(target *t, const char *sql)
{
    if (sqlite3_exec(t->db, sql, NULL, NULL, NULL) != SQLITE_OK)
        return sq_fail(t, sql);
    return 0;
}

static void sq_close(target *t, const es_proj_def *def)
{
    if (!t->db)
        return;
    if (t->attached && def->detach) {
        es_proj_db pdb = {ES_PROJ_SQLITE, t->db};
        def->detach(&pdb, def->payload);
    }
    sqlite3_finalize(t->get_ckpt);
    sqlite3_finalize(t->put_ckpt);
    sqlite3_close(t->db);
    t->db = NULL;
    t->get_ckpt = t->put_ckpt = NULL;
    t->meta_ok = t->attached = false;
}

/*
 * Open PATH and learn which file was opened: the file is the same before
 * and after the open (a rename over PATH in between is retried).
 */
static int sq_open(target *t, bool create)
{
    struct stat before, after;
    int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0);
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
            return 0;
        }
        sqlite3_close(t->db);
        t->db = NULL;
    }
    return es_proj__err(ES_EIO, "sqlite:%s: the file keeps being replaced", t->path);
}

/* Is PATH still the file the connection has open? */
static bool sq_same_file(const target *t)
{
    struct stat s;
    return stat(t->path, &s) == 0 && s.st_dev == t->dev && s.st_ino == t->ino;
}

/*
 * Begin a batch's write transaction.  Once the write lock is held, no
 * rebuild can swap PATH under it; if one did before, the connection is
 * reopened on the new file.
 */
static int sq_begin(target *t, const es_proj_def *def)
{
    int rc;
    for (int tries = 0; tries < PROJ_OPEN_TRIES; tries++) {
        if ((rc = sq_exec(t, "BEGIN IMMEDIATE")) < 0)
            return rc;
        if (sq_same_file(t))
            return 0;
        sqlite3_exec(t->db, "ROLLBACK", NULL, NULL, NULL);
        sq_close(t, def);
        if ((rc = sq_open(t, true)) < 0)
            return rc;
    }
    return es_proj__err(ES_EIO, "sqlite:%s: the file keeps being replaced", t->path);
}

static void sq_rollback(target *t)
{
    if (t->db && !sqlite3_get_autocommit(t->db))
        sqlite3_exec(t->db, "ROLLBACK", NULL, NULL, NULL);
}

typedef struct ckpt {
    bool found;
    uint64_t position, events;
    char definition[17];
} ckpt;

static int sq_read_ckpt(target *t, const char *name, ckpt *c)
{
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
        sqlite3_prepare_v2(t->db,
                           "SELECT position, events, definition FROM eventsrc_projection "
                           "WHERE name = ?1",
                           -1, &t->get_ckpt, NULL) != SQLITE_OK)
        return sq_fail(t, "reading the checkpoint");
    sqlite3_reset(t->get_ckpt);
    sqlite3_bind_text(t->get_ckpt, 1, name, -1, SQLITE_STATIC);
    rc = sqlite3_step(t->get_ckpt);
    if (rc == SQLITE_ROW) {
        sqlite3_int64 pos = sqlite3_column_int64(t->get_ckpt, 0);
        sqlite3_int64 n = sqlite3_column_int64(t->get_ckpt, 1);
        const unsigned char *d = sqlite3_column_text(t->get_ckpt, 2);
        if (pos < 0 || n < 0) {
            sqlite3_reset(t->get_ckpt);
            return es_proj__err(ES_ECORRUPT, "sqlite:%s: checkpoint of '%s' is negative", t->path,
                                name);
        }
        c->found = true;
        c->position = (uint64_t)pos;
        c->events = (uint64_t)n;
        if (d)
            snprintf(c->definition, sizeof c->definition, "%s", (const char *)d);
        rc = SQLITE_DONE;
    }
    sqlite3_reset(t->get_ckpt);
    return rc == SQLITE_DONE ? 0 : sq_fail(t, "reading the checkpoint");
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static int sq_write_ckpt(target *t, const char *name, const ckpt *c)
{
    if (!t->put_ckpt &&
        sqlite3_prepare_v2(t->db,
                           "INSERT INTO eventsrc_projection(name, position, events, definition, "
                           "updated_us) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT(name) DO UPDATE "
                           "SET position = excluded.position, events = excluded.events, "
                           "definition = excluded.definition, updated_us = excluded.updated_us",
                           -1, &t->put_ckpt, NULL) != SQLITE_OK)
        return sq_fail(t, "writing the checkpoint");
    sqlite3_reset(t->put_ckpt);
    sqlite3_bind_text(t->put_ckpt, 1, name, -1, SQLITE_STATIC);
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

static int sq_commit(target *t)
{
    return sq_exec(t, "COMMIT");
}

static int fsync_dir_of(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return ES_ENOMEM;
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
 * Swap the rebuilt database (t, open on its temporary file) in at `path`,
 * under the old file's write lock.  The old file must hold nothing but
 * this projection (or nothing at all).
 */
static int sq_swap(target *t, const char *path, const char *name)
{
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
    if (!(t->path = strdup(path))) {
        rc = es_proj__err(ES_ENOMEM, "out of memory");
        goto done;
    }
    rc = fsync_dir_of(path);
done:
    sqlite3_finalize(st);
    if (old) {
        sqlite3_exec(old, "ROLLBACK", NULL, NULL, NULL);
        sqlite3_close(old);
    }
    return rc;
}

/* ---- a batch of events, copied out of the cursor ---- */

typedef struct batch {
    es_event *ev;
    size_t n, cap;
    struct evoff {
        size_t stream, type, data, meta;
    } * off;
    uint8_t *bytes;
    size_t len, bcap;
} batch;

static int batch_put(batch *b, const void *p, size_t n, size_t *off)
{
    if (b->len + n + 1 > b->bcap) {
        size_t cap = b->bcap ? b->bcap : 4096;
        while (cap < b->len + n + 1)
            cap *= 2;
        uint8_t *q = realloc(b->bytes, cap);
        if (!q)
            return es_proj__err(ES_ENOMEM, "out of memory");
        b->bytes = q;
        b->bcap = cap;
    }
    *off = b->len;
    if (n)
        memcpy(b->bytes + b->len, p, n);
    b->bytes[b->len + n] = '\0'; /* types are NUL-terminated; data gets one too */
    b->len += n + 1;
    return 0;
}

static int batch_add(batch *b, const es_event *e)
{
    int rc;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        es_event *ev = realloc(b->ev, cap * sizeof *ev);
        if (!ev)
            return es_proj__err(ES_ENOMEM, "out of memory");
        b->ev = ev;
        struct evoff *off = realloc(b->off, cap * sizeof *off);
        if (!off)
            return es_proj__err(ES_ENOMEM, "out of memory");
        b->off = off;
        b->cap = cap;
    }
    struct evoff *o = &b->off[b->n];
    if ((rc = batch_put(b, e->stream, e->stream_len, &o->stream)) < 0 ||
        (rc = batch_put(b, e->type, e->type_len, &o->type)) < 0 ||
        (rc = batch_put(b, e->data, e->data_len, &o->data)) < 0 ||
        (rc = batch_put(b, e->meta, e->meta_len, &o->meta)) < 0)
        return rc;
    b->ev[b->n++] = *e;
    return 0;
}

/* Point the copied events at their bytes (which may have moved while growing). */
static void batch_seal(batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        es_event *e = &b->ev[i];
        e->stream = b->bytes + b->off[i].stream;
        e->type = (const char *)b->bytes + b->off[i].type;
        e->data = b->bytes + b->off[i].data;
        e->meta = b->bytes + b->off[i].meta;
    }
}

static void batch_free(batch *b)
{
    free(b->ev);
    free(b->off);
    free(b->bytes);
}

/* ---- the run ---- */

typedef struct runner {
    es_store *store;
    const es_proj_def *def;
    es_proj_options opts;
    target t;
    char definition[17]; /* hash of def->definition, "" when none */
    batch b;
    es_cursor *cur;
    uint64_t cur_next; /* the cursor's next position is at least this */
    uint64_t scanned;  /* the log was read to here from checkpoint `scanned_base` */
    uint64_t scanned_base;
    es_proj_progress p;
    bool started;
} runner;

static void hash_definition(char out[17], const char *text)
{
    uint64_t h = UINT64_C(1469598103934665603); /* FNV-1a 64 */
    for (const unsigned char *s = (const unsigned char *)text; *s; s++) {
        h ^= *s;
        h *= UINT64_C(1099511628211);
    }
    snprintf(out, 17, "%016" PRIx64, h);
}

/* Read up to a batch of events after the checkpoint into r->b. */
static int collect(runner *r, uint64_t checkpoint)
{
    uint64_t from = checkpoint + 1, last = 0;
    const es_event *e;
    int rc;

    r->b.n = r->b.len = 0;
    /* What this run already read past the checkpoint held no event of ours. */
    if (r->scanned_base == checkpoint && r->scanned > checkpoint)
        from = r->scanned + 1;
    if ((rc = es_store_last_position(&last, r->store)) < 0)
        return store_err(rc, "reading the log");
    r->p.last_position = last;
    if (r->cur && r->cur_next != from) {
        es_cursor_free(r->cur);
        r->cur = NULL;
    }
    if (!r->cur) {
        es_log_options lo = ES_LOG_OPTIONS_INIT;
        lo.from_position = from;
        lo.prefix = r->def->prefix;
        lo.prefix_len = r->def->prefix ? r->def->prefix_len : 0;
        lo.type = r->def->type;
        if ((rc = es_log_cursor(&r->cur, r->store, &lo)) < 0)
            return store_err(rc, "reading the log");
    }
    size_t max = r->opts.batch_events ? r->opts.batch_events : PROJ_BATCH_DEFAULT;
    while (r->b.n < max && (rc = es_cursor_next(&e, r->cur)) == 0) {
        if ((rc = batch_add(&r->b, e)) < 0)
            return rc;
    }
    r->scanned_base = checkpoint;
    if (rc == ES_ITEROVER) {
        /* Every event up to `last` was visible to the cursor: the log is read
         * to there, whether or not the filters let anything through. */
        es_cursor_free(r->cur);
        r->cur = NULL;
        r->scanned =
            r->b.n && r->b.ev[r->b.n - 1].position > last ? r->b.ev[r->b.n - 1].position : last;
        r->p.caught_up = 1;
    } else if (rc < 0) {
        return store_err(rc, "reading the log");
    } else {
        r->scanned = r->b.ev[r->b.n - 1].position;
        r->cur_next = r->scanned + 1;
        r->p.caught_up = 0;
    }
    if (r->scanned < checkpoint)
        r->scanned = checkpoint;
    batch_seal(&r->b);
    return 0;
}

/*
 * One batch: begin, read the checkpoint, read events after it, apply them,
 * move the checkpoint, commit.  *applied is the number of events (0: the
 * model holds the whole log, nothing was written).
 */
static int step(runner *r, size_t *applied)
{
    es_proj_db pdb;
    ckpt c;
    int rc;

    *applied = 0;
    if ((rc = sq_begin(&r->t, r->def)) < 0)
        return rc;
    pdb.kind = ES_PROJ_SQLITE;
    pdb.conn = r->t.db;
    if ((rc = sq_read_ckpt(&r->t, r->def->name, &c)) < 0)
        goto fail;
    if (c.found && strcmp(c.definition, r->definition) != 0) {
        rc = es_proj__err(ES_ECONFLICT,
                          "sqlite:%s: the model '%s' was built by another definition of the "
                          "projection: rebuild it",
                          r->t.path, r->def->name);
        goto fail;
    }
    if (!r->started) {
        r->p.start = r->p.position = c.position;
        r->started = true;
    }
    r->p.position = c.position;
    if ((rc = collect(r, c.position)) < 0)
        goto fail;
    if (c.found && r->b.n == 0) {
        sq_rollback(&r->t); /* nothing to write */
        return 0;
    }
    r->t.attached = true;
    if (!c.found && r->def->setup && (rc = r->def->setup(&pdb, r->def->payload)) != 0) {
        rc = cb_rc(rc, "setup");
        goto fail;
    }
    if ((rc = r->def->apply(&pdb, r->b.ev, r->b.n, r->def->payload)) != 0) {
        rc = cb_rc(rc, "apply");
        goto fail;
    }
    c.found = true;
    if (r->b.n)
        c.position = r->scanned;
    c.events += r->b.n;
    memcpy(c.definition, r->definition, sizeof c.definition);
    if ((rc = sq_write_ckpt(&r->t, r->def->name, &c)) < 0 || (rc = sq_commit(&r->t)) < 0)
        goto fail;
    r->scanned_base = c.position;
    r->p.position = c.position;
    r->p.events += r->b.n;
    r->p.batches++;
    *applied = r->b.n;
    /* A new model with no events yet: committed, but nothing applied. */
    return 0;
fail:
    sq_rollback(&r->t);
    return rc;
}

static int report(runner *r)
{
    if (!r->opts.progress)
        return 0;
    int rc = r->opts.progress(&r->p, r->opts.payload);
    if (rc == 0 || rc == 1)
        return rc;
    return cb_rc(rc, "progress");
}

static bool valid_name(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > PROJ_NAME_MAX)
        return false;
    for (; *s; s++) {
        char ch = *s;
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == '-'))
            return false;
    }
    return true;
}

static int check_args(es_store *store, const char *target_uri, const es_proj_def *def,
                      const es_proj_options *opts)
{
    if (!store || !target_uri || !def)
        return es_proj__err(ES_EINVAL, "store, target and def are required");
    if (def->version < 1 || def->version > ES_PROJ_DEF_VERSION)
        return es_proj__err(ES_EINVAL, "es_proj_def version %u is not 1..%d", def->version,
                            ES_PROJ_DEF_VERSION);
    if (!def->name || !valid_name(def->name))
        return es_proj__err(ES_EINVAL,
                            "a projection's name is 1..%d characters of A-Z a-z 0-9 _ . -",
                            PROJ_NAME_MAX);
    if (!def->apply)
        return es_proj__err(ES_EINVAL, "es_proj_def.apply is required");
    if (opts && (opts->version < 1 || opts->version > ES_PROJ_OPTIONS_VERSION))
        return es_proj__err(ES_EINVAL, "es_proj_options version %u is not 1..%d", opts->version,
                            ES_PROJ_OPTIONS_VERSION);
    if (opts && (opts->flags & ~(ES_PROJ_FOLLOW | ES_PROJ_REBUILD)))
        return es_proj__err(ES_EINVAL, "unknown flags 0x%x", opts->flags);
    if (opts && (opts->wait_ms < 0 || opts->wait_ms > 86400000))
        return es_proj__err(ES_EINVAL, "wait_ms must be 0..86400000");
    return 0;
}

int es_proj_run(es_proj_progress *out, es_store *store, const char *target_uri,
                const es_proj_def *def, const es_proj_options *opts)
{
    static const es_proj_options defaults = ES_PROJ_OPTIONS_INIT;
    runner r;
    const char *path;
    char *final_path = NULL;
    size_t applied;
    int rc;

    es_proj__clear_error();
    if (out)
        memset(out, 0, sizeof *out);
    if ((rc = check_args(store, target_uri, def, opts)) < 0)
        return rc;
    memset(&r, 0, sizeof r);
    r.store = store;
    r.def = def;
    r.opts = opts ? *opts : defaults;
    if (def->definition)
        hash_definition(r.definition, def->definition);
    if (strncmp(target_uri, "postgres://", 11) == 0 ||
        strncmp(target_uri, "postgresql://", 13) == 0)
        return es_proj__err(ES_ENOTSUP, "%s: PostgreSQL targets are not built in", target_uri);
    if (strncmp(target_uri, "sqlite:", 7) != 0 || !target_uri[7])
        return es_proj__err(ES_EINVAL, "target '%s' is not sqlite:PATH", target_uri);
    path = target_uri + 7;

    if (r.opts.flags & ES_PROJ_REBUILD) {
        size_t n = strlen(path) + 64;
        if (!(final_path = strdup(path)) || !(r.t.path = malloc(n))) {
            rc = es_proj__err(ES_ENOMEM, "out of memory");
            goto done;
        }
        snprintf(r.t.path, n, "%s.rebuild-%ld", path, (long)getpid());
        /* Leftovers of a rebuild by an earlier process with this pid. */
        char *journal = malloc(n + 8);
        if (!journal) {
            rc = es_proj__err(ES_ENOMEM, "out of memory");
            goto done;
        }
        snprintf(journal, n + 8, "%s-journal", r.t.path);
        unlink(r.t.path);
        unlink(journal);
        free(journal);
        r.p.rebuilding = 1;
    } else if (!(r.t.path = strdup(path))) {
        rc = es_proj__err(ES_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = sq_open(&r.t, true)) < 0)
        goto done;

    for (;;) {
        if ((rc = step(&r, &applied)) < 0)
            goto done;
        if (applied) {
            if ((rc = report(&r)) != 0)
                break;
            continue;
        }
        if (r.p.rebuilding) {
            if ((rc = sq_swap(&r.t, final_path, def->name)) < 0)
                goto done;
            r.p.rebuilding = 0;
        }
        if ((rc = report(&r)) != 0 || !(r.opts.flags & ES_PROJ_FOLLOW))
            break;
        uint64_t after = r.scanned > r.p.position ? r.scanned : r.p.position;
        rc = es_log_wait(store, after, r.opts.wait_ms ? r.opts.wait_ms : PROJ_WAIT_DEFAULT_MS);
        if (rc < 0 && rc != ES_ETIMEDOUT) {
            rc = store_err(rc, "waiting for the log");
            goto done;
        }
    }
    if (rc == 1)
        rc = 0;
done:
    if (out)
        *out = r.p;
    es_cursor_free(r.cur);
    sq_close(&r.t, def);
    if (r.p.rebuilding && r.t.path && final_path) {
        /* A rebuild that did not finish leaves the old model as it was. */
        unlink(r.t.path);
    }
    free(r.t.path);
    free(final_path);
    batch_free(&r.b);
    return rc;
}
