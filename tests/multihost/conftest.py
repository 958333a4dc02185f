"""Nodes with a /dev/shm of their own (root, or user namespaces): every test here is marked
``multihost``, which the default run leaves out; ``.ci/run`` runs the group as a step of its own
(``./dev.sh test -m multihost``). The tests start their clusters themselves (the root conftest's
``fresh``, or a fixture of their module): the session's cluster is not theirs.
"""

from __future__ import annotations

import pytest


def pytest_itemcollected(item):
    item.add_marker(pytest.mark.multihost)
