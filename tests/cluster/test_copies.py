"""The copies of the data paths: read returns ``bytes`` built once, writes over written pages go
through a kept mapping, a view can be opened populated, remote writes send the caller's
buffer. Real cluster, real shared memory; no timing."""

from __future__ import annotations

import os

import numpy as np
import pytest

from distributed_grid.memory.io import buffers, copies, sinks
from distributed_grid.memory.node.local_node import MAPPED_MIN

MiB = 2**20


def _resident(arr: np.ndarray) -> int:
    """Bytes of this process's mapping holding ``arr`` that are in its page table (Rss)."""
    address = arr.__array_interface__["data"][0]
    with open("/proc/self/smaps", encoding="ascii") as f:
        inside = False
        for line in f:
            first = line.split()[0]
            if "-" in first and not first.endswith(":"):
                start, end = (int(x, 16) for x in first.split("-"))
                inside = start <= address < end
            elif inside and first == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError("no mapping holds the array")


def _mapped_segments() -> str:
    with open("/proc/self/maps", encoding="ascii") as f:
        return f.read()


def _pattern(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_read_returns_bytes_small_and_large(pool, blocks, unique):
    for size in (1000, buffers.SMALL - 1, buffers.SMALL, 3 * MiB + 5):
        block_id = blocks.new(size, node="gpu1")
        data = _pattern(size, size)
        pool.write(block_id, data)
        got = pool.read(block_id)
        assert type(got) is bytes and got == data
        part = pool.read(block_id, size=size - 7, offset=7)
        assert type(part) is bytes and part == data[7:]
        assert hash(got) == hash(data)  # a bytes like any other: hashable, equal hash


def test_read_of_a_key_in_several_extents_is_bytes(pool, blocks, unique):
    block_id = blocks.new(4 * MiB, node="gpu1")
    first, second = _pattern(MiB, 1), _pattern(2 * MiB, 2)
    pool.write(block_id, first, offset=0, key=unique)
    pool.write(block_id, second, offset=2 * MiB, key=unique)
    got = pool.read(unique)
    assert type(got) is bytes and got == first + second


def test_remote_read_returns_bytes(pool, remote_pool, blocks):
    block_id = blocks.new(3 * MiB, node="gpu2")
    data = _pattern(3 * MiB, 3)
    pool.write(block_id, data)
    got = remote_pool.read(block_id)
    assert type(got) is bytes and got == data


def test_remote_write_of_a_buffer_round_trips(pool, remote_pool, blocks):
    block_id = blocks.new(5 * MiB, node="gpu2")
    data = np.frombuffer(_pattern(5 * MiB, 4), dtype=np.uint8)
    remote_pool.write(block_id, data, offset=0)
    assert pool.read(block_id) == data.tobytes()
    remote_pool.write(block_id, data[: 70 * 1024], offset=MiB)  # a chunk sent inline too
    assert pool.read(block_id, size=70 * 1024, offset=MiB) == data[: 70 * 1024].tobytes()


def test_remote_read_of_many_chunks_hands_them_over_in_order(pool, remote_pool, blocks):
    """Chunks are handed to the sink on a thread of their own while the next ones travel:
    in order, and a sink's error reaches the caller (no thread is left behind)."""
    import threading

    size = 2 * copies.CHUNK + 12345
    block_id = blocks.new(size, node="gpu2")
    data = _pattern(size, 10)
    pool.write(block_id, data)
    got = bytearray()
    assert remote_pool.read_to(block_id, got.extend) == size
    assert got == data
    assert remote_pool.read(block_id, size=copies.CHUNK + 3, offset=copies.CHUNK - 1) == \
        data[copies.CHUNK - 1 : 2 * copies.CHUNK + 2]

    class Refused(Exception):
        pass

    class RefuseSecond(sinks.Sink):
        rewindable = True  # the chunks come to it straight, not through a spool

        def __init__(self) -> None:
            self.seen: list[int] = []

        def write(self, view: memoryview) -> None:
            self.seen.append(len(view))
            if len(self.seen) == 2:
                raise Refused("the sink is full")

        def mark(self) -> int:
            return 0

        def rewind(self, mark: int) -> None:
            pass

    threads = threading.active_count()
    sink = RefuseSecond()
    with pytest.raises(Refused):
        remote_pool.read_to(block_id, sink)
    assert sink.seen == [copies.CHUNK, copies.CHUNK]  # nothing handed on after the error
    assert threading.active_count() == threads


def test_populated_view_has_its_pages_mapped(pool, blocks):
    block_id = blocks.new(8 * MiB, node="gpu1")
    plain = pool.view(block_id)
    assert _resident(plain) == 0  # mapped, no page touched
    full = pool.view(block_id, populate=True)
    assert _resident(full) >= 8 * MiB
    full[:] = 7  # writable, zero-copy: the block is this memory
    assert pool.read(block_id, size=16, offset=8 * MiB - 16) == b"\x07" * 16
    assert plain[123] == 7


def test_populate_is_ignored_away_from_the_block(pool, remote_pool, blocks):
    block_id = blocks.new(MiB, node="gpu2")
    pool.write(block_id, b"\x05" * MiB)
    copy = remote_pool.view(block_id, populate=True)
    assert not copy.flags.writeable and int(copy.sum()) == 5 * MiB
    consistent = pool.view(block_id, populate=True, consistent=True)
    assert not consistent.flags.writeable and consistent[0] == 5


def test_big_copies_go_through_a_kept_mapping(pool, blocks):
    size = MAPPED_MIN + MiB
    block_id = blocks.new(size, node="gpu1")
    segment = pool.block_info(block_id).segment
    first, second, third = (_pattern(size, s) for s in (5, 6, 7))
    pool.write(block_id, first)  # pages never written: pwrite and the mapping at once
    assert segment in _mapped_segments()
    assert pool.read(block_id) == first
    pool.write(block_id, second)  # over written pages: through the kept mapping
    assert pool.read(block_id) == second
    pool.write(block_id, np.frombuffer(third, dtype=np.uint8))
    assert pool.read(block_id) == third
    assert pool.read(block_id, size=100, offset=size - 100) == third[-100:]  # small: preadv
    pool.deallocate(block_id)
    assert segment not in _mapped_segments()  # the freed memory is not held here
    assert not os.path.exists(f"/dev/shm/{segment}")


def test_big_copies_at_odd_places_land_where_they_should(pool, blocks):
    """A write into fresh pages at an odd offset and length (its two ways meet at a piece that
    is not whole) and a read of an odd range through the mapping, checked against a model."""
    size = 3 * MAPPED_MIN
    block_id = blocks.new(size, node="gpu1")
    model = bytearray(size)
    offset, length = 4097, 2 * MAPPED_MIN + copies.FAULT_PIECE // 2 + 13
    data = _pattern(length, 8)
    pool.write(block_id, data, offset=offset)
    model[offset : offset + length] = data
    assert pool.read(block_id, size=size, offset=0) == bytes(model)
    later = _pattern(MAPPED_MIN + 5, 9)  # over written pages, from an unaligned buffer
    pool.write(block_id, memoryview(b"x" + later)[1:], offset=3)
    model[3 : 3 + len(later)] = later
    assert pool.read(block_id, size=MAPPED_MIN + 7, offset=1) == bytes(model[1 : MAPPED_MIN + 8])
    assert pool.read(block_id, size=size, offset=0) == bytes(model)


def test_read_into_fills_the_callers_buffer(pool, remote_pool, blocks, unique):
    size = MAPPED_MIN + MiB  # on this host, through the kept mapping
    block_id = blocks.new(size, node="gpu1")
    data = _pattern(size, 12)
    pool.write(block_id, data)
    for through in (pool, remote_pool):
        buf = np.zeros(size + 10, dtype=np.uint8)
        assert through.read_into(block_id, buf) == size
        assert buf[:size].tobytes() == data and not buf[size:].any()
    small = bytearray(100)
    assert pool.read_into(block_id, small, size=100, offset=5) == 100 and small == data[5:105]
    weights = np.arange(1000, dtype=np.float64)
    pool.put(unique, weights, node="gpu1")
    into = np.empty(1000, dtype=np.float64)
    assert pool.read_into(unique, into) == weights.nbytes and np.array_equal(into, weights)


def test_read_into_refuses_a_buffer_it_cannot_fill_and_leaves_it_as_it_was(pool, blocks):
    from distributed_grid.errors import InvalidArgument

    block_id = blocks.new(MiB, node="gpu1")
    pool.write(block_id, _pattern(MiB, 13))
    short = bytearray(MiB - 1)
    cases = [(short, "holds 1048575 bytes"), (bytes(MiB), "read-only"),
             (np.zeros(2 * MiB, dtype=np.uint8)[::2], "not contiguous"),
             (5, "bytes-like buffer")]
    for buffer, says in cases:
        with pytest.raises(InvalidArgument, match=says):
            pool.read_into(block_id, buffer)
    assert short == bytearray(MiB - 1)


def test_a_list_of_buffers_is_written_one_after_another(pool, remote_pool, blocks):
    """``write(block, [a, b, c])`` writes them back to back as one write: small (through
    ``pwrite`` pieces), big into pages never written and written before (through the kept
    mapping), and from another host (chunks gathered across the parts)."""
    small = [b"head", np.arange(10, dtype=np.int32), memoryview(b"tail")]
    block_id = blocks.new(MiB, node="gpu1")
    pool.write(block_id, small, offset=3)
    assert pool.read(block_id, size=48, offset=3) == b"head" + small[1].tobytes() + b"tail"
    assert pool.read(block_id, size=3) == bytes(3)

    size = 2 * MAPPED_MIN
    parts = [_pattern(n, n % 97) for n in (100, MAPPED_MIN + 3, 0, MAPPED_MIN - 103)]
    want = b"".join(parts)
    big = blocks.new(size, node="gpu1")
    pool.write(big, parts)  # pages never written
    assert pool.read(big) == want
    again = [np.frombuffer(p[::-1], dtype=np.uint8) for p in parts]
    pool.write(big, again)  # pages written before
    assert pool.read(big) == b"".join(p[::-1] for p in parts)
    remote_pool.write(big, parts)
    assert pool.read(big) == want


def test_a_kept_mapping_is_not_closed_under_a_thread_using_it(pool, blocks):
    """Threads copying through the kept mappings of more blocks than are kept: none sees its
    mapping closed by another's eviction while it uses it."""
    import threading
    import time

    from distributed_grid.memory.shm.mappings import Mappings

    infos = []
    for i in range(3):
        block_id = blocks.new(MiB, node="gpu1")
        pool.write(block_id, bytes([i + 1]) * MiB)
        infos.append(pool.block_info(block_id))
    maps = Mappings(kept=1)
    errors: list[BaseException] = []

    def use(k: int) -> None:
        try:
            for n in range(300):
                which = (n + k) % 3
                with maps.mapped(infos[which]) as segment:
                    time.sleep(0)  # let another thread in between the lookup and the copy
                    with segment.data() as data:
                        assert data[123] == which + 1
        except BaseException as exc:  # noqa: BLE001  (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=use, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    maps.close()
    assert not errors, errors[:3]


def test_a_kept_mapping_of_a_block_freed_by_another_process_goes(pool, grid, blocks):
    """A process that copied a big block through its kept mapping and then waits does not
    hold the block's memory once another process frees it (its watcher closes the mapping)."""
    import time

    size = MAPPED_MIN + MiB
    block_id = blocks.new(size, node="gpu1")
    data = _pattern(size, 14)
    pool.write(block_id, data)
    segment = pool.block_info(block_id).segment
    assert pool.read(block_id) == data
    assert segment in _mapped_segments()
    grid("memory", "deallocate", block_id)
    deadline = time.monotonic() + 30  # the watcher looks every 2 s; a loaded machine is slow
    while segment in _mapped_segments() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert segment not in _mapped_segments()
