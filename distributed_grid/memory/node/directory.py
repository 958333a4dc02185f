"""The cluster's key directory: which block holds each key, found with one lookup.

One SQLite file per cluster (``/dev/shm/dgk.<cluster id>.db``) on the head node's host. Processes
of that host use it directly; other hosts reach it through the head's store actor. It also keeps
each node's last reported size (blocks, bytes, free shared memory), so choosing a node for a new
block is one query whatever the number of nodes.

The directory is an index, not the truth: a key's bytes and extents live in its block's node
catalog. What the directory guarantees is that a key lives in one block of the cluster. The
protocol (run for the pool by :mod:`distributed_grid.memory.client.keys`):

1. A write of key K into block b first records K in b's catalog (pending).
2. Then it claims K in the directory: the claim succeeds if K is free or already b's (its
   version goes up either way). If K names another block b', the writer asks b' whether it
   still holds K: if it does, the write is refused (``KeyConflict``) and step 1 undone; if not
   (the entry is stale: b' dropped K or is gone), the writer takes K over with a
   compare-and-swap on the version it saw, and starts again if somebody changed it meanwhile.
3. Deallocating a block forgets its keys here after its catalog dropped them; deleting a key
   forgets its entry if the entry is still the one seen before the catalog dropped the key (a
   writer that claimed the key again meanwhile keeps its claim).

Because every holder records K in its catalog *before* claiming, two writers racing for K
always find the winner's claim backed by its catalog, and exactly one of them proceeds. Entries
may go stale (a key overwritten with ``--force``, an aborted write); lookups check the catalog,
and the next claim replaces them.
"""

from __future__ import annotations

import time

from distributed_grid.memory.shm.database import Database, remove_database
from distributed_grid.memory.shm.layout import HEADER_SIZE, directory_path
from distributed_grid.names import validate_cluster_id
from distributed_grid.records import NodeStats

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE keys (
    key TEXT PRIMARY KEY,
    block_id TEXT NOT NULL,
    version INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX keys_by_block ON keys(block_id);
CREATE TABLE nodes (
    name TEXT PRIMARY KEY,
    is_head INTEGER NOT NULL,
    shm_total INTEGER NOT NULL,
    shm_free INTEGER NOT NULL,
    blocks INTEGER NOT NULL,
    block_bytes INTEGER NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID
"""

Holder = tuple[str, int]  # (block id, version)


class KeyDirectory:
    """The key directory, opened by a process on the head's host.

    Raises:
        VersionMismatch: the file holds a directory of another schema version.
    """

    def __init__(self, cluster_id: str, path: str | None = None) -> None:
        self.cluster_id = validate_cluster_id(cluster_id)
        self.path = path or directory_path(cluster_id)
        self._db = Database(self.path, _SCHEMA, SCHEMA_VERSION, "the key directory")

    # -- keys ----------------------------------------------------------------------------------

    def lookup(self, key: str) -> Holder | None:
        """The block the directory names for ``key``, and the entry's version."""
        rows = self._db.rows("SELECT block_id, version FROM keys WHERE key=?", (key,))
        return (rows[0][0], int(rows[0][1])) if rows else None

    def claim(self, key: str, block_id: str) -> Holder | None:
        """Claim ``key`` for ``block_id`` if it is free or already the block's.

        Returns:
            None when the claim holds; else the other block named for the key, and the version
            to pass to :meth:`take_over` if that block turns out not to hold it.
        """
        with self._db.transaction() as db:
            if db.execute("INSERT INTO keys VALUES (?, ?, 1) ON CONFLICT(key) DO NOTHING",
                          (key, block_id)).rowcount:
                return None  # a new key: one statement
            row = db.execute("SELECT block_id, version FROM keys WHERE key=?", (key,)).fetchone()
            if row[0] == block_id:
                db.execute("UPDATE keys SET version=version+1 WHERE key=?", (key,))
                return None
            return row[0], int(row[1])

    def take_over(self, key: str, block_id: str, holder: Holder) -> bool:
        """Give ``key`` to ``block_id`` if the entry is still ``holder``; returns whether it was."""
        with self._db.transaction() as db:
            cursor = db.execute(
                "UPDATE keys SET block_id=?, version=version+1 WHERE key=? AND block_id=? "
                "AND version=?", (block_id, key, holder[0], holder[1]))
            return cursor.rowcount == 1

    def forget_key(self, key: str, holder: Holder) -> bool:
        """Drop ``key``'s entry if it is still ``holder`` (the key was deleted from that
        block); returns whether it was."""
        with self._db.transaction() as db:
            cursor = db.execute("DELETE FROM keys WHERE key=? AND block_id=? AND version=?",
                                (key, holder[0], holder[1]))
            return cursor.rowcount == 1

    def forget_block(self, block_id: str) -> int:
        """Drop every entry naming ``block_id`` (it was deallocated); returns how many."""
        with self._db.transaction() as db:
            return db.execute("DELETE FROM keys WHERE block_id=?", (block_id,)).rowcount

    def forget_blocks(self, block_ids: list[str]) -> int:
        """:meth:`forget_block` for many blocks in one transaction."""
        with self._db.transaction() as db:
            return sum(db.execute("DELETE FROM keys WHERE block_id=?", (b,)).rowcount
                       for b in block_ids)

    # -- nodes ---------------------------------------------------------------------------------

    def report(self, stats: NodeStats, is_head: bool) -> None:
        """Record a node's size as its store (or a process of its host) last saw it."""
        # the room the host can back (its memory bounds it too), unless a cap already cut it
        free = stats.shm_free if stats.capacity is not None else stats.free_for_blocks + HEADER_SIZE
        with self._db.transaction() as db:
            db.execute("INSERT OR REPLACE INTO nodes VALUES (?,?,?,?,?,?,?)",
                       (stats.node, int(is_head), stats.shm_total, free, stats.blocks,
                        stats.block_bytes, time.time()))

    def node_sizes(self) -> list[NodeStats]:
        """Every node's last reported size (``free_for_blocks`` before any cap)."""
        return [NodeStats(node=name, shm_total=total, shm_free=free, capacity=None,
                          free_for_blocks=max(0, free - HEADER_SIZE), blocks=blocks,
                          block_bytes=block_bytes, is_head=bool(is_head))
                for name, is_head, total, free, blocks, block_bytes, _ in self._db.rows(
                    "SELECT * FROM nodes ORDER BY name")]

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def remove(self) -> None:
        """Delete the directory's files (the cluster is going away)."""
        self._db.close()
        remove_database(self.path)
