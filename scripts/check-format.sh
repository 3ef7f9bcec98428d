#!/bin/sh
# Checks the C sources against .clang-format.
#
# Prints the files that differ; with --strict (as scripts/test.sh runs it)
# it also fails.
# Reformat everything with:
#   clang-format -i $(git ls-files '*.c' '*.h')
set -eu
cd "$(dirname "$0")/.."
strict=
case "${1:-}" in
"") ;;
--strict) strict=1 ;;
*) echo "usage: scripts/check-format.sh [--strict]" >&2; exit 2 ;;
esac
CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
if ! command -v "$CLANG_FORMAT" >/dev/null 2>&1; then
    echo "check-format: $CLANG_FORMAT not installed; skipped"
    exit 0
fi
if git rev-parse --git-dir >/dev/null 2>&1; then
    files=$(git ls-files '*.c' '*.h')
else
    files=$(find src include tests examples fuzz bench -name '*.[ch]' 2>/dev/null)
fi
differ=0
for f in $files; do
    [ -f "$f" ] || continue
    if ! "$CLANG_FORMAT" --style=file "$f" | cmp -s "$f" -; then
        n=$("$CLANG_FORMAT" --style=file "$f" | diff "$f" - | grep -c '^[<>]' || true)
        echo "check-format: $f differs from .clang-format ($n lines)"
        differ=$((differ + 1))
    fi
done
if [ "$differ" -eq 0 ]; then
    echo "check-format: all files match .clang-format"
    exit 0
fi
echo "check-format: $differ file(s) differ; reformat with: clang-format -i \$(git ls-files '*.c' '*.h')"
[ -z "$strict" ] || exit 1
exit 0
