"""Pixel-wise knowledge distillation on the 1/8-resolution logits (Hinton-style KL per pixel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.labels import IGNORE_INDEX
from distill.losses.labels import resize_labels


def to_teacher_grid(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, what: str
) -> torch.Tensor:
    """Logit-matching losses (KD, CWD) compare the same batch and channels; a student logit
    map at another resolution (another output stride, odd sizes rounded differently) is
    resized bilinearly to the teacher's."""
    if student_logits.shape[:2] != teacher_logits.shape[:2]:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in batch or {what}"
        )
    if student_logits.shape[-2:] != teacher_logits.shape[-2:]:
        student_logits = F.interpolate(
            student_logits, size=teacher_logits.shape[-2:], mode="bilinear", align_corners=False
        )
    return student_logits


def pixel_kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """KL(softmax(z_t/T) || softmax(z_s/T)) * T^2, averaged over valid pixels.

    `labels` (B x H x W, any resolution) only select the pixels: they are resized NEAREST
    to the logit size and ignore pixels drop out. None means every pixel counts.
    Student logits at another resolution than the teacher's (a student of another
    output stride, or odd sizes rounded differently) are resized bilinearly to the
    teacher's, as CWD does.
    """
    student_logits = to_teacher_grid(student_logits, teacher_logits, "classes; KD needs the same")
    t = float(temperature)
    log_ps = F.log_softmax(student_logits.float() / t, dim=1)
    log_pt = F.log_softmax(teacher_logits.detach().float() / t, dim=1)
    per_pixel = (log_pt.exp() * (log_pt - log_ps)).sum(dim=1)  # B x h x w
    if labels is None:
        return per_pixel.mean() * (t * t)
    valid = resize_labels(labels, tuple(student_logits.shape[-2:])) != ignore_index
    count = valid.sum().clamp_min(1)
    return (per_pixel * valid).sum() / count * (t * t)


class PixelKDLoss(nn.Module):
    """Module form of `pixel_kd_loss` with a fixed temperature."""

    def __init__(self, temperature: float = 1.0, ignore_index: int = IGNORE_INDEX) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"KD temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)
        self.ignore_index = int(ignore_index)

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return pixel_kd_loss(
            student_logits, teacher_logits, labels, self.temperature, self.ignore_index
        )
