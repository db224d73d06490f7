"""`segkd distill`: the trainer with a frozen teacher and the distillation objective."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from core.labels import LabelSpec
from core.preprocess import PreprocessSpec
from core.schema.distill import READOUT_ITERS
from distill.checkpoint import load_model
from distill.data import build_dataset
from distill.data.loader import NetworkInput, make_train_loader
from distill.data.transforms import TrainTransform
from distill.distillation import DistillConfig, DistillObjective
from distill.losses.pid import PositionReadout
from distill.losses.recipe import loss_from_config
from distill.teacher import (
    cached_readout,
    file_sha256,
    fit_readout_entry,
    store_readout_sidecar,
)
from distill.training.config import TrainConfig
from distill.training.distributed import DistContext, fail_together, init_distributed, shutdown
from distill.training.setup import pick_device
from distill.training.trainer import train_resolved
from distill.zoo.entry import load_teacher

log = logging.getLogger(__name__)

PROBE_IMAGES = 4  # val images on which position information is reported at each evaluation


def readout_batches(cfg: TrainConfig, n: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """A fixed list of training batches for fitting a readout (cycled by the fitter)."""
    train_set = build_dataset(
        cfg.data, "train", transform=TrainTransform(cfg.crop_size, scale_range=cfg.scale_range)
    )
    preprocess = PreprocessSpec(input_size=cfg.export_size)
    loader = make_train_loader(
        train_set,
        preprocess,
        batch_size=cfg.batch_size,
        num_workers=0,
        seed=cfg.seed + 7,
        distributed=False,
    )
    to_input = NetworkInput(preprocess, torch.device("cpu"), channels_last=False)
    return [to_input(next(loader)) for _ in range(n)]


def ensure_teacher_readout(
    teacher_path: Path,
    teacher: nn.Module,
    ckpt: dict[str, Any],
    cfg: TrainConfig,
    iters: int,
    device: torch.device,
    ctx: DistContext,
) -> tuple[PositionReadout, dict[str, float]]:
    """The teacher's position readout: cached with the teacher, fitted once by rank 0."""
    found = cached_readout(teacher_path, ckpt, int(teacher.feat_channels))
    if found is None:
        with fail_together(ctx):  # the others wait here; a failed fit stops them too
            if ctx.is_main:
                entry = fit_readout_entry(teacher.to(device), readout_batches(cfg), iters, device)
                store_readout_sidecar(teacher_path, entry)
        found = cached_readout(teacher_path, {})  # the sidecar rank 0 just wrote
        assert found is not None
    return found


def probe_batch(cfg: TrainConfig, preprocess: PreprocessSpec) -> torch.Tensor:
    """A few val images at the crop size: where position information is measured."""
    val = build_dataset(cfg.data, "val")
    h, w = cfg.crop_size
    imgs = []
    for i in range(min(PROBE_IMAGES, len(val))):
        image, _ = val[i]
        image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
        imgs.append(preprocess.normalize(np.ascontiguousarray(image), "RGB"))
    return torch.from_numpy(np.stack(imgs))


def run_distillation(
    config: TrainConfig,
    teacher_spec: Path | str,
    distill_config: DistillConfig,
    readout_iters: int = READOUT_ITERS,
) -> dict[str, Any]:
    distill_config.require_a_term()
    cfg = config.resolved()
    ctx = init_distributed(cfg.device, cfg.dist_timeout)
    try:
        return _distil(cfg, ctx, teacher_spec, distill_config, readout_iters)
    finally:
        shutdown(ctx)


def _distil(
    cfg: TrainConfig,
    ctx: DistContext,
    teacher_spec: Path | str,
    distill_config: DistillConfig,
    readout_iters: int,
) -> dict[str, Any]:
    device = pick_device(cfg.device, ctx)
    labels: LabelSpec = build_dataset(cfg.data, "val").labels
    # A segkd checkpoint or a model-zoo file (mmseg/cirkd/torchvision): zoo teachers come
    # wrapped so they see each batch in their own input convention and the dataset's classes.
    teacher, tckpt, teacher_path = load_teacher(
        teacher_spec, labels.names, PreprocessSpec(input_size=cfg.export_size)
    )

    need_readout = distill_config.active("pid")
    readout, teacher_report = (None, {})
    if need_readout:
        readout, teacher_report = ensure_teacher_readout(
            teacher_path, teacher, tckpt, cfg, readout_iters, device, ctx
        )
    probe = probe_batch(cfg, PreprocessSpec(input_size=cfg.export_size)) if need_readout else None
    holder: dict[str, DistillObjective] = {}

    def objective_factory(student: nn.Module, _labels: LabelSpec, dev: torch.device) -> nn.Module:
        seg_loss = loss_from_config(
            cfg, labels.num_classes, distill_config.ignore_index, distill_config.aux_weight
        )
        objective = DistillObjective(
            teacher.to(dev), student.feat_channels, labels.num_classes, distill_config, readout,
            seg_loss=seg_loss,
        )  # fmt: skip
        holder["objective"] = objective
        return objective

    def eval_hook(student: nn.Module, iteration: int) -> dict[str, Any]:
        if probe is None:
            return {}
        x = probe.to(device)
        student.eval()
        with torch.no_grad():
            feat = student.extract(x, with_aux=False)["feat"]
        return {"position": holder["objective"].position_information(x, student_feat=feat)}

    teacher_info = {
        "path": str(teacher_path),
        "sha256": file_sha256(teacher_path),
        "arch": tckpt["arch"],
        "source": tckpt.get("source", "segkd"),
        "val_miou": tckpt.get("metrics", {}).get("val_miou"),
        "position_report": teacher_report,
    }
    cfg = replace(
        cfg,
        role="student",
        extra={**cfg.extra, "distill": distill_config.to_dict(), "teacher": teacher_info},
    )
    summary = train_resolved(
        cfg,
        ctx,
        objective_factory=objective_factory,
        eval_hook=eval_hook,
        checkpoint_extra={
            "distillation": {"config": distill_config.to_dict(), "teacher": teacher_info}
        },
    )
    summary["teacher"] = teacher_info
    return summary


def embed_teacher_readout(config: TrainConfig, run_dir: Path, iters: int) -> dict[str, float]:
    """After `segkd train --role teacher`: fit the position readout on the best teacher and
    store it inside best.pt and last.pt, so distillation never has to fit it again."""
    from distill.teacher import embed_readout

    cfg = config.resolved()
    device = pick_device(cfg.device, DistContext())
    teacher, _ = load_model(run_dir / "best.pt", device=device)
    entry = fit_readout_entry(teacher, readout_batches(cfg), iters, device)
    for name in ("best.pt", "last.pt"):
        if (run_dir / name).is_file():
            embed_readout(run_dir / name, entry)
    return entry["report"]
