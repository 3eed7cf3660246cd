#!/usr/bin/env bash
# A throwaway PostgreSQL server for the tests that need row locks (several triggerers).
#
#   scripts/postgres.sh start DIR PORT   # prints the SQLAlchemy URL of database "airflow"
#   scripts/postgres.sh stop DIR
#
# Uses Debian's postgresql package, installing it with apt-get when its binaries are missing.
# The server listens on 127.0.0.1 only, trusts local connections, and keeps everything in DIR.
set -euo pipefail

command=${1:?usage: postgres.sh start|stop DIR [PORT]}
dir=${2:?usage: postgres.sh start|stop DIR [PORT]}
port=${3:-15432}

find_bin() {
    local name=$1
    if command -v "$name" >/dev/null 2>&1; then
        command -v "$name"
        return
    fi
    ls /usr/lib/postgresql/*/bin/"$name" 2>/dev/null | sort -V | tail -n 1
}

ensure_installed() {
    if [ -n "$(find_bin initdb)" ] && [ -n "$(find_bin pg_ctl)" ]; then
        return
    fi
    echo "postgres.sh: installing Debian's postgresql package" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    else
        sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >&2
    fi
}

# PostgreSQL refuses to run as root: run it as the "postgres" system user when we are root.
as_server_user() {
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        chown -R postgres "$dir"
        if ! su postgres -s /bin/bash -c "test -x $(printf '%q' "$dir")"; then
            echo "postgres.sh: the server user cannot reach $dir; use a directory whose parents are world-traversable" >&2
            exit 1
        fi
        su postgres -s /bin/bash -c "$(printf '%q ' "$@")"
    else
        "$@"
    fi
}

case "$command" in
start)
    ensure_installed
    initdb=$(find_bin initdb)
    pg_ctl=$(find_bin pg_ctl)
    mkdir -p "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        mkdir -p "$dir/data"
        as_server_user "$initdb" -D "$dir/data" -U airflow --auth=trust --encoding=UTF8 >"$dir/initdb.log" 2>&1
    fi
    as_server_user "$pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c max_connections=300 -c fsync=off" start >&2
    psql=$(find_bin psql)
    if ! "$psql" -h 127.0.0.1 -p "$port" -U airflow -d postgres -tAc "select 1 from pg_database where datname='airflow'" | grep -q 1; then
        "$psql" -h 127.0.0.1 -p "$port" -U airflow -d postgres -qc "create database airflow" >&2
    fi
    echo "postgresql+psycopg2://airflow@127.0.0.1:$port/airflow"
    ;;
stop)
    pg_ctl=$(find_bin pg_ctl)
    if [ -f "$dir/data/postmaster.pid" ]; then
        as_server_user "$pg_ctl" -D "$dir/data" -m fast -w stop >&2 || true
    fi
    ;;
*)
    echo "usage: postgres.sh start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
