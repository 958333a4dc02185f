"""The files dead clusters left on this host, found and removed: ``grid memory gc``. No Ray.

A cluster ended by ``grid cluster stop`` removes its files. One that was killed (SIGKILL, a
crash, a reboot of Ray without us) leaves them: its segments (``/dev/shm/dg.<cluster id>.*``),
its node catalogs (``dgc.<cluster id>.<node>.db`` with ``-wal`` and ``-shm``), its key
directory (``dgk.<cluster id>.db...``), its records in the runtime directory
(``nodes/<cluster id>.<node>.json``, ``clusters/<cluster id>.json``) and the files its nodes
spilled (``dgs.<cluster id>.*`` in the spill folder each catalog names). The segments are
memory, held until somebody unlinks them.

Which clusters are alive (their files are never touched), checked in this order:

1. one of its node records names a raylet that runs (pid *and* start time), or its cluster
   record names a supervisor that runs;
2. a process of this host has one of its files open or mapped (``/proc/*/fd`` and
   ``/proc/*/maps``; a live store always holds its catalog open);
3. with no record of it at all in this user's runtime directory (it was started with another
   ``TMPDIR`` or ``XDG_RUNTIME_DIR``, or by another version), one of its files changed in the
   last :data:`GRACE_SECONDS`: it may be starting.

Every other cluster with files here is dead and its files go. Files of another user are never
listed or touched (``st_uid``), nor anything that is not a regular file.

Temporary files go too, whatever their cluster: a record is written to ``<name>.<pid>.tmp``
and renamed, and the ready file of ``grid cluster start`` to ``local-<pid>-<n>.json``; once
that pid is gone nobody will rename or read them (a node's store removes just those when it
starts: :func:`distributed_grid.runtime.remove_stale_temp_files`).
"""

from __future__ import annotations

import os
import re
import sqlite3
import stat
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

from distributed_grid.memory.io.spill_files import cluster_files
from distributed_grid.memory.shm.layout import CLUSTER_ID_PATTERN, FILE_KINDS, SHM_DIR
from distributed_grid.runtime import cluster_records, node_records, runtime_dir, stale_temp_files

GRACE_SECONDS = 600.0
_RECORD_KINDS = (  # what it keeps in the runtime directory, by folder
    ("nodes", re.compile(rf"({CLUSTER_ID_PATTERN})\..+\.json"), "node record"),
    ("clusters", re.compile(rf"({CLUSTER_ID_PATTERN})\.json"), "cluster record"),
)


@dataclass(frozen=True)
class LeftFile:
    """A file a cluster (or a process) left on this host.

    ``cluster_id`` is None for a temporary file that belongs to no cluster (``started.json``'s).
    ``kind``: ``segment``, ``catalog``, ``key directory``, ``node record``, ``cluster record``
    or ``temp file``. ``bytes`` is its size.
    """

    cluster_id: str | None
    kind: str
    name: str
    path: str
    bytes: int


@dataclass(frozen=True)
class Sweep:
    """What a sweep removed (or, in a dry run, would remove), and which clusters it kept.

    ``kept`` maps each live cluster with files here to why it counts as alive.
    """

    removed: list[LeftFile]
    kept: dict[str, str] = field(default_factory=dict)
    dry_run: bool = False

    @property
    def bytes(self) -> int:
        """The removed files' bytes."""
        return sum(f.bytes for f in self.removed)

    @property
    def clusters(self) -> list[str]:
        """The clusters whose files were removed."""
        return sorted({f.cluster_id for f in self.removed if f.cluster_id is not None})

    def to_json(self) -> dict[str, Any]:
        """The sweep as plain data (what ``grid memory gc --json`` prints)."""
        return {"dry_run": self.dry_run, "removed": [asdict(f) for f in self.removed],
                "bytes": self.bytes, "clusters": self.clusters, "kept": dict(self.kept)}


def sweep(dry_run: bool = False, grace: float = GRACE_SECONDS) -> Sweep:
    """Remove the files of this host's dead clusters, and stale temporary files.

    Args:
        dry_run: only say what would go.
        grace: seconds a cluster with no record here is kept after its files last changed.
    """
    by_cluster: dict[str, list[LeftFile]] = {}
    for left in [*_shm_files(), *_record_files()]:
        by_cluster.setdefault(str(left.cluster_id), []).append(left)
    held = _held_files() if by_cluster else {}
    now = time.time()
    removed: list[LeftFile] = []
    kept: dict[str, str] = {}
    for cluster_id, files in sorted(by_cluster.items()):
        why = _why_alive(cluster_id, files, held, now, grace)
        if why is not None:
            kept[cluster_id] = why
            continue
        files += _spill_files(cluster_id, files)  # found through its catalogs: before them
        # segments first (the memory), records last: a sweep cut short is resumed by the next
        order = ("segment", "spill file", "catalog", "key directory", "node record",
                 "cluster record")
        removed += _remove(sorted(files, key=lambda f: (order.index(f.kind), f.name)), dry_run)
    removed += _remove(_stale_temp_files(), dry_run)
    return Sweep(removed=removed, kept=kept, dry_run=dry_run)


# -- finding -----------------------------------------------------------------------------------


def _own_regular_file(path: str) -> os.stat_result | None:
    """The file's stat if it is a regular file of this user, else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() else None


def _left(cluster_id: str | None, kind: str, name: str, path: str) -> LeftFile | None:
    st = _own_regular_file(path)
    return None if st is None else LeftFile(cluster_id, kind, name, path, st.st_size)


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _shm_files() -> Iterator[LeftFile]:
    for name in _listdir(SHM_DIR):
        for pattern, kind in FILE_KINDS:
            match = pattern.fullmatch(name)
            if match:
                left = _left(match.group(1), kind, name, os.path.join(SHM_DIR, name))
                if left is not None:
                    yield left
                break


def _record_files() -> Iterator[LeftFile]:
    root = runtime_dir()
    for folder, pattern, kind in _RECORD_KINDS:
        for name in _listdir(os.path.join(root, folder)):
            match = pattern.fullmatch(name)
            if match:
                left = _left(match.group(1), kind, f"{folder}/{name}",
                             os.path.join(root, folder, name))
                if left is not None:
                    yield left


def _spill_files(cluster_id: str, files: list[LeftFile]) -> list[LeftFile]:
    """The files a dead cluster's nodes spilled, in the spill folders their catalogs name."""
    found: list[LeftFile] = []
    for catalog in [f for f in files if f.kind == "catalog" and f.name.endswith(".db")]:
        try:
            db = sqlite3.connect(f"file:{catalog.path}?mode=ro", uri=True, timeout=1)
            try:
                row = db.execute("SELECT value FROM meta WHERE name='spill_dir'").fetchone()
            finally:
                db.close()
        except sqlite3.Error:
            continue  # not a catalog this version reads: its spill files (if any) stay
        if row is None or not isinstance(row[0], str):
            continue
        for name in cluster_files(row[0], cluster_id):
            left = _left(cluster_id, "spill file", name, os.path.join(row[0], name))
            if left is not None and left not in found:
                found.append(left)
    return found


def _stale_temp_files() -> list[LeftFile]:
    """Temporary files of the runtime directory whose writer (the pid in the name) is gone."""
    found = [_left(cluster_id, "temp file", shown, path)
             for cluster_id, shown, path in stale_temp_files()]
    return [left for left in found if left is not None]


def _held_files() -> dict[str, int]:
    """The names of /dev/shm's files that a process of this host has open or mapped, with
    one such process's pid (processes this user may not inspect are skipped).

    Only files of this process's /dev/shm count: a process in a mount namespace with a /dev/shm
    of its own (a node started with ``--private-shm``) names its files with the same paths, but
    they are on another filesystem (another device), not the files swept here.
    """
    prefix = SHM_DIR.rstrip("/") + "/"
    try:
        device = os.stat(SHM_DIR).st_dev
    except OSError:
        return {}
    held: dict[str, int] = {}
    for pid_name in _listdir("/proc"):
        if not pid_name.isdigit():
            continue
        pid = int(pid_name)
        fd_dir = f"/proc/{pid}/fd"
        for fd in _listdir(fd_dir):
            try:
                target = os.readlink(f"{fd_dir}/{fd}")
                if target.startswith(prefix) and os.stat(f"{fd_dir}/{fd}").st_dev == device:
                    held.setdefault(target[len(prefix):].removesuffix(" (deleted)"), pid)
            except OSError:
                continue
        try:
            with open(f"/proc/{pid}/maps", "rb") as f:
                maps = f.read()
        except OSError:
            continue
        for line in maps.splitlines():
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].startswith(prefix.encode()) \
                    and _device(fields[3]) == device:
                name = fields[5][len(prefix):].decode(errors="replace")
                held.setdefault(name.removesuffix(" (deleted)"), pid)
    return held


def _device(field: bytes) -> int | None:
    """The device of a /proc/PID/maps line's ``major:minor`` field (hex), as ``st_dev``."""
    major, _, minor = field.partition(b":")
    try:
        return os.makedev(int(major, 16), int(minor, 16))
    except ValueError:
        return None


# -- deciding ----------------------------------------------------------------------------------


def _why_alive(cluster_id: str, files: list[LeftFile], held: dict[str, int], now: float,
               grace: float) -> str | None:
    """Why the cluster counts as alive (see the module's rules), or None when it is dead."""
    nodes = node_records(cluster_id=cluster_id, alive_only=False)
    for record in nodes:
        if record.alive:
            return f"the raylet of node {record.node} runs (pid {record.raylet_pid})"
    whole = [r for r in cluster_records() if r.cluster_id == cluster_id]
    for record in whole:
        if record.alive:
            return f"its supervisor runs (pid {record.supervisor_pid})"
    for left in files:
        if left.name in held:
            return f"process {held[left.name]} holds {left.name} (open or mapped)"
    if not nodes and not whole:
        ages = [now - st.st_mtime for st in map(_own_regular_file, (f.path for f in files))
                if st is not None]
        if ages and min(ages) < grace:
            return (f"no record of it here, and its files changed {int(min(ages))} s ago "
                    f"(kept for {int(grace)} s)")
    return None


def _remove(files: list[LeftFile], dry_run: bool) -> list[LeftFile]:
    """Unlink the files (checked once more to be this user's); returns those that went."""
    if dry_run:
        return files
    gone = []
    for left in files:
        if _own_regular_file(left.path) is None:
            continue
        try:
            os.unlink(left.path)
        except OSError:  # gone meanwhile, or not ours to remove after all: not listed
            continue
        gone.append(left)
    return gone
