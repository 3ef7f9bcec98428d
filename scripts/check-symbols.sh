#!/bin/sh
# The shared library exports exactly the public API: every es_* function
# declared with ES_EXTERN in include/eventsrc.h, and nothing else (no
# es__ internals, no helpers of the backends, no symbols of static deps).
#
# Usage: scripts/check-symbols.sh path/to/libeventsrc.so [include/eventsrc.h]
set -eu
lib=${1:?usage: scripts/check-symbols.sh LIB [HEADER]}
header=${2:-$(dirname "$0")/../include/eventsrc.h}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT INT TERM

# Declarations may span lines: join each from ES_EXTERN to its ';' and take
# the identifier before the first '('.
awk '
/^[ \t]*ES_EXTERN[ \t]/ { decl = ""; in_decl = 1 }
in_decl { decl = decl " " $0; if ($0 ~ /;/) { in_decl = 0;
    if (match(decl, /[A-Za-z_][A-Za-z0-9_]*[ \t]*\(/)) {
        name = substr(decl, RSTART, RLENGTH); sub(/[ \t]*\($/, "", name); print name } } }
' "$header" | sort -u >"$tmp/declared"
# Defined, exported symbols: text, data, bss, read-only, weak.
nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBRVWiu]$/ { print $3 }' | sed 's/@.*//' |
    grep -v -E '^(_init|_fini|_edata|_end|__bss_start)$' | sort -u >"$tmp/exported"

if [ ! -s "$tmp/declared" ]; then
    echo "check-symbols: no ES_EXTERN declarations found in $header" >&2
    exit 1
fi
missing=$(comm -23 "$tmp/declared" "$tmp/exported")
extra=$(comm -13 "$tmp/declared" "$tmp/exported")
rc=0
if [ -n "$missing" ]; then
    echo "check-symbols: declared in $(basename "$header") but not exported by $(basename "$lib"):"
    echo "$missing" | sed 's/^/  /'
    rc=1
fi
if [ -n "$extra" ]; then
    echo "check-symbols: exported by $(basename "$lib") but not public API:"
    echo "$extra" | sed 's/^/  /'
    rc=1
fi
[ "$rc" -ne 0 ] || echo "check-symbols: $(wc -l <"$tmp/exported") symbols, exactly the public API"
exit $rc
