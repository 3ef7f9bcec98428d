#!/bin/sh
# Exactly once under SIGKILL: `esrc project --follow` is killed at random
# moments (ROUNDS rounds, seeded: ES_TEST_SEED repeats a run) while a writer
# appends, and restarted each time.  The projection counts and records every
# event with no key that would hide a duplicate, so an event applied twice
# or skipped shows.  At the end the model equals a fresh rebuild of the same
# log, table by table.
#   sqlite: an lmdb store, models in SQLite files;
#   pg: a PostgreSQL store and its models on the same server (the one
#       ES_TEST_PG_URI names; skipped, 77, without one), each in a schema of
#       its own, dropped at the end.
# usage: project_kill.sh ESRC [ROUNDS] [sqlite|pg]
set -u
ESRC=$1
ROUNDS=${2:-24}
KIND=${3:-sqlite}
SEED=${ES_TEST_SEED:-20261127}
echo "[ project_kill ] $KIND rounds=$ROUNDS seed=$SEED (set ES_TEST_SEED to change)"
T=$(mktemp -d)
writer=
P=es_pk_$$
cleanup() {
    [ -n "$writer" ] && kill "$writer" 2>/dev/null
    if [ "$KIND" = pg ]; then
        psql "$ES_TEST_PG_URI" -AtqX -c "SELECT format('DROP SCHEMA %I CASCADE;', nspname)
            FROM pg_namespace WHERE nspname LIKE '${P}%'" 2>/dev/null |
            psql "$ES_TEST_PG_URI" -qX >/dev/null 2>&1
    fi
    rm -rf "$T"
}
trap cleanup EXIT
# with_opt URI OPTION: the URI with one more query option
with_opt() {
    case $1 in
    *\?*) echo "$1&$2" ;;
    *) echo "$1?$2" ;;
    esac
}
case $KIND in
sqlite)
    command -v sqlite3 >/dev/null || { echo "FAIL: the sqlite3 shell is needed"; exit 1; }
    S=lmdb:$T/store
    target() { echo "sqlite:$T/$1.db"; }
    q() { sqlite3 -cmd ".timeout 10000" "$T/$1.db" "$2"; }
    ;;
pg)
    if [ -z "${ES_TEST_PG_URI:-}" ]; then
        echo "SKIPPED: no PostgreSQL server given (set ES_TEST_PG_URI)"
        exit 77
    fi
    command -v psql >/dev/null || { echo "FAIL: the psql client is needed"; exit 1; }
    S=$(with_opt "$ES_TEST_PG_URI" "schema=${P}_store")
    target() { with_opt "$ES_TEST_PG_URI" "schema=${P}_$1"; }
    q() { psql "$ES_TEST_PG_URI" -AtqX -c "SET search_path TO ${P}_$1" -c "$2"; }
    ;;
*) echo "usage: project_kill.sh ESRC [ROUNDS] [sqlite|pg]" >&2; exit 2 ;;
esac

cat >"$T/kill.proj" <<'EOF'
name kill
schema
    CREATE TABLE ev (position BIGINT, stream TEXT, seq INTEGER, n INTEGER);
    CREATE TABLE per_stream (stream TEXT PRIMARY KEY, events INTEGER, last_seq INTEGER);
on *
    INSERT INTO ev VALUES (:position, :stream, :seq, :data.n);
    INSERT INTO per_stream VALUES (:stream, 1, :seq)
        ON CONFLICT (stream) DO UPDATE SET events = per_stream.events + 1, last_seq = excluded.last_seq;
EOF

# The sleeps of the rounds, from the seed: 20 to 400 ms.
awk -v seed="$SEED" -v n="$ROUNDS" 'BEGIN { srand(seed); for (i = 0; i < n; i++)
    printf "%.3f\n", 0.02 + rand() * 0.38 }' >"$T/sleeps"

# A backlog, so that most kills land while the projector catches up batch
# by batch, and then a writer that keeps appending.
awk 'BEGIN { for (i = 0; i < 4000; i++)
    printf "{\"stream\":\"b/%d\",\"seq\":%d,\"time_us\":1767225601000000,\"id\":\"%032x\",\"type\":\"Tick\",\"data\":\"{\\\"n\\\":%d}\"}\n",
        i % 4, int(i / 4) + 1, i + 1, -1 - i }' >"$T/backlog.jsonl"
"$ESRC" --store "$S" import "$T/backlog.jsonl" >/dev/null || exit 1
# The writer: events in bursts over five streams until told to stop.
(
    i=0
    while [ ! -e "$T/stop" ]; do
        s=$((i % 5))
        "$ESRC" --store "$S" append "s/$s" Tick "{\"n\":$i}" >/dev/null || exit 1
        i=$((i + 1))
    done
) &
writer=$!

killed=0 in_tx=0
round=0
while read -r nap; do
    round=$((round + 1))
    "$ESRC" --store "$S" project "$T/kill.proj" --to "$(target model)" --follow --batch 7 \
        >/dev/null 2>"$T/err.$round" &
    p=$!
    sleep "$nap"
    if kill -KILL $p 2>/dev/null; then
        killed=$((killed + 1))
    fi
    wait $p 2>/dev/null
    # a journal left behind: the kill landed inside a transaction
    [ -e "$T/model.db-journal" ] && in_tx=$((in_tx + 1)) # (SQLite only)
    # progress lines are fine; an error is not
    if grep -q "^esrc:" "$T/err.$round"; then
        echo "FAIL: round $round: the projector said:"
        cat "$T/err.$round"
        exit 1
    fi
done <"$T/sleeps"
touch "$T/stop"
wait "$writer"
wstatus=$?
writer=
[ $wstatus -eq 0 ] || { echo "FAIL: the writer failed"; exit 1; }

# Catch up, then build the same log afresh and compare.
for db in model fresh; do
    if ! "$ESRC" --store "$S" project "$T/kill.proj" --to "$(target $db)" >/dev/null 2>"$T/err"; then
        cat "$T/err"
        exit 1
    fi
done
events=$("$ESRC" --store "$S" --json stats | sed 's/.*"events":\([0-9]*\).*/\1/')
fails=0
for sql in "SELECT * FROM ev ORDER BY position, stream, seq" \
    "SELECT * FROM per_stream ORDER BY stream" \
    "SELECT name, position, events, definition FROM eventsrc_projection"; do
    q model "$sql" >"$T/a"
    q fresh "$sql" >"$T/b"
    if ! cmp -s "$T/a" "$T/b"; then
        echo "FAIL: '$sql' differs from a fresh build:"
        diff "$T/a" "$T/b" | head -20
        fails=$((fails + 1))
    fi
done
dups=$(q model "SELECT count(*) - count(DISTINCT position) FROM ev")
rows=$(q model "SELECT count(*) FROM ev")
echo "$ROUNDS rounds, $killed killed while running ($in_tx inside a transaction); $events events in the log, $rows rows, $dups duplicates"
[ "$dups" = 0 ] || fails=$((fails + 1))
[ "$rows" = "$events" ] || { echo "FAIL: $rows rows for $events events"; fails=$((fails + 1)); }
[ "$killed" -ge 20 ] || { echo "FAIL: only $killed rounds were killed while running"; fails=$((fails + 1)); }
[ $fails -eq 0 ] && echo "ok: the model equals a fresh rebuild"
[ $fails -eq 0 ]
