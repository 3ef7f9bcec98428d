/*
 * view.h — the fold machinery shared by views (view.c) and save (save.c).
 */
#ifndef ES_VIEW_H
#define ES_VIEW_H

#include "internal.h"

struct es_view {
    es_store *st;
    es_view_def def;
    char name[ES_MAX_VIEW_NAME + 1];
    uint32_t every;
    uint32_t keep;
};

/* The keys a view key resolves to. */
typedef struct es__vkeys {
    const uint8_t *vkey;
    size_t vkey_len;
    uint8_t stream[ES_MAX_KEY];
    size_t stream_len;
    uint8_t fkey[ES_MAX_VIEW_KEY]; /* fold key: shard key or the view key */
    size_t fkey_len;
    uint8_t skey[ES_MAX_VIEW_NAME + 1 + 4 + ES_MAX_VIEW_KEY]; /* snapshot key */
    size_t skey_len;
} es__vkeys;

/* A fold in progress: the accumulator always exists (made by init). */
typedef struct es__fold {
    es_snap_state state;
    uint64_t seq;
    int64_t time_us;
    void *acc;
    uint64_t persisted_seq; /* seq of the persisted snapshot it started from (0: none) */
} es__fold;

int es__view_keys(es__vkeys *k, const es_view *v, const void *vkey, size_t vkey_len);
/* Start from the nearest persisted snapshot with seq <= max_seq and time <= max_time. */
int es__fold_load(es__fold *f, es_view *v, const es__vkeys *k, uint64_t max_seq, int64_t max_time);
/* Start empty. */
int es__fold_init(es__fold *f, es_view *v, const es__vkeys *k);
/* Fold one event. */
int es__fold_apply(es__fold *f, es_view *v, const es__vkeys *k, const es_event *ev);
/* Fold the stream's events after f->seq, up to to_seq and max_time. */
int es__fold_run(es__fold *f, es_view *v, const es__vkeys *k, uint64_t to_seq, int64_t max_time,
                 es_history_fn fn, void *payload);
/* Persist f when it is `every` events past the snapshot it started from. */
int es__fold_maybe_persist(es__fold *f, es_view *v, const es__vkeys *k);
/* Fill a public snapshot from a fold: borrow (value points into the fold or
 * a selected value the caller frees with es_snapshot_clear) */
int es__fold_view(es_snapshot *out, es_view *v, const es__vkeys *k, es__fold *f, bool take);
void es__fold_clear(es__fold *f, es_view *v);
/* Copy a fold through encode/decode. */
int es__fold_clone(es__fold *dst, es_view *v, const es__vkeys *k, const es__fold *src);

#endif
