"""What a cluster keeps in /dev/shm (segments, node catalogs, the key directory), found by its
cluster id, and the sweep that removes it after a test."""

from __future__ import annotations

import os


def cluster_files(cluster_id: str) -> list[str]:
    """What a cluster keeps in /dev/shm: segments, node catalogs, the key directory."""
    return sorted(e for e in os.listdir("/dev/shm")
                  if e.split(".")[0] in ("dg", "dgc", "dgk") and e.split(".")[1:2] == [cluster_id])


def sweep(cluster_id: str) -> list[str]:
    """Remove everything a cluster keeps in /dev/shm; returns what was there."""
    left = cluster_files(cluster_id)
    for entry in left:
        try:
            os.unlink(os.path.join("/dev/shm", entry))
        except FileNotFoundError:
            pass
    return left
