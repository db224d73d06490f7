"""CIRKD's PSPNet and DeepLabV3 on its dilated ResNetV1b (deep stem) teachers.

Facts from winycg/CIRKD (models/base_models/resnetv1b.py, models/segbase.py,
models/pspnet.py, models/deeplabv3.py, dataset/cityscapes.py, eval.py, train_baseline.py):
- Backbone `pretrained`: resnet{18,50,101}_v1s = ResNetV1b with the deep stem (3x3 convs
  3->64 stride 2, 64->64, 64->128 as conv1/bn1..conv3/bn3), layer3/layer4 at stride 1 with
  dilation 2/4 (first block 1/2): exactly distill.models.resnet.DilatedResNet(deep_stem=True),
  whose parameter names are the same.
- PSPNet `head`: four 1x1 conv+BN+ReLU branches (`psp.conv1..4`, in/4 channels each) on
  AdaptiveAvgPool 1/2/3/6, upsampled with align_corners=True; `block` = 3x3 conv from 2x in
  to 256 (128 for ResNet-18) + BN + ReLU + Dropout(0.1); `classifier` 1x1. The feature is
  the block's output.
- DeepLabV3 `head`: `aspp` (b0 1x1, b1..b3 3x3 at rates 12/24/36, b4 image pooling upsampled
  with align_corners=True), `project` 1x1 + BN + ReLU + Dropout(0.5); `block` = 3x3 conv +
  BN + ReLU + Dropout(0.1) + 1x1 classifier. Width: 512 in the current code (CIRKDv2, its
  78.30 teacher), 256 (128 for ResNet-18) in the first release (the CVPR 2022 paper's 78.07
  teacher); read from the file's keys.
- `auxlayer` (_FCNHead on layer3): 3x3 conv to in/4 + BN + ReLU + Dropout(0.1) + 1x1.
- Checkpoints are torch.save(model.state_dict()) (DDP's `module.` unwrapped, though files
  saved from the wrapper keep the prefix).
- Input: cv2.imread BGR, float, minus mean (104.00698793, 116.66876762, 122.67891434) in
  BGR order, no std; logits upsampled to the image with align_corners=True.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SegkdError
from distill.models.pooling import AdaptiveAvgPool2dMatmul
from distill.models.resnet import DilatedResNet
from distill.zoo.base import (
    SourceConvention,
    ZooTeacher,
    labels_for,
    load_strict,
    resnet_depth,
    split_name,
    tensor,
)

CONVENTION = SourceConvention(
    color_order="BGR",
    mean=(104.00698793, 116.66876762, 122.67891434),
    std=(1.0, 1.0, 1.0),
    align_corners=True,
)
ARCHS = ("psp", "deeplabv3")


def _cbr(cin: int, cout: int, kernel: int = 1, dilation: int = 1) -> list[nn.Module]:
    pad = 0 if kernel == 1 else dilation
    return [
        nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


def _up(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class PyramidPooling(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.scales = (1, 2, 3, 6)
        self.pools = [AdaptiveAvgPool2dMatmul(s) for s in self.scales]  # no parameters
        for i in range(1, 5):
            self.add_module(f"conv{i}", nn.Sequential(*_cbr(cin, cin // 4)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        branches = [
            _up(getattr(self, f"conv{i + 1}")(p(x)), size) for i, p in enumerate(self.pools)
        ]
        return torch.cat([x, *branches], dim=1)


class PSPHead(nn.Module):
    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.channels = 256 if cin == 2048 else 128
        self.psp = PyramidPooling(cin)
        self.block = nn.Sequential(*_cbr(2 * cin, self.channels, 3), nn.Dropout(0.1))
        self.classifier = nn.Conv2d(self.channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.block(self.psp(x))
        return self.classifier(feat), feat


class ASPPConv(nn.Module):
    def __init__(self, cin: int, cout: int, rate: int) -> None:
        super().__init__()
        self.block = nn.Sequential(*_cbr(cin, cout, 3, rate))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class ASPPPooling(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.gap = nn.Sequential(AdaptiveAvgPool2dMatmul(1), *_cbr(cin, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _up(self.gap(x), x.shape[-2:])


class ASPP(nn.Module):
    def __init__(self, cin: int, cout: int = 512, rates: tuple[int, ...] = (12, 24, 36)) -> None:
        super().__init__()
        self.b0 = nn.Sequential(*_cbr(cin, cout))
        self.b1, self.b2, self.b3 = (ASPPConv(cin, cout, r) for r in rates)
        self.b4 = ASPPPooling(cin, cout)
        self.project = nn.Sequential(*_cbr(5 * cout, cout), nn.Dropout(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.b0(x), self.b1(x), self.b2(x), self.b3(x), self.b4(x)]
        return self.project(torch.cat(branches, dim=1))


class DeepLabHead(nn.Module):
    def __init__(self, cin: int, num_classes: int, channels: int = 512) -> None:
        super().__init__()
        self.channels = channels
        self.aspp = ASPP(cin, self.channels)
        self.block = nn.Sequential(
            *_cbr(self.channels, self.channels, 3),
            nn.Dropout(0.1),
            nn.Conv2d(self.channels, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feat = self.block[0:4](self.aspp(x))
        return self.block[4](feat), feat


class FCNHead(nn.Module):
    def __init__(self, cin: int, num_classes: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            *_cbr(cin, cin // 4, 3), nn.Dropout(0.1), nn.Conv2d(cin // 4, num_classes, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class CIRKDSegmentor(nn.Module):
    def __init__(
        self, arch: str, depth: int, num_classes: int, aux: bool, aspp_channels: int = 512
    ) -> None:
        super().__init__()
        self.pretrained = DilatedResNet(depth, deep_stem=True)
        cin = self.pretrained.out_channels
        self.head: nn.Module = (
            PSPHead(cin, num_classes)
            if arch == "psp"
            else DeepLabHead(cin, num_classes, aspp_channels)
        )
        if aux:
            self.auxlayer = FCNHead(cin // 2, num_classes)

    def forward(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        c3, c4 = self.pretrained(x)
        logits, feat = self.head(c4)
        aux_layer = getattr(self, "auxlayer", None)
        aux = aux_layer(c3) if aux_layer is not None and with_aux else None
        return logits, feat, aux


def looks_like(state: Mapping[str, Any]) -> bool:
    return any(k.startswith("pretrained.") for k in state) and any(
        k.startswith("head.") for k in state
    )


def build(
    state: Mapping[str, torch.Tensor], meta: Mapping[str, Any], path: Path, name: str | None
) -> ZooTeacher:
    del meta  # CIRKD files are bare state dicts
    if "pretrained.conv3.weight" not in state:
        raise SegkdError(
            f"{path}: CIRKD backbone without the deep stem (pretrained.conv3); only the "
            "resnet*_v1s backbones CIRKD's teachers use are supported"
        )
    depth = resnet_depth(state, "pretrained.", path, (18, 50, 101))
    if "head.psp.conv1.0.weight" in state:
        arch, classifier = "psp", "head.classifier.weight"
    elif "head.aspp.b0.0.weight" in state:
        arch, classifier = "deeplabv3", "head.block.4.weight"
    else:
        raise SegkdError(f"{path}: a CIRKD head other than PSPNet or DeepLabV3")
    if name is not None:
        want, want_depth = split_name(name, "_resnet")
        want = {"pspnet": "psp"}.get(want, want)
        if want != arch or (want_depth and want_depth != str(depth)):
            raise SegkdError(f"{path}: named {name!r}, but its keys hold {arch} on ResNet-{depth}")
    num_classes = int(tensor(state, classifier, path).shape[0])
    width = int(state["head.aspp.b0.0.weight"].shape[0]) if arch == "deeplabv3" else 512
    net = CIRKDSegmentor(
        arch, depth, num_classes, aux="auxlayer.block.0.weight" in state, aspp_channels=width
    )
    full = f"cirkd_{arch}_r{depth}"
    load_strict(net, state, path, f"CIRKD {full}")
    net.eval()
    return ZooTeacher(
        net,
        source="cirkd",
        arch=full,
        num_classes=num_classes,
        feat_channels=net.head.channels,
        convention=CONVENTION,
        labels=labels_for(num_classes, None, path),
        input_size=(1024, 2048) if num_classes == 19 else (512, 512),
    )
