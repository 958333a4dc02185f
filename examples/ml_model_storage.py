"""ML model storage: a model's weights as safetensors in a node's memory, served zero-copy by
two processes at once.

A seeded 2-layer MLP (20 MiB: float32 weights, a float16 bias) is stored with
``pool.put_tensors`` in the safetensors format (``grid memory retrieve`` the key and
``safetensors`` loads it). Two server processes start at once; each takes the tensors with
``pool.get_tensors``, which on the block's host are arrays over the block itself, touches every
byte of them, and, while both hold them, reports its memory (``/proc/self/status``,
``/proc/self/smaps_rollup``) and runs a forward pass:

- ``RssAnon``, a process's private memory, does not grow by the weights' size: no copy;
- ``RssShmem`` grows by it: the pages touched are the block's shared pages, counted in the RSS
  of every process that maps them, yet in RAM once;
- ``Pss_Shmem`` charges each process its share of those pages: about half each, as the two
  servers map the same pages.

On another host than the block's, ``get_tensors`` returns copies and the example says so.

    python examples/ml_model_storage.py [--address HOST:PORT] [--node gpu2] [--framework torch]
                                        [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any

import numpy as np

from distributed_grid.memory import GridError, MemoryPool, connect

MiB = 2**20
X_SEED = 1


def make_model(seed: int = 0) -> dict[str, np.ndarray]:
    """A 2-layer MLP, 1024 -> 4096 -> 256: 20 MiB of float32 weights and a float16 bias."""
    rng = np.random.default_rng(seed)
    return {"fc1.weight": rng.standard_normal((1024, 4096), dtype=np.float32) * 0.03,
            "fc1.bias": rng.standard_normal(4096, dtype=np.float32) * 0.01,
            "fc2.weight": rng.standard_normal((4096, 256), dtype=np.float32) * 0.02,
            "fc2.bias": (rng.standard_normal(256) * 0.01).astype(np.float16)}


def inputs() -> np.ndarray:
    return np.random.default_rng(X_SEED).standard_normal((8, 1024), dtype=np.float32)


def forward(w: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The forward pass on numpy arrays (the block's own, or the originals)."""
    hidden = np.maximum(x @ w["fc1.weight"] + w["fc1.bias"], 0)
    return hidden @ w["fc2.weight"] + w["fc2.bias"].astype(np.float32)


def forward_torch(w: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """The same forward pass on torch tensors."""
    import torch

    hidden = torch.relu(torch.from_numpy(x) @ w["fc1.weight"] + w["fc1.bias"])
    return (hidden @ w["fc2.weight"] + w["fc2.bias"].float()).numpy()


def memory() -> dict[str, int]:
    """This process's VmRSS, RssAnon, RssShmem and Pss_Shmem, in bytes."""
    found = {}
    for path in ("/proc/self/status", "/proc/self/smaps_rollup"):
        with open(path) as f:
            for line in f:
                name, _, value = line.partition(":")
                if name in ("VmRSS", "RssAnon", "RssShmem", "Pss_Shmem"):
                    found[name] = int(value.split()[0]) * 1024
    return found


# -- a server: one of the two processes ---------------------------------------------------------


def serve(pool: MemoryPool, key: str, framework: str) -> int:
    """Take the tensors, touch them all, say ``ready``; on the parent's word (both servers hold
    them then) report memory and the forward pass's output; end on its next word."""
    before = memory()
    tensors = pool.get_tensors(key, framework=framework)
    local = pool.is_local(pool.find_key(key).block_id)
    checksum = sum(float(t.sum()) for t in tensors.values())  # reads every page
    print("ready", flush=True)
    sys.stdin.readline()
    held = memory()
    run = forward_torch if framework == "torch" else forward
    out = run(tensors, inputs())
    print(json.dumps({"pid": os.getpid(), "local": local, "before": before, "held": held,
                      "checksum": checksum, "output": out.tolist()}), flush=True)
    sys.stdin.readline()
    return 0


def start_servers(pool: MemoryPool, key: str, framework: str, count: int = 2) -> list[dict]:
    """Run ``count`` servers at once; their reports, taken while all of them hold the tensors."""
    servers = [subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve", key, "--address", pool.address,
         "--framework", framework], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(count)]
    try:
        for i, server in enumerate(servers):
            if server.stdout.readline().strip() != "ready":
                sys.exit(f"error: server {i} ended before it held the tensors")
        for server in servers:  # all hold them now: measure
            server.stdin.write("measure\n")
            server.stdin.flush()
        reports = []
        for i, server in enumerate(servers):
            line = server.stdout.readline()
            if not line:
                sys.exit(f"error: server {i} ended before it reported")
            reports.append(json.loads(line))
        for server in servers:
            server.stdin.write("exit\n")
            server.stdin.close()
        for server in servers:
            server.wait(timeout=60)
        return reports
    finally:
        for server in servers:
            if server.poll() is None:
                server.kill()
                server.wait()


# -- the example --------------------------------------------------------------------------------


def check_tensors(pool: MemoryPool, key: str, weights: dict[str, np.ndarray],
                  local: bool) -> None:
    """The key's tensors are the weights, dtypes and all; one line each."""
    how = "zero-copy view" if local else "copy fetched through Ray"
    for name, t in pool.get_tensors(key).items():
        if not np.array_equal(t, weights[name]) or t.dtype != weights[name].dtype:
            sys.exit(f"error: tensor {name} differs from the original")
        print(f"  {name:<11} {str(t.dtype):<8} {t.shape!s:<12} {how}")


def run(pool: MemoryPool, node: str | None, keep: bool, framework: str) -> int:
    weights = make_model()
    size = sum(w.nbytes for w in weights.values())
    key = f"mlp-weights-{os.getpid()}"
    stored = pool.put_tensors(key, weights, node=node, metadata={"model": "mlp 1024-4096-256"})
    block_id = stored.block_id
    try:
        local = pool.is_local(block_id)
        print(f"stored {len(weights)} tensors ({size / MiB:.1f} MiB) as safetensors {key!r} in "
              f"{block_id} (local: {local})")
        check_tensors(pool, key, weights, local)  # its views are gone when it returns
        want = forward(weights, inputs())
        reports = start_servers(pool, key, framework)
        for i, r in enumerate(reports):
            got = np.asarray(r["output"], dtype=np.float32)
            if not np.allclose(got, want, rtol=1e-4, atol=1e-4):
                sys.exit(f"error: server {i}'s forward pass differs: max |diff| "
                         f"{np.abs(got - want).max()}")
            grew = {k: (r["held"][k] - r["before"][k]) / MiB for k in r["held"]}
            print(f"server {i} (pid {r['pid']}, {framework}): forward pass OK; while both "
                  f"servers hold the weights: VmRSS +{grew['VmRSS']:.1f} MiB, RssAnon "
                  f"+{grew['RssAnon']:.1f} MiB (private), RssShmem +{grew['RssShmem']:.1f} MiB "
                  f"(shared pages), Pss_Shmem +{grew['Pss_Shmem']:.1f} MiB (its share)")
            if not r["local"]:
                continue
            if grew["RssAnon"] * MiB > size / 2 or grew["RssShmem"] * MiB < size * 0.9:
                sys.exit(f"error: server {i} did not map the weights zero-copy: its private "
                         f"memory grew {grew['RssAnon']:.1f} MiB for {size / MiB:.1f} MiB")
            if grew["Pss_Shmem"] * MiB > size * 0.75:
                sys.exit(f"error: server {i} is charged {grew['Pss_Shmem']:.1f} MiB of the "
                         f"{size / MiB:.1f} MiB: the servers do not share the pages")
        if all(r["local"] for r in reports):
            print(f"the two servers share one copy of the {size / MiB:.1f} MiB of weights: "
                  "neither's private memory grew by them")
        else:
            print("the servers hold copies: the block is on another host")
        print("model storage OK")
        return 0
    finally:
        if not keep:
            pool.deallocate(block_id)
        print(f"{'kept' if keep else 'deallocated'} {block_id}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", help="HOST:PORT of the cluster (default: RAY_ADDRESS, "
                        "the host's cluster, or the embedded local one)")
    parser.add_argument("--node", help="the node to keep the weights on (default: library picks)")
    parser.add_argument("--framework", choices=("numpy", "torch"), default="numpy",
                        help="what the servers compute with (torch must be installed)")
    parser.add_argument("--keep", action="store_true", help="leave the block allocated")
    parser.add_argument("--serve", metavar="KEY", help=argparse.SUPPRESS)  # a server process
    args = parser.parse_args()
    if args.framework == "torch":
        try:
            import torch  # noqa: F401
        except ImportError:
            sys.exit("error: --framework torch needs torch: pip install 'distributed-grid[torch]'")
    try:
        with connect(args.address) as pool:
            if args.serve:
                return serve(pool, args.serve, args.framework)
            return run(pool, args.node, args.keep, args.framework)
    except GridError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    sys.exit(main())
