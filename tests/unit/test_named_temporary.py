"""``OutputFile`` with a named temporary (``unnamed=False``, where the file system has no unnamed
ones): a copy that fails leaves the old file as it was and no temporary behind. Where
``retrieve --output`` puts the bytes, through the CLI: ``test_output_file.py`` in tests/cluster/."""

from __future__ import annotations

import os

import pytest

from distributed_grid.memory.io.output_file import OutputFile


def test_a_failed_write_into_a_named_temporary_leaves_nothing(tmp_path):
    out = tmp_path / "out.bin"
    out.write_bytes(b"old")
    with pytest.raises(RuntimeError), OutputFile(str(out), unnamed=False) as dest:
        os.write(dest.fd, b"half")
        assert len(os.listdir(tmp_path)) == 2  # the named temporary, while it is written
        raise RuntimeError("the copy failed")
    assert out.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]
