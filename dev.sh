#!/usr/bin/env bash
# Set-up and the two jobs of this repository, for a machine with only Python 3.11+, gcc and pip.
#   ./dev.sh demo   create .venv, install, store and retrieve a file through `grid memory ...` on a
#                   cluster it starts and stops (examples/cli_round_trip.sh)
#   ./dev.sh test   create .venv, install (with torch's CPU build when its wheel file is at hand),
#                   ruff, then the whole test suite (extra args go to pytest)
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

# torch's CPU build, for the tests of get_tensors(framework="torch") (bfloat16 among them), when
# a wheel file of it lies in one of pip's find-links directories (PIP_FIND_LINKS): about 30 s and
# 0.9 GB. From an index, pip would take a CUDA build of several GB instead: then the torch cases
# are skipped.
with_torch_if_at_hand() {
    "$VENV/bin/python" -c 'import importlib.util as u, sys; sys.exit(not u.find_spec("torch"))' &&
        return
    local wheel
    wheel=$("$VENV/bin/python" - <<'EOF'
import glob, os, platform, sys
tag = f"cp{sys.version_info.major}{sys.version_info.minor}"
for place in os.environ.get("PIP_FIND_LINKS", "").split():
    place = place.removeprefix("file://")
    name = f"torch-*+cpu-{tag}-{tag}-*{platform.machine()}.whl"
    found = sorted(glob.glob(os.path.join(place, name)))
    if found:
        print(found[-1])
        break
EOF
)
    if [ -n "$wheel" ]; then
        "$VENV/bin/python" -m pip install --quiet "$wheel" ||
            echo "note: torch ($wheel) did not install; its test cases are skipped" >&2
    fi
}

case "${1:-}" in
    demo)
        setup
        PATH="$PWD/$VENV/bin:$PATH" bash examples/cli_round_trip.sh
        ;;
    test)
        setup
        with_torch_if_at_hand
        "$VENV/bin/ruff" check .
        shift
        "$VENV/bin/python" -m pytest "$@"
        ;;
    *)
        echo "usage: ./dev.sh demo | ./dev.sh test [pytest args]" >&2
        exit 2
        ;;
esac
