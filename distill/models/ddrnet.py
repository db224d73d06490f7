"""DDRNet-23-slim (Hong et al., "Deep Dual-resolution Networks", 2021): two branches + DAPPM.

Written from the paper and the authors' public description (ydhongHIT/DDRNet):
- stem to 1/4 (32 channels), layer1 2 basic blocks (32), layer2 2 blocks to 64 at 1/8;
- then two branches: the low-resolution one goes 1/16 (layer3, 128), 1/32 (layer4,
  256), 1/64 (layer5, one bottleneck, 512); the high-resolution one stays at 1/8 with
  64 channels (layer3_, layer4_: 2 basic blocks each; layer5_: one bottleneck, 128);
- bilateral fusion after stages 3 and 4, both from the pre-fusion maps: low += strided
  3x3 convs of the high branch (down3: one, down4: two), high += the upsampled 1x1
  compression of the low branch (compression3/4);
- DAPPM on the 1/64 map (branches of 128 channels, output 128), upsampled to 1/8 and
  added to layer5_; the head (64 channels) reads that sum;
- training only: an auxiliary head (`seghead_extra`, 64 channels) on the high branch
  after the stage-3 fusion, weighted 0.4 in the loss like the ResNet aux head.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.dualres import (
    PYRAMID_KERNELS,
    SegHead,
    pooled_branch,
    pre_act_conv,
    refuse_deep_stem,
    stage,
    stem,
)
from distill.models.layers import conv_bn, kaiming_init, resize_to
from distill.models.registry import register_model
from distill.models.segmentor import SegmentationNet
from distill.models.weights import load_realtime_imagenet


class DAPPM(nn.Module):
    """Deep Aggregation Pyramid Pooling Module.

    Branch 0 is a 1x1 conv of the input; branch i (pooled at 1/2, 1/4, 1/8, global) is
    upsampled, added to branch i-1's output and refined by a 3x3 conv (hierarchical
    residual fusion); the five are concatenated, compressed by a 1x1 conv and added to a
    1x1 shortcut of the input. All convs are pre-activation (BN -> ReLU -> conv).
    """

    def __init__(self, cin: int, branch: int, cout: int) -> None:
        super().__init__()
        self.scale0 = pre_act_conv(cin, branch)
        for i, kernel in enumerate(PYRAMID_KERNELS, start=1):
            self.add_module(f"scale{i}", pooled_branch(cin, branch, kernel))
            self.add_module(f"process{i}", pre_act_conv(branch, branch, 3))
        self.compression = pre_act_conv(branch * (1 + len(PYRAMID_KERNELS)), cout)
        self.shortcut = pre_act_conv(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [self.scale0(x)]
        for i in range(1, 1 + len(PYRAMID_KERNELS)):
            pooled = resize_to(getattr(self, f"scale{i}")(x), x)
            outs.append(getattr(self, f"process{i}")(pooled + outs[-1]))
        return self.compression(torch.cat(outs, dim=1)) + self.shortcut(x)


class DDRNet(SegmentationNet):
    """DDRNet-23(-slim): `planes` 32 is the slim variant (64 the full DDRNet-23)."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        *,
        planes: int = 32,
        spp_planes: int = 128,
        head_planes: int = 64,
        aux: bool = True,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(arch, num_classes, head_planes, model_kwargs)
        high = planes * 2  # the 1/8 branch's width
        self.conv1 = stem(planes)
        self.layer1 = stage("basic", planes, planes, 2)
        self.layer2 = stage("basic", planes, planes * 2, 2, stride=2)
        self.layer3 = stage("basic", planes * 2, planes * 4, 2, stride=2)
        self.layer4 = stage("basic", planes * 4, planes * 8, 2, stride=2)
        self.layer5 = stage("bottleneck", planes * 8, planes * 8, 1, stride=2)
        self.layer3_ = stage("basic", planes * 2, high, 2)
        self.layer4_ = stage("basic", high, high, 2)
        self.layer5_ = stage("bottleneck", high, high, 1)
        self.compression3 = conv_bn(planes * 4, high)
        self.compression4 = conv_bn(planes * 8, high)
        self.down3 = conv_bn(high, planes * 4, 3, stride=2)
        self.down4 = nn.Sequential(
            *conv_bn(high, planes * 4, 3, stride=2),
            nn.ReLU(inplace=True),
            *conv_bn(planes * 4, planes * 8, 3, stride=2),
        )
        self.spp = DAPPM(planes * 16, spp_planes, planes * 4)
        self.final_layer = SegHead(planes * 4, head_planes, num_classes)
        self.seghead_extra = SegHead(high, head_planes, num_classes) if aux else None
        kaiming_init(self)

    @property
    def has_aux(self) -> bool:
        return self.seghead_extra is not None

    def training_heads(self) -> list[nn.Module]:
        return [self.seghead_extra] if self.seghead_extra is not None else []

    def extract(self, x: torch.Tensor, with_aux: bool = True) -> dict[str, torch.Tensor]:
        x = self.layer1(self.conv1(x))
        c2 = self.layer2(F.relu(x))  # 1/8
        c3 = self.layer3(F.relu(c2))  # 1/16
        high = self.layer3_(F.relu(c2))
        low = c3 + self.down3(F.relu(high))
        high = high + resize_to(self.compression3(F.relu(c3)), high)
        after_stage3 = high
        c4 = self.layer4(F.relu(low))  # 1/32
        high = self.layer4_(F.relu(high))
        low = c4 + self.down4(F.relu(high))
        high = high + resize_to(self.compression4(F.relu(c4)), high)
        high = self.layer5_(F.relu(high))
        context = resize_to(self.spp(self.layer5(F.relu(low))), high)  # from 1/64
        logits, feat = self.final_layer(context + high)
        out = {"logits": logits, "feat": feat}
        if with_aux and self.seghead_extra is not None:
            out["aux"] = self.seghead_extra(after_stage3)[0]
        return out


@register_model("realtime", weights=load_realtime_imagenet)
def ddrnet23_slim(num_classes: int, *, aux: bool = True, deep_stem: bool = False) -> DDRNet:
    """DDRNet-23-slim at the published widths: planes 32, DAPPM branches 128, head 64
    (ImageNet weights: the authors' DDRNet23s_imagenet.pth, load_realtime_imagenet)."""
    refuse_deep_stem("ddrnet23_slim", deep_stem)
    return DDRNet(
        "ddrnet23_slim",
        num_classes,
        planes=32,
        spp_planes=128,
        head_planes=64,
        aux=aux,
        model_kwargs={"aux": aux},
    )
