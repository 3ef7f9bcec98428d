/*
 * import.c — events as JSON Lines, and `esrc import`.
 *
 * One export line is one event with every field, so an export imported into
 * an empty store gives the same events, ids, times and chain hashes.  Import
 * reads its input twice: pass 1 decodes every line and checks it against the
 * lines before it and against the store (seqs without gaps, the chain
 * hashes, times that never go back, ids used once), holding only per-stream
 * state and the set of ids; pass 2 writes.  A fault found by pass 1 leaves
 * the store as it was.  Events the store already has (the same file imported
 * again) are compared through their chain hashes and skipped, which makes a
 * second import a no-op that writes nothing.
 */
#define _GNU_SOURCE
#include "import.h"

#include <errno.h>
#include <inttypes.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- encoding ---- */

bool esrc_is_text(const uint8_t *p, size_t n)
{
    if (n == 0) /* p may be NULL */
        return true;
    if (memchr(p, 0, n))
        return false;
    json_t *j = json_stringn((const char *)p, n); /* NULL unless valid UTF-8 */
    if (!j)
        return false;
    json_decref(j);
    return true;
}

int esrc_json_set_bytes(json_t *obj, const char *name, const uint8_t *p, size_t n)
{
    if (esrc_is_text(p, n))
        return json_object_set_new(obj, name, json_stringn(n ? (const char *)p : "", n));
    size_t cap = sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL);
    char *b = malloc(cap);
    char key[32];
    if (!b)
        return -1;
    sodium_bin2base64(b, cap, p, n, sodium_base64_VARIANT_ORIGINAL);
    snprintf(key, sizeof key, "%s_b64", name);
    int rc = json_object_set_new(obj, key, json_string(b));
    free(b);
    return rc;
}

void esrc_format_time_us(char *out, size_t cap, int64_t us)
{
    time_t s = (time_t)(us / 1000000);
    int64_t frac = us % 1000000;
    struct tm tm;
    if (frac < 0) {
        frac += 1000000;
        s--;
    }
    size_t n = gmtime_r(&s, &tm) ? strftime(out, cap, "%Y-%m-%dT%H:%M:%S", &tm) : 0;
    if (n == 0) { /* a year strftime cannot write */
        snprintf(out, cap, "%" PRId64 "us", us);
        return;
    }
    snprintf(out + n, cap - n, ".%06lldZ", (long long)frac);
}

const char *esrc_shred_name(unsigned shred)
{
    switch (shred) {
    case ES_SHRED_NONE:
        return "none";
    case ES_SHRED_OPEN:
        return "decrypted";
    case ES_SHRED_FORGOTTEN:
        return "forgotten";
    case ES_SHRED_LOCKED:
        return "locked";
    case ES_SHRED_BROKEN:
        return "broken";
    case ES_SHRED_SEALED:
        return "sealed";
    default:
        return "unknown";
    }
}

json_t *esrc_event_json(const es_event *ev)
{
    char idh[ES_ID_SIZE * 2 + 1], hh[ES_HASH_SIZE * 2 + 1], when[64];
    json_t *o = json_object();
    if (!o)
        return NULL;
    sodium_bin2hex(idh, sizeof idh, ev->id, ES_ID_SIZE);
    sodium_bin2hex(hh, sizeof hh, ev->hash, ES_HASH_SIZE);
    esrc_format_time_us(when, sizeof when, ev->time_us);
    int bad = esrc_json_set_bytes(o, "stream", ev->stream, ev->stream_len);
    bad |= json_object_set_new(o, "seq", json_integer((json_int_t)ev->seq));
    bad |= json_object_set_new(o, "position", json_integer((json_int_t)ev->position));
    bad |= json_object_set_new(o, "time_us", json_integer((json_int_t)ev->time_us));
    bad |= json_object_set_new(o, "time", json_string(when));
    bad |= json_object_set_new(o, "id", json_string(idh));
    bad |= esrc_json_set_bytes(o, "type", (const uint8_t *)ev->type, ev->type_len);
    bad |= esrc_json_set_bytes(o, "data", ev->data, ev->data_len);
    bad |= esrc_json_set_bytes(o, "meta", ev->meta, ev->meta_len);
    bad |= json_object_set_new(o, "hash", json_string(hh));
    if (ev->shred != ES_SHRED_NONE)
        bad |= json_object_set_new(o, "shred", json_string(esrc_shred_name(ev->shred)));
    if (bad) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* ---- decoding one line ---- */

/* A bytes field: `name` as a string or `name_b64` as base64, into `out`
 * (at most cap bytes).  Absent and not required: 0 bytes. */
static int get_bytes(es_buf *out, size_t cap, json_t *o, const char *name, bool required, char *err,
                     size_t errcap)
{
    char key[32];
    json_t *s = json_object_get(o, name);
    snprintf(key, sizeof key, "%s_b64", name);
    json_t *b = json_object_get(o, key);
    const uint8_t *p = NULL;
    size_t n = 0;
    uint8_t *dec = NULL;
    int rc = -1;

    es_buf_reset(out);
    if (s && b) {
        snprintf(err, errcap, "both %s and %s given", name, key);
        return -1;
    }
    if (s) {
        if (!json_is_string(s)) {
            snprintf(err, errcap, "%s is not a string", name);
            return -1;
        }
        p = (const uint8_t *)json_string_value(s);
        n = json_string_length(s);
    } else if (b) {
        const char *t = json_string_value(b);
        if (!t) {
            snprintf(err, errcap, "%s is not a string", key);
            return -1;
        }
        size_t tl = json_string_length(b);
        /* base64 of at most cap bytes is at most 4 * ceil(cap / 3) characters */
        if (tl / 4 * 3 > cap + 2) {
            snprintf(err, errcap, "%s is over %zu bytes", name, cap);
            return -1;
        }
        dec = malloc(tl + 1);
        if (!dec || sodium_base642bin(dec, tl + 1, t, tl, NULL, &n, NULL,
                                      sodium_base64_VARIANT_ORIGINAL) != 0) {
            snprintf(err, errcap, dec ? "%s is not base64" : "%s: out of memory", key);
            goto done;
        }
        p = dec;
    } else if (required) {
        snprintf(err, errcap, "%s is missing", name);
        return -1;
    }
    if (n > cap) {
        snprintf(err, errcap, "%s is over %zu bytes (it is %zu)", name, cap, n);
        goto done;
    }
    if (n && es_buf_put(out, p, n) < 0) {
        snprintf(err, errcap, "%s: %s", name, es_error_last());
        goto done;
    }
    rc = 0;
done:
    free(dec);
    return rc;
}

/* Every field an export line may have; any other is a mistake worth naming. */
static const char *const known_fields[] = {
    "stream", "stream_b64", "seq",  "position", "time_us", "time",     "id",
    "type",   "type_b64",   "data", "data_b64", "meta",    "meta_b64", "hash",
};

static int get_hex(uint8_t *out, size_t n, json_t *v)
{
    const char *s = json_string_value(v);
    size_t got = 0;
    if (!s || json_string_length(v) != n * 2 ||
        sodium_hex2bin(out, n, s, n * 2, NULL, &got, NULL) != 0 || got != n)
        return -1;
    return 0;
}

int esrc_line_decode(esrc_line_event *e, const char *line, size_t len, char *err, size_t errcap)
{
    json_error_t je;
    /* JSON_ALLOW_NUL: stream keys and data may hold NUL bytes */
    json_t *o = json_loadb(line, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
    es_buf tmp = ES_BUF_INIT;
    const char *field;
    json_t *v;
    int rc = -1;

    if (!o) {
        snprintf(err, errcap, "malformed JSON: %s", je.text);
        return -1;
    }
    if (!json_is_object(o)) {
        snprintf(err, errcap, "not a JSON object");
        goto done;
    }
    json_object_foreach(o, field, v)
    {
        size_t k = 0, nk = sizeof known_fields / sizeof *known_fields;
        while (k < nk && strcmp(field, known_fields[k]) != 0)
            k++;
        if (k == nk) {
            snprintf(err, errcap, "unknown field '%.40s'", field);
            goto done;
        }
    }
    if (get_bytes(&tmp, ES_MAX_KEY, o, "stream", true, err, errcap))
        goto done;
    if (tmp.len == 0) {
        snprintf(err, errcap, "stream must be 1..%d bytes (it is empty)", ES_MAX_KEY);
        goto done;
    }
    memcpy(e->stream, tmp.data, tmp.len);
    e->stream_len = tmp.len;

    v = json_object_get(o, "seq");
    if (!json_is_integer(v) || json_integer_value(v) < 1 ||
        (uint64_t)json_integer_value(v) >= ES_SEQ_MAX) {
        snprintf(err, errcap, "seq must be an integer from 1 to %" PRIu64, ES_SEQ_MAX - 1);
        goto done;
    }
    e->seq = (uint64_t)json_integer_value(v);

    v = json_object_get(o, "time_us");
    if (!json_is_integer(v) || json_integer_value(v) < 1) {
        snprintf(err, errcap, "time_us must be a positive integer");
        goto done;
    }
    e->time_us = json_integer_value(v);

    if (get_hex(e->id, ES_ID_SIZE, json_object_get(o, "id"))) {
        snprintf(err, errcap, "id must be 32 hex digits");
        goto done;
    }
    if (get_bytes(&tmp, ES_MAX_TYPE, o, "type", true, err, errcap))
        goto done;
    if (tmp.len == 0 || memchr(tmp.data, 0, tmp.len)) {
        snprintf(err, errcap, "type must be 1..%d bytes without NUL", ES_MAX_TYPE);
        goto done;
    }
    memcpy(e->type, tmp.data, tmp.len);
    e->type[tmp.len] = 0;
    e->type_len = tmp.len;

    if (get_bytes(&e->data, ES_MAX_DATA, o, "data", false, err, errcap) ||
        get_bytes(&e->meta, ES_MAX_META, o, "meta", false, err, errcap))
        goto done;

    e->has_hash = false;
    if ((v = json_object_get(o, "hash"))) {
        if (get_hex(e->hash, ES_HASH_SIZE, v)) {
            snprintf(err, errcap, "hash must be 64 hex digits");
            goto done;
        }
        e->has_hash = true;
    }
    rc = 0;
done:
    es_buf_free(&tmp);
    json_decref(o);
    return rc;
}

void esrc_line_event_free(esrc_line_event *e)
{
    if (!e)
        return;
    es_buf_free(&e->data);
    es_buf_free(&e->meta);
}

void esrc_line_event_view(es_event *out, const esrc_line_event *e)
{
    memset(out, 0, sizeof *out);
    out->stream = e->stream;
    out->stream_len = e->stream_len;
    out->seq = e->seq;
    out->time_us = e->time_us;
    memcpy(out->id, e->id, ES_ID_SIZE);
    out->type = e->type;
    out->type_len = e->type_len;
    out->data = e->data.data;
    out->data_len = e->data.len;
    out->meta = e->meta.data;
    out->meta_len = e->meta.len;
}

/* ---- reading lines ---- */

typedef struct line_reader {
    FILE *f;
    char blk[65536];
    size_t blk_len, blk_off;
    es_buf line;
    uint64_t lineno; /* of the line last returned, counting blank ones */
} line_reader;

/* The next non-blank line (without "\n" or "\r\n").
 * @return 1 a line, 0 the end, -1 a line over ESRC_IMPORT_MAX_LINE, -2 a read error. */
static int reader_next(line_reader *r, const char **line, size_t *len)
{
    for (;;) {
        bool too_long = false, eof = false;
        es_buf_reset(&r->line);
        for (;;) {
            if (r->blk_off == r->blk_len) {
                r->blk_len = fread(r->blk, 1, sizeof r->blk, r->f);
                r->blk_off = 0;
                if (r->blk_len == 0) {
                    if (ferror(r->f))
                        return -2;
                    eof = true;
                    break;
                }
            }
            const char *p = r->blk + r->blk_off;
            const char *nl = memchr(p, '\n', r->blk_len - r->blk_off);
            size_t n = nl ? (size_t)(nl - p) : r->blk_len - r->blk_off;
            r->blk_off += n + (nl ? 1 : 0);
            if (r->line.len + n > ESRC_IMPORT_MAX_LINE)
                too_long = true; /* keep reading to its end, keep nothing */
            else if (n && es_buf_put(&r->line, p, n) < 0)
                return -2;
            if (nl)
                break;
        }
        if (eof && r->line.len == 0 && !too_long)
            return 0;
        r->lineno++;
        if (too_long)
            return -1;
        size_t n = r->line.len;
        if (n && r->line.data[n - 1] == '\r')
            n--;
        if (n == 0)
            continue; /* blank lines are fine */
        *line = (const char *)r->line.data;
        *len = n;
        return 1;
    }
}

/* ---- hash tables: streams by key, ids ---- */

static uint8_t table_key[crypto_shorthash_KEYBYTES];

static uint64_t hash_bytes(const uint8_t *p, size_t n)
{
    uint8_t h[crypto_shorthash_BYTES];
    uint64_t v;
    crypto_shorthash(h, p, n, table_key);
    memcpy(&v, h, sizeof v);
    return v;
}

/* What pass 1 learns about one stream of the input. */
typedef struct stream_state {
    uint8_t key[ES_MAX_KEY];
    size_t key_len;
    uint64_t head;     /* the store's head when pass 1 first met the stream */
    uint64_t last_seq; /* the last seq seen, or the one before the first */
    uint8_t last_hash[ES_HASH_SIZE];
    uint64_t last_line;
    /* the last input event the store already had (seq <= head), if any */
    uint64_t replay_seq, replay_line;
    uint8_t replay_hash[ES_HASH_SIZE];
} stream_state;

typedef struct stream_table {
    stream_state **slot;
    size_t cap, n;
} stream_table;

static stream_state **stream_find(stream_table *t, const uint8_t *key, size_t len)
{
    size_t i = (size_t)hash_bytes(key, len) & (t->cap - 1);
    while (t->slot[i] && (t->slot[i]->key_len != len || memcmp(t->slot[i]->key, key, len)))
        i = (i + 1) & (t->cap - 1);
    return &t->slot[i];
}

static int stream_grow(stream_table *t)
{
    size_t cap = t->cap ? t->cap * 2 : 64;
    stream_table nt = {calloc(cap, sizeof *nt.slot), cap, t->n};
    if (!nt.slot)
        return -1;
    for (size_t i = 0; i < t->cap; i++)
        if (t->slot[i])
            *stream_find(&nt, t->slot[i]->key, t->slot[i]->key_len) = t->slot[i];
    free(t->slot);
    *t = nt;
    return 0;
}

static void stream_table_free(stream_table *t)
{
    for (size_t i = 0; i < t->cap; i++)
        free(t->slot[i]);
    free(t->slot);
}

/* An id of the input, with its line; line 0 marks a free slot. */
typedef struct id_entry {
    uint8_t id[ES_ID_SIZE];
    uint64_t line;
    bool is_new; /* not yet in the store */
} id_entry;

typedef struct id_table {
    id_entry *slot;
    size_t cap, n;
} id_table;

static id_entry *id_find(const id_table *t, const uint8_t id[ES_ID_SIZE])
{
    size_t i = (size_t)hash_bytes(id, ES_ID_SIZE) & (t->cap - 1);
    while (t->slot[i].line && memcmp(t->slot[i].id, id, ES_ID_SIZE))
        i = (i + 1) & (t->cap - 1);
    return &t->slot[i];
}

static int id_grow(id_table *t)
{
    size_t cap = t->cap ? t->cap * 2 : 1024;
    id_table nt = {calloc(cap, sizeof *nt.slot), cap, t->n};
    if (!nt.slot)
        return -1;
    for (size_t i = 0; i < t->cap; i++)
        if (t->slot[i].line)
            *id_find(&nt, t->slot[i].id) = t->slot[i];
    free(t->slot);
    *t = nt;
    return 0;
}

/* ---- the import ---- */

typedef struct importer {
    es_store *st;
    const esrc_import_options *o;
    FILE *err;
    line_reader rd;
    stream_table streams;
    id_table ids;
    esrc_line_event ev;
    uint64_t events, new_events;
    int64_t last_time; /* of the previous line */
    uint64_t last_time_line;
    bool have_store_time; /* store_time is known */
    int64_t store_time;   /* the store's latest commit time, 0 when empty */
    uint64_t store_last_position;
} importer;

static void say(importer *im, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(importer *im, const char *fmt, ...)
{
    va_list ap;
    fprintf(im->err, "esrc: import: %s: ", im->o->name);
    va_start(ap, fmt);
    vfprintf(im->err, fmt, ap);
    va_end(ap);
    fputc('\n', im->err);
}

static int store_error(importer *im, const char *what, int rc)
{
    if (rc == ES_ENOMEM)
        say(im, "%s: out of memory", what);
    else
        say(im, "%s: %s: %s", what, es_strerror(rc), es_error_last());
    return rc == ES_ECONFLICT ? ESRC_CONFLICT : ESRC_FAIL;
}

/* A stream key for messages: text as it is (at most 60 bytes), else hex. */
static const char *key_str(char *out, size_t cap, const uint8_t *k, size_t n)
{
    size_t i, w = 0;
    bool plain = true;
    for (i = 0; i < n; i++)
        plain = plain && k[i] >= 0x20 && k[i] < 0x7f;
    if (plain) {
        snprintf(out, cap, "%.*s%s", (int)(n > 60 ? 60 : n), (const char *)k, n > 60 ? "..." : "");
        return out;
    }
    w = (size_t)snprintf(out, cap, "0x");
    for (i = 0; i < n && w + 3 < cap; i++)
        w += (size_t)snprintf(out + w, cap - w, "%02x", k[i]);
    return out;
}

/* The hash of the stored event at `seq` of a stream. */
static int stored_event(importer *im, const uint8_t *key, size_t len, uint64_t seq,
                        uint8_t hash[ES_HASH_SIZE])
{
    es_read_options ro = ES_READ_OPTIONS_INIT;
    es_cursor *cur;
    const es_event *ev;
    int rc;
    ro.from_seq = seq;
    ro.to_seq = seq;
    ro.limit = 1;
    if ((rc = es_stream_cursor(&cur, im->st, key, len, &ro)) < 0)
        return store_error(im, "reading the store", rc);
    es_cursor_set_raw(cur, 1); /* as stored: hashes cover the ciphertext */
    rc = es_cursor_next(&ev, cur);
    if (rc == 0)
        memcpy(hash, ev->hash, ES_HASH_SIZE);
    else
        rc = store_error(im, "reading the store", rc == ES_ITEROVER ? ES_ECORRUPT : rc);
    es_cursor_free(cur);
    return rc;
}

/* The store's latest commit time: of the event at its last position. */
static int latest_time(importer *im)
{
    es_log_options lo = ES_LOG_OPTIONS_INIT;
    es_cursor *cur;
    const es_event *ev;
    uint64_t last;
    int rc;
    if (im->have_store_time)
        return 0;
    if ((rc = es_store_last_position(&last, im->st)) < 0)
        return store_error(im, "reading the store", rc);
    im->store_time = 0;
    im->store_last_position = last;
    if (last > 0) {
        lo.from_position = last;
        if ((rc = es_log_cursor(&cur, im->st, &lo)) < 0)
            return store_error(im, "reading the store", rc);
        es_cursor_set_raw(cur, 1); /* as stored: hashes cover the ciphertext */
        while ((rc = es_cursor_next(&ev, cur)) == 0)
            im->store_time = ev->time_us;
        es_cursor_free(cur);
        if (rc != ES_ITEROVER)
            return store_error(im, "reading the store", rc);
    }
    im->have_store_time = true;
    return 0;
}

/* Pass 1, one line: the stream's state, creating it (and asking the store
 * for the stream's head) when the line is the stream's first. */
static int check_stream(importer *im, stream_state **out, uint64_t line)
{
    const esrc_line_event *e = &im->ev;
    char k[140];
    int rc;
    if (im->streams.n * 2 >= im->streams.cap && stream_grow(&im->streams))
        return store_error(im, "pass 1", ES_ENOMEM);
    stream_state **slot = stream_find(&im->streams, e->stream, e->stream_len);
    stream_state *s = *slot;
    if (s) {
        if (e->seq != s->last_seq + 1) {
            say(im,
                "line %" PRIu64 ": stream %s seq %" PRIu64 " does not follow seq %" PRIu64
                " of line %" PRIu64 "; nothing was imported",
                line, key_str(k, sizeof k, e->stream, e->stream_len), e->seq, s->last_seq,
                s->last_line);
            return ESRC_USAGE;
        }
        *out = s;
        return 0;
    }
    uint64_t head;
    if ((rc = es_stream_head(&head, im->st, e->stream, e->stream_len)) < 0)
        return store_error(im, "reading the store", rc);
    if (e->seq > head + 1) {
        if (head == 0)
            say(im,
                "line %" PRIu64 ": stream %s starts at seq %" PRIu64
                ", but the store does not have it: its first event must be seq 1; nothing "
                "was imported",
                line, key_str(k, sizeof k, e->stream, e->stream_len), e->seq);
        else
            say(im,
                "line %" PRIu64 ": stream %s starts at seq %" PRIu64
                ", but the store has it only up to seq %" PRIu64 "; nothing was imported",
                line, key_str(k, sizeof k, e->stream, e->stream_len), e->seq, head);
        return ESRC_USAGE;
    }
    if (!(s = calloc(1, sizeof *s)))
        return store_error(im, "pass 1", ES_ENOMEM);
    memcpy(s->key, e->stream, e->stream_len);
    s->key_len = e->stream_len;
    s->head = head;
    s->last_seq = e->seq - 1;
    *slot = s;
    im->streams.n++;
    /* continuing a stream of the store: its chain goes on from the stored hash */
    if (e->seq > 1 && (rc = stored_event(im, s->key, s->key_len, e->seq - 1, s->last_hash)))
        return rc;
    *out = s;
    return 0;
}

/* Pass 1, one line: everything that can be known before writing. */
static int check_line(importer *im, uint64_t line)
{
    const esrc_line_event *e = &im->ev;
    stream_state *s;
    uint8_t h[ES_HASH_SIZE];
    char k[140];
    es_event view;
    int rc;

    if (e->time_us > im->o->max_time_us) {
        say(im,
            "line %" PRIu64 ": time_us %" PRId64 " is more than 24 hours ahead of the clock;"
            " nothing was imported",
            line, e->time_us);
        return ESRC_USAGE;
    }
    if (e->time_us < im->last_time) {
        say(im,
            "line %" PRIu64 ": time_us %" PRId64 " goes back from %" PRId64 " (line %" PRIu64
            "); nothing was imported",
            line, e->time_us, im->last_time, im->last_time_line);
        return ESRC_USAGE;
    }
    im->last_time = e->time_us;
    im->last_time_line = line;
    if ((rc = check_stream(im, &s, line)))
        return rc;
    esrc_line_event_view(&view, e);
    if ((rc = es_event_hash(h, s->last_seq ? s->last_hash : NULL, &view)) < 0)
        return store_error(im, "hashing", rc);
    if (e->has_hash && memcmp(h, e->hash, ES_HASH_SIZE) != 0) {
        say(im,
            "line %" PRIu64 ": stream %s seq %" PRIu64 " does not hash to its \"hash\": the"
            " export was altered or damaged; nothing was imported",
            line, key_str(k, sizeof k, e->stream, e->stream_len), e->seq);
        return ESRC_USAGE;
    }
    bool is_new = e->seq > s->head;
    if (is_new) {
        if ((rc = latest_time(im)))
            return rc;
        if (e->time_us < im->store_time) {
            say(im,
                "line %" PRIu64 ": time_us %" PRId64 " is before the store's latest commit"
                " time %" PRId64 " (commit times never go back); nothing was imported",
                line, e->time_us, im->store_time);
            return ESRC_CONFLICT;
        }
        im->new_events++;
    } else {
        s->replay_seq = e->seq;
        s->replay_line = line;
        memcpy(s->replay_hash, h, ES_HASH_SIZE);
    }
    if (im->ids.n * 4 >= im->ids.cap * 3 && id_grow(&im->ids))
        return store_error(im, "pass 1", ES_ENOMEM);
    id_entry *slot = id_find(&im->ids, e->id);
    if (slot->line) {
        char idh[ES_ID_SIZE * 2 + 1];
        sodium_bin2hex(idh, sizeof idh, e->id, ES_ID_SIZE);
        say(im,
            "line %" PRIu64 ": id %s is already the id of line %" PRIu64 "; nothing was imported",
            line, idh, slot->line);
        return ESRC_USAGE;
    }
    memcpy(slot->id, e->id, ES_ID_SIZE);
    slot->line = line;
    slot->is_new = is_new;
    im->ids.n++;
    s->last_seq = e->seq;
    memcpy(s->last_hash, h, ES_HASH_SIZE);
    s->last_line = line;
    return 0;
}

/* Pass 1, after the last line: the events the store already has must be the
 * input's (one hash per stream proves the whole chain up to it). */
static int check_replays(importer *im)
{
    stream_state *bad = NULL;
    uint8_t h[ES_HASH_SIZE];
    char k[140];
    int rc;
    for (size_t i = 0; i < im->streams.cap; i++) {
        stream_state *s = im->streams.slot[i];
        if (!s || !s->replay_seq || (bad && bad->replay_line < s->replay_line))
            continue;
        if ((rc = stored_event(im, s->key, s->key_len, s->replay_seq, h)))
            return rc;
        if (memcmp(h, s->replay_hash, ES_HASH_SIZE) != 0)
            bad = s;
    }
    if (bad) {
        say(im,
            "line %" PRIu64 ": stream %s seq %" PRIu64 ": the store has other events up to"
            " this seq than the input; nothing was imported",
            bad->replay_line, key_str(k, sizeof k, bad->key, bad->key_len), bad->replay_seq);
        return ESRC_CONFLICT;
    }
    return 0;
}

/* Pass 1, after the last line: a new event's id must not be in the store.
 * There is no lookup by id in the API, so this walks the store's log once
 * (only when something is to be written into a store that is not empty). */
static int check_ids_in_store(importer *im)
{
    es_log_options lo = ES_LOG_OPTIONS_INIT;
    es_cursor *cur;
    const es_event *ev;
    uint64_t bad_line = 0, bad_seq = 0;
    uint8_t bad_stream[ES_MAX_KEY], bad_id[ES_ID_SIZE];
    size_t bad_len = 0;
    char k[140], idh[ES_ID_SIZE * 2 + 1];
    int rc;
    if (im->new_events == 0 || im->store_last_position == 0)
        return 0;
    if ((rc = es_log_cursor(&cur, im->st, &lo)) < 0)
        return store_error(im, "reading the store", rc);
    es_cursor_set_raw(cur, 1); /* as stored: hashes cover the ciphertext */
    while ((rc = es_cursor_next(&ev, cur)) == 0) {
        id_entry *e = id_find(&im->ids, ev->id);
        if (e->line && e->is_new && (!bad_line || e->line < bad_line)) {
            bad_line = e->line;
            bad_seq = ev->seq;
            memcpy(bad_stream, ev->stream, ev->stream_len);
            bad_len = ev->stream_len;
            memcpy(bad_id, ev->id, ES_ID_SIZE);
        }
    }
    es_cursor_free(cur);
    if (rc != ES_ITEROVER)
        return store_error(im, "reading the store", rc);
    if (bad_line) {
        sodium_bin2hex(idh, sizeof idh, bad_id, ES_ID_SIZE);
        say(im,
            "line %" PRIu64 ": id %s is already used in the store by stream %s seq %" PRIu64
            "; nothing was imported",
            bad_line, idh, key_str(k, sizeof k, bad_stream, bad_len), bad_seq);
        return ESRC_CONFLICT;
    }
    return 0;
}

static int pass1(importer *im)
{
    const char *line;
    size_t len;
    char err[300];
    int r, rc;
    while ((r = reader_next(&im->rd, &line, &len)) == 1) {
        if (esrc_line_decode(&im->ev, line, len, err, sizeof err)) {
            say(im, "line %" PRIu64 ": %s; nothing was imported", im->rd.lineno, err);
            return ESRC_USAGE;
        }
        if ((rc = check_line(im, im->rd.lineno)))
            return rc;
        im->events++;
    }
    if (r == -1) {
        say(im, "line %" PRIu64 ": longer than %zu bytes; nothing was imported", im->rd.lineno,
            ESRC_IMPORT_MAX_LINE);
        return ESRC_USAGE;
    }
    if (r == -2) {
        say(im, "reading: %s", ferror(im->rd.f) ? strerror(errno) : es_error_last());
        return ESRC_FAIL;
    }
    if ((rc = check_replays(im)) || (rc = check_ids_in_store(im)))
        return rc;
    return 0;
}

/* Pass 2: runs of events of one stream with one time, appended as one batch. */
enum { BATCH_MAX = 1000 };

typedef struct batch {
    esrc_line_event ev[BATCH_MAX];
    es_event_new news[BATCH_MAX];
    size_t n, bytes;
    uint64_t line; /* of the last event */
} batch;

static bool batch_takes(const batch *b, const esrc_line_event *e)
{
    const esrc_line_event *first = &b->ev[0], *last = &b->ev[b->n - 1];
    return b->n < BATCH_MAX && e->stream_len == first->stream_len &&
           memcmp(e->stream, first->stream, e->stream_len) == 0 && e->time_us == first->time_us &&
           e->seq == last->seq + 1 && b->bytes + e->data.len + e->meta.len <= ES_MAX_BATCH_BYTES;
}

static int batch_flush(importer *im, batch *b, esrc_import_result *res)
{
    es_append_result r;
    char k[140];
    int rc;
    if (b->n == 0)
        return 0;
    for (size_t i = 0; i < b->n; i++) {
        const esrc_line_event *e = &b->ev[i];
        b->news[i] = (es_event_new){.type = e->type,
                                    .data = e->data.data,
                                    .data_len = e->data.len,
                                    .meta = e->meta.data,
                                    .meta_len = e->meta.len,
                                    .id = e->id,
                                    .time_us = e->time_us};
    }
    rc = es_append_ex(&r, im->st, b->ev[0].stream, b->ev[0].stream_len, b->ev[0].seq - 1, b->news,
                      b->n, ES_APPEND_KEEP_TIME | ES_APPEND_RAW | ES_APPEND_TO_REPLICA);
    if (rc) {
        say(im,
            "line %" PRIu64 ": writing stream %s seq %" PRIu64 "..%" PRIu64 ": %s: %s (%" PRIu64
            " events were imported before it and stay)",
            b->line, key_str(k, sizeof k, b->ev[0].stream, b->ev[0].stream_len), b->ev[0].seq,
            b->ev[b->n - 1].seq, es_strerror(rc), es_error_last(), res->imported);
        return rc == ES_ECONFLICT || rc == ES_EDUPLICATE ? ESRC_CONFLICT : ESRC_FAIL;
    }
    if (r.replayed) /* another import of the same events got in between the passes */
        res->replayed += b->n;
    else
        res->imported += b->n;
    if (im->o->progress)
        im->o->progress(im->o->progress_payload, res->imported + res->replayed, im->events);
    b->n = 0;
    b->bytes = 0;
    return 0;
}

static int pass2(importer *im, batch *b, esrc_import_result *res)
{
    const char *line;
    size_t len;
    char err[300];
    int r, rc;
    while ((r = reader_next(&im->rd, &line, &len)) == 1) {
        esrc_line_event *e = &im->ev;
        if (esrc_line_decode(e, line, len, err, sizeof err)) {
            say(im, "line %" PRIu64 ": the input changed while importing: %s", im->rd.lineno, err);
            return ESRC_FAIL;
        }
        stream_state *s = *stream_find(&im->streams, e->stream, e->stream_len);
        if (!s) {
            say(im, "line %" PRIu64 ": the input changed while importing", im->rd.lineno);
            return ESRC_FAIL;
        }
        if (e->seq <= s->head) {
            res->replayed++;
            continue;
        }
        if (b->n > 0 && !batch_takes(b, e) && (rc = batch_flush(im, b, res)))
            return rc;
        /* swap the decoded event into the batch: their buffers are reused */
        esrc_line_event tmp = b->ev[b->n];
        b->ev[b->n] = *e;
        *e = tmp;
        b->bytes += b->ev[b->n].data.len + b->ev[b->n].meta.len;
        b->n++;
        b->line = im->rd.lineno;
    }
    if (r != 0) {
        say(im, "reading again: %s",
            r == -1            ? "the input changed while importing"
            : ferror(im->rd.f) ? strerror(errno)
                               : es_error_last());
        return ESRC_FAIL;
    }
    return batch_flush(im, b, res);
}

int esrc_import(esrc_import_result *out, es_store *st, FILE *in, const esrc_import_options *o)
{
    importer *im = calloc(1, sizeof *im);
    batch *b = NULL;
    esrc_import_result res = {0};
    off_t start;
    int rc;

    if (!im)
        return ESRC_FAIL;
    im->st = st;
    im->o = o;
    im->err = o->err ? o->err : stderr;
    im->rd.f = in;
    if (sodium_init() < 0 || (start = ftello(in)) < 0) {
        say(im, "the input cannot be read twice (%s)", strerror(errno));
        rc = ESRC_FAIL;
        goto done;
    }
    randombytes_buf(table_key, sizeof table_key);
    if ((rc = stream_grow(&im->streams)) || (rc = id_grow(&im->ids))) {
        rc = store_error(im, "starting", ES_ENOMEM);
        goto done;
    }
    if ((rc = pass1(im)))
        goto done;
    res.events = im->events;
    if (o->check_only)
        goto done;
    if (im->new_events == 0) { /* all there already, or nothing */
        res.replayed = im->events;
        goto done;
    }
    if (fseeko(in, start, SEEK_SET) != 0) {
        say(im, "rewinding the input: %s", strerror(errno));
        rc = ESRC_FAIL;
        goto done;
    }
    im->rd.blk_len = im->rd.blk_off = 0;
    im->rd.lineno = 0;
    if (!(b = calloc(1, sizeof *b))) {
        rc = store_error(im, "pass 2", ES_ENOMEM);
        goto done;
    }
    rc = pass2(im, b, &res);
done:
    if (out)
        *out = res;
    if (b) {
        for (size_t i = 0; i < BATCH_MAX; i++)
            esrc_line_event_free(&b->ev[i]);
        free(b);
    }
    esrc_line_event_free(&im->ev);
    es_buf_free(&im->rd.line);
    stream_table_free(&im->streams);
    free(im->ids.slot);
    free(im);
    return rc;
}
