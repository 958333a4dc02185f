"""A node's store served to the cluster: what one store actor per node does, as a plain class.

The actor is the node's store on its own host (:class:`~distributed_grid.memory.node.local_node.
LocalNode`: every method of it is a method of the actor) plus what only a process of the node's
host can do for other hosts: copying chunks that travel as ObjectRefs into and out of the
segments, and, on the head, serving the cluster's key directory. It keeps no state that the
node's catalog does not have, so a restarted actor (after SIGKILL, say) simply opens the catalog
again.

When it starts it reconciles the catalog with the host's segments, removes the runtime
directory's temporary files whose writer died, and writes the node's record there, so processes
of the host can reach the node without Ray; a thread then runs the node's upkeep
(:mod:`distributed_grid.memory.node.service.upkeep`). Ray is applied at the edge, in
:mod:`distributed_grid.memory.node.service.serving`; what the actor asks of the cluster goes
through the :class:`~distributed_grid.memory.node.service.upkeep.ClusterLinks` it is given, so
this class runs (and is tested) without Ray.

A client on another host writes through this actor: the actor holds the write's guard slot,
and the writer is named ``ray:<job>:<host/pid/start>``. Such a writer is gone when its Ray job
has ended, or when none of its calls arrived for ``ABANDON_SECONDS``; its writes are then undone
and a chunk that arrives later is refused.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

import numpy as np

from distributed_grid.errors import BlockNotFound, InvalidArgument, KeyNotFound
from distributed_grid.memory.io import sinks, sources
from distributed_grid.memory.node.core import guard_of
from distributed_grid.memory.node.local_node import HeldSlot, LocalNode
from distributed_grid.memory.node.room.refill import Refill
from distributed_grid.memory.node.room.spares import prefault_from_env
from distributed_grid.memory.node.room.spill_policy import settings_from_env
from distributed_grid.memory.node.service.directory import Copy, KeyDirectory, Replicas
from distributed_grid.memory.node.service.repairs import Repairs, mend
from distributed_grid.memory.node.service.upkeep import (
    TICK_SECONDS,
    ClusterLinks,
    RemoteWriters,
    Upkeep,
    read_snapshot,
)
from distributed_grid.memory.shm.layout import shm_identity
from distributed_grid.memory.shm.mappings import KEPT
from distributed_grid.names import check_range
from distributed_grid.records import BlockInfo, NodeStats
from distributed_grid.runtime import (
    NodeRecord,
    process_start,
    remove_stale_temp_files,
    write_node_record,
)
from distributed_grid.wire import PREFAULT_ENV, REMOTE_WRITER, SPILL_ENV, STORE_PROTOCOL

log = logging.getLogger(__name__)


class StoreActor(LocalNode):
    """A node's :class:`~distributed_grid.memory.node.store.BlockStore`, served to the cluster.

    Args:
        node: the node's name.
        cluster_id: the cluster's identity.
        head: the name of the head node, whose store keeps the key directory.
        links: the cluster, as this store reaches it.
        tick_seconds: how often the upkeep runs on a thread of its own; None runs none (a
            caller runs :meth:`upkeep` itself).
    """

    kept_mappings = KEPT  # one set of kept mappings serves chunks for other hosts and copies

    def __init__(self, node: str, cluster_id: str, head: str, links: ClusterLinks,
                 tick_seconds: float | None = TICK_SECONDS) -> None:
        super().__init__(node, cluster_id)
        self.head = head
        self.is_head = node == head
        self.links = links
        self.directory = KeyDirectory(cluster_id) if self.is_head else None
        self.writers = RemoteWriters()
        # a node whose catalog went with its memory (its machine rebooted) goes on numbering
        # where its last life stopped, as far as it published: a stale id names no new block
        self.catalog.numbers_from(read_snapshot(links.published(node))[1])
        self.reconcile()
        self._spill_from_env()
        self._refill = self._prefault_from_env(start=tick_seconds is not None)
        remove_stale_temp_files()  # records a crashed writer never renamed
        node_id, gcs_address, ip = links.whereabouts()
        raylet = os.getppid()  # Ray starts its workers from the node's raylet
        write_node_record(NodeRecord(
            cluster_id=cluster_id, node=node, node_id=node_id, address=gcs_address,
            catalog=self.catalog.path, is_head=self.is_head, hostname=socket.gethostname(),
            ip=ip, raylet_pid=raylet, raylet_start=process_start(raylet),
            protocol=STORE_PROTOCOL,
            directory=self.directory.path if self.directory is not None else None,
            shm=shm_identity(),
        ))
        self._upkeep = Upkeep(self, links, self.writers, head, self.directory)
        self.repairs = Repairs(self.directory, links) if self.directory is not None else None
        if tick_seconds is not None:
            threading.Thread(target=self._upkeep_forever, args=(tick_seconds,), name="upkeep",
                             daemon=True).start()
            if self.repairs is not None:
                threading.Thread(target=self.repairs.forever, args=(tick_seconds,),
                                 name="repairs", daemon=True).start()

    def _spill_from_env(self) -> None:
        """Take the spill settings ``grid cluster start`` gave the node (``SPILL_ENV``), then
        make the spill folder and the catalog agree (a store restarted after a crash)."""
        try:
            settings = settings_from_env(self.node, os.environ.get(SPILL_ENV))
            if settings is not None:
                self.configure_spill(settings.folder, settings.quota, settings.high,
                                     settings.low)
        except InvalidArgument as exc:
            log.error("node %s: no spill folder: %s", self.node, exc)
        self.reap_moves()
        done = self.reconcile_spills()
        if done["removed"] or done["lost"]:
            log.warning("node %s: spill folder reconciled: %s", self.node, done)

    def _prefault_from_env(self, start: bool) -> Refill | None:
        """Take the prefault ``grid cluster start`` gave the node (``PREFAULT_ENV``), make its
        spares and its catalog agree, and (``start``) refill them on a thread of their own."""
        try:
            self.configure_prefault(prefault_from_env(self.node, os.environ.get(PREFAULT_ENV)))
        except InvalidArgument as exc:
            log.error("node %s: no prefault: %s", self.node, exc)
        done = self.reconcile_spares()
        if done["dropped"] or done["removed"]:
            log.warning("node %s: spares reconciled: %s", self.node, done)
        if not start or not self.prefault_target(fresh=True):
            return None
        refill = Refill(self)
        refill.start()
        return refill

    def _stop_refill(self) -> None:
        if self._refill is not None:
            self._refill.stop()

    def ping(self) -> dict[str, Any]:
        """Who serves this store: its process, Ray node, protocol and installation."""
        return {"node": self.node, "pid": os.getpid(), "node_id": self.links.whereabouts()[0],
                "protocol": STORE_PROTOCOL,
                "package": os.path.dirname(os.path.dirname(os.path.dirname(__file__)))}

    # -- writers on other hosts -----------------------------------------------------------------

    def allocate(self, size: int, lease: str | None = None, capacity: int | None = None,
                 holder: str | None = None, for_key: str | None = None,
                 replica_of: str | None = None) -> BlockInfo:
        self.writers.saw(holder)
        return super().allocate(size, lease, capacity, holder, for_key, replica_of)

    def prepare_write(self, number: int, offset: int, length: int, key: str | None = None,
                      force: bool = False, writer: str | None = None,
                      replica_of: str | None = None, epoch: int = 0,
                      slot: int | None = None, guard: int | None = None) -> BlockInfo:
        self.writers.saw(writer)
        return super().prepare_write(number, offset, length, key, force, writer, replica_of,
                                     epoch, slot, guard)

    def writer_alive(self, writer: str | None) -> bool | None:
        """A remote writer is alive while its Ray job runs and it called within
        ``ABANDON_SECONDS``; others as :meth:`BlockStore.writer_alive` says."""
        if writer is None or not writer.startswith(REMOTE_WRITER):
            return super().writer_alive(writer)
        return self.writers.alive(writer)

    # -- bytes (the remote path) ----------------------------------------------------------------

    def _write_of(self, number: int, offset: int, length: int) -> HeldSlot:
        """The write this actor holds that covers the chunk (refused once it was undone)."""
        for (held_number, _, _), held in self.held_writes():
            start, end = held.range
            if held_number == number and start <= offset and offset + length <= end:
                self.writers.saw(held.writer)
                return held
        raise KeyNotFound(
            f"no write of bytes {offset}..{offset + length} of {self.block_id(number)} is "
            "in progress (it finished, or was undone because its writer fell silent)",
            block_id=self.block_id(number), offset=offset)

    def write_chunk(self, number: int, offset: int, data: np.ndarray) -> int:
        """Copy a chunk that travelled as an ObjectRef into the block, inside a write this
        actor prepared; returns its size."""
        block = self.bare_info(number)
        view = memoryview(data).cast("B")
        check_range(block.block_id, block.size, offset, view.nbytes, "write")
        self._write_of(number, offset, view.nbytes)
        self.fill(block, offset, view.nbytes, sources.BufferSource(view))
        return view.nbytes

    def read_begin(self, number: int, offset: int, length: int) -> int:
        """Wait until no write holds ``offset..offset+length`` of the block; returns the guard's
        sequence, for :meth:`read_end` after the chunks were read."""
        block = self.bare_info(number)
        check_range(block.block_id, block.size, offset, length, "read")
        with guard_of(block) as guard:
            return self.wait_idle(block, guard, offset, offset + max(length, 1))

    def read_whole(self, number: int, offset: int, length: int) -> np.ndarray:
        """Bytes of the block copied while no write touched them (a read of one chunk): one
        round trip, and no write can move under the copy, which takes microseconds here."""
        block = self.bare_info(number)
        check_range(block.block_id, block.size, offset, length, "read")
        out = np.empty(length, dtype=np.uint8)
        self.drain(block, offset, length, sinks.BufferSink(memoryview(out)))
        return out

    def read_end(self, number: int, seq: int) -> bool:
        """Whether no write started or ended in the block since :meth:`read_begin`."""
        with guard_of(self.bare_info(number)) as guard:
            return guard.end_read(seq)

    def read_chunk(self, number: int, offset: int, length: int) -> np.ndarray:
        """Bytes of the block as a uint8 array over the mapping; Ray copies it once, into the
        object store, when it returns."""
        block = self.bare_info(number)
        check_range(block.block_id, block.size, offset, length, "read")
        with self._maps.mapped(block) as segment:
            if segment is None:
                raise BlockNotFound(f"the shared memory of {block.block_id} is gone from its "
                                    "host", block_id=block.block_id, node=self.node)
            return np.frombuffer(segment.data()[offset : offset + length], dtype=np.uint8)

    def mend(self, number: int, replica_of: str, source: str, source_number: int,
             rate: float) -> int:
        """Make a new copy of a replicated block hold what a live copy holds (a repair asks;
        see :func:`~distributed_grid.memory.node.service.repairs.mend`); returns the bytes
        copied."""
        return mend(self, self.links, number, replica_of, source, source_number, rate)

    def close(self) -> None:
        """Close the kept mappings, the catalog and (on the head) the key directory."""
        self._stop_refill()
        if self.directory is not None:
            self.directory.close()
        super().close()

    def destroy(self) -> int:
        """Free every block and spare, remove the catalog (and on the head the key
        directory)."""
        self._stop_refill()
        self._maps.close()
        self._views.close()
        count = super().destroy()
        if self.directory is not None:
            self.directory.remove()
        return count

    # -- the key directory (the head's store) --------------------------------------------------

    def _dir(self) -> KeyDirectory:
        if self.directory is None:
            raise RuntimeError(f"node {self.node} is not the head: it keeps no key directory")
        return self.directory

    def dir_lookup(self, key: str) -> tuple[str, int] | None:
        return self._dir().lookup(key)

    def dir_claim(self, key: str, block_id: str) -> tuple[str, int] | None:
        return self._dir().claim(key, block_id)

    def dir_take_over(self, key: str, block_id: str, holder: tuple[str, int]) -> bool:
        return self._dir().take_over(key, block_id, holder)

    def dir_forget_key(self, key: str, holder: tuple[str, int]) -> bool:
        return self._dir().forget_key(key, holder)

    def dir_forget_blocks(self, block_ids: list[str]) -> int:
        return self._dir().forget_blocks(block_ids)

    def dir_add_replicated(self, block_id: str, wanted: int, size: int, copies: list[Copy],
                           node_ids: list[str | None]) -> None:
        self._dir().add_replicated(block_id, wanted, size, copies, node_ids)

    def dir_replicas(self, block_id: str) -> Replicas | None:
        return self._dir().replicas(block_id)

    def dir_all_replicated(self) -> list[Replicas]:
        return self._dir().all_replicated()

    def dir_drop_copy(self, block_id: str, node: str, number: int) -> bool:
        return self._dir().drop_copy(block_id, node, number)

    def dir_forget_replicated(self, block_id: str) -> bool:
        return self._dir().forget_replicated(block_id)

    def dir_copies_on(self, node: str) -> list[tuple[str, int]]:
        return self._dir().copies_on(node)

    def dir_report(self, stats: NodeStats, is_head: bool) -> None:
        self._dir().report(stats, is_head)

    def dir_node_sizes(self) -> list[NodeStats]:
        return self._dir().node_sizes()

    # -- upkeep ---------------------------------------------------------------------------------

    def upkeep(self) -> dict[str, Any]:
        """One round of the node's upkeep
        (:meth:`~distributed_grid.memory.node.service.upkeep.Upkeep.run`); returns what it did."""
        return self._upkeep.run()

    def _upkeep_forever(self, tick_seconds: float) -> None:
        while True:
            time.sleep(tick_seconds)
            try:
                self.upkeep()
            except Exception:  # keep ticking: the next round may succeed
                log.exception("store upkeep of node %s failed", self.node)
