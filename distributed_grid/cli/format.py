"""What the CLI shows a person: tables, previews and progress bars."""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING

from distributed_grid.sizes import format_size

if TYPE_CHECKING:
    from distributed_grid.cluster.gc import Sweep
    from distributed_grid.records import BlockInfo, NodeStats

PROGRESS_MIN_BYTES = 32 * 2**20  # smaller transfers finish before a bar would help


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain text table with columns padded to their widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def format_age(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``."""
    seconds = max(0.0, seconds)
    for unit, scale in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= scale:
            return f"{int(seconds // scale)}{unit}"
    return f"{int(seconds)}s"


def printable(text: str) -> str:
    """``text`` as one line a terminal shows as it is: control characters (a newline, an
    escape sequence) written as Python escapes, so a key cannot forge rows or colours."""
    return text if text.isprintable() else repr(text)[1:-1]


def _keys_cell(block: BlockInfo) -> str:
    parts = []
    for key, extents in sorted(block.keys.items()):
        if len(extents) == 1:
            parts.append(f"{printable(key)}@{extents[0][0]}+{extents[0][1]}")
        else:
            parts.append(f"{printable(key)}[{len(extents)} extents]")
    parts += [f"{printable(k)} (writing)" for k in block.pending_keys if k not in block.keys]
    text = ", ".join(parts) or "-"
    if block.slab:  # the store's block of small values: how many, then the first few
        text = f"slab of {len(block.keys)} small value(s): {text}"
    return text if len(text) <= 60 else text[:57] + "..."


def block_table(blocks: list[BlockInfo]) -> str:
    """The ``list-objects`` table, then the writes in progress (if any): each one's block,
    key, offset, length and writer."""
    if not blocks:
        return "no blocks allocated"
    now = time.time()
    rows = [
        [b.block_id, ",".join(b.replicas or [b.node]), str(len(b.replicas or [b.node])),
         format_size(b.size), format_size(b.used), _keys_cell(b), format_age(now - b.created),
         b.status, b.state]
        for b in blocks
    ]
    text = table(["BLOCK ID", "NODE", "COPIES", "SIZE", "USED", "KEYS", "AGE", "STATUS", "STATE"],
                 rows)
    writes = [[b.block_id, printable(p.key), str(p.offset), str(p.length),
               printable(p.owner)] for b in blocks for p in b.pending]
    if writes:
        text += "\n\nwrites in progress:\n" + table(
            ["BLOCK ID", "KEY", "OFFSET", "LENGTH", "WRITER"], writes)
    return text


def node_table(stats: list[NodeStats]) -> str:
    """The ``cluster status`` table; ROOM is the most a new block may take, and what bounds
    it (``shm``, ``memory``, ``cgroup`` or ``capacity``); PREFAULT (when a node has one) the
    memory it keeps faulted in for new blocks, of its target."""
    spills = any(s.spill_dir for s in stats)
    warm = any(s.prefault_target or s.prefault for s in stats)
    rows = [
        [s.node, "head" if s.is_head else "worker", s.address, format_size(s.shm_total),
         format_size(s.shm_free),
         "-" if s.mem_available is None else format_size(s.mem_available),
         f"{format_size(s.free_for_blocks)} ({s.limited_by})", str(s.blocks),
         format_size(s.block_bytes)]
        + ([_spill_cell(s), format_size(s.pinned_bytes)] if spills else [])
        + ([f"{format_size(s.prefault)} / {format_size(s.prefault_target)}"] if warm else [])
        for s in sorted(stats, key=lambda s: (not s.is_head, s.node))
    ]
    return table(["NODE", "ROLE", "ADDRESS", "SHM TOTAL", "SHM FREE", "MEM AVAILABLE", "ROOM",
                  "BLOCKS", "IN RAM" if spills else "BLOCK BYTES"]
                 + (["SPILLED / QUOTA", "PINNED"] if spills else [])
                 + (["PREFAULT"] if warm else []), rows)


def _spill_cell(stats: NodeStats) -> str:
    """What a node's spill folder holds, of its quota (``-``: no spill folder)."""
    if not stats.spill_dir:
        return "-"
    return (f"{stats.spilled_blocks} blocks, {format_size(stats.spilled_bytes)} / "
            f"{format_size(stats.spill_quota)}")


def sweep_table(sweep: Sweep) -> str:
    """The ``memory gc`` table: each file removed (or to remove), then the total."""
    if not sweep.removed:
        return "nothing to remove"
    rows = [[f.cluster_id or "-", f.kind, f.name, format_size(f.bytes)] for f in sweep.removed]
    temp = sum(f.kind == "temp file" for f in sweep.removed)
    total = f"{len(sweep.removed)} file(s), {format_size(sweep.bytes)}: "
    total += ", ".join(part for part in (
        f"those of {len(sweep.clusters)} dead cluster(s)" if len(sweep.removed) > temp else "",
        f"{temp} stale temporary file(s)" if temp else "") if part)
    verdict = (f"would remove {total}; run without --dry-run to remove them" if sweep.dry_run
               else f"removed {total}")
    return table(["CLUSTER", "KIND", "NAME", "BYTES"], rows) + "\n" + verdict


def preview(target: str, offset: int, total: int, head: bytes) -> str:
    """What ``retrieve`` shows on a terminal: the size, then the first bytes as text or hex."""
    lines = [f"{target}: {total} bytes from offset {offset}"
             + (f" (first {len(head)} shown)" if len(head) < total else "")]
    if not head:
        return lines[0]
    try:
        text = head.decode("utf-8")
        printable = all(c.isprintable() or c in "\n\r\t" for c in text)
    except UnicodeDecodeError:
        printable = False
    if printable:
        lines.append(text)
    else:
        for i in range(0, len(head), 16):
            row = head[i : i + 16]
            hexes = " ".join(f"{b:02x}" for b in row)
            chars = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
            lines.append(f"{offset + i:08x}  {hexes:<47}  {chars}")
    if len(head) < total:
        lines.append(f"... {total - len(head)} more bytes (use --output FILE to save them all)")
    return "\n".join(lines)


class Progress:
    """A progress bar on stderr for big transfers, shown only when stderr is a terminal.

    A transfer whose size is not known yet (``total`` None: a stream being read to its end)
    shows a count of the bytes done instead of a bar, until :meth:`expect` gives the size.
    """

    def __init__(self, label: str, total: int | None, stream=None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.done = 0
        self._lock = threading.Lock()
        self._last = 0.0
        self.expect(total)

    def expect(self, total: int | None) -> None:
        """Set the size of the transfer (None: not known)."""
        self.total = total
        self.enabled = (total is None or total >= PROGRESS_MIN_BYTES) and self.stream.isatty()
        self._start = time.monotonic()

    def update(self, n: int) -> None:
        """Count ``n`` more bytes done (callable from several threads)."""
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self.total is None:
                due = self.done >= PROGRESS_MIN_BYTES and now - self._last >= 0.1
            else:
                due = now - self._last >= 0.1 or self.done >= self.total
            if self.enabled and due:
                self._last = now
                self._draw(now)

    def _draw(self, now: float) -> None:
        rate = format_size(int(self.done / max(now - self._start, 1e-9)))
        if self.total is None:
            self.stream.write(f"\r{self.label} {format_size(self.done)} {rate}/s")
            self.stream.flush()
            return
        frac = self.done / self.total if self.total else 1.0
        width = 30
        bar = "#" * int(frac * width)
        self.stream.write(
            f"\r{self.label} [{bar:<{width}}] {frac:4.0%} {format_size(self.done)} / "
            f"{format_size(self.total)} {rate}/s"
        )
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.enabled and self._last:
            self._draw(time.monotonic())  # the last count, which the 0.1 s steps may skip
            self.stream.write("\n")
            self.stream.flush()
