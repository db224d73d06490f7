"""Real-time students against PSPNet-R18 on the CPU, in one run: latency, INT8 agreement, mIoU.

Every checkpoint goes through `export.api.export_checkpoint` (`segkd export`) at --size
with fp32 and the INT8 variants in --variants; the export's own verification gives each
INT8 file's pixel agreement with the fp32 PyTorch labels and the mIoU of fp32 and INT8
against ground truth on --eval-images held-out val images (at the export size; calibration
used the train split). Then every file of every model is timed on onnxruntime's CPU
provider (batch 1, --threads intra-op threads, one preprocessed val image): all sessions
are open at once and timed round-robin, one run each per round with the starting model
rotating, so a change in machine load hits every model alike and the speedups, ratios
within this run, compare.

Run from the repository root:
    python benchmarks/bench_rt_students_cpu.py pspnet_r18=R18.pt ddrnet23_slim=DDR.pt \\
        pidnet_s=PID.pt [--reference pspnet_r18] [--size 512x1024] [--threads 1]
        [--warmup 3] [--iters 10] [--calib-images 32] [--eval-images 24]
        [--variants cpu,tensorrt] [--output labels|labels-lowres] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import onnxruntime as ort
from bench_export_cpu import open_session, run_ms, summarize_ms

from core.atomic_io import write_json_atomic
from core.errors import SegkdError
from export.api import Tolerances, export_checkpoint
from runtime.machine import cpu_info, describe_cpu
from runtime.sizes import parse_size

CALIB_KEYS = ("data", "split", "images", "seed", "method")
GOAL_SPEEDUP = 6.0  # issue 13: each student >= 6x faster than PSPNet-R18 at equal precision


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def parse_models(items: list[str]) -> list[tuple[str, Path]]:
    """["name=ckpt", ...] -> [(name, path)], names unique, files present."""
    out: list[tuple[str, Path]] = []
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise SegkdError(f"model argument {item!r}: expected NAME=CHECKPOINT")
        if any(name == n for n, _ in out):
            raise SegkdError(f"model argument {item!r}: name {name!r} given twice")
        if not Path(path).is_file():
            raise SegkdError(f"model argument {item!r}: checkpoint {path} not found")
        out.append((name, Path(path)))
    return out


def reused_export(
    folder: Path, ckpt: Path, size: tuple[int, int], variants: list[str], output: str
) -> Any:
    """The export already in `folder`, if it is of `ckpt` at `size` with `variants`, `output`."""
    from export.api import ExportReport
    from runtime.metadata import EXPORT_JSON, sha256_of

    path = folder / EXPORT_JSON
    if not path.is_file():
        raise SegkdError(f"--reuse: {path} not found (run once without --reuse)")
    manifest = json.loads(path.read_text())
    opts = manifest.get("options", {})
    if (
        manifest.get("checkpoint", {}).get("sha256") != sha256_of(ckpt)
        or opts.get("input_size") != list(size)
        or opts.get("int8_variants") != variants
        or opts.get("output", "labels") != output
    ):
        raise SegkdError(f"--reuse: {path} is not an export of {ckpt} at {size} with {variants}")
    return ExportReport(out_dir=folder, manifest_path=path, manifest=manifest, seconds=0.0)


def artifact_row(a: dict[str, Any]) -> dict[str, Any]:
    g = a.get("parity") or a.get("agreement") or {}
    return {
        "file": a["file"],
        "precision": a["precision"],
        "variant": a["variant"],
        "size_mib": round(a["size_bytes"] / 2**20, 1),
        "pixel_agreement": g.get("pixel_agreement"),
        "miou_vs_gt": g.get("miou_vs_ground_truth"),
        "miou_vs_fp32": g.get("miou_vs_fp32"),
        "max_abs_logit": g.get("max_abs_logit"),
    }


def time_round_robin(
    sessions: list[tuple[str, str, ort.InferenceSession, Any]], warmup: int, iters: int
) -> dict[tuple[str, str], list[float]]:
    """Times every session `iters` times, one run each per round, rotating the start."""
    for _, _, sess, x in sessions:
        for _ in range(warmup):
            run_ms(sess, x)
    times: dict[tuple[str, str], list[float]] = {(m, f): [] for m, f, _, _ in sessions}
    n = len(sessions)
    for r in range(iters):
        for i in range(n):
            m, f, sess, x = sessions[(r + i) % n]
            times[(m, f)].append(run_ms(sess, x))
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("models", nargs="+", help="NAME=CHECKPOINT, one per model")
    ap.add_argument("--reference", default=None, help="NAME the speedups are against [first]")
    ap.add_argument("--size", default="512x1024", help="export / input size HxW")
    ap.add_argument("--data", default=None, help="dataset SPEC [each checkpoint's training data]")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--eval-images", type=int, default=24, help="held-out val images for mIoU")
    ap.add_argument("--int8-method", default="minmax", choices=("minmax", "entropy", "percentile"))
    ap.add_argument("--variants", default="cpu,tensorrt", help="INT8 variants to export and time")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument(
        "--output",
        default="labels",
        choices=("labels", "labels-lowres"),
        help="graph output: full-size labels, or the argmax at the output stride",
    )
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10, help="timed runs per file")
    ap.add_argument("--out", default=None, help="keep the exports here, one folder per model")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="time the exports already in --out (same checkpoints, size, variants) again",
    )
    args = ap.parse_args(argv)
    try:
        models = parse_models(args.models)
        names = [n for n, _ in models]
        ref = args.reference or names[0]
        if ref not in names:
            raise SegkdError(f"--reference {ref!r} is not one of the models ({', '.join(names)})")
        size = parse_size(args.size, "--size", 32)
        for opt, n in (("--threads", args.threads), ("--iters", args.iters)):
            if n < 1:
                raise SegkdError(f"{opt} must be >= 1, got {n}")
        variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        if args.reuse and not args.out:
            raise SegkdError("--reuse needs --out, the folder of an earlier run's exports")
        with tempfile.TemporaryDirectory(prefix="segkd-rtbench-") as tmp:
            root = Path(args.out) if args.out else Path(tmp)
            load = {"start": _load()}
            exports: dict[str, dict[str, Any]] = {}
            for name, ckpt in models:
                t0 = time.perf_counter()
                if args.reuse:
                    report = reused_export(root / name, ckpt, size, variants, args.output)
                    print(f"[bench] reusing {root / name}", file=sys.stderr, flush=True)
                    exports[name] = {"checkpoint": str(ckpt), "arch": report.manifest["arch"],
                                     "export_s": None, "report": report}  # fmt: skip
                    continue
                print(f"[bench] exporting {name} ({ckpt})", file=sys.stderr, flush=True)
                report = export_checkpoint(
                    ckpt,
                    root / name,
                    precisions=("fp32", "int8"),
                    input_size=size,
                    calib_data=args.data,
                    calib_images=args.calib_images,
                    verify_images=args.eval_images,
                    int8_method=args.int8_method,
                    int8_variants=variants,
                    output=args.output,
                    build_engines=False,
                    # Measure every file; only an fp32 mismatch (a bug) stops the run.
                    tolerances=Tolerances(int8_min_agreement=0.0),
                    progress=lambda m: print(f"[export] {m}", file=sys.stderr, flush=True),
                )
                exports[name] = {
                    "checkpoint": str(ckpt),
                    "arch": report.manifest["arch"],
                    "export_s": round(time.perf_counter() - t0, 1),
                    "report": report,
                }
            load["after_exports"] = _load()
            from core.preprocess import PreprocessSpec
            from export.calibration import load_raw, prepare

            sessions = []
            for name, e in exports.items():
                m = e["report"].manifest
                pre = PreprocessSpec.from_dict(m["preprocess"])
                x = prepare(load_raw(m["verification"]["data"], "val", 1)[0], pre)[0].x
                for a in e["report"].artifacts:
                    sess, _ = open_session(root / name / a["file"], args.threads)
                    sessions.append((name, a["file"], sess, x))
            print(
                f"[bench] timing {len(sessions)} files round-robin, {args.warmup} warm-up + "
                f"{args.iters} runs each",
                file=sys.stderr,
                flush=True,
            )
            t0 = time.perf_counter()
            times = time_round_robin(sessions, args.warmup, args.iters)
            timing_s = time.perf_counter() - t0
            load["after_timing"] = _load()
    except SegkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    results: dict[str, dict[str, Any]] = {}
    for name, e in exports.items():
        m = e["report"].manifest
        rows = {}
        for a in e["report"].artifacts:
            rows[a["file"]] = {**artifact_row(a), **summarize_ms(times[(name, a["file"])])}
            if a["precision"] == "int8":
                rows[a["file"]]["quantization"] = a.get("quantization")
        results[name] = {
            "arch": e["arch"],
            "checkpoint": e["checkpoint"],
            "export_s": e["export_s"],
            "calibration": {k: v for k, v in m["calibration"].items() if k in CALIB_KEYS},
            "verification": {k: m["verification"][k] for k in ("data", "images")},
            "files": rows,
        }
    fp32 = "model.onnx"
    for name, r in results.items():
        own = r["files"][fp32]
        for f, row in r["files"].items():
            base = results[ref]["files"].get(f)
            row["speedup_vs_reference"] = round(base["median_ms"] / row["median_ms"], 2)
            row["speedup_vs_own_fp32"] = round(own["median_ms"] / row["median_ms"], 2)
            if row["precision"] == "int8" and own["miou_vs_gt"] is not None:
                row["miou_drop_points"] = round(100 * (own["miou_vs_gt"] - row["miou_vs_gt"]), 2)
            if name != ref:
                row["meets_goal"] = row["speedup_vs_reference"] >= GOAL_SPEEDUP

    header = (
        f"{'model':14s} {'file':20s} {'p50 ms':>8s} {'p90 ms':>8s} {f'vs {ref}':>14s} "
        f"{'vs fp32':>8s} {'agree':>8s} {'mIoU':>6s} {'drop':>6s}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        for f, row in r["files"].items():
            agree = "-" if row["precision"] == "fp32" else f"{100 * row['pixel_agreement']:.2f}%"
            miou = f"{100 * row['miou_vs_gt']:.1f}" if row["miou_vs_gt"] is not None else "-"
            drop = f"{row['miou_drop_points']:+.2f}" if "miou_drop_points" in row else "-"
            print(
                f"{name:14s} {f:20s} {row['median_ms']:8.1f} {row['p90_ms']:8.1f} "
                f"{row['speedup_vs_reference']:13.2f}x {row['speedup_vs_own_fp32']:7.2f}x "
                f"{agree:>8s} {miou:>6s} {drop:>6s}"
            )
    env = {
        "cpu": describe_cpu(),
        "cpu_info": cpu_info(),
        "threads": args.threads,
        "output": args.output,
        "onnxruntime": ort.__version__,
        "loadavg": load,
        "timing_s": round(timing_s, 1),
    }
    print(f"input 1x3x{size[0]}x{size[1]}, {args.threads} intra-op threads, onnxruntime "
          f"{ort.__version__}, {describe_cpu()}; load average {load}")  # fmt: skip
    if args.json:
        write_json_atomic(
            {
                "size": list(size),
                "reference": ref,
                "goal_speedup": GOAL_SPEEDUP,
                "int8_method": args.int8_method,
                "warmup": args.warmup,
                "env": env,
                "models": results,
            },
            args.json,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
