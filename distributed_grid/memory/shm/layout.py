"""Every name distributed_grid gives in /dev/shm, and the layout of a segment's header page.

A cluster keeps three kinds of file in this host's /dev/shm, each named with the cluster's id
(so two clusters on one host never collide):

========================================  ===================================================
``dg.<cluster id>.<node>.<number>``       a block's segment (POSIX shared memory, ``/dg...``)
``dg.<cluster id>.<node>.spare<number>``  a spare: memory a node keeps faulted in for new
                                          blocks (``grid cluster start --prefault``)
``dgc.<cluster id>.<node>.db``            a node's catalog (SQLite, with ``-wal`` and ``-shm``)
``dgk.<cluster id>.db``                   the cluster's key directory, on the head's host
========================================  ===================================================

Segment layout (the only place it is written down)::

    offset  size  field
    0       8     magic  b"DGRIDSEG"
    8       4     layout version (little-endian u32), currently 1
    12      4     reserved, 0
    16      8     data size in bytes (little-endian u64)
    24      16    token: random bytes the owner writes at creation. A client that attaches the
                  segment and reads the token the store reported is on the same memory, which
                  proves the zero-copy path is valid.
    40      24    reserved, 0
    64      8     write guard: sequence (u64), +1 when a write starts, +1 when it ends
    72      8     readers' turn: until when (CLOCK_MONOTONIC, ns; u64) a new write waits before
                  it claims a slot, set by a reader that waited (a hint: plain stores and loads)
    80      8     last use: when the block was last read, written or viewed (wall clock, ns;
                  u64; 0 = never recorded), the spiller's order (a hint: plain stores)
    88      8     moving: nonzero while the block is being spilled (set before the spiller
                  reads the pins; a viewer reads it after it pinned)
    96      32    reserved, 0
    128     2048  write guard: 64 slots of 32 bytes, each owner u64 (0 = free), start u64,
                  end u64, spare u64 (0). A slot whose owner is set but whose end is 0 is
                  being published (or released): it overlaps every range.
    2176    1920  pins: 240 words, each the owner tag of a process holding views of the
                  block (0 = free), taken and freed under a record lock on the table
                  (:mod:`distributed_grid.memory.shm.pins`)
    4096    size  data

The write guard's words are little-endian, naturally aligned and only accessed atomically, by
:mod:`distributed_grid.memory.shm.seqguard` (which states its protocol). A new header is all
zeros there, which is an idle guard. The data starts on a page boundary so views over it are
aligned for every dtype.
"""

from __future__ import annotations

import os
import re
import struct

SHM_DIR = "/dev/shm"  # where Linux keeps POSIX shared memory

HEADER_SIZE = 4096
MAGIC = b"DGRIDSEG"
LAYOUT_VERSION = 1
TOKEN_SIZE = 16
HEADER = struct.Struct("<8sIIQ16s")  # magic, version, reserved, data size, token
GUARD_SEQUENCE_OFFSET = 64  # the write guard's fields, see the layout above
READERS_TURN_OFFSET = 72
GUARD_SLOTS_OFFSET = 128
GUARD_SLOT_COUNT = 64
GUARD_SLOT_SIZE = 32
LAST_USED_OFFSET = 80
MOVING_OFFSET = 88
PIN_SLOTS_OFFSET = 2176
PIN_SLOT_COUNT = 240

CLUSTER_ID_PATTERN = r"[A-Za-z0-9]{1,32}"
# What a cluster keeps in /dev/shm, by kind: each pattern's group 1 is the cluster's id.
FILE_KINDS = (
    (re.compile(rf"dg\.({CLUSTER_ID_PATTERN})\..+"), "segment"),
    (re.compile(rf"dgc\.({CLUSTER_ID_PATTERN})\..+\.db(-wal|-shm|-journal)?"), "catalog"),
    (re.compile(rf"dgk\.({CLUSTER_ID_PATTERN})\.db(-wal|-shm|-journal)?"), "key directory"),
)


def segment_prefix(cluster_id: str, node: str) -> str:
    """The start of the segment names of ``node``'s blocks (``/dg.<cluster id>.<node>.``)."""
    return f"/dg.{cluster_id}.{node}."


def segment_name(cluster_id: str, node: str, number: int) -> str:
    """The segment name of block ``number`` of ``node``."""
    return f"{segment_prefix(cluster_id, node)}{number}"


def segment_pattern(cluster_id: str, node: str) -> re.Pattern[str]:
    """What the names of ``node``'s block segments match, and nothing else (another node's
    name may start with this node's)."""
    return re.compile(re.escape(segment_prefix(cluster_id, node)) + r"[0-9]+")


def spare_name(cluster_id: str, node: str, number: int) -> str:
    """The name of ``node``'s spare ``number`` (:mod:`distributed_grid.memory.shm.spares`)."""
    return f"{segment_prefix(cluster_id, node)}spare{number}"


def spare_pattern(cluster_id: str, node: str) -> re.Pattern[str]:
    """What the names of ``node``'s spares match, and nothing else."""
    return re.compile(re.escape(segment_prefix(cluster_id, node)) + r"spare[0-9]+")


def catalog_path(cluster_id: str, node: str) -> str:
    """Where the catalog of ``node`` of cluster ``cluster_id`` lives on its host."""
    return os.path.join(SHM_DIR, f"dgc.{cluster_id}.{node}.db")


def directory_path(cluster_id: str) -> str:
    """Where the key directory of cluster ``cluster_id`` lives on its head's host."""
    return os.path.join(SHM_DIR, f"dgk.{cluster_id}.db")


def cluster_prefixes(cluster_id: str) -> tuple[str, str, str]:
    """The starts of the names of everything cluster ``cluster_id`` keeps here: its segments,
    its catalogs, its key directory."""
    return f"dg.{cluster_id}.", f"dgc.{cluster_id}.", f"dgk.{cluster_id}."


_BOOT_ID: str | None = None


def shm_identity() -> str:
    """Which shared memory this process's /dev/shm is: ``<boot id>:<device>``.

    Two processes of a host see the same segments exactly when their /dev/shm is the same
    filesystem, which its device number tells (each tmpfs mount gets its own while mounted; a
    bind mount of it keeps it). A node started in a mount namespace of its own with a private
    tmpfs on /dev/shm (``grid cluster start --private-shm``) has another, so its records do not
    lead a process outside into its memory. The boot id keeps a record from before a reboot
    from ever matching.
    """
    global _BOOT_ID
    if _BOOT_ID is None:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
                _BOOT_ID = f.read().strip()
        except OSError:
            _BOOT_ID = "unknown"
    try:
        device = os.stat(SHM_DIR).st_dev
    except OSError:
        device = -1
    return f"{_BOOT_ID}:{device}"
