"""This host's records of clusters and nodes, kept in the user's runtime directory; no Ray.

Three kinds of file, each mode 0600 in a folder only the user can enter:

- ``started.json``: the Ray processes ``grid cluster start`` (or the embedded default) started
  on this host, by pid, so ``grid cluster stop`` ends exactly those. Every change to it is made
  under ``started.lock`` (a ``filelock`` beside it), so concurrent starts lose no entry; a
  corrupt one is an error, not an empty record.
- ``nodes/<cluster id>.<node>.json``: written by a node's store when it starts: which cluster and
  node it serves, where the node's catalog is, which raylet runs the node, and which shared
  memory its /dev/shm is (``shm_identity`` of ``memory/shm/layout.py``). A process that sees
  the same /dev/shm reads them to reach the node's blocks without Ray; for any other (a node
  started with a private /dev/shm, or a process inside one) the record names another host's
  memory.
- ``clusters/<cluster id>.json``: written by the supervisor of a cluster that lives on this host
  alone (loopback): all its nodes. With it, a command can know it needs no other host.

A record is trusted only while the process it names is alive, checked by pid *and* start time
(a pid the kernel has handed to another process does not count), so a dead cluster's files are
never believed. The folder is ``$XDG_RUNTIME_DIR/distributed_grid`` when that is set, else
``$TMPDIR/distributed_grid-<uid>`` (``/tmp`` without TMPDIR). It also holds the clusters' auth
token (:mod:`distributed_grid.cluster.auth`), the logs of the Ray processes started here and their
Ray temp folder ``ray/`` (Ray makes its session folders world-writable; inside this one nobody
else reaches them), unless its path is too long for Ray's sockets
(:func:`distributed_grid.cluster.ray_env.ray_temp_dir`).
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from distributed_grid.errors import ClusterError

# -- the folder --------------------------------------------------------------------------------


def runtime_dir() -> str:
    """This user's folder for the host's records (made on first use, mode 0700).

    Raises:
        ClusterError: the folder is not a folder of this user's (in a shared /tmp another
            user could have made it first): nothing is written there.
    """
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    if xdg:
        path = os.path.join(xdg, "distributed_grid")
    else:
        # TMPDIR is read each time (tempfile caches its first answer), so a process that changes
        # it, like the test session, gets records of its own.
        base = os.environ.get("TMPDIR") or tempfile.gettempdir()
        path = os.path.join(base, f"distributed_grid-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ClusterError(f"the runtime folder {path} is not a folder of this user's; "
                           "remove it or set TMPDIR to a private folder", path=path)
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


_TEMP = re.compile(r".+\.([0-9]+)\.tmp")  # what _write_json writes, then renames
# the ready file a cluster's start waits for (``local-<pid>-<n>.json``, written aside first)
_READY = re.compile(r"local-([0-9]+)-[0-9]+\.json(\.tmp)?")


def _write_json(path: str, data: Any) -> None:
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
    os.replace(tmp, path)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def stale_temp_files() -> list[tuple[str | None, str, str]]:
    """The runtime folder's temporary files whose writer (the pid in the name) is gone: a
    record written aside and never renamed, a ready file nobody will read. Each is
    ``(cluster id or None, name as shown, path)``."""
    root = runtime_dir()
    found = []
    for folder in ("", "nodes", "clusters"):
        try:
            names = sorted(os.listdir(os.path.join(root, folder)))
        except OSError:
            continue
        for name in names:
            match = _TEMP.fullmatch(name) or (_READY.fullmatch(name) if not folder else None)
            if match is None or process_alive(int(match.group(1)), None):
                continue
            cluster_id = name.split(".", 1)[0] if folder else None
            shown = f"{folder}/{name}" if folder else name
            found.append((cluster_id, shown, os.path.join(root, folder, name)))
    return found


def remove_stale_temp_files() -> list[str]:
    """Remove :func:`stale_temp_files` (a node's store does when it starts); returns their
    paths."""
    gone = []
    for _, _, path in stale_temp_files():
        try:
            os.unlink(path)
        except OSError:  # gone meanwhile
            continue
        gone.append(path)
    return gone


# -- processes ---------------------------------------------------------------------------------


def _proc_stat(pid: int) -> tuple[bytes, int] | None:
    """``(state, start time)`` of process ``pid`` from /proc, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: count from the last ')'
    fields = stat[stat.rindex(b")") + 2 :].split()
    return fields[0], int(fields[19])  # fields 3 (state) and 22 (starttime, ticks since boot)


def process_start(pid: int) -> int | None:
    """When process ``pid`` started (clock ticks since boot), or None if there is none."""
    stat = _proc_stat(pid)
    return None if stat is None else stat[1]


def process_alive(pid: int, start: int | None) -> bool:
    """Whether process ``pid`` runs (not a zombie) and is the one that started at ``start``."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] != b"Z" and (start is None or stat[1] == start)


_THIS: tuple[int, str] | None = None


def this_process() -> str:
    """This process as ``host/pid/start``: who a catalog names as a block's creator or writer
    (worked out once per process: it reads /proc)."""
    global _THIS
    pid = os.getpid()
    if _THIS is None or _THIS[0] != pid:  # a forked child is another process
        _THIS = (pid, f"{socket.gethostname()}/{pid}/{process_start(pid)}")
    return _THIS[1]


def identity_alive(identity: str) -> bool | None:
    """Whether the process ``host/pid/start`` is alive; None when it is on another host."""
    host, _, rest = identity.partition("/")
    pid, _, start = rest.partition("/")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return process_alive(int(pid), int(start) if start.isdigit() else None)


# -- what grid started here --------------------------------------------------------------------


def _started_path() -> str:
    return os.path.join(runtime_dir(), "started.json")


@contextmanager
def _started_locked() -> Iterator[str]:
    """Hold the lock of ``started.json`` (two ``grid cluster start`` at once would each write
    back what they read, and one entry would be lost); yields the record's path."""
    from filelock import FileLock  # 50 ms to import: only the commands that change the record

    path = _started_path()
    with FileLock(os.path.join(os.path.dirname(path), "started.lock"), mode=0o600):
        yield path


def _read_started(path: str) -> list[dict[str, Any]]:
    """The entries of ``started.json`` (none if there is no file).

    Raises:
        ClusterError: the file is not a list of entries with a pid, a role and an address.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise ClusterError(f"cannot read {path}: {exc.strerror}", path=path) from exc
    try:
        entries = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        entries = None
    if not isinstance(entries, list) or not all(
            isinstance(e, dict) and isinstance(e.get("pid"), int) and "role" in e
            and "address" in e for e in entries):
        raise ClusterError(
            f"{path} is corrupt: it should list the Ray processes `grid cluster start` started "
            "on this host, so `grid cluster stop` cannot know what to stop; end them yourself "
            "(`ps -ef | grep ray`), then move the file away", path=path)
    return entries


def started_entries(alive_only: bool = True) -> list[dict[str, Any]]:
    """The Ray processes ``grid cluster start`` started on this host (those still running).

    Raises:
        ClusterError: the record is corrupt (its message names the file and what to do).
    """
    entries = _read_started(_started_path())
    return [e for e in entries if not alive_only or process_alive(e["pid"], e.get("start"))]


def record_started(entry: dict[str, Any]) -> None:
    """Add a started process (``pid`` plus what it is) to the record."""
    entry = {**entry, "start": process_start(entry["pid"])}
    with _started_locked() as path:
        _write_json(path, [*_read_started(path), entry])


def forget_started(pids: set[int]) -> None:
    """Drop processes from the record (they were stopped)."""
    with _started_locked() as path:
        _write_json(path, [e for e in _read_started(path) if e["pid"] not in pids])


# -- nodes and clusters ------------------------------------------------------------------------


def same_address(a: str | None, b: str | None) -> bool:
    """Whether two ``HOST:PORT`` addresses name the same place (``localhost`` is 127.0.0.1)."""
    def norm(address: str) -> str:
        host, _, port = address.removeprefix("ray://").rpartition(":")
        return f"{'127.0.0.1' if host in ('localhost', '::1') else host}:{port}"

    return a is not None and b is not None and norm(a) == norm(b)


@dataclass(frozen=True)
class NodeRecord:
    """A node whose store runs on this host, as the store wrote it when it started."""

    cluster_id: str
    node: str
    node_id: str
    address: str  # the cluster's GCS address
    catalog: str
    is_head: bool
    hostname: str
    ip: str
    raylet_pid: int
    raylet_start: int | None
    protocol: int
    directory: str | None = None  # the key directory's file, on the head's host
    shm: str | None = None  # which /dev/shm the store's is (layout.shm_identity); None: older

    @property
    def alive(self) -> bool:
        """Whether the node's raylet still runs (the node is part of a live cluster)."""
        return process_alive(self.raylet_pid, self.raylet_start)


@dataclass(frozen=True)
class ClusterRecord:
    """A cluster that lives on this host alone, as its supervisor wrote it."""

    cluster_id: str
    address: str
    supervisor_pid: int
    supervisor_start: int | None
    head: str
    nodes: list[str] = field(default_factory=list)  # the worker nodes, head excluded

    @property
    def alive(self) -> bool:
        return process_alive(self.supervisor_pid, self.supervisor_start)


def _node_path(cluster_id: str, node: str) -> str:
    return os.path.join(runtime_dir(), "nodes", f"{cluster_id}.{node}.json")


def _cluster_path(cluster_id: str) -> str:
    return os.path.join(runtime_dir(), "clusters", f"{cluster_id}.json")


def write_node_record(record: NodeRecord) -> None:
    _write_json(_node_path(record.cluster_id, record.node), asdict(record))


def write_cluster_record(record: ClusterRecord) -> None:
    _write_json(_cluster_path(record.cluster_id), asdict(record))


def _records(folder: str, cls: type) -> list[Any]:
    path = os.path.join(runtime_dir(), folder)
    try:
        names = sorted(os.listdir(path))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        data = _read_json(os.path.join(path, name)) if name.endswith(".json") else None
        if isinstance(data, dict):
            try:
                found.append(cls(**data))
            except TypeError:
                continue  # written by another version: not ours to trust
    return found


def node_records(address: str | None = None, cluster_id: str | None = None,
                 alive_only: bool = True) -> list[NodeRecord]:
    """The nodes of this host's stores (of one cluster, by address or id), alive ones only."""
    return [r for r in _records("nodes", NodeRecord)
            if (address is None or same_address(r.address, address))
            and (cluster_id is None or r.cluster_id == cluster_id)
            and (not alive_only or r.alive)]


def cluster_record(address: str) -> ClusterRecord | None:
    """The live one-host cluster at ``address``, if its supervisor runs on this host."""
    for record in _records("clusters", ClusterRecord):
        if same_address(record.address, address) and record.alive:
            return record
    return None


def cluster_records() -> list[ClusterRecord]:
    """Every one-host cluster recorded on this host, alive or not."""
    return _records("clusters", ClusterRecord)


def forget_cluster(cluster_id: str) -> None:
    """Remove the records of a cluster (it was stopped)."""
    _remove(_cluster_path(cluster_id))
    for record in _records("nodes", NodeRecord):
        if record.cluster_id == cluster_id:
            _remove(_node_path(cluster_id, record.node))
