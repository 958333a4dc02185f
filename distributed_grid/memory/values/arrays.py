"""numpy arrays over blocks: views of a block's memory, and arrays stored under keys.

On the block's host a view is the block's own memory: no copy, writable, and a write through it
is seen by every other process of the host. Elsewhere it is a read-only copy fetched through
ObjectRefs. Opening a view costs the same for any block size: the segment is mapped without
populating it. A view stays valid while it lives, even if the block is deallocated meanwhile:
the mapping (and so the memory) goes when the last view is released.

A view is live memory: a write of the block by another process (``grid memory store``, a
``put``) shows through it as it happens, so a view read while such a write runs can hold a mix
of old and new bytes. ``consistent=True`` (on :func:`view` and :func:`get`) returns instead a
read-only copy that is all from before a concurrent write or all from after it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from distributed_grid.errors import InvalidArgument, OutOfBounds
from distributed_grid.memory.values.keyed import Blocks, find_key, write_key
from distributed_grid.records import StoreResult


def _dtype(dtype: Any) -> np.dtype:
    try:
        result = np.dtype(dtype)
    except TypeError as exc:
        raise InvalidArgument(f"{dtype!r} is not a numpy dtype") from exc
    if result.hasobject:
        raise InvalidArgument(
            f"dtype {result} holds Python objects, which cannot live in shared memory; "
            "use numeric, boolean, string or structured dtypes without objects"
        )
    if result.itemsize == 0:
        raise InvalidArgument(f"dtype {result} has no size; give one such as 'S16' or '<U8'")
    return result


def _shape(shape: Any, dtype: np.dtype, available: int) -> tuple[int, ...]:
    if shape is None:
        return (available // dtype.itemsize,)
    if isinstance(shape, int | np.integer):
        shape = (int(shape),)
    try:
        dims = tuple(int(d) for d in shape)
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"shape must be a tuple of whole numbers, got {shape!r}") from exc
    if any(d < 0 for d in dims):
        raise InvalidArgument(f"shape dimensions must be 0 or more, got {dims}")
    return dims


def view(pool: Blocks, block_id: str, dtype: Any = "uint8", shape: Any = None,
         offset: int = 0, consistent: bool = False, populate: bool = False) -> np.ndarray:
    """An array of ``dtype`` and ``shape`` over a block's bytes from ``offset``.

    Args:
        pool: the pool that reaches the block.
        block_id: the block.
        dtype: any numpy dtype without Python objects.
        shape: the array's shape; None for as many items as fit after ``offset``.
        offset: where the array starts; a multiple of the dtype's alignment.
        consistent: return a read-only copy that no concurrent write tore, wherever the block
            is.
        populate: on the block's host, map every page of the block now (``MAP_POPULATE``), for
            a caller about to write all of it: the writes then take no page fault. Mapping the
            pages costs about 0.08 s per GiB of pages written before (0.6 s of pages never
            written, which the kernel zeroes) against faulting them one by one while writing
            (a first write through a view ran at 0.24x memcpy). Ignored elsewhere.

    Returns:
        On the block's host, a writable array over the block's memory (no copy). Elsewhere (or
        with ``consistent``), a read-only copy.

    Raises:
        InvalidArgument: a bad dtype or shape, or an offset the dtype cannot be aligned at.
        OutOfBounds: the array would not fit inside the block.
    """
    dt = _dtype(dtype)
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise OutOfBounds(f"offset must be a whole number of bytes, 0 or more, got {offset!r}")
    size, data = pool.open_block(block_id, populate=populate and not consistent)
    if offset > size:
        raise OutOfBounds(f"offset {offset} is past the end of {block_id} (size {size})",
                          block_id=block_id, offset=offset)
    if offset % dt.alignment:
        raise InvalidArgument(
            f"offset {offset} is not a multiple of {dt}'s alignment ({dt.alignment} bytes)"
        )
    dims = _shape(shape, dt, size - offset)
    nbytes = math.prod(dims) * dt.itemsize
    if offset + nbytes > size:
        raise OutOfBounds(
            f"an array of shape {dims} and dtype {dt} needs {nbytes} bytes at offset {offset}, "
            f"but {block_id} (size {size}) has {size - offset} from there",
            block_id=block_id, offset=offset, length=nbytes,
        )
    if consistent and data is not None:
        data.release()
        data = None
    return _array(pool, block_id, data, dt, dims, offset, nbytes)


def _array(pool: Blocks, block_id: str, data: memoryview | None, dt: np.dtype,
           dims: tuple[int, ...], offset: int, nbytes: int) -> np.ndarray:
    """The array over ``data`` (the block's memory on this host), else a read-only copy."""
    if data is not None:
        return np.frombuffer(data, dtype=dt, count=math.prod(dims), offset=offset).reshape(dims)
    copy = pool.read(block_id, size=nbytes, offset=offset)
    result = np.frombuffer(copy, dtype=dt).reshape(dims)
    result.flags.writeable = False
    return result


@contextmanager
def writing(pool: Blocks, block_id: str, dtype: Any = "uint8", shape: Any = None,
            offset: int = 0) -> Iterator[np.ndarray]:
    """``with pool.writing(block_id, dtype, shape) as arr:`` a writable array over a block's
    bytes from ``offset``, written as one write: the way to write a replicated block in place,
    whose views are read-only (a byte written through one would reach one copy only). On the
    block's host the array is the block's own memory (zero-copy), and a replicated block's other
    copies get the range when the ``with`` ends, before it returns, however it ends (what was
    written is in the block). Readers wait for that end, as for any write. Elsewhere the array
    is a copy of the range, sent when the ``with`` ends without an error.

    Raises:
        InvalidArgument: a bad dtype or shape, or an offset the dtype cannot be aligned at.
        OutOfBounds: the array would not fit inside the block.
        KeyConflict: the range holds bytes of a key.
    """
    dt = _dtype(dtype)
    size = pool.block_info(block_id).size
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= size:
        raise OutOfBounds(f"offset must be a whole number of bytes from 0 to {size}, got "
                          f"{offset!r}", block_id=block_id, offset=offset)
    dims = _shape(shape, dt, size - offset)
    nbytes = math.prod(dims) * dt.itemsize
    with pool.writing_view(block_id, offset, nbytes) as data:
        yield np.frombuffer(data, dtype=dt, count=math.prod(dims)).reshape(dims)


def put(pool: Blocks, key: str, array: Any, node: str | None = None,
        replicas: int | None = None) -> StoreResult:
    """Store ``array`` under ``key`` with its dtype and shape.

    A new key gets a block of its own (on ``node`` when given; with ``replicas`` copies, None
    for the cluster config's default); a key that exists is replaced in place when the new
    bytes fit there. Arrays that are not C-contiguous are stored as their
    C-contiguous copy.

    Raises:
        InvalidArgument: the array holds Python objects.
        KeyConflict: the key exists and the array does not fit in its place.
    """
    arr = np.ascontiguousarray(np.asarray(array))
    dt = _dtype(arr.dtype)
    meta = {"dtype": dt.str if dt.fields is None else dt.descr, "shape": list(arr.shape)}
    return write_key(pool, key, arr.reshape(-1).view(np.uint8), arr.nbytes, node, meta,
                     replicas)


def get(pool: Blocks, key: str, consistent: bool = False) -> np.ndarray:
    """The array stored under ``key``: zero-copy on the block's host, else a read-only copy.

    A key stored as plain bytes (``grid memory store``) comes back as a uint8 array. With
    ``consistent``, a read-only copy that no concurrent write tore, wherever the block is.

    Raises:
        KeyNotFound: no block holds ``key``.
    """
    found = find_key(pool, key)
    key = found.key
    meta = found.meta or {}
    if "dtype" not in meta:
        if meta.get("format") == "safetensors":
            raise InvalidArgument(f"key {key!r} holds safetensors, not one array; read it "
                                  "with get_tensors()")
        if meta.get("format") is not None:
            raise InvalidArgument(f"key {key!r} holds a {meta['format']} pickle, not an array; "
                                  "read it with get_object()")
        meta = {"dtype": "|u1", "shape": [found.length]}  # plain bytes: a uint8 array
    descr = meta["dtype"]
    dt = np.dtype(descr if isinstance(descr, str) else [tuple(f) for f in descr])
    dims = tuple(meta["shape"])
    if len(found.extents) == 1 and not consistent:
        start, length = found.extents[0]
        data = pool.view_of(found)
        return _array(pool, found.block_id, data, dt, dims, start, length)
    joined = pool.read(key)  # a copy: several extents one after another, or consistent
    result = np.frombuffer(joined, dtype=dt).reshape(dims)
    result.flags.writeable = False
    return result
