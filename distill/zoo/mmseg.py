"""mmsegmentation's EncoderDecoder: ResNetV1c (d8) + PSPHead / ASPPHead / FCNHead (+ aux FCNHead).

Facts from open-mmlab/mmsegmentation (mmseg/models/backbones/resnet.py, utils/res_layer.py,
decode_heads/{psp,aspp,fcn}_head.py, configs/_base_/models/{pspnet,deeplabv3,fcn}_r50-d8.py):
- ResNetV1c: a three-conv stem (3->32 stride 2, 32->32, 32->64, each BN + ReLU) named
  `stem.0..8`, then max-pool and four stages of torchvision-style (v1.5, stride on the 3x3)
  bottlenecks. d8: strides (1, 2, 1, 1), dilations (1, 1, 2, 4), contract_dilation: the
  first block of a dilated stage uses half the dilation (1 in layer3, 2 in layer4).
  ResNet-18's BasicBlock puts stride and dilation on conv1 only (conv2 is a plain 3x3); the
  r18-d8 configs narrow the heads to 128 channels (aux 64).
- ConvModule = conv (no bias) -> `bn` -> ReLU. A decode head ends in Dropout2d(0.1) and a
  1x1 `conv_seg` with bias; `channels` is 512 for these heads (256 for the aux head).
- PSPHead: pooling scales (1, 2, 3, 6), each AdaptiveAvgPool -> 1x1 ConvModule to 512,
  upsampled with align_corners=False and concatenated after the input; 3x3 bottleneck to 512.
- ASPPHead: image pooling branch first, then dilations (1, 12, 24, 36) (1x1 for 1, 3x3 else),
  3x3 bottleneck over the 5 x 512 concatenation.
- FCNHead: num_convs 3x3 ConvModules, optionally conv_cat over [input, convs(input)];
  the aux head is FCNHead(1024 -> 256, num_convs=1, concat_input=False) on layer3.
- Input: RGB, mean (123.675, 116.28, 103.53), std (58.395, 57.12, 57.375) in 0..255 units;
  logits upsampled to the image with align_corners=False.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.pooling import AdaptiveAvgPool2dMatmul
from distill.models.resnet import Bottleneck
from distill.zoo.base import (
    SourceConvention,
    ZooTeacher,
    count_blocks,
    labels_for,
    load_strict,
    resnet_depth,
    split_name,
    tensor,
)
from runtime.errors import SegkdError
from runtime.preprocess import IMAGENET_MEAN, IMAGENET_STD

CONVENTION = SourceConvention(
    color_order="RGB",
    mean=IMAGENET_MEAN,  # mmseg's own values are ImageNet's, in 0..255 units like segkd's
    std=IMAGENET_STD,
    align_corners=False,
)
PSP_SCALES = (1, 2, 3, 6)
ASPP_DILATIONS = (1, 12, 24, 36)
ARCH_NAMES = {"psp": "pspnet", "aspp": "deeplabv3", "fcn": "fcn"}


class ConvModule(nn.Module):
    """mmcv's ConvModule with BN and ReLU: parameter names conv.* and bn.*."""

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1) -> None:
        super().__init__()
        pad = 0 if kernel == 1 else dilation * (kernel // 2)
        self.conv = nn.Conv2d(cin, cout, kernel, padding=pad, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _bn_relu_conv(cin: int, cout: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]


class BasicBlock(nn.Module):
    """mmseg's BasicBlock: the dilation (and stride) sit on conv1 only; conv2 is a plain
    3x3 (padding 1), unlike torchvision's and CIRKD's, which dilate both."""

    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        first_dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        d = first_dilation
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, d, dilation=d, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(out + identity)


BLOCKS = {18: (2, 2, 2, 2), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}


class MMSegResNet(nn.Module):
    """ResNetV1c (deep stem) or ResNetV1b (7x7 stem) at output stride 8; returns (c3, c4)."""

    def __init__(self, depth: int, deep_stem: bool = True, stem_channels: int = 64) -> None:
        super().__init__()
        blocks = BLOCKS[depth]
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock if depth == 18 else Bottleneck
        self.deep_stem = deep_stem
        if deep_stem:
            half = stem_channels // 2
            self.stem = nn.Sequential(
                *_bn_relu_conv(3, half, 2),
                *_bn_relu_conv(half, half),
                *_bn_relu_conv(half, stem_channels),
            )
        else:
            self.conv1 = nn.Conv2d(3, stem_channels, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(stem_channels)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = stem_channels
        for i, (n, stride, dilation) in enumerate(
            zip(blocks, (1, 2, 1, 1), (1, 1, 2, 4), strict=False)
        ):
            planes = 64 * 2**i
            first = dilation // 2 if dilation > 1 else dilation  # contract_dilation
            out = planes * block.expansion
            down = None
            if stride != 1 or inplanes != out:
                down = nn.Sequential(
                    nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
                )
            layer = [block(inplanes, planes, stride, first_dilation=first, downsample=down)]
            layer += [block(out, planes, first_dilation=dilation) for _ in range(1, n)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*layer))
            inplanes = out
        self.out_channels = inplanes

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x) if self.deep_stem else F.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(self.maxpool(x)))
        c3 = self.layer3(x)
        return c3, self.layer4(c3)


class DecodeHead(nn.Module):
    """BaseDecodeHead's classifier: Dropout2d(0.1) -> 1x1 conv_seg (with bias)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def classify(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv_seg(self.dropout(feat)), feat


class PSPHead(DecodeHead):
    def __init__(self, cin: int, channels: int, num_classes: int, scales: Sequence[int]) -> None:
        super().__init__(channels, num_classes)
        self.psp_modules = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool2dMatmul(s), ConvModule(cin, channels, 1)) for s in scales
        )
        self.bottleneck = ConvModule(cin + len(scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        outs = [x] + [
            F.interpolate(m(x), size=size, mode="bilinear", align_corners=False)
            for m in self.psp_modules
        ]
        return self.classify(self.bottleneck(torch.cat(outs, dim=1)))


class ASPPHead(DecodeHead):
    def __init__(self, cin: int, channels: int, num_classes: int, dilations: Sequence[int]) -> None:
        super().__init__(channels, num_classes)
        self.image_pool = nn.Sequential(AdaptiveAvgPool2dMatmul(1), ConvModule(cin, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(cin, channels, 1 if d == 1 else 3, dilation=d) for d in dilations
        )
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = F.interpolate(
            self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=False
        )
        outs = [pooled] + [m(x) for m in self.aspp_modules]
        return self.classify(self.bottleneck(torch.cat(outs, dim=1)))


class FCNHead(DecodeHead):
    def __init__(
        self, cin: int, channels: int, num_classes: int, num_convs: int, concat_input: bool
    ) -> None:
        super().__init__(channels, num_classes)
        self.convs = nn.Sequential(
            *(ConvModule(cin if i == 0 else channels, channels, 3) for i in range(num_convs))
        )
        self.concat_input = concat_input
        if concat_input:
            self.conv_cat = ConvModule(cin + channels, channels, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.convs(x)
        if self.concat_input:
            out = self.conv_cat(torch.cat([x, out], dim=1))
        return self.classify(out)


class EncoderDecoder(nn.Module):
    def __init__(self, backbone: MMSegResNet, decode_head: nn.Module, aux: nn.Module | None):
        super().__init__()
        self.backbone = backbone
        self.decode_head = decode_head
        if aux is not None:
            self.auxiliary_head = aux

    def forward(
        self, x: torch.Tensor, with_aux: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        c3, c4 = self.backbone(x)
        logits, feat = self.decode_head(c4)
        aux_head = getattr(self, "auxiliary_head", None)
        aux = aux_head(c3)[0] if aux_head is not None and with_aux else None
        return logits, feat, aux


def looks_like(state: Mapping[str, Any]) -> bool:
    return any(k.startswith("decode_head.") for k in state) and any(
        k.startswith("backbone.") for k in state
    )


def head_kind(state: Mapping[str, Any]) -> str:
    for kind, marker in (("psp", "psp_modules."), ("aspp", "aspp_modules."), ("fcn", "convs.")):
        if any(k.startswith(f"decode_head.{marker}") for k in state):
            return kind
    return "unknown"


def _fcn_layout(state: Mapping[str, Any], prefix: str) -> tuple[int, bool]:
    return count_blocks(state, f"{prefix}convs."), f"{prefix}conv_cat.conv.weight" in state


def build(
    state: Mapping[str, torch.Tensor], meta: Mapping[str, Any], path: Path, name: str | None
) -> ZooTeacher:
    deep_stem = "backbone.stem.0.weight" in state
    depth = resnet_depth(state, "backbone.", path, (18, 50, 101, 152))
    kind = head_kind(state)
    if name is not None:  # e.g. mmseg:pspnet_r101:FILE; must agree with the keys
        want_kind, want_depth = split_name(name, "_r")
        if want_kind != ARCH_NAMES.get(kind) or (want_depth and want_depth != str(depth)):
            raise SegkdError(
                f"{path}: named {name!r}, but its keys hold a {kind} head on ResNet-{depth}"
            )
    stem_channels = int(
        tensor(
            state, "backbone.stem.6.weight" if deep_stem else "backbone.conv1.weight", path
        ).shape[0]
    )
    backbone = MMSegResNet(depth, deep_stem=deep_stem, stem_channels=stem_channels)
    num_classes, channels = (
        int(s) for s in tensor(state, "decode_head.conv_seg.weight", path).shape[:2]
    )
    cin = backbone.out_channels
    head: nn.Module
    if kind == "psp":
        n = count_blocks(state, "decode_head.psp_modules.")
        if n != len(PSP_SCALES):
            raise SegkdError(f"{path}: PSPHead with {n} pooling scales; only {PSP_SCALES} is known")
        head = PSPHead(cin, channels, num_classes, PSP_SCALES)
    elif kind == "aspp":
        n = count_blocks(state, "decode_head.aspp_modules.")
        if n != len(ASPP_DILATIONS):
            raise SegkdError(f"{path}: ASPPHead with {n} branches; only {ASPP_DILATIONS} is known")
        head = ASPPHead(cin, channels, num_classes, ASPP_DILATIONS)
    elif kind == "fcn":
        head = FCNHead(cin, channels, num_classes, *_fcn_layout(state, "decode_head."))
    else:
        raise SegkdError(
            f"{path}: an mmsegmentation decode head other than PSPHead, ASPPHead or FCNHead "
            f"(keys like {next(k for k in state if k.startswith('decode_head.'))!r})"
        )
    aux = None
    if "auxiliary_head.conv_seg.weight" in state:
        aux_k, aux_ch = (int(s) for s in state["auxiliary_head.conv_seg.weight"].shape[:2])
        aux = FCNHead(cin // 2, aux_ch, aux_k, *_fcn_layout(state, "auxiliary_head."))
    net = EncoderDecoder(backbone, head, aux)
    arch = f"mmseg_{ARCH_NAMES[kind]}_r{depth}"
    load_strict(net, state, path, f"mmsegmentation {arch}")
    net.eval()
    return ZooTeacher(
        net,
        source="mmseg",
        arch=arch,
        num_classes=num_classes,
        feat_channels=channels,
        convention=CONVENTION,
        labels=labels_for(num_classes, _class_names(meta), path),
        input_size=(1024, 2048) if num_classes == 19 else (512, 512),
    )


def _class_names(meta: Mapping[str, Any]) -> Sequence[str] | None:
    """mmseg 0.x stores meta['CLASSES']; mmseg 1.x meta['dataset_meta']['classes']."""
    names = meta.get("CLASSES")
    if names is None and isinstance(meta.get("dataset_meta"), dict):
        names = meta["dataset_meta"].get("classes")
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return names
    return None
