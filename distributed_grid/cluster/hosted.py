"""The clusters ``grid`` started on this host, as the runtime record lists them; no Ray.

``grid cluster start`` (and the embedded default) record every Ray process they start in
``started.json`` (:mod:`distributed_grid.runtime`), by pid: the supervisor of a one-host cluster
(role ``local``: its head and every worker node), a head (``head``), a node that joined a head
(``worker``). Here those entries are read as clusters, one per address, each with the nodes this
host runs of it: which cluster a command means when it names none
(:mod:`distributed_grid.cluster.target`), whether a start would make a second cluster here
(:mod:`distributed_grid.cluster.starting`), and how many nodes a stop ends
(:mod:`distributed_grid.cluster.stopping`).

Whether a cluster runs here is decided, and a cluster started, by one process at a time
(:func:`one_start_at_a_time`): two ``grid cluster start`` at once would each find none running
and start one, and two commands at once would each start an embedded default.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from distributed_grid import runtime
from distributed_grid.cluster.config import host_node_name


def started_here() -> list[dict[str, Any]]:
    """The Ray processes started on this host by ``grid cluster start`` that still run.

    Raises:
        ClusterError: the record is corrupt (its message names the file and what to do).
    """
    return runtime.started_entries()


def nodes_of(entry: dict[str, Any]) -> list[str]:
    """The names of the Ray nodes a started process runs: a one-host cluster's head and workers,
    else its one node."""
    name = entry.get("name") or host_node_name()
    return [name, *entry.get("nodes", [])] if entry["role"] == "local" else [name]


@dataclass(frozen=True)
class HostedCluster:
    """A cluster with nodes started on this host: its address and the record's entries of it."""

    address: str
    entries: tuple[dict[str, Any], ...]

    @property
    def nodes(self) -> list[str]:
        """The names of its nodes that run on this host."""
        return [name for entry in self.entries for name in nodes_of(entry)]

    def describe(self) -> str:
        """What it is, for a message: ``a local cluster at 127.0.0.1:43137 (nodes vm, gpu1)``."""
        roles = {entry["role"] for entry in self.entries}
        nodes = self.nodes
        listed = f"{'node' if len(nodes) == 1 else 'nodes'} {', '.join(nodes)}"
        if "local" in roles:
            return f"a local cluster at {self.address} ({listed})"
        if "head" in roles:
            return f"a Ray head at {self.address} ({listed} on this host)"
        return f"the cluster at {self.address}, joined by this host ({listed})"


def clusters_here() -> list[HostedCluster]:
    """The clusters with nodes started on this host that still run, in the order they started.

    Raises:
        ClusterError: the record is corrupt.
    """
    found: list[HostedCluster] = []
    for entry in started_here():
        index = next((i for i, c in enumerate(found)
                      if runtime.same_address(c.address, entry["address"])), None)
        if index is None:
            found.append(HostedCluster(entry["address"], (entry,)))
        else:
            found[index] = HostedCluster(found[index].address, (*found[index].entries, entry))
    return found


def listing(clusters: list[HostedCluster]) -> str:
    """Clusters for a message: ``a local cluster at A (nodes vm, gpu1); a Ray head at B (...)``."""
    return "; ".join(c.describe() for c in clusters)


@contextmanager
def one_start_at_a_time() -> Iterator[None]:
    """Hold this host's start lock (``start.lock`` in the runtime folder) while deciding whether
    a cluster runs here and starting one; another start waits, then finds what this one
    started."""
    from filelock import FileLock  # 50 ms to import: only the commands that start a cluster

    with FileLock(os.path.join(runtime.runtime_dir(), "start.lock"), mode=0o600):
        yield
