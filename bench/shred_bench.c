/*
 * shred_bench.c — W3 with crypto-shredding on and off (issue 12; rows in
 * BENCHMARKS.md, "Crypto-shredding"), driven by bench/shred_bench.sh.  Not
 * installed.
 *
 *   es_shred_bench STORE N plain|shred
 *
 * Appends W3's log as `esrc bench` W3 writes it: N events in 1000-event
 * commits (es_append_multi), one event for each of 1000 streams
 * "stream-%09u", type "Bench", 150 bytes of letters as data.  With `shred`,
 * the rule "stream-" is added first (es_shred_rule_add) and the handle has a
 * master key, so every event is encrypted under its stream's own subject key
 * (1000 subjects).  Prints one line:
 *   "MODE: N events in T s: R events/s, p50 A us, p99 B us per commit"
 */
#define _POSIX_C_SOURCE 200809L
#include <eventsrc.h>

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { BATCH = 1000, STREAMS = 1000, PAYLOAD = 150 };

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
    static es_append_op ops[BATCH];
    static es_event_new evs[BATCH];
    static es_append_result outs[BATCH];
    static uint8_t keys[BATCH][16], data[BATCH][PAYLOAD];
    uint8_t master[ES_MASTER_KEY_SIZE];
    es_store *st = NULL;
    double *lat = NULL;
    int rc = 1;

    if (argc != 4 || (strcmp(argv[3], "plain") && strcmp(argv[3], "shred"))) {
        fprintf(stderr, "usage: es_shred_bench STORE N plain|shred\n");
        return 2;
    }
    uint64_t n = strtoull(argv[2], NULL, 10);
    n -= n % BATCH;
    int shred = strcmp(argv[3], "shred") == 0;
    size_t nb = (size_t)(n / BATCH);
    if (n == 0 || !(lat = calloc(nb, sizeof *lat))) {
        fprintf(stderr, "es_shred_bench: N must be at least %d\n", BATCH);
        return 2;
    }
    if (es_store_open(&st, argv[1], NULL) < 0)
        goto fail;
    if (shred) {
        for (size_t i = 0; i < sizeof master; i++) /* a fixed key: this is a benchmark */
            master[i] = (uint8_t)(i * 7 + 1);
        if (es_store_set_master_key(st, master) < 0 || es_shred_rule_add(st, "stream-", 7, 0) < 0)
            goto fail;
    }
    for (unsigned i = 0; i < BATCH; i++) {
        char buf[17];
        snprintf(buf, sizeof buf, "stream-%09u", i % STREAMS);
        memcpy(keys[i], buf, 16);
    }
    double t0 = now_s();
    uint64_t seq = 0;
    for (uint64_t done = 0; done < n; done += BATCH, seq++) {
        for (unsigned i = 0; i < BATCH; i++) {
            for (int k = 0; k < PAYLOAD; k++)
                data[i][k] = (uint8_t)('a' + (done + i + (uint64_t)k) % 26);
            evs[i] = (es_event_new){.type = "Bench", .data = data[i], .data_len = PAYLOAD};
            ops[i] = (es_append_op){keys[i], 16, seq, &evs[i], 1};
        }
        double s0 = now_s();
        if (es_append_multi(outs, st, ops, BATCH, 0) < 0)
            goto fail;
        lat[seq] = now_s() - s0;
    }
    double el = now_s() - t0;
    qsort(lat, nb, sizeof *lat, cmp_d);
    printf("%s: %" PRIu64 " events in %.2f s: %.0f events/s, p50 %.0f us, p99 %.0f us per commit\n",
           argv[3], n, el, (double)n / el, lat[nb / 2] * 1e6, lat[(nb * 99) / 100] * 1e6);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "es_shred_bench: %s\n", es_error_last());
done:
    es_store_close(st);
    free(lat);
    return rc;
}
