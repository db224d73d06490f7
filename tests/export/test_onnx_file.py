"""The ONNX file contract on a hand-built graph: IR cap, opset pruning, metadata, atomic save."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from core.errors import SegkdError
from export.onnx_file import (
    MAX_IR_VERSION,
    MAX_OPSET,
    finalize,
    io_signature,
    save_onnx,
    set_metadata,
)


def _relu_model(opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 4, 4])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 3, 4, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["out"])], "g", [x], [y])
    model = helper.make_model(
        graph,
        opset_imports=[
            helper.make_opsetid("", opset),
            helper.make_opsetid("com.microsoft.nchwc", 1),  # declared, never used
        ],
    )
    model.ir_version = 14  # what onnx 1.23's helpers write
    return model


def test_the_caps_are_those_of_the_oldest_supported_runtimes() -> None:
    # TensorRT 10.3 on JetPack 6 parses with ONNX 1.16: IR 10, opset <= 20. These are
    # facts about the deployment floor, fixed whatever onnxruntime is installed here.
    assert (MAX_IR_VERSION, MAX_OPSET) == (10, 20)


def test_finalize_caps_ir_and_loads_in_onnxruntime(tmp_path: Path) -> None:
    model = _relu_model()
    finalize(model, "relu.onnx")
    assert model.ir_version == MAX_IR_VERSION
    assert [(i.domain, i.version) for i in model.opset_import] == [("", 17)]
    set_metadata(model, {"precision": "fp32"})
    set_metadata(model, {"precision": "fp16"})  # replaces, never duplicates
    path = save_onnx(model, tmp_path / "relu.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["relu.onnx"]  # no temp file left
    loaded = onnx.load(str(path))
    props = [(p.key, p.value) for p in loaded.metadata_props]
    assert props == [("segkd", json.dumps({"precision": "fp16"}))]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.array([-1.0, 2.0], dtype=np.float32).repeat(24).reshape(1, 3, 4, 4)
    np.testing.assert_array_equal(sess.run(None, {"input": x})[0], np.maximum(x, 0))
    inputs, outputs = io_signature(loaded)
    assert inputs == [{"name": "input", "shape": ["batch", 3, 4, 4], "dtype": "float32"}]
    assert outputs[0]["name"] == "out"


@pytest.mark.parametrize("ir", [3, 8, MAX_IR_VERSION])
def test_finalize_keeps_an_older_ir_version(ir: int) -> None:
    model = _relu_model()
    model.ir_version = ir
    assert finalize(model, "old.onnx").ir_version == ir


def test_finalize_refuses_an_opset_tensorrt_10_3_cannot_parse() -> None:
    model = _relu_model(opset=MAX_OPSET + 1)
    with pytest.raises(SegkdError, match=r"new\.onnx: opset 21 .*TensorRT 10\.3"):
        finalize(model, "new.onnx")
    assert finalize(_relu_model(opset=MAX_OPSET), "ok.onnx").opset_import[0].version == MAX_OPSET


def test_finalize_rejects_a_broken_graph() -> None:
    model = _relu_model()
    model.graph.node[0].input[0] = "nowhere"
    with pytest.raises(SegkdError, match=r"broken\.onnx"):
        finalize(model, "broken.onnx")
