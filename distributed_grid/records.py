"""What crosses a boundary, as types a reader can see: block facts, key places, node stats.

Every record is a frozen dataclass; ``to_json()`` is what ``--json`` prints, and its shape is
the CLI's stable output. Records pickle (they cross the actor boundary) and hold plain data only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from distributed_grid.wire import REMOTE_WRITER

Extent = tuple[int, int]  # (offset in the block, length)



@dataclass(frozen=True)
class PendingWrite:
    """A write in flight: the bytes ``offset..offset+length`` of a block, claimed for ``key``
    by ``writer``: a process of the block's host (``host/pid/start``) or a client that writes
    through the node's store (``ray:<job>:<host/pid/start>``)."""

    key: str
    offset: int
    length: int
    writer: str | None

    @property
    def owner(self) -> str:
        """The writer as a person reads it: ``pid 4242 on host`` (and ``, Ray job 01000000``
        for a client that writes through the node's store)."""
        if not self.writer:
            return "unknown"
        identity, job = self.writer, None
        if identity.startswith(REMOTE_WRITER):
            job, _, identity = identity[len(REMOTE_WRITER):].partition(":")
        host, _, rest = identity.partition("/")
        pid = rest.partition("/")[0]
        text = f"pid {pid} on {host}" if pid.isdigit() else identity
        return text if job is None else f"{text}, Ray job {job}"


@dataclass(frozen=True)
class BlockInfo:
    """The facts of one block.

    ``keys`` maps each key with complete bytes in the block to its extents in the key's order;
    ``pending_keys`` are keys being written, and ``pending`` those writes one by one (their
    ranges and writers). A call about one key (``write``, ``find_key``'s ``block``, a
    ``StoreResult``'s ``block``) lists that key alone, so its cost does not grow with the keys
    of the block; ``block_info`` and ``list_blocks`` list them all. ``used`` is the high-water
    mark: the end of the block's furthest completed write. ``status`` is ``ok``, ``missing``
    (its shared memory vanished from the host), ``lost`` (its node left the cluster) or
    ``unreachable`` (in a listing: its node's store does not answer, as when the node is dying
    and Ray has not declared it dead yet; the facts are the ones it last published).
    ``slab``: the store made the block for small values, which it places itself;
    ``for_key``: the key the block was allocated for (freed with it; rewritten into a new
    block, copy-on-write).

    ``state`` is where its bytes are: ``memory``, ``spilled`` (in a file of its node's spill
    folder, brought back on access), ``spilling`` or ``restoring`` (moving between the two).
    ``paged``: how many of its first bytes had their pages in when it was made (it took a spare
    of its node's prefault), so a first write maps them instead of faulting them in.

    ``replicas`` are the nodes holding a copy of the block, the one reads prefer first (one
    node for a block of one copy). A replicated block's facts are those of one of its copies
    (``node`` and ``number`` name that copy; ``replica_of`` is the replicated block's id, which
    is ``block_id``), and its ``status`` is ``ok`` (every copy it should have), ``degraded``
    (fewer: a node holding one is gone) or ``repairing`` (a new copy is being made).
    """

    block_id: str
    node: str
    number: int
    size: int
    used: int
    created: float
    status: str
    segment: str
    token: str
    keys: dict[str, list[Extent]]
    pending_keys: list[str]
    persistent: bool
    pending: list[PendingWrite] = field(default_factory=list)
    slab: bool = False
    replica_of: str | None = None
    replicas: list[str] = field(default_factory=list)
    for_key: str | None = None
    state: str = "memory"
    paged: int = 0

    def to_json(self) -> dict[str, Any]:
        """The block as plain data (what ``list-objects --json`` prints for it); ``pending``
        is a list of ``{"key", "offset", "length", "writer"}``. The segment's name and token
        are how this host reaches the block's memory, and ``paged`` how fast its first write
        goes, not facts of the block: left out."""
        data = asdict(self)
        del data["segment"], data["token"], data["paged"]
        data["keys"] = {k: [list(e) for e in ext] for k, ext in self.keys.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BlockInfo:
        """The inverse of :meth:`to_json` (a block known this way is not reachable: its
        segment and token are empty)."""
        keys = {k: [(int(o), int(n)) for o, n in ext] for k, ext in data["keys"].items()}
        pending = [PendingWrite(**p) for p in data.get("pending", [])]
        return cls(**{"segment": "", "token": "", **data, "keys": keys, "pending": pending})

    def with_status(self, status: str) -> BlockInfo:
        """The same block with another status (``lost`` for a node that is gone)."""
        return replace(self, status=status)


@dataclass(frozen=True)
class KeyPlace:
    """Where a key's bytes are: its block, its extents in order, and what they hold.

    ``meta`` describes an array stored with ``put`` (dtype and shape); None for plain bytes.
    ``generation`` (its newest extent's id) grows when the key gets a new extent, as when it
    is deleted and stored again; a rewrite in place keeps it. The same place with the same
    generation has held the key's bytes all along.
    """

    key: str
    block: BlockInfo
    extents: list[Extent]
    meta: dict[str, Any] | None
    generation: int = 0

    @property
    def block_id(self) -> str:
        """The id of the key's block."""
        return self.block.block_id

    @property
    def length(self) -> int:
        """The key's byte count (its extents one after another)."""
        return sum(n for _, n in self.extents)


@dataclass(frozen=True)
class NodeInfo:
    """A node of the cluster as distributed_grid names it."""

    name: str
    node_id: str
    address: str
    hostname: str
    is_head: bool
    alive: bool


@dataclass(frozen=True)
class NodeStats:
    """A node's shared memory and blocks, as its store sees them.

    ``free_for_blocks`` is the most bytes a new block may have: the least of /dev/shm's free
    bytes (less ``shm_reserve``, kept for the catalogs), the host's ``MemAvailable`` (less
    ``mem_reserve``), the room under the process's cgroup limit (``cgroup_free``, less its
    reserve) and the node's ``capacity``; ``limited_by`` names the one that sets it (``shm``,
    ``memory``, ``cgroup`` or ``capacity``). See :mod:`distributed_grid.memory.shm.capacity`.

    A node with a spill folder (``spill_dir``, None without) keeps up to ``spill_quota`` bytes
    of blocks there: ``spilled_blocks`` and ``spilled_bytes`` (counted by block size).
    ``pinned_blocks`` and ``pinned_bytes`` are the blocks a live process holds views of, which
    are never spilled (counted only by ``cluster status``: 0 elsewhere).

    A node started with a prefault (``prefault_target`` bytes, 0 without) keeps ``prefault``
    bytes of memory allocated and faulted in for new blocks (its spares): used memory of the
    host, counted in ``free_for_blocks`` since a new block takes it.
    """

    node: str
    shm_total: int
    shm_free: int
    capacity: int | None
    free_for_blocks: int
    blocks: int
    block_bytes: int
    node_id: str = ""
    address: str = ""
    hostname: str = ""
    is_head: bool = False
    shm_reserve: int = 0
    mem_available: int | None = None
    mem_reserve: int = 0
    cgroup_free: int | None = None
    cgroup_reserve: int = 0
    limited_by: str = "shm"
    spill_dir: str | None = None
    spill_quota: int = 0
    spilled_blocks: int = 0
    spilled_bytes: int = 0
    pinned_blocks: int = 0
    pinned_bytes: int = 0
    prefault: int = 0
    prefault_target: int = 0

    @property
    def spill_room(self) -> int:
        """The most bytes spilling could free for a new block: the blocks in memory, as far
        as the spill folder's quota takes them (0 without a spill folder)."""
        if not self.spill_dir:
            return 0
        return min(self.block_bytes, max(0, self.spill_quota - self.spilled_bytes))

    def to_json(self) -> dict[str, Any]:
        """The node as plain data (what ``cluster status --json`` prints for it)."""
        return asdict(self)


@dataclass(frozen=True)
class StoreResult:
    """Where a store (``store_file``, ``write``, ``put``) put its bytes."""

    block: BlockInfo
    key: str | None
    offset: int
    length: int
    allocated: bool

    @property
    def block_id(self) -> str:
        """The id of the block written."""
        return self.block.block_id

    def to_json(self) -> dict[str, Any]:
        """The block's facts plus key, offset, length and whether it was allocated."""
        return {**self.block.to_json(), "key": self.key, "offset": self.offset,
                "length": self.length, "allocated": self.allocated}


@dataclass(frozen=True)
class KeyRemoval:
    """What ``delete`` removed: a key's extents in its block, and the block itself when it
    was allocated for the key and no other key lives in it (``block_freed``)."""

    key: str
    block_id: str
    node: str
    bytes: int
    extents: list[Extent]
    block_freed: bool

    def to_json(self) -> dict[str, Any]:
        """The removal as plain data (what ``grid memory delete --json`` prints)."""
        data = asdict(self)
        data["extents"] = [list(e) for e in self.extents]
        return data


@dataclass(frozen=True)
class RetrieveResult:
    """What ``retrieve_to_file`` wrote."""

    target: str
    path: str
    bytes: int
    offset: int
    blocks: list[str]

    def to_json(self) -> dict[str, Any]:
        """The result as plain data (what ``grid memory retrieve --output FILE --json``
        prints): ``source`` (the block or key), ``output`` (the file), ``bytes``, ``offset``."""
        return {"source": self.target, "output": self.path, "bytes": self.bytes,
                "offset": self.offset}


@dataclass(frozen=True)
class ClusterStatus:
    """The cluster as ``grid cluster status`` shows it: its address, its identity and each
    alive node's shared memory and blocks."""

    address: str
    cluster_id: str
    nodes: list[NodeStats]

    def to_json(self) -> dict[str, Any]:
        """The status as plain data (what ``cluster status --json`` prints)."""
        return {"address": self.address, "cluster_id": self.cluster_id,
                "nodes": [n.to_json() for n in self.nodes]}


@dataclass(frozen=True)
class Piece:
    """A run of bytes of one block, part of what a read returns.

    For a piece of a key, ``generation`` is the key's (see :class:`KeyPlace`), and ``version``
    the version of its node's catalog on this host (as this process's connection counts them)
    taken before the key's place was read: a read that ends with the catalog at that version
    read the key's bytes (None: unknown, or another host's node).
    """

    block: BlockInfo
    offset: int
    length: int
    version: int | None = None
    generation: int = 0
