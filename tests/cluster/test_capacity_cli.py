"""The room for new blocks through the CLI: ``grid cluster status`` names the limit that sets
it, and an allocation bigger than the host's memory can back (smaller than /dev/shm's free
bytes) is refused with that limit's name. The arithmetic and the library's refusal:
``test_capacity.py`` in tests/unit/. The ``half_memory_reserved`` fixture is the root conftest's.
"""

from __future__ import annotations

import json

import pytest

from distributed_grid.memory.shm import capacity, layout

HEADER = layout.HEADER_SIZE


def test_cli_names_the_limit_that_refused(grid, half_memory_reserved):
    env = {capacity.RESERVE_ENV: str(half_memory_reserved)}

    def gpu1(status: dict) -> dict:
        return next(n for n in status["nodes"] if n["node"] == "gpu1")

    usual = gpu1(json.loads(grid("cluster", "status", "--json",
                                 env={capacity.RESERVE_ENV: ""}).stdout))
    halved = gpu1(json.loads(grid("cluster", "status", "--json", env=env).stdout))
    assert halved["limited_by"] == "memory" and halved["mem_available"] > 0
    assert halved["free_for_blocks"] < usual["free_for_blocks"]
    table = grid("cluster", "status", env=env).stdout.decode()
    assert "MEM AVAILABLE" in table and "(memory)" in table
    # more than either reserve lets a block have, less than /dev/shm's free bytes: refused
    # by whichever process allocates (a store actor knows nothing of this test's reserve)
    shm_room = halved["shm_free"] - halved["shm_reserve"] - HEADER
    room = max(usual["free_for_blocks"], halved["free_for_blocks"])
    if not room < shm_room:
        pytest.skip("/dev/shm is smaller than what the host's memory backs")
    size = (room + shm_room) // 2
    for where in (["--node", "gpu1"], []):
        line = grid.fails("memory", "allocate", size, *where, env=env)
        assert "memory available" in line and capacity.RESERVE_ENV in line, line
    bad = grid.fails("memory", "allocate", "1MB", "--node", "gpu1",
                     env={capacity.RESERVE_ENV: "lots"})
    assert bad.startswith(f"error: {capacity.RESERVE_ENV} 'lots' is not a size"), bad
