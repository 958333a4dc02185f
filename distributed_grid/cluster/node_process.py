"""How a worker node process is started: its command line, its sizes, and whether this host can
give it a /dev/shm of its own.

The process itself is :mod:`distributed_grid.cluster.worker_node`; this module holds what its
starters (:func:`distributed_grid.cluster.starting.start_worker`, the supervisor of a one-host
cluster in :mod:`distributed_grid.cluster.local_cluster`) need to know of it, without importing it.
"""

from __future__ import annotations

import os
import sys

from distributed_grid.cluster import namespaces
from distributed_grid.errors import ClusterError, InvalidArgument

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


def check_private_shm(size: int) -> None:
    """Refuse a private /dev/shm of ``size`` bytes that is too small, or that this host cannot
    give (tried for real in a forked child, before anything starts).

    Raises:
        InvalidArgument: ``size`` is below :data:`MIN_SHM_SIZE`.
        ClusterError: neither root nor unprivileged user namespaces are available.
    """
    if size < MIN_SHM_SIZE:
        raise InvalidArgument(
            f"--shm-size {size} is too small: a node's private /dev/shm holds its blocks and a "
            f"quarter of it goes to Ray's object store; give at least "
            f"{MIN_SHM_SIZE // 2**20}MiB", size=size)
    refusal = namespaces.private_shm_refusal()
    if refusal is not None:
        raise ClusterError(f"cannot give nodes a private /dev/shm on this host: {refusal}")
