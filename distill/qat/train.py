"""Fine-tune the fake-quant graph to reproduce the fp32 student (and its teacher's view).

The loss is knowledge distillation from the fp32 student itself: the same graph run
without fake quantization gives the soft targets (pixel-wise KL at temperature T), so the
objective is the deploy metric, agreement with fp32, made differentiable. The distillation
teacher can join as a second KD target (opts.teacher_weight); it pulls the INT8 student
toward the teacher and away from the fp32 one (docs/notes/qat.md measures both).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from core.errors import SegkdError
from core.numbers import finite, positive_int
from core.options import cli_flag
from core.schema.qat import QAT
from distill.qat.graph_module import QuantGraph

_D = QAT.defaults()
SCHEDULES = ("constant", "cosine")


@dataclass(frozen=True)
class QatOptions:
    """The fine-tuning's settings; defaults and the reasons for them: core/schema/qat.py."""

    steps: int = _D["steps"]
    batch_size: int = _D["batch_size"]
    crop_size: tuple[int, int] | None = _D["crop_size"]  # None: whole deploy-size images
    lr: float = _D["lr"]
    scale_lr: float = _D["scale_lr"]
    schedule: str = _D["schedule"]
    learn_scales: bool = _D["learn_scales"]
    teacher_weight: float = _D["teacher_weight"]
    temperature: float = _D["temperature"]
    seed: int = _D["seed"]

    def __post_init__(self) -> None:
        """One line naming the option (as `segkd qat` spells it) for a value no run can use."""
        for name in ("steps", "batch_size"):
            positive_int(cli_flag(name), getattr(self, name))
        for name in ("lr", "scale_lr", "temperature"):
            finite(cli_flag(name), getattr(self, name), low=0.0, low_open=True)
        finite("--teacher-weight", self.teacher_weight, low=0.0)
        if self.schedule not in SCHEDULES:
            raise SegkdError(
                f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}"
            )

    @classmethod
    def from_options(cls, values: Mapping[str, Any], **given: Any) -> QatOptions:
        """The fields that `values` (a command's options or the pipeline's qat section)
        holds; `given` (values parsed by the caller, e.g. crop_size) take precedence."""
        names = {f.name for f in fields(cls)} - set(given)
        return cls(**{k: v for k, v in values.items() if k in names}, **given)

    def to_dict(self) -> dict:
        return asdict(self)


def lr_factor(schedule: str, steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step: 1, or a cosine from 1 down to 0."""
    if schedule == "cosine":
        return lambda step: 0.5 * (1.0 + math.cos(math.pi * step / steps))
    return lambda step: 1.0


def precondition_folded(weights: Sequence[torch.Tensor]) -> list:
    """Step folded Conv kernels as SGD would step the unfolded ones (gradient hooks).

    A kernel W' = k W carries its BatchNorm's per-channel factor k; SGD on W' moves it by
    lr * g / k where SGD on W (what trained the student) moves W' by lr * k^2 * g / k... so
    channels with a small k get relatively huge steps on W' and the ones with a large k
    none. Multiplying the gradient by k^2 restores the trained parametrisation. k is
    estimated per output channel as rms(W') / sqrt(2 / fan_in), the He-init rms the
    unfolded kernel has (weight decay keeps it there).
    """
    handles = []
    for w in weights:
        fan_in = w[0].numel()
        rms = w.detach().pow(2).flatten(1).mean(dim=1).sqrt()
        k2 = (rms / math.sqrt(2.0 / fan_in)).pow(2).view(-1, *([1] * (w.dim() - 1)))
        handles.append(w.register_hook(lambda g, k2=k2: g * k2))
    return handles


def kd_loss(student: torch.Tensor, target: torch.Tensor, t: float) -> torch.Tensor:
    """Mean over pixels of KL(softmax(target/t) || softmax(student/t)) * t^2."""
    log_p = F.log_softmax(student / t, dim=1)
    q = F.softmax(target / t, dim=1)
    return (q * (torch.log(q.clamp_min(1e-12)) - log_p)).sum(dim=1).mean() * t * t


def random_crop(
    x: torch.Tensor, crop: tuple[int, int] | None, gen: torch.Generator
) -> torch.Tensor:
    """One random HxW window of the batch `x` (the same for every image); `x` if None."""
    if crop is None:
        return x
    h, w = crop
    top = int(torch.randint(x.shape[-2] - h + 1, (), generator=gen))
    left = int(torch.randint(x.shape[-1] - w + 1, (), generator=gen))
    return x[..., top : top + h, left : left + w]


def teacher_logits(teacher: torch.nn.Module, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """The frozen teacher's logits for the batch `x`, bilinearly resized to `size`."""
    with torch.no_grad():
        logits = teacher.extract(x, with_aux=False)["logits"]
    if logits.shape[-2:] != size:
        logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
    return logits


Objective = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def train_qat(
    graph: QuantGraph,
    images: Sequence[np.ndarray],
    opts: QatOptions,
    progress: Callable[[int, float], None] | None = None,
    teacher: torch.nn.Module | None = None,
    objective: Objective = kd_loss,
) -> dict:
    """Run `opts.steps` steps on random batches (crops) of `images` (1x3xHxW float32 each).

    `teacher` (frozen, fed the same batch) adds opts.teacher_weight * KD to its logits,
    resized to the graph's. `objective(logits, fp32 logits, temperature)` is the loss
    against the fp32 student (benchmarks/qat_sweep.py tries others). `progress(step, loss)`
    is called after every step. Returns the facts the report needs: steps, seconds, losses.
    """
    gen = torch.Generator().manual_seed(opts.seed)
    hooks = precondition_folded(graph.conv_weight_parameters())
    optimizers: list[torch.optim.Optimizer] = [
        torch.optim.SGD(graph.weight_parameters(), lr=opts.lr, momentum=0.9)
    ]
    if opts.learn_scales:
        optimizers.append(torch.optim.Adam(graph.scale_parameters(), lr=opts.scale_lr))
    else:
        for p in graph.scale_parameters():
            p.requires_grad_(False)
    factor = lr_factor(opts.schedule, opts.steps)
    schedulers = [torch.optim.lr_scheduler.LambdaLR(opt, factor) for opt in optimizers]
    # The soft targets come from the fp32 student as it was, not from the weights being
    # tuned: a frozen copy of the graph run without fake quantization.
    reference = copy.deepcopy(graph).requires_grad_(False)
    reference.quantize = False
    data = torch.from_numpy(np.concatenate(list(images), axis=0))
    losses: list[float] = []
    rates: list[list[float]] = []  # per step, each optimizer's rate as it stepped
    started = time.perf_counter()
    for step in range(opts.steps):
        idx = torch.randint(len(data), (opts.batch_size,), generator=gen)
        x = random_crop(data[idx], opts.crop_size, gen)
        if torch.rand((), generator=gen) < 0.5:
            x = x.flip(-1)  # horizontal flip: more views of few images
        with torch.no_grad():
            target = reference(x)
        out = graph(x)
        loss = objective(out, target, opts.temperature)
        if teacher is not None and opts.teacher_weight > 0:
            loss = loss + opts.teacher_weight * kd_loss(
                out, teacher_logits(teacher, x, out.shape[-2:]), opts.temperature
            )
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"QAT loss is {value} at step {step}")
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        loss.backward()
        for opt in optimizers:
            opt.step()
        rates.append([opt.param_groups[0]["lr"] for opt in optimizers])
        for sched in schedulers:
            sched.step()
        losses.append(value)
        if progress is not None:
            progress(step + 1, value)
    seconds = time.perf_counter() - started
    for h in hooks:
        h.remove()
    window = max(1, min(10, len(losses)))
    return {
        "steps": opts.steps,
        "seconds": seconds,
        "seconds_per_step": seconds / max(1, opts.steps),
        "loss_first": float(np.mean(losses[:window])) if losses else None,
        "loss_last": float(np.mean(losses[-window:])) if losses else None,
        # [first step's, last step's] rate per parameter group (the schedule's effect)
        "learning_rates": {
            name: [rates[0][i], rates[-1][i]]
            for i, name in enumerate(("weights", "scales")[: len(optimizers)])
        },
    }
