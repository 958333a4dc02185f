"""Offset arithmetic over a key's extents: the key's bytes are its extents one after another."""

from __future__ import annotations

from collections.abc import Sequence

from distributed_grid.errors import OutOfBounds
from distributed_grid.names import check_start


def slice_extents(extents: Sequence[Sequence[int]], offset: int, size: int | None,
                  what: str = "the key") -> list[tuple[int, int]]:
    """Map a range of a key's logical bytes onto block ranges.

    Args:
        extents: ``(block_offset, length)`` pairs in the key's order.
        offset: where the range starts within the key's bytes.
        size: how many bytes; None for all from ``offset``.
        what: how error messages name the key.

    Returns:
        ``(block_offset, length)`` runs, in order, whose lengths add up to the range's size
        (runs of length 0 are left out).

    Raises:
        OutOfBounds: ``offset`` or ``size`` is negative, or the range passes the key's end.
    """
    total = sum(length for _, length in extents)
    check_start(offset, size)
    if offset > total:
        raise OutOfBounds(f"offset {offset} is past the end of {what} ({total} bytes)",
                          offset=offset, total=total)
    want = total - offset if size is None else size
    if offset + want > total:
        raise OutOfBounds(
            f"cannot read {want} bytes at offset {offset} of {what} ({total} bytes): "
            f"at most {total - offset} bytes remain from that offset",
            offset=offset, length=want, total=total,
        )
    runs: list[tuple[int, int]] = []
    skip = offset
    for start, length in extents:
        if want == 0:
            break
        if skip >= length:
            skip -= length
            continue
        n = min(length - skip, want)
        runs.append((start + skip, n))
        want -= n
        skip = 0
    return runs
