"""``grid cluster ...``: the Ray cluster the blocks live on.

As :mod:`distributed_grid.cli.memory`: each command coerces its input, calls the library
(:mod:`distributed_grid.cluster.starting`, :mod:`~distributed_grid.memory.client.teardown`, the
pool's status) and gives the output the record it returns. ``start`` and ``stop`` say what they
did on stderr, with ``--json`` too.
"""

from __future__ import annotations

from typing import Any

from distributed_grid.cli import args
from distributed_grid.cli.format import node_table
from distributed_grid.cli.grammar import changing, read_only
from distributed_grid.cli.output import out


class ClusterCommands:
    """The Ray cluster the blocks live on."""

    @changing
    def start(self, name: str | None = None, address: str | None = None,
              nodes: Any = None, loopback: bool = False, port: int | None = None,
              num_cpus: int | None = None, json: bool = False, private_shm: bool = False,
              shm_size: Any = None, another: bool = False, spill_dir: str | None = None,
              spill_quota: Any = None, spill_high: Any = None, spill_low: Any = None,
              prefault: Any = None) -> None:
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
            another: start a cluster (or join one) even though a cluster started by grid runs
                on this host already; without it that is refused, naming the running one.
                Commands then need --address or RAY_ADDRESS to say which cluster they mean.
            spill_dir: a folder where the nodes write cold blocks when their memory runs
                short, read back when used (with --nodes each node gets DIR/<node>; a node
                started alone takes DIR). Default: the config's spill_dir, else no spilling.
            spill_quota: how many bytes of blocks the spill folder may hold (10GiB).
            spill_high: spill when a node's blocks pass this part of its room (default 0.85).
            spill_low: ...down to this part (default 0.70).
            prefault: memory each node keeps allocated and faulted in, refilled while it is
                idle, so new blocks fill at memory speed (2GiB). It is used memory of the
                host (counted in cluster status). Default: the config's prefault, else none.
        """
        from distributed_grid.cluster import starting

        started = starting.start(
            name=args.optional_text(name), address=args.optional_text(address),
            nodes=args.names(nodes), loopback=loopback, port=args.optional_size(port, "port"),
            num_cpus=args.optional_size(num_cpus, "num-cpus"), private_shm=private_shm,
            shm_size=args.optional_size(shm_size, "shm-size"), another=another,
            spill_dir=args.optional_text(spill_dir),
            spill_quota=args.optional_size(spill_quota, "spill-quota"),
            spill_high=args.optional_fraction(spill_high, "spill-high"),
            spill_low=args.optional_fraction(spill_low, "spill-low"),
            prefault=args.optional_size(prefault, "prefault"))
        out.result(started, text=None if started.role == "worker" else started.address)
        out.note(started.describe())

    @changing
    def stop(self, json: bool = False) -> None:
        """Free the cluster's blocks and stop the Ray nodes that `grid cluster start` started.

        Args:
            json: print what was stopped as JSON.
        """
        from distributed_grid.memory.client.teardown import Teardown, stop_started_clusters

        out.guard_stdout()
        done = stop_started_clusters()
        if done is None:
            out.result(Teardown())  # nothing was done: its JSON, with --json
            out.note("no cluster started by grid is running on this host; nothing to stop")
            return
        out.result(done)
        for warning in done.warnings:
            out.warning(warning)
        out.note(f"freed {done.freed_blocks} block(s)"
                 + (f" and {len(done.leftover_segments)} segment(s) of nodes that were gone"
                    if done.leftover_segments else "")
                 + f"; stopped {len(done.stopped_nodes)} Ray node(s) started here")

    @read_only
    def status(self, json: bool = False, config: str | None = None,
               address: str | None = None) -> None:
        """Show the nodes: names, shared-memory capacity and free bytes, blocks per node.

        Args:
            json: print the status as JSON.
            config: a cluster config YAML file.
            address: the cluster's address (HOST:PORT).
        """
        status = args.pool(config, address).status()
        out.result(status, text=f"cluster at {status.address}\n{node_table(status.nodes)}")
