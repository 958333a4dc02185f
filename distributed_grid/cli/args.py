"""What a command takes from its command line, in the library's types; and the pool it reaches.

Values arrive as the user typed them (text; switches as booleans: see
:mod:`distributed_grid.cli.grammar`). These only change their type (a size's text to bytes, a
comma list to names); whether a value is allowed is the library's to say.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from distributed_grid.cli.output import out
from distributed_grid.errors import InvalidArgument

if TYPE_CHECKING:
    from distributed_grid.memory.pool import MemoryPool


def size(value: Any, what: str) -> int:
    """Bytes of a size as typed (``10485760``, ``10MB``, ``1.5GiB``)."""
    from distributed_grid.sizes import parse_size

    return parse_size(value, what)


def optional_size(value: Any, what: str) -> int | None:
    """:func:`size`, or None when the option was not given."""
    return None if value is None else size(value, what)


def replicas(value: Any) -> int | None:
    """A count of copies as typed (``2``), or None when the option was not given.

    Raises:
        InvalidArgument: not a whole number from 1 to 8.
    """
    from distributed_grid.names import MAX_REPLICAS, replica_count

    if value is None:
        return None
    text = str(value).strip()
    if not text.isdigit():
        raise InvalidArgument(f"--replicas must be a whole number from 1 to {MAX_REPLICAS}, "
                              f"got {value!r}")
    try:
        return replica_count(int(text))
    except InvalidArgument:
        raise InvalidArgument(f"--replicas must be a whole number from 1 to {MAX_REPLICAS} "
                              f"(copies of the block, each on a node of its own), got {text}"
                              ) from None


def optional_fraction(value: Any, what: str) -> float | None:
    """A fraction as typed (``0.85``), or None when the option was not given.

    Raises:
        InvalidArgument: not a number above 0 and at most 1.
    """
    if value is None:
        return None
    try:
        number = float(str(value))
    except ValueError:
        number = -1.0
    if not 0 < number <= 1:
        raise InvalidArgument(f"--{what} must be a fraction above 0 and at most 1 (0.85), got "
                              f"{value!r}")
    return number


def optional_text(value: Any) -> str | None:
    """The text typed, or None when the option was not given."""
    return None if value is None else str(value)


def path(value: Any, what: str) -> str:
    """A file named on the command line; an empty one is refused (it would name the current
    directory, or nothing).

    Raises:
        InvalidArgument: ``value`` is empty.
    """
    text = str(value)
    if not text:
        raise InvalidArgument(f"{what} is empty: give a file path")
    return text


def names(value: Any) -> list[str]:
    """Node names given as ``gpu1,gpu2``."""
    if value is None:
        return []
    return [n for n in str(value).split(",") if n]


def pool(config: Any = None, address: Any = None) -> MemoryPool:
    """The pool of the cluster that ``--config`` and ``--address`` name (see
    :func:`distributed_grid.cluster.target.find_cluster`); Ray's messages are kept out of the
    output from here on."""
    from distributed_grid.memory.pool import MemoryPool

    out.guard_stdout()
    return MemoryPool(optional_text(address), config=optional_text(config))
