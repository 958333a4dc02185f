"""The cluster config file (``--config``, YAML): what it may say, and one clear error naming the
file and the line for what it may not."""

from __future__ import annotations

import textwrap

import pytest

from distributed_grid.cluster.config import ClusterConfig, NodeConfig, load_config
from distributed_grid.errors import InvalidArgument


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
