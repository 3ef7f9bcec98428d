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

/*
 * A URI's query is `?key=value&key=value…`, each key and value
 * percent-encoded.  eventsrc's own options are taken out (and decoded);
 * every other option stays in the URI, byte for byte, for libpq, which
 * checks it (PQconninfoParse, without connecting) so that a bad option is
 * ES_EINVAL on open rather than a failed connection later.  The query's
 * shape is checked here first: an empty option, one without '=' or with a
 * second '=', a malformed %-escape or %00, and an option given twice are
 * refused with a message that names the option.
 */

#define PG_URI_MAX_OPTIONS 64 /* libpq knows about 40 */
#define PG_SCHEMA_MAX 40      /* the schema's name; the channel adds a prefix */

/* An option's name for a message: at most 40 bytes, each byte outside
 * printable ASCII shown as '?'. */
static const char *shown(const char *p, size_t n, char out[41])
{
    size_t k = 0;
    for (; k < n && k < 40; k++)
        out[k] = p[k] >= 0x20 && p[k] < 0x7f ? p[k] : '?';
    out[k] = '\0';
    return out;
}

static int hexval(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

/* Decode the %XX escapes of [p, p+n) into out (room for n + 1 bytes,
 * NUL-terminated).  -1 for a malformed escape or an encoded NUL. */
static int pct_decode(const char *p, size_t n, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] != '%') {
            out[o++] = p[i];
            continue;
        }
        if (n - i < 3)
            return -1;
        int h = hexval(p[i + 1]), l = hexval(p[i + 2]);
        if (h < 0 || l < 0 || (h == 0 && l == 0))
            return -1;
        out[o++] = (char)(h * 16 + l);
        i += 2;
    }
    out[o] = '\0';
    return 0;
}

static bool valid_schema(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > PG_SCHEMA_MAX || !((v[0] >= 'a' && v[0] <= 'z') || v[0] == '_'))
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((v[i] >= 'a' && v[i] <= 'z') || (v[i] >= '0' && v[i] <= '9') || v[i] == '_'))
            return false;
    return true;
}

/* PostgreSQL's own schemas: pg_catalog, pg_toast, pg_temp_N … (the server
 * reserves the pg_ prefix) and information_schema.  A store there would
 * mix its tables with the system's. */
static bool system_schema(const char *v)
{
    return !strncmp(v, "pg_", 3) || !strcmp(v, "information_schema");
}

/* A decimal number in [lo, hi]: digits only (no sign, no spaces). */
static int parse_int_opt(const char *name, const char *v, int lo, int hi, int *out)
{
    long x = 0;
    size_t i = 0;
    for (; v[i] >= '0' && v[i] <= '9' && x <= hi; i++)
        x = x * 10 + (v[i] - '0');
    if (i == 0 || v[i] || x < lo || x > hi)
        return es__err(ES_EINVAL, "postgres: option %s takes a number from %d to %d, not '%.40s'",
                       name, lo, hi, v);
    *out = (int)x;
    return 0;
}

/* One of eventsrc's own options, its value decoded. */
static int own_option(es__pg_uri *u, const char *key, const char *v, bool *taken)
{
    int b = 0;
    *taken = true;
    if (!strcmp(key, "schema")) {
        if (!valid_schema(v))
            return es__err(ES_EINVAL,
                           "postgres: schema must be 1..%d of a-z, 0-9 and _ (not starting "
                           "with a digit), not '%.60s'",
                           PG_SCHEMA_MAX, v);
        if (system_schema(v))
            return es__err(ES_EINVAL,
                           "postgres: schema '%s' is PostgreSQL's own (pg_* and "
                           "information_schema are reserved); choose another",
                           v);
        snprintf(u->schema, sizeof u->schema, "%s", v);
        return 0;
    }
    if (!strcmp(key, "pool"))
        return parse_int_opt("pool", v, 1, 256, &u->pool_max);
    if (!strcmp(key, "notify")) {
        int rc = parse_int_opt("notify", v, 0, 1, &b);
        u->notify = b == 1;
        return rc;
    }
    if (!strcmp(key, "commit_delay_ms"))
        return parse_int_opt("commit_delay_ms", v, 0, 10000, &u->commit_delay_ms);
    *taken = false;
    return 0;
}

/* libpq's verdict on what is left, and its `options` (decoded). */
static int libpq_check(es__pg_uri *u)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(u->conninfo, &err);
    int rc = 0;
    if (!opts) {
        if (!err)
            return es__err(ES_ENOMEM, "out of memory opening a store");
        size_t n = strlen(err);
        while (n && (err[n - 1] == '\n' || err[n - 1] == ' '))
            n--;
        rc = es__err(ES_EINVAL, "postgres: bad URI: %.*s", (int)(n > 200 ? 200 : n), err);
        PQfreemem(err);
        return rc;
    }
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (!strcmp(o->keyword, "options") && o->val && *o->val &&
            !(u->pq_options = es__strdup(o->val)))
            rc = es__err(ES_ENOMEM, "out of memory opening a store");
    PQconninfoFree(opts);
    return rc;
}

int es__pg_parse_uri(es__pg_uri *u, const char *uri)
{
    size_t n = strlen(uri);
    const char *q = strchr(uri, '?');
    size_t base = q ? (size_t)(q - uri) : n;
    /* the output is the input less some options: never longer */
    char *out = es__malloc(n + 1), *key = es__malloc(n + 1), *val = es__malloc(n + 1);
    char *seen = es__malloc(n + PG_URI_MAX_OPTIONS + 1), nm[41];
    size_t o = base, seen_len = 0, count = 0;
    int rc = 0;

    memset(u, 0, sizeof *u);
    snprintf(u->schema, sizeof u->schema, "eventsrc");
    u->pool_max = 16;
    if (!out || !key || !val || !seen) {
        rc = es__err(ES_ENOMEM, "out of memory opening a store");
        goto done;
    }
    memcpy(out, uri, base);
    /* a bare '?' is no option: dropped */
    for (const char *item = q && q[1] ? q + 1 : NULL, *end; item; item = *end ? end + 1 : NULL) {
        end = item + strcspn(item, "&");
        const char *eq = memchr(item, '=', (size_t)(end - item));
        size_t kl = eq ? (size_t)(eq - item) : (size_t)(end - item);
        if (end == item) {
            rc = es__err(ES_EINVAL, "postgres: an empty option in the URI (a '&' too many)");
            goto done;
        }
        if (!eq || kl == 0) {
            rc = es__err(ES_EINVAL, "postgres: option '%s' in the URI needs the form name=value",
                         shown(item, (size_t)(end - item), nm));
            goto done;
        }
        if (memchr(eq + 1, '=', (size_t)(end - eq - 1))) {
            rc = es__err(ES_EINVAL,
                         "postgres: option '%s' has a second '=' (write '=' in a value as %%3D)",
                         shown(item, kl, nm));
            goto done;
        }
        if (pct_decode(item, kl, key) < 0 || pct_decode(eq + 1, (size_t)(end - eq - 1), val) < 0) {
            rc = es__err(ES_EINVAL, "postgres: option '%s' has a malformed %%-escape or %%00",
                         shown(item, kl, nm));
            goto done;
        }
        /* each option once: the decoded names so far, NUL-separated */
        for (size_t at = 0; at < seen_len; at += strlen(seen + at) + 1)
            if (!strcmp(seen + at, key)) {
                rc = es__err(ES_EINVAL, "postgres: option '%s' is given twice",
                             shown(key, strlen(key), nm));
                goto done;
            }
        if (++count > PG_URI_MAX_OPTIONS) {
            rc =
                es__err(ES_EINVAL, "postgres: more than %d options in the URI", PG_URI_MAX_OPTIONS);
            goto done;
        }
        memcpy(seen + seen_len, key, strlen(key) + 1);
        seen_len += strlen(key) + 1;

        bool taken;
        if ((rc = own_option(u, key, val, &taken)) < 0)
            goto done;
        if (!taken) { /* libpq's: as written */
            out[o] = o == base ? '?' : '&';
            o++;
            memcpy(out + o, item, (size_t)(end - item));
            o += (size_t)(end - item);
        }
    }
    out[o] = '\0';
    u->conninfo = out;
    out = NULL;
    rc = libpq_check(u);
done:
    free(out);
    free(key);
    free(val);
    free(seen);
    if (rc < 0)
        es__pg_uri_free(u);
    return rc;
}

void es__pg_uri_free(es__pg_uri *u)
{
    if (!u)
        return;
    free(u->conninfo);
    free(u->pq_options);
    u->conninfo = NULL;
    u->pq_options = NULL;
}
