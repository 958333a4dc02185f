"""Python run against a small private /dev/shm, never the host's.

``unshare -m`` gives the process a mount namespace of its own, where a 16 MiB tmpfs is mounted
on /dev/shm: filling it fills nothing of the host's, and it vanishes with the process. Needs
root (we run the tests as root) and util-linux's ``unshare``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

needs_small_shm = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("unshare"),
    reason="mounting a private tmpfs needs root and unshare")


def run_on_small_shm(code: str, *args: str, size: str = "16m",
                     timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -c code args...`` with a private ``size`` tmpfs on /dev/shm."""
    script = f'mount -t tmpfs -o size={size} tmpfs /dev/shm && exec {sys.executable} -c "$0" "$@"'
    return subprocess.run(["unshare", "-m", "sh", "-c", script, code, *args],
                          capture_output=True, text=True, timeout=timeout)
