"""Segmentation networks, one family per file: dilated ResNets with PSPNet (pspnet.py) /
DeepLabV3 (deeplabv3.py) heads, and the real-time two-branch students DDRNet-23-slim
(ddrnet.py) and PIDNet-S (pidnet.py). Importing the family files registers their builders
(`distill.models.registry`)."""

# Importing a family file registers its builders, in this order (`segkd models`' rows).
from distill.models import pspnet  # noqa: F401  # isort: skip
from distill.models import deeplabv3  # noqa: F401  # isort: skip
from distill.models import ddrnet  # noqa: F401  # isort: skip
from distill.models import pidnet  # noqa: F401  # isort: skip
from distill.models.complexity import count_macs, count_params, model_table
from distill.models.pooling import AdaptiveAvgPool2dMatmul
from distill.models.registry import available_models, build_model, register_model
from distill.models.segmentor import SegmentationNet, Segmentor
from distill.models.weights import load_backbone_weights

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
    "register_model",
]
