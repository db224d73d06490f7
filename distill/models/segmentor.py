"""The segmentation network interface, and the dilated-ResNet segmentor (backbone + head +
auxiliary FCN head) that the PSPNet and DeepLabV3 families build."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.layers import conv_bn_relu, kaiming_init
from distill.models.resnet import DilatedResNet


class SegmentationNet(nn.Module, ABC):
    """What every registered architecture offers the trainer, the losses and the exporter.

    `extract(x, with_aux)` gives the training dict: "logits" and "feat" (the map the
    classifier reads) at 1/`output_stride`, plus the training-only outputs ("aux", and
    for PIDNet "boundary") when `with_aux`. `forward` returns that dict in training mode
    and, in eval mode, only the logits upsampled to the input size: the graph
    `segkd export` traces, so training-only heads never reach an exported model.
    """

    output_stride = 8

    def __init__(
        self,
        arch: str,
        num_classes: int,
        feat_channels: int,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.arch = arch
        self.num_classes = num_classes
        self.feat_channels = feat_channels
        self.model_kwargs: dict[str, Any] = dict(model_kwargs or {})
        # What the backbone loader reported when the builder loaded ImageNet weights.
        self.backbone_report: dict[str, Any] | None = None

    @property
    @abstractmethod
    def has_aux(self) -> bool: ...

    @abstractmethod
    def training_heads(self) -> list[nn.Module]:
        """The heads only training uses (aux, boundary): not in an exported graph."""

    @abstractmethod
    def extract(self, x: torch.Tensor, with_aux: bool = True) -> dict[str, torch.Tensor]: ...

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        if self.training:
            return self.extract(x, with_aux=True)
        logits = self.extract(x, with_aux=False)["logits"]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


class FCNHead(nn.Module):
    """FCN head: 3x3 conv to in/4 (or `channels`) + BN + ReLU, Dropout2d(0.1), 1x1
    classifier (torchvision's FCNHead, CIRKD's _FCNHead, mmseg's one-conv FCNHead). On
    layer3 it is the auxiliary head, used only for the 0.4-weighted training loss."""

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


class Segmentor(SegmentationNet):
    """Backbone (a dilated ResNet: returns layer3, layer4) -> head (returns logits, feat)
    on the last feature, optional auxiliary head on the one before. The head's `channels`
    is the feature width."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        backbone: nn.Module,
        head: nn.Module,
        aux_head: nn.Module | None = None,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(arch, num_classes, int(head.channels), model_kwargs)
        self.backbone = backbone
        self.head = head
        self.aux_head = aux_head

    @property
    def has_aux(self) -> bool:
        return self.aux_head is not None

    def training_heads(self) -> list[nn.Module]:
        return [self.aux_head] if self.aux_head is not None else []

    def extract(self, x: torch.Tensor, with_aux: bool = True) -> dict[str, torch.Tensor]:
        c3, c4 = self.backbone(x)
        logits, feat = self.head(c4)
        out = {"logits": logits, "feat": feat}
        if with_aux and self.aux_head is not None:
            out["aux"] = self.aux_head(c3)[0]
        return out


def build_segmentor(
    arch: str,
    depth: int,
    num_classes: int,
    head: Callable[[int, int], nn.Module],
    *,
    aux: bool = True,
    deep_stem: bool = False,
) -> Segmentor:
    """segkd's dilated ResNet-`depth` with `head(in_channels, num_classes)` and the FCN aux
    head (its ImageNet weights: distill.models.weights.load_backbone_weights)."""
    backbone = DilatedResNet(depth, deep_stem=deep_stem)
    return Segmentor(
        arch,
        num_classes,
        backbone,
        head(backbone.out_channels, num_classes),
        FCNHead(backbone.layer3_channels, num_classes) if aux else None,
        model_kwargs={"aux": aux, "deep_stem": deep_stem},
    )
