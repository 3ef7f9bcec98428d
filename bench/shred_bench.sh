#!/bin/sh
# W3 with crypto-shredding off and on (BENCHMARKS.md, "Crypto-shredding"):
# es_shred_bench appends W3's log (1000-event commits, one event for each of
# 1000 streams, 150-byte payloads) into a fresh durable lmdb store, plainly
# and with the rule "stream-" (every event encrypted, 1000 subjects), RUNS
# times alternately; with --pg also into fresh schemas of $ES_BENCH_PG_URI.
#   bench/shred_bench.sh [--events N] [--pg-events N] [--runs R] [--pg]
# Needs a built ./build (es_shred_bench).
set -eu
events=1000000 pg_events=200000 runs=3 pg=0
while [ $# -gt 0 ]; do
    case $1 in
    --events) events=$2; shift 2 ;;
    --pg-events) pg_events=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --pg) pg=1; shift ;;
    *) echo "usage: bench/shred_bench.sh [--events N] [--pg-events N] [--runs R] [--pg]" >&2; exit 2 ;;
    esac
done
sb=$PWD/build/es_shred_bench
[ -x "$sb" ] || { echo "shred_bench: build first (cmake --build build)" >&2; exit 2; }
if [ "$pg" = 1 ] && [ -z "${ES_BENCH_PG_URI:-}" ]; then
    echo "shred_bench: --pg needs ES_BENCH_PG_URI" >&2; exit 2
fi
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
echo "# commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores, $(date -u +%FT%TZ)"
r=1
while [ "$r" -le "$runs" ]; do
    for mode in plain shred; do
        rm -rf "$d/s"
        printf 'lmdb run %s ' "$r"
        "$sb" "lmdb:$d/s" "$events" "$mode" | tr '\n' ' '
        echo "(data.mdb $(du -k "$d/s/data.mdb" | cut -f1) KiB)"
        if [ "$pg" = 1 ]; then
            schema=shredbench_$$_${r}_$mode
            case $ES_BENCH_PG_URI in *\?*) u="$ES_BENCH_PG_URI&schema=$schema" ;; *) u="$ES_BENCH_PG_URI?schema=$schema" ;; esac
            printf 'pg run %s ' "$r"
            "$sb" "$u" "$pg_events" "$mode"
            psql -q "${ES_BENCH_PG_URI%%\?*}" -c "DROP SCHEMA $schema CASCADE" >/dev/null 2>&1 || true
        fi
    done
    r=$((r + 1))
done
