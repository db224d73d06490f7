"""Crash-safe file writes and content hashes shared by every stage (no torch).

A result that was already written must never be lost or half-replaced: every writer here
goes to a temporary file in the target folder, fsyncs, then renames over the target, so a
crash at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def atomic_output(path: str | Path, mode: str = "wb", fsync: bool = True) -> Iterator[IO[Any]]:
    """Open a temporary sibling of `path` for writing; it replaces `path` on a clean exit.
    fsync=False for many small files (image frames) where a crash may lose the newest."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # a read-only or full folder: name the user's file, not the temporary
        raise OSError(e.errno, e.strerror, str(path)) from e
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        # Name the user's file, never the hidden temporary one: a full disk fails in
        # write() with no name, a rename onto a folder names both.
        raise OSError(e.errno, e.strerror, str(path)) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | Path, data: bytes, fsync: bool = True) -> Path:
    with atomic_output(path, "wb", fsync) as f:
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


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False if unsupported."""
    import ctypes
    import errno

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False  # this file system (or kernel) cannot exchange: use two renames
    raise OSError(err, os.strerror(err), str(b))


def publish_folder(new: str | Path, target: str | Path) -> Path:
    """Make the complete folder `new` (a sibling of `target`) become `target` in one step.

    Readers see the old folder or the new one, never a mix: the two are exchanged
    atomically where the file system can, else the old one is renamed aside, the new one
    renamed in, and the old one restored if that fails. The old folder is deleted last.
    """
    new, target = Path(new), Path(target)
    if not target.exists():
        os.rename(new, target)
        return target
    if _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old contents
        return target
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    aside.rmdir()
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return target
