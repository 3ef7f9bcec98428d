/*
 * replicate.c — es_replicate between two stores (argv[1] is "SRC-DST",
 * e.g. "mem-lmdb", "lmdb-pg"): the replica holds the source's events with
 * their seqs, ids, times and chain hashes; a re-run, a re-sent batch and a
 * resumed follow copy nothing twice and skip nothing; a tampered or
 * rewritten source is reported and not copied.  And es_store_backup.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "internal.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char src_be[8], dst_be[8];

typedef struct pair {
    tu_store s, d;
} pair;

static void open_pair(pair *p)
{
    const char *keep = tu_backend;
    tu_backend = src_be;
    tu_open(&p->s);
    tu_backend = dst_be;
    tu_open(&p->d);
    tu_backend = keep;
}

static void close_pair(pair *p)
{
    tu_close(&p->s);
    tu_close(&p->d);
}

/* Random appends: single events, batches, and multi-stream commits, with
 * metadata on some; nstreams streams "a/N" and "b/N". */
static void fill(es_store *st, uint64_t *rng, int rounds)
{
    char data[64], meta[32], key[2][16];
    for (int r = 0; r < rounds; r++) {
        int kind = (int)tu_rand_below(rng, 3);
        snprintf(key[0], sizeof key[0], "%c/%d", tu_rand_below(rng, 2) ? 'a' : 'b',
                 (int)tu_rand_below(rng, 8));
        snprintf(key[1], sizeof key[1], "c/%d", (int)tu_rand_below(rng, 4));
        snprintf(data, sizeof data, "{\"r\":%d,\"v\":%llu}", r,
                 (unsigned long long)tu_rand_below(rng, 1000000));
        snprintf(meta, sizeof meta, "m%d", r);
        es_event_new ev[3];
        for (int i = 0; i < 3; i++)
            ev[i] = (es_event_new){.type = i ? "Second" : "First",
                                   .data = data,
                                   .data_len = strlen(data),
                                   .meta = r % 3 ? meta : NULL,
                                   .meta_len = r % 3 ? strlen(meta) : 0};
        if (kind == 0) {
            TU_EXPECT_OK(es_append(NULL, st, key[0], strlen(key[0]), ES_EXPECT_ANY, ev, 1));
        } else if (kind == 1) {
            TU_EXPECT_OK(es_append(NULL, st, key[0], strlen(key[0]), ES_EXPECT_ANY, ev, 3));
        } else {
            es_append_op ops[2] = {{key[0], strlen(key[0]), ES_EXPECT_ANY, ev, 2},
                                   {key[1], strlen(key[1]), ES_EXPECT_ANY, ev + 2, 1}};
            es_append_result out[2];
            TU_EXPECT_OK(es_append_multi(out, st, ops, 2, 0));
        }
    }
    /* a replicator copies what the source's log shows; on postgres the log
     * shows a commit once every earlier transaction ended: wait for that */
    TU_EXPECT_OK(es_log_catch_up(st, 60000));
}

/* Every event of the source (within the prefix) is in the target with
 * every field equal, and the target holds nothing else there; the target
 * verifies. */
static uint64_t same_events(es_store *s, es_store *d, const char *prefix)
{
    es_cursor *c;
    const es_event *ev;
    uint64_t n = 0;
    es_log_options lo = ES_LOG_OPTIONS_INIT;
    lo.prefix = prefix;
    lo.prefix_len = prefix ? strlen(prefix) : 0;
    TU_EXPECT_OK(es_log_catch_up(s, 60000));
    TU_EXPECT_OK(es_log_cursor(&c, s, &lo));
    int rc;
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        es_read_options ro = ES_READ_OPTIONS_INIT;
        es_cursor *c2;
        const es_event *e2;
        ro.from_seq = ev->seq;
        ro.limit = 1;
        TU_EXPECT_OK(es_stream_cursor(&c2, d, ev->stream, ev->stream_len, &ro));
        rc = es_cursor_next(&e2, c2);
        if (rc)
            fail_msg("the target lacks %.*s seq %llu", (int)ev->stream_len, ev->stream,
                     (unsigned long long)ev->seq);
        assert_int_equal(e2->seq, ev->seq);
        assert_int_equal(e2->time_us, ev->time_us);
        assert_memory_equal(e2->id, ev->id, ES_ID_SIZE);
        assert_int_equal(e2->type_len, ev->type_len);
        assert_memory_equal(e2->type, ev->type, ev->type_len);
        assert_int_equal(e2->data_len, ev->data_len);
        if (ev->data_len)
            assert_memory_equal(e2->data, ev->data, ev->data_len);
        assert_int_equal(e2->meta_len, ev->meta_len);
        if (ev->meta_len)
            assert_memory_equal(e2->meta, ev->meta, ev->meta_len);
        assert_memory_equal(e2->hash, ev->hash, ES_HASH_SIZE);
        es_cursor_free(c2);
        n++;
    }
    assert_int_equal(rc, ES_ITEROVER);
    es_cursor_free(c);
    /* and nothing more in the target (within the prefix) */
    TU_EXPECT_OK(es_log_catch_up(d, 60000));
    TU_EXPECT_OK(es_log_cursor(&c, d, &lo));
    uint64_t m = 0;
    while ((rc = es_cursor_next(&ev, c)) == 0)
        m++;
    es_cursor_free(c);
    assert_int_equal(m, n);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, d, NULL, 0));
    if (!v.ok)
        fail_msg("the replica does not verify: %s", v.reason);
    return n;
}

static void test_copies_every_field_and_a_rerun_copies_nothing(void **state)
{
    (void)state;
    pair p;
    uint64_t rng = tu_seed;
    es_replicate_result r;
    open_pair(&p);
    fill(p.s.st, &rng, 200);
    TU_EXPECT_OK(es_replicate(&r, p.d.st, p.s.st, NULL, NULL));
    uint64_t n = same_events(p.s.st, p.d.st, NULL);
    assert_int_equal(r.copied, n);
    /* the replica takes appends from its replicator only */
    es_event_new other = {.type = "Other", .data = "x", .data_len = 1};
    assert_int_equal(es_append(NULL, p.d.st, "other/1", 7, ES_EXPECT_ANY, &other, 1), ES_EINVAL);
    assert_non_null(strstr(es_error_last(), "replica"));
    assert_int_equal(same_events(p.s.st, p.d.st, NULL), n);
    assert_int_equal(r.present, 0);
    assert_true(r.position > 0);
    /* again: nothing new, nothing written */
    es_replicate_result r2;
    TU_EXPECT_OK(es_replicate(&r2, p.d.st, p.s.st, NULL, NULL));
    assert_int_equal(r2.copied, 0);
    assert_int_equal(r2.present, 0);
    assert_int_equal(r2.position, r.position);
    /* more events, in small batches */
    fill(p.s.st, &rng, 50);
    es_replicate_options o = ES_REPLICATE_OPTIONS_INIT;
    o.batch_size = 7;
    TU_EXPECT_OK(es_replicate(&r2, p.d.st, p.s.st, &o, NULL));
    uint64_t n2 = same_events(p.s.st, p.d.st, NULL);
    assert_int_equal(r.copied + r2.copied, n2);
    es_replica_info ri;
    TU_EXPECT_OK(es_replica_info_get(&ri, p.d.st, NULL));
    assert_string_equal(ri.name, "default");
    assert_int_equal(ri.copied, n2);
    assert_int_equal(ri.position, r2.position);
    close_pair(&p);
}

static void test_resent_events_are_checked_and_skipped(void **state)
{
    (void)state;
    pair p;
    uint64_t rng = tu_seed + 1;
    es_replicate_result r;
    open_pair(&p);
    fill(p.s.st, &rng, 60);
    TU_EXPECT_OK(es_replicate(&r, p.d.st, p.s.st, NULL, NULL));
    fill(p.s.st, &rng, 20);
    /* a checkpoint lost (as by a crash before it was written): every event
     * is re-sent, found in the target, and only the new ones are copied */
    TU_EXPECT_OK(es_replica_delete(p.d.st, "default"));
    es_replica_info ri;
    assert_int_equal(es_replica_info_get(&ri, p.d.st, NULL), ES_ENOTFOUND);
    es_replicate_result r2;
    es_replicate_options o = ES_REPLICATE_OPTIONS_INIT;
    o.batch_size = 13;
    TU_EXPECT_OK(es_replicate(&r2, p.d.st, p.s.st, &o, NULL));
    assert_int_equal(r2.present, r.copied);
    uint64_t n = same_events(p.s.st, p.d.st, NULL);
    assert_int_equal(r.copied + r2.copied, n);
    close_pair(&p);
}

static void test_prefix_copies_its_streams_only(void **state)
{
    (void)state;
    pair p;
    uint64_t rng = tu_seed + 2;
    es_replicate_result r;
    es_replicate_options o = ES_REPLICATE_OPTIONS_INIT;
    open_pair(&p);
    fill(p.s.st, &rng, 80);
    o.name = "only-a";
    o.prefix = "a/";
    o.prefix_len = 2;
    o.batch_size = 5;
    TU_EXPECT_OK(es_replicate(&r, p.d.st, p.s.st, &o, NULL));
    uint64_t n = same_events(p.s.st, p.d.st, "a/");
    assert_int_equal(r.copied, n);
    assert_int_equal(tu_count_log(p.d.st), n);
    /* the name keeps its prefix */
    o.prefix = "b/";
    assert_int_equal(es_replicate(&r, p.d.st, p.s.st, &o, NULL), ES_EINVAL);
    /* another name may copy other streams into the same target, but a
     * store whose commit times never go back (mem, lmdb) cannot take the
     * events older than what it holds, and says so */
    o.name = "only-b";
    if (strcmp(dst_be, "pg") == 0) {
        TU_EXPECT_OK(es_replicate(&r, p.d.st, p.s.st, &o, NULL));
        same_events(p.s.st, p.d.st, "b/");
    } else {
        assert_int_equal(es_replicate(&r, p.d.st, p.s.st, &o, NULL), ES_EINVAL);
        assert_non_null(strstr(es_error_last(), "never go back"));
        assert_int_equal(r.copied, 0);
    }
    es_replica_info ri;
    TU_EXPECT_OK(es_replica_info_get(&ri, p.d.st, "only-b"));
    assert_int_equal(ri.prefix_len, 2);
    assert_memory_equal(ri.prefix, "b/", 2);
    close_pair(&p);
}

/* The position of the n-th event (1-based) of the source's log. */
static uint64_t nth_position(es_store *st, uint64_t n)
{
    es_cursor *c;
    const es_event *ev;
    uint64_t pos = 0;
    TU_EXPECT_OK(es_log_catch_up(st, 60000));
    TU_EXPECT_OK(es_log_cursor(&c, st, NULL));
    for (uint64_t i = 0; i < n && es_cursor_next(&ev, c) == 0; i++)
        pos = ev->position;
    es_cursor_free(c);
    return pos;
}

static void test_tampered_source_is_reported_not_copied(void **state)
{
    (void)state;
    pair p;
    uint64_t rng = tu_seed + 3;
    es_replicate_result r;
    open_pair(&p);
    if (!p.s.st->ops->tamper) {
        close_pair(&p);
        skip();
    }
    for (int i = 0; i < 30; i++)
        TU_EXPECT_OK(tu_append1(p.s.st, "s", ES_EXPECT_ANY, "T", "{\"i\":1234567}", NULL));
    es_replicate_options o = ES_REPLICATE_OPTIONS_INIT;
    o.batch_size = 10;
    TU_EXPECT_OK(es_replicate(&r, p.d.st, p.s.st, &o, NULL));
    assert_int_equal(r.copied, 30);
    for (int i = 0; i < 30; i++)
        TU_EXPECT_OK(tu_append1(p.s.st, "s", ES_EXPECT_ANY, "T", "{\"i\":1234567}", NULL));
    /* a new event's data damaged: reported, and nothing from it on copied */
    TU_EXPECT_OK(p.s.st->ops->tamper(p.s.st->be, nth_position(p.s.st, 45), ES__F_DATA, 3));
    assert_int_equal(es_replicate(&r, p.d.st, p.s.st, &o, NULL), ES_ECORRUPT);
    assert_non_null(strstr(es_error_last(), "seq 45"));
    uint64_t head;
    TU_EXPECT_OK(es_stream_head(&head, p.d.st, "s", 1));
    assert_true(head < 45);
    assert_true(head >= 40); /* the batches before it were copied */
    /* an already copied event rewritten (the checkpoint's): reported at the start */
    es_replica_info ri;
    TU_EXPECT_OK(es_replica_info_get(&ri, p.d.st, "default"));
    TU_EXPECT_OK(p.s.st->ops->tamper(p.s.st->be, ri.position, ES__F_HASH, 0));
    assert_int_equal(es_replicate(&r, p.d.st, p.s.st, &o, NULL), ES_ECORRUPT);
    assert_non_null(strstr(es_error_last(), "rewritten"));
    /* an earlier copied event rewritten, found when a batch is re-sent */
    TU_EXPECT_OK(es_replica_delete(p.d.st, "default"));
    TU_EXPECT_OK(p.s.st->ops->tamper(p.s.st->be, nth_position(p.s.st, 5), ES__F_ID, 0));
    assert_int_equal(es_replicate(&r, p.d.st, p.s.st, &o, NULL), ES_ECORRUPT);
    assert_non_null(strstr(es_error_last(), "seq 5 "));
    TU_EXPECT_OK(es_stream_head(&head, p.d.st, "s", 1));
    assert_true(head < 45);
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, p.d.st, NULL, 0));
    assert_true(v.ok);
    close_pair(&p);
    (void)rng;
}

typedef struct follower {
    es_store *d, *s;
    volatile int stop;
    int rc;
    es_replicate_result r;
} follower;

static void *follow_thread(void *arg)
{
    follower *f = arg;
    es_replicate_options o = ES_REPLICATE_OPTIONS_INIT;
    o.follow = 1;
    o.batch_size = 16;
    f->rc = es_replicate(&f->r, f->d, f->s, &o, &f->stop);
    return NULL;
}

static void test_follow_copies_new_events_until_stopped(void **state)
{
    (void)state;
    pair p;
    uint64_t rng = tu_seed + 4;
    pthread_t t;
    open_pair(&p);
    fill(p.s.st, &rng, 20);
    follower f = {p.d.st, p.s.st, 0, 0, {0}};
    assert_int_equal(pthread_create(&t, NULL, follow_thread, &f), 0);
    for (int i = 0; i < 10; i++) {
        fill(p.s.st, &rng, 5);
        struct timespec nap = {0, 10 * 1000000};
        nanosleep(&nap, NULL);
    }
    TU_EXPECT_OK(es_log_catch_up(p.s.st, 60000));
    uint64_t last;
    TU_EXPECT_OK(es_store_last_position(&last, p.s.st));
    es_replica_info ri = {0};
    for (int i = 0; i < 3000; i++) {
        if (es_replica_info_get(&ri, p.d.st, NULL) == 0 && ri.position >= last)
            break;
        struct timespec nap = {0, 5 * 1000000};
        nanosleep(&nap, NULL);
    }
    __atomic_store_n(&f.stop, 1, __ATOMIC_RELEASE);
    pthread_join(t, NULL);
    TU_EXPECT_OK(f.rc);
    assert_int_equal(ri.position, last);
    uint64_t n = same_events(p.s.st, p.d.st, NULL);
    assert_int_equal(f.r.copied, n);
    close_pair(&p);
}

static void test_bad_arguments_are_refused(void **state)
{
    (void)state;
    pair p;
    es_replicate_options o = ES_REPLICATE_OPTIONS_INIT;
    es_replica_info ri;
    open_pair(&p);
    assert_int_equal(es_replicate(NULL, NULL, p.s.st, NULL, NULL), ES_EINVAL);
    assert_int_equal(es_replicate(NULL, p.s.st, p.s.st, NULL, NULL), ES_EINVAL);
    o.batch_size = ES_MAX_BATCH + 1;
    assert_int_equal(es_replicate(NULL, p.d.st, p.s.st, &o, NULL), ES_EINVAL);
    o.batch_size = 0;
    o.follow = 1;
    assert_int_equal(es_replicate(NULL, p.d.st, p.s.st, &o, NULL), ES_EINVAL); /* no stop */
    o.follow = 0;
    o.name = "bad name";
    assert_int_equal(es_replicate(NULL, p.d.st, p.s.st, &o, NULL), ES_EINVAL);
    o.name = NULL;
    o.prefix_len = 3;
    assert_int_equal(es_replicate(NULL, p.d.st, p.s.st, &o, NULL), ES_EINVAL);
    o = (es_replicate_options)ES_REPLICATE_OPTIONS_INIT;
    o.version = 99;
    assert_int_equal(es_replicate(NULL, p.d.st, p.s.st, &o, NULL), ES_EINVAL);
    /* nothing above made the target a replica */
    assert_int_equal(es_replica_info_get(&ri, p.d.st, NULL), ES_ENOTFOUND);
    assert_int_equal(es_replica_info_get(&ri, p.d.st, "default"), ES_ENOTFOUND);
    assert_int_equal(es_replica_delete(p.d.st, "default"), ES_ENOTFOUND);
    assert_int_equal(es_replica_info_get(NULL, p.d.st, NULL), ES_EINVAL);
    /* a replica of an empty store is a replica already */
    TU_EXPECT_OK(es_replicate(NULL, p.d.st, p.s.st, NULL, NULL));
    TU_EXPECT_OK(es_replica_info_get(&ri, p.d.st, NULL));
    assert_int_equal(ri.position, 0);
    close_pair(&p);
}

static void test_backup_is_a_verifiable_copy(void **state)
{
    (void)state;
    pair p;
    uint64_t rng = tu_seed + 5;
    open_pair(&p);
    if (strcmp(src_be, "lmdb") != 0) {
        assert_int_equal(es_store_backup(p.s.st, "/nonexistent-dir-es"), ES_ENOTSUP);
        close_pair(&p);
        skip();
    }
    fill(p.s.st, &rng, 100);
    char dir[300], uri[320];
    snprintf(dir, sizeof dir, "%s/backup", p.s.dir);
    TU_EXPECT_OK(es_store_backup(p.s.st, dir));
    assert_int_equal(es_store_backup(p.s.st, dir), ES_EINVAL); /* not over a store */
    assert_int_equal(es_store_backup(p.s.st, ""), ES_EINVAL);
    snprintf(uri, sizeof uri, "lmdb:%s", dir);
    es_store *b;
    TU_EXPECT_OK(es_store_open(&b, uri, NULL));
    same_events(p.s.st, b, NULL);
    es_store_close(b);
    close_pair(&p);
}

int main(int argc, char **argv)
{
    const char *dash = argc > 1 ? strchr(argv[1], '-') : NULL;
    if (!dash || dash - argv[1] >= (long)sizeof src_be || strlen(dash + 1) >= sizeof dst_be) {
        fprintf(stderr, "usage: test_replicate SRC-DST (mem, lmdb, pg)\n");
        return 2;
    }
    memcpy(src_be, argv[1], (size_t)(dash - argv[1]));
    strcpy(dst_be, dash + 1);
    char *fake[] = {argv[0], strcmp(src_be, "pg") == 0 ? src_be : dst_be};
    int rc = tu_init(2, fake, "replicate");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_copies_every_field_and_a_rerun_copies_nothing),
        cmocka_unit_test(test_resent_events_are_checked_and_skipped),
        cmocka_unit_test(test_prefix_copies_its_streams_only),
        cmocka_unit_test(test_tampered_source_is_reported_not_copied),
        cmocka_unit_test(test_follow_copies_new_events_until_stopped),
        cmocka_unit_test(test_bad_arguments_are_refused),
        cmocka_unit_test(test_backup_is_a_verifiable_copy),
    };
    char name[64];
    snprintf(name, sizeof name, "replicate/%s", argv[1]);
    return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
