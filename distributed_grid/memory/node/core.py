"""What every part of a node's store shares: its catalog, its rows as records, its writers' lives.

:class:`StoreCore` is the state a :class:`~distributed_grid.memory.node.store.BlockStore` is made
of (the node's catalog, its name, the segment names of its blocks, this process's identity) and
the few rules its parts (allocation and reads, writes, recovery) all apply: how a catalog row
becomes a :class:`~distributed_grid.records.BlockInfo`, when a block is usable, whether
a writer still lives, and how an undone write gives back its extents and its guard slot.

:func:`segment_fd`, :func:`open_guard` and :func:`guard_of` open a block's segment (its
descriptor, or the write guard in its header) the one way every caller needs: the segment must
hold the block's token and size, and a segment that is gone is :class:`BlockNotFound`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple, Protocol

from distributed_grid.errors import (
    BlockNotFound,
    CopiesChanged,
    GridError,
    InvalidArgument,
    KeyBusy,
)
from distributed_grid.memory.io.spill_files import remove_file
from distributed_grid.memory.node.catalog import Catalog
from distributed_grid.memory.node.schema import BlockRow, ExtentRow
from distributed_grid.memory.shm import segment as seg
from distributed_grid.memory.shm.capacity import HostRoom
from distributed_grid.memory.shm.layout import (
    READERS_TURN_OFFSET,
    segment_pattern,
    segment_prefix,
)
from distributed_grid.memory.shm.mappings import Mapped
from distributed_grid.memory.shm.seqguard import Guard, tag_alive
from distributed_grid.names import format_block_id
from distributed_grid.records import BlockInfo, PendingWrite
from distributed_grid.runtime import identity_alive, this_process

# A reader that has waited this long for writes of its bytes asks new writes to wait
# READERS_TURN_SECONDS before they start (a writer rewriting a key in a loop would otherwise
# keep a reader out: its next write starts within microseconds of the last one's end).
READERS_WAIT_BEFORE_TURN = 0.02
READERS_TURN_SECONDS = 0.5


class Placed(Mapped, Protocol):
    """Where a block's memory is: what opening its segment needs, and the block's name for a
    message (a :class:`~distributed_grid.records.BlockInfo` is one, a :class:`Place` another)."""

    @property
    def block_id(self) -> str: ...
    @property
    def node(self) -> str: ...


class Place(NamedTuple):
    """A block's memory as its catalog row says (cheaper to make than its whole facts)."""

    block_id: str
    node: str
    segment: str
    token: str
    size: int


def open_fd(block: Placed) -> int:
    try:
        return seg.open_data(block.segment, bytes.fromhex(block.token), block.size)
    except seg.SegmentNotFound as exc:
        raise BlockNotFound(f"the shared memory of {block.block_id} is gone",
                            block_id=block.block_id, node=block.node) from exc


@contextmanager
def segment_fd(block: Placed) -> Iterator[int]:
    """A descriptor of the block's segment for bulk copies (closed when the block ends).

    Raises:
        BlockNotFound: the block's memory is gone from this host (or holds another block).
    """
    fd = open_fd(block)
    try:
        yield fd
    finally:
        os.close(fd)


def readers_turn(block: Placed, seconds: float) -> None:
    """Ask new writes of the block to wait ``seconds`` before they start: a reader that has
    waited for writes of its bytes gets a turn (the header's readers' turn word, a hint)."""
    until = time.monotonic_ns() + int(seconds * 1e9)
    with segment_fd(block) as fd:
        os.pwrite(fd, until.to_bytes(8, "little"), READERS_TURN_OFFSET)


def open_guard_in_turn(block: Placed) -> Guard:
    """:func:`open_guard` for a new write: first waits while a reader has its turn (see
    :func:`readers_turn`; at most ``READERS_TURN_SECONDS``)."""
    fd = open_fd(block)
    try:
        until = int.from_bytes(os.pread(fd, 8, READERS_TURN_OFFSET), "little")
        wait = min((until - time.monotonic_ns()) / 1e9, READERS_TURN_SECONDS)
        if wait > 0:
            time.sleep(wait)
        return Guard(fd)
    finally:
        os.close(fd)


def open_guard(block: Placed) -> Guard:
    """The write guard of the block's segment (the caller closes it).

    Raises:
        BlockNotFound: as :func:`segment_fd`.
    """
    fd = open_fd(block)
    try:
        return Guard(fd)
    finally:
        os.close(fd)


@contextmanager
def guard_of(block: Placed) -> Iterator[Guard]:
    """:func:`open_guard`, closed when the block ends."""
    guard = open_guard(block)
    try:
        yield guard
    finally:
        guard.close()


class NotInMemory(GridError):
    """The block is spilled to disk (or being read back): its memory must be restored first
    (:meth:`~distributed_grid.memory.node.room.spills.StoreSpills.restore`, which the store's
    accesses do themselves). Not a :class:`BlockNotFound`: a caller that meets it must never
    take the block for gone (a replicated block would drop the copy)."""


class StoreCore:
    """The state and shared rules of one node's store, as seen from a process of its host.

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
        self.prefix = segment_prefix(cluster_id, node)
        self._segment_re = segment_pattern(cluster_id, node)
        self.me = this_process()
        self.room = HostRoom()  # the host's bounds on new blocks, read on a clock

    def block_id(self, number: int) -> str:
        """The id of block ``number`` of this node."""
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
        if settled and row.state in ("spilled", "restoring"):
            raise NotInMemory(
                f"block {self.block_id(number)} is spilled to disk on node {self.node}; it is "
                "restored when used", block_id=self.block_id(number), node=self.node)
        if settled and row.state not in ("ok", "spilling"):
            raise BlockNotFound(
                f"block {self.block_id(number)} lost its shared memory (segment "
                f"{row.segment} is gone from this host); deallocate it",
                block_id=self.block_id(number), node=self.node,
            )
        return row

    def _place(self, row: BlockRow) -> Place:
        """Where the block of ``row`` has its memory."""
        return Place(self.block_id(row.number), self.node, row.segment, row.token, row.size)

    def _info(self, row: BlockRow, extents: list[ExtentRow] | None = None) -> BlockInfo:
        """The block's facts from its row and extents (read now when not given)."""
        if extents is None:
            extents = self.catalog.extents(row.number)
        keys: dict[str, list[tuple[int, int]]] = {}
        pending: list[PendingWrite] = []
        for e in extents:
            if e.complete:
                keys.setdefault(e.key, []).append((e.offset, e.length))
            else:
                pending.append(PendingWrite(e.key, e.offset, e.length, e.writer))
        moved = row.state in ("spilling", "spilled", "restoring")
        return BlockInfo(
            block_id=self.block_id(row.number), node=self.node, number=row.number,
            size=row.size, used=row.high_water, created=row.created,
            status="ok" if moved else row.state, state=row.state if moved else "memory",
            segment=row.segment, token=row.token, keys=keys,
            pending_keys=sorted({p.key for p in pending}), persistent=row.lease is None,
            pending=pending, slab=bool(row.slab), replica_of=row.replica_of,
            replicas=[self.node], for_key=row.for_key, paged=row.paged,
        )

    def check_copy(self, row: BlockRow, replica_of: str | None, doing: str,
                   epoch: int | None = None) -> None:
        """Refuse a change of a copy of a replicated block that does not come through that
        block (its copies would drift apart), or (``epoch``) whose writer knows an older set of
        the block's copies than the copy does.

        Raises:
            BlockNotFound: ``replica_of`` names a replicated block this block is not a copy of
                (its copy here is gone: a block of that number is another block).
            InvalidArgument: the block is a copy and ``replica_of`` does not name its block.
            CopiesChanged: ``epoch`` is older than the copy's.
        """
        if replica_of is not None and replica_of != row.replica_of:
            block_id = self.block_id(row.number)
            raise BlockNotFound(f"{block_id} is not a copy of {replica_of} (that copy is gone "
                                "from this node)", block_id=block_id, node=self.node)
        if row.replica_of is not None and replica_of != row.replica_of:
            raise InvalidArgument(
                f"{self.block_id(row.number)} is a copy of the replicated block "
                f"{row.replica_of}; {doing} {row.replica_of} instead (every copy of it changes "
                "together)", block_id=self.block_id(row.number), replica_of=row.replica_of)
        if row.replica_of is not None and epoch is not None and epoch < row.epoch:
            raise CopiesChanged(
                f"the copies of {row.replica_of} changed (a copy is being added, epoch "
                f"{row.epoch}); write again with the new set", block_id=row.replica_of,
                epoch=row.epoch)

    def _key_info(self, row: BlockRow, key: str | None) -> BlockInfo:
        """The block's facts as a write of ``key`` reports them: that key's extents alone."""
        return self._info(row, [] if key is None else self.catalog.key_extents(key, row.number))

    def bare_info(self, number: int) -> BlockInfo:
        """A usable block's facts without its keys (one row read): what a copy needs.

        Raises:
            BlockNotFound: no such block, or its segment is gone.
        """
        return self._info(self._row(number), [])

    # -- writers' lives -------------------------------------------------------------------------

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

    # -- undoing writes -------------------------------------------------------------------------

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

    def _key_rows_settled(self, key: str, released: list[ExtentRow],
                          doing: str) -> tuple[list[ExtentRow], BlockRow | None]:
        """The key's extents (complete only, once this returns) and its block's row, read inside
        a transaction of a change that replaces or removes the whole key: pending writes whose
        writer is gone are undone first (their guard slots go in ``released``, for after the
        transaction).

        Args:
            doing: what the change is, for the message (``delete key 'k'``).

        Raises:
            KeyBusy: a live writer is writing the key; nothing changed.
        """
        extents, row = self.catalog.key_rows_and_block(key)
        undone = False
        for p in [e for e in extents if not e.complete]:
            if self.write_gone(p):
                released += self._forget_write(p)
                undone = True
                continue
            owner = PendingWrite(p.key, p.offset, p.length, p.writer).owner
            raise KeyBusy(
                f"cannot {doing}: it is being written (bytes {p.offset}..{p.end} of "
                f"{self.block_id(p.block)}, by {owner}); try again when that write has "
                "finished", key=key, block_id=self.block_id(p.block), writer=p.writer)
        if undone:
            extents, row = self.catalog.key_rows_and_block(key)
        return extents, row

    def _release_guards(self, writes: list[ExtentRow]) -> None:
        """Release the write-guard slots undone writes held (by their owner tag: a slot taken
        meanwhile by another writer is left alone)."""
        for w in writes:
            if w.slot is None or w.guard is None:
                continue
            row = self.catalog.block(w.block)
            if row is None:
                continue
            try:
                with guard_of(self._place(row)) as guard:
                    guard.release(w.slot, w.guard)
            except BlockNotFound:
                continue

    def _free_memory(self, row: BlockRow) -> None:
        """Give back what a block whose row was deleted held: its segment, and its spill file
        (when it has one)."""
        seg.unlink_segment(row.segment)
        if row.spill_file is not None:
            folder = self.catalog.meta("spill_dir")
            if folder:
                remove_file(folder, row.spill_file)

    def _mark_lost(self, number: int) -> bool:
        """A spilled block whose file is gone or damaged becomes ``missing`` (its file, if
        any, is deleted); returns whether it did."""
        with self.catalog.transaction():
            now = self.catalog.block(number)
            if now is None or now.state not in ("restoring", "spilled"):
                return False
            self.catalog.set_state(now, "missing")
            self.catalog.set_spill(number, None, None, None)
        folder = self.catalog.meta("spill_dir")
        if folder and now.spill_file:
            remove_file(folder, now.spill_file)
        return True

    def _drop_freed_mappings(self) -> None:
        """Close this process's kept mappings of unlinked segments (a node of this host keeps
        some), so their memory goes now."""

    def close(self) -> None:
        """Close this process's connection to the catalog."""
        self.catalog.close()
