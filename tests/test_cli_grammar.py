"""The command line is checked before anything runs: bad ones exit 2 with one line and change
nothing; values reach the commands as typed."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_grid.cli import main as cli
from distributed_grid.cli.grammar import UsageError, check, commands_of

GROUPS = {"memory": cli.MemoryCommands(), "cluster": cli.ClusterCommands()}
TABLE = commands_of(GROUPS, cli.METAVARS)


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


WORDS = ["memory", "cluster", "allocate", "store", "retrieve", "list-objects", "deallocate",
         "gc", "status", "--json", "--json=true", "--json=0", "--node", "gpu1", "--nod",
         "--block-id", "block_0_gpu1", "block_007_gpu1", "--offset", "-1", "10MB", "0x10",
         "--force", "--noforce", "--", "-", "-h2", "--output", "", "k\nv", "--dry-run",
         "--config", "x=y", "--size=5", "--offset=", "True", "1e3"]


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.sampled_from(WORDS) | st.text(max_size=8), max_size=8))
def test_the_grammar_answers_every_command_line(argv):
    """2,000 random command lines: each is a command fire can run or one usage error; the
    check itself never fails otherwise."""
    try:
        checked = check(list(argv), TABLE)
    except UsageError as exc:
        assert str(exc) and exc.usage.startswith("usage: grid")
        return
    group, name, *rest = checked
    command = TABLE[group][name]
    positionals = [a for a in rest if not a.startswith("--")]
    assert len(positionals) == len([p for p in command.params if p.required]) or any(
        a.split("=")[0].lstrip("-").replace("-", "_") in
        {p.name for p in command.params if p.required} for a in rest if a.startswith("--"))
    for arg in rest:
        if arg.startswith("--"):
            option = arg.split("=", 1)[0]
            names = {p.option for p in command.params} | {
                "--no" + p.option[2:] for p in command.params if p.switch}
            assert option in names


def test_every_command_that_prints_a_result_has_json_and_reaches_any_cluster():
    table = commands_of({"memory": cli.Grid().memory, "cluster": cli.Grid().cluster},
                        cli.METAVARS)
    for group, commands in table.items():
        for name, command in commands.items():
            options = {p.name for p in command.params}
            assert "json" in options, f"grid {group} {name} has no --json"
            if (group, name) not in {("memory", "gc"), ("cluster", "start"),
                                     ("cluster", "stop")}:  # this host's, or no cluster yet
                assert "address" in options, f"grid {group} {name} has no --address"
