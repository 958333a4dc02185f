"""A node's spilling: cold blocks written to its spill folder when memory runs short, and read
back into shared memory when used.

When and what a node spills is :mod:`~distributed_grid.memory.node.room.spill_policy`'s; this
is how. Only a block that is fully written and that no live process pins (holds a view of:
:mod:`~distributed_grid.memory.shm.pins`) is spilled; the folder never holds more than
``spill_quota`` bytes of blocks (counted by block size: what the catalog records, not what the
folder's files happen to take).

A spill, step by step (each a catalog transaction or a file operation; a crash anywhere leaves
what :meth:`StoreSpills.reap_moves` and :meth:`~distributed_grid.memory.node.recovery.
StoreRecovery.reconcile_spills` put right):

1. the block goes ``ok`` -> ``spilling`` with its file's name and the spiller (``mover``); its
   quota is taken; no write may start from now on (a reader still reads its memory);
2. pins and running writes are checked (after 1: a viewer pins, then checks the state);
   any: the block goes back to ``ok``;
3. the bytes are written to ``<name>.tmp``, synced, renamed, the folder synced;
4. ``spilling`` -> ``spilled`` with the file's checksum; the segment is unlinked (views and
   readers that had it keep their memory until they let go).

A restore: ``spilled`` -> ``restoring`` (room taken, a new token: no mapping of the old memory
can be taken for the new), the file read into a new segment and checked against its checksum,
then ``ok`` and the file deleted. Concurrent accesses restore once: the others wait for the
mover, or take over from a mover that died.
"""

from __future__ import annotations

import os
import time

from distributed_grid.errors import BlockNotFound, InvalidArgument, StoreFull
from distributed_grid.memory.io import spill_files
from distributed_grid.memory.io.copies import Progress, no_progress
from distributed_grid.memory.node.core import segment_fd
from distributed_grid.memory.node.room.spill_policy import Pinned, SpillSettings, StoreRoom
from distributed_grid.memory.node.schema import BlockRow
from distributed_grid.memory.shm import layout, pins
from distributed_grid.memory.shm import segment as seg
from distributed_grid.memory.shm.seqguard import Guard, tag_alive
from distributed_grid.records import BlockInfo
from distributed_grid.runtime import identity_alive

MOVE_WAIT_SECONDS = 120.0  # an access waits this long for another process's spill or restore


class StoreSpills(StoreRoom):
    """Spilling and restoring the blocks of one node."""

    def __init__(self, node: str, cluster_id: str, capacity: int | None = None) -> None:
        super().__init__(node, cluster_id, capacity)
        self._moved: dict[int, int] = {}  # block number -> bytes an explicit move moved so far

    # -- spilling -----------------------------------------------------------------------------

    def spill(self, number: int, progress: Progress = no_progress) -> BlockInfo:
        """Write a block to the node's spill folder and free its memory now (it is read back
        when used). A block on disk already is left as it is.

        Raises:
            BlockNotFound: no such block.
            InvalidArgument: the node has no spill folder; or the block is pinned by a view,
                being written, or not fully written yet.
            StoreFull: the spill folder's quota has no room for it, or the disk refused.
        """
        settings = self.spill_settings(fresh=True)
        if settings is None:
            raise InvalidArgument(f"node {self.node} has no spill folder (start it with "
                                  "--spill-dir and --spill-quota)", node=self.node)
        try:
            self._spill(number, settings, self._counted(number, progress), explicit=True)
        except Pinned as exc:
            raise InvalidArgument(f"cannot spill {self.block_id(number)}: {exc}",
                                  block_id=self.block_id(number)) from None
        except OSError as exc:
            raise StoreFull(f"cannot spill {self.block_id(number)} to {settings.folder}: "
                            f"{exc.strerror or exc}", block_id=self.block_id(number)) from exc
        finally:
            self._moved.pop(number, None)
        return self._info(self._row(number, settled=False))

    def _spill(self, number: int, settings: SpillSettings, progress: Progress = no_progress,
               explicit: bool = False, credit: int = 0) -> None:
        """Spill block ``number`` (steps 1-4 of the module's docstring).

        Args:
            credit: bytes of the quota a restore that makes room by this spill gives back when
                it is done (its own file): the two trade places.
        """
        row = self._begin_spill(number, settings, explicit, credit)
        if row is None:
            return
        name = str(row.spill_file)
        try:
            with segment_fd(self._place(row)) as fd:
                pins.mark_moving(fd, True)  # before the pins are read: see memory/shm/pins.py
                if pins.live_pins(fd):
                    raise Pinned("a process holds a view of it (a pinned block stays in memory)")
                guard = Guard(fd)
                try:
                    busy = [o for _, o, _, _ in guard.occupied() if tag_alive(o)]
                finally:
                    guard.close()
                if busy:
                    raise Pinned("a write of it is running")
            data = seg.map_data(row.segment, bytes.fromhex(row.token), row.size, populate=True)
            try:
                checksum = spill_files.write_file(settings.folder, name, data, progress)
            finally:
                data.release()
        except BaseException:
            self._undo_spill(row)
            raise
        with self.catalog.transaction():
            now = self.catalog.block(number)
            done = now is not None and now.state == "spilling" and now.mover == self.me
            if done:
                self.catalog.set_state(now, "spilled")
                self.catalog.set_spill(number, name, f"{checksum:016x}", None)
        if not done:  # freed (or taken back) meanwhile: the file is nobody's
            spill_files.remove_file(settings.folder, name)
            return
        seg.unlink_segment(row.segment)
        self._drop_freed_mappings()

    def _begin_spill(self, number: int, settings: SpillSettings, explicit: bool,
                     credit: int = 0) -> BlockRow | None:
        """Step 1 (a transaction): the block's row as ``spilling`` by this process, or None
        when it is on disk already."""
        with self.catalog.transaction():
            row = self._row(number, settled=False)
            if row.state in ("spilled", "restoring"):
                return None
            if row.state != "ok":
                raise Pinned(f"it is {row.state}")
            if row.holder is not None or self.catalog.has_pending(number):
                raise Pinned("it is being written (or not fully written yet)")
            used = self.catalog.spill_counts()[1]
            if used - credit + row.size > settings.quota:
                if explicit:
                    raise StoreFull(
                        f"cannot spill {self.block_id(number)} ({row.size} bytes): the spill "
                        f"folder of node {self.node} holds {used} of its {settings.quota} "
                        "bytes of quota", node=self.node, size=row.size, quota=settings.quota)
                raise Pinned("the spill quota is taken")
            name = spill_files.spill_file_name(self.cluster_id, self.node, number, row.token)
            self.catalog.set_state(row, "spilling")
            self.catalog.set_spill(number, name, None, self.me)
        return row._replace(state="spilling", spill_file=name, mover=self.me)

    def _undo_spill(self, row: BlockRow) -> None:
        """A spill that did not finish: the block back to ``ok``, its file gone."""
        try:
            with segment_fd(self._place(row)) as fd:
                pins.mark_moving(fd, False)
        except BlockNotFound:
            pass  # freed meanwhile
        with self.catalog.transaction():
            now = self.catalog.block(row.number)
            if now is not None and now.state == "spilling" and now.mover == row.mover:
                self.catalog.set_state(now, "ok")
                self.catalog.set_spill(row.number, None, None, None)
        folder = self.catalog.meta("spill_dir")
        if folder and row.spill_file:
            spill_files.remove_file(folder, row.spill_file)

    # -- restoring ----------------------------------------------------------------------------

    def restore(self, number: int, progress: Progress = no_progress,
                for_write: bool = False) -> BlockRow:
        """Bring a spilled block back into shared memory (spilling colder ones first if the
        node needs room); returns its row once in memory. A block in memory is left as it is;
        one another process is moving is waited for (``for_write``: a block being spilled
        too, since no write may start until it is on disk, then it is read back).

        Raises:
            BlockNotFound: no such block; or its spill file is gone or damaged (the block is
                then ``missing``).
            StoreFull: the node has no room for it, even after spilling what it could.
        """
        deadline = time.monotonic() + MOVE_WAIT_SECONDS
        while True:
            row = self._row(number, settled=False)
            moving = row.state == "restoring" or (for_write and row.state == "spilling")
            if row.state in ("ok", "spilling") and not moving:
                return row
            if moving:
                if not identity_alive(row.mover or "") and self._take_back(row):
                    continue
                if time.monotonic() > deadline:
                    raise BlockNotFound(
                        f"{self.block_id(number)} has been moved between memory and disk by "
                        f"another process for {MOVE_WAIT_SECONDS:.0f} s; try again later",
                        block_id=self.block_id(number))
                time.sleep(0.005)
                continue
            if row.state != "spilled":
                self._row(number)  # missing: the right BlockNotFound
            self.make_room(row.size, keep=number)
            restored = self._restore(row, progress)
            if restored is not None:
                return restored

    def _restore(self, row: BlockRow, progress: Progress) -> BlockRow | None:
        token = os.urandom(layout.TOKEN_SIZE)
        with self.catalog.transaction():
            now = self.catalog.block(row.number)
            if now is None or now.state != "spilled":
                return None  # somebody else is at it (or it went): look again
            stats = self.stats()
            if row.size > stats.free_for_blocks:
                stats = self.stats(fresh=True)
            if row.size > stats.free_for_blocks:
                raise StoreFull(self.full_message(row.size, stats, "restore") + "; nothing "
                                "was restored", node=self.node, size=row.size,
                                free=stats.free_for_blocks)
            self.catalog.set_state(now, "restoring")
            self.catalog.set_token(row.number, token.hex())
            self.catalog.set_spill(row.number, now.spill_file, now.checksum, self.me)
        folder = self.catalog.meta("spill_dir")
        name = str(now.spill_file)
        try:
            try:
                seg.create_segment(now.segment, now.size, token)
            except FileExistsError:  # the old memory's name, left by a spiller that died
                seg.unlink_segment(now.segment)
                seg.create_segment(now.segment, now.size, token)
            with segment_fd(self._place(now._replace(token=token.hex()))) as fd:
                checksum = spill_files.read_file(folder, name, fd, layout.HEADER_SIZE,
                                                 now.size, progress)
                pins.touch(fd)
        except FileNotFoundError:
            self._lose(now, f"its spill file {name} is gone")
        except BaseException:
            self._give_up_restore(now)
            raise
        if f"{checksum:016x}" != now.checksum:
            self._lose(now, f"its spill file {name} is damaged (checksum {checksum:016x}, "
                       f"recorded {now.checksum})")
        with self.catalog.transaction():
            again = self.catalog.block(row.number)
            if again is None or again.state != "restoring" or again.mover != self.me:
                seg.unlink_segment(now.segment)  # freed meanwhile
                raise BlockNotFound(f"{self.block_id(row.number)} was freed while restored",
                                    block_id=self.block_id(row.number))
            self.catalog.set_state(again, "ok")
            self.catalog.set_spill(row.number, None, None, None)
        spill_files.remove_file(folder, name)
        return self.catalog.block(row.number)

    def _give_up_restore(self, row: BlockRow) -> None:
        """A restore that did not finish: its new segment goes, the block stays spilled."""
        seg.unlink_segment(row.segment)
        with self.catalog.transaction():
            now = self.catalog.block(row.number)
            if now is not None and now.state == "restoring":
                self.catalog.set_state(now, "spilled")
                self.catalog.set_spill(row.number, now.spill_file, now.checksum, None)

    def _lose(self, row: BlockRow, why: str) -> None:
        """The block's bytes are gone (its file missing or damaged): it becomes ``missing``,
        its file goes."""
        seg.unlink_segment(row.segment)
        self._mark_lost(row.number)
        raise BlockNotFound(f"block {self.block_id(row.number)} cannot be restored: {why}; "
                            "deallocate it", block_id=self.block_id(row.number), node=self.node)

    def _take_back(self, row: BlockRow) -> bool:
        """Undo the move of a mover that died (spilling: back to ``ok``; restoring: back to
        ``spilled``); returns whether this process did."""
        if row.state == "spilling":
            self._undo_spill(row)
        elif row.state == "restoring":
            self._give_up_restore(row)
        else:
            return False
        return True

    def restore_block(self, number: int, progress: Progress = no_progress) -> BlockInfo:
        """Bring a spilled block back into shared memory now; returns its facts (a block in
        memory is left as it is).

        Raises:
            BlockNotFound: no such block, or its spill file is gone or damaged.
            StoreFull: the node has no room for it, even after spilling colder blocks.
        """
        try:
            return self._info(self.restore(number, self._counted(number, progress)))
        finally:
            self._moved.pop(number, None)

    def move_progress(self, number: int) -> int:
        """How many bytes of block ``number`` an explicit spill or restore by this store has
        moved so far (0 when none runs): what a caller on another host shows as progress."""
        return self._moved.get(number, 0)

    def _counted(self, number: int, progress: Progress) -> Progress:
        """``progress``, also counting the bytes in :meth:`move_progress` (from 0 again)."""
        self._moved[number] = 0

        def count(n: int) -> None:
            self._moved[number] = self._moved.get(number, 0) + n
            progress(n)

        return count

    # -- recovery -----------------------------------------------------------------------------

    def reap_moves(self) -> list[str]:
        """Undo the spills and restores whose process died; returns the blocks put right."""
        done = []
        for row in self.catalog.moving_blocks():
            if row.mover and identity_alive(row.mover) is False and self._take_back(row):
                done.append(self.block_id(row.number))
        return done
