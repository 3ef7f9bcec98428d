#!/bin/sh
# The benchmarks of BENCHMARKS.md in one run: eventsrc (lmdb, mem, pg) and
# the baselines (raw LMDB, SQLite, plain PostgreSQL inserts, Message DB) on
# the same machine, the same data and the same throwaway PostgreSQL cluster.
#
#   scripts/bench.sh [es_bench options…]     e.g. --scale 0.1, --only W1,W3
#
# Starts a cluster with scripts/pg-temp.sh (fsync and synchronous_commit on),
# installs Message DB (npm package 1.3.1, database 1.3.0) from the npm registry (the package
# @eventide/message-db; cached in build/message-db) with its own
# database/install.sh, runs es_bench (bench/main.c; built, never installed)
# against both, and stops the cluster.  Needs a built ./build/es_bench,
# Node.js/npm, bash and psql.
set -eu
cd "$(dirname "$0")/.."
[ -x build/es_bench ] || { echo "bench: build first (cmake -B build && cmake --build build)" >&2; exit 2; }
pgdir=$(mktemp -d /tmp/es-bench-pg-XXXXXX)
trap './scripts/pg-temp.sh stop "$pgdir"' EXIT INT TERM
uri=$(./scripts/pg-temp.sh start "$pgdir")
port=$(cat "$pgdir/port")

mdb=${ES_MESSAGE_DB_DIR:-build/message-db}
install="$mdb/node_modules/@eventide/message-db/database/install.sh"
if [ ! -f "$install" ]; then
    mkdir -p "$mdb"
    npm install --prefix "$mdb" --no-audit --no-fund --silent @eventide/message-db@1.3.1 >&2
fi
PGHOST=127.0.0.1 PGPORT=$port PGUSER=postgres bash "$install" >"$pgdir/message-db-install.log" 2>&1 ||
    { cat "$pgdir/message-db-install.log" >&2; exit 1; }
echo "bench: PostgreSQL at $uri, Message DB $(cat "$(dirname "$install")/VERSION.txt") installed" >&2
./build/es_bench --pg "$uri" --message-db "postgresql://postgres@127.0.0.1:$port/message_store" "$@"
