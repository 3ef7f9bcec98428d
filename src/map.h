/*
 * map.h — a hash map from byte strings to pointers (open addressing, linear
 * probing).  Used by the in-memory store and by es_verify.  Keys are copied;
 * values are the caller's.  No deletion: the in-memory store never forgets.
 */
#ifndef ES_MAP_H
#define ES_MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct es__map_slot {
    uint8_t *key; /* NULL: empty */
    size_t len;
    uint64_t hash;
    void *value;
} es__map_slot;

typedef struct es__map {
    es__map_slot *slots;
    size_t cap; /* power of two, or 0 */
    size_t count;
} es__map;

/* Value for key, or NULL. */
void *es__map_get(const es__map *m, const void *key, size_t len);
/* Insert or replace. Returns 0 or ES_ENOMEM. */
int es__map_put(es__map *m, const void *key, size_t len, void *value);
/* Insert with a key the map takes over (malloc'd by the caller): after
 * es__map_reserve this cannot fail.  A key already present keeps its
 * stored copy and `key` is freed. */
void es__map_put_owned(es__map *m, uint8_t *key, size_t len, void *value);
/* Make room for `extra` more keys so that the next puts cannot fail. */
int es__map_reserve(es__map *m, size_t extra);
/* Free the map's memory; call free_value on each value when not NULL. */
void es__map_free(es__map *m, void (*free_value)(void *));

#endif
