#!/bin/sh
# `esrc project` into PostgreSQL, black-box, from an lmdb store (dense
# positions, so outputs are exact): the users example after the demo gives
# the talk's final tables and the demo's audit answer; the search index
# (tsvector + GIN) finds "hom:*" and follows renames and deletes; --status
# shows the lag; bad files stop with FILE:LINE and leave the model at its
# last good batch; --rebuild builds a new schema and swaps it in, readers
# seeing the old model or the new one, never a mix.  Each model lives in a
# schema of its own on the server ES_TEST_PG_URI names (skipped, 77, without
# one); the schemas are dropped at the end.
# usage: project_pg_test.sh ESRC USERS_PG_PROJ
set -u
ESRC=$1
USERS=$2
if [ -z "${ES_TEST_PG_URI:-}" ]; then
    echo "SKIPPED: no PostgreSQL server given (set ES_TEST_PG_URI)"
    exit 77
fi
command -v psql >/dev/null || { echo "FAIL: the psql client is needed"; exit 1; }
T=$(mktemp -d)
P=es_pt_$$ # the schemas' prefix
cleanup() {
    psql "$ES_TEST_PG_URI" -AtqX -c "SELECT format('DROP SCHEMA %I CASCADE;', nspname)
        FROM pg_namespace WHERE nspname LIKE '${P}%'" 2>/dev/null |
        psql "$ES_TEST_PG_URI" -qX >/dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT
. "$(dirname "$0")/check.sh"
# the target of schema $1
to() {
    case $ES_TEST_PG_URI in
    *\?*) echo "$ES_TEST_PG_URI&schema=$P$1" ;;
    *) echo "$ES_TEST_PG_URI?schema=$P$1" ;;
    esac
}
# q SCHEMA SQL: rows as a|b|c lines
q() { psql "$ES_TEST_PG_URI" -AtqX -c "SET search_path TO $P$1" -c "$2"; }
norm() { sed -e "s|$T|TMP|g" -e "s|$(to u)|PG(u)|g" -e "s|$P|S_|g" "$1"; }
# dump SCHEMA: every table of a model, in a stable order
dump() {
    for t in $(q "$1" "SELECT tablename FROM pg_tables WHERE schemaname = '$P$1' ORDER BY 1"); do
        echo "== $t"
        if [ "$t" = eventsrc_projection ]; then
            q "$1" "SELECT name, position, events, definition FROM $t ORDER BY name"
        else
            q "$1" "SELECT * FROM $t ORDER BY 1, 2, 3"
        fi
    done
}
S=lmdb:$T/store
"$ESRC" --store "$S" demo >/dev/null || { echo "FAIL: demo"; exit 1; }

# ---- the talk's tables ----
check "users after the demo" 0 "projected users into PG(u): 13 events, at position 13" "" -- \
    "$ESRC" --store "$S" project "$USERS" --to "$(to u)"
check "users table" 0 "1|Homer|homer|d0a
2|Bart|bart|f00
3|Maggie|maggie|baa" "" -- q u "SELECT id, name, username, apikey FROM users ORDER BY id"
check "groups table" 0 "1|Simpsons
2|Flanders" "" -- q u "SELECT id, name FROM groups ORDER BY id"
check "users_groups: the Simpsons are Bart and Maggie" 0 "1|2
1|3" "" -- q u "SELECT group_id, user_id FROM users_groups ORDER BY 1, 2"
check "the audit answer is the demo's" 0 "2" "" -- \
    q u "SELECT count(*) FROM audit WHERE event = 'SetAPIKey' AND time >= '2026-05-28 21:00:00'"
check "audit rows" 0 "9|2026-09-01 10:00:00|InsertUser
10|2026-09-01 10:00:00|SetAPIKey
11|2026-09-01 10:10:00|AddUserToGroup
12|2026-10-15 16:45:00|SetAPIKey
13|2026-11-20 11:20:00|RemoveUserFromGroup" "" -- \
    q u "SELECT seq, time, event FROM audit WHERE time >= '2026-09-01' ORDER BY position"
check "the checkpoint is in the model's schema" 0 "users|13|13" "" -- \
    q u "SELECT name, position, events FROM eventsrc_projection"
check "a second run applies nothing" 0 "projected users into PG(u): 0 events, at position 13" "" -- \
    "$ESRC" --store "$S" project "$USERS" --to "$(to u)"

# ---- the search index ----
check "search: hom:* finds Homer" 0 "1|Homer" "" -- \
    q u "SELECT id, name FROM users WHERE search @@ to_tsquery('simple', 'hom:*')"
check "search: answered from the GIN index" 0 "users_search" "" -- sh -c \
    "psql '$ES_TEST_PG_URI' -AtqX -c 'SET search_path TO ${P}u' -c 'SET enable_seqscan = off' \
     -c \"EXPLAIN SELECT id FROM users WHERE search @@ to_tsquery('simple', 'hom:*')\" |
     grep -o 'users_search' | head -1"
"$ESRC" --store "$S" append company/1 InsertUser '{"v":1,"id":1,"name":"Max Power","username":"homer"}' >/dev/null
"$ESRC" --store "$S" append company/1 DeleteUser '{"v":1,"id":3}' >/dev/null
check "status: 2 events behind" 0 "projection:  users
target:      PG(u)
model:       built by this file
head:        15
behind:      2 events" "" -- sh -c \
    "'$ESRC' --store '$S' project '$USERS' --to '$(to u)' --status | grep -v '^checkpoint' | sed 's/, the oldest.*//'"
check "status: the checkpoint" 0 "checkpoint:  13 (13 events applied" "" -- sh -c \
    "'$ESRC' --store '$S' project '$USERS' --to '$(to u)' --status | grep '^checkpoint' | sed 's/, last at.*//'"
"$ESRC" --store "$S" project "$USERS" --to "$(to u)" >/dev/null
check "search: the rename is found" 0 "1|Max Power" "" -- \
    q u "SELECT id, name FROM users WHERE search @@ to_tsquery('simple', 'power')"
check "search: the old name is gone" 0 "" "" -- \
    q u "SELECT id, name FROM users WHERE to_tsvector('simple', name) @@ to_tsquery('simple', 'hom:*')"
check "search: the deleted user is gone" 0 "" "" -- \
    q u "SELECT id, name FROM users WHERE search @@ to_tsquery('simple', 'maggie')"
check "status: caught up" 0 "behind:      0 events" "" -- sh -c \
    "'$ESRC' --store '$S' project '$USERS' --to '$(to u)' --status | grep '^behind'"

# ---- bad files: FILE:LINE, exit 2, the model at its last good batch ----
dump u >"$T/before"
printf 'name users\nprefix company/\non InsertUser\n    UPDATE users SET name = :data.nme WHERE id = :nope;\n' >"$T/field.proj"
check "unknown event field" 2 "" \
    "esrc: project: TMP/field.proj:4: unknown event field ':nope' (the fields are :stream :seq :position :time :type :id :data :meta, and :data.PATH :meta.PATH)" \
    -- "$ESRC" --store "$S" project "$T/field.proj" --to "$(to u)"
printf 'name users\nprefix company/\nschema\n    CREATE TABLE users (id integer PRIMARY KEY, name text);\non InsertUser\n    UPDATE users\n      SET nam = :data.name;\n' >"$T/sql.proj"
check "bad SQL (on a rebuild)" 2 "" \
    "esrc: project: TMP/sql.proj:6: column \"nam\" of relation \"users\" does not exist" \
    -- "$ESRC" --store "$S" project "$T/sql.proj" --to "$(to u)" --rebuild
check "bad SQL: no rebuild schema is left" 0 "0" "" -- \
    q u "SELECT count(*) FROM pg_namespace WHERE nspname LIKE '%rebuild%'"
printf 'name users\nprefix company/\nschema\n    CREATE TABLE t (id integer);\non *\n    INSERT INTO t VALUES (:data.name?);\n' >"$T/type.proj"
check "type mismatch" 2 "" \
    "esrc: project: TMP/type.proj:6: invalid input syntax for type integer: \"Simpsons\" (event at position 1, type InsertGroup)" \
    -- "$ESRC" --store "$S" project "$T/type.proj" --to "$(to w)" --batch 5
check "type mismatch: the model is at its last good batch (none)" 0 "0" "" -- \
    q w "SELECT count(*) FROM pg_namespace WHERE nspname = '${P}w'"
printf 'name late\nschema\n    CREATE TABLE t (position bigint CHECK (position < 7));\non *\n    INSERT INTO t VALUES (:position);\n' >"$T/late.proj"
"$ESRC" --store "$S" project "$T/late.proj" --to "$(to l)" --batch 5 >/dev/null 2>"$T/late.err"
ok "a constraint fails in the second batch: exit 2" test $? -eq 2
check "a constraint fails in the second batch: FILE:LINE" 0 \
    "esrc: project: TMP/late.proj:5: new row for relation \"t\" violates check constraint \"t_position_check\" (event at position 7, type AddUserToGroup)" \
    "" -- grep '^esrc:' "$T/late.err"
check "the model is at its last good batch" 0 "5|5
late|5|5" "" -- q l "SELECT count(*), max(position) FROM t; SELECT name, position, events FROM eventsrc_projection"
check "a changed file is refused" 3 "" \
    "esrc: project: postgres schema S_u: the model 'users' was built by another definition of the projection: rebuild it" \
    -- "$ESRC" --store "$S" project "$T/type.proj" --to "$(to u)"
dump u >"$T/after"
ok "the model is unchanged by every bad file" cmp -s "$T/before" "$T/after"

# ---- --rebuild ----
check "rebuild" 0 "rebuilt users into PG(u): 15 events, at position 15" "" -- \
    "$ESRC" --store "$S" project "$USERS" --to "$(to u)" --rebuild
dump u >"$T/rebuilt"
ok "rebuild: the same tables" cmp -s "$T/before" "$T/rebuilt"
check "rebuild: one schema left" 0 "S_u" "" -- \
    q u "SELECT nspname FROM pg_namespace WHERE nspname LIKE '${P}u%'"
check "rebuild: a schema that holds something else is not replaced" 2 "" \
    "esrc: project: postgres schema S_x: holds tables but no projection: not replaced" -- sh -c \
    "psql '$ES_TEST_PG_URI' -qX -c 'CREATE SCHEMA ${P}x' -c 'CREATE TABLE ${P}x.mine (a int)' &&
     '$ESRC' --store '$S' project '$USERS' --to '$(to x)' --rebuild >/dev/null"

# ---- rebuild while appends go on: readers see the old model or the new ----
R=lmdb:$T/rstore
awk 'BEGIN { for (i = 0; i < 2000; i++)
    printf "{\"stream\":\"r/%d\",\"seq\":%d,\"time_us\":1767225601000000,\"id\":\"%032x\",\"type\":\"Tick\",\"data\":\"{}\"}\n",
        i % 4, int(i / 4) + 1, i + 1 }' >"$T/r.jsonl"
"$ESRC" --store "$R" import "$T/r.jsonl" >/dev/null
for v in 1 2; do
    printf 'name r\nschema\n    CREATE TABLE ev (position bigint, version integer);\non *\n    INSERT INTO ev VALUES (:position, %s);\n' $v >"$T/r$v.proj"
done
"$ESRC" --store "$R" project "$T/r1.proj" --to "$(to r)" >/dev/null 2>&1
(
    i=0
    while [ ! -e "$T/rstop" ] && [ $i -lt 200 ]; do
        "$ESRC" --store "$R" append r/9 Tick '{}' >/dev/null
        i=$((i + 1))
    done
) &
rw=$!
(
    # the reader: one version per model, and the model's rows match its
    # checkpoint (one statement: one snapshot)
    while [ ! -e "$T/rstop" ]; do
        psql "$ES_TEST_PG_URI" -AtqX -c "SELECT count(DISTINCT version), min(version),
            count(*) = (SELECT events FROM ${P}r.eventsrc_projection) FROM ${P}r.ev" 2>&1
    done
) >"$T/reads" &
rr=$!
check "rebuild while appending" 0 "" "" -- sh -c \
    "'$ESRC' --store '$R' project '$T/r2.proj' --to '$(to r)' --rebuild --batch 40 >/dev/null 2>'$T/rerr'"
# what the rebuild said, but its progress lines (a failure shows why)
tr '\r' '\n' <"$T/rerr" | grep -v '^rebuilding\|^$' | sed 's/^/# rebuild: /'
sleep 0.3
touch "$T/rstop"
wait $rw $rr
echo "# $(wc -l <"$T/reads") reads during the rebuild"
ok "readers saw only whole models" test "$(grep -cv '^1|[12]|t$' "$T/reads")" -eq 0
ok "readers saw the old model, then the new" sh -c \
    "grep -q '^1|1|t$' '$T/reads' && tail -n 1 '$T/reads' | grep -q '^1|2|t$'"

echo "$n checks, $fails failed, $skipped skipped"
[ "$fails" -eq 0 ]
