"""A node's store served to the cluster: one Ray actor per node, detached, named, pinned,
restartable.

The actor is the node's store on its own host
(:class:`~distributed_grid.memory.node.local_node.LocalNode`:
every method of it is a method of the actor) plus what only a process of the node's host can do
for other hosts: copying chunks that travel as ObjectRefs into and out of the segments, and, on
the head, serving the cluster's key directory. It keeps no state that the node's catalog does
not have, so a restarted actor (after SIGKILL, say) simply opens the catalog again.

When it starts it reconciles the catalog with the host's segments, removes the runtime
directory's temporary files whose writer died, and writes the node's record there, so processes
of the host can reach the node without Ray. A thread then does the node's upkeep every
``TICK_SECONDS``: frees the blocks of leases whose owner is gone, undoes creations and writes
whose owner died, reports the node's size to the key directory and publishes the block list to
the cluster's key-value store (for listing the blocks if the node goes away). Ray is applied
here, at the edge, in :func:`get_store`.

A client on another host writes through this actor: the actor holds the write's guard slot,
and the writer is named ``ray:<job>:<host/pid/start>``. Such a writer is gone when its Ray job
has ended, or when none of its calls arrived for ``ABANDON_SECONDS`` (a client that died while
its job lives on); its writes are then undone and a chunk that arrives later is refused.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distributed_grid import _ray
from distributed_grid.cluster.gc import remove_stale_temp_files
from distributed_grid.errors import BlockNotFound, KeyNotFound
from distributed_grid.memory.io import transfer
from distributed_grid.memory.node.directory import KeyDirectory
from distributed_grid.memory.node.local_node import HeldSlot, LocalNode
from distributed_grid.memory.node.store import REMOTE_WRITER, STORE_PROTOCOL
from distributed_grid.memory.records import BlockInfo, NodeStats
from distributed_grid.memory.shm.mappings import KEPT
from distributed_grid.memory.shm.seqguard import Guard
from distributed_grid.names import check_range
from distributed_grid.runtime import NodeRecord, process_start, shm_identity, write_node_record

NAMESPACE = "distributed_grid"
ACTOR_PREFIX = "store."
LEASE_PREFIX = "lease."
TICK_SECONDS = 2.0
ABANDON_SECONDS = 60.0  # a remote writer silent this long is gone (a chunk takes seconds)
CONCURRENCY = 4  # calls served at once: chunk copies overlap; the catalog serializes changes

# How long a caller waits for a store's answer (seconds). A store that is alive but does not
# answer in time (stopped, wedged, overloaded) counts as unreachable for that call: the caller
# gets an error instead of waiting for ever.
METADATA_TIMEOUT = 10.0  # one metadata call: a catalog transaction, answered in milliseconds
START_TIMEOUT = 120.0  # a store or lease actor being started: a new worker process on its node
BULK_TIMEOUT = 60.0  # one chunk of bytes (transfer.CHUNK, 64 MiB), or freeing blocks in bulk
ALLOCATE_RATE = 256 * 2**20  # bytes/s an allocation is allowed on top (reserving the pages)

log = logging.getLogger(__name__)


class _NotYet(Exception):
    """The head's store is not running yet: report the node's size on a later round."""


class StoreActor(LocalNode):
    """A node's :class:`~distributed_grid.memory.node.store.BlockStore`, served to the cluster.

    Args:
        node: the node's name.
        cluster_id: the cluster's identity.
        head: the name of the head node, whose store keeps the key directory.
    """

    kept_mappings = KEPT  # one set of kept mappings serves chunks for other hosts and copies

    def __init__(self, node: str, cluster_id: str, head: str) -> None:
        super().__init__(node, cluster_id)
        self.head = head
        self.is_head = node == head
        self.directory = KeyDirectory(cluster_id) if self.is_head else None
        # a node whose catalog went with its memory (its machine rebooted) goes on numbering
        # where its last life stopped, as far as it published: a stale id names no new block
        self.catalog.numbers_from(published_next_number(node))
        self.reconcile()
        remove_stale_temp_files()  # records a crashed writer never renamed
        context = ray.get_runtime_context()
        raylet = os.getppid()  # Ray starts its workers from the node's raylet
        write_node_record(NodeRecord(
            cluster_id=cluster_id, node=node, node_id=context.get_node_id(),
            address=context.gcs_address, catalog=self.catalog.path, is_head=self.is_head,
            hostname=socket.gethostname(), ip=ray.util.get_node_ip_address(),
            raylet_pid=raylet, raylet_start=process_start(raylet), protocol=STORE_PROTOCOL,
            directory=self.directory.path if self.directory is not None else None,
            shm=shm_identity(),
        ))
        self._reported: tuple[int, int] | None = None
        self._published: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._seen: dict[str, float] = {}
        self._dead_jobs: set[str] = set()
        threading.Thread(target=self._upkeep_forever, name="upkeep", daemon=True).start()

    def ping(self) -> dict[str, Any]:
        """Who serves this store: its process, Ray node, protocol and installation."""
        return {"node": self.node, "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(), "protocol": STORE_PROTOCOL,
                "package": os.path.dirname(os.path.dirname(__file__))}

    # -- bytes (the remote path) ----------------------------------------------------------------

    @contextmanager
    def _mapped(self, block: BlockInfo) -> Iterator[memoryview]:
        with self._maps.mapped(block) as segment:
            if segment is None:
                raise BlockNotFound(f"the shared memory of {block.block_id} is gone from its "
                                    "host", block_id=block.block_id, node=self.node)
            yield segment.data()

    def allocate(self, size: int, lease: str | None = None, capacity: int | None = None,
                 holder: str | None = None, for_key: str | None = None) -> BlockInfo:
        self._saw(holder)
        return super().allocate(size, lease, capacity, holder, for_key)

    def prepare_write(self, number: int, offset: int, length: int, key: str | None = None,
                      force: bool = False, writer: str | None = None, slot: int | None = None,
                      guard: int | None = None) -> BlockInfo:
        self._saw(writer)
        return super().prepare_write(number, offset, length, key, force, writer, slot, guard)

    def _saw(self, writer: str | None) -> None:
        if writer is not None and writer.startswith(REMOTE_WRITER):
            self._seen[writer] = time.monotonic()

    def _write_of(self, number: int, offset: int, length: int) -> HeldSlot:
        """The write this actor holds that covers the chunk (refused once it was undone)."""
        with self._held_lock:
            for (held_number, _, _), slots in self._held.items():
                for held in slots:
                    start, end = held.range
                    if held_number == number and start <= offset and offset + length <= end:
                        self._saw(held.writer)
                        return held
        raise KeyNotFound(
            f"no write of bytes {offset}..{offset + length} of {self.block_id(number)} is "
            "in progress (it finished, or was undone because its writer fell silent)",
            block_id=self.block_id(number), offset=offset)

    def write_chunk(self, number: int, offset: int, data: np.ndarray) -> int:
        """Copy a chunk that travelled as an ObjectRef into the block, inside a write this
        actor prepared; returns its size."""
        block = self.block_info(number)
        view = memoryview(data).cast("B")
        check_range(block.block_id, block.size, offset, view.nbytes, "write")
        self._write_of(number, offset, view.nbytes)
        self.fill(block, offset, view.nbytes, transfer.BufferSource(view))
        return view.nbytes

    def read_begin(self, number: int, offset: int, length: int) -> int:
        """Wait until no write holds ``offset..offset+length`` of the block; returns the guard's
        sequence, for :meth:`read_end` after the chunks were read."""
        block = self.block_info(number)
        check_range(block.block_id, block.size, offset, length, "read")
        with self._descriptor(block) as fd:
            guard = Guard(fd)
        try:
            return self.wait_idle(block, guard, offset, offset + max(length, 1))
        finally:
            guard.close()

    def read_whole(self, number: int, offset: int, length: int) -> np.ndarray:
        """Bytes of the block copied while no write touched them (a read of one chunk): one
        round trip, and no write can move under the copy, which takes microseconds here."""
        block = self.block_info(number)
        check_range(block.block_id, block.size, offset, length, "read")
        out = np.empty(length, dtype=np.uint8)
        self.drain(block, offset, length, transfer.BufferSink(memoryview(out)))
        return out

    def read_end(self, number: int, seq: int) -> bool:
        """Whether no write started or ended in the block since :meth:`read_begin`."""
        block = self.block_info(number)
        with self._descriptor(block) as fd:
            guard = Guard(fd)
        try:
            return guard.end_read(seq)
        finally:
            guard.close()

    def read_chunk(self, number: int, offset: int, length: int) -> np.ndarray:
        """Bytes of the block as a uint8 array over the mapping; Ray copies it once, into the
        object store, when it returns."""
        block = self.block_info(number)
        check_range(block.block_id, block.size, offset, length, "read")
        with self._mapped(block) as data:
            return np.frombuffer(data[offset : offset + length], dtype=np.uint8)

    def destroy(self) -> int:
        """Free every block, remove the catalog (and on the head the key directory)."""
        self._maps.close()
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

    def dir_report(self, stats: NodeStats, is_head: bool) -> None:
        self._dir().report(stats, is_head)

    def dir_node_sizes(self) -> list[NodeStats]:
        return self._dir().node_sizes()

    # -- upkeep ---------------------------------------------------------------------------------

    def _upkeep_forever(self) -> None:
        while True:
            time.sleep(TICK_SECONDS)
            try:
                self.upkeep()
            except Exception:  # keep ticking: the next round may succeed
                log.exception("store upkeep of node %s failed", self.node)

    def upkeep(self) -> dict[str, Any]:
        """One round of the node's upkeep (see the module's docstring); returns what it did."""
        with self._lock:
            self._dead_jobs = _ray.dead_jobs()
            done: dict[str, Any] = {"leases": self.release_dead_leases(), "reaped": self.reap(),
                                    "abandoned": self.abandon_silent_writes(),
                                    "writes": self.reap_writes()}
            counts = self.catalog.counts()
            if counts != self._reported:
                try:
                    self._report()
                    self._reported = counts
                except _NotYet:
                    pass
            version = self.catalog.change_mark()  # its own changes too: remote clients'
            if version != self._published:
                self._publish()
                self._published = version
            return done

    def _report(self) -> None:
        stats = self.stats()
        if self.directory is not None:
            self.directory.report(stats, True)
        else:
            try:
                head = ray.get_actor(ACTOR_PREFIX + self.head, namespace=NAMESPACE)
            except ValueError:  # the head's store starts when somebody first needs it
                raise _NotYet from None
            ray.get(head.dir_report.remote(stats, False), timeout=METADATA_TIMEOUT)

    def _publish(self) -> None:
        published = {"blocks": [b.to_json() for b in self.list_blocks()],
                     "next_number": self.catalog.next_number()}
        _ray.kv_put(snapshot_key(self.node), json.dumps(published).encode(), NAMESPACE)

    def writer_alive(self, writer: str | None) -> bool | None:
        """A remote writer is alive while its Ray job runs and it called within
        ``ABANDON_SECONDS``; others as :meth:`BlockStore.writer_alive` says."""
        if writer is None or not writer.startswith(REMOTE_WRITER):
            return super().writer_alive(writer)
        job = writer[len(REMOTE_WRITER):].partition(":")[0]
        if job in self._dead_jobs:
            return False
        return time.monotonic() - self._seen.get(writer, self._started) < ABANDON_SECONDS

    def abandon_silent_writes(self) -> list[str]:
        """Undo the writes this actor holds for remote writers that are gone (and forget
        writers silent for long: they count as gone either way)."""
        now = time.monotonic()
        self._seen = {w: t for w, t in self._seen.items() if now - t < 2 * ABANDON_SECONDS}
        with self._held_lock:
            writes = [(k, h) for k, slots in self._held.items() for h in slots]
        undone = []
        for (number, offset, key), held in writes:
            if held.writer is not None and self.writer_alive(held.writer) is False:
                self.abort_write(number, offset, key, torn=True)
                undone.append(f"write at {offset} of {self.block_id(number)} by {held.writer}")
        return undone

    def release_dead_leases(self) -> list[str]:
        """Free the blocks whose lease actor no longer exists; returns their ids."""
        freed: list[str] = []
        for lease in self.leases():
            try:
                ray.get_actor(lease, namespace=NAMESPACE)
            except ValueError:  # the name is released once the owner's process is gone
                freed += self.release_lease(lease)
        return freed


def snapshot_key(node: str) -> str:
    """The key of a node's last published block list in Ray's key-value store."""
    return f"blocks.{node}"


def _published(node: str) -> dict[str, Any]:
    raw = _ray.kv_get(snapshot_key(node), NAMESPACE)
    published = json.loads(raw) if raw else []
    if isinstance(published, list):  # a store of protocol 4 published the list alone
        return {"blocks": published, "next_number": 0}
    return published


def last_published(node: str) -> list[BlockInfo]:
    """The block list a node's store published last (for a node that is gone)."""
    return [BlockInfo.from_json(b) for b in _published(node)["blocks"]]


def published_next_number(node: str) -> int:
    """The block number a node's store would have handed out next when it last published."""
    return int(_published(node)["next_number"])


class Lease:
    """Alive while the process that made it is: the owner of a pool's non-persistent blocks."""

    def ping(self) -> bool:
        return True


def make_lease() -> tuple[str, Any]:
    """Create a lease owned by this process; returns its name and handle.

    Raises:
        GetTimeoutError: the lease actor did not start within ``START_TIMEOUT``.
    """
    name = LEASE_PREFIX + uuid.uuid4().hex
    handle = ray.remote(Lease).options(name=name, namespace=NAMESPACE, num_cpus=0,
                                       lifetime=None).remote()
    try:
        ray.get(handle.ping.remote(), timeout=START_TIMEOUT)
    except BaseException:
        ray.kill(handle)
        raise
    return name, handle


def find_store(node: str) -> Any | None:
    """The handle of ``node``'s store actor if it is running (or restarting), else None."""
    try:
        return ray.get_actor(ACTOR_PREFIX + node, namespace=NAMESPACE)
    except ValueError:
        return None


def get_store(node: str, node_id: str, cluster_id: str, head: str) -> Any:
    """The handle of ``node``'s store actor, created on that node if it is not running.

    Args:
        node: the node's name.
        node_id: its Ray node id (the actor is pinned there).
        cluster_id: the cluster's identity.
        head: the head node's name.
    """
    found = find_store(node)
    if found is not None:
        return found
    return (
        ray.remote(StoreActor)
        .options(
            name=ACTOR_PREFIX + node, namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True, num_cpus=0, max_restarts=-1, max_task_retries=3,
            max_concurrency=CONCURRENCY,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        .remote(node, cluster_id, head)
    )
