"""Sliding-window inference as mmsegmentation defines it (EncoderDecoder.slide_inference).

The facts (mmseg 1.x mmseg/models/segmentors/encoder_decoder.py; 0.x the same):
- windows of `crop` (H, W) every `stride` (H, W): ceil((size - crop) / stride) + 1 per
  axis, at least 1; a window that would pass the border is moved back inside (its end at
  the border), so the last windows overlap more; an image smaller than the crop is one
  window of the image itself (no padding of the input);
- each window's logits, already upsampled to the window by the network, are added into
  a zero canvas of the image size (the window's padding); a count of windows per pixel
  divides the sum: overlapping logits are averaged.
Plain numpy, no torch: runtime/ runs on a Jetson.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from core.errors import SegkdError


def windows(
    size: tuple[int, int], crop: tuple[int, int], stride: tuple[int, int]
) -> Iterator[tuple[int, int, int, int]]:
    """(y1, y2, x1, x2) of every window, row by row."""
    (h, w), (ch, cw), (sh, sw) = size, crop, stride
    if min(ch, cw, sh, sw) < 1:
        raise ValueError(f"crop {crop} and stride {stride} must be positive")
    rows = max(h - ch + sh - 1, 0) // sh + 1
    cols = max(w - cw + sw - 1, 0) // sw + 1
    for r in range(rows):
        for c in range(cols):
            y2, x2 = min(r * sh + ch, h), min(c * sw + cw, w)
            yield max(y2 - ch, 0), y2, max(x2 - cw, 0), x2


def slide_logits(
    run: Callable[[np.ndarray], np.ndarray],
    batch: np.ndarray,
    crop: tuple[int, int],
    stride: tuple[int, int],
) -> np.ndarray:
    """B x C x H x W network input -> B x K x H x W logits averaged over the windows.

    run: a window (B x C x h x w) -> its logits at the window's size (B x K x h x w).
    """
    b, _, h, w = batch.shape
    total: np.ndarray | None = None
    count = np.zeros((h, w), dtype=np.float32)
    for y1, y2, x1, x2 in windows((h, w), crop, stride):
        out = np.asarray(run(np.ascontiguousarray(batch[:, :, y1:y2, x1:x2])), np.float32)
        if out.shape[0] != b or out.shape[2:] != (y2 - y1, x2 - x1):
            raise ValueError(
                f"a {y2 - y1}x{x2 - x1} window gave logits of shape {out.shape}, "
                "not the window's size"
            )
        if total is None:
            total = np.zeros((b, out.shape[1], h, w), dtype=np.float32)
        total[:, :, y1:y2, x1:x2] += out
        count[y1:y2, x1:x2] += 1
    assert total is not None and count.min() > 0  # the windows tile the image
    return total / count


MODES = ("auto", "whole", "slide")


def parse_hw(text: str | None, option: str) -> tuple[int, int] | None:
    """'769' or '769x769' (H x W) -> (H, W); None stays None."""
    if text is None:
        return None
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 2
    if len(values) != 2 or min(values) < 1:
        raise SegkdError(f"{option} {text!r}: give H x W in pixels, e.g. 769x769 or 769")
    return values[0], values[1]


def resolve_mode(
    requested: str,
    crop: tuple[int, int] | None,
    stride: tuple[int, int] | None,
    recorded: Mapping[str, Any] | None,
) -> tuple[tuple[int, int], tuple[int, int]] | None:
    """(crop, stride) for a sliding-window run, or None for whole images.

    auto: what the model records (a zoo teacher whose config tests with mode='slide'),
    else whole images; --crop / --stride override the recorded window.
    """
    if requested not in MODES:
        raise SegkdError(f"--mode must be one of {', '.join(MODES)}, got {requested!r}")
    recorded_slide = isinstance(recorded, Mapping) and recorded.get("mode") == "slide"
    if requested == "whole" or (requested == "auto" and not recorded_slide):
        if crop is not None or stride is not None:
            raise SegkdError("--crop/--stride apply to --mode slide (this run is whole images)")
        return None
    if recorded_slide:
        assert isinstance(recorded, Mapping)
        crop = crop or tuple(recorded["crop"])  # type: ignore[assignment]
        stride = stride or tuple(recorded["stride"])  # type: ignore[assignment]
    if crop is None or stride is None:
        raise SegkdError(
            "--mode slide needs --crop and --stride (the model records no sliding window)"
        )
    return crop, stride


def describe_mode(window: tuple[tuple[int, int], tuple[int, int]] | None) -> str:
    if window is None:
        return "whole"
    (ch, cw), (sh, sw) = window
    return f"slide (crop {ch}x{cw}, stride {sh}x{sw})"
