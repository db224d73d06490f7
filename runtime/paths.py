"""Outputs must never be a command's inputs: `demo in.mp4 --out in.mp4` would destroy it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from runtime.errors import SegkdError


def _same(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links and symlinks too
    except OSError:  # one of them does not exist yet
        return a.resolve() == b.resolve()


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return False


def refuse_overwriting_inputs(
    outputs: Mapping[str, str | Path | None], inputs: Mapping[str, str | Path | None]
) -> None:
    """SegkdError if an output path is one of the inputs, or an output folder holds one.

    outputs: option -> path (None = not given); inputs: what it is -> path. Inputs that are
    not paths (a camera index, a URL, `synthetic`) never match a real file.
    """
    for option, out in outputs.items():
        if out is None:
            continue
        o = Path(out)
        for what, src in inputs.items():
            if src is None or "://" in str(src) or not Path(src).exists():
                continue
            s = Path(src)
            if _same(o, s):
                raise SegkdError(
                    f"{option} {out} is {what}; writing it would destroy the input: "
                    "choose another path"
                )
            if s.is_dir() and _inside(o, s) and not o.suffix:
                raise SegkdError(
                    f"{option} {out} is inside {what} {src}; writing there could overwrite "
                    "its files: choose a folder outside it"
                )
