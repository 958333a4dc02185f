"""Ray applied at the edge of a node's store: its actor, its links to the cluster, leases.

A node's store runs as one Ray actor per node: detached (it outlives whoever started it),
named ``store.<node>`` in the namespace ``distributed_grid``, pinned to its node, restarted by
Ray if its process dies (:func:`get_store`). The actor is the plain
:class:`~distributed_grid.memory.node.service.actor.StoreActor`; what it asks of the cluster (its
Ray node id, which jobs ended, whether a lease lives, the head's directory, the key-value store
where block lists are published) is :class:`RayLinks`, Ray's implementation of
:class:`~distributed_grid.memory.node.service.upkeep.ClusterLinks`.

A lease (:func:`make_lease`) is an actor owned by the process that made it: a pool's
non-persistent blocks live as long as it does.
"""

from __future__ import annotations

import uuid
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distributed_grid import _ray
from distributed_grid.errors import GridError, NodeUnavailable
from distributed_grid.memory.node.service.actor import StoreActor
from distributed_grid.memory.node.service.upkeep import read_snapshot
from distributed_grid.records import BlockInfo, NodeStats
from distributed_grid.wire import (
    BULK_TIMEOUT,
    LEASE_PREFIX,
    METADATA_TIMEOUT,
    NAMESPACE,
    START_TIMEOUT,
    snapshot_key,
    store_actor_name,
)

CONCURRENCY = 4  # calls served at once: chunk copies overlap; the catalog serializes changes


class RayLinks:
    """The cluster as a store actor reaches it, through Ray (in the actor's process)."""

    def __init__(self) -> None:
        self._stores: dict[str, Any] = {}

    def whereabouts(self) -> tuple[str, str, str]:
        context = ray.get_runtime_context()
        return context.get_node_id(), context.gcs_address, ray.util.get_node_ip_address()

    def dead_jobs(self) -> set[str]:
        return _ray.dead_jobs()

    def lease_alive(self, lease: str) -> bool:
        try:
            ray.get_actor(lease, namespace=NAMESPACE)
        except ValueError:  # the name is released once the owner's process is gone
            return False
        return True

    def report_to_head(self, head: str, stats: NodeStats) -> bool:
        handle = find_store(head)
        if handle is None:  # the head's store starts when somebody first needs it
            return False
        ray.get(handle.dir_report.remote(stats, False), timeout=METADATA_TIMEOUT)
        return True

    def publish(self, node: str, snapshot: bytes) -> None:
        _ray.kv_put(snapshot_key(node), snapshot, NAMESPACE)

    def published(self, node: str) -> bytes | None:
        return _ray.kv_get(snapshot_key(node), NAMESPACE)

    def _store(self, node: str) -> Any:
        handle = self._stores.get(node) or find_store(node)
        if handle is None:
            raise NodeUnavailable(f"no store of node {node} runs", node=node)
        self._stores[node] = handle
        return handle

    def call(self, node: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        return self.fetch(self.submit(node, method, *args), timeout or METADATA_TIMEOUT, node)

    def submit(self, node: str, method: str, *args: Any) -> Any:
        return node, getattr(self._store(node), method).remote(*args)

    def fetch(self, call: Any, timeout: float = BULK_TIMEOUT, node: str | None = None) -> Any:
        node, ref = call
        try:
            return ray.get(ref, timeout=timeout)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError,
                ray.exceptions.ObjectLostError, ray.exceptions.ObjectFetchTimedOutError,
                ray.exceptions.NodeDiedError) as exc:
            self._stores.pop(node, None)  # found again on the next call
            raise NodeUnavailable(f"the store of node {node} did not answer: {exc}",
                                  node=node) from exc
        except ray.exceptions.RayTaskError as exc:
            if isinstance(getattr(exc, "cause", None), GridError):
                raise exc.cause from None  # the store's own error, as itself
            raise

    def alive_lives(self) -> set[str]:
        return {n["NodeID"] for n in ray.nodes() if n.get("Alive")}


def last_published(node: str) -> list[BlockInfo]:
    """The block list a node's store published last (for a node that is gone)."""
    return read_snapshot(_ray.kv_get(snapshot_key(node), NAMESPACE))[0]


def find_store(node: str) -> Any | None:
    """The handle of ``node``'s store actor if it is running (or restarting), else None."""
    try:
        return ray.get_actor(store_actor_name(node), namespace=NAMESPACE)
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
            name=store_actor_name(node), namespace=NAMESPACE, lifetime="detached",
            get_if_exists=True, num_cpus=0, max_restarts=-1, max_task_retries=3,
            max_concurrency=CONCURRENCY,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        .remote(node, cluster_id, head, RayLinks())
    )


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
