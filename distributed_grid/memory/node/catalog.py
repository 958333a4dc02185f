"""A node's catalog: the database that describes the node's blocks, beside their segments.

One SQLite file per node (``/dev/shm/dgc.<cluster id>.<node>.db``) holds everything the node
knows: its blocks, their keys and extents (complete or still being written), the keys' array
metadata, the leases non-persistent blocks live by, and the next block number. Every process of
the host may read it; changes happen in transactions (:meth:`Catalog.transaction`), so the
database's write lock is the node's single-writer rule, and a process killed in the middle of a
change leaves the catalog as it was before the change.

This module is the queries; the tables and what their states mean are
:mod:`distributed_grid.memory.node.schema`; what may change and when (the policy) is
:mod:`distributed_grid.memory.node.store`.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from typing import Any

from distributed_grid.errors import InvalidArgument
from distributed_grid.memory.node.schema import (
    BLOCK_COLUMNS,
    BLOCK_COLUMNS_OF_B,
    EXTENT_COLUMNS,
    EXTENT_COLUMNS_OF_E,
    HOLDS_MEMORY,
    SCHEMA,
    SCHEMA_VERSION,
    BlockRow,
    ExtentRow,
)
from distributed_grid.memory.shm.database import Database, remove_database
from distributed_grid.memory.shm.layout import catalog_path
from distributed_grid.names import validate_cluster_id, validate_node_name


class Catalog:
    """The catalog of one node, opened by this process.

    Args:
        node: the node's name.
        cluster_id: the cluster's identity.
        path: the file; None for the node's own (``memory/shm/layout.py``).

    Raises:
        VersionMismatch: the file holds a catalog of another schema version (or no catalog).
        InvalidArgument: the file is the catalog of another node or cluster.
    """

    def __init__(self, node: str, cluster_id: str, path: str | None = None) -> None:
        self.node = validate_node_name(node)
        self.cluster_id = validate_cluster_id(cluster_id)
        self.path = path or catalog_path(cluster_id, node)
        self._db = Database(self.path, SCHEMA, SCHEMA_VERSION, f"the catalog of node {node}")
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

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]:
        """Every catalog call inside the block is one change: all of it, or none of it."""
        return self._db.transaction()

    def snapshot(self) -> AbstractContextManager[sqlite3.Connection]:
        """Every catalog read inside the block sees one committed state."""
        return self._db.snapshot()

    @property
    def sql(self) -> sqlite3.Connection:
        """The connection, for the queries of another module of the node (its slabs' free
        runs) inside a :meth:`transaction`."""
        return self._db.db

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
        rows = self._db.rows(f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE number=?", (number,))
        return BlockRow(*rows[0]) if rows else None

    def place_of(self, number: int) -> tuple[int, str, str, str] | None:
        """``(size, segment, token, state)`` of a block: all that mapping it needs."""
        rows = self._db.rows("SELECT size, segment, token, state FROM blocks WHERE number=?",
                             (number,))
        return rows[0] if rows else None

    def blocks(self, states: tuple[str, ...] = ("ok", "missing")) -> list[BlockRow]:
        marks = ",".join("?" * len(states))
        return [BlockRow(*r) for r in self._db.rows(
            f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE state IN ({marks}) ORDER BY number",
            states)]

    def unsettled_blocks(self) -> list[BlockRow]:
        """Blocks being created or missing their segment (an index keeps this cheap)."""
        return [BlockRow(*r) for r in self._db.rows(
            f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE state != 'ok'")]

    def insert_block(self, number: int, size: int, segment: str, token: str, created: float,
                     lease: str | None, creator: str, holder: str | None = None,
                     for_key: str | None = None, slab: bool = False) -> None:
        """Record a block being created (inside a transaction).

        Args:
            holder: the writer the block is allocated for (until its write commits).
            for_key: the key the block is allocated for.
            slab: the block holds small values the store places (``memory/node/slabs.py``).
        """
        db = self._db.db
        if lease is not None:
            db.execute("INSERT OR IGNORE INTO leases VALUES (?, ?)", (lease, created))
        db.execute(
            f"INSERT INTO blocks ({BLOCK_COLUMNS}) VALUES (?,?,?,?,?,0,'creating',?,?,?,?,?)",
            (number, size, segment, token, created, lease, creator, holder, for_key, int(slab)))
        self._add_meta("block_count", 1)
        self._add_meta("block_bytes", size)

    def set_state(self, row: BlockRow, state: str) -> None:
        """Move a block to ``state`` (inside a transaction)."""
        self._db.db.execute("UPDATE blocks SET state=?, creator=NULL WHERE number=?",
                            (state, row.number))
        was, now = row.state in HOLDS_MEMORY, state in HOLDS_MEMORY
        if was != now:
            self._add_meta("block_count", 1 if now else -1)
            self._add_meta("block_bytes", row.size if now else -row.size)

    def delete_block(self, row: BlockRow) -> None:
        """Forget a block with its extents and key metadata (inside a transaction)."""
        db = self._db.db
        db.execute("DELETE FROM blocks WHERE number=?", (row.number,))
        if row.state in HOLDS_MEMORY:
            self._add_meta("block_count", -1)
            self._add_meta("block_bytes", -row.size)
        if row.lease is not None and db.execute(
                "SELECT 1 FROM blocks WHERE lease=? LIMIT 1", (row.lease,)).fetchone() is None:
            db.execute("DELETE FROM leases WHERE name=?", (row.lease,))

    def held_blocks(self) -> list[BlockRow]:
        """Blocks allocated for a write that has not committed yet (an index keeps it cheap)."""
        return [BlockRow(*r) for r in self._db.rows(
            f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE holder IS NOT NULL")]

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
            f"SELECT {EXTENT_COLUMNS} FROM extents WHERE block=? ORDER BY offset, id",
            (number,))]

    def all_extents(self) -> list[ExtentRow]:
        """Every extent of the node, by block and offset (for a listing)."""
        return [ExtentRow(*r) for r in self._db.rows(
            f"SELECT {EXTENT_COLUMNS} FROM extents ORDER BY block, offset, id")]

    def overlapping(self, number: int, offset: int, end: int) -> list[ExtentRow]:
        """The extents of a block that share a byte with ``offset..end``.

        Two index ranges, whatever the number of extents in the block: extents never overlap
        one another, except a key's complete extent and its rewrite pending at the same offset
        (``memory/node/writes.py``), so the only ones starting before ``offset`` that can reach
        past it start at the last such start."""
        return [ExtentRow(*r) for r in self._db.rows(
            f"SELECT {EXTENT_COLUMNS} FROM extents WHERE block=?1 AND offset=(SELECT offset "
            "FROM extents WHERE block=?1 AND offset<?2 ORDER BY offset DESC LIMIT 1) "
            "AND offset+length>?2 UNION ALL "
            f"SELECT {EXTENT_COLUMNS} FROM extents WHERE block=?1 AND offset>=?2 AND offset<?3 "
            "ORDER BY offset, id", (number, offset, end))]

    def block_of_key(self, key: str, complete_only: bool = False) -> int | None:
        """The number of the block holding ``key`` (any extent, or complete ones only)."""
        extra = " AND complete=1" if complete_only else ""
        value = self._db.scalar(f"SELECT block FROM extents WHERE key=?{extra} LIMIT 1", (key,))
        return None if value is None else int(value)  # type: ignore[call-overload]

    def key_place(self, key: str) -> tuple[BlockRow, list[ExtentRow], str | None] | None:
        """The block holding ``key``'s complete bytes, the key's complete extents there by
        offset, and its metadata (JSON): one statement, one committed state, on the key's rows
        only (None when no block holds the key's complete bytes)."""
        rows = self._db.rows(
            f"SELECT {BLOCK_COLUMNS_OF_B}, {EXTENT_COLUMNS_OF_E}, coalesce(e.meta, m.meta) "
            "FROM extents e "
            "JOIN blocks b ON b.number = e.block LEFT JOIN key_meta m ON m.key = e.key "
            "WHERE e.key=? AND e.complete=1 ORDER BY e.offset, e.id", (key,))
        if not rows:
            return None
        width = len(BlockRow._fields)
        return (BlockRow(*rows[0][:width]), [ExtentRow(*r[width:-1]) for r in rows],
                rows[0][-1])

    def key_rows_and_block(self, key: str) -> tuple[list[ExtentRow], BlockRow | None]:
        """Every extent of ``key`` (complete or pending) and the row of the block holding the
        first: one statement (a key lives in one block of its node)."""
        rows = self._db.rows(
            f"SELECT {EXTENT_COLUMNS_OF_E}, {BLOCK_COLUMNS_OF_B} FROM extents e JOIN blocks b "
            "ON b.number = e.block WHERE e.key=? ORDER BY e.block, e.offset, e.id", (key,))
        if not rows:
            return [], None
        width = len(ExtentRow._fields)
        return [ExtentRow(*r[:width]) for r in rows], BlockRow(*rows[0][width:])

    def key_extents(self, key: str, number: int) -> list[ExtentRow]:
        """The extents of ``key`` in block ``number``, by offset."""
        return [ExtentRow(*r) for r in self._db.rows(
            f"SELECT {EXTENT_COLUMNS} FROM extents WHERE key=? AND block=? ORDER BY offset, id",
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
            f"SELECT {EXTENT_COLUMNS} FROM extents WHERE block=? AND key=? AND offset=? "
            "AND complete=0", (number, key, offset))
        return ExtentRow(*rows[0]) if rows else None

    def pending_extents(self, key: str | None = None) -> list[ExtentRow]:
        """Every pending extent of the node (or of ``key``), by block and offset."""
        if key is None:
            rows = self._db.rows(f"SELECT {EXTENT_COLUMNS} FROM extents WHERE complete=0 "
                                 "ORDER BY block, offset")
        else:
            rows = self._db.rows(f"SELECT {EXTENT_COLUMNS} FROM extents WHERE key=? AND "
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

    def drop_key_extents(self, key: str, number: int) -> None:
        """Forget every extent of ``key`` in block ``number`` (inside a transaction)."""
        self._db.db.execute("DELETE FROM extents WHERE key=? AND block=?", (key, number))

    def drop_extents(self, ids: list[int]) -> None:
        db = self._db.db
        db.executemany("DELETE FROM extents WHERE id=?", [(i,) for i in ids])

    def block_has_extents(self, number: int) -> bool:
        """Whether any key (complete or being written) has bytes in block ``number``."""
        return self._db.scalar("SELECT 1 FROM extents WHERE block=? LIMIT 1",
                               (number,)) is not None

    def key_has_extents(self, key: str, number: int) -> bool:
        return self._db.scalar("SELECT 1 FROM extents WHERE key=? AND block=? LIMIT 1",
                               (key, number)) is not None

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
