"""Crash-safe file writes and content hashes shared by every stage (no torch).

A result that was already written must never be lost or half-replaced: every writer here
goes to a temporary file in the target folder, fsyncs, then renames over the target, so a
crash at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_output(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; it replaces `path` on a clean exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    with atomic_output(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_json_atomic(data: Any, path: str | Path, *, strict: bool = False) -> Path:
    """JSON with a trailing newline; `strict` refuses NaN/inf and non-JSON types."""
    with atomic_output(path, "w") as f:
        json.dump(data, f, indent=2, allow_nan=not strict, default=None if strict else str)
        f.write("\n")
    return Path(path)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
