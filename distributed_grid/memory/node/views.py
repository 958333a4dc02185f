"""Zero-copy views of a node's blocks from a process of its host, each pinning its block.

A view maps the block's segment (through the mappings this process keeps, ``VIEW_MAPPINGS``, or
one of its own with every page mapped at once). On a node with a spill folder, while it, or
anything made over it (a numpy array, a slice, a tensor), lives, the block is pinned
(:mod:`distributed_grid.memory.shm.pins`): the node never spills it. A spilled block is restored
before its view is made. A node with no spill folder moves no block: its views pin nothing and
cost what they did before pins (1 µs for a view of a block viewed before).

The order that keeps a spill from taking a block a view is being made of: the view pins the
block, then reads the block's moving word in its header (the spiller sets it first, then looks
at the pins); if a spill began, the view lets go, the block is restored once on disk, and the
view is made again (a block spilled and restored has a new token: no old mapping passes).
"""

from __future__ import annotations

from distributed_grid.errors import BlockNotFound
from distributed_grid.memory.node.core import Place
from distributed_grid.memory.node.store import BlockStore
from distributed_grid.memory.shm import segment as seg
from distributed_grid.memory.shm.mappings import Mappings
from distributed_grid.memory.shm.pins import PinnedViews
from distributed_grid.records import BlockInfo

# A zero-copy view (``open_block``: ``view``, ``get``) maps its block through mappings this
# process keeps (the last VIEW_MAPPINGS blocks viewed): a block viewed again takes no new mapping
# and no page fault for pages touched before (a second get + touch of 1 GiB cost 98 ms with a new
# mapping, against 5 ms for Plasma, which keeps its store mapped). A kept mapping costs no memory
# of its own (its pages are the block's); one of a freed block is closed by the next deallocate
# or delete of this process, or within ``mappings.WATCH_SECONDS``, and a view over it stays valid.
VIEW_MAPPINGS = 16
PIN_TRIES = 5  # a block spilled again and again while a view of it is made: give up then


class NodeViews(BlockStore):
    """Views of the blocks of a node of this host (made with :class:`BlockStore`'s
    arguments)."""

    def __init__(self, node: str, cluster_id: str, capacity: int | None = None) -> None:
        super().__init__(node, cluster_id, capacity)
        self._views = Mappings(VIEW_MAPPINGS, check_each_call=False)
        self._pins = PinnedViews()

    def open_block(self, number: int, populate: bool = False) -> tuple[int, memoryview]:
        """A block's size and a writable memoryview of its bytes over a mapping this process
        keeps (``VIEW_MAPPINGS``), or, with ``populate``, over a mapping of its own with every
        page mapped at once (for a caller about to write all of it). The block is restored
        first when spilled, and pinned while the view lives.

        The memory stays valid while the view (or an array over it) lives, even if the block
        is deallocated meanwhile, and goes with it. One catalog query, and an attach only the
        first time: this is what opening a zero-copy view costs.

        Raises:
            BlockNotFound: no such block, or its memory is gone.
            StoreFull: it is spilled and the node has no room to restore it.
        """
        for _ in range(PIN_TRIES):
            place = self.catalog.place_of(number)
            if place is None or place[3] not in ("ok", "spilling"):
                self.restore(number)  # restores it, or raises the right BlockNotFound
                continue
            size, name, token, _ = place
            block = Place(self.block_id(number), self.node, name, token, size)
            view = self._views.view(block) if not populate else None
            if view is None:
                try:
                    view = seg.map_data(name, bytes.fromhex(token), size, populate)
                except seg.SegmentNotFound as exc:
                    if self.catalog.place_of(number) == place:  # not moved: gone
                        raise BlockNotFound(f"the shared memory of {block.block_id} is gone",
                                            block_id=block.block_id, node=self.node) from exc
                    continue  # spilled or freed meanwhile: look again
            pinned = self._pin(number, block, view)
            if pinned is not None:
                return size, pinned
        raise BlockNotFound(f"{self.block_id(number)} kept moving to disk while a view of it "
                            "was made; try again", block_id=self.block_id(number))

    def view_of(self, block: BlockInfo) -> memoryview | None:
        """A writable view of a block whose facts were just read (a key's place), through the
        kept mappings, with no catalog query unless the view pins the block anew: as
        :meth:`open_block` without ``populate``.

        Raises:
            BlockNotFound: its memory is gone from this host.
        """
        view = self._views.view(block)
        if view is not None:
            pinned = self._pin(block.number, block, view)
            if pinned is not None:
                return pinned
        return self.open_block(block.number)[1]  # moved meanwhile: from its catalog row

    def _pin(self, number: int, block: Place | BlockInfo,
             view: memoryview) -> memoryview | None:
        """``view`` pinning the block; None when the block left memory (or is leaving it)
        before it was pinned (the caller looks again). On a node with no spill folder nothing
        moves a block, so nothing is pinned: the view is handed out as it is."""
        if self.spill_settings() is None:
            return view
        try:
            return self._pins.pinned(block.segment, block.token, view)
        except seg.SegmentNotFound:
            return None

    def writable(self, block: BlockInfo, offset: int, length: int) -> memoryview:
        """A view of the range, for a write this process prepared (a block with a write
        running is never spilled: no pin needed).

        Raises:
            BlockNotFound: its memory is gone from this host.
        """
        view = self._views.view(block)
        if view is None:
            raise BlockNotFound(f"the shared memory of {block.block_id} is gone",
                                block_id=block.block_id, node=self.node)
        return view[offset:offset + length]

    def kept_views(self) -> list[str]:
        """The segments this process keeps mapped for views (``VIEW_MAPPINGS``)."""
        return self._views.names()

    def _drop_freed_mappings(self) -> None:
        self._views.drop_stale()
        super()._drop_freed_mappings()

    def close(self) -> None:
        """Close the kept mappings and the catalog (live views stay valid)."""
        self._views.close()
        super().close()
