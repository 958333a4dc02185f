"""A node's catalog: the database that describes the node's blocks, beside their segments.

One SQLite file per node (``/dev/shm/dgc.<cluster id>.<node>.db``) holds everything the node
knows: its blocks, their keys and extents (complete or still being written), the keys' array
metadata, the leases non-persistent blocks live by, and the next block number. Every process of
the host may read it; changes happen in transactions (:meth:`Catalog.transaction`), so the
database's write lock is the node's single-writer rule, and a process killed in the middle of a
change leaves the catalog as it was before the change.

This module is the schema and its queries; what may change and when (the policy) is
:mod:`distributed_grid.memory.node.store`.

Block states: ``creating`` (its number is spent and its creator is making the segment),
``ok``, or ``missing`` (its segment vanished from the host). ``block_count`` and ``block_bytes``
in ``meta`` count the blocks that hold memory (creating and ok), kept by every change, so no
question about the node's size costs a scan. A block allocated for one write (``grid memory
store`` without a block id) has a ``holder``, the writer, until that write commits: if the
holder dies first, the block is freed. It also remembers the key it was made ``for_key``, so
removing that key (:meth:`~distributed_grid.memory.node.store.BlockStore.delete_key`) frees the
block when no other key lives in it.

An extent is complete, or pending (being written) with its ``writer`` and the write-guard slot
(``slot``, ``guard``: the slot's index and owner tag in the segment's header) the write holds.
A key rewritten at the same offset keeps its complete extent beside the pending one until the
new write commits, so the key stays readable meanwhile; the commit then gives the complete
extent the new length, and it keeps its id. Extent ids are never reused: a key's extents with
the same ids have been the key's all along (a reader checks that its key was not deleted, and
another key written in its place, while it read).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

from distributed_grid.errors import InvalidArgument
from distributed_grid.memory.shm.database import Database, remove_database
from distributed_grid.memory.shm.segment import SHM_DIR
from distributed_grid.names import validate_cluster_id, validate_node_name

SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE meta (name TEXT PRIMARY KEY, value) WITHOUT ROWID;
INSERT INTO meta VALUES ('next_number', 0), ('block_count', 0), ('block_bytes', 0);
CREATE TABLE leases (name TEXT PRIMARY KEY, created REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE blocks (
    number INTEGER PRIMARY KEY,
    size INTEGER NOT NULL CHECK (size > 0),
    segment TEXT NOT NULL UNIQUE,
    token TEXT NOT NULL,
    created REAL NOT NULL,
    high_water INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL CHECK (state IN ('creating', 'ok', 'missing')),
    lease TEXT REFERENCES leases(name),
    creator TEXT,
    holder TEXT,
    for_key TEXT
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
    guard INTEGER
);
CREATE INDEX extents_by_block ON extents(block, offset);
CREATE INDEX extents_pending ON extents(block) WHERE complete = 0;
CREATE INDEX extents_by_key ON extents(key, block);
CREATE TABLE key_meta (
    key TEXT PRIMARY KEY,
    block INTEGER NOT NULL REFERENCES blocks(number) ON DELETE CASCADE,
    meta TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX key_meta_by_block ON key_meta(block)
"""
_HOLDS_MEMORY = ("creating", "ok")


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


_BLOCK_COLUMNS = ("number, size, segment, token, created, high_water, state, lease, creator, "
                  "holder, for_key")
_EXTENT_COLUMNS = "id, block, key, offset, length, complete, writer, slot, guard"
_BLOCK_COLUMNS_OF_B = ", ".join(f"b.{c}" for c in _BLOCK_COLUMNS.split(", "))
_EXTENT_COLUMNS_OF_E = ", ".join(f"e.{c}" for c in _EXTENT_COLUMNS.split(", "))


def catalog_path(cluster_id: str, node: str) -> str:
    """Where the catalog of ``node`` of cluster ``cluster_id`` lives on its host."""
    return os.path.join(SHM_DIR, f"dgc.{cluster_id}.{node}.db")


class Catalog:
    """The catalog of one node, opened by this process.

    Args:
        node: the node's name.
        cluster_id: the cluster's identity.
        path: the file; None for :func:`catalog_path`.

    Raises:
        VersionMismatch: the file holds a catalog of another schema version (or no catalog).
        InvalidArgument: the file is the catalog of another node or cluster.
    """

    def __init__(self, node: str, cluster_id: str, path: str | None = None) -> None:
        self.node = validate_node_name(node)
        self.cluster_id = validate_cluster_id(cluster_id)
        self.path = path or catalog_path(cluster_id, node)
        self._db = Database(self.path, _SCHEMA, SCHEMA_VERSION, f"the catalog of node {node}")
        owner = self._owner()
        if owner == (None, None):
            with self._db.transaction() as db:  # the first process to open the catalog
                db.execute("INSERT OR IGNORE INTO meta VALUES ('node', ?), ('cluster_id', ?)",
                           (node, cluster_id))
            owner = self._owner()
        if owner != (node, cluster_id):
            self._db.close()
            raise InvalidArgument(f"{self.path} is the catalog of node {owner[0]} of cluster "
                                  f"{owner[1]}, not of {node} of {cluster_id}")

    def _owner(self) -> tuple[Any, Any]:
        found = dict(self._db.rows(
            "SELECT name, value FROM meta WHERE name IN ('node', 'cluster_id')"))
        return found.get("node"), found.get("cluster_id")

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Every catalog call inside the block is one change: all of it, or none of it."""
        with self._db.transaction():
            yield

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Every catalog read inside the block sees one committed state."""
        with self._db.snapshot():
            yield

    def data_version(self) -> int:
        """Changes whenever another process commits a change to this catalog."""
        return self._db.data_version()

    def change_mark(self) -> tuple[int, int]:
        """Changes whenever a change to this catalog is committed, by this process too."""
        return self._db.change_mark()

    def close(self) -> None:
        """Close this process's connection; the catalog stays."""
        self._db.close()

    def remove(self) -> None:
        """Delete the catalog's files (the node's store is being destroyed)."""
        self._db.close()
        remove_database(self.path)

    # -- meta ----------------------------------------------------------------------------------

    def meta(self, name: str) -> Any:
        return self._db.scalar("SELECT value FROM meta WHERE name=?", (name,))

    def _add_meta(self, name: str, delta: int) -> None:
        self._db.db.execute("UPDATE meta SET value=value+? WHERE name=?", (delta, name))

    def numbers_from(self, floor: int) -> None:
        """Hand out no block number below ``floor`` from now on (numbers a previous life of
        the node spent: see :class:`~distributed_grid.memory.node.actor.StoreActor`)."""
        with self._db.transaction() as db:
            db.execute("UPDATE meta SET value=max(value, ?) WHERE name='next_number'", (floor,))

    def next_number(self) -> int:
        """The number the next block will get."""
        return int(self.meta("next_number"))

    def spend_number(self) -> int:
        """Take the next block number (inside a transaction): it is never handed out again."""
        number = int(self.meta("next_number"))
        self._add_meta("next_number", 1)
        return number

    def counts(self) -> tuple[int, int]:
        """``(blocks, bytes)`` of the blocks that hold memory (creating or ok)."""
        rows = dict(self._db.rows(
            "SELECT name, value FROM meta WHERE name IN ('block_count', 'block_bytes')"))
        return int(rows["block_count"]), int(rows["block_bytes"])

    # -- blocks --------------------------------------------------------------------------------

    def block(self, number: int) -> BlockRow | None:
        rows = self._db.rows(f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE number=?", (number,))
        return BlockRow(*rows[0]) if rows else None

    def place_of(self, number: int) -> tuple[int, str, str, str] | None:
        """``(size, segment, token, state)`` of a block: all that mapping it needs."""
        rows = self._db.rows("SELECT size, segment, token, state FROM blocks WHERE number=?",
                             (number,))
        return rows[0] if rows else None

    def block_and_extents(self, number: int) -> tuple[BlockRow | None, list[ExtentRow]]:
        """A block's row and its extents by offset, read in one statement (one state)."""
        rows = self._db.rows(
            f"SELECT {_BLOCK_COLUMNS_OF_B}, {_EXTENT_COLUMNS_OF_E} FROM blocks b "
            "LEFT JOIN extents e ON e.block = b.number WHERE b.number=? ORDER BY e.offset, e.id",
            (number,))
        if not rows:
            return None, []
        width = len(BlockRow._fields)
        extents = [ExtentRow(*r[width:]) for r in rows if r[width] is not None]
        return BlockRow(*rows[0][:width]), extents

    def blocks(self, states: tuple[str, ...] = ("ok", "missing")) -> list[BlockRow]:
        marks = ",".join("?" * len(states))
        return [BlockRow(*r) for r in self._db.rows(
            f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE state IN ({marks}) ORDER BY number",
            states)]

    def unsettled_blocks(self) -> list[BlockRow]:
        """Blocks being created or missing their segment (an index keeps this cheap)."""
        return [BlockRow(*r) for r in self._db.rows(
            f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE state != 'ok'")]

    def insert_block(self, number: int, size: int, segment: str, token: str, created: float,
                     lease: str | None, creator: str, holder: str | None = None,
                     for_key: str | None = None) -> None:
        """Record a block being created (inside a transaction).

        Args:
            holder: the writer the block is allocated for (until its write commits).
            for_key: the key the block is allocated for.
        """
        db = self._db.db
        if lease is not None:
            db.execute("INSERT OR IGNORE INTO leases VALUES (?, ?)", (lease, created))
        db.execute(
            f"INSERT INTO blocks ({_BLOCK_COLUMNS}) VALUES (?,?,?,?,?,0,'creating',?,?,?,?)",
            (number, size, segment, token, created, lease, creator, holder, for_key))
        self._add_meta("block_count", 1)
        self._add_meta("block_bytes", size)

    def set_state(self, row: BlockRow, state: str) -> None:
        """Move a block to ``state`` (inside a transaction)."""
        self._db.db.execute("UPDATE blocks SET state=?, creator=NULL WHERE number=?",
                            (state, row.number))
        was, now = row.state in _HOLDS_MEMORY, state in _HOLDS_MEMORY
        if was != now:
            self._add_meta("block_count", 1 if now else -1)
            self._add_meta("block_bytes", row.size if now else -row.size)

    def delete_block(self, row: BlockRow) -> None:
        """Forget a block with its extents and key metadata (inside a transaction)."""
        db = self._db.db
        db.execute("DELETE FROM blocks WHERE number=?", (row.number,))
        if row.state in _HOLDS_MEMORY:
            self._add_meta("block_count", -1)
            self._add_meta("block_bytes", -row.size)
        if row.lease is not None and db.execute(
                "SELECT 1 FROM blocks WHERE lease=? LIMIT 1", (row.lease,)).fetchone() is None:
            db.execute("DELETE FROM leases WHERE name=?", (row.lease,))

    def held_blocks(self) -> list[BlockRow]:
        """Blocks allocated for a write that has not committed yet (an index keeps it cheap)."""
        return [BlockRow(*r) for r in self._db.rows(
            f"SELECT {_BLOCK_COLUMNS} FROM blocks WHERE holder IS NOT NULL")]

    def let_go(self, number: int) -> None:
        """The block's write committed: it no longer depends on its holder's life."""
        self._db.db.execute("UPDATE blocks SET holder=NULL WHERE number=? AND holder IS NOT NULL",
                            (number,))

    def raise_high_water(self, number: int, end: int) -> None:
        self._db.db.execute("UPDATE blocks SET high_water=max(high_water, ?) WHERE number=?",
                            (end, number))

    # -- extents and keys ----------------------------------------------------------------------

    def extents(self, number: int) -> list[ExtentRow]:
        """A block's extents, by offset."""
        return [ExtentRow(*r) for r in self._db.rows(
            f"SELECT {_EXTENT_COLUMNS} FROM extents WHERE block=? ORDER BY offset, id",
            (number,))]

    def all_extents(self) -> list[ExtentRow]:
        """Every extent of the node, by block and offset (for a listing)."""
        return [ExtentRow(*r) for r in self._db.rows(
            f"SELECT {_EXTENT_COLUMNS} FROM extents ORDER BY block, offset, id")]

    def overlapping(self, number: int, offset: int, end: int) -> list[ExtentRow]:
        """The extents of a block that share a byte with ``offset..end``."""
        return [ExtentRow(*r) for r in self._db.rows(
            f"SELECT {_EXTENT_COLUMNS} FROM extents WHERE block=? AND offset<? AND offset+length>?"
            " ORDER BY offset, id", (number, end, offset))]

    def block_of_key(self, key: str, complete_only: bool = False) -> int | None:
        """The number of the block holding ``key`` (any extent, or complete ones only)."""
        extra = " AND complete=1" if complete_only else ""
        value = self._db.scalar(f"SELECT block FROM extents WHERE key=?{extra} LIMIT 1", (key,))
        return None if value is None else int(value)  # type: ignore[call-overload]

    def key_extents(self, key: str, number: int) -> list[ExtentRow]:
        """The extents of ``key`` in block ``number``, by offset."""
        return [ExtentRow(*r) for r in self._db.rows(
            f"SELECT {_EXTENT_COLUMNS} FROM extents WHERE key=? AND block=? ORDER BY offset, id",
            (key, number))]

    def complete_keys(self) -> list[tuple[str, int]]:
        """``(key, block number)`` of every key with complete bytes on the node."""
        return self._db.rows(
            "SELECT DISTINCT key, block FROM extents WHERE complete=1 ORDER BY block, key")

    def add_extent(self, number: int, key: str, offset: int, length: int, writer: str,
                   slot: int | None = None, guard: int | None = None) -> None:
        """Claim a run of a block for ``key``, pending until :meth:`complete_extent`.

        Args:
            slot, guard: the write-guard slot the write holds and its owner tag (None when the
                write holds none).
        """
        self._db.db.execute(
            "INSERT INTO extents (block, key, offset, length, complete, writer, slot, guard) "
            "VALUES (?,?,?,?,0,?,?,?)", (number, key, offset, length, writer, slot, guard))

    def pending_extent(self, number: int, key: str, offset: int) -> ExtentRow | None:
        """The pending extent of ``key`` at ``offset`` in block ``number``, if any."""
        rows = self._db.rows(
            f"SELECT {_EXTENT_COLUMNS} FROM extents WHERE block=? AND key=? AND offset=? "
            "AND complete=0", (number, key, offset))
        return ExtentRow(*rows[0]) if rows else None

    def pending_extents(self, key: str | None = None) -> list[ExtentRow]:
        """Every pending extent of the node (or of ``key``), by block and offset."""
        if key is None:
            rows = self._db.rows(f"SELECT {_EXTENT_COLUMNS} FROM extents WHERE complete=0 "
                                 "ORDER BY block, offset")
        else:
            rows = self._db.rows(f"SELECT {_EXTENT_COLUMNS} FROM extents WHERE key=? AND "
                                 "complete=0 ORDER BY block, offset", (key,))
        return [ExtentRow(*r) for r in rows]

    def complete_extent(self, number: int, key: str, offset: int, length: int) -> bool:
        """Mark a pending extent complete; returns whether there was a pending one.

        The key's complete extent at the same offset (whose bytes were rewritten) takes the
        new length and stays, keeping its id; the pending one goes."""
        db = self._db.db
        row = db.execute("SELECT id FROM extents WHERE block=? AND key=? AND offset=? AND "
                         "length=? AND complete=0", (number, key, offset, length)).fetchone()
        if row is None:
            return False
        kept = db.execute("UPDATE extents SET length=? WHERE block=? AND key=? AND offset=? "
                          "AND complete=1", (length, number, key, offset)).rowcount
        if kept:
            db.execute("DELETE FROM extents WHERE id=?", (row[0],))
        else:
            db.execute("UPDATE extents SET complete=1, writer=NULL, slot=NULL, guard=NULL "
                       "WHERE id=?", (row[0],))
        return True

    def drop_extents(self, ids: list[int]) -> None:
        db = self._db.db
        db.executemany("DELETE FROM extents WHERE id=?", [(i,) for i in ids])

    def drop_pending(self, number: int, key: str, offset: int) -> int:
        """Forget the pending extent of ``key`` at ``offset``; returns how many went."""
        cursor = self._db.db.execute(
            "DELETE FROM extents WHERE block=? AND key=? AND offset=? AND complete=0",
            (number, key, offset))
        return cursor.rowcount

    def block_has_extents(self, number: int) -> bool:
        """Whether any key (complete or being written) has bytes in block ``number``."""
        return self._db.scalar("SELECT 1 FROM extents WHERE block=? LIMIT 1",
                               (number,)) is not None

    def key_has_extents(self, key: str, number: int) -> bool:
        return self._db.scalar("SELECT 1 FROM extents WHERE key=? AND block=? LIMIT 1",
                               (key, number)) is not None

    def key_meta(self, key: str) -> dict[str, Any] | None:
        value = self._db.scalar("SELECT meta FROM key_meta WHERE key=?", (key,))
        return None if value is None else json.loads(value)  # type: ignore[arg-type]

    def set_key_meta(self, key: str, number: int, meta: dict[str, Any] | None) -> None:
        db = self._db.db
        if meta is None:
            db.execute("DELETE FROM key_meta WHERE key=?", (key,))
        else:
            db.execute("INSERT OR REPLACE INTO key_meta VALUES (?,?,?)",
                       (key, number, json.dumps(meta)))

    # -- leases --------------------------------------------------------------------------------

    def leases(self) -> list[str]:
        return [r[0] for r in self._db.rows("SELECT name FROM leases ORDER BY name")]

    def blocks_of_lease(self, lease: str) -> list[int]:
        return [r[0] for r in self._db.rows(
            "SELECT number FROM blocks WHERE lease=? ORDER BY number", (lease,))]
