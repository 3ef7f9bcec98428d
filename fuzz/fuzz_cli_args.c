/*
 * fuzz_cli_args.c — the esrc CLI's parsers of command-line and
 * acknowledgement text (src/cli/args.c) on arbitrary bytes: numbers, times,
 * subscription starts (--from/--to) and the lines `esrc sub run` reads on
 * its standard input.  Each must accept only what it documents and
 * round-trip what it accepts.
 */
#define _GNU_SOURCE
#include "args.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1), num[32];
    if (!s)
        return 0;
    memcpy(s, data, size);
    s[size] = 0; /* the text ends at the first NUL, as an argv string does */

    uint64_t v;
    if (esrc_parse_u64(&v, s) == 0) {
        /* digits only, and the value is the digits' (leading zeros aside) */
        const char *d = s + strspn(s, "0");
        snprintf(num, sizeof num, "%" PRIu64, v);
        if (strcmp(*d ? d : "0", num) != 0)
            abort();
    }

    int64_t t;
    if (esrc_parse_time(&t, s) == 0 && t < 0)
        abort();

    es_sub_start start;
    uint64_t pos;
    int why = esrc_parse_start(&start, &pos, &t, s);
    if (why < 0 || why > ESRC_START_TIME)
        abort();
    if (why == 0) {
        if (start == ES_SUB_FROM_POSITION && (pos == 0 || pos >= ES_SEQ_MAX))
            abort();
        if (start == ES_SUB_FROM_TIME && (t < 0 || s[0] != '@'))
            abort();
        if (start > ES_SUB_FROM_TIME)
            abort();
    }

    /* an acknowledgement line: trimmed in place, never longer */
    size_t before = strlen(s);
    const char *msg;
    int got = esrc_parse_ack_line(&pos, &msg, s);
    if (strlen(s) > before || got < -1 || got > 2 || (got == 0 && *s) ||
        (got == 2) != (msg != NULL) || (msg && (msg < s || msg > s + before)))
        abort();
    free(s);
    return 0;
}
