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
from distill.losses.pid import PositionReadout, fit_position_readout

log = logging.getLogger(__name__)

READOUT_KEY = "position_readout"


def sidecar_path(teacher_path: Path) -> Path:
    return teacher_path.with_name(teacher_path.stem + ".readout.pt")


def cached_readout(
    teacher_path: Path, ckpt: dict[str, Any]
) -> tuple[PositionReadout, dict[str, float]] | None:
    """The readout stored with this teacher, if any (embedded first, then a matching sidecar)."""
    entry = ckpt.get(READOUT_KEY)
    if entry is None:
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
        entry = data
    return PositionReadout.from_checkpoint(entry["readout"]), dict(entry.get("report", {}))


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
