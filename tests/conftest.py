"""Shared fixtures: one real local Ray cluster (head + raylets gpu1, gpu2) per test session.

The session gets a private TMPDIR before anything imports Ray, so its Ray temp folder and the
record of clusters started by distributed_grid are its own: the tests never touch (or stop) a
cluster a developer has running. Everything started here is ended here, by pid, even when tests
fail, and the session ends by checking that no segment of the test cluster is left in /dev/shm.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import pytest

_SESSION_TMP = tempfile.mkdtemp(prefix="dgt", dir="/tmp")  # short: Ray's socket paths are long
os.environ["TMPDIR"] = _SESSION_TMP
tempfile.tempdir = None  # forget a temp dir tempfile may have cached before this line
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("XDG_RUNTIME_DIR", None)  # the session's records live under its own TMPDIR
os.environ.pop("DISTRIBUTED_GRID_FORCE_REMOTE", None)
os.environ.pop("DISTRIBUTED_GRID_CONFIG", None)

GRID = os.path.join(os.path.dirname(sys.executable), "grid")
WORKERS = ("gpu1", "gpu2")


def pytest_unconfigure(config):
    shutil.rmtree(_SESSION_TMP, ignore_errors=True)


def cluster_files(cluster_id: str) -> list[str]:
    """What a cluster keeps in /dev/shm: segments, node catalogs, the key directory."""
    return sorted(e for e in os.listdir("/dev/shm")
                  if e.split(".")[0] in ("dg", "dgc", "dgk") and e.split(".")[1:2] == [cluster_id])


def sweep(cluster_id: str) -> list[str]:
    """Remove everything a cluster keeps in /dev/shm; returns what was there."""
    left = cluster_files(cluster_id)
    for entry in left:
        try:
            os.unlink(os.path.join("/dev/shm", entry))
        except FileNotFoundError:
            pass
    return left


@pytest.fixture(scope="session")
def cluster_address():
    """The address of the session's cluster: a head named ``head`` and workers gpu1, gpu2."""
    from distributed_grid.cluster import starting, stopping

    address = starting.start_local(list(WORKERS), head_name="head", head_cpus=2)
    cid = None
    try:
        from distributed_grid.memory import MemoryPool

        pool = MemoryPool(address)
        cid = pool.cluster_id
        yield address
        pool.destroy_all()
    finally:
        stopping.stop_started(address)
        leftovers = sweep(cid) if cid is not None else []
        assert not leftovers, f"files left in /dev/shm after the session: {leftovers}"


@pytest.fixture(scope="session")
def pool(cluster_address):
    """A pool in this process (local zero-copy path where the block is on this host)."""
    from distributed_grid.memory import MemoryPool

    return MemoryPool(cluster_address)


@pytest.fixture(scope="session")
def remote_pool(cluster_address):
    """A pool that always takes the remote (ObjectRef) path."""
    from distributed_grid.memory import MemoryPool

    return MemoryPool(cluster_address, force_remote=True)


@pytest.fixture
def blocks(pool):
    """Allocate through ``blocks.new(size, node)``; every block is freed after the test."""

    class Blocks:
        def __init__(self) -> None:
            self.ids: list[str] = []

        def new(self, size: int, node: str | None = None) -> str:
            block_id = pool.allocate(size, node=node).block_id
            self.ids.append(block_id)
            return block_id

        def track(self, block_id: str) -> str:
            self.ids.append(block_id)
            return block_id

    made = Blocks()
    yield made
    from distributed_grid.errors import BlockNotFound

    for block_id in made.ids:
        try:
            pool.deallocate(block_id)
        except BlockNotFound:
            pass


@pytest.fixture
def unique():
    """A fresh name for keys and files of one test."""
    return f"t{uuid.uuid4().hex[:10]}"


class Grid:
    """Runs the ``grid`` command as a user types it, against the session's cluster."""

    def __init__(self, address: str) -> None:
        self.env = dict(os.environ, RAY_ADDRESS=address)

    def __call__(self, *args: str, input: bytes | None = None, env: dict | None = None,
                 check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [GRID, *map(str, args)], capture_output=True, input=input,
            env={**self.env, **(env or {})}, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"grid {' '.join(map(str, args))} exited {result.returncode}:\n"
                f"{result.stderr.decode(errors='replace')}"
            )
        return result

    def fails(self, *args: str, **kw) -> str:
        """Run a command that must fail; returns its stderr, checked to be one error line."""
        result = self(*args, check=False, **kw)
        err = result.stderr.decode(errors="replace")
        assert result.returncode != 0, f"grid {' '.join(map(str, args))} succeeded: {err}"
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("error: "), err
        assert "Traceback" not in err, err
        return lines[-1]

    def listing(self) -> list[dict]:
        import json

        return json.loads(self("memory", "list-objects", "--json").stdout)


@pytest.fixture(scope="session")
def grid(cluster_address):
    return Grid(cluster_address)


class FreshGrid:
    """``grid`` in a private TMPDIR with no RAY_ADDRESS: it sees only the clusters it starts."""

    def __init__(self, cwd) -> None:
        self.tmp = tempfile.mkdtemp(prefix="dgf", dir="/tmp")
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env["TMPDIR"] = self.tmp
        self.cluster_id: str | None = None

    def remember_cluster(self) -> dict:
        """The cluster's status; notes its id so the fixture can check its segments are gone."""
        status = json.loads(self.out("cluster", "status", "--json"))
        self.cluster_id = status["cluster_id"]
        return status

    def __call__(self, *args, env=None, check=True) -> subprocess.CompletedProcess:
        result = subprocess.run([GRID, *map(str, args)], capture_output=True, cwd=self.cwd,
                                env={**self.env, **(env or {})}, timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"grid {' '.join(map(str, args))} exited "
                                 f"{result.returncode}:\n{result.stderr.decode(errors='replace')}")
        return result

    def out(self, *args, **kw) -> str:
        return self(*args, **kw).stdout.decode().strip()


@pytest.fixture
def fresh(tmp_path):
    """A FreshGrid; whatever cluster it started is stopped after the test, blocks freed."""
    grid = FreshGrid(tmp_path)
    try:
        yield grid
    finally:
        stopped = grid("cluster", "stop", check=False)
        shutil.rmtree(grid.tmp, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr.decode(errors="replace")
        left = sweep(grid.cluster_id) if grid.cluster_id else []
        assert not left, f"grid cluster stop left files behind: {left}"
