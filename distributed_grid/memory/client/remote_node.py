"""A node on another host (or any node, when the remote path is forced), reached through its
store actor; and the key directory, reached through the head's store.

:class:`RemoteNode` keeps :class:`~distributed_grid.memory.client.nodes.Node` as a
:class:`~distributed_grid.memory.node.local_node.LocalNode` does; each metadata call is one
round trip. Every call names the actor's method by the function itself
(``StoreActor.allocate``), so a name the actor does not serve fails when this module is
imported, not in a call. Bytes travel as ObjectRefs in chunks of ``copies.CHUNK`` with at most
``IN_FLIGHT`` outstanding, so a block of any size never needs more than ``IN_FLIGHT * CHUNK``
bytes of object store at once, and progress can be shown.

Every wait is bounded (:mod:`distributed_grid.wire`): a metadata call by ``METADATA_TIMEOUT``,
a chunk or a bulk free by ``BULK_TIMEOUT`` from when the caller starts waiting for it, an
allocation by the time its pages take on top; past it the call fails with ``NodeUnavailable``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from distributed_grid.errors import NodeUnavailable
from distributed_grid.memory.io import copies, sinks, sources
from distributed_grid.memory.node.service.actor import StoreActor
from distributed_grid.memory.node.service.directory import Copy, Holder, Replicas
from distributed_grid.memory.node.slabs import buffers_of
from distributed_grid.memory.shm.seqguard import read_untorn
from distributed_grid.names import Key
from distributed_grid.records import BlockInfo, KeyPlace, KeyRemoval, NodeStats
from distributed_grid.wire import (
    ALLOCATE_RATE,
    BULK_TIMEOUT,
    METADATA_TIMEOUT,
    MOVE_TIMEOUT,
    READ_WAIT_SECONDS,
    REMOTE_WRITER,
)

if TYPE_CHECKING:  # Ray comes with the cluster a caller hands over, not with this module
    from distributed_grid.cluster.connection import RayCluster

IN_FLIGHT = 4
# A chunk smaller than this travels inside the call itself; a bigger one is put in the object
# store first (from there it reaches the node's store at ~10 GB/s instead of ~4). A 16-byte
# write through a put took 7 ms here, inline 1.5 ms.
INLINE_BYTES = 64 * 2**10
# The store methods that may take longer than a metadata call.
BULK = {m.__name__ for m in (StoreActor.write_chunk, StoreActor.read_chunk, StoreActor.destroy,
                             StoreActor.release_lease)}
PROGRESS_SECONDS = 0.25  # how often a spill or restore on another host is asked how far it is
# Calls that may spill or restore blocks on a node with a spill folder (MOVE_TIMEOUT there).
MAY_MOVE = {m.__name__ for m in (
    StoreActor.allocate, StoreActor.find_key, StoreActor.prepare_write, StoreActor.put_small,
    StoreActor.read_begin, StoreActor.read_whole, StoreActor.read_chunk, StoreActor.spill,
    StoreActor.restore_block, StoreActor.node_status)}


class Call(NamedTuple):
    """A started store call: its ObjectRef, how long its result may be waited for, and whether
    it may move blocks between memory and disk (then, on a node with a spill folder, longer)."""

    ref: Any
    timeout: float
    may_move: bool = False


class RemoteNode:
    """A node whose store this process calls through Ray.

    Args:
        cluster: this process's view of the cluster.
        node: the node's name.
    """

    is_local = False

    def __init__(self, cluster: RayCluster, node: str) -> None:
        self.cluster = cluster
        self.node = node
        cluster.store(node)  # fails now (NodeNotFound, NodeUnavailable) rather than later
        self._spills: bool | None = None  # whether the node has a spill folder, once asked

    # -- calls ------------------------------------------------------------------------------------

    def submit(self, name: str, *args: Any) -> Call:
        """Send a call of the store's method ``name`` without waiting (every call leaves
        through here)."""
        return Call(self.cluster.submit(self.node, name, *_on_the_wire(args)),
                    BULK_TIMEOUT if name in BULK else METADATA_TIMEOUT, name in MAY_MOVE)

    def result(self, call: Call, timeout: float | None = None) -> Any:
        """The result of a sent call, waited for at most its method's timeout (or
        ``timeout`` seconds). A call that may move blocks and has not answered by then is
        waited for up to ``MOVE_TIMEOUT`` when the node has a spill folder (asked then, once:
        no call pays for the question unless it ran that long)."""
        try:
            return self.cluster.result(call.ref, self.node, timeout or call.timeout)
        except NodeUnavailable:
            if not call.may_move or not self._has_spill_folder():
                raise
            return self.cluster.result(call.ref, self.node, MOVE_TIMEOUT)

    def _has_spill_folder(self) -> bool:
        """Whether the node spills (asked once; a store that does not answer this is
        ``NodeUnavailable``)."""
        if self._spills is None:
            self._spills = self._call(StoreActor.stats, None).spill_dir is not None
        return self._spills

    def _call(self, method: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        return self.result(self.submit(method.__name__, *args), timeout)

    def start(self, method: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        call = self.submit(method.__name__, *args)
        return lambda: self.result(call)

    def writer(self, identity: str | None) -> str | None:
        """How the node's store names a writer of this process: by its Ray job too, whose end
        the store sees."""
        if identity is None:
            return None
        return f"{REMOTE_WRITER}{self.cluster.job_id}:{identity}"

    # -- metadata: one round trip each -----------------------------------------------------------

    def allocate(self, size: int, lease: str | None = None, capacity: int | None = None,
                 holder: str | None = None, for_key: str | None = None,
                 replica_of: str | None = None) -> BlockInfo:
        return self._call(StoreActor.allocate, size, lease, capacity, self.writer(holder),
                          for_key, replica_of, timeout=METADATA_TIMEOUT + size / ALLOCATE_RATE)

    def deallocate(self, number: int, replica_of: str | None = None) -> BlockInfo:
        return self._call(StoreActor.deallocate, number, replica_of)

    def delete_key(self, key: str) -> KeyRemoval:
        return self._call(StoreActor.delete_key, key)

    def block_info(self, number: int) -> BlockInfo:
        return self._call(StoreActor.block_info, number)

    def list_blocks(self) -> list[BlockInfo]:
        return self._call(StoreActor.list_blocks)

    def find_key(self, key: str) -> KeyPlace | None:
        return self._call(StoreActor.find_key, key)

    def copy_of(self, number: int) -> str | None:
        return self._call(StoreActor.copy_of, number)

    def holds_key(self, key: str, number: int) -> bool:
        return self._call(StoreActor.holds_key, key, number)

    def set_epoch(self, number: int, replica_of: str, epoch: int) -> None:
        self._call(StoreActor.set_epoch, number, replica_of, epoch)

    def list_keys(self) -> dict[str, str]:
        return self._call(StoreActor.list_keys)

    def stats(self, capacity: int | None = None) -> NodeStats:
        return self._call(StoreActor.stats, capacity)

    def node_status(self, capacity: int | None = None) -> NodeStats:
        return self._call(StoreActor.node_status, capacity)

    def spill(self, number: int, progress: copies.Progress = copies.no_progress) -> BlockInfo:
        """:meth:`StoreActor.spill`, done on the node; its progress is asked for while it
        runs."""
        return self._move(StoreActor.spill, number, progress)

    def restore_block(self, number: int,
                      progress: copies.Progress = copies.no_progress) -> BlockInfo:
        """:meth:`StoreActor.restore_block`, done on the node; its progress is asked for while
        it runs."""
        return self._move(StoreActor.restore_block, number, progress)

    def _move(self, method: Callable[..., Any], number: int,
              progress: copies.Progress) -> BlockInfo:
        call = self.submit(method.__name__, number)
        shown, deadline = 0, time.monotonic() + MOVE_TIMEOUT
        while not self.cluster.ready(call.ref, PROGRESS_SECONDS) and \
                time.monotonic() < deadline:
            done = self._call(StoreActor.move_progress, number)
            if done > shown:
                progress(done - shown)
                shown = done
        info = self.result(call, MOVE_TIMEOUT)
        if info.size > shown:  # the rest, once done (a block on disk already: all of it)
            progress(info.size - shown)
        return info

    def prepare_write(self, number: int, offset: int, length: int, key: str | None = None,
                      force: bool = False, writer: str | None = None,
                      replica_of: str | None = None, epoch: int = 0) -> BlockInfo:
        return self._call(StoreActor.prepare_write, number, offset, length, key, force,
                          self.writer(writer), replica_of, epoch)

    def commit_write(self, number: int, offset: int, length: int, key: str | None = None,
                     meta: dict[str, Any] | None = None) -> BlockInfo:
        return self._call(StoreActor.commit_write, number, offset, length, key, meta)

    def abort_write(self, number: int, offset: int, key: str | None = None,
                    torn: bool = True) -> None:
        self._call(StoreActor.abort_write, number, offset, key, torn)

    def put_small(self, key: str, data: Any, meta: dict[str, Any] | None = None,
                  capacity: int | None = None) -> BlockInfo:
        return self._call(StoreActor.put_small, key, b"".join(buffers_of(data)), meta,
                          capacity)  # one copy, into the bytes Ray sends

    def release_lease(self, lease: str) -> list[str]:
        return self._call(StoreActor.release_lease, lease)

    def destroy(self) -> int:
        return self._call(StoreActor.destroy)

    def open_block(self, number: int,
                   populate: bool = False) -> tuple[int, memoryview | None]:
        """The block's size, and no view: its memory is on another host."""
        return self.block_info(number).size, None

    def view_of(self, block: BlockInfo) -> memoryview | None:
        """None: the block's memory is on another host."""
        return None

    def writable(self, block: BlockInfo, offset: int, length: int) -> memoryview | None:
        """None: the block's memory is on another host."""
        return None

    def change_mark(self) -> tuple[int, int] | None:
        """None: this process does not see the node's catalog change."""
        return None

    def close(self) -> None:
        """Nothing to release: the store actor is the cluster's."""

    # -- bytes: chunks as ObjectRefs -------------------------------------------------------------

    def fill(self, block: BlockInfo, offset: int, length: int, source: sources.Source,
             progress: copies.Progress = copies.no_progress) -> None:
        """Send ``length`` bytes from ``source`` into the block at ``offset``, chunk by chunk."""
        pending: deque[tuple[Any, int]] = deque()
        for pos, n in copies.chunks(length):
            if source.in_memory and n >= INLINE_BYTES:
                # ray.put copies the caller's bytes into the object store: the one copy a raw
                # transfer makes (a copy into a fresh buffer first took 34% of the time).
                buf = np.frombuffer(source.view(pos, n), dtype=np.uint8)
            else:
                # A fresh buffer per chunk: Ray may keep a small object's buffer without
                # copying it.
                buf = np.empty(n, dtype=np.uint8)
                source.read_into(pos, memoryview(buf))
            chunk = buf if n < INLINE_BYTES else self.cluster.put(buf)
            del buf
            pending.append((self.submit(StoreActor.write_chunk.__name__, block.number,
                                        offset + pos, chunk), n))
            del chunk
            if len(pending) >= IN_FLIGHT:
                done, size = pending.popleft()
                self.result(done)
                progress(size)
        while pending:
            done, size = pending.popleft()
            self.result(done)
            progress(size)

    def drain(self, block: BlockInfo, offset: int, length: int, sink: sinks.Sink,
              progress: copies.Progress = copies.no_progress) -> None:
        """Fetch ``length`` bytes of the block from ``offset``; hand them to ``sink`` in order,
        as they were before or after any concurrent write of them, never a mix.

        The node's store waits until no write holds the range and notes the block's write
        guard; once the chunks are here it says whether a write started or ended meanwhile,
        and then they are fetched again (a sink that cannot go back gets them once whole).
        """
        if length <= 0:
            return
        if length <= copies.CHUNK:  # the store copies it whole, guarded, in one call
            array = self._call(StoreActor.read_whole, block.number, offset, length,
                               timeout=READ_WAIT_SECONDS + BULK_TIMEOUT)
            sink.write(memoryview(array))
            progress(length)
            return
        if sink.rewindable:
            self._fetch_whole(block, offset, length, sink, progress)
            return
        spool = sinks.SpoolSink()  # the sink gets the bytes only once whole
        try:
            self._fetch_whole(block, offset, length, spool, progress)
            spool.hand_to(sink)
        finally:
            spool.close()

    def _fetch_whole(self, block: BlockInfo, offset: int, length: int, target: sinks.Sink,
                     progress: copies.Progress) -> None:
        """Fetch the bytes into ``target`` until no write started or ended meanwhile."""
        read_untorn(
            lambda: self._call(StoreActor.read_begin, block.number, offset, length,
                               timeout=READ_WAIT_SECONDS + METADATA_TIMEOUT),
            lambda: self._fetch(block, offset, length, target, progress),
            lambda seq: self._call(StoreActor.read_end, block.number, seq),
            target.mark, target.rewind, block.block_id, offset, length)

    def _fetch(self, block: BlockInfo, offset: int, length: int, sink: sinks.Sink,
               progress: copies.Progress) -> None:
        """Fetch the chunks, ``IN_FLIGHT`` at a time, and hand each to ``sink`` on a thread of
        its own while the next ones travel: the sink's copy (or a file's writes, which wait
        on its disk) then overlaps the transfer instead of following it."""
        read_chunk = StoreActor.read_chunk.__name__
        pending: deque[tuple[Any, int]] = deque()
        pieces = iter(copies.chunks(length))
        for pos, n in pieces:
            pending.append((self.submit(read_chunk, block.number, offset + pos, n), n))
            if len(pending) >= IN_FLIGHT:
                break
        with sinks.SinkThread(sink, progress) as handed:
            while pending:
                ref, n = pending.popleft()
                array = self.result(ref)
                del ref
                nxt = next(pieces, None)  # asked for before this chunk is copied
                if nxt is not None:
                    pending.append((self.submit(read_chunk, block.number, offset + nxt[0],
                                                nxt[1]), nxt[1]))
                handed.give(array, n)
                del array


def _on_the_wire(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The arguments of a store call as they travel: a checked key as the plain text it is
    (Ray sends plain values inline; a ``str`` subclass would be pickled), checked again by the
    store that receives it."""
    return tuple(str(a) if isinstance(a, Key) else a for a in args)


class RemoteDirectory:
    """The key directory, reached through the head's store (which serves each method of
    :class:`~distributed_grid.memory.client.nodes.Directory` as ``dir_<name>``)."""

    def __init__(self, cluster: RayCluster) -> None:
        self.cluster = cluster
        self.head = cluster.head().name

    def _call(self, method: Callable[..., Any], *args: Any) -> Any:
        return self.cluster.call(self.head, method.__name__, *_on_the_wire(args))

    def lookup(self, key: str) -> Holder | None:
        return self._call(StoreActor.dir_lookup, key)

    def claim(self, key: str, block_id: str) -> Holder | None:
        return self._call(StoreActor.dir_claim, key, block_id)

    def take_over(self, key: str, block_id: str, holder: Holder) -> bool:
        return self._call(StoreActor.dir_take_over, key, block_id, holder)

    def forget_key(self, key: str, holder: Holder) -> bool:
        return self._call(StoreActor.dir_forget_key, key, holder)

    def forget_blocks(self, block_ids: list[str]) -> int:
        return self._call(StoreActor.dir_forget_blocks, block_ids)

    def add_replicated(self, block_id: str, wanted: int, size: int, copies: list[Copy],
                       node_ids: list[str | None]) -> None:
        self._call(StoreActor.dir_add_replicated, block_id, wanted, size, copies, node_ids)

    def replicas(self, block_id: str) -> Replicas | None:
        return self._call(StoreActor.dir_replicas, block_id)

    def all_replicated(self) -> list[Replicas]:
        return self._call(StoreActor.dir_all_replicated)

    def drop_copy(self, block_id: str, node: str, number: int) -> bool:
        return self._call(StoreActor.dir_drop_copy, block_id, node, number)

    def forget_replicated(self, block_id: str) -> bool:
        return self._call(StoreActor.dir_forget_replicated, block_id)

    def report(self, stats: NodeStats, is_head: bool) -> None:
        self._call(StoreActor.dir_report, stats, is_head)

    def node_sizes(self) -> list[NodeStats]:
        return self._call(StoreActor.dir_node_sizes)
