"""Segmentation metrics from a confusion matrix (numpy only).

The matrix is accumulated over a whole split and only then turned into IoU, as the
Cityscapes/mmseg evaluators do (a per-image mean of IoUs is a different, noisier number).
In distributed runs each process accumulates its own matrix and the trainer sums them
(all_reduce) before calling `summary`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.labels import IGNORE_INDEX


class ConfusionMatrix:
    """rows = ground truth, columns = prediction; pixels labelled `ignore_index` are skipped."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        if num_classes <= 0:
            raise ValueError("num_classes must be positive")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        # Pixels whose prediction is no class at all: misses for their true class.
        self.out_of_range = np.zeros(num_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {pred.shape} and label {target.shape} differ in shape")
        n = self.num_classes
        t = target.reshape(-1).astype(np.int64, copy=False)
        p = pred.reshape(-1).astype(np.int64, copy=False)
        valid = t != self.ignore_index
        if not valid.all():
            t, p = t[valid], p[valid]
        bad = (t < 0) | (t >= n)
        if bad.any():
            raise ValueError(
                f"label value {int(t[bad][0])} is neither a class (0..{n - 1}) nor ignore"
            )
        # Predictions outside the class range count as wrong for their true class only.
        p = np.where((p >= 0) & (p < n), p, n)
        counts = np.bincount(t * (n + 1) + p, minlength=n * (n + 1)).reshape(n, n + 1)
        self.matrix += counts[:, :n]
        self.out_of_range += counts[:, n]

    def merge(self, other: ConfusionMatrix | np.ndarray) -> None:
        if isinstance(other, ConfusionMatrix):
            self.out_of_range += other.out_of_range
            other = other.matrix
        self.matrix += np.asarray(other, dtype=np.int64)

    def summary(self, class_names: Sequence[str] | None = None) -> SegMetrics:
        return SegMetrics.from_matrix(self.matrix, class_names, self.out_of_range)


@dataclass(frozen=True)
class SegMetrics:
    miou: float  # mean over classes that occur in the ground truth or the predictions
    pixel_acc: float
    mean_acc: float
    iou: dict[str, float | None]  # None for a class absent from both label and prediction
    num_pixels: int

    @classmethod
    def from_matrix(
        cls,
        matrix: np.ndarray,
        class_names: Sequence[str] | None = None,
        out_of_range: np.ndarray | None = None,
    ) -> SegMetrics:
        m = np.asarray(matrix, dtype=np.float64)
        n = m.shape[0]
        names = list(class_names) if class_names is not None else [str(i) for i in range(n)]
        tp = np.diag(m)
        gt = m.sum(1) + (out_of_range if out_of_range is not None else 0)
        pred = m.sum(0)
        union = gt + pred - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan)
            acc = np.where(gt > 0, tp / gt, np.nan)
        total = float(gt.sum())
        present = ~np.isnan(iou)
        return cls(
            miou=float(np.nanmean(iou)) if present.any() else 0.0,
            pixel_acc=float(tp.sum() / total) if total else 0.0,
            mean_acc=float(np.nanmean(acc)) if (~np.isnan(acc)).any() else 0.0,
            iou={k: (None if np.isnan(v) else float(v)) for k, v in zip(names, iou, strict=True)},
            num_pixels=int(total),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "miou": self.miou,
            "pixel_acc": self.pixel_acc,
            "mean_acc": self.mean_acc,
            "iou": self.iou,
            "num_pixels": self.num_pixels,
        }


def pixel_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels on which two label maps agree (1.0 = identical)."""
    if a.shape != b.shape:
        raise ValueError(f"label maps differ in shape: {a.shape} vs {b.shape}")
    return float((a == b).mean()) if a.size else 1.0
