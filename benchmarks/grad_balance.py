"""How hard each distillation term pulls on the student: per-term gradient norms.

Loss VALUES say little about balance (IDD's squared distance gaps are O(0.1), KD's KL is
O(1)); what a term does to training is the size of its gradient on the student's
weights. This measures ||d(w_term * term) / d theta_student|| for every term, on a few
training batches, for a fresh student (step 0) and optionally a trained one, so that
term weights can be set from measurements instead of guessed.

    python benchmarks/grad_balance.py --teacher runs/teacher/best.pt \
        --student-checkpoint runs/student/best.pt --w-idd 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.checkpoint import load_model
from distill.data import dataset_defaults, parse_dataset_spec
from distill.distillation import DistillConfig, DistillObjective
from distill.models import build_model
from distill.teacher import cached_readout
from distill.training.config import TrainConfig
from distill.training.distill_run import readout_batches
from runtime.sizes import parse_size

TERM_OPTIONS = {
    "w_kd": float,
    "kd_temperature": float,
    "w_idd": float,
    "idd_scale": str,
    "w_pid": float,
    "w_cwd": float,
}


def term_grad_norms(
    student: torch.nn.Module,
    objective: DistillObjective,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> dict[str, float]:
    """Norm of each weighted term's gradient over the student's parameters (one batch)."""
    params = [p for p in student.parameters() if p.requires_grad]
    out = objective(images, labels, student.extract(images, with_aux=True))
    norms: dict[str, float] = {}
    for term in ("ce", "aux", *objective.active_terms):
        weight = 1.0
        if term == "aux":
            weight = objective.config.aux_weight
        elif term != "ce":
            weight = objective.config.weight(term)
        grads = torch.autograd.grad(
            weight * out[term], params, retain_graph=True, allow_unused=True
        )
        norms[term] = float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))
    return norms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--student", default="pspnet_r18", help="architecture of a fresh student")
    ap.add_argument("--student-checkpoint", type=Path, action="append", default=[])
    ap.add_argument("--data", default="synthetic:size=128x256")
    ap.add_argument("--crop-size", default="64x128")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--batches", type=int, default=4)
    # Unset options take the library defaults (DistillConfig).
    for name, kind in TERM_OPTIONS.items():
        ap.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.manual_seed(0)

    cfg = TrainConfig(
        data=args.data,
        crop_size=parse_size(args.crop_size, option="--crop-size"),
        batch_size=args.batch_size,
    ).resolved(dataset_defaults(parse_dataset_spec(args.data)))
    batches = readout_batches(cfg, n=args.batches)
    teacher, tckpt = load_model(args.teacher)
    found = cached_readout(args.teacher, tckpt)
    losses = ("kd", "idd", "cwd", "pid") if found is not None else ("kd", "idd", "cwd")
    chosen = {k: getattr(args, k) for k in TERM_OPTIONS if getattr(args, k) is not None}
    dcfg = DistillConfig(losses=losses, **chosen)
    num_classes = int(tckpt["num_classes"])

    students: dict[str, torch.nn.Module] = {"fresh": build_model(args.student, num_classes)}
    for path in args.student_checkpoint:
        students[str(path)] = load_model(path)[0]
    report: dict[str, dict[str, float]] = {}
    for name, student in students.items():
        student.train()
        objective = DistillObjective(
            teacher, student.feat_channels, num_classes, dcfg, found[0] if found else None
        )
        objective.train()
        per_batch = [term_grad_norms(student, objective, x, y) for x, y in batches]
        report[name] = {k: statistics.mean(b[k] for b in per_batch) for k in per_batch[0]}
        ce = report[name]["ce"]
        cells = "  ".join(f"{k} {v:.3g} ({v / ce:.2f}x CE)" for k, v in report[name].items())
        print(f"{name}: {cells}")
    if args.json:
        args.json.write_text(json.dumps({"config": dcfg.to_dict(), "grad_norms": report}, indent=2))


if __name__ == "__main__":
    main()
