"""PIDNet-S (Xu et al., "PIDNet: A Real-time Semantic Segmentation Network Inspired by PID
Controllers", CVPR 2023): proportional (detail), integral (context) and derivative
(boundary) branches.

Written from the paper and the authors' public description (XuJiacong/PIDNet); the S
variant is (m, n, C) = (2, 3, 32), PAPPM with 96-channel branches, heads of 128:
- I branch: stem to 1/4 (32), layer1 m basic blocks (32), layer2 m blocks to 64 at 1/8,
  layer3 n blocks to 128 at 1/16, layer4 n blocks to 256 at 1/32, layer5 two
  bottlenecks to 512 at 1/64, then PAPPM (output 128) upsampled to 1/8;
- P branch at 1/8, 64 channels: layer3_/layer4_ (m basic blocks each), layer5_ (one
  bottleneck, 128); after stages 3 and 4 a Pag module (pag3/pag4) lets the pixel-wise
  similarity of P and the compressed I features (1x1, 32-d embeddings) choose how much
  of the upsampled I map replaces P;
- D branch at 1/8: layer3_d (one basic block to 32), layer4_d (one bottleneck, 64),
  layer5_d (one bottleneck, 128); after stages 3 and 4 it adds an upsampled 3x3
  conv + BN of the I branch (diff3: 128 -> 32, diff4: 256 -> 64);
- Light-Bag fuses P, I and D: sigmoid(D) weighs P against I, two 1x1 conv + BN summed;
  the final head (128 channels) reads it;
- training only: the P head (`seghead_p`, 128 channels, on P after stage 3, the "aux"
  output, CE weight 0.4) and the boundary head (`seghead_d`, 32 channels, one logit, on
  D after stage 4, the "boundary" output) trained by the boundary BCE and the
  boundary-aware CE in `distill.losses.segmentation`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.dualres import (
    PYRAMID_KERNELS,
    SegHead,
    block,
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


class PAPPM(nn.Module):
    """Parallel Aggregation PPM: DAPPM's pooled branches, each added to branch 0 and
    refined together by one grouped 3x3 conv (groups = 4) instead of one after another."""

    def __init__(self, cin: int, branch: int, cout: int) -> None:
        super().__init__()
        n = len(PYRAMID_KERNELS)
        self.scale0 = pre_act_conv(cin, branch)
        for i, kernel in enumerate(PYRAMID_KERNELS, start=1):
            self.add_module(f"scale{i}", pooled_branch(cin, branch, kernel))
        self.scale_process = pre_act_conv(branch * n, branch * n, 3, groups=n)
        self.compression = pre_act_conv(branch * (n + 1), cout)
        self.shortcut = pre_act_conv(cin, cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.scale0(x)
        pooled = [
            resize_to(getattr(self, f"scale{i}")(x), x) + base
            for i in range(1, 1 + len(PYRAMID_KERNELS))
        ]
        refined = self.scale_process(torch.cat(pooled, dim=1))
        return self.compression(torch.cat([base, refined], dim=1)) + self.shortcut(x)


class PagFM(nn.Module):
    """Pixel-attention-guided fusion: sigma = sigmoid(<f_x(p), up(f_y(i))>) per pixel;
    out = (1 - sigma) p + sigma up(i)."""

    def __init__(self, channels: int, mid: int) -> None:
        super().__init__()
        self.f_x = conv_bn(channels, mid)
        self.f_y = conv_bn(channels, mid)

    def forward(self, p: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        query = resize_to(self.f_y(i), p)
        sigma = torch.sigmoid((self.f_x(p) * query).sum(dim=1, keepdim=True))
        return (1 - sigma) * p + sigma * resize_to(i, p)


class LightBag(nn.Module):
    """Light boundary-attention-guided fusion: where sigmoid(d) is high (a boundary) the
    detail branch P leads, elsewhere the context branch I."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv_p = conv_bn(cin, cout)
        self.conv_i = conv_bn(cin, cout)

    def forward(self, p: torch.Tensor, i: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        edge = torch.sigmoid(d)
        return self.conv_p((1 - edge) * i + p) + self.conv_i(i + edge * p)


class PIDNet(SegmentationNet):
    """PIDNet with the small/medium layout (m = 2, Light-Bag, PAPPM); S is planes = 32."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        *,
        m: int = 2,
        n: int = 3,
        planes: int = 32,
        ppm_planes: int = 96,
        head_planes: int = 128,
        aux: bool = True,
        boundary: bool = True,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(arch, num_classes, head_planes, model_kwargs)
        p2 = planes * 2  # P and D width at 1/8
        self.conv1 = stem(planes)
        self.layer1 = stage("basic", planes, planes, m)
        self.layer2 = stage("basic", planes, p2, m, stride=2)
        self.layer3 = stage("basic", p2, planes * 4, n, stride=2)
        self.layer4 = stage("basic", planes * 4, planes * 8, n, stride=2)
        self.layer5 = stage("bottleneck", planes * 8, planes * 8, 2, stride=2)
        # P branch
        self.compression3 = conv_bn(planes * 4, p2)
        self.compression4 = conv_bn(planes * 8, p2)
        self.pag3 = PagFM(p2, planes)
        self.pag4 = PagFM(p2, planes)
        self.layer3_ = stage("basic", p2, p2, m)
        self.layer4_ = stage("basic", p2, p2, m)
        self.layer5_ = stage("bottleneck", p2, p2, 1)
        # D branch
        self.layer3_d = block("basic", p2, planes, relu=False)
        self.layer4_d = stage("bottleneck", planes, planes, 1)
        self.layer5_d = stage("bottleneck", p2, p2, 1)
        self.diff3 = conv_bn(planes * 4, planes, 3)
        self.diff4 = conv_bn(planes * 8, p2, 3)
        self.spp = PAPPM(planes * 16, ppm_planes, planes * 4)
        self.dfm = LightBag(planes * 4, planes * 4)
        self.final_layer = SegHead(planes * 4, head_planes, num_classes)
        self.seghead_p = SegHead(p2, head_planes, num_classes) if aux else None
        self.seghead_d = SegHead(p2, planes, 1) if boundary else None
        kaiming_init(self)

    @property
    def has_aux(self) -> bool:
        return self.seghead_p is not None

    def training_heads(self) -> list[nn.Module]:
        return [h for h in (self.seghead_p, self.seghead_d) if h is not None]

    def extract(self, x: torch.Tensor, with_aux: bool = True) -> dict[str, torch.Tensor]:
        x = self.layer1(self.conv1(x))
        x = F.relu(self.layer2(F.relu(x)))  # 1/8
        p = self.layer3_(x)
        d = self.layer3_d(x)
        i = F.relu(self.layer3(x))  # 1/16
        # The training heads read the ReLU'd stage outputs, as in the published model
        # (whose in-place ReLU also rewrites the map it kept for them).
        p = F.relu(self.pag3(p, self.compression3(i)))
        d = F.relu(d + resize_to(self.diff3(i), d))
        p_stage3 = p
        i = F.relu(self.layer4(i))  # 1/32
        p = self.layer4_(p)
        d = self.layer4_d(d)
        p = self.pag4(p, self.compression4(i))
        d = F.relu(d + resize_to(self.diff4(i), d))
        d_stage4 = d
        p = self.layer5_(F.relu(p))
        d = self.layer5_d(d)
        i = resize_to(self.spp(self.layer5(i)), p)  # from 1/64
        logits, feat = self.final_layer(self.dfm(p, i, d))
        out = {"logits": logits, "feat": feat}
        if with_aux:
            if self.seghead_p is not None:
                out["aux"] = self.seghead_p(p_stage3)[0]
            if self.seghead_d is not None:
                out["boundary"] = self.seghead_d(d_stage4)[0]
        return out


@register_model("realtime", weights=load_realtime_imagenet)
def pidnet_s(num_classes: int, *, aux: bool = True, deep_stem: bool = False) -> PIDNet:
    """PIDNet-S at the published widths: (m, n, C) = (2, 3, 32), PAPPM 96, heads 128
    (ImageNet weights: the authors' PIDNet_S_ImageNet.pth.tar, load_realtime_imagenet)."""
    refuse_deep_stem("pidnet_s", deep_stem)
    return PIDNet(
        "pidnet_s",
        num_classes,
        m=2,
        n=3,
        planes=32,
        ppm_planes=96,
        head_planes=128,
        aux=aux,
        model_kwargs={"aux": aux},
    )
