"""A small SQLite database that every process of the host shares: the mechanism under the
node catalog and the key directory.

Why SQLite, in WAL mode (benchmarks/bench_catalog_engines.py measured it against LMDB): each
change is one transaction of 10-30 µs whatever the number of rows, readers never wait for the
writer, the write lock is the single-writer rule across processes, and a process killed in the
middle of a transaction (SIGKILL included) leaves the state from before it. It is in the
standard library and its indexes are real.

The files live in /dev/shm beside the segments they describe. Durability past a reboot would be
pointless there (the blocks do not survive one), so ``synchronous=NORMAL`` costs nothing it
could protect; atomicity against a crashed process does not depend on it.

A full /dev/shm is an error, never damage: a change that cannot grow the WAL (or, in a new
process, the ``-shm`` index) raises :class:`~distributed_grid.errors.StoreFull` and leaves the
database as it was; a checkpoint that cannot grow the database file fails and leaves the
changes in the WAL, where every reader still finds them; reads go on.

A database records its schema version in ``PRAGMA user_version``; one of another version is
refused with :class:`~distributed_grid.errors.VersionMismatch` before anything reads it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from distributed_grid.errors import ClusterError, StoreFull, VersionMismatch

BUSY_WAIT_SECONDS = 60.0  # a writer waits this long for another's transaction to end
# SQLite's own busy handler sleeps 1, 2, 5, 10 ... ms between tries: two clients whose changes
# take 30 us each then spend most of their time asleep (two clients did 0.85x one). A writer
# here first tries again at once, giving up its CPU between tries, for BUSY_SPIN_SECONDS (a
# change holds the lock for tens of microseconds; a sleep of any length took 60 us or more),
# then sleeps BUSY_FIRST_SLEEP, doubling up to BUSY_LONGEST_SLEEP.
BUSY_SPIN_SECONDS = 300e-6
BUSY_FIRST_SLEEP = 50e-6
BUSY_LONGEST_SLEEP = 2e-3
# Checkpoint the WAL into the database every 1,024 pages (1 MiB; SQLite's default is 4 MiB), so
# a WAL, which lives in /dev/shm beside the segments, stays within the room that allocations
# leave free for the databases (memory/shm/capacity.py: shm_reserve).
PAGE_SIZE = 1024
WAL_AUTOCHECKPOINT_PAGES = 1024
FULL_BELOW = 2**20  # an I/O error with less free than this on the filesystem: it is full


class Database:
    """One SQLite file, opened by this process (thread-safe: one connection, one lock).

    Args:
        path: the file; created with mode 0600 when missing.
        schema: SQL that creates the tables (run once, by the first process to open the file).
        version: the schema version this code reads and writes.
        what: how messages name the database ("the catalog of node gpu1").
    """

    _db: sqlite3.Connection | None = None

    def __init__(self, path: str, schema: str, version: int, what: str) -> None:
        self.path = path
        self.what = what
        self._lock = threading.RLock()
        _own_private_file(path)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA busy_timeout=0")  # waits are this module's: see _begin
            db.execute("PRAGMA foreign_keys=ON")
            self._db = db
            self._prepare(schema, version)
        except BaseException:
            db.close()
            self._db = None
            raise

    def _prepare(self, schema: str, version: int) -> None:
        db = self.db
        try:
            # a new file's pages are 1 KiB, not 4: a commit writes each page it changed to the
            # WAL, and a small change touches a few pages (its commit cost 16 us against 21)
            _when_free(lambda: db.execute(f"PRAGMA page_size={PAGE_SIZE}"))
            if _when_free(lambda: db.execute("PRAGMA journal_mode").fetchone()[0]) != "wal":
                _when_free(lambda: db.execute("PRAGMA journal_mode=WAL"))  # stays with the file
            found = _when_free(lambda: db.execute("PRAGMA user_version").fetchone()[0])
            if found == 0:
                _when_free(lambda: db.execute("BEGIN IMMEDIATE"))
                try:
                    if db.execute("PRAGMA user_version").fetchone()[0] == 0:  # nobody beat us
                        for statement in schema.split(";"):
                            if statement.strip():
                                db.execute(statement)
                        db.execute(f"PRAGMA user_version={int(version)}")
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                found = db.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.OperationalError as exc:  # locked past the timeout, out of space...
            raise self._ours(exc) from exc
        except sqlite3.DatabaseError as exc:
            raise VersionMismatch(
                f"{self.what} ({self.path}) is not a database this distributed_grid can read "
                f"({exc}); stop that cluster (`grid cluster stop`) and start it again",
                path=self.path,
            ) from exc
        if found != version:
            raise VersionMismatch(
                f"{self.what} ({self.path}) has schema version {found}, but this "
                f"distributed_grid reads version {version}: another version of distributed_grid "
                "made it; stop that cluster (`grid cluster stop`) and start it again",
                path=self.path, found=found, expected=version,
            )
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}")

    @property
    def db(self) -> sqlite3.Connection:
        """The connection (raises once closed)."""
        if self._db is None:
            raise ValueError(f"{self.what} is closed")
        return self._db

    def _ours(self, exc: sqlite3.Error) -> Exception:
        """SQLite's error as the library's own, in one line (a full /dev/shm is StoreFull)."""
        text = str(exc)
        if "full" in text or self._out_of_room(exc):
            why = text if "full" in text else f"{os.path.dirname(self.path)} is full ({text})"
            return StoreFull(f"{self.what} ({self.path}) cannot grow: {why}; free blocks "
                             "or shared memory first", path=self.path)
        return ClusterError(f"{self.what} ({self.path}) failed: {text}", path=self.path)

    def _out_of_room(self, exc: sqlite3.Error) -> bool:
        """Whether an I/O error is the filesystem being full: growing the shared-memory index
        (``-shm``) on a full /dev/shm fails as SQLITE_IOERR_SHMSIZE, not SQLITE_FULL."""
        name = getattr(exc, "sqlite_errorname", "")
        if not name.startswith(("SQLITE_IOERR", "SQLITE_CANTOPEN")):
            return False
        try:
            st = os.statvfs(os.path.dirname(self.path) or ".")
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < FULL_BELOW

    def _run(self, run: Callable[[], T]) -> T:
        """One statement, waited for while the database is locked (:func:`_when_free`), its
        error raised as the library's own."""
        try:
            try:
                return run()
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) not in _BUSY:
                    raise
            return _when_free(run)
        except sqlite3.Error as exc:
            raise self._ours(exc) from exc

    def transaction(self) -> _Change:
        """A write transaction (``with db.transaction() as sql:``): it holds the database's
        write lock from its first statement, and commits when the block ends or rolls back if
        it raises (a class, not a generator: this is on every change's path)."""
        return _Change(self)

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside it sees the same committed state."""
        with self._lock:
            db = self.db
            self._run(lambda: db.execute("BEGIN"))  # its first query takes the snapshot
            try:
                yield db
            except sqlite3.Error as exc:
                raise self._ours(exc) from exc
            finally:
                db.execute("COMMIT")

    def scalar(self, sql: str, args: tuple = ()) -> object:
        """The first column of the first row of one query (None when there is no row)."""
        with self._lock:
            row = self._run(lambda: self.db.execute(sql, args).fetchone())
        return None if row is None else row[0]

    def rows(self, sql: str, args: tuple = ()) -> list[tuple]:
        """Every row of one query (a statement reads one committed state)."""
        with self._lock:
            return self._run(lambda: self.db.execute(sql, args).fetchall())

    def change_mark(self) -> tuple[int, int]:
        """A pair that changes whenever any connection commits a change, this one included
        (``data_version`` sees only the others': a store actor that changes its catalog for
        clients on other hosts would never see its own changes)."""
        with self._lock:
            version = self._run(lambda: self.db.execute("PRAGMA data_version").fetchone()[0])
            return int(version), self.db.total_changes

    def close(self) -> None:
        """Close this process's connection (the file stays). Safe to call twice."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class _Change:
    """One write transaction of a :class:`Database` (see :meth:`Database.transaction`)."""

    __slots__ = ("_owner",)

    def __init__(self, owner: Database) -> None:
        self._owner = owner

    def __enter__(self) -> sqlite3.Connection:
        owner = self._owner
        owner._lock.acquire()
        try:
            db = owner.db
            owner._run(lambda: db.execute("BEGIN IMMEDIATE"))
        except BaseException:
            owner._lock.release()
            raise
        return db

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: object) -> None:
        owner = self._owner
        db = owner.db
        try:
            if exc is not None:
                if db.in_transaction:  # a statement that failed may have rolled it back
                    db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise owner._ours(exc) from exc
                return
            try:
                db.execute("COMMIT")
            except BaseException as failed:
                # SQLite rolls back a commit that failed for want of room (SQLITE_FULL); if one
                # did not, do it, or the write lock would stay with this connection
                if db.in_transaction:
                    db.execute("ROLLBACK")
                if isinstance(failed, sqlite3.Error):
                    raise owner._ours(failed) from failed
                raise
        finally:
            owner._lock.release()


def _when_free(run: Callable[[], T]) -> T:
    """``run`` (one statement), tried again while the database is locked (SQLITE_BUSY): at once
    for ``BUSY_SPIN_SECONDS`` (yielding the CPU between tries), then after ``BUSY_FIRST_SLEEP``,
    doubling to ``BUSY_LONGEST_SLEEP``, for up to ``BUSY_WAIT_SECONDS`` in all.
    Readers of a WAL database meet a lock only in rare moments (a WAL being reset); a writer
    meets another's write transaction, which ends within microseconds."""
    first = None
    delay = BUSY_FIRST_SLEEP
    while True:
        try:
            return run()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", None) not in _BUSY:
                raise
            now = time.monotonic()
            if first is None:
                first = now
            elif now - first > BUSY_WAIT_SECONDS:
                raise
        if now - first < BUSY_SPIN_SECONDS:
            os.sched_yield()
            continue
        time.sleep(delay)
        delay = min(delay * 2, BUSY_LONGEST_SLEEP)


_BUSY = {sqlite3.SQLITE_BUSY, getattr(sqlite3, "SQLITE_BUSY_SNAPSHOT", 517),
         getattr(sqlite3, "SQLITE_BUSY_RECOVERY", 261)}
T = TypeVar("T")


def _own_private_file(path: str) -> None:
    """Create ``path`` mode 0600 if missing; refuse one of another user, close an open one.

    SQLite gives its -wal and -shm files the database file's mode, so they are private too.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.getuid():
            raise ClusterError(f"{path} belongs to another user (uid {st.st_uid}); it is not "
                               "opened", path=path)
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def remove_database(path: str) -> None:
    """Delete a database file and its WAL and shared-memory index files, if they exist."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
