"""``started.json``, the record of what ``grid cluster start`` started on this host: changed under
a lock, so no start is lost when several write it at once. Through ``grid cluster`` (two starts
at once, a corrupt record): ``test_started_record_cli.py`` in tests/cluster/."""

from __future__ import annotations

import multiprocessing
import os
import stat

from distributed_grid import runtime

# The writers (spawned) import this module: it must not import the root conftest, which would
# give each of them a TMPDIR of its own

WRITERS = 6
ENTRIES_EACH = 25


def _record_many(barrier, writer: int) -> None:
    barrier.wait(timeout=120)  # every writer starts at once: the most contention
    for n in range(ENTRIES_EACH):
        runtime.record_started({"pid": os.getpid(), "role": "test", "address": "nowhere:0",
                                "writer": writer, "n": n})


def test_concurrent_records_lose_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the children's runtime directory too
    spawn = multiprocessing.get_context("spawn")  # this process runs Ray's threads: no fork
    barrier = spawn.Barrier(WRITERS)
    writers = [spawn.Process(target=_record_many, args=(barrier, w)) for w in range(WRITERS)]
    for proc in writers:
        proc.start()
    for proc in writers:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in writers] == [0] * WRITERS
    entries = runtime.started_entries(alive_only=False)
    assert sorted((e["writer"], e["n"]) for e in entries) == [
        (w, n) for w in range(WRITERS) for n in range(ENTRIES_EACH)]
    lock = os.path.join(runtime.runtime_dir(), "started.lock")
    assert stat.S_IMODE(os.stat(lock).st_mode) == 0o600
    runtime.forget_started({e["pid"] for e in entries if e["writer"] % 2 == 0})
    assert {e["writer"] for e in runtime.started_entries(alive_only=False)} == {1, 3, 5}
