"""The spool that stands in for a sink that cannot go back (a pipe) while a read may be redone."""

from __future__ import annotations

import os

from hypothesis import given, settings
from hypothesis import strategies as st

from distributed_grid.memory.io import sinks

steps = st.lists(st.one_of(
    st.tuples(st.just("write"), st.binary(min_size=1, max_size=300)),
    st.tuples(st.just("rewind"), st.integers(min_value=0, max_value=2000)),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(steps=steps, limit=st.sampled_from([64, 512, 10**6]))
def test_a_spool_holds_what_a_rewindable_file_would(steps, limit):
    """Writes and rewinds against a plain bytearray model; spilled or not, the same bytes."""
    model = bytearray()
    pos = 0
    spool = sinks.SpoolSink(limit=limit)
    try:
        for kind, arg in steps:
            if kind == "write":
                spool.write(memoryview(arg))
                model[pos : pos + len(arg)] = arg
                pos += len(arg)
            else:
                mark = min(arg, pos)  # a reader only goes back to a mark it took
                spool.rewind(mark)
                pos = mark
            assert spool.mark() == pos
        out = bytearray()
        assert spool.hand_to(sinks.CallableSink(out.extend)) == pos
        assert bytes(out) == bytes(model[:pos])
        assert (spool.fd is not None) == (max_reached(steps) > limit)
    finally:
        spool.close()


def max_reached(steps) -> int:
    pos = top = 0
    for kind, arg in steps:
        if kind == "write":
            pos += len(arg)
            top = max(top, pos)
        else:
            pos = min(arg, pos)
    return top


def test_a_spilled_spool_goes_to_a_pipe_whole_and_leaves_no_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    data = os.urandom(3 * 2**20)
    spool = sinks.SpoolSink(limit=2**20)
    spool.write(memoryview(data))
    assert spool.fd is not None and os.listdir(tmp_path) == []  # unnamed: nothing to leave
    r, w = os.pipe()
    got = bytearray()
    import threading

    def drain():
        while chunk := os.read(r, 1 << 16):
            got.extend(chunk)

    reader = threading.Thread(target=drain)
    reader.start()
    spool.hand_to(sinks.FdSink(w))
    os.close(w)
    reader.join()
    os.close(r)
    spool.close()
    assert bytes(got) == data
