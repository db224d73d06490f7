"""Shared pytest setup: small, deterministic, CPU-friendly."""

from __future__ import annotations

import os

# Two cores on CI: keep torch from oversubscribing when tests spawn subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
