"""Zero-copy views reuse the mappings a process keeps: a block viewed again is not mapped again,
the kept mappings are bounded, and those of freed blocks are closed (a view over one stays
valid). Real catalogs and segments, no Ray."""

from __future__ import annotations

import ctypes

import pytest

from distributed_grid.memory.node.local_node import LocalNode
from distributed_grid.memory.node.views import VIEW_MAPPINGS


@pytest.fixture
def nodes(cluster_id, request):
    made: list[LocalNode] = []

    def new() -> LocalNode:
        node = LocalNode("n1", cluster_id)
        made.append(node)
        return node

    request.addfinalizer(lambda: [n.close() for n in made])
    return new


def test_a_block_viewed_again_reuses_the_kept_mapping(nodes):
    node = nodes()
    block = node.allocate(3 * 4096)
    _, first = node.open_block(block.number)
    first[:5] = b"hello"
    _, second = node.open_block(block.number)
    assert _address(second) == _address(first)  # one mapping: pages faulted once stay mapped
    assert bytes(second[:5]) == b"hello"
    assert node.kept_views() == [block.segment]
    _, own = node.open_block(block.number, populate=True)  # populate maps a fresh one
    assert _address(own) != _address(first) and bytes(own[:5]) == b"hello"


def test_kept_view_mappings_are_bounded(nodes):
    node = nodes()
    blocks = [node.allocate(4096) for _ in range(VIEW_MAPPINGS + 4)]
    views = [node.open_block(b.number)[1] for b in blocks]
    assert len(node.kept_views()) == VIEW_MAPPINGS
    assert node.kept_views() == [b.segment for b in blocks[-VIEW_MAPPINGS:]]
    for i, view in enumerate(views):  # evicted ones stay valid while their view lives
        view[0] = i
    assert [v[0] for v in views] == list(range(len(views)))


def test_freeing_a_block_closes_its_kept_mapping_and_a_live_view_stays_valid(nodes):
    node = nodes()
    block = node.allocate(4096)
    _, view = node.open_block(block.number)
    view[:3] = b"abc"
    node.deallocate(block.number)
    assert node.kept_views() == []  # this process freed it: its mapping goes at once
    assert bytes(view[:3]) == b"abc"  # the memory lives while the view does


def test_a_block_freed_by_another_process_loses_its_kept_mapping(nodes):
    node, other = nodes(), nodes()  # two processes' stores of one node
    block = node.allocate(4096)
    node.open_block(block.number)
    other.deallocate(block.number)
    assert node.kept_views() == [block.segment]
    node._views.drop_stale()  # what the watcher thread runs every WATCH_SECONDS
    assert node.kept_views() == []


def test_a_kept_mapping_is_handed_out_only_while_its_header_holds_the_blocks_token(nodes):
    import os

    from distributed_grid.errors import BlockNotFound
    from distributed_grid.memory.shm import layout

    node = nodes()
    block = node.allocate(4096)
    node.open_block(block.number)  # kept
    path = os.path.join(layout.SHM_DIR, block.segment.lstrip("/"))
    fd = os.open(path, os.O_RDWR)
    try:
        token = os.pread(fd, layout.TOKEN_SIZE, 24)
        os.pwrite(fd, bytes(b ^ 0xFF for b in token), 24)  # another block's memory, say
        with pytest.raises(BlockNotFound, match="shared memory"):
            node.open_block(block.number)
        os.pwrite(fd, token, 24)
    finally:
        os.close(fd)
    assert node.open_block(block.number)[0] == 4096


def _address(view: memoryview) -> int:
    """Where a view's bytes are in this process (each view is a pinning array of its own)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(view))
