"""Ending what ``grid cluster start`` started on this host: blocks first, then Ray, then files.

A cluster's blocks are freed through its stores while they still run; the Ray nodes this host
started are then ended (by their recorded pids); last, whatever segments and databases of those
clusters are still in /dev/shm (those of nodes that were already gone) are unlinked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from distributed_grid import runtime
from distributed_grid.cluster import hosted, stopping
from distributed_grid.errors import GridError


@dataclass
class Teardown:
    """What :func:`stop_started_clusters` did."""

    freed_blocks: int = 0
    stopped_nodes: list[dict] = field(default_factory=list)
    leftover_segments: list[str] = field(default_factory=list)
    clusters: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The result as plain data (what ``cluster stop --json`` prints)."""
        return {"freed_blocks": self.freed_blocks, "stopped_nodes": len(self.stopped_nodes),
                "leftover_segments_freed": len(self.leftover_segments),
                "clusters": self.clusters, "warnings": self.warnings}


def stop_started_clusters() -> Teardown | None:
    """Free the blocks of every cluster this host started and stop its Ray nodes; None when
    nothing started by grid runs here. A store that cannot be reached is a warning (its
    segments are unlinked from /dev/shm afterwards), not a failure."""
    from distributed_grid.memory.client.block_pool import BlockPool
    from distributed_grid.memory.node.recovery import remove_cluster_files

    started = hosted.started_here()
    if not started:
        return None
    done = Teardown()
    heads = [e for e in started if e["role"] in ("head", "local")]
    cluster_ids = {e["cluster_id"] for e in heads if e.get("cluster_id")}
    for entry in heads:
        try:
            with BlockPool(entry["address"], start_if_missing=False) as pool:
                cluster_ids.add(pool.cluster_id)
                done.freed_blocks += pool.destroy_all()
        except GridError as exc:
            done.warnings.append(f"blocks of {entry['address']} not freed: {exc}")
    done.stopped_nodes = stopping.stop_started()
    for cluster_id in sorted(cluster_ids):
        runtime.forget_cluster(cluster_id)
        done.leftover_segments += remove_cluster_files(cluster_id)
    done.clusters = sorted(cluster_ids)
    return done
