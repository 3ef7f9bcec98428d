#!/bin/sh
# Exactly once under SIGKILL: `esrc project --follow` is killed at random
# moments (ROUNDS rounds, seeded: ES_TEST_SEED repeats a run) while a writer
# appends, and restarted each time.  The projection counts and records every
# event with no key that would hide a duplicate, so an event applied twice
# or skipped shows.  At the end the model equals a fresh rebuild of the same
# log, table by table.
# usage: project_kill.sh ESRC [ROUNDS]
set -u
ESRC=$1
ROUNDS=${2:-24}
SEED=${ES_TEST_SEED:-20261127}
echo "[ project_kill ] rounds=$ROUNDS seed=$SEED (set ES_TEST_SEED to change)"
command -v sqlite3 >/dev/null || { echo "FAIL: the sqlite3 shell is needed"; exit 1; }
T=$(mktemp -d)
writer=
cleanup() {
    [ -n "$writer" ] && kill "$writer" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
S=lmdb:$T/store
q() { sqlite3 -cmd ".timeout 10000" "$1" "$2"; }

cat >"$T/kill.proj" <<'EOF'
name kill
schema
    CREATE TABLE ev (position INTEGER, stream TEXT, seq INTEGER, n INTEGER);
    CREATE TABLE per_stream (stream TEXT PRIMARY KEY, events INTEGER, last_seq INTEGER);
on *
    INSERT INTO ev VALUES (:position, :stream, :seq, :data.n);
    INSERT INTO per_stream VALUES (:stream, 1, :seq)
        ON CONFLICT (stream) DO UPDATE SET events = events + 1, last_seq = excluded.last_seq;
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
    "$ESRC" --store "$S" project "$T/kill.proj" --to "sqlite:$T/model.db" --follow --batch 7 \
        >/dev/null 2>"$T/err.$round" &
    p=$!
    sleep "$nap"
    if kill -KILL $p 2>/dev/null; then
        killed=$((killed + 1))
    fi
    wait $p 2>/dev/null
    # a journal left behind: the kill landed inside a transaction
    [ -e "$T/model.db-journal" ] && in_tx=$((in_tx + 1))
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
    if ! "$ESRC" --store "$S" project "$T/kill.proj" --to "sqlite:$T/$db.db" >/dev/null 2>"$T/err"; then
        cat "$T/err"
        exit 1
    fi
done
events=$("$ESRC" --store "$S" --json stats | sed 's/.*"events":\([0-9]*\).*/\1/')
fails=0
for sql in "SELECT * FROM ev ORDER BY position, stream, seq" \
    "SELECT * FROM per_stream ORDER BY stream" \
    "SELECT name, position, events, definition FROM eventsrc_projection"; do
    q "$T/model.db" "$sql" >"$T/a"
    q "$T/fresh.db" "$sql" >"$T/b"
    if ! cmp -s "$T/a" "$T/b"; then
        echo "FAIL: '$sql' differs from a fresh build:"
        diff "$T/a" "$T/b" | head -20
        fails=$((fails + 1))
    fi
done
dups=$(q "$T/model.db" "SELECT count(*) - count(DISTINCT position) FROM ev")
rows=$(q "$T/model.db" "SELECT count(*) FROM ev")
echo "$ROUNDS rounds, $killed killed while running ($in_tx inside a transaction); $events events in the log, $rows rows, $dups duplicates"
[ "$dups" = 0 ] || fails=$((fails + 1))
[ "$rows" = "$events" ] || { echo "FAIL: $rows rows for $events events"; fails=$((fails + 1)); }
[ "$killed" -ge 20 ] || { echo "FAIL: only $killed rounds were killed while running"; fails=$((fails + 1)); }
[ $fails -eq 0 ] && echo "ok: the model equals a fresh rebuild"
[ $fails -eq 0 ]
