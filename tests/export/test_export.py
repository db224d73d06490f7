"""Export stage on a briefly trained tiny PSPNet-R18: parity, Q/DQ rules, export.json, errors."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from core.errors import SegkdError
from core.preprocess import PreprocessSpec
from distill.checkpoint import load_model
from distill.data import build_dataset
from export.api import Tolerances, export_checkpoint, format_summary
from export.int8 import CPU_RECIPE, pooled_context_convs, zero_point_violations
from export.onnx_file import MAX_IR_VERSION
from runtime.backends.onnxruntime import OnnxRuntimeBackend
from runtime.backends.tensorrt_builder import engine_cache_key, tensorrt_unavailable_reason
from runtime.metadata import artifact_meta, parse_metadata_json, read_export_json, sha256_of
from tests.export.tiny_student import DATA, SIZE

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# Kernels chosen by ISA round floats differently, and after 100 SGD steps that is another
# model: on an AVX2 machine the INT8 agreement of the model trained here moved by up to a
# point. Training with kernels capped at AVX2 (which every x86-64 machine we use has) and
# one thread gives the same weights on every such machine, so the figures tests check
# are the ones measured in docs/BENCHMARKS.md.
SAME_KERNELS_ON_EVERY_X86 = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
    "OMP_NUM_THREADS": "1",
}


def train_tiny_reproducibly(path: Path) -> Path:
    """`train_tiny` in a child process whose kernels do not depend on the CPU's ISA."""
    env = dict(os.environ)
    if platform.machine() in ("x86_64", "AMD64"):
        env.update(SAME_KERNELS_ON_EVERY_X86)
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    code = (
        "import sys, torch; from pathlib import Path; torch.set_num_threads(1); "
        "from tests.export.tiny_student import train_tiny; train_tiny(Path(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env, cwd=root)
    return path


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_reproducibly(tmp_path_factory.mktemp("ckpt") / "student.pt")


@pytest.fixture(scope="module")
def full(ckpt: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("export")
    report = export_checkpoint(
        ckpt, out, calib_data=DATA, calib_images=32, verify_images=6, int8_method="minmax"
    )
    return report


def _val_inputs(pre: PreprocessSpec, n: int = 6) -> tuple[np.ndarray, list[np.ndarray]]:
    ds = build_dataset(DATA, "val")
    xs = [pre.apply(ds[i][0], input_order="RGB")[0] for i in range(n)]
    return np.concatenate(xs), [ds[i][1] for i in range(n)]


def _torch_logits(ckpt: Path, x: np.ndarray) -> np.ndarray:
    model, _ = load_model(ckpt)
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    """The file's first output, through the runtime's onnxruntime backend (what ships)."""
    return OnnxRuntimeBackend(path, device="cpu").run(x)


def test_fp32_labels_match_pytorch(full, ckpt: Path) -> None:
    x, _ = _val_inputs(PreprocessSpec(input_size=SIZE))
    ref = _torch_logits(ckpt, x).argmax(1)
    labels = np.concatenate(
        [_run(full.out_dir / "model.onnx", x[i : i + 1]) for i in range(len(x))]
    )
    assert labels.dtype == np.uint8 and labels.shape == ref.shape
    assert (labels == ref).mean() >= 0.999
    parity = full.artifact("model.onnx")["parity"]
    assert parity["max_abs_logit_diff"] <= 1e-4
    assert parity["images"] == 6 and parity["pixel_agreement"] >= 0.999


def test_opset_ir_single_file_and_metadata(full) -> None:
    files = sorted(p.name for p in full.out_dir.iterdir())
    assert files == sorted(
        [
            "export.json",
            "model.onnx",
            "model.fp16.onnx",
            "model.int8.onnx",
            "model.int8-cpu.onnx",
            "reference.npz",
        ]
    ), files  # single files: no .onnx.data, no staging leftovers
    for name in [f for f in files if f.endswith(".onnx")]:
        proto = onnx.load(str(full.out_dir / name))
        opset = {i.domain: i.version for i in proto.opset_import}
        # fp16 Q/DQ need opset 19 (export/int8_tensorrt.py); the rest keep --opset.
        assert opset.get("", opset.get("ai.onnx")) == (19 if name == "model.int8.onnx" else 17)
        assert proto.ir_version <= MAX_IR_VERSION  # TensorRT 10.3 / onnxruntime 1.18
        meta = {p.key: p.value for p in proto.metadata_props}
        parsed = parse_metadata_json(meta["segkd"], name)
        assert parsed.preprocess.input_size == SIZE
        assert parsed.output == "labels" and parsed.output_name == "labels"
        assert parsed.precision == full.artifact(name)["precision"]
        OnnxRuntimeBackend(full.out_dir / name, device="cpu")


def test_export_json_is_complete(full, ckpt: Path) -> None:
    d = read_export_json(full.out_dir)
    assert d["checkpoint"]["sha256"] == sha256_of(ckpt)
    assert d["preprocess"]["input_size"] == list(SIZE)
    assert d["labels"]["names"] == list(build_dataset(DATA, "val").labels.names)
    by_file = {a["file"]: a for a in d["artifacts"]}
    assert set(by_file) == {
        "model.onnx",
        "model.fp16.onnx",
        "model.int8.onnx",
        "model.int8-cpu.onnx",
    }
    for name, a in by_file.items():
        path = full.out_dir / name
        assert a["sha256"] == sha256_of(path) and a["size_bytes"] == path.stat().st_size
        assert a["inputs"] == [{"name": "input", "shape": [1, 3, *SIZE], "dtype": "float32"}]
        assert a["outputs"] == [{"name": "labels", "shape": [1, *SIZE], "dtype": "uint8"}]
        assert a["opset"] == (19 if name == "model.int8.onnx" else 17)
        assert a["ir_version"] <= MAX_IR_VERSION
        meta = artifact_meta(d, a, full.manifest_path)
        assert meta.precision == a["precision"] and meta.input_name == "input"
        assert ("parity" in a) == (a["precision"] == "fp32")
    assert by_file["model.int8.onnx"]["variant"] == "tensorrt"
    assert by_file["model.int8-cpu.onnx"]["variant"] == "cpu"
    # Calibration and verification images come from different splits.
    assert d["calibration"]["split"] == "train" and d["verification"]["split"] == "val"
    assert d["calibration"]["images"] == 32 and d["verification"]["images"] == 6
    if tensorrt_unavailable_reason() is not None:
        assert [s["what"] for s in d["skipped"]] == ["tensorrt engines"]
        assert "tensorrt" in format_summary(full)
    summary = format_summary(full)
    assert all(name in summary for name in by_file)


def test_export_json_records_the_sampled_images(full) -> None:
    """Calibration images are a seeded draw from the whole train split, named in export.json."""
    d = read_export_json(full.out_dir)
    cal, ver = d["calibration"], d["verification"]
    train = build_dataset(DATA, "train")
    assert cal["seed"] == d["options"]["sample_seed"] == 0 and cal["split_size"] == len(train)
    assert len(set(cal["indices"])) == 32 and cal["indices"] != list(range(32))
    assert cal["ids"] == [train.sample_id(i) for i in cal["indices"]]
    assert ver["split"] == "val" and ver["indices"] == list(range(6))  # val=6: all of it


def _zero_points(proto: onnx.ModelProto) -> list[np.ndarray]:
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    out = []
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            assert len(node.input) == 3 and node.input[2] in inits, node.name
            out.append(inits[node.input[2]])
    return out


def test_tensorrt_int8_is_symmetric(full) -> None:
    proto = onnx.load(str(full.out_dir / "model.int8.onnx"))
    zps = _zero_points(proto)
    convs = sum(n.op_type == "Conv" for n in proto.graph.node)
    assert len(zps) >= 2 * convs > 0  # every Conv has quantized activation and weight
    assert all(z.dtype == np.int8 and not z.any() for z in zps)
    assert zero_point_violations(proto) == []
    # The CPU variant uses unsigned activations, which the check must flag for TensorRT.
    cpu = onnx.load(str(full.out_dir / "model.int8-cpu.onnx"))
    assert any("uint8" in v for v in zero_point_violations(cpu))


def _dq_scale(producers: dict[str, onnx.NodeProto], tensor: str) -> str | None:
    """Scale initializer of the DequantizeLinear that produces `tensor`, else None."""
    node = producers.get(tensor)
    return node.input[1] if node is not None and node.op_type == "DequantizeLinear" else None


def _raw_conv(producers: dict[str, onnx.NodeProto], tensor: str) -> bool:
    node = producers.get(tensor)
    while node is not None and node.op_type == "Relu":
        node = producers.get(node.input[0])
    return node is not None and node.op_type == "Conv"


def test_tensorrt_int8_places_qdq_for_strongly_typed_tensorrt(full) -> None:
    # Strongly typed TensorRT runs every tensor in its ONNX type: the TensorRT file must
    # say int8 (Q/DQ) where NVIDIA's placement guide puts it, and fp16 everywhere else.
    proto = onnx.load(str(full.out_dir / "model.int8.onnx"))
    nodes = list(proto.graph.node)
    producers = {o: n for n in nodes for o in n.output}
    inits = {i.name: i for i in proto.graph.initializer}
    # Every Conv reads data and weights through a DequantizeLinear, except the float
    # classifier (features -> class scores), kept in fp16 by the recipe.
    convs = [n for n in nodes if n.op_type == "Conv"]
    float_convs = [n for n in convs if _dq_scale(producers, n.input[1]) is None]
    assert len(convs) == 26 and len(float_convs) == 1
    assert float_convs[0] is convs[-1] or float_convs[0].output == convs[-1].output
    for conv in convs:
        if conv.output != float_convs[0].output:
            assert _dq_scale(producers, conv.input[0]) and _dq_scale(producers, conv.input[1])
    # Residual Adds: one input a raw Conv output (where TensorRT fuses the Add), the
    # other (the shortcut) dequantized; in the 3 downsampling blocks that shortcut is a
    # quantized 1x1 Conv output, elsewhere the quantized block input.
    adds = [n for n in nodes if n.op_type == "Add"]
    assert len(adds) == 8  # the 8 basic blocks of ResNet-18
    quantized_conv_shortcuts = 0
    for add in adds:
        shortcut = [t for t in add.input if _dq_scale(producers, t)]
        main = [t for t in add.input if _raw_conv(producers, t)]
        assert len(shortcut) == 1 and len(main) == 1, add.name
        q = producers[producers[shortcut[0]].input[0]]
        assert q.op_type == "QuantizeLinear"
        quantized_conv_shortcuts += producers[q.input[0]].op_type == "Conv"
    assert quantized_conv_shortcuts == 3
    # The PSP Concat: every input dequantized with one scale, the same one the next
    # Conv's input uses (so the Q/DQ pairs commute through the Concat).
    (cat,) = [n for n in nodes if n.op_type == "Concat"]
    scales = {_dq_scale(producers, t) for t in cat.input}
    assert None not in scales and len(scales) == 1 and len(cat.input) == 5
    (after,) = [n for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] == cat.output[0]]
    assert after.input[1] in scales
    # fp16 everywhere else. Allowed in fp32: only the graph boundary (the float32 input,
    # then one Cast); the Q/DQ scales are fp16 too, which needs opset 19.
    inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    fp32 = [v.name for v in inferred.graph.value_info if v.type.tensor_type.elem_type == 1]
    assert fp32 == []
    float_inits = [i for i in inits.values() if i.data_type in (1, 10)]
    assert float_inits and all(i.data_type == 10 for i in float_inits)
    (graph_in,) = proto.graph.input
    assert graph_in.type.tensor_type.elem_type == 1  # the runtime contract is unchanged
    assert [n.op_type for n in nodes if graph_in.name in n.input] == ["Cast"]
    assert zero_point_violations(proto) == []
    placement = full.artifact("model.int8.onnx")["quantization"]["placement"]
    assert placement["residual_adds_quantized_shortcut"] == placement["residual_adds"] == 8
    assert placement["concats_one_scale"] == 1 and placement["fp32_tensors"] == 0


def test_int8_agrees_with_fp32_on_held_out_images(full, ckpt: Path) -> None:
    # Images 0..5 of the val split; calibration read the train split. On this model the
    # INT8 files agree on 99.1-99.4 % of pixels; a model trained by another CPU's kernels
    # (other float rounding, other weights) measured 98.7 %, hence the floor.
    x, _ = _val_inputs(PreprocessSpec(input_size=SIZE))
    ref = _torch_logits(ckpt, x).argmax(1)
    for name in ("model.int8.onnx", "model.int8-cpu.onnx", "model.fp16.onnx"):
        labels = np.concatenate([_run(full.out_dir / name, x[i : i + 1]) for i in range(len(x))])
        floor = 0.99 if "fp16" in name else 0.985
        assert (labels == ref).mean() >= floor, name
        g = full.artifact(name)["agreement"]
        assert g["pixel_agreement"] >= floor and g["images"] == 6
        assert 0.0 <= g["miou_vs_ground_truth"] <= 1.0
        assert math.isclose(g["pixel_agreement"], float((labels == ref).mean()), abs_tol=1e-9)
        # mIoU against the ground truth within half a point of the fp32 file's
        assert abs(g["miou_vs_ground_truth"] - g["fp32_miou_vs_ground_truth"]) <= 0.005, name


def test_cpu_int8_weights_cannot_saturate_without_vnni(full) -> None:
    # x86 CPUs without VNNI add pairs of u8 x s8 products in a saturating int16:
    # 2 x 255 x 127 overflows it, 2 x 255 x 64 does not. Every quantized Conv weight of
    # the CPU file must therefore lie in [-64, 64] (7-bit weights).
    proto = onnx.load(str(full.out_dir / "model.int8-cpu.onnx"))
    inits = {i.name: i for i in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    weights = []
    for node in proto.graph.node:
        if node.op_type != "Conv":
            continue
        dq = producers.get(node.input[1])
        if dq is not None and dq.op_type == "DequantizeLinear":
            weights.append(numpy_helper.to_array(inits[dq.input[0]]))
    assert weights and all(w.dtype == np.int8 for w in weights)
    assert max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
    assert CPU_RECIPE.describe()["reduce_range"] is True
    # The Convs on pooled context (PSP's four bins) and the classifier stay in float.
    assert len(pooled_context_convs(onnx.load(str(full.out_dir / "model.onnx")))) == 4
    float_convs = [
        n.name
        for n in proto.graph.node
        if n.op_type == "Conv" and node_producer_op(producers, n.input[1]) != "DequantizeLinear"
    ]
    assert len(float_convs) == 4 + 1, float_convs


def node_producer_op(producers: dict[str, onnx.NodeProto], tensor: str) -> str | None:
    node = producers.get(tensor)
    return None if node is None else node.op_type


_LABELS_SCRIPT = """
import sys, numpy as np
from runtime.backends.onnxruntime import OnnxRuntimeBackend
x = np.load(sys.argv[1]); b = OnnxRuntimeBackend(sys.argv[2], device="cpu")
np.save(sys.argv[3], np.concatenate([b.run(x[i:i + 1]) for i in range(len(x))]))
"""


def _qemu_unavailable() -> str | None:
    if platform.machine() != "x86_64":
        return f"emulates an x86 CPU without VNNI; this machine is {platform.machine()}"
    if shutil.which("qemu-x86_64") is None:
        return "qemu-x86_64 (Debian's qemu-user) is not installed; `make test` installs it as root"
    return None


@pytest.mark.skipif(_qemu_unavailable() is not None, reason=str(_qemu_unavailable()))
def test_int8_files_give_the_same_labels_on_a_cpu_without_vnni(full, tmp_path: Path) -> None:
    # The same files and inputs, run natively and under qemu as a Haswell (AVX2, no
    # VNNI, no AVX-512) CPU: the kernels differ, the labels must not. 8-bit CPU weights
    # agreed on only 95.6 % of pixels here (saturating VPMADDUBSW).
    x, _ = _val_inputs(PreprocessSpec(input_size=SIZE), 3)
    np.save(tmp_path / "x.npy", x)
    script = tmp_path / "labels.py"
    script.write_text(_LABELS_SCRIPT)
    # The CPU variant (7-bit weights) is the file made to agree everywhere. The TensorRT
    # variant keeps 8-bit weights for TensorRT, so on CPUs its u8s8 kernels differ by ISA:
    # it agreed on 99.9 % against an AMD VNNI host, 99.73 % against an Intel AMX host
    # (2026-12, the same commit); it is held to 99.5 %.
    for name, bound in (("model.int8-cpu.onnx", 0.999), ("model.int8.onnx", 0.995)):
        native, emulated = tmp_path / "native.npy", tmp_path / "emulated.npy"
        args = [str(script), str(tmp_path / "x.npy"), str(full.out_dir / name)]
        subprocess.run([sys.executable, *args, str(native)], check=True)
        subprocess.run(
            ["qemu-x86_64", "-cpu", "Haswell", sys.executable, *args, str(emulated)],
            check=True, stderr=subprocess.DEVNULL, timeout=600,
        )  # fmt: skip
        same = float((np.load(native) == np.load(emulated)).mean())
        assert same >= bound, (name, same)


def test_dynamic_logits_export_at_other_sizes(ckpt: Path, tmp_path: Path) -> None:
    report = export_checkpoint(
        ckpt, tmp_path, precisions="fp32", output="logits", dynamic=True,
        calib_data=DATA, verify_images=2,
    )  # fmt: skip
    a = report.artifact("model.onnx")
    assert a["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert a["dynamic_check"]["input_shape"][0] == 2
    ds = build_dataset(DATA, "val")
    for size, batch in ((SIZE, 1), ((48, 96), 2), ((80, 192), 1)):
        pre = PreprocessSpec(input_size=size)
        x = np.concatenate([pre.apply(ds[i][0], input_order="RGB")[0] for i in range(batch)])
        got = _run(tmp_path / "model.onnx", x)
        want = _torch_logits(ckpt, x)
        assert got.shape == want.shape == (batch, ds.labels.num_classes, *size)
        assert np.abs(got - want).max() <= 1e-4


def test_fp16_only_with_int32_labels(ckpt: Path, tmp_path: Path) -> None:
    report = export_checkpoint(
        ckpt, tmp_path, precisions="fp16", label_dtype="int32", calib_data=DATA, verify_images=1
    )
    # fp32 is built and verified as the source, but only what was asked for is shipped.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "export.json",
        "model.fp16.onnx",
        "reference.npz",
    ]
    assert report.artifact("model.fp16.onnx")["outputs"][0]["dtype"] == "int32"
    x, _ = _val_inputs(PreprocessSpec(input_size=SIZE), 1)
    assert _run(tmp_path / "model.fp16.onnx", x).dtype == np.int32
    inits = onnx.load(str(tmp_path / "model.fp16.onnx")).graph.initializer
    assert {i.data_type for i in inits if len(i.dims) == 4} == {onnx.TensorProto.FLOAT16}


def test_failed_verification_leaves_folder_untouched(ckpt: Path, tmp_path: Path) -> None:
    (tmp_path / "export.json").write_text('{"old": true}')
    impossible = Tolerances(fp32_min_agreement=1.01)
    with pytest.raises(SegkdError, match=r"model\.onnx"):
        export_checkpoint(
            ckpt, tmp_path, precisions="fp32", calib_data=DATA, verify_images=1,
            tolerances=impossible,
        )  # fmt: skip
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.json"]
    assert json.loads((tmp_path / "export.json").read_text()) == {"old": True}


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [
        ({"input_size": "0x128"}, "--input-size"),
        ({"input_size": "wide"}, "--input-size"),
        ({"input_size": (16, 16)}, "--input-size"),
        ({"precisions": "fp32,fp8"}, "--precision"),
        ({"int8_method": "mse"}, "--int8-method"),
        ({"output": "probs"}, "--output"),
        ({"opset": 9}, "--opset"),
    ],
)
def test_bad_arguments(ckpt: Path, tmp_path: Path, kwargs: dict, culprit: str) -> None:
    with pytest.raises(SegkdError, match=culprit):
        export_checkpoint(ckpt, tmp_path / "out", calib_data=DATA, **kwargs)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "model.pt"
    bogus.write_bytes(b"this is not a checkpoint")
    with pytest.raises(SegkdError, match=r"model\.pt"):
        export_checkpoint(bogus, tmp_path / "out")
    with pytest.raises(SegkdError, match="not found"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "out")


def test_engine_cache_key_covers_every_input() -> None:
    base = {
        "onnx_sha256": "ab" * 32,
        "tensorrt_version": "10.3.0",
        "gpu_name": "Orin",
        "compute_capability": "8.7",
        "precision": "int8",
        "input_shape": [1, 3, 512, 1024],
    }
    key = engine_cache_key(**base)
    assert key == engine_cache_key(**dict(reversed(list(base.items()))))
    changed = {
        "onnx_sha256": "cd" * 32,
        "tensorrt_version": "11.4.0",
        "gpu_name": "NVIDIA H100",
        "compute_capability": "9.0",
        "precision": "fp16",
        "input_shape": [1, 3, 1024, 2048],
    }
    for field, value in changed.items():
        assert engine_cache_key(**{**base, field: value}) != key, field


@pytest.mark.skipif(
    tensorrt_unavailable_reason() is None, reason="TensorRT is installed: --require-trt passes"
)
def test_require_trt_fails_fast_without_tensorrt(ckpt: Path, tmp_path: Path) -> None:
    with pytest.raises(SegkdError, match="--require-trt"):
        export_checkpoint(ckpt, tmp_path / "out", require_trt=True)
    assert not (tmp_path / "out").exists()


@pytest.mark.tensorrt
@pytest.mark.skipif(
    tensorrt_unavailable_reason() is not None,
    reason=f"TensorRT engines cannot be built here: {tensorrt_unavailable_reason()}",
)
def test_tensorrt_engines(ckpt: Path, tmp_path: Path) -> None:
    from runtime.backends.tensorrt_builder import TrtOptions

    report = export_checkpoint(
        ckpt, tmp_path, calib_data=DATA, calib_images=8, verify_images=4,
        require_trt=True, trt=TrtOptions(cache_dir=tmp_path / "cache", workspace_gib=1.0),
    )  # fmt: skip
    for precision in ("fp32", "fp16", "int8"):
        a = report.artifact(f"model.{precision}.engine")
        assert a["sha256"] == sha256_of(tmp_path / a["file"])
        assert a["agreement"]["pixel_agreement"] >= a["agreement"]["min_pixel_agreement"]
        assert (tmp_path / f"{a['file']}.json").is_file()
    # A second export reuses the cached engines.
    again = export_checkpoint(
        ckpt, tmp_path / "again", precisions="fp32", calib_data=DATA, verify_images=2,
        require_trt=True, trt=TrtOptions(cache_dir=tmp_path / "cache", workspace_gib=1.0),
    )  # fmt: skip
    assert again.artifact("model.fp32.engine")["from_cache"] is True
