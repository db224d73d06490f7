"""Quantization-aware distillation (issue 24): placement, learned-scale export, bad input.

One briefly trained DDRNet-23-slim (it has every op kind of the real-time students: stand-
alone BatchNorm, fixed pooling, the pyramid Concat, residual Adds) goes through `segkd qat`
and `segkd export` of the result, beside a PTQ export of the same checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

from core.errors import SegkdError
from core.preprocess import PreprocessSpec
from distill.checkpoint import load_checkpoint
from distill.qat.checkpoint import point_key
from distill.qat.deploy import qat_graph
from distill.qat.fake_quant import fake_quant_activation, fake_quant_weight
from distill.qat.graph_module import QuantGraph
from distill.qat.placement import read_placement, scale_values
from distill.qat.stage import run_qat
from distill.qat.train import QatOptions
from export.api import Tolerances, export_checkpoint
from export.calibration import SampledSplit, prepare
from export.int8 import zero_point_violations
from export.int8_tensorrt import placement_summary
from tests.export.tiny_student import DATA, SIZE, train_tiny

ANY = Tolerances(int8_min_agreement=0.0)  # a 40-step student: the figures are not the point


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("qat")
    ckpt = train_tiny(d / "student.pt", "ddrnet23_slim", steps=40)
    # lr 1e-3: weights must move past a rounding step, so the test sees them in the file
    opts = QatOptions(steps=3, lr=1e-3, scale_lr=1e-2)
    run_qat(ckpt, d / "qat", data=DATA, calib_images=4, train_images=4, opts=opts)
    common = dict(precisions="fp32,int8", calib_data=DATA, verify_images=2, build_engines=False,
                  tolerances=ANY)  # fmt: skip
    export_checkpoint(d / "qat" / "qat.pt", d / "qat_export", **common)
    export_checkpoint(ckpt, d / "ptq_export", calib_images=4, **common)
    return d


def _load(d: Path, name: str) -> onnx.ModelProto:
    return onnx.load(str(d / name / "model.int8.onnx"))


def test_fake_quant_placement_equals_the_exported_qdq_placement(runs) -> None:
    qat = load_checkpoint(runs / "qat" / "qat.pt")["qat"]
    exported = read_placement(_load(runs, "qat_export"))
    # what the fake-quant model really applies in a forward pass, node input by node input
    graph = qat_graph(onnx.load(str(runs / "qat_export" / "model.onnx")), qat)
    model = QuantGraph(graph, exported, scale_values(_load(runs, "qat_export"), exported))
    model.trace = set()
    with torch.no_grad():
        model(torch.zeros(1, 3, *SIZE))
    applied_acts = {k for k in model.trace if k not in {(c, 1) for c in exported.weights}}
    assert applied_acts == {(p.node, p.slot) for p in exported.activations}
    assert {c for c, s in model.trace if s == 1 and c in exported.weights} == set(exported.weights)
    # ... and what the QAT checkpoint trained is that placement, and the PTQ file's
    assert set(qat["scales"]) == {point_key(p) for p in exported.activations}
    assert set(qat["weight_quantized_convs"]) == set(exported.weights)
    assert read_placement(_load(runs, "ptq_export")).key() == exported.key()
    kinds = {
        n.op_type for n in graph.graph.node if n.name in {p.node for p in exported.activations}
    }
    assert {"Conv", "Add", "Concat"} <= kinds  # residual shortcuts and the pyramid concat


def test_learned_scale_file_passes_the_int8_file_checks(runs) -> None:
    qat_file, ptq_file = _load(runs, "qat_export"), _load(runs, "ptq_export")
    assert placement_summary(qat_file) == placement_summary(ptq_file)
    assert placement_summary(qat_file)["high_precision"] == "fp16"
    assert zero_point_violations(qat_file) == []
    manifest = (runs / "qat_export" / "export.json").read_text()
    assert "no images read here" in manifest  # no calibration pass was made


def test_file_holds_the_learned_scales_and_weights(runs) -> None:
    qat = load_checkpoint(runs / "qat" / "qat.pt")["qat"]
    model = _load(runs, "qat_export")
    placement = read_placement(model)
    stored = scale_values(model, placement)
    ptq = scale_values(_load(runs, "ptq_export"), read_placement(_load(runs, "ptq_export")))
    for p in placement.activations:
        assert stored[p.group] == pytest.approx(qat["scales"][point_key(p)], rel=1e-3)
    assert any(stored[g] != pytest.approx(ptq[g], rel=1e-3) for g in stored)  # training moved them
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    graph = qat_graph(onnx.load(str(runs / "qat_export" / "model.onnx")), qat)
    trained = {n.name: n.input[1] for n in graph.graph.node if n.op_type == "Conv"}
    for conv in (n for n in model.graph.node if n.name in set(placement.weights)):
        dq = producer[conv.input[1]]
        codes, scale = inits[dq.input[0]], inits[dq.input[1]].astype(np.float32)
        in_file = codes.astype(np.float32) * scale.reshape(-1, 1, 1, 1)
        w = torch.from_numpy(np.asarray(qat["weights"][trained[conv.name]]))
        diff = np.abs(in_file - fake_quant_weight(w).numpy())
        step = scale.reshape(-1, 1, 1, 1)
        assert np.all(diff <= step * 1.01)  # a tie may round the other way, never further
        assert np.mean(diff <= step * 1e-2) > 0.999


def test_exported_file_matches_fake_quant_within_one_step(runs) -> None:
    """ORT on the learned-scale file: every Q->DQ output is the fake quantizer's output of the
    same input, to one rounding step (fp16 arithmetic flips a few exact ties)."""
    model = _load(runs, "qat_export")
    placement = read_placement(model)
    scales = scale_values(model, placement)
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    pairs = {}  # dq output -> (q input, scale group)
    for node in model.graph.node:
        for name in node.input:
            dq = producer.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in producer:
                pairs[name] = (producer[dq.input[0]].input[0], dq.input[1])
    inferred = {v.name: v.type.tensor_type.elem_type
                for v in onnx.shape_inference.infer_shapes(model).graph.value_info}  # fmt: skip
    float32 = onnx.TensorProto.FLOAT
    names = sorted({t for pair in pairs.items() for t in (pair[0], pair[1][0])})
    for t in names:
        probe.graph.output.append(
            onnx.helper.make_tensor_value_info(t, inferred.get(t, float32), None)
        )
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep the Q/DQ
    session = ort.InferenceSession(
        probe.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )
    x = prepare([next(iter(SampledSplit(DATA, "val", 1)))], PreprocessSpec(input_size=SIZE))[0].x
    values = dict(
        zip([o.name for o in probe.graph.output], session.run(None, {"input": x}), strict=True)
    )
    exact = total = 0
    for dq_out, (q_in, group) in pairs.items():
        s = scales[group]
        x_in = torch.from_numpy(values[q_in].astype(np.float32))
        want = fake_quant_activation(x_in, torch.tensor(s)).numpy()
        got = values[dq_out].astype(np.float32)
        assert np.abs(got - want).max() <= s * 1.01, dq_out
        # the same int8 code (the DQ output itself is rounded to fp16, ~0.06 step at 127)
        exact += int(np.sum(np.abs(got - want) < s * 0.5))
        total += got.size
    assert exact / total > 0.999


def test_cpu_file_of_a_qat_checkpoint_is_the_calibrated_one(runs) -> None:
    """The CPU file's placement is not the one QAT trained: it is the PTQ file, written from
    the ranges QAT's calibration stored (the same 4 images, seed 0) with the fp32 weights."""
    qat, ptq = (
        onnx.load(str(runs / d / "model.int8-cpu.onnx")) for d in ("qat_export", "ptq_export")
    )
    assert [(n.op_type, list(n.input)) for n in qat.graph.node] == [
        (n.op_type, list(n.input)) for n in ptq.graph.node
    ]
    values = {i.name: numpy_helper.to_array(i) for i in ptq.graph.initializer}
    for init in qat.graph.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(init), values[init.name])
    import json

    methods = {a["file"]: a["quantization"]["method"]
               for a in json.loads((runs / "qat_export" / "export.json").read_text())["artifacts"]
               if "quantization" in a}  # fmt: skip
    assert methods == {
        "model.int8.onnx": "qat",
        "model.int8-cpu.onnx": "minmax (the QAT calibration)",
    }


def test_qat_on_crops_exports_at_the_deploy_size(runs, tmp_path) -> None:
    """Training on 32x64 crops of the 64x128 images: the same names, the deploy geometry."""
    opts = QatOptions(steps=2, lr=1e-3, scale_lr=1e-2, crop_size=(32, 64))
    summary = run_qat(runs / "student.pt", tmp_path / "q", data=DATA, calib_images=4,
                      train_images=4, opts=opts)  # fmt: skip
    assert summary["input_size"] == [64, 128]
    assert summary["training"]["options"]["crop_size"] == (32, 64)
    qat = load_checkpoint(tmp_path / "q" / "qat.pt")["qat"]
    assert qat["export"]["input_size"] == [64, 128]
    m = export_checkpoint(tmp_path / "q" / "qat.pt", tmp_path / "e", precisions="fp32,int8",
                          calib_data=DATA, verify_images=2, build_engines=False, tolerances=ANY)  # fmt: skip
    assert (
        read_placement(onnx.load(str(tmp_path / "e" / "model.int8.onnx"))).key()
        == read_placement(_load(runs, "ptq_export")).key()
    )
    assert m.manifest["artifacts"]
    with pytest.raises(SegkdError, match="larger than the input size"):
        run_qat(runs / "student.pt", tmp_path / "big", data=DATA,
                opts=QatOptions(steps=1, crop_size=(128, 128)))  # fmt: skip


def test_teacher_joins_the_loop_only_with_a_weight(runs, tmp_path) -> None:
    """A second, barely trained student as the teacher: its KD term adds to the loss."""
    import json

    teacher = train_tiny(tmp_path / "teacher.pt", "ddrnet23_slim", steps=2)
    opts = QatOptions(steps=3, lr=1e-3, scale_lr=1e-2, teacher_weight=1.0)
    summary = run_qat(runs / "student.pt", tmp_path / "q", data=DATA, calib_images=4,
                      train_images=4, opts=opts, teacher=teacher)  # fmt: skip
    alone = json.loads((runs / "qat" / "qat.json").read_text())["training"]
    assert summary["training"]["teacher"] == str(teacher)
    assert summary["training"]["loss_first"] > alone["loss_first"]  # the same first batches
    with pytest.raises(SegkdError, match="needs a --teacher"):
        run_qat(runs / "student.pt", tmp_path / "a", data=DATA, opts=opts)
    with pytest.raises(SegkdError, match="--teacher-weight is 0"):
        run_qat(runs / "student.pt", tmp_path / "b", data=DATA, opts=QatOptions(steps=1),
                teacher=teacher)  # fmt: skip


def test_crop_graph_must_be_the_deploy_graph(runs) -> None:
    from distill.qat.structure import same_graph

    deploy = onnx.load(str(runs / "qat_export" / "model.onnx"))
    other = onnx.ModelProto()
    other.CopyFrom(deploy)
    assert same_graph(deploy, other, "x") is other
    other.graph.node[3].input[0] = other.graph.node[1].output[0]
    with pytest.raises(SegkdError, match="not the deploy graph at another size"):
        same_graph(deploy, other, "--crop-size 32x64")


def test_qat_refuses_a_qat_checkpoint_and_export_refuses_other_geometry(runs, tmp_path) -> None:
    with pytest.raises(SegkdError, match="already a QAT checkpoint"):
        run_qat(runs / "qat" / "qat.pt", tmp_path / "again", data=DATA, opts=QatOptions(steps=1))
    with pytest.raises(SegkdError, match="QAT was done at input size 64x128"):
        export_checkpoint(runs / "qat" / "qat.pt", tmp_path / "e", input_size="96x160",
                          calib_data=DATA, build_engines=False)  # fmt: skip
    with pytest.raises(SegkdError, match="static shapes only"):
        export_checkpoint(runs / "qat" / "qat.pt", tmp_path / "e", dynamic=True,
                          calib_data=DATA, build_engines=False)  # fmt: skip


def test_report_section_sets_ptq_beside_qat(runs) -> None:
    import json

    from distill.qat.report import comparison, markdown

    def read(name: str) -> dict:
        return json.loads((runs / name).read_text())

    section = comparison(read("ptq_export/export.json"), read("qat_export/export.json"),
                         read("qat/qat.json"), distill_seconds=None)  # fmt: skip
    assert set(section["ptq"]) == set(section["qat"]) == {"model.int8.onnx", "model.int8-cpu.onnx"}
    assert section["steps"] == 3
    text = "\n".join(markdown(section))
    assert "| TensorRT INT8 |" in text and "| CPU INT8 |" in text and "3 steps" in text


def test_cosine_schedule_decays_the_rates_the_steps_used(runs, tmp_path) -> None:
    """The rates are read off the optimizers at each step: cosine from the given rate at the
    first step towards 0 (0.5 * (1 + cos(pi * 3/4)) of it at the 4th of 4); constant stays."""
    import math

    rates = {}
    for schedule in ("constant", "cosine"):
        opts = QatOptions(steps=4, lr=1e-3, scale_lr=1e-2, schedule=schedule)
        summary = run_qat(runs / "student.pt", tmp_path / schedule, data=DATA, calib_images=4,
                          train_images=4, opts=opts)  # fmt: skip
        rates[schedule] = summary["training"]["learning_rates"]
    assert rates["constant"] == {"weights": [1e-3, 1e-3], "scales": [1e-2, 1e-2]}
    last = 0.5 * (1 + math.cos(math.pi * 3 / 4))
    assert rates["cosine"]["weights"] == pytest.approx([1e-3, 1e-3 * last])
    assert rates["cosine"]["scales"] == pytest.approx([1e-2, 1e-2 * last])


@pytest.mark.parametrize(
    ("field", "value", "flag"),
    [("schedule", "linear", "--schedule"), ("lr", float("nan"), "--lr"), ("lr", 0.0, "--lr"),
     ("scale_lr", -1e-3, "--scale-lr"), ("steps", 0, "--steps"), ("batch_size", True, "--batch-size"),
     ("teacher_weight", float("inf"), "--teacher-weight")],
)  # fmt: skip
def test_options_no_run_can_use_are_refused_by_name(field: str, value: object, flag: str) -> None:
    with pytest.raises(SegkdError, match=flag):
        QatOptions(**{field: value})


def test_options_come_from_a_command_or_config_section_as_declared() -> None:
    """from_options takes the dataclass's fields from a mapping that holds others too (the
    pipeline's qat section has train_images; the command has data, teacher...)."""
    section = {"steps": 7, "batch_size": 3, "crop_size": "32x64", "train_images": 64,
               "lr": 2e-4, "scale_lr": 1e-3, "schedule": "cosine", "learn_scales": False,
               "teacher_weight": 0.0}  # fmt: skip
    opts = QatOptions.from_options(section, crop_size=(32, 64), seed=5)
    assert (opts.steps, opts.batch_size, opts.crop_size, opts.schedule, opts.seed) == (
        7, 3, (32, 64), "cosine", 5
    )  # fmt: skip
    assert not opts.learn_scales and opts.lr == 2e-4
