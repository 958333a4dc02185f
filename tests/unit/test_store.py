"""BlockStore over a real node catalog and real segments, without Ray: numbering, the write
rules, capacity, reconciling with the host's segments, and the catalog's own guarantees (schema
version, file mode, crash safety, several processes at once)."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
from helpers.dev_shm import sweep
from helpers.small_shm import needs_small_shm, run_on_small_shm

from distributed_grid.errors import (
    BlockNotFound,
    InvalidArgument,
    KeyConflict,
    KeyNotFound,
    OutOfBounds,
    StoreFull,
    VersionMismatch,
)
from distributed_grid.memory.node.catalog import SCHEMA_VERSION
from distributed_grid.memory.node.local_node import LocalNode
from distributed_grid.memory.node.store import BlockStore
from distributed_grid.memory.shm import layout
from distributed_grid.memory.shm import segment as seg
from distributed_grid.names import parse_block_id

NODE = "n1"


@pytest.fixture
def stores(cluster_id, request):
    """``stores.new(node=..., capacity=...)`` makes a BlockStore of this test's cluster.

    Every store made is closed afterwards, and everything of the cluster in /dev/shm is removed,
    even when the test failed.
    """

    class Stores:
        def __init__(self) -> None:
            self.made: list[BlockStore] = []

        def new(self, node: str = NODE, capacity: int | None = None) -> BlockStore:
            store = BlockStore(node, cluster_id, capacity=capacity)
            self.made.append(store)
            return store

    made = Stores()

    def finish() -> None:
        for store in made.made:
            store.close()
        sweep(cluster_id)

    request.addfinalizer(finish)
    return made


@pytest.fixture
def store(stores):
    return stores.new()


def state(store: BlockStore) -> list:
    """Everything the catalog holds, to compare before and after a refused change."""
    db = sqlite3.connect(store.catalog.path)
    try:
        return [db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
                for table in ("meta", "blocks", "extents", "key_meta", "leases")]
    finally:
        db.close()


def write(store: BlockStore, number: int, offset: int, data: bytes) -> None:
    with seg.Segment.attach(store.block_info(number).segment) as s, s.data() as view:
        view[offset : offset + len(data)] = data


def read(store: BlockStore, number: int, offset: int, length: int) -> bytes:
    with seg.Segment.attach(store.block_info(number).segment) as s, s.data() as view:
        return bytes(view[offset : offset + length])


def stored(store: BlockStore, number: int, offset: int, data: bytes, key: str | None) -> None:
    store.prepare_write(number, offset, len(data), key=key)
    write(store, number, offset, data)
    store.commit_write(number, offset, len(data), key=key)


def check_consistent(store: BlockStore) -> None:
    """The catalog's invariants: intact, counts right, numbers ahead, segments where claimed."""
    db = sqlite3.connect(store.catalog.path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        meta = dict(db.execute("SELECT name, value FROM meta").fetchall())
        count, size = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM blocks "
                                 "WHERE state IN ('creating', 'ok')").fetchone()
        assert (meta["block_count"], meta["block_bytes"]) == (count, size)
        top = db.execute("SELECT max(number) FROM blocks").fetchone()[0]
        assert top is None or meta["next_number"] > top
        assert db.execute("SELECT count(*) FROM extents WHERE block NOT IN "
                          "(SELECT number FROM blocks)").fetchone() == (0,)
        ok = [r[0] for r in db.execute("SELECT segment FROM blocks WHERE state='ok'")]
    finally:
        db.close()
    on_host = set(seg.list_segment_names(store.prefix))
    assert set(ok) <= on_host


# -- allocation and numbering ----------------------------------------------------------------


def test_allocate_returns_block_ids_with_growing_numbers(store):
    infos = [store.allocate(100 + i) for i in range(4)]
    assert [i.block_id for i in infos] == [f"block_{n}_{NODE}" for n in range(4)]
    for n, info in enumerate(infos):
        assert parse_block_id(info.block_id) == (n, NODE)
        assert (info.number, info.size, info.used, info.status) == (n, 100 + n, 0, "ok")
        assert info.keys == {} and info.pending_keys == [] and info.persistent
        assert info.segment == f"/dg.{store.cluster_id}.{NODE}.{n}"
        with seg.Segment.attach(info.segment) as s:
            assert s.size == 100 + n
            assert s.token.hex() == info.token
    assert store.stats().blocks == 4 and store.stats().block_bytes == 406
    check_consistent(store)


@pytest.mark.parametrize("size", [0, -1, 1.5, True, "10"])
def test_allocate_refuses_a_size_that_is_not_a_positive_int(store, size):
    before = state(store)
    with pytest.raises(InvalidArgument):
        store.allocate(size)
    assert state(store) == before
    assert store.allocate(1).number == 0


def test_numbers_are_never_reused_after_deallocate(store):
    a = store.allocate(10)
    b = store.allocate(10)
    store.deallocate(b.number)
    store.deallocate(a.number)
    c = store.allocate(10)
    assert c.block_id == f"block_2_{NODE}"
    assert not seg.segment_exists(b.segment)


def test_numbers_are_never_reused_by_another_process_or_a_reopened_catalog(stores):
    first = stores.new()
    for _ in range(3):
        first.allocate(10)
    first.deallocate(2)  # the highest number is gone, yet it stays spent
    assert stores.new().allocate(10).number == 3
    assert first.allocate(10).number == 4  # the first store sees the second's change at once


def test_a_second_store_on_the_catalog_sees_blocks_keys_and_bytes(stores):
    first = stores.new()
    a = first.allocate(64).number
    b = first.allocate(32).number
    stored(first, a, 0, b"hello", "alpha")
    stored(first, a, 10, b"xyz", "beta")
    stored(first, a, 20, b"more", "alpha")
    stored(first, b, 0, b"raw bytes", None)
    second = stores.new()
    assert second.list_blocks() == first.list_blocks()
    assert second.list_keys() == {"alpha": f"block_{a}_{NODE}", "beta": f"block_{a}_{NODE}"}
    assert second.find_key("alpha").extents == [(0, 5), (20, 4)]
    assert read(second, a, 0, 5) == b"hello" and read(second, b, 0, 9) == b"raw bytes"
    assert (second.block_info(a).used, second.block_info(b).used) == (24, 9)
    with pytest.raises(KeyConflict):  # the key rules hold for every process of the host
        second.prepare_write(a, 2, 2, key="gamma")
    with pytest.raises(KeyConflict):
        second.prepare_write(b, 0, 1, key="beta")


def test_reconcile_unlinks_orphan_segments_and_leaves_other_nodes_alone(stores):
    first = stores.new()
    kept = first.allocate(10)
    orphan = f"{first.prefix}{first.catalog.meta('next_number')}"
    seg.create_segment(orphan, 10, secrets.token_bytes(16))  # no block owns it
    other = stores.new(node="n1.5").allocate(10)  # its segments start with n1's prefix
    assert other.segment.startswith(first.prefix)
    done = first.reconcile()
    assert done["orphans"] == [orphan]
    assert seg.list_segment_names(first.prefix) == sorted([kept.segment, other.segment])
    assert first.list_blocks()[0].status == "ok"
    assert first.allocate(10).number == 1  # numbers go on from the catalog


def test_block_whose_segment_vanished_is_missing(stores):
    first = stores.new()
    lost = first.allocate(10)
    kept = first.allocate(10)
    assert seg.unlink_segment(lost.segment)
    assert stores.new().reconcile()["missing"] == [lost.block_id]
    statuses = {i.number: i.status for i in first.list_blocks()}
    assert statuses == {lost.number: "missing", kept.number: "ok"}
    with pytest.raises(BlockNotFound) as info:
        first.block_info(lost.number)
    assert lost.segment in str(info.value) and info.value.block_id == lost.block_id
    with pytest.raises(BlockNotFound):
        first.prepare_write(lost.number, 0, 1, key="k")
    assert first.stats().blocks == 1 and first.stats().block_bytes == 10
    # a missing block can still be deallocated, and its number is not reused
    assert first.deallocate(lost.number).status == "missing"
    assert [i.number for i in first.list_blocks()] == [kept.number]
    assert first.allocate(10).number == 2
    check_consistent(first)


def test_reap_removes_a_creation_whose_creator_died_and_spares_a_live_one(stores):
    store = stores.new()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for creator in (f"{os.uname().nodename}/{dead.pid}/1", store.me):
        with store.catalog.transaction():
            n = store.catalog.spend_number()
            store.catalog.insert_block(n, 10, f"{store.prefix}{n}", "00" * 16, time.time(), None,
                                       creator)
        seg.create_segment(f"{store.prefix}{n}", 10, bytes(16))
    assert store.reap() == [f"block_0_{NODE}"]
    assert not seg.segment_exists(f"{store.prefix}0")
    assert seg.segment_exists(f"{store.prefix}1")  # its creator (this process) is alive
    assert store.list_blocks() == []  # a block being made is not listed
    with pytest.raises(BlockNotFound):
        store.block_info(1)
    check_consistent(store)


# -- write rules -----------------------------------------------------------------------------


def test_write_past_the_end_is_out_of_bounds_and_changes_nothing(store):
    n = store.allocate(100).number
    stored(store, n, 0, b"x" * 10, "a")
    before = state(store)
    with pytest.raises(OutOfBounds) as exc:
        store.prepare_write(n, 95, 10, key="b")
    message = str(exc.value)
    for number in ("10", "95", "100", "5"):  # asked, where, block size, what fits
        assert re.search(rf"\b{number}\b", message), message
    assert f"block_{n}_{NODE}" in message
    assert (exc.value.offset, exc.value.length, exc.value.block_size) == (95, 10, 100)
    for offset, length in ((101, 0), (-1, 1), (0, -1)):
        with pytest.raises(OutOfBounds):
            store.prepare_write(n, offset, length, key="b")
    assert state(store) == before
    store.prepare_write(n, 90, 10, key="b")  # the exact edge fits
    assert store.commit_write(n, 90, 10, key="b").keys["b"] == [(90, 10)]


def test_write_onto_another_keys_bytes_is_a_conflict_and_changes_nothing(store):
    n = store.allocate(100).number
    stored(store, n, 10, b"x" * 10, "a")
    before = state(store)
    for offset, length in ((5, 6), (19, 5), (12, 2), (0, 100), (10, 10)):
        with pytest.raises(KeyConflict) as exc:
            store.prepare_write(n, offset, length, key="b")
        assert "'a'" in str(exc.value) and "10..20" in str(exc.value)
        assert exc.value.key == "a"
    with pytest.raises(KeyConflict):
        store.prepare_write(n, 15, 1)  # a write without a key may not clobber a key either
    assert state(store) == before
    store.prepare_write(n, 0, 10, key="b")  # touching ends do not overlap
    store.prepare_write(n, 20, 5, key="c")
    assert store.block_info(n).pending_keys == ["b", "c"]


def test_pending_extents_are_owned_too(store):
    n = store.allocate(100).number
    store.prepare_write(n, 0, 10, key="a")  # not committed
    with pytest.raises(KeyConflict):
        store.prepare_write(n, 5, 1, key="b")


def test_force_drops_the_overlapped_extent_of_the_other_key(store):
    n = store.allocate(100).number
    for key, offset in (("a", 0), ("a", 50), ("b", 20)):
        stored(store, n, offset, b"y" * 10, key)
    info = store.prepare_write(n, 5, 20, key="c", force=True)  # hits a@0 and b@20
    assert info.pending_keys == ["c"] and info.keys == {}  # a write reports its own key
    info = store.block_info(n)
    assert "b" not in info.keys
    assert info.keys["a"] == [(50, 10)]  # only the overlapped extent of a is dropped
    assert store.commit_write(n, 5, 20, key="c").keys == {"c": [(5, 20)]}
    assert store.block_info(n).keys == {"a": [(50, 10)], "c": [(5, 20)]}
    assert store.list_keys() == {"a": f"block_{n}_{NODE}", "c": f"block_{n}_{NODE}"}
    assert store.find_key("b") is None


def test_same_key_same_offset_replaces(store):
    n = store.allocate(100).number
    stored(store, n, 10, b"z" * 10, "a")
    stored(store, n, 10, b"z" * 30, "a")
    assert store.block_info(n).keys == {"a": [(10, 30)]}
    stored(store, n, 10, b"z" * 5, "a")
    assert store.block_info(n).keys == {"a": [(10, 5)]}
    assert store.find_key("a").extents == [(10, 5)]


def test_same_key_new_offset_adds_an_extent(store):
    n = store.allocate(100).number
    stored(store, n, 50, b"q" * 10, "a")
    stored(store, n, 0, b"q" * 10, "a")
    assert store.block_info(n).keys == {"a": [(0, 10), (50, 10)]}
    assert store.find_key("a").extents == [(0, 10), (50, 10)]


def test_same_key_overlapping_its_own_other_extent_is_a_conflict(store):
    n = store.allocate(100).number
    stored(store, n, 0, b"r" * 10, "a")
    stored(store, n, 20, b"r" * 10, "a")
    before = state(store)
    with pytest.raises(KeyConflict, match="another extent"):
        store.prepare_write(n, 5, 10, key="a")  # new offset, overlaps a@0
    with pytest.raises(KeyConflict):
        store.prepare_write(n, 0, 25, key="a")  # same offset as a@0, grows into a@20
    assert state(store) == before


def test_a_key_lives_in_one_block_of_the_node(store):
    a = store.allocate(100).number
    b = store.allocate(100).number
    stored(store, a, 0, b"k" * 10, "k")
    before = state(store)
    for force in (False, True):
        with pytest.raises(KeyConflict) as exc:
            store.prepare_write(b, 0, 10, key="k", force=force)
        assert f"block_{a}_{NODE}" in str(exc.value) and exc.value.block_id == f"block_{a}_{NODE}"
    assert state(store) == before
    store.deallocate(a)  # once its block is gone, the key may go elsewhere
    store.prepare_write(b, 0, 10, key="k")
    assert store.commit_write(b, 0, 10, key="k").keys == {"k": [(0, 10)]}
    assert store.holds_key("k", b) and not store.holds_key("k", a)


def test_a_pending_key_also_lives_in_one_block(store):
    a = store.allocate(100).number
    b = store.allocate(100).number
    store.prepare_write(a, 0, 10, key="k")
    assert store.holds_key("k", a)
    with pytest.raises(KeyConflict):
        store.prepare_write(b, 0, 10, key="k")


@pytest.mark.parametrize("key", ["", "a\0b", "x" * 1025, 7])
def test_invalid_keys_are_refused(store, key):
    n = store.allocate(10).number
    before = state(store)
    with pytest.raises(InvalidArgument):
        store.prepare_write(n, 0, 1, key=key)
    assert state(store) == before


def test_commit_marks_the_extent_complete_and_keeps_meta(store):
    n = store.allocate(100).number
    info = store.prepare_write(n, 0, 10, key="a")
    assert info.pending_keys == ["a"] and info.keys == {}
    assert store.list_keys() == {} and store.find_key("a") is None
    info = store.commit_write(n, 0, 10, key="a", meta={"dtype": "<f4", "shape": [2]})
    assert info.pending_keys == [] and info.keys == {"a": [(0, 10)]}
    place = store.find_key("a")
    assert place.block_id == f"block_{n}_{NODE}" and place.meta == {"dtype": "<f4", "shape": [2]}
    stored(store, n, 0, b"0123456789", "a")  # rewritten as plain bytes: the meta goes
    assert store.find_key("a").meta is None


def test_commit_without_a_matching_prepare_raises_key_not_found(store):
    n = store.allocate(100).number
    store.prepare_write(n, 0, 10, key="a")
    before = state(store)
    for offset, length, key in ((0, 9, "a"), (1, 10, "a"), (0, 10, "b")):
        with pytest.raises(KeyNotFound):
            store.commit_write(n, offset, length, key=key)
    assert state(store) == before
    assert store.block_info(n).used == 0


def test_commit_moves_the_high_water_mark_to_the_furthest_end(store):
    n = store.allocate(100).number
    store.prepare_write(n, 40, 20, key="a")
    assert store.block_info(n).used == 0  # prepare alone does not move it
    assert store.commit_write(n, 40, 20, key="a").used == 60
    store.prepare_write(n, 0, 10, key="b")
    assert store.commit_write(n, 0, 10, key="b").used == 60  # never moves back
    assert store.commit_write(n, 90, 10).used == 100


def test_abort_drops_the_pending_extent(store):
    n = store.allocate(100).number
    stored(store, n, 0, b"a" * 10, "a")
    store.prepare_write(n, 20, 10, key="a")
    store.prepare_write(n, 40, 10, key="b")
    store.abort_write(n, 20, key="a")
    store.abort_write(n, 40, key="b")
    info = store.block_info(n)
    assert info.keys == {"a": [(0, 10)]} and info.pending_keys == [] and info.used == 10
    store.prepare_write(n, 20, 30, key="c")  # the aborted ranges are free again
    store.abort_write(n, 0, key="a")  # a complete extent is not dropped by an abort
    assert store.block_info(n).keys["a"] == [(0, 10)]
    store.abort_write(n, 0, key="nobody")
    store.abort_write(12345, 0, key="a")  # unknown block: nothing to do


# -- bytes through a local node --------------------------------------------------------------


def test_local_node_fills_and_drains_the_segment(cluster_id):
    from distributed_grid.memory.io import sinks, sources

    node = LocalNode(NODE, cluster_id)
    try:
        block = node.allocate(1000)
        payload = bytes(range(256)) * 3
        node.fill(block, 100, len(payload), sources.BufferSource(memoryview(payload)))
        got = bytearray()
        node.drain(block, 0, 1000, sinks.CallableSink(got.extend))
        assert bytes(got[100 : 100 + len(payload)]) == payload and bytes(got[:100]) == bytes(100)
        into = bytearray(10)
        node.drain(block, 100, 10, sinks.BufferSink(memoryview(into)))
        assert bytes(into) == payload[:10]
        size, view = node.open_block(block.number)  # a live window over the block, no copy
        assert size == 1000
        node.fill(block, 0, 4, sources.BufferSource(memoryview(b"WXYZ")))
        assert bytes(view[:4]) == b"WXYZ"
        node.deallocate(block.number)
        assert bytes(view[:4]) == b"WXYZ"  # the mapping lives as long as the view
        view.release()
        with pytest.raises(BlockNotFound):
            node.fill(block, 0, 1, sources.BufferSource(memoryview(b"x")))
    finally:
        node.close()


@pytest.mark.parametrize("length", [0, 1, 2**20 - 1, 2**20, 3 * 2**20 + 5])
def test_file_and_buffer_copies_through_the_descriptor_split_across_threads(tmp_path, length):
    from distributed_grid.memory.io import copies, sinks, sources

    data = os.urandom(length)
    (tmp_path / "src").write_bytes(data)
    base = 4096 + 3
    with open(tmp_path / "dst", "w+b") as out:
        fd, size = sources.open_input(str(tmp_path / "src"))
        try:
            copies.fill_fd(out.fileno(), base, size, sources.FileSource(fd, "src", size))
        finally:
            os.close(fd)
        moved = []
        copies.fill_fd(out.fileno(), base + length, length,
                         sources.BufferSource(memoryview(data[::-1])), moved.append)
        assert sum(moved) == length
        out.seek(0)
        assert out.read()[base:] == data + data[::-1]
        piped = bytearray()
        sinks.drain_fd(out.fileno(), base, 2 * length, sinks.CallableSink(piped.extend))
        assert bytes(piped) == data + data[::-1]
        with open(tmp_path / "copy", "wb") as copy:
            sinks.drain_fd(out.fileno(), base, length, sinks.FdSink(copy.fileno()))
    assert (tmp_path / "copy").read_bytes() == data


# -- capacity --------------------------------------------------------------------------------


def test_capacity_edge(stores):
    capacity = 10_000
    store = stores.new(capacity=capacity)
    with pytest.raises(StoreFull) as exc:
        store.allocate(capacity + 1)
    assert str(capacity + 1) in str(exc.value) and str(capacity) in str(exc.value)
    assert store.list_blocks() == []
    info = store.allocate(capacity)
    with pytest.raises(StoreFull):
        store.allocate(1)
    assert store.free_bytes() == 0
    store.deallocate(info.number)
    assert store.free_bytes() == capacity
    small = store.allocate(4000)
    with pytest.raises(StoreFull):
        store.allocate(6001)
    store.allocate(6000)
    assert store.stats().block_bytes == capacity
    assert [i.number for i in store.list_blocks()] == [small.number, small.number + 1]
    assert store.free_bytes(capacity=20_000) == 10_000  # a caller's cap applies per call


def test_allocate_bigger_than_shm_is_store_full(store):
    _, free = seg.shm_capacity()
    with pytest.raises(StoreFull):
        store.allocate(free + 2**30)
    assert store.list_blocks() == []
    assert seg.list_segment_names(store.prefix) == []
    check_consistent(store)


# -- deallocate and destroy ------------------------------------------------------------------


def test_deallocate_unknown_names_the_block_and_node(store):
    store.allocate(10)
    with pytest.raises(BlockNotFound) as exc:
        store.deallocate(7)
    assert f"no block block_7_{NODE} on node {NODE}" in str(exc.value)
    assert (exc.value.block_id, exc.value.node) == (f"block_7_{NODE}", NODE)
    store.deallocate(0)
    with pytest.raises(BlockNotFound):
        store.deallocate(0)  # twice


def test_deallocate_returns_the_info_and_frees_the_segment(store):
    n = store.allocate(10).number
    stored(store, n, 0, b"abcde", "a")
    info = store.deallocate(n)
    assert info.block_id == f"block_{n}_{NODE}" and info.keys == {"a": [(0, 5)]}
    assert seg.list_segment_names(store.prefix) == []
    assert store.find_key("a") is None and store.list_blocks() == []
    assert store.stats().blocks == 0
    check_consistent(store)


def test_destroy_removes_every_segment_and_the_catalog(stores):
    store = stores.new()
    for _ in range(3):
        store.allocate(100)
    store.prepare_write(0, 0, 10, key="a")
    assert os.path.exists(store.catalog.path)
    assert store.destroy() == 3
    assert seg.list_segment_names(store.prefix) == []
    assert not any(e.startswith(f"dgc.{store.cluster_id}.") for e in os.listdir(layout.SHM_DIR))
    assert stores.new().destroy() == 0  # a new, empty catalog


# -- the catalog itself ----------------------------------------------------------------------


def test_catalog_files_are_private(store):
    store.allocate(10)
    for suffix in ("", "-wal", "-shm"):
        assert os.stat(store.catalog.path + suffix).st_mode & 0o777 == 0o600


def test_a_catalog_of_another_schema_version_is_refused_clearly(stores):
    store = stores.new()
    store.allocate(10)
    path = store.catalog.path
    store.close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 6}")
    db.commit()
    db.close()
    before = open(path, "rb").read()
    with pytest.raises(VersionMismatch) as exc:
        BlockStore(NODE, store.cluster_id)
    message = str(exc.value)
    assert f"schema version {SCHEMA_VERSION + 6}" in message
    assert f"reads version {SCHEMA_VERSION}" in message and path in message
    assert "\n" not in message
    assert (exc.value.found, exc.value.expected) == (SCHEMA_VERSION + 6, SCHEMA_VERSION)
    assert open(path, "rb").read() == before  # refused without a change


def test_a_file_that_is_no_catalog_is_refused_clearly(cluster_id):
    from distributed_grid.memory.node.catalog import catalog_path

    path = catalog_path(cluster_id, NODE)
    with open(path, "wb") as f:
        f.write(b"not a database at all" * 100)
    with pytest.raises(VersionMismatch, match="not a database"):
        BlockStore(NODE, cluster_id)


@pytest.mark.parametrize("cluster_id", ["", "a-b", "a.b", "x" * 33, "a b"])
def test_invalid_cluster_id_is_refused(cluster_id):
    with pytest.raises(InvalidArgument):
        BlockStore(NODE, cluster_id)


@pytest.mark.parametrize("node", ["", "-a", ".a", "a/b", "a b", "x" * 65])
def test_invalid_node_name_is_refused(node):
    with pytest.raises(InvalidArgument):
        BlockStore(node, "unusedcluster")


# -- several processes -----------------------------------------------------------------------

WORKER = textwrap.dedent("""
    import sys
    from distributed_grid.memory.node.store import BlockStore
    from distributed_grid.memory.shm import segment as seg

    node, cluster_id, tag, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    store = BlockStore(node, cluster_id)
    print("ready", flush=True)
    i = 0
    while rounds < 0 or i < rounds:
        block = store.allocate(4096 + i % 7)
        key = f"{tag}-{i}"
        store.prepare_write(block.number, 8, 5, key=key)
        with seg.Segment.attach(block.segment) as s, s.data() as view:
            view[8:13] = tag.encode()[:5].ljust(5, b".")
        store.commit_write(block.number, 8, 5, key=key)
        if i % 3 == 2:
            store.deallocate(block.number)
        i += 1
    print("done", flush=True)
""")


def _worker(cluster_id: str, tag: str, rounds: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WORKER, NODE, cluster_id, tag, str(rounds)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_two_processes_change_the_catalog_at_once(stores):
    store = stores.new()
    rounds = 150
    workers = [_worker(store.cluster_id, tag, rounds) for tag in ("alpha", "bravo")]
    try:
        for proc in workers:
            assert proc.stdout.readline().strip() == "done"
            assert proc.wait(timeout=120) == 0
    finally:
        for proc in workers:
            proc.kill()
            proc.wait()
    kept = [i for i in range(rounds) if i % 3 != 2]
    keys = store.list_keys()
    assert sorted(keys) == sorted(f"{t}-{i}" for t in ("alpha", "bravo") for i in kept)
    numbers = [parse_block_id(b)[0] for b in keys.values()]
    assert len(set(numbers)) == len(numbers)  # no number handed out twice
    assert store.catalog.meta("next_number") == 2 * rounds
    for key, block_id in keys.items():
        number = parse_block_id(block_id)[0]
        assert read(store, number, 8, 5) == key.split("-")[0].encode()[:5]
        assert store.find_key(key).extents == [(8, 5)]
    check_consistent(store)


def test_a_client_killed_in_the_middle_of_changes_leaves_the_catalog_consistent(stores):
    store = stores.new()
    spent = 0
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31, 0.37, 0.43, 0.5):
        proc = _worker(store.cluster_id, "kill", -1)  # changes until it is killed
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        check_consistent(store)  # before any repair: every change was whole or absent
        store.reap()  # the killed creator's half-made block, if any, goes
        store.reconcile()
        check_consistent(store)
        assert not [r for r in store.catalog.unsettled_blocks() if r.state == "creating"]
        now = store.catalog.meta("next_number")
        assert now >= spent
        spent = now
        fresh = store.allocate(10)
        assert fresh.number == spent  # numbers go on from where the killed client left them
        store.deallocate(fresh.number)
        spent += 1
    owned = {b.segment for b in store.list_blocks()}
    assert set(seg.list_segment_names(store.prefix)) == owned  # nothing leaked
    for block in store.list_blocks():  # every key that committed reads back
        for extents in block.keys.values():
            assert read(store, block.number, *extents[0]) == b"kill."


# -- a full /dev/shm (a private 16 MiB tmpfs, never the host's) -------------------------------

FULL = textwrap.dedent("""
    import json, os, sqlite3, sys
    from distributed_grid.errors import StoreFull
    from distributed_grid.memory.shm import segment as seg
    from distributed_grid.memory.node.store import BlockStore

    store = BlockStore("n1", "fulltest")
    sizes, refused = [], []
    while len(refused) < 3:  # 1 MiB blocks until the tmpfs says no, then 1-byte ones
        size = 2**20 if not refused else 1
        before = (store.list_blocks(), sorted(seg.list_segment_names(store.prefix)))
        try:
            sizes.append(store.allocate(size).size)
        except StoreFull as exc:
            refused.append(str(exc))
            after = (store.list_blocks(), sorted(seg.list_segment_names(store.prefix)))
            assert after == before, (exc, before, after)
    db = sqlite3.connect(store.catalog.path)
    assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    for block in store.list_blocks()[:2]:
        store.deallocate(block.number)
    again = store.allocate(2**20)  # freed megabytes are usable again
    print(json.dumps({"megabytes": sizes.count(2**20), "refused": refused,
                      "again": again.block_id}))
""")


@needs_small_shm
def test_a_full_shared_memory_is_store_full_and_changes_nothing():
    result = run_on_small_shm(FULL, timeout=120)
    assert result.returncode == 0, result.stderr
    done = json.loads(result.stdout)
    assert 12 <= done["megabytes"] <= 15  # 16 MiB, less the catalog and the headers
    for line in done["refused"]:  # one line each, saying what is short
        assert "\n" not in line and ("bytes" in line or "cannot grow" in line), line
    assert done["again"].startswith("block_")
