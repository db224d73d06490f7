"""Inter-class distance distillation (Zhang, Zhou, Tu, IJCAI 2022), as specified in METHOD.md.

For each image, the centre of every class PRESENT in the (nearest-resized) label map is
the mean feature over that class's pixels; the student learns to reproduce the teacher's
matrix of distances between those centres. Everything is batched: one-hot masks
(B x K x hw) @ features (B x hw x C) give all centres in one matmul, torch.cdist all
distances, and a pair mask keeps only pairs i < j of present classes. Absent classes get
a placeholder centre that the pair mask never lets into the loss. The `normalize` scale
divides each image's distances by that image's feature spread (see feature_spread).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SegkdError
from core.labels import IGNORE_INDEX
from core.schema.distill import IDD_DISTANCES, IDD_SCALES
from distill.losses.labels import resize_labels


def _class_sums(
    feat: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sums B x K x C, counts B x K, valid B x hw): per-class feature sums and pixel counts."""
    b, c = feat.shape[:2]
    lab = labels.reshape(b, -1)
    # Ignore and out-of-range ids (e.g. 255) get an all-zero one-hot row.
    valid = (lab >= 0) & (lab < num_classes)
    onehot = F.one_hot(torch.where(valid, lab, 0), num_classes).to(feat.dtype)
    onehot = (onehot * valid.unsqueeze(-1).to(feat.dtype)).transpose(1, 2)  # B x K x hw
    counts = onehot.sum(dim=-1)  # B x K
    # (B x K x hw) @ (B x hw x C), computed as its transpose (B x C x hw) @ (B x hw x K) so
    # that the feature map is read, and its gradient written, in its own contiguous layout
    # (about 2-3x faster backward on CPU than the strided form).
    sums = torch.bmm(feat.reshape(b, c, -1), onehot.transpose(1, 2)).transpose(1, 2)  # B x K x C
    return sums, counts, valid


def class_centres(
    feat: torch.Tensor, labels: torch.Tensor, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean feature of every class in every image.

    feat: B x C x h x w; labels: B x h x w (already at feature size).
    Returns (centres B x K x C, present B x K bool). Rows of absent classes are zero and
    must be masked out by the caller with `present`.
    """
    sums, counts, _ = _class_sums(feat, labels, num_classes)
    return sums / counts.clamp_min(1.0).unsqueeze(-1), counts > 0


def class_distances(centres: torch.Tensor, distance: str = "euclidean") -> torch.Tensor:
    """B x K x K distances between class centres ("euclidean" or "cosine" = 1 - cos)."""
    if distance == "euclidean":
        # The direct (non-matmul) path is exact and gives a zero, not NaN, gradient at d=0.
        return torch.cdist(centres, centres, compute_mode="donot_use_mm_for_euclid_dist")
    if distance == "cosine":
        unit = F.normalize(centres, dim=-1, eps=1e-8)
        return 1.0 - torch.bmm(unit, unit.transpose(1, 2))
    raise ValueError(f"unknown IDD distance {distance!r}; choose one of {IDD_DISTANCES}")


def _pair_mask(present: torch.Tensor) -> torch.Tensor:
    """B x K x K bool: i < j and both classes present in the image."""
    k = present.shape[-1]
    upper = torch.ones(k, k, dtype=torch.bool, device=present.device).triu(diagonal=1)
    return present.unsqueeze(-1) & present.unsqueeze(-2) & upper


class _Spread(torch.autograd.Function):
    """s = sqrt(sum_p w_p ||x_p - m||^2 / n) for x B x C x hw, the labelled-pixel mask w and
    their mean m (B x C, given: ds/dm is 0 at the mean, so ds/dx = w (x - m) / (n s) is the
    whole derivative). Written out because autograd would keep the centred map (the size of
    the feature map: 0.5 GB at Cityscapes crops) until backward and make three more there;
    this keeps nothing new and makes one temporary in forward and one in backward."""

    @staticmethod
    def forward(ctx, x, mean, weight, n, eps):  # type: ignore[override]
        centred = (x - mean.unsqueeze(-1)).mul_(weight.unsqueeze(1))
        # Over pixels first (the contiguous axis; norms over C per pixel were 5-10x slower
        # on CPU), then over channels in float64. Centring keeps it exact far from 0.
        var = torch.linalg.vector_norm(centred, dim=-1).double().square().sum(dim=-1)
        var = var / n.double()
        spread = var.clamp_min(eps * eps).sqrt().to(x.dtype)
        ctx.save_for_backward(x, mean, weight, n, spread, var >= eps * eps)
        return spread

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # type: ignore[override]
        x, mean, weight, n, spread, live = ctx.saved_tensors
        # Where the clamp held (a flat map) the derivative is 0, never a NaN.
        coef = torch.where(live, grad / (n * spread), torch.zeros_like(grad))
        grad_x = (x - mean.unsqueeze(-1)).mul_((weight * coef.unsqueeze(-1)).unsqueeze(1))
        return grad_x, None, None, None, None


def _spread(
    feat: torch.Tensor, valid: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor, eps: float
) -> torch.Tensor:
    """feature_spread, its mean taken from the class sums."""
    b, c = feat.shape[:2]
    n = counts.sum(dim=-1).clamp_min(1.0)  # B
    mean = (sums.sum(dim=1) / n.unsqueeze(-1)).detach()  # B x C
    weight = valid.to(feat.dtype)
    return _Spread.apply(feat.reshape(b, c, -1), mean, weight, n.detach(), eps)


def feature_spread(
    feat: torch.Tensor, labels: torch.Tensor, num_classes: int, eps: float = 1e-6
) -> torch.Tensor:
    """B: each image's feature spread, the RMS distance of its labelled pixels' features from
    their mean, sqrt(mean_p ||f_p - mean f||^2) (labels already at feature size).

    It scales with the features (f -> a f + b gives a s) like Euclidean distances do, so
    D / s is free of the feature magnitude and offset, and of the width (channels tiled n
    times multiply both by sqrt(n)). Unlike the mean of D, it does not cancel when an image
    holds a single pair: it includes the spread within each class.
    """
    sums, counts, valid = _class_sums(feat, labels, num_classes)
    return _spread(feat, valid, sums, counts, eps)


def idd_loss(
    student_feat: torch.Tensor,
    teacher_feat: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    distance: str = "euclidean",
    normalize: bool = False,
    ignore_index: int = IGNORE_INDEX,
    eps: float = 1e-6,
) -> torch.Tensor:
    """L_idd = mean over images of mean over present pairs i<j of (D^t_ij - D^s_ij)^2.

    Features may differ in width (distances are scalars) but, for a meaningful loss, not in
    scale: see IDDLoss. `normalize` divides each image's Euclidean distances by that
    image's feature spread (feature_spread), teacher's and student's each by its own, so
    an image with two classes still gives a gradient; cosine distances are left as they
    are (already scale-free). The student's map is resized bilinearly to the teacher's size,
    labels NEAREST to that size. Always finite; images with < 2 present classes give 0.
    Computed in float32 whatever the autocast state.
    """
    device_type = student_feat.device.type
    with torch.autocast(device_type=device_type, enabled=False):
        fs = student_feat.float()
        ft = teacher_feat.detach().float()
        size = tuple(ft.shape[-2:])
        if tuple(fs.shape[-2:]) != size:
            fs = F.interpolate(fs, size=size, mode="bilinear", align_corners=False)
        lab = resize_labels(labels, size)
        sums_s, counts, valid = _class_sums(fs, lab, num_classes)
        sums_t, _, _ = _class_sums(ft, lab, num_classes)
        per_class = counts.clamp_min(1.0).unsqueeze(-1)
        ds = class_distances(sums_s / per_class, distance)
        dt = class_distances(sums_t / per_class, distance)
        pairs = _pair_mask(counts > 0)
        if normalize and distance == "euclidean":
            # Cosine distances are scale-free already; dividing them would undo that.
            ds = ds / _spread(fs, valid, sums_s, counts, eps).view(-1, 1, 1)
            dt = dt / _spread(ft, valid, sums_t, counts, eps).view(-1, 1, 1)
        # torch.where, not multiplication, so nothing from a masked entry can leak in.
        sq = torch.where(pairs, (dt - ds) ** 2, torch.zeros_like(ds))
        n_pairs = pairs.sum(dim=(1, 2))
        per_image = sq.sum(dim=(1, 2)) / n_pairs.clamp_min(1)
        return per_image.mean()


def make_adapter(in_channels: int, out_channels: int) -> nn.Sequential:
    """1x1 conv + BN mapping student features to the teacher's width [ours]; dropped at export."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class IDDLoss(nn.Module):
    """IDD with its scale option.

    scale: "adapter" (1x1 conv + BN student -> teacher width, trained with the student),
    "normalize" (each image's Euclidean D divided by its own feature spread: free of the
    feature scale and offset, and not inert on an image with a single pair of classes),
    "both", or "none" (only when the widths are equal). `self.adapter` is None unless the
    scale uses one; PIDLoss can share it.
    """

    def __init__(
        self,
        student_channels: int,
        teacher_channels: int,
        num_classes: int,
        distance: str = "euclidean",
        scale: str = "adapter",
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        if distance not in IDD_DISTANCES:
            raise SegkdError(
                f"idd_distance: unknown value {distance!r}; choose one of {', '.join(IDD_DISTANCES)}"
            )
        if scale not in IDD_SCALES:
            raise SegkdError(
                f"idd_scale: unknown value {scale!r}; choose one of {', '.join(IDD_SCALES)}"
            )
        if scale == "none" and student_channels != teacher_channels:
            raise SegkdError(
                f"idd_scale: 'none' needs equal feature widths, but the student has "
                f"{student_channels} and the teacher {teacher_channels} channels; "
                f"use 'adapter', 'normalize' or 'both'"
            )
        self.num_classes = int(num_classes)
        self.distance = distance
        self.scale = scale
        self.ignore_index = int(ignore_index)
        self.normalize = scale in ("normalize", "both")
        self.adapter: nn.Module | None = (
            make_adapter(student_channels, teacher_channels)
            if scale in ("adapter", "both")
            else None
        )

    def adapt(self, student_feat: torch.Tensor) -> torch.Tensor:
        """The student feature in the space it is compared in (float32 through the adapter)."""
        if self.adapter is None:
            return student_feat
        with torch.autocast(device_type=student_feat.device.type, enabled=False):
            return self.adapter(student_feat.float())

    def forward(
        self,
        student_feat: torch.Tensor,
        teacher_feat: torch.Tensor,
        labels: torch.Tensor,
        adapted: bool = False,
    ) -> torch.Tensor:
        """`adapted=True`: `student_feat` already went through `self.adapter` (the objective
        runs a shared adapter once per step for IDD and PID)."""
        return idd_loss(
            student_feat if adapted else self.adapt(student_feat),
            teacher_feat,
            labels,
            self.num_classes,
            distance=self.distance,
            normalize=self.normalize,
            ignore_index=self.ignore_index,
        )
