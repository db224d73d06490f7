"""Whole-image, single-scale validation of a torch model (what the trainer reports).

Two figures per evaluation, on the same images:
- native: each image at its own size (the literature's protocol, e.g. 1024x2048 Cityscapes);
- deploy: each image resized to the export input size by the spec's policy, the label
  map restored to the image size -- what the exported artifact will score.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from core.labels import LabelSpec
from core.metrics import ConfusionMatrix, SegMetrics
from core.preprocess import PreprocessSpec
from distill.training.distributed import DistContext, all_reduce_sum
from runtime.postprocess import restore_size


def selection_indices(total: int, cap: int | None) -> list[int]:
    """The val images every model-selection evaluation scores: all of them, or `cap`
    spread evenly over the split (sorted file order groups e.g. Cityscapes by city)."""
    n = total if cap is None else min(total, cap)
    return [(i * total) // n for i in range(n)]


@dataclass(frozen=True)
class ValScores:
    native: SegMetrics
    deploy: SegMetrics
    deploy_size: tuple[int, int]
    images: int

    def to_metrics(self, suffix: str = "") -> dict[str, object]:
        """The flat entries of metrics.jsonl and checkpoint["metrics"]."""
        return {
            f"val_miou{suffix}": self.native.miou,
            f"val_pixel_acc{suffix}": self.native.pixel_acc,
            f"val_iou{suffix}": self.native.iou,
            f"val_pixels{suffix}": self.native.num_pixels,
            f"val_miou_deploy{suffix}": self.deploy.miou,
            f"val_pixel_acc_deploy{suffix}": self.deploy.pixel_acc,
            f"val_images{suffix}": self.images,
        }


def _predict(
    model: torch.nn.Module, image: np.ndarray, preprocess: PreprocessSpec, device, amp: bool
) -> np.ndarray:
    x = torch.from_numpy(preprocess.normalize(image, "RGB"))[None].to(device)
    with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
        logits = model(x)
    return logits.argmax(1)[0].to(torch.uint8).cpu().numpy()


def _summed(cm: ConfusionMatrix, labels: LabelSpec, device, ctx: DistContext) -> SegMetrics:
    cm.matrix = all_reduce_sum(torch.from_numpy(cm.matrix).to(device), ctx).cpu().numpy()
    missed = torch.from_numpy(cm.out_of_range).to(device)
    cm.out_of_range = all_reduce_sum(missed, ctx).cpu().numpy()
    return cm.summary(labels.names)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    dataset,
    labels: LabelSpec,
    preprocess: PreprocessSpec,
    device: torch.device,
    *,
    indices: Sequence[int] | None = None,
    ctx: DistContext | None = None,
    amp: bool = False,
) -> ValScores:
    """Native and deploy-size mIoU over `indices` (default: the whole split); processes
    share the images and sum their confusion matrices."""
    ctx = ctx or DistContext()
    was_training = model.training
    model.eval()
    chosen = list(range(len(dataset))) if indices is None else list(indices)
    native = ConfusionMatrix(labels.num_classes, labels.ignore_index)
    deploy = ConfusionMatrix(labels.num_classes, labels.ignore_index)
    for i in chosen[ctx.rank :: ctx.world_size]:
        image, mask = dataset[i]
        mask = np.asarray(mask)
        pred = _predict(model, image, preprocess, device, amp)
        native.update(pred, mask)
        if tuple(image.shape[:2]) != tuple(preprocess.input_size):
            resized, box = preprocess.resize_frame(image)
            small = _predict(model, np.ascontiguousarray(resized), preprocess, device, amp)
            pred = restore_size(small, box, mask.shape[:2])
        deploy.update(pred, mask)
    model.train(was_training)
    return ValScores(
        native=_summed(native, labels, device, ctx),
        deploy=_summed(deploy, labels, device, ctx),
        deploy_size=tuple(preprocess.input_size),
        images=len(chosen),
    )
