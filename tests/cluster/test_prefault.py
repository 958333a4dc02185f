"""``grid cluster start --prefault`` on a real cluster of this host, as a user types it: the nodes
refill their spares and ``cluster status`` shows them, new blocks take them (bytes exact), a
view of a freed block never shows a later block's bytes (20 rounds through the pool, in a
program of its own), ``cluster stop`` leaves nothing in /dev/shm, and a bad prefault is one
line before anything starts. The node's side without Ray: ``tests/unit/test_spares.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from helpers.dev_shm import cluster_files

MiB = 2**20
PREFAULT = 64 * MiB
REFILL_GUARD = 120.0  # a hang guard, not a measure: refilling 64 MiB takes a fraction of it


def wait_refilled(fresh) -> list[dict]:
    """The nodes' status once every node holds its whole prefault."""
    deadline = time.monotonic() + REFILL_GUARD
    while True:
        nodes = json.loads(fresh.out("cluster", "status", "--json"))["nodes"]
        if all(n["prefault"] == n["prefault_target"] == PREFAULT for n in nodes):
            return nodes
        assert time.monotonic() < deadline, f"the nodes did not refill: {nodes}"
        time.sleep(0.5)


ROUNDS = """
import os, sys, time
import numpy as np
from distributed_grid.memory import MemoryPool

pool = MemoryPool()
def refilled():
    while not all(n.prefault >= n.prefault_target > 0 for n in pool.status().nodes):
        time.sleep(0.2)
size = 4 * 2**20
held = []
for i in range(20):
    refilled()
    a = np.full(size, i % 251, dtype=np.uint8)
    pool.put("a", a, node="gpu1")
    view = pool.get("a")  # zero-copy: the block's own memory
    assert view.base is not None
    held.append((view, i % 251))
    pool.delete("a")
    pool.put("b", np.full(size, 255 - i % 251, dtype=np.uint8), node="gpu1")
    for v, value in held:
        assert v.min() == v.max() == value, (i, value, v.min(), v.max())
    pool.delete("b")
print("rounds ok")
"""


def test_prefault_is_kept_shown_taken_and_gone_with_the_cluster(fresh, tmp_path):
    fresh("cluster", "start", "--nodes", "gpu1", "--prefault", "64MiB")
    cluster_id = fresh.remember_cluster()["cluster_id"]
    nodes = wait_refilled(fresh)
    assert {n["node"] for n in nodes} >= {"gpu1"}
    table = fresh.out("cluster", "status")
    assert "PREFAULT" in table and "64.0 MiB / 64.0 MiB" in table, table
    spares = [f for f in cluster_files(cluster_id) if ".spare" in f]
    assert len(spares) >= 2, spares  # each node's, in /dev/shm

    data = os.urandom(32 * MiB)  # the size of the spares (half the target): one is taken
    (tmp_path / "in.bin").write_bytes(data)
    block_id = fresh.out("memory", "store", "k", tmp_path / "in.bin")
    fresh("memory", "retrieve", "k", "--output", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data
    node = block_id.rsplit("_", 1)[1]
    listed = {n["node"]: n for n in json.loads(fresh.out("cluster", "status", "--json"))["nodes"]}
    assert listed[node]["prefault"] < PREFAULT or listed[node]["blocks"] == 1

    address = json.loads(fresh.out("cluster", "status", "--json"))["address"]
    rounds = subprocess.run([sys.executable, "-c", ROUNDS], capture_output=True, timeout=600,
                            env={**fresh.env, "RAY_ADDRESS": address})
    assert rounds.returncode == 0, rounds.stderr.decode(errors="replace")[-3000:]
    assert b"rounds ok" in rounds.stdout

    fresh("cluster", "stop")
    assert cluster_files(cluster_id) == []  # blocks, spares, catalogs: nothing left


def test_a_bad_prefault_is_one_line_and_starts_nothing(fresh):
    for value, expected in (("-1", "prefault"), ("lots", "prefault")):
        result = fresh("cluster", "start", "--nodes", "gpu1", "--prefault", value, check=False)
        err = result.stderr.decode(errors="replace")
        assert result.returncode != 0 and "Traceback" not in err, err
        (line,) = [x for x in err.splitlines() if x.strip()]
        assert line.startswith("error: ") and expected in line, line
    stopped = fresh("cluster", "stop", "--json", check=False)  # nothing was started to stop
    assert stopped.returncode != 0 or json.loads(stopped.stdout)["stopped_nodes"] == 0
