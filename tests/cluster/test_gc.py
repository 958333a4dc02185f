"""``grid memory gc``: what a killed cluster leaves on the host is found and removed; a live
cluster's files, and another user's, are never touched.

A real cluster is started with ``grid cluster start`` in a private TMPDIR, given a block, then
every process of it is killed with SIGKILL (all of them share the session of its supervisor,
which ``grid cluster start`` starts with ``start_new_session``), so nothing of it survives to
clean up. The session's cluster stays alive throughout, with its records in another TMPDIR.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
from helpers.dev_shm import cluster_files

from distributed_grid import runtime

NOBODY = 65534


def fresh_runtime_dir(fresh) -> str:
    path = os.path.join(fresh.tmp, f"distributed_grid-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def session_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    return int(stat[stat.rindex(b")") + 2 :].split()[3])  # field 6: the session id


def kill_cluster(fresh) -> dict:
    """SIGKILL every process of the cluster ``fresh`` started, again while any is left (a
    process of it may fork between a look at its session and the kill); returns what
    started.json says of it."""
    with open(os.path.join(fresh_runtime_dir(fresh), "started.json"), encoding="utf-8") as f:
        started = json.load(f)
    supervisor = started[0]["pid"]
    raylets = set(started[0]["raylets"].values())

    def members() -> set[int]:
        return {int(p) for p in os.listdir("/proc") if p.isdigit()
                and session_of(int(p)) == supervisor and runtime.process_alive(int(p), None)}

    deadline = time.monotonic() + 60
    killed: set[int] = set()
    targets = members() | {supervisor} | raylets
    while targets or any(runtime.process_alive(pid, None) for pid in killed):
        assert time.monotonic() < deadline, "the cluster's processes did not die"
        for pid in targets:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed |= targets
        time.sleep(0.1)
        targets = members()  # one forked meanwhile is in the session too
    return started[0]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


@pytest.fixture
def foreign_file():
    """A segment-named file of another user (nobody), old enough to be swept were it ours."""
    path = f"/dev/shm/dg.gcother{uuid.uuid4().hex[:8]}.x.0"
    with open(path, "wb") as f:
        f.write(b"not yours")
    os.chown(path, NOBODY, NOBODY)
    os.utime(path, (time.time() - 7200, time.time() - 7200))
    yield path
    os.unlink(path)


def test_gc_removes_a_killed_clusters_files_and_nothing_live(fresh, tmp_path, pool, grid,
                                                             foreign_file):
    live = pool.cluster_id
    live_files = cluster_files(live)
    assert live_files
    folder = fresh_runtime_dir(fresh)
    os.makedirs(os.path.join(folder, "nodes"), mode=0o700, exist_ok=True)
    crashed = os.path.join(folder, "nodes", f"x.y.json.{dead_pid()}.tmp")  # writer gone
    writing = os.path.join(folder, f"started.json.{os.getpid()}.tmp")  # writer alive
    for path in (crashed, writing):
        open(path, "w").close()

    fresh("cluster", "start", "--nodes", "gpu1")
    cid = fresh.remember_cluster()["cluster_id"]
    assert not os.path.exists(crashed)  # the stores removed it when they started
    assert os.path.exists(writing)
    (tmp_path / "data.bin").write_bytes(os.urandom(100_000))
    fresh("memory", "store", "k", "data.bin")
    left = cluster_files(cid)
    assert any(name.startswith(f"dg.{cid}.") for name in left), left
    head = kill_cluster(fresh)["name"]

    dry = json.loads(fresh.out("memory", "gc", "--dry-run", "--json"))
    assert dry["dry_run"] is True
    mine = [f for f in dry["removed"] if f["cluster_id"] == cid]
    assert sorted(f["name"] for f in mine if f["kind"] not in ("node record", "cluster record")
                  ) == left
    assert sorted(f["name"] for f in mine if f["kind"] == "node record") == sorted([
        f"nodes/{cid}.gpu1.json", f"nodes/{cid}.{head}.json"])
    assert [f["name"] for f in mine if f["kind"] == "cluster record"] == [f"clusters/{cid}.json"]
    assert cluster_files(cid) == left  # a dry run removes nothing
    assert live in dry["kept"] and "holds" in dry["kept"][live]  # no record of it here
    assert not [f for f in dry["removed"] if f["cluster_id"] == live]
    assert os.path.basename(foreign_file) not in {f["name"] for f in dry["removed"]}
    table = fresh.out("memory", "gc", "--dry-run")
    assert "would remove" in table and f"dg.{cid}.gpu1.0" in table

    # the session's cluster, seen with its records: kept because its raylets run
    seen = json.loads(grid("memory", "gc", "--dry-run", "--json").stdout)
    assert "raylet" in seen["kept"][live]

    done = fresh("memory", "gc")
    out = done.stdout.decode()
    assert f"dg.{cid}.gpu1.0" in out and "removed" in out
    assert cluster_files(cid) == []
    assert not [n for n in os.listdir(os.path.join(folder, "nodes")) if n.startswith(cid)]
    assert not os.path.exists(os.path.join(folder, "clusters", f"{cid}.json"))
    assert os.path.exists(writing)
    assert os.path.exists(foreign_file) and os.stat(foreign_file).st_uid == NOBODY
    assert set(live_files) <= set(cluster_files(live))  # the live cluster's files, all there
    grid("memory", "list-objects")  # and it still works
    again = json.loads(fresh.out("memory", "gc", "--json"))
    assert not [f for f in again["removed"] if f["cluster_id"] == cid]
    os.unlink(writing)
