"""Reaching the Ray cluster: connect, start the embedded local cluster, name the nodes.

Addresses: an explicit address, else ``RAY_ADDRESS``, else the cluster Ray recorded as current
on this host. When none of them answers, :func:`connect` starts a local cluster (the embedded
default) and says so in one line on stderr.

A cluster that this package starts locally runs on loopback (127.0.0.1). Ray replaces 127.0.0.1
with the host's outward address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is set in every
process before Ray is imported, so :func:`connect` sets it whenever the address is a loopback
one. Clusters started here are recorded (pid of the ``ray start --block`` process per node) so
``grid cluster stop`` ends exactly what was started, by pid.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from distributed_grid.errors import ClusterError, InvalidArgument, NodeNotFound, NodeUnavailable

NAMESPACE = "distributed_grid"
NODE_LABEL = "grid.node"
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_HEAD_RESOURCE = "node:__internal_head__"


@dataclass(frozen=True)
class NodeInfo:
    """A node of the cluster as distributed_grid names it."""

    name: str
    node_id: str
    address: str
    hostname: str
    is_head: bool
    alive: bool


# -- where state lives -------------------------------------------------------------------------


def state_dir() -> str:
    """This user's folder for the record of clusters started here."""
    # TMPDIR is read each time (tempfile caches its first answer), so a process that changes it,
    # like the test session, gets its own record.
    base = os.environ.get("TMPDIR") or tempfile.gettempdir()
    path = os.path.join(base, f"distributed_grid-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def _started_path() -> str:
    return os.path.join(state_dir(), "started.json")


def _load_started() -> list[dict[str, Any]]:
    try:
        with open(_started_path(), encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def _save_started(entries: list[dict[str, Any]]) -> None:
    tmp = _started_path() + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(entries, f)
    os.replace(tmp, _started_path())


# -- addresses ---------------------------------------------------------------------------------


def _ray_temp_root() -> str:
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    return os.path.join(base, "ray")


def recorded_address() -> str | None:
    """The address Ray recorded for the latest cluster started on this host, if any."""
    try:
        with open(os.path.join(_ray_temp_root(), "ray_current_cluster"), encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return text or None


def _split(address: str) -> tuple[str, int]:
    address = address.removeprefix("ray://")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidArgument(f"invalid cluster address {address!r}: use HOST:PORT")
    return host, int(port)


def _answers(address: str, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection(_split(address), timeout=timeout):
            return True
    except OSError:
        return False


def _is_loopback(address: str) -> bool:
    host, _ = _split(address)
    return host in ("localhost", "::1") or host.startswith("127.")


def _prepare_env_for(address: str) -> None:
    if _is_loopback(address):
        if "ray" in sys.modules and os.environ.get(_LOOPBACK_ENV) != "0":
            import ray._private.ray_constants as rc

            rc.ENABLE_RAY_CLUSTER = False
        os.environ[_LOOPBACK_ENV] = "0"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- connecting --------------------------------------------------------------------------------


def connect(address: str | None = None, start_if_missing: bool = True) -> str:
    """Connect this process to the cluster and return its address.

    Args:
        address: ``HOST:PORT`` of the cluster's head; None for ``RAY_ADDRESS`` or the cluster
            recorded on this host.
        start_if_missing: start the embedded local cluster when no cluster answers (only when
            no address was given).

    Raises:
        ClusterError: the given cluster does not answer, or none could be started.
    """
    import importlib

    if "ray" in sys.modules:
        ray = importlib.import_module("ray")
        if ray.is_initialized():
            return ray.get_runtime_context().gcs_address
    explicit = address or os.environ.get("RAY_ADDRESS") or None
    if explicit in ("auto", "local"):
        explicit = None
    ours = [e for e in started_here() if e["role"] in ("local", "head")]
    target = explicit or (ours[0]["address"] if ours else None) or recorded_address()
    # "auto" lets Ray pick up its auth token for clusters `ray start` made (it does not for an
    # explicit address); a local cluster started here runs without token auth, on loopback.
    use_auto = (explicit is None and (not ours or ours[0]["role"] == "head")) or (
        # the host's own `ray start` head named explicitly (`grid cluster stop` does)
        target == recorded_address() and any(e["address"] == target for e in ours
                                             if e["role"] == "head")
    )
    if target is None or not _answers(target):
        if explicit is not None:
            source = "" if address else " (from RAY_ADDRESS; unset it to use the embedded cluster)"
            raise ClusterError(
                f"no Ray cluster answers at {explicit}{source}; start one with "
                "`grid cluster start`"
            )
        if not start_if_missing:
            raise ClusterError("no Ray cluster is running; start one with `grid cluster start`")
        target, use_auto = start_local(), False
        print(
            f"distributed_grid: no Ray cluster was running; started a local one at {target} "
            "(stop it with `grid cluster stop`)",
            file=sys.stderr,
        )
    _prepare_env_for(target)
    ray = importlib.import_module("ray")
    try:
        ray.init(
            # "auto" for the host's own cluster: Ray then also picks up its auth token, which it
            # does not do for an explicit address (set RAY_AUTH_MODE=token for those).
            address="auto" if use_auto else target,
            namespace=NAMESPACE,
            logging_level="ERROR",
            log_to_driver=False,
            configure_logging=True,
        )
    except (ConnectionError, RuntimeError) as exc:
        raise ClusterError(f"cannot connect to the Ray cluster at {target}: {exc}") from exc
    return target


def cluster_id() -> str:
    """A short identity of the connected cluster (part of every segment name)."""
    import hashlib

    import ray

    session = ray.get_runtime_context().get_session_name()
    return hashlib.sha1(session.encode()).hexdigest()[:12]


# -- starting and stopping ---------------------------------------------------------------------


def start_local(nodes: tuple[str, ...] | list[str] = (), head_name: str | None = None,
                head_cpus: int | None = None, timeout: float = 120) -> str:
    """Start a cluster for this host alone (loopback): a head plus one raylet per name.

    It outlives the caller; ``grid cluster stop`` ends it by the pid of its supervisor.
    Returns the head's address.
    """
    from distributed_grid.memory.store import validate_node_name

    names = [validate_node_name(n) for n in nodes]
    if head_name is not None:
        validate_node_name(head_name)
    if len(set(names + [head_name] if head_name else names)) != len(names) + bool(head_name):
        raise InvalidArgument(f"node names must differ, got {names + [head_name]}")
    ready = os.path.join(state_dir(), f"local-{os.getpid()}-{time.monotonic_ns()}.json")
    cmd = [sys.executable, "-m", "distributed_grid.local_cluster", "--ready-file", ready,
           "--nodes", ",".join(names)]
    if head_name is not None:
        cmd += ["--head-name", head_name]
    if head_cpus is not None:
        cmd += ["--head-cpus", str(head_cpus)]
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env[_LOOPBACK_ENV] = "0"
    log_path = ready.removesuffix(".json") + ".log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    _wait_until(proc, log_path, lambda: os.path.exists(ready), "the local cluster", timeout)
    with open(ready, encoding="utf-8") as f:
        ready_info = json.load(f)
    address = ready_info["address"]
    os.unlink(ready)
    entries = _load_started()
    entries.append({"pid": proc.pid, "role": "local", "name": head_name, "nodes": names,
                    "address": address, "raylets": ready_info["raylets"]})
    _save_started(entries)
    return address


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


def start_worker(address: str, name: str | None = None, num_cpus: int | None = None) -> str:
    """Start a Ray worker node on this host that joins the cluster at ``address``.

    Raises:
        InvalidArgument: ``address`` is a loopback cluster (it takes no workers from outside:
            start it with ``--nodes`` instead).
        ClusterError: no cluster answers at ``address``.
    """
    if _is_loopback(address):
        raise InvalidArgument(
            f"{address} is a cluster for one host on loopback, which Ray lets no worker join; "
            "start it with its nodes instead: grid cluster start --nodes gpu1,gpu2"
        )
    if not _answers(address):
        raise ClusterError(f"no Ray cluster answers at {address}")
    args = [f"--address={address}"]
    if num_cpus is not None:
        args.append(f"--num-cpus={num_cpus}")
    return _start_node(args, name, role="worker", address=address)


def _start_node(args: list[str], name: str | None, role: str, address: str | None = None) -> str:
    """``ray start --block`` in its own session, recorded by pid; returns the head's address."""
    from distributed_grid.memory.store import validate_node_name

    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    cmd = [
        _ray_executable(),
        "start",
        "--block",
        "--disable-usage-stats",
        "--include-dashboard=false",
        *args,
    ]
    if name is not None:
        cmd.append("--labels=" + json.dumps({NODE_LABEL: validate_node_name(name)}))
    log_path = os.path.join(state_dir(), f"ray-{role}-{int(time.time() * 1000)}.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True,
        )
    if role == "head":
        address = _wait_for_head(proc, log_path, args)
    else:
        _wait_until(proc, log_path, _log_says(log_path, "Ray runtime started"), "`ray start`")
    entries = _load_started()
    entries.append({"pid": proc.pid, "role": role, "name": name, "address": address})
    _save_started(entries)
    return address


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


def _wait_for_head(proc: subprocess.Popen, log_path: str, args: list[str]) -> str:
    _wait_until(proc, log_path, _log_says(log_path, "Ray runtime started"), "`ray start`")
    port = next(a.split("=", 1)[1] for a in args if a.startswith("--port="))
    for _ in range(100):
        recorded = recorded_address()
        if recorded and recorded.endswith(":" + port):
            return recorded
        time.sleep(0.1)
    raise ClusterError(f"the Ray head started but did not record its address (log: {log_path})")


def started_here() -> list[dict[str, Any]]:
    """The nodes started on this host by ``grid cluster start`` that are still running."""
    alive = [e for e in _load_started() if _pid_alive(e["pid"])]
    return alive


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_started(address: str | None = None, timeout: float = 60) -> list[dict[str, Any]]:
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
        while _pid_alive(entry["pid"]) and time.monotonic() < deadline:
            _reap(entry["pid"])
            time.sleep(0.2)
        if _pid_alive(entry["pid"]):
            os.kill(entry["pid"], signal.SIGKILL)
            _reap(entry["pid"])
    stopped = {e["pid"] for e in entries}
    _save_started([e for e in _load_started() if e["pid"] not in stopped])
    return entries


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# -- nodes -------------------------------------------------------------------------------------


def nodes(include_dead: bool = False) -> list[NodeInfo]:
    """The cluster's nodes, named by label ``grid.node``, else the config file, else host name.

    Args:
        include_dead: also the nodes that left the cluster, unless a node of the same name is
            back (alive nodes come first).
    """
    import ray

    from distributed_grid.config import node_name_for_host

    raw = [n for n in ray.nodes() if include_dead or n.get("Alive")]
    raw.sort(key=lambda n: (not n.get("Alive"), _HEAD_RESOURCE not in n.get("Resources", {}),
                            n["NodeID"]))
    taken: set[str] = set()
    result = []
    for n in raw:
        labels = n.get("Labels") or {}
        hostname = n.get("NodeManagerHostname") or n.get("NodeManagerAddress", "node")
        name = labels.get(NODE_LABEL) or node_name_for_host(
            hostname, n.get("NodeManagerAddress", "")
        ) or _safe_name(hostname)
        if not n.get("Alive"):
            if name in taken:
                continue  # the node is back, or another of its name was gone before
        else:
            base, i = name, 2
            while name in taken:  # two unlabelled raylets on one host
                name, i = f"{base}-{i}", i + 1
        taken.add(name)
        result.append(
            NodeInfo(
                name=name,
                node_id=n["NodeID"],
                address=n.get("NodeManagerAddress", ""),
                hostname=hostname,
                is_head=_HEAD_RESOURCE in (n.get("Resources") or {}) or bool(
                    n.get("IsHeadNode")
                ),
                alive=bool(n.get("Alive")),
            )
        )
    return result


def _safe_name(hostname: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in hostname).strip("-._")
    return (cleaned or "node")[:64]


def find_node(name: str) -> NodeInfo:
    """The alive node called ``name``.

    Raises:
        NodeUnavailable: the node was part of the cluster but is gone.
        NodeNotFound: no node has that name (the message lists the known ones).
    """
    known = nodes(include_dead=True)
    for node in known:
        if node.name == name and node.alive:
            return node
    if any(node.name == name for node in known):
        raise NodeUnavailable(
            f"node {name} is gone from the cluster: its blocks are lost until it returns"
        )
    names = ", ".join(sorted(n.name for n in known if n.alive)) or "none"
    raise NodeNotFound(f"no node named {name!r} in the cluster; known nodes: {names}")
