"""CPU cost of the graph ends TensorRT needs, against the ones it cannot build.

A label map leaves the graph as ArgMax -> Cast(uint8) (TensorRT cannot: it converts
to UINT8 only from float), ArgMax -> Cast(float16) -> Cast(uint8) (what segkd writes),
ArgMax -> Cast(float) -> Cast(uint8), or ArgMax -> Cast(int32) (4 bytes a pixel). A uint8 frame enters as
Transpose(uint8) -> Cast(float) (TensorRT cannot: UINT8 feeds only a Cast) or
Cast(float) -> Transpose (what segkd writes). Each end is timed alone in onnxruntime
(CPU provider), round-robin across variants so a shared machine's load falls on all
alike: compare the ratios within one run, not the milliseconds.

Run from the repository root:
    python benchmarks/trt_graph_cost.py [--size 512x1024] [--classes 19] [--iters 30]
        [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from runtime.machine import describe_cpu
from runtime.tensorrt_onnx_check import check_tensorrt_onnx

F, U8, I32 = TensorProto.FLOAT, TensorProto.UINT8, TensorProto.INT32


def _model(nodes, inp, out) -> onnx.ModelProto:
    g = helper.make_graph(nodes, "g", [inp], [out])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    return m


def _label_ends(
    inp: onnx.ValueInfoProto, head: list[onnx.NodeProto], h: int, w: int, variants
) -> dict[str, onnx.ModelProto]:
    """One model per (name, cast chain, output type): `head` (producing "idx"), then the casts."""
    out = {}
    for name, casts, dtype in variants:
        nodes, src = list(head), "idx"
        for i, to in enumerate(casts):
            dst = "labels" if i == len(casts) - 1 else f"c{i}"
            nodes.append(helper.make_node("Cast", [src], [dst], to=to))
            src = dst
        out[name] = _model(nodes, inp, helper.make_tensor_value_info("labels", dtype, [1, h, w]))
    return out


def label_tails(k: int, h: int, w: int) -> dict[str, onnx.ModelProto]:
    inp = helper.make_tensor_value_info("logits", F, [1, k, h, w])
    arg = helper.make_node("ArgMax", ["logits"], ["idx"], axis=1, keepdims=0)
    return _label_ends(inp, [arg], h, w, (
        ("ArgMax->Cast(uint8)", [U8], U8),
        ("ArgMax->Cast(float16)->Cast(uint8)", [TensorProto.FLOAT16, U8], U8),
        ("ArgMax->Cast(float)->Cast(uint8)", [F, U8], U8),
        ("ArgMax->Cast(int32)", [I32], I32),
    ))  # fmt: skip


def casts_alone(h: int, w: int) -> dict[str, onnx.ModelProto]:
    """The label casts on their own, fed ArgMax's int64 map: the cost without the ArgMax's
    noise around it."""
    inp = helper.make_tensor_value_info("idx", TensorProto.INT64, [1, h, w])
    return _label_ends(inp, [], h, w, (
        ("Cast(uint8)", [U8], U8),
        ("Cast(float16)->Cast(uint8)", [TensorProto.FLOAT16, U8], U8),
        ("Cast(int32)", [I32], I32),
    ))  # fmt: skip


def input_heads(h: int, w: int) -> dict[str, onnx.ModelProto]:
    inp = helper.make_tensor_value_info("input", U8, [1, h, w, 3])
    outp = helper.make_tensor_value_info("x", F, [1, 3, h, w])
    t_first = [
        helper.make_node("Transpose", ["input"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["t"], ["x"], to=F),
    ]
    c_first = [
        helper.make_node("Cast", ["input"], ["c"], to=F),
        helper.make_node("Transpose", ["c"], ["x"], perm=[0, 3, 1, 2]),
    ]
    return {
        "Transpose(uint8)->Cast(float)": _model(t_first, inp, outp),
        "Cast(float)->Transpose": _model(c_first, inp, outp),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="512x1024")
    ap.add_argument("--classes", type=int, default=19)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((1, args.classes, h, w), dtype=np.float32)
    frame = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
    indices = rng.integers(0, args.classes, (1, h, w), dtype=np.int64)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    print(f"{describe_cpu()}; onnxruntime {ort.__version__}, {args.threads} thread(s), {h}x{w}")
    for title, models, feed in (
        (f"label map from {args.classes}-class logits", label_tails(args.classes, h, w), logits),
        ("the label casts alone, on an int64 label map", casts_alone(h, w), indices),
        ("uint8 frame into the graph", input_heads(h, w), frame),
    ):
        sessions = {
            n: ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
            for n, m in models.items()
        }
        outs = {n: s.run(None, {s.get_inputs()[0].name: feed})[0] for n, s in sessions.items()}
        ref = next(iter(outs.values()))
        times: dict[str, list[float]] = {n: [] for n in sessions}
        for _ in range(args.iters):
            for n, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, {s.get_inputs()[0].name: feed})
                times[n].append(time.perf_counter() - t0)
        base = statistics.median(next(iter(times.values())))
        print(f"\n{title} (median of {args.iters}, ratio to the first row)")
        for n, m in models.items():
            med = statistics.median(times[n])
            same = np.array_equal(outs[n].astype(np.int64), ref.astype(np.int64))
            trt = "TensorRT: ok" if not check_tensorrt_onnx(m) else "TensorRT: cannot build"
            print(f"  {n:36s} {1e3 * med:8.2f} ms  x{med / base:5.2f}  same values: {same}  {trt}")


if __name__ == "__main__":
    main()
