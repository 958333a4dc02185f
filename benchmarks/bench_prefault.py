#!/usr/bin/env python3
"""New blocks with a prefault: ``pool.put`` against one-thread memcpy, and ``grid memory store``
against ``cp`` to /dev/shm, each a whole process, in turn, in one run.

Starts its own cluster of this host (``grid cluster start --nodes gpu1 --prefault SIZE`` in a
fresh ``/tmp/dgp*`` TMPDIR, so no other cluster of the host is touched) and stops it at the end,
also on error, Ctrl-C or SIGTERM. Nothing here asserts a speed: it prints medians and ratios.
Each round, in turn (every row a process of its own, started fresh):

* **memcpy**: a process copies ``--size`` bytes from one buffer into another whose pages are in
  (``np.copyto``, one thread), timed inside the process: the limit ``put`` is held to;
* **put**: once gpu1 has refilled its prefault (its ``prefault`` in ``cluster status`` back at
  the target), a process connects the pool, makes ``--size`` random bytes (untimed), and times
  ``pool.put(key, data, node="gpu1")``: a new block, written whole. Then (untimed) it reads the
  key back and compares every byte, and deletes it;
* **cp**: ``cp FILE /dev/shm/...`` of a page-cached file of ``--size`` random bytes, the whole
  process timed from outside; the copy is removed after;
* **store**: once gpu1 has refilled, ``grid memory store KEY FILE`` of the same file (placement
  picks the node; both have a prefault), the whole process timed from outside; its block is
  checked against the file's SHA-256 (untimed), then deleted.

Rows are medians of ``--repeat`` rounds; the ratios are put's speed against memcpy's and cp's
time against store's (the issue's goals: at least 0.8 and at least 2). ``--prefault 0`` runs
the same without a prefault (new blocks pay for their pages), for comparison.

Run: ``.venv/bin/python benchmarks/bench_prefault.py [--size 1GiB] [--prefault 2GiB]
[--repeat 5] [--json]``. Exit status 0, or 1 when a byte read back differed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_transfer import _end_leftovers, hash_file, human, log, machine_info  # noqa: E402

REFILL_TIMEOUT = 120.0


# -- the worker processes (run as ``bench_prefault.py --worker KIND ...``) -------------------------


def worker_memcpy(size: int) -> dict[str, Any]:
    import numpy as np

    src = np.frombuffer(os.urandom(2**20) * (size // 2**20), dtype=np.uint8)
    dst = np.empty(size, dtype=np.uint8)
    dst.fill(1)  # its pages in: the copy, not page faults
    began = time.perf_counter()
    np.copyto(dst, src)
    return {"seconds": time.perf_counter() - began}


def worker_put(size: int, address: str) -> dict[str, Any]:
    import numpy as np

    from distributed_grid.memory import MemoryPool

    pool = MemoryPool(address)
    pool.nodes()  # connected before the clock starts, as a program that put before would be
    data = np.frombuffer(os.urandom(2**20) * (size // 2**20), dtype=np.uint8)
    began = time.perf_counter()
    pool.put("bench-put", data, node="gpu1")
    took = time.perf_counter() - began
    got = pool.get("bench-put")
    same = bool(np.array_equal(got, data))
    del got
    pool.delete("bench-put")
    return {"seconds": took, "same": same}


def run_worker(argv: list[str]) -> int:
    kind, size = argv[0], int(argv[1])
    result = worker_memcpy(size) if kind == "memcpy" else worker_put(size, argv[2])
    print(json.dumps(result))
    return 0


# -- the driver ----------------------------------------------------------------------------------


class Bench:
    def __init__(self, tmp: str, size: int, prefault: int) -> None:
        self.tmp = tmp
        self.size = size
        self.prefault = prefault
        self.times: dict[str, list[float]] = {"memcpy": [], "put": [], "cp": [], "store": []}
        self.mismatches: list[str] = []
        self.address = ""
        self.pool: Any = None
        self.grid = os.path.join(os.path.dirname(sys.executable), "grid")

    def worker(self, *args: str) -> dict[str, Any]:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", *args],
                              capture_output=True, text=True, check=True)
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def wait_refilled(self) -> None:
        """Until every node holds its whole prefault again (none refills meanwhile: each would
        take a core of the two from what is measured); nothing to wait for without one."""
        if not self.prefault:
            return
        deadline = time.monotonic() + REFILL_TIMEOUT
        while time.monotonic() < deadline:
            if all(n.prefault >= n.prefault_target > 0 for n in self.pool.status().nodes):
                return
            time.sleep(0.2)
        raise RuntimeError(f"the nodes did not refill their prefault in {REFILL_TIMEOUT:.0f} s")

    def timed_process(self, *command: str) -> float:
        began = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, RAY_ADDRESS=self.address))
        return time.perf_counter() - began

    def round(self, i: int, src: str, digest: str) -> None:
        self.wait_refilled()
        self.times["memcpy"].append(self.worker("memcpy", str(self.size))["seconds"])
        put = self.worker("put", str(self.size), self.address)
        self.times["put"].append(put["seconds"])
        if not put["same"]:
            self.mismatches.append(f"put, round {i}")
        self.wait_refilled()
        dest = "/dev/shm/dgp-bench-cp"
        self.times["cp"].append(self.timed_process("cp", src, dest))
        os.unlink(dest)
        self.wait_refilled()
        self.times["store"].append(self.timed_process(self.grid, "memory", "store",
                                                      "bench-store", src))
        place = self.pool.find_key("bench-store")
        if hash_block(self.pool, place.block.block_id, self.size) != digest:
            self.mismatches.append(f"store, round {i}")
        self.pool.delete("bench-store")


def hash_block(pool: Any, block_id: str, length: int) -> str:
    import hashlib

    h = hashlib.sha256()
    pool.read_into_sink(pool.plan_read(block_id, length, 0), h.update)
    return h.hexdigest()


def report(bench: Bench, as_json: bool, meta: dict[str, Any]) -> None:
    med = {k: statistics.median(v) for k, v in bench.times.items()}
    ratios = {"put_vs_memcpy": med["memcpy"] / med["put"],
              "store_vs_cp": med["cp"] / med["store"]}
    doc = {"meta": meta, "median_seconds": med, "seconds": bench.times, "ratios": ratios,
           "mismatches": bench.mismatches}
    if as_json:
        print(json.dumps(doc, indent=2))
        return
    size = bench.size
    print(f"\n{human(size)}, prefault {human(bench.prefault)} per node, "
          f"{len(bench.times['put'])} rounds in turn, medians (every row a whole process)")
    rows = [("memcpy", "memcpy into memory in use (np.copyto, 1 thread)"),
            ("put", 'pool.put(key, data, node="gpu1"): a new block'),
            ("cp", "cp FILE /dev/shm/ (page-cached file)"),
            ("store", "grid memory store KEY FILE (whole process)")]
    for key, name in rows:
        t = med[key]
        print(f"  {name:52s} {t:7.3f} s  {size / t / 1e9:6.2f} GB/s   "
              f"[{', '.join(f'{x:.3f}' for x in bench.times[key])}]")
    print(f"  put: {ratios['put_vs_memcpy']:.2f}x one-thread memcpy (goal >= 0.8)")
    print(f"  store: {ratios['store_vs_cp']:.2f}x cp to /dev/shm (goal >= 2)")
    if bench.mismatches:
        print(f"  BYTES DIFFERED: {bench.mismatches}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        return run_worker(argv[1:])
    tmp = tempfile.mkdtemp(prefix="dgp", dir="/tmp")  # short: Ray's socket paths
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = None
    os.environ.pop("RAY_ADDRESS", None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    stopping = None
    try:
        from distributed_grid.sizes import parse_size

        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--size", default="1GiB", help="bytes per block (default 1GiB)")
        parser.add_argument("--prefault", default="2GiB",
                            help="each node's prefault (default 2GiB; 0: none)")
        parser.add_argument("--repeat", type=int, default=5, help="rounds (default 5)")
        parser.add_argument("--json", action="store_true", help="print the results as JSON")
        args = parser.parse_args(argv)
        size = parse_size(args.size, "--size") // 2**20 * 2**20
        prefault = parse_size(args.prefault, "--prefault")
        if size <= 0 or prefault < 0 or args.repeat < 1:
            parser.error("--size and --repeat must be positive, --prefault 0 or more")

        from distributed_grid.cluster import starting, stopping
        from distributed_grid.memory import MemoryPool

        bench = Bench(tmp, size, prefault)
        src = os.path.join(tmp, "src.bin")
        log(f"temp dir {tmp}; writing {human(size)} of random bytes")
        with open(src, "wb") as f:
            for _ in range(size // 2**20):
                f.write(os.urandom(2**20))
        digest = hash_file(src)  # and the file is in the page cache
        log(f"starting a cluster of this host: head + gpu1, prefault {human(prefault)}")
        started = starting.start(nodes=["gpu1"], name="head", prefault=prefault)
        bench.address = started.address
        bench.pool = MemoryPool(bench.address)
        for i in range(1, args.repeat + 1):
            log(f"round {i} of {args.repeat}")
            bench.round(i, src, digest)
        import ray

        report(bench, args.json, {"size_bytes": size, "prefault_bytes": prefault,
                                  "repeat": args.repeat, "machine": machine_info(),
                                  "ray": ray.__version__})
        return 1 if bench.mismatches else 0
    finally:
        if stopping is not None:
            try:
                stopping.stop_started()
            except Exception as exc:
                log(f"stop_started failed: {exc!r}")
        _end_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
