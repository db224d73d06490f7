"""runtime.slide: mmseg's sliding-window geometry and averaging, and the mode options.

Equality with mmseg's own slide_inference on a real network is in
tests/distill/zoo/test_mmseg_golden.py (the 769x769 PSPNet fixture).
"""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import SegkdError
from runtime.slide import describe_mode, parse_hw, resolve_mode, slide_logits, windows


def test_windows_step_by_stride_and_the_last_ones_end_at_the_border() -> None:
    # rows: 0, 65 -> the second would end at 162 > 145, so it is moved to 48..145
    got = list(windows((145, 201), (97, 113), (65, 81)))
    rows = sorted({(y1, y2) for y1, y2, _, _ in got})
    cols = sorted({(x1, x2) for _, _, x1, x2 in got})
    assert rows == [(0, 97), (48, 145)]
    assert cols == [(0, 113), (81, 194), (88, 201)]
    assert len(got) == len(rows) * len(cols)


def test_an_image_smaller_than_the_crop_is_one_window_of_itself() -> None:
    assert list(windows((50, 70), (97, 113), (65, 81))) == [(0, 50, 0, 70)]


def test_overlapping_logits_are_averaged() -> None:
    """Each window answers with its own index: a pixel gets the mean of the windows
    covering it; a position-independent network gives its whole-image answer."""
    x = np.random.default_rng(0).standard_normal((2, 3, 40, 50)).astype(np.float32)
    seen: list[tuple[int, ...]] = []

    def numbered(w: np.ndarray) -> np.ndarray:
        seen.append(w.shape)
        return np.full((w.shape[0], 1, *w.shape[2:]), float(len(seen)), np.float32)

    got = slide_logits(numbered, x, (30, 30), (20, 20))
    spans = list(windows((40, 50), (30, 30), (20, 20)))
    want = np.zeros((40, 50))
    count = np.zeros((40, 50))
    for i, (y1, y2, x1, x2) in enumerate(spans, start=1):
        want[y1:y2, x1:x2] += i
        count[y1:y2, x1:x2] += 1
    assert np.allclose(got[0, 0], want / count) and np.allclose(got[1, 0], want / count)
    pointwise = slide_logits(lambda w: np.tanh(w) * 2, x, (30, 30), (20, 20))
    assert np.allclose(pointwise, np.tanh(x) * 2, atol=1e-6)


def test_a_window_answered_at_another_size_is_an_error() -> None:
    x = np.zeros((1, 3, 40, 40), np.float32)
    with pytest.raises(ValueError, match="not the window's size"):
        slide_logits(lambda w: w[:, :, ::2, ::2], x, (30, 30), (20, 20))


def test_the_mode_follows_the_model_unless_told() -> None:
    recorded = {"mode": "slide", "crop": [769, 769], "stride": [513, 513]}
    assert resolve_mode("auto", None, None, recorded) == ((769, 769), (513, 513))
    assert resolve_mode("auto", (512, 512), None, recorded) == ((512, 512), (513, 513))
    assert resolve_mode("whole", None, None, recorded) is None
    assert resolve_mode("auto", None, None, {"mode": "whole"}) is None
    assert resolve_mode("slide", (64, 96), (32, 48), None) == ((64, 96), (32, 48))
    assert describe_mode(((769, 769), (513, 513))) == "slide (crop 769x769, stride 513x513)"
    with pytest.raises(SegkdError, match="needs --crop and --stride"):
        resolve_mode("slide", None, None, None)
    with pytest.raises(SegkdError, match="apply to --mode slide"):
        resolve_mode("whole", (64, 64), None, recorded)
    with pytest.raises(SegkdError, match="--mode must be"):
        resolve_mode("tiles", None, None, None)
    assert parse_hw("769", "--crop") == (769, 769) and parse_hw("512x1024", "--crop") == (512, 1024)
    with pytest.raises(SegkdError, match="--stride '0x5'"):
        parse_hw("0x5", "--stride")
