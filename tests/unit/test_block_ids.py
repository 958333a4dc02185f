"""Block ids (``block_<n>_<node>``) and node names: formatted, parsed, refused."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distributed_grid.errors import InvalidArgument
from distributed_grid.names import (
    format_block_id,
    looks_like_block_id,
    parse_block_id,
    validate_node_name,
)

NODE_NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)


@given(n=st.integers(min_value=0, max_value=2**80), node=NODE_NAMES)
def test_block_id_round_trips(n, node):
    block_id = format_block_id(n, node)
    assert block_id == f"block_{n}_{node}"
    assert parse_block_id(block_id) == (n, node)
    assert looks_like_block_id(block_id)
    assert format_block_id(*parse_block_id(block_id)) == block_id
    assert validate_node_name(node) == node


@pytest.mark.parametrize(
    "block_id, expected",
    [
        ("block_0_gpu2", (0, "gpu2")),
        ("block_12_head", (12, "head")),
        ("block_3_a_b", (3, "a_b")),
        ("block_3_4_5", (3, "4_5")),
        ("block_7_n1.5", (7, "n1.5")),
        ("block_1_" + "x" * 64, (1, "x" * 64)),
    ],
)
def test_parse_block_id_examples(block_id, expected):
    assert parse_block_id(block_id) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "block",
        "block_",
        "block_1",
        "block_1_",
        "block__gpu",
        "block_-1_gpu",
        "block_x_gpu",
        "block_1_-gpu",
        "block_1_.gpu",
        "block_1_gpu/2",
        "block_1_gpu 2",
        "Block_1_gpu",
        " block_1_gpu",
        "block_1_gpu ",
        "blocks_1_gpu",
        "block_1.5_gpu",
        "block_1_" + "x" * 65,
        None,
        1,
        b"block_1_gpu",
    ],
)
def test_parse_block_id_rejects(bad):
    with pytest.raises(InvalidArgument) as info:
        parse_block_id(bad)
    assert "block_<n>_<node>" in str(info.value)
    assert not looks_like_block_id(bad)


@pytest.mark.parametrize("bad", ["block_0_gpu2\n", "gpu2\n"])
def test_trailing_newline_is_rejected(bad):
    with pytest.raises(InvalidArgument):
        if bad.startswith("block_"):
            parse_block_id(bad)
        else:
            validate_node_name(bad)


def test_block_number_must_be_ascii_digits():
    with pytest.raises(InvalidArgument):
        parse_block_id("block_\u0663_gpu")  # ARABIC-INDIC DIGIT THREE
