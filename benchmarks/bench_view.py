"""Opening a zero-copy view costs the same for a 1 MiB and a 4 GiB block.

Starts a private loopback cluster (head + gpu1), allocates a small and a big block on gpu1, and
times, for each, in the same run:

- attach: mapping the block's segment and making a numpy view over it, with no actor call
  (``Segment.attach`` + ``np.frombuffer``), each time a fresh mapping;
- pool.view: the library call a user makes (``MemoryPool.view``), which also reads the block's
  row from its node's catalog on this host (no round trip) and maps the segment;
- ray.get: a zero-copy ``ray.get`` of a numpy array of the same size already in the object
  store, the closest thing Ray offers.

Prints medians over ``--repeat`` runs and the big/small ratio; with ``--json`` the same as JSON.

    python benchmarks/bench_view.py [--small 1MiB] [--big 4GiB] [--repeat 50] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time


def _median_us(fn, repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", default="1MiB")
    parser.add_argument("--big", default="4GiB")
    parser.add_argument("--repeat", type=int, default=50)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    tmp = tempfile.mkdtemp(prefix="dgv", dir="/tmp")
    os.environ["TMPDIR"] = tmp  # a private Ray temp dir and record of started clusters
    tempfile.tempdir = None
    os.environ.pop("RAY_ADDRESS", None)
    import numpy as np

    from distributed_grid.cluster import starting, stopping
    from distributed_grid.memory import MemoryPool
    from distributed_grid.memory.shm.segment import Segment
    from distributed_grid.sizes import format_size, parse_size

    sizes = {"small": parse_size(args.small), "big": parse_size(args.big)}
    address = starting.start_local(["gpu1"], head_name="head")
    pool = None
    try:
        import ray

        pool = MemoryPool(address)
        pool.ray  # noqa: B018  (connects this process to the cluster, for the ray.get row)
        results = {}
        for label, size in sizes.items():
            block = pool.allocate(size, node="gpu1")

            def attach(block=block):
                segment = Segment.attach(block.segment)
                data = segment.data()
                arr = np.frombuffer(data, dtype=np.uint8)
                del arr
                data.release()
                segment.close()

            def view(block=block):
                pool.view(block.block_id, dtype="uint8")

            ref = ray.put(np.zeros(size, dtype=np.uint8))

            def get(ref=ref):
                ray.get(ref)

            results[label] = {
                "size": size,
                "attach_us": _median_us(attach, args.repeat),
                "pool_view_us": _median_us(view, args.repeat),
                "ray_get_us": _median_us(get, args.repeat),
            }
            del ref
            pool.deallocate(block.block_id)
        ratios = {k: results["big"][k] / results["small"][k]
                  for k in ("attach_us", "pool_view_us", "ray_get_us")}
        if args.json:
            print(json.dumps({"results": results, "big_over_small": ratios}, indent=2))
        else:
            print(f"median of {args.repeat} opens, microseconds "
                  f"(machine: {os.cpu_count()} cores)")
            print(f"{'block':>10}  {'attach+view':>12}  {'pool.view':>10}  {'ray.get':>8}")
            for r in results.values():
                print(f"{format_size(r['size']):>10}  {r['attach_us']:>12.1f}  "
                      f"{r['pool_view_us']:>10.1f}  {r['ray_get_us']:>8.1f}")
            print(f"{'big/small':>10}  {ratios['attach_us']:>12.2f}  "
                  f"{ratios['pool_view_us']:>10.2f}  {ratios['ray_get_us']:>8.2f}")
    finally:
        if pool is not None:
            pool.destroy_all()
        if "ray" in sys.modules:
            sys.modules["ray"].shutdown()
        stopping.stop_started(address)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
