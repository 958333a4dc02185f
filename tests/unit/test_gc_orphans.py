"""``grid memory gc``'s sweep of files in /dev/shm that no record on this host accounts for (a
cluster started under another TMPDIR, say): kept while recent or while a process holds them, then
removed. A killed cluster's files, and a live one's: ``test_gc.py`` in tests/cluster/."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from distributed_grid.cluster import gc as sweeper


@pytest.fixture
def orphan_files():
    """Files of a cluster nobody recorded nor holds (started under another TMPDIR, say)."""
    cid = f"gcorphan{uuid.uuid4().hex[:8]}"
    paths = [f"/dev/shm/dg.{cid}.n1.0", f"/dev/shm/dg.{cid}.n1.spare0",  # a block, a spare
             f"/dev/shm/dgc.{cid}.n1.db"]
    for path in paths:
        with open(path, "wb") as f:
            f.write(b"left")
    yield cid, paths
    for path in paths:
        if os.path.exists(path):
            os.unlink(path)


def test_files_with_no_record_are_kept_while_recent_then_removed(orphan_files):
    cid, paths = orphan_files
    result = sweeper.sweep(dry_run=True)
    assert "no record of it here" in result.kept[cid]
    assert all(os.path.exists(p) for p in paths)
    old = time.time() - sweeper.GRACE_SECONDS - 60
    for path in paths:
        os.utime(path, (old, old))
    result = sweeper.sweep(dry_run=True)
    assert sorted(f.path for f in result.removed if f.cluster_id == cid) == sorted(paths)
    assert cid not in result.kept and all(os.path.exists(p) for p in paths)


def test_files_a_process_holds_are_kept(orphan_files):
    cid, paths = orphan_files
    old = time.time() - sweeper.GRACE_SECONDS - 60
    for path in paths:
        os.utime(path, (old, old))
    with open(paths[1], "rb"):  # as a store holds its catalog open
        result = sweeper.sweep(dry_run=True)
    assert f"process {os.getpid()} holds" in result.kept[cid]
    assert not [f for f in result.removed if f.cluster_id == cid]


def test_the_spill_files_of_a_dead_cluster_go_with_its_catalog(cluster_id, tmp_path):
    from distributed_grid.memory.io import sources
    from distributed_grid.memory.node.local_node import LocalNode

    node = LocalNode("n1", cluster_id)
    node.configure_spill(str(tmp_path / "spill"), 2**24)
    block = node.allocate(2**20)
    node.prepare_write(block.number, 0, 4, "k")
    node.fill(block, 0, 4, sources.BufferSource(memoryview(b"abcd")))
    node.commit_write(block.number, 0, 4, "k")
    node.spill(block.number)
    node.close()  # the cluster is dead: no process holds its catalog
    (spilled,) = os.listdir(tmp_path / "spill")
    old = time.time() - sweeper.GRACE_SECONDS - 60
    for name in os.listdir("/dev/shm"):
        if cluster_id in name:
            os.utime(os.path.join("/dev/shm", name), (old, old))
    result = sweeper.sweep()
    mine = {f.kind: f.name for f in result.removed if f.cluster_id == cluster_id}
    assert mine["spill file"] == spilled and "catalog" in mine
    assert os.listdir(tmp_path / "spill") == []
