"""The cluster as Ray shows it: connecting, the node table, store handles, and Ray's errors.

Only what needs another host comes here; a process whose blocks are all on its own host never
imports this module (nor Ray). :class:`RayCluster` connects on creation, caches the node table
(refreshed on a miss or a Ray error, not on every call) and the store actors' handles. Every wait
for a store is bounded (``wire.METADATA_TIMEOUT`` and its siblings): a store that is alive but
does not answer fails the call with :class:`NodeUnavailable` instead of holding the caller.

Ray's errors become the library's in one place, :func:`ray_errors` (as httpx's
``map_exceptions``): a table of what each Ray error means for what was asked of Ray (a store's
call, the lease actor, a connection), raised ``from`` Ray's. A store's own error (a
:class:`GridError` raised in the actor) comes back as itself.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import ray
from ray.exceptions import (
    ActorUnschedulableError,
    GetTimeoutError,
    NodeDiedError,
    ObjectFetchTimedOutError,
    ObjectLostError,
    RayActorError,
    RayError,
    RayTaskError,
)

from distributed_grid import _ray
from distributed_grid.cluster import auth
from distributed_grid.cluster.config import NODE_LABEL, safe_name
from distributed_grid.cluster.ray_env import LOOPBACK_ENV, is_loopback
from distributed_grid.cluster.target import Target
from distributed_grid.errors import (
    ClusterError,
    GridError,
    NodeNotFound,
    NodeUnavailable,
    VersionMismatch,
)
from distributed_grid.memory.node.service.serving import (
    find_store,
    get_store,
    last_published,
    make_lease,
)
from distributed_grid.records import BlockInfo, NodeInfo
from distributed_grid.runtime import same_address
from distributed_grid.wire import METADATA_TIMEOUT, NAMESPACE, START_TIMEOUT, STORE_PROTOCOL

HEAD_RESOURCE = "node:__internal_head__"


# -- Ray's errors ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Asked:
    """What was asked of Ray, for the error that says it failed.

    ``kind``: ``store`` (a call of node ``node``'s store, waited on for ``timeout`` s),
    ``stores`` (the nodes' stores, started), ``lease`` (this process's lease actor) or
    ``connect`` (to the cluster at ``address``).
    """

    kind: str
    node: str | None = None
    address: str | None = None
    timeout: float | None = None


# Ray's error -> the library's, for each kind of thing asked; the first row that fits is taken.
RAY_ERRORS: tuple[tuple[str, tuple[type[BaseException], ...],
                        Callable[[Asked, BaseException], GridError]], ...] = (
    ("store", (GetTimeoutError,), lambda asked, exc: NodeUnavailable(
        f"the store of node {asked.node} did not answer within {asked.timeout:.0f} s "
        "(unreachable: alive but stopped or overloaded); check `grid cluster status`",
        node=asked.node, timeout=asked.timeout)),
    ("store", (RayActorError, ActorUnschedulableError), lambda asked, exc: NodeUnavailable(
        f"the store of node {asked.node} is unavailable ({type(exc).__name__}); check "
        "`grid cluster status`", node=asked.node)),
    # a chunk the store made, lost with its node before it arrived
    ("store", (ObjectLostError, ObjectFetchTimedOutError, NodeDiedError),
     lambda asked, exc: NodeUnavailable(
         f"a chunk from the store of node {asked.node} was lost on its way "
         f"({type(exc).__name__}): its node is gone", node=asked.node)),
    ("stores", (GetTimeoutError, RayActorError, ActorUnschedulableError),
     lambda asked, exc: ClusterError(
         f"the nodes' stores did not start within {asked.timeout:.0f} s "
         f"({type(exc).__name__})")),
    ("lease", (GetTimeoutError,), lambda asked, exc: ClusterError(
        f"the cluster did not start this process's lease actor within {START_TIMEOUT:.0f} s; "
        "check `grid cluster status`")),
    ("connect", (ConnectionError, RuntimeError, RayError), lambda asked, exc: ClusterError(
        f"cannot connect to the Ray cluster at {asked.address}: {exc}", address=asked.address)),
)


@contextmanager
def ray_errors(asked: Asked) -> Iterator[None]:
    """Turn Ray's errors raised in the block into the library's (see :data:`RAY_ERRORS`).

    A store's own error, which Ray wraps in a :class:`RayTaskError`, is raised as itself; a
    Ray error the table does not name for ``asked.kind`` passes unchanged.
    """
    try:
        yield
    except RayTaskError as exc:
        if isinstance(getattr(exc, "cause", None), GridError):
            raise exc.cause from None
        raise
    except GridError:
        raise  # the library's already (some are ConnectionErrors or RuntimeErrors too)
    except Exception as exc:
        for kind, raised, ours in RAY_ERRORS:
            if kind == asked.kind and isinstance(exc, raised):
                raise ours(asked, exc) from exc
        raise


# -- connecting --------------------------------------------------------------------------------


def connect(target: Target) -> None:
    """Connect this process to the cluster at ``target`` (once; later calls do nothing).

    This is where the process's Ray gets its auth token (see :mod:`distributed_grid.cluster.auth`):
    each token this host knows is offered to the cluster's GCS in one bounded call, and the
    first it accepts is the one Ray connects with.

    Raises:
        ClusterError: the cluster cannot be reached, or refuses every token this host has.
    """
    if ray.is_initialized():
        current = ray.get_runtime_context().gcs_address
        if not same_address(current, target.address):
            raise ClusterError(
                f"this process is connected to the Ray cluster at {current}, not {target.address}:"
                " a process reaches one Ray cluster; use another process for the other one",
                address=target.address)
        return
    if is_loopback(target.address):
        if os.environ.get(LOOPBACK_ENV) != "0":
            _ray.keep_loopback_addresses()
        os.environ[LOOPBACK_ENV] = "0"
    _use_accepted_token(target.address)
    with ray_errors(Asked("connect", address=target.address)):
        ray.init(address=target.address, namespace=NAMESPACE, logging_level="ERROR",
                 log_to_driver=False, configure_logging=True)


def disconnect() -> None:
    """Leave the cluster this process is connected to (what it started stays)."""
    ray.shutdown()


def _use_accepted_token(address: str) -> None:
    """Point this process's Ray at the first token the cluster at ``address`` accepts.

    Raises:
        ClusterError: the cluster refuses every token (or wants one and this host has none).
    """
    tried: list[str] = []
    refusal = None
    for source in auth.sources() or [None]:
        auth.use(source)
        _ray.reload_auth_config()
        with ray_errors(Asked("connect", address=address)):
            refusal = _ray.auth_refusal(address)
        if refusal is None:
            return
        if source is not None:
            tried.append(source.where)
    offered = (f"refused the token of {' and of '.join(tried)}" if tried
               else "wants an auth token, and this host has none")
    raise ClusterError(
        f"the Ray cluster at {address} {offered} ({refusal}); give it the token of the host "
        f"that started it: put it in a file and set {auth.TOKEN_PATH_ENV} to it (or copy it "
        f"to {auth.token_path()})", address=address)


def wait_for_stores(handles: list[Any], timeout: float = START_TIMEOUT) -> list[Any]:
    """Wait until every store of ``handles`` answers (a new store answers once it has written
    its node's record); returns their answers.

    Raises:
        ClusterError: one did not answer within ``timeout`` seconds, or died.
    """
    with ray_errors(Asked("stores", timeout=timeout)):
        return ray.get([handle.ping.remote() for handle in handles], timeout=timeout)


def session_cluster_id() -> str:
    """A short identity of the connected cluster (part of every segment name)."""
    session = ray.get_runtime_context().get_session_name()
    return hashlib.sha1(session.encode()).hexdigest()[:12]


def node_table(include_dead: bool = True) -> list[NodeInfo]:
    """The cluster's nodes, named by label ``grid.node``, else the config file, else host name.

    Alive nodes come first; a dead node is listed unless a node of its name is back.
    """
    from distributed_grid.cluster.config import node_name_for_host

    raw = [n for n in ray.nodes() if include_dead or n.get("Alive")]
    raw.sort(key=lambda n: (not n.get("Alive"), HEAD_RESOURCE not in n.get("Resources", {}),
                            n["NodeID"]))
    taken: set[str] = set()
    result = []
    for n in raw:
        labels = n.get("Labels") or {}
        hostname = n.get("NodeManagerHostname") or n.get("NodeManagerAddress", "node")
        name = labels.get(NODE_LABEL) or node_name_for_host(
            hostname, n.get("NodeManagerAddress", "")) or safe_name(hostname)
        if not n.get("Alive"):
            if name in taken:
                continue  # the node is back, or another of its name was gone before
        else:
            base, i = name, 2
            while name in taken:  # two unlabelled raylets on one host
                name, i = f"{base}-{i}", i + 1
        taken.add(name)
        result.append(NodeInfo(
            name=name, node_id=n["NodeID"], address=n.get("NodeManagerAddress", ""),
            hostname=hostname, alive=bool(n.get("Alive")),
            is_head=HEAD_RESOURCE in (n.get("Resources") or {}) or bool(n.get("IsHeadNode")),
        ))
    return result


class RayCluster:
    """This process's view of the cluster through Ray (connected on creation).

    Args:
        target: the cluster to connect to.
    """

    def __init__(self, target: Target) -> None:
        connect(target)
        self.address = target.address
        self.cluster_id = session_cluster_id()
        self.job_id = _ray.job_id()  # how the stores tell this process's writes (its job)
        self._nodes: dict[str, NodeInfo] | None = None
        self._stores: dict[str, Any] = {}

    # -- nodes ---------------------------------------------------------------------------------

    def nodes(self, refresh: bool = False) -> list[NodeInfo]:
        """Every node of the cluster, alive ones first (cached until a miss or an error)."""
        if self._nodes is None or refresh:
            self._nodes = {n.name: n for n in node_table(include_dead=True)}
        return list(self._nodes.values())

    def node(self, name: str) -> NodeInfo:
        """The alive node called ``name``.

        Raises:
            NodeUnavailable: the node was part of the cluster but is gone.
            NodeNotFound: no node has that name (the message lists the known ones).
        """
        found = {n.name: n for n in self.nodes()}.get(name)
        if found is None or not found.alive:
            found = {n.name: n for n in self.nodes(refresh=True)}.get(name)
        if found is not None and found.alive:
            return found
        if found is not None:
            raise NodeUnavailable(
                f"node {name} is gone from the cluster: its blocks are lost until it returns",
                node=name)
        names = ", ".join(sorted(n.name for n in self.nodes() if n.alive)) or "none"
        raise NodeNotFound(f"no node named {name!r} in the cluster; known nodes: {names}",
                           node=name)

    def head(self) -> NodeInfo:
        """The head node."""
        for refresh in (False, True):
            for node in self.nodes(refresh=refresh):
                if node.is_head and node.alive:
                    return node
        raise ClusterError("the cluster has no head node")

    # -- stores --------------------------------------------------------------------------------

    def store(self, name: str) -> Any:
        """The handle of node ``name``'s store actor (started there if it is not running).

        Raises:
            VersionMismatch: the store runs another version of distributed_grid.
        """
        handle = self._stores.get(name)
        if handle is None:
            node = self.node(name)
            handle, timeout = find_store(node.name), METADATA_TIMEOUT
            if handle is None:
                handle = get_store(node.name, node.node_id, self.cluster_id, self.head().name)
                timeout = START_TIMEOUT  # its worker process starts first
            served = self.result(handle.ping.remote(), name, timeout)
            if served.get("protocol") != STORE_PROTOCOL:
                raise VersionMismatch(
                    f"the store of node {name} runs another version of distributed_grid "
                    f"(from {served.get('package', 'an older installation')}); the cluster was "
                    "started by another installation: stop it (`grid cluster stop` there) and "
                    "run again", node=name,
                )
            self._stores[name] = handle
        return handle

    def submit(self, node: str, method: str, *args: Any) -> Any:
        """Start a call of the store of ``node``; returns its ObjectRef."""
        return getattr(self.store(node), method).remote(*args)

    def call(self, node: str, method: str, *args: Any, timeout: float = METADATA_TIMEOUT) -> Any:
        """Call a method of the store of ``node`` and wait for its result (``timeout`` s)."""
        return self.result(self.submit(node, method, *args), node, timeout)

    @staticmethod
    def ready(ref: Any, timeout: float) -> bool:
        """Whether a call's result is there, waited for at most ``timeout`` seconds."""
        return bool(ray.wait([ref], timeout=timeout)[0])

    def result(self, ref: Any, node: str, timeout: float = METADATA_TIMEOUT) -> Any:
        """``ray.get`` of a store call, with Ray's errors turned into the library's own
        (:func:`ray_errors`): the store's own errors come back as themselves, a store that does
        not answer within ``timeout`` seconds or is gone is :class:`NodeUnavailable`.
        """
        try:
            with ray_errors(Asked("store", node=node, timeout=timeout)):
                return ray.get(ref, timeout=timeout)
        except NodeUnavailable:
            self._nodes = None  # the node table may have changed
            self._stores.pop(node, None)  # the store is found again on the next call
            raise

    @staticmethod
    def put(value: Any) -> Any:
        """Put a value (a chunk of bytes) into the object store; returns its ObjectRef."""
        return ray.put(value)

    # -- what a node left behind ---------------------------------------------------------------

    @staticmethod
    def last_published(node: str) -> list[BlockInfo]:
        """The block list a node's store published last (for a node that is gone)."""
        return last_published(node)

    @staticmethod
    def make_lease() -> tuple[str, Any]:
        """A lease actor owned by this process: non-persistent blocks live while it does.

        Raises:
            ClusterError: the lease actor did not start within ``START_TIMEOUT``.
        """
        with ray_errors(Asked("lease")):
            return make_lease()

    @staticmethod
    def end_lease(handle: Any) -> None:
        ray.kill(handle)
