"""Where fixtures keep their files: tests/conftest.py removes every directory a test
module created when the module ends, except those named here as the session's."""

from __future__ import annotations

from pathlib import Path

import pytest

SESSION_DIR_PREFIX = "session-"


def session_dir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A directory for a session-scoped fixture: kept until the session ends."""
    return tmp_path_factory.mktemp(SESSION_DIR_PREFIX + name)
