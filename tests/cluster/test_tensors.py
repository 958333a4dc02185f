"""Tensors in the safetensors format (put_tensors / get_tensors), pools passed into Ray tasks,
and the context managers of MemoryPool and DistributedMemoryPool.

Our bytes are checked against the ``safetensors`` package's own loader, and files it wrote are
read back with get_tensors. torch cases are skipped where torch is not installed.
"""

from __future__ import annotations

import asyncio
import gc
import json
import pickle
import struct
import sys

import numpy as np
import pytest

from distributed_grid.errors import InvalidArgument, KeyNotFound
from distributed_grid.memory import MemoryPool, connect
from distributed_grid.memory.values.tensors import DATA_ALIGNMENT

safetensors_numpy = pytest.importorskip("safetensors.numpy")

NUMPY_DTYPES = ["float64", "float32", "float16", "int64", "int32", "int16", "int8", "uint64",
                "uint32", "uint16", "uint8", "bool", "complex64"]


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def mixed() -> dict[str, np.ndarray]:
    """One tensor of each dtype numpy has a safetensors name for, of odd sizes (so the layout
    must align them), a scalar and an empty one."""
    tensors = {f"t.{dt}": sample(dt, (3, 5), i) for i, dt in enumerate(NUMPY_DTYPES)}
    tensors["scalar"] = np.array(2.5, dtype="float32")
    tensors["empty"] = np.zeros((0, 7), dtype="float16")
    return tensors


def header_of(raw: bytes) -> tuple[dict, int]:
    (size,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8 : 8 + size]), 8 + size


def test_every_dtype_round_trips_zero_copy_and_safetensors_loads_our_bytes(pool, keys, unique):
    tensors = mixed()
    result = pool.put_tensors(unique, tensors, node="gpu2", metadata={"model": "mlp"})
    keys.append(unique)
    assert result.block.slab and result.block_id.endswith("_gpu2")  # small: in a slab
    got = pool.get_tensors(unique)
    assert set(got) == set(tensors)
    for name, arr in tensors.items():
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape, name
        np.testing.assert_array_equal(got[name], arr)
    raw = pool.read(unique)
    header, data_start = header_of(raw)
    whole = pool.view(result.block_id, shape=(result.length,), offset=result.offset)
    for name, arr in got.items():  # zero-copy: a byte changed in the block shows in the array
        if arr.size:
            pos = data_start + header[name]["data_offsets"][0]
            whole[pos] ^= 0x5A
            assert arr.flags.writeable and arr.reshape(-1).view(np.uint8)[0] == whole[pos], name
            whole[pos] ^= 0x5A

    loaded = safetensors_numpy.load(raw)  # the package's own loader accepts our layout
    assert set(loaded) == set(tensors)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(loaded[name], arr)
    assert header["__metadata__"] == {"model": "mlp"}
    assert data_start % DATA_ALIGNMENT == 0
    for name, entry in header.items():
        if name != "__metadata__":
            begin = entry["data_offsets"][0]
            assert begin % tensors[name].dtype.itemsize == 0, (name, begin)
    assert pool.find_key(unique).meta == {"format": "safetensors"}


def test_a_write_through_one_host_view_is_seen_by_the_next(pool, keys, unique):
    pool.put_tensors(unique, {"w": np.zeros(4, dtype="float32")})
    keys.append(unique)
    pool.get_tensors(unique)["w"][2] = 7.0
    assert pool.get_tensors(unique)["w"].tolist() == [0.0, 0.0, 7.0, 0.0]


def test_another_host_gets_read_only_copies(pool, remote_pool, keys, unique):
    tensors = mixed()
    pool.put_tensors(unique, tensors, node="gpu1")
    keys.append(unique)
    got = remote_pool.get_tensors(unique)
    for name, arr in tensors.items():
        assert not got[name].flags.writeable, name
        assert got[name].dtype == arr.dtype and got[name].shape == arr.shape, name
        np.testing.assert_array_equal(got[name], arr)
    remote_pool.put_tensors(unique + "r", {"x": np.arange(5, dtype="int16")}, node="gpu2")
    keys.append(unique + "r")  # written through the store actor, read here zero-copy
    assert pool.get_tensors(unique + "r")["x"].tolist() == [0, 1, 2, 3, 4]


def test_a_file_written_by_safetensors_stored_with_the_cli_reads_as_tensors(
        pool, remote_pool, grid, blocks, keys, unique, tmp_path):
    tensors = {"embed": sample("float32", (64, 33)), "norm": sample("float16", (33,), 1),
               "ids": np.arange(10, dtype="int64"), "mask": np.array([True, False, True])}
    path = tmp_path / "model.safetensors"
    safetensors_numpy.save_file(tensors, str(path), metadata={"format": "np"})
    block_id = blocks.new(path.stat().st_size, node="gpu2")
    grid("memory", "store", unique, path, "--block-id", block_id)
    keys.append(unique)
    assert pool.find_key(unique).meta is None  # plain bytes: recognised by their header
    for reader in (pool, remote_pool):
        got = reader.get_tensors(unique)
        assert set(got) == set(tensors)
        for name, arr in tensors.items():
            np.testing.assert_array_equal(got[name], arr)
            assert got[name].dtype == arr.dtype


def test_our_key_retrieved_to_a_file_opens_with_safe_open(pool, keys, unique, tmp_path):
    tensors = {"a": sample("float64", (4, 4)), "b": np.arange(3, dtype="uint8")}
    pool.put_tensors(unique, tensors, metadata={"step": "12"})
    keys.append(unique)
    path = tmp_path / "out.safetensors"
    pool.retrieve_to_file(unique, str(path))
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        assert f.metadata() == {"step": "12"}
        for name, arr in tensors.items():
            np.testing.assert_array_equal(f.get_tensor(name), arr)


def test_non_contiguous_and_big_endian_arrays_are_stored_as_contiguous_little_endian(
        pool, keys, unique):
    base = np.arange(48, dtype="float32").reshape(6, 8)
    tensors = {"t": base.T, "s": base[::2, 1::3], "be": np.arange(4, dtype=">i4")}
    pool.put_tensors(unique, tensors)
    keys.append(unique)
    got = pool.get_tensors(unique)
    for name, arr in tensors.items():
        np.testing.assert_array_equal(got[name], arr)
        assert got[name].flags.c_contiguous
    assert got["be"].dtype == np.dtype("<i4")


@pytest.mark.parametrize(("bad", "match"), [
    ({"o": np.array([1, "a"], dtype=object)}, "Python objects"),
    ({"s": np.array(["ab", "c"])}, "no name"),
    ({"c": np.zeros(2, dtype="complex128")}, "no name"),
    ({1: np.zeros(2)}, "names must be strings"),
    ({"__metadata__": np.zeros(2)}, "names must be strings"),
])
def test_what_safetensors_cannot_hold_is_refused_and_nothing_is_stored(pool, unique, bad, match):
    before = {b.block_id for b in pool.list_blocks()}
    with pytest.raises(InvalidArgument, match=match):
        pool.put_tensors(unique, bad)
    assert pool.find_key(unique) is None
    assert {b.block_id for b in pool.list_blocks()} == before


def test_bad_metadata_and_bad_framework_are_refused(pool, keys, unique):
    with pytest.raises(InvalidArgument, match="metadata"):
        pool.put_tensors(unique, {"a": np.zeros(1)}, metadata={"n": 1})
    assert pool.find_key(unique) is None
    pool.put_tensors(unique, {"a": np.zeros(1)})
    keys.append(unique)
    with pytest.raises(InvalidArgument, match="framework"):
        pool.get_tensors(unique, framework="jax")


def test_keys_that_do_not_hold_safetensors_are_refused_clearly(pool, blocks, keys, unique):
    with pytest.raises(KeyNotFound):
        pool.get_tensors(unique)
    pool.put(unique + "a", np.zeros(4))
    pool.put_object(unique + "o", {"x": 1})
    keys.extend([unique + "a", unique + "o"])
    with pytest.raises(InvalidArgument, match="one numpy array.*get\\(\\)"):
        pool.get_tensors(unique + "a")
    with pytest.raises(InvalidArgument, match="pickle.*get_object"):
        pool.get_tensors(unique + "o")
    good = safetensors_numpy.save({"a": np.arange(4, dtype="float32")})
    (size,) = struct.unpack_from("<Q", good)
    cases = {"short": b"abc", "text": b"hello, this is not a safetensors file",
             "truncated": good[:-4], "json": struct.pack("<Q", 2) + b"[]",
             "offsets": good.replace(b"[0,16]", b"[0,99]")}
    for name, data in cases.items():
        block_id = blocks.new(len(data))
        pool.write(block_id, data, key=unique + name)
        keys.append(unique + name)
        with pytest.raises(InvalidArgument, match="does not hold safetensors"):
            pool.get_tensors(unique + name)
    pool.put_tensors(unique + "t", {"a": np.zeros(2)})
    keys.append(unique + "t")
    with pytest.raises(InvalidArgument, match="get_tensors"):
        pool.get(unique + "t")


def test_bfloat16_without_torch_is_refused_by_name_and_torch_missing_is_said(
        pool, blocks, keys, unique, monkeypatch):
    text = json.dumps({"x": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    data = struct.pack("<Q", len(text)) + text + b"\x80\x3f\x00\x40"  # bf16 1.0, 2.0
    pool.write(blocks.new(len(data)), data, key=unique)
    keys.append(unique)
    with pytest.raises(InvalidArgument, match="'x'.*BF16.*framework='torch'"):
        pool.get_tensors(unique)
    monkeypatch.setitem(sys.modules, "torch", None)  # as where torch is not installed
    with pytest.raises(InvalidArgument, match="needs torch"):
        pool.get_tensors(unique, framework="torch")


# -- torch --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def test_torch_tensors_round_trip_with_float16_and_bfloat16(torch, pool, remote_pool, keys,
                                                            unique):
    tensors = {"bf": torch.linspace(-3, 3, 12, dtype=torch.bfloat16).reshape(3, 4),
               "h": torch.arange(6, dtype=torch.float16), "f": torch.ones(2, 2),
               "i": torch.arange(5, dtype=torch.int64), "b": torch.tensor([True, False]),
               "t": torch.arange(12.0).reshape(3, 4).T}  # not contiguous
    pool.put_tensors(unique, tensors, node="gpu2")
    keys.append(unique)
    for reader in (pool, remote_pool):
        got = reader.get_tensors(unique, framework="torch")
        assert set(got) == set(tensors)
        for name, t in tensors.items():
            assert got[name].dtype == t.dtype and got[name].shape == t.shape, name
            assert torch.equal(got[name], t), name
    from safetensors.torch import load

    loaded = load(pool.read(unique))
    assert loaded["bf"].dtype == torch.bfloat16 and torch.equal(loaded["bf"], tensors["bf"])
    with pytest.raises(InvalidArgument, match="'bf'.*framework='torch'"):
        pool.get_tensors(unique)  # numpy has no bfloat16


def test_torch_tensors_on_the_host_are_the_blocks_memory(torch, pool, unique):
    result = pool.put_tensors(unique, {"w": np.zeros(8, dtype="float32")})
    got = pool.get_tensors(unique, framework="torch")["w"]
    got[3] = 5.0  # through the block's memory: numpy sees it
    assert pool.get_tensors(unique)["w"][3] == 5.0 and result.block.slab
    pool.delete(unique)  # its run is free; nothing takes it meanwhile
    gc.collect()
    assert got.tolist() == [0, 0, 0, 5, 0, 0, 0, 0]  # the tensor keeps its mapping alive


def test_a_bfloat16_file_written_by_safetensors_torch_reads_back(torch, pool, grid, keys,
                                                                 unique, tmp_path):
    from safetensors.torch import save_file

    tensors = {"w": torch.randn(16, 8).to(torch.bfloat16), "b": torch.zeros(8)}
    save_file(tensors, str(tmp_path / "m.safetensors"))
    grid("memory", "store", unique, tmp_path / "m.safetensors")
    keys.append(unique)
    got = pool.get_tensors(unique, framework="torch")
    assert all(torch.equal(got[n], t) and got[n].dtype == t.dtype for n, t in tensors.items())


# -- pools passed into Ray tasks ----------------------------------------------------------------


def test_a_pool_pickles_by_address_and_options(cluster_address, remote_pool):
    again = pickle.loads(pickle.dumps(remote_pool))
    assert isinstance(again, MemoryPool) and again is not remote_pool
    assert (again.address, again.force_remote, again.persistent) == \
        (remote_pool.address, True, True)
    assert again.cluster_id == remote_pool.cluster_id  # the same cluster, reached again
    assert {"head", "gpu1", "gpu2"} <= {n.name for n in again.nodes()}


def test_a_pool_passed_to_a_ray_task_on_gpu2_reads_and_writes_blocks(pool, remote_pool, keys,
                                                                    unique):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    block_id = pool.allocate(4096, node="gpu2").block_id
    pool.write(block_id, b"from the driver")
    pool.put_tensors(unique, {"w": np.arange(6, dtype="float32")}, node="gpu1")
    keys.extend([unique, unique + "task"])

    @ray.remote(num_cpus=0)
    def on_gpu2(p, block_id, key):
        seen = p.read(block_id, size=15)
        p.write(block_id, b"task was here", offset=100)
        w = p.get_tensors(key)["w"]
        p.put_tensors(key + "task", {"w2": np.asarray(w) * 2}, node="gpu2")
        return {"seen": seen, "local": p.is_local(block_id), "sum": float(w.sum()),
                "node": ray.get_runtime_context().get_node_id()}

    gpu2 = remote_pool.ray.node("gpu2").node_id  # connects this process to Ray
    try:
        for passed in (pool, remote_pool):
            got = ray.get(on_gpu2.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                gpu2, soft=False)).remote(passed, block_id, unique), timeout=120)
            assert got == {"seen": b"from the driver", "local": not passed.force_remote,
                           "sum": 15.0, "node": gpu2}
            assert pool.read(block_id, size=13, offset=100) == b"task was here"
            assert pool.get_tensors(unique + "task")["w2"].tolist() == [0, 2, 4, 6, 8, 10]
            pool.write(block_id, bytes(13), offset=100)
    finally:
        pool.deallocate(block_id)


def test_a_ray_actor_on_gpu2_keeps_a_pool_it_was_given(pool, remote_pool, keys, unique):
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    pool.put_tensors(unique, {"w": np.arange(4, dtype="int32")}, node="gpu2")
    keys.append(unique)

    @ray.remote(num_cpus=0)
    class Server:
        def __init__(self, p):
            self.pool = p

        def weights(self, key):
            return self.pool.get_tensors(key)["w"].tolist(), self.pool.is_local(
                self.pool.find_key(key).block_id)

    gpu2 = remote_pool.ray.node("gpu2").node_id
    server = Server.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
        gpu2, soft=False)).remote(pool)
    try:
        assert ray.get(server.weights.remote(unique), timeout=120) == ([0, 1, 2, 3], True)
    finally:
        ray.kill(server)


# -- context managers ---------------------------------------------------------------------------


def test_with_connect_closes_the_pool_and_its_blocks_stay(cluster_address, pool, keys, unique):
    with connect(cluster_address) as inner:
        inner.put_tensors(unique, {"a": np.ones(3)})
        held = inner.get_tensors(unique)["a"]
        assert inner._router._nodes  # it opened the key's node
    keys.append(unique)
    assert not inner._router._nodes  # closed what it opened
    assert held.tolist() == [1.0, 1.0, 1.0]  # a live view outlives the pool's close
    assert pool.get_tensors(unique)["a"].tolist() == [1.0, 1.0, 1.0]


def test_with_a_non_persistent_pool_frees_its_blocks_on_exit(cluster_address, pool):
    with MemoryPool(cluster_address, persistent=False) as inner:
        block_id = inner.allocate(4096, node="gpu1").block_id
        assert pool.block_info(block_id).size == 4096
    assert block_id not in {b.block_id for b in pool.list_blocks()}


def test_async_with_initializes_and_shuts_down(cluster_address, pool):
    from distributed_grid.orchestration.distributed_memory_pool import DistributedMemoryPool

    async def main():
        async with DistributedMemoryPool(address=cluster_address) as facade:
            block_id = await facade.allocate(1024, "gpu2")
            await facade.write(block_id, b"async")
            data = await facade.read(block_id, 5)
            await facade.deallocate(block_id)
        with pytest.raises(Exception, match="not initialized"):
            facade.pool  # noqa: B018 - shut down: the facade holds no pool
        return data

    assert asyncio.run(main()) == b"async"
