/*
 * http.c — the remote store: `http://HOST:PORT[?token=T]` and https://, a
 * client of `esrc serve` (routes in doc/server.md) through libcurl.
 *
 * Every operation of the vtable is one or more requests:
 *   append          POST /append (every append, one stream or many: one commit)
 *   head            GET /streams/{key}/head
 *   stream cursor   GET /streams/{key}?from=&to=&limit=&direction=, page by page
 *   log cursor      GET /log?from=&prefix=&type=&limit=, page by page
 *   streams         GET /streams?prefix=&after=&limit=, page by page
 *   last position,
 *   stats           GET /stats
 *   wait            GET /log/feed?from=AFTER+1 (Server-Sent Events): the first
 *                   event's `id:` line ends the wait; the request's time
 *                   limit is the wait's timeout.  No polling.
 *
 * The server has no routes for snapshots or the key-value table: they are
 * the library's own records, and `esrc serve` is a client of the public API.
 * Snapshots are a cache, so a remote store keeps them in the handle's memory
 * (an embedded mem store): views fold from the server's events and skip
 * ahead within one handle, and stats count them; they are lost at close and
 * not shared between clients.  The key-value table (subscriptions,
 * replicas' bookkeeping) needs compare-and-set shared by every client, so
 * those calls answer ES_ENOTSUP.
 *
 * Commit times are the server's store's: a clock given in the open options
 * is not used (a kept time, ES_APPEND_KEEP_TIME, is sent and kept).
 *
 * A transport failure during an append (the connection lost, no answer in
 * time) leaves its outcome unknown: ES_EUNAVAILABLE (ES_ETIMEDOUT when the
 * time limit ran out), "the append may have landed; retry with the same
 * event ids" — the library always sends ids, so the retry is answered from
 * the original if it landed, as with the postgres store.
 *
 * Threads: a handle keeps a few libcurl easy handles (each with its
 * keep-alive connection) in a free list under a mutex; a call takes one,
 * so calls on many threads run at once.
 */
#include "http_json.h"

#include "../internal.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>

#define HTTP_POOL_MAX 16
#define HTTP_PAGE_MAX 1000             /* the server's page limit */
#define HTTP_DEFAULT_TIMEOUT_MS 120000 /* a 64 MiB append over a slow link */

typedef struct http_store {
    char *base; /* "http://host:port", no trailing slash */
    char *auth; /* "Authorization: Bearer …", or NULL */
    char *cacert;
    long timeout_ms, connect_ms;
    pthread_mutex_t lock;
    CURL *pool[HTTP_POOL_MAX];
    size_t n_pool;
    void *snaps; /* a mem store: the snapshot cache */
    es_store *st;
} http_store;

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc;

static void curl_init(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* ---- requests ---- */

typedef struct http_resp {
    long status;
    es_buf body;
} http_resp;

static size_t on_body(char *p, size_t size, size_t n, void *payload)
{
    es_buf *b = payload;
    return es_buf_put(b, p, size * n) ? 0 : size * n;
}

static CURL *take(http_store *h)
{
    CURL *c = NULL;
    pthread_mutex_lock(&h->lock);
    if (h->n_pool)
        c = h->pool[--h->n_pool];
    pthread_mutex_unlock(&h->lock);
    if (!c)
        c = curl_easy_init();
    return c;
}

static void give_back(http_store *h, CURL *c)
{
    if (!c)
        return;
    pthread_mutex_lock(&h->lock);
    if (h->n_pool < HTTP_POOL_MAX) {
        h->pool[h->n_pool++] = c;
        c = NULL;
    }
    pthread_mutex_unlock(&h->lock);
    if (c)
        curl_easy_cleanup(c);
}

typedef enum { HTTP_READ, HTTP_APPEND } http_kind;

/* Map a transport failure to a code and message. */
static int transport_err(http_store *h, CURLcode cc, const char *errbuf, http_kind kind)
{
    const char *why = errbuf[0] ? errbuf : curl_easy_strerror(cc);
    bool never_sent = cc == CURLE_COULDNT_CONNECT || cc == CURLE_COULDNT_RESOLVE_HOST ||
                      cc == CURLE_COULDNT_RESOLVE_PROXY;
    int code = cc == CURLE_OPERATION_TIMEDOUT ? ES_ETIMEDOUT : ES_EUNAVAILABLE;
    if (cc == CURLE_OUT_OF_MEMORY)
        return es__err(ES_ENOMEM, "http: out of memory in libcurl");
    if (kind == HTTP_APPEND && !never_sent)
        return es__err(code,
                       "http: the connection to %s failed during an append (%s): the append "
                       "may have landed; retry with the same event ids",
                       h->base, why);
    return es__err(code, "http: cannot reach %s: %s", h->base, why);
}

/* One request.  path is appended to the base; body NULL for GET.  On 0,
 * resp holds the status and body (any status). */
static int request(http_store *h, const char *path, const es_buf *body, http_kind kind,
                   http_resp *resp)
{
    char errbuf[CURL_ERROR_SIZE];
    struct curl_slist *hdrs = NULL, *t;
    es_buf url = ES_BUF_INIT;
    CURL *c;
    int rc = 0;

    resp->status = 0;
    es_buf_reset(&resp->body);
    if (es_buf_put(&url, h->base, strlen(h->base)) || es_buf_put(&url, path, strlen(path) + 1)) {
        es_buf_free(&url);
        return es__err(ES_ENOMEM, "out of memory for a request");
    }
    if (!(c = take(h))) {
        es_buf_free(&url);
        return es__err(ES_ENOMEM, "http: cannot make a libcurl handle");
    }
    curl_easy_reset(c);
    errbuf[0] = 0;
    if (h->auth && (t = curl_slist_append(hdrs, h->auth)))
        hdrs = t;
    if (body) {
        if ((t = curl_slist_append(hdrs, "Content-Type: application/json")))
            hdrs = t;
        if ((t = curl_slist_append(hdrs, "Expect:"))) /* no 100-continue round trip */
            hdrs = t;
        curl_easy_setopt(c, CURLOPT_POST, 1L);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body->len ? (const char *)body->data : "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body->len);
    }
    curl_easy_setopt(c, CURLOPT_URL, (const char *)url.data);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &resp->body);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, h->timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, h->connect_ms);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (h->cacert)
        curl_easy_setopt(c, CURLOPT_CAINFO, h->cacert);
    CURLcode cc = curl_easy_perform(c);
    if (cc == CURLE_OK) {
        curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &resp->status);
    } else {
        rc = transport_err(h, cc, errbuf, kind);
        /* a handle whose connection broke starts afresh */
        curl_easy_cleanup(c);
        c = NULL;
    }
    give_back(h, c);
    curl_slist_free_all(hdrs);
    es_buf_free(&url);
    return rc;
}

/* Parse the answer's JSON (in place, NUL-terminated). */
static int parse(hj_doc *doc, http_resp *resp)
{
    if (es_buf_put(&resp->body, "", 1))
        return es__err(ES_ENOMEM, "out of memory reading an answer");
    resp->body.len--;
    return es__hj_parse(doc, (char *)resp->body.data, resp->body.len);
}

static const struct {
    const char *name;
    int code;
} err_names[] = {
    {"invalid", ES_EINVAL},
    {"bad_request", ES_EINVAL},
    {"conflict", ES_ECONFLICT},
    {"not_found", ES_ENOTFOUND},
    {"too_big", ES_ETOOBIG},
    {"uri_too_long", ES_ETOOBIG},
    {"out_of_memory", ES_ENOMEM},
    {"io", ES_EIO},
    {"unavailable", ES_EUNAVAILABLE},
    {"shutting_down", ES_EUNAVAILABLE},
    {"too_many_connections", ES_EUNAVAILABLE},
    {"corrupt", ES_ECORRUPT},
    {"duplicate", ES_EDUPLICATE},
    {"not_supported", ES_ENOTSUP},
    {"full", ES_EFULL},
    {"timed_out", ES_ETIMEDOUT},
    {"timeout", ES_ETIMEDOUT},
};

/* An answer other than 2xx as a code and message.  doc may be parsed. */
static int answer_err(http_store *h, http_resp *resp, hj_doc *doc)
{
    size_t e = HJ_NONE, m = HJ_NONE;
    if (parse(doc, resp) == 0) {
        e = es__hj_get(doc, 0, "error");
        m = es__hj_get(doc, 0, "message");
    }
    es_error_clear();
    const char *name = e != HJ_NONE && doc->v[e].type == HJ_STR ? doc->v[e].s : "";
    const char *msg = m != HJ_NONE && doc->v[m].type == HJ_STR ? doc->v[m].s : "";
    int code = ES_ERROR;
    for (size_t i = 0; i < sizeof err_names / sizeof *err_names; i++)
        if (strcmp(name, err_names[i].name) == 0)
            code = err_names[i].code;
    if (resp->status == 401 || resp->status == 403)
        code = ES_EINVAL;
    else if (resp->status == 404 && code == ES_ENOTFOUND && !strstr(msg, "subscription"))
        code = ES_ENOTSUP; /* no such route: a server older than this client */
    if (code == ES_ERROR && resp->status == 503)
        code = ES_EUNAVAILABLE;
    return es__err(code, "%s (%s answered %ld%s%s)", msg[0] ? msg : "the server refused", h->base,
                   resp->status, name[0] ? " " : "", name);
}

/* ---- encoding ---- */

static int put_str(es_buf *b, const char *s)
{
    return es_buf_put(b, s, strlen(s));
}

/* Percent-escape bytes for a path segment or query value. */
static int put_escaped(es_buf *b, const void *p, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    const uint8_t *s = p;
    for (size_t i = 0; i < n; i++) {
        uint8_t c = s[i];
        bool plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '.' || c == '_' || c == '~';
        char e[3] = {'%', hex[c >> 4], hex[c & 15]};
        if (plain ? es_buf_put(b, &c, 1) : es_buf_put(b, e, 3))
            return ES_ENOMEM;
    }
    return 0;
}

static int put_u64(es_buf *b, const char *prefix, uint64_t v)
{
    char s[48];
    snprintf(s, sizeof s, "%s%" PRIu64, prefix, v);
    return put_str(b, s);
}

/* ,"name_b64":"…" (nothing when n is 0 and skip_empty) */
static int put_b64(es_buf *b, const char *name, const void *p, size_t n, bool skip_empty)
{
    if (!n && skip_empty)
        return 0;
    size_t cap = sodium_base64_encoded_len(n, sodium_base64_VARIANT_ORIGINAL);
    char *t = es__malloc(cap);
    if (!t)
        return ES_ENOMEM;
    sodium_bin2base64(t, cap, n ? p : (const void *)"", n, sodium_base64_VARIANT_ORIGINAL);
    int rc = put_str(b, ",\"") || put_str(b, name) || put_str(b, "_b64\":\"") || put_str(b, t) ||
             put_str(b, "\"");
    free(t);
    return rc ? ES_ENOMEM : 0;
}

static int put_expected(es_buf *b, uint64_t e)
{
    if (e == ES_EXPECT_ANY)
        return put_str(b, "\"any\"");
    if (e == ES_EXPECT_EXISTS)
        return put_str(b, "\"exists\"");
    return put_u64(b, "", e); /* no-stream is seq 0 */
}

static int encode_append(es_buf *b, const es__append_req *reqs, size_t n)
{
    char idh[ES_ID_SIZE * 2 + 1];
    if (put_str(b, "{\"ops\":["))
        return ES_ENOMEM;
    for (size_t k = 0; k < n; k++) {
        const es__append_req *r = &reqs[k];
        if (put_str(b, k ? ",{\"expected\":" : "{\"expected\":") || put_expected(b, r->expected) ||
            put_b64(b, "stream", r->stream, r->stream_len, false) || put_str(b, ",\"events\":["))
            return ES_ENOMEM;
        for (size_t i = 0; i < r->n; i++) {
            const es_event_new *e = &r->events[i];
            sodium_bin2hex(idh, sizeof idh, r->ids[i], ES_ID_SIZE);
            if (put_str(b, i ? ",{\"id\":\"" : "{\"id\":\"") || put_str(b, idh) ||
                put_str(b, "\"") || put_b64(b, "type", e->type, strlen(e->type), false) ||
                put_b64(b, "data", e->data, e->data_len, true) ||
                put_b64(b, "meta", e->meta, e->meta_len, true) ||
                (k == 0 && i == 0 && r->keep_time &&
                 put_u64(b, ",\"time_us\":", (uint64_t)e->time_us)) ||
                put_str(b, "}"))
                return ES_ENOMEM;
        }
        if (put_str(b, "]}"))
            return ES_ENOMEM;
    }
    return put_str(b, "]}") ? ES_ENOMEM : 0;
}

/* ---- open / close ---- */

static int hexdigit(char c)
{
    return c >= '0' && c <= '9'   ? c - '0'
           : c >= 'a' && c <= 'f' ? c - 'a' + 10
           : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                  : -1;
}

static int pct_decode(char *s)
{
    char *d = s;
    for (; *s; s++) {
        if (*s != '%') {
            *d++ = *s;
            continue;
        }
        int a = hexdigit(s[1]), b = a >= 0 ? hexdigit(s[2]) : -1;
        if (a < 0 || b < 0)
            return -1;
        *d++ = (char)(a << 4 | b);
        s += 2;
    }
    *d = 0;
    return 0;
}

static void http_close(void *be)
{
    http_store *h = be;
    if (!h)
        return;
    for (size_t i = 0; i < h->n_pool; i++)
        curl_easy_cleanup(h->pool[i]);
    if (h->snaps)
        es__backend_mem.close(h->snaps);
    pthread_mutex_destroy(&h->lock);
    free(h->base);
    if (h->auth)
        sodium_memzero(h->auth, strlen(h->auth));
    free(h->auth);
    free(h->cacert);
    free(h);
}

/* The URI's options: token=, cacert= (a CA file for https). */
static int parse_options(http_store *h, char *q)
{
    for (char *save = NULL, *kv = strtok_r(q, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq)
            return es__err(ES_EINVAL, "http store URI: option '%.40s' has no value", kv);
        *eq = 0;
        char *v = eq + 1;
        if (pct_decode(v) != 0)
            return es__err(ES_EINVAL, "http store URI: a bad %%-escape in option %.40s", kv);
        if (strcmp(kv, "token") == 0) {
            size_t n = strlen("Authorization: Bearer ") + strlen(v) + 1;
            free(h->auth);
            if (!(h->auth = es__malloc(n)))
                return es__err(ES_ENOMEM, "out of memory opening a store");
            snprintf(h->auth, n, "Authorization: Bearer %s", v);
            sodium_memzero(v, strlen(v));
        } else if (strcmp(kv, "cacert") == 0) {
            free(h->cacert);
            if (!(h->cacert = es__strdup(v)))
                return es__err(ES_ENOMEM, "out of memory opening a store");
        } else {
            return es__err(ES_EINVAL,
                           "http store URI: unknown option '%.40s' (token=, cacert= are known)",
                           kv);
        }
    }
    return 0;
}

static int http_open(void **out, const char *uri, const es_open_options *opts, es_store *st)
{
    es_open_options mem_opts = ES_OPEN_OPTIONS_INIT;
    http_resp resp = {0, ES_BUF_INIT};
    hj_doc doc = {0};
    char *q = NULL;
    http_store *h;
    int rc;

    pthread_once(&curl_once, curl_init);
    if (curl_init_rc != CURLE_OK)
        return es__err(ES_ERROR, "http: libcurl failed to initialise");
    if (!(h = es__calloc(1, sizeof *h)))
        return es__err(ES_ENOMEM, "out of memory opening a store");
    pthread_mutex_init(&h->lock, NULL);
    h->st = st;
    h->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms + 2000 : HTTP_DEFAULT_TIMEOUT_MS;
    h->connect_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 10000;
    if (!(h->base = es__strdup(uri))) {
        rc = es__err(ES_ENOMEM, "out of memory opening a store");
        goto fail;
    }
    if ((q = strchr(h->base, '?'))) {
        *q++ = 0;
        if ((rc = parse_options(h, q)) < 0)
            goto fail;
    }
    size_t bl = strlen(h->base);
    while (bl && h->base[bl - 1] == '/')
        h->base[--bl] = 0;
    const char *host = strstr(h->base, "://") + 3;
    if (!*host || strchr(host, '/') || strchr(host, '#')) {
        rc = es__err(ES_EINVAL,
                     "http store URI: expected http[s]://HOST[:PORT][?token=…], not a path "
                     "or an empty host");
        goto fail;
    }
    if ((rc = es__backend_mem.open(&h->snaps, "", &mem_opts, st)) < 0)
        goto fail;
    /* the server answers and its store is reachable */
    if ((rc = request(h, "/ready", NULL, HTTP_READ, &resp)) < 0)
        goto fail;
    if (resp.status != 200) {
        rc = answer_err(h, &resp, &doc);
        if (rc != ES_EUNAVAILABLE)
            rc = es__err(ES_EUNAVAILABLE, "http: %s is not an esrc server that is ready: %s",
                         h->base, es_error_last());
        goto fail;
    }
    es__hj_free(&doc);
    es_buf_free(&resp.body);
    *out = h;
    return 0;
fail:
    es__hj_free(&doc);
    es_buf_free(&resp.body);
    http_close(h);
    return rc;
}

/* ---- a GET with a JSON object answer ---- */

static int get_json(http_store *h, const char *path, http_resp *resp, hj_doc *doc)
{
    int rc;
    if ((rc = request(h, path, NULL, HTTP_READ, resp)) < 0)
        return rc;
    if (resp->status != 200)
        return answer_err(h, resp, doc);
    if ((rc = parse(doc, resp)) < 0)
        return rc;
    if (doc->v[0].type != HJ_OBJ)
        return es__err(ES_ECORRUPT, "http: %s answered %s with something not an object", h->base,
                       path);
    return 0;
}

static int need_u64(http_store *h, const hj_doc *doc, size_t i, const char *name, uint64_t *out)
{
    int64_t v;
    if (!es__hj_int(doc, i, name, &v) || v < 0)
        return es__err(ES_ECORRUPT, "http: the answer of %s has no '%s'", h->base, name);
    *out = (uint64_t)v;
    return 0;
}

/* ---- append ---- */

static int http_append(void *be, const es__append_req *reqs, size_t n, es_append_result *outs)
{
    http_store *h = be;
    es_buf body = ES_BUF_INIT;
    http_resp resp = {0, ES_BUF_INIT};
    hj_doc doc = {0};
    int rc;

    if ((rc = encode_append(&body, reqs, n)) < 0) {
        rc = es__err(ES_ENOMEM, "out of memory encoding an append");
        goto done;
    }
    if ((rc = request(h, "/append", &body, HTTP_APPEND, &resp)) < 0)
        goto done;
    if (resp.status == 409) {
        rc = answer_err(h, &resp, &doc);
        size_t heads = es__hj_get(&doc, 0, "heads");
        size_t k = 0;
        for (size_t c = heads != HJ_NONE ? doc.v[heads].first : HJ_NONE; c != HJ_NONE && k < n;
             c = doc.v[c].next, k++)
            if (doc.v[c].type == HJ_NUM && doc.v[c].num_ok && doc.v[c].num >= 0)
                outs[k].head = (uint64_t)doc.v[c].num;
        goto done;
    }
    if (resp.status != 200 && resp.status != 201) {
        rc = answer_err(h, &resp, &doc);
        goto done;
    }
    if ((rc = parse(&doc, &resp)) < 0)
        goto done;
    size_t list = es__hj_get(&doc, 0, "results");
    size_t k = 0, c = list != HJ_NONE && doc.v[list].type == HJ_ARR ? doc.v[list].first : HJ_NONE;
    for (; c != HJ_NONE && k < n; c = doc.v[c].next, k++) {
        es_append_result *o = &outs[k];
        int64_t t;
        size_t rp = es__hj_get(&doc, c, "replayed");
        if ((rc = need_u64(h, &doc, c, "first_seq", &o->first_seq)) < 0 ||
            (rc = need_u64(h, &doc, c, "last_seq", &o->last_seq)) < 0 ||
            (rc = need_u64(h, &doc, c, "first_position", &o->first_position)) < 0 ||
            (rc = need_u64(h, &doc, c, "last_position", &o->last_position)) < 0 ||
            (rc = need_u64(h, &doc, c, "head", &o->head)) < 0)
            goto done;
        if (!es__hj_int(&doc, c, "time_us", &t) || rp == HJ_NONE || doc.v[rp].type != HJ_BOOL) {
            rc = es__err(ES_ECORRUPT, "http: an append answer of %s lacks time_us or replayed",
                         h->base);
            goto done;
        }
        o->time_us = t;
        o->replayed = (int)doc.v[rp].num;
    }
    if (k != n)
        rc = es__err(ES_ECORRUPT, "http: %s answered %zu results for %zu ops", h->base, k, n);
done:
    es__hj_free(&doc);
    es_buf_free(&resp.body);
    es_buf_free(&body);
    return rc;
}

/* ---- small reads ---- */

static int http_head(void *be, const uint8_t *stream, size_t len, uint64_t *out)
{
    http_store *h = be;
    es_buf path = ES_BUF_INIT;
    http_resp resp = {0, ES_BUF_INIT};
    hj_doc doc = {0};
    int rc;
    if (put_str(&path, "/streams/") || put_escaped(&path, stream, len) ||
        es_buf_put(&path, "/head", 6)) {
        rc = es__err(ES_ENOMEM, "out of memory for a request");
        goto done;
    }
    if ((rc = get_json(h, (const char *)path.data, &resp, &doc)) == 0)
        rc = need_u64(h, &doc, 0, "head", out);
done:
    es__hj_free(&doc);
    es_buf_free(&resp.body);
    es_buf_free(&path);
    return rc;
}

static int http_stats(void *be, es_store_stats *out)
{
    http_store *h = be;
    http_resp resp = {0, ES_BUF_INIT};
    hj_doc doc = {0};
    es_store_stats local;
    int rc;
    if ((rc = get_json(h, "/stats", &resp, &doc)) == 0 &&
        (rc = need_u64(h, &doc, 0, "events", &out->events)) == 0 &&
        (rc = need_u64(h, &doc, 0, "streams", &out->streams)) == 0 &&
        (rc = need_u64(h, &doc, 0, "last_position", &out->last_position)) == 0 &&
        (rc = need_u64(h, &doc, 0, "bytes", &out->bytes)) == 0) {
        /* snapshots: the server's store's (none through the API) and this
         * handle's cache */
        memset(&local, 0, sizeof local);
        es__backend_mem.stats(h->snaps, &local);
        out->snapshots = local.snapshots;
    }
    es__hj_free(&doc);
    es_buf_free(&resp.body);
    return rc;
}

static int http_last_position(void *be, uint64_t *out)
{
    es_store_stats s;
    int rc = http_stats(be, &s);
    if (rc == 0)
        *out = s.last_position;
    return rc;
}

/* ---- cursors ---- */

typedef struct http_cursor {
    es_cursor base;
    http_store *h;
    bool log, backward, end;
    /* stream: the escaped key; log: prefix and type as query text */
    es_buf key, filter;
    uint64_t from, to; /* the next page's from (seq or position); stream: to */
    uint64_t page;     /* events per page */
    http_resp resp;
    hj_doc doc;
    size_t at; /* the next event node, or HJ_NONE */
    es_event ev;
    es_buf bufs[4]; /* stream, type, data, meta when sent as base64 */
} http_cursor;

static void cursor_free(es_cursor *cur)
{
    http_cursor *c = (http_cursor *)cur;
    es_buf_free(&c->key);
    es_buf_free(&c->filter);
    es_buf_free(&c->resp.body);
    es__hj_free(&c->doc);
    for (int i = 0; i < 4; i++)
        es_buf_free(&c->bufs[i]);
    free(c);
}

/* The bytes of field `name` (text) or `name_b64`. */
static int field_bytes(http_cursor *c, size_t ev, const char *name, es_buf *buf, bool nul,
                       const uint8_t **p, size_t *n)
{
    char key[16];
    size_t i = es__hj_get(&c->doc, ev, name);
    if (i != HJ_NONE && c->doc.v[i].type == HJ_STR) {
        *p = (const uint8_t *)c->doc.v[i].s; /* NUL-terminated by the reader */
        *n = c->doc.v[i].len;
        return 0;
    }
    snprintf(key, sizeof key, "%s_b64", name);
    i = es__hj_get(&c->doc, ev, key);
    if (i == HJ_NONE || c->doc.v[i].type != HJ_STR) {
        if (i == HJ_NONE && (strcmp(name, "data") == 0 || strcmp(name, "meta") == 0)) {
            *p = (const uint8_t *)"";
            *n = 0;
            return 0;
        }
        return es__err(ES_ECORRUPT, "http: an event from %s has no %s", c->h->base, name);
    }
    size_t len = c->doc.v[i].len, got = 0;
    es_buf_reset(buf);
    /* decode into a buffer big enough for the bytes and a NUL */
    uint8_t *out = es__malloc(len + 1);
    if (!out)
        return es__err(ES_ENOMEM, "out of memory reading an event");
    if (sodium_base642bin(out, len + 1, c->doc.v[i].s, len, NULL, &got, NULL,
                          sodium_base64_VARIANT_ORIGINAL) != 0) {
        free(out);
        return es__err(ES_ECORRUPT, "http: an event's %s from %s is not base64", key, c->h->base);
    }
    int rc = es_buf_put(buf, out, got) || (nul && es_buf_put(buf, "", 1));
    free(out);
    if (rc)
        return es__err(ES_ENOMEM, "out of memory reading an event");
    *p = buf->data ? buf->data : (const uint8_t *)"";
    *n = got;
    return 0;
}

static int hex_field(http_cursor *c, size_t ev, const char *name, uint8_t *out, size_t n)
{
    size_t i = es__hj_get(&c->doc, ev, name), got = 0;
    if (i == HJ_NONE || c->doc.v[i].type != HJ_STR || c->doc.v[i].len != 2 * n ||
        sodium_hex2bin(out, n, c->doc.v[i].s, 2 * n, NULL, &got, NULL) != 0 || got != n)
        return es__err(ES_ECORRUPT, "http: an event from %s has a bad %s", c->h->base, name);
    return 0;
}

static int decode_event(http_cursor *c, size_t i)
{
    es_event *e = &c->ev;
    const uint8_t *tp;
    int64_t t;
    int rc;
    memset(e, 0, sizeof *e);
    if ((rc = field_bytes(c, i, "stream", &c->bufs[0], false, &e->stream, &e->stream_len)) < 0 ||
        (rc = field_bytes(c, i, "type", &c->bufs[1], true, &tp, &e->type_len)) < 0 ||
        (rc = field_bytes(c, i, "data", &c->bufs[2], false, &e->data, &e->data_len)) < 0 ||
        (rc = field_bytes(c, i, "meta", &c->bufs[3], false, &e->meta, &e->meta_len)) < 0 ||
        (rc = need_u64(c->h, &c->doc, i, "seq", &e->seq)) < 0 ||
        (rc = need_u64(c->h, &c->doc, i, "position", &e->position)) < 0 ||
        (rc = hex_field(c, i, "id", e->id, ES_ID_SIZE)) < 0 ||
        (rc = hex_field(c, i, "hash", e->hash, ES_HASH_SIZE)) < 0)
        return rc;
    if (!es__hj_int(&c->doc, i, "time_us", &t))
        return es__err(ES_ECORRUPT, "http: an event from %s has no time_us", c->h->base);
    e->time_us = t;
    e->type = (const char *)tp;
    return 0;
}

/* Fetch the next page into c->doc; c->at is its first event or HJ_NONE. */
static int fetch_page(http_cursor *c)
{
    es_buf path = ES_BUF_INIT;
    int rc;
    size_t list, next;
    int64_t resume;

    c->at = HJ_NONE;
    es__hj_free(&c->doc);
    if (c->log) {
        if (put_str(&path, "/log?from=") || put_u64(&path, "", c->from) ||
            put_u64(&path, "&limit=", c->page) || es_buf_put(&path, c->filter.data, c->filter.len))
            goto nomem;
    } else {
        if (put_str(&path, "/streams/") || es_buf_put(&path, c->key.data, c->key.len) ||
            put_u64(&path, "?limit=", c->page) ||
            (c->from < ES_SEQ_MAX && put_u64(&path, "&from=", c->from)) ||
            (c->to < ES_SEQ_MAX && put_u64(&path, "&to=", c->to)) ||
            (c->backward && put_str(&path, "&direction=backward")))
            goto nomem;
    }
    if (es_buf_put(&path, "", 1))
        goto nomem;
    rc = get_json(c->h, (const char *)path.data, &c->resp, &c->doc);
    es_buf_free(&path);
    if (rc < 0)
        return rc;
    list = es__hj_get(&c->doc, 0, "events");
    next = es__hj_get(&c->doc, 0, "next");
    if (list == HJ_NONE || c->doc.v[list].type != HJ_ARR || next == HJ_NONE)
        return es__err(ES_ECORRUPT, "http: a page from %s has no events or next", c->h->base);
    c->at = c->doc.v[list].first;
    if (c->doc.v[next].type == HJ_NULL) {
        c->end = true;
    } else if (c->log) {
        if (!es__hj_int(&c->doc, 0, "resume_from", &resume) || resume < 1)
            return es__err(ES_ECORRUPT, "http: a log page from %s has no resume_from", c->h->base);
        c->from = (uint64_t)resume;
    } else {
        /* the page is full: go on after its last event */
        size_t last = HJ_NONE;
        int64_t seq;
        for (size_t k = c->at; k != HJ_NONE; k = c->doc.v[k].next)
            last = k;
        if (last == HJ_NONE || !es__hj_int(&c->doc, last, "seq", &seq) || seq < 1)
            return es__err(ES_ECORRUPT, "http: a stream page from %s is full but empty",
                           c->h->base);
        if (c->backward && seq == 1)
            c->end = true;
        c->from = c->backward ? (uint64_t)seq - 1 : (uint64_t)seq + 1;
    }
    return 0;
nomem:
    es_buf_free(&path);
    return es__err(ES_ENOMEM, "out of memory for a request");
}

static int cursor_next(const es_event **out, es_cursor *cur)
{
    http_cursor *c = (http_cursor *)cur;
    int rc;
    while (c->at == HJ_NONE) {
        if (c->end)
            return ES_ITEROVER;
        if ((rc = fetch_page(c)) < 0)
            return rc;
    }
    size_t i = c->at;
    c->at = c->doc.v[i].next;
    if ((rc = decode_event(c, i)) < 0)
        return rc;
    *out = &c->ev;
    return 0;
}

static const es__cursor_ops http_cursor_ops = {cursor_next, cursor_free};

static http_cursor *cursor_new(http_store *h, uint64_t limit)
{
    http_cursor *c = es__calloc(1, sizeof *c);
    if (!c)
        return NULL;
    c->base.ops = &http_cursor_ops;
    c->h = h;
    c->at = HJ_NONE;
    c->page = limit && limit < HTTP_PAGE_MAX ? limit : HTTP_PAGE_MAX;
    return c;
}

static int http_stream_cursor(es_cursor **out, void *be, const uint8_t *stream, size_t len,
                              const es_read_options *opts)
{
    http_cursor *c = cursor_new(be, opts->limit);
    if (!c || put_escaped(&c->key, stream, len)) {
        if (c)
            cursor_free(&c->base);
        return es__err(ES_ENOMEM, "out of memory opening a cursor");
    }
    c->backward = opts->backward;
    c->from = opts->from_seq;
    c->to = opts->to_seq;
    if (c->backward ? c->from < c->to : c->from > c->to)
        c->end = true;
    *out = &c->base;
    return 0;
}

static int http_log_cursor(es_cursor **out, void *be, const es_log_options *opts)
{
    http_cursor *c = cursor_new(be, opts->limit);
    if (!c)
        return es__err(ES_ENOMEM, "out of memory opening a cursor");
    c->log = true;
    c->from = opts->from_position;
    if ((opts->prefix_len && (put_str(&c->filter, "&prefix=") ||
                              put_escaped(&c->filter, opts->prefix, opts->prefix_len))) ||
        (opts->type && (put_str(&c->filter, "&type=") ||
                        put_escaped(&c->filter, opts->type, strlen(opts->type))))) {
        cursor_free(&c->base);
        return es__err(ES_ENOMEM, "out of memory opening a cursor");
    }
    if (c->from >= ES_SEQ_MAX)
        c->end = true;
    *out = &c->base;
    return 0;
}

/* ---- streams ---- */

static int http_streams(void *be, const void *prefix, size_t prefix_len, es_stream_fn fn,
                        void *payload)
{
    http_store *h = be;
    es_buf after = ES_BUF_INIT, path = ES_BUF_INIT;
    http_resp resp = {0, ES_BUF_INIT};
    hj_doc doc = {0};
    bool more = true;
    int rc = 0;

    while (more && rc == 0) {
        es_buf_reset(&path);
        if (put_str(&path, "/streams?limit=1000") ||
            (prefix_len &&
             (put_str(&path, "&prefix=") || put_escaped(&path, prefix, prefix_len))) ||
            (after.len &&
             (put_str(&path, "&after=") || put_escaped(&path, after.data, after.len))) ||
            es_buf_put(&path, "", 1)) {
            rc = es__err(ES_ENOMEM, "out of memory for a request");
            break;
        }
        es__hj_free(&doc);
        if ((rc = get_json(h, (const char *)path.data, &resp, &doc)) < 0)
            break;
        size_t list = es__hj_get(&doc, 0, "streams"), next = es__hj_get(&doc, 0, "next");
        if (list == HJ_NONE || doc.v[list].type != HJ_ARR || next == HJ_NONE) {
            rc =
                es__err(ES_ECORRUPT, "http: a stream list from %s has no streams or next", h->base);
            break;
        }
        more = doc.v[next].type != HJ_NULL;
        for (size_t i = doc.v[list].first; i != HJ_NONE && rc == 0; i = doc.v[i].next) {
            http_cursor tmp = {.h = h, .doc = doc};
            const uint8_t *k;
            size_t kl;
            uint64_t head = 0;
            es_buf kb = ES_BUF_INIT;
            if ((rc = field_bytes(&tmp, i, "stream", &kb, false, &k, &kl)) == 0 &&
                (rc = need_u64(h, &doc, i, "head", &head)) == 0) {
                es_buf_reset(&after);
                if (es_buf_put(&after, k, kl))
                    rc = es__err(ES_ENOMEM, "out of memory listing streams");
                else if ((rc = fn(k, kl, head, payload)) != 0)
                    rc = es__cb_rc(rc);
            }
            es_buf_free(&kb);
        }
        if (more && after.len == 0 && rc == 0)
            rc = es__err(ES_ECORRUPT, "http: a stream list page from %s is empty", h->base);
    }
    es__hj_free(&doc);
    es_buf_free(&resp.body);
    es_buf_free(&path);
    es_buf_free(&after);
    return rc;
}

/* ---- wait: the live feed ---- */

/* Scans the feed for an "id:" at the start of a line (an event), across
 * chunk boundaries: state 0 at a line start, 1 and 2 after "i" and "id",
 * -1 inside another line. */
typedef struct feed_state {
    int state;
    bool got;
} feed_state;

static size_t on_feed(char *p, size_t size, size_t n, void *payload)
{
    feed_state *f = payload;
    size_t len = size * n;
    for (size_t i = 0; i < len; i++) {
        char ch = p[i];
        if (ch == '\n')
            f->state = 0;
        else if (f->state == 0 && ch == 'i')
            f->state = 1;
        else if (f->state == 1 && ch == 'd')
            f->state = 2;
        else if (f->state == 2 && ch == ':')
            f->got = true;
        else
            f->state = -1;
        if (f->got)
            return 0; /* stop the transfer: the wait is over */
    }
    return len;
}

static int http_wait(void *be, uint64_t after, int timeout_ms)
{
    http_store *h = be;
    char path[80], errbuf[CURL_ERROR_SIZE];
    struct curl_slist *hdrs = NULL, *t;
    feed_state f = {0, false};
    es_buf url = ES_BUF_INIT;
    uint64_t last = 0;
    int rc;

    if ((rc = http_last_position(h, &last)) < 0)
        return rc;
    if (last > after)
        return 0;
    if (timeout_ms == 0)
        return es__err(ES_ETIMEDOUT, "es_log_wait: nothing past position %" PRIu64, after);
    snprintf(path, sizeof path, "/log/feed?from=%" PRIu64, after + 1);
    if (es_buf_put(&url, h->base, strlen(h->base)) || es_buf_put(&url, path, strlen(path) + 1))
        return es__err(ES_ENOMEM, "out of memory for a request");
    CURL *c = curl_easy_init();
    if (!c) {
        es_buf_free(&url);
        return es__err(ES_ENOMEM, "http: cannot make a libcurl handle");
    }
    errbuf[0] = 0;
    if (h->auth && (t = curl_slist_append(hdrs, h->auth)))
        hdrs = t;
    curl_easy_setopt(c, CURLOPT_URL, (const char *)url.data);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_feed);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &f);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)timeout_ms);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, h->connect_ms);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
    if (h->cacert)
        curl_easy_setopt(c, CURLOPT_CAINFO, h->cacert);
    CURLcode cc = curl_easy_perform(c);
    long status = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
    if (f.got)
        rc = 0;
    else if (cc == CURLE_OPERATION_TIMEDOUT)
        rc = es__err(ES_ETIMEDOUT, "es_log_wait: nothing past position %" PRIu64 " within %d ms",
                     after, timeout_ms);
    else if (cc != CURLE_OK)
        rc = transport_err(h, cc, errbuf, HTTP_READ);
    else if (status != 200)
        rc = es__err(status == 503 ? ES_EUNAVAILABLE : ES_ERROR,
                     "http: the log feed of %s answered %ld", h->base, status);
    else
        rc = es__err(ES_EUNAVAILABLE, "http: the log feed of %s ended (the server is stopping)",
                     h->base);
    curl_easy_cleanup(c);
    curl_slist_free_all(hdrs);
    es_buf_free(&url);
    return rc;
}

/* ---- snapshots: the handle's cache ---- */

static int http_snap_put(void *be, const uint8_t *skey, size_t sklen, const es__snap *snap)
{
    http_store *h = be;
    return es__backend_mem.snap_put(h->snaps, skey, sklen, snap);
}

static int http_snap_get(void *be, const uint8_t *skey, size_t sklen, uint64_t max_seq,
                         int64_t max_time, es__snap *out, es_buf *buf)
{
    http_store *h = be;
    return es__backend_mem.snap_get(h->snaps, skey, sklen, max_seq, max_time, out, buf);
}

static int http_snap_list(void *be, const uint8_t *skey, size_t sklen, uint64_t *seqs, size_t cap,
                          size_t *n)
{
    http_store *h = be;
    return es__backend_mem.snap_list(h->snaps, skey, sklen, seqs, cap, n);
}

static int http_snap_del(void *be, const uint8_t *skey, size_t sklen, uint64_t seq)
{
    http_store *h = be;
    return es__backend_mem.snap_del(h->snaps, skey, sklen, seq);
}

const es__backend es__backend_http = {
    .name = "http",
    .open = http_open,
    .close = http_close,
    .append = http_append,
    .head = http_head,
    .last_position = http_last_position,
    .stream_cursor = http_stream_cursor,
    .log_cursor = http_log_cursor,
    .streams = http_streams,
    .stats = http_stats,
    .snap_put = http_snap_put,
    .snap_get = http_snap_get,
    .snap_list = http_snap_list,
    .snap_del = http_snap_del,
    .wait = http_wait,
    /* the server's store decides; time-range reads scan (no seek) */
    .log_time_ordered = false,
};
