#!/bin/sh
# W10 and W11: esrc serve under load, with the library's W2 in the same run.
#
#   bench/http_bench.sh [--esrc PATH] [--seconds N] [--pg URI] [--keep]
#
# For each store (a fresh lmdb store in a temp dir; with --pg also a fresh
# schema on that PostgreSQL server) it starts `esrc serve --open` on a free
# loopback port and measures:
#   W10  16 connections, each POSTing one event per request (150-byte data, a
#        unique event id, its own stream) for N seconds (default 10): requests/s,
#        p50, p99; then the library's W2 on the same kind of store
#        (`es_bench --only W2`, 16 writer threads x 1000 one-event appends,
#        each on its own stream) and the ratio W10 / W2 (goal >= 0.8)
#   W11  one connection reading a 10,000-event stream, 1000 events a page,
#        following the "next" links (median of 20 reads): events/s;
#        and the SSE feed: `curl -N /log/feed?from=1` on a 100,000-event log,
#        `id:` lines counted until the 100,000th: events/s (goal >= 100k/s each)
# The client is bench/http_load.c (libcurl, a thread and a kept-alive
# connection per client), compiled here into the temp dir.  Needs curl, a C
# compiler and libcurl's headers (libcurl4-openssl-dev); see bench/README.md.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
esrc=$here/../build/esrc
secs=10
pg=
keep=
while [ $# -gt 0 ]; do
    case $1 in
    --esrc) esrc=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    --pg) pg=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: http_bench.sh [--esrc PATH] [--seconds N] [--pg URI] [--keep]" >&2; exit 2 ;;
    esac
done
[ -x "$esrc" ] || { echo "http_bench: no esrc at $esrc (build first)" >&2; exit 2; }
bench=$(dirname "$esrc")/es_bench # W2, from the same build
[ -x "$bench" ] || { echo "http_bench: no es_bench at $bench (build first)" >&2; exit 2; }
T=$(mktemp -d /tmp/esrc-http-bench-XXXXXX)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    [ -n "$keep" ] && echo "kept $T" >&2 || rm -rf "$T"
}
trap cleanup EXIT INT TERM
cc -O2 -o "$T/http_load" "$here/http_load.c" -lcurl -lpthread
load=$T/http_load

now_ns() { date +%s%N; }

# start STORE: esrc serve --open on a free loopback port; sets $pid and $U
start() {
    "$esrc" serve --listen 127.0.0.1:0 --store "$1" --open >"$T/out" 2>"$T/access.log" &
    pid=$!
    i=0
    while ! grep -q listening "$T/out" 2>/dev/null; do
        i=$((i + 1))
        [ $i -gt 100 ] && { echo "http_bench: the server did not start" >&2; cat "$T/access.log" >&2; exit 1; }
        sleep 0.1
    done
    U=$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$T/out")
    [ -n "$U" ] || { echo "http_bench: no address in: $(cat "$T/out")" >&2; exit 1; }
}
stop() { kill "$pid"; wait "$pid" || true; pid=; }

# sse EVENTS: events/s of /log/feed from position 1 until EVENTS `id:` lines
sse() {
    t0=$(now_ns)
    n=$(curl -s -N "$U/log/feed?from=1" | awk -v want="$1" '/^id: /{ if (++n == want) { print n; exit } }') || true
    t1=$(now_ns)
    [ "$n" = "$1" ] || { echo "http_bench: the feed gave ${n:-0} events, not $1" >&2; exit 1; }
    awk -v n="$n" -v ns=$((t1 - t0)) 'BEGIN { printf "%.0f", n / (ns / 1e9) }'
}

row() { printf '| %-4s | %-14s | %12s | %9s | %9s | %s |\n' "$@"; }

run_store() { # KIND STORE-URI W2-ARGS...
    kind=$1 store=$2
    shift 2
    start "$store"
    w10=$("$load" append "$U" 16 "$secs" w10)
    # W11's data: a 10,000-event stream, then the log filled past 100,000
    # events (the feed must keep writing after the 100,000th, so that curl
    # ends on the closed pipe instead of waiting for a keepalive)
    "$load" fill "$U" w11-read 10000 1000
    last=$(curl -s "$U/stats" | sed -n 's/.*"last_position":\([0-9]*\).*/\1/p')
    [ "$last" -lt 101000 ] && "$load" fill "$U" w11-log $((101000 - last)) 1000
    r=$("$load" read "$U" w11-read 1000 20)
    feed_n=100000
    f=$(sse $feed_n)
    stop
    w2=$("$bench" --only W2 "$@" | awk -F'|' '$2 ~ /W2/ { gsub(/ /, "", $4); gsub(/ /, "", $5); gsub(/ /, "", $6); print $4, $5, $6 }')
    set -- $w10
    w10_rps=$8 w10_p50=${10} w10_p99=${12} w10_n=$2
    set -- $w2
    w2_rps=$1 w2_p50=$2 w2_p99=$3
    set -- $r
    row W10 "http-$kind" "$w10_rps" "$w10_p50" "$w10_p99" "16 connections x one-event POSTs, ${secs} s ($w10_n requests)"
    row W2 "eventsrc-$kind" "$w2_rps" "$w2_p50" "$w2_p99" "library, 16 writers x 1000 appends, same run"
    row W11 "http-$kind" "${10}" "" "" "read a 10,000-event stream, 1000 a page ($4 pages), median of 20"
    row W11f "http-$kind" "$f" "" "" "SSE /log/feed from 1, $feed_n events, curl -N | awk"
    awk -v a="$w10_rps" -v b="$w2_rps" -v k="$kind" \
        'BEGIN { printf "W10 / W2 (%s): %.2f (goal >= 0.8)\n", k, a / b }' >>"$T/ratios"
}

echo "esrc serve benchmarks, commit $(git -C "$here" rev-parse --short HEAD 2>/dev/null || echo '?'), $(date -u +%Y-%m-%dT%H:%MZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
row W "system" "events/s" "p50 us" "p99 us" "notes"
echo "|------|----------------|-------------:|----------:|----------:|-------|"
: >"$T/ratios"
run_store lmdb "lmdb:$T/lmdb" --systems eventsrc-lmdb
if [ -n "$pg" ]; then
    schema=http_bench_$$
    case $pg in
    *\?*) uri="$pg&schema=$schema" ;;
    *) uri="$pg?schema=$schema" ;;
    esac
    run_store pg "$uri" --systems eventsrc-pg --pg "$pg"
fi
echo
cat "$T/ratios"
