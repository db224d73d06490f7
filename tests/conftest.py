"""Shared pytest setup: small, deterministic, CPU-friendly."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Iterator

import pytest

from tests.tmpdirs import SESSION_DIR_PREFIX

# Two cores on CI: keep torch from oversubscribing when tests spawn subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Tests run `cli.main()` in this process, and main installs the command's Ctrl-C and
    SIGTERM handlers (at its end: exit at once); pytest's own come back after each test,
    its fixtures' set-up and tear-down included (a module fixture may run a command).
    A hook, not a fixture: Hypothesis refuses function-scoped fixtures on its tests."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return (yield)
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


_failed_modules: set[str] = set()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    report = yield
    if report.failed:
        _failed_modules.add(item.nodeid.split("::")[0])  # the test file, as its module's nodeid
    return report


@pytest.fixture(scope="module", autouse=True)
def _module_dirs_removed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[None]:
    """The suite trains and exports real models (a PSPNet-R18 run writes 200 MB of
    checkpoints) and once wrote 16 GB in all: CI's disk filled and the run failed. Per-test
    directories go at each test's end (tmp_path_retention_policy = "failed" in
    pyproject.toml); those of module-scoped fixtures go here, after the module's own
    fixtures are torn down (this one is set up first), unless one of its tests failed."""
    base = tmp_path_factory.getbasetemp()
    before = set(base.iterdir())
    yield
    if request.node.nodeid in _failed_modules:
        return
    for path in set(base.iterdir()) - before:
        if not path.name.startswith(SESSION_DIR_PREFIX):
            shutil.rmtree(path, ignore_errors=True)
