"""Shared pytest setup: small, deterministic, CPU-friendly."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

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
