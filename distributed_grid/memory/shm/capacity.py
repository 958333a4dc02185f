"""How many bytes new blocks may still take on this host: bounded by memory, not by tmpfs size.

/dev/shm is a tmpfs whose size is a number, not memory: here it says 24 GB on a host with 23.5
GiB of RAM, so allocating until /dev/shm refuses would reach the OOM killer first. A block's
pages are shared memory (``Shmem`` in /proc/meminfo), reserved in full when it is created, and
never in ``MemAvailable``; so each block lowers ``MemAvailable`` by its size, and what the host
can still back is ``MemAvailable`` less a reserve for everything else that runs there.

The room for new blocks is the smallest of:

- ``shm``: /dev/shm's free bytes, less a reserve for the catalogs and key directory that live
  beside the segments (:func:`shm_reserve`: 1/64 of its size, from 1 MiB to 32 MiB), so a full
  /dev/shm never leaves a catalog unable to record a deallocation;
- ``memory``: ``MemAvailable`` less :func:`memory_reserve` of ``MemTotal``;
- ``cgroup``: under every ``memory.max`` (cgroup v2; ``memory.limit_in_bytes`` in v1) of the
  process's cgroup and its ancestors, the limit less the usage (page cache that the kernel may
  reclaim, ``inactive_file``, not counted), less the reserve of that limit;
- ``capacity``: the node's cap (a cluster config's ``memory``) less its block bytes.

Each bound also pays the header page of the new block's segment. A node's spares (memory it
keeps faulted in for new blocks: ``grid cluster start --prefault``) are used memory to the
host but room to the node: they count in every bound but ``capacity``. The reserve is
``DISTRIBUTED_GRID_MEMORY_RESERVE`` when that is set (``512MB``, ``1GiB``, ``0``), else
``max(256 MiB, 5% of the total)``, but never more than a quarter of it.
"""

from __future__ import annotations

import functools
import os
import re
import threading
import time
from dataclasses import dataclass, replace

from distributed_grid.errors import InvalidArgument
from distributed_grid.memory.shm.layout import HEADER_SIZE, SHM_DIR
from distributed_grid.memory.shm.segment import shm_capacity
from distributed_grid.records import NodeStats
from distributed_grid.sizes import format_size, parse_size

RESERVE_ENV = "DISTRIBUTED_GRID_MEMORY_RESERVE"
# How long a reading of the host's figures serves new blocks (moved by the node's own block
# bytes meanwhile: see HostRoom); a refusal always reads them again first.
REFRESH_SECONDS = 1.0
MEMINFO = "/proc/meminfo"
PROC_CGROUP = "/proc/self/cgroup"
CGROUP_ROOT = "/sys/fs/cgroup"
_UNLIMITED = 2**62  # cgroup v1 writes "no limit" as a page-rounded LONG_MAX
_MiB = 2**20


@dataclass(frozen=True)
class Limits:
    """What bounds new blocks on this host, as read at one moment (bytes).

    ``mem_available`` is None where /proc/meminfo cannot be read; ``cgroup_free`` is None when
    no cgroup limit applies, else the least ``limit - usage`` over the cgroup and its ancestors,
    and ``cgroup_reserve`` the reserve of that cgroup's limit.
    """

    shm_total: int
    shm_free: int
    shm_reserve: int
    mem_available: int | None
    mem_reserve: int
    cgroup_free: int | None = None
    cgroup_reserve: int = 0


def default_reserve(total: int) -> int:
    """``max(256 MiB, 5% of total)``, but at most a quarter of ``total``."""
    return min(max(256 * _MiB, total // 20), total // 4)


def memory_reserve(total: int, setting: str | None) -> int:
    """The bytes kept free for the rest of the host out of ``total`` bytes of memory.

    Args:
        total: the memory the reserve is taken from (``MemTotal``, or a cgroup's limit).
        setting: the value of ``DISTRIBUTED_GRID_MEMORY_RESERVE``; None or empty for the
            default (:func:`default_reserve`).

    Raises:
        InvalidArgument: ``setting`` is not a size of 0 bytes or more.
    """
    if not setting:
        return default_reserve(total)
    reserve = parse_size(setting, RESERVE_ENV)
    if reserve < 0:
        raise InvalidArgument(f"{RESERVE_ENV} must be 0 or more bytes, got {setting!r}")
    return reserve


def shm_reserve(shm_total: int) -> int:
    """The bytes of /dev/shm that blocks leave to the databases beside them (1-32 MiB)."""
    return min(max(shm_total // 64, _MiB), 32 * _MiB)


def room_for_blocks(limits: Limits, capacity: int | None = None,
                    block_bytes: int = 0, spares: int = 0) -> tuple[int, str]:
    """The most bytes one new block may have, and which bound sets it.

    Args:
        spares: the bytes of the node's spares, which a new block may take.

    Returns:
        ``(bytes, limit)`` where ``limit`` is ``shm``, ``memory``, ``cgroup`` or ``capacity``
        (the first of the smallest, in that order).
    """
    bounds = [(name, room + spares) for name, room in _host_bounds(limits)]
    if capacity is not None:
        bounds.append(("capacity", capacity - block_bytes))
    limit, room = min(bounds, key=lambda b: b[1])
    return max(0, room), limit


def host_headroom(limits: Limits) -> int:
    """What new memory the host can still give blocks, its reserves kept: below 0 when it has
    less than them (no cap, no spares counted)."""
    return min(room for _, room in _host_bounds(limits))


def _host_bounds(limits: Limits) -> list[tuple[str, int]]:
    bounds = [("shm", limits.shm_free - limits.shm_reserve - HEADER_SIZE)]
    if limits.mem_available is not None:
        bounds.append(("memory", limits.mem_available - limits.mem_reserve - HEADER_SIZE))
    if limits.cgroup_free is not None:
        bounds.append(("cgroup", limits.cgroup_free - limits.cgroup_reserve - HEADER_SIZE))
    return bounds


# -- reading the host --------------------------------------------------------------------------


def _read_small(path: str) -> bytes | None:
    """A small file of /proc or /sys, read with two system calls (no text layer: 5 µs)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 65536)
    except OSError:
        return None
    finally:
        os.close(fd)


_MEMINFO_FIELDS = {name: re.compile(rb"^" + name + rb":\s+([0-9]+) kB", re.M)
                   for name in (b"MemTotal", b"MemAvailable")}


def read_meminfo(path: str = MEMINFO) -> tuple[int | None, int | None]:
    """``(MemTotal, MemAvailable)`` in bytes, None for what the file does not say."""
    data = _read_small(path) or b""
    found = [pattern.search(data) for pattern in _MEMINFO_FIELDS.values()]
    total, available = (int(m.group(1)) * 1024 if m else None for m in found)  # kB is KiB
    return total, available


def _read_int(path: str) -> int | None:
    text = (_read_small(path) or b"").strip()
    return int(text) if text.isdigit() else None  # "max" (v2) is no limit


def _inactive_file(folder: str, name: str) -> int:
    for line in (_read_small(os.path.join(folder, "memory.stat")) or b"").splitlines():
        key, _, value = line.partition(b" ")
        if key == name.encode() and value.strip().isdigit():
            return int(value)
    return 0


@functools.lru_cache(maxsize=4)
def _cgroup_folders(proc_cgroup: str, root: str) -> tuple[tuple[str, str, str, str], ...]:
    """Our memory cgroup and its ancestors: ``(folder, limit file, usage file, stat key)``.

    Read once per process (a process does not change cgroups in our use)."""
    try:
        with open(proc_cgroup, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return ()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: one hierarchy, mounted at the root itself
            base, files = root, ("memory.max", "memory.current", "inactive_file")
        elif "memory" in controllers.split(","):  # v1: the memory hierarchy's own mount
            base = os.path.join(root, "memory")
            files = ("memory.limit_in_bytes", "memory.usage_in_bytes", "total_inactive_file")
        else:
            continue
        parts = [p for p in path.split("/") if p and p != ".."]
        # Inside a cgroup namespace the path may name folders that are not mounted: keep the
        # ones that exist, deepest first. None exist when the hierarchy is mounted elsewhere
        # (v2 at /sys/fs/cgroup/unified beside v1) or has no memory controller.
        folders = [os.path.join(base, *parts[:i]) for i in range(len(parts), -1, -1)]
        found = [(d, *files) for d in folders if os.path.exists(os.path.join(d, files[0]))]
        if found:
            return tuple(found)
    return ()


LIMIT_SECONDS = 1.0  # a limit is configuration: read again after this long; usage each time
_limits_read: dict[str, tuple[float, int | None]] = {}


def _limit(path: str) -> int | None:
    now = time.monotonic()
    seen = _limits_read.get(path)
    if seen is None or now - seen[0] > LIMIT_SECONDS:
        value = _read_int(path)
        seen = _limits_read[path] = (now, None if value is None or value >= _UNLIMITED else value)
    return seen[1]


def cgroup_room(proc_cgroup: str = PROC_CGROUP,
                root: str = CGROUP_ROOT) -> tuple[int | None, int | None]:
    """``(free, limit)`` of the tightest memory limit over this process's cgroup and its
    ancestors: ``free`` is the limit less the usage (reclaimable page cache not counted).
    ``(None, None)`` when no limit applies."""
    best: tuple[int, int] | None = None
    for folder, limit_file, usage_file, stat_key in _cgroup_folders(proc_cgroup, root):
        limit = _limit(os.path.join(folder, limit_file))
        if limit is None:
            continue
        usage = _read_int(os.path.join(folder, usage_file))
        if usage is None:
            continue
        free = limit - max(0, usage - _inactive_file(folder, stat_key))
        if best is None or free < best[0]:
            best = (free, limit)
    return best if best is not None else (None, None)


def read_limits() -> Limits:
    """This host's bounds on new blocks, now (a few small reads of /proc and /sys).

    Raises:
        InvalidArgument: ``DISTRIBUTED_GRID_MEMORY_RESERVE`` is not a size.
    """
    setting = os.environ.get(RESERVE_ENV, "").strip() or None
    shm_total, shm_free = shm_capacity()
    mem_total, mem_available = read_meminfo()
    free, limit = cgroup_room()
    return Limits(
        shm_total=shm_total, shm_free=shm_free, shm_reserve=shm_reserve(shm_total),
        mem_available=mem_available,
        mem_reserve=memory_reserve(mem_total or 0, setting) if mem_available is not None else 0,
        cgroup_free=free,
        cgroup_reserve=memory_reserve(limit, setting) if limit is not None else 0,
    )


class HostRoom:
    """The host's bounds as a node's store sees them: read on a clock, not per operation.

    Reading them (/proc/meminfo, ``statvfs``, the cgroup's files) cost 11% of a small ``put``.
    A reading of the memory figures serves for ``REFRESH_SECONDS``; meanwhile the node's own
    blocks move it, byte for byte, as they move the kernel's figures (a block's pages are
    reserved when it is created), so the node's own work is accounted at once and other
    processes' on the next reading. /dev/shm's free bytes are read every time (one ``statfs``,
    exact to the page). A
    caller about to refuse asks for a fresh reading first (``fresh``): nothing is refused on a
    stale figure.
    """

    def __init__(self, refresh: float = REFRESH_SECONDS) -> None:
        self.refresh = refresh
        self._lock = threading.Lock()
        self._read: tuple[Limits, int, float, str | None] | None = None

    def limits(self, block_bytes: int, fresh: bool = False) -> Limits:
        """The host's bounds now, given the memory the node holds now (``block_bytes``: its
        blocks' and its spares')."""
        setting = os.environ.get(RESERVE_ENV)
        now = time.monotonic()
        with self._lock:
            read = self._read
            if fresh or read is None or now - read[2] > self.refresh or read[3] != setting:
                limits = read_limits()
                self._read = (limits, block_bytes, now, setting)
                return limits
        limits, then, _, _ = read
        shm_total, shm_free = shm_capacity()  # one statfs: exact and cheap, read every time
        grown = block_bytes - then
        return replace(
            limits, shm_total=shm_total, shm_free=shm_free,
            mem_available=None if limits.mem_available is None else limits.mem_available - grown,
            cgroup_free=None if limits.cgroup_free is None else limits.cgroup_free - grown)


def node_stats(node: str, limits: Limits, capacity: int | None, blocks: int,
               block_bytes: int, spares: int = 0) -> NodeStats:
    """A node's stats from the host's limits and the node's own counts (``spares``: the bytes
    of its spares)."""
    room, limit = room_for_blocks(limits, capacity, block_bytes, spares)
    return NodeStats(node=node, shm_total=limits.shm_total, shm_free=limits.shm_free,
                     capacity=capacity, free_for_blocks=room, blocks=blocks,
                     block_bytes=block_bytes, shm_reserve=limits.shm_reserve,
                     mem_available=limits.mem_available, mem_reserve=limits.mem_reserve,
                     cgroup_free=limits.cgroup_free, cgroup_reserve=limits.cgroup_reserve,
                     limited_by=limit, prefault=spares)


def describe_limit(stats: NodeStats) -> str:
    """What sets a node's ``free_for_blocks``, in a few words for a message."""
    if stats.limited_by == "memory":
        return (f"the host has {format_size(stats.mem_available or 0)} of memory available "
                f"and keeps {format_size(stats.mem_reserve)} of it for other processes "
                f"(set {RESERVE_ENV} to change that)")
    if stats.limited_by == "cgroup":
        return (f"the cgroup's memory limit leaves {format_size(stats.cgroup_free or 0)} and "
                f"keeps {format_size(stats.cgroup_reserve)} of it for other processes "
                f"(set {RESERVE_ENV} to change that)")
    if stats.limited_by == "capacity":
        return (f"the node's capacity is {stats.capacity} bytes and its blocks hold "
                f"{stats.block_bytes} bytes")
    return (f"{SHM_DIR} has {format_size(stats.shm_free)} free, "
            f"{format_size(stats.shm_reserve)} of it kept for the node catalogs")
