"""Every module of the package imports on its own, in a fresh interpreter, and only the Ray edge
brings Ray in.

A package's ``__init__`` runs before any module under it: an import that works only because
another module happened to load first (a circle through a package) fails here by name, and a
module that drifts into importing Ray at import time, below the edge, is caught too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import distributed_grid

PACKAGE = Path(distributed_grid.__file__).parent
# Where Ray is applied: the cluster as Ray shows it, and the store actor's edge. Nothing else
# imports Ray when it is imported (``_ray.py`` imports it inside each function).
RAY_EDGE = {"distributed_grid.cluster.connection", "distributed_grid.memory.node.service.serving"}


def module_names() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_alone_and_ray_only_at_the_edge():
    code = ("import importlib, sys; importlib.import_module(sys.argv[1]); "
            "print('ray' in sys.modules)")
    running = {name: subprocess.Popen([sys.executable, "-c", code, name], text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name in module_names()}
    failed, with_ray = {}, set()
    for name, proc in running.items():
        out, err = proc.communicate(timeout=120)
        if proc.returncode != 0:
            failed[name] = err.strip().splitlines()[-1:]
        elif out.strip() == "True":
            with_ray.add(name)
    assert not failed, failed
    assert with_ray == RAY_EDGE
