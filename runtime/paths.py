"""The CLI's one output guard: no output may land on what the same command reads or writes.

`eval ex --json ex/export.json` would leave `ex` "not a segkd export manifest", and
`demo in.mp4 --out in.mp4` would destroy the video. Every command lists its outputs and its
inputs; `guard_outputs` resolves each spelling (relative, `./`, `../`, symlinks, hard links,
a trailing slash) and refuses, before anything runs:
  - an output that is an input, or lies inside an input (an export folder, a dataset);
  - a folder output that holds an input it could overwrite (all of it for a folder that is
    replaced whole, only the names it writes for one written into);
  - two outputs on the same path, or one output inside another's folder.
Torch-free: it runs on the Jetson with the runtime.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from core.errors import SegkdError

ZOO_PREFIXES = ("mmseg", "cirkd", "torchvision")


@dataclass(frozen=True)
class Output:
    """One thing a command writes. kind: "file"; "folder" (files written into it: `writes`
    are the names, glob patterns allowed, it may create there, empty = any name); or
    "replaced" (a folder swapped whole, as `segkd export` publishes)."""

    option: str
    path: str | Path | None
    kind: str = "file"
    writes: tuple[str, ...] = ()


def _real(path: str | Path) -> Path:
    """The absolute path with symlinks resolved (a missing tail is kept as spelled)."""
    return Path(os.path.abspath(os.path.expanduser(str(path)))).resolve()


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links too
    except OSError:  # one of them does not exist yet
        return _real(a) == _real(b)


def _hard_link_into(path: Path, folder: Path) -> bool:
    """path is an existing file with a second name inside `folder` (a hard link): writing
    it in place would change that file too. Walked only for files with several links."""
    try:
        st = path.stat()
    except OSError:
        return False
    if st.st_nlink < 2 or not folder.is_dir():
        return False
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                other = os.stat(os.path.join(dirpath, name), follow_symlinks=False)
                if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                    return True
    return False


def _within(path: Path, folder: Path) -> bool:
    """path is folder or lies below it (both resolved)."""
    try:
        return _real(path).is_relative_to(_real(folder))
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False


def model_paths(spec: str | Path | None) -> list[Path]:
    """The files and folders a model argument reads: the file (a zoo prefix such as
    `mmseg:` or `torchvision:NAME:` stripped), its `<file>.json` sidecar, and the export
    folder it lies in (the loader reads export.json beside it). Cameras/URLs: none."""
    if spec is None:
        return []
    text = str(spec)
    if "://" in text or (text.isdigit() and not Path(text).exists()):
        return []
    path = Path(text)
    head, sep, rest = text.partition(":")
    if sep and head in ZOO_PREFIXES and not path.exists():
        _name, sep2, tail = rest.partition(":")
        path = Path(tail if sep2 and not Path(rest).exists() else rest)
    found = [path, path.with_name(path.name + ".json")]
    if path.is_file() and (path.parent / "export.json").is_file():
        found.append(path.parent)
    return [p for p in found if p.exists()]


def check_model_arg(spec: str | None, option: str = "the model") -> None:
    """A zoo prefix needs a file after it, and names a PyTorch file: `mmseg:` alone used
    to read the current folder, `cirkd:ex/model.onnx` ran the ONNX file, prefix ignored."""
    if spec is None:
        return
    text = str(spec)
    head, sep, rest = text.partition(":")
    if not sep or head not in ZOO_PREFIXES or Path(text).exists():
        return
    tail = rest.rpartition(":")[2] if head == "torchvision" else rest
    if not tail.strip():
        raise SegkdError(f"{option} {text!r}: no file after the '{head}:' prefix")
    if Path(tail).suffix.lower() in (".onnx", ".engine", ".plan", ".trt") or Path(tail).is_dir():
        raise SegkdError(
            f"{option} {text!r}: the '{head}:' prefix names a model-zoo PyTorch file; "
            f"{tail} is not one: give it without the prefix"
        )


def _refuse(option: str, out: str | Path, problem: str, fix: str) -> SegkdError:
    return SegkdError(f"{option} {out} {problem}; {fix}")


def guard_outputs(
    outputs: Iterable[Output], inputs: Mapping[str, str | Path | Iterable[Path] | None]
) -> None:
    """SegkdError (one line naming the option and the user's own spelling) if any output
    could overwrite an input or another output of this run. inputs: what it is -> a path,
    several paths (see `model_paths`), or None; paths that do not exist are not inputs."""
    given = [o for o in outputs if o.path is not None]
    sources: list[tuple[str, Path]] = []
    for what, value in inputs.items():
        paths = [value] if isinstance(value, (str, Path)) else list(value or [])
        for p in paths:
            text = str(p)
            if "://" not in text and Path(text).exists():
                sources.append((what, Path(text)))
    for o in given:
        out = Path(str(o.path))
        if o.kind == "file" and out.is_dir():
            raise _refuse(o.option, o.path, "is a folder", "give a file name")
        if o.kind != "file" and out.exists() and not out.is_dir():
            raise _refuse(o.option, o.path, "exists and is not a folder", "give a folder")
        for what, src in sources:
            if _same(out, src):
                raise _refuse(o.option, o.path, f"is {what} ({src})",
                              "writing it would destroy the input: choose another path")  # fmt: skip
            if _within(out, src) or _hard_link_into(out, src):
                raise _refuse(o.option, o.path, f"is inside {what} ({src})",
                              "writing there could overwrite its files: choose a path outside it")  # fmt: skip
            if o.kind != "file" and _within(src, out) and _writes_over(o, src):
                raise _refuse(o.option, o.path, f"holds {what} ({src})",
                              "this run would overwrite it: choose another folder")  # fmt: skip
        for other in given:
            if other is o:
                continue
            if _same(out, Path(str(other.path))):
                raise _refuse(o.option, o.path, f"is also {other.option}",
                              "one would overwrite the other: give each its own path")  # fmt: skip
            if other.kind != "file" and _within(out, Path(str(other.path))):
                raise _refuse(o.option, o.path, f"is inside {other.option} {other.path}",
                              "which this run writes: choose a path outside it")  # fmt: skip
        problem = _unwritable(o)
        if problem:
            raise _refuse(o.option, o.path, f"cannot be written: {problem}",
                          "choose a writable place")  # fmt: skip


def _unwritable(o: Output) -> str | None:
    """Why `o` cannot be written here (a read-only file system, a folder this user may not
    write), or None; checked before the command runs, so no result is computed only to be
    lost, and the error names the user's path, not a temporary one. A file or a replaced
    folder is written as a hidden sibling and renamed (its folder must take new names); a
    folder written into takes its files; a missing folder is made in its first existing
    ancestor."""
    out = Path(os.path.abspath(os.path.expanduser(str(o.path))))
    where = out if o.kind == "folder" and out.is_dir() else out.parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        return f"{where} is not a folder"
    if os.access(where, os.W_OK | os.X_OK, effective_ids=os.access in os.supports_effective_ids):
        return None
    read_only = hasattr(os, "statvfs") and bool(os.statvfs(where).f_flag & os.ST_RDONLY)
    return (
        f"{where} is {'on a read-only file system' if read_only else 'not writable by this user'}"
    )


def _writes_over(folder: Output, src: Path) -> bool:
    """Whether writing `folder` could touch `src` (which lies inside it)."""
    if folder.kind == "replaced" or not folder.writes:
        return True
    rel = _real(src).relative_to(_real(Path(str(folder.path))))
    if not rel.parts:  # src is the folder itself
        return True
    return any(fnmatch.fnmatchcase(rel.parts[0], pattern) for pattern in folder.writes)
