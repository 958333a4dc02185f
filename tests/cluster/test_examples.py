"""The examples (examples/*.py) run as a user runs them, against the session's cluster.

Each runs as a subprocess with ``--address``; it must exit 0, print its key line, and leave no
block behind (unless told ``--keep``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def run_example(name: str, address: str, *args: str) -> str:
    """Run ``examples/NAME.py --address ADDRESS ARGS``; returns its stdout (it must exit 0)."""
    result = subprocess.run(
        [sys.executable, f"examples/{name}.py", "--address", address, *args], cwd=ROOT,
        env={**os.environ, "RAY_ADDRESS": address}, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, (
        f"{name}.py {' '.join(args)} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def block_ids(pool) -> set[str]:
    return {b.block_id for b in pool.list_blocks()}


@pytest.fixture(autouse=True)
def no_block_left_behind(pool):
    """Every test ends with the blocks it started with: the examples clean up after themselves."""
    before = block_ids(pool)
    yield
    assert block_ids(pool) == before, "an example left blocks behind"


@pytest.mark.parametrize(("name", "args", "expected"), [
    ("ml_model_storage", ["--node", "gpu2"], "model storage OK"),
    ("pipeline", ["--node", "gpu2"], "reads back as part1 + part2"),
    ("pipeline", ["--size", "1MiB"], "pipeline OK"),
    ("inter_node", ["--node", "gpu2"], "over the remote (ObjectRef) path"),
])
def test_example_runs_and_cleans_up(cluster_address, pool, name, args, expected):
    before = block_ids(pool)
    out = run_example(name, cluster_address, *args)
    assert expected in out, out
    if "--node" in args:
        assert re.search(r"\bblock_\d+_gpu2\b", out), out
    assert block_ids(pool) == before, f"{name}.py left blocks behind:\n{out}"


def test_ml_model_storage_tensors_are_zero_copy(cluster_address):
    out = run_example("ml_model_storage", cluster_address)
    views = [line for line in out.splitlines() if line.startswith("  ")]
    assert len(views) == 4 and all("zero-copy view" in line for line in views), out
    assert "local: True" in out, out
    servers = [line for line in out.splitlines() if line.startswith("server ")]
    assert len(servers) == 2 and all("forward pass OK" in line for line in servers), out
    assert "the two servers share one copy" in out, out


def test_ml_model_storage_serves_torch_tensors(cluster_address):
    pytest.importorskip("torch")
    out = run_example("ml_model_storage", cluster_address, "--framework", "torch")
    assert out.count("(pid ") == 2 and "torch): forward pass OK" in out, out
    assert "the two servers share one copy" in out, out


def test_inter_node_writer_is_local(cluster_address):
    out = run_example("inter_node", cluster_address)
    assert "local zero-copy path" in out, out
    assert "same JSON" in out, out


def test_keep_leaves_the_block(cluster_address, pool):
    before = block_ids(pool)
    out = run_example("inter_node", cluster_address, "--keep")
    kept = block_ids(pool) - before
    assert len(kept) == 1, out
    (block_id,) = kept
    assert f"kept {block_id}" in out, out
    key = next(line.split("'")[1] for line in out.splitlines() if line.startswith("node A ("))
    assert pool.find_key(key).block_id == block_id
    pool.deallocate(block_id)


def test_a_failed_check_is_an_error_line(cluster_address):
    result = subprocess.run(
        [sys.executable, "examples/pipeline.py", "--address", cluster_address, "--size", "1000"],
        cwd=ROOT, env={**os.environ, "RAY_ADDRESS": cluster_address}, capture_output=True,
        text=True, timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: the parts"), result.stderr
