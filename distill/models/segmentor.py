"""The segmentation network interface, and the dilated-ResNet segmentor (backbone + head + aux)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distill.models.heads import FCNHead
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
        # What the backbone loader reported when build_model loaded ImageNet weights.
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


class Segmentor(SegmentationNet):
    """Dilated ResNet backbone -> head at 1/8 resolution (+ auxiliary FCN head on layer3)."""

    def __init__(
        self,
        arch: str,
        num_classes: int,
        backbone: DilatedResNet,
        head: nn.Module,
        feat_channels: int,
        aux: bool = True,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(arch, num_classes, feat_channels, model_kwargs)
        self.backbone = backbone
        self.head = head
        self.aux_head = FCNHead(backbone.layer3_channels, num_classes) if aux else None

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
