"""How a worker node process is started: its command line and its sizes.

The process itself is :mod:`distributed_grid.cluster.worker_node`; this module holds what its
starters
(:func:`distributed_grid.cluster.lifecycle.start_worker`, the supervisor of a one-host cluster in
:mod:`distributed_grid.cluster.local_cluster`) need to know of it, without importing it.
"""

from __future__ import annotations

import os
import sys

DEFAULT_SHM_SIZE = 2 * 2**30
MIN_SHM_SIZE = 256 * 2**20
MIN_OBJECT_STORE = 80 * 2**20  # Ray refuses less than 75 MiB


def object_store_for(shm_size: int | None, requested: int | None = None) -> int | None:
    """Bytes of Ray object store for a node with a ``shm_size``-byte private /dev/shm (None for
    a node on the host's /dev/shm: ``requested``, or Ray's own default when that is None)."""
    if not shm_size:
        return requested
    share = max(MIN_OBJECT_STORE, shm_size // 4)
    return min(requested, share) if requested else share


def command(address: str, name: str, ready_file: str, *, num_cpus: int = 1,
            object_store_memory: int | None = None, private_shm: int | None = None,
            log_monitor: bool = True, die_with_parent: bool = False) -> list[str]:
    """The command line that starts a worker node process
    (:mod:`distributed_grid.cluster.worker_node`).

    Args:
        die_with_parent: the node ends when the process that started it dies (a supervisor
            killed outright still has its nodes end and clean up).
    """
    cmd = [sys.executable, "-m", "distributed_grid.cluster.worker_node", "--address", address,
           "--name", name, "--ready-file", ready_file, "--num-cpus", str(num_cpus)]
    if object_store_memory is not None:
        cmd += ["--object-store-memory", str(object_store_memory)]
    if private_shm:
        cmd += ["--private-shm", str(private_shm)]
    if not log_monitor:
        cmd.append("--no-log-monitor")
    if die_with_parent:
        cmd += ["--parent", str(os.getpid())]
    return cmd
