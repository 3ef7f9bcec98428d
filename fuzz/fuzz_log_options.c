/*
 * fuzz_log_options.c — the read paths' filters against a model.  The input
 * builds a small mem: store (up to 32 events over a few stream keys and
 * types, one append each) and then picks es_log_options (from_position,
 * limit, prefix, type) and es_read_options (direction, from/to seq, limit).
 * Every cursor must return exactly what the model's plain filtering says,
 * or refuse the options with ES_EINVAL — never crash or disagree.
 *
 * Layout: n, then n pairs (stream index, type index), then from_position,
 * limit, prefix length, prefix bytes, a type selector, read flags, from_seq,
 * to_seq, read limit; missing bytes read as 0.
 */
#include <eventsrc.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const keys[] = {"a", "ab", "b", "a\xff", "abc"};
static const char *const types[] = {"t1", "t2", "t\xc3\xa9", "t"};
#define N_KEYS (sizeof keys / sizeof keys[0])
#define N_TYPES (sizeof types / sizeof types[0])

typedef struct model_ev {
    unsigned key, type;
    uint64_t seq, position;
} model_ev;

typedef struct input {
    const uint8_t *p;
    size_t left;
} input;

static uint8_t take(input *in)
{
    if (!in->left)
        return 0;
    in->left--;
    return *in->p++;
}

static int log_matches(const model_ev *m, const es_log_options *o)
{
    const char *k = keys[m->key];
    if (m->position < o->from_position)
        return 0;
    if (o->prefix_len && (strlen(k) < o->prefix_len || memcmp(k, o->prefix, o->prefix_len)))
        return 0;
    return !o->type || strcmp(types[m->type], o->type) == 0;
}

static void check_log(es_store *st, const model_ev *ev, size_t n, const es_log_options *o)
{
    es_cursor *c = NULL;
    const es_event *e;
    size_t i = 0;
    uint64_t got = 0;
    int rc = es_log_cursor(&c, st, o);
    if (rc == ES_EINVAL)
        return;
    if (rc != 0)
        abort();
    while ((rc = es_cursor_next(&e, c)) == 0) {
        while (i < n && !log_matches(&ev[i], o))
            i++;
        if (i == n || (o->limit && got == o->limit))
            abort(); /* an event the model does not have */
        const char *k = keys[ev[i].key];
        if (e->position != ev[i].position || e->seq != ev[i].seq || e->stream_len != strlen(k) ||
            memcmp(e->stream, k, e->stream_len) || strcmp(e->type, types[ev[i].type]))
            abort();
        i++;
        got++;
    }
    if (rc != ES_ITEROVER)
        abort();
    /* nothing the model has was left out */
    while (i < n && !(o->limit && got == o->limit)) {
        if (log_matches(&ev[i], o))
            abort();
        i++;
    }
    es_cursor_free(c);
}

static void check_stream(es_store *st, const model_ev *ev, size_t n, unsigned key,
                         const es_read_options *o)
{
    uint64_t head = 0, got = 0;
    es_cursor *c = NULL;
    const es_event *e;
    for (size_t i = 0; i < n; i++)
        if (ev[i].key == key)
            head++;
    int rc = es_stream_cursor(&c, st, keys[key], strlen(keys[key]), o);
    if (rc == ES_EINVAL)
        return;
    if (rc != 0)
        abort();
    /* the model: seqs in [lo, hi] in the asked direction, at most limit */
    uint64_t lo, hi;
    if (!o->backward) {
        lo = o->from_seq ? o->from_seq : 1;
        hi = o->to_seq ? o->to_seq : UINT64_MAX;
    } else {
        hi = o->from_seq ? o->from_seq : UINT64_MAX;
        lo = o->to_seq ? o->to_seq : 1;
    }
    uint64_t want = 0;
    for (uint64_t s = 1; s <= head; s++)
        if (s >= lo && s <= hi)
            want++;
    if (o->limit && want > o->limit)
        want = o->limit;
    uint64_t next = o->backward ? (hi < head ? hi : head) : lo;
    while ((rc = es_cursor_next(&e, c)) == 0) {
        if (got == want || e->seq != next)
            abort();
        next = o->backward ? next - 1 : next + 1;
        got++;
    }
    if (rc != ES_ITEROVER || got != want)
        abort();
    es_cursor_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    input in = {data, size};
    model_ev ev[32];
    uint64_t heads[N_KEYS] = {0};
    es_store *st = NULL;
    size_t n = take(&in) % 33;

    if (es_store_open(&st, "mem:", NULL) != 0)
        abort();
    for (size_t i = 0; i < n; i++) {
        unsigned k = take(&in) % N_KEYS, t = take(&in) % N_TYPES;
        es_event_new e = {.type = types[t]};
        es_append_result r;
        if (es_append(&r, st, keys[k], strlen(keys[k]), ES_EXPECT_ANY, &e, 1) != 0)
            abort();
        ev[i] = (model_ev){k, t, ++heads[k], r.first_position};
        if (r.first_seq != ev[i].seq || r.first_position != i + 1)
            abort();
    }

    es_log_options lo = ES_LOG_OPTIONS_INIT;
    uint8_t prefix[8];
    char type[8];
    lo.from_position = take(&in) % 40;
    lo.limit = take(&in) % 40;
    lo.prefix_len = take(&in) % (sizeof prefix + 1);
    for (size_t i = 0; i < lo.prefix_len; i++)
        prefix[i] = take(&in);
    lo.prefix = lo.prefix_len ? prefix : NULL;
    uint8_t tsel = take(&in);
    if (tsel % 3 == 1) {
        lo.type = types[(tsel / 3) % N_TYPES];
    } else if (tsel % 3 == 2) {
        size_t tl = (tsel / 3) % sizeof type;
        for (size_t i = 0; i < tl; i++)
            type[i] = (char)take(&in);
        type[tl] = '\0';
        lo.type = type; /* possibly empty or invalid: ES_EINVAL is an answer */
    }
    check_log(st, ev, n, &lo);

    es_read_options ro = ES_READ_OPTIONS_INIT;
    uint8_t rf = take(&in);
    ro.backward = rf & 1;
    ro.from_seq = take(&in) % 40;
    ro.to_seq = take(&in) % 40;
    ro.limit = take(&in) % 40;
    check_stream(st, ev, n, (rf >> 1) % N_KEYS, &ro);

    es_store_close(st);
    return 0;
}
