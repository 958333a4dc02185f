"""The pool of blocks and keys: a thin facade over the router, allocation, keys, writes, reads.

:class:`BlockPool` is what a caller holds: it connects to the cluster (the embedded local one
when none answers), checks each value where it enters (a key once, carried on as a
:class:`~distributed_grid.names.Key`), and hands the work to its parts: :mod:`.router` (which
node holds a block, and how to reach it), :mod:`.allocation` and :mod:`.placement` (new blocks),
:mod:`.keys` (the key directory's protocol), :mod:`.writes` and :mod:`.reads` (the bytes).
:class:`~distributed_grid.memory.pool.MemoryPool` adds typed values (arrays, tensors, objects).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

from distributed_grid.cluster.config import ClusterConfig, use_config
from distributed_grid.cluster.target import find_cluster
from distributed_grid.memory.client.allocation import Allocator
from distributed_grid.memory.client.host import HostNodes
from distributed_grid.memory.client.key_places import replication
from distributed_grid.memory.client.keys import KeyIndex
from distributed_grid.memory.client.moves import Moves
from distributed_grid.memory.client.nodes import Directory, NodeStore
from distributed_grid.memory.client.reads import Reader
from distributed_grid.memory.client.router import Router, force_remote_default
from distributed_grid.memory.client.writes import Writer, source_of, writing
from distributed_grid.memory.io import copies, inputs, sinks
from distributed_grid.names import key_from
from distributed_grid.records import (
    BlockInfo,
    ClusterStatus,
    KeyPlace,
    KeyRemoval,
    NodeInfo,
    NodeStats,
    Piece,
    RetrieveResult,
    StoreResult,
)

if TYPE_CHECKING:
    from distributed_grid.cluster.connection import RayCluster

Progress = copies.Progress
F = TypeVar("F", bound="Callable[..., Any]")


def _doc_of(implementation: Callable[..., Any]) -> Callable[[F], F]:
    """Give a method of the facade the docstring of the method that does its work (written
    once, where the work is)."""
    def give(method: F) -> F:
        method.__doc__ = implementation.__doc__
        return method

    return give


class BlockPool:
    """Blocks of shared memory across the cluster's nodes, and keys in them.

    Args:
        address: the cluster's ``HOST:PORT``; None for ``RAY_ADDRESS``, the cluster recorded on
            this host, or the embedded local cluster started on demand.
        config: a cluster config (object or YAML path) naming nodes and their memory caps.
        force_remote: always take the remote (ObjectRef) path; None reads
            ``DISTRIBUTED_GRID_FORCE_REMOTE``.
        start_if_missing: start the embedded cluster when none answers.
        persistent: blocks this pool allocates stay until deallocated (True), or are freed by
            :meth:`close` and when this process ends, however it ends (False).
    """

    def __init__(self, address: str | None = None, *, config: ClusterConfig | str | None = None,
                 force_remote: bool | None = None, start_if_missing: bool = True,
                 persistent: bool = True) -> None:
        config = use_config(config)
        if address is None and config is not None:
            address = config.address
        target = find_cluster(address, start_if_missing=start_if_missing)
        self.address = target.address
        self.force_remote = force_remote_default() if force_remote is None else force_remote
        self.persistent = persistent
        self._config = config  # what a pickled pool carries to the other side
        self._router = Router(target, self.force_remote)
        self._lease: tuple[str, Any] | None = None if persistent else self.ray.make_lease()
        self._keys = KeyIndex(self._router)
        self._blocks = Allocator(self._router, self._lease[0] if self._lease else None)
        self._writer = Writer(self._router, self._keys, self._blocks)
        self._reader = Reader(self._router, self._keys)
        self._moves = Moves(self._router, self._keys)
        # the copies a new block gets when the caller names no count (the config's default)
        self._copies = replication(config.replicas if config is not None else 1)

    def __reduce__(self) -> tuple[Any, tuple]:
        """A pool pickles as its address and options (for Ray tasks and actors), and connects
        again on the other side: to the same cluster, never starting one; reaching each block
        the way that process can (zero-copy where the block is on its host). A non-persistent
        pool comes back as one with a lease of its own: blocks it allocates are freed when that
        process ends."""
        return (_reconnect, (type(self), self.address, self._config, self.force_remote,
                             self.persistent))

    def __enter__(self) -> BlockPool:
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the pool (see :meth:`close`)."""
        self.close()

    # -- the cluster ----------------------------------------------------------------------------

    @property
    def ray(self) -> RayCluster:
        """The cluster through Ray, connected on first use."""
        return self._router.ray

    @property
    def host(self) -> HostNodes:
        """The nodes of the cluster whose stores run on this host."""
        return self._router.host

    @property
    def directory(self) -> Directory:
        """The cluster's key directory, as this process reaches it."""
        return self._router.directory

    @property
    def cluster_id(self) -> str:
        """The cluster's identity (part of every segment name)."""
        return self._router.cluster_id

    def nodes(self, include_dead: bool = False) -> list[NodeInfo]:
        """The cluster's nodes (alive ones only, unless ``include_dead``)."""
        return self._router.nodes(include_dead)

    def stats(self) -> list[NodeStats]:
        """Per node: shared-memory capacity and free bytes, block count and bytes."""
        return self._router.node_sizes(NodeStore.stats)

    def status(self) -> ClusterStatus:
        """The cluster's address and identity, and each alive node's :meth:`stats` read now,
        with what its spill folder holds and how much of it views pin."""
        return ClusterStatus(address=self.address, cluster_id=self.cluster_id,
                             nodes=self._router.node_sizes(NodeStore.node_status))

    # -- blocks ---------------------------------------------------------------------------------

    def allocate(self, size: int, node: str | None = None,
                 replicas: int | None = None) -> BlockInfo:
        """Allocate a block of ``size`` bytes; returns its facts (``block_id`` among them).

        Without ``node``, the worker with the most free shared memory is chosen (the head only
        when there is no worker). With ``replicas`` (default: the cluster config's
        ``replicas``, else 1) the block has that many copies, each on a node of its own (on
        distinct hosts while there are some; the first on ``node`` when given): every write
        reaches all of them before it returns, and the block lives while any of them does.

        Raises:
            InvalidArgument: ``size`` is not a positive whole number of bytes, or ``replicas``
                not a whole number from 1 to 8.
            NodeNotFound: no node is called ``node``.
            StoreFull: the node cannot hold ``size`` bytes, or fewer than ``replicas`` nodes
                can; nothing is allocated.
        """
        return self._blocks.allocate(size, node, replicas=self._copies(replicas).count)

    def block_info(self, block_id: str) -> BlockInfo:
        """The facts of one block: node, size, used bytes, keys, status.

        Raises:
            InvalidArgument: ``block_id`` is not of the form ``block_<n>_<node>``.
            BlockNotFound: no such block (its node is unknown, or it has no such block).
            NodeUnavailable: its node is gone.
        """
        number, node = self._router.block_node(block_id)
        return node.block_info(number)

    @_doc_of(Allocator.deallocate)
    def deallocate(self, block_id: str) -> BlockInfo:
        return self._blocks.deallocate(block_id)

    @_doc_of(Router.every_block)
    def list_blocks(self) -> list[BlockInfo]:
        return self._router.every_block()

    @_doc_of(Moves.spill)
    def spill(self, target: str, progress: Progress | None = None) -> BlockInfo:
        return self._moves.spill(target, progress)

    @_doc_of(Moves.restore)
    def restore(self, target: str, progress: Progress | None = None) -> BlockInfo:
        return self._moves.restore(target, progress)

    def is_local(self, block_id: str) -> bool:
        """Whether this process reaches ``block_id`` zero-copy (same host, proven by token)."""
        number, node = self._router.block_node(block_id)
        if not node.is_local:
            return False
        _, data = node.open_block(number)
        if data is not None:
            data.release()
        return data is not None

    def open_block(self, block_id: str,
                   populate: bool = False) -> tuple[int, memoryview | None]:
        """A block's size and, on this host, a writable view of its bytes (None elsewhere);
        with ``populate`` every page is mapped at once (``MAP_POPULATE``).

        The view holds a mapping of its own: the memory stays valid while the view (or an
        array over it) lives, even if the block is deallocated meanwhile, and goes with it.

        Raises:
            BlockNotFound: no such block.
        """
        number, node = self._router.block_node(block_id)
        return node.open_block(number, populate)

    def view_of(self, place: KeyPlace) -> memoryview | None:
        """On the key's host, a writable view of its block's bytes as ``find_key`` just found
        them (no second query); None elsewhere.

        Raises:
            BlockNotFound: the block's memory is gone.
        """
        _, node = self._router.block_node(place.block_id)
        return node.view_of(place.block)

    def destroy_all(self) -> int:
        """Free every block on every node (before the cluster is stopped); returns the count."""
        count = sum(self._router.each_node(NodeStore.destroy).values())
        self._router.remove_directory()  # when it is on this host: else the head's store did
        return count

    # -- keys -----------------------------------------------------------------------------------

    def find_key(self, key: str) -> KeyPlace | None:
        """The block holding ``key``'s bytes with the key's extents, or None.

        One lookup in the key directory, then one question to the key's node; a key whose
        block is on this host is found in the host's catalogs first, without Ray.

        Raises:
            NodeUnavailable: the key's block is on a node that is gone.
        """
        return self._keys.find(key_from(key), versioned=False)[0]

    def keys(self) -> dict[str, str]:
        """Every key of the cluster, mapped to the id of its block."""
        return self._keys.every_key()

    @_doc_of(KeyIndex.delete)
    def delete(self, key: str) -> KeyRemoval:
        return self._keys.delete(key_from(key))

    # -- writes ---------------------------------------------------------------------------------

    @_doc_of(Writer.store_file)
    def store_file(self, key: str, path: str, block_id: str | None = None, offset: int = 0,
                   force: bool = False, progress: Progress | None = None,
                   on_size: Progress | None = None, replicas: int | None = None) -> StoreResult:
        return self._writer.store_file(key_from(key), path, block_id, offset, force, progress,
                                       on_size, self._copies(replicas))

    @_doc_of(Writer.store_stream)
    def store_stream(self, key: str, source: inputs.Input | int | BinaryIO,
                     block_id: str | None = None, offset: int = 0, force: bool = False,
                     progress: Progress | None = None,
                     on_size: Progress | None = None,
                     replicas: int | None = None) -> StoreResult:
        return self._writer.store_stream(key_from(key), source, block_id, offset, force,
                                         progress, on_size, self._copies(replicas))

    @_doc_of(Writer.write_value)
    def write_value(self, key: str, data: Any, length: int, node: str | None = None,
                    meta: dict[str, Any] | None = None,
                    replicas: int | None = None) -> StoreResult:
        return self._writer.write_value(key_from(key), data, length, node, meta,
                                        self._copies(replicas))


    def write(self, block_id: str, data: Any, offset: int = 0, key: str | None = None,
              force: bool = False, progress: Progress | None = None,
              meta: dict[str, Any] | None = None) -> BlockInfo:
        """Write a bytes-like object into a block at ``offset`` (optionally under ``key``); a
        list (or tuple) of them is written one after another, as one write, with no copy into
        one buffer first. ``meta`` says what the key's bytes are (``put`` records an array's
        dtype and shape).

        Raises:
            OutOfBounds, KeyConflict, BlockNotFound, InvalidArgument.
        """
        source = source_of(data)
        return self._writer.write(block_id, offset, source.length,
                                  None if key is None else key_from(key), force, source,
                                  progress, meta)

    def writing_view(self, block_id: str, offset: int = 0,
                     size: int | None = None) -> AbstractContextManager[memoryview]:
        """``with pool.writing_view(block_id) as view:`` a writable view of ``size`` bytes of
        the block from ``offset`` (default: to its end), written as one write. On the block's
        host it is the block's memory itself (zero-copy; readers wait for the ``with``'s end,
        as for any write), and a replicated block's other copies get the range when the
        ``with`` ends, however it ends (what was written is in the block). Elsewhere it is a
        buffer of the range's bytes, sent when the ``with`` ends without an error.

        Raises:
            OutOfBounds, KeyConflict (the range holds bytes of a key), BlockNotFound.
        """
        return writing(self._router, block_id, offset, size)

    # -- reads ----------------------------------------------------------------------------------

    @_doc_of(Reader.plan)
    def plan_read(self, target: str, size: int | None = None, offset: int = 0) -> list[Piece]:
        return self._reader.plan(target, size, offset)

    def read_into_sink(self, pieces: list[Piece],
                       sink: sinks.Sink | Callable[[memoryview], object],
                       progress: Progress | None = None) -> int:
        """Hand the bytes of ``pieces`` to ``sink`` (a :class:`~distributed_grid.memory.io.
        sinks.Sink` or a callable) in order; returns the byte count."""
        return self._reader.to_sink(pieces, sinks.as_sink(sink), progress)

    @_doc_of(Reader.read_to)
    def read_to(self, target: str, sink: sinks.Sink | Callable[[memoryview], object],
                size: int | None = None, offset: int = 0, progress: Progress | None = None,
                pieces: list[Piece] | None = None) -> int:
        return self._reader.read_to(target, sinks.as_sink(sink), size, offset, progress,
                                    pieces)

    @_doc_of(Reader.read)
    def read(self, target: str, size: int | None = None, offset: int = 0) -> bytes:
        return self._reader.read(target, size, offset)

    @_doc_of(Reader.read_into)
    def read_into(self, target: str, buffer: Any, size: int | None = None,
                  offset: int = 0) -> int:
        return self._reader.read_into(target, buffer, size, offset)

    @_doc_of(Reader.retrieve_to_file)
    def retrieve_to_file(self, target: str, path: str, size: int | None = None, offset: int = 0,
                         progress: Progress | None = None,
                         pieces: list[Piece] | None = None) -> RetrieveResult:
        return self._reader.retrieve_to_file(target, path, size, offset, progress, pieces)

    # -- the end --------------------------------------------------------------------------------

    def close(self) -> None:
        """Release the pool's connections; a non-persistent pool also frees its blocks.

        Persistent blocks stay: they belong to the stores. Live views stay valid until released.
        """
        if self._lease is not None:
            name, handle = self._lease
            self._lease = None
            self._router.each_node(NodeStore.release_lease, lambda _: (name,))
            self.ray.end_lease(handle)
        self._router.close()


def _reconnect(cls: type[BlockPool], address: str, config: ClusterConfig | str | None,
               force_remote: bool, persistent: bool) -> BlockPool:
    """A pickled pool, connected again (see :meth:`BlockPool.__reduce__`)."""
    return cls(address, config=config, force_remote=force_remote, start_if_missing=False,
               persistent=persistent)
