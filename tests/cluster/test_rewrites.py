"""Keys the store places itself, rewritten: the new version goes into new space beside the old
one and takes its place when whole (copy-on-write), so a reader gets one whole version without
waiting for the writer, and a writer killed part-way leaves the old version. Keys written into a
block the user chose (``--block-id``) are rewritten in place, as they always were."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from distributed_grid.errors import BlockNotFound

# A client that rewrites KEY from FILE and SIGKILLs itself half-way through the copy.
KILLED_HALF_WAY = r"""
import os, signal, sys
from distributed_grid.memory import MemoryPool
address, key, path = sys.argv[1:4]
pool = MemoryPool(address)
done = [0]
size = os.path.getsize(path)

def progress(n):
    done[0] += n
    if done[0] >= size // 2:
        os.kill(os.getpid(), signal.SIGKILL)

pool.store_file(key, path, progress=progress)
"""

# A client that rewrites KEY from FILE and stops half-way until its standard input closes.
PAUSED_HALF_WAY = r"""
import os, sys
from distributed_grid.memory import MemoryPool
address, key, path = sys.argv[1:4]
pool = MemoryPool(address)
done, paused = [0], []
size = os.path.getsize(path)

def progress(n):
    done[0] += n
    if done[0] >= size // 2 and not paused:
        paused.append(True)
        print("half", flush=True)
        sys.stdin.read()

result = pool.store_file(key, path, progress=progress)
print(result.block_id, flush=True)
"""

# Rewrites KEY (64 MiB, every byte the version's number) until told to stop.
REWRITE_IN_A_LOOP = r"""
import os, sys
import numpy as np
from distributed_grid.memory import MemoryPool
address, key, stop = sys.argv[1:4]
pool = MemoryPool(address)
version = 1
while not os.path.exists(stop):
    version = version % 250 + 1
    pool.put(key, np.full(64 * 2**20, version, np.uint8))
"""


# Rewrites KEY in place, at offset 0 of BLOCK (a block the user chose), until told to stop.
REWRITE_IN_PLACE = r"""
import os, sys
import numpy as np
from distributed_grid.memory import MemoryPool
address, key, block, stop = sys.argv[1:5]
pool = MemoryPool(address)
versions = [np.full(64 * 2**20, v, np.uint8) for v in (1, 2)]  # made once: writes back to back
i = 0
while not os.path.exists(stop):
    i += 1
    pool.write(block, versions[i % 2], key=key)
"""


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_a_rewrite_goes_to_a_new_block_that_takes_the_place_of_the_old(pool, keys, unique,
                                                                      tmp_path, grid):
    keys.append(unique)
    first = pool.put(unique, np.arange(100_000, dtype=np.int64))
    again = pool.put(unique, np.arange(50_000, dtype=np.int32))
    assert again.block_id != first.block_id and again.block.node == first.block.node
    assert np.array_equal(pool.get(unique), np.arange(50_000, dtype=np.int32))
    with pytest.raises(BlockNotFound):
        pool.block_info(first.block_id)  # the old version's block went with it
    assert [b for b in grid.listing() if unique in b["keys"]] == \
        [b for b in grid.listing() if b["block_id"] == again.block_id]
    chosen = pool.allocate(4096)  # a block the user chose: rewrites stay in place
    try:
        pool.write(chosen.block_id, b"v1", key=unique + "c")
        pool.write(chosen.block_id, b"v2", key=unique + "c")
        assert pool.find_key(unique + "c").block_id == chosen.block_id
    finally:
        pool.deallocate(chosen.block_id)


def test_a_writer_killed_half_way_through_a_rewrite_leaves_the_first_version(
        cluster_address, pool, keys, unique, tmp_path, grid):
    keys.append(unique)
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(os.urandom(256 * 2**20))
    second.write_bytes(os.urandom(256 * 2**20))
    stored = json.loads(grid("memory", "store", unique, first, "--json").stdout)
    killed = subprocess.run([sys.executable, "-c", KILLED_HALF_WAY, cluster_address, unique,
                             str(second)], capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    out = tmp_path / "out.bin"
    grid("memory", "retrieve", unique, "--output", out)
    assert sha(out.read_bytes()) == sha(first.read_bytes())
    deadline = time.monotonic() + 60  # the node's upkeep frees the dead writer's block
    while len([b for b in grid.listing() if b.get("for_key") == unique]) > 1:
        assert time.monotonic() < deadline, grid.listing()
        time.sleep(0.5)
    assert pool.find_key(unique).block_id == stored["block_id"]


def test_a_reader_gets_the_old_version_while_a_rewrite_waits_half_way(
        cluster_address, pool, keys, unique, tmp_path, grid):
    keys.append(unique)
    first, second = tmp_path / "first.bin", tmp_path / "second.bin"
    first.write_bytes(os.urandom(32 * 2**20))
    second.write_bytes(os.urandom(32 * 2**20))
    grid("memory", "store", unique, first)
    writer = subprocess.Popen([sys.executable, "-c", PAUSED_HALF_WAY, cluster_address, unique,
                               str(second)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "half"
        # the writer holds its write open: a read that waited for it would not come back
        assert sha(pool.read(unique)) == sha(first.read_bytes())
        out = tmp_path / "out.bin"
        grid("memory", "retrieve", unique, "--output", out)
        assert sha(out.read_bytes()) == sha(first.read_bytes())
        writer.stdin.close()
        assert writer.stdout.readline().startswith("block_")
        assert writer.wait(timeout=120) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
            writer.wait()
    assert sha(pool.read(unique)) == sha(second.read_bytes())


def test_forty_readers_of_a_key_rewritten_in_a_loop_each_get_a_whole_version(
        cluster_address, pool, keys, unique, tmp_path):
    keys.append(unique)
    pool.put(unique, np.full(64 * 2**20, 0, np.uint8))
    reads_while_rewritten(pool, unique, 40, tmp_path / "stop",
                          [REWRITE_IN_A_LOOP, cluster_address, unique])


def reads_while_rewritten(reader, key: str, reads: int, stop, writer_args: list[str]) -> None:
    """``reads`` reads of ``key`` while a process (``python -c *writer_args STOP``) rewrites
    it in a loop until STOP exists: each a whole version (every byte the same); more reads (up
    to ten times as many) until two versions were seen, so the reads raced the writer."""
    writer = subprocess.Popen([sys.executable, "-c", *writer_args, str(stop)],
                              stderr=subprocess.PIPE, text=True)
    try:
        versions: list[int] = []
        while len(versions) < reads or (len(set(versions)) < 2 and len(versions) < 10 * reads):
            data = np.frombuffer(reader.read(key), np.uint8)
            assert data.size == 64 * 2**20
            assert (data == data[0]).all(), "a read mixed two versions"
            versions.append(int(data[0]))
        assert len(set(versions)) > 1, "the key was not rewritten while it was read"
    finally:
        stop.touch()
        try:
            writer.wait(timeout=120)
        finally:
            if writer.poll() is None:
                writer.kill()
                writer.wait()
    assert writer.returncode == 0, writer.stderr.read()


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_readers_of_a_key_rewritten_in_place_in_a_loop_get_their_turn(
        cluster_address, pool, remote_pool, blocks, unique, tmp_path, remote):
    """The writer's next write starts microseconds after its last one ended; a reader that
    waited asks it to wait its turn, and gets a whole version."""
    block_id = blocks.new(64 * 2**20, node="gpu1")
    pool.write(block_id, np.full(64 * 2**20, 0, np.uint8), key=unique)
    reads_while_rewritten(remote_pool if remote else pool, unique, 10 if remote else 40,
                          tmp_path / "stop", [REWRITE_IN_PLACE, cluster_address, unique,
                                              block_id])


def test_a_replicated_key_is_rewritten_beside_each_copy(pool, keys, unique):
    keys.append(unique)
    first = pool.put(unique, np.arange(200_000), replicas=2)
    again = pool.put(unique, np.arange(100_000))
    assert sorted(again.block.replicas) == sorted(first.block.replicas)
    assert again.block_id != first.block_id
    assert pool.directory.replicas(first.block_id) is None  # the old copies went
    assert np.array_equal(pool.get(unique), np.arange(100_000))
