"""How ``grid`` ends when something went wrong: one table (:data:`ENDINGS`), from the error to
what the user sees on stderr and the exit code.

- a command line that does not fit the command (:class:`~distributed_grid.cli.grammar.UsageError`):
  its usage line, then ``error: ...``; exit code 2; nothing ran;
- the library refused or failed (:class:`~distributed_grid.errors.GridError`): ``error: ...``;
  exit code 1;
- Ctrl-C: ``error: interrupted``; exit code 130;
- the reader of stdout went away (``grid ... | head``): nothing, as git does; exit code 141.

Anything else is a bug: it is not caught, and Python shows its traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from distributed_grid.cli.grammar import UsageError
from distributed_grid.cli.output import out
from distributed_grid.errors import GridError

OK, FAILED, USAGE, INTERRUPTED, CLOSED_PIPE = 0, 1, 2, 130, 141


def _usage(exc: UsageError) -> None:
    out.error(str(exc), usage=exc.usage)


def _failed(exc: GridError) -> None:
    out.error(str(exc))  # one line, whatever the message quotes (a path with a newline)


def _interrupted(exc: KeyboardInterrupt) -> None:
    out.error("interrupted")


def _closed_pipe(exc: BrokenPipeError) -> None:
    out.drop_stdout()


# each row: the error (its subclasses too), the exit code, how it is shown; the first row wins
ENDINGS: tuple[tuple[type[BaseException], int, Callable[[Any], None]], ...] = (
    (UsageError, USAGE, _usage),
    (GridError, FAILED, _failed),
    (KeyboardInterrupt, INTERRUPTED, _interrupted),
    (BrokenPipeError, CLOSED_PIPE, _closed_pipe),
)


def exit_code(exc: BaseException) -> int | None:
    """Show ``exc`` as its row of :data:`ENDINGS` says; returns its exit code, or None when no
    row is its (a bug: the caller lets it go on)."""
    for kind, code, show in ENDINGS:
        if isinstance(exc, kind):
            show(exc)
            return code
    return None
