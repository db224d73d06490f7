"""PTQ against QAT on the same checkpoints: pixel agreement with fp32, mIoU, cost.

For every checkpoint: `segkd export` with calibration (PTQ: model.int8.onnx for TensorRT,
model.int8-cpu.onnx), then `segkd qat` (distill/qat) and `segkd export` of its qat.pt (the
INT8 files from the learned scales, no calibration). Both exports verify on the same
held-out val images (same --sample-seed) against the same fp32 PyTorch labels, so the
figures compare within one run. Costs: QAT steps and seconds, and the training time of
the checkpoint itself when given as NAME=CKPT@SECONDS.

Run from the repository root (nice -n 10 on the shared machine):
    python benchmarks/qat_vs_ptq.py ddr_s0=/tmp/ddr/best.pt@779 --size 512x1024 \\
        --data synthetic:size=512x1024 --crop-size 256x512 --steps 600 --seeds 0,1,2 \\
        --json docs/results/qat_vs_ptq.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.atomic_io import write_json_atomic
from distill.qat.stage import QAT_FILE, run_qat
from distill.qat.train import QatOptions
from export.api import Tolerances, export_checkpoint
from runtime.machine import cpu_info, describe_cpu
from runtime.sizes import parse_size

FILES = {"model.int8.onnx": "tensorrt", "model.int8-cpu.onnx": "cpu"}


def _figures(manifest: dict[str, Any]) -> dict[str, Any]:
    """Per INT8 file: agreement with fp32 labels, mIoU vs ground truth, drop vs fp32 (points)."""
    out: dict[str, Any] = {}
    for a in manifest["artifacts"]:
        if a["file"] not in FILES:
            continue
        ag = a["agreement"]
        fp32, int8 = ag.get("fp32_miou_vs_ground_truth"), ag.get("miou_vs_ground_truth")
        out[FILES[a["file"]]] = {
            "pixel_agreement": ag["pixel_agreement"],
            "miou": int8,
            "fp32_miou": fp32,
            "miou_drop_pts": None if fp32 is None or int8 is None else 100 * (fp32 - int8),
        }
    return out


def _spread(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "min": float(np.min(values)),
            "max": float(np.max(values)), "std": float(np.std(values))}  # fmt: skip


def _summary(seeds: list[dict]) -> dict[str, Any]:
    """Per INT8 file, over the QAT seeds: agreement and mIoU drop, mean / min / max / std."""
    out: dict[str, Any] = {}
    for file in seeds[0]["qat"]:
        rows = [s["qat"][file] for s in seeds]
        out[file] = {k: _spread([r[k] for r in rows]) for k in ("pixel_agreement", "miou_drop_pts")
                     if all(r[k] is not None for r in rows)}  # fmt: skip
    return out


def run_one(name: str, ckpt: Path, train_s: float | None, args: argparse.Namespace) -> dict:
    """PTQ once (it has no seed), then QAT and its export once per seed, same val images."""
    work = Path(args.work) / name
    size = parse_size(args.size, "--size", 32)
    crop = parse_size(args.crop_size, "--crop-size", 32) if args.crop_size else None
    loose = Tolerances(int8_min_agreement=0.0)  # record PTQ's figure even where its gate fails
    common = dict(precisions="fp32,int8", input_size=size, calib_data=args.data,
                  verify_images=args.eval_images, sample_seed=args.sample_seed,
                  build_engines=False, tolerances=loose)  # fmt: skip
    t = time.perf_counter()
    ptq = export_checkpoint(ckpt, work / "ptq", calib_images=args.calib_images,
                            int8_method=args.method, **common)  # fmt: skip
    result: dict[str, Any] = {
        "name": name,
        "checkpoint": str(ckpt),
        "checkpoint_train_seconds": train_s,
        "ptq": _figures(ptq.manifest),
        "ptq_export_seconds": time.perf_counter() - t,
        "seeds": [],
    }
    for seed in args.seeds:
        opts = QatOptions(steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                          scale_lr=args.scale_lr, learn_scales=not args.fixed_scales, seed=seed,
                          crop_size=crop, teacher_weight=args.teacher_weight,
                          schedule=args.schedule)  # fmt: skip
        qat = run_qat(ckpt, work / f"qat-s{seed}", input_size=size, data=args.data,
                      calib_images=args.calib_images, train_images=args.train_images,
                      method=args.method, sample_seed=args.sample_seed, opts=opts, progress=print,
                      teacher=args.teacher)  # fmt: skip
        q = export_checkpoint(
            work / f"qat-s{seed}" / QAT_FILE, work / f"qat_export-s{seed}", **common
        )
        result["seeds"].append({
            "seed": seed,
            "qat": _figures(q.manifest),
            "qat_steps": qat["training"]["steps"],
            "qat_seconds": qat["training"]["seconds"],
            "qat_total_seconds": qat["total_seconds"],
            "qat_loss_first_last": [qat["training"]["loss_first"], qat["training"]["loss_last"]],
        })  # fmt: skip
        print(json.dumps(result["seeds"][-1], indent=1))
    result["qat_over_seeds"] = _summary(result["seeds"])
    result.update(activation_points=qat["activation_points"], scale_groups=qat["scale_groups"],
                  load_after=os.getloadavg())  # fmt: skip
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="NAME=CKPT or NAME=CKPT@TRAIN_SECONDS")
    p.add_argument("--size", default="256x512")
    p.add_argument("--data", default="synthetic:size=128x256")
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--eval-images", type=int, default=16)
    p.add_argument("--train-images", type=int, default=64)
    p.add_argument("--method", default="minmax")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--scale-lr", type=float, default=1e-4)
    p.add_argument("--fixed-scales", action="store_true")
    p.add_argument("--schedule", default="constant", help="segkd qat --schedule")
    p.add_argument("--teacher", default=None, help="the distillation teacher in the QAT loop")
    p.add_argument("--teacher-weight", type=float, default=0.0)
    p.add_argument(
        "--seeds",
        type=lambda v: [int(x) for x in v.split(",")],
        default=[0, 1, 2],
        help="QAT seeds (batches and crops), comma-separated",
    )
    p.add_argument("--crop-size", default=None, help="QAT on HxW crops (segkd qat --crop-size)")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--work", default="/tmp/segkd-qat-bench")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    result: dict[str, Any] = {
        "command": " ".join(sys.argv),
        "machine": describe_cpu(),
        "cpu": cpu_info(),
        "load_start": os.getloadavg(),
        "options": {k: v for k, v in vars(args).items() if k not in ("models", "json")},
        "runs": [],
    }
    for spec in args.models:
        name, _, rest = spec.partition("=")
        path, _, secs = rest.partition("@")
        result["runs"].append(run_one(name, Path(path), float(secs) if secs else None, args))
        print(json.dumps(result["runs"][-1], indent=1))
        if args.json is not None:  # after each model: a long run keeps what it measured
            write_json_atomic(result, args.json)


if __name__ == "__main__":
    main()
