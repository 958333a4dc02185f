"""Removing a TMPDIR a test gave ``grid``, and what Ray keeps for it outside it."""

from __future__ import annotations

import os
import shutil


def remove_temp_dir(tmp: str) -> None:
    """Remove ``tmp`` and the short folder Ray's temp folder moves to when the runtime folder
    under ``tmp`` has too long a path for Ray's sockets (``/tmp/dg-<uid>-<digest>``; with a
    short ``tmp`` there is none)."""
    from distributed_grid.cluster.ray_env import short_folder

    runtime_folder = os.path.join(tmp, f"distributed_grid-{os.getuid()}")
    shutil.rmtree(short_folder(runtime_folder), ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)
