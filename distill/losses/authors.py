"""The supervised loss the DDRNet and PIDNet authors train with (docs/notes/authors.md):

    aux_weight * CE(aux)  +  OHEM(main)                                  (both students)
    + 20 * balanced BCE(boundary, Canny targets) + 1 * OHEM(main on the pixels
      whose boundary probability exceeds 0.8)                            (PIDNet's D head)

Every output is first upsampled to the label size (bilinear; PIDNet's config aligns
corners, DDRNet's does not). As in the authors' code, the aux CE is averaged over EVERY
pixel of the batch, ignore pixels counting as 0 (their criterion returns it per pixel and
the training loop takes the mean), while the OHEM terms average only the pixels they keep.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from core.labels import IGNORE_INDEX
from distill.losses.boundary import (
    BAS_WEIGHT,
    BOUNDARY_WEIGHT,
    balanced_bce_every_pixel,
    boundary_aware_labels,
    canny_boundary_targets,
)
from distill.losses.ohem import (
    OHEM_MIN_KEPT,
    OHEM_THRESHOLD,
    ohem_cross_entropy,
    pixel_cross_entropy,
    to_label_size,
)


class OhemSegmentationLoss(nn.Module):
    """Returns {"ce": OHEM of the main logits, ["aux"], ["boundary", "bas"], "loss"}."""

    def __init__(
        self,
        aux_weight: float = 0.4,
        ignore_index: int = IGNORE_INDEX,
        threshold: float = OHEM_THRESHOLD,
        min_kept: int = OHEM_MIN_KEPT,
        class_weights: Sequence[float] | None = None,
        align_corners: bool = False,
        boundary_weight: float = BOUNDARY_WEIGHT,
        bas_weight: float = BAS_WEIGHT,
    ) -> None:
        super().__init__()
        self.aux_weight = float(aux_weight)
        self.ignore_index = int(ignore_index)
        self.threshold, self.min_kept = float(threshold), int(min_kept)
        self.class_weights = None if class_weights is None else tuple(map(float, class_weights))
        self.align_corners = bool(align_corners)
        self.boundary_weight, self.bas_weight = float(boundary_weight), float(bas_weight)

    def ohem(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return ohem_cross_entropy(
            logits, labels, self.threshold, self.min_kept, self.class_weights,
            self.ignore_index, self.align_corners,
        )  # fmt: skip

    def forward(
        self, out: dict[str, torch.Tensor], labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        main = to_label_size(out["logits"], labels, self.align_corners)
        terms = {"ce": self.ohem(main, labels)}
        loss = terms["ce"]
        if self.aux_weight > 0 and out.get("aux") is not None:
            aux = to_label_size(out["aux"], labels, self.align_corners)
            terms["aux"] = pixel_cross_entropy(
                aux, labels, self.class_weights, self.ignore_index
            ).mean()
            loss = loss + self.aux_weight * terms["aux"]
        boundary = out.get("boundary")
        if boundary is not None:
            boundary = to_label_size(boundary, labels, self.align_corners)
            terms["boundary"] = balanced_bce_every_pixel(boundary, canny_boundary_targets(labels))
            gated = boundary_aware_labels(boundary, labels, ignore_index=self.ignore_index)
            terms["bas"] = self.ohem(main, gated)
            loss = loss + self.boundary_weight * terms["boundary"] + self.bas_weight * terms["bas"]
        terms["loss"] = loss
        return terms
