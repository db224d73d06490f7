"""Dilated ResNet-18/50/101 backbones at output stride 8.

Parameter names follow torchvision (conv1, bn1, layer1..layer4, downsample.0/1), so a
torchvision ImageNet state dict loads straight into the plain-stem variant.

Dilation follows the standard dilated-ResNet code (PSPNet/semseg, encoding, CIRKD):
layer3 and layer4 keep stride 1 and use dilation 2 and 4, and the first block of each
dilated stage uses the previous stage's dilation (1 for layer3, 2 for layer4) in its
strided 3x3 position, which avoids gridding at the stage boundary.

The optional deep stem replaces the 7x7 conv with three 3x3 convs (3->64 stride 2,
64->64, 64->128) named conv1/bn1, conv2/bn2, conv3/bn3 like the semseg/CIRKD "deep
base" ImageNet checkpoints, which therefore load into it. A torchvision checkpoint
does not fit that stem (conv1 has another shape, conv2/conv3 do not exist, layer1
starts from 128 channels); `distill.models.registry.load_backbone_weights` reports
exactly which keys were skipped.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
}


def _conv3x3(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation, bias=False)


class BasicBlock(nn.Module):
    expansion: ClassVar[int] = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = _conv3x3(inplanes, planes, stride, first_dilation)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = _conv3x3(planes, planes, 1, dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride sits on the 3x3 conv."""

    expansion: ClassVar[int] = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        first_dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride, first_dilation)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        del dilation  # a bottleneck has one 3x3 conv: only first_dilation is used

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class DilatedResNet(nn.Module):
    """ResNet trunk without avgpool/fc; `forward` returns (layer3, layer4) features at 1/8."""

    def __init__(self, depth: int, deep_stem: bool = False) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(DEPTHS)}")
        kind, blocks = DEPTHS[depth]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        self.depth = depth
        self.deep_stem = deep_stem
        if deep_stem:
            self.conv1 = _conv3x3(3, 64, stride=2)
            self.bn1 = nn.BatchNorm2d(64)
            self.conv2 = _conv3x3(64, 64)
            self.bn2 = nn.BatchNorm2d(64)
            self.conv3 = _conv3x3(64, 128)
            self.bn3 = nn.BatchNorm2d(128)
            self.inplanes = 128
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.inplanes = 64
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, blocks[0])
        self.layer2 = self._make_layer(block, 128, blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, blocks[2], dilation=2, prev_dilation=1)
        self.layer4 = self._make_layer(block, 512, blocks[3], dilation=4, prev_dilation=2)
        self.layer3_channels = 256 * block.expansion
        self.out_channels = 512 * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        planes: int,
        blocks: int,
        stride: int = 1,
        dilation: int = 1,
        prev_dilation: int = 1,
    ) -> nn.Sequential:
        out = planes * block.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
            )
        layers = [
            block(
                self.inplanes,
                planes,
                stride,
                dilation=dilation,
                first_dilation=prev_dilation,
                downsample=downsample,
            )
        ]
        self.inplanes = out
        layers += [
            block(out, planes, dilation=dilation, first_dilation=dilation) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.deep_stem:
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.relu(self.bn2(self.conv2(x)))
            x = self.relu(self.bn3(self.conv3(x)))
        else:
            x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(self.maxpool(x)))
        c3 = self.layer3(x)
        c4 = self.layer4(c3)
        return c3, c4
