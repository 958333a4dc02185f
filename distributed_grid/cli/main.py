"""``grid``: the command line, a python-fire tree over the library.

``grid memory allocate | store | retrieve | list-objects | delete | deallocate | gc`` and
``grid cluster start | stop | status``. The command line is checked against the command's
signature before anything runs (``cli_grammar.py``: a mismatch is its usage and one ``error:``
line, exit code 2); each command then parses its values (they arrive as typed), calls the
library, and formats the result; a :class:`~distributed_grid.errors.GridError` becomes one line
``error: ...`` on stderr and exit code 1. Heavy imports (Ray, numpy) happen inside the commands
so ``grid --help`` is instant.
"""

from __future__ import annotations

import json as _json
import os
import sys
from typing import Any

from distributed_grid.cli.format import (
    Progress,
    block_table,
    node_table,
    preview,
    printable,
    sweep_table,
)
from distributed_grid.cli.grammar import (
    HELP_FLAGS,
    UsageError,
    as_typed,
    check,
    commands_of,
    help_text,
)
from distributed_grid.errors import GridError, InvalidArgument

_OUT = None  # the command's real stdout once Ray is about to load (see _guard_stdout)
_STDOUT_PATHS = ("/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")  # --output - by other names


def _out():
    """Where the command's own output goes."""
    return _OUT if _OUT is not None else sys.stdout


def _guard_stdout() -> None:
    """Keep Ray's messages out of the command's output.

    Ray's driver prints cluster events (such as "(raylet) The node ... has been marked dead") to
    stdout, which would corrupt ``--json`` output and the raw bytes of ``retrieve > FILE``. The
    command keeps a private copy of stdout for its own output and points file descriptor 1 (and
    ``sys.stdout``) at stderr, where Ray's messages are harmless.
    """
    global _OUT
    if _OUT is not None:
        return
    sys.stdout.flush()
    _OUT = os.fdopen(os.dup(1), "w", encoding=sys.stdout.encoding, errors="replace")
    os.dup2(2, 1)
    sys.stdout = sys.stderr


def _pool(config: Any = None, address: Any = None):
    from distributed_grid.memory.pool import MemoryPool

    _guard_stdout()
    return MemoryPool(None if address is None else str(address),
                      config=None if config is None else str(config))


def _size(value: Any, what: str) -> int:
    from distributed_grid.sizes import parse_size

    return parse_size(value, what)


def _optional_int(value: Any, what: str) -> int | None:
    return None if value is None else _size(value, what)


def _flag(value: Any, what: str) -> bool:
    if isinstance(value, bool):
        return value
    raise InvalidArgument(f"--{what} is a switch: give it without a value")


def _path(value: Any, what: str) -> str:
    """A file named on the command line; an empty one is refused (it would name the current
    directory, or nothing)."""
    path = str(value)
    if not path:
        raise InvalidArgument(f"{what} is empty: give a file path")
    return path


def _emit(data: Any) -> None:
    print(_json.dumps(data, indent=2, sort_keys=True, default=str), file=_out())


class MemoryCommands:
    """Blocks of shared memory on the cluster's nodes."""

    @as_typed
    def allocate(self, size_in_bytes: Any, node: str | None = None, json: bool = False,
                 config: str | None = None, address: str | None = None) -> None:
        """Allocate a block; prints its id (block_<n>_<node>).

        Args:
            size_in_bytes: bytes (10485760) or with a unit (10MB, 1.5GiB).
            node: the node to allocate on; default: the worker with the most free memory.
            json: print the block's info as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT); default: the config's, the running one,
                or the embedded local cluster.
        """
        size = _size(size_in_bytes, "size")
        if size <= 0:
            raise InvalidArgument(f"size must be a positive number of bytes, got {size_in_bytes!r}")
        info = _pool(config, address).allocate(size, node=None if node is None else str(node))
        _emit(info.to_json()) if _flag(json, "json") else print(info.block_id, file=_out())

    @as_typed
    def store(self, key: Any, file_path: Any, block_id: str | None = None, offset: Any = 0,
              force: bool = False, json: bool = False, config: str | None = None,
              address: str | None = None) -> None:
        """Store a file's bytes under KEY; without --block-id a block is allocated for it.

        Args:
            key: the name to store the bytes under.
            file_path: the file to read; - for standard input, read to its end (a new block
                fits exactly what arrived; nothing arriving is an error; a file named - is ./-).
                A FIFO is read the same way once its writer wrote (within 30 s, or
                $DISTRIBUTED_GRID_INPUT_WAIT_SECONDS).
            block_id: an existing block to write into.
            offset: where in the block the bytes go (with --block-id).
            force: overwrite bytes that belong to another key.
            json: print the result as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        offset = _size(offset, "offset")
        path = _path(file_path, "FILE_PATH")
        pool = _pool(config, address)
        block = None if block_id is None else str(block_id)
        force = _flag(force, "force")
        with Progress("store", None) as bar:
            if path == "-":  # standard input (a file named - is ./-)
                if sys.stdin is not None and sys.stdin.isatty():
                    print("reading standard input to its end (Ctrl-D ends it)", file=sys.stderr)
                result = pool.store_stream(str(key), 0, block_id=block, offset=offset,
                                           force=force, progress=bar.update,
                                           on_size=bar.expect)
            else:
                result = pool.store_file(str(key), path, block_id=block, offset=offset,
                                         force=force, progress=bar.update, on_size=bar.expect)
        if _flag(json, "json"):
            _emit(result.to_json())
            return
        print(result.block_id, file=_out())
        verb = "allocated and stored" if result.allocated else "stored"
        source = "standard input" if path == "-" else path
        print(f"{verb} {result.length} bytes of {source} as {result.key!r} in "
              f"{result.block_id} at offset {result.offset}", file=sys.stderr)

    @as_typed
    def retrieve(self, block_id: Any, output: str | None = None, size: Any = None,
                 offset: Any = 0, json: bool = False, config: str | None = None,
                 address: str | None = None) -> None:
        """Retrieve a block's (or a key's) bytes: to --output, raw to a pipe, or a preview.

        Args:
            block_id: a block id (block_0_gpu2) or a key.
            output: a file to write the bytes to; - writes them to standard output (even a
                terminal).
            size: how many bytes; default: up to the end of the block's furthest write.
            offset: where to start.
            json: with --output FILE: print what was written as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        from distributed_grid.memory.io import sinks

        target = str(block_id)
        size_n, offset_n = _optional_int(size, "size"), _size(offset, "offset")
        output = None if output is None else _path(output, "--output")
        to_stdout = output in ("-", *_STDOUT_PATHS)
        as_json = _flag(json, "json")
        if as_json and (output is None or to_stdout):
            raise InvalidArgument("--json describes a retrieve to --output FILE; without one "
                                  "the bytes themselves are the output")
        pool = _pool(config, address)
        pieces = pool.plan_read(target, size_n, offset_n)
        total = sum(p.length for p in pieces)
        if to_stdout:
            # the raw bytes into the command's own stdout (descriptor 1 is stderr now, see
            # _guard_stdout), whatever it is: a pipe, a terminal, a file opened to append
            out = _out()
            out.flush()
            with Progress("retrieve", total) as bar:
                written = pool.read_to(target, sinks.FdSink(out.fileno()), size_n, offset_n,
                                       bar.update, pieces)
            print(f"wrote {written} bytes of {target} to standard output", file=sys.stderr)
        elif output is not None:
            with Progress("retrieve", total) as bar:
                result = pool.retrieve_to_file(target, str(output), size_n, offset_n,
                                               progress=bar.update, pieces=pieces)
            if as_json:
                _emit(result.to_json())
            else:
                print(f"wrote {result.bytes} bytes of {target} to {output}", file=sys.stderr)
        elif _out().isatty():
            head = bytearray()
            pool.read_to(target, head.extend, min(total, 256), offset_n)
            print(preview(target, offset_n, total, bytes(head)), file=_out())
        else:
            out = _out()
            out.flush()
            with Progress("retrieve", total) as bar:
                pool.read_to(target, sinks.FdSink(out.fileno()), size_n, offset_n,
                             bar.update, pieces)

    @as_typed
    def list_objects(self, json: bool = False, config: str | None = None,
                     address: str | None = None) -> None:
        """Show every block of the cluster: id, node, size, used, keys, age, status.

        Args:
            json: print the list as JSON for scripts.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        blocks = _pool(config, address).list_blocks()
        if _flag(json, "json"):
            _emit([b.to_json() for b in blocks])
        else:
            print(block_table(blocks), file=_out())

    @as_typed
    def deallocate(self, block_id: Any, json: bool = False, config: str | None = None,
                   address: str | None = None) -> None:
        """Free a block and its keys.

        Args:
            block_id: the block to free (block_0_gpu2).
            json: print the freed block's info as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        info = _pool(config, address).deallocate(str(block_id))
        if _flag(json, "json"):
            _emit(info.to_json())
        else:
            print(f"deallocated {info.block_id} ({info.size} bytes on {info.node})",
                  file=sys.stderr)

    @as_typed
    def delete(self, key: Any, json: bool = False, config: str | None = None,
               address: str | None = None) -> None:
        """Remove a key (and its block, if allocated for the key and now empty).

        Args:
            key: the key to remove (all its bytes, in its one block).
            json: print what was removed as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        as_json = _flag(json, "json")
        removal = _pool(config, address).delete(str(key))
        if as_json:
            _emit(removal.to_json())
            return
        freed = ("; freed the block, it was allocated for it" if removal.block_freed else
                 "; the block stays allocated")
        print(f"deleted key '{printable(removal.key)}' ({removal.bytes} bytes) from "
              f"{removal.block_id}{freed}", file=sys.stderr)

    @as_typed
    def gc(self, dry_run: bool = False, json: bool = False) -> None:
        """Remove what dead clusters left on this host: their shared memory, catalogs, records.

        A cluster killed without `grid cluster stop` leaves its blocks' memory in /dev/shm.
        A live cluster's files are never touched, nor another user's. Needs no cluster.

        Args:
            dry_run: show what would be removed, and remove nothing.
            json: print the result as JSON.
        """
        from distributed_grid.cluster.gc import sweep

        result = sweep(dry_run=_flag(dry_run, "dry-run"))
        if _flag(json, "json"):
            _emit(result.to_json())
            return
        print(sweep_table(result), file=_out())
        for cluster_id, why in sorted(result.kept.items()):
            print(f"kept cluster {cluster_id}: {why}", file=sys.stderr)


class ClusterCommands:
    """The Ray cluster the blocks live on."""

    @as_typed
    def start(self, name: str | None = None, address: str | None = None,
              nodes: Any = None, loopback: bool = False, port: int | None = None,
              num_cpus: int | None = None, json: bool = False, private_shm: bool = False,
              shm_size: Any = None) -> None:
        """Start Ray on this host, outliving this command; prints the head's address.

        Args:
            name: this node's name (Ray label grid.node), used in block ids.
            address: join the cluster at HOST:PORT as a worker; default: start a head.
            nodes: names of extra raylets to run on this host beside the head (gpu1,gpu2): a
                one-machine cluster on loopback that simulates those nodes.
            loopback: start a cluster for this host only, on 127.0.0.1.
            port: the head's port (not with --loopback or --nodes); default: a free one.
            num_cpus: CPUs the node offers to Ray.
            json: print the cluster's address, this node's role and the nodes started as JSON.
            private_shm: give each worker node (--nodes, or this one with --address) a
                /dev/shm of its own, as on separate machines (needs root or user namespaces).
            shm_size: the size of each private /dev/shm (default 2GiB; a quarter of it is
                Ray's object store of the node).
        """
        from distributed_grid.cluster import lifecycle

        started = lifecycle.start(
            name=None if name is None else str(name),
            address=None if address is None else str(address), nodes=_names(nodes),
            loopback=_flag(loopback, "loopback"), port=_optional_int(port, "port"),
            num_cpus=_optional_int(num_cpus, "num-cpus"),
            private_shm=_private_shm(private_shm, shm_size))
        if _flag(json, "json"):
            _emit(started.to_json())
        elif started.role != "worker":
            print(started.address, file=_out())
        print(started.describe(), file=sys.stderr)

    @as_typed
    def stop(self, json: bool = False) -> None:
        """Free the cluster's blocks and stop the Ray nodes that `grid cluster start` started.

        Args:
            json: print what was stopped as JSON.
        """
        from distributed_grid.memory.client.teardown import Teardown, stop_started_clusters

        _guard_stdout()
        done = stop_started_clusters()
        if done is None:
            if _flag(json, "json"):
                _emit(Teardown().to_json())  # nothing was done
            print("no cluster started by grid is running on this host; nothing to stop",
                  file=sys.stderr)
            return
        if _flag(json, "json"):
            _emit(done.to_json())
        for warning in done.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"freed {done.freed_blocks} block(s)"
              + (f" and {len(done.leftover_segments)} segment(s) of nodes that were gone"
                 if done.leftover_segments else "")
              + f"; stopped {len(done.stopped_nodes)} Ray node(s) started here", file=sys.stderr)

    @as_typed
    def status(self, json: bool = False, config: str | None = None,
               address: str | None = None) -> None:
        """Show the nodes: names, shared-memory capacity and free bytes, blocks per node.

        Args:
            json: print the status as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        status = _pool(config, address).status()
        if _flag(json, "json"):
            _emit(status.to_json())
        else:
            print(f"cluster at {status.address}", file=_out())
            print(node_table(status.nodes), file=_out())


def _private_shm(private_shm: Any, shm_size: Any) -> int | None:
    """The size of the nodes' private /dev/shm, or None when they share the host's."""
    if not _flag(private_shm, "private-shm"):
        if shm_size is not None:
            raise InvalidArgument("--shm-size sizes a private /dev/shm: give it with "
                                  "--private-shm")
        return None
    from distributed_grid.cluster.node_process import DEFAULT_SHM_SIZE

    return DEFAULT_SHM_SIZE if shm_size is None else _size(shm_size, "shm-size")


def _names(nodes: Any) -> list[str]:
    if nodes is None or nodes is True:
        return []
    if isinstance(nodes, (list, tuple)):
        return [str(n) for n in nodes]
    return [n for n in str(nodes).split(",") if n]


class Grid:
    """distributed_grid: blocks of shared memory on a Ray cluster's nodes."""

    def __init__(self) -> None:
        self.memory = MemoryCommands()
        self.cluster = ClusterCommands()


# Positionals shown under another name than their parameter's.
METAVARS = {("memory", "retrieve"): {"block_id": "BLOCK_ID_OR_KEY"}}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("distributed-grid")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """Run the ``grid`` command; returns the exit code: 0, 1 for an error of the command, 2
    for a command line that does not fit (nothing ran), 141 when the output pipe closed."""
    try:
        code = _main(list(sys.argv[1:] if argv is None else argv))
        _out().flush()  # inside the try: a closed pipe shows here for short outputs
        return code
    except BrokenPipeError:  # the reader went away (`grid ... | head`): end quietly, as git does
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), _out().fileno())
        except (OSError, ValueError):
            pass
        return 141


def _main(argv: list[str]) -> int:
    import fire

    grid = Grid()
    groups = {"memory": grid.memory, "cluster": grid.cluster}
    table = commands_of(groups, METAVARS)
    if argv == ["--version"]:
        print(f"grid (distributed_grid) {_version()}", file=_out())
        return 0
    if not argv or any(a in HELP_FLAGS for a in argv):
        summaries = {g: (type(o).__doc__ or "").strip() for g, o in groups.items()}
        print(help_text(argv, table, summaries, _version()), file=_out())
        return 0
    try:
        command_line = check(argv, table)
    except UsageError as exc:
        print(exc.usage, file=sys.stderr)
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 2
    try:
        fire.Fire(grid, command=command_line, name="grid")
    except GridError as exc:  # one line, whatever the message quotes (a path with a newline)
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    return 0


def run() -> None:
    """The ``grid`` console script: :func:`main`, then a quick exit.

    Every command has finished its work (each Ray call is awaited) when :func:`main` returns, so
    the process ends without Ray's shutdown handlers, which take about a second.
    """
    code = main()
    if "ray" in sys.modules:
        for stream in (_out(), sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
