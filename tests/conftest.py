"""The session's setting, before anything imports Ray, and the fixtures every folder shares.

The session gets a private TMPDIR before anything imports Ray, so its Ray temp folder and the
record of clusters started by distributed_grid are its own: the tests never touch (or stop) a
cluster a developer has running. Everything started in a test is ended by its fixture, by pid,
even when the test fails.

Folders: ``unit/`` (no Ray), ``cluster/`` (the session's cluster, whose fixtures are in
``cluster/conftest.py``, or clusters of their own), ``multihost/``; tests/README.md says more.
What tests share that is not a fixture is in the package ``helpers/``, imported as ``from
helpers.grid import Grid``: pyproject.toml puts ``tests/`` on pytest's ``pythonpath``, so that
works from every folder however the tests are named on the command line. No test module
imports a conftest.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from helpers.dev_shm import sweep  # helpers import no Ray: they may come before the lines below
from helpers.grid import FreshGrid
from helpers.temp_dirs import remove_temp_dir

_SESSION_TMP = tempfile.mkdtemp(prefix="dgt", dir="/tmp")  # short: Ray's socket paths are long
os.environ["TMPDIR"] = _SESSION_TMP
tempfile.tempdir = None  # forget a temp dir tempfile may have cached before this line
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("XDG_RUNTIME_DIR", None)  # the session's records live under its own TMPDIR
os.environ.pop("DISTRIBUTED_GRID_FORCE_REMOTE", None)
os.environ.pop("DISTRIBUTED_GRID_CONFIG", None)

TESTS = Path(__file__).resolve().parent
UNIT = TESTS / "unit"


def pytest_unconfigure(config):
    remove_temp_dir(_SESSION_TMP)


def pytest_ignore_collect(collection_path: Path, config) -> bool | None:
    """``-m unit`` collects ``unit/`` alone: the modules of the other folders import Ray (the
    package's store actor does), which would cost the unit run seconds and hide from
    ``unit/conftest.py`` a unit test that imports it."""
    if (config.getoption("markexpr") or "").strip() != "unit":
        return None
    if collection_path.parent == TESTS and collection_path.is_dir() and collection_path != UNIT:
        return True
    return None


@pytest.fixture
def fresh(tmp_path):
    """A FreshGrid; whatever cluster it started is stopped after the test, blocks freed."""
    grid = FreshGrid(tmp_path)
    try:
        yield grid
    finally:
        stopped = grid("cluster", "stop", check=False)
        remove_temp_dir(grid.tmp)
        assert stopped.returncode == 0, stopped.stderr.decode(errors="replace")
        left = sweep(grid.cluster_id) if grid.cluster_id else []
        assert not left, f"grid cluster stop left files behind: {left}"


@pytest.fixture
def half_memory_reserved(monkeypatch):
    """A reserve of half the host's available memory, so the memory bound is far below
    /dev/shm's free bytes (it is below them anyway when /dev/shm is as big as the RAM)."""
    from distributed_grid.memory.shm import capacity

    _, available = capacity.read_meminfo()
    monkeypatch.setenv(capacity.RESERVE_ENV, str(available // 2))
    return available // 2
