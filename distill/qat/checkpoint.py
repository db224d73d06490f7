"""The QAT checkpoint: the fp32 student checkpoint plus what the INT8 file is written from.

`qat` holds the deploy graph's trained Conv weights and biases (keyed by ONNX initializer
name: BatchNorm is folded there, as TensorRT sees it), one learned scale per activation
quantization point ("node|slot" -> scale), the calibration ranges (which rebuild the
Q/DQ structure without images) and the export geometry the names belong to. The student's
own weights stay the fp32 reference: `segkd export` writes model.onnx / fp16 from them and
measures the INT8 file's agreement against them. Plain tensors and numbers only, so the
file loads with torch.load(weights_only=True).
"""

from __future__ import annotations

from typing import Any

import torch

from core.errors import SegkdError
from distill.qat.placement import ActivationPoint, Placement

QAT_FORMAT = "segkd-qat"
QAT_VERSION = 1


def point_key(p: ActivationPoint) -> str:
    return f"{p.node}|{p.slot}|{p.tensor}"


def qat_state(
    *,
    weights: dict[str, torch.Tensor],
    placement: Placement,
    scales: dict[str, float],
    ranges: dict[str, tuple[float, float]],
    export: dict[str, Any],
    training: dict[str, Any],
) -> dict[str, Any]:
    return {
        "format": QAT_FORMAT,
        "version": QAT_VERSION,
        "weights": {k: v.detach().cpu().float() for k, v in weights.items()},
        "scales": {point_key(p): float(scales[p.group]) for p in placement.activations},
        "weight_quantized_convs": list(placement.weights),
        "ranges": {k: [float(lo), float(hi)] for k, (lo, hi) in ranges.items()},
        "export": dict(export),
        "training": dict(training),
    }


def check_qat_state(qat: Any, where: str) -> dict[str, Any]:
    """The checkpoint's `qat` entry, or one clear error naming what is wrong with it."""
    if not isinstance(qat, dict) or qat.get("format") != QAT_FORMAT:
        raise SegkdError(f"{where}: field 'qat' is not a segkd QAT state")
    if qat.get("version", 0) > QAT_VERSION:
        raise SegkdError(f"{where}: QAT state written by a newer segkd; upgrade segkd")
    for key, kind in (("weights", dict), ("scales", dict), ("ranges", dict), ("export", dict)):
        if not isinstance(qat.get(key), kind):
            raise SegkdError(f"{where}: QAT state has no valid '{key}'; the checkpoint is damaged")
    if not all(isinstance(v, torch.Tensor) for v in qat["weights"].values()):
        raise SegkdError(f"{where}: QAT weights must be tensors; the checkpoint is damaged")
    bad = [k for k, v in qat["scales"].items() if not (isinstance(v, float) and v > 0)]
    if bad:
        raise SegkdError(f"{where}: QAT scale {bad[0]!r} is not a positive number")
    return qat
