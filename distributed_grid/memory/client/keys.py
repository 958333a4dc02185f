"""Keys across the cluster: finding a key's block, claiming a key for a block, removing a key.

The key directory (``memory/node/service/directory.py``) names the one block of the cluster
that holds each key; a key's bytes and extents are in that block's node catalog. This module runs
the directory's protocol for the pool: a write records the key in its block's catalog before it
claims the key here, a claim that finds another holder asks that holder whether it still has
the key (a stale entry is taken over with a compare-and-swap), and a removal forgets the entry
only if it is still the one seen before the catalog dropped the key. A key is found with one
lookup in the directory and one question to the key's node, whatever the number of nodes; a
key whose block is on this host is found in the host's catalogs first, without Ray.
"""

from __future__ import annotations

from distributed_grid.errors import (
    BlockNotFound,
    KeyConflict,
    KeyNotFound,
    NodeUnavailable,
    NotFound,
)
from distributed_grid.memory.client.nodes import NodeStore
from distributed_grid.memory.client.router import Router
from distributed_grid.names import Key, looks_like_block_id, validate_key
from distributed_grid.records import KeyPlace, KeyRemoval

Version = tuple[int, int] | None  # a node catalog's version (None: another host's node)
SEEN_KEYS = 4096  # keys of this host whose node a pool remembers (all forgotten when full)


class KeyIndex:
    """The cluster's keys, as one pool finds, claims and removes them.

    Args:
        router: the pool's nodes and key directory.
    """

    def __init__(self, router: Router) -> None:
        self.router = router
        self._seen: dict[str, str] = {}  # key -> the node of this host it was last found on

    def saw(self, key: str, node: str) -> None:
        """Remember that ``key`` lives on ``node`` (a node of this host): the next find asks
        that node's catalog first (a hint, never trusted alone: the catalog says)."""
        if len(self._seen) >= SEEN_KEYS:
            self._seen.clear()
        self._seen[key] = node

    def find(self, key: Key, versioned: bool = True) -> tuple[KeyPlace | None, Version]:
        """The block holding ``key``'s bytes with the key's extents (or None), and the version
        of the key's node catalog taken before the place was read (None unless
        ``versioned``: a caller that only views the key needs none).

        With the key directory's file on this host, the directory names the key's node (one
        query); else the host's own catalogs are asked first, and the directory (through the
        head's store) only for a key none of them holds.

        Raises:
            NodeUnavailable: the key's block is on a node that is gone.
        """
        router = self.router
        hint = self._seen.get(key)
        if hint is not None:  # a key of this host seen before: its catalog alone says
            try:
                node = router.node(hint)
                version = node.change_mark() if versioned else None
                place = node.find_key(key)
            except (NotFound, NodeUnavailable):
                place = None
            if place is not None:
                return self._replicated(key, place, version)
            self._seen.pop(key, None)
        if router.host.directory is None and not router.host.complete:
            for name in router.host.alive:
                node = router.node(name)
                version = node.change_mark() if versioned else None
                place = node.find_key(key)
                if place is not None:
                    return self._replicated(key, place, version)
        holder = router.directory.lookup(key)
        if holder is None:
            return None, None
        try:
            _, node = router.block_node(holder[0])
        except BlockNotFound:
            return None, None
        version = node.change_mark() if versioned else None
        place = node.find_key(key)
        if place is not None and place.block.replica_of not in (None, holder[0]):
            return self._replicated(key, place, version)  # it moved (copy-on-write)
        if place is not None and node.is_local and place.block.replica_of is None:
            self.saw(key, place.block.node)
        return place, version

    def block_of(self, target: str) -> str:
        """The id of the block ``target`` names: a block id itself, or the block of a key (as
        the key directory says: its bytes are not touched).

        Raises:
            KeyNotFound: ``target`` is no block id and no key.
        """
        if looks_like_block_id(target):
            return target
        holder = self.router.directory.lookup(validate_key(target))
        if holder is None:
            raise KeyNotFound(f"no block holds key {target!r}", key=target)
        return holder[0]

    def _replicated(self, key: Key, place: KeyPlace,
                    version: Version) -> tuple[KeyPlace | None, Version]:
        """A place found in a node's own catalog, as the pool reads it: a copy of a
        replicated block is read (and written) through that block, all of whose copies live
        on."""
        if place.block.replica_of is None:
            return place, version
        _, node = self.router.block_node(place.block.replica_of)
        return node.find_key(key), None

    def holds(self, block_id: str, key: Key) -> bool:
        """Whether ``block_id`` has ``key`` (a block on a node that is gone holds nothing)."""
        try:
            number, node = self.router.block_node(block_id)
            return node.holds_key(key, number)
        except (NotFound, NodeUnavailable):
            return False

    def claim(self, key: Key, block_id: str, replaces: str | None = None) -> None:
        """Make ``block_id`` the key's one block in the cluster (after the block's catalog
        recorded the key).

        Args:
            replaces: the key's block whose version this write replaces (copy-on-write: its
                node's catalog took the new version beside it).

        Raises:
            KeyConflict: another block holds the key.
        """
        directory = self.router.directory
        while True:
            holder = directory.claim(key, block_id)
            if holder is None:
                return
            if holder[0] != replaces and self.holds(holder[0], key):
                raise KeyConflict(
                    f"key {key!r} already lives in {holder[0]}; a key lives in one block: "
                    f"store it there, or deallocate {holder[0]} first",
                    key=key, block_id=holder[0])
            if directory.take_over(key, block_id, holder):
                return

    def delete(self, key: Key) -> KeyRemoval:
        """Remove ``key``: all its extents, in its one block; and that block too when it was
        allocated for the key (:meth:`store_file` without a block id, :meth:`put`) and no other
        key lives in it. Other keys' bytes are untouched. A reader of the key gets its bytes
        from before the removal, whole, or KeyNotFound. A zero-copy view of the key
        (:meth:`get`) is live memory: it keeps a freed block's memory while it lives, and in a
        block that stays it shows whatever is written there next.

        Raises:
            KeyNotFound: no block holds ``key``; nothing changed.
            KeyBusy: a write of the key is running; nothing changed.
            NodeUnavailable: the key's block is on a node that is gone.
        """
        self._seen.pop(key, None)
        directory = self.router.directory
        entry = directory.lookup(key)  # before the catalog's change: see forget_key
        if entry is None:
            raise _unknown(key)
        try:
            _, node = self.router.block_node(entry[0])
            removal = node.delete_key(key)
        except NodeUnavailable as exc:
            raise NodeUnavailable(f"cannot delete key {key!r}: {exc}", key=key,
                                  **exc.facts) from exc
        except (BlockNotFound, KeyNotFound) as exc:  # a stale entry: the key is gone
            raise _unknown(key) from exc
        if removal.block_freed:
            directory.forget_blocks([removal.block_id])
            self.router.report(node)
        elif removal.block_id == entry[0]:
            directory.forget_key(key, entry)
        return removal

    def every_key(self) -> dict[str, str]:
        """Every key of the cluster, mapped to the id of its block."""
        merged: dict[str, str] = {}
        for per_node in self.router.each_node(NodeStore.list_keys).values():
            merged.update(per_node)
        return merged


def _unknown(key: str) -> KeyNotFound:
    return KeyNotFound(f"no key named {key!r}: `grid memory list-objects` shows the blocks and "
                       "their keys", key=key)
