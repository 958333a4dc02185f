#!/usr/bin/env python3
"""Transfer speed of distributed_grid against the limits measured in the same run.

Starts its own private loopback cluster (a head plus one raylet labelled ``gpu1``), measures,
verifies every round trip byte for byte (SHA-256, outside the timed regions) and stops the
cluster again, also on error or Ctrl-C. Nothing here asserts a speed: it prints numbers.

Measured, all at one size (default 1 GiB), each the median of ``--repeat`` runs (the machine
is shared and noisy), with issue 9's goals checked at the end:

* limits: memcpy (``np.copyto``, one thread and two threads), ``cp`` of a file (page cache warm)
* local path (same host, through the segment's descriptor): ``store_file`` into a block just
  allocated and into a block written before (its pages exist); ``retrieve_to_file``
* the memory API on the block's host: ``pool.write`` of an array into a block just allocated
  and into one this process has mapped (written before), ``pool.read`` into new bytes and
  ``pool.read_into`` an array the caller has touched before,
  ``pool.put`` (allocation included), ``pool.get`` (a zero-copy view; in ms) and
  ``pool.put_tensors`` of the same bytes as 16 float32 tensors
* raw Ray: an actor on ``gpu1`` returning a numpy array fetched by the driver (whole, and in the
  package's chunks with its in-flight bound, which is what the remote retrieve does), the
  driver's own ``ray.put`` + ``ray.get``, and ``ray.put`` + a ref handed to an actor on ``gpu1``
  (whole and chunked, which is what the remote store does)
* remote path (``force_remote=True``): ``store_file``, ``pool.read``, ``pool.read_into`` a buffer
  the caller reuses, and ``retrieve_to_file``,
  each round of them in turn with the raw chunked transfers they are compared with, so that the
  machine's changing load falls on both sides of a ratio alike
* the CLI (``grid memory store`` / ``grid memory retrieve`` as subprocesses), including process
  start-up (Ray is not imported: the blocks are on this host)

Whole-object Ray rows need the size twice in each node's object store: ``--whole`` adds them.
Shared memory used at once: one block of the size plus the object stores' chunks in flight.

Run: ``.venv/bin/python benchmarks/bench_transfer.py [--size 1GiB] [--repeat 3] [--json]``
Exit status: 0, or 1 when a round trip changed a byte (or the run failed).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import mmap
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

GB = 1e9  # speeds are printed in GB/s = 10^9 bytes per second
HASH_BUF = 16 * 2**20


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- results ----------------------------------------------------------------------------------


@dataclass
class Row:
    """One measurement: ``size`` bytes moved ``len(times)`` times."""

    key: str
    name: str
    size: int
    times: list[float]
    vs: dict[str, str] = field(default_factory=dict)  # baseline key -> its label in the table
    note: str = ""

    @property
    def best(self) -> float:
        """The median run (the machine is shared and noisy: the median, not the best)."""
        ordered = sorted(self.times)
        return ordered[len(ordered) // 2]

    @property
    def gbps(self) -> float:
        return self.size / self.best / GB


class Results:
    def __init__(self, tmp: str) -> None:
        self.rows: dict[str, Row] = {}
        self.mismatches: list[str] = []
        self.verified = 0
        self.tmp = tmp
        self.peak_own = 0

    def sample_memory(self) -> None:
        self.peak_own = max(self.peak_own, own_footprint(self.tmp))

    def add(self, row: Row) -> Row:
        self.sample_memory()  # after the runs, before the phase frees what it holds
        self.rows[row.key] = row
        log(f"{row.name}: median {row.best:.3f} s, {row.gbps:.2f} GB/s "
            f"(runs: {', '.join(f'{t:.3f}' for t in row.times)})")
        return row

    def ratio(self, row: Row, base_key: str) -> float | None:
        """Speed of ``row`` as a fraction of the baseline's (same bytes: time_base / time_row)."""
        base = self.rows.get(base_key)
        if base is None:
            return None
        return (base.best / base.size) / (row.best / row.size)

    def check(self, what: str, got: str, want: str) -> None:
        self.verified += 1
        if got != want:
            self.mismatches.append(what)
            log(f"MISMATCH: {what}: sha256 {got[:16]}... expected {want[:16]}...")


def human(n: int) -> str:
    """``1 GiB``, ``64 MiB``, ``23.54 GiB``: the largest binary unit, exact when it divides."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n // scale} {unit}" if n % scale == 0 else f"{n / scale:.2f} {unit}"
    return f"{n} B"


# -- machine facts ----------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return {
        "nproc": int(nproc) if nproc.isdigit() else os.cpu_count(),
        "machine": platform.machine(),
        "cpu_model": model,
        "kernel": platform.release(),
        "mem_total_bytes": _meminfo().get("MemTotal", 0),
        "python": platform.python_version(),
    }


def _meminfo() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo", encoding="utf-8") as f:
        for line in f:
            name, _, rest = line.partition(":")
            out[name] = int(rest.split()[0]) * 1024
    return out


class MemoryWatch:
    """Samples the host's MemAvailable (page cache counts as available, shared memory does not)."""

    def __init__(self, interval: float = 0.1) -> None:
        self.start = _meminfo()["MemAvailable"]
        self.lowest = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.lowest = min(self.lowest, _meminfo()["MemAvailable"])

    def stop(self) -> int:
        """The largest drop of MemAvailable seen since the start, in bytes."""
        self._stop.set()
        self._thread.join()
        return self.start - self.lowest


def own_footprint(tmp: str) -> int:
    """Memory this run holds now: PSS of anonymous and shared memory (blocks, Ray's object
    stores) summed over this process and every process that inherited ``TMPDIR=tmp`` from it.
    Page cache of files is left out (the kernel can drop it)."""
    marker = b"\0TMPDIR=" + os.fsencode(tmp) + b"\0"
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(entry) != os.getpid():
                with open(f"/proc/{entry}/environ", "rb") as f:
                    if marker not in b"\0" + f.read():
                        continue
            with open(f"/proc/{entry}/smaps_rollup", encoding="ascii") as f:
                for line in f:
                    if line.startswith(("Pss_Anon:", "Pss_Shmem:")):
                        total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


# -- files and hashes -------------------------------------------------------------------------


def write_random_file(path: str, size: int, chunk: int) -> str:
    """Write ``size`` random bytes to ``path``; returns their sha256 hex digest."""
    import numpy as np

    rng = np.random.default_rng(20240601)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        pos = 0
        while pos < size:
            piece = rng.bytes(min(chunk, size - pos))
            h.update(piece)
            f.write(piece)
            pos += len(piece)
    return h.hexdigest()


def hash_file(path: str) -> str:
    h = hashlib.sha256()
    buf = bytearray(HASH_BUF)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def hash_block(pool: Any, block_id: str, length: int) -> str:
    """sha256 of a block's first ``length`` bytes, read through ``pool`` (zero-copy if local)."""
    h = hashlib.sha256()
    pool.read_into_sink(pool.plan_read(block_id, length, 0), h.update)
    return h.hexdigest()


def remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def settle() -> None:
    """Let freed objects leave the object stores before the next run."""
    gc.collect()
    time.sleep(0.5)


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# -- the phases -------------------------------------------------------------------------------


def bench_memcpy(res: Results, size: int, repeat: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np

    src = np.ones(size, dtype=np.uint8)
    dst = np.empty(size, dtype=np.uint8)
    np.copyto(dst, src)  # touch every page of dst: measure copies, not page faults
    res.add(Row("memcpy", "memcpy (np.copyto, 1 thread)", size,
                [timed(lambda: np.copyto(dst, src)) for _ in range(repeat)]))
    half = size // 2
    with ThreadPoolExecutor(2) as ex:
        def two() -> None:
            a = ex.submit(np.copyto, dst[:half], src[:half])
            b = ex.submit(np.copyto, dst[half:], src[half:])
            a.result()
            b.result()

        two()
        res.add(Row("memcpy2", "memcpy (np.copyto, 2 threads)", size,
                    [timed(two) for _ in range(repeat)], vs={"memcpy": "memcpy"}))
    src = dst = None  # free both before the next phase
    gc.collect()


def bench_cp(res: Results, src: str, dst: str, size: int, digest: str, repeat: int) -> None:
    times = []
    for i in range(repeat):
        remove(dst)
        times.append(timed(lambda: subprocess.run(["cp", src, dst], check=True)))
        res.check(f"cp run {i + 1}", hash_file(dst), digest)
    remove(dst)
    res.add(Row("cp", "cp FILE COPY (page cache warm)", size, times, vs={"memcpy": "memcpy"}))


def bench_local(res: Results, pool: Any, src: str, out: str, size: int, digest: str,
                repeat: int) -> str:
    """Local path; returns the id of a block holding the source's bytes (kept for later)."""
    key = "bench-local"
    times, block_id = [], ""
    for i in range(repeat):
        if block_id:
            pool.deallocate(block_id)
        block_id = pool.allocate(size, node="gpu1").block_id
        times.append(timed(lambda b=block_id: pool.store_file(key, src, block_id=b, offset=0)))
        res.check(f"local store into fresh block, run {i + 1}",
                  hash_block(pool, block_id, size), digest)
    res.add(Row("store_local_fresh", "store_file, local, block just allocated", size, times,
                vs={"cp": "cp", "memcpy": "memcpy", "memcpy2": "memcpy 2t"}))

    times = []
    for i in range(repeat):
        times.append(timed(lambda: pool.store_file(key, src, block_id=block_id, offset=0)))
        res.check(f"local store into a written block, run {i + 1}",
                  hash_block(pool, block_id, size), digest)
    res.add(Row("store_local", "store_file, local, block written before", size, times,
                vs={"cp": "cp", "memcpy": "memcpy", "memcpy2": "memcpy 2t"}))

    times = []
    for i in range(repeat):
        remove(out)
        times.append(timed(lambda: pool.retrieve_to_file(block_id, out)))
        res.check(f"local retrieve, run {i + 1}", hash_file(out), digest)
    remove(out)
    res.add(Row("retrieve_local", "retrieve_to_file, local", size, times,
                vs={"cp": "cp", "memcpy": "memcpy"}))
    return block_id


def bench_memory_api(res: Results, pool: Any, size: int, repeat: int) -> None:
    """``pool.read``/``write``/``put``/``get`` of a numpy array on the block's host."""
    import numpy as np

    arr = np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8)
    want = hashlib.sha256(arr).hexdigest()
    vs = {"memcpy": "memcpy", "memcpy2": "memcpy 2t"}

    times = []
    for i in range(repeat):  # a block just allocated (pages reserved, never written)
        block_id = pool.allocate(size, node="gpu1").block_id
        times.append(timed(lambda b=block_id: pool.write(b, arr)))
        if i == repeat - 1:
            res.check("write into a fresh block", hash_block(pool, block_id, size), want)
        pool.deallocate(block_id)
    res.add(Row("write_fresh", "pool.write of an array, into a block just allocated", size,
                times, vs=dict(vs)))

    block_id = pool.allocate(size, node="gpu1").block_id
    try:
        pool.write(block_id, arr)
        pool.write(block_id, arr)  # over written pages: this process maps the block, keeps it
        times = [timed(lambda: pool.write(block_id, arr)) for _ in range(repeat)]
        res.check("write into a mapped block", hash_block(pool, block_id, size), want)
        res.add(Row("write_mapped", "pool.write of an array, into a block this process mapped",
                    size, times, vs=dict(vs)))

        times = []
        for i in range(repeat):
            t0 = time.perf_counter()
            got = pool.read(block_id)
            times.append(time.perf_counter() - t0)
            if i == 0:
                res.check(f"read returns {type(got).__name__}", hashlib.sha256(got).hexdigest(),
                          want)
            del got
        res.add(Row("read_local", "pool.read of a block into new bytes, local", size, times,
                    vs=dict(vs)))

        into = np.ones(size, dtype=np.uint8)  # every page in: the caller's own, reused buffer
        times = [timed(lambda: pool.read_into(block_id, into)) for _ in range(repeat)]
        res.check("read_into the caller's array", hashlib.sha256(into).hexdigest(), want)
        into = None
        res.add(Row("read_into", "pool.read_into an array the caller touched before, local",
                    size, times, vs=dict(vs)))
    finally:
        pool.deallocate(block_id)

    times, get_times = [], []
    for i in range(repeat):
        times.append(timed(lambda: pool.put("bench-put", arr, node="gpu1")))
        for _ in range(5):
            t0 = time.perf_counter()
            got = pool.get("bench-put")
            get_times.append(time.perf_counter() - t0)
        if i == 0:
            res.check("put then get", hashlib.sha256(got).hexdigest(), want)
        del got
        pool.delete("bench-put")
    res.add(Row("put", "pool.put of an array under a new key (allocation included)", size,
                times, vs=dict(vs)))
    res.add(Row("get", f"pool.get of a {human(size)} array on its host (zero-copy view)", 0,
                get_times))

    parts = 16  # a model's weights: named float32 tensors, the array's bytes in all
    tensors = {f"layer{i}.weight": part.view(np.float32)
               for i, part in enumerate(np.split(arr[: size // (4 * parts) * 4 * parts], parts))}
    times = []
    for i in range(repeat):
        times.append(timed(lambda: pool.put_tensors("bench-tensors", tensors, node="gpu1")))
        if i == 0:
            got = pool.get_tensors("bench-tensors")
            same = all(np.array_equal(got[name].view(np.uint8), t.view(np.uint8))  # NaNs too
                       for name, t in tensors.items())
            res.check("put_tensors then get_tensors", str(same), "True")
            del got
        pool.delete("bench-tensors")
    res.add(Row("put_tensors", f"pool.put_tensors of {parts} float32 tensors (allocation "
                "included)", sum(t.nbytes for t in tensors.values()), times, vs=dict(vs)))
    tensors = {}
    arr = None
    gc.collect()


def map_file(path: str, size: int) -> mmap.mmap:
    """A read-only mapping of a file's first ``size`` bytes, every page mapped now."""
    fd = os.open(path, os.O_RDONLY)
    try:
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
    finally:
        os.close(fd)


class Holder:
    """Runs on gpu1: serves a file's bytes as numpy arrays and swallows arrays sent to it."""

    def __init__(self, path: str, size: int) -> None:
        import numpy as np

        self._map = map_file(path, size)
        self.arr = np.frombuffer(self._map, dtype=np.uint8)

    def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    def get(self, offset: int, n: int) -> Any:
        return self.arr[offset : offset + n]

    def take(self, arr: Any) -> int:
        return int(arr.nbytes)


class RawRay:
    """Raw Ray between the driver (on the head) and a :class:`Holder` on gpu1, no
    distributed_grid: the references of the remote rows. ``close()`` ends the actor."""

    def __init__(self, src: str, size: int, gpu1_id: str) -> None:
        import numpy as np
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from distributed_grid.memory.client.remote_node import IN_FLIGHT
        from distributed_grid.memory.io.copies import CHUNK

        self.size, self.chunk, self.in_flight = size, CHUNK, IN_FLIGHT
        self.holder = ray.remote(Holder).options(
            num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(gpu1_id, soft=False)
        ).remote(src, size)
        if ray.get(self.holder.node_id.remote()) != gpu1_id:
            ray.kill(self.holder)
            raise RuntimeError("the holder actor did not start on gpu1")
        self._map = map_file(src, size)
        self.arr: Any = np.frombuffer(self._map, dtype=np.uint8)

    def get_whole(self) -> None:
        import ray

        arr = ray.get(self.holder.get.remote(0, self.size))
        if arr.nbytes != self.size:
            raise RuntimeError(f"ray.get returned {arr.nbytes} bytes, not {self.size}")

    def get_chunked(self) -> None:
        import ray

        pending: deque = deque()
        pos = 0
        while pos < self.size or pending:
            while pos < self.size and len(pending) < self.in_flight:
                n = min(self.chunk, self.size - pos)
                pending.append(self.holder.get.remote(pos, n))
                pos += n
            arr = ray.get(pending.popleft())
            del arr

    def put_get(self) -> None:
        import ray

        got = ray.get(ray.put(self.arr))
        if got.nbytes != self.size:
            raise RuntimeError(f"ray.get returned {got.nbytes} bytes, not {self.size}")

    def put_to_actor(self) -> None:
        import ray

        got = ray.get(self.holder.take.remote(ray.put(self.arr)))
        if got != self.size:
            raise RuntimeError(f"the actor received {got} bytes, not {self.size}")

    def put_to_actor_chunked(self) -> None:
        import ray

        pending: deque = deque()
        for pos in range(0, self.size, self.chunk):
            ref = ray.put(self.arr[pos : pos + self.chunk])
            pending.append(self.holder.take.remote(ref))
            del ref
            if len(pending) >= self.in_flight:
                ray.get(pending.popleft())
        ray.get(list(pending))

    def close(self) -> None:
        import ray

        self.arr = None  # the last view goes before the mapping closes
        gc.collect()
        self._map.close()
        ray.kill(self.holder)


def bench_ray(res: Results, raw: RawRay, size: int, repeat: int, store_bytes: int,
              whole: bool = False) -> None:
    """Raw Ray moving whole objects (with ``--whole``); the chunked references are measured
    in turn with the remote rows (:func:`bench_remote`)."""
    cases = [
        ("ray_get", f"ray.get of actor-on-gpu1 array, whole ({human(size)} object)",
         raw.get_whole),
        ("ray_put_get", "ray.put + ray.get in the driver (head only)", raw.put_get),
        ("ray_put_actor", f"ray.put + ref to actor on gpu1, whole ({human(size)} object)",
         raw.put_to_actor),
    ]
    for key, name, fn in cases:
        if not (whole and size <= 0.6 * store_bytes):
            log(f"skipped {name}: needs --whole, and {human(size)} twice in a node's object "
                f"store ({human(store_bytes)})")
            continue
        fn()  # warm up: worker paths, object store pages
        settle()
        times = []
        for _ in range(repeat):
            times.append(timed(fn))
            settle()
        res.add(Row(key, name, size, times, vs={"memcpy": "memcpy"}))


def bench_remote(res: Results, pool: Any, rpool: Any, raw: RawRay, src: str, out: str,
                 size: int, digest: str, repeat: int) -> None:
    """The remote path and the raw chunked Ray transfers it is compared with, measured in turn
    within each round (raw put, store, raw get, read, retrieve), so that the machine's changing
    load falls on both sides of each ratio alike."""
    from distributed_grid.memory.client.remote_node import IN_FLIGHT
    from distributed_grid.memory.io.copies import CHUNK

    chunks = f"{human(CHUNK)} chunks, {IN_FLIGHT} in flight"
    raw.get_chunked()  # warm up: worker paths, object store pages
    raw.put_to_actor_chunked()
    settle()
    key, block_id = "bench-remote", ""
    times: dict[str, list[float]] = {k: [] for k in (
        "ray_get_chunked", "ray_put_actor_chunked", "store_remote", "read_remote",
        "read_into_remote", "retrieve_remote")}
    import numpy as np

    into = np.ones(size, dtype=np.uint8)  # a buffer the caller reuses: every page in
    for i in range(repeat):
        times["ray_put_actor_chunked"].append(timed(raw.put_to_actor_chunked))
        settle()
        if block_id:
            pool.deallocate(block_id)
        block_id = pool.allocate(size, node="gpu1").block_id
        times["store_remote"].append(
            timed(lambda b=block_id: rpool.store_file(key, src, block_id=b, offset=0)))
        res.check(f"remote store (read back locally), run {i + 1}",
                  hash_block(pool, block_id, size), digest)
        settle()
        times["ray_get_chunked"].append(timed(raw.get_chunked))
        settle()
        t0 = time.perf_counter()
        got = rpool.read(block_id)
        times["read_remote"].append(time.perf_counter() - t0)
        res.check(f"remote read, run {i + 1}", hashlib.sha256(got).hexdigest(), digest)
        del got
        settle()
        times["read_into_remote"].append(timed(lambda b=block_id: rpool.read_into(b, into)))
        res.check(f"remote read_into, run {i + 1}", hashlib.sha256(into).hexdigest(), digest)
        settle()
        remove(out)
        times["retrieve_remote"].append(timed(lambda b=block_id: rpool.retrieve_to_file(b, out)))
        res.check(f"remote retrieve, run {i + 1}", hash_file(out), digest)
        remove(out)
        settle()
    pool.deallocate(block_id)
    res.add(Row("ray_get_chunked", f"ray.get of actor-on-gpu1 arrays, {chunks}", size,
                times["ray_get_chunked"], vs={"memcpy": "memcpy"}))
    res.add(Row("ray_put_actor_chunked", f"ray.put + ref to actor on gpu1, {chunks}", size,
                times["ray_put_actor_chunked"], vs={"memcpy": "memcpy"}))
    res.add(Row("store_remote", "store_file, remote (force_remote)", size, times["store_remote"],
                vs={"ray_put_actor_chunked": "put+actor chunked",
                    "ray_put_actor": "put+actor whole", "ray_get": "ray.get whole",
                    "cp": "cp"}))
    res.add(Row("read_remote", "pool.read into new bytes, remote (force_remote)", size,
                times["read_remote"], vs={"ray_get_chunked": "ray.get chunked",
                                          "memcpy": "memcpy"}))
    res.add(Row("read_into_remote", "pool.read_into a buffer the caller reuses, remote", size,
                times["read_into_remote"], vs={"ray_get_chunked": "ray.get chunked"}))
    res.add(Row("retrieve_remote", "retrieve_to_file, remote (force_remote)", size,
                times["retrieve_remote"], vs={"ray_get_chunked": "ray.get chunked",
                                              "ray_get": "ray.get whole", "cp": "cp"}))


def bench_cli(res: Results, pool: Any, address: str, tmp: str, src: str, out: str, size: int,
              digest: str, repeat: int) -> None:
    grid = os.path.join(os.path.dirname(sys.executable), "grid")
    env = dict(os.environ, RAY_ADDRESS=address, TMPDIR=tmp)
    env.pop("DISTRIBUTED_GRID_FORCE_REMOTE", None)

    def run(*args: str) -> None:
        proc = subprocess.run([grid, *args], env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"grid {' '.join(args)} failed ({proc.returncode}): "
                               f"{proc.stderr.strip()[-500:]}")

    run("memory", "list-objects", "--json")  # warm the file cache for the imports
    res.add(Row("cli_startup", "grid memory list-objects (start-up only: no bytes, no Ray)", 0,
                [timed(lambda: run("memory", "list-objects", "--json")) for _ in range(repeat)]))

    times, block_id = [], ""
    for i in range(repeat):
        if block_id:
            pool.deallocate(block_id)
        block_id = pool.allocate(size, node="gpu1").block_id
        times.append(timed(lambda b=block_id: run("memory", "store", "bench-cli", src,
                                                   "--block-id", b)))
        res.check(f"CLI store, run {i + 1}", hash_block(pool, block_id, size), digest)
    res.add(Row("cli_store", "grid memory store KEY FILE --block-id B", size, times,
                vs={"cp": "cp"}, note="includes process start-up"))

    times = []
    for i in range(repeat):
        remove(out)
        times.append(timed(lambda: run("memory", "retrieve", block_id, "--output", out)))
        res.check(f"CLI retrieve, run {i + 1}", hash_file(out), digest)
    remove(out)
    res.add(Row("cli_retrieve", "grid memory retrieve B --output OUT", size, times,
                vs={"cp": "cp"}, note="includes process start-up"))
    pool.deallocate(block_id)
    start = res.rows["cli_startup"].best
    for key in ("cli_store", "cli_retrieve"):
        row = res.rows[key]
        rest = row.best - start
        if rest > 0:
            row.note += (f"; minus the best start-up ({start:.2f} s): {rest:.3f} s, "
                         f"{size / rest / GB:.2f} GB/s")


# -- output -----------------------------------------------------------------------------------


def as_json(res: Results, meta: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for row in res.rows.values():
        ratios = {label: round(r, 4) for base, label in row.vs.items()
                  if (r := res.ratio(row, base)) is not None}
        rows.append({
            "key": row.key, "name": row.name, "size_bytes": row.size, "size": human(row.size),
            "times_s": [round(t, 6) for t in row.times], "best_s": round(row.best, 6),
            "gb_per_s": round(row.gbps, 4) if row.size else None,
            "speed_vs": ratios, "note": row.note,
        })
    return {**meta, "results": rows, "verified_round_trips": res.verified,
            "mismatches": res.mismatches}


def print_table(doc: dict[str, Any]) -> None:
    m = doc["machine"]
    print(f"distributed_grid transfer benchmark: {human(doc['size_bytes'])} "
          f"({doc['size_bytes']} bytes), median of {doc['repeat']}")
    print(f"machine: nproc={m['nproc']}, {m['machine']}, {m['cpu_model']}, "
          f"{human(m['mem_total_bytes'])} RAM, Linux {m['kernel']}, Python {m['python']}, "
          f"ray {doc['ray']}, numpy {doc['numpy']}")
    print(f"cluster: private loopback (head + gpu1) at {doc['address']}, "
          f"object store {human(doc['object_store_bytes'])} per node; "
          f"chunk {human(doc['chunk_bytes'])}, {doc['in_flight']} in flight")
    print("GB/s = 10^9 bytes/s. 'vs' = this row's speed / that limit's speed, same bytes, same "
          "run (1.00x = as fast as the limit).")
    print()
    header = ("measurement", "size", "median s", "GB/s", "runs s", "vs limits")
    lines = []
    for r in doc["results"]:
        vs = ", ".join(f"{v:.2f}x {k}" for k, v in r["speed_vs"].items())
        lines.append((r["name"], r["size"] if r["size_bytes"] else "-", f"{r['best_s']:.3f}",
                      f"{r['gb_per_s']:.2f}" if r["gb_per_s"] is not None else "-",
                      " ".join(f"{t:.3f}" for t in r["times_s"]), vs))
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(len(header) - 1)]

    def fmt(cells: tuple[str, ...]) -> str:
        parts = [c.ljust(w) if i in (0, 4) else c.rjust(w)
                 for i, (c, w) in enumerate(zip(cells, widths, strict=False))]
        return "  ".join(parts + [cells[-1]]).rstrip()

    print(fmt(header))
    print(fmt(tuple("-" * w for w in widths) + ("-" * 9,)))
    for line in lines:
        print(fmt(line))
    notes = [(r["name"], r["note"]) for r in doc["results"] if r["note"]]
    if notes:
        print()
        for name, note in notes:
            print(f"* {name}: {note}")
    print()
    print("The CLI rows time whole `grid` processes: Python start-up and imports are included "
          "(the blocks are on this host, so no Ray).")
    print(f"memory: this run's peak {human(doc['peak_own_memory_bytes'])} (PSS of anonymous + "
          f"shared memory of its processes, sampled after each measurement; page cache not "
          f"counted); host MemAvailable fell by at most {human(doc['peak_mem_drop_bytes'])} "
          f"(every process on the host counts)")
    print_goals(doc)
    verdict = "all equal" if not doc["mismatches"] else f"MISMATCH in {doc['mismatches']}"
    print(f"round trips verified with sha256: {doc['verified_round_trips']}, {verdict}")


GOALS = [  # (row, the limit it is compared with, at least this ratio)
    ("read_local", "memcpy", 0.5), ("write_mapped", "memcpy", 1.0),
    ("write_fresh", "memcpy", 0.5), ("put", "memcpy", 0.4),
    ("retrieve_remote", "ray.get chunked", 0.9), ("read_remote", "ray.get chunked", 0.8),
]


def print_goals(doc: dict[str, Any]) -> None:
    """Issue 9's goals against this run's medians."""
    rows = {r["key"]: r for r in doc["results"]}
    print()
    print("goals (median against median, same run):")
    for key, limit, goal in GOALS:
        row = rows.get(key)
        ratio = row and row["speed_vs"].get(limit)
        if ratio is None:
            continue
        mark = "met" if ratio >= goal else "NOT met"
        print(f"  {row['name']}: {ratio:.2f}x {limit} (goal >= {goal}x): {mark}")
    get = rows.get("get")
    if get is not None:
        ms = get["best_s"] * 1e3
        print(f"  {get['name']}: {ms:.3f} ms median (goal <= 1 ms): "
              f"{'met' if ms <= 1 else 'NOT met'}")


# -- main -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    # Isolate Ray's temp dir and distributed_grid's record of started clusters before either is
    # imported: a short directory keeps Ray's socket paths under the AF_UNIX limit.
    tmp = tempfile.mkdtemp(prefix="dgb", dir="/tmp")
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = None  # recomputed from TMPDIR on next use
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("DISTRIBUTED_GRID_FORCE_REMOTE", None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks

    stopping = pool = rpool = None
    watch = MemoryWatch()
    try:
        from distributed_grid.sizes import parse_size

        parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
        parser.add_argument("--size", default="1GiB",
                            help="bytes to move: 268435456, 256MiB, 1GiB (default 1GiB)")
        parser.add_argument("--repeat", type=int, default=3, help="runs per measurement")
        parser.add_argument("--json", action="store_true", help="print the results as JSON")
        parser.add_argument("--no-cli", action="store_true", help="skip the CLI measurements")
        parser.add_argument("--whole", action="store_true",
                            help="also move whole objects through Ray (needs the size twice "
                                 "in each object store)")
        parser.add_argument("--object-store", default="512MiB",
                            help="each node's Ray object store (default 512MiB)")
        args = parser.parse_args(argv)
        try:
            size = parse_size(args.size, "--size")
        except ValueError as exc:
            parser.error(str(exc))
        if size <= 0 or args.repeat < 1:
            parser.error("--size and --repeat must be positive")

        import numpy as np

        from distributed_grid.cluster import starting, stopping
        from distributed_grid.memory.client import remote_node as remote
        from distributed_grid.memory.io import copies

        res = Results(tmp)
        src = os.path.join(tmp, "src.bin")
        dst = os.path.join(tmp, "dst.bin")
        out = os.path.join(tmp, "out.bin")
        log(f"temp dir {tmp}; writing {human(size)} of random bytes")
        digest = write_random_file(src, size, copies.CHUNK)

        log("memcpy")
        bench_memcpy(res, size, args.repeat)
        log("cp")
        bench_cp(res, src, dst, size, digest, args.repeat)

        log("starting a private loopback cluster (head + gpu1)")
        t0 = time.perf_counter()
        address = starting.start_local(
            ["gpu1"], head_name="head",
            object_store_memory=parse_size(args.object_store, "--object-store"))
        log(f"cluster at {address} after {time.perf_counter() - t0:.1f} s")
        from distributed_grid.memory import MemoryPool

        pool = MemoryPool(address)
        rpool = MemoryPool(address, force_remote=True)
        import ray

        gpu1 = rpool.ray.node("gpu1")
        store_bytes = min(int(n["Resources"].get("object_store_memory", 0))
                          for n in ray.nodes() if n.get("Alive"))

        log("local path")
        block_id = bench_local(res, pool, src, out, size, digest, args.repeat)
        pool.deallocate(block_id)
        log("the memory API, local")
        bench_memory_api(res, pool, size, args.repeat)
        raw = RawRay(src, size, gpu1.node_id)
        try:
            log("raw Ray, whole objects")
            bench_ray(res, raw, size, args.repeat, store_bytes, args.whole)
            log("remote path, in turn with raw chunked Ray")
            bench_remote(res, pool, rpool, raw, src, out, size, digest, args.repeat)
        finally:
            raw.close()
        if not args.no_cli:
            log("CLI")
            bench_cli(res, pool, address, tmp, src, out, size, digest, args.repeat)

        meta = {
            "size_bytes": size, "repeat": args.repeat, "machine": machine_info(),
            "ray": ray.__version__, "numpy": np.__version__, "address": address,
            "object_store_bytes": store_bytes, "chunk_bytes": copies.CHUNK,
            "in_flight": remote.IN_FLIGHT, "peak_own_memory_bytes": res.peak_own,
            "peak_mem_drop_bytes": watch.stop(),
        }
        doc = as_json(res, meta)
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            print_table(doc)
        return 1 if res.mismatches else 0
    finally:
        watch.stop()
        _cleanup(tmp, stopping, pool, rpool)


def _cleanup(tmp: str, stopping: Any, pool: Any, rpool: Any) -> None:
    """Free the blocks, stop the private cluster, remove the temp dir; each step on its own."""
    if pool is not None:
        try:
            pool.destroy_all()
        except Exception as exc:
            log(f"destroy_all failed: {exc!r}")
        for p in (pool, rpool):
            if p is not None:
                p.close()
    if "ray" in sys.modules:
        try:
            sys.modules["ray"].shutdown()
        except Exception as exc:
            log(f"ray.shutdown failed: {exc!r}")
    if stopping is not None:
        try:
            stopped = stopping.stop_started()
            log(f"stopped {len(stopped)} Ray node(s)")
        except Exception as exc:
            log(f"stop_started failed: {exc!r}")
    _end_leftovers(tmp)
    shutil.rmtree(tmp, ignore_errors=True)


def _end_leftovers(tmp: str) -> None:
    """End, by pid, processes of this run that outlived it.

    They are told apart by our private temp dir, which only this run's processes can name
    (mkdtemp made it unique): on the command line, or as ``TMPDIR`` in the environment they
    inherited from us. Such are a cluster supervisor and its Ray daemons and workers left behind
    when the run was interrupted while the cluster was starting, before ``start_local`` had
    recorded it for ``stop_started``.
    """
    in_cmdline = os.fsencode(tmp + os.sep)
    in_environ = b"\0TMPDIR=" + os.fsencode(tmp) + b"\0"
    mine = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found = in_cmdline in f.read()
            if not found:
                with open(f"/proc/{entry}/environ", "rb") as f:
                    found = in_environ in b"\0" + f.read()
        except OSError:
            continue
        if found:
            mine.append(int(entry))
    if not mine:
        return
    log(f"ending {len(mine)} leftover process(es) of this run: {mine}")
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 2.0)):
        alive = []
        for pid in mine:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            time.sleep(0.2)
            alive = [pid for pid in alive if os.path.exists(f"/proc/{pid}")]
        mine = alive
        if not mine:
            return


if __name__ == "__main__":
    sys.exit(main())
