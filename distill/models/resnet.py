"""The one ResNet block family: basic blocks, bottlenecks and the dilated ResNet trunk.

Every ResNet in segkd is built from these, with switches for what its source does:
- the dilated trunks of PSPNet / DeepLabV3 (segkd's own, torchvision's
  replace_stride_with_dilation, CIRKD's ResNetV1b, mmsegmentation's ResNetV1c);
- the real-time two-branch networks (DDRNet, PIDNet: `distill.models.dualres`), whose
  bottlenecks expand by 2, not 4, and whose blocks may end without ReLU (a fusion adds
  to them first).

Parameter names follow torchvision (conv1, bn1, layer1..layer4, downsample.0/1), so a
torchvision ImageNet state dict loads straight into the plain-stem trunk.

Dilation (output stride 8, the standard dilated-ResNet code: PSPNet/semseg, encoding,
CIRKD, torchvision, mmseg "d8"): layer3 and layer4 keep stride 1 and use dilation 2 and 4,
and the first block of each dilated stage uses half of it (1 in layer3, 2 in layer4) in
its strided 3x3 position, which avoids gridding at the stage boundary (mmseg calls this
contract_dilation). A basic block dilates its second conv with the stage's dilation
(torchvision, CIRKD) unless `basic_conv2_dilated` is off (mmseg: conv2 is a plain 3x3).

The deep stem replaces the 7x7 conv with three 3x3 convs (3 -> w/2 stride 2, w/2 -> w/2,
w/2 -> w) named conv1/bn1..conv3/bn3: w = 128 is the semseg/CIRKD "deep base" whose
ImageNet files load into it; mmseg's ResNetV1c is w = 64 (its `stem.N` keys are mapped in
`distill.models.weights`). A torchvision checkpoint does not fit that stem;
`distill.models.weights.load_backbone_weights` reports exactly which keys were skipped.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.layers import conv_bn, kaiming_init

# depth -> (block kind, blocks per stage)
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs; the stride sits on conv1, `dilation` is (conv1's, conv2's)."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: tuple[int, int] = (1, 1),
        downsample: nn.Module | None = None,
        out_relu: bool = True,
    ) -> None:
        super().__init__()
        self.expansion = 1
        self.conv1 = conv3x3(inplanes, planes, stride, dilation[0])
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, 1, dilation[1])
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.out_relu = out_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out)) + identity
        return F.relu(out) if self.out_relu else out


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride, dilation: ResNet v1.5) -> 1x1 to `expansion` x planes."""

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
        out_relu: bool = True,
        expansion: int = 4,
    ) -> None:
        super().__init__()
        self.expansion = expansion
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * expansion)
        self.downsample = downsample
        self.out_relu = out_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out)) + identity
        return F.relu(out) if self.out_relu else out


def shortcut(cin: int, cout: int, stride: int) -> nn.Module | None:
    """The 1x1 conv + BN projection when a block changes shape, else None (identity)."""
    return conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None


def block_dilations(
    n: int, dilation: int, contract: bool = True, multi_grid: Sequence[int] | None = None
) -> list[int]:
    """Each block's dilation in a stage of `n`: multi_grid replaces the stage's dilation
    block by block; otherwise contract halves the first block's when the stage is dilated."""
    if multi_grid is not None:
        if len(multi_grid) != n:
            raise ValueError(f"multi_grid {tuple(multi_grid)} for a stage of {n} blocks")
        return list(multi_grid)
    first = dilation // 2 if dilation > 1 and contract else dilation
    return [first] + [dilation] * (n - 1)


class DilatedResNet(nn.Module):
    """ResNet trunk without avgpool/fc; `forward` returns (layer3, layer4) features.

    Defaults: output stride 8 (strides 1, 2, 1, 1; dilations 1, 1, 2, 4). `deep_stem`
    chooses the three-conv stem of width `stem_channels` (128 unless given; 64 for the
    7x7 stem). `multi_grid` applies to the last stage only.
    """

    def __init__(
        self,
        depth: int,
        deep_stem: bool = False,
        *,
        stem_channels: int | None = None,
        strides: Sequence[int] = (1, 2, 1, 1),
        dilations: Sequence[int] = (1, 1, 2, 4),
        contract_dilation: bool = True,
        multi_grid: Sequence[int] | None = None,
        basic_conv2_dilated: bool = True,
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(DEPTHS)}")
        kind, blocks = DEPTHS[depth]
        self.depth, self.deep_stem = depth, deep_stem
        width = stem_channels or (128 if deep_stem else 64)
        if deep_stem:
            self.conv1 = conv3x3(3, width // 2, stride=2)
            self.bn1 = nn.BatchNorm2d(width // 2)
            self.conv2 = conv3x3(width // 2, width // 2)
            self.bn2 = nn.BatchNorm2d(width // 2)
            self.conv3 = conv3x3(width // 2, width)
            self.bn3 = nn.BatchNorm2d(width)
        else:
            self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes, channels = width, []
        for i, (n, stride, dilation) in enumerate(zip(blocks, strides, dilations, strict=True)):
            per_block = block_dilations(
                n, dilation, contract_dilation, multi_grid if i == 3 else None
            )
            conv2 = dilation if basic_conv2_dilated else 1
            layer = _stage(kind, inplanes, 64 * 2**i, stride, per_block, conv2)
            self.add_module(f"layer{i + 1}", layer)
            inplanes = layer[0].expansion * 64 * 2**i
            channels.append(inplanes)
        self.layer3_channels, self.out_channels = channels[2], channels[3]
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.relu(self.bn1(self.conv1(x)))
        if self.deep_stem:
            x = F.relu(self.bn2(self.conv2(x)))
            x = F.relu(self.bn3(self.conv3(x)))
        x = self.layer2(self.layer1(self.maxpool(x)))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)


def _stage(
    kind: str, inplanes: int, planes: int, stride: int, dilations: list[int], conv2: int
) -> nn.Sequential:
    """One trunk stage: the first block strides (and projects), each block its dilation."""
    out = planes * (1 if kind == "basic" else 4)
    layers: list[nn.Module] = []
    for j, d in enumerate(dilations):
        cin, s = (inplanes, stride) if j == 0 else (out, 1)
        down = shortcut(cin, out, s) if j == 0 else None
        if kind == "basic":
            layers.append(BasicBlock(cin, planes, s, (d, conv2), down))
        else:
            layers.append(Bottleneck(cin, planes, s, d, down))
    return nn.Sequential(*layers)
