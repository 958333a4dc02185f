"""The big copy of ``memory/io/copies.py``, in its C form (``native/copy.c``: streaming stores)
and its Python twin (numpy's ``copyto``): every byte lands, whatever the alignment and length
(the C copy streams whole 64-byte runs from a 16-byte-aligned destination and copies the head and
tail apart), into a block's shared memory as into plain memory; a wrong call changes nothing."""

from __future__ import annotations

import mmap
import os

import numpy as np
import pytest

from distributed_grid.memory.io import copies

native = pytest.importorskip("distributed_grid.memory.io._copy",
                             reason="the C copy is not built (no compiler at install)")


@pytest.fixture(params=["native", "numpy"])
def copy_piece(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(copies, "_stream_copy", None)
    else:
        monkeypatch.setattr(copies, "_stream_copy", native.copy)
    return copies.copy_piece


@pytest.mark.parametrize("start", [0, 1, 7, 15, 16, 63, 64, 4095])
@pytest.mark.parametrize("length", [0, 1, 15, 16, 63, 64, 65, 1000, 3 * 2**20 + 17])
def test_every_byte_lands_whatever_the_alignment(copy_piece, start, length):
    src = np.frombuffer(os.urandom(length + 64), dtype=np.uint8)[3 : 3 + length]
    dest = np.zeros(start + length + 64, dtype=np.uint8)
    copy_piece(dest[start : start + length], src)
    assert bytes(dest[start : start + length]) == bytes(src)
    assert not dest[:start].any() and not dest[start + length :].any()  # nothing else written


def test_into_shared_memory(copy_piece, tmp_path):
    size = 8 * 2**20 + 123
    with open(tmp_path / "seg", "w+b") as f:
        f.truncate(size)
        mapping = mmap.mmap(f.fileno(), size)
    data = np.frombuffer(os.urandom(size), dtype=np.uint8)
    to = np.frombuffer(mapping, dtype=np.uint8)
    copy_piece(to, data)
    assert bytes(to) == bytes(data)
    del to
    mapping.close()


def test_a_wrong_call_changes_nothing():
    dest = bytearray(b"x" * 100)
    with pytest.raises(ValueError):
        native.copy(memoryview(dest)[:50], b"y" * 60)
    with pytest.raises((TypeError, BufferError)):
        native.copy(b"read-only", b"123456789")
    assert dest == bytearray(b"x" * 100)
