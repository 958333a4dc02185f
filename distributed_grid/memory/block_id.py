"""Block ids: ``block_<n>_<node>``, where ``n`` counts the node's blocks and never repeats.

The id names the node that holds the block, so finding a block needs no central directory.
"""

from __future__ import annotations

import re

from distributed_grid.errors import InvalidArgument

_BLOCK_ID_RE = re.compile(r"block_([0-9]+)_([A-Za-z0-9][A-Za-z0-9._-]{0,63})")


def format_block_id(number: int, node: str) -> str:
    """The id of block ``number`` of ``node``."""
    return f"block_{number}_{node}"


def parse_block_id(block_id: str) -> tuple[int, str]:
    """Split a block id into ``(number, node)``.

    Raises:
        InvalidArgument: ``block_id`` is not of the form ``block_<n>_<node>``.
    """
    match = _BLOCK_ID_RE.fullmatch(block_id) if isinstance(block_id, str) else None
    if match is None:
        raise InvalidArgument(
            f"invalid block id {block_id!r}: a block id looks like block_<n>_<node>, "
            "for example block_0_gpu2"
        )
    return int(match.group(1)), match.group(2)


def looks_like_block_id(text: str) -> bool:
    """Whether ``text`` has the shape of a block id (it may still name no block)."""
    return isinstance(text, str) and _BLOCK_ID_RE.fullmatch(text) is not None
