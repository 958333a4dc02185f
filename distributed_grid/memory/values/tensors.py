"""Named tensors under one key, in the safetensors format: zero-copy on the block's host.

The bytes are those of a ``.safetensors`` file, as the ``safetensors`` package documents them:
8 bytes (little-endian) giving the header's length N, N bytes of JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}``, then
the data, each tensor's bytes at ``data_offsets`` within it, no gap between them. So a key
written by :func:`put_tensors` is a file ``safetensors`` loads (``grid memory retrieve`` it),
and a file ``safetensors`` wrote, stored with ``grid memory store``, reads with
:func:`get_tensors`.

Alignment: the header is padded with spaces so the data starts at a multiple of
:data:`DATA_ALIGNMENT` bytes of the key's start (a key made by ``put_tensors`` starts at its
block's start, which is page-aligned), and the tensors are laid out largest item size first (as
``safetensors`` does), so each tensor starts at a multiple of its item size. ``safetensors``
refuses gaps between tensors, so there is no wider alignment per tensor.

On the block's host, :func:`get_tensors` returns arrays (or torch tensors) over the block's own
memory: no copy, writable, live (a write by another process shows through them), valid while
they live even if the key is deleted meanwhile. Elsewhere it returns copies fetched through
Ray. numpy has no bfloat16 nor float8 dtype: a key holding one reads with
``framework="torch"``; with ``framework="numpy"`` it is refused, naming the tensor.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from typing import Any

import numpy as np

from distributed_grid.errors import InvalidArgument
from distributed_grid.memory.values.keyed import Blocks, find_key, write_key
from distributed_grid.names import key_from
from distributed_grid.records import StoreResult

FORMAT = "safetensors"
DATA_ALIGNMENT = 64  # where the data starts, in bytes from the key's start (a cache line)
MAX_HEADER = 100 * 2**20  # the largest header safetensors itself reads
FRAMEWORKS = ("numpy", "torch")

# safetensors dtype -> item size; then how numpy and torch name it (None: no such dtype)
_SIZES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8,
          "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1,
          "BOOL": 1}
_NUMPY = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "C64": "<c8", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1",
          "BOOL": "?"}
_TORCH = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
          "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "C64": "complex64",
          "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8", "U64": "uint64",
          "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool"}
_FROM_NUMPY = {np.dtype(v): k for k, v in _NUMPY.items()}
_FROM_NUMPY_NAME = {"bfloat16": "BF16", "float8_e4m3fn": "F8_E4M3",
                    "float8_e5m2": "F8_E5M2"}  # ml_dtypes' extension dtypes, by name


# -- writing ------------------------------------------------------------------------------------


def put_tensors(pool: Blocks, key: str, tensors: Mapping[str, Any], node: str | None = None,
                metadata: Mapping[str, str] | None = None,
                replicas: int | None = None) -> StoreResult:
    """Store named tensors under ``key`` as one safetensors file (marked so in the key's meta).

    Args:
        pool: the pool to store through.
        key: the key; a new one gets a block of its own (on ``node`` when given), one that
            exists is replaced in place when the new bytes fit there.
        tensors: names to numpy arrays (or torch tensors, or anything ``np.asarray`` takes).
            Arrays that are not C-contiguous are stored as their C-contiguous copy; big-endian
            ones as little-endian.
        node: the node for a new key's block.
        metadata: text to keep in the header's ``__metadata__`` (str to str).
        replicas: the copies of a new key's block (None: the cluster config's default).

    Raises:
        InvalidArgument: a name that is not a string (or is ``__metadata__``), metadata that is
            not str to str, or a tensor whose dtype safetensors has no name for (Python
            objects, strings, float128...).
        KeyConflict: the key exists and the bytes do not fit in its place.
    """
    key = key_from(key)
    if not isinstance(tensors, Mapping):
        raise InvalidArgument(f"tensors must be a mapping of names to arrays, got "
                              f"{type(tensors).__name__}")
    flat = {_name(name): _flat(name, t) for name, t in tensors.items()}
    header, length = _header(flat, _metadata(metadata))
    parts = [header] + [raw for _, _, _, raw in sorted(flat.values(), key=lambda f: f[2])]
    return write_key(pool, key, parts, length, node, {"format": FORMAT},  # written in place
                     replicas)


def _name(name: Any) -> str:
    if not isinstance(name, str) or name == "__metadata__":
        raise InvalidArgument(f"tensor names must be strings other than '__metadata__', got "
                              f"{name!r}")
    return name


def _metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InvalidArgument("metadata must map strings to strings (safetensors' "
                              f"__metadata__), got {metadata!r}")
    return dict(metadata)


def _flat(name: str, tensor: Any) -> list:
    """``[dtype, shape, offsets (set by _header), bytes as a flat uint8 array]`` of a tensor."""
    if type(tensor).__module__.split(".")[0] == "torch":
        return _flat_torch(name, tensor)
    arr = np.asarray(tensor)
    dt = arr.dtype
    if dt.hasobject:
        raise InvalidArgument(f"tensor {name!r} holds Python objects ({dt}), which have no "
                              "bytes to store; give it a numeric or boolean dtype")
    code = _FROM_NUMPY_NAME.get(dt.name) or _FROM_NUMPY.get(dt.newbyteorder("<"))
    if code is None:
        raise InvalidArgument(f"tensor {name!r} has dtype {dt}, which safetensors has no name "
                              f"for; use one of {', '.join(sorted(_NUMPY))} (numpy names: "
                              "float64 ... bool)")
    if dt.byteorder == ">":
        arr = arr.astype(dt.newbyteorder("<"))
    shape = list(arr.shape)  # ascontiguousarray makes a scalar 1-d
    return [code, shape, None, np.ascontiguousarray(arr).reshape(-1).view(np.uint8)]


def _flat_torch(name: str, tensor: Any) -> list:
    import torch  # the tensor is torch's: torch is installed

    codes = {v: k for k, v in _TORCH.items()}
    code = codes.get(str(tensor.dtype).removeprefix("torch."))
    if code is None:
        raise InvalidArgument(f"tensor {name!r} has torch dtype {tensor.dtype}, which "
                              "safetensors has no name for")
    t = tensor.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8).numpy()
    return [code, list(t.shape), None, raw]


def _header(flat: dict[str, list], metadata: dict[str, str] | None) -> tuple[bytes, int]:
    """Lay the tensors out (largest item size first, then by name; each then starts at a
    multiple of its item size), set their offsets; returns the length-prefixed, padded header
    and the total byte count."""
    order = sorted(flat, key=lambda n: (-_SIZES[flat[n][0]], n))
    entries: dict[str, Any] = {} if metadata is None else {"__metadata__": metadata}
    pos = 0
    for name in order:
        code, shape, _, raw = flat[name]
        flat[name][2] = (pos, pos + raw.nbytes)
        entries[name] = {"dtype": code, "shape": shape, "data_offsets": [pos, pos + raw.nbytes]}
        pos += raw.nbytes
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-(8 + len(text)) % DATA_ALIGNMENT)
    head = struct.pack("<Q", len(text)) + text
    return head, len(head) + pos


# -- reading ------------------------------------------------------------------------------------


def get_tensors(pool: Blocks, key: str, framework: str = "numpy") -> dict[str, Any]:
    """The tensors stored under ``key`` (by :func:`put_tensors`, or a ``.safetensors`` file
    stored as bytes), by name in the header's order.

    Args:
        pool: the pool to read through.
        key: the key.
        framework: ``"numpy"`` for numpy arrays, ``"torch"`` for torch tensors (torch must be
            installed: ``pip install distributed-grid[torch]``).

    Returns:
        On the block's host (and for a key in one piece), arrays over the block's memory: no
        copy, writable. Elsewhere, copies (read-only numpy arrays; torch tensors of their own).

    Raises:
        KeyNotFound: no block holds ``key``.
        InvalidArgument: an unknown framework; the key does not hold safetensors (an array, a
            pickle, or bytes that do not parse); a bfloat16 or float8 tensor asked for as numpy.
    """
    if framework not in FRAMEWORKS:
        raise InvalidArgument(f"framework must be one of {', '.join(FRAMEWORKS)}, got "
                              f"{framework!r}")
    torch = _torch() if framework == "torch" else None
    found = find_key(pool, key)
    key = found.key
    meta = found.meta or {}
    if meta.get("format", FORMAT) != FORMAT or "dtype" in meta:
        what = f"a {meta['format']} pickle" if "format" in meta else "one numpy array"
        hint = "get_object()" if "format" in meta else "get()"
        raise InvalidArgument(f"key {key!r} holds {what}, not safetensors; read it with {hint}",
                              key=key)
    buf = None
    if len(found.extents) == 1:
        start, length = found.extents[0]
        block = pool.view_of(found)
        if block is not None:
            buf = block[start : start + length]  # the block's memory itself
    if buf is None:  # another host's block (or a key in pieces): one copy of its bytes
        copy = pool.read(key)
        buf = memoryview(bytearray(copy) if torch is not None else copy)
    entries, data_start = parse_header(buf, key)
    if torch is not None:
        return {name: _torch_tensor(torch, buf, code, shape, data_start + begin, end - begin)
                for name, (code, shape, begin, end) in entries.items()}
    for name, (code, *_) in entries.items():
        if code not in _NUMPY:
            raise InvalidArgument(f"tensor {name!r} of key {key!r} is {code}, which numpy has "
                                  "no dtype for; read it with framework='torch'", key=key)
    return {name: _array(buf, code, shape, data_start + begin, end - begin)
            for name, (code, shape, begin, end) in entries.items()}


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise InvalidArgument("framework='torch' needs torch: pip install "
                              "'distributed-grid[torch]'") from exc
    return torch


def _array(buf: memoryview, code: str, shape: list[int], offset: int, nbytes: int) -> Any:
    dt = np.dtype(_NUMPY[code])
    if nbytes == 0:
        result = np.empty(shape, dtype=dt)
        result.flags.writeable = not buf.readonly
        return result
    return np.frombuffer(buf, dtype=dt, count=nbytes // dt.itemsize,
                         offset=offset).reshape(tuple(shape))


def _torch_tensor(torch: Any, buf: memoryview, code: str, shape: list[int], offset: int,
                  nbytes: int) -> Any:
    dtype = getattr(torch, _TORCH[code], None)
    if dtype is None:
        raise InvalidArgument(f"this torch ({torch.__version__}) has no dtype for {code}")
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(buf, dtype=dtype, count=nbytes // _SIZES[code],
                            offset=offset).reshape(tuple(shape))


def parse_header(buf: memoryview, key: str = "") -> tuple[dict[str, tuple], int]:
    """The tensors a safetensors buffer holds, ``{name: (dtype, shape, begin, end)}`` with
    offsets within its data, and where its data starts.

    Raises:
        InvalidArgument: the buffer is not safetensors, with what is wrong with it.
    """
    def bad(reason: str) -> InvalidArgument:
        return InvalidArgument(f"key {key!r} does not hold safetensors: {reason}", key=key)

    if len(buf) < 8:
        raise bad(f"{len(buf)} bytes, fewer than the 8 of a header's length")
    (size,) = struct.unpack_from("<Q", buf, 0)
    if size > min(len(buf) - 8, MAX_HEADER):
        raise bad(f"its first 8 bytes give a header of {size} bytes, but it has "
                  f"{len(buf) - 8} after them")
    try:
        header = json.loads(bytes(buf[8 : 8 + size]))
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad(f"its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad("its header is not a JSON object")
    data_start, data_len = 8 + size, len(buf) - 8 - size
    entries = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            code, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise bad(f"tensor {name!r} lacks dtype, shape or data_offsets [begin, end]") \
                from None
        if code not in _SIZES:
            raise bad(f"tensor {name!r} has dtype {code!r}; known: {', '.join(_SIZES)}")
        if not isinstance(shape, list) or not all(
                type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {name!r} has shape {shape!r}, not a list of whole numbers")
        if not all(type(o) is int for o in (begin, end)) or not 0 <= begin <= end <= data_len:
            raise bad(f"tensor {name!r} has data_offsets {[begin, end]} outside its "
                      f"{data_len} bytes of data")
        if end - begin != math.prod(shape) * _SIZES[code]:
            raise bad(f"tensor {name!r} of shape {shape} and dtype {code} needs "
                      f"{math.prod(shape) * _SIZES[code]} bytes, its data_offsets give "
                      f"{end - begin}")
        entries[name] = (code, shape, begin, end)
    return entries, data_start
