"""The cluster is closed to other users of the host: Ray's token auth, private files.

The other user is ``nobody``, running a Python of its own (the system's, with this package and
the venv's libraries on its path: the venv's interpreter lives under /root, which nobody cannot
enter). Every process of it is bounded by a timeout and ended by its pid. The token and the
folders of this host without a cluster: ``test_token_and_folders.py`` in tests/unit/.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import pytest

import distributed_grid
from distributed_grid import runtime
from distributed_grid.cluster import auth

SYSTEM_PYTHON = "/usr/bin/python3.11"  # the venv's version (3.11), outside /root
STRANGER = "nobody"

DRIVER = """
import os, sys
import ray
try:
    ray.init(address=sys.argv[1], log_to_driver=False)

    @ray.remote
    def whoami():
        return os.getuid()

    print("TASK RAN as uid", ray.get(whoami.remote(), timeout=60), flush=True)
except Exception as exc:
    print("REFUSED", type(exc).__name__, flush=True)
"""

KV = """
import sys
from ray._raylet import InnerGcsClient
address, key, scratch = sys.argv[1], sys.argv[2].encode(), sys.argv[3].encode()
try:
    gcs = InnerGcsClient.standalone(address, None, 5000)
    print("READ", gcs.internal_kv_get(key, b"distributed_grid", 5), flush=True)
    gcs.internal_kv_put(scratch, b"[]", True, b"distributed_grid", 5)
    print("WROTE", flush=True)
except Exception as exc:
    print("REFUSED", type(exc).__name__, flush=True)
"""

READ_FILES = """
import os, sys
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path):
            os.listdir(path)
        else:
            open(path, "rb").read(1)
        print("READ", path, flush=True)
    except Exception as exc:
        print("DENIED", path, type(exc).__name__, flush=True)
"""


class Stranger:
    """Runs Python as another local user, in a home of its own, with a bounded wait."""

    def __init__(self) -> None:
        self.top = tempfile.mkdtemp(prefix="dgs", dir="/tmp")
        os.chmod(self.top, 0o755)
        self.home = os.path.join(self.top, "home")
        os.mkdir(self.home, 0o700)
        user = pwd.getpwnam(STRANGER)
        os.chown(self.home, user.pw_uid, user.pw_gid)
        package_root = os.path.dirname(os.path.dirname(distributed_grid.__file__))
        self.env = {
            "PATH": "/usr/bin:/bin", "HOME": self.home, "TMPDIR": self.home, "LANG": "C.UTF-8",
            "PYTHONPATH": f"{package_root}:{sysconfig.get_paths()['purelib']}",
            "PYTHONDONTWRITEBYTECODE": "1", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        }

    def run(self, args: list[str], env: dict[str, str] | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        """``python ARGS`` as the stranger; ended by its pid if it outlives ``timeout``."""
        cmd = ["setpriv", f"--reuid={STRANGER}", "--regid=nogroup", "--clear-groups", "--",
               "env", "-i", *[f"{k}={v}" for k, v in {**self.env, **(env or {})}.items()],
               SYSTEM_PYTHON, *args]  # setpriv and env exec: the pid is Python's
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                cwd=self.home, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise AssertionError(f"{args} as {STRANGER} still ran after {timeout} s") from None
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return subprocess.CompletedProcess(cmd, proc.returncode, out.decode(errors="replace"),
                                           err.decode(errors="replace"))

    def python(self, code: str, *args: str, **kw) -> str:
        """Run ``code`` as the stranger; returns its stdout."""
        path = os.path.join(self.top, f"script{abs(hash(code))}.py")
        with open(path, "w", encoding="utf-8") as f:
            f.write(code)
        os.chmod(path, 0o644)
        return self.run([path, *args], **kw).stdout

    def remove(self) -> None:
        shutil.rmtree(self.top, ignore_errors=True)


@pytest.fixture(scope="module")
def stranger():
    if os.getuid() != 0 or not os.path.exists(SYSTEM_PYTHON) or shutil.which("setpriv") is None:
        pytest.skip("needs root, setpriv and a system Python 3.11 to act as another user")
    try:
        pwd.getpwnam(STRANGER)
    except KeyError:
        pytest.skip(f"no user {STRANGER} on this host")
    made = Stranger()
    yield made
    made.remove()


def owner_env() -> dict[str, str]:
    """This user's environment with the session cluster's token set the way Ray reads it."""
    return {**os.environ, auth.MODE_ENV: "token", auth.TOKEN_PATH_ENV: auth.token_path(),
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def ray_daemons(supervisor: int) -> dict[int, dict[str, str]]:
    """The environment of each GCS and raylet the supervisor started, by pid (Ray's Python
    processes rename themselves over their environment, so only these show it)."""
    found = {}
    children = subprocess.run(["pgrep", "-P", str(supervisor)], capture_output=True, text=True)
    for pid in map(int, children.stdout.split()):
        with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
            if f.read().strip() not in ("gcs_server", "raylet"):
                continue
        with open(f"/proc/{pid}/environ", "rb") as f:
            pairs = [v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v]
        found[pid] = {k.decode(): v.decode(errors="replace") for k, v in pairs}
    return found


# -- this host's token and folders ----------------------------------------------------------------


def test_the_session_cluster_runs_with_token_auth_in_a_private_folder(cluster_address):
    (entry,) = [e for e in runtime.started_entries() if e["address"] == cluster_address]
    daemons = ray_daemons(entry["pid"])
    assert set(entry["raylets"].values()) < set(daemons)  # and the GCS
    for pid, env in daemons.items():
        assert env.get(auth.MODE_ENV) == "token", pid
        assert env.get(auth.TOKEN_PATH_ENV) == auth.token_path(), pid
        assert env.get("RAY_TMPDIR") == runtime.runtime_dir(), pid
    assert os.stat(runtime.runtime_dir()).st_mode & 0o777 == 0o700
    assert os.stat(auth.token_path()).st_mode & 0o777 == 0o600
    sessions = os.path.join(runtime.runtime_dir(), "ray")
    assert any(e.startswith("session_") for e in os.listdir(sessions))


def test_files_of_blocks_and_records_are_the_users_alone(pool, blocks, unique):
    block_id = blocks.new(4096, node="head")
    pool.write(block_id, b"secret", key=unique)
    info = pool.block_info(block_id)
    record = next(r for r in runtime.node_records(cluster_id=pool.cluster_id) if r.node == "head")
    paths = [os.path.join("/dev/shm", info.segment.lstrip("/")), record.catalog,
             record.catalog + "-wal", record.catalog + "-shm", record.directory,
             record.directory + "-wal", record.directory + "-shm"]
    ray_temp = os.path.join(runtime.runtime_dir(), "ray")  # Ray's own, checked above
    for folder, folders, files in os.walk(runtime.runtime_dir()):
        if not folder.startswith(ray_temp):
            paths += [os.path.join(folder, name) for name in [*folders, *files]
                      if os.path.join(folder, name) != ray_temp]
    for path in paths:
        st = os.stat(path)
        assert st.st_uid == os.getuid(), path
        assert st.st_mode & 0o077 == 0, (path, oct(st.st_mode))


# -- another user -----------------------------------------------------------------------------


def test_another_user_cannot_run_a_task(stranger, cluster_address):
    out = stranger.python(DRIVER, cluster_address)
    assert "REFUSED" in out and "TASK RAN" not in out, out
    # the same driver with the token runs its task: the refusal is the token's doing
    owner = subprocess.run([sys.executable, "-c", DRIVER, cluster_address], capture_output=True,
                           text=True, timeout=120, env=owner_env())
    assert f"TASK RAN as uid {os.getuid()}" in owner.stdout, owner.stderr


def test_another_user_cannot_read_a_block(stranger, pool, blocks, grid, unique):
    block_id = blocks.new(4096, node="head")
    pool.write(block_id, b"top secret bytes", key=unique)
    info = pool.block_info(block_id)
    record = next(r for r in runtime.node_records(cluster_id=pool.cluster_id) if r.node == "head")
    files = [os.path.join("/dev/shm", info.segment.lstrip("/")), record.catalog,
             runtime.runtime_dir(), auth.token_path()]
    out = stranger.python(READ_FILES, *files)
    for path in files:
        assert f"DENIED {path} PermissionError" in out, out
    for args in (["memory", "retrieve", block_id], ["memory", "retrieve", unique]):
        failed = stranger.run(["-m", "distributed_grid.cli.main", *args],
                              env={"RAY_ADDRESS": grid.env["RAY_ADDRESS"]})
        assert failed.returncode == 1, failed
        lines = [line for line in failed.stderr.splitlines() if line.strip()]
        assert lines == [lines[-1]] and lines[-1].startswith("error: "), failed.stderr
        assert "wants an auth token, and this host has none" in lines[-1]
        assert "top secret" not in failed.stdout
    assert grid("memory", "retrieve", unique).stdout == b"top secret bytes"  # the owner's does


def test_another_user_cannot_read_or_write_the_key_value_store(stranger, remote_pool, unique):
    from distributed_grid import _ray
    from distributed_grid.wire import NAMESPACE

    address = remote_pool.ray.address  # this process is connected
    _ray.kv_put(unique, b"the owner's", NAMESPACE)
    out = stranger.python(KV, address, unique, unique)
    assert out.strip() == "REFUSED AuthenticationError", out
    assert _ray.kv_get(unique, NAMESPACE) == b"the owner's"
    # the same script with the token reads and writes: the refusal is the token's doing
    owner = subprocess.run([sys.executable, "-c", KV, address, unique, unique + "-scratch"],
                           capture_output=True, text=True, timeout=120, env=owner_env())
    assert owner.stdout.split("\n")[:2] == ["READ b\"the owner's\"", "WROTE"], owner
    assert _ray.kv_get(unique + "-scratch", NAMESPACE) == b"[]"


def test_the_owner_needs_no_extra_step_and_a_wrong_token_is_one_line(fresh, tmp_path):
    fresh("cluster", "start", "--nodes", "gpu1")
    status = fresh.remember_cluster()
    token = os.path.join(fresh.tmp, f"distributed_grid-{os.getuid()}", "auth_token")
    assert os.stat(token).st_mode & 0o777 == 0o600
    (tmp_path / "f").write_bytes(b"mine")
    remote = {"DISTRIBUTED_GRID_FORCE_REMOTE": "1"}
    block_id = fresh.out("memory", "store", "k", tmp_path / "f", env=remote)
    assert fresh("memory", "retrieve", "k", env=remote).stdout == b"mine"
    assert json.loads(fresh.out("memory", "list-objects", "--json", env=remote))[0][
        "block_id"] == block_id
    wrong = tmp_path / "wrong_token"
    wrong.write_text("cd" * 32)
    failed = fresh("memory", "list-objects", env={**remote, auth.TOKEN_PATH_ENV: str(wrong)},
                   check=False)
    assert failed.returncode == 1
    (line,) = [line for line in failed.stderr.decode().splitlines() if line.strip()]
    assert line.startswith(f"error: the Ray cluster at {status['address']} refused the token "
                           f"of {wrong} ("), line
    assert line.endswith(f"set RAY_AUTH_TOKEN_PATH to it (or copy it to {token})"), line
