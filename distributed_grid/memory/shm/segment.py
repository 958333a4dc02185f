"""One POSIX shared-memory segment: the memory behind one block.

This module is the only importer of ``posix_ipc``. Owners (a node's store) create and unlink;
everyone else attaches and closes. ``multiprocessing.shared_memory`` is never used: on Python
3.11 every process that attaches registers the segment with its resource tracker, which unlinks
it when that process exits, so a CLI that read a block would destroy it.

The header page's layout, and every name a segment may have, are in
:mod:`distributed_grid.memory.shm.layout`.
"""

from __future__ import annotations

import errno
import mmap
import os

import posix_ipc

from distributed_grid.errors import InvalidArgument, NotFound, StoreFull
from distributed_grid.memory.shm.layout import (
    HEADER,
    HEADER_SIZE,
    LAYOUT_VERSION,
    MAGIC,
    SHM_DIR,
    TOKEN_SIZE,
)


class SegmentNotFound(NotFound):
    """No shared-memory segment has that name on this host."""


def shm_capacity() -> tuple[int, int]:
    """Return ``(total, free)`` bytes of this host's shared-memory filesystem."""
    st = os.statvfs(SHM_DIR)
    return st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize


def list_segment_names(prefix: str) -> list[str]:
    """Return the names (with leading ``/``) of this host's segments that start with ``prefix``."""
    bare = prefix.lstrip("/")
    try:
        entries = os.listdir(SHM_DIR)
    except FileNotFoundError:
        return []
    return sorted("/" + e for e in entries if e.startswith(bare))


class Segment:
    """A mapping of one POSIX shared-memory segment.

    Use :meth:`create` (owner) or :meth:`attach` (anyone on the host). ``close()`` drops this
    process's mapping and never destroys the segment; ``unlink()`` removes the segment's name
    for the whole host (once, by its owner); the memory goes when the last mapping closes.
    """

    _mmap: mmap.mmap | None = None

    def __init__(self, name: str, mapping: mmap.mmap, size: int, token: bytes) -> None:
        self.name = name
        self._mmap = mapping
        self.size = size
        self.token = token
        self._paged: list[tuple[int, int]] = []  # data ranges whose pages this mapping has in

    def holds_token(self) -> bool:
        """Whether the segment's header still holds the token it had when it was mapped (read
        through this mapping: no system call)."""
        if self._mmap is None:
            return False
        return HEADER.unpack_from(self._mmap, 0)[4] == self.token

    def has_pages(self, start: int, end: int) -> bool:
        """Whether this mapping has every page of data bytes ``start..end`` in its page table
        already (as :meth:`note_pages` recorded), so a copy takes no page fault there."""
        return any(low <= start and end <= high for low, high in self._paged)

    def note_pages(self, start: int, end: int) -> None:
        """Record that every page of data bytes ``start..end`` is in this mapping's page table
        (a copy just touched them all)."""
        merged = [(start, end)]
        for low, high in self._paged:
            if high < merged[0][0] or low > merged[0][1]:
                merged.append((low, high))
            else:
                merged[0] = (min(low, merged[0][0]), max(high, merged[0][1]))
        self._paged = merged

    # -- creation and attachment -------------------------------------------------------------

    @classmethod
    def create(cls, name: str, size: int, token: bytes) -> Segment:
        """Create a segment (see :func:`create_segment`) and map it.

        Raises:
            InvalidArgument, StoreFull, FileExistsError: as :func:`create_segment`.
        """
        create_segment(name, size, token)
        try:
            return cls.attach(name)
        except BaseException:
            _unlink_quietly(name)
            raise

    @classmethod
    def attach(cls, name: str) -> Segment:
        """Map an existing segment read-write, without populating its pages.

        Opening costs the same for any size: no copy and no page walk.

        Raises:
            SegmentNotFound: no segment of that name on this host.
            InvalidArgument: the segment is not a distributed_grid segment.
        """
        fd, total, size, token = _open(name)
        try:
            mapping = mmap.mmap(fd, total, flags=mmap.MAP_SHARED)
        finally:
            os.close(fd)
        return cls(name, mapping, size, token)

    # -- access -------------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """Whether this process's mapping has been closed."""
        return self._mmap is None

    def data(self) -> memoryview:
        """A writable memoryview of the data bytes (release it before :meth:`close`)."""
        if self._mmap is None:
            raise ValueError(f"segment {self.name} is closed")
        return memoryview(self._mmap)[HEADER_SIZE : HEADER_SIZE + self.size]

    # -- lifetime -----------------------------------------------------------------------------

    def close(self) -> None:
        """Drop this process's mapping. Does not destroy the segment. Safe to call twice.

        Raises:
            BufferError: a view returned by :meth:`data` is still alive.
        """
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None

    def unlink(self) -> None:
        """Remove the segment's name from the host (owner only); live mappings stay valid."""
        _unlink_quietly(self.name)

    def __enter__(self) -> Segment:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"Segment({self.name!r}, size={self.size}, {state})"


def create_segment(name: str, size: int, token: bytes) -> None:
    """Create a segment of ``size`` data bytes, reserve its memory and write its header.

    The pages are reserved with ``posix_fallocate`` so that a full /dev/shm is an error here
    (:class:`StoreFull`) instead of a SIGBUS on a later write. Nothing is mapped: populating the
    creator's mapping would cost a page-table walk (about 0.45 s per GiB here) that helps no
    other process, since each maps the segment itself.

    Raises:
        InvalidArgument: ``size`` is not positive or the token has the wrong length.
        StoreFull: the host's shared memory cannot hold the segment.
        FileExistsError: a segment of that name exists already.
    """
    if size <= 0:
        raise InvalidArgument(f"segment size must be positive, got {size}")
    if len(token) != TOKEN_SIZE:
        raise InvalidArgument(f"token must be {TOKEN_SIZE} bytes, got {len(token)}")
    try:
        shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600)
    except posix_ipc.ExistentialError as exc:
        raise FileExistsError(errno.EEXIST, f"segment {name} exists already") from exc
    try:
        reserve(shm.fd, HEADER_SIZE + size, size)
        write_header(shm.fd, size, token)
    except BaseException:
        shm.close_fd()
        _unlink_quietly(name)
        raise
    shm.close_fd()


def reserve(fd: int, end: int, size: int, start: int = 0) -> None:
    """``posix_fallocate`` of bytes ``start..end`` of a segment's descriptor (for a block of
    ``size`` data bytes: what a refusal names).

    Raises:
        StoreFull: /dev/shm, or the host's memory, cannot hold them.
    """
    try:
        os.posix_fallocate(fd, start, end - start)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.ENOMEM):
            _, free = shm_capacity()
            why = (f"{free} bytes free in {SHM_DIR}" if exc.errno != errno.ENOMEM else
                   "the host (or this process's cgroup) has no memory left for it")
            raise StoreFull(f"cannot reserve {size} bytes of shared memory: {why}",
                            size=size, free=free) from exc
        raise


def write_header(fd: int, size: int, token: bytes) -> None:
    """Write the header of a segment of ``size`` data bytes holding ``token``."""
    os.pwrite(fd, HEADER.pack(MAGIC, LAYOUT_VERSION, 0, size, token), 0)


def _open(name: str) -> tuple[int, int, int, bytes]:
    """Open a segment and read its header; returns ``(fd, total bytes, data size, token)``.

    The header is read through the descriptor (``pread``), never through a mapping: a new
    mapping's first touch is a page fault, about 14 µs on this VM.
    """
    try:  # what shm_open(3) does on Linux, without a posix_ipc object per open
        fd = os.open(os.path.join(SHM_DIR, name.lstrip("/")),
                     os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError as exc:
        raise SegmentNotFound(f"no shared-memory segment {name} on this host") from exc
    try:
        total = os.fstat(fd).st_size
        header = os.pread(fd, HEADER.size, 0)
        if total < HEADER_SIZE or len(header) < HEADER.size:
            raise InvalidArgument(f"segment {name} is too small to hold a header ({total} B)")
        magic, version, _, size, token = HEADER.unpack(header)
        if magic != MAGIC or version != LAYOUT_VERSION or HEADER_SIZE + size > total:
            raise InvalidArgument(f"segment {name} is not a distributed_grid segment")
    except BaseException:
        os.close(fd)
        raise
    return fd, total, size, token


def _open_block(name: str, token: bytes, size: int) -> tuple[int, int]:
    """Open a segment that must hold ``token`` and ``size`` data bytes (a block's own memory);
    returns ``(fd, total bytes)``."""
    try:
        fd, total, found_size, found_token = _open(name)
    except InvalidArgument as exc:
        raise SegmentNotFound(f"segment {name} is not the block's: {exc}") from exc
    if found_token != token or found_size != size:
        os.close(fd)
        raise SegmentNotFound(f"segment {name} holds another block")
    return fd, total


def _map_block(name: str, token: bytes, size: int, populate: bool = False) -> mmap.mmap:
    fd, total = _open_block(name, token, size)
    flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
    try:
        return mmap.mmap(fd, total, flags=flags)
    finally:
        os.close(fd)


def map_data(name: str, token: bytes, size: int, populate: bool = False) -> memoryview:
    """A writable view of a block's bytes over a new mapping of its segment (no page touched,
    unless ``populate``: then every page is mapped now, ``MAP_POPULATE``, so a caller about to
    write all of it takes no page fault; that costs about 0.08 s per GiB of pages written
    before here, and 0.6 s per GiB of pages never written, which the kernel zeroes).

    The mapping lives as long as the view (or anything made over it, a numpy array say).

    Raises:
        SegmentNotFound: no such segment, or it holds another token or size.
    """
    return memoryview(_map_block(name, token, size, populate))[HEADER_SIZE : HEADER_SIZE + size]


def attach_block(name: str, token: bytes, size: int) -> Segment:
    """:meth:`Segment.attach` of a segment that must hold ``token`` and ``size`` data bytes
    (no page mapped yet).

    Raises:
        SegmentNotFound: no such segment, or it holds another token or size.
    """
    return Segment(name, _map_block(name, token, size), size, token)


def open_data(name: str, token: bytes, size: int) -> int:
    """A descriptor of a segment for bulk copies (``pread``/``pwrite``/``sendfile``).

    The segment must hold ``token`` and ``size`` data bytes (it is then the block's own
    memory); its data starts at byte :data:`HEADER_SIZE` of the descriptor. Copies through the
    descriptor fault in no page table: into a fresh block they ran 1.25x, and out of one into a
    pipe 3x, the speed of the same copies through a new mapping here. The caller closes it.

    Raises:
        SegmentNotFound: no such segment, or it holds another token or size.
    """
    return _open_block(name, token, size)[0]


def segment_exists(name: str) -> bool:
    """Whether a segment of that name exists on this host."""
    return os.path.exists(os.path.join(SHM_DIR, name.lstrip("/")))


def unlink_segment(name: str) -> bool:
    """Remove a segment's name from the host. Returns whether it existed."""
    return _unlink_quietly(name)


def _unlink_quietly(name: str) -> bool:
    try:
        posix_ipc.unlink_shared_memory(name)
    except posix_ipc.ExistentialError:
        return False
    return True
