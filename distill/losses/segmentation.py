"""Supervised loss: cross-entropy on the main logits plus the auxiliary head's cross-entropy
(and, for a model with a boundary head such as PIDNet, its boundary losses)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.labels import IGNORE_INDEX
from distill.losses.boundary import (
    BAS_WEIGHT,
    BOUNDARY_WEIGHT,
    boundary_aware_labels,
    boundary_bce,
)


def upsampled_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """CE of 1/8-scale `logits` upsampled bilinearly to the label size, mean over valid pixels.

    The mean is taken by hand so that a crop with no valid pixel gives 0 (torch's mean
    reduction divides by zero and returns NaN there).
    """
    if tuple(logits.shape[-2:]) != tuple(labels.shape[-2:]):
        # align_corners=False matches the upsampling the exported model does at inference.
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    total = F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum")
    count = (labels != ignore_index).sum().clamp_min(1)
    return total / count


class SegmentationLoss(nn.Module):
    """CE(logits) + aux_weight * CE(aux); returns the unweighted terms and their weighted sum.

    When the model's output also has "boundary" (PIDNet's D head), PIDNet's two boundary
    terms join: "boundary" (balanced BCE, weight 20) and "bas" (CE of the main logits on
    the pixels the boundary head marks, weight 1); see distill.losses.boundary.
    """

    def __init__(
        self,
        aux_weight: float = 0.4,
        ignore_index: int = IGNORE_INDEX,
        boundary_weight: float = BOUNDARY_WEIGHT,
        bas_weight: float = BAS_WEIGHT,
    ) -> None:
        super().__init__()
        self.aux_weight = float(aux_weight)
        self.ignore_index = int(ignore_index)
        self.boundary_weight = float(boundary_weight)
        self.bas_weight = float(bas_weight)

    def forward(
        self, out: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        ce = upsampled_cross_entropy(out["logits"], labels, self.ignore_index)
        terms = {"ce": ce}
        loss = ce
        # The aux head is only scored when it exists and counts; weight 0 skips the work.
        if self.aux_weight > 0 and out.get("aux") is not None:
            aux = upsampled_cross_entropy(out["aux"], labels, self.ignore_index)
            terms["aux"] = aux
            loss = loss + self.aux_weight * aux
        boundary = out.get("boundary")
        if boundary is not None:
            terms["boundary"] = boundary_bce(boundary, labels, self.ignore_index)
            bas_labels = boundary_aware_labels(boundary, labels, ignore_index=self.ignore_index)
            terms["bas"] = upsampled_cross_entropy(out["logits"], bas_labels, self.ignore_index)
            loss = loss + self.boundary_weight * terms["boundary"] + self.bas_weight * terms["bas"]
        terms["loss"] = loss
        return terms
