#!/bin/sh
# Installs what eventsrc needs to build, test and benchmark on Debian 12.
# Run as root (or through sudo).
set -eu
export DEBIAN_FRONTEND=noninteractive
SUDO=
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential cmake pkg-config \
    liblmdb-dev libsodium-dev libjansson-dev libpq-dev libcmocka-dev libsqlite3-dev sqlite3 \
    libmicrohttpd-dev curl libcurl4-openssl-dev nodejs chromium \
    postgresql postgresql-contrib \
    clang-14 clang libclang-rt-14-dev clang-format-14 clang-format >/dev/null
# clang-14 + libclang-rt-14-dev: `clang -fsanitize=fuzzer` (libFuzzer) for
# scripts/fuzz.sh; clang-format for scripts/check-format.sh; libmicrohttpd-dev for
# esrc serve, and the curl its black-box tests drive it with; libcurl4-openssl-dev for
# the http:// store (a client of esrc serve)
# npm: puppeteer-core for the web console's browser test (tests/browser; it drives
# Debian's chromium, never a downloaded one).  A nodejs from NodeSource carries
# its own npm and conflicts with Debian's: install npm only when none is there.
command -v npm >/dev/null 2>&1 ||
    $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
echo "install-deps: done"
