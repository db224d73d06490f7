"""Where a student's TensorRT INT8 file loses agreement: fake-quant subsets on its own graph.

Builds the TensorRT INT8 structure (the same export, calibration and placement as `segkd
export`, distill/qat/structure.py) and runs the fake-quant graph (distill/qat/graph_module.py,
which reproduces the Q/DQ file's labels; docs/notes/qat.md) on held-out val images with:
everything quantized, activations only, weights only, and, with --leave-one-out, every
activation scale group left in float in turn. Also prints how many fp32 pixels are within
a small logit margin of another class: the pixels any quantization noise can flip.

    python benchmarks/int8_sensitivity.py /tmp/ddr/best.pt --size 256x512 \\
        --data synthetic:size=128x256 --images 8 --leave-one-out --json /tmp/sens.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from core.atomic_io import write_json_atomic
from distill.qat.graph_module import QuantGraph
from distill.qat.stage import load_student
from distill.qat.structure import build_structure
from export.calibration import SampledSplit, SampleReader, prepare
from export.onnx_fp32 import INPUT_NAME, export_fp32
from runtime.machine import describe_cpu
from runtime.sizes import parse_size


def _labels(graph: QuantGraph, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([graph(images[i : i + 1]) for i in range(len(images))]).argmax(1)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--size", default="256x512")
    p.add_argument("--data", default="synthetic:size=128x256")
    p.add_argument("--method", default="minmax")
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--images", type=int, default=8, help="held-out val images")
    p.add_argument("--leave-one-out", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    torch.set_num_threads(1)
    size = parse_size(a.size, "--size", 32)
    model, _, pre = load_student(a.checkpoint)
    pre = pre.with_input_size(size)
    started = time.perf_counter()
    fp32 = export_fp32(model, input_size=size, output="labels").model
    calib = SampledSplit(a.data, "train", a.calib_images, 0)
    st = build_structure(fp32, SampleReader(INPUT_NAME, calib, pre), a.method)
    graph = QuantGraph(st.graph, st.placement, st.scales).eval().requires_grad_(False)
    val = SampledSplit(a.data, "val", a.images, 0)
    x = torch.from_numpy(np.concatenate([s.x for s in prepare(list(val), pre)]))
    graph.quantize = False
    with torch.no_grad():
        logits = torch.cat([graph(x[i : i + 1]) for i in range(len(x))])
    top2 = logits.topk(2, dim=1).values
    margin = top2[:, 0] - top2[:, 1]
    ref = logits.argmax(1)
    points, weights = dict(graph.points), set(graph.quant_weights)

    def agreement(pts: dict, wts: set) -> float:
        graph.points, graph.quant_weights, graph.quantize = pts, wts, True
        return float((_labels(graph, x) == ref).float().mean())

    out = {
        "command": " ".join(sys.argv),
        "machine": describe_cpu(),
        "fp32_margin_below": {str(t): float((margin < t).float().mean()) for t in (0.1, 0.3, 1.0)},
        "all": agreement(points, weights),
        "activations_only": agreement(points, set()),
        "weights_only": agreement({}, weights),
    }
    print(json.dumps(out, indent=1), flush=True)
    if a.leave_one_out:
        out["without_group"] = {}
        for group, members in st.placement.groups().items():
            in_float = {(p.node, p.slot) for p in members}
            kept = {k: v for k, v in points.items() if k not in in_float}
            out["without_group"][group] = agreement(kept, weights)
        best = sorted(out["without_group"].items(), key=lambda kv: -kv[1])[:5]
        print("most costly groups (agreement with it in float):", best)
    out["seconds"] = time.perf_counter() - started
    if a.json is not None:
        write_json_atomic(out, a.json)


if __name__ == "__main__":
    main()
