# check.sh — the checks of the esrc black-box tests, sourced by each test
# script.  The script sets T (its temp dir) and may define norm FILE (how
# output is normalised before it is compared; by default the temp dir's
# path becomes TMP) before it runs checks.
fails=0 n=0 skipped=0

if ! command -v norm >/dev/null 2>&1; then
    norm() { sed "s|$T|TMP|g" "$1"; }
fi

# check NAME STATUS EXPECTED-STDOUT EXPECTED-STDERR -- COMMAND...
check() {
    name=$1 want_status=$2 want_out=$3 want_err=$4
    shift 5
    check_in "$name" "$want_status" "$want_out" "$want_err" /dev/null -- "$@"
}

# check_in NAME STATUS OUT ERR INPUT-FILE -- COMMAND...: like check, with stdin
check_in() {
    name=$1 want_status=$2 want_out=$3 want_err=$4 input=$5
    shift 6
    n=$((n + 1))
    "$@" >"$T/out" 2>"$T/err" <"$input"
    status=$?
    norm "$T/out" >"$T/out.n"
    norm "$T/err" >"$T/err.n"
    if [ "$status" != "$want_status" ] || [ "$(cat "$T/out.n")" != "$want_out" ] ||
        [ "$(cat "$T/err.n")" != "$want_err" ]; then
        fails=$((fails + 1))
        echo "FAIL $n: $name"
        echo "  status $status (want $want_status)"
        echo "  stdout:"; sed 's/^/    /' "$T/out.n"
        echo "  want stdout:"; printf '%s\n' "$want_out" | sed 's/^/    /'
        echo "  stderr:"; sed 's/^/    /' "$T/err.n"
        echo "  want stderr:"; printf '%s\n' "$want_err" | sed 's/^/    /'
    else
        echo "ok $n: $name"
    fi
}

# ok NAME COMMAND...: a check that is a shell condition
ok() {
    name=$1
    shift
    n=$((n + 1))
    if "$@"; then echo "ok $n: $name"; else fails=$((fails + 1)); echo "FAIL $n: $name"; fi
}
