"""Small values in slabs: many keys in one segment, each put or delete one catalog transaction.

A value of at most ``SMALL_MAX`` bytes that the store places itself (``put``, ``put_object``,
``put_tensors``) does not get a block of its own: it takes a run of
a **slab**, a block the store made for small values (``blocks.slab``), whose free runs are rows
of the catalog (``slab_free``). A run is the value's length rounded up to ``ALIGN`` bytes (any
dtype's alignment holds), taken from the smallest free run that holds it; freeing one merges it
with the free runs it touches, so a slab never holds two free runs side by side.

A put is one write transaction of the node's catalog: take a run, copy the bytes into it through
a mapping this process keeps, record the key's extent as complete, give the key's old run back
(a key put again moves to a new run: its old bytes stay whole until the change commits). A
process killed at any point leaves the catalog as it was before the put, so no run leaks and
nothing needs reaping; bytes it copied into a run it never recorded are free space.

A slab appears as a block of its node (``block_<n>_<node>``, ``slab`` in its facts) with its
keys, in ``list-objects`` like any block; ``find_key`` names it as the key's block and the key's
extent in it. Files (``grid memory store KEY FILE``, ``store_file``, ``store_stream``) keep a
block of their own whatever their size: the guide hands the block id ``store`` prints to
``grid memory retrieve BLOCK``, which must give back the file's bytes alone. Writes into a slab
by block id are refused (its free runs are the store's); it can be deallocated (all its keys
go). A slab left empty by a delete is freed unless it is the node's first.
"""

from __future__ import annotations

import json
from typing import Any

from distributed_grid.errors import BlockNotFound, InvalidArgument, KeyConflict
from distributed_grid.memory.node.core import Place, StoreCore
from distributed_grid.memory.node.schema import BlockRow, ExtentRow
from distributed_grid.memory.shm.mappings import Mappings
from distributed_grid.names import validate_key
from distributed_grid.records import BlockInfo

SMALL_MAX = 64 * 2**10  # values up to this size go to slabs (see benchmarks/bench_small.py)
ALIGN = 64  # runs start and end on this many bytes: every numpy dtype's alignment holds
FIRST_SLAB = 2**20  # a node's first slab; each next one twice the last, up to LARGEST_SLAB
LARGEST_SLAB = 16 * 2**20
SLABS_KEPT = 8  # slab mappings a process keeps for its puts


def run_length(length: int) -> int:
    """The bytes a value of ``length`` bytes takes in a slab."""
    return max(ALIGN, -(-length // ALIGN) * ALIGN)


def slab_size(slabs: int) -> int:
    """The size of a node's next slab when it has ``slabs`` already."""
    return min(LARGEST_SLAB, FIRST_SLAB << min(slabs, 8))


def buffers_of(data: Any) -> list[memoryview]:
    """A bytes-like object, or a list (or tuple) of them one after another, as byte views."""
    parts = data if isinstance(data, (list, tuple)) else [data]
    return [memoryview(p).cast("B") for p in parts]


class StoreSlabs(StoreCore):
    """Small values of a node in its slabs."""

    _slab_maps: Mappings | None = None
    _slab_rows: dict[int, BlockRow] | None = None

    def put_small(self, key: str, data: Any, meta: dict[str, Any] | None = None,
                  capacity: int | None = None) -> BlockInfo:
        """Store ``data`` (a bytes-like object, or a list of them one after another) under
        ``key`` in a slab of the node, replacing the key's value if it has one in a slab; one
        catalog transaction (a new slab is made first when none has room).

        Args:
            meta: what the bytes are (an array's dtype and shape); None for plain bytes.
            capacity: the cap on the node's block bytes, for a new slab.

        Returns:
            The slab's facts, with the key alone in its keys.

        Raises:
            InvalidArgument: more than ``SMALL_MAX`` bytes.
            KeyConflict: the key lives in a block of its own, or one a caller allocated.
            KeyBusy: a live writer is writing the key.
            StoreFull: no slab has room and the node cannot hold a new one.
        """
        validate_key(key)
        parts = buffers_of(data)
        length = sum(p.nbytes for p in parts)
        if length > SMALL_MAX:
            raise InvalidArgument(f"a value in a slab holds at most {SMALL_MAX} bytes, "
                                  f"not {length}")
        need = run_length(length)
        described = None if meta is None else json.dumps(meta)  # outside the transaction
        released: list[ExtentRow] = []
        try:
            while True:
                with self.catalog.transaction():
                    old = self._slab_extents_of(key, released)
                    taken = self._take_run(need)
                    if taken is not None:
                        number, offset, token = taken
                        row = self._slab_row(number, token)
                        self._copy_into(row, offset, parts)
                        for e in old:
                            self._give_back(e)
                        self.catalog.sql.execute(
                            "INSERT INTO extents (block, key, offset, length, complete, meta) "
                            "VALUES (?,?,?,?,1,?)", (number, key, offset, length, described))
                        break
                self.add_slab(capacity)
        finally:
            self._release_guards(released)
        info = self._info(row, [])
        info.keys[key] = [(offset, length)]
        return info

    def _slab_extents_of(self, key: str, released: list[ExtentRow]) -> list[ExtentRow]:
        """The key's extents, in its slab (inside a transaction): [] for a new key. Pending
        writes of writers that are gone are undone first (their slots go in ``released``)."""
        extents, row = self._key_rows_settled(key, released, f"put key {key!r}")
        if not extents:
            return []
        number = extents[0].block
        if row is None or not row.slab:
            raise KeyConflict(
                f"key {key!r} lives in {self.block_id(number)}, a block of its own: it is "
                "replaced there (or deallocate that block first)", key=key,
                block_id=self.block_id(number))
        return [e for e in extents if e.block == number]

    def _slab_row(self, number: int, token: str) -> BlockRow:
        """A ready slab's row, read once per process while its memory keeps ``token``: what
        else a slab's row says never changes while it has free runs (its number is never
        another block's; a slab spilled and restored has new memory, with a new token)."""
        if self._slab_rows is None:
            self._slab_rows = {}
        row = self._slab_rows.get(number)
        if row is None or row.token != token:
            row = self._slab_rows[number] = self._row(number)
        return row

    def _take_run(self, length: int) -> tuple[int, int, str] | None:
        """Take ``length`` bytes from the smallest free run of a ready slab (in memory) that
        holds them; returns ``(block, offset, the slab's token)``, or None when no run is long
        enough."""
        sql = self.catalog.sql
        row = sql.execute("SELECT f.block, f.offset, f.length, b.token FROM slab_free f JOIN "
                          "blocks b ON b.number = f.block WHERE f.length>=? AND b.state='ok' "
                          "ORDER BY f.length, f.block, f.offset LIMIT 1", (length,)).fetchone()
        if row is None:
            return None
        block, offset, found, token = row
        if found == length:
            sql.execute("DELETE FROM slab_free WHERE block=? AND offset=?", (block, offset))
        else:
            sql.execute("UPDATE slab_free SET offset=?, length=? WHERE block=? AND offset=?",
                        (offset + length, found - length, block, offset))
        return block, offset, token

    def _give_run(self, block: int, offset: int, length: int) -> tuple[int, int]:
        """Free ``length`` bytes of a slab from ``offset``, merged with the free runs it
        touches; returns the merged run ``(offset, length)``."""
        sql = self.catalog.sql
        before = sql.execute("SELECT offset, length FROM slab_free WHERE block=? AND offset<? "
                             "ORDER BY offset DESC LIMIT 1", (block, offset)).fetchone()
        if before is not None and before[0] + before[1] == offset:
            sql.execute("DELETE FROM slab_free WHERE block=? AND offset=?", (block, before[0]))
            offset, length = before[0], before[1] + length
        after = sql.execute("SELECT length FROM slab_free WHERE block=? AND offset=?",
                            (block, offset + length)).fetchone()
        if after is not None:
            sql.execute("DELETE FROM slab_free WHERE block=? AND offset=?",
                        (block, offset + length))
            length += after[0]
        sql.execute("INSERT INTO slab_free VALUES (?,?,?)", (block, offset, length))
        return offset, length

    def _give_back(self, extent: ExtentRow) -> tuple[int, int]:
        """Forget a slab key's extent and free its run (inside a transaction)."""
        self.catalog.drop_extents([extent.id])
        return self._give_run(extent.block, extent.offset, run_length(extent.length))

    def free_runs(self, number: int) -> list[tuple[int, int]]:
        """A slab's free runs ``(offset, length)``, by offset."""
        with self.catalog.snapshot() as sql:  # the connection's lock, as every query takes
            return sql.execute("SELECT offset, length FROM slab_free WHERE block=? "
                               "ORDER BY offset", (number,)).fetchall()

    def release_runs(self, row: BlockRow, extents: list[ExtentRow]) -> bool:
        """Free the runs of a slab key's removed extents (inside the transaction that removed
        them); returns whether the slab is then empty and goes too (not the node's first)."""
        merged = (0, 0)
        for e in extents:
            merged = self._give_run(row.number, e.offset, run_length(e.length))
        if merged != (0, row.size):
            return False
        first = self.catalog.sql.execute("SELECT min(number) FROM blocks WHERE slab=1").fetchone()
        if first[0] == row.number:
            return False
        self.catalog.delete_block(row)
        return True

    def _copy_into(self, row: BlockRow, offset: int, parts: list[memoryview]) -> None:
        """Copy ``parts`` one after another into the slab of ``row`` from ``offset``."""
        if self._slab_maps is None:
            self._slab_maps = Mappings(SLABS_KEPT, check_each_call=False)
        block_id = self.block_id(row.number)
        dest = self._slab_maps.view(Place(block_id, self.node, row.segment, row.token, row.size))
        if dest is None:
            raise BlockNotFound(f"the shared memory of slab {block_id} is gone",
                                block_id=block_id, node=self.node)
        with dest:
            at = offset
            for part in parts:
                dest[at : at + part.nbytes] = part
                at += part.nbytes

    def add_slab(self, capacity: int | None = None) -> BlockInfo:
        """Make a new slab (the next size: ``slab_size``) with all of it free.

        Raises:
            StoreFull: the node cannot hold it.
        """
        with self.catalog.snapshot():
            slabs = int(self.catalog.sql.execute(
                "SELECT count(*) FROM blocks WHERE slab=1").fetchone()[0])
        return self._make_block(slab_size(slabs), capacity=capacity, slab=True)

    def _make_block(self, size: int, lease: str | None = None, capacity: int | None = None,
                    holder: str | None = None, for_key: str | None = None,
                    slab: bool = False) -> BlockInfo:
        raise NotImplementedError  # the block store's (memory/node/store.py)

    def _drop_freed_mappings(self) -> None:
        if self._slab_maps is not None:
            self._slab_maps.drop_stale()
        super()._drop_freed_mappings()

    def close(self) -> None:
        if self._slab_maps is not None:
            self._slab_maps.close()
        super().close()
