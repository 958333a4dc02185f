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
from typing import NamedTuple

from distributed_grid.memory.shm.database import Database, remove_database
from distributed_grid.memory.shm.layout import HEADER_SIZE, directory_path
from distributed_grid.names import validate_cluster_id
from distributed_grid.records import NodeStats

SCHEMA_VERSION = 2

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
    updated REAL NOT NULL,
    node_id TEXT
) WITHOUT ROWID;
CREATE TABLE replicated (
    block_id TEXT PRIMARY KEY,
    wanted INTEGER NOT NULL,
    size INTEGER NOT NULL,
    epoch INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE TABLE copies (
    block_id TEXT NOT NULL REFERENCES replicated(block_id) ON DELETE CASCADE,
    node TEXT NOT NULL,
    number INTEGER NOT NULL,
    rank INTEGER NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('live', 'making')),
    node_id TEXT,
    PRIMARY KEY (block_id, node)
) WITHOUT ROWID;
CREATE INDEX copies_on_node ON copies(node)
"""

Holder = tuple[str, int]  # (block id, version)
Copy = tuple[str, int]  # (node, block number there)


class Replicas(NamedTuple):
    """A replicated block as the directory knows it: its id, how many copies it should have,
    its size, its live copies in the order reads prefer them, a copy being made (by a
    repair: it takes the block's writes but serves no read until it is complete), and its
    epoch (how many copies were added since it was made: a writer that knows an older set is
    refused by the copies, which know the newest)."""

    block_id: str
    wanted: int
    size: int
    copies: list[Copy]
    making: Copy | None = None
    epoch: int = 0

    @property
    def written(self) -> list[Copy]:
        """The copies a write goes to: the live ones, and one being made."""
        return self.copies + ([self.making] if self.making is not None else [])

    @property
    def state(self) -> str:
        """``ok``, ``degraded`` (fewer copies than wanted) or ``repairing`` (a copy is being
        made)."""
        if self.making is not None:
            return "repairing"
        return "ok" if len(self.copies) >= self.wanted else "degraded"


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

    # -- replicated blocks ---------------------------------------------------------------------

    def add_replicated(self, block_id: str, wanted: int, size: int, copies: list[Copy],
                       node_ids: list[str | None]) -> None:
        """Record a replicated block and its copies (the first is the one reads prefer), each
        with the Ray node id of its node's life (a copy is valid only in that life)."""
        with self._db.transaction() as db:
            db.execute("INSERT INTO replicated VALUES (?, ?, ?, 0)", (block_id, wanted, size))
            db.executemany("INSERT INTO copies VALUES (?, ?, ?, ?, 'live', ?)",
                           [(block_id, node, number, rank, node_id) for rank, ((node, number),
                            node_id) in enumerate(zip(copies, node_ids, strict=True))])

    def replicas(self, block_id: str) -> Replicas | None:
        """The replicated block ``block_id``, or None (a block of one copy, or none)."""
        with self._db.snapshot() as db:
            head = db.execute("SELECT wanted, size, epoch FROM replicated WHERE block_id=?",
                              (block_id,)).fetchone()
            if head is None:
                return None
            rows = db.execute("SELECT node, number, state FROM copies WHERE block_id=? "
                              "ORDER BY rank", (block_id,)).fetchall()
        return _replicas(block_id, *head, rows)

    def all_replicated(self) -> list[Replicas]:
        """Every replicated block (for listings and repairs)."""
        with self._db.snapshot() as db:
            heads = db.execute("SELECT block_id, wanted, size, epoch FROM replicated"
                               ).fetchall()
            rows = db.execute("SELECT block_id, node, number, state FROM copies "
                              "ORDER BY block_id, rank").fetchall()
        by_block: dict[str, list[tuple]] = {}
        for block_id, *copy in rows:
            by_block.setdefault(block_id, []).append(copy)
        return [_replicas(b, wanted, size, epoch, by_block.get(b, []))
                for b, wanted, size, epoch in heads]

    def copies_on(self, node: str) -> list[tuple[str, int]]:
        """``(block id, number)`` of every copy the directory lists on ``node``."""
        return [(b, int(n)) for b, n in self._db.rows(
            "SELECT block_id, number FROM copies WHERE node=?", (node,))]

    def drop_copies_of_lives(self, alive: set[str]) -> list[tuple[str, str]]:
        """Drop every copy whose node's life (its Ray node id) is not in ``alive``: its node
        died, or came back as another life whose memory is not the copy's. Returns the
        ``(block id, node)`` of each copy dropped."""
        with self._db.transaction() as db:
            gone = [(b, n, i) for b, n, i in db.execute(
                "SELECT block_id, node, node_id FROM copies WHERE node_id IS NOT NULL")
                if i not in alive]
            db.executemany("DELETE FROM copies WHERE block_id=? AND node=? AND node_id=?", gone)
        return [(b, n) for b, n, _ in gone]

    def begin_copy(self, block_id: str, node: str, number: int,
                   node_id: str | None) -> int | None:
        """Add a copy being made (block ``number`` of ``node``) and raise the block's epoch;
        returns the new epoch (None when the block is gone, or has a copy being made, or one
        on that node)."""
        with self._db.transaction() as db:
            if db.execute("SELECT 1 FROM copies WHERE block_id=? AND (state='making' OR node=?)",
                          (block_id, node)).fetchone() is not None:
                return None
            if db.execute("UPDATE replicated SET epoch=epoch+1 WHERE block_id=?",
                          (block_id,)).rowcount != 1:
                return None
            rank = db.execute("SELECT coalesce(max(rank), -1) + 1 FROM copies WHERE block_id=?",
                              (block_id,)).fetchone()[0]
            db.execute("INSERT INTO copies VALUES (?, ?, ?, ?, 'making', ?)",
                       (block_id, node, number, rank, node_id))
            return int(db.execute("SELECT epoch FROM replicated WHERE block_id=?",
                                  (block_id,)).fetchone()[0])

    def end_copy(self, block_id: str, node: str) -> bool:
        """A copy being made is complete: reads may take it; returns whether it still was
        the block's (a write that failed on it dropped it meanwhile)."""
        with self._db.transaction() as db:
            return db.execute("UPDATE copies SET state='live' WHERE block_id=? AND node=? AND "
                              "state='making'", (block_id, node)).rowcount == 1

    def drop_copy(self, block_id: str, node: str, number: int) -> bool:
        """Take the copy ``number`` of ``node`` out of the block (it missed a write, or its node
        is gone); returns whether it was there (a copy made on that node since is another)."""
        with self._db.transaction() as db:
            return db.execute("DELETE FROM copies WHERE block_id=? AND node=? AND number=?",
                              (block_id, node, number)).rowcount == 1

    def forget_replicated(self, block_id: str) -> bool:
        """Forget a replicated block (every copy was freed); returns whether it was known."""
        with self._db.transaction() as db:
            db.execute("DELETE FROM copies WHERE block_id=?", (block_id,))
            return db.execute("DELETE FROM replicated WHERE block_id=?",
                              (block_id,)).rowcount == 1

    # -- nodes ---------------------------------------------------------------------------------

    def report(self, stats: NodeStats, is_head: bool) -> None:
        """Record a node's size as its store (or a process of its host) last saw it."""
        # the room the host can back (its memory bounds it too), unless a cap already cut it
        free = stats.shm_free if stats.capacity is not None else stats.free_for_blocks + HEADER_SIZE
        free += stats.spill_room  # a node that spills makes room for a new block first
        with self._db.transaction() as db:
            db.execute("INSERT INTO nodes VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(name) DO "
                       "UPDATE SET is_head=excluded.is_head, shm_total=excluded.shm_total, "
                       "shm_free=excluded.shm_free, blocks=excluded.blocks, "
                       "block_bytes=excluded.block_bytes, updated=excluded.updated, "
                       "node_id=coalesce(excluded.node_id, node_id)",
                       (stats.node, int(is_head), stats.shm_total, free, stats.blocks,
                        stats.block_bytes, time.time(), stats.node_id or None))

    def node_sizes(self) -> list[NodeStats]:
        """Every node's last reported size (``free_for_blocks`` before any cap)."""
        return [NodeStats(node=name, shm_total=total, shm_free=free, capacity=None,
                          free_for_blocks=max(0, free - HEADER_SIZE), blocks=blocks,
                          block_bytes=block_bytes, is_head=bool(is_head), node_id=node_id or "")
                for name, is_head, total, free, blocks, block_bytes, node_id in self._db.rows(
                    "SELECT name, is_head, shm_total, shm_free, blocks, block_bytes, node_id "
                    "FROM nodes ORDER BY name")]

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def remove(self) -> None:
        """Delete the directory's files (the cluster is going away)."""
        self._db.close()
        remove_database(self.path)


def _replicas(block_id: str, wanted: int, size: int, epoch: int,
              rows: list[tuple]) -> Replicas:
    """A :class:`Replicas` from its row and its copies' ``(node, number, state)`` rows."""
    making = next(((n, int(k)) for n, k, state in rows if state == "making"), None)
    return Replicas(block_id, int(wanted), int(size),
                    [(n, int(k)) for n, k, state in rows if state == "live"], making,
                    int(epoch))
