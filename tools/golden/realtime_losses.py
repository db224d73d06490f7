"""Golden outputs of the PIDNet authors' training losses (OHEM CE, boundary targets,
boundary BCE, boundary-aware CE, their sum), run by THEIR code on fixed tensors.

Runs outside segkd's environment, in a throwaway venv with torch, numpy, opencv and yacs,
on a checkout of github.com/XuJiacong/PIDNet (the commit is recorded in the fixture):

    git --git-dir=MIRROR archive HEAD models utils configs datasets | tar -x -C PIDNET
    VENV/bin/python tools/golden/realtime_losses.py --pidnet PIDNET --commit SHA \\
        --out tests/distill/golden/realtime_losses.npz

segkd's test (tests/distill/test_authors_losses.py) feeds the stored inputs to segkd's
own implementation (distill.losses.authors / ohem / boundary) and compares.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np


def label_maps(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Two label maps of rectangles and discs over 19 classes, with ignore (255) areas."""
    out = np.zeros((2, h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for b in range(2):
        lab = np.full((h, w), rng.integers(0, 19), np.uint8)
        for _ in range(7):
            y0, x0 = rng.integers(0, h - 8), rng.integers(0, w - 8)
            lab[y0 : y0 + rng.integers(6, h // 2), x0 : x0 + rng.integers(6, w // 2)] = (
                rng.integers(0, 19)
            )
        for _ in range(3):
            cy, cx, r = rng.integers(0, h), rng.integers(0, w), rng.integers(4, 12)
            lab[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 19)
        lab[rng.integers(0, h - 10) :][:6, rng.integers(0, w - 20) :][:, :15] = 255
        out[b] = lab
    return out


def fixed_inputs(
    rng: np.random.Generator, h: int, w: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Labels and main/aux/boundary logits at 1/4, drawn in this order from `rng`."""
    labels = label_maps(rng, h, w)
    # Logits sharp enough that part of the pixels pass the 0.9 threshold.
    onehot = np.eye(19, dtype=np.float32)[np.where(labels == 255, 0, labels)]  # B H W C
    small = onehot[:, ::4, ::4].transpose(0, 3, 1, 2)
    main = (
        rng.normal(0, 1.5, small.shape)
        + 4.0 * small * (rng.random(small.shape[:1] + small.shape[2:])[:, None] < 0.6)
    ).astype(np.float32)
    aux = rng.normal(0, 1.0, small.shape).astype(np.float32)
    boundary = rng.normal(0, 2.0, (2, 1, h // 4, w // 4)).astype(np.float32)
    return labels, main, aux, boundary


def dataset_edges(base_dataset: type, labels: np.ndarray) -> np.ndarray:
    """Boundary targets exactly as the upstream dataset makes them (no scale or flip)."""
    h, w = labels.shape[1:]
    base = base_dataset(ignore_label=255, base_size=w, crop_size=(h, w))
    image = np.zeros((h, w, 3), np.uint8)
    return np.stack(
        [  # edge_size: Cityscapes' bd_dilate_size default (datasets/cityscapes.py)
            base.gen_sample(image, lab.copy(), multi_scale=False, is_flip=False, edge_size=4)[2]
            for lab in labels
        ]
    ).astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--pidnet", type=Path, required=True, help="checkout of XuJiacong/PIDNet")
    ap.add_argument("--commit", required=True, help="the checkout's commit (recorded)")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    sys.path.insert(0, str(args.pidnet))
    import torch
    import torch.nn.functional as F
    from datasets.base_dataset import BaseDataset
    from utils.criterion import BondaryLoss, OhemCrossEntropy
    from utils.utils import FullModel

    from configs import config  # upstream yacs config, set from their Cityscapes file

    config.defrost()
    config.merge_from_file(str(args.pidnet / "configs/cityscapes/pidnet_small_cityscapes.yaml"))
    config.freeze()
    class_weights = [0.8373, 0.918, 0.866, 1.0345, 1.0166, 0.9969, 0.9754, 1.0489, 0.8786,
                     1.0023, 0.9539, 0.9843, 1.1116, 0.9037, 1.0865, 1.0955, 1.0865, 1.1529,
                     1.0507]  # fmt: skip
    # The same list datasets/cityscapes.py builds (it calls .cuda(), so it is read here).
    src = (args.pidnet / "datasets/cityscapes.py").read_text()
    assert all(f"{w}" in src for w in class_weights), "class weights differ from upstream"

    h, w = 48, 80  # labels; outputs at 1/4 as a stand-in for the 1/8 heads (non-square)
    labels, main, aux, boundary = fixed_inputs(np.random.default_rng(22), h, w)
    edges = dataset_edges(BaseDataset, labels)

    weights = torch.tensor(class_weights)
    t_labels = torch.from_numpy(labels).long()
    t_edges = torch.from_numpy(edges)

    def upsample(x: np.ndarray, align: bool) -> torch.Tensor:
        return F.interpolate(torch.from_numpy(x), size=(h, w), mode="bilinear", align_corners=align)

    out: dict[str, np.ndarray] = {
        "labels": labels, "main": main, "aux": aux, "boundary": boundary, "edges": edges,
        "class_weights": np.asarray(class_weights, np.float32),
    }  # fmt: skip
    # OHEM alone, at the authors' settings and at others that exercise min_kept.
    for name, thres, keep, weighted, align in (
        ("ohem_authors", 0.9, 131072, True, True),
        ("ohem_keep500_t07", 0.7, 500, True, True),
        ("ohem_keep3000_t05_unweighted", 0.5, 3000, False, False),
    ):
        crit = OhemCrossEntropy(255, thres, keep, weights if weighted else None)
        out[name] = np.float64(crit._ohem_forward(upsample(main, align), t_labels).item())
        out[name + "_params"] = np.asarray([thres, keep, float(weighted), float(align)])
    # The whole training loss of tools/train.py: FullModel(model, sem, bd) -> loss.mean().
    sem = OhemCrossEntropy(255, config.LOSS.OHEMTHRES, config.LOSS.OHEMKEEP, weights)
    outputs = [torch.from_numpy(aux), torch.from_numpy(main), torch.from_numpy(boundary)]
    full = FullModel(lambda _x: list(outputs), sem, BondaryLoss())
    loss, _, _, (loss_s, loss_b) = full(torch.zeros(2, 3, h, w), t_labels, t_edges)
    out["loss_total"] = np.float64(loss.mean().item())
    out["loss_semantic"] = np.float64(loss_s.mean().item())  # 0.4 aux CE + OHEM(main)
    out["loss_boundary"] = np.float64(loss_b.item())  # 20 x balanced BCE
    out["config"] = np.asarray(
        [
            config.LOSS.OHEMTHRES,
            config.LOSS.OHEMKEEP,
            *config.LOSS.BALANCE_WEIGHTS,
            config.LOSS.SB_WEIGHTS,
            float(config.MODEL.ALIGN_CORNERS),
        ]
    )
    out["upstream"] = np.asarray(f"github.com/XuJiacong/PIDNet@{args.commit}")
    out["versions"] = np.asarray(
        f"torch {torch.__version__}, numpy {np.__version__}, opencv {__import__('cv2').__version__}"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)
    print({k: v for k, v in out.items() if v.ndim == 0 or k == "config"})


if __name__ == "__main__":
    main()
