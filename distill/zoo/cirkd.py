"""CIRKD's PSPNet and DeepLabV3 teachers: segkd's own Segmentor, loaded by a key map.

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
These are segkd's DilatedResNet(deep_stem=True), PSPHead (bins of in/4, 3x3 to 256 / 128,
align_corners=True), DeepLabV3Head (the file's width, align_corners=True) and FCNHead:
`distill.models.weights.CIRKD` renames the keys onto them (dropout has no weights).
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

from core.errors import SegkdError
from distill.models.deeplabv3 import DeepLabV3Head
from distill.models.pspnet import PSPHead
from distill.models.resnet import DilatedResNet
from distill.models.segmentor import FCNHead, Segmentor
from distill.models.weights import CIRKD
from distill.zoo.base import (
    SourceConvention,
    SourceNet,
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


def cirkd_segmentor(
    arch: str, depth: int, num_classes: int, aux: bool, aspp_channels: int = 512
) -> Segmentor:
    """CIRKD's network as segkd modules (arch: psp or deeplabv3)."""
    backbone = DilatedResNet(depth, deep_stem=True)
    cin = backbone.out_channels
    head = (
        PSPHead(cin, num_classes, channels=256 if cin == 2048 else 128, align_corners=True)
        if arch == "psp"
        else DeepLabV3Head(cin, num_classes, aspp_channels, align_corners=True)
    )
    aux_head = FCNHead(backbone.layer3_channels, num_classes) if aux else None
    return Segmentor(f"cirkd_{arch}_r{depth}", num_classes, backbone, head, aux_head)


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
    net = cirkd_segmentor(
        arch, depth, num_classes, aux="auxlayer.block.0.weight" in state, aspp_channels=width
    )
    load_strict(net, state, path, f"CIRKD {net.arch}", CIRKD)
    net.eval()
    return ZooTeacher(
        SourceNet(net),
        source="cirkd",
        arch=net.arch,
        num_classes=num_classes,
        feat_channels=net.feat_channels,
        convention=CONVENTION,
        labels=labels_for(num_classes, None, path),
        input_size=(1024, 2048) if num_classes == 19 else (512, 512),
    )
