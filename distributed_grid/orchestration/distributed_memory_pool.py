"""``DistributedMemoryPool``: the guide's async API, a thin facade over :class:`MemoryPool`.

Every method awaits the pool's own operation in a worker thread, so big copies and Ray calls
never block the event loop. No logic lives here.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from distributed_grid.cluster.config import ClusterConfig
from distributed_grid.errors import ClusterError
from distributed_grid.records import BlockInfo


class DistributedMemoryPool:
    """Blocks of shared memory on the cluster, for asyncio code.

    Args:
        cluster_config: a :class:`~distributed_grid.cluster.config.ClusterConfig`, the path of a
        YAML
            cluster config, or None (node labels or host names name the nodes).
        address: the cluster's ``HOST:PORT``; None for the config's address, ``RAY_ADDRESS``,
            the host's cluster, or the embedded local cluster.
    """

    def __init__(self, cluster_config: ClusterConfig | str | os.PathLike[str] | None = None,
                 address: str | None = None) -> None:
        self._config = os.fspath(cluster_config) if isinstance(
            cluster_config, os.PathLike) else cluster_config
        self._address = address
        self._pool = None

    @property
    def pool(self):
        """The underlying :class:`MemoryPool` (after :meth:`initialize`)."""
        if self._pool is None:
            raise ClusterError("DistributedMemoryPool is not initialized: await initialize()")
        return self._pool

    async def initialize(self, persistent: bool = True) -> None:
        """Connect to the cluster.

        Args:
            persistent: blocks this pool allocates stay until deallocated (True), or are freed
                by :meth:`shutdown` and when this process ends, however it ends (False).
        """
        from distributed_grid.memory.pool import MemoryPool

        self._pool = await asyncio.to_thread(
            MemoryPool, self._address, config=self._config, persistent=persistent
        )

    async def __aenter__(self) -> DistributedMemoryPool:
        """``async with DistributedMemoryPool(cfg) as pool:`` initializes the pool (persistent)."""
        await self.initialize()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Shut the pool down, however the block ended."""
        await self.shutdown()

    async def allocate(self, size: int, preferred_node: str | None = None,
                       replicas: int | None = None) -> str:
        """Allocate a block of ``size`` bytes (with ``replicas`` copies, None for the cluster
        config's default); returns its id (``block_<n>_<node>``)."""
        info = await asyncio.to_thread(self.pool.allocate, size, preferred_node, replicas)
        return info.block_id

    async def write(self, block_id: str, data: Any, offset: int = 0) -> int:
        """Write bytes (any buffer) into a block at ``offset``; returns the count written."""
        await asyncio.to_thread(self.pool.write, block_id, data, offset)
        return memoryview(data).nbytes

    async def read(self, block_id: str, size: int | None = None, offset: int = 0) -> bytes:
        """Read ``size`` bytes from ``offset`` (default: up to the block's high-water mark)."""
        return await asyncio.to_thread(self.pool.read, block_id, size, offset)

    async def deallocate(self, block_id: str) -> None:
        """Free a block and its keys."""
        await asyncio.to_thread(self.pool.deallocate, block_id)

    async def spill(self, target: str) -> BlockInfo:
        """Write a block (its id, or a key it holds) to its node's spill folder now."""
        return await asyncio.to_thread(self.pool.spill, target)

    async def restore(self, target: str) -> BlockInfo:
        """Bring a spilled block (its id, or a key it holds) back into memory now."""
        return await asyncio.to_thread(self.pool.restore, target)

    async def get_stats(self) -> dict[str, list[Any]]:
        """Per node shared-memory capacity and free bytes (``NodeStats``), and the blocks of the
        cluster (``BlockInfo``)."""
        stats, blocks = await asyncio.gather(asyncio.to_thread(self.pool.stats),
                                             asyncio.to_thread(self.pool.list_blocks))
        return {"nodes": stats, "blocks": blocks}

    async def shutdown(self) -> None:
        """Release this pool (a non-persistent pool frees the blocks it allocated)."""
        if self._pool is not None:
            await asyncio.to_thread(self._pool.close)
            self._pool = None
