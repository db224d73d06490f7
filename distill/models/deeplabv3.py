"""DeepLabV3 (Chen et al., "Rethinking Atrous Convolution for Semantic Image
Segmentation", 2017) on a dilated ResNet.

Head: ASPP with 256 channels per branch (1x1, 3x3 at rates 12/24/36, image pooling
upsampled bilinearly), 1x1 projection + BN + ReLU + Dropout(0.5), 3x3 conv 256 + BN +
ReLU (the feature IDD/PID distil), Dropout2d(0.1), 1x1 classifier: torchvision's
DeepLabHead plus CIRKD's dropout before the classifier. CIRKD's current code uses 512
per branch (~+7 M / +18 M parameters) and align_corners=True: the same head with
`channels` and `align_corners`, which is how `distill.zoo` loads torchvision's and
CIRKD's files into it. (mmseg's ASPPHead has no 1x1 projection and puts the pooling
branch first: another network, rebuilt in `distill.zoo.mmseg`.)
Training adds the auxiliary FCN head on layer3 (`distill.models.segmentor.FCNHead`).

Measured with distill.models.complexity, deep stem, 19 classes, 512x1024, aux included:
DeepLabV3-R18 16.20 M / 150.1 GMAC, DeepLabV3-R101 61.12 M / 515.9 (METHOD.md's ranges).
Pooling uses AdaptiveAvgPool2dMatmul so the head exports to ONNX at any input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from distill.models.layers import conv_bn_relu, kaiming_init, resize_to
from distill.models.pooling import AdaptiveAvgPool2dMatmul
from distill.models.registry import register_model
from distill.models.segmentor import Segmentor, build_segmentor
from distill.models.weights import load_backbone_weights

ASPP_RATES: tuple[int, ...] = (12, 24, 36)
ASPP_CHANNELS = 256


class ASPPPooling(nn.Module):
    """Image-level branch: global average -> 1x1 conv -> broadcast back to h x w."""

    def __init__(self, in_channels: int, channels: int, align_corners: bool = False) -> None:
        super().__init__()
        self.align_corners = align_corners
        self.pool = AdaptiveAvgPool2dMatmul(1)
        self.conv = conv_bn_relu(in_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resize_to(self.conv(self.pool(x)), x, self.align_corners)


class ASPP(nn.Module):
    def __init__(
        self,
        in_channels: int,
        channels: int = ASPP_CHANNELS,
        rates: Sequence[int] = ASPP_RATES,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)]
            + [conv_bn_relu(in_channels, channels, kernel=3, dilation=r) for r in rates]
            + [ASPPPooling(in_channels, channels, align_corners)]
        )
        self.project = nn.Sequential(
            conv_bn_relu(len(self.branches) * channels, channels), nn.Dropout(0.5)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([b(x) for b in self.branches], dim=1))


class DeepLabV3Head(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = ASPP_CHANNELS,
        rates: Sequence[int] = ASPP_RATES,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.channels = channels
        self.aspp = ASPP(in_channels, channels, rates, align_corners)
        self.bottleneck = conv_bn_relu(channels, channels, kernel=3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.bottleneck(self.aspp(x))
        return self.classifier(self.dropout(feat)), feat


@register_model("resnet", weights=load_backbone_weights)
def deeplabv3_r18(num_classes: int, **kwargs) -> Segmentor:
    return build_segmentor("deeplabv3_r18", 18, num_classes, DeepLabV3Head, **kwargs)


@register_model("resnet", weights=load_backbone_weights)
def deeplabv3_r50(num_classes: int, **kwargs) -> Segmentor:
    return build_segmentor("deeplabv3_r50", 50, num_classes, DeepLabV3Head, **kwargs)


@register_model("resnet", weights=load_backbone_weights)
def deeplabv3_r101(num_classes: int, **kwargs) -> Segmentor:
    return build_segmentor("deeplabv3_r101", 101, num_classes, DeepLabV3Head, **kwargs)
