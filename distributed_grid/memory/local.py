"""A node whose catalog is on this host, reached with no round trip.

:class:`LocalNode` is the node's :class:`~distributed_grid.memory.store.BlockStore`, run in this
process over the node's catalog, plus this process's mappings of the node's segments: metadata
changes are catalog transactions, and bytes are copied straight into and out of the mappings.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from distributed_grid.errors import BlockNotFound
from distributed_grid.memory import transfer
from distributed_grid.memory.mappings import Mappings
from distributed_grid.memory.records import BlockInfo
from distributed_grid.memory.store import BlockStore


class LocalNode(BlockStore):
    """A node of this host: its store in this process, and zero-copy access to its blocks.

    Args:
        node: the node's name.
        cluster_id: the cluster's identity.
        mappings: this process's kept mappings (shared by the pool's local nodes).
    """

    is_local = True

    def __init__(self, node: str, cluster_id: str, mappings: Mappings) -> None:
        super().__init__(node, cluster_id)
        self.mappings = mappings

    @contextmanager
    def _mapped(self, block: BlockInfo) -> Iterator[memoryview]:
        with self.mappings.mapped(block) as segment:
            if segment is None:
                raise BlockNotFound(f"the shared memory of {block.block_id} is gone",
                                    block_id=block.block_id, node=self.node)
            with segment.data() as data:
                yield data

    def fill(self, block: BlockInfo, offset: int, length: int, source: transfer.Source,
             progress: transfer.Progress = transfer.no_progress) -> None:
        """Copy ``length`` bytes from ``source`` into the block at ``offset``."""
        with self._mapped(block) as data:
            transfer.fill(data[offset : offset + length], source, progress)

    def drain(self, block: BlockInfo, offset: int, length: int, sink: transfer.Sink,
              progress: transfer.Progress = transfer.no_progress) -> None:
        """Hand ``length`` bytes of the block from ``offset`` to ``sink``, in order."""
        with self._mapped(block) as data:
            transfer.drain(data[offset : offset + length], sink, progress)

    def open_block(self, number: int) -> tuple[int, memoryview]:
        """A block's size and a writable memoryview of its bytes over a mapping of its own.

        The memory stays valid while the view (or an array over it) lives, even if the block
        is deallocated meanwhile, and goes with it. One catalog query and one attach: this is
        what opening a zero-copy view costs.
        """
        row = self._row(number)
        segment = self.mappings.attach_row(row.segment, row.token, row.size)
        if segment is None:
            raise BlockNotFound(f"the shared memory of {self.block_id(number)} is gone",
                                block_id=self.block_id(number), node=self.node)
        return row.size, segment.data()

    def deallocate(self, number: int) -> BlockInfo:
        info = super().deallocate(number)
        self.mappings.drop_stale()  # our kept mapping of it, if any, goes now
        return info
