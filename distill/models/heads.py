"""Segmentation heads: PSPNet pyramid pooling, DeepLabV3 ASPP and the auxiliary FCN head.

Every head's `forward` returns (logits, feat): `feat` is the map right before the 1x1
classifier (after ReLU, before dropout), the feature IDD/PID distil.

Widths (chosen so params and MACs at 512x1024, aux included, land in METHOD.md's
ranges, which are for the deep-stem ResNets all reference code bases use):
- PSPNet: each pyramid bin is a 1x1 conv to in/4 channels, the 3x3 bottleneck goes
  to in/4 channels (512 for ResNet-50/101, 128 for ResNet-18): the original PSPNet
  (semseg) and SKD/IFVD's PSPModule. CIRKD uses 256 for ResNet-50/101 (~9 M fewer).
- DeepLabV3: ASPP with 256 channels per branch (1x1, 3x3 at rates 12/24/36, image
  pooling), 1x1 projection + BN + ReLU + Dropout(0.5), 3x3 conv 256 + BN + ReLU,
  Dropout2d(0.1), 1x1 classifier: torchvision's DeepLabHead plus CIRKD's dropout
  before the classifier. CIRKD 2022 uses 512 per branch (~+7 M / +18 M params).
- Auxiliary FCN head on layer3: 3x3 conv to in/4 + BN + ReLU, Dropout2d(0.1), 1x1
  classifier: torchvision's FCNHead and CIRKD's _FCNHead.
Measured with distill.models.complexity (exact conv + matmul MACs), deep stem,
19 classes: PSPNet-R18 12.92 M / 122.2 GMAC, PSPNet-R101 68.07 M / 543.0,
DeepLabV3-R18 16.20 M / 150.1, DeepLabV3-R101 61.12 M / 515.9. The torchvision
stem is 0.15 M / 15 GMAC lighter (PSPNet-R18 12.77 M / 107.2 GMAC).
All normalisation is nn.BatchNorm2d, so nn.SyncBatchNorm.convert_sync_batchnorm applies.
Pooling uses AdaptiveAvgPool2dMatmul so the heads export to ONNX at any input size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.pooling import AdaptiveAvgPool2dMatmul

PSP_BINS: tuple[int, ...] = (1, 2, 3, 6)
ASPP_RATES: tuple[int, ...] = (12, 24, 36)
ASPP_CHANNELS = 256


def conv_bn_relu(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _upsample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def kaiming_init(module: nn.Module) -> None:
    """Kaiming (fan_out) convs, unit BN: the init of every layer not loaded from ImageNet
    weights (the heads here; the whole DDRNet/PIDNet, as their authors do)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class PyramidPooling(nn.Module):
    """Concatenates x with each bin's pooled -> 1x1 conv -> upsampled map."""

    def __init__(self, in_channels: int, bin_channels: int, bins: Sequence[int] = PSP_BINS):
        super().__init__()
        self.bins = tuple(bins)
        self.stages = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool2dMatmul(b), conv_bn_relu(in_channels, bin_channels))
            for b in self.bins
        )
        self.out_channels = in_channels + len(self.bins) * bin_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, *(_upsample(stage(x), x) for stage in self.stages)], dim=1)


class PSPHead(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        bins: Sequence[int] = PSP_BINS,
        bin_channels: int | None = None,
        channels: int | None = None,
    ) -> None:
        super().__init__()
        bin_channels = bin_channels or in_channels // 4
        self.channels = channels or in_channels // 4
        self.ppm = PyramidPooling(in_channels, bin_channels, bins)
        self.bottleneck = conv_bn_relu(self.ppm.out_channels, self.channels, kernel=3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(self.channels, num_classes, 1)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.bottleneck(self.ppm(x))
        return self.classifier(self.dropout(feat)), feat


class ASPPPooling(nn.Module):
    """Image-level branch: global average -> 1x1 conv -> broadcast back to h x w."""

    def __init__(self, in_channels: int, channels: int) -> None:
        super().__init__()
        self.pool = AdaptiveAvgPool2dMatmul(1)
        self.conv = conv_bn_relu(in_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _upsample(self.conv(self.pool(x)), x)


class ASPP(nn.Module):
    def __init__(
        self, in_channels: int, channels: int = ASPP_CHANNELS, rates: Sequence[int] = ASPP_RATES
    ) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, channels)]
            + [conv_bn_relu(in_channels, channels, kernel=3, dilation=r) for r in rates]
            + [ASPPPooling(in_channels, channels)]
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
    ) -> None:
        super().__init__()
        self.channels = channels
        self.aspp = ASPP(in_channels, channels, rates)
        self.bottleneck = conv_bn_relu(channels, channels, kernel=3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(channels, num_classes, 1)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.bottleneck(self.aspp(x))
        return self.classifier(self.dropout(feat)), feat


class FCNHead(nn.Module):
    """Auxiliary head on layer3, used only for the 0.4-weighted training loss."""

    def __init__(self, in_channels: int, num_classes: int, channels: int | None = None) -> None:
        super().__init__()
        self.channels = channels or in_channels // 4
        self.conv = conv_bn_relu(in_channels, self.channels, kernel=3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(self.channels, num_classes, 1)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.conv(x)
        return self.classifier(self.dropout(feat)), feat
