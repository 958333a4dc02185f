"""Which node holds a block, and how this process reaches it: routing for the pool.

A block id names its node. A node whose store runs on this host (its record in the runtime
directory says so, and its raylet is alive) is a :class:`~distributed_grid.memory.node.
local_node.LocalNode`: its catalog is read and changed in this process and its bytes copied
through the segments' descriptors or viewed through a mapping, with no round trip and no Ray.
Any other node is a :class:`~distributed_grid.memory.client.remote_node.RemoteNode`, reached
through its store actor; Ray is imported and connected only then. ``DISTRIBUTED_GRID_FORCE_
REMOTE=1`` takes the remote path for every node (the way a process on another host would).
Both kinds keep :class:`~distributed_grid.memory.client.nodes.Node`: nothing here or above asks
which kind a node is.

The key directory is likewise the head's file when the head is on this host, else reached
through the head's store.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from distributed_grid.cluster.config import memory_cap
from distributed_grid.cluster.target import Target
from distributed_grid.errors import (
    BlockNotFound,
    NodeNotFound,
    NodeUnavailable,
    NotFound,
    VersionMismatch,
)
from distributed_grid.memory.client.host import HostNodes
from distributed_grid.memory.client.nodes import Directory, Node, NodeStore
from distributed_grid.memory.client.replicas import ReplicaSet, merge_copies
from distributed_grid.memory.node.local_node import LocalNode
from distributed_grid.memory.node.service.directory import KeyDirectory, Replicas
from distributed_grid.names import parse_block_id
from distributed_grid.records import BlockInfo, NodeInfo, NodeStats
from distributed_grid.wire import STORE_PROTOCOL

if TYPE_CHECKING:
    from distributed_grid.cluster.connection import RayCluster

FORCE_REMOTE_ENV = "DISTRIBUTED_GRID_FORCE_REMOTE"
SEEN_BLOCKS = 4096  # ids of blocks of one copy a router remembers (all forgotten when full)


def force_remote_default() -> bool:
    """Whether ``DISTRIBUTED_GRID_FORCE_REMOTE`` asks for the remote path everywhere."""
    return os.environ.get(FORCE_REMOTE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


class Router:
    """The nodes of one cluster as this process reaches them, opened on first use.

    Args:
        target: the cluster.
        force_remote: reach every node through its store actor.
    """

    def __init__(self, target: Target, force_remote: bool) -> None:
        self.target = target
        self.address = target.address
        self.force_remote = force_remote
        self.host = HostNodes() if force_remote else HostNodes.find(self.address)
        self._ray: RayCluster | None = None
        self._nodes: dict[str, Node] = {}
        self._directory: Directory | None = None
        self._own_directory: KeyDirectory | None = None
        self._single: set[str] = set()  # ids of blocks of one copy seen (they stay so)

    @property
    def ray(self) -> RayCluster:
        """The cluster through Ray, connected on first use (only a need for another host, or a
        non-persistent pool's lease, brings Ray in)."""
        if self._ray is None:
            from distributed_grid.cluster.connection import RayCluster

            self._ray = RayCluster(self.target)
        return self._ray

    @property
    def cluster_id(self) -> str:
        """The cluster's identity (part of every segment name)."""
        return self.host.cluster_id or self.ray.cluster_id

    def nodes(self, include_dead: bool = False) -> list[NodeInfo]:
        """The cluster's nodes (alive ones only, unless ``include_dead``)."""
        known = self.host.node_infos() if self.host.complete else self.ray.nodes()
        return [n for n in known if include_dead or n.alive]

    def node(self, name: str) -> Node:
        """The node called ``name``, opened on first use.

        Raises:
            NodeNotFound: no node of that name.
            NodeUnavailable: the node is gone.
            VersionMismatch: its store runs another version of distributed_grid.
        """
        node = self._nodes.get(name)
        if node is None:
            node = self._nodes[name] = self._open(name)
        return node

    def _open(self, name: str) -> Node:
        record = self.host.alive.get(name)
        if record is not None:
            if record.protocol != STORE_PROTOCOL:
                raise VersionMismatch(
                    f"the store of node {name} runs another version of distributed_grid "
                    f"(protocol {record.protocol}, this one speaks {STORE_PROTOCOL}); stop that "
                    "cluster (`grid cluster stop`) and start it again", node=name)
            return LocalNode(name, record.cluster_id)
        if name in self.host.dead:
            raise NodeUnavailable(
                f"node {name} is gone from the cluster: its blocks are lost until it returns",
                node=name)
        if self.host.complete:
            known = ", ".join(sorted(self.host.alive)) or "none"
            raise NodeNotFound(f"no node named {name!r} in the cluster; known nodes: {known}",
                               node=name)
        from distributed_grid.memory.client.remote_node import RemoteNode

        return RemoteNode(self.ray, name)

    def block_node(self, block_id: str) -> tuple[int, Node]:
        """``(number, node)`` of a block whose node is alive; for a replicated block, its
        copies as one node (:class:`~distributed_grid.memory.client.replicas.ReplicaSet`),
        whichever of them live.

        Raises:
            InvalidArgument: not a block id.
            BlockNotFound: no node of that name.
            NodeUnavailable: the node is gone (the block is lost).
        """
        number, name = parse_block_id(block_id)
        replicas = self.replicas_of(block_id, number, name)
        if replicas is not None:
            return number, ReplicaSet(self.node, self.directory, self.host.alive, replicas)
        try:
            return number, self.node(name)
        except NodeUnavailable as exc:
            state = "unreachable" if "timeout" in exc.facts else "lost"  # wedged, or gone
            raise NodeUnavailable(f"block {block_id} is {state}: {exc}", block_id=block_id,
                                  node=name) from exc
        except NotFound as exc:
            raise BlockNotFound(f"no block {block_id}: {exc}", block_id=block_id,
                                node=name) from exc

    def replicas_of(self, block_id: str, number: int, name: str) -> Replicas | None:
        """The copies of ``block_id`` when it is a replicated block (None for a block of one
        copy, which stays so: asked once a process). A block whose node is of this host says
        so itself (its catalog names the block it is a copy of), so a block of one copy costs
        no question to the head; any other is asked of the key directory. A replicated block's
        copies are asked for every time: they change when a node goes and a repair adds one."""
        if block_id in self._single:
            return None
        if self.host.directory is None and name in self.host.alive:
            try:
                if self.node(name).copy_of(number) is None:
                    self._remember_single(block_id)
                    return None
            except NotFound:
                pass  # not there (any more): a replicated block may have moved away
        found = self.directory.replicas(block_id)
        if found is None:
            self._remember_single(block_id)
        return found

    def _remember_single(self, block_id: str) -> None:
        if len(self._single) >= SEEN_BLOCKS:
            self._single.clear()
        self._single.add(block_id)

    def node_sizes(self, method: Callable[..., NodeStats]) -> list[NodeStats]:
        """Each alive node's ``method`` (``stats``, ``node_status``) under the cluster config's
        cap of the node, with the node's identity and place in the cluster."""
        per_node = self.each_node(method, lambda name: (memory_cap(name),))
        return [replace(per_node[n.name], node_id=n.node_id, address=n.address,
                        hostname=n.hostname, is_head=n.is_head)
                for n in self.nodes() if n.name in per_node]

    def each_node(self, method: Callable[..., Any],
                  args: Callable[[str], tuple] = lambda _: (),
                  unreachable: list[str] | None = None) -> dict[str, Any]:
        """``method(*args(node))`` of every alive node's store (a method of
        :class:`~distributed_grid.memory.client.nodes.NodeStore`), by node name: the calls to
        other hosts all leave first, the local ones run meanwhile.

        Args:
            unreachable: where to note the nodes whose store does not answer (a node dying
                before Ray declares it dead), left out of the result; None: raise
                ``NodeUnavailable`` for such a node.
        """
        def tolerated(name: str, call: Callable[[], Any]) -> Any:
            try:
                return call()
            except NodeUnavailable:
                if unreachable is None:
                    raise
                unreachable.append(name)
                return None

        nodes = {n.name: tolerated(n.name, lambda n=n: self.node(n.name))
                 for n in self.nodes()}
        order = sorted((n for n in nodes if nodes[n] is not None),
                       key=lambda name: nodes[name].is_local)
        waits = {name: tolerated(name, lambda name=name: nodes[name].start(method,
                                                                          *args(name)))
                 for name in order}
        results = {name: tolerated(name, wait) for name, wait in waits.items()
                   if wait is not None}
        return {name: r for name, r in results.items() if name not in (unreachable or [])}

    def every_block(self) -> list[BlockInfo]:
        """Every block of the cluster, by node then number (each node asked once, at once).

        A replicated block is listed once, as its first copy describes it, with its copies
        (``replicas``) and its state (``ok``, ``degraded``, ``repairing``). Blocks of a node
        that is gone are listed as they were last known, with status "lost", and those of a
        node whose store does not answer (dying before Ray declares it dead) with status
        "unreachable" (a copy of a replicated block that lives on elsewhere is not listed).
        """
        unreachable: list[str] = []
        blocks = [b for per_node in self.each_node(NodeStore.list_blocks,
                                                   unreachable=unreachable).values()
                  for b in per_node]
        for name in unreachable:
            blocks += [b.with_status("unreachable") for b in self.lost_blocks(name)]
        for node in self.nodes(include_dead=True):
            if not node.alive:
                blocks += [b.with_status("lost") for b in self.lost_blocks(node.name)]
        if any(b.replica_of is not None for b in blocks):
            listed = self.directory.all_replicated()
            live = {r.block_id for r in listed if r.copies}
            blocks = merge_copies([b for b in blocks if b.status not in ("lost", "unreachable")
                                   or b.replica_of not in live], listed)
        return sorted(blocks, key=lambda b: (b.node, b.number))

    @property
    def directory(self) -> Directory:
        """The key directory: its file when the head is on this host, else the head's store."""
        if self._directory is None:
            self._directory = self._directory_here()
            if self._directory is None:
                from distributed_grid.memory.client.remote_node import RemoteDirectory

                self._directory = RemoteDirectory(self.ray)
        return self._directory

    def _directory_here(self) -> KeyDirectory | None:
        """The key directory's file, opened, when the head's store runs on this host."""
        if self._own_directory is None and self.host.directory is not None:
            self._own_directory = KeyDirectory(self.host.cluster_id or "", self.host.directory)
        return self._own_directory

    def report(self, node: Node) -> None:
        """Tell the key directory a node's new size when both are on this host; other sizes
        reach it from the nodes' stores every few seconds (no round trip for this)."""
        record = self.host.alive.get(node.node)
        if record is not None and self.host.directory is not None:
            self.directory.report(node.stats(), record.is_head)

    def remove_directory(self) -> None:
        """Remove the key directory when its file is on this host (else the head's store
        removes it with its node)."""
        here = self._directory_here()
        if here is not None:
            here.remove()

    def lost_blocks(self, name: str) -> list[BlockInfo]:
        """The blocks a node that is gone held, as they were last known."""
        record = self.host.dead.get(name)
        if record is not None and os.path.exists(record.catalog):  # its catalog is on this host
            store = LocalNode(name, record.cluster_id)
            try:
                return store.list_blocks()
            finally:
                store.close()
        return [] if self.host.complete else self.ray.last_published(name)

    def close(self) -> None:
        """Release every node opened (live views stay valid)."""
        for node in self._nodes.values():
            node.close()
        self._nodes.clear()
