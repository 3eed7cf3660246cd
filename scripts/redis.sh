#!/usr/bin/env bash
# A throwaway Redis server: the Celery broker for the tests and runs on CeleryExecutor.
#
#   scripts/redis.sh start DIR PORT   # prints the broker URL (redis://127.0.0.1:PORT/0)
#   scripts/redis.sh stop DIR
#
# Uses Debian's redis-server package, installing it with apt-get when the binary is missing.
# The server listens on 127.0.0.1 only, keeps nothing on disk, and writes its files in DIR.
set -euo pipefail

command=${1:?usage: redis.sh start|stop DIR [PORT]}
dir=${2:?usage: redis.sh start|stop DIR [PORT]}
port=${3:-16379}

ensure_installed() {
    if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then
        return
    fi
    echo "redis.sh: installing Debian's redis-server package" >&2
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
    else
        sudo apt-get update -qq >&2 && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >&2
    fi
}

case "$command" in
start)
    ensure_installed
    mkdir -p "$dir"
    redis-server --bind 127.0.0.1 --port "$port" --dir "$dir" --save "" --appendonly no \
        --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >&2
    for _ in $(seq 1 100); do
        if redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG; then
            echo "redis://127.0.0.1:$port/0"
            exit 0
        fi
        sleep 0.1
    done
    echo "redis.sh: the server did not answer on port $port; see $dir/redis.log" >&2
    exit 1
    ;;
stop)
    if [ -f "$dir/redis.pid" ]; then
        kill "$(cat "$dir/redis.pid")" 2>/dev/null || true
        rm -f "$dir/redis.pid"
    fi
    ;;
*)
    echo "usage: redis.sh start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
