"""The per-node store as a Ray actor: one per node, detached, named, pinned, restartable.

The class is :class:`~distributed_grid.memory.store.BlockStore` plus the two byte-moving methods
of the remote path; Ray is applied here, at the edge, in :func:`get_store`. Because every call to
a node's metadata goes through this one actor (``max_concurrency=1``), it is the only writer.
A restarted actor (after SIGKILL, say) re-runs ``__init__``, which adopts the node's journal.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from distributed_grid.memory.store import BlockStore

ACTOR_PREFIX = "store."


class StoreActor(BlockStore):
    """A node's :class:`BlockStore`, served to the cluster."""

    def ping(self) -> dict[str, Any]:
        """Who serves this store: its process id and Ray node id."""
        import ray

        return {"node": self.node, "pid": os.getpid(),
                "node_id": ray.get_runtime_context().get_node_id()}

    def write_chunk(self, number: int, offset: int, data: np.ndarray) -> int:
        """Copy a chunk that travelled as an ObjectRef into the block (the remote write path)."""
        return self.write_bytes(number, offset, data)

    def read_chunk(self, number: int, offset: int, length: int) -> np.ndarray:
        """Bytes of the block as a uint8 array; Ray copies it once, into the object store."""
        return np.frombuffer(self.read_view(number, offset, length), dtype=np.uint8)


def get_store(node_name: str, node_id: str, cluster_id: str, capacity: int | None = None):
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
        .remote(node_name, cluster_id, capacity)
    )
