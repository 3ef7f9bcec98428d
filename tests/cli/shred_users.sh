#!/bin/sh
# Crypto-shredding in the users example (issue 12): the demo's events under
# the rule `company/`, a second company, the users model (users.proj) built,
# then `esrc forget company/1` and `esrc project --rebuild`: the company's
# users, groups, memberships and search entries are gone from the model, the
# audit table still has one row per event (the forgotten ones with empty
# data), and the other company is untouched.
#
# The demo keeps one stream per company ("company/<id>", every user's events
# in it), so the finest subject this layout allows is a company; a
# per-user subject needs a stream per user (doc/crypto-shredding.md).
# usage: shred_users.sh ESRC USERS_PROJ
set -u
ESRC=$1
USERS=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
. "$(dirname "$0")/check.sh"
command -v sqlite3 >/dev/null || { echo "FAIL: the sqlite3 shell is needed"; exit 1; }
S="lmdb:$T/store?nosync"
head -c 32 /dev/urandom >"$T/mk"
unset ESRC_MASTER_KEY_FILE
k() { "$ESRC" --store "$S" --master-key "$T/mk" "$@"; }
q() { sqlite3 -cmd ".timeout 10000" "$T/u.db" "$1"; }
quiet() { "$@" >/dev/null; }

ok "init" quiet k init
ok "shred company/" quiet k shred company/
ok "the demo under the rule" quiet k demo
ok "company 2: a group" quiet k append company/2 InsertGroup '{"v":1,"group":1,"name":"Flanders"}'
ok "company 2: Ned" quiet k append company/2 InsertUser '{"v":1,"id":1,"name":"Ned","username":"ned"}'
ok "the store's file has no plaintext of the demo (Homer)" \
    [ "$(grep -c Homer "$T/store/data.mdb")" = 0 ]
ok "control: the demo without the rule leaves Homer in the file" \
    sh -c '"$1" --store "lmdb:$2/plain?nosync" demo >/dev/null && grep -q Homer "$2/plain/data.mdb"' \
    sh "$ESRC" "$T"

check "project" 0 "projected users into sqlite:TMP/u.db: 15 events, at position 15" "" \
    -- k project "$USERS" --to "sqlite:$T/u.db"
check "users before the forget" 0 "1|1|Homer|homer|d0a
1|2|Bart|bart|f00
1|3|Maggie|maggie|baa
2|1|Ned|ned|" "" -- q "SELECT * FROM users ORDER BY 1, 2"
check "audit before the forget" 0 "1|13
2|2" "" -- q "SELECT company, count(*) FROM audit GROUP BY 1 ORDER BY 1"

check "forget company/1" 0 "forgot company/1" "" -- "$ESRC" --store "$S" forget company/1
# a model is a derived copy: it keeps what it was given until rebuilt
check "the model still has company 1 until rebuilt" 0 "3" "" \
    -- q "SELECT count(*) FROM users WHERE company = 1"
check "rebuild without the master key stops (company 2 is locked)" 2 "" \
    "esrc: project: $USERS: the event at position 14 (type InsertGroup) is encrypted and cannot be read without the store's master key (--master-key)" \
    -- "$ESRC" --store "$S" project "$USERS" --to "sqlite:$T/u.db" --rebuild
check "rebuild" 0 "rebuilt users into sqlite:TMP/u.db: 15 events, at position 15" "" \
    -- k project "$USERS" --to "sqlite:$T/u.db" --rebuild
check "users: company 1 gone, Ned kept" 0 "2|1|Ned|ned|" "" -- q "SELECT * FROM users ORDER BY 1, 2"
check "groups: company 1 gone" 0 "2|1|Flanders" "" -- q "SELECT * FROM groups ORDER BY 1, 2"
check "memberships: company 1 gone" 0 "0" "" -- q "SELECT count(*) FROM users_groups"
check "search: Homer not found, Ned found" 0 "2|1|Ned" "" \
    -- q "SELECT company, id, name FROM users_fts WHERE users_fts MATCH 'homer OR ned'"
check "audit: the same count, company 1's rows without data" 0 "1|13|13
2|2|0" "" -- q "SELECT company, count(*), sum(data = '') FROM audit GROUP BY 1 ORDER BY 1"
check "audit: the talk's rows keep their times and types" 0 "9|2026-09-01 10:00:00|InsertUser|
10|2026-09-01 10:00:00|SetAPIKey|
11|2026-09-01 10:10:00|AddUserToGroup|
12|2026-10-15 16:45:00|SetAPIKey|
13|2026-11-20 11:20:00|RemoveUserFromGroup|" "" -- \
    q "SELECT seq, time, event, data FROM audit WHERE company = 1 AND time >= '2026-09-01' ORDER BY position"
ok "the rebuilt model's file has no Homer" [ "$(grep -c -i homer "$T/u.db")" = 0 ]

echo "# $n checks, $fails failed, $skipped skipped"
[ $fails -eq 0 ]
