"""Several nodes for real: raylets labelled gpu1, gpu2 (and a node that goes away)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers.grid import GRID

from distributed_grid.errors import NodeNotFound

REMOTE = {"DISTRIBUTED_GRID_FORCE_REMOTE": "1"}
BOUND = 120  # seconds a command may take here: its start, Ray's connection, one timed-out call
PUBLISHED = """
import sys
from distributed_grid.memory import MemoryPool
print([b.to_json() for b in MemoryPool(force_remote=True).ray.last_published(sys.argv[1])])
"""


@pytest.mark.parametrize("node", ["head", "gpu1", "gpu2"])
def test_allocation_lands_on_the_named_nodes_store(pool, blocks, node):
    block_id = blocks.new(4096, node=node)
    assert block_id.endswith("_" + node)
    served_by = pool.ray.call(node, "ping")
    assert served_by["node_id"] == pool.ray.node(node).node_id
    assert pool.block_info(block_id).node == node


def test_list_objects_shows_blocks_of_every_node(grid, blocks):
    made = {blocks.new(1024, node=n) for n in ("head", "gpu1", "gpu2")}
    listed = grid.listing()
    assert made <= {b["block_id"] for b in listed}
    assert {b["node"] for b in listed if b["block_id"] in made} == {"head", "gpu1", "gpu2"}


def test_unknown_node_lists_the_known_ones(pool):
    with pytest.raises(NodeNotFound, match="known nodes: .*gpu1.*gpu2"):
        pool.allocate(10, node="gpu7")


def answered(fresh, *args: str) -> subprocess.CompletedProcess:
    """``grid ARGS`` on the remote path: it must end within ``BOUND`` seconds, either well or
    with one error line about gpu3 (a store call waits at most ``METADATA_TIMEOUT``)."""
    done = subprocess.run([GRID, *args], capture_output=True, text=True, timeout=BOUND,
                          env={**fresh.env, **REMOTE})
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and "gpu3" in last, done.stderr
        assert "Traceback" not in done.stderr, done.stderr
    return done


def test_a_node_that_is_gone(fresh, tmp_path):
    fresh("cluster", "start", "--nodes", "gpu1,gpu3")
    fresh.remember_cluster()
    block_id = fresh.out("memory", "allocate", "1MiB", "--node", "gpu3")
    (tmp_path / "f").write_bytes(b"on gpu3")
    fresh("memory", "store", "doomed", tmp_path / "f", "--block-id", block_id)
    keeper = fresh.out("memory", "allocate", "4096", "--node", "gpu1")
    deadline = time.monotonic() + 60  # gpu3's store publishes its blocks a few seconds later
    while "doomed" not in subprocess.run([sys.executable, "-c", PUBLISHED, "gpu3"], env=fresh.env,
                                         capture_output=True, text=True, check=True).stdout:
        assert time.monotonic() < deadline, "gpu3's store never published its block list"
        time.sleep(0.5)

    record = os.path.join(fresh.tmp, f"distributed_grid-{os.getuid()}", "started.json")
    with open(record, encoding="utf-8") as f:
        (entry,) = json.load(f)
    os.kill(entry["raylets"]["gpu3"], signal.SIGKILL)  # a raylet this test's cluster started

    deadline = time.monotonic() + 180
    while True:  # until this host's records and Ray both see gpu3 gone; every call bounded
        status = answered(fresh, "cluster", "status", "--json")
        answered(fresh, "memory", "retrieve", block_id)
        seen = {n["node"] for n in fresh.remember_cluster()["nodes"]}  # this host's records
        seen |= ({n["node"] for n in json.loads(status.stdout)["nodes"]}
                 if status.returncode == 0 else {"gpu3"})  # Ray's view, after its heartbeats
        if "gpu3" not in seen:
            break
        assert time.monotonic() < deadline, "gpu3 is still reported alive"
        time.sleep(1)

    for env in ({}, REMOTE):  # from its catalog on this host; from what it published
        listing = {b["block_id"]: b for b in json.loads(fresh.out("memory", "list-objects",
                                                                  "--json", env=env))}
        assert listing[block_id]["status"] == "lost"
        assert listing[block_id]["keys"] == {"doomed": [[0, 7]]}
        assert listing[keeper]["status"] == "ok"
    for args in (["memory", "retrieve", block_id], ["memory", "allocate", "10", "--node", "gpu3"],
                 ["memory", "deallocate", block_id], ["memory", "retrieve", "doomed"],
                 ["memory", "delete", "doomed"]):
        for env in ({}, REMOTE):
            failed = fresh(*args, check=False, env=env)
            assert failed.returncode == 1
            assert "gpu3 is gone" in failed.stderr.decode().splitlines()[-1], (args, env)


def test_cluster_config_caps_a_node_and_names_an_unlabelled_one(fresh, tmp_path):
    config = tmp_path / "cluster.yaml"
    config.write_text(
        "nodes:\n"
        "  - {name: bignode, host: 127.0.0.1, role: head, memory: 1MiB}\n"
    )
    first = fresh("memory", "allocate", "4096", "--config", config)  # the embedded cluster
    fresh.remember_cluster()
    assert first.stdout.decode().strip() == "block_0_bignode"  # its head carries no label
    line = fresh("memory", "allocate", "1MiB", "--config", config, check=False)
    assert line.returncode == 1
    assert "can hold is 1044480 bytes (node bignode" in line.stderr.decode()
    line = fresh("memory", "allocate", "1MiB", "--node", "bignode", "--config", config, check=False)
    assert "it can hold at most 1044480 more bytes" in line.stderr.decode()
    assert fresh.out("memory", "allocate", "1044480", "--config", config) == "block_1_bignode"
    status = json.loads(fresh.out("cluster", "status", "--json", "--config", config))
    (node,) = status["nodes"]
    assert node["node"] == "bignode" and node["capacity"] == 2**20


def test_malformed_config_names_the_line(fresh, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("nodes:\n  - name: a\n    host: [unclosed\n")
    failed = fresh("memory", "list-objects", "--config", config, check=False)
    assert failed.returncode == 1
    assert "line" in failed.stderr.decode().splitlines()[-1]
    config.write_text("nodes:\n  - {name: a, host: h, role: boss}\n")
    failed = fresh("memory", "list-objects", "--config", config, check=False)
    assert "nodes[0].role must be head or worker" in failed.stderr.decode()


def test_joining_a_loopback_cluster_is_refused_clearly(grid, cluster_address):
    line = grid.fails("cluster", "start", "--address", cluster_address, "--name", "gpu9")
    assert "start it with its nodes instead" in line
    assert "gpu9" not in {n["node"] for n in json.loads(grid("cluster", "status", "--json")
                                                          .stdout)["nodes"]}
