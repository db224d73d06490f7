"""The frozen teacher and its cached position readout (stage 1 of PID).

The readout is fitted once per teacher and stored with it: inside the checkpoint when
segkd trained the teacher (`segkd train --role teacher`), else in a sidecar file
`<teacher>.readout.pt` keyed by the teacher's sha256, so a user's own checkpoint is
never rewritten.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.atomic_io import sha256_of as file_sha256
from core.errors import SegkdError
from distill.checkpoint import atomic_torch_save, load_checkpoint
from distill.losses.pid import POSITION_KINDS, PositionReadout, fit_position_readout

log = logging.getLogger(__name__)

READOUT_KEY = "position_readout"


def sidecar_path(teacher_path: Path) -> Path:
    return teacher_path.with_name(teacher_path.stem + ".readout.pt")


def cached_readout(
    teacher_path: Path, ckpt: dict[str, Any], feat_channels: int | None = None
) -> tuple[PositionReadout, dict[str, float]] | None:
    """The readout stored with this teacher, if a usable one is (embedded first, then a
    sidecar whose teacher_sha256 matches); None means: fit it. A stored readout that
    cannot serve (not a tensor file, missing keys, wrong shapes, NaN, another feature
    width than `feat_channels`) is named in one warning line, never loaded half-way."""
    entry = ckpt.get(READOUT_KEY)
    if entry is not None:
        found = _usable(entry, feat_channels)
        if not isinstance(found, str):
            return found
        log.warning("%s: its embedded position readout %s; refitting", teacher_path, found)
    side = sidecar_path(teacher_path)
    if not side.is_file():
        return None
    try:
        data = torch.load(side, map_location="cpu", weights_only=True)
    except Exception as e:  # only a cache: a corrupt or foreign file is refitted, not trusted
        log.warning("%s cannot be read (%s); refitting", side, type(e).__name__)
        return None
    if not isinstance(data, dict) or data.get("teacher_sha256") != file_sha256(teacher_path):
        log.warning("%s belongs to another version of %s; refitting", side, teacher_path)
        return None
    found = _usable(data, feat_channels)
    if isinstance(found, str):
        log.warning("%s: the position readout %s; refitting", side, found)
        return None
    return found


def _readout_shapes(d: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The tensor shapes a PositionReadout of these sizes holds (see PositionReadout.body)."""
    cin, targets, hidden = int(d["in_channels"]), int(d["num_targets"]), int(d["hidden"])
    return {"body.0.weight": (hidden, cin, 3, 3), "body.0.bias": (hidden,),
            "body.2.weight": (targets, hidden, 3, 3), "body.2.bias": (targets,)}  # fmt: skip


def _usable(
    entry: Any, feat_channels: int | None
) -> tuple[PositionReadout, dict[str, float]] | str:
    """The readout and its report, or what is wrong with the stored entry (checked before
    anything is built, so a forged size cannot allocate)."""
    readout = entry.get("readout") if isinstance(entry, dict) else None
    if not isinstance(readout, dict):
        return "has no 'readout' entry"
    try:
        shapes = _readout_shapes(readout)
        kinds = tuple(readout["kinds"])
        state = dict(readout["state_dict"])
    except (KeyError, TypeError, ValueError) as e:
        return f"is incomplete ({type(e).__name__}: {e})"
    if not all(isinstance(k, str) and k in POSITION_KINDS for k in kinds):
        return f"has unknown position kinds {list(kinds)}"
    if len(kinds) != shapes["body.2.bias"][0] or min(min(v) for v in shapes.values()) < 1:
        return f"has sizes that do not fit together ({len(kinds)} kinds, shapes {shapes})"
    if feat_channels is not None and shapes["body.0.weight"][1] != feat_channels:
        return (
            f"reads {shapes['body.0.weight'][1]} feature channels, the teacher has {feat_channels}"
        )
    for key, shape in shapes.items():
        t = state.get(key)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            return f"has {key} {got}, expected a tensor of shape {shape}"
        if not t.is_floating_point() or not torch.isfinite(t).all():
            return f"has {key} with NaN/inf or non-float values"
    if set(state) != set(shapes):
        return f"has unexpected entries {sorted(set(state) - set(shapes))}"
    report = entry.get("report", {})
    if not isinstance(report, dict) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in report.values()
    ):
        return "has a report that is not a dict of numbers"
    return PositionReadout.from_checkpoint(readout), {str(k): float(v) for k, v in report.items()}


def fit_readout_entry(
    teacher: nn.Module,
    batches: Sequence[Any],
    iters: int,
    device: torch.device,
) -> dict[str, Any]:
    readout, report = fit_position_readout(teacher, batches, iters=iters, device=device)
    log.info("teacher position readout: %s", report)
    return {"readout": readout.to_checkpoint(), "report": report, "iters": iters}


def store_readout_sidecar(teacher_path: Path, entry: dict[str, Any]) -> Path:
    side = sidecar_path(teacher_path)
    atomic_torch_save({**entry, "teacher_sha256": file_sha256(teacher_path)}, side)
    return side


def embed_readout(ckpt_path: Path, entry: dict[str, Any]) -> None:
    """Write the readout into a checkpoint segkd itself produced (atomic rewrite)."""
    ckpt = load_checkpoint(ckpt_path)
    ckpt[READOUT_KEY] = entry
    atomic_torch_save(ckpt, ckpt_path)


def check_teacher_fits(
    teacher_ckpt: dict[str, Any], class_names: Sequence[str], path: Path, option: str = "--teacher"
) -> None:
    names = list(teacher_ckpt["labels"]["names"])
    if names != list(class_names):
        raise SegkdError(
            f"{option} {path}: trained for {len(names)} classes ({', '.join(names[:4])}, ...), "
            f"but the dataset has {len(class_names)} ({', '.join(list(class_names)[:4])}, ...)"
        )
