"""Where the bytes of a write come from: a file (read with ``preadv``), a buffer, or several
buffers one after another (a header and the tensors after it, written where they lie)."""

from __future__ import annotations

import bisect
import os
import stat

from distributed_grid.errors import FileError


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
        self.length = len(data)

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
