"""The inputs a command line names: a file, standard input, a pipe or a FIFO, opened safely.

An :class:`Input` is what ``store`` reads (and what a ``--config`` file is read through):

- A regular file (named, or as standard input: ``< FILE``) knows its size; its bytes are copied
  straight into the block (from its current position, for standard input).
- Anything else that can be read to its end is a stream: a pipe (``cmd | grid memory store KEY
  -``), a FIFO (``mkfifo``), a pipe reached by path (``<(cmd)``, ``/dev/fd/N``), a terminal or a
  socket as standard input. Its length is known only at its end
  (:mod:`distributed_grid.memory.io.spool` holds it while it arrives).
- A FIFO named by path may have no writer yet, and a plain ``open`` would wait for one forever.
  It is opened without blocking and waited on with ``poll`` until bytes (or its end) arrive, for
  at most ``DISTRIBUTED_GRID_INPUT_WAIT_SECONDS`` (default 30); then read as a stream. Standard
  input is never waited on with a bound: the shell opened it, so its writer is there (or gone,
  and it ends).

Refused, with one line: a directory, a socket, a device (a terminal is read only as standard
input), a file that does not know its own size (a /proc or /sys file named by path: its bytes are
made on each read, and its size says 0).
"""

from __future__ import annotations

import math
import os
import select
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from distributed_grid.errors import FileError, InvalidArgument

WAIT_ENV = "DISTRIBUTED_GRID_INPUT_WAIT_SECONDS"
DEFAULT_WAIT = 30.0  # seconds a FIFO named by path may take to bring its first bytes
STDIN = "standard input"

Progress = Callable[[int], None]


@dataclass
class Input:
    """An input opened for reading.

    Attributes:
        name: what the messages call it (``standard input``, ``FIFO /tmp/f``, a path).
        fd: its descriptor (None for a Python file object with none).
        size: the bytes it holds from ``start`` when it is a regular file; None for a stream.
        start: where its bytes begin (the file's position when it was given).
        empty_ok: whether 0 bytes are a valid content (a regular file named by path); a stream
            or standard input that brings nothing is refused.
        owned: :meth:`close` closes ``fd`` (it was opened here).
    """

    name: str
    fd: int | None
    size: int | None = None
    start: int = 0
    empty_ok: bool = False
    owned: bool = False
    fileobj: Any = field(default=None, repr=False)

    @property
    def is_stream(self) -> bool:
        """Whether the length is known only at the end (read whole before it is written)."""
        return self.size is None

    def read_into(self, buf: memoryview) -> int:
        """Read the next bytes of a stream into ``buf``; 0 at its end."""
        while True:
            try:
                if self.fileobj is not None:
                    n = self.fileobj.readinto(buf)
                else:
                    n = os.readv(self.fd, [buf])  # type: ignore[arg-type]
            except BlockingIOError:  # a descriptor left non-blocking by whoever gave it
                n = None
            if n is not None:
                return n
            if self.fd is None:
                raise FileError(f"cannot read {self.name}: it has no bytes ready and no "
                                "descriptor to wait on", path=self.name)
            select.select([self.fd], [], [])

    def consumed(self) -> None:
        """Move a sized input's position past the bytes stored, as reading them would."""
        if self.size is None:
            return
        end = self.start + self.size
        if self.fileobj is not None:
            self.fileobj.seek(end)
        elif self.fd is not None:
            os.lseek(self.fd, end, os.SEEK_SET)

    def close(self) -> None:
        if self.owned and self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> Input:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def wait_seconds() -> float:
    """How long a FIFO named by path may take to bring its first bytes (``$DISTRIBUTED_GRID_
    INPUT_WAIT_SECONDS``, default 30).

    Raises:
        InvalidArgument: the variable is not a number of seconds, 0 or more.
    """
    text = os.environ.get(WAIT_ENV, "").strip()
    if not text:
        return DEFAULT_WAIT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise InvalidArgument(f"{WAIT_ENV} must be a number of seconds (0 or more), got "
                              f"{text!r}", value=text)
    return seconds


# -- opening ---------------------------------------------------------------------------------


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    return "not a regular file"


def _refuse(label: str, mode: int) -> FileError:
    kind = _kind(mode)
    why = kind if kind.startswith("not") else f"{kind}, not a regular file or a FIFO"
    return FileError(f"cannot read {label}: {why}", path=label)


def open_stdin() -> Input:
    """This process's standard input (descriptor 0, left open), as :class:`Input`.

    Raises:
        FileError: it is closed, a directory, or a device other than a terminal.
    """
    try:
        st = os.fstat(0)
    except OSError as exc:
        raise FileError(f"cannot read {STDIN}: it is closed ({exc.strerror})") from exc
    mode = st.st_mode
    if stat.S_ISREG(mode) and st.st_size > 0:
        start = os.lseek(0, 0, os.SEEK_CUR)
        return Input(STDIN, 0, size=max(0, st.st_size - start), start=start)
    if stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or os.isatty(0):
        # a regular file of size 0 is read to its end too: a /proc file given as ``< FILE``
        # has its bytes, an empty file none (refused as "nothing arrived")
        return Input(STDIN, 0)
    try:
        what = f" ({os.readlink('/proc/self/fd/0')})"
    except OSError:
        what = ""
    raise FileError(f"cannot read {STDIN}{what}: {_kind(mode)}, not a file, a pipe or a "
                    "terminal")


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def open_path(path: str | os.PathLike[str], what: str = "", wait: float | None = None) -> Input:
    """Open a path given for reading: a regular file, a FIFO or pipe (waited on for at most
    ``wait`` seconds, default :func:`wait_seconds`), or this process's standard input by one of
    its names (``/dev/stdin``).

    Args:
        path: the path.
        what: what the path is, for messages (``"cluster config"``).
        wait: seconds a FIFO may take to bring its first bytes.

    Raises:
        FileError: it does not exist or cannot be read; it is a directory, a socket, a device,
            or a file that does not know its own size; no byte (nor its end) came from a FIFO
            within the wait.
    """
    path = str(path)
    label = f"{what} {path}" if what else path
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise FileError(f"cannot read {label}: no such file", path=path) from exc
    except OSError as exc:
        raise FileError(f"cannot read {label}: {exc.strerror}", path=path) from exc
    if not stat.S_ISREG(st.st_mode):
        try:
            is_stdin = _same(st, os.fstat(0))
        except OSError:
            is_stdin = False
        if is_stdin:  # /dev/stdin, /dev/fd/0: standard input, whatever it is
            given = open_stdin()
            return Input(label, os.dup(0), size=given.size, start=given.start, owned=True)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
        raise _refuse(label, st.st_mode)  # before opening: opening a device can act
    try:  # never blocks: a FIFO without a writer opens at once (and is waited on below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise FileError(f"cannot read {label}: {exc.strerror}", path=path) from exc
    try:
        st = os.fstat(fd)
        if stat.S_ISFIFO(st.st_mode):
            name = f"{what} FIFO {path}" if what else f"FIFO {path}"
            _wait_for_bytes(fd, name, wait_seconds() if wait is None else wait)
            os.set_blocking(fd, True)
            return Input(name, fd, owned=True)
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(label, st.st_mode)
        try:
            unsized = st.st_size == 0 and bool(os.pread(fd, 1, 0))
        except OSError as exc:
            raise FileError(f"cannot read {label}: {exc.strerror}", path=path) from exc
        if unsized:
            raise FileError(f"cannot read {label}: it does not know its own size (a /proc or "
                            "/sys file); copy it to a regular file first, or pipe it: cat "
                            "FILE | grid memory store KEY -", path=path)
        return Input(label, fd, size=st.st_size, empty_ok=True, owned=True)
    except BaseException:
        os.close(fd)
        raise


def _wait_for_bytes(fd: int, name: str, seconds: float) -> None:
    """Wait until ``fd`` (a FIFO opened non-blocking) has bytes, or its writer came and went.

    Raises:
        FileError: neither happened within ``seconds``.
    """
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    timeout = min(math.ceil(seconds * 1000), 2**31 - 1)  # poll counts milliseconds in an int
    if not poller.poll(timeout):  # an interrupted poll resumes with what is left
        raise FileError(f"nobody wrote to {name} within {seconds:g} s (set {WAIT_ENV} to "
                        "wait longer)", path=name)


def given_input(source: Input | int | Any) -> Input:
    """What a pool's ``store_stream`` was given, as an :class:`Input` (not closed by it): an
    Input, a descriptor, or a binary file object.

    A regular file is read from its current position; anything else to its end.
    """
    if isinstance(source, Input):
        return source
    if isinstance(source, int):
        if source == 0:
            return open_stdin()
        try:
            st = os.fstat(source)
        except OSError as exc:
            raise FileError(f"cannot read descriptor {source}: {exc.strerror}") from exc
        name = f"descriptor {source}"
        if stat.S_ISREG(st.st_mode) and st.st_size > 0:
            start = os.lseek(source, 0, os.SEEK_CUR)
            return Input(name, source, size=max(0, st.st_size - start), start=start)
        if stat.S_ISDIR(st.st_mode) or stat.S_ISBLK(st.st_mode) or \
                (stat.S_ISCHR(st.st_mode) and not os.isatty(source)):
            raise _refuse(name, st.st_mode)
        return Input(name, source)
    if not hasattr(source, "readinto"):
        raise InvalidArgument(f"cannot read {type(source).__name__}: give a descriptor, a "
                              "binary file object or a path")
    name = str(getattr(source, "name", type(source).__name__))
    try:
        fd = source.fileno()
        st = os.fstat(fd)
    except (OSError, AttributeError, ValueError):  # io.BytesIO and such: no descriptor
        return Input(name, None, fileobj=source)
    if stat.S_ISREG(st.st_mode) and st.st_size > 0:
        start = source.tell()
        return Input(name, fd, size=max(0, st.st_size - start), start=start, fileobj=source)
    return Input(name, fd, fileobj=source)


def read_whole(path: str | os.PathLike[str], what: str, limit: int) -> bytes:
    """All the bytes of a small input named by path (a config file), as :func:`open_path`
    opens it (a FIFO waited on with a bound).

    Raises:
        FileError: it cannot be read (see :func:`open_path`), or holds more than ``limit``.
    """
    with open_path(path, what) as source:
        if source.size is not None and source.size > limit:
            raise FileError(f"cannot read {source.name}: {source.size} bytes, more than "
                            f"the {limit} a {what or 'file'} may have", path=str(path))
        out = bytearray()
        buf = memoryview(bytearray(64 * 1024))
        while len(out) <= limit:
            try:
                n = source.read_into(buf)
            except OSError as exc:
                raise FileError(f"cannot read {source.name}: {exc.strerror}",
                                path=str(path)) from exc
            if not n:
                return bytes(out)
            out += buf[:n]
        raise FileError(f"cannot read {source.name}: more than the {limit} bytes a "
                        f"{what or 'file'} may have", path=str(path))
