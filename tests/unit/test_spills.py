"""Spilling to disk on one node, without Ray: real segments (small ones, under a node capacity
that makes memory run short), a real spill folder of the test's own with a small quota, and real
processes killed at each step of a spill and a restore.

What is checked: cold blocks go to disk before a new block would pass the high watermark, least
recently used first, and come back exact on any access; a block a live process views is never
spilled (a dead process's view counts for nothing); the quota is never passed and past it the
refusal names the room, the quota and what is pinned; a spiller or restorer killed at any step
leaves every block exact and no file the catalog does not record; freeing a spilled block (or
the node) removes its file; slabs spill and restore whole. The multi-node scenario (a Ray task
holding a view, the store actor SIGKILLed) is ``tests/multihost/test_spill.py``.
"""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading

import pytest
from helpers.node_keys import read_key, store
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from distributed_grid.errors import BlockNotFound, InvalidArgument, StoreFull
from distributed_grid.memory.io import sources, spill_files
from distributed_grid.memory.node.room.spill_policy import check_settings, settings_from_env
from distributed_grid.runtime import this_process

MiB = 2**20
CAPACITY = 8 * MiB  # the node's cap: memory runs short after a few blocks


@pytest.fixture
def node(cluster_id, tmp_path):
    """A node of this test's cluster capped at 8 MiB, spilling to a folder of its own (quota
    32 MiB); its files are removed after the test (the folder with ``tmp_path``)."""
    from distributed_grid.memory.node.local_node import LocalNode

    made = LocalNode("n1", cluster_id, capacity=CAPACITY)
    made.configure_spill(str(tmp_path / "spill"), 32 * MiB)
    made.folder = str(tmp_path / "spill")
    yield made
    if not getattr(made, "destroyed", False):
        made.destroy()


def states(node) -> dict[int, str]:
    return {b.number: b.state for b in node.list_blocks()}


def files(node) -> set[str]:
    return set(os.listdir(node.folder))


def value(i: int, size: int = 2 * MiB) -> bytes:
    return bytes([i % 251]) * size


def test_cold_blocks_go_to_disk_before_the_high_watermark_and_come_back_exact(node):
    for i in range(8):
        store(node, f"k{i}", value(i))
        stats = node.stats()
        assert stats.block_bytes <= 0.85 * CAPACITY  # never past the high watermark
    on_disk = [n for n, s in states(node).items() if s == "spilled"]
    assert len(on_disk) >= 4 and node.stats().spilled_bytes == len(on_disk) * 2 * MiB
    assert len(files(node)) == len(on_disk)  # one file a spilled block, none else
    assert min(on_disk) == 0  # the oldest went first
    for i in range(8):
        assert read_key(node, f"k{i}") == value(i)
    assert len(files(node)) == sum(s == "spilled" for s in states(node).values())


def test_the_least_recently_used_block_is_spilled_first(node):
    blocks = [store(node, f"k{i}", value(i)) for i in range(3)]
    assert read_key(node, "k0") == value(0)  # k1 is now the coldest
    store(node, "k3", value(3))
    store(node, "k4", value(4))
    assert states(node)[blocks[1].number] == "spilled"
    assert states(node)[blocks[0].number] == "memory"


def test_a_viewed_block_is_never_spilled_until_its_view_goes(node):
    first = store(node, "k0", value(0))
    _, view = node.open_block(first.number)
    array = memoryview(view)[10:20]  # anything made over the view keeps the pin
    del view
    for i in range(1, 8):
        store(node, f"k{i}", value(i))
    assert states(node)[first.number] == "memory"
    with pytest.raises(InvalidArgument, match="holds a view"):
        node.spill(first.number)
    assert bytes(array) == value(0)[10:20]
    del array
    gc.collect()
    assert node.spill(first.number).state == "spilled"
    assert read_key(node, "k0") == value(0)


def test_a_view_made_again_after_its_block_was_spilled_sees_it_restored(node):
    block = store(node, "k0", value(0))
    place = node.find_key("k0")
    view = node.view_of(place.block)
    del view  # its pin is idle now: it pins nothing
    gc.collect()
    assert node.spill(block.number).state == "spilled"
    again = node.view_of(place.block)  # the facts from before the spill: their token is old
    assert bytes(again[:4]) == value(0)[:4] and states(node)[block.number] == "memory"
    assert node.node_status().pinned_blocks == 1
    with pytest.raises(InvalidArgument, match="holds a view"):
        node.spill(block.number)


def test_on_a_node_without_a_spill_folder_views_pin_nothing(cluster_id):
    from distributed_grid.memory.node.local_node import LocalNode

    plain = LocalNode("n2", cluster_id)  # nothing moves its blocks
    try:
        block = store(plain, "k0", value(0))
        _, view = plain.open_block(block.number)
        assert bytes(view[:4]) == value(0)[:4]
        assert plain.node_status().pinned_blocks == 0
    finally:
        plain.close()


VIEWER = """
import os, sys, time
from distributed_grid.memory.node.local_node import LocalNode
node = LocalNode("n1", sys.argv[1])
_, view = node.open_block(int(sys.argv[2]))
print("viewing", flush=True)
os.kill(os.getpid(), 9)
"""


def test_the_view_of_a_dead_process_pins_nothing(node, cluster_id):
    block = store(node, "k0", value(0))
    done = subprocess.run([sys.executable, "-c", VIEWER, cluster_id, str(block.number)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL and "viewing" in done.stdout
    assert node.spill(block.number).state == "spilled"
    assert node.node_status().pinned_blocks == 0


def test_past_memory_and_quota_the_refusal_names_the_room_the_quota_and_the_pins(node):
    kept = [store(node, f"k{i}", value(i, 4 * MiB)) for i in range(9)]  # 32 MiB spilled
    assert node.stats().spilled_bytes == 32 * MiB
    _, view = node.open_block(kept[-1].number)
    store(node, "k9", value(9, 4 * MiB))  # the last room in memory (past the watermark)
    with pytest.raises(StoreFull) as refused:
        store(node, "one-more", value(10, 4 * MiB))
    message = str(refused.value)
    assert "spill folder holds 32.0 MiB of its 32.0 MiB quota" in message
    assert "4.0 MiB of its blocks are pinned by views" in message
    assert node.find_key("one-more") is None
    del view
    for i in range(10):
        assert read_key(node, f"k{i}") == value(i, 4 * MiB)
    assert node.stats().spilled_bytes <= 32 * MiB


def test_an_explicit_spill_past_the_quota_is_refused_and_changes_nothing(node):
    blocks = [store(node, f"k{i}", value(i, 4 * MiB)) for i in range(9)]
    in_memory = [b for b in blocks if states(node)[b.number] == "memory"]
    with pytest.raises(StoreFull, match="quota"):
        node.spill(in_memory[0].number)
    assert states(node)[in_memory[0].number] == "memory"


def test_concurrent_accesses_restore_once(node):
    block = store(node, "k0", value(0))
    node.spill(block.number)
    results: list[bytes] = []
    threads = [threading.Thread(target=lambda: results.append(read_key(node, "k0")))
               for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [value(0)] * 6
    assert states(node)[block.number] == "memory" and not files(node)


def test_a_write_to_a_spilled_block_restores_it_first(node):
    block = node.allocate(MiB)
    node.prepare_write(block.number, 0, 4, "a", writer=this_process())
    node.fill(block, 0, 4, sources.BufferSource(memoryview(b"AAAA")))
    node.commit_write(block.number, 0, 4, "a")
    node.spill(block.number)
    info = node.prepare_write(block.number, 8, 4, "b", writer=this_process())
    node.fill(info, 8, 4, sources.BufferSource(memoryview(b"BBBB")))
    node.commit_write(block.number, 8, 4, "b")
    assert read_key(node, "a") == b"AAAA" and read_key(node, "b") == b"BBBB"


def test_freeing_a_spilled_block_or_its_key_or_the_node_removes_its_file(node):
    a = store(node, "a", value(1))
    b = store(node, "b", value(2))
    node.spill(a.number)
    node.spill(b.number)
    assert len(files(node)) == 2
    node.deallocate(a.number)
    assert len(files(node)) == 1
    assert node.delete_key("b").block_freed
    assert not files(node)
    c = store(node, "c", value(3))
    node.spill(c.number)
    node.destroyed = True
    assert node.destroy() == 1 and not files(node)


def test_a_slab_of_small_values_spills_and_restores_whole(node):
    for i in range(20):
        node.put_small(f"s{i}", bytes([i]) * 100)
    slab = node.find_key("s0").block
    assert node.spill(slab.number).state == "spilled"
    assert all(node.find_key(f"s{i}") is not None for i in range(20))  # restored on use
    assert read_key(node, "s7") == bytes([7]) * 100
    node.put_small("s-new", b"x" * 10)
    assert read_key(node, "s-new") == b"x" * 10


# A process that ends with views alive: they go while the interpreter shuts down, when no thread
# may start any more (a callback that started one hung the process for ever).
ENDS_WITH_VIEWS = """
import sys
from distributed_grid.memory.node.local_node import LocalNode
node = LocalNode("n1", sys.argv[1])
_, first = node.open_block(int(sys.argv[2]))
del first  # its pin idle
_, kept = node.open_block(int(sys.argv[2]))  # active again, and alive at the end
print("viewing", flush=True)
"""


def test_a_process_that_ends_with_views_alive_ends(node, cluster_id):
    block = store(node, "k0", value(0))
    done = subprocess.run([sys.executable, "-c", ENDS_WITH_VIEWS, cluster_id,
                           str(block.number)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "viewing" in done.stdout, done.stderr
    assert node.node_status().pinned_blocks == 0
    assert node.spill(block.number).state == "spilled"


# -- crashes at each step -------------------------------------------------------------------------

# A spiller or restorer that SIGKILLs itself from its progress callback: mid-copy, always.
MOVER = """
import os, sys
from distributed_grid.memory.node.local_node import LocalNode
node = LocalNode("n1", sys.argv[1], capacity=int(sys.argv[4]))
number = int(sys.argv[3])
die = lambda n: os.kill(os.getpid(), 9)
if sys.argv[2] == "spill":
    node.spill(number, progress=die)
else:
    node.restore_block(number, progress=die)
"""


def run_mover(cluster_id: str, verb: str, number: int) -> None:
    done = subprocess.run([sys.executable, "-c", MOVER, cluster_id, verb, str(number),
                           str(CAPACITY)], capture_output=True, text=True, timeout=60)
    assert done.returncode == -signal.SIGKILL, done.stderr


def test_a_spiller_killed_mid_copy_leaves_the_block_in_memory_and_no_file(node, cluster_id):
    block = store(node, "k0", value(0, 4 * MiB))
    run_mover(cluster_id, "spill", block.number)
    assert states(node)[block.number] == "spilling"
    assert node.reap_moves() == [block.block_id]
    assert states(node)[block.number] == "memory" and not files(node)
    assert read_key(node, "k0") == value(0, 4 * MiB)
    assert node.spill(block.number).state == "spilled"


def test_a_restorer_killed_mid_copy_leaves_the_block_on_disk(node, cluster_id):
    block = store(node, "k0", value(0, 4 * MiB))
    node.spill(block.number)
    run_mover(cluster_id, "restore", block.number)
    assert states(node)[block.number] == "restoring"
    assert read_key(node, "k0") == value(0, 4 * MiB)  # takes over from the dead restorer
    assert states(node)[block.number] == "memory" and not files(node)


def test_a_store_restarted_adopts_what_its_catalog_records_and_deletes_the_rest(
        node, cluster_id):
    from distributed_grid.memory.node.local_node import LocalNode

    a = store(node, "a", value(1))
    b = store(node, "b", value(2))
    node.spill(a.number)
    node.spill(b.number)
    stray = spill_files.spill_file_name(cluster_id, "n1", 99, "ab" * 8)
    for name in (stray, stray + spill_files.TEMP_SUFFIX):
        with open(os.path.join(node.folder, name), "wb") as f:
            f.write(b"left by a crash")
    other = f"dgs.{cluster_id}.n2.1.{'cd' * 8}"  # another node's: not this one's to judge
    with open(os.path.join(node.folder, other), "wb") as f:
        f.write(b"x")
    os.truncate(os.path.join(node.folder, node.catalog.block(b.number).spill_file), 10)
    again = LocalNode("n1", cluster_id, capacity=CAPACITY)
    try:
        done = again.reconcile_spills()
        assert sorted(done["removed"]) == sorted([stray, stray + spill_files.TEMP_SUFFIX])
        assert done["lost"] == [b.block_id]
        assert read_key(again, "a") == value(1)
        with pytest.raises(BlockNotFound):
            again.restore_block(b.number)
        assert files(node) == {other}
    finally:
        os.unlink(os.path.join(node.folder, other))
        again.close()


def test_a_damaged_spill_file_is_reported_not_read(node):
    block = store(node, "k0", value(0))
    node.spill(block.number)
    path = os.path.join(node.folder, node.catalog.block(block.number).spill_file)
    with open(path, "r+b") as f:
        f.seek(12345)
        f.write(b"\xff")
    with pytest.raises(BlockNotFound, match="damaged"):
        node.restore_block(block.number)
    assert [b.status for b in node.list_blocks()] == ["missing"]
    with pytest.raises(BlockNotFound, match="deallocate it"):
        read_key(node, "k0") if node.find_key("k0") else node.open_block(block.number)


# -- settings ----------------------------------------------------------------------------------


def test_settings_are_checked_and_read_per_node_from_the_environment():
    text = ('{"gpu1": {"dir": "/data/a", "quota": 1024}, '
            '"*": {"dir": "/data/{node}", "quota": 2048, "high": 0.9, "low": 0.5}}')
    assert settings_from_env("gpu1", text).folder == "/data/a"
    other = settings_from_env("gpu2", text)
    assert (other.folder, other.quota, other.high, other.low) == ("/data/gpu2", 2048, 0.9, 0.5)
    assert settings_from_env("gpu1", None) is None
    for bad in (("data", 1, 0.85, 0.7), ("/d", 0, 0.85, 0.7), ("/d", 1, 0.5, 0.7),
                ("/d", 1, 1.5, 0.7)):
        with pytest.raises(InvalidArgument):
            check_settings(*bad)
    with pytest.raises(InvalidArgument, match="not spill settings"):
        settings_from_env("gpu1", "{not json")


# -- a model ---------------------------------------------------------------------------------------


@settings(max_examples=12, stateful_step_count=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
class SpillsAgainstAModel(RuleBasedStateMachine):
    """Keys stored, rewritten, spilled, restored, viewed and deleted on a node short of memory:
    every key reads back as a dict of bytes says, the quota is never passed, and the folder
    holds exactly the spilled blocks' files."""

    @initialize()
    def start(self):
        import tempfile
        import uuid

        from distributed_grid.memory.node.local_node import LocalNode

        self.cluster_id = f"m{os.getpid()}{uuid.uuid4().hex[:8]}"
        self.folder = tempfile.mkdtemp(prefix="spill-model")
        self.node = LocalNode("n1", self.cluster_id, capacity=CAPACITY)
        self.node.configure_spill(self.folder, 24 * MiB)
        self.node.folder = self.folder
        self.model: dict[str, bytes] = {}
        self.views: list[memoryview] = []

    @rule(key=st.sampled_from("abcdefgh"), size=st.sampled_from([MiB, 2 * MiB]),
          fill=st.integers(0, 250))
    def put(self, key, size, fill):
        data = bytes([fill]) * size
        if key in self.model:
            self.node.delete_key(key)
            del self.model[key]
        try:
            store(self.node, key, data)
        except StoreFull:
            return
        self.model[key] = data

    @rule(key=st.sampled_from("abcdefgh"))
    def read(self, key):
        if key in self.model:
            assert read_key(self.node, key) == self.model[key]

    @rule(key=st.sampled_from("abcdefgh"), restore=st.booleans())
    def move(self, key, restore):
        place = self.node.catalog.key_place(key)
        if place is None:
            return
        try:
            if restore:
                self.node.restore_block(place[0].number)
            else:
                self.node.spill(place[0].number)
        except (InvalidArgument, StoreFull):
            pass  # pinned, or the quota: refused, nothing changed

    @rule(key=st.sampled_from("abcdefgh"))
    def view(self, key):
        if key in self.model and len(self.views) < 2:
            place = self.node.find_key(key)
            self.views.append(self.node.view_of(place.block))

    @rule()
    def drop_views(self):
        self.views.clear()
        gc.collect()

    @invariant()
    def folder_and_quota(self):
        if not hasattr(self, "node"):
            return
        spilled = [b for b in self.node.list_blocks() if b.state == "spilled"]
        assert self.node.stats().spilled_bytes <= 24 * MiB
        assert len(os.listdir(self.folder)) == len(spilled)

    def teardown(self):
        if hasattr(self, "node"):
            for key, data in self.model.items():
                assert read_key(self.node, key) == data
            self.views.clear()
            self.node.destroy()
            assert not os.listdir(self.folder)
            os.rmdir(self.folder)
            from helpers.dev_shm import sweep

            sweep(self.cluster_id)


TestSpillsAgainstAModel = SpillsAgainstAModel.TestCase
