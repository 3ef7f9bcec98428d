/*
 * view.c — views: folds over one stream's events, with persisted snapshots.
 *
 * A view key maps to a stream and to a fold key (the view key, or a coarser
 * shard key).  Snapshots are stored per (view name, view version, fold key,
 * seq); a view whose version changed simply never finds the old ones.  A
 * few older snapshots are kept, spread out, so that "at seq N" and "as of
 * T" start near N instead of from the first event.
 */
#include "view.h"

#include <stdlib.h>

#define ES__KEEP_MAX 64

/*
 * The plain-old-data codec (es_view_def.value_size): the accumulator is
 * value_size bytes, zeroed by init, copied byte for byte to and from
 * snapshots.  init and encode need the size, which the callbacks do not
 * get, so view_init and view_encode below handle these views themselves.
 */
static int pod_decode(void **out, const uint8_t *data, size_t len, void *payload)
{
    (void)payload;
    /* the size was checked against value_size by view_decode */
    if (!(*out = es__malloc(len ? len : 1)))
        return es__err(ES_ENOMEM, "out of memory for a view value");
    memcpy(*out, data, len);
    return 0;
}

static void pod_free(void *acc, void *payload)
{
    (void)payload;
    free(acc);
}

static int view_init(const es_view *v, void **out, const es__vkeys *k)
{
    if (v->def.value_size) {
        if (!(*out = es__calloc(1, v->def.value_size)))
            return es__err(ES_ENOMEM, "out of memory for a view value");
        return 0;
    }
    return v->def.init(out, k->fkey, k->fkey_len, v->def.payload);
}

static int view_encode(const es_view *v, es_buf *out, const void *acc)
{
    if (v->def.value_size)
        return es_buf_put(out, acc, v->def.value_size);
    return v->def.encode(out, acc, v->def.payload);
}

static int view_decode(const es_view *v, void **out, const uint8_t *data, size_t len)
{
    if (v->def.value_size && len != v->def.value_size) {
        *out = NULL;
        return es__err(ES_ECORRUPT,
                       "view '%s': a snapshot of %zu bytes for a value of %zu (change "
                       "view_version when the value's layout changes)",
                       v->name, len, v->def.value_size);
    }
    return v->def.decode(out, data, len, v->def.payload);
}

/* The identity mapping (es_view_def.stream_key NULL): the view key is the
 * stream key. */
static int identity_stream_key(uint8_t out[ES_MAX_KEY], size_t *out_len, const uint8_t *vkey,
                               size_t vkey_len, void *payload)
{
    (void)payload;
    if (vkey_len > ES_MAX_KEY)
        return es__err(ES_ETOOBIG, "view key of %zu bytes cannot be a stream key (limit %d)",
                       vkey_len, ES_MAX_KEY);
    memcpy(out, vkey, vkey_len);
    *out_len = vkey_len;
    return 0;
}

int es_view_new(es_view **out, es_store *st, const es_view_def *def, const es_view_options *opts)
{
    es_view_options o = ES_VIEW_OPTIONS_INIT;
    es_view *v;
    size_t nl;
    int rc;

    if (!out)
        return es__err(ES_EINVAL, "es_view_new: out is NULL");
    *out = NULL;
    if (!st || !def)
        return es__err(ES_EINVAL, "es_view_new: NULL store or definition");
    if ((rc = es__check_version(def->version, ES_VIEW_DEF_VERSION, "es_view_def")) < 0)
        return rc;
    /* A version 1 definition ends before value_size: copy what it has. */
    es_view_def d;
    memset(&d, 0, sizeof d);
    memcpy(&d, def, def->version == 1 ? offsetof(es_view_def, value_size) : sizeof d);
    d.version = ES_VIEW_DEF_VERSION;
    def = &d;
    if (!def->name || (nl = strnlen(def->name, ES_MAX_VIEW_NAME + 1)) == 0 || nl > ES_MAX_VIEW_NAME)
        return es__err(ES_EINVAL, "view name must be 1..%d bytes", ES_MAX_VIEW_NAME);
    if (def->value_size) {
        if (def->init || def->encode || def->decode || def->free_value)
            return es__err(ES_EINVAL,
                           "view '%s' has a value_size and codec callbacks: give one or the other",
                           def->name);
        if (def->value_size > ES_MAX_DATA)
            return es__err(ES_ETOOBIG, "view '%s': value_size %zu is over %u bytes", def->name,
                           def->value_size, ES_MAX_DATA);
        if (def->shard_key && !def->free_selected)
            return es__err(ES_EINVAL,
                           "view '%s' is sharded with a value_size: free_selected is required",
                           def->name);
        d.decode = pod_decode;
        d.free_value = pod_free;
    }
    if (!def->stream_key)
        d.stream_key = identity_stream_key;
    if ((!def->value_size && (!def->init || !def->encode)) || !def->apply || !def->decode ||
        !def->free_value)
        return es__err(ES_EINVAL,
                       "view '%s' lacks a callback (apply, and init, encode, decode and "
                       "free_value unless value_size is set, are required)",
                       def->name);
    if (def->shard_key && !def->select)
        return es__err(ES_EINVAL, "view '%s' is sharded but has no select callback", def->name);
    if (opts) {
        if ((rc = es__check_version(opts->version, ES_VIEW_OPTIONS_VERSION, "es_view_options")) < 0)
            return rc;
        o = *opts;
    }
    if (o.keep > ES__KEEP_MAX)
        return es__err(ES_EINVAL, "es_view_options.keep is %u; the limit is %d", o.keep,
                       ES__KEEP_MAX);
    if (!(v = es__calloc(1, sizeof *v)))
        return es__err(ES_ENOMEM, "out of memory for a view");
    v->st = st;
    v->def = *def;
    memcpy(v->name, def->name, nl);
    v->def.name = v->name;
    v->every = o.snapshot_every ? o.snapshot_every : 100;
    v->keep = o.keep ? o.keep : 4;
    *out = v;
    return 0;
}

void es_view_free(es_view *v)
{
    free(v);
}

int es__view_keys(es__vkeys *k, const es_view *v, const void *vkey, size_t vkey_len)
{
    int rc;
    if (!vkey || vkey_len == 0)
        return es__err(ES_EINVAL, "view key is NULL or empty");
    if (vkey_len > ES_MAX_VIEW_KEY)
        return es__err(ES_ETOOBIG, "view key is %zu bytes; the limit is %d", vkey_len,
                       ES_MAX_VIEW_KEY);
    k->vkey = vkey;
    k->vkey_len = vkey_len;
    k->stream_len = 0;
    if ((rc = v->def.stream_key(k->stream, &k->stream_len, vkey, vkey_len, v->def.payload)) != 0)
        return es__cb_rc(rc);
    if (k->stream_len == 0 || k->stream_len > ES_MAX_KEY)
        return es__err(ES_EINVAL, "view '%s' mapped a key to a stream key of %zu bytes", v->name,
                       k->stream_len);
    if (v->def.shard_key) {
        k->fkey_len = 0;
        if ((rc = v->def.shard_key(k->fkey, &k->fkey_len, vkey, vkey_len, v->def.payload)) != 0)
            return es__cb_rc(rc);
        if (k->fkey_len == 0 || k->fkey_len > ES_MAX_VIEW_KEY)
            return es__err(ES_EINVAL, "view '%s' mapped a key to a shard key of %zu bytes", v->name,
                           k->fkey_len);
    } else {
        memcpy(k->fkey, vkey, vkey_len);
        k->fkey_len = vkey_len;
    }
    size_t nl = strlen(v->name);
    memcpy(k->skey, v->name, nl);
    k->skey[nl] = 0;
    es__put_u32(k->skey + nl + 1, v->def.view_version);
    memcpy(k->skey + nl + 5, k->fkey, k->fkey_len);
    k->skey_len = nl + 5 + k->fkey_len;
    return 0;
}

int es__fold_init(es__fold *f, es_view *v, const es__vkeys *k)
{
    int rc;
    memset(f, 0, sizeof *f);
    f->state = ES_SNAP_NONE;
    if ((rc = view_init(v, &f->acc, k)) != 0)
        return es__cb_rc(rc);
    return 0;
}

void es__fold_clear(es__fold *f, es_view *v)
{
    if (f->acc)
        v->def.free_value(f->acc, v->def.payload);
    f->acc = NULL;
}

int es__fold_load(es__fold *f, es_view *v, const es__vkeys *k, uint64_t max_seq, int64_t max_time)
{
    es_buf buf = ES_BUF_INIT;
    es__snap s;
    int rc;

    memset(f, 0, sizeof *f);
    rc = v->st->ops->snap_get(v->st->be, k->skey, k->skey_len, max_seq, max_time, &s, &buf);
    if (rc == ES_ENOTFOUND) {
        es_buf_free(&buf);
        return es__fold_init(f, v, k);
    }
    if (rc < 0)
        goto done;
    if (s.state > ES_SNAP_DELETED) {
        rc = es__err(ES_ECORRUPT, "snapshot of view '%s' has state %u", v->name, s.state);
        goto done;
    }
    if (s.state == ES_SNAP_VALUE) {
        if ((rc = view_decode(v, &f->acc, s.data, s.len)) != 0) {
            rc = es__cb_rc(rc);
            goto done;
        }
    } else if ((rc = view_init(v, &f->acc, k)) != 0) {
        rc = es__cb_rc(rc);
        goto done;
    }
    f->state = (es_snap_state)s.state;
    f->seq = s.seq;
    f->time_us = s.time_us;
    f->persisted_seq = s.seq;
done:
    es_buf_free(&buf);
    return rc;
}

int es__fold_apply(es__fold *f, es_view *v, const es__vkeys *k, const es_event *ev)
{
    int r = v->def.apply(f->acc, ev, k->fkey, k->fkey_len, v->def.payload);
    switch (r) {
    case ES_FOLD_UNCHANGED:
        break;
    case ES_FOLD_CHANGED:
        f->state = ES_SNAP_VALUE;
        break;
    case ES_FOLD_DELETED:
        v->def.free_value(f->acc, v->def.payload);
        f->acc = NULL;
        if ((r = view_init(v, &f->acc, k)) != 0)
            return es__cb_rc(r);
        f->state = ES_SNAP_DELETED;
        break;
    default:
        return r < 0
                   ? es__cb_rc(r)
                   : es__err(ES_EINVAL, "view '%s': apply returned %d, not an es_fold", v->name, r);
    }
    f->seq = ev->seq;
    f->time_us = ev->time_us;
    return 0;
}

int es__fold_run(es__fold *f, es_view *v, const es__vkeys *k, uint64_t to_seq, int64_t max_time,
                 es_history_fn fn, void *payload)
{
    es_read_options o = ES_READ_OPTIONS_INIT;
    es_cursor *c = NULL;
    const es_event *ev;
    int rc;

    if (to_seq <= f->seq)
        return 0;
    o.from_seq = f->seq + 1;
    o.to_seq = to_seq == UINT64_MAX ? 0 : to_seq;
    if ((rc = es_stream_cursor(&c, v->st, k->stream, k->stream_len, &o)) < 0)
        return rc;
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        if (ev->time_us > max_time)
            break;
        if (ev->seq != f->seq + 1) {
            rc = es__err(ES_ECORRUPT, "stream returned seq %llu after seq %llu",
                         (unsigned long long)ev->seq, (unsigned long long)f->seq);
            break;
        }
        if ((rc = es__fold_apply(f, v, k, ev)) < 0)
            break;
        if (fn) {
            es_snapshot snap;
            if ((rc = es__fold_view(&snap, v, k, f, false)) < 0)
                break;
            int r = fn(&snap, ev, payload);
            if (v->def.shard_key)
                es_snapshot_clear(&snap, v);
            if (r) {
                rc = es__cb_rc(r);
                break;
            }
        }
    }
    es_cursor_free(c);
    return rc == ES_ITEROVER ? 0 : rc;
}

/* Drop retained snapshots beyond `keep`: never the newest, and each time
 * the one whose neighbours are closest, so the survivors stay spread out. */
static int prune(es_view *v, const es__vkeys *k)
{
    uint64_t seqs[ES__KEEP_MAX + 8];
    size_t n = 0;
    int rc;
    if ((rc = v->st->ops->snap_list(v->st->be, k->skey, k->skey_len, seqs,
                                    sizeof seqs / sizeof *seqs, &n)) < 0)
        return rc;
    while (n > v->keep) {
        size_t victim = 0;
        if (n > 2) {
            uint64_t best = UINT64_MAX;
            for (size_t i = 1; i + 1 < n; i++) {
                uint64_t gap = seqs[i + 1] - seqs[i - 1];
                if (gap < best) {
                    best = gap;
                    victim = i;
                }
            }
        }
        if ((rc = v->st->ops->snap_del(v->st->be, k->skey, k->skey_len, seqs[victim])) < 0)
            return rc;
        memmove(&seqs[victim], &seqs[victim + 1], (n - victim - 1) * sizeof *seqs);
        n--;
    }
    return 0;
}

int es__fold_maybe_persist(es__fold *f, es_view *v, const es__vkeys *k)
{
    es_buf buf = ES_BUF_INIT;
    int rc = 0;

    if (v->every == UINT32_MAX || f->seq <= f->persisted_seq ||
        f->seq - f->persisted_seq < v->every)
        return 0;
    if (v->st->flags & ES_OPEN_READONLY)
        return 0;
    if (f->state == ES_SNAP_VALUE && (rc = view_encode(v, &buf, f->acc)) != 0) {
        rc = es__cb_rc(rc);
        goto done;
    }
    es__snap s = {(uint8_t)f->state, f->seq, f->time_us, buf.data, buf.len};
    if ((rc = v->st->ops->snap_put(v->st->be, k->skey, k->skey_len, &s)) < 0)
        goto done;
    f->persisted_seq = f->seq;
    rc = prune(v, k);
done:
    es_buf_free(&buf);
    return rc;
}

int es__fold_view(es_snapshot *out, es_view *v, const es__vkeys *k, es__fold *f, bool take)
{
    out->seq = f->seq;
    out->time_us = f->time_us;
    out->value = NULL;
    if (!v->def.shard_key) {
        out->state = f->state;
        if (f->state == ES_SNAP_VALUE) {
            out->value = f->acc;
            if (take)
                f->acc = NULL;
        }
        return 0;
    }
    out->state = ES_SNAP_NONE;
    if (f->state == ES_SNAP_NONE)
        return 0;
    void *val = NULL;
    int r = v->def.select(&val, f->acc, k->vkey, k->vkey_len, v->def.payload);
    if (r < 0)
        return r;
    if (r > ES_SNAP_DELETED)
        return es__err(ES_EINVAL, "view '%s': select returned %d", v->name, r);
    out->state = (es_snap_state)r;
    if (r == ES_SNAP_VALUE) {
        out->value = val;
    } else if (val) {
        void (*fr)(void *, void *) =
            v->def.free_selected ? v->def.free_selected : v->def.free_value;
        fr(val, v->def.payload);
    }
    return 0;
}

int es__fold_clone(es__fold *dst, es_view *v, const es__vkeys *k, const es__fold *src)
{
    es_buf buf = ES_BUF_INIT;
    int rc;

    *dst = *src;
    dst->acc = NULL;
    if ((rc = view_encode(v, &buf, src->acc)) != 0) {
        rc = es__cb_rc(rc);
        goto done;
    }
    if ((rc = view_decode(v, &dst->acc, buf.data, buf.len)) != 0)
        rc = es__cb_rc(rc);
done:
    (void)k;
    es_buf_free(&buf);
    return rc;
}

void es_snapshot_clear(es_snapshot *snap, const es_view *v)
{
    if (!snap)
        return;
    if (snap->value && v) {
        void (*fr)(void *, void *) = v->def.free_value;
        if (v->def.shard_key && v->def.free_selected)
            fr = v->def.free_selected;
        fr(snap->value, v->def.payload);
    }
    memset(snap, 0, sizeof *snap);
}

static int check_get(es_snapshot *out, es_view *v)
{
    if (!out)
        return es__err(ES_EINVAL, "view get: out is NULL");
    memset(out, 0, sizeof *out);
    if (!v)
        return es__err(ES_EINVAL, "view get: view is NULL");
    return 0;
}

/* Run a fold to its end and hand the result out. */
static int finish(es_snapshot *out, es_view *v, const es__vkeys *k, es__fold *f, int rc)
{
    if (rc == 0)
        rc = es__fold_view(out, v, k, f, true);
    es__fold_clear(f, v);
    return rc;
}

int es_view_get(es_snapshot *out, es_view *v, const void *vkey, size_t vkey_len,
                es_consistency consistency)
{
    es__vkeys k;
    es__fold f;
    int rc;

    if ((rc = check_get(out, v)) < 0)
        return rc;
    if (consistency != ES_LATEST_EVENT && consistency != ES_LATEST_SNAPSHOT)
        return es__err(ES_EINVAL, "unknown consistency %d", (int)consistency);
    if ((rc = es__view_keys(&k, v, vkey, vkey_len)) < 0)
        return rc;
    if ((rc = es__fold_load(&f, v, &k, UINT64_MAX, INT64_MAX)) < 0)
        return rc;
    if (consistency == ES_LATEST_EVENT) {
        rc = es__fold_run(&f, v, &k, UINT64_MAX, INT64_MAX, NULL, NULL);
        if (rc == 0)
            rc = es__fold_maybe_persist(&f, v, &k);
    }
    return finish(out, v, &k, &f, rc);
}

int es_view_get_at(es_snapshot *out, es_view *v, const void *vkey, size_t vkey_len, uint64_t seq)
{
    es__vkeys k;
    es__fold f;
    int rc;

    if ((rc = check_get(out, v)) < 0)
        return rc;
    if ((rc = es__view_keys(&k, v, vkey, vkey_len)) < 0)
        return rc;
    if ((rc = es__fold_load(&f, v, &k, seq, INT64_MAX)) < 0)
        return rc;
    rc = es__fold_run(&f, v, &k, seq, INT64_MAX, NULL, NULL);
    return finish(out, v, &k, &f, rc);
}

int es_view_get_as_of(es_snapshot *out, es_view *v, const void *vkey, size_t vkey_len,
                      int64_t time_us)
{
    es__vkeys k;
    es__fold f;
    int rc;

    if ((rc = check_get(out, v)) < 0)
        return rc;
    if ((rc = es__view_keys(&k, v, vkey, vkey_len)) < 0)
        return rc;
    if ((rc = es__fold_load(&f, v, &k, UINT64_MAX, time_us)) < 0)
        return rc;
    rc = es__fold_run(&f, v, &k, UINT64_MAX, time_us, NULL, NULL);
    return finish(out, v, &k, &f, rc);
}

int es_view_history(es_view *v, const void *vkey, size_t vkey_len, uint64_t from_seq,
                    es_history_fn fn, void *payload)
{
    es__vkeys k;
    es__fold f;
    int rc;

    if (!v || !fn)
        return es__err(ES_EINVAL, "es_view_history: NULL view or callback");
    if ((rc = es__view_keys(&k, v, vkey, vkey_len)) < 0)
        return rc;
    if (from_seq == 0)
        from_seq = 1;
    if ((rc = es__fold_load(&f, v, &k, from_seq - 1, INT64_MAX)) < 0)
        return rc;
    if ((rc = es__fold_run(&f, v, &k, from_seq - 1, INT64_MAX, NULL, NULL)) == 0)
        rc = es__fold_run(&f, v, &k, UINT64_MAX, INT64_MAX, fn, payload);
    es__fold_clear(&f, v);
    return rc;
}
