"""A node's writes of keys: prepare, commit, abort, and removing keys.

Write protocol: ``prepare_write`` checks the range and records the key's extent as pending (the
bytes it claims are then owned, so no other write can take them); the bytes are copied (by a
local client straight into the mapping, or by the store actor from chunks sent through Ray);
``commit_write`` marks the extent complete. A refused write has changed nothing.

A key the store places itself is rewritten into new space (copy-on-write): a block allocated
for the key by its writer (``for_key``, ``holder``) takes the key's new version while the key
lives on, whole, in its old block of the same node; the commit gives the key its new extent and
drops the old one, and the old block with it when it was allocated for the key, in one catalog
transaction. A reader gets the old version whole until the commit and the new one after; a
writer killed before the commit leaves the old version (its new block is freed with it).

A range of a key has one writer at a time: a second write of a key onto bytes a running write
of it claims is refused (:class:`KeyBusy`); writes of disjoint parts of one key (pipeline stages
writing their parts at known offsets) may run at once.

A write whose writer is gone is undone when another write meets it (here), or by the node's
upkeep (:mod:`distributed_grid.memory.node.recovery`).
"""

from __future__ import annotations

import os
from typing import Any

from distributed_grid.errors import (
    BlockNotFound,
    InvalidArgument,
    KeyBusy,
    KeyConflict,
    KeyNotFound,
    StoreFull,
)
from distributed_grid.memory.node.core import NotInMemory, StoreCore, guard_of
from distributed_grid.memory.node.schema import BlockRow, ExtentRow
from distributed_grid.memory.shm import segment as seg
from distributed_grid.memory.shm.seqguard import process_tag
from distributed_grid.names import check_range, validate_key
from distributed_grid.records import BlockInfo, KeyRemoval


class StoreWrites(StoreCore):
    """Writes and removals of a node's keys, each one catalog transaction."""

    def prepare_write(self, number: int, offset: int, length: int, key: str | None = None,
                      force: bool = False, writer: str | None = None,
                      replica_of: str | None = None, epoch: int = 0,
                      slot: int | None = None, guard: int | None = None) -> BlockInfo:
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
            replica_of: the replicated block the write comes through, when the block is one of
                its copies (a copy takes no other write).
            epoch: the epoch of the set of copies the writer knows (an older one than the
                copy's is refused: the writer would miss a copy being added).
            slot, guard: the write-guard slot the writer holds for the range, and its owner tag.

        Returns:
            The block's facts, with the written key alone in its keys and pending writes (a
            write's cost does not grow with the keys of its block); segment name and token
            let a local client write directly.

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
                if row.state == "spilling":  # no write starts until it is on disk
                    raise NotInMemory(f"{block_id} is being spilled to disk",
                                      block_id=block_id, node=self.node)
                self.check_copy(row, replica_of, "write to", epoch)
                if row.slab:
                    raise InvalidArgument(
                        f"{block_id} is a slab: it holds small values the store places itself "
                        "(put, or store without --block-id); write into a block you allocate",
                        block_id=block_id)
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
                    if elsewhere is not None and elsewhere != number and \
                            not _next_version(row, key, writer or self.me):
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
                info = self._key_info(row, key)
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

        Returns:
            The block's facts, with the written key alone in its keys (as prepare_write's).

        Raises:
            KeyNotFound: no pending write of ``key`` at ``offset`` (it was overwritten with
                ``force``, undone because its writer seemed gone, or its block deallocated and
                made again).
            BlockNotFound: the block is gone.
        """
        with self.catalog.transaction():
            row = self._row(number)
            check_range(self.block_id(number), row.size, offset, length, "write")
            replaced: list[BlockRow] = []
            if key is not None:
                if not self.catalog.complete_extent(number, key, offset, length):
                    raise KeyNotFound(
                        f"no pending write of key {key!r} at offset {offset} in "
                        f"{self.block_id(number)}", key=key, block_id=self.block_id(number),
                        offset=offset,
                    )
                if _next_version(row, key, row.holder):
                    replaced = self._drop_old_version(key, number)
                self.catalog.set_key_meta(key, number, meta)
            self.catalog.raise_high_water(number, offset + length)
            if row.holder is not None:
                self.catalog.let_go(number)
            info = self._key_info(self._row(number), key)
        for old in replaced:  # after the commit: readers of it keep their mapping
            self._free_memory(old)
        if replaced:
            self._drop_freed_mappings()
        return info

    def _drop_old_version(self, key: str, number: int) -> list[BlockRow]:
        """Drop the key's extents in other blocks than ``number`` (its old version, inside the
        commit of its new one), and those blocks when they were allocated for the key and hold
        nothing more; returns the rows of the blocks dropped (their segments go after)."""
        old = [e for e in self.catalog.key_rows_and_block(key)[0] if e.block != number]
        dropped = []
        for block in sorted({e.block for e in old}):
            self._drop(block, [e for e in old if e.block == block])
            row = self.catalog.block(block)
            if row is not None and row.for_key == key and \
                    not self.catalog.block_has_extents(block):
                self.catalog.delete_block(row)
                dropped.append(row)
        return dropped

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
        freed = False
        with self.catalog.transaction():
            extents, row = self._key_rows_settled(key, released, f"delete key {key!r}")
            number = extents[0].block if extents else None
            extents = [e for e in extents if e.block == number]  # a key lives in one block
            if number is not None and row is not None:
                self.catalog.drop_key_extents(key, number)  # all of the key's
                if not row.slab:  # a slab key's metadata is its extent's
                    self.catalog.set_key_meta(key, number, None)
                if row.slab:
                    freed = self.release_runs(row, extents)  # type: ignore[attr-defined]
                else:
                    freed = row.for_key == key and not self.catalog.block_has_extents(number)
                    if freed:
                        self.catalog.delete_block(row)
        self._release_guards(released)  # undone writes of dead writers: their slots go now
        if number is None or row is None:
            raise KeyNotFound(f"no key named {key!r} on node {self.node}", key=key,
                              node=self.node)
        if freed:
            self._free_memory(row)
            self._drop_freed_mappings()
        elif row.replica_of is not None:
            self._mark_changed(row)  # a copy being made from this one takes the keys again
        return KeyRemoval(key=key, block_id=self.block_id(number), node=self.node,
                          bytes=sum(e.length for e in extents),
                          extents=[(e.offset, e.length) for e in extents], block_freed=freed)

    def _mark_changed(self, row: BlockRow) -> None:
        """Move the write guard's sequence of a block whose keys changed without a write (a
        key removed): a reader that copies the block's keys with its bytes sees it, as it sees
        a write."""
        tag = process_tag(os.getpid()) or os.getpid() << 32
        try:
            with guard_of(self._place(row)) as guard:
                slot = guard.claim(tag, 0, 1)
                if slot >= 0:
                    guard.release(slot, tag)
        except BlockNotFound:
            pass

    def _segment_freed_by(self, key: str) -> str | None:
        """The segment of the block removing ``key`` would free, if it would free one."""
        number = self.catalog.block_of_key(key)
        row = None if number is None else self.catalog.block(number)
        if row is None or row.for_key != key:
            return None
        if any(e.key != key or not e.complete for e in self.catalog.extents(row.number)):
            return None
        return row.segment


def _next_version(row: BlockRow, key: str, writer: str | None) -> bool:
    """Whether block ``row`` takes ``key``'s next version while the key lives in another block
    of the node: it was allocated for the key, for this writer's write, which has not
    committed yet."""
    return row.for_key == key and row.holder is not None and row.holder == writer
