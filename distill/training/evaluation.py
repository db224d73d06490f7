"""Whole-image, single-scale validation of a torch model (what the trainer reports)."""

from __future__ import annotations

import numpy as np
import torch

from distill.training.distributed import DistContext, all_reduce_sum
from runtime.labels import LabelSpec
from runtime.metrics import ConfusionMatrix, SegMetrics
from runtime.preprocess import PreprocessSpec


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset,
    labels: LabelSpec,
    preprocess: PreprocessSpec,
    device: torch.device,
    *,
    max_images: int | None = None,
    ctx: DistContext | None = None,
    amp: bool = False,
) -> SegMetrics:
    """mIoU over `dataset` at each image's own size; processes share the split and sum matrices."""
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    n = len(dataset) if max_images is None else min(len(dataset), max_images)
    cm = ConfusionMatrix(labels.num_classes, labels.ignore_index)
    for i in range(ctx.rank, n, ctx.world_size):
        image, mask = dataset[i]
        x = torch.from_numpy(preprocess.normalize(image, "RGB"))[None].to(device)
        with torch.autocast(
            device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"
        ):
            logits = model(x)
        pred = logits.argmax(1)[0].to(torch.uint8).cpu().numpy()
        cm.update(pred, np.asarray(mask))
    matrix = torch.from_numpy(cm.matrix).to(device)
    missed = torch.from_numpy(cm.out_of_range).to(device)
    cm.matrix = all_reduce_sum(matrix, ctx).cpu().numpy()
    cm.out_of_range = all_reduce_sum(missed, ctx).cpu().numpy()
    model.train(was_training)
    return cm.summary(labels.names)
