"""Label maps at feature resolution, shared by every loss that works on 1/8-scale outputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_labels(labels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a B x H x W LongTensor of class ids to `size` with NEAREST interpolation.

    Bilinear would invent class ids at the border of two regions (e.g. 2 between 1 and 3),
    and would blend the ignore id 255 into real ids.
    """
    if labels.dim() != 3:
        raise ValueError(f"labels must be B x H x W, got shape {tuple(labels.shape)}")
    if tuple(labels.shape[-2:]) == tuple(size):
        return labels.long()
    # float32 holds every id up to 2**24 exactly, so the round trip is lossless.
    out = F.interpolate(labels[:, None].float(), size=tuple(size), mode="nearest")
    return out[:, 0].long()
