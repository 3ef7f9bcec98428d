/*
 * fuzz_store_uri.c — es_store_open on arbitrary store URIs, then one append
 * and one read on whatever opened.  The first byte picks the open flags and
 * how the rest is used, so that the fuzzer neither connects anywhere nor
 * writes outside a temp dir of its own:
 *   mode 0: "mem:" + rest
 *   mode 1: "lmdb:" + <temp dir>/d + rest, with '/' in the path part turned
 *           to '_' (the query part after '?' is kept as is)
 *   mode 2: rest as the whole URI, unless it could reach a file or a server
 *           (an "lmdb:" prefix or a "://") — unknown schemes, empty and
 *           scheme-less URIs.
 * The PostgreSQL URI parser has its own target (fuzz_pg_uri.c).
 */
#define _GNU_SOURCE
#include <eventsrc.h>

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char tmpdir[256];

static int rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
    (void)sb;
    (void)type;
    (void)ftw;
    remove(path);
    return 0;
}

static void rm_tree(const char *path)
{
    nftw(path, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void remove_tmpdir(void)
{
    if (tmpdir[0])
        rm_tree(tmpdir);
}

static int ensure_tmpdir(void)
{
    if (tmpdir[0])
        return 0;
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/es-fuzz-uri-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmpdir)) {
        tmpdir[0] = 0;
        return -1;
    }
    atexit(remove_tmpdir);
    return 0;
}

/* One append and a read back must work on any store that opened. */
static void exercise(es_store *st, unsigned flags)
{
    es_event_new ev = {.type = "fuzzed", .data = "x", .data_len = 1};
    es_append_result res;
    int rc = es_append(&res, st, "s", 1, ES_EXPECT_ANY, &ev, 1);
    if (flags & ES_OPEN_READONLY) {
        if (rc == 0)
            abort(); /* a read-only handle wrote */
        return;
    }
    if (rc != 0)
        return; /* e.g. a tiny map_size: an error, not a crash, is all we ask */
    uint64_t head = 0;
    if (es_stream_head(&head, st, "s", 1) != 0 || head != res.first_seq)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 8192)
        return 0;
    unsigned mode = data[0] % 3;
    unsigned flags = (data[0] >> 2) & (ES_OPEN_NOSYNC | ES_OPEN_READONLY | ES_OPEN_NOCREATE);
    const char *rest = (const char *)data + 1;
    size_t rest_len = strnlen(rest, size - 1); /* a C string ends at the first NUL */
    size_t cap = rest_len + sizeof tmpdir + 16;
    char *uri = malloc(cap);
    char store_dir[sizeof tmpdir + 8] = "";
    if (!uri)
        return 0;

    if (mode == 0) {
        snprintf(uri, cap, "mem:%.*s", (int)rest_len, rest);
    } else if (mode == 1) {
        if (ensure_tmpdir() != 0) {
            free(uri);
            return 0;
        }
        snprintf(store_dir, sizeof store_dir, "%s/d", tmpdir);
        int n = snprintf(uri, cap, "lmdb:%s", store_dir);
        size_t i = 0;
        for (; i < rest_len && rest[i] != '?'; i++)
            uri[n++] = rest[i] == '/' ? '_' : rest[i];
        memcpy(uri + n, rest + i, rest_len - i);
        uri[n + (rest_len - i)] = '\0';
    } else {
        memcpy(uri, rest, rest_len);
        uri[rest_len] = '\0';
        if (strncmp(uri, "lmdb:", 5) == 0 || strstr(uri, "://")) {
            free(uri);
            return 0;
        }
    }

    es_open_options o = ES_OPEN_OPTIONS_INIT;
    o.flags = flags;
    es_store *st = NULL;
    int rc = es_store_open(&st, uri, &o);
    if (rc == 0) {
        if (!st)
            abort();
        exercise(st, flags);
        es_store_close(st);
    } else if (st != NULL || !ES_IS_ERRNO(rc) || !*es_error_last()) {
        abort(); /* a failure sets *out to NULL and says why with an ES_E* code */
    }
    if (store_dir[0]) {
        /* the next input starts from an empty temp dir */
        rm_tree(tmpdir);
        if (mkdir(tmpdir, 0700) != 0)
            abort();
    }
    free(uri);
    return 0;
}
