"""Everything ``grid`` shows goes through one object, :data:`out`.

- **The result** on stdout: text (a block id, a table), or in JSON mode the result's record as
  ``record.to_json()`` (a list of records as a list), indented, keys sorted. The entry sets the
  mode (``out.json``) from the command line before the command runs: a command states its
  result once (:meth:`Output.result`: the record, its text, and the line saying what was done),
  and the output shows what was asked for.
- **Messages** on stderr: what was done (``allocated and stored ...``), notes, ``warning:``
  lines, and the one ``error:`` line of a command that fails (control characters escaped, so a
  message quoting a key or a path stays one line).
- **The stdout guard.** Ray's driver prints cluster events ("(raylet) The node ... has been
  marked dead") to stdout, which would corrupt ``--json`` output and the raw bytes of
  ``retrieve > FILE``. Before a command brings Ray in (:meth:`Output.guard_stdout`), the output
  keeps a private copy of stdout for itself and points file descriptor 1 (and ``sys.stdout``) at
  stderr, where Ray's messages are harmless.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Protocol, TextIO

from distributed_grid.cli.format import printable

STDOUT_PATHS = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")  # `--output -` by other names


class Record(Protocol):
    """A result of the library: a frozen record that says itself as plain data."""

    def to_json(self) -> Any: ...


class Output:
    """Where a command's output goes; see the module's docstring."""

    def __init__(self) -> None:
        self.json = False  # JSON mode: the result is its record's JSON
        self._stdout: TextIO | None = None  # the command's own stdout, once guarded

    @property
    def stdout(self) -> TextIO:
        """The command's stdout (its private copy once guarded)."""
        return self._stdout if self._stdout is not None else sys.stdout

    def guard_stdout(self) -> None:
        """Keep Ray's messages out of the command's output from now on (see the module)."""
        if self._stdout is not None:
            return
        sys.stdout.flush()
        self._stdout = os.fdopen(os.dup(1), "w", encoding=sys.stdout.encoding, errors="replace")
        os.dup2(2, 1)
        sys.stdout = sys.stderr

    # -- the result --------------------------------------------------------------------------

    def result(self, record: Record | list[Record], text: str | None = None,
               done: str | None = None) -> None:
        """A command's result: in JSON mode the record's JSON alone; else ``text`` (if any) on
        stdout and ``done`` (what was done, if anything is said) on stderr."""
        if self.json:
            data = ([r.to_json() for r in record] if isinstance(record, list)
                    else record.to_json())
            self.text(json.dumps(data, indent=2, sort_keys=True, default=str))
            return
        if text is not None:
            self.text(text)
        if done is not None:
            self.note(done)

    def text(self, text: str) -> None:
        """A line (or lines) of the result, on stdout."""
        print(text, file=self.stdout)

    def raw_stdout(self) -> TextIO:
        """Stdout, flushed, for raw bytes written to its descriptor."""
        self.stdout.flush()
        return self.stdout

    def is_stdout(self, path: str) -> bool:
        """Whether ``--output PATH`` names the command's stdout."""
        return path in ("-", *STDOUT_PATHS)

    # -- messages ----------------------------------------------------------------------------

    def note(self, text: str) -> None:
        """What was done, or what is going on, on stderr."""
        print(text, file=sys.stderr)

    def warning(self, text: str) -> None:
        """A ``warning:`` line on stderr: something went wrong that did not stop the command."""
        print(f"warning: {text}", file=sys.stderr)

    def error(self, message: str, usage: str | None = None) -> None:
        """The ``error:`` line of a command that failed (after its usage line, if given)."""
        if usage is not None:
            print(usage, file=sys.stderr)
        print(f"error: {printable(message)}", file=sys.stderr)

    # -- the end -----------------------------------------------------------------------------

    def flush(self) -> None:
        """Flush stdout (a closed pipe shows here, as :class:`BrokenPipeError`)."""
        self.stdout.flush()

    def drop_stdout(self) -> None:
        """Send what is left of stdout nowhere (its reader went away)."""
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), self.stdout.fileno())
        except (OSError, ValueError):
            pass

    def flush_all(self) -> None:
        """Flush stdout and stderr, whatever state they are in (before a quick exit)."""
        for stream in (self.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass


out = Output()  # the one output of this process's command
