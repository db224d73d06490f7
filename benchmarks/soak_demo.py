"""Soak test of the real-time demo: a long video through `runtime.demo.run_demo`, watching
memory. A leak per frame (a queue that grows, a writer buffer, an ORT arena that keeps
allocating) shows as RSS that keeps rising after warm-up; a healthy run is flat.

It writes a long synthetic street video (default 3000 frames at 256x512, panning over
rendered scenes so every frame differs), exports a pspnet_r18 with random weights at
128x256 to ONNX (legacy exporter, argmax + uint8 in the graph, the "segkd" metadata
the runtime reads) unless --model names a real model (.onnx, .engine, export folder or
.pt), runs the demo with an annotated .mp4 as output, and samples the process RSS every
--sample-every frames from inside the model call.

Reports frames in / out / in the written file, RSS at start, after warm-up and at the
end, the largest growth after warm-up and its trend (MB per 1000 frames), sustained FPS.

Run from the repository root (minutes on a 2-core CPU):
    python benchmarks/soak_demo.py [--frames 3000] [--model PATH] [--json soak.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import psutil

from core.errors import SegkdError
from core.labels import CITYSCAPES
from core.preprocess import PreprocessSpec
from runtime.machine import cpu_info
from runtime.segmenter import Segmenter
from runtime.sizes import parse_size

MB = 1024 * 1024


def write_video(path: Path, frames: int, size: tuple[int, int], fps: float = 30.0) -> Path:
    """A street video: a slow pan over a few rendered scenes (so frames differ), mp4v."""
    from distill.data.synthetic import render_street

    h, w = size
    scenes = [render_street(0, "val", i, (h, 2 * w))[0] for i in range(8)]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise SegkdError(f"cannot write {path}: no mp4v encoder in this OpenCV")
    per_scene = max(1, frames // len(scenes))
    try:
        for i in range(frames):
            scene = scenes[(i // per_scene) % len(scenes)]
            x = (i % per_scene) * w // per_scene  # pan across the double-width scene
            frame = cv2.cvtColor(np.ascontiguousarray(scene[:, x : x + w]), cv2.COLOR_RGB2BGR)
            writer.write(frame)
    finally:
        writer.release()
    return path


def export_random_pspnet(path: Path, input_size: tuple[int, int]) -> Path:
    """pspnet_r18 (random weights, 19 classes) -> ONNX with labels out and segkd metadata."""
    import warnings

    import onnx
    import torch

    from distill.models import build_model

    class Labels(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x).argmax(1).to(torch.uint8)

    torch.manual_seed(0)
    net = Labels(build_model("pspnet_r18", CITYSCAPES.num_classes, aux=False).eval())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net, (torch.zeros(1, 3, *input_size),), str(path), dynamo=False,
            input_names=["input"], output_names=["labels"], opset_version=17,
        )  # fmt: skip
    model = onnx.load(str(path))
    meta = {
        "arch": "pspnet_r18",
        "labels": CITYSCAPES.to_dict(),
        "preprocess": PreprocessSpec(input_size=input_size).to_dict(),
        "output": "labels",
        "precision": "fp32",
        "input_name": "input",
        "output_name": "labels",
    }
    model.metadata_props.add(key="segkd", value=json.dumps(meta))
    onnx.save(model, str(path))
    return path


class RssProbe:
    """Wraps a Segmenter: every `every` frames, records (frame, RSS) from the model thread."""

    def __init__(self, seg: Segmenter, every: int) -> None:
        self._seg, self.every = seg, every
        self.proc = psutil.Process()
        self.frames = 0
        self.samples: list[tuple[int, int]] = []

    def __getattr__(self, name: str) -> Any:  # labels, backend_name, input_size, ...
        return getattr(self._seg, name)

    def predict(self, frame: np.ndarray, **kw: Any) -> np.ndarray:
        out = self._seg.predict(frame, **kw)
        self.frames += 1
        if self.frames % self.every == 0:
            self.samples.append((self.frames, self.proc.memory_info().rss))
        return out


def count_frames(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.grab():
        n += 1
    cap.release()
    return n


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from pipeline.artifacts import open_model
    from runtime.demo import run_demo

    size = parse_size(args.frame_size, "--frame-size", minimum=16)
    t0 = time.perf_counter()
    video = write_video(work / "soak_in.mp4", args.frames, size)
    gen_s = time.perf_counter() - t0
    model = args.model or export_random_pspnet(
        work / "pspnet_r18_random.onnx", parse_size(args.input_size, "--input-size", minimum=32)
    )
    out = Path(args.out) if args.out else work / "soak_out.mp4"
    proc = psutil.Process()
    with open_model(model, args.backend, "auto", None, args.threads) as seg:
        probe = RssProbe(seg, args.sample_every)
        rss_start = proc.memory_info().rss
        stats = run_demo(video, probe, out)  # type: ignore[arg-type]
        rss_end = proc.memory_info().rss
        backend = f"{seg.backend_name} ({seg.provider})"
        input_hw = seg.input_size
    written = count_frames(out)

    warm = [(f, r) for f, r in probe.samples if f >= args.warmup]
    if len(warm) < 2:
        raise SegkdError(f"--warmup {args.warmup} leaves fewer than 2 RSS samples; lower it")
    f_warm, rss_warm = warm[0]
    frames_after = np.array([f for f, _ in warm], dtype=np.float64)
    rss_after = np.array([r for _, r in warm], dtype=np.float64)
    slope = float(np.polyfit(frames_after, rss_after, 1)[0]) * 1000 / MB
    return {
        "video": {"frames": args.frames, "size": list(size), "generate_s": gen_s},
        "model": str(model),
        "backend": backend,
        "input_size": list(input_hw),
        "frames_in": stats.frames_in,
        "frames_out": stats.frames_out,
        "frames_in_written_file": written,
        "stopped": stats.stopped,
        "fps": stats.fps,
        "infer_ms_mean": stats.infer_ms_mean,
        "seconds": stats.seconds,
        "rss_mb": {
            "start": rss_start / MB,
            "after_warmup": rss_warm / MB,
            "warmup_frame": f_warm,
            "end_in_run": probe.samples[-1][1] / MB,
            "end_after_close": rss_end / MB,
            "max_after_warmup": float(rss_after.max()) / MB,
            "max_growth_after_warmup": float(rss_after.max() - rss_warm) / MB,
            "trend_per_1000_frames": slope,
        },
        "samples": [[f, r / MB] for f, r in probe.samples],
        "machine": {
            "python": platform.python_version(),
            "cpu": cpu_info(),
            "cores": psutil.cpu_count(),
        },
    }


def table(r: dict[str, Any]) -> str:
    m = r["rss_mb"]
    rows = [
        ("model", f"{Path(r['model']).name} [{r['backend']}] at {r['input_size'][0]}x{r['input_size'][1]}"),
        ("video", f"{r['video']['frames']} frames {r['video']['size'][0]}x{r['video']['size'][1]}"),
        ("frames in / out / in file", f"{r['frames_in']} / {r['frames_out']} / {r['frames_in_written_file']}"),
        ("stopped by", r["stopped"]),
        ("sustained FPS", f"{r['fps']:.1f} ({r['infer_ms_mean']:.1f} ms model thread/frame)"),
        ("RSS start", f"{m['start']:.1f} MB"),
        (f"RSS after warm-up (frame {m['warmup_frame']})", f"{m['after_warmup']:.1f} MB"),
        ("RSS end (in run / after close)", f"{m['end_in_run']:.1f} / {m['end_after_close']:.1f} MB"),
        ("max growth after warm-up", f"{m['max_growth_after_warmup']:+.1f} MB"),
        ("trend after warm-up", f"{m['trend_per_1000_frames']:+.2f} MB / 1000 frames"),
    ]  # fmt: skip
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=3000)
    ap.add_argument("--frame-size", default="256x512", help="HxW of the generated video")
    ap.add_argument("--model", help=".onnx/.engine/.pt or export folder [random pspnet_r18]")
    ap.add_argument("--input-size", default="128x256", help="HxW of the random model")
    ap.add_argument("--backend", default="auto")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    ap.add_argument("--sample-every", type=int, default=50, help="RSS sample period (frames)")
    ap.add_argument("--warmup", type=int, default=300, help="frames before the baseline RSS")
    ap.add_argument("--out", help="annotated output video [a temporary file]")
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args(argv)
    if args.frames < 2 * args.warmup or args.sample_every < 1:
        print("error: --frames must be at least twice --warmup", file=sys.stderr)
        return 2
    try:
        with tempfile.TemporaryDirectory(prefix="segkd-soak-") as tmp:
            result = soak(args, Path(tmp))
    except SegkdError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    ok = result["frames_in"] == result["frames_out"] == result["frames_in_written_file"]
    return 0 if ok and result["frames_in"] == args.frames else 1


if __name__ == "__main__":
    sys.exit(main())
