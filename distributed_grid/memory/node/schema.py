"""The schema of a node's catalog: its tables, and the rows queries hand back.

Block states: ``creating`` (its number is spent and its creator is making the segment),
``ok``, or ``missing`` (its segment vanished from the host); and, on a node with a spill folder
(``memory/node/room/spills.py``), ``spilling`` (in memory and readable, being written to its
``spill_file`` by the process ``mover``; no write may start), ``spilled`` (on disk only: the
file, whose xxh3-64 is ``checksum``, is its bytes) and ``restoring`` (being read back into a new
segment by ``mover``). ``block_count`` and ``block_bytes`` in ``meta`` count the blocks that hold
memory (creating, ok, spilling, restoring), ``spilled_count`` and ``spilled_bytes`` those with
a spill file (spilling, spilled, restoring: the quota counts blocks, not file sizes), kept by
every change, so no question about the node's size costs a scan. The spill folder, its quota
and the watermarks are rows of ``meta`` too (``spill_dir``, ``spill_quota``, ``spill_high``,
``spill_low``), so every process of the host that runs the store applies the same.

A block allocated for one write (``grid memory store`` without a block id) has a ``holder``,
the writer, until that write commits: if the holder dies first, the block is freed. It also
remembers the key it was made ``for_key``, so removing that key frees the block when no other
key lives in it.

A ``slab`` block holds small values the store places itself (``memory/node/slabs.py``): its
free runs are rows of ``slab_free`` (never two touching: a freed run merges with its
neighbours), and its keys' extents are the rest; a key in a slab has one extent, which carries
the key's metadata itself (``extents.meta``: no ``key_meta`` row to write and delete).

A node started with ``--prefault`` keeps ``spares`` (``memory/node/room/spares.py``): segments of
``size`` data bytes whose pages are allocated and written already, ``filling`` (by the process
``filler``) or ``ready``; a new block takes a ready one whole, and records in ``paged`` how many
of its first bytes have their pages in (a writer maps them instead of faulting them in). The
node's target is the ``prefault`` row of ``meta``, the size its spares are made at
``spare_size`` (the last big block's), and ``next_spare`` numbers their names.

A block that is one copy of a replicated block (``memory/client/replicas.py``) names that block
in ``replica_of`` (the id its users hold: the id of its first copy, which names itself). Such
a copy is written only through its replicated block, whose every copy gets the same writes, and
only by a writer that knows the block's copies as of ``epoch`` (the count of changes of its set
of copies that added one: a writer that knows an older set would miss the new copy).

An extent is complete, or pending (being written) with its ``writer`` and the write-guard slot
(``slot``, ``guard``: the slot's index and owner tag in the segment's header) the write holds.
A key rewritten at the same offset keeps its complete extent beside the pending one until the
new write commits, so the key stays readable meanwhile; the commit then gives the complete
extent the new length, and it keeps its id. Extent ids are never reused: a key's extents with
the same ids have been the key's all along (a reader checks that its key was not deleted, and
another key written in its place, while it read).
"""

from __future__ import annotations

from typing import NamedTuple

SCHEMA_VERSION = 7

SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
INSERT INTO meta VALUES ('next_number', 0), ('block_count', 0), ('block_bytes', 0),
    ('spilled_count', 0), ('spilled_bytes', 0), ('next_spare', 0);
CREATE TABLE leases (name TEXT PRIMARY KEY, created REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE blocks (
    number INTEGER PRIMARY KEY,
    size INTEGER NOT NULL CHECK (size > 0),
    segment TEXT NOT NULL UNIQUE,
    token TEXT NOT NULL,
    created REAL NOT NULL,
    high_water INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL CHECK (state IN ('creating', 'ok', 'missing', 'spilling', 'spilled',
                                         'restoring')),
    lease TEXT REFERENCES leases(name),
    creator TEXT,
    holder TEXT,
    for_key TEXT,
    slab INTEGER NOT NULL DEFAULT 0,
    replica_of TEXT,
    epoch INTEGER NOT NULL DEFAULT 0,
    spill_file TEXT,
    checksum TEXT,
    mover TEXT,
    paged INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX blocks_by_lease ON blocks(lease) WHERE lease IS NOT NULL;
CREATE INDEX blocks_not_ok ON blocks(state) WHERE state != 'ok';
CREATE INDEX blocks_held ON blocks(holder) WHERE holder IS NOT NULL;
CREATE TABLE extents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    block INTEGER NOT NULL REFERENCES blocks(number) ON DELETE CASCADE,
    key TEXT NOT NULL,
    offset INTEGER NOT NULL CHECK (offset >= 0),
    length INTEGER NOT NULL CHECK (length >= 0),
    complete INTEGER NOT NULL DEFAULT 0,
    writer TEXT,
    slot INTEGER,
    guard INTEGER,
    meta TEXT
);
CREATE INDEX extents_by_block ON extents(block, offset);
CREATE INDEX extents_pending ON extents(block) WHERE complete = 0;
CREATE INDEX extents_by_key ON extents(key, block, offset);
CREATE TABLE slab_free (
    block INTEGER NOT NULL REFERENCES blocks(number) ON DELETE CASCADE,
    offset INTEGER NOT NULL,
    length INTEGER NOT NULL CHECK (length > 0),
    PRIMARY KEY (block, offset)
) WITHOUT ROWID;
CREATE INDEX slab_free_by_length ON slab_free(length, block, offset);
CREATE TABLE key_meta (
    key TEXT PRIMARY KEY,
    block INTEGER NOT NULL REFERENCES blocks(number) ON DELETE CASCADE,
    meta TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX key_meta_by_block ON key_meta(block);
CREATE TABLE spares (
    number INTEGER PRIMARY KEY,
    size INTEGER NOT NULL CHECK (size > 0),
    state TEXT NOT NULL CHECK (state IN ('filling', 'ready')),
    filler TEXT,
    created REAL NOT NULL
)
"""
HOLDS_MEMORY = ("creating", "ok", "spilling", "restoring")
ON_DISK = ("spilling", "spilled", "restoring")  # the blocks the spill quota counts


class BlockRow(NamedTuple):
    """One row of ``blocks``."""

    number: int
    size: int
    segment: str
    token: str
    created: float
    high_water: int
    state: str
    lease: str | None
    creator: str | None
    holder: str | None
    for_key: str | None
    slab: int = 0
    replica_of: str | None = None
    epoch: int = 0
    spill_file: str | None = None
    checksum: str | None = None
    mover: str | None = None
    paged: int = 0


class ExtentRow(NamedTuple):
    """One row of ``extents``: a run of a block's bytes that belongs to a key."""

    id: int
    block: int
    key: str
    offset: int
    length: int
    complete: bool
    writer: str | None
    slot: int | None
    guard: int | None

    @property
    def end(self) -> int:
        return self.offset + self.length


BLOCK_COLUMNS = ("number, size, segment, token, created, high_water, state, lease, creator, "
                  "holder, for_key, slab, replica_of, epoch, spill_file, checksum, mover, paged")
EXTENT_COLUMNS = "id, block, key, offset, length, complete, writer, slot, guard"
BLOCK_COLUMNS_OF_B = ", ".join(f"b.{c}" for c in BLOCK_COLUMNS.split(", "))
EXTENT_COLUMNS_OF_E = ", ".join(f"e.{c}" for c in EXTENT_COLUMNS.split(", "))
