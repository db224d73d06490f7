"""Weights that are NaN or infinite score as a plausible-looking model (3.30 mIoU for an
all-NaN file: every pixel one class), so every loaded weights file is checked once."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch

from core.errors import SegkdError


def refuse_non_finite(state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """SegkdError naming the file and the first tensor holding NaN or inf values."""
    for key, tensor in state.items():
        if not (tensor.is_floating_point() or tensor.is_complex()) or tensor.numel() == 0:
            continue
        finite = torch.isfinite(tensor)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise SegkdError(
                f"{path}: weight {key!r} holds {bad} NaN/inf values of {tensor.numel()}; the "
                "weights are broken (a diverged training?): use an earlier checkpoint"
            )
