/*
 * auth.h — bearer tokens of `esrc serve`: scoped to stream-key prefixes with
 * rights, kept only as hashes in a token file (JSON Lines, mode 0600) that
 * `esrc token create|list|revoke` edits and the server re-reads whenever it
 * changes, so a revocation takes effect at the next request.
 *
 * Why a file and not the store: the store's key-value table is internal to
 * the library, and a stream of token events would let anyone with read
 * rights on "" read the hashes.  A file next to the server is owned by the
 * server's user, like a TLS key.
 */
#ifndef ESRC_SERVER_AUTH_H
#define ESRC_SERVER_AUTH_H

#include "request.h"

#include <pthread.h>
#include <stdbool.h>
#include <sys/stat.h>

#define SRV_RIGHT_READ 0x1u   /* read streams, the log, feeds, heads, lists under the prefixes */
#define SRV_RIGHT_APPEND 0x2u /* append to streams under the prefixes */
#define SRV_RIGHT_ADMIN 0x4u  /* with prefix "": stats, verify all, subscriptions, metrics */

#define SRV_TOKEN_ID_LEN 16     /* hex digits of a token's public id */
#define SRV_TOKEN_SECRET_LEN 64 /* hex digits of its secret */
#define SRV_MAX_TOKEN_NAME 64

/* A token as the server knows it: never the token itself, only its hash. */
typedef struct srv_token {
    char id[SRV_TOKEN_ID_LEN + 1];
    char name[SRV_MAX_TOKEN_NAME + 1];
    unsigned rights;
    srv_prefixes prefixes;
    uint8_t hash[32]; /* BLAKE2b-256 of the whole token text */
    int64_t created_us;
} srv_token;

typedef struct srv_tokens {
    srv_token *t;
    size_t n;
    char *path;
    struct stat st; /* of the file when last read */
    pthread_mutex_t mu;
} srv_tokens;

/* Read a token file (a missing one is empty).  @return 0, or -1 with err. */
int srv_tokens_open(srv_tokens *out, const char *path, char *err, size_t errcap);
void srv_tokens_close(srv_tokens *ts);

/* Check an Authorization header value ("Bearer TOKEN") against the file (read
 * again first if it changed).  @return 1 with *out a copy of the token, 0
 * when it is not one, -1 when the file cannot be read (err). */
int srv_tokens_check(srv_token *out, srv_tokens *ts, const char *header, char *err, size_t errcap);

/* Make a token: its text (written to text, SRV_TOKEN_TEXT bytes with the
 * NUL) and its record, appended to the file.  @return 0 or -1 with err. */
#define SRV_TOKEN_TEXT (4 + SRV_TOKEN_ID_LEN + 1 + SRV_TOKEN_SECRET_LEN + 1)
int srv_tokens_create(char *text, srv_tokens *ts, const char *name, unsigned rights,
                      const srv_prefixes *prefixes, int64_t now_us, char *err, size_t errcap);
/* Remove a token by id.  @return 1 removed, 0 no such id, -1 with err. */
int srv_tokens_revoke(srv_tokens *ts, const char *id, char *err, size_t errcap);

/* "read,append" → rights.  @return 0 or -1. */
int srv_rights_parse(unsigned *out, const char *s);
/* rights → "read,append" into out (at least 20 bytes). */
void srv_rights_format(char *out, size_t cap, unsigned rights);

/* May the holder do `right` on stream `key`?  (A token with the right and a
 * prefix covering the key.) */
bool srv_token_allows(const srv_token *t, unsigned right, const void *key, size_t len);
/* May the holder do `right` on everything (a prefix "")? */
bool srv_token_global(const srv_token *t, unsigned right);

/* A token's record for lists (no hash): a new JSON object or NULL. */
json_t *srv_token_json(const srv_token *t);

#endif
