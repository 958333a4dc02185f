"""A /dev/shm of its own for a process: a mount namespace with a private tmpfs; no Ray.

``grid cluster start --nodes gpu1,gpu2 --private-shm`` runs each worker node's raylet (and so its
Ray workers and its store) in such a namespace, so the nodes of one machine share no shared
memory, as nodes on separate machines would not: a block on gpu2 cannot be attached from the
head, and the library must (and does) take the remote path to it.

How, in the process that will start the raylet, before it starts any thread:

1. ``unshare(CLONE_NEWNS)``: a mount namespace of its own (needs CAP_SYS_ADMIN, so root).
   Without that privilege, ``unshare(CLONE_NEWUSER | CLONE_NEWNS)``: a user namespace that maps
   the user to itself, where the kernel allows unprivileged user namespaces; the process then
   holds the capabilities of that namespace, enough to mount a tmpfs in its mount namespace.
2. ``mount --make-rprivate /``: nothing mounted in here shows outside, nor the reverse.
3. ``mount -t tmpfs -o size=SIZE,mode=1777 tmpfs /dev/shm`` (nosuid, nodev).

Every process started from it afterwards inherits the namespace. /tmp and the rest of the file
system stay shared; only /dev/shm differs. The tmpfs, and every segment in it, goes away when
the last process of the namespace ends.

Python 3.11 has no ``os.unshare``: the calls go through libc with ctypes.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os

from distributed_grid.errors import ClusterError
from distributed_grid.memory.shm import layout

SHM_DIR = layout.SHM_DIR
CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
PROBE_SIZE = 2**20


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc, with the calls this module makes looked up once (a forked child of a threaded
    process must not take the dynamic loader's lock again: see :func:`private_shm_refusal`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.unshare, libc.mount  # noqa: B018  (looked up now, kept by the CDLL)
    return libc


def _unshare(flags: int) -> int:
    """``unshare(flags)``; returns 0 or the errno."""
    return 0 if _libc().unshare(flags) == 0 else ctypes.get_errno()


def _c(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _mount(source: str | None, target: str, fstype: str | None, flags: int,
           data: str | None = None) -> None:
    if _libc().mount(_c(source), _c(target), _c(fstype), flags, _c(data)) != 0:
        err = ctypes.get_errno()
        raise ClusterError(f"cannot mount {fstype or 'propagation'} on {target}: "
                           f"{os.strerror(err)}", target=target, errno=err)


def _write(path: str, text: str) -> None:
    with open(path, "w", encoding="ascii") as f:
        f.write(text)


def _enter_user_namespace() -> int:
    """A user namespace mapping this user (and group) to itself, with a mount namespace;
    returns 0 or the errno."""
    uid, gid = os.geteuid(), os.getegid()
    err = _unshare(CLONE_NEWUSER | CLONE_NEWNS)
    if err:
        return err
    try:
        _write("/proc/self/setgroups", "deny")  # needed before an unprivileged gid_map
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError as exc:  # told as the errno, like the calls around it
        return exc.errno or errno.EPERM
    return 0


# The private tmpfs uses 2 MiB pages where a whole one fits in the file (a block's segment),
# 4 KiB ones elsewhere: allocating a 1 GiB block took 0.004 s instead of 0.18 s here, and a
# ``put`` of 1 GiB (allocation, pages, copy) about 0.22 s instead of 0.48 s. The host's own
# /dev/shm keeps the mount options it has (``huge=`` is its administrator's choice).
HUGE_PAGES = "huge=within_size"


def enter_private_shm(size: int) -> str:
    """Move this process into a mount namespace of its own with a ``size``-byte tmpfs on
    /dev/shm; returns how (``mount namespace`` as root, else ``user namespace``).

    Call it while the process has a single thread (the kernel refuses otherwise).

    Raises:
        ClusterError: neither way is allowed here (the message says why).
    """
    how = "mount namespace"
    err = _unshare(CLONE_NEWNS) if os.geteuid() == 0 else errno.EPERM
    if err:
        root_err = err
        how = "user namespace"
        err = _enter_user_namespace()
        if err:
            if err == errno.ENOSPC:  # what the kernel answers at the limit, also when it is 0
                err_text = "none allowed (sysctl user.max_user_namespaces)"
            else:
                err_text = os.strerror(err)
            raise ClusterError(
                "a private /dev/shm needs root, or unprivileged user namespaces, and this "
                f"process has neither (unshare: {os.strerror(root_err)}; user namespace: "
                f"{err_text})", errno=err)
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    options = f"size={size},mode=1777"
    try:  # 2 MiB pages wherever a block has room for them: see HUGE_PAGES
        _mount("tmpfs", SHM_DIR, "tmpfs", MS_NOSUID | MS_NODEV, f"{options},{HUGE_PAGES}")
    except ClusterError as exc:
        if exc.facts.get("errno") != errno.EINVAL:  # EINVAL: a kernel without huge tmpfs
            raise
        _mount("tmpfs", SHM_DIR, "tmpfs", MS_NOSUID | MS_NODEV, options)
    return how


def private_shm_refusal() -> str | None:
    """Why this host cannot give a node a private /dev/shm (None: it can).

    Tried for real, in a forked child that enters a namespace with a 1 MiB tmpfs and exits
    (the namespace and its tmpfs go with it); this process is not changed. The child calls only
    libc functions looked up before the fork (no dynamic loader lock, which another thread of
    this process may have held when it forked).
    """
    _libc()  # looked up before the fork: another thread may hold the loader's lock at the fork
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(read_end)
            try:
                enter_private_shm(PROBE_SIZE)
            except ClusterError as exc:
                os.write(write_end, str(exc).encode()[:4000])
                code = 1
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as f:
            why = f.read().decode(errors="replace")
    finally:
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return why or "trying it failed"


def mount_namespace(pid: int | str = "self") -> str | None:
    """The mount namespace of process ``pid`` (``mnt:[<inode>]``), None if it is gone."""
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def processes_in(namespace: str) -> list[int]:
    """The pids of the processes in mount namespace ``namespace`` (those this user may see)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and mount_namespace(entry) == namespace:
            found.append(int(entry))
    return sorted(found)
