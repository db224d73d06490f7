"""Metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.metrics import ConfusionMatrix, SegMetrics, pixel_agreement


def test_miou_matches_hand_computation() -> None:
    # gt:   0 0 1 1 2 255      pred: 0 1 1 1 0 2
    gt = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 0, 2]])
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    m = cm.summary(["a", "b", "c"])
    # class 0: tp 1, gt 2, pred 2 -> 1/3 ; class 1: tp 2, gt 2, pred 3 -> 2/3 ; class 2: tp 0 -> 0
    assert m.iou == pytest.approx({"a": 1 / 3, "b": 2 / 3, "c": 0.0})
    assert m.miou == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert m.pixel_acc == pytest.approx(3 / 5)
    assert m.num_pixels == 5


def test_absent_class_is_excluded_from_the_mean() -> None:
    cm = ConfusionMatrix(4)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 1]))
    m = cm.summary()
    assert m.iou["2"] is None and m.iou["3"] is None
    assert m.miou == pytest.approx(1.0)


def test_accumulates_over_a_split_not_per_image() -> None:
    a, b = ConfusionMatrix(2), ConfusionMatrix(2)
    img1 = (np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]))
    img2 = (np.array([1]), np.array([1]))
    for p, t in (img1, img2):
        a.update(p, t)
    b.update(*img1)
    c = ConfusionMatrix(2)
    c.update(*img2)
    b.merge(c)  # what the trainer's all_reduce does across processes
    assert np.array_equal(a.matrix, b.matrix)
    assert a.summary().miou == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_out_of_range_prediction_counts_as_a_miss() -> None:
    cm = ConfusionMatrix(2)
    cm.update(np.array([0, 7]), np.array([0, 1]))
    m = cm.summary()
    assert m.iou["1"] == 0.0 and m.pixel_acc == pytest.approx(0.5)


def test_bad_label_value_is_reported() -> None:
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="label value 9"):
        cm.update(np.array([0]), np.array([9]))


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 6), st.integers(1, 200), st.integers(0, 2**31 - 1))
def test_perfect_prediction_gives_one(k: int, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, k, n)
    gt[rng.random(n) < 0.1] = 255
    cm = ConfusionMatrix(k)
    cm.update(np.where(gt == 255, 0, gt), gt)
    m = cm.summary()
    if m.num_pixels:
        assert m.miou == pytest.approx(1.0) and m.pixel_acc == pytest.approx(1.0)
    assert isinstance(SegMetrics.from_matrix(cm.matrix).to_dict()["iou"], dict)


def test_pixel_agreement() -> None:
    assert pixel_agreement(np.array([1, 2, 3, 4]), np.array([1, 2, 0, 4])) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        pixel_agreement(np.zeros(3), np.zeros(4))
