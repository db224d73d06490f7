"""A training run killed with SIGKILL leaves only whole checkpoints, and --resume continues it.

A real `segkd train` / `segkd distill` subprocess on tiny data checkpoints every 2
iterations; the test kills its whole process group (data-loader workers included) at a
random moment after the first checkpoint, or while a checkpoint is being written, then
checks every *.pt in --out and resumes the same command to the end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from distill.checkpoint import atomic_torch_save, load_checkpoint, make_checkpoint
from distill.models import build_model

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
ITERS = 6
RUN = ("--iters", str(ITERS), "--eval-interval", "2", "--batch-size", "2",
       "--crop-size", "32x32", "--device", "cpu")  # fmt: skip
KNOWN_FILES = {"metrics.jsonl", "summary.json"}


def make_folder(root: Path, n: int = 6) -> Path:
    """folder:ROOT, two classes (left half / right half) plus an ignore band."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    mask = np.zeros((40, 48), np.uint8)
    mask[:, 24:] = 1
    mask[:3] = 255
    for i in range(n):
        cv2.imwrite(
            str(root / "images" / f"im{i}.png"), rng.integers(0, 256, (40, 48, 3), np.uint8)
        )
        Image.fromarray(mask, mode="L").save(root / "masks" / f"im{i}.png")
    (root / "classes.txt").write_text("left\nright\n")
    return root


def start(*args: object, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    with log.open("wb") as f:
        return subprocess.Popen(
            [sys.executable, "cli.py", *map(str, args)],
            cwd=REPO,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill takes the workers too
        )


def wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"exited {proc.returncode} early:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < end, f"no {path.name} after {timeout} s"
        time.sleep(0.02)


def kill_when(
    proc: subprocess.Popen[bytes], out: Path, delay: float, mid_write: bool, log: Path
) -> str:
    """SIGKILL the process group after `delay` s, or as soon as a checkpoint temp file
    exists (mid_write), and at the latest once the next checkpoint round has finished:
    the run has 6 iterations and checkpoints at 2, 4, 6, so it is never already done."""
    resume = out / "resume.pt"
    first = resume.stat().st_mtime_ns
    end = time.monotonic() + delay
    moment = "after the delay"
    while time.monotonic() < end:
        if mid_write and any(out.glob(".*.pt.*.tmp")):
            moment = "while a checkpoint was being written"
            break
        if resume.stat().st_mtime_ns != first:
            moment = "just after the second checkpoint"
            break
        time.sleep(0.005)
    assert proc.poll() is None, f"finished before the kill:\n{log.read_text()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    return moment


def check_after_kill(out: Path) -> int:
    """Every *.pt loads; leftovers are only temp files (never *.pt); returns the saved iter."""
    files = sorted(p.name for p in out.iterdir())
    pts = [n for n in files if n.endswith(".pt")]
    assert "resume.pt" in pts, files
    for name in pts:
        load_checkpoint(out / name)  # raises on a half-written file
    for name in files:
        if name not in KNOWN_FILES and not name.endswith(".pt"):
            assert name.startswith(".") and name.endswith(".tmp"), f"unexpected file {name}"
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # no half-written line
    saved = int(load_checkpoint(out / "resume.pt")["train_state"]["iteration"])
    last = int(load_checkpoint(out / "last.pt")["iteration"])
    assert 2 <= saved <= last < ITERS, (saved, last)  # resume.pt is written after last.pt
    return saved


def check_resumed(out: Path, saved: int, log: Path) -> None:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    starts = [i for i, r in enumerate(records) if r.get("event") == "start"]
    assert len(starts) == 2, records
    assert records[starts[1]]["iter"] == saved  # continued, not restarted at 0
    after = [r["iter"] for r in records[starts[1] :] if r.get("event") == "eval"]
    assert after and min(after) > saved and max(after) == ITERS, (saved, after)
    assert load_checkpoint(out / "last.pt")["iteration"] == ITERS
    assert json.loads((out / "summary.json").read_text())["iters"] == ITERS
    assert not list(out.glob(".*.tmp")), "stale temp files were not cleaned up"
    assert "iter " in log.read_text()


def kill_and_resume(args: tuple[object, ...], out: Path, tmp: Path, mid_write: bool) -> None:
    rng = random.Random()
    delay = rng.uniform(0.0, 3.0)
    log = tmp / "first.log"
    proc = start(*args, "--out", out, log=log)
    try:
        wait_for(out / "resume.pt", proc, log)
        moment = kill_when(proc, out, delay, mid_write, log)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    print(f"killed {moment} (delay {delay:.2f} s)")
    saved = check_after_kill(out)
    log2 = tmp / "resume.log"
    proc = start(*args, "--out", out, "--resume", log=log2)
    assert proc.wait(timeout=600) == 0, log2.read_text()[-3000:]
    check_resumed(out, saved, log2)


def test_train_killed_at_a_random_moment_resumes(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "ds")
    args = ("train", "--data", f"folder:{data}", *RUN)
    kill_and_resume(args, tmp_path / "run", tmp_path, mid_write=random.random() < 0.5)


def test_distill_killed_while_writing_a_checkpoint_resumes(tmp_path: Path) -> None:
    data = make_folder(tmp_path / "ds")
    torch.manual_seed(0)
    teacher = build_model("pspnet_r18", 2, aux=False)
    teacher_path = tmp_path / "teacher.pt"
    atomic_torch_save(
        make_checkpoint(
            model=teacher, arch="pspnet_r18", model_kwargs=teacher.model_kwargs,
            labels=LabelSpec(names=("left", "right")), preprocess=PreprocessSpec(input_size=(32, 32)),
            role="teacher",
        ),
        teacher_path,
    )  # fmt: skip
    # kd + idd: the resume file also carries the IDD adapter (objective state).
    args = ("distill", "--teacher", teacher_path, "--losses", "kd,idd", "--data", f"folder:{data}",
            "--num-workers", "0", *RUN)  # fmt: skip
    kill_and_resume(args, tmp_path / "run", tmp_path, mid_write=True)
