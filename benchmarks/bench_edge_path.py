"""The edge frame path, before and after, in one run: host share, FPS, parity, mIoU.

    python benchmarks/bench_edge_path.py --reference EXP_LOGITS/model.onnx \
        --variant before=EXP_FLOAT_LABELS/model.int8-cpu.onnx \
        --variant after=EXP_UINT8_LOWRES/model.int8-cpu.onnx ... \
        --data synthetic:size=128x256 --frame-size 1024x2048 --rounds 4 --iters 5 \
        --demo before --demo after --json docs/results/edgepath_cpu.json

Timing: every variant goes through `runtime.bench.benchmark` (what `segkd bench` runs:
pre-, inference and post-processing timed apart, on a street-like camera frame), in
`--rounds` interleaved rounds of `--iters` frames each, so a change of load on a shared
machine hits every variant alike; the means of equal rounds are averaged.
Quality: every variant's label maps (`Segmenter.predict`, the deployed path) on the
dataset's val images, against the reference artifact's (float input, logits output,
argmax on the host) and against the ground truth.
Demo: `runtime.demo.run_demo` on a generated video at the frame size, against the bench
FPS of the same variant measured just before.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from bench_runtime_cpu import make_video

from core.metrics import ConfusionMatrix
from distill.data import build_dataset
from runtime.bench import benchmark, format_table
from runtime.demo import run_demo
from runtime.loader import open_segmenter
from runtime.machine import cpu_info, describe_cpu
from runtime.sizes import parse_size

STAGES = ("preprocess", "inference", "postprocess", "end_to_end")


def _open(path: Path, threads: int) -> Any:
    return open_segmenter(path, backend="onnxruntime", device="cpu", intra_op_threads=threads)


def _quality(paths: dict[str, Path], reference: Path, data: str, n: int, threads: int) -> dict:
    ds = build_dataset(data, "val")
    idx = np.linspace(0, len(ds) - 1, min(n, len(ds))).round().astype(int)
    samples = [ds[int(i)] for i in idx]
    frames = [(np.ascontiguousarray(img[:, :, ::-1]), mask) for img, mask in samples]
    k = ds.labels.num_classes
    with _open(reference, threads) as seg:
        ref = [seg.predict(f) for f, _ in frames]
        ref_up = [seg.predict_upsampled(f) for f, _ in frames]  # the literature's convention
    out: dict[str, Any] = {}
    ref_gt, ref_up_gt = ConfusionMatrix(k), ConfusionMatrix(k)
    for r, u, (_, m) in zip(ref, ref_up, frames, strict=True):
        ref_gt.update(r, m)
        ref_up_gt.update(u, m)
    out["reference"] = {
        "model": str(reference),
        "miou_vs_ground_truth": ref_gt.summary().miou,
        "miou_vs_ground_truth_upsampled_logits": ref_up_gt.summary().miou,
        "images": len(frames),
    }
    for name, path in paths.items():
        with _open(path, threads) as seg:
            pred = [seg.predict(f) for f, _ in frames]
        same = sum(int((p == r).sum()) for p, r in zip(pred, ref, strict=True))
        same_up = sum(int((p == r).sum()) for p, r in zip(pred, ref_up, strict=True))
        total = sum(p.size for p in pred)
        gt, vs_ref = ConfusionMatrix(k), ConfusionMatrix(k)
        for p, r, (_, m) in zip(pred, ref, frames, strict=True):
            gt.update(p, m)
            vs_ref.update(p, r)
        out[name] = {
            "model": str(path),
            "pixel_agreement_vs_reference": same / total,
            "pixel_agreement_vs_reference_upsampled_logits": same_up / total,
            "miou_vs_reference": vs_ref.summary().miou,
            "miou_vs_ground_truth": gt.summary().miou,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reference", type=Path, required=True, help="float-input logits .onnx")
    ap.add_argument("--variant", action="append", required=True, help="NAME=PATH, repeatable")
    ap.add_argument("--data", default="synthetic:size=128x256", help="dataset SPEC (val split)")
    ap.add_argument("--quality-images", type=int, default=16)
    ap.add_argument("--frame-size", default="1024x2048")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--demo", action="append", default=[], help="variant NAME to run the demo on")
    ap.add_argument("--demo-frames", type=int, default=24)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    size = parse_size(args.frame_size, "--frame-size")
    paths = dict(v.split("=", 1) for v in args.variant)
    paths = {k: Path(v) for k, v in paths.items()}

    segs = {name: _open(p, args.threads) for name, p in paths.items()}
    for seg in segs.values():  # warm every session before the first timed round
        benchmark(seg, frame_size=size, iters=1, warmup=args.warmup)
    rounds: dict[str, list[Any]] = {name: [] for name in paths}
    for _ in range(args.rounds):
        for name, seg in segs.items():
            rounds[name].append(benchmark(seg, frame_size=size, iters=args.iters, warmup=0))
    timing: dict[str, Any] = {}
    for name, results in rounds.items():
        means = {s: float(np.mean([getattr(r, s).mean_ms for r in results])) for s in STAGES}
        first = results[0]
        timing[name] = {
            "model": str(paths[name]),
            "input": first.input_kind,
            "output": first.output_kind,
            "variant": first.variant,
            "precision": first.precision,
            "provider": first.provider,
            **{f"{s}_ms": means[s] for s in STAGES},
            "host_share": (means["preprocess"] + means["postprocess"]) / means["end_to_end"],
            "fps": 1e3 / means["end_to_end"],
            "rounds": [r.to_dict() for r in results],
        }
    for seg in segs.values():
        seg.close()
    from rich.console import Console

    Console(width=220).print(format_table([r for rs in rounds.values() for r in rs[-1:]]))
    for name, t in timing.items():
        print(
            f"{name:>16}: pre {t['preprocess_ms']:7.2f}  infer {t['inference_ms']:8.2f}  "
            f"post {t['postprocess_ms']:7.2f}  e2e {t['end_to_end_ms']:8.2f} ms  "
            f"host {100 * t['host_share']:5.1f} %  {t['fps']:.3f} FPS"
        )

    quality = _quality(paths, args.reference, args.data, args.quality_images, args.threads)
    for name, q in quality.items():
        print(f"{name:>16}: {json.dumps({k: v for k, v in q.items() if k != 'model'})}")

    demos = {}
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "in.mp4"
        make_video(video, args.demo_frames, size)
        for name in args.demo:
            with _open(paths[name], args.threads) as seg:
                bench = benchmark(seg, frame_size=size, iters=args.iters, warmup=args.warmup)
                stats = run_demo(video, seg, Path(tmp) / f"{name}.mp4")
            demos[name] = {
                "model": str(paths[name]),
                "frames_out": stats.frames_out,
                "sustained_fps": stats.fps,
                "bench_fps": bench.end_to_end.fps,
                "ratio": stats.fps / bench.end_to_end.fps,
            }
            print(f"demo {name}: {stats.fps:.3f} FPS sustained / {bench.end_to_end.fps:.3f} bench")
    if args.json:
        payload = {
            "cpu": describe_cpu(),
            "cpu_info": cpu_info(),
            "frame_size": list(size),
            "threads": args.threads,
            "rounds": args.rounds,
            "iters_per_round": args.iters,
            "timing": timing,
            "quality": quality,
            "demo": demos,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp_json = args.json.with_suffix(".json.tmp")
        tmp_json.write_text(json.dumps(payload, indent=1))
        tmp_json.replace(args.json)


if __name__ == "__main__":
    main()
