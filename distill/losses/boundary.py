"""PIDNet's boundary losses, for a model whose training output has a "boundary" logit map.

Two formulations: segkd's own (below: 5x5-window targets, BCE over valid pixels, used
with the plain-CE recipe) and the authors' (`canny_boundary_targets`,
`balanced_bce_every_pixel`, used by distill.losses.authors with OHEM; see
docs/notes/authors.md).

From the PIDNet paper and its public training code (XuJiacong/PIDNet):
- boundary targets come from the label map itself: pixels near a class change (the
  authors use Canny on the labels, dilated 4x4, a band about 4 pixels wide; here a
  5x5 window holding two different ids, the same width with no image operator);
- the boundary head is trained with a class-balanced BCE (positives weighted by the
  share of negatives and the reverse) at weight 20;
- boundary-awareness CE (BAS): the main logits' CE again, only on the pixels the
  boundary head puts above 0.8, at weight 1.
Everything is computed at label resolution, as the authors upsample every output first.
Ignore pixels never count, but a class meeting an ignore region still makes an edge.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from core.labels import IGNORE_INDEX
from distill.losses.ohem import to_label_size

BOUNDARY_WEIGHT = 20.0  # [lineage, PIDNet]
BAS_WEIGHT = 1.0  # [lineage, PIDNet]
BAS_THRESHOLD = 0.8  # [lineage, PIDNet]
EDGE_WINDOW = 5
# The authors' targets (datasets/base_dataset.py gen_sample, bd_dilate_size 4): Canny on the
# train-id map with thresholds 0.1 / 0.2, a 6-pixel frame cleared, a 4x4 dilation, > 50.
CANNY_THRESHOLDS = (0.1, 0.2)
CANNY_MARGIN = 6
CANNY_DILATION = 4


def boundary_targets(labels: torch.Tensor, window: int = EDGE_WINDOW) -> torch.Tensor:
    """B x H x W float map: 1 where a `window` x `window` neighbourhood holds two ids."""
    x = labels[:, None].float()
    pad = window // 2
    high = F.max_pool2d(x, window, stride=1, padding=pad)
    low = -F.max_pool2d(-x, window, stride=1, padding=pad)
    return (high != low)[:, 0].float()


def boundary_bce(
    boundary_logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Class-balanced BCE of the B x 1 x h x w boundary logits against `boundary_targets`,
    mean over valid pixels (0 when there is none)."""
    logits = to_label_size(boundary_logits, labels, align_corners=False)[:, 0]
    target = boundary_targets(labels)
    valid = (labels != ignore_index).float()
    pos = (target * valid).sum()
    neg = ((1 - target) * valid).sum()
    total = (pos + neg).clamp_min(1)
    weight = valid * torch.where(target > 0, neg / total, pos / total)
    per_pixel = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per_pixel * weight).sum() / valid.sum().clamp_min(1)


def boundary_aware_labels(
    boundary_logits: torch.Tensor,
    labels: torch.Tensor,
    threshold: float = BAS_THRESHOLD,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """`labels` kept where sigmoid(boundary) > threshold, ignore elsewhere (no gradient
    flows through the choice, as in the authors' code)."""
    with torch.no_grad():
        prob = torch.sigmoid(to_label_size(boundary_logits, labels, align_corners=False)[:, 0])
    return torch.where(prob > threshold, labels, torch.full_like(labels, ignore_index))


def canny_boundary_targets(
    labels: torch.Tensor, margin: int = CANNY_MARGIN, dilation: int = CANNY_DILATION
) -> torch.Tensor:
    """B x H x W float 0/1 boundary targets made as the PIDNet authors make them.

    Canny's thresholds sit below any label step (every id change is an edge, thinned to
    one pixel by its non-maximum suppression); ignore (255) counts as an id, as upstream.
    Runs on the CPU with OpenCV (the authors' operator); the result goes back to
    `labels.device`.
    """
    maps = labels.detach().to("cpu", torch.uint8).numpy()
    kernel = np.ones((dilation, dilation), np.uint8)
    out = np.zeros(maps.shape, np.float32)
    for i, label in enumerate(maps):
        edge = cv2.Canny(np.ascontiguousarray(label), *CANNY_THRESHOLDS)
        if margin:
            edge[:margin], edge[-margin:], edge[:, :margin], edge[:, -margin:] = 0, 0, 0, 0
        out[i] = cv2.dilate(edge, kernel, iterations=1) > 50
    return torch.from_numpy(out).to(labels.device)


def balanced_bce_every_pixel(
    boundary_logits: torch.Tensor, targets: torch.Tensor, align_corners: bool = False
) -> torch.Tensor:
    """The authors' boundary BCE: every pixel counts (ignore regions too), positives
    weighted by the share of negatives and the reverse, mean over all pixels."""
    logits = to_label_size(boundary_logits, targets, align_corners)[:, 0]
    pos = (targets == 1).float()
    neg = (targets == 0).float()
    total = pos.sum() + neg.sum()
    weight = pos * (neg.sum() / total) + neg * (pos.sum() / total)
    return F.binary_cross_entropy_with_logits(logits, targets.float(), weight, reduction="mean")
