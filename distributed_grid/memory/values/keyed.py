"""Writing one value under a key (the pool finds its place, writes it, and undoes a block made
for it if the write fails). What :func:`~distributed_grid.memory.values.arrays.put` and
:func:`~distributed_grid.memory.values.objects.put_object` share."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Protocol

from distributed_grid.errors import KeyNotFound
from distributed_grid.names import key_from
from distributed_grid.records import BlockInfo, KeyPlace, StoreResult


class Blocks(Protocol):
    """The part of the pool's public surface (:class:`~distributed_grid.memory.client.
    block_pool.BlockPool`) that keyed values (arrays, tensors, objects) are built on."""

    def open_block(self, block_id: str,
                   populate: bool = False) -> tuple[int, memoryview | None]: ...
    def view_of(self, place: KeyPlace) -> memoryview | None: ...
    def block_info(self, block_id: str) -> BlockInfo: ...
    def writing_view(self, block_id: str, offset: int = 0,
                     size: int | None = None) -> AbstractContextManager[memoryview]: ...
    def read(self, target: str, size: int | None = None, offset: int = 0) -> bytes: ...
    def find_key(self, key: str) -> KeyPlace | None: ...
    def write_value(self, key: str, data: Any, length: int, node: str | None = None,
                    meta: dict[str, Any] | None = None,
                    replicas: int | None = None) -> StoreResult: ...
    def allocate(self, size: int, node: str | None = None,
                 replicas: int | None = None) -> BlockInfo: ...
    def deallocate(self, block_id: str) -> BlockInfo: ...
    def write(self, block_id: str, data: Any, offset: int = 0, key: str | None = None,
              force: bool = False, progress: Any = None,
              meta: dict[str, Any] | None = None) -> BlockInfo: ...


def find_key(pool: Blocks, key: str) -> KeyPlace:
    """Where ``key`` lives.

    Raises:
        KeyNotFound: no block holds ``key``.
    """
    key = key_from(key)
    found = pool.find_key(key)
    if found is None:
        raise KeyNotFound(f"no key named {key!r}; `grid memory list-objects` shows the keys",
                          key=key)
    return found


def write_key(pool: Blocks, key: str, data: Any, length: int, node: str | None,
              meta: dict[str, Any], replicas: int | None = None) -> StoreResult:
    """Write ``length`` bytes of ``data`` (a buffer, or a list of them one after another)
    under ``key`` with ``meta``; a new key's block gets ``replicas`` copies (None: the
    cluster config's default), and a key that exists keeps the copies it has.

    A small value (``memory/node/slabs.py``: up to 64 KiB) goes to a slab of its node (on
    ``node`` when given), and a key put again moves to a new run there in one change. A bigger
    new key gets a block of its own; a key that exists in a block of its own is rewritten into
    a new one beside it, which takes its place when whole (``memory/client/key_places.py``).

    Raises:
        KeyConflict: the key lives where these bytes cannot replace it.
    """
    return pool.write_value(key_from(key), data, length, node, meta, replicas)
