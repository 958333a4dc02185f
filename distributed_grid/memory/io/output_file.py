"""The file a retrieve writes: opened safely, and given its name only once it is complete.

:class:`OutputFile` decides what to do with the path it is given:

- Nothing there: a new regular file, mode ``0666 & ~umask``.
- A regular file: replaced, only if this user may write it. The new file gets the old one's
  permission bits (not set-user-ID, set-group-ID or sticky) and, when we are root, its owner
  and group.
- A FIFO, a character or block device (``/dev/null``, a pipe reached through ``/dev/stdout``):
  opened ``O_WRONLY`` (no truncation, no temporary file) and written into, never replaced. A
  FIFO that no process reads is waited for as long as an input FIFO (30 s by default), then
  refused.
- A directory, a socket: refused.
- A symbolic link: followed, as ``cp`` does (the file it points to is replaced and the link
  stays), but only when the link belongs to this user or to the owner of its directory, the
  rule of the kernel's ``fs.protected_symlinks`` applied whatever that setting says: a link
  another user planted in a shared directory such as /tmp is refused, not followed. A link to
  nothing is refused too.

A regular file is written as an unnamed ``O_TMPFILE`` in the destination's directory, linked
under a fresh random name (``linkat`` never follows a link planted there: the name is taken, so
another is drawn) and renamed over the destination when every byte is written. A retrieve that
fails, or is killed, leaves nothing in the directory. Where the filesystem has no
``O_TMPFILE``, the temporary file is named ``.<name>.<random>.part``, created with
``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600 (a killed retrieve leaves that one behind).
Every step after the directory is opened goes through its descriptor, so the file lands in the
directory that was checked. The data is not ``fsync``-ed (as ``cp`` does not).

Any failure is a :class:`~distributed_grid.errors.FileError` of one line, and leaves the
destination as it was.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
import time
from types import TracebackType

from distributed_grid.errors import FileError

# O_TMPFILE unsupported: the filesystem (EOPNOTSUPP), or a kernel older than 3.11, which sees
# only O_DIRECTORY in it (EISDIR) or rejects the flags (EINVAL).
_NO_TMPFILE = (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL)
_NAME_TRIES = 16  # random temporary names to draw before giving up (each taken one is skipped)
_PERMISSION_BITS = 0o777


def _random_suffix() -> str:
    return secrets.token_hex(8)


def _temp_name(name: str) -> str:
    """A fresh hidden name beside ``name`` (short enough for any filesystem's 255 bytes)."""
    return f".{name[:200]}.{_random_suffix()}.part"


def current_umask() -> int:
    """This process's umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fd_path(fd: int) -> str:
    return f"/proc/self/fd/{fd}"


class OutputFile:
    """The destination of a retrieve, open for writing at :attr:`fd`.

    Use it as a context manager: the file takes its name when the block ends normally
    (:meth:`finish`), and is discarded when it raises (:meth:`discard`). See the module's
    docstring for what each kind of destination gets.

    Args:
        path: where the bytes go, as the user gave it.
        unnamed: write a regular file as an ``O_TMPFILE`` where the filesystem has one; False
            always takes the named temporary file (what a filesystem without it gets).

    Raises:
        FileError: the path cannot be written (a directory, a link not followed, a file or
            directory this user may not write...). Nothing was changed.
    """

    fd: int = -1
    _dir_fd: int = -1

    def __init__(self, path: str, *, unnamed: bool = True) -> None:
        self.path = path
        self.unnamed = unnamed
        self.replaces = False  # whether a regular file is written and renamed into place
        self._directory = ""  # the directory of a replaced file, and its name there
        self._name = ""
        self._temp: str | None = None  # a named temporary file (no O_TMPFILE)
        self._mode = 0o666 & ~current_umask()
        self._owner: tuple[int, int] | None = None
        target = self._open_target()  # an O_PATH descriptor of what is there, or None
        try:
            if target is None:
                self._open_directory(os.path.dirname(os.path.abspath(path)),
                                     os.path.basename(path))
            else:
                self._open_existing(target)
            if self.replaces:
                self.fd = self._create_temp()
        except BaseException:
            self._close()
            raise
        finally:
            if target is not None:
                os.close(target)

    # -- opening --------------------------------------------------------------------------------

    def _fail(self, reason: str) -> FileError:
        return FileError(f"cannot write {self.path}: {reason}", path=self.path)

    def _os_error(self, exc: OSError) -> FileError:
        return self._fail(exc.strerror or str(exc))

    def _open_target(self) -> int | None:
        """An ``O_PATH`` descriptor of what the path names now (a link followed only if
        trusted), or None when nothing is there."""
        try:
            link = os.lstat(self.path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._os_error(exc) from exc
        if stat.S_ISLNK(link.st_mode):
            self._check_link(link)
        try:
            target = os.open(self.path, os.O_PATH | os.O_CLOEXEC)
        except FileNotFoundError:
            raise self._fail("it is a symbolic link to a file that does not exist") from None
        except OSError as exc:
            raise self._os_error(exc) from exc
        try:
            again = os.lstat(self.path)
        except OSError:
            again = None
        if again is None or (again.st_dev, again.st_ino) != (link.st_dev, link.st_ino):
            os.close(target)
            raise self._fail("it was replaced while being opened")
        return target

    def _check_link(self, link: os.stat_result) -> None:
        """Refuse to follow a link that neither this user nor the directory's owner made."""
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            owner = os.stat(directory).st_uid
        except OSError as exc:
            raise self._os_error(exc) from exc
        if link.st_uid not in (os.geteuid(), owner):
            raise self._fail(
                f"it is a symbolic link of another user (uid {link.st_uid}) in a directory "
                f"that user does not own; not following it (remove it, or give the path it "
                f"points to)")

    def _open_existing(self, target: int) -> None:
        """Prepare to write into a special file, or to replace a regular one."""
        st = os.fstat(target)
        if stat.S_ISDIR(st.st_mode):
            raise self._fail("it is a directory; give a file path")
        if stat.S_ISSOCK(st.st_mode):
            raise self._fail("it is a socket")
        if stat.S_ISFIFO(st.st_mode):  # written into, once a reader comes
            self.fd = self._open_fifo(target)
            return
        if not stat.S_ISREG(st.st_mode):  # a device: written into, never replaced
            try:
                self.fd = os.open(_fd_path(target),
                                  os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError as exc:
                raise self._os_error(exc) from exc
            return
        if not os.access(_fd_path(target), os.W_OK, effective_ids=True):
            raise self._fail("the file is not writable by this user")
        # the file itself, even when a link led here: its own directory and name
        real = os.readlink(_fd_path(target))
        self._open_directory(os.path.dirname(real), os.path.basename(real))
        try:
            now = os.stat(self._name, dir_fd=self._dir_fd, follow_symlinks=False)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
            raise self._fail("it was replaced while being opened")
        self._mode = stat.S_IMODE(st.st_mode) & _PERMISSION_BITS
        if os.geteuid() == 0:
            self._owner = (st.st_uid, st.st_gid)

    def _open_fifo(self, target: int) -> int:
        """Open a FIFO for writing, waiting for a reader at most as long as an input FIFO may
        take to bring its first bytes (:func:`~distributed_grid.memory.io.inputs.
        wait_seconds`): a FIFO nobody reads would otherwise hold the command forever."""
        from distributed_grid.memory.io.inputs import WAIT_ENV, wait_seconds

        seconds = wait_seconds()
        deadline = time.monotonic() + seconds
        while True:
            try:
                fd = os.open(_fd_path(target), os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise self._os_error(exc) from exc
                if time.monotonic() >= deadline:
                    raise self._fail(f"it is a FIFO nobody read within {seconds:g} s (set "
                                     f"{WAIT_ENV} to wait longer)") from None
                time.sleep(0.05)
                continue
            os.set_blocking(fd, True)
            return fd

    def _open_directory(self, directory: str, name: str) -> None:
        """Open the directory a regular file will be named in."""
        if not name or name in (".", ".."):
            raise self._fail("it names a directory; give a file path")
        try:
            self._dir_fd = os.open(directory or ".",
                                   os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise self._fail(f"directory {directory}: {exc.strerror}") from exc
        self._directory = directory
        self._name = name
        self.replaces = True

    def _cannot_create(self, exc: OSError) -> FileError:
        return self._fail(f"cannot create a file in {self._directory}: {exc.strerror}")

    def _create_temp(self) -> int:
        """An unnamed file in the directory, or a fresh named one where there is no O_TMPFILE."""
        if self.unnamed:
            try:
                return os.open(".", os.O_TMPFILE | os.O_WRONLY | os.O_CLOEXEC, 0o600,
                               dir_fd=self._dir_fd)
            except OSError as exc:
                if exc.errno not in _NO_TMPFILE:
                    raise self._cannot_create(exc) from exc
        for _ in range(_NAME_TRIES):
            name = _temp_name(self._name)
            try:
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=self._dir_fd)
            except FileExistsError:
                continue
            except OSError as exc:
                raise self._cannot_create(exc) from exc
            self._temp = name
            return fd
        raise self._fail(f"no free temporary name after {_NAME_TRIES} tries")

    # -- finishing --------------------------------------------------------------------------

    def finish(self) -> None:
        """Give the written file its name (replacing what was there); close everything.

        Raises:
            FileError: the file could not be named; the destination is as it was.
        """
        try:
            if self.replaces:
                self._name_it()
        finally:
            self._close()

    def _name_it(self) -> None:
        try:
            if self._owner is not None:
                os.fchown(self.fd, *self._owner)  # first: chown clears set-ID bits
            os.fchmod(self.fd, self._mode)
        except OSError as exc:
            raise self._os_error(exc) from exc
        temp = self._temp if self._temp is not None else self._link_temp()
        try:
            os.replace(temp, self._name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except OSError as exc:
            self._unlink(temp)
            raise self._os_error(exc) from exc
        self._temp = None

    def _link_temp(self) -> str:
        """Link the unnamed file under a fresh name; a name already taken is never followed."""
        for _ in range(_NAME_TRIES):
            name = _temp_name(self._name)
            try:
                os.link(_fd_path(self.fd), name, dst_dir_fd=self._dir_fd, follow_symlinks=True)
            except FileExistsError:
                continue
            except OSError as exc:
                raise self._os_error(exc) from exc
            return name
        raise self._fail(f"no free temporary name after {_NAME_TRIES} tries")

    def discard(self) -> None:
        """Drop what was written (a replaced destination stays as it was); close everything."""
        if self._temp is not None:
            self._unlink(self._temp)
            self._temp = None
        self._close()

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self._dir_fd)
        except FileNotFoundError:
            pass

    def _close(self) -> None:
        for attr in ("fd", "_dir_fd"):
            fd = getattr(self, attr)
            if fd >= 0:
                setattr(self, attr, -1)
                os.close(fd)

    def __enter__(self) -> OutputFile:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.finish()
        else:
            self.discard()
