"""`segkd pipeline` end to end at a tiny size: artifacts, report, resume and rebuild."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from pipeline.config import load_config
from pipeline.run import run_pipeline
from pipeline.steps import sha256_file

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data=synthetic:size=64x128,train=24,val=6",
    "num_workers=0",
    "teacher.model=pspnet_r18", "teacher.iters=4", "teacher.batch_size=2", "teacher.crop_size=64x64",
    "teacher.readout_iters=5", "teacher.val_images=2",
    # The default real-time student on whole 64x128 images: 40 steps at batch 4 leave it sane
    # enough for the INT8 gate (4 steps at 64x64 crops diverge: its 1/64 branch is 1x1).
    "student.iters=40", "student.eval_interval=40", "student.batch_size=4",
    "student.crop_size=64x128", "student.val_images=2",
    # A 40-step model's INT8 labels agree on 90-95 %: near the 90 % floor, which is meant for
    # trained students (tests/export checks INT8 quality); this test is about the pipeline.
    "export.calib_images=4", "export.verify_images=4", "export.min_int8=0.75",
    "eval.max_images=4", "bench.iters=2", "bench.warmup=1", "report.examples=2",
    # QAT after the export, on crops, with the pipeline's own teacher in the loop, cosine
    "qat.steps=2", "qat.train_images=4", "qat.crop_size=32x64", "qat.teacher_weight=0.5",
    "qat.schedule=cosine",
]  # fmt: skip


def _ran(report: dict) -> dict[str, bool]:
    return {s["step"]: s["ran"] for s in report["steps"]}


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("pipeline")
    report = run_pipeline(load_config(None, TINY), out, log=lambda _m: None)
    return out, report


@pytest.mark.slow
def test_every_artifact_figure_and_table_exists(finished: tuple[Path, dict]) -> None:
    out, report = finished
    for rel in ("teacher/best.pt", "baseline/best.pt", "student/best.pt", "export/export.json",
                "export/model.onnx", "export/model.fp16.onnx", "export/model.int8.onnx",
                "report.md", "report.json"):  # fmt: skip
        assert (out / rel).is_file(), rel
    names = [a["name"] for a in report["artifacts"]]
    assert names[0] == "torch fp32" and any("int8" in n for n in names) and len(names) >= 4
    md = (out / "report.md").read_text()
    saved = json.loads((out / "report.json").read_text())
    for a in saved["artifacts"]:
        assert a["name"] in md
        assert (out / a["file"]).is_file()
        assert (
            0.0 <= a["miou"] <= 1.0
            and a["fps"] > 0
            and a["latency_ms"]["p99"] >= a["latency_ms"]["p50"]
        )
    figures = list((out / "figures").glob("*.png"))
    assert len(figures) >= 3
    for f in figures:
        assert cv2.imread(str(f)) is not None
        assert f"figures/{f.name}" in md
    assert saved["baseline"] is not None and saved["distillation"]["gain_vs_baseline"] is not None
    qat = json.loads((out / "qat" / "qat.json").read_text())["training"]
    assert qat["teacher"] == str(out / "teacher" / "best.pt")
    assert qat["options"]["crop_size"] == [32, 64] and qat["steps"] == 2
    assert qat["options"]["schedule"] == "cosine" and qat["learning_rates"]["weights"][1] < 1e-4
    assert (out / "export-qat" / "model.int8.onnx").is_file()
    assert saved["qat"]["steps"] == 2 and "quantization-aware" in md and "(cosine)" in md


@pytest.mark.slow
def test_students_run_once_per_seed_and_the_gain_uses_every_run(
    finished: tuple[Path, dict],
) -> None:
    out, report = finished
    dist = report["distillation"]
    assert dist["seeds"] == [0, 1]
    for rel in ("baseline-seed1/best.pt", "student-seed1/best.pt",
                "eval/baseline-seed1.json", "eval/torch-fp32-seed1.json"):  # fmt: skip
        assert (out / rel).is_file(), rel
    evals = {
        name: json.loads((out / "eval" / f"{name}.json").read_text())["miou"]
        for name in ("baseline", "baseline-seed1", "torch-fp32", "torch-fp32-seed1")
    }
    assert dist["baseline_miou"] == [evals["baseline"], evals["baseline-seed1"]]
    assert dist["distilled_miou"] == [evals["torch-fp32"], evals["torch-fp32-seed1"]]
    mean = lambda xs: 100 * sum(xs) / len(xs)  # noqa: E731
    assert dist["gain_vs_baseline"] == pytest.approx(
        mean(dist["distilled_miou"]) - mean(dist["baseline_miou"])
    )
    assert isinstance(dist["gain_exceeds_spread"], bool)
    # The report says which loss trained both students: the synthetic default's plain CE.
    assert dist["supervised_loss"]["loss"] == "ce"
    assert "student: plain cross-entropy" in (out / "report.md").read_text()
    # The two seeds trained different networks (a seed that is ignored would not).
    from distill.checkpoint import load_checkpoint

    for row in ("student", "baseline"):
        a, b = (load_checkpoint(out / f"{row}{s}/best.pt") for s in ("", "-seed1"))
        assert (a["config"]["seed"], b["config"]["seed"]) == (0, 1)
        assert any((a["state_dict"][k] != b["state_dict"][k]).any() for k in a["state_dict"])
    assert "| seed 1 |" in (out / "report.md").read_text()


@pytest.mark.slow
def test_report_miou_equals_segkd_eval(finished: tuple[Path, dict], tmp_path: Path) -> None:
    out, report = finished
    art = next(a for a in report["artifacts"] if a["name"] == "onnxruntime fp32")
    cmd = [sys.executable, "cli.py", "eval", str(out / art["file"]), "--data",
           "synthetic:size=64x128,train=24,val=6", "--max-images", "4", "--json", str(tmp_path / "e.json")]  # fmt: skip
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "e.json").read_text())["miou"] == pytest.approx(
        art["miou"], abs=1e-12
    )


@pytest.mark.slow
def test_rerun_does_no_work_and_a_removed_artifact_is_rebuilt(finished: tuple[Path, dict]) -> None:
    out, _ = finished
    cfg = load_config(None, TINY)
    again = run_pipeline(cfg, out, log=lambda _m: None)
    assert not any(_ran(again).values()), _ran(again)

    before = {p.name: sha256_file(p) for p in (out / "export").glob("*.onnx")}
    (out / "export" / "model.int8.onnx").unlink()
    rebuilt = run_pipeline(cfg, out, log=lambda _m: None)
    ran = _ran(rebuilt)
    assert (out / "export" / "model.int8.onnx").is_file()
    assert ran["export"] and not ran["teacher"] and not ran["baseline"] and not ran["distill"]
    for p in (out / "export").glob("*.onnx"):
        changed = sha256_file(p) != before[p.name]
        key = (
            "fp32"
            if p.name == "model.onnx"
            else p.name.removeprefix("model.").removesuffix(".onnx")
        )
        assert ran[f"eval-onnxruntime-{key}"] == changed, (p.name, ran)
