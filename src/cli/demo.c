/*
 * demo.c — `esrc demo`: the talk's story, told through the public API on a
 * store.  Homer and Bart exist; Maggie is inserted and added to the
 * Simpsons; Homer's API key becomes d0a; Homer leaves the Simpsons.  Then
 * the tables, the log, the audit answer, the Simpsons now and before
 * Homer left, and a second "bart" that the unique-username rule rejects.
 *
 * The demo's store clock is simulated, so its output is the same each run.
 * Its events carry fixed ids: on a store that already holds them the demo
 * writes nothing and shows what is there.
 */
#include "cli.h"

#include "users.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COMPANY 1

static int64_t demo_time(void *payload)
{
    return ((demo_clock *)payload)->now;
}

/* UTC "YYYY-MM-DD hh:mm" → µs since the epoch. */
static int64_t at(int y, int mo, int d, int h, int mi)
{
    struct tm tm = {0};
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    return (int64_t)timegm(&tm) * 1000000;
}

void esrc_format_time(char *out, size_t cap, int64_t us)
{
    time_t s = (time_t)(us / 1000000);
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(out, cap, "%Y-%m-%d %H:%M:%S", &tm);
}

static void demo_id(uint8_t id[ES_ID_SIZE], int n)
{
    memset(id, 0, ES_ID_SIZE);
    memcpy(id, "esrc-demo", 9);
    id[14] = (uint8_t)(n >> 8);
    id[15] = (uint8_t)n;
}

typedef struct demo {
    es_store *st;
    demo_clock *clock;
    char stream[32];
    size_t stream_len;
    int next_id;
    FILE *out;
} demo;

static int append_event(demo *d, const us_event *e)
{
    es_buf buf = ES_BUF_INIT;
    es_event_new ev;
    uint8_t id[ES_ID_SIZE];
    int rc;

    demo_id(id, d->next_id++);
    if ((rc = us_event_new(&ev, &buf, e)) == 0) {
        ev.id = id;
        rc = es_append(NULL, d->st, d->stream, d->stream_len, ES_EXPECT_ANY, &ev, 1);
    }
    es_buf_free(&buf);
    return rc;
}

static int save_user(demo *d, es_view *by_name, int64_t id, const char *name, const char *username,
                     es_save_result *res)
{
    us_user u = {.id = id};
    uint8_t eid[ES_ID_SIZE];
    snprintf(u.name, sizeof u.name, "%s", name);
    snprintf(u.username, sizeof u.username, "%s", username);
    demo_id(eid, d->next_id++);
    return us_save_user(res, by_name, COMPANY, &u, eid);
}

static int insert_user(demo *d, es_view *by_name, int64_t id, const char *name,
                       const char *username)
{
    es_save_result res = ES_SAVE_RESULT_INIT;
    int rc = save_user(d, by_name, id, name, username, &res);
    if (rc == 0 && res.status != ES_SAVED)
        rc = ES_ERROR;
    es_save_result_clear(&res, by_name);
    return rc;
}

static int write_story(demo *d, es_view *by_name, uint64_t *before_removal)
{
    int rc;
    us_event e;
#define EV(...)                                                                                    \
    do {                                                                                           \
        e = (us_event){__VA_ARGS__};                                                               \
        if ((rc = append_event(d, &e)) < 0)                                                        \
            return rc;                                                                             \
    } while (0)

    /* What the company looked like before the talk's changes. */
    d->clock->now = at(2026, 1, 5, 9, 0);
    EV(.kind = US_INSERT_GROUP, .group = 1, .name = "Simpsons");
    EV(.kind = US_INSERT_GROUP, .group = 2, .name = "Flanders");
    d->clock->now = at(2026, 1, 5, 9, 5);
    if ((rc = insert_user(d, by_name, 1, "Homer", "homer")) < 0)
        return rc;
    EV(.kind = US_SET_API_KEY, .id = 1, .key = "abcd");
    d->clock->now = at(2026, 2, 10, 14, 30);
    if ((rc = insert_user(d, by_name, 2, "Bart", "bart")) < 0)
        return rc;
    EV(.kind = US_SET_API_KEY, .id = 2, .key = "f00");
    EV(.kind = US_ADD_USER_TO_GROUP, .group = 1, .user = 1);
    EV(.kind = US_ADD_USER_TO_GROUP, .group = 1, .user = 2);

    /* The talk's audit rows. */
    d->clock->now = at(2026, 9, 1, 10, 0);
    if ((rc = insert_user(d, by_name, 3, "Maggie", "maggie")) < 0)
        return rc;
    EV(.kind = US_SET_API_KEY, .id = 3, .key = "baa");
    d->clock->now = at(2026, 9, 1, 10, 10);
    EV(.kind = US_ADD_USER_TO_GROUP, .group = 1, .user = 3);
    d->clock->now = at(2026, 10, 15, 16, 45);
    EV(.kind = US_SET_API_KEY, .id = 1, .key = "d0a");
    if ((rc = es_stream_head(before_removal, d->st, d->stream, d->stream_len)) < 0)
        return rc;
    d->clock->now = at(2026, 11, 20, 11, 20);
    EV(.kind = US_REMOVE_USER_FROM_GROUP, .group = 1, .user = 1);
#undef EV
    return 0;
}

static void print_tables(FILE *o, const us_tables *t)
{
    fprintf(o, "users\n");
    fprintf(o, "  %-3s %-8s %-9s %s\n", "id", "name", "username", "apikey");
    for (size_t i = 0; i < t->n_users; i++)
        fprintf(o, "  %-3" PRId64 " %-8s %-9s %s\n", t->users[i].id, t->users[i].name,
                t->users[i].username, t->users[i].apikey);
    fprintf(o, "\ngroups\n  %-3s %s\n", "id", "name");
    for (size_t i = 0; i < t->n_groups; i++)
        fprintf(o, "  %-3" PRId64 " %s\n", t->groups[i].id, t->groups[i].name);
    fprintf(o, "\nusers_groups\n  %-8s %s\n", "group_id", "user_id");
    for (size_t i = 0; i < t->n_memberships; i++)
        fprintf(o, "  %-8" PRId64 " %" PRId64 "\n", t->memberships[i].group,
                t->memberships[i].user);
}

static int print_log(demo *d)
{
    es_cursor *c;
    const es_event *ev;
    us_event e;
    char when[32], what[256];
    int rc;

    if ((rc = es_stream_cursor(&c, d->st, d->stream, d->stream_len, NULL)) < 0)
        return rc;
    fprintf(d->out, "\nevent log of stream %s\n", d->stream);
    fprintf(d->out, "  %-4s %-20s %s\n", "seq", "time (UTC)", "event");
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        esrc_format_time(when, sizeof when, ev->time_us);
        if (us_event_decode(&e, ev) == 0)
            us_event_describe(what, sizeof what, &e);
        else
            snprintf(what, sizeof what, "%.*s (not a users event)", (int)ev->type_len, ev->type);
        fprintf(d->out, "  %-4" PRIu64 " %-20s %s\n", ev->seq, when, what);
    }
    es_cursor_free(c);
    return rc == ES_ITEROVER ? 0 : rc;
}

static void print_members(FILE *o, const char *label, const es_snapshot *s)
{
    fprintf(o, "%s (after seq %" PRIu64 "):", label, s->seq);
    if (s->state == ES_SNAP_VALUE) {
        const us_members *m = s->value;
        for (size_t i = 0; i < m->n; i++)
            fprintf(o, "%s%" PRId64, i ? ", " : " ", m->ids[i]);
        if (!m->n)
            fprintf(o, " none");
    } else {
        fprintf(o, " none");
    }
    fprintf(o, "\n");
}

int esrc_demo(es_store *st, void *clock_payload, FILE *out)
{
    demo d = {.st = st, .clock = clock_payload, .next_id = 1, .out = out};
    es_view *by_name = NULL, *members = NULL;
    es_snapshot now = ES_SNAPSHOT_INIT, before = ES_SNAPSHOT_INIT;
    es_save_result res = ES_SAVE_RESULT_INIT;
    us_tables t;
    uint64_t head = 0, before_removal = 0, changes = 0;
    int rc;

    d.stream_len = (size_t)us_company_stream(d.stream, sizeof d.stream, COMPANY);
    if ((rc = es_view_new(&by_name, st, us_user_by_name(), NULL)) < 0 ||
        (rc = es_view_new(&members, st, us_group_members(), NULL)) < 0)
        goto done;
    if ((rc = es_stream_head(&head, st, d.stream, d.stream_len)) < 0)
        goto done;
    fprintf(out, "eventsrc demo: the users-and-groups story of the talk, on a %s store\n\n",
            es_store_kind(st));
    if (head == 0) {
        if ((rc = write_story(&d, by_name, &before_removal)) < 0)
            goto done;
    } else {
        fprintf(out, "(the store already holds stream %s: showing it, writing nothing)\n\n",
                d.stream);
        before_removal = head > 1 ? head - 1 : 0;
    }

    if ((rc = us_tables_build(&t, st, COMPANY, 0)) < 0)
        goto done;
    print_tables(out, &t);
    us_tables_free(&t);
    if ((rc = print_log(&d)) < 0)
        goto done;

    int64_t asked = at(2026, 11, 27, 12, 0);
    int64_t since = asked - (int64_t)(365.25 / 2 * 86400) * 1000000;
    char when[32], from[32];
    if ((rc = us_count_api_key_changes(&changes, st, COMPANY, since)) < 0)
        goto done;
    esrc_format_time(when, sizeof when, asked);
    esrc_format_time(from, sizeof from, since);
    fprintf(out, "\nHow many API key changes in the last 6 months (%s to %s)? %" PRIu64 "\n", from,
            when, changes);

    if ((rc = es_view_get(&now, members, "1:1", 3, ES_LATEST_EVENT)) < 0 ||
        (rc = es_view_get_at(&before, members, "1:1", 3, before_removal)) < 0)
        goto done;
    fprintf(out, "\n");
    print_members(out, "Simpsons' members now", &now);
    print_members(out, "Simpsons' members before Homer was removed", &before);

    d.next_id = 1000;
    d.clock->now = at(2026, 11, 27, 12, 0);
    if ((rc = save_user(&d, by_name, 4, "Bart Junior", "bart", &res)) < 0)
        goto done;
    fprintf(out, "\nsave_user(4, \"Bart Junior\", \"bart\"): %s",
            res.status == ES_SAVED      ? "saved"
            : res.status == ES_REJECTED ? "rejected"
                                        : "gave up");
    for (size_t i = 0; i < res.n_reasons; i++)
        fprintf(out, "%s%s", i ? ", " : ": ", res.reasons[i]);
    if (res.snapshot.state == ES_SNAP_VALUE)
        fprintf(out, " (bart is user %" PRId64 ")", *(const int64_t *)res.snapshot.value);
    fprintf(out, "\n");
done:
    es_save_result_clear(&res, by_name);
    es_snapshot_clear(&now, members);
    es_snapshot_clear(&before, members);
    es_view_free(by_name);
    es_view_free(members);
    return rc;
}

int64_t esrc_demo_clock(void *payload)
{
    return demo_time(payload);
}
