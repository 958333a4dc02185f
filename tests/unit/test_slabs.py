"""Small values in slabs, on a real node catalog and real segments, without Ray: the free-run
allocator against a model (hypothesis, stateful), views into slabs, a writer killed inside a
put, and the rules (writes by block id refused, empty slabs freed, keys put again moved)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from distributed_grid.errors import InvalidArgument, KeyConflict, KeyNotFound
from distributed_grid.memory.node import slabs
from distributed_grid.memory.node.local_node import LocalNode
from distributed_grid.memory.shm import segment as seg

NODE = "n1"


@pytest.fixture
def node(cluster_id, request):
    made = LocalNode(NODE, cluster_id)
    request.addfinalizer(made.close)
    return made


def value_of(node: LocalNode, key: str) -> bytes:
    place = node.find_key(key)
    assert place is not None, key
    _, view = node.open_block(place.block.number)
    return b"".join(bytes(view[o : o + n]) for o, n in place.extents)


def tiling(node: LocalNode) -> dict[int, list[tuple[int, int, str | None]]]:
    """Each slab's runs by offset: its keys' runs and its free runs. Checks that they cover the
    slab exactly, never overlap, and that no two free runs touch."""
    found = {}
    for block in node.list_blocks():
        if not block.slab:
            continue
        runs = [(o, slabs.run_length(n), k) for k, ext in block.keys.items() for o, n in ext]
        runs += [(o, n, None) for o, n in node.free_runs(block.number)]
        runs.sort()
        at = 0
        for i, (offset, length, key) in enumerate(runs):
            assert offset == at, (block.block_id, runs)
            if key is None and i and runs[i - 1][2] is None:
                raise AssertionError(f"two free runs side by side in {block.block_id}: {runs}")
            at += length
        assert at == block.size, (block.block_id, runs)
        found[block.number] = runs
    return found


def test_small_values_share_one_slab_and_read_back(node):
    a = node.put_small("a", b"x" * 100)
    b = node.put_small("b", [b"12", b"345"], meta={"dtype": "|u1", "shape": [5]})
    assert a.slab and a.block_id == b.block_id  # one segment for both
    assert a.keys == {"a": [(0, 100)]} and b.keys == {"b": [(128, 5)]}  # runs of 64-byte steps
    assert value_of(node, "a") == b"x" * 100 and value_of(node, "b") == b"12345"
    assert node.find_key("b").meta == {"dtype": "|u1", "shape": [5]}
    assert len(seg.list_segment_names(node.prefix)) == 1
    tiling(node)


def test_a_view_of_a_slab_key_is_an_offset_into_the_slab(node):
    info = node.put_small("arr", np.arange(8, dtype=np.float64).tobytes())
    offset, length = info.keys["arr"][0]
    _, view = node.open_block(info.number)
    arr = np.frombuffer(view, dtype=np.float64, count=8, offset=offset)
    assert arr.tolist() == list(range(8))
    arr[0] = 42.0  # writable: the slab's own memory
    assert np.frombuffer(value_of(node, "arr"), dtype=np.float64)[0] == 42.0
    node.delete_key("arr")
    assert arr[0] == 42.0  # the view keeps its mapping; the run is free space now
    assert node.free_runs(info.number) == [(0, info.size)]


def test_a_key_put_again_moves_to_a_new_run_and_frees_the_old(node):
    first = node.put_small("k", b"old" * 10)
    second = node.put_small("k", b"new" * 30)
    assert second.keys["k"][0][0] != first.keys["k"][0][0]
    assert value_of(node, "k") == b"new" * 30
    assert list(node.list_keys()) == ["k"]
    tiling(node)


def test_writes_by_block_id_into_a_slab_are_refused_and_change_nothing(node):
    info = node.put_small("a", b"abc")
    before = tiling(node)
    with pytest.raises(InvalidArgument, match="is a slab"):
        node.prepare_write(info.number, 1024, 10, key="b")
    with pytest.raises(InvalidArgument, match="is a slab"):
        node.prepare_write(info.number, 0, 3, key="a", force=True)
    assert tiling(node) == before and value_of(node, "a") == b"abc"


def test_a_key_in_a_block_of_its_own_is_not_moved_to_a_slab(node):
    block = node.allocate(100)
    node.prepare_write(block.number, 0, 5, key="own")
    node.commit_write(block.number, 0, 5, key="own")
    with pytest.raises(KeyConflict, match="a block of its own"):
        node.put_small("own", b"x")
    assert node.find_key("own").block_id == block.block_id


def test_too_big_for_a_slab_is_refused(node):
    with pytest.raises(InvalidArgument, match="at most"):
        node.put_small("big", bytes(slabs.SMALL_MAX + 1))
    assert node.list_blocks() == []


def test_a_full_slab_makes_a_bigger_one_and_an_empty_one_goes(node, monkeypatch):
    monkeypatch.setattr(slabs, "FIRST_SLAB", 4096)
    for i in range(3):  # 3 x 2 KiB: the 4 KiB slab holds two
        node.put_small(f"k{i}", bytes([i]) * 2048)
    sizes = sorted(b.size for b in node.list_blocks())
    assert sizes == [4096, 8192]
    second = node.find_key("k2").block
    node.delete_key("k2")  # the second slab is empty: it goes, with its segment
    assert [b.size for b in node.list_blocks()] == [4096]
    assert not seg.segment_exists(second.segment)
    node.delete_key("k0")
    node.delete_key("k1")  # the first slab stays, empty, for the next small value
    assert [b.size for b in node.list_blocks()] == [4096]
    assert node.free_runs(node.list_blocks()[0].number) == [(0, 4096)]
    with pytest.raises(KeyNotFound):
        node.delete_key("k1")


def test_a_writer_killed_inside_a_put_leaves_nothing_behind(node, cluster_id):
    """The child copies its bytes into a run and is SIGKILLed before its transaction commits:
    the catalog is as before the put (no key, the run free), and the next put works."""
    node.put_small("kept", b"k" * 300)
    before = tiling(node)
    child = textwrap.dedent(f"""
        import os, signal
        from distributed_grid.memory.node import slabs
        from distributed_grid.memory.node.local_node import LocalNode
        copy = slabs.StoreSlabs._copy_into
        def copy_then_die(self, *args):
            copy(self, *args)
            os.kill(os.getpid(), signal.SIGKILL)  # inside the put's transaction
        slabs.StoreSlabs._copy_into = copy_then_die
        LocalNode({NODE!r}, {cluster_id!r}).put_small("lost", b"z" * 5000)
    """)
    done = subprocess.run([sys.executable, "-c", child], timeout=60)
    assert done.returncode == -signal.SIGKILL
    assert node.find_key("lost") is None
    assert tiling(node) == before  # the run it took is free again: nothing leaked
    node.put_small("after", b"a" * 5000)  # the write lock went with the process
    assert value_of(node, "after") == b"a" * 5000 and value_of(node, "kept") == b"k" * 300


class SlabModel(RuleBasedStateMachine):
    """Puts and deletes of small values against a dict: every key reads back its bytes, and
    each slab is exactly its keys' runs and its free runs (merged)."""

    def __init__(self) -> None:
        super().__init__()
        self.cluster = f"h{os.getpid()}{os.urandom(4).hex()}"
        self.node = LocalNode(NODE, self.cluster)
        self.model: dict[str, bytes] = {}

    def teardown(self) -> None:
        self.node.destroy()
        self.node.close()

    @rule(key=st.sampled_from([f"k{i}" for i in range(12)]),
          size=st.integers(0, 40_000), fill=st.integers(0, 255))
    def put(self, key: str, size: int, fill: int) -> None:
        data = bytes([fill]) * size
        self.node.put_small(key, data)
        self.model[key] = data

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def delete(self, data) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        self.node.delete_key(key)
        del self.model[key]

    @rule(key=st.sampled_from(["absent", "k0"]))
    def delete_absent(self, key: str) -> None:
        if key not in self.model:
            with pytest.raises(KeyNotFound):
                self.node.delete_key(key)

    @invariant()
    def every_key_reads_back_and_the_runs_tile_each_slab(self) -> None:
        assert self.node.list_keys().keys() == self.model.keys()
        for key, data in self.model.items():
            assert value_of(self.node, key) == data
        tiling(self.node)


SlabModel.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
test_slab_allocator_against_a_model = SlabModel.TestCase
