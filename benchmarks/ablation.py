"""Distillation ablation on the synthetic dataset: one teacher, several seeds per row.

Every run is a real `segkd train` / `segkd distill` command; results are collected from
each run's summary.json (final val mIoU on the whole val split, not the best-of-evals,
which would favour noisy rows). Finished runs are skipped, so the script resumes.

    python benchmarks/ablation.py --out runs/ablation --seeds 0 1 2 --json docs/ablation.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

DATA = "synthetic:val=50"
COMMON = ["--data", DATA, "--crop-size", "128x256", "--batch-size", "4", "--num-workers", "1"]

# name -> extra arguments of `segkd distill` (None: the student trained alone)
ROWS: dict[str, list[str] | None] = {
    "student alone": None,
    "+KD": ["--losses", "kd"],
    # The first rows ran with the adapter, then the default: named so they reproduce.
    "+KD+IDD": ["--losses", "kd,idd", "--idd-scale", "adapter"],
    "+KD+IDD+PID": ["--losses", "kd,idd,pid", "--idd-scale", "adapter"],
    "+CWD": ["--losses", "cwd"],
    "+KD+IDD (normalize)": ["--losses", "kd,idd", "--idd-scale", "normalize"],
    "+KD+IDD (cosine)": ["--losses", "kd,idd", "--idd-distance", "cosine", "--idd-scale", "adapter"],
    "+KD (w_kd 1)": ["--losses", "kd", "--w-kd", "1"],
    "+KD+IDD+PID (normalize, w_kd 1)": [
        "--losses", "kd,idd,pid", "--idd-scale", "normalize", "--w-kd", "1",
    ],
}  # fmt: skip


def segkd(*args: str) -> None:
    cmd = [sys.executable, "cli.py", *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def final_miou(run: Path) -> float:
    return float(json.loads((run / "summary.json").read_text())["final"]["val_miou"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--teacher-model", default="pspnet_r101")
    ap.add_argument("--teacher-iters", type=int, default=400)
    ap.add_argument("--student-model", default="pspnet_r18")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--rows", nargs="*", default=list(ROWS), help="subset of rows to run")
    ap.add_argument("--extra", nargs="*", default=[], help="extra args for every distill run")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--shard",
        default="0/1",
        help="i/n: run every n-th job from i (parallel single-thread runs)",
    )
    args = ap.parse_args()

    teacher = args.out / "teacher"
    if not (teacher / "summary.json").is_file():
        segkd("train", *COMMON, "--model", args.teacher_model, "--iters", str(args.teacher_iters),
              "--eval-interval", str(args.teacher_iters), "--role", "teacher", "--out", str(teacher),
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
        extra = ROWS[row]
        run = (
            args.out
            / f"{row.replace(' ', '_').replace('+', 'p').replace('(', '').replace(')', '')}-s{seed}"
        )
        if not (run / "summary.json").is_file():
            if (seed, row) not in mine:
                continue  # another shard runs it; the last, unsharded call aggregates
            if run.exists():
                import shutil

                shutil.rmtree(run)
            base = [*COMMON, "--iters", str(args.iters), "--eval-interval", str(args.iters),
                    "--seed", str(seed), "--out", str(run)]  # fmt: skip
            if extra is None:
                segkd("train", "--model", args.student_model, *base)
            else:
                segkd("distill", "--teacher", str(teacher / "best.pt"), "--student",
                      args.student_model, *base, *extra, *args.extra)  # fmt: skip
        results.setdefault(row, {})[str(seed)] = final_miou(run)
        print(f"{row:24s} seed {seed}: {100 * results[row][str(seed)]:.2f}", flush=True)
    table = {
        row: {
            "seeds": v,
            "mean": statistics.mean(v.values()),
            "std": statistics.stdev(v.values()) if len(v) > 1 else 0.0,
        }
        for row, v in results.items()
    }
    out = {
        "data": DATA,
        "teacher": {
            "model": args.teacher_model,
            "iters": args.teacher_iters,
            "val_miou": final_miou(teacher),
        },
        "student": args.student_model,
        "iters": args.iters,
        "common": COMMON,
        "rows": table,
        "seconds": time.time() - t0,
    }
    print(f"teacher {args.teacher_model}: {100 * out['teacher']['val_miou']:.2f}")
    for row, r in table.items():
        print(f"{row:24s} {100 * r['mean']:.2f} ± {100 * r['std']:.2f}  (n={len(r['seeds'])})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
