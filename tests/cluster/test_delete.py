"""``grid memory delete KEY``: a key goes with all its extents, and its block with it when the
block was allocated for the key and holds no other; writes in flight are listed with their
offsets and writers, and hold their key against deletion. The CLI runs as a subprocess. The
node's store alone, without Ray: ``test_delete_on_the_node.py`` in tests/unit/."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from distributed_grid.errors import BlockNotFound, KeyNotFound
from distributed_grid.memory.io import sinks

REMOTE = {"DISTRIBUTED_GRID_FORCE_REMOTE": "1"}

# A client that stores a file under a key and stops before its write commits: it prints
# "held" once the bytes are copied (the write still pending), then waits for a line on stdin.
HELD_WRITER = """
import sys
from distributed_grid.memory import MemoryPool
key, path, block, offset = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
pool = MemoryPool()
def hold(_):
    print("held", flush=True)
    sys.stdin.readline()
pool.store_file(key, path, block_id=block, offset=offset, progress=hold)
print("committed", flush=True)
"""


def hold_write(env: dict, key: str, path, block_id: str, offset: int) -> subprocess.Popen:
    """A process whose write of ``key`` at ``offset`` of the block is prepared, not committed."""
    proc = subprocess.Popen([sys.executable, "-c", HELD_WRITER, key, str(path), block_id,
                             str(offset)], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    if proc.stdout.readline().strip() != b"held":
        proc.kill()
        raise AssertionError(f"the writer did not start: {proc.communicate()[1]!r}")
    return proc


def let_commit(proc: subprocess.Popen) -> None:
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.strip() == b"committed", err


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def block_of(listing: list[dict], block_id: str) -> dict | None:
    return next((b for b in listing if b["block_id"] == block_id), None)


def deleted(grid, key: str, env: dict | None = None) -> dict:
    result = grid("memory", "delete", key, "--json", env=env)
    return json.loads(result.stdout)


def test_a_key_stored_without_a_block_id_takes_its_block_with_it(grid, blocks, tmp_path, unique):
    data = os.urandom(5000)
    (tmp_path / "f").write_bytes(data)
    block_id = blocks.track(grid("memory", "store", unique, tmp_path / "f").stdout.decode()
                            .strip())
    removal = deleted(grid, unique)
    assert removal == {"key": unique, "block_id": block_id, "node": block_id.split("_", 2)[2],
                       "bytes": 5000, "extents": [[0, 5000]], "block_freed": True}
    assert block_of(grid.listing(), block_id) is None
    line = grid.fails("memory", "retrieve", unique)
    assert line.startswith(f"error: no block or key named '{unique}'")
    # the plain form: nothing on stdout, one line of prose on stderr
    again = blocks.track(grid("memory", "store", unique, tmp_path / "f").stdout.decode()
                         .strip())
    plain = grid("memory", "delete", unique)
    assert plain.stdout == b""
    assert plain.stderr.decode().splitlines() == [
        f"deleted key '{unique}' (5000 bytes) from {again}; freed the block, it was allocated "
        "for it"]
    assert block_of(grid.listing(), again) is None


def test_a_delete_through_the_nodes_store(grid, pool, remote_pool, blocks, tmp_path, unique):
    """The remote path: a block allocated for a key through its node's store, deleted with the
    command through it; a key of a shared block deleted from Python through gpu2's store."""
    (tmp_path / "f").write_bytes(os.urandom(3000))
    block_id = blocks.track(remote_pool.store_file(unique, str(tmp_path / "f")).block_id)
    removal = deleted(grid, unique, REMOTE)
    assert removal["block_id"] == block_id and removal["block_freed"] is True
    with pytest.raises(BlockNotFound):
        pool.block_info(block_id)

    shared = blocks.new(8192, node="gpu2")
    other = os.urandom(5000)
    pool.write(shared, b"mine", key=f"{unique}-a")
    pool.write(shared, other, offset=100, key=f"{unique}-b")
    removal = remote_pool.delete(f"{unique}-a")
    assert (removal.block_id, removal.bytes, removal.block_freed) == (shared, 4, False)
    assert pool.block_info(shared).keys == {f"{unique}-b": [(100, 5000)]}
    assert remote_pool.read(f"{unique}-b") == other
    assert remote_pool.directory.lookup(f"{unique}-a") is None
    with pytest.raises(KeyNotFound):
        remote_pool.delete(f"{unique}-a")


def test_a_key_in_a_shared_block_goes_alone(grid, pool, blocks, tmp_path, unique):
    block_id = blocks.new(64 * 1024, node="gpu1")
    mine, other = os.urandom(3000), os.urandom(7000)
    (tmp_path / "mine").write_bytes(mine)
    (tmp_path / "other").write_bytes(other)
    grid("memory", "store", f"{unique}-a", tmp_path / "mine", "--block-id", block_id)
    grid("memory", "store", f"{unique}-b", tmp_path / "other", "--block-id", block_id,
         "--offset", "3000")
    before = pool.read(block_id, size=10_000)
    removal = deleted(grid, f"{unique}-a")
    assert removal["block_freed"] is False and removal["bytes"] == 3000
    assert removal["extents"] == [[0, 3000]] and removal["block_id"] == block_id
    listed = block_of(grid.listing(), block_id)
    assert listed["keys"] == {f"{unique}-b": [[3000, 7000]]}
    assert grid("memory", "retrieve", f"{unique}-b").stdout == other
    assert pool.read(block_id, size=10_000) == before  # no byte of the block moved
    assert pool.directory.lookup(f"{unique}-a") is None  # the key directory forgot it
    # the freed range takes another key without --force
    grid("memory", "store", f"{unique}-c", tmp_path / "mine", "--block-id", block_id)
    assert grid("memory", "retrieve", f"{unique}-c").stdout == mine


def test_a_block_allocated_for_a_key_stays_while_another_key_lives_in_it(grid, blocks, tmp_path,
                                                                        unique):
    (tmp_path / "f").write_bytes(os.urandom(4000))
    block_id = blocks.track(grid("memory", "store", f"{unique}-a", tmp_path / "f")
                            .stdout.decode().strip())
    (tmp_path / "short").write_bytes(b"a" * 1000)
    (tmp_path / "g").write_bytes(b"tail")
    grid("memory", "store", f"{unique}-a", tmp_path / "short", "--block-id", block_id)  # shorter
    grid("memory", "store", f"{unique}-b", tmp_path / "g", "--block-id", block_id, "--offset",
         "2000")
    assert deleted(grid, f"{unique}-a")["block_freed"] is False  # b lives in it
    assert block_of(grid.listing(), block_id)["keys"] == {f"{unique}-b": [[2000, 4]]}
    assert grid("memory", "retrieve", f"{unique}-b").stdout == b"tail"
    # the block was not allocated for b: deleting b leaves it, empty
    assert deleted(grid, f"{unique}-b")["block_freed"] is False
    assert block_of(grid.listing(), block_id)["keys"] == {}


def test_a_key_with_two_extents_goes_whole(grid, pool, blocks, tmp_path, unique):
    block_id = blocks.new(8192, node="gpu2")
    first, second, between = os.urandom(1000), os.urandom(500), os.urandom(100)
    pool.write(block_id, first, offset=0, key=unique)
    pool.write(block_id, between, offset=1000, key=f"{unique}-x")
    pool.write(block_id, second, offset=2000, key=unique)
    assert pool.read(unique) == first + second
    removal = deleted(grid, unique)
    assert removal["extents"] == [[0, 1000], [2000, 500]] and removal["bytes"] == 1500
    assert removal["block_freed"] is False
    assert block_of(grid.listing(), block_id)["keys"] == {f"{unique}-x": [[1000, 100]]}
    assert pool.read(f"{unique}-x") == between
    with pytest.raises(KeyNotFound):
        pool.read(unique)


def test_an_unknown_key_is_one_error_line_and_changes_nothing(grid, blocks, pool, unique):
    block_id = blocks.new(4096, node="gpu1")
    pool.write(block_id, b"kept", key=f"{unique}-kept")
    before = grid.listing()
    result = grid("memory", "delete", f"{unique}-nope", check=False)
    err = result.stderr.decode()
    assert result.returncode == 1 and result.stdout == b"", err
    assert err.strip().splitlines() == [
        f"error: no key named '{unique}-nope': `grid memory list-objects` shows the blocks and "
        "their keys"]
    assert grid.listing() == before
    assert pool.read(f"{unique}-kept") == b"kept"
    usage = grid("memory", "delete", check=False)  # no key: a usage error, nothing ran
    assert usage.returncode == 2 and usage.stderr.decode().strip().splitlines()[-1].startswith(
        "error: ")


@pytest.mark.parametrize("env", [{}, REMOTE], ids=["local", "remote"])
def test_a_write_in_flight_is_listed_and_holds_its_key(grid, pool, blocks, tmp_path, unique,
                                                       env):
    block_id = blocks.new(8192, node="gpu1")
    pool.write(block_id, b"old", key=unique)
    new = os.urandom(2000)
    (tmp_path / "new").write_bytes(new)
    writer = hold_write({**grid.env, **env}, unique, tmp_path / "new", block_id, 1024)
    try:
        listed = block_of(grid.listing(), block_id)
        assert listed["keys"] == {unique: [[0, 3]]} and listed["pending_keys"] == [unique]
        [pending] = listed["pending"]
        assert {k: pending[k] for k in ("key", "offset", "length")} == {
            "key": unique, "offset": 1024, "length": 2000}
        identity = pending["writer"].split(":", 2)[-1] if env else pending["writer"]
        assert identity.split("/")[:2] == [socket.gethostname(), str(writer.pid)]
        assert pending["writer"].startswith("ray:") == bool(env)

        table = grid("memory", "list-objects").stdout.decode()
        section = table.split("writes in progress:\n", 1)[1].splitlines()
        assert section[0].split() == ["BLOCK", "ID", "KEY", "OFFSET", "LENGTH", "WRITER"]
        row = next(line for line in section if line.startswith(block_id + " "))
        assert row.split()[:4] == [block_id, unique, "1024", "2000"]
        assert f"pid {writer.pid} on {socket.gethostname()}" in row
        assert (", Ray job " in row) == bool(env)

        line = grid.fails("memory", "delete", unique)
        assert line.startswith(f"error: cannot delete key '{unique}': it is being written "
                               f"(bytes 1024..3024 of {block_id}, by pid {writer.pid} on ")
        assert block_of(grid.listing(), block_id)["keys"] == {unique: [[0, 3]]}
        let_commit(writer)
    finally:
        kill(writer)
    listed = block_of(grid.listing(), block_id)
    assert listed["pending"] == [] and listed["keys"] == {unique: [[0, 3], [1024, 2000]]}
    assert "writes in progress" not in grid("memory", "list-objects").stdout.decode()
    assert deleted(grid, unique)["bytes"] == 2003
    assert block_of(grid.listing(), block_id)["keys"] == {}


def test_a_key_whose_writer_died_can_be_deleted(grid, pool, blocks, tmp_path, unique):
    block_id = blocks.new(8192, node="gpu2")
    pool.write(block_id, b"old", key=unique)
    (tmp_path / "new").write_bytes(os.urandom(100))
    writer = hold_write(grid.env, unique, tmp_path / "new", block_id, 1024)
    kill(writer)  # its write is undone by the delete, or by the node's upkeep before it
    removal = deleted(grid, unique)
    assert removal["extents"] == [[0, 3]]
    listed = block_of(grid.listing(), block_id)
    assert listed["keys"] == {} and listed["pending"] == []


@pytest.fixture
def other(cluster_address):
    """A second pool of this process: a writer with connections of its own to the catalogs
    (a change it commits is another connection's, as the reading pool counts them)."""
    from distributed_grid.memory import MemoryPool

    second = MemoryPool(cluster_address)
    yield second
    second.close()


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
@pytest.mark.parametrize("where", ["shared", "own", "slab"])
def test_a_read_planned_before_a_delete_finds_the_key_gone(pool, remote_pool, other, blocks,
                                                           tmp_path, unique, where, remote):
    import numpy as np

    mine, theirs = b"\x11" * 4096, b"\x22" * 4096
    if where == "shared":
        block_id = blocks.new(4096, node="gpu1")
        pool.write(block_id, mine, key=unique)
    elif where == "own":  # a file: a block allocated for the key
        (tmp_path / "mine").write_bytes(mine)
        block_id = blocks.track(pool.store_file(unique, str(tmp_path / "mine")).block_id)
    else:  # a small value: a run of a slab, which the next small value takes
        assert pool.put(unique, np.frombuffer(mine, np.uint8), "gpu1").block.slab
    reader = remote_pool if remote else pool
    pieces = reader.plan_read(unique)  # as `grid memory retrieve` does before it reads
    assert other.delete(unique).block_freed is (where == "own")
    if where == "shared":  # another key where it was
        other.write(block_id, theirs, key=f"{unique}-other")
    else:
        placed = other.put(f"{unique}-other", np.frombuffer(theirs, np.uint8), "gpu1")
        if where == "slab":
            assert placed.block_id == pieces[0].block.block_id  # the freed run, taken again
    out = bytearray(4096)
    try:
        with pytest.raises(KeyNotFound):
            reader.read_to(unique, sinks.BufferSink(memoryview(out)), pieces=pieces)
    finally:
        if where != "shared":
            other.delete(f"{unique}-other")


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_a_key_deleted_and_stored_again_while_it_is_read_is_read_again(pool, remote_pool, other,
                                                                       blocks, unique, remote):
    """Between the copies of a key's two extents, the key is deleted and another key written
    over both; after them, that key is deleted and the first stored again in the same places.
    The reader must not return the first extent's old bytes and the other key's second."""
    block_id = blocks.new(4096, node="gpu1")
    for offset in (0, 2000):
        pool.write(block_id, b"\x11" * 1000, offset=offset, key=unique)
    steps = [
        lambda: (other.delete(unique),
                 other.write(block_id, b"\x22" * 3000, key=f"{unique}-other")),
        lambda: (other.delete(f"{unique}-other"),
                 [other.write(block_id, b"\x33" * 1000, offset=o, key=unique)
                  for o in (0, 2000)]),
    ]

    def between_pieces(_: int) -> None:
        if steps:
            steps.pop(0)()

    out = bytearray(2000)
    reader = remote_pool if remote else pool
    reader.read_to(unique, sinks.BufferSink(memoryview(out)), progress=between_pieces)
    assert not steps, "the reader copied fewer pieces than the key has"
    assert bytes(out) == b"\x33" * 2000  # the key as stored again, whole


# A reader of one key, in a loop: each read must be the key's bytes whole (all 0x11) or
# KeyNotFound, never the bytes of another key written where it was.
READER = """
import json, sys, time
from distributed_grid.errors import BlockNotFound, KeyNotFound
from distributed_grid.memory.io import sinks
from distributed_grid.memory import MemoryPool
key, wanted = sys.argv[1], int(sys.argv[2])
pool = MemoryPool()
good = missing = wrong = 0
end = time.monotonic() + 120  # a bound, not a measurement
while good + missing < wanted and time.monotonic() < end:
    try:
        data = pool.read(key)
    except KeyNotFound:
        missing += 1
        continue
    if data == b"\\x11" * len(data) and data:
        good += 1
    else:
        wrong += 1
        print(repr(data[:16]), file=sys.stderr)
print(json.dumps({"good": good, "missing": missing, "wrong": wrong}), flush=True)
"""


def test_a_reader_in_another_process_gets_a_deleted_key_whole_or_not_at_all(grid, pool, blocks,
                                                                           unique):
    size = 64 * 1024
    mine, theirs = b"\x11" * size, b"\x22" * size
    block_id = blocks.new(size, node="gpu1")
    reader = subprocess.Popen([sys.executable, "-c", READER, unique, "3000"], env=grid.env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    rounds = 0
    try:
        while reader.poll() is None:  # the key, then another key where it was, each deleted
            pool.write(block_id, mine, key=unique)
            time.sleep(0.001)
            pool.delete(unique)
            pool.write(block_id, theirs, key=f"{unique}-other")
            pool.delete(f"{unique}-other")
            rounds += 1
        out, err = reader.communicate(timeout=60)
    finally:
        kill(reader)
    assert reader.returncode == 0, err.decode()
    result = json.loads(out)
    print(f"{rounds} rounds, reads {result}")
    assert result["wrong"] == 0, err.decode()
    assert result["good"] > 0 and result["missing"] > 0  # both outcomes happened
