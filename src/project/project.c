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
 * The targets (sqlite.c, pg.c) sit behind es_proj__target_ops: begin a
 * batch under the projection's write lock, read and write the checkpoint,
 * commit, and swap a rebuilt model in.
 */
#include "project_int.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROJ_NAME_MAX 128
#define PROJ_BATCH_DEFAULT 1000
#define PROJ_WAIT_DEFAULT_MS 1000
#define PROJ_BEHIND_CAP 1000000 /* events counted for the lag, at most (as es_sub_info) */

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

void es_proj__detach(es_proj__target *t)
{
    if (t->attached && t->def->detach)
        t->def->detach(&t->db, t->def->payload);
    t->attached = false;
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
    es_proj__target *t;
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
    bool fresh = false;
    int rc;

again:
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
        fresh = true;
    }
    size_t max = r->opts.batch_events ? r->opts.batch_events : PROJ_BATCH_DEFAULT;
    while (r->b.n < max && (rc = es_cursor_next(&e, r->cur)) == 0) {
        if ((rc = batch_add(&r->b, e)) < 0)
            return rc;
    }
    r->scanned_base = checkpoint;
    if (rc == ES_ITEROVER && !fresh) {
        /* A cursor kept from the last batch ends where the log ended when
         * it read its last page, which may be before `last`: only what it
         * gave is read.  With nothing, look again with a new cursor. */
        es_cursor_free(r->cur);
        r->cur = NULL;
        if (r->b.n == 0)
            goto again;
        r->scanned = r->b.ev[r->b.n - 1].position;
        r->p.caught_up = 0;
    } else if (rc == ES_ITEROVER) {
        /* A cursor opened after `last` was read saw every event up to it:
         * the log is read to there, whether or not the filters let
         * anything through. */
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
    es_proj__target *t = r->t;
    es_proj__ckpt c;
    int rc;

    *applied = 0;
    if ((rc = t->ops->begin(t)) < 0)
        return rc;
    if ((rc = t->ops->read_ckpt(t, &c)) < 0)
        goto fail;
    if (c.found && strcmp(c.definition, r->definition) != 0) {
        rc = es_proj__err(ES_ECONFLICT,
                          "%s: the model '%s' was built by another definition of the "
                          "projection: rebuild it",
                          t->label, r->def->name);
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
        t->ops->rollback(t); /* nothing to write */
        return 0;
    }
    t->attached = true;
    if (!c.found && r->def->setup && (rc = r->def->setup(&t->db, r->def->payload)) != 0) {
        rc = cb_rc(rc, "setup");
        goto fail;
    }
    if ((rc = r->def->apply(&t->db, r->b.ev, r->b.n, r->def->payload)) != 0) {
        rc = cb_rc(rc, "apply");
        goto fail;
    }
    c.found = true;
    if (r->b.n)
        c.position = r->scanned;
    c.events += r->b.n;
    memcpy(c.definition, r->definition, sizeof c.definition);
    if ((rc = t->ops->write_ckpt(t, &c)) < 0 || (rc = t->ops->commit(t)) < 0)
        goto fail;
    r->scanned_base = c.position;
    r->p.position = c.position;
    r->p.events += r->b.n;
    r->p.batches++;
    *applied = r->b.n;
    /* A new model with no events yet: committed, but nothing applied. */
    return 0;
fail:
    t->ops->rollback(t);
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

/* The kind of a target URI; *rest is what follows the scheme (sqlite) or
 * the whole URI (postgres). */
static int target_kind(const char *uri, const char **rest)
{
    if (strncmp(uri, "postgres://", 11) == 0 || strncmp(uri, "postgresql://", 13) == 0) {
        *rest = uri;
#ifdef ES_PROJ_HAVE_PG
        return ES_PROJ_PG;
#else
        return es_proj__err(ES_ENOTSUP, "PostgreSQL targets are not built in");
#endif
    }
    if (strncmp(uri, "sqlite:", 7) != 0 || !uri[7])
        return es_proj__err(ES_EINVAL, "target '%s' is not sqlite:PATH or postgres://…", uri);
    *rest = uri + 7;
    return ES_PROJ_SQLITE;
}

static int open_target(es_proj__target **out, const char *uri, const es_proj_def *def, bool rebuild)
{
    const char *rest = NULL;
    int kind = target_kind(uri, &rest);
    if (kind < 0)
        return kind;
#ifdef ES_PROJ_HAVE_PG
    if (kind == ES_PROJ_PG)
        return es_proj__pg_open(out, rest, def, rebuild);
#endif
    return es_proj__sqlite_open(out, rest, def, rebuild);
}

int es_proj_run(es_proj_progress *out, es_store *store, const char *target_uri,
                const es_proj_def *def, const es_proj_options *opts)
{
    static const es_proj_options defaults = ES_PROJ_OPTIONS_INIT;
    runner r;
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
    r.p.rebuilding = (r.opts.flags & ES_PROJ_REBUILD) != 0;
    if ((rc = open_target(&r.t, target_uri, def, r.p.rebuilding)) < 0)
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
            if ((rc = r.t->ops->swap(r.t)) < 0)
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
    if (r.t)
        r.t->ops->close(r.t); /* a rebuild not swapped in is thrown away */
    batch_free(&r.b);
    return rc;
}

int es_proj_status_get(es_proj_status *out, es_store *store, const char *target_uri,
                       const es_proj_def *def)
{
    es_proj__ckpt c;
    es_cursor *cur = NULL;
    const es_event *e;
    const char *rest = NULL;
    char hash[17] = "";
    int kind, rc;

    es_proj__clear_error();
    if (!out)
        return es_proj__err(ES_EINVAL, "out is required");
    memset(out, 0, sizeof *out);
    if ((rc = check_args(store, target_uri, def, NULL)) < 0)
        return rc;
    if ((kind = target_kind(target_uri, &rest)) < 0)
        return kind;
#ifdef ES_PROJ_HAVE_PG
    if (kind == ES_PROJ_PG)
        rc = es_proj__pg_peek(&c, rest, def);
    else
#endif
        rc = es_proj__sqlite_peek(&c, rest, def->name);
    if (rc < 0)
        return rc;
    if (def->definition)
        hash_definition(hash, def->definition);
    out->found = c.found;
    out->checkpoint = c.position;
    out->events = c.events;
    out->updated_us = c.updated_us;
    out->same_definition = c.found && strcmp(c.definition, hash) == 0;
    if ((rc = es_store_last_position(&out->head, store)) < 0)
        return store_err(rc, "reading the log");
    if (out->head <= c.position)
        return 0;
    /* Counted as es_sub_info counts a subscription's lag: the events after
     * the checkpoint that the projection's filters let through, up to a cap. */
    es_log_options lo = ES_LOG_OPTIONS_INIT;
    lo.from_position = c.position + 1;
    lo.prefix = def->prefix;
    lo.prefix_len = def->prefix ? def->prefix_len : 0;
    lo.type = def->type;
    if ((rc = es_log_cursor(&cur, store, &lo)) < 0)
        return store_err(rc, "reading the log");
    while ((rc = es_cursor_next(&e, cur)) == 0) {
        if (out->behind == 0)
            out->oldest_us = e->time_us;
        if (++out->behind >= PROJ_BEHIND_CAP) {
            out->behind_capped = es_cursor_next(&e, cur) == 0;
            rc = ES_ITEROVER;
            break;
        }
    }
    es_cursor_free(cur);
    return rc == ES_ITEROVER ? 0 : store_err(rc, "reading the log");
}
