"""Iteration-based trainer shared by `segkd train` and `segkd distill`.

One loop for one CPU, one GPU or many GPUs under torchrun (DDP). The objective is an
nn.Module returning a dict with "loss" plus one entry per logged term, so distillation
plugs in its teacher and adapters without touching the loop.

Under DDP every rank runs every step of the loop below. The steady-state step reads
nothing back to the host and adds no collective of its own: non-finite losses are counted
on the device (step_health.py) and looked at every log interval, before every evaluation
and at the end; an exception on one rank reaches the others through the rendezvous store
(failure_board.py), never through a collective that could pair with SyncBatchNorm's.
Either way every rank stops with the same one-line error.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from core.atomic_io import write_json_atomic
from core.errors import SegkdError
from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from distill.checkpoint import atomic_torch_save, make_checkpoint
from distill.data import build_dataset
from distill.data.loader import NetworkInput, make_train_loader, workers_per_process
from distill.data.spec import deploy_preprocess
from distill.data.transforms import TrainTransform
from distill.training.config import TrainConfig
from distill.training.distributed import (
    DistContext,
    broadcast_buffers,
    fail_together,
    init_distributed,
    shutdown,
)
from distill.training.evaluation import ValScores, evaluate_model, selection_indices
from distill.training.failure_board import FailureBoard, stop_together
from distill.training.setup import (
    ObjectiveFactory,
    Progress,
    SupervisedObjective,
    TrainStep,
    build_networks,
    build_optimizer,
    claim_output,
    pick_device,
    restore,
)
from distill.training.step_health import StepHealth

__all__ = ["SupervisedObjective", "pick_device", "train", "train_resolved"]

log = logging.getLogger(__name__)

EvalHook = Callable[[nn.Module, int], dict[str, Any]]
# Buffers are broadcast at each checkpoint of the loop instead, so that they are equal on
# all ranks at evaluation and at the end; DDP still broadcasts everything once at init.
NO_FORWARD_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    else {"broadcast_buffers": False}  # torch < 2.13
)
SELECTED_BY = "val_miou"  # native resolution, on the selection images


class MetricsLog:
    """Append-only JSONL log; each line is complete, so a crash loses at most one line."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


@dataclass
class Run:
    """Everything the loop touches, built once by `prepare`."""

    cfg: TrainConfig
    ctx: DistContext
    device: torch.device
    out: Path
    labels: LabelSpec
    preprocess: PreprocessSpec
    train_set: Any
    val_set: Any
    selection: list[int]  # the val images every evaluation that can pick best.pt scores
    model: nn.Module
    objective: nn.Module
    step: nn.Module  # TrainStep, DDP-wrapped under torchrun
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    progress: Progress
    checkpoint_extra: dict[str, Any]
    network_input: NetworkInput

    @property
    def amp(self) -> bool:
        return self.cfg.amp and self.device.type == "cuda"

    @property
    def amp_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.cfg.amp_dtype == "bfloat16" else torch.float16

    @property
    def resume_path(self) -> Path:
        return self.out / "resume.pt"


def train(
    config: TrainConfig,
    objective_factory: ObjectiveFactory | None = None,
    eval_hook: EvalHook | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `config.model` on `config.data`; returns the final summary (also in summary.json)."""
    cfg = config.resolved()
    ctx = init_distributed(cfg.device, cfg.dist_timeout)
    created = not Path(cfg.out).exists()
    try:
        return train_resolved(cfg, ctx, objective_factory, eval_hook, checkpoint_extra)
    except SegkdError:
        if created and ctx.is_main:  # bad data found before anything was written: no empty --out
            with contextlib.suppress(OSError):
                Path(cfg.out).rmdir()  # only if still empty
        raise
    finally:
        shutdown(ctx)


def train_resolved(
    cfg: TrainConfig,
    ctx: DistContext,
    objective_factory: ObjectiveFactory | None = None,
    eval_hook: EvalHook | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The loop, for a config already `resolved()` and a joined process group."""
    run = prepare(cfg, ctx, objective_factory, checkpoint_extra or {})
    loader = make_train_loader(
        run.train_set,
        run.preprocess,
        batch_size=cfg.batch_size,
        num_workers=workers_per_process(cfg.num_workers),
        seed=cfg.seed + 1000 * run.progress.iteration,  # a resumed run does not replay batches
        distributed=ctx.enabled,
    )
    metrics_log = MetricsLog(run.out / "metrics.jsonl", ctx.is_main)
    metrics_log.write(
        {"event": "start", "iter": run.progress.iteration, "config": cfg.to_dict(),
         "selection": selection_record(run)}
    )  # fmt: skip
    eval_every = cfg.eval_interval or max(1, math.ceil(cfg.iters / 4))
    bar = tqdm(
        total=cfg.iters, initial=run.progress.iteration, disable=not ctx.is_main,
        desc=f"{cfg.role} {cfg.model}", dynamic_ncols=True,
    )  # fmt: skip
    # fp16 AMP: GradScaler skips a non-finite step, so only a run of them stops training.
    scaling = run.scaler.is_enabled()
    health = StepHealth(cfg.max_skips if scaling else 1, skipping=scaling)
    board = FailureBoard(ctx)
    t0, last_metrics = time.perf_counter(), {}
    with stop_together(ctx, board):
        for it in range(run.progress.iteration, cfg.iters):
            lr = set_learning_rate(run, it)
            terms = forward(run, next(loader))
            health.record(terms, it)
            backward(run, terms["loss"])
            bar.update(1)
            done = it + 1
            logs = done % cfg.log_interval == 0 or done == cfg.iters
            evaluates = done % eval_every == 0 or done == cfg.iters
            if not (logs or evaluates):
                continue  # the steady state: nothing read back, nothing exchanged
            # The checkpoint. Safe for a collective: every rank runs the same sequence of
            # collectives, and here each has issued all of step `it`'s (SyncBatchNorm's in
            # the forward, DDP's gradient all-reduce) and none of the next step's. `arrive`
            # first waits, through the store, until every rank got here: a rank that failed
            # inside the step never does, and its posted message is read instead, so the
            # all-reduce in `check` cannot pair with a collective of another step. Nothing is
            # logged or saved before the check passed.
            board.arrive()
            skips = health.check(ctx, run.out)
            # BatchNorm running statistics: rank 0's on every rank before any evaluation or
            # checkpoint. Only here: they never enter a training step (BN normalises with
            # the batch's statistics in training), and rank 0's do not depend on the others'.
            broadcast_buffers(run.step, ctx)
            if logs:
                log_step(terms, {"iter": done, "lr": lr, "time_s": time.perf_counter() - t0,
                                 **skips}, metrics_log, bar)  # fmt: skip
            if evaluates:
                last_metrics = evaluate_and_save(run, done, eval_hook, metrics_log, bar)
    bar.close()
    return write_summary(run, last_metrics, time.perf_counter() - t0)


def prepare(
    cfg: TrainConfig,
    ctx: DistContext,
    objective_factory: ObjectiveFactory | None,
    checkpoint_extra: dict[str, Any],
) -> Run:
    """Output folder, data, networks, optimizer, resumed state; then DDP (a collective).
    Each step fails on every rank or on none."""
    with fail_together(ctx):  # first, before anything else: rank 0's verdict on --out
        out = claim_output(cfg, ctx)
    with fail_together(ctx):
        device = pick_device(cfg.device, ctx)
        train_set = build_dataset(
            cfg.data, "train", transform=TrainTransform(cfg.crop_size, scale_range=cfg.scale_range)
        )
        val_set = build_dataset(cfg.data, "val")
        labels: LabelSpec = train_set.labels
        model, objective = build_networks(cfg, ctx, labels, device, objective_factory)
        optimizer = build_optimizer(cfg, model, objective, device)
        bf16 = cfg.amp and cfg.amp_dtype == "bfloat16" and device.type == "cuda"
        if bf16 and not torch.cuda.is_bf16_supported():
            raise SegkdError(
                f"--amp-dtype bfloat16: {torch.cuda.get_device_name(device)} has no bf16"
            )
        # bf16 has float32's range: no loss scaling, so no scaler.
        scaler = torch.amp.GradScaler(
            "cuda", enabled=cfg.amp and device.type == "cuda" and not bf16
        )
        progress = Progress()
        if cfg.resume:
            progress = restore(
                out / "resume.pt", cfg, labels, (model, objective), optimizer, scaler
            )
            log.info("resumed %s at iteration %d", out / "resume.pt", progress.iteration)
    step: nn.Module = TrainStep(model, objective)
    if ctx.enabled:  # broadcasts rank 0's student AND objective; averages both's gradients
        step = nn.parallel.DistributedDataParallel(
            step, device_ids=[device.index] if device.type == "cuda" else None, **NO_FORWARD_SYNC
        )
    torch.manual_seed(cfg.seed + ctx.rank)  # from here on, per-rank randomness
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crops: tune each conv's algorithm once
    model.train()
    channels_last = device.type == "cuda" and cfg.channels_last
    preprocess = deploy_preprocess(cfg.data, cfg.export_size)
    return Run(
        cfg=cfg, ctx=ctx, device=device, out=out, labels=labels,
        preprocess=preprocess, train_set=train_set,
        val_set=val_set, selection=selection_indices(len(val_set), cfg.val_images),
        model=model, objective=objective, step=step, optimizer=optimizer, scaler=scaler,
        progress=progress, checkpoint_extra=checkpoint_extra,
        network_input=NetworkInput(preprocess, device, channels_last),
    )  # fmt: skip


def log_step(
    terms: dict[str, torch.Tensor], record: dict[str, Any], metrics_log: MetricsLog, bar: tqdm
) -> None:
    """The loss terms, read back in one host transfer."""
    values = torch.stack([v.detach().float() for v in terms.values()]).tolist()
    record.update(zip(terms, values, strict=True))
    bar.set_postfix(loss=f"{record['loss']:.3f}")
    metrics_log.write(record)


def set_learning_rate(run: Run, it: int) -> float:
    """Linear warm-up, then poly decay (the segmentation standard)."""
    cfg = run.cfg
    if cfg.warmup_iters > 0 and it < cfg.warmup_iters:
        lr = cfg.lr * (it + 1) / cfg.warmup_iters
    else:
        lr = cfg.lr * (1.0 - min(it, cfg.iters - 1) / cfg.iters) ** cfg.poly_power
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    return lr


def forward(run: Run, batch: tuple[torch.Tensor, torch.Tensor]) -> dict[str, torch.Tensor]:
    """uint8 batch -> device, normalised there -> the objective's terms (device tensors)."""
    images, targets = run.network_input(batch)
    autocast = torch.autocast("cuda", dtype=run.amp_dtype) if run.amp else nullcontext()
    with autocast:
        return run.step(images, targets)


def backward(run: Run, loss: torch.Tensor) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.scale(loss).backward()  # DDP averages student and adapter gradients here
    run.scaler.step(run.optimizer)
    run.scaler.update()


def evaluate_and_save(
    run: Run, done: int, eval_hook: EvalHook | None, metrics_log: MetricsLog, bar: tqdm
) -> dict[str, Any]:
    """Score the selection images (native and deploy size), pick best.pt on them only,
    write best/last/resume. The final evaluation also scores the whole split, for the
    record: that figure never competes for best.pt."""
    cfg, ctx, progress = run.cfg, run.ctx, run.progress

    def score(indices: list[int] | None) -> ValScores:
        return evaluate_model(
            run.model, run.val_set, run.labels, run.preprocess, run.device,
            indices=indices, ctx=ctx, amp=run.amp,
        )  # fmt: skip

    scores = score(run.selection)
    metrics: dict[str, Any] = {**scores.to_metrics(), "iter": done}
    if done == cfg.iters and len(run.selection) < len(run.val_set):
        metrics.update(score(None).to_metrics("_all"))
    if eval_hook is not None:
        metrics.update(eval_hook(run.model, done))
    run.model.train()
    improved = scores.native.miou > progress.best_miou
    if improved:
        progress.best_miou, progress.best_iter = scores.native.miou, done
        progress.best = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    progress.iteration = done
    with fail_together(ctx):  # rank 0 writes; a failed write stops every rank
        if ctx.is_main:
            metrics_log.write({"event": "eval", **metrics})
            save_checkpoints(run, done, metrics, improved)
            h, w = scores.deploy_size
            bar.write(
                f"iter {done}: val mIoU {scores.native.miou:.4f} native, "
                f"{scores.deploy.miou:.4f} at {h}x{w} (deploy) on {scores.images}/"
                f"{len(run.val_set)} images (best {progress.best_miou:.4f} @ {progress.best_iter})"
            )
    return metrics


def save_checkpoints(run: Run, done: int, metrics: dict[str, Any], improved: bool) -> None:
    cfg = run.cfg
    ckpt = make_checkpoint(
        model=run.model, arch=cfg.model, model_kwargs=run.model.model_kwargs, labels=run.labels,
        preprocess=run.preprocess, config=cfg.to_dict(), metrics=metrics, iteration=done,
        role=cfg.role, extra=run.checkpoint_extra,
    )  # fmt: skip
    if improved:
        atomic_torch_save(ckpt, run.out / "best.pt")
    atomic_torch_save(ckpt, run.out / "last.pt")
    ckpt["train_state"] = {
        "objective": run.objective.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scaler": run.scaler.state_dict(),
        **run.progress.state(),
    }
    atomic_torch_save(ckpt, run.resume_path)  # written last: it never points past last.pt


def selection_record(run: Run) -> dict[str, Any]:
    """Which images and which figure choose best.pt (summary.json and the log say it)."""
    return {
        "metric": SELECTED_BY,
        "images": len(run.selection),
        "of": len(run.val_set),
        "indices": run.selection,
        "deploy_size": list(run.preprocess.input_size),
    }


def write_summary(run: Run, last_metrics: dict[str, Any], train_time_s: float) -> dict[str, Any]:
    cfg, progress = run.cfg, run.progress
    summary = {
        "model": cfg.model,
        "role": cfg.role,
        "iters": cfg.iters,
        "best_miou": progress.best_miou,
        "best_iter": progress.best_iter,
        "best": progress.best,
        "selection": selection_record(run),
        "final": last_metrics,
        "train_time_s": train_time_s,
        "device": str(run.device),
        "world_size": run.ctx.world_size,
        "checkpoints": {"best": str(run.out / "best.pt"), "last": str(run.out / "last.pt")},
    }
    if run.ctx.is_main:
        write_json_atomic(summary, run.out / "summary.json")
    return summary
