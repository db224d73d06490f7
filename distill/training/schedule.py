"""Learning-rate schedule: linear warm-up then poly decay (the segmentation standard)."""

from __future__ import annotations


def poly_lr(base_lr: float, it: int, total: int, power: float = 0.9, warmup: int = 0) -> float:
    if warmup > 0 and it < warmup:
        return base_lr * (it + 1) / warmup
    return base_lr * (1.0 - min(it, total - 1) / total) ** power
