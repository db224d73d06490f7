"""The TensorRT INT8 rewrite on a hand-built residual block: shortcut rule, fp16, overflow."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from export.int8 import zero_point_violations
from export.int8_tensorrt import FP16_SAFE_ABS, mixed_precision_graph, placement_summary


def _qdq(x: str, scale: float, tag: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    inits = [
        numpy_helper.from_array(np.array(scale, dtype=np.float32), f"{tag}_s"),
        numpy_helper.from_array(np.array(0, dtype=np.int8), f"{tag}_z"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", [x, f"{tag}_s", f"{tag}_z"], [f"{tag}_q"]),
        helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_s", f"{tag}_z"], [f"{tag}_dq"]),
    ]
    return nodes, inits


def _weight(tag: str, cin: int, cout: int, k: int, rng: np.random.Generator) -> tuple:
    w = rng.integers(-127, 128, (cout, cin, k, k)).astype(np.int8)
    inits = [
        numpy_helper.from_array(w, f"{tag}_w"),
        numpy_helper.from_array(np.full(cout, 0.01, dtype=np.float32), f"{tag}_ws"),
        numpy_helper.from_array(np.zeros(cout, dtype=np.int8), f"{tag}_wz"),
    ]
    node = helper.make_node(
        "DequantizeLinear", [f"{tag}_w", f"{tag}_ws", f"{tag}_wz"], [f"{tag}_wdq"], axis=0
    )
    return [node], inits


def _downsampling_block() -> onnx.ModelProto:
    """x -> conv1 -> relu -> conv2 (main) + 1x1 stride-2 conv (shortcut) -> Add -> relu,
    as onnxruntime's Conv-only Q/DQ leaves it: both Add inputs raw conv outputs."""
    rng = np.random.default_rng(0)
    nodes, inits = _qdq("x", 0.02, "x")
    for tag, cin, k in (("c1", 3, 3), ("c2", 4, 3), ("ds", 3, 1)):
        n, i = _weight(tag, cin, 4, k, rng)
        nodes += n
        inits += i
    nodes.append(helper.make_node("Conv", ["x_dq", "c1_wdq"], ["c1"], pads=[1] * 4, strides=[2, 2]))
    nodes.append(helper.make_node("Relu", ["c1"], ["r1"]))
    n, i = _qdq("r1", 0.05, "r1")
    nodes += n
    inits += i
    nodes.append(helper.make_node("Conv", ["r1_dq", "c2_wdq"], ["c2"], pads=[1] * 4))
    nodes.append(helper.make_node("Conv", ["x_dq", "ds_wdq"], ["ds"], strides=[2, 2]))
    nodes.append(helper.make_node("Add", ["c2", "ds"], ["sum"]))
    nodes.append(helper.make_node("Relu", ["sum"], ["y"]))
    graph = helper.make_graph(
        nodes, "block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4, 4])],
        inits,
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


RANGES = {"x": (-2.5, 2.5), "r1": (0.0, 6.0), "c2": (-5.0, 5.0), "ds": (-3.0, 4.0)}


def test_downsampling_shortcut_is_quantized_and_the_rest_is_fp16() -> None:
    out = mixed_precision_graph(_downsampling_block(), RANGES)
    producers = {o: n for n in out.graph.node for o in n.output}
    (add,) = [n for n in out.graph.node if n.op_type == "Add"]
    kinds = [producers[t].op_type for t in add.input]
    assert sorted(kinds) == ["Conv", "DequantizeLinear"]  # conv2 raw, shortcut dequantized
    dq = producers[add.input[kinds.index("DequantizeLinear")]]
    q = producers[dq.input[0]]
    assert q.op_type == "QuantizeLinear" and q.input[0] == "ds"  # the 1x1 conv's output
    scale = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}[q.input[1]]
    assert scale.dtype == np.float16 and np.isclose(float(scale), 4.0 / 127, rtol=1e-3)
    summary = placement_summary(out)
    assert summary["high_precision"] == "fp16" and summary["opset"] == 19
    assert summary["fp32_tensors"] == 0 and summary["residual_adds_quantized_shortcut"] == 1
    assert zero_point_violations(out) == []
    assert out.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert out.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    onnx.checker.check_model(out, full_check=True)


def test_activations_beyond_fp16_keep_the_graph_fp32() -> None:
    ranges = {**RANGES, "ds": (0.0, 2 * FP16_SAFE_ABS)}
    out = mixed_precision_graph(_downsampling_block(), ranges)
    summary = placement_summary(out)
    assert summary["high_precision"] == "fp32" and summary["fp16_tensors"] == 0
    assert summary["opset"] == 17 and summary["residual_adds_quantized_shortcut"] == 1
