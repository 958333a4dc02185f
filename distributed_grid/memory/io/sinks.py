"""Where the bytes of a read go, in order: a file or pipe, a buffer, any callable, or a spool
that stands in for a sink that cannot go back.

A read that met a concurrent write of its bytes is done again: a sink that can go back
(:attr:`Sink.rewindable`) is rewound to where the read began, any other gets the bytes only
once they are known to be whole (through a :class:`SpoolSink`). :func:`drain_fd` hands bytes of
a segment's descriptor to a sink the fastest way each kind of sink allows.
"""

from __future__ import annotations

import os
import queue
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from distributed_grid.errors import FileError
from distributed_grid.memory.io.copies import (
    PIECE,
    Progress,
    chunks,
    copy,
    fill_fd,
    in_parallel,
    no_progress,
)
from distributed_grid.memory.io.sources import FileSource


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


class SinkThread:
    """Hands buffers (chunks that arrived) to a sink in order on one thread, at most one
    waiting (so a reader with N chunks in flight holds no more than N + 2); its error is raised
    in the giver."""

    def __init__(self, sink: Sink, progress: Progress) -> None:
        self.sink, self.progress = sink, progress
        self.queue: queue.Queue[tuple[Any, int] | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="sink", daemon=True)

    def __enter__(self) -> SinkThread:
        self.thread.start()
        return self

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    self.sink.write(memoryview(item[0]))
                    self.progress(item[1])
                except BaseException as exc:  # raised again in the giver
                    self.error = exc
            del item

    def give(self, array: Any, n: int) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((array, n))

    def __exit__(self, *exc: object) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error
