#!/bin/sh
# The full test suite, as CI runs it:
#   1. format check (scripts/check-format.sh --strict: clang-format 14, .clang-format)
#   2. a normal build (warnings are errors) and every test
#   3. an AddressSanitizer + UndefinedBehaviorSanitizer build and every test
#      (leaks included)
#   4. a ThreadSanitizer build and every test
#   5. the build matrix of the optional stores: lmdb off, postgres off, both
#      off (and http:// off) — each configured, built and run (without the
#      PostgreSQL server)
#   6. fuzzing: each fuzz target for FUZZ_SECONDS (default 30; 0 skips),
#      when clang is installed (scripts/fuzz.sh)
# Every ctest run also replays the fuzz corpora (fuzz/corpus/<name>/),
# checks the exported symbols and installs + links through pkg-config.
# Each step is timed; a failed step does not stop the later ones, and the
# script exits 1 at the end when any failed.
#
# PostgreSQL tests use ES_TEST_PG_URI when it is set; otherwise, when the
# PostgreSQL server binaries are installed, this script starts a throwaway
# cluster in a temp dir on a loopback port and stops it at the end.  With
# neither, those tests report themselves skipped.
#
# The http:// store's tests start an `esrc serve` of their own per test
# (tests/testutil.c; ctest sets ES_TEST_ESRC): nothing to start here.
#
# Usage: scripts/test.sh [--soak] [--fast]
#   --soak  the long runs: 1000 SIGKILL rounds, longer randomised model tests.
#   --fast  steps 1, 2 and 3 only (what to run before a commit).
#   JOBS=N  build and ctest parallelism (default 2)
set -eu
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
fast=
for arg in "$@"; do
    case "$arg" in
    --soak) ES_SOAK=1; export ES_SOAK; echo "test: soak mode (long crash and model runs)" ;;
    --fast) fast=1 ;;
    *) echo "usage: scripts/test.sh [--soak] [--fast]" >&2; exit 2 ;;
    esac
done

pg_started=
cleanup() {
    if [ -n "$pg_started" ]; then
        ./scripts/pg-temp.sh stop "$pg_started" || true
    fi
}
trap cleanup EXIT INT TERM

if [ -z "${ES_TEST_PG_URI:-}" ] && [ -x scripts/pg-temp.sh ] && ./scripts/pg-temp.sh available; then
    pg_started=$(mktemp -d /tmp/es-pg-XXXXXX)
    ES_TEST_PG_URI=$(./scripts/pg-temp.sh start "$pg_started")
    # the restart test bounces this server mid-run
    ES_TEST_PG_RESTART="$PWD/scripts/pg-temp.sh restart $pg_started"
    export ES_TEST_PG_URI ES_TEST_PG_RESTART
    echo "test: started a throwaway PostgreSQL at $ES_TEST_PG_URI"
fi

start_all=$(date +%s)
summary=
failed=
# step NAME COMMAND...: run, time, record; never exits.
step() {
    step_name=$1
    shift
    echo "== $step_name"
    t0=$(date +%s)
    if "$@"; then
        res=ok
    else
        res=FAILED
        failed="$failed
  $step_name"
    fi
    summary="$summary
  $(printf '%-44s %-6s %5ss' "$step_name" "$res" $(($(date +%s) - t0)))"
}

build() { # build DIR cmake-args...
    build_dir=$1
    shift
    cmake -S . -B "$build_dir" -DES_WERROR=ON "$@" >/dev/null &&
        cmake --build "$build_dir" -j"$JOBS" >"$build_dir/build-output.log" 2>&1 ||
        { tail -n 40 "$build_dir/build-output.log"; return 1; }
}

# ctest in DIR, as one command for step/env/setarch
ctest_in() {
    echo "cd $1 && ctest --output-on-failure -j$JOBS ${ES_SOAK:+--timeout 7200}"
}

# ThreadSanitizer of gcc 12 cannot run with more than 28 bits of mmap
# randomisation (newer kernels default to 32: "unexpected memory mapping");
# run it without address-space randomisation then.
tsan_wrap=
bits=$(sysctl -n vm.mmap_rnd_bits 2>/dev/null || echo 0)
if [ "$bits" -gt 28 ] && command -v setarch >/dev/null 2>&1; then
    tsan_wrap="setarch $(uname -m) -R"
    echo "test: vm.mmap_rnd_bits=$bits: the TSan tests run under '$tsan_wrap'"
fi

step "format" ./scripts/check-format.sh --strict

step "build" build build
step "tests" sh -c "$(ctest_in build)"

step "build: ASan + UBSan" build build-asan -DES_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug
step "tests: ASan + UBSan" env ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 sh -c "$(ctest_in build-asan)"

if [ -z "$fast" ]; then
    step "build: TSan" build build-tsan -DES_TSAN=ON -DCMAKE_BUILD_TYPE=Debug
    step "tests: TSan" env TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
        $tsan_wrap sh -c "$(ctest_in build-tsan)"

    # The matrix needs no server: its PostgreSQL tests (lmdb off) skip.
    for combo in "lmdb-off -DES_WITH_LMDB=OFF" "pg-off -DES_WITH_PG=OFF" \
                 "both-off -DES_WITH_LMDB=OFF -DES_WITH_PG=OFF -DES_WITH_HTTP=OFF"; do
        combo_name=${combo%% *}
        args=${combo#* }
        # shellcheck disable=SC2086
        step "matrix $combo_name: build" build "build-matrix-$combo_name" $args
        step "matrix $combo_name: tests" env -u ES_TEST_PG_URI -u ES_TEST_PG_RESTART \
            sh -c "$(ctest_in "build-matrix-$combo_name")"
    done

    if [ "$FUZZ_SECONDS" -gt 0 ] && command -v clang >/dev/null 2>&1; then
        step "fuzz (${FUZZ_SECONDS}s per target)" env FUZZ_SECONDS="$FUZZ_SECONDS" ./scripts/fuzz.sh
    else
        echo "test: fuzzing skipped (FUZZ_SECONDS=0 or no clang)"
    fi
fi

echo "== summary$summary"
echo "  total: $(($(date +%s) - start_all))s"
if [ -n "$failed" ]; then
    echo "test: FAILED:$failed"
    exit 1
fi
echo "test: all passed"
