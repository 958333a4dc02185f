"""Writers: every pending write has an owner whose death is noticed, a key has one writer at a
time, and readers never see a torn mix of a key's old and new bytes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from distributed_grid.errors import KeyBusy

GRID = os.path.join(os.path.dirname(sys.executable), "grid")

REMOTE = {"DISTRIBUTED_GRID_FORCE_REMOTE": "1"}
MiB = 2**20

# A client that stores a file under a key and stops in the middle of the copy: it prints
# "copying" once part of the bytes are in, then waits for a line on stdin (or to be killed).
STALLED_WRITER = """
import sys
from distributed_grid.memory import MemoryPool
key, path = sys.argv[1], sys.argv[2]
block, offset = (sys.argv[3], int(sys.argv[4])) if len(sys.argv) > 3 else (None, 0)
pool = MemoryPool()
stalled = False
def stall(_):
    global stalled
    if not stalled:
        stalled = True
        print("copying", flush=True)
        sys.stdin.readline()
pool.store_file(key, path, block_id=block, offset=offset, progress=stall)
"""


def start_stalled(env: dict, key: str, path, block_id: str | None = None,
                  offset: int = 0) -> subprocess.Popen:
    args = [sys.executable, "-c", STALLED_WRITER, key, str(path)]
    if block_id is not None:
        args += [block_id, str(offset)]
    proc = subprocess.Popen(args, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    if line.strip() != b"copying":
        proc.kill()
        raise AssertionError(f"the writer did not start copying: {proc.stderr.read()!r}")
    return proc


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def wait_until(what: str, check, seconds: float = 15.0) -> None:
    """Poll ``check`` for ``seconds`` (the bound the store promises); fail naming ``what``."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} after {seconds:g} s"
        time.sleep(0.25)


@pytest.fixture
def big_file(tmp_path):
    path = tmp_path / "big"
    path.write_bytes(os.urandom(MiB) * 80)  # more than one 64 MiB chunk: progress fires mid-way
    return path


@pytest.mark.parametrize("env", [{}, REMOTE], ids=["local", "remote"])
def test_killed_auto_allocating_stores_leave_nothing_allocated(grid, big_file, unique, env):
    procs = []
    try:
        for i in range(3):
            procs.append(start_stalled({**grid.env, **env}, f"{unique}-{i}", big_file))
        held = [b for b in grid.listing() if any(k.startswith(unique) for k in b["pending_keys"])]
        assert len(held) == 3  # each allocated a block and is writing into it
    finally:
        for proc in procs:
            kill(proc)
    ids = {b["block_id"] for b in held}
    wait_until("blocks of killed writers are still allocated",
               lambda: not ids & {b["block_id"] for b in grid.listing()})


@pytest.mark.parametrize("env", [{}, REMOTE], ids=["local", "remote"])
def test_killed_writers_leave_nothing_pending(grid, pool, blocks, big_file, unique, env):
    block_id = blocks.new(240 * MiB, node="gpu1")
    procs = []
    try:
        for i in range(3):
            key = f"{unique}-{i}"
            # each key has a complete old version that the killed write was overwriting
            pool.write(block_id, b"old", offset=i * 80 * MiB, key=key)
        for i in range(3):
            procs.append(start_stalled({**grid.env, **env}, f"{unique}-{i}", big_file, block_id,
                                       i * 80 * MiB))
        info = pool.block_info(block_id)
        assert sorted(info.pending_keys) == [f"{unique}-{i}" for i in range(3)]
    finally:
        for proc in procs:
            kill(proc)
    wait_until("writes of killed writers are still pending",
               lambda: pool.block_info(block_id).pending_keys == [])
    info = pool.block_info(block_id)
    assert info.keys == {}  # the old versions were being overwritten: gone, not torn
    pool.write(block_id, b"fresh", offset=0, key=f"{unique}-0")  # no --force needed
    assert pool.read(f"{unique}-0") == b"fresh"


def test_one_writer_per_key_and_readers_wait_for_the_new_bytes(grid, pool, blocks, big_file,
                                                                 tmp_path, unique):
    block_id = blocks.new(100 * MiB, node="gpu2")
    pool.write(block_id, b"v1", key=unique)
    proc = start_stalled(grid.env, unique, big_file, block_id, 0)
    try:
        (tmp_path / "small").write_bytes(b"v2")
        line = grid.fails("memory", "store", unique, tmp_path / "small", "--block-id", block_id)
        assert f"key '{unique}' is being written" in line and "one writer at a time" in line
        with pytest.raises(KeyBusy):
            pool.write(block_id, b"v3", key=unique)
        assert pool.find_key(unique).extents == [(0, 2)]  # still there, as it was
        reader = subprocess.Popen([GRID, "memory", "retrieve", unique], env=grid.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(0.5)  # let it reach the busy bytes (it waits either way)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        out, err = reader.communicate(timeout=120)
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        kill(proc)
    assert reader.returncode == 0, err
    assert out == big_file.read_bytes()  # the new bytes, whole: it waited for the write


@pytest.mark.parametrize("env", [{}, REMOTE], ids=["local", "remote"])
def test_parts_of_one_key_are_written_at_once(grid, pool, blocks, big_file, tmp_path, unique,
                                              env):
    """Pipeline stages write their parts of one key at known offsets at the same time: a
    write of another part is no conflict; a write onto the running write's bytes is."""
    block_id = blocks.new(100 * MiB, node="gpu2")
    proc = start_stalled({**grid.env, **env}, unique, big_file, block_id, 0)
    try:
        (tmp_path / "part2").write_bytes(b"second part")
        grid("memory", "store", unique, tmp_path / "part2", "--block-id", block_id,
             "--offset", str(90 * MiB), env=env)
        line = grid.fails("memory", "store", unique, tmp_path / "part2", "--block-id",
                          block_id, "--offset", str(MiB), env=env)
        assert f"key '{unique}' is being written (bytes 0..{80 * MiB} of" in line
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    finally:
        kill(proc)
    assert pool.find_key(unique).extents == [(0, 80 * MiB), (90 * MiB, 11)]
    assert pool.read(unique) == big_file.read_bytes() + b"second part"


TORN_WRITER = """
import sys
from distributed_grid.memory import MemoryPool
key, block, size, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
pool = MemoryPool()
patterns = (b"\\x00" * size, b"\\xff" * size)
for i in range(rounds):
    pool.write(block, patterns[i % 2], offset=0, key=key)
print("done", flush=True)
"""

CHECKING_READER = """
import json, sys, time
from distributed_grid.memory import MemoryPool
target, wanted, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pool = MemoryPool()
reads = torn = missing = 0
end = time.monotonic() + 300  # a bound, not a measurement: the reads are what count
while reads < wanted and time.monotonic() < end:
    try:
        data = pool.read(target, size=size)
    except LookupError:
        missing += 1
        continue
    reads += 1
    if data != data[:1] * len(data):
        torn += 1
print(json.dumps({"reads": reads, "torn": torn, "missing": missing}), flush=True)
"""


TWIN = {"DISTRIBUTED_GRID_PURE_PYTHON": "1"}  # the write guard's pure-Python twin, all clients


@pytest.mark.parametrize("by", ["key", "block"])
@pytest.mark.parametrize("env", [{}, REMOTE, TWIN], ids=["local", "remote", "twin"])
def test_readers_never_see_a_torn_key(grid, pool, blocks, unique, by, env):
    size = 256 * 2**10
    block_id = blocks.new(size, node="gpu1")
    pool.write(block_id, b"\x00" * size, key=unique)
    target = unique if by == "key" else block_id
    run_env = {**grid.env, **env}
    wanted = 150 if env is REMOTE else 600  # reads per reader, every one checked
    readers = [subprocess.Popen([sys.executable, "-c", CHECKING_READER, target, str(wanted),
                                 str(size)], env=run_env, stdout=subprocess.PIPE)
               for _ in range(2)]
    writer = subprocess.Popen([sys.executable, "-c", TORN_WRITER, unique, block_id, str(size),
                               "1000000000"], env={**grid.env, **(env if env is TWIN else {})},
                              stdout=subprocess.PIPE)
    try:
        results = [json.loads(r.communicate(timeout=400)[0]) for r in readers]
        assert writer.poll() is None, "the writer stopped: the reads raced nothing"
    finally:
        kill(writer)
        for r in readers:
            kill(r)
    total = sum(r["reads"] for r in results)
    print(f"{by} reads ({env or 'local'}): {results}")
    assert sum(r["torn"] for r in results) == 0
    assert sum(r["missing"] for r in results) == 0  # the key never vanished mid-rewrite
    assert total == 2 * wanted  # ≥ 1,000 checked reads on this host, 300 through the stores
