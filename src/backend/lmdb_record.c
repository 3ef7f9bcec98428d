/*
 * lmdb_record.c — encode and decode the lmdb store's event records (the
 * layout is in lmdb_record.h).  The decoder trusts nothing it reads: a
 * record comes from a file that a disk fault or an attacker may have
 * changed, so every length is checked before it is used.
 */
#include "lmdb_record.h"

#include <string.h>

size_t es__rec_size(size_t stream_len, size_t type_len, size_t data_len, size_t meta_len)
{
    return ES__REC_HDR + stream_len + type_len + 1 + data_len + meta_len;
}

void es__rec_encode(uint8_t *r, const uint8_t *stream, size_t stream_len, uint64_t seq,
                    int64_t time_us, const uint8_t id[ES_ID_SIZE], const es_event_new *in,
                    size_t type_len, const uint8_t *prev)
{
    r[ES__REC_AT_VERSION] = ES__REC_VERSION;
    r[ES__REC_AT_STREAM_LEN] = (uint8_t)stream_len;
    r[ES__REC_AT_TYPE_LEN] = (uint8_t)type_len;
    r[ES__REC_AT_RESERVED] = 0;
    es__put_u32(r + ES__REC_AT_DATA_LEN, (uint32_t)in->data_len);
    es__put_u32(r + ES__REC_AT_META_LEN, (uint32_t)in->meta_len);
    es__put_u64(r + ES__REC_AT_SEQ, seq);
    es__put_u64(r + ES__REC_AT_TIME, (uint64_t)time_us);
    memcpy(r + ES__REC_AT_ID, id, ES_ID_SIZE);
    uint8_t *p = r + ES__REC_HDR;
    memcpy(p, stream, stream_len);
    p += stream_len;
    memcpy(p, in->type, type_len);
    p[type_len] = 0;
    p += type_len + 1;
    if (in->data_len)
        memcpy(p, in->data, in->data_len);
    p += in->data_len;
    if (in->meta_len)
        memcpy(p, in->meta, in->meta_len);
    es__chain_hash(r + ES__REC_AT_HASH, prev, stream, stream_len, seq, time_us, id, in->type,
                   type_len, in->data, in->data_len, in->meta, in->meta_len);
}

int es__rec_decode(es_event *ev, const uint8_t *r, size_t n, uint64_t position)
{
    if (n < ES__REC_HDR || r[ES__REC_AT_VERSION] != ES__REC_VERSION || r[ES__REC_AT_RESERVED] != 0)
        return es__err(ES_ECORRUPT, "event record at position %llu is malformed",
                       (unsigned long long)position);
    size_t sl = r[ES__REC_AT_STREAM_LEN], tl = r[ES__REC_AT_TYPE_LEN];
    size_t dl = es__get_u32(r + ES__REC_AT_DATA_LEN), ml = es__get_u32(r + ES__REC_AT_META_LEN);
    /* dl and ml are bounded first, so the size below cannot wrap */
    if (sl == 0 || tl == 0 || dl > ES_MAX_DATA || ml > ES_MAX_META ||
        es__rec_size(sl, tl, dl, ml) != n)
        return es__err(ES_ECORRUPT, "event record at position %llu has bad lengths",
                       (unsigned long long)position);
    const uint8_t *type = r + ES__REC_HDR + sl;
    if (type[tl] != 0 || memchr(type, 0, tl) != NULL)
        return es__err(ES_ECORRUPT, "event record at position %llu has a malformed type",
                       (unsigned long long)position);
    uint64_t seq = es__get_u64(r + ES__REC_AT_SEQ);
    if (seq == 0)
        return es__err(ES_ECORRUPT, "event record at position %llu has seq 0",
                       (unsigned long long)position);
    ev->stream = r + ES__REC_HDR;
    ev->stream_len = sl;
    ev->type = (const char *)type;
    ev->type_len = tl;
    ev->data = type + tl + 1;
    ev->data_len = dl;
    ev->meta = ev->data + dl;
    ev->meta_len = ml;
    ev->seq = seq;
    ev->time_us = (int64_t)es__get_u64(r + ES__REC_AT_TIME);
    memcpy(ev->id, r + ES__REC_AT_ID, ES_ID_SIZE);
    memcpy(ev->hash, r + ES__REC_AT_HASH, ES_HASH_SIZE);
    ev->position = position;
    return 0;
}

int es__rec_time(int64_t *out, const uint8_t *r, size_t n, uint64_t position)
{
    if (n < ES__REC_HDR)
        return es__err(ES_ECORRUPT, "event record at position %llu is malformed",
                       (unsigned long long)position);
    *out = (int64_t)es__get_u64(r + ES__REC_AT_TIME);
    return 0;
}
