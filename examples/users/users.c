/*
 * users.c — the users-and-groups example: event encoding, three views, the
 * unique-username save and the audit question.  Uses only <eventsrc.h>.
 */
#include "users.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const type_names[US_KIND_COUNT] = {
    "InsertGroup", "InsertUser", "DeleteUser", "SetAPIKey", "AddUserToGroup", "RemoveUserFromGroup",
};

const char *us_type_name(us_kind kind)
{
    return kind < US_KIND_COUNT ? type_names[kind] : "?";
}

static int text_ok(const char *s)
{
    size_t n = strnlen(s, US_TEXT);
    return n > 0 && n < US_TEXT;
}

int us_event_new(es_event_new *ev, es_buf *out, const us_event *e)
{
    json_t *j = NULL;
    char *s;
    int rc;

    memset(ev, 0, sizeof *ev);
    switch (e->kind) {
    case US_INSERT_GROUP:
        if (!text_ok(e->name))
            return ES_EINVAL;
        j = json_pack("{s:i,s:I,s:s}", "v", 1, "group", (json_int_t)e->group, "name", e->name);
        break;
    case US_INSERT_USER:
        if (!text_ok(e->name) || !text_ok(e->username))
            return ES_EINVAL;
        j = json_pack("{s:i,s:I,s:s,s:s}", "v", 1, "id", (json_int_t)e->id, "name", e->name,
                      "username", e->username);
        break;
    case US_DELETE_USER:
        j = json_pack("{s:i,s:I}", "v", 1, "id", (json_int_t)e->id);
        break;
    case US_SET_API_KEY:
        if (!text_ok(e->key))
            return ES_EINVAL;
        j = json_pack("{s:i,s:I,s:s}", "v", 1, "id", (json_int_t)e->id, "key", e->key);
        break;
    case US_ADD_USER_TO_GROUP:
    case US_REMOVE_USER_FROM_GROUP:
        j = json_pack("{s:i,s:I,s:I}", "v", 1, "group", (json_int_t)e->group, "user",
                      (json_int_t)e->user);
        break;
    default:
        return ES_EINVAL;
    }
    if (!j)
        return ES_ENOMEM;
    s = json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(j);
    if (!s)
        return ES_ENOMEM;
    es_buf_reset(out);
    rc = es_buf_put(out, s, strlen(s));
    free(s);
    if (rc < 0)
        return rc;
    ev->type = type_names[e->kind];
    ev->data = out->data;
    ev->data_len = out->len;
    return 0;
}

static int get_text(char out[US_TEXT], json_t *j, const char *field)
{
    json_t *v = json_object_get(j, field);
    const char *s = json_string_value(v);
    if (!s || strlen(s) == 0 || strlen(s) >= US_TEXT)
        return -1;
    strcpy(out, s);
    return 0;
}

static int get_int(int64_t *out, json_t *j, const char *field)
{
    json_t *v = json_object_get(j, field);
    if (!json_is_integer(v))
        return -1;
    *out = json_integer_value(v);
    return 0;
}

int us_event_decode(us_event *out, const es_event *ev)
{
    json_t *j;
    int kind = -1, bad = 0;
    int64_t version = 0;

    memset(out, 0, sizeof *out);
    for (int k = 0; k < US_KIND_COUNT; k++) {
        if (ev->type_len == strlen(type_names[k]) &&
            memcmp(ev->type, type_names[k], ev->type_len) == 0)
            kind = k;
    }
    if (kind < 0)
        return ES_EINVAL;
    if (!(j = json_loadb((const char *)ev->data, ev->data_len, 0, NULL)))
        return ES_EINVAL;
    out->kind = (us_kind)kind;
    bad |= get_int(&version, j, "v") < 0 || version != 1;
    switch (out->kind) {
    case US_INSERT_GROUP:
        bad |= get_int(&out->group, j, "group") | get_text(out->name, j, "name");
        break;
    case US_INSERT_USER:
        bad |= get_int(&out->id, j, "id") | get_text(out->name, j, "name") |
               get_text(out->username, j, "username");
        break;
    case US_DELETE_USER:
        bad |= get_int(&out->id, j, "id");
        break;
    case US_SET_API_KEY:
        bad |= get_int(&out->id, j, "id") | get_text(out->key, j, "key");
        break;
    default:
        bad |= get_int(&out->group, j, "group") | get_int(&out->user, j, "user");
        break;
    }
    json_decref(j);
    return bad ? ES_EINVAL : 0;
}

void us_event_describe(char *out, size_t cap, const us_event *e)
{
    switch (e->kind) {
    case US_INSERT_GROUP:
        snprintf(out, cap, "InsertGroup(%" PRId64 ", %s)", e->group, e->name);
        break;
    case US_INSERT_USER:
        snprintf(out, cap, "InsertUser(%" PRId64 ", %s, %s)", e->id, e->name, e->username);
        break;
    case US_DELETE_USER:
        snprintf(out, cap, "DeleteUser(%" PRId64 ")", e->id);
        break;
    case US_SET_API_KEY:
        snprintf(out, cap, "SetAPIKey(%" PRId64 ", %s)", e->id, e->key);
        break;
    default:
        snprintf(out, cap, "%s(%" PRId64 ", %" PRId64 ")", us_type_name(e->kind), e->group,
                 e->user);
        break;
    }
}

int us_company_stream(char *out, size_t cap, int64_t company)
{
    int n = snprintf(out, cap, "company/%" PRId64, company);
    return n > 0 && (size_t)n < cap ? n : ES_EINVAL;
}

/* View keys are "C:rest".  Split off the company. */
static int split_key(int64_t *company, const uint8_t **rest, size_t *rest_len, const uint8_t *k,
                     size_t n)
{
    char num[24];
    size_t i = 0;
    while (i < n && k[i] != ':')
        i++;
    if (i == 0 || i >= n - 1 || i >= sizeof num)
        return ES_EINVAL;
    memcpy(num, k, i);
    num[i] = 0;
    char *end;
    long long c = strtoll(num, &end, 10);
    if (*end)
        return ES_EINVAL;
    *company = c;
    *rest = k + i + 1;
    *rest_len = n - i - 1;
    return 0;
}

static int parse_id(int64_t *out, const uint8_t *p, size_t n)
{
    char num[24];
    if (n == 0 || n >= sizeof num)
        return ES_EINVAL;
    memcpy(num, p, n);
    num[n] = 0;
    char *end;
    *out = strtoll(num, &end, 10);
    return *end ? ES_EINVAL : 0;
}

static int company_stream_key(uint8_t out[ES_MAX_KEY], size_t *out_len, const uint8_t *vkey,
                              size_t vkey_len, void *payload)
{
    int64_t company;
    const uint8_t *rest;
    size_t rl;
    char buf[ES_MAX_KEY + 1];
    (void)payload;
    if (split_key(&company, &rest, &rl, vkey, vkey_len) < 0)
        return ES_EINVAL;
    int n = us_company_stream(buf, sizeof buf, company);
    if (n < 0)
        return n;
    memcpy(out, buf, (size_t)n);
    *out_len = (size_t)n;
    return 0;
}

/* ---- UserById: "C:U" → us_user ---- */

static int user_init(void **out, const uint8_t *fkey, size_t len, void *payload)
{
    (void)fkey, (void)len, (void)payload;
    *out = calloc(1, sizeof(us_user));
    return *out ? 0 : ES_ENOMEM;
}

static int user_apply(void *acc, const es_event *ev, const uint8_t *fkey, size_t len, void *payload)
{
    us_user *u = acc;
    us_event e;
    int64_t company, id;
    const uint8_t *rest;
    size_t rl;
    (void)payload;
    if (split_key(&company, &rest, &rl, fkey, len) < 0 || parse_id(&id, rest, rl) < 0)
        return ES_EINVAL;
    if (us_event_decode(&e, ev) < 0 || e.id != id)
        return ES_FOLD_UNCHANGED;
    switch (e.kind) {
    case US_INSERT_USER:
        u->id = e.id;
        strcpy(u->name, e.name);
        strcpy(u->username, e.username);
        return ES_FOLD_CHANGED;
    case US_SET_API_KEY:
        if (!u->id)
            return ES_FOLD_UNCHANGED; /* a key for a user not inserted */
        strcpy(u->apikey, e.key);
        return ES_FOLD_CHANGED;
    case US_DELETE_USER:
        return u->id ? ES_FOLD_DELETED : ES_FOLD_UNCHANGED;
    default:
        return ES_FOLD_UNCHANGED;
    }
}

static int user_encode(es_buf *out, const void *acc, void *payload)
{
    (void)payload;
    return es_buf_put(out, acc, sizeof(us_user));
}

static int user_decode(void **out, const uint8_t *data, size_t len, void *payload)
{
    (void)payload;
    if (len != sizeof(us_user))
        return ES_ECORRUPT;
    us_user *u = malloc(sizeof *u);
    if (!u)
        return ES_ENOMEM;
    memcpy(u, data, sizeof *u);
    u->name[US_TEXT - 1] = u->username[US_TEXT - 1] = u->apikey[US_TEXT - 1] = 0;
    *out = u;
    return 0;
}

static void plain_free(void *p, void *payload)
{
    (void)payload;
    free(p);
}

static const es_view_def user_by_id_def = {
    .version = ES_VIEW_DEF_VERSION,
    .name = "UserById",
    .view_version = 1,
    .stream_key = company_stream_key,
    .init = user_init,
    .apply = user_apply,
    .encode = user_encode,
    .decode = user_decode,
    .free_value = plain_free,
};

const es_view_def *us_user_by_id(void)
{
    return &user_by_id_def;
}

/* ---- UserByName: "C:username" → user id, sharded by (C, first 3 bytes) ---- */

typedef struct name_entry {
    char username[US_TEXT];
    int64_t id;
} name_entry;

typedef struct name_shard {
    name_entry *v;
    size_t n, cap;
} name_shard;

#define US_SHARD_PREFIX 3

static int name_shard_key(uint8_t out[ES_MAX_VIEW_KEY], size_t *out_len, const uint8_t *vkey,
                          size_t vkey_len, void *payload)
{
    int64_t company;
    const uint8_t *rest;
    size_t rl;
    (void)payload;
    if (split_key(&company, &rest, &rl, vkey, vkey_len) < 0)
        return ES_EINVAL;
    size_t keep = (size_t)(rest - vkey) + (rl < US_SHARD_PREFIX ? rl : US_SHARD_PREFIX);
    memcpy(out, vkey, keep);
    *out_len = keep;
    return 0;
}

static int shard_init(void **out, const uint8_t *fkey, size_t len, void *payload)
{
    (void)fkey, (void)len, (void)payload;
    *out = calloc(1, sizeof(name_shard));
    return *out ? 0 : ES_ENOMEM;
}

static void shard_free(void *p, void *payload)
{
    name_shard *s = p;
    (void)payload;
    if (s)
        free(s->v);
    free(s);
}

static int shard_remove_id(name_shard *s, int64_t id)
{
    for (size_t i = 0; i < s->n; i++) {
        if (s->v[i].id == id) {
            s->v[i] = s->v[--s->n];
            return 1;
        }
    }
    return 0;
}

static int shard_apply(void *acc, const es_event *ev, const uint8_t *fkey, size_t len,
                       void *payload)
{
    name_shard *s = acc;
    us_event e;
    int64_t company;
    const uint8_t *prefix;
    size_t pl;
    (void)payload;
    if (split_key(&company, &prefix, &pl, fkey, len) < 0)
        return ES_EINVAL;
    if (us_event_decode(&e, ev) < 0)
        return ES_FOLD_UNCHANGED;
    if (e.kind == US_DELETE_USER)
        return shard_remove_id(s, e.id) ? ES_FOLD_CHANGED : ES_FOLD_UNCHANGED;
    if (e.kind != US_INSERT_USER)
        return ES_FOLD_UNCHANGED;
    /* A re-insert may rename the user: its old username leaves whatever shard held it. */
    int changed = shard_remove_id(s, e.id);
    size_t ul = strlen(e.username);
    size_t want = ul < US_SHARD_PREFIX ? ul : US_SHARD_PREFIX;
    if (want == pl && memcmp(e.username, prefix, pl) == 0) {
        if (s->n == s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 4;
            name_entry *p = realloc(s->v, cap * sizeof *p);
            if (!p)
                return ES_ENOMEM;
            s->v = p;
            s->cap = cap;
        }
        strcpy(s->v[s->n].username, e.username);
        s->v[s->n].id = e.id;
        s->n++;
        changed = 1;
    }
    return changed ? ES_FOLD_CHANGED : ES_FOLD_UNCHANGED;
}

static int shard_encode(es_buf *out, const void *acc, void *payload)
{
    const name_shard *s = acc;
    (void)payload;
    return es_buf_put(out, s->v, s->n * sizeof *s->v);
}

static int shard_decode(void **out, const uint8_t *data, size_t len, void *payload)
{
    (void)payload;
    if (len % sizeof(name_entry))
        return ES_ECORRUPT;
    name_shard *s = calloc(1, sizeof *s);
    if (!s)
        return ES_ENOMEM;
    s->n = s->cap = len / sizeof(name_entry);
    if (s->n) {
        if (!(s->v = malloc(len))) {
            free(s);
            return ES_ENOMEM;
        }
        memcpy(s->v, data, len);
        for (size_t i = 0; i < s->n; i++)
            s->v[i].username[US_TEXT - 1] = 0;
    }
    *out = s;
    return 0;
}

static int shard_select(void **out, const void *acc, const uint8_t *vkey, size_t vkey_len,
                        void *payload)
{
    const name_shard *s = acc;
    int64_t company;
    const uint8_t *name;
    size_t nl;
    (void)payload;
    if (split_key(&company, &name, &nl, vkey, vkey_len) < 0)
        return ES_EINVAL;
    for (size_t i = 0; i < s->n; i++) {
        if (strlen(s->v[i].username) == nl && memcmp(s->v[i].username, name, nl) == 0) {
            int64_t *id = malloc(sizeof *id);
            if (!id)
                return ES_ENOMEM;
            *id = s->v[i].id;
            *out = id;
            return ES_SNAP_VALUE;
        }
    }
    return ES_SNAP_NONE;
}

static const es_view_def user_by_name_def = {
    .version = ES_VIEW_DEF_VERSION,
    .name = "UserByName",
    .view_version = 1,
    .stream_key = company_stream_key,
    .shard_key = name_shard_key,
    .init = shard_init,
    .apply = shard_apply,
    .encode = shard_encode,
    .decode = shard_decode,
    .free_value = shard_free,
    .select = shard_select,
    .free_selected = plain_free,
};

const es_view_def *us_user_by_name(void)
{
    return &user_by_name_def;
}

/* ---- GroupMembersById: "C:G" → us_members ---- */

static int members_init(void **out, const uint8_t *fkey, size_t len, void *payload)
{
    (void)fkey, (void)len, (void)payload;
    *out = calloc(1, sizeof(us_members));
    return *out ? 0 : ES_ENOMEM;
}

static void members_free(void *p, void *payload)
{
    us_members *m = p;
    (void)payload;
    if (m)
        free(m->ids);
    free(m);
}

static void members_remove(us_members *m, int64_t user)
{
    for (size_t i = 0; i < m->n; i++) {
        if (m->ids[i] == user) {
            memmove(&m->ids[i], &m->ids[i + 1], (m->n - i - 1) * sizeof *m->ids);
            m->n--;
            return;
        }
    }
}

static int members_apply(void *acc, const es_event *ev, const uint8_t *fkey, size_t len,
                         void *payload)
{
    us_members *m = acc;
    us_event e;
    int64_t company, group;
    const uint8_t *rest;
    size_t rl;
    (void)payload;
    if (split_key(&company, &rest, &rl, fkey, len) < 0 || parse_id(&group, rest, rl) < 0)
        return ES_EINVAL;
    if (us_event_decode(&e, ev) < 0 || e.group != group)
        return ES_FOLD_UNCHANGED;
    if (e.kind == US_ADD_USER_TO_GROUP) {
        /* As in the talk: the newest member first, no duplicates. */
        members_remove(m, e.user);
        if (m->n == m->cap) {
            size_t cap = m->cap ? m->cap * 2 : 4;
            int64_t *p = realloc(m->ids, cap * sizeof *p);
            if (!p)
                return ES_ENOMEM;
            m->ids = p;
            m->cap = cap;
        }
        memmove(&m->ids[1], &m->ids[0], m->n * sizeof *m->ids);
        m->ids[0] = e.user;
        m->n++;
        return ES_FOLD_CHANGED;
    }
    if (e.kind == US_REMOVE_USER_FROM_GROUP) {
        members_remove(m, e.user);
        return ES_FOLD_CHANGED;
    }
    return ES_FOLD_UNCHANGED;
}

static int members_encode(es_buf *out, const void *acc, void *payload)
{
    const us_members *m = acc;
    (void)payload;
    return es_buf_put(out, m->ids, m->n * sizeof *m->ids);
}

static int members_decode(void **out, const uint8_t *data, size_t len, void *payload)
{
    (void)payload;
    if (len % sizeof(int64_t))
        return ES_ECORRUPT;
    us_members *m = calloc(1, sizeof *m);
    if (!m)
        return ES_ENOMEM;
    m->n = m->cap = len / sizeof(int64_t);
    if (m->n) {
        if (!(m->ids = malloc(len))) {
            free(m);
            return ES_ENOMEM;
        }
        memcpy(m->ids, data, len);
    }
    *out = m;
    return 0;
}

static const es_view_def members_def = {
    .version = ES_VIEW_DEF_VERSION,
    .name = "GroupMembersById",
    .view_version = 1,
    .stream_key = company_stream_key,
    .init = members_init,
    .apply = members_apply,
    .encode = members_encode,
    .decode = members_decode,
    .free_value = members_free,
};

const es_view_def *us_group_members(void)
{
    return &members_def;
}

/* ---- save_user ---- */

typedef struct save_user_ctx {
    const us_user *u;
    const uint8_t *event_id;
} save_user_ctx;

/* Emit InsertUser for u (the same in both ways of saving a user). */
static int emit_insert_user(es_op_ctx *ctx, const us_user *u, const uint8_t *event_id)
{
    es_buf buf = ES_BUF_INIT;
    es_event_new ev;
    us_event e = {.kind = US_INSERT_USER, .id = u->id};
    int rc;
    strcpy(e.name, u->name);
    strcpy(e.username, u->username);
    if ((rc = us_event_new(&ev, &buf, &e)) == 0) {
        ev.id = event_id;
        rc = es_op_emit(ctx, &ev);
    }
    es_buf_free(&buf);
    return rc;
}

static int save_user_run(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    const save_user_ctx *c = op->payload;

    /* Unique per company, unless it is the same user. */
    if (snap->state == ES_SNAP_VALUE && *(const int64_t *)snap->value != c->u->id)
        return es_op_reject(ctx, "duplicate username");
    return emit_insert_user(ctx, c->u, c->event_id);
}

int us_save_user(es_save_result *out, es_view *by_name, int64_t company, const us_user *u,
                 const uint8_t *event_id)
{
    char key[32 + US_TEXT];
    if (!u || !text_ok(u->name) || !text_ok(u->username))
        return ES_EINVAL;
    int n = snprintf(key, sizeof key, "%" PRId64 ":%s", company, u->username);
    save_user_ctx c = {u, event_id};
    es_op op = {.run = save_user_run, .payload = &c};
    return es_save(out, by_name, key, (size_t)n, &op, 1, NULL);
}

/* ---- save_user, the second way: a stream per user, a claim per username ----
 *
 * With one stream per company, every save of a user checks the username
 * against the company's whole stream, so any unrelated company event makes
 * a racing save retry.  Here each user has a stream of their own and each
 * username a claim stream; a save appends the user's event, the new claim
 * and the release of the old one in ONE commit (es_op_emit_to), each claim
 * at the exact head it was read at. */

int us_user_stream(char *out, size_t cap, int64_t company, int64_t user)
{
    int n = snprintf(out, cap, "company/%" PRId64 "/user/%" PRId64, company, user);
    return n > 0 && (size_t)n < cap ? n : ES_EINVAL;
}

int us_username_stream(char *out, size_t cap, int64_t company, const char *username)
{
    int n = snprintf(out, cap, "company/%" PRId64 "/username/%s", company, username);
    return n > 0 && (size_t)n < cap ? n : ES_EINVAL;
}

/* The user a username's claim stream gives it to (0: free), and its head. */
static int claim_owner(int64_t *owner, uint64_t *head, es_store *st, const char *k, size_t n)
{
    es_read_options o = ES_READ_OPTIONS_INIT;
    es_cursor *c;
    const es_event *ev;
    int rc;
    *owner = 0;
    *head = 0;
    o.backward = 1;
    o.limit = 1;
    if ((rc = es_stream_cursor(&c, st, k, n, &o)) < 0)
        return rc;
    if ((rc = es_cursor_next(&ev, c)) == 0) {
        *head = ev->seq;
        if (ev->type_len == 15 && memcmp(ev->type, "UsernameClaimed", 15) == 0) {
            json_t *j = json_loadb((const char *)ev->data, ev->data_len, 0, NULL);
            json_int_t id = 0;
            if (!j || json_unpack(j, "{s:I}", "id", &id) != 0 || id <= 0)
                rc = ES_ECORRUPT;
            json_decref(j);
            *owner = id;
        }
    }
    es_cursor_free(c);
    return rc == ES_ITEROVER ? 0 : rc;
}

static int emit_claim(es_op_ctx *ctx, const char *stream, uint64_t head, const char *type,
                      int64_t user)
{
    char data[48];
    int n = snprintf(data, sizeof data, "{\"v\":1,\"id\":%" PRId64 "}", user);
    es_event_new ev = {.type = type, .data = data, .data_len = (size_t)n};
    return es_op_emit_to(ctx, stream, strlen(stream), head, &ev);
}

typedef struct claim_ctx {
    es_store *st;
    int64_t company;
    const us_user *u;
    const uint8_t *event_id;
} claim_ctx;

static int save_claimed_run(es_op_ctx *ctx, const es_snapshot *snap, const es_op *op)
{
    const claim_ctx *c = op->payload;
    const us_user *old = snap->state == ES_SNAP_VALUE ? snap->value : NULL;
    char claim[96], old_claim[96];
    int64_t owner;
    uint64_t head;
    int rc, n;

    if ((n = us_username_stream(claim, sizeof claim, c->company, c->u->username)) < 0)
        return n;
    if ((rc = claim_owner(&owner, &head, c->st, claim, (size_t)n)) < 0)
        return rc;
    if (owner && owner != c->u->id)
        return es_op_reject(ctx, "duplicate username");
    if (!owner && (rc = emit_claim(ctx, claim, head, "UsernameClaimed", c->u->id)) < 0)
        return rc;
    if (old && strcmp(old->username, c->u->username) != 0) {
        /* a rename frees the old name, in the same commit */
        if ((n = us_username_stream(old_claim, sizeof old_claim, c->company, old->username)) < 0)
            return n;
        if ((rc = claim_owner(&owner, &head, c->st, old_claim, (size_t)n)) < 0)
            return rc;
        if (owner == c->u->id &&
            (rc = emit_claim(ctx, old_claim, head, "UsernameReleased", c->u->id)) < 0)
            return rc;
    }
    return emit_insert_user(ctx, c->u, c->event_id);
}

/* UserByStream: a plain-struct view (value_size) over a user's own stream;
 * the view key is the stream key. */
static int user_pod_apply(void *acc, const es_event *ev, const uint8_t *fkey, size_t fkey_len,
                          void *payload)
{
    (void)fkey, (void)fkey_len, (void)payload;
    us_user *u = acc;
    us_event e;
    if (us_event_decode(&e, ev) < 0)
        return ES_FOLD_UNCHANGED;
    switch (e.kind) {
    case US_INSERT_USER:
        u->id = e.id;
        strcpy(u->name, e.name);
        strcpy(u->username, e.username);
        return ES_FOLD_CHANGED;
    case US_SET_API_KEY:
        strcpy(u->apikey, e.key);
        return ES_FOLD_CHANGED;
    case US_DELETE_USER:
        return ES_FOLD_DELETED;
    default:
        return ES_FOLD_UNCHANGED;
    }
}

static const es_view_def user_by_stream_def = {
    .version = ES_VIEW_DEF_VERSION,
    .name = "UserByStream",
    .view_version = 1,
    .apply = user_pod_apply,
    .value_size = sizeof(us_user),
};

const es_view_def *us_user_by_stream(void)
{
    return &user_by_stream_def;
}

int us_save_user_claimed(es_save_result *out, es_view *by_stream, es_store *st, int64_t company,
                         const us_user *u, const uint8_t *event_id)
{
    char key[64];
    if (!u || u->id <= 0 || !text_ok(u->name) || !text_ok(u->username) || strchr(u->username, '/'))
        return ES_EINVAL;
    int n = us_user_stream(key, sizeof key, company, u->id);
    if (n < 0)
        return n;
    claim_ctx c = {st, company, u, event_id};
    es_op op = {.run = save_claimed_run, .payload = &c};
    return es_save(out, by_stream, key, (size_t)n, &op, 1, NULL);
}

/* ---- the audit question ---- */

int us_count_api_key_changes(uint64_t *out, es_store *st, int64_t company, int64_t since_us)
{
    char stream[64];
    es_read_options o = ES_READ_OPTIONS_INIT;
    es_cursor *c;
    const es_event *ev;
    int rc, n = us_company_stream(stream, sizeof stream, company);

    *out = 0;
    if (n < 0)
        return n;
    /* Newest first; stop at the first event older than the window. */
    o.backward = 1;
    if ((rc = es_stream_cursor(&c, st, stream, (size_t)n, &o)) < 0)
        return rc;
    while ((rc = es_cursor_next(&ev, c)) == 0 && ev->time_us >= since_us) {
        if (ev->type_len == 9 && memcmp(ev->type, "SetAPIKey", 9) == 0)
            (*out)++;
    }
    es_cursor_free(c);
    return rc == ES_ITEROVER || rc == 0 ? 0 : rc;
}

/* The audit question over the per-user layout: the global log, only this
 * company's streams and SetAPIKey events, from since_us on (the log cursor
 * seeks to the time instead of reading the years before it). */
int us_count_api_key_changes_log(uint64_t *out, es_store *st, int64_t company, int64_t since_us)
{
    char prefix[48];
    es_log_options o = ES_LOG_OPTIONS_INIT;
    es_cursor *c;
    const es_event *ev;
    int rc, n = snprintf(prefix, sizeof prefix, "company/%" PRId64 "/", company);

    *out = 0;
    if (n < 0 || (size_t)n >= sizeof prefix || since_us < 0)
        return ES_EINVAL;
    o.prefix = prefix;
    o.prefix_len = (size_t)n;
    o.type = "SetAPIKey";
    o.from_time_us = since_us;
    if ((rc = es_log_cursor(&c, st, &o)) < 0)
        return rc;
    while ((rc = es_cursor_next(&ev, c)) == 0)
        (*out)++;
    es_cursor_free(c);
    return rc == ES_ITEROVER ? 0 : rc;
}

/* ---- tables ---- */

static int push(void **v, size_t *n, size_t size)
{
    void *p = realloc(*v, (*n + 1) * size);
    if (!p)
        return ES_ENOMEM;
    *v = p;
    memset((char *)p + *n * size, 0, size);
    (*n)++;
    return 0;
}

static us_user *find_user(us_tables *t, int64_t id)
{
    for (size_t i = 0; i < t->n_users; i++)
        if (t->users[i].id == id)
            return &t->users[i];
    return NULL;
}

static int apply_table(us_tables *t, const us_event *e)
{
    us_user *u;
    switch (e->kind) {
    case US_INSERT_GROUP:
        if (push((void **)&t->groups, &t->n_groups, sizeof *t->groups) < 0)
            return ES_ENOMEM;
        t->groups[t->n_groups - 1].id = e->group;
        strcpy(t->groups[t->n_groups - 1].name, e->name);
        return 0;
    case US_INSERT_USER:
        if (!(u = find_user(t, e->id))) {
            if (push((void **)&t->users, &t->n_users, sizeof *t->users) < 0)
                return ES_ENOMEM;
            u = &t->users[t->n_users - 1];
        }
        u->id = e->id;
        strcpy(u->name, e->name);
        strcpy(u->username, e->username);
        return 0;
    case US_DELETE_USER:
        if ((u = find_user(t, e->id)))
            *u = t->users[--t->n_users];
        for (size_t i = 0; i < t->n_memberships;)
            if (t->memberships[i].user == e->id)
                t->memberships[i] = t->memberships[--t->n_memberships];
            else
                i++;
        return 0;
    case US_SET_API_KEY:
        if ((u = find_user(t, e->id)))
            strcpy(u->apikey, e->key);
        return 0;
    case US_ADD_USER_TO_GROUP:
        for (size_t i = 0; i < t->n_memberships; i++)
            if (t->memberships[i].group == e->group && t->memberships[i].user == e->user)
                return 0;
        if (push((void **)&t->memberships, &t->n_memberships, sizeof *t->memberships) < 0)
            return ES_ENOMEM;
        t->memberships[t->n_memberships - 1].group = e->group;
        t->memberships[t->n_memberships - 1].user = e->user;
        return 0;
    case US_REMOVE_USER_FROM_GROUP:
        for (size_t i = 0; i < t->n_memberships; i++) {
            if (t->memberships[i].group == e->group && t->memberships[i].user == e->user) {
                memmove(&t->memberships[i], &t->memberships[i + 1],
                        (t->n_memberships - i - 1) * sizeof *t->memberships);
                t->n_memberships--;
                break;
            }
        }
        return 0;
    default:
        return 0;
    }
}

int us_tables_build(us_tables *out, es_store *st, int64_t company, uint64_t upto_seq)
{
    char stream[64];
    es_read_options o = ES_READ_OPTIONS_INIT;
    es_cursor *c;
    const es_event *ev;
    us_event e;
    int rc, n = us_company_stream(stream, sizeof stream, company);

    memset(out, 0, sizeof *out);
    if (n < 0)
        return n;
    o.to_seq = upto_seq;
    if ((rc = es_stream_cursor(&c, st, stream, (size_t)n, &o)) < 0)
        return rc;
    while ((rc = es_cursor_next(&ev, c)) == 0) {
        if (us_event_decode(&e, ev) == 0 && (rc = apply_table(out, &e)) < 0)
            break;
    }
    es_cursor_free(c);
    if (rc != ES_ITEROVER) {
        us_tables_free(out);
        return rc;
    }
    return 0;
}

void us_tables_free(us_tables *t)
{
    free(t->users);
    free(t->groups);
    free(t->memberships);
    memset(t, 0, sizeof *t);
}
