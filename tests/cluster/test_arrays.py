"""numpy views over blocks, arrays under keys, and the guide's async DistributedMemoryPool."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_grid.errors import BlockNotFound, InvalidArgument, KeyNotFound, OutOfBounds


def test_view_is_the_blocks_memory(pool, grid, blocks):
    block_id = blocks.new(4096, node="gpu1")
    arr = pool.view(block_id, dtype="float64", shape=(8,), offset=64)
    assert arr.flags.writeable
    arr[:] = np.arange(8)
    again = pool.view(block_id, dtype="float64", shape=(8,), offset=64)
    assert again.tolist() == list(range(8))
    cli = grid("memory", "retrieve", block_id, "--offset", "64", "--size", "64").stdout
    assert np.frombuffer(cli, dtype="float64").tolist() == list(range(8))


def test_remote_view_is_a_read_only_copy(pool, remote_pool, blocks):
    block_id = blocks.new(1024, node="gpu2")
    pool.view(block_id, dtype="int32")[:] = np.arange(256, dtype="int32")
    copy = remote_pool.view(block_id, dtype="int32")
    assert not copy.flags.writeable
    assert copy.tolist() == list(range(256))


def test_view_outlives_deallocation(pool, grid):
    block_id = pool.allocate(2**20, node="gpu1").block_id
    arr = pool.view(block_id, dtype="uint8")
    arr[:5] = [1, 2, 3, 4, 5]
    pool.deallocate(block_id)
    assert arr[:5].tolist() == [1, 2, 3, 4, 5]  # still mapped, still ours
    arr[5] = 6
    with pytest.raises(BlockNotFound):
        pool.view(block_id)
    del arr


@settings(max_examples=40, deadline=None)
@given(dtype=st.sampled_from(["u1", "i2", "<f4", ">f8", "c16", "S3", "<U2"]),
       offset=st.integers(-3, 300), count=st.none() | st.integers(-1, 300))
def test_view_bounds_and_alignment(view_block, dtype, offset, count):
    pool, block_id = view_block
    dt = np.dtype(dtype)
    fits = offset >= 0 and offset <= 256 and (
        count is None or (count >= 0 and offset + count * dt.itemsize <= 256))
    aligned = offset % dt.alignment == 0
    shape = None if count is None else (count,)
    if not fits or not aligned:
        with pytest.raises((OutOfBounds, InvalidArgument)):
            pool.view(block_id, dtype=dtype, shape=shape, offset=offset)
        return
    arr = pool.view(block_id, dtype=dtype, shape=shape, offset=offset)
    expected = (256 - offset) // dt.itemsize if count is None else count
    assert arr.shape == (expected,) and arr.dtype == dt
    assert arr.nbytes == expected * dt.itemsize


@pytest.fixture(scope="module")
def view_block(pool):
    block_id = pool.allocate(256, node="gpu1").block_id
    yield pool, block_id
    pool.deallocate(block_id)


def test_view_refuses_object_dtype_and_bad_shapes(pool, blocks):
    block_id = blocks.new(64)
    with pytest.raises(InvalidArgument, match="Python objects"):
        pool.view(block_id, dtype=object)
    with pytest.raises(InvalidArgument, match="shape"):
        pool.view(block_id, shape=(-1, 2))
    with pytest.raises(OutOfBounds, match="needs 72 bytes"):
        pool.view(block_id, dtype="f8", shape=(3, 3))


def test_put_get_round_trip_zero_copy(pool, remote_pool, unique):
    arr = np.arange(12, dtype="<f4").reshape(3, 4)
    info = pool.put(unique, arr, node="gpu2")
    try:
        got = pool.get(unique)
        assert got.dtype == arr.dtype and got.shape == (3, 4)
        np.testing.assert_array_equal(got, arr)
        got[0, 0] = 42  # zero-copy: the stored array changes
        assert pool.get(unique)[0, 0] == 42
        far = remote_pool.get(unique)
        assert not far.flags.writeable and far[0, 0] == 42
        assert pool.read(unique) == pool.get(unique).tobytes()
        assert info.block.slab  # 48 bytes: a run of a slab of gpu2
    finally:
        pool.delete(unique)


def test_put_refuses_object_arrays_and_replaces_in_place(pool, unique):
    with pytest.raises(InvalidArgument, match="Python objects"):
        pool.put(unique, np.array([object(), 1], dtype=object))
    assert pool.find_key(unique) is None
    first = pool.put(unique, np.zeros(100, dtype="i8"))
    try:
        again = pool.put(unique, np.ones((5, 5), dtype="i4")[:, ::2])  # not contiguous
        assert pool.find_key(unique).block_id == again.block_id and first.block.slab
        np.testing.assert_array_equal(pool.get(unique), np.ones((5, 3), dtype="i4"))
    finally:
        pool.delete(unique)


def test_keys_from_the_cli_are_arrays_of_bytes(pool, grid, tmp_path, unique, blocks):
    (tmp_path / "f").write_bytes(b"abc")
    blocks.track(grid("memory", "store", unique, tmp_path / "f").stdout.decode().strip())
    assert pool.get(unique).tobytes() == b"abc"
    with pytest.raises(KeyNotFound):
        pool.get(unique + "-missing")


def test_async_pool_as_the_guide_uses_it(cluster_address, grid):
    from distributed_grid.orchestration.distributed_memory_pool import DistributedMemoryPool

    async def main():
        memory_pool = DistributedMemoryPool(None, address=cluster_address)
        await memory_pool.initialize(persistent=True)
        block_id = await memory_pool.allocate(4096, preferred_node="gpu2")
        await memory_pool.write(block_id, b"guide", offset=10)
        data = await memory_pool.read(block_id, 5, offset=10)
        everything = await memory_pool.read(block_id)
        stats = await memory_pool.get_stats()
        await memory_pool.shutdown()
        return block_id, data, everything, stats

    block_id, data, everything, stats = asyncio.run(main())
    try:
        assert data == b"guide" and everything == bytes(10) + b"guide"
        assert block_id in {b.block_id for b in stats["blocks"]}
        assert grid("memory", "retrieve", block_id, "--offset", "10").stdout == b"guide"
    finally:
        grid("memory", "deallocate", block_id)


def test_non_persistent_blocks_go_with_shutdown(pool, cluster_address):
    from distributed_grid.orchestration.distributed_memory_pool import DistributedMemoryPool

    async def main():
        memory_pool = DistributedMemoryPool(address=cluster_address)
        await memory_pool.initialize(persistent=False)
        block_id = await memory_pool.allocate(4096)
        listed = {b.block_id for b in pool.list_blocks()}
        await memory_pool.shutdown()
        return block_id, listed

    block_id, listed = asyncio.run(main())
    assert block_id in listed
    assert block_id not in {b.block_id for b in pool.list_blocks()}


OWNER = """
import asyncio, sys
from distributed_grid.orchestration.distributed_memory_pool import DistributedMemoryPool
async def main():
    memory_pool = DistributedMemoryPool(address=sys.argv[1])
    await memory_pool.initialize(persistent=sys.argv[2] == "1")
    print(await memory_pool.allocate(4096, preferred_node="gpu1"), flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


@pytest.mark.parametrize("persistent", [False, True], ids=["temporary", "persistent"])
def test_blocks_of_a_killed_owner(pool, cluster_address, persistent):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, cluster_address, str(int(persistent))],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        block_id = owner.stdout.readline().decode().strip()
        assert block_id.startswith("block_")
    finally:
        os.kill(owner.pid, signal.SIGKILL)
        owner.wait()
    if persistent:
        assert pool.block_info(block_id).persistent
        pool.deallocate(block_id)
        return
    deadline = time.monotonic() + 120  # the store checks leases every few seconds
    while block_id in {b.block_id for b in pool.list_blocks()}:
        assert time.monotonic() < deadline, f"{block_id} outlived its killed owner"
        time.sleep(0.5)
