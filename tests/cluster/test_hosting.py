"""Hosting as a new user meets it, ``grid`` run as typed in a private TMPDIR: one cluster a host
unless asked for another, which cluster a command means when several run, what ``cluster stop``
counts, and a TMPDIR too long for Ray's socket paths."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from helpers.dev_shm import cluster_files, sweep


def started_entries(fresh) -> list[dict]:
    record = os.path.join(fresh.env["TMPDIR"], f"distributed_grid-{os.getuid()}", "started.json")
    try:
        with open(record, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return []


def one_error_line(result) -> str:
    """The one line a refused command printed (exit 1, no traceback)."""
    err = result.stderr.decode(errors="replace")
    assert result.returncode == 1 and "Traceback" not in err, err
    (line,) = err.strip().splitlines()
    assert line.startswith("error: "), line
    return line


def test_stop_counts_the_nodes_it_stopped(fresh):
    fresh("cluster", "start", "--nodes", "gpu1,gpu2")  # a head and two worker nodes
    fresh.remember_cluster()
    stopped = fresh("cluster", "stop", "--json")
    assert json.loads(stopped.stdout)["stopped_nodes"] == 3
    assert stopped.stderr.decode().strip().endswith("; stopped 3 Ray node(s) started here")


def test_a_second_cluster_is_started_only_when_asked(fresh):
    first = fresh.out("cluster", "start", "--nodes", "gpu1,gpu2")
    fresh.remember_cluster()
    second_id = None
    try:
        refused = fresh("cluster", "start", "--loopback", check=False)
        line = one_error_line(refused)
        assert line.startswith(f"error: a local cluster at {first} (nodes "), line
        assert "already runs on this host" in line and f"--address {first}" in line, line
        assert "`grid cluster stop`" in line and "--another" in line, line
        assert refused.stdout == b""
        assert [e["address"] for e in started_entries(fresh)] == [first]  # nothing started

        second = fresh.out("cluster", "start", "--loopback", "--another")
        assert second != first
        second_id = json.loads(fresh.out("cluster", "status", "--json", "--address",
                                         second))["cluster_id"]
        # a command that names no cluster picks none of them
        for args in (["memory", "list-objects"], ["cluster", "status"],
                     ["memory", "allocate", "4096"]):
            line = one_error_line(fresh(*args, check=False))
            assert "2 clusters started by grid run on this host" in line, line
            assert first in line and second in line, line
            assert "--address HOST:PORT" in line and "RAY_ADDRESS" in line, line
        # naming one reaches that one
        assert fresh.out("memory", "list-objects", "--address", second) == "no blocks allocated"
        status = json.loads(fresh.out("cluster", "status", "--json", env={"RAY_ADDRESS": first}))
        assert status["address"] == first and status["cluster_id"] == fresh.cluster_id
        # a third start names both
        line = one_error_line(fresh("cluster", "start", "--loopback", check=False))
        assert "2 clusters started by grid already run on this host" in line, line
        assert first in line and second in line and "--another" in line, line

        stopped = fresh("cluster", "stop", "--json")
        assert json.loads(stopped.stdout)["stopped_nodes"] == 4  # 3 of the first, 1 of the second
        assert "stopped 4 Ray node(s)" in stopped.stderr.decode()
        assert cluster_files(second_id) == [] and started_entries(fresh) == []
    finally:
        fresh("cluster", "stop", check=False)
        if second_id is not None:
            sweep(second_id)


# -- a long TMPDIR -----------------------------------------------------------------------------


@pytest.fixture
def long_tmpdir(fresh):
    """``fresh`` with a TMPDIR whose path is too long for Ray's socket paths below it; the short
    folder that holds Ray's sessions instead is removed after the test (the long one goes with
    ``fresh``'s folder)."""
    from distributed_grid.cluster import ray_env

    long = os.path.join(fresh.tmp, "a-folder-name-long-enough-for-ray-s-sockets-to-fail-" * 2)
    os.makedirs(long, mode=0o700)
    fresh.env["TMPDIR"] = long
    runtime_folder = os.path.join(long, f"distributed_grid-{os.getuid()}")
    assert ray_env.longest_socket_path(os.path.join(runtime_folder, "ray")) > 107
    short = ray_env.short_folder(runtime_folder)
    try:
        yield fresh, short
    finally:
        stopped = fresh("cluster", "stop", check=False)
        if os.path.islink(short):
            os.unlink(short)
        shutil.rmtree(short, ignore_errors=True)
        assert stopped.returncode == 0, stopped.stderr


def test_a_long_tmpdir_keeps_ray_in_a_short_private_folder(long_tmpdir, tmp_path):
    fresh, short = long_tmpdir
    (tmp_path / "in.bin").write_bytes(b"under a long TMPDIR")
    block_id = fresh.out("memory", "store", "k", "in.bin")  # starts the embedded cluster
    fresh.remember_cluster()
    assert fresh("memory", "retrieve", block_id).stdout == b"under a long TMPDIR"
    remote = {"DISTRIBUTED_GRID_FORCE_REMOTE": "1"}  # through Ray's object store too
    assert fresh("memory", "retrieve", "k", env=remote).stdout == b"under a long TMPDIR"
    st = os.lstat(short)
    assert st.st_uid == os.getuid() and st.st_mode & 0o777 == 0o700
    assert [n for n in os.listdir(os.path.join(short, "ray")) if n.startswith("session_2")]
    refused = fresh("cluster", "start", "--loopback", check=False)  # finds the running one
    assert "already runs on this host" in one_error_line(refused)
    fresh("cluster", "stop")


def test_a_short_folder_of_someone_else_is_refused(long_tmpdir, tmp_path):
    fresh, short = long_tmpdir
    os.symlink(tmp_path, short)  # planted there before this user's first start
    line = one_error_line(fresh("cluster", "start", "--loopback", check=False))
    assert line.startswith("error: Ray's socket paths under "), line
    assert f"the short folder {short} for them is not a folder of this user's" in line, line
    assert started_entries(fresh) == [] and os.listdir(tmp_path) == []
