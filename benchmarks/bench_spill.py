#!/usr/bin/env python3
"""What spilling costs against the disk it spills to: a spill of a block, and its restore,
against a plain write+fsync and a plain read of the same bytes on the same disk, in one run.

A node's store (the library's own, run in this process as every process of a node's host runs
it; no Ray) with a spill folder in ``--folder`` (default: a new folder under the system's temp
folder, on its disk). Each round, in turn:

* **spill**: ``spill`` of a block of ``--size`` bytes (default 256 MiB) whose bytes are random:
  its file written under a temporary name with its checksum, fsynced, renamed, the folder
  fsynced, the catalog updated, the shared memory freed;
* **write+fsync**: the same bytes from memory written to a new file of that folder with
  ``write`` in 8 MiB pieces, then ``fsync``: the disk's own speed for it;
* **restore**: ``restore`` of the spilled block (its file's pages dropped from the page cache:
  the store drops them after a spill) into new shared memory, checked against its checksum;
* **read (cold)**: the plain file read back into new memory with ``preadv`` after
  ``POSIX_FADV_DONTNEED``: the disk's read speed.

Rows are medians of ``--repeat`` rounds; the ratios printed are spill / write+fsync and
restore / read as speeds (the issue's bound: both at least 0.5). Every restore is checked
byte for byte against the block's bytes, outside the timed regions.

Run: ``.venv/bin/python benchmarks/bench_spill.py [--size 256MiB] [--repeat 5]
[--folder DIR] [--json]``. Exit status 0, or 1 when a restore changed a byte.
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
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_transfer import human, log, machine_info  # noqa: E402

from distributed_grid.memory.io import sinks, sources  # noqa: E402
from distributed_grid.memory.node.local_node import LocalNode  # noqa: E402
from distributed_grid.sizes import parse_size  # noqa: E402

PIECE = 8 * 2**20


def plain_write(folder: str, data: memoryview) -> float:
    path = os.path.join(folder, "plain.bin")
    began = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for at in range(0, len(data), PIECE):
            piece = data[at:at + PIECE]
            done = 0
            while done < len(piece):
                done += os.write(fd, piece[done:])
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - began


def plain_read(folder: str, size: int) -> float:
    path = os.path.join(folder, "plain.bin")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        began = time.perf_counter()
        out = bytearray(size)
        view = memoryview(out)
        at = 0
        while at < size:
            at += os.preadv(fd, [view[at:at + PIECE]], at)
        took = time.perf_counter() - began
    finally:
        os.close(fd)
        os.unlink(path)
    return took


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256MiB")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--folder", default=None, help="a folder on the disk to measure")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    size = parse_size(args.size, "--size")
    folder = tempfile.mkdtemp(prefix="bench-spill", dir=args.folder)
    cluster_id = f"bs{uuid.uuid4().hex[:10]}"
    node = LocalNode("n1", cluster_id)
    times: dict[str, list[float]] = {"spill": [], "write+fsync": [], "restore": [],
                                     "read (cold)": []}
    wrong = 0
    try:
        node.configure_spill(os.path.join(folder, "spill"), 4 * size)
        data = memoryview(os.urandom(size))
        block = node.allocate(size)
        node.prepare_write(block.number, 0, size, "b")
        node.fill(block, 0, size, sources.BufferSource(data))
        node.commit_write(block.number, 0, size, "b")
        for round_ in range(args.repeat):
            began = time.perf_counter()
            node.spill(block.number)
            times["spill"].append(time.perf_counter() - began)
            times["write+fsync"].append(plain_write(folder, data))
            began = time.perf_counter()
            node.restore_block(block.number)
            times["restore"].append(time.perf_counter() - began)
            times["read (cold)"].append(plain_read(folder, size))
            out = bytearray(size)
            place = node.find_key("b")
            node.drain(place.block, 0, size, sinks.BufferSink(memoryview(out)))
            wrong += out != data
            log(f"round {round_ + 1}: " + ", ".join(f"{k} {v[-1]:.3f} s"
                                                    for k, v in times.items()))
    finally:
        node.destroy()
        shutil.rmtree(folder, ignore_errors=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": machine_info(), "size": size, "repeat": args.repeat,
        "folder": args.folder or tempfile.gettempdir(),
        "seconds": medians,
        "rates_mb_s": {k: size / v / 1e6 for k, v in medians.items()},
        "spill_vs_write_fsync": medians["write+fsync"] / medians["spill"],
        "restore_vs_cold_read": medians["read (cold)"] / medians["restore"],
        "wrong": wrong,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"spilling {human(size)}, medians of {args.repeat} rounds in turn, to "
              f"{result['folder']}")
        for k, v in medians.items():
            print(f"  {k:<12} {v:7.3f} s  {size / v / 1e6:8.0f} MB/s")
        print(f"  spill   / write+fsync: {result['spill_vs_write_fsync']:.2f}x the disk's "
              "speed (bound: >= 0.5)")
        print(f"  restore / cold read:   {result['restore_vs_cold_read']:.2f}x the disk's "
              "speed (bound: >= 0.5)")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
