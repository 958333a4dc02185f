"""Python objects under keys: put_object / get_object through cloudpickle."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from distributed_grid.errors import InvalidArgument, KeyConflict, KeyNotFound


def test_object_round_trips_on_the_host_and_through_ray(pool, remote_pool, unique):
    scale = 3

    def model(x):  # a closure: cloudpickle carries what plain pickle cannot
        return x * scale

    obj = {"weights": np.arange(6, dtype="f4").reshape(2, 3), "fn": model, "name": "m\u00e9"}
    result = pool.put_object(unique, obj, node="gpu2")
    try:
        assert result.block.slab and result.block_id.endswith("_gpu2")  # small: in a slab
        for reader in (pool, remote_pool):
            got = reader.get_object(unique)
            np.testing.assert_array_equal(got["weights"], obj["weights"])
            assert got["fn"](2) == 6 and got["name"] == "m\u00e9"
    finally:
        pool.delete(unique)


def test_object_replaced_in_place_when_it_fits(pool, unique):
    first = pool.put_object(unique, list(range(1000)))
    try:
        again = pool.put_object(unique, "small")
        assert pool.find_key(unique).block_id == again.block_id
        assert pool.get_object(unique) == "small"
        with pytest.raises(KeyConflict):
            pool.put_object(unique, bytes(first.block.size + 1))
        assert pool.get_object(unique) == "small"  # the refused write changed nothing
    finally:
        pool.delete(unique)


def test_what_cannot_be_pickled_is_refused_and_nothing_is_stored(pool, unique):
    before = {b.block_id for b in pool.list_blocks()}
    with pytest.raises(InvalidArgument, match="cannot pickle"):
        pool.put_object(unique, threading.Lock())
    assert pool.find_key(unique) is None
    assert {b.block_id for b in pool.list_blocks()} == before


def test_bytes_and_objects_are_not_mistaken_for_each_other(pool, unique):
    with pytest.raises(KeyNotFound):
        pool.get_object(unique)
    arr = pool.put(unique + "a", np.zeros(4))
    obj = pool.put_object(unique + "o", [1, 2])
    assert arr.block_id == obj.block_id  # both small: one slab of their node
    try:
        with pytest.raises(InvalidArgument, match="does not hold an object"):
            pool.get_object(unique + "a")
        with pytest.raises(InvalidArgument, match="get_object"):
            pool.get(unique + "o")
        assert pool.get_object(unique + "o") == [1, 2]
    finally:
        pool.delete(unique + "a")
        pool.delete(unique + "o")
