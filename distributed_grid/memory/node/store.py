"""A node's block store: every policy decision about its blocks, over its catalog and segments.

:class:`BlockStore` is a plain class with no Ray in it. Any process on the node's host may run
one over the node's catalog: the CLI and the pool do, for blocks of their own host, and the
node's store actor does, for the rest of the cluster. Each change is one catalog transaction, so
they may all work at once; the catalog's write lock serializes them.

Numbers only grow and are spent in the transaction that records the block as ``creating``,
before its segment exists, so a number is never handed out twice: a stale block id can never
reach somebody else's data. A creator killed before it finished leaves a ``creating`` row that
:meth:`BlockStore.reap` removes (with the segment) once that process is gone.

Write protocol: ``prepare_write`` checks the range and records the key's extent as pending (the
bytes it claims are then owned, so no other write can take them); the bytes are copied (by a
local client straight into the mapping, or by the store actor from chunks sent through Ray);
``commit_write`` marks the extent complete. A refused write has changed nothing. A range of a key
has one writer at a time: a second write of a key onto bytes a running write of it claims is
refused (:class:`KeyBusy`); writes of disjoint parts of one key (pipeline stages writing their
parts at known offsets) may run at once.

Every pending write and every block allocated for one write has an owner, the writer: a process
of this host (``host/pid/start``) or a client on another host, whose life the node's store actor
judges. When the owner is gone its writes are undone (:meth:`BlockStore.reap_writes`): the
pending extent is dropped, so are the complete extents its range overlapped (their bytes were
being overwritten: they are neither old nor new), its write-guard slot is released, and a block
allocated for it is freed.
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

from distributed_grid.errors import (
    BlockNotFound,
    GridError,
    KeyBusy,
    KeyConflict,
    KeyNotFound,
    StoreFull,
)
from distributed_grid.memory.node.catalog import BlockRow, Catalog, ExtentRow, catalog_path
from distributed_grid.memory.records import (
    REMOTE_WRITER,
    BlockInfo,
    KeyPlace,
    KeyRemoval,
    NodeStats,
    PendingWrite,
)
from distributed_grid.memory.shm import segment as seg
from distributed_grid.memory.shm.capacity import describe_limit, node_stats, read_limits
from distributed_grid.memory.shm.seqguard import Guard, tag_alive
from distributed_grid.names import check_range, format_block_id, positive_size, validate_key
from distributed_grid.runtime import identity_alive, this_process

# Bumped whenever a store method or a record changes its shape: a client refuses to work with a
# store (or a node record) of another protocol, made by another installation of distributed_grid.
STORE_PROTOCOL = 5


class BlockStore:
    """The blocks of one node, as seen from a process on the node's host.

    Args:
        node: the node's name (part of every block id and segment name).
        cluster_id: the cluster's identity (part of every segment name, so two clusters on one
            host never collide).
        capacity: the most bytes this store may hold in blocks; None for what the host's
            shared memory and memory can back (a caller's config may cap it further per call).
    """

    def __init__(self, node: str, cluster_id: str, capacity: int | None = None) -> None:
        self.catalog = Catalog(node, cluster_id)
        self.node = node
        self.cluster_id = cluster_id
        self.capacity = capacity
        self.prefix = f"/dg.{cluster_id}.{node}."
        self._segment_re = re.compile(re.escape(self.prefix) + r"[0-9]+")
        self.me = this_process()

    # -- reading --------------------------------------------------------------------------------

    def block_id(self, number: int) -> str:
        return format_block_id(number, self.node)

    def _row(self, number: int, settled: bool = True) -> BlockRow:
        """The block's row; raises BlockNotFound unless it exists (and is usable if settled)."""
        return self._usable(number, self.catalog.block(number), settled)

    def _usable(self, number: int, row: BlockRow | None, settled: bool = True) -> BlockRow:
        if row is None or row.state == "creating":
            raise BlockNotFound(
                f"no block {self.block_id(number)} on node {self.node}",
                block_id=self.block_id(number), node=self.node,
            )
        if settled and row.state != "ok":
            raise BlockNotFound(
                f"block {self.block_id(number)} lost its shared memory (segment "
                f"{row.segment} is gone from this host); deallocate it",
                block_id=self.block_id(number), node=self.node,
            )
        return row

    def _info(self, row: BlockRow, extents: list[ExtentRow] | None = None) -> BlockInfo:
        if extents is None:
            extents = self.catalog.extents(row.number)
        keys: dict[str, list[tuple[int, int]]] = {}
        pending: list[PendingWrite] = []
        for e in extents:
            if e.complete:
                keys.setdefault(e.key, []).append((e.offset, e.length))
            else:
                pending.append(PendingWrite(e.key, e.offset, e.length, e.writer))
        return BlockInfo(
            block_id=self.block_id(row.number), node=self.node, number=row.number,
            size=row.size, used=row.high_water, created=row.created, status=row.state,
            segment=row.segment, token=row.token, keys=keys,
            pending_keys=sorted({p.key for p in pending}), persistent=row.lease is None,
            pending=pending,
        )

    def block_info(self, number: int) -> BlockInfo:
        """The facts of a usable block.

        Raises:
            BlockNotFound: no such block, or its segment is gone.
        """
        row, extents = self.catalog.block_and_extents(number)
        return self._info(self._usable(number, row), extents)

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
        """The block holding ``key``'s complete bytes, with the key's extents; None if none."""
        validate_key(key)
        with self.catalog.snapshot():
            number = self.catalog.block_of_key(key, complete_only=True)
            if number is None:
                return None
            row, extents = self.catalog.block_and_extents(number)
            if row is None or row.state != "ok":
                return None
            meta = self.catalog.key_meta(key)
        own = [e for e in extents if e.key == key and e.complete]
        return KeyPlace(key=key, block=self._info(row, extents),
                        extents=[(e.offset, e.length) for e in own], meta=meta,
                        generation=max((e.id for e in own), default=0))

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

    def stats(self, capacity: int | None = None) -> NodeStats:
        """The node's shared memory and blocks (no scan: the catalog keeps the counts), and the
        room for new blocks: bounded by the host's memory too (see :mod:`.capacity`)."""
        limits = read_limits()
        blocks, block_bytes = self.catalog.counts()
        cap = self.capacity if capacity is None else capacity
        return node_stats(self.node, limits, cap, blocks, block_bytes)

    # -- allocation -----------------------------------------------------------------------------

    def allocate(self, size: int, lease: str | None = None, capacity: int | None = None,
                 holder: str | None = None, for_key: str | None = None) -> BlockInfo:
        """Create a block of ``size`` bytes and return its facts.

        Args:
            size: the block's size in bytes.
            lease: for a non-persistent block, the name of the actor whose life it shares.
            capacity: the cap on this node's block bytes in the caller's cluster config.
            holder: the writer the block is allocated for: the block is freed if that writer
                dies before its first write commits.
            for_key: the key the block is allocated for: removing that key
                (:meth:`delete_key`) frees the block when no other key lives in it.

        Raises:
            InvalidArgument: ``size`` is not a positive integer.
            StoreFull: the node cannot hold ``size`` more bytes.
        """
        positive_size(size, "block size")
        if for_key is not None:
            validate_key(for_key)
        token = os.urandom(seg.TOKEN_SIZE)
        with self.catalog.transaction():
            stats = self.stats(capacity)  # counts read under the write lock: no overshoot
            free = stats.free_for_blocks
            if size > free:
                raise StoreFull(
                    f"cannot allocate {size} bytes on node {self.node}: it can hold at most "
                    f"{free} more bytes ({describe_limit(stats)})", node=self.node, size=size,
                    free=free, limit=stats.limited_by,
                )
            number = self.catalog.spend_number()
            name = f"{self.prefix}{number}"
            self.catalog.insert_block(number, size, name, token.hex(), time.time(), lease,
                                      self.me, holder, for_key)
        try:
            try:
                seg.create_segment(name, size, token)
            except FileExistsError:  # left by a catalog that was removed: no block owns it
                seg.unlink_segment(name)
                seg.create_segment(name, size, token)
            with self.catalog.transaction():
                row = self.catalog.block(number)
                if row is None:  # reaped: impossible while this process lives, but never leak
                    raise BlockNotFound(f"block {self.block_id(number)} vanished while created")
                self.catalog.set_state(row, "ok")
        except BaseException:
            self._forget_creation(number, name)
            raise
        return self._info(row._replace(state="ok"), [])

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

    def deallocate(self, number: int) -> BlockInfo:
        """Free a block and forget its keys; returns the facts it had.

        Live mappings in other processes stay valid until they close; the memory goes then.

        On a /dev/shm so full that the catalog cannot record the change, the block's segment
        is unlinked first (its memory is what makes room) and the change tried once more; if
        that fails too, the block stays listed without its memory (``missing`` once the store
        reconciles) and a later deallocate finishes it. Never is a segment left unlisted.

        Raises:
            BlockNotFound: no such block.
            StoreFull: the catalog cannot record the change, even with the block's memory freed.
        """
        try:
            return self._deallocate(number)
        except StoreFull:
            seg.unlink_segment(self._row(number, settled=False).segment)
            self._drop_freed_mappings()
            return self._deallocate(number)

    def _drop_freed_mappings(self) -> None:
        """Close this process's kept mappings of unlinked segments (a store actor keeps some),
        so their memory goes now."""

    def _deallocate(self, number: int) -> BlockInfo:
        with self.catalog.transaction():
            row = self._row(number, settled=False)
            info = self._info(row)
            self.catalog.delete_block(row)
        seg.unlink_segment(row.segment)
        return info

    def leases(self) -> list[str]:
        """The names of the leases that non-persistent blocks of this node live by."""
        return self.catalog.leases()

    def release_lease(self, lease: str) -> list[str]:
        """Free every block that lives by ``lease`` (its owner is gone); returns their ids."""
        freed = []
        for number in self.catalog.blocks_of_lease(lease):
            try:
                freed.append(self.deallocate(number).block_id)
            except BlockNotFound:
                continue  # freed meanwhile by somebody else
        return freed

    # -- writes ---------------------------------------------------------------------------------

    def prepare_write(self, number: int, offset: int, length: int, key: str | None = None,
                      force: bool = False, writer: str | None = None, slot: int | None = None,
                      guard: int | None = None) -> BlockInfo:
        """Check a write of ``length`` bytes at ``offset`` and claim the range for ``key``.

        Rules: the range must lie inside the block; it may not touch bytes of another key (nor
        of another extent of the same key) unless ``force``; a key written again at the same
        offset replaces that extent when the write commits (until then the key reads as it
        was). With ``force`` the overlapped extents of other keys are dropped (their bytes are
        being overwritten). A key lives in one block of the node (the cluster's key directory
        makes that one block of the cluster) and each of its ranges one writer at a time.
        Pending writes of writers that are gone are undone first.

        Args:
            writer: who writes (``host/pid/start``); None for this process.
            slot, guard: the write-guard slot the writer holds for the range, and its owner tag.

        Returns:
            The block's facts (segment name and token let a local client write directly).

        Raises:
            OutOfBounds, InvalidArgument, KeyConflict, KeyBusy, BlockNotFound.
        """
        if key is not None:
            validate_key(key)
        released: list[ExtentRow] = []
        try:
            with self.catalog.transaction():
                row = self._row(number)
                block_id = self.block_id(number)
                check_range(block_id, row.size, offset, length, "write")
                end = offset + length
                if key is not None:
                    for p in self.catalog.pending_extents(key):
                        if self.write_gone(p):
                            released += self._forget_write(p)
                            continue
                        if p.block == number and (p.end <= offset or end <= p.offset):
                            continue  # another part of the key: its writer may run meanwhile
                        raise KeyBusy(
                            f"key {key!r} is being written (bytes {p.offset}..{p.end} of "
                            f"{self.block_id(p.block)}, by {p.writer}); each part of a key has "
                            "one writer at a time: try again when that write has finished",
                            key=key, block_id=self.block_id(p.block), writer=p.writer)
                    elsewhere = self.catalog.block_of_key(key)
                    if elsewhere is not None and elsewhere != number:
                        other = self.block_id(elsewhere)
                        raise KeyConflict(
                            f"key {key!r} already lives in {other}; a key lives in one block: "
                            f"store it there, or deallocate {other} first",
                            key=key, block_id=other,
                        )
                overlapping = self.catalog.overlapping(number, offset, end)
                gone = [e for e in overlapping if not e.complete and self.write_gone(e)]
                for e in gone:
                    released += self._forget_write(e)
                if gone:
                    overlapping = self.catalog.overlapping(number, offset, end)
                clashes = [e for e in overlapping
                           if not (e.key == key and e.offset == offset and e.complete)]
                if clashes and not force:
                    e = clashes[0]
                    who = "another extent of key" if e.key == key else "key"
                    raise KeyConflict(
                        f"cannot write {length} bytes at offset {offset} into {block_id}: bytes "
                        f"{e.offset}..{e.end} belong to {who} {e.key!r}; write elsewhere, or "
                        "pass --force to overwrite them",
                        block_id=block_id, offset=offset, length=length, key=e.key,
                    )
                self._drop(number, clashes)
                if key is not None:
                    self.catalog.add_extent(number, key, offset, length, writer or self.me,
                                            slot, guard)
                info = self._info(row)
        finally:
            self._release_guards(released)
        return info

    def commit_write(self, number: int, offset: int, length: int, key: str | None = None,
                     meta: dict[str, Any] | None = None) -> BlockInfo:
        """Mark a prepared write complete and move the block's high-water mark.

        The key's complete extent at the same offset (its bytes before this write) is replaced,
        and a block allocated for this write no longer depends on the writer's life.

        Args:
            meta: what the key's bytes are (an array's dtype and shape); None for plain bytes.

        Raises:
            KeyNotFound: no pending write of ``key`` at ``offset`` (it was overwritten with
                ``force``, undone because its writer seemed gone, or its block deallocated and
                made again).
            BlockNotFound: the block is gone.
        """
        with self.catalog.transaction():
            row = self._row(number)
            check_range(self.block_id(number), row.size, offset, length, "write")
            if key is not None:
                if not self.catalog.complete_extent(number, key, offset, length):
                    raise KeyNotFound(
                        f"no pending write of key {key!r} at offset {offset} in "
                        f"{self.block_id(number)}", key=key, block_id=self.block_id(number),
                        offset=offset,
                    )
                self.catalog.set_key_meta(key, number, meta)
            self.catalog.raise_high_water(number, offset + length)
            if row.holder is not None:
                self.catalog.let_go(number)
            return self._info(self.catalog.block(number))  # type: ignore[arg-type]

    def abort_write(self, number: int, offset: int, key: str | None = None,
                    torn: bool = True) -> None:
        """Forget a prepared write that did not finish.

        Args:
            torn: whether bytes may have been copied: the key's complete extents that the
                write's range overlapped are then dropped too (they hold a mix).
        """
        if key is None:
            return
        with self.catalog.transaction():
            pending = self.catalog.pending_extent(number, key, offset)
            if pending is None:
                return
            self._drop(number, [pending])
            if torn:
                self._drop(number, [e for e in self.catalog.overlapping(
                    number, pending.offset, pending.end) if e.complete])

    def _drop(self, number: int, extents: list[ExtentRow]) -> None:
        """Forget extents (inside a transaction), and the metadata of keys left with none."""
        self.catalog.drop_extents([e.id for e in extents])
        for dropped in {e.key for e in extents}:
            if not self.catalog.key_has_extents(dropped, number):
                self.catalog.set_key_meta(dropped, number, None)

    def _forget_write(self, pending: ExtentRow) -> list[ExtentRow]:
        """Undo the pending write of a writer that is gone (inside a transaction): its extent
        and the complete extents its range overlapped. Returns it (its guard slot is released
        by the caller, after the transaction)."""
        torn = [e for e in self.catalog.overlapping(pending.block, pending.offset, pending.end)
                if e.complete]
        self._drop(pending.block, [pending, *torn])
        return [pending]

    def _release_guards(self, writes: list[ExtentRow]) -> None:
        """Release the write-guard slots undone writes held (by their owner tag: a slot taken
        meanwhile by another writer is left alone)."""
        for w in writes:
            if w.slot is None or w.guard is None:
                continue
            place = self.catalog.place_of(w.block)
            if place is None:
                continue
            try:
                fd = seg.open_data(place[1], bytes.fromhex(place[2]), place[0])
            except seg.SegmentNotFound:
                continue
            try:
                guard = Guard(fd)
                guard.release(w.slot, w.guard)
                guard.close()
            finally:
                os.close(fd)

    # -- removing keys --------------------------------------------------------------------------

    def delete_key(self, key: str) -> KeyRemoval:
        """Remove ``key`` from the node: all its extents, in its one block; and the block too
        when it was allocated for the key (``for_key``) and no other key has bytes in it
        (complete or being written) once the key is gone.

        The key's removal and the block's deallocation are one catalog transaction; the
        block's segment is unlinked after it (a reader's mapping keeps the memory until it
        closes). A write of the key whose writer is gone is undone first. On a /dev/shm so
        full that the catalog cannot record the change, a block that goes has its segment
        unlinked first (its memory makes the room), as in :meth:`deallocate`.

        Raises:
            KeyBusy: a live writer is writing the key; nothing changed.
            KeyNotFound: no block of the node holds the key; nothing changed.
            StoreFull: the catalog cannot record the change; nothing changed.
        """
        validate_key(key)
        try:
            return self._delete_key(key)
        except StoreFull:
            with self.catalog.transaction():  # reads only (it writes no WAL): holds the lock
                segment = self._segment_freed_by(key)
                if segment is None:
                    raise
                seg.unlink_segment(segment)
            self._drop_freed_mappings()
            return self._delete_key(key)

    def _delete_key(self, key: str) -> KeyRemoval:
        released: list[ExtentRow] = []
        with self.catalog.transaction():
            for p in self.catalog.pending_extents(key):
                if self.write_gone(p):
                    released += self._forget_write(p)
                    continue
                owner = PendingWrite(p.key, p.offset, p.length, p.writer).owner
                raise KeyBusy(
                    f"cannot delete key {key!r}: it is being written (bytes {p.offset}.."
                    f"{p.end} of {self.block_id(p.block)}, by {owner}); try again when that "
                    "write has finished", key=key, block_id=self.block_id(p.block),
                    writer=p.writer)
            number = self.catalog.block_of_key(key)
            row = None if number is None else self.catalog.block(number)
            if number is not None and row is not None:
                extents = self.catalog.key_extents(key, number)
                self._drop(number, extents)
                freed = row.for_key == key and not self.catalog.block_has_extents(number)
                if freed:
                    self.catalog.delete_block(row)
        self._release_guards(released)  # undone writes of dead writers: their slots go now
        if number is None or row is None:
            raise KeyNotFound(f"no key named {key!r} on node {self.node}", key=key,
                              node=self.node)
        if freed:
            seg.unlink_segment(row.segment)
            self._drop_freed_mappings()
        return KeyRemoval(key=key, block_id=self.block_id(number), node=self.node,
                          bytes=sum(e.length for e in extents),
                          extents=[(e.offset, e.length) for e in extents], block_freed=freed)

    def _segment_freed_by(self, key: str) -> str | None:
        """The segment of the block removing ``key`` would free, if it would free one."""
        number = self.catalog.block_of_key(key)
        row = None if number is None else self.catalog.block(number)
        if row is None or row.for_key != key:
            return None
        if any(e.key != key or not e.complete for e in self.catalog.extents(row.number)):
            return None
        return row.segment

    def writer_alive(self, writer: str | None) -> bool | None:
        """Whether the owner of a pending write (or of a block held for one) still runs.

        None when this process cannot tell: a writer on another host, which the node's store
        actor judges.
        """
        if not writer:
            return False
        return identity_alive(writer)

    def write_gone(self, pending: ExtentRow) -> bool:
        """Whether nobody can finish a pending write: its writer is gone, or the process that
        held its guard slot (the only one copying its bytes) is."""
        if pending.guard is not None and not tag_alive(pending.guard):
            return True
        return self.writer_alive(pending.writer) is False

    def reap_writes(self) -> list[str]:
        """Undo the writes whose writer is gone and free the blocks allocated for them;
        returns what was undone (cheap: pending extents and held blocks are indexed)."""
        undone: list[str] = []
        for p in self.catalog.pending_extents():
            if not self.write_gone(p):
                continue
            released: list[ExtentRow] = []
            with self.catalog.transaction():
                again = self.catalog.pending_extent(p.block, p.key, p.offset)
                if again is None or again.id != p.id:
                    continue
                released = self._forget_write(again)
            self._release_guards(released)
            undone.append(f"write of key {p.key!r} at {p.offset} in {self.block_id(p.block)}")
        for row in self.catalog.held_blocks():
            if self.writer_alive(row.holder) is not False:
                continue
            with self.catalog.transaction():
                again = self.catalog.block(row.number)
                if again is None or again.holder != row.holder:
                    continue
                self.catalog.delete_block(again)
            seg.unlink_segment(row.segment)
            undone.append(f"block {self.block_id(row.number)} allocated for it")
        return undone

    # -- upkeep ---------------------------------------------------------------------------------

    def reap(self) -> list[str]:
        """Remove blocks whose creator died before finishing; returns their ids.

        Cheap enough to run every few seconds: it reads only unsettled rows (an index).
        """
        reaped = []
        for row in self.catalog.unsettled_blocks():
            if row.state == "creating" and row.creator and identity_alive(row.creator) is False:
                with self.catalog.transaction():
                    again = self.catalog.block(row.number)
                    if again is None or again.state != "creating":
                        continue
                    self.catalog.delete_block(again)
                seg.unlink_segment(row.segment)
                reaped.append(self.block_id(row.number))
        return reaped

    def reconcile(self) -> dict[str, list[str]]:
        """Make the catalog and the host's segments agree (when the node's store starts).

        Blocks whose segment vanished become ``missing``; segments of this node that no block
        owns (a crash between a deallocation's commit and its unlink) are unlinked; creations
        whose creator died are undone. Runs alongside other processes' changes: the order of
        its reads (rows, then segments, then rows again) keeps it from touching a block that
        is being made.
        """
        reaped = self.reap()
        settled = {r.number: r for r in self.catalog.blocks(("ok",))}
        on_host = {n for n in seg.list_segment_names(self.prefix) if self._segment_re.fullmatch(n)}
        missing = []
        with self.catalog.transaction():
            for row in settled.values():
                if row.segment not in on_host:
                    now = self.catalog.block(row.number)
                    if now is not None and now.state == "ok":
                        self.catalog.set_state(now, "missing")
                        missing.append(self.block_id(row.number))
            owned = {r.segment for r in self.catalog.blocks(("creating", "ok", "missing"))}
        orphans = sorted(on_host - owned)
        for name in orphans:
            seg.unlink_segment(name)
        return {"reaped": reaped, "missing": missing, "orphans": orphans}

    def destroy(self) -> int:
        """Free every block and remove the catalog (the cluster is going away).

        Costs one unlink per block and no transaction per block, so 10,000 blocks take a
        fraction of a second. Returns how many blocks there were.
        """
        count = self.catalog.counts()[0]
        self.catalog.remove()
        for name in seg.list_segment_names(self.prefix):
            if self._segment_re.fullmatch(name):
                seg.unlink_segment(name)
        return count

    def close(self) -> None:
        """Close this process's connection to the catalog."""
        self.catalog.close()


def remove_cluster_files(cluster_id: str) -> list[str]:
    """Unlink this host's segments and databases of a cluster that is being stopped.

    For nodes whose store is gone (a dead raylet), nobody else would free them. Returns the
    segment names that were left.
    """
    names = seg.list_segment_names(f"dg.{cluster_id}.")
    for name in names:
        seg.unlink_segment(name)
    for prefix in (f"dgc.{cluster_id}.", f"dgk.{cluster_id}."):  # databases with WAL files
        for entry in seg.list_segment_names(prefix):
            try:
                os.unlink(os.path.join(seg.SHM_DIR, entry.lstrip("/")))
            except FileNotFoundError:
                pass
    return names


__all__ = ["REMOTE_WRITER", "STORE_PROTOCOL", "BlockStore", "catalog_path", "remove_cluster_files"]
