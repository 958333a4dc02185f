"""Fuzz the ``grid`` command line: ``--runs`` random argument lists (default 1,000) against a
store with known contents; exits 1 on any finding.

Starts its own cluster (``grid cluster start --nodes gpu1,gpu2`` in a private TMPDIR) and stops
it at the end, also on error, Ctrl-C or SIGTERM. The command lines come from the CLI's own
grammar and the oracle judges each run (both in ``tests/helpers/cli_fuzz.py``, shared with the
suite's short fuzz test): no traceback, no hang (``--timeout`` seconds), an allowed exit code,
one ``error:`` line last on stderr, and a failed (or read-only) command changes no block, key,
byte or named file. Progress goes to stderr; the summary (runs per exit code, findings with the
argument list that caused them, runs per second) to stdout, or as JSON with ``--json``.

    .venv/bin/python benchmarks/fuzz_cli.py [--runs 1000] [--seed 0] [--timeout 60] [--json]
                                            [--log runs.jsonl]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def _interrupted(signum, frame):  # SIGTERM ends the run as Ctrl-C does: through the finally
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="argument lists to run")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds a command may take before it counts as a hang")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--log", help="write every run (argument list, exit code, last line "
                        "of stderr, problems) to this file, one JSON line each")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _interrupted)

    tmp = tempfile.mkdtemp(prefix="dgfz", dir="/tmp")
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = None
    for name in ("RAY_ADDRESS", "XDG_RUNTIME_DIR", "DISTRIBUTED_GRID_CONFIG",
                 "DISTRIBUTED_GRID_FORCE_REMOTE"):
        os.environ.pop(name, None)
    from helpers.cli_fuzz import GRID, World, command_lines
    from hypothesis import HealthCheck, assume, given, seed, settings

    world = None
    log = open(args.log, "w") if args.log else None  # noqa: SIM115 (closed in the finally)
    try:
        started = subprocess.run([GRID, "cluster", "start", "--nodes", "gpu1,gpu2", "--name",
                                  "head"], capture_output=True, timeout=600)
        if started.returncode != 0:
            print(started.stderr.decode(errors="replace"), file=sys.stderr)
            return 1
        address = started.stdout.decode().strip()
        from distributed_grid.memory import MemoryPool

        world = World(MemoryPool(address), address, Path(tmp) / "world")
        codes: Counter = Counter()
        commands: Counter = Counter()
        findings: list = []
        skipped = repeats = 0
        seen: set[str] = set()
        clock = time.monotonic()

        @seed(args.seed)
        @settings(max_examples=args.runs, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(argv=command_lines())
        def fuzz(argv):
            nonlocal skipped, repeats
            repeats += repr(argv) in seen
            assume(repr(argv) not in seen)  # hypothesis draws some lists more than once
            seen.add(repr(argv))
            outcome = world.run(argv, timeout=args.timeout)
            if outcome is None:
                skipped += 1
            assume(outcome is not None)  # not run: another example takes its place
            codes["hang" if outcome.code is None else outcome.code] += 1
            if log is not None:
                last = (outcome.stderr.strip().splitlines() or [""])[-1]
                log.write(json.dumps({"argv": outcome.argv, "code": outcome.code,
                                      "stderr": last, "problems": outcome.problems}) + "\n")
            commands[outcome.command] += 1
            if outcome.problems:
                findings.append(outcome)
                print(outcome.report(), file=sys.stderr)
            done = sum(codes.values())
            if done % 50 == 0:
                rate = done / (time.monotonic() - clock)
                print(f"{done}/{args.runs} runs, {len(findings)} finding(s), {rate:.1f} runs/s",
                      file=sys.stderr)

        fuzz()
        seconds = time.monotonic() - clock
        runs = sum(codes.values())
        summary = {
            "runs": runs, "skipped": skipped, "repeats": repeats, "seconds": round(seconds, 1),
            "runs_per_second": round(runs / seconds, 2),
            "exit_codes": {str(k): v for k, v in sorted(codes.items(), key=str)},
            "commands": dict(commands.most_common()),
            "rebuilds": world.rebuilds - 1,
            "findings": [{"argv": o.argv, "code": o.code, "problems": o.problems,
                          "stderr": o.stderr[-2000:]} for o in findings],
        }
        if args.json:
            print(json.dumps(summary, indent=2))
        else:
            print(f"{runs} argument lists in {seconds:.0f} s ({summary['runs_per_second']} runs/s)"
                  f"; {skipped} skipped (would start/stop a cluster, gc, or allocate > 64 MiB)"
                  f", {repeats} drawn again (not rerun)")
            print("exit codes: " + ", ".join(f"{k}: {v}" for k, v in
                                             summary["exit_codes"].items()))
            print("runs per command (as the grammar reads the line): " + ", ".join(
                f"{k}: {v}" for k, v in summary["commands"].items()))
            print(f"store rebuilt after {summary['rebuilds']} run(s) that changed it")
            distinct = {(tuple(o.argv), o.code, tuple(o.problems)): o for o in findings}
            print(f"findings: {len(findings)} ({len(distinct)} distinct argument lists)")
            for argv, code, problems in distinct:
                print(f"  grid {list(argv)!r} -> {code}: {'; '.join(problems)}")
        return 1 if findings else 0
    finally:
        if log is not None:
            log.close()
        if world is not None:
            world.teardown()
        if "ray" in sys.modules:  # a process connected to Ray leaves before its cluster stops
            import ray

            ray.shutdown()
        subprocess.run([GRID, "cluster", "stop"], capture_output=True, timeout=600)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
