"""The records of this host's nodes and clusters (the runtime folder's ``nodes/`` and
``clusters/``), through which commands find their cluster without Ray: trusted only while the
processes they name live."""

from __future__ import annotations

import os
import subprocess
import sys

from distributed_grid import runtime
from distributed_grid.memory.client.host import HostNodes


def test_records_are_trusted_only_while_their_processes_live(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    me = os.getpid()

    def record(node: str, pid: int, start: int | None, head: bool = False) -> None:
        runtime.write_node_record(runtime.NodeRecord(
            cluster_id="c1", node=node, node_id="x", address="127.0.0.1:7000",
            catalog=f"/dev/shm/dgc.c1.{node}.db", is_head=head, hostname="h", ip="127.0.0.1",
            raylet_pid=pid, raylet_start=start, protocol=3))

    record("alive", me, runtime.process_start(me), head=True)
    record("dead", gone.pid, 1)
    record("reused", me, runtime.process_start(me) + 1)  # same pid, another process
    found = HostNodes.find("localhost:7000")
    assert set(found.alive) == {"alive"} and set(found.dead) == {"dead", "reused"}
    assert not found.complete  # no supervisor recorded the whole cluster
    assert HostNodes.find("127.0.0.1:7001") == HostNodes()
    runtime.write_cluster_record(runtime.ClusterRecord(
        cluster_id="c1", address="127.0.0.1:7000", supervisor_pid=me,
        supervisor_start=runtime.process_start(me), head="alive", nodes=["dead", "reused"]))
    assert HostNodes.find("127.0.0.1:7000").complete
    runtime.write_cluster_record(runtime.ClusterRecord(
        cluster_id="c1", address="127.0.0.1:7000", supervisor_pid=gone.pid,
        supervisor_start=None, head="alive", nodes=[]))
    assert not HostNodes.find("127.0.0.1:7000").complete  # its supervisor is gone
    path = os.path.join(runtime.runtime_dir(), "nodes", "c1.alive.json")
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(runtime.runtime_dir()).st_mode & 0o777 == 0o700
