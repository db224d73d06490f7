"""`--teacher SPEC` for model-zoo files: SPEC is FILE, SOURCE:FILE or SOURCE:NAME:FILE.

The source (mmseg, cirkd, torchvision) is detected from the file's keys when no prefix
forces it; NAME (e.g. deeplabv3_resnet101) is checked against the keys, which determine
the architecture for every supported file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from core.errors import SegkdError
from distill.zoo import cirkd, mmseg, torchvision
from distill.zoo.base import ZooTeacher
from distill.zoo.safe_load import read_weights_file, split_state_dict

Builder = Callable[[Mapping[str, torch.Tensor], Mapping[str, Any], Path, "str | None"], ZooTeacher]
SOURCES: dict[str, tuple[Callable[[Mapping[str, Any]], bool], Builder]] = {
    "mmseg": (mmseg.looks_like, mmseg.build),
    "cirkd": (cirkd.looks_like, cirkd.build),
    "torchvision": (torchvision.looks_like, torchvision.build),
}


@dataclass(frozen=True)
class TeacherSpec:
    path: Path
    source: str | None = None  # None: detect from the keys
    name: str | None = None


def parse_teacher_spec(spec: str | Path) -> TeacherSpec:
    """'mmseg:FILE', 'torchvision:NAME:FILE' or a plain FILE (an existing path wins)."""
    text = str(spec)
    head, sep, rest = text.partition(":")
    if not sep or head not in SOURCES or Path(text).exists():
        return TeacherSpec(Path(text))
    name, sep2, path = rest.partition(":")
    if sep2 and not Path(rest).exists():
        return TeacherSpec(Path(path), head, name or None)
    return TeacherSpec(Path(rest), head)


def has_zoo_prefix(spec: str | Path) -> bool:
    return parse_teacher_spec(spec).source is not None


def detect_source(state: Mapping[str, Any]) -> str | None:
    found = [s for s, (looks, _) in SOURCES.items() if looks(state)]
    return found[0] if len(found) == 1 else None


def load_zoo_teacher(spec: str | Path | TeacherSpec, obj: Any = None) -> ZooTeacher:
    """Rebuild the zoo network SPEC names and load its weights strictly (eval mode).

    obj: the already-unpickled file, when the caller has read it (no second read).
    """
    spec = spec if isinstance(spec, TeacherSpec) else parse_teacher_spec(spec)
    obj = read_weights_file(spec.path) if obj is None else obj
    state, meta = split_state_dict(obj, spec.path)
    source = spec.source or detect_source(state)
    if source is None:
        example = next(iter(state))
        raise SegkdError(
            f"{spec.path}: cannot tell which model zoo this file comes from (keys like "
            f"{example!r}); force one with mmseg:FILE, cirkd:FILE or torchvision:NAME:FILE"
        )
    looks, build = SOURCES[source]
    if not looks(state):
        raise SegkdError(
            f"{spec.path}: forced as {source}, but its keys are not laid out as {source} lays "
            f"them out (keys like {next(iter(state))!r})"
        )
    return build(state, meta, spec.path, spec.name)
