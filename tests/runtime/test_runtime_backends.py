"""ONNX Runtime and torch backends agree, whatever form the model's output takes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core.errors import SegkdError
from runtime.loader import open_segmenter
from runtime.segmenter import Segmenter
from tests.runtime.rt_models import INPUT_SIZE, LABELS, PREPROCESS, sample_frames


def test_onnxruntime_and_torch_give_identical_labels(model_dir: Path, torch_loader: Any) -> None:
    ort_seg = open_segmenter(model_dir / "model.onnx", device="cpu")
    torch_seg = open_segmenter(model_dir / "model.pt", torch_model_loader=torch_loader)
    assert (ort_seg.backend_name, torch_seg.backend_name) == ("onnxruntime", "torch")
    assert ort_seg.provider == "CPUExecutionProvider" and ort_seg.device == "CPU"
    assert torch_seg.device == "CPU" and torch_seg.provider.startswith("torch ")
    assert ort_seg.labels == torch_seg.labels == LABELS
    assert ort_seg.preprocess == torch_seg.preprocess == PREPROCESS
    frames = sample_frames()
    for frame in frames:
        a, b = ort_seg.predict(frame), torch_seg.predict(frame)
        assert a.shape == frame.shape[:2] and a.dtype == np.uint8
        np.testing.assert_array_equal(a, b)
    # The frames must exercise more than one class, or agreement would prove little.
    assert len(np.unique(np.concatenate([ort_seg.predict(f).ravel() for f in frames]))) > 1
    # A batch through infer() equals frame-by-frame prediction.
    batch, _ = ort_seg.preprocess_frames(frames)
    assert ort_seg.infer(batch).shape == (len(frames), *INPUT_SIZE)
    np.testing.assert_array_equal(ort_seg.infer(batch), torch_seg.infer(batch))


@pytest.mark.parametrize("name", ["model.labels.onnx", "model.int64.onnx"])
def test_argmax_in_graph_outputs_read_with_their_dtype(model_dir: Path, name: str) -> None:
    logits_seg = open_segmenter(model_dir / "model.onnx")
    labels_seg = open_segmenter(model_dir / name)
    assert labels_seg.meta.output == "labels"
    for frame in sample_frames():
        np.testing.assert_array_equal(labels_seg.predict(frame), logits_seg.predict(frame))


def test_timings_and_out_size(model_dir: Path) -> None:
    seg = open_segmenter(model_dir / "model.onnx", intra_op_threads=1, graph_optimization="basic")
    t: dict[str, float] = {}
    frame = sample_frames(1)[0]
    out = seg.predict(frame, timings=t, out_size=(24, 40))
    assert out.shape == (24, 40)
    assert set(t) == {"preprocess", "infer", "postprocess"} and all(v >= 0 for v in t.values())


def test_dynamic_model_runs_at_another_input_size(model_dir: Path) -> None:
    # The legacy export fixes H and W; the batch axis is dynamic.
    seg = open_segmenter(model_dir / "model.onnx")
    assert seg.fixed_batch is None and seg.input_size == INPUT_SIZE
    with pytest.raises(SegkdError, match="fixed at 64x64"):
        open_segmenter(model_dir / "model.onnx", input_size=(32, 32))
    torch_seg = open_segmenter(
        model_dir / "model.pt", torch_model_loader=lambda p, d: _loader(p, d), input_size=(32, 48)
    )
    assert torch_seg.predict(sample_frames(1)[0]).shape == (48, 80)


def _loader(path: Path, device: str) -> tuple[Any, dict[str, Any]]:
    import torch

    from tests.runtime.rt_models import make_tiny_net

    net = make_tiny_net(0)
    net.load_state_dict(torch.load(path, weights_only=True))
    return net, {"arch": "tinyseg", "labels": LABELS.to_dict(), "preprocess": PREPROCESS.to_dict()}


def test_not_a_model_onnx_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"this is not a protobuf \x00\x01\x02")
    with pytest.raises(SegkdError, match="cannot load ONNX model") as e:
        open_segmenter(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_onnx_without_metadata_is_refused_with_its_path(model_dir: Path) -> None:
    with pytest.raises(SegkdError, match="no segkd metadata") as e:
        open_segmenter(model_dir / "plain.onnx")
    assert str(model_dir / "plain.onnx") in str(e.value)


def test_sidecar_json_supplies_metadata_for_a_plain_onnx(model_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from tests.runtime.rt_models import segkd_meta

    plain = tmp_path / "plain.onnx"
    shutil.copy(model_dir / "plain.onnx", plain)
    (tmp_path / "plain.onnx.json").write_text(json.dumps(segkd_meta("logits")))
    seg = open_segmenter(plain)
    assert isinstance(seg, Segmenter) and seg.labels == LABELS


def test_pt_without_loader_and_wrong_backend(model_dir: Path, torch_loader: Any) -> None:
    with pytest.raises(SegkdError, match="training package") as e:
        open_segmenter(model_dir / "model.pt")
    assert str(model_dir / "model.pt") in str(e.value)
    with pytest.raises(SegkdError, match="runs on the torch backend"):
        open_segmenter(
            model_dir / "model.pt", backend="onnxruntime", torch_model_loader=torch_loader
        )
    with pytest.raises(SegkdError, match="build one with"):
        open_segmenter(model_dir / "model.onnx", backend="tensorrt")


def test_device_and_option_errors(model_dir: Path) -> None:
    with pytest.raises(SegkdError, match="--device 'gpu'"):
        open_segmenter(model_dir / "model.onnx", device="gpu")
    with pytest.raises(SegkdError, match="unknown model option 'threads'"):
        open_segmenter(model_dir / "model.onnx", threads=2)
    with pytest.raises(SegkdError, match="--graph-optimization"):
        open_segmenter(model_dir / "model.onnx", graph_optimization="max")
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(SegkdError, match="no CUDAExecutionProvider"):
            open_segmenter(model_dir / "model.onnx", device="cuda")


def test_torch_backend_cuda_request_without_gpu(model_dir: Path, torch_loader: Any) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present; this checks the message on CPU-only machines")
    with pytest.raises(SegkdError, match="no CUDA GPU"):
        open_segmenter(model_dir / "model.pt", device="cuda", torch_model_loader=torch_loader)


def _fp16_qdq_concat(path: Path) -> np.ndarray:
    """float32 in -> fp16 -> two branches, each Q/DQ'd with one fp16 scale -> Concat ->
    Q/DQ -> float32 out (opset 19): the PSP-Concat pattern of the TensorRT INT8 file."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    scale = numpy_helper.from_array(np.array(0.05, dtype=np.float16), "s")
    zero = numpy_helper.from_array(np.array(0, dtype=np.int8), "z")
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float16), "two")
    nodes = [
        helper.make_node("Cast", ["input"], ["h"], to=TensorProto.FLOAT16),
        helper.make_node("Mul", ["h", "two"], ["h2"]),
        helper.make_node("QuantizeLinear", ["h", "s", "z"], ["qa"]),
        helper.make_node("DequantizeLinear", ["qa", "s", "z"], ["a"]),
        helper.make_node("QuantizeLinear", ["h2", "s", "z"], ["qb"]),
        helper.make_node("DequantizeLinear", ["qb", "s", "z"], ["b"]),
        helper.make_node("Concat", ["a", "b"], ["cat"], axis=1),
        helper.make_node("QuantizeLinear", ["cat", "s", "z"], ["qc"]),
        helper.make_node("DequantizeLinear", ["qc", "s", "z"], ["c"]),
        helper.make_node("Cast", ["c"], ["logits"], to=TensorProto.FLOAT),
    ]
    graph = helper.make_graph(
        nodes, "qdq16",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 6, 4, 4])],
        [scale, zero, two],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())
    x = np.random.default_rng(0).uniform(-2, 2, (1, 3, 4, 4)).astype(np.float32)
    return x


def test_fp16_qdq_graph_runs_on_the_onnxruntime_backend(tmp_path: Path) -> None:
    # onnxruntime's CPU QDQ fusion turns DQ->Concat->Q into QLinearConcat, which rejects
    # fp16 scales: a plain session cannot load the file, the runtime backend must.
    import onnxruntime as ort

    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    path = tmp_path / "qdq16.onnx"
    x = _fp16_qdq_concat(path)
    with pytest.raises(Exception, match="QLinearConcat"):
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    backend = OnnxRuntimeBackend(path, device="cpu")
    assert backend.qdq_fusion is False
    got = backend.run(x)
    h = x.astype(np.float16).astype(np.float32)
    want = np.concatenate([h, 2 * h], axis=1)
    want = np.clip(np.round(want / np.float32(np.float16(0.05))), -128, 127) * np.float16(0.05)
    assert np.allclose(got, want, atol=2e-3)


def test_onnxruntime_backend_runs_an_in_memory_variant_with_extra_outputs(
    model_dir: Path,
) -> None:
    # Export verification runs the shipped file with its logits exposed as a 2nd output.
    import onnx

    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    path = model_dir / "model.labels.onnx"
    model = onnx.load(str(path))
    first = model.graph.output[0].name
    (argmax,) = [n for n in model.graph.node if n.op_type == "ArgMax"]
    inner = argmax.input[0]  # the logits the in-graph ArgMax reads
    model.graph.output.append(
        onnx.helper.make_tensor_value_info(inner, onnx.TensorProto.FLOAT, None)
    )
    backend = OnnxRuntimeBackend(
        path, device="cpu", model_bytes=model.SerializeToString(), output_name=first
    )
    x = np.zeros((1, 3, *INPUT_SIZE), dtype=np.float32)
    got = backend.infer({backend.input_name: x}, [first, inner])
    out, extra = got[first], got[inner]
    assert np.array_equal(out, OnnxRuntimeBackend(path, device="cpu").run(x))
    assert extra.dtype == np.float32 and extra.shape[:2] == (1, 4)
    assert np.array_equal(out, extra.argmax(1).astype(out.dtype))


def test_any_fp16_qdq_graph_runs_unfused(tmp_path: Path) -> None:
    # Fusions that do load can still compute wrong labels with fp16 scales (a ModelOpt
    # file measured 86 % vs 99.4 % agreement), so every fp16 Q/DQ graph runs unfused, and
    # an fp32 Q/DQ graph keeps onnxruntime's fusion.
    from onnx import TensorProto, helper, numpy_helper

    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    for dtype, fused in ((np.float16, False), (np.float32, True)):
        elem = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
        nodes = [
            helper.make_node("Cast", ["input"], ["h"], to=elem),
            helper.make_node("QuantizeLinear", ["h", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
            helper.make_node("Cast", ["d"], ["out"], to=TensorProto.FLOAT),
        ]
        inits = [
            numpy_helper.from_array(np.array(0.1, dtype=dtype), "s"),
            numpy_helper.from_array(np.array(0, dtype=np.int8), "z"),
        ]
        graph = helper.make_graph(
            nodes, "qdq",
            [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 2, 2])],
            [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, 2, 2])],
            inits,
        )  # fmt: skip
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)], ir_version=9)
        path = tmp_path / f"{np.dtype(dtype).name}.onnx"
        path.write_bytes(model.SerializeToString())
        backend = OnnxRuntimeBackend(path, device="cpu")
        assert backend.qdq_fusion is fused, dtype
        x = np.full((1, 3, 2, 2), 0.26, dtype=np.float32)
        assert np.allclose(backend.run(x), 0.3, atol=1e-3)


def test_every_backend_is_a_runner_of_named_outputs(model_dir: Path, tiny_net: Any) -> None:
    """One contract (runtime/backends/base.py): named feed in, named outputs out; torch
    offers its logits as a second output, an ONNX logits graph as its main one."""
    from runtime.backends.base import Runner
    from runtime.backends.onnxruntime import OnnxRuntimeBackend
    from runtime.backends.torch import TorchBackend

    batch, _ = PREPROCESS.apply(sample_frames(1)[0])
    with (
        OnnxRuntimeBackend(model_dir / "model.onnx", device="cpu") as ort_runner,
        TorchBackend(tiny_net, device="cpu") as torch_runner,
    ):
        for r in (ort_runner, torch_runner):
            assert isinstance(r, Runner) and r.input_shape[1] == 3
            assert r.logits_output is not None
        (ort_logits,) = ort_runner.infer({ort_runner.input_name: batch}).values()
        got = torch_runner.infer({"input": batch})
        assert list(got) == ["labels", "logits"] and torch_runner.output_kind == "labels"
        np.testing.assert_allclose(got["logits"], ort_logits, atol=1e-4)
        np.testing.assert_array_equal(got["labels"], ort_logits.argmax(1))
        np.testing.assert_array_equal(torch_runner.run(batch), got["labels"])
        assert list(torch_runner.infer({"input": batch}, ["logits"])) == ["logits"]
        with pytest.raises(SegkdError, match="no output"):
            ort_runner.infer({ort_runner.input_name: batch}, ["labels"])
