"""Distillation ablation on the synthetic dataset: one teacher, several seeds per row.

Every run is a real `segkd train` / `segkd distill` command; results are collected from
each run's summary.json (final val mIoU on the whole val split, not the best-of-evals,
which would favour noisy rows). Finished runs are skipped, so the script resumes.

    python benchmarks/ablation.py --out runs/ablation --seeds 0 1 2 --json docs/results/ablation.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

# name -> (command, its extra arguments). Every distillation row runs at the library
# defaults (DistillConfig) unless it names an option; `--extra` adds arguments (e.g.
# weights) to every distillation row alike. "(lr x2)" is a control: KD at w_kd 1 roughly
# doubles the gradient, so part of a KD gain could be nothing but a larger step.
ROWS: dict[str, tuple[str, list[str]]] = {
    "student alone": ("train", []),
    "+KD": ("distill", ["--losses", "kd"]),
    "+KD+IDD": ("distill", ["--losses", "kd,idd"]),
    "+KD+IDD+PID": ("distill", ["--losses", "kd,idd,pid"]),
    "+CWD": ("distill", ["--losses", "cwd"]),
    "student alone (lr x2)": ("train", ["--lr", "0.02"]),
    "+KD+IDD (adapter)": ("distill", ["--losses", "kd,idd", "--idd-scale", "adapter"]),
    "+KD+IDD (cosine)": ("distill", ["--losses", "kd,idd", "--idd-distance", "cosine"]),
    "+CWD+IDD": ("distill", ["--losses", "cwd,idd"]),
    "+CWD+IDD+PID": ("distill", ["--losses", "cwd,idd,pid"]),
    "+KD+IDD+PID (student readout)": (
        "distill", ["--losses", "kd,idd,pid", "--pid-mode", "student_readout"],
    ),
}  # fmt: skip


def segkd(*args: str) -> None:
    cmd = [sys.executable, "cli.py", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def final_miou(run: Path) -> float:
    final = json.loads((run / "summary.json").read_text())["final"]
    return float(final.get("val_miou_all", final["val_miou"]))  # _all: --val-images capped


def run_dir(out: Path, row: str, seed: int) -> Path:
    name = row.replace(" ", "_").replace("+", "p").replace("(", "").replace(")", "")
    return out / f"{name}-s{seed}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--data", default="synthetic:size=128x256,val=50")
    ap.add_argument("--crop-size", default="64x128")
    ap.add_argument("--batch-size", type=int, default=4, help="students' batch size")
    ap.add_argument("--teacher-model", default="pspnet_r18")
    ap.add_argument("--teacher-iters", type=int, default=2400)
    ap.add_argument("--teacher-batch-size", type=int, default=8)
    ap.add_argument("--student-model", default="pspnet_r18")
    ap.add_argument("--iters", type=int, default=400)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help="subset of rows to run")
    ap.add_argument(
        "--extra",
        default="",
        help='extra arguments for every distillation row, one string: --extra="--w-kd 1"',
    )
    ap.add_argument(
        "--student-args",
        default="",
        help="arguments for EVERY student row, trained alone or distilled (the supervised "
        'loss): --student-args="--loss ohem --ohem-min-kept 2731"',
    )
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--shard",
        default="0/1",
        help="i/n: run every n-th job from i (parallel single-thread runs)",
    )
    args = ap.parse_args()
    unknown = [r for r in args.rows if r not in ROWS]
    if unknown:
        ap.error(f"unknown row(s) {unknown}; known: {list(ROWS)}")
    extra_all = shlex.split(args.extra)
    student_all = shlex.split(args.student_args)
    common = ["--data", args.data, "--crop-size", args.crop_size, "--num-workers", "1"]

    # The teacher is trained once in OUT/teacher (resumable); a finished one is reused.
    teacher = args.out / "teacher"
    if not (teacher / "summary.json").is_file():
        segkd("train", *common, "--batch-size", str(args.teacher_batch_size), "--model",
              args.teacher_model, "--iters", str(args.teacher_iters), "--eval-interval",
              str(args.teacher_iters), "--role", "teacher", "--out", str(teacher),
              *(["--resume"] if (teacher / "resume.pt").is_file() else []))  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    t0 = time.time()
    core = [r for r in args.rows if "(" not in r]  # the method's rows first, options after
    order = [
        (s, r)
        for rows in (core, [r for r in args.rows if r not in core])
        for s in args.seeds
        for r in rows
    ]
    index, count = (int(v) for v in args.shard.split("/"))
    mine = set(order[index::count])
    for seed, row in order:
        command, extra = ROWS[row]
        run = run_dir(args.out, row, seed)
        if not (run / "summary.json").is_file():
            if (seed, row) not in mine:
                continue  # another shard runs it; the last, unsharded call aggregates
            if run.exists():
                shutil.rmtree(run)
            base = [*common, "--batch-size", str(args.batch_size), "--iters", str(args.iters),
                    "--eval-interval", str(args.iters), "--seed", str(seed), "--out", str(run)]  # fmt: skip
            if command == "train":
                segkd("train", "--model", args.student_model, *base, *extra, *student_all)
            else:
                segkd("distill", "--teacher", str(teacher / "best.pt"), "--student",
                      args.student_model, *base, *extra, *extra_all, *student_all)  # fmt: skip
        results.setdefault(row, {})[str(seed)] = final_miou(run)
        print(f"{row:32s} seed {seed}: {100 * results[row][str(seed)]:.2f}", flush=True)
    table = {
        row: {
            "seeds": v,
            "mean": statistics.mean(v.values()),
            "std": statistics.stdev(v.values()) if len(v) > 1 else 0.0,
        }
        for row, v in results.items()
    }
    out = {
        "data": args.data,
        "crop_size": args.crop_size,
        "teacher": {
            "model": args.teacher_model,
            "iters": args.teacher_iters,
            "batch_size": args.teacher_batch_size,
            "val_miou": final_miou(teacher),
        },
        "student": args.student_model,
        "iters": args.iters,
        "batch_size": args.batch_size,
        "extra": extra_all,
        "student_args": student_all,
        "rows": table,
        "seconds": time.time() - t0,
    }
    print(f"teacher {args.teacher_model}: {100 * out['teacher']['val_miou']:.2f}")
    for row, r in table.items():
        print(f"{row:32s} {100 * r['mean']:.2f} ± {100 * r['std']:.2f}  (n={len(r['seeds'])})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
