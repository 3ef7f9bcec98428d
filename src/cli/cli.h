/*
 * cli.h — what the esrc command's files share.
 */
#ifndef ESRC_CLI_H
#define ESRC_CLI_H

#include <eventsrc.h>
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

typedef struct demo_clock {
    int64_t now;
} demo_clock;

int esrc_demo(es_store *st, void *clock_payload, FILE *out);
int64_t esrc_demo_clock(void *payload);
/* `esrc bench`: argv[0] is "bench". */
int esrc_bench(int json, int argc, char **argv);

void esrc_format_time(char *out, size_t cap, int64_t us);

#endif
