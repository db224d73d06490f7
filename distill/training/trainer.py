"""Iteration-based trainer shared by `segkd train` and `segkd distill`.

One loop for one CPU, one GPU or many GPUs under torchrun (DDP). The objective is an
nn.Module returning a dict with "loss" plus one entry per logged term, so distillation
plugs in its teacher and adapters without touching the loop.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from distill.checkpoint import atomic_torch_save, load_checkpoint, make_checkpoint
from distill.data import build_dataset, dataset_defaults, parse_dataset_spec
from distill.data.loader import make_train_loader
from distill.data.spec import deploy_preprocess
from distill.data.transforms import TrainTransform
from distill.losses.segmentation import SegmentationLoss
from distill.models import build_model
from distill.training.config import TrainConfig
from distill.training.distributed import (
    DistContext,
    average_gradients,
    barrier,
    init_distributed,
    shutdown,
)
from distill.training.evaluation import evaluate_model
from distill.training.schedule import poly_lr
from runtime.errors import SegkdError
from runtime.labels import LabelSpec

log = logging.getLogger(__name__)

ObjectiveFactory = Callable[[nn.Module, LabelSpec, torch.device], nn.Module]
EvalHook = Callable[[nn.Module, int], dict[str, Any]]


class SupervisedObjective(nn.Module):
    """Plain training: cross-entropy (+ aux) in the objective interface the loop expects."""

    def __init__(self, aux_weight: float, ignore_index: int) -> None:
        super().__init__()
        self.loss = SegmentationLoss(aux_weight=aux_weight, ignore_index=ignore_index)

    def forward(
        self, images: torch.Tensor, labels: torch.Tensor, student_out: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        return self.loss(student_out, labels)


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


class MetricsLog:
    """Append-only JSONL log; each line is complete, so a crash loses at most one line."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def train(
    config: TrainConfig,
    objective_factory: ObjectiveFactory | None = None,
    eval_hook: EvalHook | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train `config.model` on `config.data`; returns the final summary (also in summary.json)."""
    spec = parse_dataset_spec(config.data)
    cfg = config.resolved(dataset_defaults(spec))
    ctx = init_distributed(cfg.device)
    try:
        return _train(cfg, ctx, objective_factory, eval_hook, checkpoint_extra or {})
    finally:
        shutdown(ctx)


def _train(
    cfg: TrainConfig,
    ctx: DistContext,
    objective_factory: ObjectiveFactory | None,
    eval_hook: EvalHook | None,
    checkpoint_extra: dict[str, Any],
) -> dict[str, Any]:
    device = pick_device(cfg.device, ctx)
    torch.manual_seed(cfg.seed + ctx.rank)
    out = Path(cfg.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    resume_path = out / "resume.pt"
    if not cfg.resume and ctx.is_main and resume_path.exists():
        raise SegkdError(
            f"{out} already holds a run (resume.pt); pass --resume to continue it or choose another --out"
        )
    if ctx.is_main:  # temp files of checkpoint writes a killed run left behind (100 MB each)
        for stale in out.glob(".*.pt.*.tmp"):
            stale.unlink(missing_ok=True)

    train_set = build_dataset(
        cfg.data, "train", transform=TrainTransform(cfg.crop_size, scale_range=cfg.scale_range)
    )
    val_set = build_dataset(cfg.data, "val")
    labels: LabelSpec = train_set.labels
    preprocess = deploy_preprocess(cfg.data, cfg.export_size)  # letterbox for VOC/ADE/folder

    model = build_model(
        cfg.model,
        labels.num_classes,
        aux=cfg.aux_weight > 0,
        deep_stem=cfg.deep_stem,
        backbone_weights=cfg.backbone_weights,
    )
    if cfg.sync_bn and ctx.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    use_cuda = device.type == "cuda"
    if use_cuda and cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    objective = (
        objective_factory(model, labels, device)
        if objective_factory
        else SupervisedObjective(cfg.aux_weight, labels.ignore_index)
    ).to(device)

    ddp_model: nn.Module = model
    if ctx.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if use_cuda else None
        )

    params = [p for p in model.parameters() if p.requires_grad]
    objective_params = [p for p in objective.parameters() if p.requires_grad]
    params += objective_params
    optimizer = torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    amp = cfg.amp and use_cuda
    scaler = torch.amp.GradScaler("cuda", enabled=amp)

    start_it, best_miou, best_it = 0, -1.0, -1
    if cfg.resume:
        if not resume_path.exists():
            raise SegkdError(f"--resume: no resume.pt in {out}; nothing to continue")
        state = load_checkpoint(resume_path)
        if state["arch"] != cfg.model:
            raise SegkdError(f"--resume: {resume_path} is a {state['arch']} run, not {cfg.model}")
        saved_names = list(state["labels"].get("names", []))
        if saved_names != list(labels.names):
            raise SegkdError(
                f"--resume: {resume_path} was trained on {len(saved_names)} classes, but "
                f"--data {cfg.data} has {labels.num_classes}; resume with the run's own --data"
            )
        try:  # other losses / adapters / a file without train_state: refuse, do not crash
            model.load_state_dict(state["state_dict"])
            ts = state["train_state"]
            objective.load_state_dict(ts["objective"])
            optimizer.load_state_dict(ts["optimizer"])
            scaler.load_state_dict(ts["scaler"])
            start_it, best_miou, best_it = (
                int(ts["iteration"]),
                float(ts["best_miou"]),
                int(ts["best_iter"]),
            )
        except (KeyError, RuntimeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise SegkdError(
                f"--resume: {resume_path} does not fit this run's settings ({first[:160]}); "
                "resume with the options it was started with"
            ) from None
        log.info("resumed %s at iteration %d", resume_path, start_it)

    loader = make_train_loader(
        train_set,
        preprocess,
        batch_size=cfg.batch_size,
        num_workers=cfg.num_workers,
        seed=cfg.seed + 1000 * start_it,  # a resumed run does not replay the same batches
        distributed=ctx.enabled,
    )
    metrics_log = MetricsLog(out / "metrics.jsonl", ctx.is_main)
    eval_every = cfg.eval_interval or max(1, math.ceil(cfg.iters / 4))
    if ctx.is_main:
        metrics_log.write({"event": "start", "iter": start_it, "config": cfg.to_dict()})

    def checkpoint(iteration: int, metrics: dict[str, Any]) -> dict[str, Any]:
        return make_checkpoint(
            model=model,
            arch=cfg.model,
            model_kwargs=model.model_kwargs,
            labels=labels,
            preprocess=preprocess,
            config=cfg.to_dict(),
            metrics=metrics,
            iteration=iteration,
            role=cfg.role,
            extra=checkpoint_extra,
        )

    model.train()
    bar = tqdm(
        total=cfg.iters,
        initial=start_it,
        disable=not ctx.is_main,
        desc=f"{cfg.role} {cfg.model}",
        dynamic_ncols=True,
    )
    t0, last_metrics = time.perf_counter(), {}
    for it in range(start_it, cfg.iters):
        lr = poly_lr(cfg.lr, it, cfg.iters, cfg.poly_power, cfg.warmup_iters)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = next(loader)
        images = images.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        if use_cuda and cfg.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = torch.autocast("cuda", dtype=torch.float16) if amp else nullcontext()
        with autocast:
            student_out = ddp_model(images)
            terms = objective(images, targets, student_out)
        loss = terms["loss"]
        if not torch.isfinite(loss.detach()).item():
            last = out / "last.pt"
            kept = f"{last} is intact" if last.exists() else "no checkpoint was written yet"
            raise SegkdError(
                f"loss became {loss.item()} at iteration {it} "
                f"({', '.join(f'{k}={v.item():.4g}' for k, v in terms.items())}); stopped. "
                f"{kept}; lower --lr or check the data"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        average_gradients(objective_params, ctx)  # DDP averages the student's; adapters here
        scaler.step(optimizer)
        scaler.update()
        bar.update(1)

        done = it + 1
        if done % cfg.log_interval == 0 or done == cfg.iters:
            record = {k: float(v.detach()) for k, v in terms.items()}
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            metrics_log.write(
                {"iter": done, "lr": lr, "time_s": time.perf_counter() - t0, **record}
            )
        if done % eval_every == 0 or done == cfg.iters:
            final = done == cfg.iters
            m = evaluate_model(
                model, val_set, labels, preprocess, device,
                max_images=None if final else cfg.val_images, ctx=ctx, amp=amp,
            )  # fmt: skip
            last_metrics = {
                "val_miou": m.miou,
                "val_pixel_acc": m.pixel_acc,
                "val_iou": m.iou,
                "val_pixels": m.num_pixels,
                "iter": done,
            }
            if eval_hook is not None:
                last_metrics.update(eval_hook(model, done))
            model.train()
            if ctx.is_main:
                metrics_log.write({"event": "eval", **last_metrics})
                ckpt = checkpoint(done, last_metrics)
                if m.miou > best_miou:
                    best_miou, best_it = m.miou, done
                    atomic_torch_save(ckpt, out / "best.pt")
                atomic_torch_save(ckpt, out / "last.pt")
                ckpt["train_state"] = {
                    "objective": objective.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "iteration": done,
                    "best_miou": best_miou,
                    "best_iter": best_it,
                }
                atomic_torch_save(ckpt, resume_path)  # written last: it never points past last.pt
                bar.write(f"iter {done}: val mIoU {m.miou:.4f} (best {best_miou:.4f} @ {best_it})")
            barrier(ctx)
    bar.close()

    summary = {
        "model": cfg.model,
        "role": cfg.role,
        "iters": cfg.iters,
        "best_miou": best_miou,
        "best_iter": best_it,
        "final": last_metrics,
        "train_time_s": time.perf_counter() - t0,
        "device": str(device),
        "world_size": ctx.world_size,
        "checkpoints": {"best": str(out / "best.pt"), "last": str(out / "last.pt")},
    }
    if ctx.is_main:
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(out / "summary.json")
    return summary
