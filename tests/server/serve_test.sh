#!/bin/sh
# esrc serve, black-box: every route through curl against a server on a free
# loopback port (port 0, read back from its first line), with exact bodies
# where they are stable (a fake clock and given event ids make them so),
# paging, the SSE feed and Last-Event-ID, conflicts and retries, tenant
# isolation across routes, filters and feeds, hostile requests, and a
# SIGTERM during a burst of appends (every 2xx append is in the store).
# usage: serve_test.sh ESRC lmdb|pg
set -u
esrc=$1 backend=$2
T=$(mktemp -d)
pid=
cleanup() {
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
case $backend in
lmdb) store="lmdb:$T/store" ;;
pg)
    if [ -z "${ES_TEST_PG_URI:-}" ]; then
        echo "SKIPPED: no PostgreSQL server given (set ES_TEST_PG_URI)"
        exit 77
    fi
    case $ES_TEST_PG_URI in
    *\?*) store="$ES_TEST_PG_URI&schema=serve_$$" ;;
    *) store="$ES_TEST_PG_URI?schema=serve_$$" ;;
    esac
    ;;
*) echo "usage: serve_test.sh ESRC lmdb|pg" >&2; exit 2 ;;
esac
command -v curl >/dev/null || { echo "SKIPPED: no curl"; exit 77; }

fails=0 n=0
ok() { n=$((n + 1)); echo "ok $n: $1"; }
bad() { n=$((n + 1)); fails=$((fails + 1)); echo "FAIL $n: $1"; shift; for l in "$@"; do echo "  $l"; done; }

# Positions are dense on lmdb; on postgres they are transaction ids, and the
# store reads its clock more often, so bodies compare with both masked.
norm() {
    if [ "$backend" = pg ]; then
        sed -E 's/"(position|first_position|last_position|resume_from|bad_position)":[0-9]+/"\1":P/g; s/from=[0-9]+/from=P/g; s/"time_us":[0-9]+/"time_us":T/g; s/"time":"[^"]*"/"time":"T"/g'
    else
        cat
    fi
}

# req NAME STATUS [EXACT-BODY|-] -- CURL-ARGS...: one request; its body is in $T/body
req() {
    name=$1 want=$2 wantbody=$3
    shift 4
    status=$(curl -s -o "$T/body" -w '%{http_code}' "$@")
    body=$(norm <"$T/body")
    [ "$wantbody" != - ] && wantbody=$(printf '%s\n' "$wantbody" | norm)
    if [ "$status" != "$want" ]; then
        bad "$name" "status $status (want $want)" "body: $body"
    elif [ "$wantbody" != - ] && [ "$body" != "$wantbody" ]; then
        bad "$name" "body: $body" "want: $wantbody"
    else
        ok "$name"
    fi
}
# has NAME TEXT: the last body holds TEXT; hasnt: it does not
has() {
    w=$(printf '%s\n' "$2" | norm)
    if norm <"$T/body" | grep -qF -- "$w"; then ok "$1"; else bad "$1" "no '$w' in: $(cat "$T/body")"; fi
}
hasnt() { if grep -qF -- "$2" "$T/body"; then bad "$1" "'$2' in: $(cat "$T/body")"; else ok "$1"; fi; }

start() {
    ESRC_CLOCK_START_US=1767225600000000 "$esrc" --store "$store" serve --listen 127.0.0.1:0 \
        --tokens "$T/tokens" --max-body 65536 --max-events 5 "$@" >"$T/serve.out" 2>>"$T/serve.err" &
    pid=$!
    i=0
    while ! grep -q listening "$T/serve.out" 2>/dev/null; do
        i=$((i + 1))
        if [ $i -gt 100 ] || ! kill -0 $pid 2>/dev/null; then
            echo "FAIL: the server did not start"; cat "$T/serve.err"; exit 1
        fi
        sleep 0.05
    done
    port=$(sed -n 's/.*127\.0\.0\.1:\([0-9]*\).*/\1/p' "$T/serve.out")
    U=http://127.0.0.1:$port
}

tok() { "$esrc" token create --tokens "$T/tokens" "$@"; }
ADMIN=$(tok --name admin --rights read,append,admin --prefix '')
T1=$(tok --name t1 --rights read,append --prefix tenant/1/)
T2=$(tok --name t2 --rights read,append --prefix tenant/2/)
RO1=$(tok --name ro1 --rights read --prefix tenant/1/)
mode=$(stat -c %a "$T/tokens")
[ "$mode" = 600 ] && ok "the token file is 0600" || bad "the token file is 0600" "mode $mode"
if grep -qF "${T1#est_*_}" "$T/tokens"; then bad "the file keeps no secret"; else ok "the file keeps no secret"; fi
A="Authorization: Bearer $ADMIN" A1="Authorization: Bearer $T1" A2="Authorization: Bearer $T2"
AR="Authorization: Bearer $RO1"
start

ID1=00000000000000000000000000000001 ID2=00000000000000000000000000000002
E1='{"stream":"tenant/1/a","first_seq":1,"last_seq":1,"first_position":1,"last_position":1,"time_us":1767225601000000,"time":"2026-01-01T00:00:01.000000Z","head":1,"replayed":false}'

# ---- operations, auth ----
req "health" 200 '{"status":"ok"}' -- $U/health
req "ready" 200 '{"status":"ok"}' -- $U/ready
req "no token: 401" 401 '{"error":"unauthorized","message":"an Authorization: Bearer token is needed"}' -- $U/streams
req "a wrong token: 401" 401 '{"error":"unauthorized","message":"the token is not valid"}' -- -H "Authorization: Bearer est_0000000000000000_$(printf '%064d' 0)" $U/streams
req "not a bearer token: 401" 401 - -- -H "Authorization: Basic YTpi" $U/log

# ---- append ----
req "append one event" 201 "$E1" -- -H "$A1" -X POST -d "{\"type\":\"Created\",\"data\":{\"n\":1},\"id\":\"$ID1\"}" "$U/streams/tenant%2F1%2Fa?expected=no-stream"
req "the same append again: the original answer, replayed" 200 "$(echo "$E1" | sed 's/"replayed":false/"replayed":true/')" -- -H "$A1" -X POST -d "{\"type\":\"Created\",\"data\":{\"n\":1},\"id\":\"$ID1\"}" "$U/streams/tenant%2F1%2Fa?expected=no-stream"
req "a conflict says the head" 409 '{"error":"conflict","message":"the stream is at seq 1","head":1,"expected":"no-stream"}' -- -H "$A1" -X POST -d '{"type":"Created"}' "$U/streams/tenant%2F1%2Fa?expected=no-stream"
req "an id used in another stream" 409 - -- -H "$A1" -X POST -d "{\"type\":\"Created\",\"id\":\"$ID1\"}" "$U/streams/tenant%2F1%2Fb"
has "  is a duplicate" '"error":"duplicate"'
req "a batch at an exact seq" 201 '{"stream":"tenant/1/a","first_seq":2,"last_seq":4,"first_position":2,"last_position":4,"time_us":1767225602000000,"time":"2026-01-01T00:00:02.000000Z","head":4,"replayed":false}' -- -H "$A1" -X POST -d '{"expected":1,"events":[{"type":"Renamed","data":"x","meta":"m"},{"type":"Renamed","data_b64":"AAE="},{"type":"Deleted"}]}' "$U/streams/tenant%2F1%2Fa"
req "tenant 2 appends" 201 - -- -H "$A2" -X POST -d '{"type":"Secret2","data":"hidden"}' "$U/streams/tenant%2F2%2Fx"
req "tenant 1, another stream" 201 - -- -H "$A1" -X POST -d '{"type":"Other"}' "$U/streams/tenant%2F1%2Fb"

# ---- reads ----
req "read a page" 200 - -- -H "$AR" "$U/streams/tenant%2F1%2Fa?limit=2"
has "  with a next link" '"next":"/streams/tenant%2F1%2Fa?from=3&limit=2"'
has "  in the library's encoding" '"seq":2,"position":2,"time_us":1767225602000000,"time":"2026-01-01T00:00:02.000000Z","id":'
req "the next page" 200 - -- -H "$AR" "$U/streams/tenant%2F1%2Fa?from=3&limit=2"
has "  has seq 3 (base64 data)" '"seq":3,' ; has "  data_b64" '"data_b64":"AAE="'
has "  is the last" '"next":null'
req "read backward" 200 - -- -H "$AR" "$U/streams/tenant%2F1%2Fa?direction=backward&limit=3"
has "  from the head down" '"next":"/streams/tenant%2F1%2Fa?from=1&limit=3&direction=backward"'
req "a range" 200 - -- -H "$AR" "$U/streams/tenant%2F1%2Fa?from=2&to=2"
has "  one event" '"events":[{"stream":"tenant/1/a","seq":2,'
req "head" 200 '{"stream":"tenant/1/a","head":4}' -- -H "$AR" "$U/streams/tenant%2F1%2Fa/head"
req "head of no stream" 200 '{"stream":"tenant/1/none","head":0}' -- -H "$AR" "$U/streams/tenant%2F1%2Fnone/head"
req "verify a stream" 200 '{"ok":true,"events_checked":4,"streams_checked":1,"stream":"tenant/1/a"}' -- -H "$AR" "$U/streams/tenant%2F1%2Fa/verify"
req "verify all (admin)" 200 '{"ok":true,"events_checked":6,"streams_checked":3}' -- -H "$A" "$U/verify"
req "stats" 200 - -- -H "$A" "$U/stats"
has "  counts" '"events":6,"streams":3'
req "list streams, paged" 200 '{"streams":[{"stream":"tenant/1/a","head":4}],"next":"/streams?after=tenant%2F1%2Fa&limit=1"}' -- -H "$A" "$U/streams?limit=1"
req "  the next page" 200 '{"streams":[{"stream":"tenant/1/b","head":1}],"next":"/streams?after=tenant%2F1%2Fb&limit=1"}' -- -H "$A" "$U/streams?after=tenant%2F1%2Fa&limit=1"
req "  the last" 200 '{"streams":[{"stream":"tenant/2/x","head":1}],"next":null}' -- -H "$A" "$U/streams?after=tenant%2F1%2Fb&limit=1"
req "the log, paged" 200 - -- -H "$A" "$U/log?limit=2"
has "  next" '"next":"/log?from=3&limit=2"'
req "the log by type" 200 - -- -H "$A" "$U/log?type=Renamed"
has "  Renamed" '"type":"Renamed"'; hasnt "  only" '"type":"Created"'
req "the log by prefix" 200 - -- -H "$A" "$U/log?prefix=tenant%2F2%2F"
has "  tenant 2" '"stream":"tenant/2/x"'; hasnt "  only" 'tenant/1/'

# ---- tenant isolation ----
req "t1 cannot read tenant 2" 403 '{"error":"forbidden","message":"the token does not allow this"}' -- -H "$A1" "$U/streams/tenant%2F2%2Fx"
req "t1 cannot append to tenant 2" 403 - -- -H "$A1" -X POST -d '{"type":"X"}' "$U/streams/tenant%2F2%2Fx"
req "t1 cannot see tenant 2's head" 403 - -- -H "$A1" "$U/streams/tenant%2F2%2Fx/head"
req "t1 cannot verify tenant 2" 403 - -- -H "$A1" "$U/streams/tenant%2F2%2Fx/verify"
req "t1 cannot verify all" 403 - -- -H "$A1" "$U/verify"
req "t1 has no stats" 403 - -- -H "$A1" "$U/stats"
req "t1 has no metrics" 403 - -- -H "$A1" "$U/metrics"
req "t1 has no subscriptions" 403 - -- -H "$A1" "$U/subscriptions"
req "t1 lists only its streams" 200 '{"streams":[{"stream":"tenant/1/a","head":4},{"stream":"tenant/1/b","head":1}],"next":null}' -- -H "$A1" "$U/streams"
req "  even under prefix tenant/" 200 '{"streams":[{"stream":"tenant/1/a","head":4},{"stream":"tenant/1/b","head":1}],"next":null}' -- -H "$A1" "$U/streams?prefix=tenant%2F"
req "  and nothing under tenant/2/" 200 '{"streams":[],"next":null}' -- -H "$A1" "$U/streams?prefix=tenant%2F2%2F"
req "  nor after it" 200 '{"streams":[],"next":null}' -- -H "$A1" "$U/streams?after=tenant%2F1%2Fb"
req "t1's log" 200 - -- -H "$A1" "$U/log"
hasnt "  has no tenant 2" 'tenant/2'; has "  has its own" 'tenant/1/b'
req "t1's log filtered to tenant/2/" 200 - -- -H "$A1" "$U/log?prefix=tenant%2F2%2F"
has "  is empty" '"events":[]'
req "t1's log by type Secret2" 200 - -- -H "$A1" "$U/log?type=Secret2"
has "  is empty" '"events":[]'
curl -s -N --max-time 1 -H "$A1" "$U/log/feed?from=1" >"$T/body"
hasnt "t1's feed has no tenant 2" 'tenant/2'; has "  but its own" 'tenant/1/b'
curl -s -N --max-time 1 -H "$A1" "$U/log/feed?from=1&prefix=tenant%2F2%2F" >"$T/body"
hasnt "t1's feed under tenant/2/ is empty" 'data:'
req "read-only cannot append" 403 - -- -H "$AR" -X POST -d '{"type":"X"}' "$U/streams/tenant%2F1%2Fa"
req "'..' escaped in a key is just bytes of it" 201 - -- -H "$A1" -X POST -d '{"type":"X"}' "$U/streams/tenant%2F1%2F..%2F2%2Fx"
has "  under tenant/1/" '"stream":"tenant/1/../2/x"'
req "  tenant 2's stream is unchanged" 200 '{"stream":"tenant/2/x","head":1}' -- -H "$A2" "$U/streams/tenant%2F2%2Fx/head"
req "a raw '..' segment" 400 - -- --path-as-is -H "$A1" "$U/streams/tenant%2F1%2Fa/../../streams/tenant%2F2%2Fx"
req "an escaped '..' segment" 400 - -- --path-as-is -H "$A1" "$U/streams/%2e%2e/head"
req "unescaped slashes are path segments" 404 - -- -H "$A1" "$U/streams/tenant/2/x"
req "a bad escape" 400 - -- -H "$A1" "$U/streams/tenant%2"

# ---- hostile requests ----
req "bad JSON" 400 - -- -H "$A1" -X POST -d '{"type":' "$U/streams/tenant%2F1%2Fc"
has "  says so" '"error":"bad_request","message":"malformed JSON'
printf '{"type":"T","data":"\377\376"}' >"$T/bad-utf8"
req "invalid UTF-8" 400 - -- -H "$A1" -X POST --data-binary @"$T/bad-utf8" "$U/streams/tenant%2F1%2Fc"
head -c 70000 /dev/zero | tr '\0' a | sed 's/^/{"type":"T","data":"/; s/$/"}/' >"$T/big"
req "an oversized body (Content-Length)" 413 "{\"error\":\"too_big\",\"message\":\"the body is $(wc -c <"$T/big") bytes; the limit is 65536\"}" -- -H "$A1" -X POST --data-binary @"$T/big" "$U/streams/tenant%2F1%2Fc"
req "an oversized body (chunked)" 413 '{"error":"too_big","message":"the body is over 65536 bytes"}' -- -H "$A1" -H "Transfer-Encoding: chunked" -X POST --data-binary @"$T/big" "$U/streams/tenant%2F1%2Fc"
req "too many events" 413 '{"error":"too_big","message":"6 events in one append; the limit is 5"}' -- -H "$A1" -X POST -d '{"events":[{"type":"a"},{"type":"a"},{"type":"a"},{"type":"a"},{"type":"a"},{"type":"a"}]}' "$U/streams/tenant%2F1%2Fc"
req "no events" 400 - -- -H "$A1" -X POST -d '{"events":[]}' "$U/streams/tenant%2F1%2Fc"
req "an unknown field" 400 '{"error":"bad_request","message":"event 0: unknown field '"'"'typo'"'"'"}' -- -H "$A1" -X POST -d '{"type":"a","typo":1}' "$U/streams/tenant%2F1%2Fc"
req "a bad id" 400 - -- -H "$A1" -X POST -d '{"type":"a","id":"xyz"}' "$U/streams/tenant%2F1%2Fc"
req "a bad expected" 400 - -- -H "$A1" -X POST -d '{"type":"a"}' "$U/streams/tenant%2F1%2Fc?expected=maybe"
req "an unknown parameter" 400 '{"error":"bad_request","message":"unknown query parameter '"'"'limt'"'"'"}' -- -H "$A1" "$U/streams/tenant%2F1%2Fa?limt=1"
req "a parameter twice" 400 - -- -H "$A1" "$U/streams/tenant%2F1%2Fa?limit=1&limit=2"
req "limit out of range" 400 - -- -H "$A1" "$U/log?limit=0"
req "a wrong method" 405 - -- -H "$A1" -X DELETE "$U/streams/tenant%2F1%2Fa"
req "no such route" 404 '{"error":"not_found","message":"no such route"}' -- -H "$A1" "$U/nothing"
req "a key over 255 bytes" 400 - -- -H "$A1" "$U/streams/$(head -c 300 /dev/zero | tr '\0' k)"
status=$(curl -s -o /dev/null -w '%{http_code}' -H "X-Big: $(head -c 70000 /dev/zero | tr '\0' h)" -H "$A1" "$U/health")
case $status in 4*) ok "a huge header: $status" ;; *) bad "a huge header" "status $status" ;; esac
req "  and the server still answers" 200 - -- "$U/health"
req "  nothing of all that landed" 200 '{"stream":"tenant/1/c","head":0}' -- -H "$A1" "$U/streams/tenant%2F1%2Fc/head"

# ---- the live feed ----
curl -s -N --max-time 1 -H "$A" "$U/log/feed?from=1" >"$T/feed"
ids=$(sed -n 's/^id: //p' "$T/feed" | tr '\n' ' ')
[ "$(echo $ids | wc -w)" = 7 ] && ok "the feed from 1 has every event" || bad "the feed from 1 has every event" "ids: $ids"
third=$(echo $ids | cut -d' ' -f3) fourth=$(echo $ids | cut -d' ' -f4)
curl -s -N --max-time 1 -H "$A" -H "Last-Event-ID: $third" "$U/log/feed" >"$T/feed2"
first=$(sed -n 's/^id: //p' "$T/feed2" | head -1)
n2=$(grep -c '^id: ' "$T/feed2")
[ "$first" = "$fourth" ] && [ "$n2" = 4 ] && ok "Last-Event-ID resumes just after it" || bad "Last-Event-ID resumes just after it" "first $first (want $fourth), $n2 events"
(curl -s -N --max-time 2 -H "$A" "$U/log/feed?type=Live" >"$T/feed3") &
cpid=$!
sleep 0.5
curl -s -o /dev/null -H "$A" -X POST -d '{"type":"Live","data":"now"}' "$U/streams/live"
wait $cpid
grep -q '"data":"now"' "$T/feed3" && ok "the feed delivers a live append" || bad "the feed delivers a live append" "$(cat "$T/feed3")"
req "a bad Last-Event-ID" 400 - -- -H "$A" -H "Last-Event-ID: x" "$U/log/feed"
# a browser's EventSource cannot send headers: the feed (only) takes access_token
curl -s -N --max-time 1 "$U/log/feed?from=1&access_token=$T1" >"$T/body"
has "the feed takes access_token" 'tenant/1/b'; hasnt "  in the token's scope" 'tenant/2'
req "  a wrong one: 401" 401 - -- "$U/log/feed?access_token=est_0000000000000000_$(printf '%064d' 0)"
req "  not with a header too" 400 - -- -H "$A1" "$U/log/feed?access_token=$T1"
req "no other route takes it" 400 '{"error":"bad_request","message":"access_token is taken only by /log/feed; send an Authorization: Bearer header"}' -- "$U/streams?access_token=$T1"
req "  not even escaped" 400 - -- "$U/log?access%5Ftoken=$T1"

# ---- the web console: its files, with their headers, without a token ----
req "the console at /" 200 - -- -D "$T/headers" "$U/"
has "  is the page" '<script src="/console/console.js" defer></script>'
tr -d '\r' <"$T/headers" >"$T/body"
has "  Content-Security-Policy" "Content-Security-Policy: default-src 'self'"
hasnt "  no inline script" "unsafe-inline"
has "  nosniff" "X-Content-Type-Options: nosniff"
has "  text/html" "Content-Type: text/html; charset=utf-8"
req "its script" 200 - -- -D "$T/headers" "$U/console/console.js"
tr -d '\r' <"$T/headers" >"$T/body"
has "  as JavaScript" "Content-Type: text/javascript; charset=utf-8"
req "no such console file" 404 - -- "$U/console/nope.js"
req "the console is read-only" 405 - -- -X POST "$U/"
req "the API answers nosniff too" 200 - -- -D "$T/headers" -H "$A" "$U/streams?limit=1"
tr -d '\r' <"$T/headers" >"$T/body"
has "  X-Content-Type-Options" "X-Content-Type-Options: nosniff"

# ---- subscriptions ----
req "create a subscription" 201 - -- -H "$A" -X POST -d '{"name":"s1","prefixes":["tenant/1/"],"start":"beginning","batch_size":10}' "$U/subscriptions"
has "  behind" '"name":"s1","checkpoint":0,'
req "  twice: conflict" 409 - -- -H "$A" -X POST -d '{"name":"s1"}' "$U/subscriptions"
req "  bad options" 400 - -- -H "$A" -X POST -d '{"name":"s2","start":"yesterday"}' "$U/subscriptions"
req "list with lag" 200 - -- -H "$A" "$U/subscriptions"
has "  s1" '"subscriptions":[{"name":"s1",'
req "info" 200 - -- -H "$A" "$U/subscriptions/s1"
has "  partitions" '"partition_table":[{"partition":0,'
req "reset" 200 - -- -H "$A" -X POST -d '{"start":"end"}' "$U/subscriptions/s1/reset"
# a subscription as a feed: batches out, acknowledgements in by POST
req "reset to the beginning" 200 - -- -H "$A" -X POST -d '{"start":"beginning"}' "$U/subscriptions/s1/reset"
curl -s -N --max-time 3 -H "$A" "$U/subscriptions/s1/feed" >"$T/sfeed" &
sfpid=$!
i=0
while ! grep -q '^event: batch' "$T/sfeed" 2>/dev/null && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
sess=$(sed -n 's/^data: {"session":"\([0-9a-f]*\)".*/\1/p' "$T/sfeed")
last=$(sed -n 's/^data: {"last":\([0-9]*\),.*/\1/p' "$T/sfeed" | head -1)
[ ${#sess} = 32 ] && [ -n "$last" ] && ok "feed: a session, then a batch" || bad "feed: a session, then a batch" "$(cat "$T/sfeed")"
grep -q '"subscription":"s1","ack":"manual"' "$T/sfeed" && ok "  manual acknowledgement by default" || bad "  manual acknowledgement by default"
sleep 0.3
[ "$(grep -c '^event: batch' "$T/sfeed")" = 1 ] && ok "  no second batch before the acknowledgement" || bad "  no second batch before the acknowledgement" "$(cat "$T/sfeed")"
req "  a second consumer is refused while the feed holds the lease" 409 - -- -H "$A" "$U/subscriptions/s1/feed"
req "  an acknowledgement for no session" 404 - -- -H "$A" -X POST -d '{"session":"00","position":1}' "$U/subscriptions/s1/ack"
req "  a bad acknowledgement body" 400 - -- -H "$A" -X POST -d '{"session":"'"$sess"'"}' "$U/subscriptions/s1/ack"
req "  an acknowledgement of what was not delivered" 400 - -- -H "$A" -X POST -d '{"session":"'"$sess"'","position":999999999999}' "$U/subscriptions/s1/ack"
req "  the acknowledgement of the batch" 200 "{\"session\":\"$sess\",\"position\":$last,\"failed\":false}" -- -H "$A" -X POST -d '{"session":"'"$sess"'","position":'"$last"'}' "$U/subscriptions/s1/ack"
req "  moves the checkpoint" 200 - -- -H "$A" "$U/subscriptions/s1"
has "  (checkpoint)" "\"checkpoint\":$last,"
req "  the acknowledgements need admin" 403 - -- -H "$A1" -X POST -d '{"session":"'"$sess"'","position":1}' "$U/subscriptions/s1/ack"
wait $sfpid
# the server sees the client gone at its next keepalive (a second)
i=0
while curl -s -H "$A" "$U/subscriptions/s1" | grep -q '"members":1' && [ $i -lt 60 ]; do sleep 0.1; i=$((i + 1)); done
req "  its consumer closed with the connection" 200 - -- -H "$A" "$U/subscriptions/s1"
has "  (no member)" '"members":0'
req "feed: ack=auto" 201 - -- -H "$A" -X POST -d '{"name":"s3","prefixes":["tenant/1/"],"start":"beginning"}' "$U/subscriptions"
curl -s -N --max-time 1 -H "$A" "$U/subscriptions/s3/feed?ack=auto" >"$T/sfeed3"
req "  acknowledges what it sends" 200 - -- -H "$A" "$U/subscriptions/s3"
has "  (nothing behind)" '"behind":0,'
has "  (acknowledged)" '"acked":'"$(grep -c '^id: ' "$T/sfeed3")"','
req "feed: a bad ack mode" 400 - -- -H "$A" "$U/subscriptions/s3/feed?ack=sometimes"
req "feed: member without group" 400 - -- -H "$A" "$U/subscriptions/s3/feed?member=m1"
req "feed: a group member" 201 - -- -H "$A" -X POST -d '{"name":"s4","partitions":2}' "$U/subscriptions"
curl -s -N --max-time 1 -H "$A" "$U/subscriptions/s4/feed?group=g&member=web-1&ack=auto" >"$T/sfeed4" &
sf4=$!
sleep 0.5
req "  shows in the partition table" 200 - -- -H "$A" "$U/subscriptions/s4"
has "  (its label)" '"owner":"web-1"'
wait $sf4
req "parked" 200 '{"name":"s1","parked":[]}' -- -H "$A" "$U/subscriptions/s1/parked"
req "parked retry: nothing parked" 404 - -- -H "$A" -X POST -d '{"position":1}' "$U/subscriptions/s1/parked/retry"
req "delete" 200 '{"deleted":"s1"}' -- -H "$A" -X DELETE "$U/subscriptions/s1"
req "  then it is gone" 404 - -- -H "$A" "$U/subscriptions/s1"

# ---- metrics, revocation ----
req "metrics" 200 - -- -H "$A" "$U/metrics"
has "  requests by route" 'esrc_http_requests_total{route="stream_append",status="201"}'
has "  append latency" 'esrc_append_duration_seconds_bucket{le="+Inf"}'
has "  events appended" 'esrc_events_appended_total 8'
id2=$(echo "$T2" | cut -d_ -f2)
"$esrc" token revoke --tokens "$T/tokens" "$id2" >/dev/null
req "a revoked token: 401" 401 - -- -H "$A2" "$U/streams/tenant%2F2%2Fx/head"
grep -q '"route":"stream_append","status":201' "$T/serve.err" && ok "an access log line per request" || bad "an access log line per request"

# ---- graceful shutdown during a burst of appends ----
for w in 1 2 3 4; do
    (
        i=0
        while [ $i -lt 200 ]; do
            id=$(printf '%08x%024x' $w $i)
            s=$(curl -s -o /dev/null -w '%{http_code}' -H "$A" -X POST -d "{\"type\":\"Burst\",\"id\":\"$id\"}" "$U/streams/burst%2F$w")
            echo "$s $id"
            i=$((i + 1))
        done
    ) >"$T/burst.$w" &
done
sleep 1
kill -TERM $pid
wait $pid
rc=$?
pid=
wait
[ $rc = 0 ] && ok "SIGTERM: the server exits 0" || bad "SIGTERM: the server exits 0" "status $rc"
cat "$T"/burst.* | awk '$1 ~ /^2/ {print $2}' | sort >"$T/acked"
"$esrc" --store "$store" export >"$T/export" 2>/dev/null
sed -n 's/.*"id":"\([0-9a-f]*\)".*"type":"Burst".*/\1/p' "$T/export" | sort >"$T/stored"
nacked=$(wc -l <"$T/acked")
missing=$(comm -23 "$T/acked" "$T/stored" | wc -l)
if [ "$nacked" -gt 0 ] && [ "$missing" = 0 ]; then
    ok "every one of the $nacked acknowledged appends is in the store"
else
    bad "every acknowledged append is in the store" "$nacked acknowledged, $missing missing"
fi

# the feeds' access log lines are written when they end: after the stop
grep -qF '"target":"/log/feed?from=1&access_token=REDACTED"' "$T/serve.err" && ok "the access log shows access_token redacted" || bad "the access log shows access_token redacted"
grep -qF '"target":"/log?access%5Ftoken=REDACTED"' "$T/serve.err" && ok "  escaped names too" || bad "  escaped names too"
if grep -qF "${T1#est_*_}" "$T/serve.err"; then bad "the access log never shows a token"; else ok "the access log never shows a token"; fi

echo "$((n - fails)) of $n passed"
[ $fails = 0 ]
