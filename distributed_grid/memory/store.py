"""A node's block store: its blocks, their keys and extents, and the journal that keeps them.

:class:`BlockStore` is a plain class holding every policy decision (bounds, key ownership,
numbering); :mod:`distributed_grid.memory.store_actor` runs one per node as a Ray actor, which
makes it the only writer of the node's metadata. It is tested without Ray as well as through it.

The metadata lives in a journal file beside the segments (in /dev/shm), rewritten atomically
after every change, so a store restarted after a crash (even SIGKILL) adopts the blocks that are
there. Block numbers only grow, and the next number is journaled before a segment is created, so
a number is never reused: a stale block id can never reach somebody else's data.

Write protocol: ``prepare_write`` checks the range and records the key's extent as pending,
the bytes are copied (by a local client straight into the mapping, or by the store from chunks
sent through Ray), then ``commit_write`` marks it complete. A refused write has changed nothing.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from distributed_grid.errors import (
    BlockNotFound,
    InvalidArgument,
    KeyConflict,
    KeyNotFound,
    OutOfBounds,
    StoreFull,
)
from distributed_grid.memory import segment as seg
from distributed_grid.memory.block_id import format_block_id

JOURNAL_VERSION = 1
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
MAX_KEY_LENGTH = 1024


@dataclass
class Extent:
    """A run of bytes of a block that belongs to one key."""

    offset: int
    length: int
    complete: bool = False

    @property
    def end(self) -> int:
        return self.offset + self.length


@dataclass
class BlockRecord:
    """Everything the store knows about one of its blocks."""

    number: int
    size: int
    segment: str
    token: str  # hex of the token written in the segment header
    created: float
    high_water: int = 0
    keys: dict[str, list[Extent]] = field(default_factory=dict)
    status: str = "ok"  # "ok", or "missing" when the segment vanished behind the store's back
    key_meta: dict[str, dict[str, Any]] = field(default_factory=dict)  # e.g. an array's dtype
    lease: str | None = None  # a non-persistent block lives while this named actor does


def validate_node_name(name: str) -> str:
    """Return ``name`` if it can name a node, else raise :class:`InvalidArgument`."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid node name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def validate_key(key: str) -> str:
    """Return ``key`` if it can name stored data, else raise :class:`InvalidArgument`."""
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or "\0" in key:
        raise InvalidArgument(
            f"invalid key {key!r}: a key is a non-empty string of at most {MAX_KEY_LENGTH} "
            "characters without NUL"
        )
    return key


class BlockStore:
    """The blocks of one node.

    Args:
        node: the node's name (part of every block id and segment name).
        cluster_id: the cluster's identity (part of every segment name, so two clusters on one
            host never collide).
        capacity: the most bytes this store may hold in blocks; None for the host's free
            shared memory.
    """

    def __init__(self, node: str, cluster_id: str, capacity: int | None = None) -> None:
        self.node = validate_node_name(node)
        if not re.fullmatch(r"[A-Za-z0-9]{1,32}", cluster_id):
            raise InvalidArgument(f"invalid cluster id {cluster_id!r}")
        self.cluster_id = cluster_id
        self.capacity = capacity
        self.prefix = f"/dg.{cluster_id}.{node}."
        self.journal_path = os.path.join(seg.SHM_DIR, f"dgj.{cluster_id}.{node}.json")
        self.next_number = 0
        self.blocks: dict[int, BlockRecord] = {}
        self._segments: dict[int, seg.Segment] = {}
        self._adopt()

    # -- journal --------------------------------------------------------------------------------

    def _adopt(self) -> None:
        """Load the journal left by an earlier incarnation and reconcile it with /dev/shm."""
        try:
            with open(self.journal_path, encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError:
            state = None
        if state is not None:
            self.next_number = int(state["next_number"])
            for raw in state["blocks"]:
                keys = {k: [Extent(**e) for e in ext] for k, ext in raw.pop("keys").items()}
                record = BlockRecord(**raw, keys=keys)
                self.blocks[record.number] = record
        on_host = set(seg.list_segment_names(self.prefix))
        known = {r.segment for r in self.blocks.values()}
        for name in on_host - known:
            # A segment created after its number was journaled but before the block was:
            # the allocation never completed, so nobody holds its id.
            if re.fullmatch(re.escape(self.prefix) + r"\d+", name):
                seg.unlink_segment(name)
        for record in self.blocks.values():
            record.status = "ok" if record.segment in on_host else "missing"

    def _save(self) -> None:
        state = {
            "version": JOURNAL_VERSION,
            "node": self.node,
            "cluster_id": self.cluster_id,
            "next_number": self.next_number,
            "blocks": [asdict(r) for r in self.blocks.values()],
        }
        tmp = f"{self.journal_path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f, separators=(",", ":"))
        os.replace(tmp, self.journal_path)

    # -- blocks ---------------------------------------------------------------------------------

    def block_id(self, number: int) -> str:
        return format_block_id(number, self.node)

    def _record(self, number: int) -> BlockRecord:
        record = self.blocks.get(number)
        if record is None:
            raise BlockNotFound(
                f"no block {self.block_id(number)} on node {self.node} "
                f"(it has {self._ids_summary()})"
            )
        if record.status != "ok":
            raise BlockNotFound(
                f"block {self.block_id(number)} lost its shared memory (segment "
                f"{record.segment} is gone from this host); deallocate it"
            )
        return record

    def _ids_summary(self) -> str:
        if not self.blocks:
            return "no blocks"
        ids = [self.block_id(n) for n in sorted(self.blocks)]
        shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
        return f"blocks {shown}"

    def used_bytes(self) -> int:
        return sum(r.size for r in self.blocks.values() if r.status == "ok")

    def free_bytes(self, capacity: int | None = None) -> int:
        """Bytes a new block may still take: the host's free shared memory, under the cap.

        Args:
            capacity: the cap to apply (a client's cluster config); None for the store's own.
        """
        _, free = seg.shm_capacity()
        free = max(0, free - seg.HEADER_SIZE)
        cap = self.capacity if capacity is None else capacity
        if cap is not None:
            free = min(free, max(0, cap - self.used_bytes()))
        return free

    def allocate(self, size: int, lease: str | None = None,
                 capacity: int | None = None) -> dict[str, Any]:
        """Create a block of ``size`` bytes and return its info.

        Args:
            size: the block's size in bytes.
            lease: for a non-persistent block, the name of the actor whose life it shares.
            capacity: the cap on this node's block bytes in the caller's cluster config.

        Raises:
            InvalidArgument: ``size`` is not a positive integer.
            StoreFull: the node cannot hold ``size`` more bytes.
        """
        if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
            raise InvalidArgument(f"block size must be a positive number of bytes, got {size!r}")
        free = self.free_bytes(capacity)
        if size > free:
            raise StoreFull(
                f"cannot allocate {size} bytes on node {self.node}: it can hold at most "
                f"{free} more bytes"
            )
        number = self.next_number
        self.next_number += 1
        self._save()  # journal the number first: it is spent even if creation fails
        token = secrets.token_bytes(seg.TOKEN_SIZE)
        name = f"{self.prefix}{number}"
        segment = seg.Segment.create(name, size, token)
        record = BlockRecord(
            number=number, size=size, segment=name, token=token.hex(), created=time.time(),
            lease=lease,
        )
        self.blocks[number] = record
        self._segments[number] = segment
        try:
            self._save()
        except BaseException:
            del self.blocks[number]
            self._segments.pop(number).close()
            segment.unlink()
            raise
        return self.info(number)

    def deallocate(self, number: int) -> dict[str, Any]:
        """Free a block and forget its keys; returns the info it had.

        Live mappings in other processes stay valid until they close; the memory goes then.
        """
        if number not in self.blocks:
            self._record(number)  # raises BlockNotFound with the list of blocks
        info = self.info(number)
        record = self.blocks.pop(number)
        self._save()
        segment = self._segments.pop(number, None)
        if segment is not None:
            try:
                segment.close()
            except BufferError:
                pass  # a chunk view is still referenced; the mapping goes with it
        seg.unlink_segment(record.segment)
        return info

    def leases(self) -> list[str]:
        """The names of the leases that non-persistent blocks of this store live by."""
        return sorted({r.lease for r in self.blocks.values() if r.lease is not None})

    def release_lease(self, lease: str) -> list[str]:
        """Free every block that lives by ``lease`` (its owner is gone); returns their ids."""
        numbers = [n for n, r in self.blocks.items() if r.lease == lease]
        for number in numbers:
            self.deallocate(number)
        return [self.block_id(n) for n in numbers]

    def destroy(self) -> int:
        """Free every block and remove the journal (the cluster is going away)."""
        count = 0
        for number in list(self.blocks):
            self.deallocate(number)
            count += 1
        try:
            os.unlink(self.journal_path)
        except FileNotFoundError:
            pass
        return count

    def info(self, number: int) -> dict[str, Any]:
        """Public facts about a block, as plain data."""
        r = self.blocks[number]
        return {
            "block_id": self.block_id(number),
            "node": self.node,
            "number": r.number,
            "size": r.size,
            "used": r.high_water,
            "created": r.created,
            "status": r.status,
            "segment": r.segment,
            "token": r.token,
            "keys": {
                k: [[e.offset, e.length] for e in ext if e.complete] for k, ext in r.keys.items()
            },
            "pending_keys": sorted(
                k for k, ext in r.keys.items() if any(not e.complete for e in ext)
            ),
            "persistent": r.lease is None,
        }

    def list_blocks(self) -> list[dict[str, Any]]:
        return [self.info(n) for n in sorted(self.blocks)]

    def block_info(self, number: int) -> dict[str, Any]:
        self._record(number)
        return self.info(number)

    def stats(self, capacity: int | None = None) -> dict[str, Any]:
        total, free = seg.shm_capacity()
        return {
            "node": self.node,
            "shm_total": total,
            "shm_free": free,
            "capacity": self.capacity if capacity is None else capacity,
            "free_for_blocks": self.free_bytes(capacity),
            "blocks": sum(1 for r in self.blocks.values() if r.status == "ok"),
            "block_bytes": self.used_bytes(),
        }

    # -- keys -----------------------------------------------------------------------------------

    def find_key(self, key: str) -> dict[str, Any] | None:
        """The block holding ``key`` and the key's complete extents, or None."""
        for number in sorted(self.blocks):
            record = self.blocks[number]
            extents = [e for e in record.keys.get(key, []) if e.complete]
            if extents:
                return {
                    **self.info(number),
                    "extents": [[e.offset, e.length] for e in sorted(extents, key=_by_offset)],
                    "meta": record.key_meta.get(key),
                }
        return None

    def list_keys(self) -> dict[str, str]:
        """Every complete key of this node, mapped to the id of the block holding it."""
        return {
            key: self.block_id(number)
            for number, record in sorted(self.blocks.items())
            for key, ext in record.keys.items()
            if any(e.complete for e in ext)
        }

    # -- writes ---------------------------------------------------------------------------------

    def prepare_write(
        self, number: int, offset: int, length: int, key: str | None = None, force: bool = False
    ) -> dict[str, Any]:
        """Check a write of ``length`` bytes at ``offset`` and claim the range for ``key``.

        Rules: the range must lie inside the block; it may not touch bytes of another key (nor
        of another extent of the same key) unless ``force``; a key written again at the same
        offset replaces that extent. With ``force`` the overlapped extents of other keys are
        dropped (their bytes are being overwritten). A key lives in one block only.

        Returns:
            The block info (segment name and token let a local client write directly).

        Raises:
            OutOfBounds, InvalidArgument, KeyConflict, BlockNotFound.
        """
        record = self._record(number)
        block_id = self.block_id(number)
        check_range(block_id, record.size, offset, length, "write")
        if key is not None:
            validate_key(key)
            elsewhere = self._block_of_key(key)
            if elsewhere is not None and elsewhere != number:
                raise KeyConflict(
                    f"key {key!r} already lives in {self.block_id(elsewhere)}; a key lives in "
                    f"one block: store it there, or deallocate {self.block_id(elsewhere)} first"
                )
        end = offset + length
        clashes = [
            (other, e)
            for other, extents in record.keys.items()
            for e in extents
            if e.offset < end and offset < e.end and not (other == key and e.offset == offset)
        ]
        if clashes and not force:
            other, e = clashes[0]
            who = "another extent of key" if other == key else "key"
            raise KeyConflict(
                f"cannot write {length} bytes at offset {offset} into {block_id}: bytes "
                f"{e.offset}..{e.end} belong to {who} {other!r}; write elsewhere, or pass "
                "--force to overwrite them"
            )
        for other, e in clashes:
            record.keys[other].remove(e)
            if not record.keys[other]:
                del record.keys[other]
                record.key_meta.pop(other, None)
        if key is not None:
            extents = [e for e in record.keys.get(key, []) if e.offset != offset]
            extents.append(Extent(offset, length, complete=False))
            record.keys[key] = sorted(extents, key=_by_offset)
        self._save()
        return self.info(number)

    def commit_write(self, number: int, offset: int, length: int, key: str | None = None,
                     meta: dict[str, Any] | None = None) -> dict:
        """Mark a prepared write as complete and move the block's high-water mark.

        Args:
            meta: what the key's bytes are (an array's dtype and shape); None for plain bytes.
        """
        record = self._record(number)
        check_range(self.block_id(number), record.size, offset, length, "write")
        if key is not None:
            for e in record.keys.get(key, []):
                if e.offset == offset and e.length == length:
                    e.complete = True
                    break
            else:
                raise KeyNotFound(
                    f"no pending write of key {key!r} at offset {offset} in {self.block_id(number)}"
                )
            if meta is None:
                record.key_meta.pop(key, None)
            else:
                record.key_meta[key] = meta
        record.high_water = max(record.high_water, offset + length)
        self._save()
        return self.info(number)

    def abort_write(self, number: int, offset: int, key: str | None = None) -> None:
        """Forget a prepared write that did not finish (its extent is dropped)."""
        record = self.blocks.get(number)
        if record is None or key is None or key not in record.keys:
            return
        record.keys[key] = [e for e in record.keys[key] if e.offset != offset or e.complete]
        if not record.keys[key]:
            del record.keys[key]
            record.key_meta.pop(key, None)
        self._save()

    def _block_of_key(self, key: str) -> int | None:
        for number, record in self.blocks.items():
            if key in record.keys:
                return number
        return None

    # -- bytes (the remote path) ----------------------------------------------------------------

    def segment(self, number: int) -> seg.Segment:
        """This process's mapping of a block's segment (opened on first use)."""
        record = self._record(number)
        segment = self._segments.get(number)
        if segment is None:
            segment = seg.Segment.attach(record.segment)
            if segment.token.hex() != record.token:
                segment.close()
                raise BlockNotFound(f"segment {record.segment} does not hold block {number}")
            self._segments[number] = segment
        return segment

    def write_bytes(self, number: int, offset: int, data: Any) -> int:
        """Copy ``data`` (any buffer) into the block at ``offset``; returns the bytes written."""
        record = self._record(number)
        view = memoryview(data).cast("B")
        check_range(self.block_id(number), record.size, offset, view.nbytes, "write")
        target = self.segment(number).data()
        try:
            target[offset : offset + view.nbytes] = view
        finally:
            target.release()
        return view.nbytes

    def read_view(self, number: int, offset: int, length: int) -> memoryview:
        """A view (no copy) of ``length`` bytes of the block from ``offset``."""
        record = self._record(number)
        check_range(self.block_id(number), record.size, offset, length, "read")
        return self.segment(number).data()[offset : offset + length]


def remove_host_leftovers(cluster_id: str) -> list[str]:
    """Unlink this host's segments and journals of a cluster that is being stopped.

    For nodes whose store is gone (a dead raylet), nobody else would free them.
    """
    names = seg.list_segment_names(f"dg.{cluster_id}.")
    for name in names:
        seg.unlink_segment(name)
    for journal in seg.list_segment_names(f"dgj.{cluster_id}."):
        try:
            os.unlink(os.path.join(seg.SHM_DIR, journal.lstrip("/")))
        except FileNotFoundError:
            pass
    return names


def _by_offset(e: Extent) -> int:
    return e.offset


def check_range(block_id: str, size: int, offset: int, length: int, verb: str) -> None:
    for name, value in (("offset", offset), ("size", length)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidArgument(f"{name} must be a whole number of bytes, got {value!r}")
    if offset < 0:
        raise OutOfBounds(f"offset must be 0 or more, got {offset}")
    if length < 0:
        raise OutOfBounds(f"size must be 0 or more, got {length}")
    if offset + length > size:
        prep = "into" if verb == "write" else "from"
        raise OutOfBounds(
            f"cannot {verb} {length} bytes at offset {offset} {prep} {block_id} (size {size}): "
            f"at most {max(0, size - offset)} bytes fit from that offset"
        )
