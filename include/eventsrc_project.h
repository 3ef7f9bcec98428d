/*
 * eventsrc_project.h — SQL read models (projections) kept exactly once.
 *
 * A projection folds the global log into tables of a SQL database (the
 * target).  Each batch of events is applied in ONE transaction of the target
 * that also moves the projection's checkpoint, a row of the target's table
 *
 *   eventsrc_projection(name TEXT PRIMARY KEY, position INTEGER, events INTEGER,
 *                       definition TEXT, updated_us INTEGER)
 *
 * so a crash at any moment leaves the model at a batch boundary, and the next
 * run resumes from the checkpoint it finds there: no event twice, none
 * skipped, whatever the handler does.  The target's checkpoint is the only
 * truth; no subscription is involved.
 *
 * This is a library of its own, libeventsrc_project (static), built on the
 * public API of libeventsrc: a program that uses it links sqlite3, jansson
 * and (when built with PostgreSQL) libpq as well.  libeventsrc itself does
 * not depend on SQLite or jansson.
 *
 * Targets:
 *   "sqlite:PATH"     a database file, created if missing;
 *   "postgres://…"    a PostgreSQL database (libpq URI); the model lives in
 *                     a schema of its own, `?schema=NAME` (default: the
 *                     projection's name), created if missing, and the
 *                     connection's search_path is that schema alone, so the
 *                     projection's SQL names its tables unqualified.
 *
 * Two ways to write a projection: in C, an es_proj_def whose apply callback
 * gets the open connection inside the batch's transaction; or a projection
 * file (doc/projections.md), loaded with es_proj_file_load, which maps event
 * types to SQL statements with the event's fields bound as parameters.
 */
#ifndef EVENTSRC_PROJECT_H
#define EVENTSRC_PROJECT_H

#include <eventsrc.h>

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Kinds of target (es_proj_db.kind). */
#define ES_PROJ_SQLITE 1
#define ES_PROJ_PG 2

/** The target's connection, handed to a projection's callbacks. */
typedef struct es_proj_db {
    int kind;   /* ES_PROJ_SQLITE or ES_PROJ_PG */
    void *conn; /* sqlite3 * or PGconn *: the batch's transaction is open on
                   it; do not commit, roll back or close it */
} es_proj_db;

#define ES_PROJ_DEF_VERSION 1

/**
 * A projection.  Every callback returns 0, or a negative ES_E* code (any
 * other non-zero value becomes ES_EUSER) to stop: the batch's transaction
 * is rolled back and es_proj_run returns that code.  A callback may say why
 * with es_proj_set_error.
 */
typedef struct es_proj_def {
    unsigned version; /* ES_PROJ_DEF_VERSION */
    /** The checkpoint's key in eventsrc_projection: 1..128 bytes of
     *  [A-Za-z0-9_.-]. */
    const char *name;
    /** Text that identifies the projection's code (a version, or its
     *  source).  A model built by another definition is refused
     *  (ES_ECONFLICT): rebuild it.  NULL: not checked. */
    const char *definition;
    /* Which events: as es_log_options (NULL / 0: every event). */
    const void *prefix;
    size_t prefix_len;
    const char *type;
    /** Creates the model's tables: called once, in the transaction of the
     *  first batch of a model that has no checkpoint yet.  May be NULL. */
    int (*setup)(const es_proj_db *db, void *payload);
    /** Applies a batch (n >= 1 events in log order; the very first
     *  transaction of a new model may call it with n == 0).  The events
     *  and their bytes are valid during the call only. */
    int (*apply)(const es_proj_db *db, const es_event *events, size_t n, void *payload);
    /** Called before a connection the callbacks have seen is closed, to
     *  free what was prepared on it.  May be NULL. */
    void (*detach)(const es_proj_db *db, void *payload);
    void *payload;
} es_proj_def;

/** Where a run stands. */
typedef struct es_proj_progress {
    uint64_t events;        /* events applied by this run */
    uint64_t batches;       /* transactions committed by this run */
    uint64_t position;      /* the model's checkpoint: its last event's position */
    uint64_t start;         /* the checkpoint when this run began */
    uint64_t last_position; /* the store's last position, when last looked */
    int caught_up;          /* 1 when the model held the whole log at the last look */
    int rebuilding;         /* 1 while a rebuild is not yet swapped in */
} es_proj_progress;

#define ES_PROJ_OPTIONS_VERSION 1

/* Flags for es_proj_options.flags. */
#define ES_PROJ_FOLLOW 0x1u /* keep applying new events until progress says stop */
#define ES_PROJ_REBUILD                                                                            \
    0x2u /* build from the start of the log into a fresh
                                model, then swap it in atomically */

typedef struct es_proj_options {
    unsigned version;    /* ES_PROJ_OPTIONS_VERSION */
    unsigned flags;      /* ES_PROJ_* */
    size_t batch_events; /* events per transaction at most (0: 1000) */
    int wait_ms;         /* follow: the longest wait for new events between two
                            progress calls (0: 1000) */
    /** Called after each committed batch and, when following, after each
     *  wait.  Return 0 to go on, 1 to stop (es_proj_run returns 0), or a
     *  negative ES_E* code to stop with it.  May be NULL. */
    int (*progress)(const es_proj_progress *p, void *payload);
    void *payload;
} es_proj_options;

#define ES_PROJ_OPTIONS_INIT                                                                       \
    {                                                                                              \
        ES_PROJ_OPTIONS_VERSION, 0, 0, 0, NULL, NULL                                               \
    }

/**
 * Run a projection: apply the log's events after the target's checkpoint,
 * batch by batch, until the model holds the whole log (and, with
 * ES_PROJ_FOLLOW, on as new events come, until progress returns 1).
 *
 * With ES_PROJ_REBUILD the model is built from the start of the log into a
 * fresh place and swapped in atomically once it holds the whole log: a
 * reader sees the old model or the new one, never a mix.
 *   SQLite: a new file next to PATH (PATH.rebuild-PID), renamed over PATH
 *   under the old file's write lock.  A projector still following the old
 *   file notices the swap at its next batch and continues on the new one.
 *   PATH must hold no other projection.
 *   PostgreSQL: a new schema (SCHEMA_rebuild_PID); then one transaction
 *   drops the old schema (CASCADE) and renames the new one to SCHEMA.  A
 *   projector following the model names its tables through search_path, so
 *   its next batch runs on the new tables.  SCHEMA must hold no other
 *   projection (and nothing else: it is dropped whole).
 *
 * @param[out] out  where the run ended; may be NULL
 * @param store     the store to read
 * @param target    "sqlite:PATH" or "postgres://…[?schema=NAME]"
 * @param def       the projection
 * @param opts      options or NULL for the defaults
 * @return 0, ES_EINVAL (bad arguments; a target that holds something else),
 *         ES_ECONFLICT (the model was built by another definition),
 *         ES_ENOTSUP (a target kind not built in), ES_EIO (the target failed;
 *         bad SQL), ES_ENOMEM, a callback's code, or a store's error.  After
 *         an error the model is at its last committed batch.
 */
int es_proj_run(es_proj_progress *out, es_store *store, const char *target, const es_proj_def *def,
                const es_proj_options *opts);

/** Where a model stands against the log, read without writing anything. */
typedef struct es_proj_status {
    int found;           /* 1: the target holds a checkpoint of the projection */
    int same_definition; /* 1: built by this definition (0: rebuild it) */
    uint64_t checkpoint; /* the model's last position (0: none) */
    uint64_t events;     /* events applied over the model's life */
    int64_t updated_us;  /* when the checkpoint last moved, by the projector's
                            clock (0: never) */
    uint64_t head;       /* the log's last position */
    uint64_t behind;     /* events after the checkpoint that the projection's
                            filters take (capped, as es_sub_info's behind) */
    int behind_capped;   /* 1: there are more than `behind` */
    int64_t oldest_us;   /* commit time of the oldest of them (0: none) */
} es_proj_status;

/**
 * How far a model is behind the log: its checkpoint in the target, the
 * log's head, and the events in between the projection takes.  Reads only
 * (a target with no model yet is found = 0, behind = every event).
 * @return 0, ES_EINVAL, ES_ENOTSUP, ES_EIO, ES_ENOMEM, or a store's error.
 */
int es_proj_status_get(es_proj_status *out, es_store *store, const char *target,
                       const es_proj_def *def);

/** The message of the last failure of an es_proj_* call on this thread
 *  ("" when none).  Borrowed: valid until the next es_proj_* call. */
const char *es_proj_error_last(void);

/** For callbacks: set the message es_proj_error_last will give. */
void es_proj_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- projection files ---- */

typedef struct es_proj_file es_proj_file;

/**
 * Load a projection file (format: doc/projections.md).  Errors name the
 * file and line ("users.proj:12: …") in es_proj_error_last.
 * @param[out] out  the projection; free with es_proj_file_free
 * @return 0, ES_EINVAL (the file is not a projection), ES_EIO (unreadable),
 *         ES_ENOMEM.
 */
int es_proj_file_load(es_proj_file **out, const char *path);

/** es_proj_file_load from text in memory; `filename` names it in messages. */
int es_proj_file_parse(es_proj_file **out, const char *filename, const char *text, size_t len);

/** The projection of a loaded file, to hand to es_proj_run.  Borrowed from
 *  the file: valid until es_proj_file_free. */
const es_proj_def *es_proj_file_def(const es_proj_file *f);

/** Free a loaded file; NULL is ignored.  Runs must have ended. */
void es_proj_file_free(es_proj_file *f);

#ifdef __cplusplus
}
#endif

#endif /* EVENTSRC_PROJECT_H */
