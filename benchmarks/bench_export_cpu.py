"""ONNX Runtime CPU latency and mIoU of every exported precision of one student.

Exports CKPT with `export.api.export_checkpoint` (fp32, fp16, INT8 for TensorRT, INT8
for CPU) at --size, then times each file on onnxruntime's CPU provider with
--threads intra-op threads, batch 1, on a real preprocessed val image. The mIoU of
each artifact (vs ground truth and vs the fp32 labels) comes from the export's own
verification on --eval-images held-out val images; calibration used the train split.

fp16 is timed for completeness only: onnxruntime's CPU provider has few fp16 kernels
and the file exists for TensorRT. The TensorRT INT8 file (symmetric int8, no fused
Conv+ReLU on CPU) is likewise not meant for the CPU; `model.int8-cpu.onnx` is.

Run from the repository root:
    python benchmarks/bench_export_cpu.py CKPT [--size 512x1024] [--data synthetic]
        [--threads 2] [--iters 10] [--warmup 3] [--eval-images 24] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnxruntime as ort

from core.errors import SegkdError
from export.api import Tolerances, export_checkpoint, format_summary
from runtime.backends.onnxruntime import has_fp16_qdq
from runtime.machine import cpu_info
from runtime.sizes import parse_size


def open_session(path: Path, threads: int) -> tuple[ort.InferenceSession, float]:
    """An onnxruntime CPU session with `threads` intra-op threads, and its load time (s)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if has_fp16_qdq(str(path)):  # as the runtime does: such graphs fail to load fused
        opts.add_session_config_entry("session.disable_quant_qdq", "1")
    t0 = time.perf_counter()
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    return sess, time.perf_counter() - t0


def run_ms(sess: ort.InferenceSession, x: np.ndarray) -> float:
    """One batch-1 run of `sess` on `x`, in milliseconds."""
    feed = {sess.get_inputs()[0].name: x}
    t = time.perf_counter()
    sess.run(None, feed)
    return (time.perf_counter() - t) * 1000.0


def summarize_ms(times: list[float]) -> dict[str, Any]:
    times = sorted(times)
    return {
        "median_ms": round(statistics.median(times), 1),
        "p90_ms": round(times[min(len(times) - 1, int(0.9 * len(times)))], 1),
        "min_ms": round(times[0], 1),
        "iters": len(times),
    }


def time_session(
    path: Path, x: np.ndarray, threads: int, warmup: int, iters: int
) -> dict[str, Any]:
    sess, load_s = open_session(path, threads)
    for _ in range(warmup):
        run_ms(sess, x)
    times = [run_ms(sess, x) for _ in range(iters)]
    return {
        "provider": sess.get_providers()[0],
        "session_load_s": round(load_s, 2),
        **summarize_ms(times),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("ckpt", help="a pspnet_r18 (or any) segkd student checkpoint")
    ap.add_argument("--size", default="512x1024", help="export / input size HxW")
    ap.add_argument("--data", default=None, help="dataset SPEC [the checkpoint's training data]")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--eval-images", type=int, default=24, help="held-out val images for mIoU")
    ap.add_argument("--int8-method", default="minmax", choices=("minmax", "entropy", "percentile"))
    ap.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--out", default=None, help="keep the export here [a temporary folder]")
    ap.add_argument("--json", default=None, help="write the results here")
    args = ap.parse_args(argv)
    try:
        size = parse_size(args.size, "--size", 32)
        with tempfile.TemporaryDirectory(prefix="segkd-bench-") as tmp:
            out = Path(args.out) if args.out else Path(tmp)
            load_before = os.getloadavg()
            report = export_checkpoint(
                args.ckpt,
                out,
                input_size=size,
                calib_data=args.data,
                calib_images=args.calib_images,
                verify_images=args.eval_images,
                int8_method=args.int8_method,
                build_engines=False,
                # Measure every precision; only an fp32 mismatch (a bug) stops the run.
                tolerances=Tolerances(fp16_min_agreement=0.0, int8_min_agreement=0.0),
                progress=lambda m: print(f"[export] {m}", file=sys.stderr, flush=True),
            )
            print(format_summary(report), file=sys.stderr)
            from core.preprocess import PreprocessSpec
            from export.calibration import load_raw, prepare

            pre = PreprocessSpec.from_dict(report.manifest["preprocess"])
            data = report.manifest["verification"]["data"]
            x = prepare(load_raw(data, "val", 1)[0], pre)[0].x
            rows = []
            for a in report.artifacts:
                print(f"[bench] timing {a['file']}", file=sys.stderr, flush=True)
                t = time_session(out / a["file"], x, args.threads, args.warmup, args.iters)
                g = a.get("parity") or a.get("agreement") or {}
                rows.append(
                    {
                        "file": a["file"],
                        "precision": a["precision"],
                        "variant": a["variant"],
                        "size_mib": round(a["size_bytes"] / 2**20, 1),
                        **t,
                        "miou_vs_gt": g.get("miou_vs_ground_truth"),
                        "miou_vs_fp32": g.get("miou_vs_fp32"),
                        "pixel_agreement": g.get("pixel_agreement"),
                    }
                )
            load_after = os.getloadavg()
    except SegkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    base = rows[0]["median_ms"] if rows and rows[0]["precision"] == "fp32" else None
    header = f"{'artifact':22s} {'prec':5s} {'variant':9s} {'MiB':>6s} {'median ms':>10s} {'p90 ms':>8s} {'speedup':>8s} {'mIoU':>6s} {'agree':>8s}"
    print(header)
    print("-" * len(header))
    for r in rows:
        speed = f"{base / r['median_ms']:.2f}x" if base else "-"
        miou = f"{100 * r['miou_vs_gt']:.1f}" if r["miou_vs_gt"] is not None else "-"
        agree = f"{100 * r['pixel_agreement']:.2f}%" if r["pixel_agreement"] is not None else "-"
        print(
            f"{r['file']:22s} {r['precision']:5s} {r['variant']:9s} {r['size_mib']:6.1f} "
            f"{r['median_ms']:10.1f} {r['p90_ms']:8.1f} {speed:>8s} {miou:>6s} {agree:>8s}"
        )
    env = {
        "cpu": cpu_info(),
        "cpu_count": os.cpu_count(),
        "threads": args.threads,
        "onnxruntime": ort.__version__,
        "loadavg_before": [round(v, 2) for v in load_before],
        "loadavg_after": [round(v, 2) for v in load_after],
    }
    print(
        f"input 1x3x{size[0]}x{size[1]}, {args.threads} threads, onnxruntime {ort.__version__}; "
        f"mIoU on {report.manifest['verification']['images']} held-out "
        f"{report.manifest['verification']['data']} val images; load average "
        f"{env['loadavg_before'][0]} -> {env['loadavg_after'][0]} on {env['cpu_count']} cores"
    )
    if args.json:
        result = {
            "size": list(size),
            "env": env,
            "results": rows,
            "calibration": report.manifest["calibration"],
            "verification": report.manifest["verification"],
        }
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
