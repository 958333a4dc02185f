"""This host's part of a cluster, from the records its stores wrote: no Ray needed to read it.

"This host" is the memory this process sees: a record counts only when its store's /dev/shm is
this process's (its record's ``shm`` is this process's :func:`~distributed_grid.memory.shm.
layout.shm_identity`). A node with a private
/dev/shm (``grid cluster start --private-shm``) writes its record into the same runtime folder,
but for a process outside its mount namespace it is another host, reached through Ray; a
process inside it (a task on that node) sees that node here and the others as remote.

Which nodes of the cluster at an address run on this host (their catalogs are here), which of
them are gone (their raylet died), where the key directory is when the head is here, and
whether the whole cluster is on this host: a one-host cluster's supervisor records every node,
so when all of them are accounted for, no command about that cluster needs another host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from distributed_grid.memory.shm.layout import shm_identity
from distributed_grid.records import NodeInfo
from distributed_grid.runtime import NodeRecord, cluster_record, node_records


@dataclass(frozen=True)
class HostNodes:
    """The nodes of one cluster that live on this host."""

    cluster_id: str | None = None
    alive: dict[str, NodeRecord] = field(default_factory=dict)
    dead: dict[str, NodeRecord] = field(default_factory=dict)
    complete: bool = False
    head: str | None = None

    @classmethod
    def find(cls, address: str) -> HostNodes:
        """What this host holds of the cluster at ``address`` (nothing if no store runs here)."""
        here = shm_identity()
        every = [(r, r.alive) for r in node_records(address=address, alive_only=False)
                 if r.shm is None or r.shm == here]  # None: written before it was recorded
        whole = cluster_record(address)
        alive = [r for r, up in every if up]
        if whole is not None:
            cluster_id = whole.cluster_id
        elif alive:
            cluster_id = alive[0].cluster_id
        else:
            return cls()
        mine = [(r, up) for r, up in every if r.cluster_id == cluster_id]
        live = {r.node: r for r, up in mine if up}
        gone = {r.node: r for r, up in mine if not up and r.node not in live}
        head = next((r.node for r, _ in mine if r.is_head), whole.head if whole else None)
        complete = whole is not None and set([whole.head, *whole.nodes]) <= set(live) | set(gone)
        return cls(cluster_id=cluster_id, alive=live, dead=gone, complete=complete, head=head)

    @property
    def directory(self) -> str | None:
        """The key directory's file, when the head's store runs on this host."""
        record = self.alive.get(self.head) if self.head else None
        return record.directory if record is not None else None

    def node_infos(self) -> list[NodeInfo]:
        """The recorded nodes, alive ones first (the head first among them)."""
        def info(r: NodeRecord, alive: bool) -> NodeInfo:
            return NodeInfo(name=r.node, node_id=r.node_id, address=r.ip, hostname=r.hostname,
                            is_head=r.is_head, alive=alive)

        ordered = sorted(self.alive.values(), key=lambda r: (not r.is_head, r.node))
        return [info(r, True) for r in ordered] + [info(r, False) for r in self.dead.values()]
