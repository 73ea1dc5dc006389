#!/usr/bin/env bash
# Start a throwaway PostgreSQL server on 127.0.0.1 for the store's tests, and print the URL.
#
#   eval "$(scripts/start-postgres.sh)"        # exports SAMPLEATTN_TEST_PG_URL
#   .venv/bin/python -m pytest tests/store -q  # the PostgreSQL cases now run too
#   scripts/start-postgres.sh --stop           # stops the server, deletes its data directory
#
# Installs the distribution's server (apt-get install postgresql) when no initdb is found.
# The cluster lives in $SATTN_PG_DIR (default /tmp/sattn-pg-$PORT), listens on 127.0.0.1 only,
# trusts local connections, and runs with fsync off: test data only. As root, the server runs
# as the `postgres` user (initdb refuses root). Port: first argument, $SATTN_PG_PORT, or 55432.
# Only the `export ...` line goes to stdout (the URL, the port, the data directory, and
# SATTN_TEST_PG_STARTED: 1 when this call started the server, 0 when it was already running);
# progress goes to stderr. Running it again while the server is up prints the same URL.
# scripts/test-with-postgres.sh runs a command with a server and stops it after, if it started it.
set -euo pipefail

stop=0
if [[ "${1:-}" == "--stop" ]]; then
    stop=1
    shift
fi
port="${1:-${SATTN_PG_PORT:-55432}}"
data="${SATTN_PG_DIR:-/tmp/sattn-pg-$port}"
database="${SATTN_PG_DB:-sattn_test}"
log() { echo "start-postgres: $*" >&2; }

find_bin() {
    local dir
    dir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
    if [[ -n "$dir" && -x "$dir/initdb" ]]; then
        echo "$dir"
    elif command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
    fi
}

bin="$(find_bin)"
if [[ -z "$bin" ]]; then
    if [[ $stop == 1 ]]; then
        log "no PostgreSQL installed; nothing to stop"
        exit 0
    fi
    log "installing PostgreSQL from the distribution's packages"
    sudo=""
    if [[ $(id -u) != 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq postgresql >&2
    bin="$(find_bin)"
    [[ -n "$bin" ]] || { log "initdb not found after installing postgresql"; exit 1; }
fi

# Run a command as the server's owner: `postgres` when we are root, else ourselves.
as_owner() {
    if [[ $(id -u) == 0 ]]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

if [[ $stop == 1 ]]; then
    if [[ -f "$data/PG_VERSION" ]]; then
        as_owner "$bin/pg_ctl" -D "$data" -m fast -w stop >&2 || true
        rm -rf "$data"
        log "stopped the server on port $port and removed $data"
    else
        log "no cluster in $data; nothing to stop"
    fi
    exit 0
fi

if [[ ! -f "$data/PG_VERSION" ]]; then
    mkdir -p "$data"
    if [[ $(id -u) == 0 ]]; then chown postgres:postgres "$data"; fi
    chmod 700 "$data"
    log "initdb $data"
    as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null 2>&1 \
        || as_owner "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 --no-locale >&2
fi

started=0
if ! as_owner "$bin/pg_ctl" -D "$data" status >/dev/null 2>&1; then
    started=1
    log "starting PostgreSQL ($("$bin/postgres" --version)) on 127.0.0.1:$port"
    as_owner "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
        -o "-p $port -c listen_addresses=127.0.0.1 -k $data -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        start >&2 || { cat "$data/server.log" >&2; exit 1; }
fi

if ! as_owner "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$database'" postgres | grep -q 1; then
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$database"
fi

echo "export SAMPLEATTN_TEST_PG_URL=postgresql+psycopg2://postgres@127.0.0.1:$port/$database SATTN_TEST_PG_PORT=$port SATTN_TEST_PG_DIR=$data SATTN_TEST_PG_STARTED=$started"
