#!/bin/sh
# A throwaway PostgreSQL cluster for tests and benchmarks: initdb in a temp
# dir, as an unprivileged user, listening on 127.0.0.1 only.
#
#   pg-temp.sh available        exit 0 when Debian's server binaries are here
#   pg-temp.sh start DIR        init + start a cluster in DIR (empty, made by
#                               mktemp -d); prints its connection URI
#   pg-temp.sh restart DIR      stop (fast) and start it again, same port
#   pg-temp.sh stop DIR         stop it and remove DIR
#
# As root, the cluster runs as the `postgres` user that Debian's package
# creates (initdb refuses root); otherwise as the calling user.
set -eu

bindir() {
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
            echo "$d"
            return 0
        fi
    done
    return 1
}

as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

cmd=${1:-}
case "$cmd" in
available)
    bindir >/dev/null
    ;;
start)
    dir=${2:?usage: pg-temp.sh start DIR}
    bin=$(bindir) || { echo "pg-temp: PostgreSQL server binaries not found" >&2; exit 1; }
    [ "$(id -u)" -eq 0 ] && chown postgres "$dir"
    chmod 700 "$dir"
    as_owner "$bin/initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C.UTF-8 \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    # A free loopback port: ask the kernel for one.
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null ||
        echo $((20000 + $$ % 20000)))
    cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
shared_buffers = 256MB
fsync = on
synchronous_commit = on
max_wal_size = 2GB
logging_collector = off
EOF
    echo "$port" >"$dir/port"
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null ||
        { cat "$dir/server.log" >&2; exit 1; }
    echo "postgresql://postgres@127.0.0.1:$port/postgres"
    ;;
restart)
    dir=${2:?usage: pg-temp.sh restart DIR}
    bin=$(bindir)
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start >/dev/null
    ;;
stop)
    dir=${2:?usage: pg-temp.sh stop DIR}
    if bin=$(bindir) && [ -d "$dir/data" ]; then
        as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null 2>&1 || true
    fi
    rm -rf "$dir"
    ;;
*)
    echo "usage: pg-temp.sh available | start DIR | restart DIR | stop DIR" >&2
    exit 2
    ;;
esac
