"""Zoo checkpoints laid out as their sources save them, for tests outside this folder too."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from tests.distill.zoo import reference as ref


def save_mmseg_pspnet_r18(path: Path, class_names: Sequence[str], seed: int) -> Path:
    """An mmsegmentation PSPNet-R18-d8 file ({'meta': {'CLASSES'}, 'state_dict'}) with
    random weights whose keys and shapes come from the reference forward."""
    P = ref.Params(seed)
    with torch.no_grad():
        ref.mmseg_forward(P, torch.zeros(1, 3, 32, 32), 18, "psp", len(class_names))
    torch.save({"meta": {"CLASSES": tuple(class_names)}, "state_dict": P.state}, path)
    return path
