"""Sizes as users type them and as the CLI prints them: parse_size and format_size."""

from __future__ import annotations

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from distributed_grid.errors import InvalidArgument
from distributed_grid.sizes import format_size, parse_size


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, 0),
        (1, 1),
        (10485760, 10485760),
        (2**70, 2**70),
        (-5, -5),
        (10.0, 10),
        ("10485760", 10485760),
        ("0", 0),
        ("-5", -5),
        ("+7", 7),
        ("10MB", 10_000_000),
        ("10mb", 10_000_000),
        ("10 MB", 10_000_000),
        ("  10MB  ", 10_000_000),
        ("10M", 10_000_000),
        ("10B", 10),
        ("1kB", 1000),
        ("1KB", 1000),
        ("1k", 1000),
        ("2GB", 2 * 10**9),
        ("3TB", 3 * 10**12),
        ("1KiB", 1024),
        ("1Ki", 1024),
        ("10MiB", 10 * 2**20),
        ("1.5GiB", 1610612736),
        ("1.5gib", 1610612736),
        ("2TiB", 2 * 2**40),
        ("0.5KiB", 512),
        (".5KiB", 512),
        ("1.5kB", 1500),
        ("1.MB", 10**6),
    ],
)
def test_parse_size_accepts(value, expected):
    result = parse_size(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "abc",
        "MB",
        "10XB",
        "10 M B",
        "1e3",
        "1,000",
        "--5",
        "10MB extra",
        "nan",
        "inf",
        "0x10",
        "½MB",
        None,
        [],
        b"10",
    ],
)
def test_parse_size_refuses_bad_values(value):
    with pytest.raises(InvalidArgument) as info:
        parse_size(value, what="--size")
    assert "--size" in str(info.value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_refuses_bools(value):
    with pytest.raises(InvalidArgument):
        parse_size(value)


@pytest.mark.parametrize("value", [1.5, 0.1, -0.5, "1.5", "0.5B", "0.1KiB", "1.0000001kB"])
def test_parse_size_refuses_fractional_bytes(value):
    with pytest.raises(InvalidArgument) as info:
        parse_size(value)
    assert "whole" in str(info.value)


_SCALES = {
    "": 1, "B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}


@given(n=st.integers(min_value=-(10**6), max_value=10**6), unit=st.sampled_from(sorted(_SCALES)))
def test_parse_size_of_whole_numbers_with_units(n, unit):
    assert parse_size(f"{n}{unit}") == n * _SCALES[unit]
    assert parse_size(f" {n} {unit.lower()} ") == n * _SCALES[unit]


@pytest.mark.parametrize(
    "value, expected",
    [("1.001kB", 1001), ("1.023kB", 1023), ("0.000123MB", 123), ("9007199254740993", 2**53 + 1)],
)
def test_parse_size_is_exact_for_whole_byte_counts(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (10 * 2**20, "10.0 MiB"),
        (1610612736, "1.5 GiB"),
        (2**40, "1.0 TiB"),
        (2**50, "1024.0 TiB"),
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_size(n, text):
    assert format_size(n) == text


@example(1280)  # 1.25 KiB shows as 1.2 KiB: the rounding is at its widest
@given(st.integers(min_value=0, max_value=2**60))
def test_format_size_round_trips_to_within_its_precision(n):
    text = format_size(n)
    back = parse_size(text.replace(" ", "")) if text.endswith(" B") else None
    if back is not None:
        assert back == n
    else:
        number, unit = text.split()
        scale = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit]
        assert 1 <= n / scale < 1024 or unit == "TiB"
        assert abs(float(number) * scale - n) <= 0.0501 * scale  # one decimal, rounded
