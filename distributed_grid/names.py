"""Every check of a name, key, block id, size, offset and range, in one place.

Block ids are ``block_<n>_<node>``: ``n`` counts the node's blocks and never repeats, and the id
names the node that holds the block, so finding a block needs no central directory.

Each check returns the value it accepts and raises :class:`~distributed_grid.errors.
InvalidArgument` (or :class:`~distributed_grid.errors.OutOfBounds` for ranges) naming what was
wrong and what is allowed. Nothing here imports more than the error tree.
"""

from __future__ import annotations

import re

from distributed_grid.errors import InvalidArgument, OutOfBounds

NODE_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
MAX_KEY_LENGTH = 1024
_NODE_NAME_RE = re.compile(NODE_NAME_PATTERN)
_BLOCK_ID_RE = re.compile(rf"block_([0-9]+)_({NODE_NAME_PATTERN})")  # the shape
_CANONICAL_NUMBER_RE = re.compile(r"0|[1-9][0-9]*")  # how a block id writes its number
_CLUSTER_ID_RE = re.compile(r"[A-Za-z0-9]{1,32}")


def validate_node_name(name: object) -> str:
    """Return ``name`` if it can name a node."""
    if not isinstance(name, str) or not _NODE_NAME_RE.fullmatch(name):
        raise InvalidArgument(
            f"invalid node name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit", node=name,
        )
    return name


class Key(str):
    """A key that passed :func:`validate_key`: code that receives one does not check it again
    (a key is checked once, where it enters, and carried on as a Key)."""

    __slots__ = ()


def validate_key(key: object) -> Key:
    """Return ``key`` (as a :class:`Key`) if it can name stored data."""
    if type(key) is Key:
        return key
    if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH or "\0" in key:
        raise InvalidArgument(
            f"invalid key {key!r}: a key is a non-empty string of at most {MAX_KEY_LENGTH} "
            "characters without NUL", key=key,
        )
    return Key(key)


def key_from(value: object) -> Key:
    """A key as a caller gave it, checked: text, or anything else as its ``str()`` (the command
    line and Python callers pass other types)."""
    return validate_key(value if isinstance(value, str) else str(value))


def validate_cluster_id(cluster_id: object) -> str:
    """Return ``cluster_id`` if it can be part of a segment name (1-32 letters or digits)."""
    if not isinstance(cluster_id, str) or not _CLUSTER_ID_RE.fullmatch(cluster_id):
        raise InvalidArgument(f"invalid cluster id {cluster_id!r}: use 1-32 letters or digits")
    return cluster_id


def format_block_id(number: int, node: str) -> str:
    """The id of block ``number`` of ``node``."""
    return f"block_{number}_{node}"


def parse_block_id(block_id: object) -> tuple[int, str]:
    """Split a block id into ``(number, node)``."""
    match = _BLOCK_ID_RE.fullmatch(block_id) if isinstance(block_id, str) else None
    if match is None:
        raise InvalidArgument(
            f"invalid block id {block_id!r}: a block id looks like block_<n>_<node>, "
            "for example block_0_gpu2", block_id=block_id,
        )
    if not _CANONICAL_NUMBER_RE.fullmatch(match.group(1)):  # one block, one spelling
        canonical = format_block_id(int(match.group(1)), match.group(2))
        raise InvalidArgument(
            f"invalid block id {block_id!r}: block numbers have no leading zeros; did you "
            f"mean {canonical}?", block_id=block_id,
        )
    return int(match.group(1)), match.group(2)


def looks_like_block_id(text: object) -> bool:
    """Whether ``text`` has the shape of a block id (it may still name no block)."""
    return isinstance(text, str) and _BLOCK_ID_RE.fullmatch(text) is not None


def whole_bytes(value: object, what: str) -> int:
    """Return ``value`` if it is a whole number of bytes (an int, not a bool)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{what} must be a whole number of bytes, got {value!r}")
    return value


def positive_size(size: object, what: str = "size") -> int:
    """Return ``size`` if it is a positive whole number of bytes."""
    if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
        raise InvalidArgument(f"{what} must be a positive number of bytes, got {size!r}",
                              size=size)
    return size


def check_start(offset: object, size: int | None = None) -> int:
    """Return ``offset`` if it is a whole number of bytes, 0 or more (and ``size`` too)."""
    offset = whole_bytes(offset, "offset")
    if size is not None:
        whole_bytes(size, "size")
    if offset < 0:
        raise OutOfBounds(f"offset must be 0 or more, got {offset}", offset=offset)
    if size is not None and size < 0:
        raise OutOfBounds(f"size must be 0 or more, got {size}", size=size)
    return offset


def check_range(block_id: str, block_size: int, offset: object, length: object,
                verb: str) -> None:
    """Check that ``length`` bytes at ``offset`` lie inside a block of ``block_size`` bytes.

    Args:
        block_id: the block, for the message.
        block_size: its size.
        offset: where the range starts.
        length: how many bytes.
        verb: ``"read"`` or ``"write"``, for the message.
    """
    count = whole_bytes(length, "size")
    start = check_start(offset, count)
    if start + count > block_size:
        prep = "into" if verb == "write" else "from"
        raise OutOfBounds(
            f"cannot {verb} {count} bytes at offset {start} {prep} {block_id} "
            f"(size {block_size}): at most {max(0, block_size - start)} bytes fit from that "
            "offset", block_id=block_id, offset=start, length=count, block_size=block_size,
        )


MAX_REPLICAS = 8


def replica_count(replicas: object) -> int:
    """``replicas`` checked: a whole number from 1 to ``MAX_REPLICAS``.

    Raises:
        InvalidArgument: anything else.
    """
    if isinstance(replicas, bool) or not isinstance(replicas, int) or \
            not 1 <= replicas <= MAX_REPLICAS:
        raise InvalidArgument(f"replicas must be a whole number from 1 to {MAX_REPLICAS}, got "
                              f"{replicas!r}", replicas=replicas)
    return replicas
