"""Spilling on a node whose memory is really short: ``grid cluster start --nodes gpu1
--private-shm --shm-size 512MiB --spill-dir DIR --spill-quota 1GiB`` (gpu1's /dev/shm is a 512 MiB
tmpfs of its own; its spill folder is ``DIR/gpu1``, a folder of the test's own). The tests run
in order, on the module's cluster:

1. 14 keys of 64 MiB all store, several spill, every key reads back exact, and the folder never
   holds more than its quota;
2. a Ray task on gpu1 holding a ``get`` view of a key sees the same bytes for 25 s while the
   driver makes the node spill and restore others; that block is never spilled (and once the
   task's process is gone, its pin is too);
3. gpu1's store actor SIGKILLed 5 times while a client spills and restores in a loop: every key
   exact afterwards, and the folder holds exactly the spilled blocks' files;
4. past memory and quota, ``store`` exits 1 with one ``error:`` line (how long it took is
   printed, not asserted), and every earlier key reads back exact;

and when the module ends, ``grid cluster stop`` leaves the spill folder empty.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

import pytest
from helpers.dev_shm import sweep
from helpers.grid import FreshGrid
from helpers.private_cluster import CHECK_KEYS, Cluster, run_python, started, wait_until_empty
from helpers.temp_dirs import remove_temp_dir

from distributed_grid.cluster.namespaces import private_shm_refusal

_REFUSAL = private_shm_refusal()
pytestmark = [
    pytest.mark.multihost,
    pytest.mark.skipif(_REFUSAL is not None or os.geteuid() != 0,
                       reason=f"needs root and a private /dev/shm: {_REFUSAL}"),
]
MiB = 2**20
KEY_SIZE = 64 * MiB
QUOTA = 1024 * MiB


@pytest.fixture(scope="module")
def spilling(tmp_path_factory):
    """The module's cluster (a head and gpu1 with 512 MiB of /dev/shm and a 1 GiB spill
    quota), its spill folder, and the bytes of each key stored (by SHA-256)."""
    grid = FreshGrid(tmp_path_factory.mktemp("spill"))
    folder = tmp_path_factory.mktemp("spill-folder")
    cluster = None
    try:
        out = json.loads(grid.out("cluster", "start", "--nodes", "gpu1", "--private-shm",
                                  "--shm-size", "512MiB", "--name", "head", "--spill-dir",
                                  folder, "--spill-quota", "1GiB", "--json"))
        (entry,) = started(grid)
        cluster = Cluster(grid, out["address"], grid.remember_cluster()["cluster_id"],
                          entry["private"])
        cluster.folder = str(folder / "gpu1")
        cluster.keys = {}
        yield cluster
    finally:
        stop = grid("cluster", "stop", check=False)
        left_running = {name: wait_until_empty(info["mount_namespace"])
                        for name, info in (cluster.private if cluster else {}).items()}
        left = sweep(grid.cluster_id) if grid.cluster_id else []
        in_folder = [os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs]
        remove_temp_dir(grid.tmp)
        assert stop.returncode == 0, stop.stderr
        assert not any(left_running.values()), f"processes left in namespaces: {left_running}"
        assert not left, f"files left in the host's /dev/shm: {left}"
        assert in_folder == [] and os.listdir(folder) == [], "grid cluster stop left spill files"


def listing(cluster: Cluster) -> dict[str, dict]:
    return {b["block_id"]: b for b in json.loads(cluster.grid.out("memory", "list-objects",
                                                                  "--json"))}


def folder_bytes(cluster: Cluster) -> int:
    return sum(os.path.getsize(os.path.join(cluster.folder, f))
               for f in os.listdir(cluster.folder))


def store_key(cluster: Cluster, key: str, path) -> None:
    data = os.urandom(KEY_SIZE)
    path.write_bytes(data)
    cluster.grid("memory", "store", key, path)
    cluster.keys[key] = hashlib.sha256(data).hexdigest()




def check_keys(cluster: Cluster) -> dict:
    return run_python(cluster.grid.env, CHECK_KEYS, cluster.address, json.dumps(cluster.keys),
                      timeout=600)


def test_fourteen_keys_of_64_mib_store_spill_and_read_back_exact(spilling, tmp_path):
    for i in range(14):
        store_key(spilling, f"k{i}", tmp_path / "in.bin")
        assert folder_bytes(spilling) <= QUOTA
    blocks = listing(spilling)
    states = [b["state"] for b in blocks.values()]
    assert states.count("spilled") >= 4 and states.count("memory") >= 2, states
    assert all(b["node"] == "gpu1" for b in blocks.values())
    status = {n["node"]: n for n in json.loads(spilling.grid.out("cluster", "status",
                                                                  "--json"))["nodes"]}
    gpu1 = status["gpu1"]
    assert gpu1["spill_dir"] == spilling.folder and gpu1["spill_quota"] == QUOTA
    assert gpu1["spilled_blocks"] == states.count("spilled")
    assert gpu1["spilled_bytes"] == states.count("spilled") * KEY_SIZE == folder_bytes(spilling)
    assert gpu1["block_bytes"] == states.count("memory") * KEY_SIZE
    assert check_keys(spilling) == {"checked": 14, "wrong": {}}
    assert folder_bytes(spilling) <= QUOTA


HOLD_VIEW = r"""
import hashlib, json, sys, time
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from distributed_grid.errors import InvalidArgument
from distributed_grid.memory import MemoryPool

address, key, others, seconds = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), 25.0
pool = MemoryPool(address)
gpu1 = next(n.node_id for n in pool.nodes() if n.name == "gpu1")


@ray.remote(num_cpus=0)
class Holder:
    def take(self, key):
        from distributed_grid.memory import MemoryPool
        self.array = MemoryPool().get(key)  # a zero-copy view: this process is on gpu1
        self.first = hashlib.sha256(self.array).hexdigest()
        return {"writable": bool(self.array.flags.writeable), "sha": self.first}

    def watch(self, seconds):
        seen = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            seen.append(hashlib.sha256(self.array).hexdigest())
            time.sleep(0.5)
        return seen


holder = Holder.options(scheduling_strategy=NodeAffinitySchedulingStrategy(gpu1, soft=False),
                        max_restarts=0).remote()
taken = ray.get(holder.take.remote(key), timeout=120)
watching = holder.watch.remote(seconds)
block = pool.find_key(key).block_id
counted = []
pool.spill(others[0], progress=counted.append)  # gpu1 is another host's: progress is asked for
states, moves, refused = set(), 0, []
end = time.monotonic() + seconds
i = 0
while time.monotonic() < end:
    other = others[i % len(others)]
    pool.spill(other)
    pool.restore(others[(i + 3) % len(others)])
    moves += 2
    states.add(pool.block_info(block).state)
    try:
        pool.spill(key)
    except InvalidArgument as exc:
        refused.append(str(exc))
    i += 1
seen = ray.get(watching, timeout=120)
ray.kill(holder)  # its process goes, and its pin with it
time.sleep(2)
after = pool.spill(key).state
pool.restore(key)
print(json.dumps({"taken": taken, "seen": seen, "states": sorted(states), "moves": moves,
                  "progress": sum(counted),
                  "refused": len(refused), "why": refused[:1], "after": after}))
"""


def test_a_ray_task_holding_a_view_keeps_its_bytes_while_others_spill(spilling):
    others = [k for k in spilling.keys if k != "k13"]
    done = spilling.python(HOLD_VIEW, spilling.address, "k13", json.dumps(others),
                           timeout=400)
    assert done["taken"] == {"writable": True, "sha": spilling.keys["k13"]}
    assert len(done["seen"]) >= 40 and set(done["seen"]) == {spilling.keys["k13"]}
    assert done["states"] == ["memory"]  # never spilled while viewed
    assert done["moves"] >= 10, done  # the node really spilled and restored meanwhile
    assert done["refused"] >= 1 and "holds a view" in done["why"][0]
    assert done["after"] == "spilled"  # the task's process gone: no pin left
    assert done["progress"] == KEY_SIZE  # a spill on another host's node shows its progress
    assert check_keys(spilling) == {"checked": 14, "wrong": {}}


SPILL_AND_KILL = r"""
import json, os, signal, sys, threading, time
import ray
from distributed_grid.errors import GridError
from distributed_grid.memory import MemoryPool

address, keys = sys.argv[1], json.loads(sys.argv[2])
pool = MemoryPool(address)
pool.nodes()  # connects this process to the cluster (before Ray is asked for anything)
store = ray.get_actor("store.gpu1", namespace="distributed_grid")
done, errors, stop = [0], [], threading.Event()


def churn():
    i = 0
    while not stop.is_set():
        key = keys[i % len(keys)]
        try:
            (pool.spill if i % 2 == 0 else pool.restore)(key)
            done[0] += 1
        except GridError as exc:
            errors.append(type(exc).__name__)
            time.sleep(0.2)
        i += 1


def store_pid():
    deadline = time.monotonic() + 120
    while True:
        try:
            return ray.get(store.ping.remote(), timeout=10)["pid"]
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


worker = threading.Thread(target=churn)
worker.start()
killed = []
for _ in range(5):
    time.sleep(3)
    pid = store_pid()
    os.kill(pid, signal.SIGKILL)
    killed.append(pid)
    time.sleep(1)
time.sleep(3)
stop.set()
worker.join()
store_pid()  # back again
print(json.dumps({"killed": killed, "moves": done[0], "errors": sorted(set(errors))}))
"""


def test_the_store_actor_killed_five_times_while_spilling_and_restoring(spilling):
    done = spilling.python(SPILL_AND_KILL, spilling.address, json.dumps(list(spilling.keys)),
                           timeout=600)
    assert len(set(done["killed"])) == 5 and done["moves"] >= 5, done
    assert check_keys(spilling) == {"checked": 14, "wrong": {}}
    time.sleep(3)  # the last restart's reconcile, and any move a retry was finishing
    blocks = listing(spilling).values()
    spilled = [b for b in blocks if b["state"] == "spilled"]
    files = os.listdir(spilling.folder)
    assert not [f for f in files if f.endswith(".tmp")], files
    assert len(files) == len(spilled), (files, [b["block_id"] for b in spilled])
    assert all(b["state"] in ("memory", "spilled") for b in blocks)


def test_past_memory_and_quota_store_fails_with_one_line_and_keeps_every_key(
        spilling, tmp_path):
    data = tmp_path / "in.bin"
    for i in range(14, 40):
        data.write_bytes(os.urandom(KEY_SIZE))
        began = time.monotonic()
        done = spilling.grid("memory", "store", f"k{i}", data, check=False)
        took = time.monotonic() - began
        if done.returncode != 0:
            break
        spilling.keys[f"k{i}"] = hashlib.sha256(data.read_bytes()).hexdigest()
        assert folder_bytes(spilling) <= QUOTA
    else:
        pytest.fail("memory and the quota never ran out")
    lines = done.stderr.decode().strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), lines
    assert "quota" in lines[0] and "Traceback" not in done.stderr.decode()
    print(f"refused after {len(spilling.keys)} keys, in {took:.2f} s: {lines[0]}")  # no clock
    assert f"k{i}" not in {k for b in listing(spilling).values() for k in b["keys"]}
    assert folder_bytes(spilling) <= QUOTA
    assert check_keys(spilling) == {"checked": len(spilling.keys), "wrong": {}}
