"""Fake quantization with the numbers the deployed Q/DQ file uses.

ONNX QuantizeLinear to int8 rounds half to even and saturates to [-128, 127]; the
TensorRT file stores its scales in fp16, so the scale the engine multiplies by is the
fp16 value. Weights: onnxruntime's symmetric per-channel scale max|w|/127 (computed in
fp32, stored in fp16 after the int8 codes were computed with the fp32 value). Gradients:
straight-through for the rounding; for a learned activation scale the LSQ gradient
(Esser et al., 2020), which falls out of writing the fake quantizer as x/s -> round ->
clamp -> *s with only the rounding detached.
"""

from __future__ import annotations

import torch

QMIN, QMAX = -128, 127  # QuantizeLinear's int8 saturation
WEIGHT_QMAX = 127  # onnxruntime's symmetric weight range is [-127, 127]


def _round_ste(v: torch.Tensor) -> torch.Tensor:
    return v + (torch.round(v) - v).detach()


def as_fp16(s: torch.Tensor) -> torch.Tensor:
    """The fp16 value of `s` forward, the identity backward."""
    return s + (s.half().float() - s).detach()


def fake_quant_activation(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Q->DQ of `x` with one (fp16-stored) scale."""
    s = as_fp16(scale)
    return torch.clamp(_round_ste(x / s), QMIN, QMAX) * s


def weight_scale(w: torch.Tensor) -> torch.Tensor:
    """onnxruntime's symmetric per-output-channel scale, as fp32 (no gradient)."""
    amax = w.detach().abs().flatten(1).amax(dim=1)
    scale = amax / WEIGHT_QMAX
    return torch.where(amax > 0, scale, torch.ones_like(scale))


def fake_quant_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-output-channel Q->DQ of a Conv weight as the file will hold it."""
    s = weight_scale(w).view(-1, *([1] * (w.dim() - 1)))
    q = torch.clamp(_round_ste(w / s), -WEIGHT_QMAX, WEIGHT_QMAX)
    return q * s.half().float()
