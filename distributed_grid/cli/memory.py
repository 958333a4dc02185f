"""``grid memory ...``: blocks of shared memory on the cluster's nodes.

Each command coerces what it was given (:mod:`distributed_grid.cli.args`), calls the library
(:class:`~distributed_grid.memory.pool.MemoryPool`, imported when a command runs, so
``grid --help`` stays quick) and gives the record it returns to the output
(:data:`~distributed_grid.cli.output.out`), which prints its text or, with ``--json``, its JSON.
The docstrings are the commands' help (:func:`~distributed_grid.cli.grammar.help_text`).
"""

from __future__ import annotations

import sys
from typing import Any

from distributed_grid.cli import args
from distributed_grid.cli.format import Progress, block_table, preview, printable, sweep_table
from distributed_grid.cli.grammar import changing, read_only
from distributed_grid.cli.output import out
from distributed_grid.errors import InvalidArgument


class MemoryCommands:
    """Blocks of shared memory on the cluster's nodes."""

    @changing
    def allocate(self, size_in_bytes: Any, node: str | None = None, replicas: Any = None,
                 json: bool = False, config: str | None = None,
                 address: str | None = None) -> None:
        """Allocate a block; prints its id (block_<n>_<node>).

        Args:
            size_in_bytes: bytes (10485760) or with a unit (10MB, 1.5GiB).
            node: the node to allocate on (the first copy's, with --replicas); default: the
                worker with the most free memory.
            replicas: copies of the block, each on a node of its own (1 to 8; default: the
                config's replicas, else 1); every write reaches all of them.
            json: print the block's info as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT); default: the config's, the running one,
                or the embedded local cluster.
        """
        size = args.size(size_in_bytes, "size")
        copies = args.replicas(replicas)
        info = args.pool(config, address).allocate(size, node=args.optional_text(node),
                                                   replicas=copies)
        out.result(info, text=info.block_id)

    @changing
    def store(self, key: Any, file_path: Any, block_id: str | None = None, offset: Any = 0,
              force: bool = False, replicas: Any = None, json: bool = False,
              config: str | None = None, address: str | None = None) -> None:
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
            replicas: copies of a block allocated for the bytes, each on a node of its own (1
                to 8; default: the config's replicas, else 1); a key that exists keeps its own.
            json: print the result as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        offset = args.size(offset, "offset")
        path = args.path(file_path, "FILE_PATH")
        copies = args.replicas(replicas)
        pool = args.pool(config, address)
        block = args.optional_text(block_id)
        with Progress("store", None) as bar:
            if path == "-":  # standard input (a file named - is ./-)
                if sys.stdin is not None and sys.stdin.isatty():
                    out.note("reading standard input to its end (Ctrl-D ends it)")
                result = pool.store_stream(str(key), 0, block_id=block, offset=offset,
                                           force=force, progress=bar.update,
                                           on_size=bar.expect, replicas=copies)
            else:
                result = pool.store_file(str(key), path, block_id=block, offset=offset,
                                         force=force, progress=bar.update, on_size=bar.expect,
                                         replicas=copies)
        verb = "allocated and stored" if result.allocated else "stored"
        source = "standard input" if path == "-" else path
        out.result(result, text=result.block_id,
                   done=f"{verb} {result.length} bytes of {source} as {result.key!r} in "
                        f"{result.block_id} at offset {result.offset}")

    @read_only
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
        size_n, offset_n = args.optional_size(size, "size"), args.size(offset, "offset")
        output = None if output is None else args.path(output, "--output")
        to_stdout = output is not None and out.is_stdout(output)
        if out.json and (output is None or to_stdout):
            raise InvalidArgument("--json describes a retrieve to --output FILE; without one "
                                  "the bytes themselves are the output")
        pool = args.pool(config, address)
        pieces = pool.plan_read(target, size_n, offset_n)
        total = sum(p.length for p in pieces)
        if output is not None and not to_stdout:
            with Progress("retrieve", total) as bar:
                result = pool.retrieve_to_file(target, output, size_n, offset_n,
                                               progress=bar.update, pieces=pieces)
            out.result(result, done=f"wrote {result.bytes} bytes of {target} to {output}")
        elif to_stdout or not out.stdout.isatty():
            # the raw bytes into the command's own stdout, whatever it is: a pipe, a file
            # opened to append, or (asked with --output -) a terminal
            sink = sinks.FdSink(out.raw_stdout().fileno())
            with Progress("retrieve", total) as bar:
                written = pool.read_to(target, sink, size_n, offset_n, bar.update, pieces)
            if to_stdout:
                out.note(f"wrote {written} bytes of {target} to standard output")
        else:
            head = bytearray()
            pool.read_to(target, head.extend, min(total, 256), offset_n)
            out.text(preview(target, offset_n, total, bytes(head)))

    @read_only
    def list_objects(self, json: bool = False, config: str | None = None,
                     address: str | None = None) -> None:
        """Show every block of the cluster: id, node, size, used, keys, age, status, state
        (memory, or spilled to disk).

        Args:
            json: print the list as JSON for scripts.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        blocks = args.pool(config, address).list_blocks()
        out.result(blocks, text=block_table(blocks))

    @changing
    def deallocate(self, block_id: Any, json: bool = False, config: str | None = None,
                   address: str | None = None) -> None:
        """Free a block and its keys.

        Args:
            block_id: the block to free (block_0_gpu2).
            json: print the freed block's info as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        info = args.pool(config, address).deallocate(str(block_id))
        where = ", ".join(info.replicas or [info.node])
        out.result(info, done=f"deallocated {info.block_id} ({info.size} bytes on {where})")

    @changing
    def delete(self, key: Any, json: bool = False, config: str | None = None,
               address: str | None = None) -> None:
        """Remove a key (and its block, if allocated for the key and now empty).

        Args:
            key: the key to remove (all its bytes, in its one block).
            json: print what was removed as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        removal = args.pool(config, address).delete(str(key))
        freed = ("; freed the block, it was allocated for it" if removal.block_freed else
                 "; the block stays allocated")
        out.result(removal, done=f"deleted key '{printable(removal.key)}' ({removal.bytes} "
                                 f"bytes) from {removal.block_id}{freed}")

    @changing
    def spill(self, target: Any, json: bool = False, config: str | None = None,
              address: str | None = None) -> None:
        """Write a block to its node's spill folder and free its memory now (it comes back
        when used): to make room for a job. Needs a node started with --spill-dir.

        Args:
            target: a block id (block_0_gpu2) or a key (its block is spilled; a key in a slab
                spills the slab, all its small values).
            json: print the block's info as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        pool = args.pool(config, address)
        with Progress("spill", None) as bar:
            info = pool.spill(str(target), progress=bar.update)
        out.result(info, done=f"spilled {info.block_id} ({info.size} bytes) to the spill "
                              f"folder of {', '.join(info.replicas or [info.node])}")

    @changing
    def restore(self, target: Any, json: bool = False, config: str | None = None,
                address: str | None = None) -> None:
        """Bring a spilled block back into its node's shared memory now: to pre-stage data
        before a job (colder blocks are spilled if the node needs the room).

        Args:
            target: a block id (block_0_gpu2) or a key.
            json: print the block's info as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        pool = args.pool(config, address)
        with Progress("restore", None) as bar:
            info = pool.restore(str(target), progress=bar.update)
        out.result(info, done=f"restored {info.block_id} ({info.size} bytes) into the memory "
                              f"of {', '.join(info.replicas or [info.node])}")

    @changing
    def gc(self, dry_run: bool = False, json: bool = False) -> None:
        """Remove what dead clusters left on this host: their shared memory, catalogs, records.

        A cluster killed without `grid cluster stop` leaves its blocks' memory in /dev/shm.
        A live cluster's files are never touched, nor another user's. Needs no cluster.

        Args:
            dry_run: show what would be removed, and remove nothing.
            json: print the result as JSON.
        """
        from distributed_grid.cluster.gc import sweep

        result = sweep(dry_run=dry_run)
        kept = [f"kept cluster {cluster_id}: {why}"
                for cluster_id, why in sorted(result.kept.items())]
        out.result(result, text=sweep_table(result), done="\n".join(kept) or None)
