#!/bin/sh
# Crypto-shredding, black-box (issue 12, doc/crypto-shredding.md): a master
# key; `esrc shred user/`; events of user/1, user/1/settings and user/2 with
# a distinctive plaintext, and a plaintext stream as a control.  With the key
# read/log show the data; export never holds the plaintext (envelopes,
# base64).  `esrc forget user/1`: read/log show <forgotten> for user/1's
# streams only, `esrc verify` is still ok and `verify --since` a digest taken
# before the forget passes (hashes cover the ciphertext).  Without the key:
# <locked>, appends refused (exit 2).  On lmdb data.mdb never holds the
# plaintext while the control string is found; on pg the same on a pg_dump
# of the schema.  An export imported into a new store keeps the envelopes and
# hashes (verify ok there, the same export again).
# Usage: shred_test.sh ESRC lmdb|pg   (pg: ES_TEST_PG_URI, else exit 77)
set -u
ESRC=$1
KIND=$2
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
case $KIND in
pg)
    if [ -z "${ES_TEST_PG_URI:-}" ]; then
        echo "SKIPPED: no PostgreSQL server given (set ES_TEST_PG_URI)"
        exit 77
    fi
    SCHEMA=es_clishred_$$
    case $ES_TEST_PG_URI in
    *\?*) URI="$ES_TEST_PG_URI&schema=$SCHEMA" URI2="$ES_TEST_PG_URI&schema=${SCHEMA}_b" ;;
    *) URI="$ES_TEST_PG_URI?schema=$SCHEMA" URI2="$ES_TEST_PG_URI?schema=${SCHEMA}_b" ;;
    esac
    ;;
lmdb) URI="lmdb:$T/s?nosync" URI2="lmdb:$T/s2?nosync" ;;
*) echo "usage: shred_test.sh ESRC lmdb|pg" >&2; exit 2 ;;
esac
export ESRC_CLOCK_START_US=1767225600000000 # 2026-01-01T00:00:00Z
unset ESRC_MASTER_KEY_FILE
echo "# store kind: $KIND"
echo 's/^$//' >"$T/norm.sed" # positions, once known

# norm FILE: positions as P1..Pn (pg's are not dense), the simulated times
# (a pg handle reads its clock once more on opening), ids, hashes and
# envelopes (random nonces) masked, runs of blanks as one
norm() {
    sed -E -f "$T/norm.sed" \
        -e "s|$T|TMP|g" \
        -e 's/"id":"[0-9a-f]{32}"/"id":ID/g' \
        -e 's/2026-01-01T00:00:0[0-9]\.000000Z/TIME/g' -e 's/"time_us":176722560[0-9]000000/"time_us":TUS/g' \
        -e 's/"hash":"[0-9a-f]{64}"/"hash":HASH/g' \
        -e 's/"data_b64":"[A-Za-z0-9+\/=]+"/"data_b64":ENV/g' \
        -e 's/  +/ /g' "$1"
}

. "$(dirname "$0")/check.sh"

e() { "$ESRC" --store "$URI" "$@"; }
q() { "$@" >/dev/null; }
k() { "$ESRC" --store "$URI" --master-key "$T/mk" "$@"; }
head -c 32 /dev/urandom >"$T/mk"
head -c 32 /dev/urandom >"$T/mk-other"

check "init" 0 "initialised $(echo "$URI" | sed "s|$T|TMP|")" "" -- e init
check "shred user/" 0 "" "" -- e shred user/
check "shred lists the rule" 0 "user/" "" -- e shred
check "append without the master key is refused" 2 "" \
    "esrc: append: invalid argument: stream 'user/1' is under a shredding rule and this handle has no master key (es_store_set_master_key): nothing is written in plaintext there" \
    -- e append user/1 UserCreated '{"name":"ZEBRA-PLAINTEXT-one"}'
ok "append user/1" q k append user/1 UserCreated '{"name":"ZEBRA-PLAINTEXT-one"}'
ok "append user/2" q k append user/2 UserCreated '{"name":"ZEBRA-PLAINTEXT-two"}'
ok "append user/1/settings" q k append user/1/settings ThemeSet '{"theme":"ZEBRA-PLAINTEXT-dark"}'
ok "append plain/x" q e append plain/x Note '{"n":"CONTROL-MARKER-plain"}'
ok "append user/2 with the key in the environment" \
    q env ESRC_MASTER_KEY_FILE="$T/mk" "$ESRC" --store "$URI" append user/2 UserRenamed \
    '{"name":"ZEBRA-PLAINTEXT-two2"}'
ok "a wrong master key cannot write user/1" \
    sh -c '! "$1" --store "$2" --master-key "$3" append user/1 X "{}" 2>/dev/null' \
    sh "$ESRC" "$URI" "$T/mk-other"

# positions → P1..P5 from the log
e log --json >"$T/log.json" || echo "FAIL: log --json"
i=1
for p in $(sed -E 's/.*"position":([0-9]+).*/\1/' "$T/log.json"); do
    printf 's/"position":%s,/"position":P%s,/\ns/^%s( +[a-z])/P%s\\1/\ns/^([0-9]+ +)%s( +[0-9]{4}-)/\\1P%s\\2/\n' \
        "$p" $i "$p" $i "$p" $i >>"$T/norm.sed"
    i=$((i + 1))
done
ok "five events in the log" [ $i -eq 6 ]

TIME=TIME
check "read user/1 with the key" 0 "seq position time type data
1 P1 $TIME UserCreated {\"name\":\"ZEBRA-PLAINTEXT-one\"}" "" -- k read user/1
LOG_OPEN="position stream seq time type data
P1 user/1 1 $TIME UserCreated {\"name\":\"ZEBRA-PLAINTEXT-one\"}
P2 user/2 1 $TIME UserCreated {\"name\":\"ZEBRA-PLAINTEXT-two\"}
P3 user/1/settings 1 $TIME ThemeSet {\"theme\":\"ZEBRA-PLAINTEXT-dark\"}
P4 plain/x 1 $TIME Note {\"n\":\"CONTROL-MARKER-plain\"}
P5 user/2 2 $TIME UserRenamed {\"name\":\"ZEBRA-PLAINTEXT-two2\"}"
check "log with the key" 0 "$LOG_OPEN" "" -- k log
check "log --json with the key" 0 \
    "{\"stream\":\"user/1\",\"seq\":1,\"position\":P1,\"time_us\":TUS,\"time\":\"$TIME\",\"id\":ID,\"type\":\"UserCreated\",\"data\":\"{\\\"name\\\":\\\"ZEBRA-PLAINTEXT-one\\\"}\",\"meta\":\"\",\"hash\":HASH,\"shred\":\"decrypted\"}
{\"stream\":\"user/2\",\"seq\":1,\"position\":P2,\"time_us\":TUS,\"time\":\"$TIME\",\"id\":ID,\"type\":\"UserCreated\",\"data\":\"{\\\"name\\\":\\\"ZEBRA-PLAINTEXT-two\\\"}\",\"meta\":\"\",\"hash\":HASH,\"shred\":\"decrypted\"}
{\"stream\":\"user/1/settings\",\"seq\":1,\"position\":P3,\"time_us\":TUS,\"time\":\"$TIME\",\"id\":ID,\"type\":\"ThemeSet\",\"data\":\"{\\\"theme\\\":\\\"ZEBRA-PLAINTEXT-dark\\\"}\",\"meta\":\"\",\"hash\":HASH,\"shred\":\"decrypted\"}
{\"stream\":\"plain/x\",\"seq\":1,\"position\":P4,\"time_us\":TUS,\"time\":\"$TIME\",\"id\":ID,\"type\":\"Note\",\"data\":\"{\\\"n\\\":\\\"CONTROL-MARKER-plain\\\"}\",\"meta\":\"\",\"hash\":HASH}
{\"stream\":\"user/2\",\"seq\":2,\"position\":P5,\"time_us\":TUS,\"time\":\"$TIME\",\"id\":ID,\"type\":\"UserRenamed\",\"data\":\"{\\\"name\\\":\\\"ZEBRA-PLAINTEXT-two2\\\"}\",\"meta\":\"\",\"hash\":HASH,\"shred\":\"decrypted\"}" \
    "" -- k log --json
# export writes envelopes as stored, with or without the key: no plaintext
EXPORT="{\"stream\":\"user/1\",\"seq\":1,\"position\":P1,\"time_us\":TUS,\"id\":ID,\"type\":\"UserCreated\",\"data_b64\":ENV,\"meta\":\"\",\"hash\":HASH}
{\"stream\":\"user/2\",\"seq\":1,\"position\":P2,\"time_us\":TUS,\"id\":ID,\"type\":\"UserCreated\",\"data_b64\":ENV,\"meta\":\"\",\"hash\":HASH}
{\"stream\":\"user/1/settings\",\"seq\":1,\"position\":P3,\"time_us\":TUS,\"id\":ID,\"type\":\"ThemeSet\",\"data_b64\":ENV,\"meta\":\"\",\"hash\":HASH}
{\"stream\":\"plain/x\",\"seq\":1,\"position\":P4,\"time_us\":TUS,\"id\":ID,\"type\":\"Note\",\"data\":\"{\\\"n\\\":\\\"CONTROL-MARKER-plain\\\"}\",\"meta\":\"\",\"hash\":HASH}
{\"stream\":\"user/2\",\"seq\":2,\"position\":P5,\"time_us\":TUS,\"id\":ID,\"type\":\"UserRenamed\",\"data_b64\":ENV,\"meta\":\"\",\"hash\":HASH}"
check "export with the key: envelopes" 0 "$EXPORT" "" -- k export
k export >"$T/export1.jsonl"
ok "the export's envelopes hold no plaintext (base64-decoded)" \
    sh -c '! sed -E -n "s/.*\"data_b64\":\"([^\"]*)\".*/\1/p" "$1" | while read -r b; do
        printf %s "$b" | base64 -d; done | grep -q ZEBRA' sh "$T/export1.jsonl"
ok "the export's control line is plaintext" grep -q CONTROL-MARKER-plain "$T/export1.jsonl"

# without the key: locked, exit 0
LOG_LOCKED="position stream seq time type data
P1 user/1 1 $TIME UserCreated <locked>
P2 user/2 1 $TIME UserCreated <locked>
P3 user/1/settings 1 $TIME ThemeSet <locked>
P4 plain/x 1 $TIME Note {\"n\":\"CONTROL-MARKER-plain\"}
P5 user/2 2 $TIME UserRenamed <locked>"
check "log without the key: locked" 0 "$LOG_LOCKED" "" -- e log
check "log with another master key: locked" 0 "$LOG_LOCKED" "" \
    -- "$ESRC" --store "$URI" --master-key "$T/mk-other" log
check "read --json without the key" 0 \
    "{\"stream\":\"user/2\",\"seq\":1,\"position\":P2,\"time_us\":TUS,\"time\":\"$TIME\",\"id\":ID,\"type\":\"UserCreated\",\"data\":\"\",\"meta\":\"\",\"hash\":HASH,\"shred\":\"locked\"}" \
    "" -- e read user/2 --limit 1 --json

# a digest before the forget
ok "key create" sh -c '"$1" key create --out "$2" >/dev/null' sh "$ESRC" "$T/sk"
e digest --key "$T/sk" >"$T/d1.json" || echo "FAIL: digest"
pk=$("$ESRC" key show "$T/sk")
e log --json >"$T/hashes-before"

check "forget user/1" 0 "forgot user/1" "" -- e forget user/1
check "forget user/1 again: not found" 1 "" \
    "esrc: forget: not found: es_forget: subject 'user/1' has no key (never written, or forgotten already)" \
    -- e forget user/1
check "forget needs a subject" 2 "" "esrc: forget needs one SUBJECT (see --help)" -- e forget

check "read user/1 after the forget, with the key" 0 "seq position time type data
1 P1 $TIME UserCreated <forgotten>" "" -- k read user/1
check "log after the forget, with the key" 0 "position stream seq time type data
P1 user/1 1 $TIME UserCreated <forgotten>
P2 user/2 1 $TIME UserCreated {\"name\":\"ZEBRA-PLAINTEXT-two\"}
P3 user/1/settings 1 $TIME ThemeSet <forgotten>
P4 plain/x 1 $TIME Note {\"n\":\"CONTROL-MARKER-plain\"}
P5 user/2 2 $TIME UserRenamed {\"name\":\"ZEBRA-PLAINTEXT-two2\"}" "" -- k log
check "read --json user/1/settings after the forget" 0 \
    "{\"stream\":\"user/1/settings\",\"seq\":1,\"position\":P3,\"time_us\":TUS,\"time\":\"$TIME\",\"id\":ID,\"type\":\"ThemeSet\",\"data\":\"\",\"meta\":\"\",\"hash\":HASH,\"shred\":\"forgotten\"}" \
    "" -- k read user/1/settings --json
check "log without the key after the forget" 0 "position stream seq time type data
P1 user/1 1 $TIME UserCreated <forgotten>
P2 user/2 1 $TIME UserCreated <locked>
P3 user/1/settings 1 $TIME ThemeSet <forgotten>
P4 plain/x 1 $TIME Note {\"n\":\"CONTROL-MARKER-plain\"}
P5 user/2 2 $TIME UserRenamed <locked>" "" -- e log
check "export after the forget: the same envelopes" 0 "$EXPORT" "" -- k export
k export >"$T/export2.jsonl"
ok "export after the forget is byte-identical to the one before" cmp -s "$T/export1.jsonl" "$T/export2.jsonl"
e log --json >"$T/hashes-after"
ok "ids, positions and hashes unchanged by the forget" sh -c \
    'sed -E "s/.*(\"position\":[0-9]+).*(\"id\":\"[0-9a-f]+\").*(\"hash\":\"[0-9a-f]+\").*/\1 \2 \3/" "$1" >"$1.k" &&
     sed -E "s/.*(\"position\":[0-9]+).*(\"id\":\"[0-9a-f]+\").*(\"hash\":\"[0-9a-f]+\").*/\1 \2 \3/" "$2" >"$2.k" &&
     cmp -s "$1.k" "$2.k"' sh "$T/hashes-before" "$T/hashes-after"

check "verify after the forget" 0 "ok: 5 events in 4 streams verified" "" -- e verify
# a new key for user/1: new events readable, the old stay forgotten
ok "append user/1 again (a new key)" q k append user/1 UserCreated '{"name":"ZEBRA-PLAINTEXT-new"}'
check "read user/1: old forgotten, new readable" 0 "seq position time type data
1 P1 $TIME UserCreated <forgotten>
2 P6 $TIME UserCreated {\"name\":\"ZEBRA-PLAINTEXT-new\"}" "" \
    -- sh -c '"$1" --store "$2" --master-key "$3" read user/1 | sed -E "s/^2( +)[0-9]+ /2\1P6 /"' \
    sh "$ESRC" "$URI" "$T/mk"
check "verify --since the digest before the forget" 0 \
    "ok: the log of 6 events extends the digest of 5 events (consistency proof checked)" "" \
    -- e verify --since "$T/d1.json" --pubkey "$pk"

# the raw store holds no plaintext of encrypted events; the control is found
case $KIND in
lmdb)
    ok "data.mdb: the control string is found" [ "$(grep -c CONTROL-MARKER-plain "$T/s/data.mdb")" -ge 1 ]
    ok "data.mdb: no plaintext of encrypted events" [ "$(grep -c ZEBRA-PLAINTEXT "$T/s/data.mdb")" = 0 ]
    ;;
pg)
    base=${ES_TEST_PG_URI%%\?*}
    # bytea is dumped in hex: search for both forms
    hex() { printf %s "$1" | od -An -tx1 | tr -d ' \n'; }
    if pg_dump --data-only --schema="$SCHEMA" "$base" >"$T/dump.sql" 2>"$T/dump.err"; then
        ok "pg_dump: the control string is found" \
            grep -q -e CONTROL-MARKER-plain -e "$(hex CONTROL-MARKER-plain)" "$T/dump.sql"
        ok "pg_dump: no plaintext of encrypted events" \
            sh -c '! grep -q -e ZEBRA-PLAINTEXT -e "$2" "$1"' sh "$T/dump.sql" "$(hex ZEBRA-PLAINTEXT)"
    else
        echo "skip: pg_dump failed: $(head -1 "$T/dump.err")"
        skipped=$((skipped + 2))
    fi
    ;;
esac

# export → import into a new store: envelopes and hashes kept
check "init the second store" 0 "initialised $(echo "$URI2" | sed "s|$T|TMP|")" "" \
    -- "$ESRC" --store "$URI2" init
ok "import the export" sh -c '"$1" --store "$2" import "$3" >/dev/null' sh "$ESRC" "$URI2" "$T/export2.jsonl"
check "verify the imported store" 0 "ok: 5 events in 4 streams verified" "" \
    -- "$ESRC" --store "$URI2" verify
"$ESRC" --store "$URI2" export >"$T/export3.jsonl"
ok "its export: the same envelopes and hashes" sh -c \
    'sed -E "s/\"position\":[0-9]+,//" "$1" >"$1.np" && sed -E "s/\"position\":[0-9]+,//" "$2" >"$2.np" &&
     cmp -s "$1.np" "$2.np"' sh "$T/export2.jsonl" "$T/export3.jsonl"
check "the imported store has no subject keys: forgotten there" 0 "1 UserCreated <forgotten>
2 UserRenamed <forgotten>" "" \
    -- sh -c '"$1" --store "$2" --master-key "$3" read user/2 | awk "NR > 1 { print \$1, \$4, \$5 }"' \
    sh "$ESRC" "$URI2" "$T/mk"

if [ "$KIND" = pg ]; then
    psql -q "${ES_TEST_PG_URI%%\?*}" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" \
        -c "DROP SCHEMA IF EXISTS ${SCHEMA}_b CASCADE" >/dev/null 2>&1
fi
echo "# $n checks, $fails failed, $skipped skipped"
[ $fails -eq 0 ]
