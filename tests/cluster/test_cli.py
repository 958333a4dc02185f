"""The ``grid`` command run as a subprocess, the way a user types it, on the session cluster."""

from __future__ import annotations

import hashlib
import json
import os

import pytest


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_file(path, size: int, seed: int = 0) -> bytes:
    data = (hashlib.sha256(str(seed).encode()).digest() * (size // 32 + 1))[:size]
    path.write_bytes(data)
    return data


def run_on_terminal(grid, args, stream: str):
    """Run ``grid ARGS`` with ``stream`` ("stdout" or "stderr") on a pseudo-terminal.

    Returns the finished process (the other stream captured) and what the terminal showed.
    """
    import pty
    import subprocess
    import sys

    controller, terminal = pty.openpty()
    other = "stderr" if stream == "stdout" else "stdout"
    try:
        proc = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "grid"), *map(str, args)],
            env=grid.env, timeout=300, **{stream: terminal, other: subprocess.PIPE},
        )
        os.close(terminal)
        terminal = -1
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
        if terminal != -1:
            os.close(terminal)
    return proc, shown.decode(errors="replace").replace("\r\n", "\n")


def block_of(listing: list[dict], block_id: str) -> dict:
    return next(b for b in listing if b["block_id"] == block_id)


@pytest.mark.parametrize("size", [0, 1, 4095, 12_345, 1_048_579])
@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_store_retrieve_round_trip(grid, blocks, tmp_path, unique, size, remote):
    env = {"DISTRIBUTED_GRID_FORCE_REMOTE": "1"} if remote else {}
    data = write_file(tmp_path / "in.bin", size, seed=size)
    block_id = blocks.track(
        grid("memory", "store", unique, tmp_path / "in.bin", env=env).stdout.decode().strip()
    )
    grid("memory", "retrieve", block_id, "--output", tmp_path / "out.bin", env=env)
    assert sha((tmp_path / "out.bin").read_bytes()) == sha(data)
    piped = grid("memory", "retrieve", block_id, env=env).stdout
    assert sha(piped) == sha(data)
    by_key = grid("memory", "retrieve", unique, env=env).stdout
    assert sha(by_key) == sha(data)


@pytest.mark.parametrize("remote", [False, True], ids=["local", "remote"])
def test_256_mib_round_trip(grid, blocks, tmp_path, unique, remote):
    env = {"DISTRIBUTED_GRID_FORCE_REMOTE": "1"} if remote else {}
    size = 256 * 2**20 + 7
    data = os.urandom(size)
    (tmp_path / "big.bin").write_bytes(data)
    block_id = blocks.new(size, node="gpu1")
    grid("memory", "store", unique, tmp_path / "big.bin", "--block-id", block_id, env=env)
    grid("memory", "retrieve", block_id, "--output", tmp_path / "back.bin", env=env)
    assert sha((tmp_path / "back.bin").read_bytes()) == sha(data)


def test_blocks_and_keys_survive_across_processes(grid, blocks, tmp_path, unique):
    block_id = blocks.track(grid("memory", "allocate", "2MiB", "--node", "gpu2").stdout
                            .decode().strip())
    assert block_id.startswith("block_") and block_id.endswith("_gpu2")
    (tmp_path / "a").write_bytes(b"alpha")
    grid("memory", "store", unique, tmp_path / "a", "--block-id", block_id, "--offset", "100")
    entry = block_of(grid.listing(), block_id)
    assert entry["size"] == 2 * 2**20
    assert entry["used"] == 105
    assert entry["keys"] == {unique: [[100, 5]]}
    assert grid("memory", "retrieve", unique).stdout == b"alpha"
    assert grid("memory", "retrieve", block_id, "--offset", "100").stdout == b"alpha"


def test_sizes_with_units(grid, blocks):
    block_id = blocks.track(grid("memory", "allocate", "1.5KiB").stdout.decode().strip())
    assert block_of(grid.listing(), block_id)["size"] == 1536
    block_id = blocks.track(grid("memory", "allocate", "10MB").stdout.decode().strip())
    assert block_of(grid.listing(), block_id)["size"] == 10_000_000


def test_allocate_without_node_prefers_a_worker(grid, blocks):
    block_id = blocks.track(grid("memory", "allocate", "4096").stdout.decode().strip())
    assert block_of(grid.listing(), block_id)["node"] in ("gpu1", "gpu2")


def test_store_same_key_again_replaces_it(grid, blocks, tmp_path, unique):
    (tmp_path / "v1").write_bytes(b"version-one")
    (tmp_path / "v2").write_bytes(b"v2")
    block_id = blocks.track(grid("memory", "store", unique, tmp_path / "v1").stdout.decode()
                            .strip())
    again = blocks.track(grid("memory", "store", unique, tmp_path / "v2").stdout.decode()
                         .strip())
    assert again != block_id and again.endswith(block_id[block_id.rindex("_"):])  # its node
    assert grid("memory", "retrieve", unique).stdout == b"v2"
    listed = grid.listing()
    assert block_of(listed, again)["keys"] == {unique: [[0, 2]]}
    assert block_id not in [b["block_id"] for b in listed]  # the old version's block went


def test_pipeline_extents_read_back_in_order(grid, blocks, tmp_path, unique):
    part1, part2 = b"id,value\n1,a\n", b"2,b\n3,c\n"
    (tmp_path / "part1.csv").write_bytes(part1)
    (tmp_path / "part2.csv").write_bytes(part2)
    block_id = blocks.new(104857600, node="gpu1")
    grid("memory", "store", unique, tmp_path / "part1.csv", "--block-id", block_id,
         "--offset", "0")
    grid("memory", "store", unique, tmp_path / "part2.csv", "--block-id", block_id,
         "--offset", "50000")
    assert grid("memory", "retrieve", unique).stdout == part1 + part2
    assert grid("memory", "retrieve", unique, "--offset", "3", "--size", "12").stdout == (
        part1 + part2)[3:15]
    entry = block_of(grid.listing(), block_id)
    assert entry["keys"][unique] == [[0, len(part1)], [50000, len(part2)]]
    assert entry["used"] == 50000 + len(part2)


def test_list_objects_is_a_table(grid, blocks, unique, tmp_path):
    (tmp_path / "f").write_bytes(b"x" * 10)
    block_id = blocks.track(grid("memory", "store", unique, tmp_path / "f").stdout.decode()
                            .strip())
    out = grid("memory", "list-objects").stdout.decode()
    header = out.splitlines()[0].split()
    assert header[:5] == ["BLOCK", "ID", "NODE", "COPIES", "SIZE"]
    row = next(line for line in out.splitlines() if line.startswith(block_id + " "))
    assert f"{unique}@0+10" in row and row.split()[-2:] == ["ok", "memory"]


def test_deallocate_frees_block_and_keys(grid, tmp_path, unique):
    (tmp_path / "f").write_bytes(b"bytes")
    block_id = grid("memory", "store", unique, tmp_path / "f").stdout.decode().strip()
    done = grid("memory", "deallocate", block_id)
    assert done.stdout == b"" and block_id in done.stderr.decode()  # prose stays off stdout
    assert all(b["block_id"] != block_id for b in grid.listing())
    assert "no block" in grid.fails("memory", "retrieve", block_id)
    assert "no block or key" in grid.fails("memory", "retrieve", unique)
    assert "no block" in grid.fails("memory", "deallocate", block_id)


def test_block_numbers_are_never_reused(grid):
    first = grid("memory", "allocate", "4096", "--node", "gpu1").stdout.decode().strip()
    grid("memory", "deallocate", first)
    second = grid("memory", "allocate", "4096", "--node", "gpu1").stdout.decode().strip()
    grid("memory", "deallocate", second)
    n1, n2 = int(first.split("_")[1]), int(second.split("_")[1])
    assert n2 > n1


# -- bad input: one line, non-zero exit, nothing changed -----------------------------------------


@pytest.fixture
def filled_block(grid, blocks, tmp_path, unique):
    """A 4096-byte block on gpu2 holding key ``unique`` at 1024..1536, and its bytes."""
    block_id = blocks.new(4096, node="gpu2")
    data = write_file(tmp_path / "owned", 512, seed=7)
    grid("memory", "store", unique, tmp_path / "owned", "--block-id", block_id, "--offset",
         "1024")
    return block_id, data


def assert_unchanged(pool, before: list[dict], block_id: str, data: bytes) -> None:
    """The store is as before: same listing (what list-objects --json prints), same bytes."""
    assert pool.list_blocks() == before
    assert pool.read(block_id, size=len(data), offset=1024) == data


def test_list_objects_json_is_the_library_listing(grid, pool, filled_block):
    assert grid.listing() == json.loads(json.dumps([b.to_json() for b in pool.list_blocks()]))


BAD_INPUTS = [
    (["memory", "allocate", "0"], "positive"),
    (["memory", "allocate", "-5"], "positive"),
    (["memory", "allocate", "lots"], "not a size"),
    (["memory", "allocate", "1000TB"], "the most any node can hold is"),
    (["memory", "allocate", "4096", "--node", "gpu9"], "known nodes: "),
    (["memory", "retrieve", "nosuchkey_xyz"], "no block or key"),
    (["memory", "retrieve", "block_999_gpu1"], "no block block_999_gpu1"),
    (["memory", "retrieve", "block_0_nosuchnode"], "no node named"),
    (["memory", "deallocate", "block_999_gpu2"], "no block"),
    (["memory", "deallocate", "not-a-block"], "block_<n>_<node>"),
    (["memory", "store", "k", "/nonexistent/file.bin"], "no such file"),
]


@pytest.mark.parametrize("args,expected", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_and_changes_nothing(grid, pool, filled_block, args, expected):
    block_id, data = filled_block
    before = pool.list_blocks()
    line = grid.fails(*args)
    assert expected in line, line
    assert_unchanged(pool, before, block_id, data)


def test_bad_ranges_on_a_block(grid, pool, filled_block, tmp_path, unique):
    block_id, data = filled_block
    before = pool.list_blocks()
    (tmp_path / "five").write_bytes(b"12345")
    checks = [
        (["memory", "store", "other", tmp_path / "five", "--block-id", block_id, "--offset",
          "4092"], "at most 4 bytes fit"),
        (["memory", "store", "other", tmp_path / "five", "--block-id", block_id, "--offset",
          "1500"], f"belong to key '{unique}'"),
        (["memory", "store", "other", tmp_path / "five", "--block-id", block_id, "--offset=-1"],
         "offset must be 0 or more"),
        (["memory", "retrieve", block_id, "--offset=-1"], "offset must be 0 or more"),
        (["memory", "retrieve", block_id, "--size", "5000"], "(size 4096)"),
        (["memory", "retrieve", block_id, "--offset", "5000"], "past the end"),
        (["memory", "retrieve", unique, "--size", "513"], "at most 512 bytes"),
        (["memory", "retrieve", block_id, "--output", tmp_path / "no" / "dir" / "f"],
         "cannot write"),
        (["memory", "retrieve", block_id, "--output", tmp_path], "is a directory"),
        (["memory", "store", "other", tmp_path, "--block-id", block_id], "not a regular file"),
        (["memory", "store", unique, tmp_path / "five", "--block-id", block_id, "--offset",
          "1030"], "another extent of key"),
    ]
    for args, expected in checks:
        line = grid.fails(*args)
        assert expected in line, (args, line)
        assert_unchanged(pool, before, block_id, data)


def test_unreadable_input_file(grid, pool, filled_block, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their mode")
    block_id, data = filled_block
    (tmp_path / "secret").write_bytes(b"x")
    os.chmod(tmp_path / "secret", 0)
    before = pool.list_blocks()
    assert "cannot read" in grid.fails("memory", "store", "k", tmp_path / "secret")
    assert_unchanged(pool, before, block_id, data)


def test_force_overwrites_another_key(grid, filled_block, tmp_path, unique):
    block_id, _ = filled_block
    (tmp_path / "new").write_bytes(b"NEW")
    grid("memory", "store", "intruder" + unique, tmp_path / "new", "--block-id", block_id,
         "--offset", "1100", "--force")
    keys = block_of(grid.listing(), block_id)["keys"]
    assert keys == {"intruder" + unique: [[1100, 3]]}
    assert grid("memory", "retrieve", block_id, "--offset", "1100", "--size", "3").stdout == b"NEW"


def test_a_failed_auto_store_leaves_no_block(grid, tmp_path):
    before = grid.listing()
    grid.fails("memory", "store", "k", tmp_path / "missing.bin")
    assert grid.listing() == before


def test_preview_on_a_terminal(grid, blocks, tmp_path, unique):
    (tmp_path / "t.txt").write_bytes(b"hello preview\n")
    block_id = blocks.track(grid("memory", "store", unique, tmp_path / "t.txt").stdout.decode()
                            .strip())
    proc, text = run_on_terminal(grid, ["memory", "retrieve", block_id], "stdout")
    assert proc.returncode == 0, proc.stderr
    assert f"{block_id}: 14 bytes from offset 0" in text
    assert "hello preview" in text


def test_cluster_status_lists_nodes(grid):
    status = json.loads(grid("cluster", "status", "--json").stdout)
    names = {n["node"] for n in status["nodes"]}
    assert {"head", "gpu1", "gpu2"} <= names
    for node in status["nodes"]:
        assert node["shm_total"] > 0 and 0 <= node["shm_free"] <= node["shm_total"]
    table = grid("cluster", "status").stdout.decode()
    assert "gpu2" in table and "SHM FREE" in table


def test_help_speaks_the_guides_spelling(grid):
    out = grid("memory", "--help")
    text = out.stdout.decode()
    assert out.stderr == b""  # no "INFO: Showing help" line
    commands = {line.split()[0] for line in text.splitlines() if line.startswith("  ")}
    assert {"allocate", "store", "retrieve", "list-objects", "deallocate"} <= commands
    assert "list_objects" not in text
    store = grid("memory", "store", "--help").stdout.decode()
    assert store.startswith("usage: grid memory store KEY FILE_PATH [--block-id BLOCK_ID]")
    assert "Type:" not in store and "Optional[" not in store and "--json JSON" not in store
    assert "  --json     " in store  # a switch: no value shown
    retrieve = grid("memory", "retrieve", "-h").stdout.decode()
    assert "BLOCK_ID_OR_KEY" in retrieve


def test_big_store_shows_progress_on_a_terminal(grid, blocks, tmp_path, unique):
    from distributed_grid.cli.format import PROGRESS_MIN_BYTES

    data = os.urandom(PROGRESS_MIN_BYTES + 1)
    (tmp_path / "big").write_bytes(data)
    proc, text = run_on_terminal(grid, ["memory", "store", unique, tmp_path / "big"], "stderr")
    block_id = blocks.track(proc.stdout.decode().strip())
    assert proc.returncode == 0
    assert "store [" in text and "100%" in text, text
    assert grid("memory", "retrieve", block_id).stdout == data


# -- strict names ------------------------------------------------------------------------------


def test_a_block_id_has_one_spelling(grid, pool, blocks, tmp_path):
    block_id = blocks.new(4096, node="gpu2")
    number = block_id.split("_")[1]
    padded = block_id.replace(f"_{number}_", f"_000{number}_", 1)
    before = grid.listing()
    for args in (["memory", "retrieve", padded], ["memory", "deallocate", padded]):
        line = grid.fails(*args)
        assert "no leading zeros" in line and f"did you mean {block_id}?" in line, line
    assert grid.listing() == before  # the padded spelling freed nothing


def test_keys_with_control_characters_cannot_forge_rows(grid, pool, blocks, unique):
    block_id = blocks.new(4096, node="gpu1")
    forged = f"{unique}\nblock_999_gpu1  gpu1  1.0 GiB"
    pool.write(block_id, b"x", key=forged)
    table = grid("memory", "list-objects").stdout.decode()
    rows = [line for line in table.splitlines() if block_id in line]
    assert len(rows) == 1 and "\\n" in rows[0]
    assert "block_999_gpu1" not in {line.split()[0] for line in table.splitlines() if line}
    assert forged in {k for b in grid.listing() for k in b["keys"]}  # --json keeps it exact


def test_a_file_that_does_not_know_its_size_is_refused(grid, unique):
    before = grid.listing()
    line = grid.fails("memory", "store", unique, "/proc/self/status")
    assert "does not know its own size" in line
    assert grid.listing() == before  # no block allocated for nothing


def test_address_option_reaches_the_given_cluster_only(grid, cluster_address, tmp_path):
    from distributed_grid.cluster import auth

    # nothing else could point at the cluster: no RAY_ADDRESS, no record; only its token
    private = {"TMPDIR": str(tmp_path), "RAY_ADDRESS": "", "RAY_AUTH_TOKEN_PATH": auth.token_path()}
    listed = json.loads(grid("memory", "list-objects", "--json", "--address", cluster_address,
                             env=private).stdout)
    assert {b["block_id"] for b in listed} == {b["block_id"] for b in grid.listing()}
    before = grid.listing()
    line = grid.fails("memory", "allocate", "4096", "--address", "127.0.0.1:9", env=private)
    assert line.startswith("error: no Ray cluster answers at 127.0.0.1:9")
    assert grid.listing() == before
    runtime_dir = tmp_path / f"distributed_grid-{os.getuid()}"
    assert not (runtime_dir / "started.json").exists()  # no embedded cluster started instead


def test_retrieve_to_a_file_reports_as_json(grid, tmp_path, unique, blocks):
    (tmp_path / "f").write_bytes(b"0123456789")
    blocks.track(grid("memory", "store", unique, tmp_path / "f").stdout.decode().strip())
    out = grid("memory", "retrieve", unique, "--output", tmp_path / "g", "--offset", "2",
               "--json")
    assert json.loads(out.stdout) == {"source": unique, "output": str(tmp_path / "g"),
                                      "bytes": 8, "offset": 2}
    assert (tmp_path / "g").read_bytes() == b"23456789"
    assert "--json describes a retrieve to --output FILE" in grid.fails(
        "memory", "retrieve", unique, "--json")
