"""Random command lines, from the CLI's own grammar, against a store with known contents: no
traceback, no hang, one ``error:`` line, and a command that fails changes nothing (see
``helpers/cli_fuzz.py``; ``benchmarks/fuzz_cli.py`` runs 1,000 and more)."""

from __future__ import annotations

import pytest
from helpers.cli_fuzz import Ref, World, command_lines, judge
from hypothesis import HealthCheck, assume, example, given, settings


@pytest.fixture(scope="module")
def world(pool, cluster_address, tmp_path_factory):
    made = World(pool, cluster_address, tmp_path_factory.mktemp("fuzz"))
    yield made
    made.teardown()


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(argv=command_lines())
# what the fuzzer found (each was a traceback, fire's own exit 2, or an error line in two)
@example(argv=["memory", "deallocate", "-"])
@example(argv=["cluster", "status", "--config", Ref("file")])
@example(argv=["memory", "list-objects", "--config", Ref("config_fields")])
@example(argv=["memory", "store", "k", "no\x0bsuch"])
@example(argv=["cluster", "\x0c"])
@example(argv=["memory", "retrieve", Ref("key"), "--output", ""])
# and what issue 8 found by hand
@example(argv=["memory", "allocate", "10MB", "--json=yes"])
@example(argv=["memory", "allocate", "1", "gpu1", "True", "5"])
@example(argv=["memory", "deallocate", Ref("block_zeros")])
@example(argv=["memory", "allocate", "1KiB", "--node", "None"])
@example(argv=["memory", "store", "k", "/proc/self/status"])
@example(argv=["memory", "store", Ref("key"), Ref("file"), "--json=true"])
def test_no_command_line_shows_a_traceback_or_changes_what_it_should_not(world, argv):
    outcome = world.run(argv)
    assume(outcome is not None)  # it would start or stop a cluster, or allocate a lot
    assert not outcome.problems, outcome.report()


def test_the_oracle_sees_what_a_failed_command_changed(world):
    outcome = world.run(["memory", "retrieve", "fz-no-such-key"])
    assert outcome is not None and outcome.code == 1 and not outcome.problems, outcome.report()
    before = world.snapshot()
    block = world.ids["empty_block"]
    world.pool.write(block, b"x")  # as if the command had written before failing
    try:
        assert judge(outcome, before, world.snapshot()) == [
            f"failed, yet changed: {block}'s facts changed"]
        outcome.code = 0  # a read-only command that succeeded must not change anything either
        assert judge(outcome, before, world.snapshot()) == [
            f"only reads, yet changed: {block}'s facts changed"]
    finally:
        world.reset()


def test_the_oracle_sees_a_traceback_and_a_second_error_line(world):
    outcome = world.run(["memory", "deallocate", "fz-not-a-block"])
    assert outcome is not None and outcome.code == 1 and not outcome.problems, outcome.report()
    state = world.snapshot()
    outcome.stderr = "Traceback (most recent call last):\nerror: x\n"
    assert judge(outcome, state, state) == ["a traceback on stderr"]
    outcome.stderr = "error: one\nerror: two\n"
    assert judge(outcome, state, state) == ["more than one error line"]


def error_line(grid, *args, code: int = 1) -> str:
    """Run a command that must fail with ``code``; its stderr is one ``error:`` line (after the
    usage line for exit 2), which is returned."""
    result = grid(*args, check=False)
    err = result.stderr.decode(errors="replace")
    assert result.returncode == code, (args, result.returncode, err)
    lines = err.splitlines()
    assert len(lines) == (2 if code == 2 else 1) and lines[-1].startswith("error: "), err
    return lines[-1]


def test_an_unreadable_cluster_config_is_one_error(grid, tmp_path):
    """Found by the fuzzer: a config that is not UTF-8, or names a field with a number, was a
    traceback."""
    before = grid.listing()
    (tmp_path / "binary.yaml").write_bytes(b"nodes: [\xd4\x00\xff]\n")
    (tmp_path / "fields.yaml").write_text("nodes: [{1: 2, name: gpu1}]\n")
    assert "not UTF-8 text" in error_line(grid, "cluster", "status", "--config",
                                             tmp_path / "binary.yaml")
    assert "unknown field(s) 1; allowed" in error_line(
        grid, "memory", "list-objects", "--config", tmp_path / "fields.yaml")
    assert error_line(grid, "memory", "allocate", "4KiB", "--config", "") == \
        "error: the cluster config's path is empty"
    assert grid.listing() == before


def test_an_error_quoting_control_characters_stays_one_line(grid, tmp_path):
    """Found by the fuzzer: a path or command word with a vertical tab, form feed or newline
    broke the error line in two (the second could pose as a line of its own)."""
    before = grid.listing()
    line = error_line(grid, "memory", "store", "k", "no\x0bsuch\nerror: forged")
    assert line == "error: cannot read no\\x0bsuch\\nerror: forged: no such file"
    assert error_line(grid, "cluster", "\x0c", code=2) == \
        "error: unknown command 'grid cluster \\x0c'"
    line = error_line(grid, "memory", "list-objects", "--config", tmp_path / "a\nb")
    assert line.startswith("error: cannot read cluster config ") and "a\\nb" in line
    assert grid.listing() == before


def test_an_empty_path_is_refused_by_name(grid, tmp_path, unique):
    (tmp_path / "f").write_bytes(b"bytes")
    block_id = grid("memory", "store", unique, tmp_path / "f").stdout.decode().strip()
    try:
        before = grid.listing()
        assert error_line(grid, "memory", "store", unique + "x", "") == \
            "error: FILE_PATH is empty: give a file path"
        assert error_line(grid, "memory", "retrieve", unique, "--output", "") == \
            "error: --output is empty: give a file path"
        assert error_line(grid, "memory", "retrieve", unique, "--output=") == \
            "error: --output is empty: give a file path"
        assert grid.listing() == before
    finally:
        grid("memory", "deallocate", block_id)


def test_a_positional_dash_is_a_value(grid):
    """Found by the fuzzer: ``deallocate -`` passed the check, then fire took ``-`` for its
    command separator and exited 2 with its own message."""
    before = grid.listing()
    assert error_line(grid, "memory", "deallocate", "-") == (
        "error: invalid block id '-': a block id looks like block_<n>_<node>, for example "
        "block_0_gpu2")
    assert "no block or key named '-'" in error_line(grid, "memory", "retrieve", "-")
    assert grid.listing() == before


def test_a_required_argument_given_by_name_leaves_the_positional_to_the_next(grid, tmp_path,
                                                                            unique):
    (tmp_path / "f").write_bytes(b"named")
    block_id = grid("memory", "store", "--key", unique, tmp_path / "f").stdout.decode().strip()
    try:
        assert grid("memory", "retrieve", "--block-id", unique).stdout == b"named"
        assert "BLOCK_ID_OR_KEY is given twice (as an argument and as --block-id)" in error_line(
            grid, "memory", "retrieve", "x", "--block-id", unique, code=2)
        assert "unexpected argument 'x'" in error_line(
            grid, "memory", "retrieve", "x", "y", "--block-id", unique, code=2)
    finally:
        grid("memory", "deallocate", block_id)
