"""Byte counts as people write them: ``10485760``, ``10MB``, ``1.5GiB``."""

from __future__ import annotations

import re
from decimal import Decimal

from distributed_grid.errors import InvalidArgument

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9,
    "t": 10**12, "tb": 10**12,
    "ki": 2**10, "kib": 2**10, "mi": 2**20, "mib": 2**20, "gi": 2**30, "gib": 2**30,
    "ti": 2**40, "tib": 2**40,
}
_SIZE_RE = re.compile(r"\s*([+-]?[0-9]+(?:\.[0-9]*)?|[+-]?\.[0-9]+)\s*([A-Za-z]*)\s*")


def parse_size(value: object, what: str = "size") -> int:
    """Turn ``value`` (an int, or text such as ``"10MB"`` or ``"1.5GiB"``) into a byte count.

    Decimal units (kB, MB, GB, TB) are powers of 1000, binary ones (KiB, MiB, GiB, TiB) of 1024.
    The result may be negative or zero: the caller decides what it allows.

    Raises:
        InvalidArgument: ``value`` is not a number of bytes, or not a whole one.
    """
    if isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a number of bytes, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if value.is_integer():
            return int(value)
        raise InvalidArgument(f"{what} must be a whole number of bytes, got {value!r}")
    match = _SIZE_RE.fullmatch(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _UNITS:
        raise InvalidArgument(
            f"{what} {value!r} is not a size: give bytes (10485760) or a number with a unit "
            "(10MB, 1.5GiB; kB/MB/GB/TB are powers of 1000, KiB/MiB/GiB/TiB of 1024)"
        )
    number = Decimal(match.group(1)) * _UNITS[unit]  # exact: "1.001kB" is 1001 bytes
    if number != number.to_integral_value():
        raise InvalidArgument(f"{what} {value!r} is not a whole number of bytes")
    return int(number)


def format_size(n: int) -> str:
    """A short human form of a byte count (``10.0 MiB``)."""
    for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"
