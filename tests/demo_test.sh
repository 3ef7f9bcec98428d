#!/bin/sh
# The demo's output, exactly: `esrc demo` on a fresh store of the given URI.
# usage: demo_test.sh ESRC EXPECTED URI
set -eu
esrc=$1 expected=$2 uri=$3
out=$(mktemp)
trap 'rm -f "$out"' EXIT
"$esrc" demo --store "$uri" > "$out"
# The first line names the store kind; the rest is the same on every store.
kind=$(echo "$uri" | cut -d: -f1)
sed "1s/on a mem store/on a $kind store/" "$expected" | diff -u - "$out"
