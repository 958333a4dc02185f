"""A node's catalog: the database that describes the node's blocks, beside their segments.

One SQLite file per node (``/dev/shm/dgc.<cluster id>.<node>.db``) holds everything the node
knows: its blocks, their keys and extents (complete or still being written), the keys' array
metadata, the leases non-persistent blocks live by, and the next block number. Every process of
the host may read it; changes happen in transactions (:meth:`Catalog.transaction`), so the
database's write lock is the node's single-writer rule, and a process killed in the middle of a
change leaves the catalog as it was before the change.

This module is the queries (those of keys and extents in :mod:`.extents`); the tables and what
their states mean are :mod:`distributed_grid.memory.node.schema`; what may change and when (the
policy) is :mod:`distributed_grid.memory.node.store`.
"""

from __future__ import annotations

import sqlite3
from contextlib import AbstractContextManager
from typing import Any

from distributed_grid.errors import InvalidArgument
from distributed_grid.memory.node.extents import ExtentQueries
from distributed_grid.memory.node.schema import (
    BLOCK_COLUMNS,
    HOLDS_MEMORY,
    ON_DISK,
    SCHEMA,
    SCHEMA_VERSION,
    BlockRow,
)
from distributed_grid.memory.shm.database import Database, remove_database
from distributed_grid.memory.shm.layout import catalog_path
from distributed_grid.names import validate_cluster_id, validate_node_name


class Catalog(ExtentQueries):
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
        the node spent: see :class:`~distributed_grid.memory.node.service.actor.StoreActor`)."""
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

    def blocks(self, states: tuple[str, ...] = ("ok", "missing", "spilling", "spilled",
                                                "restoring")) -> list[BlockRow]:
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
                     for_key: str | None = None, slab: bool = False,
                     replica_of: str | None = None) -> None:
        """Record a block being created (inside a transaction).

        Args:
            holder: the writer the block is allocated for (until its write commits).
            for_key: the key the block is allocated for.
            slab: the block holds small values the store places (``memory/node/slabs.py``).
            replica_of: the replicated block this block is a copy of.
        """
        db = self._db.db
        if lease is not None:
            db.execute("INSERT OR IGNORE INTO leases VALUES (?, ?)", (lease, created))
        db.execute(
            f"INSERT INTO blocks ({BLOCK_COLUMNS}) VALUES "
            "(?,?,?,?,?,0,'creating',?,?,?,?,?,?,0,NULL,NULL,NULL,0)",
            (number, size, segment, token, created, lease, creator, holder, for_key, int(slab),
             replica_of))
        self._add_meta("block_count", 1)
        self._add_meta("block_bytes", size)

    def set_state(self, row: BlockRow, state: str) -> None:
        """Move a block to ``state`` (inside a transaction)."""
        self._db.db.execute("UPDATE blocks SET state=?, creator=NULL WHERE number=?",
                            (state, row.number))
        for kinds, count, size in ((HOLDS_MEMORY, "block_count", "block_bytes"),
                                   (ON_DISK, "spilled_count", "spilled_bytes")):
            was, now = row.state in kinds, state in kinds
            if was != now:
                self._add_meta(count, 1 if now else -1)
                self._add_meta(size, row.size if now else -row.size)

    def delete_block(self, row: BlockRow) -> None:
        """Forget a block with its extents and key metadata (inside a transaction)."""
        db = self._db.db
        db.execute("DELETE FROM blocks WHERE number=?", (row.number,))
        if row.state in HOLDS_MEMORY:
            self._add_meta("block_count", -1)
            self._add_meta("block_bytes", -row.size)
        if row.state in ON_DISK:
            self._add_meta("spilled_count", -1)
            self._add_meta("spilled_bytes", -row.size)
        if row.lease is not None and db.execute(
                "SELECT 1 FROM blocks WHERE lease=? LIMIT 1", (row.lease,)).fetchone() is None:
            db.execute("DELETE FROM leases WHERE name=?", (row.lease,))

    def spill_counts(self) -> tuple[int, int]:
        """``(blocks, bytes)`` of the blocks that have a spill file (spilling, spilled,
        restoring): what the spill quota counts."""
        rows = dict(self._db.rows(
            "SELECT name, value FROM meta WHERE name IN ('spilled_count', 'spilled_bytes')"))
        return int(rows["spilled_count"]), int(rows["spilled_bytes"])

    def settings(self, prefix: str) -> dict[str, Any]:
        """The rows of ``meta`` whose name starts with ``prefix`` (a node's spill settings)."""
        return dict(self._db.rows("SELECT name, value FROM meta WHERE name LIKE ? || '%'",
                                  (prefix,)))

    def set_settings(self, values: dict[str, Any]) -> None:
        """Write rows of ``meta`` (inside a transaction); a None value removes its row."""
        for name, value in values.items():
            if value is None:
                self._db.db.execute("DELETE FROM meta WHERE name=?", (name,))
            else:
                self._db.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, value))

    def set_spill(self, number: int, spill_file: str | None, checksum: str | None,
                  mover: str | None) -> None:
        """Record a block's spill file, its checksum and the process moving it (inside a
        transaction)."""
        self._db.db.execute("UPDATE blocks SET spill_file=?, checksum=?, mover=? WHERE number=?",
                            (spill_file, checksum, mover, number))

    def has_pending(self, number: int) -> bool:
        """Whether a write of the block is pending."""
        return self._db.scalar("SELECT 1 FROM extents WHERE block=? AND complete=0 LIMIT 1",
                               (number,)) is not None

    def set_token(self, number: int, token: str) -> None:
        """Give a block's memory a new token (inside a transaction): it is restored into a new
        segment, and no mapping of the old one may pass for it."""
        self._db.db.execute("UPDATE blocks SET token=? WHERE number=?", (token, number))

    def moving_blocks(self) -> list[BlockRow]:
        """Blocks being spilled or restored (an index keeps this cheap)."""
        return [BlockRow(*r) for r in self._db.rows(
            f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE state IN ('spilling', 'restoring')")]

    def spill_candidates(self) -> list[BlockRow]:
        """Blocks in memory that may be spilled: ``ok``, no write allocated them and none is
        running (their pins are the spiller's to check), by number."""
        return [BlockRow(*r) for r in self._db.rows(
            f"SELECT {BLOCK_COLUMNS} FROM blocks b WHERE state='ok' AND holder IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM extents e WHERE e.block=b.number AND e.complete=0) "
            "ORDER BY number")]

    def copies(self) -> list[BlockRow]:
        """The blocks that are copies of a replicated block."""
        return [BlockRow(*r) for r in self._db.rows(
            f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE replica_of IS NOT NULL")]

    def held_blocks(self) -> list[BlockRow]:
        """Blocks allocated for a write that has not committed yet (an index keeps it cheap)."""
        return [BlockRow(*r) for r in self._db.rows(
            f"SELECT {BLOCK_COLUMNS} FROM blocks WHERE holder IS NOT NULL")]

    def set_epoch(self, number: int, epoch: int) -> None:
        """Raise a copy's epoch (inside a transaction): writers that know an older set of its
        block's copies are refused from now on."""
        self._db.db.execute("UPDATE blocks SET epoch=max(epoch, ?) WHERE number=?",
                            (epoch, number))

    def let_go(self, number: int) -> None:
        """The block's write committed: it no longer depends on its holder's life."""
        self._db.db.execute("UPDATE blocks SET holder=NULL WHERE number=? AND holder IS NOT NULL",
                            (number,))

    def raise_high_water(self, number: int, end: int) -> None:
        self._db.db.execute("UPDATE blocks SET high_water=max(high_water, ?) WHERE number=?",
                            (end, number))

    # -- leases --------------------------------------------------------------------------------

    def leases(self) -> list[str]:
        return [r[0] for r in self._db.rows("SELECT name FROM leases ORDER BY name")]

    def blocks_of_lease(self, lease: str) -> list[int]:
        return [r[0] for r in self._db.rows(
            "SELECT number FROM blocks WHERE lease=? ORDER BY number", (lease,))]
