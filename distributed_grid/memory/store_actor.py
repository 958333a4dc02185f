"""The per-node store as a Ray actor: one per node, detached, named, pinned, restartable.

The class is :class:`~distributed_grid.memory.store.BlockStore` plus the two byte-moving methods
of the remote path; Ray is applied here, at the edge, in :func:`get_store`. Because every call to
a node's metadata goes through this one actor (``max_concurrency=1``), it is the only writer.
A restarted actor (after SIGKILL, say) re-runs ``__init__``, which adopts the node's journal.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np

from distributed_grid.memory.store import BlockStore

ACTOR_PREFIX = "store."
# Bumped whenever a store method changes its arguments or results: a client refuses to talk to
# a store of another protocol (a cluster started by another installation of distributed_grid).
STORE_PROTOCOL = 2
LEASE_PREFIX = "lease."
LEASE_CHECK_SECONDS = 2.0


class StoreActor(BlockStore):
    """A node's :class:`BlockStore`, served to the cluster.

    Non-persistent blocks live by a lease: a named actor that the allocating process owns, which
    Ray ends when that process ends, however it ends. A thread of this actor asks it every
    ``LEASE_CHECK_SECONDS`` to free the blocks of leases that are gone; the request goes through
    the actor's own queue, so metadata still has one writer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._publish()
        threading.Thread(target=self._lease_ticker, name="lease-check", daemon=True).start()

    @staticmethod
    def _lease_ticker() -> None:
        import ray

        me = ray.get_runtime_context().current_actor
        while True:
            time.sleep(LEASE_CHECK_SECONDS)
            me.release_dead_leases.remote()

    def _save(self) -> None:
        super()._save()
        self._publish()

    def _publish(self) -> None:
        """Leave the block list in the cluster's key-value store, for when this node is gone."""
        import json

        from ray.experimental import internal_kv

        from distributed_grid.cluster import NAMESPACE

        internal_kv._internal_kv_put(
            snapshot_key(self.node), json.dumps(self.list_blocks()), overwrite=True,
            namespace=NAMESPACE,
        )

    def release_dead_leases(self) -> list[str]:
        """Free the blocks whose lease actor no longer exists; returns their ids."""
        import ray

        from distributed_grid.cluster import NAMESPACE

        freed: list[str] = []
        for lease in self.leases():
            try:
                ray.get_actor(lease, namespace=NAMESPACE)
            except ValueError:  # the name is released once the owner's process is gone
                freed += self.release_lease(lease)
        return freed

    def ping(self) -> dict[str, Any]:
        """Who serves this store: its process id and Ray node id."""
        import ray

        return {"node": self.node, "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id(),
                "protocol": STORE_PROTOCOL, "package": os.path.dirname(os.path.dirname(__file__))}

    def write_chunk(self, number: int, offset: int, data: np.ndarray) -> int:
        """Copy a chunk that travelled as an ObjectRef into the block (the remote write path)."""
        return self.write_bytes(number, offset, data)

    def read_chunk(self, number: int, offset: int, length: int) -> np.ndarray:
        """Bytes of the block as a uint8 array; Ray copies it once, into the object store."""
        return np.frombuffer(self.read_view(number, offset, length), dtype=np.uint8)


def snapshot_key(node: str) -> str:
    """The key of a node's last published block list in Ray's key-value store."""
    return f"blocks.{node}"


def last_known_blocks(node: str) -> list[dict[str, Any]]:
    """The block list a node's store published last (for a node that is gone)."""
    import json

    from ray.experimental import internal_kv

    from distributed_grid.cluster import NAMESPACE

    raw = internal_kv._internal_kv_get(snapshot_key(node), namespace=NAMESPACE)
    return json.loads(raw) if raw else []


class Lease:
    """Alive while the process that made it is: the owner of a pool's non-persistent blocks."""

    def ping(self) -> bool:
        return True


def make_lease() -> tuple[str, Any]:
    """Create a lease owned by this process; returns its name and handle."""
    import uuid

    import ray

    from distributed_grid.cluster import NAMESPACE

    name = LEASE_PREFIX + uuid.uuid4().hex
    handle = ray.remote(Lease).options(name=name, namespace=NAMESPACE, num_cpus=0,
                                       lifetime=None).remote()
    ray.get(handle.ping.remote())
    return name, handle


def get_store(node_name: str, node_id: str, cluster_id: str):
    """The handle of ``node_name``'s store actor, created on that node if it is not running."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from distributed_grid.cluster import NAMESPACE

    name = ACTOR_PREFIX + node_name
    try:
        return ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        pass
    return (
        ray.remote(StoreActor)
        .options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            num_cpus=0,
            max_restarts=-1,
            max_task_retries=3,
            max_concurrency=1,
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
        )
        .remote(node_name, cluster_id)
    )
