"""Segmentation networks: dilated ResNets with PSPNet / DeepLabV3 heads, and the real-time
two-branch students DDRNet-23-slim and PIDNet-S."""

from distill.models.complexity import count_macs, count_params, model_table
from distill.models.pooling import AdaptiveAvgPool2dMatmul
from distill.models.registry import available_models, build_model, load_backbone_weights
from distill.models.segmentor import SegmentationNet, Segmentor

__all__ = [
    "AdaptiveAvgPool2dMatmul",
    "SegmentationNet",
    "Segmentor",
    "available_models",
    "build_model",
    "count_macs",
    "count_params",
    "load_backbone_weights",
    "model_table",
]
