"""What `gpu_check.py` runs and at which sizes: the full GPU plan and the tiny CPU one.

One dataclass, so the CPU quick mode walks exactly the code the GPU run walks, only
smaller; nothing in the sections branches on "quick" except through these numbers.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import asdict, dataclass, field
from typing import Any

# Real-time students other engineers add to the model registry; each is looked up at run
# time and skipped with one line when it is not registered yet.
REALTIME_STUDENTS = ("ddrnet23_slim", "pidnet_s")
BASE_STUDENT = "pspnet_r18"
TEACHER = "pspnet_r101"
NUM_CLASSES = 19  # Cityscapes: what a deployed model costs (the synthetic data set has 12)
AMP_MODES = ("fp16", "bf16")  # fp16 runs with a GradScaler, bf16 without (its range is fp32's)


def autocast_dtype(amp: str, device: str) -> str:
    """The dtype autocast really uses. CPU fp16 convolutions are ~40x slower than bf16
    (measured: 44 s vs 0.9 s for one pspnet_r101 forward at 64x128), so the CPU quick run
    keeps the fp16 mode's GradScaler but computes in bf16."""
    return "bfloat16" if amp == "bf16" or device != "cuda" else "float16"


@dataclass(frozen=True)
class Plan:
    device: str  # "cuda" or "cpu"
    quick: bool
    train_size: tuple[int, int]
    batch: int
    teacher: str
    warmup_steps: int
    timed_steps: int
    infer_sizes: tuple[tuple[int, int], ...]
    infer_warmup: int
    infer_iters: int
    torchrun_iters: int
    torchrun_teacher: str
    torchrun_workers: int
    readout_iters: int
    export_size: tuple[int, int]
    calib_images: int
    verify_images: int
    ort_iters: int
    budget_s: float  # the whole check, every section together
    # Most seconds one section may take, so one that hangs cannot starve the others.
    section_caps_s: dict[str, float] = field(default_factory=dict)

    @property
    def dist_backend(self) -> str:
        return "nccl" if self.device == "cuda" else "gloo"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def make_plan(device: str, quick: bool, budget_s: float | None = None) -> Plan:
    if quick:
        return Plan(
            device=device,
            quick=True,
            train_size=(64, 128),
            batch=2,
            teacher=BASE_STUDENT,  # pspnet_r101 takes seconds per step on 2 cores: same code
            warmup_steps=1,
            timed_steps=1,
            infer_sizes=((64, 128), (128, 256)),
            infer_warmup=1,
            infer_iters=3,
            torchrun_iters=2,
            torchrun_teacher=BASE_STUDENT,
            torchrun_workers=0,
            readout_iters=2,
            export_size=(64, 128),
            calib_images=2,
            verify_images=2,
            ort_iters=3,
            budget_s=budget_s or 300.0,
        )
    return Plan(
        device=device,
        quick=False,
        train_size=(512, 1024),
        batch=8,
        teacher=TEACHER,
        warmup_steps=3,
        timed_steps=10,
        infer_sizes=((512, 1024), (1024, 2048)),
        infer_warmup=10,
        infer_iters=50,
        torchrun_iters=4,
        torchrun_teacher=TEACHER,
        torchrun_workers=4,
        readout_iters=10,
        export_size=(512, 1024),
        calib_images=8,
        verify_images=4,
        ort_iters=20,
        budget_s=budget_s or 450.0,  # 7.5 min: the 8 min with room to write the report
        # Expected on an H100/H200: env 10 s, distill 60, torchrun 60, inference 30, export 120.
        section_caps_s={"env": 60, "distill": 150, "torchrun": 150, "inference": 90, "export": 200},
    )


class Skipped(Exception):
    """A section or item that cannot run here; its message is the one-line reason."""


def first_line(e: BaseException) -> str:
    """One line for the report: the exception's type and the first line of its message."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {first[:240]}" if first else type(e).__name__


def row(item: str, status: str, figures: str) -> list[str]:
    """One line of the markdown table (section name is added by the driver)."""
    return [item, status, figures]


def run_group(cmd: list[str], timeout: float, **kwargs: Any) -> int | None:
    """Run cmd in its own process group; on timeout kill the whole group (torchrun's
    workers too, which would otherwise hold the GPU) and return None, else the exit code."""
    proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None
