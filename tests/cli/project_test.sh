#!/bin/sh
# `esrc project`, black-box, on lmdb stores: the users example after the
# demo gives the talk's final tables and the demo's audit answer; --follow
# keeps them current; bad projection files stop with FILE:LINE and leave the
# model as it was; --rebuild swaps in a whole new model; a changed file is
# refused.  Needs the sqlite3 shell to read the models.
# usage: project_test.sh ESRC USERS_PROJ
set -u
ESRC=$1
USERS=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
. "$(dirname "$0")/check.sh"
command -v sqlite3 >/dev/null || { echo "FAIL: the sqlite3 shell is needed"; exit 1; }
S=lmdb:$T/store
# (readers wait while a commit holds the lock: rollback-journal mode)
q() { sqlite3 -cmd ".timeout 10000" "$1" "$2"; }
# dump DB: every table of a model, in a stable order
dump() {
    # (not FTS5's own tables: how it lays its index out depends on the batches)
    for t in $(q "$1" "SELECT name FROM sqlite_master WHERE type = 'table'
                       AND name NOT GLOB '*_fts_*' ORDER BY name"); do
        echo "== $t"
        if [ "$t" = eventsrc_projection ]; then
            q "$1" "SELECT name, position, events, definition FROM $t ORDER BY name"
        else
            q "$1" "SELECT * FROM $t ORDER BY 1, 2, 3"
        fi
    done
}

"$ESRC" --store "$S" demo >/dev/null || { echo "FAIL: demo"; exit 1; }

# ---- the talk's tables ----
check "users after the demo" 0 "projected users into sqlite:TMP/u.db: 13 events, at position 13" \
    "" -- "$ESRC" --store "$S" project "$USERS" --to "sqlite:$T/u.db"
check "users table" 0 "1|Homer|homer|d0a
2|Bart|bart|f00
3|Maggie|maggie|baa" "" -- q "$T/u.db" "SELECT id, name, username, apikey FROM users ORDER BY id"
check "groups table" 0 "1|Simpsons
2|Flanders" "" -- q "$T/u.db" "SELECT id, name FROM groups ORDER BY id"
check "users_groups: the Simpsons are Bart and Maggie" 0 "1|2
1|3" "" -- q "$T/u.db" "SELECT group_id, user_id FROM users_groups ORDER BY 1, 2"
# The demo asks at 2026-11-27 12:00:00 for the last 6 months: from 2026-05-28 21:00:00.
check "the audit answer is the demo's" 0 "2" "" -- \
    q "$T/u.db" "SELECT count(*) FROM audit WHERE event = 'SetAPIKey' AND time >= '2026-05-28 21:00:00'"
check "audit rows" 0 "9|2026-09-01 10:00:00|InsertUser
10|2026-09-01 10:00:00|SetAPIKey
11|2026-09-01 10:10:00|AddUserToGroup
12|2026-10-15 16:45:00|SetAPIKey
13|2026-11-20 11:20:00|RemoveUserFromGroup" "" -- \
    q "$T/u.db" "SELECT seq, time, event FROM audit WHERE time >= '2026-09-01' ORDER BY position"
# ---- the search index ----
check "search: hom* finds Homer" 0 "1|Homer" "" -- \
    q "$T/u.db" "SELECT id, name FROM users_fts WHERE users_fts MATCH 'hom*'"
check "search: by username" 0 "3|Maggie" "" -- \
    q "$T/u.db" "SELECT id, name FROM users_fts WHERE users_fts MATCH 'username:maggie'"
check "status: caught up" 0 "projection:  users
target:      sqlite:TMP/u.db
model:       built by this file
head:        13
behind:      0 events" "" -- sh -c "'$ESRC' --store '$S' project '$USERS' --to 'sqlite:$T/u.db' --status | grep -v '^checkpoint'"
check "a second run applies nothing" 0 \
    "projected users into sqlite:TMP/u.db: 0 events, at position 13" "" -- \
    "$ESRC" --store "$S" project "$USERS" --to "sqlite:$T/u.db"
check "--json" 0 \
    '{"projection":"users","target":"sqlite:TMP/u.db","events":0,"position":13,"rebuilt":false}' \
    "" -- "$ESRC" --store "$S" --json project "$USERS" --to "sqlite:$T/u.db"

# ---- --follow keeps the model current ----
"$ESRC" --store "$S" project "$USERS" --to "sqlite:$T/u.db" --follow >"$T/follow.out" \
    2>"$T/follow.err" &
pid=$!
"$ESRC" --store "$S" append company/1 InsertUser '{"v":1,"id":4,"name":"Lisa","username":"lisa"}' >/dev/null
"$ESRC" --store "$S" append company/1 AddUserToGroup '{"v":1,"group":1,"user":4}' >/dev/null
i=0
while [ "$(q "$T/u.db" "SELECT count(*) FROM users_groups WHERE user_id = 4")" != 1 ] && [ $i -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done
kill -TERM $pid
wait $pid
status=$?
ok "follow: Lisa joined the Simpsons while it ran" test $i -lt 100
ok "follow: exits 0 on SIGTERM" test $status -eq 0
ok "follow: says it caught up" grep -q "^users: caught up at position 15 (2 events applied)$" "$T/follow.err"

# ---- renames and deletes reach the search index; --status shows the lag ----
"$ESRC" --store "$S" append company/1 InsertUser '{"v":1,"id":1,"name":"Max Power","username":"homer"}' >/dev/null
"$ESRC" --store "$S" append company/1 DeleteUser '{"v":1,"id":3}' >/dev/null
check "status: 2 events behind" 0 "checkpoint:  15
behind:      2 events" "" -- sh -c \
    "'$ESRC' --store '$S' project '$USERS' --to 'sqlite:$T/u.db' --status | grep '^checkpoint\|^behind' | sed 's/ (.*//; s/, the oldest.*//'"
check "status --json" 0 \
    '{"projection":"users","target":"sqlite:TMP/u.db","found":true,"same_definition":true,"checkpoint":15,"events":15,"head":17,"behind":2,"behind_capped":false' \
    "" -- sh -c "'$ESRC' --store '$S' --json project '$USERS' --to 'sqlite:$T/u.db' --status | sed 's/,\"oldest_us\".*//'"
"$ESRC" --store "$S" project "$USERS" --to "sqlite:$T/u.db" >/dev/null
check "search: the rename is found" 0 "1|Max Power" "" -- \
    q "$T/u.db" "SELECT id, name FROM users_fts WHERE users_fts MATCH 'power'"
check "search: the old name is gone" 0 "" "" -- \
    q "$T/u.db" "SELECT id, name FROM users_fts WHERE users_fts MATCH 'name:hom*'"
check "search: the username stays" 0 "1|Max Power" "" -- \
    q "$T/u.db" "SELECT id, name FROM users_fts WHERE users_fts MATCH 'hom*'"
check "search: the deleted user is gone" 0 "" "" -- \
    q "$T/u.db" "SELECT id, name FROM users_fts WHERE users_fts MATCH 'maggie'"
check "search: the index has the users' rows" 0 "1|Max Power|homer
2|Bart|bart
4|Lisa|lisa" "" -- q "$T/u.db" "SELECT id, name, username FROM users_fts ORDER BY id"
check "status: caught up again" 0 "behind:      0 events" "" -- sh -c \
    "'$ESRC' --store '$S' project '$USERS' --to 'sqlite:$T/u.db' --status | grep '^behind'"

# ---- bad files: FILE:LINE, exit 2, the model unchanged ----
dump "$T/u.db" >"$T/before"
printf 'name users\nprefix company/\non InsertUser\n    UPDATE users SET name = :data.nme WHERE id = :nope;\n' >"$T/field.proj"
check "unknown event field" 2 "" \
    "esrc: project: TMP/field.proj:4: unknown event field ':nope' (the fields are :stream :seq :position :time :type :id :data :meta, and :data.PATH :meta.PATH)" \
    -- "$ESRC" --store "$S" project "$T/field.proj" --to "sqlite:$T/u.db"
printf 'name users\nprefix company/\nschema\n    CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);\non InsertUser\n    UPDATE users\n      SET nam = :data.name;\n' >"$T/sql.proj"
# a different file from the one the model was built with: rebuild it into a copy
cp "$T/u.db" "$T/v.db"
check "bad SQL (on a rebuild)" 2 "" \
    "esrc: project: TMP/sql.proj:6: no such column: nam" \
    -- "$ESRC" --store "$S" project "$T/sql.proj" --to "sqlite:$T/v.db" --rebuild
dump "$T/v.db" >"$T/v.after"
ok "bad SQL: the model is unchanged" cmp -s "$T/before" "$T/v.after"
ok "bad SQL: no rebuild file is left" test "$(ls "$T" | grep -c rebuild)" -eq 0
printf 'name users\nprefix company/\nschema\n    CREATE TABLE t (id INTEGER) STRICT;\non *\n    INSERT INTO t VALUES (:data.name?);\n' >"$T/type.proj"
check "type mismatch" 2 "" \
    "esrc: project: TMP/type.proj:6: cannot store TEXT value in INTEGER column t.id (event at position 1, type InsertGroup)" \
    -- "$ESRC" --store "$S" project "$T/type.proj" --to "sqlite:$T/w.db" --batch 5
ok "type mismatch: the model is at its last good batch (none)" \
    test "$(q "$T/w.db" "SELECT count(*) FROM sqlite_master")" = 0
check "a changed file is refused" 3 "" \
    "esrc: project: sqlite:TMP/u.db: the model 'users' was built by another definition of the projection: rebuild it" \
    -- "$ESRC" --store "$S" project "$T/type.proj" --to "sqlite:$T/u.db"
dump "$T/u.db" >"$T/after"
ok "the model is unchanged by every bad file" cmp -s "$T/before" "$T/after"

# ---- --rebuild ----
check "rebuild" 0 "rebuilt users into sqlite:TMP/u.db: 17 events, at position 17" "" -- \
    "$ESRC" --store "$S" project "$USERS" --to "sqlite:$T/u.db" --rebuild
dump "$T/u.db" >"$T/rebuilt"
ok "rebuild: the same tables" cmp -s "$T/before" "$T/rebuilt"
ok "rebuild: no rebuild file is left" test "$(ls "$T" | grep -c rebuild)" -eq 0

# ---- rebuild while appends go on: readers see the old model or the new ----
R=lmdb:$T/rstore
awk 'BEGIN { for (i = 0; i < 2000; i++)
    printf "{\"stream\":\"r/%d\",\"seq\":%d,\"time_us\":1767225601000000,\"id\":\"%032x\",\"type\":\"Tick\",\"data\":\"{}\"}\n",
        i % 4, int(i / 4) + 1, i + 1 }' >"$T/r.jsonl"
"$ESRC" --store "$R" import "$T/r.jsonl" >/dev/null
for v in 1 2; do
    printf 'name r\nschema\n    CREATE TABLE ev (position INTEGER, version INTEGER);\non *\n    INSERT INTO ev VALUES (:position, %s);\n' $v >"$T/r$v.proj"
done
"$ESRC" --store "$R" project "$T/r1.proj" --to "sqlite:$T/r.db" >/dev/null 2>&1
(
    # the writer
    i=0
    while [ ! -e "$T/rstop" ] && [ $i -lt 200 ]; do
        "$ESRC" --store "$R" append r/9 Tick '{}' >/dev/null
        i=$((i + 1))
    done
) &
rw=$!
(
    # the reader: one version per model, and the model's rows match its checkpoint
    while [ ! -e "$T/rstop" ]; do
        q "$T/r.db" "SELECT count(DISTINCT version), min(version),
            count(*) = (SELECT events FROM eventsrc_projection) FROM ev"
    done
) >"$T/reads" &
rr=$!
check "rebuild while appending" 0 "" "" -- sh -c \
    "'$ESRC' --store '$R' project '$T/r2.proj' --to 'sqlite:$T/r.db' --rebuild --batch 40 >/dev/null 2>'$T/rerr'"
sleep 0.3
touch "$T/rstop"
wait $rw $rr
ok "rebuild: plain progress lines off a terminal" grep -q "^rebuilding r: .* events/s, ETA " "$T/rerr"
echo "# $(wc -l <"$T/reads") reads during the rebuild"
ok "readers saw only whole models" test "$(grep -cv '^1|[12]|1$' "$T/reads")" -eq 0
ok "readers saw the old model, then the new" sh -c \
    "grep -q '^1|1|1$' '$T/reads' && tail -n 1 '$T/reads' | grep -q '^1|2|1$'"

# ---- usage ----
check "no --to" 2 "" "esrc: project: --to sqlite:PATH or --to postgres://… is required (see --help)" -- \
    "$ESRC" --store "$S" project "$USERS"
check "no file" 2 "" "esrc: project: no projection file given (see --help)" -- \
    "$ESRC" --store "$S" project --to "sqlite:$T/x.db"
check "missing file" 2 "" "esrc: project: TMP/none.proj: No such file or directory" -- \
    "$ESRC" --store "$S" project "$T/none.proj" --to "sqlite:$T/x.db"
check "bad target" 2 "" "esrc: project: target 'mysql:x' is not sqlite:PATH or postgres://…" -- \
    "$ESRC" --store "$S" project "$USERS" --to mysql:x
check "bad --batch" 2 "" "esrc: --batch must be 1..1000000, not 0 (see --help)" -- \
    "$ESRC" --store "$S" project "$USERS" --to "sqlite:$T/x.db" --batch 0

echo "$n checks, $fails failed, $skipped skipped"
[ "$fails" -eq 0 ]
