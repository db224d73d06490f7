"""Pieces shared by the two-branch real-time networks (DDRNet, PIDNet).

Both papers build on the same pieces, described here from the papers and the
authors' public model definitions (ydhongHIT/DDRNet, XuJiacong/PIDNet):
- a stem of two stride-2 3x3 convs (with bias) + BN + ReLU, to 1/4;
- ResNet basic blocks and bottlenecks (`distill.models.resnet`) whose expansion is 2,
  not 4; the last block of a stage ends without ReLU (fusion adds to it first), and a
  bottleneck stage's first block has none either;
- pre-activation convs (BN -> ReLU -> conv) in the context modules and heads;
- the segmentation head: BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1 classifier.
Module and index names follow the authors' layout (`conv1.0`, `layer3_.1.bn2`,
`final_layer.conv2`, `spp.scale1.3`), so their published ImageNet state dicts load by
name (`distill.models.weights.load_realtime_imagenet`).

Every resize takes its target size from the tensor it is added to. That keeps the
networks correct at any input size (odd sizes round up through the stride-2 convs on
both branches alike); a static-size export folds those sizes into constants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SegkdError
from distill.models.resnet import BasicBlock, Bottleneck, shortcut

BOTTLENECK_EXPANSION = 2  # the papers' bottleneck widens by 2 (ResNet's by 4)


def pre_act_conv(cin: int, cout: int, kernel: int = 1, groups: int = 1) -> nn.Sequential:
    """BN -> ReLU -> conv (no bias); indices 0/1/2 like the authors' Sequentials."""
    return nn.Sequential(
        nn.BatchNorm2d(cin),
        nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, kernel, padding=kernel // 2, groups=groups, bias=False),
    )


def pooled_branch(cin: int, cout: int, kernel: int | None) -> nn.Sequential:
    """Average pool -> BN -> ReLU -> 1x1 conv (indices 0..3).

    `kernel` k pools with stride k // 2 and padding k // 2, the papers' pairs (5, 2),
    (9, 4), (17, 8): fixed ops that export as plain AveragePool. None is the image-level
    branch, a global average (GlobalAveragePool).
    """
    pool: nn.Module
    if kernel is None:
        pool = nn.AdaptiveAvgPool2d(1)
    else:
        pool = nn.AvgPool2d(kernel, stride=kernel // 2, padding=kernel // 2)
    return nn.Sequential(pool, *pre_act_conv(cin, cout))


# The pyramid's pooled branches (kernel, stride = kernel // 2): 1/2, 1/4, 1/8 and global.
PYRAMID_KERNELS: tuple[int | None, ...] = (5, 9, 17, None)


def stem(cout: int) -> nn.Sequential:
    """Two stride-2 3x3 convs (bias=True, as published) with BN + ReLU: input to 1/4."""
    return nn.Sequential(
        nn.Conv2d(3, cout, 3, 2, 1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, 2, 1),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def block(kind: str, cin: int, planes: int, stride: int = 1, relu: bool | None = None):
    """One block ("basic" or "bottleneck"), with a 1x1 conv + BN shortcut when its shape
    changes; `relu` None is the kind's default ending (basic: ReLU, bottleneck: none)."""
    if kind == "basic":
        down = shortcut(cin, planes, stride)
        return BasicBlock(cin, planes, stride, downsample=down, out_relu=relu is not False)
    down = shortcut(cin, planes * BOTTLENECK_EXPANSION, stride)
    return Bottleneck(
        cin, planes, stride, downsample=down, out_relu=bool(relu), expansion=BOTTLENECK_EXPANSION
    )


def stage(kind: str, cin: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """`blocks` blocks; the first keeps the kind's default ending, middle ones end with
    ReLU and the last (if not also the first) ends without."""
    layers: list[nn.Module] = [block(kind, cin, planes, stride)]
    cout = planes * (1 if kind == "basic" else BOTTLENECK_EXPANSION)
    layers += [block(kind, cout, planes, relu=i < blocks - 1) for i in range(1, blocks)]
    return nn.Sequential(*layers)


class SegHead(nn.Module):
    """BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1 classifier; returns (logits, feat).

    `feat` is the classifier's input (after the second ReLU), the map IDD/PID distil.
    """

    def __init__(self, cin: int, channels: int, num_classes: int) -> None:
        super().__init__()
        self.channels = channels
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = F.relu(self.bn2(self.conv1(F.relu(self.bn1(x)))))
        return self.conv2(feat), feat


def refuse_deep_stem(arch: str, deep_stem: bool) -> None:
    """`--deep-stem` chooses a ResNet stem; these networks have their own."""
    if deep_stem:
        raise SegkdError(f"--deep-stem is for the ResNet models; {arch} has its own stem")
