"""Replicated blocks on nodes with memory of their own, whose nodes really die: a SIGKILL of a
worker's raylet takes its /dev/shm with it. The module's cluster is a head (the host's
/dev/shm) and four workers (gpu1..gpu4, 1 GiB of private /dev/shm each); its tests run in order,
each killing a node the ones before left alive:

1. copies go to distinct workers; impossible counts are refused with one line;
2. a retrieve whose serving node dies mid-transfer completes with exact bytes; the block is
   repaired; the node comes back under its name, takes new blocks, serves nothing stale;
3. a client stores 1 MiB keys with 2 copies in a loop while a node dies: no acknowledged key is
   lost or wrong, at once and after the repair; then a second node dies: still none.

Every client runs in a process of its own (a process reaches one Ray cluster).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.dev_shm import sweep
from helpers.grid import FreshGrid
from helpers.private_cluster import (
    CHECK_KEYS,
    ROOT,
    Cluster,
    run_python,
    started,
    wait_until_empty,
)
from helpers.temp_dirs import remove_temp_dir

from distributed_grid.cluster.namespaces import private_shm_refusal

_REFUSAL = private_shm_refusal()
pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(_REFUSAL is not None or os.geteuid() != 0,
                       reason=f"needs root and a private /dev/shm: {_REFUSAL}"),
]
WORKERS = ("gpu1", "gpu2", "gpu3", "gpu4")
REPAIRED_WITHIN = 120.0  # seconds the issue allows for every block to have its copies again


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    """The module's cluster, and ``grid`` runs of nodes that joined it later (stopped too)."""
    grid = FreshGrid(tmp_path_factory.mktemp("replicas"))
    cluster = None
    joined: list[FreshGrid] = []
    try:
        out = json.loads(grid.out("cluster", "start", "--nodes", ",".join(WORKERS),
                                  "--private-shm", "--shm-size", "1GiB", "--name", "head",
                                  "--json"))
        (entry,) = started(grid)
        cluster = Cluster(grid, out["address"], grid.remember_cluster()["cluster_id"],
                          entry["private"])
        cluster.joined = joined
        yield cluster
    finally:
        stops = [g("cluster", "stop", check=False) for g in [*joined, grid]]
        left_running = {name: wait_until_empty(info["mount_namespace"])
                        for name, info in (cluster.private if cluster else {}).items()}
        left = sweep(grid.cluster_id) if grid.cluster_id else []
        for g in [*joined, grid]:
            remove_temp_dir(g.tmp)
        assert all(s.returncode == 0 for s in stops), [s.stderr for s in stops]
        assert not any(left_running.values()), f"processes left in namespaces: {left_running}"
        assert not left, f"files left in the host's /dev/shm: {left}"


def listing(cluster: Cluster) -> dict[str, dict]:
    return {b["block_id"]: b for b in json.loads(cluster.grid.out("memory", "list-objects",
                                                                  "--json"))}


def kill(cluster: Cluster, node: str) -> None:
    """SIGKILL the node's raylet; its node process then ends what ran in its namespace, and
    its memory goes."""
    os.kill(cluster.private[node]["raylet_pid"], signal.SIGKILL)


def wait_declared_dead(cluster: Cluster, node: str) -> None:
    """Wait until the cluster no longer lists ``node`` among its live nodes (Ray declared it
    dead)."""
    began = time.monotonic()
    while node in {n["node"] for n in json.loads(cluster.grid.out("cluster", "status",
                                                                  "--json"))["nodes"]}:
        assert time.monotonic() - began < 180, f"Ray never declared {node} dead"
        time.sleep(0.5)


def wait_repaired(cluster: Cluster, dead: set[str], copies: int = 2) -> float:
    """Wait until every replicated block has ``copies`` live copies, none on ``dead``;
    returns how long it took."""
    began = time.monotonic()
    while True:
        blocks = [b for b in listing(cluster).values() if b.get("replica_of")]
        short = [b for b in blocks if len(b["replicas"]) < copies or b["status"] != "ok"
                 or set(b["replicas"]) & dead]
        if not short:
            return time.monotonic() - began
        assert time.monotonic() - began < REPAIRED_WITHIN, short[:3]
        time.sleep(1)


def test_copies_go_to_distinct_workers_and_impossible_counts_are_refused(nodes, tmp_path):
    grid = nodes.grid
    (tmp_path / "in.bin").write_bytes(os.urandom(2**20))
    stored = json.loads(grid.out("memory", "store", "two", tmp_path / "in.bin", "--replicas",
                                 "2", "--json"))
    assert len(set(stored["replicas"])) == 2 and set(stored["replicas"]) <= set(WORKERS)
    assert listing(nodes)[stored["block_id"]]["replicas"] == stored["replicas"]
    three = json.loads(grid.out("memory", "allocate", "4MiB", "--replicas", "3", "--node",
                                "gpu2", "--json"))
    assert three["replicas"][0] == "gpu2" and len(set(three["replicas"])) == 3
    assert "head" not in three["replicas"]
    before = listing(nodes)
    for copies in ("9", "0"):
        refused = grid("memory", "allocate", "4MiB", "--replicas", copies, check=False)
        lines = refused.stderr.decode().strip().splitlines()
        assert refused.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: ")
    assert listing(nodes) == before
    grid("memory", "deallocate", three["block_id"])
    grid("memory", "delete", "two")


READ_AND_KILL = r"""
import hashlib, json, os, signal, sys
from distributed_grid.memory import MemoryPool

address, key, out, raylets = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
pool = MemoryPool(address)
serving = pool.find_key(key).block.node  # the copy the read takes first
seen, killed = [0], []

def progress(n):
    seen[0] += n
    if seen[0] >= 96 * 2**20 and not killed:
        os.kill(raylets[serving], signal.SIGKILL)  # mid-transfer
        killed.append(serving)

result = pool.retrieve_to_file(key, out, progress=progress)
digest = hashlib.sha256(open(out, "rb").read()).hexdigest()
print(json.dumps({"killed": killed, "bytes": result.bytes, "sha": digest, "seen": seen[0]}))
"""


def test_a_retrieve_fails_over_when_its_node_dies_and_the_node_comes_back_clean(
        nodes, tmp_path):
    grid = nodes.grid
    data = os.urandom(384 * 2**20)
    (tmp_path / "big.bin").write_bytes(data)
    stored = json.loads(grid.out("memory", "store", "big", tmp_path / "big.bin", "--replicas",
                                 "2", "--json"))
    raylets = {n: info["raylet_pid"] for n, info in nodes.private.items()}
    done = nodes.python(READ_AND_KILL, nodes.address, "big", str(tmp_path / "out.bin"),
                        json.dumps(raylets), timeout=400)
    (dead,) = done["killed"]
    assert dead in stored["replicas"]
    assert done["bytes"] == len(data)
    assert done["sha"] == hashlib.sha256(data).hexdigest()
    assert done["seen"] == len(data)  # progress counted each byte once, across the copies
    (tmp_path / "out.bin").unlink()
    assert wait_until_empty(nodes.private[dead]["mount_namespace"]) == []

    took = wait_repaired(nodes, {dead})
    print(f"repaired 384 MiB in {took:.1f} s")
    entry = listing(nodes)[stored["block_id"]]
    assert dead not in entry["replicas"] and len(entry["replicas"]) == 2

    # the node comes back under its name, as after a reboot: new memory, nothing of before
    again = rejoin(nodes, tmp_path, dead)
    block = again.out("memory", "allocate", "1MiB", "--node", dead)
    assert block.endswith(f"_{dead}")
    grid("memory", "retrieve", "big", "--output", tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == data
    assert dead not in listing(nodes)[stored["block_id"]]["replicas"]
    grid("memory", "deallocate", block)
    grid("memory", "delete", "big")


def rejoin(nodes: Cluster, tmp_path: Path, name: str) -> FreshGrid:
    """``grid cluster start --address ... --name NAME --private-shm`` from another "machine"
    (its own TMPDIR, with the head's token copied as docs/operations.md says)."""
    worker = FreshGrid(tmp_path)
    nodes.joined.append(worker)
    folder = os.path.join(worker.tmp, f"distributed_grid-{os.getuid()}")
    os.makedirs(folder, mode=0o700, exist_ok=True)
    token = os.path.join(folder, "auth_token")
    shutil.copy(os.path.join(nodes.grid.tmp, f"distributed_grid-{os.getuid()}",
                             "auth_token"), token)
    os.chmod(token, 0o600)
    worker("cluster", "start", "--address", nodes.address, "--name", name, "--private-shm",
           "--shm-size", "1GiB")
    (entry,) = started(worker)
    nodes.private[name] = entry["private"][name]
    return worker


STORE_IN_A_LOOP = r"""
import hashlib, json, os, sys
import numpy as np
from distributed_grid.errors import GridError
from distributed_grid.memory import MemoryPool

address, log, stop, most = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pool = MemoryPool(address)
with open(log, "a") as out:
    for i in range(most):
        if os.path.exists(stop):
            break
        data = os.urandom(2**20)
        try:
            result = pool.put(f"loop{i}", np.frombuffer(data, np.uint8), replicas=2)
        except GridError as exc:  # not acknowledged: may be anything, or nothing
            print(json.dumps({"key": f"loop{i}", "error": str(exc)}), file=out, flush=True)
            continue
        print(json.dumps({"key": f"loop{i}", "sha": hashlib.sha256(data).hexdigest(),
                          "replicas": result.block.replicas}), file=out, flush=True)
print(json.dumps({"done": True}))
"""



def acknowledged(log: Path) -> dict[str, dict]:
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return {r["key"]: r for r in rows if "sha" in r}


def test_a_node_dies_under_a_writing_client_and_no_acknowledged_key_is_lost(nodes, tmp_path):
    log, stop = tmp_path / "acked.jsonl", tmp_path / "stop"
    log.touch()
    writer = subprocess.Popen([sys.executable, "-c", STORE_IN_A_LOOP, nodes.address, str(log),
                               str(stop), "400"], env=nodes.grid.env, cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while len(acknowledged(log)) < 30:
            assert writer.poll() is None, writer.communicate()
            assert time.monotonic() < deadline, "the writer acknowledged too few keys"
            time.sleep(0.2)
        victim = next(n for n in ("gpu2", "gpu3", "gpu4", "gpu1")
                      if any(n in r["replicas"] for r in acknowledged(log).values()))
        kill(nodes, victim)
        killed = time.monotonic()
        held = len(acknowledged(log))
        while len(acknowledged(log)) < held + 30:  # the client goes on writing
            assert writer.poll() is None, writer.communicate()
            assert time.monotonic() < deadline + 120, "the writer stopped after the kill"
            time.sleep(0.2)
        stop.touch()
        out, err = writer.communicate(timeout=300)
        assert writer.returncode == 0, err
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    acked = acknowledged(log)
    on_dead = {k: r["sha"] for k, r in acked.items() if victim in r["replicas"]}
    assert on_dead, "no acknowledged key had a copy on the node killed"
    at_once = run_python(nodes.grid.env, CHECK_KEYS, nodes.address, json.dumps(on_dead))
    assert at_once["wrong"] == {}, at_once  # read from the other copy, at once

    wait_declared_dead(nodes, victim)
    declared = time.monotonic() - killed
    wait_repaired(nodes, {victim})
    print(f"{len(acked)} keys acknowledged; {victim} declared dead {declared:.1f} s after its "
          f"kill, every block back to 2 copies {time.monotonic() - killed:.1f} s after it")
    everything = {k: r["sha"] for k, r in acked.items()}
    after = run_python(nodes.grid.env, CHECK_KEYS, nodes.address, json.dumps(everything))
    assert after == {"checked": len(acked), "wrong": {}}

    second = next(n for n in WORKERS if n != victim and
                  any(n in b["replicas"] for b in listing(nodes).values()))
    kill(nodes, second)
    killed = time.monotonic()
    still = run_python(nodes.grid.env, CHECK_KEYS, nodes.address, json.dumps(everything))
    assert still == {"checked": len(acked), "wrong": {}}
    wait_declared_dead(nodes, second)
    declared = time.monotonic() - killed
    wait_repaired(nodes, {victim, second})
    print(f"{second} declared dead {declared:.1f} s after its kill, every block back to 2 "
          f"copies {time.monotonic() - killed:.1f} s after it")
