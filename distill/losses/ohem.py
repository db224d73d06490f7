"""Online hard example mining (OHEM) cross-entropy, the supervised loss the DDRNet and
PIDNet authors train with (their HRNet-derived code bases; facts and sources in
docs/notes/authors.md).

Per batch: each valid pixel's softmax probability of its true class is ranked; pixels
whose probability is below max(threshold, the (min_kept+1)-th smallest probability) are
kept, and the loss is the plain mean of their (class-weighted) CE. So at least `min_kept`
of the hardest pixels always count, and every pixel the model is less than `threshold`
sure of counts too.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from core.labels import IGNORE_INDEX

OHEM_THRESHOLD = 0.9  # LOSS.OHEMTHRES of both authors' Cityscapes configs
OHEM_MIN_KEPT = 131072  # LOSS.OHEMKEEP, pixels per (per-GPU) batch

# The per-class CE weights the authors' Cityscapes dataset class hands to the criterion
# (train-id order, road .. bicycle), from HRNet-Semantic-Segmentation's cityscapes.py.
CITYSCAPES_CLASS_WEIGHTS = (
    0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786, 1.0023,
    0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529, 1.0507,
)  # fmt: skip


def to_label_size(logits: torch.Tensor, labels: torch.Tensor, align_corners: bool) -> torch.Tensor:
    """float32 logits bilinearly resized to the label map's size (no-op when equal)."""
    logits = logits.float()
    if tuple(logits.shape[-2:]) == tuple(labels.shape[-2:]):
        return logits
    return F.interpolate(
        logits, size=labels.shape[-2:], mode="bilinear", align_corners=align_corners
    )


def _weights(class_weights: Sequence[float] | None, like: torch.Tensor) -> torch.Tensor | None:
    if class_weights is None:
        return None
    return torch.as_tensor(class_weights, dtype=like.dtype, device=like.device)


def pixel_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    class_weights: Sequence[float] | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """B x H x W class-weighted CE per pixel, 0 on ignore pixels."""
    return F.cross_entropy(
        logits, labels, weight=_weights(class_weights, logits), ignore_index=ignore_index,
        reduction="none",
    )  # fmt: skip


def ohem_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    threshold: float = OHEM_THRESHOLD,
    min_kept: int = OHEM_MIN_KEPT,
    class_weights: Sequence[float] | None = None,
    ignore_index: int = IGNORE_INDEX,
    align_corners: bool = False,
) -> torch.Tensor:
    """OHEM CE of `logits` (upsampled to the labels) over the whole batch.

    A batch with no valid pixel, or none kept, gives 0 (the authors' code would return
    NaN or fail to index there).
    """
    logits = to_label_size(logits, labels, align_corners)
    losses = pixel_cross_entropy(logits, labels, class_weights, ignore_index).flatten()
    valid = labels.flatten() != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0
    with torch.no_grad():  # the selection is not differentiated, as upstream
        safe = torch.where(labels == ignore_index, torch.zeros_like(labels), labels)
        prob = torch.softmax(logits, dim=1).gather(1, safe[:, None]).flatten()[valid]
        ranked = torch.sort(prob).values
        kth = ranked[min(max(1, int(min_kept)), ranked.numel() - 1)]
        keep = prob < torch.clamp(kth, min=float(threshold))
    kept = losses[valid][keep]
    if kept.numel() == 0:
        return logits.sum() * 0.0
    return kept.mean()
