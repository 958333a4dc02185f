"""Moving bytes between files, buffers and blocks, in bounded chunks, with progress.

A transfer has a *source* (``source(pos, buf)`` fills ``buf`` with the source's bytes from
``pos``) or a *sink* (``sink(view)`` takes the next bytes of the output, in order). The local
path fills a block's mapping straight from the source, in ``CHUNK``-sized pieces on
``COPY_THREADS`` threads (a file is read with ``preadv`` straight into the mapping: one copy, and
the kernel's copy releases the GIL); the remote path (:mod:`distributed_grid.memory.remote`)
sends the same pieces as ObjectRefs.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

from distributed_grid.errors import FileError

CHUNK = 64 * 2**20
COPY_THREADS = 2

Progress = Callable[[int], None]  # called with the number of bytes just moved
Source = Callable[[int, memoryview], None]  # fills the buffer with the bytes from a position
Sink = Callable[[memoryview], None]  # takes the next bytes of the output, in order


def no_progress(_: int) -> None:
    pass


def chunks(length: int, chunk: int | None = None) -> Iterator[tuple[int, int]]:
    """``(position, size)`` of each piece of ``length`` bytes."""
    chunk = chunk or CHUNK
    pos = 0
    while pos < length:
        n = min(chunk, length - pos)
        yield pos, n
        pos += n


def fill(dest: memoryview, source: Source, progress: Progress = no_progress) -> None:
    """Fill ``dest`` from ``source`` (piece by piece, on two threads when there are several)."""

    def piece(pos: int, n: int) -> None:
        source(pos, dest[pos : pos + n])
        progress(n)

    pieces = list(chunks(len(dest)))
    if len(pieces) <= 1:
        for pos, n in pieces:
            piece(pos, n)
        return
    with ThreadPoolExecutor(COPY_THREADS) as pool:
        for future in [pool.submit(piece, pos, n) for pos, n in pieces]:
            future.result()


def drain(source: memoryview, sink: Sink, progress: Progress = no_progress) -> None:
    """Hand ``source`` to ``sink`` piece by piece."""
    for pos, n in chunks(len(source)):
        sink(source[pos : pos + n])
        progress(n)


def file_source(fd: int, path: str, length: int) -> Source:
    """The bytes of an open file (``length`` of them), read with ``preadv``."""

    def read(pos: int, buf: memoryview) -> None:
        got = 0
        while got < len(buf):
            n = os.preadv(fd, [buf[got:]], pos + got)
            if n == 0:
                raise FileError(f"{path} ended early: expected {length} bytes", path=path)
            got += n

    return read


def buffer_source(data: memoryview) -> Source:
    """The bytes of a buffer."""

    def read(pos: int, buf: memoryview) -> None:
        buf[:] = data[pos : pos + len(buf)]

    return read


def buffer_sink(dest: memoryview) -> Sink:
    """A sink filling ``dest`` from its start."""
    pos = 0

    def write(view: memoryview) -> None:
        nonlocal pos
        dest[pos : pos + len(view)] = view
        pos += len(view)

    return write


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


def open_input(path: str) -> tuple[int, int]:
    """Open a regular file for reading; returns its descriptor and size.

    Raises:
        FileError: it does not exist, cannot be read, or is not a regular file.
    """
    path = str(path)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as exc:
        raise FileError(f"cannot read {path}: no such file", path=path) from exc
    except OSError as exc:
        raise FileError(f"cannot read {path}: {exc.strerror}", path=path) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise FileError(f"cannot read {path}: not a regular file", path=path)
    return fd, st.st_size
