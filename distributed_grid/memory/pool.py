"""The pool as users hold it: blocks and keys (:class:`~distributed_grid.memory.client.
block_pool.BlockPool`), plus values of types people store: numpy arrays, named tensors
(safetensors) and Python objects.

The typed values are built on the pool's public surface alone
(:class:`~distributed_grid.memory.values.keyed.Blocks`): each method here hands itself to the
module of its type, imported when first used (numpy, cloudpickle and the tensor format load
only then).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any

from distributed_grid.memory.client.block_pool import BlockPool
from distributed_grid.records import StoreResult

if TYPE_CHECKING:
    import numpy as np


class MemoryPool(BlockPool):
    """Blocks of shared memory across the cluster's nodes, keys in them, and typed values.

    Args: as :class:`~distributed_grid.memory.client.block_pool.BlockPool`.
    """

    def view(self, block_id: str, dtype: Any = "uint8", shape: Any = None,
             offset: int = 0, consistent: bool = False, populate: bool = False) -> np.ndarray:
        """A numpy array over a block: zero-copy and writable on this host (live memory), else
        (or with ``consistent``) a read-only copy no concurrent write tore. ``populate`` maps
        every page at once, for a caller about to write all of it.

        See :func:`distributed_grid.memory.values.arrays.view`.
        """
        from distributed_grid.memory.values import arrays  # numpy comes when arrays are used

        return arrays.view(self, block_id, dtype, shape, offset, consistent, populate)

    def writing(self, block_id: str, dtype: Any = "uint8", shape: Any = None,
                offset: int = 0) -> AbstractContextManager[np.ndarray]:
        """``with pool.writing(block_id) as arr:`` a writable array over a block, written as
        one write when the ``with`` ends (to every copy of a replicated block).

        See :func:`distributed_grid.memory.values.arrays.writing`.
        """
        from distributed_grid.memory.values import arrays

        return arrays.writing(self, block_id, dtype, shape, offset)

    def put(self, key: str, array: Any, node: str | None = None,
            replicas: int | None = None) -> StoreResult:
        """Store a numpy array under ``key`` with its dtype and shape.

        See :func:`distributed_grid.memory.values.arrays.put`.
        """
        from distributed_grid.memory.values import arrays

        return arrays.put(self, key, array, node, replicas)

    def get(self, key: str, consistent: bool = False) -> np.ndarray:
        """The array stored under ``key``; zero-copy on this host.

        See :func:`distributed_grid.memory.values.arrays.get`.
        """
        from distributed_grid.memory.values import arrays

        return arrays.get(self, key, consistent)

    def put_object(self, key: str, obj: Any, node: str | None = None,
                   replicas: int | None = None) -> StoreResult:
        """Store a Python object under ``key``, pickled with cloudpickle.

        See :func:`distributed_grid.memory.values.objects.put_object`.
        """
        from distributed_grid.memory.values import objects

        return objects.put_object(self, key, obj, node, replicas)

    def get_object(self, key: str) -> Any:
        """The object stored under ``key`` by :meth:`put_object`. Unpickling runs code of
        whoever wrote the key: trusted data only.

        See :func:`distributed_grid.memory.values.objects.get_object`.
        """
        from distributed_grid.memory.values import objects

        return objects.get_object(self, key)

    def put_tensors(self, key: str, tensors: Any, node: str | None = None,
                    metadata: dict[str, str] | None = None,
                    replicas: int | None = None) -> StoreResult:
        """Store named tensors (numpy arrays or torch tensors) under ``key`` as a safetensors
        file.

        See :func:`distributed_grid.memory.values.tensors.put_tensors`.
        """
        from distributed_grid.memory.values import tensors as safetensors

        return safetensors.put_tensors(self, key, tensors, node, metadata, replicas)

    def get_tensors(self, key: str, framework: str = "numpy") -> dict[str, Any]:
        """The named tensors of a safetensors key (or a stored ``.safetensors`` file) as numpy
        arrays or torch tensors; zero-copy on this host.

        See :func:`distributed_grid.memory.values.tensors.get_tensors`.
        """
        from distributed_grid.memory.values import tensors as safetensors

        return safetensors.get_tensors(self, key, framework)
