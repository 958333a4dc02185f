"""The command line is checked before anything runs: bad ones exit 2 with one line and change
nothing; values reach the commands as typed. The grammar itself, without a cluster:
``test_grammar.py`` in tests/unit/."""

from __future__ import annotations

import json
import os
import subprocess

import pytest


def usage_error(grid, *args) -> str:
    result = grid(*args, check=False)
    err = result.stderr.decode()
    assert result.returncode == 2, (args, result.returncode, err)
    lines = err.strip().splitlines()
    assert lines[0].startswith("usage: grid") and lines[-1].startswith("error: "), err
    assert len(lines) == 2 and "Traceback" not in err, err
    return lines[-1]


def test_mistyped_options_act_never(grid, tmp_path, unique):
    (tmp_path / "f").write_bytes(b"data")
    before = grid.listing()
    cases = [
        (["memory", "allocate", "10MB", "--nod", "gpu2"], "did you mean --node?"),
        (["memory", "allocate", "10MB", "--json=yes"], "--json is a switch"),
        (["memory", "allocate", "1", "gpu1", "True", "5"], "unexpected argument 'gpu1'"),
        (["memory", "store", unique, tmp_path / "f", "--ofset", "4"], "did you mean --offset?"),
        (["memory", "store", unique, tmp_path / "f", "--block-id"], "--block-id needs a value"),
        (["memory", "lst-objects"], "did you mean list-objects?"),
        (["memry", "list-objects"], "did you mean memory?"),
        (["memory", "retrieve"], "missing BLOCK_ID_OR_KEY"),
        (["memory", "deallocate", "block_0_gpu1", "--json=maybe"], "--json is a switch"),
    ]
    for args, expected in cases:
        assert expected in usage_error(grid, *args), args
    assert grid.listing() == before  # nothing was allocated, stored or freed


def test_switches_take_true_and_false(grid, blocks):
    info = json.loads(grid("memory", "allocate", "4KiB", "--node", "gpu1", "--json=true").stdout)
    blocks.track(info["block_id"])
    plain = grid("memory", "allocate", "4KiB", "--node", "gpu1", "--json=false").stdout
    assert plain.decode().strip().startswith("block_")
    blocks.track(plain.decode().strip())
    freed = json.loads(grid("memory", "deallocate", info["block_id"], "--json=true").stdout)
    assert freed["block_id"] == info["block_id"]


@pytest.mark.parametrize("key", ["0x10", "1e3", "007", "True", "[1,2]", "-5"])
def test_keys_stay_as_typed(grid, pool, tmp_path, key):
    (tmp_path / "f").write_bytes(b"typed")
    block_id = grid("memory", "store", key, tmp_path / "f").stdout.decode().strip()
    try:
        assert key in pool.block_info(block_id).keys
        assert pool.read(key) == b"typed"
        assert grid("memory", "retrieve", key).stdout == b"typed"
    finally:
        pool.deallocate(block_id)


def test_version(grid):
    out = grid("--version").stdout.decode()
    assert out.startswith("grid (distributed_grid) ") and out.strip().split()[-1][0].isdigit()


def test_a_closed_pipe_ends_quietly(grid, blocks):
    block_id = blocks.new(4 * 2**20, node="gpu2")
    grid("memory", "retrieve", block_id, "--size", "1")  # the block exists
    from distributed_grid.memory import MemoryPool

    MemoryPool(grid.env["RAY_ADDRESS"]).write(block_id, os.urandom(4 * 2**20))
    proc = subprocess.Popen([cli_path(), "memory", "retrieve", block_id], env=grid.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.read(1)
    proc.stdout.close()  # as `| head -c 1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "error" not in err, err


@pytest.mark.parametrize("args", [["memory", "store", "--help"], ["--version"],
                                  ["cluster", "status", "--json"]])
def test_short_output_into_a_closed_pipe_ends_quietly(grid, args):
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte
    try:
        done = subprocess.run([cli_path(), *args], env=grid.env, stdout=write_end,
                              stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(write_end)
    err = done.stderr.decode()
    assert done.returncode == 141 and "Traceback" not in err and "Exception" not in err, err


def cli_path() -> str:
    import sys

    return os.path.join(os.path.dirname(sys.executable), "grid")
