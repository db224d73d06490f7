"""PSPNet (Zhao et al., "Pyramid Scene Parsing Network", CVPR 2017) on a dilated ResNet.

Head (the original PSPNet, semseg, and SKD/IFVD's PSPModule): each pyramid bin
(1, 2, 3, 6) is an adaptive average pool -> 1x1 conv + BN + ReLU to in/4 channels,
upsampled bilinearly and concatenated after the input; a 3x3 conv + BN + ReLU to in/4
channels (512 for ResNet-50/101, 128 for ResNet-18) is the feature IDD/PID distil;
Dropout2d(0.1) and a 1x1 classifier follow. CIRKD narrows the 3x3 to 256 (~9 M fewer
parameters) and upsamples with align_corners=True; mmseg uses 512 channels per bin: both
are this head with other widths (`bin_channels`, `channels`, `align_corners`), which is
how `distill.zoo` loads their files into it.
Training adds the auxiliary FCN head on layer3 (`distill.models.segmentor.FCNHead`).

Measured with distill.models.complexity (exact conv + matmul MACs), deep stem, 19
classes, 512x1024, aux included: PSPNet-R18 12.92 M / 122.2 GMAC, PSPNet-R101
68.07 M / 543.0 (METHOD.md's ranges); the torchvision stem is 0.15 M / 15 GMAC lighter
(PSPNet-R18 12.77 M / 107.2 GMAC).
All normalisation is nn.BatchNorm2d, so nn.SyncBatchNorm.convert_sync_batchnorm applies.
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

PSP_BINS: tuple[int, ...] = (1, 2, 3, 6)


class PyramidPooling(nn.Module):
    """Concatenates x with each bin's pooled -> 1x1 conv -> upsampled map."""

    def __init__(
        self,
        in_channels: int,
        bin_channels: int,
        bins: Sequence[int] = PSP_BINS,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        self.bins = tuple(bins)
        self.align_corners = align_corners
        self.stages = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool2dMatmul(b), conv_bn_relu(in_channels, bin_channels))
            for b in self.bins
        )
        self.out_channels = in_channels + len(self.bins) * bin_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ups = (resize_to(stage(x), x, self.align_corners) for stage in self.stages)
        return torch.cat([x, *ups], dim=1)


class PSPHead(nn.Module):
    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        bins: Sequence[int] = PSP_BINS,
        bin_channels: int | None = None,
        channels: int | None = None,
        align_corners: bool = False,
    ) -> None:
        super().__init__()
        bin_channels = bin_channels or in_channels // 4
        self.channels = channels or in_channels // 4
        self.ppm = PyramidPooling(in_channels, bin_channels, bins, align_corners)
        self.bottleneck = conv_bn_relu(self.ppm.out_channels, self.channels, kernel=3)
        self.dropout = nn.Dropout2d(0.1)
        self.classifier = nn.Conv2d(self.channels, num_classes, 1)
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.bottleneck(self.ppm(x))
        return self.classifier(self.dropout(feat)), feat


@register_model("resnet", weights=load_backbone_weights)
def pspnet_r18(num_classes: int, **kwargs) -> Segmentor:
    return build_segmentor("pspnet_r18", 18, num_classes, PSPHead, **kwargs)


@register_model("resnet", weights=load_backbone_weights)
def pspnet_r50(num_classes: int, **kwargs) -> Segmentor:
    return build_segmentor("pspnet_r50", 50, num_classes, PSPHead, **kwargs)


@register_model("resnet", weights=load_backbone_weights)
def pspnet_r101(num_classes: int, **kwargs) -> Segmentor:
    return build_segmentor("pspnet_r101", 101, num_classes, PSPHead, **kwargs)
