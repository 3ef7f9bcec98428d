/*
 * map.c — see map.h.  FNV-1a hashing; the table doubles at 50% load.
 */
#include "map.h"

#include "internal.h"

#include <stdlib.h>

static uint64_t hash_bytes(const void *key, size_t len)
{
    const uint8_t *p = key;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static es__map_slot *find(const es__map *m, const void *key, size_t len, uint64_t h)
{
    size_t mask = m->cap - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
        es__map_slot *s = &m->slots[i];
        if (!s->key || (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0))
            return s;
    }
}

void *es__map_get(const es__map *m, const void *key, size_t len)
{
    if (!m->cap)
        return NULL;
    es__map_slot *s = find(m, key, len, hash_bytes(key, len));
    return s->key ? s->value : NULL;
}

static int grow_to(es__map *m, size_t cap)
{
    es__map_slot *slots = es__calloc(cap, sizeof *slots);
    if (!slots)
        return es__err(ES_ENOMEM, "out of memory growing a map to %zu slots", cap);
    es__map old = *m;
    m->slots = slots;
    m->cap = cap;
    for (size_t i = 0; i < old.cap; i++) {
        if (old.slots[i].key)
            *find(m, old.slots[i].key, old.slots[i].len, old.slots[i].hash) = old.slots[i];
    }
    free(old.slots);
    return 0;
}

static int grow(es__map *m)
{
    return grow_to(m, m->cap ? m->cap * 2 : 16);
}

int es__map_reserve(es__map *m, size_t extra)
{
    size_t cap = m->cap ? m->cap : 16;
    while ((m->count + extra) * 2 > cap)
        cap *= 2;
    return cap == m->cap ? 0 : grow_to(m, cap);
}

int es__map_put(es__map *m, const void *key, size_t len, void *value)
{
    if ((m->count + 1) * 2 > m->cap) {
        int rc = grow(m);
        if (rc < 0)
            return rc;
    }
    uint64_t h = hash_bytes(key, len);
    es__map_slot *s = find(m, key, len, h);
    if (!s->key) {
        uint8_t *k = es__malloc(len ? len : 1);
        if (!k)
            return es__err(ES_ENOMEM, "out of memory copying a map key");
        if (len)
            memcpy(k, key, len);
        s->key = k;
        s->len = len;
        s->hash = h;
        m->count++;
    }
    s->value = value;
    return 0;
}

void es__map_free(es__map *m, void (*free_value)(void *))
{
    for (size_t i = 0; i < m->cap; i++) {
        if (m->slots[i].key) {
            free(m->slots[i].key);
            if (free_value)
                free_value(m->slots[i].value);
        }
    }
    free(m->slots);
    m->slots = NULL;
    m->cap = m->count = 0;
}

void es__map_put_owned(es__map *m, uint8_t *key, size_t len, void *value)
{
    uint64_t h = hash_bytes(key, len);
    es__map_slot *s = find(m, key, len, h);
    if (s->key) {
        free(key);
    } else {
        s->key = key;
        s->len = len;
        s->hash = h;
        m->count++;
    }
    s->value = value;
}
