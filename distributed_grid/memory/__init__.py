"""The public face of the block store.

``connect()`` gives a :class:`MemoryPool` over the cluster (the embedded local cluster when none
is reachable); its errors are those of :mod:`distributed_grid.errors`.

``MemoryPool`` and ``FORCE_REMOTE_ENV`` are imported when first asked for: this package also
holds the layers below the pool (``node/``, ``shm/``, ``io/``), and importing one of them alone
must not bring the pool, and everything above it, along.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from distributed_grid import errors as _errors
from distributed_grid.errors import *  # noqa: F403  (every public error: errors.__all__)
from distributed_grid.names import format_block_id, parse_block_id
from distributed_grid.records import (
    BlockInfo,
    ClusterStatus,
    KeyPlace,
    KeyRemoval,
    NodeInfo,
    NodeStats,
    PendingWrite,
    RetrieveResult,
    StoreResult,
)
from distributed_grid.sizes import format_size, parse_size

if TYPE_CHECKING:
    from distributed_grid.memory.client.router import FORCE_REMOTE_ENV
    from distributed_grid.memory.pool import MemoryPool

_LAZY = {"MemoryPool": "distributed_grid.memory.pool",
         "FORCE_REMOTE_ENV": "distributed_grid.memory.client.router"}

__all__ = [
    *_errors.__all__,
    "FORCE_REMOTE_ENV",
    "BlockInfo",
    "ClusterStatus",
    "KeyPlace",
    "KeyRemoval",
    "MemoryPool",
    "NodeInfo",
    "NodeStats",
    "PendingWrite",
    "RetrieveResult",
    "StoreResult",
    "connect",
    "format_block_id",
    "format_size",
    "parse_block_id",
    "parse_size",
]


def __getattr__(name: str) -> Any:
    """``MemoryPool`` and ``FORCE_REMOTE_ENV``, imported on first use (see above)."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def connect(address: str | None = None, *, config=None, force_remote: bool | None = None
            ) -> MemoryPool:
    """Connect to the cluster (starting the embedded local one if none answers).

    Args:
        address: ``HOST:PORT`` of the cluster; None for ``RAY_ADDRESS`` or the local cluster.
        config: a cluster config object or YAML path.
        force_remote: always move bytes through the store actors (ObjectRefs).
    """
    from distributed_grid.memory.pool import MemoryPool

    return MemoryPool(address, config=config, force_remote=force_remote)
