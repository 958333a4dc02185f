"""The private Ray APIs of ``distributed_grid/_ray.py``, each called for real: an upgrade of Ray
that changes one of them fails here, by name."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from distributed_grid import _ray, runtime
from distributed_grid.memory.shm import layout


def test_key_value_store_round_trip(remote_pool, unique):
    assert remote_pool.ray.cluster_id == remote_pool.cluster_id  # this process is connected
    _ray.kv_put(unique, b"value \x00 bytes", "distributed_grid_tests")
    assert _ray.kv_get(unique, "distributed_grid_tests") == b"value \x00 bytes"
    _ray.kv_put(unique, b"replaced", "distributed_grid_tests")
    assert _ray.kv_get(unique, "distributed_grid_tests") == b"replaced"
    assert _ray.kv_get(unique + "-missing", "distributed_grid_tests") is None


def test_the_loopback_switch_is_still_a_constant_of_ray():
    import ray._private.ray_constants as ray_constants

    before = ray_constants.ENABLE_RAY_CLUSTER
    try:
        _ray.keep_loopback_addresses()
        assert ray_constants.ENABLE_RAY_CLUSTER is False
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = before


def test_the_one_host_cluster_recorded_its_raylets(cluster_address):
    """``one_host_cluster`` and ``raylet_pid`` started the session's cluster; the pids they gave
    are the raylets of its nodes."""
    (entry,) = [e for e in runtime.started_entries() if e["address"] == cluster_address]
    assert set(entry["raylets"]) == {"head", "gpu1", "gpu2"}
    for pid in entry["raylets"].values():
        with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
            assert f.read().strip() == "raylet"
        assert runtime.process_alive(pid, None)
    record = os.path.join(runtime.runtime_dir(), "started.json")
    assert os.stat(record).st_mode & 0o777 == 0o600
    with open(record, encoding="utf-8") as f:
        assert entry["pid"] in {e["pid"] for e in json.load(f)}


AUTH_CHECK = """
import os, sys
from distributed_grid import _ray
address, token, wrong = sys.argv[1:]
os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=wrong)
import ray  # reads the variables now: from here on only a reload changes what it uses
print(_ray.auth_refusal(address))
os.environ["RAY_AUTH_TOKEN_PATH"] = token
print(_ray.auth_refusal(address))  # still the wrong one: Ray keeps what it loaded
_ray.reload_auth_config()
print(_ray.auth_refusal(address))
"""


def test_auth_is_reloaded_and_a_refusal_is_one_bounded_call(cluster_address, tmp_path):
    """``reload_auth_config`` makes an imported Ray read the token again; ``auth_refusal`` says
    whether the GCS takes it (the session's cluster runs with token auth). In a process of its
    own: reloading Ray's config is for a process that has not connected yet."""
    from distributed_grid.cluster import auth

    wrong = tmp_path / "wrong"
    wrong.write_text("00" * 32)
    done = subprocess.run([sys.executable, "-c", AUTH_CHECK, cluster_address, auth.token_path(),
                           str(wrong)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
    lines = done.stdout.splitlines()
    assert len(lines) == 3, done.stderr
    assert "InvalidAuthToken" in lines[0] and "InvalidAuthToken" in lines[1], lines
    assert lines[2] == "None", lines
    assert "InvalidAuthToken" not in done.stderr  # Ray's warning line is kept off stderr


def test_a_worker_node_joins_and_leaves(remote_pool, cluster_address, tmp_path):
    """``start_worker_node``, ``node_id``, ``raylet_pid`` and ``stop_node``, through the worker
    node process (``python -m distributed_grid.cluster.worker_node``, what ``--private-shm`` nodes
    and
    loopback joins run): its raylet joins the session's cluster, and SIGTERM takes it out."""
    from distributed_grid.cluster import node_process, ray_env

    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(node_process.command(cluster_address, "rayprivate", str(ready),
                                                object_store_memory=100 * 2**20),
                            env={**os.environ, **ray_env.ray_env(join=cluster_address)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode(errors="replace")
            assert time.monotonic() < deadline, "the worker node did not start"
            time.sleep(0.2)
        info = json.loads(ready.read_text())
        with open(f"/proc/{info['raylet_pid']}/comm", encoding="utf-8") as f:
            assert f.read().strip() == "raylet"
        joined = {n.name: n for n in remote_pool.ray.nodes(refresh=True)}["rayprivate"]
        assert joined.alive and joined.node_id == info["node_id"]
        assert info["private_shm"] is False and info["shm"] == layout.shm_identity()
    finally:
        proc.terminate()
        assert proc.wait(timeout=120) == 0
    assert not runtime.process_alive(info["raylet_pid"], None)
