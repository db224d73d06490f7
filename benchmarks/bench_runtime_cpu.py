"""Runtime latency on this machine: PyTorch eager vs ONNX Runtime fp32 vs INT8, and the
demo's sustained FPS against the bench FPS.

    python benchmarks/bench_runtime_cpu.py --checkpoint runs/x/student/best.pt \
        --export runs/x/export --frame-size 1024x2048 --iters 20 --json docs/results/runtime_cpu.json

Every backend is timed through the same `runtime.bench.benchmark` that `segkd bench` uses
(pre-processing, inference and post-processing separately), on a street-like camera frame.
The demo runs `runtime.demo.run_demo` on a generated video of the same frame size, with
capture, inference and writing in their own threads.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import cv2

from pipeline.artifacts import open_model
from runtime.bench import benchmark, format_table, synthetic_frame
from runtime.demo import run_demo
from runtime.sizes import parse_size


def make_video(path: Path, frames: int, size: tuple[int, int]) -> None:
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (w, h))
    base = synthetic_frame(size, seed=1)
    for i in range(frames):
        writer.write(cv2.add(base, (i % 40) - 20))  # brightness drift: frames differ
    writer.release()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--export", type=Path, required=True, help="export folder of the same model")
    ap.add_argument("--frame-size", default="1024x2048")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--demo-frames", type=int, default=60)
    ap.add_argument("--demo-model", default="model.int8-cpu.onnx", help="file in --export")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    size = parse_size(args.frame_size, "--frame-size")

    candidates = [(args.checkpoint, "torch")]
    for name in ("model.onnx", "model.int8.onnx", "model.int8-cpu.onnx", "model.fp16.onnx"):
        if (args.export / name).is_file():
            candidates.append((args.export / name, "onnxruntime"))
    results = []
    for path, backend in candidates:
        with open_model(path, backend, "cpu") as seg:
            results.append(benchmark(seg, frame_size=size, iters=args.iters, warmup=args.warmup))
    from rich.console import Console

    Console(width=200).print(format_table(results))

    demo_path = args.export / args.demo_model
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "in.mp4"
        make_video(video, args.demo_frames, size)
        with open_model(demo_path, "onnxruntime", "cpu") as seg:
            bench_fps = benchmark(seg, frame_size=size, iters=args.iters, warmup=args.warmup)
            stats = run_demo(video, seg, Path(tmp) / "out.mp4")
    demo = {
        "model": str(demo_path),
        "frames_in": stats.frames_in,
        "frames_out": stats.frames_out,
        "sustained_fps": stats.fps,
        "bench_fps": bench_fps.end_to_end.fps,
        "ratio": stats.fps / bench_fps.end_to_end.fps,
    }
    print(f"demo: {stats.frames_out}/{stats.frames_in} frames, {stats.fps:.2f} FPS sustained vs "
          f"{bench_fps.end_to_end.fps:.2f} FPS bench ({100 * demo['ratio']:.0f} %)")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"bench": [r.to_dict() for r in results], "demo": demo}
        args.json.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
