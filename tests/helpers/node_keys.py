"""Keys stored and read on one node's store directly (no pool, no Ray), as the unit tests of the
node do: stored the way the pool stores a new key (a block allocated for it, held for the
writer), read back whole."""

from __future__ import annotations

from distributed_grid.memory.io import sinks, sources
from distributed_grid.runtime import this_process


def store(node, key: str, data: bytes):
    """A key stored the way the pool stores a new one: a block allocated for it."""
    block = node.allocate(len(data), holder=this_process(), for_key=key)
    node.prepare_write(block.number, 0, len(data), key, writer=this_process())
    node.fill(block, 0, len(data), sources.BufferSource(memoryview(data)))
    node.commit_write(block.number, 0, len(data), key)
    return block


def read_key(node, key: str) -> bytes:
    """The key's bytes (a key of one extent), read as the pool reads them on this host."""
    place = node.find_key(key)
    (offset, length), = place.extents
    out = bytearray(length)
    node.drain(place.block, offset, length, sinks.BufferSink(memoryview(out)))
    return bytes(out)
