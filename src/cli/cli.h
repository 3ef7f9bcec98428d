/*
 * cli.h — what the esrc command's files share.
 */
#ifndef ESRC_CLI_H
#define ESRC_CLI_H

#include <eventsrc.h>
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>

/* Exit codes (documented in `esrc --help` and the README). */
enum {
    ESRC_OK = 0,
    ESRC_FAIL = 1,     /* any other error */
    ESRC_USAGE = 2,    /* bad command line or input */
    ESRC_CONFLICT = 3, /* --expect did not hold */
    ESRC_VERIFY = 4,   /* verify found a bad event */
};

/* What every command gets from the global options. */
typedef struct esrc_ctx {
    const char *store_uri;
    int json;
    bool fake;        /* ESRC_CLOCK_START_US is set: a fake clock, for reproducible output */
    int64_t fake_now; /* its last reading; each reading adds one second */
    const char *master_key_file; /* --master-key FILE or $ESRC_MASTER_KEY_FILE (NULL: none) */
} esrc_ctx;

/* ---- shared by the command files (defined in esrc.c) ---- */

/* One line "esrc: MESSAGE (see --help)" on stderr; @return ESRC_USAGE. */
int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Open the store of cx (with its fake clock); `create` lets a missing lmdb
 * store be made.  @return 0, or an exit code after a message. */
int open_store(es_store **st, esrc_ctx *cx, bool create, bool readonly);
/* A decimal number, digits only.  @return 0, or ESRC_USAGE after a message. */
int parse_u64(uint64_t *out, const char *s, const char *what);
/* Print a JSON object as one line and free it. */
void print_json(json_t *o);

/* The command's argv, for messages about its options (getopt's own are off). */
extern char **current_argv;

/* clang-format would break the last initialiser over three lines */
/* clang-format off */
#define COMMON_OPTS                                                                                \
    {"help", no_argument, NULL, 'h'}, {"store", required_argument, NULL, 'S'},                     \
    {"json", no_argument, NULL, 'J'}
/* clang-format on */

/* A common option: 100 after --help, ESRC_OK when taken, ESRC_USAGE after a
 * message, -1 when c is not one. */
int common_opt(esrc_ctx *cx, int c, const char *help);

/* Used inside a getopt loop: `continue`s past a common option. */
#define HANDLE_COMMON(cx, c, help)                                                                 \
    {                                                                                              \
        int r_ = common_opt(cx, c, help);                                                          \
        if (r_ == 100)                                                                             \
            return ESRC_OK;                                                                        \
        if (r_ == ESRC_USAGE)                                                                      \
            return ESRC_USAGE;                                                                     \
        if (r_ == ESRC_OK)                                                                         \
            continue;                                                                              \
    }

/* `esrc sub …` (sub.c): argv[0] is "sub". */
int esrc_sub(esrc_ctx *cx, int argc, char **argv);

typedef struct demo_clock {
    int64_t now;
} demo_clock;

int esrc_demo(es_store *st, void *clock_payload, FILE *out);
int64_t esrc_demo_clock(void *payload);
/* `esrc project …` (project.c): argv[0] is "project". */
int esrc_project(esrc_ctx *cx, int argc, char **argv);

/* `esrc replicate …` and `esrc backup …` (replicate.c). */
int esrc_replicate(esrc_ctx *cx, int argc, char **argv);
int esrc_backup(esrc_ctx *cx, int argc, char **argv);
/* Verifiable history (merkle.c): `esrc key`, `digest`, `prove`, `check-proof`,
 * and `verify --since` (an exit code after printing). */
int esrc_key(esrc_ctx *cx, int argc, char **argv);
int esrc_digest(esrc_ctx *cx, int argc, char **argv);
int esrc_prove(esrc_ctx *cx, int argc, char **argv);
int esrc_check_proof(esrc_ctx *cx, int argc, char **argv);
int esrc_verify_since(esrc_ctx *cx, es_store *st, const char *digest_path, const char *pubkey);

void esrc_format_time(char *out, size_t cap, int64_t us);

#endif
