/* http_load: the HTTP client of bench/http_bench.sh (W10, W11) — libcurl, a
 * thread and a kept-alive connection per client.  Not part of the build; the
 * script compiles it:  cc -O2 -o http_load bench/http_load.c -lcurl -lpthread
 *
 *   http_load append BASE CONNS SECONDS TAG
 *       CONNS clients, each POSTing one event per request (150-byte data, a
 *       unique event id) to its own stream TAG-i for SECONDS; prints
 *       "requests R errors E seconds S rps X p50_us P p99_us Q"
 *   http_load fill BASE KEY EVENTS BATCH
 *       appends EVENTS events to KEY, BATCH per request (to set up W11)
 *   http_load read BASE KEY LIMIT REPEATS
 *       reads KEY from the start, LIMIT events a page, following "next", REPEATS
 *       times; prints "events N pages P reads R median_s S events_per_s X"
 *       (X from the median read) and fails unless every read saw the same
 *       number of events with consecutive seqs
 */
#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define PAYLOAD 150

typedef struct buf {
    char *p;
    size_t len, cap;
} buf;

static size_t on_data(char *p, size_t sz, size_t n, void *u)
{
    buf *b = u;
    size_t k = sz * n;
    if (b->len + k + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + k + 1)
            cap *= 2;
        char *q = realloc(b->p, cap);
        if (!q)
            return 0;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, k);
    b->len += k;
    b->p[b->len] = 0;
    return k;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void payload(char *out, uint64_t n)
{
    for (int i = 0; i < PAYLOAD; i++)
        out[i] = (char)('a' + (n + (uint64_t)i) % 26);
    out[PAYLOAD] = 0;
}

/* ---- append ---- */

typedef struct client {
    const char *base, *tag;
    int id;
    double until;
    uint64_t run; /* random per run: ids are unique across runs on one store */
    double *lat;  /* seconds, one per successful request */
    size_t n, cap;
    uint64_t errors;
    char last_error[200];
} client;

static void *append_thread(void *arg)
{
    client *c = arg;
    CURL *h = curl_easy_init();
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    char url[512], body[512], data[PAYLOAD + 1];
    buf resp = {0};
    snprintf(url, sizeof url, "%s/streams/%s-%d", c->base, c->tag, c->id);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    for (uint64_t i = 0;; i++) {
        double t0 = now_s();
        if (t0 >= c->until)
            break;
        payload(data, i);
        int len = snprintf(body, sizeof body,
                           "{\"type\":\"W10\",\"data\":\"%s\",\"id\":\"%016" PRIx64
                           "%04x%012" PRIx64 "\"}",
                           data, c->run, (unsigned)c->id, i);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)len);
        resp.len = 0;
        CURLcode rc = curl_easy_perform(h);
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        double t1 = now_s();
        if (rc != CURLE_OK || status != 201) {
            c->errors++;
            snprintf(c->last_error, sizeof c->last_error, "%s status %ld %.100s",
                     curl_easy_strerror(rc), status, resp.p ? resp.p : "");
            continue;
        }
        if (c->n == c->cap) {
            c->cap = c->cap ? c->cap * 2 : 4096;
            double *q = realloc(c->lat, c->cap * sizeof *q);
            if (!q) {
                c->errors++;
                break;
            }
            c->lat = q;
        }
        c->lat[c->n++] = t1 - t0;
    }
    free(resp.p);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return NULL;
}

static int run_append(const char *base, int conns, double secs, const char *tag)
{
    client *cs = calloc((size_t)conns, sizeof *cs);
    pthread_t *th = calloc((size_t)conns, sizeof *th);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t run = ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)ts.tv_nsec;
    double t0 = now_s();
    for (int i = 0; i < conns; i++) {
        cs[i] = (client){.base = base, .tag = tag, .id = i, .until = t0 + secs, .run = run};
        pthread_create(&th[i], NULL, append_thread, &cs[i]);
    }
    size_t total = 0;
    uint64_t errors = 0;
    for (int i = 0; i < conns; i++) {
        pthread_join(th[i], NULL);
        total += cs[i].n;
        errors += cs[i].errors;
    }
    double el = now_s() - t0;
    double *all = malloc((total ? total : 1) * sizeof *all);
    size_t k = 0;
    for (int i = 0; i < conns; i++) {
        memcpy(all + k, cs[i].lat, cs[i].n * sizeof *all);
        k += cs[i].n;
        if (cs[i].errors)
            fprintf(stderr, "http_load: client %d: %" PRIu64 " errors, last: %s\n", i, cs[i].errors,
                    cs[i].last_error);
        free(cs[i].lat);
    }
    qsort(all, total, sizeof *all, cmp_double);
    double p50 = total ? all[total / 2] : 0, p99 = total ? all[(size_t)((double)total * 0.99)] : 0;
    printf("requests %zu errors %" PRIu64 " seconds %.2f rps %.0f p50_us %.1f p99_us %.1f\n", total,
           errors, el, (double)total / el, p50 * 1e6, p99 * 1e6);
    free(all);
    free(cs);
    free(th);
    return errors ? 1 : 0;
}

/* ---- fill ---- */

static int run_fill(const char *base, const char *key, long events, long batch)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdr = curl_slist_append(NULL, "Content-Type: application/json");
    char url[512], data[PAYLOAD + 1];
    buf body = {0}, resp = {0};
    int ret = 0;
    snprintf(url, sizeof url, "%s/streams/%s", base, key);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp);
    for (long done = 0; done < events;) {
        long n = events - done < batch ? events - done : batch;
        body.len = 0;
        on_data("{\"events\":[", 1, 11, &body);
        for (long i = 0; i < n; i++) {
            char ev[400];
            payload(data, (uint64_t)(done + i));
            int len =
                snprintf(ev, sizeof ev, "%s{\"type\":\"W11\",\"data\":\"%s\"}", i ? "," : "", data);
            on_data(ev, 1, (size_t)len, &body);
        }
        on_data("]}", 1, 2, &body);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body.p);
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)body.len);
        resp.len = 0;
        CURLcode rc = curl_easy_perform(h);
        long status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
        if (rc != CURLE_OK || status != 201) {
            fprintf(stderr, "http_load: fill: %s status %ld %.200s\n", curl_easy_strerror(rc),
                    status, resp.p ? resp.p : "");
            ret = 1;
            break;
        }
        done += n;
    }
    free(body.p);
    free(resp.p);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return ret;
}

/* ---- read ---- */

/* The events of a page and its next link, found by scanning the body (the
 * client's own JSON parsing is not what W11 measures): every event has a
 * "seq", and "next" is a string or null. */
static int scan_page(const char *body, uint64_t *seq, long *events, char *next, size_t cap)
{
    const char *p = body;
    while ((p = strstr(p, "\"seq\":"))) {
        p += 6;
        uint64_t s = strtoull(p, NULL, 10);
        if (s != *seq + 1) {
            fprintf(stderr, "http_load: read: seq %" PRIu64 " after %" PRIu64 "\n", s, *seq);
            return -1;
        }
        *seq = s;
        (*events)++;
    }
    next[0] = 0;
    const char *q = strstr(body, "\"next\":\"");
    if (q) {
        q += 8;
        const char *e = strchr(q, '"');
        if (!e || (size_t)(e - q) >= cap)
            return -1;
        memcpy(next, q, (size_t)(e - q));
        next[e - q] = 0;
    }
    return 0;
}

static int run_read(const char *base, const char *key, long limit, int repeats)
{
    CURL *h = curl_easy_init();
    buf resp = {0};
    char url[1024], next[512];
    double *times = calloc((size_t)repeats, sizeof *times);
    long want = -1, pages = 0;
    int ret = 0;
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &resp);
    curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
    for (int r = 0; r < repeats && !ret; r++) {
        uint64_t seq = 0;
        long events = 0;
        pages = 0;
        double t0 = now_s();
        snprintf(url, sizeof url, "%s/streams/%s?limit=%ld", base, key, limit);
        for (;;) {
            curl_easy_setopt(h, CURLOPT_URL, url);
            resp.len = 0;
            CURLcode rc = curl_easy_perform(h);
            long status = 0;
            curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
            if (rc != CURLE_OK || status != 200 || !resp.p) {
                fprintf(stderr, "http_load: read: %s status %ld\n", curl_easy_strerror(rc), status);
                ret = 1;
                break;
            }
            pages++;
            if (scan_page(resp.p, &seq, &events, next, sizeof next)) {
                ret = 1;
                break;
            }
            if (!next[0])
                break;
            snprintf(url, sizeof url, "%s%s", base, next);
        }
        times[r] = now_s() - t0;
        if (want >= 0 && events != want) {
            fprintf(stderr, "http_load: read: %ld events, then %ld\n", want, events);
            ret = 1;
        }
        want = events;
    }
    if (!ret) {
        qsort(times, (size_t)repeats, sizeof *times, cmp_double);
        double med = times[repeats / 2];
        printf("events %ld pages %ld reads %d median_s %.4f events_per_s %.0f\n", want, pages,
               repeats, med, (double)want / med);
    }
    free(times);
    free(resp.p);
    curl_easy_cleanup(h);
    return ret;
}

int main(int argc, char **argv)
{
    int ret = 2;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    if (argc == 6 && strcmp(argv[1], "append") == 0)
        ret = run_append(argv[2], atoi(argv[3]), atof(argv[4]), argv[5]);
    else if (argc == 6 && strcmp(argv[1], "fill") == 0)
        ret = run_fill(argv[2], argv[3], atol(argv[4]), atol(argv[5]));
    else if (argc == 6 && strcmp(argv[1], "read") == 0)
        ret = run_read(argv[2], argv[3], atol(argv[4]), atoi(argv[5]));
    else
        fprintf(stderr, "usage: http_load append BASE CONNS SECONDS TAG\n"
                        "       http_load fill BASE KEY EVENTS BATCH\n"
                        "       http_load read BASE KEY LIMIT REPEATS\n");
    curl_global_cleanup();
    return ret;
}
