"""The static TensorRT check on small hand-built graphs: each documented rule fails the
graph that breaks it and passes the corrected one (runtime/tensorrt_onnx_check.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from core.errors import SegkdError
from runtime.tensorrt_onnx_check import (
    TARGETS,
    check_tensorrt_onnx,
    require_tensorrt_onnx,
)

F, F16, U8, I8, I32 = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.UINT8,
                       TensorProto.INT8, TensorProto.INT32)  # fmt: skip


def _model(nodes, inputs, outputs, inits=(), opset=17, ir=10) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = ir
    return m


def _pixels_to_labels(cast_first: bool, label_path: tuple[int, ...]) -> onnx.ModelProto:
    """uint8 NHWC frame -> 1x1 Conv (4 classes) -> ArgMax -> Cast chain `label_path`."""
    inp = helper.make_tensor_value_info("input", U8, [1, 8, 8, 3])
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    if cast_first:
        head = [helper.make_node("Cast", ["input"], ["c"], to=F, name="cast_in"),
                helper.make_node("Transpose", ["c"], ["x"], perm=[0, 3, 1, 2], name="nchw")]  # fmt: skip
    else:  # what segkd wrote before: the uint8 tensor transposed first
        head = [helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 1, 2], name="nchw"),
                helper.make_node("Cast", ["t"], ["x"], to=F, name="cast_in")]  # fmt: skip
    nodes = [*head, helper.make_node("Conv", ["x", "w"], ["y"], name="conv"),
             helper.make_node("ArgMax", ["y"], ["idx"], axis=1, keepdims=0, name="argmax")]  # fmt: skip
    src = "idx"
    for i, to in enumerate(label_path):
        dst = "labels" if i == len(label_path) - 1 else f"c{i}"
        nodes.append(helper.make_node("Cast", [src], [dst], to=to, name=f"label_cast{i}"))
        src = dst
    out = helper.make_tensor_value_info("labels", label_path[-1], [1, 8, 8])
    return _model(nodes, [inp], [out], [w])


def test_the_graphs_segkd_writes_now_pass() -> None:
    assert check_tensorrt_onnx(_pixels_to_labels(True, (F, U8))) == []
    assert check_tensorrt_onnx(_pixels_to_labels(True, (I32,))) == []


def test_the_old_uint8_graph_fails_at_the_transpose_and_the_label_cast() -> None:
    found = check_tensorrt_onnx(_pixels_to_labels(False, (U8,)))
    rules = {(v.rule, v.node) for v in found}
    assert ("uint8-input", "node 'nchw' (Transpose)") in rules
    assert ("uint8-cast", "node 'label_cast0' (Cast)") in rules
    with pytest.raises(SegkdError, match=r"^model.onnx: TensorRT cannot build it: node 'nchw'"):
        require_tensorrt_onnx(_pixels_to_labels(False, (U8,)), "model.onnx")


def test_each_fix_alone_leaves_the_other_violation() -> None:
    assert [v.rule for v in check_tensorrt_onnx(_pixels_to_labels(True, (U8,)))] == ["uint8-cast"]
    only_input = {v.rule for v in check_tensorrt_onnx(_pixels_to_labels(False, (F, U8)))}
    assert "uint8-input" in only_input and "uint8-cast" not in only_input


def test_opset_and_ir_limits_differ_per_tensorrt_version() -> None:
    m = _pixels_to_labels(True, (F, U8))
    m.opset_import[0].version = 21
    found = check_tensorrt_onnx(m)
    assert [v.rule for v in found] == ["opset"] and "10.3" in found[0].detail
    m.opset_import[0].version = 17
    m.ir_version = 11
    assert [v.detail.split("'")[0] for v in check_tensorrt_onnx(m)] == [
        "IR version 11 is above TensorRT 10.3"
    ]
    assert check_tensorrt_onnx(m, [t for t in TARGETS if t.version != "10.3"]) == []


def _qdq(zero_point: np.ndarray | None, scale: np.ndarray, axis: int = 0, on_weight: bool = True):
    x = helper.make_tensor_value_info("x", F, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", F, [1, 4, 8, 8])
    inits = [numpy_helper.from_array(scale, "s"),
             numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "wq")]  # fmt: skip
    zp = []
    if zero_point is not None:
        inits.append(numpy_helper.from_array(zero_point, "zp"))
        zp = ["zp"]
    if on_weight:
        nodes = [helper.make_node("DequantizeLinear", ["wq", "s", *zp], ["w"], axis=axis, name="dq_w"),
                 helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]  # fmt: skip
    else:
        inits.append(numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w"))
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", *zp], ["q"], axis=1, name="q_x"),
                 helper.make_node("DequantizeLinear", ["q", "s", *zp], ["xd"], axis=1, name="dq_x"),
                 helper.make_node("Conv", ["xd", "w"], ["y"], name="conv")]  # fmt: skip
    return _model(nodes, [x], [y], inits, opset=19)


def test_qdq_rules() -> None:
    per_k = np.full(4, 0.1, np.float32)
    assert check_tensorrt_onnx(_qdq(np.zeros(4, np.int8), per_k)) == []
    assert check_tensorrt_onnx(_qdq(None, per_k)) == []
    nonzero = check_tensorrt_onnx(_qdq(np.array([0, 1, 0, 0], np.int8), per_k))
    assert [v.rule for v in nonzero] == ["qdq-zero-point"]
    unsigned = check_tensorrt_onnx(_qdq(np.zeros(4, np.uint8), per_k))
    assert any("uint8" in v.detail for v in unsigned)
    wrong_axis = check_tensorrt_onnx(_qdq(None, np.full(3, 0.1, np.float32), axis=1))
    assert [v.rule for v in wrong_axis] == ["qdq-axis"]
    per_channel_activation = check_tensorrt_onnx(
        _qdq(None, np.full(3, 0.1, np.float32), on_weight=False)
    )
    assert {v.rule for v in per_channel_activation} == {"qdq-axis"}
    assert check_tensorrt_onnx(_qdq(None, np.float32(0.1), on_weight=False)) == []


@pytest.mark.parametrize(
    ("attrs", "ok"),
    [
        ({"mode": "linear", "coordinate_transformation_mode": "half_pixel"}, True),
        (
            {
                "mode": "nearest",
                "coordinate_transformation_mode": "asymmetric",
                "nearest_mode": "floor",
            },
            True,
        ),
        ({"mode": "cubic"}, False),
        ({"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize"}, False),
        ({"mode": "linear", "antialias": 1}, False),
    ],
)
def test_resize_modes(attrs, ok) -> None:
    x = helper.make_tensor_value_info("x", F, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", F, [1, 3, 16, 16])
    scales = numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], name="up", **attrs)
    found = check_tensorrt_onnx(_model([node], [x], [y], [scales], opset=19))
    assert (found == []) is ok, found


def test_outputs_tensorrt_cannot_produce() -> None:
    x = helper.make_tensor_value_info("x", F, [4])
    y = helper.make_tensor_value_info("y", TensorProto.DOUBLE, [4])
    m = _model([helper.make_node("Cast", ["x"], ["y"], to=TensorProto.DOUBLE)], [x], [y])
    assert [v.rule for v in check_tensorrt_onnx(m)] == ["output-type"]
