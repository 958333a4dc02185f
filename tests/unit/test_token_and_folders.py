"""This host's auth token and private folders, without a cluster: the token file is made once,
private, and the same for processes that make it at once; a worker needs its head's token; a
runtime folder or a database of another user is refused. The cluster closed to other users:
``test_security.py`` in tests/cluster/."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys

import pytest

from distributed_grid import runtime
from distributed_grid.cluster import auth
from distributed_grid.errors import ClusterError

STRANGER = "nobody"  # another user of this host


def test_the_token_file_is_private_made_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    for name in ("XDG_RUNTIME_DIR", auth.TOKEN_ENV, auth.TOKEN_PATH_ENV):
        monkeypatch.delenv(name, raising=False)
    path = auth.ensure_token()
    assert path == os.path.join(runtime.runtime_dir(), "auth_token")
    assert os.stat(runtime.runtime_dir()).st_mode & 0o777 == 0o700
    assert os.stat(path).st_mode & 0o777 == 0o600
    token = open(path).read()
    assert len(token) == 64 and int(token, 16) > 0
    os.chmod(path, 0o644)
    assert auth.ensure_token() == path and open(path).read() == token  # kept, made private
    assert os.stat(path).st_mode & 0o777 == 0o600
    env = auth.start_env()
    assert env == {auth.MODE_ENV: "token", auth.TOKEN_PATH_ENV: path}
    monkeypatch.setenv(auth.TOKEN_PATH_ENV, str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="RAY_AUTH_TOKEN_PATH=.*missing.*no token there"):
        auth.start_env()


def test_processes_that_make_the_token_at_once_get_the_same_one(tmp_path):
    code = "from distributed_grid.cluster import auth; print(open(auth.ensure_token()).read())"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    for name in ("XDG_RUNTIME_DIR", auth.TOKEN_ENV, auth.TOKEN_PATH_ENV):
        env.pop(name, None)
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
             for _ in range(6)]
    tokens = {proc.communicate(timeout=60)[0] for proc in procs}
    assert len(tokens) == 1 and len(tokens.pop().strip()) == 64
    assert os.listdir(tmp_path / f"distributed_grid-{os.getuid()}") == ["auth_token"]


def test_a_runtime_folder_of_another_user_is_refused(tmp_path, monkeypatch):
    if os.getuid() != 0:
        pytest.skip("needs root to make a folder of another user")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    squatted = tmp_path / f"distributed_grid-{os.getuid()}"
    squatted.mkdir(mode=0o777)
    os.chown(squatted, pwd.getpwnam(STRANGER).pw_uid, -1)
    with pytest.raises(ClusterError, match="not a folder of this user's"):
        runtime.runtime_dir()
    squatted.rmdir()
    squatted.mkdir(mode=0o755)  # ours, but open: closed again
    assert runtime.runtime_dir() == str(squatted)
    assert os.stat(squatted).st_mode & 0o777 == 0o700


def test_a_worker_needs_the_heads_token(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    for name in ("XDG_RUNTIME_DIR", auth.TOKEN_ENV, auth.TOKEN_PATH_ENV):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ClusterError, match="needs its head's auth token"):
        auth.join_source("10.0.0.1:6379")
    copied = tmp_path / "head_token"
    copied.write_text("ab" * 32)
    monkeypatch.setenv(auth.TOKEN_PATH_ENV, str(copied))
    source = auth.join_source("10.0.0.1:6379")  # the user's, as set
    assert (source.where, source.env) == (str(copied), {auth.MODE_ENV: "token"})
    assert not os.path.exists(auth.token_path())  # a worker never makes a token of its own


def test_a_database_is_private_and_one_of_another_user_is_refused(tmp_path):
    from distributed_grid.memory.shm.database import Database

    loose = tmp_path / "loose.db"
    loose.touch(mode=0o644)
    os.chmod(loose, 0o644)
    db = Database(str(loose), "CREATE TABLE t (x INTEGER)", 1, "a test database")
    try:
        with db.transaction() as conn:
            conn.execute("INSERT INTO t VALUES (1)")
        for path in (loose, tmp_path / "loose.db-wal", tmp_path / "loose.db-shm"):
            assert os.stat(path).st_mode & 0o777 == 0o600, path
    finally:
        db.close()
    if os.getuid() != 0:
        return
    theirs = tmp_path / "theirs.db"
    theirs.touch(mode=0o666)
    os.chown(theirs, pwd.getpwnam(STRANGER).pw_uid, -1)
    with pytest.raises(ClusterError, match="belongs to another user"):
        Database(str(theirs), "CREATE TABLE t (x INTEGER)", 1, "a test database")
    assert os.path.getsize(theirs) == 0  # nothing written into it
