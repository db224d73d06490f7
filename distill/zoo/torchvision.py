"""torchvision's segmentation models: DeepLabV3 / FCN on ResNet-50/101, DeepLabV3 and LR-ASPP
on MobileNetV3-Large.

Facts from pytorch/vision (torchvision/models/segmentation/{deeplabv3,fcn,lraspp,_utils}.py,
models/resnet.py, models/mobilenetv3.py, ops/misc.py, transforms/_presets.py):
- segkd modules wherever the network is the same (keys renamed by
  distill.models.weights.TORCHVISION_*): the ResNet trunk, DeepLabHead (= segkd's
  DeepLabV3Head at 256, minus a dropout), FCNHead (= segkd's FCNHead). Rebuilt here: the
  MobileNetV3-Large trunk and the LR-ASPP head, which segkd has no module for.
- ResNet backbones use the 7x7 stem with replace_stride_with_dilation=[False, True, True]:
  layer3/layer4 at stride 1, dilation 2/4, the first block of each at the previous
  dilation: distill.models.resnet.DilatedResNet(deep_stem=False), same parameter names.
  IntermediateLayerGetter keeps `backbone.conv1 .. backbone.layer4` (no fc).
- DeepLabHead = Sequential(ASPP(in, rates 12/24/36, 256 channels: 1x1, three 3x3, image
  pooling upsampled with align_corners=False; project 1x1 + BN + ReLU + Dropout(0.5)),
  3x3 conv 256 + BN + ReLU, 1x1 classifier): keys classifier.0.convs.*, classifier.0.project.*,
  classifier.1/2/4. FCNHead = 3x3 conv to in/4 + BN + ReLU + Dropout(0.1) + 1x1 (keys 0/1/4);
  `aux_classifier` is an FCNHead on layer3 (ResNet) or on C2 (MobileNetV3).
- MobileNetV3-Large with dilated=True: C4 blocks use dilation 2 and stride 1 (output
  stride 16), BN eps 0.001; features[4] (40 channels, stride 8) is the low/aux feature,
  features[16] (960 channels) the high one. LR-ASPP head: cbr (1x1 to 128 + BN + ReLU) times
  scale (global pool, 1x1, sigmoid), upsampled to the low feature, high_classifier plus
  low_classifier(low).
- Output: logits upsampled to the input with align_corners=False. Input: RGB in 0..1 minus
  (0.485, 0.456, 0.406), over (0.229, 0.224, 0.225), i.e. those times 255 in 0..255 units.
  Weights: COCO subset with the 20 VOC categories + background (21 classes).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SegkdError
from distill.models.deeplabv3 import DeepLabV3Head
from distill.models.layers import conv_bn_relu
from distill.models.pooling import AdaptiveAvgPool2dMatmul
from distill.models.resnet import DilatedResNet
from distill.models.segmentor import FCNHead, Segmentor
from distill.models.weights import TORCHVISION_DEEPLABV3, TORCHVISION_FCN, KeyMap
from distill.zoo.base import (
    SourceConvention,
    SourceNet,
    ZooTeacher,
    labels_for,
    load_strict,
    resnet_depth,
    tensor,
)

CONVENTION = SourceConvention(
    color_order="RGB",
    mean=(0.485 * 255, 0.456 * 255, 0.406 * 255),
    std=(0.229 * 255, 0.224 * 255, 0.225 * 255),
    align_corners=False,
)
MODELS = (
    "deeplabv3_resnet50",
    "deeplabv3_resnet101",
    "fcn_resnet50",
    "fcn_resnet101",
    "deeplabv3_mobilenet_v3_large",
    "lraspp_mobilenet_v3_large",
)
MBV3_BN_EPS = 0.001
# mobilenet_v3_large: (kernel, expanded, out, SE, hard-swish, stride); input 16 channels.
MBV3_LARGE = (
    (3, 16, 16, False, False, 1),
    (3, 64, 24, False, False, 2),
    (3, 72, 24, False, False, 1),
    (5, 72, 40, True, False, 2),
    (5, 120, 40, True, False, 1),
    (5, 120, 40, True, False, 1),
    (3, 240, 80, False, True, 2),
    (3, 200, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 184, 80, False, True, 1),
    (3, 480, 112, True, True, 1),
    (3, 672, 112, True, True, 1),
    (5, 672, 160, True, True, 2),  # C4: dilated (dilation 2, stride 1)
    (5, 960, 160, True, True, 1),
    (5, 960, 160, True, True, 1),
)
LOW_INDEX, HIGH_INDEX = 4, 16


def make_divisible(v: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible: round to a multiple of 8, never below 90 % of v."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


class ConvNormAct(nn.Sequential):
    """Conv2dNormActivation: conv (no bias) `0`, BN `1`, activation (none / ReLU / hardswish)."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, dilation: int = 1,
        groups: int = 1, act: str = "relu", eps: float = 1e-5,
    ) -> None:  # fmt: skip
        pad = (kernel - 1) // 2 * dilation
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, kernel, stride, pad, dilation=dilation, groups=groups, bias=False),
            nn.BatchNorm2d(cout, eps=eps),
        ]
        if act == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif act == "hardswish":
            layers.append(nn.Hardswish(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        squeeze = make_divisible(channels // 4, 8)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3), keepdim=True))))
        return F.hardsigmoid(s) * x


class InvertedResidual(nn.Module):
    def __init__(
        self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hs: bool,
        stride: int, dilation: int,
    ) -> None:  # fmt: skip
        super().__init__()
        act = "hardswish" if hs else "relu"
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(ConvNormAct(cin, expanded, 1, act=act, eps=MBV3_BN_EPS))
        layers.append(
            ConvNormAct(
                expanded,
                expanded,
                kernel,
                stride=1 if dilation > 1 else stride,
                dilation=dilation,
                groups=expanded,
                act=act,
                eps=MBV3_BN_EPS,
            )
        )
        if se:
            layers.append(SqueezeExcitation(expanded))
        layers.append(ConvNormAct(expanded, cout, 1, act="none", eps=MBV3_BN_EPS))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


def mobilenet_v3_large_features() -> nn.Sequential:
    """MobileNetV3-Large `features` (17 modules) with the dilated C4 stage."""
    layers: list[nn.Module] = [ConvNormAct(3, 16, 3, stride=2, act="hardswish", eps=MBV3_BN_EPS)]
    cin = 16
    dilation = 1
    for kernel, expanded, cout, se, hs, stride in MBV3_LARGE:
        if cout == 160:
            dilation = 2
        layers.append(InvertedResidual(cin, kernel, expanded, cout, se, hs, stride, dilation))
        cin = cout
    layers.append(ConvNormAct(cin, 6 * cin, 1, act="hardswish", eps=MBV3_BN_EPS))
    return nn.Sequential(*layers)


class MobileNetBackbone(nn.Module):
    """IntermediateLayerGetter over `features`: keys backbone.0 .. backbone.16."""

    def __init__(self) -> None:
        super().__init__()
        for i, m in enumerate(mobilenet_v3_large_features()):
            self.add_module(str(i), m)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low = x
        for i, m in enumerate(self.children()):
            x = m(x)
            if i == LOW_INDEX:
                low = x
        return low, x


class LRASPPHead(nn.Module):
    channels = 128

    def __init__(self, low_channels: int, high_channels: int, num_classes: int) -> None:
        super().__init__()
        inter = self.channels
        self.cbr = conv_bn_relu(high_channels, inter)
        self.scale = nn.Sequential(
            AdaptiveAvgPool2dMatmul(1), nn.Conv2d(high_channels, inter, 1, bias=False), nn.Sigmoid()
        )
        self.low_classifier = nn.Conv2d(low_channels, num_classes, 1)
        self.high_classifier = nn.Conv2d(inter, num_classes, 1)

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.cbr(high) * self.scale(high)
        feat = F.interpolate(x, size=low.shape[-2:], mode="bilinear", align_corners=False)
        return self.low_classifier(low) + self.high_classifier(feat), feat


class LRASPPNet(nn.Module):
    """lraspp_mobilenet_v3_large: its head reads the low and the high feature, so it is
    not a segkd Segmentor (whose head reads the last feature); no auxiliary head."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.backbone = MobileNetBackbone()
        self.classifier = LRASPPHead(40, 960, num_classes)
        self.feat_channels = LRASPPHead.channels

    def extract(self, x: torch.Tensor, with_aux: bool = False) -> dict[str, torch.Tensor]:
        logits, feat = self.classifier(*self.backbone(x))
        return {"logits": logits, "feat": feat}


def torchvision_network(name: str, num_classes: int, aux: bool) -> tuple[nn.Module, KeyMap]:
    """(the network `name` builds, the key map of its file onto it). DeepLabV3 and FCN are
    segkd's Segmentor with its DeepLabV3Head / FCNHead (and FCN aux head), on segkd's
    7x7-stem DilatedResNet or the rebuilt MobileNetV3; LR-ASPP is rebuilt whole."""
    head, _, backbone_name = name.partition("_")
    if head == "lraspp":
        return LRASPPNet(num_classes), ()
    backbone: nn.Module
    if backbone_name.startswith("resnet"):
        backbone = DilatedResNet(int(backbone_name[len("resnet") :]))
        low, high = backbone.layer3_channels, backbone.out_channels
    else:
        backbone, low, high = MobileNetBackbone(), 40, 960
    decode = DeepLabV3Head(high, num_classes) if head == "deeplabv3" else FCNHead(high, num_classes)
    aux_head = FCNHead(low, num_classes) if aux else None
    net = Segmentor(f"torchvision_{name}", num_classes, backbone, decode, aux_head)
    return net, TORCHVISION_DEEPLABV3 if head == "deeplabv3" else TORCHVISION_FCN


def looks_like(state: Mapping[str, Any]) -> bool:
    return any(k.startswith("backbone.") for k in state) and any(
        k.startswith("classifier.") for k in state
    )


def model_name(state: Mapping[str, Any], path: Path) -> str:
    """The torchvision builder whose layout the keys have."""
    if "backbone.layer1.0.conv1.weight" in state:
        backbone = f"resnet{resnet_depth(state, 'backbone.', path, (50, 101))}"
    elif "backbone.16.0.weight" in state:
        backbone = "mobilenet_v3_large"
    else:
        raise SegkdError(
            f"{path}: a torchvision backbone other than ResNet-50/101 or MobileNetV3-Large"
        )
    if "classifier.cbr.0.weight" in state:
        head = "lraspp"
    elif "classifier.0.convs.0.0.weight" in state:
        head = "deeplabv3"
    elif "classifier.4.weight" in state:
        head = "fcn"
    else:
        raise SegkdError(f"{path}: a torchvision head other than DeepLabV3, FCN or LR-ASPP")
    return f"{head}_{backbone}"


def build(
    state: Mapping[str, torch.Tensor], meta: Mapping[str, Any], path: Path, name: str | None
) -> ZooTeacher:
    del meta
    found = model_name(state, path)
    if found not in MODELS:
        raise SegkdError(f"{path}: {found} is not a torchvision model; known: {', '.join(MODELS)}")
    if name is not None and name != found:
        raise SegkdError(f"{path}: named {name!r}, but its keys are laid out as {found}")
    key = {"lraspp": "classifier.low_classifier.weight", "deeplabv3": "classifier.4.weight"}
    num_classes = int(
        tensor(state, key.get(found.split("_")[0], "classifier.4.weight"), path).shape[0]
    )
    net, keymap = torchvision_network(found, num_classes, aux="aux_classifier.0.weight" in state)
    load_strict(net, state, path, f"torchvision {found}", keymap)
    net.eval()
    return ZooTeacher(
        SourceNet(net),
        source="torchvision",
        arch=f"torchvision_{found}",
        num_classes=num_classes,
        feat_channels=int(net.feat_channels),
        convention=CONVENTION,
        labels=labels_for(num_classes, None, path),
        input_size=(520, 520),
    )
