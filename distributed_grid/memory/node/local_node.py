"""A node whose catalog is on this host, reached with no round trip.

:class:`LocalNode` is the node's :class:`~distributed_grid.memory.node.store.BlockStore`, run in
this process over the node's catalog: metadata changes are catalog transactions; bulk copies go
through the segments' descriptors or a mapping this process keeps, and a view maps the block's
segment. The pool reaches a node of its own host this way, and the node's store actor serves
other hosts from one.

Every copy is guarded (the write guard in each segment's header, ``memory/shm/seqguard.py``): a
write holds a slot naming its range from before ``prepare_write`` until after ``commit_write``
(or ``abort_write``), and a read waits while a slot overlaps its range, copies, and copies
again if a write started or ended meanwhile (:func:`~distributed_grid.memory.shm.seqguard.
read_untorn`). So a read returns the bytes from before a concurrent write or from after it,
never a mix. A slot whose owner died is released by the first reader that meets it, after the
writes of that owner are undone.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from distributed_grid.errors import BlockNotFound, WriteInProgress
from distributed_grid.memory.io import copies, sinks, sources
from distributed_grid.memory.node.core import (
    READERS_TURN_SECONDS,
    READERS_WAIT_BEFORE_TURN,
    NotInMemory,
    open_fd,
    open_guard_in_turn,
    readers_turn,
    segment_fd,
)
from distributed_grid.memory.node.views import PIN_TRIES, NodeViews
from distributed_grid.memory.shm import layout
from distributed_grid.memory.shm.mappings import Mappings
from distributed_grid.memory.shm.pins import touch
from distributed_grid.memory.shm.seqguard import Guard, process_tag, read_untorn, tag_alive
from distributed_grid.names import check_range
from distributed_grid.records import BlockInfo
from distributed_grid.wire import READ_WAIT_SECONDS

# A write of a buffer, or a read into one, of at least MAPPED_MIN bytes and a quarter of the
# block goes through a mapping of the block this process keeps (the last KEPT_MAPPINGS stay for
# the next copy), copied on two threads, each mapping the pages of its next piece in one call
# first (``copies.populate``): 1 GiB written into a kept mapping in 0.10 s here against 0.30 s
# with ``pwrite``, read into new bytes in 0.18 s against 0.26 s with ``preadv``. Pages never
# written take ``copies.fill_both_ways`` (``pwrite`` and the mapping at once).
MAPPED_MIN = 16 * 2**20
KEPT_MAPPINGS = 2


@dataclass
class HeldSlot:
    """A write-guard slot a running write holds."""

    guard: Guard
    slot: int
    tag: int
    range: tuple[int, int]
    writer: str | None = None


class LocalNode(NodeViews):
    """A node of this host: its store in this process, and zero-copy access to its blocks.

    Args:
        node: the node's name.
        cluster_id: the cluster's identity.
        capacity: the cap on the node's block bytes (None: what the host can back).
    """

    is_local = True
    kept_mappings = KEPT_MAPPINGS  # how many mappings of its blocks the process keeps

    def __init__(self, node: str, cluster_id: str, capacity: int | None = None) -> None:
        super().__init__(node, cluster_id, capacity)
        self._held: dict[tuple[int, int, str | None], list[HeldSlot]] = {}
        self._held_lock = threading.Lock()
        self._tag: tuple[int, int] | None = None
        self._maps = Mappings(self.kept_mappings)

    def tag(self) -> int:
        """This process's owner tag for guard slots (computed again after a fork)."""
        pid = os.getpid()
        if self._tag is None or self._tag[0] != pid:
            self._tag = (pid, process_tag(pid) or pid << 32)
        return self._tag[1]

    # -- writes: hold a guard slot from prepare to commit ----------------------------------------

    def prepare_write(self, number: int, offset: int, length: int, key: str | None = None,
                      force: bool = False, writer: str | None = None,
                      replica_of: str | None = None, epoch: int = 0,
                      slot: int | None = None, guard: int | None = None) -> BlockInfo:
        """:meth:`BlockStore.prepare_write`, holding the range's guard slot until the write
        commits or aborts (a write of no bytes holds none). A spilled block is restored first
        (one being spilled: once it is on disk)."""
        for _ in range(PIN_TRIES):
            try:
                return self._prepare(number, offset, length, key, force, writer, replica_of,
                                     epoch, slot, guard)
            except NotInMemory:
                self.restore(number, for_write=True)
        raise WriteInProgress(f"{self.block_id(number)} kept moving to disk before a write of "
                              "it could start; try again", block_id=self.block_id(number))

    def _prepare(self, number: int, offset: int, length: int, key: str | None, force: bool,
                 writer: str | None, replica_of: str | None, epoch: int, slot: int | None,
                 guard: int | None) -> BlockInfo:
        if length <= 0 or slot is not None:
            return super().prepare_write(number, offset, length, key, force, writer, replica_of,
                                         epoch, slot, guard)
        row = self._row(number)
        check_range(self.block_id(number), row.size, offset, length, "write")  # before a slot
        g = open_guard_in_turn(self._place(row))  # after a reader that waited, if one did
        tag = self.tag()
        if (taken := g.claim(tag, offset, offset + length)) < 0:
            g.close()
            raise WriteInProgress(f"{self.block_id(number)} has as many writes running as its "
                                  "header can track; try again when one has finished",
                                  block_id=self.block_id(number))
        try:
            info = super().prepare_write(number, offset, length, key, force, writer, replica_of,
                                         epoch, taken, tag)
        except BaseException:
            g.release(taken, tag)
            g.close()
            raise
        with self._held_lock:
            self._held.setdefault((number, offset, key), []).append(
                HeldSlot(g, taken, tag, (offset, offset + length), writer))
        return info

    def _let_go(self, number: int, offset: int, key: str | None) -> None:
        with self._held_lock:
            held = self._held.get((number, offset, key))
            slot = held.pop(0) if held else None
            if held == []:
                del self._held[(number, offset, key)]
        if slot is not None:
            slot.guard.release(slot.slot, slot.tag)
            slot.guard.close()

    def held_writes(self) -> list[tuple[tuple[int, int, str | None], HeldSlot]]:
        """The guard slots of this process's running writes, by ``(number, offset, key)``."""
        with self._held_lock:
            return [(write, held) for write, slots in self._held.items() for held in slots]

    def commit_write(self, number: int, offset: int, length: int, key: str | None = None,
                     meta: dict[str, Any] | None = None) -> BlockInfo:
        """:meth:`BlockStore.commit_write`, then the guard slot goes (readers then see the
        committed key and its new bytes together)."""
        try:
            return super().commit_write(number, offset, length, key, meta)
        finally:
            self._let_go(number, offset, key)

    def abort_write(self, number: int, offset: int, key: str | None = None,
                    torn: bool = True) -> None:
        try:
            super().abort_write(number, offset, key, torn)
        finally:
            self._let_go(number, offset, key)

    # -- bytes ---------------------------------------------------------------------------------

    def fill(self, block: BlockInfo, offset: int, length: int, source: sources.Source,
             progress: copies.Progress = copies.no_progress) -> None:
        """Copy ``length`` bytes from ``source`` into the block at ``offset`` (inside a write
        prepared by this process): through a kept mapping when the copy is big (see
        ``MAPPED_MIN``) and the source is in memory (one buffer, or several one after another)
        or the block's pages there exist (written before, or the block took a spare: a file is
        then read straight into them), else with ``pwrite``."""
        mapped_copy = self._mapped_copy(block, length)
        parts = source.parts() if mapped_copy else None
        paged = offset + length <= max(block.used, block.paged)  # its pages exist
        if parts is not None or (mapped_copy and paged):
            with self._maps.mapped(block) as mapped:
                if mapped is not None:
                    end = offset + length
                    with mapped.data()[offset:end] as dest:
                        if parts is None:  # a file into pages that exist: read straight in
                            copies.read_into_mapped(dest, source, progress)
                        elif paged:
                            fault_in = None if mapped.has_pages(offset, end) else "dest"
                            for at, part in parts:
                                copies.copy(dest[at : at + len(part)], part, progress,
                                            fault_in)
                        else:
                            with segment_fd(block) as fd:
                                for at, part in parts:
                                    copies.fill_both_ways(fd, layout.HEADER_SIZE + offset + at,
                                                          dest[at : at + len(part)], part,
                                                          progress)
                            return
                    mapped.note_pages(offset, end)
                    return
        with segment_fd(block) as fd:
            self._touch(fd)
            copies.fill_fd(fd, layout.HEADER_SIZE + offset, length, source, progress)

    @staticmethod
    def _mapped_copy(block: BlockInfo, length: int) -> bool:
        """Whether a copy of ``length`` bytes of the block goes through a kept mapping."""
        return length >= MAPPED_MIN and 4 * length >= block.size

    def drain(self, block: BlockInfo, offset: int, length: int, sink: sinks.Sink,
              progress: copies.Progress = copies.no_progress) -> None:
        """Hand ``length`` bytes of the block from ``offset`` to ``sink``, in order, as they
        were before or after any concurrent write of them, never a mix.

        Raises:
            WriteInProgress: a live writer held the bytes for longer than ``READ_WAIT_SECONDS``.
        """
        if length <= 0:
            return
        fd, block = self._open_in_memory(block)
        try:
            self._touch(fd)
            guard = Guard(fd)  # the guard of the same segment: no second open
            try:
                self._drain(block, fd, guard, offset, length, sink, progress)
            finally:
                guard.close()
        finally:
            os.close(fd)

    def _touch(self, fd: int) -> None:
        """Record a use of the block (the spiller's order): on a node that spills only."""
        if self.spill_settings() is not None:
            touch(fd)

    def _open_in_memory(self, block: BlockInfo) -> tuple[int, BlockInfo]:
        """A descriptor of the block's segment, and its facts: those given, or, when its
        memory moved (spilled, and restored now if need be), its facts as they are now.

        Raises:
            BlockNotFound: the block is gone.
        """
        try:
            return open_fd(block), block
        except BlockNotFound:
            row = self.restore(block.number)
            if row.segment != block.segment:
                raise
            block = replace(block, token=row.token, status="ok", state="memory")
            return open_fd(block), block

    def _drain(self, block: BlockInfo, fd: int, guard: Guard, offset: int, length: int,
               sink: sinks.Sink, progress: copies.Progress) -> None:
        if isinstance(sink, sinks.BufferSink) and self._mapped_copy(block, length):
            with self._maps.mapped(block) as mapped:
                if mapped is not None:
                    paged = mapped.has_pages(offset, offset + length)
                    with mapped.data()[offset : offset + length] as src:
                        self.guarded(block, guard, offset, length, sink.mark, sink.rewind,
                                     lambda: sink.write_mapped(src, progress, paged))
                    mapped.note_pages(offset, offset + length)
                    return
        base = layout.HEADER_SIZE + offset
        if sink.rewindable:
            self.guarded(block, guard, offset, length, sink.mark, sink.rewind,
                         lambda: sinks.drain_fd(fd, base, length, sink, progress))
            return
        spool = sinks.SpoolSink()  # the sink gets the bytes only once whole
        try:
            self.guarded(block, guard, offset, length, spool.mark, spool.rewind,
                         lambda: sinks.drain_fd(fd, base, length, spool))
            spool.hand_to(sink, progress)
        finally:
            spool.close()

    def guarded(self, block: BlockInfo, guard: Guard, offset: int, length: int,
                mark: Callable[[], int], rewind: Callable[[int], None],
                copy: Callable[[], object]) -> int:
        """Run ``copy`` until it ran while no write of ``offset..offset+length`` started, ran
        or ended (:func:`~distributed_grid.memory.shm.seqguard.read_untorn`); returns how many
        runs it took beyond the first.

        Raises:
            WriteInProgress: a live writer held the range for ``READ_WAIT_SECONDS``.
        """
        started = time.monotonic()  # a read torn again and again waits as long as it tried
        return read_untorn(lambda: self.wait_idle(block, guard, offset, offset + length,
                                                  started),
                           copy, guard.end_read, mark, rewind, block.block_id, offset, length)

    def wait_idle(self, block: BlockInfo, guard: Guard, offset: int, end: int,
                  started: float | None = None) -> int:
        """Wait until no write holds bytes ``offset..end`` of the block; returns the guard's
        sequence then. A slot whose owner died is cleared (its writes undone) at once; a read
        waiting since ``started`` (None: now) gets its turn (:func:`~distributed_grid.memory.
        node.core.readers_turn`) after ``READERS_WAIT_BEFORE_TURN``.

        Raises:
            WriteInProgress: a live writer held the range for ``READ_WAIT_SECONDS``.
        """
        deadline = time.monotonic() + READ_WAIT_SECONDS
        turn_at: float | None = (time.monotonic() - READERS_WAIT_BEFORE_TURN
                                 if started is None else started) + READERS_WAIT_BEFORE_TURN
        delay = 50e-6
        while True:
            seq, busy = guard.begin_read(offset, end)
            if busy == 0:
                return seq
            if turn_at is not None and time.monotonic() >= turn_at:
                readers_turn(block, READERS_TURN_SECONDS)
                turn_at = None
            if not tag_alive(busy):
                self.clear_dead_slots(block.number, guard)
                continue
            if time.monotonic() > deadline:
                raise WriteInProgress(
                    f"bytes {offset}..{end} of {block.block_id} have been written by process "
                    f"{busy >> 32} for more than {READ_WAIT_SECONDS:g} s; try again later",
                    block_id=block.block_id, pid=busy >> 32)
            time.sleep(delay)
            delay = min(delay * 2, 0.01)

    def clear_dead_slots(self, number: int, guard: Guard) -> int:
        """Undo the writes of dead writers, then release the block's guard slots whose owner
        is dead and that no pending write names (taken before the write was recorded: no byte
        was copied). Returns how many slots went."""
        self.reap_writes()
        named = {(e.slot, e.guard) for e in self.catalog.pending_extents()
                 if e.block == number}
        cleared = 0
        for slot, owner, _, _ in guard.occupied():
            if not tag_alive(owner) and (slot, owner) not in named:
                cleared += guard.release(slot, owner)
        return cleared

    def deallocate(self, number: int, replica_of: str | None = None) -> BlockInfo:
        try:
            return super().deallocate(number, replica_of)
        finally:
            self._drop_freed_mappings()  # this process holds the freed memory no longer

    def _drop_freed_mappings(self) -> None:
        self._maps.drop_stale()
        super()._drop_freed_mappings()

    def close(self) -> None:
        """Close the kept mappings and the catalog (live views stay valid)."""
        self._maps.close()
        super().close()

    def change_mark(self) -> tuple[int, int] | None:
        """The version of the node's catalog: it changes with every commit, this process's own
        (other threads') included."""
        return self.catalog.change_mark()

    def start(self, method: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        """Run the store's ``method`` (a method of :class:`~distributed_grid.memory.client.nodes.
        NodeStore`, by its name) now; returns what gives its result (as a remote node's
        ``start`` does, which only sends the call)."""
        result = getattr(self, method.__name__)(*args)
        return lambda: result
