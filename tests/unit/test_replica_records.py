"""Replicated blocks without Ray: where copies go (a pure ranking), what the key directory
records of them, what a node's catalog records and refuses of a copy, and how a listing shows a
replicated block once."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distributed_grid.cluster.config import load_config
from distributed_grid.errors import InvalidArgument
from distributed_grid.memory.client import placement
from distributed_grid.memory.client.replicas import merge_copies
from distributed_grid.memory.node.local_node import LocalNode
from distributed_grid.memory.node.service.directory import KeyDirectory, Replicas
from distributed_grid.names import replica_count
from distributed_grid.records import NodeStats

GiB = 2**30


def stats(name: str, free: int, used: int = 0) -> NodeStats:
    return NodeStats(node=name, shm_total=64 * GiB, shm_free=free, capacity=None,
                     free_for_blocks=free, blocks=0, block_bytes=used, is_head=False)


def test_spread_takes_distinct_hosts_first_then_the_rest_by_room():
    sizes = {"a1": stats("a1", 10 * GiB), "a2": stats("a2", 9 * GiB),
             "b1": stats("b1", 2 * GiB), "c1": stats("c1", 1 * GiB)}
    host_of = {"a1": "A", "a2": "A", "b1": "B", "c1": "C"}
    caps = {n: None for n in sizes}
    order = placement.spread(sizes, {}, host_of, caps, 512 * 2**20)
    assert order == ["a1", "b1", "c1", "a2"]
    assert placement.spread(sizes, {}, host_of, caps, 512 * 2**20, first="a2")[:3] == \
        ["a2", "b1", "c1"]
    assert placement.spread(sizes, {}, host_of, caps, 3 * GiB) == ["a1", "a2"]  # room


@given(st.dictionaries(st.sampled_from([f"n{i}" for i in range(8)]),
                       st.tuples(st.integers(0, 20), st.sampled_from("ABC")), min_size=1),
       st.integers(1, 10))
def test_spread_never_names_a_node_twice_and_spreads_hosts_first(nodes, gib):
    sizes = {n: stats(n, free * GiB) for n, (free, _) in nodes.items()}
    host_of = {n: host for n, (_, host) in nodes.items()}
    order = placement.spread(sizes, {}, host_of, {n: None for n in nodes}, gib * GiB)
    assert len(order) == len(set(order))
    assert set(order) == {n for n, (free, _) in nodes.items() if free >= gib}
    hosts = [host_of[n] for n in order]
    distinct = len(set(hosts))
    assert len(set(hosts[:distinct])) == distinct  # every host once before any twice


def test_the_directory_lists_copies_in_order_and_drops_them(cluster_id):
    directory = KeyDirectory(cluster_id)
    try:
        assert directory.replicas("block_3_a") is None
        directory.add_replicated("block_3_a", 2, 4096, [("a", 3), ("b", 7)], ["A1", "B1"])
        got = directory.replicas("block_3_a")
        assert got == Replicas("block_3_a", 2, 4096, [("a", 3), ("b", 7)])
        assert got.state == "ok"
        assert directory.copies_on("b") == [("block_3_a", 7)]
        assert directory.drop_copies_of_lives({"A1", "B1"}) == []
        assert directory.drop_copies_of_lives({"A1", "B2"}) == [("block_3_a", "b")]  # b's new life
        assert directory.replicas("block_3_a").copies == [("a", 3)]
        assert directory.replicas("block_3_a").state == "degraded"
        epoch = directory.begin_copy("block_3_a", "c", 9, "C1")
        assert epoch == 1 and directory.begin_copy("block_3_a", "d", 2, "D1") is None
        making = directory.replicas("block_3_a")
        assert making.state == "repairing" and making.written == [("a", 3), ("c", 9)]
        assert making.copies == [("a", 3)] and making.epoch == 1
        assert directory.end_copy("block_3_a", "c")
        assert directory.replicas("block_3_a").copies == [("a", 3), ("c", 9)]
        assert not directory.drop_copy("block_3_a", "a", 4)  # another copy of that node
        assert directory.drop_copy("block_3_a", "a", 3)
        assert not directory.drop_copy("block_3_a", "a", 3)
        assert directory.replicas("block_3_a").state == "degraded"
        assert [r.block_id for r in directory.all_replicated()] == ["block_3_a"]
        assert directory.forget_replicated("block_3_a")
        assert directory.replicas("block_3_a") is None and directory.all_replicated() == []
    finally:
        directory.remove()


def test_a_copy_names_its_block_and_refuses_changes_that_do_not(cluster_id):
    node = LocalNode("n1", cluster_id)
    try:
        first = node.allocate(8192, replica_of="")
        assert first.replica_of == first.block_id and node.copy_of(first.number) == first.block_id
        second = node.allocate(8192, replica_of=first.block_id)
        plain = node.allocate(8192)
        assert node.copy_of(plain.number) is None and plain.replicas == ["n1"]
        with pytest.raises(InvalidArgument, match=f"copy of the replicated block {first.block_id}"):
            node.prepare_write(second.number, 0, 10, "k")
        with pytest.raises(InvalidArgument, match=f"deallocate {first.block_id} instead"):
            node.deallocate(second.number)
        node.prepare_write(second.number, 0, 10, "k", replica_of=first.block_id)
        node.abort_write(second.number, 0, "k")
        assert node.deallocate(second.number, first.block_id).block_id == second.block_id
    finally:
        node.destroy()
        node.close()


def test_a_listing_shows_each_replicated_block_once(cluster_id):
    node = LocalNode("n1", cluster_id)
    try:
        first = node.allocate(4096, replica_of="")
        copy = node.allocate(4096, replica_of=first.block_id)
        stray = node.allocate(4096, replica_of=first.block_id)  # not listed: shown as it is
        plain = node.allocate(4096)
        blocks = node.list_blocks()
    finally:
        node.destroy()
        node.close()
    listed = [Replicas(first.block_id, 3, 4096, [("n1", first.number), ("n1", copy.number)])]
    merged = {b.block_id: b for b in merge_copies(blocks, listed)}
    assert set(merged) == {first.block_id, stray.block_id, plain.block_id}
    assert merged[first.block_id].replicas == ["n1", "n1"]
    assert merged[first.block_id].status == "degraded"  # 2 of 3


def test_copy_counts_are_whole_numbers_from_one_to_eight(tmp_path):
    assert [replica_count(n) for n in (1, 8)] == [1, 8]
    for bad in (0, 9, -1, 1.5, True, "2", None):
        with pytest.raises(InvalidArgument, match="1 to 8"):
            replica_count(bad)
    config = tmp_path / "c.yaml"
    config.write_text("nodes: []\nreplicas: 3\n")
    assert load_config(config).replicas == 3
    config.write_text("nodes: []\n")
    assert load_config(config).replicas == 1
    config.write_text("nodes: []\nreplicas: many\n")
    with pytest.raises(InvalidArgument, match="c.yaml: replicas must be"):
        load_config(config)
