#!/bin/sh
# Issue 9's delivery benchmarks (BENCHMARKS.md, "Projections and replicas"):
#
#  1. Projecting W3's log into SQLite: `esrc project` and es_proj_run (batch
#     1000, the default: one durable commit + checkpoint per 1000 events; and
#     one batch for the whole log, the machinery alone) against a
#     hand-written loop doing the same INSERTs in ONE SQLite transaction (and
#     the same loop committing every 1000 events, the projector's commits).
#  2. `esrc replicate` lmdb -> lmdb against `esrc import` of `esrc export` of
#     the same store, and lmdb -> pg against W3's pg append rate
#     (`es_bench --only W3 --systems eventsrc-pg` at the same scale).
#
#   bench/proj_bench.sh [--scale F] [--import-lines N] [--runs R] [--pg] [--keep]
#
# --scale F         W3 at F x 1M events (default 1); pg W3 is F x 200k, as
#                   in es_bench
# --import-lines N  `esrc import` into a durable store is timed on the first
#                   N lines of the export (default 20000): it commits once
#                   per event on W3's interleaved export (see BENCHMARKS.md);
#                   the whole export is imported into a nosync store as well
# --runs R          part 1 runs R times in turn, medians reported (default 3)
# --pg              also part 2's lmdb -> pg (starts a throwaway cluster
#                   with scripts/pg-temp.sh)
# Needs a built ./build (esrc, es_proj_bench, es_bench) and sqlite3.
set -eu
cd "$(dirname "$0")/.."
scale=1 lines=20000 pg=0 keep=0 runs=3
while [ $# -gt 0 ]; do
    case $1 in
    --scale) scale=$2; shift 2 ;;
    --import-lines) lines=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --pg) pg=1; shift ;;
    --keep) keep=1; shift ;;
    *) echo "usage: bench/proj_bench.sh [--scale F] [--import-lines N] [--runs R] [--pg] [--keep]" >&2; exit 2 ;;
    esac
done
esrc=$PWD/build/esrc pb=$PWD/build/es_proj_bench eb=$PWD/build/es_bench
[ -x "$esrc" ] && [ -x "$pb" ] && [ -x "$eb" ] || { echo "proj_bench: build first (cmake --build build)" >&2; exit 2; }
n=$(awk -v s="$scale" 'BEGIN { n = int(1000000 * s); n -= n % 1000; if (n < 1000) n = 1000; print n }')
d=$(mktemp -d "${TMPDIR:-/var/tmp}/es-proj-bench-XXXXXX")
pgdir=
cleanup() {
    [ -z "$pgdir" ] || ./scripts/pg-temp.sh stop "$pgdir"
    if [ "$keep" = 1 ]; then echo "proj_bench: data kept in $d" >&2; else rm -rf "$d"; fi
}
trap cleanup EXIT INT TERM

now() { date +%s.%N; }
# rate LABEL EVENTS T0 T1: one line "LABEL: N events in T s: R events/s"
rate() {
    awk -v l="$1" -v n="$2" -v a="$3" -v b="$4" \
        'BEGIN { t = b - a; printf "%s: %d events in %.3f s: %.0f events/s\n", l, n, t, n / t }'
}
# value of the last "…: R events/s" line of a file
ev_s() { sed -n 's/.*: \([0-9]*\) events\/s$/\1/p' "$1" | tail -n 1; }
# median of the "…: R events/s" lines of a file
med() { sed -n 's/.*: \([0-9]*\) events\/s$/\1/p' "$1" | sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$2" -v b="$3" -v l="$1" 'BEGIN { printf "%s: %.2fx\n", l, a / b }'; }

echo "proj_bench: commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), scale $scale ($n events), data in $d"
echo "proj_bench: load $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores (the machine is shared)"
"$pb" load "lmdb:$d/w3" "$n"

# ---- 1. projection into SQLite ----
cat >"$d/w3.proj" <<'EOF'
# W3's events, one row each
name w3
schema
    CREATE TABLE ev (stream TEXT NOT NULL, seq INTEGER NOT NULL,
                     position INTEGER NOT NULL, payload TEXT NOT NULL);
on Bench
    INSERT INTO ev (stream, seq, position, payload) VALUES (:stream, :seq, :position, :data);
EOF
# each measurement `runs` times, in turn; the median of each is reported
r=1
while [ "$r" -le "$runs" ]; do
    echo "proj_bench: projection round $r of $runs"
    rm -f "$d"/*.db
    "$pb" hand "lmdb:$d/w3" "sqlite:$d/hand.db" | tee -a "$d/hand.out"
    "$pb" hand "lmdb:$d/w3" "sqlite:$d/hand1000.db" 1000 | tee -a "$d/hand1000.out"
    "$pb" lib "lmdb:$d/w3" "sqlite:$d/lib1000.db" "$d/w3.proj" 1000 | tee -a "$d/lib1000.out"
    "$pb" lib "lmdb:$d/w3" "sqlite:$d/libbig.db" "$d/w3.proj" 1000000 | tee -a "$d/libbig.out"
    for b in 1000 1000000; do
        t0=$(now)
        "$esrc" --store "lmdb:$d/w3" project "$d/w3.proj" --to "sqlite:$d/cli$b.db" --batch "$b" \
            >/dev/null 2>"$d/cli$b.err"
        t1=$(now)
        rate "esrc project --batch $b (process included)" "$n" "$t0" "$t1" | tee -a "$d/cli$b.out"
    done
    q='SELECT count(*), sum(seq), sum(position), sum(length(payload)), min(stream) FROM ev'
    want=$(sqlite3 "$d/hand.db" "$q")
    for f in hand1000 lib1000 libbig cli1000 cli1000000; do
        got=$(sqlite3 "$d/$f.db" "$q")
        [ "$got" = "$want" ] ||
            { echo "proj_bench: $f.db differs from hand.db: $got vs $want" >&2; exit 1; }
    done
    r=$((r + 1))
done
echo "proj_bench: the six tables hold the same rows ($want)"
h=$(med "$d/hand.out")
echo "median of $runs: hand $h events/s"
for f in lib1000 libbig cli1000 cli1000000; do
    echo "median of $runs: $f $(med "$d/$f.out") events/s"
    ratio "$f / hand (medians)" "$(med "$d/$f.out")" "$h"
done
echo "median of $runs: hand1000 $(med "$d/hand1000.out") events/s"
ratio "lib1000 / hand1000 (same commits; medians)" "$(med "$d/lib1000.out")" "$(med "$d/hand1000.out")"

# ---- 2. replicas ----
t0=$(now)
"$esrc" replicate --from "lmdb:$d/w3" --to "lmdb:$d/repl" >/dev/null
t1=$(now)
rate "esrc replicate lmdb -> lmdb" "$n" "$t0" "$t1" | tee "$d/repl.out"
t0=$(now)
"$esrc" replicate --from "lmdb:$d/w3" --to "lmdb:$d/repl-ns?nosync" >/dev/null
t1=$(now)
rate "esrc replicate lmdb -> lmdb?nosync" "$n" "$t0" "$t1" | tee "$d/repl-ns.out"
t0=$(now)
"$esrc" --store "lmdb:$d/w3" export >"$d/w3.jsonl"
t1=$(now)
rate "esrc export (for the imports)" "$n" "$t0" "$t1"
head -n "$lines" "$d/w3.jsonl" >"$d/w3-head.jsonl"
m=$(wc -l <"$d/w3-head.jsonl")
t0=$(now)
"$esrc" --store "lmdb:$d/imp" import "$d/w3-head.jsonl" >/dev/null
t1=$(now)
rate "esrc import lmdb, first $m lines" "$m" "$t0" "$t1" | tee "$d/imp.out"
t0=$(now)
"$esrc" --store "lmdb:$d/imp-ns?nosync" import "$d/w3.jsonl" >/dev/null
t1=$(now)
rate "esrc import lmdb?nosync, whole export" "$n" "$t0" "$t1" | tee "$d/imp-ns.out"
for s in repl imp-ns; do
    "$esrc" --store "lmdb:$d/$s" export | cmp -s - "$d/w3.jsonl" ||
        { echo "proj_bench: the export of $s differs from the source's" >&2; exit 1; }
done
echo "proj_bench: the replica and the nosync import export the same bytes as the source"
ratio "replicate / import (durable)" "$(ev_s "$d/repl.out")" "$(ev_s "$d/imp.out")"
ratio "replicate / import (both nosync)" "$(ev_s "$d/repl-ns.out")" "$(ev_s "$d/imp-ns.out")"
ratio "replicate (durable) / import (nosync)" "$(ev_s "$d/repl.out")" "$(ev_s "$d/imp-ns.out")"

if [ "$pg" = 1 ]; then
    pgdir=$(mktemp -d /tmp/es-pg-XXXXXX)
    uri=$(./scripts/pg-temp.sh start "$pgdir")
    "$eb" --only W3 --systems eventsrc-pg --pg "$uri" --scale "$scale" --json \
        --dir "$d/bench" >"$d/w3pg.json"
    npg=$(sed -n 's/.*"note":"\([0-9]*\) events.*/\1/p' "$d/w3pg.json")
    w3pg=$(sed -n 's/.*"events_per_s":\([0-9.]*\).*/\1/p' "$d/w3pg.json")
    echo "W3 eventsrc-pg append (es_bench): $npg events: $w3pg events/s"
    "$pb" load "lmdb:$d/w3pg" "$npg"
    t0=$(now)
    "$esrc" replicate --from "lmdb:$d/w3pg" --to "$uri?schema=repl_bench" >/dev/null
    t1=$(now)
    rate "esrc replicate lmdb -> pg" "$npg" "$t0" "$t1" | tee "$d/repl-pg.out"
    ratio "replicate lmdb -> pg / W3 pg append" "$(ev_s "$d/repl-pg.out")" "$w3pg"
fi
