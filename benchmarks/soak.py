"""Soak: store actors killed (SIGKILL) while clients run mixed operations and check every byte.

Starts its own cluster (a head and workers gpu1, gpu2, in a private TMPDIR), then runs
``--clients`` processes of ``--ops`` operations each: allocate, store a key at an offset (from
a file or from memory), retrieve it, put/get an array, read through a view, deallocate. Half the
clients take the remote path (through the store actors), half the host's own. Meanwhile the
store actor of a random node is killed with SIGKILL ``--kills`` times (Ray restarts it).

Every client keeps a model of what it stored (the sha256 of each key's bytes) and checks each
read against it. A write that failed leaves its key uncertain: the next read may see the old
bytes, the new ones, or no key; anything else is a torn read. A key the model holds that reads
back wrong or missing is lost bytes. An error that is not a distributed_grid error is a
traceback. Prints the totals, one JSON line with ``--json``.

    .venv/bin/python benchmarks/soak.py [--clients 8] [--ops 500] [--kills 10]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

CLIENT = r"""
import hashlib, json, os, random, sys, tempfile, traceback
import numpy as np
from distributed_grid.errors import GridError, KeyNotFound
from distributed_grid.memory import MemoryPool

me, ops, seed, remote = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
rng = random.Random(seed)
pool = MemoryPool(force_remote=remote)
SLOT = 256 * 1024
model = {}        # key -> (block, offset, sha256 of its bytes) or None when uncertain
previous = {}     # key -> the sha256s an uncertain key may hold
blocks = []       # [block_id, free slots]
stats = dict(ops=0, refused=0, reads=0, torn=0, lost_bytes=0, tracebacks=0, errors={})
tmp = tempfile.mkdtemp()

def digest(b):
    return hashlib.sha256(bytes(b)).hexdigest()

def check(key, data):
    stats["reads"] += 1
    want = model.get(key)
    got = None if data is None else digest(data)
    if want is not None and want[2] == got:
        return
    if want is None and key in previous:  # a failed write: old, new, or gone
        if got is None or got in previous[key]:
            return
        stats["torn"] += 1
        return
    if got is None:
        stats["lost_bytes"] += want[3]
    else:
        stats["torn"] += 1

def op():
    kind = rng.choice(["allocate", "store", "store", "retrieve", "retrieve", "put", "view",
                       "deallocate"])
    if kind == "allocate" or not blocks:
        node = rng.choice(["head", "gpu1", "gpu2"])
        blocks.append([pool.allocate(SLOT * 4, node=node).block_id, list(range(4))])
        return
    block = rng.choice(blocks)
    if kind in ("store", "put"):
        keys = [k for k, v in model.items() if v and v[0] == block[0]]
        if keys and rng.random() < 0.5:  # rewrite a key in place
            key = rng.choice(keys)
            offset = model[key][1]
        elif block[1]:
            key = f"c{me}-{rng.randrange(10**9)}"
            offset = block[1].pop() * SLOT
        else:
            return
        data = rng.randbytes(rng.randrange(1, SLOT))
        old = model.get(key)
        model[key] = None
        previous[key] = {old[2]} if old else set()
        previous[key].add(digest(data))
        if kind == "put":
            pool.write(block[0], data, offset=offset, key=key)
        else:
            path = os.path.join(tmp, "f")
            with open(path, "wb") as f:
                f.write(data)
            pool.store_file(key, path, block_id=block[0], offset=offset)
        model[key] = (block[0], offset, digest(data), len(data))
        previous.pop(key, None)
        return
    if kind in ("retrieve", "view"):
        keys = [k for k, v in model.items() if v is not None] + list(previous)
        if not keys:
            return
        key = rng.choice(keys)
        try:
            if kind == "view" and model.get(key):
                data = pool.view(model[key][0], consistent=True)
                place = pool.find_key(key)
                data = None if place is None else bytes(
                    data[place.extents[0][0]:place.extents[0][0] + place.extents[0][1]])
            else:
                data = pool.read(key)
        except KeyNotFound:
            data = None
        check(key, data)
        if key in previous and data is not None:
            place = pool.find_key(key)
            model[key] = (place.block_id, place.extents[0][0], digest(data), len(data))
            previous.pop(key)
        elif key in previous and data is None:
            previous.pop(key)
            model.pop(key, None)
        return
    if kind == "deallocate":
        blocks.remove(block)
        for key in [k for k, v in model.items() if v and v[0] == block[0]]:
            del model[key]
        pool.deallocate(block[0])

for _ in range(ops):
    stats["ops"] += 1
    try:
        op()
    except GridError as exc:
        stats["refused"] += 1
        name = type(exc).__name__
        stats["errors"][name] = stats["errors"].get(name, 0) + 1
    except Exception:
        stats["tracebacks"] += 1
        traceback.print_exc()
for block, _ in blocks:
    try:
        pool.deallocate(block)
    except GridError:
        pass
print(json.dumps(stats), flush=True)
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--ops", type=int, default=500)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="dgsoak", dir="/tmp")
    os.environ["TMPDIR"] = tmp
    os.environ.pop("RAY_ADDRESS", None)
    os.environ.pop("XDG_RUNTIME_DIR", None)
    tempfile.tempdir = None
    from distributed_grid.cluster import starting, stopping

    address = starting.start_local(["gpu1", "gpu2"], head_name="head")
    pool = None
    try:
        from distributed_grid.memory import MemoryPool

        pool = MemoryPool(address, force_remote=True)
        env = dict(os.environ, RAY_ADDRESS=address)
        started = time.monotonic()
        clients = [subprocess.Popen(
            [sys.executable, "-c", CLIENT, str(i), str(args.ops), str(args.seed * 100 + i),
             "1" if i % 2 else "0"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for i in range(args.clients)]
        rng = random.Random(args.seed)
        kills = 0
        while kills < args.kills and any(c.poll() is None for c in clients):
            time.sleep(rng.uniform(0.3, 1.5))
            node = rng.choice(["head", "gpu1", "gpu2"])
            try:
                pid = pool.ray.call(node, "ping")["pid"]
            except Exception:  # restarting: try another round
                continue
            os.kill(pid, signal.SIGKILL)
            kills += 1
        totals: dict = {"clients": args.clients, "kills": kills}
        tracebacks = []
        for c in clients:
            out, err = c.communicate(timeout=3600)
            lines = out.decode().strip().splitlines()
            if c.returncode != 0 or not lines:
                totals["client_crashes"] = totals.get("client_crashes", 0) + 1
                tracebacks.append(err.decode(errors="replace")[-2000:])
                continue
            result = json.loads(lines[-1])
            for k, v in result.items():
                if k == "errors":
                    for name, n in v.items():
                        totals.setdefault("errors", {})
                        totals["errors"][name] = totals["errors"].get(name, 0) + n
                else:
                    totals[k] = totals.get(k, 0) + v
            if result["tracebacks"]:
                tracebacks.append(err.decode(errors="replace")[-2000:])
        totals["seconds"] = round(time.monotonic() - started, 1)
        if args.json:
            print(json.dumps(totals))
        else:
            for k, v in totals.items():
                print(f"{k:>12}: {v}")
        for tb in tracebacks:
            print(tb, file=sys.stderr)
    finally:
        if pool is not None:
            try:
                pool.destroy_all()
            except Exception:
                traceback.print_exc()
            import ray

            ray.shutdown()
        stopping.stop_started(address)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
