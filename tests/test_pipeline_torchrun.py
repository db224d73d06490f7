"""`segkd pipeline` under torchrun with two CPU processes (gloo): the training stages on
both ranks, everything else on rank 0, one report, one export, nothing clobbered; a rerun
skips every step on both ranks alike (a split decision would hang)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "data=synthetic:size=64x128,train=16,val=4", "num_workers=0", "device=cpu",
    "teacher.model=pspnet_r18", "teacher.iters=3", "teacher.batch_size=2",
    "teacher.crop_size=64x64", "teacher.readout_iters=2", "teacher.val_images=2",
    "student.model=pspnet_r18", "student.iters=2", "student.batch_size=2",
    "student.crop_size=64x64", "student.val_images=2", "student_seeds=[0]",
    "export.precisions=[fp32]", "export.calib_images=1", "export.verify_images=1",
    "eval.max_images=2", "bench.iters=1", "bench.warmup=0", "report.examples=0",
]  # fmt: skip
TRAINED = ("teacher", "baseline", "student")


def pipeline_on_two_ranks(out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    sets = [arg for s in TINY for arg in ("--set", s)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(29600 + os.getpid() % 1000), "cli.py", "pipeline",
           "--out", str(out), *sets]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_pipeline_under_torchrun_trains_on_both_ranks_and_reports_once(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = pipeline_on_two_ranks(out)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    # One voice: rank 0 logs the steps, and only rank 0 prints the result line.
    assert r.stdout.count("[teacher] running") == 1, r.stdout
    assert r.stdout.count("distilled pspnet_r18:") == 1, r.stdout
    for stage in TRAINED:
        summary = json.loads((out / stage / "summary.json").read_text())
        assert summary["world_size"] == 2, stage  # trained by both ranks
        events = (out / stage / "metrics.jsonl").read_text().splitlines()
        # Cleared and started once: a rank wiping the folder again would restart the log.
        assert sum('"event": "start"' in e for e in events) == 1, stage
        assert (out / stage / "best.pt").is_file() and (out / stage / "last.pt").is_file()
    assert "position_readout" in load_checkpoint(out / "teacher" / "best.pt")  # rank 0 fit it
    manifest = json.loads((out / "export" / "export.json").read_text())
    assert [a["file"] for a in manifest["artifacts"]] == ["model.onnx"]
    assert sorted(p.name for p in (out / "export").iterdir()) == [
        "export.json",
        "model.onnx",
        "reference.npz",
    ]
    report = json.loads((out / "report.json").read_text())
    assert (out / "report.md").is_file()
    assert [s["step"] for s in report["steps"] if s["ran"]][:3] == [
        "teacher",
        "baseline",
        "distill",
    ]
    stamps = {p.name: p.read_bytes() for p in (out / ".steps").iterdir()}
    checkpoints = {s: (out / s / "best.pt").stat().st_mtime_ns for s in TRAINED}

    again = pipeline_on_two_ranks(out)  # both ranks take rank 0's "up to date"
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    for step in ("teacher", "baseline", "distill", "export"):
        assert f"[{step}] up to date, skipped" in again.stdout
    assert {s: (out / s / "best.pt").stat().st_mtime_ns for s in TRAINED} == checkpoints
    assert {p.name: p.read_bytes() for p in (out / ".steps").iterdir()} == stamps
