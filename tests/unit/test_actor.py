"""The store actor's logic without Ray: a real catalog and real segments, the cluster served as
plain data (the actor asks everything of the cluster through its links).

What runs here is what Ray runs in the node's store process: chunk I/O for clients on other
hosts, the key directory of the head, and the upkeep's decisions (dead leases, silent remote
writers, reports to the head, published block lists), each round called by the test instead of
a thread.
"""

from __future__ import annotations

import numpy as np
import pytest

from distributed_grid.errors import KeyNotFound
from distributed_grid.memory.node.service.actor import StoreActor
from distributed_grid.memory.node.service.upkeep import read_snapshot, snapshot
from distributed_grid.records import NodeStats
from distributed_grid.runtime import node_records
from distributed_grid.wire import REMOTE_WRITER


class Cluster:
    """The cluster as a store actor sees it, kept as plain data a test sets and reads."""

    def __init__(self) -> None:
        self.ended_jobs: set[str] = set()
        self.live_leases: set[str] = set()
        self.head_running = True
        self.reports: list[tuple[str, NodeStats]] = []
        self.snapshots: dict[str, bytes] = {}
        self.published_count = 0

    def whereabouts(self) -> tuple[str, str, str]:
        return "node-id-of-test", "127.0.0.1:1", "127.0.0.1"

    def dead_jobs(self) -> set[str]:
        return set(self.ended_jobs)

    def lease_alive(self, lease: str) -> bool:
        return lease in self.live_leases

    def report_to_head(self, head: str, stats: NodeStats) -> bool:
        if not self.head_running:
            return False
        self.reports.append((head, stats))
        return True

    def publish(self, node: str, snapshot: bytes) -> None:
        self.snapshots[node] = snapshot
        self.published_count += 1

    def published(self, node: str) -> bytes | None:
        return self.snapshots.get(node)


@pytest.fixture
def actors(cluster_id, request):
    """``actors.new(node, head=..., links=...)``: a StoreActor of this test's cluster, closed
    afterwards (its files go with the cluster's)."""

    class Actors:
        def __init__(self) -> None:
            self.made: list[StoreActor] = []

        def new(self, node: str = "gpu1", head: str = "head",
                links: Cluster | None = None) -> StoreActor:
            actor = StoreActor(node, cluster_id, head, links or Cluster(), tick_seconds=None)
            self.made.append(actor)
            return actor

    made = Actors()
    yield made
    for actor in made.made:
        actor.close()


def remote_writer(job: str) -> str:
    return f"{REMOTE_WRITER}{job}:otherhost/4242/1"


def test_a_started_store_numbers_on_from_what_it_published_and_records_its_node(actors,
                                                                              cluster_id):
    links = Cluster()
    links.snapshots["gpu1"] = snapshot([], 42)  # its last life handed out 0..41
    actor = actors.new(links=links)
    assert actor.allocate(4096).block_id == "block_42_gpu1"
    (record,) = [r for r in node_records(cluster_id=cluster_id, alive_only=False)
                 if r.node == "gpu1"]
    assert (record.node_id, record.address, record.ip) == links.whereabouts()
    assert record.catalog == actor.catalog.path and record.directory is None
    assert actor.ping()["node_id"] == "node-id-of-test"


def test_chunks_go_only_into_a_write_the_actor_holds(actors):
    actor = actors.new()
    block = actor.allocate(1 << 20)
    writer = remote_writer("01000000")
    actor.prepare_write(block.number, 4096, 8192, "k", writer=writer)
    assert actor.write_chunk(block.number, 4096, np.full(4096, 7, np.uint8)) == 4096
    assert actor.write_chunk(block.number, 8192, np.full(4096, 9, np.uint8)) == 4096
    with pytest.raises(KeyNotFound, match="no write of bytes 0..4096"):
        actor.write_chunk(block.number, 0, np.zeros(4096, np.uint8))  # outside the write
    actor.commit_write(block.number, 4096, 8192, "k")
    with pytest.raises(KeyNotFound, match="in progress"):  # the write is over
        actor.write_chunk(block.number, 4096, np.zeros(4096, np.uint8))
    got = actor.read_chunk(block.number, 4096, 8192)
    assert bytes(got) == b"\x07" * 4096 + b"\x09" * 4096
    assert bytes(actor.read_whole(block.number, 0, 4096)) == bytes(4096)


def test_a_small_value_sent_to_the_actor_lands_in_a_slab(actors):
    actor = actors.new()
    first = actor.put_small("k", b"abc" * 10, {"format": "x"})  # the bytes Ray carried
    assert first.slab and first.keys == {"k": [(0, 30)]}
    assert bytes(actor.read_whole(first.number, 0, 30)) == b"abc" * 10
    assert actor.find_key("k").meta == {"format": "x"}
    assert actor.delete_key("k").block_freed is False  # a node's first slab stays


def test_a_remote_read_is_told_when_a_write_ran_meanwhile(actors):
    actor = actors.new()
    block = actor.allocate(65536)
    seq = actor.read_begin(block.number, 0, 65536)
    assert actor.read_end(block.number, seq)  # nothing happened in between
    seq = actor.read_begin(block.number, 0, 65536)
    actor.prepare_write(block.number, 0, 100, "k", writer=remote_writer("01000000"))
    actor.commit_write(block.number, 0, 100, "k")
    assert not actor.read_end(block.number, seq)  # a write started and ended: read again


def test_the_head_serves_the_key_directory_and_other_nodes_do_not(actors):
    head = actors.new("head")
    assert head.dir_claim("k", "block_0_gpu1") is None
    assert head.dir_lookup("k") == ("block_0_gpu1", 1)
    assert head.dir_claim("k", "block_3_gpu2") == ("block_0_gpu1", 1)
    assert head.dir_take_over("k", "block_3_gpu2", ("block_0_gpu1", 1))
    assert head.dir_forget_blocks(["block_3_gpu2"]) == 1 and head.dir_lookup("k") is None
    head.dir_report(actors.new("gpu1").stats(), False)
    assert [s.node for s in head.dir_node_sizes()] == ["gpu1"]
    worker = actors.new("gpu2")
    with pytest.raises(RuntimeError, match="not the head"):
        worker.dir_lookup("k")


def test_upkeep_frees_the_blocks_of_dead_leases_only(actors):
    links = Cluster()
    actor = actors.new(links=links)
    links.live_leases = {"lease.alive"}
    kept = actor.allocate(4096, lease="lease.alive").block_id
    gone = actor.allocate(4096, lease="lease.gone").block_id
    done = actor.upkeep()
    assert done["leases"] == [gone]
    assert [b.block_id for b in actor.list_blocks()] == [kept]


def test_upkeep_undoes_the_writes_of_remote_writers_whose_job_ended(actors):
    links = Cluster()
    actor = actors.new(links=links)
    block = actor.allocate(65536)
    alive, dead = remote_writer("01000000"), remote_writer("02000000")
    actor.prepare_write(block.number, 0, 4096, "a", writer=alive)
    actor.prepare_write(block.number, 4096, 4096, "b", writer=dead)
    links.ended_jobs = {"02000000"}
    done = actor.upkeep()
    assert done["abandoned"] == [f"write at 4096 of {block.block_id} by {dead}"]
    with pytest.raises(KeyNotFound):  # its chunks are refused from now on
        actor.write_chunk(block.number, 4096, np.zeros(4096, np.uint8))
    assert actor.write_chunk(block.number, 0, np.ones(4096, np.uint8)) == 4096
    assert actor.block_info(block.number).pending_keys == ["a"]


def test_upkeep_reports_a_new_size_until_the_head_takes_it(actors):
    links = Cluster()
    actor = actors.new(links=links)
    links.head_running = False
    actor.allocate(4096)
    actor.upkeep()
    assert links.reports == []  # the head's store does not run yet
    links.head_running = True
    actor.upkeep()
    assert [(head, s.blocks) for head, s in links.reports] == [("head", 1)]
    actor.upkeep()
    assert len(links.reports) == 1  # nothing changed: nothing more to say


def test_upkeep_publishes_the_block_list_when_the_catalog_changed(actors):
    links = Cluster()
    actor = actors.new(links=links)
    actor.upkeep()
    first = links.published_count
    block = actor.allocate(4096)
    actor.upkeep()
    actor.upkeep()
    assert links.published_count == first + 1
    blocks, next_number = read_snapshot(links.snapshots["gpu1"])
    assert [b.block_id for b in blocks] == [block.block_id]
    assert blocks[0] == actor.block_info(block.number) and next_number == block.number + 1
