"""The session's cluster: one real local Ray cluster (head + raylets gpu1, gpu2) per test session,
started by the first test that asks for it and shared through these fixtures.

Everything started here is ended here, by pid, even when tests fail, and the session ends by
checking that no segment of the test cluster is left in /dev/shm. The session's private TMPDIR
is set in the root conftest, before anything imports Ray.
"""

from __future__ import annotations

import uuid

import pytest
from helpers.dev_shm import sweep
from helpers.grid import Grid

WORKERS = ("gpu1", "gpu2")


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
def keys(pool):
    """Keys a test made (append them), deleted after it, even when it failed."""
    from distributed_grid.errors import KeyNotFound

    made: list[str] = []
    yield made
    for key in made:
        try:
            pool.delete(key)
        except KeyNotFound:
            pass


@pytest.fixture
def unique():
    """A fresh name for keys and files of one test."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def grid(cluster_address):
    return Grid(cluster_address)
