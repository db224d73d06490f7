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
    "student.iters=4", "student.batch_size=2", "student.crop_size=64x64", "student.val_images=2",
    "export.calib_images=4", "export.verify_images=4",
    "eval.max_images=4", "bench.iters=2", "bench.warmup=1", "report.examples=2",
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
