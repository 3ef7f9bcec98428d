#!/bin/sh
# The web console in a real browser: Debian's headless Chromium driven by
# puppeteer-core (console_test.mjs) against `esrc serve` on a store where
# `esrc demo` ran.  puppeteer-core (pinned in package.json and
# package-lock.json) is installed with `npm ci` into WORKDIR (under the build
# tree) the first time, never downloading a browser.
# Skips (77) when node, npm or chromium is missing, or npm cannot install.
# usage: console_test.sh ESRC WORKDIR
set -u
esrc=$1 work=$2
here=$(cd "$(dirname "$0")" && pwd)
CHROMIUM=${CHROMIUM:-$(command -v chromium || true)}
command -v node >/dev/null || { echo "SKIPPED: no node (apt-get install nodejs npm)"; exit 77; }
command -v npm >/dev/null || { echo "SKIPPED: no npm (apt-get install npm)"; exit 77; }
command -v curl >/dev/null || { echo "SKIPPED: no curl"; exit 77; }
[ -n "$CHROMIUM" ] && [ -x "$CHROMIUM" ] || { echo "SKIPPED: no chromium (apt-get install chromium)"; exit 77; }

mkdir -p "$work"
# install again only when the lock file changed
if ! cmp -s "$here/package-lock.json" "$work/package-lock.json" || [ ! -d "$work/node_modules/puppeteer-core" ]; then
    cp "$here/package.json" "$here/package-lock.json" "$work/"
    if ! (cd "$work" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error); then
        rm -f "$work/package-lock.json"
        echo "SKIPPED: npm ci could not install puppeteer-core (no network to the npm registry?)"
        exit 77
    fi
fi
cp "$here/console_test.mjs" "$work/"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
PUPPETEER_SKIP_DOWNLOAD=1 CHROMIUM=$CHROMIUM node "$work/console_test.mjs" "$esrc" "$T"
