"""A write of a replicated block: every copy claims the range, takes the bytes, commits.

:func:`prepare` claims the range in every copy's catalog at once. A refusal (a key conflict, a
range out of bounds) is the same on every copy: the others are undone and it is raised. Copies
that know a newer set of copies than this process (a repair is adding one: the block's epoch
went up) refuse too; the set is asked for again and the write prepared again, with the new copy.
:meth:`ReplicaWrite.fill` then copies the bytes into all the copies at once, each on a thread of
its own (or, after the caller wrote them into the copy of this host through
:meth:`ReplicaWrite.writable`, from there into the others), and :meth:`ReplicaWrite.commit`
commits in every copy's catalog at once. A copy whose node is gone, or which lost the block,
is dropped from the block's set (the block is then ``degraded`` until repaired), and the write
succeeds while one copy holds it; with none left it fails. A writer never gets "ok" for bytes
fewer than one copy holds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from distributed_grid.errors import BlockNotFound, CopiesChanged, GridError, NodeUnavailable
from distributed_grid.memory.client.nodes import Node, NodeStore
from distributed_grid.memory.io import copies, sources
from distributed_grid.memory.node.service.directory import Copy, Replicas
from distributed_grid.records import BlockInfo

# What a copy (not the write, not the caller) failed by: its node is gone, or it lost the block.
COPY_FAILED = (NodeUnavailable, BlockNotFound)
CHANGES_FOLLOWED = 8  # times a write asks for the copies again when a repair adds one

Result = tuple[Copy, Node, Any]  # a copy, its node, and what a call of it gave (or raised)


class CopySet(Protocol):
    """What a write asks of its replicated block (:class:`~distributed_grid.memory.client.
    replicas.ReplicaSet`)."""

    block_id: str
    replicas: Replicas
    directory: Any

    def each(self, method: Callable[..., Any], args: Callable[[int], tuple],
             among: list[tuple[Copy, Node]] | None = None) -> list[Result]: ...
    def sorted_results(self, results: list[Result]
                       ) -> tuple[list[Result], list[Copy], list[Exception]]: ...
    def drop(self, copy: Copy) -> None: ...
    def drop_all_but(self, done: list[Result]) -> None: ...
    def learn(self, replicas: Replicas) -> None: ...
    def lost(self, cause: BaseException | None = None) -> GridError: ...
    def as_replicated(self, info: BlockInfo) -> BlockInfo: ...


def prepare(block: CopySet, offset: int, length: int, key: str | None, force: bool,
            writer: str | None) -> ReplicaWrite:
    """Claim ``length`` bytes at ``offset`` (for ``key``) in every copy's catalog (see the
    module's docstring)."""
    for _ in range(CHANGES_FOLLOWED):
        done, failed, errors = block.sorted_results(block.each(
            NodeStore.prepare_write,
            lambda n: (n, offset, length, key, force, writer, block.block_id,
                       block.replicas.epoch)))
        if errors or not done:
            for (_, n), node, _ in done:
                try:
                    node.abort_write(n, offset, key, torn=False)
                except GridError:
                    pass
        changed = [e for e in errors if isinstance(e, CopiesChanged)]
        if changed and len(changed) == len(errors):
            newer = block.directory.replicas(block.block_id)
            if newer is None:
                raise block.lost()
            block.learn(newer)
            continue
        break
    if errors or not done:
        raise errors[0] if errors else block.lost()
    for copy in failed:
        block.drop(copy)
    return ReplicaWrite(block, done, key)


class ReplicaWrite:
    """A write prepared in every copy of a replicated block.

    Args:
        block: the replicated block.
        prepared: each copy the write was prepared in, its node, and its facts then.
        key: the key written (None for bytes of no key).
    """

    def __init__(self, block: CopySet, prepared: list[Result], key: str | None) -> None:
        self.block = block
        self.prepared = prepared
        self.key = key
        self.info = block.as_replicated(prepared[0][2])
        self._in_place: Copy | None = None  # the copy the caller wrote the bytes into

    def writable(self, offset: int, length: int) -> memoryview | None:
        """A writable view of the range in the prepared copy of this host, if there is one:
        the caller writes there, and :meth:`fill` copies the range to the other copies."""
        for copy, node, info in self.prepared:
            if node.is_local:
                view = node.view_of(info)
                if view is not None:
                    self._in_place = copy
                    return view[offset:offset + length]
        return None

    def fill(self, offset: int, length: int, source: sources.Source,
             progress: copies.Progress = copies.no_progress) -> None:
        """Copy the bytes into every prepared copy at once (each on a thread of its own)."""
        targets = [p for p in self.prepared if p[0] != self._in_place]
        outcome: list[BaseException | None] = [None] * len(targets)

        def fill_one(i: int) -> None:
            _, node, info = targets[i]
            try:
                node.fill(info, offset, length, source, progress if i == 0 else
                          copies.no_progress)
            except BaseException as exc:  # raised again below, in the caller's thread
                outcome[i] = exc

        threads = [threading.Thread(target=fill_one, args=(i,), name=f"fill-{i}", daemon=True)
                   for i in range(1, len(targets))]
        for t in threads:
            t.start()
        if targets:
            fill_one(0)
        for t in threads:
            t.join()
        for entry, exc in zip(targets, outcome, strict=True):
            if isinstance(exc, COPY_FAILED):
                self._abandon(entry, offset)
            elif exc is not None:
                raise exc
        if not self.prepared:
            raise self.block.lost(next((e for e in outcome if e is not None), None))

    def _abandon(self, entry: Result, offset: int) -> None:
        """Give up a copy that failed inside the write: undo its part, drop it from the set."""
        copy, node, _ = entry
        try:
            node.abort_write(copy[1], offset, self.key, torn=True)
        except GridError:
            pass
        self.prepared.remove(entry)
        self.block.drop(copy)

    def commit(self, offset: int, length: int, meta: dict[str, Any] | None) -> BlockInfo:
        """Commit in every prepared copy's catalog; a copy that cannot is dropped (it missed
        the write), and so is any copy of the block the write did not reach."""
        done, _, errors = self.block.sorted_results(self.block.each(
            NodeStore.commit_write, lambda n: (n, offset, length, self.key, meta),
            [(c, node) for c, node, _ in self.prepared]))
        if not done:
            raise errors[0] if errors else self.block.lost()
        self.block.drop_all_but(done)
        return self.block.as_replicated(done[0][2])

    def abort(self, offset: int, torn: bool) -> None:
        for (_, n), node, _ in self.prepared:
            try:
                node.abort_write(n, offset, self.key, torn)
            except GridError:
                pass


class WritesToEveryCopy(CopySet):
    """The write half of the :class:`~distributed_grid.memory.client.nodes.Node` protocol of a
    replicated block (:class:`~distributed_grid.memory.client.replicas.ReplicaSet`): one write
    prepared by this process at a time, in every copy."""

    _write: ReplicaWrite | None = None

    def prepare_write(self, number: int, offset: int, length: int, key: str | None = None,
                      force: bool = False, writer: str | None = None,
                      replica_of: str | None = None, epoch: int = 0) -> BlockInfo:
        """Claim the range in every copy's catalog (see :func:`~distributed_grid.memory.
        client.replica_writes.prepare`)."""
        self._write = prepare(self, offset, length, key, force, writer)
        return self._write.info

    def fill(self, block: BlockInfo, offset: int, length: int, source: sources.Source,
             progress: copies.Progress = copies.no_progress) -> None:
        self._prepared().fill(offset, length, source, progress)

    def writable(self, block: BlockInfo, offset: int, length: int) -> memoryview | None:
        """A writable view of the range in a prepared copy on this host (None when no copy is
        here): the caller writes the bytes there, and :meth:`fill` copies them to the others."""
        return self._prepared().writable(offset, length)

    def commit_write(self, number: int, offset: int, length: int, key: str | None = None,
                     meta: dict[str, Any] | None = None) -> BlockInfo:
        write, self._write = self._prepared(), None
        return write.commit(offset, length, meta)

    def abort_write(self, number: int, offset: int, key: str | None = None,
                    torn: bool = True) -> None:
        write, self._write = self._write, None
        if write is not None:
            write.abort(offset, torn)

    def _prepared(self) -> ReplicaWrite:
        if self._write is None:
            raise RuntimeError(f"no write of {self.block_id} is prepared in this process")
        return self._write
