"""Reads through the pool: a block's or a key's bytes, untorn, into any sink.

A read is planned first (:meth:`Reader.plan`: the runs of bytes, block by block), then each run
is handed to the sink by its node, untorn by concurrent writes of those bytes (the block's
write guard sees to a run). A key is found again after its bytes were read when its node's
catalog changed since its place was read (always, for another host's node): if its place
moved, the read is done again (:meth:`Reader.read_to`, the one untorn-read loop of a key), so a
key rewritten meanwhile never comes back as a mix of its old place and new bytes, and a key
deleted meanwhile (its block freed, or its bytes given to another key) raises KeyNotFound. A
sink that cannot go back gets a key's bytes once they are whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distributed_grid.errors import BlockNotFound, InvalidArgument, KeyNotFound, OutOfBounds
from distributed_grid.memory.client.keys import KeyIndex
from distributed_grid.memory.client.router import Router
from distributed_grid.memory.io import copies, sinks
from distributed_grid.memory.io.buffers import new_bytes
from distributed_grid.memory.io.extents import slice_extents
from distributed_grid.memory.io.output_file import OutputFile
from distributed_grid.names import (
    check_range,
    check_start,
    looks_like_block_id,
    validate_key,
    whole_bytes,
)
from distributed_grid.records import Piece, RetrieveResult

Progress = copies.Progress


class Reader:
    """Reads of one pool.

    Args:
        router: the pool's nodes.
        keys: the cluster's keys.
    """

    def __init__(self, router: Router, keys: KeyIndex) -> None:
        self.router = router
        self.keys = keys

    def plan(self, target: str, size: int | None = None, offset: int = 0) -> list[Piece]:
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
            number, node = self.router.block_node(target)
            block = node.block_info(number)
            if offset > block.size:
                raise OutOfBounds(f"offset {offset} is past the end of {target} (size "
                                  f"{block.size})", block_id=target, offset=offset)
            length = max(0, block.used - offset) if size is None else size
            check_range(target, block.size, offset, length, "read")
            return [Piece(block, offset, length)]
        found, version = self.keys.find(validate_key(target))
        if found is None:
            raise KeyNotFound(
                f"no block or key named {target!r}: block ids look like block_<n>_<node>; "
                "`grid memory list-objects` shows the blocks and their keys", key=target)
        runs = slice_extents(found.extents, offset, size, what=f"key {target!r}")
        return [Piece(found.block, start, length, version, found.generation)
                for start, length in runs]

    def to_sink(self, pieces: list[Piece], sink: sinks.Sink,
                progress: Progress | None = None) -> int:
        """Hand the bytes of ``pieces`` to ``sink`` in order; returns the byte count."""
        for piece in pieces:
            _, node = self.router.block_node(piece.block.block_id)
            node.drain(piece.block, piece.offset, piece.length, sink,
                       progress or copies.no_progress)
        return sum(p.length for p in pieces)

    def read_to(self, target: str, sink: sinks.Sink, size: int | None = None, offset: int = 0,
                progress: Progress | None = None, pieces: list[Piece] | None = None) -> int:
        """Hand the bytes of a block or key to ``sink``, in order; returns the byte count.

        The bytes are those from before a concurrent write or from after it, never a mix; a
        key rewritten or deleted while it was read is read again or raises KeyNotFound (see
        :mod:`distributed_grid.memory.client.reads`). A sink that cannot go back gets a key's
        bytes once they are whole.

        Args:
            pieces: the plan from :meth:`plan` when the caller made it already.

        Raises:
            PlanChanged: a key's place changed while it was read and ``sink`` (a buffer) is
                too small for its new one (:meth:`read` and :meth:`read_into` take it).
        """
        if pieces is None:
            pieces = self.plan(target, size, offset)
        if looks_like_block_id(target):
            return self.to_sink(pieces, sink, progress)
        spool = None if sink.rewindable else sinks.SpoolSink()
        out = spool or sink
        try:
            while True:
                planned = tuple(p.version for p in pieces)  # taken before the place was read
                start = out.mark()
                gone: BlockNotFound | None = None
                try:
                    count = self.to_sink(pieces, out, progress if out is sink else None)
                except BlockNotFound as exc:
                    gone = exc  # the key's block went meanwhile: where is the key now?
                else:
                    if None not in planned and planned == self._versions(pieces):
                        break
                again = self.plan(target, size, offset)  # KeyNotFound: it was deleted
                if _same_places(again, pieces):
                    if gone is not None:
                        raise gone
                    break
                if isinstance(out, sinks.BufferSink) and \
                        len(out.dest) - start < sum(p.length for p in again):
                    raise PlanChanged(again)  # the caller's buffer no longer fits
                out.rewind(start)
                pieces = again
            if spool is not None:
                spool.hand_to(sink, progress or copies.no_progress)
        finally:
            if spool is not None:
                spool.close()
        return count

    def into_buffer(self, target: str, size: int | None, offset: int,
                    buffer_for: Callable[[int], memoryview]) -> int:
        """Read into the buffer ``buffer_for(length)`` gives for the planned length, asked
        again when a key's place changed meanwhile and no longer fits (each view it gives is
        released after its try); returns the byte count."""
        pieces = self.plan(target, size, offset)
        while True:
            with buffer_for(sum(p.length for p in pieces)) as dest:
                try:
                    return self.read_to(target, sinks.BufferSink(dest), size, offset,
                                        pieces=pieces)
                except PlanChanged as changed:
                    pieces = changed.pieces

    def read(self, target: str, size: int | None = None, offset: int = 0) -> bytes:
        """The bytes of a block or key (default: up to the block's high-water mark), as they
        were before or after any concurrent write, never a mix.

        The bytes are copied once, straight into the ``bytes`` returned (on this host from the
        segment on two threads; from another host out of each chunk Ray brings): see
        :mod:`distributed_grid.memory.io.buffers`.
        """
        made: list[bytes | bytearray] = []

        def fresh(length: int) -> memoryview:
            new = new_bytes(length)  # None: small, or not CPython: a bytearray, then bytes()
            out, view = new if new is not None else _spare(length)
            made[:] = [out]
            return view

        count = self.into_buffer(target, size, offset, fresh)
        out = made[0]
        if isinstance(out, bytearray):
            return bytes(out[:count]) if count != len(out) else bytes(out)
        return out if count == len(out) else out[:count]

    def read_into(self, target: str, buffer: Any, size: int | None = None,
                  offset: int = 0) -> int:
        """Copy the bytes of a block or key (the range :meth:`read` would return) into
        ``buffer`` from its start, and return how many there were: no new memory, so on the
        block's host the copy runs at memory speed into pages the caller has already touched
        (a numpy array, a ``bytearray``, an ``mmap``: any writable, contiguous bytes-like
        object). The bytes are untorn, as :meth:`read` says.

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
            def fits(length: int) -> memoryview:
                if length > len(flat):
                    raise InvalidArgument(
                        f"the buffer holds {len(flat)} bytes and {target!r} has {length} to "
                        "read from there; give a bigger buffer, or size= to read fewer",
                        target=target, bytes=length)
                return flat[:]  # a view of its own: released after each try

            return self.into_buffer(target, size, offset, fits)

    def retrieve_to_file(self, target: str, path: str, size: int | None = None,
                         offset: int = 0, progress: Progress | None = None,
                         pieces: list[Piece] | None = None) -> RetrieveResult:
        """Write a block's or key's bytes to ``path`` (replaced only once they are complete).

        What happens to an existing file, a link, a FIFO or a device at ``path``: see
        :mod:`distributed_grid.memory.io.output_file`.

        Raises:
            FileError: ``path`` cannot be written; it is as it was.
        """
        if pieces is None:
            pieces = self.plan(target, size, offset)
        with OutputFile(path) as out:
            written = self.read_to(target, sinks.FdSink(out.fd), size, offset, progress,
                                   pieces)
        return RetrieveResult(target=target, path=str(path), bytes=written, offset=offset,
                              blocks=sorted({p.block.block_id for p in pieces}))

    def _versions(self, pieces: list[Piece]) -> tuple[tuple[int, int] | None, ...]:
        """The versions of the catalogs holding ``pieces`` now (None for another host's)."""
        return tuple(self.router.block_node(p.block.block_id)[1].change_mark() for p in pieces)


def _spare(length: int) -> tuple[bytearray, memoryview]:
    spare = bytearray(length)
    return spare, memoryview(spare)


class PlanChanged(Exception):
    """A key's place changed while it was read, and the caller's buffer does not fit it."""

    def __init__(self, pieces: list[Piece]) -> None:
        super().__init__("the key's place changed")
        self.pieces = pieces


def _same_places(now: list[Piece], read: list[Piece]) -> bool:
    """Whether a read plan made again reads what the plan read did: each piece's block,
    offset and length; and, in the same copy of a block, the same memory (its token) and the
    same generation of the key. (A replicated block's copies number their keys' extents
    each their own way: a read that failed over to another copy is judged by its place.)"""
    return len(now) == len(read) and all(
        (a.block.block_id, a.offset, a.length) == (b.block.block_id, b.offset, b.length) and
        ((a.block.node, a.block.number) != (b.block.node, b.block.number) or
         (a.block.token, a.generation) == (b.block.token, b.generation))
        for a, b in zip(now, read, strict=True))
