"""A node's block store: every policy decision about its blocks, over its catalog and segments.

:class:`BlockStore` is a plain class with no Ray in it. Any process on the node's host may run
one over the node's catalog: the CLI and the pool do, for blocks of their own host, and the
node's store actor does, for the rest of the cluster. Each change is one catalog transaction, so
they may all work at once; the catalog's write lock serializes them.

The store is split along its seams, each a class of its own over :class:`~distributed_grid.
memory.node.core.StoreCore`: allocation and reads (here), writes and removals of keys
(:mod:`~distributed_grid.memory.node.writes`), small values in slabs
(:mod:`~distributed_grid.memory.node.slabs`), spilling to disk and restoring
(:mod:`~distributed_grid.memory.node.room.spills`), and recovery from dead processes
(:mod:`~distributed_grid.memory.node.recovery`).

Numbers only grow and are spent in the transaction that records the block as ``creating``,
before its segment exists, so a number is never handed out twice: a stale block id can never
reach somebody else's data.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

from distributed_grid.errors import BlockNotFound, GridError, StoreFull
from distributed_grid.memory.node.recovery import StoreRecovery
from distributed_grid.memory.node.room.spills import StoreSpills
from distributed_grid.memory.node.schema import ExtentRow
from distributed_grid.memory.node.slabs import StoreSlabs
from distributed_grid.memory.node.writes import StoreWrites
from distributed_grid.memory.shm import layout
from distributed_grid.memory.shm import segment as seg
from distributed_grid.memory.shm.capacity import node_stats
from distributed_grid.names import positive_size, validate_key
from distributed_grid.records import BlockInfo, KeyPlace, NodeStats


class BlockStore(StoreWrites, StoreSlabs, StoreSpills, StoreRecovery):
    """The blocks of one node, as seen from a process on the node's host (made with the
    arguments of :class:`~distributed_grid.memory.node.core.StoreCore`)."""

    # -- reading --------------------------------------------------------------------------------

    def block_info(self, number: int) -> BlockInfo:
        """The facts of a usable block (in memory or spilled: it is not restored).

        Raises:
            BlockNotFound: no such block, or its segment is gone.
        """
        row, extents = self.catalog.block_and_extents(number)
        on_disk = row is not None and row.state in ("spilled", "restoring")
        return self._info(self._usable(number, row, settled=not on_disk), extents)

    def bare_info(self, number: int) -> BlockInfo:
        """A usable block's facts without its keys, once its bytes are in memory (restored
        first when spilled): what a copy of its bytes needs.

        Raises:
            BlockNotFound: no such block, or its segment is gone.
            StoreFull: it is spilled and the node has no room to restore it.
        """
        return self._info(self.restore(number), [])

    def list_blocks(self) -> list[BlockInfo]:
        """Every block of the node (missing ones too), by number."""
        with self.catalog.snapshot():
            rows = self.catalog.blocks()
            extents = self.catalog.all_extents()
        by_block: dict[int, list[ExtentRow]] = {}
        for e in extents:
            by_block.setdefault(e.block, []).append(e)
        return [self._info(r, by_block.get(r.number, [])) for r in rows]

    def find_key(self, key: str) -> KeyPlace | None:
        """The block holding ``key``'s complete bytes, with the key's extents; None if none.

        One statement on the key's own rows, whatever the number of keys in its block: the
        block's facts in the place list this key only (``block_info`` lists them all)."""
        found = self.catalog.key_place(validate_key(key))
        if found is not None and found[0].state in ("spilled", "restoring"):
            self.restore(found[0].number)  # used now: its bytes come back into memory
            found = self.catalog.key_place(key)
        if found is None or found[0].state not in ("ok", "spilling"):
            return None
        row, own, meta = found
        return KeyPlace(key=key, block=self._info(row, own),
                        extents=[(e.offset, e.length) for e in own],
                        meta=None if meta is None else json.loads(meta),
                        generation=max(e.id for e in own))

    def copy_of(self, number: int) -> str | None:
        """The replicated block that block ``number`` is a copy of (None: a block of one copy).

        Raises:
            BlockNotFound: no such block.
        """
        return self._row(number, settled=False).replica_of

    def set_epoch(self, number: int, replica_of: str, epoch: int) -> None:
        """Make the copy ``number`` of ``replica_of`` refuse writers that know an older set of
        its copies than ``epoch`` (a copy is being added: they would miss it).

        Raises:
            BlockNotFound: no such block.
            InvalidArgument: it is not a copy of ``replica_of``.
        """
        with self.catalog.transaction():
            self.check_copy(self._row(number, settled=False), replica_of, "change the epoch of")
            self.catalog.set_epoch(number, epoch)

    def holds_key(self, key: str, number: int) -> bool:
        """Whether block ``number`` has any extent of ``key``, complete or being written."""
        return self.catalog.key_has_extents(key, number)

    def list_keys(self) -> dict[str, str]:
        """Every key with complete bytes on the node, mapped to its block's id."""
        return {key: self.block_id(number) for key, number in self.catalog.complete_keys()}

    def free_bytes(self, capacity: int | None = None) -> int:
        """Bytes a new block may still take: what the host's shared memory and memory can
        back (see :mod:`.capacity`), under the cap.

        Args:
            capacity: the cap to apply (a caller's cluster config); None for the store's own.
        """
        return self.stats(capacity).free_for_blocks

    def stats(self, capacity: int | None = None, fresh: bool = False) -> NodeStats:
        """The node's shared memory and blocks (no scan: the catalog keeps the counts), and the
        room for new blocks: bounded by the host's memory too (see :mod:`.capacity`), read on a
        clock (:class:`~distributed_grid.memory.shm.capacity.HostRoom`), or now if ``fresh``."""
        blocks, block_bytes = self.catalog.counts()
        cap = self.capacity if capacity is None else capacity
        target = self.prefault_target()
        spares = self.spare_bytes() if target else 0
        stats = node_stats(self.node, self.room.limits(block_bytes + spares, fresh), cap,
                           blocks, block_bytes, spares)
        if target:
            stats = replace(stats, prefault_target=target)
        settings = self.spill_settings()
        if settings is None:
            return stats
        spilled, spilled_bytes = self.catalog.spill_counts()
        return replace(stats, spill_dir=settings.folder, spill_quota=settings.quota,
                       spilled_blocks=spilled, spilled_bytes=spilled_bytes)

    def node_status(self, capacity: int | None = None) -> NodeStats:
        """:meth:`stats` read now, with the blocks pinned by views counted (one look at each
        block's header: for ``cluster status``, not for every allocation)."""
        pinned, pinned_bytes = self.pinned()
        return replace(self.stats(capacity, fresh=True), pinned_blocks=pinned,
                       pinned_bytes=pinned_bytes)

    # -- allocation -----------------------------------------------------------------------------

    def allocate(self, size: int, lease: str | None = None, capacity: int | None = None,
                 holder: str | None = None, for_key: str | None = None,
                 replica_of: str | None = None) -> BlockInfo:
        """Create a block of ``size`` bytes and return its facts.

        Args:
            size: the block's size in bytes.
            lease: for a non-persistent block, the name of the actor whose life it shares.
            capacity: the cap on this node's block bytes in the caller's cluster config.
            holder: the writer the block is allocated for: the block is freed if that writer
                dies before its first write commits.
            for_key: the key the block is allocated for: removing that key
                (:meth:`delete_key`) frees the block when no other key lives in it.
            replica_of: the replicated block this one is a copy of (``""``: the first copy,
                whose own id the replicated block takes). A copy is written, freed and its
                keys removed only by its replicated block's writes (``replica_of`` given).

        Raises:
            InvalidArgument: ``size`` is not a positive integer.
            StoreFull: the node cannot hold ``size`` more bytes.
        """
        positive_size(size, "block size")
        if for_key is not None:
            validate_key(for_key)
        return self._make_block(size, lease, capacity, holder, for_key, replica_of=replica_of)

    def _make_block(self, size: int, lease: str | None = None, capacity: int | None = None,
                    holder: str | None = None, for_key: str | None = None,
                    slab: bool = False, replica_of: str | None = None) -> BlockInfo:
        """:meth:`allocate` of checked arguments; ``slab``: a slab for small values, all of it
        free (:mod:`~distributed_grid.memory.node.slabs`)."""
        token = os.urandom(layout.TOKEN_SIZE)
        self.make_room(size, capacity)  # a node with a spill folder spills cold blocks first
        with self.catalog.transaction():
            stats = self.stats(capacity)  # counts read under the write lock: no overshoot
            if size > stats.free_for_blocks:  # never refused on a stale reading
                stats = self.stats(capacity, fresh=True)
            free = stats.free_for_blocks
            if size > free:
                raise StoreFull(self.full_message(size, stats, "allocate"), node=self.node,
                                size=size, free=free, limit=stats.limited_by)
            number = self.catalog.spend_number()
            name = layout.segment_name(self.cluster_id, self.node, number)
            if replica_of == "":
                replica_of = self.block_id(number)
            self.catalog.insert_block(number, size, name, token.hex(), time.time(), lease,
                                      self.me, holder, for_key, slab, replica_of)
            spare = self._take_spare(size)  # memory faulted in already, if the node keeps some
        try:
            try:
                paged = self._adopt(spare, name, size, token)
            except FileExistsError:  # left by a catalog that was removed: no block owns it
                seg.unlink_segment(name)
                paged = self._adopt(spare, name, size, token)
            with self.catalog.transaction():
                row = self.catalog.block(number)
                if row is None:  # reaped: impossible while this process lives, but never leak
                    raise BlockNotFound(f"block {self.block_id(number)} vanished while created")
                self.catalog.set_state(row, "ok")
                if paged:
                    self.catalog.sql.execute("UPDATE blocks SET paged=? WHERE number=?",
                                             (paged, number))
                if slab:  # all free; its bytes are its keys' (read as a block: all of it)
                    self.catalog.sql.execute("INSERT INTO slab_free VALUES (?, 0, ?)",
                                             (number, size))
                    self.catalog.raise_high_water(number, size)
        except BaseException:
            self._forget_creation(number, name)
            raise
        return self._info(row._replace(state="ok", paged=paged), [])

    def _forget_creation(self, number: int, segment: str) -> None:
        """Undo a creation that failed: the segment first (it frees the room a full /dev/shm
        needs for the catalog's own change), then the row; a row that cannot go now is the
        reaper's once this process is gone."""
        seg.unlink_segment(segment)
        try:
            with self.catalog.transaction():
                row = self.catalog.block(number)
                if row is not None:
                    self.catalog.delete_block(row)
        except GridError:
            pass

    def deallocate(self, number: int, replica_of: str | None = None) -> BlockInfo:
        """Free a block and forget its keys; returns the facts it had. A copy of a replicated
        block goes only with it (``replica_of`` names it).

        Live mappings in other processes stay valid until they close; the memory goes then.

        On a /dev/shm so full that the catalog cannot record the change, the block's segment
        is unlinked first (its memory is what makes room) and the change tried once more; if
        that fails too, the block stays listed without its memory (``missing`` once the store
        reconciles) and a later deallocate finishes it. Never is a segment left unlisted.

        Raises:
            BlockNotFound: no such block.
            InvalidArgument: the block is a copy of a replicated block, not named.
            StoreFull: the catalog cannot record the change, even with the block's memory freed.
        """
        try:
            return self._deallocate(number, replica_of)
        except StoreFull:
            seg.unlink_segment(self._row(number, settled=False).segment)
            self._drop_freed_mappings()
            return self._deallocate(number, replica_of)

    def _deallocate(self, number: int, replica_of: str | None) -> BlockInfo:
        with self.catalog.transaction():
            row = self._row(number, settled=False)
            self.check_copy(row, replica_of, "deallocate")
            info = self._info(row)
            self.catalog.delete_block(row)
        self._free_memory(row)
        if row.slab:
            self._drop_freed_mappings()  # a slab's kept mapping goes with it
        return info

    def leases(self) -> list[str]:
        """The names of the leases that non-persistent blocks of this node live by."""
        return self.catalog.leases()

    def release_lease(self, lease: str) -> list[str]:
        """Free every block that lives by ``lease`` (its owner is gone); returns their ids."""
        freed = []
        for number in self.catalog.blocks_of_lease(lease):
            try:
                row = self.catalog.block(number)
                freed.append(self.deallocate(number, row and row.replica_of).block_id)
            except BlockNotFound:
                continue  # freed meanwhile by somebody else
        return freed
