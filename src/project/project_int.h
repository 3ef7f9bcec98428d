/*
 * project_int.h — what the projection library's files share: its errors,
 * and the targets (SQLite in sqlite.c, PostgreSQL in pg.c) behind one small
 * table of operations, so that the runner (project.c) knows nothing of a
 * particular database.
 */
#ifndef ES_PROJECT_INT_H
#define ES_PROJECT_INT_H

#include <eventsrc_project.h>

#include <stdbool.h>
#include <stdint.h>

/* Clear the thread's last message (at the start of each public call). */
void es_proj__clear_error(void);

/* Set the message and return code (for `return es_proj__err(ES_EINVAL, …)`). */
int es_proj__err(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* A projection's checkpoint, as a target stores it. */
typedef struct es_proj__ckpt {
    bool found;
    uint64_t position, events;
    int64_t updated_us;
    char definition[17];
} es_proj__ckpt;

typedef struct es_proj__target es_proj__target;

typedef struct es_proj__target_ops {
    /* Begin a batch's write transaction, holding the projection's write
     * lock (no other projector of it is inside a batch). */
    int (*begin)(es_proj__target *t);
    /* Read the checkpoint inside the transaction (creating its table). */
    int (*read_ckpt)(es_proj__target *t, es_proj__ckpt *c);
    int (*write_ckpt)(es_proj__target *t, const es_proj__ckpt *c);
    int (*commit)(es_proj__target *t);
    /* Roll back an open transaction, if any. */
    void (*rollback)(es_proj__target *t);
    /* A rebuilt model holds the whole log: make it the live one. */
    int (*swap)(es_proj__target *t);
    /* Close (detaching the projection) and free; a rebuild not swapped in
     * is thrown away. */
    void (*close)(es_proj__target *t);
} es_proj__target_ops;

struct es_proj__target {
    const es_proj__target_ops *ops;
    const es_proj_def *def;
    es_proj_db db;   /* the kind and the connection, for the callbacks */
    bool attached;   /* the callbacks have seen this connection */
    char label[200]; /* names the target in messages (never a password) */
};

/* Tell the projection a connection it has seen is going away. */
void es_proj__detach(es_proj__target *t);

/* Open a target; rebuild: a fresh model beside the live one. */
int es_proj__sqlite_open(es_proj__target **out, const char *path, const es_proj_def *def,
                         bool rebuild);
/* Read a checkpoint without writing anything (found = false: none). */
int es_proj__sqlite_peek(es_proj__ckpt *c, const char *path, const char *name);

#ifdef ES_PROJ_HAVE_PG
int es_proj__pg_open(es_proj__target **out, const char *uri, const es_proj_def *def, bool rebuild);
int es_proj__pg_peek(es_proj__ckpt *c, const char *uri, const es_proj_def *def);
#endif

#endif
