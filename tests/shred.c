/*
 * shred.c — crypto-shredding on every backend: events of streams under a
 * rule are stored encrypted per subject, read back decrypted, and after
 * es_forget read as forgotten (empty data, ES_SHRED_FORGOTTEN) through
 * every cursor, while the hash chains still verify.  Without the right
 * master key they read as locked, never as garbage; a ciphertext moved into
 * another event fails authentication; and the lmdb store's file never holds
 * the plaintext.
 */
#define _GNU_SOURCE
#include "testutil.h"

#include "internal.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char SECRET[] = "{\"name\":\"Quokka-Zanzibar-7731\"}";
static const char SECRET_META[] = "{\"ip\":\"meta-Zanzibar-0042\"}";

static void master(uint8_t key[ES_MASTER_KEY_SIZE], uint8_t fill)
{
    memset(key, fill, ES_MASTER_KEY_SIZE);
}

static void open_shredded(tu_store *ts, unsigned flags)
{
    uint8_t k[ES_MASTER_KEY_SIZE];
    tu_open(ts);
    master(k, 7);
    TU_EXPECT_OK(es_store_set_master_key(ts->st, k));
    TU_EXPECT_OK(es_shred_rule_add(ts->st, "user/", 5, flags));
}

static void append_secret(es_store *st, const char *stream, es_append_result *r)
{
    es_event_new ev = {.type = "UserNamed",
                       .data = SECRET,
                       .data_len = strlen(SECRET),
                       .meta = SECRET_META,
                       .meta_len = strlen(SECRET_META)};
    TU_EXPECT_OK(es_append(r, st, stream, strlen(stream), ES_EXPECT_ANY, &ev, 1));
}

/* The first event of a stream, copied: its shred state, data and meta. */
typedef struct seen {
    unsigned shred;
    char data[256];
    size_t data_len;
    char meta[256];
    size_t meta_len;
} seen;

static void copy_seen(seen *s, const es_event *ev)
{
    s->shred = ev->shred;
    s->data_len = ev->data_len;
    s->meta_len = ev->meta_len;
    assert_true(ev->data_len < sizeof s->data && ev->meta_len < sizeof s->meta);
    memcpy(s->data, ev->data, ev->data_len);
    s->data[ev->data_len] = 0;
    memcpy(s->meta, ev->meta, ev->meta_len);
    s->meta[ev->meta_len] = 0;
}

static void read_stream(seen *s, es_store *st, const char *stream, int raw)
{
    es_cursor *c;
    const es_event *ev;
    TU_EXPECT_OK(es_stream_cursor(&c, st, stream, strlen(stream), NULL));
    TU_EXPECT_OK(es_cursor_set_raw(c, raw));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    copy_seen(s, ev);
    es_cursor_free(c);
}

static void read_log(seen *s, es_store *st, uint64_t position)
{
    es_log_options o = ES_LOG_OPTIONS_INIT;
    es_cursor *c;
    const es_event *ev;
    o.from_position = position;
    TU_EXPECT_OK(es_log_cursor(&c, st, &o));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    assert_int_equal(ev->position, position);
    copy_seen(s, ev);
    es_cursor_free(c);
}

static void expect_verified(es_store *st)
{
    es_verify_result v;
    TU_EXPECT_OK(es_verify(&v, st, NULL, 0));
    if (!v.ok)
        fail_msg("verify failed: %s", v.reason);
}

static void test_encrypted_round_trip(void **state)
{
    (void)state;
    tu_store ts;
    es_append_result r, p;
    seen s;
    open_shredded(&ts, 0);
    append_secret(ts.st, "user/42/profile", &r);
    TU_EXPECT_OK(tu_append1(ts.st, "group/a", ES_EXPECT_ANY, "G", "{\"plain\":1}", &p));

    read_stream(&s, ts.st, "user/42/profile", 0);
    assert_int_equal(s.shred, ES_SHRED_OPEN);
    assert_string_equal(s.data, SECRET);
    assert_string_equal(s.meta, SECRET_META); /* metadata not under the rule's flag */
    read_log(&s, ts.st, r.first_position);
    assert_int_equal(s.shred, ES_SHRED_OPEN);
    assert_string_equal(s.data, SECRET);
    /* a plain stream is untouched */
    read_log(&s, ts.st, p.first_position);
    assert_int_equal(s.shred, ES_SHRED_NONE);
    assert_string_equal(s.data, "{\"plain\":1}");
    /* as stored: an envelope, not the plaintext */
    read_stream(&s, ts.st, "user/42/profile", 1);
    assert_int_equal(s.shred, ES_SHRED_SEALED);
    assert_true(s.data_len > strlen(SECRET));
    assert_null(memmem(s.data, s.data_len, "Quokka", 6));
    expect_verified(ts.st);
    tu_close(&ts);
}

static void test_metadata_encrypted_with_the_meta_flag(void **state)
{
    (void)state;
    tu_store ts;
    es_append_result r;
    seen s;
    open_shredded(&ts, ES_SHRED_META);
    append_secret(ts.st, "user/9", &r);
    read_stream(&s, ts.st, "user/9", 0);
    assert_int_equal(s.shred, ES_SHRED_OPEN);
    assert_string_equal(s.data, SECRET);
    assert_string_equal(s.meta, SECRET_META);
    read_stream(&s, ts.st, "user/9", 1);
    assert_int_equal(s.meta_len, 0); /* stored inside the envelope */
    TU_EXPECT_OK(es_forget(ts.st, "user/9", 6));
    read_stream(&s, ts.st, "user/9", 0);
    assert_int_equal(s.shred, ES_SHRED_FORGOTTEN);
    assert_int_equal(s.data_len, 0);
    assert_int_equal(s.meta_len, 0);
    tu_close(&ts);
}

static void test_forget_makes_data_unreadable_and_chains_still_verify(void **state)
{
    (void)state;
    tu_store ts;
    es_append_result r1, r2, r3;
    seen s;
    open_shredded(&ts, 0);
    append_secret(ts.st, "user/1", &r1);
    append_secret(ts.st, "user/1/settings", &r2); /* same subject: user/1 */
    append_secret(ts.st, "user/2", &r3);
    TU_EXPECT_OK(es_forget(ts.st, "user/1", 6));
    assert_int_equal(es_forget(ts.st, "user/1", 6), ES_ENOTFOUND);
    assert_int_equal(es_forget(ts.st, "user/77", 7), ES_ENOTFOUND);

    read_stream(&s, ts.st, "user/1", 0);
    assert_int_equal(s.shred, ES_SHRED_FORGOTTEN);
    assert_int_equal(s.data_len, 0);
    assert_string_equal(s.meta, SECRET_META); /* metadata was not encrypted */
    read_stream(&s, ts.st, "user/1/settings", 0);
    assert_int_equal(s.shred, ES_SHRED_FORGOTTEN);
    read_log(&s, ts.st, r2.first_position);
    assert_int_equal(s.shred, ES_SHRED_FORGOTTEN);
    assert_int_equal(s.data_len, 0);
    /* another subject is untouched */
    read_stream(&s, ts.st, "user/2", 0);
    assert_int_equal(s.shred, ES_SHRED_OPEN);
    assert_string_equal(s.data, SECRET);
    expect_verified(ts.st);

    /* a forgotten subject written again gets a new key; the old events stay gone */
    es_append_result r4;
    TU_EXPECT_OK(tu_append1(ts.st, "user/1", ES_EXPECT_ANY, "UserNamed", "{\"new\":1}", &r4));
    read_stream(&s, ts.st, "user/1", 0);
    assert_int_equal(s.shred, ES_SHRED_FORGOTTEN);
    read_log(&s, ts.st, r4.first_position);
    assert_int_equal(s.shred, ES_SHRED_OPEN);
    assert_string_equal(s.data, "{\"new\":1}");
    expect_verified(ts.st);
    tu_close(&ts);
}

static void test_missing_or_wrong_master_key_reads_locked(void **state)
{
    (void)state;
    tu_store ts;
    es_append_result r;
    uint8_t wrong[ES_MASTER_KEY_SIZE];
    seen s;
    open_shredded(&ts, ES_SHRED_META);
    append_secret(ts.st, "user/5", &r);

    TU_EXPECT_OK(es_store_set_master_key(ts.st, NULL));
    read_stream(&s, ts.st, "user/5", 0);
    assert_int_equal(s.shred, ES_SHRED_LOCKED);
    assert_int_equal(s.data_len, 0);
    assert_int_equal(s.meta_len, 0);
    /* nothing is written in plaintext under a rule without the key */
    assert_int_equal(tu_append1(ts.st, "user/5", ES_EXPECT_ANY, "T", "x", NULL), ES_EINVAL);
    assert_int_equal(tu_append1(ts.st, "user/6", ES_EXPECT_ANY, "T", "x", NULL), ES_EINVAL);
    TU_EXPECT_OK(tu_append1(ts.st, "other", ES_EXPECT_ANY, "T", "x", NULL));

    master(wrong, 8);
    TU_EXPECT_OK(es_store_set_master_key(ts.st, wrong));
    read_log(&s, ts.st, r.first_position);
    assert_int_equal(s.shred, ES_SHRED_LOCKED);
    assert_int_equal(s.data_len, 0);
    assert_int_equal(tu_append1(ts.st, "user/5", ES_EXPECT_ANY, "T", "x", NULL), ES_EINVAL);
    expect_verified(ts.st);
    tu_close(&ts);
}

static void test_moved_or_damaged_ciphertext_fails_authentication(void **state)
{
    (void)state;
    tu_store ts;
    es_append_result r, moved;
    es_cursor *c;
    const es_event *ev;
    seen s;
    uint8_t env[1024];
    size_t n;
    open_shredded(&ts, 0);
    append_secret(ts.st, "user/3", &r);
    TU_EXPECT_OK(es_stream_cursor(&c, ts.st, "user/3", 6, NULL));
    TU_EXPECT_OK(es_cursor_set_raw(c, 1));
    TU_EXPECT_OK(es_cursor_next(&ev, c));
    assert_true(ev->data_len <= sizeof env);
    n = ev->data_len;
    memcpy(env, ev->data, n);
    es_cursor_free(c);

    /* an envelope cannot be written by a plain append */
    es_event_new copy = {.type = "UserNamed", .data = env, .data_len = n};
    assert_int_equal(es_append(NULL, ts.st, "user/3", 6, ES_EXPECT_ANY, &copy, 1), ES_EINVAL);
    /* a raw append can, but the copy (another id) does not authenticate */
    TU_EXPECT_OK(es_append_ex(&moved, ts.st, "user/3", 6, ES_EXPECT_ANY, &copy, 1, ES_APPEND_RAW));
    read_log(&s, ts.st, moved.first_position);
    assert_int_equal(s.shred, ES_SHRED_BROKEN);
    assert_int_equal(s.data_len, 0);
    /* the original still reads */
    read_log(&s, ts.st, r.first_position);
    assert_int_equal(s.shred, ES_SHRED_OPEN);

    /* a flipped byte of the ciphertext, below the API */
    if (ts.st->ops->tamper) {
        TU_EXPECT_OK(ts.st->ops->tamper(ts.st->be, r.first_position, ES__F_DATA, n - 3));
        read_log(&s, ts.st, r.first_position);
        assert_int_equal(s.shred, ES_SHRED_BROKEN);
        assert_int_equal(s.data_len, 0);
    }
    tu_close(&ts);
}

static void test_bad_arguments(void **state)
{
    (void)state;
    tu_store ts;
    char big[ES_MAX_KEY + 1];
    tu_open(&ts);
    memset(big, 'a', sizeof big);
    assert_int_equal(es_store_set_master_key(NULL, NULL), ES_EINVAL);
    assert_int_equal(es_shred_rule_add(ts.st, "", 0, 0), ES_EINVAL);
    assert_int_equal(es_shred_rule_add(ts.st, NULL, 3, 0), ES_EINVAL);
    assert_int_equal(es_shred_rule_add(ts.st, big, sizeof big, 0), ES_ETOOBIG);
    assert_int_equal(es_shred_rule_add(ts.st, "u/", 2, 0x80), ES_EINVAL);
    assert_int_equal(es_forget(ts.st, "", 0), ES_EINVAL);
    assert_int_equal(es_forget(ts.st, big, sizeof big), ES_ETOOBIG);
    assert_int_equal(es_forget(NULL, "x", 1), ES_EINVAL);
    assert_int_equal(es_cursor_set_raw(NULL, 1), ES_EINVAL);
    tu_close(&ts);
}

/* lmdb: the store's file never holds the plaintext, before or after a forget. */
static int file_has(const char *path, const char *needle)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    int found = memmem(buf, (size_t)n, needle, strlen(needle)) != NULL;
    free(buf);
    return found;
}

static void test_lmdb_file_holds_no_plaintext(void **state)
{
    (void)state;
    tu_store ts;
    es_append_result r;
    char path[600];
    if (strcmp(tu_backend, "lmdb") != 0)
        skip();
    open_shredded(&ts, ES_SHRED_META);
    for (int i = 0; i < 50; i++)
        append_secret(ts.st, "user/8", &r);
    TU_EXPECT_OK(tu_append1(ts.st, "plain", ES_EXPECT_ANY, "T", "Visible-Plain-Marker", NULL));
    snprintf(path, sizeof path, "%s/data.mdb", ts.dir);
    assert_true(file_has(path, "Visible-Plain-Marker")); /* the search works */
    assert_false(file_has(path, "Quokka-Zanzibar"));
    assert_false(file_has(path, "meta-Zanzibar"));
    TU_EXPECT_OK(es_forget(ts.st, "user/8", 6));
    tu_reopen(&ts); /* lmdb commits are in the file; a reopen shows nothing waited */
    assert_false(file_has(path, "Quokka-Zanzibar"));
    assert_false(file_has(path, "meta-Zanzibar"));
    tu_close(&ts);
}

int main(int argc, char **argv)
{
    int rc = tu_init(argc, argv, "shred");
    if (rc)
        return rc;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_encrypted_round_trip),
        cmocka_unit_test(test_metadata_encrypted_with_the_meta_flag),
        cmocka_unit_test(test_forget_makes_data_unreadable_and_chains_still_verify),
        cmocka_unit_test(test_missing_or_wrong_master_key_reads_locked),
        cmocka_unit_test(test_moved_or_damaged_ciphertext_fails_authentication),
        cmocka_unit_test(test_bad_arguments),
        cmocka_unit_test(test_lmdb_file_holds_no_plaintext),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
