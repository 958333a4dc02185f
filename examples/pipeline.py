"""Data processing pipeline: a block as a shared workspace for separate processes.

The guide's use case, as it runs: allocate a workspace, then process A stores its CSV part under
the key ``results`` at offset 0 and process B stores its part under the same key at offset 50000
(two concurrent ``grid memory store`` commands), and a third process reads the key back as
part1 + part2. Children find the cluster through RAY_ADDRESS.

    python examples/pipeline.py [--address HOST:PORT] [--node gpu1] [--size 100MB] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from distributed_grid.memory import GridError, MemoryPool, connect, parse_size

OFFSET_B = 50000  # where process B's part goes, as in the guide
TIMEOUT = 240


def make_part(shard: int, rows: int = 2000) -> bytes:
    """One stage's results: a CSV of readings from one shard of sensors."""
    lines = ["shard,sensor,reading"] + [
        f"{shard},s{i:04d},{(i * 37 + shard * 11) % 1000 / 10:.1f}" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def grid_command() -> str:
    beside = os.path.join(os.path.dirname(sys.executable), "grid")
    return beside if os.path.exists(beside) else shutil.which("grid") or "grid"


def spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def wait(proc: subprocess.Popen) -> str:
    """A child's output, once it has exited (killed after TIMEOUT seconds)."""
    try:
        return proc.communicate(timeout=TIMEOUT)[0]
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.communicate()[0] + f"\nerror: timed out after {TIMEOUT} s"


def check(proc: subprocess.Popen, out: str, what: str, starts: str) -> str:
    """The child's last line that ``starts`` so; exits 1 if the child failed."""
    lines = [line for line in out.splitlines() if line.startswith((starts, "error"))]
    if proc.returncode != 0 or not lines or lines[-1].startswith("error"):
        sys.exit(f"error: {what} exited {proc.returncode}: {lines[-1] if lines else out}")
    return lines[-1]


def run(pool: MemoryPool, node: str | None, size: int, keep: bool) -> int:
    parts = [make_part(1), make_part(2)]
    if len(parts[0]) > OFFSET_B or size < OFFSET_B + len(parts[1]):
        sys.exit(f"error: the parts ({len(parts[0])} and {len(parts[1])} bytes) do not fit at "
                 f"0 and {OFFSET_B} in a block of {size} bytes")
    key = f"results-{os.getpid()}"
    env = {**os.environ, "RAY_ADDRESS": pool.address}  # the children's cluster
    block_id = pool.allocate(size, node=node).block_id
    print(f"allocated workspace {block_id} ({size} bytes); key {key!r}")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            files = [os.path.join(tmp, f"part{n}.csv") for n in (1, 2)]
            stages = {}
            for name, path, data, offset in zip("AB", files, parts, (0, OFFSET_B), strict=True):
                Path(path).write_bytes(data)
                stages[name] = spawn([grid_command(), "memory", "store", key, path,
                                      "--block-id", block_id, "--offset", str(offset)], env)
                print(f"process {name} (pid {stages[name].pid}): grid memory store {key} "
                      f"{os.path.basename(path)} --block-id {block_id} --offset {offset}")
            outputs = {name: wait(proc) for name, proc in stages.items()}  # both, then check
            for name, proc in stages.items():
                line = check(proc, outputs[name], f"process {name}", "stored")
                print(f"process {name}: {line.replace(tmp + os.sep, '')}")
            reader = spawn([sys.executable, os.path.abspath(__file__), "--stage", "read", "--key",
                            key, *files], env)
            print(check(reader, wait(reader), "the reader", "reader"))
        print("pipeline OK")
        return 0
    finally:
        if not keep:
            pool.deallocate(block_id)
        print(f"{'kept' if keep else 'deallocated'} {block_id}")


def read_stage(key: str, files: list[str]) -> int:
    """The third process: read the key back and check it is the parts one after the other."""
    data = connect().read(key)  # RAY_ADDRESS from the parent
    expected = b"".join(Path(path).read_bytes() for path in files)
    if data != expected:
        sys.exit(f"error: {key!r} holds {len(data)} bytes, not part1 + part2 "
                 f"({len(expected)} bytes)")
    rows = sum(1 for line in data.decode().splitlines() if not line.startswith("shard,"))
    print(f"reader (pid {os.getpid()}): {key!r} reads back as part1 + part2: "
          f"{len(data)} bytes, {rows} rows")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="HOST:PORT of the cluster (default: RAY_ADDRESS, "
                        "the host's cluster, or the embedded local one)")
    parser.add_argument("--node", help="the node of the workspace (default: library picks)")
    parser.add_argument("--size", default="104857600", help="workspace size (default: 100 MiB)")
    parser.add_argument("--keep", action="store_true", help="leave the workspace allocated")
    parser.add_argument("--stage", choices=["read"], help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("files", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        if args.stage == "read":
            return read_stage(args.key, args.files)
        return run(connect(args.address), args.node, parse_size(args.size), args.keep)
    except GridError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    sys.exit(main())
