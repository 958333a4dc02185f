"""Replicated blocks kept whole: the head's repairs, and a node's mending of a new copy.

Every ``TICK_SECONDS`` the head's store (which keeps the key directory) runs a round of
:class:`Repairs` on a thread of its own:

1. Every copy whose node's life (its Ray node id, recorded with the copy) is not alive any more
   leaves the directory: its node died, or came back under its name as a new life whose memory
   is not the copy's. Reads and writes stop going there at once.
2. Every replicated block with fewer live copies than it should have gets a new one, those with
   the fewest copies first: on an alive node holding none of its copies, with room (the node
   with the most, the head last; a node a repair just failed on is left out for
   ``SHUN_SECONDS``: it may be dying, before Ray says so). The new copy is allocated there and
   listed as being made (``making``): from then on every write of the block goes to it too,
   but no read. The block's epoch goes up, and every live copy learns it, so a writer that
   knew the old set of copies is refused and asks again (it would have missed the new one).
   Then the new copy's node mends it (:func:`mend`) and the directory lists it as live.

:func:`mend` runs in the store of the node getting the new copy: it pulls the bytes of a live
copy through that copy's store, in chunks, at most ``DISTRIBUTED_GRID_REPAIR_RATE`` bytes a
second (default 256 MiB/s), so foreground work goes on, with the source copy's keys; and it
does so again until no write (nor removal of a key) of the source ran while it copied. Writes
that start after that reach the new copy themselves.

A node's own upkeep frees the copies it holds that the directory no longer lists (dropped after
a failed write, or from a life of the node that ended), once they are a minute old (a copy just
allocated is listed a moment later: ``upkeep.SWEEP_AGE``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Any

from distributed_grid.errors import BlockNotFound, WriteInProgress
from distributed_grid.memory.io import sources
from distributed_grid.memory.node.local_node import LocalNode
from distributed_grid.memory.node.service.directory import KeyDirectory, Replicas
from distributed_grid.memory.node.service.upkeep import TICK_SECONDS, ClusterLinks
from distributed_grid.records import NodeStats
from distributed_grid.sizes import parse_size
from distributed_grid.wire import BULK_TIMEOUT, METADATA_TIMEOUT, READ_WAIT_SECONDS

log = logging.getLogger(__name__)

REPAIR_RATE_ENV = "DISTRIBUTED_GRID_REPAIR_RATE"
DEFAULT_RATE = 256 * 2**20  # bytes a second a repair copies at most
MEND_CHUNK = 8 * 2**20  # bytes a chunk of a mend carries
MEND_IN_FLIGHT = 2
MEND_TRIES = 30  # passes of a mend before it gives up (a block written without pause)
SHUN_SECONDS = 30.0  # a node a repair failed on takes no new copy for this long


def repair_rate() -> float:
    """The bytes a second repairs copy at most (``DISTRIBUTED_GRID_REPAIR_RATE``, e.g.
    ``100MB``; default 256 MiB)."""
    raw = os.environ.get(REPAIR_RATE_ENV, "").strip()
    return float(parse_size(raw, REPAIR_RATE_ENV)) if raw else float(DEFAULT_RATE)


def mend(store: LocalNode, links: ClusterLinks, number: int, replica_of: str, source: str,
         source_number: int, rate: float) -> int:
    """Make block ``number`` (a copy of ``replica_of`` being made) hold what copy
    ``source_number`` of node ``source`` holds: its bytes up to its high-water mark, then its
    keys; again until no write of the source started or ended meanwhile. Returns the bytes
    copied in the last pass.

    Raises:
        BlockNotFound: the block is not a copy of ``replica_of``.
        WriteInProgress: the source was written during every pass.
    """
    block = store.bare_info(number)
    if block.replica_of != replica_of:
        raise BlockNotFound(f"{block.block_id} is not a copy of {replica_of}",
                            block_id=block.block_id, node=block.node)
    wait = READ_WAIT_SECONDS + METADATA_TIMEOUT
    for _ in range(MEND_TRIES):
        seq = links.call(source, "read_begin", source_number, 0, block.size, timeout=wait)
        rows = links.call(source, "copy_rows", source_number)
        length = min(rows.high_water, block.size)
        _pull(store, links, block.number, source, source_number, length, rate)
        store.adopt_rows(number, replica_of, rows)
        if links.call(source, "read_end", source_number, seq):
            return length
    raise WriteInProgress(f"copy {source_number} of {replica_of} on {source} was written "
                          f"during each of {MEND_TRIES} passes of its mending",
                          block_id=replica_of)


def _pull(store: LocalNode, links: ClusterLinks, number: int, source: str,
          source_number: int, length: int, rate: float) -> None:
    """Copy ``length`` bytes of the source copy into block ``number``, chunk by chunk, a few
    in flight, no faster than ``rate`` bytes a second."""
    block = store.bare_info(number)
    started = time.monotonic()
    pending: deque[tuple[Any, int, int]] = deque()
    pos = 0
    done = 0
    while pos < length or pending:
        while pos < length and len(pending) < MEND_IN_FLIGHT:
            n = min(MEND_CHUNK, length - pos)
            pending.append((links.submit(source, "read_chunk", source_number, pos, n), pos, n))
            pos += n
        call, at, n = pending.popleft()
        chunk = links.fetch(call)
        store.fill(block, at, n, sources.BufferSource(memoryview(chunk).cast("B")))
        del chunk
        done += n
        ahead = done / rate - (time.monotonic() - started)
        if ahead > 0:
            time.sleep(ahead)


class Repairs:
    """The repairs of the cluster's replicated blocks, run by the head's store.

    Args:
        directory: the key directory (the head's).
        links: the cluster, as the head's store reaches it.
        rate: the bytes a second a repair copies at most (None: :func:`repair_rate`).
    """

    def __init__(self, directory: KeyDirectory, links: ClusterLinks,
                 rate: float | None = None) -> None:
        self.directory = directory
        self.links = links
        self.rate = repair_rate() if rate is None else rate
        self._lock = threading.Lock()
        self._shunned: dict[str, float] = {}  # node -> until when it takes no new copy

    def run(self) -> dict[str, list[str]]:
        """One round (see the module's docstring); returns the copies dropped, the blocks
        repaired, and those still waiting (no node with room, or a repair that failed)."""
        with self._lock:
            alive = self.links.alive_lives()
            dropped = [f"{b} on {n}" for b, n in self.directory.drop_copies_of_lives(alive)]
            now = time.monotonic()
            nodes = {s.node: s for s in self.directory.node_sizes()
                     if s.node_id in alive and self._shunned.get(s.node, 0) <= now}
            short = sorted((r for r in self.directory.all_replicated()
                            if r.making is None and r.copies and len(r.copies) < r.wanted),
                           key=lambda r: (len(r.copies), r.block_id))
            repaired, waiting = [], []
            for r in short:
                target = _target(r, nodes)
                if target is None:
                    waiting.append(r.block_id)
                    continue
                try:
                    self.repair(r, target, nodes[target].node_id or None)
                except Exception as exc:  # tried again next round, elsewhere for a while
                    log.warning("repair of %s on %s failed: %s", r.block_id, target, exc)
                    self._shunned[target] = time.monotonic() + SHUN_SECONDS
                    del nodes[target]  # (a node Ray has not declared dead yet, say)
                    waiting.append(r.block_id)
                    continue
                nodes[target] = _less(nodes[target], r.size)
                repaired.append(f"{r.block_id} on {target}")
            return {"dropped": dropped, "repaired": repaired, "waiting": waiting}

    def repair(self, r: Replicas, target: str, node_id: str | None) -> None:
        """Give the block a new copy on ``target`` (see the module's docstring)."""
        links, block_id = self.links, r.block_id
        info = links.call(target, "allocate", r.size, None, None, None, None, block_id,
                          timeout=METADATA_TIMEOUT + r.size / 2**28)
        epoch = self.directory.begin_copy(block_id, target, info.number, node_id)
        source, source_number = r.copies[0]
        try:
            if epoch is None:
                raise RuntimeError(f"{block_id} changed while its new copy was made")
            for node, number in r.copies:
                links.call(node, "set_epoch", number, block_id, epoch)
            links.call(target, "mend", info.number, block_id, source, source_number,
                       self.rate, timeout=BULK_TIMEOUT + 2 * r.size / self.rate)
            if not self.directory.end_copy(block_id, target):
                raise RuntimeError(f"the new copy of {block_id} on {target} was dropped while "
                                   "it was made")
        except BaseException as exc:
            self.directory.drop_copy(block_id, target, info.number)
            if isinstance(exc, BlockNotFound) and getattr(exc, "node", None) == source:
                self.directory.drop_copy(block_id, source, source_number)  # it lost the block
            try:
                links.call(target, "deallocate", info.number, block_id)
            except Exception:
                pass  # its node's sweep frees it
            raise

    def forever(self, tick_seconds: float = TICK_SECONDS) -> None:
        """Run rounds every ``tick_seconds``, for the life of the head's store."""
        while True:
            time.sleep(tick_seconds)
            try:
                self.run()
            except Exception:  # keep going: the next round may succeed
                log.exception("repairs of replicated blocks failed")


def _target(r: Replicas, nodes: dict[str, NodeStats]) -> str | None:
    """The node for a new copy of ``r``: alive, holding none of its copies, with room for it;
    the one with the most room, the head last."""
    holding = {n for n, _ in r.written}
    fits = [s for s in nodes.values() if s.node not in holding and s.free_for_blocks >= r.size]
    if not fits:
        return None
    return min(fits, key=lambda s: (s.is_head, -s.free_for_blocks, s.node)).node


def _less(stats: NodeStats, size: int) -> NodeStats:
    """A node's size after a new block of ``size`` bytes (until it reports again)."""
    from dataclasses import replace

    return replace(stats, free_for_blocks=max(0, stats.free_for_blocks - size),
                   block_bytes=stats.block_bytes + size, blocks=stats.blocks + 1)
