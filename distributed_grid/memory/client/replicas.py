"""A replicated block: one block id whose bytes live in copies on distinct nodes, kept alike.

Each copy is a block of its own node (its catalog names the replicated block in
``replica_of``); the key directory lists the copies (:class:`~distributed_grid.memory.node.
directory.Replicas`), and the id users hold is the first copy's, valid while any copy lives.
:class:`ReplicaSet` keeps the :class:`~distributed_grid.memory.client.nodes.Node` protocol over
the copies, so the pool's writer and reader work on a replicated block as on any other:

- **writes** go to every copy at once: each copy's catalog claims the range (``prepare``), the
  bytes are copied into all of them on threads of their own, then every catalog commits. A
  refusal (a key conflict, a range out of bounds) is the same on every copy: the others are
  undone and it is raised. A copy whose node is gone, or which lost the block, is dropped from
  the block's set in the directory (the block is then ``degraded`` until repaired), and the
  write succeeds while one copy holds it; with none left it fails.
- **reads** take a copy on this host first (zero-copy), then the others in the directory's
  order, and fail over inside the same call: a read whose serving node dies mid-transfer starts
  again on the next copy (a sink that can go back is rewound; one that cannot gets the bytes
  only once whole). A view of a replicated block is read-only: bytes written through it would
  reach one copy only.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator
from dataclasses import replace
from typing import Any

from distributed_grid.errors import (
    BlockNotFound,
    GridError,
    NodeUnavailable,
    NotFound,
)
from distributed_grid.memory.client.nodes import Directory, Node, NodeStore
from distributed_grid.memory.client.replica_writes import COPY_FAILED, WritesToEveryCopy
from distributed_grid.memory.io import copies, sinks
from distributed_grid.memory.node.service.directory import Copy, Replicas
from distributed_grid.records import BlockInfo, KeyPlace, KeyRemoval, NodeStats


class ReplicaSet(WritesToEveryCopy):
    """A replicated block's copies, reached as one node.

    Args:
        node_of: the node of a name, as the pool reaches it (raises ``NodeUnavailable`` or
            ``NotFound`` for a node that is gone).
        directory: the key directory.
        here: the names of the nodes of this host.
        replicas: the block as the directory lists it.
    """

    def __init__(self, node_of: Callable[[str], Node], directory: Directory,
                 here: Container[str], replicas: Replicas) -> None:
        self.node_of = node_of
        self.directory = directory
        self.here = here
        self.block_id = replicas.block_id
        self._listed = [n for n, _ in replicas.copies]
        self.learn(replicas)
        self._write = None  # the write this process prepared

    def learn(self, replicas: Replicas) -> None:
        """Take the block's copies as the directory lists them: reads take the live ones,
        those of this host first; writes go to those and to a copy being made."""
        self.replicas = replicas
        here = [c for c in replicas.copies if c[0] in self.here]
        self.copies: list[Copy] = here + [c for c in replicas.copies if c not in here]
        self.is_local = bool(here)
        self.node = self.copies[0][0] if self.copies else replicas.block_id.rsplit("_", 1)[1]

    # -- the copies ---------------------------------------------------------------------------

    def _live(self, first: Copy | None = None,
              writing: bool = False) -> Iterator[tuple[Copy, Node]]:
        """The copies whose node this process reaches (``first`` first): the live ones, and
        when ``writing`` a copy being made too."""
        listed = self.copies + ([self.replicas.making] if writing and self.replicas.making
                                else [])
        order = listed if first not in listed else [first] + [c for c in listed if c != first]
        for copy in order:
            try:
                yield copy, self.node_of(copy[0])
            except (NodeUnavailable, NotFound):
                continue

    def each(self, method: Callable[..., Any], args: Callable[[int], tuple],
              among: list[tuple[Copy, Node]] | None = None
              ) -> list[tuple[Copy, Node, Any]]:
        """``method(*args(number))`` of every copy's store at once; each result or the error
        it raised, in the copies' order (calls to other hosts leave first)."""
        targets = list(self._live(writing=True)) if among is None else among
        waits: dict[int, Callable[[], Any]] = {}
        results: dict[int, Any] = {}
        for i in sorted(range(len(targets)), key=lambda i: targets[i][1].is_local):
            copy, node = targets[i]
            try:
                waits[i] = node.start(method, *args(copy[1]))
            except Exception as exc:  # a node of this host runs the call at once
                results[i] = exc
        for i, wait in waits.items():
            try:
                results[i] = wait()
            except Exception as exc:
                results[i] = exc
        return [(targets[i][0], targets[i][1], results[i]) for i in range(len(targets))]

    def drop(self, copy: Copy) -> None:
        """Take a copy that failed out of the block's set (it is repaired elsewhere)."""
        try:
            self.directory.drop_copy(self.block_id, copy[0], copy[1])
        except GridError:
            pass  # the directory's own node is gone: nothing more can be recorded
        if copy in self.copies:
            self.copies.remove(copy)
        self.replicas = self.replicas._replace(
            copies=[c for c in self.replicas.copies if c != copy],
            making=None if self.replicas.making == copy else self.replicas.making)

    def lost(self, cause: BaseException | None = None) -> GridError:
        """The error of a block no copy of which answers."""
        names = ", ".join(self._listed) or "none left"
        if self.directory.replicas(self.block_id) is None:
            return BlockNotFound(f"no block {self.block_id}", block_id=self.block_id)
        return NodeUnavailable(
            f"block {self.block_id} is lost: no node holding a copy of it answers ({names})"
            + (f": {cause}" if cause is not None else ""), block_id=self.block_id)

    def _ours(self, info: BlockInfo) -> BlockInfo:
        """``info`` if it is of a copy of this block (a node that came back may have given the
        copy's number to another block before the copy left the directory).

        Raises:
            BlockNotFound: it is not.
        """
        if info.replica_of != self.block_id:
            raise BlockNotFound(f"{info.block_id} is not a copy of {self.block_id}",
                                block_id=info.block_id, node=info.node)
        return info

    def as_replicated(self, info: BlockInfo) -> BlockInfo:
        """A copy's facts as the replicated block's (its id, its copies, its state)."""
        status = self.replicas.state if info.status == "ok" else info.status
        return replace(info, block_id=self.block_id, replica_of=self.block_id,
                       replicas=[n for n, _ in self.replicas.copies], status=status)

    @staticmethod
    def sorted_results(results: list[tuple[Copy, Node, Any]]
                ) -> tuple[list[tuple[Copy, Node, Any]], list[Copy], list[Exception]]:
        """Results as ``(successes, copies that failed as copies, other errors)``."""
        done = [r for r in results if not isinstance(r[2], Exception)]
        failed = [r[0] for r in results if isinstance(r[2], COPY_FAILED)]
        errors = [r[2] for r in results
                  if isinstance(r[2], Exception) and not isinstance(r[2], COPY_FAILED)]
        return done, failed, errors

    # -- metadata ------------------------------------------------------------------------------

    def block_info(self, number: int) -> BlockInfo:
        last: BaseException | None = None
        for copy, node in self._live():
            try:
                return self.as_replicated(self._ours(node.block_info(copy[1])))
            except COPY_FAILED as exc:
                last = self._failed(copy, exc)
        raise self.lost(last)

    def _failed(self, copy: Copy, exc: BaseException) -> BaseException:
        """Note a copy that failed a read: one whose live node no longer has it (a dead
        writer's new block was freed, or the node came back as a new life) leaves the set, so
        the block is repaired; a node that does not answer is the repairs' to judge."""
        if isinstance(exc, BlockNotFound):
            self.drop(copy)
        return exc

    def deallocate(self, number: int, replica_of: str | None = None) -> BlockInfo:
        """Free every copy, then forget the block in the directory."""
        done, _, errors = self.sorted_results(self.each(NodeStore.deallocate,
                                                  lambda n: (n, self.block_id)))
        if errors and not done:
            raise errors[0]
        self.directory.forget_replicated(self.block_id)
        if not done:
            raise self.lost()
        return self.as_replicated(done[0][2])

    def find_key(self, key: str) -> KeyPlace | None:
        """The key's place in the first copy that has it. A copy without the key says so only
        while it still is a copy of this block; if another copy has the key, the one without
        it missed a write (its writer died between the copies' commits) and leaves the set. A
        place in another block of the copy's node is returned as it is: the key moved there (a
        rewrite, copy-on-write) and the caller follows it."""
        last: BaseException | None = None
        without: list[Copy] = []
        for copy, node in self._live():
            try:
                place = node.find_key(key)
                if place is None and node.copy_of(copy[1]) != self.block_id:
                    raise BlockNotFound(f"no copy of {self.block_id} is block {copy[1]} of "
                                        f"{copy[0]} any more", block_id=self.block_id)
            except COPY_FAILED as exc:
                last = self._failed(copy, exc)
                continue
            if place is None:
                if not node.holds_key(key, copy[1]):  # (a commit of it on its way is not)
                    without.append(copy)
                continue
            if place.block.replica_of != self.block_id:
                return place
            for missed in without:
                self.drop(missed)
            return replace(place, block=self.as_replicated(place.block))
        if without:
            return None
        raise self.lost(last)

    def holds_key(self, key: str, number: int) -> bool:
        return any(r is True for _, _, r in self.each(NodeStore.holds_key,
                                                       lambda n: (key, n)))

    def delete_key(self, key: str) -> KeyRemoval:
        """Remove the key from every copy; a copy that cannot (its node is gone, or a writer
        of the key holds it there alone) is dropped from the block's set."""
        done, _, errors = self.sorted_results(self.each(NodeStore.delete_key,
                                                        lambda n: (key,)))
        if not done:
            raise errors[0] if errors else self.lost()
        self.drop_all_but(done)
        removal = done[0][2]
        if removal.block_freed:
            self.directory.forget_replicated(self.block_id)
        return replace(removal, block_id=self.block_id)

    def drop_all_but(self, done: list[tuple[Copy, Node, Any]]) -> None:
        """Drop the copies that did not do what those of ``done`` did (they differ now)."""
        ok = {c for c, _, _ in done}
        for copy in [c for c in self.replicas.written if c not in ok]:
            self.drop(copy)

    def stats(self, capacity: int | None = None) -> NodeStats:
        return self._a_live_node().stats(capacity)

    def node_status(self, capacity: int | None = None) -> NodeStats:
        return self._a_live_node().node_status(capacity)

    def _a_live_node(self) -> Node:
        for _, node in self._live():
            return node
        raise self.lost()

    def spill(self, number: int, progress: copies.Progress = copies.no_progress) -> BlockInfo:
        """Spill every copy (each on its node); the block's facts as one copy has them."""
        return self._on_every_copy(NodeStore.spill)

    def restore_block(self, number: int,
                      progress: copies.Progress = copies.no_progress) -> BlockInfo:
        """Restore every copy (each on its node)."""
        return self._on_every_copy(NodeStore.restore_block)

    def _on_every_copy(self, method: Callable[..., Any]) -> BlockInfo:
        done, _, errors = self.sorted_results(self.each(method, lambda n: (n,)))
        if errors or not done:
            raise errors[0] if errors else self.lost()
        return self.as_replicated(done[0][2])

    def change_mark(self) -> tuple[int, int] | None:
        """None: a replicated block's key is found again after each read (its copies' catalogs
        change apart)."""
        return None

    def start(self, method: Callable[..., Any], *args: Any) -> Callable[[], Any]:
        result = getattr(self, method.__name__)(*args)
        return lambda: result

    def close(self) -> None:
        """Nothing to release: the copies' nodes are the router's."""

    # -- reads: one copy, failing over ---------------------------------------------------------

    def drain(self, block: BlockInfo, offset: int, length: int, sink: sinks.Sink,
              progress: copies.Progress = copies.no_progress) -> None:
        """Hand the bytes to ``sink`` from the copy ``block`` came from, else the next copy
        that answers; a copy that fails mid-transfer is read again from the next one."""
        if length <= 0:
            return
        if not sink.rewindable:
            spool = sinks.SpoolSink()  # the sink gets the bytes only once whole
            try:
                self.drain(block, offset, length, spool)
                spool.hand_to(sink, progress)
            finally:
                spool.close()
            return
        start = sink.mark()
        shown = _Shown(progress)
        last: BaseException | None = None
        for (name, n), node in self._live(first=(block.node, block.number)):
            try:
                info = block if (name, n) == (block.node, block.number) else \
                    self._ours(node.block_info(n))
                shown.attempt()
                node.drain(info, offset, length, sink, shown)
                return
            except COPY_FAILED as exc:
                last = self._failed((name, n), exc)
                sink.rewind(start)
        raise self.lost(last)

    def open_block(self, number: int,
                   populate: bool = False) -> tuple[int, memoryview | None]:
        """The block's size and, when a copy is on this host, a read-only view of it."""
        for (_, n), node in self._live():
            if node.is_local:
                try:
                    size, view = node.open_block(n, populate)
                except COPY_FAILED:
                    continue
                return size, None if view is None else view.toreadonly()
        return self.block_info(number).size, None

    def view_of(self, block: BlockInfo) -> memoryview | None:
        """A read-only view of the copy ``block`` came from, when it is on this host."""
        node = self.node_of(block.node)
        view = node.view_of(block)
        return None if view is None else view.toreadonly()


class _Shown:
    """Progress of a read that may start again on another copy: only bytes past the most
    already shown are shown."""

    def __init__(self, progress: copies.Progress) -> None:
        self.progress = progress
        self.shown = 0
        self.done = 0

    def attempt(self) -> None:
        self.done = 0

    def __call__(self, n: int) -> None:
        self.done += n
        if self.done > self.shown:
            self.progress(self.done - self.shown)
            self.shown = self.done


def merge_copies(blocks: list[BlockInfo], listed: list[Replicas]) -> list[BlockInfo]:
    """A listing of the nodes' blocks with each replicated block once: as its first live copy
    describes it, under its own id, with its copies and its state. A copy the directory does
    not list (of a block whose allocation failed half-way, or of a node that left) is listed
    as it is, under its own id."""
    by_id = {r.block_id: r for r in listed}
    merged: list[BlockInfo] = []
    copies: dict[str, dict[Copy, BlockInfo]] = {}
    for b in blocks:
        r = by_id.get(b.replica_of or "")
        if r is None or (b.node, b.number) not in r.copies:
            merged.append(b)
        else:
            copies.setdefault(r.block_id, {})[(b.node, b.number)] = b
    for block_id, found in copies.items():
        r = by_id[block_id]
        first = next(found[c] for c in r.copies if c in found)
        status = r.state if first.status == "ok" else first.status
        merged.append(replace(first, block_id=block_id, replicas=[n for n, _ in r.copies],
                              status=status))
    return merged
