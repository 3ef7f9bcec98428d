/*
 * pg_uri.c — the options of a postgres:// URI: eventsrc's own are taken
 * out, the rest is handed to libpq.
 */
#define _GNU_SOURCE
#include "pg_internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- options ---- */

static int valid_schema(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > 40 || !((v[0] >= 'a' && v[0] <= 'z') || v[0] == '_'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= '0' && v[i] <= '9') || v[i] == '_'))
            return 0;
    return 1;
}

static int parse_int_opt(const char *name, const char *v, int lo, int hi, int *out)
{
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (!*v || *end || errno || x < lo || x > hi)
        return es__err(ES_EINVAL, "postgres: option %s takes a number from %d to %d, not '%.40s'",
                       name, lo, hi, v);
    *out = (int)x;
    return 0;
}

/* Take eventsrc's own options (schema, pool, notify, commit_delay_ms) out
 * of the URI's query; the rest goes to libpq as is. */
int es__pg_parse_uri(pg_store *s, const char *uri)
{
    size_t n = strlen(uri);
    char *copy = es__strdup(uri), *out = es__malloc(n + 1);
    int rc = 0;
    if (!copy || !out) {
        free(copy);
        free(out);
        return es__err(ES_ENOMEM, "out of memory opening a store");
    }
    char *q = strchr(copy, '?');
    if (q)
        *q++ = '\0';
    size_t o = (size_t)sprintf(out, "%s", copy);
    char sep = '?';
    for (char *item = q, *next; item && *item; item = next) {
        if ((next = strchr(item, '&')))
            *next++ = '\0';
        char *val = strchr(item, '=');
        const char *v = val ? val + 1 : "";
        size_t kl = val ? (size_t)(val - item) : strlen(item);
#define IS(k) (kl == sizeof(k) - 1 && !strncmp(item, k, kl))
        if (IS("schema")) {
            if (!valid_schema(v)) {
                rc = es__err(ES_EINVAL,
                             "postgres: schema must be 1..40 of a-z, 0-9 and _ (not starting "
                             "with a digit), not '%.60s'",
                             v);
                break;
            }
            snprintf(s->schema, sizeof s->schema, "%s", v);
        } else if (IS("pool")) {
            if ((rc = parse_int_opt("pool", v, 1, 256, &s->pool_max)) < 0)
                break;
        } else if (IS("notify")) {
            int b;
            if ((rc = parse_int_opt("notify", v, 0, 1, &b)) < 0)
                break;
            s->notify = b;
        } else if (IS("commit_delay_ms")) {
            if ((rc = parse_int_opt("commit_delay_ms", v, 0, 10000, &s->commit_delay_ms)) < 0)
                break;
        } else {
            o += (size_t)sprintf(out + o, "%c%s%s%s", sep, item, val ? "=" : "", val ? v : "");
            sep = '&';
        }
#undef IS
    }
    free(copy);
    if (rc < 0) {
        free(out);
        return rc;
    }
    s->conninfo = out;
    return 0;
}

