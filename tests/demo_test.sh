#!/bin/sh
# The demo's output, exactly: `esrc demo` on a fresh store of the given URI.
# usage: demo_test.sh ESRC EXPECTED URI
# URI "pg" means a fresh schema on the server ES_TEST_PG_URI names (exit 77,
# skipped, without one).
set -eu
esrc=$1 expected=$2 uri=$3
if [ "$uri" = pg ]; then
    if [ -z "${ES_TEST_PG_URI:-}" ]; then
        echo "SKIPPED: no PostgreSQL server given (set ES_TEST_PG_URI)"
        exit 77
    fi
    case $ES_TEST_PG_URI in
    *\?*) uri="$ES_TEST_PG_URI&schema=demo_$$" ;;
    *) uri="$ES_TEST_PG_URI?schema=demo_$$" ;;
    esac
fi
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$esrc" demo --store "$uri" > "$out"
# The first line names the store kind; the rest is the same on every store.
kind=$(echo "$uri" | cut -d: -f1)
[ "$kind" = postgresql ] && kind=postgres
sed "1s/on a mem store/on a $kind store/" "$expected" | diff -u - "$out"
