"""torchrun with two CPU processes (gloo): DDP training and distillation really run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from distill.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
DATA = "synthetic:size=64x128,train=16,val=4"
TINY = ["--data", DATA, "--iters", "4", "--eval-interval", "2", "--batch-size", "2",
        "--crop-size", "64x64", "--num-workers", "0", "--device", "cpu"]  # fmt: skip


def torchrun(*args: str, tmp: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-port", str(29500 + os.getpid() % 1000), "cli.py", *args]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_process_training_and_distillation(tmp_path: Path) -> None:
    teacher = tmp_path / "teacher"
    r = torchrun(
        "train",
        *TINY,
        "--role",
        "teacher",
        "--readout-iters",
        "5",
        "--out",
        str(teacher),
        tmp=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((teacher / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["iters"] == 4
    ckpt = load_checkpoint(teacher / "best.pt")
    assert "position_readout" in ckpt  # fitted once by rank 0, stored with the teacher
    # Validation is sharded (4 images over 2 ranks) and the matrices summed: every pixel counted once.
    ev = [
        json.loads(x) for x in (teacher / "metrics.jsonl").read_text().splitlines() if '"eval"' in x
    ]
    from distill.data import build_dataset

    val = build_dataset(DATA, "val")
    labelled = sum(int((val[i][1] != 255).sum()) for i in range(len(val)))
    assert ev and all(e["val_pixels"] == labelled for e in ev)

    student = tmp_path / "student"
    r = torchrun("distill", *TINY, "--teacher", str(teacher / "best.pt"), "--losses", "kd,idd,pid",
                 "--out", str(student), tmp=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    s = load_checkpoint(student / "best.pt")
    assert s["role"] == "student" and s["distillation"]["config"]["losses"] == ["kd", "idd", "pid"]
    assert not any(k.startswith("module.") for k in s["state_dict"])  # DDP wrapper stripped
