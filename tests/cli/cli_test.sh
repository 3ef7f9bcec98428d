#!/bin/sh
# Black-box tests of the esrc command: run the binary, compare exact output
# and exit status.  usage: cli_test.sh ESRC
set -u
ESRC=$1
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
export ESRC_STORE="lmdb:$T/store"
export ESRC_CLOCK_START_US=1767225600000000 # 2026-01-01T00:00:00Z + 1 s: every
# process starts its fake clock there; commit times never go back, so all are equal
fails=0 n=0

# check NAME STATUS EXPECTED-STDOUT EXPECTED-STDERR -- COMMAND...
check() {
    name=$1 want_status=$2 want_out=$3 want_err=$4
    shift 5
    n=$((n + 1))
    "$@" >"$T/out" 2>"$T/err" </dev/null
    status=$?
    sed "s|$T|TMP|g" "$T/out" >"$T/out.n"
    sed "s|$T|TMP|g" "$T/err" >"$T/err.n"
    if [ "$status" != "$want_status" ] || [ "$(cat "$T/out.n")" != "$want_out" ] ||
        [ "$(cat "$T/err.n")" != "$want_err" ]; then
        fails=$((fails + 1))
        echo "FAIL $n: $name"
        echo "  status $status (want $want_status)"
        echo "  stdout:"; sed 's/^/    /' "$T/out.n"
        echo "  want stdout:"; printf '%s\n' "$want_out" | sed 's/^/    /'
        echo "  stderr:"; sed 's/^/    /' "$T/err.n"
        echo "  want stderr:"; printf '%s\n' "$want_err" | sed 's/^/    /'
    else
        echo "ok $n: $name"
    fi
}

# check_in NAME STATUS OUT ERR INPUT-FILE -- COMMAND...: like check, with stdin
check_in() {
    name=$1 want_status=$2 want_out=$3 want_err=$4 input=$5
    shift 6
    n=$((n + 1))
    "$@" >"$T/out" 2>"$T/err" <"$input"
    status=$?
    sed "s|$T|TMP|g" "$T/out" >"$T/out.n"
    sed "s|$T|TMP|g" "$T/err" >"$T/err.n"
    if [ "$status" != "$want_status" ] || [ "$(cat "$T/out.n")" != "$want_out" ] ||
        [ "$(cat "$T/err.n")" != "$want_err" ]; then
        fails=$((fails + 1))
        echo "FAIL $n: $name (status $status, want $want_status)"
        echo "  stdout:"; sed 's/^/    /' "$T/out.n"
        echo "  want stdout:"; printf '%s\n' "$want_out" | sed 's/^/    /'
        echo "  stderr:"; sed 's/^/    /' "$T/err.n"
    else
        echo "ok $n: $name"
    fi
}

ID1=00000000000000000000000000000001
ID2=00000000000000000000000000000002
ID3=00000000000000000000000000000003

check "version" 0 "esrc 0.1.0 (libeventsrc 0.1.0)" "" -- "$ESRC" --version
check "no command" 2 "" "esrc: no command given (see --help)" -- "$ESRC"
check "unknown command" 2 "" "esrc: unknown command 'frobnicate' (see --help)" -- "$ESRC" frobnicate
check "unknown global option" 2 "" "esrc: unknown option '--frob' (see --help)" -- "$ESRC" --frob read s
check "unknown command option" 2 "" "esrc: read: unknown option '--frob' (see --help)" -- "$ESRC" read --frob s
check "option without its value" 2 "" "esrc: read: '--limit' needs a value (see --help)" -- "$ESRC" read s --limit
check "missing store" 1 "" "esrc: lmdb:TMP/nope: not found: no store at TMP/nope" -- "$ESRC" --store "lmdb:$T/nope" read s
check "no store scheme" 2 "" "esrc: nothing: invalid argument: store URI 'nothing' has no scheme (try mem:, lmdb:PATH or postgres://…)" -- "$ESRC" --store nothing head s
check "init" 0 "initialised lmdb:TMP/store" "" -- "$ESRC" init
check "append" 0 "appended orders/1 seq 1 at position 1" "" -- \
    "$ESRC" append --id $ID1 orders/1 Placed '{"total":3}'
check "append again with the same id is a retry" 0 \
    "appended orders/1 seq 1 at position 1 (a retry: already there, nothing written)" "" -- \
    "$ESRC" append --id $ID1 orders/1 Placed '{"total":3}'
check "append with a failed expectation" 3 "" "esrc: append: conflict: stream orders/1 is at seq 1" -- \
    "$ESRC" append --expect no-stream orders/1 Placed '{"total":4}'
check "append with --expect seq" 0 "appended orders/1 seq 2 at position 2" "" -- \
    "$ESRC" append --expect 1 --id $ID2 --meta '{"by":"bart"}' orders/1 Paid '{"amount":3}'
printf '{"name":"homer"}' >"$T/in"
check_in "append from stdin" 0 "appended users/1 seq 1 at position 3" "" "$T/in" -- \
    "$ESRC" append --id $ID3 users/1 Created
check "append: bad --expect" 2 "" "esrc: --expect must be a non-negative integer, not 'soon' (see --help)" -- \
    "$ESRC" append --expect soon s T x
check "append: bad id" 2 "" "esrc: an event id is 32 hex digits, not 'xyz' (see --help)" -- \
    "$ESRC" append --id xyz s T x
long=$(printf '%0256d' 0)
check "append: oversize stream key" 2 "" "esrc: stream key must be 1..255 bytes (it is 256) (see --help)" -- \
    "$ESRC" append "$long" T x
check "append: missing arguments" 2 "" "esrc: append needs STREAM TYPE [DATA] (see --help)" -- "$ESRC" append s

check "read" 0 "seq    position  time                        type                 data
1      1         2026-01-01T00:00:01.000000Z Placed               {\"total\":3}
2      2         2026-01-01T00:00:01.000000Z Paid                 {\"amount\":3}" "" -- "$ESRC" read orders/1
check "read backward with a limit" 0 "seq    position  time                        type                 data
2      2         2026-01-01T00:00:01.000000Z Paid                 {\"amount\":3}" "" -- "$ESRC" read --backward --limit 1 orders/1
check "read --json" 0 '{"stream":"orders/1","seq":2,"position":2,"time_us":1767225601000000,"time":"2026-01-01T00:00:01.000000Z","id":"00000000000000000000000000000002","type":"Paid","data":"{\"amount\":3}","meta":"{\"by\":\"bart\"}","hash":"'"$("$ESRC" --json read --from 2 orders/1 | sed 's/.*"hash":"\([0-9a-f]*\)".*/\1/')"'"}' "" -- \
    "$ESRC" --json read --from 2 orders/1
check "read: bad --from" 2 "" "esrc: --from must be a non-negative integer, not '-1' (see --help)" -- "$ESRC" read --from -1 orders/1
check "head" 0 "2" "" -- "$ESRC" head orders/1
check "head of nothing" 0 "0" "" -- "$ESRC" head nothing
check "streams" 0 "stream                                   head
orders/1                                 2
users/1                                  1" "" -- "$ESRC" streams
check "streams --prefix --json" 0 '{"stream":"users/1","head":1}' "" -- "$ESRC" --json streams --prefix users/
check "log with filters" 0 "position  stream               seq    time                        type                 data
3         users/1              1      2026-01-01T00:00:01.000000Z Created              {\"name\":\"homer\"}" "" -- \
    "$ESRC" log --prefix users/ --type Created
check "log from a position" 0 "position  stream               seq    time                        type                 data
2         orders/1             2      2026-01-01T00:00:01.000000Z Paid                 {\"amount\":3}" "" -- \
    "$ESRC" log --from 2 --limit 1
check "verify" 0 "ok: 3 events in 2 streams verified" "" -- "$ESRC" verify
check "verify one stream" 0 "ok: 2 events in 1 streams verified" "" -- "$ESRC" verify orders/1

# export, import into a second store, export again: the same bytes
"$ESRC" export >"$T/export.jsonl"
check_in "import into a new store" 0 "imported 3 events" "" "$T/export.jsonl" -- \
    "$ESRC" --store "lmdb:$T/copy" import
"$ESRC" --store "lmdb:$T/copy" export >"$T/export2.jsonl"
n=$((n + 1))
if cmp -s "$T/export.jsonl" "$T/export2.jsonl"; then echo "ok $n: export of the copy is identical"; else
    fails=$((fails + 1)); echo "FAIL $n: export of the copy differs"; diff "$T/export.jsonl" "$T/export2.jsonl"; fi
check_in "importing again writes nothing" 0 "imported 0 events (3 were already there)" "" "$T/export.jsonl" -- \
    "$ESRC" --store "lmdb:$T/copy" import
printf '%s\n%s\n' "$(head -n 1 "$T/export.jsonl" | sed 's/orders/fresh/')" '{"stream": "x", "seq": }' >"$T/bad.jsonl"
check_in "import of malformed JSON writes nothing" 2 "" \
    "esrc: import: line 2: malformed JSON: unexpected token near '}'; nothing was imported" "$T/bad.jsonl" -- \
    "$ESRC" --store "lmdb:$T/copy" import
check "the copy is unchanged" 0 "ok: 3 events in 2 streams verified" "" -- "$ESRC" --store "lmdb:$T/copy" verify
sed 's/amount/amounT/' "$T/export.jsonl" >"$T/altered.jsonl"
check_in "import of an altered export fails its hash check" 4 "" \
    "esrc: import: event seq 2 does not hash to the exported hash: the export was altered" "$T/altered.jsonl" -- \
    "$ESRC" --store "lmdb:$T/altered" import

# a byte of the store's file flipped below the API: verify names the event
"$ESRC" --store "lmdb:$T/bad" append s T 'PAYLOAD-TO-FLIP' >/dev/null
perl -pi -e 's/PAYLOAD-TO-FLIP/PAYLOAD-TO-FLOP/' "$T/bad/data.mdb"
check "verify finds a flipped byte" 4 \
    "FAILED: stream s seq 1 position 1: chain hash does not match the event" "" -- \
    "$ESRC" --store "lmdb:$T/bad" verify

check "stats --json" 0 "$("$ESRC" --json stats)" "" -- "$ESRC" --json stats
n=$((n + 1))
if "$ESRC" --json stats | grep -q '"events":3,"streams":2,"last_position":3'; then echo "ok $n: stats counts"; else
    fails=$((fails + 1)); echo "FAIL $n: stats counts"; "$ESRC" --json stats; fi
check "help of a command" 0 "usage: esrc head STREAM

Print the stream's last seq (0 when it has no events)." "" -- "$ESRC" head --help

echo "$n checks, $fails failed"
[ "$fails" -eq 0 ]
