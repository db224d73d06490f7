"""Golden outputs of the DDRNet-23-slim and PIDNet-S authors' networks (with their
auxiliary / boundary heads, train and eval mode) and the key layouts of the authors'
ImageNet classification definitions, run by THEIR code with formula weights
(tools/golden/formula.py, the zoo fixtures' formula).

Runs outside segkd's environment, in a throwaway venv with torch and numpy, on checkouts
of github.com/ydhongHIT/DDRNet and github.com/XuJiacong/PIDNet (commits recorded):

    VENV/bin/python tools/golden/realtime_models.py --ddrnet DDRNET --ddrnet-commit SHA \\
        --pidnet PIDNET --pidnet-commit SHA --out tests/distill/golden

Writes realtime_ddrnet23_slim.npz and realtime_pidnet_s.npz: the segmentation network's
key layout, its outputs on `formula.images(2, H, W)` (image 0 as float16, and
per-image per-channel mean / std as float64) in eval mode and then in train mode (batch
statistics), and the ImageNet layout. The only change to the upstream code: DDRNet's
segmentation file sets BatchNorm2d = nn.SyncBatchNorm, which needs a process group; on
one process it is nn.BatchNorm2d, so that is what the generator puts there.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tools.golden import formula

H, W = 256, 320  # non-square; the 1/64 branch is 4 x 5, so DAPPM's three pools differ


def load_module(path: Path, name: str):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(model, names: list[str]) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Eval-mode outputs first (running statistics), then train mode (batch statistics)."""
    layout = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    model.load_state_dict(formula.state_dict(layout), strict=True)
    x = formula.images(2, H, W)
    out: dict[str, np.ndarray] = {}
    for mode in ("eval", "train"):
        model.train(mode == "train")
        with torch.no_grad():
            outputs = model(x)
        for name, y in zip(names, outputs, strict=True):
            y = y.double().numpy()
            out[f"{mode}_{name}"] = y[0].astype(np.float16)
            out[f"{mode}_{name}_mean"] = y.mean(axis=(2, 3))
            out[f"{mode}_{name}_std"] = y.std(axis=(2, 3))
            print(mode, name, y.shape, float(np.abs(y).max()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ddrnet", type=Path, required=True)
    ap.add_argument("--ddrnet-commit", required=True)
    ap.add_argument("--pidnet", type=Path, required=True)
    ap.add_argument("--pidnet-commit", required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    versions = f"torch {torch.__version__}, numpy {np.__version__}"

    seg = load_module(args.ddrnet / "segmentation/DDRNet_23_slim.py", "ddrnet_seg")
    seg.BatchNorm2d = nn.BatchNorm2d  # SyncBatchNorm on a single process
    # DualResNet_imagenet's arguments, with the training code's augment=True (aux head).
    ddr = seg.DualResNet(seg.BasicBlock, [2, 2, 2, 2], num_classes=19, planes=32,
                         spp_planes=128, head_planes=64, augment=True)  # fmt: skip
    cls = load_module(args.ddrnet / "classification/DDRNet_23_slim.py", "ddrnet_cls")
    ddr_out = {
        "upstream": np.asarray(f"github.com/ydhongHIT/DDRNet@{args.ddrnet_commit}"),
        "versions": np.asarray(versions),
        "size": np.asarray([2, 3, H, W]),
        "layout": np.asarray(formula.key_layout(ddr.state_dict())),
        # classification/DDRNet_23_slim.py get_model(): what DDRNet23s_imagenet.pth holds.
        "imagenet_layout": np.asarray(formula.key_layout(cls.get_model().state_dict())),
        **run(ddr, ["logits", "aux"]),  # forward returns [x_, x_extra]
    }
    np.savez_compressed(args.out / "realtime_ddrnet23_slim.npz", **ddr_out)

    sys.path.insert(0, str(args.pidnet))
    pidnet = importlib.import_module("models.pidnet")
    # get_seg_model's PIDNet-S (cfg.MODEL.NAME pidnet_small).
    pid = pidnet.PIDNet(m=2, n=3, num_classes=19, planes=32, ppm_planes=96, head_planes=128,
                        augment=True)  # fmt: skip
    pid_out = {
        "upstream": np.asarray(f"github.com/XuJiacong/PIDNet@{args.pidnet_commit}"),
        "versions": np.asarray(versions),
        "size": np.asarray([2, 3, H, W]),
        "layout": np.asarray(formula.key_layout(pid.state_dict())),
        # No ImageNet definition is published: get_seg_model keeps every key of the file's
        # ['state_dict'] whose name and shape match the segmentation network (this layout).
        **run(pid, ["aux", "logits", "boundary"]),  # [x_extra_p, x_, x_extra_d]
    }
    np.savez_compressed(args.out / "realtime_pidnet_s.npz", **pid_out)


if __name__ == "__main__":
    main()
