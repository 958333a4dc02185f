#!/usr/bin/env python3
"""Small objects and many keys, against Plasma and ``multiprocessing.shared_memory`` measured in
the same run.

Starts its own private loopback cluster (``grid cluster start --nodes gpu1`` in a fresh
``/tmp/dgb*`` TMPDIR, so no other cluster of the host is touched) and stops it at the end, also
on error, Ctrl-C or SIGTERM. Nothing here asserts a speed: it prints medians and ratios.

Sections (``--only``, comma-separated):

1. ops: ``--iters`` iterations (default 2000, after ``--warmup`` 200) of a 4 KiB
   ``pool.put(key, array, node="gpu1")``, ``pool.get(key)`` (every byte read: ``a.sum()``) and
   ``pool.delete(key)`` under fresh keys, one client: iterations/s and the p50 of each step.
   The same loop for Plasma (``create`` + write + ``seal``, ``get_buffers`` + every byte read,
   ``delete``) and for ``multiprocessing.shared_memory`` (create + write a segment, attach +
   read + close, close + unlink).
2. two: the ops loop in two client processes at once (each its own keys), started together
   behind a barrier (a file), against one such process: total it/s with two / it/s with one,
   for each system.
3. many: ``--many`` (10,000) puts of 100-byte arrays under distinct keys on gpu1: seconds and
   rate against Plasma's (create + seal of 100 bytes), the shared memory the cluster's files in
   /dev/shm hold per object (st_blocks * 512 before and after) and the files they add; then
   every key deleted (timed too).
4. block: ``--keys`` (10,000) keys of 64 bytes written into ONE block (``pool.write(block,
   data, offset=i*64, key=f"k{i}")``), then each read back with ``pool.read(f"k{i}")``: p50 of
   the first and of the last 500 of each, their ratio, and the totals.
5. remap: ``pool.put`` of a ``--big-size`` (1 GiB) array; then twice in this process
   ``a = pool.get(key); a[::4096].sum(); del a`` (a fault on every page): t1, t2, t2/t1.

Plasma runs in another interpreter (pyarrow 11 ships the last Plasma and needs numpy < 2)::

    python3 -m venv ~/plasma-venv
    ~/plasma-venv/bin/pip install "pyarrow==11.0.0" "numpy<2"
    .venv/bin/python benchmarks/bench_small.py --plasma-python ~/plasma-venv/bin/python

(or set ``BENCH_PLASMA_PYTHON``); without it the Plasma rows are skipped with a note. This script
starts one ``plasma-store-server`` in its TMPDIR, its clients are processes of that interpreter
running this file in a hidden worker mode (which imports only numpy and pyarrow), and the store
is stopped by its pid at the end.

    python benchmarks/bench_small.py [--only ops,two,many,block,remap] [--iters 2000]
        [--warmup 200] [--many 10000] [--keys 10000] [--big-size 1GiB]
        [--plasma-python PATH] [--json] [--json-file PATH]

With ``--keys 10000`` the block section takes about 3 s on the current store (a keyed write costs
the same whatever the keys in its block); stores before the slab work took minutes there (each
write rebuilt the block's key list), so measure those with ``--keys 1000``. Progress goes to
stderr, the table (or JSON with ``--json``) to stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

SECTIONS = ("ops", "two", "many", "block", "remap")
SYSTEMS = ("distributed_grid", "plasma", "shared_memory")
OPS_SIZE = 4096  # bytes per object in ops and two
MANY_SIZE = 100  # bytes per object in many
BLOCK_ITEM = 64  # bytes per key in block
EDGE = 500  # first and last writes/reads compared in block
SHM_PREFIX = f"dgbsmall.{os.getpid()}."  # this run's shared_memory segments, for cleanup
PLASMA_HINT = ('python3 -m venv ~/plasma-venv && ~/plasma-venv/bin/pip '
               'install "pyarrow==11.0.0" "numpy<2", then --plasma-python '
               '~/plasma-venv/bin/python (or BENCH_PLASMA_PYTHON)')
perf = time.perf_counter  # CLOCK_MONOTONIC on Linux: comparable between processes


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- the three systems, as a client uses each (numpy imported when first used) ---------------


def payload(size: int) -> Any:
    import numpy as np

    return (np.arange(size) % 251).astype(np.uint8)


class Ours:
    """distributed_grid, as a user holds it: ``MemoryPool.put`` / ``get`` / ``delete``."""

    def __init__(self, pool: Any, size: int) -> None:
        self.pool, self.arr = pool, payload(size)
        self.want = int(self.arr.sum())

    def keys(self, prefix: str, n: int) -> list[str]:
        return [f"{prefix}.{i}" for i in range(n)]

    def put(self, key: str) -> None:
        self.pool.put(key, self.arr, node="gpu1")

    def get(self, key: str) -> int:
        a = self.pool.get(key)
        total = int(a.sum())
        del a
        return total

    def delete(self, key: str) -> None:
        self.pool.delete(key)


class Plasma:
    """pyarrow.plasma: ``create`` + write + ``seal``, ``get_buffers``, ``delete``."""

    def __init__(self, client: Any, size: int) -> None:
        self.client, self.size, self.arr = client, size, payload(size)
        self.want = int(self.arr.sum())

    def keys(self, prefix: str, n: int) -> list[Any]:
        from pyarrow import plasma

        return [plasma.ObjectID(hashlib.sha1(f"{prefix}.{i}".encode()).digest())
                for i in range(n)]

    def put(self, oid: Any) -> None:
        import numpy as np

        buf = self.client.create(oid, self.size)
        np.frombuffer(buf, dtype=np.uint8)[:] = self.arr
        self.client.seal(oid)
        del buf  # releases the creator's reference

    def get(self, oid: Any) -> int:
        import numpy as np

        [buf] = self.client.get_buffers([oid])
        total = int(np.frombuffer(buf, dtype=np.uint8).sum())
        del buf  # releases the reader's reference
        return total

    def delete(self, oid: Any) -> None:
        self.client.delete([oid])


class SharedMemory:
    """``multiprocessing.shared_memory``: the creator keeps its handle until the delete."""

    def __init__(self, size: int) -> None:
        self.size, self.arr = size, payload(size)
        self.want = int(self.arr.sum())
        self.held: dict[str, Any] = {}

    def keys(self, prefix: str, n: int) -> list[str]:
        return [f"{prefix}.{i}" for i in range(n)]

    def put(self, name: str) -> None:
        from multiprocessing import shared_memory

        seg = shared_memory.SharedMemory(name=name, create=True, size=self.size)
        seg.buf[: self.size] = self.arr.data
        self.held[name] = seg

    def get(self, name: str) -> int:
        from multiprocessing import shared_memory

        import numpy as np

        seg = shared_memory.SharedMemory(name=name)
        a = np.frombuffer(seg.buf, dtype=np.uint8, count=self.size)
        total = int(a.sum())
        del a
        seg.close()
        return total

    def delete(self, name: str) -> None:
        seg = self.held.pop(name)
        seg.close()
        seg.unlink()


def ops_loop(impl: Any, prefix: str, iters: int, warmup: int,
             barrier: str | None = None) -> dict[str, Any]:
    """``warmup`` then ``iters`` rounds of put + get + delete of a fresh key; with ``barrier``,
    wait for its ``go`` file between the two (``ready.<prefix>`` says this one is there)."""
    warm = impl.keys(prefix + ".warm", warmup)
    keys = impl.keys(prefix, iters)
    for k in warm:
        impl.put(k)
        impl.get(k)
        impl.delete(k)
    if barrier:
        wait_go(barrier, prefix)
    puts, gets, dels = [], [], []
    bad = 0
    start = perf()
    for k in keys:
        t0 = perf()
        impl.put(k)
        t1 = perf()
        got = impl.get(k)
        t2 = perf()
        impl.delete(k)
        t3 = perf()
        puts.append(t1 - t0)
        gets.append(t2 - t1)
        dels.append(t3 - t2)
        bad += got != impl.want
    end = perf()
    return {"iters": iters, "start": start, "end": end, "seconds": end - start,
            "it_per_s": iters / (end - start), "put_p50": statistics.median(puts),
            "get_p50": statistics.median(gets), "delete_p50": statistics.median(dels),
            "wrong_sums": bad}


def many_loop(impl: Any, prefix: str, count: int, hold: Any = None) -> dict[str, Any]:
    """``count`` puts under distinct keys (timed), ``hold()`` while they are all held, then
    every one deleted (timed)."""
    keys = impl.keys(prefix, count)
    start = perf()
    for k in keys:
        impl.put(k)
    put_s = perf() - start
    if hold is not None:
        hold()
    start = perf()
    for k in keys:
        impl.delete(k)
    return {"count": count, "put_s": put_s, "delete_s": perf() - start}


def wait_go(barrier: str, name: str) -> None:
    open(os.path.join(barrier, f"ready.{name}"), "w").close()
    go = os.path.join(barrier, "go")
    while not os.path.exists(go):
        time.sleep(0.0005)


def wait_file(path: str, procs: list[subprocess.Popen], timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"worker {p.args[3]} {p.args[5]} ended ({p.returncode}) before "
                                   f"{os.path.basename(path)}; stderr: {tail(p)}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"no {path} after {timeout} s")
        time.sleep(0.005)


def tail(p: subprocess.Popen) -> str:
    err = getattr(p, "err_path", None)
    if not err or not os.path.exists(err):
        return ""
    with open(err, encoding="utf-8", errors="replace") as f:
        return f.read()[-2000:].strip()


# -- worker mode: a client process of ``two`` or of Plasma -----------------------------------


def worker_main(argv: list[str]) -> int:
    """``bench_small.py --worker KIND --mode MODE ...``: one client, JSON on stdout. The Plasma
    worker imports numpy and pyarrow only (it runs in another interpreter)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", choices=("ours", "plasma", "shm"), required=True)
    parser.add_argument("--mode", choices=("ops", "many", "probe"), required=True)
    parser.add_argument("--iters", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--size", type=int, default=OPS_SIZE)
    parser.add_argument("--prefix", default="w")
    parser.add_argument("--barrier")
    parser.add_argument("--address")
    parser.add_argument("--sock")
    args = parser.parse_args(argv)
    if args.worker == "plasma":
        import warnings

        warnings.simplefilter("ignore", DeprecationWarning)  # "Plasma is deprecated since 10"
        import numpy as np
        import pyarrow
        from pyarrow import plasma

        if args.mode == "probe":
            print(json.dumps({"pyarrow": pyarrow.__version__, "numpy": np.__version__,
                              "python": platform.python_version(),
                              "store": os.path.join(os.path.dirname(pyarrow.__file__),
                                                    "plasma-store-server")}))
            return 0
        client = plasma.connect(args.sock)
        impl: Any = Plasma(client, args.size)
    elif args.worker == "shm":
        impl = SharedMemory(args.size)
    else:
        from distributed_grid.memory import MemoryPool

        pool = MemoryPool(args.address)
        impl = Ours(pool, args.size)
    if args.mode == "ops":
        out = ops_loop(impl, args.prefix, args.iters, args.warmup, args.barrier)
    else:
        wait_go(args.barrier, args.prefix)

        def hold() -> None:
            open(os.path.join(args.barrier, "held"), "w").close()
            while not os.path.exists(os.path.join(args.barrier, "release")):
                time.sleep(0.001)

        out = many_loop(impl, args.prefix, args.iters, hold)
    print(json.dumps(out), flush=True)
    if args.worker == "plasma":
        client.disconnect()
    elif args.worker == "ours":
        pool.close()
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()
    return 0


# -- the benchmark ----------------------------------------------------------------------------


def shm_usage(prefixes: tuple[str, ...]) -> tuple[int, int]:
    """Bytes (st_blocks * 512) and count of the files in /dev/shm whose names start with one of
    ``prefixes``."""
    total = count = 0
    with os.scandir("/dev/shm") as it:
        for entry in it:
            if entry.name.startswith(prefixes):
                try:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
                    count += 1
                except FileNotFoundError:
                    pass
    return total, count


def rss_shmem(pid: int) -> int:
    """Shared memory a process has mapped and touched (``RssShmem``), in bytes."""
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("RssShmem:"):
                return int(line.split()[1]) * 1024
    return 0


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: str) -> None:
        self.args, self.tmp = args, tmp
        self.results: dict[str, Any] = {}
        self.notes: list[str] = []
        self.procs: list[subprocess.Popen] = []  # workers and the plasma store, ended by pid
        self.store: subprocess.Popen | None = None
        self.sock = os.path.join(tmp, "plasma.sock")
        self.plasma_python: str | None = None
        self.address = ""
        self.pool: Any = None
        self.runs = 0

    # -- processes ------------------------------------------------------------------------------

    def python_of(self, kind: str) -> str:
        return self.plasma_python if kind == "plasma" else sys.executable

    def spawn(self, kind: str, mode: str, prefix: str, barrier: str, iters: int,
              warmup: int, size: int) -> subprocess.Popen:
        cmd = [self.python_of(kind), os.path.abspath(__file__), "--worker", kind, "--mode", mode,
               "--iters", str(iters), "--warmup", str(warmup), "--size", str(size),
               "--prefix", prefix, "--barrier", barrier]
        if kind == "ours":
            cmd += ["--address", self.address]
        if kind == "plasma":
            cmd += ["--sock", self.sock]
        err_path = os.path.join(self.tmp, f"worker.{prefix}.err")
        with open(err_path, "w") as err:
            p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                 stdin=subprocess.DEVNULL)
        p.err_path = err_path  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def collect(self, p: subprocess.Popen, timeout: float = 1800) -> dict[str, Any]:
        out, _ = p.communicate(timeout=timeout)
        self.procs.remove(p)
        lines = [line for line in out.splitlines() if line.startswith("{")]
        if p.returncode != 0 or not lines:
            raise RuntimeError(f"worker {p.args[3]} {p.args[5]} failed ({p.returncode}): {tail(p)}")
        return json.loads(lines[-1])

    def clients(self, kind: str, k: int, label: str) -> dict[str, Any]:
        """``k`` processes of ``kind`` each running the ops loop on its own keys, let go
        together; total it/s from the barrier to the last one's end."""
        self.runs += 1
        barrier = tempfile.mkdtemp(prefix="barrier", dir=self.tmp)
        prefix = SHM_PREFIX if kind == "shm" else ""
        names = [f"{prefix}{label}.{self.runs}.{j}" for j in range(k)]
        procs = [self.spawn(kind, "ops", name, barrier, self.args.iters, self.args.warmup,
                            OPS_SIZE) for name in names]
        for name in names:
            wait_file(os.path.join(barrier, f"ready.{name}"), procs)
        go = perf()
        open(os.path.join(barrier, "go"), "w").close()
        each = [self.collect(p) for p in procs]
        span = max(r["end"] for r in each) - go
        total = sum(r["iters"] for r in each)
        return {"clients": k, "seconds": span, "it_per_s": total / span, "each": each}

    def start_plasma(self) -> None:
        py = self.args.plasma_python
        if not py:
            self.notes.append(f"Plasma skipped: no --plasma-python or BENCH_PLASMA_PYTHON. To "
                              f"get it: {PLASMA_HINT}")
            return
        probe = subprocess.run([py, os.path.abspath(__file__), "--worker", "plasma", "--mode",
                                "probe"], capture_output=True, text=True)
        if probe.returncode != 0:
            self.notes.append(f"Plasma skipped: {py} cannot import pyarrow.plasma "
                              f"({probe.stderr.strip().splitlines()[-1:]}). To get it: "
                              f"{PLASMA_HINT}")
            return
        info = json.loads(probe.stdout.strip().splitlines()[-1])
        store = info["store"]
        if not os.path.exists(store):
            store = os.path.join(os.path.dirname(py), "plasma_store")
        log(f"starting plasma_store ({store}, -m {self.args.plasma_memory}) ...")
        log_path = os.path.join(self.tmp, "plasma_store.log")
        with open(log_path, "w") as out:
            self.store = subprocess.Popen(
                [store, "-m", str(self.args.plasma_memory), "-s", self.sock], stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            if self.store.poll() is not None or time.monotonic() > deadline:
                with open(log_path) as f:
                    raise RuntimeError(f"plasma_store did not start: {f.read()[-1000:]}")
            time.sleep(0.01)
        self.plasma_python = py
        self.results["plasma"] = {**info, "interpreter": py,
                                  "store_memory": self.args.plasma_memory,
                                  "store_pid": self.store.pid}

    def stop_plasma(self) -> None:
        if self.store is None:
            return
        store, self.store = self.store, None
        store.terminate()
        try:
            store.wait(10)
        except subprocess.TimeoutExpired:
            store.kill()
            store.wait(5)
        log(f"plasma_store (pid {store.pid}) stopped")

    def systems(self) -> list[str]:
        return [s for s in ("ours", "plasma", "shm")
                if s != "plasma" or self.plasma_python is not None]

    # -- 1. ops ---------------------------------------------------------------------------------

    def section_ops(self) -> None:
        a = self.args
        out: dict[str, Any] = {"size": OPS_SIZE, "iters": a.iters, "warmup": a.warmup}
        log(f"ops: distributed_grid, {a.iters} x 4 KiB put + get + delete (this process) ...")
        out["distributed_grid"] = ops_loop(Ours(self.pool, OPS_SIZE), "ops", a.iters, a.warmup)
        if self.plasma_python:
            log("ops: plasma (a client process) ...")
            out["plasma"] = self.clients("plasma", 1, "ops")["each"][0]
        log("ops: multiprocessing.shared_memory (this process) ...")
        out["shared_memory"] = ops_loop(SharedMemory(OPS_SIZE), SHM_PREFIX + "ops", a.iters,
                                        a.warmup)
        self.results["ops"] = out

    # -- 2. two ---------------------------------------------------------------------------------

    def section_two(self) -> None:
        out: dict[str, Any] = {"size": OPS_SIZE, "iters_per_client": self.args.iters}
        for kind, name in (("ours", "distributed_grid"), ("plasma", "plasma"),
                           ("shm", "shared_memory")):
            if kind not in self.systems():
                continue
            log(f"two: {name}, one client process ...")
            one = self.clients(kind, 1, "two1")
            log(f"two: {name}, two client processes at once ...")
            two = self.clients(kind, 2, "two2")
            out[name] = {"one": one, "two": two, "gain": two["it_per_s"] / one["it_per_s"]}
        self.results["two"] = out

    # -- 3. many --------------------------------------------------------------------------------

    def section_many(self) -> None:
        from distributed_grid.memory.shm import layout

        n = self.args.many
        pool = self.pool
        prefixes = layout.cluster_prefixes(pool.cluster_id)
        impl = Ours(pool, MANY_SIZE)
        for k in impl.keys("many.warm", 50):  # connections and caches warm
            impl.put(k)
            impl.delete(k)
        before = shm_usage(prefixes)
        log(f"many: distributed_grid, {n} puts of {MANY_SIZE} B ...")
        usage: dict[str, tuple[int, int]] = {}

        def hold() -> None:
            usage["held"] = shm_usage(prefixes)
            log(f"many: deleting the {n} keys ...")

        run = many_loop(impl, "many", n, hold)
        after = shm_usage(prefixes)
        held = usage["held"]
        ours = {**run, "rate": n / run["put_s"], "delete_rate": n / run["delete_s"],
                "shm_bytes_before": before[0], "shm_files_before": before[1],
                "shm_bytes_held": held[0], "shm_files_held": held[1],
                "shm_bytes_after_delete": after[0], "shm_files_after_delete": after[1],
                "shm_bytes_per_object": (held[0] - before[0]) / n,
                "files_per_object": (held[1] - before[1]) / n}
        out: dict[str, Any] = {"count": n, "size": MANY_SIZE, "distributed_grid": ours}
        if self.plasma_python:
            log(f"many: plasma, {n} creates + seals of {MANY_SIZE} B (a client process) ...")
            self.runs += 1
            barrier = tempfile.mkdtemp(prefix="barrier", dir=self.tmp)
            name = f"many.{self.runs}"
            p = self.spawn("plasma", "many", name, barrier, n, 0, MANY_SIZE)
            wait_file(os.path.join(barrier, f"ready.{name}"), [p])
            rss_before = rss_shmem(self.store.pid)
            open(os.path.join(barrier, "go"), "w").close()
            wait_file(os.path.join(barrier, "held"), [p], timeout=1800)
            rss_held = rss_shmem(self.store.pid)
            open(os.path.join(barrier, "release"), "w").close()
            res = self.collect(p)
            out["plasma"] = {**res, "rate": n / res["put_s"], "delete_rate": n / res["delete_s"],
                             "store_rss_shmem_before": rss_before,
                             "store_rss_shmem_held": rss_held,
                             "store_rss_shmem_per_object": (rss_held - rss_before) / n}
        self.results["many"] = out

    # -- 4. block -------------------------------------------------------------------------------

    def section_block(self) -> None:
        pool, n = self.pool, self.args.keys
        edge = min(EDGE, max(1, n // 2))
        data = bytes(range(BLOCK_ITEM))
        block_id = pool.allocate(n * BLOCK_ITEM, node="gpu1").block_id
        log(f"block: {n} keyed writes of {BLOCK_ITEM} B into {block_id} ...")
        writes, reads = [], []
        bad = 0
        try:
            step = max(1, n // 10)
            for i in range(n):
                t0 = perf()
                pool.write(block_id, data, offset=i * BLOCK_ITEM, key=f"k{i}")
                writes.append(perf() - t0)
                if (i + 1) % step == 0:
                    log(f"block: {i + 1} written, {sum(writes):.1f} s")
            log(f"block: reading the {n} keys back ...")
            for i in range(n):
                t0 = perf()
                got = pool.read(f"k{i}")
                reads.append(perf() - t0)
                bad += got != data
                if (i + 1) % step == 0:
                    log(f"block: {i + 1} read, {sum(reads):.1f} s")
        finally:
            pool.deallocate(block_id)
        first_w, last_w = statistics.median(writes[:edge]), statistics.median(writes[-edge:])
        first_r, last_r = statistics.median(reads[:edge]), statistics.median(reads[-edge:])
        self.results["block"] = {
            "keys": n, "item": BLOCK_ITEM, "edge": edge, "write_first_p50": first_w,
            "write_last_p50": last_w, "write_ratio": last_w / first_w,
            "read_first_p50": first_r, "read_last_p50": last_r, "read_ratio": last_r / first_r,
            "write_total_s": sum(writes), "read_total_s": sum(reads), "wrong_reads": bad}

    # -- 5. remap -------------------------------------------------------------------------------

    def section_remap(self) -> None:
        import numpy as np

        size = self.args.big_bytes
        free = shutil.disk_usage("/dev/shm").free
        if free < 2 * size + 2**30:
            self.notes.append(f"remap skipped: /dev/shm has {free / 2**30:.1f} GiB free, "
                              f"the section wants twice {size / 2**30:.2f} GiB + 1 GiB")
            return
        pool, key = self.pool, "remap"
        src = np.ones(size, dtype=np.uint8)
        log(f"remap: put of {size / 2**30:.2f} GiB ...")
        t0 = perf()
        pool.put(key, src, node="gpu1")
        put_s = perf() - t0
        del src
        try:
            def once() -> tuple[float, int]:
                t0 = perf()
                a = pool.get(key)
                total = int(a[::4096].sum())
                del a
                return perf() - t0, total

            t1, s1 = once()
            t2, s2 = once()
        finally:
            pool.delete(key)
        pages = -(-size // 4096)
        self.results["remap"] = {"size": size, "put_s": put_s, "t1": t1, "t2": t2,
                                 "ratio": t2 / t1, "pages": pages,
                                 "sums_right": s1 == s2 == pages}

    # -- report ---------------------------------------------------------------------------------

    def report(self) -> str:
        r = self.results
        m = r["machine"]
        lines = ["distributed_grid: small objects and many keys, against Plasma and "
                 "multiprocessing.shared_memory (same run)",
                 f"machine: {m['cpus']} cores ({m['cpu_model']}), {m['machine']}, "
                 f"{m['platform']}, {m['mem_total'] / 2**30:.2f} GiB RAM, Python {m['python']}, "
                 f"numpy {m['numpy']}, ray {m['ray']}"]
        src = r.get("source")
        if src:
            where = ("not a git work tree" if src["commit"] is None else
                     f"git {src['commit']}, {src['changed_files']} changed file(s) in "
                     "distributed_grid/")
            lines.append(f"source: {src['path']} ({where})")
        if "plasma" in r:
            p = r["plasma"]
            lines.append(f"plasma: pyarrow {p['pyarrow']} (numpy {p['numpy']}, Python "
                         f"{p['python']}), plasma_store -m {p['store_memory']}")
        if r.get("address"):
            lines.append(f"cluster: private loopback (head + gpu1) at {r['address']}, id "
                         f"{r['cluster_id']}")
        lines += self.notes
        if "ops" in r:
            o = r["ops"]
            lines += ["", f"ops: {o['iters']} iterations (after {o['warmup']}) of put + get "
                      "(every byte read) + delete of 4 KiB under fresh keys, one client",
                      f"{'system':<18}{'it/s':>9}{'put p50 us':>12}{'get p50 us':>12}"
                      f"{'delete p50 us':>15}"]
            for name in SYSTEMS:
                if name in o:
                    s = o[name]
                    lines.append(f"{name:<18}{s['it_per_s']:>9.0f}{s['put_p50'] * 1e6:>12.1f}"
                                 f"{s['get_p50'] * 1e6:>12.1f}{s['delete_p50'] * 1e6:>15.1f}")
            ours = o["distributed_grid"]
            ratios = [f"{ours['it_per_s'] / o[n]['it_per_s']:.3f}x {n}"
                      for n in ("plasma", "shared_memory") if n in o]
            lines.append(f"distributed_grid it/s vs: {', '.join(ratios)}")
            wrong = sum(o[n]["wrong_sums"] for n in SYSTEMS if n in o)
            lines.append(f"every get's sum checked: {'all right' if not wrong else wrong}")
        if "two" in r:
            t = r["two"]
            lines += ["", f"two: the ops loop ({t['iters_per_client']} iterations each) in "
                      "client processes let go together behind a barrier",
                      f"{'system':<18}{'1 client it/s':>15}{'2 clients it/s':>16}{'gain':>8}"
                      f"   each of the two it/s"]
            for name in SYSTEMS:
                if name in t:
                    s = t[name]
                    each = " ".join(f"{e['it_per_s']:.0f}" for e in s["two"]["each"])
                    lines.append(f"{name:<18}{s['one']['it_per_s']:>15.0f}"
                                 f"{s['two']['it_per_s']:>16.0f}{s['gain']:>7.2f}x   {each}")
            lines.append("gain = total it/s of two clients at once / it/s of one client alone")
        if "many" in r:
            mm = r["many"]
            n, ours = mm["count"], mm["distributed_grid"]
            lines += ["", f"many: {n} puts of {mm['size']} B arrays under distinct keys on gpu1",
                      f"distributed_grid: {ours['put_s']:.2f} s ({ours['rate']:.0f}/s); "
                      f"deleting them {ours['delete_s']:.2f} s ({ours['delete_rate']:.0f}/s)"]
            if "plasma" in mm:
                p = mm["plasma"]
                lines.append(f"plasma: {p['put_s']:.3f} s ({p['rate']:.0f}/s); deleting them "
                             f"{p['delete_s']:.3f} s ({p['delete_rate']:.0f}/s)")
                lines.append(f"distributed_grid/plasma put rate: "
                             f"{ours['rate'] / p['rate']:.4f}x")
            grew = ours["shm_bytes_held"] - ours["shm_bytes_before"]
            lines.append(
                f"the cluster's /dev/shm files: {ours['shm_bytes_before'] / 2**20:.2f} MiB in "
                f"{ours['shm_files_before']} files before, {ours['shm_bytes_held'] / 2**20:.2f} "
                f"MiB in {ours['shm_files_held']} with the {n} keys (+{grew / 2**20:.2f} MiB), "
                f"{ours['shm_bytes_after_delete'] / 2**20:.2f} MiB in "
                f"{ours['shm_files_after_delete']} after deleting them")
            added = ours["shm_files_held"] - ours["shm_files_before"]
            lines.append(f"shared memory per object: {ours['shm_bytes_per_object']:.0f} B for "
                         f"{mm['size']} B of data "
                         f"({ours['shm_bytes_per_object'] / mm['size']:.1f}x); files added: "
                         f"{added} ({ours['files_per_object']:.4g} per object)")
            if "plasma" in mm:
                p = mm["plasma"]
                lines.append(f"plasma store's RssShmem grew {p['store_rss_shmem_per_object']:.0f}"
                             " B per object (the store's touched shared pages; approximate)")
        if "block" in r:
            b = r["block"]
            lines += ["", f"block: {b['keys']} keys of {b['item']} B written into one block, "
                      "then each read back by key",
                      f"{'operation':<26}{'first ' + str(b['edge']) + ' p50 us':>18}"
                      f"{'last ' + str(b['edge']) + ' p50 us':>18}{'ratio':>8}{'total s':>10}",
                      f"{'pool.write(B, 64 B, key)':<26}{b['write_first_p50'] * 1e6:>18.1f}"
                      f"{b['write_last_p50'] * 1e6:>18.1f}{b['write_ratio']:>7.2f}x"
                      f"{b['write_total_s']:>10.2f}",
                      f"{'pool.read(key)':<26}{b['read_first_p50'] * 1e6:>18.1f}"
                      f"{b['read_last_p50'] * 1e6:>18.1f}{b['read_ratio']:>7.2f}x"
                      f"{b['read_total_s']:>10.2f}",
                      f"every read checked: {'all right' if not b['wrong_reads'] else 'WRONG: '}"
                      f"{b['wrong_reads'] or ''}"]
        if "remap" in r:
            x = r["remap"]
            lines += ["", f"remap: a {x['size'] / 2**30:.2f} GiB array put in "
                      f"{x['put_s']:.2f} s; `a = pool.get(key); a[::4096].sum(); del a` "
                      f"({x['pages']} pages touched), twice in one process",
                      f"t1 {x['t1']:.3f} s, t2 {x['t2']:.3f} s, t2/t1 {x['ratio']:.2f}"]
        left = r.get("leftover_shm_files")
        if left is not None:
            lines += ["", "after the run: " + (f"LEFT in /dev/shm: {left}" if left else
                                               "no file of this run left in /dev/shm")]
        return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    from importlib import metadata

    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f
                          if line.startswith("model name")), model)
        with open("/proc/meminfo", encoding="utf-8") as f:
            mem = int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) * 1024
    except (OSError, StopIteration):
        mem = 0
    return {"cpus": os.cpu_count(), "cpu_model": model, "machine": platform.machine(),
            "platform": platform.platform(), "mem_total": mem,
            "python": platform.python_version(), "numpy": metadata.version("numpy"),
            "ray": metadata.version("ray")}


def source_info() -> dict[str, Any]:
    """Which distributed_grid this run measures: its folder and, in a git work tree, the
    commit and how many files of the package differ from it."""
    import distributed_grid

    root = os.path.dirname(os.path.dirname(os.path.abspath(distributed_grid.__file__)))
    info: dict[str, Any] = {"path": root, "commit": None, "changed_files": None}
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"],
                              capture_output=True, text=True, timeout=30)
        if head.returncode == 0:
            info["commit"] = head.stdout.strip()
            changed = subprocess.run(["git", "-C", root, "status", "--porcelain", "--",
                                      "distributed_grid"], capture_output=True, text=True,
                                     timeout=30)
            info["changed_files"] = len(changed.stdout.splitlines())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def end_leftovers(tmp: str) -> None:
    """End, by pid, processes of this run that outlived it: those that name the private temp
    dir on their command line or inherited it as TMPDIR (workers, a store, Ray daemons of a
    cluster interrupted while it started)."""
    in_cmdline = os.fsencode(tmp + os.sep)
    in_environ = b"\0TMPDIR=" + os.fsencode(tmp) + b"\0"
    keep = {os.getpid()}
    tracker = sys.modules.get("multiprocessing.resource_tracker")
    if tracker is not None and tracker._resource_tracker._pid:  # ours: ends when we do
        keep.add(tracker._resource_tracker._pid)
    mine = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in keep:
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
    names = []
    for pid in mine:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")[:120].strip()
            names.append(f"{pid} ({cmd})")
        except OSError:
            names.append(str(pid))
    log(f"ending {len(mine)} leftover process(es) of this run: {', '.join(names)}")
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


def cleanup(bench: Bench, tmp: str, cluster_id: str | None) -> None:
    """Workers, the plasma store, the blocks, Ray, the cluster, leftovers; each on its own."""
    for p in list(bench.procs):
        if p.poll() is None:
            p.kill()
            p.wait(5)
    try:
        bench.stop_plasma()
    except Exception as exc:
        log(f"stopping plasma_store failed: {exc!r}")
    if bench.pool is not None:
        try:
            bench.pool.destroy_all()
            bench.pool.close()
        except Exception as exc:
            log(f"destroy_all failed: {exc!r}")
    if "ray" in sys.modules:
        try:
            sys.modules["ray"].shutdown()
        except Exception as exc:
            log(f"ray.shutdown failed: {exc!r}")
    if bench.address:
        log("stopping the cluster with `grid cluster stop` ...")
        grid = os.path.join(os.path.dirname(sys.executable), "grid")
        try:
            subprocess.run([grid, "cluster", "stop"], check=True, stdout=subprocess.DEVNULL,
                           env={**os.environ, "RAY_ADDRESS": bench.address}, timeout=300)
        except Exception as exc:
            log(f"grid cluster stop failed: {exc!r}")
    if "distributed_grid.cluster.stopping" in sys.modules:  # whatever the stop left of ours
        try:
            sys.modules["distributed_grid.cluster.stopping"].stop_started(
                bench.address or None)
        except Exception as exc:
            log(f"stop_started failed: {exc!r}")
    end_leftovers(tmp)
    prefixes: tuple[str, ...] = (SHM_PREFIX,)
    if cluster_id:
        prefixes += (f"dg.{cluster_id}.", f"dgc.{cluster_id}.", f"dgk.{cluster_id}.")
    for name in os.listdir("/dev/shm"):
        if name.startswith(SHM_PREFIX):
            os.unlink(os.path.join("/dev/shm", name))
            log(f"removed /dev/shm/{name}")
    bench.results["leftover_shm_files"] = sorted(
        n for n in os.listdir("/dev/shm") if n.startswith(prefixes))
    shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--worker" in argv:
        return worker_main(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"sections to run, comma-separated ({','.join(SECTIONS)})")
    parser.add_argument("--iters", type=int, default=2000, help="ops and two: iterations")
    parser.add_argument("--warmup", type=int, default=200, help="ops and two: warm-up rounds")
    parser.add_argument("--many", type=int, default=10_000, help="many: objects")
    parser.add_argument("--keys", type=int, default=10_000,
                        help="block: keys in the one block (10000 takes minutes)")
    parser.add_argument("--big-size", default="1GiB", help="remap: the array's size")
    parser.add_argument("--plasma-python", default=os.environ.get("BENCH_PLASMA_PYTHON"),
                        help="an interpreter with pyarrow==11.0.0 and numpy<2 "
                             "(default: $BENCH_PLASMA_PYTHON; without it Plasma is skipped)")
    parser.add_argument("--plasma-memory", type=int, default=500_000_000,
                        help="plasma_store -m, bytes (default 500000000)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--json-file", help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    sections = [s for s in args.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    if min(args.iters, args.many, args.keys) < 1 or args.warmup < 0:
        parser.error("--iters, --many and --keys must be positive, --warmup 0 or more")

    # A private Ray temp dir and record of started clusters, before Ray or distributed_grid is
    # imported: a short directory keeps Ray's socket paths under the AF_UNIX limit.
    tmp = tempfile.mkdtemp(prefix="dgb", dir="/tmp")
    os.environ["TMPDIR"] = tmp
    tempfile.tempdir = None
    for name in ("RAY_ADDRESS", "XDG_RUNTIME_DIR", "DISTRIBUTED_GRID_FORCE_REMOTE"):
        os.environ.pop(name, None)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks

    bench = Bench(args, tmp)
    cluster_id = None
    try:
        from distributed_grid.sizes import parse_size

        try:
            args.big_bytes = parse_size(args.big_size, "--big-size")
        except ValueError as exc:
            parser.error(str(exc))
        bench.results["machine"] = machine_info()
        bench.results["source"] = source_info()
        log(f"temp dir {tmp}")
        if set(sections) & {"ops", "two", "many"}:
            bench.start_plasma()
        if set(sections) & {"ops", "two", "many", "block", "remap"}:
            log("starting a cluster (head + gpu1) with `grid cluster start --nodes gpu1` ...")
            grid = os.path.join(os.path.dirname(sys.executable), "grid")
            started = subprocess.Popen([grid, "cluster", "start", "--nodes", "gpu1"],
                                       stdout=subprocess.PIPE, text=True)
            out, _ = started.communicate()
            if started.returncode != 0:
                raise RuntimeError(f"grid cluster start failed ({started.returncode})")
            bench.address = out.strip().splitlines()[-1]
            from distributed_grid.memory import MemoryPool

            bench.pool = MemoryPool(bench.address)
            cluster_id = bench.pool.cluster_id
            bench.results["address"] = bench.address
            bench.results["cluster_id"] = cluster_id
            log(f"cluster {cluster_id} at {bench.address}")
        for section in SECTIONS:
            if section in sections:
                getattr(bench, f"section_{section}")()
    finally:
        cleanup(bench, tmp, cluster_id)
    bench.results["notes"] = bench.notes
    if args.json_file:
        with open(args.json_file, "w", encoding="utf-8") as f:
            json.dump(bench.results, f, indent=2)
    print(json.dumps(bench.results, indent=2) if args.json else bench.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
