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

import logging
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import SegkdError
from core.preprocess import IMAGENET_MEAN, IMAGENET_STD
from distill.models.pooling import AdaptiveAvgPool2dMatmul
from distill.models.resnet import Bottleneck
from distill.zoo.base import (
    SourceConvention,
    TestMode,
    ZooTeacher,
    count_blocks,
    labels_for,
    load_strict,
    resnet_depth,
    split_name,
    tensor,
)
from distill.zoo.mmseg_config import MMSegSettings, resolve_settings

CONVENTION = SourceConvention(
    color_order="RGB",
    mean=IMAGENET_MEAN,  # mmseg's own values are ImageNet's, in 0..255 units like segkd's
    std=IMAGENET_STD,
    align_corners=False,
)
ARCH_NAMES = {"psp": "pspnet", "aspp": "deeplabv3", "fcn": "fcn"}
log = logging.getLogger(__name__)


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


def block_dilations(
    n: int, dilation: int, contract: bool, multi_grid: Sequence[int] | None
) -> list[int]:
    """Each block's dilation in one stage, as mmseg's ResLayer sets them: multi_grid
    replaces the stage's dilation block by block; otherwise contract_dilation halves the
    first block's when the stage is dilated."""
    if multi_grid is not None:
        if len(multi_grid) != n:
            raise SegkdError(f"multi_grid {tuple(multi_grid)} for a stage of {n} blocks")
        return list(multi_grid)
    first = dilation // 2 if dilation > 1 and contract else dilation
    return [first] + [dilation] * (n - 1)


class MMSegResNet(nn.Module):
    """ResNetV1c (deep stem) or ResNet (7x7 stem) with the config's strides and dilations
    (d8 by default); returns (c3, c4). multi_grid applies to the last stage only."""

    def __init__(
        self,
        depth: int,
        deep_stem: bool = True,
        stem_channels: int = 64,
        strides: Sequence[int] = (1, 2, 1, 1),
        dilations: Sequence[int] = (1, 1, 2, 4),
        contract_dilation: bool = True,
        multi_grid: Sequence[int] | None = None,
    ) -> None:
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
        for i, (n, stride, dilation) in enumerate(zip(blocks, strides, dilations, strict=True)):
            planes = 64 * 2**i
            grid = multi_grid if i == len(blocks) - 1 else None
            per_block = block_dilations(n, dilation, contract_dilation, grid)
            out = planes * block.expansion
            down = None
            if stride != 1 or inplanes != out:
                down = nn.Sequential(
                    nn.Conv2d(inplanes, out, 1, stride, bias=False), nn.BatchNorm2d(out)
                )
            layer = [block(inplanes, planes, stride, first_dilation=per_block[0], downsample=down)]
            layer += [block(out, planes, first_dilation=d) for d in per_block[1:]]
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
    def __init__(
        self,
        cin: int,
        channels: int,
        num_classes: int,
        scales: Sequence[int],
        align_corners: bool = False,
    ) -> None:
        super().__init__(channels, num_classes)
        self.align_corners = align_corners
        self.psp_modules = nn.ModuleList(
            nn.Sequential(AdaptiveAvgPool2dMatmul(s), ConvModule(cin, channels, 1)) for s in scales
        )
        self.bottleneck = ConvModule(cin + len(scales) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = x.shape[-2:]
        outs = [x] + [
            F.interpolate(m(x), size=size, mode="bilinear", align_corners=self.align_corners)
            for m in self.psp_modules
        ]
        return self.classify(self.bottleneck(torch.cat(outs, dim=1)))


class ASPPHead(DecodeHead):
    def __init__(
        self,
        cin: int,
        channels: int,
        num_classes: int,
        dilations: Sequence[int],
        align_corners: bool = False,
    ) -> None:
        super().__init__(channels, num_classes)
        self.align_corners = align_corners
        self.image_pool = nn.Sequential(AdaptiveAvgPool2dMatmul(1), ConvModule(cin, channels, 1))
        self.aspp_modules = nn.ModuleList(
            ConvModule(cin, channels, 1 if d == 1 else 3, dilation=d) for d in dilations
        )
        self.bottleneck = ConvModule((len(dilations) + 1) * channels, channels, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = F.interpolate(
            self.image_pool(x), size=x.shape[-2:], mode="bilinear", align_corners=self.align_corners
        )
        outs = [pooled] + [m(x) for m in self.aspp_modules]
        return self.classify(self.bottleneck(torch.cat(outs, dim=1)))


class FCNHead(DecodeHead):
    def __init__(
        self,
        cin: int,
        channels: int,
        num_classes: int,
        num_convs: int,
        concat_input: bool,
        dilation: int = 1,
    ) -> None:
        super().__init__(channels, num_classes)
        self.convs = nn.Sequential(
            *(
                ConvModule(cin if i == 0 else channels, channels, 3, dilation=dilation)
                for i in range(num_convs)
            )
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
    """The network the file's config defines (distill.zoo.mmseg_config), its weights loaded
    strictly. NAME is an architecture (pspnet_r101, checked against the keys) or an mmseg
    config / checkpoint name that settles what the keys cannot tell."""
    settings, name_is_config = resolve_settings(meta, path, name, CONVENTION.mean, CONVENTION.std)
    if settings.unchecked:
        log.warning(
            "%s stores no mmseg config and none was named: not checked: %s. Name the upstream "
            "config as mmseg:CONFIG:FILE (its mmseg config or checkpoint file name).",
            path,
            "; ".join(settings.unchecked),
        )
    deep_stem = "backbone.stem.0.weight" in state
    depth = resnet_depth(state, "backbone.", path, (18, 50, 101, 152))
    kind = head_kind(state)
    if name is not None and not name_is_config:  # e.g. mmseg:pspnet_r101:FILE
        want_kind, want_depth = split_name(name, "_r")
        if want_kind != ARCH_NAMES.get(kind) or (want_depth and want_depth != str(depth)):
            raise SegkdError(
                f"{path}: named {name!r}, but its keys hold a {kind} head on ResNet-{depth}"
            )
    _agree(settings, kind, depth, deep_stem, path)
    stem_channels = int(
        tensor(
            state, "backbone.stem.6.weight" if deep_stem else "backbone.conv1.weight", path
        ).shape[0]
    )
    backbone = MMSegResNet(
        depth,
        deep_stem=deep_stem,
        stem_channels=stem_channels,
        strides=settings.strides,
        dilations=settings.dilations,
        contract_dilation=settings.contract_dilation,
        multi_grid=settings.multi_grid,
    )
    num_classes, channels = (
        int(s) for s in tensor(state, "decode_head.conv_seg.weight", path).shape[:2]
    )
    if settings.num_classes is not None and settings.num_classes != num_classes:
        raise SegkdError(
            f"{path}: {settings.origin} says num_classes={settings.num_classes}, "
            f"its classifier has {num_classes}"
        )
    cin = backbone.out_channels
    align = settings.align_corners
    head: nn.Module
    if kind == "psp":
        n = count_blocks(state, "decode_head.psp_modules.")
        if n != len(settings.pool_scales):
            raise SegkdError(
                f"{path}: PSPHead with {n} pooling branches, {settings.origin} says "
                f"pool_scales={settings.pool_scales}"
            )
        head = PSPHead(cin, channels, num_classes, settings.pool_scales, align)
    elif kind == "aspp":
        n = count_blocks(state, "decode_head.aspp_modules.")
        if n != len(settings.aspp_dilations):
            raise SegkdError(
                f"{path}: ASPPHead with {n} branches, {settings.origin} says "
                f"dilations={settings.aspp_dilations}"
            )
        head = ASPPHead(cin, channels, num_classes, settings.aspp_dilations, align)
    elif kind == "fcn":
        layout = _fcn_layout(state, "decode_head.")
        head = FCNHead(cin, channels, num_classes, *layout, dilation=settings.fcn_dilation)
    else:
        raise SegkdError(
            f"{path}: an mmsegmentation decode head other than PSPHead, ASPPHead or FCNHead "
            f"(keys like {next(k for k in state if k.startswith('decode_head.'))!r})"
        )
    aux = None
    if "auxiliary_head.conv_seg.weight" in state:
        aux_k, aux_ch = (int(s) for s in state["auxiliary_head.conv_seg.weight"].shape[:2])
        aux_layout = _fcn_layout(state, "auxiliary_head.")
        aux = FCNHead(cin // 2, aux_ch, aux_k, *aux_layout, dilation=settings.aux_dilation)
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
        convention=replace(CONVENTION, align_corners=align),
        labels=labels_for(num_classes, _class_names(meta), path),
        input_size=settings.input_size(num_classes),
        test_mode=_test_mode(settings),
        settings_origin=settings.origin,
    )


def _test_mode(settings: MMSegSettings) -> TestMode:
    if settings.test_mode == "slide":
        assert settings.crop_size is not None and settings.stride is not None
        return TestMode("slide", settings.crop_size, settings.stride)
    return TestMode("whole")


def _agree(settings: MMSegSettings, kind: str, depth: int, deep_stem: bool, path: Path) -> None:
    """The config must describe the network the keys hold (a config for another file)."""
    head = {"psp": "PSPHead", "aspp": "ASPPHead", "fcn": "FCNHead"}.get(kind)
    if settings.head is not None and settings.head != head:
        raise SegkdError(f"{path}: {settings.origin} has a {settings.head}, the keys a {head}")
    if settings.depth is not None and settings.depth != depth:
        raise SegkdError(f"{path}: {settings.origin} has ResNet-{settings.depth}, the keys {depth}")
    if deep_stem != (settings.backbone == "ResNetV1c"):
        raise SegkdError(
            f"{path}: {settings.origin} has a {settings.backbone} backbone, the keys "
            f"{'a deep stem (ResNetV1c)' if deep_stem else 'a 7x7 stem (ResNet)'}"
        )


def _class_names(meta: Mapping[str, Any]) -> Sequence[str] | None:
    """mmseg 0.x stores meta['CLASSES']; mmseg 1.x meta['dataset_meta']['classes']."""
    names = meta.get("CLASSES")
    if names is None and isinstance(meta.get("dataset_meta"), dict):
        names = meta["dataset_meta"].get("classes")
    if isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names):
        return names
    return None
