"""The error classes: their built-in bases, their facts, and pickling (errors cross Ray as
pickles); the key and range checks that raise them."""

from __future__ import annotations

import pickle

import pytest

from distributed_grid import errors
from distributed_grid.errors import GridError
from distributed_grid.memory.shm.segment import SegmentNotFound
from distributed_grid.names import check_range, validate_key

BUILTIN_BASE = {
    "GridError": Exception,
    "InvalidArgument": ValueError,
    "OutOfBounds": ValueError,
    "NotFound": LookupError,
    "BlockNotFound": LookupError,
    "KeyNotFound": LookupError,
    "NodeNotFound": LookupError,
    "KeyConflict": Exception,
    "KeyBusy": Exception,
    "CopiesChanged": Exception,
    "WriteInProgress": TimeoutError,
    "StoreFull": MemoryError,
    "NodeUnavailable": ConnectionError,
    "ClusterError": RuntimeError,
    "VersionMismatch": RuntimeError,
    "FileError": OSError,
}
ERROR_CLASSES = [getattr(errors, name) for name in errors.__all__] + [SegmentNotFound]


def test_every_error_class_is_covered():
    assert sorted(errors.__all__) == sorted(BUILTIN_BASE)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), GridError)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_errors_pickle_to_the_same_class_and_message(cls, protocol):
    message = f"cannot do {cls.__name__}: asked 10 bytes, 5 allowed"
    original = cls(message)
    copy = pickle.loads(pickle.dumps(original, protocol=protocol))
    assert type(copy) is cls
    assert str(copy) == message
    assert copy.message == message
    assert copy.args == original.args
    assert isinstance(copy, GridError)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_errors_are_grid_errors_and_their_builtin_base(cls):
    base = BUILTIN_BASE.get(cls.__name__, LookupError)  # SegmentNotFound is a NotFound
    error = cls("message")
    assert isinstance(error, GridError)
    assert isinstance(error, base)
    assert str(error) == "message"
    with pytest.raises(base):
        raise error


def test_error_hierarchy():
    assert issubclass(errors.OutOfBounds, errors.InvalidArgument)
    for cls in (errors.BlockNotFound, errors.KeyNotFound, errors.NodeNotFound, SegmentNotFound):
        assert issubclass(cls, errors.NotFound)
    assert not issubclass(errors.KeyConflict, (ValueError, LookupError, OSError))
    assert issubclass(errors.KeyBusy, errors.KeyConflict)


@pytest.mark.parametrize("protocol", [0, 2, pickle.HIGHEST_PROTOCOL])
def test_errors_carry_their_facts_as_attributes_across_pickling(protocol):
    original = errors.OutOfBounds("cannot write 5 bytes at offset 8 into block_0_gpu2 (size 10)",
                                  block_id="block_0_gpu2", offset=8, length=5, block_size=10)
    copy = pickle.loads(pickle.dumps(original, protocol=protocol))
    assert type(copy) is errors.OutOfBounds
    assert (copy.block_id, copy.offset, copy.length, copy.block_size) == ("block_0_gpu2", 8, 5, 10)
    assert copy.facts == original.facts == {"block_id": "block_0_gpu2", "offset": 8, "length": 5,
                                            "block_size": 10}
    assert str(copy) == str(original)


def test_range_errors_name_their_facts():
    with pytest.raises(errors.OutOfBounds) as info:
        check_range("block_3_gpu1", 100, 90, 20, "write")
    assert "cannot write 20 bytes at offset 90 into block_3_gpu1 (size 100)" in str(info.value)
    assert info.value.facts == {"block_id": "block_3_gpu1", "offset": 90, "length": 20,
                                "block_size": 100}
    with pytest.raises(errors.OutOfBounds, match="offset must be 0 or more"):
        check_range("block_3_gpu1", 100, -1, 1, "read")
    with pytest.raises(errors.InvalidArgument, match="whole number of bytes"):
        check_range("block_3_gpu1", 100, 1.5, 1, "read")
    check_range("block_3_gpu1", 100, 90, 10, "read")  # exactly to the end fits


@pytest.mark.parametrize("key", ["", "a\0b", "k" * 1025, None, 5, b"bytes"])
def test_invalid_keys_are_refused(key):
    with pytest.raises(errors.InvalidArgument, match="invalid key") as info:
        validate_key(key)
    assert info.value.key == key


def test_pickled_error_keeps_its_cause_free_message():
    try:
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise errors.KeyNotFound("no key 'k'") from exc
    except errors.KeyNotFound as exc:
        copy = pickle.loads(pickle.dumps(exc))
    assert type(copy) is errors.KeyNotFound
    assert str(copy) == "no key 'k'"
