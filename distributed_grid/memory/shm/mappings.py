"""Mappings of blocks a process keeps between copies: attached on demand, the last few kept.

The store actor answers a chunk read for another host with a numpy array over its mapping of the
block (Ray copies it once, straight into the object store); a process copying a big buffer in or
out of a block of its host copies through its mapping (``memory/node/local_node.py``). A new
mapping takes a page fault per page on first touch, so the last ``kept`` mappings stay open
between calls (each use checks, in the mapping, that the header still holds the block's token).
A mapping a copy is using is never closed under it. Kept mappings whose segment
is gone from the host (their block was freed) are closed at each call, and by a daemon thread
every ``WATCH_SECONDS`` while any is kept, so a freed block's memory is not held for long. A
segment is mapped only if its header holds the token the block's catalog recorded.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from distributed_grid.memory.shm import segment as seg

KEPT = 8
WATCH_SECONDS = 2.0  # how often kept mappings of freed blocks are looked for while any is kept


class Mapped(Protocol):
    """A block as mapping it needs it: its segment's name, the token its header must hold, and
    its size (a :class:`~distributed_grid.records.BlockInfo` is one)."""

    @property
    def segment(self) -> str: ...
    @property
    def token(self) -> str: ...
    @property
    def size(self) -> int: ...


class Mappings:
    """The segments this process keeps mapped.

    Args:
        kept: how many mappings stay open when no copy uses them.
        check_each_call: look for kept mappings of freed blocks at each call (a ``stat`` per
            kept mapping); without it only the watcher thread and :meth:`drop_stale` do.
    """

    def __init__(self, kept: int = KEPT, check_each_call: bool = True) -> None:
        self.kept = kept
        self.check_each_call = check_each_call
        self._lock = threading.Lock()
        self._open: OrderedDict[str, seg.Segment] = OrderedDict()
        self._users: dict[str, int] = {}  # segment name -> copies using its mapping now
        self._watcher: threading.Thread | None = None

    def attach(self, block: Mapped) -> seg.Segment | None:
        """A new mapping of the block when it is provably on this host, else None."""
        try:
            return seg.attach_block(block.segment, bytes.fromhex(block.token), block.size)
        except (seg.SegmentNotFound, OSError):
            return None

    @contextmanager
    def mapped(self, block: Mapped, attach: bool = True) -> Iterator[seg.Segment | None]:
        """A kept mapping of the block (None when its segment is not here, or not the block's,
        or, without ``attach``, when none is kept). While the caller uses it, no other thread
        closes it: a mapping in use is not evicted, even beyond ``kept``."""
        if self.check_each_call:
            self.drop_stale()
        with self._lock:
            segment = self._open.get(block.segment)
            if segment is not None and (segment.token.hex() != block.token
                                        or not segment.holds_token()):
                if not self._users.get(block.segment):  # another block's, and unused
                    close_quietly(self._open.pop(block.segment))
                segment = None
            if segment is not None:
                self._open.move_to_end(block.segment)
                self._users[block.segment] = self._users.get(block.segment, 0) + 1
        if segment is None and attach:
            fresh = self.attach(block)
            if fresh is not None:
                with self._lock:
                    segment = self._open.get(block.segment)
                    if segment is None or segment.token.hex() != block.token:
                        segment = fresh  # else another thread attached it meanwhile
                        if block.segment not in self._open:
                            self._open[block.segment] = fresh
                    self._users[block.segment] = self._users.get(block.segment, 0) + 1
                    self._evict()
                    self._watch()
                if segment is not fresh:
                    close_quietly(fresh)
        if segment is None:
            yield None
            return
        try:
            yield segment
        finally:
            with self._lock:
                left = self._users.get(block.segment, 1) - 1
                if left:
                    self._users[block.segment] = left
                else:
                    self._users.pop(block.segment, None)
                self._evict()

    def view(self, block: Mapped) -> memoryview | None:
        """A writable view of the block's data bytes through its kept mapping, attached now if
        none is kept (None when its segment is not here, or not the block's). The view keeps
        the mapping's memory valid while it lives, evicted or not: no use count is needed, so
        this is the short way for views and small copies."""
        with self._lock:
            segment = self._open.get(block.segment)
            if segment is not None and segment.token.hex() == block.token \
                    and segment.holds_token():
                self._open.move_to_end(block.segment)
                return segment.data()
        with self.mapped(block) as segment:
            return None if segment is None else segment.data()

    def _watch(self) -> None:
        """While any mapping is kept, a daemon thread closes those whose block was freed every
        ``WATCH_SECONDS`` (with the lock held): a process that read a big block once and then
        waits does not hold the block's memory after it is freed elsewhere."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._watcher = threading.Thread(target=self._watching, name="kept-mappings",
                                         daemon=True)
        self._watcher.start()

    def _watching(self) -> None:
        while True:
            time.sleep(WATCH_SECONDS)
            self.drop_stale()
            with self._lock:
                if not self._open:
                    self._watcher = None
                    return

    def _evict(self) -> None:
        """Close the least recently used mappings beyond ``kept`` that no copy uses (with the
        lock held)."""
        for name in list(self._open):
            if len(self._open) <= self.kept:
                return
            if not self._users.get(name):
                close_quietly(self._open.pop(name))

    def drop_stale(self) -> None:
        """Close kept mappings whose segment is gone from the host (their block was freed)."""
        with self._lock:
            for name in [n for n in self._open
                         if not self._users.get(n) and not seg.segment_exists(n)]:
                close_quietly(self._open.pop(name))

    def names(self) -> list[str]:
        """The segments kept mapped, least recently used first."""
        with self._lock:
            return list(self._open)

    def close(self) -> None:
        """Close every kept mapping (live views over them stay valid)."""
        with self._lock:
            while self._open:
                close_quietly(self._open.popitem()[1])


def close_quietly(segment: seg.Segment) -> None:
    """Close a mapping; one that a live view still uses goes when the view does."""
    try:
        segment.close()
    except BufferError:
        pass
