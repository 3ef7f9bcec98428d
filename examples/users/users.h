/*
 * users.h — the talk's users-and-groups domain, written as an application
 * of libeventsrc would write it, with the public API only.
 *
 * One stream per company ("company/<id>").  Events (type name → JSON data,
 * encoding version 1; every object carries "v":1 and readers reject other
 * versions):
 *
 *   InsertGroup          {"v":1,"group":G,"name":S}
 *   InsertUser           {"v":1,"id":U,"name":S,"username":S}   (also re-saves/renames)
 *   DeleteUser           {"v":1,"id":U}
 *   SetAPIKey            {"v":1,"id":U,"key":S}
 *   AddUserToGroup       {"v":1,"group":G,"user":U}
 *   RemoveUserFromGroup  {"v":1,"group":G,"user":U}
 *
 * InsertGroup is not in the talk's list; the groups table needs a name.
 *
 * Views (view keys are text):
 *   UserById          "C:U"        → us_user
 *   UserByName        "C:username" → user id (int64_t), sharded per
 *                     (company, first three bytes of the username)
 *   GroupMembersById  "C:G"        → us_members (most recently added first)
 */
#ifndef US_USERS_H
#define US_USERS_H

#include <eventsrc.h>

#define US_TEXT 64 /* names, usernames and keys: 1..63 bytes */

typedef enum us_kind {
    US_INSERT_GROUP,
    US_INSERT_USER,
    US_DELETE_USER,
    US_SET_API_KEY,
    US_ADD_USER_TO_GROUP,
    US_REMOVE_USER_FROM_GROUP,
    US_KIND_COUNT
} us_kind;

typedef struct us_event {
    us_kind kind;
    int64_t id;    /* user id (InsertUser, DeleteUser, SetAPIKey) */
    int64_t group; /* group id */
    int64_t user;  /* user id (group membership events) */
    char name[US_TEXT];
    char username[US_TEXT];
    char key[US_TEXT];
} us_event;

typedef struct us_user {
    int64_t id;
    char name[US_TEXT];
    char username[US_TEXT];
    char apikey[US_TEXT];
} us_user;

typedef struct us_members {
    int64_t *ids;
    size_t n, cap;
} us_members;

/** The type name of an event kind, e.g. "InsertUser". */
const char *us_type_name(us_kind kind);
/** Encode an event's data (JSON) into out and fill ev (type, data) to
 *  append; ev->data points into out. @return 0 or an ES_E* code. */
int us_event_new(es_event_new *ev, es_buf *out, const us_event *e);
/** Decode a stored event. @return 0, ES_EINVAL (not a users event or bad data). */
int us_event_decode(us_event *out, const es_event *ev);
/** One line describing an event, e.g. "InsertUser(3, Maggie)". */
void us_event_describe(char *out, size_t cap, const us_event *e);

/** Stream key of a company: "company/<id>". */
int us_company_stream(char *out, size_t cap, int64_t company);

const es_view_def *us_user_by_id(void);
const es_view_def *us_user_by_name(void);
const es_view_def *us_group_members(void);

/** Save a user with the rule "username unique per company, unless it is
 *  the same user": a save on UserByName for (company, username). */
int us_save_user(es_save_result *out, es_view *by_name, int64_t company, const us_user *u,
                 const uint8_t *event_id);

/** The same rule the second way, with no stream per company: the user's
 *  events go to "company/C/user/U" (view UserByStream, a plain struct) and
 *  each username has a claim stream "company/C/username/NAME"; the user's
 *  event, the claim and the release of a renamed user's old name land in one
 *  commit.  Saves of different users never conflict unless they want the
 *  same name.  `by_stream` is a view of us_user_by_stream(). */
int us_user_stream(char *out, size_t cap, int64_t company, int64_t user);
int us_username_stream(char *out, size_t cap, int64_t company, const char *username);
const es_view_def *us_user_by_stream(void);
int us_save_user_claimed(es_save_result *out, es_view *by_stream, es_store *st, int64_t company,
                         const us_user *u, const uint8_t *event_id);

/** The audit question: how many SetAPIKey events in the company's stream
 *  were committed at or after since_us? */
int us_count_api_key_changes(uint64_t *out, es_store *st, int64_t company, int64_t since_us);

/** The audit question over the per-user layout (us_save_user_claimed): the
 *  global log filtered by the company's prefix, the type and a time range. */
int us_count_api_key_changes_log(uint64_t *out, es_store *st, int64_t company, int64_t since_us);

/** Tables derived from a company's events (a fold over the whole stream). */
typedef struct us_tables {
    us_user *users;
    size_t n_users;
    struct us_group {
        int64_t id;
        char name[US_TEXT];
    } * groups;
    size_t n_groups;
    struct us_membership {
        int64_t group, user;
    } * memberships;
    size_t n_memberships;
} us_tables;

int us_tables_build(us_tables *out, es_store *st, int64_t company, uint64_t upto_seq);
void us_tables_free(us_tables *t);

#endif
