#!/bin/sh
# esrc verify on a damaged lmdb store exits 4 (verification failed) with one
# error line, never 1 and never a signal: a data.mdb cut short, and one whose
# meta pages are overwritten.
# Usage: verify_damaged.sh ESRC
set -u
ESRC=$1
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
for cut in 16384 8192; do
    rm -rf "$d/s"
    "$ESRC" --store "lmdb:$d/s" init >/dev/null || fail "init"
    for i in 1 2 3 4 5; do
        "$ESRC" --store "lmdb:$d/s" append "k/$i" T '{"x":1}' >/dev/null || fail "append"
    done
    "$ESRC" --store "lmdb:$d/s" verify >/dev/null || fail "verify of a sound store"
    truncate -s "$cut" "$d/s/data.mdb"
    "$ESRC" --store "lmdb:$d/s" verify >"$d/out" 2>"$d/err"
    rc=$?
    [ "$rc" -eq 4 ] || fail "verify of a store cut to $cut bytes exited $rc: $(cat "$d/err")"
    [ "$(wc -l <"$d/err")" -eq 1 ] || fail "expected one error line, got: $(cat "$d/err")"
    echo "ok: cut to $cut bytes: exit 4: $(cat "$d/err")"
done
rm -rf "$d/s"
"$ESRC" --store "lmdb:$d/s" init >/dev/null || fail "init"
"$ESRC" --store "lmdb:$d/s" append k T '{}' >/dev/null || fail "append"
# both meta pages (the first two pages) zeroed
dd if=/dev/zero of="$d/s/data.mdb" bs=4096 count=2 conv=notrunc 2>/dev/null
"$ESRC" --store "lmdb:$d/s" verify >"$d/out" 2>"$d/err"
rc=$?
[ "$rc" -eq 4 ] || fail "verify of a store with no meta pages exited $rc: $(cat "$d/err")"
echo "ok: meta pages zeroed: exit 4: $(cat "$d/err")"
