"""Replicated blocks on the session's cluster (head, gpu1, gpu2 on one host): copies on distinct
nodes, every write in every copy, one id for all of them, reads that fail over to the next copy
when one loses its block, refusals that allocate nothing. Nodes dying for real is in
``tests/multihost/test_replicas_die.py``."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from distributed_grid.errors import InvalidArgument, KeyConflict, StoreFull
from distributed_grid.memory.node.local_node import LocalNode


@pytest.fixture
def replicated(pool):
    """Allocate replicated blocks with ``replicated(size, copies, node)``; all freed after."""
    made: list[str] = []

    def new(size: int, copies: int = 2, node: str | None = None) -> str:
        made.append(pool.allocate(size, node=node, replicas=copies).block_id)
        return made[-1]

    yield new
    from distributed_grid.errors import BlockNotFound

    for block_id in made:
        try:
            pool.deallocate(block_id)
        except BlockNotFound:
            pass


def copies_of(pool, block_id: str) -> list[tuple[str, int]]:
    """The copies the key directory lists for a replicated block."""
    listed = pool.directory.replicas(block_id)
    assert listed is not None, block_id
    return listed.copies


def copy_bytes(pool, node: str, number: int, length: int) -> bytes:
    """The first bytes of one copy, read through its node's own catalog (not the pool)."""
    local = LocalNode(node, pool.cluster_id)
    try:
        info = local.block_info(number)
        size, view = local.open_block(number)
        with view:
            return bytes(view[:length]) if info.size >= length else b""
    finally:
        local.close()


def test_allocate_places_each_copy_on_a_node_of_its_own(grid, pool, replicated):
    out = json.loads(grid("memory", "allocate", "4MiB", "--replicas", "2", "--json").stdout)
    block_id = out["block_id"]
    replicated_ids = [block_id]
    try:
        assert len(out["replicas"]) == 2 and len(set(out["replicas"])) == 2
        assert "head" not in out["replicas"]  # workers first, as for one copy
        listed = {b["block_id"]: b for b in grid.listing()}
        assert listed[block_id]["replicas"] == out["replicas"]
        assert listed[block_id]["status"] == "ok"
        # one row for the block, whatever its copies: the copies are not listed as blocks
        assert sum(b.get("replica_of") == block_id for b in listed.values()) == 1
        table = grid("memory", "list-objects").stdout.decode()
        row = next(line for line in table.splitlines() if line.startswith(block_id))
        assert row.split()[1:3] == [",".join(out["replicas"]), "2"]
    finally:
        for b in replicated_ids:
            grid("memory", "deallocate", b)


def test_three_copies_with_a_named_first_node_take_the_head_too(grid, pool):
    out = json.loads(grid("memory", "allocate", "1MiB", "--replicas", "3", "--node", "gpu2",
                          "--json").stdout)
    try:
        assert out["replicas"][0] == "gpu2"
        assert sorted(out["replicas"]) == ["gpu1", "gpu2", "head"]
        assert out["block_id"].endswith("_gpu2")
    finally:
        grid("memory", "deallocate", out["block_id"])
    assert pool.directory.replicas(out["block_id"]) is None  # forgotten with its copies


@pytest.mark.parametrize("copies", ["0", "9", "two", "-1", "1.5"])
def test_impossible_copy_counts_are_one_line_and_allocate_nothing(grid, copies):
    before = grid.listing()
    line = grid.fails("memory", "allocate", "1MiB", "--replicas", copies)
    assert "--replicas" in line and "1 to 8" in line
    assert grid.listing() == before


def test_more_copies_than_nodes_say_what_is_missing_and_allocate_nothing(grid, pool):
    before = grid.listing()
    line = grid.fails("memory", "allocate", "1MiB", "--replicas", "4")
    assert "4 copies" in line and "3 live nodes" in line and "nothing was allocated" in line
    assert grid.listing() == before
    with pytest.raises(StoreFull):
        pool.allocate(1 << 20, replicas=5)
    assert grid.listing() == before


def test_store_writes_every_copy_and_retrieve_reads_them(grid, pool, keys, unique, tmp_path):
    data = os.urandom(3 * 2**20 + 17)
    src = tmp_path / "in.bin"
    src.write_bytes(data)
    keys.append(unique)
    out = json.loads(grid("memory", "store", unique, str(src), "--replicas", "2",
                          "--json").stdout)
    block_id = out["block_id"]
    assert len(out["replicas"]) == 2
    for node, number in copies_of(pool, block_id):
        assert copy_bytes(pool, node, number, len(data)) == data
    dest = tmp_path / "out.bin"
    grid("memory", "retrieve", unique, "--output", str(dest))
    assert dest.read_bytes() == data
    grid("memory", "retrieve", block_id, "--output", str(dest), "--size", str(len(data)))
    assert dest.read_bytes() == data


def test_a_copy_refuses_writes_and_frees_that_do_not_come_through_its_block(
        pool, replicated):
    block_id = replicated(1 << 20)
    (node, number), (other, other_number) = copies_of(pool, block_id)
    copy_id = f"block_{other_number}_{other}"
    with pytest.raises(InvalidArgument, match=f"copy of the replicated block {block_id}"):
        pool.write(copy_id, b"x" * 10)
    with pytest.raises(InvalidArgument, match=f"deallocate {block_id} instead"):
        pool.deallocate(copy_id)
    pool.write(block_id, b"through the block")
    for n, k in copies_of(pool, block_id):
        assert copy_bytes(pool, n, k, 17) == b"through the block"


def test_put_and_get_of_a_replicated_array_are_read_only_views(pool, keys, unique):
    keys.append(unique)
    arr = np.arange(300_000, dtype=np.float32)
    result = pool.put(unique, arr, replicas=2)
    assert len(result.block.replicas) == 2 and not result.block.slab
    got = pool.get(unique)
    assert np.array_equal(got, arr)
    assert not got.flags.writeable  # a write through it would reach one copy only
    view = pool.view(result.block_id, dtype="float32", shape=arr.shape)
    assert not view.flags.writeable
    small = pool.put(unique + "s", np.arange(10), replicas=2)  # no slab: slabs hold one copy
    keys.append(unique + "s")
    assert len(small.block.replicas) == 2 and not small.block.slab


def test_a_key_keeps_its_copies_and_refuses_another_count(pool, keys, unique):
    keys.append(unique)
    pool.put(unique, np.zeros(1000), replicas=2)
    again = pool.put(unique, np.ones(1000))  # in place: the same copies
    assert len(again.block.replicas) == 2
    with pytest.raises(KeyConflict, match="2 copies|1 copies"):
        pool.put(unique, np.ones(1000), replicas=1)
    assert np.array_equal(pool.get(unique), np.ones(1000))


def test_delete_of_a_key_frees_every_copy_of_its_block(pool, unique):
    result = pool.put_object(unique, {"x": list(range(20_000))}, replicas=2)
    listed = copies_of(pool, result.block_id)
    removal = pool.delete(unique)
    assert removal.block_freed and removal.block_id == result.block_id
    assert pool.directory.replicas(result.block_id) is None
    for node, number in listed:
        local = LocalNode(node, pool.cluster_id)
        try:
            assert local.catalog.block(number) is None
        finally:
            local.close()


def test_a_copy_that_lost_its_block_is_dropped_and_reads_go_on(pool, replicated):
    """A copy whose block is gone (its memory freed under it, as a node's death frees it):
    reads fail over to the other copy, and the next write drops it from the block's set."""
    block_id = replicated(1 << 20)
    data = os.urandom(1 << 20)
    pool.write(block_id, data)
    (first, number), _ = copies_of(pool, block_id)
    local = LocalNode(first, pool.cluster_id)
    try:
        local.deallocate(number, block_id)  # that copy is gone, as with its node
    finally:
        local.close()
    assert pool.read(block_id) == data
    pool.write(block_id, b"after", offset=5)
    assert [n for n, _ in copies_of(pool, block_id)] != [first]
    assert first not in [n for n, _ in copies_of(pool, block_id)]
    info = pool.block_info(block_id)
    assert info.status == "degraded" and info.replicas == [n for n, _ in
                                                            copies_of(pool, block_id)]
    assert pool.read(block_id, size=10) == data[:5] + b"after"


def test_the_async_facade_and_the_config_default_take_copies(pool, tmp_path, grid):
    config = tmp_path / "cluster.yaml"
    config.write_text("nodes: []\nreplicas: 2\n")
    out = json.loads(grid("memory", "allocate", "1MiB", "--config", str(config),
                          "--json").stdout)
    try:
        assert len(out["replicas"]) == 2
    finally:
        grid("memory", "deallocate", out["block_id"])
    config.write_text("nodes: []\nreplicas: 0\n")
    line = grid.fails("memory", "allocate", "1MiB", "--config", str(config))
    assert "replicas must be a whole number from 1 to 8" in line


def test_writing_a_replicated_block_in_place_reaches_every_copy(pool, remote_pool,
                                                                replicated):
    block_id = replicated(1 << 20)
    with pool.writing(block_id, dtype="uint32", shape=(1000,), offset=4096) as arr:
        assert arr.flags.writeable
        arr[:] = np.arange(1000, dtype=np.uint32)
    want = np.arange(1000, dtype=np.uint32).tobytes()
    for node, number in copies_of(pool, block_id):
        assert copy_bytes(pool, node, number, 4096 + 4000)[4096:] == want
    with pytest.raises(RuntimeError, match="stop"):  # what was written is in every copy
        with pool.writing(block_id, shape=(8,)) as arr:
            arr[:4] = 7
            raise RuntimeError("stop")
    for node, number in copies_of(pool, block_id):
        assert copy_bytes(pool, node, number, 8) == bytes([7] * 4 + [0] * 4)
    with remote_pool.writing(block_id, shape=(8,)) as arr:  # a buffer, sent at the end
        assert not np.shares_memory(arr, pool.view(block_id))
        arr[4:] = 9
    for node, number in copies_of(pool, block_id):
        assert copy_bytes(pool, node, number, 8) == bytes([7] * 4 + [9] * 4)
    with pytest.raises(RuntimeError), remote_pool.writing(block_id, shape=(8,)) as arr:
        arr[:] = 1
        raise RuntimeError("not sent")
    assert pool.read(block_id, size=8) == bytes([7] * 4 + [9] * 4)
