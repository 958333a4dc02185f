"""Standard input and output, FIFOs and other inputs that are not regular files.

``grid memory store KEY -`` reads standard input to its end, ``retrieve ... --output -`` writes
to standard output; a FIFO is read once a writer wrote, waited on with a bound. Each command runs
as a subprocess, as a user types it. Reading a stream and showing its progress, without a
cluster: ``test_streams_and_progress.py`` in tests/unit/.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time

import pytest
from helpers.grid import GRID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

WAIT_ENV = "DISTRIBUTED_GRID_INPUT_WAIT_SECONDS"


def one_error(result: subprocess.CompletedProcess) -> str:
    """The one line a failed command printed (exit 1, no traceback, nothing else)."""
    err = result.stderr.decode(errors="replace")
    lines = [line for line in err.splitlines() if line.strip()]
    assert result.returncode == 1, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def entry(listing: list[dict], block_id: str) -> dict:
    return next(b for b in listing if b["block_id"] == block_id)


def listing(pool) -> list[dict]:
    """The cluster's blocks as ``list-objects --json`` shows them (read in this process)."""
    return [b.to_json() for b in pool.list_blocks()]


def snapshot(pool, block_id: str) -> tuple[list[dict], bytes]:
    """What a refused command must leave as it was: the listing, and the block's bytes."""
    return listing(pool), pool.read(block_id, pool.block_info(block_id).size)


def later_writer(path, data: bytes, delay: float = 0.3) -> threading.Thread:
    """A thread that opens the FIFO ``path`` for writing after ``delay`` and writes ``data``."""

    def write() -> None:
        time.sleep(delay)
        with open(path, "wb") as f:  # waits for the reader
            f.write(data)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    return thread


def release(path, thread: threading.Thread) -> None:
    """Let a writer still waiting for a reader go (its open returns once one exists)."""
    thread.join(0.1)
    if thread.is_alive():
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        thread.join(10)
        os.close(reader)


# -- standard input -------------------------------------------------------------------------------


def test_a_pipe_round_trips_and_its_block_fits_exactly(grid, blocks, unique):
    data = os.urandom(3 * 2**20 + 7)
    stored = grid("memory", "store", unique, "-", input=data)
    block_id = blocks.track(stored.stdout.decode().strip())
    assert "allocated and stored 3145735 bytes of standard input" in stored.stderr.decode()
    block = entry(grid.listing(), block_id)
    assert block["size"] == len(data)
    assert block["keys"] == {unique: [[0, len(data)]]}
    out = grid("memory", "retrieve", unique, "--output", "-")
    assert out.stdout == data
    assert grid("memory", "retrieve", block_id, "--output", "-").stdout == data
    deleted = json.loads(grid("memory", "delete", unique, "--json").stdout)
    assert deleted["block_freed"]  # the block was allocated for the key
    assert all(b["block_id"] != block_id for b in grid.listing())


def test_standard_input_from_a_regular_file_from_its_position(grid, pool, blocks, unique,
                                                               tmp_path):
    data = os.urandom(2**20 + 3)
    (tmp_path / "src").write_bytes(data)
    with open(tmp_path / "src", "rb") as f:
        f.seek(1000)
        stored = subprocess.run([GRID, "memory", "store", unique, "-"], stdin=f,
                                capture_output=True, env=grid.env, timeout=120)
    assert stored.returncode == 0, stored.stderr.decode()
    block_id = blocks.track(stored.stdout.decode().strip())
    assert pool.block_info(block_id).size == len(data) - 1000
    assert pool.read(unique) == data[1000:]


def test_standard_input_into_a_block_at_an_offset(grid, pool, blocks, unique):
    block_id = blocks.new(4096)
    data = os.urandom(1000)
    grid("memory", "store", unique, "-", "--block-id", block_id, "--offset", "96", input=data)
    assert pool.block_info(block_id).keys == {unique: [(96, 1000)]}
    assert pool.read(block_id, 1000, 96) == data


@pytest.mark.parametrize("length", [4096 - 96 + 1, 8 * 2**20])
def test_a_stream_longer_than_the_room_changes_nothing(grid, pool, blocks, unique, length):
    block_id = blocks.new(4096)
    pool.write(block_id, b"kept" * 10, 200, key=f"{unique}-kept")
    before = snapshot(pool, block_id)
    result = grid("memory", "store", unique, "-", "--block-id", block_id, "--offset", "96",
                  input=os.urandom(length), check=False)
    line = one_error(result)
    assert "standard input brought more than 4000 bytes" in line, line
    assert f"at most 4000 bytes fit in {block_id} (size 4096) from offset 96" in line, line
    assert snapshot(pool, block_id) == before


def test_a_stream_that_fits_the_room_exactly_is_stored(grid, pool, blocks, unique):
    block_id = blocks.new(4096)
    data = os.urandom(4000)
    grid("memory", "store", unique, "-", "--block-id", block_id, "--offset", "96", input=data)
    assert pool.read(block_id, 4000, 96) == data


def test_nothing_on_standard_input_is_refused(grid, pool, unique, tmp_path):
    """An empty key is more likely a mistake (a producer that failed) than a wish: refused."""
    before = listing(pool)
    line = one_error(grid("memory", "store", unique, "-", input=b"", check=False))
    assert "nothing arrived on standard input" in line
    (tmp_path / "empty").write_bytes(b"")
    with open(tmp_path / "empty", "rb") as f:
        result = subprocess.run([GRID, "memory", "store", unique, "-"], stdin=f,
                                capture_output=True, env=grid.env, timeout=120)
    assert "nothing arrived on standard input" in one_error(result)
    assert listing(pool) == before


def test_a_device_as_standard_input_is_refused(grid, pool, unique):
    before = listing(pool)
    with open("/dev/null", "rb") as null:
        result = subprocess.run([GRID, "memory", "store", unique, "-"], stdin=null,
                                capture_output=True, env=grid.env, timeout=120)
    line = one_error(result)
    assert "standard input (/dev/null): a character device" in line
    assert listing(pool) == before


def test_a_proc_file_as_standard_input_is_read_to_its_end(grid, pool, blocks, unique):
    """By path a /proc file is refused (its size says 0); as standard input it is read to its
    end, like any stream: never 0 bytes stored in silence."""
    with open("/proc/version", "rb") as f:
        expected = f.read()
    with open("/proc/version", "rb") as f:
        stored = subprocess.run([GRID, "memory", "store", unique, "-"], stdin=f,
                                capture_output=True, env=grid.env, timeout=120)
    assert stored.returncode == 0, stored.stderr.decode()
    blocks.track(stored.stdout.decode().strip())
    assert expected and pool.read(unique) == expected


def test_standard_input_by_its_names(grid, pool, blocks, unique):
    data = os.urandom(70_000)
    for n, name in enumerate(("/dev/stdin", "/proc/self/fd/0")):
        stored = grid("memory", "store", f"{unique}{n}", name, input=data)
        blocks.track(stored.stdout.decode().strip())
        assert pool.read(f"{unique}{n}") == data


def test_a_pipe_by_its_descriptor_path(grid, pool, blocks, unique):
    data = os.urandom(5000)
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, data)
        os.close(write_end)
        write_end = -1
        stored = subprocess.run([GRID, "memory", "store", unique, f"/dev/fd/{read_end}"],
                                pass_fds=(read_end,), capture_output=True, env=grid.env,
                                timeout=120)
    finally:
        os.close(read_end)
        if write_end != -1:
            os.close(write_end)
    assert stored.returncode == 0, stored.stderr.decode()
    blocks.track(stored.stdout.decode().strip())
    assert pool.read(unique) == data


def test_a_key_named_dash(grid, pool, blocks, tmp_path):
    """``-`` as FILE_PATH is standard input; as KEY it is a key like any other."""
    (tmp_path / "f").write_bytes(b"dash")
    stored = grid("memory", "store", "-", tmp_path / "f")
    blocks.track(stored.stdout.decode().strip())
    assert pool.read("-") == b"dash"


# -- standard output ------------------------------------------------------------------------------


def test_output_dash_on_a_terminal_gets_the_raw_bytes(grid, pool, blocks, unique):
    import pty
    import tty

    data = os.urandom(50_000)
    pool.write(blocks.new(len(data)), data, key=unique)
    controller, terminal = pty.openpty()
    tty.setraw(terminal)  # the bytes as they are (no newline translation)
    shown = bytearray()
    try:
        proc = subprocess.Popen([GRID, "memory", "retrieve", unique, "--output", "-"],
                                stdout=terminal, stderr=subprocess.PIPE, env=grid.env)
        os.close(terminal)
        terminal = -1
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the command ended and the terminal is drained
                break
            if not chunk:
                break
            shown += chunk
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()
        proc.stderr.close()
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    assert bytes(shown) == data


def test_output_dash_appends_to_a_file_opened_to_append(grid, pool, blocks, unique, tmp_path):
    """``>> FILE``: every write lands at the end (even a pwrite), so the bytes go in order;
    ``/dev/stdout`` is the same descriptor (the file is appended to, not replaced)."""
    data = os.urandom(3 * 2**20 + 11)
    block_id = blocks.new(len(data))
    pool.write(block_id, data, key=unique)
    for target, output in ((unique, "-"), (block_id, "-"), (unique, "/dev/stdout")):
        (tmp_path / "out").write_bytes(b"HEAD")
        with open(tmp_path / "out", "ab") as out:
            result = subprocess.run([GRID, "memory", "retrieve", target, "--output", output],
                                    stdout=out, stderr=subprocess.PIPE, env=grid.env,
                                    timeout=120)
        assert result.returncode == 0, result.stderr.decode()
        assert (tmp_path / "out").read_bytes() == b"HEAD" + data


# -- FIFOs ----------------------------------------------------------------------------------------


def test_a_fifo_with_a_writer_streams(grid, pool, blocks, unique, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    data = os.urandom(2 * 2**20 + 5)
    writer = later_writer(fifo, data)  # comes after the command opened the FIFO
    try:
        stored = grid("memory", "store", unique, fifo)
    finally:
        release(fifo, writer)
    block_id = blocks.track(stored.stdout.decode().strip())
    assert pool.block_info(block_id).size == len(data)
    assert pool.read(unique) == data


def test_a_fifo_without_a_writer_fails_within_the_wait(grid, pool, unique, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    before = listing(pool)
    result = grid("memory", "store", unique, fifo, env={WAIT_ENV: "0.5"}, check=False,
                  timeout=60)
    line = one_error(result)
    assert f"nobody wrote to FIFO {fifo} within 0.5 s" in line, line
    assert listing(pool) == before


def test_a_fifo_without_a_writer_into_a_block_changes_nothing(grid, pool, blocks, unique,
                                                              tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    block_id = blocks.new(4096)
    before = snapshot(pool, block_id)
    result = grid("memory", "store", unique, fifo, "--block-id", block_id,
                  env={WAIT_ENV: "0.2"}, check=False, timeout=60)
    assert "nobody wrote to FIFO" in one_error(result)
    assert snapshot(pool, block_id) == before


def test_a_wait_that_is_not_a_number_is_refused(grid, unique, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    line = one_error(grid("memory", "store", unique, fifo, env={WAIT_ENV: "soon"},
                          check=False, timeout=60))
    assert f"{WAIT_ENV} must be a number of seconds" in line


@pytest.mark.parametrize("path,expected", [("/dev/zero", "a character device"),
                                           ("/dev/shm", "a directory")])
def test_devices_and_directories_are_refused(grid, pool, unique, path, expected):
    before = listing(pool)
    line = one_error(grid("memory", "store", unique, path, check=False))
    assert f"cannot read {path}: {expected}, not a regular file or a FIFO" in line
    assert listing(pool) == before


def test_a_config_fifo_does_not_hang(grid, tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    result = grid("memory", "list-objects", "--config", fifo, env={WAIT_ENV: "0.5"},
                  check=False, timeout=60)
    assert f"nobody wrote to cluster config FIFO {fifo} within 0.5 s" in one_error(result)
    writer = later_writer(fifo, b"nodes: []\n", delay=0.1)
    try:
        listed = grid("memory", "list-objects", "--json", "--config", fifo, timeout=60)
    finally:
        release(fifo, writer)
    assert isinstance(json.loads(listed.stdout), list)
    line = one_error(grid("memory", "list-objects", "--config", "/dev/zero", check=False))
    assert "cannot read cluster config /dev/zero: a character device" in line


# -- the arithmetic of reading a stream to its end -------------------------------------------------


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(length=st.integers(1, 300_000))
def test_a_stream_gets_a_block_of_exactly_its_length(pool, length):
    data = os.urandom(length)
    result = pool.store_stream(f"prop-{length}-{os.getpid()}", io.BytesIO(data))
    try:
        assert result.allocated and result.length == length
        assert pool.block_info(result.block_id).size == length
        assert pool.read(result.key) == data
    finally:
        pool.deallocate(result.block_id)


# -- what the command line and the terminal show ---------------------------------------------


def test_a_dash_reaches_the_command_and_a_value_given_twice_is_refused(grid, pool):
    """fire reads a bare ``-`` as its separator: positionals reach it by name, so a value given
    both as an argument and as its option is refused before anything runs."""
    before = listing(pool)
    result = grid("memory", "allocate", "10", "--size-in-bytes=20", check=False)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert err.splitlines()[-1] == ("error: SIZE_IN_BYTES is given twice (as an argument and "
                                    "as --size-in-bytes)")
    assert listing(pool) == before
