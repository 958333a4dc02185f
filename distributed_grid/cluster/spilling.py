"""The spill folders and prefault of the nodes ``grid cluster start`` starts: what they are told,
and what is removed when the cluster stops.

``grid cluster start --spill-dir DIR --spill-quota SIZE`` (or a node's ``spill_dir`` and
``spill_quota`` in the cluster config) puts the nodes' spill settings in the environment of the
Ray processes it starts (:data:`~distributed_grid.wire.SPILL_ENV`); each node's store takes its
own when it starts
(:func:`~distributed_grid.memory.node.room.spill_policy.settings_from_env`). A cluster of this
host (``--nodes``) gives each node a folder of its own, ``DIR/<node>``; a node started
alone (a head, or ``--address ... --name``) takes ``DIR`` itself. When the cluster stops, every
spill file of it goes, and the per-node folders it made (``DIR`` stays, empty).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from distributed_grid.cluster.config import ClusterConfig, active_config
from distributed_grid.errors import InvalidArgument
from distributed_grid.memory.io.spill_files import cluster_files
from distributed_grid.memory.node.room.spares import check_prefault
from distributed_grid.memory.node.room.spill_policy import DEFAULT_HIGH, DEFAULT_LOW, check_settings
from distributed_grid.wire import PREFAULT_ENV, SPILL_ENV


def spill_table(spill_dir: str | None, spill_quota: int | None, high: float | None,
                low: float | None, per_node: bool,
                config: ClusterConfig | None = None) -> dict[str, dict]:
    """The nodes' spill settings as :data:`SPILL_ENV` holds them (``{}``: no spill folder).

    Args:
        spill_dir, spill_quota: the command line's folder and quota, for every node.
        high, low: the watermarks (None: the config's, else 0.85 and 0.70).
        per_node: each node gets ``<spill_dir>/<node>`` (a cluster of several nodes).
        config: the cluster config whose nodes' ``spill_dir`` and ``spill_quota`` apply where
            the command line gives none (None: the active one).

    Raises:
        InvalidArgument: a folder without a quota (or the reverse), a relative folder, a quota
            below 1 byte, or watermarks not ``0 < low <= high <= 1``.
    """
    if (spill_dir is None) != (spill_quota is None):
        raise InvalidArgument("--spill-dir and --spill-quota go together: where blocks spill "
                              "to, and how many bytes of blocks that folder may hold")
    config = config if config is not None else active_config()
    high = high if high is not None else (config and config.spill_high) or DEFAULT_HIGH
    low = low if low is not None else (config and config.spill_low) or DEFAULT_LOW
    table: dict[str, dict] = {}
    for node in (config.nodes if config is not None else ()):
        if node.spill_dir is not None and node.spill_quota is not None:
            check_settings(node.spill_dir, node.spill_quota, high, low)
            table[node.name] = {"dir": node.spill_dir, "quota": node.spill_quota,
                                "high": high, "low": low}
    if spill_dir is not None and spill_quota is not None:
        folder = os.path.abspath(os.path.expanduser(spill_dir))
        check_settings(folder, spill_quota, high, low)
        table["*"] = {"dir": os.path.join(folder, "{node}") if per_node else folder,
                      "quota": spill_quota, "high": high, "low": low}
    return table


def prefault_table(prefault: int | None,
                   config: ClusterConfig | None = None) -> dict[str, int]:
    """The nodes' prefault as :data:`PREFAULT_ENV` holds them (``{}``: none): ``prefault``
    for every node, else the config's (None: the active one) ``prefault`` of each node.

    Raises:
        InvalidArgument: a prefault below 0 bytes.
    """
    config = config if config is not None else active_config()
    table = {node.name: check_prefault(node.prefault)
             for node in (config.nodes if config is not None else ()) if node.prefault}
    if prefault is not None:
        table["*"] = check_prefault(prefault)
    return table


@contextmanager
def node_environment(spills: dict[str, dict], prefault: dict[str, int]) -> Iterator[None]:
    """The nodes' spill settings and prefault in this process's environment
    (:data:`SPILL_ENV`, :data:`PREFAULT_ENV`), which the processes started here inherit, while
    the block runs; none inherited from the caller's otherwise."""
    tables = {SPILL_ENV: spills, PREFAULT_ENV: prefault}
    saved = {name: os.environ.pop(name, None) for name in tables}
    for name, table in tables.items():
        if table:
            os.environ[name] = json.dumps(table)
    try:
        yield
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value


def remove_spill_files(cluster_id: str, nodes: list[str], text: str | None = None) -> list[str]:
    """Delete every spill file of cluster ``cluster_id`` from the folders ``text`` (the
    :data:`SPILL_ENV` the cluster was started with; None: this process's) gives ``nodes``, and
    the per-node folders left empty. Returns the files deleted."""
    text = os.environ.get(SPILL_ENV) if text is None else text
    try:
        table = json.loads(text) if text else {}
    except ValueError:
        return []
    removed = []
    for node in nodes:
        entry = table.get(node, table.get("*"))
        if not isinstance(entry, dict) or not isinstance(entry.get("dir"), str):
            continue
        folder = entry["dir"].replace("{node}", node)
        for name in cluster_files(folder, cluster_id):
            try:
                os.unlink(os.path.join(folder, name))
                removed.append(name)
            except FileNotFoundError:
                pass
        if "{node}" in entry["dir"]:
            try:
                os.rmdir(folder)  # made for this node: it goes when empty
            except OSError:
                pass
    return removed
