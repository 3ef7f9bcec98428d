/*
 * fuzz_import_line.c — the decoder of one `esrc import` line (src/cli/import.c).
 *
 * Any bytes must decode or be refused with a message, never crash or leak;
 * a line that decodes must encode back (the export's encoder) and decode
 * again to the same event: every field round-trips, text or base64.
 */
#include "import.h"

#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool same_event(const esrc_line_event *a, const esrc_line_event *b)
{
    return a->stream_len == b->stream_len && memcmp(a->stream, b->stream, a->stream_len) == 0 &&
           a->seq == b->seq && a->time_us == b->time_us && memcmp(a->id, b->id, ES_ID_SIZE) == 0 &&
           a->type_len == b->type_len && memcmp(a->type, b->type, a->type_len) == 0 &&
           a->data.len == b->data.len &&
           (a->data.len == 0 || memcmp(a->data.data, b->data.data, a->data.len) == 0) &&
           a->meta.len == b->meta.len &&
           (a->meta.len == 0 || memcmp(a->meta.data, b->meta.data, a->meta.len) == 0) &&
           (!a->has_hash || memcmp(a->hash, b->hash, ES_HASH_SIZE) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    esrc_line_event e = {0}, again = {0};
    es_event view;
    char err[300] = "";

    if (esrc_line_decode(&e, (const char *)data, size, err, sizeof err) != 0) {
        if (!err[0]) /* a refusal always says why */
            abort();
        goto done;
    }
    esrc_line_event_view(&view, &e);
    if (e.has_hash)
        memcpy(view.hash, e.hash, ES_HASH_SIZE);
    json_t *j = esrc_event_json(&view);
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s)
        abort();
    if (esrc_line_decode(&again, s, strlen(s), err, sizeof err) != 0 || !same_event(&e, &again))
        abort();
    free(s);
done:
    esrc_line_event_free(&e);
    esrc_line_event_free(&again);
    return 0;
}
