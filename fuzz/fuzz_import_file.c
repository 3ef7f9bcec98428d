/*
 * fuzz_import_file.c — a whole `esrc import` (src/cli/import.c) into a fresh
 * mem: store.
 *
 * Whatever the input: no crash or leak; bad input (exit 2) writes nothing; an
 * input that imports gives a store that verifies, with every event written;
 * and importing it again writes nothing (every event is already there).
 */
#include "import.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define START_US INT64_C(1767225600000000) /* 2026-01-01 */

static int64_t fixed_clock(void *payload)
{
    (void)payload;
    return START_US;
}

static int import(esrc_import_result *r, es_store *st, const uint8_t *data, size_t size)
{
    static FILE *devnull;
    esrc_import_options o = {.name = "fuzz", .max_time_us = START_US + ESRC_IMPORT_MAX_AHEAD_US};
    if (!devnull && !(devnull = fopen("/dev/null", "w")))
        abort();
    o.err = devnull;
    FILE *in = fmemopen((void *)data, size, "r");
    if (!in)
        abort();
    int rc = esrc_import(r, st, in, &o);
    fclose(in);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    es_open_options oo = ES_OPEN_OPTIONS_INIT;
    esrc_import_result r, again;
    es_verify_result v;
    es_store *st;
    uint64_t last;

    if (size == 0) /* fmemopen refuses an empty buffer */
        return 0;
    oo.clock = fixed_clock;
    if (es_store_open(&st, "mem:", &oo) != 0)
        abort();
    int rc = import(&r, st, data, size);
    if (rc == ESRC_USAGE) {
        if (es_store_last_position(&last, st) != 0 || last != 0)
            abort(); /* bad input wrote something */
    } else if (rc == ESRC_OK) {
        if (r.imported != r.events || r.replayed != 0)
            abort();
        if (es_verify(&v, st, NULL, 0) != 0 || !v.ok || v.events_checked != r.events)
            abort();
        if (import(&again, st, data, size) != ESRC_OK || again.imported != 0 ||
            again.replayed != r.events)
            abort();
    }
    /* ESRC_FAIL / ESRC_CONFLICT: the library refused what the checks let
     * through (a limit of one append); allowed, and worth a look in a corpus. */
    es_store_close(st);
    return 0;
}
