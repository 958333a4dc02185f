"""Segment on real POSIX shared memory: create, attach, close, unlink (no Ray)."""

from __future__ import annotations

import errno
import os
import secrets
import stat
import struct
import subprocess
import sys
import textwrap
import uuid

import posix_ipc
import pytest

from distributed_grid.errors import GridError, InvalidArgument, NotFound, StoreFull
from distributed_grid.memory.shm import layout
from distributed_grid.memory.shm import segment as seg
from distributed_grid.memory.shm.segment import Segment, SegmentNotFound

GIB = 2**30


def shm_path(name: str) -> str:
    return os.path.join(layout.SHM_DIR, name.lstrip("/"))


@pytest.fixture
def names():
    """Hands out unique segment names; every one of them is unlinked after the test."""
    made: list[str] = []
    base = f"/dgtseg.{os.getpid()}.{uuid.uuid4().hex[:8]}."

    def new() -> str:
        name = f"{base}{len(made)}"
        made.append(name)
        return name

    yield new
    for name in made:
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            pass
    left = [e for e in os.listdir(layout.SHM_DIR) if e.startswith(base.lstrip("/"))]
    for entry in left:
        os.unlink(os.path.join(layout.SHM_DIR, entry))
    assert not left, f"left in {layout.SHM_DIR}: {left}"


def token() -> bytes:
    return secrets.token_bytes(layout.TOKEN_SIZE)


def test_create_writes_the_documented_header(names):
    name, tok = names(), token()
    s = Segment.create(name, 1000, tok)
    try:
        assert (s.name, s.size, s.token, s.closed) == (name, 1000, tok, False)
        with open(shm_path(name), "rb") as f:
            raw = f.read()
        assert len(raw) == layout.HEADER_SIZE + 1000
        magic, version, reserved, size = struct.unpack_from("<8sIIQ", raw, 0)
        assert (magic, version, reserved, size) == (b"DGRIDSEG", 1, 0, 1000)
        assert raw[24:40] == tok
        assert raw[40 : layout.HEADER_SIZE] == bytes(layout.HEADER_SIZE - 40)
    finally:
        s.close()
        s.unlink()


def test_attach_reads_back_size_and_token(names):
    name, tok = names(), token()
    owner = Segment.create(name, 12345, tok)
    other = Segment.attach(name)
    try:
        assert other.size == 12345
        assert other.token == tok
        assert other.name == name
        view = other.data()
        assert len(view) == 12345
        view.release()
    finally:
        other.close()
        owner.close()
        owner.unlink()


def test_data_writes_are_seen_by_a_second_attachment(names):
    name = names()
    owner = Segment.create(name, 8192, token())
    other = Segment.attach(name)
    try:
        w = owner.data()
        w[0:5] = b"hello"
        w[8187:8192] = b"world"
        w.release()
        r = other.data()
        assert bytes(r[0:5]) == b"hello"
        assert bytes(r[8187:8192]) == b"world"
        r[100:103] = b"abc"  # and the other way round
        r.release()
        w = owner.data()
        assert bytes(w[100:103]) == b"abc"
        w.release()
        with open(shm_path(name), "rb") as f:  # the data lives after the header page
            f.seek(layout.HEADER_SIZE)
            assert f.read(5) == b"hello"
    finally:
        other.close()
        owner.close()
        owner.unlink()


def test_data_view_is_exactly_the_data_bytes(names):
    name = names()
    s = Segment.create(name, 10, token())
    try:
        v = s.data()
        assert v.nbytes == 10
        assert not v.readonly
        v[:] = b"x" * 10
        with pytest.raises((ValueError, IndexError)):
            v[10:11] = b"y"  # the view ends where the data ends
        v.release()
        with open(shm_path(name), "rb") as f:
            raw = f.read()
        assert raw[layout.HEADER_SIZE :] == b"x" * 10
        assert raw[24:40] == s.token  # the header was not touched by data writes
    finally:
        s.close()
        s.unlink()


def test_attach_unknown_name_raises_segment_not_found(names):
    name = names()
    with pytest.raises(SegmentNotFound) as info:
        Segment.attach(name)
    assert isinstance(info.value, NotFound)
    assert isinstance(info.value, GridError)
    assert name in str(info.value)
    assert not os.path.exists(shm_path(name))


@pytest.mark.parametrize("size", [0, 100, layout.HEADER_SIZE, 3 * layout.HEADER_SIZE])
def test_attach_foreign_segment_raises_invalid_argument(names, size):
    name = names()
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=size)
    shm.close_fd()
    try:
        with pytest.raises(InvalidArgument) as info:
            Segment.attach(name)
        assert name in str(info.value)
        assert os.path.exists(shm_path(name))  # attach never destroys what it rejects
    finally:
        posix_ipc.unlink_shared_memory(name)


@pytest.mark.parametrize(
    "version,claimed_size",
    [(1, 11), (2, 10)],
    ids=["header-claims-more-data-than-the-segment-has", "another-layout-version"],
)
def test_attach_rejects_a_bad_header(names, version, claimed_size):
    name = names()
    shm = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=layout.HEADER_SIZE + 10)
    with open(shm_path(name), "r+b") as f:
        f.write(struct.pack("<8sIIQ16s", b"DGRIDSEG", version, 0, claimed_size, bytes(16)))
    shm.close_fd()
    try:
        with pytest.raises(InvalidArgument):
            Segment.attach(name)
    finally:
        posix_ipc.unlink_shared_memory(name)


def test_create_existing_name_raises_file_exists_and_keeps_the_segment(names):
    name, tok = names(), token()
    first = Segment.create(name, 64, tok)
    try:
        v = first.data()
        v[0:4] = b"keep"
        v.release()
        with pytest.raises(FileExistsError) as info:
            Segment.create(name, 128, token())
        assert info.value.errno == errno.EEXIST
        again = Segment.attach(name)  # the first segment is untouched
        try:
            assert again.size == 64
            assert again.token == tok
            v = again.data()
            assert bytes(v[0:4]) == b"keep"
            v.release()
        finally:
            again.close()
    finally:
        first.close()
        first.unlink()


@pytest.mark.parametrize("size", [0, -1, -4096])
def test_create_non_positive_size_raises_and_creates_nothing(names, size):
    name = names()
    with pytest.raises(InvalidArgument) as info:
        Segment.create(name, size, token())
    assert str(size) in str(info.value)
    assert not os.path.exists(shm_path(name))


@pytest.mark.parametrize("length", [0, 15, 17])
def test_create_wrong_token_length_raises_and_creates_nothing(names, length):
    name = names()
    with pytest.raises(InvalidArgument):
        Segment.create(name, 10, bytes(length))
    assert not os.path.exists(shm_path(name))


def test_segment_file_mode_is_0600(names):
    name = names()
    old = os.umask(0)  # so the mode seen is the one create asks for, not the umask's work
    try:
        s = Segment.create(name, 10, token())
    finally:
        os.umask(old)
    try:
        mode = os.stat(shm_path(name)).st_mode
        assert stat.S_ISREG(mode)
        assert stat.S_IMODE(mode) == 0o600
    finally:
        s.close()
        s.unlink()


def test_create_bigger_than_shm_raises_store_full_and_leaves_nothing(names):
    name = names()
    st = os.statvfs(layout.SHM_DIR)
    free, total = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    # Bigger than the free space, and bigger than the whole filesystem as well, so that tmpfs
    # refuses the posix_fallocate at once instead of reserving every free page before failing
    # (which could exhaust the host's memory while other processes use /dev/shm).
    size = max(free, total) + GIB
    assert size > free
    with pytest.raises(StoreFull) as info:
        Segment.create(name, size, token())
    assert isinstance(info.value, MemoryError)
    assert str(size) in str(info.value)
    assert not os.path.exists(shm_path(name))
    with pytest.raises(SegmentNotFound):
        Segment.attach(name)
    # and the name is free again: a normal create works
    s = Segment.create(name, 10, token())
    s.close()
    s.unlink()


def test_close_is_idempotent_and_data_after_close_raises(names):
    name = names()
    s = Segment.create(name, 10, token())
    try:
        s.close()
        assert s.closed
        s.close()
        with pytest.raises(ValueError):
            s.data()
        assert "closed" in repr(s)
        assert os.path.exists(shm_path(name))  # close does not destroy the segment
    finally:
        s.unlink()


def test_close_with_a_live_view_raises_buffer_error(names):
    name = names()
    s = Segment.create(name, 10, token())
    v = s.data()
    try:
        with pytest.raises(BufferError):
            s.close()
        assert not s.closed
    finally:
        v.release()
        s.close()
        s.unlink()


def test_context_manager_closes(names):
    name = names()
    owner = Segment.create(name, 10, token())
    try:
        with Segment.attach(name) as s:
            assert not s.closed
        assert s.closed
        assert os.path.exists(shm_path(name))
    finally:
        owner.close()
        owner.unlink()


def test_unlink_removes_the_name_but_live_mappings_stay_valid(names):
    name = names()
    owner = Segment.create(name, 16, token())
    other = Segment.attach(name)
    try:
        owner.unlink()
        assert not os.path.exists(shm_path(name))
        with pytest.raises(SegmentNotFound):
            Segment.attach(name)
        w = owner.data()
        w[0:3] = b"abc"
        w.release()
        r = other.data()
        assert bytes(r[0:3]) == b"abc"
        r.release()
        owner.unlink()  # a second unlink is quiet
        assert seg.unlink_segment(name) is False
    finally:
        other.close()
        owner.close()


def test_unlink_segment_reports_whether_it_existed(names):
    name = names()
    s = Segment.create(name, 10, token())
    s.close()
    assert seg.unlink_segment(name) is True
    assert seg.unlink_segment(name) is False


def test_list_segment_names_filters_by_prefix(names):
    a, b = names(), names()
    sa, sb = Segment.create(a, 10, token()), Segment.create(b, 10, token())
    try:
        prefix = a.rsplit(".", 1)[0] + "."
        assert seg.list_segment_names(prefix) == sorted([a, b])
        assert seg.list_segment_names(prefix.lstrip("/")) == sorted([a, b])
        assert seg.list_segment_names(a) == [a]
        assert seg.list_segment_names(prefix + "nothing") == []
    finally:
        for s in (sa, sb):
            s.close()
            s.unlink()


def test_shm_capacity_matches_statvfs():
    total, free = seg.shm_capacity()
    st = os.statvfs(layout.SHM_DIR)
    assert total == st.f_blocks * st.f_frsize
    assert 0 <= free <= total


def test_a_child_process_that_attaches_and_closes_leaves_the_segment(names):
    name, tok = names(), token()
    owner = Segment.create(name, 4096, tok)
    try:
        v = owner.data()
        v[0:6] = b"parent"
        v.release()
        child = textwrap.dedent(
            """
            import sys
            from distributed_grid.memory.shm.segment import Segment
            s = Segment.attach(sys.argv[1])
            v = s.data()
            assert bytes(v[0:6]) == b"parent", bytes(v[0:6])
            v[6:11] = b"child"
            v.release()
            sys.stdout.write(s.token.hex())
            s.close()
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", child, name], capture_output=True, timeout=60
        )
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        assert result.stdout.decode() == tok.hex()
        # The child has exited: the segment must still be there, with the child's bytes.
        assert os.path.exists(shm_path(name))
        again = Segment.attach(name)
        try:
            assert again.token == tok
            v = again.data()
            assert bytes(v[0:11]) == b"parentchild"
            v.release()
        finally:
            again.close()
    finally:
        owner.close()
        owner.unlink()
