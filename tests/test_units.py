"""Units without shared memory or Ray: sizes, block ids, errors, the cluster config file."""

from __future__ import annotations

import pickle
import textwrap

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from distributed_grid import errors
from distributed_grid.cluster.config import ClusterConfig, NodeConfig, load_config
from distributed_grid.errors import GridError, InvalidArgument
from distributed_grid.memory.shm.segment import SegmentNotFound
from distributed_grid.names import (
    check_range,
    format_block_id,
    looks_like_block_id,
    parse_block_id,
    validate_key,
    validate_node_name,
)
from distributed_grid.sizes import format_size, parse_size

NODE_NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)

# -- parse_size / format_size ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        (0, 0),
        (1, 1),
        (10485760, 10485760),
        (2**70, 2**70),
        (-5, -5),
        (10.0, 10),
        ("10485760", 10485760),
        ("0", 0),
        ("-5", -5),
        ("+7", 7),
        ("10MB", 10_000_000),
        ("10mb", 10_000_000),
        ("10 MB", 10_000_000),
        ("  10MB  ", 10_000_000),
        ("10M", 10_000_000),
        ("10B", 10),
        ("1kB", 1000),
        ("1KB", 1000),
        ("1k", 1000),
        ("2GB", 2 * 10**9),
        ("3TB", 3 * 10**12),
        ("1KiB", 1024),
        ("1Ki", 1024),
        ("10MiB", 10 * 2**20),
        ("1.5GiB", 1610612736),
        ("1.5gib", 1610612736),
        ("2TiB", 2 * 2**40),
        ("0.5KiB", 512),
        (".5KiB", 512),
        ("1.5kB", 1500),
        ("1.MB", 10**6),
    ],
)
def test_parse_size_accepts(value, expected):
    result = parse_size(value)
    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "abc",
        "MB",
        "10XB",
        "10 M B",
        "1e3",
        "1,000",
        "--5",
        "10MB extra",
        "nan",
        "inf",
        "0x10",
        "½MB",
        None,
        [],
        b"10",
    ],
)
def test_parse_size_refuses_bad_values(value):
    with pytest.raises(InvalidArgument) as info:
        parse_size(value, what="--size")
    assert "--size" in str(info.value)


@pytest.mark.parametrize("value", [True, False])
def test_parse_size_refuses_bools(value):
    with pytest.raises(InvalidArgument):
        parse_size(value)


@pytest.mark.parametrize("value", [1.5, 0.1, -0.5, "1.5", "0.5B", "0.1KiB", "1.0000001kB"])
def test_parse_size_refuses_fractional_bytes(value):
    with pytest.raises(InvalidArgument) as info:
        parse_size(value)
    assert "whole" in str(info.value)


_SCALES = {
    "": 1, "B": 1, "kB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
    "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40,
}


@given(n=st.integers(min_value=-(10**6), max_value=10**6), unit=st.sampled_from(sorted(_SCALES)))
def test_parse_size_of_whole_numbers_with_units(n, unit):
    assert parse_size(f"{n}{unit}") == n * _SCALES[unit]
    assert parse_size(f" {n} {unit.lower()} ") == n * _SCALES[unit]


@pytest.mark.parametrize(
    "value, expected",
    [("1.001kB", 1001), ("1.023kB", 1023), ("0.000123MB", 123), ("9007199254740993", 2**53 + 1)],
)
def test_parse_size_is_exact_for_whole_byte_counts(value, expected):
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    "n, text",
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (10 * 2**20, "10.0 MiB"),
        (1610612736, "1.5 GiB"),
        (2**40, "1.0 TiB"),
        (2**50, "1024.0 TiB"),
        (-2048, "-2.0 KiB"),
    ],
)
def test_format_size(n, text):
    assert format_size(n) == text


@example(1280)  # 1.25 KiB shows as 1.2 KiB: the rounding is at its widest
@given(st.integers(min_value=0, max_value=2**60))
def test_format_size_round_trips_to_within_its_precision(n):
    text = format_size(n)
    back = parse_size(text.replace(" ", "")) if text.endswith(" B") else None
    if back is not None:
        assert back == n
    else:
        number, unit = text.split()
        scale = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit]
        assert 1 <= n / scale < 1024 or unit == "TiB"
        assert abs(float(number) * scale - n) <= 0.0501 * scale  # one decimal, rounded


# -- block ids -------------------------------------------------------------------------------


@given(n=st.integers(min_value=0, max_value=2**80), node=NODE_NAMES)
def test_block_id_round_trips(n, node):
    block_id = format_block_id(n, node)
    assert block_id == f"block_{n}_{node}"
    assert parse_block_id(block_id) == (n, node)
    assert looks_like_block_id(block_id)
    assert format_block_id(*parse_block_id(block_id)) == block_id
    assert validate_node_name(node) == node


@pytest.mark.parametrize(
    "block_id, expected",
    [
        ("block_0_gpu2", (0, "gpu2")),
        ("block_12_head", (12, "head")),
        ("block_3_a_b", (3, "a_b")),
        ("block_3_4_5", (3, "4_5")),
        ("block_7_n1.5", (7, "n1.5")),
        ("block_1_" + "x" * 64, (1, "x" * 64)),
    ],
)
def test_parse_block_id_examples(block_id, expected):
    assert parse_block_id(block_id) == expected


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "block",
        "block_",
        "block_1",
        "block_1_",
        "block__gpu",
        "block_-1_gpu",
        "block_x_gpu",
        "block_1_-gpu",
        "block_1_.gpu",
        "block_1_gpu/2",
        "block_1_gpu 2",
        "Block_1_gpu",
        " block_1_gpu",
        "block_1_gpu ",
        "blocks_1_gpu",
        "block_1.5_gpu",
        "block_1_" + "x" * 65,
        None,
        1,
        b"block_1_gpu",
    ],
)
def test_parse_block_id_rejects(bad):
    with pytest.raises(InvalidArgument) as info:
        parse_block_id(bad)
    assert "block_<n>_<node>" in str(info.value)
    assert not looks_like_block_id(bad)


@pytest.mark.parametrize("bad", ["block_0_gpu2\n", "gpu2\n"])
def test_trailing_newline_is_rejected(bad):
    with pytest.raises(InvalidArgument):
        if bad.startswith("block_"):
            parse_block_id(bad)
        else:
            validate_node_name(bad)


def test_block_number_must_be_ascii_digits():
    with pytest.raises(InvalidArgument):
        parse_block_id("block_\u0663_gpu")  # ARABIC-INDIC DIGIT THREE


# -- errors ----------------------------------------------------------------------------------


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


# -- config files ----------------------------------------------------------------------------


def write(tmp_path, text: str, name: str = "cluster.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_load_config_valid(tmp_path):
    path = write(
        tmp_path,
        """\
        address: 10.0.0.1:6379
        nodes:
          - name: head
            host: 10.0.0.1
            role: head
          - name: gpu2
            host: gpu2.example.internal
            role: worker
            memory: 64GiB
          - name: gpu3
            host: gpu3
            memory: 1000000
        """,
    )
    config = load_config(path)
    assert isinstance(config, ClusterConfig)
    assert config.source == str(path)
    assert config.address == "10.0.0.1:6379"
    assert config.nodes == (
        NodeConfig(name="head", host="10.0.0.1", role="head", memory=None),
        NodeConfig(name="gpu2", host="gpu2.example.internal", role="worker", memory=64 * 2**30),
        NodeConfig(name="gpu3", host="gpu3", role="worker", memory=1_000_000),
    )
    assert config.node("gpu2").memory == 64 * 2**30
    assert config.node("nope") is None
    assert load_config(str(path)) == config


def test_load_config_empty_nodes_list(tmp_path):
    config = load_config(write(tmp_path, "nodes: []\n"))
    assert config.nodes == ()
    assert config.address is None


def test_load_config_bad_yaml_names_the_line(tmp_path):
    path = write(
        tmp_path,
        """\
        nodes:
          - name: head
            host: h1
          - name: gpu: 2
            host: h2
        """,
    )
    with pytest.raises(InvalidArgument) as info:
        load_config(path)
    message = str(info.value)
    assert "line 4" in message
    assert str(path) in message
    assert "YAML" in message


def test_load_config_tab_names_the_line(tmp_path):
    path = write(tmp_path, "nodes:\n  - name: head\n    host: h1\n\n\tbad: 1\n")
    with pytest.raises(InvalidArgument) as info:
        load_config(path)
    assert "line 5" in str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            """\
            nodes:
              - name: head
                host: h1
              - name: gpu2
                host: h2
                colour: red
            """,
            ["nodes[1]", "colour"],
        ),
        (
            """\
            nodes:
              - name: head
                host: h1
                role: boss
            """,
            ["nodes[0].role", "'boss'"],
        ),
        (
            """\
            nodes:
              - name: gpu2
                host: h1
              - name: head
                host: h2
              - name: gpu2
                host: h3
            """,
            ["gpu2", "twice"],
        ),
        (
            """\
            nodes:
              - name: head
            """,
            ["nodes[0].host"],
        ),
        (
            """\
            nodes:
              - host: h1
            """,
            ["nodes[0].name"],
        ),
        (
            """\
            nodes:
              - name: bad name
                host: h1
            """,
            ["nodes[0].name", "'bad name'"],
        ),
        (
            """\
            nodes:
              - name: head
                host: h1
                memory: lots
            """,
            ["nodes[0].memory", "'lots'"],
        ),
        (
            """\
            nodes:
              - name: head
                host: h1
                memory: 0
            """,
            ["nodes[0].memory", "positive"],
        ),
        (
            """\
            nodes:
              - name: head
                host: h1
                memory: true
            """,
            ["nodes[0].memory"],
        ),
        (
            """\
            nodes:
              - name: head
                host: 42
            """,
            ["nodes[0].host"],
        ),
        (
            """\
            nodes:
              - just a string
            """,
            ["nodes[0]"],
        ),
        ("nodes: {head: h1}\n", ["'nodes' list"]),
        ("- a\n- b\n", ["'nodes' list"]),
        ("", ["'nodes' list"]),
        ("address: 5\nnodes: []\n", ["address"]),
    ],
)
def test_load_config_malformed(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(InvalidArgument) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message, message


def test_load_config_missing_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(InvalidArgument) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_load_config_refuses_a_node_name_with_a_newline(tmp_path):
    path = write(tmp_path, 'nodes:\n  - name: "gpu2\\n"\n    host: h1\n')
    with pytest.raises(InvalidArgument):
        load_config(path)


# -- packaging ---------------------------------------------------------------------------------


def test_the_installed_package_says_its_license_types_and_ray_range():
    from importlib import metadata, resources

    from packaging.requirements import Requirement
    from packaging.version import Version

    meta = metadata.metadata("distributed-grid")
    assert meta["License-Expression"] == "Apache-2.0"
    assert resources.files("distributed_grid").joinpath("py.typed").is_file()
    ray = next(Requirement(r) for r in meta.get_all("Requires-Dist") if r.startswith("ray"))
    assert Version(metadata.version("ray")) in ray.specifier  # the Ray under test is in range
    assert Version("3.0") not in ray.specifier  # private Ray APIs: no untested major
