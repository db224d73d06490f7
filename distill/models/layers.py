"""Small layers every family uses: conv + BN (+ ReLU), the bilinear resize, the default init."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def resize_to(x: torch.Tensor, like: torch.Tensor, align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize of `x` to `like`'s spatial size. The target comes from the tensor it
    meets, so a network stays correct at any input size (and an export at its own size)."""
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=align_corners)


def conv_bn(cin: int, cout: int, kernel: int = 1, stride: int = 1) -> nn.Sequential:
    """conv (no bias) + BN, no activation: residual shortcuts and fusion paths."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(cout)
    )


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    """conv (no bias) -> BN -> ReLU, indices 0/1/2: every ResNet head's unit."""
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def kaiming_init(module: nn.Module) -> None:
    """Kaiming (fan_out) convs, unit BN: the init of every layer not loaded from ImageNet
    weights (the ResNet heads; the whole DDRNet/PIDNet, as their authors do)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
