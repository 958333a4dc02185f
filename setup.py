"""Builds the optional C extensions; the project's metadata is in pyproject.toml.

``distributed_grid.memory.shm._seqguard`` (native/seqguard.c) and
``distributed_grid.memory.io._copy`` (native/copy.c) are compiled where a C compiler exists;
without one the install still succeeds and their Python twins are used
(see distributed_grid/memory/shm/seqguard.py and distributed_grid/memory/io/copies.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "distributed_grid.memory.shm._seqguard",
            ["native/seqguard.c"],
            optional=True,
        ),
        Extension(
            "distributed_grid.memory.io._copy",
            ["native/copy.c"],
            optional=True,
        ),
    ]
)
