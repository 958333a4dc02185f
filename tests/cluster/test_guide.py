"""The user guide's walkthroughs (the `grid memory` command lines it shows, copied here), run
verbatim on fresh clusters.

Block ids such as ``block_0_gpu2`` in the guide assume a new cluster, so each walkthrough gets
one of its own, started and stopped with ``grid cluster start --nodes gpu1,gpu2`` and
``grid cluster stop`` in a private TMPDIR (which also tests those two commands). The embedded
default (a cluster started by the first ``grid memory`` command) is tested the same way.
"""

from __future__ import annotations

import json
import os


def make(path, size: int, seed: int) -> bytes:
    data = (bytes([seed]) + os.urandom(31)) * (size // 32) + b"\x07" * (size % 32)
    path.write_bytes(data)
    return data


def test_embedded_cluster_starts_on_first_use(fresh):
    first = fresh("memory", "allocate", "1MiB")
    assert "started a local one" in first.stderr.decode()
    block_id = first.stdout.decode().strip()
    fresh.remember_cluster()
    listing = json.loads(fresh.out("memory", "list-objects", "--json"))
    assert [b["block_id"] for b in listing] == [block_id]
    again = fresh("memory", "list-objects")
    assert "started a local one" not in again.stderr.decode()


def test_guide_commands_and_pipeline_and_inter_node(fresh, tmp_path):
    assert fresh.out("cluster", "start", "--nodes", "gpu1,gpu2").startswith("127.0.0.1:")
    status = fresh.remember_cluster()
    assert {n["node"] for n in status["nodes"]} >= {"gpu1", "gpu2"}

    # 1. Allocate Memory
    assert fresh.out("memory", "allocate", "10485760") == "block_0_gpu1"
    assert fresh.out("memory", "allocate", "5242880", "--node", "gpu2") == "block_0_gpu2"
    # 2. Store Data
    weights = make(tmp_path / "model_weights.pt", 3_000_000, seed=1)
    checkpoint = make(tmp_path / "checkpoint.pt", 70_001, seed=2)
    mymodel_block = fresh.out("memory", "store", "mymodel", "model_weights.pt")
    assert mymodel_block.startswith("block_")
    fresh("memory", "store", "checkpoint", "checkpoint.pt", "--block-id", "block_0_gpu2",
          "--offset", "1024")
    # 3. Retrieve Data
    expected = bytes(1024) + checkpoint
    assert fresh("memory", "retrieve", "block_0_gpu2").stdout == expected
    fresh("memory", "retrieve", "block_0_gpu2", "--output", "retrieved_model.pt")
    assert (tmp_path / "retrieved_model.pt").read_bytes() == expected
    chunk = fresh("memory", "retrieve", "block_0_gpu2", "--size", "1048576", "--offset", "0")
    assert chunk.stdout == expected + bytes(1048576 - len(expected))
    assert fresh("memory", "retrieve", "mymodel").stdout == weights
    # 4. List Memory Blocks
    table = fresh.out("memory", "list-objects")
    for block_id in ("block_0_gpu1", "block_0_gpu2", mymodel_block):
        assert block_id in table
    # 5. Deallocate Memory
    fresh("memory", "deallocate", mymodel_block)
    assert mymodel_block not in fresh.out("memory", "list-objects")

    # Data Processing Pipeline
    part1 = make(tmp_path / "part1.csv", 40_000, seed=3)
    part2 = make(tmp_path / "part2.csv", 1_234, seed=4)
    workspace = fresh.out("memory", "allocate", "104857600")
    assert workspace.startswith("block_")
    fresh("memory", "store", "results", "part1.csv", "--block-id", "block_0_gpu1",
          "--offset", "0")
    fresh("memory", "store", "results", "part2.csv", "--block-id", "block_0_gpu1",
          "--offset", "50000")
    assert fresh("memory", "retrieve", "results").stdout == part1 + part2

    # Inter-node Communication: node B reads through the store actor (forced remote path).
    data = make(tmp_path / "data.json", 5_000, seed=5)
    shared_block = fresh.out("memory", "store", "shared", "data.json")
    node_b = tmp_path / "node_b"
    node_b.mkdir()
    fresh.cwd = node_b
    fresh("memory", "retrieve", shared_block, "--output", "data.json",
          env={"DISTRIBUTED_GRID_FORCE_REMOTE": "1"})
    assert (node_b / "data.json").read_bytes() == data


def test_guide_ml_model_storage(fresh, tmp_path):
    fresh("cluster", "start", "--nodes", "gpu1,gpu2")
    fresh.remember_cluster()
    assert fresh.out("memory", "allocate", "10737418240", "--node", "gpu2") == "block_0_gpu2"
    weights = make(tmp_path / "llama_weights.pt", 5 * 2**20 + 3, seed=6)
    fresh("memory", "store", "llama-7b", "llama_weights.pt", "--block-id", "block_0_gpu2")
    listing = json.loads(fresh.out("memory", "list-objects", "--json"))
    (block,) = [b for b in listing if b["block_id"] == "block_0_gpu2"]
    assert block["size"] == 10737418240 and block["node"] == "gpu2"
    assert block["keys"] == {"llama-7b": [[0, len(weights)]]}
    assert fresh("memory", "retrieve", "llama-7b").stdout == weights
    fresh("memory", "deallocate", "block_0_gpu2")
