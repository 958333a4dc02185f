"""A new ``bytes`` object filled in place, so a read that returns ``bytes`` copies once.

``bytes(bytearray)`` is a second full copy, and ``bytearray(n)`` zeroes every page first: on
this VM a 1 GiB ``pool.read`` spent 60% of its time in the ``bytes()`` copy and 28% in the
``bytearray`` (profiled with py-spy). CPython's own C code builds ``bytes`` the way
:func:`new_bytes` does: ``PyBytes_FromStringAndSize(NULL, n)`` leaves the bytes uninitialised,
and they are written before the object is handed to anyone. A big one is also advised to use
transparent huge pages (``MADV_HUGEPAGE``): its first touch then faults 2 MiB at a time, which
made filling 1 GiB of fresh memory 1.7x faster here.

On another Python implementation, or if the check at first use fails, :func:`new_bytes` gives
None and the caller takes a ``bytearray`` and a second copy.
"""

from __future__ import annotations

import mmap
import platform
from typing import Any

SMALL = 2**20  # below this a bytearray and bytes() cost less than ctypes
HUGE_PAGE = 2**21

_api: Any = None  # (PyBytes_FromStringAndSize, offset of the bytes' data, libc, ctypes,
#                    PyMemoryView_FromMemory) or False
PYBUF_WRITE = 0x200


def _load() -> Any:
    global _api
    if _api is None:
        _api = False
        if platform.python_implementation() == "CPython":
            import ctypes

            make = ctypes.pythonapi.PyBytes_FromStringAndSize
            make.restype = ctypes.py_object
            make.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t]
            view_of = ctypes.pythonapi.PyMemoryView_FromMemory
            view_of.restype = ctypes.py_object
            view_of.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int]
            offset = bytes.__basicsize__ - 1
            known = b"distributed_grid probe"
            if ctypes.string_at(id(known) + offset, len(known)) != known:
                return _api  # the data is not where this CPython is known to keep it: read only
            api = (make, offset, ctypes.CDLL(None, use_errno=True), ctypes, view_of)
            probe, view = _make(api, 8)
            view[:] = b"0123abcd"
            view.release()
            if probe == b"0123abcd":
                _api = api
    return _api


def _make(api: Any, n: int) -> tuple[bytes, memoryview]:
    make, data_offset, libc, ctypes, view_of = api
    out = make(None, n)
    address = id(out) + data_offset
    if n >= 4 * HUGE_PAGE and hasattr(mmap, "MADV_HUGEPAGE"):
        start = -(-address // HUGE_PAGE) * HUGE_PAGE
        end = (address + n) // HUGE_PAGE * HUGE_PAGE
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), mmap.MADV_HUGEPAGE)
    # a view straight over the memory (a ctypes array type per size would be cached forever)
    return out, view_of(address, n, PYBUF_WRITE)


def new_bytes(n: int) -> tuple[bytes, memoryview] | None:
    """A new ``bytes`` of ``n`` uninitialised bytes and a writable view of them, or None
    (small sizes, or not CPython).

    The caller fills every byte through the view, then releases the view, before the
    ``bytes`` is used or shown to anyone; it must not keep the view longer than the bytes.
    """
    if n < SMALL:
        return None
    api = _load()
    return _make(api, n) if api else None
