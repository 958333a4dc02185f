"""Moving bytes between files, buffers and blocks, in bounded pieces, with progress.

A transfer reads from a :class:`Source` (a file, or a buffer in memory) and writes to a
:class:`Sink` (a file or pipe, a buffer, or any callable taking the bytes in order).

On the block's host, files and small buffers go through the segment's file descriptor: into a
block with ``pwrite`` on ``COPY_THREADS`` threads (a buffer is written as it is, a file through a
small buffer per thread that stays in the CPU's cache); out of one into a file the same way, into
a pipe with ``sendfile``, into a buffer with ``preadv``. A big buffer (see ``local.MAPPED_MIN``)
is copied through a mapping of the block that
:class:`~distributed_grid.memory.node.local_node.LocalNode`
keeps, with numpy on ``COPY_THREADS`` threads, each mapping the pages of its next piece in one
call first (:func:`populate`: a page fault per page cost more than the copy itself here); into
pages never written, :func:`fill_both_ways` runs ``pwrite`` and the mapping at once (``pwrite``
into tmpfs holds the file's lock, so its own threads do not add up).
Elsewhere the same pieces travel as ObjectRefs (:mod:`distributed_grid.memory.client.remote_node`).
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from distributed_grid.errors import FileError

CHUNK = 64 * 2**20  # the unit of the remote path, and of progress on the local one
PIECE = 2**20  # what one pread/pwrite moves on the local path
COPY_THREADS = 2

Progress = Callable[[int], None]  # called with the number of bytes just moved


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


# -- sources and sinks -------------------------------------------------------------------------


class Source:
    """Where the bytes of a write come from."""

    in_memory = False  # True when :meth:`view` gives the bytes without a copy

    def read_into(self, pos: int, buf: memoryview) -> None:
        """Fill ``buf`` with the source's bytes from ``pos``."""
        raise NotImplementedError

    def view(self, pos: int, n: int) -> memoryview:
        """The bytes themselves (only when :attr:`in_memory`)."""
        raise NotImplementedError

    def parts(self) -> list[tuple[int, memoryview]] | None:
        """The bytes as buffers in memory, each with the position it starts at, in order; None
        when they are not in memory (a file)."""
        return None


class FileSource(Source):
    """The bytes of an open file (``length`` of them from ``start``), read with ``preadv``."""

    def __init__(self, fd: int, path: str, length: int, start: int = 0) -> None:
        self.fd, self.path, self.length, self.start = fd, path, length, start

    def read_into(self, pos: int, buf: memoryview) -> None:
        got = 0
        while got < len(buf):
            n = os.preadv(self.fd, [buf[got:]], self.start + pos + got)
            if n == 0:
                raise FileError(f"{self.path} ended early: expected {self.length} bytes",
                                path=self.path)
            got += n


class BufferSource(Source):
    """The bytes of a buffer."""

    in_memory = True

    def __init__(self, data: memoryview) -> None:
        self.data = data

    def read_into(self, pos: int, buf: memoryview) -> None:
        buf[:] = self.data[pos : pos + len(buf)]

    def view(self, pos: int, n: int) -> memoryview:
        return self.data[pos : pos + n]

    def parts(self) -> list[tuple[int, memoryview]]:
        return [(0, self.data)]


class GatherSource(Source):
    """The bytes of several buffers, one after another (what ``writev`` writes): a header and
    the tensors after it are written where they lie, with no copy into one buffer first."""

    def __init__(self, buffers: list[memoryview]) -> None:
        self._parts: list[tuple[int, memoryview]] = []
        self.length = 0
        for buf in buffers:
            self._parts.append((self.length, buf))
            self.length += len(buf)
        self._starts = [start for start, _ in self._parts]

    def parts(self) -> list[tuple[int, memoryview]]:
        return self._parts

    def read_into(self, pos: int, buf: memoryview) -> None:
        end = pos + len(buf)
        i = max(0, bisect.bisect_right(self._starts, pos) - 1)
        while i < len(self._parts) and self._parts[i][0] < end:
            start, part = self._parts[i]
            low, high = max(start, pos), min(start + len(part), end)
            if low < high:
                buf[low - pos : high - pos] = part[low - start : high - start]
            i += 1


class Sink:
    """Where the bytes of a read go, in order.

    A read that met a concurrent write of its bytes is done again; a sink that can go back
    (:attr:`rewindable`) is rewound to where the read began, any other gets the bytes only once
    they are known to be whole.
    """

    rewindable = False

    def write(self, view: memoryview) -> None:
        raise NotImplementedError

    def mark(self) -> int:
        """Where the next byte goes (for :meth:`rewind`)."""
        raise NotImplementedError

    def rewind(self, mark: int) -> None:
        """Go back to ``mark``: the bytes written since are written again."""
        raise NotImplementedError


class FdSink(Sink):
    """A file or pipe, written from the current position (short writes handled)."""

    def __init__(self, fd: int) -> None:
        import fcntl

        self.fd = fd
        # A file opened to append (``>> FILE``) takes every write at its end, a ``pwrite`` too
        # (Linux): it is written in order, from one thread, as a pipe is but without sendfile.
        self.appends = bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
        # Out of a segment, ``sendfile`` fed a pipe 2.5x faster than read + write here, but a
        # regular file up to 3x slower and unevenly: files take the read + write.
        self.is_file = stat.S_ISREG(os.fstat(fd).st_mode) and not self.appends
        self.rewindable = self.is_file

    def write(self, view: memoryview) -> None:
        while len(view):
            view = view[_write_errors(os.write, self.fd, view):]

    def mark(self) -> int:
        return os.lseek(self.fd, 0, os.SEEK_CUR)

    def rewind(self, mark: int) -> None:
        os.lseek(self.fd, mark, os.SEEK_SET)


class BufferSink(Sink):
    """A buffer, filled from its start."""

    rewindable = True

    def __init__(self, dest: memoryview) -> None:
        self.dest = dest
        self.pos = 0

    def write(self, view: memoryview) -> None:
        copy(self.dest[self.pos : self.pos + len(view)], view)
        self.pos += len(view)

    def write_mapped(self, view: memoryview, progress: Progress = no_progress,
                     paged: bool = False) -> None:
        """:meth:`write` of a view over a mapping, its pages mapped in just before each piece
        is copied (see :func:`copy`) unless they are in already (``paged``)."""
        copy(self.dest[self.pos : self.pos + len(view)], view, progress,
             fault_in=None if paged else "src")
        self.pos += len(view)

    def mark(self) -> int:
        return self.pos

    def rewind(self, mark: int) -> None:
        self.pos = mark


class CallableSink(Sink):
    """Any callable that takes the bytes in order (``bytearray.extend``, say)."""

    def __init__(self, write: Callable[[memoryview], object]) -> None:
        self._write = write

    def write(self, view: memoryview) -> None:
        self._write(view)


STAGE_IN_MEMORY = 64 * 2**20  # a spool holds this much in memory, more in a temporary file


class SpoolSink(Sink):
    """A sink that can go back, standing in for one that cannot (a pipe): the bytes are held
    (in memory up to ``limit``, beyond it in an unnamed file of the temporary directory, so a
    big read does not take its size in RAM) and handed on by :meth:`hand_to` once whole."""

    rewindable = True

    def __init__(self, limit: int = STAGE_IN_MEMORY) -> None:
        self.limit = limit
        self.buf: bytearray | None = bytearray()
        self.fd: int | None = None
        self.pos = 0

    def write(self, view: memoryview) -> None:
        n = len(view)
        if self.buf is not None and self.pos + n > self.limit:
            self._spill()
        if self.buf is not None:
            self.buf[self.pos : self.pos + n] = view
        else:
            done = 0
            while done < n:
                done += os.pwrite(self.fd, view[done:], self.pos + done)  # type: ignore[arg-type]
        self.pos += n

    def _spill(self) -> None:
        import tempfile

        directory = tempfile.gettempdir()
        try:
            fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
        except OSError:  # no O_TMPFILE there: a named file, unlinked at once
            fd, name = tempfile.mkstemp(dir=directory)
            os.unlink(name)
        held = memoryview(self.buf)[: self.pos]  # type: ignore[arg-type]
        done = 0
        while done < len(held):
            done += os.pwrite(fd, held[done:], done)
        self.fd, self.buf = fd, None

    def mark(self) -> int:
        return self.pos

    def rewind(self, mark: int) -> None:
        self.pos = mark

    def hand_to(self, sink: Sink, progress: Progress = no_progress) -> int:
        """Give the bytes written (up to the current position) to ``sink``; returns how many."""
        if self.buf is not None:
            sink.write(memoryview(self.buf)[: self.pos])
            progress(self.pos)
        else:
            drain_fd(self.fd, 0, self.pos, sink, progress)  # type: ignore[arg-type]
        return self.pos

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.buf = None


def as_sink(sink: Sink | Callable[[memoryview], object]) -> Sink:
    return sink if isinstance(sink, Sink) else CallableSink(sink)


@contextmanager
def _output_errors() -> Iterator[None]:
    """Errors writing the output (but a closed pipe) become :class:`FileError`."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise FileError(f"cannot write the output: {exc.strerror}") from exc


def _write_errors(call: Callable[..., int], *args: object) -> int:
    """Run one write to the output, its errors as :func:`_output_errors` says."""
    with _output_errors():
        return call(*args)


# -- copies on COPY_THREADS threads ------------------------------------------------------------

PARALLEL_MIN = 8 * 2**20  # below this one thread copies (a thread costs more than it saves)


def in_parallel(length: int, span: Callable[[int, int], object], unit: int = PIECE) -> None:
    """Run ``span(start, n)`` over ``length`` bytes cut into ``COPY_THREADS`` runs of whole
    ``unit``s, one thread each (the copies release the GIL); one run when it is small."""
    if length < PARALLEL_MIN:
        if length:
            span(0, length)
        return
    half = -(-length // COPY_THREADS // unit) * unit
    spans = [(s, min(half, length - s)) for s in range(0, length, half)]
    from concurrent.futures import ThreadPoolExecutor  # 10 ms to import: only when it helps

    with ThreadPoolExecutor(len(spans)) as pool:
        for future in [pool.submit(span, start, n) for start, n in spans]:
            future.result()


def copy(dest: memoryview, src: memoryview, progress: Progress = no_progress,
         fault_in: str | None = None) -> None:
    """``dest[:] = src`` (same length), on ``COPY_THREADS`` threads when it is big.

    ``fault_in="dest"`` (a mapping about to be written) or ``"src"`` (a mapping about to be
    read): each thread first maps the pages of its next piece of that side in one call
    (:func:`populate`), instead of taking a page fault per page (or per 16) in the copy.
    """
    if len(src) < PARALLEL_MIN:
        dest[:] = src
        progress(len(src))
        return
    import numpy as np  # its copy releases the GIL; a memoryview's does not

    to, frm = np.frombuffer(dest, dtype=np.uint8), np.frombuffer(src, dtype=np.uint8)
    mapped = {"dest": to, "src": frm}.get(fault_in or "")

    def span(start: int, n: int) -> None:
        for pos, size in chunks(n, FAULT_PIECE if mapped is not None else None):
            at = start + pos
            if mapped is not None:
                populate(mapped[at : at + size], write=mapped is to)
            np.copyto(to[at : at + size], frm[at : at + size])
            progress(size)

    in_parallel(len(src), span)


def fill_both_ways(fd: int, base: int, dest: memoryview, src: memoryview,
                   progress: Progress = no_progress) -> None:
    """Write ``src`` into pages of a file that were never written, at ``base`` of descriptor
    ``fd``, which ``dest`` maps: one thread ``pwrite``s pieces from the front, the other maps
    pieces of ``dest`` and copies into them from the back, until they meet.

    Into tmpfs pages never written, ``pwrite`` needs no zeroing but holds the file's lock, so a
    second ``pwrite`` thread adds nothing; a mapping's new pages are zeroed by the kernel
    before they are mapped, but mapping needs no such lock. Each way alone wrote 1 GiB in
    0.27-0.30 s here, the two together in 0.20 s. Taking the pieces from a shared counter
    balances the two on any machine.
    """
    import numpy as np

    length = len(src)
    if length < PARALLEL_MIN:
        dest[:] = src
        progress(length)
        return
    to, frm = np.frombuffer(dest, dtype=np.uint8), np.frombuffer(src, dtype=np.uint8)
    lock = threading.Lock()
    edges = [0, length]  # the front pieces start at edges[0], the back pieces end at edges[1]

    def take(front: bool) -> tuple[int, int] | None:
        with lock:
            low, high = edges
            if low >= high:
                return None
            n = min(FAULT_PIECE, high - low)
            if front:
                edges[0] = low + n
                return low, n
            edges[1] = high - n
            return high - n, n

    def by_pwrite() -> None:
        while (piece := take(True)) is not None:
            at, n = piece
            done = 0
            while done < n:
                done += os.pwrite(fd, src[at + done : at + n], base + at + done)
            progress(n)

    def by_mapping() -> None:
        while (piece := take(False)) is not None:
            at, n = piece
            populate(to[at : at + n], write=True)
            np.copyto(to[at : at + n], frm[at : at + n])
            progress(n)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(by_pwrite), pool.submit(by_mapping)]:
            future.result()


# -- mapping pages in before a copy ------------------------------------------------------------

FAULT_PIECE = 8 * 2**20  # the pages one ``populate`` call maps, just before they are copied
MADV_POPULATE_READ, MADV_POPULATE_WRITE = 22, 23  # Linux 5.14
_madvise: Any = None  # libc's madvise (through ctypes, which lets go of the GIL), or False


def populate(array: Any, write: bool) -> None:
    """Map every page of ``array`` (a numpy array over a mapping) in one ``madvise`` call:
    ``MADV_POPULATE_WRITE`` makes them writable, ``MADV_POPULATE_READ`` readable.

    A page fault costs about 1 µs on this VM: 0.26 s per GiB of 4 KiB pages, more than the
    copy itself. Populating maps the same pages without the faults, and on two threads at once
    (tmpfs takes no lock of the whole file for it). On a kernel without it (before 5.14) this
    does nothing and the copy takes the faults. A failure to get the pages (tmpfs full) is the
    copy's to meet: blocks are allocated whole, so their pages exist.
    """
    global _madvise
    if _madvise is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        _madvise = libc.madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _madvise.restype = ctypes.c_int
    call = _madvise  # another thread may set it to False meanwhile
    if call is False or not len(array):
        return
    import ctypes

    address = array.ctypes.data
    start = address // mmap.PAGESIZE * mmap.PAGESIZE
    advice = MADV_POPULATE_WRITE if write else MADV_POPULATE_READ
    if call(start, address + len(array) - start, advice) != 0 and \
            ctypes.get_errno() == errno.EINVAL:
        _madvise = False  # this kernel does not know it


# -- the local path: a segment's descriptor ----------------------------------------------------


def fill_fd(fd: int, base: int, length: int, source: Source,
            progress: Progress = no_progress) -> None:
    """Write ``length`` bytes of ``source`` at ``base`` of descriptor ``fd``.

    Each of ``COPY_THREADS`` threads writes one half (the kernel's copy releases the GIL).
    """

    def span(start: int, n: int) -> None:
        buf = None if source.in_memory else memoryview(bytearray(min(PIECE, n)))
        done = 0
        for pos, size in chunks(n, PIECE):
            if buf is None:
                data = source.view(start + pos, size)
            else:
                data = buf[:size]
                source.read_into(start + pos, data)
            written = 0
            while written < size:
                written += os.pwrite(fd, data[written:], base + start + pos + written)
            done += size
            if done >= CHUNK:
                progress(done)
                done = 0
        if done:
            progress(done)

    in_parallel(length, span)


def drain_fd(fd: int, base: int, length: int, sink: Sink,
             progress: Progress = no_progress) -> None:
    """Hand ``length`` bytes at ``base`` of descriptor ``fd`` to ``sink``, in order."""
    if isinstance(sink, FdSink) and sink.is_file:  # a file: both halves at once, in place
        out = os.lseek(sink.fd, 0, os.SEEK_CUR)
        with _output_errors():
            fill_fd(sink.fd, out, length, FileSource(fd, "the block", length, base), progress)
        os.lseek(sink.fd, out + length, os.SEEK_SET)
        return
    if isinstance(sink, BufferSink):  # straight into the destination, both halves at once
        dest = sink.dest[sink.pos : sink.pos + length]

        def span(start: int, n: int) -> None:
            for pos, size in chunks(n):
                got = 0
                while got < size:
                    got += os.preadv(fd, [dest[start + pos + got : start + pos + size]],
                                     base + start + pos + got)
                progress(size)

        in_parallel(length, span)
        sink.pos += length
        return
    for pos, n in chunks(length):
        if isinstance(sink, FdSink) and not sink.appends:  # a pipe: in the kernel, no copy
            sent = 0
            while sent < n:
                sent += _write_errors(os.sendfile, sink.fd, fd, base + pos + sent, n - sent)
        else:
            buf = memoryview(bytearray(min(PIECE, n)))
            for at, size in chunks(n, PIECE):
                os.preadv(fd, [buf[:size]], base + pos + at)
                sink.write(buf[:size])
        progress(n)


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
    try:
        unsized = st.st_size == 0 and bool(os.pread(fd, 1, 0))  # /proc, /sys: 0 is not true
    except OSError as exc:
        os.close(fd)
        raise FileError(f"cannot read {path}: {exc.strerror}", path=path) from exc
    if unsized:
        os.close(fd)
        raise FileError(f"cannot read {path}: it does not know its own size (a /proc or /sys "
                        "file); copy it to a regular file first", path=path)
    return fd, st.st_size
