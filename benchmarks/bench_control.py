#!/usr/bin/env python3
"""The control plane's costs, against the limits measured in the same run.

Everything runs in one process on private loopback clusters (a fresh ``/tmp/dgc*`` TMPDIR, so
no other cluster of the host is touched), stopped at the end also on error or Ctrl-C. Nothing
here asserts a speed: it prints medians and ratios.

What it measures (p50 = median of the per-operation times):

1. blocks: allocate, block_info, prepare+commit (a 16-byte keyed write: prepare, key claim,
   copy, commit) and deallocate on one node holding 100 and then 10,000 blocks, on the local
   path (this host's catalog) and on the remote path (the node's store actor through Ray).
2. view: ``pool.view`` of a block on this host against a raw ``mmap`` + ``np.frombuffer`` of a
   file of the same size in /dev/shm.
3. CLI: ``grid memory list-objects`` with 10,000 blocks, a host-local ``grid memory retrieve B
   --size 1`` against ``python -c "import ray"``, ``grid memory store`` of a page-cached file
   against ``cp`` of it to /dev/shm, and ``grid cluster stop`` with 10,000 blocks (all whole
   processes).
4. nodes: find_key, retrieve of a key (``pool.read``) and list-objects on clusters of 2 and of
   16 simulated worker nodes, local and remote path.
6. directory: the options for the key directory, p50 of a lookup and of a claim: the SQLite file
   on the head's host (direct, and through the head's store from elsewhere), and Ray's GCS
   key-value store (``_internal_kv``; it inserts if absent but has no compare-and-swap).
5. paths: the decisions under the data path, on raw segments (no cluster): creating a segment
   with ``posix_fallocate`` alone and with its creator's mapping populated (``MAP_POPULATE``);
   copying a page-cached file into a fresh segment through a new mapping (``preadv`` into it)
   and through the descriptor (``pwrite``), two threads each; and copying a segment into a pipe
   through a new mapping (``write``) and with ``sendfile``.

    python benchmarks/bench_control.py [--only blocks,view,cli,nodes,paths] [--blocks 10000]
                                       [--file-size 1GiB] [--nodes 2,16] [--json]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

SECTIONS = ("blocks", "view", "cli", "nodes", "paths", "directory")


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def leave_ray() -> None:
    """Disconnect this process from its Ray cluster before that cluster stops (a process stays
    connected to one cluster, and one whose cluster is gone is ended by Ray after a minute)."""
    if "ray" in sys.modules:
        sys.modules["ray"].shutdown()


def p50(fn: Callable[[int], object], repeat: int, clock=time.perf_counter) -> float:
    """Median seconds of ``fn(i)`` over ``repeat`` calls (wall clock, or ``clock``)."""
    samples = []
    for i in range(repeat):
        start = clock()
        fn(i)
        samples.append(clock() - start)
    return statistics.median(samples)


def whole(cmd: list[str], env: dict[str, str], **kw) -> float:
    """Seconds of one whole process (start to exit)."""
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, **kw)
    return time.perf_counter() - start


def paired(a: list[str], b: list[str], env: dict[str, str], runs: int,
           before: Callable[[], None] | None = None) -> tuple[float, float]:
    """Median seconds of two commands run in turn (A B A B ...), so drift hits both alike."""
    times_a, times_b = [], []
    for _ in range(runs):
        if before:
            before()
        times_a.append(whole(a, env))
        if before:
            before()
        times_b.append(whole(b, env))
    return statistics.median(times_a), statistics.median(times_b)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: str) -> None:
        self.args = args
        self.tmp = tmp
        self.results: dict[str, dict] = {}
        self.grid = os.path.join(os.path.dirname(sys.executable), "grid")
        self.env = dict(os.environ)

    # -- 1. blocks -----------------------------------------------------------------------------

    def fill(self, pool, node: str, count: int) -> None:
        """Add ``count`` blocks of 4 KiB to ``node``, each holding a key."""
        for _ in range(count):
            block_id = pool.allocate(4096, node=node).block_id
            pool.write(block_id, b"filler", key=f"filler-{block_id}")

    def block_ops(self, pool, node: str, repeat: int) -> dict[str, float]:
        fresh: list[str] = []
        allocate = p50(lambda i: fresh.append(pool.allocate(4096, node=node).block_id), repeat)
        info = p50(lambda i: pool.block_info(fresh[i]), repeat)
        write = p50(lambda i: pool.write(fresh[i], b"0123456789abcdef", key=f"k{time.time_ns()}"),
                    repeat)
        free = p50(lambda i: pool.deallocate(fresh[i]), repeat)
        return {"allocate": allocate, "block_info": info, "prepare+commit": write,
                "deallocate": free}

    def section_blocks(self, pool, remote) -> None:
        held = 0
        for existing in (100, self.args.blocks):
            self.fill(pool, "gpu1", existing - held)
            held = existing
            log(f"blocks: gpu1 holds {existing} blocks; timing ...")
            local = self.block_ops(pool, "gpu1", 300)
            far = self.block_ops(remote, "gpu1", 100)
            self.results.setdefault("blocks", {})[existing] = {"local": local, "remote": far}

    # -- 2. view -------------------------------------------------------------------------------

    def section_view(self, pool) -> None:
        import numpy as np

        size = 64 * 2**20
        block_id = pool.allocate(size, node="gpu1").block_id
        path = os.path.join("/dev/shm", f"dgbench-view-{os.getpid()}")
        with open(path, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, size)
        try:
            def raw(i: int) -> None:
                fd = os.open(path, os.O_RDWR)
                m = mmap.mmap(fd, size)
                os.close(fd)
                arr = np.frombuffer(m, dtype=np.uint8)
                del arr
                m.close()

            def view(i: int) -> None:
                arr = pool.view(block_id, dtype="uint8")
                del arr

            view(0)
            raw_s, view_s = p50(raw, 500), p50(view, 500)
            self.results["view"] = {"size": size, "raw_mmap_frombuffer": raw_s,
                                    "pool_view": view_s}
        finally:
            os.unlink(path)
            pool.deallocate(block_id)

    # -- 3. whole processes --------------------------------------------------------------------

    def section_cli(self, pool, address: str) -> None:
        env = {**self.env, "RAY_ADDRESS": address}
        cli: dict[str, float] = {}
        count = len(pool.list_blocks())
        log(f"cli: list-objects with {count} blocks ...")
        cli["blocks_listed"] = count
        cli["list_objects"] = statistics.median(
            whole([self.grid, "memory", "list-objects"], env) for _ in range(5))
        small = pool.allocate(4096, node="gpu1").block_id
        log("cli: a host-local retrieve against `python -c 'import ray'` ...")
        cli["retrieve_size_1"], cli["import_ray"] = paired(
            [self.grid, "memory", "retrieve", small, "--size", "1"],
            [sys.executable, "-c", "import ray"], env, runs=10)
        pool.deallocate(small)

        from distributed_grid.sizes import parse_size

        size = parse_size(self.args.file_size)
        src = os.path.join(self.tmp, "file.bin")
        log(f"cli: grid memory store of {size} bytes against cp to /dev/shm ...")
        with open(src, "wb") as f:
            for _ in range(size // 2**24):
                f.write(os.urandom(2**24))
            f.write(os.urandom(size % 2**24))
        with open(src, "rb") as f:
            while f.read(2**24):  # page cache warm
                pass
        dst = f"/dev/shm/dgbench-cp-{os.getpid()}"

        def clear() -> None:  # each run writes new pages: a fresh block, a new file
            if os.path.exists(dst):
                os.unlink(dst)
            place = pool.find_key("bench-file")
            if place is not None:
                pool.deallocate(place.block_id)

        def fresh_cp() -> None:  # the key stays: the next store replaces it in place
            if os.path.exists(dst):
                os.unlink(dst)

        try:
            cli["store_file"], cli["cp_to_shm"] = paired(
                [self.grid, "memory", "store", "bench-file", src], ["cp", src, dst], env,
                runs=self.args.file_runs, before=clear)
            subprocess.run([self.grid, "memory", "store", "bench-file", src], env=env,
                           check=True, stdout=subprocess.DEVNULL)
            cli["store_in_place"], cli["cp_to_shm_again"] = paired(
                [self.grid, "memory", "store", "bench-file", src], ["cp", src, dst], env,
                runs=self.args.file_runs, before=fresh_cp)
            cli["file_size"] = size
        finally:
            clear()
            os.unlink(src)
        self.results["cli"] = cli

    def cluster_stop(self, address: str) -> None:
        env = {**self.env, "RAY_ADDRESS": address}
        log("cli: grid cluster stop ...")
        start = time.perf_counter()
        subprocess.run([self.grid, "cluster", "stop"], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        self.results.setdefault("cli", {})["cluster_stop"] = time.perf_counter() - start

    # -- 4. nodes ------------------------------------------------------------------------------

    def section_nodes(self) -> None:
        from distributed_grid.cluster import starting, stopping
        from distributed_grid.memory import MemoryPool

        per_nodes = {}
        for count in self.args.node_counts:
            names = [f"w{i}" for i in range(count)]
            log(f"nodes: starting a cluster of {count} worker nodes ...")
            address = starting.start_local(names, head_name="head",
                                            object_store_memory=100 * 2**20)
            try:
                pool = MemoryPool(address)
                remote = MemoryPool(address, force_remote=True)
                keys = []
                for i, name in enumerate(names):
                    for j in range(10):
                        block_id = pool.allocate(4096, node=name).block_id
                        key = f"key-{name}-{j}"
                        pool.write(block_id, b"payload-%d" % i, key=key)
                        keys.append(key)
                remote.list_blocks()  # every store's handle known before timing
                per_nodes[count] = {"local": self.key_ops(pool, keys),
                                    "remote": self.key_ops(remote, keys)}
            finally:
                log(f"nodes: stopping the cluster of {count} ...")
                leave_ray()
                stopping.stop_started(address)
        self.results["nodes"] = per_nodes

    @staticmethod
    def key_ops(pool, keys: list[str]) -> dict[str, float]:
        """Wall time per operation, and this process's CPU time per operation: with 2 cores,
        every raylet of the cluster takes some CPU even when idle, which slows any wall clock
        as nodes are added; the CPU time shows what the operation itself costs."""
        pool.find_key(keys[0])
        ops = {"find_key": (lambda i: pool.find_key(keys[(i * 7) % len(keys)]), 200),
               "retrieve_key": (lambda i: pool.read(keys[(i * 11) % len(keys)]), 200),
               "list_objects": (lambda i: pool.list_blocks(), 30)}
        result = {}
        for name, (fn, repeat) in ops.items():
            result[name] = p50(fn, repeat)
            result[name + " cpu"] = p50(fn, repeat, clock=time.process_time)
        return result

    # -- 6. the key directory's options -------------------------------------------------------

    def section_directory(self, pool) -> None:
        from distributed_grid import _ray
        from distributed_grid.memory.client.remote_node import RemoteDirectory
        from distributed_grid.memory.node.service.directory import KeyDirectory

        local = pool.directory
        assert isinstance(local, KeyDirectory), "the bench's head is on this host"
        remote = RemoteDirectory(pool.ray)
        for i in range(200):
            local.claim(f"dirbench-{i}", "block_0_gpu1")
        ns = "distributed_grid_bench"
        for i in range(200):
            _ray.kv_put(f"dirbench-{i}", b"block_0_gpu1", ns)

        def kv_insert(i: int) -> None:
            from ray.experimental import internal_kv

            internal_kv._internal_kv_put(f"dirbench-new-{i}", b"block_0_gpu1", overwrite=False,
                                         namespace=ns)

        self.results["directory"] = {
            "sqlite lookup, on the head's host": p50(lambda i: local.lookup(f"dirbench-{i}"),
                                                     200),
            "sqlite claim, on the head's host": p50(
                lambda i: local.claim(f"dirbench-{i}", "block_0_gpu1"), 200),
            "sqlite lookup, through the head's store": p50(
                lambda i: remote.lookup(f"dirbench-{i}"), 200),
            "sqlite claim, through the head's store": p50(
                lambda i: remote.claim(f"dirbench-{i}", "block_0_gpu1"), 200),
            "GCS kv get": p50(lambda i: _ray.kv_get(f"dirbench-{i}", ns), 200),
            "GCS kv insert-if-absent": p50(kv_insert, 200),
        }

    # -- 5. the data path's decisions, on raw segments -----------------------------------------

    def section_paths(self) -> None:
        import threading

        from distributed_grid.memory.io import copies, sinks, sources
        from distributed_grid.memory.shm import layout
        from distributed_grid.memory.shm import segment as seg
        from distributed_grid.sizes import parse_size

        size = parse_size(self.args.file_size)
        src = os.path.join(self.tmp, "paths.bin")
        with open(src, "wb") as f:
            for _ in range(-(-size // 2**24)):
                f.write(os.urandom(min(2**24, size - f.tell())))
        with open(src, "rb") as f:
            while f.read(2**24):
                pass
        name = f"/dgbench-paths-{os.getpid()}"
        token = bytes(16)
        total = layout.HEADER_SIZE + size

        def fresh() -> None:
            seg.unlink_segment(name)
            seg.create_segment(name, size, token)

        def halves(fn) -> None:
            half = size // 2 // 4096 * 4096
            threads = [threading.Thread(target=fn, args=(a, b))
                       for a, b in ((0, half), (half, size - half))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        def into_mapping() -> None:
            fd = os.open(src, os.O_RDONLY)
            segment = seg.Segment.attach(name)
            data = segment.data()

            def copy(a: int, n: int) -> None:
                for pos, k in copies.chunks(n):
                    got = 0
                    while got < k:
                        got += os.preadv(fd, [data[a + pos + got : a + pos + k]], a + pos + got)
            halves(copy)
            data.release()
            segment.close()
            os.close(fd)

        def into_descriptor() -> None:
            fd = os.open(src, os.O_RDONLY)
            dst = seg.open_data(name, token, size)
            copies.fill_fd(dst, layout.HEADER_SIZE, size, sources.FileSource(fd, src, size))
            os.close(dst)
            os.close(fd)

        def to_pipe(use_sendfile: bool) -> None:
            r, w = os.pipe()

            def drain_pipe() -> None:
                while os.read(r, 2**20):
                    pass

            reader = threading.Thread(target=drain_pipe)
            reader.start()
            if use_sendfile:
                fd = seg.open_data(name, token, size)
                sinks.drain_fd(fd, layout.HEADER_SIZE, size, sinks.FdSink(w))
                os.close(fd)
            else:
                segment = seg.Segment.attach(name)
                data = segment.data()
                sinks.FdSink(w).write(data)
                data.release()
                segment.close()
            os.close(w)
            reader.join()
            os.close(r)

        def populate() -> None:
            seg.unlink_segment(name)
            seg.create_segment(name, size, token)
            fd = os.open(f"/dev/shm{name}", os.O_RDWR)
            m = mmap.mmap(fd, total, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE)
            os.close(fd)
            m.close()

        runs = 3
        paths: dict[str, float] = {"size": size}
        try:
            log("paths: creating segments ...")
            paths["create"] = statistics.median(self._time(fresh) for _ in range(runs))
            paths["create_populated"] = statistics.median(
                self._time(populate) for _ in range(runs))
            log("paths: copying a file into a fresh segment ...")
            into = {"mapping": [], "descriptor": []}
            for _ in range(runs):
                for label, fn in (("mapping", into_mapping), ("descriptor", into_descriptor)):
                    fresh()
                    into[label].append(self._time(fn))
            paths["fill_mapping"] = statistics.median(into["mapping"])
            paths["fill_descriptor"] = statistics.median(into["descriptor"])
            log("paths: copying a segment into a pipe ...")
            paths["pipe_mapping"] = statistics.median(
                self._time(lambda: to_pipe(False)) for _ in range(runs))
            paths["pipe_sendfile"] = statistics.median(
                self._time(lambda: to_pipe(True)) for _ in range(runs))
        finally:
            seg.unlink_segment(name)
            os.unlink(src)
        self.results["paths"] = paths

    @staticmethod
    def _time(fn: Callable[[], object]) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    # -- report --------------------------------------------------------------------------------

    def report(self) -> str:
        r = self.results
        lines = [f"machine: {os.cpu_count()} cores, {platform.machine()}, "
                 f"Python {platform.python_version()}, {platform.system()} {platform.release()}"]
        if "blocks" in r:
            lines += ["", "blocks on one node (p50, microseconds): {} vs {} blocks".format(
                *sorted(r["blocks"])), *_compare(r["blocks"])]
        if "view" in r:
            v = r["view"]
            lines += ["", f"view of a {v['size'] // 2**20} MiB block on its host (p50): "
                      f"pool.view {v['pool_view'] * 1e6:.1f} us, raw mmap + np.frombuffer "
                      f"{v['raw_mmap_frombuffer'] * 1e6:.1f} us "
                      f"({v['pool_view'] / v['raw_mmap_frombuffer']:.2f}x)"]
        if "cli" in r:
            c = r["cli"]
            lines.append("")
            if "list_objects" in c:
                lines.append(f"grid memory list-objects with {c['blocks_listed']} blocks: "
                             f"{c['list_objects']:.3f} s (whole process, median of 5)")
                lines.append(f"grid memory retrieve B --size 1: {c['retrieve_size_1']:.3f} s; "
                             f"python -c 'import ray': {c['import_ray']:.3f} s "
                             f"({c['retrieve_size_1'] / c['import_ray']:.2f}x)")
                gb = c["file_size"] / 1e9
                lines.append(
                    f"grid memory store of {c['file_size'] / 2**30:.2f} GiB into a new block: "
                    f"{c['store_file']:.3f} s ({gb / c['store_file']:.2f} GB/s); cp to /dev/shm: "
                    f"{c['cp_to_shm']:.3f} s ({gb / c['cp_to_shm']:.2f} GB/s); store/cp speed "
                    f"{c['cp_to_shm'] / c['store_file']:.2f}x")
                lines.append(
                    f"the same key stored again (in place): {c['store_in_place']:.3f} s "
                    f"({gb / c['store_in_place']:.2f} GB/s); cp again {c['cp_to_shm_again']:.3f} s"
                    f"; store/cp speed {c['cp_to_shm_again'] / c['store_in_place']:.2f}x")
            if "cluster_stop" in c:
                held = f" with {c['blocks_listed']} blocks" if "blocks_listed" in c else ""
                lines.append(f"grid cluster stop{held}: {c['cluster_stop']:.2f} s")
        if "nodes" in r:
            lines += ["", "per operation (p50, microseconds) at {} vs {} worker nodes".format(
                *sorted(r["nodes"])), *_compare(r["nodes"])]
        if "directory" in r:
            lines += ["", "key directory options (p50, microseconds):"]
            lines += [f"{name:<42}{t * 1e6:>8.0f}" for name, t in r["directory"].items()]
        if "paths" in r:
            p = r["paths"]
            gib = p["size"] / 2**30
            lines += ["", f"data path decisions, {gib:.2f} GiB, medians of 3:",
                      f"create a segment: posix_fallocate {p['create']:.3f} s; with the "
                      f"creator's mapping populated {p['create_populated']:.3f} s",
                      f"file into a fresh segment: new mapping {p['fill_mapping']:.3f} s, "
                      f"descriptor {p['fill_descriptor']:.3f} s "
                      f"({p['fill_mapping'] / p['fill_descriptor']:.2f}x)",
                      f"segment into a pipe: new mapping {p['pipe_mapping']:.3f} s, sendfile "
                      f"{p['pipe_sendfile']:.3f} s ({p['pipe_mapping'] / p['pipe_sendfile']:.2f}x)"]
        return "\n".join(lines)


def _compare(by_count: dict[int, dict[str, dict[str, float]]]) -> list[str]:
    """A table of each operation's p50 at the smaller and the bigger count, and their ratio."""
    few, many = sorted(by_count)
    lines = [f"{'operation':<18}{'path':<8}{few:>10}{many:>10}{'ratio':>8}"]
    for path in ("local", "remote"):
        for op, a in by_count[few][path].items():
            b = by_count[many][path][op]
            lines.append(f"{op:<18}{path:<8}{a * 1e6:>10.0f}{b * 1e6:>10.0f}{b / a:>7.2f}x")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default=",".join(SECTIONS))
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--file-size", default="1GiB")
    parser.add_argument("--file-runs", type=int, default=3)
    parser.add_argument("--nodes", default="2,16")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    args.node_counts = [int(n) for n in args.nodes.split(",")]
    sections = set(args.only.split(","))

    tmp = tempfile.mkdtemp(prefix="dgc", dir="/tmp")
    os.environ["TMPDIR"] = tmp  # a private Ray temp dir and runtime records
    tempfile.tempdir = None
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("XDG_RUNTIME_DIR", None)
    from distributed_grid.cluster import stopping
    from distributed_grid.memory import MemoryPool

    bench = Bench(args, tmp)
    try:
        if sections & {"blocks", "view", "cli", "directory"}:
            log("starting a cluster (head + gpu1) with `grid cluster start` ...")
            out = subprocess.run([bench.grid, "cluster", "start", "--nodes", "gpu1"], check=True,
                                 capture_output=True, text=True, env=bench.env)
            address = out.stdout.strip()
            pool = MemoryPool(address)
            remote = MemoryPool(address, force_remote=True)
            if "blocks" in sections:
                bench.section_blocks(pool, remote)
            if "view" in sections:
                bench.section_view(pool)
            if "cli" in sections:
                bench.section_cli(pool, address)
            if "directory" in sections:
                bench.section_directory(pool)
            pool.close()
            remote.close()
            leave_ray()
            bench.cluster_stop(address)
        if "nodes" in sections:
            bench.section_nodes()
        if "paths" in sections:
            bench.section_paths()
    finally:
        leave_ray()
        stopping.stop_started()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(bench.results, indent=2) if args.json else bench.report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
