"""A cluster whose worker nodes have a /dev/shm of their own, as the multihost tests start it:
its ``grid``, address and private nodes; a Python client run in a process of its own; what
``grid cluster start`` recorded; waiting for a namespace to empty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from distributed_grid.cluster.namespaces import processes_in
from helpers.grid import FreshGrid

ROOT = Path(__file__).parents[2]


@dataclass
class Cluster:
    """The module's cluster: ``grid`` in its TMPDIR, its address, and its private nodes."""

    grid: FreshGrid
    address: str
    cluster_id: str
    private: dict  # node name -> {"pid", "raylet_pid", "mount_namespace"}

    def shm_of(self, node: str) -> list[str]:
        """The files in the /dev/shm of ``node``'s namespace, seen through its raylet."""
        return sorted(os.listdir(f"/proc/{self.private[node]['raylet_pid']}/root/dev/shm"))

    def python(self, code: str, *args: str, timeout: float = 300) -> dict:
        """Run ``code`` in a new Python process against this cluster; returns the JSON it
        printed last."""
        return run_python(self.grid.env, code, *args, timeout=timeout)


def run_python(env: dict, code: str, *args: str, timeout: float = 300) -> dict:
    """Run ``code`` in a new Python process; returns the last JSON object it printed (Ray may
    print its raylets' warnings to a driver's stdout after it, asynchronously)."""
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT)
    assert done.returncode == 0, f"exit {done.returncode}:\n{done.stdout}\n{done.stderr}"
    printed = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert printed, f"no JSON printed:\n{done.stdout}\n{done.stderr}"
    return json.loads(printed[-1])


def started(grid: FreshGrid) -> list[dict]:
    path = os.path.join(grid.tmp, f"distributed_grid-{os.getuid()}", "started.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def wait_until_empty(namespace: str, timeout: float = 60) -> list[int]:
    """Wait until no process is left in a mount namespace; returns those left at the end."""
    deadline = time.monotonic() + timeout
    while (left := processes_in(namespace)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def records_of(grid: FreshGrid, cluster_id: str) -> list[str]:
    root = os.path.join(grid.tmp, f"distributed_grid-{os.getuid()}")
    return [f"{folder}/{name}" for folder in ("nodes", "clusters")
            for name in (os.listdir(os.path.join(root, folder))
                         if os.path.isdir(os.path.join(root, folder)) else [])
            if name.startswith(cluster_id + ".")]


# A client that reads keys back: argv[1] the cluster's address, argv[2] JSON {key: its SHA-256};
# prints {"checked": how many, "wrong": {key: what it read instead, or the error}}.
CHECK_KEYS = r"""
import hashlib, json, sys
from distributed_grid.memory import MemoryPool

pool = MemoryPool(sys.argv[1])
acked = json.loads(sys.argv[2])
wrong = {}
for key, sha in acked.items():
    try:
        got = hashlib.sha256(pool.read(key)).hexdigest()
    except Exception as exc:
        got = f"{type(exc).__name__}: {exc}"
    if got != sha:
        wrong[key] = got
print(json.dumps({"checked": len(acked), "wrong": wrong}))
"""
