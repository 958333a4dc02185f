"""The store actor's refill of its node's prefault: a thread that keeps the spares
(:mod:`distributed_grid.memory.node.room.spares`) at the target, one spare at a time,
``FILL_PIECE`` a step, each step only while the node is idle: no change of its catalog for
``IDLE_SECONDS`` (this thread's own changes aside) and no write running.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from distributed_grid.errors import GridError
from distributed_grid.memory.node.room.spares import SPARE_MIN, Spare, StoreSpares
from distributed_grid.memory.shm import layout
from distributed_grid.memory.shm import spares as spare_files

IDLE_SECONDS = 0.5  # the node is idle when its catalog did not change for this long
STRAY_ROUNDS = 40  # refill rounds between two looks for spare files no row names (10 s idle)


class Refill:
    """The store actor's thread that keeps its node's spares at the target.

    Args:
        store: the node's store (the actor).
        pause: how long it sleeps between looks when there is nothing to do.
    """

    def __init__(self, store: StoreSpares, pause: float = 0.25) -> None:
        self.store = store
        self.pause = pause
        self.stopped = threading.Event()
        self._mark: object = None
        self._quiet_since = time.monotonic()
        self._thread: threading.Thread | None = None
        self._strays: set[str] = set()
        self._rounds = 0

    def start(self) -> threading.Thread:
        """Run :meth:`forever` on a daemon thread of its own."""
        thread = threading.Thread(target=self.forever, name="prefault", daemon=True)
        thread.start()
        self._thread = thread
        return thread

    def stop(self, timeout: float = 10.0) -> None:
        """Stop refilling (a spare being filled is given back) and wait for the thread."""
        self.stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def idle(self) -> bool:
        """Whether the node is idle: its catalog unchanged for ``IDLE_SECONDS`` (this
        thread's own changes aside) and no write running."""
        mark = self.store.catalog.change_mark()
        now = time.monotonic()
        if mark != self._mark:
            self._mark, self._quiet_since = mark, now
            return False
        return now - self._quiet_since >= IDLE_SECONDS and not \
            self.store.catalog.pending_extents()

    def _own_change(self) -> None:
        self._mark = self.store.catalog.change_mark()

    def forever(self) -> None:
        """Refill until :attr:`stopped` is set (a failure is logged, then tried again)."""
        import logging  # the store actor's: not loaded by every command that runs a store

        log = logging.getLogger(__name__)
        while not self.stopped.is_set():
            try:
                if not self.round():
                    self.stopped.wait(self.pause)
            except GridError as exc:
                log.warning("node %s: prefault: %s", self.store.node, exc)
                self.stopped.wait(5 * self.pause)
            except Exception:  # a refill must never end the node's store
                log.exception("node %s: prefault failed", self.store.node)
                self.stopped.wait(5 * self.pause)

    def round(self) -> bool:
        """Give back what is over, or fill one spare while the node is idle; returns whether
        it made one."""
        store = self.store
        target = store.prefault_target()
        if store.release_over(target):
            self._own_change()
        self._rounds += 1
        if self._rounds % STRAY_ROUNDS == 0:
            self.remove_strays()
        if not self.idle():
            return False
        size = store._next_spare_size(target)
        if size < SPARE_MIN and store.release_unfit(target):
            self._own_change()
            size = store._next_spare_size(target)
        if size < SPARE_MIN:
            return False
        return self.fill(size)

    def remove_strays(self) -> list[str]:
        """Remove the spare files no row names that no row named at the last look either (one
        being taken is a link away from its block's name: it is gone by then); returns them."""
        strays = set(self.store.stray_spares())
        gone = sorted(strays & self._strays)
        for name in gone:
            spare_files.remove_spare(name)
        self._strays = strays - set(gone)
        return gone

    def fill(self, size: int, wait: Callable[[float], object] | None = None) -> bool:
        """Make one spare of ``size`` bytes, ``FILL_PIECE`` at a time, each while the node is
        idle; returns whether it became ready."""
        store = self.store
        wait = wait or self.stopped.wait
        number = store.start_spare(size)
        self._own_change()
        name = store.spare_name(number)
        fd = spare_files.make_spare(name)
        ready = False
        try:
            total = layout.HEADER_SIZE + size
            at = 0
            while at < total:
                while not self.idle():
                    if self.stopped.is_set() or wait(self.pause):
                        return False  # the store is stopping
                if not store.spare_listed(number):
                    return False  # given back: a new block needed the memory
                end = min(at + spare_files.FILL_PIECE, total)
                spare_files.grow(fd, at, end)
                at = end
            ready = store.finish_spare(number)
            return ready
        finally:
            os.close(fd)
            if not ready:
                store.release(Spare(number, size, "filling", None, 0.0))
            self._own_change()
