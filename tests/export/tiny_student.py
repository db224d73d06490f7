"""A briefly trained student for the export tests: real logit margins, not a random net.

A random network's labels flip under any rounding, which says nothing about a real
student; a short CE run on synthetic scenes gives margins INT8 can keep.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from core.preprocess import PreprocessSpec
from distill.checkpoint import atomic_torch_save, make_checkpoint
from distill.data import build_dataset
from distill.models import build_model

SIZE = (64, 128)
DATA = "synthetic:size=64x128,train=48,val=6"


def train_tiny(path: Path, arch: str = "pspnet_r18", steps: int = 100) -> Path:
    """`steps` SGD steps of `arch` at batch 4 (BatchNorm needs >= 2) on 64x128 scenes.

    For pspnet_r18, 100 steps reach ~0.26 mIoU and stable INT8 figures.
    """
    torch.manual_seed(0)
    ds = build_dataset(DATA, "train")
    pre = PreprocessSpec(input_size=SIZE)
    model = build_model(arch, ds.labels.num_classes, aux=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    model.train()
    rng = np.random.default_rng(0)
    for _ in range(steps):
        batch = [ds[int(i)] for i in rng.integers(0, len(ds), 4)]
        x = torch.from_numpy(np.stack([pre.normalize(img) for img, _ in batch]))
        y = torch.from_numpy(np.stack([m for _, m in batch])).long()
        logits = F.interpolate(model(x)["logits"], size=SIZE, mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, y, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ckpt = make_checkpoint(
        model=model,
        arch=arch,
        model_kwargs=model.model_kwargs,
        labels=ds.labels,
        preprocess=pre,
        config={"data": DATA},
    )
    atomic_torch_save(ckpt, path)
    return path
