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
segkd's own modules wherever the network is the same (keys renamed by
distill.models.weights.MMSEG_*): the trunk is segkd's DilatedResNet with mmseg's switches
(stem width, strides, dilations, contract_dilation, multi_grid, a plain conv2 in basic
blocks), PSPHead is segkd's (bins of `channels`, the config's align_corners), the one-conv
auxiliary FCNHead is segkd's. Rebuilt here under mmseg's names: ASPPHead (no 1x1
projection after the concatenation, pooling branch first: another network than segkd's
DeepLabV3Head) and the multi-conv / conv_cat / dilated FCNHead.
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
from distill.models.layers import resize_to
from distill.models.pooling import AdaptiveAvgPool2dMatmul
from distill.models.pspnet import PSPHead
from distill.models.resnet import DilatedResNet
from distill.models.segmentor import FCNHead, Segmentor
from distill.models.weights import (
    MMSEG_BACKBONE,
    MMSEG_PSP_HEAD,
    KeyMap,
    mmseg_fcn,
    renamed_prefix,
)
from distill.zoo.base import (
    SourceConvention,
    SourceNet,
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


class DecodeHead(nn.Module):
    """BaseDecodeHead's classifier: Dropout2d(0.1) -> 1x1 conv_seg (with bias)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.channels = channels
        self.dropout = nn.Dropout2d(0.1)
        self.conv_seg = nn.Conv2d(channels, num_classes, 1)

    def classify(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.conv_seg(self.dropout(feat)), feat


class MMSegASPPHead(DecodeHead):
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
        pooled = resize_to(self.image_pool(x), x, self.align_corners)
        outs = [pooled] + [m(x) for m in self.aspp_modules]
        return self.classify(self.bottleneck(torch.cat(outs, dim=1)))


class MMSegFCNHead(DecodeHead):
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


def looks_like(state: Mapping[str, Any]) -> bool:
    return any(k.startswith("decode_head.") for k in state) and any(
        k.startswith("backbone.") for k in state
    )


def head_kind(state: Mapping[str, Any]) -> str:
    for kind, marker in (("psp", "psp_modules."), ("aspp", "aspp_modules."), ("fcn", "convs.")):
        if any(k.startswith(f"decode_head.{marker}") for k in state):
            return kind
    return "unknown"


def mmseg_backbone(
    state: Mapping[str, torch.Tensor], settings: MMSegSettings, depth: int, path: Path
) -> DilatedResNet:
    """ResNetV1c (deep stem) or ResNet (7x7 stem) with the config's strides and dilations."""
    deep_stem = "backbone.stem.0.weight" in state
    stem = tensor(state, "backbone.stem.6.weight" if deep_stem else "backbone.conv1.weight", path)
    try:
        return DilatedResNet(
            depth,
            deep_stem,
            stem_channels=int(stem.shape[0]),
            strides=settings.strides,
            dilations=settings.dilations,
            contract_dilation=settings.contract_dilation,
            multi_grid=settings.multi_grid,
            basic_conv2_dilated=False,
        )
    except ValueError as e:  # a multi_grid that does not fit the last stage
        raise SegkdError(f"{path}: {e}") from None


def decode_head(
    kind: str, state: Mapping[str, torch.Tensor], settings: MMSegSettings, cin: int, path: Path
) -> tuple[nn.Module, KeyMap]:
    """The decode head the keys and the config describe, and its key map."""
    num_classes, channels = (
        int(s) for s in tensor(state, "decode_head.conv_seg.weight", path).shape[:2]
    )
    if settings.num_classes is not None and settings.num_classes != num_classes:
        raise SegkdError(
            f"{path}: {settings.origin} says num_classes={settings.num_classes}, "
            f"its classifier has {num_classes}"
        )
    align = settings.align_corners
    if kind == "psp":
        _branches_agree(state, "psp_modules", settings.pool_scales, "pool_scales", settings, path)
        head = PSPHead(cin, num_classes, settings.pool_scales, channels, channels, align)
        return head, MMSEG_PSP_HEAD
    if kind == "aspp":
        dilations = settings.aspp_dilations
        _branches_agree(state, "aspp_modules", dilations, "dilations", settings, path)
        head = MMSegASPPHead(cin, channels, num_classes, dilations, align)
        return head, renamed_prefix("decode_head", "head")
    if kind == "fcn":
        return fcn_head(state, "decode_head", "head", cin, settings.fcn_dilation)
    raise SegkdError(
        f"{path}: an mmsegmentation decode head other than PSPHead, ASPPHead or FCNHead "
        f"(keys like {next(k for k in state if k.startswith('decode_head.'))!r})"
    )


def _branches_agree(
    state: Mapping[str, Any],
    module: str,
    values: Sequence[int],
    setting: str,
    settings: MMSegSettings,
    path: Path,
) -> None:
    n = count_blocks(state, f"decode_head.{module}.")
    if n != len(values):
        head = "PSPHead with" if module == "psp_modules" else "ASPPHead with"
        noun = "pooling branches" if module == "psp_modules" else "branches"
        raise SegkdError(
            f"{path}: {head} {n} {noun}, {settings.origin} says {setting}={tuple(values)}"
        )


def fcn_head(
    state: Mapping[str, torch.Tensor], source: str, target: str, cin: int, dilation: int
) -> tuple[nn.Module, KeyMap]:
    """mmseg's FCNHead at `source`: segkd's FCNHead when it is one undilated 3x3 conv (the
    auxiliary head), else rebuilt (num_convs convs, conv_cat over the input, dilation)."""
    num_classes, channels = (int(s) for s in state[f"{source}.conv_seg.weight"].shape[:2])
    num_convs = count_blocks(state, f"{source}.convs.")
    concat = f"{source}.conv_cat.conv.weight" in state
    if num_convs == 1 and not concat and dilation == 1:
        return FCNHead(cin, num_classes, channels), mmseg_fcn(source, target)
    head = MMSegFCNHead(cin, channels, num_classes, num_convs, concat, dilation)
    return head, renamed_prefix(source, target)


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
    depth = resnet_depth(state, "backbone.", path, (18, 50, 101, 152))
    kind = head_kind(state)
    if name is not None and not name_is_config:  # e.g. mmseg:pspnet_r101:FILE
        want_kind, want_depth = split_name(name, "_r")
        if want_kind != ARCH_NAMES.get(kind) or (want_depth and want_depth != str(depth)):
            raise SegkdError(
                f"{path}: named {name!r}, but its keys hold a {kind} head on ResNet-{depth}"
            )
    _agree(settings, kind, depth, "backbone.stem.0.weight" in state, path)
    backbone = mmseg_backbone(state, settings, depth, path)
    head, head_keys = decode_head(kind, state, settings, backbone.out_channels, path)
    aux, aux_keys = None, ()
    if "auxiliary_head.conv_seg.weight" in state:
        cin = backbone.layer3_channels
        aux, aux_keys = fcn_head(state, "auxiliary_head", "aux_head", cin, settings.aux_dilation)
    arch = f"mmseg_{ARCH_NAMES[kind]}_r{depth}"
    num_classes = int(tensor(state, "decode_head.conv_seg.weight", path).shape[0])
    net = Segmentor(arch, num_classes, backbone, head, aux)
    load_strict(net, state, path, f"mmsegmentation {arch}", MMSEG_BACKBONE + head_keys + aux_keys)
    net.eval()
    return ZooTeacher(
        SourceNet(net),
        source="mmseg",
        arch=arch,
        num_classes=net.num_classes,
        feat_channels=net.feat_channels,
        convention=replace(CONVENTION, align_corners=settings.align_corners),
        labels=labels_for(net.num_classes, _class_names(meta), path),
        input_size=settings.input_size(net.num_classes),
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
