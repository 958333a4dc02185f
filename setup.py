"""Builds the optional C extension; the project's metadata is in pyproject.toml.

``distributed_grid.memory.shm._seqguard`` (native/seqguard.c) is compiled where a C compiler exists;
without one the install still succeeds and the pure-Python twin is used
(see distributed_grid/memory/shm/seqguard.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "distributed_grid.memory.shm._seqguard",
            ["native/seqguard.c"],
            optional=True,
        )
    ]
)
