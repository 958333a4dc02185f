"""BlockStore used directly, without Ray: numbering, journal adoption, key rules, capacity."""

from __future__ import annotations

import json
import os
import re
import secrets
import uuid

import pytest

from distributed_grid.errors import (
    BlockNotFound,
    InvalidArgument,
    KeyConflict,
    KeyNotFound,
    OutOfBounds,
    StoreFull,
)
from distributed_grid.memory import segment as seg
from distributed_grid.memory.block_id import parse_block_id
from distributed_grid.memory.store import BlockStore

NODE = "n1"


def _sweep(cluster_id: str) -> list[str]:
    """Remove every file of ``cluster_id`` from /dev/shm; return what was there."""
    left = [
        e
        for e in os.listdir(seg.SHM_DIR)
        if e.startswith(f"dg.{cluster_id}.") or e.startswith(f"dgj.{cluster_id}.")
    ]
    for entry in left:
        try:
            os.unlink(os.path.join(seg.SHM_DIR, entry))
        except FileNotFoundError:
            pass
    return left


@pytest.fixture
def cluster_id(request):
    cid = f"t{os.getpid()}{uuid.uuid4().hex[:8]}"
    assert re.fullmatch(r"[A-Za-z0-9]{1,32}", cid)
    request.addfinalizer(lambda: _sweep(cid))
    return cid


@pytest.fixture
def stores(cluster_id, request):
    """``stores.new(node=..., capacity=...)`` makes a BlockStore of this test's cluster.

    Every store made is destroyed afterwards, and anything of the cluster still in /dev/shm is
    unlinked, even when the test failed.
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
        for store in reversed(made.made):
            try:
                store.destroy()
            except Exception:
                pass
        _sweep(cluster_id)

    request.addfinalizer(finish)
    return made


@pytest.fixture
def store(stores):
    return stores.new()


def journal(store: BlockStore) -> bytes:
    with open(store.journal_path, "rb") as f:
        return f.read()


def read(store: BlockStore, number: int, offset: int, length: int) -> bytes:
    view = store.read_view(number, offset, length)
    try:
        return bytes(view)
    finally:
        view.release()


def number_of(info: dict) -> int:
    return info["number"]


# -- allocation and numbering ----------------------------------------------------------------


def test_allocate_returns_block_ids_with_growing_numbers(store):
    infos = [store.allocate(100 + i) for i in range(4)]
    ids = [i["block_id"] for i in infos]
    assert ids == [f"block_{n}_{NODE}" for n in range(4)]
    for n, info in enumerate(infos):
        assert parse_block_id(info["block_id"]) == (n, NODE)
        assert info["number"] == n
        assert info["size"] == 100 + n
        assert info["used"] == 0
        assert info["status"] == "ok"
        assert info["keys"] == {}
        assert info["segment"] == f"/dg.{store.cluster_id}.{NODE}.{n}"
        assert os.path.exists(os.path.join(seg.SHM_DIR, info["segment"].lstrip("/")))
        with seg.Segment.attach(info["segment"]) as s:
            assert s.size == 100 + n
            assert s.token.hex() == info["token"]


@pytest.mark.parametrize("size", [0, -1, 1.5, True, "10"])
def test_allocate_refuses_a_size_that_is_not_a_positive_int(store, size):
    with pytest.raises(InvalidArgument):
        store.allocate(size)
    assert store.list_blocks() == []
    assert store.allocate(1)["number"] == 0


def test_numbers_are_never_reused_after_deallocate(store):
    a = store.allocate(10)
    b = store.allocate(10)
    store.deallocate(b["number"])
    store.deallocate(a["number"])
    c = store.allocate(10)
    assert c["number"] == 2
    assert c["block_id"] == f"block_2_{NODE}"
    assert not os.path.exists(os.path.join(seg.SHM_DIR, b["segment"].lstrip("/")))


def test_numbers_are_never_reused_by_a_new_store(stores):
    first = stores.new()
    for _ in range(3):
        first.allocate(10)
    first.deallocate(2)  # the highest number is gone, yet it stays spent
    second = stores.new()
    assert second.allocate(10)["number"] == 3
    third = stores.new()
    assert third.allocate(10)["number"] == 4


def test_new_store_adopts_blocks_keys_and_bytes(stores):
    first = stores.new()
    a = number_of(first.allocate(64))
    b = number_of(first.allocate(32))
    first.prepare_write(a, 0, 5, key="alpha")
    first.write_bytes(a, 0, b"hello")
    first.commit_write(a, 0, 5, key="alpha")
    first.prepare_write(a, 10, 3, key="beta")
    first.write_bytes(a, 10, b"xyz")
    first.commit_write(a, 10, 3, key="beta")
    first.prepare_write(a, 20, 4, key="alpha")
    first.write_bytes(a, 20, b"more")
    first.commit_write(a, 20, 4, key="alpha")
    first.write_bytes(b, 0, b"raw bytes")
    first.commit_write(b, 0, 9)
    before = first.list_blocks()
    keys_before = first.list_keys()

    second = stores.new()
    assert second.list_blocks() == before
    assert second.list_keys() == keys_before == {
        "alpha": f"block_{a}_{NODE}",
        "beta": f"block_{a}_{NODE}",
    }
    assert second.find_key("alpha")["extents"] == [[0, 5], [20, 4]]
    assert read(second, a, 0, 5) == b"hello"
    assert read(second, a, 10, 3) == b"xyz"
    assert read(second, a, 20, 4) == b"more"
    assert read(second, b, 0, 9) == b"raw bytes"
    assert second.info(a)["used"] == 24
    assert second.info(b)["used"] == 9
    # the adopted store keeps enforcing the key rules it inherited
    with pytest.raises(KeyConflict):
        second.prepare_write(a, 2, 2, key="gamma")
    with pytest.raises(KeyConflict):
        second.prepare_write(b, 0, 1, key="beta")


def test_adoption_unlinks_orphan_segments_of_the_store(stores):
    first = stores.new()
    kept = first.allocate(10)
    orphan = seg.Segment.create(f"{first.prefix}{first.next_number}", 10, secrets.token_bytes(16))
    orphan.close()
    far = seg.Segment.create(f"{first.prefix}999", 10, secrets.token_bytes(16))
    far.close()
    assert len(seg.list_segment_names(first.prefix)) == 3

    second = stores.new()
    assert seg.list_segment_names(second.prefix) == [kept["segment"]]
    assert second.list_blocks()[0]["status"] == "ok"
    # the orphan's number stays spent (it was journaled before its segment was created)
    assert second.allocate(10)["number"] == 1


def test_adoption_leaves_segments_of_other_nodes_alone(stores):
    mine = stores.new(node="n1")
    other = stores.new(node="n1.5")  # its segments start with n1's prefix
    other_block = other.allocate(10)
    assert other_block["segment"].startswith(mine.prefix)
    stores.new(node="n1")  # adopt n1 again
    assert os.path.exists(os.path.join(seg.SHM_DIR, other_block["segment"].lstrip("/")))
    assert stores.new(node="n1.5").list_blocks()[0]["status"] == "ok"


def test_block_whose_segment_vanished_is_missing(stores):
    first = stores.new()
    lost = first.allocate(10)
    kept = first.allocate(10)
    assert seg.unlink_segment(lost["segment"])

    second = stores.new()
    statuses = {i["number"]: i["status"] for i in second.list_blocks()}
    assert statuses == {lost["number"]: "missing", kept["number"]: "ok"}
    assert second.info(lost["number"])["status"] == "missing"
    with pytest.raises(BlockNotFound) as info:
        second.block_info(lost["number"])
    assert lost["segment"] in str(info.value)
    with pytest.raises(BlockNotFound):
        second.read_view(lost["number"], 0, 1)
    with pytest.raises(BlockNotFound):
        second.prepare_write(lost["number"], 0, 1, key="k")
    assert second.used_bytes() == 10
    assert second.stats()["blocks"] == 1
    # a missing block can still be deallocated, and its number is not reused
    assert second.deallocate(lost["number"])["status"] == "missing"
    assert [i["number"] for i in second.list_blocks()] == [kept["number"]]
    assert second.allocate(10)["number"] == 2


# -- write rules -----------------------------------------------------------------------------


def test_write_past_the_end_is_out_of_bounds_and_changes_nothing(store):
    n = number_of(store.allocate(100))
    store.prepare_write(n, 0, 10, key="a")
    store.commit_write(n, 0, 10, key="a")
    info, saved = store.info(n), journal(store)
    with pytest.raises(OutOfBounds) as exc:
        store.prepare_write(n, 95, 10, key="b")
    message = str(exc.value)
    for number in ("10", "95", "100", "5"):  # asked, where, block size, what fits
        assert re.search(rf"\b{number}\b", message), message
    assert f"block_{n}_{NODE}" in message
    assert store.info(n) == info
    assert journal(store) == saved
    with pytest.raises(OutOfBounds):
        store.prepare_write(n, 101, 0, key="b")
    with pytest.raises(OutOfBounds):
        store.prepare_write(n, -1, 1, key="b")
    with pytest.raises(OutOfBounds):
        store.prepare_write(n, 0, -1, key="b")
    assert store.info(n) == info
    assert journal(store) == saved
    # the exact edge fits
    store.prepare_write(n, 90, 10, key="b")
    store.commit_write(n, 90, 10, key="b")
    assert store.info(n)["keys"]["b"] == [[90, 10]]


def test_write_onto_another_keys_bytes_is_a_conflict_and_changes_nothing(store):
    n = number_of(store.allocate(100))
    store.prepare_write(n, 10, 10, key="a")
    store.commit_write(n, 10, 10, key="a")
    info, saved = store.info(n), journal(store)
    for offset, length in ((5, 6), (19, 5), (12, 2), (0, 100), (10, 10)):
        with pytest.raises(KeyConflict) as exc:
            store.prepare_write(n, offset, length, key="b")
        assert "'a'" in str(exc.value)
        assert "10..20" in str(exc.value)
    with pytest.raises(KeyConflict):
        store.prepare_write(n, 15, 1)  # a write without a key may not clobber a key either
    assert store.info(n) == info
    assert journal(store) == saved
    # touching ends do not overlap
    store.prepare_write(n, 0, 10, key="b")
    store.prepare_write(n, 20, 5, key="c")
    assert store.info(n)["pending_keys"] == ["b", "c"]


def test_pending_extents_are_owned_too(store):
    n = number_of(store.allocate(100))
    store.prepare_write(n, 0, 10, key="a")  # not committed
    with pytest.raises(KeyConflict):
        store.prepare_write(n, 5, 1, key="b")


def test_force_drops_the_overlapped_extent_of_the_other_key(store):
    n = number_of(store.allocate(100))
    for key, offset in (("a", 0), ("a", 50), ("b", 20)):
        store.prepare_write(n, offset, 10, key=key)
        store.commit_write(n, offset, 10, key=key)
    info = store.prepare_write(n, 5, 20, key="c", force=True)  # hits a@0 and b@20
    assert info["pending_keys"] == ["c"]
    assert "b" not in info["keys"]
    assert info["keys"]["a"] == [[50, 10]]  # only the overlapped extent of a is dropped
    info = store.commit_write(n, 5, 20, key="c")
    assert info["keys"] == {"a": [[50, 10]], "c": [[5, 20]]}
    assert store.list_keys() == {"a": f"block_{n}_{NODE}", "c": f"block_{n}_{NODE}"}
    assert store.find_key("b") is None


def test_same_key_same_offset_replaces(store):
    n = number_of(store.allocate(100))
    store.prepare_write(n, 10, 10, key="a")
    store.commit_write(n, 10, 10, key="a")
    store.prepare_write(n, 10, 30, key="a")
    info = store.commit_write(n, 10, 30, key="a")
    assert info["keys"] == {"a": [[10, 30]]}
    store.prepare_write(n, 10, 5, key="a")
    info = store.commit_write(n, 10, 5, key="a")
    assert info["keys"] == {"a": [[10, 5]]}
    assert store.find_key("a")["extents"] == [[10, 5]]


def test_same_key_new_offset_adds_an_extent(store):
    n = number_of(store.allocate(100))
    store.prepare_write(n, 50, 10, key="a")
    store.commit_write(n, 50, 10, key="a")
    store.prepare_write(n, 0, 10, key="a")
    info = store.commit_write(n, 0, 10, key="a")
    assert info["keys"] == {"a": [[0, 10], [50, 10]]}
    assert store.find_key("a")["extents"] == [[0, 10], [50, 10]]


def test_same_key_overlapping_its_own_other_extent_is_a_conflict(store):
    n = number_of(store.allocate(100))
    store.prepare_write(n, 0, 10, key="a")
    store.commit_write(n, 0, 10, key="a")
    store.prepare_write(n, 20, 10, key="a")
    store.commit_write(n, 20, 10, key="a")
    info, saved = store.info(n), journal(store)
    with pytest.raises(KeyConflict) as exc:
        store.prepare_write(n, 5, 10, key="a")  # new offset, overlaps a@0
    assert "another extent" in str(exc.value)
    with pytest.raises(KeyConflict):
        store.prepare_write(n, 0, 25, key="a")  # same offset as a@0, grows into a@20
    assert store.info(n) == info
    assert journal(store) == saved


def test_a_key_lives_in_one_block(store):
    a = number_of(store.allocate(100))
    b = number_of(store.allocate(100))
    store.prepare_write(a, 0, 10, key="k")
    store.commit_write(a, 0, 10, key="k")
    info_b, saved = store.info(b), journal(store)
    for force in (False, True):
        with pytest.raises(KeyConflict) as exc:
            store.prepare_write(b, 0, 10, key="k", force=force)
        assert f"block_{a}_{NODE}" in str(exc.value)
    assert store.info(b) == info_b
    assert journal(store) == saved
    store.deallocate(a)  # once its block is gone, the key may go elsewhere
    store.prepare_write(b, 0, 10, key="k")
    assert store.commit_write(b, 0, 10, key="k")["keys"] == {"k": [[0, 10]]}


def test_a_pending_key_also_lives_in_one_block(store):
    a = number_of(store.allocate(100))
    b = number_of(store.allocate(100))
    store.prepare_write(a, 0, 10, key="k")
    with pytest.raises(KeyConflict):
        store.prepare_write(b, 0, 10, key="k")


@pytest.mark.parametrize("key", ["", "a\0b", "x" * 1025, 7])
def test_invalid_keys_are_refused(store, key):
    n = number_of(store.allocate(10))
    saved = journal(store)
    with pytest.raises(InvalidArgument):
        store.prepare_write(n, 0, 1, key=key)
    assert journal(store) == saved


def test_commit_marks_the_extent_complete(store):
    n = number_of(store.allocate(100))
    info = store.prepare_write(n, 0, 10, key="a")
    assert info["pending_keys"] == ["a"]
    assert info["keys"]["a"] == []
    assert store.list_keys() == {}
    assert store.find_key("a") is None
    info = store.commit_write(n, 0, 10, key="a")
    assert info["pending_keys"] == []
    assert info["keys"] == {"a": [[0, 10]]}
    assert store.find_key("a")["block_id"] == f"block_{n}_{NODE}"


def test_commit_without_a_matching_prepare_raises_key_not_found(store):
    n = number_of(store.allocate(100))
    store.prepare_write(n, 0, 10, key="a")
    saved = journal(store)
    with pytest.raises(KeyNotFound):
        store.commit_write(n, 0, 9, key="a")
    with pytest.raises(KeyNotFound):
        store.commit_write(n, 1, 10, key="a")
    with pytest.raises(KeyNotFound):
        store.commit_write(n, 0, 10, key="b")
    assert journal(store) == saved
    assert store.info(n)["used"] == 0


def test_commit_moves_the_high_water_mark_to_the_furthest_end(store):
    n = number_of(store.allocate(100))
    assert store.info(n)["used"] == 0
    store.prepare_write(n, 40, 20, key="a")
    assert store.info(n)["used"] == 0  # prepare alone does not move it
    assert store.commit_write(n, 40, 20, key="a")["used"] == 60
    store.prepare_write(n, 0, 10, key="b")
    assert store.commit_write(n, 0, 10, key="b")["used"] == 60  # never moves back
    assert store.commit_write(n, 90, 10)["used"] == 100
    assert store.info(n)["used"] == 100


def test_abort_drops_the_pending_extent(store):
    n = number_of(store.allocate(100))
    store.prepare_write(n, 0, 10, key="a")
    store.commit_write(n, 0, 10, key="a")
    store.prepare_write(n, 20, 10, key="a")
    store.prepare_write(n, 40, 10, key="b")
    store.abort_write(n, 20, key="a")
    store.abort_write(n, 40, key="b")
    info = store.info(n)
    assert info["keys"] == {"a": [[0, 10]]}
    assert info["pending_keys"] == []
    assert info["used"] == 10  # aborted writes do not move the high-water mark
    store.prepare_write(n, 20, 30, key="c")  # the aborted ranges are free again
    store.abort_write(n, 0, key="a")  # a complete extent is not dropped by an abort
    assert store.info(n)["keys"]["a"] == [[0, 10]]
    store.abort_write(n, 0, key="nobody")
    store.abort_write(12345, 0, key="a")  # unknown block: nothing to do


def test_write_bytes_and_read_view_round_trip(store):
    n = number_of(store.allocate(1000))
    payload = bytes(range(256)) * 3
    assert store.write_bytes(n, 100, payload) == len(payload)
    assert read(store, n, 100, len(payload)) == payload
    assert read(store, n, 0, 100) == bytes(100)
    assert store.write_bytes(n, 0, bytearray(b"ab")) == 2
    assert store.write_bytes(n, 2, memoryview(b"cd")) == 2
    assert read(store, n, 0, 4) == b"abcd"
    assert read(store, n, 1000, 0) == b""
    with seg.Segment.attach(store.info(n)["segment"]) as s:  # the bytes are in the segment
        v = s.data()
        assert bytes(v[100 : 100 + len(payload)]) == payload
        v.release()
    # a view is a live window, not a copy
    view = store.read_view(n, 0, 4)
    store.write_bytes(n, 0, b"WXYZ")
    assert bytes(view) == b"WXYZ"
    view.release()


def test_write_bytes_and_read_view_check_bounds(store):
    n = number_of(store.allocate(10))
    with pytest.raises(OutOfBounds):
        store.write_bytes(n, 8, b"abc")
    with pytest.raises(OutOfBounds):
        store.read_view(n, 5, 6)
    with pytest.raises(OutOfBounds):
        store.read_view(n, -1, 1)
    assert read(store, n, 0, 10) == bytes(10)


def test_write_bytes_accepts_multibyte_buffers(store):
    import array

    n = number_of(store.allocate(16))
    data = array.array("i", [1, 2, 3, 4])
    assert store.write_bytes(n, 0, data) == 16
    assert read(store, n, 0, 16) == data.tobytes()


# -- capacity --------------------------------------------------------------------------------


def test_capacity_edge(stores):
    capacity = 10_000
    store = stores.new(capacity=capacity)
    with pytest.raises(StoreFull) as exc:
        store.allocate(capacity + 1)
    assert str(capacity + 1) in str(exc.value)
    assert str(capacity) in str(exc.value)
    assert store.list_blocks() == []
    info = store.allocate(capacity)
    assert info["size"] == capacity
    with pytest.raises(StoreFull):
        store.allocate(1)
    assert store.free_bytes() == 0
    store.deallocate(info["number"])
    assert store.free_bytes() == capacity
    small = store.allocate(4000)
    with pytest.raises(StoreFull):
        store.allocate(6001)
    store.allocate(6000)
    assert store.used_bytes() == capacity
    assert [i["number"] for i in store.list_blocks()] == [small["number"], small["number"] + 1]


def test_allocate_bigger_than_shm_is_store_full(store):
    total, free = seg.shm_capacity()
    with pytest.raises(StoreFull):
        store.allocate(free + 2**30)
    assert store.list_blocks() == []
    assert seg.list_segment_names(store.prefix) == []


# -- deallocate and destroy ------------------------------------------------------------------


def test_deallocate_unknown_number_lists_the_existing_ids(store):
    with pytest.raises(BlockNotFound) as exc:
        store.deallocate(0)
    assert "no blocks" in str(exc.value)
    store.allocate(10)
    store.allocate(10)
    store.allocate(10)
    store.deallocate(1)
    with pytest.raises(BlockNotFound) as exc:
        store.deallocate(7)
    message = str(exc.value)
    assert f"block_7_{NODE}" in message
    assert f"block_0_{NODE}" in message
    assert f"block_2_{NODE}" in message
    assert f"block_1_{NODE}" not in message
    with pytest.raises(BlockNotFound):
        store.deallocate(1)  # twice


def test_deallocate_returns_the_info_and_frees_the_segment(store):
    n = number_of(store.allocate(10))
    store.prepare_write(n, 0, 5, key="a")
    store.commit_write(n, 0, 5, key="a")
    info = store.deallocate(n)
    assert info["block_id"] == f"block_{n}_{NODE}"
    assert info["keys"] == {"a": [[0, 5]]}
    assert seg.list_segment_names(store.prefix) == []
    assert store.find_key("a") is None
    assert store.list_blocks() == []
    with pytest.raises(BlockNotFound):
        store.read_view(n, 0, 1)


def test_deallocate_with_a_live_view_still_frees(store):
    n = number_of(store.allocate(10))
    store.write_bytes(n, 0, b"0123456789")
    view = store.read_view(n, 0, 10)
    store.deallocate(n)
    assert bytes(view) == b"0123456789"  # the mapping lives as long as the view
    view.release()
    assert seg.list_segment_names(store.prefix) == []


def test_destroy_removes_every_segment_and_the_journal(stores):
    store = stores.new()
    for _ in range(3):
        store.allocate(100)
    store.prepare_write(0, 0, 10, key="a")
    assert os.path.exists(store.journal_path)
    assert len(seg.list_segment_names(store.prefix)) == 3
    assert store.destroy() == 3
    assert seg.list_segment_names(store.prefix) == []
    assert not os.path.exists(store.journal_path)
    leftovers = [
        e for e in os.listdir(seg.SHM_DIR) if e.startswith(f"dgj.{store.cluster_id}.")
    ]
    assert leftovers == []
    assert store.destroy() == 0  # twice is fine


def test_journal_is_private_json(store):
    store.allocate(10)
    assert os.stat(store.journal_path).st_mode & 0o777 == 0o600
    with open(store.journal_path, encoding="utf-8") as f:
        state = json.load(f)
    assert state["node"] == NODE
    assert state["cluster_id"] == store.cluster_id
    assert state["next_number"] == 1
    assert [b["number"] for b in state["blocks"]] == [0]


@pytest.mark.parametrize("cluster_id", ["", "a-b", "a.b", "x" * 33, "a b"])
def test_invalid_cluster_id_is_refused(cluster_id):
    with pytest.raises(InvalidArgument):
        BlockStore(NODE, cluster_id)


@pytest.mark.parametrize("node", ["", "-a", ".a", "a/b", "a b", "x" * 65])
def test_invalid_node_name_is_refused(node):
    with pytest.raises(InvalidArgument):
        BlockStore(node, "unusedcluster")
