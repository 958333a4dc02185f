"""The client: routes block ids and keys to their nodes, and moves the bytes.

A block id names its node. A node whose store runs on this host (its record in the runtime
directory says so, and its raylet is alive) is a
:class:`~distributed_grid.memory.node.local_node.LocalNode`:
its catalog is read and changed in this process and its bytes copied through the segments'
descriptors or viewed through a mapping, with no round trip and no Ray. Any other node is a
:class:`~distributed_grid.memory.client.remote_node.RemoteNode`, reached through its store actor;
Ray is
imported and connected only then. ``DISTRIBUTED_GRID_FORCE_REMOTE=1`` takes the remote path for
every node (the way a process on another host would).

Keys are found through the cluster's key directory (``memory/directory.py``): one lookup, then
one question to the key's node, whatever the number of nodes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, BinaryIO

from distributed_grid.cluster.config import ClusterConfig, memory_cap, use_config
from distributed_grid.cluster.target import find_cluster
from distributed_grid.errors import (
    BlockNotFound,
    FileError,
    GridError,
    InvalidArgument,
    KeyConflict,
    KeyNotFound,
    NodeNotFound,
    NodeUnavailable,
    NotFound,
    OutOfBounds,
    StoreFull,
    VersionMismatch,
)
from distributed_grid.memory.client.host import HostNodes
from distributed_grid.memory.io import inputs, transfer
from distributed_grid.memory.io import spool as input_stream
from distributed_grid.memory.io.extents import slice_extents
from distributed_grid.memory.io.output_file import OutputFile
from distributed_grid.memory.node.directory import KeyDirectory
from distributed_grid.memory.node.local_node import LocalNode
from distributed_grid.memory.node.store import STORE_PROTOCOL
from distributed_grid.memory.records import (
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
from distributed_grid.memory.shm.capacity import describe_limit
from distributed_grid.names import (
    check_range,
    check_start,
    looks_like_block_id,
    parse_block_id,
    positive_size,
    validate_key,
    whole_bytes,
)
from distributed_grid.runtime import this_process

if TYPE_CHECKING:
    import numpy as np

    from distributed_grid.cluster.connection import RayCluster
    from distributed_grid.memory.client.remote_node import RemoteNode

    Node = LocalNode | RemoteNode  # what the pool asks of a node is the same of both

FORCE_REMOTE_ENV = "DISTRIBUTED_GRID_FORCE_REMOTE"

Progress = Callable[[int], None]


def _force_remote_default() -> bool:
    return os.environ.get(FORCE_REMOTE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class MemoryPool:
    """Blocks of shared memory across the cluster's nodes.

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
        self.target = find_cluster(address, start_if_missing=start_if_missing)
        self.address = self.target.address
        self.force_remote = _force_remote_default() if force_remote is None else force_remote
        self.host = HostNodes() if self.force_remote else HostNodes.find(self.address)
        self.persistent = persistent
        self._config = config  # what a pickled pool carries to the other side
        self._ray: RayCluster | None = None
        self._nodes: dict[str, Node] = {}
        self._directory: Any = None
        self._lease: tuple[str, Any] | None = None if persistent else self.ray.make_lease()

    def __reduce__(self) -> tuple[Any, tuple]:
        """A pool pickles as its address and options (for Ray tasks and actors), and connects
        again on the other side: to the same cluster, never starting one; reaching each block
        the way that process can (zero-copy where the block is on its host). A non-persistent
        pool comes back as one with a lease of its own: blocks it allocates are freed when that
        process ends."""
        return (_reconnect, (self.address, self._config, self.force_remote, self.persistent))

    def __enter__(self) -> MemoryPool:
        return self

    def __exit__(self, *exc: object) -> None:
        """Close the pool (see :meth:`close`)."""
        self.close()

    # -- reaching the cluster -------------------------------------------------------------------

    @property
    def ray(self) -> RayCluster:
        """The cluster through Ray, connected on first use (only a need for another host, or a
        non-persistent pool's lease, brings Ray in)."""
        if self._ray is None:
            from distributed_grid.cluster.connection import RayCluster

            self._ray = RayCluster(self.target)
        return self._ray

    @property
    def cluster_id(self) -> str:
        """The cluster's identity (part of every segment name)."""
        return self.host.cluster_id or self.ray.cluster_id

    def nodes(self, include_dead: bool = False) -> list[NodeInfo]:
        """The cluster's nodes (alive ones only, unless ``include_dead``)."""
        known = self.host.node_infos() if self.host.complete else self.ray.nodes()
        return [n for n in known if include_dead or n.alive]

    def _node(self, name: str) -> Node:
        node = self._nodes.get(name)
        if node is None:
            node = self._open_node(name)
            self._nodes[name] = node
        return node

    def _open_node(self, name: str) -> Node:
        record = self.host.alive.get(name)
        if record is not None:
            if record.protocol != STORE_PROTOCOL:
                raise VersionMismatch(
                    f"the store of node {name} runs another version of distributed_grid "
                    f"(protocol {record.protocol}, this one speaks {STORE_PROTOCOL}); stop that "
                    "cluster (`grid cluster stop`) and start it again", node=name)
            return LocalNode(name, record.cluster_id)
        if name in self.host.dead:
            raise NodeUnavailable(
                f"node {name} is gone from the cluster: its blocks are lost until it returns",
                node=name)
        if self.host.complete:
            known = ", ".join(sorted(self.host.alive)) or "none"
            raise NodeNotFound(f"no node named {name!r} in the cluster; known nodes: {known}",
                               node=name)
        from distributed_grid.memory.client.remote_node import RemoteNode

        return RemoteNode(self.ray, name)

    def _block_node(self, block_id: str) -> tuple[int, Node]:
        """``(number, node)`` of a block whose node is alive.

        Raises:
            InvalidArgument: not a block id.
            BlockNotFound: no node of that name.
            NodeUnavailable: the node is gone (the block is lost).
        """
        number, name = parse_block_id(block_id)
        try:
            return number, self._node(name)
        except NodeUnavailable as exc:
            state = "unreachable" if "timeout" in exc.facts else "lost"  # wedged, or gone
            raise NodeUnavailable(f"block {block_id} is {state}: {exc}", block_id=block_id,
                                  node=name) from exc
        except NotFound as exc:
            raise BlockNotFound(f"no block {block_id}: {exc}", block_id=block_id,
                                node=name) from exc

    def _each_node(self, method: str,
                   args: Callable[[str], tuple] = lambda _: ()) -> dict[str, Any]:
        """Call ``method(*args(node))`` of every alive node once: the remote ones all at once,
        the local ones meanwhile."""
        nodes = {n.name: self._node(n.name) for n in self.nodes()}
        refs = {name: node.submit(method, *args(name))  # type: ignore[attr-defined]
                for name, node in nodes.items() if not node.is_local}
        results = {name: getattr(node, method)(*args(name)) for name, node in nodes.items()
                   if node.is_local}
        for name, ref in refs.items():
            results[name] = nodes[name].result(ref)  # type: ignore[attr-defined]
        return results

    @property
    def directory(self) -> Any:
        """The key directory: its file when the head is on this host, else the head's store."""
        if self._directory is None:
            path = self.host.directory
            if path is not None:
                self._directory = KeyDirectory(self.host.cluster_id or "", path)
            else:
                from distributed_grid.memory.client.remote_node import RemoteDirectory

                self._directory = RemoteDirectory(self.ray)
        return self._directory

    def _report(self, node: Node) -> None:
        """Tell the key directory a node's new size when both are on this host; other sizes
        reach it from the nodes' stores every few seconds (no round trip for this)."""
        record = self.host.alive.get(node.node)
        if record is not None and self.host.directory is not None:
            self.directory.report(node.stats(), record.is_head)

    # -- blocks ---------------------------------------------------------------------------------

    def allocate(self, size: int, node: str | None = None) -> BlockInfo:
        """Allocate a block of ``size`` bytes; returns its facts (``block_id`` among them).

        Without ``node``, the worker with the most free shared memory is chosen (the head only
        when there is no worker).

        Raises:
            InvalidArgument: ``size`` is not a positive whole number of bytes.
            NodeNotFound: no node is called ``node``.
            StoreFull: the node cannot hold ``size`` bytes.
        """
        return self._allocate(size, node)

    def _allocate(self, size: int, node: str | None, holder: str | None = None,
                  for_key: str | None = None) -> BlockInfo:
        positive_size(size)
        lease = self._lease[0] if self._lease else None
        if node is not None:
            chosen = self._node(node)
            info = chosen.allocate(size, lease, memory_cap(node), holder, for_key)
        else:
            chosen, info = self._allocate_anywhere(size, lease, holder, for_key)
        self._report(chosen)
        return info

    def _allocate_anywhere(self, size: int, lease: str | None, holder: str | None,
                           for_key: str | None = None) -> tuple[Node, BlockInfo]:
        """Allocate on the worker with the most free memory, by the sizes the nodes last
        reported to the key directory (one query for any number of nodes). A node whose
        report was stale and turns out full is asked for its real size and the next tried."""
        alive = self.nodes()
        candidates = [n.name for n in alive if not n.is_head] or [n.name for n in alive]
        sizes = {s.node: s for s in self.directory.node_sizes() if s.node in candidates}
        for name in candidates:
            if name not in sizes:  # its store has not reported yet
                sizes[name] = self._node(name).stats()

        # Nodes of one host share its memory, but each reported it at its own moment: rank
        # them by one figure for the host, the least any of them saw (a node bounded by its
        # own capacity keeps that bound).
        host_of = {n.name: n.hostname or n.name for n in alive}
        shared: dict[str, int] = {}
        for s in sizes.values():
            if s.limited_by != "capacity":
                host = host_of[s.node]
                shared[host] = min(shared.get(host, s.free_for_blocks), s.free_for_blocks)

        def free(name: str) -> int:
            cap = memory_cap(name)
            own = sizes[name].free_for_blocks
            room = min(own, shared.get(host_of[name], own))
            return room if cap is None else min(room, max(0, cap - sizes[name].block_bytes))

        for _ in range(2 * len(sizes)):
            # Compare free memory in 64 MiB steps, then prefer the node holding fewer block
            # bytes.
            best = min(sizes, key=lambda n: (-(free(n) >> 26), sizes[n].block_bytes, n))
            if size > free(best):
                break
            node = self._node(best)
            try:
                return node, node.allocate(size, lease, memory_cap(best), holder, for_key)
            except StoreFull:
                sizes[best] = node.stats()  # its report was stale: rank it by what it says now
        sizes[best] = self._node(best).stats(memory_cap(best))  # what bounds it, for the message
        raise StoreFull(f"cannot allocate {size} bytes: the most any node can hold is "
                        f"{free(best)} bytes (node {best}: {describe_limit(sizes[best])})",
                        size=size, free=free(best), node=best, limit=sizes[best].limited_by)

    def block_info(self, block_id: str) -> BlockInfo:
        """The facts of one block: node, size, used bytes, keys, status.

        Raises:
            InvalidArgument: ``block_id`` is not of the form ``block_<n>_<node>``.
            BlockNotFound: no such block (its node is unknown, or it has no such block).
            NodeUnavailable: its node is gone.
        """
        number, node = self._block_node(block_id)
        return node.block_info(number)

    def deallocate(self, block_id: str) -> BlockInfo:
        """Free a block and its keys; returns the facts it had.

        Raises:
            BlockNotFound: no such block.
        """
        number, node = self._block_node(block_id)
        info = node.deallocate(number)
        if info.keys or info.pending_keys:
            self.directory.forget_blocks([info.block_id])
        self._report(node)
        return info

    def delete(self, key: str) -> KeyRemoval:
        """Remove ``key``: all its extents, in its one block; and that block too when it was
        allocated for the key (:meth:`store_file` without a block id, :meth:`put`) and no other
        key lives in it. Other keys' bytes are untouched. A reader of the key gets its bytes
        from before the removal, whole, or KeyNotFound. A zero-copy view of the key
        (:meth:`get`) is live memory: it keeps a freed block's memory while it lives, and in a
        block that stays it shows whatever is written there next.

        Raises:
            KeyNotFound: no block holds ``key``; nothing changed.
            KeyBusy: a write of the key is running; nothing changed.
            NodeUnavailable: the key's block is on a node that is gone.
        """
        key = validate_key(str(key))
        unknown = KeyNotFound(f"no key named {key!r}: `grid memory list-objects` shows the "
                              "blocks and their keys", key=key)
        entry = self.directory.lookup(key)  # before the catalog's change: see forget_key
        if entry is None:
            raise unknown
        try:
            _, node = self._block_node(entry[0])
            removal = node.delete_key(key)
        except NodeUnavailable as exc:
            raise NodeUnavailable(f"cannot delete key {key!r}: {exc}", key=key,
                                  **exc.facts) from exc
        except (BlockNotFound, KeyNotFound) as exc:  # a stale entry: the key is gone
            raise unknown from exc
        if removal.block_freed:
            self.directory.forget_blocks([removal.block_id])
            self._report(node)
        elif removal.block_id == entry[0]:
            self.directory.forget_key(key, entry)
        return removal

    def is_local(self, block_id: str) -> bool:
        """Whether this process reaches ``block_id`` zero-copy (same host, proven by token)."""
        number, node = self._block_node(block_id)
        if not isinstance(node, LocalNode):
            return False
        _, data = node.open_block(number)
        data.release()
        return True

    def list_blocks(self) -> list[BlockInfo]:
        """Every block of the cluster, by node then number (each node asked once, at once).

        Blocks of a node that is gone are listed as they were last known, with status "lost".
        """
        blocks = [b for per_node in self._each_node("list_blocks").values() for b in per_node]
        for node in self.nodes(include_dead=True):
            if not node.alive:
                blocks += [b.with_status("lost") for b in self._lost_blocks(node.name)]
        return sorted(blocks, key=lambda b: (b.node, b.number))

    def _lost_blocks(self, name: str) -> list[BlockInfo]:
        record = self.host.dead.get(name)
        if record is not None and os.path.exists(record.catalog):  # its catalog is on this host
            store = LocalNode(name, record.cluster_id)
            try:
                return store.list_blocks()
            finally:
                store.close()
        return [] if self.host.complete else self.ray.last_published(name)

    def stats(self) -> list[NodeStats]:
        """Per node: shared-memory capacity and free bytes, block count and bytes."""
        per_node = self._each_node("stats", lambda name: (memory_cap(name),))
        return [replace(per_node[n.name], node_id=n.node_id, address=n.address,
                        hostname=n.hostname, is_head=n.is_head)
                for n in self.nodes() if n.name in per_node]

    def status(self) -> ClusterStatus:
        """The cluster's address and identity, and each alive node's :meth:`stats`."""
        return ClusterStatus(address=self.address, cluster_id=self.cluster_id,
                             nodes=self.stats())

    def destroy_all(self) -> int:
        """Free every block on every node (before the cluster is stopped); returns the count."""
        count = sum(self._each_node("destroy").values())
        if self.host.directory is not None:  # else the head's store removed it
            self.directory.remove()
        return count

    def keys(self) -> dict[str, str]:
        """Every key of the cluster, mapped to the id of its block."""
        merged: dict[str, str] = {}
        for per_node in self._each_node("list_keys").values():
            merged.update(per_node)
        return merged

    def find_key(self, key: str) -> KeyPlace | None:
        """The block holding ``key``'s bytes with the key's extents, or None.

        One lookup in the key directory, then one question to the key's node; a key whose
        block is on this host is found in the host's catalogs first, without Ray.

        Raises:
            NodeUnavailable: the key's block is on a node that is gone.
        """
        return self._find_key(validate_key(str(key)))[0]

    def _find_key(self, key: str) -> tuple[KeyPlace | None, int | None]:
        """:meth:`find_key`, and the version of the key's node catalog taken before the place
        was read (None for a node reached through its store)."""
        if not self.host.complete:
            for name in self.host.alive:
                node = self._node(name)
                version = _version(node)
                place = node.find_key(key)
                if place is not None:
                    return place, version
        holder = self.directory.lookup(key)
        if holder is None:
            return None, None
        _, name = parse_block_id(holder[0])
        try:
            node = self._node(name)
        except NodeNotFound:
            return None, None
        version = _version(node)
        return node.find_key(key), version

    def _holds(self, block_id: str, key: str) -> bool:
        """Whether ``block_id`` has ``key`` (a block on a node that is gone holds nothing)."""
        number, name = parse_block_id(block_id)
        try:
            return self._node(name).holds_key(key, number)
        except (NotFound, NodeUnavailable):
            return False

    def _claim(self, key: str, block_id: str) -> None:
        """Make ``block_id`` the key's one block in the cluster (the directory's protocol)."""
        directory = self.directory
        while True:
            holder = directory.claim(key, block_id)
            if holder is None:
                return
            if self._holds(holder[0], key):
                raise KeyConflict(
                    f"key {key!r} already lives in {holder[0]}; a key lives in one block: "
                    f"store it there, or deallocate {holder[0]} first",
                    key=key, block_id=holder[0])
            if directory.take_over(key, block_id, holder):
                return

    # -- writes ---------------------------------------------------------------------------------

    def store_file(self, key: str, path: str, block_id: str | None = None, offset: int = 0,
                   force: bool = False, progress: Progress | None = None,
                   on_size: Progress | None = None) -> StoreResult:
        """Store a file's bytes under ``key``; returns where they went.

        Without ``block_id`` the key's existing place is reused when the file fits there, else
        a block that fits is allocated. With ``block_id`` the bytes go at ``offset``. A FIFO
        (or a pipe named by path, ``/dev/stdin``) is read to its end as :meth:`store_stream`
        reads one, once its first bytes came: it may take
        ``$DISTRIBUTED_GRID_INPUT_WAIT_SECONDS`` (default 30) to bring them.

        Args:
            on_size: called with the file's size before its bytes are copied.

        Raises:
            FileError: the file cannot be read (no such file, a directory, a device, a /proc
                file), or a FIFO brought nothing, or nothing within the wait.
            OutOfBounds: the file does not fit in the block at ``offset``.
            KeyConflict: the range holds bytes of another key (and not ``force``), or the key
                lives in another block.
        """
        key = validate_key(str(key))
        _check_place(block_id, offset)
        if block_id is not None:
            self._room(block_id, offset)  # a wrong block is told before a FIFO is waited on
        with inputs.open_path(path) as source:
            return self.store_stream(key, source, block_id, offset, force, progress, on_size)

    def store_stream(self, key: str, source: inputs.Input | int | BinaryIO,
                     block_id: str | None = None, offset: int = 0, force: bool = False,
                     progress: Progress | None = None,
                     on_size: Progress | None = None) -> StoreResult:
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
            FileError: nothing arrived (a stream, or standard input, with no bytes: an empty
                key is refused), or the input cannot be read.
            OutOfBounds: the bytes do not fit in the block at ``offset``.
            KeyConflict: the range holds bytes of another key (and not ``force``), or the key
                lives in another block.
        """
        key = validate_key(str(key))
        _check_place(block_id, offset)
        room = None if block_id is None else self._room(block_id, offset)
        given = inputs.given_input(source)
        if given.size is not None:
            if on_size is not None:
                on_size(given.size)
            if given.size == 0 and not given.empty_ok:
                raise FileError(f"nothing arrived on {given.name}; nothing was stored")
            result = self._store_source(
                key, given.size, transfer.FileSource(given.fd, given.name, given.size,
                                                     given.start),
                block_id, offset, force, progress)
            given.consumed()
            return result
        try:
            spool = input_stream.read_to_end(given, room, progress)
        except OutOfBounds as exc:
            size = room + offset  # type: ignore[operator]
            raise OutOfBounds(
                f"{given.name} brought more than {room} bytes: at most {room} bytes fit in "
                f"{block_id} (size {size}) from offset {offset}; nothing was written",
                block_id=block_id, offset=offset, block_size=size) from exc
        try:
            if spool.pos == 0:
                raise FileError(f"nothing arrived on {given.name}; nothing was stored")
            return self._store_source(key, spool.pos,
                                      input_stream.spooled_source(spool, given.name),
                                      block_id, offset, force, None)
        finally:
            spool.close()

    def _room(self, block_id: str, offset: int) -> int:
        """The bytes that fit in ``block_id`` from ``offset`` (the block must exist).

        Raises:
            OutOfBounds: ``offset`` is negative or past the block's end.
            BlockNotFound: no such block.
        """
        check_start(offset)
        block = self.block_info(block_id)
        if offset > block.size:
            raise OutOfBounds(f"offset {offset} is past the end of {block_id} (size "
                              f"{block.size})", block_id=block_id, offset=offset)
        return block.size - offset

    def _store_source(self, key: str, length: int, source: transfer.Source,
                      block_id: str | None, offset: int, force: bool,
                      progress: Progress | None) -> StoreResult:
        """Write ``length`` bytes of ``source`` under ``key``: at ``offset`` of ``block_id``,
        or (without it) in the key's place or a block allocated for them (freed again if the
        write fails)."""
        allocated = None
        if block_id is None:
            block_id, offset, allocated = self.place_for(key, length)
        try:
            info = self._write(block_id, offset, length, key, force, source, progress)
        except BaseException:
            if allocated is not None:
                self.deallocate(allocated)
            raise
        return StoreResult(block=info, key=key, offset=offset, length=length,
                           allocated=allocated is not None)

    def place_for(self, key: str, length: int,
                  node: str | None = None) -> tuple[str, int, str | None]:
        """Where bytes stored under ``key`` without a block id go.

        The key's place when it has one extent and the bytes fit there, else a new block (on
        ``node`` when given), held for this process's write: if the process dies before the
        write commits, the block is freed. The new block is allocated for ``key``: deleting
        the key frees it when no other key lives in it.

        Returns:
            ``(block_id, offset, allocated_block_id_or_None)``.

        Raises:
            KeyConflict: the key exists elsewhere and the bytes do not fit in its place.
        """
        found = self.find_key(key)
        if found is not None:
            start = found.extents[0][0]
            if len(found.extents) == 1 and start + length <= found.block.size:
                return found.block_id, start, None
            raise KeyConflict(
                f"key {key!r} already lives in {found.block_id} ({len(found.extents)} "
                f"extent(s), block size {found.block.size}) and the new {length} bytes do not "
                f"replace it in place; store it with --block-id {found.block_id} --offset N, "
                f"or deallocate {found.block_id} first", key=key, block_id=found.block_id)
        info = self._allocate(max(length, 1), node, holder=this_process(), for_key=key)
        return info.block_id, 0, info.block_id

    def write(self, block_id: str, data: Any, offset: int = 0, key: str | None = None,
              force: bool = False, progress: Progress | None = None,
              meta: dict[str, Any] | None = None) -> BlockInfo:
        """Write a bytes-like object into a block at ``offset`` (optionally under ``key``); a
        list (or tuple) of them is written one after another, as one write, with no copy into
        one buffer first.

        ``meta`` says what the key's bytes are (``put`` records an array's dtype and shape).

        Raises:
            OutOfBounds, KeyConflict, BlockNotFound, InvalidArgument.
        """
        source: transfer.Source
        if isinstance(data, (list, tuple)):
            source = transfer.GatherSource([memoryview(part).cast("B") for part in data])
            length = source.length
        else:
            view = memoryview(data).cast("B")
            source, length = transfer.BufferSource(view), len(view)
        if key is not None:
            key = validate_key(str(key))
        return self._write(block_id, offset, length, key, force, source, progress, meta)

    def _write(self, block_id: str, offset: int, length: int, key: str | None, force: bool,
               source: transfer.Source, progress: Progress | None,
               meta: dict[str, Any] | None = None) -> BlockInfo:
        """prepare (claims the range) → claim the key in the directory → copy → commit."""
        number, node = self._block_node(block_id)
        block = node.prepare_write(number, offset, length, key, force, this_process())
        copying = False
        try:
            if key is not None:
                self._claim(key, block_id)
            copying = True
            node.fill(block, offset, length, source, progress or transfer.no_progress)
            return node.commit_write(number, offset, length, key, meta)
        except BaseException:
            try:
                node.abort_write(number, offset, key, torn=copying)
            except GridError:
                pass
            raise

    # -- reads ----------------------------------------------------------------------------------

    def plan_read(self, target: str, size: int | None = None, offset: int = 0) -> list[Piece]:
        """Resolve a block id or key and a range into the runs of bytes to read, in order.

        For a block, the default range runs from ``offset`` to the block's high-water mark (the
        end of its furthest write). For a key, ``offset`` and ``size`` count within the key's
        bytes (its extents one after the other).

        Raises:
            KeyNotFound: ``target`` is neither a block id nor a key.
            OutOfBounds: the range does not fit.
        """
        if size is not None:
            whole_bytes(size, "size")
        check_start(offset, size)
        if looks_like_block_id(target):
            block = self.block_info(target)
            if offset > block.size:
                raise OutOfBounds(f"offset {offset} is past the end of {target} (size "
                                  f"{block.size})", block_id=target, offset=offset)
            length = max(0, block.used - offset) if size is None else size
            check_range(target, block.size, offset, length, "read")
            return [Piece(block, offset, length)]
        found, version = self._find_key(validate_key(str(target)))
        if found is None:
            raise KeyNotFound(
                f"no block or key named {target!r}: block ids look like block_<n>_<node>; "
                "`grid memory list-objects` shows the blocks and their keys", key=target)
        runs = slice_extents(found.extents, offset, size, what=f"key {target!r}")
        return [Piece(found.block, start, length, version, found.generation)
                for start, length in runs]

    def read_into_sink(self, pieces: list[Piece],
                       sink: transfer.Sink | Callable[[memoryview], object],
                       progress: Progress | None = None) -> int:
        """Hand the bytes of ``pieces`` to ``sink`` (a :class:`~distributed_grid.memory.
        transfer.Sink` or a callable) in order; returns the byte count."""
        sink = transfer.as_sink(sink)
        for piece in pieces:
            _, node = self._block_node(piece.block.block_id)
            node.drain(piece.block, piece.offset, piece.length, sink,
                       progress or transfer.no_progress)
        return sum(p.length for p in pieces)

    def read_to(self, target: str, sink: transfer.Sink | Callable[[memoryview], object],
                size: int | None = None, offset: int = 0, progress: Progress | None = None,
                pieces: list[Piece] | None = None) -> int:
        """Hand the bytes of a block or key to ``sink``, in order; returns the byte count.

        The bytes are those from before a concurrent write or from after it, never a mix
        (each block's write guard sees to a piece). A key is found again after its bytes were
        read when its node's catalog changed since its place was read (always, for another
        host's node): if its place moved, the read is done again, so a key rewritten meanwhile
        never comes back as a mix of its old place and new bytes, and a key deleted meanwhile
        (its block freed, or its bytes given to another key) raises KeyNotFound. A sink that
        cannot go back gets a key's bytes once they are whole.

        Args:
            pieces: the plan from :meth:`plan_read` when the caller made it already.
        """
        sink = transfer.as_sink(sink)
        if pieces is None:
            pieces = self.plan_read(target, size, offset)
        if looks_like_block_id(target):
            return self.read_into_sink(pieces, sink, progress)
        spool = None if sink.rewindable else transfer.SpoolSink()
        out = spool or sink
        try:
            while True:
                planned = tuple(p.version for p in pieces)  # taken before the place was read
                start = out.mark()
                gone: BlockNotFound | None = None
                try:
                    count = self.read_into_sink(pieces, out, progress if out is sink else None)
                except BlockNotFound as exc:
                    gone = exc  # the key's block went meanwhile: where is the key now?
                else:
                    if None not in planned and planned == self._catalog_versions(pieces):
                        break
                again = self.plan_read(target, size, offset)  # KeyNotFound: it was deleted
                if _places(again) == _places(pieces):
                    if gone is not None:
                        raise gone
                    break
                if isinstance(out, transfer.BufferSink) and \
                        len(out.dest) - start < sum(p.length for p in again):
                    raise _PlanChanged(again)  # the caller's buffer no longer fits
                out.rewind(start)
                pieces = again
            if spool is not None:
                spool.hand_to(sink, progress or transfer.no_progress)
        finally:
            if spool is not None:
                spool.close()
        return count

    def _catalog_versions(self, pieces: list[Piece]) -> tuple[tuple[int, int], ...] | None:
        """The versions of the catalogs holding ``pieces`` (None if one is on another host)."""
        versions = []
        for piece in pieces:
            _, node = self._block_node(piece.block.block_id)
            if not isinstance(node, LocalNode):
                return None
            versions.append(node.catalog.change_mark())
        return tuple(versions)

    def read(self, target: str, size: int | None = None, offset: int = 0) -> bytes:
        """The bytes of a block or key (default: up to the block's high-water mark), as they
        were before or after any concurrent write, never a mix.

        The bytes are copied once, straight into the ``bytes`` returned (on this host from the
        segment on two threads; from another host out of each chunk Ray brings): see
        :mod:`distributed_grid.memory.io.buffers`.
        """
        from distributed_grid.memory.io.buffers import new_bytes

        pieces = self.plan_read(target, size, offset)
        while True:
            length = sum(p.length for p in pieces)
            made = new_bytes(length)
            spare = bytearray(length) if made is None else None
            out, dest = made if made is not None else (None, memoryview(spare))
            try:
                count = self.read_to(target, transfer.BufferSink(dest), size, offset,
                                     pieces=pieces)
            except _PlanChanged as changed:
                pieces = changed.pieces
                continue
            finally:
                dest.release()
            if out is None:
                return bytes(spare[:count]) if count != length else bytes(spare)  # type: ignore[index]
            return out if count == length else out[:count]

    def read_into(self, target: str, buffer: Any, size: int | None = None,
                  offset: int = 0) -> int:
        """Copy the bytes of a block or key (the range :meth:`read` would return) into
        ``buffer`` from its start, and return how many there were: no new memory, so on the
        block's host the copy runs at memory speed into pages the caller has already touched
        (a numpy array, a ``bytearray``, an ``mmap``, a pinned buffer: any writable,
        contiguous bytes-like object). The bytes are untorn, as :meth:`read` says.

        Raises:
            InvalidArgument: ``buffer`` is not a writable contiguous buffer, or holds fewer
                bytes than the range (found before the copy, so the buffer is as it was; but
                for a key rewritten longer while it was read, after the first try).
            KeyNotFound, OutOfBounds: as :meth:`plan_read`.
        """
        try:
            dest = memoryview(buffer)
        except TypeError:
            raise InvalidArgument(f"read_into needs a writable bytes-like buffer (bytearray, "
                                  f"numpy array, mmap), got {type(buffer).__name__}") from None
        if dest.readonly or not dest.c_contiguous:
            why = "read-only" if dest.readonly else "not contiguous"
            dest.release()
            raise InvalidArgument(f"read_into needs a writable, C-contiguous buffer; this one "
                                  f"is {why}")
        with dest, dest.cast("B") as flat:
            pieces = self.plan_read(target, size, offset)
            while True:
                length = sum(p.length for p in pieces)
                if length > len(flat):
                    raise InvalidArgument(
                        f"the buffer holds {len(flat)} bytes and {target!r} has {length} to "
                        "read from there; give a bigger buffer, or size= to read fewer",
                        target=target, bytes=length)
                try:
                    return self.read_to(target, transfer.BufferSink(flat), size, offset,
                                        pieces=pieces)
                except _PlanChanged as changed:  # rewritten meanwhile, and longer
                    pieces = changed.pieces

    def retrieve_to_file(self, target: str, path: str, size: int | None = None, offset: int = 0,
                         progress: Progress | None = None,
                         pieces: list[Piece] | None = None) -> RetrieveResult:
        """Write a block's or key's bytes to ``path`` (replaced only once they are complete).

        What happens to an existing file, a link, a FIFO or a device at ``path``: see
        :mod:`distributed_grid.memory.io.output_file`.

        Args:
            pieces: the plan from :meth:`plan_read` when the caller made it already.

        Raises:
            FileError: ``path`` cannot be written; it is as it was.
        """
        if pieces is None:
            pieces = self.plan_read(target, size, offset)
        with OutputFile(path) as out:
            written = self.read_to(target, transfer.FdSink(out.fd), size, offset, progress,
                                   pieces)
        return RetrieveResult(target=target, path=str(path), bytes=written, offset=offset,
                              blocks=sorted({p.block.block_id for p in pieces}))

    # -- arrays ---------------------------------------------------------------------------------

    def view(self, block_id: str, dtype: Any = "uint8", shape: Any = None,
             offset: int = 0, consistent: bool = False, populate: bool = False) -> np.ndarray:
        """A numpy array over a block: zero-copy and writable on this host (live memory), else
        (or with ``consistent``) a read-only copy no concurrent write tore. ``populate`` maps
        every page at once, for a caller about to write all of it.

        See :func:`distributed_grid.memory.values.arrays.view`.
        """
        from distributed_grid.memory.values import arrays  # numpy is imported when arrays are used

        return arrays.view(self, block_id, dtype, shape, offset, consistent, populate)

    def put(self, key: str, array: Any, node: str | None = None) -> StoreResult:
        """Store a numpy array under ``key`` with its dtype and shape.

        See :func:`distributed_grid.memory.values.arrays.put`.
        """
        from distributed_grid.memory.values import arrays

        return arrays.put(self, key, array, node)

    def get(self, key: str, consistent: bool = False) -> np.ndarray:
        """The array stored under ``key``; zero-copy on this host.

        See :func:`distributed_grid.memory.values.arrays.get`.
        """
        from distributed_grid.memory.values import arrays

        return arrays.get(self, key, consistent)

    def put_object(self, key: str, obj: Any, node: str | None = None) -> StoreResult:
        """Store a Python object under ``key``, pickled with cloudpickle.

        See :func:`distributed_grid.memory.values.objects.put_object`.
        """
        from distributed_grid.memory.values import objects

        return objects.put_object(self, key, obj, node)

    def get_object(self, key: str) -> Any:
        """The object stored under ``key`` by :meth:`put_object`. Unpickling runs code of
        whoever wrote the key: trusted data only.

        See :func:`distributed_grid.memory.values.objects.get_object`.
        """
        from distributed_grid.memory.values import objects

        return objects.get_object(self, key)

    def put_tensors(self, key: str, tensors: Any, node: str | None = None,
                    metadata: dict[str, str] | None = None) -> StoreResult:
        """Store named tensors (numpy arrays or torch tensors) under ``key`` as a safetensors
        file.

        See :func:`distributed_grid.memory.values.tensors.put_tensors`.
        """
        from distributed_grid.memory.values import tensors as safetensors

        return safetensors.put_tensors(self, key, tensors, node, metadata)

    def get_tensors(self, key: str, framework: str = "numpy") -> dict[str, Any]:
        """The named tensors of a safetensors key (or a stored ``.safetensors`` file) as numpy
        arrays or torch tensors; zero-copy on this host.

        See :func:`distributed_grid.memory.values.tensors.get_tensors`.
        """
        from distributed_grid.memory.values import tensors as safetensors

        return safetensors.get_tensors(self, key, framework)

    def open_block(self, block_id: str,
                   populate: bool = False) -> tuple[int, memoryview | None]:
        """A block's size and, on this host, a writable view of its bytes (None elsewhere);
        with ``populate`` every page is mapped at once (``MAP_POPULATE``).

        The view holds a mapping of its own: the memory stays valid while the view (or an
        array over it) lives, even if the block is deallocated meanwhile, and goes with it.

        Raises:
            BlockNotFound: no such block.
        """
        number, node = self._block_node(block_id)
        if isinstance(node, LocalNode):
            return node.open_block(number, populate)
        return node.block_info(number).size, None

    def close(self) -> None:
        """Release the pool's connections; a non-persistent pool also frees its blocks.

        Persistent blocks stay: they belong to the stores. Live views stay valid until released.
        """
        if self._lease is not None:
            name, handle = self._lease
            self._lease = None
            self._each_node("release_lease", lambda _: (name,))
            self.ray.end_lease(handle)
        for node in self._nodes.values():
            if isinstance(node, LocalNode):
                node.close()
        self._nodes.clear()


def _reconnect(address: str, config: ClusterConfig | str | None, force_remote: bool,
               persistent: bool) -> MemoryPool:
    """A pickled :class:`MemoryPool`, connected again (see :meth:`MemoryPool.__reduce__`)."""
    return MemoryPool(address, config=config, force_remote=force_remote,
                      start_if_missing=False, persistent=persistent)


def _check_place(block_id: str | None, offset: int) -> None:
    """Refuse an offset without a block: bytes without a block id go to a new block (or to
    the key's place) from its start."""
    check_start(offset)
    if block_id is None and offset:
        raise InvalidArgument(
            f"offset {offset} needs a block id (--block-id BLOCK): without one the bytes go to "
            "a new block, or to the key's place, from its start", offset=offset)


class _PlanChanged(Exception):
    """A key's place changed while it was read, and the caller's buffer does not fit it."""

    def __init__(self, pieces: list[Piece]) -> None:
        super().__init__("the key's place changed")
        self.pieces = pieces


def _version(node: Node) -> tuple[int, int] | None:
    """The version of a node's catalog, changed by any commit, this process's own (other
    threads') included (None for a node reached through its store)."""
    return node.catalog.change_mark() if isinstance(node, LocalNode) else None


def _places(pieces: list[Piece]) -> list[tuple[str, str, int, int, int]]:
    """What a read plan reads: each piece's block (id and token), offset and length, and the
    generation of the key they hold."""
    return [(p.block.block_id, p.block.token, p.offset, p.length, p.generation)
            for p in pieces]
