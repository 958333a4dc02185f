"""A Ray cluster on this host alone: a head plus one raylet per simulated node, on loopback.

Run as ``python -m distributed_grid.local_cluster --nodes gpu1,gpu2`` by
:func:`distributed_grid.cluster.start_local`; the process supervises the raylets and takes them
down when it receives SIGTERM, so the cluster is ended by this one pid.

Each raylet carries the label ``grid.node=<name>``, so block ids and ``--node gpu2`` work on one
machine as they would across hosts; the nodes share the host's memory (this simulates nodes; it
does not isolate them). Ray's own ``ray start`` refuses extra raylets on a loopback cluster, which
is why the raylets are started through ``ray.cluster_utils.Cluster``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

DEFAULT_OBJECT_STORE = 2 * 2**30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distributed_grid.local_cluster")
    parser.add_argument("--head-name", default=None)
    parser.add_argument("--nodes", default="")
    parser.add_argument("--head-cpus", type=int, default=None)
    parser.add_argument("--object-store-memory", type=int, default=DEFAULT_OBJECT_STORE)
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args(argv)

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep every address on loopback
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    from ray.cluster_utils import Cluster

    from distributed_grid.cluster import NODE_LABEL

    head_args: dict = {
        "include_dashboard": False,
        "object_store_memory": args.object_store_memory,
    }
    if args.head_cpus is not None:
        head_args["num_cpus"] = args.head_cpus
    if args.head_name:
        head_args["labels"] = {NODE_LABEL: args.head_name}
    cluster = Cluster(initialize_head=True, head_node_args=head_args)
    raylets = {args.head_name or "head": _raylet_pid(cluster.head_node)}
    for name in [n for n in args.nodes.split(",") if n]:
        node = cluster.add_node(num_cpus=1, labels={NODE_LABEL: name},
                                object_store_memory=args.object_store_memory)
        raylets[name] = _raylet_pid(node)
    cluster.wait_for_nodes()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    tmp = args.ready_file + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"address": cluster.address, "pid": os.getpid(), "raylets": raylets}, f)
    os.replace(tmp, args.ready_file)
    stop.wait()
    cluster.shutdown()
    return 0


def _raylet_pid(node) -> int:
    """The pid of a node's raylet: ending it takes the node out of the cluster (tests do)."""
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


if __name__ == "__main__":
    sys.exit(main())
