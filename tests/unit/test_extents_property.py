"""Property tests of slice_extents against a plain model: a key's bytes are its extents joined."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from distributed_grid.errors import OutOfBounds
from distributed_grid.memory.io.extents import slice_extents


@st.composite
def blocks_with_extents(draw):
    """A block whose bytes are all different, and non-overlapping extents over it, in any order.

    Every byte value occurs once, so a run that starts one byte off reads different bytes.
    """
    size = draw(st.integers(min_value=0, max_value=256))
    block = bytearray(range(size))
    # cut points split the block into pieces; some pieces become extents, some are gaps
    cuts = sorted(draw(st.lists(st.integers(min_value=0, max_value=size), max_size=12)))
    bounds = [0, *cuts, size]
    pieces = [(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)]
    chosen = [p for p in pieces if draw(st.booleans())]
    extents = draw(st.permutations(chosen))  # a key's order need not be the block's order
    return block, [list(e) for e in extents]


def logical(block: bytearray, extents) -> bytes:
    return b"".join(bytes(block[o : o + n]) for o, n in extents)


def gather(block: bytearray, runs) -> bytes:
    return b"".join(bytes(block[s : s + n]) for s, n in runs)


@st.composite
def valid_ranges(draw):
    block, extents = draw(blocks_with_extents())
    total = sum(n for _, n in extents)
    offset = draw(st.integers(min_value=0, max_value=total))
    size = draw(st.integers(min_value=0, max_value=total - offset))
    return block, extents, offset, size


@given(valid_ranges())
def test_runs_read_the_same_bytes_as_the_model(case):
    block, extents, offset, size = case
    runs = slice_extents(extents, offset, size)
    assert gather(block, runs) == logical(block, extents)[offset : offset + size]
    assert sum(n for _, n in runs) == size
    assert all(n > 0 for _, n in runs)
    for start, n in runs:  # every run lies inside one extent
        assert any(o <= start and start + n <= o + length for o, length in extents)


@given(valid_ranges())
def test_size_none_reads_to_the_end(case):
    block, extents, offset, _ = case
    total = sum(n for _, n in extents)
    runs = slice_extents(extents, offset, None)
    assert gather(block, runs) == logical(block, extents)[offset:]
    assert sum(n for _, n in runs) == total - offset
    assert all(n > 0 for _, n in runs)
    assert runs == slice_extents(extents, offset, total - offset)


@given(valid_ranges())
def test_runs_follow_the_keys_order_and_are_minimal(case):
    block, extents, offset, size = case
    runs = slice_extents(extents, offset, size)
    # at most one run per non-empty extent, in the key's order
    owners = []
    for start, n in runs:
        owner = next(
            i for i, (o, length) in enumerate(extents) if o <= start and start + n <= o + length
        )
        owners.append(owner)
    assert owners == sorted(owners)
    assert len(set(owners)) == len(owners)


@given(valid_ranges())
def test_accepts_tuples_as_well_as_lists(case):
    block, extents, offset, size = case
    as_tuples = tuple(tuple(e) for e in extents)
    assert slice_extents(as_tuples, offset, size) == slice_extents(extents, offset, size)


@given(blocks_with_extents(), st.data())
def test_out_of_range_raises_out_of_bounds(case, data):
    block, extents = case
    total = sum(n for _, n in extents)
    offset = data.draw(st.integers(min_value=-(total + 5), max_value=2 * total + 5))
    size = data.draw(st.none() | st.integers(min_value=-(total + 5), max_value=2 * total + 5))
    want = total - offset if size is None else size
    assume(offset < 0 or want < 0 or offset + want > total)
    with pytest.raises(OutOfBounds) as info:
        slice_extents(extents, offset, size, what="key 'k'")
    assert str(info.value)


@given(blocks_with_extents(), st.data())
def test_never_raises_anything_but_out_of_bounds(case, data):
    block, extents = case
    total = sum(n for _, n in extents)
    offset = data.draw(st.integers(min_value=-(total + 5), max_value=2 * total + 5))
    size = data.draw(st.none() | st.integers(min_value=-(total + 5), max_value=2 * total + 5))
    try:
        runs = slice_extents(extents, offset, size)
    except OutOfBounds:
        want = total - offset if size is None else size
        assert offset < 0 or want < 0 or offset + want > total
    else:
        assert 0 <= offset <= total
        want = total - offset if size is None else size
        assert gather(block, runs) == logical(block, extents)[offset : offset + want]


@pytest.mark.parametrize(
    "extents, offset, size, runs",
    [
        ([], 0, 0, []),
        ([], 0, None, []),
        ([[10, 5]], 0, 5, [(10, 5)]),
        ([[10, 5]], 5, 0, []),
        ([[10, 5]], 5, None, []),
        ([[10, 5], [0, 5]], 3, 4, [(13, 2), (0, 2)]),
        ([[10, 5], [0, 0], [20, 5]], 4, 2, [(14, 1), (20, 1)]),
        ([[0, 0], [7, 3]], 0, 3, [(7, 3)]),
    ],
)
def test_examples(extents, offset, size, runs):
    assert slice_extents(extents, offset, size) == runs


@pytest.mark.parametrize(
    "offset, size, numbers",
    [(-1, 1, ["-1"]), (0, -1, ["-1"]), (11, None, ["11", "10"]), (4, 7, ["7", "4", "10", "6"])],
)
def test_error_messages_carry_the_numbers(offset, size, numbers):
    with pytest.raises(OutOfBounds) as info:
        slice_extents([[0, 4], [8, 6]], offset, size, what="key 'k'")
    for n in numbers:
        assert n in str(info.value)
