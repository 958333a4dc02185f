"""The room for new blocks is what the host's memory can back, not what /dev/shm's size says.

The arithmetic is a pure function, checked with hypothesis; reading the host is checked on
real files (this host's /proc, and cgroup trees laid out as the kernel lays them out); and a
real allocation bigger than the memory bound but smaller than /dev/shm's free bytes is refused
before any memory is reserved, through the library (through the CLI: ``test_capacity_cli.py``
in tests/cluster/). The ``half_memory_reserved`` fixture is the root conftest's.
"""

from __future__ import annotations

import os

import pytest
from helpers.dev_shm import sweep
from hypothesis import given
from hypothesis import strategies as st

from distributed_grid.errors import InvalidArgument, StoreFull
from distributed_grid.memory.node.store import BlockStore
from distributed_grid.memory.shm import capacity, layout
from distributed_grid.memory.shm import segment as seg
from distributed_grid.memory.shm.capacity import Limits, memory_reserve, room_for_blocks

HEADER = layout.HEADER_SIZE
GiB = 2**30
sizes = st.integers(min_value=0, max_value=2**45)
maybe = st.none() | sizes


@st.composite
def limits(draw) -> Limits:
    return Limits(shm_total=draw(sizes), shm_free=draw(sizes), shm_reserve=draw(sizes),
                  mem_available=draw(maybe), mem_reserve=draw(sizes), cgroup_free=draw(maybe),
                  cgroup_reserve=draw(sizes))


def bounds(lim: Limits, cap: int | None, block_bytes: int) -> dict[str, int]:
    """Each limit's room, written out once more the plain way."""
    found = {"shm": lim.shm_free - lim.shm_reserve - HEADER}
    if lim.mem_available is not None:
        found["memory"] = lim.mem_available - lim.mem_reserve - HEADER
    if lim.cgroup_free is not None:
        found["cgroup"] = lim.cgroup_free - lim.cgroup_reserve - HEADER
    if cap is not None:
        found["capacity"] = cap - block_bytes
    return found


@given(limits(), maybe, sizes)
def test_room_is_the_tightest_bound_and_names_it(lim, cap, block_bytes):
    room, limit = room_for_blocks(lim, cap, block_bytes)
    each = bounds(lim, cap, block_bytes)
    assert room == max(0, min(each.values()))
    assert each[limit] == min(each.values())  # the bound named is one that sets the room
    for value in each.values():  # a block of that size fits under every bound
        assert room <= max(0, value)


@given(limits(), maybe, sizes, st.integers(min_value=1, max_value=2**40))
def test_more_memory_never_means_less_room(lim, cap, block_bytes, more):
    room, _ = room_for_blocks(lim, cap, block_bytes)
    if lim.mem_available is not None:
        richer = Limits(**{**lim.__dict__, "mem_available": lim.mem_available + more})
        assert room_for_blocks(richer, cap, block_bytes)[0] >= room
    bigger_shm = Limits(**{**lim.__dict__, "shm_free": lim.shm_free + more})
    assert room_for_blocks(bigger_shm, cap, block_bytes)[0] >= room


@given(st.integers(min_value=0, max_value=2**50))
def test_default_reserve_is_256_mib_or_5_percent_never_over_a_quarter(total):
    reserve = memory_reserve(total, None)
    assert reserve == min(max(256 * 2**20, total // 20), total // 4)
    assert 0 <= reserve <= total // 4


def test_reserve_setting_is_a_size():
    assert memory_reserve(16 * GiB, "512MB") == 512 * 10**6
    assert memory_reserve(16 * GiB, "1GiB") == GiB
    assert memory_reserve(16 * GiB, "0") == 0
    for bad in ("lots", "-1MB", "1.5"):
        with pytest.raises(InvalidArgument) as exc:
            memory_reserve(16 * GiB, bad)
        assert capacity.RESERVE_ENV in str(exc.value) and "\n" not in str(exc.value)


def test_shm_reserve_is_one_64th_between_1_and_32_mib():
    assert capacity.shm_reserve(16 * 2**20) == 2**20
    assert capacity.shm_reserve(1 * GiB) == 16 * 2**20
    assert capacity.shm_reserve(24 * GiB) == 32 * 2**20


# -- reading the host ----------------------------------------------------------------------------


def test_meminfo_of_this_host():
    total, available = capacity.read_meminfo()
    assert total is not None and available is not None
    assert 0 < available <= total


def test_meminfo_in_kib_and_missing_fields(tmp_path):
    path = tmp_path / "meminfo"
    path.write_text("MemTotal:       24731708 kB\nMemFree:  1 kB\nMemAvailable:   2048 kB\n")
    assert capacity.read_meminfo(str(path)) == (24731708 * 1024, 2048 * 1024)
    path.write_text("MemTotal:       100 kB\n")  # an old kernel: no MemAvailable
    assert capacity.read_meminfo(str(path)) == (100 * 1024, None)
    assert capacity.read_meminfo(str(tmp_path / "none")) == (None, None)


def _write(folder, **files: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name.replace("_", ".", 1)).write_text(text + "\n")


def test_cgroup_v2_tightest_of_the_cgroup_and_its_ancestors(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("0::/a/b\n")
    root = tmp_path / "sys"
    _write(root / "a" / "b", memory_max=str(GiB), memory_current=str(512 * 2**20),
           memory_stat=f"anon 1\ninactive_file {100 * 2**20}\nshmem 0")
    _write(root / "a", memory_max="max", memory_current=str(900 * 2**20), memory_stat="")
    capacity._cgroup_folders.cache_clear()
    # reclaimable page cache (inactive_file) is not counted as used
    assert capacity.cgroup_room(str(proc), str(root)) == (GiB - 412 * 2**20, GiB)
    (root / "a" / "memory.max").write_text(str(1000 * 2**20))  # the parent is tighter
    capacity._limits_read.clear()  # limits are read again each LIMIT_SECONDS
    assert capacity.cgroup_room(str(proc), str(root)) == (100 * 2**20, 1000 * 2**20)
    capacity._cgroup_folders.cache_clear()


def test_cgroup_v1_and_no_limit(tmp_path):
    proc = tmp_path / "cgroup"
    proc.write_text("9:name=systemd:/\n4:memory:/job\n0::/\n")
    root = tmp_path / "sys"
    _write(root / "memory" / "job", memory_limit_in_bytes="9223372036854771712",
           memory_usage_in_bytes="5", memory_stat="total_inactive_file 0")
    _write(root / "memory", memory_limit_in_bytes="9223372036854771712",
           memory_usage_in_bytes="5")
    capacity._cgroup_folders.cache_clear()
    assert capacity.cgroup_room(str(proc), str(root)) == (None, None)  # unlimited
    (root / "memory" / "job" / "memory.limit_in_bytes").write_text(str(GiB))
    (root / "memory" / "job" / "memory.usage_in_bytes").write_text(str(GiB // 2))
    capacity._limits_read.clear()  # limits are read again each LIMIT_SECONDS
    assert capacity.cgroup_room(str(proc), str(root)) == (GiB // 2, GiB)
    capacity._cgroup_folders.cache_clear()


# -- a real refusal ------------------------------------------------------------------------------


def test_a_block_bigger_than_memory_can_back_is_refused_before_reserving_any(
        half_memory_reserved, tmp_path, request):
    cluster_id = f"cap{os.getpid()}"
    request.addfinalizer(lambda: sweep(cluster_id))
    store = BlockStore("n1", cluster_id)
    request.addfinalizer(store.close)
    stats = store.stats()
    assert stats.limited_by == "memory"
    shm_room = stats.shm_free - stats.shm_reserve - HEADER
    size = (stats.free_for_blocks + shm_room) // 2  # more than memory backs, less than shm
    assert stats.free_for_blocks < size < shm_room
    before = os.statvfs(layout.SHM_DIR)
    with pytest.raises(StoreFull) as exc:
        store.allocate(size)
    after = os.statvfs(layout.SHM_DIR)
    message = str(exc.value)
    assert "memory available" in message and capacity.RESERVE_ENV in message
    assert exc.value.limit == "memory" and exc.value.size == size and "\n" not in message
    assert store.list_blocks() == [] and seg.list_segment_names(store.prefix) == []
    assert store.catalog.meta("next_number") == 0  # no number spent
    used = (before.f_bavail - after.f_bavail) * before.f_frsize
    assert used < size // 1000, used  # nothing of the block was reserved


def test_host_room_reads_memory_on_a_clock_and_moves_it_by_the_nodes_own_blocks():
    room = capacity.HostRoom(refresh=3600)  # one reading serves the whole test
    first = room.limits(block_bytes=0)
    later = room.limits(block_bytes=10 * 2**20)  # the node made 10 MiB of blocks since
    if first.mem_available is not None:
        assert later.mem_available == first.mem_available - 10 * 2**20
    if first.cgroup_free is not None:
        assert later.cgroup_free == first.cgroup_free - 10 * 2**20
    assert later.shm_total == seg.shm_capacity()[0]  # /dev/shm is read every time
    fresh = room.limits(block_bytes=10 * 2**20, fresh=True)  # a refusal reads the host again
    again = room.limits(block_bytes=10 * 2**20)  # ... and that reading is the new baseline
    assert again.mem_available == fresh.mem_available
    assert again.cgroup_free == fresh.cgroup_free


def test_host_room_reads_again_when_the_reserve_setting_changes(monkeypatch):
    room = capacity.HostRoom(refresh=3600)
    monkeypatch.setenv(capacity.RESERVE_ENV, "0")
    assert room.limits(0).mem_reserve == 0
    monkeypatch.setenv(capacity.RESERVE_ENV, "64MiB")
    limits = room.limits(0)
    assert limits.mem_available is None or limits.mem_reserve == 64 * 2**20
