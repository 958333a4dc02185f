#!/usr/bin/env python3
"""What a copy costs: ``pool.put`` of an array with 1, 2 and 3 replicas, against raw Ray moving
the same chunks to 1, 2 and 3 actors, measured in one run.

Starts its own private loopback cluster with ``--private-shm``: a head on the host's /dev/shm and
workers ``gpu1``, ``gpu2``, ``gpu3``, each in a mount namespace with a private tmpfs on /dev/shm
(default 2 GiB), so every copy travels from the head through Ray, as to other machines. The
client runs on the head. The measurements are taken in turn (1, 2, 3 copies, then again) and each
row is the median of ``--repeat`` runs at one size (default 256 MiB); every put is read back and
checked with SHA-256 outside the timed regions, and its key deleted before the next run.

* ``pool.put`` with N replicas, allocation included (the copies are allocated, written in
  parallel, committed in every copy's catalog);
* raw Ray to N actors: the driver ``ray.put``s the array's chunks (64 MiB, 4 in flight, as the
  pool does) and hands each ref to N actors pinned to N workers, which copy it into memory they
  keep; what N copies cost in Ray alone, without the store.

The ratio that matters is "2 copies / 1 copy" of ``pool.put`` (the issue's bound: 1.8), printed
beside raw Ray's own.

Run: ``.venv/bin/python benchmarks/bench_replicas.py [--size 256MiB] [--repeat 5] [--json]``
Needs root (or unprivileged user namespaces). Exit status 0, or 1 when a round trip changed a
byte (or the run failed).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sys
import tempfile
import time
from collections import deque
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_transfer import _cleanup, human, log, machine_info, settle  # noqa: E402

WORKERS = ("gpu1", "gpu2", "gpu3")
CHUNK = 64 * 2**20
IN_FLIGHT = 4


class Sink:
    """Runs on a worker: copies each array it is given into memory it keeps (as a store does)."""

    def __init__(self, size: int) -> None:
        import numpy as np

        self.mem = np.empty(size, dtype=np.uint8)
        self.mem[::4096] = 0  # its pages in, as a store's block is after its allocation

    def take(self, offset: int, arr: Any) -> int:
        self.mem[offset:offset + arr.size] = arr
        return arr.size


def raw_copies(ray: Any, sinks: list[Any], data: Any) -> None:
    """The chunks of ``data`` put once each and handed to every sink, ``IN_FLIGHT`` at once."""
    pending: deque = deque()
    for pos in range(0, data.size, CHUNK):
        ref = ray.put(data[pos:pos + CHUNK])
        pending.append([s.take.remote(pos, ref) for s in sinks])
        del ref
        if len(pending) >= IN_FLIGHT:
            ray.get(pending.popleft())
    while pending:
        ray.get(pending.popleft())


def bench(pool: Any, size: int, repeat: int) -> tuple[dict[str, list[float]], int, list[str]]:
    import numpy as np
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    data = np.frombuffer(os.urandom(size), dtype=np.uint8)
    digest = hashlib.sha256(data).hexdigest()
    ids = {n.name: n.node_id for n in pool.nodes()}
    actor = ray.remote(Sink)
    sinks = [actor.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        ids[name], soft=False)).remote(size) for name in WORKERS]
    ray.get([s.take.remote(0, np.zeros(1, np.uint8)) for s in sinks])
    times: dict[str, list[float]] = {}
    verified, mismatches = 0, []
    for run in range(repeat):
        for copies in (1, 2, 3):
            key = f"bench-replicas-{run}-{copies}"
            settle()
            t0 = time.perf_counter()
            result = pool.put(key, data, replicas=copies)
            times.setdefault(f"put{copies}", []).append(time.perf_counter() - t0)
            got = hashlib.sha256(pool.read(key)).hexdigest()
            verified += 1
            if got != digest or len(result.block.replicas) != copies:
                mismatches.append(f"{key}: {result.block.replicas}")
            pool.delete(key)
            settle()
            t0 = time.perf_counter()
            raw_copies(ray, sinks[:copies], data)
            times.setdefault(f"ray{copies}", []).append(time.perf_counter() - t0)
            log(f"run {run + 1}/{repeat}, {copies} copies: put {times[f'put{copies}'][-1]:.3f} s"
                f", raw Ray {times[f'ray{copies}'][-1]:.3f} s")
    return times, verified, mismatches


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def main(argv: list[str] | None = None) -> int:
    tmp = tempfile.mkdtemp(prefix="dgb", dir="/tmp")
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = None
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("DISTRIBUTED_GRID_FORCE_REMOTE", None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    stopping = pool = None
    try:
        from distributed_grid.sizes import parse_size

        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--size", default="256MiB", help="bytes a put moves (256MiB)")
        parser.add_argument("--shm-size", default="2GiB", help="each worker's /dev/shm (2GiB)")
        parser.add_argument("--repeat", type=int, default=5, help="runs per measurement")
        parser.add_argument("--json", action="store_true", help="print the results as JSON")
        args = parser.parse_args(argv)
        size = parse_size(args.size, "--size")
        shm = parse_size(args.shm_size, "--shm-size")
        if size <= 0 or args.repeat < 1:
            parser.error("--size and --repeat must be positive")

        import ray

        from distributed_grid.cluster import starting, stopping
        from distributed_grid.memory import MemoryPool

        log(f"starting a private loopback cluster: head + {', '.join(WORKERS)} with a private "
            f"{human(shm)} /dev/shm each")
        address = starting.start_local(list(WORKERS), head_name="head", private_shm=shm)
        pool = MemoryPool(address)
        times, verified, mismatches = bench(pool, size, args.repeat)
        med = {k: median(v) for k, v in times.items()}
        doc = {"size_bytes": size, "repeat": args.repeat, "machine": machine_info(),
               "ray": ray.__version__, "times_s": times, "median_s": med,
               "put_2_over_1": med["put2"] / med["put1"],
               "put_3_over_1": med["put3"] / med["put1"],
               "ray_2_over_1": med["ray2"] / med["ray1"],
               "ray_3_over_1": med["ray3"] / med["ray1"],
               "put1_over_ray1": med["put1"] / med["ray1"],
               "verified_round_trips": verified, "mismatches": mismatches}
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print_table(doc)
        return 1 if mismatches else 0
    finally:
        _cleanup(tmp, stopping, pool, None)


def print_table(doc: dict[str, Any]) -> None:
    m, med = doc["machine"], doc["median_s"]
    print(f"replicated puts: {human(doc['size_bytes'])} from the head to private-shm workers, "
          f"median of {doc['repeat']}, in turn; nproc={m['nproc']}, {m['cpu_model']}, ray "
          f"{doc['ray']}")
    print(f"{'copies':>6}  {'pool.put s':>10}  {'raw Ray s':>9}  {'put / put 1 copy':>16}  "
          f"{'Ray / Ray 1':>11}")
    for n in (1, 2, 3):
        print(f"{n:>6}  {med[f'put{n}']:10.3f}  {med[f'ray{n}']:9.3f}  "
              f"{med[f'put{n}'] / med['put1']:16.2f}  {med[f'ray{n}'] / med['ray1']:11.2f}")
    print(f"\npool.put with 1 copy / raw Ray to 1 actor: {doc['put1_over_ray1']:.2f}")
    verdict = "all equal" if not doc["mismatches"] else f"MISMATCH in {doc['mismatches']}"
    print(f"round trips verified with sha256: {doc['verified_round_trips']}, {verdict}")


if __name__ == "__main__":
    sys.exit(main())
