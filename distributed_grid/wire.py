"""What the processes of a cluster agree on: the store protocol, Ray names, and how long to wait.

A node's store actor and every client that reaches it (this host's or another's) run the same
installation of distributed_grid, checked by :data:`STORE_PROTOCOL` at the first call; they find
each other by the names here, in Ray's namespace :data:`NAMESPACE`, and bound every wait by the
timeouts here. Nothing in this module imports more than the standard library.
"""

from __future__ import annotations

# Bumped whenever a store method or a record changes its shape: a client refuses to work with a
# store (or a node record) of another protocol, made by another installation of distributed_grid.
STORE_PROTOCOL = 7

NAMESPACE = "distributed_grid"  # Ray's namespace of the stores, leases and published lists
ACTOR_PREFIX = "store."  # a node's store actor is named store.<node>
LEASE_PREFIX = "lease."  # a pool's lease actor is named lease.<uuid>
REMOTE_WRITER = "ray:"  # a writer on another host: ``ray:<job>:<host/pid/start>``

# How long a caller waits for a store's answer (seconds). A store that is alive but does not
# answer in time (stopped, wedged, overloaded) counts as unreachable for that call: the caller
# gets an error instead of waiting for ever.
METADATA_TIMEOUT = 10.0  # one metadata call: a catalog transaction, answered in milliseconds
START_TIMEOUT = 120.0  # a store or lease actor being started: a new worker process on its node
BULK_TIMEOUT = 60.0  # one chunk of bytes (64 MiB), or freeing blocks in bulk
ALLOCATE_RATE = 256 * 2**20  # bytes/s an allocation is allowed on top (reserving the pages)
READ_WAIT_SECONDS = 30.0  # the longest a read waits for a live writer of its bytes
# A call that may move blocks between memory and disk (on a node with a spill folder: an
# allocation that spills cold blocks first, an access that restores one) waits this long.
MOVE_TIMEOUT = 300.0

# The spill settings of the nodes ``grid cluster start`` starts, in the environment of their Ray
# processes: JSON ``{"<node>" or "*": {"dir": ..., "quota": bytes, "high": f, "low": f}}``,
# ``{node}`` in a folder standing for the node's name. Each node's store writes its own in its
# catalog when it starts.
SPILL_ENV = "DISTRIBUTED_GRID_SPILL"
# The prefault of the nodes ``grid cluster start --prefault`` starts: JSON ``{"<node>" or "*":
# bytes}``, the bytes of spares each node keeps faulted in for new blocks.
PREFAULT_ENV = "DISTRIBUTED_GRID_PREFAULT"


def store_actor_name(node: str) -> str:
    """The Ray name of ``node``'s store actor."""
    return ACTOR_PREFIX + node


def snapshot_key(node: str) -> str:
    """The key of a node's last published block list in Ray's key-value store."""
    return f"blocks.{node}"
