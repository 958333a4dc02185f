"""What the tests share that is not a fixture: runners of the ``grid`` command, the look at (and
sweep of) what a cluster keeps in /dev/shm, a private small /dev/shm, the CLI fuzzer's grammar and
oracle.

Importable as ``helpers`` (``from helpers.grid import Grid``): pyproject.toml puts ``tests/`` on
pytest's ``pythonpath``. Nothing here imports Ray, so the unit tests may use all of it.
"""
