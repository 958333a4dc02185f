"""Small values in slabs through the pool and the CLI: many keys in one segment of their node,
found, viewed, listed, retrieved and deleted as any key; through the node's store too. The
store's own rules without Ray: ``tests/unit/test_slabs.py``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distributed_grid.errors import KeyNotFound
from distributed_grid.memory.shm import layout
from distributed_grid.memory.shm import segment as seg


def test_small_values_share_a_slab_and_read_back_everywhere(grid, pool, remote_pool, keys,
                                                            unique):
    arrays = {f"{unique}-{i}": np.full(25, i, dtype=np.float32) for i in range(40)}
    prefix = layout.segment_prefix(pool.cluster_id, "gpu1")
    segments_before = set(seg.list_segment_names(prefix))
    for key, arr in arrays.items():
        keys.append(key)
        result = pool.put(key, arr, node="gpu1")
        assert result.block.slab and result.length == 100 and not result.allocated
    assert len(set(seg.list_segment_names(prefix)) - segments_before) <= 1  # 40 keys, 1 file
    places = {pool.find_key(k).block_id for k in arrays}
    assert len(places) == 1
    slab = places.pop()
    for key, arr in arrays.items():
        view = pool.get(key)  # zero-copy: an offset into the slab
        assert view.flags.writeable and np.array_equal(view, arr)
        assert np.array_equal(remote_pool.get(key), arr)  # through gpu1's store
    listed = {b["block_id"]: b for b in json.loads(grid("memory", "list-objects", "--json")
                                                   .stdout)}
    assert listed[slab]["slab"] is True and set(arrays) <= set(listed[slab]["keys"])
    assert "slab of" in grid("memory", "list-objects").stdout.decode()
    out = grid("memory", "retrieve", f"{unique}-7")  # the CLI reads a key of a slab
    assert out.stdout == arrays[f"{unique}-7"].tobytes()
    removal = pool.delete(f"{unique}-7")
    assert removal.block_id == slab and not removal.block_freed
    with pytest.raises(KeyNotFound):
        pool.get(f"{unique}-7")
    assert np.array_equal(pool.get(f"{unique}-8"), arrays[f"{unique}-8"])  # neighbours stay


def test_a_small_value_put_through_the_nodes_store(pool, remote_pool, keys, unique):
    keys.append(unique)
    first = remote_pool.put(unique, np.arange(10, dtype=np.int64), node="gpu2")
    assert first.block.slab and first.block.node == "gpu2"
    again = remote_pool.put(unique, np.arange(20, dtype=np.int64))  # put again: its new run
    assert again.block_id == first.block_id
    assert pool.get(unique).tolist() == list(range(20))
    assert remote_pool.get_object  # objects too: a small pickle lands in a slab
    keys.append(f"{unique}-obj")
    assert remote_pool.put_object(f"{unique}-obj", {"a": 1}).block.slab
    assert pool.get_object(f"{unique}-obj") == {"a": 1}


def test_files_and_leased_values_keep_blocks_of_their_own(grid, pool, blocks, keys, tmp_path,
                                                          unique):
    (tmp_path / "f").write_bytes(b"small file")
    block_id = blocks.track(grid("memory", "store", unique, tmp_path / "f").stdout.decode()
                            .strip())
    assert not pool.block_info(block_id).slab  # the guide retrieves the id store printed
    assert grid("memory", "retrieve", block_id).stdout == b"small file"
    keys.append(unique)
    from distributed_grid.memory import MemoryPool

    with MemoryPool(pool.address, persistent=False) as leased:  # lives by the pool's lease
        keys.append(f"{unique}-leased")
        assert not leased.put(f"{unique}-leased", np.zeros(4)).block.slab


def test_a_file_stored_under_a_key_of_a_slab_is_refused_and_changes_nothing(grid, pool, keys,
                                                                           tmp_path, unique):
    keys.append(unique)
    pool.put(unique, np.arange(4, dtype=np.int32))
    (tmp_path / "f").write_bytes(b"file bytes")
    line = grid.fails("memory", "store", unique, tmp_path / "f")
    assert line.startswith(f"error: key '{unique}' is a small value in block_")
    assert "grid memory delete" in line
    assert pool.get(unique).tolist() == [0, 1, 2, 3]
