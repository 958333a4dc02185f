"""The private Ray APIs of ``distributed_grid/_ray.py``, each called for real: an upgrade of Ray
that changes one of them fails here, by name."""

from __future__ import annotations

import json
import os

from distributed_grid import _ray, runtime


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
