"""Pins and last use, kept in a segment's header: which processes hold views of a block, and
when its bytes were last touched.

A zero-copy view of a block maps its memory: a block spilled to disk under a live view would
leave the view on memory nobody else sees any more (writes through it lost, the node's room not
given back). So each process that holds a view of a block owns one **pin slot** in the block's
header (:data:`~distributed_grid.memory.shm.layout.PIN_SLOTS_OFFSET`: 240 words, each the
owner tag of a process, 0 when free) while any of its views lives; the store never spills a block
with a pin whose process is alive, and a slot whose process died counts for nothing (the
spiller clears it).

A process pins a block once, whatever its number of views of it (:class:`PinnedViews` counts
them): each view handed out is a ``ctypes`` array over the mapping, which Python can watch
(``weakref.finalize``; a ``memoryview`` cannot be watched), made into a memoryview. Every
array, memoryview and slice made over it keeps it alive, so the pin goes when the last of them
is garbage-collected (it turns idle first, a moment, for the next view: :class:`PinnedViews`),
or with the process.

Slots are taken and freed under a record lock on the pin table (``lockf``: the same lock
whichever process, a few microseconds), so two processes never take one slot. The spiller sets
the header's moving word (:func:`mark_moving`) before it reads the table, and a viewer reads
that word after it took its slot, each through a system call on the segment: one of them
always sees the other (the viewer then lets go and waits for the spill; the spiller, seeing a
pin, gives up).

The **last use** word (:data:`~distributed_grid.memory.shm.layout.LAST_USED_OFFSET`) is the
wall-clock time (ns) of the block's last read, write or new view, a hint the spiller orders
blocks by (least recently used first): plain 8-byte stores, no lock.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Iterator
from contextlib import contextmanager

from distributed_grid.errors import WriteInProgress
from distributed_grid.memory.shm import segment as seg
from distributed_grid.memory.shm.layout import (
    LAST_USED_OFFSET,
    MOVING_OFFSET,
    PIN_SLOT_COUNT,
    PIN_SLOTS_OFFSET,
)
from distributed_grid.memory.shm.seqguard import process_tag, tag_alive

_WORD = struct.Struct("<Q")
# A pin whose process has no view of the block now, kept a moment for the next one (a value read
# again and again costs one system call to pin, not six): the slot's owner tag with this bit.
# It pins nothing; owner tags never set it (a pid is below 2**31).
IDLE = 1 << 63
IDLE_SECONDS = 1.0  # an idle pin is let go this long after its last view went
IDLE_KEPT = 8  # and beyond this many idle pins in a process, the oldest first
_TABLE = struct.Struct(f"<{PIN_SLOT_COUNT}Q")
_TABLE_BYTES = _TABLE.size


def mark_moving(fd: int, on: bool) -> None:
    """Say in the block's header that it is (or is no longer) being spilled: set before the
    spiller reads the pins, read by a viewer after it pinned (a pair of system calls each: one
    of the two always sees the other)."""
    os.pwrite(fd, _WORD.pack(1 if on else 0), MOVING_OFFSET)


def moving(fd: int) -> bool:
    """Whether the block is being spilled (:func:`mark_moving`)."""
    return os.pread(fd, 8, MOVING_OFFSET) != bytes(8)


def touch(fd: int) -> None:
    """Record a use of the block whose segment ``fd`` is open (its last-use word: now)."""
    os.pwrite(fd, _WORD.pack(time.time_ns()), LAST_USED_OFFSET)


def last_used(fd: int) -> int:
    """The block's last use (wall clock, ns; 0: never recorded)."""
    return _WORD.unpack(os.pread(fd, 8, LAST_USED_OFFSET))[0]


class _TableLock:
    """The pin table of one open segment, held against every other process."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __enter__(self) -> _TableLock:
        fcntl.lockf(self.fd, fcntl.LOCK_EX, _TABLE_BYTES, PIN_SLOTS_OFFSET, os.SEEK_SET)
        return self

    def __exit__(self, *exc_info: object) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, _TABLE_BYTES, PIN_SLOTS_OFFSET, os.SEEK_SET)

    def read(self) -> list[int]:
        return list(_TABLE.unpack(os.pread(self.fd, _TABLE_BYTES, PIN_SLOTS_OFFSET)))

    def write(self, slot: int, owner: int) -> None:
        os.pwrite(self.fd, _WORD.pack(owner), PIN_SLOTS_OFFSET + 8 * slot)


def pin(fd: int, owner: int) -> int:
    """Take a pin slot for ``owner`` (a process's owner tag); returns its index.

    Raises:
        WriteInProgress: every slot is held by a live process (240 processes view the block).
    """
    with _TableLock(fd) as table:
        owners = table.read()
        free = next((i for i, o in enumerate(owners)
                     if o == 0 or not tag_alive(o & ~IDLE)), None)
        if free is None:
            raise WriteInProgress(f"{PIN_SLOT_COUNT} processes hold views of this block; "
                                  "close some and try again")
        table.write(free, owner)
        return free


def unpin(fd: int, slot: int, owner: int) -> bool:
    """Free pin slot ``slot`` if ``owner`` still holds it; returns whether it did."""
    with _TableLock(fd) as table:
        if table.read()[slot] != owner:
            return False
        table.write(slot, 0)
        return True


def live_pins(fd: int, clear_dead: bool = True) -> list[int]:
    """The owner tags of the live processes that pin the block (an idle pin is none); slots of
    dead ones are freed (with ``clear_dead``)."""
    with _TableLock(fd) as table:
        live = []
        for slot, owner in enumerate(table.read()):
            if owner == 0:
                continue
            if tag_alive(owner & ~IDLE):
                if not owner & IDLE:
                    live.append(owner)
            elif clear_dead:
                table.write(slot, 0)
        return live


class PinnedViews:
    """This process's pins: views handed out over blocks' mappings, one pin slot per block.

    While a block is pinned the process keeps a descriptor of its segment. When its last view
    goes the pin turns idle (its slot marked :data:`IDLE`, the descriptor kept) for
    ``IDLE_SECONDS``: a view made again meanwhile turns it active with one write, then reads the
    moving word. Idle pins are let go (slot freed, descriptor closed) after that, or beyond
    ``IDLE_KEPT``, by the next release or by a daemon thread while the process holds any pin: a
    descriptor keeps the memory of a block that was spilled or freed meanwhile.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[str, str], list[int]] = {}  # -> [descriptor, slot, views]
        self._idle: OrderedDict[tuple[str, str], float] = OrderedDict()  # -> when, oldest first
        self._gone_views: deque[tuple[tuple[str, str], int]] = deque()  # released, not counted
        self._tag: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None
        self._watched: dict[int, weakref.ref] = {}  # the views' arrays, until each goes

    def owner(self) -> int:
        """This process's owner tag (computed again after a fork)."""
        pid = os.getpid()
        if self._tag is None or self._tag[0] != pid:
            self._tag = (pid, process_tag(pid) or pid << 32)
        return self._tag[1]

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The lock, and after it the views that went meanwhile counted. A view goes when the
        garbage collector says so, at any allocation, in any thread (this one too, inside the
        lock): its callback only queues it (:meth:`_gone`), and whoever holds the lock counts
        the queue when it lets the lock go."""
        with self._lock:
            yield
        self._count_gone()

    def _count_gone(self) -> None:
        while self._gone_views:
            if not self._lock.acquire(blocking=False):
                return  # its holder counts them when it lets go
            try:
                while self._gone_views:
                    self._release(*self._gone_views.popleft())
            finally:
                self._lock.release()

    def pinned(self, segment: str, token: str, view: memoryview) -> memoryview | None:
        """``view`` (a block's data, writable) as a view that pins the block while it, or
        anything made over it, lives; None when the block is being spilled (the caller waits
        for its spill and restores it: see the module's docstring).

        Raises:
            SegmentNotFound: the segment is gone, or holds another block (a new token).
            WriteInProgress: no pin slot is free.
        """
        key = (segment, token)
        owner = self.owner()
        with self._locked():
            held = self._held.get(key)
            if held is not None and held[2] == 0:  # idle: active again, then the moving word
                os.pwrite(held[0], _WORD.pack(owner), PIN_SLOTS_OFFSET + 8 * held[1])
                del self._idle[key]
                if moving(held[0]):
                    self._let_go(key)
                    return None
            elif held is None:
                fd = seg.open_data(segment, bytes.fromhex(token), len(view))
                try:
                    slot = pin(fd, owner)
                    if moving(fd):  # a spill began before the pin: let it go on
                        unpin(fd, slot, owner)
                        os.close(fd)
                        return None
                    touch(fd)
                except BaseException:
                    os.close(fd)
                    raise
                held = self._held[key] = [fd, slot, 0]
                self._watch()  # here, not from a collector's callback (no thread starts then)
            held[2] += 1
        try:
            array = (ctypes.c_ubyte * len(view)).from_buffer(view)
        except BaseException:
            self._gone_views.append((key, owner))
            self._count_gone()
            raise
        ref = weakref.ref(array, lambda ref: self._gone(ref, key, owner))
        self._watched[id(ref)] = ref
        return memoryview(array).cast("B")

    def _gone(self, ref: weakref.ref, key: tuple[str, str], owner: int) -> None:
        """A view's array went (the garbage collector's callback: takes no lock itself)."""
        self._watched.pop(id(ref), None)
        self._gone_views.append((key, owner))
        self._count_gone()

    def _release(self, key: tuple[str, str], owner: int) -> None:
        """A view went (with the lock held): the last one's pin turns idle."""
        held = self._held.get(key)
        if held is None or held[2] == 0:
            return
        held[2] -= 1
        if held[2] > 0:
            return
        os.pwrite(held[0], _WORD.pack(owner | IDLE), PIN_SLOTS_OFFSET + 8 * held[1])
        now = self._idle[key] = time.monotonic()
        self._expire(now)

    def _let_go(self, key: tuple[str, str]) -> None:
        """Free a pin's slot and close its descriptor (with the lock held). No record lock:
        nobody else writes the slot of a live owner."""
        fd, slot, _ = self._held.pop(key)
        self._idle.pop(key, None)
        try:
            os.pwrite(fd, _WORD.pack(0), PIN_SLOTS_OFFSET + 8 * slot)
        finally:
            os.close(fd)

    def _expire(self, now: float) -> None:
        """Let go the idle pins older than ``IDLE_SECONDS``, and the oldest beyond
        ``IDLE_KEPT`` (with the lock held)."""
        while self._idle:
            key, since = next(iter(self._idle.items()))
            if now - since < IDLE_SECONDS and len(self._idle) <= IDLE_KEPT:
                return
            self._let_go(key)

    def _watch(self) -> None:
        """Start the thread that lets idle pins go, unless it runs (with the lock held)."""
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watching, name="idle-pins",
                                             daemon=True)
            self._watcher.start()

    def _watching(self) -> None:
        """While this process holds pins: every ``IDLE_SECONDS``, let go those idle long
        enough."""
        while True:
            time.sleep(IDLE_SECONDS)
            with self._locked():
                self._expire(time.monotonic() + IDLE_SECONDS / 2)
                if not self._held:
                    self._watcher = None
                    return
