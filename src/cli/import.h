/*
 * import.h — events as JSON Lines: the encoder `read --json`, `log --json` and
 * `export` print with, the decoder of one line, and the whole-file import.
 * A unit of its own (the esrc_import target) so fuzz targets can link it.
 */
#ifndef ESRC_IMPORT_H
#define ESRC_IMPORT_H

#include "cli.h"

#include <jansson.h>

/* A byte string is "text" when it is valid UTF-8 without NUL; JSON then
 * carries it as a string under its name, else as base64 under name_b64
 * (stream_b64, type_b64, data_b64, meta_b64). */
bool esrc_is_text(const uint8_t *p, size_t n);
int esrc_json_set_bytes(json_t *obj, const char *name, const uint8_t *p, size_t n);

/* A time as 2026-01-01T00:00:01.000000Z (UTC). */
void esrc_format_time_us(char *out, size_t cap, int64_t us);

/* An event as a new JSON object (every field, and "time" as ISO 8601); NULL
 * when out of memory. */
json_t *esrc_event_json(const es_event *ev);
/* The name of an es_event.shred value ("forgotten", "locked" …); the JSON of an
 * encrypted event carries it as "shred". */
const char *esrc_shred_name(unsigned shred);

/* One decoded line of an export.  Zero it before the first decode; free
 * with esrc_line_event_free. */
typedef struct esrc_line_event {
    uint8_t stream[ES_MAX_KEY];
    size_t stream_len;
    uint64_t seq;
    int64_t time_us;
    uint8_t id[ES_ID_SIZE];
    char type[ES_MAX_TYPE + 1];
    size_t type_len;
    es_buf data, meta;
    uint8_t hash[ES_HASH_SIZE];
    bool has_hash;
} esrc_line_event;

/* Longest line import reads: 16 MiB of data written as JSON escapes, and meta. */
#define ESRC_IMPORT_MAX_LINE ((size_t)128 << 20)

/* Decode one line (without its newline).  @return 0, or -1 with a message
 * in err (the line's fields are then unspecified). */
int esrc_line_decode(esrc_line_event *e, const char *line, size_t len, char *err, size_t errcap);
void esrc_line_event_free(esrc_line_event *e);
/* The decoded event as an es_event whose pointers are borrowed from e
 * (position and hash zero): for es_event_hash and the encoder. */
void esrc_line_event_view(es_event *out, const esrc_line_event *e);

typedef struct esrc_import_options {
    const char *name;    /* the input's name in messages ("-" for standard input) */
    int64_t max_time_us; /* latest time_us accepted: the clock + 24 h */
    FILE *err;           /* where messages go; NULL: stderr */
    bool check_only;     /* pass 1 only: check, write nothing */
    /* called now and then while writing; may be NULL */
    void (*progress)(void *payload, uint64_t done, uint64_t total);
    void *progress_payload;
} esrc_import_options;

typedef struct esrc_import_result {
    uint64_t events;   /* events in the input */
    uint64_t imported; /* written now */
    uint64_t replayed; /* already in the store, identical: nothing written */
} esrc_import_result;

/* Import ESRC_IMPORT_MAX_AHEAD_US: how far past the clock a time may be. */
#define ESRC_IMPORT_MAX_AHEAD_US ((int64_t)24 * 3600 * 1000000)

/*
 * Import an export into a store.  `in` must be seekable (a regular file or a
 * spool of standard input): pass 1 reads it all and checks every line against
 * the input and the store, pass 2 reads it again and writes.  Nothing is
 * written when pass 1 finds a fault.
 * @return an exit code: ESRC_OK; ESRC_USAGE (bad input, nothing written);
 *         ESRC_CONFLICT (the input contradicts the store, nothing written, or
 *         another writer got in between the passes); ESRC_FAIL (the store or
 *         reading failed).  A message naming the line went to o->err.
 */
int esrc_import(esrc_import_result *out, es_store *st, FILE *in, const esrc_import_options *o);

#endif
