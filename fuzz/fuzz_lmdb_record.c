/*
 * fuzz_lmdb_record.c — libFuzzer target for the lmdb store's event-record
 * decoder (src/backend/lmdb_record.c), which reads bytes from a file that may
 * be damaged or crafted.  The decoder must answer 0 or ES_ECORRUPT and never
 * read outside the record; a record it accepts must encode back to the same
 * bytes (so the checks are neither too loose nor lose a field).
 *
 * Links against eventsrc_static (the internal es__rec_* functions are in it).
 */
#include "../src/backend/lmdb_record.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    es_event ev;
    /* a copy of exactly `size` bytes, so ASan sees any read past the record */
    uint8_t *r = malloc(size ? size : 1);
    if (!r)
        return 0;
    if (size)
        memcpy(r, data, size);
    int rc = es__rec_decode(&ev, r, size, 1);
    if (rc != 0 && rc != ES_ECORRUPT)
        abort();
    if (rc == 0) {
        if (ev.stream_len < 1 || ev.stream_len > ES_MAX_KEY || ev.type_len < 1 ||
            ev.type_len > ES_MAX_TYPE || strlen(ev.type) != ev.type_len || ev.seq == 0 ||
            es__rec_size(ev.stream_len, ev.type_len, ev.data_len, ev.meta_len) != size)
            abort();
        es_event_new in = {.type = ev.type,
                           .data = ev.data,
                           .data_len = ev.data_len,
                           .meta = ev.meta,
                           .meta_len = ev.meta_len};
        uint8_t *again = malloc(size);
        if (!again)
            abort();
        es__rec_encode(again, ev.stream, ev.stream_len, ev.seq, ev.time_us, ev.id, &in, ev.type_len,
                       NULL);
        /* everything but the hash (which depends on the previous event) */
        if (memcmp(again, r, ES__REC_AT_HASH) != 0 ||
            memcmp(again + ES__REC_HDR, r + ES__REC_HDR, size - ES__REC_HDR) != 0)
            abort();
        free(again);
    }
    free(r);
    return 0;
}
