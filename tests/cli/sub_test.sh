#!/bin/sh
# Black-box tests of `esrc sub`: run the binary, compare exact output and exit
# status.  usage: sub_test.sh ESRC mem|pg|lmdb
#
# A mem: store lives as long as one process, so on mem only the checks that
# need no state between two commands run (usage errors, unknown names); the
# flows are counted as skipped.  pg runs everything on a fresh schema of the
# server ES_TEST_PG_URI names (exit 77, skipped, without one).
#
# Positions differ between stores (pg's are not dense), so outputs are
# normalised: the positions of the four events the flows use become P1..P4
# (100 events of another stream come first, so that their positions are never
# a small count or seq).  Times a subscription reads from the real clock (its
# lag, last acknowledgement, lease) become LAG and TIME.
set -u
ESRC=$1
KIND=$2
T=$(mktemp -d)
bg=
trap '[ -n "$bg" ] && kill "$bg" 2>/dev/null; rm -rf "$T"' EXIT
case $KIND in
pg)
    if [ -z "${ES_TEST_PG_URI:-}" ]; then
        echo "SKIPPED: no PostgreSQL server given (set ES_TEST_PG_URI)"
        exit 77
    fi
    case $ES_TEST_PG_URI in
    *\?*) URI="$ES_TEST_PG_URI&schema=es_clisub_$$" ;;
    *) URI="$ES_TEST_PG_URI?schema=es_clisub_$$" ;;
    esac
    ;;
lmdb) URI="lmdb:$T/store" ;;
mem) URI=mem: ;;
*) echo "usage: sub_test.sh ESRC mem|pg|lmdb" >&2; exit 2 ;;
esac
export ESRC_STORE="$URI"
START=1767225600000000 # 2026-01-01T00:00:00Z
export ESRC_CLOCK_START_US=$START
echo "# store kind: $KIND"
echo 's/^$//' >"$T/norm.sed" # positions, once the flows know them

# norm FILE: positions as P1..P4, real-clock times masked
norm() {
    sed -E -f "$T/norm.sed" \
        -e "s|$T|TMP|g" \
        -e 's/( |"last_ack":")[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}\.[0-9]{6}Z/\1TIME/g' \
        -e 's/ ([0-9]+ms|[0-9]+s|[0-9]+m[0-9]{2}s|[0-9]+h[0-9]{2}m|[0-9]+d[0-9]{2}h)( |$)/ LAG\2/' \
        -e 's/"(lag_us|last_ack_us|lease_until_us)":[1-9][0-9]*/"\1":N/g' \
        -e 's/runs for [0-9]+ ms more/runs for N ms more/' "$1"
}

. "$(dirname "$0")/check.sh"

# wait_for COMMAND...: true once COMMAND is (within 10 s)
wait_for() {
    i=0
    while ! "$@" 2>/dev/null; do
        i=$((i + 1))
        [ $i -gt 200 ] && return 1
        sleep 0.05
    done
}

# ---- the command line, on any store ----
check "no sub command" 2 "" \
    "esrc: sub needs a command: create, list, info, reset, delete, run or parked (see --help)" -- "$ESRC" sub
check "unknown sub command" 2 "" "esrc: sub: unknown command 'frob' (see --help)" -- "$ESRC" sub frob
check "unknown option of a sub command" 2 "" "esrc: sub run: unknown option '--frob' (see --help)" -- \
    "$ESRC" sub run x --frob
check "option of a sub command without its value" 2 "" \
    "esrc: sub create: '--from' needs a value (see --help)" -- "$ESRC" sub create x --from
"$ESRC" sub --help >"$T/help"
ok "sub --help lists the commands" [ "$(sed -n 1p "$T/help")" = "usage: esrc sub COMMAND [ARGS]" ] 
ok "sub --help names run" grep -q "^  run     consume a subscription" "$T/help"
"$ESRC" sub run --help >"$T/help"
ok "sub run --help" [ "$(sed -n 1p "$T/help")" = "usage: esrc sub run NAME [--auto-ack | --exec CMD] [--limit N] [--timeout-ms N]" ]
check "create without a name" 2 "" "esrc: sub create needs one NAME (see --help)" -- "$ESRC" sub create
check "create with two names" 2 "" "esrc: sub create needs one NAME (see --help)" -- "$ESRC" sub create a b
check "create: a name with a slash" 2 "" \
    "esrc: sub create: subscription name: byte 1 is 0x2f; a name is made of A-Z a-z 0-9 . _ -" -- \
    "$ESRC" sub create a/b
long=$(printf '%065d' 0)
check "create: a name of 65 bytes" 2 "" "esrc: sub create: subscription name must be 1..64 bytes" -- \
    "$ESRC" sub create "$long"
check "create: an empty name" 2 "" "esrc: sub create: subscription name must be 1..64 bytes" -- \
    "$ESRC" sub create ""
check "create: bad --from" 2 "" \
    "esrc: --from must be beginning, end, a position or @TIME, not 'soon' (see --help)" -- \
    "$ESRC" sub create x --from soon
check "create: --from 0" 2 "" "esrc: --from: a position is 1..4611686018427387903, not '0' (see --help)" -- \
    "$ESRC" sub create x --from 0
check "create: --from a position with a sign" 2 "" \
    "esrc: --from must be beginning, end, a position or @TIME, not '+3' (see --help)" -- \
    "$ESRC" sub create x --from +3
check "create: --from a date that does not exist" 2 "" \
    "esrc: --from: '@2026-02-30T00:00:00Z' is not a time: use @MICROSECONDS since 1970 or @YYYY-MM-DDTHH:MM:SS[.ffffff]Z (UTC) (see --help)" -- \
    "$ESRC" sub create x --from @2026-02-30T00:00:00Z
check "create: --from a time without its Z" 2 "" \
    "esrc: --from: '@2026-01-01T00:00:00' is not a time: use @MICROSECONDS since 1970 or @YYYY-MM-DDTHH:MM:SS[.ffffff]Z (UTC) (see --help)" -- \
    "$ESRC" sub create x --from @2026-01-01T00:00:00
check "create: --from a negative time" 2 "" \
    "esrc: --from: '@-5' is not a time: use @MICROSECONDS since 1970 or @YYYY-MM-DDTHH:MM:SS[.ffffff]Z (UTC) (see --help)" -- \
    "$ESRC" sub create x --from @-5
check "create: --batch 0" 2 "" "esrc: --batch must be 1..10000, not 0 (see --help)" -- \
    "$ESRC" sub create x --batch 0
check "create: --batch over the limit" 2 "" "esrc: --batch must be 1..10000, not 10001 (see --help)" -- \
    "$ESRC" sub create x --batch 10001
check "create: an empty --type" 2 "" "esrc: --type must be 1..255 bytes (see --help)" -- \
    "$ESRC" sub create x --type ""
set -- sub create x
for i in $(seq 17); do set -- "$@" --prefix "p$i/"; done
check "create: 17 prefixes" 2 "" "esrc: sub create: at most 16 --prefix (see --help)" -- "$ESRC" "$@"
check "reset without --to" 2 "" "esrc: sub reset needs --to beginning|end|POSITION|@TIME (see --help)" -- \
    "$ESRC" sub reset x
check "reset: bad --to" 2 "" "esrc: --to must be beginning, end, a position or @TIME, not 'start' (see --help)" -- \
    "$ESRC" sub reset x --to start
check "run: --auto-ack with --exec" 2 "" "esrc: sub run: --auto-ack and --exec do not go together (see --help)" -- \
    "$ESRC" sub run x --auto-ack --exec cat
check "run: negative --timeout-ms" 2 "" "esrc: --timeout-ms must be a non-negative integer, not '-1' (see --help)" -- \
    "$ESRC" sub run x --timeout-ms -1
check "run: --limit 0" 2 "" "esrc: --limit must be 1 or more (see --help)" -- "$ESRC" sub run x --limit 0
for c in info delete; do
    check "$c of an unknown subscription" 1 "" "esrc: sub $c: no subscription named 'nope'" -- "$ESRC" sub $c nope
done
check "reset of an unknown subscription" 1 "" "esrc: sub reset: no subscription named 'nope'" -- \
    "$ESRC" sub reset nope --to end
check "run of an unknown subscription" 1 "" "esrc: sub run: no subscription named 'nope'" -- \
    "$ESRC" sub run nope --auto-ack
check "info: a bad name" 2 "" "esrc: sub info: subscription name: byte 1 is 0x20; a name is made of A-Z a-z 0-9 . _ -" -- \
    "$ESRC" sub info "a b"

if [ "$KIND" = mem ]; then
    check "create on mem" 0 "created subscription x at checkpoint 0 (head 0)" "" -- "$ESRC" sub create x
    check "list of none" 0 "name                     checkpoint       head     behind      lag state       members parked last ack" "" -- \
        "$ESRC" sub list
    check "--json list of none" 0 "" "" -- "$ESRC" --json sub list
    skipped=$((skipped + 1))
    echo "skip: the flows (they need a store that outlives the process)"
    echo "# $n checks, $fails failed, $skipped skipped"
    [ "$fails" = 0 ]
    exit
fi

# ---- flows, on a store that outlives the process ----
"$ESRC" init >/dev/null || exit 1
awk -v t=$((START + 1000000)) 'BEGIN { for (i = 1; i <= 100; i++)
    printf "{\"stream\":\"filler/1\",\"seq\":%d,\"time_us\":%s,\"id\":\"%032x\",\"type\":\"F\",\"data\":\"\"}\n", i, t, i + 4096 }' \
    >"$T/filler.jsonl"
"$ESRC" import "$T/filler.jsonl" >/dev/null || exit 1
ID=0000000000000000000000000000000
"$ESRC" append --id ${ID}1 orders/1 Placed '{"n":1}' >/dev/null &&
    "$ESRC" append --id ${ID}2 orders/2 Placed '{"n":2}' >/dev/null &&
    "$ESRC" append --id ${ID}3 users/1 Created '{}' >/dev/null &&
    ESRC_CLOCK_START_US=$((START + 60000000)) "$ESRC" append --id ${ID}4 orders/1 Paid '{}' >/dev/null || exit 1
"$ESRC" log --json | grep -v '"stream":"filler/1"' >"$T/log.jsonl"
sed 's/.*"position":\([0-9]*\).*/\1/' "$T/log.jsonl" >"$T/positions"
ok "four events after the filler" [ "$(wc -l <"$T/positions")" = 4 ]
k=0
while read -r p; do
    k=$((k + 1))
    printf 's/\\b%s\\b/P%s/g\n' "$p" "$k" >>"$T/norm.sed"
    eval "P$k=$p"
done <"$T/positions"
# the events as `esrc log --json` prints them (exact on every store, but positions)
norm "$T/log.jsonl" >"$T/log.n"
E1=$(sed -n 1p "$T/log.n") E2=$(sed -n 2p "$T/log.n") E3=$(sed -n 3p "$T/log.n") E4=$(sed -n 4p "$T/log.n")
if [ "$KIND" = lmdb ]; then
    # the fake clock's times (so the hashes) depend on how a store keeps its
    # times monotonic: compare the rest exactly
    mask() { printf '%s' "$1" | sed -E 's/"time_us":[0-9]+,"time":"[^"]*"/"time_us":T,"time":"T"/; s/"hash":"[0-9a-f]{64}"/"hash":"H"/'; }
    ok "the events have fixed ids" [ "$(mask "$E1")" = '{"stream":"orders/1","seq":1,"position":P1,"time_us":T,"time":"T","id":"00000000000000000000000000000001","type":"Placed","data":"{\"n\":1}","meta":"","hash":"H"}' ]
    ok "the last event is later" [ "$(mask "$E4")" = '{"stream":"orders/1","seq":2,"position":P4,"time_us":T,"time":"T","id":"00000000000000000000000000000004","type":"Paid","data":"{}","meta":"","hash":"H"}' ]
else
    ok "the events have fixed ids, times and hashes" [ "$E1" = '{"stream":"orders/1","seq":1,"position":P1,"time_us":1767225602000000,"time":"2026-01-01T00:00:02.000000Z","id":"00000000000000000000000000000001","type":"Placed","data":"{\"n\":1}","meta":"","hash":"359571d56e57ce7971d4dadf4276e6d84c283fc7cff8f1ddef3ed484773c9c6a"}' ]
    ok "the last event is a minute later" [ "$E4" = '{"stream":"orders/1","seq":2,"position":P4,"time_us":1767225662000000,"time":"2026-01-01T00:01:02.000000Z","id":"00000000000000000000000000000004","type":"Paid","data":"{}","meta":"","hash":"2ca5a378448d9cef06cdc8decd6b127011c4dca69450f393d1f490ec0e9ecb63"}' ]
fi

check "create from the beginning, two prefixes" 0 "created subscription all at checkpoint 0 (head P4)" "" -- \
    "$ESRC" sub create all --prefix orders/ --prefix users/
check "create with a type and a batch of 1" 0 "created subscription ord at checkpoint 0 (head P4)" "" -- \
    "$ESRC" sub create ord --prefix orders/ --type Placed --batch 1
check "create from the end" 0 "created subscription late at checkpoint P4 (head P4)" "" -- \
    "$ESRC" sub create late --from end
check "create from a time (ISO)" 0 "" "" -- sh -c "'$ESRC' sub create t --prefix orders/ --from @2026-01-01T00:01:00Z >/dev/null"
check "create from a time (microseconds)" 0 "" "" -- sh -c "'$ESRC' sub create tus --prefix orders/ --from @1767225660000000 >/dev/null"
check "create from a position" 0 "" "" -- sh -c "'$ESRC' sub create pos --prefix orders/ --from $P2 >/dev/null"
check "create of a name that exists" 3 "" "esrc: sub create: a subscription named 'all' exists" -- \
    "$ESRC" sub create all
check "--json create" 0 '{"name":"j","checkpoint":P4,"head":P4}' "" -- "$ESRC" --json sub create j --from end
# (blanks squeezed: the labels P1..P4 are narrower than positions)
check "list" 0 "name checkpoint head behind lag state members parked last ack
all 0 P4 4 LAG idle 0 0 never
j P4 P4 0 - idle 0 0 never
late P4 P4 0 - idle 0 0 never
ord 0 P4 2 LAG idle 0 0 never" "" -- \
    sh -c "'$ESRC' sub list | grep -v '^t\|^tus\|^pos' | tr -s ' '"
check "info" 0 "name         ord
checkpoint   0
head         P4
behind       2
lag          LAG
state        idle
last ack     never
lease until  -
acked        0
parked       0" "" -- "$ESRC" sub info ord
check "--json info" 0 '{"name":"late","checkpoint":P4,"head":P4,"behind":0,"behind_capped":false,"lag_us":0,"state":"idle","last_ack_us":0,"last_ack":null,"lease_until_us":0,"acked":0,"partitions":1,"members":0,"group":null,"parked":0,"partition_list":[{"partition":0,"checkpoint":P4,"behind":0,"owner":null,"lease_until_us":0}]}' "" -- \
    "$ESRC" --json sub info late
check "--json list: one line per subscription" 0 "7" "" -- sh -c "'$ESRC' --json sub list | wc -l"

# starts and filters
check "run from a time (ISO)" 0 "$E4" "" -- "$ESRC" sub run t --auto-ack --timeout-ms 200
check "run from a time (microseconds)" 0 "$E4" "" -- "$ESRC" sub run tus --auto-ack --timeout-ms 200
check "run from a position, with a prefix" 0 "$E2
$E4" "" -- "$ESRC" sub run pos --auto-ack --timeout-ms 200
check "run from the end: nothing" 0 "" "" -- "$ESRC" sub run late --auto-ack --timeout-ms 0
check "run --limit 1 with a type filter" 0 "$E1" "" -- "$ESRC" sub run ord --auto-ack --limit 1
check "run again: it goes on after the checkpoint" 0 "$E2" "" -- "$ESRC" sub run ord --auto-ack --timeout-ms 200
check "the checkpoint moved" 0 "checkpoint   P2
behind       0
last ack     TIME
acked        2" "" -- sh -c "'$ESRC' sub info ord | grep 'checkpoint\|behind\|last ack\|acked'"

# acknowledgements on standard input
printf '%s\n' "$P1" >"$T/acks"
check_in "acks on stdin: the batch, then the end of input" 0 "$E1
$E2
$E3
$E4" "" "$T/acks" -- "$ESRC" sub run all
check "acks on stdin: the checkpoint is the last position acknowledged" 0 "checkpoint   P1
behind       3" "" -- sh -c "'$ESRC' sub info all | grep 'checkpoint\|behind'"
printf '\n  %s \r\n' "$P2" >"$T/acks"
check_in "acks on stdin: blank lines and blanks around a position" 0 "$E2
$E3
$E4" "" "$T/acks" -- "$ESRC" sub run all
check "acks on stdin: checkpoint P2" 0 "checkpoint   P2" "" -- sh -c "'$ESRC' sub info all | grep checkpoint"
printf 'soon\n' >"$T/acks"
check_in "acks on stdin: a line that is not a position" 2 "$E3
$E4" "esrc: sub run: acknowledgement line 1: 'soon' is not a position (or 'fail POSITION [MESSAGE]')" "$T/acks" -- "$ESRC" sub run all
printf '%s\n' 99999999999999 >"$T/acks"
check_in "acks on stdin: a position not delivered" 2 "$E3
$E4" "esrc: sub run: acknowledgement line 1: position 99999999999999 was not delivered (the last delivered is P4)" \
    "$T/acks" -- "$ESRC" sub run all
printf '%s\n%s\n' "$P3" "$P2" >"$T/acks"
check_in "acks on stdin: going back" 2 "$E3
$E4" "esrc: sub run: acknowledgement line 2: position P2 is before the last acknowledged, P3" \
    "$T/acks" -- "$ESRC" sub run all
check "acks on stdin: the acknowledgement before the bad line stands" 0 "checkpoint   P3" "" -- \
    sh -c "'$ESRC' sub info all | grep checkpoint"

# --exec
check "exec: the batch on the command's stdin, acknowledged on exit 0" 0 "$E4" "" -- \
    "$ESRC" sub run all --exec "cat" --timeout-ms 200
check "exec: checkpoint P4" 0 "checkpoint   P4" "" -- sh -c "'$ESRC' sub info all | grep checkpoint"
check "reset to the beginning" 0 "reset all to checkpoint 0 (4 behind)" "" -- "$ESRC" sub reset all --to beginning
"$ESRC" sub create stops --prefix orders/ --prefix users/ --on-poison stop --max-attempts 2 --retry-ms 1 >/dev/null
check "exec: a command that keeps failing stops a subscription that stops on poison" 1 "" \
    "esrc: sub run: the --exec command exited with status 3 at position P1; it comes again after a backoff and is parked after the subscription's last attempt
esrc: sub run: the --exec command exited with status 3 at position P1; it comes again after a backoff and is parked after the subscription's last attempt
esrc: sub run: subscription 'stops' stopped at the event at position P1: it failed 2 times and is parked; drop it (or retry it) to go on" -- \
    "$ESRC" sub run stops --exec "cat >/dev/null; exit 3"
check "exec: the failed event is not acknowledged, and the subscription shows it stopped" 0 "checkpoint   0
state        stopped
parked       1" "" -- sh -c "'$ESRC' sub info stops | grep 'checkpoint\|parked\|state'"
check "parked: the list" 0 "position partition attempts parked at retry error
P1 0 2 TIME no \"the --exec command exited with status 3\"" "" -- \
    sh -c "'$ESRC' sub parked stops | tr -s ' ' | sed 's/^ //'"
check "parked: drop it, and the checkpoint moves past it" 0 "dropped parked event P1 of stops
checkpoint   P1
parked       0" "" -- sh -c "'$ESRC' sub parked stops drop $P1 && '$ESRC' sub info stops | grep 'checkpoint\|parked'"
check "parked: drop what is not parked" 1 "" "esrc: sub parked: subscription 'stops' has no parked event at position P1" -- \
    "$ESRC" sub parked stops drop "$P1"
check "parked: a bad action" 2 "" "esrc: sub parked: unknown action 'undo' (list, retry or drop) (see --help)" -- \
    "$ESRC" sub parked stops undo
check "parked: retry needs a position" 2 "" "esrc: sub parked stops retry needs one POSITION or all (see --help)" -- \
    "$ESRC" sub parked stops retry
check "parked: of no subscription" 1 "" "esrc: sub parked: no subscription named 'nosuch'" -- \
    "$ESRC" sub parked nosuch
"$ESRC" sub create goes --prefix orders/ --prefix users/ --max-attempts 2 --retry-ms 1 >/dev/null
check "exec: an event that keeps failing is parked, and the others go through" 0 "checkpoint   P4
parked       1" "" -- sh -c "'$ESRC' sub run goes --exec '! grep -q orders/2' --timeout-ms 300 2>/dev/null &&
        '$ESRC' sub info goes | grep 'checkpoint\|parked'"
check "--json parked" 0 '{"position":P2,"partition":0,"attempts":2,"parked_at":"TIME","parked_at_us":N,"retry":false,"error":"the --exec command exited with status 1"}' "" -- \
    sh -c "'$ESRC' --json sub parked goes | sed -E 's/\"parked_at_us\":[0-9]+/\"parked_at_us\":N/; s/\"parked_at\":\"[^\"]*\"/\"parked_at\":\"TIME\"/'"
check "parked: retry, and a consumer that handles it" 0 "retrying every parked event of goes
$E2" "" -- sh -c "'$ESRC' sub parked goes retry all && '$ESRC' sub run goes --auto-ack --timeout-ms 300"
check "parked: none left" 0 "parked       0" "" -- sh -c "'$ESRC' sub info goes | grep parked"
printf 'fail %s cannot parse it\n%s\n' "$P2" "$P4" >"$T/acks"
check_in "acks on stdin: a fail line: the batch comes again from that event" 0 "$E2
$E3
$E4
$E2
$E3
$E4" "" "$T/acks" -- "$ESRC" sub run stops --timeout-ms 300
check "exec with --limit" 0 "2" "" -- "$ESRC" sub run all --exec "wc -l | tr -d ' '" --limit 2
check "exec with --limit: checkpoint P2" 0 "checkpoint   P2" "" -- sh -c "'$ESRC' sub info all | grep checkpoint"

# a consumer group
"$ESRC" sub create grp --prefix orders/ --prefix users/ --partitions 4 >/dev/null
check "group: a member alone takes every partition" 0 "$E1
$E2
$E3
$E4" "" -- "$ESRC" sub run grp --group workers --member m1 --auto-ack --timeout-ms 300
check "group: info with its partitions (owner none: the member left)" 0 "checkpoint P4
parked 0
group workers
members 0
partitions 4
partition checkpoint behind owner lease until
0 P4 0 - -
1 P4 0 - -
2 P4 0 - -
3 P4 0 - -" "" -- sh -c "'$ESRC' sub info grp | sed -n '2p;10,\$p' | tr -s ' ' | sed 's/^ //'"
check "group: a member label without a group" 2 "" "esrc: sub run: --member needs --group (see --help)" -- \
    "$ESRC" sub run grp --member m1

# reset
check "reset to the end" 0 "reset all to checkpoint P4 (0 behind)" "" -- "$ESRC" sub reset all --to end
check "reset to a position" 0 "" "" -- sh -c "'$ESRC' sub reset all --to $P3 >/dev/null"
check "run after a reset to a position" 0 "$E3
$E4" "" -- "$ESRC" sub run all --auto-ack --timeout-ms 200
check "reset to a time" 0 "" "" -- sh -c "'$ESRC' sub reset all --to @2026-01-01T00:01:00Z >/dev/null"
check "run after a reset to a time" 0 "$E4" "" -- "$ESRC" sub run all --auto-ack --timeout-ms 200
check "--json reset" 0 '{"name":"all","checkpoint":0,"head":P4,"behind":4,"behind_capped":false}' "" -- \
    "$ESRC" --json sub reset all --to beginning

# a running consumer: its state, its lease, and a clean stop on a signal
mkfifo "$T/in"
"$ESRC" sub run all <"$T/in" >"$T/run.out" 2>"$T/run.err" &
bg=$!
exec 3>"$T/in"
ok "run: the batch is out" wait_for sh -c "[ \$(wc -l <'$T/run.out') = 4 ]"
check "state while the batch is not acknowledged" 0 "behind       4
state        catching-up
lease until  TIME" "" -- sh -c "'$ESRC' sub info all | grep 'behind\|state\|lease'"
check "a second consumer is refused" 3 "" \
    "esrc: sub run: subscription 'all' is open by another consumer (its lease runs for N ms more)" -- \
    "$ESRC" sub run all --auto-ack
echo "$P4" >&3
ok "state after the acknowledgement: live" wait_for sh -c "'$ESRC' sub info all | grep -q 'state *live'"
kill -TERM $bg
wait $bg
ok "SIGTERM stops the run with exit 0" [ $? = 0 ]
exec 3>&-
bg=
ok "SIGTERM: nothing on stderr" [ ! -s "$T/run.err" ]
check "after SIGTERM: checkpoint written, lease given back" 0 "checkpoint   P4
behind       0
state        idle
lease until  -" "" -- sh -c "'$ESRC' sub info all | grep 'checkpoint\|behind\|state\|lease'"
"$ESRC" sub reset all --to "$P3" >/dev/null
"$ESRC" sub run all <"$T/in" >"$T/run.out" 2>"$T/run.err" &
bg=$!
exec 3>"$T/in"
ok "run again: the batch is out" wait_for sh -c "[ \$(wc -l <'$T/run.out') = 2 ]"
echo "$P3" >&3
ok "the acknowledgement landed" wait_for sh -c "'$ESRC' sub info all | grep -q 'checkpoint *$P3\$'"
kill -INT $bg
wait $bg
ok "SIGINT stops the run with exit 0" [ $? = 0 ]
exec 3>&-
bg=
check "after SIGINT: checkpoint kept, lease given back" 0 "checkpoint   P3
state        idle" "" -- sh -c "'$ESRC' sub info all | grep 'checkpoint\|state'"
check "a consumer can open it at once" 0 "$E4" "" -- "$ESRC" sub run all --auto-ack --timeout-ms 200

# a consumer waiting for new events gets them live
"$ESRC" sub run late --auto-ack --limit 1 >"$T/live.out" 2>"$T/live.err" &
bg=$!
ok "live: the consumer holds the lease" wait_for sh -c "'$ESRC' sub info late | grep -q 'state *live'"
ESRC_CLOCK_START_US=$((START + 120000000)) "$ESRC" append --id ${ID}5 users/2 Created '{}' >/dev/null
wait $bg
ok "live: exit 0 after --limit 1" [ $? = 0 ]
bg=
ok "live: the new event" grep -q '"stream":"users/2","seq":1,' "$T/live.out"

# delete
check "delete" 0 "deleted subscription ord" "" -- "$ESRC" sub delete ord
check "info of a deleted subscription" 1 "" "esrc: sub info: no subscription named 'ord'" -- "$ESRC" sub info ord
check "--json delete" 0 '{"name":"j","deleted":true}' "" -- "$ESRC" --json sub delete j
check "create again after a delete" 0 "created subscription ord at checkpoint 0 (head P5)" "" -- \
    sh -c "'$ESRC' sub create ord | sed 's/head [0-9]*)/head P5)/'"

echo "# $n checks, $fails failed, $skipped skipped"
[ "$fails" = 0 ]
