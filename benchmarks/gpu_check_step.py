"""Part of section 2 of the GPU check: one distillation step, before and after issue 25.

before  the batch arrives as float32 NCHW images and int64 labels (normalised on the
        host, 4x and 8x the bytes), the teacher stays NCHW while the student's input is
        channels_last, SGD is not fused (GradScaler reads its inf check on the host), and
        the loss is read back every step (`torch.isfinite(loss).item()`)
after   the trainer's path now: uint8 images and labels copied non-blocking from pinned
        memory and normalised on the device (`NetworkInput`), teacher in the student's
        memory format, fused SGD, non-finite check on the device (`StepHealth`), no read
        back in the step; cudnn.benchmark on (fixed crops)

Both run the same student init, teacher, objective and AMP mode (fp16 with a GradScaler,
the trainer's default) on the same batch, interleaved twice so clock and thermal drift
fall on both. On CPU (the quick test) the same code runs without pinning or fused SGD.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from gpu_check_plan import BASE_STUDENT, NUM_CLASSES, Plan, autocast_dtype, row

from core.preprocess import PreprocessSpec
from distill.data.loader import NetworkInput
from distill.distillation import DistillConfig, DistillObjective
from distill.losses import PositionReadout
from distill.models import build_model
from distill.training.step_health import StepHealth

AMP = "fp16"


class Variant:
    """A student + objective + optimizer trained one way ("before" or "after")."""

    def __init__(
        self, after: bool, teacher: torch.nn.Module, readout: PositionReadout, device: torch.device
    ) -> None:
        cuda = device.type == "cuda"
        self.after, self.device = after, device
        torch.manual_seed(0)
        self.student = build_model(BASE_STUDENT, NUM_CLASSES).to(device).train()
        if not after and cuda:
            teacher = copy.deepcopy(teacher).to(memory_format=torch.contiguous_format)
        self.objective = DistillObjective(
            teacher, self.student.feat_channels, NUM_CLASSES, DistillConfig(), readout
        ).to(device)
        if cuda:
            self.student.to(memory_format=torch.channels_last)
            if after:
                self.objective.to(memory_format=torch.channels_last)
        params = [p for m in (self.student, self.objective) for p in m.parameters()]
        self.optimizer = torch.optim.SGD(
            [p for p in params if p.requires_grad], lr=1e-3, momentum=0.9, weight_decay=1e-4,
            fused=True if (after and cuda) else None,
        )  # fmt: skip
        self.scaler = torch.amp.GradScaler(device.type, enabled=True)
        self.health = StepHealth(limit=20, skipping=True)
        self.to_input = NetworkInput(PreprocessSpec(), device, channels_last=cuda)

    def step(self, batch: tuple[torch.Tensor, torch.Tensor], it: int) -> None:
        if self.after:
            images, labels = self.to_input(batch)
        else:
            images, labels = (t.to(self.device, non_blocking=True) for t in batch)
            if self.device.type == "cuda":
                images = images.contiguous(memory_format=torch.channels_last)
        dtype = getattr(torch, autocast_dtype(AMP, self.device.type))
        with torch.autocast(self.device.type, dtype=dtype):
            terms = self.objective(images, labels, self.student(images))
        if self.after:
            self.health.record(terms, it)
        elif not torch.isfinite(terms["loss"].detach()).item():  # the old per-step read
            raise RuntimeError("non-finite loss")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()


def host_batches(plan: Plan, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """One batch in each wire format, as the loader hands it over (pinned under CUDA)."""
    h, w = plan.train_size
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (plan.batch, h, w, 3), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, NUM_CLASSES, (plan.batch, h, w), generator=g, dtype=torch.uint8)
    spec = PreprocessSpec()
    scale, shift = (torch.from_numpy(v).view(1, 3, 1, 1) for v in spec._scale_shift())
    floats = pixels.permute(0, 3, 1, 2).contiguous().float().mul_(scale).add_(shift)
    batches = {"before": (floats, labels.long()), "after": (pixels, labels)}
    if device.type == "cuda":
        batches = {k: (a.pin_memory(), b.pin_memory()) for k, (a, b) in batches.items()}
    return batches


def timed(variant: Variant, batch: tuple[torch.Tensor, torch.Tensor], n: int) -> float:
    sync = torch.cuda.synchronize if variant.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for i in range(n):
        variant.step(batch, i)
    sync()
    return (time.perf_counter() - t0) / n


def step_before_after(
    plan: Plan, teacher: torch.nn.Module, readout: PositionReadout, device: torch.device
) -> tuple[dict[str, Any], list[list[str]]]:
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the trainer sets it; both variants share it
    batches = host_batches(plan, device)
    variants = {k: Variant(k == "after", teacher, readout, device) for k in ("before", "after")}
    for k, v in variants.items():
        timed(v, batches[k], plan.warmup_steps)
    times: dict[str, list[float]] = {"before": [], "after": []}
    for _ in range(2):
        for k, v in variants.items():
            times[k].append(timed(v, batches[k], plan.timed_steps))
    ms = {k: round(1e3 * min(t), 2) for k, t in times.items()}
    wire = {k: sum(t.numel() * t.element_size() for t in b) for k, b in batches.items()}
    wire_mib = {k: round(v / 2**20, 2) for k, v in wire.items()}
    result = {
        "student": BASE_STUDENT,
        "teacher": plan.teacher,
        "size": list(plan.train_size),
        "batch": plan.batch,
        "amp": AMP,
        "step_ms": ms,
        "speedup": round(ms["before"] / ms["after"], 3),
        "batch_bytes_host_to_device": wire,
    }
    rows = [
        row(
            f"distillation step {plan.teacher} -> {BASE_STUDENT}, before/after issue 25",
            "ok",
            f"{ms['before']} -> {ms['after']} ms/step (x{result['speedup']}), batch "
            f"{wire_mib['before']} -> {wire_mib['after']} MiB over the copy",
        )
    ]
    return result, rows
