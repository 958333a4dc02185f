#!/usr/bin/env bash
# Set-up and the two jobs of this repository, for a machine with only Python 3.11+, gcc and pip.
#   ./dev.sh demo   create .venv, install, store and retrieve a file through `grid memory ...`
#   ./dev.sh test   create .venv, install, ruff, then the whole test suite (extra args go to pytest)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

setup() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
        echo "error: distributed_grid needs Python 3.11 or newer ($PYTHON is $("$PYTHON" -V 2>&1))" >&2
        exit 1
    }
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    local stamp
    stamp="$VENV/.installed-$(cat pyproject.toml setup.py native/*.c | sha1sum | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        "$VENV/bin/python" -m pip install --quiet -e ".[test]"
        touch "$stamp"
    fi
}

case "${1:-}" in
    demo)
        setup
        PATH="$PWD/$VENV/bin:$PATH" bash examples/cli_round_trip.sh
        ;;
    test)
        setup
        "$VENV/bin/ruff" check .
        shift
        "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./dev.sh demo | ./dev.sh test [pytest args]" >&2
        exit 2
        ;;
esac
