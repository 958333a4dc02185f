"""The two ways of ``copies.fill_both_ways`` (``pwrite`` from the front, a mapping from the
back) write every byte once, into a real file: how big writes fill pages never written."""

from __future__ import annotations

import numpy as np

from distributed_grid.memory.io import copies


def _pattern(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_fill_both_ways_meets_in_the_middle(tmp_path):
    """The two ways of :func:`copies.fill_both_ways` write every byte once, for lengths
    around the piece size, into a real file through ``pwrite`` and a real mapping."""
    import mmap

    for length in (copies.PARALLEL_MIN, copies.PARALLEL_MIN + 1,
                   3 * copies.FAULT_PIECE - 1, 3 * copies.FAULT_PIECE + 4096):
        base = 4096
        path = tmp_path / "file"
        with open(path, "wb") as f:
            f.truncate(base + length)
        data = _pattern(length, length % 251)
        with open(path, "r+b") as f:
            mapping = mmap.mmap(f.fileno(), base + length)
            try:
                with memoryview(mapping)[base:] as dest:
                    copies.fill_both_ways(f.fileno(), base, dest, memoryview(data))
            finally:
                mapping.close()
        with open(path, "rb") as f:
            assert f.read() == bytes(base) + data
