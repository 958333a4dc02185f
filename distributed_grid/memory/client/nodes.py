"""What the pool asks of a node and of the key directory: the same of every kind of each.

A node is reached one of two ways: on this host its store runs in this process over the node's
catalog (:class:`~distributed_grid.memory.node.local_node.LocalNode`), elsewhere through its
store actor (:class:`~distributed_grid.memory.client.remote_node.RemoteNode`). Both keep
:class:`Node`, so routing never asks which kind it holds. :class:`NodeStore` is the part a
node's store actor serves to other hosts (each of its methods is one round trip there);
:class:`Node` adds what moves bytes and what a caller of many nodes needs.

The key directory is the head's (:class:`~distributed_grid.memory.node.directory.KeyDirectory`
on the head's host, :class:`~distributed_grid.memory.client.remote_node.RemoteDirectory`
elsewhere, whose calls the head's store actor serves as ``dir_<name>``): both keep
:class:`Directory`.

``tests/unit/test_contract.py`` checks that every method here exists with the same parameters
on each implementation, and on the store actor that serves the remote ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from distributed_grid.memory.io.copies import Progress
from distributed_grid.memory.io.sinks import Sink
from distributed_grid.memory.io.sources import Source
from distributed_grid.memory.node.directory import Copy, Holder, Replicas
from distributed_grid.records import BlockInfo, KeyPlace, KeyRemoval, NodeStats


class NodeStore(Protocol):
    """A node's store, as every client calls it (a store actor serves each method)."""

    node: str

    def allocate(self, size: int, lease: str | None = None, capacity: int | None = None,
                 holder: str | None = None, for_key: str | None = None,
                 replica_of: str | None = None) -> BlockInfo: ...
    def deallocate(self, number: int, replica_of: str | None = None) -> BlockInfo: ...
    def delete_key(self, key: str) -> KeyRemoval: ...
    def block_info(self, number: int) -> BlockInfo: ...
    def list_blocks(self) -> list[BlockInfo]: ...
    def find_key(self, key: str) -> KeyPlace | None: ...
    def holds_key(self, key: str, number: int) -> bool: ...
    def copy_of(self, number: int) -> str | None: ...
    def set_epoch(self, number: int, replica_of: str, epoch: int) -> None: ...
    def list_keys(self) -> dict[str, str]: ...
    def stats(self, capacity: int | None = None) -> NodeStats: ...
    def prepare_write(self, number: int, offset: int, length: int, key: str | None = None,
                      force: bool = False, writer: str | None = None,
                      replica_of: str | None = None, epoch: int = 0) -> BlockInfo: ...
    def commit_write(self, number: int, offset: int, length: int, key: str | None = None,
                     meta: dict[str, Any] | None = None) -> BlockInfo: ...
    def abort_write(self, number: int, offset: int, key: str | None = None,
                    torn: bool = True) -> None: ...
    def put_small(self, key: str, data: Any, meta: dict[str, Any] | None = None,
                  capacity: int | None = None) -> BlockInfo: ...
    def release_lease(self, lease: str) -> list[str]: ...
    def destroy(self) -> int: ...


class Node(NodeStore, Protocol):
    """A node as the pool uses it: its store, its bytes, and its catalog's version."""

    is_local: bool

    def fill(self, block: BlockInfo, offset: int, length: int, source: Source,
             progress: Progress = ...) -> None:
        """Copy ``length`` bytes of ``source`` into the block at ``offset`` (inside a write
        prepared by this process)."""
        ...

    def drain(self, block: BlockInfo, offset: int, length: int, sink: Sink,
              progress: Progress = ...) -> None:
        """Hand the block's bytes to ``sink``, untorn by concurrent writes."""
        ...

    def open_block(self, number: int,
                   populate: bool = False) -> tuple[int, memoryview | None]:
        """The block's size and, on this host, a writable view of its memory (None elsewhere)."""
        ...

    def view_of(self, block: BlockInfo) -> memoryview | None:
        """On this host, a writable view of a block whose facts were just read (a key's place):
        no catalog query (None elsewhere)."""
        ...

    def writable(self, block: BlockInfo, offset: int, length: int) -> memoryview | None:
        """Inside a write this process prepared, a writable view of the range in this host's
        memory of the block (None when none is here): bytes written there are the write's
        (a replicated block's :meth:`fill` then copies them to its other copies)."""
        ...

    def change_mark(self) -> tuple[int, int] | None:
        """The version of the node's catalog as this process sees it (None when the node is
        reached through its store: then its changes are not seen here)."""
        ...

    def start(self, method: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        """Start the store's ``method`` (a :class:`NodeStore` method, named by the function);
        returns what waits for its result: calls to many nodes then run at once."""
        ...

    def close(self) -> None:
        """Release what this process holds of the node (its catalog, kept mappings)."""
        ...


class Directory(Protocol):
    """The cluster's key directory: which block holds each key, and each node's last size."""

    def lookup(self, key: str) -> Holder | None: ...
    def claim(self, key: str, block_id: str) -> Holder | None: ...
    def take_over(self, key: str, block_id: str, holder: Holder) -> bool: ...
    def forget_key(self, key: str, holder: Holder) -> bool: ...
    def forget_blocks(self, block_ids: list[str]) -> int: ...
    def add_replicated(self, block_id: str, wanted: int, size: int, copies: list[Copy],
                       node_ids: list[str | None]) -> None: ...
    def replicas(self, block_id: str) -> Replicas | None: ...
    def all_replicated(self) -> list[Replicas]: ...
    def drop_copy(self, block_id: str, node: str, number: int) -> bool: ...
    def forget_replicated(self, block_id: str) -> bool: ...
    def report(self, stats: NodeStats, is_head: bool) -> None: ...
    def node_sizes(self) -> list[NodeStats]: ...
