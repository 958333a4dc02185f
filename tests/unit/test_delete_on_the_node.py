"""Deleting a key on the node's store alone (a LocalNode: no Ray, no upkeep), over a private
catalog and its segments: the block goes with the key it was allocated for, a dead writer's
write is undone by the delete, and a full /dev/shm (a private small one) still lets a delete
through. The command and the cluster's paths: ``test_delete.py`` in tests/cluster/."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid

import pytest
from helpers.dev_shm import sweep
from helpers.small_shm import needs_small_shm, run_on_small_shm

from distributed_grid.errors import KeyNotFound


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


# A process that prepares a write of a key through the node and holds it (and its write-guard
# slot) until it is killed.
PREPARED = """
import sys
from distributed_grid.memory.node.local_node import LocalNode
cluster_id, number, offset, key = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
LocalNode("n1", cluster_id).prepare_write(number, offset, 100, key)
print("prepared", flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def node(request):
    """A LocalNode of a cluster of this test alone; its files are removed afterwards."""
    from distributed_grid.memory.node.local_node import LocalNode

    cluster_id = f"d{os.getpid()}{uuid.uuid4().hex[:8]}"
    made = LocalNode("n1", cluster_id)
    request.addfinalizer(lambda: (made.close(), sweep(cluster_id)))
    return made


def segment_exists(info) -> bool:
    return os.path.exists("/dev/shm/" + info.segment.lstrip("/"))


def test_a_block_goes_with_the_key_it_was_allocated_for(node):
    own = node.allocate(4096, for_key="k")
    shared = node.allocate(4096)
    for number, key in ((own.number, "k"), (shared.number, "a"), (shared.number, "b")):
        node.prepare_write(number, 0 if key != "b" else 2000, 10, key)
        node.commit_write(number, 0 if key != "b" else 2000, 10, key)
    assert node.catalog.counts() == (2, 8192)
    removal = node.delete_key("k")
    assert removal.block_freed and not segment_exists(own)
    assert node.catalog.counts() == (1, 4096)
    assert [b.block_id for b in node.list_blocks()] == [shared.block_id]
    assert not node.delete_key("a").block_freed and segment_exists(shared)
    assert node.block_info(shared.number).keys == {"b": [(2000, 10)]}
    with pytest.raises(KeyNotFound):
        node.delete_key("a")


def test_a_dead_writers_write_is_undone_by_the_delete(node):
    from distributed_grid.errors import KeyBusy
    from distributed_grid.memory.shm import segment as seg
    from distributed_grid.memory.shm.seqguard import Guard

    block = node.allocate(4096)
    node.prepare_write(block.number, 0, 10, "k")
    node.commit_write(block.number, 0, 10, "k")
    writer = subprocess.Popen([sys.executable, "-c", PREPARED, node.cluster_id,
                               str(block.number), "1000", "k"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert writer.stdout.readline().strip() == b"prepared", writer.stderr.read()
        with pytest.raises(KeyBusy, match=f"by pid {writer.pid} on "):
            node.delete_key("k")
    finally:
        kill(writer)
    fd = seg.open_data(block.segment, bytes.fromhex(block.token), block.size)
    guard = Guard(fd)
    os.close(fd)
    try:
        assert [(start, end) for _, _, start, end in guard.occupied()] == [(1000, 1100)]
        removal = node.delete_key("k")  # no upkeep runs here: the delete undid the write
        assert removal.extents == [(0, 10)] and not removal.block_freed
        assert guard.occupied() == []  # and released its guard slot
    finally:
        guard.close()
    info = node.block_info(block.number)
    assert info.keys == {} and info.pending == []


FULL = """
import json, os, sqlite3
from distributed_grid.errors import StoreFull
from distributed_grid.memory.node.local_node import LocalNode
node = LocalNode("n1", "full")
def put(number, offset, n, key):
    node.prepare_write(number, offset, n, key)
    node.commit_write(number, offset, n, key)
def state():
    db = sqlite3.connect(node.catalog.path)
    try:
        return [db.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for t in ("meta", "blocks", "extents", "key_meta")]
    finally:
        db.close()
own = node.allocate(256 * 1024, for_key="own")
shared = node.allocate(256 * 1024)
put(own.number, 0, 1000, "own")
put(shared.number, 0, 1000, "a")
put(shared.number, 2000, 1000, "b")
db = sqlite3.connect(node.catalog.path)
db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # every change needs new WAL pages
db.close()
fd = os.open("/dev/shm/filler", os.O_WRONLY | os.O_CREAT, 0o600)
for chunk in (b"x" * 4096, b"x"):
    try:
        while True:
            os.write(fd, chunk)
    except OSError:
        pass
os.close(fd)
out = {}
before = state()
try:
    node.delete_key("a")
    out["shared"] = "deleted"
except StoreFull as exc:
    out["shared"] = "StoreFull: " + str(exc)
    out["unchanged"] = state() == before
removal = node.delete_key("own")  # its block's memory makes the room for the change
out["own"] = removal.block_freed
out["listed"] = [b.block_id for b in node.list_blocks()]
print(json.dumps(out))
"""


@needs_small_shm
def test_a_delete_on_a_full_dev_shm_frees_the_keys_block_first():
    result = run_on_small_shm(FULL)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["shared"].startswith("StoreFull: ") and out["unchanged"], out
    assert out["own"] is True and out["listed"] == ["block_1_n1"], out
