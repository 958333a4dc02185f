"""Streams held while they arrive: a store of a stream allocates only once its length is known.

A stream (:class:`~distributed_grid.memory.io.inputs.Input` without a size: a pipe, a FIFO, a
terminal)
is read whole into a :class:`~distributed_grid.memory.io.sinks.SpoolSink` (in memory up to 64
MiB, beyond in an unnamed temporary file) before anything is allocated or written
(:func:`read_to_end`): a new block then fits exactly what arrived, and a stream longer than the
room it was sent to changes nothing. A stream that brings nothing is refused by the caller.
"""

from __future__ import annotations

from distributed_grid.errors import FileError, OutOfBounds
from distributed_grid.memory.io import copies, sinks, sources
from distributed_grid.memory.io.inputs import Input, Progress

# -- reading ---------------------------------------------------------------------------------


def read_to_end(source: Input, limit: int | None = None, progress: Progress | None = None,
                memory: int = sinks.STAGE_IN_MEMORY) -> sinks.SpoolSink:
    """Read a stream to its end into a spool (the caller closes it).

    Args:
        source: a stream.
        limit: the most bytes wanted; reading stops as soon as more than that arrived.
        progress: called with each count of bytes read.
        memory: bytes held in memory before the spool goes to a temporary file.

    Raises:
        OutOfBounds: more than ``limit`` bytes arrived (facts: ``limit``).
        FileError: the input or the spool failed (``No space left on device``...).
    """
    spool = sinks.SpoolSink(limit=memory)
    buf = memoryview(bytearray(copies.PIECE))
    try:
        while True:
            try:
                n = source.read_into(buf)
            except OSError as exc:
                raise FileError(f"cannot read {source.name}: {exc.strerror}") from exc
            if not n:
                return spool
            try:
                spool.write(buf[:n])
            except OSError as exc:
                raise FileError(f"cannot hold {source.name} while it arrives (in "
                                f"{_spool_dir()}): {exc.strerror}") from exc
            if progress is not None:
                progress(n)
            if limit is not None and spool.pos > limit:
                raise OutOfBounds(f"{source.name} brought more than {limit} bytes",
                                  limit=limit)
    except BaseException:
        spool.close()
        raise


def _spool_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def spooled_source(spool: sinks.SpoolSink, name: str) -> sources.Source:
    """The bytes a spool holds, as the source of a write."""
    if spool.buf is not None:
        return sources.BufferSource(memoryview(spool.buf)[: spool.pos])
    return sources.FileSource(spool.fd, f"{name} (held in a temporary file)",  # type: ignore[arg-type]
                               spool.pos)
