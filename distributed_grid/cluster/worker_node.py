"""One Ray worker node in a process of its own, optionally with a /dev/shm of its own.

Run as ``python -m distributed_grid.cluster.worker_node --address HOST:PORT --name gpu2
--ready-file F [--private-shm BYTES]``:

- by the supervisor of ``grid cluster start --nodes gpu1,gpu2 --private-shm``
  (:mod:`distributed_grid.cluster.local_cluster`), once per worker node, so that each runs in its
  own mount namespace with a private tmpfs on /dev/shm
  (:mod:`distributed_grid.cluster.namespaces`), like a node on another machine; the head keeps
  the host's /dev/shm;
- by ``grid cluster start --address HOST:PORT --name gpu2``
  (:func:`distributed_grid.cluster.starting.start_worker`) when the head is on loopback, which
  ``ray start`` refuses to join, or when the node is asked for a private /dev/shm.

The process enters its namespace first (while it has one thread), then starts the node's raylet
the way ``ray start`` does (:func:`distributed_grid._ray.start_worker_node`), writes the ready
file, and waits. SIGTERM (or SIGINT, SIGHUP) ends the node; so does the death of its raylet,
as the loss of a machine would. With a private /dev/shm it then ends whatever still runs in its
namespace and removes every file of that tmpfs, so nothing of the node is left in memory.

Sizes (:mod:`distributed_grid.cluster.node_process`): the node's tmpfs holds both its blocks and
Ray's object store of the node. The object store takes a quarter of the tmpfs (at least 80 MiB, at
most the requested size) and is reserved when the node starts
(``RAY_preallocate_plasma_memory=1``), so blocks filling the tmpfs can never leave Ray's store
without the pages it was promised (which would be a SIGBUS in a Ray worker instead of a clear
``StoreFull`` at ``allocate``); blocks get the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time

from distributed_grid.cluster.node_process import object_store_for

STRAGGLER_WAIT = 10.0  # seconds the namespace's last processes get after SIGTERM


def _die_with(parent: int) -> None:
    """Be sent SIGTERM when ``parent`` dies; end now if it is gone already.

    Done here rather than in a ``preexec_fn``: the supervisor runs Ray's threads, and code run
    between fork and exec of a threaded process may deadlock.
    """
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        sys.exit(1)


def _end_on_signals(stop: threading.Event) -> None:
    """SIGTERM, SIGINT and SIGHUP set ``stop``: the node then ends cleanly."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())


def _write_ready(path: str, info: dict) -> None:
    tmp = path + ".tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w",
              encoding="utf-8") as f:
        json.dump(info, f)
    os.replace(tmp, path)


def _end_namespace(namespace: str) -> None:
    """End what still runs in this process's private namespace (Ray workers that outlived their
    raylet), then remove every file of its /dev/shm: the tmpfs is this node's alone."""
    from distributed_grid.cluster.namespaces import SHM_DIR, processes_in

    me = os.getpid()
    for sig, wait in ((signal.SIGTERM, STRAGGLER_WAIT), (signal.SIGKILL, 2.0)):
        left = [p for p in processes_in(namespace) if p != me]
        for pid in left:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while left and time.monotonic() < deadline:
            time.sleep(0.1)
            for pid in left:
                try:
                    os.waitpid(pid, os.WNOHANG)  # our own children would stay zombies
                except ChildProcessError:
                    pass
            left = [p for p in processes_in(namespace) if p != me]
        if not left:
            break
    for entry in os.listdir(SHM_DIR):
        try:
            os.unlink(os.path.join(SHM_DIR, entry))
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m distributed_grid.cluster.worker_node")
    parser.add_argument("--address", required=True, help="the head's GCS address HOST:PORT")
    parser.add_argument("--name", required=True, help="the node's name (label grid.node)")
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--num-cpus", type=int, default=1)
    parser.add_argument("--object-store-memory", type=int, default=None)
    parser.add_argument("--private-shm", type=int, default=0, metavar="BYTES",
                        help="run in a mount namespace with a tmpfs of BYTES on /dev/shm")
    parser.add_argument("--no-log-monitor", action="store_true")
    parser.add_argument("--parent", type=int, default=None, help="end when this process dies")
    args = parser.parse_args(argv)
    if args.parent is not None:
        _die_with(args.parent)

    from distributed_grid.cluster import namespaces
    from distributed_grid.errors import ClusterError

    how = None
    if args.private_shm:
        try:
            how = namespaces.enter_private_shm(args.private_shm)
        except ClusterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        os.environ["RAY_preallocate_plasma_memory"] = "1"  # reserve the store's pages now

    from distributed_grid import runtime
    from distributed_grid.cluster.config import NODE_LABEL
    from distributed_grid.cluster.ray_env import LOOPBACK_ENV, is_loopback, ray_temp_dir
    from distributed_grid.memory.shm.layout import shm_identity

    loopback = is_loopback(args.address)
    if loopback:
        os.environ[LOOPBACK_ENV] = "0"  # before Ray is imported
    from distributed_grid import _ray

    stop = threading.Event()  # handled from the start: a SIGTERM while the raylet starts ends it
    _end_on_signals(stop)
    object_store = object_store_for(args.private_shm, args.object_store_memory)
    node = _ray.start_worker_node(
        args.address, {NODE_LABEL: args.name}, args.num_cpus, object_store,
        ray_temp_dir(), node_ip_address="127.0.0.1" if loopback else None,
        log_monitor=not args.no_log_monitor)
    _end_on_signals(stop)  # again: Ray's node put its own SIGTERM handler (an exit 1) in place
    namespace = namespaces.mount_namespace()
    try:
        raylet = _ray.raylet_pid(node)
        raylet_start = runtime.process_start(raylet)
        _write_ready(args.ready_file, {
            "pid": os.getpid(), "name": args.name, "node_id": _ray.node_id(node),
            "raylet_pid": raylet, "private_shm": how is not None, "how": how,
            "mount_namespace": namespace, "shm": shm_identity(),
            "object_store_memory": object_store,
        })
        while not stop.wait(0.5):
            if not runtime.process_alive(raylet, raylet_start):
                print(f"the raylet of node {args.name} (pid {raylet}) is gone: ending the node",
                      file=sys.stderr)
                break
    finally:
        try:
            _ray.stop_node(node)
        finally:
            if how is not None and namespace is not None:
                _end_namespace(namespace)
    return 0


if __name__ == "__main__":
    sys.exit(main())
