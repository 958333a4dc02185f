"""The library through Ray: local and remote paths, restarts, and a stateful model check."""

from __future__ import annotations

import os
import signal
import time

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from distributed_grid.errors import BlockNotFound, GridError, KeyConflict, OutOfBounds


def test_local_path_is_proven_by_token(pool, remote_pool, blocks):
    from distributed_grid.memory.shm import layout

    block_id = blocks.new(8192, node="gpu1")
    pool.write(block_id, b"the block's own bytes")
    assert pool.is_local(block_id)
    assert not remote_pool.is_local(block_id)
    info = pool.block_info(block_id)
    path = os.path.join(layout.SHM_DIR, info.segment.lstrip("/"))
    fd = os.open(path, os.O_RDWR)
    try:
        token = os.pread(fd, layout.TOKEN_SIZE, 24)  # the header's token (segment.py's layout)
        assert token.hex() == info.token
        os.pwrite(fd, bytes(b ^ 0xFF for b in token), 24)  # another block's memory, say
        with pytest.raises(BlockNotFound, match="shared memory"):
            pool.is_local(block_id)  # the name matches, the token does not: not this block
        with pytest.raises(BlockNotFound):
            pool.read(block_id)
    finally:
        os.pwrite(fd, token, 24)
        os.close(fd)
    assert pool.is_local(block_id)
    assert pool.read(block_id) == b"the block's own bytes"


@pytest.mark.parametrize("node", ["head", "gpu1", "gpu2"])
def test_remote_and_local_paths_give_the_same_bytes(pool, remote_pool, blocks, node):
    size = 3 * 2**20 + 17
    block_id = blocks.new(size, node=node)
    data = os.urandom(size)
    remote_pool.write(block_id, data[: size // 2])
    pool.write(block_id, data[size // 2 :], offset=size // 2)
    assert pool.read(block_id) == data
    assert remote_pool.read(block_id) == data
    assert remote_pool.read(block_id, size=100, offset=size - 100) == data[-100:]


def test_remote_transfer_is_chunked(remote_pool, pool, blocks, monkeypatch):
    from distributed_grid.memory.client.remote_node import RemoteNode
    from distributed_grid.memory.io import copies

    monkeypatch.setattr(copies, "CHUNK", 4096)  # many chunks, several in flight at once
    calls: list[str] = []
    submit = RemoteNode.submit

    def counted(self, method, *args):  # the real call, counted on its way
        calls.append(method)
        return submit(self, method, *args)

    monkeypatch.setattr(RemoteNode, "submit", counted)
    data = os.urandom(4096 * 9 + 5)
    block_id = blocks.new(len(data), node="gpu2")
    remote_pool.write(block_id, data)
    assert calls.count("write_chunk") == 10
    assert remote_pool.read(block_id) == data
    assert calls.count("read_chunk") == 10
    assert pool.read(block_id) == data


def test_store_actor_killed_with_sigkill_loses_nothing(pool, blocks, tmp_path, unique):
    data = os.urandom(100_000)
    (tmp_path / "f").write_bytes(data)
    block_id = blocks.new(200_000, node="gpu2")
    pool.store_file(unique, str(tmp_path / "f"), block_id=block_id, offset=1000)
    before = pool.block_info(block_id)
    old_pid = pool.ray.call("gpu2", "ping")["pid"]
    os.kill(old_pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:  # the next calls are retried by Ray once the actor is restarted
        try:
            new_pid = pool.ray.call("gpu2", "ping")["pid"]
            break
        except GridError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    assert new_pid != old_pid
    assert pool.block_info(block_id) == before
    assert pool.read(unique) == data
    assert pool.find_key(unique).block_id == block_id
    assert pool.keys()[unique] == block_id
    fresh = blocks.new(4096, node="gpu2")
    assert int(fresh.split("_")[1]) > int(block_id.split("_")[1])


def test_errors_cross_the_actor_boundary_as_themselves(pool, blocks):
    block_id = blocks.new(100, node="gpu1")
    too_long = r"cannot write 101 bytes at offset 0 into .*\(size 100\)"
    with pytest.raises(OutOfBounds, match=too_long):
        pool.write(block_id, b"x" * 101)
    pool.write(block_id, b"abc", offset=10, key="owner")
    with pytest.raises(KeyConflict, match="belong to key 'owner'"):
        pool.write(block_id, b"zz", offset=11, key="thief")
    with pytest.raises(BlockNotFound):
        pool.block_info(block_id.replace("block_", "block_9999", 1))


def test_stats_report_every_node(pool):
    names = {s.node for s in pool.stats()}
    assert {"head", "gpu1", "gpu2"} <= names


class StoreMachine(RuleBasedStateMachine):
    """allocate / write / read / deallocate against a plain bytearray model of every block."""

    pool = None
    remote_pool = None
    blocks = Bundle("blocks")

    def __init__(self) -> None:
        super().__init__()
        self.model: dict[str, bytearray] = {}
        self.used: dict[str, int] = {}

    @rule(target=blocks, size=st.integers(1, 3000), node=st.sampled_from(["gpu1", "gpu2"]))
    def allocate(self, size, node):
        block_id = self.pool.allocate(size, node=node).block_id
        self.model[block_id] = bytearray(size)
        self.used[block_id] = 0
        return block_id

    @rule(block=blocks, offset=st.integers(-5, 3100), data=st.binary(max_size=600),
          remote=st.booleans())
    def write(self, block, offset, data, remote):
        client = self.remote_pool if remote else self.pool
        size = len(self.model[block])
        if offset < 0 or offset + len(data) > size:
            with pytest.raises(OutOfBounds):
                client.write(block, data, offset=offset)
            return
        client.write(block, data, offset=offset)
        self.model[block][offset : offset + len(data)] = data
        self.used[block] = max(self.used[block], offset + len(data))

    @rule(block=blocks, offset=st.integers(0, 3100), size=st.none() | st.integers(0, 3100),
          remote=st.booleans())
    def read(self, block, offset, size, remote):
        client = self.remote_pool if remote else self.pool
        model = self.model[block]
        if offset > len(model) or (size is not None and offset + size > len(model)):
            with pytest.raises(OutOfBounds):
                client.read(block, size=size, offset=offset)
            return
        end = max(offset, self.used[block]) if size is None else offset + size
        assert client.read(block, size=size, offset=offset) == bytes(model[offset:end])

    @rule(block=consumes(blocks))
    def deallocate(self, block):
        self.pool.deallocate(block)
        del self.model[block]
        with pytest.raises(BlockNotFound):
            self.pool.read(block)

    @invariant()
    def listing_matches_model(self):
        listed = {b.block_id: b for b in self.pool.list_blocks() if b.block_id in self.model}
        assert set(listed) == set(self.model)
        for block_id, info in listed.items():
            assert info.size == len(self.model[block_id])
            assert info.used == self.used[block_id]

    def teardown(self):
        for block_id in list(self.model):
            self.pool.deallocate(block_id)


def test_stateful_store_matches_a_bytearray_model(pool, remote_pool):
    StoreMachine.pool = pool
    StoreMachine.remote_pool = remote_pool
    machine = StoreMachine.TestCase
    machine.settings = settings(max_examples=12, stateful_step_count=15, deadline=None,
                                suppress_health_check=list(HealthCheck))
    machine().runTest()
