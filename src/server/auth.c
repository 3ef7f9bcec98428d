/*
 * auth.c — the token file of `esrc serve` (see auth.h).
 *
 * A token is "est_" ID "_" SECRET: ID 16 hex digits (public, names the token
 * in lists, logs and revocations), SECRET 64 hex digits from
 * randombytes_buf.  The file keeps ID, name, rights, prefixes and the
 * BLAKE2b-256 hash of the whole text.  The secret has 256 bits of entropy, so
 * a fast hash is enough (no password hashing needed); hashes are compared
 * with sodium_memcmp, in constant time.
 */
#define _GNU_SOURCE
#include "auth.h"

#include "import.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const right_names[] = {"read", "append", "admin"};

int srv_rights_parse(unsigned *out, const char *s)
{
    unsigned r = 0;
    while (*s) {
        size_t n = strcspn(s, ",");
        size_t k = 0;
        while (k < 3 && !(strlen(right_names[k]) == n && strncmp(s, right_names[k], n) == 0))
            k++;
        if (k == 3)
            return -1;
        r |= 1u << k;
        s += n;
        if (*s == ',')
            s++;
    }
    if (!r)
        return -1;
    *out = r;
    return 0;
}

void srv_rights_format(char *out, size_t cap, unsigned rights)
{
    size_t w = 0;
    out[0] = 0;
    for (int k = 0; k < 3; k++)
        if (rights & (1u << k))
            w += (size_t)snprintf(out + w, w < cap ? cap - w : 0, "%s%s", w ? "," : "",
                                  right_names[k]);
}

bool srv_token_allows(const srv_token *t, unsigned right, const void *key, size_t len)
{
    return (t->rights & right) && srv_prefixes_cover(&t->prefixes, key, len);
}

bool srv_token_global(const srv_token *t, unsigned right)
{
    return (t->rights & right) && srv_prefixes_cover(&t->prefixes, "", 0);
}

/* ---- the file ---- */

static int decode_line(srv_token *t, const char *line, size_t len)
{
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES, NULL), *v;
    const char *s;
    size_t i, got = 0;
    int rc = -1;

    memset(t, 0, sizeof *t);
    if (!json_is_object(o))
        goto done;
    s = json_string_value(json_object_get(o, "id"));
    if (!s || strlen(s) != SRV_TOKEN_ID_LEN)
        goto done;
    memcpy(t->id, s, SRV_TOKEN_ID_LEN + 1);
    s = json_string_value(json_object_get(o, "name"));
    snprintf(t->name, sizeof t->name, "%s", s ? s : "");
    s = json_string_value(json_object_get(o, "hash"));
    if (!s || strlen(s) != 64 || sodium_hex2bin(t->hash, 32, s, 64, NULL, &got, NULL) != 0 ||
        got != 32)
        goto done;
    json_array_foreach(json_object_get(o, "rights"), i, v)
    {
        for (int k = 0; k < 3; k++)
            if (json_is_string(v) && strcmp(json_string_value(v), right_names[k]) == 0)
                t->rights |= 1u << k;
    }
    json_array_foreach(json_object_get(o, "prefixes"), i, v)
    {
        if (!json_is_string(v) ||
            srv_prefixes_add(&t->prefixes, json_string_value(v), json_string_length(v)) != 0)
            goto done;
    }
    v = json_object_get(o, "created_us");
    t->created_us = json_is_integer(v) ? json_integer_value(v) : 0;
    rc = 0;
done:
    json_decref(o);
    return rc;
}

static int load(srv_tokens *ts, char *err, size_t errcap)
{
    FILE *f = fopen(ts->path, "r");
    char *line = NULL;
    size_t cap = 0, lineno = 0;
    ssize_t n;
    srv_token *t = NULL;
    size_t nt = 0;
    int rc = -1;

    if (!f) {
        if (errno == ENOENT) { /* no file yet: no tokens */
            free(ts->t);
            ts->t = NULL;
            ts->n = 0;
            memset(&ts->st, 0, sizeof ts->st);
            return 0;
        }
        snprintf(err, errcap, "%s: %s", ts->path, strerror(errno));
        return -1;
    }
    if (fstat(fileno(f), &ts->st) != 0 || (ts->st.st_mode & 077)) {
        snprintf(err, errcap, "%s: must not be readable by group or others (chmod 600)", ts->path);
        goto done;
    }
    while ((n = getline(&line, &cap, f)) >= 0) {
        lineno++;
        while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
            n--;
        if (n == 0)
            continue;
        srv_token *g = realloc(t, (nt + 1) * sizeof *t);
        if (!g) {
            snprintf(err, errcap, "out of memory");
            goto done;
        }
        t = g;
        if (decode_line(&t[nt], line, (size_t)n) != 0) {
            snprintf(err, errcap, "%s:%zu: not a token record", ts->path, lineno);
            goto done;
        }
        nt++;
    }
    free(ts->t);
    ts->t = t;
    ts->n = nt;
    t = NULL;
    rc = 0;
done:
    free(t);
    free(line);
    fclose(f);
    return rc;
}

int srv_tokens_open(srv_tokens *out, const char *path, char *err, size_t errcap)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_init(&out->mu, NULL);
    if (!(out->path = strdup(path))) {
        snprintf(err, errcap, "out of memory");
        return -1;
    }
    return load(out, err, errcap);
}

void srv_tokens_close(srv_tokens *ts)
{
    if (!ts)
        return;
    free(ts->t);
    free(ts->path);
    pthread_mutex_destroy(&ts->mu);
    memset(ts, 0, sizeof *ts);
}

static bool changed(const srv_tokens *ts)
{
    struct stat st;
    if (stat(ts->path, &st) != 0)
        return ts->st.st_ino != 0 || ts->n != 0;
    return st.st_ino != ts->st.st_ino || st.st_dev != ts->st.st_dev ||
           st.st_size != ts->st.st_size || st.st_mtim.tv_sec != ts->st.st_mtim.tv_sec ||
           st.st_mtim.tv_nsec != ts->st.st_mtim.tv_nsec;
}

int srv_tokens_check(srv_token *out, srv_tokens *ts, const char *header, char *err, size_t errcap)
{
    uint8_t h[32];
    int rc = 0;
    size_t tl;

    if (!header || strncasecmp(header, "Bearer ", 7) != 0)
        return 0;
    header += 7;
    while (*header == ' ')
        header++;
    tl = strlen(header);
    if (tl != SRV_TOKEN_TEXT - 1 || strncmp(header, "est_", 4) != 0 ||
        header[4 + SRV_TOKEN_ID_LEN] != '_')
        return 0;
    crypto_generichash(h, sizeof h, (const uint8_t *)header, tl, NULL, 0);
    pthread_mutex_lock(&ts->mu);
    if (changed(ts) && load(ts, err, errcap) != 0) {
        rc = -1;
        goto done;
    }
    for (size_t i = 0; i < ts->n; i++) {
        if (memcmp(ts->t[i].id, header + 4, SRV_TOKEN_ID_LEN) != 0)
            continue;
        if (sodium_memcmp(ts->t[i].hash, h, sizeof h) == 0) {
            *out = ts->t[i];
            rc = 1;
        }
        break;
    }
done:
    pthread_mutex_unlock(&ts->mu);
    return rc;
}

static json_t *record(const srv_token *t)
{
    char hh[65], when[64];
    json_t *o = json_object(), *r = json_array(), *p = json_array();
    sodium_bin2hex(hh, sizeof hh, t->hash, 32);
    for (int k = 0; k < 3; k++)
        if (t->rights & (1u << k))
            json_array_append_new(r, json_string(right_names[k]));
    for (size_t i = 0; i < t->prefixes.n; i++)
        json_array_append_new(p,
                              json_stringn((const char *)t->prefixes.key[i], t->prefixes.len[i]));
    esrc_format_time_us(when, sizeof when, t->created_us);
    json_object_set_new(o, "id", json_string(t->id));
    json_object_set_new(o, "name", json_string(t->name));
    json_object_set_new(o, "rights", r);
    json_object_set_new(o, "prefixes", p);
    json_object_set_new(o, "created", json_string(when));
    json_object_set_new(o, "created_us", json_integer(t->created_us));
    json_object_set_new(o, "hash", json_string(hh));
    return o;
}

/* Write every token to PATH.tmp (0600), sync, and rename it over PATH. */
static int save(srv_tokens *ts, char *err, size_t errcap)
{
    char *tmp = NULL;
    FILE *f = NULL;
    int fd = -1, rc = -1;

    if (asprintf(&tmp, "%s.tmp", ts->path) < 0) {
        tmp = NULL;
        snprintf(err, errcap, "out of memory");
        goto done;
    }
    if ((fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0 ||
        !(f = fdopen(fd, "w"))) {
        snprintf(err, errcap, "%s: %s", tmp, strerror(errno));
        goto done;
    }
    fd = -1;
    for (size_t i = 0; i < ts->n; i++) {
        json_t *o = record(&ts->t[i]);
        char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (!s) {
            snprintf(err, errcap, "out of memory");
            goto done;
        }
        fprintf(f, "%s\n", s);
        free(s);
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
        snprintf(err, errcap, "%s: %s", tmp, strerror(errno));
        goto done;
    }
    if (fclose(f) != 0) {
        f = NULL;
        snprintf(err, errcap, "%s: %s", tmp, strerror(errno));
        goto done;
    }
    f = NULL;
    if (rename(tmp, ts->path) != 0) {
        snprintf(err, errcap, "%s: %s", ts->path, strerror(errno));
        goto done;
    }
    stat(ts->path, &ts->st);
    rc = 0;
done:
    if (f)
        fclose(f);
    if (fd >= 0)
        close(fd);
    if (rc && tmp)
        unlink(tmp);
    free(tmp);
    return rc;
}

int srv_tokens_create(char *text, srv_tokens *ts, const char *name, unsigned rights,
                      const srv_prefixes *prefixes, int64_t now_us, char *err, size_t errcap)
{
    uint8_t id[SRV_TOKEN_ID_LEN / 2], secret[SRV_TOKEN_SECRET_LEN / 2];
    srv_token t = {0};
    int rc = -1;

    if (strlen(name) > SRV_MAX_TOKEN_NAME) {
        snprintf(err, errcap, "a token's name is at most %d bytes", SRV_MAX_TOKEN_NAME);
        return -1;
    }
    pthread_mutex_lock(&ts->mu);
    if (load(ts, err, errcap) != 0)
        goto done;
    randombytes_buf(id, sizeof id);
    randombytes_buf(secret, sizeof secret);
    memcpy(text, "est_", 4);
    sodium_bin2hex(text + 4, SRV_TOKEN_ID_LEN + 1, id, sizeof id);
    text[4 + SRV_TOKEN_ID_LEN] = '_';
    sodium_bin2hex(text + 5 + SRV_TOKEN_ID_LEN, SRV_TOKEN_SECRET_LEN + 1, secret, sizeof secret);
    memcpy(t.id, text + 4, SRV_TOKEN_ID_LEN);
    snprintf(t.name, sizeof t.name, "%s", name);
    t.rights = rights;
    t.prefixes = *prefixes;
    t.created_us = now_us;
    crypto_generichash(t.hash, sizeof t.hash, (const uint8_t *)text, SRV_TOKEN_TEXT - 1, NULL, 0);
    srv_token *g = realloc(ts->t, (ts->n + 1) * sizeof *g);
    if (!g) {
        snprintf(err, errcap, "out of memory");
        goto done;
    }
    ts->t = g;
    ts->t[ts->n++] = t;
    if ((rc = save(ts, err, errcap)) != 0)
        ts->n--;
done:
    sodium_memzero(secret, sizeof secret);
    pthread_mutex_unlock(&ts->mu);
    return rc;
}

int srv_tokens_revoke(srv_tokens *ts, const char *id, char *err, size_t errcap)
{
    int rc = 0;
    pthread_mutex_lock(&ts->mu);
    if (load(ts, err, errcap) != 0) {
        rc = -1;
        goto done;
    }
    for (size_t i = 0; i < ts->n; i++) {
        if (strcmp(ts->t[i].id, id) != 0)
            continue;
        srv_token gone = ts->t[i];
        memmove(&ts->t[i], &ts->t[i + 1], (ts->n - i - 1) * sizeof *ts->t);
        ts->n--;
        if (save(ts, err, errcap) != 0) {
            memmove(&ts->t[i + 1], &ts->t[i], (ts->n - i) * sizeof *ts->t);
            ts->t[i] = gone;
            ts->n++;
            rc = -1;
        } else {
            rc = 1;
        }
        break;
    }
done:
    pthread_mutex_unlock(&ts->mu);
    return rc;
}

json_t *srv_token_json(const srv_token *t)
{
    json_t *o = record(t);
    if (o)
        json_object_del(o, "hash");
    return o;
}
