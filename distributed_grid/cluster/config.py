"""The cluster config file: which host is which node.

A YAML file such as::

    nodes:
      - name: head
        host: 10.0.0.1
        role: head
      - name: gpu2
        host: gpu2.example.internal
        role: worker
        memory: 64GiB        # optional cap on the bytes this node's store may hold
        spill_dir: /data/grid-spill   # optional, with spill_quota: where cold blocks go
        spill_quota: 200GiB  #   when memory runs short (taken by `grid cluster start`)
        prefault: 4GiB       # optional: memory kept faulted in for new blocks (likewise)
    replicas: 2              # optional: copies of each new block, each on a node of its own
    spill_high: 0.85         # optional: spill when blocks pass this part of a node's room
    spill_low: 0.70          #   ... down to this part

Node names come from the Ray label ``grid.node`` (:data:`NODE_LABEL`) first; this file names the
nodes that carry no label, by host name or address; else a node is named after its host
(:func:`safe_name`). The active file is the one given with ``--config`` (or
``DistributedMemoryPool(config)``), else ``$DISTRIBUTED_GRID_CONFIG``.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

from distributed_grid.errors import FileError, InvalidArgument

NODE_LABEL = "grid.node"  # the Ray label that names a node
CONFIG_ENV = "DISTRIBUTED_GRID_CONFIG"
CONFIG_MAX_BYTES = 2**20  # a config names nodes: more than this is not one
_ROLES = ("head", "worker")
_NODE_FIELDS = ("name", "host", "role", "memory", "spill_dir", "spill_quota", "prefault")


@dataclass(frozen=True)
class NodeConfig:
    """One node of the config file."""

    name: str
    host: str
    role: str = "worker"
    memory: int | None = None
    spill_dir: str | None = None
    spill_quota: int | None = None
    prefault: int | None = None


@dataclass(frozen=True)
class ClusterConfig:
    """The parsed config file."""

    nodes: tuple[NodeConfig, ...] = field(default_factory=tuple)
    address: str | None = None
    source: str | None = None
    replicas: int = 1
    spill_high: float | None = None
    spill_low: float | None = None

    def node(self, name: str) -> NodeConfig | None:
        return next((n for n in self.nodes if n.name == name), None)


_active: ClusterConfig | None = None


def load_config(path: str | os.PathLike[str]) -> ClusterConfig:
    """Read and check a cluster config file.

    A FIFO (or ``<(cmd)``) is read once its writer wrote, waited on for at most
    ``$DISTRIBUTED_GRID_INPUT_WAIT_SECONDS`` (default 30).

    Raises:
        InvalidArgument: the file is missing, not a regular file or a FIFO, larger than 1 MiB,
            silent past the wait, not YAML, or a field is wrong (the message names the line or
            the field).
    """
    import yaml

    from distributed_grid.memory.io.inputs import read_whole
    from distributed_grid.names import replica_count, validate_node_name
    from distributed_grid.sizes import parse_size


    source = str(path)
    if not source:  # Path("") is the current directory
        raise InvalidArgument("the cluster config's path is empty")
    try:  # a FIFO or <(cmd) is read once a writer wrote, waited on with a bound
        raw = read_whole(path, "cluster config", CONFIG_MAX_BYTES)
    except FileError as exc:
        raise InvalidArgument(str(exc), path=source) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidArgument(f"cluster config {source}: not UTF-8 text ({exc.reason} at byte "
                              f"{exc.start})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise InvalidArgument(
            f"cluster config {source}{where}: not valid YAML ({problem})"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
        raise InvalidArgument(f"cluster config {source}: expected a mapping with a 'nodes' list")
    nodes = []
    for i, raw in enumerate(data["nodes"]):
        where = f"cluster config {source}: nodes[{i}]"
        if not isinstance(raw, dict):
            raise InvalidArgument(f"{where} must be a mapping with name and host")
        unknown = {str(f) for f in raw} - set(_NODE_FIELDS)
        if unknown:
            raise InvalidArgument(
                f"{where} has unknown field(s) {', '.join(sorted(unknown))}; "
                f"allowed: {', '.join(_NODE_FIELDS)}"
            )
        for required in ("name", "host"):
            if not isinstance(raw.get(required), str) or not raw[required]:
                raise InvalidArgument(f"{where}.{required} must be a non-empty string")
        try:
            name = validate_node_name(raw["name"])
        except InvalidArgument as exc:
            raise InvalidArgument(f"{where}.name: {exc}") from exc
        role = raw.get("role", "worker")
        if role not in _ROLES:
            raise InvalidArgument(f"{where}.role must be head or worker, got {role!r}")
        memory = None
        if raw.get("memory") is not None:
            memory = parse_size(raw["memory"], what=f"{where}.memory")
            if memory <= 0:
                raise InvalidArgument(f"{where}.memory must be positive, got {raw['memory']!r}")
        spill_dir, spill_quota = raw.get("spill_dir"), raw.get("spill_quota")
        if (spill_dir is None) != (spill_quota is None):
            raise InvalidArgument(f"{where}: spill_dir and spill_quota go together")
        if spill_dir is not None:
            if not isinstance(spill_dir, str) or not os.path.isabs(spill_dir):
                raise InvalidArgument(f"{where}.spill_dir must be an absolute path, got "
                                      f"{spill_dir!r}")
            spill_quota = parse_size(spill_quota, what=f"{where}.spill_quota")
            if spill_quota <= 0:
                raise InvalidArgument(f"{where}.spill_quota must be positive")
        prefault = None
        if raw.get("prefault") is not None:
            prefault = parse_size(raw["prefault"], what=f"{where}.prefault")
            if prefault < 0:
                raise InvalidArgument(f"{where}.prefault must be 0 or more bytes")
        nodes.append(NodeConfig(name=name, host=raw["host"], role=role, memory=memory,
                                spill_dir=spill_dir, spill_quota=spill_quota,
                                prefault=prefault))
    names = [n.name for n in nodes]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InvalidArgument(f"cluster config {source}: node name(s) used twice: {dupes}")
    address = data.get("address")
    if address is not None and not isinstance(address, str):
        raise InvalidArgument(f"cluster config {source}: address must be HOST:PORT text")
    try:
        replicas = replica_count(data.get("replicas", 1))
    except InvalidArgument as exc:
        raise InvalidArgument(f"cluster config {source}: {exc}") from exc
    marks = {}
    for mark in ("spill_high", "spill_low"):
        value = data.get(mark)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not 0 < value <= 1):
            raise InvalidArgument(f"cluster config {source}: {mark} must be a fraction in "
                                  f"(0, 1], got {value!r}")
        marks[mark] = None if value is None else float(value)
    return ClusterConfig(nodes=tuple(nodes), address=address, source=source,
                         replicas=replicas, **marks)


def use_config(config: ClusterConfig | str | os.PathLike[str] | None) -> ClusterConfig | None:
    """Make ``config`` (a parsed config, a path, or None for the environment's) the active one."""
    global _active
    if config is None:
        path = os.environ.get(CONFIG_ENV)
        _active = load_config(path) if path else None
    elif isinstance(config, ClusterConfig):
        _active = config
    else:
        _active = load_config(config)
    return _active


def active_config() -> ClusterConfig | None:
    """The config in force (loading ``$DISTRIBUTED_GRID_CONFIG`` on first use)."""
    if _active is None and os.environ.get(CONFIG_ENV):
        return use_config(None)
    return _active


def node_name_for_host(hostname: str, address: str) -> str | None:
    """The configured name of the node on ``hostname``/``address``, if the config names it."""
    config = active_config()
    if config is None:
        return None
    for node in config.nodes:
        if node.host in (hostname, address):
            return node.name
    return None


def memory_cap(node: str) -> int | None:
    """The configured cap on a node's block bytes, if any."""
    config = active_config()
    entry = config.node(node) if config is not None else None
    return entry.memory if entry is not None else None


def host_node_name() -> str:
    """The name this host's node gets when nothing else names it: the cluster config's name
    for this host, else the host name made safe for a block id."""
    hostname = socket.gethostname()
    return node_name_for_host(hostname, "127.0.0.1") or safe_name(hostname)


def safe_name(hostname: str) -> str:
    """A host name turned into a valid node name."""
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in hostname).strip("-._")
    return (cleaned or "node")[:64]
