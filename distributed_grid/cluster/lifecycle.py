"""Which cluster a command means, and starting and stopping clusters on this host.

No Ray runs in this process here: Ray runs in the processes started (the supervisor of a
one-host cluster, ``ray start`` for a head or a worker), each in its own session, recorded by pid
in the runtime directory so ``grid cluster stop`` ends exactly those.

Which cluster: an explicit address, else the one this process is connected to (code running in
a Ray task or driver), else ``RAY_ADDRESS``, else the one ``grid`` started on this host (or a
node of this host joined with ``grid cluster start --address``), else the
one Ray recorded as current, else (when allowed) the embedded default: a one-host cluster
started on demand, announced in one line on stderr.

A cluster that this package starts for one host runs on loopback (127.0.0.1). Ray replaces
127.0.0.1 with the host's outward address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set
in every process before Ray is imported; :mod:`distributed_grid.cluster.connection` sets it when it
connects to a loopback address, and the processes started here get it in their environment.

Every Ray process started here runs with Ray's token auth (:mod:`distributed_grid.cluster.auth`) and
keeps Ray's session folders in :func:`ray_temp_dir`, inside the user's runtime folder: Ray makes
them writable by everyone, so they must sit in a folder nobody else can enter.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from distributed_grid import runtime
from distributed_grid.cluster import auth
from distributed_grid.errors import ClusterError, InvalidArgument
from distributed_grid.names import validate_node_name

if TYPE_CHECKING:
    import subprocess

NODE_LABEL = "grid.node"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@dataclass(frozen=True)
class Target:
    """The cluster a command uses (connecting finds the auth token it accepts)."""

    address: str


# -- addresses ---------------------------------------------------------------------------------


def _ray_temp_root() -> str:
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(base, "ray")


def ray_temp_dir() -> str:
    """Ray's temp folder (sessions, logs, sockets) for the Ray processes started here."""
    return os.path.join(runtime.runtime_dir(), "ray")


def ray_env(join: str | None = None) -> dict[str, str]:
    """The variables every Ray process started here runs with: token auth (this host's token,
    or for a node that joins the head at ``join`` that head's) and :func:`ray_temp_dir`."""
    token = auth.start_env() if join is None else auth.join_source(join).env
    return {**token, "RAY_TMPDIR": runtime.runtime_dir()}  # Ray adds "ray"


def recorded_address(temp_root: str | None = None) -> str | None:
    """The address Ray recorded for the latest cluster started on this host, if any.

    Args:
        temp_root: Ray's temp folder; None for Ray's default (where ``ray start`` run by hand
            records its cluster).
    """
    path = os.path.join(temp_root or _ray_temp_root(), "ray_current_cluster")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return text or None


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT``."""
    address = address.removeprefix("ray://")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidArgument(f"invalid cluster address {address!r}: use HOST:PORT")
    return host, int(port)


def answers(address: str, timeout: float = 1.0) -> bool:
    """Whether something listens at ``address`` (a TCP connect; no Ray)."""
    try:
        with socket.create_connection(split_address(address), timeout=timeout):
            return True
    except OSError:
        return False


def is_loopback(address: str) -> bool:
    host, _ = split_address(address)
    return host in ("localhost", "::1") or host.startswith("127.")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_cluster(address: str | None = None, start_if_missing: bool = True) -> Target:
    """The cluster a command uses (starting the embedded default if none answers).

    Args:
        address: ``HOST:PORT`` of the cluster's head; None for ``RAY_ADDRESS`` or the cluster
            recorded on this host.
        start_if_missing: start the embedded local cluster when no cluster answers (only when
            no address was given).

    Raises:
        ClusterError: the given cluster does not answer, or none could be started.
    """
    ray = sys.modules.get("ray")
    if address is None and ray is not None and ray.is_initialized():
        return Target(ray.get_runtime_context().gcs_address)  # the cluster this process is in
    explicit = address or os.environ.get("RAY_ADDRESS") or None
    if explicit in ("auto", "local"):
        explicit = None
    # a cluster this host started, else the one a node of this host joined
    ours = sorted(runtime.started_entries(), key=lambda e: e["role"] == "worker")
    target = explicit or (ours[0]["address"] if ours else None) or recorded_address()
    if target is not None and answers(target):
        return Target(target)
    if explicit is not None:
        source = "" if address else " (from RAY_ADDRESS; unset it to use the embedded cluster)"
        raise ClusterError(f"no Ray cluster answers at {explicit}{source}; start one with "
                           "`grid cluster start`", address=explicit)
    if not start_if_missing:
        raise ClusterError("no Ray cluster is running; start one with `grid cluster start`")
    started = start_local()
    print(f"distributed_grid: no Ray cluster was running; started a local one at {started} "
          "(stop it with `grid cluster stop`)", file=sys.stderr)
    return Target(started)


# -- starting ----------------------------------------------------------------------------------


def host_node_name() -> str:
    """The name this host's node gets when nothing else names it: the cluster config's name
    for this host, else the host name made safe for a block id."""
    from distributed_grid.cluster.config import node_name_for_host

    hostname = socket.gethostname()
    return node_name_for_host(hostname, "127.0.0.1") or safe_name(hostname)


def safe_name(hostname: str) -> str:
    """A host name turned into a valid node name."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in hostname).strip("-._")
    return (cleaned or "node")[:64]


@dataclass(frozen=True)
class Started:
    """What :func:`start` started: the head's address, this host's role in the cluster
    (``local``: a cluster for this host alone; ``head``; ``worker``) and the nodes it runs."""

    address: str
    role: str
    nodes: list[str]

    def to_json(self) -> dict[str, object]:
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
          private_shm: int | None = None) -> Started:
    """Start Ray on this host, outliving the caller, the way ``grid cluster start`` does: join
    the cluster at ``address`` as a worker; or, with ``nodes``, ``loopback`` or
    ``private_shm``, a cluster for this host alone (a head plus a raylet per node name);
    else a head that other hosts can join.

    Args:
        name: this host's node name (default: :func:`host_node_name`).
        private_shm: the size of the private /dev/shm of each worker node (None: they share
            the host's).

    Raises:
        InvalidArgument: ``nodes`` with ``address`` (nodes start a new cluster).
        ClusterError: Ray did not start (the message says why), or the record of started
            clusters is corrupt.
    """
    runtime.started_entries()  # a corrupt record of started clusters stops this first
    nodes = list(nodes or [])
    own = name or host_node_name()
    if address is not None:
        if nodes:
            raise InvalidArgument("--nodes starts a new local cluster; it cannot join one")
        start_worker(address, name=name, num_cpus=num_cpus, private_shm=private_shm)
        return Started(address, "worker", [own])
    if nodes or loopback or private_shm is not None:
        started = start_local(nodes, head_name=own, head_cpus=num_cpus, private_shm=private_shm)
        return Started(started, "local", [own, *nodes])
    return Started(start_head(name=name, port=port, num_cpus=num_cpus), "head", [own])


def start_local(nodes: tuple[str, ...] | list[str] = (), head_name: str | None = None,
                head_cpus: int | None = None, object_store_memory: int | None = None,
                timeout: float = 300, private_shm: int | None = None) -> str:
    """Start a cluster for this host alone (loopback): a head plus one raylet per name.

    Every node carries its name as a label (the head's default: :func:`host_node_name`), and
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
            in a mount namespace of its own (:mod:`distributed_grid.cluster.worker_node`); None: the
            nodes share the host's.

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
        check_private_shm(private_shm)
    ready = os.path.join(runtime.runtime_dir(),
                         f"local-{os.getpid()}-{time.monotonic_ns()}.json")
    cmd = [sys.executable, "-m", "distributed_grid.cluster.local_cluster", "--ready-file", ready,
           "--nodes", ",".join(names), "--head-name", head]
    if head_cpus is not None:
        cmd += ["--head-cpus", str(head_cpus)]
    if object_store_memory is not None:
        cmd += ["--object-store-memory", str(object_store_memory)]
    if private_shm is not None:
        cmd += ["--private-shm", str(private_shm)]
    env = dict(os.environ, **ray_env())
    env.pop("RAY_ADDRESS", None)
    env[LOOPBACK_ENV] = "0"
    log_path = ready.removesuffix(".json") + ".log"
    import subprocess

    with _private_log(log_path) as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    _wait_until(proc, log_path, lambda: os.path.exists(ready), "the local cluster", timeout)
    with open(ready, encoding="utf-8") as f:
        ready_info = json.load(f)
    os.unlink(ready)
    runtime.record_started({"pid": proc.pid, "role": "local", "name": head, "nodes": names,
                            "address": ready_info["address"], "raylets": ready_info["raylets"],
                            "cluster_id": ready_info["cluster_id"],
                            "private": ready_info.get("private") or {}})
    return ready_info["address"]


def check_private_shm(size: int) -> None:
    """Refuse a private /dev/shm of ``size`` bytes that is too small, or that this host cannot
    give (tried for real in a forked child, before anything starts).

    Raises:
        InvalidArgument: ``size`` is below :data:`node_process.MIN_SHM_SIZE`.
        ClusterError: neither root nor unprivileged user namespaces are available.
    """
    from distributed_grid.cluster import namespaces, node_process

    if size < node_process.MIN_SHM_SIZE:
        raise InvalidArgument(
            f"--shm-size {size} is too small: a node's private /dev/shm holds its blocks and a "
            f"quarter of it goes to Ray's object store; give at least "
            f"{node_process.MIN_SHM_SIZE // 2**20}MiB", size=size)
    refusal = namespaces.private_shm_refusal()
    if refusal is not None:
        raise ClusterError(f"cannot give nodes a private /dev/shm on this host: {refusal}")


def start_head(name: str | None = None, port: int | None = None,
               num_cpus: int | None = None) -> str:
    """Start a Ray head on this host, reachable by other hosts, that outlives the caller.

    Args:
        name: the node name (label ``grid.node``); None leaves the host name.
        port: the GCS port; None picks a free one.
        num_cpus: CPUs to advertise; None lets Ray count them.
    """
    args = ["--head", f"--port={port or _free_port()}"]
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    return _start_node(args, name, role="head")


def start_worker(address: str, name: str | None = None, num_cpus: int | None = None,
                 private_shm: int | None = None) -> str:
    """Start a Ray worker node on this host that joins the cluster at ``address``.

    A head on loopback (127.0.0.1, for this host alone) is joined by a worker node process of
    ours (:mod:`distributed_grid.cluster.worker_node`), since ``ray start`` refuses to; so is any
    head
    when ``private_shm`` asks for a /dev/shm of the node's own. Other heads are joined with
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
        check_private_shm(private_shm)
    if not answers(address):
        raise ClusterError(f"no Ray cluster answers at {address}", address=address)
    _check_token(address, auth.join_source(address))
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
    session
    and recorded by pid, so it outlives the caller and ``grid cluster stop`` ends it."""
    from distributed_grid.cluster import node_process

    ready = os.path.join(runtime.runtime_dir(),
                         f"local-{os.getpid()}-{time.monotonic_ns()}.json")
    cmd = node_process.command(address, name, ready, num_cpus=num_cpus or 1,
                              private_shm=private_shm)
    env = dict(os.environ, **ray_env(join=address))
    env.pop("RAY_ADDRESS", None)
    log_path = os.path.join(runtime.runtime_dir(), f"ray-worker-{int(time.time() * 1000)}.log")
    import subprocess

    with _private_log(log_path) as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    _wait_until(proc, log_path, lambda: os.path.exists(ready), f"worker node {name}")
    with open(ready, encoding="utf-8") as f:
        info = json.load(f)
    os.unlink(ready)
    runtime.record_started({"pid": proc.pid, "role": "worker", "name": name,
                            "address": address, "raylets": {name: info["raylet_pid"]},
                            "private": {name: info} if info["private_shm"] else {}})
    return address


def _check_token(address: str, source: auth.TokenSource) -> None:
    """Ask the head at ``address`` whether it takes the token of ``source``, in one bounded
    call (``ray start`` would retry for about 20 s, then fail with a traceback).

    Raises:
        ClusterError: the head refuses the token.
    """
    from distributed_grid import _ray

    saved = {name: os.environ.get(name) for name in source.env}
    os.environ.update(source.env)
    try:
        _ray.reload_auth_config()
        refusal = _ray.auth_refusal(address)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if refusal is not None:
        raise ClusterError(f"the cluster at {address} refused the token of {source.where} "
                           f"({refusal}): it needs its head's token", address=address)


def _start_node(args: list[str], name: str | None, role: str, address: str | None = None) -> str:
    """``ray start --block`` in its own session, recorded by pid; returns the head's address.

    A head gets this host's auth token (made now if there is none); a worker the token of
    the head it joins, which must be set or copied here (:func:`auth.join_env`).
    """
    env = dict(os.environ, **ray_env(join=None if role == "head" else str(address)))
    env.pop("RAY_ADDRESS", None)
    cmd = [_ray_executable(), "start", "--block", "--disable-usage-stats", *args]
    if role == "head":
        cmd.append("--include-dashboard=false")  # `ray start` refuses it for a worker
    else:  # a worker would take the head's temp folder, a path of the head's host
        cmd.append(f"--temp-dir={ray_temp_dir()}")
    if name is not None:
        cmd.append("--labels=" + json.dumps({NODE_LABEL: validate_node_name(name)}))
    log_path = os.path.join(runtime.runtime_dir(), f"ray-{role}-{int(time.time() * 1000)}.log")
    import subprocess

    with _private_log(log_path) as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    _wait_until(proc, log_path, _log_says(log_path, "Ray runtime started"), "`ray start`")
    head_address = _wait_for_head(log_path, args) if role == "head" else str(address)
    runtime.record_started({"pid": proc.pid, "role": role, "name": name,
                            "address": head_address})
    return head_address


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


# -- stopping ----------------------------------------------------------------------------------


def started_here() -> list[dict]:
    """The nodes started on this host by ``grid cluster start`` that are still running."""
    return runtime.started_entries()


def stop_started(address: str | None = None, timeout: float = 60) -> list[dict]:
    """End the nodes started here (workers first), by pid; returns what was stopped.

    Args:
        address: only the cluster at this address; None for every cluster started here.
        timeout: seconds to wait for each node to end before it is killed.
    """
    entries = [e for e in started_here() if address is None or e["address"] == address]
    entries.sort(key=lambda e: e["role"] != "worker")
    for entry in entries:
        try:
            os.kill(entry["pid"], signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout
        while runtime.process_alive(entry["pid"], entry.get("start")):
            _reap(entry["pid"])
            if time.monotonic() > deadline:
                os.kill(entry["pid"], signal.SIGKILL)
                _reap(entry["pid"])
                break
            time.sleep(0.1)
    runtime.forget_started({e["pid"] for e in entries})
    return entries


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
