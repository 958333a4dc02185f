"""Making and freeing blocks: on the node the caller names, or where :mod:`.placement` ranks
best."""

from __future__ import annotations

import time
from dataclasses import replace

from distributed_grid.cluster.config import memory_cap
from distributed_grid.errors import (
    GridError,
    NodeNotFound,
    NodeUnavailable,
    StoreFull,
)
from distributed_grid.memory.client import placement
from distributed_grid.memory.client.nodes import Node
from distributed_grid.memory.client.router import Router
from distributed_grid.memory.shm.capacity import describe_limit
from distributed_grid.names import positive_size, replica_count
from distributed_grid.records import BlockInfo, NodeStats
from distributed_grid.sizes import format_size

BEST_NODE_SECONDS = 1.0


class Allocator:
    """Makes blocks for one pool.

    Args:
        router: the pool's nodes.
        lease: the pool's lease for non-persistent blocks (None: blocks are persistent).
    """

    def __init__(self, router: Router, lease: str | None) -> None:
        self.router = router
        self.lease = lease
        self._best: tuple[str, float] | None = None

    def allocate(self, size: int, node: str | None = None, holder: str | None = None,
                 for_key: str | None = None, replicas: int = 1,
                 prefer: list[str] | tuple[str, ...] = ()) -> BlockInfo:
        """A new block of ``size`` bytes on ``node``, or (None) where there is most room.

        Args:
            holder: the writer the block is made for (freed if it dies before its write).
            for_key: the key the block is made for (freed with the key).
            replicas: how many copies the block has, each on a node of its own (``node``
                holds the first).
            prefer: nodes to place copies on before any other (a key's new version goes
                where its old one is).

        Raises:
            InvalidArgument: ``size`` is not a positive whole number of bytes, or
                ``replicas`` not a whole number from 1 to 8.
            NodeNotFound: no node is called ``node``.
            StoreFull: no node (or not ``node``) can hold ``size`` bytes, or fewer than
                ``replicas`` nodes can; nothing is allocated.
        """
        positive_size(size)
        replicas = replica_count(replicas)
        if replicas > 1:
            return self._replicated(size, node, holder, for_key, replicas, prefer)
        if node is not None:
            chosen = self.router.node(node)
            info = chosen.allocate(size, self.lease, memory_cap(node), holder, for_key)
        else:
            chosen, info = self._anywhere(size, holder, for_key)
        self.router.report(chosen)
        return info

    def _replicated(self, size: int, node: str | None, holder: str | None,
                    for_key: str | None, replicas: int,
                    prefer: list[str] | tuple[str, ...] = ()) -> BlockInfo:
        """A replicated block: ``replicas`` copies on distinct nodes (distinct hosts while
        there are some), the first on ``node`` when given, recorded in the key directory; all
        or nothing."""
        if node is not None:
            self.router.node(node)  # NodeNotFound, NodeUnavailable: said first
        sizes, shared, host_of, caps = self._ranking(with_head=True)
        heads = {n.name for n in self.router.nodes() if n.is_head}
        order = placement.spread(sizes, shared, host_of, caps, size, node)
        order = [n for n in order if n not in heads or n == node] + \
            [n for n in order if n in heads and n != node]  # the head last, as for one copy
        order = [n for n in prefer if n in order] + [n for n in order if n not in prefer]
        made: list[tuple[Node, BlockInfo]] = []
        try:
            for name in order:
                if len(made) == replicas:
                    break
                try:
                    target = self.router.node(name)
                    first = made[0][1].block_id if made else ""
                    made.append((target, target.allocate(size, self.lease, caps[name], holder,
                                                         for_key, first)))
                except (StoreFull, NodeUnavailable, NodeNotFound):
                    if name == node:
                        raise
            if len(made) < replicas:
                nodes = [n.name for n in self.router.nodes()]
                raise StoreFull(
                    f"cannot allocate {replicas} copies of {size} bytes: they need {replicas} "
                    f"distinct nodes that can each hold {size} bytes, and "
                    f"{'only ' if made else ''}{len(made) or 'none'} of the {len(nodes)} live "
                    f"nodes ({', '.join(sorted(nodes))}) can; nothing was allocated",
                    size=size, replicas=replicas, nodes=len(made))
            block_id = made[0][1].block_id
            lives = {n.name: n.node_id or None for n in self.router.nodes()}
            self.router.directory.add_replicated(
                block_id, replicas, size, [(n.node, info.number) for n, info in made],
                [lives.get(n.node) for n, _ in made])
        except BaseException:
            for target, info in made:
                try:
                    target.deallocate(info.number, made[0][1].block_id)
                except GridError:
                    pass
            raise
        for target, _ in made:
            self.router.report(target)
        return replace(made[0][1], replica_of=block_id, replicas=[n.node for n, _ in made])

    def deallocate(self, block_id: str) -> BlockInfo:
        """Free a block and its keys; returns the facts it had.

        Raises:
            BlockNotFound: no such block.
        """
        number, node = self.router.block_node(block_id)
        info = node.deallocate(number)
        if info.keys or info.pending_keys:
            self.router.directory.forget_blocks([info.block_id])
        self.router.report(node)
        return info

    def _ranking(self, with_head: bool = False
                 ) -> tuple[dict[str, NodeStats], dict[str, int], dict[str, str],
                            dict[str, int | None]]:
        """What :mod:`.placement` ranks the nodes by: their last reported sizes, the room of
        each host, the host of each node, and each node's cap. The head is a candidate only
        when there is no worker, or ``with_head`` (copies of a replicated block may need it)."""
        alive = self.router.nodes()
        candidates = [n.name for n in alive if with_head or not n.is_head] or \
            [n.name for n in alive]
        sizes = {s.node: s for s in self.router.directory.node_sizes() if s.node in candidates}
        for name in candidates:
            if name not in sizes:  # its store has not reported yet
                try:
                    sizes[name] = self.router.node(name).stats()
                except (NodeNotFound, NodeUnavailable):
                    continue  # Ray lists it, but its store is gone (or not there yet)
        if not sizes:
            raise NodeUnavailable(f"no store of the nodes {', '.join(candidates)} answers; "
                                  "check `grid cluster status`")
        host_of = {n.name: n.hostname or n.name for n in alive}
        caps = {name: memory_cap(name) for name in sizes}
        return sizes, placement.host_rooms(sizes, host_of), host_of, caps

    def best_node(self) -> str:
        """The node a new small value goes to when the caller names none, ranked as
        :meth:`allocate` ranks them, again at most every ``BEST_NODE_SECONDS`` (a small value
        barely moves the ranking; ranking costs more than the value's whole put)."""
        now = time.monotonic()
        if self._best is None or now - self._best[1] > BEST_NODE_SECONDS:
            sizes, shared, host_of, caps = self._ranking()
            self._best = (placement.best(sizes, shared, host_of, caps), now)
        return self._best[0]

    def forget_best(self) -> None:
        """Rank the nodes again for the next small value (the one chosen is gone)."""
        self._best = None

    def _anywhere(self, size: int, holder: str | None,
                  for_key: str | None) -> tuple[Node, BlockInfo]:
        """Allocate on the worker (the head only when there is none) that :mod:`.placement`
        ranks best by the sizes the nodes last reported. A node whose report was stale and
        turns out full is asked for its real size and the next one tried."""
        sizes, shared, host_of, caps = self._ranking()
        refused: StoreFull | None = None
        for _ in range(2 * len(sizes)):
            best = placement.best(sizes, shared, host_of, caps)
            if size > placement.room(best, sizes, shared, host_of, caps):
                break
            node = self.router.node(best)
            try:
                return node, node.allocate(size, self.lease, caps[best], holder, for_key)
            except StoreFull as exc:
                refused = exc  # what it says (what spilling could not free, say)
                sizes[best] = node.stats()  # its report was stale: rank it by what it says now
        if refused is not None and refused.facts.get("node") == best:
            raise refused
        sizes[best] = self.router.node(best).stats(caps[best])  # what bounds it, for the message
        free = placement.room(best, sizes, shared, host_of, caps)
        raise StoreFull(f"cannot allocate {size} bytes: the most any node can hold is {free} "
                        f"bytes (node {best}: {self._why_full(best, sizes[best], caps)})",
                        size=size, free=free, node=best, limit=sizes[best].limited_by)

    def _why_full(self, name: str, stats: NodeStats, caps: dict[str, int | None]) -> str:
        """What bounds a node's room, with what its spill folder holds and views pin."""
        why = describe_limit(stats)
        if not stats.spill_dir:
            return why
        stats = self.router.node(name).node_status(caps[name])
        return (f"{why}; its spill folder holds {format_size(stats.spilled_bytes)} of its "
                f"{format_size(stats.spill_quota)} quota, and views pin "
                f"{format_size(stats.pinned_bytes)} of its blocks")
