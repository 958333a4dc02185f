"""A node's upkeep: what its store decides every few seconds, and what it asks of the cluster.

Every ``TICK_SECONDS`` the store actor runs one round (:meth:`Upkeep.run`): it frees the blocks
of leases whose owner is gone, removes creations whose creator died, undoes the writes of
writers that are gone (a client on another host is gone when its Ray job has ended, or when
none of its calls arrived for ``ABANDON_SECONDS``: a client that died while its job lives on),
reports the node's size to the key directory when its counts changed, and publishes the block
list to the cluster's key-value store when the catalog changed (for listing the blocks if the
node goes away).

The decisions are here, in plain classes; what they ask of the cluster goes through
:class:`ClusterLinks`, which Ray serves (:mod:`distributed_grid.memory.node.service.serving`)
and a test serves with plain data, so the upkeep's logic is tested without Ray.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from typing import Any, Protocol

from distributed_grid.errors import GridError
from distributed_grid.memory.node.local_node import LocalNode
from distributed_grid.memory.node.service.directory import KeyDirectory
from distributed_grid.records import BlockInfo, NodeStats
from distributed_grid.wire import REMOTE_WRITER

TICK_SECONDS = 2.0
SWEEP_EVERY = 5  # rounds between two sweeps of copies the directory does not list
SWEEP_AGE = 60.0  # seconds before a copy the directory does not list is freed
ABANDON_SECONDS = 60.0  # a remote writer silent this long is gone (a chunk takes seconds)


class ClusterLinks(Protocol):
    """What a node's store asks of the cluster it serves."""

    def whereabouts(self) -> tuple[str, str, str]:
        """This process's Ray node id, the cluster's GCS address, and this node's IP."""
        ...

    def dead_jobs(self) -> set[str]:
        """The ids of the cluster's jobs that have ended (their drivers are gone)."""
        ...

    def lease_alive(self, lease: str) -> bool:
        """Whether the lease actor of that name still exists (its owner's process runs)."""
        ...

    def report_to_head(self, head: str, stats: NodeStats) -> bool:
        """Give the node's size to the key directory on the head's store; False when that
        store is not running yet (it starts when somebody first needs it)."""
        ...

    def publish(self, node: str, snapshot: bytes) -> None:
        """Keep ``snapshot`` as the node's last published block list."""
        ...

    def published(self, node: str) -> bytes | None:
        """The node's last published block list, if any."""
        ...

    def call(self, node: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        """Call the store of ``node`` (its method ``method``) and wait for the result (a
        metadata call's bound, or ``timeout`` seconds); raises what the call raised, or
        ``NodeUnavailable`` when no store of that node runs."""
        ...

    def submit(self, node: str, method: str, *args: Any) -> Any:
        """Start a call of the store of ``node``; returns what :meth:`fetch` waits for."""
        ...

    def fetch(self, call: Any) -> Any:
        """The result of a call :meth:`submit` started (a chunk's bound)."""
        ...

    def alive_lives(self) -> set[str]:
        """The Ray node ids of the cluster's nodes alive now (a node that comes back under its
        name is another life, with another id)."""
        ...


def snapshot(blocks: list[BlockInfo], next_number: int) -> bytes:
    """A node's block list as it is published (with the number its next block gets): the
    blocks' facts whole, their segments' names and tokens too."""
    return json.dumps({"blocks": [{**b.to_json(), "segment": b.segment, "token": b.token}
                                  for b in blocks],
                       "next_number": next_number}).encode()


def read_snapshot(raw: bytes | None) -> tuple[list[BlockInfo], int]:
    """The blocks and next block number of a published :func:`snapshot` (none when ``raw`` is
    None; a store of protocol 4 published the list alone)."""
    published = json.loads(raw) if raw else []
    if isinstance(published, list):
        published = {"blocks": published, "next_number": 0}
    return ([BlockInfo.from_json(b) for b in published["blocks"]],
            int(published["next_number"]))


class RemoteWriters:
    """When a store last heard of each writer on another host (``ray:<job>:<host/pid/start>``),
    and which Ray jobs have ended: whether such a writer is still alive."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.seen: dict[str, float] = {}
        self.dead_jobs: set[str] = set()

    def saw(self, writer: str | None) -> None:
        """Note a call of ``writer`` (only writers on another host are noted)."""
        if writer is not None and writer.startswith(REMOTE_WRITER):
            self.seen[writer] = time.monotonic()

    def alive(self, writer: str) -> bool:
        """Whether a writer on another host lives: its Ray job runs and it called within
        ``ABANDON_SECONDS`` (of its last call, or of this store's start)."""
        job = writer[len(REMOTE_WRITER):].partition(":")[0]
        if job in self.dead_jobs:
            return False
        return time.monotonic() - self.seen.get(writer, self.started) < ABANDON_SECONDS

    def forget_silent(self) -> None:
        """Forget writers silent for long (they count as gone either way)."""
        now = time.monotonic()
        self.seen = {w: t for w, t in self.seen.items() if now - t < 2 * ABANDON_SECONDS}


class Upkeep:
    """The upkeep of one store actor: its rounds, and what the last round reported.

    Args:
        store: the node's store it keeps (the actor, whose ``writer_alive`` judges
            ``writers``).
        links: the cluster, as the store reaches it.
        writers: the store's writers on other hosts.
        head: the head node's name.
        directory: the key directory, when the store is the head's.
    """

    def __init__(self, store: LocalNode, links: ClusterLinks, writers: RemoteWriters,
                 head: str, directory: KeyDirectory | None) -> None:
        self.store = store
        self.links = links
        self.writers = writers
        self.head = head
        self.directory = directory
        self._lock = threading.Lock()
        self._reported: tuple[int, int] | None = None
        self._published: tuple[int, int] | None = None
        self._rounds = 0

    def run(self) -> dict[str, Any]:
        """One round (see the module's docstring); returns what it did."""
        store = self.store
        with self._lock:
            self.writers.dead_jobs = self.links.dead_jobs()
            done: dict[str, Any] = {"leases": self.release_dead_leases(), "reaped": store.reap(),
                                    "moves": store.reap_moves(),
                                    "abandoned": self.abandon_silent_writes(),
                                    "writes": store.reap_writes()}
            self._rounds += 1
            if self._rounds % SWEEP_EVERY == 0:
                done["copies"] = self.sweep_copies()
            counts = store.catalog.counts()
            if counts != self._reported and self.report():
                self._reported = counts
            version = store.catalog.change_mark()  # its own changes too: remote clients'
            if version != self._published:
                self.links.publish(store.node, snapshot(store.list_blocks(),
                                                        store.catalog.next_number()))
                self._published = version
            return done

    def report(self) -> bool:
        """Give the node's size (and the Ray node id of its life) to the key directory (its
        own, on the head); returns whether it was given."""
        stats = replace(self.store.stats(), node_id=self.links.whereabouts()[0])
        if self.directory is not None:
            self.directory.report(stats, True)
            return True
        return self.links.report_to_head(self.head, stats)

    def sweep_copies(self, age: float = SWEEP_AGE) -> list[str]:
        """Free the copies of replicated blocks this node holds that the key directory does
        not list (dropped after a write failed on them, or from a life of the node that
        ended), once they are ``age`` seconds old; returns their ids."""
        store = self.store
        copies = [r for r in store.catalog.copies() if time.time() - r.created >= age]
        if not copies:
            return []
        if self.directory is not None:
            listed = set(self.directory.copies_on(store.node))
        else:
            listed = {(b, n) for b, n in self.links.call(self.head, "dir_copies_on",
                                                         store.node)}
        freed = []
        for row in copies:
            if (row.replica_of, row.number) not in listed:
                try:
                    freed.append(store.deallocate(row.number, row.replica_of).block_id)
                except GridError:
                    continue
        return freed

    def release_dead_leases(self) -> list[str]:
        """Free the blocks whose lease actor no longer exists; returns their ids."""
        freed: list[str] = []
        for lease in self.store.leases():
            if not self.links.lease_alive(lease):  # its name goes with its owner's process
                freed += self.store.release_lease(lease)
        return freed

    def abandon_silent_writes(self) -> list[str]:
        """Undo the writes the store holds for remote writers that are gone (and forget
        writers silent for long)."""
        store = self.store
        self.writers.forget_silent()
        undone = []
        for (number, offset, key), held in store.held_writes():
            if held.writer is not None and store.writer_alive(held.writer) is False:
                store.abort_write(number, offset, key, torn=True)
                undone.append(f"write at {offset} of {store.block_id(number)} by {held.writer}")
        return undone
