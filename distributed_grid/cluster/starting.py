"""Starting Ray on this host, the way ``grid cluster start`` does: a one-host cluster, a head,
or a node that joins a head. No Ray runs in this process.

Ray runs in the processes started here (the supervisor of a one-host cluster,
:mod:`distributed_grid.cluster.local_cluster`; ``ray start`` for a head or a worker; a worker node
process of ours, :mod:`distributed_grid.cluster.worker_node`), each in a session of its own so it
outlives the command, with the environment of :func:`distributed_grid.cluster.ray_env.ray_env`.
Each is recorded by pid in the runtime folder once it is ready, so ``grid cluster stop`` ends
exactly those (:mod:`distributed_grid.cluster.stopping`); one that never gets ready is ended
here, on Ctrl-C too.

One cluster a host, unless asked: :func:`start` refuses to start a cluster (or to join another
one) while a cluster started by ``grid`` runs on this host, naming it; ``another=True``
(``--another``) starts one beside it. The decision and the start are made under the host's start
lock (:func:`distributed_grid.cluster.hosted.one_start_at_a_time`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from distributed_grid import runtime
from distributed_grid.cluster import auth, hosted, node_process
from distributed_grid.cluster.config import NODE_LABEL, host_node_name
from distributed_grid.cluster.ray_env import (
    LOOPBACK_ENV,
    answers,
    free_port,
    is_loopback,
    ray_env,
    ray_temp_dir,
    recorded_address,
)
from distributed_grid.cluster.spilling import node_environment, prefault_table, spill_table
from distributed_grid.errors import ClusterError, InvalidArgument
from distributed_grid.names import validate_node_name

if TYPE_CHECKING:
    import subprocess


@dataclass(frozen=True)
class Started:
    """What :func:`start` started: the head's address, this host's role in the cluster
    (``local``: a cluster for this host alone; ``head``; ``worker``) and the nodes it runs."""

    address: str
    role: str
    nodes: list[str]

    def to_json(self) -> dict[str, object]:
        """The start as plain data (what ``grid cluster start --json`` prints)."""
        return {"address": self.address, "role": self.role, "nodes": list(self.nodes)}

    def describe(self) -> str:
        """One line for a person."""
        if self.role == "worker":
            return f"joined {self.address} as {self.nodes[0]}"
        if self.role == "local":
            return (f"started a local cluster at {self.address} with nodes "
                    f"{', '.join(self.nodes)}")
        return (f"started a Ray head at {self.address}; join it from other hosts with "
                f"`grid cluster start --address {self.address} --name NAME`")


def start(name: str | None = None, address: str | None = None, nodes: list[str] | None = None,
          loopback: bool = False, port: int | None = None, num_cpus: int | None = None,
          private_shm: bool = False, shm_size: int | None = None,
          another: bool = False, spill_dir: str | None = None, spill_quota: int | None = None,
          spill_high: float | None = None, spill_low: float | None = None,
          prefault: int | None = None) -> Started:
    """Start Ray on this host, outliving the caller: join the cluster at ``address`` as a
    worker; or, with ``nodes``, ``loopback`` or ``private_shm``, a cluster for this host alone
    (a head plus a raylet per node name); else a head that other hosts can join.

    Args:
        name: this host's node name (default: :func:`~distributed_grid.cluster.config.
            host_node_name`).
        port: the head's port (a head only); None picks a free one.
        private_shm: give each worker node a /dev/shm of its own, of ``shm_size`` bytes
            (default :data:`~distributed_grid.cluster.node_process.DEFAULT_SHM_SIZE`).
        another: start (or join) a cluster even though one started by grid runs here.
        spill_dir, spill_quota: where the nodes spill cold blocks when their memory runs
            short, and how many bytes of blocks that folder may hold (each node of a cluster of
            this host gets ``spill_dir/<node>``; a node started alone takes ``spill_dir``);
            the cluster config's ``spill_dir`` and ``spill_quota`` of a node apply otherwise
            (:mod:`~distributed_grid.cluster.spilling`).
        spill_high, spill_low: spill when a node's blocks pass ``spill_high`` of its room,
            down to ``spill_low`` (default: the config's, else 0.85 and 0.70).
        prefault: the bytes of memory each node keeps allocated and faulted in for new
            blocks (:mod:`~distributed_grid.memory.node.room.spares`; default: the config's
            ``prefault`` of each node, else none).

    Raises:
        InvalidArgument: ``nodes`` with ``address`` (nodes start a new cluster); ``port`` for
            anything but a head; ``shm_size`` without ``private_shm``; bad spill settings.
        ClusterError: a cluster started by grid runs here (without ``another``), Ray did not
            start (the message says why), or the record of started clusters is corrupt.
    """
    runtime.started_entries()  # a corrupt record of started clusters stops this first
    nodes = list(nodes or [])
    if not private_shm and shm_size is not None:
        raise InvalidArgument("--shm-size sizes a private /dev/shm: give it with --private-shm")
    shm = (node_process.DEFAULT_SHM_SIZE if shm_size is None else shm_size) if private_shm \
        else None
    local = bool(nodes or loopback or private_shm)
    if address is not None and nodes:
        raise InvalidArgument("--nodes starts a new local cluster; it cannot join one")
    if port is not None and (local or address is not None):
        raise InvalidArgument("--port is the port of a head that other hosts join; a local "
                              "cluster (--nodes, --loopback, --private-shm) or a joining node "
                              "takes a free one", port=port)
    own = name or host_node_name()
    table = spill_table(spill_dir, spill_quota, spill_high, spill_low, per_node=local)
    with hosted.one_start_at_a_time(), node_environment(table, prefault_table(prefault)):
        if not another:
            _refuse_a_second(joining=address)
        if address is not None:
            start_worker(address, name=name, num_cpus=num_cpus, private_shm=shm)
            return Started(address, "worker", [own])
        if local:
            started = start_local(nodes, head_name=own, head_cpus=num_cpus, private_shm=shm)
            return Started(started, "local", [own, *nodes])
        return Started(start_head(name=name, port=port, num_cpus=num_cpus), "head", [own])


def _refuse_a_second(joining: str | None) -> None:
    """Refuse to make a second cluster on this host: one that grid started runs here, other than
    the one at ``joining`` (the head a node joins).

    Raises:
        ClusterError: naming what runs, how to reach it and how to stop it.
    """
    running = [c for c in hosted.clusters_here()
               if joining is None or not runtime.same_address(c.address, joining)]
    if not running:
        return
    what = "start one more" if joining is None else f"join the cluster at {joining}"
    if len(running) == 1:
        (cluster,) = running
        raise ClusterError(
            f"{cluster.describe()} already runs on this host, started by grid: grid commands "
            f"use it (or name it: --address {cluster.address}); stop it with `grid cluster "
            f"stop`, or give --another to {what} beside it", address=cluster.address)
    raise ClusterError(
        f"{len(running)} clusters started by grid already run on this host: "
        f"{hosted.listing(running)}; name one with --address HOST:PORT, stop them with "
        f"`grid cluster stop`, or give --another to {what} beside them")


def start_local(nodes: tuple[str, ...] | list[str] = (), head_name: str | None = None,
                head_cpus: int | None = None, object_store_memory: int | None = None,
                timeout: float = 300, private_shm: int | None = None) -> str:
    """Start a cluster for this host alone (loopback): a head plus one raylet per name.

    Every node carries its name as a label (the head's default: ``host_node_name()``), and
    its store is running when this returns. The cluster outlives the caller; ``grid cluster
    stop`` ends it by the pid of its supervisor. Returns the head's address.

    Args:
        nodes: the worker nodes' names.
        head_name: the head's name.
        head_cpus: CPUs the head offers to Ray (None: Ray counts them).
        object_store_memory: bytes of Ray object store per node (None: 2 GiB; a node with a
            private /dev/shm takes at most a quarter of it).
        timeout: seconds to wait for the cluster to be ready.
        private_shm: give each worker node a /dev/shm of its own, a tmpfs of this many bytes
            in a mount namespace of its own (:mod:`distributed_grid.cluster.worker_node`);
            None: the nodes share the host's.

    Raises:
        InvalidArgument: bad names or sizes, or ``private_shm`` without worker nodes.
        ClusterError: this host cannot give a process a private /dev/shm (nothing started).
    """
    names = [validate_node_name(n) for n in nodes]
    head = validate_node_name(head_name) if head_name is not None else host_node_name()
    if len(set(names + [head])) != len(names) + 1:
        raise InvalidArgument(f"node names must differ, got {[head, *names]}")
    if private_shm is not None:
        if not names:
            raise InvalidArgument("--private-shm gives the worker nodes a /dev/shm of their own "
                                  "(the head keeps this host's): name them with --nodes gpu1,gpu2")
        node_process.check_private_shm(private_shm)
    ready = _ready_file()
    cmd = [sys.executable, "-m", "distributed_grid.cluster.local_cluster", "--ready-file", ready,
           "--nodes", ",".join(names), "--head-name", head]
    if head_cpus is not None:
        cmd += ["--head-cpus", str(head_cpus)]
    if object_store_memory is not None:
        cmd += ["--object-store-memory", str(object_store_memory)]
    if private_shm is not None:
        cmd += ["--private-shm", str(private_shm)]
    env = {**_env(), LOOPBACK_ENV: "0"}
    proc = _spawn(cmd, env, ready.removesuffix(".json") + ".log", lambda: os.path.exists(ready),
                  "the local cluster", timeout)
    info = _take_ready(ready)
    runtime.record_started({"pid": proc.pid, "role": "local", "name": head, "nodes": names,
                            "address": info["address"], "raylets": info["raylets"],
                            "cluster_id": info["cluster_id"],
                            "private": info.get("private") or {}})
    return info["address"]


def start_head(name: str | None = None, port: int | None = None,
               num_cpus: int | None = None) -> str:
    """Start a Ray head on this host, reachable by other hosts, that outlives the caller.

    Args:
        name: the node name (label ``grid.node``); None leaves the host name.
        port: the GCS port; None picks a free one.
        num_cpus: CPUs to advertise; None lets Ray count them.
    """
    args = ["--head", f"--port={port or free_port()}"]
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    return _start_node(args, name, role="head")


def start_worker(address: str, name: str | None = None, num_cpus: int | None = None,
                 private_shm: int | None = None) -> str:
    """Start a Ray worker node on this host that joins the cluster at ``address``.

    A head on loopback (127.0.0.1, for this host alone) is joined by a worker node process of
    ours (:mod:`distributed_grid.cluster.worker_node`), since ``ray start`` refuses to; so is any
    head when ``private_shm`` asks for a /dev/shm of the node's own. Other heads are joined with
    ``ray start``.

    Args:
        private_shm: run the node in a mount namespace with a tmpfs of this many bytes on
            /dev/shm; None: the host's /dev/shm.

    Raises:
        InvalidArgument: ``address`` is a cluster for this host alone, started here with
            ``--nodes`` or ``--loopback``: its record lists all its nodes, so it takes no other.
        ClusterError: no cluster answers at ``address``, it refuses this host's token, or the
            host cannot give a private /dev/shm.
    """
    if runtime.cluster_record(address) is not None:
        raise InvalidArgument(
            f"{address} is a cluster for this host alone (started with --nodes or --loopback), "
            "which takes no other node; start it with its nodes instead: grid cluster start "
            "--nodes gpu1,gpu2 (or start a head with `grid cluster start --name head` and "
            "join that)", address=address)
    if private_shm is not None:
        node_process.check_private_shm(private_shm)
    if not answers(address):
        raise ClusterError(f"no Ray cluster answers at {address}", address=address)
    auth.check_accepted(address, auth.join_source(address))
    if is_loopback(address) or private_shm is not None:
        return _start_worker_node(address, validate_node_name(name or host_node_name()),
                                  num_cpus, private_shm)
    args = [f"--address={address}"]
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    return _start_node(args, name, role="worker", address=address)


def _start_worker_node(address: str, name: str, num_cpus: int | None,
                       private_shm: int | None) -> str:
    """A :mod:`distributed_grid.cluster.worker_node` process joined to ``address``, in its own
    session and recorded by pid, so it outlives the caller and ``grid cluster stop`` ends it."""
    ready = _ready_file()
    cmd = node_process.command(address, name, ready, num_cpus=num_cpus or 1,
                               private_shm=private_shm)
    proc = _spawn(cmd, _env(join=address), _log_file("ray-worker"),
                  lambda: os.path.exists(ready), f"worker node {name}")
    info = _take_ready(ready)
    runtime.record_started({"pid": proc.pid, "role": "worker", "name": name,
                            "address": address, "raylets": {name: info["raylet_pid"]},
                            "private": {name: info} if info["private_shm"] else {}})
    return address


def _start_node(args: list[str], name: str | None, role: str, address: str | None = None) -> str:
    """``ray start --block`` in its own session, recorded by pid; returns the head's address.

    A head gets this host's auth token (made now if there is none); a worker the token of
    the head it joins, which must be set or copied here (:func:`auth.join_source`).
    """
    cmd = [_ray_executable(), "start", "--block", "--disable-usage-stats", *args]
    if role == "head":
        cmd.append("--include-dashboard=false")  # `ray start` refuses it for a worker
    else:  # a worker would take the head's temp folder, a path of the head's host
        cmd.append(f"--temp-dir={ray_temp_dir()}")
    if name is not None:
        cmd.append("--labels=" + json.dumps({NODE_LABEL: validate_node_name(name)}))
    log_path = _log_file(f"ray-{role}")
    proc = _spawn(cmd, _env(join=None if role == "head" else str(address)), log_path,
                  _log_says(log_path, "Ray runtime started"), "`ray start`")
    head_address = _wait_for_head(log_path, args) if role == "head" else str(address)
    runtime.record_started({"pid": proc.pid, "role": role, "name": name,
                            "address": head_address})
    return head_address


# -- the processes -----------------------------------------------------------------------------


def _env(join: str | None = None) -> dict[str, str]:
    """The environment of a Ray process started here (see ``ray_env``), with no ``RAY_ADDRESS``
    (it would point the process at another cluster)."""
    env = dict(os.environ, **ray_env(join=join))
    env.pop("RAY_ADDRESS", None)
    return env


def _ready_file() -> str:
    """A new path for a started process to write when it is ready (`grid memory gc` knows its
    pattern, ``local-<pid>-<n>.json``, and removes one whose writer is gone)."""
    return os.path.join(runtime.runtime_dir(), f"local-{os.getpid()}-{time.monotonic_ns()}.json")


def _take_ready(path: str) -> dict:
    """What a started process wrote in its ready file; the file is removed."""
    with open(path, encoding="utf-8") as f:
        info = json.load(f)
    os.unlink(path)
    return info


def _log_file(kind: str) -> str:
    return os.path.join(runtime.runtime_dir(), f"{kind}-{int(time.time() * 1000)}.log")


def _spawn(cmd: list[str], env: dict[str, str], log_path: str, ready: Callable[[], bool],
           what: str, timeout: float = 120) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own (it outlives this process), its output in a new
    private log; returns it once ``ready()`` (see :func:`_wait_until`)."""
    import subprocess

    with _private_log(log_path) as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    _wait_until(proc, log_path, ready, what, timeout)
    return proc


def _private_log(path: str) -> BinaryIO:
    """A new log file only the user can read."""
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")


def _ray_executable() -> str:
    candidate = os.path.join(os.path.dirname(sys.executable), "ray")
    return candidate if os.path.exists(candidate) else "ray"


def _wait_until(proc: subprocess.Popen, log_path: str, ready: Callable[[], bool], what: str,
                timeout: float = 120) -> None:
    """Wait for a process started in its own session to be ready; end it if it never is.

    It is also ended on Ctrl-C: in its own session nothing else would end it, and it is not
    recorded yet, so `grid cluster stop` could not either.

    Raises:
        ClusterError: the process ended, or was not ready within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            if proc.poll() is not None:
                with open(log_path, encoding="utf-8", errors="replace") as f:
                    tail = "\n".join(f.read().strip().splitlines()[-5:])
                raise ClusterError(f"{what} failed to start (exit {proc.returncode}):\n{tail}")
            if time.monotonic() > deadline:
                raise ClusterError(f"{what} did not start within {timeout:.0f} s "
                                   f"(log: {log_path})")
            time.sleep(0.2)
    except BaseException:
        proc.terminate()
        proc.wait(timeout=60)
        raise


def _log_says(log_path: str, needle: str) -> Callable[[], bool]:
    def check() -> bool:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            return needle in f.read()

    return check


def _wait_for_head(log_path: str, args: list[str]) -> str:
    port = next(a.split("=", 1)[1] for a in args if a.startswith("--port="))
    for _ in range(100):
        recorded = recorded_address(ray_temp_dir())
        if recorded and recorded.endswith(":" + port):
            return recorded
        time.sleep(0.1)
    raise ClusterError(f"the Ray head started but did not record its address (log: {log_path})")
