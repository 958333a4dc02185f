"""A node catalog's queries of keys and their extents (see :mod:`.catalog`, whose
:class:`~distributed_grid.memory.node.catalog.Catalog` they are part of).

A key's own rows are found through the index on ``(key, block, offset)`` and a write's
neighbours through ``(block, offset)``: an operation on one key reads that key's rows, whatever
the number of keys in its block (``tests/unit/test_key_cost.py`` reads SQLite's plans of them).
"""

from __future__ import annotations

import json
from typing import Any

from distributed_grid.memory.node.schema import (
    BLOCK_COLUMNS_OF_B,
    EXTENT_COLUMNS,
    EXTENT_COLUMNS_OF_E,
    BlockRow,
    ExtentRow,
)
from distributed_grid.memory.shm.database import Database


class ExtentQueries:
    """The key and extent queries of a :class:`~distributed_grid.memory.node.catalog.Catalog`
    (over its database; changes inside its transactions)."""

    _db: Database

    def block_and_extents(self, number: int) -> tuple[BlockRow | None, list[ExtentRow]]:
        """A block's row and all its extents by offset, in one statement (one state)."""
        rows = self._db.rows(
            f"SELECT {BLOCK_COLUMNS_OF_B}, {EXTENT_COLUMNS_OF_E} FROM blocks b "
            "LEFT JOIN extents e ON e.block = b.number WHERE b.number=? ORDER BY e.offset, e.id",
            (number,))
        if not rows:
            return None, []
        width = len(BlockRow._fields)
        return (BlockRow(*rows[0][:width]),
                [ExtentRow(*r[width:]) for r in rows if r[width] is not None])

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

    def key_metas(self, number: int) -> dict[str, str]:
        """The metadata of the keys of block ``number`` (as stored: JSON text), by key."""
        return dict(self._db.rows("SELECT key, meta FROM key_meta WHERE block=?", (number,)))

    def replace_complete(self, number: int, extents: list[tuple[str, int, int]],
                         metas: dict[str, str], high_water: int) -> None:
        """Make block ``number``'s complete keys exactly ``extents`` (``(key, offset,
        length)``) with ``metas``, and its high-water mark ``high_water`` (inside a
        transaction; pending writes stay)."""
        db = self._db.db
        db.execute("DELETE FROM extents WHERE block=? AND complete=1", (number,))
        db.execute("DELETE FROM key_meta WHERE block=?", (number,))
        db.executemany("INSERT INTO extents (block, key, offset, length, complete) "
                       "VALUES (?,?,?,?,1)", [(number, k, o, n) for k, o, n in extents])
        db.executemany("INSERT OR REPLACE INTO key_meta VALUES (?,?,?)",
                       [(k, number, m) for k, m in metas.items()])
        db.execute("UPDATE blocks SET high_water=? WHERE number=?", (high_water, number))
