#!/bin/sh
# Black-box tests of the esrc command: run the binary, compare exact output
# and exit status.  usage: cli_test.sh ESRC [lmdb|mem]
#
# KIND is the store the tests use; without it, lmdb when `esrc --version`
# lists it, else mem.  A mem: store lives as long as one process, so on mem
# only the checks that need no state between two commands run (usage errors,
# imports into a fresh store, an import of two inputs in one process); the
# others are counted as skipped.
set -u
ESRC=$1
HERE=$(cd "$(dirname "$0")" && pwd)
F=$HERE/export.jsonl # 5 events made with the commands of the "append" checks
# below, plus a stream and a type that are not UTF-8 and control characters
KIND=${2:-$("$ESRC" --version | sed -n 's/^stores: .*\(lmdb\).*/\1/p')}
KIND=${KIND:-mem}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
# store NAME: the URI of a store of this run
store() { if [ "$KIND" = lmdb ]; then echo "lmdb:$T/$1"; else echo "mem:"; fi; }
export ESRC_STORE="$(store store)"
export ESRC_CLOCK_START_US=1767225600000000 # 2026-01-01T00:00:00Z + 1 s: every
# process starts its fake clock there; commit times never go back, so all are equal
echo "# store kind: $KIND"

. "$(dirname "$0")/check.sh"

# lmdb_only NAME: true on lmdb, else counts NAME as skipped
lmdb_only() {
    [ "$KIND" = lmdb ] && return 0
    skipped=$((skipped + 1))
    echo "skip: $1 (needs a store that outlives the process)"
    return 1
}

# check_import_fails NAME STATUS STDERR INPUT STORE-NAME: the import into a
# fresh copy of the store fails as said, and (lmdb) the copy's export is the
# same before and after
check_import_fails() {
    name=$1 want_status=$2 want_err=$3 input=$4 target=$(store "$5.$n")
    [ "$KIND" = lmdb ] && cp -r "$T/$5" "$T/$5.$n"
    [ "$KIND" = lmdb ] && "$ESRC" --store "$target" export >"$T/before.jsonl"
    check_in "$name" "$want_status" "" "$want_err" "$input" -- "$ESRC" --store "$target" import
    if [ "$KIND" = lmdb ]; then
        "$ESRC" --store "$target" export >"$T/after.jsonl"
        ok "$name: the store is unchanged" cmp -s "$T/before.jsonl" "$T/after.jsonl"
    fi
}

ID1=00000000000000000000000000000001
ID2=00000000000000000000000000000002
ID3=00000000000000000000000000000003

# ---- the command line, on any store ----
"$ESRC" --version >"$T/version"
ok "version" [ "$(sed -n 1p "$T/version")" = "esrc 0.1.0 (libeventsrc 0.1.0)" ]
ok "version lists the stores built in" grep -q "^stores: mem\( \|$\)" "$T/version"
check "no command" 2 "" "esrc: no command given (see --help)" -- "$ESRC"
check "unknown command" 2 "" "esrc: unknown command 'frobnicate' (see --help)" -- "$ESRC" frobnicate
check "unknown global option" 2 "" "esrc: unknown option '--frob' (see --help)" -- "$ESRC" --frob read s
check "unknown command option" 2 "" "esrc: read: unknown option '--frob' (see --help)" -- "$ESRC" read --frob s
check "option without its value" 2 "" "esrc: read: '--limit' needs a value (see --help)" -- "$ESRC" read s --limit
check "no store scheme" 2 "" "esrc: nothing: invalid argument: store URI 'nothing' has no scheme (try mem:, lmdb:PATH or postgres://…)" -- "$ESRC" --store nothing head s
check "append: bad --expect" 2 "" "esrc: --expect must be a non-negative integer, not 'soon' (see --help)" -- \
    "$ESRC" append --expect soon s T x
check "append: --expect with a blank" 2 "" "esrc: --expect must be a non-negative integer, not ' 1' (see --help)" -- \
    "$ESRC" append --expect ' 1' s T x
check "append: --expect with a sign" 2 "" "esrc: --expect must be a non-negative integer, not '+2' (see --help)" -- \
    "$ESRC" append --expect +2 s T x
check "append: bad id" 2 "" "esrc: an event id is 32 hex digits, not 'xyz' (see --help)" -- \
    "$ESRC" append --id xyz s T x
long=$(printf '%0256d' 0)
check "append: oversize stream key" 2 "" "esrc: stream key must be 1..255 bytes (it is 256) (see --help)" -- \
    "$ESRC" append "$long" T x
check "append: missing arguments" 2 "" "esrc: append needs STREAM TYPE [DATA] (see --help)" -- "$ESRC" append s
check "read: bad --from" 2 "" "esrc: --from must be a non-negative integer, not '-1' (see --help)" -- "$ESRC" read --from -1 orders/1
check "read: --limit with a sign" 2 "" "esrc: --limit must be a non-negative integer, not '+1' (see --help)" -- "$ESRC" read --limit +1 orders/1
check "fake clock at INT64_MAX is refused" 2 "" \
    "esrc: ESRC_CLOCK_START_US must be microseconds since 1970 from 0 to 253402300799000000 (9999-12-31), not '9223372036854775807' (see --help)" -- \
    env ESRC_CLOCK_START_US=9223372036854775807 "$ESRC" --store mem: append s T x
check "fake clock that is not a number is refused" 2 "" \
    "esrc: ESRC_CLOCK_START_US must be microseconds since 1970 from 0 to 253402300799000000 (9999-12-31), not '-5' (see --help)" -- \
    env ESRC_CLOCK_START_US=-5 "$ESRC" --store mem: append s T x
check "--json append of a stream that is not UTF-8" 0 \
    '{"stream_b64":"/3M=","seq":1,"position":1,"time_us":1767225601000000,"replayed":false}' "" -- \
    "$ESRC" --store mem: --json append "$(printf '\377s')" T x
check "append names a control character escaped" 0 'appended a\x1b[2Jb seq 1 at position 1' "" -- \
    "$ESRC" --store mem: append "$(printf 'a\033[2Jb')" T x
check "help of a command" 0 "usage: esrc head STREAM

Print the stream's last seq (0 when it has no events)." "" -- "$ESRC" head --help

# ---- import, on any store ----
check_in "import into a new store" 0 "imported 5 events" "" "$F" -- "$ESRC" --store "$(store copy)" import
check "import of the same file twice in one process" 0 "imported 5 events
imported 0 events (5 were already there)" "" -- "$ESRC" --store "$(store twice)" import "$F" "$F"
check "import from a pipe (spooled: read twice)" 0 "imported 5 events" "" -- \
    sh -c "cat '$F' | '$ESRC' --store '$(store pipe)' import"
check "import of a bad input from a pipe" 2 "" \
    "esrc: import: -: line 2: stream orders/1 seq 2 does not hash to its \"hash\": the export was altered or damaged; nothing was imported" -- \
    sh -c "sed 's/amount/amounT/' '$F' | '$ESRC' --store '$(store pipe2)' import"
check "import --json" 0 '{"input":"'"$F"'","imported":5,"already_there":0}' "" -- \
    "$ESRC" --store "$(store json)" --json import "$F"
check "import of a missing file" 2 "" "esrc: import: TMP/nope: No such file or directory" -- \
    "$ESRC" --store mem: import "$T/nope"
# one append of 1001 events (a run of one stream with one time): over the
# 1000-event batch of import, which wrote past its batch array (issue 7.1)
awk 'BEGIN { for (i = 1; i <= 1001; i++)
    printf "{\"stream\":\"big/1\",\"seq\":%d,\"time_us\":1767225601000000,\"id\":\"%032x\",\"type\":\"T\",\"data\":\"%d\"}\n", i, i + 4096, i }' >"$T/big.jsonl"
check_in "import of a run of 1001 events of one time" 0 "imported 1001 events" "" "$T/big.jsonl" -- \
    "$ESRC" --store "$(store big)" import
check "import of a run of 1001 events, twice" 0 "imported 1001 events
imported 0 events (1001 were already there)" "" -- "$ESRC" --store "$(store big2)" import "$T/big.jsonl" "$T/big.jsonl"

# Bad inputs.  Each has good events before the bad line, which must not be
# written; the target store already holds other events (lmdb).
sed -e 's/"orders\//"other\//' -e 's/"users\//"else\//' -e 's/"id":"0/"id":"f/' \
    -e 's/,"hash":"[0-9a-f]*"//' -e '/stream_b64/d' "$F" >"$T/other.jsonl"
[ "$KIND" = lmdb ] && "$ESRC" --store "$(store base)" import <"$T/other.jsonl" >/dev/null
L1=$(sed -n 1p "$F") L2=$(sed -n 2p "$F") L3=$(sed -n 3p "$F") L5=$(sed -n 5p "$F")
printf '%s\n' "$L1" "$L2" "$L3" "$(echo "$L5" | sed 's/"seq":2/"seq":3/')" >"$T/gap.jsonl"
check_import_fails "import: a seq gap" 2 \
    "esrc: import: -: line 4: stream users/1 seq 3 does not follow seq 1 of line 3; nothing was imported" \
    "$T/gap.jsonl" base
printf '%s\n' "$L1" "$L2" "$L5" >"$T/first.jsonl"
check_import_fails "import: a new stream that does not start at seq 1" 2 \
    "esrc: import: -: line 3: stream users/1 starts at seq 2, but the store does not have it: its first event must be seq 1; nothing was imported" \
    "$T/first.jsonl" base
printf '%s\n' "$L1" "$L2" "$(echo "$L3" | sed -e "s/$ID3/$ID1/" -e 's/,"hash":"[0-9a-f]*"//')" >"$T/id.jsonl"
check_import_fails "import: one id in two streams" 2 \
    "esrc: import: -: line 3: id $ID1 is already the id of line 1; nothing was imported" \
    "$T/id.jsonl" base
printf '%s\n' "$L1" "$L2" "$(echo "$L3" | sed 's/"time_us":1767225601000000/"time_us":1767225600999999/')" >"$T/back.jsonl"
check_import_fails "import: time going back" 2 \
    "esrc: import: -: line 3: time_us 1767225600999999 goes back from 1767225601000000 (line 2); nothing was imported" \
    "$T/back.jsonl" base
printf '%s\n' "$L1" "$(echo "$L2" | sed 's/amount/amounT/')" "$L3" >"$T/altered.jsonl"
check_import_fails "import: an altered event fails its hash check" 2 \
    "esrc: import: -: line 2: stream orders/1 seq 2 does not hash to its \"hash\": the export was altered or damaged; nothing was imported" \
    "$T/altered.jsonl" base
# the altered event has its hash, the next one (same stream, same time: one
# batch of the old import) has none: each event with a hash is checked (7.9)
printf '%s\n' "$(echo "$L1" | sed 's/total/totaL/')" "$(echo "$L2" | sed 's/,"hash":"[0-9a-f]*"//')" "$L3" >"$T/nohash.jsonl"
check_import_fails "import: an altered event before one without hash" 2 \
    "esrc: import: -: line 1: stream orders/1 seq 1 does not hash to its \"hash\": the export was altered or damaged; nothing was imported" \
    "$T/nohash.jsonl" base
printf '%s\n' "$L1" "$L2" "$L3" "$(echo "$L5" | sed -e 's/"time_us":[0-9]*/"time_us":9223372036854775807/' -e 's/,"hash":"[0-9a-f]*"//')" >"$T/max.jsonl"
check_import_fails "import: time_us at INT64_MAX" 2 \
    "esrc: import: -: line 4: time_us 9223372036854775807 is more than 24 hours ahead of the clock; nothing was imported" \
    "$T/max.jsonl" base
printf '%s\n%s\n' "$L1" '{"stream": "x", "seq": }' >"$T/bad.jsonl"
check_import_fails "import: malformed JSON" 2 \
    "esrc: import: -: line 2: malformed JSON: unexpected token near '}'; nothing was imported" "$T/bad.jsonl" base
printf '%s\n\n%s\n' "$L1" "$(echo "$L2" | sed 's/"meta"/"mate"/')" >"$T/field.jsonl"
check_import_fails "import: an unknown field (blank lines count)" 2 \
    "esrc: import: -: line 3: unknown field 'mate'; nothing was imported" "$T/field.jsonl" base

# ---- a store that outlives the process ----
if lmdb_only "commands on one store"; then
check_in "import of bad input into a missing store" 2 "" \
    "esrc: import: -: line 2: malformed JSON: unexpected token near '}'; nothing was imported" "$T/bad.jsonl" -- \
    "$ESRC" --store "lmdb:$T/never" import
ok "import of bad input does not make the store" [ ! -e "$T/never" ]
check "missing store" 1 "" "esrc: lmdb:TMP/nope: not found: no store at TMP/nope" -- "$ESRC" --store "lmdb:$T/nope" read s
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
printf '\000\001\377' >"$T/in"
check_in "append of a stream and a type that are not UTF-8" 0 'appended bin\xff seq 1 at position 4' "" "$T/in" -- \
    "$ESRC" append --id 00000000000000000000000000000004 "$(printf 'bin\377')" "$(printf 'T\376')" -
check "append of a type with control characters" 0 "appended users/1 seq 2 at position 5" "" -- \
    "$ESRC" append --id 00000000000000000000000000000005 users/1 "$(printf 'Odd\033[31mtype')" "$(printf 'a\033[2Jb')"

check "read" 0 "seq    position  time                        type                 data
1      1         2026-01-01T00:00:01.000000Z Placed               {\"total\":3}
2      2         2026-01-01T00:00:01.000000Z Paid                 {\"amount\":3}" "" -- "$ESRC" read orders/1
check "read backward with a limit" 0 "seq    position  time                        type                 data
2      2         2026-01-01T00:00:01.000000Z Paid                 {\"amount\":3}" "" -- "$ESRC" read --backward --limit 1 orders/1
check "read --json" 0 '{"stream":"orders/1","seq":2,"position":2,"time_us":1767225601000000,"time":"2026-01-01T00:00:01.000000Z","id":"00000000000000000000000000000002","type":"Paid","data":"{\"amount\":3}","meta":"{\"by\":\"bart\"}","hash":"d09b3f827381cd742e175551041bd8396f70c93cb9dc428515d09d2758c21c98"}' "" -- \
    "$ESRC" --json read --from 2 orders/1
check "read --json of a type that is not UTF-8" 0 '{"stream_b64":"Ymlu/w==","seq":1,"position":4,"time_us":1767225601000000,"time":"2026-01-01T00:00:01.000000Z","id":"00000000000000000000000000000004","type_b64":"VP4=","data_b64":"AAH/","meta":"","hash":"7881bd6343dd67e28e11ee9db1416dc38ef5986ec1e9d6942e89825e8101edde"}' "" -- \
    "$ESRC" --json read "$(printf 'bin\377')"
check "read escapes control characters" 0 "seq    position  time                        type                 data
1      3         2026-01-01T00:00:01.000000Z Created              {\"name\":\"homer\"}
2      5         2026-01-01T00:00:01.000000Z Odd\\x1b[31mtype      a\\x1b[2Jb" "" -- "$ESRC" read users/1
check "head" 0 "2" "" -- "$ESRC" head orders/1
check "head of nothing" 0 "0" "" -- "$ESRC" head nothing
check "head --json of a stream that is not UTF-8" 0 '{"stream_b64":"Ymlu/w==","head":1}' "" -- \
    "$ESRC" --json head "$(printf 'bin\377')"
check "streams" 0 "stream                                   head
bin\\xff                                  1
orders/1                                 2
users/1                                  2" "" -- "$ESRC" streams
check "streams --prefix --json" 0 '{"stream":"users/1","head":2}' "" -- "$ESRC" --json streams --prefix users/
check "log with filters" 0 "position  stream               seq    time                        type                 data
3         users/1              1      2026-01-01T00:00:01.000000Z Created              {\"name\":\"homer\"}" "" -- \
    "$ESRC" log --prefix users/ --type Created
check "log escapes keys and types" 0 "position  stream               seq    time                        type                 data
4         bin\\xff              1      2026-01-01T00:00:01.000000Z T\\xfe                <3 bytes>" "" -- \
    "$ESRC" log --from 4 --limit 1
check "verify" 0 "ok: 5 events in 3 streams verified" "" -- "$ESRC" verify
check "verify one stream" 0 "ok: 2 events in 1 streams verified" "" -- "$ESRC" verify orders/1

# the export is the committed one, byte for byte; so is the copy's export
"$ESRC" export >"$T/export.jsonl"
ok "export is the expected one (every field, types that are not UTF-8 too)" cmp -s "$F" "$T/export.jsonl"
"$ESRC" --store "$(store copy)" export >"$T/export2.jsonl"
ok "export of the imported copy is identical" cmp -s "$T/export.jsonl" "$T/export2.jsonl"
check "the copy verifies" 0 "ok: 5 events in 3 streams verified" "" -- "$ESRC" --store "$(store copy)" verify
check_in "importing again in another process writes nothing" 0 "imported 0 events (5 were already there)" "" \
    "$T/export.jsonl" -- "$ESRC" --store "$(store copy)" import
# a store that grew after the copy was made: the copy takes the new events
"$ESRC" append --id 00000000000000000000000000000006 orders/1 Shipped '{}' >/dev/null
"$ESRC" export >"$T/grown.jsonl"
check_in "import of a grown export adds only the new events" 0 "imported 1 events (5 were already there)" "" \
    "$T/grown.jsonl" -- "$ESRC" --store "$(store copy)" import
"$ESRC" --store "$(store copy)" export >"$T/grown2.jsonl"
ok "the grown copy is identical" cmp -s "$T/grown.jsonl" "$T/grown2.jsonl"
"$ESRC" --store "$(store big)" export >"$T/big-export.jsonl"
check_in "export of 1001 events of one time imports back" 0 "imported 1001 events" "" "$T/big-export.jsonl" -- \
    "$ESRC" --store "$(store big3)" import
check "the 1001 events verify" 0 "ok: 1001 events in 1 streams verified" "" -- "$ESRC" --store "$(store big3)" verify

# inputs that contradict the store (exit 3), into the copy
printf '%s\n%s\n' "$(echo "$L1" | sed -e 's/total/totaL/' -e 's/,"hash":"[0-9a-f]*"//')" "$(sed -n 1p "$T/other.jsonl")" >"$T/differs.jsonl"
check_import_fails "import: the store has another event at that seq" 3 \
    "esrc: import: -: line 1: stream orders/1 seq 1: the store has other events up to this seq than the input; nothing was imported" \
    "$T/differs.jsonl" copy
sed -n 1,2p "$T/other.jsonl" >"$T/reuse.jsonl"
echo "$(sed -n 3p "$T/other.jsonl" | sed "s/\"id\":\"[0-9a-f]*\"/\"id\":\"$ID2\"/")" >>"$T/reuse.jsonl"
check_import_fails "import: an id the store already has" 3 \
    "esrc: import: -: line 3: id $ID2 is already used in the store by stream orders/1 seq 2; nothing was imported" \
    "$T/reuse.jsonl" copy
printf '%s\n%s\n' "$(sed -n 1p "$T/other.jsonl")" "$(echo "$L1" | sed -e 's/"seq":1/"seq":9/' -e 's/,"hash":"[0-9a-f]*"//')" >"$T/ahead.jsonl"
check_import_fails "import: a stream continued past the store's head" 2 \
    "esrc: import: -: line 2: stream orders/1 starts at seq 9, but the store has it only up to seq 3; nothing was imported" \
    "$T/ahead.jsonl" copy
sed 's/"time_us":1767225601000000/"time_us":1767225600000000/' "$T/other.jsonl" >"$T/older.jsonl"
check_import_fails "import: times before the store's latest commit" 3 \
    "esrc: import: -: line 1: time_us 1767225600000000 is before the store's latest commit time 1767225601000000 (commit times never go back); nothing was imported" \
    "$T/older.jsonl" copy

# a byte of the store's file flipped below the API: verify names the event
"$ESRC" --store "lmdb:$T/bad" append s T 'PAYLOAD-TO-FLIP' >/dev/null
perl -pi -e 's/PAYLOAD-TO-FLIP/PAYLOAD-TO-FLOP/' "$T/bad/data.mdb"
check "verify finds a flipped byte" 4 \
    "FAILED: stream s seq 1 position 1: chain hash does not match the event" "" -- \
    "$ESRC" --store "lmdb:$T/bad" verify

check "stats --json" 0 "$("$ESRC" --json stats)" "" -- "$ESRC" --json stats
ok "stats counts" sh -c "'$ESRC' --json stats | grep -q '\"events\":6,\"streams\":3,\"last_position\":6'"
fi

echo "$n checks, $fails failed, $skipped skipped"
[ "$fails" -eq 0 ]
