"""Where a new block goes when the caller names no node: a pure ranking of the nodes' sizes.

The nodes' sizes are those they last reported to the key directory (one query for any number of
nodes). Nodes of one host share its memory, but each reported it at its own moment: they are
ranked by one figure for the host, the least any of them saw (a node bounded by its own
capacity keeps that bound), and by the cap a cluster config puts on a node's block bytes. Free
memory is compared in 64 MiB steps, then the node holding fewer block bytes is preferred, then
the name decides. A node with a spill folder counts what spilling its blocks could free too.
Nothing here calls a node: :class:`~distributed_grid.memory.client.
allocation.Allocator` asks the nodes and tries the best one.
"""

from __future__ import annotations

from collections.abc import Mapping

from distributed_grid.records import NodeStats

STEP_BITS = 26  # free memory is compared in steps of 2**26 bytes (64 MiB)


def host_rooms(sizes: Mapping[str, NodeStats], host_of: Mapping[str, str]) -> dict[str, int]:
    """Per host, the least room for blocks any of its nodes reported (nodes bounded by their
    own capacity left out)."""
    shared: dict[str, int] = {}
    for s in sizes.values():
        if s.limited_by != "capacity":
            host = host_of[s.node]
            shared[host] = min(shared.get(host, s.free_for_blocks), s.free_for_blocks)
    return shared


def room(name: str, sizes: Mapping[str, NodeStats], shared: Mapping[str, int],
         host_of: Mapping[str, str], caps: Mapping[str, int | None]) -> int:
    """The most bytes a new block on node ``name`` may have, by what it and its host reported
    and by its cap (``caps[name]``, None: none)."""
    own = sizes[name].free_for_blocks + sizes[name].spill_room
    free = min(own, shared.get(host_of[name], own) + sizes[name].spill_room)
    cap = caps.get(name)
    return free if cap is None else min(free, max(0, cap - sizes[name].block_bytes))


def best(sizes: Mapping[str, NodeStats], shared: Mapping[str, int],
         host_of: Mapping[str, str], caps: Mapping[str, int | None]) -> str:
    """The node a new block should go to: the most room (in 64 MiB steps), then the fewest
    block bytes, then the first name."""
    return min(sizes, key=lambda n: (-(room(n, sizes, shared, host_of, caps) >> STEP_BITS),
                                     sizes[n].block_bytes, n))


def spread(sizes: Mapping[str, NodeStats], shared: Mapping[str, int],
           host_of: Mapping[str, str], caps: Mapping[str, int | None], size: int,
           first: str | None = None) -> list[str]:
    """The nodes that may take a copy of a replicated block of ``size`` bytes, in the order to
    try them: ``first`` (the node named for the first copy) when given, then by :func:`best`'s
    ranking, each next node on a host no node before it is on while such nodes remain (copies
    on distinct hosts outlive a host), then the rest. Nodes without room are left out."""
    def rank(n: str) -> tuple[int, int, str]:
        return (-(room(n, sizes, shared, host_of, caps) >> STEP_BITS), sizes[n].block_bytes, n)

    fits = sorted((n for n in sizes if room(n, sizes, shared, host_of, caps) >= size),
                  key=rank)
    order = [first] if first is not None else []
    hosts = {host_of[first]} if first is not None else set()
    for n in fits:
        if n not in order and host_of[n] not in hosts:
            order.append(n)
            hosts.add(host_of[n])
    return order + [n for n in fits if n not in order]
