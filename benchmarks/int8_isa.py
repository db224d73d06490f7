"""INT8 labels on CPUs with and without VNNI, for every INT8 recipe, side by side.

Exports CKPT (fp32 + both INT8 variants) at --size with calibration on the train split,
adds the same CPU recipe with 8-bit weights (the recipe before 7-bit weights) for
comparison, then runs every file on held-out val images:
  * natively, with each interpreter in --runner (default: this one), so two
    onnxruntime releases can be compared on the same files;
  * under `qemu-x86_64 -cpu Haswell` (AVX2 without VNNI or AVX-512), when qemu-user is
    installed, so a VNNI machine also shows what an AVX2-only CPU computes.
Each row gives pixel agreement with PyTorch fp32 labels and mIoU against the ground
truth next to the fp32 file's. With --iters N it also times every file natively in this
interpreter (median of N, --threads intra-op threads), round-robin across files so that
a shared machine's load falls on all of them alike: compare the ratios, not the
milliseconds. Emulated runs are never timed.

Run from the repository root:
    python benchmarks/int8_isa.py CKPT [--data synthetic:size=64x128,train=48,val=6]
        [--size 64x128] [--calib-images 32] [--images 6]
        [--runner /path/to/other/python ...] [--iters 0 --threads 2] [--native-only]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2
import numpy as np
import onnx
import torch

from core.metrics import ConfusionMatrix
from core.preprocess import PreprocessSpec
from distill.checkpoint import load_model
from export.api import INPUT_NAME, export_checkpoint
from export.calibration import SampleReader, load_raw, prepare
from export.int8 import CPU_RECIPE, quantize_int8
from runtime.backends.onnxruntime import has_fp16_qdq
from runtime.machine import cpu_info
from runtime.sizes import parse_size

# The CPU recipe as it was before 7-bit weights: the comparison row.
EIGHT_BIT_CPU = dataclasses.replace(
    CPU_RECIPE, name="cpu-8bit", reduce_range=False, float_pooled_context=False
)

_LABELS = """
import sys, numpy as np, onnxruntime as ort
x = np.load(sys.argv[1]); opts = ort.SessionOptions()
if sys.argv[4:] == ["unfused"]:  # fp16 Q/DQ (the TensorRT file): as segkd's backend runs it
    opts.add_session_config_entry("session.disable_quant_qdq", "1")
s = ort.InferenceSession(sys.argv[2], opts, providers=["CPUExecutionProvider"])
name = s.get_inputs()[0].name
np.save(sys.argv[3], np.concatenate([s.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))]))
print(ort.__version__)
"""


def _labels(
    runner: list[str], script: Path, x: Path, model: Path, out: Path
) -> tuple[np.ndarray, str]:
    mode = ["unfused"] if has_fp16_qdq(str(model)) else []
    done = subprocess.run(
        [*runner, str(script), str(x), str(model), str(out), *mode],
        check=True, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    return np.load(out), done.stdout.strip().splitlines()[-1]


def _miou(pred: np.ndarray, masks: np.ndarray, num_classes: int) -> float:
    """mIoU of label maps against masks, resizing labels (nearest) to the mask size."""
    cm = ConfusionMatrix(num_classes)
    for p, m in zip(pred, masks, strict=True):
        if p.shape != m.shape:
            p = cv2.resize(p, (m.shape[1], m.shape[0]), interpolation=cv2.INTER_NEAREST)
        cm.update(p, m)
    return float(cm.summary().miou)


def _time_round_robin(
    folder: Path, files: list[str], x: np.ndarray, iters: int, threads: int
) -> dict[str, float]:
    """Median ms per file, one run of each file per round so load hits all alike."""
    if iters < 1:
        return {}
    import onnxruntime as ort

    sessions = {}
    for name in files:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        if has_fp16_qdq(str(folder / name)):
            opts.add_session_config_entry("session.disable_quant_qdq", "1")
        s = ort.InferenceSession(str(folder / name), opts, providers=["CPUExecutionProvider"])
        feed = {s.get_inputs()[0].name: x}
        s.run(None, feed)  # warm-up
        sessions[name] = (s, feed)
    times: dict[str, list[float]] = {n: [] for n in files}
    for _ in range(iters):
        for name, (s, feed) in sessions.items():
            t0 = time.perf_counter()
            s.run(None, feed)
            times[name].append((time.perf_counter() - t0) * 1e3)
    out = {n: round(statistics.median(v), 1) for n, v in times.items()}
    for n, ms in out.items():
        print(f"{n:26s} {ms:8.1f} ms  ({out['model.onnx'] / ms:.2f}x fp32)", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("ckpt", type=Path)
    ap.add_argument("--data", default="synthetic:size=64x128,train=48,val=6")
    ap.add_argument("--size", default="64x128")
    ap.add_argument("--calib-images", type=int, default=32)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--runner", action="append", default=None, help="python with onnxruntime")
    ap.add_argument("--iters", type=int, default=0, help="time each file natively N times")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--native-only", action="store_true", help="skip the qemu runs")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    runners = args.runner or [sys.executable]
    qemu = None if args.native_only else shutil.which("qemu-x86_64")

    with tempfile.TemporaryDirectory(prefix="segkd-isa-") as tmp_name:
        tmp = Path(tmp_name)
        export_checkpoint(
            args.ckpt, tmp / "export", precisions="fp32,int8", input_size=size,
            calib_data=args.data, calib_images=args.calib_images, verify_images=args.images,
            build_engines=False,
        )  # fmt: skip
        pre = PreprocessSpec(input_size=size)
        calib, _ = load_raw(args.data, "train", args.calib_images)
        reader = SampleReader(INPUT_NAME, [p.x for p in prepare(calib, pre)])
        legacy = quantize_int8(tmp / "export" / "model.onnx", reader, EIGHT_BIT_CPU)
        onnx.save(legacy, str(tmp / "export" / "model.int8-cpu-8bit.onnx"))

        val, labels = load_raw(args.data, "val", args.images)
        prepared = prepare(val, pre)
        x = np.concatenate([p.x for p in prepared])
        np.save(tmp / "x.npy", x)
        masks = np.stack([p.mask for p in prepared])
        model, _ = load_model(args.ckpt)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).argmax(1).numpy()
        script = tmp / "labels.py"
        script.write_text(_LABELS)

        rows: list[dict[str, Any]] = []
        files = ["model.onnx", "model.int8.onnx", "model.int8-cpu.onnx", "model.int8-cpu-8bit.onnx"]
        timings = _time_round_robin(tmp / "export", files, x[:1], args.iters, args.threads)
        for runner in runners:
            modes = [("native", [runner])]
            if qemu:
                modes.append(("qemu Haswell (AVX2, no VNNI)", [qemu, "-cpu", "Haswell", runner]))
            for mode, cmd in modes:
                fp32_miou = None
                for name in files:
                    pred, ort_version = _labels(
                        cmd, script, tmp / "x.npy", tmp / "export" / name, tmp / "y.npy"
                    )
                    if pred.shape != ref.shape:
                        raise SystemExit(f"{name}: labels {pred.shape} vs reference {ref.shape}")
                    miou = _miou(pred, masks, labels.num_classes)
                    fp32_miou = miou if name == "model.onnx" else fp32_miou
                    row = {
                        "file": name, "runner": runner, "onnxruntime": ort_version, "cpu": mode,
                        "pixel_agreement": float((pred == ref).mean()),
                        "miou": miou, "fp32_miou": fp32_miou,
                    }  # fmt: skip
                    rows.append(row)
                    print(
                        f"{name:26s} ort {ort_version:8s} {mode:30s} agree "
                        f"{row['pixel_agreement'] * 100:6.2f} %  mIoU {miou * 100:5.2f} "
                        f"(fp32 {fp32_miou * 100:5.2f})",
                        flush=True,
                    )
    result = {
        "command": " ".join(sys.argv),
        "machine": cpu_info(),
        "qemu": qemu,
        "data": args.data,
        "size": list(size),
        "calib_images": args.calib_images,
        "images": args.images,
        "rows": rows,
        "timing": {"iters": args.iters, "threads": args.threads, "median_ms": timings},
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
