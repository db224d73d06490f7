"""Channel-wise distillation (Shu et al., ICCV 2021) on the logits.

Each channel's map is turned into a distribution over spatial positions (softmax over
h*w at temperature T); the student matches the teacher's with KL(teacher || student)
summed over positions, averaged over channels and images, times T^2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.losses.kd import to_teacher_grid


def channel_wise_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0
) -> torch.Tensor:
    student_logits = to_teacher_grid(student_logits, teacher_logits, "channels")
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
