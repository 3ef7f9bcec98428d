/*
 * fuzz_pg_uri.c — libFuzzer target for the postgres:// URI parser
 * (es__pg_parse_uri): eventsrc's own options taken out, the rest checked by
 * libpq's PQconninfoParse.  Nothing connects.  Any input must give 0 or
 * ES_EINVAL (ES_ENOMEM only when memory runs out), never a crash, a leak or
 * a read past the input; a parsed URI must keep its invariants.
 */
#include "backend/pg_internal.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* the parser takes a C string: the input up to its first NUL */
    char *uri = malloc(size + 1);
    if (!uri)
        return 0;
    memcpy(uri, data, size);
    uri[size] = '\0';
    es__pg_uri u;
    int rc = es__pg_parse_uri(&u, uri);
    if (rc == 0) {
        /* what goes to libpq is the input less some options: never longer,
         * and it starts with the same text up to the query */
        size_t base = strcspn(uri, "?");
        if (!u.conninfo || strlen(u.conninfo) > strlen(uri) ||
            strncmp(u.conninfo, uri, base) != 0 || u.pool_max < 1 || u.pool_max > 256 ||
            u.schema[0] == '\0')
            abort();
        es__pg_uri_free(&u);
    } else if (rc != ES_EINVAL && rc != ES_ENOMEM) {
        abort();
    } else if (u.conninfo || u.pq_options) {
        abort(); /* an error leaves nothing to free */
    }
    free(uri);
    return 0;
}
