"""Where the bytes of a key go when the store places them (``store KEY FILE`` without
``--block-id``, ``put``, ``put_tensors``, ``put_object``).

A new key gets a block of its own, allocated for it (``for_key``) and held for its writer's
write (freed if the writer dies before the write commits). A key that lives in a block of its
own is rewritten into a new block on the same node (each copy's node, for a replicated block):
copy-on-write. The node's commit of the new version drops the old one in the same catalog
transaction (``memory/node/writes.py``), so a reader gets the old version whole until the new
one is whole, and a writer killed part-way leaves the old version. When that node has no room
for a second version, the key is rewritten in place if it fits there (the old version is then
overwritten as it is written). A key in a block the user chose (``--block-id``) is rewritten in
place, as such keys always are.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from distributed_grid.errors import KeyConflict, NodeUnavailable, StoreFull
from distributed_grid.memory.client.allocation import Allocator
from distributed_grid.memory.client.keys import KeyIndex
from distributed_grid.memory.node.slabs import SMALL_MAX
from distributed_grid.names import Key, replica_count
from distributed_grid.records import KeyPlace
from distributed_grid.runtime import this_process


class Replication(NamedTuple):
    """How many copies a new block for a key gets, and whether the caller asked for them: a
    key that exists keeps the copies it has, and a request for another number is refused."""

    count: int = 1
    asked: bool = False


ONE_COPY = Replication()


def replication(default: int) -> Callable[[int | None], Replication]:
    """What a count of copies a caller gives (None: none) means for a new block: that count
    (checked), else ``default``.

    Raises (the function returned):
        InvalidArgument: not a whole number from 1 to 8.
    """
    def copies(replicas: int | None) -> Replication:
        if replicas is None:
            return Replication(default, False)
        return Replication(replica_count(replicas), True)

    return copies


class Target(NamedTuple):
    """Where a key's bytes go: the block and offset, the block allocated for them (freed if
    the write fails), and the key's block this write replaces (its old version's)."""

    block_id: str
    offset: int
    allocated: str | None = None
    replaces: str | None = None


class KeyPlaces:
    """The places of keys the store places itself, for one pool.

    Args:
        keys: the cluster's keys.
        allocator: makes the blocks.
    """

    def __init__(self, keys: KeyIndex, allocator: Allocator) -> None:
        self.keys = keys
        self.allocator = allocator

    def place(self, key: Key, length: int, node: str | None = None,
              replicas: Replication = ONE_COPY) -> Target:
        """Where ``length`` bytes stored under ``key`` go (see the module's docstring). A new
        block is on ``node`` when given, with ``replicas.count`` copies; a key that exists
        keeps the copies it has, and asking for another number (one copy against several) is
        refused.

        Raises:
            KeyConflict: the key is a small value, or lives in a block the user chose and the
                bytes do not fit in its place, or has other copies than asked for.
            StoreFull: no node can hold the bytes.
        """
        found, _ = self.keys.find(key, versioned=False)
        if found is None:
            info = self.allocator.allocate(max(length, 1), node, holder=this_process(),
                                           for_key=key, replicas=replicas.count)
            return Target(info.block_id, 0, info.block_id)
        _check_same_copies(key, found, replicas)
        if found.block.slab:
            raise KeyConflict(
                f"key {key!r} is a small value in {found.block_id}, a slab of the store (from "
                f"put); it is replaced by a put of up to {SMALL_MAX} bytes, or deleted first "
                f"(grid memory delete {key}) to store other bytes under it", key=key,
                block_id=found.block_id)
        if found.block.for_key == key:
            nodes = found.block.replicas or [found.block.node]
            try:
                info = self.allocator.allocate(
                    max(length, 1), nodes[0], holder=this_process(), for_key=key,
                    replicas=self._copies(found), prefer=nodes)
            except (StoreFull, NodeUnavailable):
                pass  # no room beside the old version: in place, if it fits
            else:
                return Target(info.block_id, 0, info.block_id, found.block_id)
        start = found.extents[0][0]
        if len(found.extents) == 1 and start + length <= found.block.size:
            return Target(found.block_id, start)
        raise KeyConflict(
            f"key {key!r} already lives in {found.block_id} ({len(found.extents)} "
            f"extent(s), block size {found.block.size}) and the new {length} bytes do not "
            f"replace it in place; store it with --block-id {found.block_id} --offset N, "
            f"or deallocate {found.block_id} first", key=key, block_id=found.block_id)

    def _copies(self, found: KeyPlace) -> int:
        """How many copies the key's block should have (a degraded one has fewer)."""
        if found.block.replica_of is None:
            return 1
        listed = self.keys.router.directory.replicas(found.block.replica_of)
        return max(len(found.block.replicas), listed.wanted if listed is not None else 1)


def _check_same_copies(key: Key, found: KeyPlace, replicas: Replication) -> None:
    """Refuse another count of copies than the key has, when the caller asked for one."""
    if replicas.asked and (found.block.replica_of is not None) != (replicas.count > 1):
        have = "one copy" if found.block.replica_of is None else \
            f"the copies {', '.join(found.block.replicas)}"
        raise KeyConflict(
            f"key {key!r} lives in {found.block_id} with {have}, and {replicas.count} "
            f"copies were asked for; delete it first (grid memory delete {key}) to store it "
            "with others", key=key, block_id=found.block_id)
