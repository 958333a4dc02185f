"""A key rewritten into new space on its node (copy-on-write), without Ray: a block allocated for
the key by its writer takes the new version beside the old one, readers get the old version
whole until the commit, the commit drops the old version (and its block) in the same catalog
transaction, and a writer killed part-way leaves the old version. The pool's side (which block
a rewrite goes to) is in ``tests/cluster/test_rewrites.py``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from helpers.node_keys import read_key, store

from distributed_grid.errors import KeyBusy, KeyConflict
from distributed_grid.memory.io import sources
from distributed_grid.runtime import this_process

# A writer of the key's next version that fills half of it and waits to be killed.
HALF_WRITTEN = """
import sys
from distributed_grid.memory.io import sources
from distributed_grid.memory.node.local_node import LocalNode
from distributed_grid.runtime import this_process
cluster_id, key, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
node = LocalNode("n1", cluster_id)
block = node.allocate(size, holder=this_process(), for_key=key)
node.prepare_write(block.number, 0, size, key, writer=this_process())
node.fill(block, 0, size // 2, sources.BufferSource(memoryview(b"N" * (size // 2))))
print(block.number, flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def node(cluster_id):
    """A LocalNode of this test's cluster (whose files the ``cluster_id`` fixture removes)."""
    from distributed_grid.memory.node.local_node import LocalNode

    made = LocalNode("n1", cluster_id)
    yield made
    made.close()


def test_the_new_version_takes_the_place_of_the_old_at_its_commit(node):
    old = store(node, "k", b"old version")
    new = node.allocate(11, holder=this_process(), for_key="k")
    node.prepare_write(new.number, 0, 11, "k", writer=this_process())
    node.fill(new, 0, 11, sources.BufferSource(memoryview(b"new version")))
    assert read_key(node, "k") == b"old version"  # whole, while the new one is written
    with pytest.raises(KeyBusy):  # one writer of a key at a time
        node.delete_key("k")
    info = node.commit_write(new.number, 0, 11, "k", {"format": "x"})
    assert info.keys == {"k": [(0, 11)]} and info.for_key == "k"
    assert read_key(node, "k") == b"new version"
    assert node.find_key("k").meta == {"format": "x"}
    assert node.catalog.block(old.number) is None  # the old block went with its version
    assert not os.path.exists("/dev/shm/" + old.segment.lstrip("/"))


def test_only_the_keys_writer_may_write_its_next_version_beside_it(node):
    store(node, "k", b"old")
    other = node.allocate(3, holder="otherhost/1/1", for_key="k")  # not this writer's block
    with pytest.raises(KeyConflict, match="already lives in"):
        node.prepare_write(other.number, 0, 3, "k", writer=this_process())
    plain = node.allocate(3)  # not allocated for the key
    with pytest.raises(KeyConflict, match="already lives in"):
        node.prepare_write(plain.number, 0, 3, "k")


def test_a_writer_killed_part_way_leaves_the_old_version(node):
    size = 4 * 2**20
    data = os.urandom(size)
    store(node, "k", data)
    writer = subprocess.Popen([sys.executable, "-c", HALF_WRITTEN, node.cluster_id, "k",
                               str(size)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        number = int(writer.stdout.readline())
        assert read_key(node, "k") == data  # no wait for the writer: its bytes are elsewhere
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    node.reap_writes()  # what the node's upkeep does every 2 s
    assert node.catalog.block(number) is None  # its new block went with it
    assert read_key(node, "k") == data
