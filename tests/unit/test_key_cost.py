"""An operation on one key reads that key's rows only, whatever the number of keys in its block:
every statement a write, commit, find, read plan or delete of one key runs on a block of 2,000
keys is planned by SQLite as an index search bounded by the key (or by the write's range),
never as a scan of the block's extents. Checked from SQLite's own query plans, not timed."""

from __future__ import annotations

import sqlite3

import pytest

from distributed_grid.memory.node.local_node import LocalNode

KEYS = 2000


@pytest.fixture
def node(cluster_id, request):
    made = LocalNode("n1", cluster_id)
    request.addfinalizer(made.close)
    return made


def statements_of(node: LocalNode, work) -> list[str]:
    """The statements (with their values) the node's catalog ran during ``work()``."""
    seen: list[str] = []
    node.catalog.sql.set_trace_callback(seen.append)
    try:
        work()
    finally:
        node.catalog.sql.set_trace_callback(None)
    return [s for s in seen if s.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE"))]


def unbounded(path: str, statement: str) -> list[str]:
    """The steps of the statement's plan that read extents without a bound on the key or
    on the offsets."""
    db = sqlite3.connect(path)
    try:
        plan = [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + statement)]
    finally:
        db.close()
    return [step for step in plan if "extents" in step and (
        step.startswith("SCAN") or step.endswith("(block=?)"))]


def test_one_keys_operations_never_scan_its_blocks_extents(node):
    block = node.allocate(64 * (KEYS + 10))
    for i in range(KEYS):
        node.prepare_write(block.number, 64 * i, 64, key=f"k{i}")
        node.commit_write(block.number, 64 * i, 64, key=f"k{i}")
    middle = f"k{KEYS // 2}"

    def one_key() -> None:
        node.prepare_write(block.number, 64 * KEYS, 64, key="new")  # a new key at the end
        node.commit_write(block.number, 64 * KEYS, 64, key="new")
        node.prepare_write(block.number, 64 * (KEYS // 2), 64, key=middle)  # rewritten
        node.commit_write(block.number, 64 * (KEYS // 2), 64, key=middle)
        node.find_key(middle)
        node.holds_key(middle, block.number)
        node.delete_key("new")
        node.put_small("small", b"x" * 100)
        node.delete_key("small")

    statements = statements_of(node, one_key)
    assert len(statements) > 10
    bad = {s: steps for s in statements if (steps := unbounded(node.catalog.path, s))}
    assert bad == {}
