"""A node's recovery: undoing what dead processes left, and agreeing with the host's segments.

Every pending write and every block allocated for one write has an owner, the writer: a process
of this host (``host/pid/start``) or a client on another host, whose life the node's store actor
judges. When the owner is gone its writes are undone (:meth:`StoreRecovery.reap_writes`): the
pending extent is dropped, so are the complete extents its range overlapped (their bytes were
being overwritten: they are neither old nor new), its write-guard slot is released, and a block
allocated for it is freed. A creator killed before it finished leaves a ``creating`` row that
:meth:`StoreRecovery.reap` removes (with the segment) once that process is gone; when the node's
store starts, :meth:`StoreRecovery.reconcile` makes the catalog and the host's segments agree,
and :meth:`StoreRecovery.reconcile_spills` the catalog and the node's spill folder.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from distributed_grid.memory.io import spill_files
from distributed_grid.memory.node.core import StoreCore
from distributed_grid.memory.node.schema import ExtentRow
from distributed_grid.memory.shm import layout
from distributed_grid.memory.shm import segment as seg
from distributed_grid.runtime import identity_alive


class CopyRows(NamedTuple):
    """A copy's keys as another copy takes them: ``(key, offset, length)`` of each complete
    extent, each key's metadata (JSON text), and the high-water mark."""

    extents: list[tuple[str, int, int]]
    metas: dict[str, str]
    high_water: int


class StoreRecovery(StoreCore):
    """What a node's upkeep and its store's start undo and reconcile."""

    def reap_writes(self) -> list[str]:
        """Undo the writes whose writer is gone and free the blocks allocated for them;
        returns what was undone (cheap: pending extents and held blocks are indexed)."""
        undone: list[str] = []
        for p in self.catalog.pending_extents():
            if not self.write_gone(p):
                continue
            released: list[ExtentRow] = []
            with self.catalog.transaction():
                again = self.catalog.pending_extent(p.block, p.key, p.offset)
                if again is None or again.id != p.id:
                    continue
                released = self._forget_write(again)
            self._release_guards(released)
            undone.append(f"write of key {p.key!r} at {p.offset} in {self.block_id(p.block)}")
        for row in self.catalog.held_blocks():
            if self.writer_alive(row.holder) is not False:
                continue
            with self.catalog.transaction():
                again = self.catalog.block(row.number)
                if again is None or again.holder != row.holder:
                    continue
                self.catalog.delete_block(again)
            seg.unlink_segment(row.segment)
            undone.append(f"block {self.block_id(row.number)} allocated for it")
        return undone

    # -- mending a copy of a replicated block -------------------------------------------------

    def copy_rows(self, number: int) -> CopyRows:
        """What a new copy of block ``number`` (a copy of a replicated block) needs besides
        its bytes: its complete keys with their extents and metadata, and its high-water mark.

        Raises:
            BlockNotFound: no such block.
        """
        with self.catalog.snapshot():
            row = self.catalog.block(number)
            row = self._usable(number, row, settled=row is None or row.state not in (
                "spilled", "restoring"))  # a spilled copy's keys are in its catalog all the same
            extents = [(e.key, e.offset, e.length)
                       for e in self.catalog.extents(number) if e.complete]
            return CopyRows(extents, self.catalog.key_metas(number), row.high_water)

    def adopt_rows(self, number: int, replica_of: str, rows: CopyRows) -> None:
        """Make the keys of copy ``number`` of ``replica_of`` those of ``rows`` (another
        copy's, read while its bytes were copied here); pending writes stay.

        Raises:
            BlockNotFound: no such block, or not a copy of ``replica_of``.
        """
        with self.catalog.transaction():
            self.check_copy(self._row(number), replica_of, "mend")
            self.catalog.replace_complete(number, rows.extents, rows.metas, rows.high_water)

    def reap(self) -> list[str]:
        """Remove blocks whose creator died before finishing; returns their ids.

        Cheap enough to run every few seconds: it reads only unsettled rows (an index).
        """
        reaped = []
        for row in self.catalog.unsettled_blocks():
            if row.state == "creating" and row.creator and identity_alive(row.creator) is False:
                with self.catalog.transaction():
                    again = self.catalog.block(row.number)
                    if again is None or again.state != "creating":
                        continue
                    self.catalog.delete_block(again)
                seg.unlink_segment(row.segment)
                reaped.append(self.block_id(row.number))
        return reaped

    def reconcile(self) -> dict[str, list[str]]:
        """Make the catalog and the host's segments agree (when the node's store starts).

        Blocks whose segment vanished become ``missing``; segments of this node that no block
        owns (a crash between a deallocation's commit and its unlink) are unlinked; creations
        whose creator died are undone. Runs alongside other processes' changes: the order of
        its reads (rows, then segments, then rows again) keeps it from touching a block that
        is being made.
        """
        reaped = self.reap()
        settled = {r.number: r for r in self.catalog.blocks(("ok",))}
        on_host = {n for n in seg.list_segment_names(self.prefix) if self._segment_re.fullmatch(n)}
        missing = []
        with self.catalog.transaction():
            for row in settled.values():
                if row.segment not in on_host:
                    now = self.catalog.block(row.number)
                    if now is not None and now.state == "ok":
                        self.catalog.set_state(now, "missing")
                        missing.append(self.block_id(row.number))
            owned = {r.segment for r in self.catalog.blocks(
                ("creating", "ok", "missing", "spilling", "restoring"))}
        orphans = sorted(on_host - owned)
        for name in orphans:
            seg.unlink_segment(name)
        return {"reaped": reaped, "missing": missing, "orphans": orphans}

    def reconcile_spills(self) -> dict[str, list[str]]:
        """Make the spill folder and the catalog agree (when the node's store starts): files
        the catalog does not record go; spilled blocks whose file is gone or of the wrong size
        become ``missing`` (their files go). Moves whose mover died are undone first (by the
        caller: :meth:`~distributed_grid.memory.node.room.spills.StoreSpills.reap_moves`)."""
        folder = self.catalog.meta("spill_dir")
        if not folder:
            return {"removed": [], "lost": []}
        files = spill_files.node_files(folder, self.cluster_id, self.node)
        recorded = {r.spill_file: r for r in self.catalog.blocks(
            ("spilling", "spilled", "restoring")) if r.spill_file}
        removed = []
        for name in files:
            whole = name.removesuffix(spill_files.TEMP_SUFFIX)
            row = recorded.get(whole)
            if row is not None and (name == whole or row.state == "spilling"):
                continue  # the file of a spilled block, or one being written
            try:
                os.unlink(os.path.join(folder, name))
            except FileNotFoundError:
                continue
            removed.append(name)
        lost = []
        for name, row in recorded.items():
            if row.state == "spilled" and spill_files.file_size(folder, name) \
                    != row.size and self._mark_lost(row.number):
                lost.append(self.block_id(row.number))
        return {"removed": removed, "lost": lost}

    def destroy(self) -> int:
        """Free every block (spilled ones too) and spare, and remove the catalog (the cluster
        is going away).

        Costs one unlink per block and no transaction per block, so 10,000 blocks take a
        fraction of a second. Returns how many blocks there were.
        """
        count = self.catalog.counts()[0] + self.catalog.spill_counts()[0]
        folder = self.catalog.meta("spill_dir")
        if folder:  # its spill files go with it
            for name in spill_files.node_files(folder, self.cluster_id, self.node):
                spill_files.remove_file(folder, name)
        self.catalog.remove()
        spares = layout.spare_pattern(self.cluster_id, self.node)  # its prefault goes too
        for name in seg.list_segment_names(self.prefix):
            if self._segment_re.fullmatch(name) or spares.fullmatch(name):
                seg.unlink_segment(name)
        return count


def remove_cluster_files(cluster_id: str) -> list[str]:
    """Unlink this host's segments and databases of a cluster that is being stopped.

    For nodes whose store is gone (a dead raylet), nobody else would free them. Returns the
    segment names that were left.
    """
    segments, *databases = layout.cluster_prefixes(cluster_id)
    names = seg.list_segment_names(segments)
    for name in names:
        seg.unlink_segment(name)
    for prefix in databases:  # catalogs and the key directory, with their WAL files
        for entry in seg.list_segment_names(prefix):
            try:
                os.unlink(os.path.join(layout.SHM_DIR, entry.lstrip("/")))
            except FileNotFoundError:
                pass
    return names
