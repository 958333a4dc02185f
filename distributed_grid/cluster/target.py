"""Which cluster a command means; no Ray is imported here.

In this order:

1. the cluster this process is connected to (code running in a Ray task or driver), when the
   caller names none;
2. the address the caller gives (``--address``, a config's ``address``), else ``RAY_ADDRESS``:
   it must answer, or the command fails naming it;
3. the cluster ``grid`` started on this host (or the one a node of this host joined with
   ``grid cluster start --address``). When several run here, none is picked: the command fails
   with one line listing them and how to name one;
4. the one Ray recorded as current in its default temp folder (``ray start`` run by hand);
5. when allowed, the embedded default: a one-host cluster started on demand, announced in one
   line on stderr, that runs until ``grid cluster stop``. Two commands that find no cluster at
   once start one between them (:func:`distributed_grid.cluster.hosted.one_start_at_a_time`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from distributed_grid.cluster import hosted
from distributed_grid.cluster.ray_env import answers, recorded_address
from distributed_grid.errors import ClusterError


@dataclass(frozen=True)
class Target:
    """The cluster a command uses (connecting finds the auth token it accepts)."""

    address: str


def find_cluster(address: str | None = None, start_if_missing: bool = True) -> Target:
    """The cluster a command uses (starting the embedded default if none answers).

    Args:
        address: ``HOST:PORT`` of the cluster's head; None for ``RAY_ADDRESS`` or the cluster
            started on this host.
        start_if_missing: start the embedded local cluster when no cluster answers (only when
            no address was given).

    Raises:
        ClusterError: the given cluster does not answer; several clusters started by grid run
            on this host and none was named; or none runs and none could be started.
    """
    ray = sys.modules.get("ray")  # connected already? (never imports Ray)
    if address is None and ray is not None and ray.is_initialized():
        return Target(ray.get_runtime_context().gcs_address)
    explicit = address or os.environ.get("RAY_ADDRESS") or None
    if explicit in ("auto", "local"):
        explicit = None
    if explicit is not None:
        if answers(explicit):
            return Target(explicit)
        source = "" if address else " (from RAY_ADDRESS; unset it to use the embedded cluster)"
        raise ClusterError(f"no Ray cluster answers at {explicit}{source}; start one with "
                           "`grid cluster start`", address=explicit)
    found = _running_here()
    if found is not None:
        return Target(found)
    if not start_if_missing:
        raise ClusterError("no Ray cluster is running; start one with `grid cluster start`")
    with hosted.one_start_at_a_time():
        found = _running_here()  # another command may have started one while this one waited
        if found is not None:
            return Target(found)
        from distributed_grid.cluster import starting  # 15 ms of imports: only to start one

        started = starting.start_local()
    print(f"distributed_grid: no Ray cluster was running; started a local one at {started} "
          "(stop it with `grid cluster stop`)", file=sys.stderr)
    return Target(started)


def _running_here() -> str | None:
    """The address of the one cluster grid started on this host, else of the one Ray recorded
    as current; None when neither answers.

    Raises:
        ClusterError: several clusters started by grid run here.
    """
    clusters = hosted.clusters_here()
    if len(clusters) > 1:
        raise ClusterError(
            f"{len(clusters)} clusters started by grid run on this host, and the command names "
            f"none: {hosted.listing(clusters)}; name one with --address HOST:PORT or "
            "RAY_ADDRESS=HOST:PORT", addresses=[c.address for c in clusters])
    found = clusters[0].address if clusters else recorded_address()
    return found if found is not None and answers(found) else None
