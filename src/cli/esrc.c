/*
 * esrc.c — the eventsrc command line.  A client of the public API only.
 *
 *   esrc [--store URI] COMMAND [ARGS]
 *
 * The store is --store, else $ESRC_STORE, else lmdb:./eventsrc.db (mem: when
 * the library was built without LMDB).
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#ifdef ES_HAVE_LMDB
#define ESRC_DEFAULT_STORE "lmdb:./eventsrc.db"
#else
#define ESRC_DEFAULT_STORE "mem:"
#endif

typedef struct esrc_ctx {
    const char *store_uri;
    int json;
} esrc_ctx;

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "esrc: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see esrc --help)\n");
    return ESRC_USAGE;
}

static int lib_error(const char *what, int rc)
{
    const char *detail = es_error_last();
    fprintf(stderr, "esrc: %s: %s%s%s\n", what, es_strerror(rc), *detail ? ": " : "", detail);
    return rc == ES_ECONFLICT ? ESRC_CONFLICT
           : rc == ES_EINVAL || rc == ES_ETOOBIG ? ESRC_USAGE
                                                 : ESRC_FAIL;
}

/* Options every command takes. */
#define COMMON_OPTS                                                                              \
    {"help", no_argument, NULL, 'h'}, {"store", required_argument, NULL, 'S'},                   \
        {"json", no_argument, NULL, 'J'}

/* Handle a common option; returns -1 when c is not one, else an exit code
 * (ESRC_OK meaning "go on", or 100 meaning "help printed, exit 0"). */
static int common_opt(esrc_ctx *cx, int c, const char *help)
{
    switch (c) {
    case 'h':
        fputs(help, stdout);
        return 100;
    case 'S':
        cx->store_uri = optarg;
        return ESRC_OK;
    case 'J':
        cx->json = 1;
        return ESRC_OK;
    case '?':
        return ESRC_USAGE;
    default:
        return -1;
    }
}

/* Used inside a getopt loop: `continue`s past a common option. */
#define HANDLE_COMMON(cx, c, help)                                                               \
    {                                                                                            \
        int r_ = common_opt(cx, c, help);                                                        \
        if (r_ == 100)                                                                           \
            return ESRC_OK;                                                                      \
        if (r_ == ESRC_USAGE)                                                                    \
            return ESRC_USAGE;                                                                   \
        if (r_ == ESRC_OK)                                                                       \
            continue;                                                                            \
    }

static int cmd_demo(esrc_ctx *cx, int argc, char **argv)
{
    static const struct option longs[] = {COMMON_OPTS, {NULL, 0, NULL, 0}};
    static const char help[] =
        "usage: esrc demo [--store URI]\n\n"
        "Plays the talk's users-and-groups story on the store and prints the\n"
        "tables, the event log, the audit answer and a rejected save.\n";
    es_open_options o = ES_OPEN_OPTIONS_INIT;
    demo_clock clock = {0};
    es_store *st = NULL;
    int c, rc;

    optind = 1;
    while ((c = getopt_long(argc, argv, "+h", longs, NULL)) != -1) {
        HANDLE_COMMON(cx, c, help);
        return ESRC_USAGE;
    }
    if (optind < argc)
        return usage_error("demo: unexpected argument '%s'", argv[optind]);
    o.clock = esrc_demo_clock;
    o.clock_payload = &clock;
    if ((rc = es_store_open(&st, cx->store_uri, &o)) < 0)
        return lib_error(cx->store_uri, rc);
    rc = esrc_demo(st, &clock, stdout);
    es_store_close(st);
    return rc < 0 ? lib_error("demo", rc) : ESRC_OK;
}

typedef struct command {
    const char *name;
    int (*run)(esrc_ctx *cx, int argc, char **argv);
    const char *help;
} command;

static const command commands[] = {
    {"demo", cmd_demo, "play the talk's users-and-groups story"},
};

static void print_help(void)
{
    printf("usage: esrc [--store URI] [--json] COMMAND [ARGS]\n\n"
           "Commands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        printf("  %-8s %s\n", commands[i].name, commands[i].help);
    printf("\nThe store is --store URI, else $ESRC_STORE, else %s.\n"
           "URIs: mem:, lmdb:DIR, postgres://...\n"
           "`esrc COMMAND --help` describes a command.\n\n"
           "Exit status: 0 ok, 1 error, 2 usage or bad input, 3 conflict (--expect),\n"
           "4 verification failed.\n",
           ESRC_DEFAULT_STORE);
}

int main(int argc, char **argv)
{
    esrc_ctx cx = {0};
    int i = 1;

    cx.store_uri = getenv("ESRC_STORE");
    if (!cx.store_uri || !*cx.store_uri)
        cx.store_uri = ESRC_DEFAULT_STORE;
    /* Global options come before the command. */
    for (; i < argc && argv[i][0] == '-'; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            print_help();
            return ESRC_OK;
        } else if (strcmp(a, "--version") == 0) {
            printf("esrc %s (libeventsrc %s)\n", ES_VERSION_STRING, es_version());
            return ESRC_OK;
        } else if (strcmp(a, "--json") == 0) {
            cx.json = 1;
        } else if (strcmp(a, "--store") == 0) {
            if (++i >= argc)
                return usage_error("%s needs a URI", a);
            cx.store_uri = argv[i];
        } else if (strncmp(a, "--store=", 8) == 0) {
            cx.store_uri = a + 8;
        } else {
            return usage_error("unknown option '%s'", a);
        }
    }
    if (i >= argc)
        return usage_error("%s", "no command given");
    for (size_t k = 0; k < sizeof commands / sizeof *commands; k++) {
        if (strcmp(argv[i], commands[k].name) == 0)
            return commands[k].run(&cx, argc - i, argv + i);
    }
    return usage_error("unknown command '%s'", argv[i]);
}
