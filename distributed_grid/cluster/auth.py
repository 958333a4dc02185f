"""The clusters' auth token: the secret Ray's token authentication asks of every caller.

Every cluster ``grid`` starts runs Ray with ``RAY_AUTH_MODE=token``: its GCS, raylets and agents
refuse any call that does not carry the cluster's token, so another user of the host (or of the
network) can neither run a task, nor read or change the cluster's key-value store. The token is
random (256 bits), made at the first start and kept in :func:`token_path`, the runtime folder's
``auth_token`` (mode 0600 in a folder only the user can enter).

Which token a process uses, first found first:

1. ``RAY_AUTH_TOKEN``, else the file ``RAY_AUTH_TOKEN_PATH`` names, when the user set one: for
   a host that joins (or reaches) a head started on another machine, with that head's token.
2. This host's token file (:func:`token_path`).
3. Ray's own default, ``~/.ray/auth_token`` (when connecting only: a cluster ``ray start``
   made outside ``grid`` may use it).

Ray reads these variables from the environment: the processes a cluster is started with get
them in theirs (:func:`start_env`, :func:`join_source`), and a process that connects sets them
before it connects (:mod:`distributed_grid.cluster.connection` does, with :func:`sources`).
Ray is imported only to ask a head whether it takes a token (:func:`check_accepted`).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field

from distributed_grid import runtime
from distributed_grid.errors import ClusterError, InvalidArgument

MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENV = "RAY_AUTH_TOKEN"
TOKEN_PATH_ENV = "RAY_AUTH_TOKEN_PATH"
TOKEN_FILE = "auth_token"
# The token file this package pointed RAY_AUTH_TOKEN_PATH at (see :func:`use`): a process
# started from this one inherits both, and must not take that file for one the user chose.
SET_HERE_ENV = "DISTRIBUTED_GRID_AUTH_TOKEN_PATH"


@dataclass(frozen=True)
class TokenSource:
    """Where a token comes from, and the environment that makes Ray use it."""

    where: str  # how a message names it: "$RAY_AUTH_TOKEN" or a file's path
    env: dict[str, str] = field(default_factory=dict)


def token_path() -> str:
    """This host's token file for this user (it may not exist yet)."""
    return os.path.join(runtime.runtime_dir(), TOKEN_FILE)


def ensure_token() -> str:
    """This host's token file, made with a new random token if there is none; returns its path.

    The file appears whole (written aside, then linked into place), so two processes that
    start clusters at once end up with the same token. A file whose mode lets others read it
    is made private again (it is ours: the folder is).
    """
    path = token_path()
    if not os.path.lexists(path):
        aside = f"{path}.{os.getpid()}.tmp"
        fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="ascii") as f:
                f.write(secrets.token_hex(32))
            os.link(aside, path)
        except FileExistsError:
            pass  # another process made it first: theirs is the token
        finally:
            os.unlink(aside)
    _private(path)
    if not _read(path):
        raise ClusterError(f"the auth token file {path} is empty; remove it", path=path)
    return path


def _private(path: str) -> None:
    st = os.lstat(path)
    if st.st_uid != os.getuid():
        raise ClusterError(f"the auth token file {path} belongs to another user; remove it",
                           path=path)
    if st.st_mode & 0o077:
        os.chmod(path, 0o600)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except (FileNotFoundError, IsADirectoryError):
        return ""
    except OSError as exc:
        raise InvalidArgument(f"cannot read the auth token file {path}: {exc.strerror}",
                              path=path) from exc


def user_source() -> TokenSource | None:
    """The token the user set in the environment (``RAY_AUTH_TOKEN``/``RAY_AUTH_TOKEN_PATH``).

    Raises:
        InvalidArgument: ``RAY_AUTH_TOKEN_PATH`` names a file that is missing or empty (Ray
            would abort the process).
    """
    if os.environ.get(TOKEN_ENV, "").strip():
        return TokenSource("$" + TOKEN_ENV, {MODE_ENV: "token"})
    path = os.environ.get(TOKEN_PATH_ENV, "").strip()
    if not path or path == os.environ.get(SET_HERE_ENV):
        return None
    if not _read(path):
        raise InvalidArgument(f"{TOKEN_PATH_ENV}={path}: no token there (missing or empty "
                              "file); put the cluster's token in it or unset it", path=path)
    return TokenSource(path, {MODE_ENV: "token"})


def _file_source(path: str) -> TokenSource:
    return TokenSource(path, {MODE_ENV: "token", TOKEN_PATH_ENV: path})


def start_env() -> dict[str, str]:
    """The environment for the Ray processes of a cluster started here: token auth, with the
    user's token if one is set, else this host's (made now if there is none)."""
    user = user_source()
    return user.env if user is not None else _file_source(ensure_token()).env


def join_source(address: str) -> TokenSource:
    """The token for a Ray node that joins the head at ``address`` (another host's): the
    user's, else this host's token file, which must then be a copy of the head's.

    Raises:
        ClusterError: no token is set and this host has no token file: the head's is needed.
    """
    user = user_source()
    if user is not None:
        return user
    path = token_path()
    if _read(path):
        _private(path)
        return _file_source(path)
    raise ClusterError(
        f"joining the cluster at {address} needs its head's auth token, and none is set here: "
        f"copy the head host's token file ({TOKEN_FILE} in its runtime folder, "
        "$XDG_RUNTIME_DIR/distributed_grid or $TMPDIR/distributed_grid-<uid>) to "
        f"{path} (mode 0600), or set {TOKEN_PATH_ENV} to a copy of it",
        address=address, path=path)


def check_accepted(address: str, source: TokenSource) -> None:
    """Ask the head at ``address`` whether it takes the token of ``source``, in one bounded
    call (``ray start`` would retry for about 20 s, then fail with a traceback).

    Raises:
        ClusterError: the head refuses the token.
    """
    from distributed_grid import _ray

    saved = {name: os.environ.get(name) for name in source.env}
    os.environ.update(source.env)
    try:
        _ray.reload_auth_config()
        refusal = _ray.auth_refusal(address)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if refusal is not None:
        raise ClusterError(f"the cluster at {address} refused the token of {source.where} "
                           f"({refusal}): it needs its head's token", address=address)


def sources() -> list[TokenSource]:
    """The tokens a process that connects may use, in the order it tries them (none when no
    token is set or kept here)."""
    user = user_source()
    if user is not None:
        return [user]
    found = []
    # last, the file a parent process found for itself and put in this one's environment (a
    # child with another TMPDIR has other files of its own, or none)
    inherited = os.environ.get(SET_HERE_ENV, "").strip()
    places = [token_path(), os.path.join(os.path.expanduser("~"), ".ray", "auth_token")]
    for path in dict.fromkeys(places + ([inherited] if inherited else [])):
        try:
            if _read(path):
                found.append(_file_source(path))
        except InvalidArgument:
            continue  # unreadable: not a token this process can offer
    return found


def use(source: TokenSource | None) -> None:
    """Point this process's environment at ``source`` (None: no token, auth off)."""
    if source is None:
        os.environ[MODE_ENV] = "disabled"
        return
    os.environ.update(source.env)
    if TOKEN_PATH_ENV in source.env:  # one of the files found here, not the user's choice
        os.environ[SET_HERE_ENV] = source.env[TOKEN_PATH_ENV]
