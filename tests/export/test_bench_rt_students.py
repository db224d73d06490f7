"""benchmarks/bench_rt_students_cpu.py on two briefly trained models at 64x128: one run
exports both, times them round-robin, and reports ratios that follow from its own timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.machine import describe_cpu
from tests.export.tiny_student import train_tiny

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_rt_students_cpu.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
FAST = ["--size", "64x128", "--iters", "3", "--warmup", "1", "--calib-images", "4",
        "--eval-images", "2", "--variants", "cpu"]  # fmt: skip


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=ENV, capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpts")
    return {a: train_tiny(d / f"{a}.pt", a, steps=20) for a in ("pspnet_r18", "ddrnet23_slim")}


def test_one_run_exports_times_and_compares_every_model(checkpoints, tmp_path: Path) -> None:
    models = [f"{name}={path}" for name, path in checkpoints.items()]
    out, js = tmp_path / "exports", tmp_path / "r.json"
    proc = run(*models, *FAST, "--out", str(out), "--json", str(js))
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(js.read_text())
    assert r["reference"] == "pspnet_r18" and r["size"] == [64, 128]
    assert r["env"]["cpu"] == describe_cpu() and r["env"]["threads"] == 1
    assert set(r["env"]["loadavg"]) == {"start", "after_exports", "after_timing"}
    ref = r["models"]["pspnet_r18"]["files"]
    for name, m in r["models"].items():
        files = m["files"]
        assert set(files) == {"model.onnx", "model.int8-cpu.onnx"}
        fp32, int8 = files["model.onnx"], files["model.int8-cpu.onnx"]
        assert fp32["pixel_agreement"] >= 0.999 and 0.0 < int8["pixel_agreement"] <= 1.0
        assert int8["miou_drop_points"] == round(100 * (fp32["miou_vs_gt"] - int8["miou_vs_gt"]), 2)
        for f, row in files.items():
            assert row["iters"] == 3 and 0 < row["min_ms"] <= row["median_ms"] <= row["p90_ms"]
            want = round(ref[f]["median_ms"] / row["median_ms"], 2)
            assert row["speedup_vs_reference"] == want
            if name == "pspnet_r18":
                assert want == 1.0 and "meets_goal" not in row
            else:
                assert row["meets_goal"] == (want >= r["goal_speedup"])
        assert (out / name / "export.json").is_file()
    # The same exports timed again: same quality figures, no export this time.
    again = tmp_path / "again.json"
    proc = run(*models, *FAST, "--out", str(out), "--reuse", "--json", str(again))
    assert proc.returncode == 0, proc.stderr[-2000:]
    r2 = json.loads(again.read_text())
    for name, m in r2["models"].items():
        assert m["export_s"] is None
        for f, row in m["files"].items():
            assert row["pixel_agreement"] == r["models"][name]["files"][f]["pixel_agreement"]
    # --reuse refuses exports of another checkpoint.
    swapped = [
        f"pspnet_r18={checkpoints['ddrnet23_slim']}",
        f"ddrnet23_slim={checkpoints['pspnet_r18']}",
    ]
    proc = run(*swapped, *FAST, "--out", str(out), "--reuse")
    assert (
        proc.returncode == 2 and "--reuse:" in proc.stderr and "is not an export of" in proc.stderr
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pspnet_r18"], "expected NAME=CHECKPOINT"),
        (["a=/nonexistent/a.pt"], "checkpoint /nonexistent/a.pt not found"),
        (["a={ckpt}", "a={ckpt}"], "name 'a' given twice"),
        (["a={ckpt}", "--reference", "b"], "--reference 'b' is not one of the models"),
        (["a={ckpt}", "--reuse"], "--reuse needs --out"),
    ],
)
def test_bad_arguments_are_one_clear_line(args, message, tmp_path: Path) -> None:
    ckpt = tmp_path / "x.pt"
    ckpt.write_bytes(b"")
    proc = run(*[a.format(ckpt=ckpt) for a in args])
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
