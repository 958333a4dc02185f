"""Unit tests: the store's logic on real files, real shared memory and real processes, no Ray.

Every test here is marked ``unit``: ``./dev.sh test -m unit`` (or ``./dev.sh test tests/unit``)
runs them alone, in seconds. None of them may import Ray, nor start a cluster: a test that needs
one belongs in ``cluster/``. A module of this folder whose import brings Ray in fails to collect,
and a test that brings it in fails, by name; a run of unit tests alone also fails at its end if
Ray was imported at all (by a conftest or a plugin, say). In a run with tests of other folders,
which import Ray, only the unit steps that bring it in first are caught.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from pathlib import Path

import pytest
from helpers.dev_shm import sweep

UNIT = Path(__file__).resolve().parent
_found: list[str] = []  # the unit steps that brought Ray in
_others = False  # the run collected tests of other folders


def _ray_came_in(before: bool, what: str) -> str | None:
    """The complaint when Ray was not imported ``before`` a step and is now."""
    if before or "ray" not in sys.modules:
        return None
    _found.append(what)
    return (f"{what} imported Ray: a unit test must not (Ray belongs to the tests in "
            "tests/cluster/)")


@pytest.fixture
def cluster_id(request):
    """A cluster id of this test alone (its files in /dev/shm are named with it): everything
    of that cluster in /dev/shm is removed after the test, even when it failed."""
    cid = f"t{os.getpid()}{uuid.uuid4().hex[:8]}"
    assert re.fullmatch(r"[A-Za-z0-9]{1,32}", cid)
    request.addfinalizer(lambda: sweep(cid))
    return cid


def pytest_itemcollected(item):
    item.add_marker(pytest.mark.unit)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    before = "ray" in sys.modules
    report = yield
    complaint = _ray_came_in(before, f"collecting {collector.nodeid}")
    if complaint and report.passed:
        report.outcome, report.longrepr, report.result = "failed", complaint, []
    return report


def _judged(item, step: str):
    before = "ray" in sys.modules
    result = yield  # a step that raised fails anyway; the end of the run still says Ray came
    complaint = _ray_came_in(before, f"{item.nodeid} ({step})")
    if complaint:
        pytest.fail(complaint, pytrace=False)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item):
    return (yield from _judged(item, "setup"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    return (yield from _judged(item, "call"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item):
    return (yield from _judged(item, "teardown"))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    global _others
    _others = any(not item.path.is_relative_to(UNIT) for item in items)  # before any -m


def _ray_in_a_unit_run() -> str | None:
    if _others or "ray" not in sys.modules:
        return None
    what = _found[0] if _found else "something of the run (a conftest or a plugin)"
    return f"Ray was imported by {what}: the unit tests run without it"


def pytest_sessionfinish(session):
    if _ray_in_a_unit_run() and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter):
    complaint = _ray_in_a_unit_run()
    if complaint:
        terminalreporter.write_sep("!", complaint, red=True, bold=True)
