"""The README's Poetry install and the guide's ``poetry run grid memory ...`` lines, from a fresh
``git clone`` of this repository.

It needs Poetry and the package index, so it runs only with ``DISTRIBUTED_GRID_TEST_POETRY=1``
(``.ci/run`` runs it as a step of its own): about a minute and 150 MB of downloads. Poetry is the
one on PATH, else one installed with pip into a virtual environment of the test's own. Where
Poetry cannot be had, or the index cannot be reached, the test is skipped and says why.

Everything happens in temporary folders: the clone (from the last commit: uncommitted changes
are not in it), Poetry's virtual environment inside it (``POETRY_VIRTUALENVS_IN_PROJECT``), its
cache and config (the user's Poetry folders are never touched), and the ``TMPDIR`` of the
cluster, which ``poetry run grid cluster start --nodes gpu1,gpu2`` starts so that the guide's
block ids (``block_0_gpu2``) mean what the guide says, and ``grid cluster stop`` ends, even when
the test fails.

Poetry's PyPI source resolves through the index's per-release JSON API. Some mirrors serve only
the simple index and answer that API with 404, so Poetry reports an existing release as "not
found". Then, and only then, the clone is given the index's simple API as its source
(``poetry source add``, the only change made to it), the install is tried again, and a warning
says so.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
from helpers.dev_shm import sweep
from helpers.grid import GRID

REPO = Path(__file__).resolve().parents[2]
ENABLE_ENV = "DISTRIBUTED_GRID_TEST_POETRY"

pytestmark = pytest.mark.skipif(
    os.environ.get(ENABLE_ENV) != "1",
    reason=f"the Poetry test downloads the dependencies: set {ENABLE_ENV}=1 to run it "
           "(.ci/run does)")

# What a failed download or resolution says when the index is out of reach.
_UNREACHABLE = re.compile(
    r"Max retries exceeded|Failed to establish|Name or service not known|Temporary failure in "
    r"name resolution|Network is unreachable|Connection refused|ConnectTimeout|ReadTimeout|"
    r"timed out|Could not fetch URL|SSLError|ProxyError|No matching distribution", re.I)
_NOT_FOUND = re.compile(r"Package \[?[\w.-]+\]? \(?[\w.]*\)? ?not found", re.I)


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float,
         data: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, env=env, input=data, capture_output=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{' '.join(cmd)} did not finish within {timeout:.0f} s") from exc


def _text(result: subprocess.CompletedProcess) -> str:
    return (result.stdout + result.stderr).decode(errors="replace")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _unreachable_line(text: str) -> str | None:
    return next((line.strip() for line in text.splitlines() if _UNREACHABLE.search(line)), None)


def _private_env(tmp: Path) -> dict[str, str]:
    """The environment of every command: Poetry's folders in ``tmp``, nothing of the suite's."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "PYTHONHOME", "RAY_ADDRESS",
                        "XDG_RUNTIME_DIR")
           and not k.startswith(("POETRY_", "DISTRIBUTED_GRID_"))}
    cluster_tmp = tempfile.mkdtemp(prefix="dgp", dir="/tmp")  # short: Ray's socket paths
    env.update(TMPDIR=cluster_tmp, POETRY_VIRTUALENVS_IN_PROJECT="true",
               POETRY_CACHE_DIR=str(tmp / "poetry-cache"),
               POETRY_CONFIG_DIR=str(tmp / "poetry-config"),
               POETRY_DATA_DIR=str(tmp / "poetry-data"), POETRY_NO_INTERACTION="1")
    return env


def _poetry(tmp: Path, env: dict[str, str]) -> list[str]:
    """The Poetry command: the one on PATH, else one pip installs into ``tmp``."""
    found = shutil.which("poetry", path=env.get("PATH"))
    if found is not None:
        return [found]
    tool = tmp / "poetry-tool"
    made = _run([sys.executable, "-m", "venv", str(tool)], tmp, env, 120)
    if made.returncode != 0:
        pytest.skip(f"poetry not installed (no venv for it: {_last_line(_text(made))})")
    pip = _run([str(tool / "bin" / "python"), "-m", "pip", "install", "poetry"],
               tmp, env, 900)
    if pip.returncode != 0:
        why = _unreachable_line(_text(pip))
        if why is not None:
            pytest.skip(f"poetry not installed: package index unreachable: {why}")
        pytest.skip(f"poetry not installed: pip install poetry failed: {_last_line(_text(pip))}")
    return [str(tool / "bin" / "poetry")]


def _simple_index_url() -> str:
    """The simple API of the index pip uses by default (named by pip, not spelled here)."""
    from pip._internal.models.index import PyPI

    return PyPI.simple_url


def _install(poetry: list[str], clone: Path, env: dict[str, str]) -> None:
    """``poetry install`` in the clone, as the README says (see the module's docstring for the
    one fallback)."""
    used = _run([*poetry, "env", "use", sys._base_executable], clone, env, 300)
    assert used.returncode == 0, _text(used)
    first = _run([*poetry, "install"], clone, env, 1200)
    if first.returncode == 0:
        return
    output = _text(first)
    why = _unreachable_line(output)
    if why is not None:
        pytest.skip(f"package index unreachable: {why}")
    missing = _NOT_FOUND.search(output)
    assert missing is not None, f"poetry install failed:\n{output}"
    source = _run([*poetry, "source", "add", "--priority=primary", "index-simple-api",
                   _simple_index_url()], clone, env, 120)
    assert source.returncode == 0, _text(source)
    again = _run([*poetry, "install"], clone, env, 1200)
    if again.returncode != 0:
        why = _unreachable_line(_text(again))
        if why is not None:
            pytest.skip(f"package index unreachable: {why}")
        raise AssertionError(f"poetry install failed, also through the simple API:\n"
                             f"{_text(again)}\nfirst try:\n{output}")
    warnings.warn(f"poetry install through the index's simple API: its per-release JSON API "
                  f"failed ({missing.group(0)})", stacklevel=1)


def _make(path: Path, size: int, seed: int) -> bytes:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    path.write_bytes(data)
    return data


@pytest.fixture
def poetry_clone(tmp_path):
    """``(grid, clone)``: ``grid("memory", "list-objects")`` runs ``poetry run grid memory
    list-objects`` in a fresh clone where ``poetry install`` ran, with a cluster of nodes gpu1
    and gpu2 of its own; the cluster is stopped afterwards and its /dev/shm files checked gone."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    env = _private_env(tmp_path)
    clone = tmp_path / "clone"
    problems: list[str] = []
    started = False
    cluster_id = None
    try:
        cloned = _run(["git", "clone", "--quiet", str(REPO), str(clone)], tmp_path, env, 300)
        assert cloned.returncode == 0, _text(cloned)
        poetry = _poetry(tmp_path, env)

        def grid(*args: str, check: bool = True) -> subprocess.CompletedProcess:
            result = _run([*poetry, "run", "grid", *args], clone, env, 300)
            if check:
                assert result.returncode == 0, \
                    f"poetry run grid {' '.join(args)} exited {result.returncode}:\n{_text(result)}"
            return result

        _install(poetry, clone, env)
        started = True
        address = grid("cluster", "start", "--nodes", "gpu1,gpu2").stdout.decode()
        assert address.startswith("127.0.0.1:"), address
        cluster_id = json.loads(grid("cluster", "status", "--json").stdout)["cluster_id"]
        yield grid, clone
    finally:
        if started:
            stop = _run([*poetry, "run", "grid", "cluster", "stop"], clone, env, 300)
            if stop.returncode != 0:  # Poetry's venv is broken: the suite's grid stops it by pid
                problems.append(f"poetry run grid cluster stop:\n{_text(stop)}")
                _run([GRID, "cluster", "stop"], tmp_path, env, 300)
            left = sweep(cluster_id) if cluster_id is not None else []
            if left:
                problems.append(f"files left in /dev/shm after grid cluster stop: {left}")
        shutil.rmtree(env["TMPDIR"], ignore_errors=True)
    assert not problems, "\n".join(problems)


def test_guide_poetry_lines_from_a_fresh_clone(poetry_clone):
    run, clone = poetry_clone

    def out(*args: str) -> str:
        return run(*args).stdout.decode().strip()

    version = run("--version").stdout.decode()
    assert version.startswith("grid (distributed_grid) "), version

    # 1. Allocate Memory
    assert out("memory", "allocate", "10485760") == "block_0_gpu1"
    assert out("memory", "allocate", "5242880", "--node", "gpu2") == "block_0_gpu2"
    # 2. Store Data
    weights = _make(clone / "model_weights.pt", 3_000_000, seed=1)
    checkpoint = _make(clone / "checkpoint.pt", 70_001, seed=2)
    mymodel_block = out("memory", "store", "mymodel", "model_weights.pt")
    assert re.fullmatch(r"block_[0-9]+_(gpu1|gpu2)", mymodel_block), mymodel_block
    assert out("memory", "store", "checkpoint", "checkpoint.pt", "--block-id", "block_0_gpu2",
               "--offset", "1024") == "block_0_gpu2"
    # 3. Retrieve Data
    expected = bytes(1024) + checkpoint
    assert run("memory", "retrieve", "block_0_gpu2").stdout == expected  # a pipe: raw bytes
    run("memory", "retrieve", "block_0_gpu2", "--output", "retrieved_model.pt")
    assert (clone / "retrieved_model.pt").read_bytes() == expected
    chunk = run("memory", "retrieve", "block_0_gpu2", "--size", "1048576", "--offset", "0")
    assert chunk.stdout == expected + bytes(1048576 - len(expected))
    assert run("memory", "retrieve", "mymodel").stdout == weights
    # 4. List Memory Blocks
    table = out("memory", "list-objects")
    for line in ("block_0_gpu1", "block_0_gpu2 ", "checkpoint@1024+70001", "mymodel@0+3000000"):
        assert line in table, table
    # 5. Deallocate Memory
    run("memory", "deallocate", "block_0_gpu2")
    listing = json.loads(run("memory", "list-objects", "--json").stdout)
    assert sorted(b["block_id"] for b in listing) == sorted({"block_0_gpu1", mymodel_block})

    # Data Processing Pipeline
    part1 = _make(clone / "part1.csv", 40_000, seed=3)
    part2 = _make(clone / "part2.csv", 1_234, seed=4)
    assert out("memory", "allocate", "104857600").startswith("block_")
    run("memory", "store", "results", "part1.csv", "--block-id", "block_0_gpu1",
        "--offset", "0")
    run("memory", "store", "results", "part2.csv", "--block-id", "block_0_gpu1",
        "--offset", "50000")
    assert run("memory", "retrieve", "results").stdout == part1 + part2

    # A mistake changes nothing: one error line, exit 1, no traceback, the listing as it was.
    before = json.loads(run("memory", "list-objects", "--json").stdout)
    bad = run("memory", "deallocate", "block_0_gpu2", check=False)
    err = bad.stderr.decode(errors="replace")
    assert bad.returncode == 1 and "Traceback" not in err, err
    assert _last_line(err) == "error: no block block_0_gpu2 on node gpu2", err
    assert json.loads(run("memory", "list-objects", "--json").stdout) == before
