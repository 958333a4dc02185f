"""``grid``: the command line over the library (see :mod:`distributed_grid.cli.main`)."""
