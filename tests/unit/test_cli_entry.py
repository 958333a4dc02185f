"""``grid``'s entry as a user types it: no command is a usage error, help is not, and a "did you
mean" never offers a command that changes something for a typo of one that only looks. None of
these reaches a cluster."""

from __future__ import annotations

import subprocess

import pytest
from helpers.grid import GRID


def grid(*args: str, tmp_path) -> subprocess.CompletedProcess:
    """``grid ARGS`` in a TMPDIR of its own and no RAY_ADDRESS: a command that reached for a
    cluster would start one there (and the test would see it)."""
    return subprocess.run([GRID, *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp_path)})


def usage_error(*args: str, tmp_path) -> list[str]:
    done = grid(*args, tmp_path=tmp_path)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and done.stdout == "", done
    assert len(lines) == 2 and lines[0].startswith("usage: grid") and \
        lines[1].startswith("error: "), done.stderr
    assert not list(tmp_path.iterdir()), "a usage error started something"
    return lines


def test_grid_alone_is_a_usage_error_like_a_group_alone(tmp_path):
    usage, error = usage_error(tmp_path=tmp_path)
    assert usage == "usage: grid {memory,cluster} COMMAND [ARGS...]   (grid --help)"
    assert error == "error: grid needs a command"
    group_usage, group_error = usage_error("memory", tmp_path=tmp_path)
    assert group_error == "error: grid memory needs a command"
    for args in (["--help"], ["-h"]):
        helped = grid(*args, tmp_path=tmp_path)
        assert helped.returncode == 0 and helped.stderr == "", helped
        assert helped.stdout.startswith("grid ") and "groups:" in helped.stdout


@pytest.mark.parametrize("typed,offered", [
    (["cluster", "stat"], "status"),  # not start
    (["cluster", "sta"], "status"),
    (["cluster", "stp"], "stop"),  # nothing that only looks is close: the closest command
    (["memory", "lst-objects"], "list-objects"),
    (["memory", "retriev"], "retrieve"),
    (["memory", "stor"], "store"),
    (["memory", "alocate"], "allocate"),
])
def test_did_you_mean_offers_a_look_for_a_look(tmp_path, typed, offered):
    _, error = usage_error(*typed, tmp_path=tmp_path)
    assert error == (f"error: unknown command 'grid {' '.join(typed)}'; "
                     f"did you mean {offered}?"), error
