#!/bin/sh
# `esrc replicate --follow` under SIGKILL: killed at random moments (ROUNDS
# rounds, seeded: ES_TEST_SEED repeats a run) while a writer appends to the
# source, and restarted each time.  At the end both stores verify, and the
# replica's events equal the source's one by one (stream, seq, id, time,
# type, data, metadata and chain hash; positions are each store's own).
# Then: `esrc append` to the replica is refused without --force; a source
# whose event was altered (in its lmdb file, or by an UPDATE on pg) is
# reported (exit 4) and the event is not copied; `esrc backup` of the live
# lmdb source verifies.
# usage: replicate_kill.sh ESRC FROM-TO [ROUNDS]   (FROM, TO: lmdb or pg)
set -u
ESRC=$1
MODE=$2
ROUNDS=${3:-24}
SEED=${ES_TEST_SEED:-20261127}
echo "[ replicate_kill ] $MODE rounds=$ROUNDS seed=$SEED (set ES_TEST_SEED to change)"
case $MODE in *pg*)
    if [ -z "${ES_TEST_PG_URI:-}" ]; then
        echo "SKIPPED: no PostgreSQL server given (set ES_TEST_PG_URI)"
        exit 77
    fi ;;
esac
T=$(mktemp -d)
writer=
repl=
cleanup() {
    [ -n "$writer" ] && kill "$writer" 2>/dev/null
    [ -n "$repl" ] && kill -9 "$repl" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; exit 1; }
uri() { # uri lmdb|pg NAME
    if [ "$1" = lmdb ]; then
        echo "lmdb:$T/$2"
    else
        case $ES_TEST_PG_URI in
        *\?*) echo "$ES_TEST_PG_URI&schema=es_repl_$2_$$" ;;
        *) echo "$ES_TEST_PG_URI?schema=es_repl_$2_$$" ;;
        esac
    fi
}
S=$(uri "${MODE%-*}" src)
D=$(uri "${MODE#*-}" dst)

# Every event without its position, in a stable order.
events() {
    "$ESRC" --store "$1" export | sed 's/"position":[0-9]*,//' | sort
}

awk -v seed="$SEED" -v n="$ROUNDS" 'BEGIN { srand(seed); for (i = 0; i < n; i++)
    printf "%.3f\n", 0.02 + rand() * 0.38 }' >"$T/sleeps"

# A backlog, so that kills land while the replicator catches up, and then a
# writer that keeps appending.
awk 'BEGIN { for (i = 0; i < 3000; i++)
    printf "{\"stream\":\"b/%d\",\"seq\":%d,\"time_us\":1767225601000000,\"id\":\"%032x\",\"type\":\"Tick\",\"data\":\"{\\\"n\\\":%d}\",\"meta\":\"m%d\"}\n",
        i % 4, int(i / 4) + 1, i + 1, i, i }' >"$T/backlog.jsonl"
"$ESRC" --store "$S" init >/dev/null || fail "init"
"$ESRC" --store "$S" import "$T/backlog.jsonl" >/dev/null || fail "import of the backlog"
(
    i=0
    while [ ! -e "$T/stop" ]; do
        "$ESRC" --store "$S" append "s/$((i % 5))" Tick "{\"n\":$i}" >/dev/null || exit 1
        i=$((i + 1))
    done
) &
writer=$!

round=0
while read -r nap; do
    round=$((round + 1))
    "$ESRC" replicate --from "$S" --to "$D" --follow --batch 50 >/dev/null 2>"$T/err" &
    repl=$!
    sleep "$nap"
    kill -9 "$repl" 2>/dev/null
    wait "$repl" 2>/dev/null
    rc=$?
    repl=
    # 137: killed; anything else means it stopped on its own (an error)
    [ "$rc" -eq 137 ] || fail "round $round: the replicator exited $rc: $(cat "$T/err")"
done <"$T/sleeps"
touch "$T/stop"
wait "$writer" || fail "the writer failed"
writer=
out=$("$ESRC" replicate --from "$S" --to "$D" 2>&1) || fail "the last run: $out"
echo "ok: $ROUNDS kills, then: $out"

"$ESRC" --store "$S" verify >"$T/vs" || fail "source verify: $(cat "$T/vs")"
"$ESRC" --store "$D" verify >"$T/vd" || fail "replica verify: $(cat "$T/vd")"
cmp -s "$T/vs" "$T/vd" || fail "verify differs: $(cat "$T/vs") / $(cat "$T/vd")"
events "$S" >"$T/es"
events "$D" >"$T/ed"
n=$(wc -l <"$T/es")
[ "$n" -gt 3000 ] || fail "only $n events in the source"
cmp -s "$T/es" "$T/ed" || fail "the replica's events differ: $(diff "$T/es" "$T/ed" | head -5)"
echo "ok: $(cat "$T/vd"); the $n events equal the source's, hashes included"

# The replica refuses other writers unless forced.
"$ESRC" --store "$D" append x T '{}' >/dev/null 2>"$T/err"
rc=$?
[ "$rc" -eq 3 ] || fail "append to the replica exited $rc"
grep -q "is a replica" "$T/err" || fail "append to the replica: $(cat "$T/err")"
echo "ok: append to the replica refused: $(cat "$T/err")"

# An event altered in the source is reported (exit 4) and not copied.
tampered() {
    "$ESRC" replicate --from "$S" --to "$D" >"$T/out" 2>"$T/err"
    rc=$?
    [ "$rc" -eq 4 ] || fail "replicating a tampered source exited $rc: $(cat "$T/err")"
    grep -q "'t/1' seq 1 .*does not hash" "$T/err" || fail "the report: $(cat "$T/err")"
    [ "$("$ESRC" --store "$D" head t/1)" = 0 ] || fail "the tampered event was copied"
    echo "ok: tampered source reported: $(cat "$T/err")"
}
if [ "${MODE%-*}" = pg ]; then
    "$ESRC" --store "$S" append t/1 T '{"secret":"TAMPERME1234"}' >/dev/null || fail "append"
    psql -q "$ES_TEST_PG_URI" -c "UPDATE es_repl_src_$$.events SET data = \
        convert_to('{\"secret\":\"TAMPERED1234\"}', 'UTF8') WHERE stream = 't/1'::bytea" ||
        fail "the UPDATE"
    tampered
fi
if [ "${MODE%-*}" = lmdb ]; then
    # A consistent copy of the live source.
    "$ESRC" --store "$S" backup "$T/backup" >/dev/null || fail "backup"
    "$ESRC" --store "lmdb:$T/backup" verify >"$T/vb" || fail "backup verify: $(cat "$T/vb")"
    cmp -s "$T/vs" "$T/vb" || fail "backup verify differs: $(cat "$T/vb")"
    echo "ok: backup: $(cat "$T/vb")"
    # An event altered in the source's file (same length: the record stays
    # readable) is reported, not copied.
    "$ESRC" --store "$S" append t/1 T '{"secret":"TAMPERME1234"}' >/dev/null || fail "append"
    perl -pi -e 's/TAMPERME1234/TAMPERED1234/' "$T/src/data.mdb"
    grep -q TAMPERED1234 "$T/src/data.mdb" || fail "the tamper did not land"
    tampered
fi
exit 0
