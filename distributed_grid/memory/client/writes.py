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

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO

from distributed_grid.cluster.config import memory_cap
from distributed_grid.errors import (
    FileError,
    GridError,
    InvalidArgument,
    NodeNotFound,
    NodeUnavailable,
    OutOfBounds,
    StoreFull,
)
from distributed_grid.memory.client.allocation import Allocator
from distributed_grid.memory.client.key_places import ONE_COPY, KeyPlaces, Replication
from distributed_grid.memory.client.keys import KeyIndex
from distributed_grid.memory.client.router import Router
from distributed_grid.memory.io import copies, inputs, sinks, sources, spool
from distributed_grid.memory.node.slabs import SMALL_MAX
from distributed_grid.names import Key, check_range, check_start
from distributed_grid.records import BlockInfo, StoreResult
from distributed_grid.runtime import this_process

Progress = copies.Progress




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
        self.places = KeyPlaces(keys, allocator)

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
                     progress: Progress | None, replicas: Replication = ONE_COPY,
                     node: str | None = None,
                     meta: dict[str, Any] | None = None) -> StoreResult:
        """Write ``length`` bytes of ``source`` under ``key``: at ``offset`` of ``block_id``,
        or (without it) where :mod:`.key_places` says: a new block (on ``node`` when given;
        freed again if the write fails), or a new version beside the key's old one."""
        allocated = replaces = None
        if block_id is None:
            block_id, offset, allocated, replaces = self.places.place(key, length, node,
                                                                      replicas)
        try:
            info = self.write(block_id, offset, length, key, force, source, progress, meta,
                              replaces)
        except BaseException:
            if allocated is not None:
                self.allocator.deallocate(allocated)
            raise
        if replaces is not None and info.replica_of is not None:
            self._forget_old_version(replaces)
        return StoreResult(block=info, key=key, offset=offset, length=length,
                           allocated=allocated is not None)

    def _forget_old_version(self, replaces: str) -> None:
        """After a replicated key's new version committed: its old block's copies went with
        it on the nodes of the new copies; any other (on a node the new block has no copy on)
        goes now, and the old block leaves the directory."""
        try:
            number, old = self.router.block_node(replaces)
            old.deallocate(number, replaces)  # forgets the block in the directory too
        except GridError:  # every copy went already
            self.router.directory.forget_replicated(replaces)

    def write_value(self, key: Key, data: Any, length: int, node: str | None,
                    meta: dict[str, Any] | None,
                    replicas: Replication = ONE_COPY) -> StoreResult:
        """Store ``length`` bytes of ``data`` (a bytes-like object, or a list of them one after
        another) under ``key`` with ``meta``: a small one in a slab (:meth:`put_small`), any
        other where :mod:`.key_places` says (see :meth:`store_source`).

        Raises:
            KeyConflict: the key lives where these bytes cannot replace it.
        """
        small = self.put_small(key, data, length, node, meta, replicas)
        if small is not None:
            return small
        return self.store_source(key, length, source_of(data), None, 0, False, None, replicas,
                                 node, meta)

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

    def write(self, block_id: str, offset: int, length: int, key: Key | None, force: bool,
              source: sources.Source, progress: Progress | None,
              meta: dict[str, Any] | None = None, replaces: str | None = None) -> BlockInfo:
        """prepare (claims the range) → claim the key in the directory → copy → commit.

        Args:
            replaces: the key's block whose version this write replaces (copy-on-write)."""
        number, node = self.router.block_node(block_id)
        block = node.prepare_write(number, offset, length, key, force, this_process())
        copying = False
        try:
            if key is not None:
                self.keys.claim(key, block_id, replaces)
            copying = True
            node.fill(block, offset, length, source, progress or copies.no_progress)
            return node.commit_write(number, offset, length, key, meta)
        except BaseException:
            try:
                node.abort_write(number, offset, key, torn=copying)
            except GridError:
                pass
            raise


@contextmanager
def writing(router: Router, block_id: str, offset: int,
            size: int | None) -> Iterator[memoryview]:
    """A writable view of ``size`` bytes of a block from ``offset`` (default: to its end),
    whose bytes are the block's when the ``with`` ends (see
    :meth:`~distributed_grid.memory.client.block_pool.BlockPool.writing_view`)."""
    number, node = router.block_node(block_id)
    info = node.block_info(number)
    check_start(offset)
    length = max(0, info.size - offset) if size is None else size
    check_range(block_id, info.size, offset, length, "write")
    here = node.is_local
    buffer = None
    if not here:  # no copy on this host: the range's bytes as they are, written back at the end
        buffer = bytearray(length)
        node.drain(info, offset, length, sinks.BufferSink(memoryview(buffer)))
    block = node.prepare_write(number, offset, length, None, False, this_process())
    in_place = False
    try:
        view = node.writable(block, offset, length) if here else None
        in_place = view is not None
        if view is None:
            view = memoryview(buffer if buffer is not None else bytearray(length))
        try:
            yield view
        finally:  # what was written into the block's memory is there: its copies get it too
            if in_place and block.replica_of is not None:
                node.fill(block, offset, length, sources.BufferSource(view))
        if not in_place:
            node.fill(block, offset, length, sources.BufferSource(view))
        node.commit_write(number, offset, length)
    except BaseException:
        try:
            if in_place:
                node.commit_write(number, offset, length)
            else:
                node.abort_write(number, offset, None)
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
