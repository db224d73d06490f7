"""The edge frame path on a briefly trained DDRNet-23-slim at 64x128: uint8 pixels into
the graph (every precision), label maps at 1/8, and the runtime feeding them.

Every variant is scored against the float-input, logits-output artifact of the same
checkpoint, run the classic way (host normalisation; logits upsampled in the graph,
argmax on the host), on the synthetic val frames.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from core.metrics import ConfusionMatrix
from core.preprocess import PreprocessSpec
from distill.data import build_dataset
from export.api import export_checkpoint
from export.int8 import zero_point_violations
from export.int8_tensorrt import placement_summary
from runtime.bench import benchmark
from runtime.loader import folder_artifacts, open_segmenter
from tests.export.tiny_student import DATA, SIZE, train_tiny

GATES = {"fp32": 0.999, "fp16": 0.99, "int8": 0.90}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory):
    return train_tiny(tmp_path_factory.mktemp("edge") / "student.pt", "ddrnet23_slim", steps=60)


def _export(ckpt, tmp_path_factory, name: str, **kw):
    return export_checkpoint(
        ckpt,
        tmp_path_factory.mktemp(name),
        calib_data=DATA,
        calib_images=16,
        verify_images=6,
        build_engines=False,
        **kw,
    )


@pytest.fixture(scope="module")
def reference(ckpt, tmp_path_factory):
    return _export(
        ckpt, tmp_path_factory, "ref", precisions="fp32,int8", int8_variants="tensorrt",
        output="logits",
    )  # fmt: skip


@pytest.fixture(scope="module")
def pixels(ckpt, tmp_path_factory):
    return _export(ckpt, tmp_path_factory, "u8", input_dtype="uint8")


@pytest.fixture(scope="module")
def lowres(ckpt, tmp_path_factory):
    return _export(
        ckpt, tmp_path_factory, "u8low", precisions="fp32", input_dtype="uint8",
        output="labels-lowres",
    )  # fmt: skip


@pytest.fixture(scope="module")
def frames():
    """(BGR frame, ground truth) of every synthetic val image: the camera's view."""
    ds = build_dataset(DATA, "val")
    return [(np.ascontiguousarray(img[:, :, ::-1]), mask) for img, mask in ds]


def _labels(path, frames):
    with open_segmenter(path) as seg:
        return [seg.predict(frame) for frame, _ in frames]


def _score(pred, ref, frames, k=19):
    same = sum(int((p == r).sum()) for p, r in zip(pred, ref, strict=True))
    total = sum(p.size for p in pred)
    gt_p, gt_r = ConfusionMatrix(k), ConfusionMatrix(k)
    for p, r, (_, mask) in zip(pred, ref, frames, strict=True):
        gt_p.update(p, mask)
        gt_r.update(r, mask)
    return same / total, gt_p.summary().miou, gt_r.summary().miou


def test_uint8_input_in_every_precision_agrees_with_the_float_logits_artifact(
    reference, pixels, frames
) -> None:
    ref = _labels(reference.out_dir / "model.onnx", frames)
    files = {a["file"]: a for a in pixels.artifacts}
    assert set(files) == {"model.onnx", "model.fp16.onnx", "model.int8.onnx", "model.int8-cpu.onnx"}
    for name, art in files.items():
        agree, miou, ref_miou = _score(_labels(pixels.out_dir / name, frames), ref, frames)
        assert agree >= GATES[art["precision"]], (name, agree)
        if art["precision"] == "fp32":
            assert abs(miou - ref_miou) < 1e-3, (name, miou, ref_miou)
            # export's own check: the graph's normalisation against the host's float path
            assert art["parity"]["max_abs_logit_diff"] <= 1e-3 * art["parity"]["max_abs_logit"]


def test_metadata_records_the_uint8_nhwc_input(pixels) -> None:
    manifest = json.loads((pixels.out_dir / "export.json").read_text())
    pre = manifest["preprocess"]
    assert (pre["dtype"], pre["layout"], pre["input_order"]) == ("uint8", "NHWC", "BGR")
    assert pre["color_order"] == "RGB"  # what the graph normalises into, inside
    assert manifest["options"]["input_dtype"] == "uint8"
    for art in manifest["artifacts"]:
        proto = onnx.load(str(pixels.out_dir / art["file"]))
        (inp,) = proto.graph.input
        assert inp.type.tensor_type.elem_type == onnx.TensorProto.UINT8, art["file"]
        assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, *SIZE, 3]
        embedded = json.loads({p.key: p.value for p in proto.metadata_props}["segkd"])
        assert PreprocessSpec.from_dict(embedded["preprocess"]) == PreprocessSpec.from_dict(pre)


def test_runtime_feeds_uint8_pixels_without_float_work(pixels, frames, monkeypatch) -> None:
    seg = open_segmenter(pixels.out_dir / "model.onnx")
    seen = []
    real_run = seg._backend.run

    def spy(batch):
        seen.append((batch.dtype, batch.shape))
        return real_run(batch)

    def no_float(*_a, **_k):
        raise AssertionError("the host normalised a frame for a uint8-input graph")

    monkeypatch.setattr(seg._backend, "run", spy)
    monkeypatch.setattr(PreprocessSpec, "normalize", no_float)
    big = np.ascontiguousarray(np.repeat(np.repeat(frames[0][0], 2, 0), 2, 1))  # 128x256
    out = seg.predict(big)
    assert out.shape == big.shape[:2] and out.dtype == np.uint8
    assert seen == [(np.dtype(np.uint8), (1, *SIZE, 3))]
    # the resize into the batch is the one the float path makes: same pixels
    direct, _ = seg.preprocess_frames([big])
    resized, _ = seg.preprocess.resize_frame(big)
    assert np.array_equal(direct[0], resized)


def test_tensorrt_int8_with_uint8_input_keeps_its_placement(reference, pixels) -> None:
    """The TensorRT-bound file still passes the structural checks: symmetric int8 Q/DQ,
    fp16 everywhere else at opset 19, the Q/DQ placement of the float-input file; the
    uint8 input goes Cast(fp16) -> Transpose (TensorRT takes UINT8 only into a Cast)."""
    proto = onnx.load(str(pixels.out_dir / "model.int8.onnx"))
    assert zero_point_violations(proto) == []
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    fp32 = [v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == 1]
    assert fp32 == []
    (graph_in,) = proto.graph.input
    nodes = list(proto.graph.node)
    (cast,) = [n for n in nodes if graph_in.name in n.input]
    assert cast.op_type == "Cast" and cast.attribute[0].i == onnx.TensorProto.FLOAT16
    (transpose,) = [n for n in nodes if cast.output[0] in n.input]
    assert transpose.op_type == "Transpose"
    summary = placement_summary(proto)
    float_input = placement_summary(onnx.load(str(reference.out_dir / "model.int8.onnx")))
    assert summary["residual_adds"] > 0 and summary["quantized_convs"] > 0
    for key in ("quantized_convs", "float_convs", "residual_adds",
                "residual_adds_quantized_shortcut", "concats", "concats_one_scale"):  # fmt: skip
        assert summary[key] == float_input[key], key
    assert summary["fp32_tensors"] == 0
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {19}


def test_lowres_labels_cost_and_runtime(reference, lowres, frames) -> None:
    art = lowres.artifact("model.onnx")
    proto = onnx.load(str(lowres.out_dir / "model.onnx"))
    ops = [n.op_type for n in proto.graph.node]
    assert ops[-3:] == ["ArgMax", "Cast", "Cast"] and "Resize" not in ops[-4:]
    dims = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, SIZE[0] // 8, SIZE[1] // 8]
    # exact against the same computation in PyTorch; its cost against full-size labels
    assert art["parity"]["pixel_agreement"] >= 0.999
    cost = art["parity"]["pixel_agreement_vs_full_res"]
    assert 0.5 < cost < 1.0
    ref = _labels(reference.out_dir / "model.onnx", frames)
    pred = _labels(lowres.out_dir / "model.onnx", frames)
    agree, miou, ref_miou = _score(pred, ref, frames)
    # a 1/8 map of a 64x128 input is 8x16 cells: every edge costs; measured, not hidden
    assert 0.8 < agree < 1.0 and abs(miou - ref_miou) < 0.05, (agree, miou, ref_miou)


def test_bench_reports_the_split_for_every_variant(pixels, lowres) -> None:
    paths = folder_artifacts(pixels.out_dir) + folder_artifacts(lowres.out_dir)
    assert len(paths) == 5
    for path in paths:
        with open_segmenter(path) as seg:
            res = benchmark(seg, frame_size=(128, 256), iters=3, warmup=1)
        d = res.to_dict()
        assert d["input_kind"] == "uint8 NHWC" and d["output_kind"] in ("labels", "labels-lowres")
        assert d["variant"] in ("portable", "tensorrt", "cpu")
        for stage in ("preprocess", "inference", "postprocess"):
            assert d[stage]["mean_ms"] > 0
        assert 0 < d["host_share"] < 1


def test_label_stride_trades_cost_for_agreement(ckpt, lowres, tmp_path_factory) -> None:
    """--label-stride 4: logits resized to 1/4 in the graph, then the argmax: exact against
    PyTorch doing the same, and closer to the full-size labels than the argmax at 1/8."""
    report = _export(
        ckpt, tmp_path_factory, "u8low4", precisions="fp32", input_dtype="uint8",
        output="labels-lowres", label_stride=4,
    )  # fmt: skip
    proto = onnx.load(str(report.out_dir / "model.onnx"))
    dims = [d.dim_value for d in proto.graph.output[0].type.tensor_type.shape.dim]
    assert dims == [1, SIZE[0] // 4, SIZE[1] // 4]
    assert report.manifest["options"]["label_stride"] == 4
    parity = report.artifact("model.onnx")["parity"]
    assert parity["pixel_agreement"] >= 0.999
    at8 = lowres.artifact("model.onnx")["parity"]["pixel_agreement_vs_full_res"]
    assert at8 < parity["pixel_agreement_vs_full_res"] < 1.0


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"output": "labels-lowres", "label_stride": 1}, "--label-stride"),
        ({"output": "labels-lowres", "label_stride": 16}, "--label-stride"),
        ({"output": "labels", "label_stride": 4}, "--label-stride"),
        ({"input_dtype": "float16"}, "--input-dtype"),
        ({"output": "scores"}, "--output"),
    ],
)
def test_bad_edge_options(ckpt, tmp_path, kwargs, culprit) -> None:
    from core.errors import SegkdError

    with pytest.raises(SegkdError, match=culprit):
        export_checkpoint(ckpt, tmp_path / "out", precisions="fp32", **kwargs)
