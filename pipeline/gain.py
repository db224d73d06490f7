"""What distillation adds, measured over several student seeds.

One seed is noise: the same command moved the gain by 1.8 points between two machines
(docs/BENCHMARKS.md). So the pipeline trains the student alone and the distilled
student once per seed, and a gain counts as measured only when it is larger than the
seed spread: the largest max - min of either row. mIoU values are fractions (as the
rest of the report); the gain and the spread are percentage points.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any


def verdict(dist: dict[str, Any]) -> str | None:
    """What the gain amounts to, in the words every output uses; None with one seed."""
    if dist.get("gain_exceeds_spread") is None:
        return None
    return (
        "larger than the spread"
        if dist["gain_exceeds_spread"]
        else "within the spread, so not a measured gain"
    )


def row_stats(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation and range (max - min) of one row, in points."""
    points = [100.0 * v for v in values]
    return {
        "mean": statistics.fmean(points),
        "std": statistics.stdev(points) if len(points) > 1 else None,
        "range": max(points) - min(points) if len(points) > 1 else None,
        "n": len(points),
    }


def seed_gain(
    seeds: Sequence[int], baseline: Sequence[float] | None, distilled: Sequence[float]
) -> dict[str, Any]:
    """The report's distillation block: per-seed mIoU of both rows, the mean gain, the
    seed spread and whether the gain exceeds it (None where it cannot be told)."""
    if len(distilled) != len(seeds) or (baseline is not None and len(baseline) != len(seeds)):
        raise ValueError("one mIoU per seed and row")
    out: dict[str, Any] = {
        "seeds": list(seeds),
        "distilled_miou": list(distilled),
        "baseline_miou": list(baseline) if baseline is not None else None,
        "distilled_stats": row_stats(distilled),
        "baseline_stats": row_stats(baseline) if baseline is not None else None,
        "gain_per_seed": None,
        "gain_vs_baseline": None,
        "spread": None,
        "gain_exceeds_spread": None,
    }
    if baseline is None:
        return out
    out["gain_per_seed"] = [100.0 * (d - b) for d, b in zip(distilled, baseline, strict=True)]
    out["gain_vs_baseline"] = out["distilled_stats"]["mean"] - out["baseline_stats"]["mean"]
    if len(seeds) > 1:
        out["spread"] = max(out["distilled_stats"]["range"], out["baseline_stats"]["range"])
        out["gain_exceeds_spread"] = bool(out["gain_vs_baseline"] > out["spread"])
    return out
