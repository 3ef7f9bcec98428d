/*
 * shred.c — crypto-shredding: the data of events under a rule is encrypted
 * with a key per subject, and forgetting the subject destroys that key.
 *
 * It lives above the backends (called from store.c's append and cursor
 * paths), so it is the same on every store: a backend only ever sees the
 * encrypted envelope as the event's data, and subject keys as records of
 * its key-value table.
 *
 * Envelope (the stored data of an encrypted event):
 *
 *   magic[8] | u8 flags | kid[16] | u8 subject_len | subject | nonce[24]
 *            | XChaCha20-Poly1305(plaintext)
 *
 * plaintext = data, or with ENV_META: u32be data_len | data | meta (the
 * stored metadata is then empty).  The associated data is
 *   "es-env1" | u8 stream_len | stream | id[16] | u8 type_len | type | header
 * where header is the envelope up to the nonce, so a ciphertext cannot be
 * moved to another event, stream or type, nor its header changed.
 *
 * Subject key record "shk/<subject>": u8 1 | kid[16] | nonce[24] |
 * XChaCha20-Poly1305(key[32]) under the master key, associated data
 * "es-shk1" | subject | kid.  kid is random per key: an envelope whose kid
 * is not the record's belongs to a forgotten key.
 * Rule record "shr/<prefix>": u8 1 | u8 flags.
 */
#include "internal.h"

#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>

#define AEAD_NONCE crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
#define AEAD_TAG crypto_aead_xchacha20poly1305_ietf_ABYTES
#define KEY_SIZE 32
#define KID_SIZE 16
#define MAGIC_SIZE 8
#define ENV_META 0x1u
#define REC_SIZE (1 + KID_SIZE + AEAD_NONCE + KEY_SIZE + AEAD_TAG)
#define CACHE_SLOTS 8

static const uint8_t magic[MAGIC_SIZE] = {0x00, 'e', 's', '-', 'e', 'n', 'c', 0x01};

typedef struct rule {
    uint8_t prefix[ES_MAX_KEY];
    size_t len;
    unsigned flags;
} rule;

struct es__shred_state {
    pthread_mutex_t mu;
    bool have_master;
    uint8_t master[ES_MASTER_KEY_SIZE];
    bool rules_loaded;
    rule *rules;
    size_t n_rules, cap_rules;
};

typedef struct slot {
    bool used;
    uint8_t subject[ES_MAX_KEY];
    size_t sl;
    uint8_t kid[KID_SIZE];
    uint8_t key[KEY_SIZE];
    unsigned state; /* ES_SHRED_OPEN (key valid), FORGOTTEN or LOCKED */
} slot;

struct es__shred_cur {
    es_buf plain;
    slot cache[CACHE_SLOTS];
    unsigned next;
};

int es__shred_init(es_store *st)
{
    if (!(st->shred = es__calloc(1, sizeof *st->shred)))
        return es__err(ES_ENOMEM, "out of memory opening a store");
    pthread_mutex_init(&st->shred->mu, NULL);
    return 0;
}

void es__shred_free(es_store *st)
{
    if (!st->shred)
        return;
    pthread_mutex_destroy(&st->shred->mu);
    sodium_memzero(st->shred->master, sizeof st->shred->master);
    free(st->shred->rules);
    free(st->shred);
    st->shred = NULL;
}

bool es__shred_is_envelope(const void *data, size_t len)
{
    return len >= MAGIC_SIZE && memcmp(data, magic, MAGIC_SIZE) == 0;
}

static int need_kv(es_store *st, const char *what)
{
    if (!st->ops->kv_get || !st->ops->kv_cas || !st->ops->kv_list)
        return es__err(ES_ENOTSUP, "%s: the %s store keeps no records", what, st->ops->name);
    return 0;
}

static size_t rec_key(uint8_t *out, const char *tag, const uint8_t *s, size_t len)
{
    memcpy(out, tag, 4);
    memcpy(out + 4, s, len);
    return 4 + len;
}

int es_store_set_master_key(es_store *st, const uint8_t *key)
{
    if (!st)
        return es__err(ES_EINVAL, "es_store_set_master_key: store is NULL");
    pthread_mutex_lock(&st->shred->mu);
    if (key)
        memcpy(st->shred->master, key, ES_MASTER_KEY_SIZE);
    else
        sodium_memzero(st->shred->master, sizeof st->shred->master);
    st->shred->have_master = key != NULL;
    pthread_mutex_unlock(&st->shred->mu);
    return 0;
}

/* ---- rules ---- */

typedef struct rule_list {
    rule *r;
    size_t n, cap;
} rule_list;

static int collect_rule(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                        uint64_t version, void *payload)
{
    rule_list *l = payload;
    (void)version;
    if (klen <= 4 || klen - 4 > ES_MAX_KEY || vlen != 2 || val[0] != 1)
        return es__err(ES_ECORRUPT, "shredding rule record '%.*s' is malformed",
                       (int)(klen > 100 ? 100 : klen), (const char *)key);
    if (l->n == l->cap) {
        size_t c = l->cap ? l->cap * 2 : 4;
        rule *p = es__realloc(l->r, c * sizeof *p);
        if (!p)
            return es__err(ES_ENOMEM, "out of memory reading shredding rules");
        l->r = p;
        l->cap = c;
    }
    memcpy(l->r[l->n].prefix, key + 4, klen - 4);
    l->r[l->n].len = klen - 4;
    l->r[l->n].flags = val[1];
    l->n++;
    return 0;
}

static int read_rules(es_store *st, rule_list *l)
{
    memset(l, 0, sizeof *l);
    int rc = st->ops->kv_list(st->be, (const uint8_t *)"shr/", 4, collect_rule, l);
    if (rc < 0) {
        free(l->r);
        memset(l, 0, sizeof *l);
    }
    return rc;
}

/* Load the rules into the handle.  The store is read without mu held (a
 * reader holding a store lock may wait for mu: no lock order to invert),
 * then mu is taken to swap them in. */
static int load_rules(es_store *st)
{
    struct es__shred_state *s = st->shred;
    rule_list l = {0};
    int rc;
    if (st->ops->kv_list && (rc = read_rules(st, &l)) < 0)
        return rc; /* no records at all: no rules */
    pthread_mutex_lock(&s->mu);
    free(s->rules);
    s->rules = l.r;
    s->n_rules = l.n;
    s->cap_rules = l.cap;
    s->rules_loaded = true;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

int es_shred_rule_add(es_store *st, const void *prefix, size_t prefix_len, unsigned flags)
{
    uint8_t k[4 + ES_MAX_KEY], v[2] = {1, 0};
    es_buf b = ES_BUF_INIT;
    uint64_t ver, nv;
    int rc;
    if (!st || !prefix)
        return es__err(ES_EINVAL, "es_shred_rule_add: NULL argument");
    if (prefix_len == 0)
        return es__err(ES_EINVAL, "es_shred_rule_add: the prefix is empty");
    if (prefix_len > ES_MAX_KEY)
        return es__err(ES_ETOOBIG, "es_shred_rule_add: prefix is %zu bytes; the limit is %d",
                       prefix_len, ES_MAX_KEY);
    if (flags & ~ES_SHRED_META)
        return es__err(ES_EINVAL, "es_shred_rule_add: unknown flags 0x%x", flags);
    if (st->flags & ES_OPEN_READONLY)
        return es__err(ES_EINVAL, "es_shred_rule_add: the store was opened read-only");
    if ((rc = need_kv(st, "es_shred_rule_add")) < 0)
        return rc;
    v[1] = (uint8_t)flags;
    size_t kl = rec_key(k, "shr/", prefix, prefix_len);
    do {
        if ((rc = st->ops->kv_get(st->be, k, kl, &b, &ver)) < 0)
            break;
        rc = st->ops->kv_cas(st->be, k, kl, ver, v, sizeof v, &nv);
    } while (rc == ES_ECONFLICT);
    es_buf_free(&b);
    if (rc < 0)
        return rc;
    return load_rules(st);
}

int es_shred_rules(es_store *st, es_shred_rule_fn fn, void *payload)
{
    rule_list l;
    int rc;
    if (!st || !fn)
        return es__err(ES_EINVAL, "es_shred_rules: NULL argument");
    if (!st->ops->kv_list)
        return 0;
    if ((rc = read_rules(st, &l)) < 0)
        return rc;
    for (size_t i = 0; i < l.n && rc == 0; i++) {
        int r = fn(l.r[i].prefix, l.r[i].len, l.r[i].flags, payload);
        if (r)
            rc = es__cb_rc(r);
    }
    free(l.r);
    return rc;
}

/* The rule for a stream (longest prefix), or NULL.  mu held. */
static const rule *rule_for(const struct es__shred_state *s, const uint8_t *key, size_t len)
{
    const rule *best = NULL;
    for (size_t i = 0; i < s->n_rules; i++) {
        const rule *r = &s->rules[i];
        if (es__has_prefix(key, len, r->prefix, r->len) && (!best || r->len > best->len))
            best = r;
    }
    return best;
}

static size_t subject_len(const rule *r, const uint8_t *key, size_t len)
{
    const uint8_t *slash = len > r->len ? memchr(key + r->len, '/', len - r->len) : NULL;
    return slash ? (size_t)(slash - key) : len;
}

/* ---- subject keys ---- */

static void rec_ad(uint8_t *ad, size_t *adl, const uint8_t *subj, size_t sl, const uint8_t *kid)
{
    memcpy(ad, "es-shk1", 7);
    memcpy(ad + 7, subj, sl);
    memcpy(ad + 7 + sl, kid, KID_SIZE);
    *adl = 7 + sl + KID_SIZE;
}

/* Unwrap a key record.  Returns ES_SHRED_OPEN (kid, key filled) or LOCKED. */
static unsigned unwrap(const uint8_t *master, const uint8_t *rec, const uint8_t *subj, size_t sl,
                       uint8_t *kid, uint8_t *key)
{
    uint8_t ad[7 + ES_MAX_KEY + KID_SIZE];
    size_t adl;
    unsigned long long kl;
    memcpy(kid, rec + 1, KID_SIZE);
    if (!master)
        return ES_SHRED_LOCKED;
    rec_ad(ad, &adl, subj, sl, kid);
    const uint8_t *nonce = rec + 1 + KID_SIZE;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(
            key, &kl, NULL, nonce + AEAD_NONCE, KEY_SIZE + AEAD_TAG, ad, adl, nonce, master) != 0 ||
        kl != KEY_SIZE)
        return ES_SHRED_LOCKED;
    return ES_SHRED_OPEN;
}

/*
 * The subject's key: *state ES_SHRED_OPEN (kid and key filled), FORGOTTEN
 * (no record) or LOCKED (no master key, or a master key that does not open
 * it; kid filled).  With `create`, a missing key is made and stored.
 */
static int subject_key(es_store *st, const uint8_t *master, const uint8_t *subj, size_t sl,
                       bool create, uint8_t *kid, uint8_t *key, unsigned *state)
{
    uint8_t k[4 + ES_MAX_KEY], rec[REC_SIZE], ad[7 + ES_MAX_KEY + KID_SIZE];
    es_buf b = ES_BUF_INIT;
    uint64_t ver, nv;
    size_t adl;
    int rc;
    size_t kl = rec_key(k, "shk/", subj, sl);
    for (;;) {
        if ((rc = st->ops->kv_get(st->be, k, kl, &b, &ver)) < 0)
            goto done;
        if (ver != 0) {
            if (b.len != REC_SIZE || b.data[0] != 1) {
                rc = es__err(ES_ECORRUPT, "the key record of subject '%.*s' is malformed",
                             (int)(sl > 100 ? 100 : sl), (const char *)subj);
                goto done;
            }
            *state = unwrap(master, b.data, subj, sl, kid, key);
            goto done;
        }
        if (!create) {
            *state = ES_SHRED_FORGOTTEN;
            goto done;
        }
        /* a new key, wrapped; a racing writer's key wins the compare-and-set */
        rec[0] = 1;
        randombytes_buf(rec + 1, KID_SIZE);
        randombytes_buf(rec + 1 + KID_SIZE, AEAD_NONCE);
        crypto_aead_xchacha20poly1305_ietf_keygen(key);
        rec_ad(ad, &adl, subj, sl, rec + 1);
        crypto_aead_xchacha20poly1305_ietf_encrypt(rec + 1 + KID_SIZE + AEAD_NONCE, NULL, key,
                                                   KEY_SIZE, ad, adl, NULL, rec + 1 + KID_SIZE,
                                                   master);
        rc = st->ops->kv_cas(st->be, k, kl, 0, rec, sizeof rec, &nv);
        sodium_memzero(key, KEY_SIZE);
        if (rc == ES_ECONFLICT)
            continue;
        if (rc < 0)
            goto done;
        /* read it back through unwrap, so both paths agree */
    }
done:
    if (b.data)
        sodium_memzero(b.data, b.cap);
    es_buf_free(&b);
    return rc;
}

int es_forget(es_store *st, const void *subject, size_t sl)
{
    uint8_t k[4 + ES_MAX_KEY];
    es_buf b = ES_BUF_INIT;
    uint64_t ver, nv;
    int rc;
    if (!st || !subject)
        return es__err(ES_EINVAL, "es_forget: NULL argument");
    if (sl == 0)
        return es__err(ES_EINVAL, "es_forget: the subject is empty");
    if (sl > ES_MAX_KEY)
        return es__err(ES_ETOOBIG, "es_forget: subject is %zu bytes; the limit is %d", sl,
                       ES_MAX_KEY);
    if (st->flags & ES_OPEN_READONLY)
        return es__err(ES_EINVAL, "es_forget: the store was opened read-only");
    if ((rc = need_kv(st, "es_forget")) < 0)
        return rc;
    size_t kl = rec_key(k, "shk/", subject, sl);
    do {
        if ((rc = st->ops->kv_get(st->be, k, kl, &b, &ver)) < 0)
            break;
        if (ver == 0) {
            rc = es__err(ES_ENOTFOUND,
                         "es_forget: subject '%.*s' has no key (never written, or "
                         "forgotten already)",
                         (int)(sl > 100 ? 100 : sl), (const char *)subject);
            break;
        }
        rc = st->ops->kv_cas(st->be, k, kl, ver, NULL, 0, &nv);
    } while (rc == ES_ECONFLICT);
    if (b.data)
        sodium_memzero(b.data, b.cap);
    es_buf_free(&b);
    return rc;
}

/* ---- sealing (append) ---- */

static size_t event_ad(uint8_t *ad, const uint8_t *stream, size_t stream_len, const uint8_t *id,
                       const char *type, size_t type_len, const uint8_t *hdr, size_t hdr_len)
{
    size_t n = 0;
    memcpy(ad, "es-env1", 7);
    n = 7;
    ad[n++] = (uint8_t)stream_len;
    memcpy(ad + n, stream, stream_len);
    n += stream_len;
    memcpy(ad + n, id, ES_ID_SIZE);
    n += ES_ID_SIZE;
    ad[n++] = (uint8_t)type_len;
    memcpy(ad + n, type, type_len);
    n += type_len;
    memcpy(ad + n, hdr, hdr_len);
    return n + hdr_len;
}

#define HDR_MAX (MAGIC_SIZE + 1 + KID_SIZE + 1 + ES_MAX_KEY)
#define AD_MAX (7 + 1 + ES_MAX_KEY + ES_ID_SIZE + 1 + ES_MAX_TYPE + HDR_MAX)

static int seal_one(es_event_new *out, const es_event_new *in, const uint8_t *stream,
                    size_t stream_len, const uint8_t *id, const uint8_t *subj, size_t sl,
                    const uint8_t *kid, const uint8_t *key, unsigned flags)
{
    uint8_t ad[AD_MAX];
    bool meta = (flags & ES_SHRED_META) != 0;
    size_t hl = MAGIC_SIZE + 1 + KID_SIZE + 1 + sl;
    size_t pl = meta ? 4 + in->data_len + in->meta_len : in->data_len;
    size_t total = hl + AEAD_NONCE + pl + AEAD_TAG;
    uint8_t *env, *plain = NULL;
    if (total > ES_MAX_DATA)
        return es__err(ES_ETOOBIG,
                       "an encrypted event's data would be %zu bytes; the limit is %u (the "
                       "envelope adds %zu bytes)",
                       total, ES_MAX_DATA, total - pl);
    if (!(env = es__malloc(total)))
        return es__err(ES_ENOMEM, "out of memory encrypting an event");
    memcpy(env, magic, MAGIC_SIZE);
    env[MAGIC_SIZE] = meta ? ENV_META : 0;
    memcpy(env + MAGIC_SIZE + 1, kid, KID_SIZE);
    env[MAGIC_SIZE + 1 + KID_SIZE] = (uint8_t)sl;
    memcpy(env + MAGIC_SIZE + 2 + KID_SIZE, subj, sl);
    uint8_t *nonce = env + hl;
    randombytes_buf(nonce, AEAD_NONCE);
    const uint8_t *p = in->data;
    if (meta) {
        if (!(plain = es__malloc(pl ? pl : 1))) {
            free(env);
            return es__err(ES_ENOMEM, "out of memory encrypting an event");
        }
        es__put_u32(plain, (uint32_t)in->data_len);
        if (in->data_len)
            memcpy(plain + 4, in->data, in->data_len);
        if (in->meta_len)
            memcpy(plain + 4 + in->data_len, in->meta, in->meta_len);
        p = plain;
    }
    size_t adl = event_ad(ad, stream, stream_len, id, in->type, strlen(in->type), env, hl);
    crypto_aead_xchacha20poly1305_ietf_encrypt(nonce + AEAD_NONCE, NULL, p ? p : env, pl, ad, adl,
                                               NULL, nonce, key);
    if (plain) {
        sodium_memzero(plain, pl);
        free(plain);
    }
    *out = *in;
    out->data = env;
    out->data_len = total;
    if (meta) {
        out->meta = NULL;
        out->meta_len = 0;
    }
    return 0;
}

void es__shred_free_ops(es_event_new **enc, const es_append_op *ops, size_t n_ops)
{
    if (!enc)
        return;
    for (size_t k = 0; k < n_ops; k++) {
        if (!enc[k])
            continue;
        for (size_t i = 0; i < ops[k].n; i++)
            free((void *)enc[k][i].data);
        free(enc[k]);
    }
    free(enc);
}

int es__shred_seal_ops(es_event_new ***enc_out, es_store *st, const es_append_op *ops, size_t n_ops,
                       const uint8_t (*ids)[ES_ID_SIZE])
{
    struct es__shred_state *s = st->shred;
    es_event_new **enc = NULL;
    uint8_t master[ES_MASTER_KEY_SIZE], key[KEY_SIZE], kid[KID_SIZE];
    bool have_master;
    int rc = 0;

    *enc_out = NULL;
    pthread_mutex_lock(&s->mu);
    bool loaded = s->rules_loaded;
    pthread_mutex_unlock(&s->mu);
    if (!loaded && (rc = load_rules(st)) < 0)
        return rc;
    pthread_mutex_lock(&s->mu);
    if (s->n_rules == 0) {
        pthread_mutex_unlock(&s->mu);
        return 0;
    }
    have_master = s->have_master;
    memcpy(master, s->master, sizeof master);
    /* the rules of each op, copied out so the lock is not held over I/O */
    rule *mine = es__calloc(n_ops, sizeof *mine);
    bool any = false;
    if (mine) {
        for (size_t k = 0; k < n_ops; k++) {
            const rule *r = rule_for(s, ops[k].stream, ops[k].stream_len);
            if (r) {
                mine[k] = *r;
                any = true;
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    if (!mine) {
        rc = es__err(ES_ENOMEM, "out of memory encrypting events");
        goto done;
    }
    if (!any)
        goto done;
    if (!(enc = es__calloc(n_ops, sizeof *enc))) {
        rc = es__err(ES_ENOMEM, "out of memory encrypting events");
        goto done;
    }
    size_t at = 0;
    for (size_t k = 0; k < n_ops; at += ops[k].n, k++) {
        const es_append_op *op = &ops[k];
        const rule *r = &mine[k];
        unsigned state;
        if (r->len == 0)
            continue;
        size_t sl = subject_len(r, op->stream, op->stream_len);
        if (!have_master) {
            rc = es__err(ES_EINVAL,
                         "stream '%.*s' is under a shredding rule and this handle has no master "
                         "key (es_store_set_master_key): nothing is written in plaintext there",
                         (int)(op->stream_len > 100 ? 100 : op->stream_len),
                         (const char *)op->stream);
            goto done;
        }
        if ((rc = subject_key(st, master, op->stream, sl, true, kid, key, &state)) < 0)
            goto done;
        if (state != ES_SHRED_OPEN) {
            rc = es__err(ES_EINVAL,
                         "the master key does not open the key of subject '%.*s' (a different "
                         "master key?)",
                         (int)(sl > 100 ? 100 : sl), (const char *)op->stream);
            goto done;
        }
        if (!(enc[k] = es__calloc(op->n, sizeof *enc[k]))) {
            rc = es__err(ES_ENOMEM, "out of memory encrypting events");
            goto done;
        }
        for (size_t i = 0; i < op->n; i++)
            if ((rc = seal_one(&enc[k][i], &op->events[i], op->stream, op->stream_len, ids[at + i],
                               op->stream, sl, kid, key, r->flags)) < 0)
                goto done;
    }
    *enc_out = enc;
    enc = NULL;
done:
    sodium_memzero(master, sizeof master);
    sodium_memzero(key, sizeof key);
    es__shred_free_ops(enc, ops, n_ops);
    free(mine);
    return rc;
}

/* ---- opening (read) ---- */

void es__shred_cur_free(es_cursor *c)
{
    if (!c->sc)
        return;
    if (c->sc->plain.data)
        sodium_memzero(c->sc->plain.data, c->sc->plain.cap);
    es_buf_free(&c->sc->plain);
    sodium_memzero(c->sc->cache, sizeof c->sc->cache);
    free(c->sc);
    c->sc = NULL;
}

static int key_for(slot **out, es_cursor *c, const uint8_t *subj, size_t sl, const uint8_t *kid)
{
    struct es__shred_cur *sc = c->sc;
    es_store *st = c->st;
    uint8_t master[ES_MASTER_KEY_SIZE];
    bool have_master;
    int rc;
    for (int i = 0; i < CACHE_SLOTS; i++) {
        slot *s = &sc->cache[i];
        if (s->used && s->sl == sl && memcmp(s->subject, subj, sl) == 0 &&
            memcmp(s->kid, kid, KID_SIZE) == 0) {
            *out = s;
            return 0;
        }
    }
    slot *s = &sc->cache[sc->next++ % CACHE_SLOTS];
    memset(s, 0, sizeof *s);
    pthread_mutex_lock(&st->shred->mu);
    have_master = st->shred->have_master;
    memcpy(master, st->shred->master, sizeof master);
    pthread_mutex_unlock(&st->shred->mu);
    uint8_t rkid[KID_SIZE];
    unsigned state;
    if (!st->ops->kv_get)
        state = ES_SHRED_FORGOTTEN;
    else if ((rc = subject_key(st, have_master ? master : NULL, subj, sl, false, rkid, s->key,
                               &state)) < 0) {
        sodium_memzero(master, sizeof master);
        return rc;
    }
    sodium_memzero(master, sizeof master);
    /* a record of another key id: the envelope's key was forgotten (and the
     * subject has a new key since) */
    if (state != ES_SHRED_FORGOTTEN && memcmp(rkid, kid, KID_SIZE) != 0)
        state = ES_SHRED_FORGOTTEN;
    if (state != ES_SHRED_OPEN)
        sodium_memzero(s->key, sizeof s->key);
    s->used = true;
    memcpy(s->subject, subj, sl);
    s->sl = sl;
    memcpy(s->kid, kid, KID_SIZE);
    s->state = state;
    *out = s;
    return 0;
}

/* The event with empty data (and metadata when it was inside) and a state. */
static void unreadable(es_event *e, unsigned state, bool meta_inside)
{
    e->data = (const uint8_t *)"";
    e->data_len = 0;
    if (meta_inside) {
        e->meta = (const uint8_t *)"";
        e->meta_len = 0;
    }
    e->shred = state;
}

int es__shred_open(const es_event **out, es_cursor *c, const es_event *ev)
{
    es_event *e = &c->out;
    uint8_t ad[AD_MAX];
    const uint8_t *d = ev->data;
    size_t n = ev->data_len;
    slot *s;
    int rc;

    *e = *ev;
    *out = e;
    if (c->raw) {
        e->shred = ES_SHRED_SEALED;
        return 0;
    }
    if (!c->sc && !(c->sc = es__calloc(1, sizeof *c->sc)))
        return es__err(ES_ENOMEM, "out of memory decrypting an event");
    /* parse; a malformed envelope is treated as a damaged one */
    if (n < MAGIC_SIZE + 2 + KID_SIZE) {
        unreadable(e, ES_SHRED_BROKEN, false);
        return 0;
    }
    unsigned flags = d[MAGIC_SIZE];
    bool meta = (flags & ENV_META) != 0;
    const uint8_t *kid = d + MAGIC_SIZE + 1;
    size_t sl = d[MAGIC_SIZE + 1 + KID_SIZE];
    size_t hl = MAGIC_SIZE + 2 + KID_SIZE + sl;
    if ((flags & ~ENV_META) || sl == 0 || n < hl + AEAD_NONCE + AEAD_TAG ||
        (meta && n < hl + AEAD_NONCE + AEAD_TAG + 4)) {
        unreadable(e, ES_SHRED_BROKEN, meta);
        return 0;
    }
    const uint8_t *subj = d + MAGIC_SIZE + 2 + KID_SIZE;
    if ((rc = key_for(&s, c, subj, sl, kid)) < 0)
        return rc;
    if (s->state != ES_SHRED_OPEN) {
        unreadable(e, s->state, meta);
        return 0;
    }
    const uint8_t *nonce = d + hl;
    size_t cl = n - hl - AEAD_NONCE;
    es_buf *pb = &c->sc->plain;
    es_buf_reset(pb);
    if (pb->cap < cl) {
        uint8_t *p = es__realloc(pb->data, cl);
        if (!p)
            return es__err(ES_ENOMEM, "out of memory decrypting an event");
        pb->data = p;
        pb->cap = cl;
    }
    unsigned long long pl;
    size_t adl = event_ad(ad, ev->stream, ev->stream_len, ev->id, ev->type, ev->type_len, d, hl);
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(pb->data, &pl, NULL, nonce + AEAD_NONCE, cl, ad,
                                                   adl, nonce, s->key) != 0) {
        unreadable(e, ES_SHRED_BROKEN, meta);
        return 0;
    }
    pb->len = (size_t)pl;
    e->shred = ES_SHRED_OPEN;
    if (!meta) {
        e->data = pb->len ? pb->data : (const uint8_t *)"";
        e->data_len = pb->len;
        return 0;
    }
    uint32_t dl = pb->len >= 4 ? es__get_u32(pb->data) : 0;
    if (pb->len < 4 || dl > pb->len - 4) {
        unreadable(e, ES_SHRED_BROKEN, true);
        return 0;
    }
    e->data = pb->data + 4;
    e->data_len = dl;
    e->meta = pb->data + 4 + dl;
    e->meta_len = pb->len - 4 - dl;
    return 0;
}

int es_cursor_set_raw(es_cursor *c, int raw)
{
    if (!c || (raw != 0 && raw != 1))
        return es__err(ES_EINVAL, "es_cursor_set_raw: NULL cursor or raw not 0/1");
    c->raw = raw;
    return 0;
}
