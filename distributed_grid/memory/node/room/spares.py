"""A node's prefault: spares kept allocated and faulted in, which new blocks take whole.

A node started with ``grid cluster start --prefault SIZE`` keeps up to SIZE bytes of spares
(:mod:`distributed_grid.memory.shm.spares`), recorded in its catalog (the ``spares`` table,
``filling`` or ``ready``). The store actor refills them on a thread of its own
(:class:`~distributed_grid.memory.node.room.refill.Refill`), piece by piece and only while the
node is idle. An allocation of at least ``SPARE_MIN`` bytes takes,
in its own transaction, the smallest ready spare that holds it without wasting more than it
(at most twice its size: the rest is trimmed), else the biggest that holds at least half of it
(the rest is new memory); it never waits for one. Spares are made at the size of the last
block that looked for one (at first half the target, at most ``FIRST_SPARE``), but at least a
16th of the target: a node keeps a few of them, never thousands of small ones. When the target
is full of spares that no block of the last big size could take, the oldest go while the node
is idle, as many as it takes to make one in their place that such a block takes.

Spares are used memory to the host but room to the node: they count in its room for new
blocks, and they are what the node gives back first: before a new block would need memory
the host cannot give (:meth:`StoreSpares.release_for`), before it spills a block, and when
the host's available memory falls under the node's reserve. They are never made of freed
blocks, so a view of a freed block never shows another block's bytes. ``grid cluster stop``
and ``grid memory gc`` remove them with the cluster's other segments.
"""

from __future__ import annotations

import json
import time
from typing import NamedTuple

from distributed_grid.errors import InvalidArgument
from distributed_grid.memory.node.core import StoreCore
from distributed_grid.memory.shm import layout
from distributed_grid.memory.shm import segment as seg
from distributed_grid.memory.shm import spares as spare_files
from distributed_grid.memory.shm.capacity import host_headroom
from distributed_grid.runtime import identity_alive
from distributed_grid.wire import PREFAULT_ENV

SPARE_MIN = 2**20  # smaller blocks take no spare (their pages cost little; slabs hold most)
FIRST_SPARE = 2**30  # the size of spares before any block asked for one (at most)
MOST_SPARES = 16  # spares are made at a 16th of the target or more: a few files, a short table
SETTINGS_SECONDS = 1.0  # how long a process trusts the target it read
PAGE = 4096


class Spare(NamedTuple):
    """One row of ``spares``."""

    number: int
    size: int
    state: str
    filler: str | None
    created: float


def check_prefault(size: object) -> int:
    """``size`` if it can be a node's prefault target: 0 (none) or more bytes.

    Raises:
        InvalidArgument: anything else.
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidArgument(f"the prefault must be 0 or more bytes, got {size!r}")
    return size


def prefault_from_env(node: str, text: str | None) -> int:
    """Node ``node``'s prefault in ``$DISTRIBUTED_GRID_PREFAULT`` (see
    :data:`~distributed_grid.wire.PREFAULT_ENV`); 0 when it names none for the node.

    Raises:
        InvalidArgument: the text is not such JSON.
    """
    if not text:
        return 0
    try:
        table = json.loads(text)
        return check_prefault(table.get(node, table.get("*", 0)))
    except (ValueError, AttributeError) as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise InvalidArgument(f"{PREFAULT_ENV} is not a prefault table: {exc}") from exc


class StoreSpares(StoreCore):
    """A node's spares: its target, taking one for a new block, giving them back."""

    _target: tuple[float, int] | None = None

    def configure_prefault(self, size: int) -> None:
        """Keep ``size`` bytes of spares from now on (0: none; what is over goes at the next
        refill round).

        Raises:
            InvalidArgument: ``size`` is not 0 or more bytes.
        """
        check_prefault(size)
        with self.catalog.transaction():
            self.catalog.set_settings({"prefault": size or None})
        self._target = None

    def prefault_target(self, fresh: bool = False) -> int:
        """The bytes of spares the node keeps (0: none), read at most once a second."""
        now = time.monotonic()
        if fresh or self._target is None or now - self._target[0] >= SETTINGS_SECONDS:
            self._target = (now, int(self.catalog.meta("prefault") or 0))
        return self._target[1]

    def spares(self, state: str | None = None) -> list[Spare]:
        """The node's spares (of ``state`` only, if given), oldest first."""
        sql = "SELECT number, size, state, filler, created FROM spares"
        rows = self.catalog.sql.execute(sql + (" WHERE state=?" if state else "")
                                        + " ORDER BY number", (state,) if state else ())
        return [Spare(*r) for r in rows]

    def spare_bytes(self) -> int:
        """The bytes of the node's spares (those being filled counted whole)."""
        found = self.catalog.sql.execute("SELECT total(size) FROM spares").fetchone()
        return int(found[0])

    def spare_name(self, number: int) -> str:
        return layout.spare_name(self.cluster_id, self.node, number)

    # -- taking one -------------------------------------------------------------------------------

    def _pick_spare(self, size: int) -> Spare | None:
        """The ready spare a new block of ``size`` bytes would take (see the module's text)."""
        if size < SPARE_MIN:
            return None
        ready = self.spares("ready")
        holding = [s for s in ready if size <= s.size <= 2 * size]
        if holding:
            return min(holding, key=lambda s: s.size)
        partial = [s for s in ready if size // 2 <= s.size < size]
        return max(partial, key=lambda s: s.size) if partial else None

    def _take_spare(self, size: int) -> Spare | None:
        """Take the spare a new block of ``size`` bytes gets, if any (inside the allocation's
        transaction: its row goes, the caller adopts its file), and remember ``size`` as the
        size the next spares are made at."""
        if size < SPARE_MIN or not self.prefault_target():
            return None
        self.catalog.set_settings({"spare_size": -(-size // PAGE) * PAGE})
        spare = self._pick_spare(size)
        if spare is not None:
            self.catalog.sql.execute("DELETE FROM spares WHERE number=?", (spare.number,))
        return spare

    def _adopt(self, spare: Spare | None, name: str, size: int, token: bytes) -> int:
        """Make the block's segment ``name`` of ``spare`` (or of new memory when there is
        none, or it was given back meanwhile); returns how many of its first bytes have their
        pages in."""
        if spare is not None:
            try:
                spare_files.adopt(self.spare_name(spare.number), name, size, token)
                return min(spare.size, size)
            except FileNotFoundError:
                pass  # given back meanwhile: the block is made of new memory
        seg.create_segment(name, size, token)
        return 0

    # -- giving them back -----------------------------------------------------------------------

    def host_room(self) -> int:
        """The new memory the host can still give the node (its reserve kept; below 0 when it
        has less than that), its spares not counted."""
        block_bytes = self.catalog.counts()[1]
        return host_headroom(self.room.limits(block_bytes + self.spare_bytes()))

    def release_for(self, size: int) -> int:
        """Give back spares before a new block of ``size`` bytes is made, when the new memory
        it needs (what the spare it takes does not hold) is more than the host can give: the
        oldest first, never the one it takes. Returns the bytes given back."""
        held = self.spares()
        if not held:
            return 0
        taken = self._pick_spare(size)
        new = size - (min(taken.size, size) if taken is not None else 0)
        short = new - self.host_room()
        freed = 0
        for spare in held:
            if freed >= short:
                break
            if taken is None or spare.number != taken.number:
                freed += self.release(spare)
        return freed

    def release(self, spare: Spare) -> int:
        """Give back one spare (its row, then its memory); returns its bytes (0 if it was gone
        already). A spare being filled goes too: its filler stops when it sees its row gone."""
        with self.catalog.transaction():
            gone = self.catalog.sql.execute("DELETE FROM spares WHERE number=?",
                                            (spare.number,)).rowcount
        if not gone:
            return 0  # taken by a new block, or given back by another process
        spare_files.remove_spare(self.spare_name(spare.number))
        return spare.size

    def release_over(self, target: int) -> int:
        """Give back the newest spares while they hold more than ``target`` bytes (and every
        spare while the host's memory is under the node's reserve); returns the bytes given
        back."""
        freed = 0
        for spare in reversed(self.spares()):
            over = self.spare_bytes() - target
            if over <= 0 and self.host_room() >= 0:
                break
            freed += self.release(spare)
        return freed

    def release_unfit(self, target: int) -> int:
        """Give back the oldest ready spares when the target is full of spares that no block of
        the last big size could take (made for blocks of another size), as many as it takes for
        the refill to make one that such a block would take; returns the bytes given back (0:
        none went, for none fits or giving back would not make room for one that does)."""
        wanted = int(self.catalog.meta("spare_size") or 0)
        ready = self.spares("ready")
        if not wanted or not ready or self._pick_spare(wanted) is not None:
            return 0
        need = wanted // 2 - (target - self.spare_bytes())  # a spare of half of it is taken
        if need <= 0 or need > sum(s.size for s in ready):
            return 0
        freed = 0
        for spare in ready:
            if freed >= need:
                break
            freed += self.release(spare)
        return freed

    def reconcile_spares(self) -> dict[str, list[str]]:
        """Make the node's spares and its catalog agree (when the store starts): spares whose
        filler died, or whose file is gone, leave the catalog; files no row names go."""
        dropped = []
        for spare in self.spares():
            name = self.spare_name(spare.number)
            dead = spare.state == "filling" and identity_alive(spare.filler or "") is False
            if dead or not seg.segment_exists(name):
                self.release(spare)
                dropped.append(name)
        strays = self.stray_spares()
        for name in strays:
            spare_files.remove_spare(name)
        return {"dropped": dropped, "removed": strays}

    def stray_spares(self) -> list[str]:
        """Spare files of the node that no row names: left by a process that took one (its row
        went in its allocation's transaction) and died before it made it the block's; for a
        moment, also one being taken right now."""
        named = {self.spare_name(s.number) for s in self.spares()}
        pattern = layout.spare_pattern(self.cluster_id, self.node)
        return [n for n in seg.list_segment_names(self.prefix)
                if pattern.fullmatch(n) and n not in named]

    # -- making them ----------------------------------------------------------------------------

    def _next_spare_size(self, target: int) -> int:
        """The size the next spare is made at: the last big block's, else half the target (at
        most ``FIRST_SPARE``), at least a ``MOST_SPARES``-th of the target, and never past the
        target's rest or what the host can give."""
        wanted = self.catalog.meta("spare_size") or min(target // 2, FIRST_SPARE)
        wanted = max(int(wanted), target // MOST_SPARES)
        size = min(wanted, target - self.spare_bytes(), self.host_room())
        if self.capacity is not None:
            size = min(size, self.capacity - self.catalog.counts()[1] - self.spare_bytes())
        return size // PAGE * PAGE

    def start_spare(self, size: int) -> int:
        """Record a spare of ``size`` bytes being filled by this process; returns its number."""
        with self.catalog.transaction():
            number = int(self.catalog.meta("next_spare"))
            self.catalog.sql.execute("UPDATE meta SET value=value+1 WHERE name='next_spare'")
            self.catalog.sql.execute("INSERT INTO spares VALUES (?, ?, 'filling', ?, ?)",
                                     (number, size, self.me, time.time()))
        return number

    def finish_spare(self, number: int) -> bool:
        """Mark a filled spare ready; False when it was given back meanwhile."""
        with self.catalog.transaction():
            return self.catalog.sql.execute(
                "UPDATE spares SET state='ready', filler=NULL WHERE number=?",
                (number,)).rowcount == 1

    def spare_listed(self, number: int) -> bool:
        return self.catalog.sql.execute("SELECT 1 FROM spares WHERE number=?",
                                        (number,)).fetchone() is not None
