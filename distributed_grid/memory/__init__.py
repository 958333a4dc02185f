"""The public face of the block store.

``connect()`` gives a :class:`MemoryPool` over the cluster (the embedded local cluster when none
is reachable); its errors are those of :mod:`distributed_grid.errors`.
"""

from __future__ import annotations

from distributed_grid.errors import (
    BlockNotFound,
    ClusterError,
    FileError,
    GridError,
    InvalidArgument,
    KeyBusy,
    KeyConflict,
    KeyNotFound,
    NodeNotFound,
    NodeUnavailable,
    NotFound,
    OutOfBounds,
    StoreFull,
    VersionMismatch,
)
from distributed_grid.memory.pool import FORCE_REMOTE_ENV, MemoryPool
from distributed_grid.memory.records import (
    BlockInfo,
    KeyPlace,
    KeyRemoval,
    NodeInfo,
    NodeStats,
    PendingWrite,
    RetrieveResult,
    StoreResult,
)
from distributed_grid.names import format_block_id, parse_block_id
from distributed_grid.sizes import format_size, parse_size

__all__ = [
    "FORCE_REMOTE_ENV",
    "BlockInfo",
    "BlockNotFound",
    "ClusterError",
    "FileError",
    "GridError",
    "InvalidArgument",
    "KeyBusy",
    "KeyConflict",
    "KeyNotFound",
    "KeyPlace",
    "KeyRemoval",
    "MemoryPool",
    "NodeInfo",
    "NodeNotFound",
    "NodeStats",
    "NodeUnavailable",
    "NotFound",
    "OutOfBounds",
    "PendingWrite",
    "RetrieveResult",
    "StoreFull",
    "StoreResult",
    "VersionMismatch",
    "connect",
    "format_block_id",
    "format_size",
    "parse_block_id",
    "parse_size",
]


def connect(address: str | None = None, *, config=None, force_remote: bool | None = None
            ) -> MemoryPool:
    """Connect to the cluster (starting the embedded local one if none answers).

    Args:
        address: ``HOST:PORT`` of the cluster; None for ``RAY_ADDRESS`` or the local cluster.
        config: a cluster config object or YAML path.
        force_remote: always move bytes through the store actors (ObjectRefs).
    """
    return MemoryPool(address, config=config, force_remote=force_remote)
