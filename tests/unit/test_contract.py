"""The pool's protocols against what keeps them: every method of
:class:`~distributed_grid.memory.client.nodes.Node` and
:class:`~distributed_grid.memory.client.nodes.Directory` exists, with the protocol's parameters,
on each implementation, and on the store actor that serves the remote ones (a directory method
as ``dir_<name>``). The remote forwarders name the actor's methods by the functions themselves,
so a forwarder of a method the actor lacks fails at import; this checks the rest: the names
the protocols promise, and their parameters."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest

from distributed_grid.memory.client.nodes import Directory, Node, NodeStore
from distributed_grid.memory.client.remote_node import RemoteDirectory, RemoteNode
from distributed_grid.memory.node.local_node import LocalNode
from distributed_grid.memory.node.service.actor import StoreActor
from distributed_grid.memory.node.service.directory import KeyDirectory


def methods(protocol: type) -> list[str]:
    """The methods a protocol declares (its own and its protocol bases')."""
    names = set()
    for cls in protocol.__mro__:
        if cls in (object,) or cls.__name__ == "Protocol" or cls.__module__ == "typing":
            continue
        names |= {n for n, v in vars(cls).items()
                  if inspect.isfunction(v) and not n.startswith("_")}
    return sorted(names)


def parameters(func: Callable[..., Any]) -> list[tuple[str, Any, bool]]:
    """Each parameter after ``self``: its name, its kind, and whether it has a default."""
    params = list(inspect.signature(func).parameters.values())[1:]
    return [(p.name, p.kind, p.default is not inspect.Parameter.empty) for p in params]


def keeps(protocol_method: Callable[..., Any], method: Callable[..., Any]) -> None:
    """``method`` takes the protocol's parameters, in order, and anything more is optional."""
    wanted, got = parameters(protocol_method), parameters(method)
    assert got[:len(wanted)] == wanted, (protocol_method.__qualname__, got, wanted)
    assert all(has_default for _, _, has_default in got[len(wanted):]), got


def test_the_protocols_say_what_the_pool_uses():
    assert set(methods(NodeStore)) < set(methods(Node))
    assert "allocate" in methods(NodeStore) and "drain" in methods(Node)
    assert "claim" in methods(Directory)


@pytest.mark.parametrize("kind", [LocalNode, RemoteNode], ids=lambda k: k.__name__)
@pytest.mark.parametrize("name", methods(Node))
def test_both_kinds_of_node_keep_every_method(kind, name):
    keeps(getattr(Node, name), getattr(kind, name))


@pytest.mark.parametrize("kind", [LocalNode, RemoteNode], ids=lambda k: k.__name__)
def test_both_kinds_of_node_say_which_they_are(kind):
    assert isinstance(kind.is_local, bool)


@pytest.mark.parametrize("name", methods(NodeStore))
def test_the_store_actor_serves_every_store_method(name):
    keeps(getattr(NodeStore, name), getattr(StoreActor, name))


@pytest.mark.parametrize("kind", [KeyDirectory, RemoteDirectory], ids=lambda k: k.__name__)
@pytest.mark.parametrize("name", methods(Directory))
def test_both_directories_keep_every_method(kind, name):
    keeps(getattr(Directory, name), getattr(kind, name))


@pytest.mark.parametrize("name", methods(Directory))
def test_the_head_store_serves_every_directory_method(name):
    keeps(getattr(Directory, name), getattr(StoreActor, f"dir_{name}"))


def test_every_remote_forwarder_calls_a_method_of_the_actor():
    """A forwarder's body names the actor's method it calls: the same method it keeps."""
    for kind, prefix, protocol in ((RemoteNode, "", NodeStore),
                                   (RemoteDirectory, "dir_", Directory)):
        for name in methods(protocol):
            source = inspect.getsource(getattr(kind, name))
            assert f"StoreActor.{prefix}{name}," in source or \
                f"StoreActor.{prefix}{name})" in source, (kind.__name__, name)
