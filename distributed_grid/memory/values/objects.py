"""Python objects under keys, pickled with cloudpickle.

:func:`put_object` stores ``cloudpickle.dumps(obj)`` under a key (marked as a pickle in the
key's metadata); :func:`get_object` unpickles it. Unpickling runs code chosen by whoever wrote
the bytes: read objects only from keys that you, or people you trust, wrote. For arrays use
:func:`~distributed_grid.memory.values.arrays.put`, which stores them raw and reads them zero-copy.
"""

from __future__ import annotations

import pickle
from typing import Any

import cloudpickle

from distributed_grid.errors import InvalidArgument
from distributed_grid.memory.values.keyed import Blocks, find_key, write_key
from distributed_grid.records import StoreResult

FORMAT = "cloudpickle"


def put_object(pool: Blocks, key: str, obj: Any, node: str | None = None,
               replicas: int | None = None) -> StoreResult:
    """Store ``obj`` under ``key``, pickled (a new key gets a block of its own, on ``node``
    when given, with ``replicas`` copies; a key that exists is replaced in place when the
    pickle fits there).

    Raises:
        InvalidArgument: ``obj`` cannot be pickled.
        KeyConflict: the key exists and the pickle does not fit in its place.
    """
    try:
        data = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as exc:  # pickling raises whatever the object's reducers raise
        raise InvalidArgument(f"cannot pickle {type(obj).__name__}: {exc}") from exc
    return write_key(pool, key, data, len(data), node, {"format": FORMAT}, replicas)


def get_object(pool: Blocks, key: str) -> Any:
    """The object stored under ``key`` by :func:`put_object`, unpickled (trusted data only).

    Raises:
        KeyNotFound: no block holds ``key``.
        InvalidArgument: ``key`` holds bytes that were not stored by :func:`put_object`.
    """
    found = find_key(pool, key)
    key = found.key
    if (found.meta or {}).get("format") != FORMAT:
        raise InvalidArgument(f"key {key!r} does not hold an object stored by put_object; "
                              "read its bytes with read() or its array with get()")
    return pickle.loads(pool.read(key))
