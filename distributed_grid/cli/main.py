"""``grid``: the command line, a python-fire tree over the library; its entry point.

``grid memory allocate | store | retrieve | list-objects | delete | deallocate | gc``
(:mod:`distributed_grid.cli.memory`) and ``grid cluster start | stop | status``
(:mod:`distributed_grid.cli.cluster`). Here: the tree of groups (:class:`Grid`), ``--version``
and help, then the command line checked against the command's signature before anything runs
(:mod:`distributed_grid.cli.grammar`), the output's mode set (``--json``,
:mod:`distributed_grid.cli.output`), and the command run by fire. Whatever goes wrong ends as
:mod:`distributed_grid.cli.errors` says: one ``error:`` line and an exit code.

The console script is :func:`run`; ``python -m distributed_grid.cli.main`` is the same command.
Heavy imports (Ray, numpy) happen inside the commands, so ``grid --help`` is instant.
"""

from __future__ import annotations

import os
import sys

from distributed_grid.cli import errors
from distributed_grid.cli.cluster import ClusterCommands
from distributed_grid.cli.grammar import HELP_FLAGS, check, commands_of, help_text
from distributed_grid.cli.memory import MemoryCommands
from distributed_grid.cli.output import out


class Grid:
    """distributed_grid: blocks of shared memory on a Ray cluster's nodes."""

    def __init__(self) -> None:
        self.memory = MemoryCommands()
        self.cluster = ClusterCommands()


# Positionals shown under another name than their parameter's.
METAVARS = {("memory", "retrieve"): {"block_id": "BLOCK_ID_OR_KEY"}}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distributed-grid")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the ``grid`` command; returns the exit code: 0, or the one
    :data:`distributed_grid.cli.errors.ENDINGS` gives what went wrong (1 for an error of the
    command, 2 for a command line that does not fit: nothing ran, 130 for Ctrl-C, 141 when
    the output pipe closed)."""
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
        out.flush()  # inside the try: a closed pipe shows here for short outputs
        return code
    except BaseException as exc:
        code = errors.exit_code(exc)
        if code is None:
            raise
        return code


def _main(argv: list[str]) -> int:
    grid = Grid()
    groups = dict(vars(grid))
    table = commands_of(groups, METAVARS)
    if argv == ["--version"]:
        out.text(f"grid (distributed_grid) {_version()}")
        return errors.OK
    if any(a in HELP_FLAGS for a in argv):
        summaries = {g: (type(o).__doc__ or "").strip() for g, o in groups.items()}
        out.text(help_text(argv, table, summaries, _version()))
        return errors.OK
    command_line = check(argv, table)  # `grid` alone too: its usage, exit code 2
    out.json = "--json" in command_line[2:]  # a switch reaches fire as --json or --nojson

    import fire

    fire.Fire(grid, command=command_line, name="grid")
    return errors.OK


def run() -> None:
    """The ``grid`` console script: :func:`main`, then a quick exit.

    Every command has finished its work (each Ray call is awaited) when :func:`main` returns, so
    the process ends without Ray's shutdown handlers, which take about a second.
    """
    code = main()
    if "ray" in sys.modules:
        out.flush_all()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
