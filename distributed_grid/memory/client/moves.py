"""Blocks moved between their node's memory and its spill folder at a caller's word.

A node with a spill folder moves cold blocks itself (``memory/node/room/spill_policy.py``);
these are the explicit verbs, for a caller who knows better: spill a block now to make room for a
job, restore one now so the job finds it in memory. The target is a block id or a key, which the key
directory names the block of without touching its bytes (a find would restore it).
"""

from __future__ import annotations

from distributed_grid.memory.client.keys import KeyIndex
from distributed_grid.memory.client.router import Router
from distributed_grid.memory.io import copies
from distributed_grid.records import BlockInfo


class Moves:
    """Spills and restores of one pool's blocks.

    Args:
        router: the pool's nodes.
        keys: the cluster's keys.
    """

    def __init__(self, router: Router, keys: KeyIndex) -> None:
        self.router = router
        self.keys = keys

    def spill(self, target: str, progress: copies.Progress | None = None) -> BlockInfo:
        """Write a block (``target``: its id, or a key it holds) to its node's spill folder
        and free its memory now, to make room for a job; it comes back when used (or with
        :meth:`restore`). A replicated block is spilled on every node holding a copy; a key in
        a slab spills the slab, all its small values. Returns the block's facts.

        Raises:
            KeyNotFound, BlockNotFound: no such key or block.
            InvalidArgument: its node has no spill folder, or the block is pinned by a view,
                or being written.
            StoreFull: the spill folder's quota has no room for it, or the disk refused.
        """
        number, node = self.router.block_node(self.keys.block_of(target))
        return node.spill(number, progress or copies.no_progress)

    def restore(self, target: str, progress: copies.Progress | None = None) -> BlockInfo:
        """Bring a spilled block (``target``: its id, or a key it holds) back into its node's
        shared memory now, before a job needs it (spilling colder blocks if the node needs
        the room). Returns the block's facts.

        Raises:
            KeyNotFound, BlockNotFound: no such key or block, or its spill file is lost.
            StoreFull: the node has no room for it.
        """
        number, node = self.router.block_node(self.keys.block_of(target))
        return node.restore_block(number, progress or copies.no_progress)
