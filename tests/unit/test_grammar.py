"""The CLI's grammar, without running a command: every command line gets a command fire can run
or one usage error, and every command that prints a result has ``--json`` (and ``--address``
where it reaches a cluster). Bad command lines run as a user types them: ``test_cli_grammar.py``
in tests/cluster/."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_grid.cli import main as cli
from distributed_grid.cli.grammar import UsageError, check, commands_of

GROUPS = {"memory": cli.MemoryCommands(), "cluster": cli.ClusterCommands()}
TABLE = commands_of(GROUPS, cli.METAVARS)

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
