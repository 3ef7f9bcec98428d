/*
 * lmdb_record.h — the lmdb store's event record: the value of the `log`
 * table, one per event, keyed by its u64be position.  Kept apart from
 * lmdb.c so that the decoder, which reads bytes from disk that may be
 * damaged or crafted, can be fuzzed on its own (fuzz/fuzz_lmdb_record.c).
 *
 * Layout (integers big-endian):
 *
 *   offset  size  field
 *        0     1  version, ES__REC_VERSION (1)
 *        1     1  stream key length sl, 1..255
 *        2     1  type length tl, 1..255
 *        3     1  reserved, 0
 *        4     4  data length dl
 *        8     4  metadata length ml
 *       12     8  seq (>= 1)
 *       20     8  commit time, µs since the epoch (signed)
 *       28    16  event id
 *       44    32  chain hash
 *       76    sl  stream key
 *             tl  type, then one NUL byte
 *             dl  data
 *             ml  metadata
 *
 * A record is exactly ES__REC_HDR + sl + tl + 1 + dl + ml bytes.
 */
#ifndef ES_LMDB_RECORD_H
#define ES_LMDB_RECORD_H

#include "../internal.h"

#include <stddef.h>
#include <stdint.h>

enum {
    ES__REC_VERSION = 1,
    ES__REC_AT_VERSION = 0,
    ES__REC_AT_STREAM_LEN = 1,
    ES__REC_AT_TYPE_LEN = 2,
    ES__REC_AT_RESERVED = 3,
    ES__REC_AT_DATA_LEN = 4,
    ES__REC_AT_META_LEN = 8,
    ES__REC_AT_SEQ = 12,
    ES__REC_AT_TIME = 20,
    ES__REC_AT_ID = 28,
    ES__REC_AT_HASH = ES__REC_AT_ID + ES_ID_SIZE, /* 44 */
    ES__REC_HDR = ES__REC_AT_HASH + ES_HASH_SIZE, /* 76: the body starts here */
};

/* Size of a record with these lengths. */
size_t es__rec_size(size_t stream_len, size_t type_len, size_t data_len, size_t meta_len);

/* Write the record of event `in` into r (es__rec_size bytes), its chain hash
 * computed from `prev` (NULL: the first event of the stream).  The caller has
 * checked every length against the limits of eventsrc.h. */
void es__rec_encode(uint8_t *r, const uint8_t *stream, size_t stream_len, uint64_t seq,
                    int64_t time_us, const uint8_t id[ES_ID_SIZE], const es_event_new *in,
                    size_t type_len, const uint8_t *prev);

/* Point ev's fields into the n bytes at r (borrowed: valid as long as r).
 * Every length is checked against n and the limits before anything is read
 * through it.  Returns 0 or ES_ECORRUPT (with a message naming `position`). */
int es__rec_decode(es_event *ev, const uint8_t *r, size_t n, uint64_t position);

/* The commit time of a record, or ES_ECORRUPT when it is too short to hold one. */
int es__rec_time(int64_t *out, const uint8_t *r, size_t n, uint64_t position);

#endif
