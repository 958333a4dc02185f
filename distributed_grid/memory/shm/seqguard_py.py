"""The write guard in pure Python: the twin of ``native/seqguard.c``, for hosts without a compiler.

Same layout, same semantics, same errors as the C guard (:mod:`distributed_grid.memory.shm.seqguard`
states the protocol and chooses between the two). Python has no atomics, so the twin leans on
what CPython and the host give:

- a load or store of one word is one aligned 8-byte access through a ``memoryview`` cast to
  ``"Q"`` (CPython copies the 8 bytes with one move), which no CPU tears;
- ordering is the host's: on x86-64 (TSO) loads are not reordered with loads nor stores with
  stores, which is all the reader's side and the slot stores need; the twin makes no promise on
  weaker CPUs, where the C guard is the one to build;
- a read-modify-write (claim's compare-and-swap of an owner word, the sequence's increment) runs
  under this module's ``threading.Lock`` and an ``fcntl.lockf`` record lock on that word's 8
  bytes of the segment, so threads and processes using the twin exclude each other, and the
  kernel drops the record lock of a process that dies. Each lock and unlock is a system call,
  which is also a full barrier.

The record lock excludes only other users of the twin: the C guard's compare-and-swap takes no
lock. So **all processes of one host use the same implementation**, the C one wherever it was
built (one installation per host, and ``DISTRIBUTED_GRID_PURE_PYTHON`` set for all of them or
none). A POSIX record lock is also dropped when its process closes *any* descriptor of the file,
so a thread that closes another descriptor of the same segment during the microseconds of a
read-modify-write would let another process's twin in; the C guard has no such window.

The argument checks here are shared by both guards, so both raise the same errors.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from distributed_grid.errors import InvalidArgument
from distributed_grid.memory.shm.layout import (
    GUARD_SEQUENCE_OFFSET,
    GUARD_SLOT_COUNT,
    GUARD_SLOT_SIZE,
    GUARD_SLOTS_OFFSET,
    HEADER_SIZE,
)

WORD = 8
WORD_LIMIT = 2**64
_SEQUENCE = GUARD_SEQUENCE_OFFSET // WORD  # word indexes into the header page
_SLOTS = GUARD_SLOTS_OFFSET // WORD
_SLOT_WORDS = GUARD_SLOT_SIZE // WORD
_SLOTS_END = _SLOTS + GUARD_SLOT_COUNT * _SLOT_WORDS
_OWNER, _START, _END = 0, 1, 2  # word indexes within a slot

_THREADS = threading.Lock()  # the record lock belongs to the process: threads take this first


# -- the checks both guards make --------------------------------------------------------------


def check_word(value: object, what: str) -> int:
    """``value`` as a u64; raises InvalidArgument unless it is an int in ``[0, 2**64)``."""
    if not isinstance(value, int) or not 0 <= value < WORD_LIMIT:
        raise InvalidArgument(f"{what} must be an int in [0, 2**64), got {value!r}",
                              **{what: value})
    return value


def check_owner(owner: object) -> int:
    """An owner tag: a u64 other than 0 (which marks a free slot)."""
    check_word(owner, "owner")
    if owner == 0:
        raise InvalidArgument("owner must not be 0 (0 marks a free slot)", owner=owner)
    return owner


def check_range(start: object, end: object) -> tuple[int, int]:
    """A guarded byte range ``[start, end)``: u64s with ``start < end``."""
    check_word(start, "start")
    check_word(end, "end")
    if start >= end:
        raise InvalidArgument(f"a guarded range needs start < end, got [{start}, {end})",
                              start=start, end=end)
    return start, end


def check_slot(slot: object) -> int:
    """A slot index in ``[0, GUARD_SLOT_COUNT)``."""
    if not isinstance(slot, int) or not 0 <= slot < GUARD_SLOT_COUNT:
        raise InvalidArgument(f"slot must be an int in [0, {GUARD_SLOT_COUNT}), got {slot!r}",
                              slot=slot)
    return slot


# -- the twin ---------------------------------------------------------------------------------


class Guard:
    """The write guard of one segment, over a mapping of its header page (pure Python).

    Args:
        fd: a read-write descriptor of the segment. The guard keeps a duplicate (for its record
            locks) and a mapping of the first :data:`HEADER_SIZE` bytes; the caller still owns
            and closes ``fd``.
    """

    _map: mmap.mmap | None = None

    def __init__(self, fd: int) -> None:
        self._fd = os.dup(fd)
        try:
            self._map = mmap.mmap(self._fd, HEADER_SIZE, flags=mmap.MAP_SHARED)
        except BaseException:
            os.close(self._fd)
            raise
        self._words = memoryview(self._map).cast("Q")

    @contextmanager
    def _locked(self, word: int) -> Iterator[None]:
        """Hold word ``word`` of the header against every other user of the twin."""
        with _THREADS:
            fcntl.lockf(self._fd, fcntl.LOCK_EX, WORD, word * WORD, os.SEEK_SET)
            try:
                yield
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, WORD, word * WORD, os.SEEK_SET)

    def _bump(self) -> None:
        with self._locked(_SEQUENCE):
            self._words[_SEQUENCE] = (self._words[_SEQUENCE] + 1) % WORD_LIMIT

    def sequence(self) -> int:
        """The sequence word: how many writes started plus how many ended."""
        return self._words[_SEQUENCE]

    def claim(self, owner: int, start: int, end: int) -> int:
        """Take a free slot for a write of ``[start, end)`` by ``owner``; see the C guard.

        Returns:
            The slot's index, or -1 when all slots are taken.

        Raises:
            InvalidArgument: ``owner`` is 0, or not ``0 <= start < end < 2**64``.
        """
        check_owner(owner)
        check_range(start, end)
        words = self._words
        for slot in range(GUARD_SLOT_COUNT):
            base = _SLOTS + slot * _SLOT_WORDS
            if words[base + _OWNER]:
                continue  # taken: skip the locks
            with self._locked(base + _OWNER):
                if words[base + _OWNER]:
                    continue
                words[base + _OWNER] = owner
            words[base + _START] = start
            words[base + _END] = end
            self._bump()
            return slot
        return -1

    def release(self, slot: int, owner: int) -> bool:
        """End a write: bump the sequence, then free ``slot`` if ``owner`` still holds it.

        Returns:
            Whether ``owner`` held the slot.

        Raises:
            InvalidArgument: ``slot`` is out of range or ``owner`` is 0.
        """
        check_slot(slot)
        check_owner(owner)
        self._bump()
        words = self._words
        base = _SLOTS + slot * _SLOT_WORDS
        if words[base + _OWNER] != owner:
            return False
        with self._locked(base + _OWNER):
            if words[base + _OWNER] != owner:
                return False
            words[base + _END] = 0  # first: the slot overlaps everything until it is free
            words[base + _OWNER] = 0
        return True

    def begin_read(self, start: int, end: int) -> tuple[int, int]:
        """``(sequence, owner of the first taken slot overlapping [start, end), or 0)``."""
        check_range(start, end)
        words = self._words
        seq = words[_SEQUENCE]
        table = words[_SLOTS:_SLOTS_END].tolist()  # one aligned load per word, in order
        if not any(table[_OWNER::_SLOT_WORDS]):
            return seq, 0
        for base in range(0, len(table), _SLOT_WORDS):
            owner, b, e = table[base + _OWNER], table[base + _START], table[base + _END]
            if owner and (e == 0 or (b < end and start < e)):
                return seq, owner
        return seq, 0

    def end_read(self, seq: int) -> bool:
        """Whether the sequence still equals ``seq`` (no write started or ended since)."""
        check_word(seq, "seq")
        return self._words[_SEQUENCE] == seq

    def occupied(self) -> list[tuple[int, int, int, int]]:
        """``(slot, owner, start, end)`` of every taken slot."""
        table = self._words[_SLOTS:_SLOTS_END].tolist()
        return [
            (slot, table[base + _OWNER], table[base + _START], table[base + _END])
            for slot, base in enumerate(range(0, len(table), _SLOT_WORDS))
            if table[base + _OWNER]
        ]

    def close(self) -> None:
        """Drop the mapping and the descriptor. Safe to call twice."""
        if self._map is not None:
            self._words.release()
            self._map.close()
            os.close(self._fd)
            self._map = None

    def __enter__(self) -> Guard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
