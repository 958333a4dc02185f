"""The control plane: one key directory for the cluster, commands of this host without Ray,
several clients at once. The records those commands trust only while their processes live:
``test_node_records.py`` in tests/unit/."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from distributed_grid.errors import KeyConflict

REMOTE = {"DISTRIBUTED_GRID_FORCE_REMOTE": "1"}


def block_of(listing: list[dict], block_id: str) -> dict:
    return next(b for b in listing if b["block_id"] == block_id)


@pytest.mark.parametrize("env", [{}, REMOTE], ids=["local", "remote"])
def test_a_key_lives_in_one_block_of_the_cluster(grid, pool, blocks, tmp_path, unique, env):
    (tmp_path / "one").write_bytes(b"first copy")
    (tmp_path / "two").write_bytes(b"second")
    on_gpu1 = blocks.new(4096, node="gpu1")
    on_gpu2 = blocks.new(4096, node="gpu2")
    grid("memory", "store", unique, tmp_path / "one", "--block-id", on_gpu1, env=env)
    before = grid.listing()
    for force in ([], ["--force"]):
        line = grid.fails("memory", "store", unique, tmp_path / "two", "--block-id", on_gpu2,
                          *force, env=env)
        assert f"key '{unique}' already lives in {on_gpu1}" in line
    assert grid.listing() == before  # refused before a byte moved
    assert grid("memory", "retrieve", unique, env=env).stdout == b"first copy"
    assert pool.keys()[unique] == on_gpu1
    assert pool.find_key(unique).block_id == on_gpu1
    grid("memory", "deallocate", on_gpu1)  # once its block is gone, the key may move
    grid("memory", "store", unique, tmp_path / "two", "--block-id", on_gpu2, env=env)
    assert pool.find_key(unique).block_id == on_gpu2
    assert grid("memory", "retrieve", unique).stdout == b"second"


def test_a_stale_directory_entry_is_taken_over(pool, remote_pool, blocks, unique):
    first = blocks.new(100, node="gpu1")
    other = blocks.new(100, node="gpu2")
    pool.write(first, b"owned", offset=0, key=unique)
    pool.write(first, b"overwritten", offset=0, key=unique + "-new", force=True)
    assert pool.find_key(unique) is None  # its bytes belong to another key now
    remote_pool.write(other, b"moved", offset=10, key=unique)  # the stale entry goes
    assert pool.find_key(unique).block_id == other
    assert remote_pool.read(unique) == b"moved"
    with pytest.raises(KeyConflict):
        pool.write(first, b"back", offset=50, key=unique)
    assert pool.block_info(first).keys == {unique + "-new": [(0, 11)]}


def test_a_pending_write_holds_its_key_against_other_blocks(pool, blocks, unique):
    first = blocks.new(100, node="gpu1")
    other = blocks.new(100, node="gpu2")
    number, node = pool._router.block_node(first)
    node.prepare_write(number, 0, 4, unique)  # the first steps of a write that is still
    pool._keys.claim(unique, first)  # copying its bytes
    with pytest.raises(KeyConflict, match="already lives in"):
        pool.write(other, b"race", key=unique)
    node.abort_write(number, 0, unique)
    pool.write(other, b"free", key=unique)  # aborted: its claim no longer holds the key
    assert pool.read(unique) == b"free"


COMMANDS = [
    ["memory", "allocate", "1MiB", "--node", "gpu1"],
    ["memory", "allocate", "4096"],
    ["memory", "list-objects"],
    ["memory", "list-objects", "--json"],
    ["cluster", "status", "--json"],
]


def run_grid(grid, args, env=None) -> tuple[bool, str]:
    """Run ``grid ARGS`` (as ``python -m distributed_grid.cli.main``); returns whether it imported
    Ray, and its output."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "distributed_grid.cli.main", *map(str, args)],
        capture_output=True, env={**grid.env, **(env or {})}, timeout=300)
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 0, err
    modules = {line.split("|")[-1].strip() for line in err.splitlines()
               if line.startswith("import time:")}
    return "ray" in modules, result.stdout.decode()


def imports_ray(grid, args, env=None) -> bool:
    return run_grid(grid, args, env)[0]


def test_commands_on_this_hosts_blocks_do_not_import_ray(grid, blocks, tmp_path, unique):
    (tmp_path / "f").write_bytes(b"local bytes")
    for args in COMMANDS:
        ray_imported, out = run_grid(grid, args)
        if args[1] == "allocate":
            blocks.track(out.strip())
        assert not ray_imported, args
    block_id = blocks.new(4096, node="gpu2")
    for args in (["memory", "store", unique, tmp_path / "f", "--block-id", block_id],
                 ["memory", "retrieve", unique, "--output", tmp_path / "back"],
                 ["memory", "retrieve", block_id, "--size", "1"],
                 ["memory", "store", unique + "-auto", tmp_path / "f"]):
        assert not imports_ray(grid, args), args
    assert (tmp_path / "back").read_bytes() == b"local bytes"
    auto = next(b["block_id"] for b in grid.listing() if unique + "-auto" in b["keys"])
    assert not imports_ray(grid, ["memory", "deallocate", auto])
    # the remote path is Ray's: the same command forced remote does import it
    assert imports_ray(grid, ["memory", "retrieve", block_id, "--size", "1"], env=REMOTE)


STORE_MANY = """
import sys
from distributed_grid.memory import MemoryPool
pool = MemoryPool(sys.argv[1])
for i in range(int(sys.argv[3])):
    pool.write(pool.allocate(64).block_id, sys.argv[2].encode() + b"%d" % i,
               key=f"{sys.argv[2]}-{i}")
print("done", flush=True)
"""


def test_two_clients_allocate_and_write_at_once(pool, cluster_address, unique):
    procs = [subprocess.Popen([sys.executable, "-c", STORE_MANY, cluster_address,
                               f"{unique}{tag}", "40"], stdout=subprocess.PIPE)
             for tag in "ab"]
    try:
        for proc in procs:
            assert proc.communicate(timeout=300)[0].strip() == b"done"
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    keys = {k: v for k, v in pool.keys().items() if k.startswith(unique)}
    try:
        assert len(keys) == 80 and len(set(keys.values())) == 80  # one block each, no id twice
        for key, block_id in keys.items():
            tag, i = key.rsplit("-", 1)
            assert pool.read(key) == tag.encode() + i.encode()
            assert pool.find_key(key).block_id == block_id
        # where they go is placement's (test_placement_uses_reported_sizes_and_spreads): 80
        # blocks of 64 bytes move the nodes' block bytes less than a slab of small values does
    finally:
        for block_id in set(keys.values()):
            pool.deallocate(block_id)


def test_placement_uses_reported_sizes_and_spreads(grid, blocks):
    made = [blocks.track(grid("memory", "allocate", "8MiB").stdout.decode().strip())
            for _ in range(4)]
    nodes = [b.rsplit("_", 1)[1] for b in made]
    assert sorted(nodes) == ["gpu1", "gpu1", "gpu2", "gpu2"]  # fewer block bytes wins a tie
    status = json.loads(grid("cluster", "status", "--json").stdout)
    assert all(n["blocks"] >= 2 for n in status["nodes"] if n["node"] in ("gpu1", "gpu2"))


def test_upkeep_publishes_the_block_list_for_when_the_node_is_gone(pool, blocks, unique):
    block_id = blocks.new(4096, node="gpu1")
    pool.write(block_id, b"x", key=unique)
    deadline = time.monotonic() + 60
    while True:  # the store's upkeep publishes within a few seconds of a change
        published = {b.block_id: b for b in pool.ray.last_published("gpu1")}
        if block_id in published and unique in published[block_id].keys:
            break
        assert time.monotonic() < deadline, "gpu1's store never published its block list"
        time.sleep(0.5)
    assert published[block_id] == pool.block_info(block_id)


def test_a_catalog_of_another_version_is_one_error_line(fresh):
    import sqlite3

    from distributed_grid.memory.node.catalog import SCHEMA_VERSION, catalog_path

    fresh("cluster", "start", "--nodes", "gpu1")
    cluster_id = fresh.remember_cluster()["cluster_id"]
    block_id = fresh.out("memory", "allocate", "4096", "--node", "gpu1")
    db = sqlite3.connect(catalog_path(cluster_id, "gpu1"))
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 41}")
    db.commit()
    db.close()
    for args in (["memory", "retrieve", block_id], ["memory", "list-objects"]):
        failed = fresh(*args, check=False)
        err = failed.stderr.decode()
        assert failed.returncode == 1 and "Traceback" not in err, err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: the catalog of node gpu1") and "schema version" in line
        assert f"reads version {SCHEMA_VERSION}" in line
