"""Replicated blocks written, nodes dying, repairs, without Ray: real stores (each a
:class:`StoreActor` with its catalog and segments), the pool's own :class:`ReplicaSet` writing
and reading through them, the head's own :class:`Repairs` mending them; the cluster between them
served as plain data (:class:`Mesh`: which node lives, each store's calls).

A node's death here is its store's end with its memory (catalog and segments removed, as a
private /dev/shm goes with its node) and its life gone from the cluster; it may come back under
its name as a new life with nothing. The real thing (a SIGKILLed raylet) is in
``tests/multihost/test_replicas_die.py``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from distributed_grid.errors import GridError, NodeUnavailable
from distributed_grid.memory.client.replicas import ReplicaSet
from distributed_grid.memory.io import sinks, sources
from distributed_grid.memory.node.service.actor import StoreActor
from distributed_grid.records import NodeStats

BLOCK = 1 << 20


class Mesh:
    """The cluster the stores of one test share: each node's store and life."""

    def __init__(self, cluster_id: str) -> None:
        self.cluster_id = cluster_id
        self.stores: dict[str, StoreActor] = {}
        self.lives: dict[str, str] = {}
        self.born = 0

    def start(self, node: str) -> StoreActor:
        self.born += 1
        self.lives[node] = f"{node}-life{self.born}"
        store = StoreActor(node, self.cluster_id, "head", Links(self, node), tick_seconds=None)
        self.stores[node] = store
        self.report(node)
        return store

    def report(self, node: str) -> None:
        """The node's size (and life) in the head's directory, as its upkeep reports it."""
        self.stores[node]._upkeep.report()

    def kill(self, node: str) -> None:
        """The node dies: its store ends and its memory goes with it."""
        store = self.stores.pop(node)
        del self.lives[node]
        store.destroy()
        store.close()

    def store(self, node: str) -> StoreActor:
        if node not in self.stores:
            raise NodeUnavailable(f"node {node} is gone", node=node)
        return self.stores[node]

    @property
    def head(self) -> StoreActor:
        return self.stores["head"]

    def replica_set(self, block_id: str) -> ReplicaSet:
        """The block as a pool on this host reaches it."""
        listed = self.head.directory.replicas(block_id)
        assert listed is not None
        return ReplicaSet(self.store, self.head.directory, set(self.stores), listed)

    def close(self) -> None:
        for node in list(self.stores):
            self.kill(node)


class Links:
    """What one node's store asks of the mesh."""

    def __init__(self, mesh: Mesh, node: str) -> None:
        self.mesh, self.node = mesh, node

    def whereabouts(self) -> tuple[str, str, str]:
        return self.mesh.lives.get(self.node, "gone"), "127.0.0.1:1", "127.0.0.1"

    def dead_jobs(self) -> set[str]:
        return set()

    def lease_alive(self, lease: str) -> bool:
        return True

    def report_to_head(self, head: str, stats: NodeStats) -> bool:
        self.mesh.store(head).dir_report(stats, False)
        return True

    def publish(self, node: str, snapshot: bytes) -> None:
        pass

    def published(self, node: str) -> bytes | None:
        return None

    def call(self, node: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        return getattr(self.mesh.store(node), method)(*args)

    def submit(self, node: str, method: str, *args: Any) -> Any:
        return lambda: self.call(node, method, *args)

    def fetch(self, call: Any) -> Any:
        return call()

    def alive_lives(self) -> set[str]:
        return set(self.mesh.lives.values())


@pytest.fixture
def mesh(cluster_id):
    made = Mesh(cluster_id)
    try:
        yield made
    finally:
        made.close()


def make_replicated(mesh: Mesh, nodes: list[str], size: int = BLOCK) -> str:
    """A replicated block with a copy on each of ``nodes``, as the pool's allocator makes it."""
    first = mesh.store(nodes[0]).allocate(size, replica_of="")
    copies = [(nodes[0], first.number)] + [
        (n, mesh.store(n).allocate(size, replica_of=first.block_id).number) for n in nodes[1:]]
    mesh.head.directory.add_replicated(first.block_id, len(nodes), size, copies,
                                       [mesh.lives[n] for n in nodes])
    return first.block_id


def write(mesh: Mesh, block_id: str, offset: int, data: bytes, key: str | None) -> None:
    """A write through the block, as the pool's writer makes it."""
    block = mesh.replica_set(block_id)
    info = block.prepare_write(0, offset, len(data), key, False, None)
    block.fill(info, offset, len(data), sources.BufferSource(memoryview(data)))
    block.commit_write(0, offset, len(data), key)


def read(mesh: Mesh, block_id: str, offset: int, length: int) -> bytes:
    block = mesh.replica_set(block_id)
    out = bytearray(length)
    block.drain(block.block_info(0), offset, length, sinks.BufferSink(memoryview(out)))
    return bytes(out)


def test_a_repair_gives_a_block_that_lost_a_node_a_new_copy_with_its_bytes_and_keys(mesh):
    for node in ("head", "gpu1", "gpu2", "gpu3"):
        mesh.start(node)
    block_id = make_replicated(mesh, ["gpu1", "gpu2"])
    data = os.urandom(300_000)
    write(mesh, block_id, 4096, data, "k")
    mesh.kill("gpu1")
    done = mesh.head.repairs.run()
    assert done["dropped"] == [f"{block_id} on gpu1"]
    assert done["repaired"] == [f"{block_id} on gpu3"]  # the most room; the head last
    listed = mesh.head.directory.replicas(block_id)
    assert [n for n, _ in listed.copies] == ["gpu2", "gpu3"] and listed.state == "ok"
    new = mesh.store("gpu3")
    number = dict(listed.copies)["gpu3"]
    assert new.block_info(number).keys == {"k": [(4096, len(data))]}
    assert bytes(new.read_whole(number, 4096, len(data))) == data
    mesh.kill("gpu2")  # the first copy gone too: the new one serves
    assert mesh.head.repairs.run()["repaired"] == [f"{block_id} on head"]
    assert read(mesh, block_id, 4096, len(data)) == data
    assert mesh.replica_set(block_id).find_key("k").extents == [(4096, len(data))]


def test_a_writer_that_knew_the_old_copies_is_refused_and_writes_all_of_the_new(mesh):
    for node in ("head", "gpu1", "gpu2", "gpu3"):
        mesh.start(node)
    block_id = make_replicated(mesh, ["gpu1", "gpu2"])
    stale = mesh.replica_set(block_id)  # knows gpu1 and gpu2 only
    mesh.kill("gpu2")
    mesh.head.repairs.run()  # gpu3 joins: epoch 1 on every copy
    info = stale.prepare_write(0, 0, 5, "k", False, None)  # asks again: gpu1 and gpu3
    stale.fill(info, 0, 5, sources.BufferSource(memoryview(b"hello")))
    stale.commit_write(0, 0, 5, "k")
    for node, number in mesh.head.directory.replicas(block_id).copies:
        assert bytes(mesh.store(node).read_whole(number, 0, 5)) == b"hello"


def test_a_node_back_under_its_name_serves_none_of_its_old_copies(mesh):
    for node in ("head", "gpu1", "gpu2"):
        mesh.start(node)
    block_id = make_replicated(mesh, ["gpu1", "gpu2"])
    write(mesh, block_id, 0, b"first", "k")
    mesh.kill("gpu2")
    mesh.start("gpu2")  # the same name, a new life: it holds nothing
    block = mesh.replica_set(block_id)  # the directory still lists gpu2's old copy
    assert read(mesh, block_id, 0, 5) == b"first"  # its number names no copy there
    write(mesh, block_id, 0, b"again", "k")
    done = mesh.head.repairs.run()
    assert f"{block_id} on gpu2" in done["repaired"] or not block.copies
    listed = mesh.head.directory.replicas(block_id)
    assert listed.state == "ok"
    for node, number in listed.copies:
        assert bytes(mesh.store(node).read_whole(number, 0, 5)) == b"again"


class WritesKillsRepairs(RuleBasedStateMachine):
    """Keys written into a replicated block of 2 copies on a cluster of 4 nodes, nodes dying
    (never the last copy's before a repair) and coming back, repairs: every key reads back as
    a plain bytearray model says, and after a repair every copy holds the same."""

    NODES = ("gpu1", "gpu2", "gpu3", "gpu4")

    def __init__(self) -> None:
        super().__init__()
        self.mesh: Mesh | None = None
        self.model = bytearray(64 * 1024)
        self.keys: dict[str, tuple[int, int]] = {}
        self.whole = 2  # copies whose node has not died since they were made

    @initialize(cluster=st.integers(0, 2**31))
    def start(self, cluster: int) -> None:
        self.mesh = Mesh(f"t{os.getpid()}s{cluster}")
        for node in ("head", *self.NODES):
            self.mesh.start(node)
        self.block_id = make_replicated(self.mesh, ["gpu1", "gpu2"], len(self.model))

    def teardown(self) -> None:
        if self.mesh is not None:
            self.mesh.close()

    def listed(self):
        return self.mesh.head.directory.replicas(self.block_id)

    @rule(slot=st.integers(0, 15), data=st.binary(min_size=1, max_size=4096))
    def write_key(self, slot: int, data: bytes) -> None:
        offset = slot * 4096
        write(self.mesh, self.block_id, offset, data, f"k{slot}")
        self.model[offset:offset + len(data)] = data
        self.keys[f"k{slot}"] = (offset, len(data))

    @precondition(lambda self: self.whole >= 2)
    @rule(which=st.integers(0, 1), back=st.booleans())
    def kill_a_copy(self, which: int, back: bool) -> None:
        node = self.listed().copies[which][0]
        self.mesh.kill(node)
        self.whole -= 1
        if back:
            self.mesh.start(node)  # back under its name, with nothing

    @rule()
    def repair(self) -> None:
        for node in self.NODES:
            if node not in self.mesh.stores:
                self.mesh.start(node)  # the cluster has room for a new copy again
        self.mesh.head.repairs.run()
        self.whole = 2
        listed = self.listed()
        assert listed.state == "ok"
        contents = {bytes(self.mesh.store(n).read_whole(k, 0, len(self.model)))
                    for n, k in listed.copies}
        assert contents == {bytes(self.model)}

    @invariant()
    def every_key_reads_back(self) -> None:
        if self.mesh is None:
            return
        block = self.mesh.replica_set(self.block_id)
        for key, (offset, length) in self.keys.items():
            place = block.find_key(key)
            assert place is not None and place.extents == [(offset, length)]
            assert read(self.mesh, self.block_id, offset, length) == \
                bytes(self.model[offset:offset + length])


WritesKillsRepairs.TestCase.settings = settings(
    max_examples=25, stateful_step_count=15, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.usefixtures("cluster_id")
class TestWritesKillsRepairs(WritesKillsRepairs.TestCase):
    pass


def test_nothing_is_left_when_every_copy_fails(mesh):
    for node in ("head", "gpu1", "gpu2"):
        mesh.start(node)
    block_id = make_replicated(mesh, ["gpu1", "gpu2"])
    mesh.kill("gpu1")
    mesh.kill("gpu2")
    with pytest.raises(GridError, match=f"block {block_id} is lost"):
        read(mesh, block_id, 0, 10)
