"""Reading a stream to its end (short reads, the length limit, held in memory or spilled to a file)
and the progress a terminal shows for a stream of unknown length: no cluster, no command. The
commands on standard input and output and FIFOs: ``test_stdio.py`` in tests/cluster/."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


class Trickle(io.RawIOBase):
    """A stream that hands out its bytes in the given sizes of reads (a pipe's short reads)."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self.data, self.sizes, self.pos, self.reads = data, sizes, 0, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        size = self.sizes[self.reads % len(self.sizes)]
        self.reads += 1
        n = min(size, len(buf), len(self.data) - self.pos)
        buf[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


@settings(max_examples=200, deadline=None)
@given(length=st.integers(0, 5000), sizes=st.lists(st.integers(1, 700), min_size=1, max_size=5),
       limit=st.none() | st.integers(0, 5000), memory=st.sampled_from([0, 100, 10**6]))
def test_a_stream_is_held_whole_or_refused_past_its_limit(length, sizes, limit, memory):
    from distributed_grid.errors import OutOfBounds
    from distributed_grid.memory.io import inputs
    from distributed_grid.memory.io import spool as input_stream

    data = bytes(i % 251 for i in range(length))
    source = Trickle(data, sizes)
    given_input = inputs.given_input(source)
    assert given_input.is_stream
    if limit is not None and length > limit:
        with pytest.raises(OutOfBounds):
            input_stream.read_to_end(given_input, limit, memory=memory)
        assert limit < source.pos <= limit + max(sizes)  # stopped as soon as it knew
        return
    spool = input_stream.read_to_end(given_input, limit, memory=memory)
    try:
        assert spool.pos == length
        assert (spool.fd is not None) == (length > memory)
        out = bytearray(length)
        held = input_stream.spooled_source(spool, "t")
        if length:
            held.read_into(0, memoryview(out))
        assert bytes(out) == data
    finally:
        spool.close()


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_stream_of_unknown_length_shows_a_count_then_a_file_a_bar():
    from distributed_grid.cli.format import Progress

    shown = Terminal()
    with Progress("store", None, shown) as bar:
        for _ in range(40):
            bar.update(2**20)
    text = shown.getvalue()
    assert text.startswith("\rstore 32.0 MiB ") and "%" not in text
    assert text.rsplit("\r", 1)[1].startswith("store 40.0 MiB ") and text.endswith("/s\n")
    small = Terminal()
    with Progress("store", None, small) as bar:
        bar.update(2**20)  # a small stream ends before a count would help
    assert small.getvalue() == ""
    sized = Terminal()
    with Progress("store", None, sized) as bar:
        bar.expect(64 * 2**20)  # a regular file: its size is known before the copy
        bar.update(64 * 2**20)
    assert "[" + "#" * 30 + "] 100% 64.0 MiB / 64.0 MiB" in sized.getvalue()
