"""Moving bytes between files, buffers and blocks, in bounded chunks, with progress.

Local path: the block's mapping is filled straight from the file (``os.preadv`` into the
mapping, one copy, two threads: the kernel copy releases the GIL) or drained straight into the
output. Remote path: chunks travel as Ray ObjectRefs with at most ``IN_FLIGHT`` chunks
outstanding, so a block of any size never needs more than ``IN_FLIGHT * CHUNK`` bytes of object
store at once.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from distributed_grid.errors import FileError

CHUNK = 64 * 2**20
IN_FLIGHT = 4
COPY_THREADS = 2

Progress = Callable[[int], None]  # called with the number of bytes just moved
Sink = Callable[[memoryview], None]  # takes the next bytes of the output, in order


def _noop(_: int) -> None:
    pass


def _chunks(length: int, chunk: int = CHUNK) -> Iterator[tuple[int, int]]:
    pos = 0
    while pos < length:
        n = min(chunk, length - pos)
        yield pos, n
        pos += n


def fill_from_file(fd: int, file_offset: int, dest: memoryview, path: str,
                   progress: Progress = _noop) -> None:
    """Read ``len(dest)`` bytes of the file at ``file_offset`` into ``dest`` (one copy)."""

    def read_piece(start: int, n: int) -> int:
        view = dest[start : start + n]
        got = 0
        while got < n:
            r = os.preadv(fd, [view[got:]], file_offset + start + got)
            if r == 0:
                raise FileError(f"{path} ended early: expected {len(dest)} bytes")
            got += r
        progress(n)
        return n

    pieces = list(_chunks(len(dest)))
    if len(pieces) <= 1:
        for start, n in pieces:
            read_piece(start, n)
        return
    with ThreadPoolExecutor(COPY_THREADS) as pool:
        for future in [pool.submit(read_piece, s, n) for s, n in pieces]:
            future.result()


def drain_to_sink(source: memoryview, sink: Sink, progress: Progress = _noop) -> None:
    """Hand ``source`` to ``sink`` chunk by chunk."""
    for start, n in _chunks(len(source)):
        sink(source[start : start + n])
        progress(n)


def remote_fill(store: Any, number: int, block_offset: int, length: int,
                read_into: Callable[[int, memoryview], None], progress: Progress = _noop) -> None:
    """Send ``length`` bytes into a remote block, chunk by chunk, as ObjectRefs.

    Args:
        store: the block's store actor handle.
        number: the block's number on its node.
        block_offset: where in the block the bytes go.
        length: how many bytes.
        read_into: ``read_into(pos, buffer)`` fills ``buffer`` with the bytes at ``pos``.
        progress: called with each chunk's size once the store has it.
    """
    import numpy as np
    import ray

    pending: deque[tuple[Any, int]] = deque()
    for pos, n in _chunks(length):
        # A fresh buffer per chunk: Ray may keep a small object's buffer without copying it.
        buf = np.empty(n, dtype=np.uint8)
        read_into(pos, memoryview(buf))
        ref = ray.put(buf)
        del buf
        pending.append((store.write_chunk.remote(number, block_offset + pos, ref), n))
        if len(pending) >= IN_FLIGHT:
            done, size = pending.popleft()
            ray.get(done)
            progress(size)
    while pending:
        done, size = pending.popleft()
        ray.get(done)
        progress(size)


def remote_drain(store: Any, number: int, offset: int, length: int, sink: Sink,
                 progress: Progress = _noop) -> None:
    """Fetch ``length`` bytes of a remote block from ``offset``; hand them to ``sink`` in order."""
    import ray

    pending: deque[tuple[Any, int]] = deque()
    chunks = iter(_chunks(length))
    for pos, n in chunks:
        pending.append((store.read_chunk.remote(number, offset + pos, n), n))
        if len(pending) >= IN_FLIGHT:
            break
    while pending:
        ref, n = pending.popleft()
        array = ray.get(ref)
        sink(memoryview(array))
        del array, ref
        progress(n)
        nxt = next(chunks, None)
        if nxt is not None:
            pending.append((store.read_chunk.remote(number, offset + nxt[0], nxt[1]), nxt[1]))


def fd_sink(fd: int) -> Sink:
    """A sink writing to a file descriptor (a file or a pipe), handling short writes."""

    def write(view: memoryview) -> None:
        while len(view):
            try:
                n = os.write(fd, view)
            except BrokenPipeError:
                raise
            except OSError as exc:
                raise FileError(f"cannot write the output: {exc.strerror}") from exc
            view = view[n:]

    return write
