"""The ``grid`` command run as a user types it: :class:`Grid` against the session's cluster,
:class:`FreshGrid` in a TMPDIR of its own, where it sees only the clusters it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

GRID = os.path.join(os.path.dirname(sys.executable), "grid")


class Grid:
    """Runs the ``grid`` command as a user types it, against the session's cluster."""

    def __init__(self, address: str) -> None:
        self.env = dict(os.environ, RAY_ADDRESS=address)

    def __call__(self, *args: str, input: bytes | None = None, env: dict | None = None,
                 check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [GRID, *map(str, args)], capture_output=True, input=input,
            env={**self.env, **(env or {})}, timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"grid {' '.join(map(str, args))} exited {result.returncode}:\n"
                f"{result.stderr.decode(errors='replace')}"
            )
        return result

    def fails(self, *args: str, **kw) -> str:
        """Run a command that must fail; returns its stderr, checked to be one error line."""
        result = self(*args, check=False, **kw)
        err = result.stderr.decode(errors="replace")
        assert result.returncode != 0, f"grid {' '.join(map(str, args))} succeeded: {err}"
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and lines[-1].startswith("error: "), err
        assert "Traceback" not in err, err
        return lines[-1]

    def listing(self) -> list[dict]:
        return json.loads(self("memory", "list-objects", "--json").stdout)


class FreshGrid:
    """``grid`` in a private TMPDIR with no RAY_ADDRESS: it sees only the clusters it starts."""

    def __init__(self, cwd) -> None:
        self.tmp = tempfile.mkdtemp(prefix="dgf", dir="/tmp")
        self.cwd = cwd
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env["TMPDIR"] = self.tmp
        self.cluster_id: str | None = None

    def remember_cluster(self) -> dict:
        """The cluster's status; notes its id so the fixture can check its segments are gone."""
        status = json.loads(self.out("cluster", "status", "--json"))
        self.cluster_id = status["cluster_id"]
        return status

    def __call__(self, *args, env=None, check=True) -> subprocess.CompletedProcess:
        result = subprocess.run([GRID, *map(str, args)], capture_output=True, cwd=self.cwd,
                                env={**self.env, **(env or {})}, timeout=600)
        if check and result.returncode != 0:
            raise AssertionError(f"grid {' '.join(map(str, args))} exited "
                                 f"{result.returncode}:\n{result.stderr.decode(errors='replace')}")
        return result

    def out(self, *args, **kw) -> str:
        return self(*args, **kw).stdout.decode().strip()
