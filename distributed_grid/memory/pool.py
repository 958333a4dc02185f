"""The client: routes a block id or key to its node's store, and moves the bytes.

A block id names its node, so the pool asks that node's store actor about it. The bytes take
the local path (this process maps the block's segment and copies straight in or out) when the
pool can attach the segment and reads back the token the store wrote in its header: that proves
it is the same memory. Otherwise (another host, or ``DISTRIBUTED_GRID_FORCE_REMOTE=1``) they
travel through the store actor as ObjectRefs, in bounded chunks.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from distributed_grid import cluster
from distributed_grid.config import ClusterConfig, memory_cap, use_config
from distributed_grid.errors import (
    BlockNotFound,
    ClusterError,
    FileError,
    GridError,
    InvalidArgument,
    KeyConflict,
    KeyNotFound,
    NodeUnavailable,
    OutOfBounds,
    StoreFull,
)
from distributed_grid.memory import arrays, transfer
from distributed_grid.memory import segment as seg
from distributed_grid.memory.block_id import looks_like_block_id, parse_block_id
from distributed_grid.memory.extents import slice_extents
from distributed_grid.memory.store import check_range, validate_key
from distributed_grid.memory.store_actor import (
    STORE_PROTOCOL,
    get_store,
    last_known_blocks,
    make_lease,
)

FORCE_REMOTE_ENV = "DISTRIBUTED_GRID_FORCE_REMOTE"
STORE_CALL_TIMEOUT = 300.0  # seconds; a store that has not answered by then counts as gone
MAPPINGS_KEPT = 8

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Piece:
    """A run of bytes of one block, part of what a read returns."""

    block: dict[str, Any]
    offset: int
    length: int


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
        persistent: blocks this pool allocates stay until deallocated (True), or are freed by
            :meth:`close` and when this process ends, however it ends (False).
    """

    def __init__(self, address: str | None = None, *, config: ClusterConfig | str | None = None,
                 force_remote: bool | None = None, start_if_missing: bool = True,
                 persistent: bool = True) -> None:
        config = use_config(config)
        if address is None and config is not None:
            address = config.address
        self.address = cluster.connect(address, start_if_missing=start_if_missing)
        self.cluster_id = cluster.cluster_id()
        self.force_remote = _force_remote_default() if force_remote is None else force_remote
        self._stores: dict[str, Any] = {}
        self._mappings: OrderedDict[str, seg.Segment] = OrderedDict()
        self.persistent = persistent
        self._lease: tuple[str, Any] | None = None if persistent else make_lease()

    # -- plumbing -------------------------------------------------------------------------------

    def nodes(self) -> list[cluster.NodeInfo]:
        """The alive nodes of the cluster."""
        return cluster.nodes()

    def _store(self, node_name: str) -> Any:
        handle = self._stores.get(node_name)
        if handle is None:
            node = cluster.find_node(node_name)
            handle = get_store(node.name, node.node_id, self.cluster_id)
            served = self._get(handle.ping.remote(), node_name)
            if served.get("protocol") != STORE_PROTOCOL:
                raise ClusterError(
                    f"the store of node {node_name} runs another version of distributed_grid "
                    f"(from {served.get('package', 'an older installation')}); the cluster was "
                    "started by another installation: stop it (`grid cluster stop` there) and "
                    "run again"
                )
            self._stores[node_name] = handle
        return handle

    def _get(self, refs: Any, node: str) -> Any:
        """``ray.get`` with the store's errors re-raised as themselves."""
        import ray

        try:
            return ray.get(refs, timeout=STORE_CALL_TIMEOUT)
        except Exception as exc:
            self._reraise(exc, node)

    def _call(self, node: str, method: str, *args: Any) -> Any:
        return self._get(getattr(self._store(node), method).remote(*args), node)

    def _call_all(self, method: str, *args: Any) -> dict[str, Any]:
        names = [n.name for n in self.nodes()]
        refs = [getattr(self._store(name), method).remote(*args) for name in names]
        return {name: self._get(ref, name) for name, ref in zip(names, refs, strict=True)}

    def _attach(self, block: dict[str, Any]) -> seg.Segment | None:
        """A new mapping of the block, when it is provably on this host (else None)."""
        if self.force_remote:
            return None
        try:
            segment = seg.Segment.attach(block["segment"])
        except (seg.SegmentNotFound, InvalidArgument, OSError):
            return None
        if segment.token.hex() != block["token"] or segment.size != block["size"]:
            segment.close()
            return None
        return segment

    @contextmanager
    def _mapped(self, block: dict[str, Any]) -> Iterator[seg.Segment | None]:
        """This process's mapping of the block for a bulk copy, when it is on this host.

        The last ``MAPPINGS_KEPT`` mappings are kept: a new mapping costs a page walk on the
        first copy (a second store into the same 1 GiB block runs about 2x faster here, see
        benchmarks/). Each operation first drops kept mappings whose segment is gone from the
        host, so a block freed elsewhere is not held in memory by this process for long.
        """
        self._drop_stale_mappings()
        name = block["segment"]
        segment = self._mappings.pop(name, None)
        if segment is not None and segment.token.hex() != block["token"]:
            _close_quietly(segment)
            segment = None
        if segment is None:
            segment = self._attach(block)
        if segment is None:
            yield None
            return
        self._mappings[name] = segment
        while len(self._mappings) > MAPPINGS_KEPT:
            _close_quietly(self._mappings.popitem(last=False)[1])
        yield segment

    def _drop_stale_mappings(self) -> None:
        for name in [n for n in self._mappings if not seg.segment_exists(n)]:
            _close_quietly(self._mappings.pop(name))

    def is_local(self, block_id: str) -> bool:
        """Whether this process reaches ``block_id`` zero-copy (same host, proven by token)."""
        with self._mapped(self.block_info(block_id)) as segment:
            return segment is not None

    # -- blocks ---------------------------------------------------------------------------------

    def allocate(self, size: int, node: str | None = None) -> dict[str, Any]:
        """Allocate a block of ``size`` bytes; returns its info (``block_id`` among it).

        Without ``node``, the worker with the most free shared memory is chosen (the head only
        when there is no worker).

        Raises:
            InvalidArgument: ``size`` is not a positive whole number of bytes.
            NodeNotFound: no node is called ``node``.
            StoreFull: the node cannot hold ``size`` bytes.
        """
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise InvalidArgument(f"size must be a positive number of bytes, got {size!r}")
        node = cluster.find_node(node).name if node is not None else self._choose_node(size)
        return self._call(node, "allocate", size, self._lease[0] if self._lease else None,
                          memory_cap(node))

    def _choose_node(self, size: int) -> str:
        known = self.nodes()
        candidates = [n.name for n in known if not n.is_head] or [n.name for n in known]
        refs = [self._store(name).stats.remote(memory_cap(name)) for name in candidates]
        stats = {name: self._get(ref, name) for name, ref in zip(candidates, refs, strict=True)}
        # Nodes on one host see the same free memory, give or take the last few pages: compare
        # it in 64 MiB steps, then prefer the node holding fewer block bytes, then the name.
        best = min(candidates, key=lambda name: (-(stats[name]["free_for_blocks"] >> 26),
                                                 stats[name]["block_bytes"], name))
        free = stats[best]["free_for_blocks"]
        if size > free:
            raise StoreFull(
                f"cannot allocate {size} bytes: the most any node can hold is {free} bytes "
                f"(node {best})"
            )
        return best

    def block_info(self, block_id: str) -> dict[str, Any]:
        """The facts of one block: node, size, used bytes, keys, status.

        Raises:
            InvalidArgument: ``block_id`` is not of the form ``block_<n>_<node>``.
            BlockNotFound: no such block (its node is unknown, or it has no such block).
        """
        number, node = self._locate(block_id)
        return self._call(node, "block_info", number)

    @staticmethod
    def _locate(block_id: str) -> tuple[int, str]:
        """``(number, node)`` of a block whose node is alive; no actor call.

        Raises:
            InvalidArgument: not a block id.
            BlockNotFound: no node of that name.
            NodeUnavailable: the node is gone (the block is lost).
        """
        number, node = parse_block_id(block_id)
        try:
            cluster.find_node(node)
        except NodeUnavailable as exc:
            raise NodeUnavailable(f"block {block_id} is lost: {exc}") from exc
        except GridError as exc:
            raise BlockNotFound(f"no block {block_id}: {exc}") from exc
        return number, node

    def deallocate(self, block_id: str) -> dict[str, Any]:
        """Free a block and its keys; returns the info it had.

        Raises:
            BlockNotFound: no such block.
        """
        number, node = self._locate(block_id)  # a lost node's block: NodeUnavailable
        info = self._call(node, "deallocate", number)
        self._drop_stale_mappings()  # our kept mapping of it, if any, goes now
        return info

    def list_blocks(self) -> list[dict[str, Any]]:
        """Every block of the cluster, ordered by node then number.

        Blocks of a node that is gone are listed as they were last known, with status "lost".
        """
        blocks = [b for per_node in self._call_all("list_blocks").values() for b in per_node]
        for node in cluster.nodes(include_dead=True):
            if not node.alive:
                blocks += [{**b, "status": "lost"} for b in last_known_blocks(node.name)]
        return sorted(blocks, key=lambda b: (b["node"], b["number"]))

    def stats(self) -> list[dict[str, Any]]:
        """Per node: shared-memory capacity and free bytes, block count and bytes."""
        nodes = self.nodes()
        refs = [self._store(n.name).stats.remote(memory_cap(n.name)) for n in nodes]
        return [
            {**self._get(ref, node.name), "node_id": node.node_id, "address": node.address,
             "hostname": node.hostname, "is_head": node.is_head}
            for node, ref in zip(nodes, refs, strict=True)
        ]

    def destroy_all(self) -> int:
        """Free every block on every node (before the cluster is stopped); returns the count."""
        return sum(self._call_all("destroy").values())

    def keys(self) -> dict[str, str]:
        """Every key of the cluster, mapped to the id of its block."""
        merged: dict[str, str] = {}
        for per_node in self._call_all("list_keys").values():
            merged.update(per_node)
        return merged

    def find_key(self, key: str) -> dict[str, Any] | None:
        """The block holding ``key`` with the key's extents, or None."""
        for found in self._call_all("find_key", key).values():
            if found is not None:
                return found
        return None

    # -- writes ---------------------------------------------------------------------------------

    def store_file(self, key: str, path: str, block_id: str | None = None, offset: int = 0,
                   force: bool = False, progress: Progress | None = None) -> dict[str, Any]:
        """Store a file's bytes under ``key``; returns the block info plus where they went.

        Without ``block_id`` the key's existing place is reused when the file fits there, else
        a block that fits is allocated. With ``block_id`` the bytes go at ``offset``.

        Raises:
            FileError: the file cannot be read.
            OutOfBounds: the file does not fit in the block at ``offset``.
            KeyConflict: the range holds bytes of another key (and not ``force``).
        """
        key = validate_key(str(key))
        fd, length = _open_input(path)
        try:
            allocated = None
            if block_id is None:
                block_id, offset, allocated = self.place_for(key, length)

            def fill_local(dest: memoryview) -> None:
                transfer.fill_from_file(fd, 0, dest, path, progress or transfer._noop)

            def read_into(pos: int, buf: memoryview) -> None:
                transfer.fill_from_file(fd, pos, buf, path)

            try:
                info = self._write_range(block_id, offset, length, key, force, fill_local,
                                         read_into, progress)
            except BaseException:
                if allocated is not None:
                    self.deallocate(allocated)
                raise
        finally:
            os.close(fd)
        return {**info, "key": key, "offset": offset, "length": length,
                "allocated": allocated is not None}

    def place_for(self, key: str, length: int) -> tuple[str, int, str | None]:
        """Where bytes stored under ``key`` without a block id go.

        The key's place when it has one extent and the bytes fit there, else a new block.

        Returns:
            ``(block_id, offset, allocated_block_id_or_None)``.

        Raises:
            KeyConflict: the key exists elsewhere and the bytes do not fit in its place.
        """
        found = self.find_key(key)
        if found is not None:
            extents = found["extents"]
            start = extents[0][0]
            if len(extents) == 1 and start + length <= found["size"]:
                return found["block_id"], start, None
            raise KeyConflict(
                f"key {key!r} already lives in {found['block_id']} ({len(extents)} extent(s), "
                f"block size {found['size']}) and the new {length} bytes do not replace it in "
                f"place; store it with --block-id {found['block_id']} --offset N, or deallocate "
                f"{found['block_id']} first"
            )
        info = self.allocate(max(length, 1))
        return info["block_id"], 0, info["block_id"]

    def write(self, block_id: str, data: Any, offset: int = 0, key: str | None = None,
              force: bool = False, progress: Progress | None = None,
              meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write a bytes-like object into a block at ``offset`` (optionally under ``key``).

        ``meta`` says what the key's bytes are (``put`` records an array's dtype and shape).

        Raises:
            OutOfBounds, KeyConflict, BlockNotFound, InvalidArgument.
        """
        view = memoryview(data).cast("B")
        if key is not None:
            key = validate_key(str(key))

        def fill_local(dest: memoryview) -> None:
            transfer.drain_to_sink(view, _into(dest), progress or transfer._noop)

        def read_into(pos: int, buf: memoryview) -> None:
            buf[:] = view[pos : pos + len(buf)]

        return self._write_range(block_id, offset, len(view), key, force, fill_local, read_into,
                                 progress, meta)

    def _write_range(self, block_id: str, offset: int, length: int, key: str | None, force: bool,
                     fill_local: Callable[[memoryview], None],
                     read_into: Callable[[int, memoryview], None],
                     progress: Progress | None,
                     meta: dict[str, Any] | None = None) -> dict[str, Any]:
        number, node = self._locate(block_id)
        block = self._call(node, "prepare_write", number, offset, length, key, force)
        try:
            with self._mapped(block) as segment:
                if segment is not None:
                    segment.populate(offset, length)
                    with segment.data() as dest:
                        fill_local(dest[offset : offset + length])
            if segment is None:
                try:
                    transfer.remote_fill(self._store(node), number, offset, length, read_into,
                                         progress or transfer._noop)
                except GridError:
                    raise
                except Exception as exc:  # a chunk's ray.get
                    self._reraise(exc, node)
        except BaseException:
            try:
                self._call(node, "abort_write", number, offset, key)
            except GridError:
                pass
            raise
        return self._call(node, "commit_write", number, offset, length, key, meta)

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
        for name, value in (("offset", offset), ("size", size)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise InvalidArgument(f"{name} must be a whole number of bytes, got {value!r}")
        if offset < 0:
            raise OutOfBounds(f"offset must be 0 or more, got {offset}")
        if size is not None and size < 0:
            raise OutOfBounds(f"size must be 0 or more, got {size}")
        if looks_like_block_id(target):
            block = self.block_info(target)
            if offset > block["size"]:
                raise OutOfBounds(
                    f"offset {offset} is past the end of {target} (size {block['size']})"
                )
            length = max(0, block["used"] - offset) if size is None else size
            check_range(target, block["size"], offset, length, "read")
            return [Piece(block, offset, length)]
        found = self.find_key(validate_key(str(target)))
        if found is None:
            raise KeyNotFound(
                f"no block or key named {target!r}: block ids look like block_<n>_<node>; "
                "`grid memory list-objects` shows the blocks and their keys"
            )
        runs = slice_extents(found["extents"], offset, size, what=f"key {target!r}")
        return [Piece(found, start, length) for start, length in runs]

    def read_into_sink(self, pieces: list[Piece], sink: transfer.Sink,
                       progress: Progress | None = None) -> int:
        """Hand the bytes of ``pieces`` to ``sink`` in order; returns the byte count."""
        progress = progress or transfer._noop
        for piece in pieces:
            with self._mapped(piece.block) as segment:
                if segment is not None:
                    segment.populate(piece.offset, piece.length)
                    with segment.data() as data:
                        transfer.drain_to_sink(
                            data[piece.offset : piece.offset + piece.length], sink, progress
                        )
            if segment is None:
                node = piece.block["node"]
                try:
                    transfer.remote_drain(self._store(node), piece.block["number"], piece.offset,
                                          piece.length, sink, progress)
                except GridError:
                    raise
                except Exception as exc:  # a chunk's ray.get
                    self._reraise(exc, node)
        return sum(p.length for p in pieces)

    @staticmethod
    def _reraise(exc: Exception, node: str) -> None:
        """Turn a Ray error from ``node``'s store into the library's own error (the one place)."""
        from ray.exceptions import (
            ActorUnschedulableError,
            GetTimeoutError,
            RayActorError,
            RayTaskError,
        )

        if isinstance(exc, RayTaskError) and isinstance(getattr(exc, "cause", None), GridError):
            raise exc.cause from None
        if isinstance(exc, GetTimeoutError):
            raise NodeUnavailable(
                f"the store of node {node} did not answer within {STORE_CALL_TIMEOUT:.0f} s"
            ) from exc
        if isinstance(exc, RayActorError | ActorUnschedulableError):  # the node just died
            raise NodeUnavailable(
                f"the store of node {node} is unavailable ({type(exc).__name__}); "
                "check `grid cluster status`"
            ) from exc
        raise exc

    def read(self, target: str, size: int | None = None, offset: int = 0) -> bytes:
        """The bytes of a block or key (default: up to the block's high-water mark)."""
        pieces = self.plan_read(target, size, offset)
        out = bytearray(sum(p.length for p in pieces))
        self.read_into_sink(pieces, _into(memoryview(out)))
        return bytes(out)

    def retrieve_to_file(self, target: str, path: str, size: int | None = None, offset: int = 0,
                         progress: Progress | None = None,
                         pieces: list[Piece] | None = None) -> dict[str, Any]:
        """Write a block's or key's bytes to ``path`` (replaced only once they are complete).

        Args:
            pieces: the plan from :meth:`plan_read` when the caller made it already.

        Raises:
            FileError: ``path`` cannot be written.
        """
        if pieces is None:
            pieces = self.plan_read(target, size, offset)
        directory = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise FileError(f"cannot write {path}: it is a directory; give a file path")
        tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.part")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as exc:
            raise FileError(f"cannot write {path}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb", buffering=0) as f:
                written = self.read_into_sink(pieces, transfer.fd_sink(f.fileno()), progress)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        return {"target": target, "path": path, "bytes": written,
                "offset": offset, "blocks": sorted({p.block["block_id"] for p in pieces})}

    # -- arrays ---------------------------------------------------------------------------------

    def view(self, block_id: str, dtype: Any = "uint8", shape: Any = None, offset: int = 0):
        """A numpy array over a block: zero-copy and writable on this host, else a read-only copy.

        See :func:`distributed_grid.memory.arrays.view`.
        """
        return arrays.view(self, block_id, dtype, shape, offset)

    def put(self, key: str, array: Any, node: str | None = None) -> dict[str, Any]:
        """Store a numpy array under ``key`` with its dtype and shape.

        See :func:`distributed_grid.memory.arrays.put`.
        """
        return arrays.put(self, key, array, node)

    def get(self, key: str):
        """The array stored under ``key``; zero-copy on this host.

        See :func:`distributed_grid.memory.arrays.get`.
        """
        return arrays.get(self, key)

    def local_data(self, block: dict[str, Any]) -> memoryview | None:
        """A writable memoryview of the block's data when it is on this host, else None.

        The view holds its own mapping: the memory stays valid while the view (or an array
        over it) lives, even if the block is deallocated meanwhile, and goes with it.
        """
        segment = self._attach(block)
        return None if segment is None else segment.data()

    def close(self) -> None:
        """Release the pool: its kept mappings; a non-persistent pool also frees its blocks.

        Persistent blocks stay: they belong to the stores. Live views stay valid until released.
        """
        if self._lease is not None:
            import ray

            name, handle = self._lease
            self._lease = None
            self._call_all("release_lease", name)
            ray.kill(handle)
        while self._mappings:
            _close_quietly(self._mappings.popitem()[1])


def _close_quietly(segment: seg.Segment) -> None:
    try:
        segment.close()
    except BufferError:
        pass  # a view over it lives on; the mapping goes when the view does


def _into(dest: memoryview) -> transfer.Sink:
    pos = 0

    def write(view: memoryview) -> None:
        nonlocal pos
        dest[pos : pos + len(view)] = view
        pos += len(view)

    return write


def _open_input(path: str) -> tuple[int, int]:
    path = str(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise FileError(f"cannot read {path}: no such file") from exc
    except OSError as exc:
        raise FileError(f"cannot read {path}: {exc.strerror}") from exc
    st = os.fstat(fd)
    import stat

    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileError(f"cannot read {path}: not a regular file")
    return fd, st.st_size
