"""A node whose catalog is on this host, reached with no round trip.

:class:`LocalNode` is the node's :class:`~distributed_grid.memory.store.BlockStore`, run in this
process over the node's catalog: metadata changes are catalog transactions; bulk copies go
through the segments' descriptors, and a view maps the block's segment.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed_grid.errors import BlockNotFound
from distributed_grid.memory import segment as seg
from distributed_grid.memory import transfer
from distributed_grid.memory.records import BlockInfo
from distributed_grid.memory.store import BlockStore


class LocalNode(BlockStore):
    """A node of this host: its store in this process, and zero-copy access to its blocks.

    Args:
        node: the node's name.
        cluster_id: the cluster's identity.
    """

    is_local = True

    @contextmanager
    def _descriptor(self, block: BlockInfo) -> Iterator[int]:
        try:
            fd = seg.open_data(block.segment, bytes.fromhex(block.token), block.size)
        except seg.SegmentNotFound as exc:
            raise BlockNotFound(f"the shared memory of {block.block_id} is gone",
                                block_id=block.block_id, node=self.node) from exc
        try:
            yield fd
        finally:
            os.close(fd)

    def fill(self, block: BlockInfo, offset: int, length: int, source: transfer.Source,
             progress: transfer.Progress = transfer.no_progress) -> None:
        """Copy ``length`` bytes from ``source`` into the block at ``offset``."""
        with self._descriptor(block) as fd:
            transfer.fill_fd(fd, seg.HEADER_SIZE + offset, length, source, progress)

    def drain(self, block: BlockInfo, offset: int, length: int, sink: transfer.Sink,
              progress: transfer.Progress = transfer.no_progress) -> None:
        """Hand ``length`` bytes of the block from ``offset`` to ``sink``, in order."""
        with self._descriptor(block) as fd:
            transfer.drain_fd(fd, seg.HEADER_SIZE + offset, length, sink, progress)

    def open_block(self, number: int) -> tuple[int, memoryview]:
        """A block's size and a writable memoryview of its bytes over a mapping of its own.

        The memory stays valid while the view (or an array over it) lives, even if the block
        is deallocated meanwhile, and goes with it. One catalog query and one attach: this is
        what opening a zero-copy view costs.
        """
        place = self.catalog.place_of(number)
        if place is None or place[3] != "ok":
            self._row(number)  # raises the right BlockNotFound
        size, name, token, _ = place  # type: ignore[misc]
        try:
            return size, seg.map_data(name, bytes.fromhex(token), size)
        except seg.SegmentNotFound as exc:
            raise BlockNotFound(f"the shared memory of {self.block_id(number)} is gone",
                                block_id=self.block_id(number), node=self.node) from exc

