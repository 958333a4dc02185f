"""Copies of big runs of bytes on ``COPY_THREADS`` threads, with progress.

On the block's host a buffer or a file goes into a block with ``pwrite`` through the segment's
descriptor (:func:`fill_fd`: a buffer is written as it is, a file through a small buffer per
thread that stays in the CPU's cache). A big buffer (see ``local_node.MAPPED_MIN``) is copied
through a mapping of the block that the node keeps, with numpy on ``COPY_THREADS`` threads, each
mapping the pages of its next piece in one call first (:func:`populate`: a page fault per page
cost more than the copy itself here); into pages never written, :func:`fill_both_ways` runs
``pwrite`` and the mapping at once (``pwrite`` into tmpfs holds the file's lock, so its own
threads do not add up). Elsewhere the same pieces (:data:`CHUNK`) travel as ObjectRefs
(:mod:`distributed_grid.memory.client.remote_node`).
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

from distributed_grid.memory.io.sources import Source

try:  # streaming stores (native/copy.c); numpy's copy where it is not built
    from distributed_grid.memory.io._copy import copy as _stream_copy
except ImportError:  # pragma: no cover - built wherever a C compiler exists
    _stream_copy = None

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
    together(*[lambda s=s: span(s, min(half, length - s)) for s in range(0, length, half)])


def together(*calls: Callable[[], object]) -> None:
    """Run each of ``calls`` on a thread of its own (the first on this one) and wait for all;
    raises the first failure. Plain threads: ``concurrent.futures`` costs 10 ms to import, on
    the clock of a process's first copy."""
    failures: list[BaseException] = []

    def run(call: Callable[[], object]) -> None:
        try:
            call()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(call,), daemon=True) for call in calls[1:]]
    for thread in threads:
        thread.start()
    run(calls[0])
    for thread in threads:
        thread.join()
    if failures:
        raise failures[0]


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
                populate(mapped[at : at + size], write=False)  # their pages exist
            copy_piece(to[at : at + size], frm[at : at + size])
            progress(size)

    in_parallel(len(src), span)


def read_into_mapped(dest: memoryview, source: Source, progress: Progress = no_progress) -> None:
    """Read ``len(dest)`` bytes of ``source`` (a file, say) straight into ``dest``, a mapping
    whose pages exist (written before, or a spare's): on ``COPY_THREADS`` threads, each mapping
    the pages of its next piece in one call (:func:`populate`), then reading into them: one
    copy of each byte, out of the page cache into the block (1 GiB in 0.13 s here, against
    0.20 s for ``pwrite`` from a buffer, which copies twice and holds the file's lock).
    """

    def span(start: int, n: int) -> None:
        for pos, size in chunks(n, FAULT_PIECE):
            at = start + pos
            piece = dest[at : at + size]
            madvise(piece, MADV_POPULATE_READ)
            source.read_into(at, piece)
            progress(size)

    in_parallel(len(dest), span)


def copy_piece(dest: Any, src: Any) -> None:
    """``dest[:] = src`` for numpy arrays of bytes of one length, big ones (megabytes), with
    the GIL let go: with streaming stores (``native/copy.c``: the destination's cache lines are
    not read before they are written; 1 GiB into a block's mapped pages on two threads in 0.07 s
    here, against 0.10 s with numpy's copy), else numpy's."""
    if _stream_copy is not None:
        _stream_copy(dest, src)
    else:
        import numpy as np

        np.copyto(dest, src)


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
            copy_piece(to[at : at + n], frm[at : at + n])
            progress(n)

    together(by_pwrite, by_mapping)


# -- mapping pages in before a copy ------------------------------------------------------------

FAULT_PIECE = 8 * 2**20  # the pages one ``populate`` call maps, just before they are copied
MADV_POPULATE_READ, MADV_POPULATE_WRITE = 22, 23  # Linux 5.14
_madvise: Any = None  # libc's madvise (through ctypes, which lets go of the GIL), or False


def madvise(buffer: Any, advice: int) -> bool:
    """``madvise(advice)`` over the pages of ``buffer`` (a writable buffer over a mapping: an
    ``mmap``, or a numpy array over one); returns whether the kernel took it. False on a
    kernel that does not know the advice (then nothing is tried again) or when it failed (a
    full tmpfs: the copy that follows meets it)."""
    global _madvise
    if _madvise is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        _madvise = libc.madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _madvise.restype = ctypes.c_int
    call = _madvise  # another thread may set it to False meanwhile
    if call is False or not len(buffer):
        return False
    import ctypes

    if hasattr(buffer, "ctypes"):
        address, length = buffer.ctypes.data, buffer.nbytes
    else:
        held = (ctypes.c_char * len(buffer)).from_buffer(buffer)
        address, length = ctypes.addressof(held), len(buffer)
        del held  # the mapping may be closed once this returns
    start = address // mmap.PAGESIZE * mmap.PAGESIZE
    if call(start, address + length - start, advice) == 0:
        return True
    if ctypes.get_errno() == errno.EINVAL:
        _madvise = False  # this kernel does not know it
    return False


def populate(array: Any, write: bool) -> None:
    """Map every page of ``array`` (a numpy array over a mapping) in one ``madvise`` call.

    A page fault costs about 1 µs on this VM: 0.26 s per GiB of 4 KiB pages, more than the
    copy itself. Populating maps the same pages without the faults, and on two threads at once
    (tmpfs takes no lock of the whole file for it). On a kernel without it (before 5.14) this
    does nothing and the copy takes the faults. A failure to get the pages (tmpfs full) is the
    copy's to meet: blocks are allocated whole, so their pages exist.

    ``write=False`` (``MADV_POPULATE_READ``) is the one for pages that exist, to be read or
    written: a read fault maps 16 of them at once (the kernel's fault-around), and a shared
    mapping of tmpfs, which keeps no dirty accounting, maps them writable: 1 GiB of written
    pages was mapped in 0.035 s on two threads here, against 0.19 s with ``write=True``
    (``MADV_POPULATE_WRITE``: one fault per page), the one for pages never written (each
    is zeroed on its fault either way).
    """
    madvise(array, MADV_POPULATE_WRITE if write else MADV_POPULATE_READ)


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
