#!/usr/bin/env bash
# Run a command (`make test`: the test suite) with a throwaway PostgreSQL for the store's tests.
#
#   scripts/test-with-postgres.sh .venv/bin/python -m pytest
#
# Starts the server with scripts/start-postgres.sh and exports its URL. If this script started
# it, it is stopped when the command ends, also when the command fails or on Ctrl-C, and one
# line says so. The test suite stops it itself before pytest's last line (tests/session_progress.py,
# told by SATTN_PG_STOP_AT_END=1), so that "N passed ... in Xs" stays the output's last line;
# this script then only checks. A server that was already running is left alone.
# Where PostgreSQL cannot start, the command runs without it (its store cases are skipped),
# except under CI (CI set), where that is an error. Exit status: the command's (130 on Ctrl-C).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"

if pg_env="$(bash "$here/start-postgres.sh")"; then
    eval "$pg_env"
    if [[ "${SATTN_TEST_PG_STARTED:-0}" == 1 ]]; then
        export SATTN_PG_STOP_AT_END=1
    fi
else
    echo "test-with-postgres: PostgreSQL could not be started; its store cases will be skipped" >&2
    if [[ -n "${CI:-}" ]]; then exit 1; fi
fi

stop_postgres() {
    if [[ "${SATTN_PG_STOP_AT_END:-0}" == 1 && -f "$SATTN_TEST_PG_DIR/PG_VERSION" ]]; then
        SATTN_PG_DIR="$SATTN_TEST_PG_DIR" bash "$here/start-postgres.sh" --stop "$SATTN_TEST_PG_PORT" 2>/dev/null
        echo "PostgreSQL: stopped the server started for these tests (127.0.0.1:$SATTN_TEST_PG_PORT; removed $SATTN_TEST_PG_DIR)"
    fi
}
trap stop_postgres EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$@"
