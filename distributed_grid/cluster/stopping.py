"""Stopping the Ray processes ``grid cluster start`` started on this host, by pid; no Ray.

Each started process is told to end (SIGTERM), waited for, and killed if it outlives the wait;
workers first, so a head is the last of its cluster to go. A one-host cluster's supervisor takes
its head and worker nodes down with it, and removes the cluster's files. The blocks are freed
before this, through the stores, by :mod:`distributed_grid.memory.client.teardown`.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from distributed_grid import runtime
from distributed_grid.cluster.hosted import nodes_of, started_here


def stop_started(address: str | None = None, timeout: float = 60) -> list[dict[str, Any]]:
    """End the processes started here (workers first), by pid; returns the Ray nodes they ran,
    one entry each: ``node`` (its name), ``role``, ``address`` (the cluster's) and ``pid`` (the
    process that ran it).

    Args:
        address: only the cluster at this address; None for every cluster started here.
        timeout: seconds to wait for each process to end before it is killed.
    """
    entries = [e for e in started_here()
               if address is None or runtime.same_address(e["address"], address)]
    entries.sort(key=lambda e: e["role"] != "worker")
    for entry in entries:
        _end(entry["pid"], entry.get("start"), timeout)
    runtime.forget_started({e["pid"] for e in entries})
    return [{"node": node, "role": e["role"], "address": e["address"], "pid": e["pid"]}
            for e in entries for node in nodes_of(e)]


def _end(pid: int, start: int | None, timeout: float) -> None:
    """SIGTERM process ``pid`` (the one that started at ``start``), wait up to ``timeout``
    seconds for it to end, then SIGKILL it."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while runtime.process_alive(pid, start):
        _reap(pid)
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(pid)
            return
        time.sleep(0.1)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
