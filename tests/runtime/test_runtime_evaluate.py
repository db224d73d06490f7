"""evaluate(): mIoU against a hand-computed confusion, saved predictions, compare()."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from core.errors import SegkdError
from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from runtime.evaluate import class_drops, compare, evaluate
from runtime.loader import open_segmenter
from runtime.segmenter import Segmenter

RGB = LabelSpec(names=("red", "green", "blue"))
COLOURS = np.array([(255, 0, 0), (0, 255, 0), (0, 0, 255)], np.uint8)
# What the colour model predicts for IMAGE (class = the brightest channel).
PRED = np.array(
    [
        [0, 0, 0, 1, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 2, 2, 1, 1],
        [0, 0, 2, 2, 1, 1],
    ],
    np.uint8,
)
IMAGE = COLOURS[PRED]  # 4x6 RGB
MASK = np.array(
    [
        [0, 0, 0, 0, 1, 1],
        [0, 0, 0, 1, 1, 1],
        [0, 0, 2, 2, 255, 255],
        [0, 2, 2, 2, 1, 1],
    ],
    np.uint8,
)


@pytest.fixture(scope="module")
def colour_model(tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    """A real ONNX graph: ArgMax over the (un-normalised) RGB channels, int64 out."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ArgMax", ["input"], ["labels"], axis=1, keepdims=0)],
        "rgb_argmax",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 6])],
        [helper.make_tensor_value_info("labels", TensorProto.INT64, ["N", 4, 6])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # onnx 1.23 writes IR 14; older onnxruntime releases refuse it
    meta = {
        "arch": "rgb-argmax",
        "labels": RGB.to_dict(),
        "preprocess": PreprocessSpec(input_size=(4, 6), mean=(0, 0, 0), std=(1, 1, 1)).to_dict(),
        "output": "labels",
        "precision": "fp32",
    }
    model.metadata_props.add(key="segkd", value=json.dumps(meta))
    path = tmp_path_factory.mktemp("colour") / "rgb.onnx"
    onnx.save(model, str(path))
    return open_segmenter(path)


def _samples() -> list[tuple[np.ndarray, np.ndarray, str]]:
    big = cv2.resize(IMAGE, (12, 8), interpolation=cv2.INTER_NEAREST)  # image finer than its mask
    return [(IMAGE, MASK, "city/a"), (big, PRED, "b.png")]


def test_miou_matches_the_hand_computed_confusion(colour_model: Segmenter, tmp_path: Path) -> None:
    res = evaluate(colour_model, _samples(), RGB)
    # Sample 1 (22 valid pixels): class 0 TP 9 / GT 10 / pred 10; class 1 TP 7 / GT 7 / pred 8;
    # class 2 TP 4 / GT 5 / pred 4. Sample 2 is perfect: +10/10/10, +10/10/10, +4/4/4.
    iou = [19 / (20 + 20 - 19), 17 / (17 + 18 - 17), 8 / (9 + 8 - 8)]
    assert res.num_samples == 2
    assert res.metrics.iou == pytest.approx(dict(zip(RGB.names, iou, strict=True)))
    assert res.miou == pytest.approx(sum(iou) / 3)
    assert res.metrics.pixel_acc == pytest.approx(44 / 46)
    np.testing.assert_array_equal(res.confusion, [[19, 1, 0], [0, 17, 0], [1, 0, 8]])
    d = res.to_dict()
    assert d["miou"] == res.miou and d["model"]["backend"] == "onnxruntime"
    assert json.loads(json.dumps(d)) == d  # JSON-ready


def test_saved_predictions_use_encode_label_and_leave_no_temp_files(
    colour_model: Segmenter, tmp_path: Path
) -> None:
    out = tmp_path / "pred"
    evaluate(colour_model, _samples(), save_predictions=out, encode_label=lambda p: p + 7)
    a = cv2.imread(str(out / "labels" / "city" / "a.png"), cv2.IMREAD_UNCHANGED)
    b = cv2.imread(str(out / "labels" / "b.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(a, PRED + 7)
    np.testing.assert_array_equal(b, PRED + 7)
    overlay = cv2.imread(str(out / "overlays" / "city" / "a.jpg"))
    assert overlay is not None and overlay.shape == (4, 6, 3)
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]


def test_compare_reports_the_drop_in_points(colour_model: Segmenter) -> None:
    res = evaluate(colour_model, _samples())
    perfect = evaluate(colour_model, [(IMAGE, PRED, "p")])
    assert perfect.miou == 1.0
    assert compare(res, perfect) == pytest.approx((1.0 - res.miou) * 100)
    assert compare(perfect, {"miou": 0.5}) == pytest.approx(-50.0)
    assert class_drops(res, perfect)["red"] == pytest.approx((1 - 19 / 21) * 100)


def test_bad_inputs_raise_segkd_errors(colour_model: Segmenter) -> None:
    with pytest.raises(SegkdError, match="model predicts 3 classes, the dataset has 4"):
        evaluate(colour_model, _samples(), LabelSpec(names=("a", "b", "c", "d")))
    bad = MASK.copy()
    bad[0, 0] = 9
    with pytest.raises(SegkdError, match="sample broken: label value 9"):
        evaluate(colour_model, [(IMAGE, bad, "broken")])
    with pytest.raises(SegkdError, match="no samples"):
        evaluate(colour_model, [])
