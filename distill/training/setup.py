"""The steps before the first iteration: claim the output folder, build the networks and
the optimizer, restore a resumed run. Nothing here talks to the other ranks; the trainer
runs each step under `fail_together` so a refusal on one rank stops all of them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import SegkdError
from core.labels import LabelSpec
from distill.checkpoint import load_checkpoint
from distill.losses.recipe import loss_from_config
from distill.losses.segmentation import SegmentationLoss
from distill.models import build_model
from distill.training.config import TrainConfig
from distill.training.distributed import DistContext

ObjectiveFactory = Callable[[nn.Module, LabelSpec, torch.device], nn.Module]


class SupervisedObjective(nn.Module):
    """Plain training: cross-entropy (+ aux) in the objective interface the loop expects."""

    def __init__(self, aux_weight: float, ignore_index: int, loss: nn.Module | None = None) -> None:
        super().__init__()
        self.loss = (
            loss
            if loss is not None
            else SegmentationLoss(aux_weight=aux_weight, ignore_index=ignore_index)
        )

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, student_out: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return self.loss(student_out, labels)


class TrainStep(nn.Module):
    """Student and objective as ONE module, so DDP broadcasts the objective's adapters at
    the start and averages their gradients exactly as it does the student's."""

    def __init__(self, model: nn.Module, objective: nn.Module) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.objective(images, targets, self.model(images))


@dataclass
class Progress:
    """Where a run stands; what resume.pt carries besides the weights."""

    iteration: int = 0
    best_miou: float = -1.0
    best_iter: int = -1
    best: dict[str, Any] = field(default_factory=dict)  # the scalar metrics at best_iter

    def state(self) -> dict[str, Any]:
        return {
            "iteration": self.iteration,
            "best_miou": self.best_miou,
            "best_iter": self.best_iter,
            "best": self.best,
        }


def pick_device(name: str, ctx: DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SegkdError(f"--device {name}: CUDA is not available on this machine")
        return torch.device(
            "cuda", ctx.local_rank if ctx.enabled else torch.device(name).index or 0
        )
    if name != "cpu":
        raise SegkdError(f"--device must be auto, cpu or cuda[:N], got {name!r}")
    return torch.device("cpu")


def claim_output(cfg: TrainConfig, ctx: DistContext) -> Path:
    """Rank 0 creates --out and refuses a folder that already holds a run."""
    out = Path(cfg.out)
    if not ctx.is_main:
        return out
    out.mkdir(parents=True, exist_ok=True)
    if not cfg.resume and (out / "resume.pt").exists():
        raise SegkdError(
            f"{out} already holds a run (resume.pt); pass --resume to continue it or choose another --out"
        )
    for stale in out.glob(".*.pt.*.tmp"):  # temp files a killed run's writes left (100 MB each)
        stale.unlink(missing_ok=True)
    return out


def build_networks(
    cfg: TrainConfig,
    ctx: DistContext,
    labels: LabelSpec,
    device: torch.device,
    objective_factory: ObjectiveFactory | None,
) -> tuple[nn.Module, nn.Module]:
    """Student and objective, initialised from the run's seed alone: the same on every rank
    even before DDP's broadcast."""
    torch.manual_seed(cfg.seed)
    model = build_model(
        cfg.model,
        labels.num_classes,
        aux=cfg.aux_weight > 0,
        deep_stem=cfg.deep_stem,
        backbone_weights=cfg.backbone_weights,
    )
    if cfg.sync_bn and ctx.enabled and device.type == "cuda":  # torch's SyncBN is GPU-only
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    objective = (
        objective_factory(model, labels, device)
        if objective_factory
        else SupervisedObjective(
            cfg.aux_weight,
            labels.ignore_index,
            loss_from_config(cfg, labels.num_classes, labels.ignore_index, cfg.aux_weight),
        )
    ).to(device)
    if device.type == "cuda" and cfg.channels_last:
        # The teacher (inside the objective) too: it sees the student's channels_last
        # input, and an NCHW teacher would convert every activation back and forth.
        model.to(memory_format=torch.channels_last)
        objective.to(memory_format=torch.channels_last)
    return model, objective


def build_optimizer(
    cfg: TrainConfig, model: nn.Module, objective: nn.Module, device: torch.device
) -> torch.optim.SGD:
    """SGD; fused on CUDA, where GradScaler then hands it the inf check as a tensor instead
    of reading it on the host before every step (`_step_supports_amp_scaling`)."""
    params = [p for m in (model, objective) for p in m.parameters() if p.requires_grad]
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        fused=True if device.type == "cuda" else None,
    )  # fmt: skip


def restore(
    path: Path,
    cfg: TrainConfig,
    labels: LabelSpec,
    modules: tuple[nn.Module, nn.Module],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
) -> Progress:
    """Load resume.pt into the student, objective, optimizer and scaler; refuse a file of
    another run with one line."""
    if not path.exists():
        raise SegkdError(f"--resume: no resume.pt in {path.parent}; nothing to continue")
    state = load_checkpoint(path)
    if state["arch"] != cfg.model:
        raise SegkdError(f"--resume: {path} is a {state['arch']} run, not {cfg.model}")
    saved_names = list(state["labels"].get("names", []))
    if saved_names != list(labels.names):
        raise SegkdError(
            f"--resume: {path} was trained on {len(saved_names)} classes, but "
            f"--data {cfg.data} has {labels.num_classes}; resume with the run's own --data"
        )
    model, objective = modules
    try:  # other losses / adapters / a file without train_state: refuse, do not crash
        model.load_state_dict(state["state_dict"])
        ts = state["train_state"]
        objective.load_state_dict(ts["objective"])
        optimizer.load_state_dict(ts["optimizer"])
        scaler.load_state_dict(ts["scaler"])
        progress = Progress(
            iteration=int(ts["iteration"]),
            best_miou=float(ts["best_miou"]),
            best_iter=int(ts["best_iter"]),
            best=dict(ts.get("best", {})),
        )
    except (KeyError, RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SegkdError(
            f"--resume: {path} does not fit this run's settings ({first[:160]}); "
            "resume with the options it was started with"
        ) from None
    if progress.iteration >= cfg.iters:  # resuming would only overwrite the finished summary
        raise SegkdError(
            f"--resume: {path} is a finished run (iteration {progress.iteration}, --iters "
            f"{cfg.iters}); nothing to continue: its files are kept. Pass a larger --iters "
            "with --change iters to train on, or choose another --out"
        )
    return progress
