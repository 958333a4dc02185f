"""A node's prefault without Ray: real spares in /dev/shm (a few MiB each), filled by the refill
the store actor runs, taken by new blocks, given back, reconciled.

What is checked: the refill makes spares up to the target whose pages are in, and they count in
the node's room; a new block takes one whole (trimmed, or grown when it holds at least half),
and its first write finds its pages there; a view of a freed block never shows the bytes of a
block made after it (20 rounds, and a hypothesis state machine of puts, views, deletes and
refills against a plain model); spares go first when the host could not back a new block, all
of them when the host's memory falls under the reserve, the newest when the target shrinks; a
filler killed mid-fill leaves nothing the catalog does not know after the store restarts; the
node's destruction removes them; the refill waits while a write runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from helpers.node_keys import read_key, store
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from distributed_grid.errors import InvalidArgument, StoreFull
from distributed_grid.memory.node.room.refill import Refill
from distributed_grid.memory.node.room.spares import SPARE_MIN, prefault_from_env
from distributed_grid.memory.shm import layout
from distributed_grid.memory.shm.capacity import RESERVE_ENV, read_meminfo
from distributed_grid.runtime import this_process

MiB = 2**20
SPARE = 4 * MiB


@pytest.fixture
def node(cluster_id):
    """A node of this test's cluster keeping 8 MiB of spares; destroyed after the test."""
    from distributed_grid.memory.node.local_node import LocalNode

    made = LocalNode("n1", cluster_id)
    made.configure_prefault(2 * SPARE)
    yield made
    made.destroy()


def fill(node, size: int = SPARE) -> None:
    """Make the node's spares, as its store actor's refill does (without waiting for quiet:
    ``Refill.fill`` with an idle check that always holds)."""
    refill = Refill(node)
    refill.idle = lambda: True
    while node.spare_bytes() + size <= node.prefault_target():
        assert refill.fill(size)


def spare_files(node) -> list[str]:
    pattern = layout.spare_pattern(node.cluster_id, node.node)
    return sorted(e for e in os.listdir("/dev/shm") if pattern.fullmatch("/" + e))


def test_the_refill_makes_spares_to_the_target_and_they_count_as_room(node):
    before = node.stats(fresh=True)
    fill(node)
    assert [s.state for s in node.spares()] == ["ready", "ready"]
    assert len(spare_files(node)) == 2
    stats = node.stats(fresh=True)
    assert stats.prefault == stats.prefault_target == 2 * SPARE
    assert stats.blocks == 0 and stats.block_bytes == 0
    # used memory of the host, but room for new blocks: a block may take them
    assert abs(stats.free_for_blocks - before.free_for_blocks) < 64 * MiB
    for name in spare_files(node):
        assert os.stat(os.path.join("/dev/shm", name)).st_blocks * 512 >= SPARE  # allocated


def test_a_new_block_takes_a_spare_whole_and_its_write_finds_the_pages_in(node):
    fill(node)
    data = os.urandom(SPARE)
    block = store(node, "k", data)
    assert block.paged == SPARE  # its first write mapped pages, it faulted none in
    assert len(node.spares()) == 1 and len(spare_files(node)) == 1
    assert read_key(node, "k") == data
    assert node.block_info(block.number).paged == SPARE


def test_a_spare_is_trimmed_or_grown_to_the_block_or_left_when_it_is_far_from_it(node):
    fill(node)
    smaller = store(node, "small", os.urandom(3 * MiB))  # 4 MiB spare, at most twice: trimmed
    assert smaller.paged == 3 * MiB
    seg = os.path.join("/dev/shm", smaller.segment.lstrip("/"))
    assert os.stat(seg).st_size == layout.HEADER_SIZE + 3 * MiB
    bigger = store(node, "big", os.urandom(6 * MiB))  # 4 MiB holds half of it: grown
    assert bigger.paged == SPARE and os.stat(os.path.join(
        "/dev/shm", bigger.segment.lstrip("/"))).st_size == layout.HEADER_SIZE + 6 * MiB
    assert node.spares() == []
    fill(node)
    assert store(node, "tiny", os.urandom(SPARE_MIN // 2)).paged == 0  # below SPARE_MIN
    assert store(node, "huge", os.urandom(20 * MiB)).paged == 0  # a spare holds under half
    assert len(node.spares()) == 2
    for key, size in (("small", 3), ("big", 6), ("huge", 20)):
        assert len(read_key(node, key)) == size * MiB


def test_the_next_spares_are_made_at_the_size_of_the_last_big_block(node):
    store(node, "k", os.urandom(3 * MiB))  # no spare yet: it only tells the size
    fill(node, node._next_spare_size(node.prefault_target()))
    assert [s.size for s in node.spares()] == [3 * MiB, 3 * MiB]
    node.configure_prefault(64 * MiB)  # a 16th of it is more than the last block: 4 MiB
    assert node._next_spare_size(node.prefault_target()) == 4 * MiB


def test_spares_made_for_another_size_give_way_to_ones_that_fit(node):
    fill(node)  # two spares of 4 MiB: the target (8 MiB) is full
    assert store(node, "big", os.urandom(12 * MiB)).paged == 0  # neither holds half of it
    refill = Refill(node)
    refill.idle = lambda: True
    assert refill.round() is True  # both went (8 MiB free), one of 8 MiB was made in their place
    assert [s.size for s in node.spares()] == [8 * MiB]
    assert refill.round() is False  # it fits now: nothing more goes (no churn)
    assert store(node, "big2", os.urandom(12 * MiB)).paged == 8 * MiB
    node.configure_prefault(4 * MiB)  # too small for any spare a 12 MiB block takes
    fill(node)
    assert refill.round() is False and [s.size for s in node.spares()] == [4 * MiB]


def test_twenty_rounds_a_view_of_a_freed_block_keeps_its_bytes(node):
    """put A, keep a view of A, delete A, put B: the view shows A's bytes, every round."""
    views = []
    for i in range(20):
        fill(node)  # B may take fresh memory only: spares made since A was freed
        a = bytes([i % 251]) * SPARE
        block = store(node, f"a{i}", a)
        _, view = node.open_block(block.number)
        views.append((view, a))
        node.delete_key(f"a{i}")
        b = bytes([(i + 100) % 251]) * SPARE
        store(node, f"b{i}", b)
        for held, expected in views:
            assert bytes(held) == expected
        node.delete_key(f"b{i}")
    del held, views


def test_spares_go_first_when_the_host_could_not_back_a_new_block(node, monkeypatch):
    fill(node)
    _, available = read_meminfo()
    monkeypatch.setenv(RESERVE_ENV, str(available + 2**40))  # the host has no memory to give
    node.room.refresh = 0  # the host read at every look
    # 6 MiB would take one spare (4 MiB) and need 2 MiB of new memory the host cannot give: the
    # other spare goes first; then even both would not hold it, and it is refused
    with pytest.raises(StoreFull):
        store(node, "k", os.urandom(6 * MiB))
    assert len(node.spares()) == 1 and len(spare_files(node)) == 1
    assert node.find_key("k") is None and node.list_blocks() == []
    refill = Refill(node)
    refill.idle = lambda: True
    assert refill.round() is False  # none made either: the host is under its reserve
    assert node.spares() == []  # and the last one went back


def test_every_spare_goes_when_the_host_falls_under_the_reserve(node, monkeypatch):
    fill(node)
    _, available = read_meminfo()
    monkeypatch.setenv(RESERVE_ENV, str(available + 2**40))
    node.room.refresh = 0
    assert node.release_over(node.prefault_target()) == 2 * SPARE
    assert node.spares() == [] and spare_files(node) == []


def test_a_smaller_target_gives_back_the_newest_spares(node):
    fill(node)
    first = node.spares()[0]
    node.configure_prefault(SPARE)
    refill = Refill(node)
    refill.idle = lambda: True
    refill.round()
    assert node.spares() == [first]
    node.configure_prefault(0)
    refill.round()
    assert node.spares() == [] and spare_files(node) == []


def test_the_refill_waits_while_a_write_runs(node):
    block = node.allocate(SPARE, holder=this_process(), for_key="k")
    node.prepare_write(block.number, 0, SPARE, "k", writer=this_process())
    refill = Refill(node)
    refill._quiet_since -= 3600  # however long ago the catalog last changed
    refill._mark = node.catalog.change_mark()
    assert refill.idle() is False  # the write is pending
    node.abort_write(block.number, 0, "k")
    refill._mark = node.catalog.change_mark()
    assert refill.idle() is True


def test_a_filler_killed_mid_fill_leaves_nothing_after_the_store_restarts(node, cluster_id):
    script = (
        "import sys, os, signal\n"
        "from distributed_grid.memory.node.local_node import LocalNode\n"
        "from distributed_grid.memory.node.room.refill import Refill\n"
        "from distributed_grid.memory.shm import spares\n"
        f"node = LocalNode('n1', {cluster_id!r})\n"
        "grow = spares.grow\n"
        "def grow_then_die(fd, start, end):\n"
        "    grow(fd, start, end)\n"
        "    if start > 0: os.kill(os.getpid(), signal.SIGKILL)\n"
        "spares.grow = grow_then_die\n"
        "refill = Refill(node); refill.idle = lambda: True\n"
        "refill.fill(64 * 2**20)\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert [s.state for s in node.spares()] == ["filling"] and len(spare_files(node)) == 1
    stray = layout.spare_name(cluster_id, "n1", 999)
    open(os.path.join("/dev/shm", stray.lstrip("/")), "wb").close()  # no row names it
    done = node.reconcile_spares()
    assert len(done["dropped"]) == 1 and done["removed"] == [stray]
    assert node.spares() == [] and spare_files(node) == []


def test_a_spare_a_dead_taker_left_goes_at_the_second_look(node, cluster_id):
    fill(node)
    taken = node.spares()[0]
    with node.catalog.transaction():  # what an allocation's transaction does, then its process
        node._take_spare(taken.size)   # died before the spare became the block's
    name = node.spare_name(taken.number)
    refill = Refill(node)
    assert refill.remove_strays() == []  # it may be a spare being taken right now
    assert name in ["/" + f for f in spare_files(node)]
    assert refill.remove_strays() == [name]
    assert len(spare_files(node)) == 1 and len(node.spares()) == 1


def test_a_spare_whose_file_vanished_leaves_the_catalog(node):
    fill(node)
    gone = node.spares()[0]
    os.unlink(os.path.join("/dev/shm", node.spare_name(gone.number).lstrip("/")))
    assert node.reconcile_spares()["dropped"] == [node.spare_name(gone.number)]
    assert gone not in node.spares() and len(node.spares()) == 1
    assert store(node, "k", os.urandom(SPARE)).paged == SPARE  # the other one serves


def test_destroying_the_node_removes_its_spares(cluster_id):
    from distributed_grid.memory.node.local_node import LocalNode

    made = LocalNode("n2", cluster_id)
    made.configure_prefault(SPARE)
    fill(made)
    assert len(spare_files(made)) == 1
    made.destroy()
    assert spare_files(made) == []


def test_prefault_settings_are_checked_and_read_per_node_from_the_environment(node):
    assert prefault_from_env("n1", None) == 0
    assert prefault_from_env("n1", '{"*": 1024, "n2": 5}') == 1024
    assert prefault_from_env("n2", '{"*": 1024, "n2": 5}') == 5
    for bad in ('{"*": -1}', '{"*": "2GiB"}', "not json", "[1]"):
        with pytest.raises(InvalidArgument):
            prefault_from_env("n1", bad)
    with pytest.raises(InvalidArgument):
        node.configure_prefault(-1)


class NoAliasing(RuleBasedStateMachine):
    """Puts, views kept, deletes and refills in any order: every view shows the bytes its
    block had when it was viewed, and every live key reads back as written."""

    def __init__(self) -> None:
        super().__init__()
        from distributed_grid.memory.node.local_node import LocalNode

        self.node = LocalNode("h1", self.cluster_id)
        self.node.configure_prefault(3 * SPARE)
        self.keys: dict[str, bytes] = {}
        self.views: list[tuple[memoryview, bytes]] = []
        self.count = 0

    cluster_id = ""

    @initialize()
    def start(self) -> None:
        fill(self.node, SPARE)

    @rule(size=st.sampled_from([SPARE // 2, 3 * MiB, SPARE, 6 * MiB]), byte=st.integers(0, 255))
    def put(self, size: int, byte: int) -> None:
        self.count += 1
        key = f"k{self.count}"
        data = bytes([byte]) * size
        store(self.node, key, data)
        self.keys[key] = data

    @rule(data=st.data())
    def view_then_delete(self, data: st.DataObject) -> None:
        if not self.keys:
            return
        key = data.draw(st.sampled_from(sorted(self.keys)))
        place = self.node.find_key(key)
        _, view = self.node.open_block(place.block.number)
        self.views.append((view, self.keys.pop(key)))
        self.node.delete_key(key)

    @rule()
    def refill(self) -> None:
        fill(self.node, SPARE)

    @invariant()
    def views_keep_their_bytes(self) -> None:
        for view, expected in self.views:
            assert bytes(view[: len(expected)]) == expected

    @invariant()
    def keys_read_back(self) -> None:
        for key, expected in self.keys.items():
            assert read_key(self.node, key) == expected

    def teardown(self) -> None:
        self.views.clear()
        self.node.destroy()


def test_no_view_ever_shows_another_blocks_bytes(cluster_id):
    NoAliasing.cluster_id = cluster_id
    runner = NoAliasing.TestCase
    runner.settings = settings(max_examples=15, stateful_step_count=12, deadline=None,
                               suppress_health_check=[HealthCheck.too_slow])
    runner().runTest()
