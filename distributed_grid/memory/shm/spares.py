"""Spares: shared memory a node keeps allocated and faulted in, ready to become new blocks.

A new block pays for its memory before a byte is copied: ``posix_fallocate`` finds the pages
(about 1 µs per 4 KiB page on this VM), and the first write of each page zeroes it. A spare
pays both ahead of time, off the caller's path: it is a segment file (``dg.<cluster id>.<node>.
spare<n>``) whose every page was allocated (:func:`grow`: ``posix_fallocate``) and written
(``MADV_POPULATE_WRITE`` through a mapping the filler drops at once). A new block then takes a
spare whole (:func:`adopt`): a link to the block's name, the spare's name unlinked, its size
trimmed or grown to the block's, its header written. A writer then only maps pages that exist
(``MADV_POPULATE_READ``: the kernel maps 16 of them per fault), which costs a fraction of
finding and zeroing them.

A spare is always fresh memory: it is never made of a freed block (a process may still map
that block, and a view of it must never show another block's bytes), and nobody maps a spare
while it waits. What records which spares a node has, and takes them, is the node's catalog
(:mod:`distributed_grid.memory.node.room.spares`).
"""

from __future__ import annotations

import ctypes
import mmap
import os

from distributed_grid.memory.shm.layout import HEADER_SIZE, SHM_DIR
from distributed_grid.memory.shm.segment import reserve, write_header

FILL_PIECE = 32 * 2**20  # what one step of filling allocates and writes (about 10 ms here)
MADV_POPULATE_WRITE = 23  # Linux 5.14; before it, the spare's pages are zeroed by their writer
_libc = ctypes.CDLL(None, use_errno=True)  # its calls let go of the GIL (mmap.madvise does not)
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, name.lstrip("/"))


def make_spare(name: str) -> int:
    """Create an empty spare (no page yet); returns its descriptor, which the caller closes.

    Raises:
        FileExistsError: a file of that name exists.
    """
    return os.open(_path(name), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                   | os.O_NOFOLLOW, 0o600)


def grow(fd: int, start: int, end: int) -> None:
    """Allocate bytes ``start..end`` of a spare (page-aligned) and write every page of them.

    Raises:
        StoreFull: /dev/shm (or the host's memory) cannot hold them.
    """
    reserve(fd, end, end - start, start)
    mapping = mmap.mmap(fd, end - start, flags=mmap.MAP_SHARED, offset=start)
    try:
        held = (ctypes.c_char * len(mapping)).from_buffer(mapping)
        _libc.madvise(ctypes.addressof(held), len(mapping), MADV_POPULATE_WRITE)  # zeroed here
        del held
    finally:
        mapping.close()


def adopt(spare: str, name: str, size: int, token: bytes) -> None:
    """Make spare ``spare`` the segment ``name`` of a block of ``size`` data bytes (see
    :func:`~distributed_grid.memory.shm.segment.create_segment`, which it stands in for): its
    pages beyond the block's are freed, or the block's pages beyond the spare's allocated
    (those are new memory).

    Raises:
        FileNotFoundError: the spare is gone (given back meanwhile).
        FileExistsError: a file named ``name`` exists.
        StoreFull: the block is bigger than the spare and the rest does not fit.
    """
    os.link(_path(spare), _path(name))  # never over another file (rename would replace it)
    os.unlink(_path(spare))
    fd = os.open(_path(name), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        total = HEADER_SIZE + size
        have = os.fstat(fd).st_size
        if have > total:
            os.ftruncate(fd, total)
        elif have < total:
            reserve(fd, total, size)
        write_header(fd, size, token)
    finally:
        os.close(fd)


def remove_spare(name: str) -> bool:
    """Unlink a spare (its memory goes back to the host); returns whether it existed."""
    try:
        os.unlink(_path(name))
    except FileNotFoundError:
        return False
    return True
