"""The private Ray APIs distributed_grid uses, each behind one function of ours.

Ray does not promise to keep these. ``tests/cluster/test_ray_private.py`` calls every function here
against a real cluster, so an upgrade of Ray that changes one fails that test by name instead of
failing somewhere deep in a command.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


def kv_put(key: str, value: bytes, namespace: str) -> None:
    """Put ``value`` under ``key`` in the cluster's key-value store (GCS), replacing it."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(key, value, overwrite=True, namespace=namespace)


def kv_get(key: str, namespace: str) -> bytes | None:
    """The value under ``key`` in the cluster's key-value store, or None."""
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_get(key, namespace=namespace)


def keep_loopback_addresses() -> None:
    """Make an already imported Ray keep 127.0.0.1 addresses as they are.

    Ray reads ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER`` once, at import; a process that imported Ray
    before it knew the cluster was a loopback one flips the constant instead.
    """
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def one_host_cluster(head_args: dict[str, Any]) -> Any:
    """A head started through ``ray.cluster_utils.Cluster`` (which can add raylets on loopback,
    unlike ``ray start``)."""
    from ray.cluster_utils import Cluster

    return Cluster(initialize_head=True, head_node_args=head_args)


def start_worker_node(gcs_address: str, labels: dict[str, str], num_cpus: int,
                      object_store_memory: int, temp_dir: str,
                      node_ip_address: str | None = None, log_monitor: bool = True) -> Any:
    """A Ray worker node (a raylet and its helpers) started from this process, joined to the
    cluster at ``gcs_address``; it ends with this process (Ray's fate sharing).

    This is what ``ray start --address`` does after its checks, and what
    ``ray.cluster_utils.Cluster.add_node`` does for a worker; ``ray start`` refuses to join a
    head on 127.0.0.1 (with Ray told to keep loopback addresses it aborts, "Multi-node Ray
    clusters are not supported"; without, it replaces 127.0.0.1 by the host's outward address,
    where a loopback GCS does not answer).

    Args:
        node_ip_address: the address the node announces; None lets Ray choose it.
        log_monitor: run the node's log monitor (one per host: not for a node that shares the
            head's session folder).
    """
    from ray._private.node import Node
    from ray._private.parameter import RayParams

    params = RayParams(gcs_address=gcs_address, node_ip_address=node_ip_address,
                       num_cpus=num_cpus, num_gpus=0, object_store_memory=object_store_memory,
                       labels=labels, min_worker_port=0, max_worker_port=0, node_manager_port=0,
                       include_log_monitor=log_monitor, temp_dir=temp_dir)
    params.dashboard_agent_listen_port = None  # a free port, not the head agent's
    return Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)


def stop_node(node: Any) -> None:
    """End the processes of a node started by :func:`start_worker_node` (gracefully first)."""
    node.kill_all_processes(check_alive=False, allow_graceful=True, wait=True)


def node_id(node: Any) -> str:
    """The Ray node id (hex) of a node started from this process."""
    return node.node_id


def raylet_pid(node: Any) -> int:
    """The pid of a ``Cluster`` node's raylet: ending it takes the node out of the cluster."""
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


def dead_jobs() -> set[str]:
    """The ids (hex) of the cluster's jobs that have ended: their drivers are gone."""
    from ray._private.worker import global_worker

    jobs = global_worker.gcs_client.get_all_job_info(
        skip_submission_job_info_field=True, skip_is_running_tasks_field=True)
    return {job_id.hex() for job_id, info in jobs.items() if info.is_dead}


def job_id() -> str:
    """This process's Ray job id (hex)."""
    import ray

    return ray.get_runtime_context().get_job_id()


def reload_auth_config() -> None:
    """Make an already imported Ray read ``RAY_AUTH_MODE`` and the token again.

    Ray reads them once, at import, and keeps the token it loaded; Ray's own ``ray.init``
    re-reads its config this way when it turns token auth on.
    """
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def auth_refusal(address: str, timeout: float = 5.0) -> str | None:
    """Why the GCS at ``address`` refuses this process's token (None: it accepts it).

    One call, bounded by ``timeout``: ``ray.init`` would instead retry for about 20 s, printing
    a warning a second. Ray's C++ client prints one warning line on a refusal; it is kept off
    stderr (the caller reports the refusal itself).
    """
    from ray._raylet import InnerGcsClient
    from ray.exceptions import AuthenticationError

    try:
        with _stderr_silenced():
            InnerGcsClient.standalone(address, None, int(timeout * 1000))
    except AuthenticationError as exc:
        return str(exc).split(". ")[0].removeprefix("RPC error: ")
    return None


@contextmanager
def _stderr_silenced() -> Iterator[None]:
    """File descriptor 2 pointed at a scratch file for the block (Ray's C++ writes there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as scratch:
            os.dup2(scratch.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
