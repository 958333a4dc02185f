"""The write guard of a segment: readers never keep a torn mix of old and new bytes.

Each segment's header page holds a sequence word and 64 write slots (the layout is in
:mod:`distributed_grid.memory.shm.layout`). A writer claims a slot naming its byte range and bumps
the sequence; a reader checks that no busy slot overlaps its range, copies, then checks that the
sequence did not move. It is a seqlock generalised to several writers of disjoint ranges at once.

Protocol::

    # a writer of [a, b) (a process tag from owner_tag names it)
    slot = guard.claim(tag, a, b)       # -1: all 64 slots are taken; wait and claim again
    ...copy into [a, b) (os.pwrite on the segment's descriptor, or into a mapping)...
    guard.release(slot, tag)

    # a reader of [a, b)
    seq, busy = guard.begin_read(a, b)  # busy: the tag of a writer of overlapping bytes, or 0
    if busy: wait, then start again
    ...copy [a, b) out (os.pread, or from a mapping)...
    if guard.end_read(seq): the copy is whole; else start again

The guard does not keep writers apart: two writers of overlapping bytes both get slots (which key
may write which bytes is the catalog's business). It only keeps readers from accepting a copy
that a write changed under them.

Why a torn copy is never accepted. The orderings that matter: a claim publishes its slot
(compare-and-swap of the owner word, then start, then end, all releases) *before* it increments
the sequence, and a release fence follows that increment, so no data store becomes visible
before it. A release increments the sequence (a release, so the data stores come first) *before*
it clears the slot (end, then owner, releases). A reader loads the sequence (acquire) *before*
it scans the slots (acquire loads), and end_read issues an acquire fence *after* the copy and
before it loads the sequence again. Take a write W that changed bytes of [a, b) during the copy:

- If begin_read's load saw W's first increment, it synchronised with it, so the scan saw W's
  slot as W published it (overlapping: busy, no copy is made) or a newer value of one of its
  words. Every newer value (end or owner cleared, or another claim's words, whose
  compare-and-swap acquired the cleared owner) was stored after W's second increment, which the
  scan's acquire then carries to end_read's load: the sequence moved, the copy is dropped.
- If it did not, and the copy saw any of W's data stores, W's release fence pairs with
  end_read's acquire fence, so end_read sees W's first increment: the sequence moved.

A write that ended before begin_read's load is wholly visible to the copy (its second increment
is a release, the load an acquire). The sequence is a u64: it would take 2**64 bumps during one
copy to fool a reader. The copy itself is a plain ``pread`` or ``memcpy``; a race there is a
data race in the C memory model, the same as in every seqlock (Linux's included): a copy that
raced is never used.

A writer that dies holding a slot (SIGKILL between claim and release) leaves it taken: readers
of overlapping bytes see it busy (all readers of the segment, if it died before publishing its
end) until the reaper, which knows dead owners by the tag (:func:`tag_alive`), calls
``release(slot, tag)``: that bumps the sequence and frees the slot. The bytes hold whatever the
dead writer left; whether they count is the catalog's decision, not the guard's.

:data:`Guard` is the C guard (``native/seqguard.c``, built by ``pip install`` where a compiler
exists) or its pure-Python twin (:mod:`distributed_grid.memory.shm.seqguard_py`) when the extension
is missing or ``DISTRIBUTED_GRID_PURE_PYTHON`` is set to anything but ``""`` or ``"0"``; all
processes of one host must use the same one (see the twin's docstring). :data:`IMPLEMENTATION`
says which was chosen.
"""

from __future__ import annotations

import importlib
import mmap
import os
import time
from collections.abc import Callable
from typing import Any

from distributed_grid.errors import InvalidArgument, WriteInProgress
from distributed_grid.memory.shm import seqguard_py
from distributed_grid.memory.shm.layout import HEADER_SIZE
from distributed_grid.memory.shm.seqguard_py import check_owner, check_range, check_slot, check_word
from distributed_grid.runtime import process_alive, process_start
from distributed_grid.wire import READ_WAIT_SECONDS

try:  # the extension module native/seqguard.c builds (a .so beside this file)
    _native: Any = importlib.import_module("distributed_grid.memory.shm._seqguard")
except ImportError:  # built without a compiler: the twin does the work
    _native = None

PURE_PYTHON_ENV = "DISTRIBUTED_GRID_PURE_PYTHON"
_TICKS_MASK = 0xFFFFFFFF


class CGuard:
    """The write guard of one segment, over a mapping of its header page (C atomics).

    Args:
        fd: a read-write descriptor of the segment; the guard maps its first
            :data:`HEADER_SIZE` bytes and the caller still owns and closes ``fd``.

    Methods raise :class:`InvalidArgument` for bad arguments, like the twin's.
    """

    _map: mmap.mmap | None = None

    def __init__(self, fd: int) -> None:
        if _native is None:
            raise RuntimeError("the C guard (distributed_grid.memory.shm._seqguard) is not built")
        self._map = mmap.mmap(fd, HEADER_SIZE, flags=mmap.MAP_SHARED)

    def sequence(self) -> int:
        """The sequence word (acquire load): how many writes started plus how many ended."""
        return _native.sequence(self._map)

    def claim(self, owner: int, start: int, end: int) -> int:
        """Take a free slot for a write of ``[start, end)`` by ``owner``.

        Compare-and-swap of a slot's owner from 0 to ``owner``, then start and end are published
        (releases), then the sequence is incremented (sequentially consistent) and fenced.

        Returns:
            The slot's index, or -1 when all slots are taken.

        Raises:
            InvalidArgument: ``owner`` is 0, or not ``0 <= start < end < 2**64``.
        """
        try:
            return _native.claim(self._map, owner, start, end)
        except (TypeError, ValueError):
            check_owner(owner)
            check_range(start, end)
            raise

    def release(self, slot: int, owner: int) -> bool:
        """End a write: increment the sequence, then free ``slot`` if ``owner`` still holds it.

        The reaper calls it for owners that died, too.

        Returns:
            Whether ``owner`` held the slot.

        Raises:
            InvalidArgument: ``slot`` is out of range or ``owner`` is 0.
        """
        try:
            return _native.release(self._map, slot, owner)
        except (TypeError, ValueError):
            check_slot(slot)
            check_owner(owner)
            raise

    def begin_read(self, start: int, end: int) -> tuple[int, int]:
        """``(sequence, owner of the first taken slot overlapping [start, end), or 0)``.

        The sequence is loaded (acquire) before the slots are scanned.
        """
        try:
            return _native.begin_read(self._map, start, end)
        except (TypeError, ValueError):
            check_range(start, end)
            raise

    def end_read(self, seq: int) -> bool:
        """After an acquire fence, whether the sequence still equals ``seq``."""
        try:
            return _native.end_read(self._map, seq)
        except (TypeError, ValueError):
            check_word(seq, "seq")
            raise

    def occupied(self) -> list[tuple[int, int, int, int]]:
        """``(slot, owner, start, end)`` of every taken slot."""
        return _native.occupied(self._map)

    def close(self) -> None:
        """Drop the mapping (later calls raise ValueError). Safe to call twice."""
        if self._map is not None:
            self._map.close()

    def __enter__(self) -> CGuard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _choose() -> tuple[str, type[CGuard] | type[seqguard_py.Guard]]:
    if _native is not None and os.environ.get(PURE_PYTHON_ENV, "") in ("", "0"):
        return "c", CGuard
    return "python", seqguard_py.Guard


IMPLEMENTATION, Guard = _choose()

# Both guards by name, for tests and benchmarks; "c" only where the extension was built.
IMPLEMENTATIONS: dict[str, type[CGuard] | type[seqguard_py.Guard]] = {"python": seqguard_py.Guard}
if _native is not None:
    IMPLEMENTATIONS["c"] = CGuard


# -- owner tags -------------------------------------------------------------------------------


def owner_tag(pid: int, start_ticks: int) -> int:
    """The tag a writer claims slots with: ``(pid << 32) | (start_ticks & 0xFFFFFFFF)``.

    ``start_ticks`` is when the process started (:func:`distributed_grid.runtime.process_start`),
    so a pid the kernel hands to a new process does not revive a dead writer's tag. Never 0.

    Raises:
        InvalidArgument: ``pid`` is not in ``[1, 2**32)`` or ``start_ticks`` is not an int.
    """
    if not isinstance(pid, int) or not 0 < pid < 2**32:
        raise InvalidArgument(f"pid must be an int in [1, 2**32), got {pid!r}", pid=pid)
    if not isinstance(start_ticks, int):
        raise InvalidArgument(f"start_ticks must be an int, got {start_ticks!r}",
                              start_ticks=start_ticks)
    return (pid << 32) | (start_ticks & _TICKS_MASK)


def tag_pid(tag: int) -> int:
    """The pid an owner tag names."""
    return tag >> 32


def process_tag(pid: int) -> int | None:
    """The owner tag of process ``pid`` of this host, or None if there is no such process."""
    start = process_start(pid)
    return None if start is None else owner_tag(pid, start)


def tag_alive(tag: int) -> bool:
    """Whether the process a tag names still runs on this host (same pid, same start time)."""
    pid = tag_pid(tag)
    if not 0 < pid < 2**32:
        return False
    start = process_start(pid)
    return (start is not None and (start & _TICKS_MASK) == (tag & _TICKS_MASK)
            and process_alive(pid, start))


# -- the reader's side ------------------------------------------------------------------------


def read_untorn(begin: Callable[[], int], copy: Callable[[], object],
                end: Callable[[int], bool], mark: Callable[[], int],
                rewind: Callable[[int], None], block_id: str, offset: int, length: int) -> int:
    """Copy a block's bytes ``offset..offset+length`` until no write of them started, ran or
    ended during the copy; returns how many copies it took beyond the first.

    The guard's protocol seen from a reader, wherever the guard is: ``begin()`` waits until no
    write holds the bytes and returns the guard's sequence (``begin_read``, on this host or
    through the node's store), ``copy()`` copies them, ``end(seq)`` says whether the sequence
    is still ``seq`` (``end_read``). Before each new copy the destination goes back to where
    the first one started (``rewind(mark())``).

    Raises:
        WriteInProgress: the bytes were written again during every copy for
            ``READ_WAIT_SECONDS``.
    """
    again = 0
    deadline = time.monotonic() + READ_WAIT_SECONDS
    while True:
        seq = begin()
        start = mark()
        copy()
        if end(seq):
            return again
        if time.monotonic() > deadline:
            raise WriteInProgress(
                f"bytes {offset}..{offset + length} of {block_id} were written again during "
                f"every read for {READ_WAIT_SECONDS:g} s; try again later", block_id=block_id)
        rewind(start)
        again += 1
