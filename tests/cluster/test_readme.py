"""The README's five-minute tour, run as a newcomer runs it: its ``bash`` blocks, in order, as
one script, on a terminal, in an empty folder, with a TMPDIR of its own (so the tour starts the
only cluster it sees, and its block ids mean what the README says).

What the README shows under each command (its ``# ...`` lines) must be what the terminal shows,
in the same order, but for what changes from run to run: the cluster's address, the head's name
(the host's), a block's age and creation time, and spacing. Lines with ``…`` are trimmed output
and are not compared.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"
TIMEOUT = 300

# What varies between runs, and what stands in for it in the comparison.
_VARYING = re.compile(r"(?P<address>127\.0\.0\.1:\d+)"
                      r"|(?P<head>(?<=with nodes )[\w.-]+(?=, ))"  # the head: the host's name
                      r"|(?P<created>(?<=\"created\": )[\d.]+)"  # a block's creation time
                      r"|(?P<age>\b\d+[smhd](?= ok memory$))")  # a block's age in the table
_STANDS_FOR = {"address": r"127\.0\.0\.1:\d+", "head": r"[\w.-]+", "created": r"[\d.]+",
               "age": r"\d+[smhd]"}


def tour() -> tuple[str, list[str]]:
    """The tour's script, and the output lines it shows (stderr's marks dropped)."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\n## A five-minute tour")
    section = text[start:text.index("\n## ", start + 1)]
    blocks = re.findall(r"```bash\n(.*?)```", section, re.S)
    assert blocks, "the README's tour has no bash blocks"
    script = "\n".join(blocks)
    shown = [line[2:].removesuffix("(stderr)").rstrip() for line in script.splitlines()
             if line.startswith("# ")]
    return script, [line for line in shown if "…" not in line]


def pattern(line: str) -> re.Pattern:
    """A shown line as a pattern: the varying parts generalised, spacing collapsed."""
    line = " ".join(line.split())
    parts, at = [], 0
    for found in _VARYING.finditer(line):
        parts += [re.escape(line[at:found.start()]), _STANDS_FOR[found.lastgroup]]
        at = found.end()
    parts.append(re.escape(line[at:]))
    return re.compile("".join(parts))


def on_a_terminal(script: str, cwd: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    """Run ``script`` with bash, its stdout and stderr a terminal; its exit code and lines."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave,
                            start_new_session=True)
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every process holding the terminal has ended
                break
            if not data:
                break
            out += data
        code = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
    text = out.decode(errors="replace").replace("\r\n", "\n")
    return code, [" ".join(line.split()) for line in text.splitlines()]


def test_the_readme_tour_runs_as_written_and_shows_what_it_says(fresh, tmp_path):
    script, shown = tour()
    commands = [line for line in script.splitlines() if line and not line.startswith("#")]
    assert commands[0].startswith("grid cluster start --nodes gpu1,gpu2")  # it starts its own
    assert commands[-1].startswith("grid cluster stop")  # and stops it
    bin_dir = os.path.dirname(sys.executable)  # `grid` and `python`, as after activating .venv
    env = {**fresh.env, "PATH": f"{bin_dir}{os.pathsep}{fresh.env.get('PATH', '')}"}
    code, lines = on_a_terminal(script, tmp_path, env)
    printed = "\n".join(lines)
    assert code == 0, f"the tour failed (exit {code}):\n{printed}"
    at = 0
    for line in shown:
        want = pattern(line)
        found = next((i for i in range(at, len(lines)) if want.fullmatch(lines[i])), None)
        assert found is not None, (f"the README shows {line!r}, which the tour did not print "
                                   f"(after line {at}):\n{printed}")
        at = found + 1
    assert "Traceback" not in printed, printed
