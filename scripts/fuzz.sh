#!/bin/sh
# Fuzzes every target in fuzz/ for a bounded time with libFuzzer.
#
# Builds with clang and ES_FUZZ=ON (in build-fuzz/), then runs each
# fuzz_<name> for FUZZ_SECONDS (default 30) on a scratch copy of its
# corpus fuzz/corpus/<name>/.  The committed corpus is only read; a crash
# (or leak, or timeout) is copied into fuzz/corpus/<name>/ as
# crash-<sha1>, so it is replayed by every later test run (ctest: fuzz/<name>)
# — commit it with the fix.  Exits 1 when any target crashed.
#
# Usage: scripts/fuzz.sh [target...]     (default: every target built)
#   FUZZ_SECONDS=N   seconds per target (default 30)
#   FUZZ_JOBS=N      parallel build jobs (default 2)
#   FUZZ_MERGE=1     also merge the inputs that found new coverage into the
#                    committed corpus (minimised with -merge=1)
set -eu
cd "$(dirname "$0")/.."
SECONDS_PER=${FUZZ_SECONDS:-30}
JOBS=${FUZZ_JOBS:-2}
CC=${FUZZ_CC:-clang}
if ! command -v "$CC" >/dev/null 2>&1; then
    echo "fuzz: $CC not found (scripts/install-deps.sh installs clang and libFuzzer)" >&2
    exit 2
fi

echo "== build the fuzz targets (clang, libFuzzer, ASan + UBSan)"
CC=$CC cmake -S . -B build-fuzz -DES_FUZZ=ON -DES_WERROR=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-fuzz -j"$JOBS"

if [ $# -gt 0 ]; then
    targets=$*
else
    targets=$(cd build-fuzz/fuzz && ls fuzz_* 2>/dev/null | grep -v '_replay$' | sed 's/^fuzz_//' |
              grep -v '\.' || true)
fi
[ -n "$targets" ] || { echo "fuzz: no targets built" >&2; exit 2; }

work=$(mktemp -d /tmp/es-fuzz-XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM
failed=
for t in $targets; do
    bin=build-fuzz/fuzz/fuzz_$t
    [ -x "$bin" ] || { echo "fuzz: no target $t" >&2; exit 2; }
    corpus=fuzz/corpus/$t
    mkdir -p "$corpus" "$work/$t/corpus" "$work/$t/artifacts"
    cp "$corpus"/* "$work/$t/corpus/" 2>/dev/null || true
    echo "== fuzz $t for ${SECONDS_PER}s"
    rc=0
    ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        "$bin" -max_total_time="$SECONDS_PER" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
        -artifact_prefix="$work/$t/artifacts/" "$work/$t/corpus" >"$work/$t/log" 2>&1 || rc=$?
    tail -n 12 "$work/$t/log"
    found=0
    for a in "$work/$t/artifacts"/*; do
        [ -f "$a" ] || continue
        name=$(basename "$a")
        sum=$(sha1sum "$a" | cut -c1-16)
        kind=${name%%-*}
        cp "$a" "$corpus/$kind-$sum"
        echo "fuzz: $t: $kind input kept as $corpus/$kind-$sum (a test from now on)"
        found=1
    done
    if [ "${FUZZ_MERGE:-0}" = 1 ] && [ "$rc" -eq 0 ]; then
        before=$(ls "$corpus" | wc -l)
        "$bin" -merge=1 "$corpus" "$work/$t/corpus" >"$work/$t/merge.log" 2>&1 ||
            echo "fuzz: $t: merge failed (see nothing kept)"
        echo "fuzz: $t: corpus $before -> $(ls "$corpus" | wc -l) files"
    fi
    if [ "$rc" -ne 0 ] || [ "$found" -ne 0 ]; then
        cp "$work/$t/log" "build-fuzz/fuzz-$t.log"
        echo "fuzz: $t FAILED (exit $rc); its log is build-fuzz/fuzz-$t.log"
        failed="$failed $t"
    fi
done
if [ -n "$failed" ]; then
    echo "fuzz: failures in:$failed"
    exit 1
fi
echo "fuzz: every target ran ${SECONDS_PER}s without a failure"
