"""Channel-wise distillation (Shu et al., ICCV 2021) on the logits.

Each channel's map is turned into a distribution over spatial positions (softmax over
h*w at temperature T); the student matches the teacher's with KL(teacher || student)
summed over positions, averaged over channels and images, times T^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def channel_wise_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    if student_logits.shape[:2] != teacher_logits.shape[:2]:
        raise ValueError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in batch or channels"
        )
    if student_logits.shape[-2:] != teacher_logits.shape[-2:]:
        student_logits = F.interpolate(
            student_logits, size=teacher_logits.shape[-2:], mode="bilinear", align_corners=False
        )
    t = float(temperature)
    s = student_logits.float().flatten(2) / t  # B x K x hw
    tt = teacher_logits.detach().float().flatten(2) / t
    log_ps = F.log_softmax(s, dim=-1)
    log_pt = F.log_softmax(tt, dim=-1)
    kl = (log_pt.exp() * (log_pt - log_ps)).sum(dim=-1)  # B x K
    return kl.mean() * (t * t)


class ChannelWiseLoss(nn.Module):
    """Module form of `channel_wise_loss` with a fixed temperature (default 4, as in CWD)."""

    def __init__(self, temperature: float = 4.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"CWD temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return channel_wise_loss(student_logits, teacher_logits, self.temperature)
