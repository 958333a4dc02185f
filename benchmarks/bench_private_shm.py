#!/usr/bin/env python3
"""The remote path between nodes that share no memory, against raw Ray between the same nodes.

Starts its own private loopback cluster with ``--private-shm``: a head on the host's /dev/shm
and one worker ``gpu2`` in a mount namespace with a private tmpfs on /dev/shm (default 2 GiB, a
quarter of it Ray's object store of gpu2). A block on gpu2 cannot be attached from the head, so
the library takes the remote path with no forcing switch, as it would to another machine.
Measured in one run, each the median of ``--repeat`` runs, all at one size (default 256 MiB), every
round trip checked with SHA-256 outside the timed regions:

* raw Ray, gpu2 → head: an actor pinned to gpu2 returns numpy arrays of the bytes (from a file
  it maps) and the driver ``ray.get``s them, whole and in the package's chunks with its
  in-flight bound: what the remote read does, without the store.
* raw Ray, head → gpu2: the driver ``ray.put``s chunks and hands the refs to that actor.
* the remote path from the head: ``pool.read(block)`` (into bytes) and ``pool.retrieve_to_file``
  of a gpu2 block; ``pool.store_file`` into it.
* the local path on gpu2 for comparison: a Ray task pinned to gpu2 reads the same block with
  ``pool.read`` (zero-copy attach inside gpu2's namespace; timed inside the task).

Run: ``.venv/bin/python benchmarks/bench_private_shm.py [--size 256MiB] [--repeat 3] [--json]``
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
from bench_transfer import (  # noqa: E402  (the sibling script's helpers)
    Results,
    Row,
    _end_leftovers,
    hash_file,
    human,
    log,
    machine_info,
    map_file,
    settle,
    timed,
    write_random_file,
)


class Holder:
    """Runs on gpu2: serves a file's bytes as numpy arrays and swallows arrays sent to it."""

    def __init__(self, path: str, size: int) -> None:
        import numpy as np

        self._map = map_file(path, size)
        self.arr = np.frombuffer(self._map, dtype=np.uint8)

    def where(self) -> tuple[str, int]:
        import ray

        return ray.get_runtime_context().get_node_id(), os.stat("/dev/shm").st_dev

    def get(self, offset: int, n: int) -> Any:
        return self.arr[offset : offset + n]

    def take(self, arr: Any) -> int:
        return int(arr.nbytes)


def work_on_gpu2(block_id: str, size: int, repeat: int) -> dict[str, Any]:
    """In a Ray task on gpu2: ``pool.read`` of the block through its own host's path, and
    ``pool.put`` of an array of ``size`` bytes into gpu2's private tmpfs (2 MiB pages), against
    a one-thread memcpy of the same bytes measured there."""
    from distributed_grid.memory import MemoryPool

    pool = MemoryPool()
    out: dict[str, Any] = {"local": pool.is_local(block_id), "bytes": size}
    out["times"], digest = [], ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        data = pool.read(block_id)
        out["times"].append(time.perf_counter() - t0)
        digest = hashlib.sha256(data).hexdigest()
        del data
    out["digest"] = digest
    out.update(put_and_memcpy(pool, "gpu2", size, repeat))
    return out


def put_and_memcpy(pool: Any, node: str, size: int, repeat: int) -> dict[str, Any]:
    """``pool.put`` of a random array into a new block on ``node`` (allocation included; the
    caller's host) and a one-thread memcpy of the same bytes, each ``repeat`` times."""
    import numpy as np

    arr = np.random.default_rng(11).integers(0, 256, size, dtype=np.uint8)
    dst = np.empty_like(arr)
    np.copyto(dst, arr)  # every page of dst touched: the copies are timed, not page faults
    memcpy = [timed(lambda: np.copyto(dst, arr)) for _ in range(repeat)]
    dst = None  # freed before the puts (the lambda's cell goes with it)
    puts, same = [], True
    for _ in range(repeat):
        puts.append(timed(lambda: pool.put("bench-put", arr, node=node)))
        same = same and bool(np.array_equal(pool.get("bench-put"), arr))
        pool.delete("bench-put")
        settle()
    return {"memcpy": memcpy, "put": puts, "put_same": same}


def bench(res: Results, pool: Any, src: str, out: str, size: int, digest: str,
          repeat: int) -> None:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from distributed_grid.memory.client.remote_node import IN_FLIGHT
    from distributed_grid.memory.io.copies import CHUNK

    gpu2 = pool.ray.node("gpu2").node_id
    on_gpu2 = NodeAffinitySchedulingStrategy(gpu2, soft=False)
    holder = ray.remote(Holder).options(num_cpus=0, scheduling_strategy=on_gpu2).remote(src, size)
    node, dev = ray.get(holder.where.remote())
    if node != gpu2 or dev == os.stat("/dev/shm").st_dev:
        raise RuntimeError("the holder actor is not on gpu2, or gpu2 shares the head's /dev/shm")
    chunks = f"{human(CHUNK)} chunks, {IN_FLIGHT} in flight"

    def get_chunked() -> None:
        pending: deque = deque()
        pos = 0
        while pos < size or pending:
            while pos < size and len(pending) < IN_FLIGHT:
                n = min(CHUNK, size - pos)
                pending.append(holder.get.remote(pos, n))
                pos += n
            arr = ray.get(pending.popleft())
            del arr

    def get_whole() -> None:
        arr = ray.get(holder.get.remote(0, size))
        if arr.nbytes != size:
            raise RuntimeError(f"ray.get returned {arr.nbytes} bytes, not {size}")

    import numpy as np

    with open(src, "rb") as f:
        src_arr = np.frombuffer(f.read(), dtype=np.uint8)

    def put_chunked() -> None:
        pending: deque = deque()
        for pos in range(0, size, CHUNK):
            pending.append(holder.take.remote(ray.put(src_arr[pos : pos + CHUNK])))
            if len(pending) >= IN_FLIGHT:
                ray.get(pending.popleft())
        ray.get(list(pending))

    for key, name, fn in (("raw_get_chunked", f"raw ray.get gpu2 → head, {chunks}", get_chunked),
                          ("raw_get_whole", f"raw ray.get gpu2 → head, whole ({human(size)})",
                           get_whole),
                          ("raw_put_chunked", f"raw ray.put + actor head → gpu2, {chunks}",
                           put_chunked)):
        fn()  # warm up
        settle()
        times = []
        for _ in range(repeat):
            times.append(timed(fn))
            settle()
        res.add(Row(key, name, size, times))
    ray.kill(holder)
    src_arr = None

    block = pool.allocate(size, node="gpu2").block_id
    if pool.is_local(block):
        raise RuntimeError(f"{block} is local to the head: gpu2's /dev/shm is not private")
    times = []
    for i in range(repeat):
        times.append(timed(lambda: pool.store_file("bench-private", src, block_id=block)))
        settle()
        got = hashlib.sha256(pool.read(block)).hexdigest()
        res.check(f"store_file head → gpu2, run {i + 1}", got, digest)
    res.add(Row("store_remote", "store_file head → gpu2 (remote path, no switch)", size, times,
                vs={"raw_put_chunked": "raw put chunked"}))

    times = []
    got: list[bytes] = []
    for i in range(repeat):
        times.append(timed(lambda: got.append(pool.read(block))))
        res.check(f"pool.read gpu2 → head, run {i + 1}", hashlib.sha256(got.pop()).hexdigest(),
                  digest)
        settle()
    res.add(Row("read_remote", "pool.read gpu2 → head (remote path, no switch)", size, times,
                vs={"raw_get_chunked": "raw get chunked", "raw_get_whole": "raw get whole"}))

    times = []
    for i in range(repeat):
        if os.path.exists(out):
            os.unlink(out)
        times.append(timed(lambda: pool.retrieve_to_file(block, out)))
        res.check(f"retrieve_to_file gpu2 → head, run {i + 1}", hash_file(out), digest)
        settle()
    os.unlink(out)
    res.add(Row("retrieve_remote", "retrieve_to_file gpu2 → head (remote path, no switch)",
                size, times,
                vs={"raw_get_chunked": "raw get chunked", "raw_get_whole": "raw get whole"}))

    inside = ray.get(ray.remote(work_on_gpu2).options(num_cpus=0, scheduling_strategy=on_gpu2)
                     .remote(block, size, repeat))
    if not inside["local"]:
        raise RuntimeError("a task on gpu2 did not get the local path to its own block")
    res.check("pool.read inside gpu2", inside["digest"], digest)
    res.add(Row("read_local_gpu2", "pool.read on gpu2 itself (local path, in a task)", size,
                inside["times"], vs={"raw_get_chunked": "raw get chunked"}))
    pool.deallocate(block)

    # put: allocation, pages and copy, on each kind of tmpfs, against memcpy where it ran
    res.add(Row("memcpy_gpu2", "memcpy (np.copyto, 1 thread) in the task on gpu2", size,
                inside["memcpy"]))
    res.add(Row("put_gpu2", "pool.put on gpu2 itself (private tmpfs, 2 MiB pages)", size,
                inside["put"], vs={"memcpy_gpu2": "memcpy"}))
    here = put_and_memcpy(pool, "head", size, repeat)
    res.add(Row("memcpy_head", "memcpy (np.copyto, 1 thread) in the driver", size,
                here["memcpy"]))
    res.add(Row("put_head", "pool.put on the head (the host's /dev/shm)", size, here["put"],
                vs={"memcpy_head": "memcpy"}))
    for where, got in (("gpu2", inside), ("head", here)):
        res.check(f"pool.put on {where}", str(got["put_same"]), "True")


def main(argv: list[str] | None = None) -> int:
    tmp = tempfile.mkdtemp(prefix="dgb", dir="/tmp")
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = None
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("DISTRIBUTED_GRID_FORCE_REMOTE", None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    stopping = pool = None
    try:
        from distributed_grid.cluster.node_process import DEFAULT_SHM_SIZE, object_store_for
        from distributed_grid.sizes import parse_size

        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--size", default="256MiB", help="bytes to move (default 256MiB)")
        parser.add_argument("--shm-size", default=str(DEFAULT_SHM_SIZE),
                            help="gpu2's private /dev/shm (default 2GiB)")
        parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
        parser.add_argument("--json", action="store_true", help="print the results as JSON")
        args = parser.parse_args(argv)
        size = parse_size(args.size, "--size")
        shm = parse_size(args.shm_size, "--shm-size")
        if size <= 0 or args.repeat < 1:
            parser.error("--size and --repeat must be positive")

        import ray

        from distributed_grid.cluster import starting, stopping
        from distributed_grid.memory import MemoryPool

        res = Results(tmp)
        src, out = os.path.join(tmp, "src.bin"), os.path.join(tmp, "out.bin")
        log(f"temp dir {tmp}; writing {human(size)} of random bytes")
        digest = write_random_file(src, size, 64 * 2**20)
        log(f"starting a private loopback cluster: head + gpu2 with a private {human(shm)} "
            "/dev/shm")
        t0 = time.perf_counter()
        address = starting.start_local(["gpu2"], head_name="head", private_shm=shm)
        log(f"cluster at {address} after {time.perf_counter() - t0:.1f} s")
        pool = MemoryPool(address)
        bench(res, pool, src, out, size, digest, args.repeat)
        doc = {"size_bytes": size, "repeat": args.repeat, "machine": machine_info(),
               "ray": ray.__version__, "address": address, "gpu2_shm_bytes": shm,
               "gpu2_object_store_bytes": object_store_for(shm, 2 * 2**30),
               "results": [], "verified_round_trips": res.verified,
               "mismatches": res.mismatches}
        for row in res.rows.values():
            ratios = {label: round(r, 3) for base, label in row.vs.items()
                      if (r := res.ratio(row, base)) is not None}
            doc["results"].append({"key": row.key, "name": row.name, "size_bytes": row.size,
                                   "times_s": [round(t, 4) for t in row.times],
                                   "best_s": round(row.best, 4), "gb_per_s": round(row.gbps, 3),
                                   "speed_vs": ratios})
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print_table(doc)
        return 1 if res.mismatches else 0
    finally:
        if pool is not None:
            try:
                pool.destroy_all()
            except Exception as exc:
                log(f"destroy_all failed: {exc!r}")
            pool.close()
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()
        if stopping is not None:
            stopping.stop_started()
        _end_leftovers(tmp)
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def print_table(doc: dict[str, Any]) -> None:
    m = doc["machine"]
    print(f"distributed_grid across private /dev/shm: {human(doc['size_bytes'])}, median of "
          f"{doc['repeat']}; nproc={m['nproc']}, {m['cpu_model']}, Linux {m['kernel']}, "
          f"ray {doc['ray']}")
    print(f"cluster: head (host /dev/shm) + gpu2 (private {human(doc['gpu2_shm_bytes'])} "
          f"/dev/shm, object store {human(doc['gpu2_object_store_bytes'])}) at {doc['address']}")
    print("GB/s = 10^9 bytes/s; 'vs' = this row's speed / that row's speed, same bytes, same run")
    print()
    width = max(len(r["name"]) for r in doc["results"])
    print(f"{'measurement'.ljust(width)}  {'median s':>8}  {'GB/s':>6}  runs s / vs")
    for r in doc["results"]:
        vs = ", ".join(f"{v:.2f}x {k}" for k, v in r["speed_vs"].items())
        runs = " ".join(f"{t:.3f}" for t in r["times_s"])
        print(f"{r['name'].ljust(width)}  {r['best_s']:8.3f}  {r['gb_per_s']:6.2f}  {runs}"
              + (f"  [{vs}]" if vs else ""))
    verdict = "all equal" if not doc["mismatches"] else f"MISMATCH in {doc['mismatches']}"
    print(f"\nround trips verified with sha256: {doc['verified_round_trips']}, {verdict}")


if __name__ == "__main__":
    sys.exit(main())
