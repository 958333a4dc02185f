"""Where the Ray processes started here listen and keep their files; no Ray.

**Addresses.** A cluster is named by its head's GCS address, ``HOST:PORT``. A cluster that this
package starts for one host runs on loopback (127.0.0.1). Ray replaces 127.0.0.1 with the host's
outward address unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (:data:`LOOPBACK_ENV`) is set in
every process before Ray is imported; :mod:`distributed_grid.cluster.connection` sets it when it
connects to a loopback address, and the processes started here get it in their environment.

**Environment.** Every Ray process started here runs with Ray's token auth
(:mod:`distributed_grid.cluster.auth`) and keeps Ray's session folders in :func:`ray_temp_dir`
(:func:`ray_env` gives both).

**Ray's temp folder.** Ray keeps a session folder per cluster there: logs, and each node's AF_UNIX
sockets (``session_<date>_<time>_<µs>_<pid>/sockets/plasma_store.<n>``, and ``raylet.<n>``). Ray
makes its session folders writable by everyone, so the temp folder sits in a folder nobody else
can enter: ``ray/`` in the user's runtime folder (:func:`distributed_grid.runtime.runtime_dir`,
mode 0700). A socket's path holds at most 107 bytes, and under a long ``TMPDIR`` Ray's would not
fit (Ray then fails to start its nodes). Then the temp folder is ``ray/`` in a short folder of the
same kind instead, ``/tmp/dg-<uid>-<digest of the runtime folder's path>`` (made mode 0700; one
that is not this user's own folder is refused, never used). Both are worked out from the
runtime folder alone, so every process that shares it (the supervisor of a one-host cluster, a
worker node that joins later, a command that reads the head's address) finds the same one.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat

from distributed_grid import runtime
from distributed_grid.cluster import auth
from distributed_grid.errors import ClusterError, InvalidArgument

LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

# -- addresses ---------------------------------------------------------------------------------


def split_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of ``HOST:PORT``.

    Raises:
        InvalidArgument: ``address`` is not ``HOST:PORT``.
    """
    address = address.removeprefix("ray://")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise InvalidArgument(f"invalid cluster address {address!r}: use HOST:PORT")
    return host, int(port)


def answers(address: str, timeout: float = 1.0) -> bool:
    """Whether something listens at ``address`` (a TCP connect; no Ray)."""
    try:
        with socket.create_connection(split_address(address), timeout=timeout):
            return True
    except OSError:
        return False


def is_loopback(address: str) -> bool:
    """Whether ``address`` is on loopback (a cluster for this host alone)."""
    host, _ = split_address(address)
    return host in ("localhost", "::1") or host.startswith("127.")


def free_port() -> int:
    """A TCP port free on this host now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the environment ---------------------------------------------------------------------------


def ray_env(join: str | None = None) -> dict[str, str]:
    """The variables every Ray process started here runs with: token auth (this host's token,
    or for a node that joins the head at ``join`` that head's) and :func:`ray_temp_dir`.

    Raises:
        ClusterError: no private temp folder can be had (see :func:`ray_temp_dir`).
    """
    token = auth.start_env() if join is None else auth.join_source(join).env
    # Ray's temp folder is RAY_TMPDIR/ray
    return {**token, "RAY_TMPDIR": os.path.dirname(ray_temp_dir())}


def recorded_address(temp_root: str | None = None) -> str | None:
    """The address Ray recorded for the latest cluster started with its temp folder, if any.

    Args:
        temp_root: Ray's temp folder; None for Ray's default (where ``ray start`` run by hand
            records its cluster).
    """
    if temp_root is None:
        base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
        temp_root = os.path.join(base, "ray")
    try:
        with open(os.path.join(temp_root, "ray_current_cluster"), encoding="utf-8") as f:
            text = f.read().strip()
    except FileNotFoundError:
        return None
    return text or None


# -- Ray's temp folder -------------------------------------------------------------------------

SOCKET_PATH_MAX = 107  # bytes of an AF_UNIX socket's path on Linux (sun_path[108], with its NUL)
SHORT_BASE = "/tmp"  # where the short temp folder goes when the runtime folder's path is too long
_SESSION = "/session_2000-01-01_00-00-00_000000_"  # Ray's session name, up to its pid
_SOCKET = "/sockets/plasma_store.999"  # its longest socket name (a node's number after the dot)


def longest_socket_path(temp_dir: str) -> int:
    """Bytes of the longest socket path Ray makes in the temp folder ``temp_dir``."""
    try:
        with open("/proc/sys/kernel/pid_max", encoding="ascii") as f:
            pid_digits = len(str(int(f.read()) - 1))
    except (OSError, ValueError):
        pid_digits = 7  # Linux's most: 4194304
    return len(temp_dir.encode()) + len(_SESSION) + pid_digits + len(_SOCKET)


def ray_temp_dir() -> str:
    """Ray's temp folder (sessions, logs, sockets) for the Ray processes started here: ``ray/``
    in the runtime folder, or in a short private folder when Ray's socket paths there would be
    too long (see the module's docstring).

    Raises:
        ClusterError: the short folder is not a folder of this user's, or cannot be made.
    """
    home = runtime.runtime_dir()
    inside = os.path.join(home, "ray")
    if longest_socket_path(inside) <= SOCKET_PATH_MAX:
        return inside
    short = short_folder(home)
    why = (f"Ray's socket paths under {inside} would be longer than the {SOCKET_PATH_MAX} bytes "
           "a socket's path may have, and")
    try:
        os.makedirs(short, mode=0o700, exist_ok=True)
        st = os.lstat(short)
    except OSError as exc:
        raise ClusterError(f"{why} the short folder {short} for them cannot be made "
                           f"({exc.strerror}); set TMPDIR to a shorter folder", path=short) from exc
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ClusterError(f"{why} the short folder {short} for them is not a folder of this "
                           "user's; remove it or set TMPDIR to a shorter folder", path=short)
    if st.st_mode & 0o077:
        os.chmod(short, 0o700)
    return os.path.join(short, "ray")


def short_folder(runtime_folder: str) -> str:
    """The short folder that holds Ray's temp folder for the runtime folder ``runtime_folder``
    when its own path is too long: ``/tmp/dg-<uid>-<digest of that path>``."""
    digest = hashlib.sha256(runtime_folder.encode()).hexdigest()[:12]
    return os.path.join(SHORT_BASE, f"dg-{os.getuid()}-{digest}")
