"""Writes through the pool: files, streams and buffers, into a block or under a key.

A write is prepare (the node's catalog claims the range, and the key's extent as pending) →
claim the key in the cluster's key directory → copy the bytes → commit (or abort, which undoes
the catalog's claim and drops the key's bytes the copy may have torn). Without a block id the
bytes go to the key's place when they fit there, else to a block allocated for them, held for
this process's write and freed again if the write fails. A stream (a pipe, standard input) is
held whole first (``memory/io/spool.py``), so a new block fits exactly what arrived and a
stream too long for its place changes nothing.
"""

from __future__ import annotations

from typing import Any, BinaryIO, NamedTuple

from distributed_grid.cluster.config import memory_cap
from distributed_grid.errors import (
    FileError,
    GridError,
    InvalidArgument,
    KeyConflict,
    NodeNotFound,
    NodeUnavailable,
    OutOfBounds,
    StoreFull,
)
from distributed_grid.memory.client.allocation import Allocator
from distributed_grid.memory.client.keys import KeyIndex
from distributed_grid.memory.client.router import Router
from distributed_grid.memory.io import copies, inputs, sources, spool
from distributed_grid.memory.node.slabs import SMALL_MAX
from distributed_grid.names import Key, check_start
from distributed_grid.records import BlockInfo, StoreResult
from distributed_grid.runtime import this_process

Progress = copies.Progress


class Replication(NamedTuple):
    """How many copies a new block for a key gets, and whether the caller asked for them: a
    key that exists keeps the copies it has, and a request for another number is refused."""

    count: int = 1
    asked: bool = False


ONE_COPY = Replication()


class Writer:
    """Writes of one pool.

    Args:
        router: the pool's nodes.
        keys: the cluster's keys.
        allocator: makes the blocks a write without a block id needs.
    """

    def __init__(self, router: Router, keys: KeyIndex, allocator: Allocator) -> None:
        self.router = router
        self.keys = keys
        self.allocator = allocator

    def store_file(self, key: Key, path: str, block_id: str | None, offset: int, force: bool,
                   progress: Progress | None, on_size: Progress | None,
                   replicas: Replication = ONE_COPY) -> StoreResult:
        """Store a file's bytes under ``key``; returns where they went.

        Without ``block_id`` the key's existing place is reused when the file fits there, else
        a block that fits is allocated (``offset`` must then be 0). With ``block_id`` the bytes
        go at ``offset``. A FIFO (or a pipe named by path, ``/dev/stdin``) is read to its end as
        :meth:`store_stream` reads one, once its first bytes came: it may take
        ``$DISTRIBUTED_GRID_INPUT_WAIT_SECONDS`` (default 30) to bring them.

        Args:
            on_size: called with the file's size before its bytes are copied.
            replicas: the copies of a block allocated for the bytes (see :class:`Replication`).

        Raises:
            FileError: the file cannot be read (no such file, a directory, a device, a /proc
                file), or a FIFO brought nothing, or nothing within the wait.
            InvalidArgument: an offset without a block id.
            OutOfBounds: the file does not fit in the block at ``offset``.
            KeyConflict: the range holds bytes of another key (and not ``force``), or the key
                lives in another block.
        """
        _check_place(block_id, offset)
        if block_id is not None:
            self.room(block_id, offset)  # a wrong block is told before a FIFO is waited on
        with inputs.open_path(path) as source:
            return self.store_stream(key, source, block_id, offset, force, progress, on_size,
                                     replicas)

    def store_stream(self, key: Key, source: inputs.Input | int | BinaryIO,
                     block_id: str | None, offset: int, force: bool, progress: Progress | None,
                     on_size: Progress | None, replicas: Replication = ONE_COPY) -> StoreResult:
        """Store what ``source`` brings, to its end, under ``key``; returns where it went.

        ``source`` is a descriptor (0: standard input), a binary file object, or an
        :class:`~distributed_grid.memory.io.inputs.Input`; it is not closed. A regular file
        is copied from its current position, as :meth:`store_file` copies one. Anything else
        (a pipe, a FIFO, a terminal, ``io.BytesIO``) is read to its end first, in memory up to
        64 MiB and beyond in an unnamed temporary file, and only then written: without
        ``block_id`` the block allocated fits exactly what arrived (or the key's place is
        reused, as :meth:`store_file` does); with ``block_id``, a stream longer than the room
        at ``offset`` is refused as soon as it is, and nothing is changed.

        Args:
            progress: called with the bytes read from a stream, or copied from a file.
            on_size: called with the size of a regular file before its bytes are copied.

        Raises:
            FileError: nothing arrived (an empty key is refused), or the input cannot be read.
            InvalidArgument: an offset without a block id.
            OutOfBounds: the bytes do not fit in the block at ``offset``.
            KeyConflict: the range holds bytes of another key (and not ``force``), or the key
                lives in another block.
        """
        _check_place(block_id, offset)
        room = None if block_id is None else self.room(block_id, offset)
        given = inputs.given_input(source)
        if given.size is not None:
            if on_size is not None:
                on_size(given.size)
            if given.size == 0 and not given.empty_ok:
                raise FileError(f"nothing arrived on {given.name}; nothing was stored")
            result = self.store_source(
                key, given.size, sources.FileSource(given.fd, given.name, given.size,
                                                    given.start),
                block_id, offset, force, progress, replicas)
            given.consumed()
            return result
        try:
            held = spool.read_to_end(given, room, progress)
        except OutOfBounds as exc:
            size = (room or 0) + offset
            raise OutOfBounds(
                f"{given.name} brought more than {room} bytes: at most {room} bytes fit in "
                f"{block_id} (size {size}) from offset {offset}; nothing was written",
                block_id=block_id, offset=offset, block_size=size) from exc
        try:
            if held.pos == 0:
                raise FileError(f"nothing arrived on {given.name}; nothing was stored")
            return self.store_source(key, held.pos, spool.spooled_source(held, given.name),
                                     block_id, offset, force, None, replicas)
        finally:
            held.close()

    def room(self, block_id: str, offset: int) -> int:
        """The bytes that fit in ``block_id`` from ``offset`` (the block must exist).

        Raises:
            OutOfBounds: ``offset`` is negative or past the block's end.
            BlockNotFound: no such block.
        """
        check_start(offset)
        number, node = self.router.block_node(block_id)
        block = node.block_info(number)
        if offset > block.size:
            raise OutOfBounds(f"offset {offset} is past the end of {block_id} (size "
                              f"{block.size})", block_id=block_id, offset=offset)
        return block.size - offset

    def store_source(self, key: Key, length: int, source: sources.Source,
                     block_id: str | None, offset: int, force: bool,
                     progress: Progress | None,
                     replicas: Replication = ONE_COPY) -> StoreResult:
        """Write ``length`` bytes of ``source`` under ``key``: at ``offset`` of ``block_id``,
        or (without it) in the key's place or a block allocated for them (freed again if the
        write fails)."""
        allocated = None
        if block_id is None:
            block_id, offset, allocated = self.place_for(key, length, None, replicas)
        try:
            info = self.write(block_id, offset, length, key, force, source, progress)
        except BaseException:
            if allocated is not None:
                self.allocator.deallocate(allocated)
            raise
        return StoreResult(block=info, key=key, offset=offset, length=length,
                           allocated=allocated is not None)

    def put_small(self, key: Key, data: Any, length: int, node: str | None,
                  meta: dict[str, Any] | None,
                  replicas: Replication = ONE_COPY) -> StoreResult | None:
        """Store a small value (a bytes-like object, or a list of them one after another)
        under ``key`` in a slab of its node (``memory/node/slabs.py``): one catalog transaction
        there and one claim in the key directory. None when it does not go to a slab: too big,
        replicated (slabs hold one copy), a pool whose blocks live by its lease, a key that
        lives in a block of its own (the caller then writes it the general way), or no room
        for a new slab (the general way then says how much room there is).

        Raises:
            KeyConflict: another node's block holds the key (nothing is left stored).
            KeyBusy: a live writer is writing the key.
        """
        if length > SMALL_MAX or self.allocator.lease is not None or replicas.count > 1:
            return None
        found, _ = self.keys.find(key, versioned=False)
        if found is not None and not found.block.slab:
            return None
        name = found.block.node if found is not None else node or self.allocator.best_node()
        try:
            target = self.router.node(name)
            info = target.put_small(key, data, meta, memory_cap(name))
        except StoreFull:
            return None  # the general way ranks the nodes again, and says what room is left
        except (NodeNotFound, NodeUnavailable):
            if found is not None or node is not None:
                raise
            self.allocator.forget_best()  # the node it chose a moment ago is gone
            return None
        if found is None or found.block_id != info.block_id:
            try:
                self.keys.claim(key, info.block_id)
            except BaseException:
                try:
                    target.delete_key(key)  # another block holds it: ours goes
                except GridError:
                    pass
                raise
        if target.is_local:
            self.keys.saw(key, name)
        return StoreResult(block=info, key=key, offset=info.keys[key][0][0], length=length,
                           allocated=False)

    def place_for(self, key: Key, length: int, node: str | None = None,
                  replicas: Replication = ONE_COPY) -> tuple[str, int, str | None]:
        """Where bytes stored under ``key`` without a block id go.

        The key's place when it has one extent and the bytes fit there, else a new block (on
        ``node`` when given), held for this process's write: if the process dies before the
        write commits, the block is freed. The new block is allocated for ``key``: deleting
        the key frees it when no other key lives in it.

        A new block has ``replicas.count`` copies; a key that exists keeps the copies it has,
        and asking for another number (one copy against several) is refused.

        Returns:
            ``(block_id, offset, allocated_block_id_or_None)``.

        Raises:
            KeyConflict: the key exists elsewhere and the bytes do not fit in its place, or it
                has other copies than asked for.
        """
        found, _ = self.keys.find(key, versioned=False)
        if found is not None and replicas.asked and \
                (found.block.replica_of is not None) != (replicas.count > 1):
            have = "one copy" if found.block.replica_of is None else \
                f"the copies {', '.join(found.block.replicas)}"
            raise KeyConflict(
                f"key {key!r} lives in {found.block_id} with {have}, and {replicas.count} "
                f"copies were asked for; delete it first (grid memory delete {key}) to store it "
                "with others", key=key, block_id=found.block_id)
        if found is not None and found.block.slab:
            raise KeyConflict(
                f"key {key!r} is a small value in {found.block_id}, a slab of the store (from "
                f"put); it is replaced by a put of up to {SMALL_MAX} bytes, or deleted first "
                f"(grid memory delete {key}) to store other bytes under it", key=key,
                block_id=found.block_id)
        if found is not None:
            start = found.extents[0][0]
            if len(found.extents) == 1 and start + length <= found.block.size:
                return found.block_id, start, None
            raise KeyConflict(
                f"key {key!r} already lives in {found.block_id} ({len(found.extents)} "
                f"extent(s), block size {found.block.size}) and the new {length} bytes do not "
                f"replace it in place; store it with --block-id {found.block_id} --offset N, "
                f"or deallocate {found.block_id} first", key=key, block_id=found.block_id)
        info = self.allocator.allocate(max(length, 1), node, holder=this_process(), for_key=key,
                                       replicas=replicas.count)
        return info.block_id, 0, info.block_id

    def write(self, block_id: str, offset: int, length: int, key: Key | None, force: bool,
              source: sources.Source, progress: Progress | None,
              meta: dict[str, Any] | None = None) -> BlockInfo:
        """prepare (claims the range) → claim the key in the directory → copy → commit."""
        number, node = self.router.block_node(block_id)
        block = node.prepare_write(number, offset, length, key, force, this_process())
        copying = False
        try:
            if key is not None:
                self.keys.claim(key, block_id)
            copying = True
            node.fill(block, offset, length, source, progress or copies.no_progress)
            return node.commit_write(number, offset, length, key, meta)
        except BaseException:
            try:
                node.abort_write(number, offset, key, torn=copying)
            except GridError:
                pass
            raise


def source_of(data: Any) -> sources.Source:
    """A bytes-like object, or a list (or tuple) of them written one after another, as the
    source of a write (no copy into one buffer first)."""
    if isinstance(data, (list, tuple)):
        return sources.GatherSource([memoryview(part).cast("B") for part in data])
    return sources.BufferSource(memoryview(data).cast("B"))


def _check_place(block_id: str | None, offset: int) -> None:
    """Refuse an offset without a block: bytes without a block id go to a new block (or to
    the key's place) from its start."""
    check_start(offset)
    if block_id is None and offset:
        raise InvalidArgument(
            f"offset {offset} needs a block id (--block-id BLOCK): without one the bytes go to "
            "a new block, or to the key's place, from its start", offset=offset)
