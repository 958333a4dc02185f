"""A node's room: its spill settings, and the cold blocks it spills when memory runs short.

A node has a spill folder when it was started with one (``grid cluster start --spill-dir``; the
store actor writes the settings in the node's catalog, so every process of the host that runs
the store applies the same). Then, when a new block (or a restore) would take the node's block
bytes past ``spill_high`` of its room (block bytes plus what new blocks may still take), the
store first spills the least recently used blocks down to ``spill_low`` of it (least recently
used by the last-use word in each block's header: reads, writes and new views set it). Only a
block that is fully written and that no live process pins is spilled
(:mod:`~distributed_grid.memory.node.room.spills` says how); the folder never holds more than
``spill_quota`` bytes of blocks.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from distributed_grid.errors import BlockNotFound, InvalidArgument
from distributed_grid.memory.io import spill_files
from distributed_grid.memory.io.copies import Progress, no_progress
from distributed_grid.memory.node.core import segment_fd
from distributed_grid.memory.node.room.spares import StoreSpares
from distributed_grid.memory.node.schema import BlockRow
from distributed_grid.memory.shm import pins
from distributed_grid.memory.shm.capacity import describe_limit
from distributed_grid.records import NodeStats
from distributed_grid.sizes import format_size
from distributed_grid.wire import SPILL_ENV

DEFAULT_HIGH = 0.85
DEFAULT_LOW = 0.70
SETTINGS_SECONDS = 1.0  # how long a process trusts the spill settings it read


class Pinned(Exception):
    """The block cannot be spilled now (pinned, being written, or the quota is taken)."""


@dataclass(frozen=True)
class SpillSettings:
    """A node's spill folder, its quota (bytes) and its watermarks (fractions of its room)."""

    folder: str
    quota: int
    high: float = DEFAULT_HIGH
    low: float = DEFAULT_LOW


def check_settings(folder: str, quota: int, high: float, low: float) -> SpillSettings:
    """The settings, checked.

    Raises:
        InvalidArgument: a relative folder, a quota below 1 byte, or not ``0 < low <= high <= 1``.
    """
    if not isinstance(folder, str) or not os.path.isabs(folder):
        raise InvalidArgument(f"the spill folder must be an absolute path, got {folder!r}")
    if not isinstance(quota, int) or isinstance(quota, bool) or quota < 1:
        raise InvalidArgument(f"the spill quota must be 1 byte or more, got {quota!r}")
    if not (isinstance(high, float | int) and isinstance(low, float | int)
            and 0 < low <= high <= 1):
        raise InvalidArgument(f"the spill watermarks must satisfy 0 < low <= high <= 1, got "
                              f"low {low!r} and high {high!r}")
    return SpillSettings(folder, quota, float(high), float(low))


def settings_from_env(node: str, text: str | None) -> SpillSettings | None:
    """Node ``node``'s spill settings in ``$DISTRIBUTED_GRID_SPILL`` (see
    :data:`~distributed_grid.wire.SPILL_ENV`); None when it names none for the node.

    Raises:
        InvalidArgument: the text is not such JSON, or its settings are wrong.
    """
    if not text:
        return None
    try:
        table = json.loads(text)
        entry = table.get(node, table.get("*"))
        if entry is None:
            return None
        return check_settings(str(entry["dir"]).replace("{node}", node), int(entry["quota"]),
                              float(entry.get("high", DEFAULT_HIGH)),
                              float(entry.get("low", DEFAULT_LOW)))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        if isinstance(exc, InvalidArgument):
            raise
        raise InvalidArgument(f"{SPILL_ENV} is not spill settings: {exc}") from exc


class StoreRoom(StoreSpares):
    """A node's spill settings, and the room it makes by spilling its coldest blocks."""

    _settings: tuple[float, SpillSettings | None] | None = None

    # -- settings -----------------------------------------------------------------------------

    def configure_spill(self, folder: str | None, quota: int = 0, high: float = DEFAULT_HIGH,
                        low: float = DEFAULT_LOW) -> SpillSettings | None:
        """Give the node a spill folder (made if missing, only its owner may enter it), or
        take it away (``folder`` None: refused while blocks are spilled).

        Raises:
            InvalidArgument: bad settings; or no folder while blocks are in the old one.
        """
        settings = None if folder is None else check_settings(folder, quota, high, low)
        if settings is not None:
            spill_files.make_folder(settings.folder)
        with self.catalog.transaction():
            old = self.spill_settings(fresh=True)
            spilled = self.catalog.spill_counts()[0]
            if spilled and (settings is None or old is not None
                            and os.path.realpath(old.folder) != os.path.realpath(folder or "")):
                raise InvalidArgument(
                    f"node {self.node} has {spilled} block(s) in its spill folder "
                    f"{old.folder if old else '?'}; restore or free them before moving it")
            self.catalog.set_settings({
                "spill_dir": None if settings is None else settings.folder,
                "spill_quota": None if settings is None else settings.quota,
                "spill_high": None if settings is None else settings.high,
                "spill_low": None if settings is None else settings.low})
        self._settings = None
        return settings

    def spill_settings(self, fresh: bool = False) -> SpillSettings | None:
        """The node's spill settings (None: no spill folder), read at most once a second."""
        now = time.monotonic()
        if not fresh and self._settings is not None and now - self._settings[0] < \
                SETTINGS_SECONDS:
            return self._settings[1]
        found = self.catalog.settings("spill_")
        settings = None if not found.get("spill_dir") else SpillSettings(
            str(found["spill_dir"]), int(found["spill_quota"]),
            float(found.get("spill_high", DEFAULT_HIGH)),
            float(found.get("spill_low", DEFAULT_LOW)))
        self._settings = (now, settings)
        return settings

    # -- making room --------------------------------------------------------------------------

    def make_room(self, size: int, capacity: int | None = None, keep: int | None = None) -> int:
        """Spill the least recently used blocks before ``size`` new bytes come, when they would
        take the node past its high watermark: down to the low one, or as far as blocks can go.
        Returns the bytes spilled. Nothing is spilled on a node with no spill folder.

        A node's spares go first: before any block is spilled, those the new bytes cannot take
        are given back when the host could not give the new bytes memory
        (:meth:`~distributed_grid.memory.node.room.spares.StoreSpares.release_for`).

        Args:
            keep: a block not to spill (the one being restored).
        """
        if self.prefault_target():
            self.release_for(size)
        settings = self.spill_settings()
        if settings is None:
            return 0
        stats = self.stats(capacity)
        room = stats.block_bytes + stats.free_for_blocks
        if stats.block_bytes + size <= settings.high * room and size <= stats.free_for_blocks:
            return 0
        target = settings.low * room - size
        # a restore trades places with what it spills: its own file goes once it is back
        credit = 0 if keep is None else size
        spilled = 0
        for row in self._coldest(keep):
            if self.stats(capacity).block_bytes <= target:
                break
            try:
                self._spill(row.number, settings, credit=credit)
            except (Pinned, BlockNotFound):
                continue
            except OSError:
                break  # the disk refused: the allocation says what is left
            spilled += row.size
        return spilled

    def _coldest(self, keep: int | None) -> list[BlockRow]:
        """The blocks that may be spilled, least recently used first."""
        order = []
        for row in self.catalog.spill_candidates():
            if row.number == keep:
                continue
            try:
                with segment_fd(self._place(row)) as fd:
                    used = pins.last_used(fd)
            except BlockNotFound:
                continue
            order.append((max(used, int(row.created * 1e9)), row.number, row))
        return [row for *_, row in sorted(order)]

    def full_message(self, size: int, stats: NodeStats, doing: str) -> str:
        """Why ``size`` bytes do not fit, with what spilling could not free."""
        text = (f"cannot {doing} {size} bytes on node {self.node}: it can hold at most "
                f"{stats.free_for_blocks} more bytes ({describe_limit(stats)})")
        settings = self.spill_settings()
        if settings is None:
            return text
        spilled = self.catalog.spill_counts()[1]
        pinned = self.pinned()[1]
        return (text + f"; its spill folder holds {format_size(spilled)} of its "
                f"{format_size(settings.quota)} quota, and {format_size(pinned)} of its blocks "
                "are pinned by views")

    def pinned(self) -> tuple[int, int]:
        """``(blocks, bytes)`` of the node's blocks that a live process holds views of (one
        look at each block's header)."""
        count = size = 0
        for row in self.catalog.blocks(("ok", "spilling")):
            try:
                with segment_fd(self._place(row)) as fd:
                    if pins.live_pins(fd, clear_dead=False):
                        count, size = count + 1, size + row.size
            except BlockNotFound:
                continue
        return count, size

    def _spill(self, number: int, settings: SpillSettings, progress: Progress = no_progress,
               explicit: bool = False, credit: int = 0) -> None:
        raise NotImplementedError  # the spilling store's (memory/node/room/spills.py)
