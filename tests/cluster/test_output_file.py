"""``retrieve --output``: where the bytes land, and what they never touch.

Attacks are run as they would happen: another local user (``nobody``) plants symbolic links in
a directory it may write, and root retrieves into it. The CLI is run as a subprocess where the
test is about the command; the library (``retrieve_to_file``) where it is about the file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from distributed_grid.errors import FileError
from distributed_grid.memory.io import output_file, sinks
from distributed_grid.memory.io.output_file import OutputFile

GRID = os.path.join(os.path.dirname(sys.executable), "grid")
AS_NOBODY = ["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups"]
# root without the capabilities that let it write whatever the modes say
WITHOUT_OVERRIDE = ["setpriv", "--inh-caps", "-dac_override,-dac_read_search",
                    "--bounding-set", "-dac_override,-dac_read_search"]

# The host's /dev stays out of reach of the code under test: a retrieve that wrongly replaced
# /dev/null or /dev/stdout (as the code before output_file.py did) meets a read-only /dev in a
# mount namespace of its own (/dev/shm, a mount of its own, stays writable).
READ_ONLY_DEV = ["unshare", "-m", "sh", "-c", "mount --rbind /dev /dev && "
                 'mount -o remount,bind,ro /dev && exec "$0" "$@"']
needs_private_dev = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                       reason="a read-only /dev of its own needs root, unshare")
needs_root = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                                reason="needs root and setpriv (to act as another user)")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def as_nobody(*cmd: str) -> None:
    subprocess.run([*AS_NOBODY, *cmd], check=True, capture_output=True, timeout=60)


@pytest.fixture
def stored(pool, blocks, unique):
    """A key on this host (gpu1) holding 1 MiB + 3 bytes (more than a pipe's buffer)."""
    data = os.urandom(2**20 + 3)
    block_id = blocks.new(len(data), node="gpu1")
    pool.write(block_id, data, key=unique)
    return unique, data


@pytest.fixture
def shared():
    """A directory every user may write (mode 0777, no sticky bit: the worst case), that
    ``nobody`` can reach."""
    path = tempfile.mkdtemp(prefix="dgs", dir="/tmp")
    os.chmod(path, 0o777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victim(tmp_path):
    """A root-only file elsewhere, that no retrieve may change."""
    path = tmp_path / "secret"
    path.write_bytes(b"root only\n")
    path.chmod(0o600)
    return path


def assert_untouched(victim) -> None:
    assert victim.read_bytes() == b"root only\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


# -- links another user planted -----------------------------------------------------------------


@needs_root
def test_links_at_the_names_the_old_code_used_are_ignored(pool, stored, shared, victim):
    key, data = stored
    out = os.path.join(shared, "out.bin")
    planted = os.path.join(shared, f".out.bin.{os.getpid()}.part")  # the old temporary name
    as_nobody("ln", "-s", str(victim), planted)
    pool.retrieve_to_file(key, out)
    assert_untouched(victim)
    assert sha(open(out, "rb").read()) == sha(data)
    assert os.readlink(planted) == str(victim)
    assert sorted(os.listdir(shared)) == sorted([os.path.basename(planted), "out.bin"])


@needs_root
@pytest.mark.parametrize("unnamed", [True, False], ids=["o_tmpfile", "named_temp"])
def test_a_link_at_the_drawn_temporary_name_cannot_redirect_the_write(
        pool, stored, shared, victim, monkeypatch, unnamed):
    """The random name is forced to one another user holds: it is skipped, never followed."""
    key, data = stored
    planted = os.path.join(shared, ".out.bin.taken.part")
    as_nobody("ln", "-s", str(victim), planted)
    drawn = iter(["taken", "taken", "free"])
    monkeypatch.setattr(output_file, "_random_suffix", lambda: next(drawn))
    out = os.path.join(shared, "out.bin")
    with OutputFile(out, unnamed=unnamed) as dest:
        pool.read_into_sink(pool.plan_read(key), sinks.FdSink(dest.fd))
    assert_untouched(victim)
    assert sha(open(out, "rb").read()) == sha(data)
    assert os.readlink(planted) == str(victim)
    assert sorted(os.listdir(shared)) == [".out.bin.taken.part", "out.bin"]


@needs_root
def test_a_link_another_user_planted_at_the_destination_is_refused(pool, stored, shared,
                                                                     victim):
    key, _ = stored
    out = os.path.join(shared, "out.bin")
    as_nobody("ln", "-s", str(victim), out)
    with pytest.raises(FileError, match="symbolic link of another user"):
        pool.retrieve_to_file(key, out)
    assert_untouched(victim)
    assert os.readlink(out) == str(victim)
    assert os.listdir(shared) == ["out.bin"]


def test_a_link_of_ours_is_followed_and_stays(pool, stored, tmp_path):
    key, data = stored
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "model.bin"
    target.write_bytes(b"old")
    target.chmod(0o640)
    link = tmp_path / "model.bin"
    link.symlink_to(target)
    pool.retrieve_to_file(key, str(link))
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert sha(target.read_bytes()) == sha(data)
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(os.listdir(tmp_path / "real")) == ["model.bin"]


def test_a_link_to_nothing_is_refused(pool, stored, tmp_path):
    key, _ = stored
    (tmp_path / "dangling").symlink_to(tmp_path / "missing")
    with pytest.raises(FileError, match="symbolic link to a file that does not exist"):
        pool.retrieve_to_file(key, str(tmp_path / "dangling"))
    assert sorted(os.listdir(tmp_path)) == ["dangling"]


# -- modes and owners ---------------------------------------------------------------------------


def test_an_existing_files_mode_is_kept(pool, stored, tmp_path):
    key, data = stored
    out = tmp_path / "private.bin"
    out.write_bytes(b"old")
    out.chmod(0o600)
    pool.retrieve_to_file(key, str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert sha(out.read_bytes()) == sha(data)


@needs_root
def test_root_keeps_an_existing_files_owner(pool, stored, tmp_path):
    key, data = stored
    out = tmp_path / "theirs.bin"
    out.write_bytes(b"old")
    os.chown(out, 65534, 65534)
    out.chmod(0o640)
    pool.retrieve_to_file(key, str(out))
    st = out.stat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (65534, 65534, 0o640)
    assert sha(out.read_bytes()) == sha(data)


@pytest.mark.parametrize(("umask", "mode"), [("022", 0o644), ("077", 0o600)])
def test_a_new_files_mode_follows_the_umask(grid, stored, tmp_path, umask, mode):
    key, data = stored
    out = tmp_path / "new.bin"
    subprocess.run(["sh", "-c", f'umask {umask} && exec "$0" "$@"', GRID, "memory", "retrieve",
                    key, "--output", str(out)], env=grid.env, check=True, capture_output=True,
                   timeout=300)
    assert stat.S_IMODE(out.stat().st_mode) == mode
    assert sha(out.read_bytes()) == sha(data)


# -- special files ------------------------------------------------------------------------------


def test_a_fifo_is_written_into(grid, stored, tmp_path):
    key, data = stored
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = bytearray()

    def read() -> None:
        with open(fifo, "rb") as f:
            got.extend(f.read())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        grid("memory", "retrieve", key, "--output", fifo)
    finally:
        if reader.is_alive():  # the command failed before opening the FIFO: let the reader go
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=60)
    assert sha(bytes(got)) == sha(data)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert os.listdir(tmp_path) == ["fifo"]


def test_a_fifo_nobody_reads_is_refused_after_the_wait(grid, stored, tmp_path):
    key, _ = stored
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    line = grid.fails("memory", "retrieve", key, "--output", fifo,
                      env={"DISTRIBUTED_GRID_INPUT_WAIT_SECONDS": "0.5"})
    assert "a FIFO nobody read within 0.5 s" in line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["fifo"]


@needs_private_dev
def test_dev_null_is_written_into(grid, stored):
    key, _ = stored
    result = subprocess.run([*READ_ONLY_DEV, GRID, "memory", "retrieve", key, "--output",
                             "/dev/null"], env=grid.env, capture_output=True, timeout=300)
    err = result.stderr.decode()
    assert result.returncode == 0, err
    assert f"wrote {2**20 + 3} bytes of {key} to /dev/null" in err
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


@needs_private_dev
def test_dev_stdout_is_the_commands_output(grid, stored):
    key, data = stored
    result = subprocess.run([*READ_ONLY_DEV, GRID, "memory", "retrieve", key, "--output",
                             "/dev/stdout"], env=grid.env, capture_output=True, timeout=300)
    assert result.returncode == 0, result.stderr.decode()
    assert sha(result.stdout) == sha(data)
    assert len(result.stderr) < 4096  # the bytes did not go to stderr
    assert os.readlink("/dev/stdout") == "/proc/self/fd/1"


# -- failures leave nothing ---------------------------------------------------------------------


def test_a_killed_retrieve_leaves_nothing(grid, blocks, tmp_path):
    """SIGKILL in the middle of the copy (the remote path: slower, so the middle is long)."""
    size = 512 * 2**20
    block_id = blocks.new(size, node="gpu2")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    proc = subprocess.Popen([GRID, "memory", "retrieve", block_id, "--size", str(size),
                             "--output", out_dir / "big.bin"],
                            env={**grid.env, "DISTRIBUTED_GRID_FORCE_REMOTE": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        written = None
        deadline = time.monotonic() + 300
        while written is None and proc.poll() is None and time.monotonic() < deadline:
            written = _bytes_written_into(proc.pid, str(out_dir))
            time.sleep(0.002)
        assert written is not None, (
            f"never saw the retrieve writing (exit {proc.poll()}): {proc.stderr.read()!r}")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=60)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the retrieve ended before it was killed"
    assert 0 < written < size
    assert os.listdir(out_dir) == []


def _bytes_written_into(pid: int, directory: str) -> int | None:
    """How much process ``pid`` has written into a file of ``directory`` it holds open (once
    some is written), else None."""
    fd_dir = f"/proc/{pid}/fd"
    try:
        fds = os.listdir(fd_dir)
    except FileNotFoundError:
        return None
    for fd in fds:
        try:
            if os.readlink(f"{fd_dir}/{fd}").startswith(directory + "/"):
                size = os.stat(f"{fd_dir}/{fd}").st_size
                return size or None
        except FileNotFoundError:
            continue
    return None


@needs_root
def test_an_unwritable_directory_is_one_error_line(grid, stored, tmp_path):
    key, _ = stored
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    result = subprocess.run([*WITHOUT_OVERRIDE, GRID, "memory", "retrieve", key, "--output",
                             locked / "out.bin"], env=grid.env, capture_output=True, timeout=300)
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"error: cannot write {locked}/out.bin: cannot create a file in {locked}: "
        "Permission denied")
    assert os.listdir(locked) == []


@needs_root
def test_a_read_only_file_is_not_replaced(grid, stored, tmp_path):
    key, _ = stored
    out = tmp_path / "read-only.bin"
    out.write_bytes(b"keep me")
    out.chmod(0o444)
    result = subprocess.run([*WITHOUT_OVERRIDE, GRID, "memory", "retrieve", key, "--output",
                             out], env=grid.env, capture_output=True, timeout=300)
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == (
        f"error: cannot write {out}: the file is not writable by this user")
    assert out.read_bytes() == b"keep me"
    assert os.listdir(tmp_path) == ["read-only.bin"]


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                    reason="mounting a private tmpfs needs root and unshare")
def test_a_full_filesystem_leaves_the_old_file(grid, stored, tmp_path):
    """1 MiB + 3 bytes into a 1 MiB tmpfs (mounted in a private namespace) holding the old file."""
    key, _ = stored
    small = tmp_path / "small"
    small.mkdir()
    script = ('mount -t tmpfs -o size=1m tmpfs "$1" && printf old > "$1/out.bin" && '
              '"$0" memory retrieve "$2" --output "$1/out.bin"; code=$?; '
              'cat "$1/out.bin"; echo; ls -A "$1"; exit $code')
    result = subprocess.run(["unshare", "-m", "sh", "-c", script, GRID, str(small), key],
                            env=grid.env, capture_output=True, timeout=300)
    err = result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "error: cannot write the output: No space left on device"
    assert result.stdout.decode().split() == ["old", "out.bin"]
