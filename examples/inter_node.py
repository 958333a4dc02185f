"""Inter-node communication: one process stores a JSON document, another fetches it remotely.

The guide's use case: "node A" (this process) stores data.json under a key on a node's memory;
"node B" (a second process that only knows the key) finds the block and retrieves it to a file.
Node B runs with DISTRIBUTED_GRID_FORCE_REMOTE=1, so its bytes travel through the block's store
actor as Ray ObjectRefs, exactly as for a process on another host, even on a one-host cluster.

    python examples/inter_node.py [--address HOST:PORT] [--node gpu2] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

from distributed_grid.memory import FORCE_REMOTE_ENV, GridError, MemoryPool, connect

TIMEOUT = 240


def make_document() -> dict[str, Any]:
    """What node A shares: a small job description with a list of work items."""
    return {"job": "resize-images", "from": "node A", "pid": os.getpid(),
            "items": [{"id": i, "path": f"images/{i:05d}.png", "width": 256} for i in range(500)]}


def run(pool: MemoryPool, node: str | None, keep: bool) -> int:
    doc = make_document()
    key = f"shared-{os.getpid()}"
    block_id = None
    with tempfile.TemporaryDirectory() as tmp:
        path, out = os.path.join(tmp, "data.json"), os.path.join(tmp, "received.json")
        with open(path, "w") as f:
            json.dump(doc, f)
        size = os.path.getsize(path)
        try:
            if node is not None:
                block_id = pool.allocate(size, node=node).block_id
            block_id = pool.store_file(key, path, block_id=block_id).block_id
            print(f"node A (pid {os.getpid()}): stored data.json ({size} bytes) as {key!r} in "
                  f"{block_id}, {'local zero-copy' if pool.is_local(block_id) else 'remote'} path")
            env = {**os.environ, "RAY_ADDRESS": pool.address, FORCE_REMOTE_ENV: "1"}
            reader = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--stage", "read", "--key", key,
                 "--output", out], env=env, text=True, capture_output=True,
                timeout=TIMEOUT)
            lines = [line for line in (reader.stdout + reader.stderr).splitlines()
                     if line.startswith(("node B", "error"))]
            if reader.returncode != 0:
                sys.exit(f"error: node B exited {reader.returncode}: "
                            f"{lines[-1] if lines else reader.stderr.strip()}")
            print("\n".join(lines))
            with open(out) as f:
                if json.load(f) != doc:
                    sys.exit("error: node B's file does not parse to the document node A stored")
            print("node A: node B's file parses to the same JSON; inter-node exchange OK")
            return 0
        finally:
            if block_id is not None and not keep:
                pool.deallocate(block_id)
            if block_id is not None:
                print(f"{'kept' if keep else 'deallocated'} {block_id}")


def read_stage(key: str, output: str) -> int:
    """Node B: find the key's block by its key, retrieve it to a file, parse it."""
    pool = connect()  # RAY_ADDRESS from node A
    found = pool.find_key(key)
    if found is None:
        sys.exit(f"error: node B sees no key {key!r}")
    block_id = found.block_id
    path = "local zero-copy" if pool.is_local(block_id) else "remote (ObjectRef)"
    result = pool.retrieve_to_file(block_id, output)
    try:
        with open(output) as f:
            doc = json.load(f)
    except ValueError as exc:
        sys.exit(f"error: {block_id} does not hold JSON: {exc}")
    print(f"node B (pid {os.getpid()}): retrieved {block_id} to {os.path.basename(output)} "
          f"({result.bytes} bytes) over the {path} path: job {doc['job']!r}, "
          f"{len(doc['items'])} items")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="HOST:PORT of the cluster (default: RAY_ADDRESS, "
                        "the host's cluster, or the embedded local one)")
    parser.add_argument("--node", help="the node to keep the document on (default: library picks)")
    parser.add_argument("--keep", action="store_true", help="leave the block allocated")
    parser.add_argument("--stage", choices=["read"], help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        if args.stage == "read":
            return read_stage(args.key, args.output)
        return run(connect(args.address), args.node, args.keep)
    except GridError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    sys.exit(main())
