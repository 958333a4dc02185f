"""A Ray cluster on this host alone: a head plus one raylet per simulated node, on loopback.

Run as ``python -m distributed_grid.cluster.local_cluster --head-name vm --nodes gpu1,gpu2`` by
:func:`distributed_grid.cluster.starting.start_local`; the process supervises the raylets and
takes them down when it receives SIGTERM, so the cluster is ended by this one pid.

Each raylet carries the label ``grid.node=<name>``, so block ids and ``--node gpu2`` work on one
machine as they would across hosts; the nodes share the host's memory (this simulates nodes; it
does not isolate them). Ray's own ``ray start`` refuses extra raylets on a loopback cluster, which
is why the raylets are started through ``ray.cluster_utils.Cluster``.

With ``--private-shm BYTES`` each worker node runs instead in a process of its own
(:mod:`distributed_grid.cluster.worker_node`) inside a mount namespace with a private tmpfs of
BYTES on /dev/shm: its raylet, Ray workers and store see none of the head's segments nor the other
workers', as on separate machines. The head keeps the host's /dev/shm. Those processes end
with the supervisor (SIGTERM, also if the supervisor is killed outright).

Every Ray process of the cluster runs with Ray's token auth (:mod:`distributed_grid.cluster.auth`)
and keeps its session folder in :func:`distributed_grid.cluster.ray_env.ray_temp_dir`, which only
the user can enter. The supervisor reaches the cluster through
:mod:`distributed_grid.cluster.connection` and the private APIs of :mod:`distributed_grid._ray`;
it imports no Ray of its own.

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
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from distributed_grid.records import NodeInfo

DEFAULT_OBJECT_STORE = 2 * 2**30


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distributed_grid.cluster.local_cluster")
    parser.add_argument("--head-name", required=True)
    parser.add_argument("--nodes", default="")
    parser.add_argument("--head-cpus", type=int, default=None)
    parser.add_argument("--object-store-memory", type=int, default=DEFAULT_OBJECT_STORE)
    parser.add_argument("--private-shm", type=int, default=0, metavar="BYTES",
                        help="each worker node in a mount namespace with a BYTES tmpfs on /dev/shm")
    parser.add_argument("--ready-file", required=True)
    args = parser.parse_args(argv)

    from distributed_grid.cluster.ray_env import LOOPBACK_ENV, ray_env

    os.environ[LOOPBACK_ENV] = "0"  # keep every address on loopback
    os.environ.update(ray_env())  # before Ray is imported: its processes inherit it

    from distributed_grid import _ray, runtime
    from distributed_grid.cluster import connection as cluster
    from distributed_grid.cluster.config import NODE_LABEL
    from distributed_grid.cluster.spilling import remove_spill_files
    from distributed_grid.cluster.target import Target
    from distributed_grid.memory.node.recovery import remove_cluster_files
    from distributed_grid.memory.node.service.serving import get_store

    head_args: dict = {"include_dashboard": False, "object_store_memory": args.object_store_memory,
                       "labels": {NODE_LABEL: args.head_name}}
    if args.head_cpus is not None:
        head_args["num_cpus"] = args.head_cpus
    ray_cluster = _ray.one_host_cluster(head_args)
    raylets = {args.head_name: _ray.raylet_pid(ray_cluster.head_node)}
    workers = [n for n in args.nodes.split(",") if n]
    private: dict[str, dict] = {}
    if not args.private_shm:
        for name in workers:
            node = ray_cluster.add_node(num_cpus=1, labels={NODE_LABEL: name},
                                        object_store_memory=args.object_store_memory)
            raylets[name] = _ray.raylet_pid(node)
    ray_cluster.wait_for_nodes()  # the nodes it started itself
    if args.private_shm:
        private = _start_private_nodes(ray_cluster.address, workers, args, raylets)

    cluster.connect(Target(ray_cluster.address))
    cluster_id = cluster.session_cluster_id()
    ids = _wait_for_names(lambda: cluster.node_table(include_dead=False),
                          [args.head_name, *workers])
    stores = [get_store(name, ids[name], cluster_id, args.head_name)
              for name in [args.head_name, *workers]]
    cluster.wait_for_stores(stores)  # each has written its node's record once it answers
    cluster.disconnect()  # the stores are detached and stay; a driver's signal handlers would not

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
                   "cluster_id": cluster_id, "private": {
                       name: {k: info[k] for k in ("pid", "raylet_pid", "mount_namespace")}
                       for name, info in private.items()}}, f)
    os.replace(tmp, args.ready_file)
    stop.wait()
    runtime.forget_cluster(cluster_id)
    _stop_private_nodes(private)
    ray_cluster.shutdown()
    remove_cluster_files(cluster_id)  # the stores are gone: nothing of the cluster may stay
    remove_spill_files(cluster_id, [args.head_name, *workers])  # nor in the spill folders
    return 0


def _start_private_nodes(address: str, workers: list[str], args: argparse.Namespace,
                         raylets: dict[str, int]) -> dict[str, dict]:
    """Start each worker node in a process of its own with a private /dev/shm; returns what
    each wrote in its ready file (its pid among them) and adds its raylet to ``raylets``.

    One after the other: nodes that share the head's session folder pick their socket names
    by looking for the first free one there, and two raylets starting at once pick the same.
    """
    from distributed_grid.cluster import node_process

    private: dict[str, dict] = {}
    for name in workers:
        # named as starting.start_local names its own: `grid memory gc` knows the pattern
        ready = os.path.join(os.path.dirname(args.ready_file),
                             f"local-{os.getpid()}-{time.monotonic_ns()}.json")
        cmd = node_process.command(address, name, ready, num_cpus=1,
                                  object_store_memory=args.object_store_memory,
                                  private_shm=args.private_shm, log_monitor=False,
                                  die_with_parent=True)
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        private[name] = {"pid": proc.pid}
        deadline = time.monotonic() + 120
        while not os.path.exists(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop_private_nodes(private)
                raise SystemExit(f"error: worker node {name} with a private /dev/shm did not "
                                 f"start (exit {proc.returncode}); see the lines above")
            time.sleep(0.1)
        with open(ready, encoding="utf-8") as f:
            private[name] = json.load(f)
        os.unlink(ready)
        raylets[name] = private[name]["raylet_pid"]
    return private


def _wait_for_names(table: Callable[[], list[NodeInfo]], names: list[str],
                    timeout: float = 120) -> dict[str, str]:
    """The Ray node ids of ``names``, once every one of them is alive in the node table (a
    node started in a process of its own registers on its own time)."""
    deadline = time.monotonic() + timeout
    while True:
        ids = {n.name: n.node_id for n in table()}
        if set(names) <= set(ids):
            return ids
        if time.monotonic() > deadline:
            missing = ", ".join(sorted(set(names) - set(ids)))
            raise SystemExit(f"error: node(s) {missing} did not join within {timeout:.0f} s")
        time.sleep(0.2)


def _stop_private_nodes(private: dict[str, dict], timeout: float = 60) -> None:
    """SIGTERM the worker node processes and wait for them (each ends its namespace)."""
    for info in private.values():
        try:
            os.kill(info["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    for info in private.values():
        while True:
            try:
                done, _ = os.waitpid(info["pid"], os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(info["pid"], signal.SIGKILL)
                os.waitpid(info["pid"], 0)
                break
            time.sleep(0.1)


if __name__ == "__main__":
    sys.exit(main())
