"""`segkd build FOLDER` with TensorRT absent: the plan, the reference set the export
writes, the manifest update, the refusals, and that the whole path imports no torch.

Building and gating a real engine needs TensorRT and a GPU (see
tests/runtime/test_runtime_tensorrt.py); here the gate's scoring runs the folder's own
fp32 ONNX file through ONNX Runtime, which must reproduce the export's labels.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from core.errors import SegkdError
from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from runtime.backends.tensorrt import tensorrt_available
from runtime.engine_folder import build_folder, plan_builds, with_engine_entries
from runtime.metadata import read_export_json
from runtime.reference_set import REFERENCE_FILE, read_reference_set, score_on_reference

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from export.api import Tolerances, export_checkpoint
    from tests.export.tiny_student import DATA, train_tiny

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("build")
        ckpt = train_tiny(root / "student.pt", steps=2)
        report = export_checkpoint(
            ckpt, root / "export", precisions="fp32,fp16,int8", calib_data=DATA,
            calib_images=4, verify_images=3, input_dtype="uint8", int8_variants="tensorrt,cpu",
            tolerances=Tolerances(fp32_min_agreement=0.9, fp16_min_agreement=0.0,
                                  int8_min_agreement=0.0),
            build_engines=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(before)
    return report.out_dir


def test_export_writes_a_small_reference_set(folder: Path) -> None:
    export = read_export_json(folder)
    ref = export["reference"]
    assert ref["file"] == REFERENCE_FILE and ref["images"] == 3 and ref["ground_truth"]
    samples = read_reference_set(folder / REFERENCE_FILE)
    h, w = export["options"]["input_size"]
    assert [s.image.shape for s in samples] == [(h, w, 3)] * 3
    assert all(s.labels.shape == (h, w) and s.mask is not None for s in samples)
    assert (folder / REFERENCE_FILE).stat().st_size < 100_000  # three 64x128 images


def test_the_reference_set_reproduces_the_export_labels_without_the_dataset(folder) -> None:
    """The gate's scoring, run on the fp32 ONNX through ONNX Runtime: the same inputs must
    give the same labels the export verified (>= its fp32 gate)."""
    from runtime.backends.onnxruntime import OnnxRuntimeBackend

    export = read_export_json(folder)
    labels = LabelSpec.from_dict(export["labels"])
    pre = PreprocessSpec.from_dict(export["preprocess"])
    backend = OnnxRuntimeBackend(
        folder / "model.onnx", device="cpu", precision="fp32", output_kind="labels",
        input_name="input", output_name="labels",
    )  # fmt: skip
    refs = read_reference_set(folder / REFERENCE_FILE)
    score = score_on_reference(backend.run, refs, pre, "labels", labels.num_classes, 255)
    backend.close()
    assert score.pixel_agreement >= 0.999
    assert score.miou_vs_ground_truth == pytest.approx(score.fp32_miou_vs_ground_truth, abs=0.01)
    # a wrong model fails the gate: every pixel one class
    constant = score_on_reference(
        lambda x: np.zeros((1, *pre.input_size), np.uint8), refs, pre, "labels",
        labels.num_classes, 255,
    )  # fmt: skip
    assert constant.pixel_agreement < 0.9


def test_plan_takes_the_tensorrt_bound_files(folder: Path) -> None:
    export = read_export_json(folder)
    plan = plan_builds(folder, export)
    assert [(p.precision, p.onnx_file, p.engine_file) for p in plan] == [
        ("fp32", "model.onnx", "model.fp32.engine"),
        ("fp16", "model.fp16.onnx", "model.fp16.engine"),
        ("int8", "model.int8.onnx", "model.int8.engine"),  # never the CPU INT8 recipe
    ]
    assert all(p.layout == "NHWC" and p.static_check == "recorded at export" for p in plan)
    assert [p.min_agreement for p in plan] == [0.9, 0.0, 0.0]  # the export's own gates
    dla = plan_builds(folder, export, dla_core=1)
    assert [p.engine_file for p in dla] == ["model.fp16.dla1.engine", "model.int8.dla1.engine"]


def test_plan_refuses_a_changed_or_missing_file(folder: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    data = (copy / "model.fp16.onnx").read_bytes()
    (copy / "model.fp16.onnx").write_bytes(data[: len(data) // 2])  # an interrupted copy
    with pytest.raises(SegkdError, match=r"model.fp16.onnx: sha256 differs"):
        plan_builds(copy, read_export_json(copy), ["fp16"])
    (copy / "model.int8.onnx").unlink()
    with pytest.raises(SegkdError, match=r"lists model\.int8\.onnx, but .* is missing"):
        plan_builds(copy, read_export_json(copy), ["int8"])
    with pytest.raises(SegkdError, match="unknown 'bf16'"):
        plan_builds(copy, read_export_json(copy), ["bf16"])


def test_manifest_update_replaces_engines_of_the_same_name_and_keeps_the_rest(folder) -> None:
    export = read_export_json(folder)
    old = {"file": "model.fp16.engine", "format": "tensorrt-engine", "gpu": "RTX 4090"}
    export = with_engine_entries(export, [old])
    new = {"file": "model.fp16.engine", "format": "tensorrt-engine", "gpu": "Orin"}
    updated = with_engine_entries(export, [new])
    files = [a["file"] for a in updated["artifacts"]]
    assert files.count("model.fp16.engine") == 1 and "model.int8-cpu.onnx" in files
    assert updated["artifacts"][-1]["gpu"] == "Orin"
    assert [a["file"] for a in export["artifacts"]].count("model.fp16.engine") == 1  # a copy


@pytest.mark.skipif(tensorrt_available(), reason="checks the refusal where TensorRT is absent")
def test_build_without_tensorrt_is_one_line_and_leaves_the_folder_alone(folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    before = {p.name: p.stat().st_mtime_ns for p in copy.iterdir()}
    with pytest.raises(SegkdError, match=r"^cannot build TensorRT engines here: the tensorrt"):
        build_folder(copy)
    assert {p.name: p.stat().st_mtime_ns for p in copy.iterdir()} == before
    (copy / REFERENCE_FILE).unlink()
    with pytest.raises(SegkdError, match=r"no reference.npz .* re-export"):
        build_folder(copy)


@pytest.mark.skipif(tensorrt_available(), reason="checks the refusal where TensorRT is absent")
def test_the_build_path_imports_no_torch(folder: Path) -> None:
    """`segkd build` as a Jetson runs it: the CLI, the plan, the static check, the reference
    set, the GPU and L4T readers; it stops at the missing TensorRT, with torch, the
    training code (but the CLI's torch-free option dataclass), the export code and ONNX
    Runtime never imported."""
    code = textwrap.dedent(f"""
        import sys
        import cli
        from runtime.engine_folder import plan_builds, static_check
        from runtime.metadata import read_export_json
        from runtime.reference_set import read_reference_set
        from runtime.gpu import gpu_unavailable_reason
        from runtime.jetson_release import l4t_release
        folder = {str(folder)!r}
        from pathlib import Path
        plan = plan_builds(Path(folder), read_export_json(Path(folder)))
        print([static_check(Path(folder), p) for p in plan])
        read_reference_set(Path(folder) / "reference.npz")
        print(gpu_unavailable_reason(), l4t_release())
        sys.argv = ["segkd", "build", folder]
        try:
            cli.main()
        except SystemExit as e:
            print("EXIT", e.code)
        # the CLI reads its train options from a plain dataclass (no torch); nothing else
        # of the training side may load
        cli_config = {"distill", "distill.training", "distill.training.config"}
        bad = sorted(m for m in sys.modules if m not in cli_config
                     and m.split(".")[0] in ("torch", "distill", "export", "onnxruntime"))
        print("IMPORTED", bad)
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert lines[0] == "['passed here', 'passed here', 'passed here']"
    assert lines[-2] != "EXIT 0" and lines[-1] == "IMPORTED []"
    errors = out.stderr.strip().splitlines()
    assert errors[-1].startswith("error: cannot build TensorRT engines here:"), out.stderr
