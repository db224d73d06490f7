"""Options of `segkd bench` (and the pipeline's bench section: iters, warmup, threads)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from core.options import Option, OptionSet
from core.schema.runtime import RUNTIME

BENCH = OptionSet([
    Option("backend", str, "auto", "comma list: auto, onnxruntime, tensorrt, torch",
           config=False),
    replace(RUNTIME["device"], help="auto, cpu, cuda[:N] or tensorrt"),
    RUNTIME["precision"],
    Option("iters", int, 50, "timed iterations", min=1),
    Option("warmup", int, 10, "untimed iterations first", min=0),
    Option("batch", int, 1, "frames per inference", min=1, config=False),
    Option("frame_size", str, "1024x2048", "HxW of the synthetic camera frame", config=False),
    Option("threads", int | None, None, "ONNX Runtime intra-op threads", min=1),
    Option("all_artifacts", bool, False, "bench every artifact an export folder lists",
           flag="--all", config=False),
    Option("json_out", Path | None, None, "write the results as JSON", flag="--json",
           config=False),
])  # fmt: skip
