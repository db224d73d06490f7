"""The supervised loss a run trains with, built from its options (TrainConfig.loss and
the OHEM settings): segkd's plain CE, or the DDRNet/PIDNet authors' OHEM recipe."""

from __future__ import annotations

from torch import nn

from core.errors import SegkdError
from core.labels import IGNORE_INDEX
from distill.losses.authors import OhemSegmentationLoss
from distill.losses.ohem import CITYSCAPES_CLASS_WEIGHTS, OHEM_MIN_KEPT, OHEM_THRESHOLD
from distill.losses.segmentation import SegmentationLoss

CLASS_WEIGHTS = {"cityscapes": CITYSCAPES_CLASS_WEIGHTS}


def build_supervised_loss(
    loss: str = "ce",
    *,
    num_classes: int,
    aux_weight: float = 0.4,
    ignore_index: int = IGNORE_INDEX,
    ohem_threshold: float = OHEM_THRESHOLD,
    ohem_min_kept: int = OHEM_MIN_KEPT,
    class_weights: str | None = None,
    align_corners: bool = False,
) -> nn.Module:
    if loss == "ce":
        if class_weights is not None or align_corners:
            raise SegkdError("class weights and align_corners apply to the ohem loss only")
        return SegmentationLoss(aux_weight=aux_weight, ignore_index=ignore_index)
    if loss != "ohem":
        raise SegkdError(f"loss: unknown value {loss!r}; choose ce or ohem")
    weights = None
    if class_weights is not None:
        if class_weights not in CLASS_WEIGHTS:
            raise SegkdError(
                f"class weights: unknown set {class_weights!r}; known: {', '.join(CLASS_WEIGHTS)}"
            )
        weights = CLASS_WEIGHTS[class_weights]
        if len(weights) != num_classes:
            raise SegkdError(
                f"class weights {class_weights!r} hold {len(weights)} weights; "
                f"the dataset has {num_classes} classes"
            )
    return OhemSegmentationLoss(
        aux_weight=aux_weight,
        ignore_index=ignore_index,
        threshold=ohem_threshold,
        min_kept=ohem_min_kept,
        class_weights=weights,
        align_corners=align_corners,
    )


def loss_from_config(cfg, num_classes: int, ignore_index: int, aux_weight: float) -> nn.Module:  # type: ignore[no-untyped-def]
    """The supervised loss of a TrainConfig (aux_weight given: distillation has its own)."""
    return build_supervised_loss(
        cfg.loss,
        num_classes=num_classes,
        aux_weight=aux_weight,
        ignore_index=ignore_index,
        ohem_threshold=cfg.ohem_threshold,
        ohem_min_kept=cfg.ohem_min_kept,
        class_weights=cfg.class_weights,
        align_corners=cfg.ohem_align,
    )
