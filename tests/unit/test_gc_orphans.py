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
    paths = [f"/dev/shm/dg.{cid}.n1.0", f"/dev/shm/dgc.{cid}.n1.db"]
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
