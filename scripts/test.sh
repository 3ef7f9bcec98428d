#!/bin/sh
# The full test suite: a normal build and an AddressSanitizer +
# UndefinedBehaviorSanitizer build, each running every test with ctest.
#
# PostgreSQL tests use ES_TEST_PG_URI when it is set; otherwise, when the
# PostgreSQL server binaries are installed, this script starts a throwaway
# cluster in a temp dir on a loopback port and stops it at the end.  With
# neither, those tests report themselves skipped.
#
# Usage: scripts/test.sh [--soak]
#   --soak  the long runs: 1000 SIGKILL rounds, longer randomised model tests.
set -eu
cd "$(dirname "$0")/.."
JOBS=${JOBS:-2}
case "${1:-}" in
"") ;;
--soak) ES_SOAK=1; export ES_SOAK; echo "test: soak mode (long crash and model runs)" ;;
*) echo "usage: scripts/test.sh [--soak]" >&2; exit 2 ;;
esac

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

echo "== build (warnings are errors)"
cmake -S . -B build -DES_WERROR=ON >/dev/null
cmake --build build -j"$JOBS"
echo "== tests"
(cd build && ctest --output-on-failure -j"$JOBS" ${ES_SOAK:+--timeout 7200})

echo "== build with AddressSanitizer + UndefinedBehaviorSanitizer"
cmake -S . -B build-asan -DES_WERROR=ON -DES_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-asan -j"$JOBS"
echo "== tests under the sanitizers"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 ctest --output-on-failure -j"$JOBS")
echo "test: all passed"
