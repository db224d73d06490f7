"""Section 2 of the GPU check: distillation steps on random data, as the trainer runs them.

Frozen pspnet_r101 teacher (pspnet_r18 in the CPU quick run) into pspnet_r18 and into each registered real-time student,
at the plan's size and batch, channels_last, under AMP fp16 (with a GradScaler, the
trainer's default) and bf16 (no scaler). Per run: images/s, peak GPU memory, whether
every loss term stayed finite, and the share of IDD + PID in a step (the step timed
with and without those two terms). After the fp16 run the student-only checkpoint is
written, reloaded with load_model and checked to give the same logits; section 5
exports it. Last, the trainer's step before and after issue 25 (gpu_check_step.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from bench_idd import cityscapes_like_labels
from gpu_check_plan import (
    AMP_MODES,
    BASE_STUDENT,
    NUM_CLASSES,
    REALTIME_STUDENTS,
    Plan,
    Skipped,
    autocast_dtype,
    first_line,
    row,
)
from gpu_check_step import step_before_after

from core.labels import CITYSCAPES
from core.preprocess import PreprocessSpec
from distill.checkpoint import atomic_torch_save, load_model, make_checkpoint
from distill.distillation import DistillConfig, DistillObjective
from distill.losses import PositionReadout
from distill.models import available_models, build_model

WITHOUT_IDD_PID = ("cwd",)  # the default objective minus the two terms whose share is measured


def students(plan: Plan) -> tuple[list[str], list[list[str]]]:
    """The students to distil into, and a skip row for each real-time one not registered."""
    known = set(available_models())
    chosen, skipped = [BASE_STUDENT], []
    for name in REALTIME_STUDENTS:
        if name in known:
            chosen.append(name)
        else:
            skipped.append(row(name, "skipped", "not in the model registry (not merged yet)"))
    return chosen, skipped


class StepRunner:
    """One student, one teacher, one objective: times `n` optimizer steps."""

    def __init__(
        self,
        student: torch.nn.Module,
        teacher: torch.nn.Module,
        readout: PositionReadout,
        losses: tuple[str, ...],
        amp: str,
        device: torch.device,
    ) -> None:
        self.student, self.device, self.amp = student, device, amp
        self.objective = DistillObjective(
            teacher, student.feat_channels, NUM_CLASSES, DistillConfig(losses=losses), readout
        ).to(device)
        params = [p for p in student.parameters() if p.requires_grad]
        params += [p for p in self.objective.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9, weight_decay=1e-4)
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.finite = torch.ones((), dtype=torch.bool, device=device)
        self.last: dict[str, torch.Tensor] = {}

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        dtype = getattr(torch, autocast_dtype(self.amp, self.device.type))
        with torch.autocast(self.device.type, dtype=dtype):
            terms = self.objective(images, labels, self.student(images))
        # Checked on the device and read once at the end: no host sync inside the timing.
        self.finite &= torch.stack([v.detach().float() for v in terms.values()]).isfinite().all()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(terms["loss"]).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.last = terms

    def timed(self, images: torch.Tensor, labels: torch.Tensor, warmup: int, n: int) -> float:
        for _ in range(warmup):
            self.step(images, labels)
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(n):
            self.step(images, labels)
        sync(self.device)
        return (time.perf_counter() - t0) / n


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def random_batch(plan: Plan, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    h, w = plan.train_size
    g = torch.Generator().manual_seed(0)
    images = torch.randn(plan.batch, 3, h, w, generator=g).to(device)
    labels = cityscapes_like_labels(plan.batch, h, w, NUM_CLASSES).to(device)
    if device.type == "cuda":  # what the trainer does with --channels-last (its default)
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels


def write_student(
    student: torch.nn.Module, arch: str, plan: Plan, out: Path, device: torch.device
) -> dict[str, Any]:
    """Student-only checkpoint (no teacher, no adapters), reloaded and compared."""
    path = out / "students" / f"{arch}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(
        model=student,
        arch=arch,
        model_kwargs=student.model_kwargs,
        labels=CITYSCAPES,  # NUM_CLASSES: the cost of a Cityscapes model
        preprocess=PreprocessSpec(input_size=plan.export_size),
        config={"data": "synthetic", "model": arch},
        role="student",
        extra={"gpu_check": {"trained_on": str(device), "steps": "random data"}},
    )
    atomic_torch_save(ckpt, path)
    reloaded, back = load_model(path, device=device)
    student.eval()
    x = torch.randn(1, 3, *plan.train_size, generator=torch.Generator().manual_seed(3)).to(device)
    with torch.no_grad():
        diff = (student(x).float() - reloaded(x).float()).abs().max().item()
    student.train()
    keys = set(back["state_dict"])
    return {
        "path": str(path),
        "size_mib": round(path.stat().st_size / 2**20, 1),
        "keys_match_student": keys == set(student.state_dict()),
        "reload_max_abs_logit_diff": diff,
        "ok": diff == 0.0 and keys == set(student.state_dict()),
    }


def distil_one(
    arch: str,
    teacher: torch.nn.Module,
    readout: PositionReadout,
    plan: Plan,
    out: Path,
    device: torch.device,
    deadline: float,
) -> tuple[dict[str, Any], list[list[str]]]:
    torch.manual_seed(0)
    student = build_model(arch, NUM_CLASSES).to(device).train()
    if device.type == "cuda":
        student = student.to(memory_format=torch.channels_last)
    images, labels = random_batch(plan, device)
    result: dict[str, Any] = {"runs": {}}
    rows = []
    for amp in AMP_MODES:
        if time.time() > deadline:
            rows.append(row(f"{arch} {amp}", "skipped", "time budget spent"))
            continue
        try:
            reset_memory(device)
            runner = StepRunner(student, teacher, readout, DistillConfig().losses, amp, device)
            step_s = runner.timed(images, labels, plan.warmup_steps, plan.timed_steps)
            peak = peak_gib(device)
            finite = bool(runner.finite.item())
            terms = {k: float(v.detach()) for k, v in runner.last.items()}
            del runner
            without = StepRunner(student, teacher, readout, WITHOUT_IDD_PID, amp, device)
            step_wo = without.timed(images, labels, 1, plan.timed_steps)
            del without
            run = {
                "step_ms": round(1e3 * step_s, 2),
                "images_per_s": round(plan.batch / step_s, 2),
                "peak_gpu_gib": peak,
                "losses_finite": finite,
                "last_terms": terms,
                "step_ms_without_idd_pid": round(1e3 * step_wo, 2),
                "idd_pid_share": round(max(0.0, (step_s - step_wo) / step_s), 3),
                "grad_scaler": amp == "fp16",
                "autocast_dtype": autocast_dtype(amp, device.type),
            }
            result["runs"][amp] = run
            mem = f", peak {peak} GiB" if peak is not None else ""
            rows.append(
                row(
                    f"{plan.teacher} -> {arch}, AMP {amp}",
                    "ok" if finite else "FAILED",
                    f"{run['images_per_s']} img/s ({run['step_ms']} ms/step){mem}, "
                    f"losses finite: {finite}, IDD+PID {100 * run['idd_pid_share']:.1f} % of a step"
                    f" (autocast {run['autocast_dtype']})",
                )
            )
            if amp == "fp16":
                ck = write_student(student, arch, plan, out, device)
                result["checkpoint"] = ck
                rows.append(
                    row(
                        f"{arch} student-only checkpoint",
                        "ok" if ck["ok"] else "FAILED",
                        f"{ck['size_mib']} MiB, reloaded: max |Δlogit| {ck['reload_max_abs_logit_diff']:.1e}",
                    )
                )
        except Exception as e:  # one failed run must not cost the others
            if device.type == "cuda":
                torch.cuda.empty_cache()
            result["runs"][amp] = {"error": first_line(e)}
            rows.append(row(f"{plan.teacher} -> {arch}, AMP {amp}", "FAILED", first_line(e)))
    return result, rows


def section_distill(plan: Plan, out: Path, deadline: float) -> dict[str, Any]:
    device = torch.device(plan.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise Skipped("no CUDA GPU visible to torch")
    chosen, rows = students(plan)
    torch.manual_seed(0)
    teacher = build_model(plan.teacher, NUM_CLASSES).to(device).eval()
    if device.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    # A random readout costs what a fitted one costs; only the step is measured here.
    readout = PositionReadout(teacher.feat_channels, 2)
    result: dict[str, Any] = {
        "teacher": plan.teacher,
        "size": list(plan.train_size),
        "batch": plan.batch,
        "losses": list(DistillConfig().losses),
        "channels_last": device.type == "cuda",
        "students": {},
    }
    for arch in chosen:
        try:
            result["students"][arch], more = distil_one(
                arch, teacher, readout, plan, out, device, deadline
            )
        except Exception as e:  # e.g. a new architecture without the extract() interface
            result["students"][arch] = {"error": first_line(e)}
            more = [row(f"{plan.teacher} -> {arch}", "FAILED", first_line(e))]
        rows.extend(more)
    if time.time() < deadline:  # the trainer's step before and after issue 25
        try:
            result["step_before_after"], more = step_before_after(plan, teacher, readout, device)
        except Exception as e:
            result["step_before_after"] = {"error": first_line(e)}
            more = [row("distillation step before/after issue 25", "FAILED", first_line(e))]
        rows.extend(more)
    fp16 = result["students"].get(BASE_STUDENT, {}).get("runs", {}).get("fp16", {})
    if fp16.get("peak_gpu_gib") is not None:
        peak_gb = fp16["peak_gpu_gib"] * 2**30 / 1e9
        result["goal_peak_under_40gb"] = peak_gb < 40
        rows.append(
            row(
                "goal: AMP fp16 distillation peak < 40 GB at batch 8",
                "met" if result["goal_peak_under_40gb"] else "NOT met",
                f"{peak_gb:.1f} GB at batch {plan.batch}",
            )
        )
    result["rows"] = rows
    return result
