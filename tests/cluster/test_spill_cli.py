"""``grid memory spill`` and ``restore``, and ``grid cluster start``'s spill options, as a user
types them, against the session's cluster, whose nodes have no spill folder: every mistake is one
``error:`` line and changes nothing. Spilling itself, on a node short of memory with a spill
folder: ``tests/multihost/test_spill.py`` (the CLI and the pool) and ``tests/unit/test_spills.py``
(the node's store).
"""

from __future__ import annotations

import json


def test_spill_on_a_node_without_a_spill_folder_says_so_and_changes_nothing(
        grid, blocks, unique, tmp_path):
    (tmp_path / "f").write_bytes(b"spill me")
    block_id = blocks.track(grid("memory", "store", unique, tmp_path / "f").stdout.decode()
                            .strip())
    before = [b for b in grid.listing() if b["block_id"] == block_id]
    line = grid.fails("memory", "spill", unique)
    assert "has no spill folder" in line and "--spill-dir" in line, line
    assert "has no spill folder" in grid.fails("memory", "spill", block_id)
    assert [b for b in grid.listing() if b["block_id"] == block_id] == before
    assert before[0]["state"] == "memory"
    restored = json.loads(grid("memory", "restore", unique, "--json").stdout)
    assert restored["block_id"] == block_id and restored["state"] == "memory"
    assert grid("memory", "retrieve", unique, "--output", "-").stdout == b"spill me"


def test_spill_of_nothing_is_one_line(grid):
    assert "no block holds key 'no-such-key'" in grid.fails("memory", "spill", "no-such-key")
    assert "no block" in grid.fails("memory", "restore", "block_999999_gpu1")


def test_cluster_start_refuses_bad_spill_options_before_starting_anything(grid, tmp_path):
    folder = str(tmp_path / "spill")
    for args, expected in (
            (["--spill-dir", folder], "--spill-dir and --spill-quota go together"),
            (["--spill-quota", "1GiB"], "--spill-dir and --spill-quota go together"),
            (["--spill-dir", folder, "--spill-quota", "0"], "quota must be 1 byte or more"),
            (["--spill-dir", folder, "--spill-quota", "1GiB", "--spill-high", "1.5"],
             "--spill-high must be a fraction"),
            (["--spill-dir", folder, "--spill-quota", "1GiB", "--spill-high", "0.5",
              "--spill-low", "0.7"], "0 < low <= high <= 1")):
        line = grid.fails("cluster", "start", "--loopback", *args)  # (a second: refused too)
        assert expected in line, (args, line)
    assert not (tmp_path / "spill").exists()
