#!/usr/bin/env bash
# Throwaway PostgreSQL server for the broker's store tests.
#
#   scripts/pg-test-server.sh [start] [URLFILE]   start one; print how to use it
#   scripts/pg-test-server.sh stop DIR            stop it and delete DIR
#
# `start` makes a fresh cluster under a new temp dir (trust auth, listening
# only on 127.0.0.1 on a free port, fsync off: the data is disposable), waits
# until it accepts connections, and prints
#   export CPUSHARE_TEST_PG=postgres://postgres@127.0.0.1:PORT/postgres
#   # stop with: scripts/pg-test-server.sh stop DIR
# so `eval "$(scripts/pg-test-server.sh)"` works. With URLFILE it also writes
# the bare URL to that file. Run as root, the server runs as the unprivileged
# `postgres` user (made by Debian's `postgresql` package), else `nobody`;
# PostgreSQL refuses to run as root.
set -euo pipefail

MARKER=.cpushare-pg-test

die() {
    echo "pg-test-server: $*" >&2
    exit 1
}

find_pgbin() {
    if [[ -n "${PGBIN:-}" ]]; then
        echo "$PGBIN"
        return
    fi
    local best
    best=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    [[ -n "$best" && -x "$best/initdb" ]] ||
        die "no PostgreSQL server found under /usr/lib/postgresql; run: apt-get install postgresql"
    echo "$best"
}

# The user that owns and runs the cluster.
server_user() {
    if [[ $(id -u) -ne 0 ]]; then
        id -un
    elif id postgres >/dev/null 2>&1; then
        echo postgres
    else
        echo nobody
    fi
}

# Run a command as the server user.
as_server() {
    local user=$1
    shift
    if [[ $(id -u) -eq 0 ]]; then
        runuser -u "$user" -- "$@"
    else
        "$@"
    fi
}

port_in_use() {
    # A refused connection means nothing listens there.
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

start() {
    local urlfile=${1:-}
    local pgbin user dir
    pgbin=$(find_pgbin)
    user=$(server_user)
    dir=$(mktemp -d "${TMPDIR:-/tmp}/cpushare-pg.XXXXXX")
    touch "$dir/$MARKER"
    chmod 755 "$dir"
    mkdir "$dir/data" "$dir/run"
    if [[ $(id -u) -eq 0 ]]; then
        chown "$user" "$dir/data" "$dir/run" "$dir"
    fi

    if ! as_server "$user" "$pgbin/initdb" -D "$dir/data" -U postgres \
        --auth-local=trust --auth-host=trust -E UTF8 --locale=C --no-sync \
        >"$dir/initdb.log" 2>&1; then
        cat "$dir/initdb.log" >&2
        die "initdb failed (files kept in $dir)"
    fi

    local attempt port=""
    for attempt in 1 2 3 4 5 6 7 8; do
        port=$((20000 + RANDOM % 40000))
        if port_in_use "$port"; then
            continue
        fi
        cat >"$dir/data/postgresql.auto.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir/run'
max_connections = 300
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 64MB
EOF
        if as_server "$user" "$pgbin/pg_ctl" -D "$dir/data" -l "$dir/server.log" \
            -w -t 60 start >/dev/null 2>&1; then
            break
        fi
        # Most likely someone took the port between our probe and the bind.
        port=""
    done
    if [[ -z "$port" ]]; then
        tail -n 30 "$dir/server.log" >&2 || true
        die "the server did not start (files kept in $dir)"
    fi

    local i
    for i in $(seq 1 120); do
        if "$pgbin/pg_isready" -q -h 127.0.0.1 -p "$port" -U postgres; then
            break
        fi
        if [[ $i -eq 120 ]]; then
            tail -n 30 "$dir/server.log" >&2 || true
            die "the server on port $port never accepted connections (files kept in $dir)"
        fi
        sleep 0.5
    done

    local url="postgres://postgres@127.0.0.1:$port/postgres"
    echo "$url" >"$dir/url"
    if [[ -n "$urlfile" ]]; then
        echo "$url" >"$urlfile"
    fi
    echo "export CPUSHARE_TEST_PG=$url"
    echo "# stop with: $0 stop $dir"
}

stop() {
    local dir=${1:-}
    [[ -n "$dir" ]] || die "usage: $0 stop DIR"
    [[ -f "$dir/$MARKER" ]] || die "$dir was not made by this script; not touching it"
    local pgbin user
    pgbin=$(find_pgbin)
    user=$(stat -c %U "$dir/data")
    if [[ -f "$dir/data/postmaster.pid" ]]; then
        as_server "$user" "$pgbin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null ||
            die "pg_ctl stop failed; see $dir/server.log"
    fi
    rm -rf -- "$dir"
}

case "${1:-start}" in
start)
    shift || true
    start "$@"
    ;;
stop)
    shift
    stop "$@"
    ;;
-h | --help)
    sed -n '2,15p' "$0"
    ;;
*)
    # A lone argument that is not a command is the URL file.
    start "$@"
    ;;
esac
