"""Every wait for a store is bounded: a store that is alive but does not answer fails the call
with one clear line within ``METADATA_TIMEOUT`` instead of holding the caller (a listing goes
on without it: that node's blocks are listed as it last published them, ``unreachable``)."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from distributed_grid.errors import NodeUnavailable
from distributed_grid.wire import METADATA_TIMEOUT

REMOTE = {"DISTRIBUTED_GRID_FORCE_REMOTE": "1"}
BOUND = 120  # seconds a command may take here: its start, Ray's connection, one timed-out call


@contextmanager
def stopped(pid: int) -> Iterator[None]:
    """The process ``pid`` stopped (SIGSTOP) for the block, continued whatever happens."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_wedged_store_fails_each_call_within_the_bound(grid, remote_pool, blocks):
    block_id = blocks.new(4096, node="gpu2")
    served = remote_pool.ray.call("gpu2", "ping")
    wedged = f"the store of node gpu2 did not answer within {METADATA_TIMEOUT:.0f} s"
    deadline = time.monotonic() + 60  # gpu2's store publishes its block list every 2 s
    while block_id not in {b.block_id for b in remote_pool.ray.last_published("gpu2")}:
        assert time.monotonic() < deadline, "gpu2's store never published the block"
        time.sleep(0.2)
    with stopped(served["pid"]):
        listed = json.loads(grid("memory", "list-objects", "--json", env=REMOTE,
                                 timeout=BOUND).stdout)
        assert {b["block_id"]: b["status"] for b in listed}[block_id] == "unreachable"
        line = grid.fails("memory", "retrieve", block_id, env=REMOTE, timeout=BOUND)
        assert line.startswith(f"error: block {block_id} is unreachable: {wedged}"), line
        with pytest.raises(NodeUnavailable, match=wedged) as raised:
            remote_pool.block_info(block_id)
        assert raised.value.node == "gpu2"
        # a command of this host reads gpu2's catalog itself: it needs no answer from the store
        assert block_id in {b["block_id"] for b in grid.listing()}
    assert remote_pool.block_info(block_id).size == 4096  # it answers again once continued
