/*
 * http_json.h — a small JSON reader for the http:// store's answers.
 *
 * The core library does not link jansson (see CMakeLists.txt: the SQL read
 * models and the CLI do), and the server's answers are small, well-formed
 * objects of strings, integers, booleans, nulls and arrays.  This reader
 * parses one answer in place: strings are unescaped into the buffer itself
 * and NUL-terminated there, and nodes refer to each other by index.
 */
#ifndef ES_HTTP_JSON_H
#define ES_HTTP_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HJ_NONE ((size_t)-1)

typedef enum hj_type { HJ_NULL, HJ_BOOL, HJ_NUM, HJ_STR, HJ_ARR, HJ_OBJ } hj_type;

typedef struct hj_node {
    hj_type type;
    const char *key; /* a member's name (NUL-terminated), or NULL */
    size_t key_len;
    const char *s; /* HJ_STR: the unescaped bytes, NUL-terminated */
    size_t len;
    int64_t num;  /* HJ_NUM (an integer that fits), HJ_BOOL (0 or 1) */
    bool num_ok;  /* HJ_NUM: the number is an integer that fits int64 */
    size_t first; /* HJ_ARR, HJ_OBJ: the first element, or HJ_NONE */
    size_t next;  /* the next sibling, or HJ_NONE */
} hj_node;

typedef struct hj_doc {
    hj_node *v; /* v[0] is the root */
    size_t n, cap;
} hj_doc;

/* Parse buf[0..len) (modified in place; buf[len] must be writable).
 * @return 0, ES_ENOMEM, or ES_ECORRUPT with a message. */
int es__hj_parse(hj_doc *doc, char *buf, size_t len);
void es__hj_free(hj_doc *doc);
/* The member `name` of object node i, or HJ_NONE. */
size_t es__hj_get(const hj_doc *doc, size_t i, const char *name);
/* Member `name` as an int64 (absent or not an integer: false). */
bool es__hj_int(const hj_doc *doc, size_t i, const char *name, int64_t *out);

#endif
