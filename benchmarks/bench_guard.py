"""What the write guard costs: its calls, and a guarded read against the same read unguarded.

Works on one private segment (no cluster, no Ray), for each guard implementation built here
(the C guard and the pure-Python twin), in the same run:

- ns per ``begin_read`` + ``end_read`` pair (an idle guard: the reader's whole overhead);
- ns per ``claim`` + ``release`` pair (the writer's overhead);
- a 4 KiB and a 1 MiB read of the segment's data through the descriptor (``os.preadv`` into a
  buffer, as the store reads), guarded by the reader's protocol against the same read alone,
  and their ratio.

Each figure is the best of ``--repeat`` runs of ``--loops`` calls (fewer for claims and reads),
so it is the cost without interference; a guarded read and the plain one take turns, run by run.
Every run is shown with ``--json``.

    python benchmarks/bench_guard.py [--repeat 15] [--loops 100000] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import uuid
from collections.abc import Callable

KIB, MIB = 2**10, 2**20


def _best_ns(fns: dict[str, Callable[[int], None]], loops: int,
             repeat: int) -> dict[str, tuple[float, list[float]]]:
    """Best ns per call of each ``fn(loops)`` (which makes ``loops`` calls), and every run.

    The functions run in turn, ``repeat`` rounds, so noise from the rest of the host falls on
    all of them alike.
    """
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            start = time.perf_counter_ns()
            fn(loops)
            runs[name].append((time.perf_counter_ns() - start) / loops)
    return {name: (min(r), r) for name, r in runs.items()}


def _calls(guard, loops: int, repeat: int) -> dict:
    def reads(n: int) -> None:
        begin, end = guard.begin_read, guard.end_read
        for _ in range(n):
            seq, _busy = begin(0, 4096)
            end(seq)

    def writes(n: int) -> None:
        claim, release = guard.claim, guard.release
        tag = 1 << 32
        for _ in range(n):
            release(claim(tag, 0, 4096), tag)

    return {**_best_ns({"read_pair": reads}, loops, repeat),
            **_best_ns({"write_pair": writes}, max(loops // 10, 100), repeat)}


def _reads(guard, fd: int, header: int, size: int, loops: int, repeat: int) -> dict:
    buf = bytearray(size)

    def plain(n: int) -> None:
        for _ in range(n):
            os.preadv(fd, [buf], header)

    def guarded(n: int) -> None:
        begin, end = guard.begin_read, guard.end_read
        for _ in range(n):
            while True:
                seq, busy = begin(0, size)
                if busy:
                    continue
                os.preadv(fd, [buf], header)
                if end(seq):
                    break

    return _best_ns({"plain": plain, "guarded": guarded}, loops, repeat)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--loops", type=int, default=100_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from distributed_grid.memory.shm import layout, seqguard
    from distributed_grid.memory.shm import segment as seg

    name = f"/dg.bench{uuid.uuid4().hex[:10]}.guard.0"
    token = secrets.token_bytes(layout.TOKEN_SIZE)
    seg.create_segment(name, MIB, token)
    fd = None
    report: dict = {"default": seqguard.IMPLEMENTATION, "implementations": {}}
    try:
        fd = seg.open_data(name, token, MIB)
        os.pwrite(fd, b"\x5a" * MIB, layout.HEADER_SIZE)  # populate the pages once
        for impl, cls in sorted(seqguard.IMPLEMENTATIONS.items()):
            print(f"measuring the {impl} guard...", file=sys.stderr)
            with cls(fd) as guard:
                out = _calls(guard, args.loops, args.repeat)
                for label, size, loops in (("4KiB", 4 * KIB, args.loops // 5),
                                           ("1MiB", MIB, max(args.loops // 200, 20))):
                    out[f"read_{label}"] = _reads(guard, fd, layout.HEADER_SIZE, size, loops,
                                                  args.repeat)
            report["implementations"][impl] = out
    finally:
        if fd is not None:
            os.close(fd)
        seg.unlink_segment(name)

    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"write guard, best of {args.repeat} runs; default implementation here: "
          f"{report['default']}")
    print(f"{'implementation':<15}{'begin+end_read':>16}{'claim+release':>15}"
          f"{'pread 4KiB':>12}{'guarded':>10}{'ratio':>7}{'pread 1MiB':>12}{'guarded':>10}"
          f"{'ratio':>7}")
    for impl, out in report["implementations"].items():
        row = f"{impl:<15}{out['read_pair'][0]:>13.0f} ns{out['write_pair'][0]:>12.0f} ns"
        for label in ("4KiB", "1MiB"):
            plain, guarded = out[f"read_{label}"]["plain"][0], out[f"read_{label}"]["guarded"][0]
            row += f"{plain / 1000:>9.2f} us{guarded / 1000:>7.2f} us{guarded / plain:>7.3f}"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
