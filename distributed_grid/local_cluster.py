"""A Ray cluster on this host alone: a head plus one raylet per simulated node, on loopback.

Run as ``python -m distributed_grid.local_cluster --head-name vm --nodes gpu1,gpu2`` by
:func:`distributed_grid.lifecycle.start_local`; the process supervises the raylets and takes them
down when it receives SIGTERM, so the cluster is ended by this one pid.

Each raylet carries the label ``grid.node=<name>``, so block ids and ``--node gpu2`` work on one
machine as they would across hosts; the nodes share the host's memory (this simulates nodes; it
does not isolate them). Ray's own ``ray start`` refuses extra raylets on a loopback cluster, which
is why the raylets are started through ``ray.cluster_utils.Cluster``.

Every Ray process of the cluster runs with Ray's token auth (:mod:`distributed_grid.auth`) and
keeps its session folder in :func:`distributed_grid.lifecycle.ray_temp_dir`, which only the user
can enter.

Before it says it is ready, the supervisor starts every node's store (each writes its node's
record) and records the cluster's nodes in the runtime directory: from then on a command on this
host can serve any block of the cluster without Ray. When it ends the cluster it removes the
cluster's records and whatever of its blocks is left in /dev/shm, however it was told to stop.
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
    parser.add_argument("--head-name", required=True)
    parser.add_argument("--nodes", default="")
    parser.add_argument("--head-cpus", type=int, default=None)
    parser.add_argument("--object-store-memory", type=int, default=DEFAULT_OBJECT_STORE)
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args(argv)

    from distributed_grid import lifecycle

    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # keep every address on loopback
    os.environ.update(lifecycle.ray_env())  # before Ray is imported: its processes inherit it
    import ray

    from distributed_grid import _ray, runtime
    from distributed_grid.lifecycle import NODE_LABEL, Target
    from distributed_grid.memory import cluster
    from distributed_grid.memory.store import remove_cluster_files
    from distributed_grid.memory.store_actor import START_TIMEOUT, get_store

    head_args: dict = {"include_dashboard": False, "object_store_memory": args.object_store_memory,
                       "labels": {NODE_LABEL: args.head_name}}
    if args.head_cpus is not None:
        head_args["num_cpus"] = args.head_cpus
    ray_cluster = _ray.one_host_cluster(head_args)
    raylets = {args.head_name: _ray.raylet_pid(ray_cluster.head_node)}
    workers = [n for n in args.nodes.split(",") if n]
    for name in workers:
        node = ray_cluster.add_node(num_cpus=1, labels={NODE_LABEL: name},
                                    object_store_memory=args.object_store_memory)
        raylets[name] = _ray.raylet_pid(node)
    ray_cluster.wait_for_nodes()

    cluster.connect(Target(ray_cluster.address))
    cluster_id = cluster.session_cluster_id()
    ids = {n.name: n.node_id for n in cluster.node_table(include_dead=False)}
    stores = [get_store(name, ids[name], cluster_id, args.head_name)
              for name in [args.head_name, *workers]]
    # each has written its node's record once it answers
    ray.get([store.ping.remote() for store in stores], timeout=START_TIMEOUT)
    ray.shutdown()  # the stores are detached and stay; a driver's signal handlers would not

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    runtime.write_cluster_record(runtime.ClusterRecord(
        cluster_id=cluster_id, address=ray_cluster.address, supervisor_pid=os.getpid(),
        supervisor_start=runtime.process_start(os.getpid()), head=args.head_name, nodes=workers,
    ))

    tmp = args.ready_file + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
              encoding="utf-8") as f:
        json.dump({"address": ray_cluster.address, "pid": os.getpid(), "raylets": raylets,
                   "cluster_id": cluster_id}, f)
    os.replace(tmp, args.ready_file)
    stop.wait()
    runtime.forget_cluster(cluster_id)
    ray_cluster.shutdown()
    remove_cluster_files(cluster_id)  # the stores are gone: nothing of the cluster may stay
    return 0


if __name__ == "__main__":
    sys.exit(main())
