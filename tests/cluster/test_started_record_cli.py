"""``started.json`` through ``grid cluster``: two starts at once are both recorded and both
stopped; a corrupt record is one error line naming it, and nothing starts. Many writers of the
record at once, without a cluster: ``test_started_record.py`` in tests/unit/."""

from __future__ import annotations

import json
import os
import subprocess
import time

from helpers.dev_shm import cluster_files, sweep
from helpers.grid import GRID


def _session_of(pid: int) -> list[int]:
    """The live processes of the session ``pid`` leads (a cluster's supervisor and its Ray)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != b"Z" and int(fields[3]) == pid:  # state, session id
                found.append(int(name))
    return found


def test_two_starts_at_once_are_both_stopped(fresh):
    # --another: each start makes a cluster of its own, whichever of them runs first
    starts = [subprocess.Popen([GRID, "cluster", "start", "--loopback", "--another", *form],
                               cwd=fresh.cwd, env=fresh.env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
              for form in ([], ["--json"])]
    results = [proc.communicate(timeout=600) for proc in starts]
    assert [proc.returncode for proc in starts] == [0, 0], results
    record = os.path.join(fresh.tmp, f"distributed_grid-{os.getuid()}", "started.json")
    with open(record, encoding="utf-8") as f:
        entries = json.load(f)
    as_json = json.loads(results[1][0])
    assert as_json["role"] == "local" and len(as_json["nodes"]) == 1
    addresses = sorted([results[0][0].decode().strip(), as_json["address"]])
    assert sorted(e["address"] for e in entries) == addresses and len(set(addresses)) == 2
    cluster_ids = [e["cluster_id"] for e in entries]
    processes = {e["pid"]: _session_of(e["pid"]) for e in entries}
    for pid, members in processes.items():
        assert pid in members and len(members) > 1, (pid, members)  # the supervisor and its Ray
    try:
        stopped = fresh("cluster", "stop", "--json")
        assert json.loads(stopped.stdout)["stopped_nodes"] == 2
        deadline = time.monotonic() + 60
        while any(map(_session_of, processes)) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {pid: _session_of(pid) for pid in processes}
        assert not any(left.values()), f"processes of a stopped cluster still run: {left}"
        assert [cluster_files(cid) for cid in cluster_ids] == [[], []]
    finally:
        for cid in cluster_ids:
            sweep(cid)


def test_a_corrupt_record_is_one_error_line_naming_it(fresh):
    record = os.path.join(fresh.tmp, f"distributed_grid-{os.getuid()}", "started.json")
    os.makedirs(os.path.dirname(record), mode=0o700)
    with open(record, "w", encoding="utf-8") as f:
        f.write('[{"pid": 12')  # cut short
    try:
        for args in (["cluster", "stop"], ["cluster", "status"], ["cluster", "start"]):
            result = fresh(*args, check=False)
            err = result.stderr.decode()
            assert result.returncode == 1 and "Traceback" not in err, (args, err)
            (line,) = err.strip().splitlines()
            assert line.startswith(f"error: {record} is corrupt: "), line
            assert "move the file away" in line, line
        with open(record, encoding="utf-8") as f:
            assert f.read() == '[{"pid": 12'
        assert not os.path.exists(os.path.join(fresh.tmp, "ray")), "a start went ahead"
    finally:
        os.unlink(record)  # the fixture's `grid cluster stop` then finds nothing to stop
